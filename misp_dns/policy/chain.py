"""The policy chain: asks each configured policy in order; the first decision wins."""

from __future__ import annotations

from collections.abc import Sequence

from misp_dns.interfaces import Decision, IPolicy, PolicyQuery

__all__ = ["PolicyChain"]


class PolicyChain:
    """The `[[policy]]` tables, in config order.

    A policy that answers None has no opinion and the next one is asked; a block or an
    allow decision stops the chain.
    """

    def __init__(self, policies: Sequence[IPolicy] = ()) -> None:
        self.policies = tuple(policies)

    def __bool__(self) -> bool:
        return bool(self.policies)

    def decide(self, query: PolicyQuery) -> Decision | None:
        """The first decision any policy makes about `query`, or None."""
        for policy in self.policies:
            decision = policy.decide(query)
            if decision is not None:
                return decision
        return None
