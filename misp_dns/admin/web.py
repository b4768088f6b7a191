"""The admin listener's HTTP side: resources, the Bearer token check, and the service.

`/metrics` is rendered on the reactor thread with prometheus_client's own encoder (the
format the scraper's Accept header asks for). prometheus_client's Twisted resource is not
used: it binds the global reactor and collects in a thread-pool thread, where the collector
would read counters while the reactor thread changes them; a scrape of a small server's
hundred lines takes 0.3 ms here, little to hold the reactor for.

With a token, every request but /healthz and /readyz must carry `Authorization: Bearer
<token>`; the token is compared in constant time (`hmac.compare_digest`) and appears in no
log line. The access log is off: a scrape every few seconds would fill the server's log.
POST /api/refresh takes a JSON body, so a web page open on the same machine cannot send one
(a browser asks first before sending JSON to another origin).
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from misp_dns.admin.api import AdminApi, NoSuchPolicy, ServerParts, query_name
from misp_dns.admin.metrics import QueryCounter, make_registry
from misp_dns.qtypes import qtype_from_text
from misp_dns.values import AdminConfig, ConfigError, HostPort

__all__ = ["AdminResource", "AdminService", "AdminSite", "read_token"]

#: Paths load balancers and service managers probe without a token.
OPEN_PATHS = frozenset({b"healthz", b"readyz"})


def read_token(admin: AdminConfig) -> bytes | None:
    """The Bearer token of `admin.token_file`, None when there is none.

    Raises ConfigError naming the file (never its content) when it cannot be used. A file
    that every user may read gets a warning; the group may read it (the operators' group
    running `misp-dns status`).
    """
    if not admin.token_file:
        return None
    path = Path(admin.token_file).expanduser()
    where = f"admin.token_file {str(path)!r}"
    try:
        token = path.read_text(encoding="utf-8").strip()
        if path.stat().st_mode & 0o007:
            _log.warn("{where} can be read by every user; the token in it should not", where=where)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not a text file"]) from None
    if not token:
        raise ConfigError([f"{where}: the token is empty"])
    if not all(" " < char < "\x7f" for char in token):
        raise ConfigError([f"{where}: the token holds spaces or characters a header cannot carry"])
    return token.encode("ascii")


_log = Logger()


def _json(request: Request, payload: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n"


def _error(request: Request, status: int, message: str) -> bytes:
    return _json(request, {"error": message}, status)


class _Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"www-authenticate", b'Bearer realm="misp-dns"')
        return _error(request, 401, "a valid Bearer token is required")


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _json(request, {"alive": True})


class _Ready(Resource):
    isLeaf = True

    def __init__(self, api: AdminApi) -> None:
        super().__init__()
        self.api = api

    def render_GET(self, request: Request) -> bytes:
        readiness = self.api.readiness()
        return _json(request, readiness, 200 if readiness["ready"] else 503)


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self.registry)


class _Status(Resource):
    isLeaf = True

    def __init__(self, api: AdminApi) -> None:
        super().__init__()
        self.api = api

    def render_GET(self, request: Request) -> bytes:
        return _json(request, self.api.status())


class _Explain(Resource):
    isLeaf = True

    def __init__(self, api: AdminApi) -> None:
        super().__init__()
        self.api = api

    def render_GET(self, request: Request) -> bytes:
        args = request.args or {}
        names = args.get(b"name") or [b""]
        types = args.get(b"type") or [b"A"]
        try:
            name = query_name(names[0].decode("utf-8"))
            qtype = qtype_from_text(types[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as problem:
            return _error(request, 400, str(problem))
        return _json(request, self.api.explain(name, qtype))


class _Refresh(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, api: AdminApi) -> None:
        super().__init__()
        self.api = api

    def render_POST(self, request: Request) -> bytes | int:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/json":
            return _error(request, 415, 'send a JSON body, such as {} or {"policy": "misp"}')
        try:
            assert request.content is not None
            body = json.loads(request.content.read() or b"{}")
            selector = body.get("policy") if isinstance(body, dict) else None
            if selector is not None and not isinstance(selector, str):
                raise ValueError("policy must be a string")
        except (ValueError, AttributeError) as problem:
            return _error(request, 400, f"bad request body: {problem}")
        try:
            refreshing = self.api.refresh(selector)
        except NoSuchPolicy as problem:
            return _error(request, 404, str(problem))
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(outcome: list[dict[str, Any]]) -> None:
            if not gone:
                request.write(_json(request, {"refreshed": outcome}))
                request.finish()

        def failed(failure: Failure) -> None:
            self.log.failure("refresh failed", failure)
            if not gone:
                request.write(_error(request, 500, "refresh failed; see the server log"))
                request.finish()

        refreshing.addCallbacks(answer, failed)
        return NOT_DONE_YET


class AdminResource(Resource):
    """The root of the admin listener; checks the token before any protected path."""

    def __init__(self, api: AdminApi, registry: CollectorRegistry, token: bytes | None) -> None:
        super().__init__()
        self._token = token
        self.putChild(b"healthz", _Health())
        self.putChild(b"readyz", _Ready(api))
        self.putChild(b"metrics", _Metrics(registry))
        calls = Resource()
        calls.putChild(b"status", _Status(api))
        calls.putChild(b"explain", _Explain(api))
        calls.putChild(b"refresh", _Refresh(api))
        self.putChild(b"api", calls)

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if path not in OPEN_PATHS and not self._authorized(request):
            return _Unauthorized()
        return super().getChildWithDefault(path, request)

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, given = (request.getHeader(b"authorization") or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)


class AdminSite(Site):
    """A Site that writes no access log and shows no tracebacks."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        """No access log line (scrapes would fill the server's log)."""


class AdminService(Service):
    """Listens on `[admin] listen` with the admin resource while the server runs."""

    name = "admin"
    log = Logger()

    def __init__(
        self, admin: AdminConfig, token: bytes | None, parts: ServerParts, reactor: Any
    ) -> None:
        self.admin = admin
        self.reactor = reactor
        self.queries = QueryCounter()
        self.api = AdminApi(parts)
        self.registry = make_registry(parts, self.queries)
        self.resource = AdminResource(self.api, self.registry, token)
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        site = AdminSite(self.resource)
        listen = self.admin.listen
        self.port = self.reactor.listenTCP(listen.port, site, interface=listen.host)
        bound = HostPort(listen.host, getattr(self.port.getHost(), "port", listen.port))
        self.log.info("admin listener on http://{address}/", address=bound)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
