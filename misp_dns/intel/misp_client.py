"""Fetching domain indicators from a MISP server's REST API, paged, retried and bounded.

`MispClient.fetch()` asks `POST {server_url}/attributes/restSearch` for the `domain`,
`hostname` and `domain|ip` attributes marked `to_ids`, not deleted, and changed within
`max_ioc_age`, page by page in `Attribute.id` order until MISP answers an empty page (MISP
filters warninglists after its SQL limit, so a short page does not prove the end).

Each page gets up to three attempts, with exponential backoff and jitter, on connection
errors, timeouts, 5xx and 429 (whose `Retry-After` / `X-Rate-Limit-Reset` is honoured, capped).
A 401/403 fails at once with `MispAuthError`; a body that is not JSON, has the wrong shape or
is too large fails with `MispResponseError`. Redirects are never followed, so the API key is
only ever sent to `server_url`. The key never appears in a log line, an error or a repr.

Attributes are parsed defensively (`parse_attributes`): one of the wrong shape is skipped and
counted in `FetchStats.malformed`; the rest of the page goes on. The HTTP client is injected
(the `treq` module, an `HTTPClient` from `make_http_client`, or `treq.testing.StubTreq`), and
so is the clock, so tests drive time with `twisted.internet.task.Clock`:

    client = MispClient.from_options(options, http=make_http_client(reactor), clock=reactor)
    indicators = await client.fetch()
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS, IResponse
from zope.interface import implementer

import misp_dns
from misp_dns.intel.indicator import BLOCKING_TYPES, RawIndicator
from misp_dns.interfaces import IIndicatorSource

if TYPE_CHECKING:
    from misp_dns.policy.misp_options import MispOptions

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "AttributeCounts",
    "FetchStats",
    "HttpResult",
    "MispAuthError",
    "MispClient",
    "MispError",
    "MispResponseError",
    "MispUnavailableError",
    "RetryingHttp",
    "make_http_client",
    "misp_timespan",
    "parse_attributes",
]

USER_AGENT = f"misp-dns/{misp_dns.__version__}"
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_SEARCH_PATH = "/attributes/restSearch"
# An epoch in seconds is above this; a "seconds from now" value is below it.
_EPOCH_THRESHOLD = 1_000_000_000
# A first_seen/last_seen number above this is in microseconds (MISP stores them so).
_MICROSECONDS_THRESHOLD = 100_000_000_000


class MispError(Exception):
    """Fetching indicators failed; the message names the cause and never the API key."""


class MispAuthError(MispError):
    """MISP refused the API key (HTTP 401 or 403); retrying will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class MispResponseError(MispError):
    """MISP answered something unusable: not JSON, the wrong shape, too large, a redirect."""


class MispUnavailableError(MispError):
    """MISP could not be reached or kept failing (connection, timeout, 5xx, 429) after retries."""


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix; `delay` is the server's wish."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


# Failures of the connection itself: worth another attempt.
_TRANSPORT_ERRORS = (
    error.ConnectError,
    error.DNSLookupError,
    error.ConnectionLost,
    error.ConnectionClosed,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
)


@attrs.define
class AttributeCounts:
    """What happened to the attributes of one fetch.

    `attributes` were received; `indicators` became `RawIndicator`s; `other_types` were
    well formed but of a type misp-dns does not block on (`ip-dst`, `url`, ...); `malformed`
    counts the skipped ones by the field that was wrong.
    """

    attributes: int = 0
    indicators: int = 0
    other_types: int = 0
    malformed: dict[str, int] = attrs.field(factory=dict)

    @property
    def skipped(self) -> int:
        """How many attributes were skipped for their shape."""
        return sum(self.malformed.values())


@attrs.define
class FetchStats(AttributeCounts):
    """`AttributeCounts` plus the HTTP side of one MISP REST fetch."""

    pages: int = 0
    requests: int = 0
    retries: int = 0


@attrs.frozen
class HttpResult:
    """A complete HTTP answer: status, headers (lower-case name to values) and body."""

    status: int
    headers: Mapping[str, Sequence[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header `name` (lower case), or None."""
        values = self.headers.get(name)
        return values[-1] if values else None


def misp_timespan(seconds: float) -> str:
    """Write a duration the way MISP's time filters take it: "15d", "2h" or "30m".

    Durations that are not whole minutes are rounded up to the next minute.
    """
    total = max(1, math.ceil(seconds))
    if total % 86400 == 0:
        return f"{total // 86400}d"
    if total % 3600 == 0:
        return f"{total // 3600}h"
    return f"{math.ceil(total / 60)}m"


# -- parsing ------------------------------------------------------------------------------


class _Malformed(ValueError):
    """An attribute of the wrong shape; `field` names the culprit for the counts."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _flag(item: Mapping[str, Any], key: str, default: bool) -> bool:
    value = item.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise _Malformed(key)


def _epoch_seconds(item: Mapping[str, Any], key: str) -> int | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    raise _Malformed(key)


def _seen(item: Mapping[str, Any], key: str) -> float | None:
    """first_seen/last_seen: an ISO 8601 string (usual), a number, or null."""
    value = item.get(key)
    if value is None or value == "":
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = float(int(value))
    if number is not None:
        if not math.isfinite(number) or number < 0:
            raise _Malformed(key)
        return number / 1e6 if number > _MICROSECONDS_THRESHOLD else number
    if not isinstance(value, str):
        raise _Malformed(key)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Malformed(key) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _text(value: object) -> str:
    """An id, uuid or info field: strings kept, integers written out, anything else empty."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def _parse_one(item: object, event: Mapping[str, Any] | None) -> RawIndicator | None:
    """One attribute, or None for a type misp-dns does not block on; `_Malformed` if bad."""
    if not isinstance(item, Mapping):
        raise _Malformed("attribute")
    value = item.get("value")
    if not isinstance(value, str):
        raise _Malformed("value")
    type_ = item.get("type")
    if not isinstance(type_, str):
        raise _Malformed("type")
    if type_ not in BLOCKING_TYPES:
        return None
    uuid = item.get("uuid", "")
    if not isinstance(uuid, str):
        raise _Malformed("uuid")
    own_event = item.get("Event")
    if own_event is not None:
        if not isinstance(own_event, Mapping):
            raise _Malformed("Event")
        event = own_event
    event = event or {}
    return RawIndicator(
        value=value,
        type=type_,
        to_ids=_flag(item, "to_ids", True),
        deleted=_flag(item, "deleted", False),
        timestamp=_epoch_seconds(item, "timestamp"),
        first_seen=_seen(item, "first_seen"),
        last_seen=_seen(item, "last_seen"),
        event_id=_text(event.get("id")) or _text(item.get("event_id")),
        event_uuid=_text(event.get("uuid")) or _text(item.get("event_uuid")),
        event_info=_text(event.get("info")),
        attribute_uuid=uuid,
    )


def parse_attributes(
    items: Iterable[object], counts: AttributeCounts, event: Mapping[str, Any] | None = None
) -> list[RawIndicator]:
    """Turn MISP attribute objects into `RawIndicator`s of the blocking types.

    `event` ({"id", "uuid", "info"}) stands in for attributes that carry no `Event` of their
    own, as in a feed's event file. Never raises for a bad attribute: it is counted in
    `counts.malformed` under the field that was wrong, and skipped.
    """
    found: list[RawIndicator] = []
    for item in items:
        counts.attributes += 1
        try:
            indicator = _parse_one(item, event)
        except _Malformed as exc:
            counts.malformed[exc.field] = counts.malformed.get(exc.field, 0) + 1
            continue
        if indicator is None:
            counts.other_types += 1
        else:
            counts.indicators += 1
            found.append(indicator)
    return found


def _attribute_list(payload: object, what: str) -> list[object]:
    """The `Attribute` list of a restSearch answer, or `MispResponseError`."""
    if isinstance(payload, Mapping):
        response = payload.get("response")
        if isinstance(response, Mapping):
            attributes = response.get("Attribute")
            if isinstance(attributes, list):
                return attributes
            if attributes is None and not response:
                return []
        # Older MISP versions answer an empty search with {"response": []}.
        elif isinstance(response, list) and not response:
            return []
    raise MispResponseError(
        f'{what}: expected {{"response": {{"Attribute": [...]}}}}, got {_shape(payload)}'
    )


def _shape(payload: object) -> str:
    if isinstance(payload, Mapping):
        keys = ", ".join(repr(k) for k in list(payload)[:5])
        return f"an object with keys {keys}" if keys else "an empty object"
    return {list: "an array", str: "a string", type(None): "null"}.get(
        type(payload), type(payload).__name__
    )


# -- HTTP ---------------------------------------------------------------------------------


class _CappedBody(Protocol):
    """Collects a response body, failing (and closing the connection) past `limit` bytes."""

    def __init__(self, finished: Deferred[bytes], limit: int, declared: int | None, what: str):
        self._finished: Deferred[bytes] | None = finished
        self._limit = limit
        self._declared = declared
        self._what = what
        self._chunks: list[bytes] = []
        self._size = 0

    def connectionMade(self) -> None:
        if self._declared is not None and self._declared > self._limit:
            self._fail(f"a body of {self._declared} bytes announced")

    def dataReceived(self, data: bytes) -> None:
        if self._finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._fail(f"more than {self._size - len(data)} bytes received")
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        finished, self._finished = self._finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self._chunks))
        else:
            finished.errback(reason)

    def cancel(self) -> None:
        """Stop reading: the connection is closed and the Deferred fails with CancelledError."""
        self._finished = None
        self._chunks = []
        if self.transport is not None:
            self.transport.loseConnection()

    def _fail(self, detail: str) -> None:
        finished = self._finished
        self.cancel()
        if finished is not None:
            finished.errback(
                MispResponseError(f"{self._what}: {detail}, over the {self._limit}-byte cap")
            )


def _read_body(response: IResponse, limit: int, what: str) -> Deferred[bytes]:
    """The whole body, or a failure past `limit` bytes; cancelling closes the connection."""
    if response.length == 0:
        return defer.succeed(b"")
    declared = None if response.length is UNKNOWN_LENGTH else int(response.length)
    finished: Deferred[bytes] = Deferred(lambda _d: protocol.cancel())
    protocol = _CappedBody(finished, limit, declared, what)
    response.deliverBody(protocol)
    return finished


def _describe_failure(exc: BaseException) -> str:
    """One line for a connection failure, with the causes Twisted wraps inside it."""
    reasons = getattr(exc, "reasons", None) or []
    causes = [r.value for r in reasons if isinstance(r, Failure) and r.value is not None]
    if causes:
        return f"{type(exc).__name__} ({'; '.join(_describe_failure(c) for c in causes)})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status_message(result: HttpResult) -> str:
    """MISP's `message` (or `name`) from an error body, else a short excerpt of it."""
    try:
        payload = json.loads(result.body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, Mapping):
        for key in ("message", "name", "errors"):
            if isinstance(payload.get(key), str) and payload[key]:
                return str(payload[key])[:300]
    return _excerpt(result.body)


def _excerpt(body: bytes) -> str:
    text = body[:120].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return repr(text) if text else "(empty body)"


def _retry_delay(headers: Mapping[str, Sequence[str]], now: float) -> float | None:
    """The wait a 429/503 asks for, from `Retry-After` or `X-Rate-Limit-Reset`, or None."""
    for name in ("retry-after", "x-rate-limit-reset"):
        values = headers.get(name)
        if not values:
            continue
        text = values[-1].strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            # X-Rate-Limit-Reset may be an epoch; Retry-After and MISP's header are seconds.
            return max(0.0, number - now if number > _EPOCH_THRESHOLD else number)
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    return None


@attrs.define
class RetryingHttp:
    """One HTTP exchange with a timeout, a body cap and retries with backoff and jitter.

    `http` has treq's API (`treq`, an `HTTPClient`, `StubTreq`). An attempt is retried on a
    connection error, a timeout, 408, 429 or 5xx, waiting `backoff * 2**(n-1)` seconds
    scaled by a jitter factor in [0.5, 1.5), or what a 429 or 503 asked for in `Retry-After`
    or `X-Rate-Limit-Reset`, at most `max_delay`. The last answer is returned as `HttpResult`,
    whatever its status, unless every attempt failed, which raises `MispUnavailableError`.
    `redact` cleans server-supplied text before it reaches a log line or an error.
    """

    http: Any
    clock: IReactorTime
    timeout: float = 60.0
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    attempts: int = 3
    backoff: float = 1.0
    max_delay: float = 60.0
    random: Callable[[], float] = random.random
    follow_redirects: bool = False
    redact: Callable[[str], str] = str
    log: ClassVar[Logger] = Logger()

    async def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        stats: FetchStats | None = None,
    ) -> HttpResult:
        """Send the request until it gets an answer worth returning; `what` names it in logs."""
        for attempt in range(1, self.attempts + 1):
            if stats is not None:
                stats.requests += 1
            try:
                result = await self._attempt(method, url, what, headers, body)
                if result.status in (408, 429) or 500 <= result.status <= 599:
                    delay = _retry_delay(result.headers, self.clock.seconds())
                    if result.status not in (429, 503):
                        delay = None
                    message = self.redact(_status_message(result))
                    raise _Retryable(f"HTTP {result.status}: {message}", delay)
                return result
            except _Retryable as exc:
                if attempt == self.attempts:
                    raise MispUnavailableError(
                        f"{what}: {exc.reason} (gave up after {attempt} attempts)"
                    ) from None
                delay = exc.delay
                if delay is None:
                    delay = self.backoff * 2 ** (attempt - 1) * (0.5 + self.random())
                delay = min(delay, self.max_delay)
                self.log.warn(
                    "{what}: attempt {attempt} failed ({reason}); retrying in {delay:.1f}s",
                    what=what,
                    attempt=attempt,
                    reason=exc.reason,
                    delay=delay,
                )
                if stats is not None:
                    stats.retries += 1
                await deferLater(self.clock, delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        method: str,
        url: str,
        what: str,
        headers: Mapping[str, str] | None,
        body: bytes | None,
    ) -> HttpResult:
        exchange = Deferred.fromCoroutine(self._exchange(method, url, what, headers, body))
        # Cancelling surfaces in many forms (CancelledError, ResponseNeverReceived wrapping
        # it, ...), so whether the time ran out is remembered here rather than guessed.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            exchange.cancel()

        timer = self.clock.callLater(self.timeout, expire)
        try:
            return await exchange
        except Exception as exc:
            if expired:
                raise _Retryable(f"no complete answer within {self.timeout:g}s") from None
            if isinstance(exc, _TRANSPORT_ERRORS):
                raise _Retryable(_describe_failure(exc)) from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _exchange(
        self,
        method: str,
        url: str,
        what: str,
        headers: Mapping[str, str] | None,
        body: bytes | None,
    ) -> HttpResult:
        response: IResponse = await self.http.request(
            method,
            url,
            headers=dict(headers or {}),
            data=body,
            allow_redirects=self.follow_redirects,
            unbuffered=True,
        )
        content = await _read_body(response, self.max_bytes, what)
        found = {
            name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
            for name, values in response.headers.getAllRawHeaders()
        }
        return HttpResult(response.code, found, content)


# -- the client ---------------------------------------------------------------------------


@implementer(IIndicatorSource)
@attrs.define
class MispClient:
    """Fetches the blocking indicators from MISP's `/attributes/restSearch`, page by page.

    `fetch()` fires with every `RawIndicator` of types domain, hostname and domain|ip that
    MISP returned; `last_stats` then holds the counts of that fetch. A failed fetch fails the
    Deferred with a `MispError` and leaves `last_stats` of the previous good one.
    """

    server_url: str = attrs.field(converter=lambda url: str(url).rstrip("/"))
    api_key: str = attrs.field(repr=False)
    http: Any = attrs.field(repr=False)
    clock: IReactorTime = attrs.field(repr=False)
    pagination_limit: int = 5000
    max_ioc_age: float = 15 * 86400.0
    timeout: float = 60.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    attempts: int = 3
    backoff: float = 1.0
    max_retry_delay: float = 60.0
    max_pages: int = 100_000
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)
    last_stats: FetchStats = attrs.field(factory=FetchStats, repr=False)
    log: ClassVar[Logger] = Logger()

    @classmethod
    def from_options(
        cls, options: MispOptions, http: Any, clock: IReactorTime, **overrides: Any
    ) -> MispClient:
        """Build from a `[[policy]] type = "misp"` table; reads `api_key_file` now."""
        return cls(
            server_url=options.server_url,
            api_key=options.read_api_key(),
            http=http,
            clock=clock,
            pagination_limit=options.pagination_limit,
            max_ioc_age=options.max_ioc_age,
            **overrides,
        )

    @property
    def url(self) -> str:
        """The search endpoint."""
        return self.server_url + _SEARCH_PATH

    def query(self, page: int) -> dict[str, Any]:
        """The restSearch filters sent for `page` (1-based)."""
        return {
            "returnFormat": "json",
            "type": list(BLOCKING_TYPES),
            "to_ids": True,
            "deleted": False,
            "timestamp": misp_timespan(self.max_ioc_age),
            "includeEventTags": True,
            "order": "Attribute.id asc",
            "limit": self.pagination_limit,
            "page": page,
        }

    def fetch(self) -> Deferred[list[RawIndicator]]:
        """Fetch every page; fire with the indicators or fail with a `MispError`."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[RawIndicator]:
        stats = FetchStats()
        http = RetryingHttp(
            http=self.http,
            clock=self.clock,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            attempts=self.attempts,
            backoff=self.backoff,
            max_delay=self.max_retry_delay,
            random=self.random,
            redact=self._redact,
        )
        indicators: list[RawIndicator] = []
        previous_ids: list[object] | None = None
        for page in range(1, self.max_pages + 1):
            attributes = await self._page(http, page, stats)
            if not attributes:
                self.last_stats = stats
                self.log.info(
                    "MISP {url}: {indicators} indicators from {attributes} attributes in "
                    "{pages} pages ({other} of other types, {skipped} malformed: {reasons}); "
                    "{requests} requests, {retries} retries",
                    url=self.server_url,
                    indicators=stats.indicators,
                    attributes=stats.attributes,
                    pages=stats.pages,
                    other=stats.other_types,
                    skipped=stats.skipped,
                    reasons=stats.malformed or "none",
                    requests=stats.requests,
                    retries=stats.retries,
                )
                return indicators
            ids = [a.get("id") if isinstance(a, Mapping) else None for a in attributes]
            if ids == previous_ids and any(i is not None for i in ids):
                raise MispResponseError(
                    f"{self.url} page {page}: the same attributes as page {page - 1}; "
                    "the server ignores 'page'"
                )
            previous_ids = ids
            stats.pages += 1
            indicators.extend(parse_attributes(attributes, stats))
        raise MispResponseError(f"{self.url}: still not at an empty page after {self.max_pages}")

    async def _page(self, http: RetryingHttp, page: int, stats: FetchStats) -> list[object]:
        what = f"MISP {self.url} page {page}"
        body = json.dumps(self.query(page)).encode("utf-8")
        result = await http.request(
            "POST", self.url, what, headers=self._headers(), body=body, stats=stats
        )
        return self._attributes_of(result, what)

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": self.api_key,
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _attributes_of(self, result: HttpResult, what: str) -> list[object]:
        """The page's attributes, or the error its answer deserves (with the key redacted)."""
        status = result.status
        if status in (401, 403):
            message = f"{what}: HTTP {status}, MISP refused the API key: {_status_message(result)}"
            raise MispAuthError(self._redact(message), status)
        if 300 <= status <= 399:
            location = result.header("location") or "?"
            message = (
                f"{what}: HTTP {status} redirect to {location}; not followed, so the API key "
                "goes to server_url only (fix server_url)"
            )
        elif status != 200:
            message = f"{what}: HTTP {status}: {_status_message(result)}"
        else:
            try:
                return _attribute_list(json.loads(result.body), what)
            except (ValueError, UnicodeDecodeError):
                message = f"{what}: the body is not JSON: {_excerpt(result.body)}"
            except MispResponseError as exc:
                message = str(exc)
        raise MispResponseError(self._redact(message))

    def _redact(self, text: str) -> str:
        """Whatever the server echoes, the key is never repeated."""
        return text.replace(self.api_key, "<api key>") if self.api_key else text


# -- TLS ----------------------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class _UnverifiedCreator:
    """A TLS client connection that checks no certificate, still sending SNI."""

    options: CertificateOptions
    hostname: bytes

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if not _is_ip_address(self.hostname):
            connection.set_tlsext_host_name(self.hostname)
        return connection


def _is_ip_address(hostname: bytes) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(hostname.decode("ascii").strip("[]"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


@implementer(IPolicyForHTTPS)
class _UnverifiedPolicy:
    """An HTTPS policy that accepts any certificate (`disable_tls_validation = true`)."""

    def __init__(self) -> None:
        self._options = CertificateOptions(verify=False)

    def creatorForNetloc(self, hostname: bytes, port: int) -> _UnverifiedCreator:
        return _UnverifiedCreator(self._options, hostname)


_tls_log = Logger(namespace="misp_dns.intel.misp_client")


def make_http_client(
    reactor: Any, verify_tls: bool = True, *, pool: HTTPConnectionPool | None = None
) -> Any:
    """A treq `HTTPClient` over a pooled `Agent`; TLS certificates checked unless told not to.

    With `verify_tls=False` any certificate is accepted, and a warning says so once, here.
    """
    from treq.client import HTTPClient

    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
    if verify_tls:
        agent = Agent(reactor, pool=pool)
    else:
        _tls_log.warn(
            "TLS certificate validation is disabled (disable_tls_validation = true): "
            "anyone on the path can read the API key and feed false indicators"
        )
        agent = Agent(reactor, contextFactory=_UnverifiedPolicy(), pool=pool)
    return HTTPClient(agent)
