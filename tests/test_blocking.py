"""Blocking work off the reactor thread: the cyclic collector stays paused while it runs."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from conftest import result_of

from misp_dns.intel.blocking import run_inline, thread_runner, without_collection


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
