"""`allow_clients`: clients outside the list get REFUSED (with EDE 18 when they sent EDNS).

The ACL server allows 127.0.0.2/32 and ::1 only, so queries from 127.0.0.1 are outside.
Stock `_EDNSMessage` drops EDNS options and the stock REFUSED path echoes the request.
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.rcode
import dns.rrset
import pytest

from .conftest import ALLOWED_SOURCE
from .dig import run_dig
from .server import MispDnsProcess
from .unbound import WWW, WWW_A
from .wire import ask_tcp, ask_udp, make_query

_PROHIBITED = 18


@pytest.mark.parametrize("ask", [ask_udp, ask_tcp], ids=["udp", "tcp"])
def test_outside_client_without_edns_gets_refused_without_opt(
    acl_server: MispDnsProcess, ask: object
) -> None:
    """A client outside allow_clients gets REFUSED, its ID and question, and no OPT."""
    query = make_query("WwW.test.", "A", qid=0x1801)
    response = ask(query, acl_server.address)  # type: ignore[operator]
    assert response.id == 0x1801
    assert response.flags & dns.flags.QR
    assert response.rcode() == dns.rcode.REFUSED
    assert response.question[0].name.to_text() == "WwW.test."
    assert response.answer == []
    assert response.edns == -1


@pytest.mark.parametrize("ask", [ask_udp, ask_tcp], ids=["udp", "tcp"])
def test_outside_client_with_edns_gets_refused_with_ede_prohibited(
    acl_server: MispDnsProcess, ask: object
) -> None:
    """With EDNS, the REFUSED answer carries an OPT holding Extended DNS Error 18
    (Prohibited)."""
    query = make_query(WWW, "A", edns=0, qid=0x1802)
    response = ask(query, acl_server.address)  # type: ignore[operator]
    assert response.rcode() == dns.rcode.REFUSED
    assert response.edns == 0
    codes = [o.code for o in response.options if isinstance(o, dns.edns.EDEOption)]
    assert codes == [_PROHIBITED]


def test_refused_answer_does_not_echo_the_request(acl_server: MispDnsProcess) -> None:
    """Records a request carries are not sent back in the REFUSED answer."""
    query = make_query(WWW, "A", qid=0x1803)
    query.answer.append(dns.rrset.from_text(WWW, 60, "IN", "A", "198.18.0.1"))
    response = ask_udp(query, acl_server.address)
    assert response.rcode() == dns.rcode.REFUSED
    assert response.answer == []
    assert response.authority == []


@pytest.mark.parametrize("ask", [ask_udp, ask_tcp], ids=["udp", "tcp"])
def test_allowed_client_is_answered(acl_server: MispDnsProcess, ask: object) -> None:
    """A client inside allow_clients (127.0.0.2 here) gets its answer."""
    response = ask(  # type: ignore[operator]
        make_query(WWW, "A", qid=0x1804), acl_server.address, source=ALLOWED_SOURCE
    )
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in response.answer[0]] == [WWW_A]


def test_dig_from_outside_sees_refused_and_ede(acl_server: MispDnsProcess, dig: str) -> None:
    """dig reports status REFUSED and EDE 18 from an outside address."""
    host, port = acl_server.address
    result = run_dig(dig, host, port, WWW, "A", ["+edns=0"])
    assert result.status == "REFUSED"
    assert result.ede_codes == (_PROHIBITED,)
    response = ask_udp(make_query(WWW, "A", edns=0), acl_server.address)
    assert response.rcode() == dns.rcode.REFUSED
