"""The readiness flag behind `whenReady` of the updater and the zone follower."""

from __future__ import annotations

from conftest import no_result, result_of

from misp_dns.intel.readiness import Readiness


def test_waiters_fire_once_it_is_set_and_later_ones_at_once() -> None:
    """A policy's readiness probe waits until the first snapshot; after that it never waits."""
    readiness = Readiness()
    early = readiness.wait()
    no_result(early)
    readiness.set()
    assert result_of(early) is None
    assert result_of(readiness.wait()) is None


def test_setting_it_again_changes_nothing() -> None:
    """A second snapshot does not fire anything twice (a Deferred fired twice would raise)."""
    readiness = Readiness()
    waiting = readiness.wait()
    readiness.set()
    readiness.set()
    assert result_of(waiting) is None and readiness.ready
