"""The MISP REST client: the request MISP gets, paging, retries, failures and parsing.

Every test talks HTTP to `misp_dns.testing.FakeMisp` through `treq.testing.StubTreq` and
drives time with `task.Clock`, so backoff and timeouts are exercised without waiting.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import SHARED_DATA, failure_of, result_of, unless_present
from hypothesis import given
from hypothesis import strategies as st
from integration.certificates import self_signed
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer
from zope.interface.verify import verifyObject

import misp_dns
from misp_dns.http import make_http_client
from misp_dns.intel.blocking import sliced_runner
from misp_dns.intel.errors import MispAuthError, MispResponseError, MispUnavailableError
from misp_dns.intel.misp_client import (
    AttributeCounts,
    FetchStats,
    MispClient,
    misp_timespan,
    parse_attributes,
)
from misp_dns.intel.misp_options import MispOptions
from misp_dns.intel.warninglist import load_warninglist
from misp_dns.interfaces import IIndicatorSource, RawIndicator
from misp_dns.testing import FakeMisp, Fault
from misp_dns.values import ConfigError, Duration

KEY = "K3yK3yK3yK3yK3yK3yK3yK3yK3yK3yK3yK3yK3yK"
URL = "https://misp.test"
FEED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "misp-feed-infoblox"
WARNINGLISTS = SHARED_DATA / "warninglists"


def client_for(
    fake: Resource, clock: Clock | None = None, http: Any = None, **options: Any
) -> MispClient:
    """A client of `fake` whose jitter factor is exactly 1 (random() = 0.5)."""
    options.setdefault("random", lambda: 0.5)
    return MispClient(URL, KEY, http or StubTreq(fake), clock or Clock(), **options)


def fake_with(count: int, **options: Any) -> FakeMisp:
    fake = FakeMisp(KEY, now=lambda: 1_700_000_000)
    fake.add_values((f"d{i}.example" for i in range(count)), **options)
    return fake


def values(indicators: list[RawIndicator]) -> list[str]:
    return [indicator.value for indicator in indicators]


# -- the request -------------------------------------------------------------------------


def test_request_is_the_documented_restsearch_post() -> None:
    """MISP gets POST /attributes/restSearch with the raw key, JSON headers and every filter,
    by default enforcing its warninglists and asking for published events only."""
    fake = fake_with(1)
    client = client_for(fake, pagination_limit=250, max_ioc_age=15 * 86400)
    result_of(client.fetch())
    first = fake.requests[0]
    assert (first.method, first.path) == ("POST", "/attributes/restSearch")
    assert first.headers["authorization"] == KEY
    assert first.headers["accept"] == "application/json"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["user-agent"] == f"misp-dns/{misp_dns.__version__}"
    assert b'"to_ids": true, "deleted": false' in first.body
    assert first.json() == {
        "returnFormat": "json",
        "type": ["domain", "hostname", "domain|ip"],
        "to_ids": True,
        "deleted": False,
        "timestamp": "15d",
        "includeEventTags": True,
        "enforceWarninglist": True,
        "published": True,
        "order": "Attribute.id asc",
        "limit": 250,
        "page": 1,
    }


def test_with_response_ips_the_address_types_are_asked_for_and_kept() -> None:
    """`block_response_ips = true` asks MISP for the address types too and hands their
    attributes on; without it they are neither asked for nor kept (as before)."""
    fake = FakeMisp(KEY, now=lambda: 1_700_000_000)
    fake.add_attribute("evil.example")
    for kind, value in (
        ("ip-dst", "203.0.113.0/24"),
        ("ip-src", "2001:db8::1"),
        ("ip-dst|port", "198.51.100.7|443"),
        ("ip-src|port", "198.51.100.8|25"),
        ("url", "http://evil.example/x"),
    ):
        fake.add_attribute(value, kind)
    table = {"server_url": URL, "api_key": KEY, "block_response_ips": True}
    client = MispClient.from_options(MispOptions(**table), StubTreq(fake), Clock())
    found = result_of(client.fetch())
    assert fake.requests[0].json()["type"] == [
        "domain",
        "hostname",
        "domain|ip",
        "ip-dst",
        "ip-src",
        "ip-dst|port",
        "ip-src|port",
    ]
    assert [(i.type, i.value) for i in found] == [
        ("domain", "evil.example"),
        ("ip-dst", "203.0.113.0/24"),
        ("ip-src", "2001:db8::1"),
        ("ip-dst|port", "198.51.100.7|443"),
        ("ip-src|port", "198.51.100.8|25"),
    ]
    table["block_response_ips"] = False
    client = MispClient.from_options(MispOptions(**table), StubTreq(fake), Clock())
    assert values(result_of(client.fetch())) == ["evil.example"]
    assert fake.requests[-1].json()["type"] == ["domain", "hostname", "domain|ip"]


def test_client_provides_the_indicator_source_interface() -> None:
    """MispClient plugs into the updater as an IIndicatorSource."""
    assert verifyObject(IIndicatorSource, client_for(fake_with(0)))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(15 * 86400, "15d"), (2 * 3600, "2h"), (90 * 60, "90m"), (36 * 3600, "36h"), (45, "1m")],
)
def test_max_ioc_age_is_written_as_misp_expects(seconds: float, text: str) -> None:
    """max_ioc_age becomes MISP's "15d"/"2h"/"30m" form (MISP matches nothing on other forms)."""
    assert misp_timespan(seconds) == text


@given(st.integers(min_value=1, max_value=10**8))
def test_misp_timespan_never_shortens_the_window(seconds: int) -> None:
    """The window asked of MISP is never shorter than max_ioc_age, and at most a minute longer."""
    text = misp_timespan(seconds)
    amount, unit = int(text[:-1]), text[-1]
    window = amount * {"d": 86400, "h": 3600, "m": 60}[unit]
    assert seconds <= window < seconds + 60


# -- paging ------------------------------------------------------------------------------


def test_pages_until_an_empty_page() -> None:
    """25 attributes at 10 a page take pages 1..3 and a 4th, empty, page, asked once more
    without MISP's warninglists to be sure it is the end; order is kept."""
    fake = fake_with(25)
    client = client_for(fake, pagination_limit=10)
    found = result_of(client.fetch())
    assert values(found) == [f"d{i}.example" for i in range(25)]
    assert [r.json()["page"] for r in fake.requests] == [1, 2, 3, 4, 4]
    assert [r.json()["enforceWarninglist"] for r in fake.requests] == [True] * 4 + [False]
    assert client.last_stats.pages == 3


def test_a_short_page_is_not_the_end() -> None:
    """MISP filters warninglists after its limit: a short page is followed, not taken as the end."""
    fake = fake_with(30)
    fake.after_limit_filter = {"d1.example", "d2.example", "d3.example"}
    found = result_of(client_for(fake, pagination_limit=10).fetch())
    assert len(found) == 27
    assert "d29.example" in values(found)
    assert len(fake.requests) == 5


def test_old_empty_answer_shape_ends_the_paging() -> None:
    """`{"response": []}`, which older MISP versions send for no results, is an empty page."""
    fake = fake_with(3)
    fake.script(None, Fault.json({"response": []}))
    found = result_of(client_for(fake, pagination_limit=3).fetch())
    assert len(found) == 3


def test_a_server_that_ignores_page_is_caught() -> None:
    """If every page repeats the first, the fetch fails instead of looping for ever."""
    page = {"response": {"Attribute": [{"id": "1", "type": "domain", "value": "a.example"}]}}
    fake = fake_with(0)
    fake.script(Fault.json(page), Fault.json(page))
    error = failure_of(client_for(fake, pagination_limit=1).fetch(), MispResponseError)
    assert "ignores 'page'" in str(error)


# -- MISP's own filters ----------------------------------------------------------------------


def filtered_client(fake: FakeMisp, **filters: Any) -> MispClient:
    """A client of `fake` whose policy has these filter keys (the others at their default)."""
    options = MispOptions(server_url=URL, api_key=KEY, max_ioc_age=Duration(1e9), **filters)
    return MispClient.from_options(options, StubTreq(fake), Clock(), random=lambda: 0.5)


def events_fake() -> FakeMisp:
    """A published high-threat tlp:red event and an unpublished low-threat tlp:white one;
    one attribute of each is tagged on its own."""
    fake = FakeMisp(KEY, now=lambda: 1_700_000_000)
    red = fake.add_event("red", tags=["tlp:red"], threat_level_id=1)
    white = fake.add_event("white", tags=["tlp:white"], published=False, threat_level_id=3)
    fake.add_attribute("red.example", event=red)
    fake.add_attribute("red-fp.example", event=red, tags=["false-positive"])
    fake.add_attribute("white.example", event=white)
    fake.add_attribute("white-c2.example", event=white, tags=["kill-chain:c2"])
    return fake


def test_every_filter_key_goes_into_the_request() -> None:
    """tags/exclude_tags become MISP's {"OR", "NOT"} tag filter, threat_levels its
    threat_level_id, exclude_decayed excludeDecayed (with the scores asked for), and turning
    enforce_warninglists and published_only off says so or leaves the filter out."""
    fake = fake_with(1)
    client = filtered_client(
        fake,
        tags=("tlp:red", "tlp:amber%"),
        exclude_tags=("false-positive",),
        enforce_warninglists=False,
        published_only=False,
        threat_levels=(2, 1),
        exclude_decayed=True,
    )
    result_of(client.fetch())
    body = fake.requests[0].json()
    assert body["tags"] == {"OR": ["tlp:red", "tlp:amber%"], "NOT": ["false-positive"]}
    assert body["enforceWarninglist"] is False
    assert "published" not in body
    assert body["threat_level_id"] == ["1", "2"]
    assert (body["excludeDecayed"], body["includeDecayScore"]) == (True, True)


def test_defaults_leave_out_tags_threat_levels_and_decay() -> None:
    """With the defaults no tag, threat level or decay filter is sent (MISP scores decay
    whenever excludeDecayed is present, even false)."""
    fake = fake_with(1)
    result_of(filtered_client(fake).fetch())
    body = fake.requests[0].json()
    assert not {"tags", "threat_level_id", "excludeDecayed", "includeDecayScore"} & set(body)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["red.example", "red-fp.example"]),
        (
            {"published_only": False},
            ["red.example", "red-fp.example", "white.example", "white-c2.example"],
        ),
        ({"published_only": False, "threat_levels": (3, 4)}, ["white.example", "white-c2.example"]),
        (
            {"published_only": False, "tags": ("tlp:white", "TLP:RED")},
            ["red.example", "red-fp.example", "white.example", "white-c2.example"],
        ),
        ({"published_only": False, "tags": ("kill-chain:%",)}, ["white-c2.example"]),
        ({"exclude_tags": ("false-positive",)}, ["red.example"]),
        (
            {"published_only": False, "exclude_tags": ("tlp:red",)},
            ["white.example", "white-c2.example"],
        ),
    ],
)
def test_filters_select_the_indicators(filters: dict[str, Any], expected: list[str]) -> None:
    """Each filter key keeps what its description says: published events only by default,
    threat levels, tags on the attribute or its event (any case, % wildcard), excluded tags."""
    client = filtered_client(events_fake(), **filters)
    assert sorted(values(result_of(client.fetch()))) == sorted(expected)
    assert client.last_stats.filtered == {}


def test_a_misp_that_ignores_the_tag_filters_does_not_widen_blocking() -> None:
    """When MISP ignores `tags`, the attributes it sends anyway are checked against the tags
    here: they are left out, counted by reason, and a warning says MISP did not filter."""
    fake = events_fake()
    fake.ignored_filters = {"tags"}
    client = filtered_client(
        fake,
        published_only=False,
        tags=("tlp:%",),
        exclude_tags=("false-positive", "kill-chain:c2"),
    )
    with capturedLogs() as events:
        found = values(result_of(client.fetch()))
    assert sorted(found) == ["red.example", "white.example"]
    assert client.last_stats.filtered == {"excluded-tag": 2}
    warnings = [e for e in events if "should have left out" in e["log_format"]]
    assert len(warnings) == 1 and warnings[0]["filtered"] == 2

    wanted = filtered_client(fake, published_only=False, tags=("tlp:red",))
    assert sorted(values(result_of(wanted.fetch()))) == ["red-fp.example", "red.example"]
    assert wanted.last_stats.filtered == {"no-wanted-tag": 2}


def test_tags_on_the_embedded_event_count_too() -> None:
    """An attribute whose `Event` carries its own `Tag` list (as with includeContext) is
    judged on those tags as well as its own; an unreadable tag list is never blocked."""
    attributes = [
        {
            "id": "1",
            "type": "domain",
            "value": "a.example",
            "Event": {"Tag": [{"name": "tlp:red"}]},
        },
        {"id": "2", "type": "domain", "value": "b.example", "Tag": [{"name": "tlp:red"}]},
        {
            "id": "3",
            "type": "domain",
            "value": "c.example",
            "Event": {"Tag": [{"name": "tlp:white"}]},
        },
        {"id": "4", "type": "domain", "value": "d.example", "Tag": "tlp:red"},
    ]
    fake = fake_with(0)
    fake.script(Fault.json({"response": {"Attribute": attributes}}))
    client = filtered_client(fake, tags=("tlp:red",), enforce_warninglists=False)
    assert values(result_of(client.fetch())) == ["a.example", "b.example"]
    assert client.last_stats.filtered == {"no-wanted-tag": 1, "unreadable-tags": 1}


def test_published_flag_and_threat_level_are_checked_when_the_event_holds_them() -> None:
    """MISP's answer does not usually carry them, but when the `Event` does, an unpublished
    event or another threat level is left out here too."""
    attributes = [
        {"id": "1", "type": "domain", "value": "draft.example", "Event": {"published": False}},
        {"id": "2", "type": "domain", "value": "low.example", "Event": {"threat_level_id": "3"}},
        {
            "id": "3",
            "type": "domain",
            "value": "high.example",
            "Event": {"published": "1", "threat_level_id": 1},
        },
        {"id": "4", "type": "domain", "value": "unknown.example", "Event": {"id": "9"}},
    ]
    fake = fake_with(0)
    fake.script(Fault.json({"response": {"Attribute": attributes}}))
    client = filtered_client(fake, threat_levels=(1, 2), enforce_warninglists=False)
    assert values(result_of(client.fetch())) == ["high.example", "unknown.example"]
    assert client.last_stats.filtered == {"unpublished": 1, "threat-level": 1}


def test_decayed_attributes_are_left_out_even_when_misp_keeps_them() -> None:
    """exclude_decayed: when MISP sends the scores but ignores excludeDecayed, an attribute
    every model finds decayed is still left out here; one no model scores is kept."""
    fake = FakeMisp(KEY, now=lambda: 1_700_000_000)
    fake.add_attribute("old.example", decayed=True)
    fake.add_attribute("fresh.example", decayed=False)
    fake.add_attribute("unscored.example")
    fake.ignored_filters = {"excludeDecayed"}
    client = filtered_client(fake, exclude_decayed=True)
    assert values(result_of(client.fetch())) == ["fresh.example", "unscored.example"]
    assert client.last_stats.filtered == {"decayed": 1}


def test_paging_goes_on_past_pages_emptied_by_exclude_decayed() -> None:
    """MISP drops decayed attributes after its limit: pages come back short, or empty when
    every attribute on them decayed. Neither ends the fetch; only a page that is empty also
    without MISP's after-limit filters does."""
    fake = FakeMisp(KEY, now=lambda: 1_700_000_000)
    for value in ["o1", "o2", "fresh-1", "o3", "o4", "o5", "o6", "fresh-2", "o7"]:
        fake.add_attribute(f"{value}.example", decayed=not value.startswith("fresh"))
    client = filtered_client(fake, exclude_decayed=True, pagination_limit=2)
    assert values(result_of(client.fetch())) == ["fresh-1.example", "fresh-2.example"]
    asked = [(r.json()["page"], "excludeDecayed" in r.json()) for r in fake.requests]
    assert asked == [
        (1, True),
        (1, False),
        (2, True),
        (3, True),
        (3, False),
        (4, True),
        (5, True),
        (5, False),
        (6, True),
        (6, False),
    ]
    assert (client.last_stats.pages, client.last_stats.emptied_pages) == (2, 3)
    assert client.last_stats.filtered == {}


@unless_present(WARNINGLISTS, "the real MISP warninglists in ../shared/data")
def test_paging_goes_on_past_pages_emptied_by_warninglists() -> None:
    """A page holding only names on MISP's enabled warninglists (the real Tranco list here)
    comes back empty; the fetch goes on to the malicious names after it."""
    fake = FakeMisp(KEY, now=lambda: 1_700_000_000)
    fake.warninglists = [load_warninglist(WARNINGLISTS / "tranco10k.json")]
    fake.add_values(
        ["google.com", "youtube.com", "evil-1.example", "mail.google.com", "evil-2.example"]
    )
    client = filtered_client(fake, pagination_limit=2)
    assert values(result_of(client.fetch())) == ["evil-1.example", "evil-2.example"]
    assert client.last_stats.emptied_pages == 1


def test_without_after_limit_filters_an_empty_page_is_the_end() -> None:
    """With enforce_warninglists and exclude_decayed off, nothing is asked again."""
    fake = fake_with(3)
    client = filtered_client(fake, enforce_warninglists=False, pagination_limit=2)
    assert len(result_of(client.fetch())) == 3
    assert [r.json()["page"] for r in fake.requests] == [1, 2, 3]


# -- parsing -----------------------------------------------------------------------------


def test_attribute_fields_become_a_raw_indicator() -> None:
    """Value, type, flags, string timestamps, ISO first/last_seen and the Event are all kept."""
    fake = FakeMisp(KEY, now=lambda: 1_700_000_000)
    event = fake.add_event("phishing wave", uuid="5f0c4a1e-0000-4000-8000-000000000001")
    attribute = fake.add_attribute(
        "Evil.Example.",
        "hostname",
        event=event,
        timestamp=1_699_999_000,
        first_seen="2023-03-29T00:00:00.000000+00:00",
        last_seen=1_699_000_000.5,
        uuid="5f0c4a1e-0000-4000-8000-0000000000aa",
    )
    [found] = result_of(client_for(fake).fetch())
    assert found == RawIndicator(
        value="Evil.Example.",
        type="hostname",
        to_ids=True,
        deleted=False,
        timestamp=1_699_999_000,
        first_seen=1_680_048_000.0,
        last_seen=1_699_000_000.5,
        event_id=event["id"],
        event_uuid="5f0c4a1e-0000-4000-8000-000000000001",
        event_info="phishing wave",
        attribute_uuid=attribute["uuid"],
    )


def test_malformed_attributes_are_skipped_and_counted() -> None:
    """A wrongly shaped attribute is skipped and counted by field; the others still arrive."""
    good = {"id": "9", "type": "domain", "value": "ok.example", "to_ids": True}
    page = [
        good,
        {"id": "1", "type": "domain", "value": 42},
        {"id": "2", "value": "no-type.example"},
        {"id": "3", "type": "domain", "value": "x.example", "to_ids": "maybe"},
        {"id": "4", "type": "domain", "value": "x.example", "first_seen": "yesterday"},
        {"id": "5", "type": "domain", "value": "x.example", "timestamp": "12:00"},
        {"id": "6", "type": "domain", "value": "x.example", "Event": "1"},
        "not an object",
        {"id": "7", "type": "ip-dst", "value": "192.0.2.1"},
    ]
    fake = fake_with(0)
    fake.script(Fault.json({"response": {"Attribute": page}}))
    client = client_for(fake)
    found = result_of(client.fetch())
    assert values(found) == ["ok.example"]
    stats = client.last_stats
    assert stats.malformed == {
        "value": 1,
        "type": 1,
        "to_ids": 1,
        "first_seen": 1,
        "timestamp": 1,
        "Event": 1,
        "attribute": 1,
    }
    assert (stats.attributes, stats.indicators, stats.other_types) == (9, 1, 1)


def test_seen_times_accept_every_form_misp_uses() -> None:
    """first_seen/last_seen: ISO with Z or offset, naive ISO (UTC), microsecond strings, null."""
    items = [
        {"type": "domain", "value": "a", "first_seen": "2023-03-29T00:00:00Z"},
        {"type": "domain", "value": "b", "first_seen": "2023-03-29T02:00:00+02:00"},
        {"type": "domain", "value": "c", "first_seen": "2023-03-29T00:00:00"},
        {"type": "domain", "value": "d", "first_seen": "1680048000000000"},
        {"type": "domain", "value": "e", "first_seen": None, "last_seen": ""},
    ]
    found = parse_attributes(items, AttributeCounts())
    assert [i.first_seen for i in found] == [1_680_048_000.0] * 4 + [None]
    assert found[-1].last_seen is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_attribute_like = st.fixed_dictionaries(
    {},
    optional={
        "value": st.text(max_size=30) | _json,
        "type": st.sampled_from(["domain", "hostname", "domain|ip", "url"]) | _json,
        "to_ids": st.booleans() | _json,
        "deleted": st.booleans() | _json,
        "timestamp": st.integers(0, 2**40).map(str) | _json,
        "first_seen": st.datetimes().map(lambda d: d.isoformat()) | _json,
        "last_seen": _json,
        "uuid": st.uuids().map(str) | _json,
        "Event": st.fixed_dictionaries({"id": _json, "uuid": _json, "info": _json}) | _json,
    },
)


@given(st.lists(_attribute_like | _json, max_size=10))
def test_parsing_never_raises_and_accounts_for_every_attribute(items: list[object]) -> None:
    """Whatever a hostile server sends as attributes, each is kept, ignored or counted bad."""
    counts = AttributeCounts()
    found = parse_attributes(items, counts)
    assert counts.attributes == len(items)
    assert counts.indicators == len(found)
    assert counts.indicators + counts.other_types + counts.skipped == len(items)
    for indicator in found:
        assert isinstance(indicator.value, str)
        assert indicator.type in ("domain", "hostname", "domain|ip")
        for moment in (indicator.first_seen, indicator.last_seen):
            assert moment is None or math.isfinite(moment)


# -- failures that end the fetch -----------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault.garbage(),
        Fault.json({"response": {"Attribute": {"0": {}}}}),
        Fault.json({"Attribute": []}),
        Fault.json([]),
        Fault(200, body=b'{"response": {"Attribute": [trunc'),
        Fault(200, body=b'{"response": {"Attribute": [{"id": "1"}, {"id": '),
        Fault(200, body=b'{"response": {"Attribute": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}}"),
        Fault(200, body=b'{"response": {"Attribute": []}} {"more": 1}'),
    ],
    ids=[
        "html",
        "attribute-object",
        "no-response",
        "array",
        "truncated-json",
        "truncated-after-an-attribute",
        "nested-too-deep",
        "trailing-data",
    ],
)
def test_unusable_body_fails_the_fetch_without_retry(fault: Fault) -> None:
    """A body that is not JSON or not {"response": {"Attribute": [...]}} fails the fetch at once."""
    fake = fake_with(3)
    fake.script(fault)
    client = client_for(fake)
    failure_of(client.fetch(), MispResponseError)
    assert len(fake.requests) == 1


_PAGE = {
    "response": {
        "Attribute": [dict(a, Event={"id": "7"}) for a in fake_with(4).attributes]
        + [{"type": "domain", "value": ["not", "a", "string"]}, "not an attribute"]
    }
}


def _served_as(layout: Callable[[dict[str, Any]], bytes]) -> tuple[list[RawIndicator], Any]:
    """The indicators and counts a client gets from `_PAGE` laid out by `layout`, then an
    empty page."""
    fake = fake_with(0)
    fake.script(Fault(200, body=layout(_PAGE)), Fault.json({"response": []}))
    client = client_for(fake)
    return result_of(client.fetch()), client.last_stats


@pytest.mark.parametrize(
    "layout",
    [
        lambda page: json.dumps(page, indent=2).encode(),
        lambda page: json.dumps({"extra": [1, {"x": None}], **page}).encode(),
        lambda page: b"\xef\xbb\xbf" + json.dumps(page).encode(),
        lambda page: json.dumps(page, ensure_ascii=False).encode("utf-16"),
    ],
    ids=["indented", "other-keys-first", "utf-8-bom", "utf-16"],
)
def test_any_layout_of_a_page_gives_the_same_indicators(
    layout: Callable[[dict[str, Any]], bytes],
) -> None:
    """Pages are read one attribute at a time, or whole when their layout needs it (a BOM,
    UTF-16): either way, the same indicators as from the plain answer."""
    plain, counts = _served_as(lambda page: json.dumps(page).encode())
    assert len(plain) == 4
    assert (counts.attributes, counts.malformed) == (6, {"value": 1, "attribute": 1})
    assert _served_as(layout) == (plain, counts)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_fails_at_once_naming_status_not_key(status: int) -> None:
    """401/403 are not retried; the error names the status and MISP's message, never the key."""
    fake = FakeMisp("another-key")
    if status == 401:
        fake.script(Fault.json({"name": "Unauthorized", "message": "Key expired"}, status=401))
    client = client_for(fake)
    error = failure_of(client.fetch(), MispAuthError)
    assert len(fake.requests) == 1
    assert f"HTTP {status}" in str(error)
    assert ("Key expired" if status == 401 else "Authentication failed") in str(error)
    assert KEY not in str(error)
    assert KEY not in repr(client)


@pytest.mark.parametrize("status", [403, 503, 200])
def test_a_key_echoed_by_the_server_is_redacted(status: int) -> None:
    """A server repeating the key in an error never gets it into our errors or log lines."""
    fake = fake_with(0)
    payload = {"name": "x", "message": f"bad key {KEY}"} if status != 200 else {KEY: []}
    echo = Fault.json(payload, status=status)
    fake.script(*[echo] * 3)
    clock = Clock()
    with capturedLogs() as events:
        fetched = client_for(fake, clock).fetch()
        clock.pump([1, 2])
    error = failure_of(fetched, MispAuthError if status == 403 else Exception)
    assert KEY not in str(error) and "<api key>" in str(error)
    assert all(KEY not in str(event) for event in events)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(status: int) -> None:
    """A redirect (even to the same fake) is never followed: the key is never resent."""
    fake = fake_with(2)
    fake.script(Fault.redirect("https://elsewhere.test/attributes/restSearch", status))
    error = failure_of(client_for(fake).fetch(), MispResponseError)
    assert len(fake.requests) == 1
    assert f"HTTP {status}" in str(error)
    assert "elsewhere.test" in str(error)


def test_other_client_errors_fail_without_retry() -> None:
    """A 400 (bad filter) is not retried and names MISP's message."""
    fake = fake_with(0)
    fake.script(Fault.json({"name": "Bad", "message": "Invalid filter"}, status=400))
    error = failure_of(client_for(fake).fetch(), MispResponseError)
    assert "HTTP 400" in str(error) and "Invalid filter" in str(error)
    assert len(fake.requests) == 1


def test_an_announced_oversized_body_is_refused() -> None:
    """A Content-Length over the cap fails the fetch without reading the body."""
    fake = fake_with(50)
    error = failure_of(client_for(fake, max_response_bytes=2000).fetch(), MispResponseError)
    assert "2000-byte cap" in str(error)


class _Streaming(Resource):
    """Answers with a chunked body of `chunks` pieces of 1 KiB (no Content-Length)."""

    isLeaf = True

    def __init__(self, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks

    def render_POST(self, request: Any) -> int:
        request.setHeader(b"Content-Type", b"application/json")
        for _ in range(self.chunks):
            request.write(b" " * 1024)
        request.finish()
        return NOT_DONE_YET


def test_a_streamed_oversized_body_is_cut_off() -> None:
    """Without Content-Length, the body is counted as it arrives and refused past the cap."""
    client = client_for(_Streaming(64), max_response_bytes=10_000)
    error = failure_of(client.fetch(), MispResponseError)
    assert "10000-byte cap" in str(error)


# -- retries -------------------------------------------------------------------------------


def test_server_errors_are_retried_with_exponential_backoff() -> None:
    """A 500 then a 502 cost a 1 s then a 2 s wait (jitter factor 1), and the page then loads."""
    fake = fake_with(3)
    fake.script(Fault.server_error(500), Fault.server_error(502))
    clock = Clock()
    client = client_for(fake, clock)
    fetched = client.fetch()
    assert len(fake.requests) == 1 and not fetched.called
    clock.advance(0.99)
    assert len(fake.requests) == 1
    clock.advance(0.01)
    assert len(fake.requests) == 2
    clock.advance(1.99)
    assert len(fake.requests) == 2
    clock.advance(0.01)
    assert len(values(result_of(fetched))) == 3
    assert (client.last_stats.retries, client.last_stats.requests) == (2, 5)


def test_only_the_failed_page_is_retried() -> None:
    """A failure on page 2 retries page 2; page 1 is not fetched again."""
    fake = fake_with(4)
    fake.script(None, Fault.server_error(503))
    clock = Clock()
    fetched = client_for(fake, clock, pagination_limit=2).fetch()
    clock.advance(1)
    assert len(result_of(fetched)) == 4
    assert [r.json()["page"] for r in fake.requests] == [1, 2, 2, 3, 3]


def test_three_failed_attempts_fail_the_fetch() -> None:
    """After three failed attempts at a page, the fetch fails naming the last cause."""
    fake = fake_with(3)
    fake.script(*[Fault.server_error(500)] * 3)
    clock = Clock()
    fetched = client_for(fake, clock).fetch()
    clock.pump([1, 2])
    error = failure_of(fetched, MispUnavailableError)
    assert "HTTP 500" in str(error) and "3 attempts" in str(error)
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("fault", "wait"),
    [
        (Fault.rate_limited(retry_after="7"), 7.0),
        (Fault.rate_limited(reset="12"), 12.0),
        (Fault.rate_limited(retry_after="Thu, 01 Jan 1970 00:00:20 GMT"), 20.0),
        (Fault.rate_limited(retry_after="3600"), 60.0),
        (Fault.rate_limited(), 1.0),
    ],
    ids=["retry-after", "x-rate-limit-reset", "http-date", "capped", "no-header"],
)
def test_rate_limiting_waits_as_asked(fault: Fault, wait: float) -> None:
    """A 429 waits for Retry-After / X-Rate-Limit-Reset (capped at 60 s), else the backoff."""
    fake = fake_with(1)
    fake.script(fault)
    clock = Clock()
    fetched = client_for(fake, clock).fetch()
    clock.advance(wait - 0.01)
    assert len(fake.requests) == 1
    clock.advance(0.01)
    assert len(result_of(fetched)) == 1


@pytest.mark.parametrize(("random", "wait"), [(0.0, 0.5), (0.999, 1.499)])
def test_backoff_jitter_comes_from_the_injected_random(random: float, wait: float) -> None:
    """The first retry waits 1 s scaled by 0.5 + random(), so clients do not retry in step."""
    fake = fake_with(1)
    fake.script(Fault.server_error())
    clock = Clock()
    fetched = client_for(fake, clock, random=lambda: random).fetch()
    clock.advance(wait - 0.002)
    assert len(fake.requests) == 1
    clock.advance(0.004)
    assert len(result_of(fetched)) == 1


def test_a_hanging_request_times_out_and_is_retried() -> None:
    """A request without an answer is abandoned after `timeout` and tried again."""
    fake = fake_with(2)
    fake.script(Fault.hanging())
    clock = Clock()
    http = StubTreq(fake)
    fetched = client_for(fake, clock, http=http, timeout=10).fetch()
    clock.advance(9.9)
    http.flush()
    assert not fetched.called and len(fake.hanging) == 1
    clock.advance(0.1)
    http.flush()
    assert fake.hanging == []  # our side closed the connection
    clock.advance(1)
    assert len(result_of(fetched)) == 2


class _RefusingFirst:
    """A treq-like client whose first `refusals` requests cannot connect."""

    def __init__(self, inner: StubTreq, refusals: int) -> None:
        self.inner = inner
        self.refusals = refusals

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self.refusals:
            self.refusals -= 1
            return defer.fail(ConnectionRefusedError("127.0.0.1", 443))
        return self.inner.request(*args, **kwargs)


def test_connection_errors_are_retried() -> None:
    """A refused connection is retried like a 5xx, and its cause is logged without the key."""
    fake = fake_with(1)
    clock = Clock()
    client = client_for(fake, clock, http=_RefusingFirst(StubTreq(fake), 1))
    with capturedLogs() as events:
        fetched = client.fetch()
        clock.advance(1)
    assert len(result_of(fetched)) == 1
    text = " ".join(str(e.get("reason", "")) for e in events)
    assert "Connection was refused" in text
    assert all(KEY not in repr(event) for event in events)


def test_connection_errors_exhausted_fail_as_unavailable() -> None:
    """MISP down for every attempt fails the fetch with MispUnavailableError."""
    clock = Clock()
    fake = fake_with(1)
    fetched = client_for(fake, clock, http=_RefusingFirst(StubTreq(fake), 3)).fetch()
    clock.pump([1, 2])
    assert "refused" in str(failure_of(fetched, MispUnavailableError)).lower()


# -- building from the config --------------------------------------------------------------


def test_from_options_reads_the_key_file_and_settings(tmp_path: Path) -> None:
    """api_key_file is read when the client is built (whitespace stripped) and sent as is."""
    key_file = tmp_path / "misp.key"
    key_file.write_text(f"  {KEY}\n")
    options = MispOptions(
        server_url="https://misp.test/", api_key_file=str(key_file), pagination_limit=7
    )
    fake = fake_with(8)
    client = MispClient.from_options(options, StubTreq(fake), Clock())
    assert len(result_of(client.fetch())) == 8
    assert fake.requests[0].headers["authorization"] == KEY
    assert fake.requests[0].json()["limit"] == 7
    assert client.url == "https://misp.test/attributes/restSearch"


def test_from_options_gives_up_a_request_after_request_timeout() -> None:
    """request_timeout = "5s": a MISP that never answers is abandoned after 5 s, not 60 s."""
    options = MispOptions(server_url=URL, api_key=KEY, request_timeout=Duration(5))
    fake = fake_with(1)
    fake.script(Fault.hanging())
    clock = Clock()
    http = StubTreq(fake)
    fetched = MispClient.from_options(options, http, clock, random=lambda: 0.5).fetch()
    clock.advance(4.9)
    http.flush()
    assert len(fake.hanging) == 1
    clock.advance(0.1)
    http.flush()
    assert fake.hanging == []
    clock.advance(1)
    assert len(result_of(fetched)) == 1


def test_an_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing key file is a ConfigError naming the file."""
    options = MispOptions(server_url=URL, api_key_file=str(tmp_path / "absent.key"))
    with pytest.raises(ConfigError, match=r"absent\.key.*cannot read"):
        MispClient.from_options(options, StubTreq(fake_with(0)), Clock())


# -- the real feed through the fake ---------------------------------------------------------


@unless_present(FEED, "the real MISP feed in ../shared/data")
def test_the_real_feed_arrives_whole() -> None:
    """Every domain attribute of the real Infoblox feed arrives, through 13 pages of 5000.

    Fourteen pages are asked for (the fourteenth is empty) and, since warninglists are
    enforced by default, the empty end is asked once more without them to tell the end
    from a page MISP's filters emptied: 15 requests.
    """
    fake = FakeMisp.from_feed(FEED, KEY, now=lambda: 1_715_800_000)
    client = client_for(fake, max_ioc_age=3650 * 86400)
    found = result_of(client.fetch())
    assert len(found) == 60_479
    assert {i.type for i in found} == {"domain"}
    assert client.last_stats == FetchStats(
        attributes=60_479, indicators=60_479, pages=13, requests=15
    )
    assert all(i.event_info and i.event_uuid and i.first_seen for i in found)


# -- TLS, for real on loopback -------------------------------------------------------------


@implementer(IOpenSSLContextFactory)
class _ServerTLS:
    """A server TLS context from a PEM file holding the key and then the certificate."""

    def __init__(self, pem: Path) -> None:
        from OpenSSL import SSL

        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate_chain_file(str(pem))
        self.context.use_privatekey_file(str(pem))

    def getContext(self) -> Any:
        return self.context


@pytest_twisted.ensureDeferred
async def test_tls_is_validated_unless_disabled(tmp_path: Path) -> None:
    """A self-signed MISP is refused at once by default; with validation off it works, warned."""
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool
    from twisted.web.server import Site

    fake = fake_with(2)
    tls = _ServerTLS(self_signed(tmp_path / "misp.pem", "localhost"))
    port = reactor.listenSSL(0, Site(fake), tls, interface="127.0.0.1")
    url = f"https://localhost:{port.getHost().port}"
    try:
        pool = HTTPConnectionPool(reactor, persistent=False)
        checked = MispClient(url, KEY, make_http_client(reactor, pool=pool), reactor, attempts=3)
        error = await _failed(checked.fetch())
        assert isinstance(error, MispUnavailableError)
        assert "certificate verify failed" in str(error)
        assert "gave up" not in str(error)  # a bad certificate is not retried
        assert fake.requests == []

        with capturedLogs() as events:
            http = make_http_client(reactor, verify_tls=False, pool=pool)
        assert any("validation is disabled" in str(e.get("log_format")) for e in events)
        unchecked = MispClient(url, KEY, http, reactor, attempts=1)
        assert len(await unchecked.fetch()) == 2
        assert fake.requests[0].headers["host"].startswith("localhost")
    finally:
        await port.stopListening()


async def _failed(deferred: Deferred[Any]) -> BaseException:
    try:
        await deferred
    except Exception as exc:
        return exc
    raise AssertionError("expected the fetch to fail")


class _SliceCountingClock(Clock):
    """A Clock that counts the calls asked for at once: the slices handed to the reactor."""

    def __init__(self) -> None:
        super().__init__()
        self.slices = 0

    def callLater(self, delay: float, *args: Any, **kwargs: Any) -> Any:
        if delay == 0:
            self.slices += 1
        return super().callLater(delay, *args, **kwargs)


def test_a_page_is_parsed_in_slices_with_the_reactor_between_them() -> None:
    """A big page is parsed in many short slices on the reactor (which answers queries
    between two), and gives the same indicators and counts as parsed at once."""
    clock = _SliceCountingClock()
    sliced = client_for(
        fake_with(300),
        clock,
        pagination_limit=1000,
        run_steps=sliced_runner(clock, slice_seconds=0.5, timer=itertools.count().__next__),
    )
    found = sliced.fetch()
    clock.advance(0)
    at_once = client_for(fake_with(300), pagination_limit=1000)
    assert values(result_of(found)) == values(result_of(at_once.fetch()))
    assert sliced.last_stats == at_once.last_stats
    assert clock.slices > 300 // 64
