"""A DNS server program run in the foreground (`<binary> -d -c <conf>`): Unbound, NSD, BIND.

`DnsDaemon` starts it with its output in a log file beside the config, probes it over UDP
until it answers as a subclass says it must (`ready`), and stops it: SIGTERM, then SIGKILL
after five seconds. A failed test gets the end of the log in its report
(`conftest.pytest_runtest_makereport`).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import dns.message

from .net import stop_process
from .wire import Address, make_query, udp_exchange

__all__ = ["DnsDaemon"]


class DnsDaemon:
    """`<binary> -d -c conf` as a child process, started and stopped by the caller."""

    #: The program's name, for errors.
    name = "server"
    #: The type of the probe query.
    probe_type = "A"

    def __init__(self, binary: str, conf: Path, address: Address, probe: str) -> None:
        self.binary = binary
        self.conf = conf
        self.address = address
        self.probe = probe
        self.log_path = conf.with_suffix(".log")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (for CPU pinning)."""
        assert self._process is not None
        return self._process.pid

    def ready(self, response: dns.message.Message) -> bool:
        """Whether `response` to the probe shows the server ready."""
        raise NotImplementedError

    def command(self) -> list[str]:
        """The command line: `<binary> -d -c <conf>` (a subclass may run it otherwise)."""
        return [self.binary, "-d", "-c", str(self.conf)]

    def start(self, timeout: float = 15.0) -> None:
        """Start the program and return once its answer to the probe is `ready`."""
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        query = make_query(self.probe, self.probe_type).to_wire()
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self._process.returncode}:\n{self.log_text()}"
                )
            reply = udp_exchange(query, self.address, timeout=0.2)
            if reply is not None and self.ready(dns.message.from_wire(reply)):
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s:\n{self.log_text()}")

    def stop(self) -> None:
        """Stop the program: SIGTERM, then SIGKILL after five seconds."""
        process, self._process = self._process, None
        stop_process(process)

    def log_text(self, limit: int = 20000) -> str:
        """The end of what the program logged."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.path.getsize(self.log_path) - limit))
                return log.read().decode(errors="replace")
        except OSError:
            return ""
