"""`MemorySink`: an in-memory `ISink` for tests, ours and third parties'.

It keeps every batch it is given, can be told to fail, and stops through a Deferred the
test fires, so exporter behaviour (batching, filtering, flushing on stop, isolation of a
failing sink) can be checked without files or sockets:

    sink = MemorySink()
    exporter = ExporterService([SinkSlot("memory", sink)], clock)
    ...
    assert [r["responseType"] for r in sink.records] == ["Blocked"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from misp_dns.interfaces import ISink

__all__ = ["MemorySink"]


@implementer(ISink)
class MemorySink:
    """Records every batch; `fail` makes `write` raise; `hold_stop` delays `stop`."""

    def __init__(self, *, fail: bool = False, hold_stop: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.started = False
        self.stopped = False
        self.fail = fail
        self.dropped = 0
        self._hold_stop = hold_stop
        self.stopping: defer.Deferred[None] | None = None

    @property
    def records(self) -> list[Any]:
        """Every record received, in order."""
        return [record for batch in self.batches for record in batch]

    def start(self) -> None:
        """Note that the sink was started."""
        self.started = True

    def write(self, records: Sequence[Any]) -> None:
        """Keep the batch (a copy), or raise if told to fail."""
        if self.fail:
            raise RuntimeError("MemorySink told to fail")
        self.batches.append(list(records))

    def stop(self) -> defer.Deferred[None] | None:
        """Stop now, or, with `hold_stop`, when the test fires `self.stopping`."""
        self.stopped = True
        if self._hold_stop:
            self.stopping = defer.Deferred()
            return self.stopping
        return None
