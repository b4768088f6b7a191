"""The extension contract of misp-dns: everything a policy, an indicator source or a sink needs.

A third-party package imports this module and nothing else from misp-dns:

- the seams, as zope interfaces: `IPolicy` (decides about a query), `IAnswerPolicy` (an
  `IPolicy` that also judges the answer: its CNAME/DNAME chain and its addresses),
  `IIndicatorSource` (fetches indicators for a blocking policy) and `ISink` (receives
  query records);
- the values they exchange: `PolicyQuery` and `Decision` (with `Action`, `Provenance` and,
  for answers other than NXDOMAIN, `LocalRecord` and the `ANSWER_*` names), `RawIndicator`;
- `IZoneFollower`, a policy that follows a zone from a primary and is told of its NOTIFYs;
- how a plugin is found and built: a `PluginType` named in one of the entry-point groups
  `POLICY_GROUP`, `SOURCE_GROUP`, `SINK_GROUP`, built with a `BuildContext`;
- what an options class uses to validate and to fail: `ConfigError`, `FieldError`,
  `between`, `at_least`, `Duration`, and `BlockingOptions` (the base of a source's options).

It sits at the bottom of the layers (see docs/architecture.md): it imports only
`misp_dns.values`. `misp_dns.testing` holds verified in-memory fakes of each interface, and
docs/extending.md walks through writing and installing a policy, a source and a sink.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
    IReactorUNIX,
)
from zope.interface import Attribute, Interface

from misp_dns.values import (
    BlockingOptions,
    ConfigError,
    Duration,
    FieldError,
    ServerConfig,
    TsigKeyConfig,
    at_least,
    between,
)

__all__ = [
    "ANSWER_DROP",
    "ANSWER_LOCAL_DATA",
    "ANSWER_NODATA",
    "ANSWER_NXDOMAIN",
    "EDE_BLOCKED",
    "POLICY_GROUP",
    "SINGLE_PROCESS",
    "SINK_GROUP",
    "SOURCE_GROUP",
    "TRIGGER_CNAME",
    "TRIGGER_IP",
    "TRIGGER_QNAME",
    "Action",
    "BlockingOptions",
    "BuildContext",
    "ConfigError",
    "Decision",
    "Duration",
    "FieldError",
    "IAnswerPolicy",
    "IIndicatorSource",
    "IPolicy",
    "IServerReactor",
    "ISink",
    "IZoneFollower",
    "LocalRecord",
    "PluginType",
    "PolicyQuery",
    "Provenance",
    "RawIndicator",
    "SnapshotSharing",
    "at_least",
    "between",
]

#: Entry-point group of policy types: `[[policy]] type = "<name>"`.
POLICY_GROUP = "misp_dns.policies"
#: Entry-point group of indicator sources; each becomes a blocking policy type of its name.
SOURCE_GROUP = "misp_dns.sources"
#: Entry-point group of sink types: `[[export]] type = "<name>"`.
SINK_GROUP = "misp_dns.exporters"

#: RFC 8914 INFO-CODE 15, "Blocked": the answer a blocking decision carries by default.
EDE_BLOCKED = 15

#: What a decision was made on (`Decision.trigger`, the query log's `policy.trigger`): the
#: question's own name, a name the answer's CNAME/DNAME chain passes through, or an address
#: in the answer's A/AAAA records.
TRIGGER_QNAME = "qname"
TRIGGER_CNAME = "cname"
TRIGGER_IP = "ip"
#: What a blocking decision answers (`Decision.answer`): the blocked answer (NXDOMAIN with an
#: SOA, or the TXT report), NODATA (NOERROR, no answer, the same SOA), no answer at all, or
#: the decision's `local_data` (a CNAME to a walled garden, or A/AAAA/TXT records).
ANSWER_NXDOMAIN = "nxdomain"
ANSWER_NODATA = "nodata"
ANSWER_DROP = "drop"
ANSWER_LOCAL_DATA = "local-data"


# --- The values policies work with ------------------------------------------------------


class Action(enum.Enum):
    """What a decision does to the query."""

    BLOCK = "block"
    ALLOW = "allow"


@attrs.frozen
class PolicyQuery:
    """The question a policy decides on.

    `name` is lower-case, without the trailing dot, in presentation form (IDNA labels as
    punycode), for example "www.example.com".
    """

    name: str
    qtype: int
    qclass: int = 1
    client: str = ""
    transport: str = "udp"
    edns: bool = False
    dnssec_ok: bool = False


@attrs.frozen
class Provenance:
    """Where a blocking indicator came from in MISP, for the query log."""

    event_id: str = ""
    event_uuid: str = ""
    event_info: str = ""
    attribute_uuid: str = ""


@attrs.frozen(cache_hash=True)
class LocalRecord:
    """A record a decision answers with instead of the blocked answer, owned by the question.

    `rdata` is the record's RDATA in uncompressed wire form (a CNAME's target name, an A
    record's four octets).
    """

    type: int
    ttl: int
    rdata: bytes


@attrs.frozen(cache_hash=True)
class Decision:
    """A policy's verdict on a query and what the answer and the query log need to say it.

    `enforced` is False in monitor mode: the query resolves normally and only the log shows
    the decision. `trigger` says what was matched (`TRIGGER_QNAME`, `TRIGGER_CNAME`,
    `TRIGGER_IP`); `indicator` is then the listed name, or the listed address or range.
    Decisions are compared and hashed as values, so a policy may hand back the same
    decision object for many queries (the answer builders memoize on it).

    `answer` says what a blocking decision answers (one of the `ANSWER_*` names; an RPZ
    policy uses all of them): with `ANSWER_LOCAL_DATA`, the records of `local_data` for the
    question's type, a CNAME among them for any type, else NODATA.
    """

    action: Action
    source: str
    indicator: str = ""
    report: str = ""
    ttl: int = 30
    ede_code: int | None = EDE_BLOCKED
    add_txt_report: bool = True
    add_ede: bool = True
    enforced: bool = True
    provenance: Provenance = attrs.field(factory=Provenance)
    trigger: str = TRIGGER_QNAME
    answer: str = ANSWER_NXDOMAIN
    local_data: tuple[LocalRecord, ...] = ()

    @property
    def blocks(self) -> bool:
        """True when the answer must be the synthesized blocked answer."""
        return self.action is Action.BLOCK and self.enforced


@attrs.frozen
class RawIndicator:
    """An attribute as a source hands it over; times are epoch seconds or None if unknown.

    `type` is MISP's attribute type: `domain` blocks the name and every name below it,
    `hostname` the name alone, `domain|ip` holds `<domain>|<ip>`; other types are counted
    and ignored.
    """

    value: str
    type: str
    to_ids: bool = True
    deleted: bool = False
    timestamp: int | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    event_id: str = ""
    event_uuid: str = ""
    event_info: str = ""
    attribute_uuid: str = ""


# --- The seams ----------------------------------------------------------------------------


class IPolicy(Interface):
    """Decides about one query: block, allow, or no opinion (None, the next policy decides)."""

    name = Attribute("The policy's type name, as written in the config's `type`.")

    service = Attribute(
        "An `IService` doing the policy's background work (fetching, refreshing), started"
        " and stopped with the server; None for a policy that needs none."
    )

    def decide(query):
        """Return a `Decision` or None for a `PolicyQuery`.

        Synchronous and free of side effects: it runs on every query, on the reactor thread.
        """

    def whenReady():
        """Return a Deferred firing (with None) once the policy decides on real data.

        A policy that loads indicators fires it after the first load (from its disk cache or
        its source); one that needs nothing fires it at once. A reload waits for it before
        the new chain takes over; `/readyz`-style checks read it too.
        """


class IAnswerPolicy(IPolicy):
    """A policy that also judges answers: the names their CNAME/DNAME chain passes through
    and the addresses of their A/AAAA records.

    The chain asks it only about questions no policy had an opinion on (so an allowlisted
    question name is never blocked by its answer), once per answer from the upstream, and
    again about a cached answer only after `generation` grew: the verdict is kept with the
    cached answer, so a cache hit costs nothing more. A blocking verdict gets the blocked
    answer for the question, exactly as if the question's name were listed.
    """

    generation = Attribute(
        "An integer that grows whenever `decide_answer` may answer differently (a new"
        " indicator snapshot); equal values promise equal verdicts."
    )

    def decide_answer(query, names, addresses):
        """Return a `Decision` (`trigger` cname or ip) or None for an answer to `query`.

        `names` are the names the answer's CNAME/DNAME chain leads to after the question's
        own, in chain order, written like `PolicyQuery.name`; a name the chain's policies
        allow when asked about it alone (an allowlisted name) is left out. `addresses` are
        the addresses of the answer's A and AAAA records as packed bytes (4 or 16;
        `ipaddress.ip_address(packed)` reads one). `query.client` and `query.transport` are
        empty: the verdict is kept with the cached answer and serves every client.

        Synchronous and free of side effects, like `decide`.
        """


class IZoneFollower(IPolicy):
    """A policy that follows a zone from a primary server (an RPZ secondary).

    The DNS server hands it the NOTIFY messages (RFC 1996) it receives for `zone` on its
    listen addresses, and answers the primary from what `notified` returns.
    """

    zone = Attribute("The followed zone's name: lower-case, without the trailing dot.")

    def notified(source):
        """A NOTIFY for `zone` came from the address `source` (a string).

        Return True when `source` is this zone's primary (the zone is then checked soon),
        False to have the NOTIFY refused. Must not block or raise.
        """


class IIndicatorSource(Interface):
    """Fetches the current set of indicators from somewhere (MISP REST, a MISP feed, ...)."""

    def fetch():
        """Return a Deferred firing with the list of `RawIndicator`s, or failing on error."""

    def fetch_pages(consume):
        """Like `fetch`, handing the indicators to `consume` a batch at a time.

        `consume(indicators)` may return a Deferred; the source waits for it before the next
        batch. The returned Deferred fires with None when all is fetched, or fails.
        """


class ISink(Interface):
    """Receives finished query records for export (a file, syslog, an HTTP collector)."""

    dropped = Attribute(
        "How many records the sink has lost so far (backlog full, destination down); the"
        " exporter logs the growth of this count and never reads anything else of the sink."
    )

    def start():
        """Open what the sink needs; return None or a Deferred."""

    def write(records):
        """Take a batch of query records; must not block or raise.

        Each record is a read-only mapping of the query record's fields whose `line`
        attribute holds the finished compact JSON text (no newline); `response_type` and
        `timestamp` hold those two fields' values.
        """

    def stop():
        """Flush and close; return None or a Deferred."""


class IServerReactor(
    IReactorCore,
    IReactorTime,
    IReactorTCP,
    IReactorUDP,
    IReactorUNIX,
    IReactorThreads,
    IReactorPluggableNameResolver,
):
    """The reactor facets a plugin may use: timers, TCP, UDP, UNIX sockets, threads, DNS."""


# --- How plugins are built ------------------------------------------------------------------


@attrs.frozen
class SnapshotSharing:
    """How the processes of a group share indicator snapshots (`[server] workers` above 1,
    docs/workers.md); the default is a single process that fetches and serves.

    `follow`: this is a serving process; an indicator-fed policy reads the snapshot another
    process saves (`misp_dns.intel.follower`) and never fetches. `saved`: this process
    fetches for the group; called with the path of each snapshot file it has just saved.
    """

    follow: bool = False
    saved: Callable[[str], None] | None = None


#: One process that fetches and serves: what every process was before `[server] workers`.
SINGLE_PROCESS = SnapshotSharing()


@attrs.frozen
class BuildContext:
    """What a plugin factory may use: the reactor, the server settings and the state folder.

    Tests pass a `twisted.internet.testing.MemoryReactorClock` (or a `task.Clock` where only
    time is used) as `reactor`. `tsig_keys` are the config's `[[tsig_key]]` tables
    (`misp_dns.tsig.load_keys` reads their secrets). `sharing` says whether this process
    fetches indicators or follows the snapshots another one saves.
    """

    reactor: IServerReactor
    server: ServerConfig
    state_dir: str
    tsig_keys: tuple[TsigKeyConfig, ...] = ()
    sharing: SnapshotSharing = SINGLE_PROCESS


@attrs.frozen
class PluginType:
    """A named policy, source or sink type: its options class and the factory that builds it.

    `options` is a frozen attrs class that the config's table (without `type`) is structured
    into; its validators raise `FieldError`. `build(options, context)` returns the `IPolicy`,
    `IIndicatorSource` or `ISink`, or raises `ConfigError` for what only building can find
    (a missing file, an unreadable key).
    """

    name: str
    options: type
    build: Callable[[Any, BuildContext], Any]
