"""The exporter service: bounded queue, batches off the answer path, filters, drops, flush."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import dns.message
import pytest
from conftest import no_result, result_of
from integration.export_events import (
    blocked_event,
    event_for,
    misp_decision,
    recursive_event,
    refused_event,
    request,
)
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.names import dns as tdns
from zope.interface.verify import verifyObject

from misp_dns.build import build_exporter
from misp_dns.config import parse_config
from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.forwarder import Forwarder
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import Responder
from misp_dns.event import Answer, Kind
from misp_dns.export.exporter import ExporterService, SinkSlot
from misp_dns.export.http import HttpSink
from misp_dns.export.jsonl import JsonlSink
from misp_dns.export.syslog import (
    StreamSender,
    SyslogFormatter,
    SyslogSink,
    _StreamFactory,
)
from misp_dns.interfaces import Decision, ISink, PolicyQuery
from misp_dns.policy.chain import PolicyChain
from misp_dns.registry import default_registry
from misp_dns.testing import MemorySink
from misp_dns.values import ConfigError, HostPort


def make_exporter(
    *sinks: MemorySink, blocked_only: tuple[bool, ...] = (), **kwargs: Any
) -> tuple[ExporterService, Clock, list[dict[str, Any]]]:
    clock = Clock()
    flags = blocked_only or (False,) * len(sinks)
    slots = [
        SinkSlot(f"export[{i}] (memory)", sink, flag)
        for i, (sink, flag) in enumerate(zip(sinks, flags, strict=True))
    ]
    exporter = ExporterService(slots, clock, **kwargs)
    logged: list[dict[str, Any]] = []
    exporter.log = Logger(observer=logged.append)
    exporter.startService()
    return exporter, clock, logged


def test_observe_returns_at_once_and_records_follow_in_one_batch() -> None:
    """The DNS path only queues; the records are built and written a moment later, batched."""
    sink = MemorySink()
    exporter, clock, _ = make_exporter(sink)
    assert sink.started
    for index in range(5):
        exporter.observe(recursive_event(f"q{index}.example"))
    assert sink.batches == []
    assert len(exporter) == 5
    clock.advance(0.05)
    assert len(sink.batches) == 1
    assert [r["question"]["questionName"] for r in sink.records] == [
        f"q{i}.example" for i in range(5)
    ]
    assert exporter.exported == 5 and len(exporter) == 0


def test_full_queue_drops_the_newest_and_counts_them() -> None:
    """With max_queue events waiting, later ones are dropped and counted, earlier ones kept."""
    sink = MemorySink()
    exporter, clock, _ = make_exporter(sink, max_queue=3)
    for index in range(5):
        exporter.observe(recursive_event(f"q{index}.example"))
    clock.advance(0.05)
    assert [r["question"]["questionName"] for r in sink.records] == [
        "q0.example",
        "q1.example",
        "q2.example",
    ]
    assert exporter.dropped == 2


def _upstream_txt(name: str, size: int) -> Any:
    """A query answered by the upstream with one TXT record of `size` bytes."""
    data = b"x" * size
    strings = [data[i : i + 255] for i in range(0, size, 255)]
    record = tdns.RRHeader(name.encode(), tdns.TXT, tdns.IN, 300, tdns.Record_TXT(*strings))
    answer = Answer(tdns.OK, answers=(record,), kind=Kind.RECURSIVE, rtt=0.01)
    return event_for(request(name, "TXT"), answer, response_size=size + 60)


def test_the_queue_is_bounded_in_bytes_too() -> None:
    """Large upstream answers (50 KB each) fill the queue by their size, long before its
    count: it holds what fits max_queue_bytes, drops the newest, and its reckoning of what it
    holds goes back to zero once they are exported."""
    sink = MemorySink()
    exporter, clock, _ = make_exporter(sink, max_queue=1000, max_queue_bytes=1 << 20)
    for index in range(100):
        exporter.observe(_upstream_txt(f"q{index}.example", 50_000))
    assert exporter.queued_bytes <= 1 << 20
    assert 0 < len(exporter) < 30 and exporter.dropped == 100 - len(exporter)
    kept = len(exporter)
    clock.advance(0.05)
    assert [r["question"]["questionName"] for r in sink.records] == [
        f"q{index}.example" for index in range(kept)
    ]
    assert exporter.queued_bytes == 0
    exporter.observe(_upstream_txt("after.example", 50_000))
    assert len(exporter) == 1


def test_cached_answers_weigh_little_in_the_queue() -> None:
    """A cached answer's records belong to the cache: a burst of a thousand cached answers
    of a 50 KB record is queued whole, though their records would not fit 1 MiB."""
    cache = AnswerCache(10, Clock())
    event = _upstream_txt("big.example", 50_000)
    key = (event.question[:-4].lower(), tdns.TXT, tdns.IN, False, 0)
    cache.put(key, event.answer)
    found = cache.lookup(key)
    assert found is not None and found[0].packet is not None
    cached = event_for(request("big.example", "TXT"), found[0], response_size=50_060)
    exporter, _clock, _ = make_exporter(MemorySink(), max_queue_bytes=1 << 20)
    for _ in range(1000):
        exporter.observe(cached)
    assert len(exporter) == 1000 and exporter.dropped == 0


def test_a_down_syslog_receiver_and_a_huge_answer_hold_bounded_memory() -> None:
    """The attack that took a server from 56 to 544 MB: a TCP syslog receiver that is down
    and queries for a 51 KB TXT answer of binary data (here four records of 12.75 KB, about
    180 kB of JSON in all). Each record is cut to its first answer (46 kB), the backlog
    holds at most max_queue_bytes of them (4 MiB here, 36 MB before), the newest beyond are
    dropped and counted, and what it held arrives as valid records once the receiver is
    back."""
    data = bytes(range(256)) * 50
    strings = [data[i : i + 255] for i in range(0, 12_750, 255)]
    txt = tuple(
        tdns.RRHeader(b"big.example", tdns.TXT, tdns.IN, 300, tdns.Record_TXT(*strings))
        for _ in range(4)
    )
    cache = AnswerCache(10, Clock())
    req = request("big.example", "TXT")
    key = (req.question_wire[:-4].lower(), tdns.TXT, tdns.IN, False, 0)
    cache.put(key, Answer(tdns.OK, answers=txt))
    found = cache.lookup(key)
    assert found is not None
    attempts: list[defer.Deferred[Any]] = []

    def connect(factory: Any) -> defer.Deferred[Any]:
        attempts.append(defer.Deferred())
        attempts[-1].addErrback(lambda _failure: None)
        return attempts[-1]

    clock = Clock()
    sender = StreamSender(connect, clock, description="tcp:down", max_queue_bytes=4 << 20)
    sender.log = Logger(observer=lambda event: None)
    sink = SyslogSink(SyslogFormatter(hostname="h", pid=1), sender)
    exporter = ExporterService([SinkSlot("syslog", sink)], clock)
    exporter.startService()
    for index in range(200):
        exporter.observe(event_for(req, found[0], client=f"10.0.0.{index}"))
        clock.advance(0.05)
    assert sender.held_bytes <= 4 << 20
    assert sink.dropped > 100 and len(sender) + sink.dropped == 200
    assert exporter.slots[0].dropped == sink.dropped
    transport = StringTransport()
    protocol = _StreamFactory(sender).buildProtocol(None)
    protocol.makeConnection(transport)
    delivered = [json.loads(frame.split(b" - ", 1)[1]) for frame in _frames(transport.value())]
    assert len(delivered) == 200 - sink.dropped
    assert all(len(record["answers"]) == 1 for record in delivered)
    assert all(record["answersTruncated"] is True for record in delivered)
    assert [record["clientIp"] for record in delivered][:3] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    exporter.stopService()


def _frames(data: bytes) -> list[bytes]:
    """The messages of an octet-counted stream (RFC 6587)."""
    out = []
    while data:
        length, _, rest = data.partition(b" ")
        out.append(rest[: int(length)])
        data = rest[int(length) :]
    return out


def test_drops_are_logged_at_most_once_per_ten_seconds() -> None:
    """Queue drops are told within a second, then in one line per 10 s at most, never one
    line per lost record; the lines add up to every drop."""
    sink = MemorySink()
    exporter, clock, logged = make_exporter(sink, max_queue=1)

    def lines() -> list[dict[str, Any]]:
        return [event for event in logged if "dropped" in event["log_format"]]

    for _ in range(12):
        for _ in range(100):
            exporter.observe(recursive_event())
        clock.advance(1)
    counts = [event["count"] for event in lines()]
    assert len(counts) == 2
    assert counts[0] == 99
    clock.advance(20)
    counts = [event["count"] for event in lines()]
    assert len(counts) == 3
    assert sum(counts) == exporter.dropped == 12 * 99
    clock.advance(30)
    assert len(lines()) == 3


def test_sink_drops_are_reported_per_sink() -> None:
    """Each sink's own drops appear in a line naming that sink, with the new count."""
    quiet, lossy = MemorySink(), MemorySink()
    _exporter, clock, logged = make_exporter(quiet, lossy)
    lossy.dropped = 42
    clock.advance(1)
    assert [(e["sink"], e["count"]) for e in logged] == [("export[1] (memory)", 42)]
    lossy.dropped = 50
    clock.advance(5)
    assert len(logged) == 1
    clock.advance(5)
    assert [(e["sink"], e["count"]) for e in logged][-1] == ("export[1] (memory)", 8)


def test_stop_reports_the_last_drops() -> None:
    """Drops not yet told when the exporter stops are logged as it stops."""
    lossy = MemorySink()
    exporter, clock, logged = make_exporter(lossy)
    lossy.dropped = 1
    clock.advance(1)
    lossy.dropped = 3
    exporter.stopService()
    assert [e["count"] for e in logged] == [1, 2]


def test_records_a_sink_gives_up_while_stopping_are_reported() -> None:
    """A sink that drops its held records while stopping (an HTTP collector that never
    answers) gets its last line after its stop is over, with those records counted."""
    lossy = MemorySink(hold_stop=True)
    exporter, _clock, logged = make_exporter(lossy)
    stopped = exporter.stopService()
    assert logged == []
    assert lossy.stopping is not None
    lossy.dropped = 7
    lossy.stopping.callback(None)
    assert [(e["sink"], e["count"], e["total"]) for e in logged] == [("export[0] (memory)", 7, 7)]
    assert stopped.called


def test_include_blocked_keeps_only_blocks() -> None:
    """A sink with include = "blocked" gets blocked queries only; the others get all."""
    everything, blocks = MemorySink(), MemorySink()
    exporter, clock, _ = make_exporter(everything, blocks, blocked_only=(False, True))
    for event in (recursive_event(), blocked_event(), refused_event()):
        exporter.observe(event)
    clock.advance(0.05)
    assert [r["responseType"] for r in everything.records] == ["Recursive", "Blocked", "Refused"]
    assert [r["responseType"] for r in blocks.records] == ["Blocked"]
    # Built once for both: the sinks share its line.
    assert everything.records[1].line is blocks.records[0].line


def test_large_backlog_is_exported_in_chunks_across_reactor_turns() -> None:
    """A burst is exported a chunk per reactor turn, so no turn blocks the answers for long."""
    sink = MemorySink()
    exporter, clock, _ = make_exporter(sink, chunk_size=1000)
    for _ in range(2500):
        exporter.observe(recursive_event())
    calls: list[Any] = []
    real_call_later = clock.callLater

    def counting_call_later(delay: float, *args: Any, **kwargs: Any) -> Any:
        calls.append(delay)
        return real_call_later(delay, *args, **kwargs)

    clock.callLater = counting_call_later  # type: ignore[method-assign]
    clock.advance(0.05)
    assert [len(batch) for batch in sink.batches] == [1000, 1000, 500]
    assert calls == [0, 0]


@pytest.mark.allow_errors
def test_a_failing_sink_does_not_starve_the_others() -> None:
    """A sink whose write raises loses its records (counted, logged once); others go on."""
    broken, healthy = MemorySink(fail=True), MemorySink()
    exporter, clock, logged = make_exporter(broken, healthy)
    for _ in range(2):
        exporter.observe(recursive_event())
        clock.advance(0.05)
    assert len(healthy.records) == 2
    assert exporter.slots[0].dropped == 2
    assert len([e for e in logged if "log_failure" in e]) == 1
    clock.advance(1)
    assert any(e.get("count") == 2 for e in logged)


def test_stop_flushes_the_queue_and_waits_for_the_sinks() -> None:
    """Stopping exports what is queued at once, then waits until every sink has stopped."""
    sink = MemorySink(hold_stop=True)
    exporter, _clock, _ = make_exporter(sink)
    for _ in range(3):
        exporter.observe(blocked_event())
    stopped = exporter.stopService()
    assert len(sink.records) == 3
    assert sink.stopped
    no_result(stopped)
    assert sink.stopping is not None
    sink.stopping.callback(None)
    result_of(stopped)


def test_events_before_start_are_exported_after_start() -> None:
    """Queries answered before the exporter started are not lost."""
    sink = MemorySink()
    clock = Clock()
    exporter = ExporterService([SinkSlot("memory", sink)], clock)
    exporter.observe(recursive_event())
    exporter.startService()
    clock.advance(0.05)
    assert len(sink.records) == 1


def test_no_sinks_means_nothing_is_queued() -> None:
    """Without [[export]] tables the observer does nothing at all."""
    exporter = ExporterService([], Clock())
    exporter.startService()
    exporter.observe(recursive_event())
    assert len(exporter) == 0


class _BlockEverything:
    """A policy that blocks every name, as the MISP policy does for listed ones."""

    name = "block-everything"

    def decide(self, query: PolicyQuery) -> Decision:
        return misp_decision(query.name)


def _records_of_three_queries(wiring: str) -> list[Any]:
    """The records of a blocked UDP query (fast path), a TXT report over TCP and a refused
    query, with the exporter fed by the responder's `recorder` or as an observer."""
    clock = Clock()
    clock.advance(1764151830.5)
    sink = MemorySink()
    exporter = ExporterService([SinkSlot("memory", sink)], clock)
    exporter.startService()
    acl = ClientACL([ipaddress.ip_network("127.0.0.0/8")])
    resolver = ChainResolver(
        PolicyChain([_BlockEverything()]),
        AnswerCache(100, clock),
        Forwarder([HostPort("127.0.0.1", 9)], clock),
        "dns.example.net",
    )
    responder = Responder(resolver, acl, clock)
    if wiring == "recorder":
        responder.recorder = exporter.record
    else:
        responder.observers.append(exporter.observe)
    query = dns.message.make_query("StemTopx.com", "A", use_edns=0).to_wire()
    txt = dns.message.make_query("stemtopx.com", "TXT").to_wire()
    assert isinstance(responder.respond(query, "127.0.0.1", "udp"), bytes)
    assert isinstance(responder.respond(txt, "127.0.0.1", "tcp"), bytes)
    assert isinstance(responder.respond(query, "192.0.2.1", "tcp"), bytes)
    assert responder.counters.fast == 1
    clock.advance(0.05)
    return sink.records


def test_responder_feeds_the_exporter_for_every_answered_query() -> None:
    """Wired as tap.py does (the responder's `recorder`, no event object per query), each
    answered query reaches the sinks as a record, whether the fast path (plain UDP) or the
    full path (TCP, refused) answered it: the very record an observer's event gives."""
    records = _records_of_three_queries("recorder")
    observed = _records_of_three_queries("observers")
    assert [r.line for r in records] == [r.line for r in observed]
    assert [(r["responseType"], r["protocol"], r["clientIp"]) for r in records] == [
        ("Blocked", "Udp", "127.0.0.1"),
        ("Blocked", "Tcp", "127.0.0.1"),
        ("Refused", "Tcp", "192.0.2.1"),
    ]
    blocked, report, refused = records
    assert blocked["timestamp"] == "2025-11-26T10:10:30.500Z"
    assert blocked["question"]["questionName"] == "stemtopx.com"
    assert blocked["edns"] == [
        {"errType": "Blocked", "message": "source=misp-connector;domain=stemtopx.com"}
    ]
    assert blocked["policy"]["mispEventId"] == "1234"
    assert report["edns"] == []
    assert [(a["recordType"], a["recordTtl"], a["recordData"]) for a in report["answers"]] == [
        ("TXT", 30, '"source=misp-connector;domain=stemtopx.com"')
    ]
    assert refused["edns"] == [{"errType": "Prohibited", "message": ""}]


def _tables(*exports: dict[str, Any]) -> Any:
    return parse_config({"export": list(exports)}, default_registry()).export


def test_build_exporter_builds_every_configured_sink(tmp_path: Path) -> None:
    """[[export]] tables of each built-in type become sinks with their include filters."""
    tables = _tables(
        {"type": "jsonl", "path": str(tmp_path / "q.jsonl")},
        {"type": "syslog", "address": "127.0.0.1:5514", "include": "blocked"},
        {"type": "syslog", "address": "127.0.0.1:5514", "protocol": "tcp", "max_queue": 7},
        {
            "type": "http",
            "url": "http://127.0.0.1:9/ingest",
            "max_queue": 500_000,
            "max_queue_bytes": 100 << 20,
        },
    )
    exporter = build_exporter(tables, default_registry(), Clock())
    kinds = [type(slot.sink) for slot in exporter.slots]
    assert kinds == [JsonlSink, SyslogSink, SyslogSink, HttpSink]
    assert [slot.blocked_only for slot in exporter.slots] == [False, True, False, False]
    assert [slot.name for slot in exporter.slots][1] == "export[1] (syslog)"
    assert exporter.max_queue == 500_000
    assert exporter.max_queue_bytes == 100 << 20
    assert exporter.slots[3].sink.max_queue_bytes == 100 << 20  # type: ignore[attr-defined]
    assert exporter.slots[2].sink.sender.max_queue_bytes == 64 << 20  # type: ignore[attr-defined]
    for slot in exporter.slots:
        assert verifyObject(ISink, slot.sink)


def test_build_exporter_reports_build_problems_with_their_table(tmp_path: Path) -> None:
    """A sink that cannot be built (an unreadable CA file) is a config error naming export[i]."""
    tables = _tables(
        {"type": "jsonl"},
        {
            "type": "syslog",
            "protocol": "tls",
            "address": "127.0.0.1:6514",
            "ca_file": str(tmp_path / "missing.pem"),
        },
    )
    with pytest.raises(ConfigError) as problem:
        build_exporter(tables, default_registry(), Clock())
    assert len(problem.value.problems) == 1
    assert problem.value.problems[0].startswith("export[1]: ca_file ")
    assert "cannot read" in problem.value.problems[0]


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ({"type": "jsonl", "colour": "red"}, "export[0].colour: unknown key"),
        (
            {"type": "jsonl", "include": "some"},
            "export[0].include: expected one of 'all', 'blocked', got 'some'",
        ),
        (
            {"type": "jsonl", "max_queue": 0},
            "export[0].max_queue: must be within 1..10000000, got 0",
        ),
        (
            {"type": "jsonl", "max_queue_bytes": 4096},
            "export[0].max_queue_bytes: must be within 1048576..17179869184, got 4096",
        ),
        ({"type": "http"}, "export[0].url: required key is missing"),
        ({"type": "kafka"}, "export[0].type: no export type 'kafka' is installed"),
    ],
)
def test_export_config_errors_name_the_table_and_key(table: dict[str, Any], line: str) -> None:
    """Bad [[export]] tables give one readable line each, with their TOML path."""
    with pytest.raises(ConfigError) as problem:
        _tables(table)
    assert problem.value.problems == [line]


def test_stop_with_real_sinks_fires(tmp_path: Path) -> None:
    """The whole exporter stops cleanly with a file sink that wrote the queued records."""
    tables = _tables({"type": "jsonl", "path": str(tmp_path / "logs" / "q.jsonl")})
    clock = Clock()
    exporter = build_exporter(tables, default_registry(), clock)
    exporter.startService()
    exporter.observe(blocked_event())
    result_of(defer.maybeDeferred(exporter.stopService))
    assert (tmp_path / "logs" / "q.jsonl").read_text().count("\n") == 1
