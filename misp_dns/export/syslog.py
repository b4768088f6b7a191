"""The `syslog` sink: each query record as the MSG of one syslog message.

    [[export]]
    type = "syslog"
    address = "127.0.0.1:514"   # "host:port", "[v6]:port", or a socket path for unix
    protocol = "udp"            # udp | tcp | tls | unix
    format = "rfc5424"          # or "rfc3164" for old receivers
    facility = "local6"
    severity = "info"
    hostname = ""               # HOSTNAME field; empty = this host's name
    ca_file = ""                # tls: PEM file of the CAs to trust; empty = the system store
    server_name = ""            # tls: the name the certificate must carry; empty = the host
    include = "all"             # or "blocked"
    max_queue = 100000          # records held while the receiver (tcp/tls) or the sending
                                # process (udp/unix) is behind
    max_queue_bytes = 67108864  # ... and the memory they may take (64 MiB)

RFC 5424 messages read `<182>1 2025-11-26T10:10:30.567Z host misp-dns 4242 Blocked - {json}`:
APP-NAME `misp-dns`, PROCID the process id, MSGID the record's `responseType`, no
structured data, the JSON record as MSG. RFC 3164 messages read
`<182>Nov 26 11:10:30 host misp-dns[4242]: {json}` (local time, as that format has it).

Datagrams (`udp`, `unix`) are sent by a child process, `python -m
misp_dns.export.datagram_worker`, that the sink starts and feeds in batches: one datagram per
query costs the kernel about what answering the query costs, and in the child that work runs
on another core. The child formats the very bytes the sink would (same header, the server's
pid), ignores SIGTERM and SIGINT (a stopping server hands it what it holds, then closes its
stdin; stopping waits for it, `STOP_TIMEOUT` at most), and is started again, after a growing
delay, if it dies; what a dead child held is counted as dropped. With a reactor that cannot
start processes (a test's clock) the datagrams leave from the server itself.

Transports: `udp` (one datagram per message), `tcp` (RFC 6587 octet counting: `LEN SP MSG`),
`tls` (the same over TLS, RFC 5425; the certificate is checked against `ca_file` or the
system's CAs and against `server_name`), `unix` (a datagram socket such as `/dev/log`).
Nothing here ever waits for the receiver: a datagram that cannot leave at once is dropped;
a stream keeps up to `max_queue` records, in at most `max_queue_bytes` of memory, while it
is disconnected, connecting or pushed back, and drops the newest beyond that. Streams
reconnect with a growing delay (0.5 s doubling to 30 s). Every loss is counted in `dropped`
and reported by the exporter. (Bytes already handed to a TCP connection when it breaks, at
most about 64 KB, are lost uncounted: TCP cannot say what arrived.)
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorProcess
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from misp_dns.backoff import backoff_delay
from misp_dns.export.options import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    SinkOptions,
    one_of,
)
from misp_dns.export.record import QueryRecord, encode_records
from misp_dns.export.spool import FrameSpool
from misp_dns.interfaces import BuildContext, ISink, PluginType
from misp_dns.values import ConfigError, FieldError

__all__ = [
    "FACILITIES",
    "SEVERITIES",
    "DatagramSender",
    "ProcessDatagramSender",
    "StreamSender",
    "SyslogFormatter",
    "SyslogOptions",
    "SyslogSink",
    "parse_address",
    "plugin",
]

FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    **{f"local{n}": 16 + n for n in range(8)},
}
SEVERITIES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
PROTOCOLS = ("udp", "tcp", "tls", "unix")
FORMATS = ("rfc5424", "rfc3164")
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
APP_NAME = "misp-dns"
#: The largest UDP payload over IPv4; longer messages are dropped and counted.
MAX_DATAGRAM = 65507
CONNECT_TIMEOUT = 10.0
#: A connection that lasted this long (seconds) resets the reconnection delay.
STABLE_CONNECTION = 10.0
#: On stop, how long a stream may take to deliver what it holds.
STOP_TIMEOUT = 5.0

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def parse_address(text: str, protocol: str) -> tuple[str, int] | str:
    """`(host, port)` for udp/tcp/tls ("host:port", "[v6]:port", or a host and the default
    port), or the socket path for unix. Raises ValueError with a readable message."""
    if protocol == "unix":
        if not text.startswith("/"):
            raise ValueError(f"expected the absolute path of a socket, got {text!r}")
        return text
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([^\s:\[\]/]+)(?::(\d{1,5}))?", text)
    if not match:
        raise ValueError(f'expected "host:port" or "[IPv6]:port", got {text!r}')
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else DEFAULT_PORTS[protocol]
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range 1..65535 in {text!r}")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address in brackets, got {text!r}") from None
    return host, port


@attrs.frozen(kw_only=True)
class SyslogOptions(SinkOptions):
    """`[[export]] type = "syslog"`: where and how the messages go."""

    address: str = "127.0.0.1:514"
    protocol: str = attrs.field(default="udp", validator=one_of(*PROTOCOLS))
    format: str = attrs.field(default="rfc5424", validator=one_of(*FORMATS))
    facility: str = attrs.field(default="local6", validator=one_of(*FACILITIES))
    severity: str = attrs.field(default="info", validator=one_of(*SEVERITIES))
    hostname: str = ""
    ca_file: str = ""
    server_name: str = ""

    def __attrs_post_init__(self) -> None:
        try:
            parse_address(self.address, self.protocol)
        except ValueError as exc:
            raise FieldError("address", str(exc)) from None
        if self.hostname and not re.fullmatch(r"[!-~]{1,255}", self.hostname):
            raise FieldError(
                "hostname", f"expected printable ASCII without spaces, got {self.hostname!r}"
            )
        if (self.ca_file or self.server_name) and self.protocol != "tls":
            key = "ca_file" if self.ca_file else "server_name"
            raise FieldError(key, 'only used with protocol = "tls"')


def _clean_hostname(name: str) -> str:
    cleaned = "".join(ch for ch in name if "!" <= ch <= "~")[:255]
    return cleaned or "-"


class SyslogFormatter:
    """Turns a record into one syslog message (without transport framing)."""

    def __init__(
        self,
        format: str = "rfc5424",
        facility: str = "local6",
        severity: str = "info",
        hostname: str = "",
        pid: int | None = None,
        clock: Any = None,
    ) -> None:
        self.format = format
        self.priority = FACILITIES[facility] * 8 + SEVERITIES[severity]
        self.hostname = _clean_hostname(hostname or socket.gethostname())
        self.pid = os.getpid() if pid is None else pid
        self.clock = clock
        if format == "rfc5424":
            self._head = f"<{self.priority}>1 "
            self._middle = f" {self.hostname} {APP_NAME} {self.pid} "
        else:
            self._head = f"<{self.priority}>"
            self._middle = f" {self.hostname.split('.')[0]} {APP_NAME}[{self.pid}]: "

    def __call__(self, record: QueryRecord) -> bytes:
        """The message for `record`, UTF-8 encoded."""
        if self.format == "rfc5424":
            stamp, msgid = record.timestamp, record.response_type
            text = f"{self._head}{stamp}{self._middle}{msgid} - {record.line}"
        else:
            text = f"{self._head}{self._stamp_3164()}{self._middle}{record.line}"
        return text.encode("utf-8", "backslashreplace")

    def message(self, line: bytes, timestamp: str, response_type: str) -> bytes:
        """The same message as `__call__` gives, from the record's line as the sinks write
        it (`record.encode_records`) and its timestamp and response type. The header is
        ASCII, so joining bytes gives what encoding the joined text gives."""
        if self.format == "rfc5424":
            head = f"{self._head}{timestamp}{self._middle}{response_type} - "
        else:
            head = f"{self._head}{self._stamp_3164()}{self._middle}"
        return head.encode("ascii") + line

    def _stamp_3164(self) -> str:
        now = self.clock.seconds() if self.clock is not None else time.time()
        local = time.localtime(now)
        return f"{_MONTHS[local.tm_mon - 1]} {local.tm_mday:2d} {time.strftime('%H:%M:%S', local)}"


class DatagramSender:
    """Sends each message as one datagram (UDP or a unix datagram socket), never waiting."""

    log = Logger()

    def __init__(self, address: tuple[str, int] | str, reactor: Any) -> None:
        self.address = address
        self.reactor = reactor
        self.dropped = 0
        self.sent = 0
        self._socket: socket.socket | None = None
        self._target: Any = None
        self._failing = False

    @property
    def description(self) -> str:
        if isinstance(self.address, str):
            return f"unix:{self.address}"
        return f"udp:{self.address[0]}:{self.address[1]}"

    def start(self) -> defer.Deferred[None] | None:
        """Open the socket; a host name is resolved once, here."""
        if isinstance(self.address, str):
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
            self._target = self.address
            return None
        host, port = self.address
        try:
            ipaddress.ip_address(host)
        except ValueError:
            resolving: defer.Deferred[str] = self.reactor.resolve(host)
            resolving.addCallback(self._resolved, port)
            resolving.addErrback(self._unresolved, host)
            return None
        self._resolved(host, port)
        return None

    def _resolved(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        # Connected: the kernel looks the route up once, not for every datagram.
        sock.connect((host, port))
        self._socket = sock
        self._target = None

    def _unresolved(self, failure: Failure, host: str) -> None:
        self.log.warn(
            "syslog: cannot resolve {host}: {reason}; its records are dropped",
            host=host,
            reason=failure.getErrorMessage(),
        )

    def send(self, messages: Iterable[bytes]) -> None:
        """Send each message; any that cannot leave at once is dropped and counted."""
        sock = self._socket
        if sock is None:
            self.dropped += sum(1 for _ in messages)
            return
        target = self._target
        send = sock.send if target is None else lambda data: sock.sendto(data, target)
        for message in messages:
            if len(message) > MAX_DATAGRAM:
                self.dropped += 1
                continue
            try:
                send(message)
            except OSError as exc:
                self.dropped += 1
                if not self._failing and not isinstance(exc, BlockingIOError):
                    self._failing = True
                    self.log.warn(
                        "syslog {to}: cannot send: {reason}; records are dropped until it works",
                        to=self.description,
                        reason=exc.strerror or str(exc),
                    )
                continue
            self.sent += 1
            if self._failing:
                self._failing = False
                self.log.info("syslog {to}: sending again", to=self.description)

    def stop(self) -> None:
        """Close the socket."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


#: Precedes each batch written to the datagram worker: its length (see datagram_worker).
_BATCH_HEADER = struct.Struct("!I")
#: What the worker reports after each batch: handled, sent, dropped, bytes read.
_WORKER_REPORT = struct.Struct("!QQQQ")
#: The module run as the datagram worker.
WORKER_MODULE = "misp_dns.export.datagram_worker"
#: The worker is started through the shell so that it ignores SIGTERM, SIGINT and SIGHUP
#: before Python starts (an ignored signal stays ignored across exec): a signal sent to the
#: whole process group must not end it before the server has handed it everything. Only a
#: signal in the instant before the shell's trap ends it (it is then started again).
_SHELL = "/bin/sh"
_IGNORE_SIGNALS = f'trap "" TERM INT HUP; exec "$0" -m {WORKER_MODULE} "$1"'
#: The size asked for the pipe to the worker.
_PIPE_SIZE = 1 << 20
#: Where the package lives, put first on the worker's PYTHONPATH so it runs the same code.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _WorkerProtocol(ProcessProtocol):
    """The server's end of one datagram worker process."""

    def __init__(self, owner: ProcessDatagramSender) -> None:
        self.owner = owner
        self._reports = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            reports = self._reports + data
            usable = len(reports) - len(reports) % _WORKER_REPORT.size
            if usable:
                self.owner._reported(
                    _WORKER_REPORT.unpack(reports[usable - _WORKER_REPORT.size : usable])
                )
            self._reports = reports[usable:]
        else:
            for line in data.decode("utf-8", "replace").splitlines():
                if line.strip():
                    self.owner.log.warn("{line}", line=line.strip())

    def processEnded(self, reason: Failure) -> None:
        self.owner._ended(self, reason)


class ProcessDatagramSender:
    """Sends each record as one datagram from a child process (`datagram_worker`), so that
    the sending, which costs the kernel about what answering a query costs, runs beside the
    server instead of inside it.

    `send_records` writes a batch (the NDJSON bytes `encode_records` makes, which the JSONL
    sink writes too) to the child's stdin and returns. Records handed over but not yet sent
    are bounded by `max_queue` and `max_queue_bytes`: beyond them the newest batch is
    dropped and counted. The child counts what it could not send; a child that dies loses
    what it held (counted) and is started again, after a growing delay. `stop` closes the
    child's stdin: it sends everything it was given, then exits; after `stop_timeout` it is
    killed and what it still held is counted as dropped.
    """

    log = Logger()

    def __init__(
        self,
        address: tuple[str, int] | str,
        reactor: Any,
        formatter: SyslogFormatter,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        stop_timeout: float = STOP_TIMEOUT,
        executable: str = sys.executable,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.formatter = formatter
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.stop_timeout = stop_timeout
        self.executable = executable
        #: Worker processes started (1 unless one died).
        self.started = 0
        #: True once the running worker has said it is ready (and ignores SIGTERM).
        self.ready = False
        self._dropped_here = 0
        self._lost = 0
        # What the running child was given, and its last report.
        self._handed = 0
        self._handed_bytes = 0
        self._report = (0, 0, 0, 0)
        # What earlier children reported (sent, dropped), added when they ended.
        self._sent_before = 0
        self._dropped_before = 0
        self._protocol: _WorkerProtocol | None = None
        self._running = False
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._ended_waiters: list[defer.Deferred[None]] = []

    @property
    def description(self) -> str:
        if isinstance(self.address, str):
            return f"unix:{self.address}"
        return f"udp:{self.address[0]}:{self.address[1]}"

    @property
    def sent(self) -> int:
        """Datagrams sent."""
        return self._sent_before + self._report[1]

    @property
    def dropped(self) -> int:
        """Records lost: over the bounds, unsendable in the child, or held by a dead child."""
        return self._dropped_here + self._lost + self._dropped_before + self._report[2]

    @property
    def pending(self) -> int:
        """Records handed to the child and not yet handled by it."""
        return self._handed - self._report[0]

    def _parameters(self) -> str:
        formatter = self.formatter
        if isinstance(self.address, str):
            address: dict[str, Any] = {"path": self.address}
        else:
            address = {"host": self.address[0], "port": self.address[1]}
        return json.dumps(
            {
                "address": address,
                "format": formatter.format,
                "facility": _name_of(FACILITIES, formatter.priority // 8),
                "severity": _name_of(SEVERITIES, formatter.priority % 8),
                "hostname": formatter.hostname,
                "pid": formatter.pid,
            }
        )

    def start(self) -> None:
        """Start the worker process."""
        self._running = True
        self._spawn()

    def _spawn(self) -> None:
        self._retry = None
        if not self._running:
            return
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [_PACKAGE_ROOT, environment.get("PYTHONPATH")])
        )
        protocol = _WorkerProtocol(self)
        self.ready = False
        self._handed = self._handed_bytes = 0
        self._report = (0, 0, 0, 0)
        try:
            self.reactor.spawnProcess(
                protocol,
                _SHELL,
                [_SHELL, "-c", _IGNORE_SIGNALS, self.executable, self._parameters()],
                env=environment,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as exc:
            self.log.error(
                "syslog {to}: cannot start the sending process: {reason}",
                to=self.description,
                reason=exc.strerror or str(exc),
            )
            self._schedule_spawn()
            return
        self._protocol = protocol
        self.started += 1
        _widen_pipe(protocol)

    def _schedule_spawn(self) -> None:
        if not self._running:
            return
        self._failures += 1
        self._retry = self.reactor.callLater(backoff_delay(self._failures, 1.0, 30.0), self._spawn)

    def send_records(self, records: Sequence[QueryRecord]) -> None:
        """Hand the records to the worker, or drop and count them all when it is not
        running or holds as much as the bounds allow."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            self._dropped_here += len(records)
            return
        data = encode_records(records)
        waiting_bytes = self._handed_bytes - self._report[3]
        if (
            self.pending + len(records) > self.max_queue
            or waiting_bytes + len(data) > self.max_queue_bytes
        ):
            self._dropped_here += len(records)
            return
        protocol.transport.writeSequence([_BATCH_HEADER.pack(len(data)), data])
        self._handed += len(records)
        self._handed_bytes += _BATCH_HEADER.size + len(data)

    def send(self, messages: Iterable[bytes]) -> None:
        """Not used: this sender formats in the worker (see `send_records`)."""
        raise NotImplementedError("ProcessDatagramSender takes records: send_records")

    def _reported(self, report: tuple[int, int, int, int]) -> None:
        self._report = report
        self._failures = 0
        self.ready = True

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        handled, sent, dropped, _ = self._report
        self._sent_before += sent
        self._dropped_before += dropped
        self._lost += self._handed - handled
        self._handed = self._handed_bytes = 0
        self._report = (0, 0, 0, 0)
        waiters, self._ended_waiters = self._ended_waiters, []
        if waiters:
            for waiter in waiters:
                waiter.callback(None)
            return
        self.log.error(
            "syslog {to}: the sending process ended ({reason}); starting it again",
            to=self.description,
            reason=reason.getErrorMessage(),
        )
        self._schedule_spawn()

    def stop(self) -> defer.Deferred[None] | None:
        """Let the worker send what it holds and exit (killed after `stop_timeout`)."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return None
        ended: defer.Deferred[None] = defer.Deferred()
        self._ended_waiters.append(ended)
        transport: Any = protocol.transport
        transport.closeStdin()
        timer = self.reactor.callLater(self.stop_timeout, _kill, transport)
        ended.addBoth(_cancel_timer, timer)
        return ended


def _widen_pipe(protocol: _WorkerProtocol) -> None:
    """Let the pipe to the worker hold a whole batch (1 MiB, Linux's default most for an
    unprivileged process), so a batch goes out in one write instead of one per 64 KiB,
    each waking the worker."""
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    try:
        fd = protocol.transport.pipes[0].fileno()  # type: ignore[union-attr]
    except (AttributeError, KeyError):
        return
    if setter is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setter, _PIPE_SIZE)


def _kill(transport: Any) -> None:
    with contextlib.suppress(Exception):  # already gone
        transport.signalProcess("KILL")


def _cancel_timer(result: object, timer: IDelayedCall) -> object:
    if timer.active():
        timer.cancel()
    return result


def _name_of(names: dict[str, int], value: int) -> str:
    return next(name for name, number in names.items() if number == value)


class _StreamProtocol(Protocol):
    """One connection of a `StreamSender`; the sender is told of pauses and loss."""

    def __init__(self, owner: StreamSender) -> None:
        self.owner = owner

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.owner._connected(self)

    def dataReceived(self, data: bytes) -> None:
        """Receivers have nothing to say; whatever they send is ignored."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.owner._lost(self, reason)

    def pauseProducing(self) -> None:
        self.owner._paused = True

    def resumeProducing(self) -> None:
        self.owner._paused = False
        self.owner._pump()

    def stopProducing(self) -> None:
        """The connection is going away; `connectionLost` follows."""


class _StreamFactory(Factory):
    noisy = False

    def __init__(self, owner: StreamSender) -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> Protocol:
        return _StreamProtocol(self.owner)


class StreamSender:
    """Sends octet-counted messages over one TCP or TLS connection, reconnecting as needed.

    Messages wait in a backlog of at most `max_queue` messages and `max_queue_bytes` of
    mapped memory while the connection is down or pushed back; the newest beyond either bound
    are dropped and counted. The backlog is a `FrameSpool`, so the memory an outage took goes
    back to the system once its records are delivered.
    """

    log = Logger()

    def __init__(
        self,
        connect: Callable[[Factory], defer.Deferred[Any]],
        reactor: Any,
        *,
        description: str,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self._connect_with = connect
        self.reactor = reactor
        self.description = description
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.stop_timeout = stop_timeout
        self.dropped = 0
        self.sent = 0
        self.connections = 0
        self._backlog = FrameSpool()
        self._protocol: _StreamProtocol | None = None
        self._paused = False
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._connected_at = 0.0
        self._attempt: defer.Deferred[Any] | None = None
        self._running = False
        self._failing = False
        self._closed: defer.Deferred[None] | None = None

    @property
    def connected(self) -> bool:
        """True while a connection is up."""
        return self._protocol is not None

    def __len__(self) -> int:
        return len(self._backlog)

    @property
    def held_bytes(self) -> int:
        """Bytes of memory the backlog maps."""
        return self._backlog.mapped

    def start(self) -> None:
        """Connect (in the background; messages wait in the backlog meanwhile)."""
        self._running = True
        self._connect()

    def send(self, messages: Iterable[bytes]) -> None:
        """Queue the messages, framed, those the bounds leave room for; write what the
        connection takes now. Messages are taken one at a time, so a generator that formats
        them never has more than one dropped message in memory."""
        backlog = self._backlog
        max_queue, max_bytes = self.max_queue, self.max_queue_bytes
        for message in messages:
            if len(backlog) >= max_queue or backlog.mapped + backlog.cost(message) > max_bytes:
                self.dropped += 1
                continue
            backlog.append(message)
        if self._protocol is not None and not self._paused:
            self._pump()

    def _pump(self) -> None:
        backlog = self._backlog
        protocol = self._protocol
        while backlog and protocol is not None and not self._paused:
            data, frames = backlog.take()
            self.sent += frames
            protocol.transport.write(data)  # type: ignore[union-attr]
            protocol = self._protocol

    def _connect(self) -> None:
        self._retry = None
        attempt = self._connect_with(_StreamFactory(self))
        self._attempt = attempt
        attempt.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._attempt = None
        if failure.check(defer.CancelledError) and not self._running:
            return
        self._warn_once("cannot connect", failure)
        self._schedule_retry()

    def _warn_once(self, what: str, failure: Failure | None) -> None:
        if self._failing:
            return
        self._failing = True
        self.log.warn(
            "syslog {to}: {what}{reason}; retrying, holding up to {max_queue} records"
            " in {max_queue_bytes} bytes",
            to=self.description,
            what=what,
            reason=f": {failure.getErrorMessage()}" if failure is not None else "",
            max_queue=self.max_queue,
            max_queue_bytes=self.max_queue_bytes,
        )

    def _schedule_retry(self) -> None:
        if not self._running:
            return
        self._failures += 1
        delay = backoff_delay(self._failures, self.initial_delay, self.max_delay)
        self._retry = self.reactor.callLater(delay, self._connect)

    def _connected(self, protocol: _StreamProtocol) -> None:
        self._attempt = None
        self._protocol = protocol
        self._paused = False
        self.connections += 1
        self._connected_at = self.reactor.seconds()
        if self._failing:
            self._failing = False
            self.log.info("syslog {to}: connected", to=self.description)
        self._pump()
        if not self._running:
            self._close_connection()

    def _lost(self, protocol: _StreamProtocol, reason: Failure | None) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._paused = False
        if self._closed is not None:
            closed, self._closed = self._closed, None
            closed.callback(None)
            return
        if self.reactor.seconds() - self._connected_at >= STABLE_CONNECTION:
            # A connection that lasted: try again soon. One that flaps keeps backing off.
            self._failures = 0
        self._warn_once("connection lost", reason)
        self._schedule_retry()

    def stop(self) -> defer.Deferred[None] | None:
        """Deliver what the backlog holds if connected (within `stop_timeout`), then close."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None
        if self._protocol is None:
            self.dropped += self._backlog.clear()
            return None
        return self._close_connection()

    def _close_connection(self) -> defer.Deferred[None]:
        protocol = self._protocol
        assert protocol is not None
        self._paused = False
        self._pump_all(protocol)
        closed: defer.Deferred[None] = defer.Deferred()
        self._closed = closed
        transport: Any = protocol.transport
        transport.unregisterProducer()
        transport.loseConnection()
        timer = self.reactor.callLater(self.stop_timeout, transport.abortConnection)
        closed.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return closed

    def _pump_all(self, protocol: _StreamProtocol) -> None:
        if self._backlog:
            data, frames = self._backlog.take_all()
            self.sent += frames
            protocol.transport.write(data)  # type: ignore[union-attr]


@implementer(ISink)
class SyslogSink:
    """Formats each record as a syslog message and hands it to a sender."""

    def __init__(self, formatter: Callable[[QueryRecord], bytes], sender: Any) -> None:
        self.formatter = formatter
        self.sender = sender
        # A sender that formats elsewhere (`ProcessDatagramSender`) takes the records.
        self._send_records: Callable[[Sequence[QueryRecord]], None] | None = getattr(
            sender, "send_records", None
        )

    @property
    def dropped(self) -> int:
        """Records the sender could not deliver."""
        return int(self.sender.dropped)

    @classmethod
    def from_config(cls, options: SyslogOptions, context: BuildContext) -> SyslogSink:
        """The sink for one `[[export]] type = "syslog"` table; reads `ca_file` here."""
        reactor = context.reactor
        formatter = SyslogFormatter(
            options.format, options.facility, options.severity, options.hostname, clock=reactor
        )
        address = parse_address(options.address, options.protocol)
        if isinstance(address, str) or options.protocol == "udp":
            if IReactorProcess.providedBy(reactor):
                sender: Any = ProcessDatagramSender(
                    address,
                    reactor,
                    formatter,
                    max_queue=options.max_queue,
                    max_queue_bytes=options.max_queue_bytes,
                )
                return cls(formatter, sender)
            # A reactor that cannot start processes (a test's clock): send from here.
            return cls(formatter, DatagramSender(address, reactor))
        host, port = address
        if options.protocol == "tls":
            creator = _tls_options(options.server_name or host, options.ca_file)
        description = f"{options.protocol}:{options.address}"

        def connect(factory: Factory) -> defer.Deferred[Any]:
            endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
            if options.protocol == "tls":
                endpoint = wrapClientTLS(creator, endpoint)
            return endpoint.connect(factory)

        sender = StreamSender(
            connect,
            reactor,
            description=description,
            max_queue=options.max_queue,
            max_queue_bytes=options.max_queue_bytes,
        )
        return cls(formatter, sender)

    def start(self) -> Any:
        """Open the socket or start connecting."""
        return self.sender.start()

    def write(self, records: Sequence[QueryRecord]) -> None:
        """Format and send the records; never waits, never raises for a receiver's trouble."""
        if self._send_records is not None:
            self._send_records(records)
        else:
            self.sender.send(map(self.formatter, records))

    def stop(self) -> Any:
        """Deliver what can be delivered in a few seconds, then close."""
        return self.sender.stop()


def _tls_options(server_name: str, ca_file: str) -> Any:
    from twisted.internet import ssl

    if not ca_file:
        return ssl.optionsForClientTLS(server_name)
    try:
        with open(ca_file, "rb") as file:
            pem = file.read()
    except OSError as exc:
        raise ConfigError([f"ca_file {ca_file!r}: cannot read: {exc.strerror or exc}"]) from None
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    if not blocks:
        raise ConfigError([f"ca_file {ca_file!r}: holds no PEM certificate"])
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception:
        raise ConfigError([f"ca_file {ca_file!r}: not a valid PEM certificate"]) from None
    trust = ssl.trustRootFromCertificates(certificates)
    return ssl.optionsForClientTLS(server_name, trustRoot=trust)


def _build(options: SyslogOptions, context: BuildContext) -> SyslogSink:
    return SyslogSink.from_config(options, context)


plugin = PluginType("syslog", SyslogOptions, _build)
