"""Test-wide settings: Hypothesis profiles, a guard against logged errors, tools and ports.

- Hypothesis runs the deterministic "ci" profile when `CI=true`, the "dev" profile otherwise.
- Every test fails if it logged an unhandled error or a critical/error event through
  `twisted.logger`, unless it is marked `@pytest.mark.allow_errors`; such tests can read what
  was logged through the `logged_errors` fixture.
- `require_tool("unbound")` returns the path of a Debian tool; when the tool is missing the test
  is skipped on a developer machine but FAILS on CI, so CI never passes by skipping.
- `require_package("misp-dns-example-policy")` does the same for an optional Python package
  (one that `make test` installs but a bare checkout may lack).
- `free_port()` gives a loopback port free for both UDP and TCP.
- `SHARED_DATA` is the real data beside the repository (`../shared/data`); the environment
  variable `MISP_DNS_SHARED_DATA` points elsewhere, for a checkout that does not sit beside it
  (a git worktree).
- `result_of(d)` / `failure_of(d, *kinds)` / `no_result(d)` are trial's own
  `successResultOf`/`failureResultOf`/`assertNoResult`, as plain functions: the result of a
  Deferred that has fired, the exception of one that failed, or a check that it has not fired.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings
from integration.net import free_port as _free_port
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

__all__ = [
    "SHARED_DATA",
    "failure_of",
    "free_port",
    "no_result",
    "on_ci",
    "require_package",
    "require_tool",
    "result_of",
    "unless_present",
]

T = TypeVar("T")

SHARED_DATA = Path(
    os.environ.get("MISP_DNS_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=50,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in {"true", "1", "yes"} else "dev")

#: Where the Debian tools live when they are not on PATH (unbound and rsyslogd are in sbin).
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
#: The Debian package providing each tool, for the failure message.
_PACKAGES = {
    "unbound": "unbound",
    "dig": "dnsutils",
    "dnsperf": "dnsperf",
    "rsyslogd": "rsyslog",
    "logrotate": "logrotate",
    "nsd": "nsd",
    "named": "bind9",
    "ldns-keygen": "ldnsutils",
    "ldns-signzone": "ldnsutils",
    "dpkg-deb": "dpkg",
    "adduser": "adduser",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
}


def on_ci() -> bool:
    """True when running under CI (the environment variable CI is true)."""
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def require_tool(name: str) -> str:
    """Return the path of the program `name`; skip the test without it, or fail it on CI."""
    found = shutil.which(name)
    if found is None:
        for directory in _SBIN_DIRS:
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is not None:
        return found
    package = _PACKAGES.get(name, name)
    message = f"{name} is not installed (Debian package {package!r}; `make tools` installs it)"
    if on_ci():
        pytest.fail(f"CI must run every test: {message}", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")  # pragma: no cover - skip raises


def require_package(name: str) -> None:
    """Skip the test unless the Python distribution `name` is installed; fail it on CI."""
    try:
        distribution(name)
    except PackageNotFoundError:
        message = f"the Python package {name!r} is not installed (`make test` installs it)"
        if on_ci():
            pytest.fail(f"CI must run every test: {message}", pytrace=False)
        pytest.skip(message)


def unless_present(path: Any, what: str) -> pytest.MarkDecorator:
    """Skip a test when `path` (real data beside the repo) is missing, except on CI, where
    the test runs and fails: CI must never pass by skipping."""
    from pathlib import Path

    return pytest.mark.skipif(
        not Path(path).exists() and not on_ci(), reason=f"{what} not found at {path}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that is free for both UDP and TCP right now."""
    return _free_port(host)


_TRIAL = SynchronousTestCase()


def result_of(deferred: Deferred[T]) -> T:
    """The result of `deferred`, which must have fired with one (trial's successResultOf)."""
    return _TRIAL.successResultOf(deferred)


def failure_of(deferred: Deferred[Any], *kinds: type[BaseException]) -> BaseException:
    """The exception `deferred` failed with, which must be one of `kinds` if given
    (trial's failureResultOf)."""
    return _TRIAL.failureResultOf(deferred, *kinds).value


def no_result(deferred: Deferred[Any]) -> None:
    """Check that `deferred` has not fired yet (trial's assertNoResult)."""
    _TRIAL.assertNoResult(deferred)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers this file gives meaning to."""
    config.addinivalue_line(
        "markers",
        "allow_errors: the test expects errors to be logged through twisted.logger",
    )


def _is_error(event: dict[str, Any]) -> bool:
    level = event.get("log_level")
    return "log_failure" in event or level in (LogLevel.error, LogLevel.critical)


@pytest.fixture(autouse=True)
def sighup_handler_restored() -> Iterator[None]:
    """Whatever SIGHUP handler a test installs (a sink's or a worker group's, around a fake
    reactor) is gone after it: a later test's SIGHUP must not reach a finished test's fakes."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


@pytest.fixture(autouse=True)
def logged_errors(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """The error events logged during the test; the test fails on any, unless allowed."""
    events: list[dict[str, Any]] = []

    def collect(event: dict[str, Any]) -> None:
        if _is_error(event):
            events.append(event)

    observe = cast(ILogObserver, collect)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
        # Unhandled errors in Deferreds are only logged when the Deferred is collected.
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    if events and request.node.get_closest_marker("allow_errors") is None:
        lines = [_describe_event(event) for event in events]
        pytest.fail(
            "the test logged errors (mark it allow_errors if they are expected):\n"
            + "\n".join(lines),
            pytrace=False,
        )


def _describe_event(event: dict[str, Any]) -> str:
    from twisted.logger import formatEvent

    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    return text


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """`require_tool` as a fixture, for session fixtures that start Debian programs."""
    return require_tool
