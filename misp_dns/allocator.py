"""Keeping the C allocator (glibc's malloc) from holding memory a long-running server freed.

Three habits of glibc make a Python server's resident memory creep up over days of
refreshes, though the objects it holds stay the same:

- It keeps freed pages for later use, scattered between the blocks still in use.
  `release_free_memory()` asks it to return them (`malloc_trim`), which costs a millisecond
  or two; misp-dns does so after every MISP refresh.
- It gives each thread that allocates its own arena (up to eight per core), and an arena
  keeps its own free pages. The thread pool's workers take turns at decoding MISP pages and
  saving snapshots, so each of them would grow an arena of its own.
- It serves a large block (128 KiB and up) from a mapping of its own, returned to the
  system when the block is freed, but each time such a block is freed it raises that
  threshold to the block's size. After the first refresh, MISP page bodies and the
  snapshot's arrays (megabytes each) are carved from the heap instead, between small
  blocks that live on, and their pages stay there after they are freed.

`configure_malloc()`, called once at start before any thread, makes the threads share one
arena (Python's global interpreter lock already serialises nearly all allocation, so this
costs nothing measurable) and fixes the threshold at 128 KiB. Each setting is left as it is
when its environment variable is set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`): the
operator chose. Elsewhere than glibc (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

__all__ = ["SETTINGS", "configure_malloc", "release_free_memory"]

#: mallopt's parameter numbers, from glibc's <malloc.h>.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: What `configure_malloc` sets: the environment variable that overrides it, and the
#: mallopt parameter and value.
SETTINGS = {
    "MALLOC_ARENA_MAX": (_M_ARENA_MAX, 1),
    "MALLOC_MMAP_THRESHOLD_": (_M_MMAP_THRESHOLD, 128 * 1024),
}


@functools.cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):
        return None
    return libc


def release_free_memory() -> bool:
    """Return the C allocator's free pages to the system; True if it released any."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def configure_malloc() -> list[str]:
    """Apply `SETTINGS`, except those the environment sets; the names of those applied.

    Call it before threads start: arenas made earlier stay.
    """
    libc = _glibc()
    if libc is None:
        return []
    applied = []
    for variable, (parameter, value) in SETTINGS.items():
        if not os.environ.get(variable) and libc.mallopt(parameter, value):
            applied.append(variable)
    return applied
