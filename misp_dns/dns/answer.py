"""What resolving one question produced, whichever part of the chain answered it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
from twisted.names import dns

from misp_dns.policy.decision import Decision

if TYPE_CHECKING:
    from misp_dns.dns.packet import PacketBody

__all__ = ["Answer", "Kind", "copy_with_ttl"]


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

    def aged(self, records: Sequence[dns.RRHeader]) -> Sequence[dns.RRHeader]:
        """`records` with TTLs lowered by `age`, the seconds this answer spent in the cache."""
        if not self.age:
            return records
        return [copy_with_ttl(r, max(0, r.ttl - self.age)) for r in records]


def copy_with_ttl(record: dns.RRHeader, ttl: int) -> dns.RRHeader:
    """The same record with another TTL (the payload object is shared, never changed)."""
    return dns.RRHeader(
        name=record.name.name,
        type=record.type,
        cls=record.cls,
        ttl=ttl,
        payload=record.payload,
        auth=record.auth,
    )
