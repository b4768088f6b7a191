"""DNS messages for the zone's answers, filled with records up to a size, names compressed.

`MessageWriter` starts a response (header, optionally the question) and takes records one
at a time until the next would not fit in `limit` bytes (a transfer fills its messages to
`TRANSFER_MESSAGE`, 16 KiB, as far as compression reaches). Owner names are written relative
to the zone's apex and compressed against every name already in the message (RFC 1035
section 4.1.4), so `*.evil.example` costs two bytes of name after `evil.example`. RDATA is
written as given (the CNAME targets and TXT strings of the zone hold no names to compress,
and the SOA's names are written in full).

`soa_rdata(...)` and `ns_rdata(...)` give the apex records' RDATA.
"""

from __future__ import annotations

import struct

from misp_dns.primary.zone import Record

__all__ = ["MAX_MESSAGE", "TRANSFER_MESSAGE", "MessageWriter", "name_wire", "soa_rdata"]

#: The largest DNS message over TCP, less room for a TSIG record.
MAX_MESSAGE = 65535 - 512
_POINTER_LIMIT = 0x3FFF
#: How full a transfer's messages are made. A compression pointer reaches only the first
#: 16 KiB of a message, so past that every owner is written out again: measured on 20,000
#: feed-like names, 16 KiB messages take 779 kB in all, 64 KiB ones 922 kB (18% more), and
#: BIND's own transfer of the same zone 788 kB.
TRANSFER_MESSAGE = _POINTER_LIMIT + 1
_IN = 1
_QR_AA = 0x8400


def name_wire(name: str) -> bytes:
    """An absolute name ("rpz.example" or "rpz.example.") in uncompressed wire form."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\0"


def soa_rdata(
    mname: str,
    rname: str,
    serial: int,
    refresh: int,
    retry: int,
    expire: int,
    minimum: int,
) -> bytes:
    """The RDATA of an SOA record, names uncompressed."""
    return (
        name_wire(mname)
        + name_wire(rname)
        + struct.pack("!IIIII", serial & 0xFFFFFFFF, refresh, retry, expire, minimum)
    )


class MessageWriter:
    """One response message being filled; see the module docstring.

    `flags` is the header's second 16-bit word (QR and AA are set; RD is copied by the
    caller); `question` is the question section's bytes (name, type, class) or b"".
    """

    def __init__(
        self,
        ident: int,
        zone: str,
        *,
        question: bytes = b"",
        flags: int = _QR_AA,
        limit: int = MAX_MESSAGE,
    ) -> None:
        self._ident = ident
        self._flags = flags | _QR_AA
        self._limit = limit
        self._body = bytearray(question)
        self._qdcount = 1 if question else 0
        self._count = 0
        self._zone_wire = name_wire(zone)
        # Offsets of names written so far, relative to the apex ("" is the apex itself).
        self._offsets: dict[str, int] = {}
        if question and question[: len(self._zone_wire)].lower() == self._zone_wire.lower():
            self._offsets[""] = 12

    @property
    def count(self) -> int:
        """Records written so far."""
        return self._count

    def add(self, record: Record) -> bool:
        """Write `record` if it fits; return False (writing nothing) if it does not."""
        start = 12 + len(self._body)
        name, new_offsets = self._owner(record.owner, start)
        rr = name + struct.pack("!HHIH", record.rtype, _IN, record.ttl, len(record.rdata))
        if start + len(rr) + len(record.rdata) > self._limit and self._count:
            return False
        self._body += rr
        self._body += record.rdata
        self._offsets.update(new_offsets)
        self._count += 1
        return True

    def _owner(self, owner: str, at: int) -> tuple[bytes, dict[str, int]]:
        offsets = self._offsets
        found = offsets.get(owner)
        if found is not None:
            return struct.pack("!H", 0xC000 | found), {}
        out = bytearray()
        new: dict[str, int] = {}
        suffix = owner
        while suffix:
            found = offsets.get(suffix)
            if found is not None:
                out += struct.pack("!H", 0xC000 | found)
                return bytes(out), new
            if at + len(out) <= _POINTER_LIMIT:
                new[suffix] = at + len(out)
            label, _, suffix = suffix.partition(".")
            encoded = label.encode("ascii")
            out.append(len(encoded))
            out += encoded
        found = offsets.get("")
        if found is not None:
            out += struct.pack("!H", 0xC000 | found)
        else:
            if at + len(out) <= _POINTER_LIMIT:
                new[""] = at + len(out)
            out += self._zone_wire
        return bytes(out), new

    def finish(self) -> bytes:
        """The message's bytes."""
        header = struct.pack("!HHHHHH", self._ident, self._flags, self._qdcount, self._count, 0, 0)
        return header + bytes(self._body)
