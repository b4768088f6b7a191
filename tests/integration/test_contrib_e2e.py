"""The files in contrib/ do what their READMEs say, run the way an operator runs them.

The logrotate configuration is run by the real logrotate against a query log owned by the
service's user (as the systemd unit's dynamic user owns it); the systemd README's
`--check-config` step is run as written, with its paths moved into a temporary folder.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import on_ci, require_tool

from .net import free_port, wait_until
from .server import _environment, twistd_path
from .users import NOBODY, as_nobody

REPO = Path(__file__).resolve().parents[2]
LOGROTATE = REPO / "contrib" / "logrotate" / "misp-dns"
SYSTEMD = REPO / "contrib" / "systemd"
KEY = "Zr5Tq1Wm7Xk3Nv9Bp2Ls6Hd0Fg4Jc8Ya1Ue5Io7"


def _service_user() -> int:
    """The uid the service writes as: nobody when the tests run as root, else ourselves."""
    return NOBODY if os.geteuid() == 0 else os.geteuid()


def test_after_rotation_the_service_can_still_write_its_query_log(shared_dir: Path) -> None:
    """The shipped logrotate config (its path moved, its postrotate signal left out) rotates
    a query log that the service's user owns with mode 0600, as the unit's UMask=0077 makes
    it: the new file belongs to that user with the same mode, so the service can go on
    appending to it (with `create 0640 root adm` it could not, and records were lost)."""
    tmp_path = shared_dir
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    log = logs / "queries.jsonl"
    log.write_text('{"n": 1}\n')
    log.chmod(0o600)
    uid = _service_user()
    if os.geteuid() == 0:
        os.chown(logs, uid, uid)
        os.chown(log, uid, uid)
    config_text = LOGROTATE.read_text()
    config_text = config_text.replace("/var/log/misp-dns/*.jsonl", f"{logs}/*.jsonl")
    config_text = re.sub(r"(?s)\n\s*sharedscripts\n.*?endscript\n", "\n", config_text)
    assert f"{logs}/*.jsonl" in config_text
    config = tmp_path / "logrotate.conf"
    config.write_text(config_text)
    config.chmod(0o644)
    done = subprocess.run(
        [require_tool("logrotate"), "-f", "-s", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert (logs / "queries.jsonl.1").exists()
    stat = log.stat()
    assert (stat.st_uid, stat.st_mode & 0o777) == (uid, 0o600)
    appended = subprocess.run(
        as_nobody(["sh", "-c", f"printf '{{}}\\n' >> '{log}'"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert appended.returncode == 0, appended.stderr


def _readme_parts() -> tuple[str, str, str]:
    """The systemd README's config, its key-file step and its `--check-config` command."""
    readme = (SYSTEMD / "README.md").read_text()
    config = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert config is not None, "the README shows no config"
    commands = [line.strip() for line in readme.splitlines() if "--check-config" in line]
    check = [line for line in commands if "twistd" in line]
    assert len(check) == 1, commands
    key_steps = [line.strip() for line in readme.splitlines() if "misp.key" in line]
    key_step = [line for line in key_steps if line.startswith("install")]
    assert len(key_step) == 1, key_steps
    return config.group(1), key_step[0], check[0]


def test_the_systemd_readme_check_step_passes_outside_the_service(tmp_path: Path) -> None:
    """The README's `--check-config` command, run by the operator at a shell (not inside the
    service), passes with the README's config and a key file made by its key step: the
    config's key path must not exist only inside the service."""
    config_text, key_step, check = _readme_parts()
    moves = {
        "/etc/misp-dns": str(tmp_path / "etc"),
        "/var/lib/misp-dns": str(tmp_path / "var" / "lib"),
        "/var/log/misp-dns": str(tmp_path / "var" / "log"),
        "/opt/misp-dns/bin/twistd": twistd_path(),
    }
    for old, new in moves.items():
        config_text = config_text.replace(old, new)
        key_step = key_step.replace(old, new)
        check = check.replace(old, new)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "misp-dns.toml").write_text(config_text)
    key_step = key_step.split("&&")[0].strip()  # the install; then the editor writes the key
    made = subprocess.run(["sh", "-c", key_step], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / "etc" / "misp.key"
    key_file.write_text(KEY + "\n")
    done = subprocess.run(
        ["sh", "-c", check],
        cwd=tmp_path,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout
    assert "configuration is valid" in done.stdout
    assert "warning" not in done.stdout.lower(), done.stdout


def test_the_unit_hands_over_the_key_file_the_readme_checks() -> None:
    """The credential the unit loads is the key file the README's check reads, under the
    name the README's config asks for."""
    unit = (SYSTEMD / "misp-dns.service").read_text()
    config_text, _key_step, check = _readme_parts()
    credential = re.search(r"^LoadCredential=([^:\s]+):(\S+)$", unit, re.M)
    assert credential is not None
    name, source = credential.groups()
    assert f'api_key_file = "${{CREDENTIALS_DIRECTORY}}/{name}"' in config_text
    assert f"CREDENTIALS_DIRECTORY={os.path.dirname(source)}" in check
    assert os.path.basename(source) == name


def _start_as_nobody(config: Path, env: dict[str, str], log: Path) -> str:
    """Start twistd as the service's user until it listens; stop it; return its log."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            as_nobody([twistd_path(), "-n", "--pidfile=", "misp-dns", "--config", str(config)]),
            cwd=config.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(
            lambda: "listening on" in log.read_text() or process.poll() is not None,
            30,
            0.1,
            "misp-dns listening",
        )
    finally:
        process.terminate()
        process.wait(10)
    return log.read_text()


def test_after_an_upgrade_the_unit_refreshes_the_plugin_cache_as_root(shared_dir: Path) -> None:
    """An upgrade leaves twistd's plugin cache older than the plugin file; the service's own
    user cannot rewrite it and warns at every start. The unit's root step before the start
    brings it up to date, so the service's user starts without the warning."""
    if os.geteuid() != 0:
        reason = "needs root: the unit refreshes as root, the service runs as another user"
        if on_ci():
            pytest.fail(f"CI must run every test: {reason}", pytrace=False)
        pytest.skip(reason)
    unit = (SYSTEMD / "misp-dns.service").read_text()
    refreshes = [
        line.split("=", 1)[1]
        for line in unit.splitlines()
        if line.startswith("ExecStartPre=") and "misp_dns.plugincache" in line
    ]
    assert len(refreshes) == 1, "the unit does not refresh the plugin cache before starting"
    prefixes = re.match(r"[-@:+!]*", refreshes[0]).group(0)  # type: ignore[union-attr]
    assert "+" in prefixes and "-" in prefixes, "the refresh must run as root and never block"
    refresh = refreshes[0][len(prefixes) :].replace("/opt/misp-dns/bin/python", sys.executable)

    plugins = shared_dir / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    plugin = plugins / "misp_dns_plugin.py"
    shutil.copy(REPO / "twisted" / "plugins" / "misp_dns_plugin.py", plugin)
    shutil.chown(shared_dir / "site", "root", "root")
    env = _environment()
    env["PYTHONPATH"] = f"{shared_dir / 'site'}:{REPO}"
    installed = subprocess.run(
        shlex.split(refresh), cwd=shared_dir, env=env, capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    cache = plugins / "dropin.cache"
    old = plugin.stat().st_mtime - 3600
    os.utime(cache, (old, old))  # the upgrade: the plugin file is now newer than the cache

    config = shared_dir / "misp-dns.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\nupstreams = ["127.0.0.1:53"]\n'
    )
    config.chmod(0o644)
    warning = f"Unable to write to plugin cache {cache}"
    before = _start_as_nobody(config, env, shared_dir / "before.log")
    assert warning in before, before  # what the issue saw

    refreshed = subprocess.run(
        shlex.split(refresh), cwd=shared_dir, env=env, capture_output=True, text=True
    )
    assert refreshed.returncode == 0, refreshed.stderr
    after = _start_as_nobody(config, env, shared_dir / "after.log")
    assert "listening on" in after, after
    assert "Unable to write to plugin cache" not in after, after
