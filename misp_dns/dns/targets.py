"""What an answer leads a client to: the names of its CNAME/DNAME chain and its addresses.

`answer_targets` reads an answer section the way a stub resolver follows it: from the
question's name, a CNAME owned by the current name leads to its target; failing that, a
DNAME owned by a parent of the current name rewrites that parent into the DNAME's target
(RFC 6672 section 2.2), which is the name the upstream's synthesized CNAME names too. The
chain stops at a name nothing leads on from, at a loop, or after `MAX_HOPS` steps; records
that the chain does not reach are left out, so an upstream cannot make an answer look
worse (or better) than where it leads. The addresses are those of every A and AAAA record
of the answer section, packed, as a client may use any of them.

The policies judge these (`IAnswerPolicy.decide_answer`); the resolver asks once per
answer, not per hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.names import dns

from misp_dns.names import text_of_labels

__all__ = ["MAX_HOPS", "answer_targets"]

# More than any resolver follows (Unbound: 11, BIND: 16 with DNAME).
MAX_HOPS = 16

Targets = tuple[tuple[str, ...], tuple[bytes, ...]]


def answer_targets(wire_name: bytes, records: Sequence[dns.RRHeader]) -> Targets | None:
    """(chain names after the question's, addresses) of an answer section, None when both
    are empty.

    `wire_name` is the question's name in wire format. The names are written as policies
    see names (as `presentation_name` writes a question's): lower case, no trailing dot,
    a "." inside a label as `\\.`.
    """
    addresses = tuple(
        record.payload.address  # type: ignore[union-attr]
        for record in records
        if record.type == dns.A or record.type == dns.AAAA
    )
    names = _chain(_dotted(wire_name).lower(), records) if _has_redirections(records) else ()
    if not names and not addresses:
        return None
    return names, addresses


def _dotted(wire_name: bytes) -> bytes:
    """b"\\x03www\\x07example\\x00" as b"www.example", as `ExactName` writes record names."""
    labels = []
    offset = 0
    while length := wire_name[offset]:
        labels.append(wire_name[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return text_of_labels(labels)


def _for_policies(name: bytes) -> str:
    """An `ExactName` text as `presentation_name` writes names: only a "." is escaped."""
    if b"\\" in name:
        name = name.replace(b"\\\\", b"\\")
    return name.decode("ascii", "backslashreplace")


def _has_redirections(records: Sequence[dns.RRHeader]) -> bool:
    return any(record.type == dns.CNAME or record.type == dns.DNAME for record in records)


def _chain(qname: bytes, records: Sequence[dns.RRHeader]) -> tuple[str, ...]:
    cnames: dict[bytes, bytes] = {}
    dnames: list[tuple[bytes, bytes]] = []
    for record in records:
        if record.type == dns.CNAME:
            cnames.setdefault(record.name.name.lower(), _target(record.payload))
        elif record.type == dns.DNAME:
            dnames.append((record.name.name.lower(), _target(record.payload)))
    names: list[str] = []
    seen = {qname}
    current = qname
    for _ in range(MAX_HOPS):
        following = cnames.get(current)
        if following is None:
            following = _rewritten(current, dnames)
        if following is None or following in seen:
            break
        seen.add(following)
        names.append(_for_policies(following))
        current = following
    return tuple(names)


def _target(payload: Any) -> bytes:
    return bytes(payload.name.name).lower()


def _rewritten(name: bytes, dnames: list[tuple[bytes, bytes]]) -> bytes | None:
    """`name` with its part under a DNAME owner replaced by the DNAME's target, or None."""
    for owner, target in dnames:
        if owner and name.endswith(b"." + owner):
            prefix = name[: -len(owner)]  # ends with the dot before the owner
            if _escapes_last_octet(prefix[:-1]):
                continue  # that dot is inside a label: `name` is not below `owner`
            return prefix + target if target else prefix[:-1]
    return None


def _escapes_last_octet(text: bytes) -> bool:
    """Whether `text` ends in a backslash that escapes what follows it (an odd run)."""
    run = len(text) - len(text.rstrip(b"\\"))
    return run % 2 == 1
