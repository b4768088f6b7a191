"""The benchmark waits for misp-dns's own block (bench/probe.py), not any NXDOMAIN.

The bench's Unbound answers the feed's names NXDOMAIN as well, so before misp-dns has its
policy's first snapshot it forwards them and the client still sees NXDOMAIN: a wait on the
RCODE alone let the real-feed run start measuring while misp-dns was forwarding. The
replies here are built with dnspython, as an upstream and as misp-dns send them, and served
from a loopback UDP socket.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import dns.edns
import dns.message
import dns.rcode
import pytest


def _probe() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "probe.py"
    spec = importlib.util.spec_from_file_location("bench_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


probe = _probe()
NAME = "hawksearchseos.cc"


def upstream_nxdomain(query: dns.message.Message) -> bytes:
    """An Unbound `always_nxdomain` answer: NXDOMAIN, no EDE."""
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


def misp_dns_block(query: dns.message.Message) -> bytes:
    """misp-dns's blocked answer: NXDOMAIN with EDE 15 and its report."""
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    report = f"source=misp-feed /feed;domain={NAME}"
    response.use_edns(0, payload=1232, options=[dns.edns.EDEOption(15, report)])
    return response.to_wire()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[dns.message.Message], bytes]], tuple[str, int]]]:
    """Starts a loopback UDP server answering every query with the given reply builder."""
    sockets: list[socket.socket] = []

    def start(answer: Callable[[dns.message.Message], bytes]) -> tuple[str, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)

        def loop() -> None:
            while True:
                try:
                    data, peer = sock.recvfrom(4096)
                    sock.sendto(answer(dns.message.from_wire(data)), peer)
                except OSError:
                    return

        threading.Thread(target=loop, daemon=True).start()
        return sock.getsockname()

    yield start
    for sock in sockets:
        sock.close()


def test_an_upstream_nxdomain_is_not_taken_for_a_block(serve) -> None:
    """A name misp-dns forwarded (NXDOMAIN from Unbound's zones) does not end the wait."""
    address = serve(upstream_nxdomain)
    assert probe.rcode(address, NAME, timeout=1.0) == probe.NXDOMAIN
    with pytest.raises(TimeoutError):
        probe.wait_for_block(address, NAME, timeout=0.3, interval=0.01)


def test_misp_dns_own_block_ends_the_wait(serve) -> None:
    """misp-dns's blocked answer (NXDOMAIN, EDE 15 with its report) ends the wait."""
    address = serve(misp_dns_block)
    probe.wait_for_block(address, NAME, timeout=5.0, interval=0.01)
    assert probe.extended_errors(probe.reply(address, NAME, timeout=1.0)) == [
        (15, f"source=misp-feed /feed;domain={NAME}")
    ]
