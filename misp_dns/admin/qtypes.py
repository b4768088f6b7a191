"""Names of DNS query types, for metric labels and for the TYPE argument of `explain`.

Twisted's table lacks most types in use today (HTTPS, SVCB, DS, CAA, ...), so the common ones
are listed here from the IANA registry. Metrics label any other type `other`, so that a
client sending random types cannot grow the number of series without bound.
"""

from __future__ import annotations

__all__ = ["OTHER", "QTYPE_NAMES", "qtype_from_text", "qtype_label", "qtype_name"]

OTHER = "other"

QTYPE_NAMES: dict[int, str] = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    17: "RP",
    18: "AFSDB",
    24: "SIG",
    25: "KEY",
    28: "AAAA",
    29: "LOC",
    33: "SRV",
    35: "NAPTR",
    36: "KX",
    37: "CERT",
    39: "DNAME",
    42: "APL",
    43: "DS",
    44: "SSHFP",
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
    99: "SPF",
    249: "TKEY",
    250: "TSIG",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
    256: "URI",
    257: "CAA",
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
