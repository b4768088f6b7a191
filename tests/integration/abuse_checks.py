"""The in-process stack the wire fuzzers drive, and the checks every outcome must pass.

`responder()` builds a `Responder` over the real resolver chain, answer cache and policy
chain, with an in-memory upstream and a policy blocking evil.example, so both the fast path
(blocked and cached answers) and the full path (forwarded answers, errors) are reached.
The `check_*` functions assert what the wire code promises for any input:

- `read_request`: a Request, DropPacket (shorter than a header, or a response) or
  RequestError, whose error response parses strictly and echoes the ID;
- `read_plain_query`: a PlainQuery or None, and only for what `read_request` accepts too,
  reading the same ID, flags, question, EDNS, DO bit and UDP size;
- `Responder.respond`: bytes or nothing; every response parses strictly with dnspython,
  echoes the ID and the question as written, sets QR, and fits UDP's size limits.

None of it may take longer than `HANG` seconds (an alarm; set `hang_guard` to None where
something else watches for hangs, as libFuzzer does). Used by tests/test_fuzz_wire.py and
tests/fuzz/fuzz_wire.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.flags
import dns.message
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns as tdns
from twisted.python.failure import Failure
from zope.interface import implementer

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.forwarder import UpstreamFailed
from misp_dns.dns.packet import PlainQuery, read_plain_query
from misp_dns.dns.ratelimit import RateLimiter
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import Responder
from misp_dns.dns.wire import (
    BADVERS,
    DropPacket,
    Request,
    RequestError,
    encode_error,
    presentation_name,
    read_request,
)
from misp_dns.event import Answer
from misp_dns.interfaces import Action, Decision, IPolicy, PolicyQuery
from misp_dns.names import ExactName
from misp_dns.policy.chain import PolicyChain

from .abuse_mutations import parse_strictly

__all__ = [
    "CLIENT",
    "HANG",
    "SPECIAL_NAMES",
    "bounded",
    "check_agreement",
    "check_all",
    "check_plain",
    "check_read_request",
    "check_respond",
    "check_response",
    "fired",
    "read",
    "responder",
]

#: Seconds any one parse or response may take before the test calls it a hang.
HANG = 2.0
#: Names the in-memory upstream and policy treat specially (see `_Upstream`, `_Policy`).
SPECIAL_NAMES = (
    "www.example.com.",
    "big.example.com.",
    "nx.example.com.",
    "fail.example.com.",
    "evil.example.",
    "www.evil.example.",
    "WwW.ExAmPlE.CoM.",
)


#: The client address the checks ask from (not exempt from rate limiting).
CLIENT = "198.51.100.7"
#: Set to None to turn the alarm of `bounded` off.
hang_guard: float | None = HANG


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Fail with TimeoutError when the body runs longer than `hang_guard` s (a hang)."""
    seconds = hang_guard
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _decoded(wire_name: bytes) -> ExactName:
    """A name in wire format as the forwarder decodes it from a reply, labels kept."""
    labels = []
    offset = 0
    while wire_name[offset]:
        labels.append(wire_name[offset + 1 : offset + 1 + wire_name[offset]])
        offset += 1 + wire_name[offset]
    return ExactName.from_labels(labels)


class _Upstream:
    """An in-memory upstream: answers at once by the first label of the name.

    "fail" fails (SERVFAIL), "nx" is NXDOMAIN with an SOA, "big" gets 80 A records (too
    large for UDP), anything else one A record; a class other than IN gets one TXT record.
    """

    def resolve(
        self,
        name: bytes,
        qtype: int,
        qclass: int = tdns.IN,
        *,
        dnssec_ok: bool = False,
        checking_disabled: bool = False,
        whole: bool = False,
    ) -> defer.Deferred[Answer]:
        first = name[1 : 1 + name[0]].lower()
        owner = _decoded(name)
        if first == b"fail":
            return defer.fail(UpstreamFailed("scripted failure"))
        if first == b"nx":
            soa = tdns.Record_SOA(b"ns.example.com", b"host.example.com", 1, minimum=60, ttl=60)
            record = tdns.RRHeader(b"example.com", tdns.SOA, tdns.IN, 60, soa)
            return defer.succeed(Answer(tdns.ENAME, authority=(record,)))
        if qclass != tdns.IN:
            text = tdns.Record_TXT(b"class=%d" % qclass, ttl=300)
            record = tdns.RRHeader(b"", tdns.TXT, qclass, 300, text)
            record.name = owner
            return defer.succeed(Answer(tdns.OK, answers=(record,)))
        count = 80 if first == b"big" else 1
        records = tuple(
            tdns.RRHeader(b"", tdns.A, tdns.IN, 300, tdns.Record_A(f"192.0.2.{i}", 300))
            for i in range(count)
        )
        for record in records:
            record.name = owner
        return defer.succeed(Answer(tdns.OK, answers=records))


@implementer(IPolicy)
class _Policy:
    """Blocks evil.example and every name below it."""

    name = "test"

    def decide(self, query: PolicyQuery) -> Decision | None:
        if query.name == "evil.example" or query.name.endswith(".evil.example"):
            report = "source=test;domain=evil.example"
            return Decision(Action.BLOCK, "test", "evil.example", report)
        return None


def responder(*, limited: bool = False) -> Responder:
    """A fresh responder over the real chain; `limited`: one UDP response a second, slip 2,
    nothing exempt."""
    clock = Clock()
    clock.advance(1_000_000)
    resolver = ChainResolver(
        PolicyChain([_Policy()]),
        AnswerCache(100, clock),
        _Upstream(),  # type: ignore[arg-type]
        "dns.test.example",
    )
    acl = ClientACL([ipaddress.ip_network("0.0.0.0/0")])
    limiter = RateLimiter(1, 2, 24, 56, (), clock) if limited else None
    return Responder(resolver, acl, clock, limiter=limiter)


def fired(value: Any) -> Any:
    """The value of an already fired Deferred (the in-memory upstream answers at once)."""
    if not isinstance(value, defer.Deferred):
        return value
    outcomes: list[Any] = []
    value.addBoth(outcomes.append)
    assert outcomes, "the response Deferred never fired"
    (outcome,) = outcomes
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome


def _question_wire(data: bytes) -> bytes | None:
    """The query's question as sent, when its name is plain (no pointer, within limits)."""
    offset = 12
    while offset < len(data):
        length = data[offset]
        if length == 0:
            end = offset + 5
            return data[12:end] if end <= len(data) and end - 12 <= 259 else None
        if length > 63:
            return None
        offset += 1 + length
    return None


def check_response(query: bytes, wire: bytes, transport: str) -> dns.message.Message:
    """Assert what every response owes its query; return it parsed."""
    try:
        response = parse_strictly(wire)
    except dns.exception.DNSException as exc:
        raise AssertionError(f"malformed response {wire.hex()}: {exc!r}") from None
    assert wire[:2] == query[:2], "the response does not echo the query's ID"
    assert response.flags & dns.flags.QR
    if transport == "udp":
        limit = 1232 if response.opt is not None else 512
        assert len(wire) <= limit, f"{len(wire)} octets over UDP"
    if wire[4:6] == b"\x00\x01":
        question = _question_wire(query)
        echoed = wire[12 : 12 + len(question)] if question is not None else None
        assert echoed == question, f"question {question!r} echoed as {echoed!r}"
    return response


def read(data: bytes) -> Request | RequestError | DropPacket:
    """read_request's outcome, which must be one of the three defined ones, and quick."""
    with bounded():
        try:
            return read_request(data)
        except (DropPacket, RequestError) as outcome:
            return outcome


def check_read_request(data: bytes) -> Request | RequestError | DropPacket:
    """read_request's outcome; an error's response must be valid, a drop must be due."""
    outcome = read(data)
    if isinstance(outcome, RequestError):
        assert len(data) >= 12
        wire = encode_error(outcome)
        response = check_response(data, wire, "tcp")
        assert response.rcode() == outcome.rcode
        if outcome.rcode == BADVERS:
            assert response.opt is not None
    elif isinstance(outcome, DropPacket):
        assert len(data) < 12 or data[2] & 0x80
    return outcome


def check_plain(data: bytes) -> PlainQuery | None:
    """read_plain_query's outcome, which must be a PlainQuery or None, and quick."""
    with bounded():
        plain = read_plain_query(data)
    assert plain is None or isinstance(plain, PlainQuery)
    return plain


def check_agreement(data: bytes) -> None:
    """Whenever the fast path reads a query, the full path reads the same one."""
    plain = check_plain(data)
    if plain is None:
        return
    request = read(data)
    assert isinstance(request, Request), (
        f"fast path accepts what the full path rejects: {request!r}"
    )
    question = request.question
    assert plain.ident == request.message.id
    assert plain.flags == request.flags
    assert plain.question == request.question_wire
    assert plain.name == presentation_name(request.name)  # both lower case
    assert (plain.qtype, plain.qclass) == (question.type, question.cls)
    assert plain.edns == (request.edns is not None)
    assert plain.dnssec_ok == bool(request.edns and request.edns.dnssec_ok)
    assert plain.udp_limit == request.udp_limit


def check_respond(
    data: bytes, transport: str = "udp", *, limited: bool = False, warm: bytes | None = None
) -> bytes | None:
    """The response to `data` from a fresh responder, checked; `warm` is asked first (so
    its answer is cached)."""
    stack = responder(limited=limited)
    with bounded():
        if warm is not None and not limited:
            fired(stack.respond(warm, CLIENT, transport))
        wire = fired(stack.respond(data, CLIENT, transport))
        if limited:  # the first spends the budget (rate 1), the second is dropped, the
            # third slipped (slip 2): an empty truncated answer, or nothing
            assert fired(stack.respond(data, CLIENT, transport)) is None
            wire = fired(stack.respond(data, CLIENT, transport))
    assert wire is None or isinstance(wire, bytes)
    if wire is not None:
        check_response(data, wire, transport)
    return wire


def check_all(data: bytes, warm: bytes | None = None) -> None:
    """Every check on `data`: both readers, their agreement, and the responder over UDP,
    TCP and UDP beyond the rate limit."""
    check_read_request(data)
    check_agreement(data)
    for transport in ("udp", "tcp"):
        check_respond(data, transport, warm=warm)
    check_respond(data, "udp", limited=True)
