"""The `[[policy]] type = "misp"` and `"misp-feed"` tables: defaults, limits, the API key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from misp_dns.config import parse_config
from misp_dns.intel.misp_options import MispFeedOptions, MispOptions
from misp_dns.interfaces import PluginType
from misp_dns.registry import Registry
from misp_dns.values import ConfigError

KEY = "0123456789abcdef0123456789abcdef01234567"


def _registry() -> Registry:
    def build(_options: Any, _context: Any) -> None:
        return None

    return Registry(
        policies={
            "misp": PluginType("misp", MispOptions, build),
            "misp-feed": PluginType("misp-feed", MispFeedOptions, build),
        }
    )


def options_of(table: dict[str, Any]) -> Any:
    return parse_config({"policy": [table]}, _registry()).policy[0].options


def problems(table: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"policy": [table]}, _registry())
    return caught.value.problems


def test_misp_defaults_are_the_documented_ones() -> None:
    """Only server_url and a key given: every other key has the default the README shows."""
    options = options_of({"type": "misp", "server_url": "https://misp.test", "api_key": KEY})
    assert options == MispOptions(server_url="https://misp.test", api_key=KEY)
    assert options.enable_blocking is True
    assert options.disable_tls_validation is False
    assert options.update_interval == 2 * 3600
    assert options.max_ioc_age == 15 * 86400
    assert options.blocking_answer_ttl == 30
    assert options.allow_txt_blocking_report is True
    assert options.pagination_limit == 5000
    assert options.add_extended_dns_error is True
    assert options.request_timeout == 60
    assert (options.tags, options.exclude_tags) == ((), ())
    assert options.enforce_warninglists is True
    assert options.published_only is True
    assert options.threat_levels == (1, 2, 3, 4)
    assert options.exclude_decayed is False
    assert options.block_response_ips is False
    assert options.sightings is False
    assert options.sightings_source == "misp-dns"
    assert options.sightings_interval == 600
    assert options.sightings_max_pending == 10_000


def test_every_documented_key_is_accepted() -> None:
    """The full table from the README loads, durations parsed into seconds."""
    options = options_of(
        {
            "type": "misp",
            "server_url": "https://misp.test",
            "api_key": KEY,
            "enable_blocking": False,
            "disable_tls_validation": True,
            "update_interval": "30m",
            "max_ioc_age": "7d",
            "blocking_answer_ttl": 86400,
            "allow_txt_blocking_report": False,
            "pagination_limit": 100_000,
            "add_extended_dns_error": False,
            "request_timeout": "5m",
            "tags": ["tlp:red", "misp-galaxy:threat-actor=%"],
            "exclude_tags": ["false-positive"],
            "enforce_warninglists": False,
            "published_only": False,
            "threat_levels": [1, 2],
            "exclude_decayed": True,
            "block_response_ips": True,
            "sightings": True,
            "sightings_source": "dns resolver, site A",
            "sightings_interval": "1h",
            "sightings_max_pending": 500,
        }
    )
    assert options.tags == ("tlp:red", "misp-galaxy:threat-actor=%")
    assert options.exclude_tags == ("false-positive",)
    assert (options.enforce_warninglists, options.published_only) == (False, False)
    assert (options.threat_levels, options.exclude_decayed) == ((1, 2), True)
    assert (options.update_interval, options.max_ioc_age) == (1800, 7 * 86400)
    assert options.request_timeout == 300
    assert options.pagination_limit == 100_000
    assert options.sightings and options.sightings_source == "dns resolver, site A"
    assert (options.sightings_interval, options.sightings_max_pending) == (3600, 500)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"blocking_answer_ttl": 29}, "policy[0].blocking_answer_ttl: must be within 30..86400"),
        ({"pagination_limit": 0}, "policy[0].pagination_limit: must be within 1..100000"),
        ({"update_interval": "2 hours"}, "policy[0].update_interval: expected a duration"),
        ({"request_timeout": "2h"}, "policy[0].request_timeout: must be within 1..3600"),
        ({"request_timeout": 30}, "policy[0].request_timeout: expected a duration"),
        ({"server_url": "misp.test"}, "policy[0].server_url: expected an http:// or https://"),
        ({"server_url": "https://u:p@misp.test"}, "policy[0].server_url: must not hold"),
        ({"api_key_file": "/k"}, "policy[0].api_key: give exactly one of api_key and api_key_file"),
        ({"pagnation_limit": 10}, "policy[0].pagnation_limit: unknown key"),
        ({"threat_levels": [1, 5]}, "policy[0].threat_levels: 5 is not a MISP threat level"),
        ({"threat_levels": []}, "policy[0].threat_levels: must name at least one level"),
        ({"threat_levels": ["high"]}, "policy[0].threat_levels"),
        ({"tags": ["tlp:red", " "]}, "policy[0].tags: holds an empty tag name"),
        ({"tags": ["42"]}, "policy[0].tags: '42': MISP reads a number as a tag id"),
        ({"exclude_tags": ["!tlp:red"]}, "policy[0].exclude_tags: '!tlp:red': write the tags"),
        ({"tags": "tlp:red"}, "policy[0].tags"),
        (
            {"tags": ["tlp:red"], "exclude_tags": ["TLP:RED"]},
            "policy[0].exclude_tags: 'TLP:RED' is in tags too",
        ),
        ({"published_only": "yes"}, "policy[0].published_only: expected true or false"),
        ({"warninglists": ["a.json"]}, "policy[0].warninglists: unknown key"),
        ({"sightings": "yes"}, "policy[0].sightings: expected"),
        ({"sightings_source": " "}, "policy[0].sightings_source: expected 1 to 255 printable"),
        ({"sightings_source": "x" * 256}, "policy[0].sightings_source: expected 1 to 255"),
        ({"sightings_interval": "5s"}, "policy[0].sightings_interval: must be within 10..86400"),
        ({"sightings_max_pending": 0}, "policy[0].sightings_max_pending: must be within 1.."),
    ],
)
def test_bad_values_name_their_toml_path(extra: dict[str, Any], expected: str) -> None:
    """Each bad value gives one line with its TOML path, as the config loader promises."""
    table = {"type": "misp", "server_url": "https://misp.test", "api_key": KEY, **extra}
    found = problems(table)
    assert any(line.startswith(expected) for line in found), found


def test_server_url_and_a_key_are_required() -> None:
    """Without server_url, or without any key, the table is refused."""
    assert any("server_url" in line for line in problems({"type": "misp", "api_key": KEY}))
    found = problems({"type": "misp", "server_url": "https://misp.test"})
    assert any("exactly one of api_key and api_key_file" in line for line in found)


def test_the_key_never_shows_in_repr() -> None:
    """The options' repr (in logs, tracebacks) leaves the key out."""
    options = MispOptions(server_url="https://misp.test", api_key=KEY)
    assert KEY not in repr(options)


def test_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    """api_key_file's content, without surrounding whitespace, is the key."""
    path = tmp_path / "key"
    path.write_text(f"\n {KEY} \n")
    options = MispOptions(server_url="https://misp.test", api_key_file=str(path))
    assert options.read_api_key() == KEY


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("   \n", "the API key is empty"),
        ("two words", "cannot carry"),
    ],
)
def test_unusable_key_files_are_clear_errors(
    tmp_path: Path, content: str | None, message: str
) -> None:
    """A missing, empty or malformed key file is a ConfigError naming the file, not the key."""
    path = tmp_path / "misp.key"
    if content is not None:
        path.write_text(content)
    options = MispOptions(server_url="https://misp.test", api_key_file=str(path))
    with pytest.raises(ConfigError) as caught:
        options.read_api_key()
    [line] = caught.value.problems
    assert str(path) in line and message in line
    assert "words" not in line


def test_feed_table_takes_url_and_the_blocking_options() -> None:
    """misp-feed needs url, shares the blocking keys, and has no server, key, paging or
    restSearch filter keys, nor sightings (there is no MISP to post them to)."""
    options = options_of({"type": "misp-feed", "url": "etc/sample-feed", "max_ioc_age": "30d"})
    assert options == MispFeedOptions(url="etc/sample-feed", max_ioc_age=30 * 86400)
    assert problems({"type": "misp-feed", "url": "x", "api_key": KEY}) == [
        "policy[0].api_key: unknown key"
    ]
    assert problems({"type": "misp-feed", "url": "x", "tags": ["tlp:red"]}) == [
        "policy[0].tags: unknown key"
    ]
    assert problems({"type": "misp-feed", "url": "x", "sightings": True}) == [
        "policy[0].sightings: unknown key"
    ]
    assert any("url" in line for line in problems({"type": "misp-feed"}))


def test_key_file_readable_by_others_gives_a_warning(tmp_path: Path) -> None:
    """A key file others can read is used, with a warning that names the file, not the key."""
    path = tmp_path / "key"
    path.write_text(KEY)
    path.chmod(0o600)
    options = MispOptions(server_url="https://misp.test", api_key_file=str(path))
    assert options.security_warnings(None) == []
    path.chmod(0o644)
    assert options.read_api_key() == KEY
    (warning,) = options.security_warnings(None)
    assert str(path) in warning and "chmod 600" in warning and KEY not in warning


def test_feed_takes_a_list_of_warninglist_paths() -> None:
    """`warninglists` is an array of file paths (empty by default); an empty path or a string
    instead of an array is a problem named by its TOML path."""
    table = {"type": "misp-feed", "url": "feed"}
    assert options_of(table).warninglists == ()
    assert options_of({**table, "warninglists": ["a.json", "b.json"]}).warninglists == (
        "a.json",
        "b.json",
    )
    assert any(
        line.startswith("policy[0].warninglists: entry 1 is an empty path")
        for line in problems({**table, "warninglists": ["a.json", " "]})
    )
    assert any(
        line.startswith("policy[0].warninglists")
        for line in problems({**table, "warninglists": "a.json"})
    )


def test_an_unreadable_warninglist_fails_building_the_policy(tmp_path: Path) -> None:
    """Building a misp-feed policy (at start, SIGHUP or --check-config) reads its lists: a
    missing one is a ConfigError line naming the table, the key and the file."""
    from twisted.internet.task import Clock

    from misp_dns.build import build_policy, context_for
    from misp_dns.registry import default_registry
    from misp_dns.values import PluginConfig, ServerConfig

    gone = tmp_path / "gone.json"
    table = PluginConfig("misp-feed", MispFeedOptions(url="feed", warninglists=(str(gone),)))
    context = context_for(ServerConfig(state_dir=str(tmp_path)), Clock())
    with pytest.raises(ConfigError) as caught:
        build_policy(0, table, default_registry(), context)
    assert caught.value.problems == [
        f"policy[0]: warninglists[0]: {gone}: cannot read: No such file or directory"
    ]


def test_api_key_file_expands_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`api_key_file = "${CREDENTIALS_DIRECTORY}/misp.key"` reads the key systemd hands to
    the service (LoadCredential=); without the variable, one line says it is not set."""
    (tmp_path / "misp.key").write_text(KEY + "\n")
    (tmp_path / "misp.key").chmod(0o600)
    options = MispOptions(
        server_url="https://misp.test", api_key_file="${CREDENTIALS_DIRECTORY}/misp.key"
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert options.read_api_key() == KEY
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError) as raised:
        options.read_api_key()
    (line,) = raised.value.problems
    assert "CREDENTIALS_DIRECTORY is not set" in line
