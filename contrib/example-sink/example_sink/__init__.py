"""`csv`: an example misp-dns sink that appends chosen fields of each query record as CSV rows.

Config keys:
    path       the CSV file, appended to (required; its folder must exist)
    fields     the record fields to write, one column each, in this order; a field inside
               `question` or `policy` is named with a dot. Default: timestamp, clientIp,
               question.questionName, question.questionType, responseType, policy.source
    header     write the field names as the first row of a new or empty file (default true)
    include    "all" (default) or "blocked": only queries a policy blocked (or would have,
               in monitor mode); misp-dns does the filtering
    max_queue  records misp-dns may hold for its sinks before it drops the newest (default
               100000; the largest of the sinks' applies), as for the built-in sinks
    max_queue_bytes  ... and the bytes they may take (default 64 MiB, at least 1 MiB; the
               largest of the sinks' applies)

Example:
    [[export]]
    type = "csv"
    path = "/var/log/misp-dns/queries.csv"
    fields = ["timestamp", "clientIp", "question.questionName", "policy.domain"]

A field the record does not have (`policy.source` of a query no policy decided on,
`responseRtt` of a cached answer) is an empty cell; `answers`, `edns`, `question` and
`policy` as a whole are written as their compact JSON. Clients choose the query names, so a
cell that a spreadsheet would take for a formula (starting with `=`, `+`, `-` or `@`) gets a
leading `'`.

Each batch of rows goes to the file in one `write` on a file opened for appending, so a row
is never split and logrotate's `copytruncate` works. A file that cannot be opened or
written costs the records of that batch (counted in `dropped`, which misp-dns reports); the
next batch tries again. `write` never raises.

It is registered through the entry point group `misp_dns.exporters` in pyproject.toml; once
the package is installed beside misp-dns, `type = "csv"` works in the config.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from misp_dns.interfaces import (
    BuildContext,
    ConfigError,
    FieldError,
    ISink,
    PluginType,
    between,
)

__all__ = ["DEFAULT_FIELDS", "KNOWN_FIELDS", "CsvOptions", "CsvSink", "csv_rows", "plugin"]

DEFAULT_FIELDS = (
    "timestamp",
    "clientIp",
    "question.questionName",
    "question.questionType",
    "responseType",
    "policy.source",
)
#: The fields of the query record (misp-dns's README, "The query log").
KNOWN_FIELDS = frozenset(
    {
        "timestamp",
        "clientIp",
        "protocol",
        "question",
        "question.questionName",
        "question.questionType",
        "question.questionClass",
        "responseCode",
        "responseType",
        "responseRtt",
        "answers",
        "edns",
        "policy",
        "policy.source",
        "policy.domain",
        "policy.mispEventId",
        "policy.mispEventUuid",
        "policy.mispAttributeUuid",
        "policy.mispEventInfo",
        "policy.enforced",
    }
)
INCLUDE_CHOICES = ("all", "blocked")
FILE_MODE = 0o640
#: What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _not_empty(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise FieldError(attribute.name, "must name a file")


def _known_fields(
    _instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise FieldError(attribute.name, "list at least one field")
    unknown = [field for field in value if field not in KNOWN_FIELDS]
    if unknown:
        raise FieldError(attribute.name, f"not a field of the query record: {unknown[0]!r}")


def _include(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in INCLUDE_CHOICES:
        raise FieldError(attribute.name, f"expected one of 'all', 'blocked', got {value!r}")


@attrs.frozen(kw_only=True)
class CsvOptions:
    """The options of an `[[export]] type = "csv"` table."""

    path: str = attrs.field(validator=_not_empty)
    fields: tuple[str, ...] = attrs.field(default=DEFAULT_FIELDS, validator=_known_fields)
    header: bool = True
    include: str = attrs.field(default="all", validator=_include)
    max_queue: int = attrs.field(default=100_000, validator=between(1, 10_000_000))
    max_queue_bytes: int = attrs.field(default=64 << 20, validator=between(1 << 20, 1 << 34))


def _value(record: Mapping[str, Any], field: str) -> Any:
    value: Any = record
    for key in field.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def csv_rows(rows: Sequence[Sequence[str]]) -> bytes:
    """`rows` as CSV text (RFC 4180 quoting, `\\n` line ends), UTF-8 encoded."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode("utf-8", "backslashreplace")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@implementer(ISink)
class CsvSink:
    """Appends `fields` of each record as a CSV row to `path`."""

    log = Logger()

    def __init__(
        self, path: str, fields: Sequence[str] = DEFAULT_FIELDS, *, header: bool = True
    ) -> None:
        self.path = path
        self.fields = tuple(fields)
        self.header = header
        #: Records lost because the file could not be opened or written.
        self.dropped = 0
        #: Records written.
        self.written = 0
        self._fd: int | None = None
        self._failing = False

    def start(self) -> None:
        """Open the file (a failure is logged; the next batch tries again)."""
        self._open()

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one row per record, the whole batch in one write; never raises."""
        if not records:
            return
        data = csv_rows([[_cell(_value(record, f)) for f in self.fields] for record in records])
        if not self._append(data):
            self.dropped += len(records)
            return
        self.written += len(records)

    def stop(self) -> None:
        """Close the file (every batch has already been written to it)."""
        self._close()

    def _append(self, data: bytes) -> bool:
        if self._fd is None and not self._open():
            return False
        assert self._fd is not None
        start = None
        try:
            start = os.fstat(self._fd).st_size
            _write_all(self._fd, data)
        except OSError as exc:
            if start is not None:
                # A full disk may have taken part of the batch: take it back, so that no
                # half row stays in the file to be glued to the next one.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            self._close()
            self._failed("cannot write to", exc)
            return False
        return True

    def _open(self) -> bool:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, FILE_MODE)
        except OSError as exc:
            self._failed("cannot open", exc)
            return False
        try:
            if self.header and os.fstat(fd).st_size == 0:
                _write_all(fd, csv_rows([self.fields]))
        except OSError as exc:
            os.close(fd)
            self._failed("cannot write to", exc)
            return False
        self._fd = fd
        if self._failing:
            self._failing = False
            self.log.info("writing query records to {path} again", path=self.path)
        return True

    def _close(self) -> None:
        fd, self._fd = self._fd, None
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


def _build(options: CsvOptions, context: BuildContext) -> CsvSink:
    folder = os.path.dirname(os.path.abspath(options.path))
    if not os.path.isdir(folder):
        raise ConfigError([f"path {options.path!r}: the folder {folder!r} does not exist"])
    return CsvSink(options.path, options.fields, header=options.header)


plugin = PluginType("csv", CsvOptions, _build)
