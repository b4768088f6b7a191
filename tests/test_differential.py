"""The rules of the differential test (`integration.differential`), on hand-made answers.

The end-to-end test compares misp-dns with NSD and Unbound; these tests pin that its
comparison catches what it must (AA from a forwarder, a TTL that grew, glue missing over
TCP, compressed RDATA names) and lets through only what its list of allowed differences allows.
"""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rrset
import pytest
from integration.differential import Exchange, Rules, Variant, differences, rdata_compressed

NSD = Rules(authoritative=True, age=30)
QUESTION = b"\x04host\x05dname\x04diff\x04test\x00" + struct.pack("!HH", 1, 1)


def _rrset(line: str) -> dns.rrset.RRset:
    name, ttl, rdclass, rdtype, *rdata = line.split()
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, " ".join(rdata))


def _response(
    query: dns.message.Message,
    answer: list[str],
    *,
    additional: tuple[str, ...] = (),
    authoritative: bool = False,
    recursion: bool = True,
) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.answer = [_rrset(line) for line in answer]
    response.additional = [_rrset(line) for line in additional]
    response.flags &= ~(dns.flags.AA | dns.flags.RA)
    response.flags |= (dns.flags.AA if authoritative else 0) | (dns.flags.RA if recursion else 0)
    # As it arrives: the records of one RRset gathered, whatever their order.
    return dns.message.from_wire(response.to_wire())


def _exchange(variant: Variant, ours: dns.message.Message, theirs: dns.message.Message) -> Exchange:
    query = dns.message.make_query("www.diff.test.", "A", id=ours.id)
    return Exchange(variant, query, ours.to_wire(), ours, theirs, lambda: theirs)


def _nsd_answer(ttl: int, *, additional: tuple[str, ...] = ()) -> dns.message.Message:
    query = dns.message.make_query("www.diff.test.", "A", id=7)
    lines = [f"www.diff.test. {ttl} IN A 192.0.2.1", f"www.diff.test. {ttl} IN A 192.0.2.2"]
    return _response(query, lines, additional=additional, authoritative=True, recursion=False)


def _ours(ttl: int, *, additional: tuple[str, ...] = ()) -> dns.message.Message:
    query = dns.message.make_query("www.diff.test.", "A", id=7)
    lines = [f"www.diff.test. {ttl} IN A 192.0.2.2", f"www.diff.test. {ttl} IN A 192.0.2.1"]
    return _response(query, lines, additional=additional)


def test_what_the_rules_allow_is_no_difference() -> None:
    """RA without AA, a TTL counted down, another record order: no difference."""
    exchange = _exchange(Variant(), _ours(3590), _nsd_answer(3600))
    assert differences(exchange, NSD) == []


def test_aa_from_misp_dns_is_a_difference() -> None:
    """misp-dns claiming authority for what it forwards is reported."""
    ours = _ours(3600)
    ours.flags |= dns.flags.AA
    found = differences(_exchange(Variant(), ours, _nsd_answer(3600)), NSD)
    assert found == ["AA set: misp-dns is authoritative for nothing it forwards"]


@pytest.mark.parametrize("ttl", [3601, 3569])
def test_a_ttl_outside_the_cache_age_is_a_difference(ttl: int) -> None:
    """A TTL above the authoritative one, or lower than the cache could have aged it."""
    found = differences(_exchange(Variant(), _ours(ttl), _nsd_answer(3600)), NSD)
    assert len(found) == 1
    assert found[0].startswith(f"TTL {ttl} of www.diff.test. A, reference 3600")


def test_glue_may_be_left_out_over_udp_but_not_over_tcp() -> None:
    """Additional data is optional in a datagram; over TCP it must all be there."""
    glue = ("ns1.diff.test. 3600 IN A 192.0.2.53",)
    theirs = _nsd_answer(3600, additional=glue)
    assert differences(_exchange(Variant(), _ours(3600), theirs), NSD) == []
    found = differences(_exchange(Variant(tcp=True), _ours(3600), theirs), NSD)
    assert [line.split(":")[0] for line in found] == ["additional"]


def test_sections_are_not_compared_when_both_are_truncated() -> None:
    """Both TC: a client asks again over TCP, so what the sections hold does not matter."""
    ours, theirs = _ours(3600), _nsd_answer(3600)
    ours.answer = []
    for message in (ours, theirs):
        message.flags |= dns.flags.TC
    assert differences(_exchange(Variant(), ours, theirs), NSD) == []


def _answer_wire(rdtype: int, rdata: bytes) -> bytes:
    header = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0)
    # The owner points to "dname.diff.test." in the question (offset 17).
    record = b"\xc0\x11" + struct.pack("!HHIH", rdtype, 1, 3600, len(rdata)) + rdata
    return header + QUESTION + record


@pytest.mark.parametrize(
    ("rdtype", "prefix"),
    [(39, b""), (33, struct.pack("!HHH", 10, 60, 5060))],
    ids=["DNAME", "SRV"],
)
def test_a_compressed_name_in_rdata_is_found(rdtype: int, prefix: bytes) -> None:
    """A DNAME or SRV target pointing into the question (RFC 3597 section 4 forbids it) is
    found; the same name written in full is not, nor a compressed owner name."""
    compressed = prefix + b"\x06target\xc0\x17"  # "diff.test." is at offset 23
    whole = prefix + b"\x06target\x04diff\x04test\x00"
    assert rdata_compressed(_answer_wire(rdtype, compressed)) == [rdtype]
    assert rdata_compressed(_answer_wire(rdtype, whole)) == []
