"""The `jsonl` sink: one query record per line, appended to a file that logrotate may rotate.

    [[export]]
    type = "jsonl"
    path = "/var/log/misp-dns/queries.jsonl"   # parent directories are created
    include = "all"                            # or "blocked"

The file is opened with O_APPEND and each batch of whole lines goes out in one `write`, so
a line is never split, even while another program truncates the file. The file is opened
again:
- on SIGHUP (logrotate's `postrotate`, see contrib/logrotate/misp-dns);
- when the path no longer names the open file (moved away by logrotate's `create`, or
  deleted), checked every second: lines written in between land in the moved file, so none
  is lost;
- when the file shrank (logrotate's `copytruncate`). With copytruncate, what is written
  between logrotate's copy and its truncation is lost: that is copytruncate's nature, so the
  shipped configuration uses `create` instead.
A file that cannot be opened or written costs the records of that moment (counted in
`dropped`, reported by the exporter); the sink tries again at the next check.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from misp_dns.export.options import SinkOptions, not_empty
from misp_dns.export.record import QueryRecord, encode_records
from misp_dns.interfaces import BuildContext, ISink, PluginType

__all__ = ["HangupSignal", "JsonlOptions", "JsonlSink", "hangup", "plugin"]

DEFAULT_PATH = "/var/log/misp-dns/queries.jsonl"
#: Seconds between checks that the path still names the open file.
CHECK_INTERVAL = 1.0
FILE_MODE = 0o640
DIRECTORY_MODE = 0o750


@attrs.frozen(kw_only=True)
class JsonlOptions(SinkOptions):
    """`[[export]] type = "jsonl"`: the file the records are appended to."""

    path: str = attrs.field(default=DEFAULT_PATH, validator=not_empty)


class HangupSignal:
    """Calls its listeners on their reactor's thread when the process receives SIGHUP.

    The handler is installed while at least one listener is registered; it hands each
    callback to `reactor.callFromThread` (safe from a signal handler) and then calls the
    handler that was there before, if it was a Python function.
    """

    log = Logger()

    def __init__(self, signum: int = signal.SIGHUP) -> None:
        self.signum = signum
        self._listeners: dict[int, tuple[Any, Callable[[], None]]] = {}
        self._next = 0
        self._previous: Any = None
        self._installed = False

    def add(self, reactor: Any, callback: Callable[[], None]) -> int:
        """Register `callback`; return a token for `remove`."""
        if not self._installed:
            try:
                self._previous = signal.signal(self.signum, self._handle)
            except ValueError:
                # Not the main thread: nothing can install a signal handler here.
                self.log.warn("cannot install a SIGHUP handler outside the main thread")
            else:
                self._installed = True
        self._next += 1
        self._listeners[self._next] = (reactor, callback)
        return self._next

    def remove(self, token: int) -> None:
        """Unregister; the previous handler comes back when no listener is left."""
        self._listeners.pop(token, None)
        if self._listeners or not self._installed:
            return
        self._installed = False
        try:
            if signal.getsignal(self.signum) == self._handle:
                signal.signal(self.signum, self._previous)
        except (ValueError, TypeError):
            pass

    def _handle(self, signum: int, frame: Any) -> None:
        for reactor, callback in list(self._listeners.values()):
            reactor.callFromThread(callback)
        previous = self._previous
        if callable(previous):
            previous(signum, frame)


#: The process-wide SIGHUP dispatcher the sinks use by default.
hangup = HangupSignal()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@implementer(ISink)
class JsonlSink:
    """Appends records as JSON lines to `path`, following logrotate's moves."""

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        check_interval: float = CHECK_INTERVAL,
        signal_source: HangupSignal | None = None,
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.check_interval = check_interval
        self.signal_source = signal_source if signal_source is not None else hangup
        #: Records lost because the file could not be opened or written.
        self.dropped = 0
        #: Records written.
        self.written = 0
        #: Times the file was opened again after a SIGHUP, a move or a truncation.
        self.reopened = 0
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._size_seen = 0
        self._failing = False
        self._check_call: IDelayedCall | None = None
        self._token: int | None = None

    @classmethod
    def from_config(cls, options: JsonlOptions, context: BuildContext) -> JsonlSink:
        """The sink for one `[[export]] type = "jsonl"` table."""
        return cls(options.path, context.reactor)

    def start(self) -> None:
        """Open the file (creating its directories), watch it, and listen for SIGHUP."""
        self._open()
        self._token = self.signal_source.add(self.reactor, self.reopen)
        self._check_call = self.reactor.callLater(self.check_interval, self._check)

    def write(self, records: Sequence[QueryRecord]) -> None:
        """Append one line per record, the whole batch in one write."""
        if not records:
            return
        if self._fd is None and not self._open():
            self.dropped += len(records)
            return
        assert self._fd is not None
        start = None
        try:
            start = os.fstat(self._fd).st_size
            _write_all(self._fd, encode_records(records))
        except OSError as exc:
            if start is not None:
                # A full disk may have taken half the batch: take it back, so that no
                # half line stays in the file to be glued to the next record.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            self.dropped += len(records)
            self._close()
            self._failed("cannot write to", exc)
            return
        self.written += len(records)

    def reopen(self) -> None:
        """Close the file and open `path` again (what SIGHUP does)."""
        self.reopened += 1
        self._close()
        self._open()

    def stop(self) -> None:
        """Stop watching and close the file (every write has already reached it)."""
        if self._check_call is not None and self._check_call.active():
            self._check_call.cancel()
        self._check_call = None
        if self._token is not None:
            self.signal_source.remove(self._token)
            self._token = None
        self._close()

    def _open(self) -> bool:
        try:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as exc:
            self._failed("cannot open", exc)
            return False
        stat = os.fstat(fd)
        self._fd = fd
        self._identity = (stat.st_dev, stat.st_ino)
        self._size_seen = stat.st_size
        if self._failing:
            self._failing = False
            self.log.info("writing query records to {path} again", path=self.path)
        return True

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        self._identity = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _failed(self, what: str, exc: OSError) -> None:
        if self._failing:
            return
        self._failing = True
        self.log.error(
            "{what} {path}: {reason}; query records are dropped until it works again",
            what=what,
            path=self.path,
            reason=exc.strerror or str(exc),
        )

    def _check(self) -> None:
        self._check_call = self.reactor.callLater(self.check_interval, self._check)
        try:
            self._check_file()
        except Exception:
            self.log.failure("checking {path} failed", path=self.path)

    def _check_file(self) -> None:
        if self._fd is None:
            self._open()
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self.reopen()
            return
        if (stat.st_dev, stat.st_ino) != self._identity or stat.st_size < self._size_seen:
            self.reopen()
            return
        self._size_seen = stat.st_size


def _build(options: JsonlOptions, context: BuildContext) -> JsonlSink:
    return JsonlSink.from_config(options, context)


plugin = PluginType("jsonl", JsonlOptions, _build)
