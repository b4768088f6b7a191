"""A test server run as a child Python process and driven over HTTP: the common part of the
MISP stand-ins (`misp_stand_in.MispStandIn`, `hostile_misp.HostileMisp`).

Each stand-in is a module of this package that is also a program: run as
`python -m integration.<module> --port-file F ...` (the tests folder on PYTHONPATH), it
serves until SIGTERM and writes its port(s) to F once it listens. `HelperProcess` starts
it, waits for that file, sends JSON control commands, reads its log, and stops it; it is
also a context manager (started on entry, stopped on exit).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .net import stop_process

__all__ = ["HelperProcess"]

_HERE = Path(__file__).resolve().parent


class HelperProcess:
    """A stand-in server as a child process: launch, control, read the log, stop."""

    #: What the process is called in errors.
    what = "stand-in"
    #: The control endpoint (POST a JSON object) and the record of requests (GET).
    control_path = "/_control"
    requests_path = "/_requests"

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.workdir = workdir
        self.log_path = workdir / log_name
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL of the server (what misp-dns is given)."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start serving; return once it listens."""
        raise NotImplementedError

    def _launch(self, module: str, arguments: Sequence[str], timeout: float) -> str:
        """Run `python -m integration.<module> --port-file F ARGUMENTS`; once it has written
        F, return what F holds. Stops the process and raises RuntimeError if it exits or
        writes nothing within `timeout` seconds."""
        port_file = self.workdir / f"{module}.port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            path for path in (str(_HERE.parent), env.get("PYTHONPATH")) if path
        )
        program = [sys.executable, "-m", f"{_HERE.name}.{module}"]
        command = [*program, "--port-file", str(port_file), *arguments]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {self.what} did not start:\n{self.log_text()}")
            time.sleep(0.02)
        return port_file.read_text()

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after five seconds)."""
        process, self._process = self._process, None
        stop_process(process)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def control(self, **command: Any) -> dict[str, Any]:
        """Send a control command (what it may hold: see the stand-in's module)."""
        return self._call(self.control_path, json.dumps(command).encode())

    def _requests(self) -> list[dict[str, Any]]:
        """Every request the server recorded so far, in order."""
        found: list[dict[str, Any]] = self._call(self.requests_path, None)["requests"]
        return found

    def _tls_context(self) -> ssl.SSLContext | None:
        """How to talk to a server over HTTPS (None: plain HTTP, or the default checks)."""
        return None

    def _call(self, path: str, body: bytes | None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, data=body, method="POST" if body is not None else "GET"
        )
        with urllib.request.urlopen(request, timeout=10, context=self._tls_context()) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def log_text(self, limit: int = 20000) -> str:
        """The end of what the process logged."""
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""
