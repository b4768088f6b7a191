"""Tests for misp_dns.intel.ipset: which answer addresses a set of listed networks catches."""

from __future__ import annotations

import contextlib
import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.indicator import BlockEntry, IpEntry
from misp_dns.intel.ipset import IpMatch, IpSet
from misp_dns.intel.normalize import normalize_network
from misp_dns.interfaces import Provenance

ATTRIBUTE_UUID = "5e9c35b9-5e5c-4221-9e27-313127fc1f02"


def network(text: str, **provenance: str) -> IpEntry:
    """The entry for `text` as the normaliser makes it."""
    version, start, length = normalize_network(text)
    return IpEntry(version, start, length, **provenance)


def packed(address: str) -> bytes:
    """`address` as it sits in an A or AAAA record."""
    return ipaddress.ip_address(address).packed


def reference_match(entries: list[IpEntry], address: str) -> str | None:
    """The most specific network holding `address` (the first given of equal ones)."""
    target = ipaddress.ip_address(address)
    if isinstance(target, ipaddress.IPv6Address) and target.ipv4_mapped is not None:
        mapped = reference_match(entries, str(target.ipv4_mapped))
        own = _best(entries, target)
        return own if own is not None else mapped
    return _best(entries, target)


def _best(
    entries: list[IpEntry], target: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> str | None:
    best: IpEntry | None = None
    for candidate in entries:
        if candidate.version != target.version:
            continue
        net = ipaddress.ip_network(f"{candidate.network.split('/')[0]}/{candidate.length}")
        if target in net and (best is None or candidate.length > best.length):
            best = candidate
    return None if best is None else best.network


v4_networks = st.builds(
    lambda address, length: f"{ipaddress.IPv4Address(address)}/{length}",
    st.sampled_from(["198.51.100.0", "198.51.100.7", "198.51.0.0", "203.0.113.128", "10.0.0.0"]),
    st.integers(min_value=8, max_value=32),
)
v6_networks = st.builds(
    lambda address, length: f"{address}/{length}",
    st.sampled_from(["2001:db8::", "2001:db8::1", "2001:db8:0:1::", "2001:db8:ffff::7", "fd00::"]),
    st.integers(min_value=16, max_value=128),
)
probes = st.sampled_from(
    [
        "198.51.100.7",
        "198.51.100.8",
        "198.51.7.7",
        "203.0.113.200",
        "10.1.2.3",
        "192.0.2.1",
        "2001:db8::1",
        "2001:db8::2",
        "2001:db8:0:1::5",
        "2001:db8:ffff::7",
        "fd00::1",
        "2001:db9::1",
        "::ffff:198.51.100.7",
    ]
)


@given(
    st.lists(st.one_of(v4_networks, v6_networks), max_size=30),
    st.lists(probes, min_size=1, max_size=13),
)
def test_matches_agree_with_a_brute_force_reference(listed: list[str], asked: list[str]) -> None:
    """Every address is caught by the most specific listed network holding it, or by none."""
    entries = [network(text) for text in listed]
    ips = IpSet.build(entries)
    for address in asked:
        found = ips.match(packed(address))
        assert (found.network if found else None) == reference_match(entries, address)


def test_single_addresses_and_ranges_of_both_families() -> None:
    """A /32 or /128 catches that address only; a range catches what it holds; the report
    form is the address alone or the CIDR range."""
    ips = IpSet.build(
        [network("203.0.113.0/24"), network("198.51.100.7"), network("2001:db8:bad::/48")]
    )
    assert ips.match(packed("198.51.100.7")) == IpMatch("198.51.100.7", Provenance())
    assert ips.match(packed("198.51.100.6")) is None
    assert ips.match(packed("203.0.113.255")).network == "203.0.113.0/24"  # type: ignore[union-attr]
    assert ips.match(packed("203.0.114.0")) is None
    assert ips.match(packed("2001:db8:bad:1::9")).network == "2001:db8:bad::/48"  # type: ignore[union-attr]
    assert ips.match(packed("2001:db8:bae::1")) is None
    assert ips.match(b"\x01\x02\x03") is None


def test_the_most_specific_network_wins_and_carries_its_provenance() -> None:
    """An address in a listed /24 and a listed /32 reports the /32, with the /32's event."""
    ips = IpSet.build(
        [
            network("203.0.113.0/24", event_id="1", attribute_uuid="range"),
            network("203.0.113.7", event_id="2", event_info="c2", attribute_uuid=ATTRIBUTE_UUID),
        ]
    )
    assert ips.match(packed("203.0.113.7")) == IpMatch(
        "203.0.113.7", Provenance("2", "", "c2", ATTRIBUTE_UUID)
    )
    assert ips.match(packed("203.0.113.8")) == IpMatch(
        "203.0.113.0/24", Provenance("1", "", "", "range")
    )


def test_an_ipv4_mapped_aaaa_is_caught_by_the_ipv4_network() -> None:
    """An AAAA record ::ffff:203.0.113.7 leads a dual-stack client to 203.0.113.7."""
    ips = IpSet.build([network("203.0.113.0/24")])
    assert ips.match(packed("::ffff:203.0.113.7")).network == "203.0.113.0/24"  # type: ignore[union-attr]


def test_a_network_listed_twice_is_kept_once_the_first_given() -> None:
    """Repeats are dropped, keeping the provenance of the first."""
    ips = IpSet.build(
        [network("198.51.100.7", event_id="1"), network("198.51.100.7/32", event_id="2")]
    )
    assert len(ips) == 1
    assert ips.match(packed("198.51.100.7")).provenance.event_id == "1"  # type: ignore[union-attr]


def test_the_payload_round_trips_entries_and_matches() -> None:
    """`from_bytes(to_buffers())` gives back the same networks, provenance and answers."""
    entries = [
        network("198.51.100.7", event_id="1", event_uuid="e", attribute_uuid=ATTRIBUTE_UUID),
        network("203.0.113.0/24", attribute_uuid="not-a-uuid"),
        network("2001:db8::1", event_info="six"),
        network("2001:db8:1::/48"),
        network("2001:db8:2::/96", attribute_uuid="00000000-0000-0000-0000-000000000000"),
    ]
    ips = IpSet.build(entries)
    again = IpSet.from_bytes(b"".join(ips.to_buffers()))
    assert sorted(again.entries(), key=repr) == sorted(entries, key=repr)
    for address in ("198.51.100.7", "203.0.113.9", "2001:db8::1", "2001:db8:1::5", "2001:db8:2::1"):
        assert again.match(packed(address)) == ips.match(packed(address))


def test_the_domain_set_carries_the_networks_through_its_payload() -> None:
    """Names and networks of one source live in one snapshot: built together, counted
    together, saved and loaded together."""
    snapshot = DomainSet.build(
        [BlockEntry("evil.example", True), network("203.0.113.0/24"), network("2001:db8::1")]
    )
    assert len(snapshot) == 3
    assert snapshot.names_count == 1
    loaded = DomainSet.from_bytes(snapshot.to_bytes())
    assert loaded.digest == snapshot.digest
    assert loaded.match("www.evil.example") is not None
    assert loaded.match_ip(packed("203.0.113.9")).network == "203.0.113.0/24"  # type: ignore[union-attr]
    assert loaded.match_ip(packed("2001:db8::1")) is not None
    assert loaded.match_ip(packed("192.0.2.1")) is None
    assert DomainSet.build([BlockEntry("evil.example", True)]).digest != snapshot.digest


def test_a_million_networks_take_a_few_bytes_each() -> None:
    """500,000 IPv4 and 500,000 IPv6 entries, addresses and ranges mixed, fit in about 25
    and 37 bytes each (start, event index, attribute UUID), and still match exactly."""
    rng = random.Random(5)
    entries = []
    for index in range(500_000):
        length = 32 if index % 10 else rng.choice((16, 20, 24, 28))
        start = rng.getrandbits(32) >> (32 - length) << (32 - length)
        entries.append(IpEntry(4, start, length))
        length6 = 128 if index % 10 else rng.choice((32, 48, 56, 64, 96))
        start6 = rng.getrandbits(128) >> (128 - length6) << (128 - length6)
        entries.append(IpEntry(6, start6, length6))
    ips = IpSet.build(entries)
    size = sum(buffer.nbytes for buffer in ips.to_buffers())
    assert size <= 500_000 * (4 + 4 + 16) + 500_000 * (16 + 4 + 16) + 4096
    for entry in entries[:2000:7]:
        found = ips.match(entry.start.to_bytes(4 if entry.version == 4 else 16, "big"))
        assert found is not None
        assert ipaddress.ip_address(found.network.split("/")[0]).version == entry.version


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=400))
def test_a_damaged_payload_raises_value_error_only(noise: bytes, cut: int) -> None:
    """Truncated or overwritten payloads are refused with ValueError, never another error."""
    payload = bytearray(
        b"".join(IpSet.build([network("203.0.113.0/24"), network("2001:db8::1")]).to_buffers())
    )
    damaged = bytes(payload[:cut]) + noise if cut < len(payload) else bytes(payload) + noise
    with contextlib.suppress(ValueError):
        IpSet.from_bytes(damaged)


@pytest.mark.parametrize("length", [8, 31, 32])
def test_an_empty_set_matches_nothing(length: int) -> None:
    """The empty set, and a set of the other family, catch no address."""
    assert IpSet.empty().match(packed("203.0.113.7")) is None
    only_six = IpSet.build([network(f"2001:db8::/{length + 16}")])
    assert only_six.match(packed("203.0.113.7")) is None
