"""What answering one query produced: the value types the DNS side hands to the exporter.

`Answer` is a response's RCODE and sections plus how it came about (`Kind`), optionally with
its sections pre-encoded (`PacketBody`); `QueryEvent` is one answered query as the exporter
sees it. Both sit at the bottom of the layers (see docs/architecture.md), so the DNS side
and the export side share them without depending on each other.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence

import attrs
from twisted.names import dns

from misp_dns.interfaces import Decision

__all__ = ["Answer", "Kind", "PacketBody", "QueryEvent", "copy_with_ttl"]

_TTL = struct.Struct("!I")


class Kind(enum.Enum):
    """How the response came about; the values are the query log's `responseType`."""

    BLOCKED = "Blocked"
    ALLOWED = "Allowed"
    RECURSIVE = "Recursive"
    CACHED = "Cached"
    REFUSED = "Refused"
    DROPPED = "Dropped"
    SERVER_FAILURE = "ServerFailure"


@attrs.frozen
class Answer:
    """A response's RCODE and sections, plus how it was made.

    `rtt` is the upstream round trip in seconds for `Kind.RECURSIVE`; `ede` holds Extended
    DNS Errors as (INFO-CODE, EXTRA-TEXT) pairs; `decision` is the policy decision, if any
    policy had one (in monitor mode it is there even though the answer is not blocked).
    `packet` is the same answer pre-encoded (cached and blocked answers); a cached answer's
    records keep the TTLs they were stored with, and `age` says how much to take off them.
    `complete` is False when the upstream answered over UDP: it may have left out authority
    or additional records that did not fit, without TC (RFC 2181 section 9), so the answer
    is not one to give a client that asked over TCP.
    """

    rcode: int
    answers: Sequence[dns.RRHeader] = ()
    authority: Sequence[dns.RRHeader] = ()
    additional: Sequence[dns.RRHeader] = ()
    kind: Kind = Kind.RECURSIVE
    authentic: bool = False
    ede: tuple[tuple[int, str], ...] = ()
    rtt: float | None = None
    decision: Decision | None = None
    packet: PacketBody | None = attrs.field(default=None, eq=False, repr=False)
    age: int = 0
    complete: bool = True

    def aged(self, records: Sequence[dns.RRHeader]) -> Sequence[dns.RRHeader]:
        """`records` with TTLs lowered by `age`, the seconds this answer spent in the cache."""
        if not self.age:
            return records
        return [copy_with_ttl(r, max(0, r.ttl - self.age)) for r in records]


def copy_with_ttl(record: dns.RRHeader, ttl: int) -> dns.RRHeader:
    """The same record with another TTL (the name and payload objects are shared, never
    changed: a name made again from its text would lose an `ExactName`'s labels)."""
    copy = dns.RRHeader(
        type=record.type, cls=record.cls, ttl=ttl, payload=record.payload, auth=record.auth
    )
    copy.name = record.name
    return copy


@attrs.define(eq=False)
class PacketBody:
    """The sections of an answer as wire bytes following the question.

    Compression pointers in `body` may point into the question (offset 12 on): `assemble`
    puts a question of the same length there, so they stay right whatever its case.
    """

    rcode: int
    authentic: bool
    counts: tuple[int, int, int]
    body: bytes
    ttl_offsets: tuple[int, ...] = ()
    ttls: tuple[int, ...] = ()
    _aged_for: int = -1
    _aged_body: bytes = b""

    def aged(self, age: int) -> bytes:
        """The body with every TTL lowered by `age` seconds (kept for a repeated age)."""
        if age <= 0 or not self.ttl_offsets:
            return self.body
        if age != self._aged_for:
            patched = bytearray(self.body)
            for offset, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
                _TTL.pack_into(patched, offset, max(0, ttl - age))
            self._aged_for, self._aged_body = age, bytes(patched)
        return self._aged_body


@attrs.frozen
class QueryEvent:
    """One answered query, as the exporter sees it.

    `question` is the question section as the client sent it (wire format, case kept);
    `edns` says whether the query carried an OPT record. The answer's records keep the TTLs
    they were cached with: the client got them `age` seconds lower.
    """

    timestamp: float
    client: str
    transport: str
    question: bytes
    edns: bool
    answer: Answer
    response_size: int
    age: int = 0

    @property
    def qtype(self) -> int:
        """The question's type."""
        return int.from_bytes(self.question[-4:-2], "big")

    @property
    def qclass(self) -> int:
        """The question's class."""
        return int.from_bytes(self.question[-2:], "big")
