"""misp-dns instances configured for the abuse tests, and what a test can see of a process.

The fixtures here start their own twistd (one per module at most), each with the one setting
its tests need (thousands of TCP connections, a small rate limit with nothing exempt, two
upstreams of which the first is dead, ...), so the shared servers of `conftest` keep their
state. Test modules import the fixtures they use, and `no_abuse_server_errors`, which fails
a test during which one of these servers logged a traceback or an unhandled error (the same
rule `conftest._no_server_errors` applies to the shared servers).

`ProcessStatus` reads a process's resident memory and open descriptors from /proc.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import free_port

from .abuse_upstreams import HostileUpstream
from .fake_upstream import ScriptedUpstream
from .server import MispDnsProcess, write_toml
from .unbound import UnboundProcess
from .wire import Address

__all__ = [
    "ERROR_MARKERS",
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
    "hostile_upstream",
    "idle_server",
    "new_errors",
    "no_abuse_server_errors",
    "rrl_server",
    "silent_first_server",
    "start_server",
]

#: What a server's log must never show (as `conftest._ERROR_MARKERS`).
ERROR_MARKERS = ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error")
#: The flood server closes idle TCP connections after this many seconds.
FLOOD_IDLE_TIMEOUT = 2
#: The idle server's connection cap and idle timeout.
IDLE_CAP = 1050
IDLE_TIMEOUT = 4
#: The rate-limited server's UDP responses per second per client network.
RATE_LIMIT = 20
#: Upstream timeout of the servers that face broken upstreams.
UPSTREAM_TIMEOUT = 1.5

_running: list[MispDnsProcess] = []


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


def start_server(
    directory: Path,
    server: Mapping[str, Any],
    *,
    probe: str = "www.test.",
    max_entries: int = 1000,
) -> MispDnsProcess:
    """Start `twistd misp-dns` with `[server]` = `server` in `directory`; wait until it answers."""
    (directory / "state").mkdir(exist_ok=True)
    config = write_toml(
        directory / "misp-dns.toml",
        {
            "server": {"server_name": "dns.test.example", "state_dir": str(directory / "state")}
            | dict(server),
            "cache": {"max_entries": max_entries},
        },
    )
    host, _, port = str(server["listen"][0]).rpartition(":")
    process = MispDnsProcess(config, [(host.strip("[]"), int(port))], directory)
    process.start(probe=probe)
    _running.append(process)
    return process


def _stop(process: MispDnsProcess) -> None:
    _running.remove(process)
    process.stop()


def new_errors(process: MispDnsProcess, since: int) -> str:
    """What `process` logged from byte `since` on, if it holds an error marker; else ""."""
    text = process.log_text(start=since, limit=1 << 30)
    return text if any(marker in text for marker in ERROR_MARKERS) else ""


@pytest.fixture(autouse=True)
def no_abuse_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which one of these servers logged a traceback or unhandled error."""
    before = {id(process): process.log_size() for process in _running}
    yield
    if request.node.get_closest_marker("allow_errors") is not None:
        return
    for process in list(_running):
        text = new_errors(process, before.get(id(process), 0))
        if text:
            pytest.fail(
                f"misp-dns ({process.config}) logged an error during the test:\n{text[-6000:]}",
                pytrace=False,
            )


def _listen() -> list[str]:
    return [f"127.0.0.1:{free_port()}"]


@pytest.fixture(scope="module")
def flood_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[MispDnsProcess]:
    """misp-dns forwarding to Unbound, for the packet floods (loopback exempt from RRL)."""
    process = start_server(
        tmp_path_factory.mktemp("flood"),
        {
            "listen": _listen(),
            "upstreams": [f"127.0.0.1:{unbound.address[1]}"],
            "tcp_idle_timeout": FLOOD_IDLE_TIMEOUT,
            "upstream_timeout": 3,
        },
    )
    yield process
    _stop(process)


@pytest.fixture(scope="module")
def idle_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[MispDnsProcess]:
    """misp-dns taking up to IDLE_CAP TCP connections, closed after IDLE_TIMEOUT idle s."""
    process = start_server(
        tmp_path_factory.mktemp("idle"),
        {
            "listen": _listen(),
            "upstreams": [f"127.0.0.1:{unbound.address[1]}"],
            "tcp_idle_timeout": IDLE_TIMEOUT,
            "tcp_max_connections": IDLE_CAP,
        },
    )
    yield process
    _stop(process)


@pytest.fixture(scope="module")
def rrl_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[MispDnsProcess]:
    """misp-dns with rate_limit = RATE_LIMIT, slip 2, and nothing exempt (loopback counts)."""
    process = start_server(
        tmp_path_factory.mktemp("rrl"),
        {
            "listen": _listen(),
            "upstreams": [f"127.0.0.1:{unbound.address[1]}"],
            "rate_limit": RATE_LIMIT,
            "rate_limit_slip": 2,
            "rate_limit_exempt": [],
        },
    )
    yield process
    _stop(process)


@pytest.fixture(scope="module")
def any_server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: ScriptedUpstream
) -> Iterator[MispDnsProcess]:
    """misp-dns forwarding to the scripted upstream (which records every query it gets)."""
    process = start_server(
        tmp_path_factory.mktemp("any"),
        {
            "listen": _listen(),
            "upstreams": [f"{fake_upstream.address[0]}:{fake_upstream.address[1]}"],
            "upstream_timeout": UPSTREAM_TIMEOUT,
        },
        probe="probe.answer.fake.",
    )
    yield process
    _stop(process)


@pytest.fixture(scope="module")
def dead_first_server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: ScriptedUpstream
) -> Iterator[MispDnsProcess]:
    """misp-dns with two upstreams: first a loopback port nothing listens on, then the
    scripted upstream."""
    process = start_server(
        tmp_path_factory.mktemp("deadfirst"),
        {
            "listen": _listen(),
            "upstreams": [
                f"127.0.0.1:{free_port()}",
                f"{fake_upstream.address[0]}:{fake_upstream.address[1]}",
            ],
            "upstream_timeout": UPSTREAM_TIMEOUT,
        },
        probe="probe.answer.fake.",
    )
    yield process
    _stop(process)


@pytest.fixture(scope="module")
def hostile_upstream() -> Iterator[HostileUpstream]:
    """The hostile upstream of `abuse_upstreams`."""
    upstream = HostileUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def hostile_server(
    tmp_path_factory: pytest.TempPathFactory, hostile_upstream: HostileUpstream
) -> Iterator[MispDnsProcess]:
    """misp-dns whose only upstream is the hostile one, giving up after UPSTREAM_TIMEOUT."""
    process = start_server(
        tmp_path_factory.mktemp("hostile"),
        {
            "listen": _listen(),
            "upstreams": [f"{hostile_upstream.address[0]}:{hostile_upstream.address[1]}"],
            "upstream_timeout": UPSTREAM_TIMEOUT,
        },
        probe="probe.answer.hostile.",
    )
    yield process
    _stop(process)


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Address]:
    """A loopback UDP port that is bound (so no ICMP error) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()


@pytest.fixture(scope="module")
def silent_first_server(
    tmp_path_factory: pytest.TempPathFactory,
    blackhole: Address,
    hostile_upstream: HostileUpstream,
) -> Iterator[MispDnsProcess]:
    """misp-dns with two upstreams: first one that never answers, then the hostile one."""
    process = start_server(
        tmp_path_factory.mktemp("silentfirst"),
        {
            "listen": _listen(),
            "upstreams": [
                f"{blackhole[0]}:{blackhole[1]}",
                f"{hostile_upstream.address[0]}:{hostile_upstream.address[1]}",
            ],
            "upstream_timeout": UPSTREAM_TIMEOUT,
        },
        probe="probe.answer.hostile.",
    )
    yield process
    _stop(process)
