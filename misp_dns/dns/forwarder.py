"""Forwarding questions to upstream resolvers over UDP, with TCP when an answer is truncated.

Unlike `twisted.names.client.Resolver`, the forwarder sends EDNS (UDP size 1232, the
client's DO bit), accepts a reply only from the address it asked, with the query's ID and
the same question, retries over TCP on TC, asks over TCP at once for a client that came
over TCP (a UDP reply may lack records that did not fit), and gives up after one bounded
total time (`timeout`, about 5 s) instead of a minute of retries. The upstream's RCODE is
kept as it is: NXDOMAIN with its SOA, SERVFAIL and REFUSED all reach the client unchanged.

A reply that has been acted on (a FORMERR that led to a query without EDNS, a truncated
reply that led to TCP) leaves the race: only a later reply can answer the question. When
every upstream failed at once in one round (refused, no route, the TCP connection closed)
the query fails instead of asking again at network speed until the deadline. When no
socket can be made for want of file descriptors the query fails at once as well, counted
in `shortage` (see `misp_dns.dns.descriptors`).
"""

from __future__ import annotations

import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import attrs
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.names import dns

from misp_dns.dns.descriptors import DESCRIPTOR_ERRORS, DescriptorShortage
from misp_dns.dns.wire import EDNS_UDP_SIZE, OPT, encode_opt, parse_message
from misp_dns.event import Answer, Kind
from misp_dns.histogram import UPSTREAM_BUCKETS, Histogram
from misp_dns.values import HostPort, Upstream

__all__ = ["Forwarder", "UpstreamFailed", "system_upstreams"]

FIRST_ATTEMPT_TIMEOUT = 1.0

#: Makes a socket from (family, type): `socket.socket`, or a fake in tests.
SocketFactory = Callable[[int, int], Any]


class UpstreamFailed(Exception):
    """No upstream gave a usable answer within the time allowed."""


class _NoDescriptor(UpstreamFailed):
    """No socket could be made: the process has no file descriptor left (EMFILE)."""


class _CannotSend(Exception):
    """The query could not be sent to this upstream at all (no route, no IPv6 here)."""


def system_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """The `nameserver` addresses of resolv.conf, port 53, in file order."""
    found: list[Upstream] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.readlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(Upstream(*attrs.astuple(HostPort.parse(fields[1], 53))))
            except ValueError:
                continue  # e.g. a link-local address with a %scope
    return found


@attrs.frozen
class _Question:
    """What the upstreams are asked; `name` in wire format, sent as it is."""

    name: bytes
    qtype: int
    qclass: int
    dnssec_ok: bool
    checking_disabled: bool
    whole: bool

    @property
    def wire(self) -> bytes:
        return self.name + struct.pack("!HH", self.qtype, self.qclass)

    def packet(self, ident: int, edns: bool) -> bytes:
        flags = 0x0100 | (0x10 if self.checking_disabled else 0)  # RD, and CD as asked
        header = struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 1 if edns else 0)
        if not edns:
            return header + self.wire
        return header + self.wire + encode_opt(EDNS_UDP_SIZE, dnssec_ok=self.dnssec_ok)

    def reply_matches(self, ident: int, data: bytes) -> dns.Message | None:
        """The decoded reply if it answers this question with this ID, else None.

        The reply's question is compared as wire bytes, ignoring ASCII case: a decoded
        name could not tell `a\\.b.example` from `a.b.example`.
        """
        if len(data) < 12 or struct.unpack_from("!H", data)[0] != ident or not data[2] & 0x80:
            return None
        asked = self.wire
        if data[12 : 12 + len(asked)].lower() != asked.lower():
            return None
        try:
            reply = parse_message(data)
        except ValueError:
            return None
        return reply if len(reply.queries) == 1 else None


class _UDPExchange:
    """One query over a fresh, connected, non-blocking UDP socket (a random source port).

    It is read through the reactor's `addReader` directly: Twisted's UDP `Port` writes two
    log lines per socket, which per upstream query would flood the log. The connected socket
    only receives datagrams from the upstream; replies that do not match are ignored.
    """

    def __init__(
        self,
        reactor: Any,
        upstream: HostPort,
        accept: Callable[[bytes], dns.Message | None],
        socket_factory: SocketFactory = socket.socket,
    ) -> None:
        self.reactor = reactor
        self.upstream = upstream
        self.accept = accept
        self.reply: dns.Message | None = None
        self.failure: Exception | None = None
        #: True once the reply was acted on: it answered, or led to a retry or to TCP.
        self.taken = False
        self._waiting: list[defer.Deferred[dns.Message]] = []
        self.socket: socket.socket = socket_factory(upstream.family, socket.SOCK_DGRAM)
        self.socket.setblocking(False)

    def send(self, packet: bytes) -> None:
        """Connect to the upstream, send `packet`, and start listening for the reply."""
        try:
            self.socket.connect((self.upstream.host, self.upstream.port))
            self.socket.send(packet)
        except OSError as exc:
            self.close()
            raise _CannotSend(f"{self.upstream}: {exc.strerror}") from None
        self.reactor.addReader(self)

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "upstream-udp"

    def doRead(self) -> None:
        for _ in range(16):
            try:
                data = self.socket.recv(65535)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self._fail(error.ConnectionRefusedError(str(self.upstream)))
                return
            except OSError as exc:
                self._fail(error.ConnectError(string=f"{self.upstream}: {exc.strerror}"))
                return
            reply = self.accept(data)
            if reply is not None and self.reply is None and self.failure is None:
                self.reply = reply
                self.close()
                waiting, self._waiting = self._waiting, []
                for deferred in waiting:
                    deferred.callback(reply)
                return

    def wait(self) -> defer.Deferred[dns.Message]:
        """A Deferred for the reply (or the failure) of this exchange, now or later."""
        if self.reply is not None:
            return defer.succeed(self.reply)
        if self.failure is not None:
            return defer.fail(self.failure)
        waiting: defer.Deferred[dns.Message] = defer.Deferred()
        self._waiting.append(waiting)
        return waiting

    def _fail(self, reason: Exception) -> None:
        if self.reply is None and self.failure is None:
            self.failure = reason
            self.close()
            waiting, self._waiting = self._waiting, []
            for deferred in waiting:
                deferred.errback(reason)

    def connectionLost(self, reason: Any) -> None:
        # The reactor saw an error on the socket, usually an ICMP "port unreachable":
        # reading once more turns it into the error it is.
        if self.socket.fileno() >= 0:
            self.doRead()
        self._fail(error.ConnectionLost(str(self.upstream)))

    def close(self) -> None:
        """Stop listening and release the socket."""
        if self.socket.fileno() >= 0:
            self.reactor.removeReader(self)
            self.socket.close()


class _TCPExchange(Protocol):
    """One query over a fresh TCP connection: send one frame, read one frame."""

    def __init__(self, packet: bytes, accept: Callable[[bytes], dns.Message | None]) -> None:
        self.packet = packet
        self.accept = accept
        self.buffer = b""
        self.result: defer.Deferred[dns.Message] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(struct.pack("!H", len(self.packet)) + self.packet)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < 2:
            return
        (length,) = struct.unpack_from("!H", self.buffer)
        if len(self.buffer) < 2 + length:
            return
        reply = self.accept(self.buffer[2 : 2 + length])
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self.result.called:
            return
        if reply is None:
            self.result.errback(UpstreamFailed("TCP reply does not answer the question"))
        else:
            self.result.callback(reply)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.result.called:
            self.result.errback(UpstreamFailed("TCP connection closed before a reply"))


class _OneShotFactory(Factory):
    """Hands out one prepared protocol, quietly (no log line per connection)."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class Forwarder:
    """Resolves questions through a list of upstream resolvers, failing over in order.

    `socket_factory(family, type)` makes the UDP sockets: `socket.socket`, or in-memory
    ones in tests. `latency` holds the time each answered question took (all attempts together);
    `failures` counts the failed attempts per upstream ("IP:port"), for the metrics.
    `shortage` counts the sockets that could not be made for want of a file descriptor
    (the server shares one with its TCP listeners).
    """

    log = Logger()

    def __init__(
        self,
        upstreams: Sequence[HostPort],
        reactor: Any,
        timeout: float = 5.0,
        *,
        socket_factory: SocketFactory = socket.socket,
        shortage: DescriptorShortage | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("no upstream resolvers")
        self._upstreams = list(upstreams)
        self._reactor = reactor
        self._timeout = timeout
        self._socket_factory = socket_factory
        self.shortage = shortage if shortage is not None else DescriptorShortage(reactor)
        self._preferred = 0
        self.latency = Histogram(UPSTREAM_BUCKETS)
        self.failures: dict[str, int] = {str(upstream): 0 for upstream in self._upstreams}

    def resolve(
        self,
        name: bytes,
        qtype: int,
        qclass: int = dns.IN,
        *,
        dnssec_ok: bool = False,
        checking_disabled: bool = False,
        whole: bool = False,
    ) -> defer.Deferred[Answer]:
        """Ask the upstreams about `name` (wire format); fire with an Answer, or fail with
        UpstreamFailed. With `whole` (the client came over TCP) they are asked over TCP, so
        that nothing is left out of the answer to fit a datagram."""
        question = _Question(name, qtype, qclass, dnssec_ok, checking_disabled, whole)
        return defer.Deferred.fromCoroutine(self._resolve(question))

    async def _resolve(self, question: _Question) -> Answer:
        started = self._reactor.seconds()
        deadline = started + self._timeout
        problems: list[str] = []
        # Earlier attempts keep listening until the end: a slow reply still counts.
        sent: list[_UDPExchange] = []
        try:
            answer = await self._attempts(question, started, deadline, sent, problems)
            self.latency.observe(self._reactor.seconds() - started)
            return answer
        finally:
            for exchange in sent:
                exchange.close()

    async def _attempts(
        self,
        question: _Question,
        started: float,
        deadline: float,
        sent: list[_UDPExchange],
        problems: list[str],
    ) -> Answer:
        attempt_timeout = FIRST_ATTEMPT_TIMEOUT
        count = len(self._upstreams)
        while True:
            refused = 0
            # Upstreams that failed without waiting out their time: asking them again at
            # once would fail the same way, as fast as the network goes.
            at_once = 0
            for offset in range(count):
                index = (self._preferred + offset) % count
                upstream = self._upstreams[index]
                remaining = deadline - self._reactor.seconds()
                if remaining <= 0:
                    raise UpstreamFailed(f"no answer within {self._timeout:g} s: {problems}")
                try:
                    reply, complete = await self._exchange(
                        upstream, question, min(attempt_timeout, remaining), deadline, sent
                    )
                except _NoDescriptor:
                    raise
                except error.ConnectionRefusedError:
                    refused += 1
                    at_once += 1
                    problems.append(f"{upstream} refused")
                    self._count_failure(upstream)
                    continue
                except (defer.TimeoutError, error.TimeoutError) as exc:
                    problems.append(f"{upstream} {exc.__class__.__name__}")
                    self._count_failure(upstream)
                    continue
                except _CannotSend as exc:
                    at_once += 1
                    problems.append(f"cannot send to {exc}")
                    self._count_failure(upstream)
                    continue
                except (UpstreamFailed, error.ConnectError, error.ConnectionLost) as exc:
                    at_once += 1
                    problems.append(f"{upstream} {exc.__class__.__name__}")
                    self._count_failure(upstream)
                    continue
                self._preferred = index
                return self._answer(reply, self._reactor.seconds() - started, complete)
            if refused == count:
                # Nothing listens at any upstream: waiting would not change that.
                raise UpstreamFailed(f"every upstream refused: {problems}")
            if at_once == count:
                raise UpstreamFailed(f"every upstream failed at once: {problems}")
            attempt_timeout *= 2

    def _count_failure(self, upstream: HostPort) -> None:
        key = str(upstream)
        self.failures[key] = self.failures.get(key, 0) + 1

    async def _exchange(
        self,
        upstream: HostPort,
        question: _Question,
        timeout: float,
        deadline: float,
        sent: list[_UDPExchange],
    ) -> tuple[dns.Message, bool]:
        """The upstream's reply, and whether it came over TCP (nothing left out to fit)."""
        if question.whole:
            return await self._tcp(upstream, question, timeout), True
        reply = await self._udp(upstream, question, timeout, sent, edns=True)
        if reply.rCode == dns.EFORMAT and reply.answer:
            # An old server that does not speak EDNS (RFC 6891 section 7).
            reply = await self._udp(upstream, question, timeout, sent, edns=False)
        if reply.trunc:
            remaining = max(0.1, deadline - self._reactor.seconds())
            return await self._tcp(upstream, question, remaining), True
        return reply, False

    async def _udp(
        self,
        upstream: HostPort,
        question: _Question,
        timeout: float,
        sent: list[_UDPExchange],
        *,
        edns: bool,
    ) -> dns.Message:
        """Send one attempt; the first reply to it or to any earlier attempt wins.

        The attempt fails when its own socket fails (a refused port) or its time is up;
        the sockets stay open (the caller closes them) so a late reply is still taken.
        """
        ident = secrets.randbits(16)
        try:
            exchange = _UDPExchange(
                self._reactor,
                upstream,
                lambda data: question.reply_matches(ident, data),
                self._socket_factory,
            )
        except OSError as exc:
            raise self._no_socket(upstream, exc) from None
        self.shortage.over()
        exchange.send(question.packet(ident, edns))
        sent.append(exchange)
        race: defer.Deferred[dns.Message] = defer.Deferred()

        def won(by: _UDPExchange, reply: dns.Message) -> None:
            if not race.called:
                by.taken = True
                race.callback(reply)

        def lost(failure: Any) -> None:
            if not race.called:
                race.errback(failure)

        for earlier in sent:
            if earlier is exchange:
                earlier.wait().addCallbacks(partial(won, earlier), lost)
            elif earlier.failure is None and not earlier.taken:
                earlier.wait().addCallbacks(partial(won, earlier), lambda _: None)
        race.addTimeout(timeout, self._reactor)
        return await race

    def _no_socket(self, upstream: HostPort, exc: OSError) -> Exception:
        """What a failed `socket()` means: no descriptor left, or no such family here."""
        if exc.errno in DESCRIPTOR_ERRORS:
            self.shortage.happened("socket")
            return _NoDescriptor(f"no socket for {upstream}: {exc.strerror}")
        return _CannotSend(f"{upstream}: {exc.strerror}")

    async def _tcp(self, upstream: HostPort, question: _Question, timeout: float) -> dns.Message:
        ident = secrets.randbits(16)
        exchange = _TCPExchange(
            question.packet(ident, edns=True), lambda data: question.reply_matches(ident, data)
        )
        endpoint_class = TCP6ClientEndpoint if ":" in upstream.host else TCP4ClientEndpoint
        endpoint = endpoint_class(self._reactor, upstream.host, upstream.port, timeout=timeout)
        started = self._reactor.seconds()
        try:
            await endpoint.connect(_OneShotFactory(exchange))
        except error.ConnectBindError as exc:
            # Twisted reports a socket() that failed as a ConnectBindError with its errno.
            if exc.osError in DESCRIPTOR_ERRORS:
                self.shortage.happened("socket")
                raise _NoDescriptor(f"no socket for {upstream}: {exc}") from None
            raise
        self.shortage.over()
        remaining = max(0.1, timeout - (self._reactor.seconds() - started))
        exchange.result.addTimeout(remaining, self._reactor)
        try:
            return await exchange.result
        finally:
            exchange.transport.loseConnection()  # type: ignore[union-attr]

    def _answer(self, reply: dns.Message, rtt: float, complete: bool) -> Answer:
        rcode = reply.rCode
        for record in reply.additional:
            if record.type == OPT:
                # The upper eight bits of an extended RCODE live in the OPT record's TTL.
                rcode |= ((record.ttl >> 24) & 0xFF) << 4
        return Answer(
            rcode=rcode,
            answers=tuple(reply.answers),
            authority=tuple(reply.authority),
            additional=tuple(r for r in reply.additional if r.type != OPT),
            kind=Kind.RECURSIVE,
            authentic=bool(reply.authenticData),
            rtt=rtt,
            complete=complete,
        )
