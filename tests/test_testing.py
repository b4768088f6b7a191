"""The fakes in misp_dns.testing behave like what they imitate (so tests using them mean it).

FakeMisp is checked against MISP 2.5.1's documented restSearch behaviour (auth, empty body,
filters, MISP's own filters: tags, published, threat level, warninglists and decay, paging,
shapes), served both in memory and for real on loopback, and against what MISP's
SightingsController and Sighting model do with `/sightings/add` (auth and the sighting
permission, the body's forms, which attributes a value sights, the answers); FakeMisp and
MispFeedSource agree on the real feed data; the fakes of the three seams
(MemoryIndicatorSource, MemorySink, ScriptedPolicy) provide their interfaces and keep their
promises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import SHARED_DATA, failure_of, result_of, unless_present
from treq.testing import StubTreq
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from misp_dns.http import make_http_client
from misp_dns.intel.errors import MispUnavailableError
from misp_dns.intel.feed import MispFeedSource
from misp_dns.intel.misp_client import MispClient
from misp_dns.intel.warninglist import load_warninglist
from misp_dns.interfaces import (
    Action,
    Decision,
    IIndicatorSource,
    IPolicy,
    ISink,
    PolicyQuery,
    RawIndicator,
)
from misp_dns.testing import (
    FakeFeed,
    FakeMisp,
    Fault,
    MemoryIndicatorSource,
    MemorySink,
    ScriptedPolicy,
)

KEY = "fake-key-0123456789"
SEARCH = "https://misp.test/attributes/restSearch"
SIGHTINGS = "https://misp.test/sightings/add"
SMALL = Path(__file__).resolve().parent / "fixtures" / "misp-feed-small"
NOW = 1_700_000_000
WARNINGLISTS = SHARED_DATA / "warninglists"


def ask(fake: FakeMisp, body: Any, key: str | None = KEY, url: str = SEARCH) -> tuple[int, Any]:
    """POST `body` (JSON unless bytes) to the fake; the status and the decoded JSON answer."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = result_of(StubTreq(fake).post(url, data=data, headers=headers))
    return response.code, json.loads(result_of(response.content()))


def sight(fake: FakeMisp, body: Any, key: str | None = KEY) -> tuple[int, Any]:
    """POST `body` to the fake's /sightings/add."""
    return ask(fake, body, key, SIGHTINGS)


def attributes(fake: FakeMisp, filters: dict[str, Any]) -> list[dict[str, Any]]:
    status, answer = ask(fake, filters)
    assert status == 200, answer
    return answer["response"]["Attribute"]


@pytest.fixture
def fake() -> FakeMisp:
    """Five attributes of mixed type, flags and age."""
    misp = FakeMisp(KEY, now=lambda: NOW)
    event = misp.add_event("event one", tags=["tlp:white", "infoblox"])
    misp.add_attribute("a.example", event=event, tags=["kill-chain:c2"])
    misp.add_attribute("b.example", "hostname", event=event, to_ids=False)
    misp.add_attribute("c.example", event=event, deleted=True)
    misp.add_attribute("d.example", event=event, timestamp=NOW - 30 * 86400)
    misp.add_attribute("192.0.2.1", "ip-dst", event=event)
    return misp


@pytest.mark.parametrize("key", [None, "wrong", f"Bearer {KEY}"])
def test_wrong_or_missing_key_is_403_with_misp_error_shape(fake: FakeMisp, key: str | None) -> None:
    """MISP answers 403 {"name", "message", "url"} unless Authorization is exactly the key."""
    status, answer = ask(fake, {"returnFormat": "json"}, key=key)
    assert status == 403
    assert set(answer) == {"name", "message", "url"}
    assert "Authentication failed" in answer["message"]


def test_empty_body_is_400(fake: FakeMisp) -> None:
    """An empty POST body answers 400, as MISP does."""
    assert ask(fake, b"")[0] == 400


def test_filters_may_be_wrapped_in_request(fake: FakeMisp) -> None:
    """{"request": {...}} and the bare filters give the same answer."""
    filters = {"type": "domain", "order": "Attribute.id asc"}
    assert attributes(fake, {"request": filters}) == attributes(fake, filters)


def test_filters_select_like_misp(fake: FakeMisp) -> None:
    """type, to_ids, deleted (hidden by default) and the relative timestamp window all filter."""

    def values(filters: dict[str, Any]) -> list[str]:
        found = attributes(fake, {**filters, "order": "Attribute.id asc"})
        return [a["value"] for a in found]

    assert values({}) == ["a.example", "b.example", "d.example", "192.0.2.1"]
    assert values({"type": ["domain", "hostname"]}) == ["a.example", "b.example", "d.example"]
    assert values({"to_ids": True, "type": "domain"}) == ["a.example", "d.example"]
    assert values({"to_ids": 0}) == ["b.example"]
    assert values({"deleted": True}) == ["c.example"]
    assert len(values({"deleted": [0, 1]})) == 5
    assert values({"timestamp": "15d", "type": "domain"}) == ["a.example"]
    assert values({"timestamp": str(NOW - 40 * 86400), "type": "domain"}) == [
        "a.example",
        "d.example",
    ]
    assert values({"timestamp": "15 days"}) == []  # MISP matches nothing on a bad value


def test_answer_has_misp_shapes(fake: FakeMisp) -> None:
    """Ids and timestamps are strings; each attribute carries its Event and, asked, event tags."""
    [first] = attributes(fake, {"value": "x", "limit": 1, "order": "Attribute.id asc"})[:1]
    assert first["id"] == "1" and isinstance(first["timestamp"], str)
    assert first["event_id"] == first["Event"]["id"] == "1"
    assert {"id", "uuid", "info"} <= set(first["Event"])
    assert [t["name"] for t in first["Tag"]] == ["kill-chain:c2"]
    [tagged] = attributes(fake, {"includeEventTags": True, "limit": 1, "order": "Attribute.id"})
    assert [t["name"] for t in tagged["Tag"]] == ["tlp:white", "infoblox", "kill-chain:c2"]


def test_limit_and_page_slice_and_past_the_end_is_empty(fake: FakeMisp) -> None:
    """offset = limit * (page - 1); a page past the end is 200 with an empty list."""
    order = {"order": "Attribute.id asc", "limit": 3}
    assert [a["id"] for a in attributes(fake, {**order, "page": 1})] == ["1", "2", "4"]
    assert [a["id"] for a in attributes(fake, {**order, "page": 2})] == ["5"]
    assert attributes(fake, {**order, "page": 3}) == []


def test_without_order_the_order_is_not_stable() -> None:
    """Like MISP, no order is promised unless asked for: two requests may disagree."""
    misp = FakeMisp(KEY)
    misp.add_values(f"n{i}.example" for i in range(50))
    orders = {tuple(a["id"] for a in attributes(misp, {"type": "domain"})) for _ in range(3)}
    assert len(orders) > 1


def test_after_limit_filter_makes_short_pages(fake: FakeMisp) -> None:
    """A value filtered after the limit shortens its page without shifting the next."""
    fake.after_limit_filter = {"a.example"}
    order = {"order": "Attribute.id asc", "limit": 2}
    assert [a["value"] for a in attributes(fake, {**order, "page": 1})] == ["b.example"]
    assert [a["value"] for a in attributes(fake, {**order, "page": 2})] == [
        "d.example",
        "192.0.2.1",
    ]


# -- MISP's own filters: tags, published, threat level, warninglists, decay ---------------------


@pytest.fixture
def events() -> FakeMisp:
    """Two events: a published high-threat tlp:red one and an unpublished low-threat tlp:white
    one, with attribute tags on some of their attributes."""
    misp = FakeMisp(KEY, now=lambda: NOW)
    red = misp.add_event(
        "red", tags=["tlp:red", 'misp-galaxy:threat-actor="APT 99"'], threat_level_id=1
    )
    white = misp.add_event("white", tags=["tlp:white"], published=False, threat_level_id="3")
    misp.add_attribute("red-plain.example", event=red)
    misp.add_attribute("red-fp.example", event=red, tags=["false-positive"])
    misp.add_attribute("white-plain.example", event=white)
    misp.add_attribute("white-c2.example", event=white, tags=["Kill-Chain:C2"])
    return misp


def found(fake: FakeMisp, **filters: Any) -> list[str]:
    """The values restSearch gives for `filters`, in id order."""
    return [a["value"] for a in attributes(fake, {**filters, "order": "Attribute.id asc"})]


def test_tags_select_on_event_or_attribute_tags(events: FakeMisp) -> None:
    """`tags` keeps an attribute when it or its event carries one of the tags; names match as
    SQL LIKE (any case, `%` wildcard); a tag nobody carries matches nothing."""
    assert found(events, tags=["tlp:red"]) == ["red-plain.example", "red-fp.example"]
    assert found(events, tags=["kill-chain:c2"]) == ["white-c2.example"]
    assert found(events, tags={"OR": ["TLP:RED", "kill-chain:c2"]}) == [
        "red-plain.example",
        "red-fp.example",
        "white-c2.example",
    ]
    assert found(events, tags=["misp-galaxy:threat-actor=%"]) == [
        "red-plain.example",
        "red-fp.example",
    ]
    assert found(events, tags=["tlp:amber"]) == []


def test_negated_tags_exclude_on_event_or_attribute_tags(events: FakeMisp) -> None:
    """A `NOT` tag (or `!tag` in a list) drops the attribute when it or its event carries it."""
    every = ["red-plain.example", "red-fp.example", "white-plain.example", "white-c2.example"]
    assert found(events) == every
    assert found(events, tags={"NOT": ["false-positive"]}) == [
        "red-plain.example",
        "white-plain.example",
        "white-c2.example",
    ]
    assert found(events, tags=["!tlp:white"]) == ["red-plain.example", "red-fp.example"]
    assert found(events, tags={"OR": ["tlp:red"], "NOT": ["false-positive"]}) == [
        "red-plain.example"
    ]
    assert found(events, tags={"AND": ["tlp:white", "kill-chain:c2"]}) == ["white-c2.example"]


def test_published_and_threat_level_select_on_the_event(events: FakeMisp) -> None:
    """`published` and `threat_level_id` (one or a list, strings or numbers) filter by the
    event's flag and level; the embedded Event carries neither, as in MISP's answer."""
    assert found(events, published=True) == ["red-plain.example", "red-fp.example"]
    assert found(events, published=0) == ["white-plain.example", "white-c2.example"]
    assert found(events, threat_level_id=["1", "2"]) == ["red-plain.example", "red-fp.example"]
    assert found(events, threat_level_id=3) == ["white-plain.example", "white-c2.example"]
    [first] = attributes(events, {"limit": 1, "order": "Attribute.id asc"})
    assert not {"published", "threat_level_id"} & set(first["Event"])


@unless_present(WARNINGLISTS, "the real MISP warninglists in ../shared/data")
def test_enforced_warninglists_shorten_pages_without_shifting_the_next() -> None:
    """With `enforceWarninglist`, attributes on an enabled list (here the real Tranco list) are
    removed after the limit: pages come back short, the next page starts where it would have,
    and without the flag nothing is removed."""
    misp = FakeMisp(KEY, now=lambda: NOW)
    misp.warninglists = [load_warninglist(WARNINGLISTS / "tranco10k.json")]
    misp.add_values(["evil-1.example", "google.com", "mail.google.com", "evil-2.example"])
    paged = {"order": "Attribute.id asc", "limit": 2}
    enforced = {**paged, "enforceWarninglist": True}
    assert [a["value"] for a in attributes(misp, {**enforced, "page": 1})] == ["evil-1.example"]
    assert [a["value"] for a in attributes(misp, {**enforced, "page": 2})] == ["evil-2.example"]
    assert attributes(misp, {**enforced, "page": 3}) == []
    assert len(attributes(misp, {**paged, "page": 1, "enforceWarninglist": False})) == 2


def test_exclude_decayed_shortens_pages_and_scores_come_with_event_tags() -> None:
    """`excludeDecayed` removes, after the limit, attributes every model finds decayed; asking
    for it at all (even false) attaches `decay_score` and the event's tags, as MISP does."""
    misp = FakeMisp(KEY, now=lambda: NOW)
    event = misp.add_event("scored", tags=["tlp:green"])
    misp.add_attribute("old.example", event=event, decayed=True)
    misp.add_attribute("fresh.example", event=event, decayed=False)
    misp.add_attribute("unscored.example", event=event)
    paged = {"order": "Attribute.id asc", "limit": 2, "page": 1}
    assert [a["value"] for a in attributes(misp, {**paged, "excludeDecayed": True})] == [
        "fresh.example"
    ]
    assert [a["value"] for a in attributes(misp, {**paged, "excludeDecayed": True, "page": 2})] == [
        "unscored.example"
    ]
    kept = attributes(misp, {**paged, "excludeDecayed": False})
    assert [a["value"] for a in kept] == ["old.example", "fresh.example"]
    assert [s["decayed"] for s in kept[0]["decay_score"]] == [True]
    assert {"score", "base_score", "decayed", "DecayingModel"} <= set(kept[1]["decay_score"][0])
    assert [t["name"] for t in kept[0]["Tag"]] == ["tlp:green"]
    assert attributes(misp, {**paged, "page": 2, "includeDecayScore": True})[0]["decay_score"] == []
    assert "decay_score" not in attributes(misp, paged)[0]


def test_ignored_filters_stand_for_a_misp_that_does_not_know_them(events: FakeMisp) -> None:
    """Filters in `ignored_filters` change nothing, as on a MISP that ignores them."""
    events.ignored_filters = {"tags", "published"}
    assert len(found(events, tags=["tlp:red"], published=True)) == 4


def test_scripted_faults_apply_in_order_and_requests_are_recorded(fake: FakeMisp) -> None:
    """Faults are used one per request, None answering normally; every request is recorded."""
    fake.script(None, Fault.rate_limited(retry_after="3", reset="4"), Fault.garbage())
    assert ask(fake, {})[0] == 200
    response = result_of(StubTreq(fake).post(SEARCH, data=b"{}", headers={"Authorization": KEY}))
    assert response.code == 429
    assert response.headers.getRawHeaders("Retry-After") == ["3"]
    assert response.headers.getRawHeaders("X-Rate-Limit-Reset") == ["4"]
    response = result_of(StubTreq(fake).post(SEARCH, data=b"{}", headers={"Authorization": KEY}))
    assert response.code == 200 and result_of(response.content()).startswith(b"<html>")
    assert ask(fake, {})[0] == 200
    assert len(fake.requests) == 4 and fake.requests[0].json() == {}


# --- /sightings/add ---------------------------------------------------------------------------

NO_MATCH = "Could not add the Sighting. Reason: No valid attributes found that match the criteria."


@pytest.mark.parametrize("key", [None, "wrong"])
def test_sightings_need_the_key(fake: FakeMisp, key: str | None) -> None:
    """A sighting without the right key gets the same 403 as a search, naming its URL."""
    status, answer = sight(fake, {"values": ["a.example"]}, key=key)
    assert status == 403
    assert answer["url"] == "/sightings/add"
    assert "Authentication failed" in answer["message"]
    assert fake.sightings == []


def test_sightings_need_the_sighting_permission(fake: FakeMisp) -> None:
    """A key whose role lacks perm_sighting gets MISP's ACL refusal, a 403."""
    fake.can_sight = False
    status, answer = sight(fake, {"values": ["a.example"]})
    assert status == 403
    assert answer["message"] == "You do not have permission to use this functionality."
    assert fake.sightings == []


def test_values_sight_every_attribute_holding_them(fake: FakeMisp) -> None:
    """Each value sights every attribute that holds it, as MySQL compares (no case, no
    trailing spaces), either half of a domain|ip, deleted ones too; the answer is the last
    sighting saved, with the type, source and time sent."""
    other = fake.add_event("event two")
    fake.add_attribute("A.Example ", event=other)
    fake.add_attribute("e.example|192.0.2.9", "domain|ip", event=other)
    body = {
        "values": ["a.example", "c.example", "e.example", "nowhere.example"],
        "type": "0",
        "source": "misp-dns",
        "timestamp": "1699999000",
    }
    status, answer = sight(fake, body)
    assert status == 200
    sighted = {s["attribute_id"]: s for s in fake.sightings}
    assert sorted(sighted, key=int) == ["1", "3", "6", "7"]
    assert {(s["type"], s["source"], s["date_sighting"]) for s in fake.sightings} == {
        ("0", "misp-dns", "1699999000")
    }
    assert sighted["6"]["event_id"] == "2"
    assert answer == {"Sighting": fake.sightings[-1]}
    assert set(answer["Sighting"]) == {
        "id",
        "attribute_id",
        "event_id",
        "org_id",
        "date_sighting",
        "uuid",
        "source",
        "type",
    }


def test_a_sighting_without_a_match_is_refused_with_a_200(fake: FakeMisp) -> None:
    """MISP answers a refused sighting with 200 and a bare message, not an error status:
    no attribute holds the values, there are none, or the type is not 0, 1 or 2."""
    assert sight(fake, {"values": ["nowhere.example"]}) == (200, {"message": NO_MATCH})
    reason = "Could not add the Sighting. Reason: No valid attributes found."
    assert sight(fake, b"") == (200, {"message": reason})
    assert sight(fake, {"values": []}) == (200, {"message": reason})
    status, answer = sight(fake, {"values": ["a.example"], "type": "sighting"})
    assert status == 200 and answer["message"].startswith("Could not add the Sighting. Reason: ")
    assert "Invalid type" in answer["message"]
    assert fake.sightings == []


def test_a_sighting_may_name_one_value_an_attribute_or_be_wrapped(fake: FakeMisp) -> None:
    """`value`, an attribute's `uuid` or `id`, and the `request` or `Sighting` wrappers are
    all accepted; the type defaults to 0 and the time to now."""
    uuid = fake.attributes[1]["uuid"]
    assert sight(fake, {"value": "a.example"})[0] == 200
    assert sight(fake, {"request": {"uuid": uuid, "source": "  x  "}})[0] == 200
    assert sight(fake, {"Sighting": {"id": "4", "type": 1}})[0] == 200
    assert [(s["attribute_id"], s["type"], s["source"]) for s in fake.sightings] == [
        ("1", "0", ""),
        ("2", "0", "x"),
        ("4", "1", ""),
    ]
    assert fake.sightings[0]["date_sighting"] == str(NOW)


def test_sighting_filters_narrow_the_attributes(fake: FakeMisp) -> None:
    """With `filters`, MISP searches like restSearch among the values' attributes: here
    by attribute uuid and by type."""
    twin = fake.add_attribute("a.example", "hostname")
    assert sight(fake, {"values": ["a.example"], "filters": {"uuid": twin["uuid"]}})[0] == 200
    assert [s["attribute_id"] for s in fake.sightings] == [twin["id"]]
    assert sight(fake, {"values": ["a.example"], "filters": {"type": "domain"}})[0] == 200
    assert [s["attribute_id"] for s in fake.sightings] == [twin["id"], "1"]


def test_scripted_faults_apply_to_sightings_too(fake: FakeMisp) -> None:
    """A scripted fault answers the next request, whichever endpoint it is for."""
    fake.script(Fault.server_error(503))
    assert sight(fake, {"values": ["a.example"]})[0] == 503
    assert fake.sightings == []
    assert sight(fake, {"values": ["a.example"]})[0] == 200
    assert [r.path for r in fake.requests] == ["/sightings/add", "/sightings/add"]


def test_fake_misp_and_the_feed_reader_agree_on_real_data() -> None:
    """The same real feed read as a feed and through FakeMisp gives the same indicators."""
    misp = FakeMisp.from_feed(SMALL, KEY, now=lambda: NOW)
    client = MispClient("https://misp.test", KEY, StubTreq(misp), Clock(), max_ioc_age=1e9)
    through_misp = result_of(client.fetch())
    from_feed = result_of(MispFeedSource(str(SMALL)).fetch())

    def key(indicator: RawIndicator) -> tuple[Any, ...]:
        return (
            indicator.attribute_uuid,
            indicator.value,
            indicator.type,
            indicator.timestamp,
            indicator.first_seen,
            indicator.event_uuid,
            indicator.event_info,
        )

    assert len(through_misp) == 22
    assert sorted(map(key, through_misp)) == sorted(map(key, from_feed))


@pytest_twisted.ensureDeferred
async def test_fake_misp_served_for_real_on_loopback() -> None:
    """Behind a real Site on 127.0.0.1 the fake pages, and a hang is cut off by the timeout."""
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool
    from twisted.web.server import Site

    misp = FakeMisp(KEY)
    misp.add_values(f"n{i}.example" for i in range(7))
    port = reactor.listenTCP(0, Site(misp), interface="127.0.0.1")
    try:
        http = make_http_client(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        url = f"http://127.0.0.1:{port.getHost().port}"
        client = MispClient(url, KEY, http, reactor, pagination_limit=3)
        assert len(await client.fetch()) == 7
        assert len(misp.requests) == 5  # pages 1..4, and 4 again without the warninglists

        misp.script(Fault.hanging())
        impatient = MispClient(url, KEY, http, reactor, timeout=0.2, attempts=1)
        with pytest.raises(MispUnavailableError, match=r"within 0\.2s"):
            await impatient.fetch()
    finally:
        await port.stopListening()


def test_fake_feed_serves_files_by_name_and_404s_the_rest() -> None:
    """FakeFeed answers any path ending in a known file name, 404 otherwise."""
    feed = FakeFeed({"manifest.json": b"{}"})
    http = StubTreq(feed)
    assert result_of(http.get("http://f.test/a/b/manifest.json")).code == 200
    assert result_of(http.get("http://f.test/a/b/other.json")).code == 404
    assert feed.fetched() == ["manifest.json", "other.json"]


def test_memory_source_serves_fails_and_holds() -> None:
    """MemoryIndicatorSource hands out its list, fails with `error`, and waits when holding."""
    indicator = RawIndicator("evil.example", "domain")
    source = MemoryIndicatorSource([indicator])
    assert verifyObject(IIndicatorSource, source)
    assert result_of(source.fetch()) == [indicator]

    source.hold = True
    held = source.fetch()
    assert not held.called and source.pending == 1
    source.error = RuntimeError("MISP down")
    source.release()
    assert str(failure_of(held, RuntimeError)) == "MISP down"
    assert source.fetches == 2 and source.pending == 0


def test_memory_sink_keeps_batches_fails_and_holds_its_stop() -> None:
    """MemorySink provides ISink, keeps each batch in order, raises when told to fail, and
    stops only when the test fires `stopping` if it holds its stop."""
    sink = MemorySink(hold_stop=True)
    assert verifyObject(ISink, sink)
    sink.start()
    sink.write([{"n": 1}, {"n": 2}])
    sink.write([{"n": 3}])
    assert sink.started and sink.batches == [[{"n": 1}, {"n": 2}], [{"n": 3}]]
    assert [record["n"] for record in sink.records] == [1, 2, 3]
    stopping = sink.stop()
    assert stopping is not None and not stopping.called
    stopping.callback(None)
    assert sink.stopped and sink.dropped == 0

    sink.fail = True
    with pytest.raises(RuntimeError):
        sink.write([{"n": 4}])
    assert len(sink.records) == 3


def test_scripted_policy_decides_from_its_dict() -> None:
    """ScriptedPolicy provides IPolicy, answers the decision scripted for a name and None for
    the others, lists what it was asked, and is ready at once or when told."""
    block = Decision(Action.BLOCK, "scripted", indicator="evil.example")
    policy = ScriptedPolicy({"evil.example": block})
    assert verifyObject(IPolicy, policy)
    assert policy.service is None
    assert policy.decide(PolicyQuery("evil.example", 1)) is block
    assert policy.decide(PolicyQuery("www.evil.example", 1)) is None
    assert [query.name for query in policy.asked] == ["evil.example", "www.evil.example"]
    assert result_of(policy.whenReady()) is None

    later = ScriptedPolicy(ready=False)
    held = later.whenReady()
    assert not held.called
    later.make_ready()
    assert result_of(held) is None and result_of(later.whenReady()) is None
