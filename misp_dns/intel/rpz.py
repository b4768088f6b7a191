"""A Response Policy Zone read as policy: triggers, actions and local data.

The zone's records are read the way BIND reads an RPZ (draft-vixie-dnsop-dns-rpz): every
owner name below the zone's apex is a trigger, and the records at it say what to do.

Triggers (the owner name, relative to the zone):

- `name` (a QNAME trigger) matches the query name `name` exactly;
- `*.name` matches every name below `name` (not `name` itself); an exact trigger wins over
  a wildcard, and a longer wildcard over a shorter one;
- `<prefix>.<reversed address>.rpz-ip` matches an address in an answer's A or AAAA
  records: `32.1.2.0.192.rpz-ip` is 192.0.2.1/32, `48.zz.1.db8.2001.rpz-ip` is
  2001:db8:1::/48 (`zz` stands for the `::` run); the longest prefix wins;
- `rpz-client-ip`, `rpz-nsip` and `rpz-nsdname` triggers are counted and not applied.

Actions (the records at the trigger):

- `CNAME .` NXDOMAIN, `CNAME *.` NODATA, `CNAME rpz-passthru.` PASSTHRU (the name is let
  through, no later policy blocks it), `CNAME rpz-drop.` DROP (no answer at all);
  `CNAME rpz-tcp-only.` is counted and not applied;
- any other CNAME is local data: the query name becomes an alias of the target (a walled
  garden); a target `*.garden.example` becomes `<query name>.garden.example`;
- other records (A, AAAA, TXT, ...) are local data: the answer to a question of their type.

An `RpzZone` is immutable and built at once from all of a zone's records (`from_records`),
so a zone that does not read as a whole is never half applied.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Iterable

import attrs

from misp_dns.intel.indicator import IpEntry
from misp_dns.intel.ipset import IpSet
from misp_dns.intel.zonedata import (
    CNAME,
    SOA,
    Record,
    ZoneDataError,
    soa_fields,
    wire_to_name,
)

__all__ = ["IpNetwork", "Match", "RpzAction", "RpzZone", "Rule"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RpzAction(enum.Enum):
    """What a trigger does to the query."""

    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    PASSTHRU = "passthru"
    DROP = "drop"
    LOCAL_DATA = "local-data"


@attrs.frozen(cache_hash=True)
class Rule:
    """A trigger's action and, for local data, its records as (type, TTL, RDATA)."""

    trigger: str
    action: RpzAction
    ttl: int
    local_data: tuple[tuple[int, int, bytes], ...] = ()


@attrs.frozen
class Match:
    """The rule a query or an address matched, and how: "qname" or "ip"."""

    rule: Rule
    trigger: str


_SPECIAL_TARGETS = {
    "": RpzAction.NXDOMAIN,
    "*": RpzAction.NODATA,
    "rpz-passthru": RpzAction.PASSTHRU,
    "rpz-drop": RpzAction.DROP,
}
_UNSUPPORTED_TRIGGERS = ("rpz-client-ip", "rpz-nsip", "rpz-nsdname")


def _ip_trigger(relative: str) -> IpNetwork:
    """The network of an `rpz-ip` trigger's labels (without `.rpz-ip`)."""
    labels = relative.split(".")
    prefix_text, reversed_parts = labels[0], labels[1:][::-1]
    if not prefix_text.isdigit():
        raise ValueError(relative)
    prefix = int(prefix_text)
    if len(reversed_parts) == 4 and all(p.isdigit() for p in reversed_parts):
        return ipaddress.IPv4Network(f"{'.'.join(reversed_parts)}/{prefix}")
    if reversed_parts.count("zz") > 1:
        raise ValueError(relative)
    text = ":".join("" if part == "zz" else part for part in reversed_parts)
    if reversed_parts[:1] == ["zz"]:
        text = ":" + text
    if reversed_parts[-1:] == ["zz"]:
        text += ":"
    return ipaddress.IPv6Network(f"{text}/{prefix}")


def _rule_for(owner_relative: str, records: list[Record]) -> Rule | None:
    """The rule of the records at one trigger; None for a rule misp-dns does not apply."""
    ttl = min(r.ttl for r in records)
    cnames = [r for r in records if r.type == CNAME]
    if cnames:
        if len(records) != 1:
            raise ZoneDataError(f"{owner_relative}: a CNAME and other data at one name")
        target = wire_to_name(cnames[0].rdata, 0)[0]
        if target == "rpz-tcp-only":
            return None
        action = _SPECIAL_TARGETS.get(target)
        if action is not None:
            return Rule(owner_relative, action, ttl)
    return Rule(
        owner_relative,
        RpzAction.LOCAL_DATA,
        ttl,
        tuple(sorted((r.type, r.ttl, r.rdata) for r in records)),
    )


@attrs.frozen(eq=False)
class RpzZone:
    """An RPZ zone's SOA timers, records and rules (see the module docstring).

    `records` are the zone's records as served (for saving and IXFR); `exact`, `wildcards`
    (keyed by the name below the `*`) and `networks` (most specific first) are its rules;
    `skipped` counts the triggers not applied, by kind. The networks are looked up through
    an `IpSet` (`ip_rules` maps its networks, as it writes them, to their rules).
    """

    zone: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int
    records: tuple[Record, ...]
    exact: dict[str, Rule]
    wildcards: dict[str, Rule]
    networks: tuple[tuple[IpNetwork, Rule], ...]
    skipped: dict[str, int]
    ipset: IpSet = attrs.field(init=False)
    ip_rules: dict[str, Rule] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        entries = [
            IpEntry(network.version, int(network.network_address), network.prefixlen)
            for network, _ in self.networks
        ]
        object.__setattr__(self, "ipset", IpSet.build(entries))
        rules = {
            entry.network: rule for entry, (_, rule) in zip(entries, self.networks, strict=True)
        }
        object.__setattr__(self, "ip_rules", rules)

    @classmethod
    def from_records(cls, zone: str, records: Iterable[Record]) -> RpzZone:
        """The zone `zone` of `records`, or `ZoneDataError` when it is not a usable zone."""
        zone = zone.lower().rstrip(".")
        unique: dict[tuple[str, int, bytes], Record] = {}
        for record in records:
            unique.setdefault(record.key, record)
        held = tuple(unique.values())
        soas = [r for r in held if r.type == SOA and r.owner == zone]
        if len(soas) != 1:
            raise ZoneDataError(f"zone {zone!r} has {len(soas)} SOA records at its apex")
        _, _, serial, refresh, retry, expire, minimum = soa_fields(soas[0].rdata)
        suffix = "." + zone if zone else ""
        by_owner: dict[str, list[Record]] = {}
        skipped: Counter[str] = Counter()
        for record in held:
            if record.owner == zone:
                continue  # the apex's SOA and NS (and anything else there) trigger nothing
            if not record.owner.endswith(suffix):
                skipped["out of zone"] += 1  # as BIND does: ignored, not fatal
                continue
            relative = record.owner[: -len(suffix)] if suffix else record.owner
            by_owner.setdefault(relative, []).append(record)
        exact: dict[str, Rule] = {}
        wildcards: dict[str, Rule] = {}
        networks: list[tuple[IpNetwork, Rule]] = []
        for relative, at_owner in by_owner.items():
            kind = relative.rsplit(".", 1)[-1]
            if kind in _UNSUPPORTED_TRIGGERS:
                skipped[kind] += 1
                continue
            rule = _rule_for(relative, at_owner)
            if rule is None:
                skipped["rpz-tcp-only"] += 1
                continue
            if kind == "rpz-ip":
                try:
                    network = _ip_trigger(relative[: -len(".rpz-ip")])
                except ValueError:
                    skipped["bad rpz-ip"] += 1
                    continue
                networks.append((network, rule))
            elif relative.startswith("*."):
                wildcards[relative[2:]] = rule
            elif relative == "*":
                wildcards[""] = rule
            else:
                exact[relative] = rule
        networks.sort(key=lambda item: (-item[0].prefixlen, item[0].version))
        return cls(
            zone,
            serial,
            refresh,
            retry,
            expire,
            minimum,
            held,
            exact,
            wildcards,
            tuple(networks),
            dict(skipped),
        )

    @property
    def soa(self) -> Record:
        """The zone's SOA record."""
        return next(r for r in self.records if r.type == SOA and r.owner == self.zone)

    @property
    def rule_count(self) -> int:
        """How many triggers the zone applies."""
        return len(self.exact) + len(self.wildcards) + len(self.networks)

    def match_name(self, name: str) -> Match | None:
        """The rule for query name `name` (lower-case, no trailing dot), or None."""
        rule = self.exact.get(name)
        if rule is not None:
            return Match(rule, "qname")
        wildcards = self.wildcards
        if not wildcards:
            return None
        parent = name
        while parent:
            dot = parent.find(".")
            parent = "" if dot < 0 else parent[dot + 1 :]
            rule = wildcards.get(parent)
            if rule is not None:
                return Match(rule, "qname")
        return None

    def match_address(self, address: bytes) -> Match | None:
        """The rule for an answer's address (4 or 16 packed bytes; the longest prefix wins)."""
        if not self.networks:
            return None
        found = self.ipset.match(address)
        if found is None:
            return None
        return Match(self.ip_rules[found.network], "ip")
