"""The resolver chain: policy decision, then the answer cache, then the upstream forwarder.

A blocking decision is answered at once from `responses.blocked_answer`; an allow decision,
a decision in monitor mode, or no decision go on to the cache and the forwarder, with the
decision kept on the answer for the query log. Any failure becomes SERVFAIL here, in one
place, with one log line.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from misp_dns.dns.answer import Answer, Kind
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.forwarder import Forwarder, UpstreamFailed
from misp_dns.dns.responses import blocked_answer, server_failure
from misp_dns.dns.wire import Request
from misp_dns.policy.chain import PolicyChain
from misp_dns.policy.decision import Action, Decision, PolicyQuery

__all__ = ["ChainResolver", "presentation_name"]


def presentation_name(wire_name: bytes) -> str:
    """A query name as policies see it: lower case, no trailing dot."""
    return wire_name.lower().rstrip(b".").decode("ascii", "backslashreplace")


class ChainResolver:
    """Answers a `Request` through `[policy, cache, forwarder]`."""

    log = Logger()

    def __init__(
        self,
        policy: PolicyChain,
        cache: AnswerCache,
        forwarder: Forwarder,
        server_name: str,
    ) -> None:
        self.policy = policy
        self.cache = cache
        self.forwarder = forwarder
        self.server_name = server_name
        self.upstream_failures = 0

    def resolve(
        self, request: Request, client: str, transport: str
    ) -> Answer | defer.Deferred[Any]:
        """An Answer now (blocked, cached) or a Deferred firing with one (forwarded)."""
        question = request.question
        edns = request.edns
        dnssec_ok = edns is not None and edns.dnssec_ok
        decision = None
        if self.policy:
            decision = self.policy.decide(
                PolicyQuery(
                    name=presentation_name(question.name.name),
                    qtype=question.type,
                    qclass=question.cls,
                    client=client,
                    transport=transport,
                    edns=edns is not None,
                    dnssec_ok=dnssec_ok,
                )
            )
            if decision is not None and decision.blocks:
                return blocked_answer(question.name.name, question.type, decision, self.server_name)
        key = (question.name.name.lower(), question.type, question.cls, dnssec_ok)
        cached = self.cache.get(key)
        if cached is not None:
            return attrs.evolve(cached, decision=decision) if decision else cached
        result = self.forwarder.resolve(
            question.name.name,
            question.type,
            question.cls,
            dnssec_ok=dnssec_ok,
            checking_disabled=bool(request.message.checkingDisabled),
        )
        result.addCallbacks(
            self._forwarded, self._failed, callbackArgs=(key, decision), errbackArgs=(decision,)
        )
        return result

    def _forwarded(self, answer: Answer, key: Any, decision: Decision | None) -> Answer:
        self.cache.put(key, answer)
        if decision is None:
            return answer
        kind = Kind.ALLOWED if decision.action is Action.ALLOW else answer.kind
        return attrs.evolve(answer, kind=kind, decision=decision)

    def _failed(self, failure: Any, decision: Decision | None) -> Answer:
        if failure.check(UpstreamFailed):
            self.upstream_failures += 1
            self.log.debug("upstream failed: {reason}", reason=failure.getErrorMessage())
        else:
            self.log.failure("resolving failed", failure)
        return attrs.evolve(server_failure(), decision=decision)
