"""Loading the TOML config: defaults, strict types, and one readable line per problem."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs
import pytest

from misp_dns.config import load_config, parse_config
from misp_dns.interfaces import PluginType
from misp_dns.registry import Registry, default_registry
from misp_dns.values import ConfigError, Duration, HostPort, parse_duration

REPO = Path(__file__).resolve().parents[1]


def problems(raw: dict, registry: Registry | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, registry or Registry())
    return caught.value.problems


def test_empty_file_gives_safe_defaults() -> None:
    """With no keys at all the server listens on loopback and is no open resolver."""
    config = parse_config({}, Registry())
    assert config.server.listen == (HostPort("127.0.0.1", 5300),)
    assert config.server.upstreams == ()
    assert ipaddress.ip_network("10.0.0.0/8") in config.server.allow_clients
    assert all(net.is_private or net.is_loopback for net in config.server.allow_clients)
    assert config.cache.max_entries == 100_000
    assert config.server.tcp_idle_timeout == 30
    assert config.server.tcp_max_connections_per_client == 100


def test_shipped_config_is_valid() -> None:
    """etc/misp-dns.toml, which `make run` uses, loads as it is."""
    config = load_config(REPO / "etc" / "misp-dns.toml")
    assert config.server.listen == (HostPort("127.0.0.1", 5300),)


def test_addresses_ipv6_and_default_upstream_port() -> None:
    """ "[::1]:53" is IPv6, and an upstream without a port uses 53."""
    config = parse_config(
        {"server": {"listen": ["[::1]:5353"], "upstreams": ["9.9.9.9", "[2001:db8::1]:5300"]}},
        Registry(),
    )
    assert config.server.listen[0] == HostPort("::1", 5353)
    assert [str(u) for u in config.server.upstreams] == ["9.9.9.9:53", "[2001:db8::1]:5300"]


def test_unknown_keys_and_sections_are_named() -> None:
    """A typo is an error naming its TOML path, not silently ignored."""
    found = problems({"server": {"lisen": []}, "cahce": {}})
    assert "server.lisen: unknown key" in found
    assert "cahce: unknown section" in found


def test_wrong_types_name_path_and_value() -> None:
    """Each wrong type is one line with the TOML path and the bad value."""
    found = problems(
        {
            "server": {"listen": "127.0.0.1:53", "upstreams": [53], "tcp_idle_timeout": True},
            "cache": {"max_entries": "10"},
        }
    )
    assert "server.listen: expected an array, got '127.0.0.1:53' (string)" in found
    assert 'server.upstreams[0]: expected "IP:port", got 53 (integer)' in found
    assert "server.tcp_idle_timeout: expected a number, got True (boolean)" in found
    assert "cache.max_entries: expected an integer, got '10' (string)" in found
    assert len(found) == 4


def test_bad_values_name_path_and_value() -> None:
    """Values of the right type but out of range are errors with the value shown."""
    assert problems({"server": {"listen": ["127.0.0.1:99999"]}}) == [
        "server.listen[0]: port out of range 0..65535 in '127.0.0.1:99999'"
    ]
    assert problems({"server": {"allow_clients": ["10.0.0.0/33"]}}) == [
        "server.allow_clients[0]: expected an IP network such as 10.0.0.0/8, got '10.0.0.0/33'"
    ]
    assert problems({"cache": {"max_entries": -1}}) == [
        "cache.max_entries: must be within 0..100000000, got -1"
    ]
    assert problems({"server": {"server_name": "bad name"}}) == [
        "server.server_name: expected a host name, got 'bad name'"
    ]
    assert problems({"server": {"listen": []}}) == ["server.listen: needs at least one address"]


def test_policy_type_nothing_provides_is_an_error() -> None:
    """A [[policy]] whose type no installed package provides is named with its index."""
    assert problems({"policy": [{"type": "nope"}]}) == [
        "policy[0].type: no policy type 'nope' is installed"
    ]
    assert problems({"export": [{"path": "x"}]}) == [
        "export[0].type: required, a string naming the export type"
    ]


_MINUTE = Duration(60)


@attrs.frozen
class _ExampleOptions:
    interval: Duration = _MINUTE
    names: tuple[str, ...] = ()


def test_plugin_tables_are_structured_by_type() -> None:
    """Each [[policy]] table is checked against its type's own options class."""
    registry = Registry(policies={"example": PluginType("example", _ExampleOptions, print)})
    config = parse_config(
        {"policy": [{"type": "example", "interval": "2h", "names": ["a"]}]}, registry
    )
    assert config.policy[0].type == "example"
    assert config.policy[0].options == _ExampleOptions(Duration(7200), ("a",))
    found = problems({"policy": [{}, {"type": "example", "interval": "2 hours"}]}, registry)
    assert found == [
        "policy[0].type: required, a string naming the policy type",
        "policy[1].interval: expected a duration such as 30m, 2h or 15d, got '2 hours'",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("2h", 7200), ("15d", 1296000), ("45s", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    """Durations are written <int>m|h|d."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "0h", "h", "1.5h", "2 hours", "-1d"])
def test_bad_durations(text: str) -> None:
    """Anything else is rejected with the text shown."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    """A missing file or broken TOML is one clear line naming the file."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.toml")
    assert "cannot read" in caught.value.problems[0]
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    assert caught.value.problems[0].startswith(f"{broken}: not valid TOML")


def test_range_errors_reported_beside_type_errors() -> None:
    """Every problem of a table shows at once, not one more after each fix."""
    found = problems(
        {
            "server": {
                "listen": ["127.0.0.1"],
                "tcp_idle_timeout": 0,
                "tcp_max_connections": 0,
                "tcp_max_connections_per_client": 0,
            }
        }
    )
    assert sorted(found) == [
        'server.listen[0]: expected "IP:port" or "[IPv6]:port", got \'127.0.0.1\'',
        "server.tcp_idle_timeout: must be within 1..3600, got 0.0",
        "server.tcp_max_connections: must be within 1..1000000, got 0",
        "server.tcp_max_connections_per_client: must be within 1..1000000, got 0",
    ]


def test_admin_listener_is_off_unless_configured() -> None:
    """No `[admin]` section, no admin listener; an empty one listens on 127.0.0.1:8053."""
    assert parse_config({}, Registry()).admin is None
    admin = parse_config({"admin": {}}, Registry()).admin
    assert admin is not None
    assert admin.listen == HostPort("127.0.0.1", 8053)
    assert admin.token_file == ""


def test_admin_on_a_network_address_needs_a_token_file() -> None:
    """Listening beyond loopback without a token is refused, in one line with its path."""
    assert problems({"admin": {"listen": "0.0.0.0:8053"}}) == [
        "admin.token_file: required when listen (0.0.0.0:8053) is not a loopback address"
    ]
    assert problems({"admin": {"listen": "[2001:db8::1]:8053"}}) == [
        "admin.token_file: required when listen ([2001:db8::1]:8053) is not a loopback address"
    ]
    config = parse_config(
        {"admin": {"listen": "0.0.0.0:8053", "token_file": "/etc/misp-dns/admin.token"}},
        Registry(),
    )
    assert config.admin is not None and config.admin.token_file == "/etc/misp-dns/admin.token"
    assert parse_config({"admin": {"listen": "[::1]:9000"}}, Registry()).admin is not None


def test_admin_table_is_strict() -> None:
    """Typos and wrong types in `[admin]` are named like everywhere else."""
    assert problems({"admin": {"listen": "localhost:8053", "tokenfile": "x"}}) == [
        'admin.listen: expected "IP:port" or "[IPv6]:port", got \'localhost:8053\'',
        "admin.tokenfile: unknown key",
    ]
    assert problems({"admin": "127.0.0.1:8053"}) == [
        "admin: expected a table, got '127.0.0.1:8053' (string)"
    ]


def test_rpz_section_with_its_defaults() -> None:
    """`[rpz]` needs only a zone; transfers default to loopback, unsigned, no NOTIFY,
    NXDOMAIN, no trace records, 16 deltas kept; no section means no primary."""
    assert parse_config({}, Registry()).rpz is None
    rpz = parse_config({"rpz": {"zone": "rpz.misp-dns.example"}}, Registry()).rpz
    assert rpz is not None
    assert rpz.zone == "rpz.misp-dns.example"
    assert rpz.allow_transfer == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert (rpz.tsig_keys, rpz.notify, rpz.action, rpz.traceability, rpz.ixfr_history) == (
        (),
        (),
        "nxdomain",
        False,
        16,
    )


def test_rpz_contract_keys() -> None:
    """The documented keys are read as written: networks, key names, "IP:port" targets
    (port 53 when left out)."""
    config = parse_config(
        {
            "tsig_key": [{"name": "fleet", "secret_file": "/etc/misp-dns/fleet.key"}],
            "rpz": {
                "zone": "rpz.misp-dns.example",
                "allow_transfer": ["192.0.2.0/24"],
                "tsig_keys": ["fleet"],
                "notify": ["192.0.2.53:53", "192.0.2.54"],
                "action": "nodata",
                "traceability": True,
            },
        },
        Registry(),
    )
    rpz = config.rpz
    assert rpz is not None
    assert rpz.allow_transfer == (ipaddress.ip_network("192.0.2.0/24"),)
    assert rpz.tsig_keys == ("fleet",)
    assert [str(t) for t in rpz.notify] == ["192.0.2.53:53", "192.0.2.54:53"]
    assert (rpz.action, rpz.traceability) == ("nodata", True)


def test_rpz_problems_name_the_key() -> None:
    """A missing zone, a key no [[tsig_key]] defines, an unknown action and an override for
    a policy that does not exist are each one line."""
    assert problems({"rpz": {}}) == ["rpz.zone: required key is missing"]
    assert problems(
        {
            "rpz": {
                "zone": "rpz.example",
                "tsig_keys": ["fleet"],
                "action": "drop",
            }
        }
    ) == ["rpz.action: expected nxdomain or nodata, got 'drop'"]
    assert problems({"rpz": {"zone": "rpz.example", "tsig_keys": ["fleet"]}}) == [
        "rpz.tsig_keys[0]: no [[tsig_key]] is named 'fleet'"
    ]
    assert problems({"rpz": {"zone": "rpz.example", "actions": {"policy[0]": "nodata"}}}) == [
        "rpz.actions: there is no policy[0] (0 [[policy]] tables)"
    ]
    assert problems({"rpz": {"zone": "bad zone"}}) == [
        "rpz.zone: expected a zone name such as rpz.example, got 'bad zone'"
    ]


def test_workers_defaults_to_one_process() -> None:
    """Without `workers`, one process serves, as before the key existed."""
    assert parse_config({}, Registry()).server.workers == 1
    assert parse_config({"server": {"workers": 4}}, Registry()).server.workers == 4


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "server.workers: must be within 1..64, got 0"),
        (65, "server.workers: must be within 1..64, got 65"),
        ("2", "server.workers: expected an integer, got '2' (string)"),
        (True, "server.workers: expected an integer, got True (boolean)"),
    ],
)
def test_workers_out_of_range_or_not_an_integer_is_named(value: object, message: str) -> None:
    """A `workers` that is no integer within 1..64 is one line naming the key and value."""
    assert problems({"server": {"workers": value}}) == [message]


def test_workers_cannot_run_the_rpz_primary_or_rpz_policies() -> None:
    """`[rpz]` and `type = "rpz"` keep per-process zone state: with workers > 1 they are
    refused with a line saying to run one process."""
    raw = {
        "server": {"workers": 2},
        "policy": [{"type": "rpz", "zone": "rpz.example", "primary": "192.0.2.1:53"}],
        "rpz": {"zone": "misp.rpz.example"},
    }
    found = problems(raw, default_registry())
    assert "rpz: not available with server.workers > 1 (run one process)" in found
    assert (
        'policy[0]: type = "rpz" is not available with server.workers > 1 (run one process)'
        in found
    )
    raw["server"] = {"workers": 1}
    assert parse_config(raw, default_registry()).server.workers == 1
