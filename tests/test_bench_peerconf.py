"""The benchmark's peer configurations (bench/peerconf.py) block exactly the indicators given.

The RPZ zone PowerDNS Recursor loads is read back with dnspython, the dnsmasq options file
with the module's own reader, and PowerDNS Recursor's options as the key=value lines they
are: the peers must hold the same names as misp-dns, forward the rest to the bench's
Unbound, and stay on their loopback port in the foreground.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import dns.name
import dns.rdatatype
import dns.zone
import pytest

INDICATORS = ["evil.example", "login-bank7.top", "x1y2z3.dyndns.example", "a.b.c.example"]
UPSTREAM = ("127.0.0.1", 53530)


def _peerconf() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "peerconf.py"
    spec = importlib.util.spec_from_file_location("bench_peerconf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


peerconf = _peerconf()


def _options(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_rpz_zone_answers_nxdomain_for_each_indicator_and_below(tmp_path: Path) -> None:
    """dnspython reads the zone; each indicator and its wildcard are `CNAME .` (the RPZ
    NXDOMAIN action), and there is no other trigger."""
    path = peerconf.write_rpz_zone(tmp_path / "bench.rpz", INDICATORS)
    zone = dns.zone.from_file(str(path), relativize=False)
    origin = dns.name.from_text(peerconf.RPZ_ORIGIN)
    assert zone.origin == origin
    assert zone.get_rdataset(origin, "SOA") is not None
    triggers = {}
    for name, node in zone.nodes.items():
        if name == origin:
            continue
        (rdataset,) = node.rdatasets
        assert rdataset.rdtype == dns.rdatatype.CNAME
        triggers[name.relativize(origin).to_text()] = [r.target for r in rdataset]
    expected = {n for name in INDICATORS for n in (name, f"*.{name}")}
    assert set(triggers) == expected
    assert all(targets == [dns.name.root] for targets in triggers.values())


def test_recursor_conf_forwards_to_unbound_and_loads_the_zone(tmp_path: Path) -> None:
    """One thread on the chosen loopback port, in the foreground, forwarding everything to
    the upstream with recursion, validation off, the RPZ file loaded by its Lua file."""
    zone = peerconf.write_rpz_zone(tmp_path / "bench.rpz", INDICATORS)
    folder = peerconf.write_recursor_conf(tmp_path, 40001, UPSTREAM, zone, 1000)
    options = _options(folder / "recursor.conf")
    assert options["local-address"] == "127.0.0.1"
    assert options["local-port"] == "40001"
    assert options["daemon"] == "no"
    assert options["threads"] == "1"
    assert options["dnssec"] == "off"
    assert options["forward-zones-recurse"] == ".=127.0.0.1:53530"
    assert not {"setuid", "setgid", "chroot"} & set(options)
    lua = Path(options["lua-config-file"]).read_text()
    assert f'rpzFile("{zone}"' in lua
    hints = Path(options["hint-file"]).read_text()
    assert "192.0.2." in hints  # never queried: inside the recursor's default dont-query


def test_dnsmasq_conf_blocks_each_indicator_and_forwards_only_to_unbound(
    tmp_path: Path,
) -> None:
    """Read back, the file holds one NXDOMAIN `address=` per indicator, the chosen port on
    127.0.0.1, and the upstream as its only server (no resolv.conf, no hosts file)."""
    path = peerconf.write_dnsmasq_conf(tmp_path / "dnsmasq.conf", 40002, UPSTREAM, INDICATORS, 500)
    options, blocked = peerconf.read_dnsmasq_conf(path)
    assert blocked == INDICATORS
    assert options["port"] == ["40002"]
    assert options["listen-address"] == ["127.0.0.1"]
    assert options["server"] == ["127.0.0.1#53530"]
    assert options["cache-size"] == ["500"]
    assert {"no-resolv", "no-hosts", "bind-interfaces"} <= set(options)


def test_dnsmasq_reader_refuses_an_address_line_that_does_not_block(tmp_path: Path) -> None:
    """An `address=/name/IP` line answers with an address, not NXDOMAIN: the reader says
    so rather than counting the name as blocked."""
    path = tmp_path / "dnsmasq.conf"
    path.write_text("address=/evil.example/0.0.0.0\n")
    with pytest.raises(ValueError, match="not an NXDOMAIN"):
        peerconf.read_dnsmasq_conf(path)
