"""Listening sockets: which IPv6 sockets also take IPv4, and the TCP listener.

An IPv6 socket bound to the wildcard `::` can take IPv4 clients too (as `::ffff:a.b.c.d`)
unless IPV6_V6ONLY is set, and the kernel's default (net.ipv6.bindv6only) differs between
systems. misp-dns decides it once per address, the same way for UDP and TCP
(`dual_stack`): `[::]:53` alone answers IPv4 and IPv6 clients on both; next to an IPv4
address on the same port (`0.0.0.0:53`, `127.0.0.1:53`) it takes IPv6 only, so that the
two do not claim the same IPv4 port (which failed with EADDRINUSE).

`TCPListener` makes its listening socket itself, with that choice, and hands it to the
reactor (`IReactorSocket.adoptStreamPort`); Twisted's port then accepts the connections.
When `accept()` fails for want of a descriptor, Twisted closes the waiting connections
(it keeps one descriptor in reserve for that) and logs a line for each; the listener
counts them in the shared `DescriptorShortage` instead, which logs the episode once.

A serving process of a group (`[server] workers`, docs/workers.md) does not bind: it adopts
the sockets the supervisor opened for it (`sock=` of the listeners; see
`misp_dns.dns.reuseport`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger, globalLogPublisher

from misp_dns.dns.descriptors import DescriptorShortage
from misp_dns.values import HostPort

__all__ = ["TCPListener", "dual_stack", "tcp_socket"]

_IPV6_WILDCARD = "::"


def dual_stack(address: HostPort, listen: Sequence[HostPort]) -> bool:
    """Whether the socket for `address` takes IPv4 clients as well as IPv6 ones.

    Only the IPv6 wildcard does, and only when no IPv4 address in `listen` has its port.
    """
    if address.host != _IPV6_WILDCARD:
        return False
    return not any(
        other.family == socket.AF_INET and other.port == address.port for other in listen
    )


def set_v6only(sock: Any, address: HostPort, dual: bool) -> None:
    """Set IPV6_V6ONLY on an IPv6 socket as `dual` says (never left to the kernel)."""
    if address.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)


def tcp_socket(
    address: HostPort,
    dual: bool,
    backlog: int,
    *,
    reuse_port: bool = False,
    socket_factory: Callable[[int, int], Any] = socket.socket,
) -> Any:
    """A non-blocking TCP socket listening at `address`; CannotListenError when it cannot."""
    sock = socket_factory(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        set_v6only(sock, address, dual)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise CannotListenError(address.host, address.port, exc) from None
    return sock


class TCPListener(Service):
    """Listens for DNS-over-TCP connections at one address and gives them to `factory`.

    `socket_factory(family, type)` makes the listening socket: `socket.socket`, or a fake
    in tests. With `sock`, it listens on that socket (already bound and listening: one a
    serving process of a group inherited) instead of making one.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: HostPort,
        factory: Any,
        *,
        backlog: int,
        dual: bool = False,
        shortage: DescriptorShortage | None = None,
        socket_factory: Callable[[int, int], Any] = socket.socket,
        sock: Any = None,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.factory = factory
        self.sock = sock
        self.backlog = backlog
        self.dual = dual
        self.shortage = shortage if shortage is not None else DescriptorShortage(reactor)
        self.socket_factory = socket_factory
        self.port: Any = None

    def privilegedStartService(self) -> None:
        # Before twistd gives up root (--uid), as Twisted's own TCPServer binds.
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        family = self.address.family
        sock, self.sock = self.sock, None
        if sock is None:
            sock = tcp_socket(
                self.address, self.dual, self.backlog, socket_factory=self.socket_factory
            )
        try:
            # The reactor's port gets its own copy of the descriptor; this one is closed.
            self.port = self.reactor.adoptStreamPort(sock.fileno(), family, self.factory)
        except OSError as exc:
            raise CannotListenError(self.address.host, self.address.port, exc) from None
        finally:
            sock.close()
        if isinstance(self.port, tcp.Port):
            # Twisted's port logs its accept() errors through this (private) logger.
            observer = cast(ILogObserver, self._accept_event)
            self.port._logger = Logger(namespace=self.port._logger.namespace, observer=observer)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def _accept_event(self, event: dict[str, Any]) -> None:
        """What Twisted's port logs while accepting: descriptor shortages are counted
        (one per connection it had to close), everything else is logged as it was."""
        text = event.get("log_format") or ""
        if event.get("acceptError") in ("EMFILE", "ENFILE") or text.startswith(
            "EMFILE recovery: Closed"
        ):
            self.shortage.happened("accept")
        elif not text.startswith(("EMFILE encountered", "Re-reserving EMFILE")):
            globalLogPublisher(event)
