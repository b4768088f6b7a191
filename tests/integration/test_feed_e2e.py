"""The `misp-feed` policy end to end: twistd-started misp-dns reading a MISP feed.

The feed is a copy of `etc/sample-feed` (a slice of a real published feed) in a temporary
folder, read as a directory or served over HTTP by the stand-in; and `make run`'s own
config, `etc/misp-dns.toml`, with only its listen address, upstreams and state_dir changed.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from misp_dns.intel.normalize import InvalidIndicator, normalize_name

from .misp_stand_in import (
    MispStandIn,
    ask_many,
    blocked_problems,
    forwarded_problems,
    is_blocked,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    report,
    start_misp_dns,
    watch,
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import WWW, WWW_A, UnboundProcess
from .wire import ask_tcp, ask_udp, make_query, parse

REPO = Path(__file__).resolve().parents[2]
SAMPLE_FEED = REPO / "etc" / "sample-feed"
SOURCE = "misp-feed"
DAY = 86400


def _report(indicator: str) -> str:
    return report(indicator, SOURCE)


def _feed_policy(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "misp-feed", "url": url, "max_ioc_age": "3650d"} | options


def _is_blocked(process: MispDnsProcess, name: str, indicator: str | None = None) -> bool:
    return is_blocked(process, name, indicator, source=SOURCE)


def _sample_domains() -> list[str]:
    """The names the sample feed blocks, normalised by the spec'd normaliser."""
    names: dict[str, None] = {}
    for path in sorted(SAMPLE_FEED.glob("*.json")):
        if path.name == "manifest.json":
            continue
        for attribute in json.loads(path.read_text(encoding="utf-8"))["Event"]["Attribute"]:
            if attribute["type"] not in ("domain", "hostname", "domain|ip"):
                continue
            if not attribute.get("to_ids", True) or attribute.get("deleted", False):
                continue
            try:
                names[normalize_name(attribute["value"].partition("|")[0])] = None
            except InvalidIndicator:
                continue
    return list(names)


def _check_all(process: MispDnsProcess, names: list[str]) -> None:
    replies = ask_many(process.address, [make_query(name, "A", edns=0) for name in names])
    failures = []
    for name, wire in zip(names, replies, strict=True):
        problems = (
            ["no reply"] if wire is None else blocked_problems(parse(wire), name, _report(name))
        )
        if problems:
            failures.append(f"{name}: {problems}")
    assert not failures, f"{len(failures)} of {len(names)} wrong: {failures[:5]}"


@pytest.fixture(scope="module")
def sample_domains() -> list[str]:
    """The sample feed's valid domains (about a hundred)."""
    names = _sample_domains()
    assert len(names) > 50
    return names


@pytest.fixture(scope="module")
def feed_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of etc/sample-feed in a temporary folder."""
    target = tmp_path_factory.mktemp("feed") / "sample-feed"
    shutil.copytree(SAMPLE_FEED, target)
    return target


@pytest.fixture(scope="module")
def feed_server(
    tmp_path_factory: pytest.TempPathFactory,
    unbound: UnboundProcess,
    feed_copy: Path,
    sample_domains: list[str],
) -> Iterator[MispDnsProcess]:
    """misp-dns with a `misp-feed` policy on the copied folder, once it blocks."""
    workdir = tmp_path_factory.mktemp("feed-server")
    policy = _feed_policy(str(feed_copy))
    process = start_misp_dns(workdir, unbound.address, [policy], port=free_port())
    wait_until(lambda: _is_blocked(process, sample_domains[0]), 20, 0.1, "the feed blocked")
    yield process
    process.stop()


def test_feed_directory_domains_are_blocked(
    feed_server: MispDnsProcess, sample_domains: list[str]
) -> None:
    """Every domain of a feed folder gets the blocked answer with
    `source=misp-feed;domain=<name>`, and so do the names below it."""
    _check_all(feed_server, sample_domains)
    for name in sample_domains[::10]:
        sub = f"deep.sub.{name}"
        response = ask_udp(make_query(sub, "AAAA", edns=0), feed_server.address)
        assert blocked_problems(response, sub, _report(name), qtype="AAAA") == []


def test_feed_txt_report_over_udp_and_tcp(
    feed_server: MispDnsProcess, sample_domains: list[str]
) -> None:
    """A TXT query for a feed domain gets the report, over UDP and TCP, with and without
    EDNS; other names still resolve through the upstream."""
    name = sample_domains[3]
    for ask in (ask_udp, ask_tcp):
        for edns in (0, None):
            response = ask(make_query(name, "TXT", edns=edns), feed_server.address)
            problems = blocked_problems(response, name, _report(name), qtype="TXT", edns=edns == 0)
            assert problems == [], (ask.__name__, edns)
    response = ask_udp(make_query(WWW, "A", edns=0), feed_server.address)
    assert forwarded_problems(response) == []
    assert [r.to_text() for rrset in response.answer for r in rrset] == [WWW_A]


@pytest.fixture(scope="module")
def feed_web(tmp_path_factory: pytest.TempPathFactory, feed_copy: Path) -> Iterator[MispStandIn]:
    """A web server holding the sample feed under /feed/."""
    with MispStandIn(tmp_path_factory.mktemp("feed-web"), feed_http=feed_copy) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def http_feed_server(
    tmp_path_factory: pytest.TempPathFactory,
    unbound: UnboundProcess,
    feed_web: MispStandIn,
    sample_domains: list[str],
) -> Iterator[MispDnsProcess]:
    """misp-dns reading the feed over HTTP every 2 s, once it blocks."""
    policy = _feed_policy(f"{feed_web.url}/feed/", update_interval=HTTP_INTERVAL)
    workdir = tmp_path_factory.mktemp("http-feed-server")
    process = start_misp_dns(workdir, unbound.address, [policy], port=free_port())
    wait_until(lambda: _is_blocked(process, sample_domains[0]), 20, 0.1, "blocking")
    yield process
    process.stop()


#: How often the HTTP feed is read again (an undocumented but accepted "s" unit).
HTTP_INTERVAL = "2s"


def test_feed_over_http_is_blocked(
    http_feed_server: MispDnsProcess, sample_domains: list[str]
) -> None:
    """A feed given as an http:// URL (manifest.json and event files served by a web
    server) blocks the same names as the folder."""
    _check_all(http_feed_server, sample_domains)


def _fetched_since(web: MispStandIn, since: int) -> list[str]:
    return [entry["path"].rsplit("/", 1)[-1] for entry in web.requests()[since:]]


def test_feed_refresh_fetches_only_changed_events(
    http_feed_server: MispDnsProcess, feed_web: MispStandIn, feed_copy: Path
) -> None:
    """A refresh reads manifest.json and only the events whose manifest timestamp changed;
    a domain added to a changed event is blocked after the next refresh."""
    since = len(feed_web.requests())
    wait_until(
        lambda: _fetched_since(feed_web, since).count("manifest.json") >= 2,
        10,
        0.1,
        "two refreshes",
    )
    assert set(_fetched_since(feed_web, since)) == {"manifest.json"}

    manifest = json.loads((feed_copy / "manifest.json").read_text())
    event_uuid = sorted(manifest)[0]
    document = json.loads((feed_copy / f"{event_uuid}.json").read_text())
    stamp = int(document["Event"]["timestamp"]) + 1
    attribute = dict(document["Event"]["Attribute"][0])
    attribute |= {"uuid": str(uuid.uuid4()), "value": "added.feed-refresh.test"}
    attribute["timestamp"] = str(stamp)
    document["Event"]["Attribute"].append(attribute)
    document["Event"]["timestamp"] = str(stamp)
    manifest[event_uuid]["timestamp"] = stamp
    since = len(feed_web.requests())
    feed_web.control(
        feed_files={
            f"{event_uuid}.json": json.dumps(document),
            "manifest.json": json.dumps(manifest),
        }
    )
    wait_until(
        lambda: _is_blocked(http_feed_server, "added.feed-refresh.test"),
        10,
        0.1,
        "the added domain blocked",
    )
    assert set(_fetched_since(feed_web, since)) == {"manifest.json", f"{event_uuid}.json"}


def _write_feed(folder: Path, events: list[tuple[int, list[dict[str, Any]]]]) -> None:
    """A MISP feed folder: one event per (timestamp, attributes), and its manifest."""
    folder.mkdir()
    manifest = {}
    for index, (stamp, attributes) in enumerate(events):
        event_uuid = str(uuid.uuid4())
        full = [
            {
                "uuid": str(uuid.uuid4()),
                "category": "Network activity",
                "type": "domain",
                "to_ids": True,
                "timestamp": str(stamp),
                "first_seen": None,
                "last_seen": None,
            }
            | attribute
            for attribute in attributes
        ]
        event = {
            "uuid": event_uuid,
            "info": f"misp-dns freshness test {index}",
            "timestamp": str(stamp),
            "publish_timestamp": str(stamp),
            "Attribute": full,
        }
        (folder / f"{event_uuid}.json").write_text(json.dumps({"Event": event}))
        manifest[event_uuid] = {"info": event["info"], "timestamp": stamp}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_feed_rules_to_ids_deleted_and_age(tmp_path: Path, unbound: UnboundProcess) -> None:
    """In a feed, attributes with `to_ids` off, `deleted`, a `last_seen` older than
    max_ioc_age, or a timestamp older than max_ioc_age (in an event as old) are not blocked;
    fresh ones are, and `hostname` blocks the exact name only."""
    now = int(time.time())
    old = now - 400 * DAY
    iso_old = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(old))
    _write_feed(
        tmp_path / "feed",
        [
            (
                now,
                [
                    {"value": "fresh.feedrules.test"},
                    {"value": "host.feedrules.test", "type": "hostname"},
                    {"value": "notids.feedrules.test", "to_ids": False},
                    {"value": "deleted.feedrules.test", "deleted": True},
                    {"value": "lastseen.feedrules.test", "last_seen": iso_old},
                ],
            ),
            (old, [{"value": "oldstamp.feedrules.test", "timestamp": str(old)}]),
        ],
    )
    policy = _feed_policy(str(tmp_path / "feed"), max_ioc_age="30d")
    process = start_misp_dns(tmp_path / "server", unbound.address, [policy], port=free_port())
    try:
        wait_until(lambda: _is_blocked(process, "fresh.feedrules.test"), 20, 0.1, "blocking")
        assert _is_blocked(process, "host.feedrules.test")
        blocked = []
        for name in (
            "sub.host.feedrules.test",
            "notids.feedrules.test",
            "deleted.feedrules.test",
            "lastseen.feedrules.test",
            "oldstamp.feedrules.test",
        ):
            response = ask_udp(make_query(name, "A", edns=0), process.address)
            if forwarded_problems(response):
                blocked.append(name)
        assert blocked == [], f"blocked although they should not be: {blocked}"
    finally:
        process.stop()


# -- `make run`'s config ------------------------------------------------------------------


def _make_run_config(workdir: Path, port: int, upstream: tuple[str, int]) -> Path:
    """etc/misp-dns.toml with only listen, upstreams and state_dir changed."""
    text = (REPO / "etc" / "misp-dns.toml").read_text(encoding="utf-8")
    replacements = {
        r"(?m)^listen = .*$": f'listen = ["127.0.0.1:{port}"]',
        r"(?m)^upstreams = .*$": f'upstreams = ["{upstream[0]}:{upstream[1]}"]',
        r"(?m)^state_dir = .*$": f'state_dir = "{workdir / "state"}"',
    }
    for pattern, line in replacements.items():
        text, count = re.subn(pattern, line.replace("\\", "\\\\"), text)
        assert count == 1, pattern
    config = workdir / "misp-dns.toml"
    config.write_text(text, encoding="utf-8")
    return config


def test_make_run_config_blocks_claudfront_net(tmp_path: Path, unbound: UnboundProcess) -> None:
    """`make run`'s config (etc/misp-dns.toml, run from a checkout) blocks `claudfront.net`
    from the sample feed: NXDOMAIN with the SOA of misp-dns.local, EDE 15 and a TXT report;
    and every query lands in its query log, var/log/misp-dns/queries.jsonl."""
    shutil.copytree(SAMPLE_FEED, tmp_path / "etc" / "sample-feed")  # url = "etc/sample-feed"
    port = free_port()
    config = _make_run_config(tmp_path, port, unbound.address)
    process = MispDnsProcess(config, [("127.0.0.1", port)], tmp_path)
    process.start()
    watch(process)
    try:
        name = "claudfront.net"
        wait_until(lambda: not _problems(process, name, "A"), 20, 0.1, "claudfront.net blocked")
        assert _problems(process, name, "A") == []
        assert _problems(process, name, "TXT") == []
        response = ask_udp(make_query("www.claudfront.net", "A"), process.address)
        assert (
            blocked_problems(
                response,
                "www.claudfront.net",
                _report(name),
                edns=False,
                server_name="misp-dns.local",
            )
            == []
        )
    finally:
        process.stop()
    query_log = tmp_path / "var" / "log" / "misp-dns" / "queries.jsonl"
    assert query_log.exists(), "the quick-start config writes no query log"
    records = [json.loads(line) for line in query_log.read_text().splitlines()]
    blocked = [r for r in records if r["question"]["questionName"] == "www.claudfront.net"]
    assert [r["responseType"] for r in blocked] == ["Blocked"]


def _problems(process: MispDnsProcess, name: str, qtype: str) -> list[str]:
    response = ask_udp(make_query(name, qtype, edns=0), process.address)
    return blocked_problems(
        response, name, _report(name), qtype=qtype, server_name="misp-dns.local"
    )
