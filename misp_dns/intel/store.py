"""Keep the indicator set on disk, so that a restart blocks at once even while MISP is down.

A snapshot file is a fixed header followed by the `DomainSet` payload
(`DomainSet.to_buffers()`: the names, then the response-IP networks):

    offset  size  field
         0     8  magic b"MISPDNS\\x00"
         8     4  format version, u32 little-endian (`domainset.FORMAT_VERSION`)
        12     8  payload length in bytes, u64 little-endian
        20    32  BLAKE2b-256 of the payload (equal to `DomainSet.digest`)
        52     …  payload

`save` writes atomically: a temporary file in the same directory, fsync, rename over the old
file, fsync of the directory; a crash leaves the old file or the new one, never a mix. It
skips the write when the file already holds exactly this set, and raises `StoreError` (an
`OSError`) when it cannot write, for the caller to log.

`load` reads the file in one read and returns None, after one log line that says why, for a
missing, unreadable, truncated, corrupt or other-version file: a bad cache never stops the
server, it only means starting without indicators until the first update.

`load_mapped` reads the same file without copying it: it maps the file read-only and shared
(`mmap`) and returns a set whose tables are views of the mapping (`DomainSet.from_bytes`
with `copy=False`). Every process that maps the same file shares its pages through the page
cache, which is how the serving processes of a group (`[server] workers`, docs/workers.md)
hold one copy of a million indicators between them. A later `save` replaces the file by a
rename, so a mapping keeps seeing the snapshot it was made from.

All three block on disk I/O (tens of megabytes for a million names): call them off the reactor
thread, for example with `deferToThread`. `save` reads and writes in pieces of at most
`PIECE` bytes: one system call copying tens of megabytes keeps its CPU in the kernel, where
on a kernel built without preemption nothing else runs on that CPU until it returns (on
the test machine, whose memory the hypervisor hands out on first use, 20 to 50 ms at a
time), and the reactor thread sharing the CPU would wait that long to answer.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import mmap
import os
import struct
import tempfile
from pathlib import Path

from twisted.logger import Logger

from misp_dns.intel.domainset import FORMAT_VERSION, DomainSet

__all__ = ["MAGIC", "PIECE", "StoreError", "load", "load_mapped", "save"]

MAGIC = b"MISPDNS\x00"
_HEADER = struct.Struct("<8sIQ32s")
_TEMP_SUFFIX = ".tmp"
#: The most `save` reads or writes in one system call.
PIECE = 1 << 20

_log = Logger()


class StoreError(OSError):
    """The snapshot could not be written; `filename` is the snapshot's path."""


def save(path: str | os.PathLike[str], domainset: DomainSet) -> bool:
    """Write `domainset` to `path` atomically; return False when the file already held it.

    Creates the directory when missing. Raises `StoreError` when anything cannot be written.
    """
    path = Path(path)
    checksum = bytes.fromhex(domainset.digest)
    if _read_checksum(path) == checksum:
        return False
    buffers = domainset.to_buffers()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, sum(b.nbytes for b in buffers), checksum)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent
        )
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(header)
                for buffer in buffers:
                    for start in range(0, buffer.nbytes, PIECE):
                        file.write(buffer[start : start + PIECE])
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(path.parent)
    except OSError as error:
        raise StoreError(
            error.errno, f"cannot save indicator snapshot: {error.strerror or error}", str(path)
        ) from error
    return True


def load(path: str | os.PathLike[str]) -> DomainSet | None:
    """Return the set saved at `path`, or None after logging why there is none."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read()
    except FileNotFoundError:
        _log.info("no indicator snapshot at {path}; starting without one", path=str(path))
        return None
    except OSError as error:
        _ignoring(path, f"cannot read it ({error.strerror or error})")
        return None
    problem = _check(data)
    if problem is not None:
        _ignoring(path, problem)
        return None
    try:
        domainset = DomainSet.from_bytes(memoryview(data)[_HEADER.size :])
    except ValueError as error:
        _ignoring(path, f"corrupt content ({error})")
        return None
    # No line here: the updater says what it serves from it, in its one line per snapshot.
    return domainset


def load_mapped(path: str | os.PathLike[str]) -> DomainSet | None:
    """Return the set saved at `path` as views of a read-only shared mapping of the file,
    or None after logging why there is none (as `load`)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                _ignoring(path, "empty file")
                return None
            # The mapping outlives the descriptor; it is unmapped when the set is dropped.
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        _log.info("no indicator snapshot at {path}; starting without one", path=str(path))
        return None
    except (OSError, ValueError) as error:
        _ignoring(path, f"cannot map it ({getattr(error, 'strerror', None) or error})")
        return None
    problem = _check(mapped)
    if problem is not None:
        _ignoring(path, problem)
        return None
    try:
        return DomainSet.from_bytes(memoryview(mapped)[_HEADER.size :], copy=False)
    except ValueError as error:
        _ignoring(path, f"corrupt content ({error})")
        return None


def _ignoring(path: Path, problem: str) -> None:
    _log.warn("ignoring indicator snapshot {path}: {problem}", path=str(path), problem=problem)


def _check(data: bytes | mmap.mmap) -> str | None:
    """What is wrong with the header or checksum of `data`, or None when they are right."""
    if not data:
        return "empty file"
    if len(data) < _HEADER.size:
        return f"truncated ({len(data)} bytes, shorter than the header)"
    magic, version, length, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return "not a misp-dns indicator snapshot (wrong magic)"
    if version != FORMAT_VERSION:
        return f"format version {version}, this version reads {FORMAT_VERSION}"
    actual = len(data) - _HEADER.size
    if actual < length:
        return f"truncated ({actual} of {length} payload bytes)"
    if actual > length:
        return f"corrupt ({actual - length} unexpected bytes after the payload)"
    if hashlib.blake2b(memoryview(data)[_HEADER.size :], digest_size=32).digest() != checksum:
        return "corrupt (checksum mismatch)"
    return None


def _read_checksum(path: Path) -> bytes | None:
    """The checksum of the snapshot at `path` when the file is whole and valid, else None.

    What `_check` accepts, read a piece at a time into one buffer instead of whole.
    """
    try:
        with path.open("rb", buffering=0) as file:
            header = file.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return None
            magic, version, length, checksum = _HEADER.unpack(header)
            if (magic, version) != (MAGIC, FORMAT_VERSION):
                return None
            if os.fstat(file.fileno()).st_size - _HEADER.size != length:
                return None
            hasher = hashlib.blake2b(digest_size=32)
            piece = bytearray(PIECE)
            while read := file.readinto(piece):
                hasher.update(memoryview(piece)[:read])
    except OSError:
        return None
    return bytes(checksum) if hasher.digest() == checksum else None


def _remove_leftovers(path: Path) -> None:
    """Delete temporary files an interrupted save of `path` left behind."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*{_TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
