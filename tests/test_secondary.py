"""Tests for misp_dns.intel.secondary and zonestore: following a zone, keeping the last good copy.

The primary is a scripted stand-in for `xfr.transfer` (tests/test_xfr.py covers the wire);
time is a `task.Clock`, and "threads" run inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import failure_of, result_of
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.web.resource import Resource

from misp_dns.intel import zonestore
from misp_dns.intel.secondary import ZoneFileSource, ZoneFollower
from misp_dns.intel.xfr import AXFR, IXFR, Delta, Deltas, FullZone, TransferError, UpToDate
from misp_dns.intel.zonedata import Record, ZoneDataError, read_master

ZONE = "rpz.test"


def records(serial: int, *names: str) -> list[Record]:
    lines = [f"$TTL 300\n@ SOA ns hostmaster {serial} 100 10 1000 60\n  NS ns"]
    lines += [f"{name} CNAME ." for name in names]
    return read_master("\n".join(lines) + "\n", ZONE)


def soa(serial: int) -> Record:
    return records(serial)[0]


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(function, *args)


class ScriptedPrimary:
    """Stands in for `xfr.transfer`: records each request, answers from a list."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[Any] = []

    def __call__(self, clock: Any, host: str, port: int, zone: str, **kwargs: Any) -> Any:
        self.requests.append({"host": host, "port": port, "zone": zone, **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


def follower(tmp_path: Path, primary: ScriptedPrimary, clock: Clock | None = None) -> ZoneFollower:
    return ZoneFollower(
        ZONE,
        clock=clock or Clock(),
        state_path=str(tmp_path / "rpz.zone"),
        primary=("192.0.2.1", 53),
        run_in_thread=inline,
        transfer_function=primary,
    )


def names(zone_follower: ZoneFollower) -> set[str]:
    assert zone_follower.zone is not None
    return set(zone_follower.zone.exact)


def test_first_transfer_is_axfr_then_ixfr_on_the_refresh_timer(tmp_path: Path) -> None:
    """With no copy it asks AXFR; after the SOA refresh timer, IXFR with its SOA."""
    clock = Clock()
    primary = ScriptedPrimary()
    primary.answers = [FullZone(tuple(records(1, "a"))), UpToDate(1)]
    zf = follower(tmp_path, primary, clock)
    zf.startService()
    assert primary.requests[0]["qtype"] == AXFR
    assert names(zf) == {"a"}
    clock.advance(99)
    assert len(primary.requests) == 1
    clock.advance(1)
    assert primary.requests[1]["qtype"] == IXFR
    assert primary.requests[1]["soa"] == soa(1)


def test_ixfr_deltas_are_applied(tmp_path: Path) -> None:
    """An incremental IXFR changes the served zone by its deltas."""
    primary = ScriptedPrimary()
    delta = Delta(1, 2, (soa(1), records(1, "a")[2]), (soa(2), records(2, "b")[2]))
    primary.answers = [FullZone(tuple(records(1, "a"))), Deltas((delta,))]
    zf = follower(tmp_path, primary)
    zf.startService()
    zf.notify()
    assert names(zf) == {"b"}
    assert zf.zone is not None and zf.zone.serial == 2
    assert zf.transfers["ixfr"] == 1


def test_notify_checks_at_once_and_during_a_check_once_more(tmp_path: Path) -> None:
    """A NOTIFY starts a check now; one arriving during a check starts another after it."""
    primary = ScriptedPrimary()
    pending: defer.Deferred[Any] = defer.Deferred()
    primary.answers = [FullZone(tuple(records(1, "a")))]
    zf = follower(tmp_path, primary)
    zf.startService()
    primary.answers = [pending, UpToDate(1)]

    def slow(clock: Any, host: str, port: int, zone: str, **kwargs: Any) -> Any:
        primary.requests.append(kwargs)
        answer = primary.answers.pop(0)
        return answer if isinstance(answer, defer.Deferred) else defer.succeed(answer)

    zf.transfer_function = slow
    zf.notify()
    zf.notify()
    assert len(primary.requests) == 2
    pending.callback(UpToDate(1))
    assert len(primary.requests) == 3


@pytest.mark.parametrize(
    "problem",
    [
        TransferError("malformed response: label runs past the end of the data"),
        TransferError("the transfer exceeds 1024 bytes"),
        TransferError("TSIG: bad signature"),
    ],
)
def test_a_failed_transfer_keeps_the_last_good_zone_logs_once_and_backs_off(
    tmp_path: Path, problem: Exception
) -> None:
    """A bad transfer changes nothing served; one line says why; retries wait longer each time."""
    clock = Clock()
    primary = ScriptedPrimary()
    primary.answers = [FullZone(tuple(records(1, "a"))), problem, problem, UpToDate(1)]
    zf = follower(tmp_path, primary, clock)
    zf.startService()
    served = zf.zone
    with capturedLogs() as events:
        zf.notify()
    lines = [formatEvent(e) for e in events]
    assert zf.zone is served
    assert lines == [
        f"rpz zone rpz.test: update from 192.0.2.1:53 failed: {problem}; keeping serial 1;"
        " retrying in 10 s"
    ]
    clock.advance(10)
    assert len(primary.requests) == 3  # the first retry, after the SOA retry timer
    assert zf.failures == 2
    clock.advance(19)
    assert len(primary.requests) == 3  # the second waits twice as long
    clock.advance(1)
    assert len(primary.requests) == 4 and zf.failures == 0


def test_deltas_that_do_not_apply_keep_the_zone_and_ask_axfr_next(tmp_path: Path) -> None:
    """IXFR deltas that do not apply change nothing; the retry asks for the whole zone."""
    clock = Clock()
    primary = ScriptedPrimary()
    wrong = Delta(1, 2, (soa(1), records(1, "missing")[2]), (soa(2),))
    primary.answers = [
        FullZone(tuple(records(1, "a"))),
        Deltas((wrong,)),
        FullZone(tuple(records(2, "c"))),
    ]
    zf = follower(tmp_path, primary, clock)
    zf.startService()
    with capturedLogs() as events:
        zf.notify()
    assert names(zf) == {"a"}
    assert "which the zone does not hold" in formatEvent(events[0])
    clock.advance(10)
    assert primary.requests[2]["qtype"] == AXFR
    assert names(zf) == {"c"}


def test_the_zone_is_saved_and_served_after_a_restart_with_the_primary_down(
    tmp_path: Path,
) -> None:
    """A restart applies the saved copy before (and although) the primary answers."""
    primary = ScriptedPrimary()
    primary.answers = [FullZone(tuple(records(4, "a", "b")))]
    follower(tmp_path, primary).startService()
    down = ScriptedPrimary()
    down.answers = [TransferError("cannot connect: Connection refused")]
    restarted = follower(tmp_path, down)
    ready = restarted.whenReady()
    restarted.startService()
    assert ready.called
    assert names(restarted) == {"a", "b"}
    assert down.requests[0]["qtype"] == IXFR  # it asks for what changed since serial 4


def test_a_corrupt_saved_zone_is_ignored(tmp_path: Path) -> None:
    """A saved copy that does not check out is not served; the primary is asked in full."""
    zonestore.save(tmp_path / "rpz.zone", ZONE, records(4, "a"))
    data = bytearray((tmp_path / "rpz.zone").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "rpz.zone").write_bytes(bytes(data))
    primary = ScriptedPrimary()
    primary.answers = [TransferError("cannot connect")]
    zf = follower(tmp_path, primary)
    with capturedLogs() as events:
        zf.startService()
    assert zf.zone is None
    assert any("checksum mismatch" in formatEvent(e) for e in events)
    assert primary.requests[0]["qtype"] == AXFR


def test_zonestore_round_trip_and_other_zone(tmp_path: Path) -> None:
    """The store gives back the records saved, and nothing for another zone's file."""
    path = tmp_path / "z"
    zonestore.save(path, ZONE, records(3, "x", "y"))
    assert zonestore.load(path, ZONE) == records(3, "x", "y")
    assert zonestore.load(path, "other.test") is None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_zone_file_source_is_read_every_interval(tmp_path: Path) -> None:
    """With a fetch (a zone file or URL) the zone is read whole, every `interval`."""
    clock = Clock()
    served = [records(1, "a"), records(2, "a", "b")]
    zf = ZoneFollower(
        ZONE,
        clock=clock,
        state_path=str(tmp_path / "z"),
        fetch=lambda: defer.succeed(served.pop(0)),
        interval=600,
        run_in_thread=inline,
    )
    zf.startService()
    assert names(zf) == {"a"}
    clock.advance(600)
    assert names(zf) == {"a", "b"}


ZONE_FILE = """$TTL 300
@ SOA ns hostmaster 9 100 10 1000 60
  NS ns
listed.example CNAME .
"""


class ZoneResource(Resource):
    """Serves the zone text at /rpz.zone; anything else is 404."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        if request.path != b"/rpz.zone":
            request.setResponseCode(404)
            return b"not here"
        return ZONE_FILE.encode()


def test_zone_file_source_reads_a_file(tmp_path: Path) -> None:
    """A path (or file:// URL) is read whole into the zone's records."""
    path = tmp_path / "rpz.zone"
    path.write_text(ZONE_FILE)
    for url in (str(path), f"file://{path}"):
        source = ZoneFileSource(url, ZONE, Clock(), 1 << 20)
        records = result_of(source.fetch())
        assert {r.owner for r in records} == {ZONE, f"listed.example.{ZONE}"}


def test_zone_file_source_refuses_oversize_and_non_text_files(tmp_path: Path) -> None:
    """A file over max_bytes, or not UTF-8, fails the read (nothing of it is used)."""
    path = tmp_path / "rpz.zone"
    path.write_text(ZONE_FILE)
    too_big = ZoneFileSource(str(path), ZONE, Clock(), 20)
    assert "over max_zone_bytes" in str(failure_of(too_big.fetch(), ZoneDataError))
    path.write_bytes(b"\xff\xfe" + ZONE_FILE.encode())
    binary = ZoneFileSource(str(path), ZONE, Clock(), 1 << 20)
    assert "not UTF-8" in str(failure_of(binary.fetch(), ZoneDataError))


def test_zone_file_source_reads_a_url_through_the_shared_http_client() -> None:
    """An http(s) URL is fetched with RetryingHttp; a status other than 200 fails."""
    http = StubTreq(ZoneResource())
    good = ZoneFileSource("http://misp.example/rpz.zone", ZONE, Clock(), 1 << 20, http=http)
    records = result_of(good.fetch())
    assert f"listed.example.{ZONE}" in {r.owner for r in records}
    missing = ZoneFileSource("http://misp.example/gone", ZONE, Clock(), 1 << 20, http=http)
    assert "HTTP 404" in str(failure_of(missing.fetch(), ZoneDataError))


def test_a_primary_without_ixfr_is_asked_for_the_whole_zone(tmp_path: Path) -> None:
    """An IXFR answered NOTIMP (or FORMERR) leads to an AXFR at the retry."""
    clock = Clock()
    primary = ScriptedPrimary()
    primary.answers = [
        FullZone(tuple(records(1, "a"))),
        TransferError("the primary answered NOTIMP", 4),
        FullZone(tuple(records(2, "b"))),
    ]
    zf = follower(tmp_path, primary, clock)
    zf.startService()
    zf.notify()
    assert primary.requests[1]["qtype"] == IXFR
    clock.advance(10)
    assert primary.requests[2]["qtype"] == AXFR
    assert names(zf) == {"b"}


class KeyedZoneResource(ZoneResource):
    """Serves the zone only to a request carrying the MISP API key; else 403 echoing it."""

    def render_GET(self, request: Any) -> bytes:
        if request.getHeader("Authorization") != "misp-api-key-0123456789":
            request.setResponseCode(403)
            return b"bad key " + (request.getHeader("Authorization") or "").encode()
        return super().render_GET(request)


def test_zone_url_sends_the_misp_api_key_and_keeps_it_out_of_errors() -> None:
    """With an api_key the request carries it (MISP's restSearch needs it); what the server
    echoes of a key never reaches an error message."""
    http = StubTreq(KeyedZoneResource())
    url = "https://misp.example/rpz.zone"
    keyed = ZoneFileSource(
        url, ZONE, Clock(), 1 << 20, http=http, api_key="misp-api-key-0123456789"
    )
    assert f"listed.example.{ZONE}" in {r.owner for r in result_of(keyed.fetch())}
    wrong = ZoneFileSource(url, ZONE, Clock(), 1 << 20, http=http, api_key="wrong-key-abcdefghij")
    problem = str(failure_of(wrong.fetch(), ZoneDataError))
    assert "HTTP 403" in problem and "wrong-key" not in problem
    assert "wrong-key" not in repr(wrong)
