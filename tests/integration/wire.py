"""Raw DNS exchanges over UDP and TCP, with every response parsed strictly by dnspython.

`parse` is `dns.message.from_wire` with its strict defaults: it raises on short headers,
counts that do not match the sections, trailing bytes, a misplaced or repeated OPT, and any
record cut short. Tests build queries with `make_query` (or by hand, for malformed ones),
send the bytes with `udp_exchange`/`tcp_exchange`, and assert on the parsed response.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = [
    "Address",
    "ask_tcp",
    "ask_udp",
    "closed_within",
    "make_query",
    "parse",
    "read_tcp_message",
    "rrsets_by_key",
    "tcp_connect",
    "tcp_exchange",
    "tcp_frame",
    "udp_exchange",
]

Address = tuple[str, int]


def _family(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def make_query(
    name: str,
    rdtype: str | int = "A",
    *,
    rdclass: str | int = "IN",
    qid: int | None = None,
    rd: bool = True,
    edns: int | None = None,
    payload: int = 1232,
    dnssec_ok: bool = False,
    options: Sequence[dns.edns.Option] = (),
) -> dns.message.QueryMessage:
    """A query for `name`; `edns` None means no OPT, otherwise the EDNS version to send."""
    use_edns: int | bool = False if edns is None and not dnssec_ok else (edns or 0)
    query = dns.message.make_query(
        dns.name.from_text(name),
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.RdataClass.make(rdclass),
        use_edns=use_edns,
        payload=payload,
        want_dnssec=dnssec_ok,
        options=list(options) or None,
        id=qid,
    )
    if not rd:
        query.flags &= ~dns.flags.RD
    return query


def parse(wire: bytes) -> dns.message.Message:
    """Parse a response strictly; any malformation raises a dnspython exception."""
    return dns.message.from_wire(wire)


def udp_exchange(
    wire: bytes, address: Address, timeout: float = 2.0, source: str | None = None
) -> bytes | None:
    """Send one datagram and return the first datagram back, or None after `timeout` s.

    `source` picks the client address (any 127.0.0.0/8 address works on Linux loopback).
    """
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(address)
        sock.send(wire)
        try:
            return sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            # Refused: an ICMP port unreachable came back, so nothing listens (yet).
            return None


def ask_udp(
    query: dns.message.Message,
    address: Address,
    timeout: float = 3.0,
    source: str | None = None,
) -> dns.message.Message:
    """Send `query` over UDP and return the strictly parsed response (fails on silence)."""
    wire = udp_exchange(query.to_wire(), address, timeout, source)
    if wire is None:
        raise AssertionError(f"no UDP answer from {address} within {timeout} s")
    return parse(wire)


def tcp_frame(wire: bytes) -> bytes:
    """Prefix a message with its two-byte length, as DNS over TCP sends it."""
    return struct.pack("!H", len(wire)) + wire


def tcp_connect(address: Address, timeout: float = 3.0, source: str | None = None) -> socket.socket:
    """A TCP connection to `address` with `timeout` on every operation."""
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect(address)
    return sock


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_tcp_message(sock: socket.socket, timeout: float = 3.0) -> bytes:
    """Read one length-prefixed message from a TCP connection."""
    deadline = time.monotonic() + timeout
    (length,) = struct.unpack("!H", _recv_exactly(sock, 2, deadline))
    return _recv_exactly(sock, length, deadline)


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes `sock` (EOF or reset), or None if it stays open that
    long; data arriving instead fails with AssertionError."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        data = sock.recv(65535)
    except ConnectionResetError:
        return time.monotonic() - start
    except TimeoutError:
        return None
    assert data == b"", f"unexpected data on an idle connection: {data!r}"
    return time.monotonic() - start


def tcp_exchange(
    wire: bytes, address: Address, timeout: float = 3.0, source: str | None = None
) -> bytes:
    """Send one message over a new TCP connection and return the response's bytes."""
    with tcp_connect(address, timeout, source) as sock:
        sock.sendall(tcp_frame(wire))
        return read_tcp_message(sock, timeout)


def ask_tcp(
    query: dns.message.Message,
    address: Address,
    timeout: float = 3.0,
    source: str | None = None,
) -> dns.message.Message:
    """Send `query` over TCP and return the strictly parsed response."""
    return parse(tcp_exchange(query.to_wire(), address, timeout, source))


def rrsets_by_key(
    rrsets: Iterable[dns.rrset.RRset],
) -> dict[tuple[dns.name.Name, int, int], dns.rrset.RRset]:
    """Index RRsets by (owner, class, type) to compare sections regardless of order."""
    return {(r.name, r.rdclass, r.rdtype): r for r in rrsets}
