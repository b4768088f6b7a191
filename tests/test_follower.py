"""Tests for misp_dns.intel.follower: a serving process's view of the supervisor's snapshots."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock

from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.follower import SnapshotFollower
from misp_dns.intel.indicator import BlockEntry
from misp_dns.intel.store import save


def _inline(function, *args):  # type: ignore[no-untyped-def]
    return defer.maybeDeferred(function, *args)


def _follower(path: Path) -> SnapshotFollower:
    return SnapshotFollower("misp test", str(path), clock=Clock(), run_in_thread=_inline)


def _set(*names: str) -> DomainSet:
    return DomainSet.build(BlockEntry(name, subdomains=True) for name in names)


def test_before_any_snapshot_it_serves_nothing_and_is_ready(tmp_path: Path) -> None:
    """With no file yet (the supervisor's first fetch is under way) nothing is blocked,
    and the policy counts as ready, as a single process is after an empty start."""
    follower = _follower(tmp_path / "misp.snapshot")
    follower.startService()
    assert len(follower.snapshot) == 0
    assert follower.whenReady().called


def test_each_reload_serves_the_file_as_it_is_now(tmp_path: Path) -> None:
    """At start it serves the file; after the supervisor replaced it, `reload` serves the
    new set and the generation grows (so cached verdicts are judged again); a reload that
    finds the same set changes nothing."""
    path = tmp_path / "misp.snapshot"
    save(path, _set("one.example"))
    follower = _follower(path)
    follower.startService()
    assert follower.snapshot.match("www.one.example") is not None
    assert follower.generation == 1
    save(path, _set("one.example", "two.example"))
    follower.reload()
    assert follower.snapshot.match("two.example") is not None
    assert follower.generation == 2
    follower.reload()
    assert follower.generation == 2


def test_a_reload_asked_during_a_reload_runs_after_it(tmp_path: Path) -> None:
    """A new snapshot announced while the last one is still being read is not missed."""
    path = tmp_path / "misp.snapshot"
    save(path, _set("one.example"))
    pending: list[defer.Deferred[object]] = []

    def held(function, *args):  # type: ignore[no-untyped-def]
        waiting: defer.Deferred[object] = defer.Deferred()
        waiting.addCallback(lambda _: function(*args))
        pending.append(waiting)
        return waiting

    follower = SnapshotFollower("misp test", str(path), clock=Clock(), run_in_thread=held)
    follower.startService()  # the first read is at once (see the next test)
    follower.reload()
    save(path, _set("two.example"))
    follower.reload()
    assert len(pending) == 1
    pending.pop().callback(None)
    assert len(pending) == 1
    pending.pop().callback(None)
    assert follower.snapshot.match("two.example") is not None


def test_the_snapshot_saved_before_start_is_served_as_soon_as_it_starts(
    tmp_path: Path,
) -> None:
    """A serving process (re)started after the supervisor saved a snapshot serves it from
    the moment its policies started, before its listeners start: it is read at once, not
    in a thread whose result would come after the first queries."""
    path = tmp_path / "misp.snapshot"
    save(path, _set("one.example"))
    never: defer.Deferred[None] = defer.Deferred()
    follower = SnapshotFollower(
        "misp test", str(path), clock=Clock(), run_in_thread=lambda *args: never
    )
    follower.startService()
    assert follower.snapshot.match("www.one.example") is not None
    assert follower.whenReady().called
