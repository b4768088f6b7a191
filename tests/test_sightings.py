"""Blocks posted back to MISP as sightings: misp_dns.intel.sightings and its wiring.

The reporter talks HTTP to `misp_dns.testing.FakeMisp` (which answers `/sightings/add` as
MISP 2.5 does) through `treq.testing.StubTreq`, with time driven by `task.Clock`; every body
it sends is checked against MISP's own OpenAPI description. The wiring is tested through a
server built by `tap.build_service`, queries going through the real responder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import dns.message
import pytest
from conftest import require_package, result_of, unless_present
from integration.openapi_check import SPEC, MispOpenApi
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.names import dns as tdns

from misp_dns.build import build_policies
from misp_dns.config import load_config
from misp_dns.event import Answer
from misp_dns.intel.misp_options import MispOptions
from misp_dns.intel.sightings import BATCH_SIZE, STOP_GRACE, SightingsReporter
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import BuildContext, IPolicy, PluginType, RawIndicator
from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
from misp_dns.policy.misp import MISP_SOURCE, MispBlockingPolicy, misp_plugin
from misp_dns.registry import Registry
from misp_dns.tap import build_service
from misp_dns.testing import FakeMisp, Fault, MemoryIndicatorSource
from misp_dns.values import AdminConfig, Config, HostPort, ServerConfig, Upstream

KEY = "0123456789abcdef0123456789abcdef01234567"
URL = "https://misp.test"
NOW = 1_700_000_000.0
EVIL_UUID = "5e9c35b9-5e5c-4221-9e27-313127fc1f02"
BAD_UUID = "6a9c35b9-5e5c-4221-9e27-313127fc1f03"
IP_UUID = "7b9c35b9-5e5c-4221-9e27-313127fc1f04"
UUIDS = {"evil.example": EVIL_UUID, "bad.example": BAD_UUID, "192.0.2.7": IP_UUID}

needs_spec = unless_present(SPEC, "MISP's OpenAPI description in ../shared/data")


@attrs.define
class Rig:
    """A reporter, the fake MISP it posts to, and the clock."""

    reporter: SightingsReporter
    misp: FakeMisp
    clock: Clock
    http: StubTreq

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass, delivering what the fake answered meanwhile."""
        self.clock.advance(seconds)
        self.http.flush()

    def sent_bodies(self) -> list[Any]:
        return [r.json() for r in self.misp.requests if r.path == "/sightings/add"]


def rig(**options: Any) -> Rig:
    clock = Clock()
    clock.advance(NOW)
    misp = FakeMisp(KEY, now=clock.seconds)
    misp.add_attribute("evil.example", uuid=EVIL_UUID)
    misp.add_attribute("bad.example", uuid=BAD_UUID)
    http = StubTreq(misp)
    options = {"interval": 600.0, "random": lambda: 0.5, **options}
    reporter = SightingsReporter(URL, KEY, http, clock, **options)
    reporter.startService()
    return Rig(reporter, misp, clock, http)


def test_a_blocked_attribute_is_sighted_once_per_interval() -> None:
    """Many blocks of one attribute within an interval make one sighting, sent at the
    interval's end with the time of the first block; the next interval makes another."""
    test = rig()
    test.reporter.sight("evil.example", EVIL_UUID)
    test.advance(100)
    test.reporter.sight("evil.example", EVIL_UUID)
    test.reporter.sight("evil.example", EVIL_UUID)
    assert test.misp.requests == []
    assert test.reporter.pending == 1
    test.advance(500)
    [body] = test.sent_bodies()
    assert body == {
        "values": ["evil.example"],
        "type": "0",
        "source": "misp-dns",
        "timestamp": str(int(NOW)),
    }
    assert [s["attribute_id"] for s in test.misp.sightings] == ["1"]
    assert (test.reporter.sent, test.reporter.failed, test.reporter.pending) == (1, 0, 0)
    test.reporter.sight("evil.example", EVIL_UUID)
    test.advance(600)
    assert len(test.misp.sightings) == 2
    assert test.misp.sightings[1]["date_sighting"] == str(int(NOW + 600))


def test_an_interval_without_blocks_sends_nothing() -> None:
    """No block, no request."""
    test = rig()
    test.advance(1800)
    assert test.misp.requests == []


def test_the_attributes_of_an_interval_go_in_batches() -> None:
    """Distinct values go together, up to BATCH_SIZE a request; attributes sharing a
    value send it once (MISP sights every attribute holding it)."""
    test = rig(max_pending=10 * BATCH_SIZE)
    test.reporter.sight("evil.example", EVIL_UUID)
    test.reporter.sight("bad.example", BAD_UUID)
    test.reporter.sight("evil.example", "7b9c35b9-5e5c-4221-9e27-313127fc1f04")
    names = [f"n{i}.example" for i in range(BATCH_SIZE + 1)]
    test.misp.add_values(names)
    for name in names:
        test.reporter.sight(name)
    test.advance(600)
    bodies = test.sent_bodies()
    assert [len(body["values"]) for body in bodies] == [BATCH_SIZE, 3]
    sent = [value for body in bodies for value in body["values"]]
    assert sorted(sent) == sorted(["evil.example", "bad.example", *names])
    assert test.reporter.sent == len(sent)
    assert len(test.misp.sightings) == len(sent)


def test_pending_sightings_are_bounded_and_drops_counted() -> None:
    """Beyond `max_pending` waiting attributes, blocks are not noted but counted, and one
    warning per interval says so; repeats of a noted attribute are not drops."""
    test = rig(max_pending=2)
    test.reporter.sight("evil.example", EVIL_UUID)
    test.reporter.sight("bad.example", BAD_UUID)
    test.reporter.sight("evil.example", EVIL_UUID)
    for index in range(5):
        test.reporter.sight(f"n{index}.example")
    assert (test.reporter.pending, test.reporter.dropped) == (2, 5)
    with capturedLogs() as events:
        test.advance(600)
    assert [e["count"] for e in events if "not noted" in e.get("log_format", "")] == [5]
    assert test.reporter.sent == 2


def test_5xx_and_429_are_retried_with_backoff() -> None:
    """A 503 and a 429 are retried (the 429 after the wait it asks for); the sightings
    then count as sent."""
    test = rig()
    test.misp.script(Fault.server_error(503), Fault.rate_limited(retry_after="7"))
    test.reporter.sight("evil.example", EVIL_UUID)
    test.advance(600)
    assert len(test.misp.requests) == 1
    test.advance(1)  # backoff 1 s * jitter 1.0
    assert len(test.misp.requests) == 2
    test.advance(6.9)
    assert len(test.misp.requests) == 2
    test.advance(0.2)
    assert len(test.misp.requests) == 3
    assert (test.reporter.sent, test.reporter.failed, test.reporter.retries) == (1, 0, 2)


def test_a_misp_that_stays_down_fails_the_batch_and_says_why() -> None:
    """After the last attempt the batch's sightings count as failed, with one warning
    naming the cause and never the key, even when MISP echoes it."""
    test = rig(attempts=2)
    echo = {"name": f"down, key {KEY}", "message": f"down, key {KEY}", "url": "/sightings/add"}
    test.misp.script(Fault.json(echo, 502), Fault.json(echo, 502))
    test.reporter.sight("evil.example", EVIL_UUID)
    test.reporter.sight("bad.example", BAD_UUID)
    with capturedLogs() as events:
        test.advance(600)
        test.advance(1)
    assert (test.reporter.sent, test.reporter.failed, test.reporter.pending) == (0, 2, 0)
    failed = [e for e in events if "not recorded" in e.get("log_format", "")]
    assert len(failed) == 1 and "HTTP 502" in failed[0]["reason"]
    assert all(KEY not in repr(event) for event in events)
    assert "<api key>" in failed[0]["reason"]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda misp: setattr(misp, "api_key", "another key"), "HTTP 403"),
        (lambda misp: setattr(misp, "can_sight", False), "permission"),
        (lambda misp: misp.attributes.clear() or misp._stored.clear(), "No valid attributes"),
    ],
    ids=["wrong key", "no sighting permission", "no attribute holds the value"],
)
def test_a_refusal_is_not_retried(setup: Any, reason: str) -> None:
    """A 403 (the key, or a role without perm_sighting) and MISP's 200 "Could not add the
    Sighting" are final: one request, the sightings counted as failed, the reason logged."""
    test = rig()
    setup(test.misp)
    test.reporter.sight("evil.example", EVIL_UUID)
    with capturedLogs() as events:
        test.advance(600)
        test.advance(120)
    assert len(test.misp.requests) == 1
    assert (test.reporter.sent, test.reporter.failed) == (0, 1)
    [warning] = [e for e in events if "not recorded" in e.get("log_format", "")]
    assert reason in warning["reason"]


def test_requests_go_one_at_a_time() -> None:
    """While a request waits for MISP, the next interval's batch waits its turn."""
    test = rig(timeout=3600.0, max_retry_delay=1.0)
    test.misp.script(Fault.hanging())
    test.reporter.sight("evil.example", EVIL_UUID)
    test.advance(600)
    test.reporter.sight("bad.example", BAD_UUID)
    test.advance(600)
    assert len(test.misp.requests) == 1
    assert test.reporter.pending == 2
    test.advance(3000)  # the hanging request times out, after an hour
    test.advance(1)  # it is tried again, then the next batch goes
    assert [body["values"] for body in test.sent_bodies()] == [
        ["evil.example"],
        ["evil.example"],
        ["bad.example"],
    ]
    assert test.reporter.sent == 2


def test_stopping_sends_what_is_noted() -> None:
    """On stop, the noted sightings go at once, without waiting for the interval's end."""
    test = rig()
    test.reporter.sight("evil.example", EVIL_UUID)
    stopping = test.reporter.stopService()
    test.http.flush()
    if stopping is not None:
        result_of(stopping)
    assert test.reporter.sent == 1
    assert test.misp.sightings[0]["date_sighting"] == str(int(NOW))


def test_stopping_waits_at_most_the_grace_period() -> None:
    """A MISP that does not answer holds the stop for STOP_GRACE seconds at most; what
    was not sent counts as failed."""
    test = rig(timeout=3600.0)
    test.misp.script(Fault.hanging())
    test.reporter.sight("evil.example", EVIL_UUID)
    stopping = test.reporter.stopService()
    assert stopping is not None and not stopping.called
    test.advance(STOP_GRACE)
    result_of(stopping)
    assert (test.reporter.sent, test.reporter.failed, test.reporter.pending) == (0, 1, 0)
    test.advance(3600)  # the abandoned request ends; it is not counted twice
    assert (test.reporter.sent, test.reporter.failed) == (0, 1)


@needs_spec
def test_the_body_is_what_misps_openapi_description_allows() -> None:
    """The request carries the key in the header MISP's security scheme names and a body
    that conforms to the AddSightingsRequest schema of misp-openapi.yaml."""
    require_package("PyYAML")
    test = rig()
    test.reporter.sight("evil.example", EVIL_UUID)
    test.reporter.sight("bad.example", BAD_UUID)
    test.advance(600)
    [request] = test.misp.requests
    spec = MispOpenApi.load()
    assert spec.request_problems("/sightings/add", request.headers, request.json()) == []
    assert request.headers[spec.key_header().lower()] == KEY


# --- the policy and the responder --------------------------------------------------------


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(function, *args)


@attrs.define
class Server:
    """A server built as twistd builds it, with the MISP policies given."""

    reactor: MemoryReactorClock
    top: Any
    policies: list[IPolicy]

    def ask(
        self, name: str, transport: str = "udp", cname: str | None = None
    ) -> dns.message.Message:
        """Ask for `name`; names not blocked are answered from the cache with an A record of
        192.0.2.7, reached through a CNAME to `cname` when given."""
        parts = self.top.getServiceNamed("admin").api.parts
        labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
        owner = name if cname is None else cname
        records = [tdns.RRHeader(owner.encode(), tdns.A, tdns.IN, 300, tdns.Record_A("192.0.2.7"))]
        if cname is not None:
            alias = tdns.Record_CNAME(cname.encode())
            records.insert(0, tdns.RRHeader(name.encode(), tdns.CNAME, tdns.IN, 300, alias))
        parts.resolver.cache.put(
            (labels, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=tuple(records))
        )
        responder = parts.responder
        wire = dns.message.make_query(name, "A").to_wire()
        reply = responder.respond(wire, "127.0.0.1", transport)
        if isinstance(reply, defer.Deferred):
            reply = result_of(reply)
        return dns.message.from_wire(reply)


def misp_policy(
    reactor: MemoryReactorClock,
    values: list[str],
    reporter: SightingsReporter | None,
    kind: str = "domain",
    **options: Any,
) -> MispBlockingPolicy:
    """A MISP policy blocking `values` (attributes of type `kind`, uuids from UUIDS) with
    `reporter`."""
    indicators = [RawIndicator(v, kind, attribute_uuid=UUIDS[v]) for v in values]
    updater = IndicatorUpdater(
        MISP_SOURCE,
        MemoryIndicatorSource(indicators),
        clock=reactor,
        interval=7200,
        max_age=15 * 86400,
        state_path=None,
        run_in_thread=inline,
        response_ips=options.get("block_response_ips", False),
    )
    settings = MispOptions(server_url=URL, api_key=KEY, **options)
    policy = MispBlockingPolicy("misp", MISP_SOURCE, settings, updater, reporter)
    updater.startService()
    return policy


class NotingReporter(SightingsReporter):
    """A reporter that keeps what it is told to sight (to see which policy's it was)."""

    def __init__(self, clock: Any) -> None:
        super().__init__(URL, KEY, None, clock)
        self.noted: list[tuple[str, str]] = []

    def sight(self, value: str, attribute_uuid: str = "") -> None:
        self.noted.append((value, attribute_uuid))


def server(policies_of: Any) -> Server:
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    policies = policies_of(reactor)
    config = Config(
        server=ServerConfig(upstreams=(Upstream("192.0.2.53", 53),)),
        admin=AdminConfig(HostPort("127.0.0.1", 8053)),
    )
    top = build_service(config, policies, reactor)
    return Server(reactor, top, policies)


def test_blocks_reach_the_reporter_of_the_policy_that_blocked() -> None:
    """With two MISP policies (same source), each block is noted by the reporter of the
    policy that made the decision, over UDP (the fast path) and TCP alike; allowlisted
    and unlisted names are not noted."""
    reporters: list[NotingReporter] = []

    def policies(reactor: MemoryReactorClock) -> list[IPolicy]:
        reporters.extend([NotingReporter(reactor), NotingReporter(reactor)])
        return [
            AllowlistPolicy.from_config(AllowlistOptions(domains=("ok.evil.example",))),
            misp_policy(reactor, ["evil.example"], reporters[0]),
            misp_policy(reactor, ["bad.example"], reporters[1]),
        ]

    test = server(policies)
    assert test.ask("www.evil.example").rcode() == dns.rcode.NXDOMAIN
    test.ask("evil.example", transport="tcp")
    test.ask("bad.example")
    test.ask("ok.evil.example")
    test.ask("www.example.com")
    assert reporters[0].noted == [("evil.example", EVIL_UUID)] * 2
    assert reporters[1].noted == [("bad.example", BAD_UUID)]


def test_blocks_by_cname_chain_and_response_ip_are_sighted() -> None:
    """An answer blocked because its CNAME chain reaches a listed name, or because it holds
    a listed address (`block_response_ips`), is a sighting of that name or address: the
    indicator fired as much as when it is asked for by name."""
    reporters: list[NotingReporter] = []

    def policies(reactor: MemoryReactorClock) -> list[IPolicy]:
        reporters.extend([NotingReporter(reactor), NotingReporter(reactor)])
        return [
            misp_policy(reactor, ["evil.example"], reporters[0]),
            misp_policy(
                reactor, ["192.0.2.7"], reporters[1], kind="ip-dst", block_response_ips=True
            ),
        ]

    test = server(policies)
    assert test.ask("www.innocent.example", cname="evil.example").rcode() == dns.rcode.NXDOMAIN
    assert test.ask("plain.example").rcode() == dns.rcode.NXDOMAIN
    assert reporters[0].noted == [("evil.example", EVIL_UUID)]
    assert reporters[1].noted == [("192.0.2.7", IP_UUID)]


def test_monitor_mode_blocks_are_sighted_too() -> None:
    """A policy in monitor mode lets the name resolve, and the would-be block is still
    a sighting: the indicator fired in the network."""
    reporters: list[NotingReporter] = []

    def policies(reactor: MemoryReactorClock) -> list[IPolicy]:
        reporters.append(NotingReporter(reactor))
        return [misp_policy(reactor, ["evil.example"], reporters[0], enable_blocking=False)]

    test = server(policies)
    assert test.ask("evil.example").rcode() == dns.rcode.NOERROR
    assert reporters[0].noted == [("evil.example", EVIL_UUID)]


def test_the_tally_follows_the_chain_a_reload_puts_in_service(tmp_path: Path) -> None:
    """Without a policy that posts sightings the responder's tally is the admin listener's
    counter alone (nothing to pay for sightings); a reload that brings one in adds the
    sightings tally, and blocks then reach its reporter."""
    reporters: list[NotingReporter] = []

    def build(options: NotingOptions, context: BuildContext) -> MispBlockingPolicy:
        reporter = NotingReporter(context.reactor) if options.sightings else None
        if reporter is not None:
            reporters.append(reporter)
        return misp_policy(context.reactor, ["evil.example"], reporter)  # type: ignore[arg-type]

    types = Registry(policies={"noting": PluginType("noting", NotingOptions, build)})
    path = tmp_path / "misp-dns.toml"
    path.write_text(NOTING.format(sightings="false"))
    config = load_config(path, types)
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    policies = build_policies(config, types, reactor)
    top = build_service(config, policies, reactor, config_path=str(path), registry=types)
    admin = top.getServiceNamed("admin")
    responder = admin.api.parts.responder
    assert responder.tally == admin.queries.count
    path.write_text(NOTING.format(sightings="true"))
    top.getServiceNamed("reload").callback()
    assert responder.tally != admin.queries.count
    wire = dns.message.make_query("evil.example", "A").to_wire()
    assert dns.message.from_wire(responder.respond(wire, "127.0.0.1", "udp")).rcode() == 3
    assert reporters[0].noted == [("evil.example", EVIL_UUID)]


NOTING = """
[[policy]]
type = "noting"
sightings = {sightings}

[admin]
listen = "127.0.0.1:8053"
"""


@attrs.frozen
class NotingOptions:
    """The options of the test's `noting` policy type: a MISP policy, sightings or not."""

    sightings: bool


def test_the_misp_plugin_builds_a_reporter_beside_the_updater() -> None:
    """`sightings = true` gives the policy a reporter with the table's settings, started
    and stopped with the updater; without it there is none."""
    from misp_dns.build import context_for

    reactor = MemoryReactorClock()
    context = context_for(ServerConfig(state_dir="/nonexistent"), reactor)
    options = MispOptions(
        server_url=URL,
        api_key=KEY,
        sightings=True,
        sightings_source="site-a",
        sightings_interval=60,
        sightings_max_pending=5,
    )
    policy = misp_plugin.build(options, context)
    reporter = policy.sightings
    assert isinstance(reporter, SightingsReporter)
    assert (reporter.source, reporter.interval, reporter.max_pending) == ("site-a", 60, 5)
    assert reporter.url == URL + "/sightings/add"
    assert {id(s) for s in policy.service} == {id(policy.updater), id(reporter)}
    assert KEY not in repr(reporter)
    plain = misp_plugin.build(attrs.evolve(options, sightings=False), context)
    assert plain.sightings is None and plain.service is plain.updater


def test_metrics_and_status_show_what_the_reporter_did() -> None:
    """/metrics has sightings sent, failed, dropped and pending per policy and source (read
    with prometheus_client's parser), and /api/status the same per policy."""
    misp = FakeMisp(KEY)
    misp.add_attribute("evil.example", uuid=EVIL_UUID)
    http = StubTreq(misp)
    reporters: list[SightingsReporter] = []

    def policies(reactor: MemoryReactorClock) -> list[IPolicy]:
        reporter = SightingsReporter(URL, KEY, http, reactor, interval=60, max_pending=1)
        reporters.append(reporter)
        return [misp_policy(reactor, ["evil.example", "bad.example"], reporter)]

    test = server(policies)
    reporters[0].startService()
    test.ask("evil.example")
    test.ask("bad.example")  # over max_pending: dropped
    test.reactor.advance(60)
    http.flush()
    test.ask("bad.example")
    admin = test.top.getServiceNamed("admin")
    client = StubTreq(admin.resource)
    response = result_of(client.get("http://admin.test/metrics"))
    text = result_of(response.text())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("policy", "policy[0]"), ("source", "misp-connector"))
    assert samples[("misp_dns_sightings_sent_total", labels)] == 1
    assert samples[("misp_dns_sightings_failed_total", labels)] == 0
    assert samples[("misp_dns_sightings_dropped_total", labels)] == 1
    assert samples[("misp_dns_sightings_pending", labels)] == 1
    status = json.loads(result_of(result_of(client.get("http://admin.test/api/status")).text()))
    assert status["policies"][0]["sightings"] == {
        "sent": 1,
        "failed": 0,
        "dropped": 1,
        "pending": 1,
    }
