"""One serving process of a group: `python -m misp_dns.worker --config PATH --index N ...`.

`--sockets N`: it inherited N pairs of sockets. The supervisor (`misp_dns.group.WorkerGroup`,
in the twistd process) starts it; nobody else
should. It reads the same config, and builds the same server as a single process does
(`misp_dns.tap.build_service`) with these differences (docs/workers.md):

- it listens on the sockets it inherited, descriptors 3, 4, ... (per `server.listen`
  address, UDP then TCP), and binds nothing;
- its indicator-fed policies never fetch: they map the snapshot files the supervisor's
  updaters save (`misp_dns.intel.follower`), at start and on each line `snapshot PATH` it
  reads on stdin;
- CH TXT id.server answers `<server_name> worker N`;
- no admin listener (the supervisor runs it); every second it reports the number of
  queries it answered as a line `queries N` on stdout;
- it logs to stderr, one line per line of an event, led by the level name; the supervisor
  relays them to its own log;
- it ends on SIGTERM (after writing out its query records), when its stdin closes, or when
  its parent dies (PR_SET_PDEATHSIG), and on SIGHUP does what a single process does:
  reopen its log files and reload the `[[policy]]` tables.
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any, cast

from twisted.application import service
from twisted.internet import stdio, task
from twisted.logger import ILogObserver, eventAsText, globalLogBeginner
from twisted.protocols.basic import LineOnlyReceiver

from misp_dns.allocator import configure_malloc
from misp_dns.build import build_exporter, build_policies
from misp_dns.config import load_config
from misp_dns.dns.reuseport import ListeningSockets
from misp_dns.event import Answer
from misp_dns.intel.follower import SnapshotFollower
from misp_dns.interfaces import SnapshotSharing
from misp_dns.registry import default_registry
from misp_dns.tap import build_service, raise_open_files_limit, upstreams_of
from misp_dns.values import ConfigError, HostPort

__all__ = ["Control", "QueryCount", "Stopper", "inherited_sockets", "main"]

#: The first descriptor number of the inherited sockets (as `misp_dns.group` hands them).
FIRST_SOCKET_FD = 3
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
#: The name `ps` and /proc/PID/comm show for a serving process.
PROCESS_NAME = b"misp-dns-worker"


def inherited_sockets(addresses: int, first: int = FIRST_SOCKET_FD) -> list[ListeningSockets]:
    """The sockets this process inherited: for each of `addresses` listen addresses, UDP
    then TCP. Each says itself where it is bound, so a config file edited since the
    supervisor started cannot make a process restarted later misread them."""
    found = []
    for number in range(addresses):
        udp = socket.socket(fileno=first + 2 * number)
        tcp = socket.socket(fileno=first + 2 * number + 1)
        host, port = udp.getsockname()[:2]
        dual = udp.family == socket.AF_INET6 and not udp.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        )
        found.append(ListeningSockets(HostPort(host, port), dual, udp, tcp))
    return found


class QueryCount:
    """Counts the queries answered (a responder tally)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, transport: str, question: bytes, answer: Answer) -> None:
        self.count += 1


class Control(LineOnlyReceiver):
    """The pipe to the supervisor: `snapshot PATH` lines in, `queries N` lines out; its end
    stops the process."""

    delimiter = b"\n"

    def __init__(
        self, top: service.IService, count: QueryCount, reactor: Any, stopper: Stopper
    ) -> None:
        self.top = top
        self.stopper = stopper
        self.count = count
        self.reactor = reactor
        self._reported = -1
        self._reporting = task.LoopingCall(self.report)
        self._reporting.clock = reactor

    def connectionMade(self) -> None:
        self._reporting.start(1.0, now=False)

    def lineReceived(self, line: bytes) -> None:
        command, _, argument = line.decode("utf-8", "replace").partition(" ")
        if command == "snapshot":
            for follower in _followers(self.top):
                if follower.state_path == argument:
                    follower.reload()

    def report(self) -> None:
        """Say how many queries were answered, when that changed."""
        if self.count.count != self._reported and self.transport is not None:
            self._reported = self.count.count
            self.transport.write(b"queries %d\n" % self._reported)

    def connectionLost(self, reason: Any = None) -> None:
        if self._reporting.running:
            self._reporting.stop()
        self.stopper.stop()


class Stopper:
    """Stops the reactor once, however many of SIGTERM, SIGINT and stdin's end come."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def stop(self) -> None:
        """Stop the reactor, unless already asked to."""
        if not self.stopping and self.reactor.running:
            self.stopping = True
            self.reactor.stop()


def _followers(parent: Any) -> Iterator[SnapshotFollower]:
    """Every `SnapshotFollower` in the service tree under `parent` (reloads change them)."""
    for child in parent:
        if isinstance(child, SnapshotFollower):
            yield child
        if isinstance(child, service.MultiService):
            yield from _followers(child)


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor (or the zygote that forked this
    process) dies (Linux; elsewhere stdin's end), and name this process."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _log_to_stderr(event: dict[str, Any]) -> None:
    level = event.get("log_level")
    name = level.name if level is not None else "info"
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    sys.stderr.write("".join(f"{name} {line}\n" for line in text.splitlines()))
    sys.stderr.flush()


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m misp_dns.worker", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--sockets", type=int, required=True, help="listen addresses inherited")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one serving process until SIGTERM, or until the supervisor goes away."""
    arguments = _arguments(argv)
    _die_with_parent()
    from twisted.internet import reactor as installed

    reactor: Any = installed

    observer = cast(ILogObserver, _log_to_stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    registry = default_registry()
    try:
        config = load_config(arguments.config, registry)
        follow = SnapshotSharing(follow=True)
        policies = build_policies(config, registry, reactor, follow)
        exporter = None
        if config.export:
            exporter = build_exporter(config.export, registry, reactor, server=config.server)
        upstreams = upstreams_of(config.server)
    except ConfigError as problem:
        for line in problem.problems:
            sys.stderr.write(f"critical {line}\n")
        return 1
    configure_malloc()
    open_files_limit = raise_open_files_limit()
    count = QueryCount()
    name = config.server.server_name or socket.gethostname() or "localhost"
    top = build_service(
        config,
        policies,
        reactor,
        exporter=exporter,
        config_path=arguments.config,
        registry=registry,
        upstreams=upstreams,
        open_files_limit=open_files_limit,
        tsig_keys={},
        sockets=inherited_sockets(arguments.sockets),
        identity=f"{name.rstrip('.')} worker {arguments.index}",
        sharing=follow,
        with_admin=False,
        tally=count,
    )
    stopper = Stopper(reactor)
    stdio.StandardIO(Control(top, count, reactor, stopper))

    def stop_once(signum: int, frame: Any) -> None:
        # The supervisor sends SIGTERM, and so may systemd to the whole group: stop once.
        reactor.callFromThread(stopper.stop)

    def start() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop_once)
        top.privilegedStartService()
        top.startService()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
