"""The one rule for waiting between attempts: exponential backoff with a ceiling.

Everything in misp-dns that retries (the MISP and feed HTTP requests, the indicator refresh
after a failure, the HTTP sink, syslog reconnection) waits `backoff_delay(...)`: the first
retry after `initial` seconds, each further one twice as long, never longer than `maximum`.
HTTP requests add jitter so that many resolvers restarted together do not hit MISP in step.
"""

from __future__ import annotations

__all__ = ["backoff_delay"]

# 2**64 times any sane initial delay is far above any ceiling; beyond it floats overflow.
_MAX_DOUBLINGS = 64


def backoff_delay(failures: int, initial: float, maximum: float, jitter: float = 1.0) -> float:
    """Seconds to wait after `failures` consecutive failures (1 for the first).

    `jitter` scales the delay before the ceiling applies (HTTP passes a factor drawn from
    [0.5, 1.5)); `maximum` bounds the result.
    """
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    return min(initial * 2**doublings * jitter, maximum)
