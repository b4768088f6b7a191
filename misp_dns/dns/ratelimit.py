"""Response rate limiting per client network, so misp-dns cannot be used as an amplifier.

A UDP query's source address can be forged: an attacker sends queries "from" a victim and
the resolver floods the victim with answers. As in BIND's RRL, each client network (a /24
for IPv4, a /56 for IPv6 by default) gets a budget of responses per second; beyond it
responses are dropped, except that every `slip`-th one is sent as an empty truncated
answer, so a real client behind a busy network retries over TCP, where addresses cannot be
forged. TCP is never limited, and neither are the `exempt` networks (loopback by default).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from misp_dns.values import Network

__all__ = ["RateLimiter", "Verdict"]

# Networks tracked at once; beyond this the table starts afresh (a flood of many sources).
_MAX_TRACKED = 100_000


class Verdict(enum.Enum):
    """What to do with one response."""

    SEND = "send"
    DROP = "drop"
    SLIP = "slip"


class RateLimiter:
    """A token bucket per client network: `rate` responses a second, bursts up to `rate`."""

    def __init__(
        self,
        rate: int,
        slip: int,
        ipv4_prefix: int,
        ipv6_prefix: int,
        exempt: Sequence[Network],
        clock: IReactorTime,
    ) -> None:
        self.rate = float(rate)
        self.slip = slip
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.exempt = tuple(exempt)
        self.clock = clock
        self.limited = 0
        self._networks: dict[str, str | None] = {}
        self._buckets: dict[str, list[float]] = {}

    def check(self, client: str) -> Verdict:
        """Whether a response to `client` may go out now."""
        network = self._networks.get(client, "")
        if network == "":
            network = self._network_of(client)
        if network is None:
            return Verdict.SEND
        now = self.clock.seconds()
        bucket = self._buckets.get(network)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED:
                self._buckets.clear()
            self._buckets[network] = [self.rate - 1, now]
            return Verdict.SEND
        tokens = min(self.rate, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return Verdict.SEND
        bucket[0] = tokens
        self.limited += 1
        if self.slip and self.limited % self.slip == 0:
            return Verdict.SLIP
        return Verdict.DROP

    def _network_of(self, client: str) -> str | None:
        """The client's network as a key, or None when it is exempt (remembered)."""
        try:
            address = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            network = None
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if any(address in net for net in self.exempt if net.version == address.version):
                network = None
            else:
                prefix = self.ipv4_prefix if address.version == 4 else self.ipv6_prefix
                network = str(ipaddress.ip_network((address, prefix), strict=False))
        if len(self._networks) >= _MAX_TRACKED:
            self._networks.clear()
        self._networks[client] = network
        return network
