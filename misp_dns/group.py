"""The supervisor's side of a group of serving processes (`[server] workers` above 1).

`WorkerGroup` is a service of the supervisor (the twistd process). Before twistd gives up
root it opens every listening socket (`misp_dns.dns.reuseport.group_sockets`); once running
it starts one serving process per worker, `python -m misp_dns.worker --config PATH --index
N --sockets M`, each with its own sockets as descriptors 3, 4, ... (per listen address, UDP
then TCP).

With `zygote` (what the supervisor passes), a serving process is not a new interpreter:
the group starts the fork server `misp_dns.zygote` and, once it says `ready`, asks it to
fork each serving process, handing it the process's stdin, stdout and stderr pipes (the
group keeps the other ends) and its sockets. The zygote reports the pid of each fork and
the wait status of each end; a serving process counts as ended once that status came and
its output pipes closed. A zygote that ends takes its serving processes with it and is
started again after the same doubling delay; one that ends before it was ready makes the
group start serving processes as new interpreters from then on.

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
supervisor dies without stopping it (and it asks the kernel for SIGTERM when its parent,
the supervisor or the zygote, dies; the zygote asks for SIGKILL when the supervisor
dies): no serving process outlives its supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.process import ProcessReader, ProcessWriter
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

import misp_dns
from misp_dns.backoff import backoff_delay
from misp_dns.dns.reuseport import ListeningSockets, group_sockets
from misp_dns.export.jsonl import HangupSignal, hangup
from misp_dns.values import HostPort

__all__ = ["WorkerGroup", "worker_command", "zygote_command"]

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


def zygote_command() -> list[str]:
    """The command line of the fork server (`misp_dns.zygote`)."""
    return [sys.executable, "-m", "misp_dns.zygote"]


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


def _wait_status(status: int) -> Failure:
    """A wait status as the failure Twisted gives a `ProcessProtocol.processEnded`."""
    if os.WIFSIGNALED(status):
        return Failure(ProcessTerminated(signal=os.WTERMSIG(status), status=status))
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return Failure(ProcessDone(status))
    return Failure(ProcessTerminated(exitCode=code, status=status))


class _Forked:
    """The transport of a serving process the zygote forked: the supervisor's ends of its
    stdin, stdout and stderr pipes, and its pid once the zygote reports it.

    It tells its protocol the process ended once the zygote reported its end (or itself
    ended) and both output pipes closed, as Twisted does for a process it spawned."""

    def __init__(
        self,
        reactor: Any,
        proto: _Worker,
        pipes: tuple[int, int, int],
        kill: Callable[[int, int], None],
    ) -> None:
        stdin, stdout, stderr = pipes
        self.proto = proto
        self.kill = kill
        self.pid: int | None = None
        self.status: Failure | None = None
        self.pipes: dict[int, Any] = {
            0: ProcessWriter(reactor, self, 0, stdin),
            1: ProcessReader(reactor, self, 1, stdout),
            2: ProcessReader(reactor, self, 2, stderr),
        }
        self._over = False

    def write(self, data: bytes) -> None:
        if 0 in self.pipes:
            self.pipes[0].write(data)

    def signalProcess(self, name: str) -> None:
        if self.pid is None or self.status is not None:
            raise ProcessExitedAlready()
        self.kill(self.pid, getattr(signal, f"SIG{name}"))

    def childDataReceived(self, name: int, data: bytes) -> None:
        self.proto.childDataReceived(name, data)

    def childConnectionLost(self, name: int, reason: Failure) -> None:
        self.pipes.pop(name, None)
        self._maybe_over()

    def reaped(self, status: Failure) -> None:
        """The process ended (as the zygote reports), or its zygote did."""
        if self.status is None:
            self.status = status
        writer = self.pipes.pop(0, None)
        if writer is not None:
            writer.loseConnection()
        self._maybe_over()

    def _maybe_over(self) -> None:
        if self.status is not None and not {1, 2} & set(self.pipes) and not self._over:
            self._over = True
            self.proto.processEnded(self.status)


class _Zygote(protocol.ProcessProtocol):
    """The fork server process: forks serving processes on request, reports on stdout
    (`ready`, `forked N PID`, `ended PID STATUS`), logs on stderr."""

    def __init__(self, group: WorkerGroup, control: socket.socket, started: float) -> None:
        self.group = group
        self.control = control
        self.started = started
        self.pid: int | None = None
        self.ready = False
        #: What it forked (or was asked to), by pid once it reported one.
        self.forks: list[_Forked] = []
        self.children: dict[int, _Forked] = {}
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, self._partial[childFD] = (self._partial.get(childFD, b"") + data).split(b"\n")
        for line in lines:
            self.group.zygote_said(self, childFD, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.control.close()
        self.group.zygote_ended(self, reason)

    def fork(self, index: int, argv: list[str], fds: list[int]) -> None:
        """Ask for serving process `index`, with `fds` as its descriptors 0, 1, 2, ...;
        OSError if the zygote is gone."""
        request = json.dumps({"index": index, "argv": argv}).encode("utf-8")
        socket.send_fds(self.control, [request], fds)

    def kill(self) -> None:
        """SIGKILL: it ends (and its processes end with it)."""
        with contextlib.suppress(OSError, ProcessExitedAlready):
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]

    def stop(self) -> None:
        """Close its control socket and stdin: it ends (its children end with it)."""
        self.control.close()
        with contextlib.suppress(OSError, ProcessExitedAlready):
            self.transport.loseConnection()  # type: ignore[union-attr]


class ZygoteEnded(Exception):
    """A serving process's zygote ended: the process ends with it."""

    def __str__(self) -> str:
        return "its zygote ended"


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
        zygote: Callable[[], list[str]] | None = None,
        kill: Callable[[int, int], None] = os.kill,
        open_sockets: Callable[..., list[list[ListeningSockets]]] = group_sockets,
        signals: HangupSignal = hangup,
        restart_after: float = 1.0,
        restart_at_most: float = 60.0,
        stop_timeout: float = 15.0,
        zygote_ready_timeout: float = 60.0,
    ) -> None:
        self.reactor = reactor
        # Absolute before twistd changes directory when it daemonizes.
        self.config_path = os.path.abspath(config_path)
        self.count = count
        self.listen = tuple(listen)
        self.backlog = backlog
        self.command = command
        self.zygote_command = zygote
        self.kill = kill
        self.open_sockets = open_sockets
        self.signals = signals
        self.restart_after = restart_after
        self.restart_at_most = restart_at_most
        self.stop_timeout = stop_timeout
        self.zygote_ready_timeout = zygote_ready_timeout
        self.sockets: list[list[ListeningSockets]] = []
        self.workers: dict[int, _Worker] = {}
        self.queries: dict[int, int] = {}
        self.restarts = 0
        self._ends_in_a_row: dict[int, int] = {}
        self._pending: dict[int, IDelayedCall] = {}
        self._stopped: defer.Deferred[None] | None = None
        self._token: int | None = None
        self.zygote: _Zygote | None = None
        self._direct = zygote is None
        self._waiting: set[int] = set()
        self._zygote_ends = 0
        self._zygote_pending: IDelayedCall | None = None

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
        if not self._direct:
            self._start_zygote()
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
        if self._direct:
            self._spawn_directly(index)
        elif self.zygote is not None and self.zygote.ready:
            self._fork(index)
        else:
            self._waiting.add(index)

    def _socket_fds(self, index: int) -> list[int]:
        return [
            fd
            for sockets in self.sockets[index - 1]
            for fd in (sockets.udp.fileno(), sockets.tcp.fileno())
        ]

    def _start_zygote(self) -> None:
        self._zygote_pending = None
        if not self.running or self.zygote_command is None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zygote = _Zygote(self, ours, self.reactor.seconds())
        command = self.zygote_command()
        try:
            self.reactor.spawnProcess(
                zygote,
                command[0],
                command,
                env=_environment(),
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno()},
            )
        except OSError as problem:
            ours.close()
            self._fall_back(f"it could not be started: {problem}")
            return
        finally:
            theirs.close()
        self.zygote = zygote
        self.log.info("zygote started (pid {pid})", pid=zygote.pid)
        self.reactor.callLater(self.zygote_ready_timeout, self._not_ready_in_time, zygote)

    def _not_ready_in_time(self, zygote: _Zygote) -> None:
        if zygote.ready or self.zygote is not zygote or not self.running:
            return
        self.log.error(
            "zygote (pid {pid}) not ready within {timeout:.0f} s; killing it",
            pid=zygote.pid,
            timeout=self.zygote_ready_timeout,
        )
        zygote.kill()

    def _fall_back(self, why: str) -> None:
        self.log.error(
            "the zygote that forks serving processes is not running ({why}); starting"
            " each serving process as a new interpreter instead",
            why=why,
        )
        self._direct = True
        for index in sorted(self._waiting):
            self._spawn(index)
        self._waiting.clear()

    def _fork(self, index: int) -> None:
        zygote = self.zygote
        assert zygote is not None
        stdin, stdin_child = os.pipe()[::-1]
        stdout, stdout_child = os.pipe()
        stderr, stderr_child = os.pipe()
        worker = _Worker(self, index, self.reactor.seconds())
        self.workers[index] = worker
        argv = self.command(self.config_path, index, len(self.sockets[index - 1]))[3:]
        problem: OSError | None = None
        try:
            zygote.fork(
                index, argv, [stdin_child, stdout_child, stderr_child, *self._socket_fds(index)]
            )
        except OSError as error:
            problem = error
        finally:
            for fd in (stdin_child, stdout_child, stderr_child):
                os.close(fd)
        forked = _Forked(self.reactor, worker, (stdin, stdout, stderr), self.kill)
        zygote.forks.append(forked)
        worker.makeConnection(forked)
        if problem is not None:
            forked.reaped(Failure(problem))

    def zygote_said(self, zygote: _Zygote, fd: int, line: str) -> None:
        """A line from the zygote: a log event (stderr) or a report (stdout)."""
        if not line:
            return
        if fd == 2:
            self._relay("zygote", line)
            return
        word, *values = line.split()
        if word == "ready":
            zygote.ready = True
            if self.zygote is zygote:
                waiting, self._waiting = sorted(self._waiting), set()
                for index in waiting:
                    self._spawn(index)
        elif word == "forked" and len(values) == 2:
            self._forked(zygote, int(values[0]), int(values[1]))
        elif word == "ended" and len(values) == 2:
            forked = zygote.children.pop(int(values[0]), None)
            if forked is not None:
                zygote.forks.remove(forked)
                forked.reaped(_wait_status(int(values[1])))

    def _forked(self, zygote: _Zygote, index: int, pid: int) -> None:
        worker = self.workers.get(index)
        forked = worker.transport if worker is not None else None
        if not isinstance(forked, _Forked) or forked.pid is not None:
            return
        forked.pid = worker.pid = pid
        zygote.children[pid] = forked
        self.log.info("worker {index} started (pid {pid})", index=index, pid=pid)
        if not self.running:
            worker.signal("TERM")

    def zygote_ended(self, zygote: _Zygote, reason: Failure) -> None:
        """The zygote ended: its serving processes end with it; it is started again (or,
        if it never got ready, serving processes are started without it)."""
        if self.zygote is zygote:
            self.zygote = None
        for forked in zygote.forks:
            forked.reaped(Failure(ZygoteEnded()))
        if not self.running:
            return
        if not zygote.ready:
            self._fall_back(f"it ended before it was ready: {_why(reason)}")
            return
        ran = self.reactor.seconds() - zygote.started
        self._zygote_ends = 1 if ran >= _STEADY_SECONDS else self._zygote_ends + 1
        delay = backoff_delay(self._zygote_ends, self.restart_after, self.restart_at_most)
        self.log.error(
            "zygote (pid {pid}) ended unexpectedly ({why}); the serving processes it forked"
            " end with it; starting it again in {delay:.0f} s",
            pid=zygote.pid,
            why=_why(reason),
            delay=delay,
        )
        self._zygote_pending = self.reactor.callLater(delay, self._start_zygote)

    def _spawn_directly(self, index: int) -> None:
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
        self._relay(f"worker {worker.index}", line)

    def _relay(self, who: str, line: str) -> None:
        level_name, _, text = line.partition(" ")
        level = _LEVELS.get(level_name)
        if level is None:
            level, text = LogLevel.info, line
        self.log.emit(level, "{who}: {text}", who=who, text=text)

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
        self._waiting.clear()
        if self._zygote_pending is not None and self._zygote_pending.active():
            self._zygote_pending.cancel()
        self._zygote_pending = None
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
        if self.zygote is not None:
            self.zygote.stop()
        for sockets in self.sockets:
            for each in sockets:
                each.udp.close()
                each.tcp.close()
        self.sockets = []
