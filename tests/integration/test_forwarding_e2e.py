"""The forwarding resolver and its cache, against a real Unbound and a scripted upstream.

Stock Twisted turns any upstream error into NXDOMAIN and loses the SOA, sends no EDNS
upstream, retries for about a minute, does not check the reply's question, ignores QCLASS,
and its cache keeps no negative answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from .conftest import SCRIPTED_CACHE_SIZE, UPSTREAM_TIMEOUT
from .fake_upstream import ANSWER_A, FORGED_A, NEGATIVE_TTL, TC_COUNT, ScriptedUpstream
from .server import MispDnsProcess
from .unbound import NODATA, NXDOMAIN, REFUSED, SERVFAIL, SOA_SERIAL, TTL_NAME, ZONE_TTL
from .wire import ask_tcp, ask_udp, make_query

Nonce = Callable[[str], str]


def _addresses(response: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in response.answer for r in rrset)


def test_nxdomain_keeps_the_upstream_soa(server: MispDnsProcess) -> None:
    """NXDOMAIN from upstream reaches the client as NXDOMAIN with the zone's SOA."""
    response = ask_udp(make_query(NXDOMAIN, "A", qid=0x2001), server.address)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.answer == []
    assert [(r.name.to_text(), r.rdtype) for r in response.authority] == [
        ("test.", dns.rdatatype.SOA)
    ]
    assert response.authority[0][0].serial == SOA_SERIAL


def test_nodata_keeps_the_upstream_soa(server: MispDnsProcess) -> None:
    """NODATA (NOERROR, no answer) keeps its SOA and is not turned into NXDOMAIN."""
    response = ask_udp(make_query(NODATA, "AAAA"), server.address)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA]


def test_upstream_refused_stays_refused(server: MispDnsProcess) -> None:
    """REFUSED from upstream is relayed as REFUSED, never NXDOMAIN."""
    for ask in (ask_udp, ask_tcp):
        response = ask(make_query(REFUSED, "A"), server.address)
        assert response.rcode() == dns.rcode.REFUSED


def test_upstream_servfail_stays_servfail(server: MispDnsProcess) -> None:
    """SERVFAIL from upstream is relayed as SERVFAIL, never NXDOMAIN."""
    for ask in (ask_udp, ask_tcp):
        response = ask(make_query(SERVFAIL, "A"), server.address)
        assert response.rcode() == dns.rcode.SERVFAIL


def test_cached_answer_ttl_counts_down(server: MispDnsProcess) -> None:
    """A cached answer's TTL decreases with the time it has spent in the cache."""
    first = ask_udp(make_query(TTL_NAME, "A"), server.address)
    time.sleep(1.2)
    second = ask_udp(make_query(TTL_NAME, "A"), server.address)
    ttl1, ttl2 = first.answer[0].ttl, second.answer[0].ttl
    assert ttl1 <= ZONE_TTL
    assert ttl1 - 4 <= ttl2 < ttl1
    assert _addresses(first) == _addresses(second)


def test_queries_go_upstream_with_edns_1232_and_rd(
    scripted_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """The forwarder asks upstream with EDNS (UDP size 1232) and RD set, even when the client
    sent no EDNS."""
    name = nonce("answer")
    response = ask_udp(make_query(name, "A"), scripted_server.address)
    assert _addresses(response) == [ANSWER_A]
    [query] = fake_upstream.queries_for(name)
    assert query.edns == 0
    assert query.payload == 1232
    assert query.flags & dns.flags.RD


def test_replies_with_wrong_id_question_or_source_are_ignored(
    scripted_server: MispDnsProcess, nonce: Nonce
) -> None:
    """A forged reply (wrong ID, other question, other source port) arriving before the real
    one is ignored: the client gets the real answer."""
    for behaviour in ("wrongid", "wrongq", "wrongsrc"):
        response = ask_udp(make_query(nonce(behaviour), "A"), scripted_server.address)
        assert response.rcode() == dns.rcode.NOERROR, behaviour
        assert _addresses(response) == [ANSWER_A], behaviour


def test_truncated_upstream_reply_is_retried_over_tcp(
    scripted_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """When upstream sets TC the forwarder asks again over TCP, and a client over TCP then
    gets every record (from the cache: that answer is whole)."""
    name = nonce("tc")
    ask_udp(make_query(name, "A"), scripted_server.address)
    assert len(fake_upstream.queries_for(name, "udp")) >= 1
    assert len(fake_upstream.queries_for(name, "tcp")) == 1
    response = ask_tcp(make_query(name, "A"), scripted_server.address)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == TC_COUNT
    assert len(fake_upstream.queries_for(name, "tcp")) == 1


def test_silent_upstream_gives_servfail_within_the_timeout(
    scripted_server: MispDnsProcess, nonce: Nonce
) -> None:
    """An upstream that never answers yields SERVFAIL after about upstream_timeout (stock:
    about a minute of retries)."""
    start = time.monotonic()
    response = ask_udp(
        make_query(nonce("silent"), "A"), scripted_server.address, timeout=UPSTREAM_TIMEOUT + 3
    )
    elapsed = time.monotonic() - start
    assert response.rcode() == dns.rcode.SERVFAIL
    assert elapsed <= UPSTREAM_TIMEOUT + 1.5


def test_unreachable_upstream_gives_servfail_within_the_timeout(
    unreachable_server: MispDnsProcess,
) -> None:
    """An upstream port nobody listens on yields SERVFAIL within about upstream_timeout."""
    for ask in (ask_udp, ask_tcp):
        start = time.monotonic()
        response = ask(
            make_query("unreachable.test.", "A"), unreachable_server.address, UPSTREAM_TIMEOUT + 3
        )
        assert response.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - start <= UPSTREAM_TIMEOUT + 1.5


def test_upstream_rcodes_are_kept(scripted_server: MispDnsProcess, nonce: Nonce) -> None:
    """NXDOMAIN keeps its SOA, SERVFAIL and REFUSED stay what they are."""
    nx = ask_udp(make_query(nonce("nx"), "A"), scripted_server.address)
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert [r.name.to_text() for r in nx.authority] == ["fake."]
    for behaviour, rcode in (("servfail", dns.rcode.SERVFAIL), ("refused", dns.rcode.REFUSED)):
        response = ask_udp(make_query(nonce(behaviour), "A"), scripted_server.address)
        assert response.rcode() == rcode, behaviour


def test_other_query_classes_are_refused_not_forwarded(
    scripted_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """A CHAOS-class query (or QCLASS *) is refused with its class echoed, and the upstream
    never hears of it (stock: QCLASS is ignored and the question goes up as IN)."""
    name = nonce("answer")
    for rdclass in ("CH", "ANY"):
        response = ask_udp(make_query(name, "TXT", rdclass=rdclass), scripted_server.address)
        assert response.question[0].rdclass == dns.rdataclass.from_text(rdclass)
        assert response.rcode() == dns.rcode.REFUSED
    assert fake_upstream.queries_for(name) == []


def test_answers_are_cached_per_name_case_insensitively(
    scripted_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """A second query for the same name and type, in other case, is answered from the cache
    with the question's own case."""
    name = nonce("answer")
    ask_udp(make_query(name, "A"), scripted_server.address)
    response = ask_udp(make_query(name.upper(), "A"), scripted_server.address)
    assert response.question[0].name.to_text() == name.upper()
    assert _addresses(response) == [ANSWER_A]
    assert len(fake_upstream.queries_for(name)) == 1


def test_negative_answers_are_cached(
    scripted_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """NXDOMAIN and NODATA are cached (RFC 2308): asked twice, upstream sees one query, and the
    second answer keeps the SOA with a TTL no higher than its minimum."""
    for behaviour, rcode in (("nx", dns.rcode.NXDOMAIN), ("nodata", dns.rcode.NOERROR)):
        name = nonce(behaviour)
        for _ in range(2):
            response = ask_udp(make_query(name, "A"), scripted_server.address)
            assert response.rcode() == rcode
            assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA]
            assert response.authority[0].ttl <= NEGATIVE_TTL
        assert len(fake_upstream.queries_for(name)) == 1, behaviour


def test_forged_answer_is_never_cached(
    scripted_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """After a forged reply was ignored, the cached answer is the real one."""
    name = nonce("wrongid")
    ask_udp(make_query(name, "A"), scripted_server.address)
    response = ask_udp(make_query(name, "A"), scripted_server.address)
    assert _addresses(response) == [ANSWER_A]
    assert FORGED_A not in _addresses(response)


def test_cache_is_bounded_and_drops_the_least_recently_used(
    scripted_server: MispDnsProcess, fake_upstream: ScriptedUpstream, nonce: Nonce
) -> None:
    """With cache.max_entries entries held, a new answer pushes out the entry used least
    recently; one kept in use stays cached (stock: the cache grows without bound)."""
    oldest, kept = nonce("answer"), nonce("answer")
    for name in (oldest, kept):
        ask_udp(make_query(name, "A"), scripted_server.address)
    for index in range(SCRIPTED_CACHE_SIZE + 5):
        ask_udp(make_query(nonce("answer"), "A"), scripted_server.address)
        if index % 10 == 0:
            ask_udp(make_query(kept, "A"), scripted_server.address)
    for name in (oldest, kept):
        assert _addresses(ask_udp(make_query(name, "A"), scripted_server.address)) == [ANSWER_A]
    assert len(fake_upstream.queries_for(oldest)) == 2, "the oldest entry was not evicted"
    assert len(fake_upstream.queries_for(kept)) == 1, "an entry in use was evicted"
