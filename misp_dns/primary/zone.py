"""The content of the RPZ zone, built from the policy chain's snapshots (pure functions).

A Response Policy Zone (draft-vixie-dnsop-dns-rpz, as BIND and Unbound read it) says with
each owner name below the zone's apex what a resolver does with a query:

- a `domain` indicator `evil.example` becomes `evil.example CNAME .` and
  `*.evil.example CNAME .` (the name and every name below it), a `hostname` indicator the
  exact name only;
- a response-IP network becomes an rpz-ip trigger: `32.4.3.2.1.rpz-ip CNAME .` for
  1.2.3.4, `24.0.2.0.192.rpz-ip` for 192.0.2.0/24, `128.1.zz.db8.2001.rpz-ip` for
  2001:db8::1;
- the action is the CNAME target: `.` is NXDOMAIN, `*.` NODATA, `rpz-passthru.` PASSTHRU
  (for the names of allowlist policies).

misp-dns's chain lets the first policy with an opinion decide; a zone holds one record
per owner and prefers exact names to wildcards. So that a zone consumer decides what
misp-dns decides, a name that an earlier policy already matches is left out of a later
policy's records (and so is its wildcard, when an earlier policy covers the names below).
Each record's TTL is its policy's `blocking_answer_ttl`.

With traceability, each indicator also gets `<trigger>.misp-trace TXT "event_uuid=..."
"attribute_uuid=..." "event_id=..."`: a zone cannot hold a TXT beside a CNAME at one
owner, and the `misp-trace` top-level label is never a name a client resolves.

`ZoneContent.build(feeds, traceability)` builds the content; `records()` lists it as
`Record`s (owner relative to the apex); `diff(old, new)` gives an IXFR delta.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import attrs

from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.indicator import IpEntry

__all__ = [
    "NODATA",
    "NXDOMAIN",
    "PASSTHRU",
    "Entry",
    "Feed",
    "Record",
    "Rule",
    "ZoneContent",
    "diff",
    "diff_in_steps",
    "rpz_ip_owner",
]

CNAME = 5
TXT = 16
#: CNAME targets in wire form: the RPZ actions.
NXDOMAIN = b"\x00"
NODATA = b"\x01*\x00"
PASSTHRU = b"\x0crpz-passthru\x00"
TRACE_LABEL = "misp-trace"
#: Top-level labels of the zone that RPZ gives a meaning other than a query name.
_SPECIAL = ("rpz-ip", "rpz-nsip", "rpz-nsdname", "rpz-client-ip", "rpz-drop", TRACE_LABEL)
# Names are checked against this many bytes (a wire name is at most 255).
_MAX_NAME = 255
#: Names handled between two yields of a step-wise build or diff (a few ms of work).
STEP = 2000
#: The dicts a content's entries are spread over (see `ZoneContent`).
SHARDS = 256


@attrs.frozen
class Rule:
    """What a trigger does: its CNAME target (the action) and its TTL."""

    target: bytes
    ttl: int


@attrs.frozen
class Entry:
    """One owner's triggers: the exact name, the names below it (`*.`), the trace TXT."""

    exact: Rule | None
    below: Rule | None
    trace: bytes | None = None


@attrs.frozen
class Record:
    """One record of the zone; `owner` is relative to the apex ("" is the apex)."""

    owner: str
    rtype: int
    ttl: int
    rdata: bytes


@attrs.frozen
class Feed:
    """One policy's contribution: its snapshot, its rule, whether its addresses count."""

    names: DomainSet
    rule: Rule
    response_ips: bool = False
    traced: bool = True


def rpz_ip_owner(entry: IpEntry) -> str:
    """The rpz-ip trigger of a network: prefix length, then the address reversed."""
    if entry.version == 4:
        octets = str(ipaddress.IPv4Address(entry.start)).split(".")
        return f"{entry.length}.{'.'.join(reversed(octets))}.rpz-ip"
    text = ipaddress.IPv6Address(entry.start).compressed
    if "::" in text:
        left, right = text.split("::")
        groups = [*(left.split(":") if left else []), "zz", *(right.split(":") if right else [])]
    else:
        groups = text.split(":")
    return f"{entry.length}.{'.'.join(reversed(groups))}.rpz-ip"


def _trace(event_uuid: str, attribute_uuid: str, event_id: str) -> bytes | None:
    strings = [
        f"{key}={value}"
        for key, value in (
            ("event_uuid", event_uuid),
            ("attribute_uuid", attribute_uuid),
            ("event_id", event_id),
        )
        if value
    ]
    if not strings:
        return None
    encoded = [s.encode("ascii", "replace")[:255] for s in strings]
    return b"".join(bytes([len(s)]) + s for s in encoded)


class ZoneContent:
    """The zone's triggers by owner name (relative to the apex), immutable once built.

    `digest` identifies the inputs it was built from (snapshots, rules, traceability): an
    unchanged digest means an unchanged zone. `skipped` counts names left out because they
    would not fit below the apex or would read as an RPZ special name.

    The entries are spread over `SHARDS` dicts by the names' hash: a dict of a million names
    that grows copies its whole table in one go (tens of ms, between two answers), a
    shard's growth costs a few hundred times less.
    """

    def __init__(self, shards: Sequence[dict[str, Entry]], digest: str, skipped: int = 0) -> None:
        assert len(shards) == SHARDS
        self.shards = tuple(shards)
        self.digest = digest
        self.skipped = skipped

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def items(self) -> Iterator[tuple[str, Entry]]:
        """Every (owner, entry)."""
        for shard in self.shards:
            yield from shard.items()

    @staticmethod
    def digest_of(zone: str, feeds: Sequence[Feed], traceability: bool) -> str:
        """What identifies a zone built from `feeds`: their snapshots' digests and rules."""
        hasher = hashlib.blake2b(digest_size=16)
        hasher.update(f"{zone}|{traceability}".encode())
        for feed in feeds:
            hasher.update(
                b"|%s|%d|%d|%d|%s"
                % (
                    feed.rule.target,
                    feed.rule.ttl,
                    feed.response_ips,
                    feed.traced,
                    feed.names.digest.encode(),
                )
            )
        return hasher.hexdigest()

    @classmethod
    def build(cls, zone: str, feeds: Sequence[Feed], traceability: bool) -> ZoneContent:
        """The content for `feeds` in chain order, built at once."""
        steps = cls.build_in_steps(zone, feeds, traceability)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: ZoneContent = done.value
                return result

    @classmethod
    def build_in_steps(
        cls, zone: str, feeds: Sequence[Feed], traceability: bool, step: int = STEP
    ) -> Generator[None, None, ZoneContent]:
        """The same as `build`, yielding every `step` names so a cooperator can interleave
        other work; the generator's return value is the content."""
        shards: list[dict[str, Entry]] = [{} for _ in range(SHARDS)]
        skipped = 0
        longest = _MAX_NAME - len(zone) - 5
        for index, feed in enumerate(feeds):
            earlier = [f.names for f in feeds[:index]]
            traced = traceability and feed.traced
            # Without trace records most entries are alike: one object serves them all.
            alike = {
                (True, True): Entry(feed.rule, feed.rule),
                (True, False): Entry(feed.rule, None),
            }
            items: Iterator[Any] = (
                ((e.name, e.subdomains, e) for e in feed.names.entries())
                if traced
                else ((name, subdomains, None) for name, subdomains in feed.names.names())
            )
            for count, (name, subdomains, item) in enumerate(items, start=1):
                if count % step == 0:
                    yield None
                if len(name) > longest or name.rsplit(".", 1)[-1] in _SPECIAL:
                    skipped += 1
                    continue
                exact = True
                below = subdomains
                if earlier:
                    exact = not any(e.match(name) for e in earlier)
                    below = subdomains and not any(e.match("*." + name) for e in earlier)
                    if not (exact or below):
                        continue
                entries = shards[hash(name) % SHARDS]
                old = entries.get(name)
                if old is None and item is None:
                    entries[name] = alike[exact, below] if exact else Entry(None, feed.rule)
                    continue
                trace = None
                if item is not None and len(name) <= longest - 9:
                    trace = _trace(item.event_uuid, item.attribute_uuid, item.event_id)
                rule_exact = feed.rule if exact else None
                rule_below = feed.rule if below else None
                if old is not None:
                    rule_exact, rule_below = old.exact or rule_exact, old.below or rule_below
                    trace = old.trace or trace
                entries[name] = Entry(rule_exact, rule_below, trace)
            if feed.response_ips:
                for ip in feed.names.ips.entries():
                    owner = rpz_ip_owner(ip)
                    entries = shards[hash(owner) % SHARDS]
                    if owner in entries:
                        continue
                    trace = None
                    if traced:
                        trace = _trace(ip.event_uuid, ip.attribute_uuid, ip.event_id)
                    entries[owner] = Entry(feed.rule, None, trace)
        return cls(shards, cls.digest_of(zone, feeds, traceability), skipped)

    def records(self) -> Iterator[Record]:
        """Every trigger record (not the SOA and NS, which the transfer adds)."""
        for name, entry in self.items():
            yield from _entry_records(name, entry)


def _entry_records(name: str, entry: Entry) -> Iterator[Record]:
    if entry.exact is not None:
        yield Record(name, CNAME, entry.exact.ttl, entry.exact.target)
    if entry.below is not None:
        yield Record("*." + name, CNAME, entry.below.ttl, entry.below.target)
    if entry.trace is not None:
        rule = entry.exact or entry.below
        assert rule is not None
        yield Record(f"{name}.{TRACE_LABEL}", TXT, rule.ttl, entry.trace)


def diff(old: ZoneContent, new: ZoneContent) -> tuple[list[Record], list[Record]]:
    """The records to delete and to add to turn `old` into `new` (an IXFR delta)."""
    steps = diff_in_steps(old, new)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: tuple[list[Record], list[Record]] = done.value
            return result


def diff_in_steps(
    old: ZoneContent, new: ZoneContent, step: int = STEP
) -> Generator[None, None, tuple[list[Record], list[Record]]]:
    """The same as `diff`, yielding every `step` names; the return value is the delta."""
    deleted: list[Record] = []
    added: list[Record] = []
    count = 0
    for old_entries, new_entries in zip(old.shards, new.shards, strict=True):
        for name, entry in old_entries.items():
            count += 1
            if count % step == 0:
                yield None
            now = new_entries.get(name)
            if now is entry or now == entry:
                continue
            before = set(_entry_records(name, entry))
            after = set(_entry_records(name, now)) if now is not None else set()
            deleted.extend(r for r in _entry_records(name, entry) if r not in after)
            if now is not None:
                added.extend(r for r in _entry_records(name, now) if r not in before)
        for name, entry in new_entries.items():
            count += 1
            if count % step == 0:
                yield None
            if name not in old_entries:
                added.extend(_entry_records(name, entry))
    return deleted, added
