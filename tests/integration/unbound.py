"""A real Unbound on loopback serving local data only: the upstream of the end-to-end tests.

`UnboundProcess` runs `unbound -d -c <conf>` (one thread, no chroot, no privilege drop, no
remote control, logging to its stderr) and waits until it answers. `integration_config` writes
the configuration the integration tests use; its names (constants below) cover every answer
kind a forwarder has to relay:

- `test.` is an authoritative zone (an Unbound `auth-zone` from a zone file, which also
  follows CNAMEs inside the zone): A/AAAA names, a NODATA name, NXDOMAIN with the zone's SOA,
  RRsets larger than 512 and 1232 bytes, and CNAMEs in front of them;
- `refused.test.` answers REFUSED; `servfail.invalid.` is forwarded to a loopback address
  that Unbound will not query, so it answers SERVFAIL at once;
- anything else is REFUSED, so Unbound never tries to reach the internet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dns.message
import dns.rdatatype

from .daemon import DnsDaemon
from .wire import Address

__all__ = [
    "BIG_TXT",
    "CHAIN",
    "CHAIN_MID",
    "MANY",
    "MANY_COUNT",
    "MID",
    "MID_COUNT",
    "NODATA",
    "NXDOMAIN",
    "REFUSED",
    "SERVFAIL",
    "SOA_SERIAL",
    "TTL_NAME",
    "WWW",
    "WWW_A",
    "WWW_AAAA",
    "ZONE",
    "ZONE_TTL",
    "UnboundProcess",
    "base_server_lines",
    "integration_config",
    "stub_resolver_config",
    "write_config",
]

ZONE = "test."
ZONE_TTL = 3600
SOA_SERIAL = 2024010101
SOA_MINIMUM = 300
WWW = "www.test."
WWW_A = "192.0.2.1"
WWW_AAAA = "2001:db8::1"
NODATA = "nodata.test."  # has an A record only
NXDOMAIN = "nx.test."  # any name absent from the zone
TTL_NAME = "ttl.test."  # queried only by the TTL countdown test
MANY = "many.test."  # about 1.6 kB of A records: over 1232 bytes
MANY_COUNT = 100
MID = "mid.test."  # about 670 bytes of A records: over 512, under 1232
MID_COUNT = 40
BIG_TXT = "bigtxt.test."  # about 1.7 kB of TXT
CHAIN = "chain.test."  # CNAME to many.test.
CHAIN_MID = "chainmid.test."  # CNAME to mid.test.
REFUSED = "x.refused.test."
SERVFAIL = "x.servfail.invalid."


def _zone_file() -> str:
    lines = [
        f"$ORIGIN {ZONE}",
        f"$TTL {ZONE_TTL}",
        f"@ IN SOA ns.test. hostmaster.test. {SOA_SERIAL} 3600 600 86400 {SOA_MINIMUM}",
        "@ IN NS ns.test.",
        "ns IN A 192.0.2.53",
        f"www IN A {WWW_A}",
        f"www IN AAAA {WWW_AAAA}",
        "nodata IN A 192.0.2.2",
        "ttl IN A 192.0.2.3",
        "chain IN CNAME many.test.",
        "chainmid IN CNAME mid.test.",
    ]
    lines += [f"many IN A 198.51.100.{i}" for i in range(1, MANY_COUNT + 1)]
    lines += [f"mid IN A 203.0.113.{i}" for i in range(1, MID_COUNT + 1)]
    lines += [f'bigtxt IN TXT "{i:02d}{"x" * 198}"' for i in range(8)]
    return "\n".join(lines) + "\n"


def base_server_lines(directory: Path, port: int, threads: int = 1) -> list[str]:
    """`server:` options for a private, foreground, loopback-only Unbound.

    Everything not given as local data (or in a more specific zone) is REFUSED, so Unbound
    never tries to reach the internet; local-data under "." is still answered.
    """
    return [
        "interface: 127.0.0.1",
        f"port: {port}",
        "do-ip4: yes",
        "do-ip6: no",
        "do-udp: yes",
        "do-tcp: yes",
        f"num-threads: {threads}",
        'chroot: ""',
        'username: ""',
        f'directory: "{directory}"',
        'pidfile: ""',
        "use-syslog: no",
        'logfile: ""',
        "verbosity: 1",
        "so-reuseport: no",
        "do-not-query-localhost: yes",
        "access-control: 127.0.0.0/8 allow",
        'module-config: "iterator"',
        'local-zone: "." refuse',
    ]


def _render(server: Sequence[str], clauses: Sequence[str]) -> str:
    body = "server:\n" + "".join(f"    {line}\n" for line in server)
    body += "".join(clauses)
    return body + "remote-control:\n    control-enable: no\n"


def integration_config(directory: Path, port: int) -> Path:
    """Write the integration tests' Unbound configuration and zone file; return the conf."""
    zone = directory / "test.zone"
    zone.write_text(_zone_file())
    server = [
        *base_server_lines(directory, port),
        'local-zone: "test." transparent',
        'local-zone: "refused.test." refuse',
        'local-zone: "servfail.invalid." transparent',
    ]
    clauses = [
        f'auth-zone:\n    name: "test."\n    zonefile: "{zone}"\n'
        "    for-downstream: yes\n    for-upstream: no\n",
        # Unbound never queries loopback (do-not-query-localhost), so this fails at once.
        'forward-zone:\n    name: "servfail.invalid."\n    forward-addr: 127.0.0.1@9\n',
    ]
    conf = directory / "unbound.conf"
    conf.write_text(_render(server, clauses))
    return conf


def stub_resolver_config(
    directory: Path, port: int, stubs: Sequence[str], upstream: Address, trust_anchor: Path
) -> Path:
    """Write the configuration of a validating resolver that asks `upstream` (an
    authoritative server on loopback) for the zones `stubs`, with `trust_anchor` (a DNSKEY
    file) as its only anchor; return the conf.

    The root is a stub to the same server, which refuses it, so a name outside `stubs`
    never sends a packet past loopback (a name delegated away inside them would: do not
    ask for one). Extended DNS Errors are on.
    """
    host, upstream_port = upstream
    server = [
        line
        for line in base_server_lines(directory, port)
        if not line.startswith(("do-not-query-localhost", "module-config"))
    ]
    server += [
        "do-not-query-localhost: no",
        'module-config: "validator iterator"',
        f'trust-anchor-file: "{trust_anchor}"',
        "ede: yes",
        "val-log-level: 2",
    ]
    server += [f'local-zone: "{zone}" transparent' for zone in stubs]
    clauses = [
        f'stub-zone:\n    name: "{zone}"\n    stub-addr: {host}@{upstream_port}\n'
        for zone in (*stubs, ".")
    ]
    return write_config(directory, server, clauses)


def write_config(directory: Path, server: Sequence[str], clauses: Sequence[str] = ()) -> Path:
    """Write an Unbound configuration from `server:` lines and extra clauses."""
    conf = directory / "unbound.conf"
    conf.write_text(_render(server, clauses))
    return conf


class UnboundProcess(DnsDaemon):
    """`unbound -d -c conf` as a child process, ready once it answers the A query of
    `probe` (see `DnsDaemon`)."""

    name = "unbound"

    def __init__(self, binary: str, conf: Path, address: Address, probe: str = WWW) -> None:
        super().__init__(binary, conf, address, probe)

    def ready(self, response: dns.message.Message) -> bool:
        """NOERROR with an A record."""
        return response.rcode() == 0 and any(r.rdtype == dns.rdatatype.A for r in response.answer)
