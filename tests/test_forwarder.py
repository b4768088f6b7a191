"""The upstream forwarder: what it sends, which replies it takes, retries, deadline, TCP.

Everything runs on Twisted's fakes: a `MemoryReactorClock` for time, readers and TCP
connections, `StringTransport` for the TCP fallback, and in-memory datagram sockets
(`fake_socket`) handed to the forwarder as its socket factory. Replies are built with
dnspython from the query the forwarder actually sent.
"""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from conftest import failure_of, no_result, result_of
from fake_socket import FakeDatagramSocket, FakeSockets, pump
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectBindError, ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.names import dns as tdns
from twisted.python.failure import Failure

from misp_dns.dns.forwarder import Forwarder, UpstreamFailed, system_upstreams
from misp_dns.event import Answer, Kind
from misp_dns.values import HostPort, Upstream

UP1 = HostPort("192.0.2.1", 53)
UP2 = HostPort("192.0.2.2", 5353)
NAME = "www.example.com"
SOA = "ns.example.com. hostmaster.example.com. 7 7200 3600 1209600 300"


class Rig:
    """A forwarder over fake sockets on a MemoryReactorClock, and ways to answer it."""

    def __init__(self, *upstreams: HostPort, timeout: float = 5.0) -> None:
        self.reactor = MemoryReactorClock()
        self.sockets = FakeSockets()
        self.forwarder = Forwarder(
            list(upstreams) or [UP1], self.reactor, timeout, socket_factory=self.sockets
        )

    def ask(self, name: str = NAME, qtype: int = tdns.A, **flags: Any) -> Deferred[Answer]:
        """Ask about `name` (presentation format), passed on in wire format."""
        return self.forwarder.resolve(dns.name.from_text(name).to_wire(), qtype, **flags)

    def peers(self) -> list[tuple[Any, ...]]:
        """Where each UDP query went, in order (one socket per query)."""
        return [s.peer for s in self.sockets.made if s.sent]

    def query(self, index: int = -1) -> dns.message.Message:
        """The query sent on the `index`th socket."""
        return dns.message.from_wire(self.sockets.made[index].sent[-1][0])

    def reply(self, index: int = -1, **options: Any) -> None:
        """Answer the query of the `index`th socket on that socket, then let it be read."""
        sock = self.sockets.made[index]
        sock.deliver(respond(sock.sent[-1][0], **options))
        pump(self.reactor, self.sockets)

    def deliver(self, sock: FakeDatagramSocket, *datagrams: bytes) -> None:
        for datagram in datagrams:
            sock.deliver(datagram)
        pump(self.reactor, self.sockets)

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    def nothing_left(self) -> bool:
        """No socket open, no reader registered, no timer pending."""
        return (
            self.sockets.open() == []
            and self.reactor.getReaders() == []
            and self.reactor.getDelayedCalls() == []
        )


def respond(
    query_wire: bytes,
    *,
    rcode: int = dns.rcode.NOERROR,
    address: str | None = "192.0.2.7",
    truncated: bool = False,
    ident: int | None = None,
    edns: bool | None = None,
    flags: int = 0,
    authority: str | None = None,
) -> bytes:
    """A reply to `query_wire` as an upstream would send it, with the changes asked for."""
    query = dns.message.from_wire(query_wire)
    response = dns.message.make_response(query)
    if edns is False:
        response.use_edns(False)
    response.set_rcode(rcode)
    response.flags |= flags
    if truncated:
        response.flags |= dns.flags.TC
    if address is not None:
        name = query.question[0].name
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
    if authority is not None:
        response.authority.append(dns.rrset.from_text("example.com.", 300, "IN", "SOA", authority))
    if ident is not None:
        response.id = ident
    return response.to_wire()


def addresses(answer: Answer) -> list[str]:
    return [r.payload.dottedQuad() for r in answer.answers if r.type == tdns.A]


def tcp_connection(rig: Rig) -> tuple[Any, StringTransport]:
    """Complete the TCP connection the forwarder asked the reactor for."""
    host, port, factory, _timeout, _bind = rig.reactor.tcpClients[-1]
    address_class = IPv6Address if ":" in host else IPv4Address
    protocol = factory.buildProtocol(address_class("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def tcp_query(transport: StringTransport) -> bytes:
    data = transport.value()
    (length,) = struct.unpack("!H", data[:2])
    assert len(data) == 2 + length, "one length-prefixed frame"
    return data[2:]


def frame(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


# What goes upstream.


def test_the_query_carries_edns_and_the_clients_do_and_cd_bits() -> None:
    """The query goes to the first upstream over a connected non-blocking socket: RD set,
    EDNS with a 1232-byte UDP size, and the client's DO and CD bits, nothing else."""
    rig = Rig()
    rig.ask(dnssec_ok=True, checking_disabled=True)
    [sock] = rig.sockets.made
    assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_DGRAM)
    assert sock.peer == ("192.0.2.1", 53) and not sock.blocking
    query = rig.query()
    assert query.flags & dns.flags.QR == 0
    assert query.flags & dns.flags.RD and query.flags & dns.flags.CD
    assert [(str(q.name), q.rdtype, q.rdclass) for q in query.question] == [
        ("www.example.com.", dns.rdatatype.A, dns.rdataclass.IN)
    ]
    assert query.edns == 0 and query.payload == 1232
    assert query.ednsflags & dns.flags.DO

    plain = Rig()
    plain.ask()
    assert not plain.query().flags & dns.flags.CD
    assert not plain.query().ednsflags & dns.flags.DO


def test_an_ipv6_upstream_is_asked_over_ipv6_udp_and_tcp() -> None:
    """An IPv6 upstream gets an AF_INET6 socket, and the TCP fallback connects to it too."""
    upstream = HostPort("2001:db8::53", 53)
    rig = Rig(upstream)
    rig.ask()
    [sock] = rig.sockets.made
    assert sock.family == socket.AF_INET6 and sock.peer == ("2001:db8::53", 53)
    rig.reply(truncated=True, address=None)
    assert rig.reactor.tcpClients[0][:2] == ("2001:db8::53", 53)


# Which replies count.


def test_the_matching_reply_becomes_the_answer_with_its_sections() -> None:
    """The reply's RCODE, answer, authority and additional records (without the OPT), its AD
    bit and the round trip time make the Answer; the socket and its timer are gone."""
    rig = Rig()
    asked = rig.ask()
    no_result(asked)
    rig.advance(0.25)
    sock = rig.sockets.made[0]
    response = dns.message.from_wire(respond(sock.sent[0][0], authority=SOA))
    response.flags |= dns.flags.AD
    response.additional.append(dns.rrset.from_text("ns.example.com.", 60, "IN", "A", "192.0.2.53"))
    rig.deliver(sock, response.to_wire())
    answer = result_of(asked)
    assert answer.rcode == tdns.OK and answer.kind is Kind.RECURSIVE
    assert addresses(answer) == ["192.0.2.7"]
    assert [r.type for r in answer.authority] == [tdns.SOA]
    assert [(r.name.name, r.type) for r in answer.additional] == [(b"ns.example.com", tdns.A)]
    assert answer.authentic and answer.rtt == 0.25
    assert rig.nothing_left()


@pytest.mark.parametrize(
    ("rcode", "authority"),
    [(dns.rcode.NXDOMAIN, SOA), (dns.rcode.SERVFAIL, None), (dns.rcode.REFUSED, None)],
)
def test_the_upstreams_rcode_reaches_the_caller_unchanged(rcode: int, authority: str) -> None:
    """NXDOMAIN (with its SOA), SERVFAIL and REFUSED are answers, passed on as they are: the
    next upstream is not asked."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    rig.reply(rcode=rcode, address=None, authority=authority)
    answer = result_of(asked)
    assert answer.rcode == rcode and answer.answers == ()
    assert len(answer.authority) == (1 if authority else 0)
    assert rig.peers() == [("192.0.2.1", 53)]


def test_an_extended_rcode_in_the_opt_record_is_kept() -> None:
    """BADVERS (16) lives partly in the OPT record's TTL; the answer has the whole RCODE."""
    rig = Rig()
    asked = rig.ask()
    rig.reply(rcode=dns.rcode.BADVERS, address=None)
    assert result_of(asked).rcode == 16


def test_replies_that_do_not_answer_the_question_are_ignored() -> None:
    """A reply with another ID, another name, type or class, a packet that is not a reply,
    a malformed one and one with two questions are all ignored: the query keeps waiting, and
    the matching reply that follows is the answer."""
    rig = Rig()
    asked = rig.ask()
    sock = rig.sockets.made[0]
    sent = sock.sent[0][0]
    query = dns.message.from_wire(sent)

    def other(name: str = NAME, rdtype: str = "A", rdclass: str = "IN") -> bytes:
        lookalike = dns.message.make_query(name, rdtype, rdclass, use_edns=0)
        lookalike.id = query.id
        return respond(lookalike.to_wire(), address="198.51.100.1")

    two_questions = dns.message.from_wire(respond(sent, address="198.51.100.2"))
    two_questions.question.append(dns.rrset.RRset(dns.name.from_text("b.example"), 1, 1))
    rig.deliver(
        sock,
        respond(sent, ident=(query.id + 1) % 65536, address="198.51.100.3"),
        other(name="www.example.net"),
        other(rdtype="AAAA"),
        other(rdclass="CH"),
        sent,  # the query itself: QR clear
        respond(sent, address="198.51.100.4")[:-3],
        two_questions.to_wire(),
        b"\x00",
    )
    no_result(asked)
    rig.reply()
    assert addresses(result_of(asked)) == ["192.0.2.7"]


def test_a_reply_may_spell_the_name_in_another_case() -> None:
    """Names compare case-insensitively, so an upstream that keeps a 0x20-mixed case (or
    lowercases) the question is still heard."""
    rig = Rig()
    asked = rig.ask("WwW.ExAmPlE.CoM")
    sent = rig.sockets.made[0].sent[0][0]
    lower = dns.message.from_wire(sent)
    lower.question[0].name = dns.name.from_text(NAME)
    reply = dns.message.from_wire(respond(lower.to_wire()))
    rig.deliver(rig.sockets.made[0], reply.to_wire())
    assert addresses(result_of(asked)) == ["192.0.2.7"]


def test_a_dot_inside_a_label_is_asked_as_written() -> None:
    """`a\\.b.example` (two labels, the first holding a dot) goes upstream as those two
    labels, not as the three-label `a.b.example`, and the reply for it is the answer."""
    rig = Rig()
    asked = rig.ask("a\\.b.example")
    assert rig.query().question[0].name == dns.name.from_text("a\\.b.example")
    rig.reply()
    assert addresses(result_of(asked)) == ["192.0.2.7"]


def test_a_reply_for_the_name_split_at_the_dot_is_ignored() -> None:
    """A reply whose question is `a.b.example` does not answer `a\\.b.example` (a decoded
    name could not tell them apart): it is ignored like any reply to another question."""
    rig = Rig()
    asked = rig.ask("a\\.b.example")
    split = rig.query()
    split.question[0].name = dns.name.from_text("a.b.example")
    rig.deliver(rig.sockets.made[0], respond(split.to_wire(), address="198.51.100.1"))
    no_result(asked)
    rig.reply()
    assert addresses(result_of(asked)) == ["192.0.2.7"]


# Retries and the deadline.


def test_a_silent_upstream_is_retried_with_doubling_waits_until_the_deadline() -> None:
    """With one silent upstream the query is sent at 0 s, 1 s (after 1 s) and 3 s (after
    2 s), and fails at the 5 s deadline with nothing left open or pending."""
    rig = Rig()
    asked = rig.ask()
    sent_at = [0.0]
    for _ in range(50):
        before = len(rig.sockets.made)
        rig.advance(0.5)
        if len(rig.sockets.made) > before:
            sent_at.append(rig.reactor.seconds())
    assert sent_at == [0.0, 1.0, 3.0]
    error = failure_of(asked, UpstreamFailed)
    assert "no answer within 5 s" in str(error)
    assert rig.nothing_left()


def test_upstreams_are_tried_in_order_then_again_with_twice_the_wait() -> None:
    """Two silent upstreams: first, second (1 s each), first, second (2 s each); the last
    attempt gets what is left of the 5 s."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    seen: list[tuple[float, Any]] = [(0.0, rig.sockets.made[0].peer)]
    while not asked.called:
        before = len(rig.sockets.made)
        rig.advance(0.25)
        seen += [(rig.reactor.seconds(), s.peer) for s in rig.sockets.made[before:]]
    one, two = ("192.0.2.1", 53), ("192.0.2.2", 5353)
    assert seen == [(0.0, one), (1.0, two), (2.0, one), (4.0, two)]
    assert rig.reactor.seconds() == 5.0
    failure_of(asked, UpstreamFailed)
    assert rig.nothing_left()


def test_the_deadline_follows_the_configured_timeout() -> None:
    """A 2.5 s timeout: attempts at 0 and 1 s, failure at 2.5 s."""
    rig = Rig(timeout=2.5)
    asked = rig.ask()
    rig.advance(2.4)
    no_result(asked)
    assert len(rig.sockets.made) == 2
    rig.advance(0.1)
    assert "no answer within 2.5 s" in str(failure_of(asked, UpstreamFailed))


def test_a_late_reply_to_an_earlier_attempt_still_counts() -> None:
    """Earlier attempts keep listening until the deadline: the first query's reply arriving
    after the retry was sent is the answer, and every socket is then closed."""
    rig = Rig()
    asked = rig.ask()
    rig.advance(1.5)
    assert len(rig.sockets.made) == 2
    rig.reply(0, address="192.0.2.11")
    answer = result_of(asked)
    assert addresses(answer) == ["192.0.2.11"] and answer.rtt == 1.5
    assert rig.nothing_left()


def test_the_upstream_that_answered_is_asked_first_next_time() -> None:
    """After the first upstream stayed silent and the second answered, the next question
    goes to the second first."""
    rig = Rig(UP1, UP2)
    first = rig.ask()
    rig.advance(1)
    rig.reply(1)
    result_of(first)
    rig.ask("next.example.com")
    assert rig.sockets.made[-1].peer == ("192.0.2.2", 5353)


# What the forwarder counts for the metrics.


def test_an_answered_question_is_timed_into_the_latency_histogram() -> None:
    """A question answered after 20 ms counts once, under the 25 ms bucket, with its time."""
    rig = Rig()
    asked = rig.ask()
    rig.advance(0.02)
    rig.reply()
    result_of(asked)
    buckets = dict(rig.forwarder.latency.cumulative())
    assert rig.forwarder.latency.count == 1
    assert (buckets[0.01], buckets[0.025]) == (0, 1)
    assert rig.forwarder.latency.total == pytest.approx(0.02)


def test_failed_attempts_are_counted_per_upstream() -> None:
    """An upstream that stays silent past its attempt counts a failure, one that refuses
    counts one too; the upstream that answers counts none, and the answer is timed."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    rig.advance(1)
    rig.reply(1)
    result_of(asked)
    assert rig.forwarder.failures == {str(UP1): 1, str(UP2): 0}
    again = rig.ask("next.example.com")
    rig.sockets.made[-1].deliver_error(OSError(errno.ECONNREFUSED, "Connection refused"))
    pump(rig.reactor, rig.sockets)
    rig.reply()
    result_of(again)
    assert rig.forwarder.failures == {str(UP1): 1, str(UP2): 1}
    assert rig.forwarder.latency.count == 2


def test_a_question_no_upstream_answers_is_not_timed() -> None:
    """A question that fails at the deadline adds failures, not a latency."""
    rig = Rig()
    asked = rig.ask()
    for _ in range(10):
        rig.advance(0.5)
    failure_of(asked, UpstreamFailed)
    assert rig.forwarder.latency.count == 0
    assert rig.forwarder.failures[str(UP1)] == 3


# Errors from the network.


def test_a_refused_port_moves_on_to_the_next_upstream_at_once() -> None:
    """An ICMP port unreachable (ECONNREFUSED on read) from the first upstream sends the
    query to the second without waiting."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    rig.sockets.made[0].deliver_error(OSError(errno.ECONNREFUSED, "Connection refused"))
    pump(rig.reactor, rig.sockets)
    assert rig.peers() == [("192.0.2.1", 53), ("192.0.2.2", 5353)]
    assert rig.reactor.seconds() == 0
    rig.reply()
    assert addresses(result_of(asked)) == ["192.0.2.7"]


def test_every_upstream_refusing_fails_at_once() -> None:
    """When nothing listens at any upstream, waiting would not help: the query fails at
    once, saying so, with nothing left open or pending."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    for index in (0, 1):
        rig.sockets.made[index].deliver_error(OSError(errno.ECONNREFUSED, "Connection refused"))
        pump(rig.reactor, rig.sockets)
    assert "every upstream refused" in str(failure_of(asked, UpstreamFailed))
    assert rig.reactor.seconds() == 0 and rig.nothing_left()


def test_a_read_error_or_a_lost_socket_moves_on_to_the_next_upstream() -> None:
    """Another error on the socket (no route back), or the reactor reporting the socket
    lost, is that upstream's failure: the next one is asked at once."""
    rig = Rig(UP1, UP2, HostPort("192.0.2.3", 53))
    asked = rig.ask()
    rig.sockets.made[0].deliver_error(OSError(errno.EHOSTUNREACH, "No route to host"))
    pump(rig.reactor, rig.sockets)
    assert len(rig.sockets.made) == 2
    [second] = [r for r in rig.reactor.getReaders() if r.fileno() == rig.sockets.made[1].fileno()]
    second.connectionLost(Failure(ConnectionDone()))
    assert rig.peers()[-1] == ("192.0.2.3", 53) and rig.reactor.seconds() == 0
    rig.reply()
    result_of(asked)


def test_an_unreachable_upstream_is_skipped() -> None:
    """When sending fails at once (no route to the upstream), the next upstream is asked;
    the failed socket is closed."""
    rig = Rig(UP1, UP2)
    rig.sockets.unreachable.add(UP1.host)
    asked = rig.ask()
    assert rig.sockets.made[0].closed
    assert rig.peers() == [("192.0.2.2", 5353)]
    rig.reply()
    result_of(asked)


def test_no_route_to_any_upstream_fails_without_spinning() -> None:
    """With no route to any upstream the query should fail, not retry in a tight loop that
    never gives the reactor back (which would stop the whole server)."""
    rig = Rig(UP1, UP2)
    rig.sockets.unreachable.update({UP1.host, UP2.host})
    rig.sockets.limit = 100  # the fake raises RuntimeError past this many sockets
    asked = rig.ask()
    failure_of(asked, UpstreamFailed)


def test_an_ipv6_upstream_on_a_host_without_ipv6_is_skipped() -> None:
    """When no IPv6 socket can be made (EAFNOSUPPORT, IPv6 disabled), an IPv6 upstream is
    skipped like an unreachable one and the next upstream answers."""
    rig = Rig(HostPort("2001:db8::53", 53), UP1)
    rig.sockets.cannot_make[socket.AF_INET6] = OSError(
        errno.EAFNOSUPPORT, "Address family not supported by protocol"
    )
    asked = rig.ask()
    assert rig.peers() == [("192.0.2.1", 53)]
    rig.reply()
    assert addresses(result_of(asked)) == ["192.0.2.7"]


def no_descriptors(rig: Rig) -> None:
    """Make every socket() of the rig fail as it does when the process has no descriptor."""
    for family in (socket.AF_INET, socket.AF_INET6):
        rig.sockets.cannot_make[family] = OSError(errno.EMFILE, "Too many open files")


def test_no_descriptor_left_fails_the_query_at_once_and_is_logged_once() -> None:
    """Out of file descriptors (EMFILE), a query fails at once with UpstreamFailed (the
    client gets SERVFAIL, no traceback): each is counted, one warning says it started and,
    once a socket can be made again a minute later, one line says it is over."""
    rig = Rig(UP1, UP2)
    no_descriptors(rig)
    with capturedLogs() as events:
        first, second = rig.ask(), rig.ask("other.example.com")
        failure_of(first, UpstreamFailed)
        failure_of(second, UpstreamFailed)
        assert rig.forwarder.shortage.failures == {"socket": 2}
        rig.sockets.cannot_make.clear()
        rig.advance(60)
        third = rig.ask("third.example.com")
        rig.reply()
        result_of(third)
    assert [e["log_level"] for e in events] == [LogLevel.warn, LogLevel.info]
    assert "out of file descriptors" in events[0]["log_format"]
    assert rig.nothing_left()


def test_no_descriptor_for_the_tcp_fallback_fails_the_query_at_once() -> None:
    """A TCP connection that cannot get a socket (Twisted's ConnectBindError with EMFILE)
    fails the query at once instead of trying the next upstream; it is counted."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    _host, _port, factory, _timeout, _bind = rig.reactor.tcpClients[0]
    emfile = ConnectBindError(errno.EMFILE, "Too many open files")
    factory.clientConnectionFailed(rig.reactor.connectors[0], Failure(emfile))
    failure_of(asked, UpstreamFailed)
    assert rig.peers() == [("192.0.2.1", 53)]
    assert rig.forwarder.shortage.failures == {"socket": 1}


# Old servers and truncation.


def test_formerr_to_edns_is_asked_again_without_edns() -> None:
    """An old server answering FORMERR to the EDNS query is sent the same question again
    without OPT (RFC 6891 section 7)."""
    rig = Rig()
    rig.ask()
    rig.reply(rcode=dns.rcode.FORMERR, address=None, edns=False)
    assert rig.peers() == [("192.0.2.1", 53)] * 2
    retry = rig.query(1)
    assert retry.edns == -1 and str(retry.question[0].name) == "www.example.com."


def test_the_reply_without_edns_is_the_answer() -> None:
    """After the FORMERR, the old server's reply to the query without EDNS is the answer."""
    rig = Rig()
    asked = rig.ask()
    rig.reply(rcode=dns.rcode.FORMERR, address=None, edns=False)
    no_result(asked)
    rig.reply(1, edns=False)
    assert addresses(result_of(asked)) == ["192.0.2.7"]


def test_a_truncated_reply_is_asked_again_over_tcp() -> None:
    """TC set: the same question goes to the same upstream over TCP with what is left of the
    deadline; the framed reply, read in pieces, is the answer and the connection is closed."""
    rig = Rig()
    asked = rig.ask()
    rig.advance(0.5)
    rig.reply(truncated=True, address=None)
    no_result(asked)
    host, port, _factory, timeout, _bind = rig.reactor.tcpClients[0]
    assert (host, port, timeout) == ("192.0.2.1", 53, 4.5)
    protocol, transport = tcp_connection(rig)
    query = dns.message.from_wire(tcp_query(transport))
    assert str(query.question[0].name) == "www.example.com." and query.edns == 0
    reply = frame(respond(tcp_query(transport), address="192.0.2.99"))
    protocol.dataReceived(reply[:1])
    protocol.dataReceived(reply[1:7])
    no_result(asked)
    protocol.dataReceived(reply[7:])
    answer = result_of(asked)
    assert addresses(answer) == ["192.0.2.99"] and answer.rtt == 0.5
    assert transport.disconnecting
    assert rig.sockets.open() == [] and rig.reactor.getDelayedCalls() == []


def test_an_answer_over_udp_says_it_may_be_incomplete() -> None:
    """An answer the upstream gave over UDP may lack records it had no room for (without
    TC, RFC 2181 section 9): it says so, so that it is not given to a TCP client."""
    rig = Rig()
    asked = rig.ask()
    rig.reply()
    assert not result_of(asked).complete


def test_a_tcp_clients_question_goes_upstream_over_tcp_at_once() -> None:
    """For a client that came over TCP the upstream is asked over TCP straight away (no
    datagram, where it might leave records out), and the answer says it is complete."""
    rig = Rig()
    asked = rig.ask(whole=True)
    assert rig.sockets.made == []
    host, port, _factory, timeout, _bind = rig.reactor.tcpClients[0]
    assert (host, port, timeout) == ("192.0.2.1", 53, 1.0)
    protocol, transport = tcp_connection(rig)
    query = dns.message.from_wire(tcp_query(transport))
    assert str(query.question[0].name) == "www.example.com."
    protocol.dataReceived(frame(respond(tcp_query(transport), address="192.0.2.99")))
    answer = result_of(asked)
    assert addresses(answer) == ["192.0.2.99"] and answer.complete


def test_an_answer_over_tcp_after_tc_is_complete() -> None:
    """An answer fetched over TCP after a truncated UDP reply is complete too."""
    rig = Rig()
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    protocol, transport = tcp_connection(rig)
    protocol.dataReceived(frame(respond(tcp_query(transport))))
    assert result_of(asked).complete


def test_a_tcp_reply_to_another_question_fails_that_upstream() -> None:
    """Over TCP a reply that does not match is not the answer: the connection is closed and
    the next upstream is asked."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    protocol, transport = tcp_connection(rig)
    sent = tcp_query(transport)
    other_id = (dns.message.from_wire(sent).id + 1) % 65536
    protocol.dataReceived(frame(respond(sent, ident=other_id)))
    assert transport.disconnecting
    no_result(asked)
    assert rig.peers()[-1] == ("192.0.2.2", 5353)


def test_a_tcp_connection_closed_before_the_reply_fails_that_upstream() -> None:
    """The upstream hanging up before replying over TCP moves on to the next upstream."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    protocol, _transport = tcp_connection(rig)
    protocol.connectionLost(Failure(ConnectionDone()))
    no_result(asked)
    assert rig.peers()[-1] == ("192.0.2.2", 5353)


def test_when_every_upstream_failed_at_once_the_query_fails_without_asking_again() -> None:
    """A single upstream whose UDP reply is truncated and whose TCP connection closes
    before replying: asking again would fail the same way, as fast as the network goes,
    until the deadline; the query fails at once instead."""
    rig = Rig()
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    protocol, _transport = tcp_connection(rig)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert "every upstream failed at once" in str(failure_of(asked, UpstreamFailed))
    assert len(rig.sockets.made) == 1 and len(rig.reactor.tcpClients) == 1
    assert rig.nothing_left()


def test_after_tcp_fails_the_next_upstreams_udp_reply_is_the_answer() -> None:
    """When the TCP fallback to the first upstream fails, the second upstream's UDP reply
    answers the query."""
    rig = Rig(UP1, UP2)
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    protocol, _transport = tcp_connection(rig)
    protocol.connectionLost(Failure(ConnectionDone()))
    rig.reply()
    assert addresses(result_of(asked)) == ["192.0.2.7"]


def test_a_refused_tcp_connection_counts_as_a_refused_upstream() -> None:
    """With a single upstream whose TCP port refuses, the query fails at once as refused."""
    rig = Rig()
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    _host, _port, factory, _timeout, _bind = rig.reactor.tcpClients[0]
    factory.clientConnectionFailed(rig.reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert "every upstream refused" in str(failure_of(asked, UpstreamFailed))
    assert rig.nothing_left()


def test_a_silent_tcp_upstream_fails_at_the_deadline() -> None:
    """A TCP connection that never replies ends with the query's deadline."""
    rig = Rig()
    asked = rig.ask()
    rig.reply(truncated=True, address=None)
    tcp_connection(rig)
    rig.advance(4.9)
    no_result(asked)
    rig.advance(0.1)
    failure_of(asked, UpstreamFailed)
    assert rig.nothing_left()


# Configuration.


def test_no_upstreams_is_refused() -> None:
    """A forwarder needs at least one upstream."""
    with pytest.raises(ValueError, match="no upstream"):
        Forwarder([], MemoryReactorClock())


def test_system_upstreams_reads_the_nameservers_of_resolv_conf(tmp_path: Path) -> None:
    """The `nameserver` lines, in order, on port 53 (a scoped link-local address included);
    comments, other keys and entries that are not addresses are left out; a missing file
    gives none."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# generated\nsearch example.com\nnameserver 192.0.2.53\nnameserver dns.example\n"
        "nameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver\noptions edns0\n"
    )
    assert system_upstreams(str(resolv)) == [
        Upstream("192.0.2.53", 53),
        Upstream("fe80::1%eth0", 53),
        Upstream("2001:db8::53", 53),
    ]
    assert system_upstreams(str(tmp_path / "missing")) == []
