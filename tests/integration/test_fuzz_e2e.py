"""A flood of mutated packets against the running server: it must keep answering.

100,000 damaged queries over UDP (see `abuse_mutations.Mutator`), then a few thousand
frames over TCP with huge length prefixes, half-sent frames, resets and full-size frames of
garbage. Afterwards the server still answers correctly, has logged no error (and not a line
per bad packet), holds no more descriptors than before, and its resident memory grew by
less than 10% over what it used after a warm-up (so memory stays flat under garbage).

The UDP flood goes out in windows: each window ends with a probe query, and the next
window only starts when the probe is answered, so the server is never asked to drop what
it cannot read, and a server that stops answering fails the test at once.
"""

# The fixtures imported from abuse_servers are redefined as test arguments.
# ruff: noqa: F811

from __future__ import annotations

import random
import socket
import struct
import time

import attrs
import dns.rcode

from .abuse_mutations import Mutator, parse_strictly
from .abuse_servers import (  # noqa: F401 (fixtures)
    FLOOD_IDLE_TIMEOUT,
    ProcessStatus,
    flood_server,
    no_abuse_server_errors,
)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import WWW, WWW_A
from .wire import ask_tcp, ask_udp, make_query, parse, tcp_connect, tcp_frame

UDP_PACKETS = 100_000
WARM_UP_PACKETS = 10_000
WINDOW = 250
#: How long the server may take to answer a probe behind a window of garbage.
PROBE_TIMEOUT = 5.0
#: How much the resident memory may grow over the warmed-up figure.
RSS_GROWTH = 0.10
#: How many octets the server may log for the whole flood (not a line per bad packet).
LOG_BUDGET = 64 * 1024
TCP_CONNECTIONS = 300
FD_SLACK = 5


@attrs.define
class _Figures:
    """What one flood did."""

    sent: int = 0
    sent_octets: int = 0
    responses: int = 0
    response_octets: int = 0
    seconds: float = 0.0
    malformed: list[str] = attrs.field(factory=list)


#: The probe's name in a case no mutated packet has (0x20 style), to tell its answer apart.
PROBE_NAME = "wWw.TeSt."


def _probe(qid: int) -> bytes:
    return make_query(PROBE_NAME, "A", qid=qid).to_wire()


def _is_probe_answer(wire: bytes, probe: bytes) -> bool:
    question = probe[12:]
    return (
        wire[:2] == probe[:2] and bool(wire[2] & 0x80) and wire[12 : 12 + len(question)] == question
    )


def _check_probe(wire: bytes) -> None:
    response = parse(wire)
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in response.answer[0]] == [WWW_A]


def _udp_flood(address: tuple[str, int], mutator: Mutator, count: int) -> _Figures:
    """Send `count` mutated packets in windows, each closed by an answered probe."""
    figures = _Figures()
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect(address)
        window = 0
        while figures.sent < count:
            window += 1
            for _ in range(min(WINDOW, count - figures.sent)):
                packet = mutator.packet()
                sock.send(packet)
                figures.sent += 1
                figures.sent_octets += len(packet)
            probe = _probe(window & 0xFFFF)
            sock.send(probe)
            deadline = time.monotonic() + PROBE_TIMEOUT
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    wire = sock.recv(65535)
                except TimeoutError:
                    raise AssertionError(
                        f"no answer to the probe after {figures.sent} packets"
                    ) from None
                except ConnectionRefusedError:
                    raise AssertionError(f"the server died after {figures.sent} packets") from None
                if _is_probe_answer(wire, probe):
                    _check_probe(wire)
                    break
                assert len(wire) >= 12 and wire[2] & 0x80, f"not a response: {wire.hex()}"
                figures.responses += 1
                figures.response_octets += len(wire)
                try:
                    parse_strictly(wire)
                except Exception as exc:
                    figures.malformed.append(f"{exc!r}: {wire.hex()}")
    figures.seconds = time.monotonic() - started
    return figures


def test_udp_flood_of_mutated_packets(flood_server: MispDnsProcess) -> None:
    """After 100,000 mutated UDP packets the server answers correctly, logged no error and
    not a line per packet, answered at most once per packet, and its memory stayed flat;
    every response it sent on the way parses strictly."""
    mutator = Mutator(seed=20240606)
    _udp_flood(flood_server.address, mutator, WARM_UP_PACKETS)
    before = ProcessStatus.of(flood_server.pid)
    log_before = flood_server.log_size()
    figures = _udp_flood(flood_server.address, mutator, UDP_PACKETS)
    after = ProcessStatus.of(flood_server.pid)
    print(
        f"\nUDP flood: {figures.sent} packets ({figures.sent_octets} octets) in"
        f" {figures.seconds:.1f} s, {figures.responses} responses"
        f" ({figures.response_octets} octets, {len(figures.malformed)} malformed);"
        f" RSS {before.rss_kb} -> {after.rss_kb} kB, fds {before.fds} -> {after.fds}"
    )
    assert figures.responses <= figures.sent
    assert figures.response_octets <= 2 * figures.sent_octets, "the server amplifies garbage"
    assert after.rss_kb <= before.rss_kb * (1 + RSS_GROWTH)
    assert flood_server.log_size() - log_before <= LOG_BUDGET
    for ask in (ask_udp, ask_tcp):
        _check_probe(ask(make_query(WWW, "A", qid=0x5A5A), flood_server.address).to_wire())
    wait_until(
        lambda: ProcessStatus.of(flood_server.pid).fds <= before.fds + FD_SLACK,
        timeout=5,
        what="the server closing the sockets of forwarded queries",
    )
    assert not figures.malformed, (
        f"{len(figures.malformed)} responses do not parse, e.g.\n"
        + "\n".join(figures.malformed[:5])
    )


def _tcp_session(address: tuple[str, int], mutator: Mutator, rng: random.Random) -> int:
    """One connection: some framed mutated packets, then a bad ending; return frames sent."""
    sock = tcp_connect(address, timeout=5)
    frames = rng.randint(3, 12)
    payload = b"".join(tcp_frame(mutator.packet()) for _ in range(frames))
    ending = rng.choice(("huge", "half", "max", "reset", "prefix", "zero", "clean"))
    if ending == "huge":  # announces 65535 octets, sends a few
        payload += b"\xff\xff" + mutator.packet()
    elif ending == "half":  # a frame cut in the middle
        frame = tcp_frame(mutator.packet())
        payload += frame[: len(frame) // 2]
    elif ending == "max":  # a full 65535-octet frame of garbage
        payload += b"\xff\xff" + rng.randbytes(65535)
        frames += 1
    elif ending == "prefix":  # half a length prefix
        payload += b"\x01"
    elif ending == "zero":  # empty frames
        payload += b"\x00\x00" * 10
        frames += 10
    try:
        sock.sendall(payload)
        if ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return frames


def test_tcp_flood_of_bad_frames(flood_server: MispDnsProcess) -> None:
    """Thousands of frames over hundreds of connections, ending in huge length prefixes,
    half-sent frames, 64 KB of garbage, resets and empty frames: afterwards every connection
    is released, the server answers correctly, logged no error (and little at all), and its
    memory stayed flat."""
    rng = random.Random(7)
    mutator = Mutator(seed=7)
    for _ in range(30):  # warm-up
        _tcp_session(flood_server.address, mutator, rng)
    time.sleep(FLOOD_IDLE_TIMEOUT + 1)
    before = ProcessStatus.of(flood_server.pid)
    log_before = flood_server.log_size()
    frames = sum(_tcp_session(flood_server.address, mutator, rng) for _ in range(TCP_CONNECTIONS))
    # Meanwhile, a well-behaved client on a new connection is answered. It comes from
    # another /24 than the flood: the flood's own network is held to
    # server.tcp_max_connections_per_client, and may be refused until its connections end.
    probe = make_query(WWW, "A", qid=0x5B5B)
    _check_probe(ask_tcp(probe, flood_server.address, source="127.0.1.1").to_wire())
    wait_until(
        lambda: ProcessStatus.of(flood_server.pid).fds <= before.fds + FD_SLACK,
        timeout=FLOOD_IDLE_TIMEOUT + 5,
        what="the server releasing every connection",
    )
    after = ProcessStatus.of(flood_server.pid)
    print(
        f"\nTCP flood: {frames} frames over {TCP_CONNECTIONS} connections;"
        f" RSS {before.rss_kb} -> {after.rss_kb} kB, fds {before.fds} -> {after.fds}"
    )
    assert after.rss_kb <= before.rss_kb * (1 + RSS_GROWTH)
    assert flood_server.log_size() - log_before <= LOG_BUDGET
    for ask in (ask_udp, ask_tcp):
        _check_probe(ask(make_query(WWW, "A", qid=0x5C5C), flood_server.address).to_wire())
