"""Broken upstreams, beyond what test_forwarding_e2e.py covers: dead, late, lying, half-TCP.

test_forwarding_e2e.py already shows that a forged reply followed by the genuine one is
ignored, that TC leads to a TCP retry, that a silent or unreachable upstream gives SERVFAIL
within upstream_timeout and that SERVFAIL and REFUSED pass through. Here: an unreachable
upstream fails fast and quietly, a late answer is never used, forged replies with no genuine
one behind them give SERVFAIL (never the forgery), a broken TCP retry gives SERVFAIL, and a
dead or silent first upstream hands over to the second.
"""

# The fixtures imported from abuse_servers are redefined as test arguments.
# ruff: noqa: F811

from __future__ import annotations

import time
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest

from .abuse_servers import (  # noqa: F401 (fixtures)
    UPSTREAM_TIMEOUT,
    blackhole,
    dead_first_server,
    hostile_server,
    no_abuse_server_errors,
    silent_first_server,
)
from .fake_upstream import ANSWER_A, FORGED_A, ScriptedUpstream
from .server import MispDnsProcess
from .wire import ask_tcp, ask_udp, make_query

Nonce = Callable[[str], str]
Ask = Callable[..., dns.message.Message]
#: How long a SERVFAIL may take beyond upstream_timeout.
SLACK = 1.0


def _addresses(response: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in response.answer for r in rrset)


def _timed(
    server: MispDnsProcess, name: str, ask: Ask = ask_udp
) -> tuple[dns.message.Message, float]:
    """Ask `server` for the A records of `name`, waiting past upstream_timeout; return the
    response and the seconds it took."""
    start = time.monotonic()
    response = ask(make_query(name, "A"), server.address, UPSTREAM_TIMEOUT + 4)
    return response, time.monotonic() - start


def test_unreachable_upstream_fails_fast_with_one_log_line_at_most(
    unreachable_server: MispDnsProcess,
) -> None:
    """With nothing listening at the upstream (ICMP port unreachable), queries get SERVFAIL
    at once rather than after upstream_timeout (the median; the kernel may hold back an
    ICMP error now and then, and then the attempt times out), each within upstream_timeout,
    and the server logs at most one line per query and no traceback."""
    before = unreachable_server.log_size()
    queries = 20
    times = []
    for index in range(queries):
        response, elapsed = _timed(unreachable_server, f"dead{index}.test.")
        assert response.rcode() == dns.rcode.SERVFAIL
        assert elapsed <= UPSTREAM_TIMEOUT + SLACK
        times.append(elapsed)
        time.sleep(0.05)  # under the kernel's ICMP rate limit
    median = sorted(times)[queries // 2]
    assert median < UPSTREAM_TIMEOUT / 3, f"SERVFAIL took {median:.2f} s (median)"
    logged = unreachable_server.log_text(start=before, limit=1 << 20)
    assert logged.count("\n") <= queries, logged


def test_late_answer_gives_servfail_and_is_never_used(
    hostile_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """An upstream answering only after upstream_timeout gives SERVFAIL within about
    upstream_timeout; its late answer is not cached: asked again, misp-dns asks upstream
    again (and fails again) instead of serving the late reply."""
    name = nonce(f"late{int(UPSTREAM_TIMEOUT * 1000) + 700}")
    response, elapsed = _timed(hostile_server, name)
    assert response.rcode() == dns.rcode.SERVFAIL
    assert elapsed <= UPSTREAM_TIMEOUT + SLACK
    asked = len(fake_upstream.queries_for(name))
    time.sleep(2.0)  # every late reply (the last sent 1 s in, 2.2 s late) has arrived
    again, _ = _timed(hostile_server, name)
    assert again.rcode() == dns.rcode.SERVFAIL
    assert ANSWER_A not in _addresses(again)
    assert len(fake_upstream.queries_for(name)) > asked, "the second query was not sent upstream"


def test_answer_within_the_timeout_is_used_even_after_a_retry(
    hostile_server: MispDnsProcess, nonce: Nonce
) -> None:
    """An upstream that answers within upstream_timeout, but after the first attempt's own
    timeout (1 s), still gets its answer used: the reply to the first attempt counts."""
    response, _ = _timed(hostile_server, nonce("late1200"))
    assert response.rcode() == dns.rcode.NOERROR
    assert _addresses(response) == [ANSWER_A]


def test_slow_answer_within_the_first_attempt_is_used(
    hostile_server: MispDnsProcess, nonce: Nonce
) -> None:
    """An upstream taking 300 ms is slow but fine: its answer is relayed."""
    response, _ = _timed(hostile_server, nonce("late300"))
    assert _addresses(response) == [ANSWER_A]


@pytest.mark.parametrize("behaviour", ["forgedid", "forgedq", "forgedsrc", "garbage"])
def test_forged_reply_alone_gives_servfail_never_the_forgery(
    hostile_server: MispDnsProcess, nonce: Nonce, behaviour: str
) -> None:
    """When the only replies are forged (wrong ID, other question, other source port) or
    not DNS at all, the client gets SERVFAIL within about upstream_timeout, never the forged
    address, and nothing is logged as an error."""
    response, elapsed = _timed(hostile_server, nonce(behaviour))
    assert response.rcode() == dns.rcode.SERVFAIL
    assert FORGED_A not in _addresses(response)
    assert elapsed <= UPSTREAM_TIMEOUT + SLACK


def test_many_forged_replies_before_the_genuine_one_are_ignored(
    hostile_server: MispDnsProcess, nonce: Nonce
) -> None:
    """Fifty replies with wrong IDs ahead of the genuine one do not hide it."""
    response, _ = _timed(hostile_server, nonce("forgedmany"))
    assert _addresses(response) == [ANSWER_A]


@pytest.mark.parametrize("behaviour", ["tcforged", "tcclose", "tcgarbage"])
def test_broken_tcp_retry_gives_servfail(
    hostile_server: MispDnsProcess,
    fake_upstream: ScriptedUpstream,
    nonce: Nonce,
    behaviour: str,
) -> None:
    """A truncated UDP reply whose TCP retry gets a forged reply, a closed connection or
    garbage ends in SERVFAIL (not the forgery, not a hang, no traceback)."""
    name = nonce(behaviour)
    response, elapsed = _timed(hostile_server, name, ask_tcp)
    assert response.rcode() == dns.rcode.SERVFAIL
    assert FORGED_A not in _addresses(response)
    assert elapsed <= UPSTREAM_TIMEOUT + SLACK
    assert fake_upstream.queries_for(name, "tcp"), "the TCP retry was never made"


def test_dead_first_upstream_hands_over_to_the_second(
    dead_first_server: MispDnsProcess, nonce: Nonce
) -> None:
    """With a first upstream that refuses (nothing listens), the second one answers, at
    once, over UDP and TCP."""
    for ask in (ask_udp, ask_tcp):
        response, elapsed = _timed(dead_first_server, nonce("answer"), ask)
        assert response.rcode() == dns.rcode.NOERROR
        assert _addresses(response) == [ANSWER_A]
        assert elapsed < 0.5


def test_silent_first_upstream_hands_over_to_the_second(
    silent_first_server: MispDnsProcess, nonce: Nonce
) -> None:
    """With a first upstream that never answers, the second answers within
    upstream_timeout; later queries go to the second first and are answered quickly."""
    response, elapsed = _timed(silent_first_server, nonce("answer"))
    assert _addresses(response) == [ANSWER_A]
    assert elapsed <= UPSTREAM_TIMEOUT + SLACK
    for _ in range(3):
        response, elapsed = _timed(silent_first_server, nonce("answer"))
        assert _addresses(response) == [ANSWER_A]
        assert elapsed < 0.5, "the working upstream is not preferred after the failover"
