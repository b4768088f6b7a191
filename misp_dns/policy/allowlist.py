"""The `allowlist` policy: names that are never blocked, whatever a later policy says.

A listed name allows itself and every name below it, and the allow decision stops the
chain. Put it first in the config so it wins over the blocking policies.

Config keys:
    domains  array of names, default []
    files    array of file paths, one name per line, `#` starts a comment; default []

Example:
    [[policy]]
    type = "allowlist"
    domains = ["example.com", "intranet.corp"]
    files = ["/etc/misp-dns/allow.txt"]

A name that is not a valid domain name is a config error naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.internet import defer
from zope.interface import implementer

from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.indicator import BlockEntry
from misp_dns.intel.normalize import InvalidIndicator, normalize_name
from misp_dns.interfaces import Action, BuildContext, Decision, IPolicy, PluginType, PolicyQuery
from misp_dns.values import ConfigError

__all__ = ["AllowlistOptions", "AllowlistPolicy", "plugin"]

SOURCE = "allowlist"
# Decisions kept, one per listed name recently asked about.
DECISION_MEMO = 65536


@attrs.frozen
class AllowlistOptions:
    """The options of a `[[policy]] type = "allowlist"` table."""

    domains: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


def _names(options: AllowlistOptions) -> Iterable[tuple[str, str]]:
    """(where, name) pairs from the config and the files, `where` for error messages."""
    for index, name in enumerate(options.domains):
        yield f"domains[{index}]", name
    for path in options.files:
        try:
            with open(path, encoding="utf-8") as file:
                lines = file.readlines()
        except OSError as exc:
            raise ConfigError([f"allowlist file {path}: cannot read: {exc.strerror}"]) from None
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                yield f"{path}:{number}", text


@implementer(IPolicy)
@attrs.frozen
class AllowlistPolicy:
    """Allows the listed names and everything below them."""

    names: DomainSet
    name: str = SOURCE
    #: The list is read once, when the policy is built: no background work.
    service: None = attrs.field(default=None, init=False)
    # The decision per listed name asked about, so a name allowed again and again gets the
    # same object (the answers built with it are then kept too, `CacheEntry.decided`).
    _decisions: dict[str, Decision] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    @classmethod
    def from_config(cls, options: AllowlistOptions) -> AllowlistPolicy:
        """Build the policy, raising ConfigError for names that are not domain names."""
        entries, problems = [], []
        for where, text in _names(options):
            try:
                entries.append(BlockEntry(normalize_name(text), subdomains=True))
            except InvalidIndicator as bad:
                problems.append(f"allowlist {where}: {bad}")
        if problems:
            raise ConfigError(problems)
        return cls(DomainSet.build(entries))

    def whenReady(self) -> defer.Deferred[None]:
        """Fires at once: the names are loaded when the policy is built."""
        return defer.succeed(None)

    def describe(self) -> str:
        """One line for the start-up log."""
        count = len(self.names)
        return f"allowlist: {count} name{'' if count == 1 else 's'} never blocked, nor any below"

    def decide(self, query: PolicyQuery) -> Decision | None:
        """ALLOW when the name is listed or below a listed name; otherwise no opinion."""
        return self.decide_name(query.name, query.qclass)

    def decide_name(self, name: str, qclass: int) -> Decision | None:
        """`decide` for a question of `name` (of any class): nothing else of it counts."""
        match = self.names.match(name)
        if match is None:
            return None
        decisions = self._decisions
        decision = decisions.get(match.name)
        if decision is None:
            if len(decisions) >= DECISION_MEMO:
                decisions.clear()
            decision = Decision(Action.ALLOW, SOURCE, indicator=match.name, ede_code=None)
            decisions[match.name] = decision
        return decision


def _build(options: AllowlistOptions, context: BuildContext) -> AllowlistPolicy:
    return AllowlistPolicy.from_config(options)


plugin = PluginType(SOURCE, AllowlistOptions, _build)
