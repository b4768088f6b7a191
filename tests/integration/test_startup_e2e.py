"""Starting misp-dns the way an operator does: what it says when it starts, and when it cannot.

At start, one line per policy of the chain and per sink, monitor mode named; after each
refresh, one line per policy whose counts agree with what it serves. A port already taken,
a feed directory that is not there, a state directory the service cannot write: each is one
clear line, with no traceback, and a non-zero exit status.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .misp_stand_in import watch
from .net import free_port, wait_until
from .server import MispDnsProcess, _environment, check_config, twistd_path
from .unbound import UnboundProcess
from .users import as_nobody

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
    # The daemon removes its pid file as it exits, which may be just after the parent
    # printed the line and returned.
    pid_file = tmp_path / "twistd.pid"
    wait_until(lambda: not pid_file.exists(), timeout=15, what="the pid file removed")


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
        as_nobody([twistd_path(), "misp-dns", "--check-config", "--config", str(config)]),
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


# -- what the log says at start -----------------------------------------------------------


def _summary_config(tmp_path: Path, port: int, upstream: tuple[str, int]) -> Path:
    for name in ("feed-a", "feed-b"):
        shutil.copytree(REPO / "etc" / "sample-feed", tmp_path / name)
    path = tmp_path / "misp-dns.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nupstreams = ["{upstream[0]}:{upstream[1]}"]\n'
        f'state_dir = "{tmp_path / "state"}"\n\n'
        '[[policy]]\ntype = "allowlist"\ndomains = ["example.com"]\n\n'
        f'[[policy]]\ntype = "misp-feed"\nurl = "{tmp_path / "feed-a"}"\nmax_ioc_age = "3650d"\n\n'
        f'[[policy]]\ntype = "misp-feed"\nurl = "{tmp_path / "feed-b"}"\nmax_ioc_age = "3650d"\n'
        "enable_blocking = false\n\n"
        f'[[export]]\ntype = "jsonl"\npath = "{tmp_path / "queries.jsonl"}"\n'
    )
    return path


def _lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def _served(log: str, feed: Path) -> bool:
    """Whether `log` has the line saying what the policy of `feed` serves."""
    return any("distinct names" in line for line in _lines_with(log, f"{feed}: "))


def _run_until_served(process: MispDnsProcess, feeds: list[Path]) -> str:
    process.start()
    watch(process)
    try:
        wait_until(
            lambda: all(_served(process.log_text(), feed) for feed in feeds),
            20,
            0.1,
            "a line per feed saying what it serves",
        )
    finally:
        process.stop()
    return process.log_text()


def test_the_start_up_log_names_each_policy_and_sink_and_counts_agree(
    tmp_path: Path, unbound: UnboundProcess
) -> None:
    """At start: one line per policy (its type, source, and blocking or monitor mode) and
    per sink; after the first refresh, one line per feed saying how many distinct names it
    blocks (or only matches, in monitor mode) next to the indicators they came from; after a
    restart, the line for the snapshot gives the same count of names."""
    port = free_port()
    config = _summary_config(tmp_path, port, unbound.address)
    feed_a, feed_b = tmp_path / "feed-a", tmp_path / "feed-b"
    process = MispDnsProcess(config, [("127.0.0.1", port)], tmp_path)
    log = _run_until_served(process, [feed_a, feed_b])
    started = {
        "policy[0] allowlist": "1 name never blocked",
        f"policy[1] misp-feed {feed_a}": "blocking",
        f"policy[2] misp-feed {feed_b}": "monitor mode",
        f"export[0] jsonl to {tmp_path / 'queries.jsonl'}": "every query",
    }
    for start, detail in started.items():
        found = _lines_with(log, start)
        assert len(found) == 1 and detail in found[0], log
    assert "monitor mode" not in _lines_with(log, f"policy[1] misp-feed {feed_a}")[0]
    refreshed_a = _lines_with(log, f"{feed_a}: blocking ")
    refreshed_b = _lines_with(log, f"{feed_b}: matching (monitor mode, nothing blocked) ")
    assert len(refreshed_a) == 1 and len(refreshed_b) == 1, log
    names = re.search(r"(\d+) distinct names; indicators kept (\d+)", refreshed_a[0])
    assert names is not None, refreshed_a[0]
    count, kept = int(names.group(1)), int(names.group(2))
    assert 0 < count <= kept
    assert f"{count} distinct names" in refreshed_b[0]
    assert _lines_with(log, "indicators loaded") == [] and _lines_with(log, "loaded ") == []

    restarted = _run_until_served(process, [feed_a])
    from_disk = _lines_with(restarted, f"{feed_a}: blocking {count} distinct names from the")
    assert len(from_disk) == 1, restarted
