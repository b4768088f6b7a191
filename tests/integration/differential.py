"""Asking misp-dns and a reference server the same question, and what may differ.

`Variant` is how a question is asked (UDP or TCP, EDNS or not, DO, CD); `Exchange` is one
question sent the same way to misp-dns and to the reference, with a way to get the
reference's answer over TCP with EDNS (its full answer), asked only when a rule needs it.
`differences(exchange, rules)` lists every way misp-dns's answer departs from the
reference's beyond what `Rules` allows: the rules, and why each difference is allowed, are
listed in `test_differential_e2e`'s docstring.

Responses are parsed strictly by dnspython (an answer it rejects is a difference too);
`rdata_compressed` also reads misp-dns's raw bytes, because dnspython rejects a compressed
name in some RDATA where RFC 3597 forbids it (DNAME, RRSIG, NSEC) but follows it in others
(SRV, NAPTR), which stricter clients reject.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import attrs
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .wire import Address, make_query, parse, tcp_exchange, udp_exchange

__all__ = [
    "PAYLOAD",
    "Exchange",
    "Rules",
    "Variant",
    "differences",
    "rdata_compressed",
]

#: The UDP payload size our queries advertise with EDNS.
PAYLOAD = 1232
#: The types of RFC 1035 whose RDATA names may be compressed (RFC 3597 section 4).
_COMPRESSIBLE = frozenset(
    dns.rdatatype.RdataType.make(name)
    for name in ("NS", "MD", "MF", "CNAME", "SOA", "MB", "MG", "MR", "PTR", "MINFO", "MX")
)
_RR_FIXED = struct.Struct("!HHIH")


@attrs.frozen
class Variant:
    """How a question is asked: over TCP or UDP, with EDNS or not, with DO and CD."""

    tcp: bool = False
    edns: bool = False
    dnssec_ok: bool = False
    checking_disabled: bool = False

    @property
    def id(self) -> str:
        """A short name for test ids: `udp`, `tcp-edns-do-cd`, ..."""
        parts = ["tcp" if self.tcp else "udp"]
        parts += [name for name, on in self._flags() if on]
        return "-".join(parts)

    def _flags(self) -> list[tuple[str, bool]]:
        return [("edns", self.edns), ("do", self.dnssec_ok), ("cd", self.checking_disabled)]

    @property
    def is_full(self) -> bool:
        """Whether this is the way the reference gives its full answer."""
        return self.tcp and self.edns

    @property
    def limit(self) -> int:
        """The largest response this variant allows."""
        if self.tcp:
            return 65535
        return PAYLOAD if self.edns else 512

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        """A query for `name`/`rdtype` asked this way."""
        query = make_query(
            name, rdtype, edns=0 if self.edns else None, payload=PAYLOAD, dnssec_ok=self.dnssec_ok
        )
        if self.checking_disabled:
            query.flags |= dns.flags.CD
        return query

    def send(self, wire: bytes, address: Address) -> bytes:
        """Send `wire` this way and return the response's bytes (fails on silence)."""
        if self.tcp:
            return tcp_exchange(wire, address)
        reply = udp_exchange(wire, address, timeout=3.0)
        if reply is None:
            raise AssertionError(f"no UDP answer from {address} within 3 s")
        return reply


@attrs.frozen
class Exchange:
    """One question asked of misp-dns and of the reference, the same way."""

    variant: Variant
    query: dns.message.Message
    ours_wire: bytes
    #: misp-dns's answer parsed, or why dnspython would not parse it.
    ours: dns.message.Message | str
    theirs: dns.message.Message
    #: The reference's full answer (asked for when called).
    full: Callable[[], dns.message.Message]

    @classmethod
    def run(
        cls,
        variant: Variant,
        query: dns.message.Message,
        ours: Address,
        reference: Address,
        full: Callable[[], dns.message.Message],
    ) -> Exchange:
        """Ask `reference` then misp-dns (`ours`); `full` asks for the reference's full
        answer (not used when the question was asked in full already)."""
        wire = query.to_wire()
        theirs = parse(variant.send(wire, reference))
        ours_wire = variant.send(wire, ours)
        try:
            parsed: dns.message.Message | str = parse(ours_wire)
        except dns.exception.DNSException as exc:
            parsed = f"{exc.__class__.__name__}: {exc}"

        def answered() -> dns.message.Message:
            return theirs

        return cls(variant, query, ours_wire, parsed, theirs, answered if variant.is_full else full)

    def describe(self) -> str:
        """Both answers as text, for a failure message."""
        ours = self.ours if isinstance(self.ours, str) else self.ours.to_text()
        return (
            f"--- misp-dns ({len(self.ours_wire)} bytes):\n{ours}\n"
            f"--- reference:\n{self.theirs.to_text()}"
        )


@attrs.frozen
class Rules:
    """What may differ from a given reference (see the list in test_differential_e2e).

    `authoritative`: the reference is an authoritative server (AA and RA are its own, not a
    resolver's). `age` is how many seconds misp-dns's cache may have held an answer (and,
    for a resolver reference, its cache too): the allowed TTL difference.
    """

    authoritative: bool
    age: float


def differences(exchange: Exchange, rules: Rules) -> list[str]:
    """Every difference between misp-dns's answer and the reference's that `rules` and the
    list do not allow, as readable lines; empty when the answers agree."""
    found = _wire(exchange)
    ours = exchange.ours
    if isinstance(ours, str):
        return [*found, f"dnspython rejects the answer: {ours}"]
    found += [
        *_header(ours, exchange, rules),
        *_question(ours, exchange),
        *_edns(ours, exchange),
    ]
    if not (ours.flags & exchange.theirs.flags & dns.flags.TC):
        found += _sections(ours, exchange, rules)
    return found


def _flag(message: dns.message.Message, flag: dns.flags.Flag) -> bool:
    return bool(message.flags & flag)


def _header(ours: dns.message.Message, exchange: Exchange, rules: Rules) -> list[str]:
    theirs, query = exchange.theirs, exchange.query
    found = []
    if ours.id != query.id or not _flag(ours, dns.flags.QR):
        found.append(f"not a response to the query: id {ours.id}, flags {ours.flags:#06x}")
    if ours.opcode() != theirs.opcode():
        found.append(f"opcode {ours.opcode()!r}, reference {theirs.opcode()!r}")
    if ours.rcode() != theirs.rcode():
        found.append(
            f"rcode {dns.rcode.to_text(ours.rcode())}, "
            f"reference {dns.rcode.to_text(theirs.rcode())}"
        )
    same = [dns.flags.RD, dns.flags.CD, dns.flags.AD, dns.flags.TC]
    if not rules.authoritative:
        same.append(dns.flags.RA)
    elif not _flag(ours, dns.flags.RA):
        found.append("RA clear: misp-dns offers recursion")
    for flag in same:
        if _flag(ours, flag) != _flag(theirs, flag):
            found.append(f"{flag.name} {_flag(ours, flag)}, reference {_flag(theirs, flag)}")
    if _flag(ours, dns.flags.AA):
        found.append("AA set: misp-dns is authoritative for nothing it forwards")
    return found


def _question(ours: dns.message.Message, exchange: Exchange) -> list[str]:
    mine = [(q.name.to_wire(), q.rdtype, q.rdclass) for q in ours.question]
    theirs = [(q.name.to_wire(), q.rdtype, q.rdclass) for q in exchange.theirs.question]
    if mine == theirs:
        return []
    return [f"question {mine}, reference {theirs}"]


def _edns(ours: dns.message.Message, exchange: Exchange) -> list[str]:
    theirs = exchange.theirs
    found = []
    if (ours.edns >= 0) != (theirs.edns >= 0):
        found.append(f"EDNS version {ours.edns}, reference {theirs.edns} (-1: no OPT)")
    elif ours.edns >= 0 and _do(ours) != _do(theirs):
        found.append(f"DO {_do(ours)}, reference {_do(theirs)}")
    return found


def _do(message: dns.message.Message) -> bool:
    return bool(message.ednsflags & dns.flags.DO)


def _wire(exchange: Exchange) -> list[str]:
    found = []
    size = len(exchange.ours_wire)
    if size > exchange.variant.limit:
        found.append(f"{size} bytes over the variant's limit of {exchange.variant.limit}")
    for rdtype in rdata_compressed(exchange.ours_wire):
        name = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
        found.append(f"a name in {name} RDATA is compressed")
    return found


Key = tuple[dns.name.Name, int, int, int]


def _key(rrset: dns.rrset.RRset) -> Key:
    return (rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)


def _show(rrsets: Iterable[dns.rrset.RRset]) -> str:
    return "; ".join(rrset.to_text().replace("\n", " | ") for rrset in rrsets) or "(none)"


def _positive(message: dns.message.Message) -> bool:
    """NOERROR with records of the type asked (or a chain to them) in the answer."""
    return message.rcode() == dns.rcode.NOERROR and bool(message.answer)


def _sections(ours: dns.message.Message, exchange: Exchange, rules: Rules) -> list[str]:
    theirs, full = exchange.theirs, exchange.full
    found = []
    if [_key(r) for r in ours.answer] != [_key(r) for r in theirs.answer] or any(
        a != b for a, b in zip(ours.answer, theirs.answer, strict=False)
    ):
        found.append(f"answer: {_show(ours.answer)}\n  reference: {_show(theirs.answer)}")
    optional = not exchange.variant.tcp and _positive(theirs)
    found += _section("authority", ours, theirs, full, optional)
    found += _section("additional", ours, theirs, full, not exchange.variant.tcp)
    found += _ttls(ours, theirs, rules)
    return found


def _section(
    name: str,
    ours: dns.message.Message,
    theirs: dns.message.Message,
    full: Callable[[], dns.message.Message],
    optional: bool,
) -> list[str]:
    """Section `name` ("authority", "additional") equal as sets of RRsets; or, when
    `optional`, each of ours as in the reference's answer or else in its full answer."""
    ours_keys = {_key(r): r for r in getattr(ours, name)}
    theirs_keys = {_key(r): r for r in getattr(theirs, name)}
    if optional:
        extra = [r for key, r in ours_keys.items() if theirs_keys.get(key) != r]
        whole = {_key(r): r for r in getattr(full(), name)} if extra else {}
        extra = [r for r in extra if whole.get(_key(r)) != r]
        if extra:
            return [f"{name}: {_show(extra)} not (or not whole) in the reference's full answer"]
        return []
    if ours_keys.keys() != theirs_keys.keys() or any(
        ours_keys[key] != theirs_keys[key] for key in ours_keys
    ):
        mine, reference = _show(ours_keys.values()), _show(theirs_keys.values())
        return [f"{name}: {mine}\n  reference: {reference}"]
    return []


def _ttls(ours: dns.message.Message, theirs: dns.message.Message, rules: Rules) -> list[str]:
    reference = {
        _key(r): r.ttl
        for section in (theirs.answer, theirs.authority, theirs.additional)
        for r in section
    }
    found = []
    for section in (ours.answer, ours.authority, ours.additional):
        for rrset in section:
            expected = reference.get(_key(rrset))
            if expected is None:
                continue
            low = expected - rules.age
            high = expected if rules.authoritative else expected + rules.age
            if not low <= rrset.ttl <= high:
                found.append(
                    f"TTL {rrset.ttl} of {rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}, "
                    f"reference {expected} (allowed {max(0, int(low))}..{int(high)})"
                )
    return found


def _skip_name(wire: bytes, offset: int) -> int:
    while True:
        length = wire[offset]
        if length >= 0xC0:
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset


def rdata_compressed(wire: bytes) -> list[int]:
    """The types of the records in `wire` whose RDATA holds a compressed name although
    RFC 3597 section 4 allows that only for the types of RFC 1035."""
    counts = struct.unpack_from("!HHHH", wire, 4)
    offset = 12
    for _ in range(counts[0]):
        offset = _skip_name(wire, offset) + 4
    found = []
    for _ in range(sum(counts[1:])):
        offset = _skip_name(wire, offset)
        rdtype, rdclass, _ttl, rdlength = _RR_FIXED.unpack_from(wire, offset)
        offset += _RR_FIXED.size
        if rdtype != dns.rdatatype.OPT and rdtype not in _COMPRESSIBLE:
            try:
                rdata = dns.rdata.from_wire(rdclass, rdtype, wire, offset, rdlength)
            except dns.name.DecompressionForbidden:
                found.append(rdtype)
            else:
                if len(rdata.to_wire() or b"") != rdlength:
                    found.append(rdtype)
        offset += rdlength
    return found
