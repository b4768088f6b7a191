"""The supervisor's side of a group of serving processes (`[server] workers` above 1).

`WorkerGroup` is a service of the supervisor (the twistd process). Before twistd gives up
root it opens every listening socket (`misp_dns.dns.reuseport.group_sockets`); once running
it starts one serving process per worker, `python -m misp_dns.worker --config PATH --index
N --sockets M`, each with its own sockets as descriptors 3, 4, ... (per listen address, UDP
then TCP).
Then it:

- tells every serving process when an updater of the supervisor saved a new indicator
  snapshot (`snapshot_saved`, a line `snapshot PATH` on the process's stdin), so that it
  maps the new file;
- relays what a serving process logs (its stderr, one event per line, led by the level)
  into its own log, prefixed `worker N:`;
- passes SIGHUP on to every serving process (they reopen their query log files and reload
  their policy tables, as one process does on SIGHUP);
- starts a serving process that ended while the group runs again, after a delay that
  doubles with each end in a row (1 s up to a minute), and logs why it ended;
- on stop, sends SIGTERM to each and waits for them to end (each writes out the query
  records it still holds), and SIGKILL to one that has not ended after `stop_timeout`.

A serving process ends by itself when its stdin closes, which is what happens when the
supervisor dies without stopping it (and it asks the kernel for SIGTERM when its parent
dies, too): no serving process outlives its supervisor.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

import misp_dns
from misp_dns.backoff import backoff_delay
from misp_dns.dns.reuseport import ListeningSockets, group_sockets
from misp_dns.export.jsonl import HangupSignal, hangup
from misp_dns.values import HostPort

__all__ = ["WorkerGroup", "worker_command"]

#: The first descriptor number of the sockets a serving process inherits.
FIRST_SOCKET_FD = 3
#: A serving process that ran this long before it ended starts again at once.
_STEADY_SECONDS = 60.0
_LEVELS = {level.name: level for level in LogLevel.iterconstants()}


def worker_command(config_path: str, index: int, addresses: int) -> list[str]:
    """The command line of serving process number `index` (1-based), which inherits the
    sockets of `addresses` listen addresses."""
    return [
        sys.executable,
        "-m",
        "misp_dns.worker",
        "--config",
        config_path,
        "--index",
        str(index),
        "--sockets",
        str(addresses),
    ]


def _environment() -> dict[str, str]:
    """This process's environment, with misp_dns importable from where this one is."""
    environment = dict(os.environ)
    here = str(Path(misp_dns.__file__).resolve().parent.parent)
    paths = [here, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


def _why(reason: Failure) -> str:
    """How a process ended, in a few words: "exit status 1", "killed by signal 9"."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"killed by signal {value.signal}"
        return f"exit status {value.exitCode}"
    return reason.getErrorMessage()


class _Worker(protocol.ProcessProtocol):
    """One serving process: its output, relayed line by line, and its end."""

    def __init__(self, group: WorkerGroup, index: int, started: float) -> None:
        self.group = group
        self.index = index
        self.started = started
        self.pid: int | None = None
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, self._partial[childFD] = (self._partial.get(childFD, b"") + data).split(b"\n")
        for line in lines:
            self.group.said(self, childFD, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.group.said(self, fd, rest.decode("utf-8", "replace"))
        self._partial = {}
        self.group.ended(self, reason)

    def send(self, line: str) -> None:
        """One line to the process's stdin."""
        if self.transport is not None:
            self.transport.write(line.encode("utf-8") + b"\n")

    def signal(self, name: str) -> None:
        """Send signal `name` ("HUP", "TERM", "KILL") unless the process has ended."""
        with contextlib.suppress(OSError, ProcessExitedAlready):
            self.transport.signalProcess(name)  # type: ignore[union-attr]


class WorkerGroup(service.Service):
    """Runs `count` serving processes on sockets it opens; see the module docstring.

    `queries` holds, per worker index, the number of queries it last reported answering
    (a line `queries N` on its stdout, once a second while it changes).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        config_path: str,
        count: int,
        listen: Sequence[HostPort],
        backlog: int,
        *,
        command: Callable[[str, int, int], list[str]] = worker_command,
        open_sockets: Callable[..., list[list[ListeningSockets]]] = group_sockets,
        signals: HangupSignal = hangup,
        restart_after: float = 1.0,
        restart_at_most: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.reactor = reactor
        # Absolute before twistd changes directory when it daemonizes.
        self.config_path = os.path.abspath(config_path)
        self.count = count
        self.listen = tuple(listen)
        self.backlog = backlog
        self.command = command
        self.open_sockets = open_sockets
        self.signals = signals
        self.restart_after = restart_after
        self.restart_at_most = restart_at_most
        self.stop_timeout = stop_timeout
        self.sockets: list[list[ListeningSockets]] = []
        self.workers: dict[int, _Worker] = {}
        self.queries: dict[int, int] = {}
        self.restarts = 0
        self._ends_in_a_row: dict[int, int] = {}
        self._pending: dict[int, IDelayedCall] = {}
        self._stopped: defer.Deferred[None] | None = None
        self._token: int | None = None

    @property
    def pids(self) -> list[int]:
        """The process ids of the serving processes running now."""
        return [w.pid for w in self.workers.values() if w.pid is not None]

    def privilegedStartService(self) -> None:
        # Before twistd gives up root: ports below 1024 are bound here.
        super().privilegedStartService()
        self._open()

    def startService(self) -> None:
        super().startService()
        self._open()
        self._stopped = None
        for index in range(1, self.count + 1):
            self._spawn(index)
        self._token = self.signals.add(self.reactor, self.hangup)

    def _open(self) -> None:
        if not self.sockets:
            self.sockets = self.open_sockets(self.listen, self.count, self.backlog)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if not self.running:
            return
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        fd = FIRST_SOCKET_FD
        for sockets in self.sockets[index - 1]:
            child_fds[fd] = sockets.udp.fileno()
            child_fds[fd + 1] = sockets.tcp.fileno()
            fd += 2
        worker = _Worker(self, index, self.reactor.seconds())
        self.workers[index] = worker
        command = self.command(self.config_path, index, len(self.sockets[index - 1]))
        self.reactor.spawnProcess(
            worker, command[0], command, env=_environment(), childFDs=child_fds
        )
        self.log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def snapshot_saved(self, path: str) -> None:
        """Tell every serving process that the snapshot at `path` was replaced."""
        for worker in list(self.workers.values()):
            worker.send(f"snapshot {path}")

    def hangup(self) -> None:
        """Pass SIGHUP on to every serving process."""
        for worker in list(self.workers.values()):
            worker.signal("HUP")

    def said(self, worker: _Worker, fd: int, line: str) -> None:
        """A line from a serving process: a log event (stderr) or a report (stdout)."""
        if not line:
            return
        if fd == 1:
            name, _, value = line.partition(" ")
            if name == "queries" and value.isdigit():
                self.queries[worker.index] = int(value)
            return
        level_name, _, text = line.partition(" ")
        level = _LEVELS.get(level_name)
        if level is None:
            level, text = LogLevel.info, line
        self.log.emit(level, "worker {index}: {text}", index=worker.index, text=text)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        """A serving process ended: the group is stopping, or it is started again."""
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if not self.running:
            if not self.workers and self._stopped is not None and not self._stopped.called:
                self._stopped.callback(None)
            return
        ran = self.reactor.seconds() - worker.started
        ends = 1 if ran >= _STEADY_SECONDS else self._ends_in_a_row.get(worker.index, 0) + 1
        self._ends_in_a_row[worker.index] = ends
        delay = backoff_delay(ends, self.restart_after, self.restart_at_most)
        self.log.error(
            "worker {index} (pid {pid}) ended unexpectedly ({why}); starting it again in"
            " {delay:.0f} s",
            index=worker.index,
            pid=worker.pid,
            why=_why(reason),
            delay=delay,
        )
        self.restarts += 1
        self._pending[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._token is not None:
            self.signals.remove(self._token)
            self._token = None
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        stopped: defer.Deferred[None] = defer.Deferred()
        self._stopped = stopped
        if not self.workers:
            stopped.callback(None)
        for worker in list(self.workers.values()):
            worker.signal("TERM")
        killing = self.reactor.callLater(self.stop_timeout, self._kill_the_rest)

        def over(result: None) -> None:
            if killing.active():
                killing.cancel()
            self._close()

        return stopped.addCallback(over)

    def _kill_the_rest(self) -> None:
        for worker in list(self.workers.values()):
            self.log.warn(
                "worker {index} (pid {pid}) did not stop within {timeout:.0f} s; killing it",
                index=worker.index,
                pid=worker.pid,
                timeout=self.stop_timeout,
            )
            worker.signal("KILL")

    def _close(self) -> None:
        for sockets in self.sockets:
            for each in sockets:
                each.udp.close()
                each.tcp.close()
        self.sockets = []
