"""Tests for misp_dns.intel.zonedata and misp_dns.intel.rpz: RPZ zones read as BIND reads them.

The zone files are BIND 9's own RPZ system-test zones (SHARED_DATA/rpz); dnspython reads the
same files as an independent strict parser, so the records must agree with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

import dns.message
import dns.name
import dns.rrset
import dns.zone
import pytest
from conftest import SHARED_DATA
from hypothesis import given
from hypothesis import strategies as st

from misp_dns.intel.rpz import RpzAction, RpzZone
from misp_dns.intel.zonedata import (
    AAAA,
    CNAME,
    SOA,
    Record,
    ZoneDataError,
    name_to_wire,
    read_master,
    read_message,
    wire_to_name,
)

RPZ_DATA = SHARED_DATA / "rpz"


def bind_file(name: str) -> str:
    path = RPZ_DATA / name
    if not path.exists():
        pytest.fail(f"missing test data {path}")
    return path.read_text()


def zone_of(name: str, origin: str) -> RpzZone:
    return RpzZone.from_records(origin, read_master(bind_file(name), origin))


def dnspython_records(text: str, origin: str) -> set[tuple[str, int, int, bytes]]:
    """The zone's records as dnspython reads them: (owner, type, TTL, canonical RDATA)."""
    zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
    found = set()
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            for rdata in rdataset:
                owner = name.to_text(omit_final_dot=True).lower()
                wire = rdata.to_digestable(dns.name.root)
                found.add((owner, rdataset.rdtype, rdataset.ttl, wire))
    return found


@pytest.mark.parametrize(
    ("file", "origin"),
    [
        ("rpz__ns2__tld2.db", "tld2"),
        ("rpz__ns3__base.db", "bl"),
        ("rpz__ns4__tld4.db", "tld4"),
        ("rpz__ns6__bl.tld2s.db.in", "bl.tld2s"),
        ("rpzextra__ns3__fourth-rpz-extra.local.db", "fourth-rpz-extra.local"),
        ("rpzrecurse__ns2__db.wildcard1", "wildcard1"),
        ("rpzrecurse__ns2__db.passthru", "passthru.zone"),
        ("hagezi-spam-tlds-rpz.txt", "rpz.hagezi"),
    ],
)
def test_zone_files_read_as_dnspython_reads_them(file: str, origin: str) -> None:
    """Every record of a real zone file (owner, type, TTL, RDATA) is what dnspython reads."""
    text = bind_file(file)
    ours = {(r.owner, r.type, r.ttl, r.rdata) for r in read_master(text, origin)}
    assert ours == dnspython_records(text, origin)


def test_bind_qname_triggers_and_actions() -> None:
    """BIND's wildcard1 zone: exact and `*.` triggers with NXDOMAIN, the apex ignored."""
    zone = zone_of("rpzrecurse__ns2__db.wildcard1", "wildcard1")
    assert zone.serial == 1996072700
    assert (zone.refresh, zone.retry, zone.expire, zone.minimum) == (3600, 1800, 86400, 60)
    exact = zone.match_name("test1.example.net")
    below = zone.match_name("a.b.test1.example.net")
    assert exact is not None and exact.rule.action is RpzAction.NXDOMAIN
    assert exact.rule.trigger == "test1.example.net"
    assert below is not None and below.rule.trigger == "*.test1.example.net"
    assert zone.match_name("example.net") is None
    assert zone.match_name("wildcard1") is None  # the apex is no trigger


def test_exact_trigger_wins_over_wildcard_and_longer_wildcard_over_shorter() -> None:
    """RPZ precedence: the exact name first, then the most specific wildcard."""
    text = """$TTL 60
@ SOA ns hostmaster 1 3600 600 86400 60
  NS ns
*.example.com CNAME .
*.sub.example.com CNAME *.
www.sub.example.com CNAME rpz-passthru.
"""
    zone = RpzZone.from_records("rpz", read_master(text, "rpz"))
    www = zone.match_name("www.sub.example.com")
    deep = zone.match_name("a.www.sub.example.com")
    other = zone.match_name("x.example.com")
    assert www is not None and www.rule.action is RpzAction.PASSTHRU
    assert deep is not None and deep.rule.action is RpzAction.NODATA
    assert other is not None and other.rule.action is RpzAction.NXDOMAIN
    assert zone.match_name("example.com") is None


def test_bind_passthru_and_drop_and_local_data() -> None:
    """PASSTHRU, DROP, a walled-garden CNAME and A/AAAA local data read as their actions."""
    text = """$TTL 300
@ SOA ns.rpz. hostmaster.rpz. ( 5 3600 600 86400 60 )
  NS ns.rpz.
pass.example CNAME rpz-passthru.
drop.example CNAME rpz-drop.
garden.example CNAME walled.garden.test.
wild-garden.example CNAME *.garden.test.
local.example A 192.0.2.99
local.example AAAA 2001:db8::99
"""
    zone = RpzZone.from_records("rpz", read_master(text, "rpz"))
    actions = {name: rule.action for name, rule in zone.exact.items()}
    assert actions == {
        "pass.example": RpzAction.PASSTHRU,
        "drop.example": RpzAction.DROP,
        "garden.example": RpzAction.LOCAL_DATA,
        "wild-garden.example": RpzAction.LOCAL_DATA,
        "local.example": RpzAction.LOCAL_DATA,
    }
    garden = zone.exact["garden.example"].local_data
    assert garden == ((CNAME, 300, name_to_wire("walled.garden.test")),)
    local = zone.exact["local.example"].local_data
    assert (AAAA, 300, ipaddress.ip_address("2001:db8::99").packed) in local
    assert len(local) == 2


def test_bind_rpz_ip_triggers_match_addresses_longest_prefix_first() -> None:
    """BIND's bl.tld2 zone: `32.1.7.168.192.rpz-ip` is 192.168.7.1/32; IPv6 `zz` triggers too."""
    zone = zone_of("rpz__ns2__bl.tld2.db.in", "bl.tld2")
    hit = zone.match_address(ipaddress.ip_address("192.168.7.1").packed)
    assert hit is not None and hit.rule.action is RpzAction.NXDOMAIN and hit.trigger == "ip"
    assert zone.match_address(ipaddress.ip_address("192.168.7.9").packed) is None
    text = """$TTL 60
@ SOA ns hostmaster 1 3600 600 86400 60
  NS ns
24.0.2.0.192.rpz-ip CNAME .
32.7.2.0.192.rpz-ip CNAME rpz-passthru.
48.zz.1.db8.2001.rpz-ip CNAME *.
"""
    zone = RpzZone.from_records("rpz", read_master(text, "rpz"))
    host = zone.match_address(ipaddress.ip_address("192.0.2.7").packed)
    net = zone.match_address(ipaddress.ip_address("192.0.2.8").packed)
    six = zone.match_address(ipaddress.ip_address("2001:db8:1::5").packed)
    assert host is not None and host.rule.action is RpzAction.PASSTHRU
    assert net is not None and net.rule.action is RpzAction.NXDOMAIN
    assert six is not None and six.rule.action is RpzAction.NODATA


def test_triggers_misp_dns_does_not_apply_are_counted() -> None:
    """rpz-client-ip, rpz-nsip and rpz-nsdname triggers are counted, not applied."""
    client = zone_of("rpzrecurse__ns2__db.clientip1", "clientip1")
    ns = zone_of("rpzrecurse__ns3__policy.db", "policy")
    assert client.skipped == {"rpz-client-ip": 2}
    assert ns.skipped == {"rpz-nsip": 1, "rpz-nsdname": 1}
    assert ns.rule_count == 0


def test_out_of_zone_data_is_ignored_as_bind_does() -> None:
    """BIND's outofzone zone: `com.` is outside the zone, ignored; the rest applies."""
    zone = zone_of("rpz__ns3__outofzone.db.in", "outofzone")
    assert zone.skipped == {"out of zone": 1}
    assert zone.match_name("never-queried.example") is not None
    assert zone.match_name("com") is None


def test_mixed_case_triggers_match_lower_case_queries() -> None:
    """BIND's mixed-case zone: triggers are matched case-insensitively."""
    zone = zone_of("rpz__ns3__mixed-case-rpz-2.db.in", "mixed-case-rpz")
    assert zone.rule_count == 2
    assert all(name == name.lower() for name in zone.exact)


@pytest.mark.parametrize(
    ("file", "why"),
    [
        ("rpz__ns3__broken.db.in", "line 7"),
        ("rpz__ns3__include-rpz.db.in", "$INCLUDE"),
        ("rpz__ns3__slow-rpz.db.in", "$GENERATE"),
    ],
)
def test_unreadable_zone_files_are_refused_with_the_line(file: str, why: str) -> None:
    """A zone file misp-dns cannot read whole is refused with a reason, never half read."""
    with pytest.raises(ZoneDataError, match=why.replace("$", r"\$")):
        read_master(bind_file(file), "rpz")


def test_a_zone_without_its_soa_is_refused() -> None:
    """Records without the apex SOA are no zone."""
    records = [Record("a.rpz", CNAME, 60, b"\x00")]
    with pytest.raises(ZoneDataError, match="SOA"):
        RpzZone.from_records("rpz", records)


def test_cname_and_other_data_at_one_trigger_is_refused() -> None:
    """A CNAME beside other data is no valid zone (RFC 1034 section 3.6.2)."""
    text = "$TTL 60\n@ SOA ns hm 1 1 1 1 1\n NS ns\nx CNAME .\nx A 192.0.2.1\n"
    with pytest.raises(ZoneDataError, match="CNAME and other data"):
        RpzZone.from_records("rpz", read_master(text, "rpz"))


def test_message_records_are_decompressed_and_canonical() -> None:
    """Records of a DNS message come with RDATA names uncompressed and lower-cased."""
    message = dns.message.make_response(dns.message.make_query("rpz.", "AXFR"))
    message.answer.append(dns.rrset.from_text("Evil.RPZ.", 60, "IN", "CNAME", "Walled.Garden.RPZ."))
    message.answer.append(
        dns.rrset.from_text("rpz.", 60, "IN", "SOA", "ns.rpz. host.RPZ. 7 1 2 3 4")
    )
    read = read_message(message.to_wire())
    cname, soa = read.answers
    assert cname == Record("evil.rpz", CNAME, 60, name_to_wire("walled.garden.rpz"))
    assert soa.type == SOA and soa.rdata.startswith(name_to_wire("ns.rpz"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda wire: wire[:-3],  # cut inside the last record
        lambda wire: wire[:12] + b"\xc0\xff" + wire[14:],  # a pointer forwards
    ],
)
def test_malformed_messages_are_refused(damage: object) -> None:
    """A truncated message or a forward compression pointer is an error, not data."""
    message = dns.message.make_response(dns.message.make_query("rpz.", "AXFR"))
    message.answer.append(dns.rrset.from_text("a.rpz.", 60, "IN", "CNAME", "."))
    with pytest.raises(ZoneDataError):
        read_message(damage(message.to_wire()))  # type: ignore[operator]


def test_data_folder_exists() -> None:
    """The BIND zones are where the tests read them (a missing folder fails, never skips)."""
    assert isinstance(RPZ_DATA, Path) and (RPZ_DATA / "rpz__README").exists()


@given(st.binary(max_size=600))
def test_any_bytes_read_as_a_message_or_a_zone_data_error(data: bytes) -> None:
    """Whatever a primary sends, reading it gives records or ZoneDataError, nothing else."""
    with contextlib.suppress(ZoneDataError):
        read_message(data)


@given(
    st.lists(
        st.text(alphabet='abcxyz019-_*.\\" ;()', min_size=1, max_size=20), min_size=1, max_size=6
    )
)
def test_any_zone_text_reads_or_is_a_zone_data_error(lines: list[str]) -> None:
    """A zone file of any content is read or refused with ZoneDataError, nothing else."""
    text = "$TTL 60\n@ SOA ns hm 1 1 1 1 1\n" + "\n".join(lines) + "\n"
    with contextlib.suppress(ZoneDataError):
        RpzZone.from_records("rpz", read_master(text, "rpz"))


@given(st.lists(st.text(alphabet="abcdefghij0123456789-*", min_size=1, max_size=63), max_size=4))
def test_names_round_trip_through_the_wire_form(labels: list[str]) -> None:
    """A name's wire form reads back as the same lower-case name."""
    name = ".".join(labels)
    assert wire_to_name(name_to_wire(name or "."), 0)[0] == name.lower()


def test_records_of_the_wrong_length_are_refused() -> None:
    """An A record of five octets, or a CNAME with bytes after its name, is malformed."""
    message = dns.message.make_response(dns.message.make_query("rpz.", "AXFR"))
    message.answer.append(dns.rrset.from_text("a.rpz.", 60, "IN", "A", "192.0.2.1"))
    wire = message.to_wire()
    longer = wire[:-6] + b"\x00\x05" + wire[-4:] + b"\x00"  # RDLENGTH 5, one more octet
    with pytest.raises(ZoneDataError, match="5 octets"):
        read_message(longer)
    cname = dns.message.make_response(dns.message.make_query("rpz.", "AXFR"))
    cname.answer.append(dns.rrset.from_text("a.rpz.", 60, "IN", "CNAME", "."))
    wire = cname.to_wire()
    padded = wire[:-3] + b"\x00\x02\x00\x00"  # RDLENGTH 2: the root name and a stray octet
    with pytest.raises(ZoneDataError, match="longer than its name"):
        read_message(padded)
