"""Which clients may use the resolver (`server.allow_clients`); the rest get REFUSED."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from misp_dns.values import Network

__all__ = ["ClientACL"]

_REMEMBERED = 65536


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
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks if network.version == ip.version)
