"""Small measuring tools: one raw DNS query, memory of a process, waiting for an answer.

`rcode` sends one query built with `struct` (no dnspython, so polling every few
milliseconds costs the machine nearly nothing) and returns the response code, or None when
nothing came back in time. `wait_for_block` waits for misp-dns's own blocked answer
(NXDOMAIN with EDE 15 and its `source=` report): the bench's Unbound answers the same
names NXDOMAIN too, so an NXDOMAIN alone may be a query misp-dns forwarded before its
policy's first snapshot. `memory_mib` reads VmRSS/VmHWM from /proc/PID/status, and
`MemoryWatch` samples VmRSS in a thread so a report can say when the peak happened.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from pathlib import Path

__all__ = [
    "EDE_BLOCKED",
    "NOERROR",
    "NXDOMAIN",
    "MemoryWatch",
    "blocked_here",
    "extended_errors",
    "memory_mib",
    "query_wire",
    "rcode",
    "reply",
    "wait_for_block",
    "wait_for_rcode",
]

NOERROR = 0
NXDOMAIN = 3
_OPT = 41
_EDE_OPTION = 15
EDE_BLOCKED = 15


def query_wire(name: str, qid: int, qtype: int = 1, edns: bool = True) -> bytes:
    """A recursive query for `name`, with an OPT record (1232-byte payload) when `edns`."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    labels = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in name.strip(".").split(".")
    )
    question = labels + b"\x00" + struct.pack("!HH", qtype, 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0) if edns else b""
    return header + question + opt


def reply(address: tuple[str, int], name: str, timeout: float = 0.2) -> bytes | None:
    """Ask `address` for `name` A over UDP once (with EDNS); the reply, or None."""
    qid = random.randrange(65536)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.send(query_wire(name, qid))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(4096)
                if len(data) >= 12 and struct.unpack_from("!H", data)[0] == qid:
                    return data
        except OSError:  # refused (nothing listening yet) or timed out
            return None
    return None


def rcode(address: tuple[str, int], name: str, timeout: float = 0.2) -> int | None:
    """Ask `address` for `name` A over UDP once; its RCODE, or None on no (matching) answer."""
    data = reply(address, name, timeout)
    return None if data is None else data[3] & 0x0F


def _skip_name(message: bytes, offset: int) -> int:
    while True:
        length = message[offset]
        if length >= 0xC0:
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset


def extended_errors(message: bytes) -> list[tuple[int, str]]:
    """The (INFO-CODE, EXTRA-TEXT) of each EDE option (RFC 8914) in a reply's OPT record."""
    counts = struct.unpack_from("!4H", message, 4)
    offset = 12
    for _ in range(counts[0]):
        offset = _skip_name(message, offset) + 4
    found: list[tuple[int, str]] = []
    for _ in range(sum(counts[1:])):
        offset = _skip_name(message, offset)
        rtype, _class, _ttl, length = struct.unpack_from("!HHIH", message, offset)
        offset += 10
        if rtype == _OPT:
            found += _ede_options(message[offset : offset + length])
        offset += length
    return found


def _ede_options(rdata: bytes) -> list[tuple[int, str]]:
    found = []
    offset = 0
    while offset + 4 <= len(rdata):
        code, length = struct.unpack_from("!HH", rdata, offset)
        value = rdata[offset + 4 : offset + 4 + length]
        if code == _EDE_OPTION and len(value) >= 2:
            info = struct.unpack_from("!H", value)[0]
            found.append((info, value[2:].decode("utf-8", "replace")))
        offset += 4 + length
    return found


def blocked_here(message: bytes | None) -> bool:
    """Whether a reply is misp-dns's own blocked answer: NXDOMAIN with EDE 15 (Blocked)
    and its `source=...` report, not an upstream's NXDOMAIN passed through."""
    if message is None or message[3] & 0x0F != NXDOMAIN:
        return False
    try:
        errors = extended_errors(message)
    except (IndexError, struct.error):
        return False
    return any(code == EDE_BLOCKED and text.startswith("source=") for code, text in errors)


def wait_for_block(
    address: tuple[str, int],
    name: str,
    timeout: float,
    interval: float = 0.002,
    alive: object = None,
) -> float:
    """Poll until misp-dns itself blocks `name` (see `blocked_here`); return the
    `time.monotonic()` of that answer. `alive` (a Popen) stops the wait early when that
    process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if blocked_here(reply(address, name, timeout=0.05)):
            return time.monotonic()
        if alive is not None and alive.poll() is not None:  # type: ignore[attr-defined]
            raise RuntimeError(f"the server exited before blocking {name}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{name} not blocked by misp-dns within {timeout} s")
        time.sleep(interval)


def wait_for_rcode(
    address: tuple[str, int],
    name: str,
    wanted: int,
    timeout: float,
    interval: float = 0.002,
    alive: object = None,
) -> float:
    """Poll until `name` is answered with `wanted`; return the `time.monotonic()` of that
    answer. `alive` (a Popen) stops the wait early when that process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if rcode(address, name, timeout=0.05) == wanted:
            return time.monotonic()
        if alive is not None and alive.poll() is not None:  # type: ignore[attr-defined]
            raise RuntimeError(f"the server exited before answering {name}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{name} not answered with RCODE {wanted} within {timeout} s")
        time.sleep(interval)


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM, ...) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"{field} not in /proc/{pid}/status")


class MemoryWatch:
    """Samples a process's VmRSS every `interval` seconds in a daemon thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (time.monotonic(), MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemoryWatch:
        """Start sampling; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), memory_mib(self.pid)))
            except (OSError, LookupError):
                return
            self._stop.wait(self.interval)

    def peak(self) -> tuple[float, float]:
        """(time, MiB) of the largest sample."""
        return max(self.samples, key=lambda sample: sample[1], default=(0.0, 0.0))

    def at(self, moment: float) -> float:
        """The last sample taken at or before `moment` (MiB), or 0."""
        before = [mib for when, mib in self.samples if when <= moment]
        return before[-1] if before else 0.0
