"""The `rpz` policy: follow a Response Policy Zone and apply it, as BIND's RPZ secondaries do.

The zone comes from a primary by zone transfer (AXFR, then IXFR; SOA refresh and retry
timers; at once on a NOTIFY the server receives on its listen addresses; TSIG-signed when
`tsig_key` names a `[[tsig_key]]`), or from a zone file or URL read every
`update_interval` (`url`; MISP's `/attributes/restSearch` with `returnFormat=rpz` makes
one). The last good copy is kept in the state folder and applied at start, before the
primary answers. `misp_dns.intel.rpz` says how triggers and actions are read;
`misp_dns.intel.secondary` how the copy is kept current.

What each action answers:

- NXDOMAIN (`CNAME .`): the blocked answer (NXDOMAIN with an SOA, or the TXT report
  `source=rpz;zone=<zone>;domain=<trigger>`), EDE 15 when the query had EDNS;
- NODATA (`CNAME *.`): NOERROR, no answer, the same SOA;
- PASSTHRU (`CNAME rpz-passthru.`): allowed, later policies are not asked;
- DROP (`CNAME rpz-drop.`): no answer at all;
- local data: a CNAME to the walled garden (for any query type), or the zone's records of
  the query's type (NODATA when it has none of that type).

`enable_blocking = false` is monitor mode: nothing is enforced, the query log still shows
the decision.

Example:

    [[policy]]
    type = "rpz"
    zone = "rpz.misp-dns.example"
    primary = "192.0.2.1:53"
    tsig_key = "fleet"
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from zope.interface import implementer

from misp_dns.http import make_http_client
from misp_dns.intel.blocking import run_inline, thread_runner
from misp_dns.intel.rpz import Match, RpzAction, RpzZone, Rule
from misp_dns.intel.secondary import ZoneFileSource, ZoneFollower, state_file
from misp_dns.intel.zonedata import (
    CNAME,
    ZoneDataError,
    name_to_wire,
    wire_to_name,
)
from misp_dns.interfaces import (
    ANSWER_DROP,
    ANSWER_LOCAL_DATA,
    ANSWER_NODATA,
    ANSWER_NXDOMAIN,
    TRIGGER_CNAME,
    TRIGGER_IP,
    TRIGGER_QNAME,
    Action,
    BuildContext,
    ConfigError,
    Decision,
    Duration,
    FieldError,
    IAnswerPolicy,
    IZoneFollower,
    LocalRecord,
    PluginType,
    PolicyQuery,
    between,
)
from misp_dns.tsig import load_keys

__all__ = ["RpzOptions", "RpzPolicy", "plugin"]

IN = 1
SOURCE = "rpz"
DECISION_MEMO = 131072
_UNKNOWN = object()
_ANSWERS = {
    RpzAction.NXDOMAIN: ANSWER_NXDOMAIN,
    RpzAction.NODATA: ANSWER_NODATA,
    RpzAction.DROP: ANSWER_DROP,
    RpzAction.LOCAL_DATA: ANSWER_LOCAL_DATA,
}


def _zone_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        name_to_wire(value.strip().rstrip(".") or ".")
    except ZoneDataError as problem:
        raise FieldError(attribute.name, str(problem)) from None
    if not value.strip().rstrip("."):
        raise FieldError(attribute.name, "must name a zone")


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    ipaddress.ip_address(host)
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(text)
    return host, number


def _primary(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    try:
        _address(value)
    except ValueError:
        raise FieldError(attribute.name, f"expected IP:port, got {value!r}") from None


@attrs.frozen
class RpzOptions:
    """The `[[policy]] type = "rpz"` table (README, "Following an RPZ")."""

    zone: str = attrs.field(validator=_zone_name)
    primary: str = attrs.field(default="", validator=_primary)
    url: str = ""
    tsig_key: str = ""
    api_key_file: str = ""
    update_interval: Duration = attrs.field(
        default=Duration(3600), validator=between(1, 86400 * 30)
    )
    transfer_timeout: Duration = attrs.field(default=Duration(60), validator=between(1, 3600))
    max_zone_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=between(1024, 1 << 34))
    max_zone_records: int = attrs.field(default=5_000_000, validator=between(1, 100_000_000))
    enable_blocking: bool = True
    disable_tls_validation: bool = False
    blocking_answer_ttl: int = attrs.field(default=30, validator=between(30, 86400))
    allow_txt_blocking_report: bool = True
    add_extended_dns_error: bool = True

    def __attrs_post_init__(self) -> None:
        if bool(self.primary) == bool(self.url.strip()):
            raise FieldError(
                "primary" if self.primary else "url", "give exactly one of primary and url"
            )
        if self.tsig_key and not self.primary:
            raise FieldError("tsig_key", "signs zone transfers: it needs primary")
        if self.api_key_file and not self.url.lower().startswith(("http://", "https://")):
            raise FieldError("api_key_file", "is sent to an http(s) url: it needs one")

    def read_api_key(self) -> str:
        """The key in `api_key_file` (whitespace stripped), or ConfigError naming the file."""
        path = Path(self.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as problem:
            raise ConfigError(
                [f"api_key_file {str(path)!r}: cannot read: {problem.strerror}"]
            ) from None
        except UnicodeDecodeError:
            raise ConfigError([f"api_key_file {str(path)!r}: not a text file"]) from None
        if not key:
            raise ConfigError([f"api_key_file {str(path)!r}: empty"])
        return key

    @property
    def zone_name(self) -> str:
        """The zone's name, lower-case, without the trailing dot."""
        return self.zone.strip().rstrip(".").lower()


@implementer(IZoneFollower, IAnswerPolicy)
class RpzPolicy:
    """Applies the followed zone's triggers (see the module docstring).

    QNAME triggers apply to the question's name (`decide`) and to the names of an answer's
    CNAME/DNAME chain, `rpz-ip` triggers to the addresses of its A/AAAA records
    (`decide_answer`): the rewrite is then the trigger's action for the question.
    """

    name = SOURCE

    def __init__(self, options: RpzOptions, follower: ZoneFollower) -> None:
        self.options = options
        self.follower = follower
        self.service = follower
        self.zone = options.zone_name
        self._primary_host = _address(options.primary)[0] if options.primary else None
        self._decided_for: RpzZone | None = None
        self._by_name: dict[str, Decision | None] = {}
        self._by_rule: dict[tuple[Rule, str, str], Decision] = {}

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once a copy of the zone is applied, or the first check failed."""
        return self.follower.whenReady()

    def notified(self, source: str) -> bool:
        """A NOTIFY from the primary's address starts a check; from anyone else, refused."""
        if self._primary_host is None or not _same_address(source, self._primary_host):
            return False
        self.follower.notify()
        return True

    def decide(self, query: PolicyQuery) -> Decision | None:
        """The decision of the zone's QNAME triggers for `query`, or None."""
        return self.decide_name(query.name, query.qclass)

    def decide_name(self, name: str, qclass: int) -> Decision | None:
        """`decide` for a question of `name` and `qclass`: nothing else of it counts."""
        if qclass != IN:
            return None
        zone = self.follower.zone
        if zone is None:
            return None
        if zone is not self._decided_for:
            self._decided_for, self._by_name, self._by_rule = zone, {}, {}
        by_name = self._by_name
        decision = by_name.get(name, _UNKNOWN)
        if decision is _UNKNOWN:
            match = zone.match_name(name)
            decision = None if match is None else self.decision(match, name)
            if len(by_name) >= DECISION_MEMO:
                by_name.clear()
            by_name[name] = decision
        return decision  # type: ignore[return-value]

    @property
    def generation(self) -> int:
        """Grows with every copy of the zone served (see `IAnswerPolicy`)."""
        return self.follower.generation

    def decide_answer(
        self, query: PolicyQuery, names: tuple[str, ...], addresses: tuple[bytes, ...]
    ) -> Decision | None:
        """The action of the first QNAME trigger the answer's chain reaches, else of the
        first `rpz-ip` trigger its addresses fall in (BIND checks QNAME triggers first)."""
        zone = self.follower.zone
        if query.qclass != IN or zone is None:
            return None
        for name in names:
            match = zone.match_name(name)
            if match is not None:
                return self.decision(match, query.name, TRIGGER_CNAME)
        for address in addresses:
            match = zone.match_address(address)
            if match is not None:
                return self.decision(match, query.name, TRIGGER_IP)
        return None

    def decision(self, match: Match, name: str, trigger: str = TRIGGER_QNAME) -> Decision:
        """The decision for a rule matched for the question `name`, by `trigger`.

        One decision object serves every name a rule matches (the answer builders memoize
        on it), unless its walled garden is named after the question (`*.garden`).
        """
        per_name = any(_expands(rtype, rdata) for rtype, _, rdata in match.rule.local_data)
        if per_name:
            return self._decision(match, name, trigger)
        key = (match.rule, match.trigger, trigger)
        decision = self._by_rule.get(key)
        if decision is None:
            if len(self._by_rule) >= DECISION_MEMO:
                self._by_rule.clear()
            decision = self._by_rule[key] = self._decision(match, name, trigger)
        return decision

    def _decision(self, match: Match, name: str, trigger: str) -> Decision:
        options = self.options
        rule = match.rule
        kind = "ip" if match.trigger == "ip" else "domain"
        report = f"source={SOURCE};zone={self.zone};{kind}={rule.trigger}"
        if rule.action is RpzAction.PASSTHRU:
            return Decision(
                Action.ALLOW, SOURCE, indicator=rule.trigger, report=report, trigger=trigger
            )
        local = tuple(
            LocalRecord(rtype, ttl, _expand(rtype, rdata, name))
            for rtype, ttl, rdata in rule.local_data
        )
        return Decision(
            Action.BLOCK,
            SOURCE,
            indicator=rule.trigger,
            report=report,
            ttl=options.blocking_answer_ttl,
            add_txt_report=options.allow_txt_blocking_report and rule.action is RpzAction.NXDOMAIN,
            add_ede=options.add_extended_dns_error,
            enforced=options.enable_blocking,
            answer=_ANSWERS[rule.action],
            local_data=local,
            trigger=trigger,
        )


def _expands(rtype: int, rdata: bytes) -> bool:
    """True for a CNAME whose target is a wildcard (`*.garden`): it names the question."""
    return rtype == CNAME and rdata.startswith(b"\x01*")


def _expand(rtype: int, rdata: bytes, name: str) -> bytes:
    """A CNAME target `*.garden` becomes `<name>.garden` (the draft's wildcard local data)."""
    if not _expands(rtype, rdata):
        return rdata
    target = wire_to_name(rdata, 0)[0]
    try:
        return name_to_wire(f"{name}.{target[2:]}" if target != "*" else name)
    except ZoneDataError:
        return rdata  # too long to expand: BIND answers the unexpanded name too


def _same_address(left: str, right: str) -> bool:
    try:
        return _unmapped(ipaddress.ip_address(left)) == _unmapped(ipaddress.ip_address(right))
    except ValueError:
        return False


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _build(options: RpzOptions, context: BuildContext) -> RpzPolicy:
    key = None
    if options.tsig_key:
        wanted = options.tsig_key.lower().rstrip(".")
        configs = [c for c in context.tsig_keys if c.name.lower().rstrip(".") == wanted]
        if not configs:
            raise ConfigError([f"tsig_key: no [[tsig_key]] named {options.tsig_key!r}"])
        key = next(iter(load_keys(configs).values()))
    reactor = context.reactor
    run_blocking = thread_runner(reactor) if IReactorThreads.providedBy(reactor) else run_inline
    common: dict[str, Any] = {
        "clock": reactor,
        "run_in_thread": lambda function, *args: run_blocking(lambda: function(*args)),
        "state_path": state_file(context.state_dir, options.zone_name),
        "interval": float(options.update_interval),
        "key": key,
        "transfer_timeout": float(options.transfer_timeout),
        "max_bytes": options.max_zone_bytes,
        "max_records": options.max_zone_records,
    }
    if options.primary:
        follower = ZoneFollower(options.zone_name, primary=_address(options.primary), **common)
    else:
        url = options.url.strip()
        source = ZoneFileSource(
            url,
            options.zone_name,
            reactor,
            options.max_zone_bytes,
            timeout=float(options.transfer_timeout),
            run_blocking=run_blocking,
        )
        if source.is_remote:
            source.http = make_http_client(reactor, verify_tls=not options.disable_tls_validation)
        if options.api_key_file:
            source.api_key = options.read_api_key()
        follower = ZoneFollower(options.zone_name, fetch=source.fetch, **common)
    return RpzPolicy(options, follower)


plugin = PluginType(SOURCE, RpzOptions, _build)
