"""A third-party sink end to end: `contrib/example-sink` (`csv`) under twistd.

`make test` installs the example package beside misp-dns; its entry point in the group
`misp_dns.exporters` makes `[[export]] type = "csv"` usable in a config with nothing else
done, and the server hands it the record of every query it answers.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, require_package

from .hostile_dns import server_table, start_server, write_config
from .misp_stand_in import no_server_tracebacks  # noqa: F401  (an autouse fixture)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import UnboundProcess
from .wire import ask_tcp, ask_udp, make_query

HEADER = [
    "timestamp",
    "clientIp",
    "question.questionName",
    "question.questionType",
    "responseType",
    "policy.source",
]


@pytest.fixture(scope="module")
def csv_server(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[tuple[MispDnsProcess, Path]]:
    """misp-dns with `[allowlist www.test]` exporting to a `csv` sink; and the CSV file."""
    require_package("misp-dns-example-sink")
    workdir = tmp_path_factory.mktemp("csv-server")
    path = workdir / "queries.csv"
    port = free_port()
    config = write_config(
        workdir / "misp-dns.toml",
        server_table(port, unbound.address, workdir / "state"),
        [{"type": "allowlist", "domains": ["www.test"]}],
        [{"type": "csv", "path": str(path)}],
    )
    process = start_server(workdir, config, port, probe="probe.test.")
    yield process, path
    process.stop()


def _rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as file:
            return list(csv.reader(file))
    except FileNotFoundError:
        return []


def test_the_record_of_each_query_is_a_csv_row(csv_server: tuple[MispDnsProcess, Path]) -> None:
    """An allowlisted query over UDP and a forwarded one over TCP each become a row with the
    default fields under a header: the time, the client, the question, how it was answered
    and, for the allowlisted one, the deciding policy."""
    process, path = csv_server
    ask_udp(make_query("www.test", "A"), process.address)
    ask_tcp(make_query("Nowhere.test", "AAAA"), process.address)

    def asked() -> list[list[str]]:
        return [row for row in _rows(path)[1:] if row[2] in {"www.test", "nowhere.test"}]

    wait_until(lambda: len(asked()) == 2, 10, what="both queries in the CSV file")
    assert _rows(path)[0] == HEADER
    allowed, forwarded = asked()
    for row in (allowed, forwarded):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row[0]), row
    assert allowed[1:] == ["127.0.0.1", "www.test", "A", "Allowed", "allowlist"]
    assert forwarded[1:] == ["127.0.0.1", "nowhere.test", "AAAA", "Recursive", ""]
