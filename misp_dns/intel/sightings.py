"""Blocks posted back to MISP as sightings (`sightings = true` on a `misp` policy).

MISP analysts want to know which of their indicators fire in their network; a sighting on
the attribute says so. `SightingsReporter.sight(value, attribute_uuid)` notes a block; it
is called for every blocked query (and every query a policy in monitor mode would have
blocked), off the answer's own work, and only touches a dict: no I/O, no Deferred.

- **Deduplicated per attribute per interval.** The first block of an attribute (keyed by
  its UUID, or its value when MISP gave none) in a `sightings_interval` is noted with its
  time; the later ones in the same interval are not.
- **Batched.** At the end of each interval the noted values go to MISP in
  `POST {server_url}/sightings/add`, up to `BATCH_SIZE` distinct values per request:

      {"values": ["evil.example", ...], "type": "0", "source": "misp-dns",
       "timestamp": "1700000000"}

  type 0 is a sighting (1 a false positive, 2 an expiration); `timestamp` is when the
  earliest of the batch's blocks happened. MISP records a sighting on every attribute
  holding one of the values that the key's user can see (MISP 2.5's SightingsController
  and `Sighting::saveSightings`), as MISP's own "sighting by value" does.
- **Bounded.** At most `sightings_max_pending` attributes wait (noted, queued or being
  sent); a block beyond that is not noted, and is counted in `dropped`.
- **Retried.** A request is sent with `misp_dns.http.RetryingHttp`: connection errors,
  timeouts, 408, 429 (honouring `Retry-After`) and 5xx are retried with backoff and jitter;
  after the last attempt, or on any other refusal (a 403 for the key or the sighting
  permission, MISP's 200 `{"message": "Could not add the Sighting. ..."}` when no attribute
  holds the values), its sightings are counted in `failed` and one warning says why.
  Requests go one at a time, so a slow MISP holds back sightings, never answers.
- **Secret.** The API key is sent in the `Authorization` header only; whatever MISP echoes
  is cleaned of it before a log line or an error is written.

`sent`, `failed`, `dropped` and `pending` are what `/metrics` shows
(`misp_dns_sightings_*`). On stop, what is noted is sent at once, waiting at most
`STOP_GRACE` seconds.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from misp_dns.http import USER_AGENT, FetchError, HttpResult, RetryingHttp, status_message

if TYPE_CHECKING:
    from misp_dns.intel.misp_options import MispOptions

__all__ = ["BATCH_SIZE", "SIGHTINGS_PATH", "STOP_GRACE", "SightingsReporter", "sightings_body"]

SIGHTINGS_PATH = "/sightings/add"
#: Distinct values per request: MISP turns each into an SQL condition, so a request stays
#: well below what a MISP behind a proxy with a 1 MiB body limit takes.
BATCH_SIZE = 500
#: Seconds a stopping server waits for the last sightings to reach MISP.
STOP_GRACE = 5.0
#: MISP's sighting type for "seen" (1 is a false positive, 2 an expiration).
SIGHTING = "0"


@attrs.frozen
class _Noted:
    """One attribute's first block in the current interval."""

    value: str
    when: float


def sightings_body(values: list[str], source: str, when: float) -> dict[str, Any]:
    """The JSON body of one `/sightings/add` request for `values` first blocked at `when`."""
    return {"values": values, "type": SIGHTING, "source": source, "timestamp": str(int(when))}


class SightingsReporter(Service):
    """Notes blocks and posts them to MISP as sightings, once per attribute per interval."""

    log = Logger()

    def __init__(
        self,
        server_url: str,
        api_key: str,
        http: Any,
        clock: IReactorTime,
        *,
        source: str = "misp-dns",
        interval: float = 600.0,
        max_pending: int = 10_000,
        timeout: float = 60.0,
        attempts: int = 3,
        backoff: float = 1.0,
        max_retry_delay: float = 60.0,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.url = server_url.rstrip("/") + SIGHTINGS_PATH
        self._api_key = api_key
        self.clock = clock
        self.source = source.strip()
        self.interval = interval
        self.max_pending = max_pending
        self._http = RetryingHttp(
            http=http,
            clock=clock,
            timeout=timeout,
            max_bytes=1024 * 1024,
            attempts=attempts,
            backoff=backoff,
            max_delay=max_retry_delay,
            random=random,
            redact=self._redact,
        )
        #: Sightings MISP accepted, refused or never got, and blocks not noted (over the bound).
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        #: What `RetryingHttp` counts: requests sent (every attempt) and retries.
        self.requests = 0
        self.retries = 0
        self._noted: dict[str, _Noted] = {}
        self._queued: deque[list[_Noted]] = deque()
        self._queued_count = 0
        self._sending: defer.Deferred[str | None] | None = None
        self._sending_count = 0
        self._idle: list[defer.Deferred[None]] = []
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock
        self._reported_drops = 0

    @classmethod
    def from_options(
        cls, options: MispOptions, api_key: str, http: Any, clock: IReactorTime
    ) -> SightingsReporter:
        """The reporter of a `[[policy]] type = "misp"` table with `sightings = true`."""
        return cls(
            options.server_url,
            api_key,
            http,
            clock,
            source=options.sightings_source,
            interval=options.sightings_interval,
            max_pending=options.sightings_max_pending,
            timeout=options.request_timeout,
        )

    def __repr__(self) -> str:
        return f"<SightingsReporter to {self.url}, source {self.source!r}>"

    @property
    def pending(self) -> int:
        """Attributes noted, and values queued or being sent (attributes sharing a value
        leave as one)."""
        return len(self._noted) + self._queued_count + self._sending_count

    def sight(self, value: str, attribute_uuid: str = "") -> None:
        """Note a block of `value` (MISP attribute `attribute_uuid`, if known); no I/O."""
        key = attribute_uuid or value
        noted = self._noted
        if key in noted:
            return
        if len(noted) + self._queued_count + self._sending_count >= self.max_pending:
            self.dropped += 1
            return
        noted[key] = _Noted(value, self.clock.seconds())

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda failure: self.log.failure("sightings: the interval timer failed", failure)
        )

    def stopService(self) -> defer.Deferred[None] | None:
        """Send what is noted now; fire when it is sent, or after `STOP_GRACE` seconds."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.flush()
        if self._sending is None:
            return None
        waiting: defer.Deferred[None] = defer.Deferred()
        self._idle.append(waiting)
        timer: IDelayedCall = self.clock.callLater(STOP_GRACE, self._give_up)

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return waiting.addBoth(stop_timer)

    def flush(self) -> None:
        """End the interval: queue the noted values in batches and send them."""
        self._report_drops()
        if not self._noted:
            return
        noted, self._noted = self._noted, {}
        first: dict[str, _Noted] = {}
        for item in noted.values():
            earlier = first.get(item.value)
            if earlier is None or item.when < earlier.when:
                first[item.value] = item
        distinct = list(first.values())
        for start in range(0, len(distinct), BATCH_SIZE):
            batch = distinct[start : start + BATCH_SIZE]
            self._queued.append(batch)
            self._queued_count += len(batch)
        self._send_next()

    def _send_next(self) -> None:
        if self._sending is not None or not self._queued:
            return
        batch = self._queued.popleft()
        self._queued_count -= len(batch)
        self._sending_count = len(batch)
        sending = defer.Deferred.fromCoroutine(self._post(batch))
        self._sending = sending
        sending.addBoth(self._sent, sending, len(batch))

    async def _post(self, batch: list[_Noted]) -> str | None:
        """Send one batch; None when MISP recorded it, else why not (the key redacted)."""
        values = [item.value for item in batch]
        when = min(item.when for item in batch)
        body = json.dumps(sightings_body(values, self.source, when)).encode("utf-8")
        what = f"MISP sightings {self.url}"
        try:
            result = await self._http.request(
                "POST", self.url, what, headers=self._headers(), body=body, stats=self
            )
        except FetchError as problem:
            return self._redact(str(problem))
        refusal = self._refusal(result)
        return None if refusal is None else f"{what}: {refusal}"

    def _sent(self, outcome: str | Failure | None, sending: object, count: int) -> None:
        if sending is not self._sending:
            return  # given up on when the server stopped, and counted then
        self._sending = None
        self._sending_count = 0
        if isinstance(outcome, Failure):
            self.failed += count
            self.log.failure("sightings: sending failed", outcome)
        elif outcome is None:
            self.sent += count
        else:
            self._failed(count, outcome)
        self._send_next()
        if self._sending is None:
            self._now_idle()

    def _now_idle(self) -> None:
        idle, self._idle = self._idle, []
        for waiting in idle:
            waiting.callback(None)

    def _give_up(self) -> None:
        """Stopping took too long: what is still queued or being sent is not sent."""
        lost = self._queued_count + self._sending_count
        self._queued.clear()
        self._queued_count = self._sending_count = 0
        self._sending = None
        self.failed += lost
        self.log.warn("sightings: {count} not sent to MISP before the server stopped", count=lost)
        self._now_idle()

    def _failed(self, count: int, reason: str) -> None:
        self.failed += count
        self.log.warn(
            "{count} sightings not recorded: {reason}", count=count, reason=self._redact(reason)
        )

    def _refusal(self, result: HttpResult) -> str | None:
        """None when MISP recorded the sightings, else why not (the key redacted)."""
        status = result.status
        if status in (401, 403):
            return f"HTTP {status}, MISP refused the key or its sighting permission: " + (
                status_message(result, self._redact)
            )
        if status != 200:
            return f"HTTP {status}: {status_message(result, self._redact)}"
        try:
            payload = json.loads(result.body)
        except (ValueError, UnicodeDecodeError):
            return "the answer is not JSON: " + status_message(result, self._redact)
        if isinstance(payload, dict) and isinstance(payload.get("Sighting"), dict):
            return None
        return status_message(result, self._redact)

    def _report_drops(self) -> None:
        grown = self.dropped - self._reported_drops
        if grown:
            self._reported_drops = self.dropped
            self.log.warn(
                "sightings: {count} blocks not noted, {pending} already waiting"
                " (sightings_max_pending = {limit})",
                count=grown,
                pending=self.pending,
                limit=self.max_pending,
            )

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": self._api_key,
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<api key>") if self._api_key else text
