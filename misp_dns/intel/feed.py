"""Reading indicators from a MISP feed: a directory or an HTTP(S) URL.

A MISP feed (the format MISP publishes and subscribes to) is a `manifest.json` mapping each
event UUID to `{"info", "timestamp", ...}`, next to one `<uuid>.json` per event holding
`{"Event": {"uuid", "info", ..., "Attribute": [...], "Object": [{"Attribute": [...]}]}}`.

`MispFeedSource.fetch()` reads the manifest, then only the events whose manifest timestamp
changed since the last fetch; unchanged events reuse their last parsed indicators. An event
file that is missing, unreadable, too large or malformed (nested too deeply included) is
logged and counted (`FeedStats`), its previous version (if any) kept, and the rest goes on;
only a missing or malformed manifest fails the fetch. Event UUIDs must look like UUIDs, so a
hostile manifest cannot reach files outside the feed; a file must be a regular file (not a
device or a pipe), and the size cap counts the bytes read, whatever `stat` says. Over HTTP,
redirects are followed only while they stay on the feed's origin.

With `warninglists` (MISP warninglists, see `misp_dns.intel.warninglist`), an indicator on any
of them is dropped as its event is read, and each fetch logs how many each list dropped.

    source = MispFeedSource("etc/sample-feed", run_blocking=thread_runner(reactor))
    source = MispFeedSource("https://feeds.example/misp", http=treq, clock=reactor)
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from misp_dns.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    USER_AGENT,
    RetryingHttp,
    make_http_client,
)
from misp_dns.intel.blocking import run_inline, thread_runner
from misp_dns.intel.errors import MispError, MispResponseError, MispUnavailableError
from misp_dns.intel.indicator import BLOCKING_TYPES, fetched_types
from misp_dns.intel.json_stream import object_members
from misp_dns.intel.misp_client import AttributeCounts, parse_attributes
from misp_dns.intel.warninglist import WarninglistFilter
from misp_dns.interfaces import IIndicatorSource, RawIndicator

if TYPE_CHECKING:
    from misp_dns.intel.misp_options import MispFeedOptions

__all__ = ["FeedStats", "MispFeedError", "MispFeedSource"]

T = TypeVar("T")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_MANIFEST = "manifest.json"


class MispFeedError(MispError):
    """The feed cannot be read: its manifest is missing, unreachable or malformed."""


class _Missing(Exception):
    """The feed has no such file (404 or no file on disk)."""


class _BadEvent(Exception):
    """An event file that cannot be used; the message says why."""


@attrs.define
class FeedStats(AttributeCounts):
    """The counts of one feed fetch; the attribute counts cover every event in the result.

    `events` were listed in the manifest; `events_read` were (re)read this time,
    `events_unchanged` reused from the last fetch; `events_missing` had no file;
    `events_failed` could not be read or parsed; `manifest_skipped` entries were malformed;
    `warninglisted` counts the indicators dropped for being on a warninglist, by list name.
    """

    events: int = 0
    events_read: int = 0
    events_unchanged: int = 0
    events_missing: int = 0
    events_failed: int = 0
    manifest_skipped: int = 0
    warninglisted: dict[str, int] = attrs.field(factory=dict)


@attrs.frozen
class _Event:
    timestamp: int | None
    indicators: tuple[RawIndicator, ...]
    counts: AttributeCounts
    warninglisted: Mapping[str, int] = attrs.field(factory=dict)


def _timestamp(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 20:
        return int(value)
    return None


def _parse_manifest(data: bytes, where: str) -> tuple[dict[str, int | None], int]:
    """UUID -> timestamp (None when absent), and the number of malformed entries."""
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MispFeedError(f"{where}: not JSON") from None
    except RecursionError:
        raise MispFeedError(f"{where}: nested too deeply") from None
    if not isinstance(manifest, Mapping):
        raise MispFeedError(f"{where}: expected an object of event UUIDs")
    entries: dict[str, int | None] = {}
    skipped = 0
    for key, entry in manifest.items():
        if not _UUID.fullmatch(key) or not isinstance(entry, Mapping):
            skipped += 1
            continue
        entries[key.lower()] = _timestamp(entry.get("timestamp"))
    return entries, skipped


_CONTEXT_KEYS = ("id", "uuid", "info")


def _parse_event(
    data: bytes,
    event_uuid: str,
    timestamp: int | None,
    warninglists: WarninglistFilter | None = None,
    types: Collection[str] = BLOCKING_TYPES,
) -> _Event:
    """One event file into its indicators of `types`, less those on `warninglists` (pure;
    safe to run in a thread).

    Read one attribute at a time when the event is laid out as MISP writes it (`id`, `uuid`
    and `info` before the attributes); otherwise, or for a broken file, decoded whole.
    """
    event = _streamed_event(data, event_uuid, timestamp, types) or _whole_event(
        data, event_uuid, timestamp, types
    )
    if warninglists is None:
        return event
    kept, dropped = warninglists.split(event.indicators)
    return _Event(event.timestamp, tuple(kept), event.counts, dropped)


def _whole_event(
    data: bytes, event_uuid: str, timestamp: int | None, types: Collection[str]
) -> _Event:
    """An event file decoded whole, whatever its layout (`_BadEvent` if it is no event)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _BadEvent("not JSON") from None
    except RecursionError:
        raise _BadEvent("nested too deeply") from None
    event = document.get("Event") if isinstance(document, Mapping) else None
    if not isinstance(event, Mapping):
        raise _BadEvent('expected {"Event": {...}}')
    attributes = event.get("Attribute", [])
    objects = event.get("Object", [])
    if not isinstance(attributes, list) or not isinstance(objects, list):
        raise _BadEvent("Attribute and Object must be arrays")
    items: list[object] = list(attributes)
    counts = AttributeCounts()
    for obj in objects:
        inner = obj.get("Attribute", []) if isinstance(obj, Mapping) else None
        if isinstance(inner, list):
            items.extend(inner)
        else:
            counts.malformed["Object"] = counts.malformed.get("Object", 0) + 1
    context = {
        "id": event.get("id", ""),
        "uuid": event.get("uuid") or event_uuid,
        "info": event.get("info", ""),
    }
    indicators = parse_attributes(items, counts, event=context, types=types)
    return _Event(timestamp, tuple(indicators), counts)


def _streamed_event(
    data: bytes, event_uuid: str, timestamp: int | None, types: Collection[str]
) -> _Event | None:
    context: dict[str, object] = {"id": "", "uuid": None, "info": ""}
    counts = AttributeCounts()
    direct: list[RawIndicator] = []
    in_objects: list[RawIndicator] = []
    started = False
    try:
        members = object_members(data.decode("utf-8"), ("Event",), ("Attribute", "Object"))
        for key, value in members:
            if key in _CONTEXT_KEYS:
                if started:
                    return None  # the attributes came first: they need this context
                context[key] = value
                continue
            if key not in ("Attribute", "Object"):
                continue
            if not started:
                started = True
                context["uuid"] = context["uuid"] or event_uuid
            if key == "Attribute":
                direct.extend(parse_attributes((value,), counts, event=context, types=types))
                continue
            inner = value.get("Attribute", []) if isinstance(value, Mapping) else None
            if isinstance(inner, list):
                in_objects.extend(parse_attributes(inner, counts, event=context, types=types))
            else:
                counts.malformed["Object"] = counts.malformed.get("Object", 0) + 1
    except (ValueError, RecursionError):
        return None
    # The whole-file reading parses the event's own attributes before its objects' ones.
    return _Event(timestamp, (*direct, *in_objects), counts)


@implementer(IIndicatorSource)
@attrs.define
class MispFeedSource:
    """Fetches the blocking indicators of a MISP feed, re-reading changed events only.

    `url` is a directory (or `file://` URL) or an `http(s)://` URL of the folder holding
    `manifest.json`. For URLs, `http` (treq's API) and `clock` are required; requests get a
    timeout, a body cap and three attempts with backoff; redirects are followed while they
    stay on the feed's origin (scheme, host, port), so a feed cannot send misp-dns to fetch
    from elsewhere. `run_blocking` runs file reading and JSON parsing (default: on the calling
    thread; pass `thread_runner(reactor)` for big feeds). `warninglists` drops the
    indicators on any of its lists (see `misp_dns.intel.warninglist`).
    """

    url: str
    http: Any = attrs.field(default=None, repr=False)
    clock: IReactorTime | None = attrs.field(default=None, repr=False)
    run_blocking: Callable[[Callable[[], Any]], Deferred[Any]] = attrs.field(
        default=run_inline, repr=False
    )
    timeout: float = 60.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    attempts: int = 3
    backoff: float = 1.0
    max_retry_delay: float = 60.0
    concurrency: int = 4
    warninglists: WarninglistFilter | None = attrs.field(default=None, repr=False)
    types: tuple[str, ...] = BLOCKING_TYPES
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)
    last_stats: FeedStats = attrs.field(factory=FeedStats, repr=False)
    _events: dict[str, _Event] = attrs.field(factory=dict, repr=False, alias="_events")
    _reported: set[tuple[str, int | None]] = attrs.field(factory=set, repr=False, alias="_reported")
    log: ClassVar[Logger] = Logger()

    def __attrs_post_init__(self) -> None:
        if self.is_remote and (self.http is None or self.clock is None):
            raise ValueError(f"a feed URL ({self.url}) needs an http client and a clock")

    @classmethod
    def from_options(
        cls, options: MispFeedOptions, reactor: Any, **overrides: Any
    ) -> MispFeedSource:
        """Build from a `[[policy]] type = "misp-feed"` table, with the reactor's HTTP and threads.

        A URL feed gets `make_http_client(reactor, verify_tls=not disable_tls_validation)`;
        file reading and parsing run in the reactor's thread pool when it has one.
        """
        kwargs: dict[str, Any] = {
            "clock": reactor,
            "timeout": options.request_timeout,
            "types": fetched_types(options.block_response_ips),
        }
        lists = options.read_warninglists()
        if lists:
            kwargs["warninglists"] = WarninglistFilter(lists)
        if IReactorThreads.providedBy(reactor):
            kwargs["run_blocking"] = thread_runner(reactor)
        if options.url.lower().startswith(("http://", "https://")):
            kwargs["http"] = make_http_client(
                reactor, verify_tls=not options.disable_tls_validation
            )
        kwargs.update(overrides)
        return cls(options.url, **kwargs)

    @property
    def fetch_summary(self) -> str:
        """What the last fetch read, for the updater's one line per refresh."""
        stats = self.last_stats
        return (
            f"{stats.events} events ({stats.events_read} read, {stats.events_unchanged}"
            f" unchanged, {stats.events_missing} missing, {stats.events_failed} failed),"
            f" {stats.other_types} attributes of other types, {stats.skipped} malformed"
        )

    @property
    def is_remote(self) -> bool:
        """Whether the feed is fetched over HTTP(S)."""
        return self.url.lower().startswith(("http://", "https://"))

    @property
    def directory(self) -> Path:
        """The feed's folder (for a local feed)."""
        return Path(self.url.removeprefix("file://")).expanduser()

    def fetch(self) -> Deferred[list[RawIndicator]]:
        """Read the manifest and changed events; fire with every indicator of the feed."""
        return Deferred.fromCoroutine(self._fetch())

    def fetch_pages(self, consume: Callable[[list[RawIndicator]], Any]) -> Deferred[None]:
        """`fetch`, handing the indicators to `consume` (a feed keeps its events anyway)."""
        return self.fetch().addCallback(consume).addCallback(lambda _: None)

    async def _fetch(self) -> list[RawIndicator]:
        stats = FeedStats()
        http = self._http()
        try:
            data = await self._read(http, _MANIFEST)
        except _Missing:
            raise MispFeedError(f"{self._where(_MANIFEST)}: no such file") from None
        entries, stats.manifest_skipped = _parse_manifest(data, self._where(_MANIFEST))
        stats.events = len(entries)
        found: dict[str, _Event] = {}
        semaphore = defer.DeferredSemaphore(max(1, self.concurrency))

        async def load(event_uuid: str, timestamp: int | None) -> None:
            event = await self._event(http, event_uuid, timestamp, stats)
            if event is not None:
                found[event_uuid] = event

        await defer.gatherResults(
            [
                semaphore.run(load, event_uuid, timestamp)
                for event_uuid, timestamp in entries.items()
            ],
            consumeErrors=True,
        )
        self._events = found
        indicators: list[RawIndicator] = []
        for event_uuid in entries:  # manifest order, whatever order the reads finished in
            event = found.get(event_uuid)
            if event is None:
                continue
            indicators.extend(event.indicators)
            stats.attributes += event.counts.attributes
            stats.indicators += event.counts.indicators
            stats.other_types += event.counts.other_types
            for field, count in event.counts.malformed.items():
                stats.malformed[field] = stats.malformed.get(field, 0) + count
            for name, count in event.warninglisted.items():
                stats.warninglisted[name] = stats.warninglisted.get(name, 0) + count
        self.last_stats = stats
        if self.warninglists is not None:
            self._log_warninglisted(self.warninglists, stats)
        return indicators

    def _log_warninglisted(self, warninglists: WarninglistFilter, stats: FeedStats) -> None:
        by_list = dict.fromkeys((w.name for w in warninglists.lists), 0)
        by_list.update(stats.warninglisted)
        stats.warninglisted = by_list
        self.log.info(
            "MISP feed {url}: {dropped} indicators dropped for being on a warninglist ({lists})",
            url=self.url,
            dropped=sum(by_list.values()),
            lists=", ".join(f"{name}: {count}" for name, count in by_list.items()),
            warninglisted=by_list,
        )

    async def _event(
        self, http: RetryingHttp | None, event_uuid: str, timestamp: int | None, stats: FeedStats
    ) -> _Event | None:
        """The event's indicators: reused if unchanged, else read; the old ones on failure."""
        previous = self._events.get(event_uuid)
        if previous is not None and timestamp is not None and previous.timestamp == timestamp:
            stats.events_unchanged += 1
            return previous
        name = f"{event_uuid}.json"
        try:
            data = await self._read(http, name)
            event: _Event = await self.run_blocking(
                lambda: _parse_event(data, event_uuid, timestamp, self.warninglists, self.types)
            )
        except _Missing:
            stats.events_missing += 1
            if (event_uuid, timestamp) not in self._reported:
                self._reported.add((event_uuid, timestamp))
                self.log.warn(
                    "MISP feed {url}: event {uuid} is in the manifest but has no file",
                    url=self.url,
                    uuid=event_uuid,
                )
            return previous
        except (MispError, _BadEvent, OSError) as exc:
            stats.events_failed += 1
            self.log.warn(
                "MISP feed {url}: event {uuid} skipped: {reason}{kept}",
                url=self.url,
                uuid=event_uuid,
                reason=str(exc) or type(exc).__name__,
                kept="; keeping its previous version" if previous else "",
            )
            return previous
        stats.events_read += 1
        return event

    def _http(self) -> RetryingHttp | None:
        if not self.is_remote:
            return None
        assert self.clock is not None
        return RetryingHttp(
            http=self.http,
            clock=self.clock,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            attempts=self.attempts,
            backoff=self.backoff,
            max_delay=self.max_retry_delay,
            random=self.random,
            follow_redirects=True,
            unavailable_error=MispUnavailableError,
            response_error=MispResponseError,
        )

    def _where(self, name: str) -> str:
        return f"MISP feed {self.url.rstrip('/')}/{name}"

    async def _read(self, http: RetryingHttp | None, name: str) -> bytes:
        """A feed file's bytes; `_Missing` if there is none, `MispError` on failure."""
        if http is None:
            return await self.run_blocking(lambda: self._read_file(name))
        url = f"{self.url.rstrip('/')}/{name}"
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        result = await http.request("GET", url, self._where(name), headers=headers)
        if result.status in (404, 410):
            raise _Missing(name)
        if result.status != 200:
            raise MispFeedError(f"{self._where(name)}: HTTP {result.status}")
        return result.body

    def _read_file(self, name: str) -> bytes:
        """The file's bytes, at most the cap: counted as read, since `stat` may say 0 (a
        /proc file) or the file may grow; a device or a pipe is refused unread."""
        path = self.directory / name
        cap = self.max_response_bytes
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _Missing(name) from None
        except OSError as exc:
            raise MispFeedError(f"{self._where(name)}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as file:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise MispFeedError(f"{self._where(name)}: not a regular file")
                data = file.read(cap + 1)
            except OSError as exc:
                raise MispFeedError(f"{self._where(name)}: {exc.strerror or exc}") from None
        if len(data) > cap:
            raise MispFeedError(f"{self._where(name)}: over the {cap}-byte cap")
        return data
