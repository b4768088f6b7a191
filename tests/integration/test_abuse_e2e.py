"""Abuse of the running server: a thousand idle TCP connections, half-sent frames, a TCP
client that never reads its answers, a UDP burst from one client (response rate limiting),
and ANY queries (RFC 8482).

test_tcp_e2e.py shows the idle timeout and the connection cap on a handful of connections;
here they hold at the scale an attacker would use, while the server keeps answering.
"""

# The fixtures imported from abuse_servers are redefined as test arguments.
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from .abuse_servers import (  # noqa: F401 (fixtures)
    IDLE_CAP,
    IDLE_TIMEOUT,
    RATE_LIMIT,
    ProcessStatus,
    any_server,
    idle_server,
    no_abuse_server_errors,
    rrl_server,
    unread_server,
)
from .fake_upstream import ScriptedUpstream
from .net import wait_until
from .server import MispDnsProcess
from .unbound import BIG_TXT, WWW, WWW_A
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

Nonce = Callable[[str], str]
IDLE_CONNECTIONS = 1000
#: Descriptors the server may hold beyond its count before the test (logs, timers...).
FD_SLACK = 5
_BATCH = 25
BURST = 1000


def _open_many(server: MispDnsProcess, count: int, accepted: int) -> list[socket.socket]:
    """Open `count` connections, a batch at a time, each batch accepted before the next.

    The listen queue holds only a few dozen connections not yet accepted (Twisted's
    default backlog is 50); beyond that the kernel drops handshakes, and they are retried
    seconds later. `accepted` is the descriptor count the server had before.
    """
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            for _ in range(min(_BATCH, count - len(held))):
                held.append(tcp_connect(server.address, timeout=5))
            wait_until(
                lambda: ProcessStatus.of(server.pid).fds >= accepted + len(held),
                timeout=10,
                what=f"the server accepting {len(held)} connections",
            )
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def _wait_all_closed(held: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Wait until the server has closed every socket in `held`; return those still open."""
    selector = selectors.DefaultSelector()
    for sock in held:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_ = set(held)
    deadline = time.monotonic() + timeout
    try:
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"an idle connection received {data!r}"
                selector.unregister(sock)
                open_.discard(sock)
    finally:
        selector.close()
    return list(open_)


def _answers_www(server: MispDnsProcess, qid: int) -> None:
    for ask in (ask_udp, ask_tcp):
        response = ask(make_query(WWW, "A", qid=qid), server.address)
        assert response.id == qid
        assert [r.to_text() for r in response.answer[0]] == [WWW_A]


def test_a_thousand_idle_connections_are_closed_while_the_server_answers(
    idle_server: MispDnsProcess,
) -> None:
    """1000 connections that send nothing do not stop the server: it answers over UDP and
    over a new TCP connection meanwhile, refuses connections beyond tcp_max_connections,
    and closes every idle one after tcp_idle_timeout, releasing its descriptors."""
    base = ProcessStatus.of(idle_server.pid)
    held = _open_many(idle_server, IDLE_CONNECTIONS, base.fds)
    try:
        _answers_www(idle_server, 0x6101)
        # Fill up to the cap; the one beyond is closed without an answer.
        held += _open_many(idle_server, IDLE_CAP - IDLE_CONNECTIONS, base.fds + len(held))
        with tcp_connect(idle_server.address) as extra:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                extra.sendall(tcp_frame(make_query(WWW, "A", qid=0x6102).to_wire()))
            assert closed_within(extra, 3) is not None, "a connection beyond the cap was served"
        # One of the held connections is still served (and its idle timer restarts).
        held[0].sendall(tcp_frame(make_query(WWW, "A", qid=0x6103).to_wire()))
        assert parse(read_tcp_message(held[0])).id == 0x6103
        started = time.monotonic()
        still_open = _wait_all_closed(held, IDLE_TIMEOUT + 5)
        assert not still_open, f"{len(still_open)} idle connections still open"
        assert time.monotonic() - started <= IDLE_TIMEOUT + 3
    finally:
        for sock in held:
            sock.close()
    wait_until(
        lambda: ProcessStatus.of(idle_server.pid).fds <= base.fds + FD_SLACK,
        timeout=5,
        what="the server releasing the descriptors of closed connections",
    )
    _answers_www(idle_server, 0x6104)


def test_a_burst_of_connections_is_accepted_promptly(idle_server: MispDnsProcess) -> None:
    """1000 connections opened back to back (clients told to retry over TCP all at once) are
    all established within a couple of seconds: the listen queue is deep enough that the
    kernel does not drop handshakes and make clients retry them a second or more later."""
    started = time.monotonic()
    held: list[socket.socket] = []
    try:
        for _ in range(BURST):
            held.append(tcp_connect(idle_server.address, timeout=30))
        elapsed = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()
    assert elapsed <= 3.0, f"{BURST} connections took {elapsed:.1f} s to establish"


#: Connections that stop in the middle of a frame: half a length prefix, 46 of 256
#: announced octets, 51200 of 65535 announced octets.
HALF_SENT = (
    b"\x00",
    b"\x01\x00" + b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 40,
    b"\xff\xff" + bytes(range(256)) * 200,
)


def test_half_sent_frames_are_closed_after_the_idle_timeout(idle_server: MispDnsProcess) -> None:
    """A connection that stops in the middle of a frame (even one announcing 65535 octets)
    gets no answer and is closed about tcp_idle_timeout after its last byte; the server
    answers others meanwhile."""
    held = []
    try:
        for partial in HALF_SENT:
            sock = tcp_connect(idle_server.address)
            held.append(sock)
            sock.sendall(partial)
        sent = time.monotonic()
        _answers_www(idle_server, 0x6201)
        assert not _wait_all_closed(held, IDLE_TIMEOUT + 4), "a half-sent frame kept its connection"
        assert IDLE_TIMEOUT - 0.5 <= time.monotonic() - sent <= IDLE_TIMEOUT + 2
    finally:
        for sock in held:
            sock.close()
    _answers_www(idle_server, 0x6202)


#: Pipelined queries the client that never reads sends: about 800 KB, asking for 35 MB.
UNREAD_QUERIES = 20_000
#: How much the server may grow meanwhile (kB): a transport buffer, not the answers.
UNREAD_GROWTH_KB = 8_192


def _send_what_is_taken(sock: socket.socket, data: bytes, patience: float) -> None:
    """Send `data` until all is sent or nothing more is taken for `patience` seconds."""
    sock.setblocking(False)
    sent = 0
    stalled_since = time.monotonic()
    while sent < len(data) and time.monotonic() - stalled_since < patience:
        try:
            sent += sock.send(data[sent : sent + 65536])
            stalled_since = time.monotonic()
        except BlockingIOError:
            time.sleep(0.02)


def test_a_client_that_never_reads_cannot_make_the_server_buffer_its_answers(
    unread_server: MispDnsProcess,
) -> None:
    """A client pipelines 800 KB of queries for a 1.7 KB TXT and never reads: the server
    stops reading from it once a transport buffer of answers waits, instead of holding the
    35 MB of answers in memory, and keeps answering everyone else."""
    answer = ask_tcp(make_query(BIG_TXT, "TXT", edns=0, qid=0x6301), unread_server.address)
    assert answer.answer, "the big TXT answer is cached, complete, before the test"
    base = ProcessStatus.of(unread_server.pid).rss_kb
    queries = b"".join(
        tcp_frame(make_query(BIG_TXT, "TXT", edns=0, qid=i % 65536).to_wire())
        for i in range(UNREAD_QUERIES)
    )
    with tcp_connect(unread_server.address) as greedy:
        _send_what_is_taken(greedy, queries, patience=2.0)
        _answers_www(unread_server, 0x6302)
        peak = base
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            peak = max(peak, ProcessStatus.of(unread_server.pid).rss_kb)
            time.sleep(0.1)
    assert peak - base < UNREAD_GROWTH_KB, f"the server grew by {peak - base} kB"
    _answers_www(unread_server, 0x6303)


def _burst(
    address: tuple[str, int], count: int, source: str = "127.0.0.1"
) -> tuple[list[dns.message.Message], int]:
    """Send `count` queries for www.test. at once; return the responses and how many were
    not answered within a second."""
    ids = list(range(0x7000, 0x7000 + count))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.connect(address)
        for qid in ids:
            sock.send(make_query(WWW, "A", qid=qid).to_wire())
        responses: list[dns.message.Message] = []
        sock.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            while len(responses) < count:
                responses.append(parse(sock.recv(65535)))
    assert all(r.id in ids for r in responses)
    assert len({r.id for r in responses}) == len(responses), "a query was answered twice"
    return responses, count - len(responses)


def test_udp_burst_from_one_client_is_rate_limited_but_not_tcp(
    rrl_server: MispDnsProcess,
) -> None:
    """With rate_limit responses per second and nothing exempt, a burst from one client gets
    about rate_limit answers; the rest are dropped or (every second one) sent as an empty
    truncated answer so a real client retries over TCP, where it is answered in full."""
    time.sleep(1.1)  # a full budget, whatever the fixture's probe spent
    count = 200
    responses, dropped = _burst(rrl_server.address, count)
    full = [r for r in responses if not r.flags & dns.flags.TC]
    slipped = [r for r in responses if r.flags & dns.flags.TC]
    assert RATE_LIMIT - 1 <= len(full) <= RATE_LIMIT + 10  # the budget refills meanwhile
    for response in full:
        assert [r.to_text() for r in response.answer[0]] == [WWW_A]
    limited = count - len(full)
    print(
        f"RRL burst of {count}: {len(full)} answered, {len(slipped)} truncated, {dropped} dropped"
    )
    assert limited / 2 - 10 <= len(slipped) <= limited / 2 + 10  # every second one slips
    assert dropped >= limited / 2 - 10
    for response in slipped:
        assert response.answer == [] and response.rcode() == dns.rcode.NOERROR
        assert response.question[0].name.to_text() == WWW
    for index in range(30):
        response = ask_tcp(make_query(WWW, "A", qid=0x7400 + index), rrl_server.address)
        assert [r.to_text() for r in response.answer[0]] == [WWW_A], "TCP was rate limited"


def test_rate_limit_is_per_network_and_refills(rrl_server: MispDnsProcess) -> None:
    """While one /24 is over its budget another /24 is answered, and a second later the
    limited one is answered again."""
    time.sleep(1.1)
    _, dropped = _burst(rrl_server.address, 100)
    assert dropped > 0
    other = ask_udp(make_query(WWW, "A"), rrl_server.address, source="127.0.1.1")
    assert not other.flags & dns.flags.TC and other.answer
    time.sleep(1.1)
    again = ask_udp(make_query(WWW, "A"), rrl_server.address)
    assert not again.flags & dns.flags.TC and again.answer


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("edns", [None, 0])
def test_any_is_answered_with_one_hinfo_and_never_forwarded(
    any_server: MispDnsProcess,
    fake_upstream: ScriptedUpstream,
    nonce: Nonce,
    transport: str,
    edns: int | None,
) -> None:
    """An ANY query gets NOERROR with one HINFO record "RFC8482" owned by the name
    (RFC 8482 section 4.2), and the upstream never sees it: no amplification."""
    name = nonce("answer")
    ask = ask_udp if transport == "udp" else ask_tcp
    query = make_query(name, "ANY", edns=edns)
    wire_size = len(query.to_wire())
    response = ask(query, any_server.address)
    assert response.rcode() == dns.rcode.NOERROR
    [rrset] = response.answer
    assert rrset.rdtype == dns.rdatatype.HINFO
    assert rrset.name.to_text() == name
    [hinfo] = rrset
    assert hinfo.cpu == b"RFC8482"
    assert response.authority == [] and response.additional == []
    assert len(response.to_wire()) <= wire_size + 40
    assert fake_upstream.queries_for(name) == [], "the ANY query was forwarded"
