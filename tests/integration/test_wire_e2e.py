"""Wire behaviour of the twistd-started server: header, EDNS, FORMERR, drops and NOTIMP.

Every response is parsed strictly with `dns.message.from_wire`. Each test names the stock
`twisted.names.server.DNSServerFactory` defect it would catch.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .abuse_mutations import parse_strictly
from .dig import run_dig
from .server import MispDnsProcess
from .unbound import WWW, WWW_A
from .wire import ask_udp, make_query, parse, udp_exchange

#: How long a test waits before it concludes that no answer is coming.
SILENCE = 0.6
_OPT = b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, 1232, 0, 0)


def _question_wire(wire: bytes) -> bytes:
    """The question section of a one-question message (never compressed)."""
    end = 12
    while wire[end]:
        end += wire[end] + 1
    return wire[12 : end + 5]


def _assert_alive(server: MispDnsProcess) -> None:
    response = ask_udp(make_query(WWW, "A"), server.address)
    assert response.rcode() == dns.rcode.NOERROR


def test_response_copies_id_opcode_rd_and_question_with_its_case(server: MispDnsProcess) -> None:
    """ID, opcode, RD and the question come back exactly as asked (0x20 case kept, even from
    the cache); QR and RA are set."""
    ask_udp(make_query(WWW.lower(), "A"), server.address)  # the next answer comes from cache
    query = make_query("wWw.TeSt.", "A", qid=0xBEEF)
    wire = query.to_wire()
    reply = udp_exchange(wire, server.address)
    assert reply is not None
    response = parse(reply)
    assert response.id == 0xBEEF
    assert response.opcode() == dns.opcode.QUERY
    assert response.flags & dns.flags.QR
    assert response.flags & dns.flags.RD
    assert response.flags & dns.flags.RA
    assert response.question[0].name.to_text() == "wWw.TeSt."
    assert _question_wire(reply) == _question_wire(wire)
    assert response.rcode() == dns.rcode.NOERROR
    assert [rdata.to_text() for rdata in response.answer[0]] == [WWW_A]


def test_rd_clear_is_copied(server: MispDnsProcess) -> None:
    """A query without RD gets a response without RD (the flag is copied, not forced)."""
    response = ask_udp(make_query(WWW, "A", rd=False, qid=4242), server.address)
    assert response.id == 4242
    assert response.flags & dns.flags.QR
    assert not response.flags & dns.flags.RD


def test_dig_reads_flags_edns_and_answer(server: MispDnsProcess, dig: str) -> None:
    """dig (BIND's parser) sees qr/rd/ra, EDNS 0 with udp 1232 and DO echoed, and the answer;
    with +norecurse the rd flag stays clear."""
    host, port = server.address
    result = run_dig(dig, host, port, WWW, "A", ["+dnssec", "+bufsize=4096"])
    assert result.status == "NOERROR"
    assert {"qr", "rd", "ra"} <= result.flags
    assert (result.edns_version, result.edns_udp) == (0, 1232)
    assert "do" in result.edns_flags
    assert [r.to_text() for rrset in result.answer for r in rrset] == [WWW_A]
    norecurse = run_dig(dig, host, port, WWW, "A", ["+norecurse", "+noedns"])
    assert "rd" not in norecurse.flags
    assert "qr" in norecurse.flags
    assert norecurse.edns_version is None
    # The same questions, parsed strictly.
    response = ask_udp(make_query(WWW, "A", edns=0, payload=4096, dnssec_ok=True), server.address)
    assert response.ednsflags & dns.flags.DO


@pytest.mark.parametrize("dnssec_ok", [False, True])
def test_edns_query_gets_opt_with_our_payload_and_do_echoed(
    server: MispDnsProcess, dnssec_ok: bool
) -> None:
    """A query with OPT gets OPT back: version 0, UDP size 1232, DO as the query had it
    (stock: no OPT, DO dropped)."""
    query = make_query(WWW, "A", edns=0, payload=4096, dnssec_ok=dnssec_ok)
    response = ask_udp(query, server.address)
    assert response.edns == 0
    assert response.payload == 1232
    assert bool(response.ednsflags & dns.flags.DO) is dnssec_ok
    assert response.rcode() == dns.rcode.NOERROR
    assert [rdata.to_text() for rdata in response.answer[0]] == [WWW_A]


def test_query_without_edns_gets_no_opt(server: MispDnsProcess) -> None:
    """A query without OPT gets a response without OPT."""
    response = ask_udp(make_query(WWW, "A"), server.address)
    assert response.edns == -1
    assert response.additional == []
    assert response.rcode() == dns.rcode.NOERROR


def test_edns_version_1_gets_badvers(server: MispDnsProcess) -> None:
    """EDNS version 1 gets BADVERS with a version-0 OPT and no answer (stock: NOERROR)."""
    query = make_query(WWW, "A", edns=1, qid=777)
    response = ask_udp(query, server.address)
    assert response.id == 777
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0
    assert response.answer == []


def test_two_opt_records_get_formerr(server: MispDnsProcess) -> None:
    """A query with two OPT records gets FORMERR."""
    wire = bytearray(make_query(WWW, "A", edns=0, qid=0x1234).to_wire())
    wire[10:12] = struct.pack("!H", 2)
    reply = udp_exchange(bytes(wire) + _OPT, server.address)
    assert reply is not None, "no answer to a query with two OPT records"
    response = parse(reply)
    assert response.id == 0x1234
    assert response.flags & dns.flags.QR
    assert response.rcode() == dns.rcode.FORMERR
    assert response.answer == []


@pytest.mark.parametrize("qdcount", [0, 2])
def test_question_count_other_than_one_gets_formerr(server: MispDnsProcess, qdcount: int) -> None:
    """Zero or two questions get FORMERR (stock: answers multi-question messages)."""
    header = struct.pack("!HHHHHH", 0x2222, dns.flags.RD, qdcount, 0, 0, 0)
    question = make_query(WWW, "A").to_wire()[12:]
    reply = udp_exchange(header + question * qdcount, server.address)
    assert reply is not None, f"no answer to a query with {qdcount} questions"
    response = parse(reply)
    assert response.id == 0x2222
    assert response.flags & dns.flags.QR
    assert response.rcode() == dns.rcode.FORMERR
    assert response.answer == []


_MALFORMED = {
    "question missing": struct.pack("!HHHHHH", 0x3333, 0x0100, 1, 0, 0, 0),
    "label runs past the end": struct.pack("!HHHHHH", 0x3333, 0x0100, 1, 0, 0, 0) + b"\x3fabc",
    "compression loop": struct.pack("!HHHHHH", 0x3333, 0x0100, 1, 0, 0, 0)
    + b"\xc0\x0c\x00\x01\x00\x01",
    "type and class cut": struct.pack("!HHHHHH", 0x3333, 0x0100, 1, 0, 0, 0) + b"\x03www\x00\x00",
    "additional count too high": make_query(WWW, "A", qid=0x3333).to_wire()[:10]
    + b"\x00\x03"
    + make_query(WWW, "A").to_wire()[12:],
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_malformed_message_with_readable_header_gets_formerr(
    server: MispDnsProcess, case: str
) -> None:
    """A malformed message whose header is readable gets FORMERR with its ID (stock: dropped)."""
    reply = udp_exchange(_MALFORMED[case], server.address)
    assert reply is not None, f"no answer to a malformed query ({case})"
    response = parse(reply)
    assert response.id == 0x3333
    assert response.flags & dns.flags.QR
    assert response.rcode() == dns.rcode.FORMERR
    assert response.answer == []


@pytest.mark.parametrize("size", [0, 1, 11])
def test_packets_shorter_than_a_header_get_no_answer(server: MispDnsProcess, size: int) -> None:
    """Fewer than 12 bytes: dropped without an answer, and the server keeps serving."""
    assert udp_exchange(b"\x12" * size, server.address, timeout=SILENCE) is None
    _assert_alive(server)


def test_responses_get_no_answer(server: MispDnsProcess) -> None:
    """A packet with QR=1 is dropped (stock: answers responses, enabling reflection loops)."""
    response = dns.message.make_response(make_query(WWW, "A"))
    assert udp_exchange(response.to_wire(), server.address, timeout=SILENCE) is None
    _assert_alive(server)


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.STATUS, dns.opcode.UPDATE])
def test_other_opcodes_get_notimp_not_an_echo(
    server: MispDnsProcess, opcode: dns.opcode.Opcode
) -> None:
    """NOTIFY, STATUS and UPDATE get a real NOTIMP response with the opcode and ID copied and
    none of the request's records (stock: echoes the request back)."""
    query = make_query("test.", "SOA", qid=0x4444)
    query.set_opcode(opcode)
    query.flags &= ~dns.flags.RD
    query.answer.append(
        dns.rrset.from_text("test.", 60, "IN", "SOA", "ns.test. h.test. 9 3600 600 86400 300")
    )
    reply = udp_exchange(query.to_wire(), server.address)
    assert reply is not None, f"no answer to opcode {dns.opcode.to_text(opcode)}"
    response = parse(reply)
    assert response.id == 0x4444
    assert response.flags & dns.flags.QR
    assert response.opcode() == opcode
    assert response.rcode() == dns.rcode.NOTIMP
    assert response.answer == []
    assert response.authority == []


def test_axfr_over_udp_is_not_served(server: MispDnsProcess) -> None:
    """AXFR asked over UDP gets an error and no records (stock: serves a zone over UDP)."""
    response = ask_udp(make_query("test.", "AXFR", qid=0x5555), server.address)
    assert response.id == 0x5555
    assert response.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTIMP, dns.rcode.FORMERR)
    assert response.answer == []


def _valid_query_wire() -> bytes:
    return make_query(WWW, "A", edns=0, qid=0x6666).to_wire()


_any_packet = st.one_of(
    st.binary(min_size=12, max_size=300),
    st.lists(
        st.tuples(st.integers(0, len(_valid_query_wire()) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ).map(lambda edits: _edit(_valid_query_wire(), edits)),
)


def _edit(wire: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(wire)
    for index, value in edits:
        data[index] = value
    return bytes(data)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packet=_any_packet)
@example(packet=bytes.fromhex("00002800000100000000000101000000000000010004") + bytes(15)).via(
    "an UPDATE whose zone has type 0, echoed in its NOTIMP"
)
def test_any_packet_with_a_readable_query_header_gets_a_valid_response(
    server: MispDnsProcess, packet: bytes
) -> None:
    """Any packet of 12+ bytes with QR clear gets exactly one strictly valid response carrying
    its ID and opcode, with QR set (an UPDATE's NOTIMP echoes a zone section of any type,
    which dnspython would refuse in an UPDATE: `parse_strictly` reads it as a question)."""
    packet = bytes([packet[0], packet[1], packet[2] & 0x7F]) + packet[3:]
    reply = udp_exchange(packet, server.address, timeout=3.0)
    assert reply is not None, f"no answer to {packet.hex()}"
    response = parse_strictly(reply)
    assert response.id == struct.unpack("!H", packet[:2])[0]
    assert response.flags & dns.flags.QR
    assert (reply[2] >> 3) & 0xF == (packet[2] >> 3) & 0xF
