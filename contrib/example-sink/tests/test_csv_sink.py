"""The example sink writes the chosen fields as CSV rows, survives a failing file, and plugs
into misp-dns's config."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

try:
    from example_sink import DEFAULT_FIELDS, CsvOptions, CsvSink, plugin
except ModuleNotFoundError as missing:
    if missing.name != "example_sink":
        raise
    # Installed by `make test`; a bare checkout skips these tests, CI must never.
    _MISSING = "misp-dns-example-sink is not installed (`make test` installs it)"
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(f"CI must run every test: {_MISSING}", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)

from misp_dns.build import build_exporter
from misp_dns.config import parse_config
from misp_dns.interfaces import ISink
from misp_dns.registry import default_registry
from misp_dns.values import ConfigError

BLOCKED: dict[str, Any] = {
    "timestamp": "2025-11-26T10:10:30.567Z",
    "clientIp": "127.0.0.1",
    "protocol": "Udp",
    "question": {"questionName": "stemtopx.com", "questionType": "A", "questionClass": "IN"},
    "responseCode": "NxDomain",
    "responseType": "Blocked",
    "answers": [],
    "edns": [{"errType": "Blocked", "message": "source=misp-connector;domain=stemtopx.com"}],
    "policy": {"source": "misp-connector", "domain": "stemtopx.com", "mispEventId": "1234"},
}
RECURSIVE: dict[str, Any] = {
    "timestamp": "2025-11-26T10:10:31.002Z",
    "clientIp": "::1",
    "protocol": "Tcp",
    "question": {"questionName": "www.example.com", "questionType": "AAAA", "questionClass": "IN"},
    "responseCode": "NoError",
    "responseType": "Recursive",
    "answers": [
        {
            "name": "www.example.com",
            "recordType": "AAAA",
            "recordClass": "IN",
            "recordTtl": 300,
            "recordData": "2001:db8::1",
            "dnssecStatus": "Disabled",
        }
    ],
    "edns": [],
    "responseRtt": 12.5,
}


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def test_writes_the_default_fields_under_a_header(tmp_path: Path) -> None:
    """A new file gets the field names, then one row per record; a field the record lacks
    (the policy of a forwarded query) is an empty cell."""
    path = tmp_path / "queries.csv"
    sink = CsvSink(str(path))
    assert verifyObject(ISink, sink)
    sink.start()
    sink.write([BLOCKED])
    sink.write([RECURSIVE])
    sink.stop()
    assert rows(path) == [
        list(DEFAULT_FIELDS),
        ["2025-11-26T10:10:30.567Z", "127.0.0.1", "stemtopx.com", "A", "Blocked", "misp-connector"],
        ["2025-11-26T10:10:31.002Z", "::1", "www.example.com", "AAAA", "Recursive", ""],
    ]
    assert (sink.written, sink.dropped) == (2, 0)


def test_chosen_fields_numbers_and_lists(tmp_path: Path) -> None:
    """Chosen fields come in the chosen order; numbers are plain, lists compact JSON."""
    path = tmp_path / "queries.csv"
    sink = CsvSink(str(path), ["responseRtt", "answers", "policy.mispEventId"], header=False)
    sink.start()
    sink.write([RECURSIVE, BLOCKED])
    sink.stop()
    answers = (
        '[{"name":"www.example.com","recordType":"AAAA","recordClass":"IN","recordTtl":300,'
        '"recordData":"2001:db8::1","dnssecStatus":"Disabled"}]'
    )
    assert rows(path) == [["12.5", answers, ""], ["", "[]", "1234"]]


def test_an_existing_file_is_appended_to_without_a_second_header(tmp_path: Path) -> None:
    """Started again on the same file (a restart), the sink appends rows and no header."""
    path = tmp_path / "queries.csv"
    for record in (BLOCKED, RECURSIVE):
        sink = CsvSink(str(path), ["clientIp"])
        sink.start()
        sink.write([record])
        sink.stop()
    assert rows(path) == [["clientIp"], ["127.0.0.1"], ["::1"]]


def test_a_query_name_cannot_become_a_spreadsheet_formula(tmp_path: Path) -> None:
    """A name a client chose to start with `=`, `+`, `-` or `@` gets a leading `'`; commas
    and quotes are CSV-quoted."""
    path = tmp_path / "queries.csv"
    sink = CsvSink(str(path), ["question.questionName"], header=False)
    names = ['=hyperlink("x")', "+1", "-2", "@sum", 'a,"b"']
    sink.write([{"question": {"questionName": name}} for name in names])
    assert rows(path) == [['\'=hyperlink("x")'], ["'+1"], ["'-2"], ["'@sum"], ['a,"b"']]


def test_an_unwritable_file_counts_drops_and_never_raises(tmp_path: Path) -> None:
    """While the file cannot be opened, each batch is dropped and counted, nothing raises,
    and one error is logged; once it can be, rows are written again."""
    folder = tmp_path / "gone"
    path = folder / "queries.csv"
    sink = CsvSink(str(path), ["clientIp"])
    logged: list[dict[str, Any]] = []
    sink.log = type(sink.log)(observer=logged.append)
    sink.start()
    sink.write([BLOCKED, RECURSIVE])
    sink.write([BLOCKED])
    assert (sink.dropped, sink.written) == (3, 0)
    assert len(logged) == 1 and "No such file or directory" in logged[0]["reason"]

    folder.mkdir()
    sink.write([RECURSIVE])
    assert rows(path) == [["clientIp"], ["::1"]]
    assert (sink.dropped, sink.written) == (3, 1)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_drops_the_batch() -> None:
    """A write that fails (no space left) drops and counts the batch without raising."""
    sink = CsvSink("/dev/full", ["clientIp"], header=False)
    sink.start()
    sink.write([BLOCKED, RECURSIVE])
    sink.stop()
    assert (sink.dropped, sink.written) == (2, 0)


def test_found_through_the_entry_point() -> None:
    """Installed beside misp-dns, `[[export]] type = "csv"` is a known sink type and takes
    `include`, `max_queue` and `max_queue_bytes` like the built-in sinks."""
    registry = default_registry()
    assert registry.exporters["csv"] is plugin
    table = {"type": "csv", "path": "/srv/q.csv", "fields": ["clientIp"], "include": "blocked"}
    bounds = {"max_queue": 50, "max_queue_bytes": 2 << 20}
    config = parse_config({"export": [table | bounds]}, registry)
    options = config.export[0].options
    assert options == CsvOptions(
        path="/srv/q.csv", fields=("clientIp",), include="blocked", **bounds
    )


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            {"path": "q.csv", "fields": ["clientIP"]},
            "export[0].fields: not a field of the query record: 'clientIP'",
        ),
        ({"path": "q.csv", "fields": []}, "export[0].fields: list at least one field"),
        (
            {"path": "q.csv", "include": "some"},
            "export[0].include: expected one of 'all', 'blocked', got 'some'",
        ),
        ({}, "export[0].path: required key is missing"),
        ({"path": "q.csv", "colums": ["clientIp"]}, "export[0].colums: unknown key"),
    ],
)
def test_bad_options_are_config_errors(table: dict[str, Any], problem: str) -> None:
    """A misspelt field, an empty field list, a bad `include`, a missing `path` or an unknown
    key is reported with its TOML path."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"export": [{"type": "csv", **table}]}, default_registry())
    assert caught.value.problems == [problem]


def test_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    """Building the exporter (what start-up and --check-config do) names a folder that does
    not exist."""
    registry = default_registry()
    path = str(tmp_path / "nowhere" / "q.csv")
    config = parse_config({"export": [{"type": "csv", "path": path}]}, registry)
    with pytest.raises(ConfigError) as caught:
        build_exporter(config.export, registry, Clock())
    folder = str(tmp_path / "nowhere")
    assert caught.value.problems == [
        f"export[0]: path {path!r}: the folder {folder!r} does not exist"
    ]
