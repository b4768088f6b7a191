"""Tests for misp_dns.group: the supervisor's side of a group of serving processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from misp_dns.export.jsonl import HangupSignal
from misp_dns.group import WorkerGroup
from misp_dns.values import HostPort


@attrs.define
class _Socket:
    number: int

    def fileno(self) -> int:
        return self.number

    def close(self) -> None:
        pass


@attrs.define
class _Sockets:
    udp: _Socket
    tcp: _Socket


class _Process:
    """What the group sees of a spawned process: its pid, its stdin, the signals sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written = b""
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _Reactor(Clock):
    """A clock that records spawned processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any], _Process]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], **kw: Any) -> _Process:
        process = _Process(1000 + len(self.spawned))
        proto.makeConnection(process)
        self.spawned.append((proto, args, kw["childFDs"], process))
        return process


#: The groups started by the running test, stopped when it ends.
_started: list[WorkerGroup] = []


@pytest.fixture(autouse=True)
def _stop_groups() -> Iterator[None]:
    """Stop each test's groups, so that no SIGHUP handler of theirs outlives the test (a
    later SIGHUP would reach their fake reactors)."""
    yield
    while _started:
        _started.pop().stopService()


def _group(count: int = 2) -> tuple[WorkerGroup, _Reactor]:
    reactor = _Reactor()

    def sockets(listen: Any, processes: int, backlog: int) -> list[list[_Sockets]]:
        return [
            [_Sockets(_Socket(100 * n + 2 * k), _Socket(100 * n + 2 * k + 1)) for k in range(2)]
            for n in range(processes)
        ]

    group = WorkerGroup(
        reactor,
        "/etc/misp-dns.toml",
        count,
        [HostPort("127.0.0.1", 53), HostPort("::1", 53)],
        128,
        open_sockets=sockets,
        signals=HangupSignal(),
    )
    group.privilegedStartService()
    group.startService()
    _started.append(group)
    return group, reactor


def _end(proto: Any, code: int = 1) -> None:
    proto.processEnded(Failure(ProcessTerminated(exitCode=code)))


def test_each_process_gets_its_own_sockets_and_the_config() -> None:
    """Serving process N is `-m misp_dns.worker --config PATH --index N --sockets 2`, with
    its UDP and TCP socket per listen address as descriptors 3, 4, 5, 6."""
    group, reactor = _group()
    assert [args[-6:] for _, args, _, _ in reactor.spawned] == [
        ["--config", "/etc/misp-dns.toml", "--index", "1", "--sockets", "2"],
        ["--config", "/etc/misp-dns.toml", "--index", "2", "--sockets", "2"],
    ]
    assert reactor.spawned[1][1][1:3] == ["-m", "misp_dns.worker"]
    assert reactor.spawned[1][2] == {0: "w", 1: "r", 2: "r", 3: 100, 4: 101, 5: 102, 6: 103}
    assert group.pids == [1000, 1001]


def test_a_new_snapshot_and_sighup_reach_every_process() -> None:
    """A saved snapshot is announced on each stdin; SIGHUP is passed on to each."""
    group, reactor = _group()
    group.snapshot_saved("/var/lib/misp-dns/misp-1.snapshot")
    group.hangup()
    for _, _, _, process in reactor.spawned:
        assert process.written == b"snapshot /var/lib/misp-dns/misp-1.snapshot\n"
        assert process.signals == ["HUP"]


@pytest.mark.allow_errors
def test_an_ended_process_is_logged_and_started_again_later_each_time() -> None:
    """A serving process that ends is logged as an error and started again after 1 s, then
    2 s if the new one ends too."""
    group, reactor = _group()
    with capturedLogs() as events:
        _end(reactor.spawned[0][0], code=9)
    [error] = [e for e in events if e["log_level"] == LogLevel.error]
    assert "worker 1 (pid 1000) ended unexpectedly (exit status 9)" in formatEvent(error)
    assert "starting it again in 1 s" in formatEvent(error)
    reactor.advance(0.9)
    assert len(reactor.spawned) == 2
    reactor.advance(0.1)
    assert reactor.spawned[2][1][-3] == "1"
    _end(reactor.spawned[2][0])
    reactor.advance(1.9)
    assert len(reactor.spawned) == 3
    reactor.advance(0.1)
    assert len(reactor.spawned) == 4
    assert group.restarts == 2


def test_stopping_waits_for_every_process_and_kills_a_stuck_one() -> None:
    """Stopping sends SIGTERM to each; it is over once all ended, a process still there
    after the timeout gets SIGKILL; nothing is started again."""
    group, reactor = _group()
    stopped = group.stopService()
    assert [p.signals for _, _, _, p in reactor.spawned] == [["TERM"], ["TERM"]]
    _end(reactor.spawned[0][0], code=0)
    assert not stopped.called
    reactor.advance(group.stop_timeout)
    assert reactor.spawned[1][3].signals == ["TERM", "KILL"]
    _end(reactor.spawned[1][0])
    assert stopped.called
    reactor.advance(100)
    assert len(reactor.spawned) == 2


def test_what_a_process_says_is_relayed_at_its_level_and_its_count_kept() -> None:
    """Stderr lines are logged with the process's level and number; `queries N` on stdout
    is the count the metrics show."""
    group, reactor = _group()
    proto = reactor.spawned[1][0]
    with capturedLogs() as events:
        proto.childDataReceived(2, b"warn cannot open /x: denied\ninfo half")
        proto.childDataReceived(2, b" a line\n")
    proto.childDataReceived(1, b"queries 42\n")
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (LogLevel.warn, "worker 2: cannot open /x: denied"),
        (LogLevel.info, "worker 2: half a line"),
    ]
    assert group.queries == {2: 42}
