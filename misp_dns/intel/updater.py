"""Keeps a policy's indicator snapshot current: from the disk cache at start, then from MISP.

The updater is a Twisted service. On start it loads the snapshot last saved in `state_dir`
(so a restart blocks at once, even with MISP down) and starts the first fetch. Each cycle
fetches from an `IIndicatorSource`, selects, normalises and builds a new immutable
`DomainSet` in steps (`run_steps`: in production `blocking.sliced_runner`, slices of a few
milliseconds on the reactor thread, between which it answers queries), and replaces the
served snapshot in one assignment; serving never waits for a refresh. With a real reactor
(`pause_collection`), the cyclic garbage collector is paused from the first page to the
built set, so no collection sees a page's objects half used. A changed snapshot is saved
back to disk. With `saved` (the supervisor of a group of serving processes,
docs/workers.md), it is then called with the file's path, for the serving processes to map
the new file, and the updater itself serves that mapping too (loaded from disk at start as
well), so that the group holds one copy of the indicators.

`generation` grows by one each time another snapshot is served, so that what was decided
on the old one (the resolver's verdicts on cached answers) can tell it is out of date.
With `response_ips`, the address attributes become response-IP networks of the snapshot.

A failed cycle keeps the last good snapshot and is retried sooner than `interval`: after
`retry_after`, doubling per failure, never later than `interval`. Cycles never overlap.

Each snapshot served (from disk, or after a refresh, changed or not) is logged on one line
naming the updater's `label`, how many distinct names it blocks (or, with `enforcing`
false, matches in monitor mode) and how many indicators it was built from: several
indicators may name one domain, so the two counts differ. A source with a `fetch_summary`
string (the MISP client's, the feed's) adds what its last fetch read to that line.
The schedule is kept with `callLater` rather than `LoopingCall`, because the delay after a
failure differs from the regular one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from misp_dns.allocator import release_free_memory
from misp_dns.backoff import backoff_delay
from misp_dns.intel import store
from misp_dns.intel.blocking import (
    RunSteps,
    Steps,
    collection_paused,
    run_steps_inline,
    sliced_runner,
)
from misp_dns.intel.domainset import DomainSet, DomainSetBuilder
from misp_dns.intel.normalize import Tally, selected
from misp_dns.intel.readiness import Readiness
from misp_dns.interfaces import IIndicatorSource, RawIndicator

__all__ = ["IndicatorUpdater"]

RunInThread = Callable[..., defer.Deferred[Any]]


# Indicators normalised into the set between two steps of `_adding_page`.
_INDICATORS_PER_STEP = 256


def _adding_page(
    builder: DomainSetBuilder,
    raws: list[RawIndicator],
    now: float,
    max_age: float,
    tally: Tally,
    response_ips: bool,
) -> Steps[None]:
    for start in range(0, len(raws), _INDICATORS_PER_STEP):
        chunk = raws[start : start + _INDICATORS_PER_STEP]
        builder.add_all(
            selected(chunk, now=now, max_age=max_age, tally=tally, response_ips=response_ips)
        )
        yield


def _steps_runner(clock: IReactorTime) -> RunSteps:
    """A real reactor builds snapshots in slices between its polls; a test's `Clock` runs
    the steps whole, at once."""
    if hasattr(clock, "getThreadPool"):
        return sliced_runner(clock)
    return run_steps_inline


def _digest(domainset: DomainSet) -> str:
    return domainset.digest


class IndicatorUpdater(Service):
    """Fetches indicators on a schedule and serves the latest good `DomainSet`.

    What the status and metrics read: `failures` (in a row, 0 after a success),
    `failed_cycles` (since start), `last_success` (the clock's time when the last good cycle
    ended, None before one), `last_duration` (seconds the last cycle took, good or not),
    `last_error` (why the last cycle failed, "" after a success) and `next_update_at`.
    """

    log = Logger()

    def __init__(
        self,
        label: str,
        source: IIndicatorSource,
        *,
        clock: IReactorTime,
        interval: float,
        max_age: float,
        state_path: str | None,
        retry_after: float = 30.0,
        run_in_thread: RunInThread = deferToThread,
        run_steps: RunSteps | None = None,
        pause_collection: bool | None = None,
        enforcing: bool = True,
        response_ips: bool = False,
        saved: Callable[[str], None] | None = None,
    ) -> None:
        self.label = label
        self.enforcing = enforcing
        self.source = source
        self.clock = clock
        self.interval = interval
        self.max_age = max_age
        self.state_path = state_path
        self.retry_after = retry_after
        self.run_in_thread = run_in_thread
        self.run_steps = run_steps or _steps_runner(clock)
        if pause_collection is None:
            pause_collection = hasattr(clock, "getThreadPool")
        self.pause_collection = pause_collection
        self.response_ips = response_ips
        self.saved = saved
        self.snapshot = DomainSet.empty()
        self.generation = 0
        self.failures = 0
        self.cycles = 0
        self.failed_cycles = 0
        self.last_success: float | None = None
        self.last_duration: float | None = None
        self.last_error = ""
        self._cycle_started = 0.0
        self._running: defer.Deferred[None] | None = None
        self._next: IDelayedCall | None = None
        self._readiness = Readiness()
        self._warned_unwritable = False

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once a snapshot is served (from disk or MISP) or the first fetch failed."""
        return self._readiness.wait()

    def startService(self) -> None:
        super().startService()
        loading = self._load_from_disk() if self.state_path else defer.succeed(None)
        loading.addBoth(lambda _: self.update_now())

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        return None

    def _load_from_disk(self) -> defer.Deferred[None]:
        assert self.state_path is not None
        load = store.load_mapped if self.saved is not None else store.load
        loading = self.run_in_thread(load, self.state_path)

        def loaded(found: DomainSet | None) -> None:
            if found is not None and len(self.snapshot) == 0:
                self._serve(found)
                self.log.info(
                    "{label}: {serving} {count} distinct names from the snapshot {path},"
                    " until the first refresh",
                    label=self.label,
                    serving=self._serving(),
                    count=len(found),
                    path=self.state_path,
                )
                self._readiness.set()

        def failed(failure: Failure) -> None:
            self.log.failure("{label}: cannot load the indicator cache", failure, label=self.label)

        return loading.addCallbacks(loaded, failed)

    def update_now(self) -> defer.Deferred[None]:
        """Run one cycle now, unless one is running (then return that one)."""
        if self._running is not None:
            return self._running
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        self._cycle_started = self.clock.seconds()
        building = defer.Deferred.fromCoroutine(self._fetch_and_build(self._cycle_started))
        building.addCallback(self._install)
        building.addCallbacks(self._succeeded, self._failed)
        cycle: defer.Deferred[None] = building.addBoth(self._cycle_over)
        if self._running is None and not cycle.called:
            self._running = cycle
        return cycle

    async def _fetch_and_build(self, started: float) -> tuple[Tally, DomainSet]:
        """Fetch page by page, each page normalised into the new set by `run_steps`.

        Only one page of raw attributes lives at a time, so a million indicators cost the
        compact set being built, not a million objects. Normalising and indexing run as
        steps (on the reactor thread in slices, in production), so that answering goes on
        between them; the digest, whose hashing lets go of the GIL, is taken in a thread.
        """
        builder = DomainSet.builder()
        tally = Tally()

        def consume(raws: list[RawIndicator]) -> defer.Deferred[Any]:
            return self.run_steps(
                _adding_page(builder, raws, started, self.max_age, tally, self.response_ips)
            )

        # A page's objects stay alive from its parse to its last slice, and the reactor
        # runs in between: a collection then would promote them to the oldest generation
        # and bring on full collections, each holding the reactor for tens of milliseconds.
        with collection_paused() if self.pause_collection else contextlib.nullcontext():
            await self.source.fetch_pages(consume)
            domainset: DomainSet = await self.run_steps(builder.finishing())
        await self.run_in_thread(_digest, domainset)
        return tally, domainset

    def _install(self, built: tuple[Tally, DomainSet]) -> defer.Deferred[None] | None:
        tally, domainset = built
        fetched = getattr(self.source, "fetch_summary", None)
        self.log.info(
            "{label}: {serving} {count} distinct names; indicators {summary}{fetched}",
            label=self.label,
            serving=self._serving(),
            count=len(domainset),
            summary=tally.summary(),
            fetched=f"; fetched {fetched}" if isinstance(fetched, str) and fetched else "",
        )
        if domainset.digest == self.snapshot.digest:
            return None
        self._serve(domainset)
        if self.state_path is None:
            return None
        saving = self.run_in_thread(_save, self.state_path, domainset)
        return saving.addCallbacks(self._was_saved, self._unwritable)

    def _was_saved(self, written: bool) -> defer.Deferred[None] | None:
        if not written or self.saved is None or self.state_path is None:
            return None
        self.saved(self.state_path)
        # The serving processes map this file: serve the same mapping here and let the
        # built copy go, so the group holds the indicators once (docs/workers.md).
        mapping = self.run_in_thread(store.load_mapped, self.state_path)
        return mapping.addCallback(self._serve_mapped)

    def _serve_mapped(self, mapped: DomainSet | None) -> None:
        if mapped is not None and mapped.digest == self.snapshot.digest:
            # The same indicators: cached verdicts stay good, the generation stays.
            self.snapshot = mapped

    def _serve(self, snapshot: DomainSet) -> None:
        self.snapshot = snapshot
        self.generation += 1

    def _unwritable(self, failure: Failure) -> None:
        if not self._warned_unwritable:
            self._warned_unwritable = True
            self.log.warn(
                "{label}: cannot save the indicator cache ({reason}); serving from memory,"
                " a restart will wait for the next fetch",
                label=self.label,
                reason=failure.getErrorMessage(),
            )

    @property
    def next_update_at(self) -> float | None:
        """When the next cycle is due by the clock, or None (one is running, or stopped)."""
        if self._next is None or not self._next.active():
            return None
        return float(self._next.getTime())

    def _succeeded(self, _: None) -> None:
        now = self.clock.seconds()
        self.failures = 0
        self.last_success = now
        self.last_duration = now - self._cycle_started
        self.last_error = ""
        self._schedule(self.interval)

    def _failed(self, failure: Failure) -> None:
        self.failures += 1
        self.failed_cycles += 1
        self.last_duration = self.clock.seconds() - self._cycle_started
        self.last_error = failure.getErrorMessage()
        delay = backoff_delay(self.failures, self.retry_after, self.interval)
        self.log.warn(
            "{label}: update failed: {reason}; still {serving} the {count} distinct names of"
            " the last good update; next try in {delay:.0f} s",
            label=self.label,
            reason=failure.getErrorMessage(),
            serving=self._serving(),
            count=len(self.snapshot),
            delay=delay,
        )
        self._schedule(delay)

    def _cycle_over(self, _: object) -> None:
        self.cycles += 1
        self._running = None
        self._readiness.set()
        trimming = self.run_in_thread(release_free_memory)
        trimming.addErrback(
            lambda failure: self.log.failure("{label}: trimming memory", failure, label=self.label)
        )

    def _serving(self) -> str:
        return "blocking" if self.enforcing else "matching (monitor mode, nothing blocked)"

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._next = self.clock.callLater(delay, self.update_now)


def _save(path: str, domainset: DomainSet) -> bool:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return store.save(path, domainset)
