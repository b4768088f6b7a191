"""misp-dns keeps glibc's malloc from holding the memory it freed: free pages go back after a
refresh, and the thread pool's workers share one arena instead of growing one each."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

from integration.hostile_dns import rss_kib

from misp_dns.allocator import release_free_memory

GLIBC = platform.libc_ver()[0] == "glibc"
REQUIRES_GLIBC = (
    "misp-dns runs on glibc systems (Debian, as `make test` installs its tools with "
    "apt-get); elsewhere there is nothing to tune and these tests fail, saying so. libc: "
    + repr(platform.libc_ver())
)


def _rss_mib() -> float:
    return rss_kib(os.getpid()) / 1024


def test_freed_pages_scattered_between_live_blocks_are_given_back() -> None:
    """What a page decode leaves behind (free blocks between survivors) leaves the RSS."""
    assert GLIBC, REQUIRES_GLIBC
    blocks = [bytearray(4000) for _ in range(40_000)]  # about 160 MiB, inside malloc's heap
    survivors = blocks[::16]
    del blocks
    before = _rss_mib()
    assert release_free_memory() is True
    after = _rss_mib()
    assert before - after > 80, (before, after)
    assert len(survivors) == 2500


_ARENAS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from misp_dns.allocator import limit_arenas

    limited = limit_arenas() if sys.argv[1] == "limit" else None
    held = []
    together = threading.Barrier(4)

    def work():
        # Alive at once, like a thread pool's workers. Blocks above Python's small-object
        # size come from malloc, in this thread's arena.
        together.wait()
        held.append([bytes(2000) for _ in range(2000)])
        together.wait()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(limited)
    sys.stdout.flush()
    ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" section per arena, on stderr
    """
)


def _arenas(mode: str, **environment: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | environment,
        check=True,
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


def test_worker_threads_share_one_arena_once_limited() -> None:
    """Without the limit each worker thread grows an arena of its own; with it, one."""
    assert GLIBC, REQUIRES_GLIBC
    _, unlimited = _arenas("default")
    assert unlimited > 2
    limited, arenas = _arenas("limit")
    assert (limited, arenas) == ("True", 1)


def test_an_operator_set_arena_limit_is_left_alone() -> None:
    """`MALLOC_ARENA_MAX` in the environment (a systemd `Environment=`) wins."""
    assert GLIBC, REQUIRES_GLIBC
    limited, arenas = _arenas("limit", MALLOC_ARENA_MAX="3")
    assert limited == "False"
    assert arenas == 3
