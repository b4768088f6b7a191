"""An immutable set of blocked names that answers "is this query name blocked, and by what?".

It also carries the policy's response-IP networks (`misp_dns.intel.ipset.IpSet`, asked
through `match_ip`), so that one snapshot, swapped in one assignment and saved in one file,
holds every indicator of a source.

A `DomainSet` holds normalised `BlockEntry` values. A `domain` entry (`subdomains=True`)
matches its own name and every name below it, on label boundaries (`example.com` covers
`a.example.com`, not `evilexample.com`); a `hostname` entry matches its own name only. When
several entries match, the most specific (longest) name wins. Matching is case-insensitive:
query names are lower-cased here too, though `PolicyQuery.name` already is.

    >>> ds = DomainSet.build([BlockEntry("example.com", subdomains=True)])
    >>> ds.match("www.example.com").name
    'example.com'

It is built for millions of names in a small memory footprint, with a lookup cost that does
not depend on how many names it holds:

- names are packed into one `bytes` blob, with their end offsets in an `array`;
- an open-addressing hash table (linear probing, at most half full) of 64-bit slots holds,
  for each name, its CRC-32, its position and whether it covers subdomains, so a probe reads
  one machine word; a hit is always confirmed against the name itself, so hash collisions
  cost a probe and never a wrong answer;
- provenance is stored once per MISP event in a small event table; attribute UUIDs are kept
  as 16 packed bytes each.

A lookup hashes the query name and each of its parent names, longest first, so its cost is
at most the number of labels in the query, whatever the set's size; names with a label count
no entry has (say, four-label parents when every domain entry has two or three labels) are
skipped without hashing.

Each name is held once. When a name comes more than once, a `domain` entry wins over a
`hostname` entry, and otherwise the first one given wins.

`to_buffers()` (or `to_bytes()`) and `from_bytes()` give the set as one flat payload (the
networks' payload at its end) that loads with a handful of copies and no per-entry work, or
with none (`copy=False`: the set's tables are views of the payload, such as a memory-mapped
snapshot file, which then stays mapped as long as the set lives);
`misp_dns.intel.store` writes it to disk around a header with a checksum. `digest` is the
BLAKE2b-256 of that payload, so two sets with the same digest hold the same entries in the
same order.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
from array import array
from collections.abc import Generator, Iterable, Iterator
from typing import Any
from zlib import crc32

import attrs

from misp_dns.intel.indicator import BlockEntry, IpEntry
from misp_dns.intel.ipset import IpMatch, IpSet, IpSetBuilder
from misp_dns.intel.packed import (
    IntArray,
    array_from_little_endian,
    little_endian,
    view_little_endian,
)
from misp_dns.interfaces import Provenance

__all__ = ["FORMAT_VERSION", "DomainSet", "DomainSetBuilder", "Match"]

# The layout of `to_bytes()`; change it and old snapshot files are ignored, not misread.
# 2: the response-IP networks follow the names.
FORMAT_VERSION = 2

_U32 = "I"
_U64 = "Q"
if array(_U32).itemsize != 4 or array(_U64).itemsize != 8:  # pragma: no cover
    raise ImportError("misp_dns.intel.domainset needs 4- and 8-byte array typecodes I and Q")

# A table slot is 0 when empty, else CRC-32 (0 counted as 1) << 32 | index << 1 | subdomains.
_LOW_WORD = 0xFFFFFFFF
# Entries indexed between two steps of `DomainSetBuilder.finishing`: a millisecond or two.
_ENTRIES_PER_STEP = 2048

# Bits of the per-entry flags byte.
_SUBDOMAINS = 1
_UUID_PACKED = 2  # the attribute UUID is canonical and sits in the packed UUID array
_UUID_OTHER = 4  # the attribute UUID is some other string, kept in a small side table
# Maps a flags byte to its subdomains bit alone, so `bytes.translate` can count them.
_SUBDOMAIN_BIT = bytes(value & _SUBDOMAINS for value in range(256))

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_META_LENGTH = struct.Struct("<I")
_MATCH_MEMO_SIZE = 4096


@attrs.frozen
class Match:
    """The entry a query name matched: its name, its kind, and where MISP got it from."""

    name: str
    subdomains: bool
    provenance: Provenance


class DomainSet:
    """An immutable set of blocked names; see the module docstring.

    Make one with `build`, `empty` or `from_bytes`; the constructor only assembles parts.
    """

    __slots__ = (
        "_count",
        "_digest",
        "_domain_depths",
        "_domains",
        "_event_table",
        "_events",
        "_exact_depths",
        "_flags",
        "_ips",
        "_mask",
        "_memo",
        "_names",
        "_offsets",
        "_other_uuids",
        "_table",
        "_uuids",
    )

    def __init__(
        self,
        *,
        names: bytes | bytearray | memoryview,
        offsets: IntArray,
        flags: bytes | bytearray | memoryview,
        events: IntArray,
        uuids: bytes | bytearray | memoryview,
        other_uuids: dict[int, str],
        event_table: tuple[tuple[str, str, str], ...],
        table: IntArray,
        exact_depths: int,
        domain_depths: int,
        ips: IpSet | None = None,
    ) -> None:
        self._names = names
        self._offsets = offsets
        self._flags = flags
        self._events = events
        self._uuids = uuids
        self._other_uuids = other_uuids
        self._event_table = event_table
        self._table = table
        # Bit n is set when some entry (some domain entry) has n labels.
        self._exact_depths = exact_depths
        self._domain_depths = domain_depths
        self._count = len(flags)
        self._mask = len(table) - 1
        self._digest: str | None = None
        self._domains: int | None = None
        self._memo: dict[int, Match] = {}
        self._ips = ips if ips is not None else IpSet.empty()

    @classmethod
    def build(cls, entries: Iterable[BlockEntry]) -> DomainSet:
        """Build a set from `entries` (read once, so a generator will do).

        Names must be normalised (ASCII, no trailing dot); they are lower-cased here. Raises
        `ValueError` for an empty or non-ASCII name. `IpEntry` values among them go to the
        response-IP networks.
        """
        return DomainSetBuilder().add_all(entries).finish()

    @staticmethod
    def builder() -> DomainSetBuilder:
        """A builder to add entries to in batches, then `finish()` into a set."""
        return DomainSetBuilder()

    @classmethod
    def empty(cls) -> DomainSet:
        """A set that matches nothing."""
        return cls.build(())

    def __len__(self) -> int:
        """The number of indicators: names and response-IP networks."""
        return self._count + len(self._ips)

    def __repr__(self) -> str:
        return f"<DomainSet of {self._count} names and {len(self._ips)} networks>"

    @property
    def names_count(self) -> int:
        """The number of names."""
        return self._count

    @property
    def ips(self) -> IpSet:
        """The response-IP networks."""
        return self._ips

    def match_ip(self, address: bytes) -> IpMatch | None:
        """The most specific listed network holding `address` (4 or 16 bytes), or None."""
        return self._ips.match(address)

    def count_by_kind(self) -> dict[str, int]:
        """How many entries block their subdomains too (`domain`, from MISP's `domain` and
        `domain|ip`) and how many their own name only (`hostname`)."""
        if self._domains is None:
            # One pass in C over the flags: the bytes with the subdomains bit set.
            flags = bytes(self._flags)
            self._domains = len(flags) - flags.translate(_SUBDOMAIN_BIT).count(0)
        return {"domain": self._domains, "hostname": self._count - self._domains}

    def match(self, name: str) -> Match | None:
        """Return the most specific entry that matches `name`, or None.

        `name` is a query name in presentation form without the trailing dot, such as
        "www.example.com"; upper case is accepted, and a trailing dot is ignored. Matches of
        recently matched entries come from a small memo, so a name blocked again and again
        gets the same `Match` object back.
        """
        try:
            query = name.lower().encode("ascii")
        except UnicodeEncodeError:
            return None  # every stored name is ASCII
        index = self._lookup(query)
        if index < 0:
            return None
        found = self._memo.get(index)
        if found is None:
            if len(self._memo) >= _MATCH_MEMO_SIZE:
                self._memo.clear()
            found = self._memo[index] = self._match_at(index)
        return found

    def _lookup(self, query: bytes) -> int:
        """Index of the entry that matches `query` most specifically, or -1."""
        if query.endswith(b"."):
            query = query[:-1]
        if not query:
            return -1
        table = self._table
        mask = self._mask
        names = self._names
        offsets = self._offsets
        labels = query.count(b".") + 1
        depths = self._exact_depths
        start = 0
        while True:
            # Only names with as many labels as some entry has are worth a probe.
            if depths >> labels & 1:
                suffix = query[start:] if start else query
                key = crc32(suffix) or 1
                position = key & mask
                while slot := table[position]:
                    if slot >> 32 == key:
                        index = (slot & _LOW_WORD) >> 1
                        offset = offsets[index]
                        end = offsets[index + 1]
                        if end - offset == len(suffix) and names[offset:end] == suffix:
                            if start == 0 or slot & 1:
                                return index
                            break  # a hostname entry for a parent name: look further up
                    position = (position + 1) & mask
            dot = query.find(b".", start)
            if dot < 0:
                return -1
            start = dot + 1
            labels -= 1
            depths = self._domain_depths

    def _match_at(self, index: int) -> Match:
        flags = self._flags[index]
        return Match(
            self._name_at(index), bool(flags & _SUBDOMAINS), self._provenance_at(index, flags)
        )

    def _name_at(self, index: int) -> str:
        return str(self._names[self._offsets[index] : self._offsets[index + 1]], "ascii")

    def _provenance_at(self, index: int, flags: int) -> Provenance:
        event_id, event_uuid, event_info = self._event_table[self._events[index]]
        if flags & _UUID_PACKED:
            d = self._uuids[16 * index : 16 * index + 16].hex()
            attribute_uuid = f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"
        else:
            attribute_uuid = self._other_uuids.get(index, "")
        return Provenance(event_id, event_uuid, event_info, attribute_uuid)

    def names(self) -> Iterator[tuple[str, bool]]:
        """Every stored name and whether it covers subdomains, in the order given: what
        `entries()` gives without provenance, at a fraction of its cost."""
        text = str(self._names, "ascii")
        offsets = self._offsets
        flags = self._flags
        for index in range(self._count):
            yield text[offsets[index] : offsets[index + 1]], bool(flags[index] & _SUBDOMAINS)

    def entries(self) -> Iterator[BlockEntry]:
        """Every stored entry, in the order given (repeated names left out as described)."""
        for index in range(self._count):
            flags = self._flags[index]
            provenance = self._provenance_at(index, flags)
            yield BlockEntry(
                name=self._name_at(index),
                subdomains=bool(flags & _SUBDOMAINS),
                event_id=provenance.event_id,
                event_uuid=provenance.event_uuid,
                event_info=provenance.event_info,
                attribute_uuid=provenance.attribute_uuid,
            )

    @property
    def digest(self) -> str:
        """Hex BLAKE2b-256 of `to_bytes()`: equal digests mean equal sets."""
        if self._digest is None:
            hasher = hashlib.blake2b(digest_size=32)
            for buffer in self.to_buffers():
                hasher.update(buffer)
            self._digest = hasher.hexdigest()
        return self._digest

    def to_buffers(self) -> list[memoryview]:
        """The payload as consecutive pieces, to write out without joining them first.

        Layout (`FORMAT_VERSION` 2, little-endian): u32 length of a JSON object; the JSON
        object (counts, label-count bitmasks, event table, uncommon attribute UUIDs, the
        length of the networks' payload); the name end offsets (count+1 u32), event indexes
        (count u32), flags (count u8), packed attribute UUIDs (count times 16 bytes), the
        names, the hash table (capacity u64), and the networks (`IpSet.to_buffers`).
        """
        ips = self._ips.to_buffers()
        meta = json.dumps(
            {
                "count": self._count,
                "capacity": len(self._table),
                "names": len(self._names),
                "depths": [self._exact_depths, self._domain_depths],
                "events": self._event_table,
                "uuids": {str(index): value for index, value in self._other_uuids.items()},
                "ips": sum(buffer.nbytes for buffer in ips),
            },
            separators=(",", ":"),
        ).encode("ascii")
        pieces: list[Any] = [
            _META_LENGTH.pack(len(meta)),
            meta,
            little_endian(self._offsets),
            little_endian(self._events),
            self._flags,
            self._uuids,
            self._names,
            little_endian(self._table),
        ]
        return [memoryview(piece).cast("B") for piece in pieces] + ips

    def to_bytes(self) -> bytes:
        """The whole payload in one `bytes`; see `to_buffers` for its layout."""
        return b"".join(self.to_buffers())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, copy: bool = True) -> DomainSet:
        """Rebuild a set from `to_bytes()` output. Raises `ValueError`, and only that, when
        `data` is not such a payload.

        With `copy` false the set's tables are views of `data` (on a little-endian host),
        which must then stay unchanged as long as the set lives: a read-only mapping of a
        snapshot file, whose pages every process mapping it shares.
        """
        try:
            return _parse(memoryview(data).cast("B"), copy)
        except ValueError:
            raise
        except (
            struct.error,
            AttributeError,
            KeyError,
            TypeError,
            IndexError,
            OverflowError,
            RecursionError,
        ) as error:
            raise ValueError(f"malformed domain set: {error!r}") from error


def _parse(data: memoryview, copy: bool = True) -> DomainSet:
    (meta_length,) = _META_LENGTH.unpack_from(data, 0)
    position = _META_LENGTH.size
    meta = json.loads(bytes(data[position : position + meta_length]))
    position += meta_length
    count, capacity, names_length = meta["count"], meta["capacity"], meta["names"]
    ips_length = meta["ips"]
    for number in (count, capacity, names_length, ips_length):
        if not isinstance(number, int) or number < 0:
            raise ValueError(f"malformed domain set: bad size {number!r}")
    if capacity < 8 or capacity & (capacity - 1) or capacity < 2 * count:
        raise ValueError(f"malformed domain set: bad table capacity {capacity}")
    exact_depths, domain_depths = meta["depths"]
    for number in (exact_depths, domain_depths):
        if not isinstance(number, int) or number < 0:
            raise ValueError(f"malformed domain set: bad label counts {number!r}")
    event_table = tuple(_event(item) for item in meta["events"])
    other_uuids = {int(index): str(value) for index, value in meta["uuids"].items()}
    sizes = (4 * (count + 1), 4 * count, count, 16 * count, names_length, 8 * capacity, ips_length)
    if position + sum(sizes) != len(data):
        raise ValueError("malformed domain set: sizes do not add up to the payload length")
    pieces = []
    for size in sizes:
        pieces.append(data[position : position + size])
        position += size
    integers = array_from_little_endian if copy else view_little_endian
    offsets = integers(_U32, pieces[0])
    events = integers(_U32, pieces[1])
    table = integers(_U64, pieces[5])
    names: bytes | memoryview = bytes(pieces[4]) if copy else pieces[4]
    if not _is_ascii(names):
        raise ValueError("malformed domain set: names are not ASCII")
    if offsets[0] != 0 or offsets[count] != names_length:
        raise ValueError("malformed domain set: name offsets do not span the names")
    if count and max(events) >= len(event_table):
        raise ValueError("malformed domain set: event index out of range")
    if capacity - _count_zeros(table) != count or (count and _largest_index(table) >= count):
        raise ValueError("malformed domain set: hash table does not match the entries")
    return DomainSet(
        names=names,
        offsets=offsets,
        flags=bytes(pieces[2]) if copy else pieces[2],
        events=events,
        uuids=bytes(pieces[3]) if copy else pieces[3],
        other_uuids=other_uuids,
        event_table=event_table,
        table=table,
        exact_depths=exact_depths,
        domain_depths=domain_depths,
        ips=IpSet.from_bytes(pieces[6], copy=copy),
    )


# Items checked at a time by the checks below, so that checking a mapped set copies little.
_CHUNK = 1 << 16


def _is_ascii(names: bytes | memoryview) -> bool:
    if isinstance(names, bytes):
        return names.isascii()
    return all(
        bytes(names[start : start + _CHUNK]).isascii() for start in range(0, len(names), _CHUNK)
    )


def _count_zeros(table: IntArray) -> int:
    if isinstance(table, array):
        return table.count(0)
    return sum(
        array(_U64, table[start : start + _CHUNK]).count(0)
        for start in range(0, len(table), _CHUNK)
    )


def _largest_index(table: IntArray) -> int:
    """The largest entry index in `table`, read off the low halves of its slots."""
    low_words = memoryview(table).cast("B").cast("I")[sys.byteorder == "big" :: 2]
    return max(low_words) >> 1


def _event(item: object) -> tuple[str, str, str]:
    if (
        not isinstance(item, list)
        or len(item) != 3
        or not all(isinstance(part, str) for part in item)
    ):
        raise ValueError(f"malformed domain set: bad event {item!r}")
    return (item[0], item[1], item[2])


class DomainSetBuilder:
    """Packs entries into the arrays of a `DomainSet` (`add_all`, as often as needed), then
    indexes them (`finish`); networks (`IpEntry`) go to an `IpSetBuilder`. Not thread-safe:
    one thread at a time. It finishes once: the set it gives holds its arrays.
    """

    def __init__(self) -> None:
        self.names = bytearray()
        self.offsets = array(_U32, [0])
        self.flags = bytearray()
        self.events = array(_U32)
        self.uuids = bytearray()
        self.other_uuids: dict[int, str] = {}
        self.event_index: dict[tuple[str, str, str], int] = {}
        self.keys = array(_U32)
        self.exact_depths = 0
        self.domain_depths = 0
        self.ips = IpSetBuilder()

    def add_all(self, entries: Iterable[BlockEntry | IpEntry]) -> DomainSetBuilder:
        names, offsets, flags, events, uuids = (
            self.names,
            self.offsets,
            self.flags,
            self.events,
            self.uuids,
        )
        keys, event_index, other_uuids = self.keys, self.event_index, self.other_uuids
        canonical_uuid = _CANONICAL_UUID.fullmatch
        no_uuid = bytes(16)
        exact_depths, domain_depths = self.exact_depths, self.domain_depths
        add_network = self.ips.add
        for entry in entries:
            if isinstance(entry, IpEntry):
                add_network(entry)
                continue
            try:
                name = entry.name.lower().encode("ascii")
            except UnicodeEncodeError:
                raise ValueError(f"not a normalised name: {entry.name!r}") from None
            if not name:
                raise ValueError("empty name")
            names += name
            offsets.append(len(names))
            keys.append(crc32(name) or 1)
            event = (entry.event_id, entry.event_uuid, entry.event_info)
            number = event_index.get(event)
            if number is None:
                number = event_index[event] = len(event_index)
            events.append(number)
            depth = 1 << (name.count(b".") + 1)
            exact_depths |= depth
            if entry.subdomains:
                domain_depths |= depth
                flag = _SUBDOMAINS
            else:
                flag = 0
            attribute_uuid = entry.attribute_uuid
            if canonical_uuid(attribute_uuid):
                uuids += bytes.fromhex(attribute_uuid.replace("-", ""))
                flag |= _UUID_PACKED
            else:
                uuids += no_uuid
                if attribute_uuid:
                    other_uuids[len(flags)] = attribute_uuid
                    flag |= _UUID_OTHER
            flags.append(flag)
        self.exact_depths, self.domain_depths = exact_depths, domain_depths
        return self

    def finish(self) -> DomainSet:
        """Index the entries added so far into a `DomainSet`."""
        steps = self.finishing()
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                finished: DomainSet = stop.value
                return finished

    def finishing(self) -> Generator[None, None, DomainSet]:
        """`finish` as steps of a few thousand entries each (see `blocking.Steps`), so a
        million entries can be indexed on the reactor thread between its polls."""
        table, dropped = yield from self._index()
        if dropped:
            yield from self._drop(dropped)
            table, dropped = yield from self._index()
        # The set takes the builder's arrays as they are: copying tens of megabytes into
        # memory not touched before held the reactor 13 to 20 ms a copy, hundreds on a
        # loaded machine. A builder finishes once.
        ips = self.ips.finish()
        yield
        return DomainSet(
            names=self.names,
            offsets=self.offsets,
            flags=self.flags,
            events=self.events,
            uuids=self.uuids,
            other_uuids=self.other_uuids,
            event_table=tuple(self.event_index),
            table=table,
            exact_depths=self.exact_depths,
            domain_depths=self.domain_depths,
            ips=ips,
        )

    def _index(self) -> Generator[None, None, tuple[array[int], set[int]]]:
        """Fill the hash table; return it and the entries that repeat a name."""
        count = len(self.flags)
        capacity = 8
        while capacity < 2 * count:
            capacity *= 2
        mask = capacity - 1
        table = array(_U64, [0]) * capacity
        keys, names, offsets, flags = self.keys, self.names, self.offsets, self.flags
        dropped: set[int] = set()
        for index in range(count):
            if not index % _ENTRIES_PER_STEP:
                yield
            key = keys[index]
            slot = key << 32 | index << 1 | flags[index] & _SUBDOMAINS
            position = key & mask
            while stored := table[position]:
                if stored >> 32 == key:
                    other = (stored & _LOW_WORD) >> 1
                    if (
                        names[offsets[other] : offsets[other + 1]]
                        == names[offsets[index] : offsets[index + 1]]
                    ):
                        if slot & 1 and not stored & 1:
                            table[position] = slot
                            dropped.add(other)
                        else:
                            dropped.add(index)
                        break
                position = (position + 1) & mask
            else:
                table[position] = slot
        return table, dropped

    def _drop(self, dropped: set[int]) -> Generator[None, None, None]:
        """Remove the `dropped` entries, keeping the others in order."""
        names = bytearray()
        offsets = array(_U32, [0])
        flags = bytearray()
        events = array(_U32)
        uuids = bytearray()
        other_uuids: dict[int, str] = {}
        keys = array(_U32)
        for index in range(len(self.flags)):
            if not index % _ENTRIES_PER_STEP:
                yield
            if index in dropped:
                continue
            names += self.names[self.offsets[index] : self.offsets[index + 1]]
            offsets.append(len(names))
            if index in self.other_uuids:
                other_uuids[len(flags)] = self.other_uuids[index]
            flags.append(self.flags[index])
            events.append(self.events[index])
            uuids += self.uuids[16 * index : 16 * index + 16]
            keys.append(self.keys[index])
        self.names, self.offsets, self.flags, self.events = names, offsets, flags, events
        self.uuids, self.other_uuids, self.keys = uuids, other_uuids, keys
