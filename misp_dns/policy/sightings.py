"""Handing blocks to the sightings reporter of the policy that blocked them.

`SightingsTally.count` is a responder tally (called with the transport, the question and
the answer of every answered query). For an answer carrying a blocking decision, enforced
or in monitor mode, it finds the policy of the chain in service that made the decision and,
when that policy posts sightings, notes the block with its reporter
(`SightingsReporter.sight`, a dict operation). A decision says which indicator it is for
but not which policy gave it, and two `misp` policies share a source; so the owner is
found once per decision object (`MispBlockingPolicy.made`) and remembered by the object's
id, which keeps a repeated block to two dict look-ups. The memo starts afresh when a reload
puts another chain in service.

`tap.build_service` installs it only while some policy of the chain posts sightings
(`wants_sightings`), so a server without them pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from misp_dns.event import Answer
from misp_dns.intel.sightings import SightingsReporter
from misp_dns.interfaces import Action, Decision, IPolicy
from misp_dns.policy.chain import PolicyChain
from misp_dns.policy.misp import MispBlockingPolicy

__all__ = ["OWNER_MEMO", "SightingsTally", "wants_sightings"]

#: Decisions whose owner is remembered; beyond it the memo starts afresh.
OWNER_MEMO = 65536

_BLOCK = Action.BLOCK


def wants_sightings(policies: Iterable[IPolicy]) -> bool:
    """True when a policy among `policies` posts sightings."""
    return any(
        isinstance(policy, MispBlockingPolicy) and policy.sightings is not None
        for policy in policies
    )


class SightingsTally:
    """Notes each blocked query with the sightings reporter of the policy that blocked it."""

    def __init__(self, chain: Callable[[], PolicyChain]) -> None:
        self._chain = chain
        self._for: PolicyChain | None = None
        # id(decision) -> (the decision, kept so that the id stays its own; its reporter)
        self._owners: dict[int, tuple[Decision, SightingsReporter | None]] = {}

    def count(self, transport: str, question: bytes, answer: Answer) -> None:
        """Note `answer`'s block, if a policy with sightings made it (a responder tally)."""
        decision = answer.decision
        if decision is None or decision.action is not _BLOCK:
            return
        chain = self._chain()
        if chain is not self._for:
            self._for = chain
            self._owners.clear()
        known = self._owners.get(id(decision))
        if known is None:
            if len(self._owners) >= OWNER_MEMO:
                self._owners.clear()
            known = self._owners[id(decision)] = (decision, _reporter_of(chain, decision))
        reporter = known[1]
        if reporter is not None:
            reporter.sight(decision.indicator, decision.provenance.attribute_uuid)


def _reporter_of(chain: PolicyChain, decision: Decision) -> SightingsReporter | None:
    """The reporter of the first policy that made `decision` (None if it posts none)."""
    for policy in chain.policies:
        if isinstance(policy, MispBlockingPolicy) and policy.made(decision):
            return policy.sightings
    return None
