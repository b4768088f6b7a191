"""Domain names that keep their labels exactly, whatever octets the labels hold.

Twisted's `dns.Name` keeps a name as its labels joined with dots, so a name whose label
holds a dot (`a\\.b.example`: the octet 0x2E inside one label) decodes as the labels `a`
and `b`, and encoded again it names another domain. An `ExactName` keeps the same text,
but a "." inside a label is written `\\.` and a "\\" is written `\\\\` (RFC 1035 section
5.1), so the text splits back into the labels it came from. Every other octet (a space,
octets from 0x80 on) stays as it is, as Twisted keeps it. For the names nearly every
message holds (no "." or "\\" inside a label) the text is Twisted's own, and encoding one
costs one `in` test more.

`ExactMessage` decodes every record's owner name, and the names inside the RDATA of the
types Twisted reads (NS, CNAME, SOA, PTR, MX, DNAME, SRV, NAPTR, ...), as `ExactName`s;
RDATA Twisted does not read (RRSIG, NSEC, ...) is kept as bytes and so is exact already.
The DNS side decodes messages with it; the export side reads names through `labels`.

    >>> name = ExactName.from_labels([b"a.b", b"example"])
    >>> name.name
    b'a\\\\.b.example'
    >>> labels(name.name)
    [b'a.b', b'example']
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from twisted.names import dns

__all__ = ["MAX_NAME_OCTETS", "ExactMessage", "ExactName", "labels", "text_of_labels"]

#: RFC 1035 section 3.1: a name, length octets and the root's zero included.
MAX_NAME_OCTETS = 255
# A name of 255 octets has at most 127 labels, each of which a pointer may lead to.
_MAX_POINTERS = 128
_BACKSLASH = 0x5C
_DOT = 0x2E
_POINTER = struct.Struct("!H")


def _escaped(label: bytes) -> bytes:
    if _DOT in label or _BACKSLASH in label:
        return label.replace(b"\\", b"\\\\").replace(b".", b"\\.")
    return label


def text_of_labels(raw_labels: Sequence[bytes]) -> bytes:
    """The `ExactName` text of a name made of `raw_labels` (the root's empty one left out)."""
    text = b".".join(raw_labels)
    if _BACKSLASH not in text and text.count(b".") == len(raw_labels) - 1:
        return text  # nearly every name: each of its dots is between two labels
    return b".".join(_escaped(label) for label in raw_labels)


def _split(text: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Each label of `text` with the text of the name from that label on."""
    label = bytearray()
    start = 0
    index = 0
    while index < len(text):
        octet = text[index]
        if octet == _BACKSLASH and index + 1 < len(text):
            label.append(text[index + 1])
            index += 2
            continue
        index += 1
        if octet == _DOT:
            yield bytes(label), text[start:]
            label.clear()
            start = index
        else:
            label.append(octet)
    if text:
        yield bytes(label), text[start:]


def labels(text: bytes) -> list[bytes]:
    """The labels (raw octets) of a name written as `ExactName.name`; [] for the root."""
    if _BACKSLASH not in text:
        return text.split(b".") if text else []
    return [label for label, _suffix in _split(text)]


class ExactName(dns.Name):
    """A `dns.Name` that decodes and encodes its labels exactly (see the module docstring).

    Decoding is stricter than Twisted's: a reserved label type, a name over 255 octets or
    more than 128 compression pointers in one name raise ValueError, which bounds the work
    one name can cost.
    """

    @classmethod
    def from_labels(cls, raw_labels: Sequence[bytes]) -> ExactName:
        """The name made of `raw_labels`, which may hold any octets."""
        return cls(text_of_labels(raw_labels))

    def encode(self, strio: IO[bytes], compDict: dict[bytes, int] | None = None) -> None:
        name = self.name
        if _BACKSLASH not in name:
            dns.Name.encode(self, strio, compDict)
            return
        for label, suffix in _split(name):
            if compDict is not None:
                if suffix in compDict:
                    strio.write(_POINTER.pack(0xC000 | compDict[suffix]))
                    return
                compDict[suffix] = strio.tell() + dns.Message.headerSize
            strio.write(bytes([len(label)]) + label)
        strio.write(b"\x00")

    def decode(self, strio: IO[bytes], length: int | None = None) -> None:
        found: list[bytes] = []
        octets = 1  # the root's zero-length label
        pointers = 0
        resume = 0
        read = strio.read
        while True:
            octet = read(1)
            if not octet:
                raise EOFError("a name runs past the end of the message")
            size = octet[0]
            if not size:
                break
            if size >= 0xC0:
                pointers += 1
                if pointers > _MAX_POINTERS:
                    raise ValueError("too many compression pointers in one name")
                offset = (size & 0x3F) << 8 | _read(strio, 1)[0]
                resume = resume or strio.tell()
                strio.seek(offset)
                continue
            if size > 63:
                raise ValueError(f"reserved label type {size >> 6:#04b}")
            octets += 1 + size
            if octets > MAX_NAME_OCTETS:
                raise ValueError(f"name longer than {MAX_NAME_OCTETS} octets")
            found.append(_read(strio, size))
        if resume:
            strio.seek(resume)
        self.name = text_of_labels(found)


def _read(strio: IO[bytes], count: int) -> bytes:
    data = strio.read(count)
    if len(data) != count:
        raise EOFError(f"needed {count} octets, found {len(data)}")
    return data


def _after_naptr_strings(payload: Any) -> int:
    strings = (payload.flags, payload.service, payload.regexp)
    return 4 + sum(1 + len(string.string) for string in strings)


def _after_a6_suffix(payload: Any) -> int | None:
    return 1 + payload.bytes if payload.prefixLen else None


def _fixed(octets: int) -> Callable[[Any], int]:
    return lambda payload: octets


# The types whose RDATA is one name, kept by Twisted as `payload.name`: read here alone.
_NAME_ONLY = frozenset(
    {dns.NS, dns.MD, dns.MF, dns.CNAME, dns.MB, dns.MG, dns.MR, dns.PTR, dns.DNAME}
)
# For the other types with names: where those start in the RDATA (None: it holds none) and
# the attributes Twisted keeps them in, in the order they follow one another. Twisted reads
# the record first; its names are then read again from here.
_RDATA_NAMES: dict[int, tuple[Callable[[Any], int | None], tuple[str, ...]]] = {
    dns.SOA: (_fixed(0), ("mname", "rname")),
    dns.MINFO: (_fixed(0), ("rmailbx", "emailbx")),
    dns.RP: (_fixed(0), ("mbox", "txt")),
    dns.MX: (_fixed(2), ("name",)),
    dns.AFSDB: (_fixed(2), ("hostname",)),
    dns.SRV: (_fixed(6), ("target",)),
    dns.NAPTR: (_after_naptr_strings, ("replacement",)),
    dns.A6: (_after_a6_suffix, ("prefix",)),
}


def _read_rdata_names(record: dns.RRHeader, strio: IO[bytes], start: int) -> None:
    """Read the names of `record`'s RDATA (at `start`) again, as `ExactName`s."""
    layout = _RDATA_NAMES.get(record.type)
    if layout is None:
        return
    skip, fields = layout
    offset = skip(record.payload)
    if offset is None:
        return
    end = strio.tell()
    strio.seek(start + offset)
    for field in fields:
        name = ExactName()
        name.decode(strio)
        setattr(record.payload, field, name)
    strio.seek(end)


class ExactMessage(dns.Message):
    """A `dns.Message` whose records' names are `ExactName`s (see the module docstring)."""

    def parseRecords(self, list: Any, num: int, strio: IO[bytes]) -> None:
        for _ in range(num):
            record = dns.RRHeader(auth=self.auth)
            record.name = ExactName()
            try:
                record.decode(strio)
                start = strio.tell()
                payload: Any = self.lookupRecordType(record.type)(ttl=record.ttl)
                record.payload = payload
                if record.type in _NAME_ONLY:
                    payload.name = ExactName()
                    payload.name.decode(strio)
                else:
                    payload.decode(strio, record.rdlength)
                    _read_rdata_names(record, strio, start)
            except EOFError:
                return  # as Twisted does: the caller finds records missing
            list.append(record)
