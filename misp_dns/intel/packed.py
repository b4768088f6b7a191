"""Integer arrays as they are stored on disk: little-endian, whatever the host's byte order.

The domain set and the IP set keep their tables in `array.array`s and write them out, and
map them back, as raw bytes; these helpers make those bytes the same on every host.
`view_little_endian` reads them in place instead: a set loaded from a memory-mapped snapshot
(`misp_dns.intel.store.load_mapped`) then holds no copy of its tables, and the serving
processes that map one file share its pages.
"""

from __future__ import annotations

import sys
from array import array
from typing import TypeAlias

__all__ = ["IntArray", "array_from_little_endian", "little_endian", "view_little_endian"]

#: What a set's integer tables are: arrays it built or read, or views of a mapped file.
IntArray: TypeAlias = "array[int] | memoryview"


def little_endian(values: IntArray) -> IntArray:
    """`values` with its items in little-endian byte order (itself on a little-endian host)."""
    if sys.byteorder == "little":
        return values
    swapped = array(
        values.format if isinstance(values, memoryview) else values.typecode, values
    )  # pragma: no cover - big-endian hosts only
    swapped.byteswap()  # pragma: no cover
    return swapped  # pragma: no cover


def array_from_little_endian(typecode: str, data: memoryview) -> array[int]:
    """A new array of `typecode` items read from the little-endian bytes `data`."""
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts only
        values.byteswap()
    return values


def view_little_endian(typecode: str, data: memoryview) -> IntArray:
    """The little-endian bytes `data` seen as items of `typecode`: on a little-endian host a
    view of the same memory (no copy), elsewhere a converted array."""
    if sys.byteorder == "little":
        return data.cast(typecode)  # type: ignore[call-overload]
    return array_from_little_endian(typecode, data)  # pragma: no cover - big-endian hosts
