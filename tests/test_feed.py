"""Reading a MISP feed from a directory or a URL: whole, incrementally, and despite faults.

The small feed in tests/fixtures/misp-feed-small is three unmodified events of the real
Infoblox feed plus a manifest entry whose file is missing, as in the real one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import SHARED_DATA, failure_of, result_of, unless_present
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from misp_dns.intel.blocking import thread_runner
from misp_dns.intel.errors import MispError, MispUnavailableError
from misp_dns.intel.feed import MispFeedError, MispFeedSource
from misp_dns.intel.misp_options import MispFeedOptions
from misp_dns.intel.warninglist import WarninglistFilter, load_warninglist
from misp_dns.interfaces import IIndicatorSource
from misp_dns.testing import FakeFeed, Fault
from misp_dns.values import Duration

SMALL = Path(__file__).resolve().parent / "fixtures" / "misp-feed-small"
FEED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "misp-feed-infoblox"
URL = "https://feeds.test/misp/infoblox"
BEACON = "dad88707-beb8-4a14-94e2-5ffecf5a5f85"  # c2_beacon_20230414_iocs, 6 domains
DECOY = "6c1c6c4f-5cde-474f-bb69-8e5b8b041f81"  # 7 domains, 5 ip-dst, 5 sha256
MISSING = "3493a2df-8c62-451b-99bf-312292104994"
WARNINGLISTS = SHARED_DATA / "warninglists"
TRANCO = "Top 10K most-used sites from Tranco"
DYNAMIC_DNS = "List of known dynamic DNS domains"


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    """A writable copy of the small feed."""
    target = tmp_path / "feed"
    shutil.copytree(SMALL, target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def bump(directory: Path, event_uuid: str, change: Any = None) -> None:
    """Change an event (via `change(event)`) and raise its manifest timestamp, as MISP would."""
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[event_uuid]["timestamp"] += 60
    manifest_path.write_text(json.dumps(manifest))
    if change is not None:
        event_path = directory / f"{event_uuid}.json"
        document = json.loads(event_path.read_text())
        change(document["Event"])
        event_path.write_text(json.dumps(document))


def by_event(indicators: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for indicator in indicators:
        counts[indicator.event_uuid] = counts.get(indicator.event_uuid, 0) + 1
    return counts


# -- a directory -------------------------------------------------------------------------


def test_directory_feed_yields_every_blocking_attribute(feed_dir: Path) -> None:
    """Domains of every event arrive with their event and times; other types are counted."""
    source = MispFeedSource(str(feed_dir))
    found = result_of(source.fetch())
    assert len(found) == 22
    assert by_event(found) == {
        BEACON: 6,
        "24e799ca-aad8-4244-8005-90b3ceb44540": 9,
        DECOY: 7,
    }
    first = next(i for i in found if i.event_uuid == BEACON)
    raw = json.loads((feed_dir / f"{BEACON}.json").read_text())["Event"]
    attribute = raw["Attribute"][0]
    assert first.value == attribute["value"]
    assert first.type == "domain" and first.to_ids and not first.deleted
    assert first.timestamp == int(attribute["timestamp"])
    assert first.first_seen is not None and first.last_seen is None
    assert first.event_info == "c2_beacon_20230414_iocs" and first.event_id == ""
    assert first.attribute_uuid == attribute["uuid"]
    stats = source.last_stats
    assert (stats.events, stats.events_read, stats.events_missing) == (4, 3, 1)
    assert (stats.other_types, stats.skipped) == (10, 0)


def test_feed_source_provides_the_indicator_source_interface(feed_dir: Path) -> None:
    """MispFeedSource plugs into the updater as an IIndicatorSource."""
    assert verifyObject(IIndicatorSource, MispFeedSource(str(feed_dir)))


def test_unchanged_events_are_not_read_again(feed_dir: Path) -> None:
    """A second fetch with the same manifest reuses every event and gives the same result."""
    source = MispFeedSource(str(feed_dir))
    first = result_of(source.fetch())
    (feed_dir / f"{BEACON}.json").write_text("this would fail if it were read")
    assert result_of(source.fetch()) == first
    assert (source.last_stats.events_read, source.last_stats.events_unchanged) == (0, 3)


def test_a_changed_event_is_read_again(feed_dir: Path) -> None:
    """Raising an event's manifest timestamp re-reads that event alone and takes its changes."""
    source = MispFeedSource(str(feed_dir))
    result_of(source.fetch())

    def add_domain(event: dict[str, Any]) -> None:
        event["Attribute"].append(dict(event["Attribute"][0], value="new.example", uuid="u"))

    bump(feed_dir, BEACON, add_domain)
    found = result_of(source.fetch())
    assert "new.example" in {i.value for i in found}
    assert (source.last_stats.events_read, source.last_stats.events_unchanged) == (1, 2)


def test_an_event_gone_from_the_manifest_is_dropped(feed_dir: Path) -> None:
    """Indicators of an event no longer listed disappear at the next fetch."""
    source = MispFeedSource(str(feed_dir))
    result_of(source.fetch())
    manifest = json.loads((feed_dir / "manifest.json").read_text())
    del manifest[BEACON]
    (feed_dir / "manifest.json").write_text(json.dumps(manifest))
    assert BEACON not in by_event(result_of(source.fetch()))


def test_missing_event_files_are_logged_once_and_counted(feed_dir: Path) -> None:
    """A manifest entry without a file is counted every time but logged only once."""
    source = MispFeedSource(str(feed_dir))
    with capturedLogs() as events:
        result_of(source.fetch())
        result_of(source.fetch())
    missing = [e for e in events if "has no file" in e.get("log_format", "")]
    assert [e["uuid"] for e in missing] == [MISSING]
    assert source.last_stats.events_missing == 1


def test_a_broken_event_keeps_its_previous_version(feed_dir: Path) -> None:
    """An event file that turns to garbage is counted as failed; its last good indicators stay."""
    source = MispFeedSource(str(feed_dir))
    result_of(source.fetch())
    bump(feed_dir, BEACON)
    (feed_dir / f"{BEACON}.json").write_text('{"Event": ')
    found = result_of(source.fetch())
    assert by_event(found)[BEACON] == 6
    assert source.last_stats.events_failed == 1


def test_a_broken_event_on_first_read_is_skipped(feed_dir: Path) -> None:
    """A malformed event never read before is skipped; the other events load."""
    (feed_dir / f"{DECOY}.json").write_text('{"Event": {"Attribute": {}}}')
    source = MispFeedSource(str(feed_dir))
    found = result_of(source.fetch())
    assert DECOY not in by_event(found) and len(found) == 15
    assert source.last_stats.events_failed == 1


def test_object_attributes_count_too(feed_dir: Path) -> None:
    """Attributes inside an event's Objects (as in MISP's domain-ip object) are read."""

    def add_object(event: dict[str, Any]) -> None:
        event["Object"] = [
            {"name": "domain-ip", "Attribute": [{"type": "domain", "value": "obj.example"}]}
        ]

    bump(feed_dir, BEACON, add_object)
    found = result_of(MispFeedSource(str(feed_dir)).fetch())
    assert "obj.example" in {i.value for i in found}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [(None, "no such file"), ("{not json", "not JSON"), ("[]", "expected an object")],
)
def test_an_unusable_manifest_fails_the_fetch(
    feed_dir: Path, manifest: str | None, message: str
) -> None:
    """Without a readable manifest object the fetch fails (the last good snapshot stays)."""
    if manifest is None:
        (feed_dir / "manifest.json").unlink()
    else:
        (feed_dir / "manifest.json").write_text(manifest)
    error = failure_of(MispFeedSource(str(feed_dir)).fetch(), MispFeedError)
    assert message in str(error) and "manifest.json" in str(error)


def test_manifest_keys_must_be_uuids(feed_dir: Path, tmp_path: Path) -> None:
    """A manifest key that is not a UUID is skipped, so no file outside the feed is read."""
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"Event": {"Attribute": [{"type": "domain", "value": "x"}]}}))
    manifest = json.loads((feed_dir / "manifest.json").read_text())
    manifest["../secret"] = {"timestamp": 1}
    manifest[BEACON + "x"] = {"timestamp": 1}
    (feed_dir / "manifest.json").write_text(json.dumps(manifest))
    source = MispFeedSource(str(feed_dir))
    assert "x" not in {i.value for i in result_of(source.fetch())}
    assert source.last_stats.manifest_skipped == 2


def _objects_first(event: dict[str, Any]) -> dict[str, Any]:
    attributes = event.pop("Attribute")
    half = len(attributes) // 2
    return {
        "Object": [{"Attribute": attributes[:half]}, {"name": "broken"}],
        **event,
        "Attribute": attributes[half:],
    }


def _context_last(event: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in event.items() if k not in ("uuid", "info")},
        "info": event["info"],
        "uuid": event["uuid"],
    }


@pytest.mark.parametrize(
    ("layout", "indent"),
    [(lambda e: e, None), (lambda e: e, 2), (_objects_first, None), (_context_last, None)],
    ids=["as-written", "indented", "objects-first", "uuid-and-info-last"],
)
def test_every_layout_of_an_event_gives_what_a_whole_decode_gives(
    feed_dir: Path, layout: Any, indent: int | None
) -> None:
    """Events are read one attribute at a time, or whole when their layout needs it; the
    indicators and counts are the same either way (UTF-16 files are always read whole)."""
    events = [p for p in feed_dir.glob("*.json") if p.name != "manifest.json"]
    found = {}
    for encoding in ("utf-8", "utf-16"):
        for path in events:
            document = json.loads(SMALL.joinpath(path.name).read_text())
            document["Event"] = layout(document["Event"])
            path.write_bytes(json.dumps(document, indent=indent).encode(encoding))
        source = MispFeedSource(str(feed_dir))
        indicators = result_of(source.fetch())
        stats = source.last_stats
        found[encoding] = (indicators, stats.attributes, stats.malformed)
    assert len(found["utf-8"][0]) == 22
    assert found["utf-8"] == found["utf-16"]


def _add_well_known_names(directory: Path) -> None:
    """Put two Tranco names and a dynamic DNS name among BEACON's domains."""

    def add(event: dict[str, Any]) -> None:
        template = event["Attribute"][0]
        for index, value in enumerate(["google.com", "mail.google.com", "c2.ddns.net"]):
            event["Attribute"].append(dict(template, value=value, uuid=f"u{index}"))

    bump(directory, BEACON, add)


@unless_present(WARNINGLISTS, "the real MISP warninglists in ../shared/data")
def test_indicators_on_warninglists_are_dropped_and_counted_by_list(feed_dir: Path) -> None:
    """With the real dynamic DNS and Tranco lists, their names leave the feed's indicators
    (the real feed itself lists cbox4.ignorelist.com, a dynamic DNS name, in two events), every
    fetch counts them under the first list holding them, unchanged events too, and logs one
    line naming each list with its count."""
    _add_well_known_names(feed_dir)
    lists = tuple(
        load_warninglist(WARNINGLISTS / f"{n}.json") for n in ("dynamic-dns", "tranco10k")
    )
    source = MispFeedSource(str(feed_dir), warninglists=WarninglistFilter(lists))
    with capturedLogs() as events:
        found = [i.value for i in result_of(source.fetch())]
    assert len(found) == 25 - 5
    assert not set(found) & {"google.com", "mail.google.com", "c2.ddns.net", "cbox4.ignorelist.com"}
    counts = {DYNAMIC_DNS: 3, TRANCO: 2}
    assert source.last_stats.warninglisted == counts
    [line] = [e for e in events if "warninglist" in e["log_format"]]
    assert line["warninglisted"] == counts
    text = f"5 indicators dropped for being on a warninglist ({DYNAMIC_DNS}: 3, {TRANCO}: 2)"
    assert text in formatEvent(line)
    result_of(source.fetch())
    assert source.last_stats.events_unchanged == 3
    assert source.last_stats.warninglisted == counts


@unless_present(WARNINGLISTS, "the real MISP warninglists in ../shared/data")
def test_from_options_reads_the_warninglists(feed_dir: Path) -> None:
    """`warninglists = [paths]` in a misp-feed table drops what the lists hold."""
    _add_well_known_names(feed_dir)
    tranco = str(WARNINGLISTS / "tranco10k.json")
    source = MispFeedSource.from_options(
        MispFeedOptions(url=str(feed_dir), warninglists=(tranco,)), Clock()
    )
    found = {i.value for i in result_of(source.fetch())}
    assert not found & {"google.com", "mail.google.com"}
    assert "cbox4.ignorelist.com" in found
    assert source.last_stats.warninglisted == {TRANCO: 3}


def test_without_warninglists_nothing_is_dropped_or_logged_for_them(feed_dir: Path) -> None:
    """No warninglists: the well-known names stay, and no warninglist line is logged."""
    _add_well_known_names(feed_dir)
    source = MispFeedSource(str(feed_dir))
    with capturedLogs() as events:
        found = {i.value for i in result_of(source.fetch())}
    assert {"google.com", "c2.ddns.net", "cbox4.ignorelist.com"} <= found
    assert source.last_stats.warninglisted == {}
    assert not [e for e in events if "warninglist" in e["log_format"]]


def test_from_options_for_a_directory(feed_dir: Path) -> None:
    """A misp-feed table with a directory builds a source that needs no HTTP client."""
    source = MispFeedSource.from_options(MispFeedOptions(url=str(feed_dir)), Clock())
    assert len(result_of(source.fetch())) == 22


def test_a_feed_with_response_ips_hands_on_its_address_attributes(feed_dir: Path) -> None:
    """With `block_response_ips = true` the five `ip-dst` attributes of the small feed come
    with the domains; without it they stay among the other types."""
    options = MispFeedOptions(url=str(feed_dir), block_response_ips=True)
    source = MispFeedSource.from_options(options, Clock())
    found = result_of(source.fetch())
    assert len(found) == 27
    assert sorted(i.type for i in found if i.type != "domain") == ["ip-dst"] * 5
    assert source.last_stats.other_types == 5


@unless_present(FEED, "the real MISP feed in ../shared/data")
@pytest_twisted.ensureDeferred
async def test_the_real_feed_in_threads() -> None:
    """The whole real feed, read and parsed in the reactor's threads: 60,479 domains."""
    from twisted.internet import reactor

    source = MispFeedSource(str(FEED), run_blocking=thread_runner(reactor))
    found = await source.fetch()
    assert len(found) == 60_479
    stats = source.last_stats
    assert (stats.events, stats.events_read, stats.events_missing) == (46, 41, 5)
    assert stats.other_types == 591


# -- a URL -------------------------------------------------------------------------------


def url_source(fake: FakeFeed, clock: Clock | None = None, **options: Any) -> MispFeedSource:
    options.setdefault("random", lambda: 0.5)
    return MispFeedSource(URL, http=StubTreq(fake), clock=clock or Clock(), **options)


def test_url_feed_reads_manifest_then_events() -> None:
    """Over HTTP the feed gives the same indicators as from the directory."""
    fake = FakeFeed.from_directory(SMALL)
    found = result_of(url_source(fake).fetch())
    assert found == result_of(MispFeedSource(str(SMALL)).fetch())
    assert fake.requests[0].path == "/misp/infoblox/manifest.json"
    assert fake.requests[0].headers["user-agent"].startswith("misp-dns/")
    assert sorted(fake.fetched()[1:]) == sorted(
        f"{u}.json" for u in json.loads((SMALL / "manifest.json").read_text())
    )


def test_url_feed_fetches_only_changed_events() -> None:
    """The second fetch asks for the manifest and the one changed event only."""
    fake = FakeFeed.from_directory(SMALL)
    source = url_source(fake)
    result_of(source.fetch())
    before = len(fake.requests)
    event = json.loads(fake.files[f"{BEACON}.json"])["Event"]
    event["Attribute"] = event["Attribute"][:2]
    fake.put_event(event, timestamp=int(event["timestamp"]) + 1)
    found = result_of(source.fetch())
    assert fake.fetched()[before:] == ["manifest.json", f"{BEACON}.json", f"{MISSING}.json"]
    assert by_event(found)[BEACON] == 2


def test_url_event_errors_are_retried() -> None:
    """A 503 on an event is retried after the backoff, and the event loads."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(None, Fault.server_error(503))
    clock = Clock()
    fetched = url_source(fake, clock, concurrency=1).fetch()
    assert not fetched.called
    clock.advance(1)
    assert len(result_of(fetched)) == 22


def test_url_event_failing_for_good_keeps_the_rest() -> None:
    """An event that fails every attempt is counted as failed; the other events still load."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(None, *[Fault.server_error()] * 3)
    clock = Clock()
    source = url_source(fake, clock, concurrency=1)
    fetched = source.fetch()
    clock.pump([1, 2])
    found = result_of(fetched)
    assert len(found) < 22 and source.last_stats.events_failed == 1


def test_url_manifest_failure_fails_the_fetch() -> None:
    """If the manifest cannot be fetched after retries, the fetch fails."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(*[Fault.server_error()] * 3)
    clock = Clock()
    fetched = url_source(fake, clock).fetch()
    clock.pump([1, 2])
    assert isinstance(failure_of(fetched, MispError), MispUnavailableError)


def test_url_feed_gives_up_after_request_timeout() -> None:
    """request_timeout = "5s" in the table: a manifest that never comes is retried at 5 s."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(Fault.hanging())
    clock = Clock()
    http = StubTreq(fake)
    options = MispFeedOptions(url=URL, request_timeout=Duration(5))
    fetched = MispFeedSource.from_options(options, clock, http=http, random=lambda: 0.5).fetch()
    clock.advance(4.9)
    http.flush()
    assert len(fake.hanging) == 1
    clock.advance(0.1)
    http.flush()
    assert fake.hanging == []
    clock.advance(1)
    http.flush()
    assert len(result_of(fetched)) == 22


def test_url_feed_follows_redirects() -> None:
    """A feed that moved (a redirect) is followed: feeds carry no credentials."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(Fault.redirect("https://feeds.test/moved/manifest.json", 301))
    assert len(result_of(url_source(fake).fetch())) == 22
    assert fake.requests[1].path == "/moved/manifest.json"


def test_url_feed_needs_a_client_and_a_clock() -> None:
    """A URL feed without an HTTP client or clock is refused when built."""
    with pytest.raises(ValueError, match="needs an http client and a clock"):
        MispFeedSource(URL)


def test_url_body_cap_applies() -> None:
    """An event file over the size cap is a failed event, not a memory blow-up."""
    fake = FakeFeed.from_directory(SMALL)
    source = url_source(fake, max_response_bytes=4000)  # the decoy event has 5161 bytes
    found = result_of(source.fetch())
    assert DECOY not in by_event(found) and len(found) == 15
    assert source.last_stats.events_failed == 1


# -- hostile feeds -----------------------------------------------------------------------


def _nested(depth: int) -> str:
    return '{"Event": {"uuid": "x", "Attribute": ' + "[" * depth + "]" * depth + "}}"


def test_an_event_nested_too_deeply_is_skipped_and_counted(feed_dir: Path) -> None:
    """An event file of arrays nested 200,000 deep is one failed event, logged with the
    reason; the other events load and the fetch succeeds."""
    (feed_dir / f"{DECOY}.json").write_text(_nested(200_000))
    source = MispFeedSource(str(feed_dir))
    with capturedLogs() as events:
        found = result_of(source.fetch())
    assert DECOY not in by_event(found) and len(found) == 15
    assert source.last_stats.events_failed == 1
    skipped = [e for e in events if "{uuid} skipped" in e.get("log_format", "")]
    assert [e["uuid"] for e in skipped] == [DECOY]
    assert "nested" in skipped[0]["reason"]


def test_a_manifest_nested_too_deeply_fails_the_fetch_with_a_feed_error(feed_dir: Path) -> None:
    """A manifest nested 200,000 deep fails the fetch as a feed error naming the manifest
    (so the last good snapshot stays), not with a RecursionError."""
    (feed_dir / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    error = failure_of(MispFeedSource(str(feed_dir)).fetch(), MispFeedError)
    assert "manifest.json" in str(error)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_an_event_that_is_a_device_or_a_pipe_is_skipped(feed_dir: Path, kind: str) -> None:
    """`<uuid>.json -> /dev/zero` (size 0 by `stat`, endless when read) and a named pipe
    no one writes to are failed events: the fetch ends, and the other events load."""
    event = feed_dir / f"{DECOY}.json"
    event.unlink()
    if kind == "fifo":
        os.mkfifo(event)
    else:
        event.symlink_to("/dev/zero")
    source = MispFeedSource(str(feed_dir), max_response_bytes=4000)
    found = result_of(source.fetch())
    assert DECOY not in by_event(found) and len(found) == 15
    assert source.last_stats.events_failed == 1


def test_the_size_cap_counts_what_is_read_not_what_stat_says(feed_dir: Path) -> None:
    """A file whose `stat` size is 0 but which holds more than the cap (a /proc file) is
    refused for its size, not read whole."""
    status = Path("/proc/self/status")
    if not status.exists() or status.stat().st_size != 0:
        pytest.skip("needs a /proc file whose stat size is 0")
    (feed_dir / "manifest.json").write_text(json.dumps({DECOY: {"timestamp": 1}}))
    event = feed_dir / f"{DECOY}.json"
    event.unlink()
    event.symlink_to(status)
    source = MispFeedSource(str(feed_dir), max_response_bytes=200)
    with capturedLogs() as events:
        result_of(source.fetch())
    skipped = [e for e in events if "{uuid} skipped" in e.get("log_format", "")]
    assert [e["uuid"] for e in skipped] == [DECOY]
    assert "200-byte cap" in skipped[0]["reason"]


@pytest.mark.parametrize(
    "target",
    [
        "https://elsewhere.test/misp/infoblox/manifest.json",
        "http://feeds.test/misp/infoblox/manifest.json",
        "https://feeds.test:8443/misp/infoblox/manifest.json",
        "//elsewhere.test/manifest.json",
    ],
    ids=["other-host", "other-scheme", "other-port", "scheme-relative"],
)
def test_url_feed_redirects_to_another_origin_are_not_followed(target: str) -> None:
    """A redirect off the feed's origin (scheme, host and port) is not followed: the fetch
    fails naming the other origin, and no request goes there."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(Fault.redirect(target, 302))
    error = failure_of(url_source(fake).fetch(), MispError)
    assert "another origin" in str(error)
    assert len(fake.requests) == 1


def test_url_feed_follows_a_relative_redirect_on_its_origin() -> None:
    """A relative redirect (`Location: ../moved/manifest.json`) stays on the origin and is
    followed."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(Fault.redirect("../moved/manifest.json", 307))
    assert len(result_of(url_source(fake).fetch())) == 22
    assert fake.requests[1].path == "/misp/moved/manifest.json"


def test_url_feed_stops_after_too_many_redirects() -> None:
    """A redirect loop on the origin ends after a few hops with a feed error."""
    fake = FakeFeed.from_directory(SMALL)
    fake.script(*[Fault.redirect(f"{URL}/manifest.json", 302)] * 20)
    error = failure_of(url_source(fake).fetch(), MispError)
    assert "redirects" in str(error)
    assert len(fake.requests) < 20
