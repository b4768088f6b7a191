"""The syslog sink: RFC 5424/3164 messages, UDP, unix, TCP octet counting, TLS, backoff."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from conftest import result_of
from integration.export_events import blocked_event, recursive_event
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from misp_dns.config import parse_config
from misp_dns.event import Kind
from misp_dns.export.record import RecordEncoder
from misp_dns.export.syslog import (
    DatagramSender,
    ProcessDatagramSender,
    StreamSender,
    SyslogFormatter,
    SyslogOptions,
    SyslogSink,
    _WorkerProtocol,
    parse_address,
)
from misp_dns.interfaces import BuildContext, ISink
from misp_dns.registry import default_registry
from misp_dns.values import ConfigError

BLOCKED = RecordEncoder().encode(blocked_event())


def test_rfc5424_message_layout() -> None:
    """RFC 5424: PRI local6.info, version 1, record time, host, misp-dns, pid, MSGID, JSON."""
    formatter = SyslogFormatter("rfc5424", "local6", "info", "resolver1.example", pid=4242)
    message = formatter(BLOCKED).decode()
    assert message == (
        "<182>1 2025-11-26T10:10:30.567Z resolver1.example misp-dns 4242 Blocked - " + BLOCKED.line
    )
    assert json.loads(message.split(" - ", 1)[1]) == BLOCKED


def test_msgid_is_the_response_type() -> None:
    """MSGID tells the SIEM what happened without parsing the JSON."""
    formatter = SyslogFormatter(hostname="h", pid=1)
    message = formatter(RecordEncoder().encode(recursive_event())).decode()
    assert message.split(" ")[5] == "Recursive"


def test_rfc3164_message_layout() -> None:
    """RFC 3164: PRI, local "Mmm dd hh:mm:ss", short host, misp-dns[pid]:, JSON."""
    clock = Clock()
    clock.advance(1764151830.567)
    formatter = SyslogFormatter(
        "rfc3164", "local6", "info", "resolver1.example", pid=7, clock=clock
    )
    local = time.localtime(1764151830.567)
    stamp = time.strftime("%b %e %H:%M:%S", local)
    assert formatter(BLOCKED).decode() == f"<182>{stamp} resolver1 misp-dns[7]: {BLOCKED.line}"


@pytest.mark.parametrize(
    ("facility", "severity", "pri"),
    [
        ("local6", "info", 182),
        ("daemon", "warning", 28),
        ("kern", "emerg", 0),
        ("local7", "debug", 191),
    ],
)
def test_priority_from_facility_and_severity(facility: str, severity: str, pri: int) -> None:
    """PRI is facility * 8 + severity, as configured."""
    formatter = SyslogFormatter("rfc5424", facility, severity, "h", pid=1)
    assert formatter(BLOCKED).startswith(f"<{pri}>1 ".encode())


@pytest.mark.parametrize(
    ("text", "protocol", "parsed"),
    [
        ("127.0.0.1:514", "udp", ("127.0.0.1", 514)),
        ("127.0.0.1", "udp", ("127.0.0.1", 514)),
        ("siem.example.com", "tls", ("siem.example.com", 6514)),
        ("siem.example.com:10514", "tcp", ("siem.example.com", 10514)),
        ("[::1]:5514", "tcp", ("::1", 5514)),
        ("[::1]", "tls", ("::1", 6514)),
        ("/dev/log", "unix", "/dev/log"),
    ],
)
def test_addresses(text: str, protocol: str, parsed: Any) -> None:
    """Addresses are host:port (default port by protocol), [v6]:port, or a socket path."""
    assert parse_address(text, protocol) == parsed


@pytest.mark.parametrize(
    ("table", "line"),
    [
        (
            {"address": "127.0.0.1:0"},
            "export[0].address: port out of range 1..65535 in '127.0.0.1:0'",
        ),
        (
            {"address": "dev/log", "protocol": "unix"},
            "export[0].address: expected the absolute path of a socket, got 'dev/log'",
        ),
        (
            {"protocol": "relp"},
            "export[0].protocol: expected one of 'udp', 'tcp', 'tls', 'unix', got 'relp'",
        ),
        ({"format": "json"}, "export[0].format: expected one of 'rfc5424', 'rfc3164', got 'json'"),
        (
            {"facility": "local9"},
            "export[0].facility: expected one of "
            + ", ".join(
                repr(f)
                for f in (
                    "kern",
                    "user",
                    "mail",
                    "daemon",
                    "auth",
                    "syslog",
                    "lpr",
                    "news",
                    "uucp",
                    "cron",
                    "authpriv",
                    "ftp",
                    "ntp",
                    "security",
                    "console",
                    "solaris-cron",
                    "local0",
                    "local1",
                    "local2",
                    "local3",
                    "local4",
                    "local5",
                    "local6",
                    "local7",
                )
            )
            + ", got 'local9'",
        ),
        ({"ca_file": "/etc/ssl/ca.pem"}, 'export[0].ca_file: only used with protocol = "tls"'),
        (
            {"hostname": "two words"},
            "export[0].hostname: expected printable ASCII without spaces, got 'two words'",
        ),
    ],
)
def test_bad_options_name_the_key(table: dict[str, Any], line: str) -> None:
    """Each bad syslog option is one config error line naming export[i].key."""
    with pytest.raises(ConfigError) as problem:
        parse_config({"export": [{"type": "syslog", **table}]}, default_registry())
    assert problem.value.problems == [line]


def test_defaults_are_udp_rfc5424_local6() -> None:
    """Without options: UDP to 127.0.0.1:514, RFC 5424, local6.info, every record."""
    options = SyslogOptions()
    assert (options.address, options.protocol, options.format, options.facility) == (
        "127.0.0.1:514",
        "udp",
        "rfc5424",
        "local6",
    )
    assert options.include == "all"


def _udp_receiver() -> socket.socket:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    return receiver


def test_udp_sends_one_datagram_per_record() -> None:
    """Over UDP each record is one datagram holding one whole message."""
    receiver = _udp_receiver()
    with receiver:
        options = SyslogOptions(address=f"127.0.0.1:{receiver.getsockname()[1]}", hostname="h")
        sink = SyslogSink.from_config(options, BuildContext(Clock(), None, ""))
        assert verifyObject(ISink, sink)
        sink.start()
        sink.write([BLOCKED, RecordEncoder().encode(recursive_event())])
        first, second = receiver.recv(65535).decode(), receiver.recv(65535).decode()
        sink.stop()
    assert first.startswith("<182>1 2025-11-26T10:10:30.567Z h misp-dns ")
    assert json.loads(first.split(" - ", 1)[1]) == BLOCKED
    assert " Recursive - " in second
    assert sink.dropped == 0


def test_udp_to_nobody_costs_nothing_but_never_blocks() -> None:
    """A UDP receiver that is not there does not slow or fail the sink."""
    sender = DatagramSender(("127.0.0.1", 9), Clock())
    sender.start()
    started = time.monotonic()
    sender.send([b"x" * 200] * 1000)
    assert time.monotonic() - started < 1
    sender.stop()


def test_oversized_datagrams_are_dropped_and_counted() -> None:
    """A message too large for one UDP datagram is dropped and counted, not split."""
    receiver = _udp_receiver()
    with receiver:
        sender = DatagramSender(receiver.getsockname(), Clock())
        sender.start()
        sender.send([b"x" * 70000, b"small"])
        assert receiver.recv(65535) == b"small"
        sender.stop()
    assert sender.dropped == 1 and sender.sent == 1


def test_unix_datagram_socket(tmp_path: Path) -> None:
    """protocol = "unix" sends each message to a datagram socket such as /dev/log."""
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        receiver.settimeout(2)
        options = SyslogOptions(address=path, protocol="unix", format="rfc3164")
        sink = SyslogSink.from_config(options, BuildContext(Clock(), None, ""))
        sink.start()
        sink.write([BLOCKED])
        message = receiver.recv(65535).decode()
        sink.stop()
    assert re.match(r"<182>\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ misp-dns\[\d+\]: \{", message)


def test_missing_unix_socket_drops_counts_and_warns_once(tmp_path: Path) -> None:
    """No socket at the path: records are dropped and counted, with one warning."""
    sender = DatagramSender(str(tmp_path / "nothing.sock"), Clock())
    warnings: list[Any] = []
    sender.log = type(sender.log)(observer=warnings.append)
    sender.start()
    sender.send([b"a", b"b"])
    sender.send([b"c"])
    assert sender.dropped == 3
    assert len(warnings) == 1


class FakeConnector:
    """Stands in for an endpoint: the test decides when each attempt succeeds or fails."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Factory, defer.Deferred[Any]]] = []

    def __call__(self, factory: Factory) -> defer.Deferred[Any]:
        attempt: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append((factory, attempt))
        return attempt

    def succeed(self, transport: StringTransport | None = None) -> tuple[Protocol, Any]:
        factory, attempt = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = transport or StringTransport()
        protocol.makeConnection(transport)
        attempt.callback(protocol)
        return protocol, transport

    def fail(self) -> None:
        self.attempts[-1][1].errback(ConnectionRefusedError())


def stream(max_queue: int = 100) -> tuple[StreamSender, FakeConnector, Clock]:
    clock = Clock()
    connector = FakeConnector()
    sender = StreamSender(connector, clock, description="tcp:test", max_queue=max_queue)
    sender.log = type(sender.log)(observer=lambda event: None)
    sender.start()
    return sender, connector, clock


def frames(data: bytes) -> list[bytes]:
    """Split an octet-counted stream (RFC 6587) into its messages, checking every count."""
    out = []
    while data:
        length, _, rest = data.partition(b" ")
        count = int(length)
        out.append(rest[:count])
        assert len(rest) >= count
        data = rest[count:]
    return out


def test_tcp_messages_are_octet_counted() -> None:
    """Over TCP each message is sent as "LEN SP MSG" (RFC 6587 octet counting)."""
    sender, connector, _ = stream()
    _, transport = connector.succeed()
    sender.send([b"first message", b"second\nwith newline"])
    assert transport.value() == b"13 first message19 second\nwith newline"
    assert frames(transport.value()) == [b"first message", b"second\nwith newline"]


def test_records_wait_while_connecting_and_are_sent_once_connected() -> None:
    """Records written before the connection is up are kept and sent, in order."""
    sender, connector, _ = stream()
    sender.send([b"a", b"b"])
    _, transport = connector.succeed()
    sender.send([b"c"])
    assert frames(transport.value()) == [b"a", b"b", b"c"]


def test_backlog_is_bounded_newest_dropped() -> None:
    """While the receiver is down the backlog holds max_queue records; the newest go."""
    sender, connector, _ = stream(max_queue=3)
    connector.fail()
    sender.send([b"1", b"2"])
    sender.send([b"3", b"4", b"5"])
    assert sender.dropped == 2 and len(sender) == 3


def test_backlog_is_bounded_in_bytes_too() -> None:
    """While the receiver is down, large messages fill the backlog by the memory they map
    long before its count: the newest beyond max_queue_bytes are dropped and counted, and
    the held ones are delivered whole, in order, once the receiver is back."""
    clock = Clock()
    connector = FakeConnector()
    sender = StreamSender(
        connector, clock, description="tcp:test", max_queue=100_000, max_queue_bytes=1 << 20
    )
    sender.log = type(sender.log)(observer=lambda event: None)
    sender.start()
    connector.fail()
    messages = [b"%03d" % index + b"x" * 40_000 for index in range(100)]
    sender.send(messages)
    assert sender.held_bytes <= 1 << 20
    assert 0 < len(sender) < 30 and sender.dropped == 100 - len(sender)
    held = len(sender)
    clock.advance(0.5)
    _, transport = connector.succeed()
    assert frames(transport.value()) == messages[:held]
    assert sender.held_bytes <= 64 * 1024


def test_records_a_full_backlog_drops_are_not_formatted_all_at_once() -> None:
    """A batch of a thousand 56 kB records reaching a full backlog is formatted one message
    at a time as the sender takes it, never as 56 MB of messages on their way to be
    dropped."""
    txt = tdns.RRHeader(b"big.x", tdns.TXT, tdns.IN, 300, tdns.Record_TXT(*[b"x" * 250] * 220))
    event = recursive_event("big.x")
    big = RecordEncoder().encode(
        attrs.evolve(event, answer=attrs.evolve(event.answer, answers=(txt,)))
    )
    assert len(big.line) > 55_000
    sender, connector, _ = stream(max_queue=1)
    connector.fail()
    sink = SyslogSink(SyslogFormatter(hostname="h", pid=1), sender)
    batch = [big] * 1000
    tracemalloc.start()
    try:
        sink.write(batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sender.dropped == 999
    assert peak < 1 << 20


def test_reconnects_with_growing_delay() -> None:
    """A refused connection is tried again after 0.5 s, 1 s, 2 s, ... up to 30 s."""
    _sender, connector, clock = stream()
    delays = []
    for _ in range(8):
        connector.fail()
        before = len(connector.attempts)
        waited = 0.0
        while len(connector.attempts) == before and waited < 120:
            clock.advance(0.25)
            waited += 0.25
        delays.append(waited)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_lost_connection_reconnects_and_resends_what_waits() -> None:
    """After a long-lived connection drops, the sender reconnects soon and goes on."""
    sender, connector, clock = stream()
    protocol, _ = connector.succeed()
    clock.advance(60)
    protocol.connectionLost(Failure(ConnectionRefusedError()))
    sender.send([b"while-down"])
    clock.advance(0.5)
    _, transport = connector.succeed()
    assert frames(transport.value()) == [b"while-down"]
    assert sender.connections == 2


def test_a_receiver_that_stops_reading_pushes_back_into_the_bounded_backlog() -> None:
    """When the connection's buffer is full (pauseProducing), records wait in the backlog,
    then drop when it is full; once the receiver reads again, the backlog drains."""
    sender, connector, _ = stream(max_queue=2)
    protocol, transport = connector.succeed()
    assert transport.producer is protocol and transport.streaming
    protocol.pauseProducing()  # type: ignore[attr-defined]
    sender.send([b"a", b"b", b"c"])
    assert transport.value() == b""
    assert sender.dropped == 1
    protocol.resumeProducing()  # type: ignore[attr-defined]
    assert frames(transport.value()) == [b"a", b"b"]


def test_stop_delivers_the_backlog_and_closes() -> None:
    """Stopping writes what waits, closes the connection, and fires when it is closed."""
    sender, connector, _ = stream()
    protocol, transport = connector.succeed()
    protocol.pauseProducing()  # type: ignore[attr-defined]
    sender.send([b"last"])
    stopped = sender.stop()
    assert stopped is not None
    assert frames(transport.value()) == [b"last"]
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionRefusedError()))
    assert result_of(stopped) is None


def test_stop_while_disconnected_counts_the_backlog_as_dropped() -> None:
    """With no connection at stop, what waits is lost and counted; no retry is left."""
    sender, connector, clock = stream()
    connector.fail()
    sender.send([b"a", b"b"])
    assert sender.stop() is None
    assert sender.dropped == 2
    assert clock.getDelayedCalls() == []


def test_stop_gives_up_on_a_receiver_that_never_closes() -> None:
    """A connection that does not close within the stop timeout is aborted."""
    sender, connector, clock = stream()
    _, transport = connector.succeed()
    aborted: list[bool] = []
    transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    sender.stop()
    clock.advance(4.9)
    assert aborted == []
    clock.advance(0.1)
    assert aborted == [True]


# --- TLS against a real local server -------------------------------------------------


def _certificate_authority(directory: Path) -> tuple[Path, Any]:
    """A CA file and a server TLS context whose certificate that CA signed for localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "misp-dns test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(server)
    context.use_privatekey(key)

    @implementer(IOpenSSLContextFactory)
    class ContextFactory:
        def getContext(self) -> Any:
            return context

    return ca_file, ContextFactory()


class _Collect(Protocol):
    def connectionMade(self) -> None:
        self.factory.connected += 1  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.factory.data += data  # type: ignore[attr-defined]
        arrived = self.factory.arrived  # type: ignore[attr-defined]
        if not arrived.called:
            arrived.callback(None)


@pytest_twisted.ensureDeferred
async def test_tls_delivers_to_a_receiver_the_ca_file_trusts(tmp_path: Path) -> None:
    """protocol = "tls" with ca_file: the certificate is checked, the messages arrive framed."""
    from twisted.internet import reactor

    ca_file, context = _certificate_authority(tmp_path)
    factory = Factory.forProtocol(_Collect)
    factory.data = b""  # type: ignore[attr-defined]
    factory.connected = 0  # type: ignore[attr-defined]
    factory.arrived = defer.Deferred()  # type: ignore[attr-defined]
    port = reactor.listenSSL(0, factory, context, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        options = SyslogOptions(
            address=f"127.0.0.1:{port.getHost().port}",
            protocol="tls",
            ca_file=str(ca_file),
            server_name="localhost",
        )
        sink = SyslogSink.from_config(options, BuildContext(reactor, None, ""))
        sink.start()
        sink.write([BLOCKED])
        await factory.arrived.addTimeout(5, reactor)  # type: ignore[attr-defined]
        await sink.stop()
        (message,) = frames(factory.data)  # type: ignore[attr-defined]
        assert json.loads(message.decode().split(" - ", 1)[1]) == BLOCKED
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_refuses_a_receiver_it_does_not_trust(tmp_path: Path) -> None:
    """A receiver whose certificate the configured CA did not sign gets no record."""
    from twisted.internet import reactor

    (tmp_path / "server").mkdir()
    (tmp_path / "other").mkdir()
    _, context = _certificate_authority(tmp_path / "server")
    other_ca, _ = _certificate_authority(tmp_path / "other")
    factory = Factory.forProtocol(_Collect)
    factory.data = b""  # type: ignore[attr-defined]
    factory.connected = 0  # type: ignore[attr-defined]
    factory.arrived = defer.Deferred()  # type: ignore[attr-defined]
    port = reactor.listenSSL(0, factory, context, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        options = SyslogOptions(
            address=f"127.0.0.1:{port.getHost().port}",
            protocol="tls",
            ca_file=str(other_ca),
            server_name="localhost",
        )
        sink = SyslogSink.from_config(options, BuildContext(reactor, None, ""))
        sink.sender.log = type(sink.sender.log)(observer=lambda event: None)
        sink.start()
        sink.write([BLOCKED])
        waited = defer.Deferred()
        reactor.callLater(0.5, waited.callback, None)  # type: ignore[attr-defined]
        await waited
        await defer.maybeDeferred(sink.stop)
        assert factory.data == b""  # type: ignore[attr-defined]
        assert factory.connected >= 1  # type: ignore[attr-defined]
    finally:
        await port.stopListening()


def _records_of_every_kind() -> list[Any]:
    """Records of blocked, TXT-blocked, recursive, allowed, refused and cached answers, one
    with non-ASCII text in its policy and one whose name holds bytes written `\\DDD`."""
    from integration.export_events import PROVENANCE, allowed_event, refused_event, request

    from misp_dns.interfaces import Action, Decision

    unicode_decision = Decision(
        Action.BLOCK,
        "misp-connector",
        indicator="xn--mller-kva.example",
        report="source=misp-connector;domain=xn--mller-kva.example",
        provenance=attrs.evolve(PROVENANCE, event_info="Kampagne Müller ☃ 攻撃"),
    )
    odd = request('we"ird\\na\x01me.example').question_wire
    encoder = RecordEncoder()
    events = [
        blocked_event(),
        blocked_event("stemtopx.com", "TXT"),
        blocked_event("xn--mller-kva.example", decision=unicode_decision),
        recursive_event(),
        recursive_event(kind=Kind.CACHED, rtt=None),
        allowed_event(),
        refused_event(),
        attrs.evolve(recursive_event(), question=odd),
    ]
    return [encoder.encode(event) for event in events]


class _Receiver:
    """A UDP socket with a large buffer, read after the sender has stopped."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setblocking(False)

    def drain(self) -> list[bytes]:
        received = []
        while True:
            try:
                received.append(self.socket.recv(65535))
            except BlockingIOError:
                return received


@pytest_twisted.ensureDeferred
async def test_a_worker_process_sends_the_very_messages_the_server_would() -> None:
    """With a reactor that starts processes, udp datagrams leave from a child process, and
    each is byte for byte the message the sink formats in process (RFC 5424), for records
    of every kind, non-ASCII text and escaped name bytes included."""
    from twisted.internet import reactor

    receiver = _Receiver()
    records = _records_of_every_kind()
    options = SyslogOptions(address=f"127.0.0.1:{receiver.socket.getsockname()[1]}")
    sink = SyslogSink.from_config(options, BuildContext(reactor, None, ""))
    assert isinstance(sink.sender, ProcessDatagramSender)
    sink.start()
    sink.write(tuple(records))
    await sink.stop()
    with receiver.socket:
        assert receiver.drain() == [sink.formatter(record) for record in records]
    assert sink.sender.sent == len(records) and sink.dropped == 0


@pytest_twisted.ensureDeferred
async def test_rfc3164_from_the_worker_keeps_the_server_pid_and_host() -> None:
    """RFC 3164 messages from the worker name the server's pid and host, not the child's."""
    from twisted.internet import reactor

    receiver = _Receiver()
    options = SyslogOptions(
        address=f"127.0.0.1:{receiver.socket.getsockname()[1]}",
        format="rfc3164",
        facility="daemon",
        severity="notice",
        hostname="dns1.example.net",
    )
    sink = SyslogSink.from_config(options, BuildContext(reactor, None, ""))
    sink.start()
    sink.write((BLOCKED,))
    await sink.stop()
    with receiver.socket:
        (message,) = receiver.drain()
    assert re.fullmatch(
        rf"<29>\w{{3}} [ \d]\d \d\d:\d\d:\d\d dns1 misp-dns\[{os.getpid()}\]: ".encode()
        + re.escape(BLOCKED.line.encode()),
        message,
    )


@pytest_twisted.ensureDeferred
async def test_stopping_sends_everything_handed_over_even_after_a_sigterm() -> None:
    """SIGTERM reaching the worker (a service manager signals the whole group) does not end
    it; stopping the sink waits until every record handed over has been sent, and every
    record is accounted for: sent (and received) or counted as dropped."""
    from twisted.internet import reactor

    receiver = _Receiver()
    options = SyslogOptions(address=f"127.0.0.1:{receiver.socket.getsockname()[1]}")
    sink = SyslogSink.from_config(options, BuildContext(reactor, None, ""))
    sender = sink.sender
    assert isinstance(sender, ProcessDatagramSender)
    sink.start()
    batch = tuple([BLOCKED] * 250)
    for _ in range(8):
        sink.write(batch)
    for _ in range(200):  # the worker ignores signals once it has said it is ready
        if sender.ready:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert sender.ready
    sender._protocol.transport.signalProcess("TERM")  # type: ignore[union-attr]
    await deferLater(reactor, 0.2, lambda: None)
    for _ in range(4):
        sink.write(batch)
    await sink.stop()
    with receiver.socket:
        received = receiver.drain()
    assert sender.started == 1
    assert sender.sent == len(received) > 0
    assert sender.sent + sender.dropped == 12 * len(batch)


@pytest.mark.allow_errors
@pytest_twisted.ensureDeferred
async def test_a_worker_that_dies_is_started_again_and_its_losses_counted() -> None:
    """A worker killed while it holds records: those it had not handled are counted as
    dropped, and a new worker takes the next records."""
    from twisted.internet import reactor

    receiver = _Receiver()
    options = SyslogOptions(address=f"127.0.0.1:{receiver.socket.getsockname()[1]}")
    sink = SyslogSink.from_config(options, BuildContext(reactor, None, ""))
    sender = sink.sender
    assert isinstance(sender, ProcessDatagramSender)
    sink.start()
    sink.write(tuple([BLOCKED] * 100))
    sender._protocol.transport.signalProcess("KILL")  # type: ignore[union-attr]
    for _ in range(100):
        await deferLater(reactor, 0.1, lambda: None)
        if sender.started == 2 and sender._protocol is not None:
            break
    assert sender.started == 2
    sink.write((BLOCKED,))
    await sink.stop()
    with receiver.socket:
        received = receiver.drain()
    assert sender.sent == len(received) >= 1
    assert sender.sent + sender.dropped == 101


def test_the_worker_is_bounded_like_the_stream_backlog() -> None:
    """Records handed to the worker and not yet sent count against max_queue: beyond it,
    the newest batch is dropped and counted, never queued without bound."""
    from twisted.internet.testing import MemoryReactorClock

    class Transport:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def writeSequence(self, data: list[bytes]) -> None:
            self.written.append(b"".join(data))

    reactor = MemoryReactorClock()
    sender = ProcessDatagramSender(
        ("127.0.0.1", 9), reactor, SyslogFormatter(hostname="h"), max_queue=300
    )
    protocol = _WorkerProtocol(sender)
    protocol.transport = Transport()  # type: ignore[assignment]
    sender._protocol = protocol
    sender.send_records((BLOCKED,) * 200)
    sender.send_records((BLOCKED,) * 200)
    assert sender.dropped == 200 and sender.pending == 200
    protocol.childDataReceived(1, struct.pack("!QQQQ", 200, 200, 0, 0))
    sender.send_records((BLOCKED,) * 200)
    assert sender.dropped == 200 and sender.pending == 200 and sender.sent == 200
