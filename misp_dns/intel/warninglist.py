"""MISP warninglists: well-known values (top sites, cloud ranges, public resolvers) never to block.

A warninglist is MISP's JSON file (the format of the MISP/misp-warninglists project):

    {"name": "Top 10K most-used sites from Tranco", "type": "hostname",
     "matching_attributes": ["hostname", "domain", "url", "domain|ip"],
     "list": ["google.com", "youtube.com", ...]}

`load_warninglist(path)` reads one; `WarninglistFilter` drops the indicators that are on any of
several lists and counts them by list name. An entry matches as it does in MISP:

- `string`: the value is the entry;
- `hostname`: the value is the entry or a name below it (leading and trailing dots of an entry
  are ignored, so `.example.com` and `example.com` mean the same);
- `substring`: the entry occurs in the value;
- `cidr`: the value is an address or a network within the entry's network (an entry without a
  prefix length is one address); entries that are not networks are skipped;
- `regex`: a PCRE pattern between delimiters, such as `/^ns[0-9]+\\.example\\./i`, found
  anywhere in the value (modifiers `i`, `m`, `s`, `x`, `u`, `D`, `S`); patterns Python's `re`
  cannot compile are skipped.

A list applies to the attribute types in its `matching_attributes` (to every type when that is
missing or empty); `type` defaults to `string`; `list` may also be an object whose keys are the
entries (MISP's lists with comments). Both halves of a composite value (`domain|ip`) are
checked. Values are compared in the form misp-dns blocks them: lower case, without a trailing
dot, Unicode labels as punycode (`normalize_name`), so `Google.COM.` is on a list holding
`google.com`; list entries are lower-cased too.

    tranco = load_warninglist("/usr/share/misp-warninglists/lists/tranco10k/list.json")
    kept, dropped = WarninglistFilter((tranco,)).split(indicators)
    # dropped == {"Top 10K most-used sites from Tranco": 3}
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs

from misp_dns.intel.normalize import InvalidIndicator, normalize_name
from misp_dns.interfaces import RawIndicator

__all__ = [
    "LIST_TYPES",
    "Warninglist",
    "WarninglistError",
    "WarninglistFilter",
    "load_warninglist",
    "parse_warninglist",
]

LIST_TYPES = ("string", "hostname", "substring", "cidr", "regex")

Matcher = Callable[[str], "str | None"]


class WarninglistError(ValueError):
    """A warninglist file that cannot be used; the message names the file and the fault."""


@attrs.frozen
class Warninglist:
    """One MISP warninglist, ready to match values.

    `entries` is the number of usable entries, `skipped` the number left out because they
    were empty, not text, or not a valid network or pattern for the list's type.
    """

    name: str
    type: str
    matching_attributes: frozenset[str]
    entries: int
    skipped: int
    _matcher: Matcher = attrs.field(repr=False, alias="matcher")

    def applies_to(self, attribute_type: str) -> bool:
        """Whether the list is meant for attributes of this MISP type."""
        return not self.matching_attributes or attribute_type in self.matching_attributes

    def match(self, attribute_type: str, value: str) -> str | None:
        """The entry an attribute of this type and value is on, or None.

        Lists not meant for the type never match; of a composite type (`domain|ip`) each half
        is checked.
        """
        if not self.applies_to(attribute_type):
            return None
        return self.match_comparable(comparable(attribute_type, value))

    def match_comparable(self, values: tuple[str, ...]) -> str | None:
        """The entry one of `values` (from `comparable`) is on, or None; types unchecked."""
        for value in values:
            found = self._matcher(value)
            if found is not None:
                return found
        return None


def comparable(attribute_type: str, value: str) -> tuple[str, ...]:
    """The forms of an attribute's value that lists are matched against: one per half of a
    composite type (`domain|ip`), each as `_comparable` writes it."""
    if "|" in attribute_type:
        return tuple(_comparable(half) for half in value.split("|", 1))
    return (_comparable(value),)


def _comparable(value: str) -> str:
    """The value as misp-dns would block it, or plainly trimmed and lower-cased if it is not a
    name (an address, a network)."""
    try:
        return normalize_name(value)
    except InvalidIndicator:
        return value.strip().lower().rstrip(".")


# -- the five matchers ------------------------------------------------------------------------


def _string_matcher(entries: list[str]) -> tuple[Matcher, int]:
    known = frozenset(entry.strip().lower() for entry in entries)
    return (lambda value: value if value in known else None), 0


def _hostname_matcher(entries: list[str]) -> tuple[Matcher, int]:
    known = frozenset(entry.strip().strip(".").lower() for entry in entries)

    def match(value: str) -> str | None:
        labels = value.split(".")
        for start in range(len(labels) - 1, -1, -1):  # from the top-level domain down
            suffix = ".".join(labels[start:])
            if suffix in known:
                return suffix
        return None

    return match, 0


def _substring_matcher(entries: list[str]) -> tuple[Matcher, int]:
    parts = sorted({entry.strip().lower() for entry in entries}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(part) for part in parts))

    def match(value: str) -> str | None:
        found = pattern.search(value)
        return found.group(0) if found else None

    return match, 0


class _Networks:
    """Networks by prefix length, so that a lookup costs one set probe per length in use."""

    def __init__(self) -> None:
        self._prefixes: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        by_length = self._prefixes[network.version]
        if network.prefixlen not in by_length:
            by_length[network.prefixlen] = set()
            self._lengths[network.version] = sorted(by_length)
        shift = network.max_prefixlen - network.prefixlen
        by_length[network.prefixlen].add(int(network.network_address) >> shift)

    def match(self, value: str) -> str | None:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return None
        by_length = self._prefixes[network.version]
        address = int(network.network_address)
        for length in self._lengths[network.version]:
            if length > network.prefixlen:
                break
            shift = network.max_prefixlen - length
            if address >> shift in by_length[length]:
                kind = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
                return f"{kind(address >> shift << shift)}/{length}"
        return None


def _cidr_matcher(entries: list[str]) -> tuple[Matcher, int]:
    networks = _Networks()
    skipped = 0
    for entry in entries:
        try:
            networks.add(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            skipped += 1
    return networks.match, skipped


_BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_MODIFIERS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
# Modifiers with nothing to do here: u (Python's patterns are Unicode), D (values hold no
# newline for $ to stop before), S (PCRE's study hint).
_HARMLESS_MODIFIERS = frozenset("uDS")


def compile_pcre(entry: str) -> re.Pattern[str]:
    """A PCRE pattern between delimiters (`/.../i`, `#...#`, `{...}`) as a Python pattern.

    Raises `ValueError` when the delimiters or a modifier are not understood or Python's `re`
    cannot compile the pattern.
    """
    text = entry.lstrip()
    if not text or text[0].isalnum() or text[0] == "\\" or text[0].isspace():
        raise ValueError("no delimiter")
    closing = _BRACKETS.get(text[0], text[0])
    end = text.rfind(closing)
    if end <= 0:
        raise ValueError("no closing delimiter")
    flags = 0
    for modifier in text[end + 1 :].strip():
        if modifier in _MODIFIERS:
            flags |= _MODIFIERS[modifier]
        elif modifier not in _HARMLESS_MODIFIERS:
            raise ValueError(f"modifier {modifier!r} is not supported")
    try:
        return re.compile(text[1:end], flags)
    except re.error as exc:
        raise ValueError(str(exc)) from None


def _regex_matcher(entries: list[str]) -> tuple[Matcher, int]:
    patterns: list[tuple[re.Pattern[str], str]] = []
    skipped = 0
    for entry in entries:
        try:
            patterns.append((compile_pcre(entry), entry))
        except ValueError:
            skipped += 1

    def match(value: str) -> str | None:
        for pattern, entry in patterns:
            if pattern.search(value):
                return entry
        return None

    return match, skipped


_MATCHERS: dict[str, Callable[[list[str]], tuple[Matcher, int]]] = {
    "string": _string_matcher,
    "hostname": _hostname_matcher,
    "substring": _substring_matcher,
    "cidr": _cidr_matcher,
    "regex": _regex_matcher,
}


# -- reading --------------------------------------------------------------------------------


def parse_warninglist(document: object, where: str) -> Warninglist:
    """A warninglist from its decoded JSON; `where` (the file) prefixes any error message."""
    if not isinstance(document, Mapping):
        raise WarninglistError(f'{where}: expected {{"name", "type", "list": [...]}}')
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise WarninglistError(f"{where}: no name")
    list_type = document.get("type", "string")
    if isinstance(list_type, list) and list_type:
        list_type = list_type[0]  # MISP takes the first of a list of types
    if list_type not in LIST_TYPES:
        raise WarninglistError(f"{where}: type {list_type!r} is not one of {', '.join(LIST_TYPES)}")
    raw = document.get("list")
    if isinstance(raw, Mapping):  # {entry: comment}
        raw = list(raw)
    if not isinstance(raw, list):
        raise WarninglistError(f'{where}: "list" must be an array of entries')
    types = document.get("matching_attributes") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise WarninglistError(f'{where}: "matching_attributes" must be an array of types')
    entries = [entry for entry in raw if isinstance(entry, str) and entry.strip()]
    matcher, invalid = _MATCHERS[list_type](entries)
    return Warninglist(
        name=name.strip(),
        type=list_type,
        matching_attributes=frozenset() if "ALL" in types else frozenset(types),
        entries=len(entries) - invalid,
        skipped=len(raw) - len(entries) + invalid,
        matcher=matcher,
    )


def load_warninglist(path: str | Path) -> Warninglist:
    """Read a warninglist file; `WarninglistError` (naming the file) if it cannot be used."""
    where = str(path)
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise WarninglistError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise WarninglistError(f"{where}: not JSON") from None
    return parse_warninglist(document, where)


# -- dropping indicators ----------------------------------------------------------------------


@attrs.frozen
class WarninglistFilter:
    """Drops the indicators that are on any of `lists`, counting them by list name."""

    lists: tuple[Warninglist, ...]

    def first_match(self, indicator: RawIndicator) -> Warninglist | None:
        """The first list (in order) the indicator is on, or None."""
        values: tuple[str, ...] | None = None  # normalised once, for every list
        for warninglist in self.lists:
            if not warninglist.applies_to(indicator.type):
                continue
            if values is None:
                values = comparable(indicator.type, indicator.value)
            if warninglist.match_comparable(values) is not None:
                return warninglist
        return None

    def split(
        self, indicators: Iterable[RawIndicator]
    ) -> tuple[list[RawIndicator], dict[str, int]]:
        """The indicators on no list, and how many were dropped per list name (every list
        named, with 0 when it dropped nothing)."""
        kept: list[RawIndicator] = []
        dropped = dict.fromkeys((warninglist.name for warninglist in self.lists), 0)
        for indicator in indicators:
            found = self.first_match(indicator)
            if found is None:
                kept.append(indicator)
            else:
                dropped[found.name] += 1
        return kept, dropped
