"""The exporter service: a bounded queue between the DNS path and the export sinks.

The responder calls `ExporterService.record(...)` for every answered query, on the reactor
thread, with a `QueryEvent`'s fields as arguments (so no event object is made per query;
`observe(event)` takes an event, for other callers); it appends them as one plain tuple to
a bounded queue and returns at once (when the queue holds `max_queue` events, or events
reckoned by `event_size` at `max_queue_bytes`, the newest are dropped and counted). A
moment later, off the answer path, the exporter builds the records (with its own
`record.RecordEncoder`, once per query, shared by every sink, each at most
`record.MAX_RECORD_BYTES`) and hands them to each sink in batches, filtered by the sink's
`include`. Sinks own their own bounded backlog and count what they drop; the
exporter logs one line per sink that dropped records, within a second of the first drop
and then at most once every 10 s (likewise for the queue). Stopping the service exports
what is queued, then stops each sink (which flushes) and waits for them.

Wiring, in `misp_dns.tap.build_service` (the sinks are built by `misp_dns.build`):

    exporter = build_exporter(config.export, registry, reactor, server=config.server)
    exporter.setServiceParent(top)             # before the listeners: stopped after them
    responder.recorder = exporter.record
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from misp_dns.event import Answer, QueryEvent
from misp_dns.export.options import DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_BYTES
from misp_dns.export.record import EventFields, RecordEncoder
from misp_dns.interfaces import ISink

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "EventFields",
    "ExporterService",
    "SinkSlot",
    "event_size",
]

#: What an event is reckoned to hold besides its answer's records: itself, its answer, the
#: question and the client (about 750 bytes were measured for a one-record answer).
EVENT_BYTES = 512
#: What one parsed record is reckoned to hold besides its wire bytes: Twisted's RRHeader,
#: Name and payload objects (40 A records took 17 kB against 673 bytes on the wire).
RECORD_BYTES = 400
#: How long events wait in the queue so that they are exported in batches.
FLUSH_DELAY = 0.05
#: At most this many events are exported per reactor turn.
CHUNK_SIZE = 1000
#: Drops are reported at most this often (seconds), for the queue and for each sink.
REPORT_INTERVAL = 10.0
#: How often the drop counters are looked at (seconds).
CHECK_INTERVAL = 1.0


_ANSWER: Final = 5
_RESPONSE_SIZE: Final = 6


def event_size(event: QueryEvent) -> int:
    """The memory `event` is reckoned to hold while it waits in the queue.

    An answer carried with its packet (cached or blocked) shares its records with the cache
    or the policy, so only the event itself counts; an answer read from the upstream for
    this query alone counts its response's wire size and its records too.
    """
    return _answer_size(event.answer, event.response_size)


def _answer_size(answer: Answer, response_size: int) -> int:
    if answer.packet is not None:
        return EVENT_BYTES
    records = len(answer.answers) + len(answer.authority) + len(answer.additional)
    return EVENT_BYTES + response_size + RECORD_BYTES * records


def _fields_size(fields: EventFields) -> int:
    return _answer_size(fields[_ANSWER], fields[_RESPONSE_SIZE])


@attrs.define(eq=False)
class SinkSlot:
    """One configured sink, its `include` filter and what has been reported about it."""

    name: str
    sink: ISink
    blocked_only: bool = False
    reported_drops: int = 0
    #: Records lost because the sink's `write` raised (a sink should never raise).
    failed: int = 0
    failure_logged: bool = False
    logged_at: float = float("-inf")

    @property
    def dropped(self) -> int:
        """Every record this sink lost: those it dropped itself and those its write lost."""
        return int(self.sink.dropped) + self.failed


class ExporterService(service.Service):
    """Receives every answered query and feeds the sinks in batches, off the answer path."""

    log = Logger()

    def __init__(
        self,
        slots: Sequence[SinkSlot],
        clock: IReactorTime,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        flush_delay: float = FLUSH_DELAY,
        chunk_size: int = CHUNK_SIZE,
        report_interval: float = REPORT_INTERVAL,
    ) -> None:
        self.slots = list(slots)
        self.clock = clock
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.flush_delay = flush_delay
        self.chunk_size = chunk_size
        self.report_interval = report_interval
        #: Events dropped because the queue was full (lost for every sink).
        self.dropped = 0
        #: Events turned into records and handed to the sinks.
        self.exported = 0
        self._queue: deque[EventFields] = deque()
        #: What the queued events are reckoned to hold (`event_size`).
        self.queued_bytes = 0
        self._encoder = RecordEncoder()
        self._filtering = any(slot.blocked_only for slot in self.slots)
        self._drain_call: IDelayedCall | None = None
        self._report_call: IDelayedCall | None = None
        self._reported_queue_drops = 0
        self._queue_logged_at = float("-inf")
        self._failures_reset_at = float("-inf")
        # A record that cannot be built is a bug: logged once per interval.
        self._unbuildable_logged = False

    def __len__(self) -> int:
        return len(self._queue)

    def observe(self, event: QueryEvent) -> None:
        """Queue one answered query for export; never blocks, never raises."""
        self.record(*attrs.astuple(event, recurse=False))

    def record(self, *fields: Any) -> None:
        """Queue one answered query, given as `QueryEvent`'s fields in their order
        (`EventFields`), for export; never blocks, never raises (the responder's
        `recorder`: the arguments are queued as they come, one tuple)."""
        if not self.slots:
            return
        # Written out for cached and blocked answers, the most common: this runs per query.
        answer = fields[_ANSWER]
        size = EVENT_BYTES if answer.packet is not None else _fields_size(fields)
        queued = self.queued_bytes + size
        if queued > self.max_queue_bytes or len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(fields)
        self.queued_bytes = queued
        if self._drain_call is None and self.running:
            self._drain_call = self.clock.callLater(self.flush_delay, self._drain)

    def startService(self) -> None:
        super().startService()
        for slot in self.slots:
            started = defer.maybeDeferred(slot.sink.start)
            started.addErrback(self._start_failed, slot)
        self._report_call = self.clock.callLater(CHECK_INTERVAL, self._report)
        if self._queue and self._drain_call is None:
            self._drain_call = self.clock.callLater(self.flush_delay, self._drain)

    def _start_failed(self, failure: Any, slot: SinkSlot) -> None:
        self.log.failure("{sink}: cannot start", failure, sink=slot.name)

    def stopService(self) -> defer.Deferred[Any]:
        """Export what is queued, then stop every sink; fires when all have flushed."""
        super().stopService()
        for call in (self._drain_call, self._report_call):
            if call is not None and call.active():
                call.cancel()
        self._drain_call = self._report_call = None
        while self._queue:
            self._export_chunk()
        now = self.clock.seconds()
        self._guarded(self._report_queue, now, True)
        stops = []
        for slot in self.slots:
            stopped = defer.maybeDeferred(slot.sink.stop)
            stopped.addErrback(self._stop_failed, slot)
            # Records a sink gives up while stopping (an HTTP batch past the stop budget)
            # are counted only once its stop is over, so its last line comes after it.
            stopped.addCallback(self._stopped, slot)
            stops.append(stopped)
        return defer.DeferredList(stops)

    def _stop_failed(self, failure: Any, slot: SinkSlot) -> None:
        self.log.failure("{sink}: failed while stopping", failure, sink=slot.name)

    def _stopped(self, _result: object, slot: SinkSlot) -> None:
        self._guarded(self._report_sink, slot, self.clock.seconds(), True)

    def _drain(self) -> None:
        self._drain_call = None
        self._export_chunk()
        if self._queue and self.running:
            self._drain_call = self.clock.callLater(0, self._drain)

    def _export_chunk(self) -> None:
        queue = self._queue
        events = [queue.popleft() for _ in range(min(self.chunk_size, len(queue)))]
        self.queued_bytes -= sum(map(_fields_size, events))
        records, blocked, failures = self._encoder.encode_batch(events, blocked=self._filtering)
        if failures and not self._unbuildable_logged:
            self._unbuildable_logged = True
            fields, problem = failures[0]
            self.log.failure(
                "cannot build the query record of {event!r}", Failure(problem), event=fields
            )
        self.exported += len(records)
        # One batch object per include, so sinks sharing it share its bytes (`RecordBatch`).
        batches = {False: records, True: blocked}
        for slot in self.slots:
            chosen = batches[slot.blocked_only]
            if chosen is None or not chosen:
                continue
            try:
                slot.sink.write(chosen)
            except Exception:
                slot.failed += len(chosen)
                if not slot.failure_logged:
                    slot.failure_logged = True
                    self.log.failure("{sink}: write failed; records dropped", sink=slot.name)

    def _report(self) -> None:
        """Log what the queue and each sink dropped since their last line, one line per
        `report_interval` at most for each: the first drops are told within a second."""
        now = self.clock.seconds()
        self._guarded(self._report_queue, now, False)
        for slot in self.slots:
            self._guarded(self._report_sink, slot, now, False)
        if now - self._failures_reset_at >= self.report_interval:
            self._failures_reset_at = now
            self._unbuildable_logged = False
            for slot in self.slots:
                slot.failure_logged = False
        if self.running:
            self._report_call = self.clock.callLater(CHECK_INTERVAL, self._report)

    def _guarded(self, report: Callable[..., None], *args: Any) -> None:
        try:
            report(*args)
        except Exception:
            self.log.failure("reporting export drops failed")

    def _report_queue(self, now: float, final: bool) -> None:
        new = self.dropped - self._reported_queue_drops
        if new and (final or now - self._queue_logged_at >= self.report_interval):
            self._reported_queue_drops = self.dropped
            self._queue_logged_at = now
            self.log.warn(
                "export queue full (max_queue = {max_queue}, max_queue_bytes ="
                " {max_queue_bytes}): {count} query records dropped for every sink"
                " ({total} since start)",
                max_queue=self.max_queue,
                max_queue_bytes=self.max_queue_bytes,
                count=new,
                total=self.dropped,
            )

    def _report_sink(self, slot: SinkSlot, now: float, final: bool) -> None:
        total = slot.dropped
        new = total - slot.reported_drops
        if new > 0 and (final or now - slot.logged_at >= self.report_interval):
            slot.reported_drops = total
            slot.logged_at = now
            slot.failure_logged = False
            self.log.warn(
                "{sink}: {count} query records dropped ({total} since start)",
                sink=slot.name,
                count=new,
                total=total,
            )
