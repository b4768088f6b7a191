"""The test harness itself: tool lookup, the logged-error guard, ports, dig parsing."""

from __future__ import annotations

import socket

import pytest
from conftest import free_port, require_tool
from twisted.logger import Logger

from .dig import _read

_log = Logger()


def test_missing_tool_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CI a missing Debian tool fails the test instead of skipping it."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-tool-here is not installed"):
        require_tool("no-such-tool-here")


def test_missing_tool_skips_off_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off CI a missing tool skips the test, saying which package provides it."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dnsutils"):
        _require_missing_dig(monkeypatch)


def _require_missing_dig(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("conftest._SBIN_DIRS", ())
    return require_tool("dig")


def test_present_tool_is_found() -> None:
    """A tool in /usr/sbin (not on a user's PATH) is still found."""
    assert require_tool("sh").endswith("/sh")


@pytest.mark.allow_errors
def test_logged_errors_are_collected(logged_errors: list[dict[str, object]]) -> None:
    """Failures and error/critical events logged through twisted.logger are collected."""
    _log.info("not an error")
    _log.error("an error {n}", n=1)
    try:
        raise ValueError("boom")
    except ValueError:
        _log.failure("a failure")
    assert len(logged_errors) == 2
    assert "log_failure" in logged_errors[1]


def test_free_port_is_free_for_udp_and_tcp() -> None:
    """The port given is bindable for both UDP and TCP."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))


def test_dig_output_is_read() -> None:
    """The header, flags, EDNS, EDE and answer lines of dig's output are read back."""
    output = """\
;; ->>HEADER<<- opcode: QUERY, status: REFUSED, id: 4321
;; flags: qr rd ra; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags: do; udp: 1232
; EDE: 18 (Prohibited)
;; QUESTION SECTION:
;www.test.\t\t\tIN\tA

;; ANSWER SECTION:
www.test.\t\t300\tIN\tA\t192.0.2.1
www.test.\t\t300\tIN\tA\t192.0.2.2

;; MSG SIZE  rcvd: 77
"""
    result = _read(output)
    assert (result.status, result.qid, result.flags) == ("REFUSED", 4321, {"qr", "rd", "ra"})
    assert (result.edns_version, result.edns_flags, result.edns_udp) == (0, {"do"}, 1232)
    assert result.ede_codes == (18,)
    assert result.answer_records == 2
    assert result.size == 77
