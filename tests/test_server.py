"""The responder and the TCP protocol: ACL, observers, framing, pipelining, idle and caps,
and a client that does not read its answers."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import dns.rrset
import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.server import MAX_PIPELINED, DNSStreamFactory, Responder
from misp_dns.dns.wire import Request
from misp_dns.event import Answer, QueryEvent


class ScriptedResolver:
    """Answers each question with one A record, at once or when the test fires it."""

    policy = None

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self.pending: dict[bytes, defer.Deferred[Answer]] = {}

    def decide(self, *args: Any) -> None:
        return None

    def answer_held(self, *args: Any) -> None:
        return None

    def resolve(self, request: Request, client: str, transport: str) -> Any:
        name = request.question.name.name
        record = tdns.RRHeader(name, tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.7", 60))
        answer = Answer(tdns.OK, answers=(record,))
        if not self.deferred:
            return answer
        self.pending[name] = defer.Deferred()
        return self.pending[name].addCallback(lambda _: answer)


def make_responder(resolver: Any = None, allow: str = "127.0.0.0/8") -> Responder:
    acl = ClientACL([ipaddress.ip_network(allow)])
    return Responder(resolver or ScriptedResolver(), acl, Clock())


def query(name: str = "www.example.com", **kwargs: Any) -> bytes:
    return dns.message.make_query(name, "A", **kwargs).to_wire()


def test_client_outside_acl_gets_refused_with_ede_18() -> None:
    """Not an open resolver: other clients get REFUSED and, with EDNS, EDE 18 Prohibited."""
    responder = make_responder()
    wire = responder.respond(query(use_edns=0), "203.0.113.9", "udp")
    assert isinstance(wire, bytes)
    response = dns.message.from_wire(wire)
    assert response.rcode() == dns.rcode.REFUSED
    assert [option.code for option in response.options] == [dns.edns.EDECode.PROHIBITED]
    plain = dns.message.from_wire(responder.respond(query(use_edns=False), "203.0.113.9", "udp"))  # type: ignore[arg-type]
    assert plain.rcode() == dns.rcode.REFUSED and plain.edns == -1


def test_ipv4_mapped_client_matches_ipv4_network() -> None:
    """::ffff:127.0.0.1 from a dual-stack socket is the loopback client it is."""
    assert ClientACL([ipaddress.ip_network("127.0.0.0/8")]).allows("::ffff:127.0.0.1")
    assert not ClientACL([ipaddress.ip_network("127.0.0.0/8")]).allows("::ffff:10.0.0.1")


def test_answered_queries_reach_observers() -> None:
    """Every answered query is handed to the observers (the exporter) with its answer."""
    responder = make_responder()
    events: list[QueryEvent] = []
    responder.observers.append(events.append)
    responder.respond(query(), "127.0.0.1", "udp")
    (event,) = events
    assert event.client == "127.0.0.1" and event.transport == "udp"
    assert event.answer.rcode == tdns.OK


@pytest.mark.allow_errors
def test_failing_observer_does_not_cost_the_answer() -> None:
    """An observer that raises is logged; the client still gets its answer."""
    responder = make_responder()

    def broken(event: QueryEvent) -> None:
        raise RuntimeError("sink exploded")

    responder.observers.append(broken)
    wire = responder.respond(query(), "127.0.0.1", "udp")
    assert isinstance(wire, bytes)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NOERROR


def test_tally_sees_every_answered_query_without_observers() -> None:
    """The tally gets the transport, the question as sent and the answer, on UDP and TCP."""
    responder = make_responder()
    tallied: list[tuple[str, bytes, Answer]] = []
    responder.tally = lambda transport, question, answer: tallied.append(
        (transport, question, answer)
    )
    responder.respond(query("WWW.example.com"), "127.0.0.1", "udp")
    responder.respond(query(), "127.0.0.1", "tcp")
    assert [(t, q[:4]) for t, q, _ in tallied] == [("udp", b"\x03WWW"), ("tcp", b"\x03www")]
    assert all(answer.rcode == tdns.OK for _, _, answer in tallied)
    assert not responder.observers


@pytest.mark.allow_errors
def test_failing_tally_does_not_cost_the_answer(logged_errors: list[dict[str, Any]]) -> None:
    """A tally that raises is logged; the client still gets its answer."""
    responder = make_responder()

    def broken(transport: str, question: bytes, answer: Answer) -> None:
        raise RuntimeError("counter exploded")

    responder.tally = broken
    wire = responder.respond(query(), "127.0.0.1", "udp")
    assert isinstance(wire, bytes)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NOERROR
    assert len(logged_errors) == 1


def test_responses_and_unreadable_packets_get_no_answer() -> None:
    """QR=1 packets and packets shorter than a header are dropped and counted."""
    responder = make_responder()
    response = dns.message.make_response(dns.message.make_query("x.test", "A")).to_wire()
    assert responder.respond(response, "127.0.0.1", "udp") is None
    assert responder.respond(b"\x00\x01", "127.0.0.1", "udp") is None
    assert responder.counters.dropped == 2


def connect(
    factory: DNSStreamFactory, host: str = "127.0.0.1", transport: StringTransport | None = None
) -> tuple[Any, StringTransport]:
    """A connection from `host` as the TCP port makes it: the factory builds the protocol,
    then the protocol is connected to its transport."""
    kind = IPv6Address if ":" in host else IPv4Address
    protocol = factory.buildProtocol(kind("TCP", host, 40000))
    assert protocol is not None
    transport = transport if transport is not None else StringTransport()
    transport.peerAddr = kind("TCP", host, 40000)
    protocol.makeConnection(transport)
    return protocol, transport


def frames(data: bytes) -> list[dns.message.Message]:
    found = []
    while data:
        (length,) = struct.unpack_from("!H", data)
        found.append(dns.message.from_wire(data[2 : 2 + length]))
        data = data[2 + length :]
    return found


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def test_tcp_pipelined_queries_answered_in_order_ready() -> None:
    """Two queries in one segment are both answered, each as soon as it is ready."""
    resolver = ScriptedResolver(deferred=True)
    factory = DNSStreamFactory(make_responder(resolver), 30, 10, Clock())
    protocol, transport = connect(factory)
    protocol.dataReceived(framed(query("first.test")) + framed(query("second.test")))
    assert transport.value() == b""
    resolver.pending[b"second.test"].callback(None)
    resolver.pending[b"first.test"].callback(None)
    names = [m.question[0].name.to_text() for m in frames(transport.value())]
    assert names == ["second.test.", "first.test."]


def test_tcp_frame_split_across_segments() -> None:
    """A query that arrives a byte at a time is answered once it is complete."""
    factory = DNSStreamFactory(make_responder(), 30, 10, Clock())
    protocol, transport = connect(factory)
    for byte in framed(query("split.test")):
        protocol.dataReceived(bytes([byte]))
    (answer,) = frames(transport.value())
    assert answer.question[0].name.to_text() == "split.test."


def test_tcp_idle_connection_closed_after_timeout() -> None:
    """A connection that sends nothing is closed after tcp_idle_timeout seconds."""
    clock = Clock()
    factory = DNSStreamFactory(make_responder(), 30, 10, clock)
    protocol, transport = connect(factory)
    clock.advance(29)
    protocol.dataReceived(framed(query()))
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting or transport.disconnected


def test_tcp_connection_cap() -> None:
    """Beyond tcp_max_connections, new connections are refused until one closes."""
    factory = DNSStreamFactory(make_responder(), 30, 2, Clock())
    first, _ = connect(factory)
    connect(factory)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None
    first.connectionLost(None)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is not None


def test_tcp_dripping_client_is_closed_by_the_idle_timeout() -> None:
    """A client sending a byte now and then, never a whole query, is closed all the same."""
    clock = Clock()
    factory = DNSStreamFactory(make_responder(), 30, 10, clock)
    protocol, transport = connect(factory)
    frame = framed(query("drip.test"))
    for byte in frame[:20]:
        clock.advance(10)
        protocol.dataReceived(bytes([byte]))
        if transport.disconnecting:
            break
    assert transport.disconnecting
    assert transport.value() == b""


def test_tcp_connections_per_client_network_are_capped() -> None:
    """Beyond tcp_max_connections_per_client from one client network (a /24 here, IPv4
    clients of a dual-stack socket included), its new connections are closed while other
    networks still connect; a connection closing makes room again."""
    factory = DNSStreamFactory(make_responder(), 30, 100, Clock(), max_per_client=2)
    first, _ = connect(factory, "192.0.2.1")
    connect(factory, "::ffff:192.0.2.200")
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)) is None
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:192.0.2.9", 1)) is None
    assert factory.rejected_per_client == 2
    connect(factory, "198.51.100.1")
    connect(factory, "2001:db8::1")
    first.connectionLost(None)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)) is not None


def test_an_ipv4_client_of_a_dual_stack_socket_is_logged_as_ipv4() -> None:
    """A client that reached an IPv6 wildcard socket over IPv4 (`::ffff:127.0.0.1`) is
    127.0.0.1 to the ACL, the policies and the query log."""
    responder = make_responder()
    events: list[QueryEvent] = []
    responder.observers.append(events.append)
    factory = DNSStreamFactory(responder, 30, 10, Clock())
    protocol, _ = connect(factory, "::ffff:127.0.0.1")
    protocol.dataReceived(framed(query()))
    assert [e.client for e in events] == ["127.0.0.1"]


class BigAnswers(ScriptedResolver):
    """Answers every question, at once, with about 1.7 KB of TXT."""

    def resolve(self, request: Request, client: str, transport: str) -> Any:
        name = request.question.name.name
        text = tdns.Record_TXT(*[b"x" * 200] * 8, ttl=60)
        return Answer(tdns.OK, answers=(tdns.RRHeader(name, tdns.TXT, tdns.IN, 60, text),))


class SlowReaderTransport(StringTransport):
    """A transport whose client reads nothing until the test says so.

    Like Twisted's TCP transport, it asks its registered producer to pause once more than
    `BUFFER_SIZE` bytes wait to go out, and to resume once they have been sent (`drain`).
    """

    BUFFER_SIZE = 65536

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.BUFFER_SIZE and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The client reads everything waiting; the producer is told to resume."""
        sent = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return sent


def test_a_client_that_does_not_read_cannot_make_the_server_hold_its_answers() -> None:
    """160 KB of pipelined queries for a 1.7 KB answer, from a client that reads nothing:
    the server holds about one transport buffer of answers (not the 10 MB they add up to)
    and stops reading from the client; as the client reads, every query is answered."""
    factory = DNSStreamFactory(make_responder(BigAnswers()), 30, 10, Clock())
    transport = SlowReaderTransport()
    protocol, _ = connect(factory, transport=transport)
    assert transport.producer is protocol and transport.streaming
    queries = [framed(query(f"q{i}.test")) for i in range(6000)]
    protocol.dataReceived(b"".join(queries))
    assert sum(map(len, queries)) > 160_000
    waiting = len(transport.value())
    assert waiting <= SlowReaderTransport.BUFFER_SIZE + 2000
    assert transport.producerState == "paused", "the server still reads from the client"
    answered = frames(transport.drain())
    while transport.value():
        answered += frames(transport.drain())
    assert len(answered) == 6000
    assert transport.producerState == "producing"


def test_tcp_queries_in_flight_are_capped_per_connection() -> None:
    """A connection gets at most MAX_PIPELINED queries in flight: the ones sent beyond it
    wait, unread, and are taken as answers go out."""
    resolver = ScriptedResolver(deferred=True)
    factory = DNSStreamFactory(make_responder(resolver), 30, 10, Clock())
    protocol, transport = connect(factory)
    protocol.dataReceived(b"".join(framed(query(f"q{i}.test")) for i in range(100)))
    assert len(resolver.pending) == MAX_PIPELINED
    assert transport.producerState == "paused"
    resolver.pending[b"q0.test"].callback(None)
    assert len(resolver.pending) == MAX_PIPELINED + 1
    while waiting := [d for d in resolver.pending.values() if not d.called]:
        for deferred in waiting:
            deferred.callback(None)
    assert len(frames(transport.value())) == 100
    assert transport.producerState == "producing"


def _zone_hook(messages: int, size: int = 30000) -> Any:
    """A zone hook answering `zone.test` with a stream of `messages` big messages (counted
    as they are built) and leaving every other packet to the resolver."""
    built: list[int] = []

    def stream(ident: int) -> Any:
        for index in range(messages):
            built.append(index)
            message = dns.message.make_response(dns.message.make_query("zone.test", "AXFR"))
            message.id = ident
            message.answer.append(
                dns.rrset.from_text(
                    "zone.test.", 60, "IN", "TXT", " ".join([f'"{index:05d}"'] * (size // 7))
                )
            )
            yield message.to_wire()

    def hook(data: bytes, client: str, transport: str) -> Any:
        request = dns.message.from_wire(data)
        if request.question[0].name.to_text() != "zone.test.":
            return None
        return stream(request.id)

    return hook, built


class TurnClock(Clock):
    """A Clock that can run one turn of a reactor: the calls due when the turn starts, not
    those they schedule meanwhile (as the real reactor's `runUntilCurrent`)."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def test_zone_stream_goes_out_one_message_per_reactor_turn() -> None:
    """A transfer the zone hook streams is written one message per turn of the reactor (so
    other clients are answered in between), and the connection takes its next query once
    the stream is done."""
    clock = TurnClock()
    responder = make_responder()
    responder.zone, built = _zone_hook(3)
    factory = DNSStreamFactory(responder, 30, 10, clock)
    protocol, transport = connect(factory)
    protocol.dataReceived(framed(query("zone.test")) + framed(query("after.test")))
    assert built == [] and transport.value() == b""
    clock.turn()
    assert built == [0] and len(frames(transport.value())) == 1
    clock.turn()
    assert built == [0, 1]
    clock.turn()
    clock.turn()
    answers = frames(transport.value())
    assert [m.question[0].name.to_text() for m in answers] == ["zone.test."] * 3 + ["after.test."]


def test_zone_stream_waits_for_a_client_that_does_not_read() -> None:
    """A secondary that stops reading pauses the stream: no more messages are built until it
    reads again, so a big transfer never piles up in memory."""
    clock = Clock()
    responder = make_responder()
    responder.zone, built = _zone_hook(10)
    factory = DNSStreamFactory(responder, 30, 10, clock)
    transport = SlowReaderTransport()
    protocol, _ = connect(factory, transport=transport)
    protocol.dataReceived(framed(query("zone.test")))
    for _ in range(10):
        clock.advance(0)
    assert len(built) == 3, "the stream went on while the client did not read"
    received = frames(transport.drain())
    while len(received) < 10:
        clock.advance(0)
        received += frames(transport.drain())
    assert len(built) == 10


def test_zone_hook_answers_udp_with_bytes_only() -> None:
    """Over UDP the zone hook's bytes are the answer; a stream is never sent over UDP, and a
    packet the hook leaves alone goes to the resolver."""
    responder = make_responder()
    responder.zone, _built = _zone_hook(2)
    assert responder.respond(query("zone.test"), "127.0.0.1", "udp") is None
    answer = responder.respond(query("other.test"), "127.0.0.1", "udp")
    assert isinstance(answer, bytes)
    assert dns.message.from_wire(answer).answer[0][0].address == "192.0.2.7"


def _cached_resolver() -> ScriptedResolver:
    """A resolver holding a cached answer for www.example.com, as the fast path takes it."""
    from misp_dns.dns.cache import AnswerCache

    cache = AnswerCache(10, Clock())
    record = tdns.RRHeader(b"www.example.com", tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.7"))
    key = (b"\x03www\x07example\x03com\x00", tdns.A, tdns.IN, False, 0)
    cache.put(key, Answer(tdns.OK, answers=(record,)))
    resolver = ScriptedResolver()

    def held(decision: Any, wanted: Any) -> Any:
        found = cache.lookup(wanted)
        return None if found is None else (*found, None, 0)

    resolver.answer_held = held  # type: ignore[method-assign]
    return resolver


def test_recorder_gets_the_fields_of_every_answered_query() -> None:
    """The recorder (the exporter) gets each answered query as `QueryEvent`'s fields, no
    event made: the very event the observers get, on the fast path (cached, plain UDP)
    and on the full path (TCP)."""
    responder = make_responder(_cached_resolver())
    recorded: list[tuple[Any, ...]] = []
    events: list[QueryEvent] = []
    responder.recorder = lambda *fields: recorded.append(fields)
    responder.observers.append(events.append)
    responder.respond(query(), "127.0.0.1", "udp")
    responder.respond(query("other.example"), "127.0.0.1", "tcp")
    assert responder.counters.fast == 1
    assert [QueryEvent(*fields) for fields in recorded] == events
    assert [(e.transport, e.answer.kind.value) for e in events] == [
        ("udp", "Cached"),
        ("tcp", "Recursive"),
    ]


@pytest.mark.allow_errors
def test_failing_recorder_does_not_cost_the_answer(logged_errors: list[dict[str, Any]]) -> None:
    """A recorder that raises is logged; the client still gets its answer, on either path."""
    responder = make_responder(_cached_resolver())

    def broken(*fields: Any) -> None:
        raise RuntimeError("exporter exploded")

    responder.recorder = broken
    for transport in ("udp", "tcp"):
        wire = responder.respond(query(), "127.0.0.1", transport)
        assert isinstance(wire, bytes)
        assert dns.message.from_wire(wire).rcode() == dns.rcode.NOERROR
    assert len(logged_errors) == 2


# -- the fast path's kept answers ---------------------------------------------------------


class Memo:
    """A real responder over a real chain: the misp policy with `INDICATORS`, a cache
    holding an A record for www.example.com, a clock the test moves."""

    def __init__(self, policies: list[Any] | None = None) -> None:
        from test_misp_policy import INDICATORS, NoUpstream, misp_policy

        from misp_dns.dns.cache import AnswerCache
        from misp_dns.dns.resolver import ChainResolver
        from misp_dns.policy.chain import PolicyChain

        self.clock = Clock()
        self.clock.advance(1000.5)
        self.policy = misp_policy(list(INDICATORS))
        self.cache = AnswerCache(100, self.clock)
        self.put("www.example.com", 60)
        chain = PolicyChain([self.policy] if policies is None else policies)
        self.upstream = NoUpstream()
        resolver = ChainResolver(chain, self.cache, self.upstream, "dns.corp.example")  # type: ignore[arg-type]
        self.responder = Responder(
            resolver, ClientACL([ipaddress.ip_network("127.0.0.0/8")]), self.clock
        )

    def put(self, name: str, ttl: int, count: int = 1) -> None:
        """Cache `count` A records of `name` with `ttl`."""
        records = tuple(
            tdns.RRHeader(name.encode(), tdns.A, tdns.IN, ttl, tdns.Record_A(f"192.0.2.{i + 1}"))
            for i in range(count)
        )
        wire = b"".join(bytes([len(x)]) + x.encode() for x in name.lower().split(".")) + b"\0"
        self.cache.put((wire, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=records))

    def ask(self, wire: bytes, client: str = "127.0.0.1") -> Any:
        """The response's bytes over UDP (a Deferred when it went upstream)."""
        return self.responder.respond(wire, client, "udp")


def udp_query(name: str, ident: int, **kwargs: Any) -> bytes:
    message = dns.message.make_query(name, "A", **kwargs)
    message.id = ident
    return message.to_wire()


def test_a_repeated_query_gets_the_same_bytes_but_its_id_without_deciding_again() -> None:
    """Asked again and again, a blocked and a cached name get byte for byte the answer
    they got first, with each query's own ID; the policy is not asked once the answer is
    kept (the second time it is asked)."""
    rig = Memo()
    asked: list[str] = []
    decide_name = rig.policy.decide_name

    def counting(name: str, qclass: int) -> Any:
        asked.append(name)
        return decide_name(name, qclass)

    rig.policy.decide_name = counting  # type: ignore[method-assign]
    rig.responder.resolver.policy = type(rig.responder.resolver.policy)([rig.policy])
    for name in ("www.evil.example", "www.example.com"):
        wires = [rig.ask(udp_query(name, ident, use_edns=0)) for ident in (1, 2, 3, 4)]
        assert all(isinstance(w, bytes) for w in wires)
        assert [dns.message.from_wire(w).id for w in wires] == [1, 2, 3, 4]
        assert len({w[2:] for w in wires}) == 1
    assert asked == ["www.evil.example"] * 2 + ["www.example.com"] * 2
    assert rig.responder.counters.fast == 8


def test_a_name_no_longer_listed_at_a_new_snapshot_is_no_longer_blocked() -> None:
    """A kept blocked answer stands only while the indicators do: once a new snapshot no
    longer lists the name, the very next query goes upstream instead."""
    from misp_dns.interfaces import RawIndicator

    rig = Memo()
    query = udp_query("www.evil.example", 7)
    for _ in range(3):
        assert dns.message.from_wire(rig.ask(query)).rcode() == dns.rcode.NXDOMAIN
    rig.policy.updater.source.indicators = [RawIndicator("host.example", "hostname")]
    rig.policy.updater.update_now()
    assert isinstance(rig.ask(query), defer.Deferred)
    assert rig.upstream.asked == [b"www.evil.example"]


def test_a_kept_cached_answer_ages_second_by_second_and_expires() -> None:
    """A cached answer given again and again still counts its TTL down each second (the
    cache's seconds, from when it was stored) and is not given once it expired."""
    rig = Memo()
    query = udp_query("www.example.com", 9)
    ttls = []
    for step in (0, 0.25, 0.25, 0.25, 0.25, 0.25, 1, 1, 56):
        rig.clock.advance(step)
        for _ in range(2):
            wire = rig.ask(query)
            assert isinstance(wire, bytes)
            ttls.append(dns.message.from_wire(wire).answer[0].ttl)
    assert ttls == [60] * 8 + [59] * 4 + [58] * 2 + [57] * 2 + [1] * 2
    rig.clock.advance(1)
    assert isinstance(rig.ask(query), defer.Deferred)


def test_each_case_of_a_name_gets_its_answer_in_that_case() -> None:
    """Queries that differ only in the case of their name (0x20) each get the question
    and the records' owner back in their own case."""
    rig = Memo()
    for name in ("www.example.com", "WwW.ExAmPlE.cOm", "WWW.EXAMPLE.COM", "www.EVIL.example"):
        for _ in range(3):
            response = dns.message.from_wire(rig.ask(udp_query(name, 1)))
            assert response.question[0].name.to_text() == name + "."
            if response.answer:
                assert response.answer[0].name.to_text() == name + "."


def test_each_edns_shape_gets_its_own_answer() -> None:
    """The same name asked without EDNS, with EDNS and other payload sizes, with DO, gets
    an answer of its own shape each time; an answer too large for a client's UDP limit is
    truncated for it, however often another client got it whole."""
    rig = Memo()
    rig.put("big.example", 300, count=40)
    shapes: list[dict[str, Any]] = [
        {"use_edns": False},
        {"use_edns": 0, "payload": 1232},
        {"use_edns": 0, "payload": 4096, "want_dnssec": True},
        {"use_edns": 0, "payload": 1232},
    ]
    for _ in range(3):
        for shape in shapes:
            response = dns.message.from_wire(rig.ask(udp_query("www.evil.example", 3, **shape)))
            assert response.edns == (0 if shape["use_edns"] is not False else -1)
            assert bool(response.ednsflags & dns.flags.DO) == shape.get("want_dnssec", False)
        big = dns.message.from_wire(rig.ask(udp_query("big.example", 4, use_edns=0, payload=4096)))
        assert len(big.answer[0]) == 40 and not big.flags & dns.flags.TC
        small = dns.message.from_wire(rig.ask(udp_query("big.example", 5)))
        assert small.flags & dns.flags.TC


def test_kept_answers_are_tallied_and_recorded_as_the_first() -> None:
    """The tally (metrics, sightings) and the recorder get the same arguments for a query
    answered from a kept answer as for the first ones."""
    rig = Memo()
    tallied: list[tuple[Any, ...]] = []
    recorded: list[tuple[Any, ...]] = []
    rig.responder.tally = lambda *fields: tallied.append(fields)
    rig.responder.recorder = lambda *fields: recorded.append(fields)
    for name in ("www.evil.example", "www.example.com"):
        for _ in range(4):
            rig.ask(udp_query(name, 11, use_edns=0))
    assert len(tallied) == len(recorded) == 8
    for first in (0, 4):
        assert tallied[first : first + 4] == [tallied[first]] * 4
        assert recorded[first : first + 4] == [recorded[first]] * 4
    assert tallied[0][2].decision.indicator == "evil.example"
    assert recorded[4][-1] == 0 and recorded[4][5].kind.value == "Cached"


class ByClient:
    """A third-party policy: blocks evil.example for 127.0.0.2 alone (no `decide_name`)."""

    name = "by-client"
    service = None

    def decide(self, query: Any) -> Any:
        from misp_dns.interfaces import Action, Decision

        if query.client == "127.0.0.2" and query.name.endswith("evil.example"):
            return Decision(Action.BLOCK, "by-client", indicator="evil.example")
        return None


def test_a_policy_that_judges_the_whole_query_gets_every_query() -> None:
    """With a policy that decides on more than the name (here the client), no answer is
    kept: another client asking what one client was answered gets its own decision."""
    rig = Memo(policies=[ByClient()])
    rig.put("www.evil.example", 60)
    query = udp_query("www.evil.example", 5)
    for _ in range(3):
        assert dns.message.from_wire(rig.ask(query)).rcode() == dns.rcode.NOERROR
    assert dns.message.from_wire(rig.ask(query, "127.0.0.2")).rcode() == dns.rcode.NXDOMAIN


def test_the_kept_answers_stay_within_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many names are asked, the kept answers and the queries seen once stay
    within their count and byte bounds (and answers still come right)."""
    from misp_dns.dns import server

    monkeypatch.setattr(server, "MEMO_ENTRIES", 8)
    monkeypatch.setattr(server, "MEMO_BYTES", 600)
    rig = Memo()
    for i in range(40):
        rig.put(f"n{i}.example.com", 60)
        for _ in range(3):
            response = dns.message.from_wire(rig.ask(udp_query(f"n{i}.example.com", i)))
            assert response.answer[0].name.to_text() == f"n{i}.example.com."
        memo, seen = rig.responder._memo, rig.responder._seen
        assert 0 < len(memo) <= 8 and len(seen) <= 8
        assert sum(len(k) + len(v.body) for k, v in memo.items()) <= 600
        assert sum(len(k) for k in seen) <= 600


def test_a_kept_answer_still_passes_the_acl() -> None:
    """A client outside the ACL is refused, however often the same query was answered
    for a client inside it."""
    rig = Memo()
    query = udp_query("www.evil.example", 5)
    for _ in range(3):
        assert dns.message.from_wire(rig.ask(query)).rcode() == dns.rcode.NXDOMAIN
    assert dns.message.from_wire(rig.ask(query, "192.0.2.99")).rcode() == dns.rcode.REFUSED


def test_an_allowlist_added_by_a_reload_counts_from_the_next_query() -> None:
    """A reload that puts an allowlist before the misp policy (a new chain) lets the next
    query for a name that was blocked, and kept, through."""
    from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
    from misp_dns.policy.chain import PolicyChain

    rig = Memo()
    rig.put("www.evil.example", 60)
    query = udp_query("www.evil.example", 5)
    for _ in range(3):
        assert dns.message.from_wire(rig.ask(query)).rcode() == dns.rcode.NXDOMAIN
    allowlist = AllowlistPolicy.from_config(AllowlistOptions(domains=("evil.example",)))
    rig.responder.resolver.policy = PolicyChain([allowlist, rig.policy])
    response = dns.message.from_wire(rig.ask(query))
    assert response.rcode() == dns.rcode.NOERROR and response.answer
