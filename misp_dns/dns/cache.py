"""The answer cache: bounded, least recently used out, TTLs counting down on every hit.

Entries are keyed by (name in wire format, lower-cased; type; class; DO bit; CD bit) and
hold the answer twice: as records (for the query log) and pre-encoded (`PacketBody`), so a
hit is served by patching TTLs into bytes. Positive answers live for the smallest TTL among
their records; negative answers (NXDOMAIN, and NOERROR without answers) live for the
smaller of their SOA's TTL and MINIMUM (RFC 2308 section 5) and are not cached without an
SOA. SERVFAIL, REFUSED and truncated answers are never cached. An answer the upstream
gave over UDP is stored marked not `complete`: the resolver does not serve it to TCP
clients but asks again over TCP, and the whole answer then takes its place for everyone.

Each entry also keeps what the resolver needs to judge the answer without reading it again
on every hit (`CacheEntry`): where its CNAME/DNAME chain leads and its addresses
(`targets`), read once when it is stored, and the policies' verdict on them with the chain
and generation it was reached with.

DO and CD are in the key because the upstream answers differently to each: with DO it adds
RRSIGs a client without DO must not get (and without DO it leaves out what a DO client
needs); with CD a validating upstream hands out data it could not validate, which only a
client that disabled checking itself may see. CD is the query's flag bit as it sits in
`Request.flags` (`CHECKING_DISABLED` or 0), so both paths build the key without a branch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.names import dns

from misp_dns.dns.packet import encode_body
from misp_dns.dns.targets import Targets, answer_targets
from misp_dns.event import Answer, Kind, copy_with_ttl
from misp_dns.interfaces import Decision

__all__ = ["CHECKING_DISABLED", "AnswerCache", "CacheEntry", "CacheKey", "cache_lifetime"]

# (name, type, class, DO, the CD bit of the query's flags)
CacheKey = tuple[bytes, int, int, bool, int]

# The CD bit (RFC 4035 section 3.2.2) in a query's two flag octets, first octet low.
CHECKING_DISABLED = 0x1000

MAX_TTL = 86400
MAX_NEGATIVE_TTL = 3 * 3600


class CacheEntry:
    """A cached answer, when it was stored and expires, and the policies' verdict on it.

    `targets` is `answer_targets` of the answer (None when it has no chain and no address:
    nothing for a policy to judge). `verdict`, `judged_by` and `generation` belong to the
    resolver: the verdict holds while the chain that reached it is the resolver's chain and
    its generation has not moved.
    """

    __slots__ = (
        "_decided",
        "answer",
        "expires_at",
        "generation",
        "judged_by",
        "stored_at",
        "targets",
        "verdict",
    )

    def __init__(
        self, answer: Answer, stored_at: float, expires_at: float, targets: Targets | None
    ) -> None:
        self.answer = answer
        self.stored_at = stored_at
        self.expires_at = expires_at
        self.targets = targets
        self.verdict: Decision | None = None
        self.judged_by: object = None
        self.generation = -1
        self._decided: Answer | None = None

    def decided(self, decision: Decision) -> Answer:
        """The answer with `decision` on it (an allow, a monitor-mode block, a verdict): the
        same object while the decision is the same object, so a hit builds nothing."""
        kept = self._decided
        if kept is None or kept.decision is not decision:
            kept = self._decided = attrs.evolve(self.answer, decision=decision)
        return kept


def _negative_ttl(authority: Sequence[dns.RRHeader]) -> int | None:
    for record in authority:
        if record.type == dns.SOA:
            soa: Any = record.payload
            return min(record.ttl, soa.minimum, MAX_NEGATIVE_TTL)
    return None


def cache_lifetime(answer: Answer) -> int:
    """How many seconds `answer` may be served from the cache; 0 means never cache it."""
    if answer.rcode == dns.ENAME or (answer.rcode == dns.OK and not answer.answers):
        return _negative_ttl(answer.authority) or 0
    if answer.rcode != dns.OK:
        return 0
    records = [r for r in (*answer.answers, *answer.authority, *answer.additional) if r.type != 41]
    return min([MAX_TTL, *(r.ttl for r in records)])


class AnswerCache:
    """A bounded LRU cache of answers, aged by an injected clock.

    `hits` and `misses` count lookups that found a live entry and those that did not;
    `evictions` counts the entries pushed out to make room (expired ones are not counted).
    """

    def __init__(self, max_entries: int, clock: IReactorTime) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self.evictions = 0
        self.hits = 0
        self.misses = 0

    @property
    def max_entries(self) -> int:
        """How many entries the cache holds at most."""
        return self._max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: CacheKey) -> tuple[Answer, int] | None:
        """The cached answer as stored and its age in seconds, or None (absent, expired)."""
        found = self.entry(key)
        if found is None:
            return None
        return found[0].answer, found[1]

    def entry(self, key: CacheKey) -> tuple[CacheEntry, int] | None:
        """The entry and its age in seconds, or None (absent, expired)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        now = self._clock.seconds()
        if now >= entry.expires_at:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry, int(now - entry.stored_at)

    def holds(self, key: CacheKey, entry: CacheEntry, age: int) -> bool:
        """Whether `entry` is still the live entry of `key`, `age` seconds old; if so, that
        counts as a hit (as `entry` would count it), otherwise nothing is counted."""
        if self._entries.get(key) is not entry:
            return False
        now = self._clock.seconds()
        if now >= entry.expires_at or int(now - entry.stored_at) != age:
            return False
        self.hits += 1
        self._entries.move_to_end(key)
        return True

    def get(self, key: CacheKey) -> Answer | None:
        """The cached answer with its `age` set, or None when absent or expired.

        The records keep their stored TTLs (see `Answer.aged`); the packet ages itself.
        """
        found = self.lookup(key)
        if found is None:
            return None
        answer, age = found
        return attrs.evolve(answer, age=age) if age else answer

    def put(self, key: CacheKey, answer: Answer) -> CacheEntry | None:
        """Store `answer` for as long as its records allow (not at all if that is 0).

        Returns the new entry, or None when the answer is not cached.
        """
        if self._max_entries <= 0:
            return None
        ttl = cache_lifetime(answer)
        if ttl <= 0:
            return None
        if answer.rcode == dns.ENAME or not answer.answers:
            # The SOA of a negative answer is served with the negative TTL (RFC 2308 §3).
            answer = attrs.evolve(
                answer,
                authority=[
                    copy_with_ttl(r, ttl) if r.type == dns.SOA else r for r in answer.authority
                ],
            )
        name, qtype, qclass = key[:3]
        packet = encode_body(answer, name, qtype, qclass)
        cached = attrs.evolve(answer, kind=Kind.CACHED, rtt=None, packet=packet, age=0)
        now = self._clock.seconds()
        targets = answer_targets(name, answer.answers)
        entry = CacheEntry(cached, now, now + ttl, targets)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1
        return entry
