"""The answer cache: bounded LRU, TTLs counting down, negative answers per RFC 2308."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.names import dns

from misp_dns.dns.cache import AnswerCache
from misp_dns.event import Answer, Kind
from misp_dns.interfaces import Action, Decision

KEY = (b"\x03www\x07example\x03com\x00", dns.A, dns.IN, False, 0)


def a_answer(ttl: int = 300, name: bytes = b"www.example.com") -> Answer:
    record = dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A("192.0.2.1", ttl))
    return Answer(dns.OK, answers=(record,))


def soa_record(ttl: int, minimum: int) -> dns.RRHeader:
    soa = dns.Record_SOA(b"ns.example.com", b"admin.example.com", minimum=minimum, ttl=ttl)
    return dns.RRHeader(b"example.com", dns.SOA, dns.IN, ttl, soa)


def test_hit_counts_ttl_down_and_says_cached() -> None:
    """A cached answer is served with its TTL reduced by the seconds it has been stored."""
    clock = Clock()
    cache = AnswerCache(10, clock)
    cache.put(KEY, a_answer(300))
    clock.advance(42)
    hit = cache.get(KEY)
    assert hit is not None
    assert hit.kind is Kind.CACHED
    assert hit.age == 42
    assert hit.aged(hit.answers)[0].ttl == 258


def test_entry_expires_with_its_smallest_ttl() -> None:
    """Once the TTL has run out the entry is gone."""
    clock = Clock()
    cache = AnswerCache(10, clock)
    cache.put(KEY, a_answer(30))
    clock.advance(30)
    assert cache.get(KEY) is None
    assert len(cache) == 0


def test_least_recently_used_leaves_first() -> None:
    """At max_entries, the entry not used for longest is dropped, not the one just read."""
    clock = Clock()
    cache = AnswerCache(2, clock)
    keys = [(b"\x02n%d\x04test\x00" % i, dns.A, dns.IN, False, 0) for i in range(3)]
    cache.put(keys[0], a_answer())
    cache.put(keys[1], a_answer())
    assert cache.get(keys[0]) is not None
    cache.put(keys[2], a_answer())
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[2]) is not None
    assert len(cache) == 2


def test_do_bit_is_part_of_the_key() -> None:
    """An answer fetched without DNSSEC records is not served to a DO=1 client."""
    cache = AnswerCache(10, Clock())
    cache.put(KEY, a_answer())
    assert cache.get((*KEY[:3], True, 0)) is None


def test_nxdomain_cached_for_soa_minimum() -> None:
    """NXDOMAIN lives for min(SOA TTL, SOA MINIMUM), and the SOA is served with that TTL."""
    clock = Clock()
    cache = AnswerCache(10, clock)
    cache.put(KEY, Answer(dns.ENAME, authority=(soa_record(3600, 60),)))
    clock.advance(10)
    hit = cache.get(KEY)
    assert hit is not None and hit.rcode == dns.ENAME
    assert hit.aged(hit.authority)[0].ttl == 50
    clock.advance(50)
    assert cache.get(KEY) is None


def test_nodata_cached_by_soa() -> None:
    """NOERROR with no answer but an SOA is a cached negative answer too."""
    cache = AnswerCache(10, Clock())
    cache.put(KEY, Answer(dns.OK, authority=(soa_record(120, 900),)))
    hit = cache.get(KEY)
    assert hit is not None and not hit.answers and hit.authority[0].ttl == 120


def test_negative_answer_without_soa_is_not_cached() -> None:
    """Without an SOA there is no negative TTL, so nothing is stored."""
    cache = AnswerCache(10, Clock())
    cache.put(KEY, Answer(dns.ENAME))
    assert cache.get(KEY) is None


def test_failures_are_not_cached() -> None:
    """SERVFAIL and REFUSED from upstream are never served from the cache."""
    cache = AnswerCache(10, Clock())
    for rcode in (dns.ESERVER, dns.EREFUSED):
        cache.put(KEY, Answer(rcode, authority=(soa_record(300, 300),)))
        assert cache.get(KEY) is None


def test_zero_entries_disables_the_cache() -> None:
    """max_entries = 0 turns caching off."""
    cache = AnswerCache(0, Clock())
    cache.put(KEY, a_answer())
    assert cache.get(KEY) is None


def test_evictions_are_counted_and_expiry_is_not() -> None:
    """Entries pushed out for room count as evictions; those whose TTL ran out do not."""
    clock = Clock()
    cache = AnswerCache(2, clock)
    keys = [(b"\x02n%d\x04test\x00" % i, dns.A, dns.IN, False, 0) for i in range(4)]
    cache.put(keys[0], a_answer(30))
    clock.advance(30)
    assert cache.get(keys[0]) is None
    for key in keys[1:]:
        cache.put(key, a_answer())
    assert cache.evictions == 1
    assert cache.max_entries == 2


def test_hits_and_misses_are_counted() -> None:
    """A live entry found is a hit; an absent or expired one is a miss."""
    clock = Clock()
    cache = AnswerCache(10, clock)
    cache.put(KEY, a_answer(30))
    assert cache.lookup(KEY) is not None
    assert cache.get(KEY) is not None
    clock.advance(30)
    assert cache.get(KEY) is None
    assert cache.lookup(KEY) is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_an_entry_gives_its_answer_with_each_decision_built_once() -> None:
    """A cached answer given under a decision (an allowlisted name, a monitor-mode block)
    carries that decision for the query log, built the first time and the same object
    while the decision is; another decision gets its own, never the one kept before."""
    cache = AnswerCache(10, Clock())
    entry = cache.put((b"\x03www\x07example\x03com\x00", dns.A, dns.IN, False, 0), a_answer())
    assert entry is not None
    allowed = Decision(Action.ALLOW, "allowlist", indicator="example.com", ede_code=None)
    watched = Decision(Action.BLOCK, "misp-feed", indicator="example.com", enforced=False)
    first = entry.decided(allowed)
    assert first.decision is allowed and first.kind is Kind.CACHED
    assert first.answers == entry.answer.answers and first.packet is entry.answer.packet
    assert entry.decided(allowed) is first
    assert entry.decided(watched).decision is watched
    assert entry.decided(allowed).decision is allowed
