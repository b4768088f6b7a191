"""What every `[[export]]` table accepts, whatever its type.

    include = "all"        # or "blocked": only queries a policy blocked (or would have, in
                           # monitor mode)
    max_queue = 100000     # records the sink may hold back while its receiver is slow or
                           # down; beyond that the newest are dropped and counted
    max_queue_bytes = 67108864   # ... and at most this many bytes of them (64 MiB)

Both bounds hold at once: whichever is reached first drops the newest records (counted in
the sink's `dropped`). The byte bound is what keeps memory in check when records are large:
at the default `max_queue` ordinary records (a few hundred bytes each) take 30 to 60 MB, so
64 MiB leaves them alone, while records of huge answers (up to `record.MAX_RECORD_BYTES`,
60 KiB, each) are held about a thousand at a time rather than a hundred thousand (6 GB).
Each sink that holds records has its own bounds, and the exporter's queue, shared by all, is
bounded by the largest of them.

Each sink's options class derives from `SinkOptions`, so the strict converter rejects any key
neither it nor the sink knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from misp_dns.values import FieldError, between

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "INCLUDE_CHOICES",
    "SinkOptions",
    "not_empty",
    "one_of",
]

INCLUDE_CHOICES = ("all", "blocked")
DEFAULT_MAX_QUEUE = 100_000
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024


def one_of(*choices: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator for a string among `choices` that names the bad value."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise FieldError(attribute.name, f"expected one of {listed}, got {value!r}")

    return check


def not_empty(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """An attrs validator for a string that must hold more than white space."""
    if not value.strip():
        raise FieldError(attribute.name, "must not be empty")


@attrs.frozen(kw_only=True)
class SinkOptions:
    """The keys every sink takes: `include`, `max_queue` and `max_queue_bytes`."""

    include: str = attrs.field(default="all", validator=one_of(*INCLUDE_CHOICES))
    max_queue: int = attrs.field(default=DEFAULT_MAX_QUEUE, validator=between(1, 10_000_000))
    # At least 1 MiB, so that a record at the size cap always finds room in an empty queue.
    max_queue_bytes: int = attrs.field(
        default=DEFAULT_MAX_QUEUE_BYTES, validator=between(1 << 20, 1 << 34)
    )
