"""Where policy and export types are found by the `type` of their config table.

Built-in types are listed here; third-party packages add theirs through the entry-point
groups `misp_dns.policies` and `misp_dns.exporters`, each entry point naming a `PluginType`:

    [project.entry-points."misp_dns.policies"]
    tld-block = "example_policy:plugin"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import attrs
from twisted.logger import Logger

__all__ = ["BuildContext", "PluginType", "Registry", "default_registry"]

POLICY_GROUP = "misp_dns.policies"
EXPORT_GROUP = "misp_dns.exporters"


@attrs.frozen
class BuildContext:
    """What a plugin factory may use: the reactor, the server settings and the state folder."""

    reactor: Any
    server: Any
    state_dir: str


@attrs.frozen
class PluginType:
    """A named policy or export type: its options class and the factory that builds it.

    `build(options, context)` returns the policy (an `IPolicy`) or sink (an `ISink`). A policy
    that needs background work (fetching, refreshing) may also provide `service`, an
    `IService` started and stopped with the server.
    """

    name: str
    options: type
    build: Callable[[Any, BuildContext], Any]


@attrs.define
class Registry:
    """The policy and export types available to a configuration."""

    policies: dict[str, PluginType] = attrs.field(factory=dict)
    exporters: dict[str, PluginType] = attrs.field(factory=dict)

    def policy_options(self, name: str) -> type | None:
        """The options class of policy type `name`, or None if nothing provides it."""
        plugin = self.policies.get(name)
        return plugin.options if plugin else None

    def export_options(self, name: str) -> type | None:
        """The options class of export type `name`, or None if nothing provides it."""
        plugin = self.exporters.get(name)
        return plugin.options if plugin else None


_log = Logger()


def _from_entry_points(group: str) -> Iterable[PluginType]:
    for entry_point in entry_points(group=group):
        try:
            plugin = entry_point.load()
        except Exception:
            _log.failure(
                "cannot load {group} entry point {name}", group=group, name=entry_point.name
            )
            continue
        if isinstance(plugin, PluginType):
            yield plugin
        else:
            _log.error(
                "{group} entry point {name} is not a PluginType; ignored",
                group=group,
                name=entry_point.name,
            )


def _builtin_policies() -> list[PluginType]:
    from misp_dns.policy import allowlist, misp

    return [allowlist.plugin, misp.misp_plugin, misp.feed_plugin]


def _builtin_exporters() -> list[PluginType]:
    from misp_dns.export import http, jsonl, syslog

    return [jsonl.plugin, syslog.plugin, http.plugin]


def default_registry() -> Registry:
    """Built-in types plus those installed packages register; built-ins win a name clash."""
    registry = Registry()
    for plugin in [*_from_entry_points(POLICY_GROUP), *_builtin_policies()]:
        registry.policies[plugin.name] = plugin
    for plugin in [*_from_entry_points(EXPORT_GROUP), *_builtin_exporters()]:
        registry.exporters[plugin.name] = plugin
    return registry
