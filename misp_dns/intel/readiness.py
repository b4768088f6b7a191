"""A one-way flag with waiters: the readiness of a service that serves indicators.

`IndicatorUpdater` and `ZoneFollower` are ready once they serve something (from disk or
their source) or their first attempt failed; `IPolicy.whenReady` hands out `wait()`.
"""

from __future__ import annotations

from twisted.internet import defer

__all__ = ["Readiness"]


class Readiness:
    """Not ready until `set()`; `wait()` fires then, or at once when already ready."""

    def __init__(self) -> None:
        self.ready = False
        self._waiting: list[defer.Deferred[None]] = []

    def wait(self) -> defer.Deferred[None]:
        """A Deferred firing (with None) once ready."""
        if self.ready:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiting)
        return waiting

    def set(self) -> None:
        """Ready from now on: fire every waiter (again is a no-op)."""
        if self.ready:
            return
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(None)
