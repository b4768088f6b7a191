"""The upstream the end-to-end tests rely on: Unbound really gives each kind of answer.

If one of these fails, a forwarding test failing later says nothing about misp-dns.
"""

from __future__ import annotations

import dns.flags
import dns.rcode
import dns.rdatatype

from .dig import run_dig
from .unbound import (
    BIG_TXT,
    CHAIN,
    MANY,
    MANY_COUNT,
    MID,
    MID_COUNT,
    NODATA,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    SOA_SERIAL,
    WWW,
    WWW_A,
    WWW_AAAA,
    UnboundProcess,
)
from .wire import ask_tcp, ask_udp, make_query


def test_unbound_answers_a_and_aaaa(unbound: UnboundProcess, dig: str) -> None:
    """www.test. has one A and one AAAA record, as dig and dnspython both read them."""
    host, port = unbound.address
    a = run_dig(dig, host, port, WWW, "A")
    aaaa = run_dig(dig, host, port, WWW, "AAAA")
    assert (a.status, [r.to_text() for rrset in a.answer for r in rrset]) == ("NOERROR", [WWW_A])
    assert [r.to_text() for rrset in aaaa.answer for r in rrset] == [WWW_AAAA]
    response = ask_udp(make_query(WWW, "A"), unbound.address)
    assert response.answer[0][0].to_text() == WWW_A


def test_unbound_gives_nodata_and_nxdomain_with_soa(unbound: UnboundProcess, dig: str) -> None:
    """NODATA and NXDOMAIN answers carry the zone's SOA in the authority section."""
    host, port = unbound.address
    nodata = run_dig(dig, host, port, NODATA, "AAAA")
    nxdomain = run_dig(dig, host, port, NXDOMAIN, "A")
    for result, status in ((nodata, "NOERROR"), (nxdomain, "NXDOMAIN")):
        assert result.status == status
        assert result.answer == ()
        assert [r.rdtype for r in result.authority] == [dns.rdatatype.SOA]
        assert result.authority[0][0].serial == SOA_SERIAL


def test_unbound_gives_refused_and_servfail(unbound: UnboundProcess, dig: str) -> None:
    """refused.test. answers REFUSED and servfail.invalid. SERVFAIL, both at once."""
    host, port = unbound.address
    assert run_dig(dig, host, port, REFUSED, "A").status == "REFUSED"
    assert run_dig(dig, host, port, SERVFAIL, "A").status == "SERVFAIL"


def test_unbound_big_answers_exceed_the_udp_limits(unbound: UnboundProcess) -> None:
    """many/bigtxt/chain exceed 1232 bytes, mid is between 512 and 1232 (over TCP, in full)."""
    sizes = {}
    for name, rdtype in ((MANY, "A"), (BIG_TXT, "TXT"), (CHAIN, "A"), (MID, "A")):
        response = ask_tcp(make_query(name, rdtype, edns=0), unbound.address)
        sizes[name] = len(response.to_wire())
        assert not response.flags & dns.flags.TC
    assert min(sizes[MANY], sizes[BIG_TXT], sizes[CHAIN]) > 1232
    assert 512 < sizes[MID] < 1232
    chain = ask_tcp(make_query(CHAIN, "A"), unbound.address)
    assert [r.rdtype for r in chain.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert len(chain.answer[1]) == MANY_COUNT
    mid = ask_tcp(make_query(MID, "A"), unbound.address)
    assert len(mid.answer[0]) == MID_COUNT


def test_unbound_truncates_over_udp(unbound: UnboundProcess) -> None:
    """Unbound answers many.test. over UDP with TC set, so the forwarder must retry over TCP."""
    response = ask_udp(make_query(MANY, "A", edns=0, payload=1232), unbound.address)
    assert response.flags & dns.flags.TC
    assert response.rcode() == dns.rcode.NOERROR
