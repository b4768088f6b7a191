"""The resolver chain seen from clients: what the cache and one upstream query may share."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns as tdns

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.forwarder import Forwarder, UpstreamFailed
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import Responder
from misp_dns.event import Answer, Kind, QueryEvent
from misp_dns.export.record import RecordEncoder
from misp_dns.interfaces import Action, Decision, PolicyQuery
from misp_dns.policy.chain import PolicyChain
from misp_dns.values import HostPort

CLIENT = "127.0.0.1"


class ScriptedUpstream:
    """Stands in for `Forwarder.resolve`: records every question it is asked and answers it
    with `reply(name, qtype, qclass, dnssec_ok, checking_disabled)`, at once or, with
    `hold`, when the test calls `release()` (or `fail(...)`). Like the forwarder it takes
    the name in wire format; `reply` gets it as Twisted decodes names."""

    def __init__(self, reply: Callable[..., Answer], *, hold: bool = False) -> None:
        self.reply = reply
        self.hold = hold
        self.asked: list[tuple[bytes, int, int, bool, bool]] = []
        self.pending: list[tuple[tuple[bytes, int, int, bool, bool], defer.Deferred[Answer]]] = []

    def release(self) -> None:
        """Answer every held question."""
        pending, self.pending = self.pending, []
        for question, waiting in pending:
            waiting.callback(self.reply(*question))

    def fail(self, reason: Exception) -> None:
        """Fail every held question with `reason`."""
        pending, self.pending = self.pending, []
        for _, waiting in pending:
            waiting.errback(reason)

    def resolve(
        self,
        name: bytes,
        qtype: int,
        qclass: int = tdns.IN,
        *,
        dnssec_ok: bool = False,
        checking_disabled: bool = False,
        whole: bool = False,
    ) -> defer.Deferred[Answer]:
        decoded = dns.name.from_wire(name, 0)[0].to_text(omit_final_dot=True).encode()
        question = (decoded, qtype, qclass, dnssec_ok, checking_disabled)
        self.asked.append(question)
        if self.hold:
            waiting: defer.Deferred[Answer] = defer.Deferred()
            self.pending.append((question, waiting))
            return waiting
        return defer.succeed(self.reply(*question))


def a_record(name: bytes, address: str, ttl: int = 300) -> tdns.RRHeader:
    return tdns.RRHeader(name, tdns.A, tdns.IN, ttl, tdns.Record_A(address, ttl))


def rrsig_record(name: bytes, ttl: int = 300) -> tdns.RRHeader:
    signature = tdns.UnknownRecord(b"\x00\x01\x08\x03" + b"\x00" * 24, ttl)
    return tdns.RRHeader(name, 46, tdns.IN, ttl, signature)


def validating_upstream(name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> Answer:
    """A validating resolver asked about a name whose signatures are bogus: it gives the
    data only to a client that disabled checking, SERVFAIL to everyone else."""
    if not cd:
        return Answer(tdns.ESERVER)
    return Answer(tdns.OK, answers=(a_record(name, "192.0.2.66"),))


def signing_upstream(name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> Answer:
    """A resolver for a signed zone: with DO the answer carries its RRSIG, without it not."""
    records = (a_record(name, "192.0.2.7"),) + ((rrsig_record(name),) if do else ())
    return Answer(tdns.OK, answers=records)


def plain_upstream(name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> Answer:
    """Any resolver: one A record for every name."""
    return Answer(tdns.OK, answers=(a_record(name, "192.0.2.7"),))


class AllowClient:
    """A policy that allows every name for one client and has no opinion for the others."""

    name = "allow-client"

    def __init__(self, client: str) -> None:
        self.client = client

    def decide(self, query: PolicyQuery) -> Decision | None:
        if query.client != self.client:
            return None
        return Decision(Action.ALLOW, "allow-client", indicator=query.name)


def make_responder(
    upstream: Any, policies: Sequence[Any] = (), clock: Any = None
) -> tuple[Responder, list[QueryEvent]]:
    clock = clock or Clock()
    cache = AnswerCache(100, clock)
    resolver = ChainResolver(PolicyChain(policies), cache, upstream, "dns.test")
    responder = Responder(resolver, ClientACL([ipaddress.ip_network("127.0.0.0/8")]), clock)
    events: list[QueryEvent] = []
    responder.observers.append(events.append)
    return responder, events


def ask(responder: Responder, query: dns.message.Message, transport: str = "udp") -> Any:
    """The client's view: the response to `query`, parsed by dnspython."""
    result = responder.respond(query.to_wire(), CLIENT, transport)
    if isinstance(result, defer.Deferred):
        result = result.result
    assert isinstance(result, bytes)
    return dns.message.from_wire(result)


def test_an_answer_fetched_with_checking_disabled_is_not_served_to_other_clients() -> None:
    """A `+cd` client may see data its upstream could not validate; that answer must not
    come out of the cache for a client that left checking on (it gets what the upstream
    says to it: SERVFAIL), on the fast path (UDP) or the full one (TCP)."""
    upstream = ScriptedUpstream(validating_upstream)
    responder, _ = make_responder(upstream)
    unchecked = dns.message.make_query("bogus.test", "A", use_edns=0)
    unchecked.flags |= dns.flags.CD
    first = ask(responder, unchecked)
    assert first.rcode() == dns.rcode.NOERROR and first.flags & dns.flags.CD

    for transport in ("udp", "tcp"):
        checked = ask(responder, dns.message.make_query("bogus.test", "A", use_edns=0), transport)
        assert checked.rcode() == dns.rcode.SERVFAIL
        assert checked.answer == []
    assert [cd for *_, cd in upstream.asked] == [True, False, False]

    again = ask(responder, unchecked)
    assert [str(r) for r in again.answer[0]] == ["192.0.2.66"]
    assert len(upstream.asked) == 3


def test_an_answer_fetched_with_do_is_not_served_to_a_client_without_do() -> None:
    """RRSIGs fetched for a DO client stay with DO clients; a client without DO gets an
    answer fetched without DO, and a DO client never gets one lacking its signatures."""
    upstream = ScriptedUpstream(signing_upstream)
    responder, _ = make_responder(upstream)
    with_do = dns.message.make_query("signed.test", "A", want_dnssec=True)
    without_do = dns.message.make_query("signed.test", "A", use_edns=0)

    for query in (with_do, without_do, with_do, without_do):
        types = [rrset.rdtype for rrset in ask(responder, query).answer]
        expected = [dns.rdatatype.A, dns.rdatatype.RRSIG] if query is with_do else [dns.rdatatype.A]
        assert types == expected
    assert [do for _, _, _, do, _ in upstream.asked] == [True, False]


def send(responder: Responder, query: dns.message.Message, client: str = CLIENT) -> Any:
    """Send `query` over UDP; the response bytes, or a Deferred for them."""
    return responder.respond(query.to_wire(), client, "udp")


def identical_queries(count: int) -> list[dns.message.Message]:
    """`count` queries for one question from as many clients: their own IDs, half with
    EDNS (without DO), half without."""
    queries = []
    for index in range(count):
        query = dns.message.make_query("popular.test", "A", use_edns=0 if index % 2 else False)
        query.id = 1000 + index
        queries.append(query)
    return queries


def test_identical_questions_in_flight_share_one_upstream_query() -> None:
    """100 clients asking the same question while the upstream is still thinking cause one
    upstream query; when it answers, each client gets the answer with its own ID and its
    own EDNS shape (an OPT only if it sent one), and each gets a query record."""
    upstream = ScriptedUpstream(plain_upstream, hold=True)
    responder, events = make_responder(upstream)
    queries = identical_queries(100)
    results = [send(responder, query) for query in queries]
    assert all(isinstance(result, defer.Deferred) for result in results)
    assert len(upstream.asked) == 1

    upstream.release()
    for query, result in zip(queries, results, strict=True):
        response = dns.message.from_wire(result.result)
        assert response.id == query.id
        assert response.edns == query.edns
        assert response.rcode() == dns.rcode.NOERROR
        assert [str(r) for r in response.answer[0]] == ["192.0.2.7"]
    assert len(events) == 100
    assert {event.answer.kind for event in events} == {Kind.RECURSIVE}


def test_questions_that_differ_in_do_or_cd_are_not_merged() -> None:
    """DO and CD change what the upstream answers, so those questions go up on their own."""
    upstream = ScriptedUpstream(plain_upstream, hold=True)
    responder, _ = make_responder(upstream)
    plain = dns.message.make_query("popular.test", "A", use_edns=0)
    with_do = dns.message.make_query("popular.test", "A", want_dnssec=True)
    with_cd = dns.message.make_query("popular.test", "A", use_edns=0)
    with_cd.flags |= dns.flags.CD
    for query in (plain, with_do, with_cd, plain, with_do, with_cd):
        send(responder, query)
    assert [(do, cd) for *_, do, cd in upstream.asked] == [
        (False, False),
        (True, False),
        (False, True),
    ]


def test_each_waiting_client_keeps_its_own_policy_decision() -> None:
    """A policy's decision belongs to the client it was made for: of two clients waiting
    for the same upstream answer, only the allowed one is logged as Allowed."""
    upstream = ScriptedUpstream(plain_upstream, hold=True)
    responder, events = make_responder(upstream, [AllowClient("127.0.0.2")])
    query = dns.message.make_query("popular.test", "A")
    send(responder, query, "127.0.0.1")
    send(responder, query, "127.0.0.2")
    upstream.release()
    assert [(e.client, e.answer.kind, e.answer.decision is not None) for e in events] == [
        ("127.0.0.1", Kind.RECURSIVE, False),
        ("127.0.0.2", Kind.ALLOWED, True),
    ]
    assert len(upstream.asked) == 1


def test_an_upstream_failure_reaches_every_waiting_client() -> None:
    """When the one upstream query fails, every client waiting for it gets SERVFAIL and a
    ServerFailure record, and the next identical question asks the upstream afresh."""
    upstream = ScriptedUpstream(plain_upstream, hold=True)
    responder, events = make_responder(upstream)
    queries = identical_queries(10)
    results = [send(responder, query) for query in queries]
    upstream.fail(UpstreamFailed("no answer within 5 s"))
    for query, result in zip(queries, results, strict=True):
        response = dns.message.from_wire(result.result)
        assert response.id == query.id
        assert response.rcode() == dns.rcode.SERVFAIL
    assert [event.answer.kind for event in events] == [Kind.SERVER_FAILURE] * 10

    send(responder, queries[0])
    assert len(upstream.asked) == 2


def test_a_silent_upstream_costs_one_exchange_and_leaves_nothing_behind() -> None:
    """With the real forwarder and an upstream that never answers, 50 identical questions
    open one upstream socket, not 50; at the forwarder's deadline all 50 clients get
    SERVFAIL, every socket is closed, and a later question is sent again."""
    reactor = MemoryReactorClock()
    forwarder = Forwarder([HostPort("127.0.0.1", 9)], reactor, timeout=5.0)
    responder, events = make_responder(forwarder, clock=reactor)
    queries = identical_queries(50)
    results = [send(responder, query) for query in queries]
    assert len(reactor.getReaders()) == 1

    reactor.advance(5.0)
    assert [dns.message.from_wire(r.result).rcode() for r in results] == [dns.rcode.SERVFAIL] * 50
    assert [event.answer.kind for event in events] == [Kind.SERVER_FAILURE] * 50
    assert reactor.getReaders() == []

    later = send(responder, queries[0])
    assert len(reactor.getReaders()) == 1
    reactor.advance(5.0)
    assert dns.message.from_wire(later.result).rcode() == dns.rcode.SERVFAIL


def both_paths(responder: Responder, query: dns.message.Message) -> Any:
    """The response over UDP (the fast path when it can) and TCP (the full path), which
    must be the same bytes."""
    wires = [ask(responder, query, transport).to_wire() for transport in ("udp", "tcp")]
    assert wires[0] == wires[1]
    return dns.message.from_wire(wires[0])


@pytest.mark.parametrize("name", ["id.server", "HOSTNAME.bind"])
def test_chaos_identity_queries_name_this_server(name: str) -> None:
    """`dig -c CH TXT id.server` (RFC 4892) and its older hostname.bind tell an operator
    which server answered: this one, by its `server_name` (not the upstream's identity)."""
    upstream = ScriptedUpstream(plain_upstream)
    responder, _ = make_responder(upstream)
    response = both_paths(responder, dns.message.make_query(name, "TXT", "CH", use_edns=0))
    assert response.rcode() == dns.rcode.NOERROR
    (txt,) = response.answer
    assert (txt.name, txt.rdclass, txt.rdtype, txt.ttl) == (
        dns.name.from_text(name),
        dns.rdataclass.CH,
        dns.rdatatype.TXT,
        0,
    )
    assert [r.strings for r in txt] == [(b"dns.test",)]
    assert upstream.asked == []


@pytest.mark.parametrize("name", ["version.bind", "version.server", "authors.bind"])
def test_other_chaos_queries_are_refused(name: str) -> None:
    """The version is not handed out (it helps only an attacker pick an exploit), nor is
    any other CHAOS name forwarded to be answered by the upstream."""
    upstream = ScriptedUpstream(plain_upstream)
    responder, _ = make_responder(upstream)
    response = both_paths(responder, dns.message.make_query(name, "TXT", "CH"))
    assert response.rcode() == dns.rcode.REFUSED
    assert response.answer == []
    assert upstream.asked == []


class Raising:
    """A policy with a bug that shows on one name."""

    name = "raising"

    def decide(self, query: PolicyQuery) -> Decision | None:
        if query.name == "trigger.test":
            raise ZeroDivisionError("division by zero")
        return None


@pytest.mark.allow_errors
def test_a_policy_that_raises_gets_the_client_servfail_and_a_record() -> None:
    """A policy bug does not leave the client waiting for a timeout: it gets SERVFAIL at
    once (fast path and full path alike), the query is recorded as ServerFailure, the
    question is not forwarded (the policy could not say it was safe), and other names
    resolve as before."""
    upstream = ScriptedUpstream(plain_upstream)
    responder, events = make_responder(upstream, [Raising()])
    response = both_paths(responder, dns.message.make_query("trigger.test", "A", use_edns=0))
    assert response.rcode() == dns.rcode.SERVFAIL
    assert response.answer == []
    encoder = RecordEncoder()
    records = [encoder.encode(event) for event in events]
    assert [(r["responseType"], r["protocol"]) for r in records] == [
        ("ServerFailure", "Udp"),
        ("ServerFailure", "Tcp"),
    ]
    assert upstream.asked == []
    other = ask(responder, dns.message.make_query("fine.test", "A"))
    assert other.rcode() == dns.rcode.NOERROR


class CuttingUpstream:
    """An upstream whose answer has an NS RRset in its authority section, which it leaves
    out (without TC, as RFC 2181 section 9 allows) when asked over UDP."""

    def __init__(self) -> None:
        self.asked_whole: list[bool] = []

    def resolve(self, name: bytes, qtype: int, qclass: int, **options: Any) -> Any:
        """Answer like the forwarder: `complete` only when asked over TCP (`whole`)."""
        whole = options.get("whole", False)
        self.asked_whole.append(whole)
        ns = tdns.RRHeader(b"test", tdns.NS, tdns.IN, 300, tdns.Record_NS(b"ns.test", 300))
        authority = (ns,) if whole else ()
        answers = (a_record(b"cut.test", "192.0.2.1"),)
        return defer.succeed(Answer(tdns.OK, answers, authority, complete=whole))


def test_a_tcp_client_gets_the_whole_answer_not_the_udp_one_cached() -> None:
    """An answer the upstream gave over UDP (maybe cut to fit) is not served to a TCP
    client from the cache: the upstream is asked again over TCP, the client gets the NS
    records too, and the whole answer then serves everyone from the cache."""
    upstream = CuttingUpstream()
    responder, _ = make_responder(upstream)
    query = dns.message.make_query("cut.test", "A", use_edns=0)
    assert ask(responder, query, "udp").authority == []
    for transport in ("tcp", "udp", "tcp"):
        response = ask(responder, query, transport)
        assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.NS]
    assert upstream.asked_whole == [False, True]


def test_a_tcp_client_does_not_wait_for_an_answer_asked_over_udp() -> None:
    """A TCP client's question is not merged with the same question in flight over UDP
    (its answer may come back cut): it goes up over TCP on its own."""
    upstream = ScriptedUpstream(plain_upstream, hold=True)
    responder, _ = make_responder(upstream)
    query = dns.message.make_query("popular.test", "A", use_edns=0)
    for transport in ("udp", "tcp", "udp", "tcp"):
        responder.respond(query.to_wire(), CLIENT, transport)
    assert len(upstream.asked) == 2
