"""What the forwarder counts for the metrics: the round-trip histogram and failures per upstream.

The upstreams are real UDP sockets on loopback answered by the test; the reactor is a
`MemoryReactorClock`, so the test decides how long a round trip takes and when an attempt
times out, and delivers the reply by reading the forwarder's socket itself.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import dns.message
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns as tdns

from misp_dns.dns.forwarder import Forwarder
from misp_dns.values import Upstream


@pytest.fixture
def upstreams() -> Iterator[list[socket.socket]]:
    """Two bound loopback UDP sockets standing in for upstream resolvers."""
    sockets = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        sockets.append(sock)
    yield sockets
    for sock in sockets:
        sock.close()


def address(sock: socket.socket) -> Upstream:
    host, port = sock.getsockname()
    return Upstream(host, port)


def answer(sock: socket.socket) -> None:
    """Receive one query on `sock` and answer it with an empty NOERROR."""
    data, peer = sock.recvfrom(65535)
    reply = dns.message.make_response(dns.message.from_wire(data))
    sock.sendto(reply.to_wire(), peer)


def deliver(reactor: MemoryReactorClock) -> None:
    """Let the forwarder's sockets read what has arrived."""
    readers: list[Any] = list(reactor.getReaders())
    select.select([r.fileno() for r in readers], [], [], 5)
    for reader in readers:
        reader.doRead()


def test_answered_question_is_timed_into_the_histogram(upstreams: list[socket.socket]) -> None:
    """A question answered after 20 ms counts once, under the 25 ms bucket, with its time."""
    reactor = MemoryReactorClock()
    forwarder = Forwarder([address(upstreams[0])], reactor)
    resolving = forwarder.resolve(b"www.example.com", tdns.A)
    answer(upstreams[0])
    reactor.advance(0.02)
    deliver(reactor)
    assert resolving.called
    buckets = dict(forwarder.latency.cumulative())
    assert forwarder.latency.count == 1
    assert buckets[0.01] == 0 and buckets[0.025] == 1
    assert forwarder.latency.total == pytest.approx(0.02)
    assert forwarder.failures == {str(address(upstreams[0])): 0}


def test_failed_attempts_are_counted_per_upstream(upstreams: list[socket.socket]) -> None:
    """An upstream that does not answer in time counts a failure; the one that answers none."""
    silent, answering = upstreams
    reactor = MemoryReactorClock()
    forwarder = Forwarder([address(silent), address(answering)], reactor)
    resolving = forwarder.resolve(b"www.example.com", tdns.A)
    silent.recvfrom(65535)
    reactor.advance(1.0)
    answer(answering)
    deliver(reactor)
    assert resolving.called
    assert forwarder.failures == {str(address(silent)): 1, str(address(answering)): 0}
    assert forwarder.latency.count == 1
