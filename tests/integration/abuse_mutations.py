"""Valid DNS queries, and the ways a hostile or broken network bends them.

The property tests (Hypothesis), the packet flood against the running server and the atheris
harness all break packets the same way, so each mutation is a plain function of the packet
and explicit parameters, and `Mutation` names one with its arguments (a readable repr when a
property test shrinks a failure):

- `flip_bits`, `truncate`, `overwrite`, `insert`: blind damage;
- `set_counts`, `set_flags`: header lies (wrong counts, QR, random opcodes, Z, RCODE bits);
- `add_opts`: extra OPT records (several OPTs, wrong version, odd options, a non-root owner);
- `name_pointer`: the question name replaced by a compression pointer that points forward,
  at itself, or into a two-pointer loop;
- `long_name`: a question name built label by label, past the 63-octet label and 255-octet
  name limits or right at them.

`Mutator` draws mutations from a seeded `random.Random` for the flood and the fuzz harness.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype

__all__ = [
    "MUTATIONS",
    "Mutation",
    "Mutator",
    "add_opts",
    "base_query",
    "flip_bits",
    "insert",
    "label_name",
    "long_name",
    "name_pointer",
    "opt_record",
    "overwrite",
    "parse_strictly",
    "question_end",
    "raw_query",
    "set_counts",
    "set_flags",
    "truncate",
]

HEADER = struct.Struct("!HBBHHHH")
OPT = 41

#: Query types a base query is drawn from (common ones, meta types, and a private one).
QTYPES = (1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 43, 46, 48, 65, 99, 251, 252, 255, 65280)
QCLASSES = (1, 3, 4, 254, 255)


def base_query(
    name: str | dns.name.Name,
    qtype: int = 1,
    qclass: int = 1,
    *,
    ident: int = 0,
    rd: bool = True,
    cd: bool = False,
    ad: bool = False,
    edns: int | None = None,
    payload: int = 1232,
    dnssec_ok: bool = False,
    options: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A well-formed query built by dnspython; `edns` None means no OPT record."""
    query = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(qtype),
        dns.rdataclass.RdataClass.make(qclass),
        use_edns=False if edns is None else edns,
        payload=payload,
        want_dnssec=dnssec_ok and edns is not None,
        options=[dns.edns.GenericOption(code, data) for code, data in options] or None,
        id=ident,
    )
    query.flags = dns.flags.Flag(0)
    if rd:
        query.flags |= dns.flags.RD
    if cd:
        query.flags |= dns.flags.CD
    if ad:
        query.flags |= dns.flags.AD
    return query.to_wire()


def label_name(labels: Sequence[bytes]) -> bytes:
    """A wire-format name from raw labels, with no limit checked (the root is added)."""
    return b"".join(bytes([len(label) & 0xFF]) + label for label in labels) + b"\x00"


def raw_query(
    name: bytes,
    qtype: int = 1,
    qclass: int = 1,
    *,
    ident: int = 0x1234,
    flags: int = 0x0100,
    additional: bytes = b"",
    arcount: int = 0,
) -> bytes:
    """A query assembled by hand around a wire-format `name` (which may break every rule)."""
    header = HEADER.pack(ident, flags >> 8, flags & 0xFF, 1, 0, 0, arcount)
    return header + name + struct.pack("!HH", qtype, qclass) + additional


def opt_record(
    udp_size: int = 1232,
    *,
    version: int = 0,
    dnssec_ok: bool = False,
    options: Sequence[tuple[int, bytes]] = (),
    owner: bytes = b"\x00",
    extended_rcode: int = 0,
) -> bytes:
    """An OPT pseudo-record; every field may be set to a value a server must refuse."""
    rdata = b"".join(struct.pack("!HH", code, len(data)) + data for code, data in options)
    ttl = (extended_rcode & 0xFF) << 24 | (version & 0xFF) << 16 | (0x8000 if dnssec_ok else 0)
    return owner + struct.pack("!HHIH", OPT, udp_size & 0xFFFF, ttl, len(rdata)) + rdata


def question_end(wire: bytes) -> int:
    """Offset just past the first question's name (12 when it cannot be walked)."""
    offset = 12
    while offset < len(wire):
        length = wire[offset]
        if length == 0:
            return offset + 1
        if length >= 0x40:
            return offset + 2
        offset += 1 + length
    return 12


def parse_strictly(wire: bytes) -> dns.message.Message:
    """dnspython's strict parse, judging an UPDATE's zone section as a question section.

    dnspython insists that an UPDATE's zone has type SOA, which the NOTIMP answer to a
    damaged UPDATE (echoing what was asked) need not have; every other rule still holds.
    """
    if len(wire) > 2 and (wire[2] >> 3) & 0xF == dns.opcode.UPDATE:
        wire = wire[:2] + bytes([wire[2] & 0x87]) + wire[3:]
    return dns.message.from_wire(wire)


# -- mutations: each takes the packet first and returns new bytes --------------------------


def flip_bits(wire: bytes, positions: Sequence[int]) -> bytes:
    """Flip the bits at `positions` (bit indexes, taken modulo the packet's bit length)."""
    if not wire:
        return wire
    data = bytearray(wire)
    for position in positions:
        bit = position % (len(data) * 8)
        data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


def truncate(wire: bytes, length: int) -> bytes:
    """The first `length` octets."""
    return wire[: max(0, length)]


def overwrite(wire: bytes, offset: int, data: bytes) -> bytes:
    """`data` written over the packet at `offset` (modulo its length), growing it if needed."""
    if not wire:
        return data
    start = offset % len(wire)
    return wire[:start] + data + wire[start + len(data) :]


def insert(wire: bytes, offset: int, data: bytes) -> bytes:
    """`data` inserted at `offset` (modulo the length plus one)."""
    start = offset % (len(wire) + 1)
    return wire[:start] + data + wire[start:]


def set_counts(wire: bytes, qd: int, an: int, ns: int, ar: int) -> bytes:
    """The four section counts replaced (values taken modulo 65536)."""
    if len(wire) < 12:
        return wire
    counts = struct.pack("!HHHH", qd & 0xFFFF, an & 0xFFFF, ns & 0xFFFF, ar & 0xFFFF)
    return wire[:4] + counts + wire[12:]


def set_flags(wire: bytes, flags: int) -> bytes:
    """The two flag octets (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE) replaced."""
    if len(wire) < 4:
        return wire
    return wire[:2] + struct.pack("!H", flags & 0xFFFF) + wire[4:]


def add_opts(wire: bytes, records: Sequence[bytes]) -> bytes:
    """OPT records (see `opt_record`) appended, with ARCOUNT raised to count them."""
    if len(wire) < 12:
        return wire
    arcount = (struct.unpack_from("!H", wire, 10)[0] + len(records)) & 0xFFFF
    return wire[:10] + struct.pack("!H", arcount) + wire[12:] + b"".join(records)


def name_pointer(wire: bytes, kind: str, distance: int = 0) -> bytes:
    """The question name replaced by a compression pointer.

    `kind` is "self" (a pointer to itself), "loop" (two pointers pointing at each other),
    "forward" (to a name placed `distance` octets after the question, past the data the
    decoder has read), "beyond" (past the end of the packet) or "header" (into the header).
    """
    if len(wire) < 12:
        return wire
    end = question_end(wire)
    rest = wire[end:]
    if kind == "self":
        name = struct.pack("!H", 0xC000 | 12)
    elif kind == "loop":
        # Offset 12 points to 14, which points back to 12; the type and class follow.
        name = struct.pack("!HH", 0xC000 | 14, 0xC000 | 12)
    elif kind == "forward":
        target = 12 + 2 + len(rest) + distance % 64
        name = struct.pack("!H", 0xC000 | (target & 0x3FFF))
        rest = rest + b"\x00" * (distance % 64) + b"\x03fwd\x00"
    elif kind == "beyond":
        name = struct.pack("!H", 0xC000 | ((len(wire) + 1 + distance) & 0x3FFF))
    else:
        name = struct.pack("!H", 0xC000 | (distance % 12))
    return wire[:12] + name + rest


def long_name(wire: bytes, label_length: int, labels: int) -> bytes:
    """The question name replaced by `labels` labels of `label_length` octets each.

    A length over 63 goes on the wire as it is: 64 to 191 read as a reserved label type,
    192 and more as a compression pointer.
    """
    if len(wire) < 12:
        return wire
    end = question_end(wire)
    body = b"".join(
        bytes([label_length & 0xFF]) + bytes([0x61 + index % 26]) * label_length
        for index in range(labels)
    )
    return wire[:12] + body + b"\x00" + wire[end:]


MUTATIONS: dict[str, Callable[..., bytes]] = {
    "flip_bits": flip_bits,
    "truncate": truncate,
    "overwrite": overwrite,
    "insert": insert,
    "set_counts": set_counts,
    "set_flags": set_flags,
    "add_opts": add_opts,
    "name_pointer": name_pointer,
    "long_name": long_name,
}


@attrs.frozen
class Mutation:
    """One mutation by name with its arguments, applied with `apply`."""

    kind: str
    args: tuple[Any, ...] = ()

    def apply(self, wire: bytes) -> bytes:
        """The packet with this mutation done to it."""
        return MUTATIONS[self.kind](wire, *self.args)


#: The kinds `Mutator` draws from, bit flips twice as often as the others.
_MUTATOR_KINDS = (
    "flip_bits",
    "flip_bits",
    "truncate",
    "overwrite",
    "insert",
    "set_counts",
    "set_flags",
    "add_opts",
    "name_pointer",
    "long_name",
)


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


class Mutator:
    """Seeded, fast source of mutated queries (no Hypothesis: hundreds of thousands a run)."""

    def __init__(self, seed: int, names: Sequence[str] = ("www.test.", "nx.test.")) -> None:
        self.rng = random.Random(seed)
        self.bases = [self._base(names) for _ in range(256)]

    def _base(self, names: Sequence[str]) -> bytes:
        rng = self.rng
        edns = rng.choice((None, 0, 0, 1))
        options: list[tuple[int, bytes]] = []
        if edns is not None and rng.random() < 0.3:
            options = [
                (rng.choice((3, 8, 10, 12, 15, 65001)), _random_bytes(rng, rng.randrange(12)))
            ]
        name = rng.choice(names) if rng.random() < 0.5 else self._random_name()
        return base_query(
            name,
            rng.choice(QTYPES),
            rng.choice(QCLASSES) if rng.random() < 0.1 else 1,
            ident=rng.getrandbits(16),
            rd=rng.random() < 0.9,
            cd=rng.random() < 0.1,
            edns=edns,
            payload=rng.choice((0, 512, 1232, 4096, 65535)),
            dnssec_ok=rng.random() < 0.3,
            options=options,
        )

    def _random_name(self) -> dns.name.Name:
        rng = self.rng
        labels = [
            bytes(
                rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789-_.\\\x00\xff") for _ in range(n)
            )
            for n in (rng.randint(1, 20) for _ in range(rng.randint(1, 5)))
        ]
        return dns.name.Name([*labels, b""])

    def mutation(self) -> Mutation:
        """One random mutation."""
        rng = self.rng
        kind = rng.choice(_MUTATOR_KINDS)
        if kind == "flip_bits":
            return Mutation(kind, (tuple(rng.getrandbits(12) for _ in range(rng.randint(1, 4))),))
        if kind == "truncate":
            return Mutation(kind, (rng.randrange(64),))
        if kind in ("overwrite", "insert"):
            return Mutation(kind, (rng.randrange(512), _random_bytes(rng, rng.randint(1, 8))))
        if kind == "set_counts":
            counts = [rng.choice((0, 1, 2, 255, 65535, rng.getrandbits(16))) for _ in range(4)]
            return Mutation(kind, tuple(counts))
        if kind == "set_flags":
            return Mutation(
                kind, (rng.getrandbits(16) & ~0x8000 if rng.random() < 0.8 else 0x8000,)
            )
        if kind == "add_opts":
            records = tuple(
                opt_record(
                    rng.choice((0, 512, 1232, 65535)),
                    version=rng.choice((0, 0, 1, 255)),
                    dnssec_ok=rng.random() < 0.5,
                    options=[(rng.getrandbits(16), _random_bytes(rng, rng.randrange(6)))]
                    if rng.random() < 0.5
                    else [],
                    owner=b"\x00" if rng.random() < 0.9 else b"\x01x\x00",
                )
                for _ in range(rng.randint(1, 3))
            )
            return Mutation(kind, (records,))
        if kind == "name_pointer":
            pointer = rng.choice(("self", "loop", "forward", "beyond", "header"))
            return Mutation(kind, (pointer, rng.randrange(200)))
        length = rng.choice((1, 62, 63, 64, 65, 127, 191, 192))
        return Mutation(kind, (length, rng.randint(1, 300 // length + 2)))

    def packet(self) -> bytes:
        """A base query with one to three random mutations done to it."""
        wire = self.rng.choice(self.bases)
        for _ in range(self.rng.randint(1, 3)):
            wire = self.mutation().apply(wire)
        return wire
