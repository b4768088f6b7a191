"""`twistd misp-dns --check-config --config PATH`: one line per problem, no traceback."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .server import check_config, write_toml

_BAD = """\
[server]
listen = ["127.0.0.1"]
upstreams = ["not-an-ip:53"]
colour = "blue"

[cache]
max_entries = "many"
"""
#: The TOML path of each problem in _BAD.
_PROBLEMS = [
    "server.listen[0]",
    "server.upstreams[0]",
    "server.colour",
    "cache.max_entries",
]


def test_bad_config_prints_one_line_per_problem_and_exits_non_zero(tmp_path: Path) -> None:
    """Each problem is reported on one line naming its TOML path; no traceback; status != 0."""
    bad = tmp_path / "bad.toml"
    bad.write_text(_BAD)
    done = check_config(bad, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout
    lines = done.stdout.splitlines()
    for path in _PROBLEMS:
        naming = [line for line in lines if _names(line, path)]
        assert len(naming) == 1, f"expected one line for {path} in:\n{done.stdout}"
    assert "'many'" in done.stdout or '"many"' in done.stdout, "the bad value is not shown"
    assert not (tmp_path / "twistd.pid").exists()


def _names(line: str, path: str) -> bool:
    """True when `line` reports a problem at TOML path `path` ("...path: message")."""
    return re.search(rf"(^|\s){re.escape(path)}:\s", line) is not None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tcp_idle_timeout", 0),
        ("tcp_max_connections", 0),
        ("upstream_timeout", 100),
        ("workers", 0),
        ("workers", 65),
    ],
)
def test_out_of_range_value_is_named_with_its_value(tmp_path: Path, key: str, value: int) -> None:
    """A number outside its range is reported on one line with its path and the bad value."""
    bad = write_toml(tmp_path / "range.toml", {"server": {key: value}})
    done = check_config(bad, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout
    naming = [line for line in done.stdout.splitlines() if _names(line, f"server.{key}")]
    assert len(naming) == 1, done.stdout
    assert str(value) in naming[0]


def test_unreadable_toml_is_one_line(tmp_path: Path) -> None:
    """A file that is not TOML gives a short error naming the file, no traceback."""
    bad = tmp_path / "broken.toml"
    bad.write_text("[server\nlisten = 1\n")
    done = check_config(bad, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout
    assert "broken.toml" in done.stdout


def test_good_config_exits_zero(tmp_path: Path) -> None:
    """A valid config passes the check with status 0 and starts nothing."""
    good = write_toml(
        tmp_path / "good.toml",
        {
            "server": {
                "listen": ["127.0.0.1:5399", "[::1]:5399"],
                "upstreams": ["127.0.0.1:53"],
                "allow_clients": ["127.0.0.0/8", "::1/128"],
                "server_name": "dns.test.example",
                "state_dir": str(tmp_path / "state"),
                "tcp_idle_timeout": 10,
                "tcp_max_connections": 50,
                "upstream_timeout": 2,
            },
            "cache": {"max_entries": 500},
        },
    )
    done = check_config(good, tmp_path)
    assert done.returncode == 0, done.stdout
    assert "Traceback" not in done.stdout


# -- warnings about secrets ---------------------------------------------------------------

KEY = "Kq4Wz8Xv2Nb6Mr0Tp3Ys7Lc1Hd5Gf9Ja2Ue6Io8"


def _misp_config(tmp_path: Path, policy: str, mode: int = 0o600) -> Path:
    """A config with one `misp` policy table (`policy` holds its keys but `type`)."""
    path = tmp_path / "misp-dns.toml"
    path.write_text(
        f'[server]\nupstreams = ["127.0.0.1:53"]\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[[policy]]\ntype = "misp"\n{policy}\n'
    )
    path.chmod(mode)
    return path


def _warnings(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines() if "warning" in line.lower()]


def _key_file(tmp_path: Path, mode: int) -> Path:
    key_file = tmp_path / "misp.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(mode)
    return key_file


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_key_file_others_can_read_is_a_warning(tmp_path: Path, mode: int) -> None:
    """`--check-config` passes (status 0) but warns, on one line, that the key file can be
    read by its group or by everyone, naming the file and `chmod 600`, never the key."""
    key_file = _key_file(tmp_path, mode)
    config = _misp_config(
        tmp_path, f'server_url = "https://misp.test"\napi_key_file = "{key_file}"'
    )
    done = check_config(config, tmp_path)
    assert done.returncode == 0, done.stdout
    warnings = _warnings(done)
    assert len(warnings) == 1, done.stdout
    assert str(key_file) in warnings[0] and "chmod 600" in warnings[0]
    assert "policy[0].api_key_file" in warnings[0]
    assert KEY[:8] not in done.stdout


def test_an_inline_key_in_a_config_others_can_read_is_a_warning(tmp_path: Path) -> None:
    """An `api_key` written in a config file of mode 0644 gets one warning naming the file and
    the key's TOML path; the same config with mode 0600 gets none."""
    policy = f'server_url = "https://misp.test"\napi_key = "{KEY}"'
    shared = check_config(_misp_config(tmp_path, policy, 0o644), tmp_path)
    assert shared.returncode == 0, shared.stdout
    warnings = _warnings(shared)
    assert len(warnings) == 1, shared.stdout
    assert "policy[0].api_key" in warnings[0] and "misp-dns.toml" in warnings[0]
    assert KEY[:8] not in shared.stdout
    private = check_config(_misp_config(tmp_path, policy, 0o600), tmp_path)
    assert private.returncode == 0 and _warnings(private) == [], private.stdout


def test_an_http_server_url_is_a_warning(tmp_path: Path) -> None:
    """`server_url = "http://..."` sends the key unencrypted: one warning naming the key;
    https gets none."""
    key_file = _key_file(tmp_path, 0o600)
    for scheme, expected in (("http", 1), ("https", 0)):
        config = _misp_config(
            tmp_path, f'server_url = "{scheme}://misp.test"\napi_key_file = "{key_file}"'
        )
        done = check_config(config, tmp_path)
        assert done.returncode == 0, done.stdout
        warnings = _warnings(done)
        assert len(warnings) == expected, done.stdout
        assert all("policy[0].server_url" in line and "https" in line for line in warnings)
