"""`twistd misp-dns --check-config --config PATH`: one line per problem, no traceback."""

from __future__ import annotations

import re
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
    [("tcp_idle_timeout", 0), ("tcp_max_connections", 0), ("upstream_timeout", 100)],
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
