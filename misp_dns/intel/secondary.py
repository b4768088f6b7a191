"""Keeps a copy of a zone current: from disk at start, then from its primary or a zone file.

`ZoneFollower` is a Twisted service serving one `RpzZone` (`zone`, None before the first).

- With a primary (`ZoneFollower(primary=...)`), it asks by IXFR over TCP (AXFR while it has
  no copy, or after an IXFR whose deltas did not apply) when the zone's SOA refresh timer
  runs out, at once when the primary sends a NOTIFY (`notify`), and after a failure when
  the SOA retry timer, doubling per failure up to the refresh timer, runs out.
- With a `fetch` (a zone file or URL), it reads the whole zone every `interval`.

Every new copy is built into an `RpzZone` as a whole and replaces the served one in one
assignment, then is saved to `state_path` (atomically, `zonestore`); a copy that cannot be
read (a malformed or oversize transfer, a bad TSIG, deltas that do not apply, a bad zone
file) is never served: the last good copy stays, one log line says why, and the check is
retried with backoff. A copy past its SOA expire timer without a successful check is still
applied (a protective resolver fails closed), with a warning on each failed check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from misp_dns.backoff import backoff_delay
from misp_dns.http import RetryingHttp
from misp_dns.intel import zonestore
from misp_dns.intel.readiness import Readiness
from misp_dns.intel.rpz import RpzZone
from misp_dns.intel.xfr import (
    AXFR,
    IXFR,
    Deltas,
    FullZone,
    Result,
    TransferError,
    UpToDate,
    apply_deltas,
    transfer,
)
from misp_dns.intel.zonedata import Record, ZoneDataError, read_master
from misp_dns.redact import Redactor

__all__ = ["ZoneFileSource", "ZoneFollower", "state_file"]

RunInThread = Callable[..., defer.Deferred[Any]]
Fetch = Callable[[], defer.Deferred[list[Record]]]
Transfer = Callable[..., defer.Deferred[Result]]

#: RCODEs a primary that does not do IXFR answers it with (FORMERR, NOTIMP): AXFR next.
_NO_IXFR = (1, 4)
#: Bounds on the SOA timers a primary may set (seconds), as BIND's min/max-refresh-time.
MIN_REFRESH = 1.0
MAX_REFRESH = 86400.0


class ZoneFollower(Service):
    """Follows one zone (see the module docstring).

    What status reads: `zone` (the served `RpzZone` or None), `generation` (grows with
    every zone served), `failures` (in a row),
    `last_success` (clock time), `last_error`, `transfers` (completed, by kind).
    """

    log = Logger()

    def __init__(
        self,
        zone_name: str,
        *,
        clock: Any,
        state_path: str,
        primary: tuple[str, int] | None = None,
        fetch: Fetch | None = None,
        interval: float = 3600.0,
        key: Any = None,
        transfer_timeout: float = 60.0,
        max_bytes: int = 256 * 1024 * 1024,
        max_records: int = 5_000_000,
        run_in_thread: RunInThread = deferToThread,
        transfer_function: Transfer = transfer,
    ) -> None:
        if (primary is None) == (fetch is None):
            raise ValueError("a ZoneFollower needs a primary or a fetch, not both")
        self.zone_name = zone_name
        self.clock = clock
        self.state_path = state_path
        self.primary = primary
        self.fetch = fetch
        self.interval = interval
        self.key = key
        self.transfer_timeout = transfer_timeout
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.run_in_thread = run_in_thread
        self.transfer_function = transfer_function
        self.zone: RpzZone | None = None
        self.generation = 0
        self.failures = 0
        self.last_success: float | None = None
        self.last_error = ""
        self.transfers: dict[str, int] = {"axfr": 0, "ixfr": 0, "up-to-date": 0, "fetch": 0}
        self._need_axfr = True
        self._how = ""  # how the last copy came, for its log line
        self._running: defer.Deferred[None] | None = None
        self._again = False
        self._timer: IDelayedCall | None = None
        self._readiness = Readiness()

    @property
    def where(self) -> str:
        """The primary as host:port, or "its zone file" (a URL may hold a secret)."""
        if self.primary is None:
            return "its zone file"
        return f"{self.primary[0]}:{self.primary[1]}"

    # --- readiness ---------------------------------------------------------------------

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once a copy is served (from disk or the primary) or the first check failed."""
        return self._readiness.wait()

    # --- the service -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        loading = self.run_in_thread(self._load_saved)
        loading.addCallback(self._loaded)
        loading.addErrback(self._load_failed)
        loading.addBoth(lambda _: self.check_now())

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # A transfer in progress is not waited for (it may take transfer_timeout): what it
        # brings is still applied, and nothing more is scheduled once stopped.
        return None

    def _load_saved(self) -> RpzZone | None:
        records = zonestore.load(self.state_path, self.zone_name)
        if records is None:
            return None
        return RpzZone.from_records(self.zone_name, records)

    def _loaded(self, zone: RpzZone | None) -> None:
        if zone is None or self.zone is not None:
            return
        self.zone = zone
        self.generation += 1
        self._need_axfr = self.primary is None
        self.log.info(
            "rpz zone {zone}: serial {serial} ({rules} triggers) loaded from {path}",
            zone=self.zone_name,
            serial=zone.serial,
            rules=zone.rule_count,
            path=self.state_path,
        )
        self._readiness.set()

    def _load_failed(self, failure: Failure) -> None:
        self.log.warn(
            "rpz zone {zone}: the saved copy {path} is unusable ({why}); waiting for {where}",
            zone=self.zone_name,
            path=self.state_path,
            why=failure.getErrorMessage(),
            where=self.where,
        )

    # --- NOTIFY and the schedule -----------------------------------------------------------

    def notify(self) -> None:
        """The primary says the zone changed: check now (or right after the running check)."""
        if self.running:
            self.check_now()

    def check_now(self) -> None:
        """Start a check unless one runs; if one runs, check again once it is over."""
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._running = defer.ensureDeferred(self._check())
        self._running.addBoth(self._check_over)

    def _check_over(self, _: object) -> None:
        self._running = None
        self._readiness.set()
        if self._again:
            self._again = False
            self.check_now()

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self.check_now)

    def _refresh_delay(self) -> float:
        if self.primary is None or self.zone is None:
            return self.interval
        return min(max(float(self.zone.refresh), MIN_REFRESH), MAX_REFRESH)

    def _retry_delay(self) -> float:
        zone = self.zone
        retry = float(zone.retry) if zone is not None and self.primary else min(self.interval, 60.0)
        retry = min(max(retry, MIN_REFRESH), MAX_REFRESH)
        return backoff_delay(self.failures, retry, max(retry, self._refresh_delay()))

    # --- one check -------------------------------------------------------------------------

    async def _check(self) -> None:
        try:
            zone = await self._next_zone()
        except Exception as problem:
            self._failed(problem)
            return
        self.failures = 0
        self.last_error = ""
        self.last_success = self.clock.seconds()
        if zone is not None:
            await self._install(zone)
        self._schedule(self._refresh_delay())

    async def _next_zone(self) -> RpzZone | None:
        """The new copy of the zone, or None when the served one is current."""
        if self.fetch is not None:
            records = await self.fetch()
            self.transfers["fetch"] += 1
            self._how = ""
            zone: RpzZone = await self.run_in_thread(RpzZone.from_records, self.zone_name, records)
            if self.zone is not None and zone.records == self.zone.records:
                return None
            return zone
        assert self.primary is not None
        current = self.zone
        use_ixfr = current is not None and not self._need_axfr
        try:
            result = await self._transfer(current, use_ixfr)
        except TransferError as problem:
            if use_ixfr and problem.rcode in _NO_IXFR:
                self._need_axfr = True  # a primary without IXFR: ask for the whole zone
            raise
        return await self._apply(result, current)

    async def _transfer(self, current: RpzZone | None, use_ixfr: bool) -> Result:
        assert self.primary is not None
        return await self.transfer_function(
            self.clock,
            self.primary[0],
            self.primary[1],
            self.zone_name,
            qtype=IXFR if use_ixfr else AXFR,
            soa=current.soa if current is not None and use_ixfr else None,
            key=self.key,
            timeout=self.transfer_timeout,
            max_bytes=self.max_bytes,
            max_records=self.max_records,
        )

    async def _apply(self, result: Result, current: RpzZone | None) -> RpzZone | None:
        if isinstance(result, UpToDate):
            self.transfers["up-to-date"] += 1
            return None
        if isinstance(result, FullZone):
            self.transfers["axfr"] += 1
            self._how = " by AXFR"
            zone: RpzZone = await self.run_in_thread(
                RpzZone.from_records, self.zone_name, result.records
            )
            self._need_axfr = False
            return zone
        assert isinstance(result, Deltas) and current is not None
        try:
            records = await self.run_in_thread(
                apply_deltas, current.records, current.serial, result.changes
            )
        except ZoneDataError:
            self._need_axfr = True  # the next try asks for the whole zone
            raise
        self.transfers["ixfr"] += 1
        self._how = (
            f" by IXFR ({len(result.changes)} {'delta' if len(result.changes) == 1 else 'deltas'})"
        )
        built: RpzZone = await self.run_in_thread(RpzZone.from_records, self.zone_name, records)
        return built

    async def _install(self, zone: RpzZone) -> None:
        previous = self.zone
        self.zone = zone
        self.generation += 1
        self.log.info(
            "rpz zone {zone}: serial {serial} from {where}{how} ({rules} triggers{skipped})",
            zone=self.zone_name,
            serial=zone.serial,
            where=self.where,
            how=self._how,
            rules=zone.rule_count,
            skipped=_skipped_text(zone),
        )
        if previous is not None and previous.records == zone.records:
            return
        try:
            await self.run_in_thread(zonestore.save, self.state_path, self.zone_name, zone.records)
        except OSError as problem:
            self.log.warn(
                "rpz zone {zone}: cannot save it to {path}: {why}",
                zone=self.zone_name,
                path=self.state_path,
                why=problem.strerror or problem,
            )

    def _failed(self, problem: Exception) -> None:
        self.failures += 1
        self.last_error = _reason(problem)
        delay = self._retry_delay()
        kept = "no copy yet" if self.zone is None else f"keeping serial {self.zone.serial}"
        self.log.warn(
            "rpz zone {zone}: update from {where} failed: {why}; {kept}; retrying in {delay:.0f} s",
            zone=self.zone_name,
            where=self.where,
            why=self.last_error,
            kept=kept,
            delay=delay,
        )
        zone = self.zone
        if (
            zone is not None
            and self.primary is not None
            and self.last_success is not None
            and self.clock.seconds() - self.last_success > zone.expire
        ):
            self.log.warn(
                "rpz zone {zone}: past its SOA expire timer ({expire} s) without a successful"
                " check; still applying serial {serial}",
                zone=self.zone_name,
                expire=zone.expire,
                serial=zone.serial,
            )
        self._schedule(delay)


def _reason(problem: Exception) -> str:
    if isinstance(problem, (TransferError, ZoneDataError)):
        return str(problem)
    if isinstance(problem, OSError) and problem.strerror:
        return f"{problem.strerror}: {problem.filename}" if problem.filename else problem.strerror
    return f"{type(problem).__name__}: {problem}"


def _skipped_text(zone: RpzZone) -> str:
    if not zone.skipped:
        return ""
    parts = ", ".join(f"{count} {kind}" for kind, count in sorted(zone.skipped.items()))
    return f"; not applied: {parts}"


def state_file(state_dir: str, zone: str) -> str:
    """Where the copy of `zone` is kept in the state folder."""
    return os.path.join(state_dir, f"rpz-{zone or 'root'}.zone")


@attrs.define
class ZoneFileSource:
    """Reads a whole zone from a zone file (a path or `file://` URL) or an `http(s)://` URL.

    `fetch()` fires with the zone's records, or fails with `ZoneDataError` (not UTF-8, a
    bad record, over `max_bytes`, an HTTP status other than 200) or the shared HTTP
    client's errors (unreachable after its retries). `http` has treq's API; `run_blocking`
    runs file reading and parsing (the policy passes the reactor's thread pool). With an
    `api_key` (MISP's), requests carry it as `Authorization`, and it is kept out of every
    message.
    """

    url: str
    zone: str
    clock: Any
    max_bytes: int
    http: Any = None
    api_key: str = attrs.field(default="", repr=False)
    timeout: float = 60.0
    run_blocking: Callable[[Callable[[], Any]], defer.Deferred[Any]] = defer.maybeDeferred

    @property
    def is_remote(self) -> bool:
        """True for an http(s) URL."""
        return self.url.lower().startswith(("http://", "https://"))

    def fetch(self) -> defer.Deferred[list[Record]]:
        """The zone's records (see the class docstring)."""
        if self.is_remote:
            return defer.ensureDeferred(self._fetch_remote())
        path = Path(self.url.removeprefix("file://")).expanduser()
        return self.run_blocking(lambda: self._read_file(path))

    async def _fetch_remote(self) -> list[Record]:
        http = RetryingHttp(
            http=self.http,
            clock=self.clock,
            timeout=self.timeout,
            max_bytes=self.max_bytes,
            follow_redirects=True,
            redact=Redactor(self.api_key, "<api key>") if self.api_key else str,
        )
        headers = {"Accept": "text/plain, */*", "User-Agent": "misp-dns"}
        if self.api_key:
            headers["Authorization"] = self.api_key
        result = await http.request(
            "GET", self.url, f"rpz zone {self.zone} at {self.url}", headers=headers
        )
        if result.status != 200:
            raise ZoneDataError(f"{self.url}: HTTP {result.status}")
        body = result.body
        records: list[Record] = await self.run_blocking(lambda: self._parse(body))
        return records

    def _read_file(self, path: Path) -> list[Record]:
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ZoneDataError(f"{path}: {size} bytes, over max_zone_bytes ({self.max_bytes})")
            return self._parse(path.read_bytes())
        except OSError as problem:
            raise ZoneDataError(f"{path}: {problem.strerror or problem}") from None

    def _parse(self, data: bytes) -> list[Record]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ZoneDataError(f"{self.url}: not UTF-8 text") from None
        return read_master(text, self.zone)
