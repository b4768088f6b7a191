"""An immutable set of listed networks that answers "is this address listed, and by what?".

An `IpSet` holds `IpEntry` values: IPv4 and IPv6 networks, each a single address (a /32 or
/128) or a CIDR range. `match` takes an address as it sits in an A or AAAA record (4 or 16
bytes) and returns the most specific listed network holding it, with its MISP provenance:

    >>> ips = IpSet.build([ip_entry("203.0.113.0/24"), ip_entry("203.0.113.7")])
    >>> ips.match(bytes([203, 0, 113, 7])).network
    '203.0.113.7'
    >>> ips.match(bytes([203, 0, 113, 8])).network
    '203.0.113.0/24'

An IPv4-mapped IPv6 address (`::ffff:203.0.113.7`) in an AAAA record is matched against the
IPv4 networks too: a dual-stack client reaches the IPv4 host through it.

It is built for a million networks in a few bytes each, with no Python object per entry:

- per address family, one sorted array of network starts: IPv4 starts in one array of
  32-bit words, IPv6 starts in two arrays of 64-bit words (high and low halves), sorted by
  prefix length first, then start; a small table says where each prefix length's run
  begins and ends;
- a lookup masks the address to each prefix length present, longest first, and finds it by
  binary search (`bisect`, in C) in that length's run: at most 33 (IPv4) or 129 (IPv6)
  searches in theory, in practice as many as there are distinct prefix lengths (a feed
  holds mostly /32 and /128 entries, and a handful of range sizes);
- provenance as in `misp_dns.intel.domainset`: an event table, one event index (u32) and
  16 packed bytes of attribute UUID per entry.

A network listed twice is kept once, the first given. `to_buffers()` / `from_bytes()` give
the set as one flat payload; `misp_dns.intel.domainset` carries it inside the domain set's.
"""

from __future__ import annotations

import json
import re
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import attrs

from misp_dns.intel.indicator import IpEntry
from misp_dns.intel.packed import (
    IntArray,
    array_from_little_endian,
    little_endian,
    view_little_endian,
)
from misp_dns.interfaces import Provenance

__all__ = ["IpMatch", "IpSet", "IpSetBuilder"]

_U32 = "I"
_U64 = "Q"
_LOW64 = (1 << 64) - 1
_META_LENGTH = struct.Struct("<I")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_MATCH_MEMO_SIZE = 4096

# (prefix length, first position, end position) of one prefix length's run, longest first.
_Run = tuple[int, int, int]


@attrs.frozen
class IpMatch:
    """The listed network an address fell in, written as MISP lists it, and its provenance.

    `network` is the address alone for a single address ("198.51.100.7", "2001:db8::1"),
    else the CIDR range ("203.0.113.0/24").
    """

    network: str
    provenance: Provenance


def _mask4(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF


def _mask64(length: int) -> int:
    """The mask of the first `length` bits (0..64) of a 64-bit word."""
    return (_LOW64 << (64 - length)) & _LOW64


class IpSet:
    """An immutable set of listed IPv4 and IPv6 networks; see the module docstring.

    Make one with `build`, `empty` or `from_bytes`; the constructor only assembles parts.
    """

    __slots__ = (
        "_event_table",
        "_events",
        "_high",
        "_low",
        "_memo",
        "_other_uuids",
        "_runs4",
        "_runs6",
        "_starts4",
        "_uuids",
    )

    def __init__(
        self,
        *,
        starts4: IntArray,
        high: IntArray,
        low: IntArray,
        runs4: tuple[_Run, ...],
        runs6: tuple[_Run, ...],
        events: IntArray,
        uuids: bytes | memoryview,
        other_uuids: dict[int, str],
        event_table: tuple[tuple[str, str, str], ...],
    ) -> None:
        self._starts4 = starts4
        self._high = high
        self._low = low
        self._runs4 = runs4
        self._runs6 = runs6
        # Entry number: IPv4 entries first, in array order, then the IPv6 ones.
        self._events = events
        self._uuids = uuids
        self._other_uuids = other_uuids
        self._event_table = event_table
        self._memo: dict[int, IpMatch] = {}

    @classmethod
    def build(cls, entries: Iterable[IpEntry]) -> IpSet:
        """Build a set from `entries` (read once, so a generator will do)."""
        builder = IpSetBuilder()
        for entry in entries:
            builder.add(entry)
        return builder.finish()

    @classmethod
    def empty(cls) -> IpSet:
        """A set that matches nothing."""
        return cls.build(())

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"<IpSet of {len(self._starts4)} IPv4 and {len(self._high)} IPv6 networks>"

    def match(self, address: bytes) -> IpMatch | None:
        """The most specific listed network holding `address` (4 or 16 bytes), or None."""
        if len(address) == 4:
            index = self._lookup4(int.from_bytes(address, "big"))
        elif len(address) == 16:
            index = self._lookup6(
                int.from_bytes(address[:8], "big"), int.from_bytes(address[8:], "big")
            )
            if index < 0 and address.startswith(_MAPPED_PREFIX):
                index = self._lookup4(int.from_bytes(address[12:], "big"))
        else:
            return None
        if index < 0:
            return None
        found = self._memo.get(index)
        if found is None:
            if len(self._memo) >= _MATCH_MEMO_SIZE:
                self._memo.clear()
            found = self._memo[index] = IpMatch(self._network_at(index), self._provenance_at(index))
        return found

    def _lookup4(self, address: int) -> int:
        starts = self._starts4
        for length, begin, end in self._runs4:
            key = address & _mask4(length)
            position = bisect_left(starts, key, begin, end)
            if position < end and starts[position] == key:
                return position
        return -1

    def _lookup6(self, high: int, low: int) -> int:
        highs, lows = self._high, self._low
        for length, begin, end in self._runs6:
            if length <= 64:
                key = high & _mask64(length)
                position = bisect_left(highs, key, begin, end)
                if position < end and highs[position] == key:
                    return len(self._starts4) + position
                continue
            first = bisect_left(highs, high, begin, end)
            last = bisect_right(highs, high, first, end)
            if first == last:
                continue
            key = low & _mask64(length - 64)
            position = bisect_left(lows, key, first, last)
            if position < last and lows[position] == key:
                return len(self._starts4) + position
        return -1

    def _network_at(self, index: int) -> str:
        count4 = len(self._starts4)
        if index < count4:
            length = _length_at(self._runs4, index)
            text = str(IPv4Address(self._starts4[index]))
            return text if length == 32 else f"{text}/{length}"
        position = index - count4
        length = _length_at(self._runs6, position)
        text = str(IPv6Address(self._high[position] << 64 | self._low[position]))
        return text if length == 128 else f"{text}/{length}"

    def _provenance_at(self, index: int) -> Provenance:
        event_id, event_uuid, event_info = self._event_table[self._events[index]]
        raw = self._uuids[16 * index : 16 * index + 16]
        if any(raw):
            d = raw.hex()
            attribute_uuid = f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"
        else:
            attribute_uuid = self._other_uuids.get(index, "")
        return Provenance(event_id, event_uuid, event_info, attribute_uuid)

    def entries(self) -> Iterator[IpEntry]:
        """Every stored network, IPv4 first, each family by prefix length then start."""
        count4 = len(self._starts4)
        for index in range(len(self._events)):
            if index < count4:
                version, start = 4, self._starts4[index]
                length = _length_at(self._runs4, index)
            else:
                position = index - count4
                version, start = 6, self._high[position] << 64 | self._low[position]
                length = _length_at(self._runs6, position)
            provenance = self._provenance_at(index)
            yield IpEntry(
                version,
                start,
                length,
                event_id=provenance.event_id,
                event_uuid=provenance.event_uuid,
                event_info=provenance.event_info,
                attribute_uuid=provenance.attribute_uuid,
            )

    def to_buffers(self) -> list[memoryview]:
        """The payload as consecutive pieces.

        Layout (little-endian): u32 length of a JSON object; the JSON object (counts, the
        prefix-length runs, the event table, uncommon attribute UUIDs); the IPv4 starts
        (u32 each), the IPv6 high and low halves (u64 each), the event indexes (u32 per
        entry) and the packed attribute UUIDs (16 bytes per entry).
        """
        meta = json.dumps(
            {
                "v4": len(self._starts4),
                "v6": len(self._high),
                "runs4": self._runs4,
                "runs6": self._runs6,
                "events": self._event_table,
                "uuids": {str(index): value for index, value in self._other_uuids.items()},
            },
            separators=(",", ":"),
        ).encode("ascii")
        pieces: list[Any] = [
            _META_LENGTH.pack(len(meta)),
            meta,
            little_endian(self._starts4),
            little_endian(self._high),
            little_endian(self._low),
            little_endian(self._events),
            self._uuids,
        ]
        return [memoryview(piece).cast("B") for piece in pieces]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, copy: bool = True) -> IpSet:
        """Rebuild a set from `to_buffers()` output; `ValueError` when it is not one.

        With `copy` false the tables are views of `data`, as `DomainSet.from_bytes` says.
        """
        try:
            return _parse(memoryview(data).cast("B"), copy)
        except ValueError:
            raise
        except (struct.error, KeyError, TypeError, IndexError, OverflowError) as error:
            raise ValueError(f"malformed IP set: {error!r}") from error


def _length_at(runs: tuple[_Run, ...], position: int) -> int:
    for length, begin, end in runs:
        if begin <= position < end:
            return length
    raise IndexError(position)  # pragma: no cover - positions come from the runs


def _runs(items: object, count: int, bits: int) -> tuple[_Run, ...]:
    """The prefix-length runs of the payload, checked to tile 0..count, longest first."""
    if not isinstance(items, list):
        raise ValueError("malformed IP set: bad runs")
    runs: list[_Run] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in item)
        ):
            raise ValueError(f"malformed IP set: bad run {item!r}")
        runs.append((item[0], item[1], item[2]))
    position = 0
    for length, begin, end in sorted(runs, key=lambda run: run[1]):
        if begin != position or end <= begin or not 0 <= length <= bits:
            raise ValueError("malformed IP set: runs do not tile the entries")
        position = end
    lengths = [run[0] for run in runs]
    if position != count or lengths != sorted(set(lengths), reverse=True):
        raise ValueError("malformed IP set: runs do not tile the entries")
    return tuple(runs)


def _event(item: object) -> tuple[str, str, str]:
    if (
        not isinstance(item, list)
        or len(item) != 3
        or not all(isinstance(part, str) for part in item)
    ):
        raise ValueError(f"malformed IP set: bad event {item!r}")
    return (item[0], item[1], item[2])


def _parse(data: memoryview, copy: bool = True) -> IpSet:
    (meta_length,) = _META_LENGTH.unpack_from(data, 0)
    position = _META_LENGTH.size
    meta = json.loads(bytes(data[position : position + meta_length]))
    position += meta_length
    count4, count6 = meta["v4"], meta["v6"]
    for number in (count4, count6):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"malformed IP set: bad count {number!r}")
    runs4 = _runs(meta["runs4"], count4, 32)
    runs6 = _runs(meta["runs6"], count6, 128)
    event_table = tuple(_event(item) for item in meta["events"])
    other_uuids = {int(index): str(value) for index, value in meta["uuids"].items()}
    count = count4 + count6
    sizes = (4 * count4, 8 * count6, 8 * count6, 4 * count, 16 * count)
    if position + sum(sizes) != len(data):
        raise ValueError("malformed IP set: sizes do not add up to the payload length")
    pieces = []
    for size in sizes:
        pieces.append(data[position : position + size])
        position += size
    integers = array_from_little_endian if copy else view_little_endian
    events = integers(_U32, pieces[3])
    if count and max(events) >= len(event_table):
        raise ValueError("malformed IP set: event index out of range")
    return IpSet(
        starts4=integers(_U32, pieces[0]),
        high=integers(_U64, pieces[1]),
        low=integers(_U64, pieces[2]),
        runs4=runs4,
        runs6=runs6,
        events=events,
        uuids=bytes(pieces[4]) if copy else pieces[4],
        other_uuids=other_uuids,
        event_table=event_table,
    )


class IpSetBuilder:
    """Collects `IpEntry` values (`add`), then sorts and packs them (`finish`).

    Entries wait as one integer each (prefix length, network start, entry number), so a
    million of them cost a list of integers, not a million objects. Not thread-safe: one
    thread at a time.
    """

    def __init__(self) -> None:
        # (length << 32 | start) << 32 | number for IPv4, (length << 128 | start) << 32 |
        # number for IPv6: sorting them orders by length, then start, then first given.
        self.keys4: list[int] = []
        self.keys6: list[int] = []
        self.events: array[int] = array(_U32)
        self.uuids = bytearray()
        self.other_uuids: dict[int, str] = {}
        self.event_index: dict[tuple[str, str, str], int] = {}

    def add(self, entry: IpEntry) -> None:
        """Add one network (host bits are assumed clear, as `normalize` leaves them)."""
        number = len(self.events)
        if entry.version == 4:
            self.keys4.append((entry.length << 32 | entry.start) << 32 | number)
        else:
            self.keys6.append((entry.length << 128 | entry.start) << 32 | number)
        event = (entry.event_id, entry.event_uuid, entry.event_info)
        index = self.event_index.get(event)
        if index is None:
            index = self.event_index[event] = len(self.event_index)
        self.events.append(index)
        attribute_uuid = entry.attribute_uuid
        if _CANONICAL_UUID.fullmatch(attribute_uuid) and attribute_uuid != _NIL_UUID:
            self.uuids += bytes.fromhex(attribute_uuid.replace("-", ""))
        else:
            self.uuids += bytes(16)
            if attribute_uuid:
                self.other_uuids[number] = attribute_uuid

    def finish(self) -> IpSet:
        """The set of the networks added so far, a repeated network kept once (the first)."""
        starts4, numbers4, runs4 = _sorted_unique(self.keys4, 32)
        starts6, numbers6, runs6 = _sorted_unique(self.keys6, 128)
        high = array(_U64, [start >> 64 for start in starts6])
        low = array(_U64, [start & _LOW64 for start in starts6])
        numbers = numbers4 + numbers6
        source_events = self.events
        events = array(_U32, [source_events[n] for n in numbers])
        source_uuids = memoryview(self.uuids)
        uuids = b"".join([source_uuids[16 * n : 16 * n + 16] for n in numbers])
        other_uuids: dict[int, str] = {}
        if self.other_uuids:
            for position, number in enumerate(numbers):
                if number in self.other_uuids:
                    other_uuids[position] = self.other_uuids[number]
        return IpSet(
            starts4=array(_U32, starts4),
            high=high,
            low=low,
            runs4=runs4,
            runs6=runs6,
            events=events,
            uuids=uuids,
            other_uuids=other_uuids,
            event_table=tuple(self.event_index),
        )


# A nil UUID packs to sixteen zero bytes, which mean "no packed UUID": keep it as text.
_NIL_UUID = "00000000-0000-0000-0000-000000000000"
_NUMBER = 0xFFFFFFFF


def _sorted_unique(keys: list[int], bits: int) -> tuple[list[int], list[int], tuple[_Run, ...]]:
    """From composite keys: the network starts in order (the first of equal ones only),
    their entry numbers, and the runs per prefix length, longest first."""
    keys.sort()
    starts: list[int] = []
    numbers: list[int] = []
    runs: list[_Run] = []
    all_bits = (1 << bits) - 1
    previous = -1
    begin = 0
    length = -1
    for key in keys:
        network = key >> 32
        if network == previous:
            continue
        previous = network
        if network >> bits != length:
            if length >= 0:
                runs.append((length, begin, len(starts)))
            length, begin = network >> bits, len(starts)
        starts.append(network & all_bits)
        numbers.append(key & _NUMBER)
    if length >= 0:
        runs.append((length, begin, len(starts)))
    # Sorted by ascending length; a lookup wants the longest first.
    return starts, numbers, tuple(reversed(runs))
