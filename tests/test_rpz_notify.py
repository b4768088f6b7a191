"""NOTIFY (RFC 1996) to the RPZ secondaries: what goes out, and retries until acknowledged.

The NOTIFY messages are read by dnspython, and the acknowledgements are dnspython's own
responses to them (signed with the key when the NOTIFY was), delivered to the notifier's
socket; time is a `Clock`.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import attrs
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsig
from twisted.internet.task import Clock

from misp_dns.primary.notify import Notifier
from misp_dns.primary.transfer import Apex
from misp_dns.tsig import TsigKey
from misp_dns.values import HostPort

ZONE = "rpz.misp-dns.example"
APEX = Apex("ns.misp-dns.example", "hostadmin.ns.misp-dns.example")
SECONDARY = HostPort("192.0.2.53", 53)
SECRET = b"another 32-byte shared secret!!!"
KEY = TsigKey("fleet", "hmac-sha256", SECRET)
RING = dns.tsig.Key("fleet", base64.b64encode(SECRET).decode(), dns.tsig.HMAC_SHA256)


@attrs.define
class FakeUdpPort:
    """What `listenUDP` returns: writes are recorded with the interface they left from."""

    interface: str
    sent: list[tuple[str, bytes, tuple[str, int]]]
    listening: bool = True

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((self.interface, data, addr))

    def stopListening(self) -> None:
        self.listening = False


class UdpClock(Clock):
    """A Clock that also hands out fake UDP ports."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, bytes, tuple[str, int]]] = []
        self.protocols: list[Any] = []
        self.ports: list[FakeUdpPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", **_: Any) -> FakeUdpPort:
        fake = FakeUdpPort(interface, self.sent)
        protocol.makeConnection(fake)
        self.protocols.append(protocol)
        self.ports.append(fake)
        return fake


def notifier(clock: UdpClock, key: TsigKey | None = None) -> Notifier:
    return Notifier(
        ZONE,
        [SECONDARY],
        APEX.soa,
        key,
        [HostPort("127.0.0.5", 53)],
        clock,
        choose_id=lambda: 4242,
    )


def acknowledge(clock: UdpClock, wire: bytes, sender: tuple[str, int], keyring: Any = None) -> None:
    """Deliver dnspython's response to the NOTIFY `wire` as if `sender` sent it."""
    notify = dns.message.from_wire(wire, keyring=keyring)
    response = dns.message.make_response(notify)
    clock.protocols[0].datagramReceived(response.to_wire(), sender)


def test_notify_names_the_zone_and_serial_from_the_listen_address() -> None:
    """A NOTIFY is opcode NOTIFY with AA, the zone's SOA question and the new SOA, sent to
    the secondary from the [server] listen address."""
    clock = UdpClock()
    notifier(clock).notify(7)
    [(interface, wire, address)] = clock.sent
    message = dns.message.from_wire(wire)
    assert (interface, address) == ("127.0.0.5", ("192.0.2.53", 53))
    assert message.opcode() == dns.opcode.NOTIFY
    assert message.flags & dns.flags.AA
    assert message.question[0].to_text() == f"{ZONE}. IN SOA"
    assert message.answer[0][0].serial == 7


def test_retried_with_backoff_until_acknowledged() -> None:
    """Unanswered, the NOTIFY goes again after 1, 2 and 4 s; once the secondary answers,
    no more go; an answer from elsewhere or with another ID does not count."""
    clock = UdpClock()
    sender = notifier(clock)
    sender.notify(7)
    clock.advance(1)
    clock.advance(2)
    clock.advance(4)
    assert len(clock.sent) == 4
    wire = clock.sent[-1][1]
    acknowledge(clock, wire, ("192.0.2.99", 53))
    clock.advance(8)
    assert len(clock.sent) == 5
    acknowledge(clock, clock.sent[-1][1], ("192.0.2.53", 53))
    assert sender.acknowledged == 1
    clock.advance(600)
    assert len(clock.sent) == 5


def test_new_serial_replaces_the_pending_one() -> None:
    """A newer serial while the last is unacknowledged: only the newer one is retried."""
    clock = UdpClock()
    sender = notifier(clock)
    sender.notify(7)
    sender.notify(8)
    clock.advance(1)
    serials = [dns.message.from_wire(w).answer[0][0].serial for _, w, _ in clock.sent]
    assert serials == [7, 8, 8]


def test_signed_notify_and_acknowledgement() -> None:
    """With a key, the NOTIFY is signed (dnspython verifies it), and only an answer signed
    over its MAC counts: an unsigned one is ignored and the NOTIFY retried."""
    clock = UdpClock()
    clock.advance(time.time())  # dnspython signs and checks with the real time
    sender = notifier(clock, KEY)
    sender.notify(9)
    wire = clock.sent[0][1]
    assert dns.message.from_wire(wire, keyring=RING).had_tsig
    unsigned = dns.message.make_response(dns.message.from_wire(wire, keyring=False))
    clock.protocols[0].datagramReceived(unsigned.to_wire(), ("192.0.2.53", 53))
    assert sender.acknowledged == 0
    clock.advance(1)
    assert len(clock.sent) == 2
    signed = dns.message.from_wire(clock.sent[-1][1], keyring=RING)
    response = dns.message.make_response(signed)
    clock.protocols[0].datagramReceived(response.to_wire(), ("192.0.2.53", 53))
    assert sender.acknowledged == 1


def test_stop_closes_the_socket_and_the_retries() -> None:
    """Stopping the notifier stops retrying and closes its sockets."""
    clock = UdpClock()
    sender = notifier(clock)
    sender.notify(7)
    sender.stop()
    clock.advance(100)
    assert len(clock.sent) == 1
    assert not clock.ports[0].listening
