"""The `misp` and `misp-feed` policies: block the domains a MISP instance marks as malicious.

`misp` reads attributes from a MISP server's REST API (`/attributes/restSearch`), `misp-feed`
from a MISP feed (a directory or URL with `manifest.json`). Both keep the indicators in an
`IndicatorUpdater` (disk cache at start, refresh every `update_interval`) and answer each
query from its current snapshot:

- a `domain` or `domain|ip` indicator blocks the name and every name below it, a `hostname`
  indicator the name alone;
- the blocked answer is NXDOMAIN with an SOA, or for TXT the report
  `source=misp-connector;domain=<indicator>` (`source=misp-feed` for a feed), with EDE 15
  when the query had EDNS;
- an answer is blocked the same way when its CNAME/DNAME chain passes through a listed
  name (report `source=misp-connector;domain=<indicator>;via=cname`) or, with
  `block_response_ips = true`, when its A/AAAA records hold an address in a listed network
  (`ip-dst`, `ip-src`, their `|port` forms, the address half of `domain|ip`; report
  `source=misp-connector;ip=<address or range>`);
- `enable_blocking = false` is monitor mode: nothing is blocked, and the decision still
  reaches the query log with `"enforced": false`;
- with `sightings = true` (`misp` only), blocks are posted back to MISP as sightings by a
  `SightingsReporter` (`misp_dns.intel.sightings`), which runs beside the updater; the
  responder's tally hands it the blocks (`misp_dns.policy.sightings`).

An installed indicator source (entry-point group `misp_dns.sources`) becomes a policy type
of the same shape: `source_policy_type` wraps it in the same updater and policy.

Every option is described in `misp_dns.intel.misp_options`. Example:

    [[policy]]
    type = "misp"
    server_url = "https://misp.example.com"
    api_key_file = "/etc/misp-dns/misp.key"
"""

from __future__ import annotations

import hashlib
import ipaddress
import os

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet import defer
from zope.interface import implementer

from misp_dns.http import make_http_client
from misp_dns.intel.domainset import DomainSet, Match
from misp_dns.intel.feed import MispFeedSource
from misp_dns.intel.follower import SnapshotFollower
from misp_dns.intel.ipset import IpMatch
from misp_dns.intel.misp_client import MispClient
from misp_dns.intel.misp_options import MispFeedOptions, MispOptions
from misp_dns.intel.sightings import SightingsReporter
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import (
    TRIGGER_CNAME,
    TRIGGER_IP,
    TRIGGER_QNAME,
    Action,
    BlockingOptions,
    BuildContext,
    ConfigError,
    Decision,
    IAnswerPolicy,
    IIndicatorSource,
    PluginType,
    PolicyQuery,
    Provenance,
)

__all__ = ["MispBlockingPolicy", "feed_plugin", "misp_plugin", "source_policy_type"]

IN = 1
MISP_SOURCE = "misp-connector"
DECISION_MEMO = 131072
_UNKNOWN = object()
FEED_SOURCE = "misp-feed"


@implementer(IAnswerPolicy)
class MispBlockingPolicy:
    """Blocks the names in its updater's current snapshot, asked or reached by an answer,
    and, with `block_response_ips`, answers holding its listed addresses."""

    def __init__(
        self,
        name: str,
        source: str,
        options: BlockingOptions,
        updater: IndicatorUpdater | SnapshotFollower,
        sightings: SightingsReporter | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.options = options
        self.updater = updater
        self.sightings = sightings
        self.service: IService = updater
        if sightings is not None:
            self.service = MultiService()
            updater.setServiceParent(self.service)
            sightings.setServiceParent(self.service)
        # Decisions are immutable values, remembered per query name and per matched
        # indicator of the current snapshot. A new snapshot starts afresh, but a decision
        # equal to one of the previous snapshot is that same object again: a refresh that
        # changed little leaves behind little garbage, and the memos keyed by decision
        # further down (blocked answers, EDE options, log fragments) stay warm.
        self._decided_for: DomainSet | None = None
        self._by_name: dict[str, Decision | None] = {}
        self._by_indicator: dict[str, Decision] = {}
        self._previous: dict[str, Decision] = {}

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once a snapshot is served (from disk or the source) or the first fetch failed."""
        return self.updater.whenReady()

    def describe(self) -> str:
        """One line for the start-up log: where the indicators come from, whether they are
        blocked or only logged (monitor mode), and how often they are refreshed."""
        options = self.options
        mode = (
            "blocking"
            if options.enable_blocking
            else "monitor mode (matches are logged, nothing is blocked)"
        )
        return (
            f"{self.updater.label}: {mode}; refreshed every"
            f" {_duration(options.update_interval)}, indicators up to"
            f" {_duration(options.max_ioc_age)} old"
        )

    def decide(self, query: PolicyQuery) -> Decision | None:
        """BLOCK (or, in monitor mode, a not enforced BLOCK) for a listed name, else None.

        Only class IN questions are decided: MISP's indicators are Internet names.
        """
        return self.decide_name(query.name, query.qclass)

    def decide_name(self, name: str, qclass: int) -> Decision | None:
        """`decide` for a question of `name` and `qclass`: nothing else of it counts."""
        if qclass != IN:
            return None
        snapshot = self.updater.snapshot
        if snapshot is not self._decided_for:
            self._previous = self._by_indicator
            self._decided_for, self._by_name, self._by_indicator = snapshot, {}, {}
        by_name = self._by_name
        decision = by_name.get(name, _UNKNOWN)
        if decision is _UNKNOWN:
            match = snapshot.match(name)
            decision = None if match is None else self._for_indicator(match)
            if len(by_name) >= DECISION_MEMO:
                by_name.clear()
            by_name[name] = decision
        return decision  # type: ignore[return-value]

    @property
    def generation(self) -> int:
        """Grows with every snapshot the updater serves (see `IAnswerPolicy`)."""
        return self.updater.generation

    def decide_answer(
        self, query: PolicyQuery, names: tuple[str, ...], addresses: tuple[bytes, ...]
    ) -> Decision | None:
        """BLOCK (or not enforced, in monitor mode) for an answer whose chain reaches a
        listed name or, with `block_response_ips`, whose addresses are listed; else None.

        The chain's names come first, in chain order, then the addresses in record order.
        """
        if query.qclass != IN:
            return None
        snapshot = self.updater.snapshot
        for name in names:
            match = snapshot.match(name)
            if match is not None:
                return self.chain_decision(match)
        if self.options.block_response_ips:
            for address in addresses:
                found = snapshot.match_ip(address)
                if found is not None:
                    return self.address_decision(found)
        return None

    def _for_indicator(self, match: Match) -> Decision:
        by_indicator = self._by_indicator
        decision = by_indicator.get(match.name)
        if decision is None:
            if len(by_indicator) >= DECISION_MEMO:
                by_indicator.clear()
            decision = self.decision(match)
            earlier = self._previous.get(match.name)
            if earlier == decision:
                decision = earlier
            by_indicator[match.name] = decision
        return decision

    def made(self, decision: Decision) -> bool:
        """True when `decision` is one this policy gives, for its current snapshot (or,
        as the same object, for the one before): which policy of a chain blocked a query."""
        if decision.source != self.source:
            return False
        indicator = decision.indicator
        if self._by_indicator.get(indicator) is decision or (
            self._previous.get(indicator) is decision
        ):
            return True
        snapshot = self.updater.snapshot
        if decision.trigger == TRIGGER_IP:
            found = snapshot.match_ip(_first_address(indicator))
            return found is not None and self.address_decision(found) == decision
        match = snapshot.match(indicator)
        if match is None or match.name != indicator:
            return False
        made = self.chain_decision(match) if decision.trigger == TRIGGER_CNAME else None
        return (made or self.decision(match)) == decision

    def decision(self, match: Match) -> Decision:
        """The decision for a matched indicator, with what the answer and the log need."""
        return self._block(match.name, f"domain={match.name}", match.provenance)

    def chain_decision(self, match: Match) -> Decision:
        """The decision for an indicator the answer's CNAME/DNAME chain reached."""
        return attrs.evolve(
            self.decision(match),
            report=f"source={self.source};domain={match.name};via=cname",
            trigger=TRIGGER_CNAME,
        )

    def address_decision(self, match: IpMatch) -> Decision:
        """The decision for a listed network holding an address of the answer."""
        return self._block(
            match.network, f"ip={match.network}", match.provenance, trigger=TRIGGER_IP
        )

    def _block(
        self, indicator: str, matched: str, provenance: Provenance, trigger: str = TRIGGER_QNAME
    ) -> Decision:
        """A BLOCK of this policy for `indicator`, its report `source=<source>;<matched>`."""
        options = self.options
        return Decision(
            Action.BLOCK,
            self.source,
            indicator=indicator,
            report=f"source={self.source};{matched}",
            ttl=options.blocking_answer_ttl,
            add_txt_report=options.allow_txt_blocking_report,
            add_ede=options.add_extended_dns_error,
            enforced=options.enable_blocking,
            provenance=provenance,
            trigger=trigger,
        )


def snapshot_path(state_dir: str, kind: str, location: str) -> str:
    """Where the snapshot of one source lives: one file per source, named by its location."""
    digest = hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]
    return os.path.join(state_dir, f"{kind}-{digest}.snapshot")


def _first_address(network: str) -> bytes:
    """The packed first address of `network` as an `IpMatch` writes it ("192.0.2.0/24")."""
    return ipaddress.ip_network(network, strict=False).network_address.packed


def _duration(seconds: float) -> str:
    """`seconds` as the config writes it: 90 s is "90s", 7200 s "2h"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _policy(
    name: str,
    source: str,
    options: BlockingOptions,
    indicators: IIndicatorSource,
    context: BuildContext,
    location: str,
    label: str,
    sightings: SightingsReporter | None = None,
) -> MispBlockingPolicy:
    state_path = snapshot_path(context.state_dir, name, location)
    sharing = context.sharing
    updater: IndicatorUpdater | SnapshotFollower
    if sharing.follow:
        updater = SnapshotFollower(
            label, state_path, clock=context.reactor, enforcing=options.enable_blocking
        )
    else:
        updater = IndicatorUpdater(
            label,
            indicators,
            clock=context.reactor,
            interval=options.update_interval,
            max_age=options.max_ioc_age,
            state_path=state_path,
            enforcing=options.enable_blocking,
            response_ips=options.block_response_ips,
            saved=sharing.saved,
        )
    return MispBlockingPolicy(name, source, options, updater, sightings)


def _build_misp(options: MispOptions, context: BuildContext) -> MispBlockingPolicy:
    http = make_http_client(context.reactor, verify_tls=not options.disable_tls_validation)
    client = MispClient.from_options(options, http, context.reactor)
    location = options.server_url
    sightings = None
    if options.sightings:
        sightings = SightingsReporter.from_options(options, client.api_key, http, context.reactor)
    return _policy(
        "misp", MISP_SOURCE, options, client, context, location, f"misp {location}", sightings
    )


def _build_feed(options: MispFeedOptions, context: BuildContext) -> MispBlockingPolicy:
    source = MispFeedSource.from_options(options, context.reactor)
    label = f"misp-feed {options.url}"
    return _policy("misp-feed", FEED_SOURCE, options, source, context, options.url, label)


def source_policy_type(source: PluginType) -> PluginType:
    """The blocking policy type fed by an installed indicator source, named like the source.

    The source's options class extends `BlockingOptions`, so the table that configures the
    source also sets the refresh interval, the answer TTL, monitor mode and the like; the
    report says `source=<type name>`.
    """

    def build(options: BlockingOptions, context: BuildContext) -> MispBlockingPolicy:
        indicators = source.build(options, context)
        if not IIndicatorSource.providedBy(indicators):
            raise ConfigError([f"type {source.name!r} did not build an IIndicatorSource"])
        # The snapshot file is named by a digest of the whole table, so two tables of the
        # same source type keep separate caches.
        return _policy(
            source.name, source.name, options, indicators, context, repr(options), source.name
        )

    return PluginType(source.name, source.options, build)


misp_plugin = PluginType("misp", MispOptions, _build_misp)
feed_plugin = PluginType("misp-feed", MispFeedOptions, _build_feed)
