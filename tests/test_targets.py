"""Tests for misp_dns.dns.targets: where an answer leads, as the policies get to judge it."""

from __future__ import annotations

import ipaddress

import dns.message as dns_message
import dns.name as dns_name
import dns.rrset as dns_rrset
from twisted.names import dns

from misp_dns.dns.targets import MAX_HOPS, answer_targets
from misp_dns.dns.wire import parse_message, presentation_name


def cname(owner: str, target: str) -> dns.RRHeader:
    return dns.RRHeader(owner.encode(), dns.CNAME, dns.IN, 300, dns.Record_CNAME(target.encode()))


def dname(owner: str, target: str) -> dns.RRHeader:
    return dns.RRHeader(owner.encode(), dns.DNAME, dns.IN, 300, dns.Record_DNAME(target.encode()))


def a(owner: str, address: str) -> dns.RRHeader:
    return dns.RRHeader(owner.encode(), dns.A, dns.IN, 300, dns.Record_A(address))


def aaaa(owner: str, address: str) -> dns.RRHeader:
    return dns.RRHeader(owner.encode(), dns.AAAA, dns.IN, 300, dns.Record_AAAA(address))


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def wire(name: str) -> bytes:
    """`name` in wire format, as cache keys hold question names."""
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def test_a_cname_chain_is_followed_hop_by_hop() -> None:
    """Every name of a three-hop chain, in order, lower case, and the final addresses."""
    records = [
        cname("www.shop.example", "Shop.CDN.example"),
        cname("shop.cdn.example", "edge.tracker.test"),
        cname("edge.tracker.test", "host.evil.test"),
        a("host.evil.test", "203.0.113.7"),
        aaaa("host.evil.test", "2001:db8::7"),
    ]
    assert answer_targets(wire("WWW.shop.example"), records) == (
        ("shop.cdn.example", "edge.tracker.test", "host.evil.test"),
        (packed("203.0.113.7"), packed("2001:db8::7")),
    )


def test_a_dname_rewrites_the_name_below_its_owner() -> None:
    """Without a synthesized CNAME, the DNAME itself leads www.alias.example to
    www.evil.test (RFC 6672); the DNAME's own target is no name the client reaches."""
    records = [dname("alias.example", "evil.test"), a("www.evil.test", "192.0.2.1")]
    assert answer_targets(wire("www.alias.example"), records) == (
        ("www.evil.test",),
        (packed("192.0.2.1"),),
    )


def test_a_dname_with_its_synthesized_cname_gives_the_name_once() -> None:
    """The usual upstream answer (DNAME, synthesized CNAME, then the data) names the
    rewritten name once, then follows on from it."""
    records = [
        dname("alias.example", "evil.test"),
        cname("a.b.alias.example", "a.b.evil.test"),
        cname("a.b.evil.test", "final.test"),
        a("final.test", "192.0.2.2"),
    ]
    assert answer_targets(wire("a.b.alias.example"), records) == (
        ("a.b.evil.test", "final.test"),
        (packed("192.0.2.2"),),
    )


def test_records_the_chain_does_not_reach_are_not_names_of_it() -> None:
    """A CNAME owned by a name outside the chain (an upstream's stray record) is ignored;
    the addresses are all the answer's A/AAAA records, as a client may use any."""
    records = [
        cname("unrelated.example", "evil.test"),
        a("www.example", "192.0.2.3"),
    ]
    assert answer_targets(wire("www.example"), records) == ((), (packed("192.0.2.3"),))


def test_a_loop_and_an_endless_chain_stop() -> None:
    """A CNAME loop names each name once; a very long chain stops after MAX_HOPS names."""
    loop = [cname("a.test", "b.test"), cname("b.test", "a.test")]
    assert answer_targets(wire("a.test"), loop) == (("b.test",), ())
    long = [cname(f"n{i}.test", f"n{i + 1}.test") for i in range(40)]
    names, _ = answer_targets(wire("n0.test"), long) or ((), ())
    assert names == tuple(f"n{i}.test" for i in range(1, MAX_HOPS + 1))


def test_an_answer_with_nothing_to_judge_gives_none() -> None:
    """No chain and no address (MX, TXT, an empty NODATA): nothing for a policy to judge."""
    mx = dns.RRHeader(b"example", dns.MX, dns.IN, 300, dns.Record_MX(10, b"mail.evil.test"))
    assert answer_targets(wire("example"), [mx]) is None
    assert answer_targets(wire("example"), []) is None


def dotted_answer(*records: str) -> list[dns.RRHeader]:
    """The answer section of an upstream reply holding `records` (zone-file lines),
    decoded as the forwarder decodes replies."""
    upstream = dns_message.make_response(dns_message.make_query("q.diff.test", "A"))
    for line in records:
        owner, rtype, rdata = line.split(" ", 2)
        upstream.answer.append(dns_rrset.from_text(owner, 300, "IN", rtype, rdata))
    return parse_message(upstream.to_wire()).answers


def test_a_chain_target_whose_label_holds_a_dot_is_named_as_its_question_would_be() -> None:
    """A CNAME to `a\\.b.diff.test` (one label `a.b`) reaches the policies as
    `a\\.b.diff.test`, written as a question for that name is (`presentation_name`), not
    as the three-label `a.b.diff.test`; so do a backslash and octets from 0x80."""
    targets = ["a\\.b.diff.test", "back\\\\slash.diff.test", "\\195\\169.diff.test"]
    records = dotted_answer(
        f"q.diff.test. CNAME {targets[0]}.",
        f"{targets[0]}. CNAME {targets[1]}.",
        f"{targets[1]}. CNAME {targets[2]}.",
    )
    found = answer_targets(wire("q.diff.test"), records)
    expected = tuple(presentation_name(dns_name.from_text(t).to_wire()) for t in targets)
    assert found == (expected, ())
    assert expected[0] == "a\\.b.diff.test"


def test_a_dname_does_not_rewrite_a_name_only_its_dotted_label_puts_below_it() -> None:
    """`x\\.b.diff.test` (labels `x.b`, `diff`, `test`) is not below `b.diff.test`: a DNAME
    owned by `b.diff.test` does not lead a chain through it elsewhere, while one owned by
    `diff.test` does."""
    records = dotted_answer(
        "q.diff.test. CNAME x\\.b.diff.test.",
        "b.diff.test. DNAME elsewhere.example.",
    )
    assert answer_targets(wire("q.diff.test"), records) == (("x\\.b.diff.test",), ())
    records = dotted_answer(
        "q.diff.test. CNAME x\\.b.diff.test.",
        "diff.test. DNAME elsewhere.example.",
    )
    found = answer_targets(wire("q.diff.test"), records)
    assert found == (("x\\.b.diff.test", "x\\.b.elsewhere.example"), ())
