"""The `rpz` policy end to end: a twistd-started misp-dns follows a real BIND 9 primary.

BIND serves an RPZ zone on loopback, transfers allowed only with the TSIG key `fleet`
(made by BIND's own `tsig-keygen`), and NOTIFYs misp-dns's listen address at once after
each change. misp-dns, with `type = "rpz"`, `primary` and `tsig_key`, forwards to the test
Unbound. The zone's SOA refresh is an hour, so only the NOTIFY (then an IXFR) can explain
misp-dns catching up with a change within 5 s.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from conftest import SHARED_DATA, free_port, require_tool

from .bind_primary import BindProcess, nsupdate, write_named_conf
from .misp_stand_in import no_server_tracebacks, watch  # noqa: F401  (an autouse fixture)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import WWW, WWW_A, UnboundProcess
from .wire import ask_tcp, ask_udp, make_query, udp_exchange

RPZ_ZONE = "rpz.misp-dns.example"
#: How soon a change on the primary must be served (the issue's bound).
FOLLOW_WITHIN = 5.0

ZONE_TEXT = f"""$TTL 300
@ SOA ns.{RPZ_ZONE}. hostmaster.{RPZ_ZONE}. ( 1 3600 600 86400 60 )
  NS localhost.
www.test CNAME .
*.wild.test CNAME .
nodrop.test CNAME rpz-drop.
local.test A 192.0.2.99
garden.test CNAME www.test.
nodata.test CNAME *.
"""


def report(trigger: str) -> str:
    return f"source=rpz;zone={RPZ_ZONE};domain={trigger}"


def ede_texts(response: dns.message.Message) -> list[str]:
    return [o.text for o in response.options if o.otype == dns.edns.EDE and int(o.code) == 15]


def is_blocked(process: MispDnsProcess, name: str, trigger: str) -> bool:
    """NXDOMAIN with the SOA owned by `name` and EDE 15 naming the trigger."""
    response = ask_udp(make_query(name, "A", edns=0), process.address)
    return (
        response.rcode() == dns.rcode.NXDOMAIN
        and [rrset.name.to_text() for rrset in response.authority] == [name]
        and ede_texts(response) == [report(trigger)]
    )


def resolves_www(process: MispDnsProcess) -> bool:
    """www.test comes back as Unbound serves it, with no sign of a block."""
    response = ask_udp(make_query(WWW, "A", edns=0), process.address)
    addresses = [r.address for rrset in response.answer for r in rrset]
    plain = response.rcode() == dns.rcode.NOERROR and not ede_texts(response)
    return plain and addresses == [WWW_A]


def make_key(directory: Path, name: str = "fleet") -> Path:
    """A TSIG key file as BIND's tsig-keygen prints it."""
    keygen = require_tool("tsig-keygen")
    text = subprocess.run(
        [keygen, "-a", "hmac-sha256", name], check=True, capture_output=True, text=True
    ).stdout
    path = directory / f"{name}.key"
    path.write_text(text)
    path.chmod(0o600)
    return path


def write_misp_dns_config(
    directory: Path, port: int, upstream: tuple[str, int], primary: tuple[str, int], key: Path
) -> Path:
    config = directory / "misp-dns.toml"
    config.write_text(
        f"""[server]
listen = ["127.0.0.1:{port}"]
upstreams = ["{upstream[0]}:{upstream[1]}"]
server_name = "dns.corp.example"
state_dir = "{directory / "state"}"
upstream_timeout = 3

[[tsig_key]]
name = "fleet"
algorithm = "hmac-sha256"
secret_file = "{key}"

[[policy]]
type = "rpz"
zone = "{RPZ_ZONE}"
primary = "{primary[0]}:{primary[1]}"
tsig_key = "fleet"
"""
    )
    return config


class Setup:
    """BIND primary and misp-dns secondary, in one folder."""

    def __init__(self, directory: Path, unbound: UnboundProcess) -> None:
        self.directory = directory
        self.bind_port = free_port()
        self.port = free_port()
        self.named = require_tool("named")
        self.nsupdate = require_tool("nsupdate")
        self.zone_file = directory / "rpz.zone"
        self.zone_file.write_text(ZONE_TEXT)
        self.key = make_key(directory)
        conf = write_named_conf(
            directory,
            self.bind_port,
            RPZ_ZONE,
            self.zone_file,
            notify_to=("127.0.0.1", self.port),
            key_file=self.key,
        )
        self.bind = BindProcess(self.named, conf, ("127.0.0.1", self.bind_port), RPZ_ZONE + ".")
        misp_dir = directory / "misp-dns"
        misp_dir.mkdir()
        self.config = write_misp_dns_config(
            misp_dir, self.port, unbound.address, ("127.0.0.1", self.bind_port), self.key
        )
        self.misp_dns = MispDnsProcess(self.config, [("127.0.0.1", self.port)], misp_dir)

    def update(self, *commands: str) -> None:
        nsupdate(self.nsupdate, ("127.0.0.1", self.bind_port), RPZ_ZONE, list(commands))

    def stop(self) -> None:
        self.misp_dns.stop()
        self.bind.stop()


@pytest.fixture
def setup(tmp_path: Path, unbound: UnboundProcess) -> Iterator[Setup]:
    both = Setup(tmp_path, unbound)
    both.bind.start()
    both.misp_dns.start(probe=WWW)
    watch(both.misp_dns)
    yield both
    both.stop()


def test_misp_dns_follows_a_bind_primary_and_its_changes(setup: Setup) -> None:
    """misp-dns applies BIND's zone (signed AXFR), then a change within 5 s (NOTIFY, IXFR)."""
    process = setup.misp_dns
    wait_until(lambda: is_blocked(process, WWW, "www.test"), 10, what="the zone applied")
    assert is_blocked(process, "a.b.wild.test.", "*.wild.test")
    local = ask_tcp(make_query("local.test.", "A", edns=0), process.address)
    assert [r.address for rrset in local.answer for r in rrset] == ["192.0.2.99"]
    garden = ask_udp(make_query("garden.test.", "A", edns=0), process.address)
    assert garden.answer[0].rdtype == dns.rdatatype.CNAME
    assert garden.answer[0][0].target.to_text() == WWW  # the walled garden, here www.test
    assert [r.address for r in garden.answer[1]] == [WWW_A]
    nodata = ask_udp(make_query("nodata.test.", "A", edns=0), process.address)
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
    dropped = make_query("nodrop.test.", "A", edns=0).to_wire()
    assert udp_exchange(dropped, process.address, timeout=0.5) is None
    changed = time.monotonic()
    setup.update(
        f"update delete www.test.{RPZ_ZONE}. CNAME",
        f"update add mid.test.{RPZ_ZONE}. 300 CNAME .",
    )
    wait_until(
        lambda: resolves_www(process) and is_blocked(process, "mid.test.", "mid.test"),
        FOLLOW_WITHIN,
        what="the change followed",
    )
    took = time.monotonic() - changed
    log = process.log_text()
    assert f"rpz zone {RPZ_ZONE}: serial 1 from 127.0.0.1:{setup.bind_port} by AXFR" in log, log
    assert f"rpz zone {RPZ_ZONE}: serial 2 from 127.0.0.1:{setup.bind_port} by IXFR" in log, log
    assert took < FOLLOW_WITHIN


def test_the_saved_zone_is_served_after_a_restart_with_bind_down(setup: Setup) -> None:
    """misp-dns restarted while BIND is stopped blocks from the copy in its state folder."""
    process = setup.misp_dns
    wait_until(lambda: is_blocked(process, WWW, "www.test"), 10, what="the zone applied")
    process.stop()
    setup.bind.stop()
    process.start(probe=WWW)
    assert is_blocked(process, WWW, "www.test")
    assert is_blocked(process, "x.wild.test.", "*.wild.test")
    wait_until(
        lambda: "update from 127.0.0.1" in process.log_text(), 10, what="a failed update logged"
    )
    assert "keeping serial 1" in process.log_text()


def test_a_wrong_tsig_key_gets_no_zone(tmp_path: Path, unbound: UnboundProcess) -> None:
    """With a key BIND does not know the transfer is refused: nothing blocked, one clear line."""
    both = Setup(tmp_path, unbound)
    other = make_key(tmp_path / "misp-dns", "fleet")  # same name, another secret
    both.config.write_text(both.config.read_text().replace(str(both.key), str(other)))
    both.bind.start()
    try:
        both.misp_dns.start(probe=WWW)
        watch(both.misp_dns)
        wait_until(
            lambda: "update from 127.0.0.1" in both.misp_dns.log_text(), 10, what="the failure"
        )
        assert resolves_www(both.misp_dns)
        log = both.misp_dns.log_text()
        line = next(x for x in log.splitlines() if "update from 127.0.0.1" in x)
        assert "no copy yet" in line and ("NOTAUTH" in line or "TSIG" in line), line
        assert other.read_text().split('"')[3] not in log
    finally:
        both.stop()


def test_a_published_rpz_file_is_read_with_url(tmp_path: Path, unbound: UnboundProcess) -> None:
    """`url = "file://..."` reads a real published RPZ (HaGeZi's most abused TLDs)."""
    source = SHARED_DATA / "rpz" / "hagezi-spam-tlds-rpz.txt"
    assert source.exists(), source
    port = free_port()
    config = tmp_path / "misp-dns.toml"
    config.write_text(
        f"""[server]
listen = ["127.0.0.1:{port}"]
upstreams = ["{unbound.address[0]}:{unbound.address[1]}"]
server_name = "dns.corp.example"
state_dir = "{tmp_path / "state"}"

[[policy]]
type = "rpz"
zone = "rpz.hagezi"
url = "file://{source}"
"""
    )
    process = MispDnsProcess(config, [("127.0.0.1", port)], tmp_path)
    process.start(probe=WWW)
    watch(process)
    try:
        trigger = "source=rpz;zone=rpz.hagezi;domain=*.bid"
        wait_until(
            lambda: (
                ede_texts(ask_udp(make_query("x.bid.", "A", edns=0), process.address)) == [trigger]
            ),
            10,
            what="the file applied",
        )
        assert resolves_www(process)
        assert "rpz zone rpz.hagezi: serial 1772016660 from its zone file (126 triggers)" in (
            process.log_text()
        )
    finally:
        process.stop()
