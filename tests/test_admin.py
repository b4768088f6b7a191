"""The admin listener, in process: metrics, health, the token, and the API of `misp-dns`.

The server is built by `tap.build_service` on a `MemoryReactorClock`, as twistd builds it,
with an allowlist and a MISP-fed blocking policy over an in-memory source. Queries go
through the real responder; HTTP requests go through a real twisted.web stack with
`treq.testing.StubTreq`. /metrics is read back with prometheus_client's own parser, so the
exposition is judged by the library Prometheus users rely on, not by our encoder.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import attrs
import dns.message
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from misp_dns.admin.web import AdminService, read_token
from misp_dns.build import context_for
from misp_dns.event import Answer
from misp_dns.export.exporter import ExporterService, SinkSlot
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.intel.xfr import FullZone
from misp_dns.intel.zonedata import read_master
from misp_dns.interfaces import BlockingOptions, IPolicy, PolicyQuery, RawIndicator
from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
from misp_dns.policy.chain import PolicyChain
from misp_dns.policy.misp import MispBlockingPolicy
from misp_dns.policy.rpz import RpzOptions
from misp_dns.policy.rpz import plugin as rpz_plugin
from misp_dns.tap import build_service
from misp_dns.testing import MemoryIndicatorSource, MemorySink
from misp_dns.values import AdminConfig, Config, ConfigError, HostPort, ServerConfig, Upstream

NOW = 1_700_000_000.0
TOKEN = b"s3cret-admin-token"
BASE = "http://admin.test"
_trial = SynchronousTestCase()


def result_of(deferred: defer.Deferred[Any]) -> Any:
    """The result a Deferred already has (trial's successResultOf)."""
    return _trial.successResultOf(deferred)


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    """The updater's 'thread' work, run at once so the test's clock alone drives it."""
    return defer.maybeDeferred(function, *args)


def indicator(value: str, type: str = "domain", **kwargs: Any) -> RawIndicator:
    return RawIndicator(value=value, type=type, **kwargs)


@attrs.define
class Server:
    """A server built as twistd builds it, its admin service, and a client for it."""

    reactor: MemoryReactorClock
    admin: AdminService
    source: MemoryIndicatorSource
    updater: IndicatorUpdater
    sink: MemorySink
    http: StubTreq

    @property
    def responder(self) -> Any:
        return self.admin.api.parts.responder

    def ask(self, name: str, qtype: str = "A", transport: str = "udp", **kwargs: Any) -> Any:
        """Send a query through the responder; return the reply, parsed by dnspython."""
        wire = dns.message.make_query(name, qtype, **kwargs).to_wire()
        reply = self.responder.respond(wire, "127.0.0.1", transport)
        if isinstance(reply, defer.Deferred):
            reply = result_of(reply)
        return dns.message.from_wire(reply)

    def get(self, path: str, token: bytes | None = TOKEN, **headers: str) -> tuple[int, str]:
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        if token is not None:
            sent["Authorization"] = "Bearer " + token.decode()
        response = result_of(self.http.get(BASE + path, headers=sent))
        return response.code, result_of(response.text())

    def post(self, path: str, body: Any, content_type: str = "application/json") -> Any:
        headers = {"Authorization": "Bearer " + TOKEN.decode(), "Content-Type": content_type}
        requested = self.http.post(BASE + path, data=json.dumps(body).encode(), headers=headers)
        self.http.flush()
        response = result_of(requested)
        return response.code, json.loads(result_of(response.text()))

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, parsed by prometheus_client: (name, labels) -> value."""
        code, text = self.get("/metrics")
        assert code == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def families(self) -> dict[str, str]:
        """The metric families of /metrics and their types."""
        _, text = self.get("/metrics")
        return {family.name: family.type for family in text_string_to_metric_families(text)}


def make_server(
    *,
    indicators: list[RawIndicator] | None = None,
    hold: bool = False,
    enforced: bool = True,
    token: bytes | None = TOKEN,
) -> Server:
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    source = MemoryIndicatorSource(
        indicators if indicators is not None else [indicator("evil.example")], hold=hold
    )
    updater = IndicatorUpdater(
        "misp-connector",
        source,
        clock=reactor,
        interval=7200,
        max_age=15 * 86400,
        state_path=None,
        run_in_thread=inline,
    )
    options = BlockingOptions(enable_blocking=enforced)
    policies = [
        AllowlistPolicy.from_config(AllowlistOptions(domains=("good.example",))),
        MispBlockingPolicy("misp", "misp-connector", options, updater),
    ]
    sink = MemorySink()
    exporter = ExporterService([SinkSlot("export[0] (memory)", sink)], reactor)
    config = Config(
        server=ServerConfig(upstreams=(Upstream("192.0.2.53", 53),)),
        admin=AdminConfig(HostPort("127.0.0.1", 8053), token_file="(given)" if token else ""),
    )
    top = build_service(config, policies, reactor, exporter=exporter, admin_token=token)
    admin: Any = top.getServiceNamed("admin")
    updater.startService()
    return Server(reactor, admin, source, updater, sink, StubTreq(admin.resource))


def cache_answer(server: Server, name: str) -> None:
    """Put an A answer for `name` in the server's answer cache, as if an upstream gave it."""
    wire_name = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    record = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 300, tdns.Record_A("192.0.2.7", 300))
    server.admin.api.parts.resolver.cache.put(
        (wire_name, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=(record,))
    )


def sample(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


# --- /metrics -------------------------------------------------------------------------------


def test_queries_are_counted_by_protocol_type_and_response_type() -> None:
    """Each answered query counts once under its protocol, type and response type, blocked
    ones also under their source and trigger; cache hits are counted."""
    server = make_server()
    assert server.ask("evil.example").rcode() == dns.rcode.NXDOMAIN
    server.ask("www.evil.example", "AAAA")
    server.ask("evil.example", "TXT", transport="tcp")
    cache_answer(server, "www.example.com")
    server.ask("www.example.com")
    server.ask("www.example.com", transport="tcp")
    metrics = server.metrics()
    queries = "misp_dns_queries_total"
    assert metrics[sample(queries, protocol="udp", qtype="A", response_type="Blocked")] == 1
    assert metrics[sample(queries, protocol="udp", qtype="AAAA", response_type="Blocked")] == 1
    assert metrics[sample(queries, protocol="tcp", qtype="TXT", response_type="Blocked")] == 1
    assert metrics[sample(queries, protocol="udp", qtype="A", response_type="Cached")] == 1
    assert metrics[sample(queries, protocol="tcp", qtype="A", response_type="Cached")] == 1
    blocked = sample("misp_dns_blocked_total", source="misp-connector", trigger="qname")
    assert metrics[blocked] == 3
    assert metrics[sample("misp_dns_cache_hits_total")] == 2
    assert metrics[sample("misp_dns_cache_entries")] == 1


def test_a_block_through_the_answer_is_counted_under_its_trigger() -> None:
    """A cached answer whose CNAME leads to a listed name is blocked and counted under
    trigger `cname`, apart from the question's own blocks."""
    server = make_server()
    wire_name = b"\x07tracker\x07example\x03com\x00"
    chain = tdns.RRHeader(
        b"tracker.example.com", tdns.CNAME, tdns.IN, 300, tdns.Record_CNAME(b"c2.evil.example")
    )
    record = tdns.RRHeader(b"c2.evil.example", tdns.A, tdns.IN, 300, tdns.Record_A("192.0.2.9"))
    server.admin.api.parts.resolver.cache.put(
        (wire_name, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=(chain, record))
    )
    assert server.ask("tracker.example.com").rcode() == dns.rcode.NXDOMAIN
    server.ask("evil.example")
    metrics = server.metrics()
    for trigger in ("cname", "qname"):
        assert (
            metrics[sample("misp_dns_blocked_total", source="misp-connector", trigger=trigger)] == 1
        )


def test_monitor_mode_is_not_counted_as_blocked() -> None:
    """A decision that is not enforced resolves the name: not a block in the metrics, but a
    query monitor mode would have blocked; allowlisted names are neither."""
    server = make_server(enforced=False)
    cache_answer(server, "evil.example")
    cache_answer(server, "good.example")
    server.ask("evil.example")
    server.ask("evil.example", transport="tcp")
    server.ask("good.example", transport="tcp")
    metrics = server.metrics()
    assert sample("misp_dns_blocked_total", source="misp-connector", trigger="qname") not in (
        metrics
    )
    would = sample("misp_dns_would_block_total", source="misp-connector", trigger="qname")
    assert metrics[would] == 2
    assert [key for key in metrics if key[0] == "misp_dns_would_block_total"] == [would]
    assert (
        metrics[sample("misp_dns_queries_total", protocol="udp", qtype="A", response_type="Cached")]
        == 1
    )
    server.ask("evil.example")
    assert server.metrics()[would] == 3


def test_unlisted_query_types_share_one_label() -> None:
    """Random query types cannot grow the number of series: unknown ones are `other`."""
    server = make_server()
    for qtype in (65280, 65281, 65282):
        server.ask("evil.example", f"TYPE{qtype}")
    labels = sample(
        "misp_dns_queries_total", protocol="udp", qtype="other", response_type="Blocked"
    )
    assert server.metrics()[labels] == 3


def test_indicators_refresh_and_export_metrics() -> None:
    """Indicators per policy, source and type, the last good refresh, failed refreshes and
    each sink's drops are exposed; the upstream latency is a histogram."""
    server = make_server(
        indicators=[
            indicator("evil.example"),
            indicator("bad.example|192.0.2.1", type="domain|ip"),
            indicator("host.bad.example", type="hostname"),
        ]
    )
    server.sink.dropped = 7
    server.source.error = RuntimeError("MISP answered 503")
    server.reactor.advance(7200)
    metrics = server.metrics()
    labels = {"policy": "policy[1]", "source": "misp-connector"}
    assert metrics[sample("misp_dns_indicators", type="domain", **labels)] == 2
    assert metrics[sample("misp_dns_indicators", type="hostname", **labels)] == 1
    assert metrics[sample("misp_dns_refresh_last_success_timestamp", **labels)] == NOW
    assert metrics[sample("misp_dns_refresh_failures_total", **labels)] == 1
    assert metrics[sample("misp_dns_export_dropped_total", sink="export[0] (memory)")] == 7
    families = server.families()
    assert families["misp_dns_upstream_seconds"] == "histogram"
    assert families["misp_dns_indicators"] == "gauge"
    assert families["misp_dns_queries"] == "counter"
    assert metrics[sample("misp_dns_upstream_seconds_count")] == 0
    assert metrics[sample("misp_dns_info", version=__import__("misp_dns").__version__)] == 1


def test_tcp_connections_closed_per_client_and_descriptor_shortages_are_exposed() -> None:
    """Connections closed at tcp_max_connections_per_client are counted, and so are the
    socket() and accept() calls that found no descriptor (one count for the whole server,
    shared by the forwarder and the TCP listeners)."""
    server = make_server()
    parts = server.admin.api.parts
    for host in range(101):
        address = IPv4Address("TCP", f"192.0.2.{host}", 40000)
        protocol = parts.tcp.buildProtocol(address)
        if protocol is not None:
            protocol.makeConnection(StringTransport(peerAddress=address))
    assert parts.resolver.forwarder.shortage is parts.tcp.shortage
    parts.tcp.shortage.happened("socket")
    parts.tcp.shortage.happened("socket")
    parts.tcp.shortage.happened("accept")
    metrics = server.metrics()
    assert metrics[sample("misp_dns_tcp_rejected_per_client_total")] == 1
    assert metrics[sample("misp_dns_tcp_connections")] == 100
    assert metrics[sample("misp_dns_descriptor_shortages_total", operation="socket")] == 2
    assert metrics[sample("misp_dns_descriptor_shortages_total", operation="accept")] == 1


def test_each_server_has_its_own_registry() -> None:
    """Two servers in one process count apart, and nothing lands in the global registry."""
    first, second = make_server(), make_server()
    first.ask("evil.example")
    labels = sample("misp_dns_queries_total", protocol="udp", qtype="A", response_type="Blocked")
    assert first.metrics()[labels] == 1
    assert labels not in second.metrics()
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("misp_dns")]


def test_openmetrics_is_served_when_asked_for() -> None:
    """A scraper that accepts OpenMetrics gets it (prometheus_client's content negotiation)."""
    server = make_server()
    code, text = server.get("/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert code == 200
    assert text.rstrip().endswith("# EOF")


# --- health and the token -------------------------------------------------------------------


def test_healthz_is_alive_and_readyz_waits_for_every_policy() -> None:
    """/readyz is 503 until the blocking policy has its indicators, then 200."""
    server = make_server(hold=True)
    assert server.get("/healthz", token=None)[0] == 200
    code, body = server.get("/readyz", token=None)
    assert code == 503
    assert json.loads(body) == {"ready": False, "waiting": ["policy[1]"]}
    server.source.release()
    code, body = server.get("/readyz", token=None)
    assert (code, json.loads(body)) == (200, {"ready": True, "waiting": []})


def test_readyz_follows_the_chain_a_reload_put_in_service() -> None:
    """After a reload swaps the chain, readiness is about the new chain's policies."""
    server = make_server()
    assert server.get("/readyz")[0] == 200
    waiting = MemoryIndicatorSource([indicator("new.example")], hold=True)
    updater = IndicatorUpdater(
        "misp-feed",
        waiting,
        clock=server.reactor,
        interval=3600,
        max_age=86400,
        state_path=None,
        run_in_thread=inline,
    )
    updater.startService()
    new = MispBlockingPolicy("misp-feed", "misp-feed", BlockingOptions(), updater)
    server.admin.api.parts.resolver.policy = PolicyChain([new])
    assert json.loads(server.get("/readyz")[1]) == {"ready": False, "waiting": ["policy[0]"]}
    waiting.release()
    assert server.get("/readyz")[0] == 200


def test_the_token_guards_everything_but_health() -> None:
    """Without the right Bearer token: 401 for metrics and the API; health stays open."""
    server = make_server()
    for path in ("/metrics", "/api/status", "/api/explain?name=evil.example", "/"):
        assert server.get(path, token=None)[0] == 401, path
        assert server.get(path, token=b"wrong")[0] == 401, path
    assert server.get("/metrics", token=TOKEN[:-1])[0] == 401
    assert server.get("/metrics")[0] == 200
    assert server.get("/api/status")[0] == 200
    assert server.get("/healthz", token=None)[0] == 200
    assert server.get("/readyz", token=None)[0] == 200


def test_without_a_token_loopback_needs_none() -> None:
    """A loopback listener configured without token_file answers without a header."""
    server = make_server(token=None)
    assert server.get("/metrics", token=None)[0] == 200


def test_read_token_names_the_file_never_the_token(tmp_path: Path) -> None:
    """Unreadable or empty token files are config errors naming the file; a token readable
    by every user is used, with a warning that does not show it."""
    missing = AdminConfig(token_file=str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as caught:
        read_token(missing)
    assert caught.value.problems == [
        f"admin.token_file {str(tmp_path / 'absent')!r}: cannot read: No such file or directory"
    ]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="the token is empty"):
        read_token(AdminConfig(token_file=str(empty)))
    path = tmp_path / "token"
    path.write_text(TOKEN.decode() + "\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert read_token(AdminConfig(token_file=str(path))) == TOKEN
        assert not [e for e in events if e.get("log_level") == LogLevel.warn]
        path.chmod(0o644)
        assert read_token(AdminConfig(token_file=str(path))) == TOKEN
    finally:
        globalLogPublisher.removeObserver(events.append)
    (warning,) = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert str(path) in warning and TOKEN.decode() not in warning


def test_the_service_listens_where_configured_and_stops() -> None:
    """The admin service listens on `[admin] listen` while running, and no longer after."""
    server = make_server()
    reactor = server.reactor
    server.admin.startService()
    (port, _factory, _backlog, interface) = reactor.tcpServers[-1]
    assert (port, interface) == (8053, "127.0.0.1")
    server.admin.stopService()
    assert server.admin.port is None


# --- the API --------------------------------------------------------------------------------


def explain(server: Server, name: str, qtype: str = "A") -> tuple[int, dict[str, Any]]:
    code, body = server.get(f"/api/explain?name={name}&type={qtype}")
    return code, json.loads(body)


def test_explain_a_blocked_name_says_which_indicator_and_event() -> None:
    """A name under an indicator: block, the indicator, the trigger and MISP's ids."""
    server = make_server(
        indicators=[
            indicator(
                "evil.example",
                event_id="1234",
                event_uuid="5f0c-event",
                event_info="Phishing wave",
                attribute_uuid="77aa-attribute",
            )
        ]
    )
    code, explained = explain(server, "WWW.Evil.Example.", "aaaa")
    assert code == 200
    assert explained["decision"] == "block"
    assert explained | {"policies": None} == {
        "name": "www.evil.example",
        "type": "AAAA",
        "decision": "block",
        "policy": "policy[1]",
        "policyType": "misp",
        "source": "misp-connector",
        "indicator": "evil.example",
        "trigger": "qname",
        "enforced": True,
        "mispEventId": "1234",
        "mispEventUuid": "5f0c-event",
        "mispEventInfo": "Phishing wave",
        "mispAttributeUuid": "77aa-attribute",
        "policies": None,
    }
    assert [step["decision"] for step in explained["policies"]] == ["none", "block"]


def test_explain_an_allowed_name_shows_what_it_hides() -> None:
    """An allowlisted name is allowed, and the later policy's block is shown too."""
    server = make_server(indicators=[indicator("good.example")])
    _, explained = explain(server, "good.example")
    assert explained["decision"] == "allow"
    assert (explained["policy"], explained["indicator"]) == ("policy[0]", "good.example")
    assert [s["decision"] for s in explained["policies"]] == ["allow", "block"]


def test_explain_an_unlisted_name_and_monitor_mode() -> None:
    """No policy has an opinion: none. In monitor mode a listed name is a block not enforced."""
    _, explained = explain(make_server(), "www.example.com")
    assert explained["decision"] == "none"
    assert "source" not in explained
    _, monitored = explain(make_server(enforced=False), "evil.example")
    assert (monitored["decision"], monitored["enforced"]) == ("block", False)


def test_explain_a_name_a_raising_policy_fails() -> None:
    """A policy that raises is shown as an error, as the server would answer SERVFAIL."""

    @implementer(IPolicy)
    class Broken:
        name = "broken"
        service = None

        def whenReady(self) -> defer.Deferred[None]:
            return defer.succeed(None)

        def decide(self, query: PolicyQuery) -> None:
            raise KeyError(query.name)

    server = make_server()
    server.admin.api.parts.resolver.policy = PolicyChain([Broken()])
    _, explained = explain(server, "evil.example")
    assert (explained["decision"], explained["error"]) == ("error", "KeyError")


def test_explain_refuses_what_is_no_name_or_type() -> None:
    """A bad name or type is a 400 saying what is wrong."""
    server = make_server()
    assert explain(server, "a%20b")[0] == 400
    code, body = explain(server, "evil.example", "NOPE")
    assert (code, body) == (400, {"error": "unknown query type 'NOPE'"})
    assert explain(server, "evil.example", "TYPE65")[1]["type"] == "HTTPS"
    assert explain(server, "bücher.example")[1]["name"] == "xn--bcher-kva.example"


def test_status_shows_policies_refreshes_export_and_cache() -> None:
    """Status holds what an operator asks first: counts, refresh times, drops, cache."""
    server = make_server(indicators=[indicator("evil.example"), indicator("bad.example")])
    server.sink.dropped = 3
    server.reactor.advance(60)
    code, body = server.get("/api/status")
    status = json.loads(body)
    assert code == 200 and status["ready"] is True
    assert status["uptime"] == 60
    allowlist, misp = status["policies"]
    assert allowlist == {"policy": "policy[0]", "policyType": "allowlist", "ready": True}
    assert misp["indicators"] == 2 and misp["source"] == "misp-connector"
    assert misp["lastRefresh"] == NOW and misp["nextRefresh"] == NOW + 7200
    assert misp["lastError"] == "" and misp["enforced"] is True
    assert status["export"]["sinks"] == [{"name": "export[0] (memory)", "dropped": 3}]
    assert status["cache"]["maxEntries"] == 100_000


def test_refresh_fetches_now_and_says_how_it_went() -> None:
    """POST /api/refresh fetches at once; the answer gives the new count or the error."""
    server = make_server()
    server.source.indicators = [indicator("evil.example"), indicator("new.example")]
    code, body = server.post("/api/refresh", {})
    assert code == 200
    (outcome,) = body["refreshed"]
    assert outcome | {"duration": None} == {
        "policy": "policy[1]",
        "policyType": "misp",
        "source": "misp-connector",
        "ok": True,
        "indicators": 2,
        "duration": None,
        "error": "",
    }
    assert server.source.fetches == 2
    assert server.ask("new.example").rcode() == dns.rcode.NXDOMAIN
    server.source.error = RuntimeError("MISP answered 503")
    code, body = server.post("/api/refresh", {"policy": "misp-connector"})
    (outcome,) = body["refreshed"]
    assert (code, outcome["ok"], outcome["error"]) == (200, False, "MISP answered 503")


def test_refresh_waits_for_a_slow_fetch() -> None:
    """The answer comes when the fetch is over, not before."""
    server = make_server()
    server.source.hold = True
    headers = {"Authorization": "Bearer " + TOKEN.decode(), "Content-Type": "application/json"}
    requested = server.http.post(BASE + "/api/refresh", data=b"{}", headers=headers)
    server.http.flush()
    _trial.assertNoResult(requested)
    server.source.release()
    server.http.flush()
    assert result_of(requested).code == 200


def test_refresh_refuses_what_it_cannot_do() -> None:
    """An unknown policy is a 404 listing the refreshable ones; a form post is refused."""
    server = make_server()
    code, body = server.post("/api/refresh", {"policy": "policy[0]"})
    assert code == 404
    assert body["error"].endswith("there are: policy[1] (misp)")
    code, _ = server.post("/api/refresh", {}, content_type="application/x-www-form-urlencoded")
    assert code == 415
    assert server.post("/api/refresh", {"policy": 1})[0] == 400
    assert server.post("/api/refresh", {"policy": "policy[1]"})[0] == 200


def test_status_shows_an_rpz_secondary(tmp_path: Any) -> None:
    """An rpz policy's status: its zone, where it comes from, the serial served, the
    triggers applied and not, and how its transfers went."""
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    context = context_for(ServerConfig(state_dir=str(tmp_path)), reactor)
    policy = rpz_plugin.build(RpzOptions(zone="rpz.test", primary="192.0.2.1:53"), context)
    zone_text = (
        "$TTL 60\n@ SOA ns hm 12 3600 600 86400 60\n NS ns\n"
        "bad.example CNAME .\n32.1.0.53.10.rpz-client-ip CNAME .\n"
    )
    records = read_master(zone_text, "rpz.test")
    policy.follower.transfer_function = lambda *a, **k: defer.succeed(FullZone(tuple(records)))
    policy.follower.run_in_thread = inline
    config = Config(
        server=ServerConfig(upstreams=(Upstream("192.0.2.53", 53),)),
        admin=AdminConfig(HostPort("127.0.0.1", 8053), token_file="(given)"),
    )
    top = build_service(config, [policy], reactor, admin_token=TOKEN)
    admin: Any = top.getServiceNamed("admin")
    policy.follower.startService()
    http = StubTreq(admin.resource)
    headers = {"Authorization": "Bearer " + TOKEN.decode()}
    response = result_of(http.get(BASE + "/api/status", headers=headers))
    (rpz,) = json.loads(result_of(response.text()))["policies"]
    assert rpz == {
        "policy": "policy[0]",
        "policyType": "rpz",
        "ready": True,
        "zone": "rpz.test",
        "from": "192.0.2.1:53",
        "enforced": True,
        "serial": 12,
        "triggers": 1,
        "notApplied": {"rpz-client-ip": 1},
        "lastRefresh": NOW,
        "failuresInARow": 0,
        "lastError": "",
        "transfers": {"axfr": 1, "ixfr": 0, "up-to-date": 0, "fetch": 0},
    }
