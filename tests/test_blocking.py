"""Blocking work off the reactor thread: the cyclic collector stays paused while it runs."""

from __future__ import annotations

import gc
import itertools
import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from conftest import failure_of, no_result, result_of
from twisted.internet.task import Clock

from misp_dns.intel.blocking import (
    RunSteps,
    Steps,
    run_inline,
    run_steps_inline,
    sliced_runner,
    thread_runner,
    without_collection,
)


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_work_runs_with_the_collector_paused_and_it_resumes() -> None:
    """A page's short-lived objects are never seen by a collection; collection resumes after."""
    assert without_collection(gc.isenabled) is False
    assert gc.isenabled()


def test_the_collector_resumes_when_the_work_fails() -> None:
    """A parse error in the work does not leave the collector off for good."""

    def fail() -> None:
        raise ValueError("bad page")

    with pytest.raises(ValueError, match="bad page"):
        without_collection(fail)
    assert gc.isenabled()


def test_two_threads_pausing_resume_only_when_both_are_done() -> None:
    """A REST page and a feed event parsed at once: the first to finish does not resume."""
    inside, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def slow() -> None:
        inside.set()
        release.wait(10)

    worker = threading.Thread(target=without_collection, args=(slow,))
    worker.start()
    assert inside.wait(10)
    seen.append(without_collection(gc.isenabled))
    seen.append(gc.isenabled())
    release.set()
    worker.join(10)
    assert seen == [False, False]
    assert gc.isenabled()


def test_a_program_that_turned_collection_off_keeps_it_off() -> None:
    """Pausing never turns the collector on behind the back of whoever switched it off."""
    gc.disable()
    without_collection(lambda: None)
    assert not gc.isenabled()


def test_run_inline_calls_at_once() -> None:
    """Tests' `run_inline` gives the result without a reactor."""
    assert result_of(run_inline(lambda: 7)) == 7


@pytest_twisted.ensureDeferred
async def test_thread_runner_runs_the_work_in_a_thread_with_collection_paused() -> None:
    """The reactor's thread pool runs parsing work, collector paused, result back in the reactor."""
    from twisted.internet import reactor

    main = threading.get_ident()
    where, paused = await thread_runner(reactor)(lambda: (threading.get_ident(), gc.isenabled()))
    assert where != main
    assert paused is False
    assert gc.isenabled()


def one_step_per_slice(clock: Clock) -> RunSteps:
    """A sliced runner whose timer says a slice's time is up after every step."""
    return sliced_runner(clock, slice_seconds=0.5, timer=itertools.count().__next__)


def test_steps_run_a_slice_per_reactor_turn_and_other_calls_run_between() -> None:
    """The reactor gets control between two slices: what it has to do meanwhile (a query
    to answer) runs before the next slice, and the result arrives after the last one."""
    clock = Clock()
    trace: list[str] = []

    def work() -> Steps[str]:
        for number in range(3):
            trace.append(f"step {number}")
            clock.callLater(0, trace.append, f"reactor after step {number}")
            yield
        return "built"

    done = one_step_per_slice(clock)(work())
    assert trace == []
    no_result(done)
    clock.advance(0)
    assert result_of(done) == "built"
    assert trace == [
        "step 0",
        "reactor after step 0",
        "step 1",
        "reactor after step 1",
        "step 2",
        "reactor after step 2",
    ]


def test_the_collector_stays_paused_from_the_first_slice_to_the_last() -> None:
    """Between two slices the page's objects are still alive, so no collection may see them
    (it would promote them); collection resumes when the steps end."""
    clock = Clock()
    seen: list[bool] = []

    def work() -> Steps[None]:
        seen.append(gc.isenabled())
        clock.callLater(0, lambda: seen.append(gc.isenabled()))
        yield
        seen.append(gc.isenabled())

    done = one_step_per_slice(clock)(work())
    clock.advance(0)
    result_of(done)
    assert seen == [False, False, False]
    assert gc.isenabled()


def test_a_failing_step_fails_the_deferred_and_resumes_the_collector() -> None:
    """A parse error in a slice reaches the caller (the updater keeps its last good set)."""
    clock = Clock()

    def work() -> Steps[None]:
        yield
        raise ValueError("bad page")

    done = one_step_per_slice(clock)(work())
    clock.advance(0)
    assert str(failure_of(done, ValueError)) == "bad page"
    assert gc.isenabled()


def test_a_slice_runs_steps_until_its_time_is_up() -> None:
    """With time to spare, one slice runs many steps before the reactor's turn comes; tests'
    inline runner runs them all at once."""
    clock = Clock()
    trace: list[str] = []

    def work() -> Steps[int]:
        for number in range(3):
            trace.append(f"step {number}")
            clock.callLater(0, trace.append, "reactor")
            yield
        return 3

    done = sliced_runner(clock, slice_seconds=10, timer=itertools.count().__next__)(work())
    clock.advance(0)
    assert result_of(done) == 3
    assert trace == ["step 0", "step 1", "step 2", "reactor", "reactor", "reactor"]
    trace.clear()
    assert result_of(run_steps_inline(work())) == 3
