"""Response rate limiting: a forged-source flood cannot turn misp-dns into an amplifier."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
from test_server import ScriptedResolver
from twisted.internet.task import Clock

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.ratelimit import RateLimiter, Verdict
from misp_dns.dns.server import Responder

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def limiter(clock: Clock, rate: int = 10, slip: int = 2) -> RateLimiter:
    return RateLimiter(rate, slip, 24, 56, LOOPBACK, clock)


def test_budget_per_second_then_drop_and_slip() -> None:
    """Beyond `rate` a second, responses are dropped, every `slip`-th sent truncated."""
    clock = Clock()
    limit = limiter(clock)
    verdicts = [limit.check("198.51.100.7") for _ in range(14)]
    assert verdicts[:10] == [Verdict.SEND] * 10
    assert verdicts[10:] == [Verdict.DROP, Verdict.SLIP, Verdict.DROP, Verdict.SLIP]
    clock.advance(1)
    assert [limit.check("198.51.100.7") for _ in range(10)] == [Verdict.SEND] * 10


def test_one_budget_per_network() -> None:
    """Addresses in one /24 share a budget; another /24 has its own."""
    limit = limiter(Clock(), rate=2)
    assert limit.check("198.51.100.1") is Verdict.SEND
    assert limit.check("198.51.100.2") is Verdict.SEND
    assert limit.check("198.51.100.3") is not Verdict.SEND
    assert limit.check("203.0.113.1") is Verdict.SEND
    assert limit.check("2001:db8:0:1::1") is Verdict.SEND
    assert limit.check("2001:db8:0:1::2") is Verdict.SEND
    assert limit.check("2001:db8:0:1:ffff::3") is not Verdict.SEND
    assert limit.check("2001:db8:0:100::1") is Verdict.SEND


def test_loopback_is_exempt() -> None:
    """Local clients (and benchmarks) are never limited."""
    limit = limiter(Clock(), rate=1)
    assert all(limit.check("127.0.0.1") is Verdict.SEND for _ in range(100))


def test_responder_drops_or_truncates_limited_udp_but_not_tcp() -> None:
    """A limited UDP client gets nothing or an empty TC answer; TCP is always answered."""
    clock = Clock()
    acl = ClientACL([ipaddress.ip_network("0.0.0.0/0")])
    responder = Responder(ScriptedResolver(), acl, clock, limiter=limiter(clock, rate=1))
    query = dns.message.make_query("www.example.com", "A").to_wire()
    answers = [responder.respond(query, "198.51.100.9", "udp") for _ in range(3)]
    assert isinstance(answers[0], bytes)
    assert answers[1] is None
    assert isinstance(answers[2], bytes)
    slipped = dns.message.from_wire(answers[2])
    assert slipped.flags & dns.flags.TC and not slipped.answer
    assert isinstance(responder.respond(query, "198.51.100.9", "tcp"), bytes)
    assert responder.counters.rate_limited == 2
