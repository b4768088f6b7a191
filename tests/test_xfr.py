"""Tests for misp_dns.intel.xfr: the AXFR/IXFR client over an in-memory TCP connection.

The primary's responses are built with dnspython, an independent encoder; the client's query
is read back with dnspython too.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import pytest
from conftest import failure_of, no_result, result_of
from twisted.internet.testing import MemoryReactorClock, StringTransport

from misp_dns.intel.xfr import (
    AXFR,
    IXFR,
    Delta,
    Deltas,
    FullZone,
    TransferError,
    UpToDate,
    apply_deltas,
    transfer,
)
from misp_dns.intel.zonedata import CNAME, Record, ZoneDataError, name_to_wire, read_master
from misp_dns.tsig import TsigKey

ZONE = "rpz.test"
SECRET = b"0123456789abcdef0123456789abcdef"


def soa_text(serial: int) -> str:
    return f"ns.rpz.test. hostmaster.rpz.test. {serial} 3600 600 86400 60"


def rrset(owner: str, rtype: str, data: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(owner, 300, "IN", rtype, data)


class Primary:
    """One transfer driven by hand: the client's query, and framed responses fed to it."""

    def __init__(self, qtype: int = AXFR, soa: Record | None = None, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(time.time())  # TSIG times are checked against the clock
        self.done = transfer(self.reactor, "192.0.2.1", 53, ZONE, qtype=qtype, soa=soa, **kwargs)
        factory = self.reactor.tcpClients[0][2]
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        sent = self.transport.value()
        (length,) = struct.unpack_from("!H", sent)
        self.query_wire = sent[2 : 2 + length]
        self.keyring: Any = None

    def query(self) -> dns.message.Message:
        return dns.message.from_wire(self.query_wire, keyring=self.keyring)

    def respond(self, *sets: dns.rrset.RRset, rcode: int = 0, **kwargs: Any) -> None:
        response = dns.message.make_response(self.query())
        response.set_rcode(rcode)
        for each in sets:
            response.answer.append(each)
        self.send(response.to_wire(**kwargs))

    def send(self, wire: bytes) -> None:
        self.protocol.dataReceived(struct.pack("!H", len(wire)) + wire)


def zone_records(text: str) -> list[Record]:
    return read_master(text, ZONE)


BASE = f"""$TTL 300
@ SOA {soa_text(1)}
  NS ns.rpz.test.
a.example CNAME .
b.example CNAME .
"""


def test_axfr_query_and_full_zone() -> None:
    """An AXFR asks for the zone and fires with every record between the two SOAs."""
    primary = Primary()
    query = primary.query()
    assert query.question[0].rdtype == dns.rdatatype.AXFR
    assert query.question[0].name.to_text() == "rpz.test."
    primary.respond(
        rrset("rpz.test.", "SOA", soa_text(1)), rrset("a.example.rpz.test.", "CNAME", ".")
    )
    no_result(primary.done)
    primary.respond(
        rrset("b.example.rpz.test.", "CNAME", "."), rrset("rpz.test.", "SOA", soa_text(1))
    )
    result = result_of(primary.done)
    assert isinstance(result, FullZone)
    assert result.serial == 1
    assert {r.owner for r in result.records} == {
        "rpz.test",
        "a.example.rpz.test",
        "b.example.rpz.test",
    }
    assert primary.transport.disconnecting


def test_ixfr_query_carries_our_soa_and_reads_deltas() -> None:
    """An IXFR sends our SOA in the authority section; the deltas come back in order."""
    current = zone_records(BASE)
    soa = next(r for r in current if r.owner == ZONE and r.type == 6)
    primary = Primary(IXFR, soa)
    query = primary.query()
    assert query.question[0].rdtype == dns.rdatatype.IXFR
    assert query.authority[0][0].serial == 1
    primary.respond(
        rrset("rpz.test.", "SOA", soa_text(3)),
        rrset("rpz.test.", "SOA", soa_text(1)),
        rrset("a.example.rpz.test.", "CNAME", "."),
        rrset("rpz.test.", "SOA", soa_text(2)),
        rrset("c.example.rpz.test.", "CNAME", "."),
        rrset("rpz.test.", "SOA", soa_text(2)),
        rrset("rpz.test.", "SOA", soa_text(3)),
        rrset("d.example.rpz.test.", "CNAME", "*."),
        rrset("rpz.test.", "SOA", soa_text(3)),
    )
    result = result_of(primary.done)
    assert isinstance(result, Deltas)
    assert [(d.old_serial, d.new_serial) for d in result.changes] == [(1, 2), (2, 3)]
    after = apply_deltas(current, 1, result.changes)
    owners = {r.owner for r in after if r.type == CNAME}
    assert owners == {"b.example.rpz.test", "c.example.rpz.test", "d.example.rpz.test"}
    serials = [r for r in after if r.type == 6]
    assert len(serials) == 1 and serials[0].rdata.endswith(
        struct.pack("!IIIII", 3, 3600, 600, 86400, 60)
    )


def test_ixfr_answered_with_the_soa_alone_is_up_to_date() -> None:
    """A primary with nothing newer answers an IXFR with its SOA alone."""
    soa = next(r for r in zone_records(BASE) if r.type == 6)
    primary = Primary(IXFR, soa)
    primary.respond(rrset("rpz.test.", "SOA", soa_text(1)))
    assert result_of(primary.done) == UpToDate(1)


def test_ixfr_answered_in_full_is_a_full_zone() -> None:
    """A primary without the history answers an IXFR like an AXFR (RFC 1995 section 4)."""
    soa = next(r for r in zone_records(BASE) if r.type == 6)
    primary = Primary(IXFR, soa)
    primary.respond(
        rrset("rpz.test.", "SOA", soa_text(9)),
        rrset("z.example.rpz.test.", "CNAME", "."),
        rrset("rpz.test.", "SOA", soa_text(9)),
    )
    result = result_of(primary.done)
    assert isinstance(result, FullZone) and result.serial == 9


def test_refused_transfer_fails_with_the_rcode() -> None:
    """REFUSED (a transfer ACL, an unknown key) is a failure that names it."""
    primary = Primary()
    primary.respond(rcode=dns.rcode.REFUSED)
    assert "REFUSED" in str(failure_of(primary.done, TransferError))


def test_connection_lost_mid_transfer_gives_nothing() -> None:
    """A transfer cut before its closing SOA fails: the records so far are not used."""
    primary = Primary()
    primary.respond(
        rrset("rpz.test.", "SOA", soa_text(1)), rrset("a.example.rpz.test.", "CNAME", ".")
    )
    primary.protocol.connectionLost(None)
    assert "before the end" in str(failure_of(primary.done, TransferError))


def test_malformed_response_fails() -> None:
    """Garbage in a response frame fails the transfer."""
    primary = Primary()
    primary.send(primary.query_wire[:2] + b"\x84\x00\x00\x01\x00\x05\x00\x00\x00\x00\x03rpz")
    assert "malformed" in str(failure_of(primary.done, TransferError))


def test_response_to_another_query_fails() -> None:
    """A response with another ID is not an answer to our query."""
    primary = Primary()
    response = dns.message.make_response(primary.query())
    response.id ^= 1
    response.answer.append(rrset("rpz.test.", "SOA", soa_text(1)))
    primary.send(response.to_wire())
    assert "does not answer" in str(failure_of(primary.done, TransferError))


def test_oversize_transfer_fails() -> None:
    """More records than `max_records` (or bytes than `max_bytes`) fail the transfer."""
    primary = Primary(max_records=3)
    primary.respond(
        rrset("rpz.test.", "SOA", soa_text(1)),
        *(rrset(f"n{i}.rpz.test.", "CNAME", ".") for i in range(5)),
    )
    assert "more than 3 records" in str(failure_of(primary.done, TransferError))
    primary = Primary(max_bytes=100)
    primary.respond(
        rrset("rpz.test.", "SOA", soa_text(1)),
        *(rrset(f"n{i}.rpz.test.", "CNAME", ".") for i in range(5)),
    )
    assert "exceeds 100 bytes" in str(failure_of(primary.done, TransferError))


def test_transfer_times_out() -> None:
    """A primary that never finishes fails the transfer after `timeout` seconds."""
    primary = Primary(timeout=30)
    primary.reactor.advance(30)
    assert "within 30 s" in str(failure_of(primary.done, TransferError))


def test_signed_transfer_verifies_with_dnspython_signing() -> None:
    """With a key the query is signed, and a response signed by dnspython verifies."""
    key = TsigKey("fleet", "hmac-sha256", SECRET)
    primary = Primary(key=key)
    primary.keyring = dns.tsigkeyring.from_text(
        {"fleet": (dns.tsig.HMAC_SHA256, base64.b64encode(SECRET).decode())}
    )
    query = primary.query()
    assert query.had_tsig
    response = dns.message.make_response(query)
    response.answer.append(rrset("rpz.test.", "SOA", soa_text(1)))
    response.answer.append(rrset("rpz.test.", "SOA", soa_text(1)))
    primary.send(response.to_wire())
    assert isinstance(result_of(primary.done), FullZone)


def test_bad_tsig_fails_the_transfer() -> None:
    """A response signed with another secret, or not signed at all, fails the transfer."""
    key = TsigKey("fleet", "hmac-sha256", SECRET)
    primary = Primary(key=key)
    primary.keyring = dns.tsigkeyring.from_text(
        {"fleet": (dns.tsig.HMAC_SHA256, base64.b64encode(SECRET).decode())}
    )
    query = primary.query()
    response = dns.message.make_response(query)
    response.answer.append(rrset("rpz.test.", "SOA", soa_text(1)))
    response.answer.append(rrset("rpz.test.", "SOA", soa_text(1)))
    other = dns.tsigkeyring.from_text({"fleet": (dns.tsig.HMAC_SHA256, "b3RoZXIgc2VjcmV0")})
    response.use_tsig(other, keyname="fleet")
    primary.send(response.to_wire())
    assert "TSIG" in str(failure_of(primary.done, TransferError))
    unsigned = Primary(key=key)
    plain = dns.message.Message(id=struct.unpack_from("!H", unsigned.query_wire)[0])
    plain.flags = dns.flags.QR | dns.flags.AA
    plain.question = list(query.question)
    plain.answer.append(rrset("rpz.test.", "SOA", soa_text(1)))
    plain.answer.append(rrset("rpz.test.", "SOA", soa_text(1)))
    unsigned.send(plain.to_wire())
    assert "TSIG" in str(failure_of(unsigned.done, TransferError))


def test_deltas_that_do_not_apply_are_refused() -> None:
    """A delta from another serial, or removing a record the zone lacks, does not apply."""
    current = zone_records(BASE)
    soa2 = Record(
        ZONE, 6, 300, name_to_wire("ns.rpz.test") + name_to_wire("h.rpz.test") + bytes(20)
    )
    missing = Record("zzz.rpz.test", CNAME, 300, b"\x00")
    with pytest.raises(ZoneDataError, match="serial 5 does not apply to serial 1"):
        apply_deltas(current, 1, [Delta(5, 6, (soa2,), (soa2,))])
    with pytest.raises(ZoneDataError, match=r"zzz\.rpz\.test"):
        apply_deltas(current, 1, [Delta(1, 2, (soa2, missing), (soa2,))])
