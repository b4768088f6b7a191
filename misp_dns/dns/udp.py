"""The UDP listener: a non-blocking socket read straight from the reactor.

Twisted's UDP `Port` checks every destination address and goes through a protocol object
per datagram; at tens of thousands of queries a second that bookkeeping costs more than
answering. This listener registers its socket with the reactor (`IReactorFDSet.addReader`),
reads every datagram waiting when the reactor says it is readable, and sends each answer
with one `sendto`. Answers that come later (forwarded queries) are sent when they are ready.
An IPv6 socket takes IPv4 clients too only when `dual` says so (see `misp_dns.dns.listen`);
such a client is known by its IPv4 address. A serving process of a group hands it the
socket it inherited (`sock=`, see `misp_dns.dns.listen.group_sockets`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from misp_dns.dns.acl import plain_address
from misp_dns.dns.listen import set_v6only
from misp_dns.values import HostPort

__all__ = ["UDPListener", "udp_socket"]

# Datagrams read per wake-up before letting the reactor look at other sockets.
_BATCH = 64
_RECEIVE_BUFFER = 4 * 1024 * 1024
_MAX_DATAGRAM = 65535


def udp_socket(
    address: HostPort,
    dual: bool,
    *,
    reuse_port: bool = False,
    socket_factory: Callable[[int, int], Any] = socket.socket,
) -> Any:
    """A non-blocking UDP socket bound to `address`; CannotListenError when it cannot be."""
    sock = socket_factory(address.family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        set_v6only(sock, address, dual)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.bind((address.host, address.port))
    except OSError as exc:
        sock.close()
        raise CannotListenError(address.host, address.port, exc) from None
    sock.setblocking(False)
    return sock


class UDPListener(Service):
    """Answers DNS queries arriving over UDP at one address, through a `Responder`.

    `socket_factory(family, type)` makes the socket: `socket.socket`, or an in-memory one
    in tests. With `dual`, an IPv6 wildcard socket takes IPv4 clients too. With `sock`, it
    reads that socket (already bound: one a serving process of a group inherited).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: HostPort,
        responder: Any,
        *,
        dual: bool = False,
        socket_factory: Callable[[int, int], Any] = socket.socket,
        sock: socket.socket | None = None,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.responder = responder
        self.dual = dual
        self.socket_factory = socket_factory
        self._given = sock
        self.socket: socket.socket | None = None
        self.send_errors = 0

    @property
    def port(self) -> int:
        """The port actually bound (useful when configured as 0)."""
        assert self.socket is not None
        return int(self.socket.getsockname()[1])

    def startService(self) -> None:
        super().startService()
        sock, self._given = self._given, None
        if sock is None:
            sock = udp_socket(self.address, self.dual, socket_factory=self.socket_factory)
        self.socket = sock
        self.reactor.addReader(self)

    def stopService(self) -> None:
        super().stopService()
        if self.socket is not None:
            self.reactor.removeReader(self)
            self.socket.close()
            self.socket = None

    def fileno(self) -> int:
        return self.socket.fileno() if self.socket is not None else -1

    def logPrefix(self) -> str:
        return f"udp {self.address}"

    def connectionLost(self, reason: Any) -> None:
        """Called by the reactor if the socket goes away under it."""
        self.socket = None

    def doRead(self) -> None:
        sock = self.socket
        if sock is None:
            return
        receive, send = sock.recvfrom, sock.sendto
        respond = self.responder.respond
        dual = self.dual
        for _ in range(_BATCH):
            try:
                data, addr = receive(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors from earlier sends surface here on Linux; they are not ours.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                self.log.failure("reading from {address} failed", address=str(self.address))
                return
            client = plain_address(addr[0]) if dual else addr[0]
            try:
                result = respond(data, client, "udp")
            except Exception:
                self.log.failure("answering {client} failed", client=client)
                continue
            if result is None:
                continue
            if isinstance(result, defer.Deferred):
                result.addCallback(self._send, addr)
                continue
            # `_send`, inline: a method call per answer is a measurable share of it.
            if self.socket is None:
                return  # stopped while answering
            try:
                send(result, addr)
            except OSError:
                self.send_errors += 1

    def _send(self, wire: bytes | None, addr: Any) -> None:
        sock = self.socket
        if wire is None or sock is None:
            return
        try:
            sock.sendto(wire, addr)
        except OSError:
            # A full send buffer or an unreachable client: the client will ask again.
            self.send_errors += 1
