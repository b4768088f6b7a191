"""Wire checks and response encoding, judged by dnspython as an independent strict parser."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.names import dns as tdns

from misp_dns.dns.packet import assemble, encode_body, read_plain_query
from misp_dns.dns.wire import (
    BADVERS,
    DropPacket,
    RequestError,
    encode_error,
    encode_opt,
    encode_response,
    parse_message,
    presentation_name,
    question_length,
    read_request,
)
from misp_dns.event import Answer


def query_wire(
    name: str | dns.name.Name = "wWw.ExAmple.COM", rdtype: str = "A", **kwargs: object
) -> bytes:
    message = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    return message.to_wire()


def respond(wire: bytes, rcode: int = tdns.OK, **kwargs: object) -> dns.message.Message:
    request = read_request(wire)
    encoded = encode_response(request, rcode, **kwargs)  # type: ignore[arg-type]
    return dns.message.from_wire(encoded)


def a_record(name: bytes, address: str, ttl: int = 300) -> tdns.RRHeader:
    return tdns.RRHeader(name, tdns.A, tdns.IN, ttl, tdns.Record_A(address, ttl))


def test_response_echoes_id_opcode_rd_and_question_case() -> None:
    """A client using 0x20 case randomisation gets its question back byte for byte."""
    query = dns.message.make_query("wWw.ExAmple.COM", "AAAA", use_edns=False)
    query.id = 4242
    response = respond(query.to_wire())
    assert response.id == 4242
    assert response.flags & dns.flags.QR and response.flags & dns.flags.RA
    assert response.flags & dns.flags.RD
    assert not response.flags & dns.flags.AA
    assert response.question[0].name.to_text() == "wWw.ExAmple.COM."
    assert response.question[0].rdtype == dns.rdatatype.AAAA


def test_rd_clear_is_copied() -> None:
    """A query without RD gets a response without RD."""
    query = dns.message.make_query("example.com", "A")
    query.flags &= ~dns.flags.RD
    assert not respond(query.to_wire()).flags & dns.flags.RD


def test_opt_answered_with_our_size_and_do_echoed() -> None:
    """An EDNS query gets OPT back with UDP size 1232 and its DO bit."""
    response = respond(query_wire(use_edns=0, payload=4096, want_dnssec=True))
    assert response.edns == 0
    assert response.payload == 1232
    assert response.ednsflags & dns.flags.DO


def test_no_opt_without_edns() -> None:
    """A plain query gets no OPT record (the stock server never sent one either way)."""
    response = respond(query_wire(use_edns=False))
    assert response.edns == -1


def test_edns_version_one_is_badvers() -> None:
    """EDNS version 1 is answered BADVERS with a version-0 OPT (stock Twisted says NOERROR)."""
    wire = query_wire(use_edns=1)
    with pytest.raises(RequestError) as caught:
        read_request(wire)
    problem = caught.value
    assert problem.rcode == BADVERS
    response = dns.message.from_wire(encode_error(problem))
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0


def test_two_opt_records_are_formerr() -> None:
    """RFC 6891: a query with more than one OPT is a format error."""
    wire = query_wire(use_edns=0)
    opt = encode_opt(1232)
    arcount = struct.unpack_from("!H", wire, 10)[0] + 1
    doubled = wire[:10] + struct.pack("!H", arcount) + wire[12:] + opt
    with pytest.raises(RequestError) as caught:
        read_request(doubled)
    assert caught.value.rcode == tdns.EFORMAT


@pytest.mark.parametrize("qdcount", [0, 2])
def test_question_count_other_than_one_is_formerr(qdcount: int) -> None:
    """A query with no question or two questions gets FORMERR (stock Twisted answers it)."""
    wire = query_wire(use_edns=False)
    header, question = wire[:12], wire[12:]
    body = question * qdcount
    packet = header[:4] + struct.pack("!H", qdcount) + header[6:] + body
    with pytest.raises(RequestError) as caught:
        read_request(packet)
    assert caught.value.rcode == tdns.EFORMAT
    response = dns.message.from_wire(encode_error(caught.value))
    assert response.rcode() == dns.rcode.FORMERR
    assert response.id == struct.unpack_from("!H", wire)[0]


@pytest.mark.parametrize("cut", [13, 20, 27])
def test_malformed_with_readable_header_is_formerr(cut: int) -> None:
    """A message cut short, whose header still reads, is answered FORMERR with its ID."""
    wire = query_wire(use_edns=0)
    with pytest.raises(RequestError) as caught:
        read_request(wire[:cut])
    assert caught.value.rcode == tdns.EFORMAT
    assert caught.value.ident == struct.unpack_from("!H", wire)[0]


def test_counts_claiming_more_records_than_present_is_formerr() -> None:
    """A header that promises an answer record that is not there is malformed."""
    wire = bytearray(query_wire(use_edns=False))
    wire[7] = 1  # ANCOUNT = 1, with no record following
    with pytest.raises(RequestError):
        read_request(bytes(wire))


@pytest.mark.parametrize("data", [b"", b"\x00" * 5, b"\x12\x34" + b"\x00" * 9])
def test_unreadable_packet_is_dropped(data: bytes) -> None:
    """Fewer bytes than a header: no answer at all."""
    with pytest.raises(DropPacket):
        read_request(data)


def test_response_packet_is_dropped() -> None:
    """A packet with QR=1 is never answered (stock Twisted answers it, a reflection loop)."""
    query = dns.message.make_query("example.com", "A")
    response = dns.message.make_response(query)
    with pytest.raises(DropPacket):
        read_request(response.to_wire())


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.STATUS, dns.opcode.UPDATE])
def test_other_opcodes_get_notimp_response(opcode: int) -> None:
    """NOTIFY, STATUS and UPDATE get NOTIMP: a real response with QR set, not an echo."""
    query = dns.message.make_query("example.com", "SOA", use_edns=False)
    query.set_opcode(opcode)
    with pytest.raises(RequestError) as caught:
        read_request(query.to_wire())
    problem = caught.value
    response = dns.message.from_wire(encode_error(problem))
    assert response.rcode() == dns.rcode.NOTIMP
    assert response.opcode() == opcode
    assert response.flags & dns.flags.QR
    assert response.id == query.id


def test_ede_option_carries_code_and_text() -> None:
    """Extended DNS Errors reach the client as RFC 8914 options with code and text."""
    response = respond(
        query_wire(use_edns=0), tdns.ENAME, ede=[(15, "source=misp-connector;domain=x.test")]
    )
    (option,) = response.options
    assert isinstance(option, dns.edns.EDEOption)
    assert option.code == dns.edns.EDECode.BLOCKED
    assert option.text == "source=misp-connector;domain=x.test"


def test_ede_is_not_sent_without_edns() -> None:
    """A client that sent no OPT gets none, so no EDE either."""
    response = respond(query_wire(use_edns=False), tdns.EREFUSED, ede=[(18, "")])
    assert response.edns == -1
    assert response.rcode() == dns.rcode.REFUSED


def test_udp_answer_over_512_is_truncated_to_a_valid_message() -> None:
    """Without EDNS a 120-record answer is cut at the RRset, TC set, counts consistent."""
    records = [a_record(b"big.test", f"10.0.0.{i}") for i in range(120)]
    request = read_request(query_wire("big.test", use_edns=False))
    wire = encode_response(request, tdns.OK, records, max_size=512)
    assert len(wire) <= 512
    response = dns.message.from_wire(wire)
    assert response.flags & dns.flags.TC
    assert response.answer == []


def test_truncation_keeps_whole_rrsets_that_fit() -> None:
    """Of two RRsets, the small first one stays whole and the one that does not fit goes."""
    small = [a_record(b"a.test", "192.0.2.1")]
    large = [a_record(b"b.test", f"10.0.1.{i}") for i in range(100)]
    request = read_request(query_wire("a.test", use_edns=0))
    wire = encode_response(request, tdns.OK, small + large, max_size=1232)
    response = dns.message.from_wire(wire)
    assert response.flags & dns.flags.TC
    assert [rrset.name.to_text() for rrset in response.answer] == ["a.test."]
    assert response.edns == 0


def test_dropping_only_additional_data_does_not_set_tc() -> None:
    """RFC 2181 section 9: additional data that does not fit is left out without TC."""
    answer = [a_record(b"a.test", "192.0.2.1")]
    extra = [a_record(b"glue.test", f"10.0.2.{i}") for i in range(100)]
    request = read_request(query_wire("a.test", use_edns=False))
    wire = encode_response(request, tdns.OK, answer, (), extra, max_size=512)
    response = dns.message.from_wire(wire)
    assert not response.flags & dns.flags.TC
    assert len(response.answer) == 1
    assert response.additional == []


def test_tcp_size_never_truncates() -> None:
    """Over TCP the same 120-record answer goes out whole."""
    records = [a_record(b"big.test", f"10.0.0.{i}") for i in range(120)]
    request = read_request(query_wire("big.test", use_edns=False))
    response = dns.message.from_wire(encode_response(request, tdns.OK, records))
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 120


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12),
    limit=st.sampled_from([512, 1232]),
    edns=st.booleans(),
)
def test_any_truncated_answer_is_valid_and_fits(sizes: list[int], limit: int, edns: bool) -> None:
    """Whatever the RRsets, a UDP response fits the limit, parses, and keeps whole RRsets."""
    records = [
        tdns.RRHeader(
            f"n{index}.test".encode(),
            tdns.TXT,
            tdns.IN,
            60,
            tdns.Record_TXT(b"x" * 50, str(serial).encode(), ttl=60),
        )
        for index, size in enumerate(sizes)
        for serial in range(size)
    ]
    request = read_request(query_wire("n0.test", "TXT", use_edns=0 if edns else False))
    wire = encode_response(request, tdns.OK, records, max_size=limit)
    assert len(wire) <= limit
    response = dns.message.from_wire(wire)
    kept = {rrset.name.to_text(): len(rrset) for rrset in response.answer}
    for index, size in enumerate(sizes):
        assert kept.get(f"n{index}.test.", size) == size
    truncated = len(kept) < len(sizes)
    assert bool(response.flags & dns.flags.TC) == truncated


def full_path(question: str, qtype: str, records: list[tdns.RRHeader]) -> bytes:
    """The response as the full path writes it (forwarded answers)."""
    request = read_request(query_wire(question, qtype, use_edns=False))
    return encode_response(request, tdns.OK, records)


def cache_path(question: str, qtype: str, records: list[tdns.RRHeader]) -> bytes:
    """The response as a cache hit serves it (pre-encoded body, assembled per query)."""
    plain = read_plain_query(query_wire(question, qtype, use_edns=False))
    assert plain is not None
    body = encode_body(Answer(tdns.OK, answers=records), plain.key_name, plain.qtype, plain.qclass)
    return assemble(plain.ident, plain.flags, plain.question, body, 0, None)


BOTH_PATHS = pytest.mark.parametrize("encode", [full_path, cache_path])


@BOTH_PATHS
def test_dname_answer_parses_strictly(encode: Any) -> None:
    """A DNAME answer reaches strict clients: its target is not compressed (RFC 6672 2.5)."""
    dname = tdns.RRHeader(
        b"x.example.com", tdns.DNAME, tdns.IN, 60, tdns.Record_DNAME(b"y.example.com", 60)
    )
    cname = tdns.RRHeader(
        b"a.x.example.com", tdns.CNAME, tdns.IN, 60, tdns.Record_CNAME(b"a.y.example.com", 60)
    )
    response = dns.message.from_wire(encode("a.x.example.com", "A", [dname, cname]))
    assert [rrset.rdtype for rrset in response.answer] == [dns.rdatatype.DNAME, dns.rdatatype.CNAME]
    assert response.answer[0][0].target.to_text() == "y.example.com."


NAMED_RDATA = {
    # RFC 1035 types: names in RDATA compressed.
    "NS": (tdns.Record_NS(b"example.com"), True),
    "CNAME": (tdns.Record_CNAME(b"example.com"), True),
    "PTR": (tdns.Record_PTR(b"example.com"), True),
    "MB": (tdns.Record_MB(b"example.com"), True),
    "MG": (tdns.Record_MG(b"example.com"), True),
    "MR": (tdns.Record_MR(b"example.com"), True),
    "MX": (tdns.Record_MX(10, b"example.com"), True),
    "MINFO": (tdns.Record_MINFO(b"example.com", b"example.com"), True),
    "SOA": (tdns.Record_SOA(b"example.com", b"example.com"), True),
    # Every later type: never (RFC 3597 section 4).
    "DNAME": (tdns.Record_DNAME(b"example.com"), False),
    "SRV": (tdns.Record_SRV(1, 2, 3, b"example.com"), False),
    "NAPTR": (tdns.Record_NAPTR(1, 2, b"S", b"SIP+D2U", b"", b"example.com"), False),
    "AFSDB": (tdns.Record_AFSDB(1, b"example.com"), False),
    "RP": (tdns.Record_RP(b"example.com", b"example.com"), False),
}


@BOTH_PATHS
@pytest.mark.parametrize("type_name", sorted(NAMED_RDATA))
def test_names_in_rdata_are_compressed_only_in_rfc1035_types(encode: Any, type_name: str) -> None:
    """Both paths compress names inside RDATA of RFC 1035 types only (RFC 3597 section 4)."""
    payload, compressible = NAMED_RDATA[type_name]
    rtype = dns.rdatatype.from_text(type_name)
    record = tdns.RRHeader(b"www.example.com", rtype, tdns.IN, 60, payload)
    wire = encode("www.example.com", type_name, [record])
    plain = BytesIO()
    payload.encode(plain, None)
    # The owner is a pointer to the question: 2 bytes, then type, class, TTL, RDLENGTH.
    start = 12 + len(b"\x03www\x07example\x03com\x00") + 4 + 2 + 10
    (rdlength,) = struct.unpack_from("!H", wire, start - 2)
    rdata = wire[start : start + rdlength]
    if compressible:
        assert len(rdata) < len(plain.getvalue())
    else:
        assert rdata == plain.getvalue()


@BOTH_PATHS
def test_names_written_past_16k_are_not_pointed_to(encode: Any) -> None:
    """A TCP answer over 16 KB stays valid: no pointer aims past a 14-bit offset."""
    names = [b"mail%d.longer-label-for-size.test" % i for i in range(1000)]
    exchanges = [
        tdns.RRHeader(b"big.test", tdns.MX, tdns.IN, 60, tdns.Record_MX(i, name))
        for i, name in enumerate(names)
    ]
    addresses = [
        tdns.RRHeader(name, tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.1", 60)) for name in names
    ]
    wire = encode("big.test", "MX", exchanges + addresses)
    assert len(wire) > 0x4000
    response = dns.message.from_wire(wire)
    owners = {rrset.name.to_text() for rrset in response.answer}
    assert owners == {"big.test."} | {name.decode() + "." for name in names}


DOTTED_LABEL = dns.name.from_text("a\\.b.example")


def test_label_holding_a_dot_is_read_and_echoed_exactly() -> None:
    """`a\\.b.example` (0x2E inside a label, legal on the wire) is read as a question and
    echoed byte for byte, on the full path and from the cache; the upstream's answer is
    written owned by the question's two-label name."""
    request = read_request(query_wire(DOTTED_LABEL, use_edns=False))
    assert request.name == DOTTED_LABEL.to_wire()
    upstream = dns.message.make_response(
        dns.message.from_wire(query_wire(DOTTED_LABEL, use_edns=False))
    )
    upstream.answer.append(dns.rrset.from_text(DOTTED_LABEL, 300, "IN", "A", "192.0.2.9"))
    records = parse_message(upstream.to_wire()).answers
    full = encode_response(request, tdns.OK, records)
    body = encode_body(Answer(tdns.OK, answers=records), request.name.lower(), tdns.A, tdns.IN)
    cached = assemble(request.message.id, request.flags, request.question_wire, body, 0, None)
    for wire in (full, cached):
        response = dns.message.from_wire(wire)
        assert response.question[0].name == DOTTED_LABEL
        assert [rrset.name for rrset in response.answer] == [DOTTED_LABEL]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("WwW.Example.COM", "www.example.com"),
        ("a\\.b.example", "a\\.b.example"),
        ("x" * 46 + ".example", "x" * 46 + ".example"),  # a length octet of 0x2E
        (".", ""),
    ],
)
def test_policies_see_names_in_presentation_form(name: str, shown: str) -> None:
    """Policies get the query name lower-cased without the trailing dot; a dot inside a
    label is escaped, so `a\\.b.example` is not mistaken for `a.b.example`."""
    assert presentation_name(dns.name.from_text(name).to_wire()) == shown


# Error answers follow Unbound 1.17.1, seen by querying `unbound -d` on loopback with dig and
# dnspython: for FORMERR and NOTIMP it sends the query back with QR and the RCODE set (RA,
# like the other header bits, as the query had it: clear), every question included; an
# unknown opcode is NOTIMP before anything else is read; BADVERS is a response with RA set.


def with_flags(wire: bytes, opcode: int, *, rd: bool, cd: bool) -> bytes:
    """`wire` with its opcode, RD and CD set as given."""
    return wire[:2] + bytes([opcode << 3 | rd, 0x10 if cd else 0]) + wire[4:]


def two_questions(wire: bytes) -> bytes:
    """The query `wire` (one question, then its OPT if any) asking its question twice."""
    question = wire[12 : 12 + question_length(wire)]
    return wire[:4] + struct.pack("!H", 2) + wire[6:12] + question + wire[12:]


def error_response(wire: bytes) -> tuple[bytes, dns.message.Message]:
    """The error response to `wire`, as bytes and as dnspython reads it."""
    with pytest.raises(RequestError) as caught:
        read_request(wire)
    encoded = encode_error(caught.value)
    return encoded, dns.message.from_wire(encoded)


@pytest.mark.parametrize("opcode", [1, 2, 3, 5, 6, 15])
@pytest.mark.parametrize(("rd", "cd"), [(False, True), (True, False)])
def test_unknown_opcode_is_notimp_as_unbound_answers_it(opcode: int, rd: bool, cd: bool) -> None:
    """NOTIMP as Unbound answers an unknown opcode: QR set, ID, opcode, RD and CD copied,
    RA and AA clear, the question echoed as written (SOA, which dnspython wants for UPDATE)."""
    query = query_wire("wWw.Example.COM", "SOA", use_edns=False)
    wire, response = error_response(with_flags(query, opcode, rd=rd, cd=cd))
    assert response.rcode() == dns.rcode.NOTIMP
    assert response.opcode() == opcode
    assert response.id == struct.unpack_from("!H", query)[0]
    assert response.flags & dns.flags.QR
    assert bool(response.flags & dns.flags.RD) == rd
    assert bool(response.flags & dns.flags.CD) == cd
    assert not response.flags & (dns.flags.RA | dns.flags.AA | dns.flags.TC | dns.flags.AD)
    assert wire[12:] == query[12:]


def test_unknown_opcode_is_notimp_before_the_message_is_read() -> None:
    """Unbound says NOTIMP to an unknown opcode even when the rest of the packet is cut
    short; the response is then the header alone, RA clear."""
    query = with_flags(query_wire(use_edns=0), 6, rd=True, cd=False)
    _wire, response = error_response(query[:20])
    assert response.rcode() == dns.rcode.NOTIMP
    assert not response.flags & dns.flags.RA
    assert response.question == []


def test_two_questions_get_formerr_echoing_both_as_unbound_does() -> None:
    """FORMERR for two questions echoes both, as written, RA clear; with EDNS our OPT."""
    query = two_questions(query_wire("wWw.Example.COM", use_edns=0, want_dnssec=True))
    wire, response = error_response(query)
    assert response.rcode() == dns.rcode.FORMERR
    assert not response.flags & dns.flags.RA
    assert response.flags & dns.flags.RD
    length = 2 * question_length(query)
    assert struct.unpack_from("!H", wire, 4)[0] == 2
    assert wire[12 : 12 + length] == query[12 : 12 + length]
    assert response.edns == 0 and response.payload == 1232
    assert response.ednsflags & dns.flags.DO


@pytest.mark.parametrize("cut", [13, 20, 27])
def test_malformed_query_gets_formerr_without_ra(cut: int) -> None:
    """A query cut short gets FORMERR with RA clear, as from Unbound, and only the header
    (Unbound sends the cut bytes back under their counts, which strict parsers reject)."""
    _wire, response = error_response(query_wire(use_edns=0)[:cut])
    assert response.rcode() == dns.rcode.FORMERR
    assert not response.flags & dns.flags.RA
    assert response.question == []


def test_badvers_sets_ra_as_unbound_does() -> None:
    """BADVERS, unlike FORMERR and NOTIMP, is a response with RA set (Unbound sets it)."""
    _wire, response = error_response(query_wire(use_edns=1))
    assert response.rcode() == dns.rcode.BADVERS
    assert response.flags & dns.flags.RA


def rrsig(owner: bytes, covered: int, signature_size: int) -> tdns.RRHeader:
    """An RRSIG record (as Twisted holds it: raw RDATA) over `owner`'s RRset of `covered`."""
    fixed = struct.pack("!HBBIIIH", covered, 13, owner.count(b".") + 1, 300, 2, 1, 4242)
    rdata = fixed + dns.name.from_text("test").to_wire() + b"\x5a" * signature_size
    return tdns.RRHeader(owner, 46, tdns.IN, 300, tdns.UnknownRecord(rdata, 300))


def ns_records(count: int) -> list[tdns.RRHeader]:
    """An NS RRset of `count` long names (60 octets each, whatever the compression)."""
    return [
        tdns.RRHeader(
            b"test", tdns.NS, tdns.IN, 300, tdns.Record_NS(b"ns%d%s.test" % (i, b"n" * 50), 300)
        )
        for i in range(count)
    ]


def test_authority_of_a_positive_answer_that_does_not_fit_goes_without_tc() -> None:
    """RFC 2181 section 9: the NS records of a positive answer are extra information; when
    they do not fit they are left out, and TC stays clear (Unbound, with its default
    minimal responses, sends no authority with a positive answer at all)."""
    request = read_request(query_wire("a.test", use_edns=False))
    answer = [a_record(b"a.test", "192.0.2.1")]
    wire = encode_response(request, tdns.OK, answer, ns_records(10), max_size=512)
    response = dns.message.from_wire(wire)
    assert not response.flags & dns.flags.TC
    assert len(response.answer) == 1
    assert response.authority == []


def test_negative_answer_whose_soa_does_not_fit_sets_tc() -> None:
    """The SOA of NXDOMAIN is what makes it cacheable (RFC 2308 section 5): when it does
    not fit, TC is set, as Unbound sets it (seen on an NXDOMAIN whose SOA passed 512)."""
    long_name = b".".join([b"b" * 63] * 3) + b".test"
    soa = tdns.Record_SOA(long_name, long_name.replace(b"b", b"c"), 1, ttl=300)
    authority = [tdns.RRHeader(b"test", tdns.SOA, tdns.IN, 300, soa)]
    question = ".".join(["a" * 63] * 3) + ".test"
    request = read_request(query_wire(question, use_edns=False))
    wire = encode_response(request, tdns.ENAME, (), authority, max_size=512)
    response = dns.message.from_wire(wire)
    assert response.flags & dns.flags.TC
    assert response.authority == []


def test_glue_whose_signature_does_not_fit_goes_with_it() -> None:
    """Under DO, an RRset and its RRSIG are kept or left out together: glue whose
    signature does not fit goes too, rather than reach the client unsigned (no TC: it is
    additional data)."""
    request = read_request(query_wire("a.test", "NS", use_edns=0, want_dnssec=True))
    glue = [a_record(b"ns.test", "192.0.2.53")]
    wire = encode_response(
        request,
        tdns.OK,
        [tdns.RRHeader(b"a.test", tdns.NS, tdns.IN, 300, tdns.Record_NS(b"ns.test", 300))],
        (),
        [*glue, rrsig(b"ns.test", tdns.A, 1180)],
        max_size=1232,
    )
    response = dns.message.from_wire(wire)
    assert not response.flags & dns.flags.TC
    assert len(response.answer) == 1
    assert response.additional == []


def test_answer_whose_signature_does_not_fit_goes_with_it_and_sets_tc() -> None:
    """An answer RRset whose RRSIG does not fit is left out with it, and TC is set."""
    request = read_request(query_wire("a.test", use_edns=0, want_dnssec=True))
    answer = [a_record(b"a.test", "192.0.2.1"), rrsig(b"a.test", tdns.A, 1200)]
    wire = encode_response(request, tdns.OK, answer, max_size=1232)
    response = dns.message.from_wire(wire)
    assert response.flags & dns.flags.TC
    assert response.answer == []
