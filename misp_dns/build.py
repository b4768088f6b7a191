"""Building the configured plugins: the `[[policy]]` chain and the `[[export]]` sinks.

Each table is built by the `PluginType` its `type` names in the `Registry`, with a
`BuildContext`; whatever only building can find (a missing file, a plugin that builds the
wrong kind of object) is raised as `ConfigError`, each line prefixed with the table's path.
Both start-up (`misp_dns.tap`) and SIGHUP reloads (`misp_dns.reload`) build through here.

`security_warnings` collects what works but exposes a secret: an options class that has a
`security_warnings(config_path)` method (as the `misp` table's has) is asked for its lines.
`deployment_problems` collects what is valid but cannot work on this machine, as the user
running it: a table's own `deployment_problems()` (a missing feed directory) and a state
directory that cannot be written. `describe_policies` and `describe_sinks` give the one
line per policy and per sink that the start-up log (and a reload) shows; a policy with a
`describe()` method says there what it does.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from misp_dns.export.exporter import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    ExporterService,
    SinkSlot,
)
from misp_dns.intel.misp_options import readable_by_others
from misp_dns.interfaces import SINGLE_PROCESS, BuildContext, IPolicy, ISink, SnapshotSharing
from misp_dns.registry import Registry
from misp_dns.values import Config, ConfigError, PluginConfig, ServerConfig, TsigKeyConfig

__all__ = [
    "build_exporter",
    "build_policies",
    "build_policy",
    "context_for",
    "deployment_problems",
    "describe_policies",
    "describe_sinks",
    "security_warnings",
]


def context_for(
    server: ServerConfig,
    reactor: Any,
    tsig_keys: Sequence[TsigKeyConfig] = (),
    sharing: SnapshotSharing = SINGLE_PROCESS,
) -> BuildContext:
    """The context plugins of a configuration are built with."""
    return BuildContext(
        reactor=reactor,
        server=server,
        state_dir=server.state_dir,
        tsig_keys=tuple(tsig_keys),
        sharing=sharing,
    )


def build_policy(
    index: int, table: PluginConfig, registry: Registry, context: BuildContext
) -> IPolicy:
    """The policy of `[[policy]]` table number `index`, or ConfigError naming the table."""
    try:
        policy = registry.policies[table.type].build(table.options, context)
    except ConfigError as problem:
        raise ConfigError([f"policy[{index}]: {line}" for line in problem.problems]) from None
    if not IPolicy.providedBy(policy):
        raise ConfigError([f"policy[{index}]: type {table.type!r} did not build an IPolicy"])
    return policy


def build_policies(
    config: Config, registry: Registry, reactor: Any, sharing: SnapshotSharing = SINGLE_PROCESS
) -> list[IPolicy]:
    """The `[[policy]]` tables turned into policy objects, in config order."""
    context = context_for(config.server, reactor, config.tsig_key, sharing)
    problems: list[str] = []
    policies = []
    for index, table in enumerate(config.policy):
        try:
            policies.append(build_policy(index, table, registry, context))
        except ConfigError as problem:
            problems.extend(problem.problems)
    if problems:
        raise ConfigError(problems)
    return policies


def build_exporter(
    tables: Sequence[PluginConfig],
    registry: Registry,
    reactor: Any,
    *,
    server: ServerConfig | None = None,
    max_queue: int | None = None,
    max_queue_bytes: int | None = None,
) -> ExporterService:
    """The exporter for the `[[export]]` tables, each built by its registered type.

    Raises `ConfigError` ("export[1]: ...") when a sink cannot be built from its options.
    The queue holds `max_queue` events in `max_queue_bytes`; by default the largest
    `max_queue` and `max_queue_bytes` of the sinks.
    """
    context = context_for(server or ServerConfig(), reactor)
    slots: list[SinkSlot] = []
    problems: list[str] = []
    bounds = []
    byte_bounds = []
    for index, table in enumerate(tables):
        plugin = registry.exporters.get(table.type)
        if plugin is None:
            problems.append(f"export[{index}].type: no export type {table.type!r} is installed")
            continue
        try:
            sink = plugin.build(table.options, context)
        except ConfigError as problem:
            problems.extend(f"export[{index}]: {line}" for line in problem.problems)
            continue
        if not ISink.providedBy(sink):
            problems.append(f"export[{index}]: type {table.type!r} did not build an ISink")
            continue
        include = getattr(table.options, "include", "all")
        slots.append(SinkSlot(f"export[{index}] ({table.type})", sink, include == "blocked"))
        bounds.append(int(getattr(table.options, "max_queue", DEFAULT_MAX_QUEUE)))
        byte_bounds.append(int(getattr(table.options, "max_queue_bytes", DEFAULT_MAX_QUEUE_BYTES)))
    if problems:
        raise ConfigError(problems)
    if max_queue is None:
        max_queue = max(bounds, default=DEFAULT_MAX_QUEUE)
    if max_queue_bytes is None:
        max_queue_bytes = max(byte_bounds, default=DEFAULT_MAX_QUEUE_BYTES)
    return ExporterService(slots, reactor, max_queue=max_queue, max_queue_bytes=max_queue_bytes)


def security_warnings(config: Config, config_path: str | None) -> list[str]:
    """What `--check-config` and the start-up log warn about, prefixed with the table's path.

    Each `[[policy]]` table whose options have a `security_warnings(config_path)` method
    is asked; `config_path` is the file the config was read from. A `[[tsig_key]]` secret
    file others can read, and an `[rpz]` serving unsigned transfers, are warned of too.
    """
    lines: list[str] = []
    for index, table in enumerate(config.policy):
        check = getattr(table.options, "security_warnings", None)
        if callable(check):
            lines.extend(f"policy[{index}].{line}" for line in check(config_path))
    for index, key in enumerate(config.tsig_key):
        mode = readable_by_others(key.secret_file)
        if mode is not None:
            lines.append(
                f"tsig_key[{index}].secret_file {key.secret_file!r} can be read by other users"
                f" than its owner (mode {mode:04o}); the TSIG secret in it should not (chmod 600)"
            )
    if config.rpz is not None and not config.rpz.tsig_keys:
        lines.append(
            "rpz.tsig_keys is empty: zone transfers are not signed, so any client in"
            " rpz.allow_transfer can read the zone and a forged primary cannot be told apart"
        )
    return lines


def deployment_problems(config: Config, policies: Sequence[IPolicy]) -> list[str]:
    """What would keep a valid config from working here, one line per problem with its path.

    Each `[[policy]]` table whose options have a `deployment_problems()` method is asked; the
    state directory is checked when a policy runs a service (those keep their snapshots
    there), as the user running this.
    """
    lines: list[str] = []
    for index, table in enumerate(config.policy):
        check = getattr(table.options, "deployment_problems", None)
        if callable(check):
            lines.extend(f"policy[{index}].{line}" for line in check())
    if any(policy.service is not None for policy in policies):
        problem = _state_dir_problem(Path(config.server.state_dir).expanduser())
        if problem is not None:
            lines.append(f"server.state_dir: {problem}")
    return lines


def _state_dir_problem(state_dir: Path) -> str | None:
    """Why `state_dir` cannot be written (or created), or None."""
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(state_dir)!r} cannot be created: {str(existing)!r} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        created = "written" if existing == state_dir else "created"
        return (
            f"{str(state_dir)!r} cannot be {created} by user {_user()}"
            f" ({str(existing)!r} is not writable); indicator snapshots could not be saved"
        )
    return None


def _user() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def describe_policies(tables: Sequence[PluginConfig], policies: Sequence[IPolicy]) -> list[str]:
    """One line per policy of the chain, in its order: `policy[1] misp-feed ...: blocking; ...`.

    A policy with a `describe()` method gives the rest of its line (starting with what it
    is); any other is named by its table's type (or its `name`, without a table).
    """
    if not policies:
        return ["no [[policy]]: nothing is blocked, every query is forwarded"]
    lines = []
    for index, policy in enumerate(policies):
        describe = getattr(policy, "describe", None)
        detail = describe() if callable(describe) else None
        if not isinstance(detail, str):
            detail = tables[index].type if index < len(tables) else str(policy.name)
        lines.append(f"policy[{index}] {detail}")
    return lines


def describe_sinks(tables: Sequence[PluginConfig]) -> list[str]:
    """One line per `[[export]]` sink: its type, where it writes, which queries it gets."""
    if not tables:
        return ["no [[export]]: queries are not logged"]
    lines = []
    for index, table in enumerate(tables):
        options = table.options
        where = _sink_target(options)
        include = getattr(options, "include", "all")
        queries = "blocked queries only" if include == "blocked" else "every query"
        lines.append(f"export[{index}] {table.type}{f' to {where}' if where else ''}: {queries}")
    return lines


def _sink_target(options: object) -> str:
    """Where a sink writes, from the usual option names; a URL without user or query."""
    url = getattr(options, "url", None)
    if isinstance(url, str):
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    address = getattr(options, "address", None)
    if isinstance(address, str):
        protocol = getattr(options, "protocol", None)
        return f"{address} ({protocol})" if isinstance(protocol, str) else address
    path = getattr(options, "path", None)
    return path if isinstance(path, str) else ""
