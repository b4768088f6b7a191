"""MISP warninglists: reading MISP's list files and matching values as MISP does.

The string and hostname lists are the real ones in ../shared/data/warninglists (Tranco,
Cisco Umbrella, Cloudflare Radar, dynamic DNS, public resolvers, second-level TLDs). That
folder holds no cidr, substring or regex list, so those tests write small lists in MISP's
format with documentation addresses and made-up names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA, unless_present

from misp_dns.intel.misp_options import MispFeedOptions
from misp_dns.intel.warninglist import (
    Warninglist,
    WarninglistError,
    WarninglistFilter,
    compile_pcre,
    load_warninglist,
    parse_warninglist,
)
from misp_dns.interfaces import RawIndicator
from misp_dns.values import ConfigError

LISTS = SHARED_DATA / "warninglists"
needs_lists = unless_present(LISTS, "the real MISP warninglists in ../shared/data")


def real(name: str) -> Warninglist:
    return load_warninglist(LISTS / f"{name}.json")


def write_list(directory: Path, name: str, document: Any) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def indicator(value: str, type_: str = "domain") -> RawIndicator:
    return RawIndicator(value=value, type=type_)


# -- the real string and hostname lists ------------------------------------------------------


@needs_lists
@pytest.mark.parametrize(
    ("name", "kind", "entries"),
    [
        ("tranco10k", "hostname", 10_000),
        ("dynamic-dns", "hostname", 35_467),
        ("public-dns-hostname", "hostname", 34_783),
        ("cisco_top20k", "string", 20_000),
        ("cloudflare-top100k", "string", 100_001),
        ("second-level-tlds", "string", 10_231),
    ],
)
def test_real_lists_load_with_their_name_type_and_every_entry(
    name: str, kind: str, entries: int
) -> None:
    """Every real list loads whole: its MISP name, its type, every entry usable."""
    found = real(name)
    document = json.loads((LISTS / f"{name}.json").read_text(encoding="utf-8"))
    assert (found.name, found.type) == (document["name"], kind)
    assert (found.entries, found.skipped) == (entries, 0)


@needs_lists
def test_hostname_list_matches_the_name_and_names_below_it() -> None:
    """tranco10k (hostname): google.com and mail.google.com are on it, google.com.evil is not."""
    tranco = real("tranco10k")
    assert tranco.match("domain", "google.com") == "google.com"
    assert tranco.match("hostname", "mail.google.com") == "google.com"
    assert tranco.match("domain", "Mail.Google.COM.") == "google.com"
    assert tranco.match("domain", "google.com.evil.example") is None
    assert tranco.match("domain", "notgoogle.com") is None


@needs_lists
def test_hostname_entries_with_a_leading_dot_cover_the_name_itself() -> None:
    """dynamic-dns writes `.duckdns.org`: the name and every name below it are on the list."""
    dynamic = real("dynamic-dns")
    assert dynamic.match("domain", "duckdns.org") == "duckdns.org"
    assert dynamic.match("hostname", "c2.attacker.duckdns.org") == "duckdns.org"
    assert dynamic.match("domain", "duckdns.org.example") is None


@needs_lists
def test_string_list_matches_the_exact_value_only() -> None:
    """cloudflare-top100k (string) holds google.com but not www.google.com: exact match only."""
    cloudflare = real("cloudflare-top100k")
    assert cloudflare.match("domain", "google.com") == "google.com"
    assert cloudflare.match("domain", " GOOGLE.com. ") == "google.com"
    assert cloudflare.match("domain", "www.google.com") is None
    assert real("cisco_top20k").match("hostname", "www.google.com") == "www.google.com"


@needs_lists
def test_a_list_applies_only_to_its_matching_attributes() -> None:
    """dynamic-dns lists domain, hostname and domain|ip: a url or ip-dst value is not checked."""
    dynamic = real("dynamic-dns")
    assert dynamic.match("url", "duckdns.org") is None
    assert dynamic.match("domain|ip", "c2.duckdns.org|192.0.2.1") == "duckdns.org"


@needs_lists
def test_public_resolver_names_are_caught() -> None:
    """public-dns-hostname catches resolver names an event may list as contacted hosts."""
    resolvers = real("public-dns-hostname")
    assert resolvers.match("hostname", "dns.google") == "dns.google"
    assert resolvers.match("domain", "one.one.one.one") == "one.one.one.one"


# -- cidr, substring and regex lists (written here in MISP's format) -------------------------


CIDR = {
    "name": "Documentation ranges",
    "type": "cidr",
    "matching_attributes": ["ip-src", "ip-dst", "domain|ip"],
    "list": ["192.0.2.0/24", "198.51.100.7", "2001:db8::/32", "203.0.113.0/33", "not an ip"],
}


def test_cidr_list_matches_addresses_and_networks_within_its_ranges(tmp_path: Path) -> None:
    """Addresses and narrower networks inside a listed range match, wider ones do not; an
    entry without a length is one address; invalid entries are skipped and counted."""
    cidr = load_warninglist(write_list(tmp_path, "cidr", CIDR))
    assert (cidr.type, cidr.entries, cidr.skipped) == ("cidr", 3, 2)
    assert cidr.match("ip-dst", "192.0.2.77") == "192.0.2.0/24"
    assert cidr.match("ip-src", "192.0.2.128/25") == "192.0.2.0/24"
    assert cidr.match("ip-dst", "192.0.0.0/16") is None
    assert cidr.match("ip-dst", "198.51.100.7") == "198.51.100.7/32"
    assert cidr.match("ip-dst", "198.51.100.8") is None
    assert cidr.match("ip-dst", "2001:DB8:ffff::1") == "2001:db8::/32"
    assert cidr.match("ip-dst", "2001:db9::1") is None
    assert cidr.match("ip-dst", "evil.example") is None


def test_cidr_list_checks_the_ip_half_of_domain_ip(tmp_path: Path) -> None:
    """Of `domain|ip` both halves are checked, so a listed address catches the pair."""
    cidr = load_warninglist(write_list(tmp_path, "cidr", CIDR))
    assert cidr.match("domain|ip", "evil.example|192.0.2.9") == "192.0.2.0/24"
    assert cidr.match("domain|ip", "evil.example|203.0.113.9") is None
    assert cidr.match("domain", "192.0.2.9") is None  # not one of its matching_attributes


def test_substring_list_matches_anywhere_in_the_value() -> None:
    """A substring entry matches wherever it occurs; lists without matching_attributes
    apply to every type."""
    parsed = parse_warninglist(
        {"name": "Sinkholes", "type": "substring", "list": ["sinkhole", ".arpa"]}, "here"
    )
    assert parsed.match("domain", "ns1.SINKHOLE-operator.example") == "sinkhole"
    assert parsed.match("hostname", "1.2.0.192.in-addr.arpa") == ".arpa"
    assert parsed.match("domain", "evil.example") is None


def test_regex_list_uses_pcre_delimiters_and_modifiers(tmp_path: Path) -> None:
    """Entries are PCRE patterns between delimiters, searched in the value; `i` ignores case;
    patterns Python cannot take (named groups PCRE-style, unknown modifiers) are skipped."""
    document = {
        "name": "Lab hosts",
        "type": "regex",
        "matching_attributes": ["domain", "hostname"],
        "list": [
            r"/^ns[0-9]+\.lab\.example$/",
            r"#\.TRAINING\.example$#i",
            r"{^sandbox-\d{2,}\.}",
            r"/(?<word>x)/",
            r"/unterminated",
            r"/x/Q",
        ],
    }
    regex = load_warninglist(write_list(tmp_path, "regex", document))
    assert (regex.entries, regex.skipped) == (3, 3)
    assert regex.match("domain", "ns12.lab.example") == r"/^ns[0-9]+\.lab\.example$/"
    assert regex.match("domain", "ns.lab.example") is None
    assert regex.match("hostname", "phish.training.example") == r"#\.TRAINING\.example$#i"
    assert regex.match("domain", "sandbox-042.vendor.example") == r"{^sandbox-\d{2,}\.}"
    assert regex.match("domain", "sandbox-4.vendor.example") is None


@pytest.mark.parametrize("entry", ["^no-delimiters$", "", "  ", r"\x\\", "/a/e"])
def test_unusable_pcre_entries_are_refused(entry: str) -> None:
    """No delimiter, an empty entry, or an unsupported modifier is a ValueError."""
    with pytest.raises(ValueError):
        compile_pcre(entry)


# -- the file format -------------------------------------------------------------------------


def test_list_with_comments_and_missing_type_reads_like_misp(tmp_path: Path) -> None:
    """A `list` object (entry -> comment) uses its keys; no `type` means string; a list of
    types takes the first; `"ALL"` in matching_attributes means every type."""
    commented = parse_warninglist(
        {"name": "C", "list": {"evil.example": "a comment"}, "matching_attributes": ["ALL"]}, "x"
    )
    assert commented.type == "string"
    assert commented.match("ip-dst", "evil.example") == "evil.example"
    first_type = parse_warninglist({"name": "T", "type": ["hostname", "string"], "list": []}, "x")
    assert first_type.type == "hostname"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "not JSON"),
        ("[]", '"name", "type", "list"'),
        ('{"list": []}', "no name"),
        ('{"name": "n", "type": "glob", "list": []}', "type 'glob' is not one of"),
        ('{"name": "n", "list": "evil.example"}', '"list" must be an array'),
        ('{"name": "n", "list": [], "matching_attributes": "domain"}', "matching_attributes"),
    ],
)
def test_unusable_files_are_errors_naming_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    """A missing, non-JSON or misshapen file raises WarninglistError with its path and why."""
    path = tmp_path / "list.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WarninglistError) as caught:
        load_warninglist(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_feed_options_read_every_list_or_report_each_bad_one(tmp_path: Path) -> None:
    """`read_warninglists` returns the lists in order, or one ConfigError line per bad file
    naming its place in `warninglists`."""
    good = write_list(tmp_path, "cidr", CIDR)
    options = MispFeedOptions(url="feed", warninglists=(str(good),))
    assert [w.name for w in options.read_warninglists()] == ["Documentation ranges"]
    broken = MispFeedOptions(
        url="feed", warninglists=(str(good), str(tmp_path / "gone.json"), str(good))
    )
    with pytest.raises(ConfigError) as caught:
        broken.read_warninglists()
    [line] = caught.value.problems
    assert line.startswith("warninglists[1]: ") and "gone.json: cannot read" in line


# -- dropping indicators ---------------------------------------------------------------------


@needs_lists
def test_filter_drops_what_any_list_holds_and_counts_by_list_name(tmp_path: Path) -> None:
    """Indicators on a list are dropped and counted under the first list they are on; every
    list is named in the counts, with 0 when it dropped nothing."""
    cidr = load_warninglist(write_list(tmp_path, "cidr", CIDR))
    lists = (real("dynamic-dns"), real("tranco10k"), cidr)  # duckdns.org is on both
    given = [
        indicator("google.com"),
        indicator("login.google.com", "hostname"),
        indicator("c2.duckdns.org"),
        indicator("evil.example|192.0.2.1", "domain|ip"),
        indicator("stemtopx.com"),
        indicator("evil.example|203.0.113.5", "domain|ip"),
    ]
    kept, dropped = WarninglistFilter(lists).split(given)
    assert [i.value for i in kept] == ["stemtopx.com", "evil.example|203.0.113.5"]
    assert dropped == {
        "List of known dynamic DNS domains": 1,
        "Top 10K most-used sites from Tranco": 2,
        "Documentation ranges": 1,
    }
    assert WarninglistFilter(lists).split([indicator("stemtopx.com")])[1] == dict.fromkeys(
        dropped, 0
    )
