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
    from misp_dns.allocator import configure_malloc

    applied = configure_malloc() if sys.argv[1] == "configure" else []
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
    print(",".join(applied))
    sys.stdout.flush()
    ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" section per arena, on stderr
    """
)


def _run(script: str, mode: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | environment,
        check=True,
    )


def _arenas(mode: str, **environment: str) -> tuple[str, int]:
    done = _run(_ARENAS, mode, **environment)
    return done.stdout.strip(), done.stderr.count("Arena ")


def test_worker_threads_share_one_arena_once_configured() -> None:
    """Without it each worker thread grows an arena of its own; with it, there is one."""
    assert GLIBC, REQUIRES_GLIBC
    _, default = _arenas("default")
    assert default > 2
    applied, arenas = _arenas("configure")
    assert applied == "MALLOC_ARENA_MAX,MALLOC_MMAP_THRESHOLD_"
    assert arenas == 1


def test_an_operator_set_arena_limit_is_left_alone() -> None:
    """`MALLOC_ARENA_MAX` in the environment (a systemd `Environment=`) wins."""
    assert GLIBC, REQUIRES_GLIBC
    applied, arenas = _arenas("configure", MALLOC_ARENA_MAX="3")
    assert applied == "MALLOC_MMAP_THRESHOLD_"
    assert arenas == 3


_LARGE_BLOCKS = textwrap.dedent(
    """
    import ctypes, sys
    from misp_dns.allocator import configure_malloc

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "configure":
        configure_malloc()
    page = bytes(4 << 20)  # a page body of a few MiB, freed once parsed
    del page
    mapped = libc.mallinfo2().hblks
    arrays = [bytearray(300_000) for _ in range(8)]  # the next snapshot's arrays
    print(libc.mallinfo2().hblks - mapped)
    """
)


def test_large_blocks_keep_a_mapping_of_their_own_after_a_larger_one_was_freed() -> None:
    """glibc would carve them from the heap once a block of a few MiB was freed; configured,
    each still gets its own mapping, which goes back to the system when it is freed."""
    assert GLIBC, REQUIRES_GLIBC
    assert _run(_LARGE_BLOCKS, "default").stdout.strip() == "0"
    assert _run(_LARGE_BLOCKS, "configure").stdout.strip() == "8"
