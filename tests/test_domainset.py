"""Tests for misp_dns.intel.domainset: which query names a set of indicators blocks."""

from __future__ import annotations

import hashlib
import random
import string
import tracemalloc
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from misp_dns.intel.domainset import DomainSet, Match
from misp_dns.intel.indicator import BlockEntry
from misp_dns.interfaces import Provenance


def entry(name: str, subdomains: bool = True, **provenance: str) -> BlockEntry:
    return BlockEntry(name=name, subdomains=subdomains, **provenance)


def chosen(entries: list[BlockEntry]) -> list[BlockEntry]:
    """The entries a set keeps, by the documented rule, written the obvious way."""
    winners: dict[str, tuple[int, BlockEntry]] = {}
    for index, candidate in enumerate(entries):
        current = winners.get(candidate.name)
        if current is None or (candidate.subdomains and not current[1].subdomains):
            winners[candidate.name] = (index, candidate)
    return [kept for _, kept in sorted(winners.values(), key=lambda item: item[0])]


def reference_match(entries: list[BlockEntry], query: str) -> BlockEntry | None:
    """The most specific entry that blocks `query`, by brute force."""
    best = None
    for candidate in chosen(entries):
        covers = query == candidate.name or (
            candidate.subdomains and query.endswith("." + candidate.name)
        )
        if covers and (best is None or len(candidate.name) > len(best.name)):
            best = candidate
    return best


def as_match(candidate: BlockEntry | None) -> Match | None:
    if candidate is None:
        return None
    return Match(
        name=candidate.name,
        subdomains=candidate.subdomains,
        provenance=Provenance(
            event_id=candidate.event_id,
            event_uuid=candidate.event_uuid,
            event_info=candidate.event_info,
            attribute_uuid=candidate.attribute_uuid,
        ),
    )


pool = st.sampled_from(["a", "b", "_dmarc", "x-y", "example", "evilexample", "com", "net"])
names = st.lists(pool, min_size=1, max_size=4).map(".".join)
queries = st.lists(pool, min_size=1, max_size=6).map(".".join)
entries = st.builds(
    BlockEntry,
    name=names,
    subdomains=st.booleans(),
    event_id=st.sampled_from(["", "1", "22"]),
    event_uuid=st.sampled_from(["", "5e9c35b9-5e5c-4221-9e27-313127fc1f02"]),
    event_info=st.text(max_size=8),
    attribute_uuid=st.one_of(
        st.uuids().map(str),
        st.sampled_from(["", "not-a-uuid", "5E9C35B9-5E5C-4221-9E27-313127FC1F02"]),
    ),
)


@given(st.lists(entries, max_size=25))
def test_entries_are_counted_by_kind(given_entries: list[BlockEntry]) -> None:
    """The metrics' indicators by type: names blocked with their subdomains (`domain`) and
    names blocked alone (`hostname`), after repeated names were merged, loaded or built."""
    kept = chosen(given_entries)
    expected = {
        "domain": sum(1 for e in kept if e.subdomains),
        "hostname": sum(1 for e in kept if not e.subdomains),
    }
    domainset = DomainSet.build(given_entries)
    assert domainset.count_by_kind() == expected
    assert DomainSet.from_bytes(domainset.to_bytes()).count_by_kind() == expected


@given(st.lists(entries, max_size=25), st.lists(queries, min_size=1, max_size=20))
def test_matches_agree_with_a_brute_force_reference(
    given_entries: list[BlockEntry], asked: list[str]
) -> None:
    """A name is blocked iff it is a hostname entry or is, or is below, a domain entry;
    the most specific entry is reported with its provenance."""
    domainset = DomainSet.build(given_entries)
    for query in asked + [candidate.name for candidate in given_entries]:
        assert domainset.match(query) == as_match(reference_match(given_entries, query))


@given(st.lists(entries, max_size=25))
def test_repeated_names_are_stored_once(given_entries: list[BlockEntry]) -> None:
    """Each name is kept once: a domain entry beats a hostname entry, else the first wins."""
    domainset = DomainSet.build(given_entries)
    assert list(domainset.entries()) == chosen(given_entries)
    assert len(domainset) == len({candidate.name for candidate in given_entries})


@given(st.lists(entries, max_size=25), st.lists(queries, max_size=10), st.booleans())
def test_saved_form_round_trips(
    given_entries: list[BlockEntry], asked: list[str], copy: bool
) -> None:
    """A set rebuilt from its bytes, copied or as views of them (`copy=False`, what a
    mapped snapshot file gives), holds the same entries, digest, counts and answers."""
    domainset = DomainSet.build(given_entries)
    loaded = DomainSet.from_bytes(domainset.to_bytes(), copy=copy)
    assert list(loaded.entries()) == list(domainset.entries())
    assert list(loaded.names()) == list(domainset.names())
    assert loaded.digest == domainset.digest
    assert loaded.to_bytes() == domainset.to_bytes()
    assert loaded.count_by_kind() == domainset.count_by_kind()
    for query in asked + [candidate.name for candidate in given_entries]:
        assert loaded.match(query) == domainset.match(query)


def test_a_set_over_a_buffer_copies_none_of_its_tables() -> None:
    """With `copy=False` the set reads its payload in place: while it lives, the buffer it
    was read from cannot be resized (its memory is exported to the set's views), and a set
    made with copies leaves the buffer free."""
    domainset = DomainSet.build(entry(f"host{n}.example") for n in range(100))
    payload = bytearray(domainset.to_bytes())
    copied = DomainSet.from_bytes(payload)
    payload.append(0)
    del payload[-1]
    viewed = DomainSet.from_bytes(payload, copy=False)
    with pytest.raises(BufferError):
        payload.append(0)
    assert viewed.match("www.host7.example") == copied.match("www.host7.example")
    del viewed
    payload.append(0)


def test_a_name_given_as_hostname_and_as_domain_blocks_below_it() -> None:
    """When MISP has one name as both `hostname` and `domain`, the wider `domain` counts."""
    for order in (1, -1):
        given_entries = [
            entry("example.com", subdomains=False, event_id="host"),
            entry("example.com", subdomains=True, event_id="domain"),
        ][::order]
        found = DomainSet.build(given_entries).match("www.example.com")
        assert found is not None
        assert found.provenance.event_id == "domain"


def test_domain_entry_blocks_itself_and_below_on_label_boundaries() -> None:
    """`example.com` blocks `example.com` and `a.b.example.com`, not `evilexample.com`."""
    domainset = DomainSet.build([entry("example.com")])
    assert domainset.match("example.com") is not None
    assert domainset.match("a.b.example.com") is not None
    assert domainset.match("evilexample.com") is None
    assert domainset.match("example.com.evil") is None
    assert domainset.match("com") is None


def test_hostname_entry_blocks_only_itself() -> None:
    """A `hostname` entry blocks that exact name, not its subdomains or parents."""
    domainset = DomainSet.build([entry("www.example.com", subdomains=False)])
    assert domainset.match("www.example.com") == Match(
        "www.example.com", subdomains=False, provenance=Provenance()
    )
    assert domainset.match("a.www.example.com") is None
    assert domainset.match("example.com") is None


def test_most_specific_entry_wins() -> None:
    """With nested entries, the longest matching name is the one reported."""
    domainset = DomainSet.build(
        [
            entry("example.com", event_id="1"),
            entry("a.example.com", event_id="2"),
            entry("b.example.com", subdomains=False, event_id="3"),
        ]
    )

    def matched(query: str) -> tuple[str, str] | None:
        found = domainset.match(query)
        return None if found is None else (found.name, found.provenance.event_id)

    assert matched("x.a.example.com") == ("a.example.com", "2")
    assert matched("a.example.com") == ("a.example.com", "2")
    assert matched("b.example.com") == ("b.example.com", "3")
    assert matched("x.b.example.com") == ("example.com", "1")
    assert matched("c.example.com") == ("example.com", "1")


def test_matching_ignores_case_and_a_trailing_dot() -> None:
    """Query names match whatever their case (0x20 randomisation) and with a final dot."""
    domainset = DomainSet.build([entry("Example.COM")])
    for query in ("example.com", "EXAMPLE.com", "wWw.ExAmPlE.cOm", "example.com."):
        found = domainset.match(query)
        assert found is not None
        assert found.name == "example.com"


@pytest.mark.parametrize("query", ["", ".", "bücher.example.com", "\x00.example.org"])
def test_odd_queries_do_not_match_or_fail(query: str) -> None:
    """Empty, non-ASCII or binary query names are simply not blocked."""
    domainset = DomainSet.build([entry("example.com"), entry("org")])
    assert domainset.match(query) is None or query.endswith(".org")


def test_provenance_is_kept_per_attribute() -> None:
    """Entries of one event share its details and keep their own attribute UUID."""
    attribute_uuids = [str(uuid.UUID(int=n)) for n in range(3)] + ["legacy-id", ""]
    event = {"event_id": "1234", "event_uuid": "e-1", "event_info": "c2_beacon_20230414_iocs"}
    domainset = DomainSet.build(
        [
            entry(f"n{n}.example", True, attribute_uuid=u, **event)
            for n, u in enumerate(attribute_uuids)
        ]
    )
    for n, attribute_uuid in enumerate(attribute_uuids):
        found = domainset.match(f"www.n{n}.example")
        assert found is not None
        assert found.provenance == Provenance(attribute_uuid=attribute_uuid, **event)


def test_crc32_collisions_are_told_apart() -> None:
    """Names that share a hash (`plumless`/`buckeroo` have one CRC-32) never stand for
    each other."""
    domainset = DomainSet.build([entry("plumless")])
    assert domainset.match("buckeroo") is None
    assert domainset.match("x.buckeroo") is None
    both = DomainSet.build([entry("plumless", event_id="1"), entry("buckeroo", event_id="2")])
    found = [both.match(name) for name in ("plumless", "buckeroo")]
    assert [(m.name, m.provenance.event_id) for m in found if m] == [
        ("plumless", "1"),
        ("buckeroo", "2"),
    ]


def test_a_large_set_agrees_with_python_sets() -> None:
    """With many thousand names, probe chains and table collisions give the right answers."""
    rng = random.Random(5)
    alphabet = string.ascii_lowercase + string.digits

    def label() -> str:
        return "".join(rng.choices(alphabet, k=rng.randint(1, 8)))

    names = [f"{label()}.{rng.choice(['com', 'net', 'xyz'])}" for _ in range(20_000)]
    hostnames = {name for name in names[::10]}
    domains = set(names) - hostnames
    domainset = DomainSet.build([entry(name, subdomains=name in domains) for name in names])
    assert len(domainset) == len(set(names))
    for name in names[:5000]:
        assert domainset.match(name) is not None
        expected = name if name in domains else None
        found = domainset.match(f"www.{name}")
        assert (found and found.name) == expected
    for _ in range(5000):
        other = f"{label()}{label()}.org"
        assert domainset.match(other) is None


def test_empty_set_matches_nothing() -> None:
    """An empty indicator list blocks nothing."""
    domainset = DomainSet.empty()
    assert len(domainset) == 0
    assert domainset.match("example.com") is None
    assert DomainSet.from_bytes(domainset.to_bytes()).match("example.com") is None


@pytest.mark.parametrize("name", ["", "bücher.example"])
def test_build_refuses_names_that_were_not_normalised(name: str) -> None:
    """Building from an empty or non-ASCII name is a programming error, said clearly."""
    with pytest.raises(ValueError, match="name"):
        DomainSet.build([entry(name)])


def test_digest_follows_content() -> None:
    """The digest is the payload's BLAKE2b-256 and changes with any entry detail."""
    first = DomainSet.build([entry("example.com", event_id="1")])
    again = DomainSet.build([entry("example.com", event_id="1")])
    other = DomainSet.build([entry("example.com", event_id="2")])
    assert first.digest == again.digest != other.digest
    assert first.digest == hashlib.blake2b(first.to_bytes(), digest_size=32).hexdigest()


@given(st.binary(max_size=300))
def test_garbage_bytes_only_raise_value_error(data: bytes) -> None:
    """Loading arbitrary bytes either fails with ValueError or gives a usable set."""
    try:
        domainset = DomainSet.from_bytes(data)
    except ValueError:
        return
    domainset.match("example.com")


@given(st.data())
def test_damaged_payloads_only_raise_value_error(data: st.DataObject) -> None:
    """A payload with a changed byte fails with ValueError or still answers without error."""
    domainset = DomainSet.build(
        [entry("example.com", event_id="1"), entry("www.example.org", subdomains=False)]
    )
    payload = bytearray(domainset.to_bytes())
    position = data.draw(st.integers(0, len(payload) - 1))
    payload[position] = data.draw(st.integers(0, 255))
    try:
        damaged = DomainSet.from_bytes(bytes(payload))
    except ValueError:
        return
    for query in ("example.com", "a.example.com", "www.example.org", "example.org"):
        damaged.match(query)
    list(damaged.entries())


def test_names_are_the_entries_without_provenance() -> None:
    """`names()` lists every name and its kind as `entries()` does, in the same order, also
    for a set loaded from its bytes."""
    built = DomainSet.build(
        [
            BlockEntry("b.example", subdomains=True, event_uuid="e"),
            BlockEntry("a.example", subdomains=False),
            BlockEntry("b.example", subdomains=False),
            BlockEntry("xn--bcher-kva.example", subdomains=True),
        ]
    )
    for domainset in (built, DomainSet.from_bytes(built.to_bytes())):
        assert list(domainset.names()) == [(e.name, e.subdomains) for e in domainset.entries()]
        assert len(list(domainset.names())) == 3


def test_finishing_a_build_copies_neither_its_names_nor_its_uuids() -> None:
    """Indexing a built set allocates its hash table and nothing the size of its names or
    attribute UUIDs: the end of a million-name refresh copies no tens of megabytes (each
    copy held answering for 13 ms on a quiet machine, hundreds on a loaded one), and the
    set answers as one read back from its bytes does."""
    count = 20_000
    builder = DomainSet.builder().add_all(
        entry(
            f"host{n}.example{n % 97}.com",
            subdomains=bool(n % 2),
            attribute_uuid=str(uuid.UUID(int=n)),
        )
        for n in range(count)
    )
    names_and_uuids = len(builder.names) + len(builder.uuids)
    table = 8 * 65_536  # the smallest power of two at least twice the count, 8 bytes a slot
    tracemalloc.start()
    try:
        built = builder.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < table + names_and_uuids // 2
    loaded = DomainSet.from_bytes(built.to_bytes())
    for name in ("host7.example7.com", "www.host8.example8.com", "www.host7.example7.com"):
        assert built.match(name) == loaded.match(name)
    assert built.match("host7.example7.com") is not None
