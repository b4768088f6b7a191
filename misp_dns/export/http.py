"""The `http` sink: query records POSTed in batches as NDJSON to a collector.

    [[export]]
    type = "http"
    url = "https://siem.example.com/ingest"            # required
    headers = { Authorization = "Bearer ..." }         # sent with every request
    batch_size = 1000                                  # a batch leaves when this many wait
    batch_interval = 2.0                               # ... or this many seconds passed
    timeout = 10.0                                     # seconds for one request
    disable_tls_validation = false
    include = "all"                                    # or "blocked"
    max_queue = 100000                                 # records held while the collector
                                                       # is down; the newest beyond are dropped
    max_queue_bytes = 67108864                         # ... as are those beyond this many
                                                       # bytes of JSON lines held (64 MiB)

Each request is `POST url` with `Content-Type: application/x-ndjson`, `Accept-Encoding:
identity` and a body of one JSON record per line. One request is in flight at a time.

- Only a 2xx is success: the batch counts as sent.
- A connection error, a timeout, a 408, a 429, a redirect (3xx), a 5xx or any status
  outside 2xx and 4xx keeps the batch and tries it again after a growing delay (1 s doubling
  to 60 s), with one log line until it works again. Redirects are never followed, so the
  headers (often a token) reach no other server; a lasting redirect means `url` is wrong,
  and the log line says where it points.
- Any other 4xx drops the batch (counted, with one log line), as sending it again would
  not help.
- The reply body is read only so that the connection can serve the next request, at most
  `MAX_REPLY_BYTES` of it (the connection is closed beyond), and discarded unread; it is
  never decompressed.

Stopping sends what is held, within `timeout`.

HTTP goes through an injected `IAgent` (`misp_dns.http.make_agent`; in tests
`treq.testing.RequestTraversalAgent` over a `twisted.web` resource). treq's client is not
used: it would ask for gzip and follow redirects.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import hyperlink
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from misp_dns import __version__
from misp_dns.backoff import backoff_delay
from misp_dns.export.options import DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_BYTES, SinkOptions
from misp_dns.export.record import QueryRecord
from misp_dns.http import make_agent, read_capped_body
from misp_dns.interfaces import BuildContext, ISink, PluginType
from misp_dns.values import FieldError, between

__all__ = ["HttpOptions", "HttpSink", "plugin"]

CONTENT_TYPE = "application/x-ndjson"
#: Client errors that say "later" rather than "never".
RETRIED_STATUSES = frozenset({408, 429})
#: The most of a reply body that is read (and thrown away) before the connection is closed.
MAX_REPLY_BYTES = 64 * 1024
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _http_url(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FieldError(
            attribute.name,
            f"expected an http:// or https:// URL such as https://siem.example.com/ingest,"
            f" got {value!r}",
        )


def _valid_headers(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for name, text in value.items():
        if not _TOKEN.fullmatch(name):
            raise FieldError(attribute.name, f"{name!r} is not a valid header name")
        if not _FIELD_VALUE.fullmatch(text) or text != text.strip():
            # The value may be a secret: name the header, never show the value.
            raise FieldError(
                attribute.name, f"the value of {name!r} holds characters a header cannot carry"
            )
        if name.lower() in (
            "content-type",
            "content-length",
            "host",
            "transfer-encoding",
            "accept-encoding",
        ):
            raise FieldError(attribute.name, f"{name!r} is set by misp-dns itself")


@attrs.frozen(kw_only=True)
class HttpOptions(SinkOptions):
    """`[[export]] type = "http"`: the collector and how batches are sent to it."""

    url: str = attrs.field(validator=_http_url)
    headers: dict[str, str] = attrs.field(factory=dict, repr=False, validator=_valid_headers)
    batch_size: int = attrs.field(default=1000, validator=between(1, 100_000))
    batch_interval: float = attrs.field(default=2.0, validator=between(0.05, 3600))
    timeout: float = attrs.field(default=10.0, validator=between(0.5, 600))
    disable_tls_validation: bool = False


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written in one piece."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        """Everything was written at once: nothing to pause."""

    def resumeProducing(self) -> None:
        """Everything was written at once: nothing to resume."""

    def stopProducing(self) -> None:
        """Everything was written at once: nothing to stop."""


def _request_target(url: str) -> bytes:
    """`url` as the bytes an `Agent` takes: a host in IDNA, a path percent-encoded."""
    if url.isascii():
        return url.encode("ascii")
    return hyperlink.URL.from_text(url).to_uri().to_text().encode("ascii")


def _origin(location: str) -> str:
    """`scheme://host[:port]` of a redirect's target, for a log line (no path, no user)."""
    try:
        parts = urlsplit(location)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unreadable location"
    if not parts.scheme or not parts.hostname:
        return "a relative location"
    return f"{parts.scheme}://{parts.hostname}{port}"


@implementer(ISink)
class HttpSink:
    """Batches records and POSTs them as NDJSON, retrying with backoff, memory bounded."""

    log = Logger()

    def __init__(
        self,
        url: str,
        agent: Any,
        clock: Any,
        *,
        headers: Mapping[str, str] | None = None,
        batch_size: int = 1000,
        batch_interval: float = 2.0,
        timeout: float = 10.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        self.url = url
        self.agent = agent
        self.clock = clock
        self._target = _request_target(url)
        # A plain dict: `Headers` would show the values (a token) in its repr. Each request
        # gets a `Headers` of its own.
        self.headers = {
            "Content-Type": [CONTENT_TYPE],
            "User-Agent": [f"misp-dns/{__version__}"],
            # Reply bodies are thrown away: a compressed one would be no use.
            "Accept-Encoding": ["identity"],
            **{name: [value] for name, value in (headers or {}).items()},
        }
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.timeout = timeout
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        #: Records lost: no room left, or a batch the collector refused for good.
        self.dropped = 0
        #: Records the collector accepted.
        self.sent = 0
        #: Requests that failed and were (or will be) tried again.
        self.retries = 0
        self._pending: deque[str] = deque()
        self._batch: list[str] | None = None
        #: Bytes of the lines held (waiting and in the batch), a newline each.
        self.held_bytes = 0
        self._batch_bytes = 0
        self._in_flight: defer.Deferred[Any] | None = None
        self._failures = 0
        self._timer: IDelayedCall | None = None
        self._retry: IDelayedCall | None = None
        self._running = False
        self._failing = False

    def __repr__(self) -> str:
        return f"<HttpSink {self.url} pending={len(self._pending)}>"

    def __len__(self) -> int:
        """Records held: waiting, and in the batch being sent."""
        return len(self._pending) + len(self._batch or ())

    @classmethod
    def from_config(cls, options: HttpOptions, context: BuildContext) -> HttpSink:
        """The sink for one `[[export]] type = "http"` table, over a pooled `Agent`."""
        agent = make_agent(context.reactor, verify_tls=not options.disable_tls_validation)
        return cls(
            options.url,
            agent,
            context.reactor,
            headers=options.headers,
            batch_size=options.batch_size,
            batch_interval=options.batch_interval,
            timeout=options.timeout,
            max_queue=options.max_queue,
            max_queue_bytes=options.max_queue_bytes,
        )

    def start(self) -> None:
        """Start the batch timer."""
        self._running = True
        self._timer = self.clock.callLater(self.batch_interval, self._tick)

    def write(self, records: Sequence[QueryRecord]) -> None:
        """Hold the records for the next batch; drop (and count) what does not fit."""
        pending = self._pending
        held = len(self)
        for record in records:
            line = record.line
            # A line is counted by its characters: the same as its bytes, bar non-ASCII text.
            size = len(line) + 1
            if held >= self.max_queue or self.held_bytes + size > self.max_queue_bytes:
                self.dropped += 1
                continue
            pending.append(line)
            held += 1
            self.held_bytes += size
        if len(pending) >= self.batch_size and self._idle():
            self._send()

    def _idle(self) -> bool:
        return self._running and self._in_flight is None and self._retry is None

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.batch_interval, self._tick)
        if self._pending and self._idle():
            self._send()

    def _send(self) -> defer.Deferred[Any]:
        if self._batch is None:
            count = min(self.batch_size, len(self._pending))
            self._batch = [self._pending.popleft() for _ in range(count)]
            self._batch_bytes = sum(map(len, self._batch)) + count
        body = ("\n".join(self._batch) + "\n").encode("utf-8", "backslashreplace")
        request = defer.maybeDeferred(
            self.agent.request, b"POST", self._target, Headers(self.headers), _Body(body)
        )
        # Set before the callbacks: an answer that is already there clears it at once.
        self._in_flight = request
        request.addTimeout(self.timeout, self.clock)
        request.addCallback(self._answered)
        request.addCallbacks(self._done, self._failed)
        return request

    def _answered(self, response: IResponse) -> defer.Deferred[IResponse]:
        """`response` once its body was read (at most `MAX_REPLY_BYTES`) and thrown away, so
        the connection can serve the next request; only the status matters."""
        reading = read_capped_body(response, MAX_REPLY_BYTES, f"http {self.url}: the reply")
        reading.addErrback(lambda _failure: None)
        return reading.addCallback(lambda _body: response)

    def _done(self, response: IResponse) -> None:
        self._in_flight = None
        status = response.code
        if 300 <= status < 400:
            location = (response.headers.getRawHeaders("location") or [""])[-1]
            self._retry_later(
                f"HTTP status {status}, a redirect to {_origin(location)}, which is not"
                " followed (is url right?)"
            )
            return
        if not 200 <= status < 500 or status in RETRIED_STATUSES:
            self._retry_later(f"HTTP status {status}")
            return
        batch = self._release_batch()
        if 200 <= status < 300:
            self.sent += len(batch)
            self._failures = 0
            if self._failing:
                self._failing = False
                self.log.info("http {url}: sending again", url=self.url)
            if len(self._pending) >= self.batch_size and self._running:
                self.clock.callLater(0, self._send_if_idle)
            return
        self.dropped += len(batch)
        self.log.warn(
            "http {url}: HTTP status {status}; a batch of {count} records was refused and"
            " is dropped",
            url=self.url,
            status=status,
            count=len(batch),
        )

    def _release_batch(self) -> list[str]:
        """The batch just sent (or refused), no longer held."""
        batch, self._batch = self._batch or [], None
        self.held_bytes -= self._batch_bytes
        self._batch_bytes = 0
        return batch

    def _failed(self, failure: Failure) -> None:
        self._in_flight = None
        self._retry_later(failure.getErrorMessage() or repr(failure.value))

    def _retry_later(self, reason: str) -> None:
        self.retries += 1
        if not self._failing:
            self._failing = True
            self.log.warn(
                "http {url}: {reason}; retrying with backoff, holding up to {max_queue}"
                " records in {max_queue_bytes} bytes",
                url=self.url,
                reason=reason,
                max_queue=self.max_queue,
                max_queue_bytes=self.max_queue_bytes,
            )
        if not self._running:
            return
        self._failures += 1
        delay = backoff_delay(self._failures, self.initial_delay, self.max_delay)
        self._retry = self.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._send_if_idle()

    def _send_if_idle(self) -> None:
        if self._idle() and (self._batch or self._pending):
            self._send()

    def stop(self) -> defer.Deferred[None]:
        """Send what is held (one try per batch, within `timeout`); count the rest dropped."""
        return defer.ensureDeferred(self._stop())

    async def _drain(self, deadline: float) -> None:
        if self._in_flight is not None:
            await self._in_flight
        while (self._batch or self._pending) and self.clock.seconds() < deadline:
            failures = self.retries
            await self._send()
            if self.retries != failures:
                break

    async def _stop(self) -> None:
        self._running = False
        for call in (self._timer, self._retry):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._retry = None
        # The whole of stopping fits one budget, so SIGTERM exits in time even while the
        # collector hangs: what is not sent by then is counted as dropped.
        budget = min(self.timeout, STOP_BUDGET)
        draining = defer.ensureDeferred(self._drain(self.clock.seconds() + budget))
        draining.addTimeout(budget, self.clock)
        with contextlib.suppress(defer.TimeoutError, defer.CancelledError):
            await draining
        leftover = len(self)
        if leftover:
            self.dropped += leftover
            self._pending.clear()
            self._batch = None
            self.held_bytes = self._batch_bytes = 0


STOP_BUDGET = 5.0


def _build(options: HttpOptions, context: BuildContext) -> HttpSink:
    return HttpSink.from_config(options, context)


plugin = PluginType("http", HttpOptions, _build)
