"""Keeping the C allocator (glibc's malloc) from holding memory a long-running server freed.

Two habits of glibc make a Python server's resident memory creep up over days of refreshes,
though the objects it holds stay the same:

- It keeps freed pages for later use, scattered between the blocks still in use.
  `release_free_memory()` asks it to return them (`malloc_trim`), which costs a millisecond
  or two; misp-dns does so after every MISP refresh.
- It gives each thread that allocates its own arena (up to eight per core), and an arena
  keeps its own free pages. The thread pool's workers take turns at decoding MISP pages and
  saving snapshots, so each of them grows an arena of its own.
  `limit_arenas()`, called once at start, makes every thread share one arena (Python's
  global interpreter lock already serialises nearly all allocation, so sharing costs
  nothing measurable). A `MALLOC_ARENA_MAX` set in the environment is left as it is.

Elsewhere (musl, macOS) both do nothing and return False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

__all__ = ["limit_arenas", "release_free_memory"]

#: mallopt's parameter number for the arena limit, from glibc's <malloc.h>.
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):
            return None
    except (OSError, AttributeError):
        return None
    return libc


def release_free_memory() -> bool:
    """Return the C allocator's free pages to the system; True if it released any."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def limit_arenas(count: int = 1) -> bool:
    """Let threads share `count` malloc arenas; True if the limit was set.

    Call it before threads start: arenas made earlier stay. Nothing is changed when the
    environment sets `MALLOC_ARENA_MAX` (the operator chose) or outside glibc.
    """
    libc = _glibc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, count))
