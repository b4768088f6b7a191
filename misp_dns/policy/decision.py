"""The values a policy works with: the query it is asked about and the decision it returns.

Both are small frozen attrs classes so that deciding stays a pure, synchronous function that
is cheap to call on every query and easy to test without a reactor.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["Action", "Decision", "PolicyQuery", "Provenance"]

EDE_BLOCKED = 15
EDE_FILTERED = 17


class Action(enum.Enum):
    """What a decision does to the query."""

    BLOCK = "block"
    ALLOW = "allow"


@attrs.frozen
class PolicyQuery:
    """The question a policy decides on.

    `name` is lower-case, without the trailing dot, in presentation form (IDNA labels as
    punycode), for example "www.example.com".
    """

    name: str
    qtype: int
    qclass: int = 1
    client: str = ""
    transport: str = "udp"
    edns: bool = False
    dnssec_ok: bool = False


@attrs.frozen
class Provenance:
    """Where a blocking indicator came from in MISP, for the query log."""

    event_id: str = ""
    event_uuid: str = ""
    event_info: str = ""
    attribute_uuid: str = ""


@attrs.frozen(cache_hash=True)
class Decision:
    """A policy's verdict on a query and what the answer and the query log need to say it.

    `enforced` is False in monitor mode: the query resolves normally and only the log shows
    the decision.
    """

    action: Action
    source: str
    indicator: str = ""
    report: str = ""
    ttl: int = 30
    ede_code: int | None = EDE_BLOCKED
    add_txt_report: bool = True
    add_ede: bool = True
    enforced: bool = True
    provenance: Provenance = attrs.field(factory=Provenance)

    @property
    def blocks(self) -> bool:
        """True when the answer must be the synthesized blocked answer."""
        return self.action is Action.BLOCK and self.enforced
