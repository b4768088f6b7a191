"""The `misp` policy end to end: twistd-started misp-dns fed by a MISP stand-in over HTTP.

The stand-in (`misp_stand_in.py`) is `misp_dns.testing.FakeMisp` served for real on
loopback; forwarded names go to the real Unbound of the harness. What is checked is what a
user sees: which names are blocked, the exact blocked answer (dnspython, strictly parsed),
the rules MISP's flags and ages impose, a restart with MISP down, and MISP misbehaving.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from conftest import free_port

from misp_dns.intel.normalize import InvalidIndicator, normalize_name

from .certificates import self_signed
from .misp_stand_in import (
    MispStandIn,
    ask_many,
    blocked_problems,
    blocks_throughout_until,
    forwarded_problems,
    is_blocked,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    report,
    start_misp_dns,
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import NODATA, SOA_SERIAL, WWW, WWW_A, UnboundProcess
from .wire import ask_tcp, ask_udp, make_query, parse

FEED = Path(__file__).resolve().parents[3] / "shared" / "data" / "misp-feed-infoblox"
API_KEY = "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7s"  # 40 characters, like MISP's
SOURCE = "misp-connector"
TTL = 30
DAY = 86400


def _misp_policy(
    stand_in: MispStandIn, directory: Path, *, key: str = API_KEY, **options: Any
) -> dict[str, Any]:
    """A `misp` policy on `stand_in` with `key` in a key file in `directory`."""
    path = key_file(directory, key)
    return misp_policy(stand_in.url, path, pagination_limit=5000, update_interval="1h") | options


def _require_feed() -> None:
    if not (FEED / "manifest.json").exists():
        pytest.fail(f"the real MISP feed is missing: {FEED}", pytrace=False)


def _feed_domains() -> dict[str, str]:
    """normalised name -> one raw value it came from, for every valid feed domain."""
    names: dict[str, str] = {}
    for path in sorted(FEED.glob("*.json")):
        if path.name == "manifest.json":
            continue
        for attribute in json.loads(path.read_text(encoding="utf-8"))["Event"]["Attribute"]:
            if attribute["type"] != "domain" or not attribute.get("to_ids", True):
                continue
            try:
                names.setdefault(normalize_name(attribute["value"]), attribute["value"])
            except InvalidIndicator:
                continue
    return names


# -- 1. the whole real feed ---------------------------------------------------------------


@pytest.fixture(scope="module")
def feed_domains() -> dict[str, str]:
    """Every valid domain of the real feed, normalised by the spec'd normaliser."""
    _require_feed()
    return _feed_domains()


@pytest.fixture(scope="module")
def feed_misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """A MISP stand-in holding the whole real feed (61,070 attributes)."""
    _require_feed()
    with MispStandIn(tmp_path_factory.mktemp("feed-misp"), api_key=API_KEY, feed=FEED) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def feed_server(
    tmp_path_factory: pytest.TempPathFactory,
    unbound: UnboundProcess,
    feed_misp: MispStandIn,
    feed_domains: dict[str, str],
) -> Iterator[MispDnsProcess]:
    """misp-dns with one `misp` policy on the stand-in, once the feed is blocked."""
    workdir = tmp_path_factory.mktemp("feed-server")
    policy = _misp_policy(feed_misp, workdir)
    started = time.monotonic()
    process = start_misp_dns(workdir, unbound.address, [policy], port=free_port())
    last = list(feed_domains)[-1]
    wait_until(lambda: is_blocked(process, last), 60, 0.1, "the feed blocked")
    print(f"\n60k feed: first blocked answer {time.monotonic() - started:.2f} s after start")
    yield process
    process.stop()


#: (query name, query type, query id, with EDNS, reply or None) for `_feed_answer_problems`.
_Asked = tuple[str, str, int, bool, bytes | None]


def _feed_answer_problems(batch: list[_Asked]) -> list[str]:
    """One line per wrong reply of `batch` (run in worker processes: parsing is the cost)."""
    failures = []
    for name, qtype, qid, edns, wire in batch:
        if wire is None:
            failures.append(f"{name}: no reply")
            continue
        try:
            response = parse(wire)
        except Exception as error:  # any dnspython error: a malformed reply
            failures.append(f"{name}: malformed reply ({error!r})")
            continue
        problems = blocked_problems(response, name, report(name), qtype=qtype, edns=edns)
        if response.id != qid:
            problems.append(f"id {response.id} for query {qid}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    return failures


def test_every_valid_feed_domain_is_blocked(
    feed_server: MispDnsProcess, feed_domains: dict[str, str]
) -> None:
    """Each of the 60k+ valid domains of the real feed, fetched from the MISP stand-in, gets
    the blocked answer: NXDOMAIN, one SOA owned by the query name with the documented fields
    and TTL, EDE 15 `source=misp-connector;domain=<name>`; and no OPT when the query had none."""
    names = list(feed_domains)
    assert len(names) > 60_000
    kinds = [(("A", "AAAA", "MX")[index % 3], index % 4 != 3) for index in range(len(names))]
    queries = [
        make_query(name, qtype, edns=0 if edns else None)
        for name, (qtype, edns) in zip(names, kinds, strict=True)
    ]
    started = time.monotonic()
    replies = ask_many(feed_server.address, queries)
    asked = time.monotonic() - started
    answers = [
        (name, qtype, query.id, edns, wire)
        for name, (qtype, edns), query, wire in zip(names, kinds, queries, replies, strict=True)
    ]
    batches = [answers[start : start + 5000] for start in range(0, len(answers), 5000)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        failures = [line for lines in pool.map(_feed_answer_problems, batches) for line in lines]
    elapsed = time.monotonic() - started
    print(
        f"\n60k feed: {len(names)} names asked in {asked:.1f} s "
        f"({len(names) / asked:.0f} queries/s), all checked after {elapsed:.1f} s"
    )
    assert not failures, f"{len(failures)} of {len(names)} wrong, first: {failures[:10]}"


def test_txt_queries_get_the_blocking_report(
    feed_server: MispDnsProcess, feed_domains: dict[str, str]
) -> None:
    """A TXT query for a feed domain is answered NOERROR with the report as a TXT record
    (TTL 30) and, with EDNS, the same report in EDE 15; over UDP and TCP."""
    sample = list(feed_domains)[::300]
    for index, name in enumerate(sample):
        edns = None if index % 2 else 0
        ask = ask_tcp if index % 5 == 0 else ask_udp
        response = ask(make_query(name, "TXT", edns=edns), feed_server.address)
        assert blocked_problems(response, name, report(name), qtype="TXT", edns=edns == 0) == []


def test_subdomains_of_feed_domains_are_blocked(
    feed_server: MispDnsProcess, feed_domains: dict[str, str]
) -> None:
    """Names below a feed domain are blocked, and the report names the feed domain."""
    sample = list(feed_domains)[::20]
    names = [f"zz-sub-{index}.deeper.{name}" for index, name in enumerate(sample)]
    replies = ask_many(feed_server.address, [make_query(name, "A", edns=0) for name in names])
    failures = []
    for name, parent, wire in zip(names, sample, replies, strict=True):
        problems = (
            ["no reply"] if wire is None else blocked_problems(parse(wire), name, report(parent))
        )
        if problems:
            failures.append(f"{name}: {problems}")
    assert not failures, f"{len(failures)} of {len(names)} wrong, first: {failures[:5]}"


# Messy values of the real feed and the name each must block.
MESSY_FEED_VALUES = {
    "Sortie-Crise-Economique-Ukraine.com": "sortie-crise-economique-ukraine.com",
    "ipv4.mikifox.com ": "ipv4.mikifox.com",
    "admin.mikifox.com ": "admin.mikifox.com",
    "\u00f4\u00aa\u00f8abnormalk.top": "abnormalk.top",  # a mis-decoded byte-order mark
    "xn--hataygvenotomasyon-r6b.net": "xn--hataygvenotomasyon-r6b.net",
    "_dmarc.godsafeukraine.com": "_dmarc.godsafeukraine.com",
}


def test_messy_feed_values_are_normalised(
    feed_server: MispDnsProcess, feed_domains: dict[str, str]
) -> None:
    """Values with upper case, trailing spaces, a stray byte-order mark, punycode or an
    underscore label block their clean name, asked in any case; the report shows it."""
    for raw, clean in MESSY_FEED_VALUES.items():
        assert feed_domains.get(clean) == raw, f"{raw!r} is not in the feed as expected"
        for asked in (clean, clean.upper(), f"WWW.{clean.swapcase()}"):
            response = ask_udp(make_query(asked, "A", edns=0), feed_server.address)
            assert blocked_problems(response, asked, report(clean)) == [], asked
            assert response.question[0].name.to_text() == asked + "."  # case kept
    # The Unicode form of a punycode name (dnspython encodes it) is blocked too.
    response = ask_udp(make_query("hataygüvenotomasyon.net", "A", edns=0), feed_server.address)
    assert (
        blocked_problems(
            response, "xn--hataygvenotomasyon-r6b.net", report("xn--hataygvenotomasyon-r6b.net")
        )
        == []
    )


def test_names_outside_the_feed_are_forwarded(feed_server: MispDnsProcess) -> None:
    """With 60k names blocked, other names still resolve through the upstream."""
    response = ask_udp(make_query(WWW, "A", edns=0), feed_server.address)
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for rrset in response.answer for r in rrset] == [WWW_A]
    assert forwarded_problems(response) == []


# -- 2. the rules, on a small dataset -----------------------------------------------------

RULES_ALLOWED = NODATA.rstrip(".")  # nodata.test: in MISP, and allowlisted


def _rules_attributes(now: float) -> list[dict[str, Any]]:
    return [
        {"value": "www.test", "type": "hostname"},
        {"value": "blocked-domain.test", "type": "domain"},
        {"value": "pair.test|192.0.2.77", "type": "domain|ip"},
        {"value": "  Mixed-CASE.Test. ", "type": "domain"},
        {"value": "*.wild.test", "type": "domain"},
        {"value": ".leading-dot.test", "type": "domain"},
        {"value": "b\u00fccher.test", "type": "domain"},
        {"value": "192.0.2.1", "type": "domain"},  # an IP: rejected, never a name
        {"value": RULES_ALLOWED, "type": "domain"},
        {"value": "deleted.test", "type": "domain", "deleted": True},
        {"value": "notids.test", "type": "domain", "to_ids": False},
        {"value": "stale.test", "type": "domain", "last_seen": now - 400 * DAY},
        {"value": "oldstamp.test", "type": "domain", "timestamp": int(now - 400 * DAY)},
        {"value": "fresh.test", "type": "domain", "last_seen": now - 10 * DAY},
    ]


@pytest.fixture(scope="module")
def rules_misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """A MISP stand-in holding a dozen attributes, one per rule."""
    with MispStandIn(
        tmp_path_factory.mktemp("rules-misp"),
        api_key=API_KEY,
        attributes=_rules_attributes(time.time()),
    ) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def rules_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess, rules_misp: MispStandIn
) -> Iterator[MispDnsProcess]:
    """misp-dns with `[allowlist nodata.test, misp]`, once MISP's names are blocked."""
    workdir = tmp_path_factory.mktemp("rules-server")
    policies = [
        {"type": "allowlist", "domains": [RULES_ALLOWED]},
        _misp_policy(rules_misp, workdir, max_ioc_age="365d"),
    ]
    process = start_misp_dns(workdir, unbound.address, policies, port=free_port())
    wait_until(lambda: is_blocked(process, "fresh.test"), 20, 0.1, "the rules loaded")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def monitor_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess, rules_misp: MispStandIn
) -> Iterator[MispDnsProcess]:
    """misp-dns in monitor mode (`enable_blocking = false`), once it has fetched MISP."""
    workdir = tmp_path_factory.mktemp("monitor-server")
    policy = _misp_policy(rules_misp, workdir, max_ioc_age="365d", enable_blocking=False)
    process = start_misp_dns(workdir, unbound.address, [policy], port=free_port())
    wait_until(
        lambda: "(monitor mode, nothing blocked)" in process.log_text(),
        20,
        0.1,
        "the monitor's first fetch",
    )
    yield process
    process.stop()


def _assert_forwarded(process: MispDnsProcess, name: str) -> dns.message.Message:
    response = ask_udp(make_query(name, "A", edns=0), process.address)
    assert forwarded_problems(response) == [], name
    if response.rcode() == dns.rcode.NXDOMAIN:  # the upstream's own NXDOMAIN for test.
        assert response.authority[0].name.to_text() == "test."
        assert response.authority[0][0].serial == SOA_SERIAL
    return response


def test_hostname_blocks_the_exact_name_only(rules_server: MispDnsProcess) -> None:
    """A `hostname` indicator blocks that name, in any case, and not the names below it."""
    for asked in ("www.test", "WWW.Test"):
        response = ask_udp(make_query(asked, "A", edns=0), rules_server.address)
        assert blocked_problems(response, asked, report("www.test")) == []
    _assert_forwarded(rules_server, "sub.www.test")


def test_domain_indicators_block_their_subdomains(rules_server: MispDnsProcess) -> None:
    """`domain` and `domain|ip` indicators block the name and every name below it."""
    for asked, indicator in [
        ("blocked-domain.test", "blocked-domain.test"),
        ("a.b.blocked-domain.test", "blocked-domain.test"),
        ("pair.test", "pair.test"),
        ("x.pair.test", "pair.test"),
    ]:
        response = ask_udp(make_query(asked, "A", edns=0), rules_server.address)
        assert blocked_problems(response, asked, report(indicator)) == [], asked
    _assert_forwarded(rules_server, "notblocked-domain.test")  # a label boundary matters


def test_messy_values_are_normalised(rules_server: MispDnsProcess) -> None:
    """Spaces, upper case, a trailing dot, a leading `*.` or `.`, and Unicode (to punycode)
    are normalised; an IP address value blocks nothing."""
    for asked, indicator in [
        ("mixed-case.test", "mixed-case.test"),
        ("MIXED-case.TEST", "mixed-case.test"),
        ("wild.test", "wild.test"),
        ("x.wild.test", "wild.test"),
        ("leading-dot.test", "leading-dot.test"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
        ("www.xn--bcher-kva.test", "xn--bcher-kva.test"),
    ]:
        response = ask_udp(make_query(asked, "A", edns=0), rules_server.address)
        assert blocked_problems(response, asked, report(indicator)) == [], asked
    _assert_forwarded(rules_server, "1.2.0.192.test")


def test_allowlist_before_misp_wins(rules_server: MispDnsProcess) -> None:
    """An allowlisted name that MISP lists resolves normally, and so do names below it."""
    response = _assert_forwarded(rules_server, RULES_ALLOWED)
    assert [r.to_text() for rrset in response.answer for r in rrset] == ["192.0.2.2"]
    _assert_forwarded(rules_server, f"x.{RULES_ALLOWED}")


def test_deleted_not_to_ids_and_stale_attributes_are_not_blocked(
    rules_server: MispDnsProcess,
) -> None:
    """Deleted attributes, `to_ids` false, `last_seen` or a timestamp older than
    max_ioc_age are not blocked; a `last_seen` within max_ioc_age is."""
    for name in ("deleted.test", "notids.test", "stale.test", "oldstamp.test"):
        _assert_forwarded(rules_server, name)
    assert is_blocked(rules_server, "fresh.test")


def test_monitor_mode_resolves_normally(monitor_server: MispDnsProcess) -> None:
    """With `enable_blocking = false` MISP's names resolve as if nothing were listed."""
    response = _assert_forwarded(monitor_server, "www.test")
    assert [r.to_text() for rrset in response.answer for r in rrset] == [WWW_A]
    response = ask_udp(make_query("www.test", "TXT", edns=0), monitor_server.address)
    assert forwarded_problems(response) == []
    assert not any(rrset.rdtype == dns.rdatatype.TXT for rrset in response.answer)
    _assert_forwarded(monitor_server, "blocked-domain.test")
    _assert_forwarded(monitor_server, "x.pair.test")


def test_answer_options_ttl_txt_report_and_ede(
    tmp_path: Path, unbound: UnboundProcess, rules_misp: MispStandIn
) -> None:
    """`blocking_answer_ttl = 600` sets the SOA TTL and MINIMUM; with
    `allow_txt_blocking_report = false` a TXT query gets the NXDOMAIN answer too; with
    `add_extended_dns_error = false` the OPT carries no EDE."""
    policy = _misp_policy(
        rules_misp,
        tmp_path,
        max_ioc_age="365d",
        blocking_answer_ttl=600,
        allow_txt_blocking_report=False,
        add_extended_dns_error=False,
    )
    process = start_misp_dns(tmp_path / "server", unbound.address, [policy], port=free_port())
    try:
        name = "blocked-domain.test"

        def problems(qtype: str) -> list[str]:
            # Without the TXT report a TXT query gets the NXDOMAIN answer like any other.
            response = ask_udp(make_query(name, qtype, edns=0), process.address)
            return blocked_problems(
                response, name, report(name), qtype=qtype, txt_report=False, ttl=600, ede=False
            )

        wait_until(lambda: not problems("A"), 20, 0.1, "blocking")
        assert problems("TXT") == []
        assert problems("AAAA") == []
    finally:
        process.stop()


# -- 3. a restart with MISP down ----------------------------------------------------------


def test_restart_with_misp_down_blocks_from_the_disk_cache_within_2s(
    tmp_path: Path, unbound: UnboundProcess, feed_domains: dict[str, str]
) -> None:
    """After a restart while MISP is unreachable, misp-dns blocks the last fetched feed
    (60k names) from its disk cache within 2 s of being started."""
    (tmp_path / "misp").mkdir()
    state = tmp_path / "state"
    names = list(feed_domains)
    probe = names[len(names) // 2]
    with MispStandIn(tmp_path / "misp", api_key=API_KEY, feed=FEED) as stand_in:
        policy = _misp_policy(stand_in, tmp_path)
        first = start_misp_dns(
            tmp_path / "first", unbound.address, [policy], port=free_port(), state_dir=state
        )
        wait_until(lambda: is_blocked(first, probe), 60, 0.1, "the first fetch")
        first.stop()
    assert list(state.glob("*.snapshot")), "no snapshot was saved"

    port = free_port()
    started = time.monotonic()
    second = start_misp_dns(
        tmp_path / "second", unbound.address, [policy], port=port, state_dir=state, probe=probe
    )
    try:
        wait_until(lambda: is_blocked(second, probe), 10, 0.01, "blocking after the restart")
        elapsed = time.monotonic() - started
        print(f"\nrestart with MISP down: first blocked answer {elapsed:.2f} s after start")
        assert elapsed < 2.0
        sample = names[::500]
        replies = ask_many(second.address, [make_query(n, "A", edns=0) for n in sample])
        for name, wire in zip(sample, replies, strict=True):
            assert wire is not None and blocked_problems(parse(wire), name, report(name)) == []
    finally:
        second.stop()


@pytest.mark.allow_errors
def test_corrupt_cache_is_ignored_and_the_server_starts(
    tmp_path: Path, unbound: UnboundProcess
) -> None:
    """A corrupt snapshot in state_dir is logged and ignored: the server starts and answers,
    blocking nothing until MISP can be reached."""
    state = tmp_path / "state"
    state.mkdir()
    unreachable = f"http://127.0.0.1:{free_port()}"
    policy = {
        "type": "misp",
        "server_url": unreachable,
        "api_key_file": str(key_file(tmp_path, API_KEY)),
    }
    # Start once to learn the snapshot's file name, then corrupt it.
    stand_in = MispStandIn(tmp_path, api_key=API_KEY, attributes=[{"value": "cached.test"}])
    stand_in.start(port=int(unreachable.rsplit(":", 1)[1]))
    try:
        first = start_misp_dns(
            tmp_path / "first", unbound.address, [policy], port=free_port(), state_dir=state
        )
        wait_until(lambda: is_blocked(first, "cached.test"), 20, 0.1, "the first fetch")
        first.stop()
    finally:
        stand_in.stop()
    [snapshot] = state.glob("*.snapshot")
    data = bytearray(snapshot.read_bytes())
    data[-10:] = b"\xff" * 10
    snapshot.write_bytes(bytes(data))

    second = start_misp_dns(
        tmp_path / "second", unbound.address, [policy], port=free_port(), state_dir=state
    )
    try:
        _assert_forwarded(second, "cached.test")
        assert f"ignoring indicator snapshot {snapshot}" in second.log_text()
    finally:
        second.stop()


# -- 4. MISP misbehaving ------------------------------------------------------------------

#: Seconds between fetches of the fault server (an undocumented but accepted "s" unit).
FAULT_INTERVAL = "2s"
FAULT_BASE = [f"base{i}.fault.test" for i in range(7)]  # three pages of three
#: The names asked while a fault lasts: they must stay blocked throughout.
FAULT_OLD = (FAULT_BASE[0], FAULT_BASE[-1])


@pytest.fixture(scope="module")
def fault_misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """A MISP stand-in with seven names, served three per page."""
    with MispStandIn(
        tmp_path_factory.mktemp("fault-misp"),
        api_key=API_KEY,
        attributes=[{"value": name} for name in FAULT_BASE],
    ) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def fault_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess, fault_misp: MispStandIn
) -> Iterator[MispDnsProcess]:
    """misp-dns refreshing every 2 s from `fault_misp`, three attributes per page."""
    workdir = tmp_path_factory.mktemp("fault-server")
    policy = _misp_policy(fault_misp, workdir, update_interval=FAULT_INTERVAL, pagination_limit=3)
    process = start_misp_dns(workdir, unbound.address, [policy], port=free_port())
    wait_until(lambda: is_blocked(process, FAULT_BASE[-1]), 20, 0.1, "the first fetch")
    yield process
    process.stop()


def _statuses_since(stand_in: MispStandIn, since: int) -> list[Any]:
    return [entry["status"] for entry in stand_in.requests()[since:]]


def test_5xx_burst_is_survived(fault_server: MispDnsProcess, fault_misp: MispStandIn) -> None:
    """Two 5xx answers in a row (fewer than the three attempts) are retried: the old names
    stay blocked throughout and a name added meanwhile is blocked after the burst."""
    since = len(fault_misp.requests())
    fault_misp.control(
        script=[{"fault": "server_error", "status": 500}, {"fault": "server_error", "status": 503}],
        add=[{"value": "after-5xx.fault.test"}],
    )
    took = blocks_throughout_until(fault_server, FAULT_OLD, "after-5xx.fault.test", 15)
    statuses = _statuses_since(fault_misp, since)
    assert statuses[:3] == [500, 503, 200], statuses
    assert "update failed" not in fault_server.log_text(limit=4000)
    print(f"\n5xx burst: new name blocked {took:.1f} s after the burst was scripted")


def test_garbage_page_fails_the_cycle_and_keeps_the_list(
    fault_server: MispDnsProcess, fault_misp: MispStandIn
) -> None:
    """A page that is not JSON fails the whole cycle: the names of the last good fetch,
    on later pages too, stay blocked, and the next cycle picks up new names."""
    log_start = fault_server.log_size()
    since = len(fault_misp.requests())
    fault_misp.control(
        script=[None, {"fault": "garbage"}], add=[{"value": "after-garbage.fault.test"}]
    )
    took = blocks_throughout_until(fault_server, FAULT_OLD, "after-garbage.fault.test", 15)
    requests = fault_misp.requests()[since:]
    assert [(r["page"], r["status"]) for r in requests[:3]] == [(1, 200), (2, 200), (1, 200)]
    log = fault_server.log_text(start=log_start)
    assert re.search(r"update failed: .*page 2: the body is not JSON", log), log
    print(f"\ngarbage page: new name blocked {took:.1f} s after the garbage was scripted")


def test_429_retry_after_is_honoured(fault_server: MispDnsProcess, fault_misp: MispStandIn) -> None:
    """A 429 with `Retry-After: 2` is retried after at least two seconds; the old names
    stay blocked and a name added meanwhile is blocked after it."""
    since = len(fault_misp.requests())
    fault_misp.control(
        script=[{"fault": "rate_limited", "retry_after": "2"}],
        add=[{"value": "after-429.fault.test"}],
    )
    blocks_throughout_until(fault_server, FAULT_OLD, "after-429.fault.test", 15)
    requests = fault_misp.requests()[since:]
    assert [r["status"] for r in requests[:2]] == [429, 200], requests
    gap = requests[1]["time"] - requests[0]["time"]
    assert 2.0 <= gap < 5.0, gap
    print(f"\n429 with Retry-After 2: retried after {gap:.2f} s")


def test_bad_api_key_logs_one_clear_line_and_never_the_key(
    tmp_path: Path, unbound: UnboundProcess, fault_misp: MispStandIn
) -> None:
    """A refused API key gives exactly one log line naming HTTP 403, is not retried, and
    the key appears nowhere in the log, even when MISP echoes it back."""
    bad_key = "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7M"
    fault_misp.control(echo_key=True)
    since = len(fault_misp.requests())
    policy = _misp_policy(fault_misp, tmp_path, key=bad_key)
    process = start_misp_dns(tmp_path / "server", unbound.address, [policy], port=free_port())
    try:
        wait_until(lambda: "update failed" in process.log_text(), 15, 0.1, "the refused fetch")
        time.sleep(3)  # longer than a retry with backoff would take
        log = process.log_text(limit=1 << 30)
    finally:
        process.stop()
        fault_misp.control(echo_key=False)
    mine = [r for r in fault_misp.requests()[since:] if r["status"] == 403]
    assert len(mine) == 1, mine
    lines = [line for line in log.splitlines() if re.search(r"(?<![\w.:])403(?!\w)", line)]
    assert len(lines) == 1, lines
    assert "API key" in lines[0], lines[0]
    assert bad_key not in log
    assert bad_key[:12] not in log


def test_short_page_is_not_the_end(fault_server: MispDnsProcess, fault_misp: MispStandIn) -> None:
    """When MISP filters values after its page limit (warninglists), a short first page does
    not end the fetch: the names on later pages stay blocked and new ones are picked up."""
    fault_misp.control(
        hide_after_limit=FAULT_BASE[1:3], add=[{"value": "after-short-page.fault.test"}]
    )
    try:
        blocks_throughout_until(fault_server, FAULT_OLD, "after-short-page.fault.test", 15)
        assert is_blocked(fault_server, FAULT_BASE[3])
    finally:
        fault_misp.control(hide_after_limit=[])
    # What MISP filtered out is not blocked, until MISP serves it again.
    wait_until(lambda: is_blocked(fault_server, FAULT_BASE[1]), 10, 0.1, "unfiltered again")


def test_misp_down_keeps_the_list_and_recovers(
    fault_server: MispDnsProcess, fault_misp: MispStandIn
) -> None:
    """While MISP cannot be reached at all, the last good list stays blocked; once MISP is
    back (same address), names added there are blocked at the next try."""
    log_start = fault_server.log_size()
    fault_misp.stop()
    try:
        wait_until(
            lambda: "update failed" in fault_server.log_text(start=log_start),
            15,
            0.1,
            "a failed update",
        )
        for name in FAULT_BASE:
            assert is_blocked(fault_server, name), name
    finally:
        fault_misp.start(port=fault_misp.port)
    fault_misp.control(add=[{"value": "after-down.fault.test"}])
    blocks_throughout_until(fault_server, FAULT_OLD, "after-down.fault.test", 15)
    assert "Connection refused" in fault_server.log_text(start=log_start)


# -- 5. TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """A MISP stand-in over HTTPS with a self-signed certificate."""
    workdir = tmp_path_factory.mktemp("tls-misp")
    with MispStandIn(
        workdir,
        api_key=API_KEY,
        attributes=[{"value": "tls.test"}],
        tls_pem=self_signed(workdir / "server.pem"),
    ) as stand_in:
        yield stand_in


def test_tls_certificate_is_validated(
    tmp_path: Path, unbound: UnboundProcess, tls_misp: MispStandIn
) -> None:
    """By default a MISP server whose certificate cannot be verified is not trusted: the
    update fails with a log line (no traceback) and nothing is blocked."""
    policy = _misp_policy(tls_misp, tmp_path)
    process = start_misp_dns(tmp_path / "server", unbound.address, [policy], port=free_port())
    try:
        wait_until(lambda: "update failed" in process.log_text(), 15, 0.1, "the failed update")
        _assert_forwarded(process, "tls.test")
        assert "certificate verify failed" in process.log_text()
        assert not [r for r in tls_misp.requests() if r["status"] == 200]
    finally:
        process.stop()
    assert "TLS certificate validation is disabled" not in process.log_text()


def test_disable_tls_validation_accepts_the_certificate_and_warns(
    tmp_path: Path, unbound: UnboundProcess, tls_misp: MispStandIn
) -> None:
    """With `disable_tls_validation = true` the self-signed server is used, and the log
    says at start that certificates are not checked."""
    policy = _misp_policy(tls_misp, tmp_path, disable_tls_validation=True)
    process = start_misp_dns(tmp_path / "server", unbound.address, [policy], port=free_port())
    try:
        wait_until(lambda: is_blocked(process, "tls.test"), 15, 0.1, "blocking over HTTPS")
        warnings = [
            line
            for line in process.log_text().splitlines()
            if "TLS certificate validation is disabled" in line
        ]
        assert len(warnings) == 1, warnings
    finally:
        process.stop()
