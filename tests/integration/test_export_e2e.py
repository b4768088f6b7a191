"""The log exporter end to end: a running server, a real rsyslogd, an HTTP collector, logrotate.

The server runs as users run it, `twistd -n --pidfile= misp-dns --config PATH`. Every record
is checked field by field in the JSONL file, at rsyslogd (UDP and TCP, RFC 5424 and 3164, as
rsyslog parsed the messages, and as the shipped contrib/rsyslog snippet writes them) and at
the HTTP collector.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_tool

from .export_receiver import HttpReceiver
from .export_rsyslog import RsyslogProcess
from .export_writer import JsonlWriter, sequence_numbers
from .net import wait_until
from .server import MispDnsProcess
from .unbound import NODATA, WWW, WWW_A, UnboundProcess
from .wire import ask_udp, make_query

BLOCKED_NAME = "stemtopx.com"
EVENT_ID = "1234"
EVENT_UUID = "5f0c4c9e-1b7a-4d3c-9a55-3f1f7c0b9e21"
EVENT_INFO = "Phishing campaign: stemtopx"
ATTRIBUTE_UUID = "a1c2e3f4-5b6d-4e8f-9a0b-1c2d3e4f5a6b"
REFUSED_SOURCE = "127.0.0.3"
TOKEN = "Bearer e2e-token"
CONTRIB_RSYSLOG = Path(__file__).parents[2] / "contrib" / "rsyslog" / "misp-dns.conf"


def _write_feed(directory: Path) -> Path:
    """A one-event MISP feed listing stemtopx.com, published now."""
    directory.mkdir()
    now = int(time.time())
    (directory / "manifest.json").write_text(
        json.dumps({EVENT_UUID: {"info": EVENT_INFO, "timestamp": now}})
    )
    event = {
        "Event": {
            "id": EVENT_ID,
            "uuid": EVENT_UUID,
            "info": EVENT_INFO,
            "timestamp": str(now),
            "Attribute": [
                {
                    "type": "domain",
                    "category": "Network activity",
                    "value": BLOCKED_NAME,
                    "uuid": ATTRIBUTE_UUID,
                    "timestamp": str(now),
                    "to_ids": True,
                }
            ],
        }
    }
    (directory / f"{EVENT_UUID}.json").write_text(json.dumps(event))
    return directory


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def _write_config(
    path: Path,
    server: dict[str, Any],
    policies: list[dict[str, Any]],
    exports: list[dict[str, Any]],
) -> Path:
    lines = ["[server]", *(f"{key} = {_toml(value)}" for key, value in server.items()), ""]
    for section, tables in (("policy", policies), ("export", exports)):
        for table in tables:
            lines.append(f"[[{section}]]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in table.items())
            lines.append("")
    path.write_text("\n".join(lines))
    return path


def _start_server(
    workdir: Path, unbound: UnboundProcess, exports: list[dict[str, Any]]
) -> MispDnsProcess:
    port = free_port()
    (workdir / "state").mkdir()
    config = _write_config(
        workdir / "misp-dns.toml",
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"127.0.0.1:{unbound.address[1]}"],
            "allow_clients": ["127.0.0.1/32"],
            "server_name": "dns.test.example",
            "state_dir": str(workdir / "state"),
        },
        [
            {"type": "allowlist", "domains": ["www.test"]},
            {"type": "misp-feed", "url": str(_write_feed(workdir / "feed"))},
        ],
        exports,
    )
    process = MispDnsProcess(config, [("127.0.0.1", port)], workdir)
    process.start(probe="probe.test.")
    # The feed is read at start; wait until the server blocks.
    wait_until(
        lambda: ask_udp(make_query(BLOCKED_NAME), process.address).rcode() == 3,
        10,
        what="the feed's domain blocked",
    )
    return process


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RsyslogProcess]:
    """rsyslogd receiving on a UDP and a TCP loopback port."""
    binary = require_tool("rsyslogd")
    workdir = tmp_path_factory.mktemp("rsyslog")
    snippet = CONTRIB_RSYSLOG.read_text().replace(
        "/var/log/misp-dns/syslog-queries.jsonl", str(workdir / "contrib" / "queries.jsonl")
    )
    process = RsyslogProcess(binary, workdir, free_port(), free_port(), extra=snippet)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpReceiver]:
    """An HTTP collector that accepts every batch."""
    receiver = HttpReceiver(tmp_path_factory.mktemp("collector"))
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def exporting(
    tmp_path_factory: pytest.TempPathFactory,
    unbound: UnboundProcess,
    rsyslog: RsyslogProcess,
    collector: HttpReceiver,
) -> Iterator[tuple[MispDnsProcess, Path]]:
    """misp-dns with every sink: JSONL (all and blocked), syslog UDP and TCP, HTTP."""
    workdir = tmp_path_factory.mktemp("exporting")
    logs = workdir / "log" / "misp-dns"
    exports = [
        {"type": "jsonl", "path": str(logs / "queries.jsonl")},
        {"type": "jsonl", "path": str(logs / "blocked.jsonl"), "include": "blocked"},
        {"type": "syslog", "address": f"127.0.0.1:{rsyslog.udp_port}", "hostname": "dns1.example"},
        {
            "type": "syslog",
            "address": f"127.0.0.1:{rsyslog.tcp_port}",
            "protocol": "tcp",
            "hostname": "dns1.example",
        },
        {
            "type": "syslog",
            "address": f"127.0.0.1:{rsyslog.udp_port}",
            "format": "rfc3164",
            "facility": "daemon",
            "severity": "notice",
            "hostname": "dns1.example",
        },
        {
            "type": "http",
            "url": collector.url,
            "headers": {"Authorization": TOKEN},
            "batch_interval": 0.2,
        },
    ]
    process = _start_server(workdir, unbound, exports)
    yield process, logs
    process.stop()


def _lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def _expected_policy() -> dict[str, Any]:
    return {
        "source": "misp-feed",
        "domain": BLOCKED_NAME,
        "trigger": "qname",
        "mispEventId": EVENT_ID,
        "mispEventUuid": EVENT_UUID,
        "mispAttributeUuid": ATTRIBUTE_UUID,
        "mispEventInfo": EVENT_INFO,
    }


def _check_records(records: list[dict[str, Any]], after: float) -> None:
    """The six records of the scenario, field by field."""
    blocked, report, allowed, cached, recursive, refused = records
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
        stamp = calendar.timegm(time.strptime(record["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert int(after) - 1 <= stamp <= time.time() + 1
    report_text = f"source=misp-feed;domain={BLOCKED_NAME}"
    assert blocked == {
        "timestamp": blocked["timestamp"],
        "clientIp": "127.0.0.1",
        "protocol": "Udp",
        "question": {"questionName": BLOCKED_NAME, "questionType": "A", "questionClass": "IN"},
        "responseCode": "NxDomain",
        "responseType": "Blocked",
        "answers": [],
        "edns": [{"errType": "Blocked", "message": report_text}],
        "policy": _expected_policy(),
    }
    assert report["question"]["questionType"] == "TXT"
    assert (report["responseCode"], report["responseType"]) == ("NoError", "Blocked")
    assert report["answers"] == [
        {
            "name": BLOCKED_NAME,
            "recordType": "TXT",
            "recordClass": "IN",
            "recordTtl": 30,
            "recordData": json.dumps(report_text),
            "dnssecStatus": "Disabled",
        }
    ]
    assert report["edns"] == [{"errType": "Blocked", "message": report_text}]
    assert report["policy"] == _expected_policy()
    www = WWW.rstrip(".")
    assert (allowed["responseType"], allowed["responseCode"]) == ("Allowed", "NoError")
    assert allowed["policy"] == {"source": "allowlist", "domain": www, "trigger": "qname"}
    assert [(a["name"], a["recordType"], a["recordData"]) for a in allowed["answers"]] == [
        (www, "A", WWW_A)
    ]
    assert allowed["edns"] == [] and "responseRtt" not in allowed
    assert cached["responseType"] == "Cached" and "responseRtt" not in cached
    assert cached["answers"][0]["recordData"] == WWW_A
    assert cached["answers"][0]["recordTtl"] <= allowed["answers"][0]["recordTtl"]
    assert recursive["responseType"] == "Recursive"
    assert recursive["question"]["questionName"] == NODATA.rstrip(".")
    assert isinstance(recursive["responseRtt"], float) and 0 < recursive["responseRtt"] < 3000
    assert "policy" not in recursive
    assert refused == {
        "timestamp": refused["timestamp"],
        "clientIp": REFUSED_SOURCE,
        "protocol": "Udp",
        "question": {"questionName": "www.test", "questionType": "A", "questionClass": "IN"},
        "responseCode": "Refused",
        "responseType": "Refused",
        "answers": [],
        "edns": [{"errType": "Prohibited", "message": ""}],
    }


def test_every_sink_gets_every_record_field_by_field(
    exporting: tuple[MispDnsProcess, Path], rsyslog: RsyslogProcess, collector: HttpReceiver
) -> None:
    """A blocked query, a TXT report, an allowed query and the same from cache, a forwarded
    one and a refused client reach the file, rsyslogd over UDP and TCP, and the collector,
    as the same records, each field as the schema says."""
    server, logs = exporting
    queries_file = logs / "queries.jsonl"
    time.sleep(0.5)  # the start-up probes' records settle
    before = len(_lines(queries_file))
    # Syslog over UDP leaves from the sink's sending process, which may still be starting:
    # wait until every record so far has its three syslog messages.
    wait_until(
        lambda: len(rsyslog.messages()) >= 3 * before, 10, what="the start-up records' messages"
    )
    syslog_before = len(rsyslog.messages())
    contrib_file = rsyslog.workdir / "contrib" / "queries.jsonl"
    contrib_before = len(_lines(contrib_file))
    http_before = len(collector.records())
    started = time.time()
    address = server.address
    assert ask_udp(make_query(BLOCKED_NAME, edns=0), address).rcode() == 3
    assert len(ask_udp(make_query(BLOCKED_NAME, "TXT", edns=0), address).answer) == 1
    assert ask_udp(make_query(WWW), address).answer
    assert ask_udp(make_query(WWW), address).answer
    assert ask_udp(make_query(NODATA), address).answer
    assert ask_udp(make_query(WWW, edns=0), address, source=REFUSED_SOURCE).rcode() == 5

    wait_until(lambda: len(_lines(queries_file)) >= before + 6, 5, what="six JSONL lines")
    records = _lines(queries_file)[before:]
    assert len(records) == 6
    _check_records(records, started)
    assert all(line.endswith("\n") for line in [queries_file.read_text()])

    blocked_only = _lines(logs / "blocked.jsonl")
    assert [r["responseType"] for r in blocked_only[-2:]] == ["Blocked", "Blocked"]
    assert all(r["responseType"] == "Blocked" for r in blocked_only)

    messages = rsyslog.wait_for(syslog_before + 18)[syslog_before:]
    assert len(messages) == 18, rsyslog.log_text()
    rfc5424 = [m for m in messages if m.version == "1"]
    for transport in ("udp", "tcp"):
        got = [m for m in rfc5424 if m.input == transport]
        assert [json.loads(m.msg) for m in got] == records
        for message, record in zip(got, records, strict=True):
            assert message.facility == "local6"
            assert message.severity == "info"
            assert message.hostname == "dns1.example"
            assert message.app_name == "misp-dns"
            assert message.procid == str(server.pid)
            assert message.msgid == record["responseType"]
    old_format = [m for m in messages if m.version != "1"]
    assert [json.loads(m.msg) for m in old_format] == records
    for message in old_format:
        assert (message.input, message.facility, message.severity) == ("udp", "daemon", "notice")
        assert (message.hostname, message.app_name) == ("dns1", "misp-dns")
        assert message.procid == str(server.pid)
    # The shipped rsyslog snippet writes the bare records, one per line, whatever the format.
    wait_until(
        lambda: len(_lines(contrib_file)) >= contrib_before + 18, 5, what="the snippet's file"
    )
    written = _lines(contrib_file)[contrib_before:]
    assert sorted(map(json.dumps, written)) == sorted(map(json.dumps, records * 3))

    wait_until(lambda: len(collector.records()) >= http_before + 6, 5, what="six HTTP records")
    assert collector.records()[http_before:] == records
    request = collector.requests()[-1]
    assert request["headers"]["content-type"] == "application/x-ndjson"
    assert request["headers"]["authorization"] == TOKEN


def test_sighup_after_logrotate_moves_the_file_keeps_the_server_logging(
    exporting: tuple[MispDnsProcess, Path],
) -> None:
    """After the log is moved away and twistd gets SIGHUP (logrotate's postrotate), the
    server goes on answering and writes the next records to a new file at the path."""
    server, logs = exporting
    path = logs / "blocked.jsonl"
    wait_until(path.exists, 5, what="the blocked-only file")
    path.rename(logs / "blocked.jsonl.1")
    os.kill(server.pid, signal.SIGHUP)
    wait_until(path.exists, 3, what="the file opened again")
    assert ask_udp(make_query(BLOCKED_NAME), server.address).rcode() == 3
    wait_until(lambda: len(_lines(path)) >= 1, 5, what="a record in the new file")
    assert _lines(path)[-1]["question"]["questionName"] == BLOCKED_NAME
    assert server.running


def _silent_tcp_receiver() -> socket.socket:
    """A TCP port that accepts connections and never reads (a receiver that hangs)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def _blast(address: tuple[str, int], count: int) -> tuple[float, int]:
    """Send `count` blocked queries one after another; queries/s and how many were answered."""
    wire = make_query(BLOCKED_NAME).to_wire()
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.connect(address)
        started = time.perf_counter()
        for _ in range(count):
            sock.send(wire)
            try:
                sock.recv(4096)
            except TimeoutError:
                continue
            answered += 1
        elapsed = time.perf_counter() - started
    return count / elapsed, answered


def test_receivers_down_or_hanging_cost_records_not_answers(
    tmp_path: Path, unbound: UnboundProcess, exporting: tuple[MispDnsProcess, Path]
) -> None:
    """With the syslog TCP receiver not reading and the collector hanging, every query is
    still answered; the sinks count their drops and the server logs them. (How fast, against
    healthy receivers, is measured by `bench/run.py --scenario sinks`, not asserted here:
    a rate ratio on a shared CI machine is a timing goal, not a behaviour.)"""
    listener = _silent_tcp_receiver()
    stalled = HttpReceiver(tmp_path / "stalled", mode="stall")
    (tmp_path / "stalled").mkdir()
    stalled.start()
    try:
        exports = [
            {"type": "jsonl", "path": str(tmp_path / "queries.jsonl")},
            {
                "type": "syslog",
                "address": f"127.0.0.1:{listener.getsockname()[1]}",
                "protocol": "tcp",
                "max_queue": 200,
            },
            {"type": "syslog", "address": "127.0.0.1:9", "protocol": "tcp", "max_queue": 200},
            {"type": "http", "url": stalled.url, "max_queue": 200, "timeout": 1},
        ]
        (tmp_path / "server").mkdir()
        server = _start_server(tmp_path / "server", unbound, exports)
        try:
            count = 15000
            healthy_rate, healthy_answered = _blast(exporting[0].address, count // 5)
            rate, answered = _blast(server.address, count)
            assert answered == count and healthy_answered == count // 5
            print(f"\nqueries/s: healthy sinks {healthy_rate:.0f}, receivers down {rate:.0f}")
            wait_until(
                lambda: all(f"export[{i}] (" in server.log_text(limit=1 << 20) for i in (1, 2, 3)),
                15,
                what="drop reports for the three failing sinks",
            )
            text = server.log_text(limit=1 << 20)
            for index in (1, 2, 3):
                match = re.search(rf"export\[{index}\] \(\w+\): (\d+) query records dropped", text)
                assert match, text[-3000:]
                assert int(match.group(1)) > 0
            # The file sink loses nothing meanwhile.
            wait_until(
                lambda: len(_lines(tmp_path / "queries.jsonl")) >= count, 5, what="every line"
            )
        finally:
            server.stop()
    finally:
        stalled.stop()
        listener.close()


# --- logrotate -------------------------------------------------------------------------


def _logrotate(tmp_path: Path, log: Path, mode: str, postrotate: str = "") -> list[str]:
    config = tmp_path / "logrotate.conf"
    script = f"    postrotate\n        {postrotate}\n    endscript\n" if postrotate else ""
    config.write_text(
        f'"{log}" {{\n    rotate 100\n    {mode}\n    missingok\n    nocompress\n{script}}}\n'
    )
    config.chmod(0o644)
    return [require_tool("logrotate"), "-f", "-s", str(tmp_path / "state"), str(config)]


@pytest.mark.parametrize(
    ("mode", "signal_it"),
    [("create 0640", True), ("create 0640", False)],
    ids=["create+SIGHUP", "create, move noticed"],
)
def test_logrotate_create_under_load_loses_and_splits_nothing(
    tmp_path: Path, mode: str, signal_it: bool
) -> None:
    """Real logrotate renames the file five times while records pour in: every record is
    in exactly one of the files, every line whole, whether or not postrotate sends SIGHUP."""
    log = tmp_path / "log" / "queries.jsonl"
    count = 12000
    writer = JsonlWriter(log, count=count, rate=8000, workdir=tmp_path)
    writer.start()
    command = _logrotate(tmp_path, log, mode, f"kill -HUP {writer.pid}" if signal_it else "")
    for _ in range(5):
        time.sleep(0.25)
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
    assert writer.wait() == 0, writer.log_text()
    files = sorted(log.parent.glob("queries.jsonl*"))
    assert len(files) >= 5
    numbers = sequence_numbers(files)
    assert sorted(numbers) == list(range(count))
    # SIGHUP reopens at each rotation; without it, the 1 s check notices at least once.
    assert writer.reopened() >= (5 if signal_it else 1)


def test_logrotate_copytruncate_never_splits_a_line(tmp_path: Path) -> None:
    """With copytruncate every line stays whole and the live file has no hole of zeros;
    what follows the last truncation is all there."""
    log = tmp_path / "log" / "queries.jsonl"
    count = 12000
    writer = JsonlWriter(log, count=count, rate=8000, workdir=tmp_path)
    writer.start()
    command = _logrotate(tmp_path, log, "copytruncate")
    for _ in range(5):
        time.sleep(0.25)
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
    assert writer.wait() == 0, writer.log_text()
    assert b"\x00" not in log.read_bytes()
    files = sorted(log.parent.glob("queries.jsonl*"))
    numbers = sequence_numbers(files)
    assert len(numbers) == len(set(numbers))
    live = sequence_numbers([log])
    assert live == list(range(live[0], count))
    lost = count - len(numbers)
    print(f"\ncopytruncate: {lost} of {count} records written between copy and truncate")
