"""One domain indicator as MISP describes it, before and after normalising.

`RawIndicator` (in `misp_dns.interfaces`) is what a source hands over, unchanged;
`normalize` turns it into a `BlockEntry`, the form the matcher stores.
"""

from __future__ import annotations

import attrs

__all__ = ["BlockEntry"]

# MISP attribute types misp-dns blocks on; "domain|ip" holds "<domain>|<ip>".
DOMAIN = "domain"
HOSTNAME = "hostname"
DOMAIN_IP = "domain|ip"
BLOCKING_TYPES = (DOMAIN, HOSTNAME, DOMAIN_IP)


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
