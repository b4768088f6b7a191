"""Fixtures for the end-to-end tests: a real Unbound, misp-dns under twistd, dig.

Processes are started once per session, on first use, on loopback ports chosen at run time,
and stopped at the end. Each misp-dns instance has its own config (the main one forwards to
Unbound; others exercise the ACL, the TCP connection cap, a scripted upstream, and an
unreachable upstream). After each test, anything a server logged that looks like an unhandled
error fails the test (unless it is marked `allow_errors`), and the logs of the processes a
failed test used are attached to its report.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from conftest import free_port, require_tool

from .daemon import DnsDaemon
from .fake_upstream import ScriptedUpstream
from .server import MispDnsProcess
from .server_group import NOWHERE, ServerGroup
from .unbound import UnboundProcess, integration_config

#: The main server closes idle TCP connections after this many seconds.
IDLE_TIMEOUT = 2
#: The connection-cap server accepts at most this many TCP connections at once.
MAX_TCP = 3
#: The scripted and unreachable-upstream servers give up on an upstream after this long.
UPSTREAM_TIMEOUT = 1.5
#: The scripted-upstream server's cache.max_entries.
SCRIPTED_CACHE_SIZE = 50
#: A client address the ACL server allows (Linux routes all of 127/8 to loopback).
ALLOWED_SOURCE = "127.0.0.2"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder `integration`."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the processes a failed test used to its report."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, MispDnsProcess | DnsDaemon):
                report.sections.append((f"log of {name} ({value.log_path})", value.log_text()))
    return report


@pytest.fixture(scope="session")
def dig() -> str:
    """The path of dig."""
    return require_tool("dig")


@pytest.fixture(scope="session")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundProcess]:
    """A real Unbound on 127.0.0.1 serving the `test.` zone (see `integration.unbound`)."""
    binary = require_tool("unbound")
    directory = tmp_path_factory.mktemp("unbound")
    port = free_port()
    process = UnboundProcess(binary, integration_config(directory, port), ("127.0.0.1", port))
    process.start()
    yield process
    process.stop()


_servers = ServerGroup()

server = _servers.fixture(
    "server",
    "misp-dns forwarding to Unbound, on 127.0.0.1 (and ::1 when the host has IPv6).",
    upstreams=["unbound"],
    ipv6=True,
    tcp_idle_timeout=IDLE_TIMEOUT,
    upstream_timeout=3,
)
acl_server = _servers.fixture(
    "acl_server",
    "misp-dns that allows only 127.0.0.2 and ::1, so 127.0.0.1 is an outside client.",
    upstreams=["unbound"],
    allow_clients=[f"{ALLOWED_SOURCE}/32", "::1/128"],
)
capped_server = _servers.fixture(
    "capped_server",
    "misp-dns that accepts at most MAX_TCP concurrent TCP connections.",
    upstreams=["unbound"],
    tcp_max_connections=MAX_TCP,
    tcp_idle_timeout=30,
)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[ScriptedUpstream]:
    """A scripted upstream (see `integration.fake_upstream`)."""
    upstream = ScriptedUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


scripted_server = _servers.fixture(
    "scripted_server",
    "misp-dns forwarding to the scripted upstream, giving up after UPSTREAM_TIMEOUT.",
    upstreams=["fake_upstream"],
    probe="probe.answer.fake.",
    max_entries=SCRIPTED_CACHE_SIZE,
    upstream_timeout=UPSTREAM_TIMEOUT,
)
unreachable_server = _servers.fixture(
    "unreachable_server",
    "misp-dns whose only upstream is a loopback port nothing listens on.",
    upstreams=[NOWHERE],
    upstream_timeout=UPSTREAM_TIMEOUT,
)


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which a running misp-dns logged a traceback or unhandled error."""
    yield from _servers.check_logs(request)


@pytest.fixture
def nonce(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Build `<unique>.<behaviour>.fake.` names so no two tests share a cache entry."""
    counter = iter(range(1_000_000))
    stem = "".join(ch for ch in request.node.name.lower() if ch.isalnum())[-30:]

    def make(behaviour: str) -> str:
        return f"{stem}{next(counter)}.{behaviour}.fake."

    return make


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is root's alone when run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="misp-dns-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
