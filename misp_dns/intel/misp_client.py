"""Fetching indicators from a MISP server's REST API, paged, retried and bounded.

`MispClient.fetch()` asks `POST {server_url}/attributes/restSearch` for the `domain`,
`hostname` and `domain|ip` attributes (with response IPs on, also `ip-dst`, `ip-src`,
`ip-dst|port` and `ip-src|port`) marked `to_ids`, not deleted, and changed within
`max_ioc_age`, page by page in `Attribute.id` order until MISP answers an empty page. MISP
leaves out warninglisted and decayed attributes after its SQL limit, so a short page does not
prove the end, and neither does an empty one while those filters are on: then the same page is
asked for again without them, and the fetch goes on when that one holds attributes (which are
only counted, never used). The policy's `MispFilters` (tags, warninglists, published events,
threat levels, decay) go into each request, and each attribute MISP sends is checked against
them again: one that a MISP ignoring a filter sent anyway is left out and counted, not blocked.

Each page gets up to three attempts, with exponential backoff and jitter, on connection
errors, timeouts, 5xx and 429 (whose `Retry-After` / `X-Rate-Limit-Reset` is honoured, capped).
A 401/403 fails at once with `MispAuthError`; a body that is not JSON, has the wrong shape or
is too large fails with `MispResponseError`. Redirects are never followed, so the API key is
only ever sent to `server_url`. The key never appears in a log line, an error or a repr.

Attributes are parsed defensively (`parse_attributes`): one of the wrong shape is skipped and
counted in `FetchStats.malformed`; the rest of the page goes on. A page is decoded one
attribute at a time (`json_stream`) in the same steps that parse it, so a big page never
exists as a whole tree of Python objects; with a real reactor those steps run on its thread
in slices of a few milliseconds (`blocking.sliced_runner`), queries answered between them.
The HTTP client is injected (the `treq` module, an `HTTPClient` from `make_http_client`, or
`treq.testing.StubTreq`), and so is the clock, so tests drive time with
`twisted.internet.task.Clock`:

    client = MispClient.from_options(options, http=make_http_client(reactor), clock=reactor)
    indicators = await client.fetch()
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from misp_dns.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    USER_AGENT,
    HttpResult,
    RetryingHttp,
    excerpt,
    status_message,
)
from misp_dns.intel.blocking import (
    RunBlocking,
    RunSteps,
    Steps,
    run_inline,
    run_steps_inline,
    sliced_runner,
    thread_runner,
)
from misp_dns.intel.errors import (
    MispAuthError,
    MispError,
    MispResponseError,
    MispUnavailableError,
)
from misp_dns.intel.indicator import BLOCKING_TYPES, fetched_types
from misp_dns.intel.json_stream import array_elements
from misp_dns.intel.misp_filters import MispFilters
from misp_dns.interfaces import IIndicatorSource, RawIndicator
from misp_dns.redact import Redactor

if TYPE_CHECKING:
    from misp_dns.intel.misp_options import MispOptions

__all__ = [
    "AttributeCounts",
    "FetchStats",
    "MispAuthError",
    "MispClient",
    "MispError",
    "MispResponseError",
    "MispUnavailableError",
    "misp_timespan",
    "parse_attributes",
    "parsing_attributes",
]

_SEARCH_PATH = "/attributes/restSearch"
# A first_seen/last_seen number above this is in microseconds (MISP stores them so).
_MICROSECONDS_THRESHOLD = 100_000_000_000


@attrs.define
class AttributeCounts:
    """What happened to the attributes of one fetch.

    `attributes` were received; `indicators` became `RawIndicator`s; `other_types` were
    well formed but of a type misp-dns does not block on (`ip-dst`, `url`, ...); `malformed`
    counts the skipped ones by the field that was wrong; `filtered` counts, by reason (see
    `misp_filters.REJECTIONS`), those left out because they break the policy's filters.
    """

    attributes: int = 0
    indicators: int = 0
    other_types: int = 0
    malformed: dict[str, int] = attrs.field(factory=dict)
    filtered: dict[str, int] = attrs.field(factory=dict)

    def add(self, other: AttributeCounts) -> None:
        """Count `other`'s attributes too."""
        self.attributes += other.attributes
        self.indicators += other.indicators
        self.other_types += other.other_types
        for field, count in other.malformed.items():
            self.malformed[field] = self.malformed.get(field, 0) + count
        for reason, count in other.filtered.items():
            self.filtered[reason] = self.filtered.get(reason, 0) + count

    @property
    def skipped(self) -> int:
        """How many attributes were skipped for their shape."""
        return sum(self.malformed.values())


@attrs.define
class FetchStats(AttributeCounts):
    """`AttributeCounts` plus the HTTP side of one MISP REST fetch.

    `emptied_pages` counts the pages that came back empty because MISP's warninglist or
    decay filtering (applied after its SQL limit) left out every attribute on them.
    """

    pages: int = 0
    requests: int = 0
    retries: int = 0
    emptied_pages: int = 0


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


def _parse_one(
    item: object, event: Mapping[str, Any] | None, types: Collection[str]
) -> RawIndicator | None:
    """One attribute, or None for a type not in `types`; `_Malformed` if bad."""
    if not isinstance(item, Mapping):
        raise _Malformed("attribute")
    value = item.get("value")
    if not isinstance(value, str):
        raise _Malformed("value")
    type_ = item.get("type")
    if not isinstance(type_, str):
        raise _Malformed("type")
    if type_ not in types:
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
    # Thousands of attributes share one event: intern its strings so a million indicators
    # hold one copy of each, not a million.
    return RawIndicator(
        value=value,
        type=sys.intern(type_),
        to_ids=_flag(item, "to_ids", True),
        deleted=_flag(item, "deleted", False),
        timestamp=_epoch_seconds(item, "timestamp"),
        first_seen=_seen(item, "first_seen"),
        last_seen=_seen(item, "last_seen"),
        event_id=sys.intern(_text(event.get("id")) or _text(item.get("event_id"))),
        event_uuid=sys.intern(_text(event.get("uuid")) or _text(item.get("event_uuid"))),
        event_info=sys.intern(_text(event.get("info"))),
        attribute_uuid=uuid,
    )


Check = Callable[[Mapping[str, Any]], "str | None"]


def parse_attributes(
    items: Iterable[object],
    counts: AttributeCounts,
    event: Mapping[str, Any] | None = None,
    check: Check | None = None,
    types: Collection[str] = BLOCKING_TYPES,
) -> list[RawIndicator]:
    """Turn MISP attribute objects into `RawIndicator`s of `types` (the blocking types).

    `event` ({"id", "uuid", "info"}) stands in for attributes that carry no `Event` of their
    own, as in a feed's event file. `check` (such as `MispFilters.rejection`) says why an
    attribute is to be left out, or None; those it rejects are counted in `counts.filtered`
    by reason. Never raises for a bad attribute: it is counted in `counts.malformed` under
    the field that was wrong, and skipped.
    """
    found: list[RawIndicator] = []
    for _ in parsing_attributes(items, counts, found, event, check, types):
        pass
    return found


# Attributes parsed between two steps of `parsing_attributes`: a fraction of a millisecond.
_ATTRIBUTES_PER_STEP = 64


def parsing_attributes(
    items: Iterable[object],
    counts: AttributeCounts,
    found: list[RawIndicator],
    event: Mapping[str, Any] | None = None,
    check: Check | None = None,
    types: Collection[str] = BLOCKING_TYPES,
) -> Steps[None]:
    """`parse_attributes` as steps (see `blocking.Steps`), appending to `found`."""
    step = _ATTRIBUTES_PER_STEP
    for item in items:
        counts.attributes += 1
        step -= 1
        if not step:
            step = _ATTRIBUTES_PER_STEP
            yield
        if check is not None and isinstance(item, Mapping):
            reason = check(item)
            if reason is not None:
                counts.filtered[reason] = counts.filtered.get(reason, 0) + 1
                continue
        try:
            indicator = _parse_one(item, event, types)
        except _Malformed as exc:
            counts.malformed[exc.field] = counts.malformed.get(exc.field, 0) + 1
            continue
        if indicator is None:
            counts.other_types += 1
        else:
            counts.indicators += 1
            found.append(indicator)


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


# -- the client ---------------------------------------------------------------------------


@attrs.frozen
class _Page:
    """One decoded restSearch page: its size, attribute ids, indicators and counts."""

    size: int
    ids: tuple[object, ...]
    indicators: list[RawIndicator]
    counts: AttributeCounts


_ATTRIBUTES_PATH = ("response", "Attribute")


def _streamed_page(
    body: bytes, check: Check | None = None, types: Collection[str] = BLOCKING_TYPES
) -> Steps[_Page | None]:
    """A 200 answer's page read one attribute at a time (see `json_stream`), as steps, or
    None when it is not the usual `{"response": {"Attribute": [...]}}` in UTF-8."""
    ids: list[object] = []

    def attributes(text: str) -> Iterator[object]:
        for item in array_elements(text, _ATTRIBUTES_PATH):
            ids.append(item.get("id") if isinstance(item, Mapping) else None)
            yield item

    counts = AttributeCounts()
    indicators: list[RawIndicator] = []
    try:
        text = body.decode("utf-8")
        yield
        parsing = parsing_attributes(attributes(text), counts, indicators, None, check, types)
        yield from parsing
    except (ValueError, RecursionError):
        return None
    return _Page(len(ids), tuple(ids), indicators, counts)


@implementer(IIndicatorSource)
@attrs.define
class MispClient:
    """Fetches the blocking indicators from MISP's `/attributes/restSearch`, page by page.

    `fetch()` fires with every `RawIndicator` of `types` (domain, hostname and domain|ip;
    with response IPs, the address types too) that MISP returned and `filters` admit;
    `last_stats` then holds the counts of that fetch. A failed fetch fails the Deferred with
    a `MispError` and leaves `last_stats` of the previous good one.
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
    filters: MispFilters = attrs.field(factory=MispFilters)
    types: tuple[str, ...] = BLOCKING_TYPES
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)
    run_blocking: RunBlocking = attrs.field(default=run_inline, repr=False)
    run_steps: RunSteps = attrs.field(default=run_steps_inline, repr=False)
    last_stats: FetchStats = attrs.field(factory=FetchStats, repr=False)
    _redactor: Redactor = attrs.field(init=False, repr=False)
    log: ClassVar[Logger] = Logger()

    @_redactor.default
    def _redactor_for_the_key(self) -> Redactor:
        return Redactor(self.api_key, "<api key>")

    @classmethod
    def from_options(
        cls, options: MispOptions, http: Any, clock: IReactorTime, **overrides: Any
    ) -> MispClient:
        """Build from a `[[policy]] type = "misp"` table; reads `api_key_file` now.

        With a reactor that has threads, pages are decoded on the reactor thread in slices
        of a few milliseconds (`sliced_runner`), so a big page never holds up answering;
        what is still run whole (the body of an error, or of an odd layout) goes to its
        thread pool.
        """
        if hasattr(clock, "getThreadPool"):
            overrides.setdefault("run_blocking", thread_runner(clock))
            overrides.setdefault("run_steps", sliced_runner(clock))
        return cls(
            server_url=options.server_url,
            api_key=options.read_api_key(),
            http=http,
            clock=clock,
            pagination_limit=options.pagination_limit,
            max_ioc_age=options.max_ioc_age,
            timeout=options.request_timeout,
            filters=options.filters(),
            types=fetched_types(options.block_response_ips),
            **overrides,
        )

    @property
    def fetch_summary(self) -> str:
        """What the last fetch did, for the updater's one line per refresh."""
        stats = self.last_stats
        return (
            f"{stats.indicators} indicators from {stats.attributes} attributes in {stats.pages}"
            f" pages ({stats.other_types} of other types, {stats.skipped} malformed:"
            f" {stats.malformed or 'none'}; {sum(stats.filtered.values())} left out by the"
            f" policy's filters: {stats.filtered or 'none'}); {stats.requests} requests,"
            f" {stats.retries} retries; pages MISP's filters emptied: {stats.emptied_pages}"
        )

    @property
    def url(self) -> str:
        """The search endpoint."""
        return self.server_url + _SEARCH_PATH

    def query(self, page: int) -> dict[str, Any]:
        """The restSearch filters sent for `page` (1-based)."""
        return {
            "returnFormat": "json",
            "type": list(self.types),
            "to_ids": True,
            "deleted": False,
            "timestamp": misp_timespan(self.max_ioc_age),
            "includeEventTags": True,
            **self.filters.search_terms(),
            "order": "Attribute.id asc",
            "limit": self.pagination_limit,
            "page": page,
        }

    def fetch(self) -> Deferred[list[RawIndicator]]:
        """Fetch every page; fire with the indicators or fail with a `MispError`."""
        found: list[RawIndicator] = []
        fetching = Deferred.fromCoroutine(self._fetch(found.extend))
        return fetching.addCallback(lambda _: found)

    def fetch_pages(self, consume: Callable[[list[RawIndicator]], Any]) -> Deferred[None]:
        """Fetch every page, handing each page's indicators to `consume` as it arrives.

        When `consume` returns a Deferred, the next page is asked for once it fires, so a
        million indicators never need to be in memory at once.
        """
        return Deferred.fromCoroutine(self._fetch(consume))

    async def _fetch(self, consume: Callable[[list[RawIndicator]], Any]) -> None:
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
            unavailable_error=MispUnavailableError,
            response_error=MispResponseError,
        )
        previous_ids: tuple[object, ...] | None = None
        for page in range(1, self.max_pages + 1):
            result = await self._page(http, page, stats)
            if not result.size:
                if await self._emptied_by_filters(http, page, stats):
                    stats.emptied_pages += 1
                    continue
                self.last_stats = stats
                self._warn_if_filters_ignored(stats)
                return
            if result.ids == previous_ids and any(i is not None for i in result.ids):
                raise MispResponseError(
                    f"{self.url} page {page}: the same attributes as page {page - 1}; "
                    "the server ignores 'page'"
                )
            previous_ids = result.ids
            stats.pages += 1
            stats.add(result.counts)
            consumed = consume(result.indicators)
            if isinstance(consumed, Deferred):
                await consumed
        raise MispResponseError(f"{self.url}: still not at an empty page after {self.max_pages}")

    def _warn_if_filters_ignored(self, stats: FetchStats) -> None:
        if stats.filtered:
            self.log.warn(
                "MISP {url} sent {filtered} attributes that its filters should have left out"
                " ({why}); they are not blocked. Does this MISP know the filters"
                " (tags, published, threat_level_id, excludeDecayed)?",
                url=self.server_url,
                filtered=sum(stats.filtered.values()),
                why=stats.filtered,
            )

    async def _page(self, http: RetryingHttp, page: int, stats: FetchStats) -> _Page:
        what = f"MISP {self.url} page {page}"
        result = await self._post(http, what, self.query(page), stats)
        # Decoded and parsed in slices between which the reactor answers queries; the
        # collector stays paused meanwhile (see `blocking`).
        parsed: _Page = await self.run_steps(self._parse_page(result, what))
        return parsed

    async def _emptied_by_filters(self, http: RetryingHttp, page: int, stats: FetchStats) -> bool:
        """Whether an empty `page` only looks like the end: MISP's after-limit filters left
        out every attribute on it, and the same page without them is not empty.

        Nothing of the unfiltered page is used; it is only counted.
        """
        filters = self.filters
        if not (filters.enforce_warninglists or filters.exclude_decayed):
            return False
        what = f"MISP {self.url} page {page} without warninglists and decay"
        unfiltered = self.query(page)
        for key in ("excludeDecayed", "includeDecayScore"):
            unfiltered.pop(key, None)
        unfiltered["enforceWarninglist"] = False
        result = await self._post(http, what, unfiltered, stats)
        size: int = await self.run_blocking(lambda: len(self._attributes_of(result, what)))
        return size > 0

    async def _post(
        self, http: RetryingHttp, what: str, filters: dict[str, Any], stats: FetchStats
    ) -> HttpResult:
        body = json.dumps(filters).encode("utf-8")
        return await http.request(
            "POST", self.url, what, headers=self._headers(), body=body, stats=stats
        )

    def _parse_page(self, result: HttpResult, what: str) -> Steps[_Page]:
        check = self.filters.rejection
        if result.status == 200:
            streamed = yield from _streamed_page(result.body, check, self.types)
            if streamed is not None:
                return streamed
        # An error status, another shape or broken JSON: decoded whole, for its message.
        attributes = self._attributes_of(result, what)
        yield
        ids = tuple(a.get("id") if isinstance(a, Mapping) else None for a in attributes)
        counts = AttributeCounts()
        indicators: list[RawIndicator] = []
        yield from parsing_attributes(attributes, counts, indicators, check=check, types=self.types)
        return _Page(len(attributes), ids, indicators, counts)

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
            refusal = status_message(result, self._redact)
            message = f"{what}: HTTP {status}, MISP refused the API key: {refusal}"
            raise MispAuthError(self._redact(message), status)
        if 300 <= status <= 399:
            location = result.header("location") or "?"
            message = (
                f"{what}: HTTP {status} redirect to {location}; not followed, so the API key "
                "goes to server_url only (fix server_url)"
            )
        elif status != 200:
            message = f"{what}: HTTP {status}: {status_message(result, self._redact)}"
        else:
            try:
                return _attribute_list(json.loads(result.body), what)
            except (ValueError, RecursionError):
                message = f"{what}: the body is not JSON: {excerpt(result.body, self._redact)}"
            except MispResponseError as exc:
                message = str(exc)
        raise MispResponseError(self._redact(message))

    def _redact(self, text: str) -> str:
        """Whatever the server echoes, no 8 characters of the key come out (see `Redactor`)."""
        return self._redactor(text)
