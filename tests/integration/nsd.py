"""A real NSD on loopback, authoritative for the zone files it is given.

`write_nsd_config` writes a configuration for a set of zones: one server process, no
chroot, no privilege drop, no remote control, no database, and response rate limiting off,
so that a test's burst of queries is never slipped or dropped. `NsdProcess` runs
`nsd -d -c <conf>` and waits until it answers the SOA query of a zone with AA set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode

from .daemon import DnsDaemon

__all__ = ["NsdProcess", "write_nsd_config"]


def write_nsd_config(directory: Path, port: int, zones: Mapping[str, Path]) -> Path:
    """Write `nsd.conf` in `directory` serving `zones` (origin -> zone file) on
    127.0.0.1:`port`; return its path."""
    server = [
        "ip-address: 127.0.0.1",
        f"port: {port}",
        "do-ip6: no",
        "server-count: 1",
        "reuseport: no",
        'username: ""',
        'chroot: ""',
        f'zonesdir: "{directory}"',
        'database: ""',
        f'zonelistfile: "{directory / "zone.list"}"',
        f'xfrdfile: "{directory / "xfrd.state"}"',
        f'xfrdir: "{directory}"',
        'pidfile: ""',
        "verbosity: 1",
        "hide-version: yes",
        "zonefiles-write: 0",
        # Rate limiting would slip (TC) or drop some of a test's back-to-back queries.
        "rrl-ratelimit: 0",
        "rrl-whitelist-ratelimit: 0",
    ]
    lines = ["server:", *(f"    {line}" for line in server)]
    lines += ["remote-control:", "    control-enable: no"]
    for origin, path in zones.items():
        lines += ["zone:", f'    name: "{origin}"', f'    zonefile: "{path}"']
    conf = directory / "nsd.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class NsdProcess(DnsDaemon):
    """`nsd -d -c conf` as a child process, ready once it answers the SOA query of `probe`
    with AA set (see `DnsDaemon`)."""

    name = "nsd"
    probe_type = "SOA"

    def ready(self, response: dns.message.Message) -> bool:
        """NOERROR, authoritative."""
        return response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AA)
