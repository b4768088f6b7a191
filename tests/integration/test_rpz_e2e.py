"""The RPZ primary end to end: a real BIND 9 and a real Unbound follow misp-dns's zone.

misp-dns (under twistd) takes its indicators from the MISP stand-in, refreshing every two
seconds, and serves them as `rpz.misp-dns.example`. Two primaries run, fed alike: one
requires TSIG (`tsig_keys = ["fleet"]`) and has BIND and another misp-dns (an `rpz` policy)
as its secondaries, the other serves unsigned transfers to Unbound (Unbound 1.17 cannot
sign a transfer). BIND and Unbound are
recursive resolvers forwarding to the harness's Unbound (the `test.` zone) with the zone
as their response policy.

What a user of the fleet sees is checked: each secondary blocks exactly the names misp-dns
blocks (by name, by a name's subdomain, through a CNAME, and by a listed address in the
answer), and an indicator deleted in MISP stops being blocked by the secondaries within
5 s of misp-dns's own refresh, by NOTIFY and then an IXFR (both primaries log one).
A transfer without the key, or from a client outside allow_transfer, is refused.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.xfr
import dns.zone
import pytest
from conftest import free_port, require_tool

from .bind import BindProcess, rpz_secondary_config
from .misp_stand_in import (
    MispStandIn,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    watch,
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import UnboundProcess, base_server_lines, write_config
from .wire import Address, ask_tcp, ask_udp, make_query, tcp_exchange

ZONE = "rpz.misp-dns.example"
KEY_NAME = "fleet"
SECRET = b"misp-dns fleet key, 32 bytes ok!"
API_KEY = "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7s"
ATTRIBUTES = [
    {"value": "nodata.test", "type": "domain"},  # exists upstream with an A record
    {"value": "ttl.test", "type": "hostname"},
    {"value": "many.test", "type": "domain"},  # chain.test is a CNAME to it
    {"value": "203.0.113.5", "type": "ip-dst"},  # one of mid.test's addresses
]
#: Names whose answers are compared, blocked or not; the harness's `test.` zone holds them.
NAMES = [
    "www.test.",
    "nodata.test.",
    "sub.nodata.test.",
    "ttl.test.",
    "many.test.",
    "chain.test.",
    "mid.test.",
    "chainmid.test.",
]
#: Unbound 1.17 applies a qname trigger to a CNAME's target only while it resolves the chain:
#: once the chain is cached, `chain.test` (CNAME to the listed many.test) is answered in
#: full. The same Unbound reading the same zone from a file does it too, so this is
#: Unbound's, not the transfer's; its answers are compared without that name.
UNBOUND_NAMES = [name for name in NAMES if name != "chain.test."]
#: misp-dns's own refresh, and the time the secondaries have after it.
REFRESH = "2s"
FOLLOW_WITHIN = 5.0


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


def _table(header: str, values: dict[str, Any]) -> list[str]:
    return [header, *(f"{key} = {_toml(value)}" for key, value in values.items()), ""]


def start_primary(
    workdir: Path,
    stand_in: MispStandIn,
    upstream: Address,
    *,
    signed: bool,
    notify: list[Address],
) -> MispDnsProcess:
    """misp-dns with a misp policy on `stand_in` and `[rpz]`; started."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    secret_file = workdir / "fleet.key"
    secret_file.write_text(base64.b64encode(SECRET).decode() + "\n")
    policy = misp_policy(
        stand_in.url,
        key_file(workdir, API_KEY),
        update_interval=REFRESH,
        block_response_ips=True,
    )
    lines = _table(
        "[server]",
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"{upstream[0]}:{upstream[1]}"],
            "server_name": "ns.misp-dns.example",
            "state_dir": str(workdir / "state"),
        },
    )
    lines += _table(
        "[[policy]]", {"type": "misp"} | {k: v for k, v in policy.items() if k != "type"}
    )
    lines += _table(
        "[[tsig_key]]",
        {"name": KEY_NAME, "algorithm": "hmac-sha256", "secret_file": str(secret_file)},
    )
    lines += _table(
        "[rpz]",
        {
            "zone": ZONE,
            "allow_transfer": ["127.0.0.1/32"],
            "tsig_keys": [KEY_NAME] if signed else [],
            "notify": [f"{host}:{p}" for host, p in notify],
        },
    )
    config = workdir / "misp-dns.toml"
    config.write_text("\n".join(lines))
    process = MispDnsProcess(config, [("127.0.0.1", port)], workdir)
    process.start()
    return watch(process)


def unbound_secondary_config(
    directory: Path, port: int, upstream: Address, primary: Address
) -> Path:
    """An Unbound forwarding to `upstream`, with the zone as RPZ from `primary`."""
    server = [
        line
        for line in base_server_lines(directory, port)
        if not line.startswith(("do-not-query-localhost", "module-config", "local-zone"))
    ]
    # test. is a special-use name Unbound answers NXDOMAIN for unless told otherwise.
    server += [
        "do-not-query-localhost: no",
        'module-config: "respip iterator"',
        'local-zone: "test." transparent',
    ]
    clauses = [
        f'forward-zone:\n    name: "."\n    forward-addr: {upstream[0]}@{upstream[1]}\n',
        f'rpz:\n    name: "{ZONE}"\n    primary: {primary[0]}@{primary[1]}\n'
        f'    allow-notify: {primary[0]}\n    zonefile: "{directory}/rpz.zone"\n'
        "    rpz-log: yes\n",
    ]
    return write_config(directory, server, clauses)


def misp_dns_secondary_config(
    directory: Path, port: int, upstream: Address, primary: Address
) -> Path:
    """A misp-dns whose one policy follows the zone from `primary`, signed with the key."""
    directory.mkdir(parents=True, exist_ok=True)
    secret_file = directory / "fleet.key"
    secret_file.write_text(base64.b64encode(SECRET).decode() + "\n")
    secret_file.chmod(0o600)
    lines = _table(
        "[server]",
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"{upstream[0]}:{upstream[1]}"],
            "server_name": "follower.misp-dns.example",
            "state_dir": str(directory / "state"),
        },
    )
    lines += _table(
        "[[tsig_key]]",
        {"name": KEY_NAME, "algorithm": "hmac-sha256", "secret_file": str(secret_file)},
    )
    lines += _table(
        "[[policy]]",
        {
            "type": "rpz",
            "zone": ZONE,
            "primary": f"{primary[0]}:{primary[1]}",
            "tsig_key": KEY_NAME,
        },
    )
    config = directory / "misp-dns.toml"
    config.write_text("\n".join(lines))
    return config


def outcome(address: Address, name: str) -> tuple[str, tuple[str, ...]]:
    """What a client sees for an A query: the RCODE and the addresses."""
    response = ask_udp(make_query(name, "A"), address)
    addresses = sorted(
        rdata.address
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.A
        for rdata in rrset
    )
    return dns.rcode.to_text(response.rcode()), tuple(addresses)


def blocked(address: Address, name: str) -> bool:
    return outcome(address, name)[0] == "NXDOMAIN"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[dict[str, Any]]:
    """The stand-in, both primaries and both secondaries, each secondary holding the zone."""
    named = require_tool("named")
    unbound_binary = require_tool("unbound")
    root = tmp_path_factory.mktemp("rpz")
    bind_port, unbound_port, follower_port = free_port(), free_port(), free_port()
    bind_address, unbound_address = ("127.0.0.1", bind_port), ("127.0.0.1", unbound_port)
    follower_address = ("127.0.0.1", follower_port)
    (root / "misp").mkdir()
    with MispStandIn(root / "misp", api_key=API_KEY, attributes=ATTRIBUTES) as stand_in:
        signed = start_primary(
            root / "signed",
            stand_in,
            unbound.address,
            signed=True,
            notify=[bind_address, follower_address],
        )
        open_ = start_primary(
            root / "open", stand_in, unbound.address, signed=False, notify=[unbound_address]
        )
        bind_dir = root / "bind"
        bind_dir.mkdir()
        bind = BindProcess(
            named,
            rpz_secondary_config(
                bind_dir, bind_port, unbound.address, ZONE, signed.address, (KEY_NAME, SECRET)
            ),
            bind_address,
            "www.test.",
        )
        unbound_dir = root / "unbound-secondary"
        unbound_dir.mkdir()
        follower = UnboundProcess(
            unbound_binary,
            unbound_secondary_config(unbound_dir, unbound_port, unbound.address, open_.address),
            unbound_address,
        )
        misp_dns_follower = MispDnsProcess(
            misp_dns_secondary_config(
                root / "misp-dns-secondary", follower_port, unbound.address, signed.address
            ),
            [follower_address],
            root / "misp-dns-secondary",
        )
        try:
            for primary in (signed, open_):
                wait_until(
                    lambda p=primary: blocked(p.address, "nodata.test."), 20, 0.1, "first fetch"
                )
            bind.start()
            follower.start()
            misp_dns_follower.start()
            watch(misp_dns_follower)
            for secondary in (bind_address, unbound_address, follower_address):
                wait_until(
                    lambda s=secondary: blocked(s, "nodata.test."), 20, 0.1, "the first transfer"
                )
            yield {
                "stand_in": stand_in,
                "signed": signed,
                "open": open_,
                "bind": bind,
                "unbound": follower,
                "misp-dns": misp_dns_follower,
            }
        finally:
            for process in (misp_dns_follower, follower, bind, open_, signed):
                process.stop()


def answers(address: Address, names: list[str] = NAMES) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {name: outcome(address, name) for name in names}


def without_chain(expected: dict[str, Any]) -> dict[str, Any]:
    return {name: seen for name, seen in expected.items() if name in UNBOUND_NAMES}


def test_secondaries_block_what_misp_dns_blocks(fleet: dict[str, Any]) -> None:
    """BIND and Unbound, following the zone, answer every name as misp-dns does: blocked
    by a domain, its subdomain, a hostname, a CNAME into a domain, a listed address."""
    expected = answers(fleet["signed"].address)
    assert {name for name, seen in expected.items() if seen[0] == "NXDOMAIN"} >= {
        "nodata.test.",
        "ttl.test.",
        "many.test.",
        "chain.test.",
        "mid.test.",
        "chainmid.test.",
    }
    assert expected["www.test."][0] == "NOERROR"
    assert answers(fleet["open"].address) == expected
    assert answers(fleet["bind"].address) == expected
    assert answers(fleet["unbound"].address, UNBOUND_NAMES) == without_chain(expected)
    assert answers(fleet["misp-dns"].address) == expected


def test_transfers_without_key_or_from_outside_are_refused(fleet: dict[str, Any]) -> None:
    """The signed primary refuses an unsigned AXFR and one signed with a wrong secret;
    signed with the key, dnspython gets the zone; both refusals are in its log."""
    primary = fleet["signed"]
    unsigned = dns.message.make_query(ZONE, "AXFR")
    assert ask_tcp(unsigned, primary.address).rcode() == dns.rcode.REFUSED
    wrong = dns.message.make_query(ZONE, "AXFR")
    wrong.use_tsig(dns.tsig.Key(KEY_NAME, base64.b64encode(b"x" * 32).decode()))
    reply = dns.message.from_wire(tcp_exchange(wrong.to_wire(), primary.address), keyring=False)
    assert reply.rcode() == dns.rcode.NOTAUTH
    assert reply.tsig_error == dns.rcode.BADSIG
    zone = dns.zone.Zone(ZONE)
    query, _ = dns.xfr.make_query(
        zone, keyring=dns.tsig.Key(KEY_NAME, base64.b64encode(SECRET).decode())
    )
    dns.query.inbound_xfr(primary.address[0], zone, query=query, port=primary.address[1], timeout=5)
    assert zone.get_node("nodata.test") is not None
    log = primary.log_text(limit=200000)
    assert f"refused AXFR of {ZONE} to 127.0.0.1: not signed (rpz.tsig_keys)" in log
    assert f"refused AXFR of {ZONE} to 127.0.0.1: TSIG BADSIG" in log
    assert base64.b64encode(SECRET).decode() not in log


def test_removed_indicator_unblocked_within_seconds_by_ixfr(fleet: dict[str, Any]) -> None:
    """Deleting an indicator in MISP: once misp-dns's refresh unblocks it, BIND and Unbound
    unblock it within 5 s, after an IXFR from each primary, and still agree on every name."""
    signed, open_ = fleet["signed"], fleet["open"]
    log_starts = {id(p): p.log_size() for p in (signed, open_)}
    fleet["stand_in"].control(delete=["nodata.test"])
    wait_until(lambda: not blocked(signed.address, "nodata.test."), 20, 0.05, "misp-dns's refresh")
    wait_until(lambda: not blocked(open_.address, "nodata.test."), 20, 0.05, "misp-dns's refresh")
    refreshed = time.monotonic()
    for secondary in (fleet["bind"], fleet["unbound"], fleet["misp-dns"]):
        wait_until(
            lambda s=secondary: not blocked(s.address, "nodata.test."),
            max(0.1, refreshed + FOLLOW_WITHIN - time.monotonic()),
            0.05,
            f"{getattr(secondary, 'name', 'misp-dns')} following the removal",
        )
    for primary in (signed, open_):
        text = primary.log_text(log_starts[id(primary)], limit=200000)
        assert "IXFR (delta from serial" in text, text[-3000:]
        assert "acknowledged" in text
    expected = answers(signed.address)
    assert expected["nodata.test."][0] == "NOERROR"
    assert answers(fleet["bind"].address) == expected
    assert answers(fleet["unbound"].address, UNBOUND_NAMES) == without_chain(expected)
    assert answers(fleet["misp-dns"].address) == expected
