"""Which clients may use the resolver (`server.allow_clients`); the rest get REFUSED.

Also the two ways the listeners name a client: its address as the query log shows it (an
IPv4 client of a dual-stack IPv6 socket as plain IPv4, `plain_address`), and the network
it belongs to for per-network limits (`client_network`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from misp_dns.values import Network

__all__ = ["ClientACL", "client_network", "plain_address"]

_REMEMBERED = 65536
_MAPPED = "::ffff:"


def plain_address(host: str) -> str:
    """`host`, with an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) given as IPv4."""
    if host.startswith(_MAPPED) and "." in host:
        return host[len(_MAPPED) :]
    return host


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of `address` (scope left out, IPv4-mapped read as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_network(address: str, ipv4_prefix: int, ipv6_prefix: int) -> Network | None:
    """The network of `address`: its /`ipv4_prefix` or /`ipv6_prefix`; None if no IP."""
    ip = _ip(address)
    if ip is None:
        return None
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return ipaddress.ip_network((ip, prefix), strict=False)


class ClientACL:
    """Matches client addresses against allowed networks, remembering recent verdicts."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)
        self._verdicts: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        """True when `address` (IPv4, IPv6 or IPv4-mapped IPv6) is in an allowed network."""
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._decide(address)
            if len(self._verdicts) >= _REMEMBERED:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _decide(self, address: str) -> bool:
        ip = _ip(address)
        if ip is None:
            return False
        return any(ip in network for network in self._networks if network.version == ip.version)
