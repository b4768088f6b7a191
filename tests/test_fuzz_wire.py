"""Fuzzing the wire: valid queries built by dnspython, then damaged, fed to the parsers.

`read_request` may only return a Request or raise DropPacket / RequestError;
`read_plain_query` may only return a PlainQuery or None; `Responder.respond` (with the real
resolver chain, cache and policy, and an in-memory upstream) may only produce bytes or
nothing. Nothing may take long (a hang fails the test through an alarm), and every response
must parse strictly with dnspython and carry the query's ID. The fast path may not accept
what the full path refuses, and where both accept they must read the same question.

The mutations live in `integration.abuse_mutations` (shared with the packet flood against
the running server) and the checks in `integration.abuse_checks` (shared with the atheris
harness in tests/fuzz/).
"""

from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.name
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from integration.abuse_checks import (
    CLIENT,
    SPECIAL_NAMES,
    bounded,
    check_agreement,
    check_all,
    check_plain,
    check_read_request,
    check_respond,
    check_response,
    fired,
    read,
    responder,
)
from integration.abuse_mutations import (
    QCLASSES,
    QTYPES,
    Mutation,
    base_query,
    label_name,
    opt_record,
    parse_strictly,
    raw_query,
)
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns

from misp_dns.dns.packet import read_plain_query
from misp_dns.dns.server import DNSStreamFactory
from misp_dns.dns.wire import DropPacket, Request, RequestError

# -- strategies ---------------------------------------------------------------------------

_label = st.binary(min_size=1, max_size=63)
_letters_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=63)


@st.composite
def _names(draw: st.DrawFn) -> dns.name.Name | str:
    """A name dnspython accepts: a special one, host-like labels, or any octets."""
    kind = draw(st.sampled_from(("special", "letters", "octets")))
    if kind == "special":
        return draw(st.sampled_from(SPECIAL_NAMES))
    label = _letters_label.map(str.encode) if kind == "letters" else _label
    labels = draw(st.lists(label, min_size=0, max_size=5))
    while sum(len(x) + 1 for x in labels) + 1 > 255:
        labels.pop()
    return dns.name.Name([*labels, b""])


_options = st.lists(
    st.tuples(
        st.sampled_from((3, 8, 10, 12, 15, 65001)) | st.integers(0, 65535), st.binary(max_size=24)
    ),
    max_size=3,
)

valid_queries = st.builds(
    base_query,
    _names(),
    st.sampled_from(QTYPES) | st.integers(0, 65535),
    st.sampled_from(QCLASSES) | st.integers(1, 65535),
    ident=st.integers(0, 65535),
    rd=st.booleans(),
    cd=st.booleans(),
    ad=st.booleans(),
    edns=st.none() | st.just(0) | st.integers(1, 255),
    payload=st.sampled_from((0, 511, 512, 1232, 4096, 65535)) | st.integers(0, 65535),
    dnssec_ok=st.booleans(),
    options=_options,
)

_opt_records = st.lists(
    st.builds(
        opt_record,
        st.integers(0, 65535),
        version=st.sampled_from((0, 0, 1, 255)),
        dnssec_ok=st.booleans(),
        options=_options,
        owner=st.sampled_from((b"\x00", b"\x00", b"\x01x\x00", b"\xc0\x0c")),
        extended_rcode=st.sampled_from((0, 0, 1, 255)),
    ),
    min_size=1,
    max_size=4,
).map(tuple)

mutations = st.one_of(
    st.builds(
        Mutation,
        st.just("flip_bits"),
        st.lists(st.integers(0, 8 * 600), min_size=1, max_size=6).map(lambda p: (tuple(p),)),
    ),
    st.builds(Mutation, st.just("truncate"), st.tuples(st.integers(0, 600))),
    st.builds(
        Mutation,
        st.just("overwrite"),
        st.tuples(st.integers(0, 600), st.binary(min_size=1, max_size=8)),
    ),
    st.builds(
        Mutation,
        st.just("insert"),
        st.tuples(st.integers(0, 600), st.binary(min_size=1, max_size=8)),
    ),
    st.builds(
        Mutation,
        st.just("set_counts"),
        st.tuples(*[st.sampled_from((0, 1, 2, 65535)) | st.integers(0, 65535)] * 4),
    ),
    st.builds(Mutation, st.just("set_flags"), st.tuples(st.integers(0, 0xFFFF))),
    st.builds(Mutation, st.just("add_opts"), st.tuples(_opt_records)),
    st.builds(
        Mutation,
        st.just("name_pointer"),
        st.tuples(
            st.sampled_from(("self", "loop", "forward", "beyond", "header")),
            st.integers(0, 300),
        ),
    ),
    st.builds(
        Mutation,
        st.just("long_name"),
        st.tuples(st.sampled_from((1, 62, 63, 64, 65, 127, 191, 192, 255)), st.integers(1, 9)),
    ),
)


def _apply(wire: bytes, changes: list[Mutation]) -> bytes:
    for change in changes:
        wire = change.apply(wire)
    return wire


# -- the stack under test -----------------------------------------------------------------


# -- strict judging of what comes out -----------------------------------------------------


# -- properties ---------------------------------------------------------------------------


@given(valid_queries)
@settings(max_examples=150)
def test_valid_queries_are_read_and_answered(query: bytes) -> None:
    """A well-formed query is classified (never an unexpected exception) and answered by a
    strictly valid response carrying its ID and its question as asked."""
    check_all(query)


@given(valid_queries, st.lists(mutations, min_size=1, max_size=3))
@settings(max_examples=600)
@example(base_query("www.example.com.", edns=1), [Mutation("long_name", (64, 2))]).via(
    "a BADVERS echo of a name with a reserved label type"
)
@example(raw_query(label_name([b"a.", b"b"]), flags=0x7800), []).via(
    "a NOTIMP echo of a label holding a dot"
)
def test_mutated_queries_get_only_defined_outcomes(query: bytes, changes: list[Mutation]) -> None:
    """Bit flips, cuts, lying counts and flags, extra OPTs, compression pointers and names
    past the limits: each packet is dropped, answered with an error, or answered (from the
    cache too: the undamaged query is asked first), always by a strictly valid response
    echoing its ID."""
    check_all(_apply(query, changes), warm=query)


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_random_bytes_get_only_defined_outcomes(data: bytes) -> None:
    """Bytes that were never DNS are dropped or answered FORMERR, never crash or hang."""
    check_all(data)


@given(valid_queries, st.lists(mutations, max_size=2))
@settings(max_examples=300)
def test_fast_path_never_accepts_what_the_full_path_rejects(
    query: bytes, changes: list[Mutation]
) -> None:
    """Where `read_plain_query` reads a packet, `read_request` reads it too, with the same ID,
    flags, question (name, type, class as written), EDNS, DO bit and UDP size."""
    check_agreement(_apply(query, changes))


@given(valid_queries, st.lists(mutations, max_size=2))
@settings(max_examples=200)
def test_fast_and_full_path_answer_alike(query: bytes, changes: list[Mutation]) -> None:
    """A plain query answered from the cache or blocked gets the same bytes over UDP (the
    fast path) as over TCP (the full path), unless the UDP answer had to be truncated."""
    data = _apply(query, changes)
    if check_plain(data) is None:
        return
    stack = responder()
    with bounded():
        fired(stack.respond(data, CLIENT, "tcp"))  # now cached (if cacheable)
        fast_before = stack.counters.fast
        udp = fired(stack.respond(data, CLIENT, "udp"))
        tcp = fired(stack.respond(data, CLIENT, "tcp"))
    if stack.counters.fast > fast_before:
        assert udp == tcp


_RICH = (
    base_query("www.example.com.", 1, ident=0x1111),
    base_query(
        "A-Long.Label-Name.example.",
        28,
        ident=0x2222,
        edns=0,
        dnssec_ok=True,
        options=[(10, b"12345678"), (65001, b"x" * 30)],
    ),
    base_query(dns.name.Name([b"\x00\xff-" * 20, b"x" * 63, b""]), 16, 3, ident=0x3333, edns=0),
)


@pytest.mark.parametrize("query", _RICH, ids=["plain", "edns-options", "odd-octets"])
def test_truncation_at_every_length(query: bytes) -> None:
    """Every strict prefix of a query is dropped (shorter than a header) or answered FORMERR
    with the query's ID; the fast path takes none of them; the whole query is answered."""
    assert isinstance(read(query), Request)
    for length in range(len(query)):
        prefix = query[:length]
        outcome = check_read_request(prefix)
        if length < 12:
            assert isinstance(outcome, DropPacket), length
        else:
            assert isinstance(outcome, RequestError) and outcome.rcode == tdns.EFORMAT, length
        assert check_plain(prefix) is None, length
        check_respond(prefix, "udp")


@pytest.mark.parametrize("kind", ["self", "loop", "forward", "beyond", "header"])
def test_compression_pointer_in_the_question_is_formerr(kind: str) -> None:
    """A question name that is a compression pointer (to itself, in a loop, forward, past
    the end, into the header) is never resolved: FORMERR with the ID, or dropped."""
    query = Mutation("name_pointer", (kind, 3)).apply(base_query("www.example.com.", ident=0x4444))
    outcome = check_read_request(query)
    assert isinstance(outcome, RequestError) and outcome.rcode == tdns.EFORMAT
    assert check_plain(query) is None
    check_all(query)


def test_pointer_loop_in_an_answer_record_is_formerr() -> None:
    """An answer record whose owner points at itself cannot make the parser loop."""
    query = bytearray(base_query("www.example.com.", ident=0x4545))
    query[6:8] = b"\x00\x01"
    owner = struct.pack("!H", 0xC000 | len(query))
    query += owner + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01"
    outcome = check_read_request(bytes(query))
    assert isinstance(outcome, RequestError) and outcome.rcode == tdns.EFORMAT
    check_all(bytes(query))


@pytest.mark.parametrize(
    ("label_length", "labels", "accepted"),
    [
        (63, 1, True),
        (63, 3, True),
        (64, 1, False),
        (127, 1, False),
        (1, 127, True),
        (63, 4, False),
        (1, 128, False),
    ],
)
def test_label_and_name_limits(label_length: int, labels: int, accepted: bool) -> None:
    """Labels up to 63 octets and names up to 255 octets are read; anything longer is
    FORMERR, on both paths."""
    query = Mutation("long_name", (label_length, labels)).apply(base_query("x.", ident=0x5555))
    outcome = check_read_request(query)
    assert isinstance(outcome, Request) is accepted
    assert (check_plain(query) is not None) is accepted
    check_all(query)


@pytest.mark.parametrize("count", [2, 3, 20])
def test_many_opt_records_are_formerr(count: int) -> None:
    """More than one OPT record is FORMERR (RFC 6891 section 6.1.1), on both paths."""
    query = Mutation("add_opts", ((opt_record(),) * count,)).apply(base_query("www.example.com."))
    outcome = check_read_request(query)
    assert isinstance(outcome, RequestError) and outcome.rcode == tdns.EFORMAT
    assert check_plain(query) is None
    check_all(query)


def test_question_label_holding_a_dot_is_answered_and_echoed() -> None:
    """A label holding a "." octet (`a\\.b.example`, legal on the wire; Unbound answers it)
    is resolved and answered over UDP and TCP, fresh and from the cache, with the question
    echoed byte for byte and the answer owned by that name, not by `a.b.example`."""
    name = dns.name.from_text("a\\.b.example")
    query = raw_query(label_name([b"a.b", b"example"]))
    assert read_plain_query(query) is None  # the full path takes it
    for transport in ("udp", "tcp"):
        stack = responder()
        for _fresh_then_cached in range(2):
            wire = fired(stack.respond(query, CLIENT, transport))
            response = check_response(query, wire, transport)
            assert response.rcode() == 0
            assert wire[12 : 12 + len(name.to_wire())] == name.to_wire()
            assert [rrset.name for rrset in response.answer] == [name]


def test_notimp_echo_of_a_reserved_label_type_is_a_valid_message() -> None:
    """A query with an unknown opcode whose name has a reserved label type (0x40) gets a
    valid NOTIMP (or FORMERR) response, not an echo of the bad name."""
    name = bytes([64]) + b"a" * 64 + b"\x00"
    query = raw_query(name, flags=0x2800)  # opcode 5 (UPDATE)
    check_read_request(query)


# -- TCP framing --------------------------------------------------------------------------


@given(
    st.lists(
        st.one_of(
            valid_queries.map(lambda w: struct.pack("!H", len(w)) + w),
            st.tuples(valid_queries, st.lists(mutations, min_size=1, max_size=2)).map(
                lambda qm: _framed(_apply(*qm))
            ),
            st.binary(max_size=40),
            st.just(b"\xff\xff"),
            st.just(b"\x00\x00"),
        ),
        max_size=6,
    ),
    st.lists(st.integers(1, 64), min_size=1, max_size=8),
)
@settings(max_examples=100)
def test_tcp_stream_of_any_bytes_is_handled(pieces: list[bytes], cuts: list[int]) -> None:
    """Any byte stream, in any segmentation, with huge length prefixes or half-sent frames:
    the connection never raises, every frame written back is a strictly valid response,
    and the buffer never holds more than one maximal frame."""
    factory = DNSStreamFactory(responder(), 30, 10, Clock())
    protocol = factory.buildProtocol(IPv4Address("TCP", CLIENT, 40000))
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", CLIENT, 40000))
    protocol.makeConnection(transport)
    stream = b"".join(pieces)
    offset = 0
    index = 0
    with bounded():
        while offset < len(stream):
            size = cuts[index % len(cuts)]
            protocol.dataReceived(stream[offset : offset + size])
            offset += size
            index += 1
    assert len(protocol._buffer) <= 2 + 65535  # type: ignore[attr-defined]
    out = transport.value()
    while out:
        (length,) = struct.unpack_from("!H", out)
        frame = out[2 : 2 + length]
        assert len(frame) == length
        try:
            response = parse_strictly(frame)
        except dns.exception.DNSException as exc:
            raise AssertionError(f"malformed TCP response {frame.hex()}: {exc!r}") from None
        assert response.flags & dns.flags.QR
        out = out[2 + length :]


def _framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire) & 0xFFFF) + wire[:65535]
