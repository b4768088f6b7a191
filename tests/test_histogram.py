"""The plain-count histogram behind misp_dns_upstream_seconds."""

from __future__ import annotations

import math

import pytest

from misp_dns.histogram import Histogram


def test_values_land_in_the_first_bucket_at_least_as_large() -> None:
    """A value equal to a bound counts under that bound (Prometheus's `le`), larger ones
    under the next; values above every bound count only in +Inf."""
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert histogram.count == 5
    assert histogram.total == pytest.approx(8.65)


def test_bounds_must_increase() -> None:
    """Unsorted or repeated bounds are a programming error, caught at once."""
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError):
        Histogram((1.0, 1.0))
