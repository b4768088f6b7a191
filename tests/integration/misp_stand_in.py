"""A MISP stand-in served for real over HTTP, and misp-dns configured to use it.

A process has one reactor, so the stand-in runs in its own Python process: this module is
also its program (see `helper_process`). It serves `misp_dns.testing.FakeMisp` (MISP's
`/attributes/restSearch` and `/sightings/add`, auth, paging, faults) on 127.0.0.1 with
`twisted.web`:

    cd tests && python -m integration.misp_stand_in --port-file F [--port N] [--api-key K]
        [--feed DIR] [--attributes FILE] [--feed-http DIR] [--tls-pem FILE]
        [--warninglist FILE ...] [--openapi FILE]

`--feed` loads a MISP feed directory (the real data), `--attributes` a JSON list of
`FakeMisp.add_attribute` keyword arguments (an `"event"` among them is an object of
`FakeMisp.add_event` keyword arguments: the attributes naming equal ones share one event),
`--feed-http` also serves a feed directory under `/feed/` (`FakeFeed`), and each
`--warninglist` is a MISP warninglist file the stand-in's MISP has enabled (what
`enforceWarninglist` leaves out). Once listening it writes its port to the port file. Its
behaviour is switched through a control endpoint, so a test can script faults between two
fetches:

- `POST /_stand_in/control` with a JSON object, applied at once and in this order:
  `"script"`: faults for the next MISP requests (`null` = answer normally, or
  `{"fault": "server_error"|"rate_limited"|"garbage"|"json"|"hanging", ...}`);
  `"add"`: attributes to add (`add_attribute` keyword arguments);
  `"delete"`: values whose attributes MISP soft-deletes (`deleted` true, a new timestamp);
  `"echo_key"`: when true, a refused key is echoed in the 403 message (a careless proxy);
  `"hide_after_limit"`: values dropped after the page limit, as MISP's warninglists do;
  `"ignore_filters"`: restSearch filters to ignore from now on, as an older MISP would;
  `"feed_files"`: `{name: text}` replacing files of the `--feed-http` feed;
  `"can_sight"`: false takes the sighting permission from the key (MISP answers 403).
- `GET /_stand_in/requests`: every MISP and feed request so far: time, path, status, page,
  and for `/sightings/add` its JSON `body` and the `problems` found in it.
- `GET /_stand_in/sightings`: the sightings recorded (`FakeMisp.sightings`).

`--openapi FILE` (MISP's OpenAPI description, `openapi_check.SPEC`) checks every
`/sightings/add` against it: the API key's header, the content type and the body's schema.
A request that breaks it is answered 400 with the problems, and they are kept in its entry,
so a test fails on a body MISP's own description does not allow.

`--tls-pem FILE` (a private key and its certificate) serves HTTPS instead of HTTP.

"MISP down" is the process stopped; `MispStandIn.start(port=...)` brings it back on the same
port. The test side also finds here what every test of a MISP-fed policy needs:
`write_config` (a config with `[[policy]]` tables), `start_misp_dns`, `key_file` and
`misp_policy`; `blocked_problems`, which checks a response against the blocked answer the
README describes ("What clients see"), and `forwarded_problems`; `is_blocked`, `is_forwarded` and
`blocks_throughout_until`, which ask a running server; and `ask_many`, which sends
thousands of UDP queries with a bounded window.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .helper_process import HelperProcess
from .server import MispDnsProcess
from .server_group import ServerGroup
from .wire import ask_udp, make_query

__all__ = [
    "MispStandIn",
    "ask_many",
    "blocked_problems",
    "blocks_throughout_until",
    "forwarded_problems",
    "is_blocked",
    "is_forwarded",
    "key_file",
    "main",
    "misp_policy",
    "no_server_tracebacks",
    "report",
    "start_misp_dns",
    "watch",
    "write_config",
]

_CONTROL = b"/_stand_in/control"
_REQUESTS = b"/_stand_in/requests"
_SIGHTINGS = b"/_stand_in/sightings"
_SIGHTINGS_ADD = b"/sightings/add"
_FEED_PREFIX = b"/feed/"
_SERVER_NAME = "dns.test.example"


# -- the stand-in process -----------------------------------------------------------------


def _fault(spec: Mapping[str, Any] | None) -> Any:
    """A `Fault` (or None) from its JSON description."""
    from misp_dns.testing import Fault

    if spec is None:
        return None
    kind = spec["fault"]
    if kind == "server_error":
        return Fault.server_error(int(spec.get("status", 500)))
    if kind == "rate_limited":
        return Fault.rate_limited(spec.get("retry_after"), spec.get("reset"))
    if kind == "garbage":
        body = spec.get("body")
        return Fault.garbage(body.encode()) if body is not None else Fault.garbage()
    if kind == "json":
        return Fault.json(spec["payload"], int(spec.get("status", 200)))
    if kind == "hanging":
        return Fault.hanging()
    raise ValueError(f"unknown fault {kind!r}")


def _add_attribute(misp: Any, spec: Mapping[str, Any], events: dict[str, Any]) -> None:
    """`misp.add_attribute(**spec)`, its `"event"` (add_event arguments) made once."""
    spec = dict(spec)
    event_spec = spec.pop("event", None)
    if event_spec is not None:
        key = json.dumps(event_spec, sort_keys=True)
        if key not in events:
            events[key] = misp.add_event(**event_spec)
        spec["event"] = events[key]
    misp.add_attribute(**spec)


def _make_root(misp: Any, feed: Any, events: dict[str, Any], openapi: Any = None) -> Any:
    """The site's single resource: control endpoints, the feed, and the fake MISP (its
    `/sightings/add` checked against `openapi`, a `MispOpenApi`, when given)."""
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    class Root(Resource):
        isLeaf = True

        def __init__(self) -> None:
            super().__init__()
            self.echo_key = False
            self.seen: list[dict[str, Any]] = []

        def render(self, request: Any) -> bytes | int:
            path = request.path or b""
            if path == _CONTROL:
                return self._control(request)
            if path == _REQUESTS:
                return self._reply(request, 200, {"requests": self.seen})
            if path == _SIGHTINGS:
                return self._reply(request, 200, {"sightings": misp.sightings})
            if feed is not None and path.startswith(_FEED_PREFIX):
                entry = {"time": time.time(), "path": path.decode(), "page": None}
                self.seen.append(entry)
                result = feed.render(request)
                entry["status"] = request.code
                return result
            return self._misp(request)

        def _misp(self, request: Any) -> bytes | int:
            body = request.content.read() if request.content is not None else b""
            request.content.seek(0)
            try:
                page = json.loads(body).get("page")
            except (ValueError, AttributeError):
                page = None
            entry = {"time": time.time(), "path": request.path.decode(), "page": page}
            self.seen.append(entry)
            presented = (request.getHeader(b"authorization") or b"").decode("latin-1")
            if self.echo_key and presented != misp.api_key:
                entry["status"] = 403
                message = f"Authentication failed for key {presented}"
                payload = {"name": message, "message": message, "url": "/attributes/restSearch"}
                return self._reply(request, 403, payload)
            if request.path == _SIGHTINGS_ADD and openapi is not None:
                problems = self._check_sighting(request, body, entry)
                if problems:
                    entry["status"] = 400
                    message = "not as MISP's OpenAPI description says: " + "; ".join(problems)
                    payload = {"name": message, "message": message, "url": "/sightings/add"}
                    return self._reply(request, 400, payload)
            result = misp.render(request)
            entry["status"] = None if result is NOT_DONE_YET else request.code
            return result

        @staticmethod
        def _check_sighting(request: Any, body: bytes, entry: dict[str, Any]) -> list[str]:
            headers = {
                name.decode("latin-1").lower(): values[-1].decode("latin-1")
                for name, values in request.requestHeaders.getAllRawHeaders()
            }
            try:
                decoded = json.loads(body)
            except ValueError:
                entry["problems"] = ["the body is not JSON"]
                return list(entry["problems"])
            entry["body"] = decoded
            entry["problems"] = openapi.request_problems("/sightings/add", headers, decoded)
            return list(entry["problems"])

        def _control(self, request: Any) -> bytes:
            command = json.loads(request.content.read() or b"{}")
            misp.script(*(_fault(spec) for spec in command.get("script", [])))
            for spec in command.get("add", []):
                _add_attribute(misp, spec, events)
            deleted = set(command.get("delete", []))
            for attribute in misp.attributes:
                if attribute["value"] in deleted:
                    attribute["deleted"] = True
                    attribute["timestamp"] = str(int(time.time()))
            if "echo_key" in command:
                self.echo_key = bool(command["echo_key"])
            if "hide_after_limit" in command:
                misp.after_limit_filter = set(command["hide_after_limit"])
            if "ignore_filters" in command:
                misp.ignored_filters = set(command["ignore_filters"])
            for name, text in command.get("feed_files", {}).items():
                feed.files[name] = text.encode()
            if "can_sight" in command:
                misp.can_sight = bool(command["can_sight"])
            return self._reply(request, 200, {"attributes": len(misp.attributes)})

        @staticmethod
        def _reply(request: Any, status: int, payload: object) -> bytes:
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(payload).encode()

    return Root()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the stand-in until SIGTERM."""
    parser = argparse.ArgumentParser(description="A MISP stand-in on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--api-key", default="fake-misp-api-key")
    parser.add_argument("--feed")
    parser.add_argument("--attributes")
    parser.add_argument("--feed-http")
    parser.add_argument("--tls-pem", help="serve HTTPS with this key and certificate (PEM)")
    parser.add_argument("--warninglist", action="append", default=[])
    parser.add_argument("--openapi", help="check /sightings/add against this OpenAPI file")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.server import Site

    from misp_dns.intel.warninglist import load_warninglist
    from misp_dns.testing import FakeFeed, FakeMisp

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    misp = FakeMisp(args.api_key)
    misp.warninglists = [load_warninglist(path) for path in args.warninglist]
    events: dict[str, Any] = {}
    if args.feed:
        misp.load_feed(args.feed)
    if args.attributes:
        for spec in json.loads(Path(args.attributes).read_text()):
            _add_attribute(misp, spec, events)
    feed = FakeFeed.from_directory(args.feed_http) if args.feed_http else None
    openapi = None
    if args.openapi:
        from .openapi_check import MispOpenApi

        openapi = MispOpenApi.load(Path(args.openapi))
    site = Site(_make_root(misp, feed, events, openapi))
    site.noisy = False
    if args.tls_pem:
        from twisted.internet import ssl

        certificate = ssl.PrivateCertificate.loadPEM(Path(args.tls_pem).read_text())
        port = reactor.listenSSL(args.port, site, certificate.options(), interface="127.0.0.1")
    else:
        port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    temporary = args.port_file + ".tmp"
    Path(temporary).write_text(str(port.getHost().port))
    os.replace(temporary, args.port_file)
    reactor.run()


# -- the test side ------------------------------------------------------------------------


class MispStandIn(HelperProcess):
    """The stand-in as a child process: start, control, stop, start again on the same port."""

    what = "MISP stand-in"
    control_path = _CONTROL.decode()
    requests_path = _REQUESTS.decode()

    def __init__(
        self,
        workdir: Path,
        *,
        api_key: str = "fake-misp-api-key",
        feed: Path | None = None,
        attributes: Sequence[Mapping[str, Any]] = (),
        feed_http: Path | None = None,
        tls_pem: Path | None = None,
        warninglists: Sequence[Path] = (),
        openapi: Path | None = None,
    ) -> None:
        super().__init__(workdir, "stand-in.log")
        self.api_key = api_key
        self.feed = feed
        self.feed_http = feed_http
        self.tls_pem = tls_pem
        self.warninglists = list(warninglists)
        self.openapi = openapi
        self.attributes_path = workdir / "stand-in-attributes.json"
        self.attributes_path.write_text(json.dumps(list(attributes)))
        self.port = 0

    @property
    def url(self) -> str:
        """The server_url misp-dns is given."""
        scheme = "https" if self.tls_pem is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, port: int | None = None, timeout: float = 20.0) -> None:
        """Start serving (on `port`, or the last port, or any); return once it listens."""
        arguments = [
            "--port",
            str(port if port is not None else self.port),
            "--api-key",
            self.api_key,
            "--attributes",
            str(self.attributes_path),
        ]
        for option, path in (
            ("--feed", self.feed),
            ("--feed-http", self.feed_http),
            ("--tls-pem", self.tls_pem),
            ("--openapi", self.openapi),
        ):
            if path is not None:
                arguments += [option, str(path)]
        for path in self.warninglists:
            arguments += ["--warninglist", str(path)]
        self.port = int(self._launch("misp_stand_in", arguments, timeout))

    def requests(self) -> list[dict[str, Any]]:
        """Every MISP and feed request so far: {"time", "path", "page", "status"}, and
        for a sighting its "body" and "problems"."""
        return self._requests()

    def sightings(self) -> list[dict[str, str]]:
        """The sightings the stand-in recorded, as MISP holds them."""
        found: list[dict[str, str]] = self._call(_SIGHTINGS.decode(), None)["sightings"]
        return found

    def _tls_context(self) -> ssl.SSLContext | None:
        # Only the test talks to this endpoint, over loopback, to its own self-signed server.
        return ssl._create_unverified_context() if self.tls_pem is not None else None


def _toml(value: Any) -> str:
    # JSON's strings, numbers, booleans and arrays of them are valid TOML values.
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)


def write_config(
    path: Path,
    server: Mapping[str, Any],
    policies: Sequence[Mapping[str, Any]],
    cache: Mapping[str, Any] | None = None,
) -> Path:
    """Write a misp-dns config with `[server]`, `[cache]` and one `[[policy]]` per mapping."""
    lines = ["[server]", *(f"{k} = {_toml(v)}" for k, v in server.items()), ""]
    lines += ["[cache]", *(f"{k} = {_toml(v)}" for k, v in (cache or {}).items()), ""]
    for policy in policies:
        lines += ["[[policy]]", *(f"{k} = {_toml(v)}" for k, v in policy.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_misp_dns(
    workdir: Path,
    upstream: tuple[str, int],
    policies: Sequence[Mapping[str, Any]],
    *,
    port: int,
    state_dir: Path | None = None,
    probe: str = "www.test.",
    timeout: float = 20.0,
) -> MispDnsProcess:
    """misp-dns under twistd with `policies`, forwarding to `upstream`; started."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = state_dir or workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    server = {
        "listen": [f"127.0.0.1:{port}"],
        "upstreams": [f"{upstream[0]}:{upstream[1]}"],
        "server_name": _SERVER_NAME,
        "state_dir": str(state),
        "upstream_timeout": 3,
    }
    config = write_config(workdir / "misp-dns.toml", server, policies, {"max_entries": 1000})
    process = MispDnsProcess(config, [("127.0.0.1", port)], workdir)
    process.start(probe=probe, timeout=timeout)
    return watch(process)


#: Every misp-dns `start_misp_dns` started, for `no_server_tracebacks`.
_started = ServerGroup()


def watch(process: MispDnsProcess) -> MispDnsProcess:
    """Have `no_server_tracebacks` check the log of `process` (a started `MispDnsProcess`)."""
    return _started.watch(process)


@pytest.fixture(autouse=True)
def no_server_tracebacks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which a misp-dns of `start_misp_dns` logged a traceback.

    Import it into a test module to make it apply there (it is autouse); tests marked
    `allow_errors` are not checked.
    """
    yield from _started.check_logs(request)


# -- a misp policy ------------------------------------------------------------------------


def key_file(directory: Path, key: str) -> Path:
    """`directory/misp.key` holding `key`, readable by its owner only."""
    path = directory / "misp.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def misp_policy(url: str, key_path: Path, **options: Any) -> dict[str, Any]:
    """A `misp` policy table for the MISP at `url` with the API key in `key_path`, taking
    indicators up to 3650 days old; `options` are added (or replace these)."""
    return {
        "type": "misp",
        "server_url": url,
        "api_key_file": str(key_path),
        "max_ioc_age": "3650d",
    } | options


# -- checking answers ---------------------------------------------------------------------


def report(indicator: str, source: str = "misp-connector") -> str:
    """The blocking report (TXT answer, EDE text) for `indicator` listed by policy `source`."""
    return f"source={source};domain={indicator}"


def is_blocked(
    process: MispDnsProcess,
    name: str,
    indicator: str | None = None,
    *,
    source: str = "misp-connector",
) -> bool:
    """True when `process` gives the blocked answer to an A query with EDNS for `name`,
    reporting `indicator` (by default `name` itself, without a final dot) from `source`."""
    response = ask_udp(make_query(name, "A", edns=0), process.address)
    return not blocked_problems(response, name, report(indicator or name.rstrip("."), source))


def is_forwarded(process: MispDnsProcess, name: str) -> bool:
    """True when `process` answers an A query with EDNS for `name` with no sign of a block."""
    return forwarded_problems(ask_udp(make_query(name, "A", edns=0), process.address)) == []


def blocks_throughout_until(
    process: MispDnsProcess, old: Sequence[str], new: str, timeout: float
) -> float:
    """Ask for the `old` names until `new` is blocked; every old answer must be blocked all
    along. Returns the seconds `new` took to be blocked."""
    started = time.monotonic()
    wrong: list[str] = []
    while time.monotonic() - started < timeout:
        for name in old:
            if not is_blocked(process, name):
                wrong.append(f"{name} at {time.monotonic() - started:.2f} s")
        if is_blocked(process, new):
            assert not wrong, f"old names not blocked meanwhile: {wrong}"
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{new} not blocked within {timeout} s (old names wrong: {wrong})")


def blocked_problems(
    response: Any,
    qname: str,
    report: str,
    *,
    qtype: str = "A",
    edns: bool = True,
    ttl: int = 30,
    server_name: str = _SERVER_NAME,
    rd: bool = True,
    ede: bool = True,
    txt_report: bool = True,
) -> list[str]:
    """What is wrong with `response` as the README's blocked answer for `qname` (none: []).

    `report` is the TXT answer (for `qtype="TXT"`) and the EDE text; `edns` says whether the
    query had EDNS, `ede` whether an EDE is wanted then (`add_extended_dns_error`), and
    `txt_report` whether a TXT query gets the report (`allow_txt_blocking_report`).
    """
    import dns.edns
    import dns.flags
    import dns.name
    import dns.rcode
    import dns.rdatatype

    problems: list[str] = []
    name = dns.name.from_text(qname)
    if [(q.name, q.rdtype) for q in response.question] != [(name, dns.rdatatype.from_text(qtype))]:
        problems.append(f"question {response.question!r}")
    flags = response.flags
    if not flags & dns.flags.QR or not flags & dns.flags.RA or flags & dns.flags.AA:
        problems.append(f"flags {dns.flags.to_text(flags)}")
    if bool(flags & dns.flags.RD) != rd:
        problems.append("RD not copied")
    if qtype == "TXT" and txt_report:
        if response.rcode() != dns.rcode.NOERROR:
            problems.append(f"TXT rcode {dns.rcode.to_text(response.rcode())}")
        texts = [
            (rrset.name, rrset.ttl, b"".join(rdata.strings).decode())
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        ]
        if texts != [(name, ttl, report)] or len(response.answer) != 1:
            problems.append(f"TXT answer {[r.to_text() for r in response.answer]}")
    else:
        if response.rcode() != dns.rcode.NXDOMAIN:
            problems.append(f"rcode {dns.rcode.to_text(response.rcode())}")
        if response.answer:
            problems.append(f"answer {[r.to_text() for r in response.answer]}")
        problems += _soa_problems(response, name, ttl, server_name)
    if response.additional:
        problems.append(f"additional {[r.to_text() for r in response.additional]}")
    if not edns:
        if response.edns >= 0:
            problems.append("an OPT record although the query had no EDNS")
        return problems
    if response.edns != 0:
        problems.append(f"EDNS version {response.edns}")
    extended = [o for o in response.options if o.otype == dns.edns.OptionType.EDE]
    found = [(int(o.code), o.text) for o in extended]
    wanted = [(15, report)] if ede else []
    if found != wanted:
        problems.append(f"EDE {found} (wanted {wanted})")
    return problems


def _soa_problems(response: Any, name: Any, ttl: int, server_name: str) -> list[str]:
    import dns.name
    import dns.rdatatype

    if len(response.authority) != 1 or response.authority[0].rdtype != dns.rdatatype.SOA:
        return [f"authority {[r.to_text() for r in response.authority]}"]
    rrset = response.authority[0]
    if len(rrset) != 1:
        return [f"{len(rrset)} SOA records"]
    soa = rrset[0]
    wanted = (
        name,
        ttl,
        dns.name.from_text(server_name),
        dns.name.from_text(f"hostadmin.{server_name}"),
        (1, 14400, 3600, 604800, ttl),
    )
    got = (
        rrset.name,
        rrset.ttl,
        soa.mname,
        soa.rname,
        (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum),
    )
    return [] if got == wanted else [f"SOA {got} (wanted {wanted})"]


def ask_many(
    address: tuple[str, int],
    queries: Sequence[Any],
    *,
    window: int = 200,
    timeout: float = 2.0,
    attempts: int = 3,
) -> list[bytes | None]:
    """Send every query over UDP, at most `window` unanswered at once; return the replies.

    Query IDs are rewritten (the index modulo 65536), a query unanswered after `timeout`
    seconds is sent again, up to `attempts` times in all; None stands for no reply at all.
    """
    import select
    import socket
    import struct

    wires = []
    for index, query in enumerate(queries):
        query.id = index % 65536
        wires.append(query.to_wire())
    replies: list[bytes | None] = [None] * len(wires)
    pending: dict[int, tuple[int, float, int]] = {}
    following = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect(address)
        sock.setblocking(False)

        def send(index: int, tries: int) -> bool:
            try:
                sock.send(wires[index])
            except BlockingIOError:
                return False
            pending[index % 65536] = (index, time.monotonic(), tries)
            return True

        while following < len(wires) or pending:
            while len(pending) < window and following < len(wires):
                if not send(following, 1):
                    break
                following += 1
            now = time.monotonic()
            for qid, (index, sent, tries) in list(pending.items()):
                if now - sent > timeout:
                    del pending[qid]
                    if tries < attempts:
                        send(index, tries + 1)
            readable, _, _ = select.select([sock], [], [], 0.05)
            while readable:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    continue
                if len(data) < 2:
                    continue
                entry = pending.pop(struct.unpack("!H", data[:2])[0], None)
                if entry is not None:
                    replies[entry[0]] = data
    return replies


def forwarded_problems(response: Any) -> list[str]:
    """What shows that `response` was not the upstream's answer but a block."""
    import dns.edns
    import dns.rcode

    problems = []
    if response.rcode() == dns.rcode.NXDOMAIN and any(
        rrset.name == response.question[0].name for rrset in response.authority
    ):
        problems.append("NXDOMAIN with an SOA owned by the query name (a blocked answer)")
    if any(o.otype == dns.edns.OptionType.EDE and int(o.code) == 15 for o in response.options):
        problems.append("EDE 15 (Blocked)")
    return problems


if __name__ == "__main__":
    main()
