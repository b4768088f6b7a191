"""`[server] workers = 2` end to end: a supervisor under twistd and two serving processes.

The kernel spreads clients over the serving processes by a hash of the client's address and
port (SO_REUSEPORT), so a UDP socket keeps talking to one process: `_pinned` finds one
socket per process by asking CH TXT id.server, which answers `<server_name> worker N`, and
the tests then ask through each of them. The MISP stand-in's indicators are fetched by the
supervisor alone; the serving processes map the snapshot file it saves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rdataclass
import pytest
from conftest import free_port

from .misp_stand_in import (
    MispStandIn,
    blocked_problems,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    report,
    watch,
    write_config,
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import UnboundProcess
from .wire import make_query, parse

API_KEY = "workers-e2e-key"
SERVER_NAME = "ns.workers.test"
LISTED = "listed.workers.test"
WORKERS = 2


@pytest.fixture(scope="module")
def misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """A MISP stand-in listing one name."""
    with MispStandIn(
        tmp_path_factory.mktemp("workers-misp"), api_key=API_KEY, attributes=[{"value": LISTED}]
    ) as stand_in:
        yield stand_in


def _start_group(workdir: Path, unbound: UnboundProcess, misp: MispStandIn) -> MispDnsProcess:
    """misp-dns with two serving processes, a misp policy refreshed every 2 s, and a JSONL
    query log; returned once both serving processes answer."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = {
        "listen": [f"127.0.0.1:{port}"],
        "upstreams": [f"{unbound.address[0]}:{unbound.address[1]}"],
        "server_name": SERVER_NAME,
        "state_dir": str(workdir / "state"),
        "workers": WORKERS,
    }
    policy = misp_policy(misp.url, key_file(workdir, API_KEY), update_interval="2s")
    config = write_config(workdir / "misp-dns.toml", server, [policy])
    with config.open("a", encoding="utf-8") as file:
        file.write(f'\n[[export]]\ntype = "jsonl"\npath = "{workdir / "queries.jsonl"}"\n')
    process = MispDnsProcess(config, [("127.0.0.1", port)], workdir)
    process.start(timeout=30)
    watch(process)
    for sock in _pinned(process).values():
        sock.close()
    return process


@pytest.fixture(scope="module")
def group(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess, misp: MispStandIn
) -> Iterator[MispDnsProcess]:
    """A running group (see `_start_group`)."""
    process = _start_group(tmp_path_factory.mktemp("workers"), unbound, misp)
    yield process
    process.stop()


def _ask(sock: socket.socket, query: dns.message.Message) -> dns.message.Message:
    for _ in range(3):
        sock.send(query.to_wire())
        try:
            return parse(sock.recv(65535))
        except TimeoutError:
            continue
    raise AssertionError(f"no answer to {query.question[0]}")


def _client(process: MispDnsProcess) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(process.address)
    sock.settimeout(2.0)
    return sock


def _identity(sock: socket.socket) -> str:
    response = _ask(sock, make_query("id.server", "TXT", rdclass=dns.rdataclass.CH))
    [rrset] = response.answer
    return b"".join(rrset[0].strings).decode()


def _pinned(process: MispDnsProcess, timeout: float = 30.0) -> dict[str, socket.socket]:
    """One client socket per serving process, by the identity that answers it."""
    found: dict[str, socket.socket] = {}
    deadline = time.monotonic() + timeout
    while len(found) < WORKERS:
        assert time.monotonic() < deadline, f"only {sorted(found)} answered within {timeout} s"
        sock = _client(process)
        identity = _identity(sock)
        if identity in found:
            sock.close()
        else:
            found[identity] = sock
    return found


def _problems(response: dns.message.Message, name: str) -> list[str]:
    """What is wrong with `response` as the blocked answer for `name` listed in MISP."""
    return blocked_problems(response, name, report(name), server_name=SERVER_NAME)


def _children(pid: int) -> set[int]:
    children: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                text = (task / "children").read_text()
                children.update(int(child) for child in text.split())
    return children


def _named(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except FileNotFoundError:
        return False


def _zygotes(pid: int) -> set[int]:
    """The supervisor's zygote (fork server), a set of one while it runs."""
    return {child for child in _children(pid) if _named(child, "misp-dns-zygote")}


def _child_pids(pid: int) -> set[int]:
    """The serving processes of the supervisor `pid`: children of its zygote (or its own
    children, were there no zygote)."""
    found = set()
    for child in _children(pid):
        candidates = _children(child) if _named(child, "misp-dns-zygote") else {child}
        found.update(c for c in candidates if _named(c, "misp-dns-worker"))
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_queries_from_many_ports_are_all_answered_by_both_processes(
    group: MispDnsProcess,
) -> None:
    """Queries from 300 client ports are all answered, and by both serving processes:
    id.server names `<server_name> worker 1` and `... worker 2`."""
    identities = []
    for _ in range(300):
        with _client(group) as sock:
            identities.append(_identity(sock))
    assert set(identities) == {f"{SERVER_NAME} worker {n}" for n in range(1, WORKERS + 1)}


def test_a_listed_name_is_blocked_by_every_process_with_the_ede_report(
    group: MispDnsProcess,
) -> None:
    """Each serving process gives the blocked answer with EDE 15 and the report."""
    for identity, sock in _pinned(group).items():
        with sock:
            response = _ask(sock, make_query(LISTED, "A", edns=0))
            assert _problems(response, LISTED) == [], identity


def test_a_misp_refresh_reaches_every_process(group: MispDnsProcess, misp: MispStandIn) -> None:
    """A name added in MISP is blocked by every serving process after the next refresh,
    though only the supervisor asked MISP."""
    added = "added.workers.test"
    misp.control(add=[{"value": added}])
    pinned = _pinned(group)
    try:
        for identity, sock in pinned.items():

            def blocked(sock: socket.socket = sock) -> bool:
                response = _ask(sock, make_query(added, "A", edns=0))
                return _problems(response, added) == []

            wait_until(blocked, 20, 0.2, f"{added} blocked by {identity}")
    finally:
        for sock in pinned.values():
            sock.close()
    workers = _child_pids(group.pid)
    snapshots = list((group.workdir / "state").glob("*.snapshot"))
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert any(str(path) in maps for path in snapshots), f"worker {pid} maps no snapshot"


def test_every_query_is_logged_exactly_once_in_whole_lines(group: MispDnsProcess) -> None:
    """Both processes append to one JSONL file: each of 400 queries, asked from many
    ports, is there exactly once, and every line parses."""
    log = group.workdir / "queries.jsonl"
    names = [f"q{index}.log.workers.test" for index in range(400)]
    socks = [_client(group) for _ in range(40)]
    try:
        for index, name in enumerate(names):
            _ask(socks[index % len(socks)], make_query(name, "A"))
    finally:
        for sock in socks:
            sock.close()

    def all_logged() -> bool:
        asked = [r["question"]["questionName"] for r in _records(log)]
        return all(name in asked for name in names)

    wait_until(all_logged, 15, 0.2, "every query in the log")
    lines = log.read_text().splitlines()
    asked = [json.loads(line)["question"]["questionName"] for line in lines]
    assert [name for name in names if asked.count(name) != 1] == []


def test_sighup_after_renaming_the_log_makes_a_new_file(group: MispDnsProcess) -> None:
    """After logrotate's move and SIGHUP to the supervisor, every serving process writes
    to a new file at the configured path, and reloads its policy tables as one process
    does on SIGHUP."""
    log = group.workdir / "queries.jsonl"
    log_start = group.log_size()
    os.replace(log, group.workdir / "queries.jsonl.1")
    os.kill(group.pid, signal.SIGHUP)
    for index in range(1, WORKERS + 1):
        wait_until(
            lambda index=index: f"worker {index}: reloaded" in group.log_text(start=log_start),
            10,
            0.1,
            f"worker {index} reloading",
        )
    pinned = _pinned(group)
    name = "after-rotation.workers.test"
    try:

        def every_process_writes_the_new_file() -> bool:
            for sock in pinned.values():
                _ask(sock, make_query(name, "A"))
            asked = [r["question"]["questionName"] for r in _records(log)]
            return asked.count(name) >= 2 * WORKERS

        # Each asks at least twice; a line written before a process reopened lands in the
        # moved file (nothing is lost), so wait until both write to the new one.
        wait_until(every_process_writes_the_new_file, 15, 0.3, "queries in the new file")
    finally:
        for sock in pinned.values():
            sock.close()


@pytest.mark.allow_errors
def test_a_killed_process_is_replaced(group: MispDnsProcess) -> None:
    """A serving process killed with SIGKILL is logged and started again; the group then
    answers from both processes again, the new one blocking too."""
    before = _child_pids(group.pid)
    assert len(before) == WORKERS
    victim = min(before)
    log_start = group.log_size()
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: "starting it again" in group.log_text(start=log_start), 15, 0.1, "the restart"
    )
    assert f"(pid {victim}) ended unexpectedly (killed by signal 9)" in group.log_text(
        start=log_start
    )
    wait_until(lambda: len(_child_pids(group.pid) - {victim}) == WORKERS, 15, 0.1, "a new pid")
    for identity, sock in _pinned(group).items():
        with sock:
            response = _ask(sock, make_query(LISTED, "A", edns=0))
            assert _problems(response, LISTED) == [], identity


def test_sigterm_stops_every_process_and_loses_no_record(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn
) -> None:
    """SIGTERM to the supervisor ends it and every serving process, each having written
    out the records of the queries it answered just before."""
    process = _start_group(tmp_path / "term", unbound, misp)
    workers = _child_pids(process.pid)
    assert len(workers) == WORKERS
    names = [f"t{index}.term.workers.test" for index in range(200)]
    socks = [_client(process) for _ in range(20)]
    try:
        for index, name in enumerate(names):
            _ask(socks[index % len(socks)], make_query(name, "A"))
    finally:
        for sock in socks:
            sock.close()
    process.stop()
    assert [pid for pid in workers if _alive(pid)] == []
    asked = [r["question"]["questionName"] for r in _records(tmp_path / "term" / "queries.jsonl")]
    assert [name for name in names if name not in asked] == []


def test_a_killed_supervisor_leaves_no_process_behind(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn
) -> None:
    """When the supervisor dies without stopping them (SIGKILL), the serving processes end."""
    process = _start_group(tmp_path / "kill", unbound, misp)
    workers = _child_pids(process.pid)
    assert len(workers) == WORKERS
    os.kill(process.pid, signal.SIGKILL)
    process.stop()
    wait_until(lambda: not any(_alive(pid) for pid in workers), 10, 0.1, "no serving process")


def test_the_serving_processes_are_forked_by_one_zygote(group: MispDnsProcess) -> None:
    """The supervisor runs one zygote, and every serving process is its child: they share
    its imported interpreter copy-on-write instead of each starting a new one."""
    [zygote] = _zygotes(group.pid)
    forked = {c for c in _children(zygote) if _named(c, "misp-dns-worker")}
    assert len(forked) == WORKERS
    assert forked == _child_pids(group.pid)


@pytest.mark.allow_errors
def test_a_killed_zygote_is_replaced_with_its_serving_processes(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn
) -> None:
    """A zygote killed with SIGKILL takes its serving processes with it; that is logged,
    and a new zygote forks new ones, which answer and block."""
    process = _start_group(tmp_path / "zygote", unbound, misp)
    try:
        _wait_until_every_process_blocks(process)
        [zygote] = _zygotes(process.pid)
        workers = _child_pids(process.pid)
        log_start = process.log_size()
        os.kill(zygote, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in workers), 10, 0.1, "workers ending")
        text = process.log_text(start=log_start)
        assert f"zygote (pid {zygote}) ended unexpectedly (killed by signal 9)" in text
        wait_until(
            lambda: (
                len(_zygotes(process.pid) - {zygote}) == 1
                and len(_child_pids(process.pid) - workers) == WORKERS
            ),
            20,
            0.1,
            "a new zygote and new serving processes",
        )
        # Each read the saved snapshot before it started listening.
        for identity, sock in _pinned(process).items():
            with sock:
                response = _ask(sock, make_query(LISTED, "A", edns=0))
                assert _problems(response, LISTED) == [], identity
    finally:
        process.stop()


def _wait_until_every_process_blocks(process: MispDnsProcess) -> None:
    """Wait for the first fetch of a group just started to reach every serving process."""
    pinned = _pinned(process)
    try:
        for identity, sock in pinned.items():

            def blocked(sock: socket.socket = sock) -> bool:
                response = _ask(sock, make_query(LISTED, "A", edns=0))
                return _problems(response, LISTED) == []

            wait_until(blocked, 20, 0.2, f"{LISTED} blocked by {identity}")
    finally:
        for sock in pinned.values():
            sock.close()


def test_a_killed_supervisor_leaves_no_zygote_behind(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn
) -> None:
    """When the supervisor dies without stopping anything (SIGKILL), its zygote ends too,
    and with it every serving process."""
    process = _start_group(tmp_path / "kill-zygote", unbound, misp)
    [zygote] = _zygotes(process.pid)
    workers = _child_pids(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.stop()
    wait_until(lambda: not any(_alive(pid) for pid in {zygote, *workers}), 10, 0.1, "no process")
