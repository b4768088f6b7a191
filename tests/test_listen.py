"""Listening sockets: which IPv6 sockets take IPv4 too, and the TCP listener's socket.

The TCP listener runs on a `MemoryReactorClock` (which records the socket handed to it
with `adoptStreamPort`) with in-memory sockets (`fake_socket`); the one test of what
Twisted's port logs when accept() has no descriptor drives Twisted's real port.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from fake_socket import FakeSockets
from twisted.internet import tcp
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from misp_dns.dns.listen import TCPListener, dual_stack
from misp_dns.values import HostPort

V4_ANY = HostPort("0.0.0.0", 53)
V6_ANY = HostPort("::", 53)


def test_the_ipv6_wildcard_alone_takes_ipv4_too() -> None:
    """`[::]:53` alone is dual-stack, so IPv4 clients are answered over UDP and TCP alike;
    next to any IPv4 address on port 53 it is IPv6 only, so both can bind; on another
    port, or for a specific IPv6 address, the IPv4 address changes nothing."""
    assert dual_stack(V6_ANY, [V6_ANY])
    assert not dual_stack(V6_ANY, [V4_ANY, V6_ANY])
    assert not dual_stack(V6_ANY, [HostPort("127.0.0.1", 53), V6_ANY])
    assert dual_stack(V6_ANY, [HostPort("127.0.0.1", 5300), V6_ANY])
    assert not dual_stack(HostPort("::1", 53), [HostPort("::1", 53)])
    assert not dual_stack(V4_ANY, [V4_ANY])


class Rig:
    """A TCP listener on fake sockets and a memory reactor."""

    def __init__(self, address: HostPort, dual: bool = False) -> None:
        self.reactor = MemoryReactorClock()
        self.sockets = FakeSockets()
        self.factory = ServerFactory()
        self.listener = TCPListener(
            self.reactor,
            address,
            self.factory,
            backlog=1000,
            dual=dual,
            socket_factory=self.sockets,
        )


@pytest.mark.parametrize(("dual", "v6only"), [(True, 0), (False, 1)])
def test_an_ipv6_tcp_socket_is_dual_stack_exactly_when_udp_is(dual: bool, v6only: int) -> None:
    """The TCP socket of an IPv6 address gets IPV6_V6ONLY as the listener is told (the UDP
    listener of the same address is told the same), not the system default; it is bound,
    listening with the backlog asked, non-blocking, handed to the reactor and closed."""
    rig = Rig(V6_ANY, dual)
    rig.listener.startService()
    [sock] = rig.sockets.made
    assert (sock.family, sock.type) == (socket.AF_INET6, socket.SOCK_STREAM)
    assert sock.options[(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)] == v6only
    assert sock.options[(socket.SOL_SOCKET, socket.SO_REUSEADDR)] == 1
    assert sock.bound == ("::", 53) and sock.backlog == 1000 and not sock.blocking
    assert [(f, factory) for _, f, factory in rig.reactor.adoptedPorts] == [
        (socket.AF_INET6, rig.factory)
    ]
    assert sock.closed


def test_an_ipv4_tcp_socket_has_no_ipv6_option() -> None:
    """An IPv4 address gets an AF_INET socket and no IPv6 option."""
    rig = Rig(HostPort("127.0.0.1", 5300))
    rig.listener.startService()
    [sock] = rig.sockets.made
    assert sock.family == socket.AF_INET and sock.bound == ("127.0.0.1", 5300)
    assert (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) not in sock.options


def test_an_address_in_use_fails_start_and_leaves_nothing_open() -> None:
    """A bind error stops the start with CannotListenError naming the address; the socket
    is closed and the reactor was not given it."""
    rig = Rig(V4_ANY)
    rig.sockets.errors["bind"] = OSError(errno.EADDRINUSE, "Address already in use")
    with pytest.raises(CannotListenError) as raised:
        rig.listener.startService()
    assert (raised.value.interface, raised.value.port) == ("0.0.0.0", 53)
    assert rig.sockets.made[0].closed and rig.reactor.adoptedPorts == []


class NoDescriptorLeft:
    """A listening socket whose accept() fails as it does when the process has no
    descriptor left."""

    def accept(self) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")


class AdoptingReactor(MemoryReactorClock):
    """Hands back Twisted's real TCP port for the adopted socket (not started)."""

    def adoptStreamPort(self, fileno: int, addressFamily: int, factory: Any) -> Any:
        super().adoptStreamPort(fileno, addressFamily, factory)
        return tcp.Port(0, factory, interface="127.0.0.1", reactor=self)


def test_accept_without_a_descriptor_is_counted_not_logged_per_connection() -> None:
    """When Twisted's port cannot accept for want of a descriptor, what it would log for
    each attempt is counted in the shortage instead, which warns once."""
    reactor = AdoptingReactor()
    listener = TCPListener(
        reactor, V4_ANY, ServerFactory(), backlog=50, socket_factory=FakeSockets()
    )
    listener.startService()
    listener.port.socket = NoDescriptorLeft()
    listener.port.numberAccepts = 1  # what the port's startListening would have set
    with capturedLogs() as events:
        for _ in range(3):
            listener.port.doRead()
    assert listener.shortage.failures == {"accept": 3}
    assert ["out of file descriptors" in e["log_format"] for e in events] == [True]


def test_the_port_is_bound_before_privileges_are_dropped() -> None:
    """As Twisted's own TCP server does, the port is bound in `privilegedStartService` (so
    `twistd --uid` can still bind port 53), and starting afterwards binds nothing more;
    stopping lets the port go."""
    rig = Rig(V4_ANY)
    rig.listener.privilegedStartService()
    assert len(rig.reactor.adoptedPorts) == 1
    rig.listener.startService()
    assert len(rig.sockets.made) == 1 and len(rig.reactor.adoptedPorts) == 1
    rig.listener.stopService()
    assert rig.listener.port is None
