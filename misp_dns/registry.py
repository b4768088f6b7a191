"""Where policy, indicator-source and sink types are found by the `type` of their config table.

Built-in types are listed here; third-party packages add theirs through the entry-point
groups named in `misp_dns.interfaces` (`misp_dns.policies`, `misp_dns.sources`,
`misp_dns.exporters`), each entry point naming a `PluginType`:

    [project.entry-points."misp_dns.policies"]
    tld-block = "example_policy:plugin"

An indicator source becomes a blocking policy type of its own name: its indicators are
refreshed, cached on disk and matched like MISP's (see `misp_dns.policy.misp`).
docs/extending.md has the whole walk-through.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

import attrs
from twisted.logger import Logger

from misp_dns.interfaces import POLICY_GROUP, SINK_GROUP, SOURCE_GROUP, PluginType

__all__ = ["Registry", "default_registry"]


@attrs.define
class Registry:
    """The policy, source and sink types available to a configuration.

    `policies` includes one blocking policy type per indicator source in `sources`.
    """

    policies: dict[str, PluginType] = attrs.field(factory=dict)
    sources: dict[str, PluginType] = attrs.field(factory=dict)
    exporters: dict[str, PluginType] = attrs.field(factory=dict)

    def policy_options(self, name: str) -> type | None:
        """The options class of policy type `name`, or None if nothing provides it."""
        plugin = self.policies.get(name)
        return plugin.options if plugin else None

    def export_options(self, name: str) -> type | None:
        """The options class of export type `name`, or None if nothing provides it."""
        plugin = self.exporters.get(name)
        return plugin.options if plugin else None

    def add_source(self, plugin: PluginType) -> None:
        """Register an indicator source, and the blocking policy type fed by it."""
        from misp_dns.policy.misp import source_policy_type

        self.sources[plugin.name] = plugin
        self.policies[plugin.name] = source_policy_type(plugin)


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
    from misp_dns.policy import allowlist, misp, rpz

    return [allowlist.plugin, misp.misp_plugin, misp.feed_plugin, rpz.plugin]


def _builtin_exporters() -> list[PluginType]:
    from misp_dns.export import http, jsonl, syslog

    return [jsonl.plugin, syslog.plugin, http.plugin]


def default_registry() -> Registry:
    """Built-in types plus those installed packages register; built-ins win a name clash."""
    registry = Registry()
    for plugin in _from_entry_points(SOURCE_GROUP):
        registry.add_source(plugin)
    for plugin in [*_from_entry_points(POLICY_GROUP), *_builtin_policies()]:
        registry.policies[plugin.name] = plugin
    for plugin in [*_from_entry_points(SINK_GROUP), *_builtin_exporters()]:
        registry.exporters[plugin.name] = plugin
    return registry
