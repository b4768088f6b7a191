"""NOTIFY (RFC 1996): telling the secondaries that the zone has a new serial.

`Notifier.notify(serial)` sends a NOTIFY (opcode 4, AA, the zone's SOA question and its
new SOA in the answer) to every `[rpz] notify` target over UDP, from the `[server] listen`
address of the target's family (secondaries check that a NOTIFY comes from their primary's
address), signed with the first `[rpz] tsig_keys` key when there is one. A target that does
not acknowledge (a response with the same ID, opcode NOTIFY, RCODE NOERROR and, when
signed, a TSIG that verifies) is sent the NOTIFY again after 1, 2, 4 ... seconds, at most
60 apart, until it does or a newer serial replaces it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from misp_dns.backoff import backoff_delay
from misp_dns.primary.messages import name_wire
from misp_dns.primary.zone import Record
from misp_dns.tsig import TsigError, TsigKey, sign, verify
from misp_dns.values import HostPort

__all__ = ["Notifier"]

_OPCODE_NOTIFY = 4
_AA = 0x0400
_QR = 0x8000
_SOA = 6
_IN = 1
FIRST_RETRY = 1.0
LONGEST_RETRY = 60.0


@attrs.define
class _Pending:
    serial: int
    ident: int
    sent: int = 0
    mac: bytes = b""
    timer: Any = None
    complained: bool = False


class _Socket(DatagramProtocol):
    def __init__(self, received: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.received = received

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received(datagram, (str(addr[0]), int(addr[1])))


class Notifier:
    """Sends NOTIFY to `targets` until each acknowledges; see the module docstring.

    `soa(serial)` gives the zone's SOA record; `sources` are the `[server] listen`
    addresses (a NOTIFY leaves from the one of its target's family).
    """

    log = Logger()

    def __init__(
        self,
        zone: str,
        targets: Sequence[HostPort],
        soa: Callable[[int], Record],
        key: TsigKey | None,
        sources: Sequence[HostPort],
        reactor: Any,
        *,
        choose_id: Callable[[], int] = lambda: random.randrange(65536),
    ) -> None:
        self.zone = zone.rstrip(".").lower()
        self.targets = tuple(targets)
        self.soa = soa
        self.key = key
        self.sources = tuple(sources)
        self.reactor = reactor
        self.choose_id = choose_id
        self._pending: dict[HostPort, _Pending] = {}
        self._ports: dict[int, Any] = {}
        self.acknowledged = 0

    def notify(self, serial: int) -> None:
        """Tell every target of `serial` (replacing any NOTIFY still unacknowledged)."""
        for target in self.targets:
            old = self._pending.pop(target, None)
            if old is not None and old.timer is not None and old.timer.active():
                old.timer.cancel()
            self._pending[target] = _Pending(serial, self.choose_id())
            self._send(target)

    def stop(self) -> None:
        """Stop retrying and close the sockets."""
        for pending in self._pending.values():
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
        self._pending.clear()
        for port in self._ports.values():
            port.stopListening()
        self._ports.clear()

    def _port(self, target: HostPort) -> Any:
        family = target.family
        port = self._ports.get(family)
        if port is None:
            source = next((s.host for s in self.sources if s.family == family), "")
            if not source:
                source = "::" if ":" in target.host else "0.0.0.0"
            port = self.reactor.listenUDP(0, _Socket(self._received), interface=source)
            self._ports[family] = port
        return port

    def _message(self, pending: _Pending) -> bytes:
        zone = name_wire(self.zone)
        soa = self.soa(pending.serial)
        header = struct.pack("!6H", pending.ident, _OPCODE_NOTIFY << 11 | _AA, 1, 1, 0, 0)
        question = zone + struct.pack("!HH", _SOA, _IN)
        answer = b"\xc0\x0c" + struct.pack("!HHIH", _SOA, _IN, soa.ttl, len(soa.rdata))
        return header + question + answer + soa.rdata

    def _send(self, target: HostPort) -> None:
        pending = self._pending.get(target)
        if pending is None:
            return
        message = self._message(pending)
        if self.key is not None:
            signed = sign(message, self.key, self.reactor.seconds())
            message, pending.mac = signed.wire, signed.mac
        pending.sent += 1
        try:
            self._port(target).write(message, (target.host, target.port))
        except Exception as exc:
            self.log.warn(
                "cannot send NOTIFY of {zone} to {target}: {why}",
                zone=self.zone,
                target=str(target),
                why=exc,
            )
        delay = backoff_delay(pending.sent, FIRST_RETRY, LONGEST_RETRY)
        pending.timer = self.reactor.callLater(delay, self._send, target)

    def _received(self, datagram: bytes, sender: tuple[str, int]) -> None:
        target = next(
            (t for t in self._pending if (t.host, t.port) == sender),
            None,
        )
        if target is None or len(datagram) < 12:
            return
        pending = self._pending[target]
        ident, flags = struct.unpack_from("!HH", datagram)
        if ident != pending.ident or not flags & _QR or (flags >> 11) & 0xF != _OPCODE_NOTIFY:
            return
        if self.key is not None:
            try:
                verify(
                    datagram,
                    {self.key.name: self.key},
                    self.reactor.seconds(),
                    request_mac=pending.mac,
                )
            except TsigError as problem:
                self._complain(target, pending, f"its TSIG does not verify: {problem}")
                return
        rcode = flags & 0xF
        if rcode != 0:
            self._complain(target, pending, f"it answered RCODE {rcode}")
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        del self._pending[target]
        self.acknowledged += 1
        self.log.info(
            "NOTIFY of {zone} serial {serial} acknowledged by {target}",
            zone=self.zone,
            serial=pending.serial,
            target=str(target),
        )

    def _complain(self, target: HostPort, pending: _Pending, why: str) -> None:
        if not pending.complained:
            pending.complained = True
            self.log.warn(
                "NOTIFY of {zone} serial {serial} to {target} not acknowledged: {why};"
                " sending it again",
                zone=self.zone,
                serial=pending.serial,
                target=str(target),
                why=why,
            )
