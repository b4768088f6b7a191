"""Fixtures for the end-to-end tests: a real Unbound, misp-dns under twistd, dig.

Processes are started once per session, on first use, on loopback ports chosen at run time,
and stopped at the end. Each misp-dns instance has its own config (the main one forwards to
Unbound; others exercise the ACL, the TCP connection cap, a scripted upstream, and an
unreachable upstream). After each test, anything a server logged that looks like an unhandled
error fails the test (unless it is marked `allow_errors`), and the logs of the processes a
failed test used are attached to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_tool

from .fake_upstream import ScriptedUpstream
from .net import ipv6_loopback_available
from .server import MispDnsProcess, write_toml
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

_ERROR_MARKERS = ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error")
_running: list[MispDnsProcess] = []


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
            if isinstance(value, MispDnsProcess | UnboundProcess):
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


def _start(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    server: dict[str, Any],
    probe: str = "www.test.",
    max_entries: int = 1000,
) -> MispDnsProcess:
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "state").mkdir()
    listen = server["listen"]
    config = write_toml(
        workdir / "misp-dns.toml",
        {
            "server": {"server_name": "dns.test.example", "state_dir": str(workdir / "state")}
            | server,
            "cache": {"max_entries": max_entries},
        },
    )
    addresses = [_address(text) for text in listen]
    process = MispDnsProcess(config, addresses, workdir)
    process.start(probe=probe)
    _running.append(process)
    return process


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _stop(process: MispDnsProcess) -> None:
    _running.remove(process)
    process.stop()


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[MispDnsProcess]:
    """misp-dns forwarding to Unbound, on 127.0.0.1 (and ::1 when the host has IPv6)."""
    port = free_port()
    listen = [f"127.0.0.1:{port}"]
    if ipv6_loopback_available():
        listen.append(f"[::1]:{port}")
    process = _start(
        tmp_path_factory,
        "server",
        {
            "listen": listen,
            "upstreams": [f"127.0.0.1:{unbound.address[1]}"],
            "tcp_idle_timeout": IDLE_TIMEOUT,
            "upstream_timeout": 3,
        },
    )
    yield process
    _stop(process)


@pytest.fixture(scope="session")
def acl_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[MispDnsProcess]:
    """misp-dns that allows only 127.0.0.2 and ::1, so 127.0.0.1 is an outside client."""
    port = free_port()
    process = _start(
        tmp_path_factory,
        "acl",
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"127.0.0.1:{unbound.address[1]}"],
            "allow_clients": [f"{ALLOWED_SOURCE}/32", "::1/128"],
        },
    )
    yield process
    _stop(process)


@pytest.fixture(scope="session")
def capped_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[MispDnsProcess]:
    """misp-dns that accepts at most MAX_TCP concurrent TCP connections."""
    port = free_port()
    process = _start(
        tmp_path_factory,
        "capped",
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"127.0.0.1:{unbound.address[1]}"],
            "tcp_max_connections": MAX_TCP,
            "tcp_idle_timeout": 30,
        },
    )
    yield process
    _stop(process)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[ScriptedUpstream]:
    """A scripted upstream (see `integration.fake_upstream`)."""
    upstream = ScriptedUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def scripted_server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: ScriptedUpstream
) -> Iterator[MispDnsProcess]:
    """misp-dns forwarding to the scripted upstream, giving up after UPSTREAM_TIMEOUT."""
    port = free_port()
    process = _start(
        tmp_path_factory,
        "scripted",
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"{fake_upstream.address[0]}:{fake_upstream.address[1]}"],
            "upstream_timeout": UPSTREAM_TIMEOUT,
        },
        probe="probe.answer.fake.",
        max_entries=SCRIPTED_CACHE_SIZE,
    )
    yield process
    _stop(process)


@pytest.fixture(scope="session")
def unreachable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispDnsProcess]:
    """misp-dns whose only upstream is a loopback port nothing listens on."""
    port = free_port()
    process = _start(
        tmp_path_factory,
        "unreachable",
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"127.0.0.1:{free_port()}"],
            "upstream_timeout": UPSTREAM_TIMEOUT,
        },
    )
    yield process
    _stop(process)


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which a running misp-dns logged a traceback or unhandled error."""
    before = {id(process): process.log_size() for process in _running}
    yield
    if request.node.get_closest_marker("allow_errors") is not None:
        return
    for process in list(_running):
        text = process.log_text(start=before.get(id(process), 0), limit=1 << 30)
        if any(marker in text for marker in _ERROR_MARKERS):
            pytest.fail(
                f"misp-dns ({process.config}) logged an error during the test:\n{text[-6000:]}",
                pytrace=False,
            )


@pytest.fixture
def nonce(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Build `<unique>.<behaviour>.fake.` names so no two tests share a cache entry."""
    counter = iter(range(1_000_000))
    stem = "".join(ch for ch in request.node.name.lower() if ch.isalnum())[-30:]

    def make(behaviour: str) -> str:
        return f"{stem}{next(counter)}.{behaviour}.fake."

    return make
