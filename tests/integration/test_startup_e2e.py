"""Starting misp-dns the way an operator does, and what it says when it cannot.

A port already taken, a feed directory that is not there, a state directory the service
cannot write: each is one clear line, with no traceback, and a non-zero exit status.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .net import free_port
from .server import _environment, check_config, twistd_path

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _config(path: Path, port: int, state_dir: Path, feed: str = "") -> Path:
    text = (
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nupstreams = ["127.0.0.1:53"]\n'
        f'state_dir = "{state_dir}"\n'
    )
    if feed:
        text += f'\n[[policy]]\ntype = "misp-feed"\nurl = "{feed}"\n'
    path.write_text(text)
    return path


def _run_foreground(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "misp-dns", "--config", str(config)],
        cwd=cwd,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_a_port_already_in_use_is_one_line_and_a_failed_start(tmp_path: Path, kind: int) -> None:
    """With the UDP or the TCP port taken by another program, twistd exits non-zero after
    one line naming the address and the cause; no traceback."""
    port = free_port()
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        config = _config(tmp_path / "misp-dns.toml", port, tmp_path / "state")
        done = _run_foreground(config, tmp_path)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stdout
    naming = [line for line in done.stdout.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(naming) == 1, done.stdout
    assert "cannot listen" in naming[0] and "already in use" in naming[0]
    assert len(done.stdout.splitlines()) <= 8, done.stdout


def test_a_port_in_use_fails_a_daemonizing_start_with_one_line(tmp_path: Path) -> None:
    """twistd without -n (daemonizing) also fails at once: its waiting parent prints the
    line and exits non-zero, and no pid file is left behind."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        config = _config(tmp_path / "misp-dns.toml", port, tmp_path / "state")
        done = subprocess.run(
            [
                twistd_path(),
                f"--pidfile={tmp_path / 'twistd.pid'}",
                f"--logfile={tmp_path / 'twistd.log'}",
                "misp-dns",
                "--config",
                str(config),
            ],
            cwd=tmp_path,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0, done.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in done.stdout
    assert not (tmp_path / "twistd.pid").exists()


def test_check_config_fails_for_a_missing_feed_directory(tmp_path: Path) -> None:
    """A `misp-feed` table whose directory does not exist fails `--check-config` with one
    line naming the table's url and the directory."""
    missing = tmp_path / "no-such-feed"
    config = _config(tmp_path / "misp-dns.toml", 5300, tmp_path / "state", str(missing))
    done = check_config(config, tmp_path)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stdout
    naming = [line for line in done.stdout.splitlines() if "policy[0].url" in line]
    assert len(naming) == 1 and str(missing) in naming[0], done.stdout


def test_check_config_fails_for_a_feed_directory_without_a_manifest(tmp_path: Path) -> None:
    """A feed directory holding no manifest.json is named the same way."""
    empty = tmp_path / "feed"
    empty.mkdir()
    config = _config(tmp_path / "misp-dns.toml", 5300, tmp_path / "state", str(empty))
    done = check_config(config, tmp_path)
    assert done.returncode != 0, done.stdout
    naming = [line for line in done.stdout.splitlines() if "policy[0].url" in line]
    assert len(naming) == 1 and "manifest.json" in naming[0], done.stdout


def test_check_config_fails_for_a_state_directory_under_a_file(tmp_path: Path) -> None:
    """A state_dir that cannot be created because a file is in the way fails the check with
    one line naming `server.state_dir`."""
    (tmp_path / "file").write_text("")
    feed = REPO / "etc" / "sample-feed"
    config = _config(tmp_path / "misp-dns.toml", 5300, tmp_path / "file" / "state", str(feed))
    done = check_config(config, tmp_path)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stdout
    naming = [line for line in done.stdout.splitlines() if "server.state_dir" in line]
    assert len(naming) == 1 and "not a directory" in naming[0], done.stdout


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is root's alone when run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="misp-dns-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _as_unprivileged(command: list[str]) -> list[str]:
    """`command` run as nobody when the tests run as root, as it is otherwise."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv to run a command as another user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]


def test_check_config_fails_for_a_state_directory_it_cannot_write(shared_dir: Path) -> None:
    """A state_dir the user running the check cannot write (mode 0555, or root's when run as
    nobody) fails `--check-config` with one line naming `server.state_dir` and the user."""
    state = shared_dir / "state"
    state.mkdir(mode=0o555)
    state.chmod(0o555)
    feed = REPO / "etc" / "sample-feed"
    config = _config(shared_dir / "misp-dns.toml", 5300, state, str(feed))
    config.chmod(0o644)
    done = subprocess.run(
        _as_unprivileged([twistd_path(), "misp-dns", "--check-config", "--config", str(config)]),
        cwd=shared_dir,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stdout
    naming = [line for line in done.stdout.splitlines() if "server.state_dir" in line]
    assert len(naming) == 1 and "cannot be written" in naming[0], done.stdout
