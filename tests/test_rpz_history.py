"""The RPZ zone's serial and its IXFR history: never backwards, across restarts too."""

from __future__ import annotations

import json
from pathlib import Path

from misp_dns.primary.history import Delta, History, SerialStore, next_serial


def test_first_serial_without_a_file_is_the_time() -> None:
    """With no saved serial, the first is the current time in seconds, which stays above any
    serial an earlier install handed out at one change a second or fewer."""
    store = SerialStore("/nonexistent-state-dir", "rpz.example")
    assert store.first_serial("digest", 1_796_000_000.7) == 1_796_000_000


def test_serial_survives_a_restart(tmp_path: Path) -> None:
    """After a restart, an unchanged zone keeps its serial and a changed one takes the next;
    the file is named after the zone."""
    store = SerialStore(str(tmp_path), "RPZ.Example.")
    store.save(500, "aaaa")
    assert (tmp_path / "rpz-rpz.example.serial").exists()
    again = SerialStore(str(tmp_path), "rpz.example")
    assert again.first_serial("aaaa", 10**9) == 500
    assert again.first_serial("bbbb", 10**9) == 501


def test_unreadable_file_counts_as_none(tmp_path: Path) -> None:
    """A damaged serial file is ignored (the time is used), not a crash."""
    store = SerialStore(str(tmp_path), "rpz.example")
    Path(store.path).write_text("{not json")
    assert store.load() is None
    Path(store.path).write_text(json.dumps({"serial": 0, "digest": "x"}))
    assert store.load() is None


def test_next_serial_wraps_past_zero() -> None:
    """RFC 1982: the serial after 2**32-1 is 1 (0 is skipped)."""
    assert next_serial(41) == 42
    assert next_serial(2**32 - 1) == 1


def test_history_keeps_the_last_deltas() -> None:
    """IXFR can be served from any kept serial up to the current one; an older serial, or a
    chain not reaching the current serial, gets None (the whole zone then)."""
    history = History(2)
    for serial in (10, 11, 12):
        history.add(Delta(serial, serial + 1, [], []))
    assert len(history) == 2
    assert history.since(10, 13) is None
    assert [d.before for d in history.since(11, 13) or []] == [11, 12]
    assert [d.before for d in history.since(12, 13) or []] == [12]
    assert history.since(12, 14) is None
