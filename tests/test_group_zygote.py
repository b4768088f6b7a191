"""Tests for misp_dns.group with a zygote: serving processes forked by `misp_dns.zygote`.

The zygote is a fake: a recorded spawn whose control socket the test reads the requests
from (real descriptors, so what is attached is checked by inode), and whose reports the
test feeds to its protocol as the zygote would write them on its stdout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from misp_dns.export.jsonl import HangupSignal
from misp_dns.group import WorkerGroup, zygote_command
from misp_dns.values import HostPort


@attrs.define
class _Sockets:
    udp: socket.socket
    tcp: socket.socket


class _Process:
    """What the group sees of a spawned process: its pid, the signals sent, its stdin."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def loseConnection(self) -> None:
        self.closed = True


class _Reactor(MemoryReactorClock):
    """A memory reactor that records spawned processes and keeps, as a forked child
    would, a copy of the descriptor 3 it was asked to pass."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], _Process, socket.socket | None]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], **kw: Any) -> _Process:
        process = _Process(900 + len(self.spawned))
        fd = kw["childFDs"].get(3)
        control = None
        if args == zygote_command():
            control = socket.socket(fileno=os.dup(fd))
            control.setblocking(False)
        proto.makeConnection(process)
        self.spawned.append((proto, args, process, control))
        return process

    def pump(self) -> None:
        """Read what is readable on the pipes the group holds; close those at their end."""
        for reader in list(self.getReaders()):
            if reader.doRead() is not None:
                self.removeReader(reader)
                reader.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def sockets() -> Iterator[list[list[_Sockets]]]:
    """Two workers' real (unbound) sockets for one listen address."""
    made = [
        [_Sockets(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket())]
        for _ in range(2)
    ]
    yield made
    for each in made:
        for pair in each:
            pair.udp.close()
            pair.tcp.close()


def _group(
    sockets: list[list[_Sockets]], killed: list[tuple[int, int]] | None = None
) -> tuple[WorkerGroup, _Reactor]:
    reactor = _Reactor()
    sent = killed if killed is not None else []
    group = WorkerGroup(
        reactor,
        "/etc/misp dns.toml",
        2,
        [HostPort("127.0.0.1", 53)],
        128,
        open_sockets=lambda listen, processes, backlog: sockets,
        signals=HangupSignal(),
        zygote=zygote_command,
        kill=lambda pid, signum: sent.append((pid, signum)),
    )
    group.privilegedStartService()
    group.startService()
    return group, reactor


def _requests(control: socket.socket) -> list[tuple[dict[str, Any], list[int]]]:
    found = []
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 65536, 16)
        except BlockingIOError:
            return found
        found.append((json.loads(message), fds))


def _same_file(a: int, b: int) -> bool:
    return os.fstat(a).st_ino == os.fstat(b).st_ino


def _ready(reactor: _Reactor, n: int = 0) -> tuple[Any, socket.socket]:
    proto, _, _, control = reactor.spawned[n]
    assert control is not None
    proto.childDataReceived(1, b"ready\n")
    return proto, control


def test_each_process_is_forked_by_the_zygote_once_it_is_ready(
    sockets: list[list[_Sockets]],
) -> None:
    """The group starts `python -m misp_dns.zygote` and asks nothing before it says
    `ready`; then one request per serving process, with its arguments and its stdin,
    stdout, stderr and sockets attached; the pids it reports are the group's."""
    group, reactor = _group(sockets)
    [(zygote, args, _, control)] = reactor.spawned
    assert args[1:] == ["-m", "misp_dns.zygote"]
    assert control is not None and _requests(control) == []
    _ready(reactor)
    requests = _requests(control)
    assert [request for request, _ in requests] == [
        {
            "index": n,
            "argv": ["--config", "/etc/misp dns.toml", "--index", str(n), "--sockets", "1"],
        }
        for n in (1, 2)
    ]
    for n, (_, fds) in enumerate(requests):
        assert len(fds) == 5
        assert _same_file(fds[3], sockets[n][0].udp.fileno())
        assert _same_file(fds[4], sockets[n][0].tcp.fileno())
        for fd in fds:
            os.close(fd)
    assert group.pids == []
    zygote.childDataReceived(1, b"forked 1 501\nforked 2 502\n")
    assert group.pids == [501, 502]
    assert len(reactor.spawned) == 1


@pytest.mark.allow_errors
def test_a_forked_process_that_ends_is_relayed_and_forked_again(
    sockets: list[list[_Sockets]],
) -> None:
    """What a forked process writes on its stderr is logged as its own; when the zygote
    reports its end and its pipes close, that is logged with how it ended, and the zygote
    is asked for it again after 1 s."""
    group, reactor = _group(sockets)
    zygote, control = _ready(reactor)
    [(_, first), _] = _requests(control)
    zygote.childDataReceived(1, b"forked 1 501\nforked 2 502\n")
    os.write(first[2], b"warn cannot open /x\n")
    with capturedLogs() as events:
        reactor.pump()
        zygote.childDataReceived(1, b"ended 501 9\n")
        for fd in first:
            os.close(fd)
        reactor.pump()
    assert [(e["log_level"], formatEvent(e)) for e in events][:2] == [
        (LogLevel.warn, "worker 1: cannot open /x"),
        (
            LogLevel.error,
            "worker 1 (pid 501) ended unexpectedly (killed by signal 9); starting it again in 1 s",
        ),
    ]
    assert group.pids == [502]
    reactor.advance(1)
    [(request, fds)] = _requests(control)
    assert request["index"] == 1
    for fd in fds:
        os.close(fd)


@pytest.mark.allow_errors
def test_a_zygote_that_ends_takes_its_processes_and_is_started_again(
    sockets: list[list[_Sockets]],
) -> None:
    """When the zygote ends, that is logged; its serving processes end once their pipes
    close (they die with it); a new zygote starts after 1 s and forks them again once
    ready."""
    group, reactor = _group(sockets)
    zygote, control = _ready(reactor)
    requests = _requests(control)
    zygote.childDataReceived(1, b"forked 1 501\nforked 2 502\n")
    with capturedLogs() as events:
        zygote.processEnded(Failure(ConnectionDone()))
        for _, fds in requests:
            for fd in fds:
                os.close(fd)
        reactor.pump()
    errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
    assert errors[0].startswith("zygote (pid 900) ended unexpectedly")
    assert sorted(error.split(";")[0] for error in errors[1:]) == [
        f"worker {n} (pid {500 + n}) ended unexpectedly (its zygote ended)" for n in (1, 2)
    ]
    assert group.pids == []
    reactor.advance(1)
    assert [args[1:] for _, args, _, _ in reactor.spawned] == [["-m", "misp_dns.zygote"]] * 2
    _, new_control = _ready(reactor, 1)
    assert sorted(r["index"] for r, _ in _requests(new_control)) == [1, 2]


@pytest.mark.allow_errors
def test_without_a_ready_zygote_processes_are_started_as_new_interpreters(
    sockets: list[list[_Sockets]],
) -> None:
    """A zygote that ends before it is ready (it could not import something) is logged,
    and every serving process is started as `python -m misp_dns.worker` instead."""
    group, reactor = _group(sockets)
    with capturedLogs() as events:
        reactor.spawned[0][0].processEnded(Failure(ConnectionDone()))
    [error] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
    assert "zygote that forks serving processes is not running" in error
    assert [args[1:3] for _, args, _, _ in reactor.spawned[1:]] == [["-m", "misp_dns.worker"]] * 2
    assert group.pids == [901, 902]


def test_stopping_stops_the_zygote_after_its_processes(sockets: list[list[_Sockets]]) -> None:
    """On stop each forked process gets SIGTERM (by pid); the zygote is stopped only once
    every one of them ended, so that it reports their ends."""
    killed: list[tuple[int, int]] = []
    group, reactor = _group(sockets, killed)
    zygote, control = _ready(reactor)
    requests = _requests(control)
    zygote.childDataReceived(1, b"forked 1 501\nforked 2 502\n")
    stopped = group.stopService()
    assert killed == [(501, signal.SIGTERM), (502, signal.SIGTERM)]
    assert not stopped.called
    zygote.childDataReceived(1, b"ended 501 0\nended 502 0\n")
    for _, fds in requests:
        for fd in fds:
            os.close(fd)
    assert not reactor.spawned[0][2].closed
    reactor.pump()
    assert stopped.called
    assert reactor.spawned[0][2].closed


@pytest.mark.allow_errors
def test_a_zygote_not_ready_in_time_is_killed_and_processes_start_without_it(
    sockets: list[list[_Sockets]],
) -> None:
    """A zygote still not ready after a minute (stuck importing) gets SIGKILL; its end
    then makes the group start serving processes as new interpreters."""
    _, reactor = _group(sockets)
    zygote, _, process, _ = reactor.spawned[0]
    reactor.advance(59)
    assert process.signals == []
    with capturedLogs() as events:
        reactor.advance(1)
    assert process.signals == ["KILL"]
    assert "zygote (pid 900) not ready within 60 s; killing it" in [formatEvent(e) for e in events]
    zygote.processEnded(Failure(ConnectionDone()))
    assert [args[1:3] for _, args, _, _ in reactor.spawned[1:]] == [["-m", "misp_dns.worker"]] * 2
