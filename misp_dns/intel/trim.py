"""Giving memory freed by a refresh back to the system.

A refresh decodes megabytes of MISP answers. Python frees those objects at once, but the C
allocator (glibc's malloc) keeps most of the pages for later use, scattered between the
blocks still in use, so a server that refreshes every few minutes would see its resident
memory creep up over days. `release_free_memory()` asks glibc to return the free pages
(`malloc_trim`), which costs a millisecond or two; elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["release_free_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Return the C allocator's free pages to the system; True if it released any."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
