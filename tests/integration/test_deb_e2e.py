"""The Debian package: built, installed with `dpkg -i` on a fresh Debian, run, upgraded,
removed.

The package is built once per test session by `packaging/deb/build.py`, the script `make deb`
runs (about 20 s). Each test installs it into its own throwaway root (`throwaway_root`: an
overlay of this machine's / in a private mount namespace, chrooted into; no container, and
nothing reaches the real system), where dpkg runs the maintainer scripts for real. No systemd
runs there, so the service's commands are read from the installed unit and its drop-in
(`systemd_unit`) and run as systemd would run them: as the unit's user, with its ambient
capabilities and umask. The installed server answers on this machine's loopback, forwarding
to the session's Unbound.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from conftest import free_port, on_ci, require_tool

from .dig import run_dig
from .net import stop_process, wait_until
from .systemd_unit import ServiceUnit
from .throwaway_root import ThrowawayRoot
from .unbound import WWW, WWW_A, UnboundProcess

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "deb" / "build.py"
CONFIG = "/etc/misp-dns/misp-dns.toml"
TWISTD = "/opt/misp-dns/bin/twistd"
UNIT = "/lib/systemd/system/misp-dns.service"
QUERY_LOG = "/var/log/misp-dns/queries.jsonl"


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package file, built once per session as `make deb` builds it."""
    _require_root()
    for tool in ("dpkg-deb", "unshare", "nsenter", "setpriv", "adduser"):
        require_tool(tool)
    out = tmp_path_factory.mktemp("deb")
    done = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"the build failed:\n{done.stderr[-5000:]}"
    return Path(done.stdout.splitlines()[-1])


def _require_root() -> None:
    if os.geteuid() != 0:
        message = "installing a package into a throwaway root needs root (mount namespaces)"
        if on_ci():
            pytest.fail(f"CI must run every test: {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayRoot]:
    """A throwaway root with the package installed by `dpkg -i`."""
    with ThrowawayRoot(tmp_path_factory.mktemp("installed")) as root:
        root.install(deb)
        yield root


@attrs.frozen
class Service:
    """The installed server, started with the unit's command."""

    port: int
    admin_port: int
    log: Path


@pytest.fixture(scope="module")
def service(
    installed: ThrowawayRoot, unbound: UnboundProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The unit's ExecStartPre and ExecStart commands run in the throwaway root, as systemd
    runs them, after the edit an operator makes: free loopback ports instead of port 53 and
    8053, and the session's Unbound as the upstream."""
    port, admin_port = free_port(), free_port()
    host, upstream_port = unbound.address
    _edit(
        installed,
        CONFIG,
        [
            ('listen = ["127.0.0.1:53"]', f'listen = ["127.0.0.1:{port}"]'),
            ("upstreams = []", f'upstreams = ["{host}:{upstream_port}"]'),
            ('listen = "127.0.0.1:8053"', f'listen = "127.0.0.1:{admin_port}"'),
        ],
    )
    unit = installed_unit(installed)
    for pre in unit.exec_start_pre:
        done = installed.run(pre.argv, user=None if pre.privileged else unit.user, check=False)
        assert pre.ignore_failure or done.returncode == 0, done.stdout + done.stderr
    log = tmp_path_factory.mktemp("service") / "twistd.log"
    process = installed.popen(
        unit.exec_start.argv,
        log,
        user=unit.user,
        capabilities=unit.capabilities,
        umask=unit.umask,
    )
    try:
        wait_until(
            lambda: _answers(port) or process.poll() is not None, timeout=30, what="an answer"
        )
        assert process.poll() is None, f"the service exited:\n{log.read_text()}"
        yield Service(port, admin_port, log)
    finally:
        stop_process(process)


def installed_unit(root: ThrowawayRoot) -> ServiceUnit:
    """The installed unit with its drop-ins."""
    drop_ins = sorted(root.path(UNIT + ".d").glob("*.conf"))
    return ServiceUnit.read(p.read_text() for p in [root.path(UNIT), *drop_ins])


def _edit(root: ThrowawayRoot, inside: str, replacements: list[tuple[str, str]]) -> None:
    path = root.path(inside)
    text = path.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, f"{inside} has no single {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


def _answers(port: int) -> bool:
    try:
        return run_dig(require_tool("dig"), "127.0.0.1", port, WWW, timeout=1).status == "NOERROR"
    except (AssertionError, subprocess.TimeoutExpired):
        return False


def _owner(root: ThrowawayRoot, inside: str) -> tuple[str, int]:
    """The user name owning `inside` and its permission bits."""
    facts = root.run(["stat", "-c", "%U %a", inside]).stdout.split()
    return facts[0], int(facts[1], 8)


def _logged(root: ThrowawayRoot, name: str, log: str = QUERY_LOG) -> bool:
    """Whether the query log file `log` holds a record of a query for `name`."""
    path = root.path(log)
    if not path.exists():
        return False
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return any(record["question"]["questionName"] == name.rstrip(".") for record in records)


def test_install_creates_the_user_its_folders_and_the_key_file(installed: ThrowawayRoot) -> None:
    """`dpkg -i` leaves the package installed, a system user misp-dns without a login
    shell, /var/lib/misp-dns and /var/log/misp-dns owned by it and closed to others, and an
    empty MISP key file readable by root alone (which the unit's LoadCredential needs)."""
    status = installed.run(["dpkg-query", "-W", "-f=${Status}", "misp-dns"]).stdout
    assert status == "install ok installed"
    _, _, uid, _, _, _, shell = (
        installed.run(["getent", "passwd", "misp-dns"]).stdout.strip().split(":")
    )
    assert int(uid) < 1000 and shell == "/usr/sbin/nologin"
    assert _owner(installed, "/var/lib/misp-dns") == ("misp-dns", 0o750)
    assert _owner(installed, "/var/log/misp-dns") == ("misp-dns", 0o750)
    assert _owner(installed, "/etc/misp-dns/misp.key") == ("root", 0o600)
    conffiles = installed.run(["dpkg-query", "-W", "-f=${Conffiles}", "misp-dns"]).stdout
    for path in (CONFIG, "/etc/logrotate.d/misp-dns", "/etc/rsyslog.d/30-misp-dns.conf"):
        assert f" {path} " in conffiles


def test_unit_is_enabled_and_runs_as_the_package_user(installed: ThrowawayRoot) -> None:
    """The unit is enabled for the next boot, runs as misp-dns (not a dynamic user) with
    only CAP_NET_BIND_SERVICE, and its commands name programs the package installed."""
    wants = installed.path("/etc/systemd/system/multi-user.target.wants/misp-dns.service")
    assert os.readlink(wants) == UNIT
    unit = installed_unit(installed)
    assert (unit.user, unit.group, unit.dynamic_user) == ("misp-dns", "misp-dns", False)
    assert unit.capabilities == ("net_bind_service",)
    for command in (*unit.exec_start_pre, unit.exec_start):
        assert os.access(installed.path(command.argv[0]), os.X_OK), command.argv


def test_default_config_passes_check_config(installed: ThrowawayRoot) -> None:
    """The installed config passes `twistd misp-dns --check-config`, run as root the way the
    README says, and as the service's user."""
    for user in (None, "misp-dns"):
        done = installed.run(
            [TWISTD, "misp-dns", "--check-config", "--config", CONFIG], user=user, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "configuration is valid" in done.stdout
    text = installed.path(CONFIG).read_text()
    assert 'listen = ["127.0.0.1:53"]' in text, "the documented default listen address"


def test_rsyslog_accepts_the_installed_snippet(installed: ThrowawayRoot) -> None:
    """rsyslog's own check (`rsyslogd -N1`) passes on Debian's rsyslog.conf with the snippet
    the package put in /etc/rsyslog.d, so installing misp-dns cannot break the system's
    logging."""
    require_tool("rsyslogd")
    assert installed.path("/etc/rsyslog.d/30-misp-dns.conf").exists()
    done = installed.run(["rsyslogd", "-N1"], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_service_command_answers_a_query_and_logs_it(
    installed: ThrowawayRoot, service: Service
) -> None:
    """The unit's command answers a query with the upstream's record and writes the query
    record to /var/log/misp-dns/queries.jsonl, a file the misp-dns user owns, mode 0600."""
    result = run_dig(require_tool("dig"), "127.0.0.1", service.port, WWW)
    assert result.status == "NOERROR"
    assert [r.to_text() for rrset in result.answer for r in rrset] == [WWW_A]
    wait_until(lambda: _logged(installed, WWW), timeout=10, what="the query record")
    assert _owner(installed, QUERY_LOG) == ("misp-dns", 0o600)
    assert "Traceback" not in service.log.read_text()


def test_misp_dns_command_reports_the_running_server(
    installed: ThrowawayRoot, service: Service
) -> None:
    """`misp-dns status` (the /usr/bin command) finds the server through the installed
    config's [admin] table and reports the package's version and the queries answered."""
    run_dig(require_tool("dig"), "127.0.0.1", service.port, WWW)
    done = installed.run(["misp-dns", "status", "--json"], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    version = installed.run(["dpkg-query", "-W", "-f=${Version}", "misp-dns"]).stdout
    assert status["version"] == version
    assert status["queries"] >= 1


def test_service_keeps_logging_after_logrotate(installed: ThrowawayRoot, service: Service) -> None:
    """After the installed logrotate config rotates the query log, the new file belongs to
    misp-dns and the service goes on writing its query records there (it reopens the path
    within a second; without systemd no SIGHUP comes, so queries are asked until then)."""
    run_dig(require_tool("dig"), "127.0.0.1", service.port, WWW)
    wait_until(lambda: _logged(installed, WWW), timeout=10, what="a query record")
    installed.run(["logrotate", "-f", "/etc/logrotate.d/misp-dns"])
    assert _logged(installed, WWW, QUERY_LOG + ".1")
    assert _owner(installed, QUERY_LOG) == ("misp-dns", 0o600)

    def asked_and_logged() -> bool:
        run_dig(require_tool("dig"), "127.0.0.1", service.port, WWW)
        return _logged(installed, WWW)

    wait_until(asked_and_logged, timeout=10, interval=0.5, what="a record in the new log")


def bumped(deb: Path, version: str, directory: Path) -> Path:
    """The same package as `deb` with another version, as the next release would be."""
    tree = directory / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(
        re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M)
    )
    out = directory / f"misp-dns_{version}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_upgrade_keeps_config_changes_and_state(deb: Path, tmp_path: Path) -> None:
    """Installing the next version over an edited install keeps the edited config, the
    MISP key written in misp.key, the state folder's files and owner, and the user; the
    config still passes --check-config."""
    with ThrowawayRoot(tmp_path / "root") as root:
        root.install(deb)
        _edit(root, CONFIG, [("domains = []", 'domains = ["intranet.example"]')])
        edited = root.path(CONFIG).read_text()
        root.path("/etc/misp-dns/misp.key").write_text("the-operator-s-key\n")
        root.run(["sh", "-c", "echo snapshot > /var/lib/misp-dns/kept"], user="misp-dns")
        uid = root.run(["id", "-u", "misp-dns"]).stdout

        root.install(bumped(deb, "99.0.0", tmp_path))

        assert root.run(["dpkg-query", "-W", "-f=${Version}", "misp-dns"]).stdout == "99.0.0"
        assert root.path(CONFIG).read_text() == edited
        assert not list(root.path("/etc/misp-dns").glob("*.dpkg-*"))
        assert root.path("/etc/misp-dns/misp.key").read_text() == "the-operator-s-key\n"
        assert root.path("/var/lib/misp-dns/kept").read_text() == "snapshot\n"
        assert _owner(root, "/var/lib/misp-dns") == ("misp-dns", 0o750)
        assert _owner(root, "/var/lib/misp-dns/kept")[0] == "misp-dns"
        assert root.run(["id", "-u", "misp-dns"]).stdout == uid
        root.run([TWISTD, "misp-dns", "--check-config", "--config", CONFIG], user="misp-dns")


def test_remove_keeps_config_and_purge_removes_everything(deb: Path, tmp_path: Path) -> None:
    """`dpkg -r` removes the program (all of /opt/misp-dns) and keeps the config and the
    state; `dpkg -P` then removes the config folder, the state and the logs; the system user
    stays (Debian keeps system users, so files it owns elsewhere keep an owner)."""
    with ThrowawayRoot(tmp_path / "root") as root:
        root.install(deb)
        root.run([TWISTD, "misp-dns", "--check-config", "--config", CONFIG])
        root.run(["dpkg", "-r", "misp-dns"])
        assert not root.path("/opt/misp-dns").exists()
        assert not root.path(UNIT).exists()
        assert root.path(CONFIG).exists()
        assert root.path("/var/lib/misp-dns").is_dir()
        root.run(["dpkg", "-P", "misp-dns"])
        for gone in ("/etc/misp-dns", "/var/lib/misp-dns", "/var/log/misp-dns"):
            assert not root.path(gone).exists(), gone
        assert root.run(["getent", "passwd", "misp-dns"], check=False).returncode == 0
