"""A broken or hostile MISP, end to end: the server keeps its list, its key and its memory.

misp-dns runs under twistd, fed by `hostile_misp.py` (a MISP that misbehaves on command and
records what it is sent, plus a second host on 127.0.0.2 that a redirect can point to).
The timeout and body-cap tests also drive the real MISP client over real sockets in this
process, with small limits, since the server's own (60 s, 256 MiB) would make them slow.
What is already pinned elsewhere is not repeated here: a single 429, a 5xx burst, a
non-JSON page, a self-signed certificate (tests/integration/test_misp_e2e.py) and the
in-memory versions of all of these (tests/test_misp_client.py).
"""

from __future__ import annotations

import ast
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import free_port
from twisted.internet.defer import Deferred

from misp_dns.http import make_http_client
from misp_dns.intel.errors import MispResponseError, MispUnavailableError
from misp_dns.intel.misp_client import MispClient

from .certificates import Authority
from .hostile_dns import rss_kib, server_table, start_server, write_config
from .hostile_misp import ATTACKER_NAME, HostileMisp, attribute
from .misp_stand_in import (
    MispStandIn,
    blocks_throughout_until,
    is_blocked,
    is_forwarded,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import WWW, UnboundProcess

API_KEY = "Hx4Tq8Wm2Lc6Rv0Nz5Kb9Pj3Fy7Ds1Ga6Ue2Io8M"
BASE = [f"base{i}.hostile.test" for i in range(5)]
#: Seconds between fetches (and after a failed one): short, so faults show quickly.
INTERVAL = "1s"
SERVER_CAP = 256 * 1024 * 1024


#: The names asked while MISP misbehaves: they must stay blocked throughout.
OLD = (BASE[0], BASE[-1])


def _start(workdir: Path, unbound: UnboundProcess, url: str, **options: Any) -> MispDnsProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {"pagination_limit": 3, "update_interval": INTERVAL} | options
    config = write_config(
        workdir / "misp-dns.toml",
        server_table(port, unbound.address, workdir / "state"),
        [misp_policy(url, key_file(workdir, API_KEY), **settings)],
    )
    return start_server(workdir, config, port)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileMisp]:
    """The hostile MISP, holding the base names, three to a page."""
    with HostileMisp(
        tmp_path_factory.mktemp("hostile"),
        api_key=API_KEY,
        attributes=[attribute(name) for name in BASE],
    ) as misp:
        yield misp


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess, hostile: HostileMisp
) -> Iterator[MispDnsProcess]:
    """misp-dns fetching from `hostile` every second, once the base names are blocked."""
    process = _start(tmp_path_factory.mktemp("hostile-server"), unbound, hostile.url)
    wait_until(lambda: is_blocked(process, BASE[-1]), 20, 0.1, "the first fetch")
    yield process
    process.stop()


def _misp_since(hostile: HostileMisp, since: int) -> list[dict[str, Any]]:
    return hostile.requests("misp")[since:]


# -- redirects ----------------------------------------------------------------------------


def test_redirect_to_another_host_never_carries_the_key(
    server: MispDnsProcess, hostile: HostileMisp
) -> None:
    """MISP answering 302, 307 or 308 to another host fails that fetch with a log line
    naming the redirect: the other host never receives a request (so never the key), what
    it would plant is not blocked, and the old list stays blocked until the next fetch."""
    since = len(hostile.requests("misp"))
    log_start = server.log_size()
    statuses = [302, 307, 308]
    hostile.control(
        script=[
            {"kind": "redirect", "status": status, "location": "{other}/attributes/restSearch"}
            for status in statuses
        ],
        add=[attribute("after-redirect.hostile.test")],
    )
    blocks_throughout_until(server, OLD, "after-redirect.hostile.test", 20)
    assert [r["status"] for r in _misp_since(hostile, since)[:3]] == statuses
    assert hostile.requests("other") == []
    log = server.log_text(start=log_start)
    lines = [line for line in log.splitlines() if "redirect to http://127.0.0.2:" in line]
    assert len(lines) == 3, log
    assert all("not followed" in line for line in lines), lines
    assert is_forwarded(server, ATTACKER_NAME)


# -- wrong shapes -------------------------------------------------------------------------


def _without(item: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != key}


#: Attributes of the wrong shape and the field the server must count each under.
MALFORMED: list[tuple[Any, str]] = [
    (attribute(5), "value"),
    (attribute(None), "value"),
    (attribute(["list.hostile.test"]), "value"),
    (_without(attribute("no-value.hostile.test"), "value"), "value"),
    (_without(attribute("no-type.hostile.test"), "type"), "type"),
    (attribute("int-type.hostile.test", 7), "type"),
    ("an attribute that is a string", "attribute"),
    (None, "attribute"),
    (attribute("bad-event.hostile.test", Event="not an object"), "Event"),
    (attribute("bad-flag.hostile.test", to_ids="maybe"), "to_ids"),
    (attribute("bad-seen.hostile.test", last_seen="yesterday"), "last_seen"),
    (attribute("bad-stamp.hostile.test", timestamp=-5), "timestamp"),
    (attribute("bad-uuid.hostile.test", uuid={"a": 1}), "uuid"),
]


def test_malformed_attributes_are_skipped_counted_and_the_cycle_goes_on(
    server: MispDnsProcess, hostile: HostileMisp
) -> None:
    """Attributes of the wrong shape among good ones (value not a string, fields missing or
    of the wrong type, an attribute that is not an object) are skipped: the good names on
    every page are blocked, the bad ones are not, each fetch logs the count per field, and
    the fetches after it go on."""
    good = [f"shape-ok{i}.hostile.test" for i in range(4)]
    mixed: list[Any] = [attribute(name) for name in BASE]
    for index, (item, _) in enumerate(MALFORMED):
        mixed.append(item)
        if index % 3 == 0 and good[index // 3 :]:
            mixed.append(attribute(good[index // 3]))
    log_start = server.log_size()
    hostile.control(attributes=mixed)
    for name in good:
        wait_until(lambda name=name: is_blocked(server, name), 10, 0.1, f"{name} blocked")
    for item, _ in MALFORMED:
        if isinstance(item, dict) and isinstance(item.get("value"), str):
            assert is_forwarded(server, item["value"]), item
    wanted: dict[str, int] = {}
    for _, field in MALFORMED:
        wanted[field] = wanted.get(field, 0) + 1
    counted = re.compile(r"(\d+) malformed: (\{[^}]*\})")
    wait_until(
        lambda: len(counted.findall(server.log_text(start=log_start))) >= 2,
        10,
        0.1,
        "two fetches of the mixed list",
    )
    for count, reasons in counted.findall(server.log_text(start=log_start))[-2:]:
        assert int(count) == len(MALFORMED)
        assert ast.literal_eval(reasons) == wanted
    hostile.control(add=[attribute("after-shapes.hostile.test")])
    blocks_throughout_until(server, OLD, "after-shapes.hostile.test", 10)
    hostile.control(attributes=[attribute(name) for name in BASE])


_EXPECTED_SHAPE = 'expected {"response": {"Attribute": [...]}}'


@pytest.mark.parametrize(
    ("body", "logged"),
    [
        ('{"response": {"Attribute": {"0": {"value": "x.test"}}}}', _EXPECTED_SHAPE),
        ('{"response": "all good"}', _EXPECTED_SHAPE),
        ("[" * 100_000 + "]" * 100_000, "update failed"),
        ('{"response": {"Attribute": [' + '{"value": "a.test"},' * 1000, "not JSON"),
    ],
    ids=["attribute-not-a-list", "response-a-string", "nested-100k-deep", "cut-short"],
)
def test_unusable_pages_fail_the_fetch_and_keep_the_list(
    server: MispDnsProcess, hostile: HostileMisp, body: str, logged: str
) -> None:
    """A page whose `Attribute` is not a list, whose `response` is a string, that nests
    arrays 100,000 deep, or that is cut short fails that fetch with one log line: the old
    list stays blocked throughout and the next fetch picks up new names."""
    log_start = server.log_size()
    hostile.control(
        script=[{"kind": "reply", "status": 200, "body": body}],
        add=[attribute(f"after-{len(body)}.hostile.test")],
    )
    blocks_throughout_until(server, OLD, f"after-{len(body)}.hostile.test", 15)
    failed = [
        line for line in server.log_text(start=log_start).splitlines() if "update failed" in line
    ]
    assert len(failed) == 1, failed
    assert logged in failed[0], failed[0]


# -- 429 storms ---------------------------------------------------------------------------


def test_429_storm_is_waited_out_and_the_list_kept(
    server: MispDnsProcess, hostile: HostileMisp
) -> None:
    """Three 429 answers with `Retry-After: 1`, then three without a header: every retry
    waits at least what was asked (or the jittered backoff, at least 0.5 s then 1 s), each
    fetch fails with a log line while the old list stays blocked, and the first good answer
    brings in the new names."""
    since = len(hostile.requests("misp"))
    log_start = server.log_size()
    body = '{"name": "Too many requests", "message": "Rate limit exceeded."}'
    limited = {"kind": "reply", "status": 429, "body": body, "times": 3}
    hostile.control(
        script=[limited | {"headers": {"Retry-After": "1"}}, limited],
        add=[attribute("after-storm.hostile.test")],
    )
    took = blocks_throughout_until(server, OLD, "after-storm.hostile.test", 30)
    storm = _misp_since(hostile, since)
    assert [r["status"] for r in storm[:7]] == [429] * 6 + [200], storm
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(storm)]
    assert min(gaps[0], gaps[1]) >= 0.95, gaps  # Retry-After: 1
    assert gaps[2] >= 0.95, gaps  # the next fetch: update_interval (1 s)
    assert gaps[3] >= 0.45 and gaps[4] >= 0.95, gaps  # 1 s, 2 s, jittered by [0.5, 1.5)
    failures = [
        line for line in server.log_text(start=log_start).splitlines() if "update failed" in line
    ]
    assert len(failures) == 2 and all("HTTP 429" in line for line in failures), failures
    print(f"\n429 storm: 6 refusals waited out, new name blocked after {took:.1f} s")


# -- bodies that never end or never stop --------------------------------------------------


def test_endless_body_is_cut_at_the_cap_while_answers_go_on(
    server: MispDnsProcess, hostile: HostileMisp
) -> None:
    """A 200 whose chunked body never ends is read up to the 256 MiB cap and no further:
    the connection is closed by misp-dns, the fetch fails with a line naming the cap, the
    server answers throughout, and the old list stays blocked."""
    log_start = server.log_size()
    rss_before = rss_kib(server.pid)
    hostile.control(script=[{"kind": "stream", "total": None}])
    started = time.monotonic()
    peak = rss_before
    slowest = 0.0
    while "byte cap" not in server.log_text(start=log_start):
        assert time.monotonic() - started < 60, "the endless body was not cut within 60 s"
        asked = time.monotonic()
        assert is_blocked(server, BASE[0])
        assert is_forwarded(server, WWW)
        slowest = max(slowest, time.monotonic() - asked)
        peak = max(peak, rss_kib(server.pid))
        time.sleep(0.05)
    cut = time.monotonic() - started
    entry = next(r for r in reversed(hostile.requests("misp")) if r["bytes"] > SERVER_CAP // 2)
    wait_until(lambda: _closed(hostile, entry), 5, 0.1, "the connection closed")
    sent = next(r for r in hostile.requests("misp") if r["time"] == entry["time"])["bytes"]
    assert SERVER_CAP // 2 < sent < SERVER_CAP + 64 * 1024 * 1024, sent
    assert f"over the {SERVER_CAP}-byte cap" in server.log_text(start=log_start)
    hostile.control(add=[attribute("after-endless.hostile.test")])
    blocks_throughout_until(server, OLD, "after-endless.hostile.test", 15)
    time.sleep(1)
    rss_after = rss_kib(server.pid)
    print(
        f"\nendless body: cut after {sent / 2**20:.0f} MiB in {cut:.1f} s; slowest pair of "
        f"answers meanwhile {slowest * 1000:.0f} ms; RSS {rss_before / 1024:.0f} MiB before, "
        f"{peak / 1024:.0f} MiB peak, {rss_after / 1024:.0f} MiB after"
    )
    assert slowest < 1.0
    # Memory is bounded by the cap (what is kept afterwards is the allocator's business).
    assert peak - rss_before < (SERVER_CAP + 128 * 1024 * 1024) // 1024


def _closed(hostile: HostileMisp, entry: dict[str, Any]) -> bool:
    now = next(r for r in hostile.requests("misp") if r["time"] == entry["time"])
    return bool(now["closed_by_client"])


def test_a_hanging_misp_never_delays_an_answer(tmp_path: Path, unbound: UnboundProcess) -> None:
    """While MISP accepts the connection and never answers, queries are answered at once
    and the names of the disk cache (written by the first fetch) stay blocked."""
    with HostileMisp(tmp_path, api_key=API_KEY, attributes=[attribute(BASE[0])]) as misp:
        process = _start(tmp_path / "server", unbound, misp.url)
        try:
            wait_until(lambda: is_blocked(process, BASE[0]), 20, 0.1, "the first fetch")
            since = len(misp.requests("misp"))
            misp.control(script=[{"kind": "hang", "times": 5}], add=[attribute(BASE[1])])
            wait_until(
                lambda: len(misp.requests("misp")) > since, 10, 0.05, "a request left hanging"
            )
            slowest = 0.0
            for _ in range(20):
                asked = time.monotonic()
                assert is_blocked(process, BASE[0])
                assert is_forwarded(process, BASE[1])
                slowest = max(slowest, time.monotonic() - asked)
                time.sleep(0.05)
            assert slowest < 0.5, slowest
            assert len(misp.requests("misp")) == since + 1  # cycles never overlap
        finally:
            process.stop()


def _client(reactor: Any, url: str, **options: Any) -> MispClient:
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    return MispClient(
        url, API_KEY, make_http_client(reactor, pool=pool), reactor, random=lambda: 0.5, **options
    )


async def _failure_of(deferred: Deferred[Any]) -> BaseException:
    try:
        await deferred
    except Exception as exc:
        return exc
    raise AssertionError("the fetch succeeded")


async def _eventually(condition: Any, what: str, timeout: float = 3.0) -> None:
    """Wait for `condition` with the reactor running (the client must close its sockets)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await deferLater(reactor, 0.05)


@pytest.fixture
def lone_hostile(tmp_path: Path) -> Iterator[HostileMisp]:
    """A hostile MISP for one test alone (its script is nobody else's)."""
    with HostileMisp(tmp_path, api_key=API_KEY, attributes=[attribute(BASE[0])]) as misp:
        yield misp


@pytest.mark.parametrize("kind", ["hang", "trickle"])
@pytest_twisted.ensureDeferred
async def test_no_answer_or_a_never_ending_one_times_out_over_real_sockets(
    lone_hostile: HostileMisp, kind: str
) -> None:
    """Over a real connection, a MISP that sends nothing, or sends a body one byte at a time
    forever, is given up after `timeout` for each attempt: misp-dns closes the connection,
    retries after the backoff, and fails the fetch naming the timeout."""
    from twisted.internet import reactor

    lone_hostile.control(script=[{"kind": kind, "interval": 0.05, "times": 2}])
    client = _client(reactor, lone_hostile.url, timeout=1.0, attempts=2, backoff=0.2)
    started = time.monotonic()
    error = await _failure_of(client.fetch())
    elapsed = time.monotonic() - started
    assert isinstance(error, MispUnavailableError), repr(error)
    assert "no complete answer within 1s" in str(error) and "2 attempts" in str(error)
    assert 2.2 <= elapsed < 4.0, elapsed
    await _eventually(
        lambda: all(r["closed_by_client"] for r in lone_hostile.requests("misp")),
        "both connections closed by the client",
    )
    entries = lone_hostile.requests("misp")
    assert len(entries) == 2
    if kind == "trickle":
        assert all(r["bytes"] >= 5 for r in entries), entries  # the body was arriving


@pytest_twisted.ensureDeferred
async def test_endless_body_over_real_sockets_stops_at_the_cap(
    lone_hostile: HostileMisp,
) -> None:
    """Over a real connection, an endless chunked body is read to the cap and the
    connection closed: the server sent little more than the cap, and the fetch fails at
    once (not retried: the next answer would be as large)."""
    from twisted.internet import reactor

    cap = 8 * 1024 * 1024
    lone_hostile.control(script=[{"kind": "stream", "total": None, "times": 3}])
    client = _client(reactor, lone_hostile.url, max_response_bytes=cap, attempts=3)
    error = await _failure_of(client.fetch())
    assert isinstance(error, MispResponseError), repr(error)
    assert f"over the {cap}-byte cap" in str(error)
    await _eventually(lambda: lone_hostile.requests("misp")[0]["closed_by_client"], "the close")
    [entry] = lone_hostile.requests("misp")
    assert cap < entry["bytes"] < 2 * cap, entry["bytes"]


# -- TLS with a certificate from a trusted authority --------------------------------------


@pytest.mark.parametrize(
    ("certified", "expired", "validation", "accepted"),
    [
        ("127.0.0.1", False, True, True),
        ("misp.elsewhere.example", False, True, False),
        ("127.0.0.1", True, True, False),
        ("misp.elsewhere.example", False, False, True),
    ],
    ids=["right-name", "wrong-name", "expired", "wrong-name-validation-off"],
)
def test_certificate_from_a_trusted_authority_must_also_be_for_misp_and_current(
    tmp_path: Path,
    unbound: UnboundProcess,
    monkeypatch: pytest.MonkeyPatch,
    certified: str,
    expired: bool,
    validation: bool,
    accepted: bool,
) -> None:
    """With a certificate authority the server trusts (SSL_CERT_FILE), a MISP certificate
    for 127.0.0.1 is accepted; one for another name, or one out of date, is refused with a
    log line and the key is never sent; `disable_tls_validation = true` accepts them."""
    authority = Authority.create(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.trusted))
    (tmp_path / "misp").mkdir()
    with MispStandIn(
        tmp_path / "misp",
        api_key=API_KEY,
        attributes=[{"value": "tls-name.hostile.test"}],
        tls_pem=authority.issue(tmp_path, certified, expired=expired),
    ) as misp:
        process = _start(
            tmp_path / "server", unbound, misp.url, disable_tls_validation=not validation
        )
        try:
            if accepted:
                wait_until(
                    lambda: is_blocked(process, "tls-name.hostile.test"), 15, 0.1, "blocking"
                )
                assert [r["status"] for r in misp.requests()][:1] == [200]
            else:
                wait_until(
                    lambda: "update failed" in process.log_text(), 15, 0.1, "the refused fetch"
                )
                assert is_forwarded(process, "tls-name.hostile.test")
                assert misp.requests() == []
                [refused] = [
                    line for line in process.log_text().splitlines() if "update failed" in line
                ]
                # A certificate that fails validation fails the same way next time.
                assert "TLS failed" in refused and "gave up" not in refused, refused
        finally:
            process.stop()
