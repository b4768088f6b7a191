"""Running blocking work (parsing, file reading) off the reactor thread, or inline in tests.

A `run_blocking` callable takes a no-argument function and returns a Deferred of its result.
Sources take one so production parses big MISP answers in the reactor's thread pool while
tests, passing `run_inline`, stay on one thread under a `Clock`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

__all__ = ["RunBlocking", "run_inline", "thread_runner"]

T = TypeVar("T")
RunBlocking = Callable[[Callable[[], Any]], Deferred[Any]]


def thread_runner(reactor: Any) -> Callable[[Callable[[], T]], Deferred[T]]:
    """A `run_blocking` that runs work in the reactor's thread pool."""

    def run(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    return run


def run_inline(work: Callable[[], T]) -> Deferred[T]:
    """A `run_blocking` that runs work at once, on the calling thread."""
    return defer.maybeDeferred(work)
