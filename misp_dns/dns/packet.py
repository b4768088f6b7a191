"""Answers as pre-encoded wire bytes, and the struct-level reader of plain queries.

Most queries a resolver sees are plain: one question, maybe an OPT record, nothing else. For
those, decoding into `twisted.names` objects and encoding the answer again costs more than
everything else together. This module holds the cheaper way, used by both the fast path and
the full path so that they cannot disagree:

- `read_plain_query` reads the header, the question and an optional OPT with `struct`, and
  returns None for anything else (the full path then takes it, with every check there is).
- `PacketBody` (defined in `misp_dns.event`) is an answer's sections encoded once (against
  the lower-case question), with where each TTL sits, so a hit only patches TTLs;
  `assemble` puts the client's header bits, its question exactly as written (0x20 case
  kept) and our OPT around it.
- `blocked_body` is the synthesized blocked answer in the same form.
"""

from __future__ import annotations

import functools
import struct

from twisted.names import dns

from misp_dns.dns.wire import (
    EDNS_UDP_SIZE,
    OPT,
    OPTION_EDE,
    PLAIN_UDP_SIZE,
    encode_opt,
    encode_sections,
    presentation_name,
)
from misp_dns.event import Answer, PacketBody
from misp_dns.interfaces import ANSWER_LOCAL_DATA, ANSWER_NODATA, Decision

__all__ = [
    "PacketBody",
    "PlainQuery",
    "assemble",
    "blocked_body",
    "chaos_txt_body",
    "empty_body",
    "encode_body",
    "minimal_any_body",
    "opt_record",
    "read_plain_query",
]

_HEADER = struct.Struct("!HBBHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
_OPT_FIXED = struct.Struct("!BHHIH")

SOA_SERIAL = 1
SOA_REFRESH = 14400
SOA_RETRY = 3600
SOA_EXPIRE = 604800

# The RR owner "the question's name": a compression pointer to offset 12.
_QUESTION_NAME = b"\xc0\x0c"


class PlainQuery:
    """A query the fast path can answer: one question, at most an OPT, nothing else.

    `key_name` is the question's name in wire format, lower-cased (the cache key); `name`
    gives it as policies see it.
    """

    __slots__ = (
        "dnssec_ok",
        "edns",
        "flags",
        "ident",
        "key_name",
        "qclass",
        "qtype",
        "question",
        "udp_limit",
    )

    def __init__(
        self,
        ident: int,
        flags: int,
        question: bytes,
        qtype: int,
        qclass: int,
        edns: bool,
        udp_limit: int,
        dnssec_ok: bool,
    ) -> None:
        self.ident = ident
        self.flags = flags
        self.question = question
        self.key_name = question[:-4].lower()
        self.qtype = qtype
        self.qclass = qclass
        self.edns = edns
        self.udp_limit = udp_limit
        self.dnssec_ok = dnssec_ok

    @property
    def name(self) -> str:
        """The question's name as `presentation_name` gives it."""
        return presentation_name(self.key_name)


_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"
_MAX_NAME_END = 12 + 255


def read_plain_query(data: bytes) -> PlainQuery | None:
    """The query in `data` if it is plain (see the module docstring), else None."""
    size = len(data)
    # QR=0, opcode QUERY, one question, no answer or authority, at most one OPT.
    if size < 17 or data[2] & 0xF8 or data[4:10] != _ONE_QUESTION or data[10]:
        return None
    arcount = data[11]
    if arcount > 1:
        return None
    offset = 12
    length = data[12]
    while length:
        if length > 63 or data.find(46, offset + 1, offset + 1 + length) >= 0:
            return None  # a pointer, a reserved label type, or a label holding a dot
        offset += length + 1
        if offset >= size:
            return None
        length = data[offset]
    end = offset + 5
    if end > size or end - 4 > _MAX_NAME_END:
        return None
    qtype, qclass = _TYPE_CLASS.unpack_from(data, offset + 1)
    ident = data[0] << 8 | data[1]
    flags = data[2] | data[3] << 8
    if not arcount:
        if end != size:
            return None
        return PlainQuery(ident, flags, data[12:end], qtype, qclass, False, PLAIN_UDP_SIZE, False)
    if size < end + 11:
        return None
    root, rtype, udp_size, ttl, rdlength = _OPT_FIXED.unpack_from(data, end)
    if root or rtype != OPT or end + 11 + rdlength != size or ttl & 0x00FF0000:
        return None  # not an OPT, trailing bytes, or EDNS version above 0
    if rdlength and not _options_well_formed(data, end + 11):
        return None
    limit = min(max(udp_size, PLAIN_UDP_SIZE), EDNS_UDP_SIZE)
    return PlainQuery(ident, flags, data[12:end], qtype, qclass, True, limit, bool(ttl & 0x8000))


def _options_well_formed(data: bytes, offset: int) -> bool:
    end = len(data)
    while offset < end:
        if offset + 4 > end:
            return False
        offset += 4 + struct.unpack_from("!H", data, offset + 2)[0]
    return offset == end


def encode_body(answer: Answer, name: bytes, qtype: int, qclass: int) -> PacketBody:
    """Encode `answer`'s sections once, for serving it again and again.

    `name` is the question's name in wire format, as the cache keys it (lower case).
    """
    additional = [r for r in answer.additional if r.type != OPT]
    sections = (answer.answers, answer.authority, additional)
    question = name + _TYPE_CLASS.pack(qtype, qclass)
    offsets: list[int] = []
    body = encode_sections(question, sections, offsets)[len(question) :]
    ttl_offsets = tuple(offset - len(question) for offset in offsets)
    ttls = tuple(record.ttl for records in sections for record in records)
    counts = (len(answer.answers), len(answer.authority), len(additional))
    return PacketBody(answer.rcode, answer.authentic, counts, body, ttl_offsets, ttls)


def _name(text: str) -> bytes:
    out = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in text.split(".") if label
    )
    return out + b"\x00"


def blocked_body(decision: Decision, qtype: int, server_name: str) -> PacketBody:
    """The blocked answer (README, "What clients see") to a question of type `qtype`.

    A decision answering NODATA gets the same SOA with NOERROR; one answering local data
    gets its records of type `qtype` (its CNAME, whatever `qtype`), else that NODATA.
    """
    ttl = decision.ttl
    if decision.answer == ANSWER_LOCAL_DATA:
        local = _local_data_body(decision, qtype)
        if local is not None:
            return local
        return _nodata_body(server_name, ttl)
    if decision.answer == ANSWER_NODATA:
        return _nodata_body(server_name, ttl)
    if qtype == dns.TXT and decision.add_txt_report:
        report = decision.report.encode("utf-8")
        chunks = [report[i : i + 255] for i in range(0, len(report), 255)] or [b""]
        rdata = b"".join(bytes([len(chunk)]) + chunk for chunk in chunks)
        record = _QUESTION_NAME + _RR_FIXED.pack(dns.TXT, dns.IN, ttl, len(rdata)) + rdata
        return PacketBody(dns.OK, False, (1, 0, 0), record, (6,), (ttl,))
    return _nxdomain_body(server_name, ttl)


@functools.lru_cache(maxsize=64)
def _nxdomain_body(server_name: str, ttl: int) -> PacketBody:
    """NXDOMAIN with the SOA: the same bytes for every blocked name (the owner is a pointer)."""
    return _soa_body(dns.ENAME, server_name, ttl)


@functools.lru_cache(maxsize=64)
def _nodata_body(server_name: str, ttl: int) -> PacketBody:
    """NOERROR, no answer, the blocked answer's SOA (RFC 2308 section 2.2, NODATA)."""
    return _soa_body(dns.OK, server_name, ttl)


def _soa_body(rcode: int, server_name: str, ttl: int) -> PacketBody:
    rdata = (
        _name(server_name)
        + _name(f"hostadmin.{server_name}")
        + struct.pack("!IIIII", SOA_SERIAL, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl)
    )
    record = _QUESTION_NAME + _RR_FIXED.pack(dns.SOA, dns.IN, ttl, len(rdata)) + rdata
    return PacketBody(rcode, False, (0, 1, 0), record, (6,), (ttl,))


def _local_data_body(decision: Decision, qtype: int) -> PacketBody | None:
    """The decision's records answering `qtype`, owned by the question's name; None if none.

    A CNAME answers every type (the name is an alias of the walled garden); other records
    answer their own type, and all of them answer ANY.
    """
    chosen = [r for r in decision.local_data if r.type == dns.CNAME]
    if not chosen:
        chosen = [r for r in decision.local_data if r.type == qtype or qtype == dns.ALL_RECORDS]
    if not chosen:
        return None
    body = bytearray()
    offsets = []
    for record in chosen:
        offsets.append(len(body) + 6)
        body += _QUESTION_NAME + _RR_FIXED.pack(record.type, dns.IN, record.ttl, len(record.rdata))
        body += record.rdata
    ttls = tuple(record.ttl for record in chosen)
    return PacketBody(dns.OK, False, (len(chosen), 0, 0), bytes(body), tuple(offsets), ttls)


MINIMAL_ANY_TTL = 3600


def minimal_any_body() -> PacketBody:
    """One HINFO record, CPU "RFC8482" and an empty OS, owned by the question's name."""
    rdata = b"\x07RFC8482\x00"
    record = _QUESTION_NAME + _RR_FIXED.pack(dns.HINFO, dns.IN, MINIMAL_ANY_TTL, len(rdata)) + rdata
    return PacketBody(dns.OK, False, (1, 0, 0), record, (6,), (MINIMAL_ANY_TTL,))


def chaos_txt_body(text: str) -> PacketBody:
    """One CH-class TXT record holding `text`, TTL 0, owned by the question's name."""
    data = text.encode("utf-8")[:255]
    rdata = bytes([len(data)]) + data
    record = _QUESTION_NAME + _RR_FIXED.pack(dns.TXT, dns.CH, 0, len(rdata)) + rdata
    return PacketBody(dns.OK, False, (1, 0, 0), record, (6,), (0,))


def empty_body(rcode: int) -> PacketBody:
    """An answer with `rcode` and nothing in its sections."""
    return PacketBody(rcode, False, (0, 0, 0), b"")


_PLAIN_OPT = {do: encode_opt(EDNS_UDP_SIZE, dnssec_ok=do) for do in (False, True)}
# Per DO bit: one OPT (with its EDE text) per blocked indicator recently asked about.
_OPT_MEMO: dict[bool, dict[tuple[tuple[int, str], ...], bytes]] = {False: {}, True: {}}
_OPT_MEMO_SIZE = 65536
# An OPT record's fixed part (root owner, type, UDP size, TTL holding the DO bit, RDLENGTH).
_OPT_HEAD = struct.Struct("!BHHIH")
# An option's code and length, and an EDE option's INFO-CODE.
_EDE_HEAD = struct.Struct("!HHH")


def opt_record(dnssec_ok: bool, ede: tuple[tuple[int, str], ...] = ()) -> bytes:
    """Our OPT record: UDP size 1232, the client's DO bit, and any Extended DNS Errors
    (the bytes `encode_opt` gives with `encode_ede` options, built here in one go)."""
    if not ede:
        return _PLAIN_OPT[dnssec_ok]
    memo = _OPT_MEMO[dnssec_ok]
    opt = memo.get(ede)
    if opt is None:
        if len(memo) >= _OPT_MEMO_SIZE:
            memo.clear()
        options = b""
        for code, text in ede:
            extra = text.encode("utf-8")
            options += _EDE_HEAD.pack(OPTION_EDE, 2 + len(extra), code) + extra
        flags = 0x8000 if dnssec_ok else 0
        opt = _OPT_HEAD.pack(0, OPT, EDNS_UDP_SIZE, flags, len(options)) + options
        memo[ede] = opt
    return opt


def assemble(
    ident: int,
    flags: int,
    question: bytes,
    packet: PacketBody,
    age: int,
    opt: bytes | None,
    *,
    truncated: bool = False,
) -> bytes:
    """A response: the query's ID and flags, its question as written, the body, our OPT.

    `flags` are the query's two flag octets (first octet in the low byte): RD and CD are
    copied; QR and RA set; AD only when the answer is authentic and the query asked for
    DNSSEC (RFC 6840 section 5.7, the caller passes `opt` for DO queries). `opt` is None
    when the query had no EDNS. With `truncated`, TC is set and `packet` should be `EMPTY`
    with the answer's RCODE.
    """
    answers, authority, additional = packet.counts
    high = 0x82 if truncated else 0x80
    high |= flags & 0x01
    low = 0x80 | ((flags >> 8) & 0x10) | (packet.rcode & 0x0F)
    if packet.authentic and opt is not None and opt[7] & 0x80:
        low |= 0x20
    if opt is None:
        header = _HEADER.pack(ident, high, low, 1, answers, authority, additional)
        return header + question + packet.aged(age)
    header = _HEADER.pack(ident, high, low, 1, answers, authority, additional + 1)
    return header + question + packet.aged(age) + opt
