"""Reloading the policy chain on SIGHUP, without dropping a query.

`systemctl reload misp-dns` (SIGHUP) makes misp-dns read its config file again and apply the
`[[policy]]` tables: a table that did not change keeps its running policy (and its indicator
set); a new or changed one is built, started, and waited for until its indicators are loaded,
and only then does the resolver switch to the new chain, in one assignment. The policies that
left the chain are stopped afterwards. Queries go on being answered by the old chain until
the switch, so none is dropped and none goes unblocked.

A config that does not load keeps the running chain, with one log line per problem. Changes
to `[server]`, `[cache]`, `[[export]]`, `[admin]`, `[rpz]` and `[[tsig_key]]` need a restart;
a reload says so when it sees them. (The RPZ primary follows the new chain's snapshots by
itself: only its own section needs the restart.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from misp_dns.build import build_policy, context_for, describe_policies
from misp_dns.config import load_config
from misp_dns.interfaces import SINGLE_PROCESS, IPolicy, SnapshotSharing
from misp_dns.policy.chain import PolicyChain
from misp_dns.registry import Registry
from misp_dns.values import Config, ConfigError, PluginConfig

__all__ = ["PolicyReloader", "RunningPolicy"]

# How long a reload waits for new policies' first indicators before switching anyway.
READY_TIMEOUT = 60.0


@attrs.frozen
class RunningPolicy:
    """A policy in the running chain and the config table it was built from."""

    table: PluginConfig
    policy: IPolicy


class PolicyReloader:
    """Applies the `[[policy]]` tables of the config file to a running resolver.

    `on_chain`, if given, is called with the new chain's policies right after it is put in
    service (`tap` installs the responder's tallies for it).
    """

    log = Logger()

    def __init__(
        self,
        config_path: str,
        config: Config,
        running: list[RunningPolicy],
        registry: Registry,
        resolver: Any,
        services: MultiService,
        reactor: Any,
        *,
        on_chain: Callable[[Sequence[IPolicy]], None] | None = None,
        sharing: SnapshotSharing = SINGLE_PROCESS,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.running = running
        self.registry = registry
        self.resolver = resolver
        self.services = services
        self.reactor = reactor
        self.on_chain = on_chain
        self.sharing = sharing
        self._reloading: defer.Deferred[None] | None = None
        self.reloads = 0

    def reload(self) -> defer.Deferred[None]:
        """Read the config file again and apply its policies (one reload at a time)."""
        if self._reloading is not None:
            self.log.info("a reload is already under way; this one waits for the next signal")
            return self._reloading
        reloading = defer.Deferred.fromCoroutine(self._reload())
        reloading.addErrback(
            lambda failure: self.log.failure("reloading the policies failed", failure)
        )
        if not reloading.called:
            self._reloading = reloading

            def done(_: object) -> None:
                self._reloading = None

            reloading.addBoth(done)
        return reloading

    async def _reload(self) -> None:
        try:
            config = load_config(self.config_path, self.registry)
            chain = self._build(config)
        except ConfigError as problem:
            for line in problem.problems:
                self.log.error(
                    "reload of {path}: {problem}; the running configuration stays",
                    path=self.config_path,
                    problem=line,
                )
            return
        self._say_what_needs_a_restart(config)
        kept = {id(item.policy) for item in chain}
        added = [item for item in chain if all(item.policy is not r.policy for r in self.running)]
        waiting = []
        for item in added:
            if item.policy.service is not None:
                item.policy.service.setServiceParent(self.services)
            waiting.append(item.policy.whenReady())
        if waiting:
            ready = defer.DeferredList(waiting, consumeErrors=True)
            ready.addTimeout(READY_TIMEOUT, self.reactor)
            try:
                await ready
            except defer.TimeoutError:
                self.log.warn("new policies not ready after {s:.0f} s; switching", s=READY_TIMEOUT)
        policies = [item.policy for item in chain]
        self.resolver.policy = PolicyChain(policies, now=self.reactor.seconds)
        if self.on_chain is not None:
            self.on_chain(policies)
        retired = [item for item in self.running if id(item.policy) not in kept]
        self.running = chain
        self.config = attrs.evolve(self.config, policy=config.policy)
        for item in retired:
            service = item.policy.service
            if service is not None and service.parent is not None:
                await defer.maybeDeferred(service.disownServiceParent)
        self.reloads += 1
        self.log.info(
            "reloaded {path}: {count} policies ({added} new, {retired} retired)",
            path=self.config_path,
            count=len(chain),
            added=len(added),
            retired=len(retired),
        )
        for line in describe_policies(config.policy, policies):
            self.log.info("{policy}", policy=line)

    def _build(self, config: Config) -> list[RunningPolicy]:
        """The new chain: running policies whose table is unchanged, new ones for the rest."""
        unused = list(self.running)
        context = context_for(config.server, self.reactor, config.tsig_key, self.sharing)
        chain: list[RunningPolicy] = []
        problems: list[str] = []
        for index, table in enumerate(config.policy):
            same = next((item for item in unused if item.table == table), None)
            if same is not None:
                unused.remove(same)
                chain.append(same)
                continue
            try:
                chain.append(
                    RunningPolicy(table, build_policy(index, table, self.registry, context))
                )
            except ConfigError as problem:
                problems.extend(problem.problems)
        if problems:
            raise ConfigError(problems)
        return chain

    def _say_what_needs_a_restart(self, config: Config) -> None:
        for section in ("server", "cache", "export", "admin", "rpz", "tsig_key"):
            if getattr(config, section) != getattr(self.config, section):
                self.log.warn(
                    "reload of {path}: [{section}] changed; that takes a restart",
                    path=self.config_path,
                    section=section,
                )
