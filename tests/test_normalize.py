"""Tests for misp_dns.intel.normalize: which MISP values become blocked names, and how."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import unless_present
from hypothesis import assume, given
from hypothesis import strategies as st

from misp_dns.intel.indicator import IpEntry
from misp_dns.intel.normalize import (
    REASONS,
    InvalidIndicator,
    Selection,
    Tally,
    normalize,
    normalize_ip,
    normalize_name,
    normalize_network,
    select,
    selected,
)
from misp_dns.interfaces import RawIndicator

DATA = Path(__file__).parents[1].parent / "shared" / "data"
FEED = DATA / "misp-feed-infoblox"
WARNINGLISTS = DATA / "warninglists"
needs_data = unless_present(FEED, "the real MISP feed in ../shared/data")

_NAME_RULES = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")


def assert_blockable(name: str) -> None:
    """Fail unless `name` is what the matcher may store."""
    assert _NAME_RULES.fullmatch(name), name
    assert len(name) <= 253, name
    assert not name.rpartition(".")[2].isdigit(), name


def rejection(value: str) -> str:
    """The reason `normalize_name` gives for refusing `value`."""
    with pytest.raises(InvalidIndicator) as caught:
        normalize_name(value)
    return caught.value.reason


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
top_labels = st.from_regex(r"[a-z][a-z0-9-]{0,9}", fullmatch=True)
valid_names = st.builds(
    lambda parents, tld: ".".join([*parents, tld]), st.lists(labels, max_size=4), top_labels
)
messy_pieces = [*"abcXYZ019-_.*| \t/:", "ü", "ß", "É", "\u3002", "\ufeff", "ï»¿", "\u200b", "xn--"]
messy_text = st.lists(st.sampled_from(messy_pieces), max_size=40).map("".join)
unicode_labels = st.text(
    alphabet=st.characters(categories=["Ll", "Lu", "Lo", "Nd"]), min_size=1, max_size=12
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", "example.com"),
        ("  Example.COM  ", "example.com"),
        ("example.com.", "example.com"),
        ("*.example.com", "example.com"),
        (".example.com", "example.com"),
        ("\tWWW.Example.Com.\n", "www.example.com"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        # full-width "EXAMPLE。COM。", ideographic full stops included
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\u3002\uff23\uff2f\uff2d\u3002", "example.com"),
        ("straße.de", "strasse.de"),
        ("\ufeffexample.com", "example.com"),
        ("ï»¿example.com", "example.com"),
        ("Ôªøexample.com", "example.com"),
        ("1.2.3.4.in-addr.arpa", "1.2.3.4.in-addr.arpa"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_values_are_cleaned_up(value: str, expected: str) -> None:
    """Messy MISP values (case, spaces, dots, wildcards, Unicode, BOMs) become one DNS name."""
    assert normalize_name(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (".", "empty"),
        ("192.0.2.1", "ip"),
        ("192.0.2.1.", "ip"),
        ("2001:db8::1", "ip"),
        ("[2001:db8::1]", "ip"),
        ("fe80::1%eth0", "ip"),
        ("3232235777", "ip"),
        ("host.123", "ip"),
        ("\uff11\uff19\uff12.\uff10.\uff12.\uff11", "ip"),  # full-width digits
        ("example..com", "empty-label"),
        ("example.com..", "empty-label"),
        ("a" * 64 + ".com", "label-too-long"),
        (".".join(["a" * 60] * 5), "name-too-long"),
        ("exa mple.com", "bad-character"),
        ("example.com/path", "bad-character"),
        ("*.*.example.com", "bad-character"),
        ("mail@example.com", "bad-character"),
        ("xn--bücher.example", "idna"),
    ],
)
def test_unusable_values_are_rejected_with_a_reason(value: str, reason: str) -> None:
    """IPs, empty or long labels, long names and odd characters are refused, reason given."""
    assert reason in REASONS
    assert rejection(value) == reason


def test_rejection_carries_the_bad_value() -> None:
    """An `InvalidIndicator` names its reason and the value as MISP sent it."""
    with pytest.raises(InvalidIndicator) as caught:
        normalize_name(" 192.0.2.1 ")
    assert (caught.value.reason, caught.value.value) == ("ip", " 192.0.2.1 ")
    assert str(caught.value) == "ip: ' 192.0.2.1 '"


@pytest.mark.parametrize(
    ("kind", "value", "name", "subdomains"),
    [
        ("domain", "Evil.Example ", "evil.example", True),
        ("hostname", "www.evil.example", "www.evil.example", False),
        ("domain|ip", "evil.example|192.0.2.1", "evil.example", True),
        ("domain|ip", "evil.example|2001:db8::1", "evil.example", True),
    ],
)
def test_attribute_types_decide_what_is_blocked(
    kind: str, value: str, name: str, subdomains: bool
) -> None:
    """`domain` and `domain|ip` block the name and below it, `hostname` the name only."""
    raw = RawIndicator(
        value=value,
        type=kind,
        event_id="7",
        event_uuid="e-uuid",
        event_info="a campaign",
        attribute_uuid="a-uuid",
    )
    entry = normalize(raw)
    assert (entry.name, entry.subdomains) == (name, subdomains)
    assert (entry.event_id, entry.event_uuid, entry.event_info, entry.attribute_uuid) == (
        "7",
        "e-uuid",
        "a campaign",
        "a-uuid",
    )


@pytest.mark.parametrize("kind", ["ip-dst", "url", "email-src", "sha256", "Domain"])
def test_other_attribute_types_are_rejected(kind: str) -> None:
    """Attributes that are not domain names are refused as `not-a-domain-type`."""
    with pytest.raises(InvalidIndicator) as caught:
        normalize(RawIndicator(value="example.com", type=kind))
    assert (caught.value.reason, caught.value.value) == ("not-a-domain-type", kind)


def test_domain_ip_with_an_ip_as_its_domain_half_is_rejected() -> None:
    """A `domain|ip` whose domain half is an address blocks nothing."""
    with pytest.raises(InvalidIndicator) as caught:
        normalize(RawIndicator(value="192.0.2.1|192.0.2.1", type="domain|ip"))
    assert caught.value.reason == "ip"


@given(st.one_of(messy_text, st.text(max_size=80)))
def test_normalising_is_idempotent_and_output_is_blockable(value: str) -> None:
    """Any text either becomes a valid name that normalises to itself, or is rejected."""
    try:
        name = normalize_name(value)
    except InvalidIndicator as error:
        assert error.reason in REASONS
        return
    assert_blockable(name)
    assert normalize_name(name) == name


@given(
    valid_names,
    st.sampled_from(["", " ", "\t", "\n "]),
    st.sampled_from(["", " ", "\r\n"]),
    st.sampled_from(["", "*.", "."]),
    st.booleans(),
    st.booleans(),
)
def test_spelling_variants_give_the_same_name(
    name: str, before: str, after: str, prefix: str, trailing_dot: bool, upper: bool
) -> None:
    """Case, surrounding whitespace, a trailing dot and a leading `*.` do not change a name."""
    assume(len(name) <= 253 and all(len(label) <= 63 for label in name.split(".")))
    variant = f"{before}{prefix}{name.upper() if upper else name}{'.' if trailing_dot else ''}"
    assert normalize_name(variant + after) == name


@given(st.ip_addresses())
def test_ip_addresses_are_never_blocked_as_names(address: object) -> None:
    """IPv4 and IPv6 addresses given as domains are rejected as `ip`."""
    assert rejection(str(address)) == "ip"


@given(st.lists(unicode_labels, min_size=1, max_size=3), top_labels)
def test_unicode_names_become_the_punycode_python_idna_gives(parents: list[str], tld: str) -> None:
    """Internationalised names block the same punycode name IDNA 2003 gives, or are refused."""
    value = ".".join([*parents, tld])
    assume(not value.lower().startswith(("ôªø", "ï»¿")))  # BOM look-alikes are dropped
    try:
        expected = value.lower().encode("idna").decode("ascii")
    except UnicodeError:
        expected = None
    try:
        name = normalize_name(value)
    except InvalidIndicator:
        return
    assert name == expected


def test_select_keeps_only_what_misp_means_to_block() -> None:
    """Attributes with `to_ids` off, deleted or not seen within `max_ioc_age` are skipped."""
    now, day = 1_700_000_000.0, 86_400.0
    raws = [
        RawIndicator(value="keep.example", type="domain"),
        RawIndicator(value="not-ids.example", type="domain", to_ids=False),
        RawIndicator(value="deleted.example", type="domain", deleted=True),
        RawIndicator(value="stale.example", type="domain", last_seen=now - 15 * day - 1),
        RawIndicator(value="edge.example", type="hostname", last_seen=now - 15 * day),
        RawIndicator(value="192.0.2.1", type="domain"),
        RawIndicator(value="a b.example", type="domain"),
        RawIndicator(value="c d.example", type="domain"),
    ]
    selection = select(raws, now=now, max_age=15 * day)
    assert [entry.name for entry in selection.kept] == ["keep.example", "edge.example"]
    assert selection.skipped == {"not-to-ids": 1, "deleted": 1, "stale": 1}
    assert selection.rejected == {"ip": 1, "bad-character": 2}
    assert selection.summary() == (
        "kept 2, skipped 3 (deleted: 1, not-to-ids: 1, stale: 1), "
        "rejected 3 (bad-character: 2, ip: 1)"
    )


def test_staleness_by_last_seen_else_by_timestamp() -> None:
    """Without last_seen (as in most feeds) the attribute's last change decides its age."""
    now, day = 1_700_000_000.0, 86_400.0
    old = int(now - 400 * day)
    raws = [
        RawIndicator(value="old-change.example", type="domain", timestamp=old),
        RawIndicator(value="recent-change.example", type="domain", timestamp=int(now - day)),
        RawIndicator(
            value="seen-lately.example", type="domain", timestamp=old, last_seen=now - day
        ),
        RawIndicator(
            value="seen-long-ago.example",
            type="domain",
            timestamp=int(now),
            last_seen=now - 400 * day,
        ),
    ]
    kept = [entry.name for entry in select(raws, now=now, max_age=30 * day).kept]
    assert kept == ["recent-change.example", "seen-lately.example"]


def test_select_without_max_age_keeps_old_indicators() -> None:
    """With no age limit, an old `last_seen` does not drop an indicator."""
    raws = [RawIndicator(value="old.example", type="domain", last_seen=0.0)]
    selection = select(raws, now=1_700_000_000.0, max_age=None)
    assert [entry.name for entry in selection.kept] == ["old.example"]
    assert selection.summary() == "kept 1, rejected 0"


def test_selected_streams_and_counts_like_select() -> None:
    """The lazy form yields entries as attributes arrive and ends with the same counts."""
    raws = [
        RawIndicator(value="one.example", type="domain"),
        RawIndicator(value="192.0.2.1", type="domain"),
        RawIndicator(value="two.example", type="hostname", deleted=True),
        RawIndicator(value="three.example", type="hostname"),
    ]
    consumed: list[RawIndicator] = []

    def arriving() -> Iterator[RawIndicator]:
        for raw in raws:
            consumed.append(raw)
            yield raw

    tally = Tally()
    stream = selected(arriving(), now=0.0, max_age=None, tally=tally)
    assert next(stream).name == "one.example"
    assert consumed == raws[:1]
    assert [entry.name for entry in stream] == ["three.example"]
    assert (tally.kept, tally.rejected, tally.skipped) == (2, {"ip": 1}, {"deleted": 1})
    assert tally.summary() == select(raws, now=0.0, max_age=None).summary()
    assert tally.summary() == "kept 2, skipped 1 (deleted: 1), rejected 1 (ip: 1)"


def test_summary_with_nothing_kept() -> None:
    """The log line reads sensibly for an empty update."""
    assert Selection(kept=[], rejected={}, skipped={}).summary() == "kept 0, rejected 0"


def _feed_indicators() -> Iterator[RawIndicator]:
    for path in sorted(FEED.glob("*-*.json")):
        event = json.loads(path.read_text(encoding="utf-8"))["Event"]
        for attribute in event["Attribute"]:
            first_seen = attribute.get("first_seen")
            yield RawIndicator(
                value=attribute["value"],
                type=attribute["type"],
                to_ids=bool(attribute.get("to_ids", True)),
                deleted=bool(attribute.get("deleted", False)),
                timestamp=int(attribute["timestamp"]),
                first_seen=datetime.fromisoformat(first_seen).timestamp() if first_seen else None,
                event_id=str(event.get("id", "")),
                event_uuid=event["uuid"],
                event_info=event["info"],
                attribute_uuid=attribute["uuid"],
            )


@pytest.fixture(scope="module")
def feed_selection() -> Selection:
    """The real Infoblox feed, selected as an update would."""
    return select(_feed_indicators(), now=1_715_800_000.0, max_age=None)


@needs_data
def test_real_feed_keeps_every_domain_and_rejects_the_rest(feed_selection: Selection) -> None:
    """All 60,479 domain attributes of the real feed are blockable; IPs, URLs, hashes are not."""
    assert len(feed_selection.kept) == 60_479
    assert len({entry.name for entry in feed_selection.kept}) == 60_435
    assert feed_selection.rejected == {"not-a-domain-type": 591}
    assert feed_selection.skipped == {}
    for entry in feed_selection.kept:
        assert_blockable(entry.name)
        assert entry.subdomains
    assert feed_selection.summary() == "kept 60479, rejected 591 (not-a-domain-type: 591)"


@needs_data
def test_real_feed_ip_dst_attributes_become_response_ips() -> None:
    """With response IPs on, the real feed's 350 `ip-dst` attributes (346 distinct
    addresses) are kept as networks beside every domain; only URLs, mails and hashes are
    left out."""
    selection = select(_feed_indicators(), now=1_715_800_000.0, max_age=None, response_ips=True)
    networks = [entry for entry in selection.kept if isinstance(entry, IpEntry)]
    assert len(networks) == 350
    assert len({(n.version, n.start, n.length) for n in networks}) == 346
    assert len(selection.kept) - len(networks) == 60_479
    assert selection.rejected == {"not-a-domain-type": 241}


@needs_data
def test_real_feed_messy_values_are_cleaned(feed_selection: Selection) -> None:
    """Trailing spaces, capitals, `_` labels, punycode and mis-decoded BOMs come out clean."""
    names = {entry.name for entry in feed_selection.kept}
    for expected in (
        "ipv4.mikifox.com",  # was "ipv4.mikifox.com "
        "sortie-crise-economique-ukraine.com",  # was "Sortie-Crise-Economique-Ukraine.com"
        "_dmarc.godsafeukraine.com",
        "default._bimi.godsafeukraine.com",
        "xn--cloud-ssa.com",
        "abnormalk.top",  # was "ôªøabnormalk.top": a UTF-8 BOM read as Mac Roman
        "usps-global.com",
    ):
        assert expected in names
    assert not any(name != name.strip() or name.startswith("ô") for name in names)


@needs_data
def test_real_warninglist_addresses_and_junk_are_rejected() -> None:
    """A real hostname list holding IPs and CIDR-mangled names loses exactly those."""
    values = json.loads((WARNINGLISTS / "public-dns-hostname.json").read_text())["list"]
    reasons: dict[str, str] = {}
    for value in values:
        try:
            assert_blockable(normalize_name(value))
        except InvalidIndicator as error:
            reasons[value] = error.reason
    assert sorted(reasons.values()).count("ip") == 15
    assert reasons["178.211.56.71"] == "ip"
    assert reasons["252/24.127.188.93.mifril.ru"] == "bad-character"
    assert reasons["gw.megatro-avinyo.man,altecom.net"] == "bad-character"
    assert len(reasons) == 19


# -- response IPs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("198.51.100.7", (4, 0xC6336407, 32)),
        (" 203.0.113.0/24 ", (4, 0xCB007100, 24)),
        ("203.0.113.9/24", (4, 0xCB007100, 24)),
        ("10.0.0.0/8", (4, 0x0A000000, 8)),
        ("2001:db8::1", (6, 0x20010DB8 << 96 | 1, 128)),
        ("[2001:DB8::1]", (6, 0x20010DB8 << 96 | 1, 128)),
        ("2001:db8:bad::77/48", (6, 0x20010DB80BAD << 80, 48)),
        ("::ffff:198.51.100.7", (4, 0xC6336407, 32)),
        ("::ffff:198.51.100.0/120", (4, 0xC6336400, 24)),
    ],
)
def test_addresses_and_ranges_become_networks(value: str, expected: tuple[int, int, int]) -> None:
    """Addresses and CIDR ranges of both families are read, host bits cleared, and an
    IPv4-mapped IPv6 network becomes the IPv4 one."""
    assert normalize_network(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "bad-ip"),
        ("evil.example", "bad-ip"),
        ("300.1.1.1", "bad-ip"),
        ("1.2.3", "bad-ip"),
        ("1.2.3.4/33", "bad-ip"),
        ("1.2.3.4/-1", "bad-ip"),
        ("1.2.3.4/", "bad-ip"),
        ("fe80::1%eth0", "bad-ip"),
        ("2001:db8::1/129", "bad-ip"),
        ("0.0.0.0/0", "ip-too-broad"),
        ("10.0.0.0/7", "ip-too-broad"),
        ("::/0", "ip-too-broad"),
        ("2001::/15", "ip-too-broad"),
    ],
)
def test_unusable_addresses_are_rejected_with_a_reason(value: str, reason: str) -> None:
    """Values that are no address, and ranges so wide that one mistaken indicator would
    block a good part of the Internet, are refused."""
    with pytest.raises(InvalidIndicator) as caught:
        normalize_network(value)
    assert (caught.value.reason, caught.value.value) == (reason, value)


@pytest.mark.parametrize(
    ("kind", "value", "network"),
    [
        ("ip-dst", "203.0.113.0/24", "203.0.113.0/24"),
        ("ip-src", "2001:db8::1", "2001:db8::1"),
        ("ip-dst|port", "198.51.100.7|443", "198.51.100.7"),
        ("ip-src|port", "2001:db8::7|8080", "2001:db8::7"),
        ("domain|ip", "evil.example|198.51.100.9", "198.51.100.9"),
    ],
)
def test_address_types_give_response_ip_networks(kind: str, value: str, network: str) -> None:
    """Each MISP type holding an address gives its network, with the attribute's provenance."""
    raw = RawIndicator(value=value, type=kind, event_id="7", attribute_uuid="a-uuid")
    entry = normalize_ip(raw)
    assert (entry.network, entry.event_id, entry.attribute_uuid) == (network, "7", "a-uuid")


def test_select_takes_response_ips_only_when_asked() -> None:
    """Without `response_ips` the address types are refused as before; with it they give
    networks, `domain|ip` gives its name and its network, and the summary counts both."""
    raws = [
        RawIndicator(value="evil.example", type="domain"),
        RawIndicator(value="203.0.113.0/24", type="ip-dst"),
        RawIndicator(value="198.51.100.7|443", type="ip-src|port"),
        RawIndicator(value="both.example|2001:db8::1", type="domain|ip"),
        RawIndicator(value="half.example|not-an-ip", type="domain|ip"),
        RawIndicator(value="192.0.2.1|192.0.2.1", type="domain|ip"),
        RawIndicator(value="0.0.0.0/0", type="ip-dst"),
        RawIndicator(value="nonsense", type="ip-src"),
    ]
    without = select(raws, now=0.0, max_age=None)
    assert [entry.name for entry in without.kept] == [  # type: ignore[union-attr]
        "evil.example",
        "both.example",
        "half.example",
    ]
    assert without.rejected == {"not-a-domain-type": 4, "ip": 1}
    with_ips = select(raws, now=0.0, max_age=None, response_ips=True)
    assert [getattr(e, "name", None) or e.network for e in with_ips.kept] == [  # type: ignore[union-attr]
        "evil.example",
        "203.0.113.0/24",
        "198.51.100.7",
        "both.example",
        "2001:db8::1",
        "half.example",
        "192.0.2.1",
    ]
    assert with_ips.rejected == {"ip-too-broad": 1, "bad-ip": 1}
    assert with_ips.summary() == (
        "kept 7 (names: 3, response IPs: 4), rejected 2 (bad-ip: 1, ip-too-broad: 1)"
    )
