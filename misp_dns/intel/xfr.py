"""The client side of zone transfers: SOA, AXFR and IXFR (RFC 5936, RFC 1995) over TCP.

`transfer(reactor, host, port, zone, serial=..., ...)` connects, sends one query and reads
the framed response messages until the transfer is complete, then fires with one of:

- `FullZone(records)`: the whole zone (an AXFR, or an IXFR the primary answered in full);
- `Deltas(changes)`: an incremental IXFR, each `Delta` the records removed and added to go
  from one serial to the next (SOA records included, as on the wire);
- `UpToDate(serial)`: an IXFR answered with the primary's SOA alone, no newer than ours.

It fails with `TransferError` (a message that says why: refused, malformed, too large,
timed out, a bad TSIG, the connection lost mid-transfer) and never with partial data.
`apply_deltas` applies an IXFR's changes to a zone's records, or raises `ZoneDataError`
when they do not apply (a serial out of step, a deletion of a record the zone lacks).

`key`, when given, signs the query with TSIG and requires the response stream to verify
(RFC 8945 section 5.3.1: the first and last messages signed, at most 99 unsigned between).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from misp_dns.intel.zonedata import (
    SOA,
    Message,
    Record,
    ZoneDataError,
    name_to_wire,
    read_message,
    soa_fields,
)
from misp_dns.tsig import StreamVerifier, TsigKey, sign

__all__ = [
    "AXFR",
    "IXFR",
    "Delta",
    "Deltas",
    "FullZone",
    "TransferError",
    "UpToDate",
    "apply_deltas",
    "build_query",
    "transfer",
]

AXFR = 252
IXFR = 251
IN = 1
OPCODE_NOTIFY = 4
_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
#: The default caps on a transfer: bytes received and records held.
MAX_BYTES = 256 * 1024 * 1024
MAX_RECORDS = 5_000_000
RCODE_NAMES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 9: "NOTAUTH"}


class TransferError(Exception):
    """A transfer that failed; nothing of it may be used. `rcode` is the primary's error
    RCODE when it answered one."""

    def __init__(self, message: str, rcode: int | None = None) -> None:
        super().__init__(message)
        self.rcode = rcode


@attrs.frozen
class FullZone:
    """A whole zone: its records, the SOA among them."""

    records: tuple[Record, ...]

    @property
    def serial(self) -> int:
        """The zone's SOA serial."""
        return soa_fields(self.records[0].rdata)[2]


@attrs.frozen
class Delta:
    """One IXFR difference sequence: from `old_serial` to `new_serial`."""

    old_serial: int
    new_serial: int
    removed: tuple[Record, ...]
    added: tuple[Record, ...]


@attrs.frozen
class Deltas:
    """An incremental IXFR: its differences in order."""

    changes: tuple[Delta, ...]

    @property
    def serial(self) -> int:
        """The serial the changes lead to."""
        return self.changes[-1].new_serial


@attrs.frozen
class UpToDate:
    """The primary has nothing newer than `serial`."""

    serial: int


Result = FullZone | Deltas | UpToDate


def _serial_of(record: Record) -> int:
    return soa_fields(record.rdata)[2]


def build_query(ident: int, zone: str, qtype: int, soa: Record | None = None) -> bytes:
    """A transfer query for `zone`; an IXFR carries our SOA in its authority section."""
    authority = b""
    if qtype == IXFR:
        if soa is None:
            raise ValueError("an IXFR query needs the zone's current SOA")
        authority = (
            name_to_wire(zone) + _RR_FIXED.pack(SOA, IN, soa.ttl, len(soa.rdata)) + soa.rdata
        )
    header = _HEADER.pack(ident, 0, 1, 0, 1 if authority else 0, 0)
    return header + name_to_wire(zone) + struct.pack("!HH", qtype, IN) + authority


def apply_deltas(records: Iterable[Record], serial: int, changes: Sequence[Delta]) -> list[Record]:
    """The records after `changes`, applied in order to a zone at `serial`.

    Raises `ZoneDataError` when they do not apply: a delta starting from another serial
    than the zone's at that point, or removing a record the zone does not hold.
    """
    zone = {record.key: record for record in records}
    for delta in changes:
        if delta.old_serial != serial:
            raise ZoneDataError(
                f"IXFR delta from serial {delta.old_serial} does not apply to serial {serial}"
            )
        for record in delta.removed:
            if record.type == SOA:
                continue
            if zone.pop(record.key, None) is None:
                raise ZoneDataError(
                    f"IXFR delta {delta.old_serial}->{delta.new_serial} removes"
                    f" {record.owner!r} type {record.type}, which the zone does not hold"
                )
        for record in delta.added:
            if record.type == SOA:
                continue
            zone[record.key] = record
        zone = {key: r for key, r in zone.items() if r.type != SOA}
        zone[delta.added[0].key] = delta.added[0]
        serial = delta.new_serial
    return list(zone.values())


@attrs.define
class _Reader:
    """Turns the record stream of an AXFR or IXFR response into a result (RFC 1995 section 4)."""

    qtype: int
    our_serial: int | None
    max_records: int
    first: Record | None = None
    records: list[Record] = attrs.field(factory=list)
    incremental: bool | None = None
    result: Result | None = None
    # Incremental state: the deltas so far, and the one being read.
    changes: list[Delta] = attrs.field(factory=list)
    removing: bool = True
    old_soa: Record | None = None
    new_soa: Record | None = None
    removed: list[Record] = attrs.field(factory=list)
    added: list[Record] = attrs.field(factory=list)
    count: int = 0

    def feed(self, record: Record) -> None:
        if self.result is not None:
            raise TransferError("records after the end of the transfer")
        self.count += 1
        if self.count > self.max_records:
            raise TransferError(f"more than {self.max_records} records")
        if self.first is None:
            if record.type != SOA:
                raise TransferError("the transfer does not start with an SOA")
            self.first = record
            return
        final = _serial_of(self.first)
        if self.incremental is None:
            self.incremental = (
                self.qtype == IXFR
                and record.type == SOA
                and _serial_of(record) == self.our_serial
                and final != self.our_serial
            )
            if self.incremental:
                self.old_soa = record
                return
        if not self.incremental:
            if record.type == SOA:
                if record.key != self.first.key:
                    raise TransferError("the transfer ends with another SOA than it began")
                self.result = FullZone((self.first, *self.records))
                return
            self.records.append(record)
            return
        self._feed_delta(record, final)

    def _feed_delta(self, record: Record, final: int) -> None:
        if record.type != SOA:
            (self.removed if self.removing else self.added).append(record)
            return
        if self.removing:
            self.new_soa = record
            self.removing = False
            return
        assert self.old_soa is not None and self.new_soa is not None
        self.changes.append(
            Delta(
                _serial_of(self.old_soa),
                _serial_of(self.new_soa),
                (self.old_soa, *self.removed),
                (self.new_soa, *self.added),
            )
        )
        self.removed, self.added, self.removing = [], [], True
        if _serial_of(record) == final and _serial_of(self.new_soa) == final:
            self.result = Deltas(tuple(self.changes))
            return
        self.old_soa = record

    def message_ended(self) -> None:
        """An IXFR answered with one SOA, no newer than ours, ends with its message."""
        if self.result is None and self.count == 1 and self.qtype == IXFR and self.first:
            serial = _serial_of(self.first)
            if self.our_serial is not None and _serial_not_newer(serial, self.our_serial):
                self.result = UpToDate(serial)


def _serial_not_newer(serial: int, ours: int) -> bool:
    """RFC 1982 serial arithmetic: is `serial` equal to or older than `ours`?"""
    return serial == ours or ((ours - serial) % 2**32) < 2**31


class _TransferProtocol(Protocol):
    def __init__(self, client: _Transfer) -> None:
        self.client = client
        self.buffer = bytearray()

    def connectionMade(self) -> None:
        query = self.client.query()
        self.transport.write(struct.pack("!H", len(query)) + query)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        try:
            while len(self.buffer) >= 2:
                (length,) = struct.unpack_from("!H", self.buffer)
                if len(self.buffer) < 2 + length:
                    break
                message = bytes(self.buffer[2 : 2 + length])
                del self.buffer[: 2 + length]
                if self.client.message(message):
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
        except Exception as problem:
            self.client.fail(problem)
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.client.lost(reason)


@attrs.define
class _Transfer:
    """One transfer: the query, the received messages, the result's Deferred."""

    zone: str
    qtype: int
    soa: Record | None
    clock: Any
    now: Callable[[], float]
    key: TsigKey | None
    max_bytes: int
    max_records: int
    done: defer.Deferred[Result] = attrs.field(factory=defer.Deferred)
    ident: int = attrs.field(factory=lambda: random.randrange(1 << 16))
    received: int = 0
    reader: _Reader | None = None
    verifier: Any = None
    timer: IDelayedCall | None = None

    def query(self) -> bytes:
        our_serial = _serial_of(self.soa) if self.soa is not None else None
        self.reader = _Reader(self.qtype, our_serial, self.max_records)
        wire = build_query(self.ident, self.zone, self.qtype, self.soa)
        if self.key is None:
            return wire
        signed = sign(wire, self.key, self.now())
        self.verifier = StreamVerifier(self.key, signed.mac)
        return signed.wire

    def message(self, wire: bytes) -> bool:
        """Take one response message; True once the transfer is complete."""
        self.received += len(wire)
        if self.received > self.max_bytes:
            raise TransferError(f"the transfer exceeds {self.max_bytes} bytes")
        if self.verifier is not None:
            try:
                wire = self.verifier.verify(wire, self.now())
            except Exception as problem:
                raise TransferError(f"TSIG: {problem}") from None
        try:
            message = read_message(wire)
        except ZoneDataError as problem:
            raise TransferError(f"malformed response: {problem}") from None
        self._check(message)
        assert self.reader is not None
        for record in message.answers:
            self.reader.feed(record)
        self.reader.message_ended()
        if self.reader.result is None:
            return False
        if self.verifier is not None:
            try:
                self.verifier.finish()
            except Exception as problem:
                raise TransferError(f"TSIG: {problem}") from None
        self.finish(self.reader.result)
        return True

    def _check(self, message: Message) -> None:
        if message.ident != self.ident or not message.flags & 0x8000:
            raise TransferError("a response that does not answer our query")
        if message.rcode:
            name = RCODE_NAMES.get(message.rcode, f"RCODE {message.rcode}")
            raise TransferError(f"the primary answered {name}", message.rcode)
        if message.question is not None and (
            message.question[0] != self.zone or message.question[1] != self.qtype
        ):
            raise TransferError("a response to another question")
        if not message.answers:
            raise TransferError("a response without records")

    def finish(self, result: Result) -> None:
        if not self.done.called:
            self._stop_timer()
            self.done.callback(result)

    def fail(self, problem: BaseException) -> None:
        if not self.done.called:
            self._stop_timer()
            if not isinstance(problem, TransferError):
                problem = TransferError(f"{type(problem).__name__}: {problem}")
            self.done.errback(Failure(problem))

    def lost(self, reason: Failure | None) -> None:
        self.fail(TransferError("the primary closed the connection before the end"))

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class _Factory(ClientFactory):
    noisy = False

    def __init__(self, client: _Transfer) -> None:
        self.client = client
        self.connector: Any = None

    def buildProtocol(self, addr: Any) -> Protocol:
        return _TransferProtocol(self.client)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client.fail(TransferError(f"cannot connect: {reason.getErrorMessage()}"))


def transfer(
    reactor: Any,
    host: str,
    port: int,
    zone: str,
    *,
    qtype: int = AXFR,
    soa: Record | None = None,
    key: TsigKey | None = None,
    timeout: float = 60.0,
    max_bytes: int = MAX_BYTES,
    max_records: int = MAX_RECORDS,
) -> defer.Deferred[Result]:
    """Transfer `zone` from `host`:`port` (see the module docstring)."""
    client = _Transfer(zone, qtype, soa, reactor, reactor.seconds, key, max_bytes, max_records)
    factory = _Factory(client)
    connector = reactor.connectTCP(host, port, factory, timeout=timeout)

    def expire() -> None:
        client.fail(TransferError(f"no complete transfer within {timeout:g} s"))
        connector.disconnect()

    client.timer = reactor.callLater(timeout, expire)
    return client.done
