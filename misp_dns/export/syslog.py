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
    max_queue = 100000          # tcp/tls: records held while the receiver is down or slow
    max_queue_bytes = 67108864  # tcp/tls: ... and the memory they may take (64 MiB)

RFC 5424 messages read `<182>1 2025-11-26T10:10:30.567Z host misp-dns 4242 Blocked - {json}`:
APP-NAME `misp-dns`, PROCID the process id, MSGID the record's `responseType`, no
structured data, the JSON record as MSG. RFC 3164 messages read
`<182>Nov 26 11:10:30 host misp-dns[4242]: {json}` (local time, as that format has it).

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

import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
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
from misp_dns.export.record import QueryRecord
from misp_dns.export.spool import FrameSpool
from misp_dns.interfaces import BuildContext, ISink, PluginType
from misp_dns.values import ConfigError, FieldError

__all__ = [
    "FACILITIES",
    "SEVERITIES",
    "DatagramSender",
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
