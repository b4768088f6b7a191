"""Big answers: truncated over UDP at whole RRsets with TC set, never over TCP.

The stock server never truncates (a 3 kB reply goes out over UDP with TC clear), and
`Message.encode(maxSize)` cuts inside a record while keeping the full counts; the strict
parse and the size checks here catch both.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from .dig import run_dig
from .server import MispDnsProcess
from .unbound import BIG_TXT, CHAIN, CHAIN_MID, MANY, MANY_COUNT, MID, MID_COUNT
from .wire import ask_tcp, make_query, parse, rrsets_by_key, udp_exchange

_OVER_1232 = [(MANY, "A"), (BIG_TXT, "TXT"), (CHAIN, "A")]
_OVER_512 = [*_OVER_1232, (MID, "A"), (CHAIN_MID, "A")]


def _full(server: MispDnsProcess, name: str, rdtype: str) -> dns.message.Message:
    response = ask_tcp(make_query(name, rdtype), server.address)
    assert not response.flags & dns.flags.TC
    return response


def _assert_whole_rrsets(truncated: dns.message.Message, full: dns.message.Message) -> None:
    """Every RRset left in the truncated answer is complete (same records as in full)."""
    complete = rrsets_by_key(full.answer + full.authority + full.additional)
    for rrset in truncated.answer + truncated.authority + truncated.additional:
        key = (rrset.name, rrset.rdclass, rrset.rdtype)
        assert key in complete, f"{rrset.name} {rrset.rdtype!r} is not in the full answer"
        assert set(rrset) == set(complete[key]), f"{rrset.name} was cut inside its RRset"


@pytest.mark.parametrize(("name", "rdtype"), _OVER_512)
def test_udp_answer_over_512_without_edns_is_truncated_at_whole_rrsets(
    server: MispDnsProcess, name: str, rdtype: str
) -> None:
    """Without EDNS an answer over 512 bytes comes back in at most 512 bytes, TC set,
    a valid message holding only whole RRsets, with no OPT."""
    full = _full(server, name, rdtype)
    reply = udp_exchange(make_query(name, rdtype, qid=0x7001).to_wire(), server.address)
    assert reply is not None
    assert len(reply) <= 512, f"{len(reply)} bytes over UDP to a client without EDNS"
    response = parse(reply)
    assert response.flags & dns.flags.TC
    assert response.id == 0x7001
    assert response.rcode() == dns.rcode.NOERROR
    assert response.edns == -1
    _assert_whole_rrsets(response, full)


@pytest.mark.parametrize(("name", "rdtype"), _OVER_1232)
def test_udp_answer_over_1232_with_edns_is_truncated_at_whole_rrsets(
    server: MispDnsProcess, name: str, rdtype: str
) -> None:
    """With EDNS 1232 an answer over 1232 bytes comes back in at most 1232 bytes, TC set,
    still carrying its OPT, holding only whole RRsets."""
    full = _full(server, name, rdtype)
    query = make_query(name, rdtype, edns=0, payload=1232, qid=0x7002)
    reply = udp_exchange(query.to_wire(), server.address)
    assert reply is not None
    assert len(reply) <= 1232
    response = parse(reply)
    assert response.flags & dns.flags.TC
    assert response.edns == 0
    _assert_whole_rrsets(response, full)


def test_answer_that_fits_the_clients_size_is_not_truncated(server: MispDnsProcess) -> None:
    """An answer of about 670 bytes to a client offering 1232 arrives whole over UDP."""
    query = make_query(MID, "A", edns=0, payload=1232)
    reply = udp_exchange(query.to_wire(), server.address)
    assert reply is not None
    response = parse(reply)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == MID_COUNT


@pytest.mark.parametrize(("name", "rdtype"), _OVER_1232)
def test_tcp_never_truncates(server: MispDnsProcess, name: str, rdtype: str) -> None:
    """Over TCP the whole answer comes back, TC clear, even without EDNS (the forwarder had to
    fetch it from Unbound over TCP, since Unbound truncates it over UDP)."""
    response = ask_tcp(make_query(name, rdtype), server.address)
    assert not response.flags & dns.flags.TC
    assert response.rcode() == dns.rcode.NOERROR
    assert len(response.to_wire()) > 1232
    if name in (MANY, CHAIN):
        a_records = [r for r in response.answer if r.rdtype == dns.rdatatype.A]
        assert len(a_records[0]) == MANY_COUNT


def test_dig_sees_truncation_over_udp_and_the_full_answer_over_tcp(
    server: MispDnsProcess, dig: str
) -> None:
    """dig without EDNS sees TC over UDP; `dig +tcp` gets all records; plain dig (EDNS 1232)
    falls back to TCP by itself and gets them too."""
    host, port = server.address
    udp = run_dig(dig, host, port, MANY, "A", ["+noedns", "+ignore", "+notcp"])
    assert "tc" in udp.flags
    assert udp.size <= 512
    tcp = run_dig(dig, host, port, MANY, "A", ["+tcp", "+noedns"])
    assert "tc" not in tcp.flags
    assert tcp.answer_records == MANY_COUNT
    fallback = run_dig(dig, host, port, MANY, "A", ["+bufsize=1232"])
    assert fallback.retried_tcp
    assert fallback.answer_records == MANY_COUNT
    # The same exchange, parsed strictly.
    response = ask_tcp(make_query(MANY, "A"), server.address)
    assert len(response.answer[0]) == MANY_COUNT
