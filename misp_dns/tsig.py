"""TSIG (RFC 8945): signing and verifying DNS messages with a shared secret.

Zone transfers, NOTIFY and the SOA queries around them are authenticated with TSIG: each
message carries, as the last record of its additional section, a TSIG record holding an
HMAC over the message and a few variables (key name, algorithm, time signed, fudge). This
module works on wire bytes, so that the primary (`misp_dns.dns`) and the RPZ secondary
policy share it without sharing a message class.

- `load_keys(configs)` reads the `[[tsig_key]]` secrets (`secret_file`: base64, the bare
  secret or BIND's `key "name" { ... };` statement); a bad file is a `ConfigError` naming
  the file, never its content.
- `sign(message, key, now)` appends a TSIG record; a response passes the request's MAC.
- `verify(message, keys, now)` checks the TSIG record of a message and returns what it
  found; a failure raises `TsigError` carrying the RCODE and TSIG error RFC 8945 section
  5.2 prescribes (BADKEY, BADSIG, BADTIME, BADTRUNC, or FORMERR).
- `StreamSigner` / `StreamVerifier` do the same across the messages of one TCP transfer,
  where each later MAC covers the previous MAC and only the timers (section 5.3.1), and a
  verifier accepts up to 99 unsigned messages between signed ones.
- `error_response(...)` appends the unsigned TSIG record a server answers a bad key or a
  bad signature with.

Example::

    keys = load_keys(config.tsig_key)
    signed = sign(query_bytes, keys["fleet"], now=reactor.seconds())
    checked = verify(reply_bytes, keys, now=reactor.seconds(), request_mac=signed.mac)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from misp_dns.values import TSIG_ALGORITHMS, ConfigError, TsigKeyConfig

__all__ = [
    "BADKEY",
    "BADSIG",
    "BADTIME",
    "BADTRUNC",
    "DEFAULT_FUDGE",
    "FORMERR",
    "NOTAUTH",
    "TSIG_TYPE",
    "Signed",
    "StreamSigner",
    "StreamVerifier",
    "TsigError",
    "TsigKey",
    "TsigRecord",
    "Verified",
    "error_response",
    "find_tsig",
    "load_keys",
    "name_to_wire",
    "sign",
    "strip_tsig",
    "verify",
]

TSIG_TYPE = 250
_CLASS_ANY = 255
FORMERR = 1
NOTAUTH = 9
BADSIG = 16
BADKEY = 17
BADTIME = 18
BADTRUNC = 22
#: Seconds of clock difference allowed; RFC 8945 section 10 recommends 300.
DEFAULT_FUDGE = 300
#: Unsigned messages a transfer may carry between two signed ones (RFC 8945 section 5.3.1).
MAX_UNSIGNED_RUN = 99

_HASHES: dict[str, Callable[[], Any]] = {
    "hmac-sha256": hashlib.sha256,
    "hmac-sha384": hashlib.sha384,
    "hmac-sha512": hashlib.sha512,
    "hmac-sha224": hashlib.sha224,
    "hmac-sha1": hashlib.sha1,
}
assert set(_HASHES) == set(TSIG_ALGORITHMS)


def name_to_wire(name: str) -> bytes:
    """`name` in canonical wire form: lower-case labels, uncompressed (RFC 4034 6.2)."""
    labels = [label for label in name.rstrip(".").lower().split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\0"


def _folded(name: str) -> str:
    return name.rstrip(".").lower()


def _lower(text: str) -> str:
    return text.lower()


@attrs.frozen
class TsigKey:
    """A TSIG key: its name on the wire, its algorithm and its secret (never shown)."""

    name: str = attrs.field(converter=_folded)
    algorithm: str = attrs.field(converter=_lower)
    secret: bytes = attrs.field(repr=False)

    @property
    def digest_size(self) -> int:
        """Bytes in a full MAC of this key's algorithm."""
        return int(_HASHES[self.algorithm]().digest_size)

    def mac(self, data: bytes) -> bytes:
        """The HMAC of `data` under this key."""
        return hmac.new(self.secret, data, _HASHES[self.algorithm]).digest()


class TsigError(Exception):
    """A message whose TSIG does not verify.

    `rcode` is the RCODE to answer with (NOTAUTH, or FORMERR for a malformed record),
    `error` the TSIG error code (BADKEY, BADSIG, BADTIME, BADTRUNC; 0 with FORMERR) and
    `key_name` the key the message named ("" when it named none). `record` is the TSIG
    record when one was read, so a server can build its error response from it.
    """

    def __init__(
        self,
        message: str,
        *,
        rcode: int,
        error: int,
        key_name: str = "",
        record: TsigRecord | None = None,
    ) -> None:
        super().__init__(message)
        self.rcode = rcode
        self.error = error
        self.key_name = key_name
        self.record = record


@attrs.frozen
class TsigRecord:
    """The fields of a TSIG record as read from a message (RFC 8945 section 4.2)."""

    key_name: str
    algorithm: str
    time_signed: int
    fudge: int
    mac: bytes
    original_id: int
    error: int
    other: bytes


@attrs.frozen
class Signed:
    """A signed message and its MAC (a response's signer needs the request's MAC)."""

    wire: bytes
    mac: bytes


@attrs.frozen
class Verified:
    """A message whose TSIG verified: the key, the record, and the message without it."""

    key: TsigKey
    record: TsigRecord
    unsigned: bytes

    @property
    def mac(self) -> bytes:
        """The MAC the message carried (the request MAC for signing its response)."""
        return self.record.mac


# -- Keys -------------------------------------------------------------------------------------

_BIND_SECRET = re.compile(rb'secret\s+"([^"]*)"\s*;')


def _read_secret(path: str, where: str) -> bytes:
    try:
        with open(path, "rb") as file:
            content = file.read(64 * 1024)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror}"]) from None
    found = _BIND_SECRET.search(content)
    text = found.group(1) if found else content
    try:
        secret = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if not secret:
        raise ConfigError(
            [f"{where}: {path} holds no base64 secret (expected what tsig-keygen prints)"]
        )
    return secret


def load_keys(configs: Iterable[TsigKeyConfig]) -> dict[str, TsigKey]:
    """The `[[tsig_key]]` keys by (lower-case) name, secrets read from their files.

    Raises ConfigError with one line per unreadable or malformed file, naming the file and
    the table, never the file's content.
    """
    keys: dict[str, TsigKey] = {}
    problems: list[str] = []
    for index, config in enumerate(configs):
        try:
            secret = _read_secret(config.secret_file, f"tsig_key[{index}].secret_file")
        except ConfigError as problem:
            problems.extend(problem.problems)
            continue
        key = TsigKey(config.name, config.algorithm, secret)
        keys[key.name] = key
    if problems:
        raise ConfigError(problems)
    return keys


# -- Reading the wire -------------------------------------------------------------------------


def _malformed(why: str) -> TsigError:
    return TsigError(f"malformed message: {why}", rcode=FORMERR, error=0)


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        if offset >= len(data):
            raise _malformed("name runs past the end")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length & 0xC0:
            raise _malformed("unknown label type")
        offset += 1 + length
        if length == 0:
            return offset


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(data):
            raise _malformed("name runs past the end")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data) or jumps > 64:
                raise _malformed("bad compression pointer")
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            jumps += 1
            continue
        if length & 0xC0:
            raise _malformed("unknown label type")
        if length == 0:
            return ".".join(labels).lower(), (end if end >= 0 else offset + 1)
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


def find_tsig(message: bytes) -> tuple[int, TsigRecord] | None:
    """Where the TSIG record of `message` starts and what it holds; None if it has none.

    A TSIG record anywhere but last in the additional section is FORMERR (section 5.1).
    """
    if len(message) < 12:
        raise _malformed("shorter than a header")
    qdcount, ancount, nscount, arcount = struct.unpack_from("!4H", message, 4)
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(message, offset) + 4
    last_start = -1
    last_type = 0
    total = ancount + nscount + arcount
    for index in range(total):
        start = offset
        offset = _skip_name(message, offset)
        if offset + 10 > len(message):
            raise _malformed("record runs past the end")
        rtype, _rclass, _ttl, rdlength = struct.unpack_from("!HHIH", message, offset)
        if rtype == TSIG_TYPE and index != total - 1:
            raise _malformed("TSIG is not the last record")
        last_start, last_type = start, rtype
        offset += 10 + rdlength
        if offset > len(message):
            raise _malformed("record runs past the end")
    if arcount == 0 or last_type != TSIG_TYPE:
        return None
    return last_start, _parse_tsig(message, last_start)


def _parse_tsig(message: bytes, start: int) -> TsigRecord:
    key_name, offset = _read_name(message, start)
    _rtype, rclass, _ttl, rdlength = struct.unpack_from("!HHIH", message, offset)
    offset += 10
    end = offset + rdlength
    if rclass != _CLASS_ANY:
        raise _malformed("TSIG class is not ANY")
    algorithm, offset = _read_name(message, offset)
    try:
        high, low, fudge, mac_size = struct.unpack_from("!HIHH", message, offset)
        offset += 10
        mac = message[offset : offset + mac_size]
        offset += mac_size
        original_id, error, other_len = struct.unpack_from("!HHH", message, offset)
        offset += 6
    except struct.error:
        raise _malformed("TSIG record is cut short") from None
    other = message[offset : offset + other_len]
    if len(mac) != mac_size or len(other) != other_len or offset + other_len != end:
        raise _malformed("TSIG record lengths do not add up")
    return TsigRecord(
        key_name, algorithm, (high << 32) | low, fudge, mac, original_id, error, other
    )


def strip_tsig(message: bytes, start: int, original_id: int) -> bytes:
    """`message` as it was before signing: no TSIG record, ARCOUNT one less, the original ID."""
    arcount = struct.unpack_from("!H", message, 10)[0]
    header = struct.pack("!H", original_id) + message[2:10] + struct.pack("!H", arcount - 1)
    return header + message[12:start]


# -- Signing ----------------------------------------------------------------------------------


def _time_bytes(time_signed: int) -> bytes:
    return struct.pack("!HI", (time_signed >> 32) & 0xFFFF, time_signed & 0xFFFFFFFF)


def _variables(key: TsigKey, time_signed: int, fudge: int, error: int, other: bytes) -> bytes:
    """The TSIG variables of section 4.3.3, in canonical form."""
    return (
        name_to_wire(key.name)
        + struct.pack("!HI", _CLASS_ANY, 0)
        + name_to_wire(key.algorithm)
        + _time_bytes(time_signed)
        + struct.pack("!HHH", fudge, error, len(other))
        + other
    )


def _prefixed(mac: bytes) -> bytes:
    return struct.pack("!H", len(mac)) + mac


def _tsig_rr(
    key_name: str,
    algorithm: str,
    time_signed: int,
    fudge: int,
    mac: bytes,
    original_id: int,
    error: int,
    other: bytes,
) -> bytes:
    rdata = (
        name_to_wire(algorithm)
        + _time_bytes(time_signed)
        + struct.pack("!H", fudge)
        + _prefixed(mac)
        + struct.pack("!HHH", original_id, error, len(other))
        + other
    )
    return (
        name_to_wire(key_name) + struct.pack("!HHIH", TSIG_TYPE, _CLASS_ANY, 0, len(rdata)) + rdata
    )


def _append(message: bytes, record: bytes) -> bytes:
    arcount = struct.unpack_from("!H", message, 10)[0]
    return message[:10] + struct.pack("!H", arcount + 1) + message[12:] + record


def sign(
    message: bytes,
    key: TsigKey,
    now: float,
    *,
    request_mac: bytes | None = None,
    fudge: int = DEFAULT_FUDGE,
    error: int = 0,
    other: bytes = b"",
) -> Signed:
    """`message` with a TSIG record appended (section 4.3).

    A response passes the MAC of the request it answers as `request_mac` (section 4.3.1).
    """
    time_signed = int(now)
    digest = _prefixed(request_mac) if request_mac is not None else b""
    mac = key.mac(digest + message + _variables(key, time_signed, fudge, error, other))
    original_id = struct.unpack_from("!H", message, 0)[0]
    record = _tsig_rr(key.name, key.algorithm, time_signed, fudge, mac, original_id, error, other)
    return Signed(_append(message, record), mac)


def error_response(message: bytes, record: TsigRecord, error: int, now: float) -> bytes:
    """`message` (a NOTAUTH response) with the unsigned TSIG record of section 5.2.

    For BADKEY and BADSIG the server cannot or must not sign: the record carries the key
    and algorithm the request named, an empty MAC and the error code.
    """
    original_id = struct.unpack_from("!H", message, 0)[0]
    rr = _tsig_rr(
        record.key_name, record.algorithm, int(now), record.fudge, b"", original_id, error, b""
    )
    return _append(message, rr)


class StreamSigner:
    """Signs the messages of one TCP response stream, such as an AXFR (section 5.3.1).

    The first message is signed as a response to the request (`request_mac`); each later
    one over the previous MAC, the message and the timers only.
    """

    def __init__(self, key: TsigKey, request_mac: bytes, fudge: int = DEFAULT_FUDGE) -> None:
        self.key = key
        self.fudge = fudge
        self._prior: bytes | None = None
        self._request_mac = request_mac
        self._pending: list[bytes] = []

    def pass_unsigned(self, message: bytes) -> bytes:
        """`message`, sent unsigned; the next signed message's MAC covers it (at most 99)."""
        if len(self._pending) >= MAX_UNSIGNED_RUN:
            raise ValueError("at most 99 unsigned messages may follow each other")
        self._pending.append(message)
        return message

    def sign(self, message: bytes, now: float) -> bytes:
        """`message`, the next of the stream, signed."""
        if self._prior is None:
            if self._pending:
                raise ValueError("the first message of a stream must be signed")
            signed = sign(message, self.key, now, request_mac=self._request_mac, fudge=self.fudge)
            self._prior = signed.mac
            return signed.wire
        time_signed = int(now)
        timers = _time_bytes(time_signed) + struct.pack("!H", self.fudge)
        mac = self.key.mac(_prefixed(self._prior) + b"".join(self._pending) + message + timers)
        self._prior = mac
        self._pending = []
        original_id = struct.unpack_from("!H", message, 0)[0]
        rr = _tsig_rr(
            self.key.name, self.key.algorithm, time_signed, self.fudge, mac, original_id, 0, b""
        )
        return _append(message, rr)


# -- Verifying --------------------------------------------------------------------------------


def _check_record(record: TsigRecord, keys: Mapping[str, TsigKey], now: float) -> TsigKey:
    key = keys.get(record.key_name)
    if key is None or key.algorithm != record.algorithm:
        raise TsigError(
            f"unknown key {record.key_name!r} ({record.algorithm})",
            rcode=NOTAUTH,
            error=BADKEY,
            key_name=record.key_name,
            record=record,
        )
    if len(record.mac) > key.digest_size or (len(record.mac) < max(10, key.digest_size // 2)):
        raise TsigError(
            f"MAC of {len(record.mac)} bytes for {key.algorithm}",
            rcode=FORMERR if len(record.mac) > key.digest_size else NOTAUTH,
            error=0 if len(record.mac) > key.digest_size else BADTRUNC,
            key_name=record.key_name,
            record=record,
        )
    return key


def _check_mac(key: TsigKey, record: TsigRecord, expected: bytes) -> None:
    if not hmac.compare_digest(expected[: len(record.mac)], record.mac):
        raise TsigError(
            f"signature does not verify with key {key.name!r}",
            rcode=NOTAUTH,
            error=BADSIG,
            key_name=key.name,
            record=record,
        )


def _check_time(record: TsigRecord, now: float) -> None:
    if abs(int(now) - record.time_signed) > record.fudge:
        raise TsigError(
            f"signed at {record.time_signed}, now is {int(now)} (fudge {record.fudge})",
            rcode=NOTAUTH,
            error=BADTIME,
            key_name=record.key_name,
            record=record,
        )


def verify(
    message: bytes,
    keys: Mapping[str, TsigKey],
    now: float,
    *,
    request_mac: bytes | None = None,
) -> Verified:
    """Check the TSIG record of `message`; raise TsigError if it has none or it fails.

    The order of section 5.2: the key (BADKEY), the MAC (BADSIG), then the time
    (BADTIME). A response passes the MAC of its request as `request_mac`. A response that
    carries a TSIG error (the other side refused us) raises with that error.
    """
    found = find_tsig(message)
    if found is None:
        raise TsigError("message is not signed", rcode=NOTAUTH, error=BADSIG)
    start, record = found
    if request_mac is not None and record.error in (BADKEY, BADSIG) and not record.mac:
        raise TsigError(
            f"the other side answered TSIG error {record.error}",
            rcode=NOTAUTH,
            error=record.error,
            key_name=record.key_name,
            record=record,
        )
    key = _check_record(record, keys, now)
    unsigned = strip_tsig(message, start, record.original_id)
    digest = _prefixed(request_mac) if request_mac is not None else b""
    variables = _variables(key, record.time_signed, record.fudge, record.error, record.other)
    _check_mac(key, record, key.mac(digest + unsigned + variables))
    _check_time(record, now)
    return Verified(key, record, unsigned)


class StreamVerifier:
    """Verifies the messages of one TCP response stream, such as an AXFR (section 5.3.1).

    The first message must be signed (over `request_mac`); later ones may go unsigned, at
    most 99 in a row, their bytes then counting towards the next signed message's MAC.
    `finish()` says whether the last message was signed, as a complete transfer's must be.
    """

    def __init__(self, key: TsigKey, request_mac: bytes) -> None:
        self.key = key
        self._keys = {key.name: key}
        self._request_mac = request_mac
        self._prior: bytes | None = None
        self._pending: list[bytes] = []

    def verify(self, message: bytes, now: float) -> bytes:
        """Check the next message; return it without its TSIG record (or as is, if unsigned)."""
        if self._prior is None:
            checked = verify(message, self._keys, now, request_mac=self._request_mac)
            self._prior = checked.mac
            return checked.unsigned
        found = find_tsig(message)
        if found is None:
            if len(self._pending) >= MAX_UNSIGNED_RUN:
                raise TsigError(
                    "more than 99 unsigned messages in a row", rcode=NOTAUTH, error=BADSIG
                )
            self._pending.append(message)
            return message
        start, record = found
        _check_record(record, self._keys, now)
        unsigned = strip_tsig(message, start, record.original_id)
        timers = _time_bytes(record.time_signed) + struct.pack("!H", record.fudge)
        digest = _prefixed(self._prior) + b"".join(self._pending) + unsigned + timers
        _check_mac(self.key, record, self.key.mac(digest))
        _check_time(record, now)
        self._prior = record.mac
        self._pending = []
        return unsigned

    def finish(self) -> None:
        """Raise TsigError if the stream ended on unsigned messages."""
        if self._prior is None or self._pending:
            raise TsigError(
                "the transfer's last message is not signed", rcode=NOTAUTH, error=BADSIG
            )
