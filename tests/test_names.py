"""Tests for misp_dns.names: every name of an upstream's answer is relayed with its labels.

Each upstream answer is built by dnspython, decoded as the forwarder decodes replies
(`parse_message`), encoded again on the paths a client's answer takes (fresh, cached, aged
in the cache), and read back by dnspython, which compares names label by label.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import attrs
import dns.message
import dns.name
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.packet import assemble, encode_body
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import Responder
from misp_dns.dns.wire import encode_response, parse_message, read_request
from misp_dns.event import Answer
from misp_dns.names import ExactName, labels, text_of_labels
from misp_dns.policy.chain import PolicyChain

ODD_LABELS = [b"a.b", b"back\\slash", b"with space", b"\xc3\xa9t\xc3\xa9", b"a\\.b", b"\\", b"."]


def name(first: bytes, *rest: bytes) -> dns.name.Name:
    """`first` and `rest` as the first labels of a name under diff.test."""
    return dns.name.Name([first, *rest, b"diff", b"test", b""])


def odd_answer() -> tuple[dns.message.Message, dns.message.Message]:
    """A query for to-dotted.diff.test A and an upstream answer whose names, in every
    section and inside the RDATA of every type misp-dns decodes or keeps as bytes, hold a
    dot, a backslash, a space or octets from 0x80 inside their labels."""
    dotted, slash, space, high = (name(label) for label in ODD_LABELS[:4])
    query = dns.message.make_query("to-dotted.diff.test", "A", want_dnssec=True)
    upstream = dns.message.make_response(query)

    def add(section: list[dns.rrset.RRset], owner: dns.name.Name, rtype: str, *rdata: str) -> None:
        section.append(dns.rrset.from_text(owner, 300, "IN", rtype, *rdata))

    add(upstream.answer, dns.name.from_text("to-dotted.diff.test"), "CNAME", dotted.to_text())
    add(upstream.answer, dotted, "A", "192.0.2.7")
    signature = f"A 13 4 300 20300101000000 20200101000000 1 {slash} AAAA"
    add(upstream.answer, dotted, "RRSIG", signature)
    add(upstream.answer, name(b"x"), "DNAME", name(b"y.z").to_text())
    add(upstream.authority, dns.name.from_text("diff.test"), "NS", slash.to_text())
    add(upstream.authority, space, "SOA", f"{dotted} {high} 1 2 3 4 5")
    add(upstream.authority, high, "NSEC", f"{dotted} A RRSIG NSEC")
    add(upstream.additional, high, "MX", f"10 {dotted}")
    add(upstream.additional, dotted, "SRV", f"0 0 53 {space}")
    add(upstream.additional, slash, "PTR", high.to_text())
    add(upstream.additional, dotted, "NAPTR", f'1 2 "S" "SIP+D2U" "" {slash}')
    add(upstream.additional, dotted, "RP", f"{space} {high}")
    add(upstream.additional, dotted, "AFSDB", f"1 {slash}")
    add(upstream.additional, name(*ODD_LABELS[4:]), "A", "192.0.2.8")
    return query, upstream


def relayed(upstream: dns.message.Message) -> Answer:
    """The upstream's answer as misp-dns holds it after decoding the reply."""
    reply = parse_message(upstream.to_wire())
    return Answer(reply.rCode, reply.answers, reply.authority, reply.additional)


def sections(message: dns.message.Message) -> list[list[dns.rrset.RRset]]:
    additional = [rrset for rrset in message.additional if rrset.rdtype != 41]
    return [list(message.answer), list(message.authority), additional]


def test_every_name_of_an_answer_keeps_its_labels_fresh_cached_and_aged() -> None:
    """The client gets every owner name and every name inside RDATA (CNAME, DNAME, NS,
    SOA, MX, SRV, PTR, NAPTR, RP, AFSDB targets, the RRSIG signer, the NSEC next name) as
    the upstream wrote it, label by label: a CNAME to `a\\.b.diff.test` is not relayed as
    one to `a.b.diff.test`, nor a backslash, space or high octet changed, whether the answer
    is encoded fresh, from the cache, or from the cache with its TTLs lowered."""
    query, upstream = odd_answer()
    request = read_request(query.to_wire())
    answer = relayed(upstream)
    fresh = encode_response(
        request, answer.rcode, answer.answers, answer.authority, answer.additional
    )
    body = encode_body(answer, request.name.lower(), request.question.type, request.question.cls)
    cached = assemble(request.message.id, request.flags, request.question_wire, body, 0, None)
    aged = Answer(answer.rcode, answer.answers, answer.authority, answer.additional, age=10)
    older = encode_response(
        request,
        aged.rcode,
        aged.aged(aged.answers),
        aged.aged(aged.authority),
        aged.aged(aged.additional),
    )
    for wire in (fresh, cached, older):
        response = dns.message.from_wire(wire)
        assert sections(response) == sections(upstream)
        target = response.answer[0][0].target
        assert target.labels == (b"a.b", b"diff", b"test", b"")


class _Upstream:
    """Answers every question with the one upstream answer it was given, decoded as the
    forwarder decodes replies, whole when asked over TCP; counts the questions asked."""

    def __init__(self, upstream: dns.message.Message) -> None:
        self.upstream = upstream
        self.asked = 0

    def resolve(self, name: bytes, qtype: int, qclass: int, **flags: Any) -> defer.Deferred[Answer]:
        self.asked += 1
        answer = relayed(self.upstream)
        return defer.succeed(attrs.evolve(answer, complete=bool(flags.get("whole"))))


def test_the_server_relays_the_labels_over_udp_and_tcp_fresh_and_cached() -> None:
    """Through the responder, the resolver and its cache, a client over UDP (the cached
    answer from the fast path) and over TCP gets the upstream's names label by label."""
    query, upstream = odd_answer()
    clock = Clock()
    clock.advance(1_000_000)
    fake = _Upstream(upstream)
    resolver = ChainResolver(PolicyChain([]), AnswerCache(100, clock), fake, "dns.test")  # type: ignore[arg-type]
    responder = Responder(resolver, ClientACL([ipaddress.ip_network("0.0.0.0/0")]), clock)
    for transport in ("udp", "udp", "tcp", "tcp"):
        wire = responder.respond(query.to_wire(), "192.0.2.1", transport)
        assert isinstance(wire, bytes | defer.Deferred)
        if isinstance(wire, defer.Deferred):
            (wire,) = _fired(wire)
        response = dns.message.from_wire(wire)
        assert sections(response) == sections(upstream)
    assert fake.asked == 2  # once for UDP, once more over TCP; the rest from the cache


def _fired(deferred: defer.Deferred[bytes]) -> list[bytes]:
    results: list[bytes] = []
    deferred.addCallback(results.append)
    assert results, "the response Deferred never fired"
    return results


def test_owner_names_point_only_at_the_same_labels() -> None:
    """An answer owned by the three-label `a.b.diff.test` to a question for the two-label
    `a\\.b.diff.test` keeps its own name: compression never makes one of them the other."""
    question = name(b"a.b")
    query = dns.message.make_query(question, "A")
    upstream = dns.message.make_response(query)
    upstream.answer.append(dns.rrset.from_text(question, 300, "IN", "A", "192.0.2.1"))
    upstream.answer.append(dns.rrset.from_text("a.b.diff.test.", 300, "IN", "A", "192.0.2.2"))
    request = read_request(query.to_wire())
    answer = relayed(upstream)
    wire = encode_response(request, answer.rcode, answer.answers)
    response = dns.message.from_wire(wire)
    assert [rrset.name.labels[:2] for rrset in response.answer] == [
        (b"a.b", b"diff"),
        (b"a", b"b"),
    ]


@given(st.lists(st.binary(min_size=1, max_size=63), max_size=3))
def test_any_labels_go_through_a_reply_and_back_unchanged(raw: list[bytes]) -> None:
    """A CNAME whose target's labels hold any octets reaches the client with those labels,
    and the target's text splits back into them."""
    target = dns.name.Name([*raw, b"diff", b"test", b""])
    query = dns.message.make_query("q.diff.test", "A")
    upstream = dns.message.make_response(query)
    upstream.answer.append(dns.rrset.from_text("q.diff.test.", 60, "IN", "CNAME", target.to_text()))
    answer = relayed(upstream)
    assert labels(answer.answers[0].payload.name.name) == [*raw, b"diff", b"test"]
    wire = encode_response(read_request(query.to_wire()), answer.rcode, answer.answers)
    assert dns.message.from_wire(wire).answer[0][0].target.labels == target.labels
    assert labels(ExactName.from_labels(raw).name) == raw
    assert labels(text_of_labels(raw)) == raw


def reply_with_owner(owner: bytes) -> bytes:
    """A reply with one question (root, A) and one A record owned by the wire name `owner`."""
    header = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
    return header + b"\x00\x00\x01\x00\x01" + owner + struct.pack("!HHIH", 1, 1, 300, 4) + bytes(4)


@pytest.mark.parametrize(
    ("owner", "problem"),
    [
        ((b"\x3f" + b"x" * 63) * 4 + b"\x00", "longer than 255"),
        (b"\xc0\x11", "compression"),
        (b"\x41" + b"x" * 65 + b"\x00", "reserved label type"),
    ],
    ids=["over-255-octets", "pointer-to-itself", "reserved-label-type"],
)
def test_replies_with_impossible_names_are_refused(owner: bytes, problem: str) -> None:
    """A reply whose owner name runs over 255 octets, loops through a compression pointer
    or uses a reserved label type is not taken as an answer (misp-dns could not relay it
    as a valid message), and reading it costs a bounded amount of work."""
    with pytest.raises(ValueError, match=problem):
        parse_message(reply_with_owner(owner))
