"""The UDP listener: binding, reading in batches, answering now or later, errors, stopping.

The listener runs on a `MemoryReactorClock` with an in-memory datagram socket (`fake_socket`)
handed to it as its socket factory; the reactor's part (calling `doRead` when the socket is
readable) is played by the test. Queries and answers are real DNS packets (dnspython).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import dns.message
import dns.rcode
import pytest
from conftest import no_result
from fake_socket import FakeDatagramSocket, FakeSockets, pump
from twisted.internet import defer
from twisted.internet.error import CannotListenError, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns as tdns
from twisted.python.failure import Failure

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.server import Responder
from misp_dns.dns.udp import UDPListener
from misp_dns.dns.wire import Request
from misp_dns.event import Answer
from misp_dns.values import HostPort

ADDRESS = HostPort("127.0.0.1", 5300)
CLIENT = ("127.0.0.1", 40001)


class OneAddress:
    """Stands in for ChainResolver: no policy, no cache, every name has one A record."""

    policy = None

    def decide(self, *args: Any) -> None:
        return None

    def answer_held(self, *args: Any) -> None:
        return None

    def resolve(self, request: Request, client: str, transport: str) -> Answer:
        name = request.question.name.name
        record = tdns.RRHeader(name, tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.7", 60))
        return Answer(tdns.OK, answers=(record,))


class ScriptedResponder:
    """Returns what the test queued for each packet (bytes, a Deferred, None or an
    exception to raise), and remembers how it was called."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls: list[tuple[bytes, str, str]] = []

    def respond(self, data: bytes, client: str, transport: str) -> Any:
        self.calls.append((data, client, transport))
        result = self.results.pop(0) if self.results else b"answer:" + data
        if isinstance(result, Exception):
            raise result
        return result


class Rig:
    """A started listener on fake sockets, and what it sent."""

    def __init__(
        self, responder: Any = None, address: HostPort = ADDRESS, dual: bool = False
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.sockets = FakeSockets()
        self.responder = responder if responder is not None else ScriptedResponder()
        self.listener = UDPListener(
            self.reactor, address, self.responder, dual=dual, socket_factory=self.sockets
        )

    def start(self) -> UDPListener:
        self.listener.startService()
        return self.listener

    @property
    def socket(self) -> FakeDatagramSocket:
        return self.sockets.made[-1]

    def receive(self, *datagrams: bytes, source: tuple[str, int] = CLIENT) -> None:
        """Datagrams arrive from `source`; the reactor lets the listener read them."""
        for datagram in datagrams:
            self.socket.deliver(datagram, source)
        pump(self.reactor, self.sockets)

    def sent(self) -> list[tuple[bytes, Any]]:
        return self.socket.sent


def test_start_binds_a_nonblocking_socket_with_a_large_buffer_and_reads_it() -> None:
    """Starting binds the configured address with a 4 MiB receive buffer, non-blocking, and
    registers the listener with the reactor; `port` is the port bound."""
    rig = Rig()
    listener = rig.start()
    sock = rig.socket
    assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_DGRAM)
    assert sock.bound == ("127.0.0.1", 5300) and not sock.blocking
    assert sock.options[(socket.SOL_SOCKET, socket.SO_RCVBUF)] == 4 * 1024 * 1024
    assert rig.reactor.getReaders() == [listener]
    assert listener.port == 5300 and listener.fileno() == sock.fileno()
    assert listener.logPrefix() == "udp 127.0.0.1:5300"


def test_an_ipv6_address_gets_a_v6_only_socket() -> None:
    """An IPv6 listen address binds an AF_INET6 socket with IPV6_V6ONLY, so "[::]:53" does
    not also take the IPv4 port; port 0 reports the port the system chose."""
    rig = Rig(address=HostPort("::1", 0))
    listener = rig.start()
    assert rig.socket.family == socket.AF_INET6
    assert rig.socket.options[(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)] == 1
    assert listener.port == 53053  # what the fake socket "chose"


def test_a_dual_stack_socket_takes_ipv4_clients_known_by_their_ipv4_address() -> None:
    """A dual-stack IPv6 wildcard socket clears IPV6_V6ONLY (whatever the system default);
    an IPv4 client reaching it as ::ffff:127.0.0.1 is 127.0.0.1 to the responder, and its
    answer goes back to the address it came from."""
    rig = Rig(address=HostPort("::", 5300), dual=True)
    rig.start()
    assert rig.socket.options[(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)] == 0
    rig.receive(b"query", source=("::ffff:127.0.0.1", 40001, 0, 0))
    assert rig.responder.calls == [(b"query", "127.0.0.1", "udp")]
    assert rig.sent() == [(b"answer:query", ("::ffff:127.0.0.1", 40001, 0, 0))]


def test_an_address_in_use_fails_start_and_leaves_nothing_open() -> None:
    """A bind error stops the start with CannotListenError naming the address; the socket
    is closed and the reactor was not given it."""
    rig = Rig()
    rig.sockets.errors["bind"] = OSError(errno.EADDRINUSE, "Address already in use")
    with pytest.raises(CannotListenError) as raised:
        rig.start()
    assert (raised.value.interface, raised.value.port) == ("127.0.0.1", 5300)
    assert rig.socket.closed and rig.reactor.getReaders() == []


def test_a_query_is_answered_to_the_address_it_came_from() -> None:
    """Through the real Responder: an allowed client gets its answer sent to its own
    address and port; a client outside the ACL gets REFUSED, as the responder decides."""
    acl = ClientACL([ipaddress.ip_network("127.0.0.0/8")])
    rig = Rig(Responder(OneAddress(), acl, Clock()))
    rig.start()
    query = dns.message.make_query("www.example.com", "A")
    rig.receive(query.to_wire())
    rig.receive(query.to_wire(), source=("198.51.100.7", 5353))
    [(allowed, to_client), (refused, to_stranger)] = rig.sent()
    answer = dns.message.from_wire(allowed)
    assert to_client == CLIENT and answer.id == query.id
    assert answer.rcode() == dns.rcode.NOERROR
    assert [str(rdata) for rdata in answer.answer[0]] == ["192.0.2.7"]
    assert to_stranger == ("198.51.100.7", 5353)
    assert dns.message.from_wire(refused).rcode() == dns.rcode.REFUSED


def test_the_responder_is_told_the_client_ip_and_udp() -> None:
    """The responder gets the packet, the client's IP (without the port) and "udp"."""
    rig = Rig()
    rig.start()
    rig.receive(b"q1", source=("192.0.2.44", 1234))
    assert rig.responder.calls == [(b"q1", "192.0.2.44", "udp")]
    assert rig.sent() == [(b"answer:q1", ("192.0.2.44", 1234))]


def test_an_answer_that_comes_later_is_sent_when_it_is_ready() -> None:
    """A forwarded query's answer (a Deferred) goes to the client when it fires, and the
    queries after it are not held up."""
    later: defer.Deferred[bytes] = defer.Deferred()
    rig = Rig(ScriptedResponder(later))
    rig.start()
    rig.receive(b"slow", b"fast")
    assert rig.sent() == [(b"answer:fast", CLIENT)]
    later.callback(b"slow answer")
    assert rig.sent()[-1] == (b"slow answer", CLIENT)


def test_no_answer_means_nothing_is_sent() -> None:
    """A dropped packet (None, now or later) sends nothing back."""
    later: defer.Deferred[None] = defer.Deferred()
    rig = Rig(ScriptedResponder(None, later))
    rig.start()
    rig.receive(b"junk", b"dropped later")
    later.callback(None)
    assert rig.sent() == []


@pytest.mark.allow_errors
def test_a_failing_responder_costs_that_packet_only(logged_errors: list[dict[str, Any]]) -> None:
    """An exception while answering one packet is logged with the client; the next packet
    in the same read is answered."""
    rig = Rig(ScriptedResponder(RuntimeError("bug")))
    rig.start()
    rig.receive(b"first", b"second")
    assert rig.sent() == [(b"answer:second", CLIENT)]
    [event] = logged_errors
    assert event["log_format"] == "answering {client} failed" and event["client"] == "127.0.0.1"


def test_one_wakeup_reads_at_most_64_datagrams() -> None:
    """A flood is read 64 datagrams at a time, so one busy socket cannot starve the rest
    of the reactor; the remainder is read on the next wake-up."""
    rig = Rig()
    listener = rig.start()
    for index in range(70):
        rig.socket.deliver(b"%d" % index, CLIENT)
    listener.doRead()
    assert len(rig.sent()) == 64
    listener.doRead()
    assert [data for data, _ in rig.sent()] == [b"answer:%d" % i for i in range(70)]


def test_icmp_errors_from_earlier_sends_do_not_stop_reading() -> None:
    """ECONNREFUSED, EHOSTUNREACH and ENETUNREACH reported on read concern earlier answers,
    not this socket: they are skipped and the datagrams after them answered."""
    rig = Rig()
    listener = rig.start()
    rig.socket.deliver(b"before", CLIENT)
    for code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
        rig.socket.deliver_error(OSError(code, "icmp"))
    rig.socket.deliver(b"after", CLIENT)
    listener.doRead()
    assert [data for data, _ in rig.sent()] == [b"answer:before", b"answer:after"]


@pytest.mark.allow_errors
def test_another_read_error_is_logged_and_reading_goes_on_later(
    logged_errors: list[dict[str, Any]],
) -> None:
    """Any other read error is logged and ends this wake-up; the next one reads on."""
    rig = Rig()
    listener = rig.start()
    rig.socket.deliver_error(OSError(errno.ENOBUFS, "No buffer space available"))
    rig.socket.deliver(b"next", CLIENT)
    listener.doRead()
    assert rig.sent() == []
    assert [e["log_format"] for e in logged_errors] == ["reading from {address} failed"]
    listener.doRead()
    assert rig.sent() == [(b"answer:next", CLIENT)]


def test_a_failed_send_is_counted_and_reading_goes_on() -> None:
    """An answer that cannot be sent (full buffer, unreachable client) is counted in
    `send_errors`; the client will ask again, and the listener keeps serving."""
    rig = Rig()
    listener = rig.start()
    rig.socket.errors["sendto"] = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    rig.receive(b"lost")
    assert listener.send_errors == 1
    del rig.socket.errors["sendto"]
    rig.receive(b"kept")
    assert rig.sent() == [(b"answer:kept", CLIENT)]


def test_stop_closes_the_socket_and_drops_answers_still_on_their_way() -> None:
    """Stopping unregisters and closes the socket; an answer that arrives afterwards is
    dropped quietly."""
    later: defer.Deferred[bytes] = defer.Deferred()
    rig = Rig(ScriptedResponder(later))
    listener = rig.start()
    rig.receive(b"slow")
    listener.stopService()
    assert rig.reactor.getReaders() == [] and rig.socket.closed
    assert listener.fileno() == -1 and not listener.running
    later.callback(b"too late")
    assert rig.sent() == []
    listener.stopService()  # stopping twice is harmless


def test_a_socket_lost_under_the_listener_is_not_read_or_written() -> None:
    """When the reactor reports the socket lost, reads do nothing and late answers are
    dropped; stopping afterwards is still clean."""
    later: defer.Deferred[bytes] = defer.Deferred()
    rig = Rig(ScriptedResponder(later))
    listener = rig.start()
    rig.receive(b"slow")
    lost = rig.socket
    listener.connectionLost(Failure(ConnectionLost()))
    lost.deliver(b"unread", CLIENT)
    listener.doRead()
    assert rig.responder.calls == [(b"slow", "127.0.0.1", "udp")]
    no_result(later)
    later.callback(b"too late")
    assert lost.sent == []
    listener.stopService()


def test_the_fake_socket_offers_only_what_real_sockets_have() -> None:
    """Every socket method the fake implements (beyond the test's own `deliver`s) exists on
    `socket.socket`, so code that passes these tests calls the real API."""
    test_side = {"deliver", "deliver_error"}
    methods = [
        name
        for name, member in vars(FakeDatagramSocket).items()
        if callable(member) and not name.startswith("_") and name not in test_side
    ]
    assert "recvfrom" in methods and "sendto" in methods
    assert [name for name in methods if not hasattr(socket.socket, name)] == []
