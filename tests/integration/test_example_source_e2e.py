"""A third-party indicator source end to end: `contrib/example-source` (`domain-list`) under
twistd.

`make test` installs the example package beside misp-dns; its entry point in the group
`misp_dns.sources` makes `type = "domain-list"` a blocking policy, refreshed, cached and
matched like MISP's, with nothing else done.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
from conftest import free_port, require_package

from .misp_stand_in import (
    blocked_problems,
    forwarded_problems,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    start_misp_dns,
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import SOA_SERIAL, WWW, WWW_A, UnboundProcess
from .wire import ask_tcp, ask_udp, make_query

LISTED = "evil.test"
REPORT = f"source=domain-list;domain={LISTED}"
DOMAINS = f"""\
# domains the example source blocks
  {LISTED.upper()}   # with the names below it
# notevil.test
"""


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The domain list the server reads."""
    path = tmp_path_factory.mktemp("domain-list") / "domains.txt"
    path.write_text(DOMAINS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def list_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess, listed: Path
) -> Iterator[MispDnsProcess]:
    """misp-dns with one `domain-list` policy reading `listed` every second, once it blocks."""
    require_package("misp-dns-example-source")
    policies = [{"type": "domain-list", "path": str(listed), "update_interval": "1s"}]
    workdir = tmp_path_factory.mktemp("list-server")
    process = start_misp_dns(workdir, unbound.address, policies, port=free_port())
    wait_until(
        lambda: ask_udp(make_query(LISTED, "A"), process.address).rcode() == dns.rcode.NXDOMAIN,
        10,
        what="the listed domain blocked",
    )
    yield process
    process.stop()


def test_a_listed_domain_and_the_names_below_it_are_blocked(list_server: MispDnsProcess) -> None:
    """`evil.test` (listed in capitals, with spaces and a comment) and `www.evil.test` get the
    blocked answer with the report `source=domain-list;domain=evil.test`, over UDP and TCP,
    and a TXT query gets the report itself."""
    for ask in (ask_udp, ask_tcp):
        for name in (LISTED, "www.Evil.test"):
            response = ask(make_query(name, "A", edns=0), list_server.address)
            assert blocked_problems(response, name, REPORT) == [], name
    response = ask_udp(make_query(LISTED, "TXT", edns=0), list_server.address)
    assert blocked_problems(response, LISTED, REPORT, qtype="TXT") == []


def test_names_not_listed_are_forwarded(list_server: MispDnsProcess) -> None:
    """A name only in a comment, and the upstream's own names, resolve through the upstream."""
    response = ask_udp(make_query("notevil.test", "A", edns=0), list_server.address)
    assert forwarded_problems(response) == []
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].name.to_text() == "test."
    assert response.authority[0][0].serial == SOA_SERIAL
    response = ask_udp(make_query(WWW, "A", edns=0), list_server.address)
    assert [r.to_text() for rrset in response.answer for r in rrset] == [WWW_A]


def test_a_list_gone_missing_keeps_the_last_good_one(
    list_server: MispDnsProcess, listed: Path
) -> None:
    """When the file disappears, the refresh fails with a log line and the listed domain is
    still blocked."""
    start = list_server.log_size()
    listed.unlink()
    wait_until(
        lambda: "domain-list: update failed" in list_server.log_text(start),
        10,
        what="a failed refresh logged",
    )
    assert "No such file or directory" in list_server.log_text(start)
    response = ask_udp(make_query(LISTED, "A", edns=0), list_server.address)
    assert blocked_problems(response, LISTED, REPORT) == []
