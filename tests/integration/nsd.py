"""A real NSD on loopback, authoritative for the zone files it is given.

`NsdProcess` runs `nsd -d -c <conf>` (one server process, no chroot, no privilege drop, no
remote control, no database, response rate limiting off so a test's burst of queries is
never slipped or dropped) and waits until it answers the SOA query of its first zone with
AA set. `write_nsd_config` writes that configuration for a set of zones.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode

from .net import stop_process
from .wire import Address, make_query, udp_exchange

__all__ = ["NsdProcess", "write_nsd_config"]


def write_nsd_config(directory: Path, port: int, zones: Mapping[str, Path]) -> Path:
    """Write `nsd.conf` in `directory` serving `zones` (origin -> zone file) on
    127.0.0.1:`port`; return its path."""
    server = [
        "ip-address: 127.0.0.1",
        f"port: {port}",
        "do-ip6: no",
        "server-count: 1",
        "reuseport: no",
        'username: ""',
        'chroot: ""',
        f'zonesdir: "{directory}"',
        'database: ""',
        f'zonelistfile: "{directory / "zone.list"}"',
        f'xfrdfile: "{directory / "xfrd.state"}"',
        f'xfrdir: "{directory}"',
        'pidfile: ""',
        "verbosity: 1",
        "hide-version: yes",
        "zonefiles-write: 0",
        # Rate limiting would slip (TC) or drop some of a test's back-to-back queries.
        "rrl-ratelimit: 0",
        "rrl-whitelist-ratelimit: 0",
    ]
    lines = ["server:", *(f"    {line}" for line in server)]
    lines += ["remote-control:", "    control-enable: no"]
    for origin, path in zones.items():
        lines += ["zone:", f'    name: "{origin}"', f'    zonefile: "{path}"']
    conf = directory / "nsd.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class NsdProcess:
    """`nsd -d -c conf` as a child process, started and stopped by the caller."""

    def __init__(self, binary: str, conf: Path, address: Address, probe: str) -> None:
        self.binary = binary
        self.conf = conf
        self.address = address
        self.probe = probe
        self.log_path = conf.with_suffix(".log")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start NSD and return once it answers the SOA of `probe` authoritatively."""
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [self.binary, "-d", "-c", str(self.conf)],
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
        query = make_query(self.probe, "SOA").to_wire()
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nsd exited {self._process.returncode}:\n{self.log_text()}")
            reply = udp_exchange(query, self.address, timeout=0.2)
            if reply is None:
                time.sleep(0.02)
                continue
            response = dns.message.from_wire(reply)
            if response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA:
                return
            time.sleep(0.02)
        raise RuntimeError(f"nsd did not serve {self.probe} within {timeout} s:\n{self.log_text()}")

    def stop(self) -> None:
        """Stop NSD: SIGTERM, then SIGKILL after five seconds."""
        process, self._process = self._process, None
        stop_process(process)

    def log_text(self, limit: int = 20000) -> str:
        """The end of what NSD logged."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.path.getsize(self.log_path) - limit))
                return log.read().decode(errors="replace")
        except OSError:
            return ""
