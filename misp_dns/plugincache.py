"""Regenerates Twisted's plugin cache after an install or upgrade, so `twistd` starts without
rescanning, and without warning that it cannot write the cache.

Run as `python -m misp_dns.plugincache`, as the user who owns the installation (root for
/opt/misp-dns); the Makefile does so after every install, and the systemd unit before every
start (`ExecStartPre=-+...`, as root). Twisted rewrites `twisted/plugins/dropin.cache` when a
plugin file is newer than it, as after an upgrade: a server running as another user cannot,
and says so in its log at every start. This exits non-zero, naming the file, when the cache
next to misp-dns's plugin is still out of date afterwards.
"""

from __future__ import annotations

from pathlib import Path

from twisted import plugins
from twisted.plugin import IPlugin, getPlugins
from twisted.python.modules import getModule

__all__ = ["main", "stale_cache"]


def stale_cache() -> Path | None:
    """The `dropin.cache` next to misp-dns's plugin when Twisted would rewrite it (missing,
    or not newer than a plugin file of its folder), else None.

    Plugin files are grouped by folder as Twisted does: a module shadowed by one of the same
    name earlier on the path does not count.
    """
    folders: dict[Path, list[Path]] = {}
    ours = None
    for module in getModule(plugins.__name__).iterModules():
        path = Path(module.filePath.path)
        folders.setdefault(path.parent, []).append(path)
        if module.name.rsplit(".", 1)[-1] == "misp_dns_plugin":
            ours = path.parent
    if ours is None:
        return None
    cache = ours / "dropin.cache"
    try:
        cached = cache.stat().st_mtime
    except OSError:
        return cache
    return cache if any(path.stat().st_mtime >= cached for path in folders[ours]) else None


def main() -> None:
    """Load every plugin once, which rewrites the dropin caches that are out of date."""
    names = [getattr(plugin, "tapname", "") for plugin in getPlugins(IPlugin, plugins)]
    if "misp-dns" not in names:
        raise SystemExit("the misp-dns twistd plugin was not found after install")
    stale = stale_cache()
    if stale is not None:
        raise SystemExit(
            f"cannot write the twistd plugin cache {stale}: run this as the user who"
            " installed misp-dns (root for a system-wide install)"
        )


if __name__ == "__main__":
    main()
