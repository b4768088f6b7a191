"""Configuration files of the peers the benchmark compares misp-dns with (issue 17, item 6).

Each peer blocks the same indicators as misp-dns (the name and every name below it answer
NXDOMAIN) and forwards everything else to the bench's Unbound, caching its answers as
misp-dns does; each listens on one loopback port chosen by the bench, stays in the
foreground, and has no chroot, no privilege drop, no pid file and no control socket
elsewhere than its own folder:

- PowerDNS Recursor: `recursor.conf` (one worker thread, forwarding `.` to Unbound, DNSSEC
  off, no root priming beyond a hint no query may reach) and a Lua file loading the
  indicators as an RPZ zone file (`write_rpz_zone`: `name CNAME .` and `*.name CNAME .`,
  the RPZ NXDOMAIN action);
- dnsmasq (Pi-hole's engine): one file of options with an `address=/name/` line per
  indicator (`address=` without an address answers NXDOMAIN for the name and below).

Nothing here starts a program; `peers.py` does. `read_dnsmasq_conf` reads a dnsmasq file
back (the options this module writes), for the tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "RPZ_ORIGIN",
    "read_dnsmasq_conf",
    "write_dnsmasq_conf",
    "write_recursor_conf",
    "write_rpz_zone",
]

RPZ_ORIGIN = "rpz.bench."
#: A root hint no query can reach: PowerDNS Recursor never sends to 192.0.2.0/24
#: (its default `dont-query`), so priming the root stays on this machine.
_UNREACHABLE_ROOT = "192.0.2.53"


def write_rpz_zone(path: Path, names: Iterable[str], origin: str = RPZ_ORIGIN) -> Path:
    """An RPZ zone file answering NXDOMAIN for each of `names` and every name below it."""
    with path.open("w") as zone:
        zone.write(f"$ORIGIN {origin}\n$TTL 300\n")
        zone.write("@ IN SOA localhost. hostmaster.localhost. 1 3600 600 86400 300\n")
        zone.write("@ IN NS localhost.\n")
        for name in names:
            zone.write(f"{name} CNAME .\n*.{name} CNAME .\n")
    return path


def write_recursor_conf(
    directory: Path, port: int, upstream: tuple[str, int], zone: Path, cache_entries: int
) -> Path:
    """`recursor.conf` (and its Lua file and root hints) in `directory`: one thread on
    127.0.0.1:`port`, forwarding everything to `upstream`, blocking by the RPZ `zone`.
    Returns the folder to pass as `--config-dir`."""
    hints = directory / "root.hints"
    hints.write_text(f". 3600000 NS a.root.bench.\na.root.bench. 3600000 A {_UNREACHABLE_ROOT}\n")
    lua = directory / "recursor.lua"
    lua.write_text(f'rpzFile("{zone}", {{policyName="bench", defpol=Policy.NXDOMAIN}})\n')
    host, upstream_port = upstream
    settings = {
        "local-address": "127.0.0.1",
        "local-port": str(port),
        "allow-from": "127.0.0.0/8",
        "daemon": "no",
        "threads": "1",
        "pdns-distributes-queries": "no",
        "socket-dir": str(directory),
        "write-pid": "no",
        "disable-syslog": "yes",
        "loglevel": "4",
        "quiet": "yes",
        "dnssec": "off",
        "security-poll-suffix": "",
        "hint-file": str(hints),
        "forward-zones-recurse": f".={host}:{upstream_port}",
        "lua-config-file": str(lua),
        "max-cache-entries": str(cache_entries),
        "max-packetcache-entries": str(cache_entries),
    }
    (directory / "recursor.conf").write_text(
        "".join(f"{key}={value}\n" for key, value in settings.items())
    )
    return directory


def write_dnsmasq_conf(
    path: Path, port: int, upstream: tuple[str, int], names: Iterable[str], cache_size: int
) -> Path:
    """A dnsmasq options file: 127.0.0.1:`port` only, forwarding to `upstream` alone
    (no /etc/resolv.conf, no /etc/hosts), caching `cache_size` names, and NXDOMAIN for
    each of `names` and below."""
    host, upstream_port = upstream
    head = [
        f"port={port}",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        f"server={host}#{upstream_port}",
        f"cache-size={cache_size}",
        "user=root",
        "group=root",
        "pid-file=",
    ]
    with path.open("w") as conf:
        conf.write("".join(f"{line}\n" for line in head))
        for name in names:
            conf.write(f"address=/{name}/\n")
    return path


def read_dnsmasq_conf(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """A dnsmasq options file as (option -> its values, in order; NXDOMAIN domains)."""
    options: dict[str, list[str]] = {}
    blocked: list[str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if key == "address":
            parts = value.split("/")
            # /d1/d2/.../ followed by an address, or by nothing for NXDOMAIN.
            if len(parts) < 3 or parts[0] != "" or parts[-1] != "":
                raise ValueError(f"not an NXDOMAIN address= line: {line!r}")
            blocked += parts[1:-1]
            continue
        options.setdefault(key, []).append(value)
    return options, blocked
