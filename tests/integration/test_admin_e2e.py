"""The admin listener and the `misp-dns` command against a real server.

misp-dns is started with `misp-dns run --config PATH` (the command's alias of `twistd -n
--pidfile= misp-dns`), forwarding to the session's Unbound and blocking a copy of the
sample MISP feed, with `[admin]` on a loopback port and a token file. Queries go over real
sockets; /metrics is fetched over HTTP and read with prometheus_client's parser; the
command runs as its own process, as an operator would run it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families

from .misp_stand_in import no_server_tracebacks, watch  # noqa: F401  (an autouse fixture)
from .net import wait_until
from .server import MispDnsProcess
from .unbound import WWW, UnboundProcess
from .wire import ask_tcp, ask_udp, make_query

REPO = Path(__file__).resolve().parents[2]
SAMPLE_FEED = REPO / "etc" / "sample-feed"
TOKEN = "e2e-admin-token"
#: A domain of the sample feed, its event and its attribute (etc/sample-feed).
BLOCKED = "comalign.pro"
EVENT_UUID = "0dbb179a-1c8c-4e7c-a264-2440414dbac8"
ATTRIBUTE_UUID = "77084a53-a024-43cb-8881-c8a715bf9de3"


def command(*argv: str) -> list[str]:
    """`misp-dns ARGV` as a process of the test's interpreter."""
    return [sys.executable, "-m", "misp_dns", *argv]


class Admin:
    """The admin listener of the server under test, over HTTP."""

    def __init__(self, port: int, config: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.config = config
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, str]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(self.base + path, headers=headers)
        try:
            with self._opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, text = self.get("/metrics")
        assert code == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """`misp-dns ARGV --config PATH`, the way an operator runs it."""
        return subprocess.run(
            command(*argv, "--config", str(self.config)),
            capture_output=True,
            text=True,
            timeout=60,
        )


def sample(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, unbound: UnboundProcess
) -> Iterator[tuple[MispDnsProcess, Admin]]:
    """misp-dns started by `misp-dns run`, blocking the sample feed, with an admin listener."""
    workdir = tmp_path_factory.mktemp("admin-e2e")
    feed = workdir / "sample-feed"
    shutil.copytree(SAMPLE_FEED, feed)
    token_file = workdir / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port, admin_port = free_port(), free_port()
    config = workdir / "misp-dns.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1:{port}"]
upstreams = ["{unbound.address[0]}:{unbound.address[1]}"]
server_name = "misp-dns.test"
state_dir = "{workdir / "state"}"

[[policy]]
type = "misp-feed"
url = "{feed}"
max_ioc_age = "3650d"

[admin]
listen = "127.0.0.1:{admin_port}"
token_file = "{token_file}"
"""
    )
    process = MispDnsProcess(
        config, [("127.0.0.1", port)], workdir, lambda path: command("run", "--config", str(path))
    )
    process.start(probe=WWW)
    watch(process)
    admin = Admin(admin_port, config)
    wait_until(lambda: admin.get("/readyz", token=None)[0] == 200, 20, 0.1, "/readyz 200")
    yield process, admin
    process.stop()


def test_metrics_count_what_the_server_answered(served: tuple[MispDnsProcess, Admin]) -> None:
    """Blocked, forwarded and cached queries over UDP and TCP show up in /metrics, with
    the upstream's latency and the feed's indicators, as prometheus_client reads them."""
    process, admin = served
    before = admin.metrics()
    assert ask_udp(make_query(f"www.{BLOCKED}", "A"), process.address).rcode() == 3
    assert ask_tcp(make_query(BLOCKED, "AAAA"), process.address).rcode() == 3
    name = f"admin-e2e-{time.monotonic_ns()}.{WWW}"
    ask_udp(make_query(name, "A"), process.address)
    ask_udp(make_query(name, "A"), process.address)
    after = admin.metrics()

    def grew(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    queries = "misp_dns_queries_total"
    assert grew(sample(queries, protocol="udp", qtype="A", response_type="Blocked")) == 1
    assert grew(sample(queries, protocol="tcp", qtype="AAAA", response_type="Blocked")) == 1
    assert grew(sample(queries, protocol="udp", qtype="A", response_type="Recursive")) == 1
    assert grew(sample(queries, protocol="udp", qtype="A", response_type="Cached")) >= 1
    assert grew(sample("misp_dns_blocked_total", source="misp-feed", trigger="qname")) == 2
    assert grew(sample("misp_dns_upstream_seconds_count")) == 1
    assert grew(sample("misp_dns_cache_hits_total")) >= 1
    labels = {"policy": "policy[0]", "source": "misp-feed"}
    assert after[sample("misp_dns_indicators", type="domain", **labels)] > 50
    assert sample("misp_dns_indicators", type="hostname", **labels) in after
    last = after[sample("misp_dns_refresh_last_success_timestamp", **labels)]
    assert time.time() - 300 < last <= time.time()


def test_token_health_and_readiness(served: tuple[MispDnsProcess, Admin]) -> None:
    """Metrics need the token; /healthz and /readyz answer without it."""
    _, admin = served
    assert admin.get("/metrics", token=None)[0] == 401
    assert admin.get("/metrics", token="wrong")[0] == 401
    assert admin.get("/healthz", token=None)[0] == 200
    assert json.loads(admin.get("/readyz", token=None)[1]) == {"ready": True, "waiting": []}


def test_the_command_explains_reports_and_refreshes(served: tuple[MispDnsProcess, Admin]) -> None:
    """`misp-dns explain/status/refresh` against the running server."""
    _, admin = served
    explained = admin.run("explain", f"www.{BLOCKED}", "--json")
    assert explained.returncode == 0, explained.stderr
    found: dict[str, Any] = json.loads(explained.stdout)
    assert {k: found[k] for k in ("decision", "source", "indicator", "trigger")} == {
        "decision": "block",
        "source": "misp-feed",
        "indicator": BLOCKED,
        "trigger": "qname",
    }
    assert (found["mispEventUuid"], found["mispAttributeUuid"]) == (EVENT_UUID, ATTRIBUTE_UUID)
    human = admin.run("explain", "www.example.org")
    assert human.stdout.startswith("www.example.org A: no policy has an opinion")
    status = admin.run("status")
    assert status.returncode == 0, status.stderr
    assert "policy[0] misp-feed (misp-feed):" in status.stdout
    refreshed = admin.run("refresh", "misp-feed")
    assert refreshed.returncode == 0, refreshed.stderr
    assert refreshed.stdout.startswith("policy[0] misp-feed (misp-feed): ")
    checked = subprocess.run(
        command("check-config", "--config", str(admin.config)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0 and "configuration is valid" in checked.stdout
