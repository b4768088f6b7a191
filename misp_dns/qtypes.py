"""Names of DNS record types: the query log's `questionType`/`recordType`, metric labels, and
the TYPE argument of `explain`.

Twisted's table lacks most types in use today (HTTPS, SVCB, DS, CAA, ...), so the rest are
listed here from the IANA registry. Metrics label a type not listed `other`, so that a client
sending random types cannot grow the number of series without bound.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.names import dns

__all__ = ["OTHER", "QTYPE_NAMES", "qtype_from_text", "qtype_label", "qtype_name"]

OTHER = "other"

# IANA mnemonics of record types (RFC 3597 `TYPE<n>` for the rest).
QTYPE_NAMES: Mapping[int, str] = {
    **{code: name for code, name in dns.QUERY_TYPES.items() if code != 41},
    19: "X25",
    20: "ISDN",
    21: "RT",
    22: "NSAP",
    23: "NSAP-PTR",
    24: "SIG",
    25: "KEY",
    26: "PX",
    27: "GPOS",
    29: "LOC",
    30: "NXT",
    34: "ATMA",
    36: "KX",
    37: "CERT",
    40: "SINK",
    41: "OPT",
    42: "APL",
    43: "DS",
    45: "IPSECKEY",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    49: "DHCID",
    50: "NSEC3",
    51: "NSEC3PARAM",
    52: "TLSA",
    53: "SMIMEA",
    55: "HIP",
    59: "CDS",
    60: "CDNSKEY",
    61: "OPENPGPKEY",
    62: "CSYNC",
    63: "ZONEMD",
    64: "SVCB",
    65: "HTTPS",
    108: "EUI48",
    109: "EUI64",
    251: "IXFR",
    252: "AXFR",
    253: "MAILB",
    254: "MAILA",
    255: "ANY",
    256: "URI",
    257: "CAA",
    32768: "TA",
    32769: "DLV",
}

_BY_NAME = {name: number for number, name in QTYPE_NAMES.items()}


def qtype_label(qtype: int) -> str:
    """The metric label of a query type: its name, or `other` for one not listed."""
    return QTYPE_NAMES.get(qtype, OTHER)


def qtype_name(qtype: int) -> str:
    """The presentation name of any type: its mnemonic, or TYPE<n> (RFC 3597)."""
    return QTYPE_NAMES.get(qtype) or f"TYPE{qtype}"


def qtype_from_text(text: str) -> int:
    """ "AAAA", "aaaa", "TYPE65" or "65" as a type number; ValueError if it is none of them."""
    upper = text.strip().upper()
    if upper in _BY_NAME:
        return _BY_NAME[upper]
    digits = upper.removeprefix("TYPE")
    if digits.isdigit() and 0 < int(digits) < 65536:
        return int(digits)
    raise ValueError(f"unknown query type {text!r}")
