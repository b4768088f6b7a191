"""The policy chain: first decision wins, and a policy that raises costs one log line."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from misp_dns.interfaces import Action, Decision, PolicyQuery
from misp_dns.policy.chain import POLICY_FAILED, PolicyChain

SECRET = "Sk7Vq2Xz9Lm4Np8Rt3Wb6Hc1Jd5Gf0Ya4Ue8Io2P"


class Broken:
    """A policy with a bug: it raises on every query, its error quoting its API key."""

    def __init__(self, name: str = "broken") -> None:
        self.name = name

    def decide(self, query: PolicyQuery) -> Decision | None:
        raise KeyError(f"no such indicator with key {SECRET}")


class Quiet:
    """A policy with no opinion."""

    name = "quiet"

    def decide(self, query: PolicyQuery) -> None:
        return None


class BlockAll:
    """A policy that blocks everything."""

    name = "block-all"

    def decide(self, query: PolicyQuery) -> Decision:
        return Decision(Action.BLOCK, "block-all", query.name)


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


def test_first_decision_wins() -> None:
    """A policy with no opinion passes the query on; the first decision stops the chain,
    so a broken policy after it is not even asked."""
    chain = PolicyChain([Quiet(), BlockAll(), Broken()])
    decision = chain.decide(PolicyQuery("evil.test", 1))
    assert decision is not None and decision.source == "block-all"


@pytest.mark.allow_errors
def test_a_raising_policy_fails_the_query_with_one_log_line_per_minute() -> None:
    """The query fails (the resolver answers SERVFAIL) and one line names the policy by
    its place in the chain and its type, the error's type and where it was raised, never
    its message (which may hold a secret) nor a traceback. More failures of that policy
    within a minute are counted into its next line, not logged one by one."""
    clock = Clock()
    chain = PolicyChain([Quiet(), Broken("tld-block")], now=clock.seconds)
    with capturedLogs() as events:
        assert chain.decide(PolicyQuery("a.test", 1)) is POLICY_FAILED
        for _ in range(999):
            assert chain.decide(PolicyQuery("b.test", 1)) is POLICY_FAILED
        clock.advance(60)
        assert chain.decide(PolicyQuery("c.test", 1)) is POLICY_FAILED
    first, second = lines(events)
    assert first.startswith("policy[1] (tld-block) raised KeyError in ")
    assert "test_chain.py" in first and "decide" in first
    assert "1 query answered SERVFAIL" in first
    assert "1000 queries answered SERVFAIL" in second
    assert all(SECRET[:10] not in line for line in (first, second))
    assert all("log_failure" not in event for event in events)
    assert chain.failures == 1001


@pytest.mark.allow_errors
def test_each_failing_policy_gets_its_own_line() -> None:
    """Two broken policies are two problems: each is reported, even within one minute."""
    clock = Clock()
    first, second = Broken("one"), Broken("two")
    chains = PolicyChain([first], now=clock.seconds), PolicyChain([second], now=clock.seconds)
    with capturedLogs() as events:
        for chain in chains:
            chain.decide(PolicyQuery("a.test", 1))
    assert [line.split(" raised")[0] for line in lines(events)] == [
        "policy[0] (one)",
        "policy[0] (two)",
    ]
