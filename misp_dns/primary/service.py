"""The RPZ primary's service: watch the blocking snapshots, version the zone, serve, notify.

`RpzPrimary` looks at the policy chain in service once a second. When a snapshot, the
chain (a SIGHUP reload) or a rule changed, it builds the zone's next content in slices
(a `Cooperator` on the injected reactor, so answering never waits for a million names),
takes the next serial (kept on disk by `SerialStore`), keeps the delta for IXFR and sends
NOTIFY. Its `respond` is the `Responder`'s zone hook (`ZoneServer.respond`).

Which policies make the zone: `misp`, `misp-feed` and installed sources (blocking, their
`enable_blocking` on) with `[rpz] action` (or `actions["policy[N]"]`), response-IP
networks too when their `block_response_ips` is on; `allowlist` policies as PASSTHRU.
Other policy types are left out (one line at start says which).

Example:

    [rpz]
    zone = "rpz.misp-dns.example"
    allow_transfer = ["127.0.0.0/8"]
    tsig_keys = ["fleet"]
    notify = ["192.0.2.53:53"]
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from misp_dns.interfaces import IPolicy
from misp_dns.policy.allowlist import AllowlistPolicy
from misp_dns.policy.misp import MispBlockingPolicy
from misp_dns.primary.history import Delta, History, SerialStore, Version, next_serial
from misp_dns.primary.notify import Notifier
from misp_dns.primary.transfer import Apex, Stream, ZoneServer
from misp_dns.primary.zone import (
    NODATA,
    NXDOMAIN,
    PASSTHRU,
    Feed,
    Record,
    Rule,
    ZoneContent,
    diff_in_steps,
)
from misp_dns.tsig import TsigKey
from misp_dns.values import RpzConfig, ServerConfig

__all__ = ["RpzPrimary"]

CHECK_INTERVAL = 1.0
PASSTHRU_TTL = 60
_TARGETS = {"nxdomain": NXDOMAIN, "nodata": NODATA}


class RpzPrimary(Service):
    """Serves the chain's blocking snapshots as an RPZ zone; see the module docstring.

    `chain()` gives the policies in service, in order; `keys` all `[[tsig_key]]` keys.
    """

    log = Logger()

    def __init__(
        self,
        config: RpzConfig,
        server: ServerConfig,
        keys: Mapping[str, TsigKey],
        chain: Callable[[], Sequence[IPolicy]],
        reactor: Any,
    ) -> None:
        self.config = config
        self.chain = chain
        self.reactor = reactor
        self.zone = config.zone.rstrip(".").lower()
        mname = (server.server_name or socket.gethostname() or "localhost").rstrip(".")
        self.apex = Apex(mname, f"hostadmin.{mname}")
        wanted = [name.rstrip(".").lower() for name in config.tsig_keys]
        allowed = {name: keys[name] for name in wanted} if wanted else dict(keys)
        self.history = History(config.ixfr_history)
        self.store = SerialStore(server.state_dir, self.zone)
        self.current: Version | None = None
        self.server = ZoneServer(
            self.zone,
            self.apex,
            config.allow_transfer,
            allowed,
            bool(wanted),
            lambda: self.current,
            self.history,
            reactor,
        )
        self.notifier: Notifier | None = None
        if config.notify:
            self.notifier = Notifier(
                self.zone,
                config.notify,
                self.apex.soa,
                keys[wanted[0]] if wanted else None,
                server.listen,
                reactor,
            )
        # One slice (STEP names, a few ms) per turn of the reactor, whatever the clock says.
        self._cooperator = task.Cooperator(
            terminationPredicateFactory=lambda: lambda: True,
            scheduler=lambda work: reactor.callLater(0, work),
        )
        self._loop: task.LoopingCall | None = None
        self._building: task.CooperativeTask | None = None
        self._left_out: set[str] = set()

    def respond(self, data: bytes, client: str, transport: str) -> bytes | Stream | None:
        """The zone hook of the responder: the answer to a request for the zone, or None."""
        return self.server.respond(data, client, transport)

    def startService(self) -> None:
        super().startService()
        ready = [policy.whenReady() for policy in self.chain()]
        defer.DeferredList(ready, consumeErrors=True).addCallback(self._start_checking)

    def _start_checking(self, _: object) -> None:
        if not self.running:
            return
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(CHECK_INTERVAL, now=True).addErrback(
            lambda failure: self.log.failure("RPZ zone check stopped", failure)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._building is not None:
            self._building.stop()
            self._building = None
        if self.notifier is not None:
            self.notifier.stop()

    def feeds(self) -> list[Feed]:
        """What each policy in service puts in the zone, in chain order."""
        feeds = []
        for index, policy in enumerate(self.chain()):
            if isinstance(policy, AllowlistPolicy):
                feeds.append(Feed(policy.names, Rule(PASSTHRU, PASSTHRU_TTL), traced=False))
            elif isinstance(policy, MispBlockingPolicy):
                options = policy.options
                if not options.enable_blocking:
                    continue
                action = self.config.actions.get(f"policy[{index}]", self.config.action)
                rule = Rule(_TARGETS[action], options.blocking_answer_ttl)
                response_ips = bool(getattr(options, "block_response_ips", False))
                feeds.append(Feed(policy.updater.snapshot, rule, response_ips))
            else:
                self._leave_out(index, policy)
        return feeds

    def _leave_out(self, index: int, policy: IPolicy) -> None:
        name = f"policy[{index}] ({getattr(policy, 'name', type(policy).__name__)})"
        if name not in self._left_out:
            self._left_out.add(name)
            self.log.info("RPZ zone {zone} leaves out {policy}", zone=self.zone, policy=name)

    def check(self) -> None:
        """Start building the next content if the inputs changed (and no build is going on)."""
        if self._building is not None:
            return
        feeds = self.feeds()
        digest = ZoneContent.digest_of(self.zone, feeds, self.config.traceability)
        current = self.current
        if current is not None and current.content.digest == digest:
            return
        work = self._build(feeds, current)
        self._building = self._cooperator.cooperate(work)
        self._building.whenDone().addErrback(self._build_failed)

    def _build(self, feeds: Sequence[Feed], current: Version | None) -> Iterator[None]:
        """Build the next content, and its delta from `current`, in slices."""
        content = yield from ZoneContent.build_in_steps(self.zone, feeds, self.config.traceability)
        delta: tuple[list[Record], list[Record]] | None = None
        if current is not None:
            delta = yield from diff_in_steps(current.content, content)
        self._install(content, current, delta)
        self._building = None

    def _build_failed(self, failure: Any) -> None:
        self._building = None
        if not failure.check(task.TaskStopped):
            self.log.failure("cannot build the RPZ zone {zone}", failure, zone=self.zone)

    def _install(
        self,
        content: ZoneContent,
        previous: Version | None,
        delta: tuple[list[Record], list[Record]] | None,
    ) -> None:
        deleted: list[Record] = []
        added: list[Record] = []
        if previous is None or delta is None:
            serial = self.store.first_serial(content.digest, self.reactor.seconds())
        else:
            serial = next_serial(previous.serial)
            deleted, added = delta
            self.history.add(Delta(previous.serial, serial, deleted, added))
        self.current = Version(serial, content)
        self.store.save(serial, content.digest)
        self.log.info(
            "RPZ zone {zone} serial {serial}: {count} triggers"
            " ({added} records added, {deleted} deleted{skipped})",
            zone=self.zone,
            serial=serial,
            count=len(content),
            added=len(added),
            deleted=len(deleted),
            skipped=f"; {content.skipped} names too long or special left out"
            if content.skipped
            else "",
        )
        if self.notifier is not None:
            self.notifier.notify(serial)
