"""The Grafana dashboard in contrib/grafana loads, and asks only for what misp-dns serves.

Two checks: the JSON is a Grafana dashboard model Grafana imports (a schema version, a uid,
panels with ids, places on the 24-column grid that do not overlap, Prometheus targets with
expressions and reference ids, the variables the expressions use); and every metric name
and label its PromQL expressions use is in a real /metrics scrape of a server built
in-process as twistd builds it (with a blocking policy posting sightings, one in monitor
mode, an allowlist and an export sink), read with prometheus_client's own parser. A
renamed metric or label in misp-dns thus fails here instead of leaving an empty panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import result_of
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns as tdns

from misp_dns.event import Answer
from misp_dns.export.exporter import ExporterService, SinkSlot
from misp_dns.intel.sightings import SightingsReporter
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import BlockingOptions, IPolicy, RawIndicator
from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
from misp_dns.policy.misp import MispBlockingPolicy
from misp_dns.tap import build_service
from misp_dns.testing import FakeMisp, MemoryIndicatorSource, MemorySink
from misp_dns.values import AdminConfig, Config, HostPort, ServerConfig, Upstream

DASHBOARD = Path(__file__).resolve().parents[1] / "contrib" / "grafana" / "misp-dns.json"
PANEL_TYPES = {"row", "stat", "timeseries", "gauge", "bargauge", "table", "text"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana's own variables, and the labels Prometheus adds to every scraped series.
BUILT_IN_VARIABLES = {"__rate_interval", "__interval", "__range"}
TARGET_LABELS = {"instance", "job"}
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in model["panels"]:
        yield panel
        yield from panel.get("panels", ())


def expressions(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets and the variables' queries."""
    found = [t["expr"] for p in panels(model) for t in p.get("targets", ())]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            found.append(_variable_query(variable))
    return found


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def test_the_dashboard_is_a_grafana_dashboard_model(dashboard: dict[str, Any]) -> None:
    """What Grafana needs to import it: schema version, uid and title; panels with unique
    ids, a known type, a place on the grid (no two overlapping) and, but for rows,
    Prometheus targets on the chosen data source with an expression and a reference id;
    every variable an expression uses is defined."""
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["title"] == "misp-dns"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert "id" not in dashboard or dashboard["id"] is None  # ids are given by the importer
    found = list(panels(dashboard))
    ids = [panel["id"] for panel in found]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in found:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        place = panel["gridPos"]
        assert all(isinstance(place[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert place["h"] > 0 and place["w"] > 0 and place["x"] >= 0 and place["y"] >= 0
        assert place["x"] + place["w"] <= 24, panel["title"]
        for row in range(place["y"], place["y"] + place["h"]):
            for column in range(place["x"], place["x"] + place["w"]):
                assert (row, column) not in cells, f"{panel['title']} overlaps {cells[row, column]}"
                cells[row, column] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE
            assert isinstance(target["expr"], str) and target["expr"].strip()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    used = {
        name
        for text in [*expressions(dashboard), json.dumps(DATASOURCE)]
        for name in re.findall(r"\$\{?(\w+)", text)
    }
    assert used <= set(variables) | BUILT_IN_VARIABLES


# --- what a real scrape holds ---------------------------------------------------------------


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(function, *args)


def _policy(
    reactor: MemoryReactorClock, value: str, enforced: bool, sightings: SightingsReporter | None
) -> MispBlockingPolicy:
    updater = IndicatorUpdater(
        "misp-connector",
        MemoryIndicatorSource([RawIndicator(value, "domain")]),
        clock=reactor,
        interval=7200,
        max_age=15 * 86400,
        state_path=None,
        run_in_thread=inline,
    )
    updater.startService()
    options = BlockingOptions(enable_blocking=enforced)
    return MispBlockingPolicy("misp", "misp-connector", options, updater, sightings)


def _cache(server: Any, name: str) -> None:
    wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    record = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 300, tdns.Record_A("192.0.2.7", 300))
    server.resolver.cache.put((wire, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=(record,)))


def scrape() -> str:
    """/metrics of a server built by `tap.build_service` after a few queries."""
    import dns.message

    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    misp = FakeMisp("k" * 40)
    reporter = SightingsReporter("https://misp.test", "k" * 40, StubTreq(misp), reactor)
    policies: list[IPolicy] = [
        AllowlistPolicy.from_config(AllowlistOptions(domains=("good.example",))),
        _policy(reactor, "evil.example", True, reporter),
        _policy(reactor, "watched.example", False, None),
    ]
    exporter = ExporterService([SinkSlot("export[0] (memory)", MemorySink())], reactor)
    config = Config(
        server=ServerConfig(upstreams=(Upstream("192.0.2.53", 53),)),
        admin=AdminConfig(HostPort("127.0.0.1", 8053)),
    )
    top = build_service(config, policies, reactor, exporter=exporter)
    admin: Any = top.getServiceNamed("admin")
    parts = admin.api.parts
    for name in ("good.example", "watched.example", "www.example.com"):
        _cache(parts, name)
    for name in ("evil.example", "good.example", "watched.example", "www.example.com"):
        for transport in ("udp", "tcp"):
            wire = dns.message.make_query(name, "A").to_wire()
            reply = parts.responder.respond(wire, "127.0.0.1", transport)
            if isinstance(reply, defer.Deferred):
                result_of(reply)
    # No query leaves the test for an upstream: one failed attempt and one answer's time
    # are written into the forwarder's own counts, as forwarding would.
    parts.resolver.forwarder.failures["192.0.2.53:53"] = 1
    parts.resolver.forwarder.latency.observe(0.012)
    response = result_of(StubTreq(admin.resource).get("http://admin.test/metrics"))
    text: str = result_of(response.text())
    return text


def _served(text: str) -> dict[str, set[str]]:
    """Every series name a query may use, with the labels its samples carry."""
    served: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, [""]):
            served.setdefault(family.name + suffix, set())
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    return served


def _labels_used(expression: str) -> set[str]:
    """The label names an expression groups by, matches on or asks the values of."""
    used = set()
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expression):
        used.update(name.strip() for name in grouping.split(",") if name.strip())
    for selector in re.findall(r"\{([^}]*)\}", expression):
        used.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", selector))
    used.update(re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expression))
    return used


def test_every_metric_and_label_the_dashboard_uses_is_served(dashboard: dict[str, Any]) -> None:
    """Each metric name in the dashboard's PromQL is in a real scrape of /metrics, and each
    label it groups by or matches on is carried by a metric of that expression (or added
    by Prometheus: instance, job)."""
    served = _served(scrape())
    missing: list[str] = []
    for expression in expressions(dashboard):
        names = set(re.findall(r"\b(?:misp_dns|process)_\w+", expression))
        assert names, f"no metric in {expression!r}"
        missing += [f"{name} (in {expression})" for name in names if name not in served]
        carried = set(TARGET_LABELS).union(*(served.get(name, set()) for name in names))
        missing += [
            f"label {label} (in {expression})"
            for label in _labels_used(expression)
            if label not in carried
        ]
    assert missing == []


def test_the_scrape_check_catches_a_wrong_name() -> None:
    """The check itself: a misspelt metric or label is not found in the scrape."""
    served = _served(scrape())
    assert (
        "misp_dns_queries_total" in served and "response_type" in served["misp_dns_queries_total"]
    )
    assert "misp_dns_query_total" not in served
    assert "responsetype" not in served["misp_dns_queries_total"]
    assert "misp_dns_sightings_sent_total" in served
    assert {"policy", "source", "type"} <= served["misp_dns_indicators"]
    assert _labels_used('sum by (a, b) (x{c=~"$i", d!="e"}) + label_values(m, f)') == {
        "a",
        "b",
        "c",
        "d",
        "f",
    }
