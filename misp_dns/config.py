"""The configuration file: frozen attrs classes, one strict cattrs converter, readable errors.

The file is TOML with the sections `[server]`, `[cache]`, `[[policy]]` and `[[export]]`
(see ../README.md and etc/misp-dns.toml). Loading either returns a complete `Config` or raises
`ConfigError`, whose `problems` are one line each, naming the TOML path and the bad value:

    server.listen[0]: expected "IP:port", got '127.0.0.1'
    policy[1].update_interval: expected a duration such as 30m, 2h or 15d, got '2 hours'

`[[policy]]` and `[[export]]` tables are structured by their `type`, looked up in a
`Registry` (built-ins plus third-party entry points), so each plugin owns its config class.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

if TYPE_CHECKING:
    from misp_dns.registry import Registry

__all__ = [
    "CacheConfig",
    "Config",
    "ConfigError",
    "Duration",
    "FieldError",
    "HostPort",
    "Network",
    "PluginConfig",
    "ServerConfig",
    "at_least",
    "between",
    "converter",
    "load_config",
    "parse_duration",
]

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one readable line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _BadValue(ValueError):
    """A value that has the right type but not an acceptable content."""


def _describe(value: object) -> str:
    """A bad value for an error line: scalars shown, arrays and tables only by kind.

    Arrays and tables are never quoted: a secret put in the wrong shape (an API key in an
    array, a header table written as a string) must not reach the terminal or a log.
    """
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(value), type(value).__name__
    )
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


@attrs.frozen(order=True)
class HostPort:
    """An IP address and port, written "127.0.0.1:53" or "[::1]:53" in the file."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> HostPort:
        """Parse "IP:port", "[IPv6]:port" or, with `default_port`, a bare IP."""
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
        if match:
            host = match.group(1) or match.group(3)
            port = int(match.group(2) or match.group(4))
        elif default_port is not None:
            host, port = text, default_port
        else:
            raise _BadValue(f'expected "IP:port" or "[IPv6]:port", got {text!r}')
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise _BadValue(f"expected an IP address, got {text!r}") from None
        if not 0 <= port <= 65535:
            raise _BadValue(f"port out of range 0..65535 in {text!r}")
        return cls(str(address), port)

    @property
    def family(self) -> int:
        """`socket.AF_INET` or `socket.AF_INET6`."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Upstream(HostPort):
    """An upstream nameserver; the port may be left out and defaults to 53."""


class Duration(float):
    """A length of time in seconds, written `<int>s`, `<int>m`, `<int>h` or `<int>d` in the file."""


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> Duration:
    """Parse "30m", "2h" or "15d" (and "45s") into seconds."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd])\s*", text)
    if not match or int(match.group(1)) == 0:
        raise _BadValue(f"expected a duration such as 30m, 2h or 15d, got {text!r}")
    return Duration(int(match.group(1)) * _DURATION_UNITS[match.group(2)])


def between(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator for a number within [low, high] that names the bad value."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if not low <= value <= high:
            raise FieldError(attribute.name, f"must be within {low}..{high}, got {value!r}")

    return check


def at_least(low: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator for a number of at least `low` that names the bad value."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if value < low:
            raise FieldError(attribute.name, f"must be at least {low}, got {value!r}")

    return check


class FieldError(ValueError):
    """Raised by validators in `__init__`, where cattrs cannot tell which field failed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _loopback() -> tuple[Network, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _default_allow_clients() -> tuple[Network, ...]:
    nets = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    return tuple(ipaddress.ip_network(n) for n in nets)


def _valid_server_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or any(
        not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label)
        for label in labels
    ):
        raise FieldError(attribute.name, f"expected a host name, got {value!r}")


@attrs.frozen
class ServerConfig:
    """`[server]`: where to listen, where to forward, who may ask, and where state lives.

    `rate_limit` is UDP responses per second per client network (0 turns it off); see
    `misp_dns.dns.ratelimit`.
    """

    listen: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5300),)
    upstreams: tuple[Upstream, ...] = ()
    allow_clients: tuple[Network, ...] = attrs.field(factory=_default_allow_clients)
    server_name: str = attrs.field(default="", validator=_valid_server_name)
    state_dir: str = "/var/lib/misp-dns"
    tcp_idle_timeout: float = attrs.field(default=30.0, validator=between(1, 3600))
    tcp_max_connections: int = attrs.field(default=1000, validator=between(1, 1_000_000))
    upstream_timeout: float = attrs.field(default=5.0, validator=between(0.5, 60))
    rate_limit: int = attrs.field(default=1000, validator=between(0, 10_000_000))
    rate_limit_slip: int = attrs.field(default=2, validator=between(0, 10))
    rate_limit_ipv4_prefix: int = attrs.field(default=24, validator=between(8, 32))
    rate_limit_ipv6_prefix: int = attrs.field(default=56, validator=between(16, 128))
    rate_limit_exempt: tuple[Network, ...] = attrs.field(factory=_loopback)

    def __attrs_post_init__(self) -> None:
        if not self.listen:
            raise FieldError("listen", "needs at least one address")


@attrs.frozen
class CacheConfig:
    """`[cache]`: the answer cache's size (least recently used entries leave first)."""

    max_entries: int = attrs.field(default=100_000, validator=between(0, 100_000_000))


@attrs.frozen
class PluginConfig:
    """One `[[policy]]` or `[[export]]` table: its `type` and its structured options."""

    type: str
    options: Any


@attrs.frozen
class Config:
    """The whole, validated configuration."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    cache: CacheConfig = attrs.field(factory=CacheConfig)
    policy: tuple[PluginConfig, ...] = ()
    export: tuple[PluginConfig, ...] = ()


def _strict(kind: type[T], expected: str) -> Callable[[Any, Any], T]:
    def structure(value: Any, _type: Any) -> T:
        # bool is an int in Python, but `true` is never a port number in a config file.
        if isinstance(value, bool) and kind is not bool:
            raise _BadValue(f"expected {expected}, got {_describe(value)}")
        if kind is float and isinstance(value, int):
            return float(value)  # type: ignore[return-value]
        if not isinstance(value, kind):
            raise _BadValue(f"expected {expected}, got {_describe(value)}")
        return value

    return structure


def _parsed(parse: Callable[[str], T], expected: str) -> Callable[[Any, Any], T]:
    def structure(value: Any, _type: Any) -> T:
        if not isinstance(value, str):
            raise _BadValue(f"expected {expected}, got {_describe(value)}")
        return parse(value)

    return structure


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _BadValue(f"expected an IP network such as 10.0.0.0/8, got {text!r}") from None


def _is_homogeneous_tuple(type_: Any) -> bool:
    args: tuple[Any, ...] = getattr(type_, "__args__", ())
    return getattr(type_, "__origin__", None) is tuple and args[1:] == (...,)


def _is_table(type_: Any) -> bool:
    return getattr(type_, "__origin__", None) is dict


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict(float, "a number"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook(HostPort, _parsed(HostPort.parse, '"IP:port"'))
    conv.register_structure_hook(
        Upstream,
        _parsed(lambda t: Upstream(*attrs.astuple(HostPort.parse(t, 53))), '"IP:port"'),
    )
    conv.register_structure_hook(Duration, _parsed(parse_duration, "a duration such as 2h"))
    conv.register_structure_hook(Network, _parsed(_network, "an IP network"))

    def structure_tuple(value: Any, type_: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _BadValue(f"expected an array, got {_describe(value)}")
        item_type = type_.__args__[0]
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(conv.structure(item, item_type))
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote(f"item @ index {index}", index, item_type),
                ]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError("invalid items", errors, type_)
        return tuple(items)

    conv.register_structure_hook_func(_is_homogeneous_tuple, structure_tuple)

    def structure_table(value: Any, type_: Any) -> dict[Any, Any]:
        if not isinstance(value, dict):
            # Not quoted: tables hold things like HTTP headers with tokens in them.
            got = "a string" if isinstance(value, str) else _describe(value)
            raise _BadValue(f"expected a table, got {got}")
        key_type, value_type = type_.__args__
        table, errors = {}, []
        for key, item in value.items():
            try:
                table[conv.structure(key, key_type)] = conv.structure(item, value_type)
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote(f"value @ key {key}", key, value_type),
                ]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError("invalid values", errors, type_)
        return table

    conv.register_structure_hook_func(_is_table, structure_table)
    conv.register_structure_hook_factory(attrs.has, lambda cls: _every_problem(conv, cls))
    return conv


def _every_problem(conv: cattrs.Converter, cls: type) -> Callable[[Any, Any], Any]:
    """cattrs' hook for an attrs class, reporting range errors beside type errors.

    attrs runs validators only once every field has structured, so a table with a wrong
    type and an out-of-range value would otherwise show the second problem only after the
    first is fixed. Here the validators of the fields that did structure run as well.
    """
    structure: Callable[[Any, Any], Any] = make_dict_structure_fn(
        cls, conv, _cattrs_forbid_extra_keys=True
    )
    attrs.resolve_types(cls)

    def structure_reporting_all(value: Any, type_: Any) -> Any:
        try:
            return structure(value, type_)
        except cattrs.ClassValidationError as exc:
            reported = {sub.field for sub in exc.exceptions if isinstance(sub, FieldError)}
            reported.update(
                note.name
                for sub in exc.exceptions
                for note in getattr(sub, "__notes__", [])
                if isinstance(note, AttributeValidationNote)
            )
            more: list[Exception] = []
            for field in attrs.fields(cls):
                if field.validator is None or field.name in reported or field.name not in value:
                    continue
                try:
                    field.validator(None, field, conv.structure(value[field.name], field.type))
                except FieldError as problem:
                    more.append(problem)
                except Exception:
                    continue
            if not more:
                raise
            raise cattrs.ClassValidationError(exc.message, [*exc.exceptions, *more], cls) from None

    return structure_reporting_all


converter = _make_converter()


def _problems(exc: BaseException, path: str) -> list[str]:
    """Turn a cattrs error tree into "path: message" lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return [f"{_join(path, key)}: unknown key" for key in sorted(exc.extra_fields)]
    if isinstance(exc, BaseValidationError):
        lines = []
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = _join(path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = f"{path}[{note.index}]"
            lines.extend(_problems(sub, sub_path))
        return lines
    if isinstance(exc, FieldError):
        return [f"{_join(path, exc.field)}: {exc}"]
    if isinstance(exc, KeyError):
        key = str(exc.args[0])
        # cattrs already notes the missing attribute, so `path` may end with it.
        if path != key and not path.endswith(f".{key}"):
            path = _join(path, key)
        return [f"{path}: required key is missing"]
    if isinstance(exc, _BadValue | ValueError | TypeError):
        return [f"{path or '(top level)'}: {exc}"]
    return [f"{path or '(top level)'}: not a valid value ({type(exc).__name__})"]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def structure_section(raw: Any, cls: type[T], path: str) -> tuple[T | None, list[str]]:
    """Structure one table into `cls`; return it, or None and the problem lines."""
    if not isinstance(raw, Mapping):
        return None, [f"{path}: expected a table, got {_describe(raw)}"]
    try:
        return converter.structure(dict(raw), cls), []
    except Exception as exc:
        return None, _problems(exc, path)


def _plugin_tables(
    raw: Any, section: str, lookup: Callable[[str], type | None]
) -> tuple[list[PluginConfig], list[str]]:
    if not isinstance(raw, list):
        return [], [f"{section}: expected an array of tables ([[{section}]]), got {_describe(raw)}"]
    tables: list[PluginConfig] = []
    problems: list[str] = []
    for index, table in enumerate(raw):
        path = f"{section}[{index}]"
        if not isinstance(table, dict):
            problems.append(f"{path}: expected a table, got {_describe(table)}")
            continue
        type_name = table.get("type")
        if not isinstance(type_name, str):
            problems.append(f"{path}.type: required, a string naming the {section} type")
            continue
        options_class = lookup(type_name)
        if options_class is None:
            problems.append(f"{path}.type: no {section} type {type_name!r} is installed")
            continue
        options = {k: v for k, v in table.items() if k != "type"}
        structured, found = structure_section(options, options_class, path)
        problems.extend(found)
        if structured is not None:
            tables.append(PluginConfig(type_name, structured))
    return tables, problems


def parse_config(raw: Mapping[str, Any], registry: Registry) -> Config:
    """Validate an already-parsed TOML document; raise ConfigError with every problem."""
    problems: list[str] = []
    known = {"server", "cache", "policy", "export"}
    problems.extend(f"{key}: unknown section" for key in sorted(set(raw) - known))
    server, found = structure_section(raw.get("server", {}), ServerConfig, "server")
    problems.extend(found)
    cache, found = structure_section(raw.get("cache", {}), CacheConfig, "cache")
    problems.extend(found)
    policies, found = _plugin_tables(raw.get("policy", []), "policy", registry.policy_options)
    problems.extend(found)
    exports, found = _plugin_tables(raw.get("export", []), "export", registry.export_options)
    problems.extend(found)
    if problems or server is None or cache is None:
        raise ConfigError(problems)
    return Config(server, cache, tuple(policies), tuple(exports))


def load_config(path: str | Path, registry: Registry | None = None) -> Config:
    """Read and validate the TOML file at `path`; raise ConfigError with every problem."""
    if registry is None:
        from misp_dns.registry import default_registry

        registry = default_registry()
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(raw, registry)
