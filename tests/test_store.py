"""Tests for misp_dns.intel.store: the snapshot that lets a restart block before MISP answers."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, capturedLogs, formatEvent

from misp_dns.intel import store
from misp_dns.intel.domainset import FORMAT_VERSION, DomainSet
from misp_dns.intel.indicator import BlockEntry, IpEntry
from misp_dns.intel.normalize import normalize_network
from misp_dns.intel.store import MAGIC, StoreError, load, load_mapped, save

HEADER_SIZE = 52


def sample(count: int = 50, event: str = "1") -> DomainSet:
    return DomainSet.build(
        BlockEntry(
            name=f"host{n}.example.com",
            subdomains=n % 3 != 0,
            event_id=event,
            event_uuid="5e9c35b9-5e5c-4221-9e27-313127fc1f02",
            event_info="c2_beacon_20230414_iocs",
            attribute_uuid=f"61c53977-6956-408f-90d4-{n:012x}",
        )
        for n in range(count)
    )


def load_logged(path: Path) -> tuple[DomainSet | None, list[str], list[LogLevel]]:
    """Load `path` and return the result, the log lines and their levels."""
    with capturedLogs() as events:
        result = load(path)
    return (
        result,
        [formatEvent(event) for event in events],
        [event["log_level"] for event in events],
    )


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "misp.snapshot"
    assert save(path, sample())
    return path


def test_saved_set_loads_back(saved: Path) -> None:
    """A saved snapshot loads with the same entries and answers, logging nothing."""
    loaded, lines, _ = load_logged(saved)
    assert loaded is not None
    assert loaded.digest == sample().digest
    assert list(loaded.entries()) == list(sample().entries())
    found = loaded.match("www.host1.example.com")
    assert found is not None
    assert found.provenance.attribute_uuid == "61c53977-6956-408f-90d4-000000000001"
    assert lines == []  # the updater says what it serves from it


def test_response_ip_networks_are_saved_and_loaded_with_the_names(tmp_path: Path) -> None:
    """The networks of a source live in the same snapshot file as its names."""
    version, start, length = normalize_network("203.0.113.0/24")
    snapshot = DomainSet.build(
        [*sample(3).entries(), IpEntry(version, start, length, attribute_uuid="x")]
    )
    path = tmp_path / "misp.snapshot"
    assert save(path, snapshot)
    loaded, lines, _ = load_logged(path)
    assert loaded is not None and loaded.digest == snapshot.digest
    found = loaded.match_ip(bytes([203, 0, 113, 77]))
    assert found is not None and (found.network, found.provenance.attribute_uuid) == (
        "203.0.113.0/24",
        "x",
    )
    assert lines == []  # the updater says what it serves from it


def test_a_snapshot_of_the_format_before_response_ips_is_ignored(saved: Path) -> None:
    """A file written by a version without response IPs (format 1) is not misread: it is
    ignored, and the first fetch fills the set."""
    data = bytearray(saved.read_bytes())
    struct.pack_into("<I", data, 8, 1)
    saved.write_bytes(bytes(data))
    loaded, lines, _ = load_logged(saved)
    assert loaded is None
    assert "format version 1, this version reads 2" in lines[0]


def test_file_layout_is_as_documented(saved: Path) -> None:
    """The file is magic, version, payload length, BLAKE2b-256 (the set's digest), payload."""
    data = saved.read_bytes()
    magic, version, length, checksum = struct.unpack_from("<8sIQ32s", data)
    assert (magic, version, length) == (MAGIC, FORMAT_VERSION, len(data) - HEADER_SIZE)
    assert checksum.hex() == sample().digest
    assert data[HEADER_SIZE:] == sample().to_bytes()


def test_unchanged_set_is_not_written_again(saved: Path) -> None:
    """Saving the set the file already holds leaves the file alone and says so."""
    before = os.stat(saved)
    assert save(saved, sample()) is False
    after = os.stat(saved)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_set_replaces_the_file(saved: Path) -> None:
    """A different set is written over the old one, leaving no temporary file behind."""
    assert save(saved, sample(event="2")) is True
    loaded = load(saved)
    assert loaded is not None
    assert loaded.digest == sample(event="2").digest
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


def test_damaged_file_is_rewritten_even_with_the_same_set(saved: Path) -> None:
    """A file with the right header but a damaged payload does not count as up to date."""
    data = bytearray(saved.read_bytes())
    data[-1] ^= 0xFF
    saved.write_bytes(bytes(data))
    assert save(saved, sample()) is True
    assert load(saved) is not None


def test_reading_and_writing_in_pieces_keeps_every_byte(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved a few bytes per system call (so that no call holds a CPU for long), the file
    is the same; an unchanged set is still recognised, and a damaged one still rewritten."""
    whole = saved.read_bytes()
    monkeypatch.setattr(store, "PIECE", 7)
    saved.unlink()
    assert save(saved, sample()) is True
    assert saved.read_bytes() == whole
    assert save(saved, sample()) is False
    saved.write_bytes(whole[:-1] + bytes([whole[-1] ^ 0xFF]))
    assert save(saved, sample()) is True
    assert saved.read_bytes() == whole


def test_leftover_temporary_files_are_cleaned(saved: Path) -> None:
    """Temporary files of an interrupted save are removed by the next save."""
    leftover = saved.parent / f".{saved.name}.abc123.tmp"
    leftover.write_bytes(b"half a snapshot")
    save(saved, sample(event="3"))
    assert not leftover.exists()


def test_missing_file_is_reported_and_ignored(tmp_path: Path) -> None:
    """No snapshot yet (first start): None, and one informational line."""
    loaded, lines, levels = load_logged(tmp_path / "absent.snapshot")
    assert loaded is None
    assert levels == [LogLevel.info]
    assert "no indicator snapshot at" in lines[0]


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda data: b"", "empty file"),
        (lambda data: data[:1], "truncated (1 bytes, shorter than the header)"),
        (lambda data: data[: HEADER_SIZE - 1], "shorter than the header"),
        (lambda data: data[:HEADER_SIZE], "truncated (0 of"),
        (lambda data: data[: HEADER_SIZE + 10], "truncated (10 of"),
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-1], "truncated"),
        (lambda data: data + b"\0", "1 unexpected bytes after the payload"),
        (lambda data: b"X" + data[1:], "wrong magic"),
        (lambda data: _flip(data, HEADER_SIZE + 3), "checksum mismatch"),
        (lambda data: _flip(data, len(data) - 1), "checksum mismatch"),
        (lambda data: _flip(data, 30), "checksum mismatch"),
        (lambda data: data[:12] + struct.pack("<Q", 10**6) + data[20:], "truncated"),
        (lambda data: b"garbage " * 40, "wrong magic"),
        (lambda data: os.urandom(HEADER_SIZE + 100), "wrong magic"),
    ],
)
def test_broken_files_are_reported_and_ignored(
    saved: Path, damage: Callable[[bytes], bytes], says: str
) -> None:
    """Truncated, padded, flipped or garbage snapshots load as None with one warning."""
    saved.write_bytes(damage(saved.read_bytes()))
    loaded, lines, levels = load_logged(saved)
    assert loaded is None
    assert levels == [LogLevel.warn]
    assert lines[0].startswith(f"ignoring indicator snapshot {saved}: ")
    assert says in lines[0]


def test_other_format_version_is_reported_and_ignored(saved: Path) -> None:
    """A snapshot from another format version is not misread."""
    data = bytearray(saved.read_bytes())
    struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
    saved.write_bytes(bytes(data))
    loaded, lines, _ = load_logged(saved)
    assert loaded is None
    assert f"format version {FORMAT_VERSION + 1}, this version reads {FORMAT_VERSION}" in lines[0]


def test_consistent_checksum_over_bad_content_is_ignored(tmp_path: Path) -> None:
    """A well-formed header over a payload that is no domain set is reported as corrupt."""
    payload = b"\x02\x00\x00\x00{}"
    path = tmp_path / "odd.snapshot"
    path.write_bytes(
        struct.pack(
            "<8sIQ32s",
            MAGIC,
            FORMAT_VERSION,
            len(payload),
            hashlib.blake2b(payload, digest_size=32).digest(),
        )
        + payload
    )
    loaded, lines, _ = load_logged(path)
    assert loaded is None
    assert "corrupt content (malformed domain set" in lines[0]


def test_unreadable_path_is_reported_and_ignored(tmp_path: Path) -> None:
    """A snapshot path that cannot be read (here a directory) is ignored with a warning."""
    loaded, lines, levels = load_logged(tmp_path)
    assert loaded is None
    assert levels == [LogLevel.warn]
    assert "cannot read it" in lines[0]


def test_unwritable_location_raises_store_error(tmp_path: Path) -> None:
    """When the state directory cannot be made or written, save raises a clear OSError."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(StoreError) as caught:
        save(blocker / "misp.snapshot", sample())
    assert isinstance(caught.value, OSError)
    assert caught.value.filename == str(blocker / "misp.snapshot")
    assert "cannot save indicator snapshot" in str(caught.value)
    assert list(tmp_path.iterdir()) == [blocker]


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_changed_byte_is_caught(tmp_path: Path, position: int, value: int) -> None:
    """Whatever byte changes, load returns None or the original set: never an error."""
    path = tmp_path / "fuzz.snapshot"
    save(path, sample(10))
    data = bytearray(path.read_bytes())
    position %= len(data)
    changed = data[position] != value
    data[position] = value
    path.write_bytes(bytes(data))
    with capturedLogs():
        loaded = load(path)
    assert (loaded is None) == changed
    if loaded is not None:
        assert loaded.digest == sample(10).digest


def _flip(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0x01
    return bytes(changed)


def _mapped(path: Path) -> bool:
    """Whether this process maps the file at `path` now."""
    return str(path) in Path("/proc/self/maps").read_text()


def test_a_mapped_snapshot_answers_as_a_loaded_one(tmp_path: Path) -> None:
    """`load_mapped` gives the same set as `load`, and reads it in place: the file stays
    mapped while the set lives (the pages serving processes share), and no longer after."""
    path = tmp_path / "misp.snapshot"
    original = sample()
    save(path, original)
    mapped = load_mapped(path)
    assert mapped is not None
    assert _mapped(path)
    assert mapped.digest == original.digest
    assert list(mapped.entries()) == list(original.entries())
    assert mapped.match("www.host1.example.com") == original.match("www.host1.example.com")
    del mapped
    assert not _mapped(path)


def test_a_replaced_snapshot_leaves_the_mapped_set_whole(tmp_path: Path) -> None:
    """A save replaces the file by a rename: a set mapped from the old file keeps answering
    from it, and mapping again gives the new one."""
    path = tmp_path / "misp.snapshot"
    save(path, sample(10))
    before = load_mapped(path)
    save(path, sample(20, event="2"))
    assert before is not None and len(before) == 10
    assert before.match("host3.example.com") is not None
    after = load_mapped(path)
    assert after is not None and len(after) == 20


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"MISPDNS\x00", "truncated"),
        (b"not a snapshot at all, but long enough to hold a header of 52 bytes", "wrong magic"),
    ],
)
def test_a_bad_file_maps_to_nothing_with_a_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    """A missing, empty, short or foreign file is no set, with a line saying why."""
    path = tmp_path / "misp.snapshot"
    path.write_bytes(content)
    with capturedLogs() as events:
        assert load_mapped(path) is None
    assert reason in " ".join(formatEvent(event) for event in events)
    with capturedLogs() as events:
        assert load_mapped(tmp_path / "missing.snapshot") is None
    assert "no indicator snapshot" in formatEvent(events[0])
