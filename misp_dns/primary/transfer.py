"""Answering the zone's requests: SOA, NS, AXFR (RFC 5936) and IXFR (RFC 1995), with TSIG.

`ZoneServer.respond(data, client, transport)` is handed every packet the listeners
receive (the `Responder`'s zone hook). It returns None for anything that is not a query
for the zone's apex, so that those go on to the resolver; otherwise the answer:

- the client must be in `allow_transfer`, else REFUSED;
- when keys are required (`[rpz] tsig_keys` not empty), the request must be signed with
  one of them: unsigned is REFUSED, an unknown key NOTAUTH with TSIG error BADKEY, a bad
  signature NOTAUTH with BADSIG, a clock too far off NOTAUTH with BADTIME (RFC 8945
  section 5.2); every refusal is one log line naming the client, the ACL and the key;
- SOA and NS are answered over UDP and TCP, signed when the request was;
- AXFR over TCP is a stream of messages, each up to 16 KiB (see
  `messages.TRANSFER_MESSAGE` for why not 64): SOA, NS, the triggers, SOA.
  Over UDP it is FORMERR (RFC 5936 section 4.2);
- IXFR over TCP gives the deltas since the client's serial (SOA new, then per delta SOA
  old, deletions, SOA next, additions, and SOA new at the end); a client already at the
  current serial gets the SOA alone; a serial older than the kept deltas gets the whole
  zone. Over UDP, IXFR gets the SOA alone, which tells the client to come back over TCP.

A stream is an iterator of messages, built one at a time as the TCP connection takes
them, so a big transfer never holds the reactor for more than one message. Each message
of a signed transfer is signed (RFC 8945 section 5.3.1).
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from misp_dns.primary.history import Delta, History, Version
from misp_dns.primary.messages import TRANSFER_MESSAGE, MessageWriter, name_wire, soa_rdata
from misp_dns.primary.zone import Record
from misp_dns.tsig import (
    BADKEY,
    BADSIG,
    BADTIME,
    StreamSigner,
    TsigError,
    TsigKey,
    error_response,
    find_tsig,
    sign,
    verify,
)
from misp_dns.values import Network

__all__ = ["Apex", "ZoneRequest", "ZoneServer", "read_zone_request"]

SOA = 6
NS = 2
IXFR = 251
AXFR = 252
_IN = 1
_FORMERR = 1
_SERVFAIL = 2
_REFUSED = 5
_NOTAUTH = 9
_RD = 0x0100
_OPCODE_QUERY = 0

Stream = Iterator[bytes]


@attrs.frozen
class Apex:
    """The apex records' fixed parts: SOA names and timers, the NS name."""

    mname: str
    rname: str
    refresh: int = 300
    retry: int = 60
    expire: int = 604800
    minimum: int = 60
    ttl: int = 60

    def soa(self, serial: int) -> Record:
        """The SOA record for `serial`."""
        rdata = soa_rdata(
            self.mname, self.rname, serial, self.refresh, self.retry, self.expire, self.minimum
        )
        return Record("", SOA, self.ttl, rdata)

    def ns(self) -> Record:
        """The NS record."""
        return Record("", NS, self.ttl, name_wire(self.mname))


@attrs.frozen
class ZoneRequest:
    """A query for the zone's apex, as read from the wire."""

    ident: int
    flags: int
    qtype: int
    qclass: int
    question: bytes
    #: The serial of the SOA in an IXFR request's authority section, if any.
    client_serial: int | None = None


def _skip_name(data: bytes, offset: int) -> int:
    while offset < len(data):
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset
    raise ValueError("name runs past the end")


def read_zone_request(data: bytes, zone_wire: bytes) -> ZoneRequest | None:
    """The request if `data` is a query (QR clear, opcode QUERY, one question) whose name is
    the zone's apex (`zone_wire`, lower case); otherwise None."""
    end = 12 + len(zone_wire)
    # Every query goes through here: the first label's length turns most away at once.
    if len(data) < end + 4 or data[12] != zone_wire[0] or data[12:end].lower() != zone_wire:
        return None
    ident, flags, qdcount, _an, nscount, _ar = struct.unpack_from("!6H", data)
    if flags & 0x8000 or (flags >> 11) & 0xF != _OPCODE_QUERY or qdcount != 1:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, end)
    question = data[12 : end + 4]
    serial = None
    if qtype == IXFR and nscount:
        try:
            serial = _authority_serial(data, end + 4)
        except (ValueError, struct.error):
            serial = None
    return ZoneRequest(ident, flags, qtype, qclass, question, serial)


def _authority_serial(data: bytes, offset: int) -> int | None:
    offset = _skip_name(data, offset)
    rtype, _class, _ttl, _rdlength = struct.unpack_from("!HHIH", data, offset)
    if rtype != SOA:
        return None
    offset = _skip_name(data, offset + 10)  # MNAME
    offset = _skip_name(data, offset)  # RNAME
    serial: int = struct.unpack_from("!I", data, offset)[0]
    return serial


def _newer_or_equal(serial: int, current: int) -> bool:
    """RFC 1982: `serial` is at or past `current`."""
    return serial == current or 0 < (serial - current) % 2**32 < 2**31


def _kind(qtype: int) -> str:
    return {AXFR: "AXFR", IXFR: "IXFR", SOA: "SOA", NS: "NS"}.get(qtype, f"type {qtype}")


class ZoneServer:
    """Answers the zone's requests; see the module docstring.

    `version()` is the zone's current version (None until the first is built, answered
    SERVFAIL); `keys` the keys a request may be signed with, `require_tsig` whether it
    must be.
    """

    log = Logger()

    def __init__(
        self,
        zone: str,
        apex: Apex,
        allow_transfer: Sequence[Network],
        keys: Mapping[str, TsigKey],
        require_tsig: bool,
        version: Callable[[], Version | None],
        history: History,
        clock: IReactorTime,
    ) -> None:
        self.zone = zone.rstrip(".").lower()
        self.apex = apex
        self.allow_transfer = tuple(allow_transfer)
        self.keys = dict(keys)
        self.require_tsig = require_tsig
        self.version = version
        self.history = history
        self.clock = clock
        self._zone_wire = name_wire(self.zone).lower()
        self.transfers = 0
        self.refused = 0

    def respond(self, data: bytes, client: str, transport: str) -> bytes | Stream | None:
        """The answer to `data` if it is a request for the zone, else None."""
        request = read_zone_request(data, self._zone_wire)
        if request is None:
            return None
        kind = _kind(request.qtype)
        if not self._allowed(client):
            return self._refuse(request, client, kind, "not in rpz.allow_transfer", "")
        key: TsigKey | None = None
        request_mac = b""
        try:
            found = find_tsig(data)
        except TsigError:
            return self._error(request, _FORMERR)
        if found is None:
            if self.require_tsig:
                return self._refuse(request, client, kind, "not signed (rpz.tsig_keys)", "")
        else:
            try:
                checked = verify(data, self.keys, self.clock.seconds())
            except TsigError as problem:
                return self._bad_tsig(request, client, kind, problem)
            key, request_mac = checked.key, checked.mac
        version = self.version()
        if version is None:
            return self._signed(self._error(request, _SERVFAIL), key, request_mac)
        if request.qtype == AXFR:
            if transport != "tcp":
                return self._signed(self._error(request, _FORMERR), key, request_mac)
            return self._stream(
                request, self._axfr(version), client, kind, version, key, request_mac
            )
        if request.qtype == IXFR:
            return self._ixfr(request, version, client, transport, key, request_mac)
        answers = {SOA: [self.apex.soa(version.serial)], NS: [self.apex.ns()]}
        return self._single(request, answers.get(request.qtype, []), key, request_mac)

    def _allowed(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allow_transfer)

    def _ixfr(
        self,
        request: ZoneRequest,
        version: Version,
        client: str,
        transport: str,
        key: TsigKey | None,
        request_mac: bytes,
    ) -> bytes | Stream:
        current = self.apex.soa(version.serial)
        serial = request.client_serial
        if transport != "tcp" or (serial is not None and _newer_or_equal(serial, version.serial)):
            return self._single(request, [current], key, request_mac)
        deltas = self.history.since(serial, version.serial) if serial is not None else None
        if deltas is None:
            records: Iterable[Record] = self._axfr(version)
            kind = f"IXFR (whole zone, the history lacks {serial})"
        else:
            records = self._deltas(current, deltas)
            kind = f"IXFR (delta from serial {serial})"
        return self._stream(request, records, client, kind, version, key, request_mac)

    def _axfr(self, version: Version) -> Iterator[Record]:
        soa = self.apex.soa(version.serial)
        return itertools.chain((soa, self.apex.ns()), version.content.records(), (soa,))

    def _deltas(self, current: Record, deltas: Sequence[Delta]) -> Iterator[Record]:
        yield current
        for delta in deltas:
            yield self.apex.soa(delta.before)
            yield from delta.deleted
            yield self.apex.soa(delta.after)
            yield from delta.added
        yield current

    def _stream(
        self,
        request: ZoneRequest,
        records: Iterable[Record],
        client: str,
        kind: str,
        version: Version,
        key: TsigKey | None,
        request_mac: bytes,
    ) -> Stream:
        self.transfers += 1
        self.log.info(
            "{kind} of {zone} serial {serial} for {client}{signed}",
            kind=kind,
            zone=self.zone,
            serial=version.serial,
            client=client,
            signed=f" (key {key.name})" if key is not None else " (unsigned)",
        )
        messages = self._messages(request, records)
        if key is None:
            return messages
        return self._signed_stream(messages, StreamSigner(key, request_mac))

    def _signed_stream(self, messages: Stream, signer: StreamSigner) -> Stream:
        for message in messages:
            yield signer.sign(message, self.clock.seconds())

    def _messages(self, request: ZoneRequest, records: Iterable[Record]) -> Stream:
        flags = request.flags & _RD
        limit = TRANSFER_MESSAGE
        writer = MessageWriter(
            request.ident, self.zone, question=request.question, flags=flags, limit=limit
        )
        for record in records:
            if not writer.add(record):
                yield writer.finish()
                writer = MessageWriter(request.ident, self.zone, flags=flags, limit=limit)
                writer.add(record)
        yield writer.finish()

    def _single(
        self,
        request: ZoneRequest,
        answers: Sequence[Record],
        key: TsigKey | None,
        request_mac: bytes,
    ) -> bytes:
        writer = MessageWriter(
            request.ident, self.zone, question=request.question, flags=request.flags & _RD
        )
        for record in answers:
            writer.add(record)
        return self._signed(writer.finish(), key, request_mac)

    def _signed(self, message: bytes, key: TsigKey | None, request_mac: bytes) -> bytes:
        if key is None:
            return message
        return sign(message, key, self.clock.seconds(), request_mac=request_mac).wire

    def _error(self, request: ZoneRequest, rcode: int) -> bytes:
        flags = 0x8000 | (request.flags & (0x7800 | _RD)) | rcode
        return struct.pack("!6H", request.ident, flags, 1, 0, 0, 0) + request.question

    def _refuse(
        self, request: ZoneRequest, client: str, kind: str, why: str, key_name: str
    ) -> bytes:
        self.refused += 1
        self.log.warn(
            "refused {kind} of {zone} to {client}: {why} (allow_transfer {acl}; key {key})",
            kind=kind,
            zone=self.zone,
            client=client,
            why=why,
            acl=", ".join(str(n) for n in self.allow_transfer) or "none",
            key=key_name or "none",
        )
        return self._error(request, _REFUSED)

    def _bad_tsig(self, request: ZoneRequest, client: str, kind: str, problem: TsigError) -> bytes:
        why = {BADKEY: "BADKEY", BADSIG: "BADSIG", BADTIME: "BADTIME"}.get(
            problem.error, "bad TSIG"
        )
        self._refuse(request, client, kind, f"TSIG {why}: {problem}", problem.key_name)
        if problem.record is None:
            return self._error(request, _FORMERR)
        notauth = self._error(request, _NOTAUTH)
        if problem.error == BADTIME:
            key = self.keys[problem.record.key_name]
            now = int(self.clock.seconds())
            other = struct.pack("!HI", (now >> 32) & 0xFFFF, now & 0xFFFFFFFF)
            return sign(
                notauth, key, now, request_mac=problem.record.mac, error=BADTIME, other=other
            ).wire
        return error_response(
            notauth, problem.record, problem.error or BADSIG, self.clock.seconds()
        )
