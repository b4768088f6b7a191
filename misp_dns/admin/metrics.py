"""The Prometheus metrics: counted as plain numbers while serving, read at scrape time.

Nothing on the answer path touches prometheus_client. `QueryCounter.count`, the
responder's `tally`, adds one to a dict entry per answered query (and one more per blocked
one, or per one monitor mode would have blocked), without a query event being built for it;
everything else is already counted by the part that does the work (the responder, the
cache, the forwarder, the updaters, the exporter).
`ServerCollector` is a custom collector that reads those numbers when /metrics is scraped,
in a registry of its own (never prometheus_client's global one), so two servers in one
process do not mix.

Every name starts with `misp_dns_`. `response_type` is the query log's (`Blocked`, `Cached`,
`Recursive`, ...); a query type misp-dns has no name for is labelled `other`.

| metric | type | labels |
|---|---|---|
| `queries_total` | counter | `protocol` (udp, tcp), `qtype` (A, ..., other), `response_type` |
| `blocked_total` | counter | `source` (the report's source), `trigger` (`qname`, `cname`, `ip`) |
| `would_block_total` | counter | `source`, `trigger` (monitor mode: let through, not blocked) |
| `cache_hits_total`, `cache_misses_total`, `cache_evictions_total` | counter | |
| `cache_entries` | gauge | |
| `upstream_seconds` | histogram | |
| `upstream_failures_total` | counter | `upstream` (failed attempts, per upstream) |
| `upstream_unanswered_total` | counter | (questions no upstream answered: SERVFAIL) |
| `indicators` | gauge | `policy` (`policy[1]`), `source`, `type` (`domain`, `hostname`) |
| `refresh_last_success_timestamp` | gauge | `policy`, `source` (absent before a good refresh) |
| `refresh_duration_seconds` | gauge | `policy`, `source` (the last refresh, good or not) |
| `refresh_failures_total` | counter | `policy`, `source` |
| `sightings_sent_total`, `sightings_failed_total` | counter | `policy`, `source` (`sightings`) |
| `sightings_dropped_total` | counter | `policy`, `source` |
| `sightings_pending` | gauge | `policy`, `source` |
| `export_dropped_total` | counter | `sink` (`export[0] (jsonl)`) |
| `export_queue_dropped_total`, `exported_total` | counter | |
| `export_queued` | gauge | |
| `rate_limited_total`, `dropped_packets_total`, `format_errors_total` | counter | |
| `policy_failures_total` | counter | (queries a raising policy answered SERVFAIL) |
| `tcp_connections` | gauge | |
| `tcp_rejected_total` | counter | (connections closed at `tcp_max_connections`) |
| `tcp_rejected_per_client_total` | counter | (closed at `tcp_max_connections_per_client`) |
| `descriptor_shortages_total` | counter | `operation` (`socket`, `accept`: no descriptor left) |
| `worker_queries_total` | counter | `worker` (1, 2, ...: a group's supervisor, docs/workers.md) |
| `info` | gauge (1) | `version` |

prometheus_client's own process collector adds `process_*` (memory, CPU, open files).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from misp_dns import __version__
from misp_dns.admin.api import ServerParts, policy_label, trigger_of
from misp_dns.event import Answer, Kind
from misp_dns.intel.sightings import SightingsReporter
from misp_dns.interfaces import Action, Decision
from misp_dns.policy.misp import MispBlockingPolicy
from misp_dns.qtypes import qtype_label

__all__ = ["QueryCounter", "ServerCollector", "make_registry"]

PREFIX = "misp_dns_"


class QueryCounter:
    """Counts answered queries by protocol, type and response type, and blocks by cause.

    `count` is the responder's `tally`: it runs on the answer path for every query, so it
    only adds one to a dict entry keyed by values whose hash is already known or cheap (the
    transport, the type as its two wire bytes, the response type's text), and, for a
    blocked answer, one to an entry keyed by the decision's id. The names of the types and
    the decisions' sources and triggers are worked out at scrape time, on the reactor
    thread too, so nothing changes while they are read.
    """

    def __init__(self) -> None:
        #: (transport, question type as 2 bytes, response type) -> answered queries
        self.queries: dict[tuple[str, bytes, str], int] = {}
        #: (source, trigger) -> blocked queries, up to the last `blocked_by_cause()`
        self._blocked: dict[tuple[str, str], int] = {}
        #: (source, trigger) -> queries a policy in monitor mode would have blocked
        self._monitored: dict[tuple[str, str], int] = {}
        # Blocks (and monitor-mode blocks) since then, by id of the decision; the decisions
        # are kept so that the ids stay theirs. Hashing a decision would run attrs' __hash__
        # in Python.
        self._recent: dict[int, int] = {}
        self._recent_monitored: dict[int, int] = {}
        self._decisions: dict[int, Decision] = {}

    def count(self, transport: str, question: bytes, answer: Answer) -> None:
        """Count one answered query (the responder's `tally`)."""
        kind = answer.kind
        key = (transport, question[-4:-2], kind._value_)
        queries = self.queries
        queries[key] = queries.get(key, 0) + 1
        decision = answer.decision
        if decision is None:
            return
        if kind is _BLOCKED or kind is _DROPPED:
            recent = self._recent
        elif decision.action is _BLOCK and not decision.enforced:
            recent = self._recent_monitored
        else:
            return
        ident = id(decision)
        seen = recent.get(ident)
        if seen is None:
            self._decisions[ident] = decision
            recent[ident] = 1
        else:
            recent[ident] = seen + 1

    def by_label(self) -> dict[tuple[str, str, str], int]:
        """The query counts by (protocol, qtype label, response type)."""
        counts: dict[tuple[str, str, str], int] = {}
        for (transport, qtype, kind), count in self.queries.items():
            label = (transport, qtype_label(int.from_bytes(qtype, "big")), kind)
            counts[label] = counts.get(label, 0) + count
        return counts

    def blocked_by_cause(self) -> dict[tuple[str, str], int]:
        """The blocked queries by (source, trigger) since start."""
        self._settle()
        return dict(self._blocked)

    def monitored_by_cause(self) -> dict[tuple[str, str], int]:
        """The queries monitor mode let through but would have blocked, by (source, trigger)."""
        self._settle()
        return dict(self._monitored)

    def _settle(self) -> None:
        """Move the counts kept by decision into the counts by (source, trigger)."""
        for recent, totals in (
            (self._recent, self._blocked),
            (self._recent_monitored, self._monitored),
        ):
            for ident, count in recent.items():
                decision = self._decisions[ident]
                cause = (decision.source, trigger_of(decision))
                totals[cause] = totals.get(cause, 0) + count
            recent.clear()
        self._decisions.clear()


_BLOCKED = Kind.BLOCKED
_DROPPED = Kind.DROPPED
_BLOCK = Action.BLOCK


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


class ServerCollector:
    """A prometheus_client collector reading the server's own counters at scrape time."""

    def __init__(self, parts: ServerParts, queries: QueryCounter) -> None:
        self.parts = parts
        self.queries = queries

    def describe(self) -> list[Metric]:
        """Nothing: the registry must not collect at registration to learn the names."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every `misp_dns_*` family, from the counters as they are now."""
        yield from self._queries()
        yield from self._cache()
        yield from self._upstream()
        yield from self._policies()
        yield from self._export()
        yield from self._serving()
        yield from self._workers()
        info = GaugeMetricFamily(PREFIX + "info", "misp-dns running", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _queries(self) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            PREFIX + "queries",
            "Answered queries by protocol, query type and response type (as in the query log)",
            labels=["protocol", "qtype", "response_type"],
        )
        for labels, count in sorted(self.queries.by_label().items()):
            queries.add_metric(list(labels), count)
        yield queries
        blocked = CounterMetricFamily(
            PREFIX + "blocked",
            "Queries answered with a blocked answer, by source and trigger",
            labels=["source", "trigger"],
        )
        for (source, trigger), count in sorted(self.queries.blocked_by_cause().items()):
            blocked.add_metric([source, trigger], count)
        yield blocked
        monitored = CounterMetricFamily(
            PREFIX + "would_block",
            "Queries a policy in monitor mode (enable_blocking = false) let through but would"
            " have blocked, by source and trigger",
            labels=["source", "trigger"],
        )
        for (source, trigger), count in sorted(self.queries.monitored_by_cause().items()):
            monitored.add_metric([source, trigger], count)
        yield monitored

    def _cache(self) -> Iterator[Metric]:
        cache = self.parts.resolver.cache
        yield _counter("cache_hits", "Answers found in the answer cache", cache.hits)
        yield _counter("cache_misses", "Lookups the answer cache could not answer", cache.misses)
        yield _counter("cache_evictions", "Entries pushed out to make room", cache.evictions)
        yield _gauge("cache_entries", "Answers held in the answer cache", len(cache))

    def _upstream(self) -> Iterator[Metric]:
        resolver = self.parts.resolver
        forwarder: Any = resolver.forwarder
        latency = forwarder.latency
        yield HistogramMetricFamily(
            PREFIX + "upstream_seconds",
            "Time to an upstream's answer, every attempt included",
            buckets=[(_bound(bound), count) for bound, count in latency.cumulative()],
            sum_value=latency.total,
        )
        failures = CounterMetricFamily(
            PREFIX + "upstream_failures",
            "Attempts an upstream failed (timed out, refused, unusable reply)",
            labels=["upstream"],
        )
        for upstream, count in sorted(forwarder.failures.items()):
            failures.add_metric([upstream], count)
        yield failures
        yield _counter(
            "upstream_unanswered",
            "Questions no upstream answered in time (answered SERVFAIL)",
            resolver.upstream_failures,
        )

    def _policies(self) -> Iterator[Metric]:
        labels = ["policy", "source"]
        indicators = GaugeMetricFamily(
            PREFIX + "indicators",
            "Indicators in the served snapshot, by type: domain (blocks the name and below"
            " it, from MISP domain and domain|ip) or hostname (the name alone)",
            labels=[*labels, "type"],
        )
        last = GaugeMetricFamily(
            PREFIX + "refresh_last_success_timestamp",
            "When the indicators were last refreshed without error (seconds since the epoch)",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            PREFIX + "refresh_duration_seconds",
            "How long the last refresh took, good or not",
            labels=labels,
        )
        failures = CounterMetricFamily(
            PREFIX + "refresh_failures", "Refreshes that failed since start", labels=labels
        )
        sightings = _SightingFamilies(labels)
        for index, policy in enumerate(self.parts.policies):
            if not isinstance(policy, MispBlockingPolicy):
                continue
            values = [policy_label(index), policy.source]
            updater = policy.updater
            for kind, count in updater.snapshot.count_by_kind().items():
                indicators.add_metric([*values, kind], count)
            if updater.last_success is not None:
                last.add_metric(values, updater.last_success)
            if updater.last_duration is not None:
                duration.add_metric(values, updater.last_duration)
            failures.add_metric(values, updater.failed_cycles)
            if policy.sightings is not None:
                sightings.add(values, policy.sightings)
        yield from (indicators, last, duration, failures)
        yield from sightings.families()
        yield _counter(
            "policy_failures",
            "Queries answered SERVFAIL because a policy raised",
            self.parts.resolver.policy.failures,
        )

    def _export(self) -> Iterator[Metric]:
        exporter = self.parts.exporter
        dropped = CounterMetricFamily(
            PREFIX + "export_dropped",
            "Query records a sink lost (backlog full, destination down, write failed)",
            labels=["sink"],
        )
        for slot in exporter.slots if exporter is not None else ():
            dropped.add_metric([slot.name], slot.dropped)
        yield dropped
        yield _counter(
            "export_queue_dropped",
            "Query records dropped for every sink because the export queue was full",
            exporter.dropped if exporter is not None else 0,
        )
        yield _counter(
            "exported",
            "Query records handed to the sinks",
            exporter.exported if exporter is not None else 0,
        )
        yield _gauge(
            "export_queued",
            "Query records waiting in the export queue",
            len(exporter) if exporter is not None else 0,
        )

    def _workers(self) -> Iterator[Metric]:
        workers = self.parts.workers
        if workers is None:
            return
        family = CounterMetricFamily(
            PREFIX + "worker_queries",
            "Queries each serving process of the group answered, as it last reported (once"
            " a second); the other query counters count the supervisor's, which are none",
            labels=["worker"],
        )
        for index, count in sorted(workers.items()):
            family.add_metric([str(index)], count)
        yield family

    def _serving(self) -> Iterator[Metric]:
        counters = self.parts.responder.counters
        tcp = self.parts.tcp
        yield _counter(
            "rate_limited",
            "UDP queries over the rate limit (dropped or slipped)",
            counters.rate_limited,
        )
        yield _counter(
            "dropped_packets", "Packets not answered (responses, too short)", counters.dropped
        )
        yield _counter("format_errors", "Queries answered FORMERR", counters.format_errors)
        yield _gauge("tcp_connections", "Open TCP connections", tcp.open_connections)
        yield _counter(
            "tcp_rejected",
            "TCP connections closed at once because tcp_max_connections were open",
            tcp.rejected_connections,
        )
        yield _counter(
            "tcp_rejected_per_client",
            "TCP connections closed at once because their client network had"
            " tcp_max_connections_per_client open",
            tcp.rejected_per_client,
        )
        shortages = CounterMetricFamily(
            PREFIX + "descriptor_shortages",
            "Operations that failed for want of a file descriptor (EMFILE, ENFILE)",
            labels=["operation"],
        )
        failures = tcp.shortage.failures if tcp.shortage is not None else {}
        for operation, count in sorted(failures.items()):
            shortages.add_metric([operation], count)
        yield shortages


class _SightingFamilies:
    """The `misp_dns_sightings_*` families, one series per policy that posts sightings."""

    def __init__(self, labels: list[str]) -> None:
        self.sent = CounterMetricFamily(
            PREFIX + "sightings_sent",
            "Blocks MISP recorded as sightings (one per attribute per sightings_interval)",
            labels=labels,
        )
        self.failed = CounterMetricFamily(
            PREFIX + "sightings_failed",
            "Sightings MISP refused or never got (after the retries)",
            labels=labels,
        )
        self.dropped = CounterMetricFamily(
            PREFIX + "sightings_dropped",
            "Blocks not noted as sightings because sightings_max_pending were waiting",
            labels=labels,
        )
        self.pending = GaugeMetricFamily(
            PREFIX + "sightings_pending",
            "Sightings noted and not yet sent to MISP",
            labels=labels,
        )

    def add(self, values: list[str], reporter: SightingsReporter) -> None:
        self.sent.add_metric(values, reporter.sent)
        self.failed.add_metric(values, reporter.failed)
        self.dropped.add_metric(values, reporter.dropped)
        self.pending.add_metric(values, reporter.pending)

    def families(self) -> Iterator[Metric]:
        yield from (self.sent, self.failed, self.dropped, self.pending)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def make_registry(parts: ServerParts, queries: QueryCounter) -> CollectorRegistry:
    """A registry of its own holding the server's collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(parts, queries))
    ProcessCollector(registry=registry)
    return registry
