"""A histogram kept as plain counts: cheap to add to, read whole when metrics are scraped.

The forwarder records each upstream round trip here; the admin listener's collector turns
the counts into a Prometheus histogram at scrape time (see `misp_dns.admin.metrics`), so the
code that observes pays one `bisect` and two additions, and nothing of prometheus_client.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["UPSTREAM_BUCKETS", "Histogram"]

#: Upper bounds (seconds) for the upstream round trip: loopback answers to a dead upstream.
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observed values per bucket (`le` upper bounds, as Prometheus reads them)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must increase")
        self.bounds = tuple(bounds)
        #: One count per bound, then one for the values above every bound; not cumulative.
        self.counts = [0] * (len(self.bounds) + 1)
        #: The sum of the observed values.
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count `value` in the first bucket whose bound is at least `value`."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(bound, values at most bound) for each bound, then (inf, every value)."""
        running = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets
