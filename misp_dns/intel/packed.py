"""Integer arrays as they are stored on disk: little-endian, whatever the host's byte order.

The domain set and the IP set keep their tables in `array.array`s and write them out, and
map them back, as raw bytes; these two helpers make those bytes the same on every host.
"""

from __future__ import annotations

import sys
from array import array

__all__ = ["array_from_little_endian", "little_endian"]


def little_endian(values: array[int]) -> array[int]:
    """`values` with its items in little-endian byte order (itself on a little-endian host)."""
    if sys.byteorder == "little":
        return values
    swapped = array(values.typecode, values)  # pragma: no cover - big-endian hosts only
    swapped.byteswap()  # pragma: no cover
    return swapped  # pragma: no cover


def array_from_little_endian(typecode: str, data: memoryview) -> array[int]:
    """A new array of `typecode` items read from the little-endian bytes `data`."""
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts only
        values.byteswap()
    return values
