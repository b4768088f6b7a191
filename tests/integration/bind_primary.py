"""A real BIND 9 (`named`) on loopback, primary for one RPZ zone (misp-dns is its secondary).

`write_named_conf` writes a configuration for one zone file: no recursion, no rndc, no
privilege drop, one worker thread; transfers allowed only with a TSIG key (or to anyone
when none is given); dynamic updates from loopback (what `nsupdate` sends); and a NOTIFY
to `notify_to` at once (notify-delay 0) after every change. `BindProcess` runs
`named -g -n 1 -c <conf>` and waits until it answers the zone's SOA query with AA set.
`nsupdate` sends a dynamic update with the `nsupdate` program.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode

from .daemon import DnsDaemon

__all__ = ["BindProcess", "nsupdate", "write_named_conf"]


def write_named_conf(
    directory: Path,
    port: int,
    zone: str,
    zone_file: Path,
    *,
    notify_to: tuple[str, int] | None = None,
    key_file: Path | None = None,
    key_name: str = "fleet",
) -> Path:
    """Write `named.conf` in `directory` (see the module docstring); return its path."""
    options = [
        f'directory "{directory}";',
        f"listen-on port {port} {{ 127.0.0.1; }};",
        "listen-on-v6 { none; };",
        f'pid-file "{directory / "named.pid"}";',
        "recursion no;",
        "notify-delay 0;",
        "dnssec-validation no;",
        f"allow-transfer {{ {f'key {key_name};' if key_file else 'any;'} }};",
    ]
    if notify_to is not None:
        options += ["notify explicit;", f"also-notify {{ {notify_to[0]} port {notify_to[1]}; }};"]
    else:
        options.append("notify no;")
    lines = ["options {", *(f"    {line}" for line in options), "};", "controls { };"]
    if key_file is not None:
        lines.append(f'include "{key_file}";')
    lines += [
        f'zone "{zone}" {{',
        "    type primary;",
        f'    file "{zone_file}";',
        "    allow-update { 127.0.0.1; };",
        "};",
    ]
    conf = directory / "named.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class BindProcess(DnsDaemon):
    """`named -g -n 1 -c conf` as a child process, ready once it answers the SOA query of
    `probe` (the zone) with AA set (see `DnsDaemon`)."""

    name = "named"
    probe_type = "SOA"

    def command(self) -> list[str]:
        """Foreground, logging to stderr, one worker thread."""
        return [self.binary, "-g", "-n", "1", "-c", str(self.conf)]

    def ready(self, response: dns.message.Message) -> bool:
        """NOERROR, authoritative."""
        return response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AA)


def nsupdate(binary: str, server: tuple[str, int], zone: str, commands: list[str]) -> None:
    """Send one dynamic update of `zone` to `server` (lines such as "update add ...")."""
    script = [f"server {server[0]} {server[1]}", f"zone {zone}", *commands, "send", ""]
    subprocess.run(
        [binary],
        input="\n".join(script),
        text=True,
        check=True,
        timeout=20,
        capture_output=True,
    )
