"""The RPZ zone's content: which triggers the policy chain's snapshots become.

Records are read back through dnspython (`dns.rdata.from_wire`), so what is pinned is what a
zone consumer sees: `name CNAME .` and `*.name CNAME .` for a domain, the exact name for a
hostname, rpz-ip triggers for networks, rpz-passthru. for allowlists, and the chain's
first-decision-wins order kept in a zone where exact names beat wildcards.
"""

from __future__ import annotations

import ipaddress

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.indicator import BlockEntry, IpEntry
from misp_dns.primary.zone import (
    NODATA,
    NXDOMAIN,
    PASSTHRU,
    Feed,
    Rule,
    ZoneContent,
    diff,
    rpz_ip_owner,
)

ZONE = "rpz.misp-dns.example"
BLOCK = Rule(NXDOMAIN, 30)


def domains(*names: str, hostnames: tuple[str, ...] = ()) -> DomainSet:
    entries = [BlockEntry(n, subdomains=True) for n in names]
    entries += [BlockEntry(n, subdomains=False) for n in hostnames]
    return DomainSet.build(entries)


def as_text(content: ZoneContent) -> set[str]:
    """Every record as `owner TTL TYPE rdata`, rdata as dnspython reads it."""
    lines = set()
    for record in content.records():
        rdtype = dns.rdatatype.RdataType(record.rtype)
        rdata = dns.rdata.from_wire(dns.rdataclass.IN, rdtype, record.rdata, 0, len(record.rdata))
        lines.add(f"{record.owner} {record.ttl} {rdtype.name} {rdata.to_text()}")
    return lines


def test_domain_blocks_name_and_below_hostname_only_itself() -> None:
    """A domain indicator is the name and its wildcard, CNAME . (NXDOMAIN); a hostname is the
    exact name alone; the TTL is the policy's."""
    content = ZoneContent.build(
        ZONE, [Feed(domains("evil.example", hostnames=("host.example",)), BLOCK)], False
    )
    assert as_text(content) == {
        "evil.example 30 CNAME .",
        "*.evil.example 30 CNAME .",
        "host.example 30 CNAME .",
    }


def test_nodata_and_passthru_targets() -> None:
    """NODATA is CNAME *. and an allowlist's names are CNAME rpz-passthru., name and below."""
    content = ZoneContent.build(
        ZONE,
        [
            Feed(domains("good.example"), Rule(PASSTHRU, 60), traced=False),
            Feed(domains("nodata.example"), Rule(NODATA, 45)),
        ],
        False,
    )
    assert as_text(content) == {
        "good.example 60 CNAME rpz-passthru.",
        "*.good.example 60 CNAME rpz-passthru.",
        "nodata.example 45 CNAME *.",
        "*.nodata.example 45 CNAME *.",
    }


def test_first_policy_wins_as_in_the_chain() -> None:
    """A name an earlier policy covers (an allowlisted parent, a blocked parent) is left out
    of later policies, since misp-dns never lets them decide it; a later domain entry whose
    exact name an earlier hostname holds keeps only its wildcard."""
    allow = Feed(domains("corp.example"), Rule(PASSTHRU, 60), traced=False)
    first = Feed(domains("evil.example", hostnames=("shared.example",)), Rule(NXDOMAIN, 30))
    second = Feed(
        domains("a.corp.example", "x.evil.example", "shared.example", "other.example"),
        Rule(NODATA, 40),
    )
    content = ZoneContent.build(ZONE, [allow, first, second], False)
    assert as_text(content) == {
        "corp.example 60 CNAME rpz-passthru.",
        "*.corp.example 60 CNAME rpz-passthru.",
        "evil.example 30 CNAME .",
        "*.evil.example 30 CNAME .",
        "shared.example 30 CNAME .",
        "*.shared.example 40 CNAME *.",
        "other.example 40 CNAME *.",
        "*.other.example 40 CNAME *.",
    }


def test_rpz_ip_owners() -> None:
    """Networks are written as the draft says: prefix length, then the address reversed;
    IPv6 by 16-bit groups with the longest zero run as zz."""

    def owner(network: str) -> str:
        parsed = ipaddress.ip_network(network)
        return rpz_ip_owner(IpEntry(parsed.version, int(parsed.network_address), parsed.prefixlen))

    assert owner("1.2.3.4/32") == "32.4.3.2.1.rpz-ip"
    assert owner("192.0.2.0/24") == "24.0.2.0.192.rpz-ip"
    assert owner("2001:db8::1/128") == "128.1.zz.db8.2001.rpz-ip"
    assert owner("2001:db8:1:2:3:4:5:6/128") == "128.6.5.4.3.2.1.db8.2001.rpz-ip"
    assert owner("::/0") == "0.zz.rpz-ip"


def test_response_ips_only_when_the_policy_blocks_them() -> None:
    """A policy's networks become rpz-ip triggers only with block_response_ips."""
    names = DomainSet.builder().add_all([IpEntry(4, 0x01020304, 32)]).finish()
    assert as_text(ZoneContent.build(ZONE, [Feed(names, BLOCK, response_ips=True)], False)) == {
        "32.4.3.2.1.rpz-ip 30 CNAME ."
    }
    assert as_text(ZoneContent.build(ZONE, [Feed(names, BLOCK)], False)) == set()


def test_traceability_adds_a_trace_txt_per_indicator() -> None:
    """With traceability, each indicator's MISP event and attribute UUIDs are in a TXT at
    <trigger>.misp-trace (a TXT cannot sit beside the CNAME); without, there is none."""
    names = DomainSet.build(
        [
            BlockEntry(
                "evil.example",
                subdomains=True,
                event_id="12",
                event_uuid="5f1e2d3c-0000-4000-8000-000000000001",
                attribute_uuid="5f1e2d3c-0000-4000-8000-000000000002",
            )
        ]
    )
    traced = as_text(ZoneContent.build(ZONE, [Feed(names, BLOCK)], True))
    assert (
        'evil.example.misp-trace 30 TXT "event_uuid=5f1e2d3c-0000-4000-8000-000000000001"'
        ' "attribute_uuid=5f1e2d3c-0000-4000-8000-000000000002" "event_id=12"'
    ) in traced
    assert len(traced) == 3
    assert len(as_text(ZoneContent.build(ZONE, [Feed(names, BLOCK)], False))) == 2


def test_names_that_would_not_fit_or_read_as_special_are_left_out() -> None:
    """A name too long to sit below the apex, or ending in an RPZ special label, is skipped
    and counted; every owner written is a valid name below the zone."""
    long_name = ".".join(["a" * 60] * 4)  # 243 characters: fine alone, too long below the zone
    content = ZoneContent.build(
        ZONE, [Feed(domains(long_name, "x.rpz-ip", "ok.example"), BLOCK)], False
    )
    assert content.skipped == 2
    assert as_text(content) == {"ok.example 30 CNAME .", "*.ok.example 30 CNAME ."}
    for record in content.records():
        dns.name.from_text(f"{record.owner}.{ZONE}.")


def test_diff_holds_only_the_change() -> None:
    """Between two contents, the delta deletes what left and adds what came, and a changed
    action replaces the records it changed."""
    old = ZoneContent.build(
        ZONE, [Feed(domains("a.example", "b.example", "c.example"), BLOCK)], False
    )
    new = ZoneContent.build(
        ZONE,
        [
            Feed(domains("a.example", hostnames=("b.example",)), BLOCK),
            Feed(domains("d.example"), Rule(NODATA, 30)),
        ],
        False,
    )
    deleted, added = diff(old, new)
    assert {(r.owner, r.rdata) for r in deleted} == {
        ("*.b.example", NXDOMAIN),
        ("c.example", NXDOMAIN),
        ("*.c.example", NXDOMAIN),
    }
    assert {(r.owner, r.rdata) for r in added} == {("d.example", NODATA), ("*.d.example", NODATA)}
    assert diff(new, new) == ([], [])


def test_digest_follows_inputs() -> None:
    """The digest changes with a snapshot, a rule or traceability, not otherwise."""
    feed = Feed(domains("a.example"), BLOCK)
    same = ZoneContent.digest_of(ZONE, [Feed(domains("a.example"), BLOCK)], False)
    assert ZoneContent.digest_of(ZONE, [feed], False) == same
    assert ZoneContent.digest_of(ZONE, [feed], True) != same
    assert ZoneContent.digest_of(ZONE, [Feed(domains("b.example"), BLOCK)], False) != same
    assert (
        ZoneContent.digest_of(ZONE, [Feed(domains("a.example"), Rule(NODATA, 30))], False) != same
    )
