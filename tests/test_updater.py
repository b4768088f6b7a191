"""The indicator updater: disk cache first, refresh on schedule, keep the last good set."""

from __future__ import annotations

import gc
import itertools
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from misp_dns.intel import store
from misp_dns.intel.blocking import Steps, sliced_runner
from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.indicator import BlockEntry
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import RawIndicator
from misp_dns.testing import MemoryIndicatorSource

HOUR = 3600.0


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    """Runs the 'thread' work at once, so the Clock alone drives the updater."""
    return defer.maybeDeferred(function, *args)


def make_updater(
    source: MemoryIndicatorSource, clock: Clock, state: Path | None = None
) -> IndicatorUpdater:
    return IndicatorUpdater(
        "misp-connector",
        source,
        clock=clock,
        interval=2 * HOUR,
        max_age=15 * 86400,
        state_path=str(state) if state else None,
        retry_after=30,
        run_in_thread=inline,
    )


def raw(value: str, **kwargs: Any) -> RawIndicator:
    return RawIndicator(value=value, type="domain", **kwargs)


def test_first_fetch_at_start_then_every_interval() -> None:
    """Indicators are fetched at start and again after update_interval."""
    clock = Clock()
    source = MemoryIndicatorSource([raw("evil.example")])
    updater = make_updater(source, clock)
    updater.startService()
    assert updater.whenReady().called
    assert updater.snapshot.match("www.evil.example") is not None
    source.indicators = [raw("other.example")]
    clock.advance(2 * HOUR - 1)
    assert source.fetches == 1
    clock.advance(1)
    assert source.fetches == 2
    assert updater.snapshot.match("evil.example") is None
    assert updater.snapshot.match("other.example") is not None


@pytest.mark.allow_errors
def test_failed_fetch_keeps_last_good_set_and_retries_sooner() -> None:
    """MISP down: blocking goes on with the old set; retries back off but stay under interval."""
    clock = Clock()
    source = MemoryIndicatorSource([raw("evil.example")])
    updater = make_updater(source, clock)
    updater.startService()
    source.error = RuntimeError("connection refused")
    clock.advance(2 * HOUR)
    assert updater.failures == 1
    assert updater.snapshot.match("evil.example") is not None
    clock.advance(30)
    assert source.fetches == 3 and updater.failures == 2
    clock.advance(59)
    assert source.fetches == 3
    clock.advance(1)
    assert source.fetches == 4
    source.error = None
    clock.advance(120)
    assert updater.failures == 0
    assert updater.snapshot.match("evil.example") is not None


def test_cycles_never_overlap() -> None:
    """Asking for an update while one runs joins it instead of starting a second fetch."""
    clock = Clock()
    source = MemoryIndicatorSource([raw("evil.example")], hold=True)
    updater = make_updater(source, clock)
    updater.startService()
    updater.update_now()
    updater.update_now()
    assert source.fetches == 1
    source.release()
    assert updater.snapshot.match("evil.example") is not None


def test_rules_of_what_to_block_apply() -> None:
    """to_ids off, deleted, stale by last_seen and unusable values are not blocked."""
    clock = Clock()
    clock.advance(1_700_000_000)
    now = clock.seconds()
    source = MemoryIndicatorSource(
        [
            raw("kept.example", last_seen=now - 86400),
            raw("noids.example", to_ids=False),
            raw("deleted.example", deleted=True),
            raw("stale.example", last_seen=now - 20 * 86400),
            raw("10.0.0.1"),
        ]
    )
    updater = make_updater(source, clock)
    updater.startService()
    names = {entry.name for entry in updater.snapshot.entries()}
    assert names == {"kept.example"}


def test_restart_blocks_from_disk_before_first_fetch(tmp_path: Path) -> None:
    """A restart with MISP unreachable serves the indicators saved by the last run."""
    state = tmp_path / "state" / "misp.snapshot"
    first = make_updater(MemoryIndicatorSource([raw("evil.example")]), Clock(), state)
    first.startService()
    first.stopService()
    assert state.exists()
    down = MemoryIndicatorSource(error=RuntimeError("MISP unreachable"), hold=True)
    second = make_updater(down, Clock(), state)
    second.startService()
    assert second.whenReady().called
    assert second.snapshot.match("a.evil.example") is not None


@pytest.mark.allow_errors
def test_broken_cache_file_is_ignored(tmp_path: Path) -> None:
    """A corrupt cache file is logged and ignored; the first fetch fills the set."""
    state = tmp_path / "misp.snapshot"
    state.write_bytes(b"not a snapshot at all")
    updater = make_updater(MemoryIndicatorSource([raw("evil.example")]), Clock(), state)
    updater.startService()
    assert updater.snapshot.match("evil.example") is not None
    assert store.load(state) is not None


@pytest.mark.allow_errors
def test_unwritable_state_dir_serves_from_memory(tmp_path: Path) -> None:
    """When the cache cannot be written, the new set is served all the same."""
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    updater = make_updater(
        MemoryIndicatorSource([raw("evil.example")]), Clock(), blocker / "misp.snapshot"
    )
    updater.startService()
    assert updater.snapshot.match("evil.example") is not None


def test_unchanged_set_is_not_rewritten(tmp_path: Path) -> None:
    """A refresh that brings the same indicators leaves the cache file alone."""
    state = tmp_path / "misp.snapshot"
    clock = Clock()
    updater = make_updater(MemoryIndicatorSource([raw("evil.example")]), clock, state)
    updater.startService()
    written = state.stat().st_mtime_ns
    state.touch()
    touched = state.stat().st_mtime_ns
    clock.advance(2 * HOUR)
    assert state.stat().st_mtime_ns == touched != 0 and written <= touched


def test_empty_snapshot_matches_nothing() -> None:
    """Before any load, nothing is blocked."""
    assert DomainSet.empty().match("evil.example") is None
    assert len(DomainSet.build([BlockEntry("a.example", True)])) == 1


@pytest.mark.allow_errors
def test_refresh_outcome_is_kept_for_status_and_metrics() -> None:
    """The last good refresh's time, the last cycle's duration and error, the failures since
    start and the next refresh's time are there to read."""
    clock = Clock()
    clock.advance(1_700_000_000)
    source = MemoryIndicatorSource([raw("evil.example")], hold=True)
    updater = make_updater(source, clock)
    assert updater.last_success is None and updater.next_update_at is None
    updater.startService()
    clock.advance(3)
    source.release()
    assert updater.last_success == 1_700_000_003
    assert updater.last_duration == 3
    assert updater.next_update_at == 1_700_000_003 + 2 * HOUR
    source.hold = False
    source.error = RuntimeError("MISP answered 503")
    updater.update_now()
    assert updater.last_success == 1_700_000_003
    assert updater.last_error == "MISP answered 503"
    assert updater.failed_cycles == 1
    assert updater.next_update_at == 1_700_000_003 + 30
    source.error = None
    clock.advance(30)
    assert updater.last_success == 1_700_000_033
    assert updater.last_error == "" and updater.failed_cycles == 1 and updater.failures == 0
    updater.stopService()
    assert updater.next_update_at is None


def test_the_generation_grows_with_each_snapshot_served(tmp_path: Path) -> None:
    """Loading from disk and every changed refresh serve a new snapshot and grow the
    generation; a refresh bringing the same indicators changes neither."""
    state = tmp_path / "misp.snapshot"
    first = make_updater(MemoryIndicatorSource([raw("evil.example")]), Clock(), state)
    first.startService()
    assert first.generation == 1
    clock = Clock()
    source = MemoryIndicatorSource([raw("evil.example")])
    second = make_updater(source, clock, state)
    second.startService()
    assert second.generation == 1  # from disk; the fetch brought the same set
    clock.advance(2 * HOUR)
    assert second.generation == 1
    source.indicators = [raw("other.example")]
    clock.advance(2 * HOUR)
    assert second.generation == 2


def test_response_ips_become_networks_of_the_snapshot_when_asked_for() -> None:
    """With `response_ips` the address attributes are listed networks; without, they are
    left out as before."""
    indicators = [raw("evil.example"), RawIndicator("203.0.113.0/24", "ip-dst")]
    for response_ips, listed in ((True, True), (False, False)):
        updater = IndicatorUpdater(
            "misp-connector",
            MemoryIndicatorSource(list(indicators)),
            clock=Clock(),
            interval=2 * HOUR,
            max_age=15 * 86400,
            state_path=None,
            run_in_thread=inline,
            response_ips=response_ips,
        )
        updater.startService()
        assert updater.snapshot.match("evil.example") is not None
        assert (updater.snapshot.match_ip(bytes([203, 0, 113, 1])) is not None) is listed


def test_a_sliced_build_serves_the_old_set_until_its_last_slice_and_builds_the_same_set() -> None:
    """Built in slices on the reactor (one step per slice here), the next snapshot is served
    only once complete, counted and logged as usual, and equals the one built at once."""
    clock = Clock()
    raws = [raw(f"d{i}.example") for i in range(1000)] + [raw("bad..example")]
    source = MemoryIndicatorSource(raws)
    sliced = make_updater(source, clock)
    slicer = sliced_runner(clock, slice_seconds=0.5, timer=itertools.count().__next__)
    seen_between_slices: list[DomainSet] = []

    def watched(steps: Steps[Any]) -> Steps[Any]:
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value
            clock.callLater(0, lambda: seen_between_slices.append(sliced.snapshot))
            yield

    sliced.run_steps = lambda steps: slicer(watched(steps))
    old = sliced.snapshot
    sliced.startService()
    assert not sliced.whenReady().called
    clock.advance(0)
    assert len(seen_between_slices) > 1000 // 256
    assert all(snapshot is old for snapshot in seen_between_slices)
    at_once = make_updater(MemoryIndicatorSource(raws), Clock())
    at_once.startService()
    assert sliced.snapshot.digest == at_once.snapshot.digest
    assert len(sliced.snapshot) == 1000 and sliced.generation == 1


class _PagedSource:
    """A source that hands over one page, then waits for `next_page` before the second."""

    def __init__(self) -> None:
        self.next_page: defer.Deferred[None] = defer.Deferred()

    def fetch_pages(self, consume: Any) -> defer.Deferred[None]:
        async def pages() -> None:
            await defer.maybeDeferred(consume, [raw("first.example")])
            await self.next_page
            await defer.maybeDeferred(consume, [raw("second.example")])

        return defer.Deferred.fromCoroutine(pages())


def test_the_collector_stays_paused_from_the_first_page_to_the_built_set() -> None:
    """While the next page is awaited, the first page's indicators are half built into the
    set: no collection may run then (it would promote them and bring on the full collections
    that stall answering); collection resumes once the set is built."""
    was = gc.isenabled()
    gc.enable()
    try:
        source = _PagedSource()
        updater = IndicatorUpdater(
            "misp-connector",
            source,  # type: ignore[arg-type]
            clock=Clock(),
            interval=2 * HOUR,
            max_age=15 * 86400,
            state_path=None,
            run_in_thread=inline,
            pause_collection=True,
        )
        updater.startService()
        between_pages = gc.isenabled()
        source.next_page.callback(None)
        assert between_pages is False
        assert gc.isenabled()
        assert updater.snapshot.match("second.example") is not None
    finally:
        if not was:
            gc.disable()


def test_a_group_supervisor_announces_each_new_file_and_serves_its_mapping(
    tmp_path: Path,
) -> None:
    """With `saved` (a group's supervisor), each snapshot written is announced with its
    path, and the updater then serves the file's mapping, as the serving processes do,
    instead of the copy it built; an unchanged set is neither written nor announced."""
    clock = Clock()
    source = MemoryIndicatorSource([raw("evil.example")])
    state = tmp_path / "misp.snapshot"
    announced: list[str] = []
    updater = IndicatorUpdater(
        "misp-connector",
        source,
        clock=clock,
        interval=2 * HOUR,
        max_age=15 * 86400,
        state_path=str(state),
        run_in_thread=inline,
        saved=announced.append,
    )
    updater.startService()
    assert announced == [str(state)]
    assert str(state) in Path("/proc/self/maps").read_text()
    assert updater.snapshot.match("www.evil.example") is not None
    assert updater.generation == 1
    clock.advance(2 * HOUR)
    assert announced == [str(state)]
    source.indicators.append(raw("worse.example"))
    clock.advance(2 * HOUR)
    assert announced == [str(state), str(state)]
    assert updater.snapshot.match("worse.example") is not None
    updater.stopService()
