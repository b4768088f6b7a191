"""The resolver chain: policy decision, then the answer cache, then the upstream forwarder.

A blocking decision is answered at once from `responses.blocked_answer`; an allow decision,
a decision in monitor mode, or no decision go on to the cache and the forwarder, with the
decision kept on the answer for the query log. Any failure becomes SERVFAIL here, in one
place, with one log line. A policy that raised (`POLICY_FAILED`, logged by the chain) gets
SERVFAIL too, from the blocked answers' memo, so that costs the fast path nothing.

The answer is judged too (`PolicyChain.decide_answer`): when its CNAME/DNAME chain passes
through a name a blocking policy lists, or its A/AAAA records hold a listed address, the
client gets the blocked answer for its question, with the policy's report (`...;via=cname`,
`...;ip=<network>`). Only questions no policy had an opinion on are judged so: an
allowlisted question name is never blocked by its answer, and the first decision about the
question stays the one that counts (in monitor mode too). The verdict is reached when the
answer arrives and kept on its cache entry with the chain and the chain's `generation`;
a hit re-judges only when either changed (a new indicator snapshot, a reload), so a cached
answer that the new indicators list is blocked from the first hit after they are live, one
they no longer list is served again, and every other hit pays two comparisons.

Only class IN is resolved. A question of any other class that no policy blocks is REFUSED
(EDE 21, Not Supported) and never forwarded: policies decide about Internet names, and an
upstream asked `-c CH evil.example`, or QCLASS * (which many resolvers answer with class IN
data), would answer what the policy exists to keep from the client. The one exception is
what Unbound also answers itself, CH TXT id.server (RFC 4892) and hostname.bind: they get
this server's `server_name`, which every blocked answer already shows as the SOA MNAME, so
an operator can tell which instance answered (in a group of serving processes, followed by
"worker N": which process). version.bind and version.server are refused
like the rest: the version helps no user, only someone choosing an exploit (Unbound's
hide-version).

Identical questions in flight are merged: while the upstream is asked a question, the same
question with the same cache key (name, type, class, DO, CD) waits for that answer instead
of going up again. Every waiting client gets the answer with its own policy decision (the
responder then gives it the client's own ID and EDNS shape), and a failure reaches them all.
The entry leaves the table when the forwarder's Deferred fires, which it does within the
forwarder's `timeout` whatever the upstream does, so nothing stays behind.

A client over TCP gets the whole answer: an answer the upstream gave over UDP may lack
authority or additional records it had no room for (without TC, RFC 2181 section 9), so
such an answer (not `complete`) is not served to a TCP client from the cache, nor shared
with one in flight; the upstream is asked over TCP, and that whole answer then replaces
the cached one for every client.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from misp_dns.dns.cache import CHECKING_DISABLED, AnswerCache, CacheEntry, CacheKey
from misp_dns.dns.forwarder import Forwarder, UpstreamFailed
from misp_dns.dns.responses import (
    blocked_answer,
    chaos_identity_answer,
    minimal_any_answer,
    other_class_answer,
    policy_failure,
    server_failure,
)
from misp_dns.dns.targets import Targets, answer_targets
from misp_dns.dns.wire import Request, presentation_name
from misp_dns.event import Answer, Kind
from misp_dns.interfaces import Action, Decision, PolicyQuery
from misp_dns.policy.chain import POLICY_FAILED, PolicyChain

__all__ = ["ChainResolver"]

# Distinct blocked answers kept ready; one per matched indicator and kind (TXT or not).
BLOCKED_MEMO = 131072

# A question in flight: its cache key, and whether it was asked over TCP for a TCP client.
_Flight = tuple[CacheKey, bool]

# The CHAOS names that ask which server answered (wire format, lower case).
_IDENTITY_NAMES = frozenset({b"\x02id\x06server\x00", b"\x08hostname\x04bind\x00"})


class ChainResolver:
    """Answers a `Request` through `[policy, cache, forwarder]`."""

    log = Logger()

    def __init__(
        self,
        policy: PolicyChain,
        cache: AnswerCache,
        forwarder: Forwarder,
        server_name: str,
        *,
        identity: str | None = None,
    ) -> None:
        self.policy = policy
        self.cache = cache
        self.forwarder = forwarder
        self.server_name = server_name
        self.upstream_failures = 0
        # Blocked answers by decision: the NXDOMAIN/NODATA kind, the TXT report kind, and
        # (by decision and type) those of local data.
        self._blocked: dict[Decision, Answer] = {}
        self._blocked_txt: dict[Decision, Answer] = {}
        self._blocked_local: dict[tuple[Decision, int], Answer] = {}
        # What CH TXT id.server answers: the server's name, and in a group of serving
        # processes which one answered ("ns1.example worker 2").
        self._identity = chaos_identity_answer(identity or server_name)
        self._in_flight: dict[_Flight, list[tuple[defer.Deferred[Answer], Decision | None]]] = {}

    def decide(
        self,
        name: str,
        qtype: int,
        qclass: int,
        client: str,
        transport: str,
        edns: bool,
        dnssec_ok: bool,
    ) -> Decision | None:
        """The policy chain's decision about a question (`name` as `presentation_name`)."""
        if not self.policy:
            return None
        return self.policy.decide_plain(name, qtype, qclass, client, transport, edns, dnssec_ok)

    def answer_at_once(self, decision: Decision | None, key: CacheKey) -> tuple[Answer, int] | None:
        """The blocked, cached or local answer and its age in the cache, or None to forward.

        Both the fast path and `resolve` go through here (the fast path as `answer_held`),
        so they answer alike.
        """
        found = self.answer_held(decision, key)
        if found is None:
            return None
        return found[0], found[1]

    def answer_held(
        self, decision: Decision | None, key: CacheKey
    ) -> tuple[Answer, int, CacheEntry | None, int] | None:
        """`answer_at_once`, with the cache entry the answer comes from and that entry's
        age (None and 0 for answers that do not come from the cache: blocked by the
        decision, or local), so a caller can tell how long the answer holds.

        Questions answered here without asking the upstream (other classes, ANY) are never
        cached, so they are looked at only after the cache missed: a hit pays nothing for
        them.
        """
        if decision is not None and decision.blocks:
            if _garden(decision, key[1]) is not None:
                return None  # the full path resolves the walled garden
            return self.blocked(decision, key[1]), 0, None, 0
        found = self.cache.entry(key)
        if found is None:
            local = self._local(key)
            if local is None:
                return None
            return (attrs.evolve(local, decision=decision) if decision else local), 0, None, 0
        entry, age = found
        if decision is not None:
            return entry.decided(decision), age, entry, age
        if entry.targets is not None:
            chain = self.policy
            if entry.judged_by is not chain or entry.generation != chain.generation():
                self._judge(entry, key)
            verdict = entry.verdict
            if verdict is not None:
                if verdict.blocks:
                    return self.blocked(verdict, key[1]), 0, entry, age
                return entry.decided(verdict), age, entry, age
        return entry.answer, age, entry, age

    def _judge(self, entry: CacheEntry, key: CacheKey) -> None:
        """Reach the chain's verdict on a cached answer and keep it on the entry."""
        chain = self.policy
        generation = chain.generation()
        entry.verdict = verdict = self._verdict(key, entry.targets)
        if verdict is not POLICY_FAILED:  # a failing policy is asked again next time
            entry.judged_by, entry.generation = chain, generation

    def _verdict(self, key: CacheKey, targets: Targets | None) -> Decision | None:
        """The chain's verdict on an answer to `key` that leads to `targets`."""
        if targets is None or not self.policy.answer_policies:
            return None
        name = presentation_name(key[0])
        query = PolicyQuery(name, key[1], key[2], "", "", False, key[3])
        return self.policy.decide_answer(query, *targets)

    def _local(self, key: CacheKey) -> Answer | None:
        """The answer to a question never forwarded (see the module docstring), or None."""
        if key[2] != dns.IN:
            if key[2] == dns.CH and key[1] == dns.TXT and key[0] in _IDENTITY_NAMES:
                return self._identity
            return other_class_answer()
        if key[1] == dns.ALL_RECORDS:
            # RFC 8482: ANY is answered minimally, so it cannot serve as an amplifier.
            return minimal_any_answer()
        return None

    def resolve(
        self, request: Request, client: str, transport: str
    ) -> Answer | defer.Deferred[Any]:
        """An Answer now (blocked, cached) or a Deferred firing with one (forwarded)."""
        question = request.question
        edns = request.edns
        dnssec_ok = edns is not None and edns.dnssec_ok
        decision = self.decide(
            presentation_name(request.name),
            question.type,
            question.cls,
            client,
            transport,
            edns is not None,
            dnssec_ok,
        )
        key = (
            request.name.lower(),
            question.type,
            question.cls,
            dnssec_ok,
            request.flags & CHECKING_DISABLED,
        )
        # A TCP client gets the whole answer: not one the upstream may have cut to fit UDP.
        whole = transport == "tcp"
        garden = None if decision is None else _garden(decision, question.type)
        if garden is not None and decision is not None:
            return self._into_garden(request, decision, garden, key, whole)
        found = self.answer_at_once(decision, key)
        if found is not None and (found[0].complete or not whole):
            answer, age = found
            return attrs.evolve(answer, age=age) if age else answer
        waiting: defer.Deferred[Answer] = defer.Deferred()
        flight = (key, whole)
        waiters = self._in_flight.get(flight)
        if waiters is not None:
            waiters.append((waiting, decision))
            return waiting
        self._in_flight[flight] = [(waiting, decision)]
        upstream = defer.maybeDeferred(
            self.forwarder.resolve,
            request.name,
            question.type,
            question.cls,
            dnssec_ok=dnssec_ok,
            checking_disabled=bool(key[4]),
            whole=whole,
        )
        upstream.addBoth(self._settle, flight)
        return waiting

    def _into_garden(
        self, request: Request, decision: Decision, target: bytes, key: CacheKey, whole: bool
    ) -> defer.Deferred[Answer]:
        """The question's name as an alias of the walled garden `target` (wire form), with
        the garden's records of the question's type from the upstream, as BIND answers an
        RPZ CNAME rewrite; the alias alone when the upstream fails."""
        alias = self.blocked(decision, key[1])
        ttl = next(r.ttl for r in decision.local_data if r.type == dns.CNAME)
        garden = presentation_name(target)
        record = dns.RRHeader(
            name=request.question.name.name,
            type=dns.CNAME,
            cls=dns.IN,
            ttl=ttl,
            payload=dns.Record_CNAME(garden, ttl),
        )

        def joined(result: Answer) -> Answer:
            return Answer(
                result.rcode,
                answers=(record, *result.answers),
                authority=result.authority,
                kind=Kind.BLOCKED,
                ede=alias.ede,
                decision=decision,
            )

        def failed(failure: Failure) -> Answer:
            self._failed(failure)
            return alias

        upstream = defer.maybeDeferred(
            self.forwarder.resolve,
            target,
            key[1],
            key[2],
            dnssec_ok=key[3],
            checking_disabled=bool(key[4]),
            whole=whole,
        )
        return upstream.addCallbacks(joined, failed)

    def blocked(self, decision: Decision, qtype: int) -> Answer:
        """The blocked answer for `decision`, the same object for the same decision."""
        if decision.local_data:
            return self._blocked_local_data(decision, qtype)
        memo = self._blocked_txt if qtype == dns.TXT and decision.add_txt_report else self._blocked
        answer = memo.get(decision)
        if answer is None:
            if len(memo) >= BLOCKED_MEMO:
                memo.clear()
            if decision is POLICY_FAILED:
                answer = policy_failure()
            else:
                answer = blocked_answer(decision, qtype, self.server_name)
            memo[decision] = answer
        return answer

    def _blocked_local_data(self, decision: Decision, qtype: int) -> Answer:
        """The blocked answer of a decision answering local data, to a question of `qtype`."""
        memo = self._blocked_local
        answer = memo.get((decision, qtype))
        if answer is None:
            if len(memo) >= BLOCKED_MEMO:
                memo.clear()
            answer = memo[decision, qtype] = blocked_answer(decision, qtype, self.server_name)
        return answer

    def _settle(self, result: Answer | Failure, flight: _Flight) -> None:
        """Hand the upstream's answer (or SERVFAIL) to every client waiting for it."""
        waiters = self._in_flight.pop(flight)
        key = flight[0]
        verdict = None
        if not isinstance(result, Failure):
            try:
                verdict = self._judge_new(key, result)
            except Exception:
                result = Failure()
        if isinstance(result, Failure):
            self._failed(result)
            result = server_failure()
        for waiting, decision in waiters:
            if decision is None and verdict is not None:
                waiting.callback(self._judged(result, verdict, key[1]))
            else:
                waiting.callback(_with_decision(result, decision))

    def _judge_new(self, key: CacheKey, answer: Answer) -> Decision | None:
        """Cache an answer from the upstream; return the chain's verdict on it."""
        entry = self.cache.put(key, answer)
        if entry is not None:
            self._judge(entry, key)
            return entry.verdict
        if answer.rcode not in (dns.OK, dns.ENAME):
            return None
        return self._verdict(key, answer_targets(key[0], answer.answers))

    def _judged(self, answer: Answer, verdict: Decision, qtype: int) -> Answer:
        """A forwarded answer as given to a client whose question had no decision."""
        if verdict.blocks:
            return self.blocked(verdict, qtype)
        return attrs.evolve(answer, decision=verdict)

    def _failed(self, failure: Failure) -> None:
        if failure.check(UpstreamFailed):
            self.upstream_failures += 1
            self.log.debug("upstream failed: {reason}", reason=failure.getErrorMessage())
        else:
            self.log.failure("resolving failed", failure)


def _garden(decision: Decision, qtype: int) -> bytes | None:
    """The walled garden a blocking decision aliases the question to (a local-data CNAME's
    target, wire form), when the answer must also hold the garden's records; else None."""
    if not decision.local_data or not decision.blocks or qtype in (dns.CNAME, dns.ALL_RECORDS):
        return None
    for record in decision.local_data:
        if record.type == dns.CNAME:
            return record.rdata
    return None


def _with_decision(answer: Answer, decision: Decision | None) -> Answer:
    """`answer` as given to a client whose query got `decision` (allowed ones say so)."""
    if decision is None:
        return answer
    allowed = decision.action is Action.ALLOW and answer.kind is not Kind.SERVER_FAILURE
    return attrs.evolve(answer, kind=Kind.ALLOWED if allowed else answer.kind, decision=decision)
