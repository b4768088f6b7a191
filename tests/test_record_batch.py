"""Records built a batch at a time (`RecordEncoder.encode_batch`), as the exporter builds
them from the responder's tuples: the same bytes as one record built alone, whatever the
memos hold, and a `RecordBatch` that sinks read as records or write as NDJSON."""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from integration.export_events import (
    allowed_event,
    blocked_event,
    event_for,
    misp_decision,
    recursive_event,
    refused_event,
    request,
)
from twisted.internet.task import Clock
from twisted.names import dns as tdns

from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.responses import policy_failure, server_failure
from misp_dns.event import Answer, Kind, QueryEvent
from misp_dns.export.record import (
    EventFields,
    QueryRecord,
    RecordBatch,
    RecordEncoder,
    encode_records,
    is_blocking,
)


def _fields(event: QueryEvent) -> EventFields:
    return attrs.astuple(event, recurse=False)  # type: ignore[return-value]


def _cached(name: str, count: int, ede: tuple[tuple[int, str], ...] = ()) -> QueryEvent:
    """A query answered from an `AnswerCache` entry, pre-encoded packet and all."""
    records = tuple(
        tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 300, tdns.Record_A(f"198.51.100.{i}"))
        for i in range(count)
    )
    req = request(name)
    cache = AnswerCache(1, Clock())
    key = (req.question_wire[:-4].lower(), tdns.A, tdns.IN, False, 0)
    cache.put(key, Answer(tdns.OK, answers=records, ede=ede))
    found = cache.lookup(key)
    assert found is not None and found[0].packet is not None
    return event_for(req, found[0])


def _pool() -> list[QueryEvent]:
    """Queries of every shape the server answers: blocked (NXDOMAIN, TXT report, monitor
    mode, with and without EDNS, a policy's failure), cached (one and many records, with an
    EDE),
    recursive (with a round trip, none, or one of -0.0), allowed, refused, failed."""
    monitor = misp_decision("watched.example", enforced=False)
    return [
        blocked_event(),
        blocked_event("stemtopx.com", "TXT"),
        blocked_event("Other.Example", edns=False),
        blocked_event("watched.example", decision=monitor),
        _cached("one.example", 1),
        _cached("many.example", 12),
        _cached("two.example", 2),
        event_for(request("undecided.example"), policy_failure()),
        _cached("stale.example", 2, ede=((3, "stale"),)),
        recursive_event(),
        recursive_event("b.example", rtt=None),
        recursive_event("c.example", rtt=-0.0),
        recursive_event("d.example", kind=Kind.CACHED, rtt=0.5),
        recursive_event("e.example", decision=monitor),
        allowed_event(),
        refused_event(),
        event_for(request("broken.example"), server_failure(), transport="tcp"),
    ]


POOL = _pool()

queries = st.lists(
    st.tuples(
        st.integers(0, len(POOL) - 1),
        st.booleans(),  # EDNS
        st.integers(0, 400),  # age
        st.sampled_from(["127.0.0.1", "::1", "10.0.0.7"]),
        st.sampled_from(["udp", "tcp", "quic"]),
        st.floats(0, 4, allow_nan=False),  # seconds after the pool's timestamp
    ),
    max_size=40,
)


def _query(choice: tuple[int, bool, int, str, str, float]) -> QueryEvent:
    index, edns, age, client, transport, later = choice
    base = POOL[index]
    return attrs.evolve(
        base,
        edns=edns,
        age=age,
        client=client,
        transport=transport,
        timestamp=base.timestamp + later,
    )


@given(queries, st.sampled_from([2, 8, 32768]))
def test_a_batch_writes_each_record_as_it_is_written_alone(
    chosen: list[tuple[int, bool, int, str, str, float]], memo_size: int
) -> None:
    """Whatever the encoder's memos hold (the same answers again at other ages, with and
    without EDNS, from other clients, memos emptied when full), each record of a batch is
    byte for byte the record a fresh encoder writes for that query alone."""
    encoder = RecordEncoder(memo_size=memo_size)
    events = [_query(choice) for choice in chosen]
    built: list[str] = []
    for start in range(0, len(events), 7):
        batch, _, failures = encoder.encode_batch([_fields(e) for e in events[start : start + 7]])
        assert failures == []
        built.extend(batch.lines)
    assert built == [RecordEncoder().encode(event).line for event in events]


def test_records_of_one_answer_object_follow_each_query() -> None:
    """One cached answer object served with and without EDNS and at other ages: each record
    says what that query got (EDE only with EDNS, the TTLs of its age), though the rest of
    the record is kept from the first."""
    event = _cached("stale.example", 1, ede=((3, "stale"),))
    encoder = RecordEncoder()
    shown = []
    for edns, age in ((True, 0), (False, 10), (True, 250), (False, 0)):
        line = encoder.encode(attrs.evolve(event, edns=edns, age=age)).line
        record = json.loads(line)
        shown.append((record["edns"], record["answers"][0]["recordTtl"]))
    stale = [{"errType": "Stale Answer", "message": "stale"}]
    assert shown == [(stale, 300), ([], 290), (stale, 50), ([], 300)]


def test_the_blocked_batch_holds_what_include_blocked_keeps() -> None:
    """Asked for it, the batch of blocked records holds the records `is_blocking` keeps
    (blocks, and monitor-mode decisions that would have blocked), in order."""
    encoder = RecordEncoder()
    everything, blocked, _ = encoder.encode_batch([_fields(e) for e in POOL], blocked=True)
    assert blocked is not None
    assert blocked.lines == [
        line for line, event in zip(everything.lines, POOL, strict=True) if is_blocking(event)
    ]
    assert [r.response_type for r in blocked] == ["Blocked"] * 4 + ["Recursive"]
    assert [r.response_type for r in blocked] == [
        json.loads(x)["responseType"] for x in blocked.lines
    ]
    assert encoder.encode_batch([_fields(POOL[0])])[1] is None


def test_a_query_whose_record_cannot_be_built_costs_only_its_record() -> None:
    """A query whose fields are not a query's is handed back with its error; the records
    of the others in the batch are built."""
    encoder = RecordEncoder()
    good = _fields(POOL[0])
    bad: Any = (*good[:5], "not an answer", *good[6:])
    batch, _, failures = encoder.encode_batch([good, bad, good])
    assert len(batch) == 2
    assert [(fields, type(problem)) for fields, problem in failures] == [(bad, AttributeError)]


def test_a_record_batch_reads_as_its_records_and_writes_as_ndjson() -> None:
    """Sinks may index, slice and iterate a batch as `QueryRecord`s (timestamp and response
    type at hand, fields parsed when read), and its NDJSON bytes are what
    `encode_records` makes of those records, made once for every sink."""
    batch, _, _ = RecordEncoder().encode_batch([_fields(e) for e in POOL])
    records = list(batch)
    assert all(isinstance(record, QueryRecord) for record in records)
    assert [r.line for r in records] == batch.lines
    assert batch[1].timestamp == "2025-11-26T10:10:30.567Z" == records[1]["timestamp"]
    assert batch[-1].response_type == "ServerFailure"
    assert [r.line for r in batch[2:4]] == batch.lines[2:4]
    assert batch.data == encode_records(records) == encode_records(batch)
    assert batch.data is batch.data
    assert encode_records(RecordBatch([], [])) == b""


def test_the_encoder_keeps_no_answer_alive() -> None:
    """An answer the cache (or the policy) has let go of is freed though its records were
    written: the encoder remembers what its records hold without holding it, and a new
    answer given the freed one's place in memory gets its own record."""
    encoder = RecordEncoder()
    event = _cached("gone.example", 3)
    gone = weakref.ref(event.answer)
    encoder.encode(event)
    del event
    gc.collect()
    assert gone() is None
    for index in range(50):  # new answers, some of them where a freed one was
        fresh = _cached(f"n{index}.example", 1 + index % 3)
        assert encoder.encode(fresh).line == RecordEncoder().encode(fresh).line
