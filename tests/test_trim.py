"""After a refresh the memory its decoding freed goes back to the system."""

from __future__ import annotations

import platform
from pathlib import Path

from misp_dns.intel.trim import release_free_memory

GLIBC = platform.libc_ver()[0] == "glibc"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_freed_pages_scattered_between_live_blocks_are_given_back() -> None:
    """What a page decode leaves behind (free blocks between survivors) leaves the RSS.

    misp-dns runs on glibc systems (Debian, as `make test` installs its tools with apt-get);
    elsewhere there is nothing to trim and this test fails, saying so."""
    assert GLIBC, "malloc_trim is glibc's; this libc is " + repr(platform.libc_ver())
    blocks = [bytearray(4000) for _ in range(40_000)]  # about 160 MiB, inside malloc's heap
    survivors = blocks[::16]
    del blocks
    before = _rss_mib()
    assert release_free_memory() is True
    after = _rss_mib()
    assert before - after > 80, (before, after)
    assert len(survivors) == 2500
