"""DNS zone data as plain values: records in canonical wire form, from zone files and messages.

A `Record` is one resource record of class IN: its owner in lower-case presentation form
without the trailing dot ("www.example.com", "" for the root), its type, TTL and RDATA in
uncompressed wire form with the names inside it (NS, CNAME, SOA, MX, ...) lower-cased, the
canonical form of RFC 4034 section 6.2. Two records are the same record when owner, type
and RDATA are equal, whatever their TTL (`Record.key`), which is how a zone transfer's
deletions name what they delete (RFC 1995).

`read_master` reads a zone file (RFC 1035 section 5: `$ORIGIN`, `$TTL`, `@`, relative
names, a blank owner repeating the previous one, parentheses, comments, quoted strings,
TTLs with units as in `1h30m`, the RFC 3597 generic `\\# length hex` form) for the types
an RPZ zone holds; `$INCLUDE` and other types are refused with the line number.
`read_records` reads the resource records of a DNS message, decompressing the names in
RDATA, and refuses anything malformed. Both raise `ZoneDataError`.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterator

import attrs

__all__ = [
    "TYPES",
    "Message",
    "Record",
    "ZoneDataError",
    "name_to_wire",
    "read_master",
    "read_message",
    "soa_fields",
    "wire_to_name",
]

IN = 1
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, DNAME = 1, 2, 5, 6, 12, 15, 16, 28, 33, 39
#: Type mnemonics read from and written to zone files.
TYPES = {
    "A": A,
    "NS": NS,
    "CNAME": CNAME,
    "SOA": SOA,
    "PTR": PTR,
    "MX": MX,
    "TXT": TXT,
    "AAAA": AAAA,
    "SRV": SRV,
    "DNAME": DNAME,
}
_CLASSES = {"IN"}
# How many names each type's RDATA starts with (then the rest is opaque): the types whose
# names may be compressed on the wire and are lower-cased in canonical form.
_LEADING_NAMES = {NS: 1, CNAME: 1, PTR: 1, DNAME: 1, SOA: 2}
_NAMES_AFTER = {MX: 2, SRV: 6}  # one name after this many octets of fixed fields
_ADDRESS_LENGTHS = {A: 4, AAAA: 16}

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_SOA_TIMERS = struct.Struct("!IIIII")


class ZoneDataError(ValueError):
    """Zone data that cannot be read; the message says where and why."""


@attrs.frozen(cache_hash=True)
class Record:
    """One IN-class resource record in canonical form (see the module docstring)."""

    owner: str
    type: int
    ttl: int
    rdata: bytes

    @property
    def key(self) -> tuple[str, int, bytes]:
        """What identifies the record in a zone: everything but the TTL."""
        return (self.owner, self.type, self.rdata)


def soa_fields(rdata: bytes) -> tuple[str, str, int, int, int, int, int]:
    """MNAME, RNAME, serial, refresh, retry, expire, minimum of an SOA's RDATA."""
    mname, offset = wire_to_name(rdata, 0)
    rname, offset = wire_to_name(rdata, offset)
    if len(rdata) - offset != _SOA_TIMERS.size:
        raise ZoneDataError("SOA RDATA of the wrong length")
    return (mname, rname, *_SOA_TIMERS.unpack_from(rdata, offset))


# --- names ------------------------------------------------------------------------------


def name_to_wire(name: str) -> bytes:
    """The wire form of an absolute name in presentation form (escapes `\\.` and `\\DDD`)."""
    if name in ("", "."):
        return b"\x00"
    if "\\" not in name:
        return _plain_name_to_wire(name)
    labels: list[bytes] = []
    label = bytearray()
    index = 0
    text = name[:-1] if name.endswith(".") and not name.endswith("\\.") else name
    while index < len(text):
        char = text[index]
        if char == "\\":
            if text[index + 1 : index + 4].isdigit() and len(text[index + 1 : index + 4]) == 3:
                value = int(text[index + 1 : index + 4])
                if value > 255:
                    raise ZoneDataError(f"bad escape in name {name!r}")
                label.append(value)
                index += 4
                continue
            if index + 1 >= len(text):
                raise ZoneDataError(f"name {name!r} ends with a backslash")
            label += text[index + 1].encode("utf-8")
            index += 2
            continue
        if char == ".":
            labels.append(bytes(label))
            label = bytearray()
        else:
            label += char.encode("utf-8")
        index += 1
    labels.append(bytes(label))
    wire = bytearray()
    for part in labels:
        if not part or len(part) > 63:
            raise ZoneDataError(f"bad label in name {name!r}")
        wire.append(len(part))
        wire += part
    wire.append(0)
    if len(wire) > 255:
        raise ZoneDataError(f"name {name!r} is longer than 255 octets")
    return bytes(wire)


def _plain_name_to_wire(name: str) -> bytes:
    """`name_to_wire` for a name without escapes: split at the dots."""
    text = name[:-1] if name.endswith(".") else name
    wire = bytearray()
    for label in text.encode("utf-8").split(b"."):
        if not label or len(label) > 63:
            raise ZoneDataError(f"bad label in name {name!r}")
        wire.append(len(label))
        wire += label
    wire.append(0)
    if len(wire) > 255:
        raise ZoneDataError(f"name {name!r} is longer than 255 octets")
    return bytes(wire)


_PLAIN_LABEL_OCTETS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*/"
)


def _label_text(label: bytes) -> str:
    if all(octet in _PLAIN_LABEL_OCTETS for octet in label):
        return label.decode("ascii")
    return "".join(
        chr(octet) if octet in _PLAIN_LABEL_OCTETS else f"\\{octet:03d}" for octet in label
    )


def wire_to_name(data: bytes, offset: int, message: bytes | None = None) -> tuple[str, int]:
    """The name at `offset` of `data` in presentation form, and the offset after it.

    With `message` given, `data` is that message and compression pointers are followed
    (each must point backwards, RFC 1035 section 4.1.4); without, a pointer is an error.
    """
    labels: list[str] = []
    end = -1
    length_so_far = 0
    position = offset
    jumps = 0
    while True:
        if position >= len(data):
            raise ZoneDataError("name runs past the end of the data")
        size = data[position]
        if size & 0xC0 == 0xC0:
            if message is None or position + 1 >= len(data):
                raise ZoneDataError("compression pointer where none may be")
            target = ((size & 0x3F) << 8) | data[position + 1]
            if end < 0:
                end = position + 2
            jumps += 1
            if target >= position or jumps > 127:
                raise ZoneDataError("compression pointer that does not point backwards")
            position = target
            continue
        if size & 0xC0:
            raise ZoneDataError("unknown label type")
        position += 1
        if size == 0:
            break
        label = data[position : position + size]
        if len(label) != size:
            raise ZoneDataError("label runs past the end of the data")
        length_so_far += size + 1
        if length_so_far > 254:
            raise ZoneDataError("name longer than 255 octets")
        labels.append(_label_text(label))
        position += size
    return ".".join(labels).lower(), (position if end < 0 else end)


# --- RDATA ------------------------------------------------------------------------------


def _canonical_rdata(rtype: int, rdata: bytes, message: bytes | None, start: int) -> bytes:
    """RDATA with its names uncompressed and lower-cased (`message` for wire input)."""
    source = message if message is not None else rdata
    base = start if message is not None else 0
    end = base + len(rdata)
    leading = _LEADING_NAMES.get(rtype)
    if leading is None and rtype not in _NAMES_AFTER:
        if rtype in _ADDRESS_LENGTHS and len(rdata) != _ADDRESS_LENGTHS[rtype]:
            raise ZoneDataError(f"type {rtype} RDATA of {len(rdata)} octets")
        return rdata
    out = bytearray()
    offset = base
    if leading is None:
        fixed = _NAMES_AFTER[rtype]
        out += source[offset : offset + fixed]
        offset += fixed
        leading = 1
    for _ in range(leading):
        name, offset = wire_to_name(source, offset, message)
        if offset > end:
            raise ZoneDataError("name runs past its RDATA")
        out += name_to_wire(name)
    out += source[offset:end]
    if rtype == SOA and len(source[offset:end]) != _SOA_TIMERS.size:
        raise ZoneDataError("SOA RDATA of the wrong length")
    if rtype != SOA and offset != end:
        raise ZoneDataError(f"type {rtype} RDATA longer than its name")
    return bytes(out)


# --- DNS messages ------------------------------------------------------------------------


@attrs.frozen
class Message:
    """What a zone transfer client reads of a response: header, question, answer records."""

    ident: int
    flags: int
    rcode: int
    question: tuple[str, int, int] | None
    answers: tuple[Record, ...]

    @property
    def opcode(self) -> int:
        """The message's OPCODE."""
        return (self.flags >> 11) & 0xF


def _skip_record(data: bytes, offset: int) -> tuple[str, int, int, int, int, int]:
    owner, offset = wire_to_name(data, offset, data)
    if offset + _RR_FIXED.size > len(data):
        raise ZoneDataError("record header runs past the end of the message")
    rtype, rclass, ttl, length = _RR_FIXED.unpack_from(data, offset)
    offset += _RR_FIXED.size
    if offset + length > len(data):
        raise ZoneDataError("RDATA runs past the end of the message")
    return owner, rtype, rclass, ttl, offset, length


def read_message(data: bytes) -> Message:
    """The header, question and answer section of a DNS message, strictly read."""
    if len(data) < _HEADER.size:
        raise ZoneDataError("message shorter than its header")
    ident, flags, qdcount, ancount, nscount, _ = _HEADER.unpack_from(data)
    offset = _HEADER.size
    question = None
    if qdcount > 1:
        raise ZoneDataError("more than one question")
    if qdcount:
        qname, offset = wire_to_name(data, offset, data)
        if offset + 4 > len(data):
            raise ZoneDataError("question runs past the end of the message")
        qtype, qclass = struct.unpack_from("!HH", data, offset)
        offset += 4
        question = (qname, qtype, qclass)
    answers = []
    for _ in range(ancount):
        owner, rtype, rclass, ttl, start, length = _skip_record(data, offset)
        offset = start + length
        if rclass != IN:
            raise ZoneDataError(f"record of class {rclass} for {owner!r}")
        if ttl > 0x7FFFFFFF:
            ttl = 0  # RFC 2181 section 8: a TTL with the top bit set is zero
        rdata = _canonical_rdata(rtype, data[start : start + length], data, start)
        answers.append(Record(owner, rtype, ttl, rdata))
    for _ in range(nscount):
        _, _, _, _, start, length = _skip_record(data, offset)
        offset = start + length
    return Message(ident, flags, flags & 0xF, question, tuple(answers))


# --- master files -----------------------------------------------------------------------

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TTL_PART = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)


def parse_ttl(text: str) -> int:
    """A TTL as seconds: digits, or BIND's units (`1h30m`, `2d`, `1W`)."""
    if text.isdigit():
        value = int(text)
    else:
        parts = _TTL_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
            raise ZoneDataError(f"bad TTL {text!r}")
        value = sum(int(n) * _TTL_UNITS[u.lower()] for n, u in parts)
    if value > 0x7FFFFFFF:
        raise ZoneDataError(f"TTL {text!r} is too large")
    return value


def _is_ttl(token: str) -> bool:
    return bool(token) and token[0].isdigit() and (token.isdigit() or bool(_TTL_PART.match(token)))


@attrs.frozen
class _Token:
    text: str
    quoted: bool = False


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_*/-]+(?:\.[A-Za-z0-9_*/-]+)*")
_SPECIAL = frozenset('"()\\')


def _logical_lines(text: str) -> Iterator[tuple[int, bool, list[_Token]]]:
    """(line number, starts with blank, tokens) per entry, parentheses joined, comments cut."""
    tokens: list[_Token] = []
    depth = 0
    starts_blank = False
    first_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if depth == 0:
            tokens = []
            starts_blank = line[:1] in (" ", "\t")
            first_line = number
            if not _SPECIAL.intersection(line):
                # The common line: plain words, perhaps a comment. Split at C speed.
                words = line.split(";", 1)[0].split()
                if words:
                    yield number, starts_blank, [_Token(word) for word in words]
                continue
        index = 0
        while index < len(line):
            char = line[index]
            if char == ";":
                break
            if char in " \t\r":
                index += 1
                continue
            if char == "(":
                depth += 1
                index += 1
                continue
            if char == ")":
                if depth == 0:
                    raise ZoneDataError(f"line {number}: ')' without '('")
                depth -= 1
                index += 1
                continue
            if char == '"':
                index += 1
                value = []
                while index < len(line) and line[index] != '"':
                    if line[index] == "\\" and index + 1 < len(line):
                        value.append(line[index : index + 2])
                        index += 2
                        continue
                    value.append(line[index])
                    index += 1
                if index >= len(line):
                    raise ZoneDataError(f"line {number}: unterminated quoted string")
                index += 1
                tokens.append(_Token("".join(value), quoted=True))
                continue
            start = index
            while index < len(line) and line[index] not in ' \t\r;()"':
                index += 2 if line[index] == "\\" else 1
            tokens.append(_Token(line[start:index]))
        if depth == 0 and tokens:
            yield first_line, starts_blank, tokens
    if depth:
        raise ZoneDataError(f"line {first_line}: '(' never closed")


def _absolute(name: str, origin: str, number: int) -> str:
    if name == "@":
        return origin
    if name.endswith(".") and not name.endswith("\\."):
        absolute = name[:-1]
    else:
        absolute = f"{name}.{origin}" if origin else name
    if not absolute:
        return ""
    if _PLAIN_NAME.fullmatch(absolute):
        if len(absolute) > 253 or any(len(label) > 63 for label in absolute.split(".")):
            raise ZoneDataError(f"line {number}: bad name {name!r}")
        return absolute.lower()
    # Round trip through the wire form: checks the name and gives its canonical spelling.
    try:
        return wire_to_name(name_to_wire(absolute or "."), 0)[0]
    except ZoneDataError as problem:
        raise ZoneDataError(f"line {number}: {problem}") from None


def _character_string(token: _Token) -> bytes:
    raw = bytearray()
    text = token.text
    index = 0
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text):
            digits = text[index + 1 : index + 4]
            if len(digits) == 3 and digits.isdigit():
                raw.append(int(digits) & 0xFF)
                index += 4
            else:
                raw += text[index + 1].encode("utf-8")
                index += 2
            continue
        raw += text[index].encode("utf-8")
        index += 1
    if len(raw) > 255:
        raise ZoneDataError("character string longer than 255 octets")
    return bytes([len(raw)]) + bytes(raw)


def _rdata(rtype: int, tokens: list[_Token], origin: str, number: int) -> bytes:
    texts = [t.text for t in tokens]
    if texts[:1] == ["\\#"]:
        if len(texts) < 2 or not texts[1].isdigit():
            raise ZoneDataError(f"line {number}: bad generic RDATA")
        try:
            data = bytes.fromhex("".join(texts[2:]))
        except ValueError:
            raise ZoneDataError(f"line {number}: bad hex in generic RDATA") from None
        if len(data) != int(texts[1]):
            raise ZoneDataError(f"line {number}: generic RDATA length does not match")
        return _canonical_rdata(rtype, data, None, 0)

    def names(count: int) -> bytes:
        return b"".join(name_to_wire(_absolute(t, origin, number)) for t in texts[:count])

    def need(count: int) -> None:
        if len(texts) != count:
            raise ZoneDataError(f"line {number}: type {rtype} takes {count} fields")

    try:
        if rtype in (A, AAAA):
            need(1)
            address = ipaddress.ip_address(texts[0])
            if address.version != (4 if rtype == A else 6):
                raise ValueError
            return address.packed
        if rtype in (NS, CNAME, PTR, DNAME):
            need(1)
            return names(1)
        if rtype == SOA:
            need(7)
            timers = [parse_ttl(t) for t in texts[2:]]
            return names(2) + _SOA_TIMERS.pack(*timers)
        if rtype == MX:
            need(2)
            return struct.pack("!H", int(texts[0])) + name_to_wire(
                _absolute(texts[1], origin, number)
            )
        if rtype == SRV:
            need(4)
            fixed = struct.pack("!HHH", *(int(t) for t in texts[:3]))
            return fixed + name_to_wire(_absolute(texts[3], origin, number))
        if rtype == TXT:
            if not tokens:
                raise ValueError
            return b"".join(_character_string(t) for t in tokens)
    except ZoneDataError as problem:
        raise ZoneDataError(f"line {number}: {problem}") from None
    except (ValueError, struct.error):
        raise ZoneDataError(f"line {number}: bad RDATA {' '.join(texts)!r}") from None
    raise ZoneDataError(f"line {number}: type {rtype} needs the generic \\# form")


def _record_type(token: str, number: int) -> int | None:
    upper = token.upper()
    if upper in TYPES:
        return TYPES[upper]
    if upper.startswith("TYPE") and upper[4:].isdigit():
        return int(upper[4:])
    return None


def read_master(text: str, origin: str) -> list[Record]:
    """The records of a zone file whose origin is `origin` (no trailing dot needed)."""
    origin = _absolute(origin.rstrip(".") + "." if origin else ".", "", 0)
    default_ttl: int | None = None
    last_ttl: int | None = None
    owner: str | None = None
    records: list[Record] = []
    for number, blank, tokens in _logical_lines(text):
        first = tokens[0].text
        if not blank and first.startswith("$"):
            directive = first.upper()
            if directive == "$ORIGIN" and len(tokens) == 2:
                origin = _absolute(tokens[1].text, origin, number)
            elif directive == "$TTL" and len(tokens) == 2:
                default_ttl = parse_ttl(tokens[1].text)
            else:
                raise ZoneDataError(f"line {number}: unsupported directive {first}")
            continue
        if not blank:
            owner = _absolute(first, origin, number)
            tokens = tokens[1:]
        if owner is None:
            raise ZoneDataError(f"line {number}: record without an owner")
        ttl = None
        rtype = None
        while tokens:
            word = tokens[0].text
            if _is_ttl(word) and ttl is None:
                ttl = parse_ttl(word)
            elif word.upper() in _CLASSES:
                pass
            elif word.upper() in ("CH", "HS", "CS"):
                raise ZoneDataError(f"line {number}: class {word} is not IN")
            else:
                rtype = _record_type(word, number)
                tokens = tokens[1:]
                break
            tokens = tokens[1:]
        if rtype is None:
            raise ZoneDataError(f"line {number}: no known record type")
        rdata = _rdata(rtype, tokens, origin, number)
        if ttl is None:
            ttl = default_ttl if default_ttl is not None else last_ttl
        if ttl is None:
            if rtype != SOA:
                raise ZoneDataError(f"line {number}: no TTL and no $TTL before it")
            ttl = soa_fields(rdata)[6]
        last_ttl = ttl
        records.append(Record(owner, rtype, ttl, rdata))
    return records
