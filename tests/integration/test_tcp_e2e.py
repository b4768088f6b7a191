"""TCP and the listeners: pipelining, idle timeout, connection cap, IPv6.

The stock server has no idle timeout and no connection limit on TCP.
"""

from __future__ import annotations

import contextlib
import socket
import time

import dns.flags
import dns.rcode
import pytest
from conftest import on_ci

from .conftest import IDLE_TIMEOUT, MAX_TCP
from .net import ipv6_loopback_available
from .server import MispDnsProcess
from .unbound import MANY, MANY_COUNT, NXDOMAIN, SERVFAIL, WWW, WWW_A, WWW_AAAA
from .wire import (
    ask_tcp,
    ask_udp,
    closed_within,
    make_query,
    parse,
    read_tcp_message,
    tcp_connect,
    tcp_frame,
)


def test_pipelined_queries_on_one_connection_are_all_answered(server: MispDnsProcess) -> None:
    """Several queries sent at once on one connection each get their own answer."""
    asked = {
        0x0A01: (WWW, "A", dns.rcode.NOERROR),
        0x0A02: (WWW, "AAAA", dns.rcode.NOERROR),
        0x0A03: (NXDOMAIN, "A", dns.rcode.NXDOMAIN),
        0x0A04: (SERVFAIL, "A", dns.rcode.SERVFAIL),
        0x0A05: (MANY, "A", dns.rcode.NOERROR),
        0x0A06: ("WwW.tEsT.", "A", dns.rcode.NOERROR),
    }
    payload = b"".join(
        tcp_frame(make_query(name, rdtype, qid=qid).to_wire())
        for qid, (name, rdtype, _) in asked.items()
    )
    answers = {}
    with tcp_connect(server.address) as sock:
        sock.sendall(payload)
        for _ in asked:
            response = parse(read_tcp_message(sock, timeout=5))
            answers[response.id] = response
    assert set(answers) == set(asked)
    for qid, (name, rdtype, rcode) in asked.items():
        response = answers[qid]
        assert response.question[0].name.to_text() == name
        assert response.rcode() == rcode, f"{name} {rdtype}"
        assert not response.flags & dns.flags.TC
    assert [r.to_text() for r in answers[0x0A01].answer[0]] == [WWW_A]
    assert [r.to_text() for r in answers[0x0A02].answer[0]] == [WWW_AAAA]
    assert len(answers[0x0A05].answer[0]) == MANY_COUNT


def test_query_arriving_in_fragments_is_answered(server: MispDnsProcess) -> None:
    """A TCP query split across many segments (length prefix included) is answered."""
    frame = tcp_frame(make_query(WWW, "A", qid=0x0B01).to_wire())
    with tcp_connect(server.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(len(frame)):
            sock.sendall(frame[index : index + 1])
            time.sleep(0.002)
        response = parse(read_tcp_message(sock))
    assert response.id == 0x0B01
    assert [r.to_text() for r in response.answer[0]] == [WWW_A]


def test_idle_connection_is_closed_after_the_idle_timeout(server: MispDnsProcess) -> None:
    """A connection that sends nothing more is closed about tcp_idle_timeout seconds after
    its last query (stock: kept open forever)."""
    with tcp_connect(server.address) as sock:
        sock.sendall(tcp_frame(make_query(WWW, "A", qid=0x0C01).to_wire()))
        assert parse(read_tcp_message(sock)).id == 0x0C01
        elapsed = closed_within(sock, IDLE_TIMEOUT + 3)
    assert elapsed is not None, f"connection still open {IDLE_TIMEOUT + 3} s after its query"
    assert IDLE_TIMEOUT - 0.5 <= elapsed <= IDLE_TIMEOUT + 2


def test_connections_over_the_cap_are_closed(capped_server: MispDnsProcess) -> None:
    """With tcp_max_connections open, one more connection is closed unanswered; once one
    closes, a new connection is served again (stock: no limit)."""
    held = [tcp_connect(capped_server.address) for _ in range(MAX_TCP)]
    try:
        for index, sock in enumerate(held):
            sock.sendall(tcp_frame(make_query(WWW, "A", qid=0x0D00 + index).to_wire()))
            assert parse(read_tcp_message(sock)).id == 0x0D00 + index
        with tcp_connect(capped_server.address) as extra:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                extra.sendall(tcp_frame(make_query(WWW, "A", qid=0x0DFF).to_wire()))
            assert closed_within(extra, 3) is not None, "the connection over the cap was served"
        # The held connections keep working.
        held[0].sendall(tcp_frame(make_query(WWW, "A", qid=0x0D10).to_wire()))
        assert parse(read_tcp_message(held[0])).id == 0x0D10
        held.pop().close()
        deadline = time.monotonic() + 3
        while True:
            try:
                response = ask_tcp(make_query(WWW, "A", qid=0x0D20), capped_server.address, 1)
                break
            except (ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.id == 0x0D20
        assert response.rcode() == dns.rcode.NOERROR
    finally:
        for sock in held:
            sock.close()


def test_ipv6_listener_answers_udp_and_tcp(server: MispDnsProcess) -> None:
    """A "[::1]:port" listen address answers over UDP and TCP."""
    if not ipv6_loopback_available():
        message = "this host has no IPv6 loopback"
        if on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    address = ("::1", server.address[1])
    for ask in (ask_udp, ask_tcp):
        response = ask(make_query(WWW, "AAAA", qid=0x0E01), address)
        assert response.id == 0x0E01
        assert [r.to_text() for r in response.answer[0]] == [WWW_AAAA]
