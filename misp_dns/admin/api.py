"""What the admin API answers: status, explain, refresh and readiness, as JSON-ready values.

`AdminApi` reads the running server (`ServerParts`) when asked, so it always sees the chain
in service, also after a SIGHUP reload swapped it. Nothing here knows about HTTP; the
resources in `misp_dns.admin.web` turn these values into responses, and `misp_dns.cli`
prints them. Keys are camelCase like the query record's (`mispEventUuid`).

`explain` asks every policy of the chain, not only up to the first decision, so it also
shows what later policies would have said (an allowlist hit hiding a MISP indicator):

    {"name": "www.evil.example", "type": "A", "decision": "block", "policy": "policy[1]",
     "policyType": "misp", "source": "misp-connector", "indicator": "evil.example",
     "trigger": "qname", "enforced": true, "mispEventId": "1234", "mispEventUuid": "...",
     "mispEventInfo": "...", "mispAttributeUuid": "...",
     "policies": [{"policy": "policy[0]", "policyType": "allowlist", "decision": "none"},
                  {"policy": "policy[1]", "policyType": "misp", "decision": "block", ...}]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from misp_dns import __version__
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import DNSStreamFactory, Responder
from misp_dns.export.exporter import ExporterService
from misp_dns.interfaces import Action, Decision, IPolicy, PolicyQuery
from misp_dns.policy.misp import MispBlockingPolicy
from misp_dns.policy.rpz import RpzPolicy
from misp_dns.qtypes import qtype_name

__all__ = [
    "AdminApi",
    "NoSuchPolicy",
    "ServerParts",
    "decision_fields",
    "policy_label",
    "query_name",
    "trigger_of",
]


@attrs.define
class ServerParts:
    """The running pieces the admin listener reads, and the refresh acts on.

    `started` is the clock's time when the server was built (for the uptime). `workers`,
    in the supervisor of a group of serving processes, maps each worker's index to the
    queries it reported answering (docs/workers.md); None in a single process.
    """

    resolver: ChainResolver
    responder: Responder
    tcp: DNSStreamFactory
    exporter: ExporterService | None
    clock: IReactorTime
    started: float
    workers: Mapping[int, int] | None = None

    @property
    def policies(self) -> Sequence[IPolicy]:
        """The chain in service now."""
        return self.resolver.policy.policies


class NoSuchPolicy(LookupError):
    """`refresh` was asked for a policy the chain does not have (or that cannot refresh)."""


def policy_label(index: int) -> str:
    """How a policy is named everywhere in the admin API and the metrics: `policy[1]`."""
    return f"policy[{index}]"


def trigger_of(decision: Decision) -> str:
    """What in the query or its answer matched: `qname` (the question's name), `cname` (a
    name of the answer's CNAME/DNAME chain) or `ip` (an address of the answer)."""
    return decision.trigger


def query_name(text: str) -> str:
    """A name typed by an operator as policies see it: lower case, no trailing dot, IDNA.

    Raises ValueError for an empty name, one with spaces, or one longer than 253 octets.
    """
    name = text.strip().rstrip(".")
    if not name or any(char.isspace() for char in name):
        raise ValueError(f"not a domain name: {text!r}")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a domain name: {text!r}") from None
    name = name.lower()
    if len(name) > 253:
        raise ValueError(f"longer than 253 octets: {text!r}")
    return name


def decision_fields(decision: Decision) -> dict[str, Any]:
    """The explain fields of one decision (`decision` is "block" or "allow")."""
    fields: dict[str, Any] = {
        "decision": decision.action.value,
        "source": decision.source,
        "indicator": decision.indicator,
        "trigger": trigger_of(decision),
        "enforced": decision.enforced,
    }
    if decision.action is Action.BLOCK:
        provenance = decision.provenance
        fields |= {
            "mispEventId": provenance.event_id,
            "mispEventUuid": provenance.event_uuid,
            "mispEventInfo": provenance.event_info,
            "mispAttributeUuid": provenance.attribute_uuid,
        }
    return fields


class _Readiness:
    """Which policies' `whenReady()` has fired, asked once per policy object."""

    log = Logger()

    def __init__(self) -> None:
        self._asked: dict[int, IPolicy] = {}
        self._ready: set[int] = set()

    def ready(self, policies: Sequence[IPolicy]) -> list[bool]:
        """For each policy, True once its `whenReady()` fired."""
        for policy in policies:
            if id(policy) not in self._asked:
                self._watch(policy)
        current = {id(policy) for policy in policies}
        for key in [key for key in self._asked if key not in current]:
            del self._asked[key]
            self._ready.discard(key)
        return [id(policy) in self._ready for policy in policies]

    def _watch(self, policy: IPolicy) -> None:
        key = id(policy)
        self._asked[key] = policy

        def fired(_: object) -> None:
            # A policy that left the chain meanwhile may share its id with a new one.
            if self._asked.get(key) is policy:
                self._ready.add(key)

        def failed(failure: Any) -> None:
            self.log.failure("policy {name}: whenReady failed", failure, name=policy.name)

        defer.maybeDeferred(policy.whenReady).addCallbacks(fired, failed)


class AdminApi:
    """Answers the admin API from the running server's parts."""

    def __init__(self, parts: ServerParts) -> None:
        self.parts = parts
        self._readiness = _Readiness()

    def readiness(self) -> dict[str, Any]:
        """{"ready": every policy is ready, "waiting": the labels of those that are not}."""
        policies = self.parts.policies
        flags = self._readiness.ready(policies)
        waiting = [policy_label(i) for i, ready in enumerate(flags) if not ready]
        return {"ready": not waiting, "waiting": waiting}

    def status(self) -> dict[str, Any]:
        """The server at a glance: policies and their indicators, the export, the cache."""
        parts = self.parts
        policies = parts.policies
        flags = self._readiness.ready(policies)
        now = parts.clock.seconds()
        cache = parts.resolver.cache
        return {
            "version": __version__,
            "now": now,
            "uptime": now - parts.started,
            "ready": all(flags),
            "policies": [
                _policy_status(index, policy, ready)
                for index, (policy, ready) in enumerate(zip(policies, flags, strict=True))
            ],
            "export": _export_status(parts.exporter),
            "cache": {
                "entries": len(cache),
                "maxEntries": cache.max_entries,
                "hits": cache.hits,
                "misses": cache.misses,
            },
            "queries": parts.responder.counters.queries,
        }

    def explain(self, name: str, qtype: int) -> dict[str, Any]:
        """What each policy decides about `name` (as `query_name` gives it) and type `qtype`.

        The overall `decision` is the chain's: the first policy's that has one, "none" when
        none has, or "error" when a policy raised before any decided (the server then
        answers SERVFAIL).
        """
        query = PolicyQuery(name, qtype)
        steps: list[dict[str, Any]] = []
        chosen: dict[str, Any] | None = None
        for index, policy in enumerate(self.parts.policies):
            step: dict[str, Any] = {"policy": policy_label(index), "policyType": policy.name}
            try:
                decision = policy.decide(query)
            except Exception as error:
                step |= {"decision": "error", "error": type(error).__name__}
            else:
                step |= {"decision": "none"} if decision is None else decision_fields(decision)
            steps.append(step)
            if chosen is None and step["decision"] != "none":
                chosen = step
        result: dict[str, Any] = {"name": name, "type": qtype_name(qtype)}
        result |= chosen if chosen is not None else {"decision": "none"}
        result["policies"] = steps
        return result

    def refresh(self, selector: str | None = None) -> defer.Deferred[list[dict[str, Any]]]:
        """Fetch the indicators of the matching policies now; fire with each one's outcome.

        `selector` is a policy's label (`policy[1]`, or `1`), its type (`misp`) or its
        source (`misp-connector`); None refreshes every policy fed by indicators. A refresh
        already running is joined, not doubled. Raises NoSuchPolicy when nothing matches.
        """
        chosen = [
            (index, policy)
            for index, policy in enumerate(self.parts.policies)
            if isinstance(policy, MispBlockingPolicy)
            and (selector is None or _matches(index, policy, selector))
        ]
        if not chosen:
            refreshable = [
                f"{policy_label(index)} ({policy.name})"
                for index, policy in enumerate(self.parts.policies)
                if isinstance(policy, MispBlockingPolicy)
            ]
            wanted = "any policy" if selector is None else repr(selector)
            raise NoSuchPolicy(
                f"no policy fed by indicators matches {wanted}; there are: "
                + (", ".join(refreshable) or "none")
            )
        cycles = [policy.updater.update_now() for _, policy in chosen]
        done = defer.gatherResults(cycles, consumeErrors=True)
        return done.addCallback(lambda _: [_refreshed(index, policy) for index, policy in chosen])


def _matches(index: int, policy: MispBlockingPolicy, selector: str) -> bool:
    return selector in {policy_label(index), str(index), policy.name, policy.source}


def _refreshed(index: int, policy: MispBlockingPolicy) -> dict[str, Any]:
    updater = policy.updater
    return {
        "policy": policy_label(index),
        "policyType": policy.name,
        "source": policy.source,
        "ok": updater.failures == 0,
        "indicators": len(updater.snapshot),
        "duration": updater.last_duration,
        "error": updater.last_error,
    }


def _policy_status(index: int, policy: IPolicy, ready: bool) -> dict[str, Any]:
    status: dict[str, Any] = {
        "policy": policy_label(index),
        "policyType": policy.name,
        "ready": ready,
    }
    if isinstance(policy, MispBlockingPolicy):
        updater = policy.updater
        status |= {
            "source": policy.source,
            "enforced": policy.options.enable_blocking,
            "indicators": len(updater.snapshot),
            "lastRefresh": updater.last_success,
            "lastRefreshDuration": updater.last_duration,
            "nextRefresh": updater.next_update_at,
            "failuresInARow": updater.failures,
            "failedRefreshes": updater.failed_cycles,
            "lastError": updater.last_error,
        }
        reporter = policy.sightings
        if reporter is not None:
            status["sightings"] = {
                "sent": reporter.sent,
                "failed": reporter.failed,
                "dropped": reporter.dropped,
                "pending": reporter.pending,
            }
    elif isinstance(policy, RpzPolicy):
        status |= _rpz_status(policy)
    return status


def _rpz_status(policy: RpzPolicy) -> dict[str, Any]:
    """What an operator asks of an RPZ secondary: which copy it serves, and how it fares."""
    follower = policy.follower
    zone = follower.zone
    return {
        "zone": policy.zone,
        "from": follower.where,
        "enforced": policy.options.enable_blocking,
        "serial": None if zone is None else zone.serial,
        "triggers": 0 if zone is None else zone.rule_count,
        "notApplied": {} if zone is None else dict(zone.skipped),
        "lastRefresh": follower.last_success,
        "failuresInARow": follower.failures,
        "lastError": follower.last_error,
        "transfers": dict(follower.transfers),
    }


def _export_status(exporter: ExporterService | None) -> dict[str, Any]:
    if exporter is None:
        return {"queued": 0, "dropped": 0, "sinks": []}
    return {
        "queued": len(exporter),
        "dropped": exporter.dropped,
        "sinks": [{"name": slot.name, "dropped": slot.dropped} for slot in exporter.slots],
    }
