"""The policy chain: first decision wins, and a policy that raises costs one log line."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from misp_dns.interfaces import Action, Decision, IAnswerPolicy, PolicyQuery
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


# -- judging answers ------------------------------------------------------------------------


@implementer(IAnswerPolicy)
class ListedNames:
    """An answer policy listing some names and addresses, recording what it was asked."""

    def __init__(self, name: str, names: set[str], addresses: frozenset[bytes] = frozenset()):
        self.name = name
        self.names = names
        self.addresses = addresses
        self.generation = 0
        self.asked: list[tuple[tuple[str, ...], tuple[bytes, ...]]] = []
        self.service = None

    def whenReady(self) -> None:
        return None

    def decide(self, query: PolicyQuery) -> Decision | None:
        if query.name in self.names:
            return Decision(Action.BLOCK, self.name, query.name)
        return None

    def decide_answer(
        self, query: PolicyQuery, names: tuple[str, ...], addresses: tuple[bytes, ...]
    ) -> Decision | None:
        self.asked.append((names, addresses))
        for name in names:
            if name in self.names:
                return Decision(Action.BLOCK, self.name, name, trigger="cname")
        for address in addresses:
            if address in self.addresses:
                return Decision(Action.BLOCK, self.name, address.hex(), trigger="ip")
        return None


class AllowNames:
    """An allowlist-like policy (no answer judging of its own)."""

    name = "allow"

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def decide(self, query: PolicyQuery) -> Decision | None:
        if query.name in self.names:
            return Decision(Action.ALLOW, "allow", query.name)
        return None


QUESTION = PolicyQuery("innocent.example", 1)


def test_answer_policies_are_found_once_and_asked_in_order() -> None:
    """Only policies providing IAnswerPolicy judge answers; the first verdict wins."""
    first, second = ListedNames("first", {"b.test"}), ListedNames("second", {"a.test"})
    chain = PolicyChain([Quiet(), first, BlockAll(), second])
    assert chain.answer_policies == (first, second)
    verdict = chain.decide_answer(QUESTION, ("a.test", "b.test"), ())
    assert verdict is not None and (verdict.source, verdict.indicator) == ("first", "b.test")
    assert second.asked == []
    assert PolicyChain([Quiet(), BlockAll()]).decide_answer(QUESTION, ("a.test",), ()) is None


def test_an_allowed_chain_name_is_no_trigger_but_the_names_around_it_are() -> None:
    """A name the chain allows when asked alone (allowlisted) is taken out of the chain
    before the answer policies see it; a listed name before or after it still blocks."""
    misp = ListedNames("misp", {"cdn.allowed.example", "evil.test"})
    chain = PolicyChain([AllowNames({"cdn.allowed.example"}), misp])
    assert chain.decide_answer(QUESTION, ("cdn.allowed.example",), ()) is None
    verdict = chain.decide_answer(QUESTION, ("evil.test", "cdn.allowed.example"), ())
    assert verdict is not None and verdict.indicator == "evil.test"
    assert misp.asked[-1] == (("evil.test",), ())


def test_an_allowlist_after_the_blocking_policy_does_not_clear_a_chain_name() -> None:
    """First decision wins for chain names as for questions: a blocking policy placed
    before the allowlist blocks a name the allowlist lists."""
    misp = ListedNames("misp", {"evil.test"})
    chain = PolicyChain([misp, AllowNames({"evil.test"})])
    assert chain.decide_answer(QUESTION, ("evil.test",), ()) is not None


def test_addresses_are_judged_too() -> None:
    """An answer with no chain but a listed address gets the policy's verdict."""
    listed = bytes([203, 0, 113, 7])
    chain = PolicyChain([ListedNames("misp", set(), {listed})])
    verdict = chain.decide_answer(QUESTION, (), (bytes([192, 0, 2, 1]), listed))
    assert verdict is not None and verdict.trigger == "ip"


def test_the_generation_changes_when_any_answer_policy_grows_its_own() -> None:
    """The chain's generation moves exactly when one of its answer policies' does."""
    first, second = ListedNames("first", set()), ListedNames("second", set())
    chain = PolicyChain([first, Quiet(), second])
    before = chain.generation()
    assert chain.generation() == before
    second.generation += 1
    moved = chain.generation()
    assert moved != before
    first.generation += 3
    assert chain.generation() not in (before, moved)


@pytest.mark.allow_errors
def test_an_answer_policy_that_raises_fails_the_answer_with_one_log_line() -> None:
    """A bug in `decide_answer` gives POLICY_FAILED (SERVFAIL) and the usual log line."""

    class BrokenAnswers(ListedNames):
        def decide_answer(self, *args: Any) -> Decision | None:
            raise ValueError(SECRET)

    chain = PolicyChain([Quiet(), BrokenAnswers("tld-block", set())])
    with capturedLogs() as events:
        assert chain.decide_answer(QUESTION, ("a.test",), ()) is POLICY_FAILED
    (line,) = lines(events)
    assert line.startswith("policy[1] (tld-block) raised ValueError in ")
    assert SECRET[:10] not in line


def test_the_answer_policy_double_keeps_to_the_interface() -> None:
    """The test double above provides IAnswerPolicy, so these tests say what the chain
    does with a real one."""
    assert verifyObject(IAnswerPolicy, ListedNames("x", set()))


class ByName:
    """A policy deciding on the name alone, offering `decide_name`; it counts how it is
    asked, and raises for a name it is told to."""

    name = "by-name"

    def __init__(self, blocked: str, broken: str = "") -> None:
        self.blocked, self.broken = blocked, broken
        self.full: list[PolicyQuery] = []

    def decide(self, query: PolicyQuery) -> Decision | None:
        self.full.append(query)
        return self.decide_name(query.name, query.qclass)

    def decide_name(self, name: str, qclass: int) -> Decision | None:
        if name == self.broken:
            raise ValueError(name)
        return Decision(Action.BLOCK, "by-name", name) if name == self.blocked else None


class ByClient:
    """A policy that looks at the whole query: it allows one client, whatever it asks."""

    name = "by-client"

    def __init__(self) -> None:
        self.asked: list[PolicyQuery] = []

    def decide(self, query: PolicyQuery) -> Decision | None:
        self.asked.append(query)
        return Decision(Action.ALLOW, "by-client") if query.client == "192.0.2.9" else None


def test_a_plain_question_reaches_every_policy_as_the_whole_query_would() -> None:
    """`decide_plain` gives what `decide` gives: the name-only policy is asked by name,
    the first decision still wins, and a policy without `decide_name` gets the whole query,
    client and all (built once, for it alone)."""
    by_name, by_client = ByName("evil.test"), ByClient()
    chain = PolicyChain([by_name, by_client, Quiet()])
    fields = ("fine.test", 28, 1, "192.0.2.9", "tcp", True, True)
    assert chain.decide_plain(*fields) == chain.decide(PolicyQuery(*fields))
    decision = chain.decide_plain(*fields)
    assert decision is not None and decision.source == "by-client"
    assert by_client.asked[-1] == PolicyQuery(*fields)
    blocked = chain.decide_plain("evil.test", 1, 1, "192.0.2.9", "udp", False, False)
    assert blocked is not None and blocked.source == "by-name"
    assert by_client.asked[-1].name == "fine.test"  # the chain stopped at the block
    assert len(by_name.full) == 1  # only `decide` itself built its query for it
    assert chain.decide_plain("fine.test", 1, 1, "192.0.2.1", "udp", False, False) is None


@pytest.mark.allow_errors
def test_a_name_only_policy_that_raises_fails_the_query_too() -> None:
    """A raising `decide_name` is a failing policy like any other: SERVFAIL's decision and
    a log line naming it, and the policies after it are not asked."""
    by_client = ByClient()
    chain = PolicyChain([ByName("", broken="evil.test"), by_client], now=Clock().seconds)
    with capturedLogs() as events:
        decision = chain.decide_plain("evil.test", 1, 1, "192.0.2.9", "udp", False, False)
    assert decision is POLICY_FAILED
    assert chain.failures == 1 and not by_client.asked
    assert "policy[0] (by-name) raised ValueError" in lines(events)[0]
