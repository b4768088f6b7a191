"""A local HTTP collector (twisted.web on 127.0.0.1) for the HTTP sink's end-to-end tests.

Run as a program it listens on a free port, writes the port to `--port-file`, and appends
each POST it receives to `<out>/requests.jsonl` as `{"headers": {...}, "body": "..."}`.
`--mode stall` accepts requests and never answers (a collector that hangs).
`HttpReceiver` starts and stops it from a test and reads what it got.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["HttpReceiver"]


class HttpReceiver:
    """The collector as a child process."""

    def __init__(self, workdir: Path, mode: str = "ok") -> None:
        self.workdir = workdir
        self.mode = mode
        self.port_file = workdir / "receiver.port"
        self.requests_file = workdir / "requests.jsonl"
        self.log_path = workdir / "receiver.out"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}/ingest"

    def start(self, timeout: float = 15.0) -> None:
        """Start the collector; return once it listens."""
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--port-file",
                    str(self.port_file),
                    "--out",
                    str(self.requests_file),
                    "--mode",
                    self.mode,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP receiver did not start:\n{self.log_text()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def stop(self) -> None:
        """Stop the collector."""
        from .net import stop_process  # here: this file also runs as a script

        process, self._process = self._process, None
        stop_process(process)

    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far: headers (lower-case names) and body."""
        try:
            text = self.requests_file.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def records(self) -> list[dict[str, Any]]:
        """The NDJSON records of every request, in order."""
        return [
            json.loads(line)
            for request in self.requests()
            for line in request["body"].splitlines()
            if line
        ]

    def log_text(self) -> str:
        """What the collector printed."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _main() -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["ok", "stall"], default="ok")
    args = parser.parse_args()
    out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 - open for the process' life

    class Collector(Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> Any:
            headers = {
                name.decode().lower(): values[0].decode()
                for name, values in request.requestHeaders.getAllRawHeaders()
            }
            body = request.content.read().decode("utf-8")
            out.write(json.dumps({"headers": headers, "body": body}) + "\n")
            out.flush()
            if args.mode == "stall":
                return NOT_DONE_YET
            request.setResponseCode(202)
            return b""

    site = Site(Collector())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    Path(args.port_file).write_text(str(port.getHost().port))
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    _main()
