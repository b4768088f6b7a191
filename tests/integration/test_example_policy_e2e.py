"""A third-party policy end to end: `contrib/example-policy` (`tld-block`) under twistd.

`make test` installs the example package beside misp-dns; its entry point in the group
`misp_dns.policies` makes `type = "tld-block"` usable in a config with nothing else done.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.rcode
import pytest
from conftest import free_port, require_package

from .misp_stand_in import (
    blocked_problems,
    forwarded_problems,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    start_misp_dns,
)
from .server import MispDnsProcess
from .unbound import SOA_SERIAL, WWW, WWW_A, UnboundProcess
from .wire import ask_tcp, ask_udp, make_query

REPORT = "source=tld-block;tld=zip"
TTL = 300  # the example policy's default


@pytest.fixture(scope="module")
def tld_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[MispDnsProcess]:
    """misp-dns with `[allowlist safe.zip, tld-block zip]`."""
    require_package("misp-dns-example-policy")
    policies = [
        {"type": "allowlist", "domains": ["safe.zip"]},
        {"type": "tld-block", "tlds": ["zip"]},
    ]
    workdir = tmp_path_factory.mktemp("tld-server")
    process = start_misp_dns(workdir, unbound.address, policies, port=free_port())
    yield process
    process.stop()


def test_names_under_the_listed_tld_are_blocked(tld_server: MispDnsProcess) -> None:
    """`invoice.zip` (any type, any case, UDP or TCP) gets the blocked answer with the report
    `source=tld-block;tld=zip` in EDE 15, and its TXT query the report itself."""
    for ask in (ask_udp, ask_tcp):
        for name in ("invoice.zip", "INVOICE.pdf.Zip"):
            response = ask(make_query(name, "A", edns=0), tld_server.address)
            assert blocked_problems(response, name, REPORT, ttl=TTL) == [], name
        response = ask(make_query("invoice.zip", "TXT", edns=0), tld_server.address)
        assert blocked_problems(response, "invoice.zip", REPORT, qtype="TXT", ttl=TTL) == []
    response = ask_udp(make_query("invoice.zip", "AAAA"), tld_server.address)
    assert (
        blocked_problems(response, "invoice.zip", REPORT, qtype="AAAA", edns=False, ttl=TTL) == []
    )


def test_other_names_are_forwarded(tld_server: MispDnsProcess) -> None:
    """Names under other TLDs (even with a `zip` label) resolve through the upstream, and an
    allowlist before the policy wins over it."""
    response = ask_udp(make_query(WWW, "A", edns=0), tld_server.address)
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for rrset in response.answer for r in rrset] == [WWW_A]
    response = ask_udp(make_query("zip.test", "A", edns=0), tld_server.address)
    assert forwarded_problems(response) == []
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].name.to_text() == "test."
    assert response.authority[0][0].serial == SOA_SERIAL
    # The allowlisted name is forwarded; the upstream refuses everything outside test.
    for name in ("safe.zip", "www.safe.zip"):
        response = ask_udp(make_query(name, "A", edns=0), tld_server.address)
        assert forwarded_problems(response) == []
        assert response.rcode() == dns.rcode.REFUSED
