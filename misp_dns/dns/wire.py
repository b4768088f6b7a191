"""Reading queries off the wire and writing responses onto it, EDNS included.

Twisted's `dns.Message` does the record codec; this module adds what a server needs around
it and what the stock server gets wrong:

- `read_request` classifies a packet: unreadable or a response (dropped, `DropPacket`),
  an opcode other than QUERY (NOTIMP), malformed but with a readable header (FORMERR),
  wrong question count (FORMERR), several OPT records (FORMERR), EDNS version above 0
  (BADVERS); each a `RequestError` carrying what the error response may echo, and
  `encode_error` writes that response.
- `encode_response` writes a response that copies ID, opcode, RD, CD and the question as
  asked, sets QR and RA, adds an OPT record (our UDP size, the DO bit echoed, extended RCODE,
  Extended DNS Errors) only when the query had one, and truncates UDP answers at whole
  RRsets so the message stays valid, with TC set when a required RRset had to go.
- `encode_sections` writes the records of every response, cached or not, compressing names
  only where `may_compress` allows it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from io import BytesIO

import attrs
from twisted.names import dns

from misp_dns.names import ExactMessage, text_of_labels

__all__ = [
    "BADVERS",
    "EDNS_UDP_SIZE",
    "OPT",
    "DropPacket",
    "Edns",
    "Notify",
    "Request",
    "RequestError",
    "encode_ede",
    "encode_error",
    "encode_opt",
    "encode_response",
    "encode_sections",
    "is_notify",
    "may_compress",
    "notify_response",
    "parse_message",
    "presentation_name",
    "question_length",
    "read_notify",
    "read_request",
]

HEADER = struct.Struct("!HBBHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_RDLENGTH = struct.Struct("!H")
OPT = 41
RRSIG = 46
BADVERS = 16
EDNS_UDP_SIZE = 1232
PLAIN_UDP_SIZE = 512
TCP_MAX_SIZE = 65535
OPTION_EDE = 15


class DropPacket(Exception):
    """The packet must not be answered: it is unreadable, or it is itself a response."""


@attrs.frozen
class Edns:
    """The EDNS(0) pseudo-record of a message (RFC 6891)."""

    udp_size: int = EDNS_UDP_SIZE
    version: int = 0
    dnssec_ok: bool = False
    options: tuple[tuple[int, bytes], ...] = ()


@attrs.frozen
class Request:
    """A query that passed every wire check and can be resolved.

    `flags` are the query's two flag octets (the first in the low byte); `question_wire` is
    its question as received, the only exact form of its name: Twisted's decoded names join
    labels with dots, so a label holding a dot (`a\\.b.example`) reads as two.
    """

    message: dns.Message
    edns: Edns | None
    flags: int
    question_wire: bytes

    @property
    def question(self) -> dns.Query:
        """The one question as Twisted decodes it (see the class docstring for its name)."""
        return self.message.queries[0]

    @property
    def name(self) -> bytes:
        """The question's name in wire format, as the client wrote it."""
        return self.question_wire[:-4]

    @property
    def udp_limit(self) -> int:
        """How large a UDP response to this query may be."""
        if self.edns is None:
            return PLAIN_UDP_SIZE
        return max(PLAIN_UDP_SIZE, min(self.edns.udp_size, EDNS_UDP_SIZE))


@attrs.define
class RequestError(Exception):
    """A query that gets an error response instead of an answer (see `encode_error`).

    `ident` and `flags` come from its header (`flags` as in `Request`); `question` is the
    wire form of the `question_count` questions the response echoes (none when they could
    not be read); `edns` is the query's OPT when it was readable.
    """

    rcode: int
    ident: int
    flags: int
    question: bytes = b""
    question_count: int = 0
    edns: Edns | None = None
    reason: str = ""


def _read_edns(record: dns.RRHeader) -> Edns:
    data = record.payload.data if isinstance(record.payload, dns.UnknownRecord) else b""
    options = []
    offset = 0
    while offset + 4 <= len(data):
        code, length = struct.unpack_from("!HH", data, offset)
        offset += 4
        if offset + length > len(data):
            raise ValueError("OPT option runs past its record")
        options.append((code, data[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise ValueError("OPT record has trailing bytes")
    ttl = record.ttl
    return Edns(
        udp_size=record.cls,
        version=(ttl >> 16) & 0xFF,
        dnssec_ok=bool(ttl & 0x8000),
        options=tuple(options),
    )


def parse_message(data: bytes, *, exact: bool = True) -> dns.Message:
    """Decode a whole message strictly: every counted record present, nothing left over.

    Raises ValueError for anything malformed (Twisted's own decoder silently stops at the
    end of the data, which would accept a message missing half its records). With `exact`
    the records' names are `ExactName`s, so a label holding a dot is encoded again as one
    label; without, they are Twisted's names, for records that are never encoded again.
    """
    message = ExactMessage() if exact else dns.Message()
    stream = BytesIO(data)
    try:
        message.decode(stream)
    except Exception as exc:
        raise ValueError(f"undecodable message: {exc}") from None
    _ident, _b3, _b4, qd, an, ns, ar = HEADER.unpack_from(data)
    counted = (qd, an, ns, ar)
    found = (
        len(message.queries),
        len(message.answers),
        len(message.authority),
        len(message.additional),
    )
    if counted != found:
        raise ValueError(f"counts {counted} but holds {found}")
    if stream.tell() != len(data):
        raise ValueError("trailing bytes after the last record")
    return message


def find_edns(message: dns.Message) -> Edns | None:
    """The message's OPT record; ValueError when it has several or a misplaced one."""
    records = [r for r in message.additional if r.type == OPT]
    if any(r.type == OPT for r in (*message.answers, *message.authority)):
        raise ValueError("OPT record outside the additional section")
    if len(records) > 1:
        raise ValueError("more than one OPT record")
    if not records:
        return None
    if records[0].name.name != b"":
        raise ValueError("OPT record owner is not the root")
    return _read_edns(records[0])


def question_length(data: bytes, start: int = 12) -> int:
    """Octets of the question at `start`, or 0 if it is not a plain one.

    Plain means: ordinary labels (no compression pointer, no reserved label type), a name
    of at most 255 octets, and the type and class after it. A label may hold any octet,
    "." included (RFC 1035 section 3.1, RFC 4343 section 2.1).
    """
    offset = start
    end = len(data)
    while offset < end:
        length = data[offset]
        if length == 0:
            return offset + 1 + 4 - start if offset + 5 <= end else 0
        if length > 63 or offset + 1 + length - start > 254:
            return 0
        offset += 1 + length
    return 0


def presentation_name(wire_name: bytes) -> str:
    """A name in wire format as policies see it: lower case, no trailing dot.

    A "." inside a label is written `\\.` (RFC 1035 section 5.1), so `a\\.b.example` is not
    taken for the three-label `a.b.example`; octets outside ASCII are written as Python's
    backslashreplace writes them.
    """
    labels = []
    offset = 0
    length = wire_name[0]
    while length:
        labels.append(wire_name[offset + 1 : offset + 1 + length])
        offset += 1 + length
        length = wire_name[offset]
    if 46 in wire_name:  # a "." in a label, or a length octet of 46: rare either way
        dotted = b".".join(label.replace(b".", b"\\.") for label in labels)
    else:
        dotted = b".".join(labels)
    return dotted.lower().decode("ascii", "backslashreplace")


def _plain_questions(data: bytes, count: int) -> bytes | None:
    """The first `count` questions as written, or None if any is not plain."""
    offset = HEADER.size
    for _ in range(count):
        length = question_length(data, offset)
        if not length:
            return None
        offset += length
    return data[HEADER.size : offset]


def read_request(data: bytes) -> Request:
    """Classify a received packet; return a Request or raise DropPacket / RequestError.

    The checks come in Unbound's order: a runt or a response is dropped; an opcode other
    than QUERY is NOTIMP whatever follows; then the message must decode, hold one question
    with a plain name and at most one OPT (else FORMERR), of EDNS version 0 (else BADVERS).
    """
    if len(data) < HEADER.size:
        raise DropPacket("shorter than a DNS header")
    if data[2] & 0x80:
        raise DropPacket("a response, not a query")
    ident = data[0] << 8 | data[1]
    flags = data[2] | data[3] << 8
    opcode = (data[2] >> 3) & 0xF
    try:
        # A query's records (its OPT) are read, never relayed: Twisted's names will do.
        message = parse_message(data, exact=False)
    except ValueError as exc:
        rcode = dns.ENOTIMP if opcode != dns.OP_QUERY else dns.EFORMAT
        raise RequestError(rcode, ident, flags, reason=str(exc)) from None
    count = len(message.queries)
    questions = _plain_questions(data, count)
    # A compression pointer, a reserved label type or over 255 octets: none can be echoed.
    echoed, count = (b"", 0) if questions is None else (questions, count)
    try:
        edns = find_edns(message)
        bad_opt = ""
    except ValueError as exc:
        edns, bad_opt = None, str(exc)
    if opcode != dns.OP_QUERY:
        raise RequestError(dns.ENOTIMP, ident, flags, echoed, count, edns, f"opcode {opcode}")
    if questions is None:
        reason = "a question name that cannot be echoed"
        raise RequestError(dns.EFORMAT, ident, flags, echoed, count, edns, reason)
    if count != 1:
        raise RequestError(dns.EFORMAT, ident, flags, echoed, count, edns, f"{count} questions")
    if bad_opt:
        raise RequestError(dns.EFORMAT, ident, flags, echoed, count, None, bad_opt)
    if edns is not None and edns.version > 0:
        reason = f"EDNS version {edns.version}"
        raise RequestError(BADVERS, ident, flags, echoed, count, edns, reason)
    return Request(message, edns, flags, echoed)


OP_NOTIFY = 4


@attrs.frozen
class Notify:
    """A NOTIFY (RFC 1996): its header, its question as written, and the zone it names."""

    ident: int
    flags: int
    question: bytes
    zone: str


def is_notify(data: bytes) -> bool:
    """True for a NOTIFY request (not a response): the server hands it to a zone follower."""
    return len(data) >= HEADER.size and not data[2] & 0x80 and (data[2] >> 3) & 0xF == OP_NOTIFY


def read_notify(data: bytes) -> Notify:
    """The zone a NOTIFY names, or `RequestError` (FORMERR) for one without a plain question.

    RFC 1996 section 3.7: the question holds the zone's name, QTYPE SOA.
    """
    ident = data[0] << 8 | data[1]
    flags = data[2] | data[3] << 8
    count = data[4] << 8 | data[5]
    question = _plain_questions(data, 1) if count == 1 else None
    if question is None:
        raise RequestError(dns.EFORMAT, ident, flags, reason="a NOTIFY without one question")
    if question[-4:-2] != struct.pack("!H", dns.SOA):
        raise RequestError(dns.EFORMAT, ident, flags, question, 1, reason="NOTIFY not for an SOA")
    return Notify(ident, flags, question, presentation_name(question[:-4]))


def notify_response(notify: Notify, accepted: bool) -> bytes:
    """The answer to a NOTIFY (RFC 1996 section 4.7): its ID, opcode and question, QR and
    AA set, NOERROR when the zone's follower took it, else REFUSED."""
    first = 0x80 | (OP_NOTIFY << 3) | 0x04
    rcode = dns.OK if accepted else dns.EREFUSED
    header = HEADER.pack(notify.ident, first, rcode, 1, 0, 0, 0)
    return header + notify.question


def encode_ede(info_code: int, extra_text: str = "") -> tuple[int, bytes]:
    """An Extended DNS Error option (RFC 8914) as an (option code, data) pair."""
    return OPTION_EDE, struct.pack("!H", info_code) + extra_text.encode("utf-8")


def encode_opt(
    udp_size: int,
    *,
    extended_rcode: int = 0,
    dnssec_ok: bool = False,
    options: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """Wire bytes of an OPT pseudo-record (version 0)."""
    rdata = b"".join(struct.pack("!HH", code, len(value)) + value for code, value in options)
    flags = (extended_rcode & 0xFF) << 24 | (0x8000 if dnssec_ok else 0)
    return b"\x00" + struct.pack("!HHIH", OPT, udp_size, flags, len(rdata)) + rdata


# The types of RFC 1035 whose RDATA holds domain names.
_RFC1035_NAME_TYPES = frozenset(
    {dns.NS, dns.MD, dns.MF, dns.CNAME, dns.SOA, dns.MB, dns.MG, dns.MR, dns.PTR}
    | {dns.MINFO, dns.MX}
)
# A compression pointer holds a 14-bit offset.
_MAX_POINTER = 0x3FFF


def may_compress(rtype: int) -> bool:
    """Whether the domain names inside the RDATA of type `rtype` may be compressed.

    Only the "well-known" types of RFC 1035 (NS, MD, MF, CNAME, SOA, MB, MG, MR, PTR,
    MINFO, MX) may be: RFC 3597 section 4 forbids compression in the RDATA of every other
    type, known or not. Among them DNAME (RFC 6672 section 2.5), SRV (RFC 2782), NAPTR
    (RFC 3403 section 4.1), RRSIG and NSEC (RFC 4034 sections 3.1.7 and 4.1.1), AFSDB and
    RP (RFC 1183, after RFC 1035). Strict clients reject a message that compresses them.
    Owner names may always be compressed (RFC 1035 section 4.1.4).
    """
    return rtype in _RFC1035_NAME_TYPES


class _Pointers(dict[bytes, int]):
    """Where names were written, for Twisted's `Name.encode` to point back to.

    Names written beyond the reach of a 14-bit pointer are not remembered: Twisted would
    otherwise write a pointer whose offset spills into the pointer's tag bits.
    """

    def __setitem__(self, name: bytes, offset: int) -> None:
        if offset <= _MAX_POINTER:
            super().__setitem__(name, offset)


def _question_pointers(question: bytes) -> _Pointers:
    """The question's name and each of its suffixes, keyed as `ExactName` spells names."""
    starts = []
    labels = []
    offset = 0
    while offset < len(question) and question[offset]:
        length = question[offset]
        starts.append(offset)
        labels.append(question[offset + 1 : offset + 1 + length])
        offset += 1 + length
    pointers = _Pointers()
    # No "." or "\\" octet anywhere (nearly every question): the labels' text is their join.
    plain = b"." not in question and b"\\" not in question
    for index, start in enumerate(starts):
        suffix = labels[index:]
        pointers.setdefault(
            b".".join(suffix) if plain else text_of_labels(suffix), HEADER.size + start
        )
    return pointers


def encode_sections(
    question: bytes,
    sections: Sequence[Sequence[dns.RRHeader]],
    ttl_offsets: list[int] | None = None,
) -> bytes:
    """The question section `question` (wire bytes, written as given) and the records after it.

    Every response goes through here, so names are compressed by one rule: owner names
    always, names inside RDATA only where `may_compress` says so. When `ttl_offsets` is
    given, the offset of each record's TTL (from the start of the returned bytes) is
    appended to it.
    """
    stream = BytesIO()
    stream.write(question)
    pointers = _question_pointers(question)
    for records in sections:
        for record in records:
            record.name.encode(stream, pointers)
            if ttl_offsets is not None:
                ttl_offsets.append(stream.tell() + 4)
            stream.write(_RR_FIXED.pack(record.type, record.cls, record.ttl, 0))
            if record.payload is None:
                continue
            start = stream.tell()
            record.payload.encode(stream, pointers if may_compress(record.type) else None)
            end = stream.tell()
            stream.seek(start - _RDLENGTH.size)
            stream.write(_RDLENGTH.pack(end - start))
            stream.seek(end)
    return stream.getvalue()


def _rrsets(records: Sequence[dns.RRHeader]) -> list[list[dns.RRHeader]]:
    """Group records of one owner, type and class into RRsets, each with its signatures.

    An RRSIG joins the RRset it covers (RFC 4034 section 3: its first field is the type
    covered), so truncation keeps or drops the two together. Groups keep the order in
    which they first appear.
    """
    groups: dict[tuple[bytes, int, int], list[dns.RRHeader]] = {}
    for record in records:
        rtype = record.type
        payload = record.payload
        if rtype == RRSIG and isinstance(payload, dns.UnknownRecord) and len(payload.data) >= 2:
            rtype = struct.unpack_from("!H", payload.data)[0]
        groups.setdefault((record.name.name.lower(), rtype, record.cls), []).append(record)
    return list(groups.values())


def _required_sections(rcode: int, answers: Sequence[dns.RRHeader], qtype: int) -> int:
    """How many sections, from the answer section on, TC speaks for: leaving out an RRset
    of one of them sets TC; leaving out any other does not.

    RFC 2181 section 9: TC only when an RRset required in the response could not be
    included whole, never for additional data. Required are the answer's RRsets and, in
    an answer that is not positive (NOERROR with a record of the type asked), the
    authority's: the SOA that lets a negative answer be cached (RFC 2308 section 5) and,
    under DNSSEC, the proof of non-existence. Unbound does the same with its default
    minimal responses; a positive answer's NS records go without TC.
    """
    positive = rcode == dns.OK and any(record.type == qtype for record in answers)
    return 1 if positive else 2


@attrs.define
class _Draft:
    """Header fields and sections of a response before it is encoded.

    `flags` are the query's (as in `Request`): opcode, RD and CD are copied from them.
    """

    ident: int
    flags: int
    question: bytes
    question_count: int
    rcode: int
    answers: Sequence[dns.RRHeader] = ()
    authority: Sequence[dns.RRHeader] = ()
    additional: Sequence[dns.RRHeader] = ()
    authentic: bool = False
    recursion_available: bool = True

    def encode(self, sections: tuple[Sequence[dns.RRHeader], ...], truncated: bool) -> bytes:
        flags = self.flags
        byte3 = 0x80 | flags & 0x79 | (0x02 if truncated else 0)
        byte4 = (0x80 if self.recursion_available else 0) | (flags >> 8) & 0x10
        byte4 |= (0x20 if self.authentic else 0) | self.rcode & 0xF
        counts = (len(section) for section in sections)
        header = HEADER.pack(self.ident, byte3, byte4, self.question_count, *counts)
        return header + encode_sections(self.question, sections)


def _with_opt(wire: bytes, opt: bytes) -> bytes:
    if not opt:
        return wire
    arcount = struct.unpack_from("!H", wire, 10)[0] + 1
    return wire[:10] + struct.pack("!H", arcount) + wire[12:] + opt


def _our_opt(edns: Edns | None, rcode: int, ede: Sequence[tuple[int, str]] = ()) -> bytes:
    """The response's OPT record: none when the query had none."""
    if edns is None:
        return b""
    return encode_opt(
        EDNS_UDP_SIZE,
        extended_rcode=rcode >> 4,
        dnssec_ok=edns.dnssec_ok,
        options=[encode_ede(code, text) for code, text in ede],
    )


def encode_error(problem: RequestError) -> bytes:
    """The response to a query `read_request` turned down: what an error answer echoes.

    Decided here for every error answer (RFC 1035 section 4.1.1, RFC 6891 sections 6.1.1
    and 6.1.3), and matched against Unbound 1.17.1, which answers FORMERR and NOTIMP by
    sending the query back with QR and the RCODE set:

    - ID, opcode, RD and CD are copied and QR set; AA, TC, AD and Z are clear.
    - RA is clear on FORMERR and NOTIMP, whose queries never reached the resolver, and set
      on BADVERS, as Unbound does.
    - Every question goes back as the client wrote it, two as well as one, when each has
      a plain name; otherwise none. (Unbound sends even an unreadable message back under
      the counts it claimed, which no strict parser accepts.)
    - An OPT record goes back when the query's could be read: ours (UDP size 1232, the DO
      bit echoed, the upper bits of the RCODE), where Unbound returns the client's own.
    """
    draft = _Draft(
        problem.ident,
        problem.flags,
        problem.question,
        problem.question_count,
        problem.rcode,
        recursion_available=problem.rcode == BADVERS,
    )
    wire = draft.encode(((), (), ()), truncated=False)
    return _with_opt(wire, _our_opt(problem.edns, problem.rcode))


def encode_response(
    request: Request,
    rcode: int,
    answers: Sequence[dns.RRHeader] = (),
    authority: Sequence[dns.RRHeader] = (),
    additional: Sequence[dns.RRHeader] = (),
    *,
    max_size: int = TCP_MAX_SIZE,
    ede: Sequence[tuple[int, str]] = (),
    authentic: bool = False,
) -> bytes:
    """Encode a response to `request`, fitting it into `max_size` bytes.

    When the whole answer does not fit, whole RRsets (each with its signatures) are left
    out from the end; TC is set when a required one had to go (`_required_sections`).
    OPT records in `additional` are ignored: the response's OPT is built here.
    """
    opt = _our_opt(request.edns, rcode, ede)
    additional = [r for r in additional if r.type != OPT]
    draft = _Draft(
        request.message.id,
        request.flags,
        request.question_wire,
        1,
        rcode,
        answers,
        authority,
        additional,
        authentic,
    )
    wire = draft.encode((answers, authority, additional), truncated=False)
    if len(wire) + len(opt) <= max_size:
        return _with_opt(wire, opt)
    return _with_opt(_truncated(draft, max_size - len(opt), request.question.type), opt)


def _truncated(draft: _Draft, budget: int, qtype: int) -> bytes:
    """The largest prefix of whole RRsets that fits `budget`, found by bisection."""
    sections_required = _required_sections(draft.rcode, draft.answers, qtype)
    sets = [
        (section, rrset)
        for section, records in enumerate((draft.answers, draft.authority, draft.additional))
        for rrset in _rrsets(records)
    ]
    required = sum(1 for section, _ in sets if section < sections_required)

    def attempt(keep: int) -> bytes:
        sections: tuple[list[dns.RRHeader], ...] = ([], [], [])
        for section, rrset in sets[:keep]:
            sections[section].extend(rrset)
        return draft.encode(sections, truncated=keep < required)

    low, high = 0, len(sets) - 1  # keeping everything is known not to fit
    best = attempt(0)
    while low < high:
        middle = (low + high + 1) // 2
        wire = attempt(middle)
        if len(wire) <= budget:
            low, best = middle, wire
        else:
            high = middle - 1
    return best
