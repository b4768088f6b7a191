"""Regenerates Twisted's plugin cache after install, so `twistd` starts without rescanning.

Run as `python -m misp_dns.plugincache`; the Makefile does so after every install.
"""

from twisted import plugins
from twisted.plugin import IPlugin, getPlugins


def main() -> None:
    """Load every plugin once, which rewrites the dropin caches that are out of date."""
    names = [getattr(plugin, "tapname", "") for plugin in getPlugins(IPlugin, plugins)]
    if "misp-dns" not in names:
        raise SystemExit("the misp-dns twistd plugin was not found after install")


if __name__ == "__main__":
    main()
