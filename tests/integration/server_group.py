"""misp-dns servers under twistd as pytest fixtures, and the check that none logged an error.

A `ServerGroup` holds the servers started for a set of tests, each server in a fixture of the
group's scope (`conftest` has one group for the session-wide servers, `abuse_servers` one
for servers that live as long as a test module):

- `group.fixture(name, doc, upstreams=[...], **settings)` makes a fixture that starts
  `twistd misp-dns` in a temporary folder of its own, listening on a free loopback port
  (and on ::1 too with `ipv6=True`, when the host has it), with `settings` added to the
  `[server]` table; it waits until the server answers, yields the `MispDnsProcess`, and
  stops it afterwards. Each upstream is named by a fixture, whose value is an `Address` or
  has an `address` (Unbound, a scripted upstream), or is `NOWHERE`, a loopback port nothing
  listens on. The fixture requests the fixtures it names, as if they were its arguments.
- `group.watch(process)` adds a server started elsewhere, and `group.check_logs(request)`,
  run around a test by an autouse fixture, fails the test if a running server of the group
  logged a traceback or an unhandled error meanwhile (unless it is marked `allow_errors`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .net import free_port, ipv6_loopback_available
from .server import MispDnsProcess, write_toml
from .wire import Address

__all__ = ["ERROR_MARKERS", "NOWHERE", "ServerGroup", "new_errors"]

#: What a server's log must never show.
ERROR_MARKERS = ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error")
#: In `ServerGroup.fixture`'s upstreams: a loopback port nothing listens on.
NOWHERE = "<nowhere>"


def new_errors(process: MispDnsProcess, since: int) -> str:
    """What `process` logged from byte `since` on, if it holds an error marker; else ""."""
    text = process.log_text(start=since, limit=1 << 30)
    return text if any(marker in text for marker in ERROR_MARKERS) else ""


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _upstream(upstream: str, values: Mapping[str, Any]) -> str:
    """`host:port` of the fixture named `upstream` among `values`, or of nothing."""
    if upstream == NOWHERE:
        return f"127.0.0.1:{free_port()}"
    value = values[upstream]
    host, port = value if isinstance(value, tuple) else value.address
    return f"{host}:{port}"


class ServerGroup:
    """misp-dns servers started for a set of tests, whose logs each test checks."""

    def __init__(self, scope: str = "session") -> None:
        self.scope = scope
        self.running: list[MispDnsProcess] = []

    def watch(self, process: MispDnsProcess) -> MispDnsProcess:
        """Have `check_logs` read the log of `process` (a started server); return it."""
        self.running.append(process)
        return process

    def start(
        self,
        directory: Path,
        server: Mapping[str, Any],
        *,
        probe: str = "www.test.",
        max_entries: int = 1000,
    ) -> MispDnsProcess:
        """Start `twistd misp-dns` with `[server]` = `server` in `directory` (which gets the
        config and a `state` folder); return once it answers, watched."""
        (directory / "state").mkdir(exist_ok=True)
        config = write_toml(
            directory / "misp-dns.toml",
            {
                "server": {"server_name": "dns.test.example", "state_dir": str(directory / "state")}
                | dict(server),
                "cache": {"max_entries": max_entries},
            },
        )
        process = MispDnsProcess(config, [_address(text) for text in server["listen"]], directory)
        process.start(probe=probe)
        return self.watch(process)

    def stop(self, process: MispDnsProcess) -> None:
        """Stop `process` and watch it no more."""
        self.running.remove(process)
        process.stop()

    def fixture(
        self,
        name: str,
        doc: str,
        *,
        upstreams: Sequence[str],
        ipv6: bool = False,
        probe: str = "www.test.",
        max_entries: int = 1000,
        **settings: Any,
    ) -> Any:
        """A fixture `name` (documented by `doc`) yielding a started server (see the module)."""
        wanted = [upstream for upstream in upstreams if upstream != NOWHERE]

        def serve(
            tmp_path_factory: pytest.TempPathFactory, **values: Any
        ) -> Iterator[MispDnsProcess]:
            port = free_port()
            listen = [f"127.0.0.1:{port}"]
            if ipv6 and ipv6_loopback_available():
                listen.append(f"[::1]:{port}")
            table = {
                "listen": listen,
                "upstreams": [_upstream(upstream, values) for upstream in upstreams],
            }
            process = self.start(
                tmp_path_factory.mktemp(name),
                table | settings,
                probe=probe,
                max_entries=max_entries,
            )
            yield process
            self.stop(process)

        serve.__name__ = name
        serve.__doc__ = doc
        # pytest reads a fixture's arguments from its signature: these are the ones it gets.
        keyword = inspect.Parameter.KEYWORD_ONLY
        serve.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(arg, keyword) for arg in ("tmp_path_factory", *wanted)]
        )
        return pytest.fixture(scope=self.scope, name=name)(serve)

    def check_logs(self, request: pytest.FixtureRequest) -> Iterator[None]:
        """Around a test (`yield from` it in an autouse fixture): fail the test if a running
        server of the group logged an error meanwhile, unless it is marked `allow_errors`."""
        before = {id(process): process.log_size() for process in self.running}
        yield
        if request.node.get_closest_marker("allow_errors") is not None:
            return
        for process in list(self.running):
            text = new_errors(process, before.get(id(process), 0))
            if text:
                pytest.fail(
                    f"misp-dns ({process.config}) logged an error during the test:\n{text[-6000:]}",
                    pytrace=False,
                )
