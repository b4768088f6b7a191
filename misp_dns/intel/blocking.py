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
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

__all__ = ["RunBlocking", "run_inline", "thread_runner", "without_collection"]

T = TypeVar("T")
P = ParamSpec("P")
RunBlocking = Callable[[Callable[[], Any]], Deferred[Any]]


def thread_runner(reactor: Any) -> Callable[[Callable[[], T]], Deferred[T]]:
    """A `run_blocking` that runs work in the reactor's thread pool."""

    def run(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), without_collection, work)

    return run


def run_inline(work: Callable[[], T]) -> Deferred[T]:
    """A `run_blocking` that runs work at once, on the calling thread."""
    return defer.maybeDeferred(work)


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


def without_collection(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`work(*args, **kwargs)`, run with the cyclic garbage collector paused (see above)."""
    _pause.enter()
    try:
        return work(*args, **kwargs)
    finally:
        _pause.leave()
