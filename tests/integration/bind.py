"""A real BIND 9 (`named`) on loopback: a recursive resolver following an RPZ primary.

`BindProcess` runs `named -g -c <conf>` (foreground, logging to its stderr, as whoever runs
the tests, no control channel) and waits until it answers. `rpz_secondary_config` writes a
configuration where BIND forwards every name to one upstream (never the internet) and
applies one response policy zone, a secondary of a primary on loopback, transferred with
a TSIG key (or unsigned) and kept up to date by NOTIFY and IXFR.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dns.message

from .daemon import DnsDaemon
from .wire import Address

__all__ = ["BindProcess", "rpz_secondary_config"]


def rpz_secondary_config(
    directory: Path,
    port: int,
    upstream: Address,
    zone: str,
    primary: Address,
    key: tuple[str, bytes] | None = None,
) -> Path:
    """Write named.conf for a forwarding resolver on 127.0.0.1:`port` with `zone` as its
    response policy, a secondary of `primary` (signed with `key`, a name and secret)."""
    up_host, up_port = upstream
    primary_host, primary_port = primary
    key_clause = ""
    key_use = ""
    if key is not None:
        name, secret = key
        key_clause = (
            f'key "{name}" {{\n    algorithm hmac-sha256;\n'
            f'    secret "{base64.b64encode(secret).decode()}";\n}};\n'
        )
        key_use = f" key {name}"
    conf = directory / "named.conf"
    conf.write_text(
        f"""{key_clause}
options {{
    directory "{directory}";
    pid-file none;
    session-keyfile none;
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-query {{ 127.0.0.0/8; }};
    allow-recursion {{ 127.0.0.0/8; }};
    forwarders {{ {up_host} port {up_port}; }};
    forward only;
    dnssec-validation no;
    notify no;
    minimal-responses yes;
    response-policy {{ zone "{zone}"; }} qname-wait-recurse no;
}};
controls {{ }};
logging {{
    channel out {{ stderr; severity info; print-time yes; print-category yes; }};
    category default {{ out; }};
    category xfer-in {{ out; }};
    category notify {{ out; }};
    category rpz {{ out; }};
    category lame-servers {{ null; }};
}};
zone "{zone}" {{
    type secondary;
    primaries port {primary_port} {{ {primary_host}{key_use}; }};
    file "{directory}/rpz.db";
    allow-notify {{ {primary_host}; }};
    request-ixfr yes;
}};
"""
    )
    return conf


class BindProcess(DnsDaemon):
    """`named -g -c conf` as a child process, ready once it answers the A query of `probe`."""

    name = "named"

    def command(self) -> list[str]:
        """Foreground, logging to stderr."""
        return [self.binary, "-g", "-c", str(self.conf)]

    def ready(self, response: dns.message.Message) -> bool:
        """Any answer: BIND is listening (the zone is checked by the test)."""
        return response.rcode() in (0, 3)
