"""The HTTP sink: NDJSON batches, headers, retries with backoff, bounded memory, flush on stop."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections import deque
from typing import Any

import attrs
import pytest
from conftest import no_result, result_of
from integration.export_events import blocked_event, recursive_event
from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.names import dns as tdns
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from misp_dns.config import parse_config
from misp_dns.export.http import HttpOptions, HttpSink
from misp_dns.export.record import RecordEncoder
from misp_dns.interfaces import ISink
from misp_dns.registry import default_registry
from misp_dns.values import ConfigError

URL = "http://collector.test/ingest"


class Collector(Resource):
    """An NDJSON collector answering each POST with the next scripted status (200 after)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.statuses: deque[int | str] = deque()
        self.requests: list[tuple[dict[str, str], bytes, int | str]] = []

    def render_POST(self, request: Any) -> Any:
        status = self.statuses.popleft() if self.statuses else 200
        headers = {
            name.decode().lower(): values[0].decode()
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((headers, request.content.read(), status))
        if status == "hang":
            return NOT_DONE_YET
        assert isinstance(status, int)
        request.setResponseCode(status)
        return b"{}"

    def accepted(self) -> list[str]:
        """Question names of the records in the requests that got a 2xx, in order."""
        names = []
        for _headers, body, status in self.requests:
            if isinstance(status, int) and 200 <= status < 300:
                for line in body.decode().splitlines():
                    names.append(json.loads(line)["question"]["questionName"])
        return names


class RefusingFirst:
    """An agent whose first `refusals` requests fail to connect."""

    def __init__(self, inner: RequestTraversalAgent, refusals: int) -> None:
        self.inner = inner
        self.refusals = refusals

    def request(self, *args: Any) -> defer.Deferred[Any]:
        if self.refusals:
            self.refusals -= 1
            return defer.fail(ConnectionRefusedError())
        return self.inner.request(*args)  # type: ignore[no-any-return]


def records(*names: str) -> list[Any]:
    return [RecordEncoder().encode(recursive_event(name)) for name in names]


def make_sink(
    collector: Any, client: Any = None, **kwargs: Any
) -> tuple[HttpSink, Clock, RequestTraversalAgent, list[dict[str, Any]]]:
    clock = Clock()
    stub = RequestTraversalAgent(collector)
    sink = HttpSink(URL, client or stub, clock, **kwargs)
    logged: list[dict[str, Any]] = []
    sink.log = type(sink.log)(observer=logged.append)
    sink.start()
    return sink, clock, stub, logged


def test_sink_is_an_isink() -> None:
    """The HTTP sink provides ISink."""
    assert verifyObject(ISink, HttpSink(URL, RequestTraversalAgent(Collector()), Clock()))


def test_records_are_posted_as_ndjson_every_interval_with_headers() -> None:
    """Held records leave after batch_interval, one JSON line each, with the headers."""
    collector = Collector()
    sink, clock, stub, _ = make_sink(
        collector, headers={"Authorization": "Bearer s3cret", "X-Source": "dns1"}
    )
    sink.write(records("a.example", "b.example"))
    sink.write([RecordEncoder().encode(blocked_event())])
    clock.advance(1.9)
    stub.flush()
    assert collector.requests == []
    clock.advance(0.1)
    stub.flush()
    ((headers, body, _),) = collector.requests
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["x-source"] == "dns1"
    assert headers["user-agent"].startswith("misp-dns/")
    assert body.endswith(b"\n") and body.count(b"\n") == 3
    assert json.loads(body.splitlines()[2])["responseType"] == "Blocked"
    assert collector.accepted() == ["a.example", "b.example", "stemtopx.com"]
    assert sink.sent == 3 and len(sink) == 0


def test_a_full_batch_leaves_at_once() -> None:
    """batch_size records are sent without waiting for the interval."""
    collector = Collector()
    sink, _clock, stub, _ = make_sink(collector, batch_size=3)
    sink.write(records("a.x", "b.x", "c.x", "d.x"))
    stub.flush()
    assert [body.count(b"\n") for _, body, _ in collector.requests] == [3]
    assert len(sink) == 1


def test_server_errors_are_retried_with_backoff_without_loss_or_duplicates() -> None:
    """A 5xx keeps the batch and tries again after 1 s, 2 s, 4 s; then all arrive once."""
    collector = Collector()
    collector.statuses.extend([503, 500, 502])
    sink, clock, stub, logged = make_sink(collector)
    sink.write(records("a.x", "b.x"))
    clock.advance(2)
    stub.flush()
    times = []
    for _ in range(3):
        before = len(collector.requests)
        waited = 0.0
        while len(collector.requests) == before and waited < 120:
            clock.advance(0.5)
            stub.flush()
            waited += 0.5
        times.append(waited)
    assert times == [1.0, 2.0, 4.0]
    assert collector.accepted() == ["a.x", "b.x"]
    assert sink.retries == 3 and sink.dropped == 0
    assert len([e for e in logged if "retrying" in e["log_format"]]) == 1


def test_connection_errors_are_retried() -> None:
    """A refused connection is retried like a 5xx; nothing is lost."""
    collector = Collector()
    stub = RequestTraversalAgent(collector)
    sink, clock, _, _ = make_sink(collector, client=RefusingFirst(stub, 2))
    sink.write(records("a.x"))
    clock.advance(2)
    clock.advance(1)
    clock.advance(2)
    stub.flush()
    assert collector.accepted() == ["a.x"]
    assert sink.retries == 2


def test_rate_limited_and_timed_out_requests_are_retried() -> None:
    """429 and a collector that never answers (timeout) are tried again."""
    collector = Collector()
    collector.statuses.extend([429, "hang"])
    sink, clock, stub, _ = make_sink(collector, timeout=5)
    sink.write(records("a.x"))
    clock.advance(2)
    stub.flush()
    clock.advance(1)
    stub.flush()
    assert len(collector.requests) == 2
    clock.advance(5)
    stub.flush()
    clock.advance(2)
    stub.flush()
    assert collector.accepted() == ["a.x"]
    assert sink.retries == 2


def test_client_errors_drop_the_batch_counted_and_logged() -> None:
    """A 4xx means resending will not help: the batch is dropped, counted and logged."""
    collector = Collector()
    collector.statuses.append(400)
    sink, clock, stub, logged = make_sink(collector)
    sink.write(records("refused.x"))
    clock.advance(2)
    stub.flush()
    sink.write(records("next.x"))
    clock.advance(2)
    stub.flush()
    assert collector.accepted() == ["next.x"]
    assert sink.dropped == 1
    assert [e["status"] for e in logged if "status" in e] == [400]


class Redirecting(Collector):
    """A collector whose POSTs get `status` to another origin; a GET there (what following
    the redirect would do) is recorded and answered 200, as a server someone else runs would."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.redirect_status = status
        self.followed: list[tuple[str, dict[str, str]]] = []

    def render_POST(self, request: Any) -> Any:
        if self.statuses:
            return super().render_POST(request)
        self.requests.append(({}, request.content.read(), self.redirect_status))
        request.setResponseCode(self.redirect_status)
        request.setHeader(b"location", b"http://elsewhere.test/steal?token=abc")
        return b""

    def render_GET(self, request: Any) -> Any:
        headers = {
            name.decode().lower(): values[0].decode()
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.followed.append((request.uri.decode(), headers))
        return b"ok"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed_and_the_batch_is_retried(status: int) -> None:
    """A redirect to another origin is never followed, so the headers (a token) reach no
    other server, and it is not success: the batch is kept and tried again with backoff,
    one log line says where the redirect pointed (the origin only), and once the collector
    answers 2xx the batch arrives there once."""
    collector = Redirecting(status)
    sink, clock, stub, logged = make_sink(collector, headers={"Authorization": "Bearer s3cret"})
    sink.write(records("a.x", "b.x"))
    clock.advance(2)
    stub.flush()
    clock.advance(1)
    stub.flush()
    assert collector.followed == []
    assert [request[2] for request in collector.requests] == [status, status]
    assert sink.sent == 0 and sink.dropped == 0 and len(sink) == 2
    (warning,) = [e for e in logged if "retrying" in e["log_format"]]
    assert "redirect to http://elsewhere.test," in warning["reason"]
    assert "token" not in warning["reason"]
    collector.statuses.append(200)
    clock.advance(2)
    stub.flush()
    assert collector.accepted() == ["a.x", "b.x"] and sink.sent == 2


def test_no_compressed_reply_is_asked_for_or_inflated() -> None:
    """The sink asks for no content coding, and a collector that sends a gzip reply anyway
    (10 kB inflating to 10 MB here; 1 MB took 2 GB) costs no more than its compressed bytes:
    the reply is thrown away unread, and the 200 counts the batch as sent."""
    bomb = gzip.compress(b"\0" * (10 << 20))

    class Gzipping(Collector):
        def render_POST(self, request: Any) -> Any:
            super().render_POST(request)
            request.setHeader(b"content-encoding", b"gzip")
            return bomb

    collector = Gzipping()
    sink, clock, stub, _ = make_sink(collector)
    sink.write(records("a.x"))
    tracemalloc.start()
    try:
        clock.advance(2)
        stub.flush()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ((headers, _, _),) = collector.requests
    assert headers["accept-encoding"] == "identity"
    assert sink.sent == 1
    assert peak < 2 << 20


def test_a_reply_body_past_the_cap_closes_the_connection_and_is_not_waited_for() -> None:
    """A collector that answers 200 and then streams a body without end: the sink reads at
    most MAX_REPLY_BYTES of it, closes the connection, and counts the batch as sent, once;
    nothing is sent again and nothing waits for the body to end."""
    closed: list[Any] = []

    class Streaming(Collector):
        def render_POST(self, request: Any) -> Any:
            super().render_POST(request)
            request.notifyFinish().addBoth(closed.append)
            request.write(b"x" * (2 << 20))
            return NOT_DONE_YET

    collector = Streaming()
    sink, clock, stub, _ = make_sink(collector, timeout=5)
    sink.write(records("a.x"))
    clock.advance(2)
    stub.flush()
    assert len(closed) == 1 and closed[0] is not None  # lost, not finished by the server
    assert sink.sent == 1 and len(sink) == 0
    clock.advance(30)
    stub.flush()
    assert len(collector.requests) == 1 and sink.retries == 0


def test_memory_is_bounded_while_the_collector_is_down() -> None:
    """While requests fail, at most max_queue records are held; the newest are dropped."""
    collector = Collector()
    collector.statuses.extend([503] * 100)
    sink, clock, stub, _ = make_sink(collector, max_queue=5, batch_size=2)
    for index in range(20):
        sink.write(records(f"n{index}.x"))
        clock.advance(0.5)
        stub.flush()
    assert len(sink) == 5
    assert sink.dropped == 15
    collector.statuses.clear()
    clock.advance(60)
    stub.flush()
    clock.advance(2)
    stub.flush()
    clock.advance(2)
    stub.flush()
    assert sorted(collector.accepted()) == sorted(f"n{i}.x" for i in range(5))


def big_records(count: int, size: int) -> list[Any]:
    """`count` records of about `size` bytes each (a TXT answer of `size` bytes)."""
    encoder = RecordEncoder()
    out = []
    for index in range(count):
        name = f"big{index}.x"
        data = b"x" * size
        strings = [data[i : i + 255] for i in range(0, size, 255)]
        txt = tdns.RRHeader(name.encode(), tdns.TXT, tdns.IN, 300, tdns.Record_TXT(*strings))
        event = recursive_event(name)
        out.append(
            encoder.encode(attrs.evolve(event, answer=attrs.evolve(event.answer, answers=(txt,))))
        )
    return out


def test_held_bytes_are_bounded_while_the_collector_is_down() -> None:
    """Large records fill the sink by their size long before its count: while requests
    fail, at most max_queue_bytes of lines are held, the newest beyond are dropped and
    counted, and once the collector is back the held records arrive, each once."""
    collector = Collector()
    collector.statuses.extend([503] * 100)
    sink, clock, stub, _ = make_sink(
        collector, max_queue=100_000, max_queue_bytes=1 << 20, batch_size=5
    )
    written = big_records(100, 40_000)
    for record in written:
        sink.write([record])
        clock.advance(0.5)
        stub.flush()
    assert sink.held_bytes <= 1 << 20
    assert 0 < len(sink) < 30 and sink.dropped == 100 - len(sink)
    held = len(sink)
    collector.statuses.clear()
    for _ in range(10):
        clock.advance(60)
        stub.flush()
    assert collector.accepted() == [f"big{index}.x" for index in range(held)]
    assert sink.held_bytes == 0 and len(sink) == 0


def test_stop_sends_what_is_held() -> None:
    """Stopping POSTs the records still held, then fires."""
    collector = Collector()
    sink, _clock, stub, _ = make_sink(collector)
    sink.write(records("last1.x", "last2.x"))
    stopped = sink.stop()
    stub.flush()
    assert result_of(stopped) is None
    assert collector.accepted() == ["last1.x", "last2.x"]


def test_stop_with_the_collector_down_counts_the_loss() -> None:
    """A collector failing at stop costs the held records, counted; stop still fires."""
    collector = Collector()
    collector.statuses.extend([503] * 5)
    sink, clock, stub, _ = make_sink(collector)
    sink.write(records("x.x", "y.x"))
    clock.advance(2)
    stub.flush()
    stopped = sink.stop()
    stub.flush()
    assert result_of(stopped) is None
    assert sink.dropped == 2
    assert clock.getDelayedCalls() == []


def test_stop_waits_for_a_hanging_request_no_longer_than_the_timeout() -> None:
    """A request in flight at stop is given its timeout, then stop completes."""
    collector = Collector()
    collector.statuses.append("hang")
    sink, clock, stub, _ = make_sink(collector, timeout=3)
    sink.write(records("x.x"))
    clock.advance(2)
    stub.flush()
    stopped = sink.stop()
    no_result(stopped)
    clock.advance(3)
    stub.flush()
    assert result_of(stopped) is None
    assert sink.dropped == 1


def test_header_values_never_show_in_reprs() -> None:
    """Header values (tokens) are secrets: not in the options' or the sink's repr."""
    options = HttpOptions(url=URL, headers={"Authorization": "Bearer s3cret"})
    sink = HttpSink(URL, RequestTraversalAgent(Collector()), Clock(), headers=options.headers)
    assert "s3cret" not in repr(options) and "s3cret" not in repr(sink)


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ({"url": "ftp://x"}, "export[0].url: expected an http:// or https:// URL such as"),
        ({"url": URL, "headers": {"Bad Name": "x"}}, "export[0].headers: 'Bad Name' is not a"),
        (
            {"url": URL, "headers": {"Authorization": "Bearer s3cret\nX-Injected: 1"}},
            "export[0].headers: the value of 'Authorization' holds characters",
        ),
        ({"url": URL, "headers": {"Content-Type": "text/plain"}}, "export[0].headers: 'Content-"),
        (
            {"url": URL, "headers": {"Accept-Encoding": "gzip"}},
            "export[0].headers: 'Accept-Encoding' is set by misp-dns itself",
        ),
        ({"url": URL, "batch_size": 0}, "export[0].batch_size: must be within 1..100000, got 0"),
        ({"url": URL, "headers": {"X": 1}}, "export[0].headers[X]: expected a string"),
    ],
)
def test_bad_options_name_the_key_without_the_secret(table: dict[str, Any], line: str) -> None:
    """Each bad http option is one config error naming export[i].key, never a header value."""
    with pytest.raises(ConfigError) as problem:
        parse_config({"export": [{"type": "http", **table}]}, default_registry())
    (message,) = problem.value.problems
    assert message.startswith(line)
    assert "s3cret" not in message
