"""In-memory datagram sockets for the UDP listener's and the forwarder's tests.

`FakeSockets` is a socket factory (`(family, type) -> socket`) to pass as `socket_factory`;
it remembers every socket it made. A `FakeDatagramSocket` behaves like a non-blocking
`SOCK_DGRAM` socket as far as misp-dns uses one: what is sent is recorded; what a test
`deliver`s is read back in order; reading with nothing waiting raises `BlockingIOError`; an
error queued with `deliver_error` is raised by the read that reaches it (how Linux reports an
ICMP error); `connect` to an unreachable host fails with ENETUNREACH; `fileno()` is -1 once
closed. The factory itself can fail as `socket()` does, per address family (EMFILE when no
descriptor is left, EAFNOSUPPORT on a host without IPv6). Nothing touches the network.

`pump(reactor, sockets)` plays the reactor's part: it calls `doRead` on every reader of a
`MemoryReactor` whose fake socket has something waiting, until none has.
"""

from __future__ import annotations

import errno
import itertools
from collections import deque
from typing import Any

__all__ = ["FakeDatagramSocket", "FakeSockets", "pump"]

Address = tuple[Any, ...]

_descriptors = itertools.count(1000)


class FakeDatagramSocket:
    """A non-blocking datagram socket that lives in memory (see the module docstring)."""

    def __init__(
        self, family: int, kind: int, errors: dict[str, OSError], unreachable: set[str]
    ) -> None:
        self.family = family
        self.type = kind
        self.options: dict[tuple[int, int], int] = {}
        self.blocking = True
        self.bound: Address | None = None
        #: The backlog `listen` was called with (a listening stream socket), else None.
        self.backlog: int | None = None
        self.peer: Address | None = None
        self.sent: list[tuple[bytes, Address | None]] = []
        self.closed = False
        #: Operation name -> the OSError it raises ("bind", "connect", "send", "sendto").
        self.errors = dict(errors)
        #: Hosts `connect` reports as unreachable (ENETUNREACH), as Linux does with no route.
        self.unreachable = unreachable
        self._incoming: deque[tuple[bytes, Address] | OSError] = deque()
        self._fileno = next(_descriptors)

    # What a test does.

    def deliver(self, data: bytes, source: Address | None = None) -> None:
        """Queue a datagram for the next read, from `source` (default: the connected peer)."""
        origin = source if source is not None else self.peer
        assert origin is not None, "deliver to an unconnected socket needs a source"
        self._incoming.append((data, origin))

    def deliver_error(self, error: OSError) -> None:
        """Queue an error for the read that reaches it (how Linux reports ICMP errors)."""
        self._incoming.append(error)

    @property
    def waiting(self) -> bool:
        """True while a datagram or an error is waiting to be read."""
        return bool(self._incoming) and not self.closed

    # The socket.socket methods misp-dns calls.

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[(level, option)] = value

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def bind(self, address: Address) -> None:
        self._maybe_fail("bind")
        host, port = address[0], address[1]
        self.bound = (host, port or 53053, *address[2:])

    def listen(self, backlog: int) -> None:
        self._maybe_fail("listen")
        self.backlog = backlog

    def getsockname(self) -> Address:
        assert self.bound is not None
        return self.bound

    def connect(self, address: Address) -> None:
        self._maybe_fail("connect")
        if address[0] in self.unreachable:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        self.peer = address

    def send(self, data: bytes) -> int:
        self._maybe_fail("send")
        self.sent.append((bytes(data), self.peer))
        return len(data)

    def sendto(self, data: bytes, address: Address) -> int:
        self._maybe_fail("sendto")
        self.sent.append((bytes(data), address))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.recvfrom(size)[0]

    def recvfrom(self, size: int) -> tuple[bytes, Address]:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        if self.blocking:
            raise AssertionError("misp-dns reads its sockets non-blocking")
        if not self._incoming:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        item = self._incoming.popleft()
        if isinstance(item, OSError):
            raise item
        data, source = item
        return data[:size], source

    def fileno(self) -> int:
        return -1 if self.closed else self._fileno

    def close(self) -> None:
        self.closed = True

    def _maybe_fail(self, operation: str) -> None:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        error = self.errors.get(operation)
        if error is not None:
            raise error


class FakeSockets:
    """A `socket_factory` that makes `FakeDatagramSocket`s and keeps them in `made`.

    `errors` (operation name -> OSError) is given to every socket it makes, so a test can
    make `bind` or `connect` fail before the code under test creates the socket; a host in
    `unreachable` cannot be connected to; an address family in `cannot_make` gets its
    OSError instead of a socket; past `limit` sockets it raises RuntimeError, so a test of
    code that would loop making sockets ends.
    """

    def __init__(self) -> None:
        self.made: list[FakeDatagramSocket] = []
        self.errors: dict[str, OSError] = {}
        self.unreachable: set[str] = set()
        #: Address family -> the OSError `socket()` raises for it.
        self.cannot_make: dict[int, OSError] = {}
        self.limit = 1000

    def __call__(self, family: int, kind: int) -> FakeDatagramSocket:
        if len(self.made) >= self.limit:
            raise RuntimeError(f"more than {self.limit} sockets made")
        failure = self.cannot_make.get(family)
        if failure is not None:
            raise failure
        made = FakeDatagramSocket(family, kind, self.errors, self.unreachable)
        self.made.append(made)
        return made

    def open(self) -> list[FakeDatagramSocket]:
        """The sockets not closed yet."""
        return [s for s in self.made if not s.closed]

    def by_fileno(self, fileno: int) -> FakeDatagramSocket | None:
        """The open socket with this descriptor, if any."""
        return next((s for s in self.open() if s.fileno() == fileno), None)


def pump(reactor: Any, sockets: FakeSockets) -> None:
    """Call `doRead` on each reader whose socket has something waiting, until none has."""
    progress = True
    while progress:
        progress = False
        for reader in list(reactor.getReaders()):
            if reader not in reactor.getReaders():
                continue  # removed by an earlier reader's doRead
            sock = sockets.by_fileno(reader.fileno())
            if sock is not None and sock.waiting:
                reader.doRead()
                progress = True
