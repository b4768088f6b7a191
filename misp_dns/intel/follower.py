"""Serves the snapshot another process fetches: what a serving process of a group runs
instead of an `IndicatorUpdater`.

With `[server] workers` above 1 (docs/workers.md), the supervisor's updaters fetch from
MISP and save each new snapshot to their `state_path`; the serving processes never fetch.
Their blocking policies read a `SnapshotFollower`, which maps that file read-only
(`store.load_mapped`: the big tables are views of the mapping, whose pages every process
shares) at start and again each time `reload()` is called, which the serving process does
when the supervisor says the file was replaced. Before any snapshot exists it serves the
empty set, as a single process does before its first fetch.

It offers what the policy, the admin status and the metrics read of an updater
(`snapshot`, `generation`, `label`, `whenReady()`, the refresh counters); `update_now()`
reads the file again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from misp_dns.intel import store
from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.readiness import Readiness

__all__ = ["SnapshotFollower"]

RunInThread = Callable[..., defer.Deferred[Any]]


class SnapshotFollower(Service):
    """Serves the `DomainSet` saved at `state_path`, read again on `reload()`."""

    log = Logger()

    def __init__(
        self,
        label: str,
        state_path: str,
        *,
        clock: IReactorTime,
        enforcing: bool = True,
        run_in_thread: RunInThread = deferToThread,
        load: Callable[[str], DomainSet | None] = store.load_mapped,
    ) -> None:
        self.label = label
        self.state_path = state_path
        self.clock = clock
        self.enforcing = enforcing
        self.run_in_thread = run_in_thread
        self.load = load
        self.snapshot = DomainSet.empty()
        self.generation = 0
        self.cycles = 0
        self.failures = 0
        self.failed_cycles = 0
        self.last_success: float | None = None
        self.last_duration: float | None = None
        self.last_error = ""
        self.next_update_at: float | None = None
        self._readiness = Readiness()
        self._loading: defer.Deferred[None] | None = None
        self._again = False

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once the file was read at start, whether it held a snapshot or not."""
        return self._readiness.wait()

    def startService(self) -> None:
        super().startService()
        # Read at once, not in a thread: the listeners start after the policies, so a
        # (re)started serving process never answers before it holds the saved snapshot.
        # Mapping a file is quick; its pages are read as queries touch them.
        self._reload(defer.maybeDeferred)

    def update_now(self) -> defer.Deferred[None]:
        """Read the file again (what a refresh means for a process that does not fetch)."""
        return self.reload()

    def reload(self) -> defer.Deferred[None]:
        """Map the file again and serve what it holds; while a read runs, one more follows."""
        return self._reload(self.run_in_thread)

    def _reload(self, run: RunInThread) -> defer.Deferred[None]:
        if self._loading is not None:
            self._again = True
            return self._loading
        started = self.clock.seconds()
        loading = run(self.load, self.state_path)
        loading.addCallbacks(self._loaded, self._failed, callbackArgs=(started,))
        done: defer.Deferred[None] = loading.addBoth(self._over)
        if not done.called:
            self._loading = done
        return done

    def _loaded(self, found: DomainSet | None, started: float) -> None:
        self.last_duration = self.clock.seconds() - started
        if found is None or found.digest == self.snapshot.digest:
            return
        self.snapshot = found
        self.generation += 1
        self.last_success = self.clock.seconds()
        self.log.info(
            "{label}: {serving} {count} distinct names from the snapshot {path}",
            label=self.label,
            serving="blocking" if self.enforcing else "matching (monitor mode, nothing blocked)",
            count=len(found),
            path=self.state_path,
        )

    def _failed(self, failure: Failure) -> None:
        self.failures += 1
        self.failed_cycles += 1
        self.last_error = failure.getErrorMessage()
        self.log.failure(
            "{label}: cannot read {path}", failure, label=self.label, path=self.state_path
        )

    def _over(self, _: object) -> None:
        self.cycles += 1
        self._loading = None
        self._readiness.set()
        if self._again:
            self._again = False
            self.reload()
