"""misp-dns instances configured for the abuse tests, and what a test can see of a process.

The fixtures here start their own twistd (one per module at most), each with the one setting
its tests need (thousands of TCP connections, a small rate limit with nothing exempt, two
upstreams of which the first is dead or silent, ...), so the shared servers of `conftest`
keep their state. Test modules import the fixtures they use, and `no_abuse_server_errors`,
which fails a test during which one of these servers logged a traceback or an unhandled
error (the rule `conftest` applies to the shared servers).

`ProcessStatus` reads a process's resident memory and open descriptors from /proc.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from .server_group import NOWHERE, ServerGroup
from .wire import Address

__all__ = [
    "FLOOD_IDLE_TIMEOUT",
    "IDLE_CAP",
    "IDLE_TIMEOUT",
    "RATE_LIMIT",
    "UPSTREAM_TIMEOUT",
    "ProcessStatus",
    "any_server",
    "blackhole",
    "dead_first_server",
    "flood_server",
    "hostile_server",
    "idle_server",
    "no_abuse_server_errors",
    "rrl_server",
    "silent_first_server",
    "unread_server",
]

#: The flood server closes idle TCP connections after this many seconds.
FLOOD_IDLE_TIMEOUT = 2
#: The idle server's connection cap and idle timeout.
IDLE_CAP = 1050
IDLE_TIMEOUT = 4
#: The rate-limited server's UDP responses per second per client network.
RATE_LIMIT = 20
#: Upstream timeout of the servers that face broken upstreams.
UPSTREAM_TIMEOUT = 1.5

_servers = ServerGroup(scope="module")
#: How the servers facing the scripted upstream (`conftest.fake_upstream`) probe and wait.
_SCRIPTED: dict[str, Any] = {"probe": "probe.answer.fake.", "upstream_timeout": UPSTREAM_TIMEOUT}


@attrs.frozen
class ProcessStatus:
    """A process's resident memory (kB) and number of open file descriptors."""

    rss_kb: int
    fds: int

    @classmethod
    def of(cls, pid: int) -> ProcessStatus:
        """Read /proc/<pid>/status and /proc/<pid>/fd now."""
        rss = 0
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return cls(rss, len(os.listdir(f"/proc/{pid}/fd")))


@pytest.fixture(autouse=True)
def no_abuse_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which one of these servers logged a traceback or unhandled error."""
    yield from _servers.check_logs(request)


flood_server = _servers.fixture(
    "flood_server",
    "misp-dns forwarding to Unbound, for the packet floods (loopback exempt from RRL).",
    upstreams=["unbound"],
    tcp_idle_timeout=FLOOD_IDLE_TIMEOUT,
    upstream_timeout=3,
)
idle_server = _servers.fixture(
    "idle_server",
    "misp-dns taking up to IDLE_CAP TCP connections, closed after IDLE_TIMEOUT idle s.",
    upstreams=["unbound"],
    tcp_idle_timeout=IDLE_TIMEOUT,
    tcp_max_connections=IDLE_CAP,
    tcp_max_connections_per_client=IDLE_CAP,
)
unread_server = _servers.fixture(
    "unread_server",
    "misp-dns forwarding to Unbound, for a TCP client that never reads its answers.",
    upstreams=["unbound"],
)
rrl_server = _servers.fixture(
    "rrl_server",
    "misp-dns with rate_limit = RATE_LIMIT, slip 2, and nothing exempt (loopback counts).",
    upstreams=["unbound"],
    rate_limit=RATE_LIMIT,
    rate_limit_slip=2,
    rate_limit_exempt=[],
)
any_server = _servers.fixture(
    "any_server",
    "misp-dns forwarding to the scripted upstream (which records every query it gets).",
    upstreams=["fake_upstream"],
    **_SCRIPTED,
)
dead_first_server = _servers.fixture(
    "dead_first_server",
    "misp-dns with two upstreams: first a loopback port nothing listens on, then the "
    "scripted upstream.",
    upstreams=[NOWHERE, "fake_upstream"],
    **_SCRIPTED,
)
hostile_server = _servers.fixture(
    "hostile_server",
    "misp-dns whose only upstream is the scripted one, giving up after UPSTREAM_TIMEOUT: "
    "for its late, forged and garbage answers and broken TCP.",
    upstreams=["fake_upstream"],
    **_SCRIPTED,
)


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Address]:
    """A loopback UDP port that is bound (so no ICMP error) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()


silent_first_server = _servers.fixture(
    "silent_first_server",
    "misp-dns with two upstreams: first one that never answers, then the scripted one.",
    upstreams=["blackhole", "fake_upstream"],
    **_SCRIPTED,
)
