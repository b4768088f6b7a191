"""Run the real `dig` binary and read its output into a small, typed result.

dig is the tool users debug with; it parses replies with BIND's own code and says so when a
reply is malformed ("Got bad packet", "Message parser reports malformed message packet").
`run_dig` always asks for comments so the header, flags, EDNS line and EDE are printed, and
reads the answer, authority and additional sections back into dnspython RRsets.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

import attrs
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DigResult", "run_dig"]

_MALFORMED = (
    "Got bad packet",
    "malformed message packet",
    "Message parser reports",
    "Question section mismatch",
    "ID mismatch",
)
_HEADER = re.compile(r";; ->>HEADER<<- opcode: (\w+), status: (\w+), id: (\d+)")
_FLAGS = re.compile(
    r";; flags:([\w ]*); QUERY: (\d+), ANSWER: (\d+), AUTHORITY: (\d+), ADDITIONAL: (\d+)"
)
_EDNS = re.compile(r"; EDNS: version: (\d+), flags:([\w ]*); udp: (\d+)")
_EDE = re.compile(r"; EDE: (\d+)")
_SIZE = re.compile(r";; MSG SIZE\s+rcvd: (\d+)")
_SECTIONS = {
    ";; ANSWER SECTION:": "answer",
    ";; AUTHORITY SECTION:": "authority",
    ";; ADDITIONAL SECTION:": "additional",
}


@attrs.frozen
class DigResult:
    """What dig printed about one reply."""

    output: str
    opcode: str
    status: str
    qid: int
    flags: frozenset[str]
    counts: tuple[int, int, int, int]
    edns_version: int | None
    edns_flags: frozenset[str]
    edns_udp: int | None
    ede_codes: tuple[int, ...]
    size: int
    answer: tuple[dns.rrset.RRset, ...]
    authority: tuple[dns.rrset.RRset, ...]
    additional: tuple[dns.rrset.RRset, ...]
    retried_tcp: bool

    @property
    def answer_records(self) -> int:
        """How many records the answer section holds."""
        return sum(len(rrset) for rrset in self.answer)


def run_dig(
    dig: str,
    host: str,
    port: int,
    name: str,
    rdtype: str = "A",
    options: Sequence[str] = (),
    timeout: float = 3.0,
) -> DigResult:
    """Run `dig @host -p port name rdtype +tries=1 +time=... options` and read its output."""
    command = [
        dig,
        f"@{host}",
        "-p",
        str(port),
        name,
        rdtype,
        "+tries=1",
        f"+time={max(1, round(timeout))}",
        "+comments",
        "+nocookie",
        *options,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout * 3 + 5)
    output = done.stdout + done.stderr
    for marker in _MALFORMED:
        if marker in output:
            raise AssertionError(f"dig reports a malformed reply ({marker!r}):\n{output}")
    if done.returncode != 0:
        raise AssertionError(f"dig exited {done.returncode}:\n{output}")
    return _read(output)


def _read(output: str) -> DigResult:
    header = _HEADER.search(output)
    flags = _FLAGS.search(output)
    if header is None or flags is None:
        raise AssertionError(f"dig printed no reply header:\n{output}")
    edns = _EDNS.search(output)
    size = _SIZE.search(output)
    sections: dict[str, list[dns.rrset.RRset]] = {
        "answer": [],
        "authority": [],
        "additional": [],
    }
    current: str | None = None
    for line in output.splitlines():
        if line in _SECTIONS:
            current = _SECTIONS[line]
        elif not line.strip() or line.startswith(";"):
            if not line.strip():
                current = None
        elif current is not None:
            _add_record(sections[current], line)
    return DigResult(
        output=output,
        opcode=header.group(1),
        status=header.group(2),
        qid=int(header.group(3)),
        flags=frozenset(flags.group(1).split()),
        counts=(
            int(flags.group(2)),
            int(flags.group(3)),
            int(flags.group(4)),
            int(flags.group(5)),
        ),
        edns_version=int(edns.group(1)) if edns else None,
        edns_flags=frozenset(edns.group(2).split()) if edns else frozenset(),
        edns_udp=int(edns.group(3)) if edns else None,
        ede_codes=tuple(int(code) for code in _EDE.findall(output)),
        size=int(size.group(1)) if size else 0,
        answer=tuple(sections["answer"]),
        authority=tuple(sections["authority"]),
        additional=tuple(sections["additional"]),
        retried_tcp="retrying in TCP mode" in output,
    )


def _add_record(rrsets: list[dns.rrset.RRset], line: str) -> None:
    owner, ttl, rdclass, rdtype, rest = ([*line.split(None, 4), ""])[:5]
    name = dns.name.from_text(owner)
    klass = dns.rdataclass.from_text(rdclass)
    kind = dns.rdatatype.from_text(rdtype)
    rdata = dns.rdata.from_text(klass, kind, rest)
    for rrset in rrsets:
        if rrset.name == name and rrset.rdclass == klass and rrset.rdtype == kind:
            rrset.add(rdata, int(ttl))
            return
    rrset = dns.rrset.RRset(name, klass, kind)
    rrset.add(rdata, int(ttl))
    rrsets.append(rrset)
