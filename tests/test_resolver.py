"""The resolver chain seen from a client: which answers the cache may share between clients."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns as tdns

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.answer import Answer
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import QueryEvent, Responder
from misp_dns.policy.chain import PolicyChain

CLIENT = "127.0.0.1"


class ScriptedUpstream:
    """Stands in for `Forwarder.resolve`: records every question it is asked and answers it
    with `reply(name, qtype, qclass, dnssec_ok, checking_disabled)`."""

    def __init__(self, reply: Callable[..., Answer]) -> None:
        self.reply = reply
        self.asked: list[tuple[bytes, int, int, bool, bool]] = []

    def resolve(
        self,
        name: bytes,
        qtype: int,
        qclass: int = tdns.IN,
        *,
        dnssec_ok: bool = False,
        checking_disabled: bool = False,
    ) -> defer.Deferred[Answer]:
        question = (name, qtype, qclass, dnssec_ok, checking_disabled)
        self.asked.append(question)
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


def make_responder(upstream: Any) -> tuple[Responder, list[QueryEvent]]:
    resolver = ChainResolver(PolicyChain(), AnswerCache(100, Clock()), upstream, "dns.test")
    responder = Responder(resolver, ClientACL([ipaddress.ip_network("127.0.0.0/8")]), Clock())
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
