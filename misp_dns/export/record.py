"""The query record: one JSON object per answered query, the same for every sink.

The record of a `QueryEvent` is a fixed contract (the README's "The query log"),
compatible with the reference Log Exporter's records so decoders written for it keep
working, plus our own `policy`:

    {"timestamp": "2025-11-26T10:10:30.567Z", "clientIp": "127.0.0.1", "protocol": "Udp",
     "question": {"questionName": "stemtopx.com", "questionType": "A", "questionClass": "IN"},
     "responseCode": "NxDomain", "responseType": "Blocked", "answers": [],
     "edns": [{"errType": "Blocked", "message": "source=misp-connector;domain=stemtopx.com"}],
     "policy": {"source": "misp-connector", "domain": "stemtopx.com", "mispEventId": "1234", ...}}

- `timestamp`: when the query arrived, UTC, milliseconds, `Z`.
- `questionName` and each answer's `name`: lower case, without the trailing dot (the root
  is "."); bytes outside printable ASCII are written `\\DDD`.
- `answers`: the answer section, each record with the TTL the client got and its data in
  presentation (zone file) format, names fully qualified; types Twisted does not decode are
  written in the RFC 3597 generic form `\\# <length> <hex>` unless handled here (DS, DNSKEY,
  RRSIG, CAA, TLSA and their kin). `dnssecStatus` is "Secure" when the answer carried AD from a
  validating upstream, else "Disabled" (misp-dns does not validate itself).
- `edns`: the Extended DNS Errors the response carried (none when the query had no EDNS,
  since the response then has no OPT), each `{"errType": <RFC 8914 name>, "message":
  <EXTRA-TEXT, whole>}`.
- `responseRtt`: the upstream round trip in milliseconds, on `Recursive` records only.
- `policy`: present when a policy decided about the query: `source`, `domain` (the matched
  name) or, for a listed address, `ip` (the matched address or range), `trigger` (what
  was matched: `qname`, the question's name; `cname`, a name of the answer's CNAME/DNAME
  chain; `ip`, an address of its A/AAAA records), the MISP provenance fields that are
  known, `action` when a block answers otherwise than NXDOMAIN (`nodata`, `drop`,
  `local-data`: an RPZ policy's actions), and `"enforced": false` when the policy is in
  monitor mode.
- `answersTruncated`: `true`, right after `answers`, when the line would have been over
  `MAX_RECORD_BYTES` (60 KiB of UTF-8): `answers` then holds only the first answers that fit,
  each whole. Below that size a record never has the key and is not changed at all.

One `RecordEncoder` writes the records: the exporter makes one and owns it. It builds each
record straight as its JSON line, reusing the JSON of the parts that repeat from query to
query (question, client, EDE list, policy, the answers of a cached entry), and hands a
batch out as a `RecordBatch`: a sequence of `QueryRecord`s (read-only mappings that carry
their line, made only for a sink that reads them) whose NDJSON bytes are made once, so
every sink shares one serialization.
"""

from __future__ import annotations

import base64
import bisect
import json
import re
import socket
import struct
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from io import BytesIO
from typing import TYPE_CHECKING, Any, overload

from twisted.names import dns

from misp_dns.event import Kind
from misp_dns.interfaces import ANSWER_NXDOMAIN, TRIGGER_IP, Action, Decision
from misp_dns.names import ExactMessage, labels
from misp_dns.qtypes import qtype_name

if TYPE_CHECKING:
    from misp_dns.event import Answer, PacketBody, QueryEvent

#: An answer's `responseType`, its record from `responseCode` to `"answers":`, what follows
#: the answers without EDNS and with it, whether the answers are to be written, whether
#: `is_blocking` keeps the record, and its `edns` and `policy` JSON.
_ShapeTexts = tuple[str, str, str, str, bool, bool, str, str]
#: A query as the exporter queues it: `QueryEvent`'s fields, in their order.
EventFields = tuple[float, str, str, bytes, bool, "Answer", int, int]
#: What an answer's `_ShapeTexts` are made of: RCODE, kind, EDE, policy decision, and
#: whether it has answers to write.
_Shape = tuple[int, Kind, tuple[tuple[int, str], ...], "Decision | None", bool]

__all__ = [
    "EDE_NAMES",
    "MAX_RECORD_BYTES",
    "EventFields",
    "QueryRecord",
    "RecordBatch",
    "RecordEncoder",
    "answer_is_blocking",
    "class_name",
    "ede_name",
    "encode_records",
    "format_timestamp",
    "is_blocking",
    "rcode_name",
    "rdata_text",
]

#: Extended DNS Error INFO-CODE names (RFC 8914 section 4 and the IANA registry).
EDE_NAMES: Mapping[int, str] = {
    0: "Other Error",
    1: "Unsupported DNSKEY Algorithm",
    2: "Unsupported DS Digest Type",
    3: "Stale Answer",
    4: "Forged Answer",
    5: "DNSSEC Indeterminate",
    6: "DNSSEC Bogus",
    7: "Signature Expired",
    8: "Signature Not Yet Valid",
    9: "DNSKEY Missing",
    10: "RRSIGs Missing",
    11: "No Zone Key Bit Set",
    12: "NSEC Missing",
    13: "Cached Error",
    14: "Not Ready",
    15: "Blocked",
    16: "Censored",
    17: "Filtered",
    18: "Prohibited",
    19: "Stale NXDOMAIN Answer",
    20: "Not Authoritative",
    21: "Not Supported",
    22: "No Reachable Authority",
    23: "Network Error",
    24: "Invalid Data",
    25: "Signature Expired before Valid",
    26: "Too Early",
    27: "Unsupported NSEC3 Iterations Value",
    28: "Unable to conform to policy",
    29: "Synthesized",
    30: "Invalid Query Type",
}

# The reference exporter's names of response codes (its enum member names).
_RCODE_NAMES: Mapping[int, str] = {
    0: "NoError",
    1: "FormatError",
    2: "ServerFailure",
    3: "NxDomain",
    4: "NotImplemented",
    5: "Refused",
    6: "YXDomain",
    7: "YXRRSet",
    8: "NXRRSet",
    9: "NotAuth",
    10: "NotZone",
    11: "DSOTYPENI",
    16: "BADVERS",
    17: "BADKEY",
    18: "BADTIME",
    19: "BADMODE",
    20: "BADNAME",
    21: "BADALG",
    22: "BADTRUNC",
    23: "BADCOOKIE",
}


_CLASS_NAMES: Mapping[int, str] = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}

_PROTOCOLS: Mapping[str, str] = {"udp": "Udp", "tcp": "Tcp"}

# Bytes written as themselves in names and character strings; the rest become \DDD.
_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("\\"), ord('"')}
# The bytes of a name that `_PLAIN` leaves out, as a pattern.
_UNPLAIN = re.compile(rb'[^\x21-\x7e]|[\\"]')
_NO_EXTRA: frozenset[int] = frozenset()
# What JSON (ensure_ascii off, as `_dumps`) writes otherwise than as itself in a string.
_JSON_SPECIAL = re.compile(r'[\x00-\x1f\\"]')


class QueryRecord(Mapping[str, Any]):
    """A query record as sinks get it: its JSON line, read as a mapping when asked.

    `line` is the compact JSON object (no newline); `response_type` and `timestamp` are at
    hand without parsing. Reading it as a mapping (`record["question"]`) parses the line
    once, so a sink that only writes lines never pays for a dict.
    """

    __slots__ = ("_fields", "line", "response_type", "timestamp")

    def __init__(self, line: str, response_type: str, timestamp: str) -> None:
        self.line = line
        self.response_type = response_type
        self.timestamp = timestamp
        self._fields: dict[str, Any] | None = None

    def _mapping(self) -> dict[str, Any]:
        fields = self._fields
        if fields is None:
            fields = self._fields = json.loads(self.line)
        return fields

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return f"QueryRecord({self.line})"


#: Where a record's line holds its timestamp (`{"timestamp":"2025-11-26T10:10:30.567Z",`).
_STAMP_SLICE = slice(len('{"timestamp":"'), len('{"timestamp":"2025-11-26T10:10:30.567Z'))


class RecordBatch(Sequence[QueryRecord]):
    """Records as the exporter hands them to the sinks: their lines, one `QueryRecord`
    made only for a sink that reads one, and their NDJSON bytes (`encode_records`) made
    once for every sink that writes them."""

    __slots__ = ("_data", "kinds", "lines")

    def __init__(self, lines: list[str], kinds: list[str]) -> None:
        self.lines = lines
        self.kinds = kinds
        self._data: bytes | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> QueryRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[QueryRecord]: ...

    def __getitem__(self, index: int | slice) -> QueryRecord | Sequence[QueryRecord]:
        if isinstance(index, slice):
            return RecordBatch(self.lines[index], self.kinds[index])
        line = self.lines[index]
        return QueryRecord(line, self.kinds[index], line[_STAMP_SLICE])

    def __iter__(self) -> Iterator[QueryRecord]:
        for line, kind in zip(self.lines, self.kinds, strict=True):
            yield QueryRecord(line, kind, line[_STAMP_SLICE])

    @property
    def data(self) -> bytes:
        """The records as NDJSON bytes, as `encode_records` writes them."""
        data = self._data
        if data is None:
            data = self._data = _ndjson(self.lines)
        return data

    def __repr__(self) -> str:
        return f"RecordBatch({len(self.lines)} records)"


def class_name(code: int) -> str:
    """The mnemonic of a record class: "IN", or "CLASS<n>" (RFC 3597)."""
    return _CLASS_NAMES.get(code) or f"CLASS{code}"


def rcode_name(code: int) -> str:
    """The response code as the reference exporter names it: "NoError", "NxDomain", ..."""
    return _RCODE_NAMES.get(code) or f"RCODE{code}"


def ede_name(code: int) -> str:
    """The RFC 8914 name of an Extended DNS Error INFO-CODE ("Blocked" for 15)."""
    return EDE_NAMES.get(code) or f"EDE{code}"


def _milliseconds(seconds: float) -> int:
    # A microsecond of slack keeps 0.567 from printing as .566 through float rounding.
    return int(seconds * 1000 + 0.001)


def _millisecond_text(total: int) -> str:
    whole, millis = divmod(total, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{millis:03d}Z"


def format_timestamp(seconds: float) -> str:
    """POSIX seconds as ISO 8601 UTC with milliseconds: "2025-11-26T10:10:30.567Z"."""
    return _millisecond_text(_milliseconds(seconds))


def _escaped(data: bytes, extra_plain: frozenset[int] = _NO_EXTRA) -> str:
    if extra_plain is _NO_EXTRA:
        # Most names hold only plain bytes: found at C speed.
        if _UNPLAIN.search(data) is None:
            return data.decode("ascii")
    elif all(byte in _PLAIN or byte in extra_plain for byte in data):
        return data.decode("ascii")
    out = []
    for byte in data:
        if byte in _PLAIN or byte in extra_plain:
            out.append(chr(byte))
        elif byte in (0x5C, 0x22):
            out.append("\\" + chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def _labels_text(raw_labels: Sequence[bytes]) -> str:
    """Labels joined by dots, each escaped, a "." inside one written `\\.`."""
    return ".".join(_escaped(label).replace(".", "\\.") for label in raw_labels)


def _name_text(name: bytes) -> str:
    """A record's name (`ExactName` text, no trailing dot) in presentation format."""
    if b"\\" in name:
        return _labels_text(labels(name))
    return _escaped(name)


def _json_string(text: str) -> str:
    """`text` as a JSON string, exactly as `_dumps` writes it, without its machinery for
    the common text that needs no escape."""
    if _JSON_SPECIAL.search(text) is None:
        return f'"{text}"'
    return _dumps(text)


def _owner(name: bytes) -> str:
    """An owner name as the record shows it: lower case, no trailing dot, root as "."."""
    name = name.rstrip(b".").lower()
    return _name_text(name) if name else "."


def _question_name(question: bytes) -> str:
    """The question's name (wire format) as the record shows it: as `_owner` shows names,
    and a "." inside a label written `\\.`, so `a\\.b.example` is not `a.b.example`."""
    found = []
    offset = 0
    length = question[0]
    while length:
        found.append(question[offset + 1 : offset + 1 + length].lower())
        offset += 1 + length
        length = question[offset]
    return _labels_text(found) or "."


def _fqdn(name: dns.Name | bytes) -> str:
    """A domain name inside RDATA, fully qualified as zone files write it."""
    raw = name.name if isinstance(name, dns.Name) else name
    raw = raw.rstrip(b".")
    return _name_text(raw) + "." if raw else "."


def _charstr(data: bytes) -> str:
    return '"' + _escaped(data, frozenset({0x20})) + '"'


def _generic(data: bytes) -> str:
    """The RFC 3597 form of RDATA nothing here knows how to show."""
    return f"\\# {len(data)} {data.hex().upper()}" if data else "\\# 0"


def _wire_rdata(payload: Any) -> bytes:
    if isinstance(payload, dns.UnknownRecord):
        return bytes(payload.data)
    stream = BytesIO()
    payload.encode(stream, None)
    return stream.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """An uncompressed wire name (as RRSIG's signer) at `offset`; its text and the end."""
    found = []
    while True:
        length = data[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(data):
            raise ValueError("bad name in RDATA")
        found.append(data[offset : offset + length])
        offset += length
    return _labels_text(found) + "." if found else ".", offset


def _ds(data: bytes) -> str:
    key_tag, algorithm, digest_type = struct.unpack_from("!HBB", data)
    return f"{key_tag} {algorithm} {digest_type} {data[4:].hex().upper()}"


def _dnskey(data: bytes) -> str:
    flags, protocol, algorithm = struct.unpack_from("!HBB", data)
    return f"{flags} {protocol} {algorithm} {_b64(data[4:])}"


def _rrsig(data: bytes) -> str:
    covered, algorithm, labels, ttl, expiration, inception, key_tag = struct.unpack_from(
        "!HBBIIIH", data
    )
    signer, end = _read_name(data, 18)
    stamp = "%Y%m%d%H%M%S"
    return (
        f"{qtype_name(covered)} {algorithm} {labels} {ttl}"
        f" {time.strftime(stamp, time.gmtime(expiration))}"
        f" {time.strftime(stamp, time.gmtime(inception))}"
        f" {key_tag} {signer} {_b64(data[end:])}"
    )


def _caa(data: bytes) -> str:
    flags, tag_length = data[0], data[1]
    tag = data[2 : 2 + tag_length]
    if len(tag) != tag_length or not tag.isalnum():
        raise ValueError("bad CAA tag")
    return f"{flags} {tag.decode('ascii')} {_charstr(data[2 + tag_length :])}"


def _tlsa(data: bytes) -> str:
    usage, selector, matching = struct.unpack_from("!BBB", data)
    return f"{usage} {selector} {matching} {data[3:].hex().upper()}"


_FROM_WIRE: Mapping[int, Callable[[bytes], str]] = {
    43: _ds,
    59: _ds,
    32769: _ds,
    48: _dnskey,
    60: _dnskey,
    46: _rrsig,
    257: _caa,
    52: _tlsa,
    53: _tlsa,
}


def _txt(payload: Any) -> str:
    return " ".join(_charstr(part) for part in payload.data)


def _single_name(payload: Any) -> str:
    return _fqdn(payload.name)


def _soa(p: Any) -> str:
    return (
        f"{_fqdn(p.mname)} {_fqdn(p.rname)} {p.serial} {p.refresh} {p.retry} {p.expire} {p.minimum}"
    )


_FROM_PAYLOAD: Mapping[type, Callable[[Any], str]] = {
    dns.Record_A: lambda p: p.dottedQuad(),
    dns.Record_AAAA: lambda p: socket.inet_ntop(socket.AF_INET6, p.address),
    dns.Record_NS: _single_name,
    dns.Record_CNAME: _single_name,
    dns.Record_DNAME: _single_name,
    dns.Record_PTR: _single_name,
    dns.Record_MB: _single_name,
    dns.Record_MD: _single_name,
    dns.Record_MF: _single_name,
    dns.Record_MG: _single_name,
    dns.Record_MR: _single_name,
    dns.Record_MX: lambda p: f"{p.preference} {_fqdn(p.name)}",
    dns.Record_TXT: _txt,
    dns.Record_SPF: _txt,
    dns.Record_SOA: _soa,
    dns.Record_SRV: lambda p: f"{p.priority} {p.weight} {p.port} {_fqdn(p.target)}",
    dns.Record_AFSDB: lambda p: f"{p.subtype} {_fqdn(p.hostname)}",
    dns.Record_RP: lambda p: f"{_fqdn(p.mbox)} {_fqdn(p.txt)}",
    dns.Record_MINFO: lambda p: f"{_fqdn(p.rmailbx)} {_fqdn(p.emailbx)}",
    dns.Record_HINFO: lambda p: f"{_charstr(p.cpu)} {_charstr(p.os)}",
    dns.Record_SSHFP: lambda p: f"{p.algorithm} {p.fingerprintType} {p.fingerprint.hex().upper()}",
    dns.Record_NAPTR: lambda p: (
        f"{p.order} {p.preference} {_charstr(p.flags.string)} {_charstr(p.service.string)}"
        f" {_charstr(p.regexp.string)} {_fqdn(p.replacement)}"
    ),
}


def rdata_text(record: dns.RRHeader) -> str:
    """A record's data in presentation format (RFC 1035 section 5.1; RFC 3597 otherwise)."""
    payload = record.payload
    try:
        show = _FROM_PAYLOAD.get(type(payload))
        if show is not None:
            return show(payload)
        data = _wire_rdata(payload)
        from_wire = _FROM_WIRE.get(record.type)
        if from_wire is not None:
            try:
                return from_wire(data)
            except (ValueError, struct.error, IndexError):
                pass
        return _generic(data)
    except Exception:
        # A record Twisted could decode but not re-encode: still say what it was.
        return _generic(b"")


def _answer_head(record: dns.RRHeader) -> str:
    """One answer's JSON object up to its TTL, as `_dumps` writes the README's fields."""
    return (
        f'{{"name":{_json_string(_owner(record.name.name))},'
        f'"recordType":{_json_string(qtype_name(record.type))},'
        f'"recordClass":{_json_string(class_name(record.cls))},"recordTtl":'
    )


def _answer_tail(record: dns.RRHeader, status: str) -> str:
    """One answer's JSON object after its TTL."""
    return f',"recordData":{_json_string(rdata_text(record))},"dnssecStatus":"{status}"}}'


def _answer(record: dns.RRHeader, status: str, age: int) -> str:
    """One answer's JSON object, as `_dumps` writes the README's fields in their order."""
    ttl = max(0, record.ttl - age) if age else record.ttl
    return f"{_answer_head(record)}{int(ttl)}{_answer_tail(record, status)}"


def _answer_list(records: Sequence[dns.RRHeader], authentic: bool, age: int) -> str:
    status = "Secure" if authentic else "Disabled"
    return "[" + ",".join([_answer(record, status, age) for record in records]) + "]"


def _packet_answers(question: bytes, packet: PacketBody) -> Sequence[dns.RRHeader]:
    """The answer section of an answer carried only as a packet (blocked, minimal ANY)."""
    try:
        stream = BytesIO()
        stream.write(struct.pack("!HHHHHH", 0, 0x8000, 1, *packet.counts))
        stream.write(question)
        stream.write(packet.body)
        message = ExactMessage()
        message.fromStr(stream.getvalue())
    except Exception:
        return ()
    return message.answers


def _policy(decision: Decision) -> dict[str, Any]:
    matched = "ip" if decision.trigger == TRIGGER_IP else "domain"
    policy: dict[str, Any] = {
        "source": decision.source,
        matched: decision.indicator,
        "trigger": decision.trigger,
    }
    provenance = decision.provenance
    for key, value in (
        ("mispEventId", provenance.event_id),
        ("mispEventUuid", provenance.event_uuid),
        ("mispAttributeUuid", provenance.attribute_uuid),
        ("mispEventInfo", provenance.event_info),
    ):
        if value:
            policy[key] = value
    if decision.answer != ANSWER_NXDOMAIN and decision.action is Action.BLOCK:
        policy["action"] = decision.answer
    if not decision.enforced:
        policy["enforced"] = False
    return policy


def _protocol_json(transport: str) -> str:
    return _dumps(_PROTOCOLS.get(transport) or transport.capitalize())


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_dumps = _encoder.encode

_PROTOCOL_JSON: Mapping[str, str] = {"udp": '"Udp"', "tcp": '"Tcp"'}
_KIND_VALUES: Mapping[Kind, str] = {kind: kind.value for kind in Kind}

#: Entries each memo of a `RecordEncoder` holds before it is emptied. A memo emptied when
#: full keeps nothing of names asked in turn once there are more of them than it holds
#: (with 8,192, the 10,000 names of bench/'s sinks scenario cost 7.7 us a record instead of
#: 1.5 us); 32,768 questions and their answers take about 12 MB when full.
MEMO_SIZE = 32768
#: Characters of answers JSON a `RecordEncoder` keeps: one answer can be tens of kB.
ANSWER_MEMO_CHARS = 4 << 20
#: The most a record's line may take, in UTF-8 bytes, before its answers are cut. An answer
#: of 64 KB of binary TXT data is about 230 kB of JSON: thousands of those waiting for a
#: receiver that is down filled hundreds of megabytes. 60 KiB keeps every record that is not
#: made of huge answers whole, and leaves room for a syslog header (a few hundred bytes)
#: within one UDP datagram (65,507 bytes).
MAX_RECORD_BYTES = 60 * 1024
_TRUNCATED_MARK = ',"answersTruncated":true'
# A character takes at most 6 bytes as the sinks write it (a lone surrogate, backslashed).
_MAX_BYTES_PER_CHAR = 6


class RecordEncoder:
    """Writes the query record of each event as its JSON line (see the module docstring).

    What repeats from query to query is serialized once and reused: the question, the
    client, the response code, the EDE list, the policy decision, and the answers of a
    cached entry. Each memo keeps at most `memo_size` entries and is emptied when full;
    the answers memo also stops at `answer_memo_chars` characters. Memos are keyed by
    values (the question's bytes, the client, the decision), except the answers memo, which
    is keyed by the cached entry's pre-encoded packet and holds it (and the records it
    was made from), so no entry can be taken for another answer's, and the memo of what a
    record holds whoever asked (response code to policy, with and without EDNS), which is
    keyed by the answer object's identity (a cached or blocked answer is one object served
    again and again) and refers to it weakly, its texts shared by answers alike. A cached answer
    ages a second at a time, and a text for every age would fill the memo with near copies
    (a 40-record answer is 5 kB of JSON): each answer's text is kept in two pieces around
    its TTL, with the text of the age it was last served at.

    `encode_batch` is what the exporter calls: one loop over a batch of queries given as
    `QueryEvent`'s fields, returning a `RecordBatch`; `encode` and `encode_fields` go
    through it, so a record is the same bytes however it was asked for.
    """

    def __init__(
        self,
        *,
        memo_size: int = MEMO_SIZE,
        answer_memo_chars: int = ANSWER_MEMO_CHARS,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.memo_size = memo_size
        self.answer_memo_chars = answer_memo_chars
        self.max_record_bytes = max_record_bytes
        # Lines of at most this many characters cannot be over the cap: not measured.
        self._unmeasured_chars = max_record_bytes // _MAX_BYTES_PER_CHAR
        # The answers text cut last, its answers' texts and the size of each prefix.
        self._cut: tuple[str, list[str], list[int]] | None = None
        self._stamp_ms = -1
        self._stamp_text = ""
        self._questions: dict[bytes, str] = {}
        self._clients: dict[str, str] = {}
        self._rcodes: dict[int, str] = {}
        self._edes: dict[tuple[tuple[int, str], ...], str] = {}
        self._policies: dict[Decision, str] = {}
        # id(answer) -> what its record holds whoever asked (see `_answer_parts_of`)
        self._parts: dict[int, _KnownAnswer] = {}
        self._shapes: dict[_Shape, _ShapeTexts] = {}
        # packet -> the answers' JSON at any age (and the records it was made from)
        self._answers: dict[PacketBody, _AnswerText] = {}
        self._answer_chars = 0

    def encode(self, event: QueryEvent) -> QueryRecord:
        """The query record of `event`, as the `QueryRecord` every sink gets."""
        return self.encode_fields(
            event.timestamp,
            event.client,
            event.transport,
            event.question,
            event.edns,
            event.answer,
            event.response_size,
            event.age,
        )

    def encode_fields(
        self,
        timestamp: float,
        client: str,
        transport: str,
        question: bytes,
        edns: bool,
        answer: Answer,
        response_size: int = 0,
        age: int = 0,
    ) -> QueryRecord:
        """The query record of a query given as `QueryEvent`'s fields, in their order."""
        fields = (timestamp, client, transport, question, edns, answer, response_size, age)
        batch, _, failures = self.encode_batch([fields])
        if failures:
            raise failures[0][1]
        return batch[0]

    def encode_batch(
        self, events: Iterable[EventFields], *, blocked: bool = False
    ) -> tuple[RecordBatch, RecordBatch | None, list[tuple[EventFields, Exception]]]:
        """The records of queries given as `QueryEvent`'s fields, in their order (the
        exporter queues them as plain tuples: no event object is made per query).

        Returns every record that could be built, with `blocked` those of them that
        `is_blocking` keeps too, and the queries whose record could not be built with why.
        """
        # One loop with the memos at hand, and no object per record: this runs per query.
        lines: list[str] = []
        kinds: list[str] = []
        blocked_lines: list[str] = []
        blocked_kinds: list[str] = []
        failures: list[tuple[EventFields, Exception]] = []
        clients, questions, parts_memo = self._clients, self._questions, self._parts
        unmeasured = self._unmeasured_chars
        for fields in events:
            try:
                timestamp, client, transport, question, edns, answer, _, age = fields
                # As `_milliseconds` reckons them.
                millis = int(timestamp * 1000 + 0.001)
                stamp = self._stamp_text if millis == self._stamp_ms else self._timestamp(millis)
                client_json = clients.get(client) or self._client_json(client)
                protocol = _PROTOCOL_JSON.get(transport) or _protocol_json(transport)
                question_json = questions.get(question) or self._question_json(question)
                known = parts_memo.get(id(answer))
                if known is None or known() is not answer:
                    known = self._answer_parts_of(answer)
                kind_value, middle, plain_end, edns_end, listed, blocking, _, _ = known.texts
                answers = self._answers_json(question, answer, age) if listed else "[]"
                end = edns_end if edns else plain_end
                line = (
                    f'{{"timestamp":"{stamp}","clientIp":{client_json},"protocol":{protocol},'
                    f'"question":{question_json},{middle}{answers}{end}'
                )
                if len(line) > unmeasured and answers != "[]":
                    line = self._capped(line, answers, end)
            except Exception as problem:
                failures.append((fields, problem))
                continue
            lines.append(line)
            kinds.append(kind_value)
            if blocked and blocking:
                blocked_lines.append(line)
                blocked_kinds.append(kind_value)
        kept = RecordBatch(blocked_lines, blocked_kinds) if blocked else None
        return RecordBatch(lines, kinds), kept, failures

    def _answer_parts_of(self, answer: Answer) -> _KnownAnswer:
        """What the record of `answer` holds whoever asked, kept by the answer's identity
        with a weak reference to it (so the memo keeps no answer alive, and an id that
        names another answer since is told apart): `responseCode` to `"answers":`, and
        what follows the answers without EDNS and with it. The texts are
        shared by every answer of the same shape (a cached NOERROR answer's are all alike),
        but for an upstream's round trip, which each `Recursive` answer has its own of."""
        kind = answer.kind
        listed = bool(answer.answers) or answer.packet is not None
        shape = (answer.rcode, kind, answer.ede, answer.decision, listed)
        texts = self._shapes.get(shape) or self._shape_texts(shape)
        if kind is Kind.RECURSIVE and answer.rtt is not None:
            kind_value, middle, _, _, _, blocking, ede, policy = texts
            rtt = f',"responseRtt":{round(answer.rtt * 1000.0, 3)!r}'
            plain_end = f',"edns":[]{rtt}{policy}}}'
            edns_end = f',"edns":{ede}{rtt}{policy}}}'
            texts = (kind_value, middle, plain_end, edns_end, listed, blocking, ede, policy)
        known = _KnownAnswer(answer, texts)
        # An answer straight from the upstream is not seen again: not kept.
        if answer.packet is not None:
            self._remember(self._parts, id(answer), known)
        return known

    def _shape_texts(self, shape: _Shape) -> _ShapeTexts:
        rcode_value, kind, ede_value, decision, listed = shape
        kind_value = _KIND_VALUES[kind]
        rcode = self._rcodes.get(rcode_value) or self._rcode_json(rcode_value)
        middle = f'"responseCode":{rcode},"responseType":"{kind_value}","answers":'
        ede = "[]"
        if ede_value:
            ede = self._edes.get(ede_value) or self._ede_json(ede_value)
        policy = ""
        if decision is not None:
            policy = f',"policy":{self._policies.get(decision) or self._policy_json(decision)}'
        blocking = kind is Kind.BLOCKED or (
            decision is not None and decision.action is Action.BLOCK
        )
        plain_end, edns_end = f',"edns":[]{policy}}}', f',"edns":{ede}{policy}}}'
        texts = (kind_value, middle, plain_end, edns_end, listed, blocking, ede, policy)
        return self._remember(self._shapes, shape, texts)

    def _capped(self, line: str, answers: str, tail: str) -> str:
        """`line` with as many of its first answers as fit `max_record_bytes`, marked
        `answersTruncated`; `line` itself when it fits."""
        size = _utf8_size(line)
        if size <= self.max_record_bytes:
            return line
        head = line[: len(line) - len(tail) - len(answers)]
        budget = self.max_record_bytes - (size - _utf8_size(answers)) - len(_TRUNCATED_MARK)
        parts, prefix_sizes = self._answer_parts(answers)
        kept = max(bisect.bisect_right(prefix_sizes, budget) - 1, 0)
        return f"{head}[{','.join(parts[:kept])}]{_TRUNCATED_MARK}{tail}"

    def _answer_parts(self, answers: str) -> tuple[list[str], list[int]]:
        """The JSON of each answer in `answers`, and the size of `[` the first k `]` for each
        k; the last answers cut are kept, as a large cached answer is served again and again."""
        cut = self._cut
        if cut is not None and cut[0] is answers:
            return cut[1], cut[2]
        parts = [_dumps(item) for item in json.loads(answers)]
        prefix_sizes = [2]
        for index, part in enumerate(parts):
            prefix_sizes.append(prefix_sizes[-1] + _utf8_size(part) + (1 if index else 0))
        self._cut = (answers, parts, prefix_sizes)
        return parts, prefix_sizes

    def _remember(self, memo: dict[Any, Any], key: Any, text: Any) -> Any:
        if len(memo) >= self.memo_size:
            memo.clear()
        memo[key] = text
        return text

    def _timestamp(self, millis: int) -> str:
        # Queries arrive many to a millisecond: the last one's text is kept.
        self._stamp_ms, self._stamp_text = millis, _millisecond_text(millis)
        return self._stamp_text

    def _client_json(self, client: str) -> str:
        return self._remember(self._clients, client, _dumps(client))

    def _question_json(self, question: bytes) -> str:
        qtype = int.from_bytes(question[-4:-2], "big")
        qclass = int.from_bytes(question[-2:], "big")
        text = (
            f'{{"questionName":{_json_string(_question_name(question))},'
            f'"questionType":{_json_string(qtype_name(qtype))},'
            f'"questionClass":{_json_string(class_name(qclass))}}}'
        )
        return self._remember(self._questions, question, text)

    def _rcode_json(self, rcode: int) -> str:
        return self._remember(self._rcodes, rcode, _dumps(rcode_name(rcode)))

    def _ede_json(self, ede: tuple[tuple[int, str], ...]) -> str:
        text = _dumps([{"errType": ede_name(code), "message": extra} for code, extra in ede])
        return self._remember(self._edes, ede, text)

    def _policy_json(self, decision: Decision) -> str:
        return self._remember(self._policies, decision, _dumps(_policy(decision)))

    def _answers_json(self, question: bytes, answer: Answer, age: int) -> str:
        records = answer.answers
        packet = answer.packet
        if not records:
            if packet is None or not packet.counts[0]:
                return "[]"
            # Owned by the question's name, which differs from query to query: not kept.
            records = _packet_answers(question, packet)
            return _answer_list(records, answer.authentic, age)
        if packet is None:
            # Straight from the upstream: these records are not seen again.
            return _answer_list(records, answer.authentic, age)
        found = self._answers.get(packet)
        if found is None or found.records is not records or found.authentic != answer.authentic:
            found = _AnswerText(records, answer.authentic)
            self._remember_answers(packet, found)
        return found.at(age)

    def _remember_answers(self, packet: PacketBody, entry: _AnswerText) -> None:
        memo = self._answers
        size = entry.chars
        if len(memo) >= self.memo_size or self._answer_chars + size > self.answer_memo_chars:
            memo.clear()
            self._answer_chars = 0
        replaced = memo.get(packet)
        if replaced is not None:
            self._answer_chars -= replaced.chars
        memo[packet] = entry
        self._answer_chars += size


class _KnownAnswer(weakref.ref["Answer"]):
    """A weak reference to an answer that carries its `_ShapeTexts` (with its round trip,
    if any): one small object per answer the encoder remembers."""

    __slots__ = ("texts",)
    texts: _ShapeTexts

    def __new__(cls, answer: Answer, texts: _ShapeTexts) -> _KnownAnswer:
        known = super().__new__(cls, answer)
        known.texts = texts
        return known

    def __init__(self, answer: Answer, texts: _ShapeTexts) -> None:
        """Made whole by `__new__` (`weakref.ref.__init__` would take `texts` for a
        callback)."""


class _AnswerText:
    """The answers of a cached entry as JSON, at any age: each answer's text is kept in two
    pieces around its TTL, so a second older (a cached answer ages while it is served)
    costs joining them again, not writing every answer anew."""

    __slots__ = ("_age", "_heads", "_tails", "_text", "_ttls", "authentic", "chars", "records")

    def __init__(self, records: Sequence[dns.RRHeader], authentic: bool) -> None:
        self.records = records
        self.authentic = authentic
        status = "Secure" if authentic else "Disabled"
        self._heads = [_answer_head(record) for record in records]
        self._tails = [_answer_tail(record, status) for record in records]
        self._ttls = [record.ttl for record in records]
        self._age = -1
        self._text = ""
        # The pieces and the text last joined, each about the length of the answers' JSON.
        self.chars = 2 * sum(map(len, self._heads)) + 2 * sum(map(len, self._tails))

    def at(self, age: int) -> str:
        """The answers JSON as served `age` seconds after they were cached."""
        if age != self._age:
            parts = [
                f"{head}{max(0, ttl - age) if age else ttl}{tail}"
                for head, ttl, tail in zip(self._heads, self._ttls, self._tails, strict=True)
            ]
            self._age, self._text = age, "[" + ",".join(parts) + "]"
        return self._text


def is_blocking(event: QueryEvent) -> bool:
    """True when a policy blocked the query, or would have outside monitor mode.

    This is what `include = "blocked"` keeps.
    """
    return answer_is_blocking(event.answer)


def answer_is_blocking(answer: Answer) -> bool:
    """`is_blocking` for a query answered with `answer`."""
    decision = answer.decision
    return answer.kind is Kind.BLOCKED or (decision is not None and decision.action is Action.BLOCK)


def _utf8_size(text: str) -> int:
    """Bytes `text` takes as the sinks write it."""
    return len(text.encode("utf-8", "backslashreplace"))


def _ndjson(lines: list[str]) -> bytes:
    if not lines:
        return b""
    return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")


def encode_records(records: Sequence[QueryRecord]) -> bytes:
    """Records as NDJSON bytes: one line each, every line ending in a newline."""
    if not records:
        return b""
    if isinstance(records, RecordBatch):
        return records.data
    return _ndjson([record.line for record in records])
