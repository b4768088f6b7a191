"""What every `[[export]]` table accepts, whatever its type.

    include = "all"        # or "blocked": only queries a policy blocked (or would have, in
                           # monitor mode)
    max_queue = 100000     # records the sink may hold back while its receiver is slow or
                           # down; beyond that the newest are dropped and counted

Each sink's options class derives from `SinkOptions`, so the strict converter rejects any key
neither it nor the sink knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from misp_dns.values import FieldError, between

__all__ = ["INCLUDE_CHOICES", "SinkOptions", "not_empty", "one_of"]

INCLUDE_CHOICES = ("all", "blocked")


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
    """The keys every sink takes: `include` and `max_queue`."""

    include: str = attrs.field(default="all", validator=one_of(*INCLUDE_CHOICES))
    max_queue: int = attrs.field(default=100_000, validator=between(1, 10_000_000))
