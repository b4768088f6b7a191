"""The responder, and the TCP listener in front of it (UDP is in `misp_dns.dns.udp`).

`Responder.respond` turns a received packet into the bytes to send back (or None to stay
silent): wire checks, the client ACL, the resolver chain, encoding with truncation, and a
record of every answered query handed to the `recorder` (the exporter: `QueryEvent`'s
fields as arguments, no object made) and, as a `QueryEvent`, to the observers. The
`tally`, when set (the admin listener's query counter), is called for every answered query
with the transport, the question and the answer, without building an event. The
listeners only move bytes; TCP adds framing, pipelining (answers go out in whatever
order they are ready), an idle timeout and a cap on open connections, in all and per
client network.

With a zone hook (`Responder.zone`, set by the RPZ primary), every packet is first offered
to it: it returns None for what is not its zone's, the answer's bytes, or (over TCP) an
iterator of messages, such as a zone transfer. The TCP protocol writes such a stream one
message at a time, each in its own reactor turn and only while the client reads, so a
transfer of a million records neither holds other clients' answers nor fills the memory;
the connection takes no other query until the stream ends.

A TCP client that sends queries and does not read the answers cannot make the server hold
them: the protocol is the producer of its transport's output, so when the transport has
more than its buffer size (64 KB) waiting to go out, the protocol stops reading from the
client and leaves the queries it already has unanswered until the client has read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from misp_dns.dns.acl import ClientACL, client_network, plain_address
from misp_dns.dns.cache import CHECKING_DISABLED, CacheEntry, CacheKey
from misp_dns.dns.descriptors import DescriptorShortage
from misp_dns.dns.packet import assemble, opt_record, read_plain_query
from misp_dns.dns.ratelimit import RateLimiter, Verdict
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.responses import refused_answer, server_failure
from misp_dns.dns.wire import (
    TCP_MAX_SIZE,
    DropPacket,
    Request,
    RequestError,
    encode_error,
    encode_response,
    is_notify,
    notify_response,
    read_notify,
    read_request,
)
from misp_dns.event import Answer, Kind, PacketBody, QueryEvent
from misp_dns.interfaces import IZoneFollower

__all__ = [
    "MEMO_BYTES",
    "MEMO_ENTRIES",
    "NOTIFY_REPORT_INTERVAL",
    "DNSStreamFactory",
    "Recorder",
    "Responder",
    "Tally",
    "ZoneHook",
]

#: Seconds between two log lines about refused NOTIFYs.
NOTIFY_REPORT_INTERVAL = 60.0

#: Called for every answered query with (transport, question in wire format, answer).
Tally = Callable[[str, bytes, Answer], None]
#: Called for every answered query with `QueryEvent`'s fields, in their order.
Recorder = Callable[[float, str, str, bytes, bool, Answer, int, int], None]
#: Offered every packet with (data, client, transport): None, the answer, or a stream.
ZoneHook = Callable[[bytes, str, str], bytes | Iterator[bytes] | None]

# Queries one TCP connection may have in flight before we stop reading from it.
MAX_PIPELINED = 64

# The fast path's memo of answers: at most this many, holding at most this many bytes of
# queries and answers (each answer fits the client's UDP limit); emptied when full. The
# queries seen once (not yet kept) are bounded alike.
MEMO_ENTRIES = 32768
MEMO_BYTES = 8 * 1024 * 1024


class _Kept:
    """An answer the fast path gave, kept under the query's bytes after its ID.

    Two queries whose bytes after the ID are the same (flags, counts, the question in the
    client's case, the OPT record with its payload size, DO bit and options) get the same
    answer but for the ID, for as long as the decision and the cached answer stand: the
    chain is the resolver's chain and its `generation` has not moved (a new snapshot or
    zone copy, a reload), and, for an answer that comes from the cache (`entry`), that
    entry is still the live one and still `entry_age` seconds old (its TTLs age each
    second; it expires). A blocked or local answer has fixed TTLs and no entry.
    """

    __slots__ = (
        "age",
        "answer",
        "body",
        "cache_key",
        "chain",
        "edns",
        "entry",
        "entry_age",
        "generation",
        "question",
    )

    def __init__(
        self,
        body: bytes,
        answer: Answer,
        question: bytes,
        edns: bool,
        age: int,
        chain: Any,
        generation: int,
        cache_key: CacheKey,
        entry: CacheEntry | None,
        entry_age: int,
    ) -> None:
        self.body = body
        self.answer = answer
        self.question = question
        self.edns = edns
        self.age = age
        self.chain = chain
        self.generation = generation
        self.cache_key = cache_key
        self.entry = entry
        self.entry_age = entry_age


@attrs.define
class Counters:
    """What the responder has seen since start."""

    queries: int = 0
    fast: int = 0
    rate_limited: int = 0
    dropped: int = 0
    format_errors: int = 0
    refused: int = 0
    server_failures: int = 0


class Responder:
    """Turns query packets into response packets.

    Plain UDP queries that are blocked or cached are answered on the fast path, from
    pre-encoded packets, without decoding them into objects; everything else takes the full
    path. Both ask the same `ChainResolver.answer_at_once` (the fast path as `answer_held`)
    and build the bytes with the same `packet.assemble`, so the two cannot answer
    differently.

    When every policy of the chain decides by name and class alone (`names_only`), the
    fast path keeps the answers it gave to queries asked more than once (`_Kept`): a query
    whose bytes after the ID were answered before, while that answer stands, gets those
    bytes with its own ID, without reading the query again. It is counted, tallied and
    recorded as any other, after the rate limiter and the ACL.
    """

    log = Logger()

    def __init__(
        self,
        resolver: ChainResolver,
        acl: ClientACL,
        clock: IReactorTime,
        observers: list[Callable[[QueryEvent], None]] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.resolver = resolver
        self.acl = acl
        self.clock = clock
        self.limiter = limiter
        self.observers = observers if observers is not None else []
        self.counters = Counters()
        self.tally: Tally | None = None
        self.recorder: Recorder | None = None
        self.zone: ZoneHook | None = None
        # NOTIFYs refused since the last line saying so, and when that line was written:
        # anyone may send them, so they are reported once a minute, not once each.
        self._refused_notifies = 0
        self._refusal_reported_at: float | None = None
        # The fast path's answers by query bytes after the ID (see `_Kept`), and the bytes
        # of those keys and answers together.
        self._memo: dict[bytes, _Kept] = {}
        self._memo_bytes = 0
        # The query bytes answered once on the fast path and not yet kept, and their size.
        self._seen: set[bytes] = set()
        self._seen_bytes = 0

    def respond(
        self, data: bytes, client: str, transport: str
    ) -> bytes | defer.Deferred[Any] | Iterator[bytes] | None:
        """The response to `data` from `client`, now or later; None means send nothing.

        Only the zone hook returns a stream of messages, and only over TCP.
        """
        if transport == "udp" and self.limiter is not None:
            verdict = self.limiter.check(client)
            if verdict is not Verdict.SEND:
                self.counters.rate_limited += 1
                return _slipped(data) if verdict is Verdict.SLIP else None
        if self.zone is not None:
            try:
                claimed = self.zone(data, client, transport)
            except Exception:
                self.log.failure("the zone hook failed on a packet from {client}", client=client)
                claimed = None
            if claimed is not None:
                if transport == "udp" and not isinstance(claimed, bytes):
                    return None
                return claimed
        if transport == "udp":
            wire = self._fast(data, client)
            if wire is not None:
                return wire
        started = self.clock.seconds()
        if is_notify(data):
            followers = self._followers()
            if followers:
                return self._notify(data, client, followers)
            # No policy follows a zone: NOTIFY is an opcode this server does not do (NOTIMP).
        try:
            request = read_request(data)
        except DropPacket:
            self.counters.dropped += 1
            return None
        except RequestError as problem:
            self.counters.format_errors += 1
            return encode_error(problem)
        self.counters.queries += 1
        if not self.acl.allows(client):
            self.counters.refused += 1
            return self._finish(refused_answer(), request, client, transport, started)
        result = self.resolver.resolve(request, client, transport)
        if isinstance(result, defer.Deferred):
            return result.addCallback(self._finish, request, client, transport, started)
        return self._finish(result, request, client, transport, started)

    def _fast(self, data: bytes, client: str) -> bytes | None:
        """The answer to a plain, allowed, blocked-or-cached UDP query; else None."""
        key = data[2:]
        kept = self._memo.get(key)
        if kept is not None:
            if not self.acl.allows(client):
                return None
            if self._holds(kept):
                wire = data[:2] + kept.body
                self._fast_answered(
                    client, kept.question, kept.edns, kept.answer, len(wire), kept.age
                )
                return wire
            del self._memo[key]
        query = read_plain_query(data)
        if query is None or not self.acl.allows(client):
            return None
        resolver = self.resolver
        chain = resolver.policy
        decision = None
        if chain:
            decision = resolver.decide(
                query.name, query.qtype, query.qclass, client, "udp", query.edns, query.dnssec_ok
            )
        cache_key = (
            query.key_name,
            query.qtype,
            query.qclass,
            query.dnssec_ok,
            query.flags & CHECKING_DISABLED,
        )
        found = resolver.answer_held(decision, cache_key)
        if found is None or found[0].packet is None:
            return None
        answer, age, entry, entry_age = found
        opt = opt_record(query.dnssec_ok, answer.ede) if query.edns else None
        assert answer.packet is not None
        wire = assemble(query.ident, query.flags, query.question, answer.packet, age, opt)
        if len(wire) > query.udp_limit:
            return None  # the full path truncates
        if (
            getattr(chain, "names_only", False)
            and answer.kind is not Kind.SERVER_FAILURE  # a failing policy is asked again
            and self._asked_before(key)
        ):
            self._keep(
                key,
                _Kept(
                    wire[2:],
                    answer,
                    query.question,
                    query.edns,
                    age,
                    chain,
                    chain.generation(),
                    cache_key,
                    entry,
                    entry_age,
                ),
            )
        self._fast_answered(client, query.question, query.edns, answer, len(wire), age)
        return wire

    def _holds(self, kept: _Kept) -> bool:
        """Whether a kept answer is still the one to give (see `_Kept`)."""
        chain = self.resolver.policy
        if kept.chain is not chain or kept.generation != chain.generation():
            return False
        entry = kept.entry
        return entry is None or self.resolver.cache.holds(kept.cache_key, entry, kept.entry_age)

    def _asked_before(self, key: bytes) -> bool:
        """Whether the query bytes `key` were seen before (lately); remember them if not.

        Only an answer asked for a second time is kept: most names asked once are never
        asked again (a new feed's names, random subdomains), and keeping each would cost
        their first answers more (the collector walks every object kept) for nothing.
        """
        seen = self._seen
        if key in seen:
            return True
        if len(seen) >= MEMO_ENTRIES or self._seen_bytes + len(key) > MEMO_BYTES:
            seen.clear()
            self._seen_bytes = 0
        seen.add(key)
        self._seen_bytes += len(key)
        return False

    def _keep(self, key: bytes, kept: _Kept) -> None:
        """Keep an answer for the query bytes `key`, within the memo's bounds."""
        memo = self._memo
        size = len(key) + len(kept.body)
        if len(memo) >= MEMO_ENTRIES or self._memo_bytes + size > MEMO_BYTES:
            memo.clear()
            self._memo_bytes = 0
        memo[key] = kept
        self._memo_bytes += size

    def _fast_answered(
        self, client: str, question: bytes, edns: bool, answer: Answer, size: int, age: int
    ) -> None:
        """Count, tally and record a query answered on the fast path."""
        self.counters.queries += 1
        self.counters.fast += 1
        tally = self.tally
        if tally is not None:
            try:
                tally("udp", question, answer)
            except Exception:
                self.log.failure("query tally failed")
        recorder = self.recorder
        if recorder is not None:
            try:
                recorder(self.clock.seconds(), client, "udp", question, edns, answer, size, age)
            except Exception:
                self.log.failure("query recorder failed")
        if self.observers:
            self._tell(
                QueryEvent(self.clock.seconds(), client, "udp", question, edns, answer, size, age)
            )

    def _finish(
        self, answer: Answer, request: Request, client: str, transport: str, started: float
    ) -> bytes | None:
        wire: bytes | None
        if answer.kind is Kind.DROPPED:
            wire = None  # a policy said to send nothing (RPZ DROP); the log still says why
        else:
            try:
                wire = self._encode(answer, request, transport)
            except Exception:
                self.log.failure("cannot encode the answer to {name!r}", name=request.question.name)
                answer = server_failure()
                wire = encode_response(request, answer.rcode)
        if answer.kind is Kind.SERVER_FAILURE:
            self.counters.server_failures += 1
        tally = self.tally
        if tally is not None:
            try:
                tally(transport, request.question_wire, answer)
            except Exception:
                self.log.failure("query tally failed")
        size = 0 if wire is None else len(wire)
        edns = request.edns is not None
        recorder = self.recorder
        if recorder is not None:
            try:
                recorder(
                    started,
                    client,
                    transport,
                    request.question_wire,
                    edns,
                    answer,
                    size,
                    answer.age,
                )
            except Exception:
                self.log.failure("query recorder failed")
        if self.observers:
            self._tell(
                QueryEvent(
                    started,
                    client,
                    transport,
                    request.question_wire,
                    edns,
                    answer,
                    size,
                    answer.age,
                )
            )
        return wire

    def _followers(self) -> list[Any]:
        """The policies of the chain in service that follow a zone (`IZoneFollower`)."""
        chain = self.resolver.policy
        if not chain:
            return []
        return [policy for policy in chain.policies if IZoneFollower.providedBy(policy)]

    def _notify(self, data: bytes, client: str, followers: list[Any]) -> bytes | None:
        """Hand a NOTIFY (RFC 1996) to the policy following its zone; answer or refuse it."""
        try:
            notify = read_notify(data)
        except RequestError as problem:
            self.counters.format_errors += 1
            return encode_error(problem)
        accepted = False
        for policy in followers:
            if policy.zone == notify.zone:
                try:
                    accepted = bool(policy.notified(client))
                except Exception:
                    self.log.failure("NOTIFY for {zone} failed", zone=notify.zone)
                if accepted:
                    break
        if not accepted:
            self._report_refused_notify(notify.zone or ".", client)
        return notify_response(notify, accepted)

    def _report_refused_notify(self, zone: str, client: str) -> None:
        self._refused_notifies += 1
        now = self.clock.seconds()
        last = self._refusal_reported_at
        if last is not None and now - last < NOTIFY_REPORT_INTERVAL:
            return
        self.log.info(
            "NOTIFY for {zone} from {client} refused: no rpz policy follows it from there"
            " ({count} refused since the last such line)",
            zone=zone,
            client=client,
            count=self._refused_notifies,
        )
        self._refused_notifies = 0
        self._refusal_reported_at = now

    def _encode(self, answer: Answer, request: Request, transport: str) -> bytes:
        limit = request.udp_limit if transport == "udp" else TCP_MAX_SIZE
        edns = request.edns
        if answer.packet is not None:
            opt = None if edns is None else opt_record(edns.dnssec_ok, answer.ede)
            ident, flags, question = request.message.id, request.flags, request.question_wire
            wire = assemble(ident, flags, question, answer.packet, answer.age, opt)
            if len(wire) <= limit:
                return wire
            if not (answer.answers or answer.authority or answer.additional):
                empty = PacketBody(answer.rcode, False, (0, 0, 0), b"")
                return assemble(ident, flags, question, empty, 0, opt, truncated=True)
        return encode_response(
            request,
            answer.rcode,
            answer.aged(answer.answers),
            answer.aged(answer.authority),
            answer.aged(answer.additional),
            max_size=limit,
            ede=answer.ede,
            # AD only for clients that asked for DNSSEC data (RFC 6840 section 5.7).
            authentic=answer.authentic and bool(edns and edns.dnssec_ok),
        )

    def _tell(self, event: QueryEvent) -> None:
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                self.log.failure("query observer failed")


def _slipped(data: bytes) -> bytes | None:
    """An empty truncated answer, telling a rate-limited client to retry over TCP."""
    query = read_plain_query(data)
    if query is None:
        return None
    opt = opt_record(query.dnssec_ok) if query.edns else None
    empty = PacketBody(0, False, (0, 0, 0), b"")
    return assemble(query.ident, query.flags, query.question, empty, 0, opt, truncated=True)


@implementer(IPushProducer)
class DNSStreamProtocol(Protocol, TimeoutMixin):
    """DNS over TCP: length-prefixed messages, pipelined, closed when idle.

    Queries are taken from what the client sent only while fewer than `MAX_PIPELINED` are
    in flight and the transport is not backed up (it calls `pauseProducing` when the
    client does not read its answers fast enough, `resumeProducing` when it has); in
    between, the protocol does not read from the client either.
    """

    factory: DNSStreamFactory

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_flight = 0
        self._backed_up = False
        self._reading = True
        self._stream: Iterator[bytes] | None = None
        self._pumping = False
        self._client = ""
        #: The client network it counts against (set by the factory).
        self.network: str | None = None

    def connectionMade(self) -> None:
        self.callLater = self.factory.clock.callLater  # type: ignore[method-assign,assignment]
        self.factory.opened(self)
        self._client = plain_address(self.transport.getPeer().host)  # type: ignore[union-attr]
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.setTimeout(self.factory.idle_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed(self)
        self._backed_up = True
        self._stream = None
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    # IPushProducer: the transport says whether it can take more answers.

    def pauseProducing(self) -> None:
        self._backed_up = True
        self._read_or_not()

    def resumeProducing(self) -> None:
        self._backed_up = False
        if self._stream is not None:
            self._schedule_pump()
        self._take_queries()

    def stopProducing(self) -> None:
        self._backed_up = True

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._take_queries()

    def _may_take(self) -> bool:
        return not self._backed_up and self._in_flight < MAX_PIPELINED and self._stream is None

    def _take_queries(self) -> None:
        """Answer the whole queries received, as long as the protocol may take them."""
        while self._may_take() and len(self._buffer) >= 2:
            (length,) = struct.unpack_from("!H", self._buffer)
            if len(self._buffer) < 2 + length:
                break
            message = bytes(self._buffer[2 : 2 + length])
            del self._buffer[: 2 + length]
            # Only whole queries count as activity: a client dripping a byte at a time
            # cannot hold a connection (and a place under the cap) for ever.
            self.resetTimeout()
            self._handle(message)
        self._read_or_not()

    def _read_or_not(self) -> None:
        """Read from the client while queries may be taken; stop reading meanwhile."""
        if self.transport is None or not self.connected:
            return
        may_take = self._may_take()
        if may_take and not self._reading:
            self._reading = True
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        elif not may_take and self._reading:
            self._reading = False
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _handle(self, message: bytes) -> None:
        result = self.factory.responder.respond(message, self._client, "tcp")
        if isinstance(result, defer.Deferred):
            self._in_flight += 1
            result.addCallback(self._answered)
        elif isinstance(result, bytes):
            self._send(result)
        elif result is not None:
            self._stream = result
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pumping:
            self._pumping = True
            self.factory.clock.callLater(0, self._pump)

    def _pump(self) -> None:
        """Write the stream's next message, then come back in the next reactor turn."""
        self._pumping = False
        stream = self._stream
        if stream is None or self._backed_up or not self.connected:
            return
        try:
            message = next(stream)
        except StopIteration:
            self._stream = None
            self._take_queries()
            return
        except Exception:
            self.factory.log.failure("a stream to {client} failed", client=self._client)
            self._stream = None
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._send(message)
        self._schedule_pump()

    def _answered(self, wire: bytes | None) -> None:
        self._in_flight -= 1
        if wire is not None:
            self._send(wire)
        self._take_queries()

    def _send(self, wire: bytes) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(struct.pack("!H", len(wire)) + wire)
            self.resetTimeout()


class DNSStreamFactory(ServerFactory):
    """Builds TCP connections up to `max_connections` in all and `max_per_client` from one
    client network (a /`ipv4_prefix`, or a /`ipv6_prefix` for IPv6); beyond either, new
    connections are closed at once. Every connection it builds ends a descriptor
    `shortage` if one is going on."""

    protocol = DNSStreamProtocol  # type: ignore[assignment]
    noisy = False
    log = Logger()

    def __init__(
        self,
        responder: Responder,
        idle_timeout: float,
        max_connections: int,
        clock: IReactorTime,
        *,
        max_per_client: int | None = None,
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 56,
        shortage: DescriptorShortage | None = None,
    ) -> None:
        self.responder = responder
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_client = max_per_client if max_per_client is not None else max_connections
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.shortage = shortage
        self.open_connections = 0
        self.rejected_connections = 0
        self.rejected_per_client = 0
        self._per_network: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.open_connections >= self.max_connections:
            self.rejected_connections += 1
            if self.rejected_connections % 1000 == 1:
                self.log.warn(
                    "TCP connection from {client} closed: {count} open, the limit"
                    " (server.tcp_max_connections); {rejected} closed so far",
                    client=addr.host,
                    count=self.open_connections,
                    rejected=self.rejected_connections,
                )
            return None
        network = self._network_of(addr.host)
        held = self._per_network.get(network, 0)
        if held >= self.max_per_client:
            self.rejected_per_client += 1
            if self.rejected_per_client % 1000 == 1:
                self.log.warn(
                    "TCP connection from {client} closed: {count} open from {network}, the"
                    " limit (server.tcp_max_connections_per_client); {rejected} closed so far",
                    client=plain_address(addr.host),
                    count=held,
                    network=network,
                    rejected=self.rejected_per_client,
                )
            return None
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, DNSStreamProtocol)
        protocol.network = network
        if self.shortage is not None:
            self.shortage.over()
        return protocol

    def opened(self, protocol: DNSStreamProtocol) -> None:
        """Count a connection made (its protocol's `connectionMade`)."""
        self.open_connections += 1
        network = protocol.network
        if network is not None:
            self._per_network[network] = self._per_network.get(network, 0) + 1

    def closed(self, protocol: DNSStreamProtocol) -> None:
        """Count a connection lost (its protocol's `connectionLost`)."""
        self.open_connections -= 1
        network = protocol.network
        if network is not None:
            left = self._per_network[network] - 1
            if left:
                self._per_network[network] = left
            else:
                del self._per_network[network]

    def _network_of(self, host: str) -> str:
        network = client_network(host, self.ipv4_prefix, self.ipv6_prefix)
        return host if network is None else str(network)
