"""A hostile MISP for end-to-end tests, served from its own process, and a second host.

`misp_stand_in.py` imitates a well-behaved MISP. This one misbehaves on command, the way a
broken, compromised or impersonated server would, and keeps a record of what it was sent:

    cd tests && python -m integration.hostile_misp --port-file F [--port N] [--api-key K]
        [--other-host 127.0.0.2]

It listens on 127.0.0.1 (the MISP that misp-dns is configured with) and on a second address,
by default 127.0.0.2 (Linux routes all of 127/8 to loopback), standing for "another host":
redirects can point there, and a test asserts that nothing, least of all the API key, ever
arrived at it. The other host answers any request with an attacker's indicator list.

Without a script, the MISP side answers `POST /attributes/restSearch` as MISP does: 403
for a wrong `Authorization`, otherwise `{"response": {"Attribute": [...]}}` with the stored
attributes paged by the request's `limit` and `page`. The stored attributes are raw JSON,
never checked, so a test can store any shape. Controls:

- `POST /_hostile/control` with a JSON object, applied in this order:
  `"attributes"`: replace the stored list; `"add"`: append to it; `"echo_key"`: a refused key
  is echoed in the 403 message; `"script"`: actions for the next MISP requests, each used
  `times` times (default 1), `null` for a normal answer:
  - `{"kind": "reply", "status": 500, "headers": {...}, "body": "..."}`: any answer;
  - `{"kind": "redirect", "status": 302, "location": "{other}/attributes/restSearch"}`;
  - `{"kind": "hang"}`: headers never sent;
  - `{"kind": "trickle", "interval": 0.2}`: a 200 whose body never ends, one byte at a time;
  - `{"kind": "stream", "total": null}`: a 200 whose chunked body is `total` bytes long
    (`null`: endless) of well-formed-looking JSON, sent as fast as the client reads.
  In `body` and `location`, `{authorization}` is replaced by the `Authorization` header the
  request carried (a server that echoes what it is sent) and `{other}` by the other host's
  base URL.
- `GET /_hostile/requests`: every request to either host: `site` ("misp" or "other"),
  `time`, `method`, `path`, `page`, `authorization` (the header, or null), `status`,
  `bytes` (body bytes sent), `closed_by_client` (the client hung up before the end).

`HostileMisp` runs it from a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .helper_process import HelperProcess

__all__ = ["ATTACKER_NAME", "HostileMisp", "attribute", "main"]

_CONTROL = b"/_hostile/control"
_REQUESTS = b"/_hostile/requests"
#: The name the other host would have misp-dns block, had it been asked.
ATTACKER_NAME = "attacker-planted.test"
_STREAM_ITEM = b'{"type": "domain", "value": "endless.example", "to_ids": true},'
_ids = itertools.count(1)


def attribute(value: Any, type_: Any = "domain", **fields: Any) -> dict[str, Any]:
    """A MISP attribute as restSearch returns it (any field may be overridden or wrong)."""
    now = str(int(time.time()))
    found = {
        "id": str(next(_ids)),
        "event_id": "1",
        "type": type_,
        "category": "Network activity",
        "to_ids": True,
        "deleted": False,
        "uuid": "5a1e7c9d-3b2f-4c6e-8d0a-1f2e3d4c5b6a",
        "timestamp": now,
        "first_seen": None,
        "last_seen": None,
        "value": value,
        "Event": {"id": "1", "uuid": "0b9c8d7e-6f5a-4b3c-2d1e-0f9a8b7c6d5e", "info": "hostile"},
    }
    found.update(fields)
    return found


# -- the server process -------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> None:
    from twisted.internet import reactor, task
    from twisted.internet.interfaces import IPullProducer
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site
    from zope.interface import implementer

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    seen: list[dict[str, Any]] = []
    state: dict[str, Any] = {"attributes": [], "echo_key": False, "other": ""}
    script: deque[dict[str, Any] | None] = deque()
    held: list[Any] = []

    def record(site: str, request: Any, body: bytes) -> dict[str, Any]:
        try:
            page = json.loads(body).get("page")
        except (ValueError, AttributeError):
            page = None
        header = request.getHeader(b"authorization")
        entry = {
            "site": site,
            "time": time.time(),
            "method": request.method.decode("latin-1"),
            "path": request.path.decode("latin-1"),
            "page": page,
            "authorization": None if header is None else header.decode("latin-1"),
            "status": None,
            "bytes": 0,
            "closed_by_client": False,
        }
        seen.append(entry)

        def lost(_: object) -> None:
            entry["closed_by_client"] = True

        request.notifyFinish().addErrback(lost)
        return entry

    def reply(request: Any, entry: dict[str, Any], status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        if not request.responseHeaders.hasHeader(b"content-type"):
            request.setHeader(b"Content-Type", b"application/json")
        entry["status"] = status
        entry["bytes"] = len(body)
        return body

    def fill(template: str, request: Any) -> str:
        presented = (request.getHeader(b"authorization") or b"").decode("latin-1")
        return template.replace("{authorization}", presented).replace("{other}", state["other"])

    @implementer(IPullProducer)
    class Stream:
        """Writes a JSON-looking body, `total` bytes or forever, as the client reads."""

        def __init__(self, request: Any, entry: dict[str, Any], total: int | None) -> None:
            self.request = request
            self.entry = entry
            self.total = total
            self.stopped = False
            self.chunk = _STREAM_ITEM * (65536 // len(_STREAM_ITEM))

        def resumeProducing(self) -> None:
            if self.stopped or self.entry["closed_by_client"]:
                return
            data = b'{"response": {"Attribute": [' if self.entry["bytes"] == 0 else self.chunk
            if self.total is not None and self.entry["bytes"] + len(data) >= self.total:
                data = data[: max(0, self.total - self.entry["bytes"])]
                self.stopped = True
            self.request.write(data)
            self.entry["bytes"] += len(data)
            if self.stopped:
                self.request.unregisterProducer()
                self.request.finish()

        def stopProducing(self) -> None:
            self.stopped = True

    def act(request: Any, entry: dict[str, Any], action: Mapping[str, Any]) -> bytes | int:
        kind = action["kind"]
        if kind == "reply":
            for name, value in action.get("headers", {}).items():
                request.setHeader(name.encode(), fill(value, request).encode())
            body = fill(action.get("body", ""), request).encode()
            return reply(request, entry, int(action.get("status", 200)), body)
        if kind == "redirect":
            request.setHeader(b"Location", fill(action["location"], request).encode())
            return reply(request, entry, int(action.get("status", 302)), b"")
        if kind == "hang":
            held.append(request)
            return NOT_DONE_YET
        entry["status"] = 200
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        if kind == "trickle":

            def drip() -> None:
                if entry["closed_by_client"]:
                    dripping.stop()
                    return
                request.write(b" ")
                entry["bytes"] += 1

            dripping = task.LoopingCall(drip)
            dripping.start(float(action.get("interval", 0.2)))
            return NOT_DONE_YET
        if kind == "stream":
            request.registerProducer(Stream(request, entry, action.get("total")), False)
            return NOT_DONE_YET
        raise ValueError(f"unknown action {kind!r}")

    def misp(request: Any, entry: dict[str, Any], body: bytes) -> bytes | int:
        if script:
            action = script.popleft()
            if action is not None:
                return act(request, entry, action)
        presented = entry["authorization"]
        if presented != args.api_key:
            message = "Authentication failed."
            if state["echo_key"]:
                message = f"Authentication failed for key {presented}"
            payload = {"name": message, "message": message, "url": "/attributes/restSearch"}
            return reply(request, entry, 403, json.dumps(payload).encode())
        try:
            filters = json.loads(body)
            limit = int(filters.get("limit") or 0)
            page = max(1, int(filters.get("page") or 1))
        except (ValueError, AttributeError, TypeError):
            return reply(request, entry, 400, b'{"name": "Invalid JSON"}')
        found = state["attributes"]
        if limit:
            found = found[limit * (page - 1) : limit * page]
        return reply(request, entry, 200, json.dumps({"response": {"Attribute": found}}).encode())

    def control(request: Any) -> bytes:
        command = json.loads(request.content.read() or b"{}")
        if "attributes" in command:
            state["attributes"] = list(command["attributes"])
        state["attributes"].extend(command.get("add", []))
        if "echo_key" in command:
            state["echo_key"] = bool(command["echo_key"])
        for action in command.get("script", []):
            times = 1 if action is None else int(action.get("times", 1))
            script.extend([action] * times)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"attributes": len(state["attributes"])}).encode()

    class MispSide(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes | int:
            if request.path == _CONTROL:
                return control(request)
            if request.path == _REQUESTS:
                request.setHeader(b"Content-Type", b"application/json")
                return json.dumps({"requests": seen}).encode()
            body = request.content.read() if request.content is not None else b""
            return misp(request, record("misp", request, body), body)

    class OtherSide(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            body = request.content.read() if request.content is not None else b""
            entry = record("other", request, body)
            planted = [attribute(ATTACKER_NAME)] if entry["page"] in (None, 1) else []
            return reply(
                request, entry, 200, json.dumps({"response": {"Attribute": planted}}).encode()
            )

    misp_site = Site(MispSide())
    other_site = Site(OtherSide())
    misp_site.noisy = other_site.noisy = False
    misp_port = reactor.listenTCP(args.port, misp_site, interface="127.0.0.1")
    other_port = reactor.listenTCP(args.other_port, other_site, interface=args.other_host)
    state["other"] = f"http://{args.other_host}:{other_port.getHost().port}"
    ports = {"misp": misp_port.getHost().port, "other": other_port.getHost().port}
    temporary = args.port_file + ".tmp"
    Path(temporary).write_text(json.dumps(ports))
    os.replace(temporary, args.port_file)
    reactor.run()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the hostile MISP until SIGTERM."""
    parser = argparse.ArgumentParser(description="A hostile MISP on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--other-port", type=int, default=0)
    parser.add_argument("--other-host", default="127.0.0.2")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--api-key", default="hostile-misp-api-key")
    _serve(parser.parse_args(argv))


# -- the test side ------------------------------------------------------------------------


class HostileMisp(HelperProcess):
    """The hostile MISP as a child process: start, script, read what it was sent, stop."""

    what = "hostile MISP"
    control_path = _CONTROL.decode()
    requests_path = _REQUESTS.decode()

    def __init__(
        self, workdir: Path, *, api_key: str, attributes: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__(workdir, "hostile-misp.log")
        self.api_key = api_key
        self.initial = list(attributes)
        self.port = 0
        self.other_port = 0

    @property
    def url(self) -> str:
        """The server_url misp-dns is given."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def other_url(self) -> str:
        """The base URL of the other host."""
        return f"http://127.0.0.2:{self.other_port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start serving on free ports; return once both listen and the list is loaded."""
        ports = json.loads(self._launch("hostile_misp", ["--api-key", self.api_key], timeout))
        self.port, self.other_port = ports["misp"], ports["other"]
        self.control(attributes=self.initial)

    def requests(self, site: str | None = None) -> list[dict[str, Any]]:
        """What either host (or `site` alone) was sent so far, in order."""
        return [entry for entry in self._requests() if site is None or entry["site"] == site]


if __name__ == "__main__":
    main()
