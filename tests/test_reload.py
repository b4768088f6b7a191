"""SIGHUP reload of the policy chain: applied when valid, refused whole when not.

The chain holds the built-in allowlist and `tld-block`, a third-party-style policy type
defined here and registered in the test's own `Registry`, so the tests need no package
beyond misp-dns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from misp_dns.build import build_policies
from misp_dns.config import load_config
from misp_dns.interfaces import Action, BuildContext, Decision, IPolicy, PluginType, PolicyQuery
from misp_dns.policy import allowlist
from misp_dns.policy.chain import PolicyChain
from misp_dns.registry import Registry
from misp_dns.reload import PolicyReloader, RunningPolicy

ALLOW = """
[[policy]]
type = "allowlist"
domains = [{names}]

[[policy]]
type = "tld-block"
tlds = ["zip"]
"""


@attrs.frozen
class TldBlockOptions:
    """The options of the test's `tld-block` policy type."""

    tlds: tuple[str, ...]


@implementer(IPolicy)
@attrs.frozen
class TldBlock:
    """Blocks every name under the listed top-level domains."""

    tlds: frozenset[str]
    name: str = "tld-block"

    def decide(self, query: PolicyQuery) -> Decision | None:
        if query.name.rpartition(".")[2] not in self.tlds:
            return None
        return Decision(Action.BLOCK, self.name)


def _build_tld_block(options: TldBlockOptions, context: BuildContext) -> TldBlock:
    return TldBlock(frozenset(options.tlds))


def registry() -> Registry:
    """The policy types these tests use: the built-in allowlist and the test's tld-block."""
    tld_block = PluginType("tld-block", TldBlockOptions, _build_tld_block)
    return Registry(policies={p.name: p for p in (allowlist.plugin, tld_block)})


class Resolver:
    """Stands in for ChainResolver: the reloader only swaps its `policy`."""

    def __init__(self, policy: PolicyChain) -> None:
        self.policy = policy


def start(tmp_path: Path, names: str) -> tuple[Path, PolicyReloader, Resolver]:
    path = tmp_path / "misp-dns.toml"
    path.write_text(ALLOW.format(names=names))
    types = registry()
    config = load_config(path, types)
    policies = build_policies(config, types, Clock())
    resolver = Resolver(PolicyChain(policies))
    running = [RunningPolicy(t, p) for t, p in zip(config.policy, policies, strict=True)]
    services = MultiService()
    services.startService()
    reloader = PolicyReloader(str(path), config, running, types, resolver, services, Clock())
    return path, reloader, resolver


def action(resolver: Resolver, name: str) -> Action | None:
    decision = resolver.policy.decide(PolicyQuery(name, 1))
    return None if decision is None else decision.action


def test_changed_allowlist_applies_and_unchanged_policy_is_kept(tmp_path: Path) -> None:
    """A new allowlist takes effect; the untouched tld-block keeps its running object."""
    path, reloader, resolver = start(tmp_path, '"a.example"')
    tld_block: Any = resolver.policy.policies[1]
    assert action(resolver, "a.example") is Action.ALLOW
    path.write_text(ALLOW.format(names='"b.example"'))
    reloader.reload()
    assert action(resolver, "a.example") is None
    assert action(resolver, "b.example") is Action.ALLOW
    assert action(resolver, "invoice.zip") is Action.BLOCK
    assert resolver.policy.policies[1] is tld_block
    assert reloader.reloads == 1


@pytest.mark.allow_errors
def test_bad_config_keeps_the_running_chain(tmp_path: Path) -> None:
    """A reload with an error anywhere changes nothing and says why."""
    path, reloader, resolver = start(tmp_path, '"a.example"')
    before = resolver.policy
    path.write_text(ALLOW.format(names='"not a name"'))
    reloader.reload()
    assert resolver.policy is before
    path.write_text("[[policy]]\ntype = 'nope'\n")
    reloader.reload()
    assert resolver.policy is before
    assert reloader.reloads == 0
    assert action(resolver, "a.example") is Action.ALLOW


def test_changed_admin_section_says_it_takes_a_restart(tmp_path: Path) -> None:
    """The admin listener is not rebuilt by a reload, and the log says so."""
    path, reloader, _ = start(tmp_path, '"a.example"')
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        path.write_text(
            ALLOW.format(names='"a.example"') + '\n[admin]\nlisten = "127.0.0.1:9053"\n'
        )
        reloader.reload()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert any("[admin] changed; that takes a restart" in line for line in warnings), warnings


def test_changed_rpz_section_says_it_takes_a_restart(tmp_path: Path) -> None:
    """The RPZ primary's own settings are read at start only, and a reload says so."""
    path, reloader, _ = start(tmp_path, '"a.example"')
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        path.write_text(ALLOW.format(names='"a.example"') + '\n[rpz]\nzone = "rpz.example"\n')
        reloader.reload()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert any("[rpz] changed; that takes a restart" in line for line in warnings), warnings
