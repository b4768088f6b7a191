"""Serving the RPZ zone: SOA, AXFR and IXFR as dnspython receives them, TSIG, the ACL.

dnspython is the secondary here: its `dns.xfr.Inbound` applies the messages `ZoneServer`
streams (checking the SOA framing of AXFR and of IXFR deltas), and its TSIG code verifies
every signed message. The requests are dnspython's own.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.xfr
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.indicator import BlockEntry
from misp_dns.primary.history import Delta, History, Version
from misp_dns.primary.transfer import Apex, ZoneServer
from misp_dns.primary.zone import NXDOMAIN, Feed, Rule, ZoneContent, diff
from misp_dns.tsig import TsigKey
from misp_dns.values import Network

ZONE = "rpz.misp-dns.example"
SECRET = b"a secret the two ends share 32b!"
KEY = TsigKey("fleet", "hmac-sha256", SECRET)
LOOPBACK: tuple[Network, ...] = (Network.__args__[0]("127.0.0.0/8"),)  # type: ignore[attr-defined]


def dnspython_key(name: str = "fleet", secret: bytes = SECRET) -> dns.tsig.Key:
    return dns.tsig.Key(name, base64.b64encode(secret).decode(), dns.tsig.HMAC_SHA256)


def content(*names: str) -> ZoneContent:
    entries = [BlockEntry(n, subdomains=True) for n in names]
    return ZoneContent.build(ZONE, [Feed(DomainSet.build(entries), Rule(NXDOMAIN, 30))], False)


class Primary:
    """A ZoneServer over a zone with versions that tests move forward."""

    def __init__(self, *names: str, keys: bool = False, history: int = 4) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.history = History(history)
        self.version = Version(100, content(*names))
        self.server = ZoneServer(
            ZONE,
            Apex("ns.misp-dns.example", "hostadmin.ns.misp-dns.example"),
            LOOPBACK,
            {"fleet": KEY} if keys else {},
            keys,
            lambda: self.version,
            self.history,
            self.clock,
        )

    def change(self, *names: str) -> None:
        new = Version(self.version.serial + 1, content(*names))
        deleted, added = diff(self.version.content, new.content)
        self.history.add(Delta(self.version.serial, new.serial, deleted, added))
        self.version = new

    def ask(
        self, query: dns.message.Message, client: str = "127.0.0.1", transport: str = "tcp"
    ) -> list[bytes]:
        answer = self.server.respond(query.to_wire(), client, transport)
        assert answer is not None
        return [answer] if isinstance(answer, bytes) else list(answer)


def ixfr_query(serial: int) -> dns.message.Message:
    query = dns.message.make_query(ZONE, "IXFR")
    query.authority.append(dns.rrset.from_text(f"{ZONE}.", 0, "IN", "SOA", f". . {serial} 0 0 0 0"))
    return query


def receive(
    zone: dns.zone.Zone,
    query: dns.message.Message,
    messages: list[bytes],
    serial: int | None = None,
    keyring: dns.tsig.Key | None = None,
) -> None:
    """Apply `messages` to `zone` as dnspython's secondary does; fail unless complete."""
    rdtype = query.question[0].rdtype
    done = False
    with dns.xfr.Inbound(zone, rdtype, serial) as inbound:
        tsig_ctx = None
        for wire in messages:
            message = dns.message.from_wire(
                wire,
                keyring=keyring,
                request_mac=query.mac,
                xfr=True,
                origin=zone.origin,
                tsig_ctx=tsig_ctx,
                multi=True,
                one_rr_per_rrset=rdtype == dns.rdatatype.IXFR,
            )
            tsig_ctx = message.tsig_ctx
            done = inbound.process_message(message)
    assert done


def owners(zone: dns.zone.Zone) -> set[str]:
    return {name.to_text() for name in zone.nodes} - {"@"}


def test_axfr_is_received_whole() -> None:
    """AXFR gives dnspython the zone: SOA and NS at the apex, every trigger."""
    primary = Primary("a.example", "b.example")
    zone = dns.zone.Zone(ZONE)
    query = dns.message.make_query(ZONE, "AXFR")
    receive(zone, query, primary.ask(query))
    assert owners(zone) == {"a.example", "*.a.example", "b.example", "*.b.example"}
    assert zone.get_soa().serial == 100
    assert zone.get_rdataset("@", "NS") is not None


def test_big_axfr_fills_messages_with_compressed_names() -> None:
    """Twenty thousand names go out in full messages of at most 16 KiB (where compression
    pointers reach every earlier name), names compressed: about 21 bytes a record on
    average, where an owner alone would take over 50 uncompressed."""
    names = [f"host{index}.example-number-{index % 97}.com" for index in range(20000)]
    primary = Primary(*names)
    query = dns.message.make_query(ZONE, "AXFR")
    messages = primary.ask(query)
    assert all(len(m) <= 16384 for m in messages)
    assert all(len(m) > 16000 for m in messages[:-1])
    zone = dns.zone.Zone(ZONE)
    receive(zone, query, messages)
    assert len(owners(zone)) == 40000
    assert sum(len(m) for m in messages) < 40000 * 22


def test_signed_axfr_verifies_message_by_message() -> None:
    """With tsig_keys, a signed AXFR is answered with every message signed; dnspython
    verifies the whole stream with the key."""
    names = [f"n{index}.example" for index in range(8000)]
    primary = Primary(*names, keys=True)
    query = dns.message.make_query(ZONE, "AXFR")
    query.use_tsig(dnspython_key())
    messages = primary.ask(query)
    assert len(messages) > 1
    zone = dns.zone.Zone(ZONE)
    receive(zone, query, messages, keyring=dnspython_key())
    assert len(owners(zone)) == 16000
    for wire in messages:
        assert dns.message.from_wire(wire, keyring=False, xfr=True, origin=zone.origin).had_tsig


def test_ixfr_holds_only_the_delta() -> None:
    """After two changes, an IXFR from the first serial carries just the deleted and added
    records between SOAs, and dnspython applying it ends with the current zone."""
    primary = Primary("a.example", "b.example", "c.example")
    zone = dns.zone.Zone(ZONE)
    query = dns.message.make_query(ZONE, "AXFR")
    receive(zone, query, primary.ask(query))
    primary.change("a.example", "b.example", "d.example")
    primary.change("a.example", "d.example")
    query = ixfr_query(100)
    messages = primary.ask(query)
    parsed = dns.message.from_wire(messages[0], xfr=True, origin=zone.origin, one_rr_per_rrset=True)
    records = [(rrset.name.to_text(), rrset.rdtype) for rrset in parsed.answer]
    soa = dns.rdatatype.SOA
    # SOA 102, SOA 100, -c -*.c, SOA 101, +d +*.d, SOA 101, -b -*.b, SOA 102, SOA 102
    assert [t for _, t in records].count(soa) == 6
    assert sorted(n for n, t in records if t != soa) == sorted(
        ["c.example", "*.c.example", "d.example", "*.d.example", "b.example", "*.b.example"]
    )
    receive(zone, query, messages, serial=100)
    assert owners(zone) == {"a.example", "*.a.example", "d.example", "*.d.example"}
    assert zone.get_soa().serial == 102


def test_ixfr_at_current_serial_is_the_soa_alone() -> None:
    """A secondary already at the current serial gets one message with the SOA only."""
    primary = Primary("a.example")
    messages = primary.ask(ixfr_query(100))
    parsed = dns.message.from_wire(messages[0])
    assert len(messages) == 1
    assert [rrset.rdtype for rrset in parsed.answer] == [dns.rdatatype.SOA]


def test_ixfr_past_the_history_gets_the_whole_zone() -> None:
    """A serial older than the kept deltas (or unknown) gets the zone as AXFR would send it
    inside the IXFR answer, which dnspython takes as a full transfer."""
    primary = Primary("a.example", history=1)
    primary.change("b.example")
    primary.change("c.example")
    query = ixfr_query(100)
    zone = dns.zone.Zone(ZONE)
    receive(zone, query, primary.ask(query), serial=100)
    assert owners(zone) == {"c.example", "*.c.example"}


def test_udp_gets_soa_but_no_transfer() -> None:
    """SOA is answered over UDP; IXFR over UDP gets the SOA alone (come back over TCP);
    AXFR over UDP is FORMERR."""
    primary = Primary("a.example")
    soa = dns.message.from_wire(
        primary.ask(dns.message.make_query(ZONE, "SOA"), transport="udp")[0]
    )
    assert soa.rcode() == dns.rcode.NOERROR and soa.answer[0].rdtype == dns.rdatatype.SOA
    ixfr = dns.message.from_wire(primary.ask(ixfr_query(99), transport="udp")[0])
    assert [r.rdtype for r in ixfr.answer] == [dns.rdatatype.SOA]
    axfr = dns.message.from_wire(
        primary.ask(dns.message.make_query(ZONE, "AXFR"), transport="udp")[0]
    )
    assert axfr.rcode() == dns.rcode.FORMERR


def test_other_names_are_not_the_zones() -> None:
    """A query for another name, even below the zone, is left to the resolver (None)."""
    primary = Primary("a.example")
    for name in ("example.com", f"a.example.{ZONE}", "misp-dns.example"):
        data = dns.message.make_query(name, "SOA").to_wire()
        assert primary.server.respond(data, "127.0.0.1", "udp") is None


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The text of every event logged during the test."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_client_outside_the_acl_is_refused_and_logged(logged: list[str]) -> None:
    """A client outside allow_transfer gets REFUSED, and one line names the client and ACL."""
    primary = Primary("a.example")
    messages = primary.ask(dns.message.make_query(ZONE, "AXFR"), client="192.0.2.9")
    assert dns.message.from_wire(messages[0]).rcode() == dns.rcode.REFUSED
    assert primary.server.refused == 1
    assert logged == [
        f"refused AXFR of {ZONE} to 192.0.2.9: not in rpz.allow_transfer"
        " (allow_transfer 127.0.0.0/8; key none)"
    ]


def test_unsigned_request_is_refused_when_keys_are_required() -> None:
    """With tsig_keys, an unsigned AXFR (and SOA) is REFUSED."""
    primary = Primary("a.example", keys=True)
    for qtype in ("AXFR", "SOA"):
        messages = primary.ask(dns.message.make_query(ZONE, qtype))
        assert dns.message.from_wire(messages[0]).rcode() == dns.rcode.REFUSED


def test_wrong_secret_is_badsig_and_unknown_key_badkey(logged: list[str]) -> None:
    """A request signed with the right name and another secret gets NOTAUTH with TSIG
    error BADSIG; with a key the zone does not take, BADKEY; dnspython reads both."""
    primary = Primary("a.example", keys=True)
    query = dns.message.make_query(ZONE, "AXFR")
    query.use_tsig(dnspython_key(secret=b"another secret, same name......."))
    answer = primary.ask(query)[0]
    with pytest.raises(dns.tsig.PeerBadSignature):
        dns.message.from_wire(answer, keyring=dnspython_key(), request_mac=query.mac)
    assert dns.message.from_wire(answer, keyring=False).rcode() == dns.rcode.NOTAUTH
    query = dns.message.make_query(ZONE, "AXFR")
    query.use_tsig(dnspython_key(name="stranger"))
    answer = primary.ask(query)[0]
    with pytest.raises(dns.tsig.PeerBadKey):
        dns.message.from_wire(answer, keyring=dnspython_key("stranger"), request_mac=query.mac)
    assert primary.server.refused == 2
    assert [line.split(": ", 1)[1].split(" (")[0] for line in logged] == [
        "TSIG BADSIG: signature does not verify with key 'fleet'",
        "TSIG BADKEY: unknown key 'stranger'",
    ]
    assert all(line.endswith("key fleet)") or line.endswith("key stranger)") for line in logged)
    assert not any(base64.b64encode(SECRET).decode() in line for line in logged)


def test_signed_soa_answer_verifies() -> None:
    """A signed SOA query is answered signed over its MAC."""
    primary = Primary("a.example", keys=True)
    query = dns.message.make_query(ZONE, "SOA")
    query.use_tsig(dnspython_key())
    answer = dns.message.from_wire(
        primary.ask(query, transport="udp")[0], keyring=dnspython_key(), request_mac=query.mac
    )
    assert answer.had_tsig and answer.answer[0][0].serial == 100


_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20).filter(
    lambda label: not label.startswith("-") and not label.endswith("-")
)
_NAME = st.lists(_LABEL, min_size=2, max_size=5).map(".".join)


@given(
    domains=st.lists(_NAME, max_size=300, unique=True),
    hostnames=st.lists(_NAME, max_size=50, unique=True),
)
@settings(max_examples=40)
def test_any_zone_transfers_exactly(domains: list[str], hostnames: list[str]) -> None:
    """Whatever the names (shared suffixes, long labels, names below others), the AXFR that
    dnspython receives holds exactly the zone's records: compression never misplaces a name."""
    entries = [BlockEntry(n, subdomains=True) for n in domains]
    entries += [BlockEntry(n, subdomains=False) for n in hostnames]
    content = ZoneContent.build(ZONE, [Feed(DomainSet.build(entries), Rule(NXDOMAIN, 30))], False)
    primary = Primary()
    primary.version = Version(7, content)
    zone = dns.zone.Zone(ZONE)
    query = dns.message.make_query(ZONE, "AXFR")
    receive(zone, query, primary.ask(query))
    assert owners(zone) == {record.owner for record in content.records()}


def test_clock_too_far_off_is_badtime_signed() -> None:
    """A request signed more than the fudge away from the primary's clock gets NOTAUTH with
    TSIG error BADTIME, signed over its MAC and carrying the primary's time (RFC 8945 5.2.3),
    which dnspython reports as the peer's BADTIME."""
    primary = Primary("a.example", keys=True)
    primary.clock.advance(3600)
    query = dns.message.make_query(ZONE, "SOA")
    query.use_tsig(dnspython_key())
    answer = primary.ask(query, transport="udp")[0]
    with pytest.raises(dns.tsig.PeerBadTime):
        dns.message.from_wire(answer, keyring=dnspython_key(), request_mac=query.mac)
    parsed = dns.message.from_wire(answer, keyring=False)
    assert parsed.rcode() == dns.rcode.NOTAUTH
    assert int.from_bytes(parsed.tsig[0].other, "big") == int(primary.clock.seconds())
