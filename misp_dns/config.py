"""The configuration file: one strict cattrs converter, TOML loading, readable errors.

The value classes it fills live in `misp_dns.values`. The file is TOML with the sections
`[server]`, `[cache]`, `[[policy]]`, `[[export]]`, `[admin]` and `[[tsig_key]]` (see the README and
etc/misp-dns.toml).
Loading either returns a complete `Config` or raises `ConfigError`, whose `problems` are one
line each, naming the TOML path and the bad value:

    server.listen[0]: expected "IP:port", got '127.0.0.1'
    policy[1].update_interval: expected a duration such as 30m, 2h or 15d, got '2 hours'

`[[policy]]` and `[[export]]` tables are structured by their `type`, looked up in a
`Registry` (built-ins plus third-party entry points), so each plugin owns its config class.
"""

from __future__ import annotations

import ipaddress
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

from misp_dns.values import (
    AdminConfig,
    BadValue,
    CacheConfig,
    Config,
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    Network,
    PluginConfig,
    RpzConfig,
    ServerConfig,
    TsigKeyConfig,
    Upstream,
    describe_value,
    parse_duration,
)

if TYPE_CHECKING:
    from misp_dns.registry import Registry

__all__ = ["converter", "load_config", "parse_config", "structure_section"]

T = TypeVar("T")


def _strict(kind: type[T], expected: str) -> Callable[[Any, Any], T]:
    def structure(value: Any, _type: Any) -> T:
        # bool is an int in Python, but `true` is never a port number in a config file.
        if isinstance(value, bool) and kind is not bool:
            raise BadValue(f"expected {expected}, got {describe_value(value)}")
        if kind is float and isinstance(value, int):
            return float(value)  # type: ignore[return-value]
        if not isinstance(value, kind):
            raise BadValue(f"expected {expected}, got {describe_value(value)}")
        return value

    return structure


def _parsed(parse: Callable[[str], T], expected: str) -> Callable[[Any, Any], T]:
    def structure(value: Any, _type: Any) -> T:
        if not isinstance(value, str):
            raise BadValue(f"expected {expected}, got {describe_value(value)}")
        return parse(value)

    return structure


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise BadValue(f"expected an IP network such as 10.0.0.0/8, got {text!r}") from None


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
            raise BadValue(f"expected an array, got {describe_value(value)}")
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
            got = "a string" if isinstance(value, str) else describe_value(value)
            raise BadValue(f"expected a table, got {got}")
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
    if isinstance(exc, BadValue | ValueError | TypeError):
        return [f"{path or '(top level)'}: {exc}"]
    return [f"{path or '(top level)'}: not a valid value ({type(exc).__name__})"]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def structure_section(raw: Any, cls: type[T], path: str) -> tuple[T | None, list[str]]:
    """Structure one table into `cls`; return it, or None and the problem lines."""
    if not isinstance(raw, Mapping):
        return None, [f"{path}: expected a table, got {describe_value(raw)}"]
    try:
        return converter.structure(dict(raw), cls), []
    except Exception as exc:
        return None, _problems(exc, path)


def _plugin_tables(
    raw: Any, section: str, lookup: Callable[[str], type | None]
) -> tuple[list[PluginConfig], list[str]]:
    if not isinstance(raw, list):
        got = describe_value(raw)
        return [], [f"{section}: expected an array of tables ([[{section}]]), got {got}"]
    tables: list[PluginConfig] = []
    problems: list[str] = []
    for index, table in enumerate(raw):
        path = f"{section}[{index}]"
        if not isinstance(table, dict):
            problems.append(f"{path}: expected a table, got {describe_value(table)}")
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
    known = {"server", "cache", "policy", "export", "admin", "tsig_key", "rpz"}
    problems.extend(f"{key}: unknown section" for key in sorted(set(raw) - known))
    server, found = structure_section(raw.get("server", {}), ServerConfig, "server")
    problems.extend(found)
    cache, found = structure_section(raw.get("cache", {}), CacheConfig, "cache")
    problems.extend(found)
    policies, found = _plugin_tables(raw.get("policy", []), "policy", registry.policy_options)
    problems.extend(found)
    exports, found = _plugin_tables(raw.get("export", []), "export", registry.export_options)
    problems.extend(found)
    admin = None
    if "admin" in raw:
        admin, found = structure_section(raw["admin"], AdminConfig, "admin")
        problems.extend(found)
    tsig_keys, found = _tsig_keys(raw.get("tsig_key", []))
    problems.extend(found)
    rpz = None
    if "rpz" in raw:
        rpz, found = structure_section(raw["rpz"], RpzConfig, "rpz")
        problems.extend(found)
        if rpz is not None:
            problems.extend(_rpz_references(rpz, tsig_keys, len(policies)))
    if server is not None and server.workers > 1:
        problems.extend(_single_process_only(rpz is not None, policies))
    if problems or server is None or cache is None:
        raise ConfigError(problems)
    return Config(
        server, cache, tuple(policies), tuple(exports), admin, tsig_key=tsig_keys, rpz=rpz
    )


def _single_process_only(rpz_primary: bool, policies: list[PluginConfig]) -> list[str]:
    """What a group of serving processes (`server.workers` > 1) cannot run yet: the RPZ
    primary and `rpz` policies keep per-process zone state (serials, NOTIFY, transfers)."""
    problems = []
    if rpz_primary:
        problems.append("rpz: not available with server.workers > 1 (run one process)")
    problems.extend(
        f'policy[{index}]: type = "rpz" is not available with server.workers > 1 (run one process)'
        for index, table in enumerate(policies)
        if table.type == "rpz"
    )
    return problems


def _rpz_references(rpz: RpzConfig, keys: tuple[TsigKeyConfig, ...], policies: int) -> list[str]:
    """`[rpz]` names keys and policies that must exist."""
    known = {key.name.rstrip(".").lower() for key in keys}
    problems = [
        f"rpz.tsig_keys[{index}]: no [[tsig_key]] is named {name!r}"
        for index, name in enumerate(rpz.tsig_keys)
        if name.rstrip(".").lower() not in known
    ]
    for key in rpz.actions:
        if int(key[len("policy[") : -1]) >= policies:
            problems.append(f"rpz.actions: there is no {key} ({policies} [[policy]] tables)")
    return problems


def _tsig_keys(raw: Any) -> tuple[tuple[TsigKeyConfig, ...], list[str]]:
    """The `[[tsig_key]]` tables; a name used twice is a problem (which would sign?)."""
    if not isinstance(raw, list):
        return (), [
            f"tsig_key: expected an array of tables ([[tsig_key]]), got {describe_value(raw)}"
        ]
    keys: list[TsigKeyConfig] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, table in enumerate(raw):
        key, found = structure_section(table, TsigKeyConfig, f"tsig_key[{index}]")
        problems.extend(found)
        if key is None:
            continue
        folded = key.name.rstrip(".").lower()
        if folded in seen:
            problems.append(f"tsig_key[{index}].name: {key.name!r} is already a key's name")
        seen.add(folded)
        keys.append(key)
    return tuple(keys), problems


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
