"""The example source reads its list off the reactor thread and plugs into misp-dns's config."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

try:
    from example_source import (
        DomainListOptions,
        DomainListSource,
        parse_domain_list,
        plugin,
    )
except ModuleNotFoundError as missing:
    if missing.name != "example_source":
        raise
    # Installed by `make test`; a bare checkout skips these tests, CI must never.
    _MISSING = "misp-dns-example-source is not installed (`make test` installs it)"
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(f"CI must run every test: {_MISSING}", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)

from misp_dns.build import build_policies
from misp_dns.config import parse_config
from misp_dns.interfaces import Duration, IIndicatorSource, PolicyQuery, RawIndicator
from misp_dns.registry import default_registry
from misp_dns.values import ConfigError

_results = SynchronousTestCase()

LIST = """\
# phishing kit, 2025-11
stemtopx.com
   evil.example   # and everything under it

\t# an indented comment
Mixed.Case.example
"""


class QueuedThreadPool:
    """A thread pool that runs its work only when the test calls `run_all`."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[bool, Any], None], Callable[..., Any], Any, Any]] = []

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        """Queue `func`; `run_all` reports its outcome to `on_result`, as a pool thread would."""
        self.queued.append((on_result, func, args, kw))

    def run_all(self) -> None:
        """Run what is queued, as the pool's threads would."""
        while self.queued:
            on_result, func, args, kw = self.queued.pop(0)
            try:
                result = func(*args, **kw)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)


@implementer(IReactorThreads)
class ThreadsReactor(MemoryReactorClock):
    """A MemoryReactorClock with a `QueuedThreadPool`; `callFromThread` runs at once."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = QueuedThreadPool()

    def getThreadPool(self) -> QueuedThreadPool:  # type: ignore[override]
        """The queued pool."""
        return self.pool

    def callInThread(self, callable: Callable[..., Any], *args: object, **kw: object) -> None:
        """Queue `callable` in the pool."""
        self.pool.callInThreadWithCallback(lambda *_: None, callable, *args, **kw)

    def callFromThread(self, callable: Callable[..., Any], *args: object, **kw: object) -> None:
        """Run `callable` now: the test is the reactor thread."""
        callable(*args, **kw)

    def suggestThreadPoolSize(self, size: int) -> None:
        """Nothing to resize."""


def write_list(tmp_path: Path, text: str = LIST) -> Path:
    path = tmp_path / "domains.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_lines_are_domains_without_comments_blanks_or_spaces() -> None:
    """Comments (whole-line or trailing), blank lines and surrounding white space are ignored."""
    assert list(parse_domain_list(LIST.splitlines())) == [
        "stemtopx.com",
        "evil.example",
        "Mixed.Case.example",
    ]


def test_fetch_reads_the_file_in_the_thread_pool(tmp_path: Path) -> None:
    """`fetch` only queues the read in the reactor's pool; once the pool ran it, the Deferred
    fires on the reactor thread with one `domain` indicator per listed domain."""
    reactor = ThreadsReactor()
    assert verifyObject(IReactorThreads, reactor)
    source = DomainListSource(str(write_list(tmp_path)), reactor)
    assert verifyObject(IIndicatorSource, source)

    fetched = source.fetch()
    assert not fetched.called and len(reactor.pool.queued) == 1
    reactor.pool.run_all()
    assert _results.successResultOf(fetched) == [
        RawIndicator("stemtopx.com", "domain"),
        RawIndicator("evil.example", "domain"),
        RawIndicator("Mixed.Case.example", "domain"),
    ]


def test_a_missing_or_undecodable_file_fails_the_fetch(tmp_path: Path) -> None:
    """A file gone since the last read, or not UTF-8 text, fails the fetch (misp-dns then
    keeps blocking what the last good read listed)."""
    reactor = ThreadsReactor()
    fetched = DomainListSource(str(tmp_path / "gone.txt"), reactor).fetch()
    reactor.pool.run_all()
    _results.failureResultOf(fetched, FileNotFoundError)

    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"evil.example\n\xff\xfe\n")
    fetched = DomainListSource(str(binary), reactor).fetch()
    reactor.pool.run_all()
    _results.failureResultOf(fetched, UnicodeDecodeError)


def test_fetch_pages_waits_for_each_page_to_be_consumed(tmp_path: Path) -> None:
    """Pages of `page_size` go to `consume` one at a time: the next only after the Deferred
    `consume` returned has fired; the whole fetch fires after the last."""
    reactor = ThreadsReactor()
    source = DomainListSource(str(write_list(tmp_path)), reactor, page_size=2)
    pages: list[list[str]] = []
    pending: list[Deferred[None]] = []

    def consume(indicators: list[RawIndicator]) -> Deferred[None]:
        pages.append([indicator.value for indicator in indicators])
        pending.append(Deferred())
        return pending[-1]

    done = source.fetch_pages(consume)
    reactor.pool.run_all()
    assert pages == [["stemtopx.com", "evil.example"]] and not done.called
    pending[0].callback(None)
    assert pages[1:] == [["Mixed.Case.example"]] and not done.called
    pending[1].callback(None)
    assert _results.successResultOf(done) is None


def test_found_through_the_entry_point_as_a_blocking_policy(tmp_path: Path) -> None:
    """Installed beside misp-dns, `domain-list` is a source and a policy type whose table
    takes the blocking options beside `path`."""
    registry = default_registry()
    assert registry.sources["domain-list"] is plugin
    table = {"type": "domain-list", "path": "/srv/domains.txt", "update_interval": "5m"}
    config = parse_config({"policy": [table]}, registry)
    options = config.policy[0].options
    assert options == DomainListOptions(path="/srv/domains.txt", update_interval=Duration(300))


def test_path_is_required_and_checked_like_any_key() -> None:
    """A table without `path`, or with a misspelt key, is reported with its TOML path."""
    registry = default_registry()
    with pytest.raises(ConfigError) as caught:
        parse_config({"policy": [{"type": "domain-list", "paht": "/x"}]}, registry)
    assert sorted(caught.value.problems) == [
        "policy[0].paht: unknown key",
        "policy[0].path: required key is missing",
    ]


def test_a_file_missing_at_build_time_is_a_config_error(tmp_path: Path) -> None:
    """Building the policy (what start-up and --check-config do) names the missing file; an
    existing file builds a policy named after the source."""
    registry = default_registry()
    missing = str(tmp_path / "missing.txt")
    config = parse_config({"policy": [{"type": "domain-list", "path": missing}]}, registry)
    with pytest.raises(ConfigError) as caught:
        build_policies(config, registry, ThreadsReactor())
    assert caught.value.problems == [
        f"policy[0]: path {missing!r}: cannot read: No such file or directory"
    ]

    config = parse_config({"policy": [{"type": "domain-list", "path": str(tmp_path)}]}, registry)
    with pytest.raises(ConfigError) as caught:
        build_policies(config, registry, ThreadsReactor())
    assert caught.value.problems == [f"policy[0]: path {str(tmp_path)!r}: not a regular file"]

    present = str(write_list(tmp_path))
    config = parse_config({"policy": [{"type": "domain-list", "path": present}]}, registry)
    [policy] = build_policies(config, registry, ThreadsReactor())
    assert policy.name == "domain-list"


@pytest_twisted.ensureDeferred
async def test_the_policy_blocks_listed_domains_and_names_below_them(tmp_path: Path) -> None:
    """Built by misp-dns and started (with the real reactor's threads), the policy blocks a
    listed domain and the names below it, whatever the case in the file, with the report
    `source=domain-list;domain=<listed domain>`; other names get no opinion."""
    from twisted.internet import reactor

    registry = default_registry()
    table = {"type": "domain-list", "path": str(write_list(tmp_path))}
    server = {"state_dir": str(tmp_path / "state")}
    config = parse_config({"server": server, "policy": [table]}, registry)
    [policy] = build_policies(config, registry, reactor)
    policy.service.startService()
    try:
        await policy.whenReady()
        for name, listed in [("www.evil.example", "evil.example"), ("mixed.case.example",) * 2]:
            decision = policy.decide(PolicyQuery(name, 1))
            assert decision is not None and decision.blocks, name
            assert decision.report == f"source=domain-list;domain={listed}"
        assert policy.decide(PolicyQuery("example", 1)) is None
        assert policy.decide(PolicyQuery("notevil.example", 1)) is None
    finally:
        policy.service.stopService()
