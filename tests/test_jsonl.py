"""The JSONL sink: whole lines appended, directories created, logrotate's moves followed."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integration.export_events import blocked_event, recursive_event
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from misp_dns.export.jsonl import HangupSignal, JsonlOptions, JsonlSink
from misp_dns.export.record import RecordEncoder
from misp_dns.interfaces import ISink


class SignalClock(Clock):
    """A Clock that also takes callFromThread, as the reactor does from a signal handler."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Callable[[], None]] = []

    def callFromThread(self, callback: Callable[[], None]) -> None:
        self.from_thread.append(callback)

    def run_from_thread(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for call in calls:
            call()


@pytest.fixture
def hangup() -> Iterator[HangupSignal]:
    """A SIGHUP dispatcher of the test's own; the previous handler is restored after."""
    before = signal.getsignal(signal.SIGHUP)
    yield HangupSignal()
    signal.signal(signal.SIGHUP, before)


def records(*names: str) -> list[Any]:
    return [RecordEncoder().encode(recursive_event(name)) for name in names]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def names(path: Path) -> list[str]:
    return [record["question"]["questionName"] for record in lines(path)]


def started(path: Path, hangup: HangupSignal) -> tuple[JsonlSink, SignalClock]:
    clock = SignalClock()
    sink = JsonlSink(str(path), clock, signal_source=hangup)
    sink.start()
    return sink, clock


def test_sink_is_an_isink(tmp_path: Path, hangup: HangupSignal) -> None:
    """The JSONL sink provides ISink."""
    assert verifyObject(ISink, JsonlSink(str(tmp_path / "q.jsonl"), Clock(), signal_source=hangup))


def test_default_path_is_the_documented_one() -> None:
    """Without `path`, records go to /var/log/misp-dns/queries.jsonl."""
    assert JsonlOptions().path == "/var/log/misp-dns/queries.jsonl"


def test_records_are_appended_one_per_line_and_directories_created(
    tmp_path: Path, hangup: HangupSignal
) -> None:
    """Missing directories are created; each record becomes one JSON line, in order."""
    path = tmp_path / "var" / "log" / "misp-dns" / "queries.jsonl"
    sink, _ = started(path, hangup)
    sink.write(records("a.example", "b.example"))
    sink.write([RecordEncoder().encode(blocked_event())])
    assert names(path) == ["a.example", "b.example", "stemtopx.com"]
    assert path.read_bytes().endswith(b"\n")
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    assert sink.written == 3 and sink.dropped == 0
    sink.stop()


def test_existing_file_is_appended_to(tmp_path: Path, hangup: HangupSignal) -> None:
    """Starting never truncates what an earlier run wrote."""
    path = tmp_path / "q.jsonl"
    path.write_text('{"old":1}\n')
    sink, _ = started(path, hangup)
    sink.write(records("new.example"))
    sink.stop()
    old, new = lines(path)
    assert old == {"old": 1}
    assert new["question"]["questionName"] == "new.example"


def test_moved_file_is_followed_and_nothing_is_lost(tmp_path: Path, hangup: HangupSignal) -> None:
    """After logrotate's rename, lines go on into the moved file until the next check, then
    into a new file at the path: every record is in one of the two, whole."""
    path = tmp_path / "q.jsonl"
    sink, clock = started(path, hangup)
    sink.write(records("before.example"))
    os.rename(path, tmp_path / "q.jsonl.1")
    sink.write(records("between.example"))
    clock.advance(1)
    assert path.exists()
    sink.write(records("after.example"))
    assert names(tmp_path / "q.jsonl.1") == ["before.example", "between.example"]
    assert names(path) == ["after.example"]
    assert sink.reopened == 1
    sink.stop()


def test_truncated_file_is_reopened_and_written_from_the_start(
    tmp_path: Path, hangup: HangupSignal
) -> None:
    """After copytruncate, new lines start at offset 0: no hole of zero bytes, no split line."""
    path = tmp_path / "q.jsonl"
    sink, clock = started(path, hangup)
    sink.write(records(*(f"n{i}.example" for i in range(50))))
    os.truncate(path, 0)
    sink.write(records("after-truncate.example"))
    clock.advance(1)
    sink.write(records("after-check.example"))
    data = path.read_bytes()
    assert b"\x00" not in data
    assert names(path) == ["after-truncate.example", "after-check.example"]
    sink.stop()


def test_deleted_file_is_created_again(tmp_path: Path, hangup: HangupSignal) -> None:
    """A removed log file comes back at the next check."""
    path = tmp_path / "q.jsonl"
    sink, clock = started(path, hangup)
    path.unlink()
    clock.advance(1)
    sink.write(records("back.example"))
    assert names(path) == ["back.example"]
    sink.stop()


def test_sighup_reopens_on_the_reactor_thread(tmp_path: Path, hangup: HangupSignal) -> None:
    """SIGHUP (logrotate's postrotate) makes the sink reopen its file, via callFromThread."""
    path = tmp_path / "q.jsonl"
    sink, clock = started(path, hangup)
    os.rename(path, tmp_path / "q.jsonl.1")
    os.kill(os.getpid(), signal.SIGHUP)
    assert len(clock.from_thread) == 1
    assert sink.reopened == 0
    clock.run_from_thread()
    assert sink.reopened == 1
    sink.write(records("after-hup.example"))
    assert names(path) == ["after-hup.example"]
    sink.stop()


def test_sighup_handler_chains_and_is_removed_on_stop(tmp_path: Path, hangup: HangupSignal) -> None:
    """A SIGHUP handler that was there before still runs; stopping restores it."""
    seen: list[int] = []

    def earlier(signum: int, frame: Any) -> None:
        seen.append(signum)

    signal.signal(signal.SIGHUP, earlier)
    sink, clock = started(tmp_path / "q.jsonl", hangup)
    os.kill(os.getpid(), signal.SIGHUP)
    assert seen == [signal.SIGHUP]
    assert len(clock.from_thread) == 1
    sink.stop()
    assert signal.getsignal(signal.SIGHUP) is earlier


@pytest.mark.allow_errors
def test_unwritable_path_drops_counts_logs_once_and_recovers(
    tmp_path: Path, hangup: HangupSignal, logged_errors: list[dict[str, Any]]
) -> None:
    """A path that cannot be opened costs the records (counted, one error line), and the
    sink starts writing once the path works."""
    path = tmp_path / "q.jsonl"
    path.mkdir()
    sink, clock = started(path, hangup)
    sink.write(records("lost1.example"))
    clock.advance(1)
    sink.write(records("lost2.example", "lost3.example"))
    assert sink.dropped == 3
    assert len(logged_errors) == 1
    path.rmdir()
    clock.advance(1)
    sink.write(records("kept.example"))
    assert names(path) == ["kept.example"]
    sink.stop()


def test_big_batches_stay_whole_lines(tmp_path: Path, hangup: HangupSignal) -> None:
    """A large batch is written whole: every line parses and all are there, in order."""
    path = tmp_path / "q.jsonl"
    sink, _ = started(path, hangup)
    expected = [f"n{i}.example" for i in range(3000)]
    sink.write(records(*expected))
    sink.stop()
    assert names(path) == expected


def test_stop_closes_and_stops_watching(tmp_path: Path, hangup: HangupSignal) -> None:
    """After stop no timer is left and the SIGHUP handler is gone."""
    before = signal.getsignal(signal.SIGHUP)
    sink, clock = started(tmp_path / "q.jsonl", hangup)
    assert signal.getsignal(signal.SIGHUP) != before
    sink.stop()
    assert clock.getDelayedCalls() == []
    assert signal.getsignal(signal.SIGHUP) == before
