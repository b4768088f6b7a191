"""The policy chain: asks each configured policy in order; the first decision wins.

It also judges answers (`decide_answer`): the policies that provide `IAnswerPolicy` are
asked, in order, about the names an answer's CNAME/DNAME chain passes through and the
addresses it holds. A chain name that the chain allows when asked about it alone (an
allowlisted name, an allowlist placed before the blocking policies) is no trigger, but the
rest of the chain still is: an allowlisted CDN in the middle of a chain cannot launder a
listed name before it. Whether the question's own name is allowed is the resolver's
business: it asks about answers only for questions no policy had an opinion on.

A policy that raises does not take the query down with it: the chain returns
`POLICY_FAILED`, which the resolver answers with SERVFAIL (and records as ServerFailure)
without forwarding the question, since no policy could say it was safe. The failure is
logged as one line naming the policy by its place in the chain and its type, the error's
type and the line that raised it, at most once a minute per policy; the failures in
between are counted into the next line. A broken policy fails on every query, tens of
thousands a second, so a line (let alone a traceback) per failure would flood the log and
slow the very path it reports on, while the first line still comes at once. The error's
message is left out: it can hold anything, an API key or a URL with credentials, and the
type and place are what finding the bug takes.

A policy whose decision depends on the question's name and class alone (the built-in ones)
may offer `decide_name(name, qclass)`, giving what `decide` gives for any query of that
name and class; the chain's `decide_plain` then asks it so, and builds a `PolicyQuery`
(once) only for a policy without it. This is not part of `IPolicy`: a policy that never
offers it is asked as before. When every policy of the chain offers it (`names_only`),
the chain's decision about a query depends on its name and class alone and changes only
with the chain's `generation`: the responder then keeps whole answers per question (see
`misp_dns.dns.server`). A policy whose name decisions can change must therefore also be
an `IAnswerPolicy` whose `generation` grows when they do, as the built-in ones are (the
allowlist never changes: a reload builds a new chain).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.logger import Logger

from misp_dns.interfaces import Action, Decision, IAnswerPolicy, IPolicy, PolicyQuery

__all__ = ["POLICY_FAILED", "REPORT_INTERVAL", "PolicyChain"]

# Seconds between two log lines about the same failing policy.
REPORT_INTERVAL = 60.0

# What `PolicyChain.decide` returns when a policy raised. It is an enforced block, so a
# caller that did not know of it would still not let the query through; the resolver
# answers it with SERVFAIL.
POLICY_FAILED = Decision(
    Action.BLOCK, "policy-failure", ede_code=None, add_txt_report=False, add_ede=False
)


class PolicyChain:
    """The `[[policy]]` tables, in config order.

    A policy that answers None has no opinion and the next one is asked; a block or an
    allow decision stops the chain. `now` is the clock that spaces out failure reports.
    """

    log = Logger()

    def __init__(
        self, policies: Sequence[IPolicy] = (), *, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.policies = tuple(policies)
        # Asked once here, not per answer.
        self.answer_policies = tuple(p for p in self.policies if IAnswerPolicy.providedBy(p))
        self.failures = 0
        # Per policy, in order: its `decide_name` if it offers one.
        self._asking: tuple[tuple[IPolicy, Callable[[str, int], Any] | None], ...] = tuple(
            (policy, getattr(policy, "decide_name", None)) for policy in self.policies
        )
        #: Whether every policy decides by name and class alone (offers `decide_name`).
        self.names_only = all(decide is not None for _, decide in self._asking)
        self._now = now
        # Per policy index: when it was last reported, and its failures since.
        self._reported: dict[int, tuple[float, int]] = {}

    def __bool__(self) -> bool:
        return bool(self.policies)

    def decide(self, query: PolicyQuery) -> Decision | None:
        """The first decision any policy makes about `query`, None, or `POLICY_FAILED`."""
        try:
            for policy in self.policies:
                decision = policy.decide(query)
                if decision is not None:
                    return decision
        except Exception as error:
            self._failed(policy, error)
            return POLICY_FAILED
        return None

    def decide_plain(
        self,
        name: str,
        qtype: int,
        qclass: int,
        client: str,
        transport: str,
        edns: bool,
        dnssec_ok: bool,
    ) -> Decision | None:
        """`decide` of the `PolicyQuery` of these fields, built only if a policy needs it."""
        query = None
        try:
            for policy, decide_name in self._asking:
                if decide_name is not None:
                    decision = decide_name(name, qclass)
                else:
                    if query is None:
                        query = PolicyQuery(name, qtype, qclass, client, transport, edns, dnssec_ok)
                    decision = policy.decide(query)
                if decision is not None:
                    return decision
        except Exception as error:
            self._failed(policy, error)
            return POLICY_FAILED
        return None

    def generation(self) -> int:
        """A number that changes whenever any answer policy's `generation` grows.

        Each one only grows, so their sum changes exactly when one of them does; it says
        nothing across two chains (a reload builds a new one).
        """
        total = 0
        for policy in self.answer_policies:
            total += policy.generation
        return total

    def decide_answer(
        self, query: PolicyQuery, names: tuple[str, ...], addresses: tuple[bytes, ...]
    ) -> Decision | None:
        """The first answer policy's verdict on an answer to `query`, None, or
        `POLICY_FAILED`; `names` and `addresses` as `IAnswerPolicy.decide_answer` takes
        them, the allowed names still among `names` (they are taken out here)."""
        if not self.answer_policies or not (names or addresses):
            return None
        if names:
            names = tuple(name for name in names if not self._allowed(query, name))
            if not (names or addresses):
                return None
        try:
            for policy in self.answer_policies:
                decision = policy.decide_answer(query, names, addresses)
                if decision is not None:
                    return decision
        except Exception as error:
            self._failed(policy, error)
            return POLICY_FAILED
        return None

    def _allowed(self, query: PolicyQuery, name: str) -> bool:
        decision = self.decide(attrs.evolve(query, name=name))
        return decision is not None and decision.action is Action.ALLOW

    def _failed(self, policy: IPolicy, error: Exception) -> None:
        self.failures += 1
        index = self.policies.index(policy)
        now = self._now()
        reported = self._reported.get(index)
        if reported is not None and now - reported[0] < REPORT_INTERVAL:
            self._reported[index] = (reported[0], reported[1] + 1)
            return
        count = 1 if reported is None else reported[1] + 1
        self._reported[index] = (now, 0)
        self.log.error(
            "policy[{index}] ({name}) raised {error} in {where}: {count} {queries} answered"
            " SERVFAIL since the last report",
            index=index,
            name=getattr(policy, "name", type(policy).__name__),
            error=type(error).__name__,
            where=_where(error),
            count=count,
            queries="query" if count == 1 else "queries",
        )


def _where(error: Exception) -> str:
    """The file, line and function where `error` was raised."""
    trace = error.__traceback__
    if trace is None:
        return "an unknown place"
    while trace.tb_next is not None:
        trace = trace.tb_next
    code = trace.tb_frame.f_code
    return f"{code.co_filename}:{trace.tb_lineno} ({code.co_name})"
