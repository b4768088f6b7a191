"""Blocking on what the answer says, end to end: CNAME/DNAME chains and response IPs.

A real Unbound serves `deep.test.` (an auth zone): CNAME chains of two and more hops into a
name MISP lists and into names nobody lists, DNAMEs into both, and A/AAAA records inside and
outside listed networks. misp-dns runs under twistd with an allowlist and a `misp` policy
(`block_response_ips = true`) on the MISP stand-in, whose attributes are of every address
type; dig and dnspython ask, and the JSONL query log is read back. The last test changes
MISP between two refreshes and checks that cached answers follow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from conftest import free_port, require_tool

from .dig import run_dig
from .misp_stand_in import (
    MispStandIn,
    blocked_problems,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    watch,
    write_config,
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import UnboundProcess, base_server_lines
from .unbound import write_config as write_unbound_config
from .wire import ask_tcp, ask_udp, make_query

ZONE = "deep.test."
LISTED = "evil.deep.test"
EVENT_ATTRIBUTE = "3f2a8d4e-6b1c-4e7a-9c5d-2b8e1f0a7c6d"
API_KEY = "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7s"

ZONE_FILE = f"""$ORIGIN {ZONE}
$TTL 3600
@ IN SOA ns.deep.test. hostmaster.deep.test. 1 3600 600 86400 300
@ IN NS ns.deep.test.
ns IN A 192.0.2.53
probe IN A 192.0.2.1
; two hops into the listed domain, four hops into it, three hops through names nobody lists
cloak2 IN CNAME hop.deep.test.
hop IN CNAME www.evil.deep.test.
cloak4 IN CNAME m1.deep.test.
m1 IN CNAME m2.deep.test.
m2 IN CNAME m3.deep.test.
m3 IN CNAME host.evil.deep.test.
fine3 IN CNAME f1.deep.test.
f1 IN CNAME f2.deep.test.
f2 IN CNAME good.deep.test.
good IN A 192.0.2.70
allowed-cloak IN CNAME www.evil.deep.test.
www.evil IN A 192.0.2.66
host.evil IN A 192.0.2.67
; DNAMEs: into the listed domain and into one nobody lists
alias IN DNAME evil.deep.test.
goodalias IN DNAME goodzone.deep.test.
www.goodzone IN A 192.0.2.71
; addresses inside and outside the listed networks
listed4 IN A 203.0.113.9
listed6 IN AAAA 2001:db8:bad::9
single IN A 198.51.100.77
dip IN A 192.0.2.99
mixed IN A 192.0.2.72
mixed IN A 203.0.113.200
unlisted IN A 192.0.2.100
unlisted IN AAAA 2001:db8::100
"""

#: The MISP stand-in's attributes: the listed domain and one of each address type.
ATTRIBUTES = [
    {"value": LISTED, "type": "domain", "uuid": EVENT_ATTRIBUTE},
    {"value": "203.0.113.0/24", "type": "ip-dst"},
    {"value": "2001:db8:bad::/48", "type": "ip-src"},
    {"value": "198.51.100.77|443", "type": "ip-src|port"},
    {"value": "other.example|192.0.2.99", "type": "domain|ip"},
    {"value": "198.51.100.200|8080", "type": "ip-dst|port"},
]


def cname_report(indicator: str = LISTED) -> str:
    return f"source=misp-connector;domain={indicator};via=cname"


def ip_report(network: str) -> str:
    return f"source=misp-connector;ip={network}"


@pytest.fixture(scope="module")
def chain_unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundProcess]:
    """A real Unbound answering `deep.test.` from an auth zone with chains and DNAMEs."""
    binary = require_tool("unbound")
    directory = tmp_path_factory.mktemp("chain-unbound")
    zone = directory / "deep.zone"
    zone.write_text(ZONE_FILE)
    port = free_port()
    conf = write_unbound_config(
        directory,
        [*base_server_lines(directory, port), f'local-zone: "{ZONE}" transparent'],
        [
            f'auth-zone:\n    name: "{ZONE}"\n    zonefile: "{zone}"\n'
            "    for-downstream: yes\n    for-upstream: no\n"
        ],
    )
    process = UnboundProcess(binary, conf, ("127.0.0.1", port), probe="probe.deep.test.")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """The MISP stand-in serving the listed domain and every address type."""
    with MispStandIn(
        tmp_path_factory.mktemp("chain-misp"), api_key=API_KEY, attributes=ATTRIBUTES
    ) as misp:
        yield misp


def _start(
    workdir: Path, upstream: UnboundProcess, misp: MispStandIn, **options: Any
) -> MispDnsProcess:
    port = free_port()
    state = workdir / "state"
    state.mkdir(parents=True)
    policy = misp_policy(misp.url, key_file(workdir, API_KEY), block_response_ips=True) | options
    config = workdir / "misp-dns.toml"
    write_config(
        config,
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"127.0.0.1:{upstream.address[1]}"],
            "server_name": "dns.test.example",
            "state_dir": str(state),
            "upstream_timeout": 3,
        },
        [{"type": "allowlist", "domains": ["allowed-cloak.deep.test"]}, policy],
        {"max_entries": 1000},
    )
    with config.open("a") as file:
        file.write(f'[[export]]\ntype = "jsonl"\npath = "{workdir / "queries.jsonl"}"\n')
    process = MispDnsProcess(config, [("127.0.0.1", port)], workdir)
    process.start(probe="probe.deep.test.")
    wait_until(
        lambda: ask_udp(make_query("www.evil.deep.test"), process.address).rcode() == 3,
        20,
        what="MISP's indicators loaded",
    )
    return watch(process)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, chain_unbound: UnboundProcess, stand_in: MispStandIn
) -> Iterator[MispDnsProcess]:
    """misp-dns forwarding to the chain Unbound, blocking on the stand-in's indicators."""
    process = _start(tmp_path_factory.mktemp("chain-server"), chain_unbound, stand_in)
    yield process
    process.stop()


def records(process: MispDnsProcess, name: str) -> list[dict[str, Any]]:
    """The query log's records for `name`, once they are written."""
    path = process.workdir / "queries.jsonl"

    def found() -> list[dict[str, Any]]:
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [r for r in lines if r["question"]["questionName"] == name]

    wait_until(lambda: bool(found()), 10, what=f"a query record for {name}")
    return found()


def addresses(response: dns.message.Message) -> set[str]:
    return {
        rdata.address
        for rrset in response.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rdata in rrset
    }


@pytest.mark.parametrize(
    ("name", "via"),
    [
        ("cloak2.deep.test", "two CNAME hops"),
        ("cloak4.deep.test", "four CNAME hops"),
        ("www.alias.deep.test", "a DNAME"),
    ],
)
def test_a_chain_into_a_listed_domain_is_blocked(
    server: MispDnsProcess, name: str, via: str
) -> None:
    """Reaching the listed domain through two or four CNAME hops or a DNAME: the blocked
    answer for the question, with the listed domain and `via=cname` in EDE 15; over UDP
    (forwarded, then cached) and TCP, A and AAAA, and the TXT report for TXT."""
    for ask, rdtype in ((ask_udp, "A"), (ask_udp, "A"), (ask_tcp, "A"), (ask_udp, "AAAA")):
        response = ask(make_query(name, rdtype, edns=0), server.address)
        assert blocked_problems(response, name + ".", cname_report(), qtype=rdtype) == [], via
    response = ask_udp(make_query(name, "TXT", edns=0), server.address)
    assert blocked_problems(response, name + ".", cname_report(), qtype="TXT") == []


@pytest.mark.parametrize(
    ("name", "wanted"),
    [("fine3.deep.test", {"192.0.2.70"}), ("www.goodalias.deep.test", {"192.0.2.71"})],
)
def test_a_chain_through_unlisted_names_is_answered(
    server: MispDnsProcess, name: str, wanted: set[str]
) -> None:
    """Three CNAME hops, or a DNAME, into names nobody lists: Unbound's answer, chain
    included, the first time and from the cache."""
    for _ in range(2):
        response = ask_udp(make_query(name, "A", edns=0), server.address)
        assert response.rcode() == dns.rcode.NOERROR
        assert addresses(response) == wanted
        assert any(rrset.rdtype == dns.rdatatype.CNAME for rrset in response.answer)
        assert not response.options


def test_an_allowlisted_question_is_answered_whatever_its_chain(server: MispDnsProcess) -> None:
    """allowed-cloak.deep.test is allowlisted: its CNAME into the listed domain is served."""
    response = ask_udp(make_query("allowed-cloak.deep.test", "A", edns=0), server.address)
    assert addresses(response) == {"192.0.2.66"}
    assert records(server, "allowed-cloak.deep.test")[0]["responseType"] == "Allowed"


@pytest.mark.parametrize(
    ("name", "rdtype", "network"),
    [
        ("listed4.deep.test", "A", "203.0.113.0/24"),
        ("listed6.deep.test", "AAAA", "2001:db8:bad::/48"),
        ("single.deep.test", "A", "198.51.100.77"),
        ("dip.deep.test", "A", "192.0.2.99"),
        ("mixed.deep.test", "A", "203.0.113.0/24"),
    ],
)
def test_an_answer_holding_a_listed_address_is_blocked(
    server: MispDnsProcess, name: str, rdtype: str, network: str
) -> None:
    """An A or AAAA answer with an address in a listed network (`ip-dst` range, `ip-src`
    IPv6 range, `ip-src|port` address, the address half of `domain|ip`; one listed address
    among unlisted ones is enough) gets the blocked answer naming the network."""
    for ask in (ask_udp, ask_udp, ask_tcp):
        response = ask(make_query(name, rdtype, edns=0), server.address)
        assert blocked_problems(response, name + ".", ip_report(network), qtype=rdtype) == []


def test_unlisted_addresses_are_answered(server: MispDnsProcess) -> None:
    """Addresses outside every listed network, A and AAAA, are served as Unbound gave them."""
    for rdtype, wanted in (("A", {"192.0.2.100"}), ("AAAA", {"2001:db8::100"})):
        response = ask_udp(make_query("unlisted.deep.test", rdtype, edns=0), server.address)
        assert (response.rcode(), addresses(response)) == (dns.rcode.NOERROR, wanted)


def test_dig_shows_the_chain_block(server: MispDnsProcess, dig: str) -> None:
    """dig, BIND's own parser, reads the blocked answer and its EDE 15 text."""
    result = run_dig(dig, "127.0.0.1", server.address[1], "cloak2.deep.test", "A", ["+edns=0"])
    assert result.status == "NXDOMAIN"
    assert result.ede_codes == (15,)
    assert cname_report() in result.output
    result = run_dig(dig, "127.0.0.1", server.address[1], "listed4.deep.test", "A", ["+edns=0"])
    assert result.status == "NXDOMAIN"
    assert ip_report("203.0.113.0/24") in result.output


def test_the_query_log_names_the_trigger_and_the_misp_attribute(server: MispDnsProcess) -> None:
    """The records say what was matched: the listed domain reached by the chain (trigger
    cname, with its MISP attribute), the listed network of an address (trigger ip)."""
    ask_udp(make_query("cloak4.deep.test", "A", edns=0), server.address)
    ask_udp(make_query("single.deep.test", "A", edns=0), server.address)
    chain = records(server, "cloak4.deep.test")[-1]
    assert chain["responseType"] == "Blocked"
    assert chain["edns"] == [{"errType": "Blocked", "message": cname_report()}]
    assert chain["policy"]["source"] == "misp-connector"
    assert chain["policy"]["domain"] == LISTED
    assert chain["policy"]["trigger"] == "cname"
    assert chain["policy"]["mispAttributeUuid"] == EVENT_ATTRIBUTE
    assert chain["policy"]["mispEventId"] == "1"
    address = records(server, "single.deep.test")[-1]
    assert address["policy"]["ip"] == "198.51.100.77"
    assert address["policy"]["trigger"] == "ip"
    assert "domain" not in address["policy"]


def test_cached_answers_follow_misp_between_refreshes(
    tmp_path: Path, chain_unbound: UnboundProcess
) -> None:
    """A cached answer whose chain MISP starts listing is blocked from the refresh on, and
    never served again while listed; when MISP deletes the indicator, the next refresh
    serves the cached answer again (a cache hit: Unbound is not asked again)."""
    (tmp_path / "misp").mkdir()
    with MispStandIn(tmp_path / "misp", api_key=API_KEY, attributes=ATTRIBUTES[:1]) as misp:
        process = _start(tmp_path / "server", chain_unbound, misp, update_interval="2s")
        try:
            name = "fine3.deep.test"
            query = make_query(name, "A", edns=0)
            assert addresses(ask_udp(query, process.address)) == {"192.0.2.70"}
            misp.control(add=[{"value": "f2.deep.test", "type": "hostname"}])
            started = time.monotonic()
            wait_until(
                lambda: ask_udp(query, process.address).rcode() == dns.rcode.NXDOMAIN,
                20,
                what=f"{name} blocked after the refresh",
            )
            print(f"\nblocked {time.monotonic() - started:.1f} s after MISP listed it")
            for _ in range(50):
                response = ask_udp(query, process.address)
                assert blocked_problems(response, name + ".", cname_report("f2.deep.test")) == []
            misp.control(delete=["f2.deep.test"])
            wait_until(
                lambda: ask_udp(query, process.address).rcode() == dns.rcode.NOERROR,
                20,
                what=f"{name} answered after MISP deleted the indicator",
            )
            # The query log is written in batches: wait for the last answer's record.
            wait_until(
                lambda: records(process, name)[-1]["responseType"] == "Cached",
                10,
                what="the record of the cached answer",
            )
            kinds = [r["responseType"] for r in records(process, name)]
            assert kinds[0] == "Recursive" and kinds.count("Recursive") == 1
        finally:
            process.stop()
