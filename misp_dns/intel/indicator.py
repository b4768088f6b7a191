"""One indicator as MISP describes it, before and after normalising.

`RawIndicator` (in `misp_dns.interfaces`) is what a source hands over, unchanged;
`normalize` turns it into a `BlockEntry` (a name, for the domain set) or an `IpEntry` (a
network, for the response-IP set), the forms the matchers store.
"""

from __future__ import annotations

import ipaddress

import attrs

__all__ = ["BlockEntry", "IpEntry"]

# MISP attribute types misp-dns blocks on; "domain|ip" holds "<domain>|<ip>".
DOMAIN = "domain"
HOSTNAME = "hostname"
DOMAIN_IP = "domain|ip"
BLOCKING_TYPES = (DOMAIN, HOSTNAME, DOMAIN_IP)
# MISP attribute types holding an address or a CIDR range (the `|port` ones after a `|`);
# with `block_response_ips` they, and the address half of `domain|ip`, list response IPs.
IP_TYPES = ("ip-dst", "ip-src", "ip-dst|port", "ip-src|port")


def fetched_types(response_ips: bool) -> tuple[str, ...]:
    """The attribute types a blocking policy asks its source for."""
    return (*BLOCKING_TYPES, *IP_TYPES) if response_ips else BLOCKING_TYPES


@attrs.frozen
class BlockEntry:
    """A normalised name to block.

    `name` is lower-case ASCII (IDNA punycode), without a trailing dot. With `subdomains`
    (MISP `domain` and `domain|ip`) every name below it is blocked too; without (`hostname`)
    only the name itself.
    """

    name: str
    subdomains: bool
    event_id: str = ""
    event_uuid: str = ""
    event_info: str = ""
    attribute_uuid: str = ""


@attrs.frozen
class IpEntry:
    """A normalised network whose addresses must not be in an answer.

    `version` is 4 or 6, `start` the network's first address as an integer (host bits
    clear), `length` its prefix length (32 or 128 for a single address).
    """

    version: int
    start: int
    length: int
    event_id: str = ""
    event_uuid: str = ""
    event_info: str = ""
    attribute_uuid: str = ""

    @property
    def network(self) -> str:
        """The network as MISP would list it: "198.51.100.7", "203.0.113.0/24"."""
        address: ipaddress.IPv4Address | ipaddress.IPv6Address
        if self.version == 6:
            address, full = ipaddress.IPv6Address(self.start), 128
        else:
            address, full = ipaddress.IPv4Address(self.start), 32
        return str(address) if self.length == full else f"{address}/{self.length}"
