"""Turn MISP attribute values into names and networks the matchers store, or say why not.

`normalize` maps one `RawIndicator` to a `BlockEntry`:

- only the types misp-dns blocks on are accepted (`domain`, `hostname`, `domain|ip`; of
  `domain|ip` the part before the first `|` is used);
- the value is trimmed and lower-cased; a byte-order mark left at its start by a text editor,
  as such or as its mis-decoded forms `ï»¿` and `Ôªø`, is dropped;
- one trailing dot and one leading `*.` or `.` are dropped;
- Unicode labels become punycode (IDNA 2003, Python's `encodings.idna`); a label that IDNA
  refuses is rejected;
- the result must be a DNS name of letters, digits, `-` and `_`: no empty label, no label over
  63 octets, no name over 253 octets, and not an IP address (IPv4, IPv6, or a name whose last
  label is all digits, which no top-level domain is and resolvers read as an IPv4 address).

`normalize_ip` maps an address-holding attribute to an `IpEntry`, a response-IP network:
`ip-dst`, `ip-src` (an address or a CIDR range), `ip-dst|port`, `ip-src|port` (the part
before the `|`) and `domain|ip` (the part after it). IPv4 and IPv6 are taken, host bits
of a range are cleared (`203.0.113.9/24` lists `203.0.113.0/24`), an IPv4-mapped IPv6
network becomes the IPv4 one, and a range wider than an IPv4 /8 or an IPv6 /16 is refused
(`ip-too-broad`): one such mistaken indicator would block a good part of the Internet.

A rejected value raises `InvalidIndicator`, whose `reason` is one of `REASONS`. `select` does
a whole batch: it also drops what MISP did not mean to block (`to_ids` off, deleted, stale)
and counts every drop by reason, for one summary log line per update. `selected` does the same
lazily, so that a million attributes can stream into `DomainSet.build` without a list of a
million entries in between. Both take response IPs only when asked (`response_ips`);
otherwise the address types are refused as `not-a-domain-type`, as they always were.

    >>> normalize_name("  WWW.Example.COM. ")
    'www.example.com'
    >>> normalize_name("*.bücher.example")
    'xn--bcher-kva.example'
"""

from __future__ import annotations

import encodings.idna
import ipaddress
import re
import socket
from collections import Counter
from collections.abc import Iterable, Iterator

import attrs

from misp_dns.intel.indicator import (
    BLOCKING_TYPES,
    DOMAIN_IP,
    HOSTNAME,
    IP_TYPES,
    BlockEntry,
    IpEntry,
)
from misp_dns.interfaces import RawIndicator

__all__ = [
    "REASONS",
    "SKIP_REASONS",
    "InvalidIndicator",
    "Selection",
    "Tally",
    "normalize",
    "normalize_ip",
    "normalize_name",
    "normalize_network",
    "select",
    "selected",
]

# Why a value is rejected.
NOT_A_DOMAIN_TYPE = "not-a-domain-type"
EMPTY = "empty"
IP = "ip"
IDNA = "idna"
EMPTY_LABEL = "empty-label"
LABEL_TOO_LONG = "label-too-long"
NAME_TOO_LONG = "name-too-long"
BAD_CHARACTER = "bad-character"
BAD_IP = "bad-ip"
IP_TOO_BROAD = "ip-too-broad"
REASONS = (
    NOT_A_DOMAIN_TYPE,
    EMPTY,
    IP,
    IDNA,
    EMPTY_LABEL,
    LABEL_TOO_LONG,
    NAME_TOO_LONG,
    BAD_CHARACTER,
    BAD_IP,
    IP_TOO_BROAD,
)

# Why `select` leaves out an attribute MISP did not mean to block.
NOT_TO_IDS = "not-to-ids"
DELETED = "deleted"
STALE = "stale"
SKIP_REASONS = (NOT_TO_IDS, DELETED, STALE)

MAX_LABEL = 63
MAX_NAME = 253
# The widest response-IP ranges taken, per address family.
MIN_PREFIX = {4: 8, 6: 16}
_MAPPED_START = 0xFFFF << 32

# A whole valid name; the length of the name is checked apart.
_VALID = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
_BAD_CHARACTER = re.compile(r"[^a-z0-9_.-]")
# The label separators IDNA (RFC 3490, 3.1) accepts besides the ASCII full stop.
_IDNA_DOTS = re.compile("[\u3002\uff0e\uff61]")
# A byte-order mark and how it reads when its UTF-8 bytes are decoded as cp1252 or Mac Roman,
# after lower-casing (seen at the start of real feed values).
_BOM_FORMS = ("\ufeff", "ï»¿", "ôªø")


class InvalidIndicator(ValueError):
    """A value that cannot be blocked as a DNS name.

    `reason` is one of `REASONS`, short and stable enough to count and to test on; `value` is
    the offending value (the attribute type for `not-a-domain-type`).
    """

    def __init__(self, reason: str, value: str) -> None:
        super().__init__(reason, value)
        self.reason = reason
        self.value = value

    def __str__(self) -> str:
        return f"{self.reason}: {self.value!r}"


def normalize(raw: RawIndicator) -> BlockEntry:
    """Return the entry to block for `raw`, or raise `InvalidIndicator`.

    `domain` and `domain|ip` block the name and everything below it; `hostname` the name only.
    """
    if raw.type not in BLOCKING_TYPES:
        raise InvalidIndicator(NOT_A_DOMAIN_TYPE, raw.type)
    value = raw.value.partition("|")[0] if raw.type == DOMAIN_IP else raw.value
    return BlockEntry(
        name=normalize_name(value),
        subdomains=raw.type != HOSTNAME,
        event_id=raw.event_id,
        event_uuid=raw.event_uuid,
        event_info=raw.event_info,
        attribute_uuid=raw.attribute_uuid,
    )


def normalize_ip(raw: RawIndicator) -> IpEntry:
    """Return the response-IP network `raw` lists, or raise `InvalidIndicator`.

    `raw.type` is one of `IP_TYPES` or `domain|ip`; anything else is `not-a-domain-type`.
    """
    if raw.type == DOMAIN_IP:
        value = raw.value.partition("|")[2]
    elif raw.type in IP_TYPES:
        value = raw.value.partition("|")[0] if raw.type.endswith("|port") else raw.value
    else:
        raise InvalidIndicator(NOT_A_DOMAIN_TYPE, raw.type)
    version, start, length = normalize_network(value)
    return IpEntry(
        version,
        start,
        length,
        event_id=raw.event_id,
        event_uuid=raw.event_uuid,
        event_info=raw.event_info,
        attribute_uuid=raw.attribute_uuid,
    )


def normalize_network(value: str) -> tuple[int, int, int]:
    """(4 or 6, first address as an integer, prefix length) of an address or CIDR range.

    Raises `InvalidIndicator` with `bad-ip` when `value` is neither, `ip-too-broad` for a
    range wider than `MIN_PREFIX` allows.
    """
    text = value.strip()
    address, slash, prefix = text.partition("/")
    address = address.strip().removeprefix("[").removesuffix("]")
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except (OSError, ValueError):
        raise InvalidIndicator(BAD_IP, value) from None
    bits = 8 * len(packed)
    prefix = prefix.strip()
    if slash and not (prefix.isascii() and prefix.isdigit() and int(prefix) <= bits):
        raise InvalidIndicator(BAD_IP, value)
    length = int(prefix) if slash else bits
    start = int.from_bytes(packed, "big") >> (bits - length) << (bits - length)
    version = 4 if bits == 32 else 6
    if version == 6 and length >= 96 and start >> 32 == _MAPPED_START >> 32:
        version, start, length = 4, start & 0xFFFFFFFF, length - 96
    if length < MIN_PREFIX[version]:
        raise InvalidIndicator(IP_TOO_BROAD, value)
    return version, start, length


def normalize_name(value: str) -> str:
    """Return `value` as a lower-case ASCII DNS name without a trailing dot.

    Raises `InvalidIndicator` when it is not a usable name. The result is a fixed point:
    normalising it again returns it unchanged.
    """
    name = value.strip().lower()
    if not name.isascii():
        name = _IDNA_DOTS.sub(".", _drop_bom(name))
    name = name.removesuffix(".")
    if name.startswith("*."):
        name = name[2:]
    elif name.startswith("."):
        name = name[1:]
    if _is_valid(name):
        return name
    return _checked(value, name)


def _drop_bom(name: str) -> str:
    for bom in _BOM_FORMS:
        if name.startswith(bom):
            return name[len(bom) :].lstrip()
    return name


def _is_valid(name: str) -> bool:
    return (
        len(name) <= MAX_NAME
        and _VALID.fullmatch(name) is not None
        and not name.rpartition(".")[2].isdigit()
    )


def _checked(value: str, name: str) -> str:
    """Convert Unicode labels, then find the first rule `name` breaks."""
    if not name:
        raise InvalidIndicator(EMPTY, value)
    if _is_ip_address(name):
        raise InvalidIndicator(IP, value)
    if not name.isascii():
        labels = name.split(".")
        if "" in labels:
            raise InvalidIndicator(EMPTY_LABEL, value)
        name = ".".join(_to_ascii(label, value) for label in labels)
        if _is_valid(name):
            return name
    labels = name.split(".")
    if "" in labels:
        raise InvalidIndicator(EMPTY_LABEL, value)
    if any(len(label) > MAX_LABEL for label in labels):
        raise InvalidIndicator(LABEL_TOO_LONG, value)
    if len(name) > MAX_NAME:
        raise InvalidIndicator(NAME_TOO_LONG, value)
    if _BAD_CHARACTER.search(name):
        raise InvalidIndicator(BAD_CHARACTER, value)
    # Every other rule holds, so the last label is all digits.
    raise InvalidIndicator(IP, value)


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def _to_ascii(label: str, value: str) -> str:
    if label.isascii():
        return label
    try:
        return encodings.idna.ToASCII(label).decode("ascii")
    except UnicodeError:
        raise InvalidIndicator(IDNA, value) from None


@attrs.frozen
class Selection:
    """The entries to block from one batch of attributes, and what was left out and why.

    `kept` holds names (`BlockEntry`) and, with response IPs, networks (`IpEntry`); a
    `domain|ip` attribute may give one of each. `rejected` counts unusable values by
    `REASONS`; `skipped` counts attributes MISP did not mean to block by `SKIP_REASONS`.
    Reasons with no count are absent.
    """

    kept: list[BlockEntry | IpEntry]
    rejected: dict[str, int]
    skipped: dict[str, int]

    def summary(self) -> str:
        """One line for the log, such as "kept 60123, rejected 12 (ip: 5, bad-character: 7)"."""
        networks = sum(1 for entry in self.kept if isinstance(entry, IpEntry))
        return _summary(len(self.kept), networks, self.rejected, self.skipped)


@attrs.define
class Tally:
    """What `selected` kept (`networks` of it response IPs), rejected and skipped so far."""

    kept: int = 0
    rejected: Counter[str] = attrs.field(factory=Counter)
    skipped: Counter[str] = attrs.field(factory=Counter)
    networks: int = 0

    def summary(self) -> str:
        """One line for the log, in the same form as `Selection.summary`."""
        return _summary(self.kept, self.networks, self.rejected, self.skipped)


def select(
    raws: Iterable[RawIndicator],
    *,
    now: float,
    max_age: float | None,
    response_ips: bool = False,
) -> Selection:
    """Normalise the attributes MISP means to block, in order, counting the others.

    Left out: `to_ids` false, `deleted` true, and, when `max_age` (seconds) is given, those
    last seen before `now - max_age`: by `last_seen` when MISP has one, else by the
    attribute's `timestamp` (its last change); an attribute with neither is never stale.
    With `response_ips`, the address types and the address half of `domain|ip` give
    `IpEntry` networks too.
    """
    tally = Tally()
    kept = list(selected(raws, now=now, max_age=max_age, tally=tally, response_ips=response_ips))
    return Selection(kept=kept, rejected=dict(tally.rejected), skipped=dict(tally.skipped))


def selected(
    raws: Iterable[RawIndicator],
    *,
    now: float,
    max_age: float | None,
    tally: Tally,
    response_ips: bool = False,
) -> Iterator[BlockEntry | IpEntry]:
    """Yield what `select` would keep, one entry at a time, counting into `tally`.

    `tally` is complete once the iterator is exhausted.
    """
    oldest = None if max_age is None else now - max_age
    rejected, skipped = tally.rejected, tally.skipped
    for raw in raws:
        if not raw.to_ids:
            skipped[NOT_TO_IDS] += 1
        elif raw.deleted:
            skipped[DELETED] += 1
        elif oldest is not None and _last_known(raw) < oldest:
            skipped[STALE] += 1
        elif response_ips and (raw.type in IP_TYPES or raw.type == DOMAIN_IP):
            yield from _with_network(raw, tally)
        else:
            try:
                entry = normalize(raw)
            except InvalidIndicator as error:
                rejected[error.reason] += 1
            else:
                tally.kept += 1
                yield entry


def _with_network(raw: RawIndicator, tally: Tally) -> Iterator[BlockEntry | IpEntry]:
    """The entries of an address-holding attribute: its name (`domain|ip`), its network.

    Only when neither half is usable is the attribute counted as rejected, by the reason
    of its name half (`domain|ip`) or its address.
    """
    reason = ""
    if raw.type == DOMAIN_IP:
        try:
            name = normalize(raw)
        except InvalidIndicator as error:
            reason = error.reason
        else:
            tally.kept += 1
            yield name
    try:
        network = normalize_ip(raw)
    except InvalidIndicator as error:
        if raw.type != DOMAIN_IP:
            tally.rejected[error.reason] += 1
        elif reason:
            tally.rejected[reason] += 1
    else:
        tally.kept += 1
        tally.networks += 1
        yield network


def _last_known(raw: RawIndicator) -> float:
    """When the indicator was last known to be live: last_seen, else its last change."""
    if raw.last_seen is not None:
        return raw.last_seen
    if raw.timestamp is not None:
        return raw.timestamp
    return float("inf")


def _summary(kept: int, networks: int, rejected: dict[str, int], skipped: dict[str, int]) -> str:
    parts = [f"kept {kept}"]
    if networks:
        parts[0] += f" (names: {kept - networks}, response IPs: {networks})"
    if sum(skipped.values()):
        parts.append(_counted("skipped", skipped))
    parts.append(_counted("rejected", rejected))
    return ", ".join(parts)


def _counted(what: str, counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return f"{what} 0"
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return f"{what} {total} ({', '.join(f'{reason}: {n}' for reason, n in ordered)})"
