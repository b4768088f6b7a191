"""The HTTP client every part of misp-dns shares: TLS policy, a body cap, retries with backoff.

`make_agent` builds a pooled `Agent`, validating TLS certificates unless
`disable_tls_validation` says otherwise, and `make_http_client` the treq client over it; the
MISP REST client and the MISP feed reader use the treq client, the `http` export sink the
bare `Agent` (treq would ask for gzip and follow redirects). `RetryingHttp` sends one
request until it gets an answer worth returning: connection errors, timeouts, 408, 429 and
5xx are retried with `backoff_delay`'s exponential backoff and jitter (or the wait a 429/503
asks for), and a body larger than the cap fails instead of filling memory. Redirects are not
followed unless asked for, and then only while they stay on the origin (scheme, host and
port) of the URL asked for.

The errors it raises are `UnavailableError` and `ResponseError` unless the caller names its
own classes (the MISP clients raise their `MispError` kinds, see `misp_dns.intel.errors`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol
from urllib.parse import urljoin, urlsplit

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
from misp_dns.backoff import backoff_delay

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_REDIRECTS",
    "USER_AGENT",
    "FetchError",
    "HttpResult",
    "QuietConnectionPool",
    "RequestCounts",
    "ResponseError",
    "RetryingHttp",
    "UnavailableError",
    "excerpt",
    "make_agent",
    "make_http_client",
    "read_capped_body",
    "status_message",
]

USER_AGENT = f"misp-dns/{misp_dns.__version__}"
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# An epoch in seconds is above this; a "seconds from now" value is below it.
_EPOCH_THRESHOLD = 1_000_000_000
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


class FetchError(Exception):
    """An HTTP exchange failed; the message names the cause and never a secret."""


class ResponseError(FetchError):
    """The server answered something unusable: too large, the wrong shape, a redirect."""


class UnavailableError(FetchError):
    """The server could not be reached or kept failing (connection, timeout, 5xx, 429)."""


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


class RequestCounts(TypingProtocol):
    """Where `RetryingHttp` counts what it did (`FetchStats` and the feed's stats)."""

    requests: int
    retries: int


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


# -- HTTP ---------------------------------------------------------------------------------


class _CappedBody(Protocol):
    """Collects a response body, failing (and closing the connection) past `limit` bytes."""

    def __init__(
        self,
        finished: Deferred[bytes],
        limit: int,
        declared: int | None,
        what: str,
        too_large: type[Exception],
    ):
        self._finished: Deferred[bytes] | None = finished
        self._limit = limit
        self._declared = declared
        self._what = what
        self._too_large = too_large
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
                self._too_large(f"{self._what}: {detail}, over the {self._limit}-byte cap")
            )


def read_capped_body(
    response: IResponse, limit: int, what: str, too_large: type[Exception] = ResponseError
) -> Deferred[bytes]:
    """The whole body, or a `too_large` failure past `limit` bytes.

    Cancelling the Deferred closes the connection.
    """
    if response.length == 0:
        return defer.succeed(b"")
    declared = None if response.length is UNKNOWN_LENGTH else int(response.length)
    finished: Deferred[bytes] = Deferred(lambda _d: protocol.cancel())
    protocol = _CappedBody(finished, limit, declared, what, too_large)
    response.deliverBody(protocol)
    return finished


def _is_tls_failure(exc: BaseException) -> bool:
    """True when `exc` is, or wraps, a TLS failure: OpenSSL's, or a certificate for a name
    other than the server's (service_identity)."""
    from OpenSSL.SSL import Error as TLSError
    from service_identity import VerificationError

    if isinstance(exc, TLSError | VerificationError):
        return True
    reasons = getattr(exc, "reasons", None) or []
    return any(
        isinstance(r, Failure) and r.value is not None and _is_tls_failure(r.value) for r in reasons
    )


def _describe_failure(exc: BaseException) -> str:
    """One line for a connection failure, with the causes Twisted wraps inside it."""
    reasons = getattr(exc, "reasons", None) or []
    causes = [r.value for r in reasons if isinstance(r, Failure) and r.value is not None]
    if causes:
        return f"{type(exc).__name__} ({'; '.join(_describe_failure(c) for c in causes)})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# How much of a server's text is redacted and then shortened for a message. `redact` is
# expected to remove any 8 characters of a secret in a row (misp_dns.redact), so cutting
# first leaves at most 7 of them at the cut, and keeps the work bounded for a huge body.
_REDACTED_SPAN = 8192


def status_message(result: HttpResult, redact: Callable[[str], str] = str) -> str:
    """MISP's `message` (or `name`) from an error body, else a short excerpt of it.

    `redact` cleans the text before it is shortened, so a secret the server echoes cannot
    survive as a cut-off prefix.
    """
    try:
        payload = json.loads(result.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        payload = None
    if isinstance(payload, Mapping):
        for key in ("message", "name", "errors"):
            if isinstance(payload.get(key), str) and payload[key]:
                return redact(str(payload[key])[:_REDACTED_SPAN])[:300]
    return excerpt(result.body, redact)


def excerpt(body: bytes, redact: Callable[[str], str] = str) -> str:
    """The start of a body for an error message, white space folded, secrets removed first."""
    text = body[: _REDACTED_SPAN * 4].decode("utf-8", "replace")[:_REDACTED_SPAN]
    text = redact(text)[:120].strip()
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
    whatever its status, unless every attempt failed, which raises `unavailable_error`
    (a body over `max_bytes` raises `response_error`). `redact` cleans server-supplied text
    before it reaches a log line or an error.

    With `follow_redirects`, a redirect is followed (at most `MAX_REDIRECTS` hops, all within
    one attempt's timeout) only while it stays on the origin of `url`; one that leaves it
    raises `response_error` naming the other origin. Without it, a redirect is returned.
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
    unavailable_error: type[Exception] = UnavailableError
    response_error: type[Exception] = ResponseError
    log: ClassVar[Logger] = Logger()

    async def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        stats: RequestCounts | None = None,
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
                    message = status_message(result, self.redact)
                    raise _Retryable(f"HTTP {result.status}: {message}", delay)
                return result
            except _Retryable as exc:
                if attempt == self.attempts:
                    raise self.unavailable_error(
                        f"{what}: {exc.reason} (gave up after {attempt} attempts)"
                    ) from None
                delay = exc.delay
                if delay is None:
                    jitter = 0.5 + self.random()
                    delay = backoff_delay(attempt, self.backoff, self.max_delay, jitter)
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
                if _is_tls_failure(exc):
                    # A certificate that fails validation fails the same way next time.
                    raise self.unavailable_error(
                        f"{what}: TLS failed: {_describe_failure(exc)}"
                    ) from None
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
        origin = _origin(url)
        for _hop in range(MAX_REDIRECTS + 1):
            result = await self._one_exchange(method, url, what, headers, body)
            location = result.header("location")
            if not (self.follow_redirects and result.status in _REDIRECT_STATUSES and location):
                return result
            target = urljoin(url, location.strip())
            if _origin(target) != origin:
                raise self.response_error(
                    self.redact(
                        f"{what}: HTTP {result.status} redirect to another origin "
                        f"({_origin_text(target)}); not followed"
                    )
                )
            if result.status == 303:
                method, body = "GET", None
            url = target
        raise self.response_error(f"{what}: more than {MAX_REDIRECTS} redirects")

    async def _one_exchange(
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
            allow_redirects=False,
            unbuffered=True,
        )
        content = await read_capped_body(response, self.max_bytes, what, self.response_error)
        found = {
            name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
            for name, values in response.headers.getAllRawHeaders()
        }
        return HttpResult(response.code, found, content)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`, the port filled in for http and https."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # not a port: matches no origin
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


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


_tls_log = Logger(namespace="misp_dns.http")


class _QuietClientFactory(HTTPConnectionPool._factory):  # type: ignore[misc,valid-type]
    """Twisted's factory for one HTTP connection, without its "Starting factory" and
    "Stopping factory" log lines (two per request otherwise)."""

    noisy = False


class QuietConnectionPool(HTTPConnectionPool):
    """An `HTTPConnectionPool` whose connections log nothing when they open and close."""

    _factory = _QuietClientFactory


def make_agent(
    reactor: Any, verify_tls: bool = True, *, pool: HTTPConnectionPool | None = None
) -> Agent:
    """A pooled `Agent`, TLS certificates checked unless told not to.

    The default pool is a `QuietConnectionPool`, so requests do not log factory noise.

    With `verify_tls=False` any certificate is accepted, and a warning says so once, here.
    An `Agent` follows no redirect and asks for no content coding: what it is sent is what
    its caller reads.
    """
    if pool is None:
        pool = QuietConnectionPool(reactor, persistent=True)
    if verify_tls:
        return Agent(reactor, pool=pool)
    _tls_log.warn(
        "TLS certificate validation is disabled (disable_tls_validation = true): "
        "anyone on the path can read the API key and feed false indicators"
    )
    return Agent(reactor, contextFactory=_UnverifiedPolicy(), pool=pool)


def make_http_client(
    reactor: Any, verify_tls: bool = True, *, pool: HTTPConnectionPool | None = None
) -> Any:
    """A treq `HTTPClient` over `make_agent`'s pooled `Agent`."""
    from treq.client import HTTPClient

    return HTTPClient(make_agent(reactor, verify_tls, pool=pool))
