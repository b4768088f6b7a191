"""Running blocking work (parsing, file reading) off the reactor thread, or inline in tests.

A `run_blocking` callable takes a no-argument function and returns a Deferred of its result.
Sources take one so production parses big MISP answers in the reactor's thread pool while
tests, passing `run_inline`, stay on one thread under a `Clock`.

Work run in the thread pool runs with Python's cyclic garbage collector paused
(`without_collection`). Decoding a page of 5,000 attributes creates tens of thousands of
objects that live only for that step; a collection in the middle would find them all alive,
promote them to the oldest generation and so bring on full collections, each of which holds
every thread, answering included, for up to a hundred milliseconds. Paused, they are freed
by their reference counts when the step ends and never seen by the collector. Queries keep
being answered meanwhile; their garbage simply waits for the next collection.

A thread is not enough for the big steps of a refresh, though. While it runs Python code it
holds the GIL, and the reactor thread, which gives the GIL up at every `recvfrom` and
`sendto`, then waits up to the switch interval (5 ms) to get it back, once per system call:
at 10,000 queries/s the answers queue up for hundreds of milliseconds. Work written as a
generator of steps (`Steps`: a generator that yields between two small pieces of work and
returns its result) is run instead by a `RunSteps`: `sliced_runner` runs it on the reactor
thread a few milliseconds at a time, with the reactor polling its sockets between two
slices, and `run_steps_inline` runs it to the end at once (tests, and sources without a
reactor). The collector stays paused from the first slice to the last, for the reason above.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool

__all__ = [
    "RunBlocking",
    "RunSteps",
    "Steps",
    "collection_paused",
    "run_inline",
    "run_steps_inline",
    "sliced_runner",
    "thread_runner",
    "without_collection",
]

T = TypeVar("T")
P = ParamSpec("P")
RunBlocking = Callable[[Callable[[], Any]], Deferred[Any]]
Steps = Generator[None, None, T]
RunSteps = Callable[[Steps[Any]], Deferred[Any]]

# How long one slice may keep the reactor from its sockets. At 10,000 queries/s that is
# about 40 queries waiting, answered as soon as the slice ends.
SLICE_SECONDS = 0.004


def thread_runner(reactor: Any) -> Callable[[Callable[[], T]], Deferred[T]]:
    """A `run_blocking` that runs work in the reactor's thread pool."""

    def run(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), without_collection, work)

    return run


def run_inline(work: Callable[[], T]) -> Deferred[T]:
    """A `run_blocking` that runs work at once, on the calling thread."""
    return defer.maybeDeferred(work)


def run_steps_inline(steps: Steps[T]) -> Deferred[T]:
    """A `RunSteps` that runs every step at once, on the calling thread."""
    return defer.maybeDeferred(_to_the_end, steps)


def _to_the_end(steps: Steps[T]) -> T:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: T = stop.value
            return result


def sliced_runner(
    clock: IReactorTime,
    slice_seconds: float = SLICE_SECONDS,
    timer: Callable[[], float] = time.perf_counter,
) -> RunSteps:
    """A `RunSteps` that runs the steps on the reactor thread, `slice_seconds` at a time.

    Each slice runs steps until `timer` says its time is up (at least one step), then hands
    the reactor back with `callLater(0, ...)`: the reactor polls its sockets, answers what
    came meanwhile and runs the next slice. The Deferred fires with the generator's return
    value, or fails with what a step raised.
    """

    def run(steps: Steps[T]) -> Deferred[T]:
        done: Deferred[T] = Deferred()
        _pause.enter()

        def one_slice() -> None:
            deadline = timer() + slice_seconds
            try:
                next(steps)
                while timer() < deadline:
                    next(steps)
            except StopIteration as stop:
                _pause.leave()
                done.callback(stop.value)
            except BaseException:
                _pause.leave()
                done.errback()
            else:
                clock.callLater(0, one_slice)

        clock.callLater(0, one_slice)
        return done

    return run


class _CollectorPause:
    """Pauses the cyclic garbage collector while at least one thread asks for it.

    Collection resumes when the last pause ends, and only if it was on when the first
    began (a program that turned it off keeps it off).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._resume = False

    def enter(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._holders += 1

    def leave(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._resume:
                gc.enable()


_pause = _CollectorPause()


@contextmanager
def collection_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for the `with` block (see above)."""
    _pause.enter()
    try:
        yield
    finally:
        _pause.leave()


def without_collection(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`work(*args, **kwargs)`, run with the cyclic garbage collector paused (see above)."""
    _pause.enter()
    try:
        return work(*args, **kwargs)
    finally:
        _pause.leave()
