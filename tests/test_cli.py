"""The `misp-dns` command against a running admin listener on a real loopback port.

The server is built by `tap.build_service` on the real reactor with an allowlist and a
MISP-fed policy over an in-memory source; only its admin listener is started. The command
runs as `main(argv)` in a thread (it blocks on HTTP like the real one), and what it prints
is what an operator would read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from conftest import free_port
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from misp_dns.cli import _policy_lines, main
from misp_dns.intel.sightings import SightingsReporter
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import BlockingOptions, RawIndicator
from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
from misp_dns.policy.misp import MispBlockingPolicy
from misp_dns.tap import build_service
from misp_dns.testing import MemoryIndicatorSource
from misp_dns.values import AdminConfig, Config, HostPort, ServerConfig, Upstream

REPO = Path(__file__).resolve().parents[1]
TOKEN = "cli-test-token"
EVIL = RawIndicator(
    value="evil.example",
    type="domain",
    event_id="1234",
    event_uuid="5f0c-event",
    event_info="Phishing wave",
    attribute_uuid="77aa-attribute",
)


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(function, *args)


@attrs.define
class Running:
    """An admin listener on loopback, the config file that finds it, and its source."""

    config: Path
    source: MemoryIndicatorSource
    sightings: SightingsReporter


@pytest_twisted.async_yield_fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """A server whose admin listener runs on a free loopback port, with a token."""
    from twisted.internet import reactor

    port = free_port()
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config_path = tmp_path / "misp-dns.toml"
    config_path.write_text(f'[admin]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{token_file}"\n')
    source = MemoryIndicatorSource([EVIL])
    updater = IndicatorUpdater(
        "misp-connector",
        source,
        clock=reactor,
        interval=7200,
        max_age=10 * 365 * 86400,
        state_path=None,
        run_in_thread=inline,
    )
    # Not started: it notes blocks and never posts them.
    sightings = SightingsReporter("https://misp.test", "k" * 40, None, reactor)
    policies = [
        AllowlistPolicy.from_config(AllowlistOptions(domains=("good.example",))),
        MispBlockingPolicy("misp", "misp-connector", BlockingOptions(), updater, sightings),
    ]
    config = Config(
        server=ServerConfig(upstreams=(Upstream("192.0.2.53", 53),)),
        admin=AdminConfig(HostPort("127.0.0.1", port), str(token_file)),
    )
    top = build_service(config, policies, reactor)
    admin: Any = top.getServiceNamed("admin")
    updater.startService()
    admin.startService()
    yield Running(config_path, source, sightings)
    await admin.stopService()
    updater.stopService()


async def run(*argv: str) -> int:
    """`misp-dns ARGV` in a thread, as the blocking command it is."""
    status: int = await deferToThread(main, list(argv))
    return status


@pytest_twisted.ensureDeferred
async def test_explain_a_blocked_name(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    """`misp-dns explain` says blocked, by what, and which MISP event and attribute."""
    assert await run("explain", "www.evil.example", "--config", str(running.config)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "www.evil.example A: BLOCKED (policy[1], source misp-connector)"
    assert "  indicator  evil.example (matched by qname)" in out
    assert '  MISP event id 1234, uuid 5f0c-event, "Phishing wave"' in out
    assert "  attribute  uuid 77aa-attribute" in out
    assert "  policy[0] allowlist: no opinion" in out


@pytest_twisted.ensureDeferred
async def test_explain_json_holds_the_contract_keys(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    """`explain --json` prints decision, source, indicator, trigger and MISP's uuids."""
    config = str(running.config)
    assert await run("explain", "evil.example", "TXT", "--json", "--config", config) == 0
    explained = json.loads(capsys.readouterr().out)
    assert {k: explained[k] for k in ("decision", "source", "indicator", "trigger")} == {
        "decision": "block",
        "source": "misp-connector",
        "indicator": "evil.example",
        "trigger": "qname",
    }
    assert explained["mispEventUuid"] == "5f0c-event"
    assert explained["mispAttributeUuid"] == "77aa-attribute"
    assert explained["type"] == "TXT"
    assert await run("explain", "good.example", "--json", "--config", config) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "allow"
    assert await run("explain", "www.example.com", "--json", "--config", config) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "none"


@pytest_twisted.ensureDeferred
async def test_status(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    """`misp-dns status` lists the policies with their indicators, refresh times and the
    sightings waiting to go to MISP."""
    running.sightings.sight("evil.example", "77aa-attribute")
    running.sightings.sight("bad.example")
    assert await run("status", "--config", str(running.config)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(", ready")
    assert "  policy[1] misp (misp-connector): 1 indicators" in out
    assert "    next refresh in 1 h 59 min" in out or "    next refresh in 2 h 00 min" in out
    assert "    sightings to MISP: 0 sent, 0 failed, 0 dropped, 2 waiting" in out
    assert await run("status", "--json", "--config", str(running.config)) == 0
    status = json.loads(capsys.readouterr().out)
    assert [p["policyType"] for p in status["policies"]] == ["allowlist", "misp"]


@pytest_twisted.ensureDeferred
async def test_refresh_reports_success_and_failure(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    """`misp-dns refresh` fetches now; a failed fetch is printed and exits 1."""
    config = str(running.config)
    running.source.indicators = [EVIL, RawIndicator(value="new.example", type="domain")]
    assert await run("refresh", "--config", config) == 0
    assert capsys.readouterr().out.startswith("policy[1] misp (misp-connector): 2 indicators, in ")
    running.source.error = RuntimeError("MISP answered 503")
    assert await run("refresh", "misp", "--config", config) == 1
    assert capsys.readouterr().out == (
        "policy[1] misp (misp-connector): FAILED: MISP answered 503;"
        " still serving the 2 indicators it had\n"
    )
    assert await run("refresh", "policy[0]", "--config", config) == 1
    assert "no policy fed by indicators matches 'policy[0]'" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_is_refused(
    running: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config whose token does not match the server's gets 401, said plainly."""
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token")
    wrong.chmod(0o600)
    text = running.config.read_text()
    other = tmp_path / "other.toml"
    other.write_text(text.replace(str(tmp_path / "admin.token"), str(wrong)))
    assert await run("status", "--config", str(other)) == 1
    assert capsys.readouterr().err == (
        "misp-dns: the admin listener wants a token: set [admin] token_file to the server's\n"
    )


def test_no_admin_section_or_no_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without [admin], or with nothing listening, the command says so and exits 2."""
    bare = tmp_path / "bare.toml"
    bare.write_text('[server]\nlisten = ["127.0.0.1:5300"]\n')
    assert main(["status", "--config", str(bare)]) == 2
    assert "has no [admin] section" in capsys.readouterr().err
    port = free_port()
    lonely = tmp_path / "lonely.toml"
    lonely.write_text(f'[admin]\nlisten = "127.0.0.1:{port}"\n')
    assert main(["explain", "evil.example", "--config", str(lonely)]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach misp-dns at http://127.0.0.1:{port}/" in err
    assert main(["status", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_config_is_the_twistd_form(tmp_path: Path) -> None:
    """`misp-dns check-config` validates like `twistd misp-dns --check-config`."""
    good = tmp_path / "good.toml"
    good.write_text('[server]\nupstreams = ["192.0.2.53"]\n[admin]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[admin]\nlisten = "0.0.0.0:8053"\n')
    command = [sys.executable, "-m", "misp_dns", "check-config", "--config"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([*command, str(good)], capture_output=True, text=True, env=env, cwd=REPO)
    assert (ok.returncode, ok.stdout) == (0, f"misp-dns: {good}: configuration is valid\n")
    refused = subprocess.run(
        [*command, str(bad)], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert refused.returncode == 1
    assert refused.stderr == (
        "misp-dns: admin.token_file: required when listen (0.0.0.0:8053) is not a loopback"
        " address\n"
    )


def test_status_prints_an_rpz_secondary() -> None:
    """`misp-dns status` says which serial of which zone an rpz policy serves, what it does
    not apply, and why its last update failed."""
    policy = {
        "policy": "policy[0]",
        "policyType": "rpz",
        "ready": True,
        "zone": "rpz.test",
        "from": "192.0.2.1:53",
        "enforced": True,
        "serial": 12,
        "triggers": 1500,
        "notApplied": {"rpz-client-ip": 2},
        "lastRefresh": 1_700_000_000.0,
        "failuresInARow": 3,
        "lastError": "the primary answered REFUSED",
        "transfers": {"axfr": 1, "ixfr": 0, "up-to-date": 0, "fetch": 0},
    }
    lines = _policy_lines(policy, 1_700_000_060.0)
    assert lines == [
        "  policy[0] rpz (rpz.test from 192.0.2.1:53): serial 12, 1,500 triggers",
        "    not applied: 2 rpz-client-ip",
        "    checked 2023-11-14 22:13:20 UTC (1 min 00 s ago)",
        "    last update FAILED (3 in a row): the primary answered REFUSED",
    ]
    empty = _policy_lines(policy | {"serial": None, "lastRefresh": None, "lastError": ""}, 0)
    assert empty[0] == "  policy[0] rpz (rpz.test from 192.0.2.1:53): no copy of the zone yet"
