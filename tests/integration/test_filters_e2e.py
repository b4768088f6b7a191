"""MISP's own filters end to end: twistd-started misp-dns, the MISP stand-in, real Unbound.

A `misp` policy with tags, excluded tags, threat levels and decay (and warninglists enforced
by default, the stand-in's MISP having the real Tranco list enabled) blocks exactly what it
should, pages past the pages MISP's filters empty, and never blocks more when MISP ignores
a filter. A `misp-feed` policy with the real Tranco and dynamic DNS warninglists leaves their
names alone and logs the counts by list name. dnspython asks, strictly parsing the answers.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA, free_port

from .misp_stand_in import (
    MispStandIn,
    is_blocked,
    is_forwarded,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    start_misp_dns,
    write_config,
)
from .net import wait_until
from .server import MispDnsProcess, check_config
from .unbound import UnboundProcess

REPO = Path(__file__).resolve().parents[2]
SAMPLE_FEED = REPO / "etc" / "sample-feed"
WARNINGLISTS = SHARED_DATA / "warninglists"
TRANCO = WARNINGLISTS / "tranco10k.json"
DYNAMIC_DNS = WARNINGLISTS / "dynamic-dns.json"
API_KEY = "fI1tErSfI1tErSfI1tErSfI1tErSfI1tErSfI1t"  # 40 characters, like MISP's

RED = {"info": "red", "tags": ["tlp:red"], "threat_level_id": 1}
WHITE = {"info": "white", "tags": ["tlp:white"], "threat_level_id": 1}
LOW = {"info": "low", "tags": ["tlp:red"], "threat_level_id": 3}
DRAFT = {"info": "draft", "tags": ["tlp:red"], "threat_level_id": 1, "published": False}
#: In id order. With 2 attributes a page, MISP's SQL pages (tags, levels and publishing are
#: SQL conditions) are [google, youtube] (both then warninglisted: an empty page),
#: [red-1, old] (old then decayed: a short page), [red-2], and an empty page.
ATTRIBUTES: list[dict[str, Any]] = [
    {"value": "google.com", "event": RED},
    {"value": "youtube.com", "event": RED},
    {"value": "red-1.filters.test", "event": RED},
    {"value": "white.filters.test", "event": WHITE},
    {"value": "low.filters.test", "event": LOW},
    {"value": "draft.filters.test", "event": DRAFT},
    {"value": "red-fp.filters.test", "event": RED, "tags": ["false-positive"]},
    {"value": "old.filters.test", "event": RED, "decayed": True},
    {"value": "red-2.filters.test", "event": RED},
]
BLOCKED = ["red-1.filters.test.", "red-2.filters.test."]
NOT_BLOCKED = [
    "google.com.",
    "www.youtube.com.",
    "white.filters.test.",
    "low.filters.test.",
    "draft.filters.test.",
    "red-fp.filters.test.",
    "old.filters.test.",
]
FILTERS = {
    "tags": ["tlp:red"],
    "exclude_tags": ["false-positive"],
    "threat_levels": [1, 2],
    "exclude_decayed": True,
    "pagination_limit": 2,
}


def _require(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.fail(f"the real MISP data is missing: {path}", pytrace=False)


@pytest.fixture(scope="module")
def filtering_misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """The stand-in holding ATTRIBUTES, with the real Tranco warninglist enabled."""
    _require(TRANCO)
    workdir = tmp_path_factory.mktemp("filtering-misp")
    with MispStandIn(
        workdir, api_key=API_KEY, attributes=ATTRIBUTES, warninglists=[TRANCO]
    ) as stand_in:
        yield stand_in


def _server(
    workdir: Path, unbound: UnboundProcess, stand_in: MispStandIn, **options: Any
) -> MispDnsProcess:
    policy = misp_policy(stand_in.url, key_file(workdir, API_KEY), **options)
    process = start_misp_dns(workdir / "server", unbound.address, [policy], port=free_port())
    first = BLOCKED[0]
    wait_until(lambda: is_blocked(process, first, first.rstrip(".")), 20, 0.1, "the first fetch")
    return process


def test_misp_filters_block_exactly_what_they_keep(
    tmp_path: Path, unbound: UnboundProcess, filtering_misp: MispStandIn
) -> None:
    """tags, exclude_tags, threat_levels, exclude_decayed, and the default published_only and
    enforce_warninglists: only the two tlp:red, high-threat, published, undecayed names off
    the warninglist are blocked, although a page came back empty and another short."""
    process = _server(tmp_path, unbound, filtering_misp, **FILTERS)
    try:
        assert [name for name in BLOCKED if not is_blocked(process, name, name.rstrip("."))] == []
        assert [name for name in NOT_BLOCKED if not is_forwarded(process, name)] == []
        log = process.log_text(limit=1 << 20)
        assert re.search(r"2 indicators from 2 attributes in 2 pages", log), log
        assert "pages MISP's filters emptied: 1" in log, log
        assert "should have left out" not in log
    finally:
        process.stop()
    asked = [(r["page"], r["status"]) for r in filtering_misp.requests()]
    assert asked[:5] == [(1, 200), (1, 200), (2, 200), (3, 200), (4, 200)], asked


def test_a_misp_ignoring_the_tag_filter_does_not_widen_blocking(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> None:
    """The stand-in ignores `tags` and sends the tlp:white and false-positive attributes
    anyway: misp-dns still does not block them, and says so in its log."""
    _require(TRANCO)
    workdir = tmp_path_factory.mktemp("ignoring-misp")
    with MispStandIn(
        workdir, api_key=API_KEY, attributes=ATTRIBUTES, warninglists=[TRANCO]
    ) as stand_in:
        stand_in.control(ignore_filters=["tags"])
        process = _server(workdir, unbound, stand_in, **FILTERS)
        try:
            assert all(is_blocked(process, name, name.rstrip(".")) for name in BLOCKED)
            for name in ("white.filters.test.", "red-fp.filters.test."):
                assert is_forwarded(process, name), name
            log = process.log_text(limit=1 << 20)
            assert "no-wanted-tag" in log and "excluded-tag" in log, log
            assert re.search(r"sent 2 attributes that its filters should have left out", log)
        finally:
            process.stop()


# -- a feed with warninglists ----------------------------------------------------------------


@pytest.fixture
def feed_with_top_sites(tmp_path: Path) -> Path:
    """A copy of etc/sample-feed whose first event also lists google.com and
    login.google.com (it already lists cbox4.ignorelist.com, a dynamic DNS name, twice)."""
    target = tmp_path / "feed"
    shutil.copytree(SAMPLE_FEED, target)
    first = next(iter(json.loads((target / "manifest.json").read_text())))
    path = target / f"{first}.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    template = document["Event"]["Attribute"][0]
    for index, value in enumerate(["google.com", "login.google.com"]):
        document["Event"]["Attribute"].append(dict(template, value=value, uuid=f"top-{index}"))
    path.write_text(json.dumps(document), encoding="utf-8")
    return target


def test_feed_warninglists_leave_their_names_alone_and_log_counts_by_list(
    tmp_path: Path, unbound: UnboundProcess, feed_with_top_sites: Path
) -> None:
    """With the real Tranco and dynamic DNS lists, the feed's names on them are forwarded,
    the rest of the feed is blocked, and the log names each list with what it dropped."""
    _require(TRANCO, DYNAMIC_DNS)
    policy = {
        "type": "misp-feed",
        "url": str(feed_with_top_sites),
        "max_ioc_age": "3650d",
        "warninglists": [str(TRANCO), str(DYNAMIC_DNS)],
    }
    process = start_misp_dns(tmp_path / "server", unbound.address, [policy], port=free_port())
    try:
        wait_until(lambda: "warninglist" in process.log_text(), 20, 0.1, "the first read")
        for name in ("google.com.", "login.google.com.", "cbox4.ignorelist.com."):
            assert is_forwarded(process, name), name
        assert is_blocked(process, "claudfront.net.", source="misp-feed")
        log = process.log_text(limit=1 << 20)
        expected = (
            "4 indicators dropped for being on a warninglist (Top 10K most-used sites from"
            " Tranco: 2, List of known dynamic DNS domains: 2)"
        )
        assert expected in log, log
    finally:
        process.stop()


def test_check_config_names_a_missing_warninglist(tmp_path: Path) -> None:
    """`--check-config` reads the lists: a missing one is one line naming the table, the key
    and the file, with no traceback and a non-zero status."""
    gone = tmp_path / "gone.json"
    policy = {"type": "misp-feed", "url": str(SAMPLE_FEED), "warninglists": [str(gone)]}
    server = {"state_dir": str(tmp_path / "state")}
    config = write_config(tmp_path / "misp-dns.toml", server, [policy])
    done = check_config(config, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout
    assert f"policy[0]: warninglists[0]: {gone}: cannot read" in done.stdout, done.stdout
