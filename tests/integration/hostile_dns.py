"""misp-dns under twistd for the hardening tests: any config, memory, and a steady query load.

- `write_config` renders `[server]`, `[cache]`, `[[policy]]` and `[[export]]` tables (inline
  tables too, for HTTP headers); `start_server` starts misp-dns with it, watched by
  `misp_stand_in.no_server_tracebacks`.
- `server_table` is a `[server]` table on loopback; `rss_kib` reads a process's resident
  memory and `pid_alive` tells whether it still exists.
- `read_jsonl` reads a JSONL file and fails on a line that is not whole JSON.
- `QueryLoad` sends UDP queries at a steady rate from a thread and sorts every reply by what
  it was (blocked, forwarded, other) against what was expected of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.rcode

from .misp_stand_in import watch
from .server import MispDnsProcess
from .wire import Address, make_query

__all__ = [
    "SERVER_NAME",
    "QueryLoad",
    "classify",
    "pid_alive",
    "read_jsonl",
    "rss_kib",
    "server_table",
    "start_server",
    "toml_value",
    "write_config",
]

SERVER_NAME = "dns.test.example"


def toml_value(value: Any) -> str:
    """`value` as TOML: strings, numbers, booleans, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    path: Path,
    server: Mapping[str, Any],
    policies: Sequence[Mapping[str, Any]] = (),
    exports: Sequence[Mapping[str, Any]] = (),
    cache: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete misp-dns config and return its path."""
    lines = ["[server]", *(f"{k} = {toml_value(v)}" for k, v in server.items()), ""]
    lines += ["[cache]", *(f"{k} = {toml_value(v)}" for k, v in (cache or {}).items()), ""]
    for section, tables in (("policy", policies), ("export", exports)):
        for table in tables:
            lines += [f"[[{section}]]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def server_table(port: int, upstream: Address, state_dir: Path, **extra: Any) -> dict[str, Any]:
    """A `[server]` table on 127.0.0.1:`port` forwarding to `upstream`."""
    return {
        "listen": [f"127.0.0.1:{port}"],
        "upstreams": [f"{upstream[0]}:{upstream[1]}"],
        "server_name": SERVER_NAME,
        "state_dir": str(state_dir),
        "upstream_timeout": 3,
    } | extra


def start_server(
    workdir: Path,
    config: Path,
    port: int,
    *,
    probe: str = "www.test.",
    timeout: float = 20.0,
) -> MispDnsProcess:
    """Start misp-dns on 127.0.0.1:`port` with `config`; return once it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = MispDnsProcess(config, [("127.0.0.1", port)], workdir)
    process.start(probe=probe, timeout=timeout)
    watched: MispDnsProcess = watch(process)
    return watched


def rss_kib(pid: int) -> int:
    """The resident set size of process `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file; AssertionError naming the first line that is not whole."""
    records = []
    data = path.read_bytes() if path.exists() else b""
    if data and not data.endswith(b"\n"):
        raise AssertionError(f"{path} ends inside a line: {data[-200:]!r}")
    for number, line in enumerate(data.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(
                f"{path}:{number} is not one JSON record: {line[:300]!r}"
            ) from None
    return records


def classify(wire: bytes) -> str:
    """ "blocked" (NXDOMAIN with an SOA owned by the query name, or EDE 15), "forwarded"
    (any other NOERROR/NXDOMAIN), or the response code's name."""
    response = dns.message.from_wire(wire)
    blocked_soa = response.rcode() == dns.rcode.NXDOMAIN and any(
        rrset.name == response.question[0].name for rrset in response.authority
    )
    ede = any(o.otype == dns.edns.OptionType.EDE and int(o.code) == 15 for o in response.options)
    if blocked_soa or ede:
        return "blocked"
    if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return "forwarded"
    return dns.rcode.to_text(response.rcode())


class QueryLoad(threading.Thread):
    """UDP queries at `rate` per second until `stop()`; each reply checked against `make`.

    `make(i)` gives the i-th query's name and what its answer must be ("blocked" or
    "forwarded"). After `stop()` the thread waits `timeout` seconds for late replies; then
    `sent`, `answered`, `lost` (names never answered), `wrong` ((name, expected, got)) and
    `answered_names` tell what happened.
    """

    def __init__(
        self,
        address: Address,
        make: Callable[[int], tuple[str, str]],
        *,
        rate: float = 400.0,
        timeout: float = 2.0,
        edns: bool = True,
    ) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.make = make
        self.rate = rate
        self.timeout = timeout
        self.edns = edns
        self.sent = 0
        self.answered = 0
        self.lost: list[str] = []
        self.wrong: list[tuple[str, str, str]] = []
        self.answered_names: list[str] = []
        self.refused_after: float | None = None
        self._stop_at: float | None = None
        self._pending: dict[int, tuple[str, str, float]] = {}

    def stop(self) -> None:
        """Stop sending; `join()` then returns once late replies had their chance."""
        self._stop_at = time.monotonic()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect(self.address)
            sock.setblocking(False)
            started = time.monotonic()
            while True:
                now = time.monotonic()
                if self._stop_at is None:
                    due = int((now - started) * self.rate) + 1
                    while self.sent < due:
                        self._send(sock)
                elif not self._pending or now - self._stop_at > self.timeout:
                    break
                self._expire(now)
                readable, _, _ = select.select([sock], [], [], 0.002)
                if readable:
                    self._receive(sock)
        self.lost.extend(name for name, _, _ in self._pending.values())

    def _send(self, sock: socket.socket) -> None:
        index = self.sent
        self.sent += 1
        name, expected = self.make(index)
        query = make_query(name, "A", qid=index % 65536, edns=0 if self.edns else None)
        if index % 65536 in self._pending:
            old = self._pending.pop(index % 65536)
            self.lost.append(old[0])
        self._pending[index % 65536] = (name, expected, time.monotonic())
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            sock.send(query.to_wire())

    def _expire(self, now: float) -> None:
        for qid, (name, _, sent) in list(self._pending.items()):
            if now - sent > self.timeout:
                del self._pending[qid]
                self.lost.append(name)

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                if self.refused_after is None:
                    self.refused_after = time.monotonic()
                continue
            if len(data) < 12:
                continue
            entry = self._pending.pop(struct.unpack("!H", data[:2])[0], None)
            if entry is None:
                continue
            name, expected, _ = entry
            self.answered += 1
            self.answered_names.append(name)
            got = classify(data)
            if got != expected:
                self.wrong.append((name, expected, got))


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
