"""Stopping and reloading a loaded server, end to end: nothing answered is lost, nothing
blocked slips through, and a stop is quick even when every neighbour hangs.

misp-dns runs under twistd with a MISP stand-in, a JSONL query log and, for the stop with
hanging neighbours, an HTTP collector and a syslog receiver that accept and never answer.
Queries flow from a thread at a steady rate (`hostile_dns.QueryLoad`) while the process gets
SIGTERM or SIGHUP; each reply is checked against what it must be (blocked or forwarded),
and each answered query is looked for in the query log.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from .hostile_dns import (
    QueryLoad,
    pid_alive,
    read_jsonl,
    server_table,
    start_server,
    write_config,
)
from .hostile_misp import HostileMisp, attribute
from .misp_stand_in import (
    MispStandIn,
    blocked_problems,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import UnboundProcess
from .wire import ask_udp, make_query, udp_exchange

API_KEY = "Lf6Rk1Wv5Zq9Tn3Xb7Mc2Hp8Jd4Gs0Ya6Ue1Io5Q"
BLOCKED = "blocked.life.test"
STOP_LIMIT = 10.0


def _report(name: str) -> str:
    return f"source=misp-connector;domain={name}"


def _is_blocked(process: MispDnsProcess, name: str, indicator: str, ttl: int = 30) -> bool:
    response = ask_udp(make_query(name, "A", edns=0), process.address)
    return not blocked_problems(response, name, _report(indicator), ttl=ttl)


def _mixed(i: int) -> tuple[str, str]:
    """Every other query a blocked name (below the listed domain), all names unique."""
    if i % 2:
        return f"q{i}.{BLOCKED}", "blocked"
    return f"q{i}.forwarded.life.test", "forwarded"


def _names(records: list[dict[str, Any]]) -> list[str]:
    return [r["question"]["questionName"].rstrip(".") for r in records]


def _key_file(directory: Path) -> Path:
    path = directory / "misp.key"
    path.write_text(API_KEY)
    path.chmod(0o600)
    return path


def _misp_policy(url: str, key: Path, **options: Any) -> dict[str, Any]:
    return {
        "type": "misp",
        "server_url": url,
        "api_key_file": str(key),
        "max_ioc_age": "3650d",
        "update_interval": "1h",
    } | options


@pytest.fixture(scope="module")
def misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """A MISP stand-in listing BLOCKED."""
    stand_in = MispStandIn(
        tmp_path_factory.mktemp("life-misp"), api_key=API_KEY, attributes=[{"value": BLOCKED}]
    )
    stand_in.start()
    yield stand_in
    stand_in.stop()


def _sigterm(process: MispDnsProcess) -> float:
    """One SIGTERM; the seconds until the process is gone (given 30 s before a SIGKILL: a
    second SIGTERM would only make twistd log that its reactor is already stopping)."""
    pid = process.pid
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    deadline = started + 30
    while process.running and time.monotonic() < deadline:
        time.sleep(0.01)
    took = time.monotonic() - started
    process.stop()  # reaps it, or kills it if it is still there
    assert not pid_alive(pid)
    return took


# -- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_under_load_exports_every_answered_query_and_exits_quickly(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn
) -> None:
    """SIGTERM while a thousand queries a second arrive: the server stops answering, writes
    the record of every query it answered to the JSONL file (none twice, every line whole),
    and exits well within 10 s."""
    journal = tmp_path / "queries.jsonl"
    port = free_port()
    config = write_config(
        tmp_path / "misp-dns.toml",
        server_table(port, unbound.address, tmp_path / "state"),
        [_misp_policy(misp.url, _key_file(tmp_path))],
        [{"type": "jsonl", "path": str(journal)}],
    )
    process = start_server(tmp_path / "server", config, port)
    wait_until(lambda: _is_blocked(process, BLOCKED, BLOCKED), 20, 0.1, "the first fetch")
    load = QueryLoad(process.address, _mixed, rate=1000, timeout=1.0)
    load.start()
    time.sleep(2.0)
    took = _sigterm(process)
    time.sleep(0.3)
    load.stop()
    load.join(10)
    assert load.wrong == []
    assert load.answered > 1000 and load.refused_after is not None
    # Only the load's own queries ("q<n>.…"): the start-up probes may ask a name twice.
    recorded = [n for n in _names(read_jsonl(journal)) if n.startswith("q")]
    assert len(recorded) == len(set(recorded))
    missing = set(load.answered_names) - set(recorded)
    assert not missing, f"{len(missing)} answered queries not in the log: {sorted(missing)[:5]}"
    print(
        f"\nSIGTERM under load: {load.answered} answered, {len(recorded)} recorded, "
        f"exit {took:.2f} s after the signal"
    )
    assert took < STOP_LIMIT
    assert "Server Shut Down." in process.log_text()


def test_sigterm_keeps_the_latest_indicators_for_the_next_start(
    tmp_path: Path, unbound: UnboundProcess
) -> None:
    """A name MISP added is blocked, SIGTERM comes at once; the next start, with MISP down,
    blocks it from the saved state straight away."""
    key = _key_file(tmp_path)
    state = tmp_path / "state"
    fresh = "just-added.life.test"
    (tmp_path / "misp").mkdir()
    misp = MispStandIn(tmp_path / "misp", api_key=API_KEY, attributes=[{"value": BLOCKED}])
    misp.start()

    def start(name: str) -> MispDnsProcess:
        port = free_port()
        config = write_config(
            tmp_path / f"{name}.toml",
            server_table(port, unbound.address, state),
            [_misp_policy(misp.url, key, update_interval="1s")],
        )
        return start_server(tmp_path / name, config, port)

    try:
        first = start("first")
        try:
            wait_until(lambda: _is_blocked(first, BLOCKED, BLOCKED), 20, 0.1, "the first fetch")
            misp.control(add=[{"value": fresh}])
            wait_until(lambda: _is_blocked(first, fresh, fresh), 10, 0.02, "the new name")
            took = _sigterm(first)
        finally:
            first.stop()
    finally:
        misp.stop()
    assert took < STOP_LIMIT
    second = start("second")
    try:
        assert _is_blocked(second, fresh, fresh)
        assert _is_blocked(second, f"www.{BLOCKED}", BLOCKED)
    finally:
        second.stop()


def _deaf_listener() -> socket.socket:
    """A TCP port whose connections are accepted by the kernel and never read or answered."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


@pytest.mark.parametrize("with_http", [False, True], ids=["misp+syslog", "misp+syslog+http"])
def test_sigterm_exits_within_10s_while_misp_and_the_sinks_hang(
    tmp_path: Path, unbound: UnboundProcess, with_http: bool
) -> None:
    """With a MISP fetch hanging, a syslog TCP receiver and (in the second case) an HTTP
    collector that accept and never answer, all with their default timeouts, SIGTERM still
    ends the process within 10 s, and the JSONL file beside them holds every answered
    query."""
    (tmp_path / "misp").mkdir()
    hanging = HostileMisp(tmp_path / "misp", api_key=API_KEY, attributes=[attribute(BLOCKED)])
    hanging.start()
    collector = _deaf_listener()
    receiver = _deaf_listener()
    journal = tmp_path / "queries.jsonl"
    try:
        port = free_port()
        config = write_config(
            tmp_path / "misp-dns.toml",
            server_table(port, unbound.address, tmp_path / "state"),
            [_misp_policy(hanging.url, _key_file(tmp_path), update_interval="1s")],
            [
                {"type": "jsonl", "path": str(journal)},
                {
                    "type": "syslog",
                    "address": f"127.0.0.1:{receiver.getsockname()[1]}",
                    "protocol": "tcp",
                },
            ]
            + [
                {
                    "type": "http",
                    "url": f"http://127.0.0.1:{collector.getsockname()[1]}/in",
                    "batch_interval": 0.2,
                }
            ]
            * with_http,
        )
        process = start_server(tmp_path / "server", config, port)
        wait_until(lambda: _is_blocked(process, BLOCKED, BLOCKED), 20, 0.1, "the first fetch")
        hanging.control(script=[{"kind": "hang", "times": 100}])
        wait_until(
            lambda: any(r["status"] is None for r in hanging.requests("misp")),
            5,
            0.05,
            "a fetch left hanging",
        )
        load = QueryLoad(process.address, _mixed, rate=1000, timeout=1.0)
        load.start()
        time.sleep(1.5)  # the HTTP sink's first batch is in flight, unanswered
        took = _sigterm(process)
        load.stop()
        load.join(10)
    finally:
        hanging.stop()
        collector.close()
        receiver.close()
    print(f"\nSIGTERM with MISP and sinks hanging (http: {with_http}): exit after {took:.2f} s")
    missing = set(load.answered_names) - set(_names(read_jsonl(journal)))
    assert not missing, f"{len(missing)} answered queries not in the log"
    assert took < STOP_LIMIT


# -- SIGHUP -------------------------------------------------------------------------------


def test_sighup_rotates_the_log_and_reloads_policies_under_load(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn
) -> None:
    """While 500 queries a second arrive: the log is moved away (logrotate `create`) and
    SIGHUP both reopens it and applies a changed policy config (a new allowlist entry, a
    new blocking TTL, so the MISP policy is built again); then a config with an error is
    signalled, which is logged and changes nothing. No query goes unanswered, no blocked
    name is ever forwarded, every answered query is in exactly one of the two files, and
    the last good config is the one in force."""
    key = _key_file(tmp_path)
    journal = tmp_path / "logs" / "queries.jsonl"
    port = free_port()
    server = server_table(port, unbound.address, tmp_path / "state")
    exports = [{"type": "jsonl", "path": str(journal)}]

    def policies(ttl: int, allowed: list[str], **misp_options: Any) -> list[dict[str, Any]]:
        return [
            {"type": "allowlist", "domains": allowed},
            _misp_policy(misp.url, key, blocking_answer_ttl=ttl, **misp_options),
        ]

    config = write_config(tmp_path / "misp-dns.toml", server, policies(30, []), exports)
    process = start_server(tmp_path / "server", config, port)
    try:
        wait_until(lambda: _is_blocked(process, BLOCKED, BLOCKED), 20, 0.1, "the first fetch")
        load = QueryLoad(process.address, _mixed, rate=500, timeout=2.0)
        load.start()
        time.sleep(1.0)
        journal.rename(journal.with_name("queries.jsonl.1"))
        write_config(config, server, policies(60, ["now-allowed.life.test"]), exports)
        log_start = process.log_size()
        os.kill(process.pid, signal.SIGHUP)
        wait_until(lambda: "reloaded" in process.log_text(start=log_start), 10, 0.05, "the reload")
        assert _is_blocked(process, f"x.{BLOCKED}", BLOCKED, ttl=60)
        time.sleep(1.0)
        write_config(config, server, policies(90, [], update_interval="soon"), exports)
        bad_start = process.log_size()
        os.kill(process.pid, signal.SIGHUP)
        wait_until(
            lambda: "the running configuration stays" in process.log_text(start=bad_start),
            10,
            0.05,
            "the refused reload",
        )
        time.sleep(1.0)
        load.stop()
        load.join(15)
        assert _is_blocked(process, f"y.{BLOCKED}", BLOCKED, ttl=60)
        reply = udp_exchange(make_query("now-allowed.life.test").to_wire(), process.address)
        assert reply is not None
    finally:
        process.stop()
    log = process.log_text(limit=1 << 24)
    refused = [line for line in log.splitlines() if "the running configuration stays" in line]
    assert len(refused) == 1 and "policy[1].update_interval" in refused[0], refused
    assert load.lost == [], f"{len(load.lost)} of {load.sent} queries unanswered"
    assert load.wrong == [], f"{len(load.wrong)} wrong answers, first {load.wrong[:3]}"
    old = _names(read_jsonl(journal.with_name("queries.jsonl.1")))
    new = _names(read_jsonl(journal))
    assert old and new
    both = old + new
    answered = set(load.answered_names)
    # The load's names are unique; the test's own probes (waiting for the first fetch,
    # checking the blocking) may ask one name more than once.
    from_load = [name for name in both if name in answered]
    assert len(from_load) == len(set(from_load)), "a record written twice"
    assert answered <= set(both), f"{len(answered - set(both))} answered, not recorded"
    print(
        f"\nSIGHUP under load: {load.sent} sent, {load.answered} answered, "
        f"{len(old)} + {len(new)} records"
    )
