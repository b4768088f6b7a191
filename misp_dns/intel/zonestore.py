"""Keep a followed zone on disk, so a restart applies it at once even while its primary is down.

A zone file here is a fixed header and the records in canonical wire-like form:

    offset  size  field
         0     8  magic b"MISPRPZ\\x00"
         8     4  format version, u32 little-endian (1)
        12     8  payload length in bytes, u64 little-endian
        20    32  BLAKE2b-256 of the payload
        52     …  payload: the zone name, then each record, each as
                  u16 owner length, owner (UTF-8), u16 type, u32 TTL, u16 RDATA length, RDATA
                  (the zone name is written like an owner, with type, TTL and length 0)

`save` writes atomically (a temporary file in the same folder, fsync, rename, fsync of the
folder), so a crash leaves the old file or the new one. `load` returns None, after one log
line saying why, for a missing, truncated, corrupt or other-version file, or one that holds
another zone. Both block on disk I/O: call them off the reactor thread for a big zone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from twisted.logger import Logger

from misp_dns.intel.zonedata import Record

__all__ = ["MAGIC", "load", "save"]

MAGIC = b"MISPRPZ\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")
_FIXED = struct.Struct("!HIH")
_LENGTH = struct.Struct("!H")

_log = Logger()


def _encode(zone: str, records: Iterable[Record]) -> bytes:
    parts = [_entry(zone, 0, 0, b"")]
    parts.extend(_entry(r.owner, r.type, r.ttl, r.rdata) for r in records)
    return b"".join(parts)


def _entry(owner: str, rtype: int, ttl: int, rdata: bytes) -> bytes:
    name = owner.encode("utf-8")
    return _LENGTH.pack(len(name)) + name + _FIXED.pack(rtype, ttl, len(rdata)) + rdata


def _decode(payload: bytes) -> tuple[str, list[Record]]:
    entries: list[Record] = []
    offset = 0
    while offset < len(payload):
        (size,) = _LENGTH.unpack_from(payload, offset)
        offset += 2
        owner = payload[offset : offset + size].decode("utf-8")
        offset += size
        rtype, ttl, length = _FIXED.unpack_from(payload, offset)
        offset += _FIXED.size
        rdata = payload[offset : offset + length]
        if len(rdata) != length:
            raise ValueError("record runs past the end")
        offset += length
        entries.append(Record(owner, rtype, ttl, rdata))
    if not entries:
        raise ValueError("no zone name")
    return entries[0].owner, entries[1:]


def save(path: str | os.PathLike[str], zone: str, records: Iterable[Record]) -> None:
    """Write the zone's records to `path` atomically; raises OSError when it cannot."""
    path = Path(path)
    payload = _encode(zone, records)
    digest = hashlib.blake2b(payload, digest_size=32).digest()
    header = _HEADER.pack(MAGIC, VERSION, len(payload), digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(header)
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load(path: str | os.PathLike[str], zone: str) -> list[Record] | None:
    """The records of `zone` saved at `path`, or None (logged) when there are none to use."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as problem:
        _log.warn("cannot read the saved zone {path}: {why}", path=str(path), why=problem.strerror)
        return None
    why = _problem(data, zone)
    if why is not None:
        _log.warn("ignoring the saved zone {path}: {why}", path=str(path), why=why)
        return None
    return _decode(data[_HEADER.size :])[1]


def _problem(data: bytes, zone: str) -> str | None:
    if len(data) < _HEADER.size:
        return "truncated header"
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return "not a misp-dns zone file"
    if version != VERSION:
        return f"format version {version}, not {VERSION}"
    payload = data[_HEADER.size :]
    if len(payload) != length:
        return "truncated"
    if hashlib.blake2b(payload, digest_size=32).digest() != digest:
        return "checksum mismatch"
    try:
        saved_zone, _ = _decode(payload)
    except (ValueError, struct.error, UnicodeDecodeError):
        return "malformed records"
    if saved_zone != zone:
        return f"it holds zone {saved_zone!r}"
    return None
