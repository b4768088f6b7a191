"""Tests for misp_dns.policy.rpz: the RPZ actions as clients see them, and NOTIFY handling.

A zone is put straight into the policy's follower; questions go through the real responder,
resolver and cache, with a scripted upstream, and the responses are read with dnspython.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.names import dns as tdns
from zope.interface.verify import verifyObject

from misp_dns.admin.metrics import QueryCounter
from misp_dns.build import context_for
from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import NOTIFY_REPORT_INTERVAL, Responder
from misp_dns.event import Answer, Kind, QueryEvent
from misp_dns.export.record import RecordEncoder
from misp_dns.intel.rpz import RpzZone
from misp_dns.intel.zonedata import name_to_wire, read_master
from misp_dns.interfaces import IAnswerPolicy, IZoneFollower, PolicyQuery
from misp_dns.policy.chain import PolicyChain
from misp_dns.policy.rpz import RpzOptions, RpzPolicy, plugin
from misp_dns.registry import default_registry
from misp_dns.values import ConfigError, FieldError, ServerConfig, TsigKeyConfig

ZONE_TEXT = """$TTL 300
@ SOA ns.rpz.test. hostmaster.rpz.test. ( 7 3600 600 86400 60 )
  NS ns.rpz.test.
blocked.example CNAME .
*.wild.example CNAME .
nodata.example CNAME *.
pass.example CNAME rpz-passthru.
*.pass.example CNAME .
drop.example CNAME rpz-drop.
garden.example CNAME walled.garden.test.
sub.garden.example CNAME *.garden.test.
local.example A 192.0.2.99
local.example AAAA 2001:db8::99
local.example TXT "local text"
32.7.2.0.192.rpz-ip CNAME .
"""


def build(tmp_path: Path, **options: Any) -> RpzPolicy:
    values = {"zone": "rpz.test", "primary": "127.0.0.1:5353", **options}
    context = context_for(ServerConfig(state_dir=str(tmp_path)), Clock())
    policy = plugin.build(RpzOptions(**values), context)
    policy.follower.zone = RpzZone.from_records("rpz.test", read_master(ZONE_TEXT, "rpz.test"))
    policy.follower.generation += 1
    return policy


class Upstream:
    """Every name resolves to 198.51.100.1 except `cname.example`, a CNAME to the garden."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def resolve(self, name: bytes, qtype: int, qclass: int = 1, **_: Any) -> Any:
        decoded = dns.name.from_wire(name, 0)[0].to_text(omit_final_dot=True).encode()
        self.asked.append(decoded)
        if decoded == b"to-bad-ip.example":
            record = tdns.RRHeader(decoded, tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.7", 60))
        elif decoded == b"to-listed.example":
            record = tdns.RRHeader(
                decoded, tdns.CNAME, tdns.IN, 60, tdns.Record_CNAME("x.wild.example", 60)
            )
        else:
            record = tdns.RRHeader(decoded, tdns.A, tdns.IN, 60, tdns.Record_A("198.51.100.1", 60))
        return defer.succeed(Answer(tdns.OK, answers=[record]))


class Served:
    def __init__(self, policy: RpzPolicy) -> None:
        self.clock = Clock()
        self.upstream = Upstream()
        resolver = ChainResolver(
            PolicyChain([policy]),
            AnswerCache(100, self.clock),
            self.upstream,
            "dns.corp.test",  # type: ignore[arg-type]
        )
        acl = ClientACL([ipaddress.ip_network("127.0.0.0/8")])
        self.responder = Responder(resolver, acl, self.clock)
        self.events: list[QueryEvent] = []
        self.responder.observers.append(self.events.append)

    def raw(self, wire: bytes, client: str = "127.0.0.1", transport: str = "udp") -> Any:
        result = self.responder.respond(wire, client, transport)
        if isinstance(result, defer.Deferred):
            result = result.result
        return result

    def ask(self, name: str, rdtype: str = "A", transport: str = "udp") -> dns.message.Message:
        wire = self.raw(
            dns.message.make_query(name, rdtype, use_edns=0).to_wire(), transport=transport
        )
        assert wire is not None
        return dns.message.from_wire(wire)


@pytest.fixture
def served(tmp_path: Path) -> Served:
    return Served(build(tmp_path))


def ede(response: dns.message.Message) -> list[tuple[int, str]]:
    return [(o.code, o.text) for o in response.options if o.otype == dns.edns.EDE]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_nxdomain_action_is_the_blocked_answer(served: Served, transport: str) -> None:
    """`CNAME .`: NXDOMAIN with the SOA and EDE 15 naming the zone and the trigger."""
    response = served.ask("blocked.example", transport=transport)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].rdtype == dns.rdatatype.SOA
    assert ede(response) == [(15, "source=rpz;zone=rpz.test;domain=blocked.example")]
    wild = served.ask("a.b.wild.example")
    assert wild.rcode() == dns.rcode.NXDOMAIN
    assert ede(wild) == [(15, "source=rpz;zone=rpz.test;domain=*.wild.example")]
    assert served.upstream.asked == []
    assert served.events[-1].answer.kind is Kind.BLOCKED


def test_nodata_action(served: Served) -> None:
    """`CNAME *.`: NOERROR, no answer, an SOA in the authority section."""
    response = served.ask("nodata.example")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    assert response.authority[0].rdtype == dns.rdatatype.SOA
    assert served.upstream.asked == []


def test_passthru_lets_the_name_through_before_a_wildcard(served: Served) -> None:
    """`CNAME rpz-passthru.` resolves the name, though `*.pass.example` would block below."""
    response = served.ask("pass.example")
    assert [r.address for r in response.answer[0]] == ["198.51.100.1"]
    assert served.events[-1].answer.kind is Kind.ALLOWED
    assert served.ask("x.pass.example").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_drop_action_sends_nothing_and_logs_it(served: Served, transport: str) -> None:
    """`CNAME rpz-drop.`: no response at all; the query log says Dropped."""
    wire = dns.message.make_query("drop.example", "A").to_wire()
    assert served.raw(wire, transport=transport) is None
    assert served.events[-1].answer.kind is Kind.DROPPED
    assert served.upstream.asked == []


def test_walled_garden_cname_is_followed_like_bind_does(served: Served) -> None:
    """A CNAME local data makes the name an alias of the walled garden, and the answer
    holds the garden's records from the upstream (the client's stub needs an address)."""
    response = served.ask("garden.example", "A")
    assert response.rcode() == dns.rcode.NOERROR
    cname, address = response.answer
    assert cname.rdtype == dns.rdatatype.CNAME
    assert cname.name.to_text() == "garden.example."
    assert cname[0].target.to_text() == "walled.garden.test."
    assert address.name.to_text() == "walled.garden.test."
    assert [r.address for r in address] == ["198.51.100.1"]
    assert served.upstream.asked == [b"walled.garden.test"]
    assert served.events[-1].answer.kind is Kind.BLOCKED


def test_walled_garden_cname_alone_for_a_cname_question(served: Served) -> None:
    """Asked for the CNAME itself, the alias is the whole answer; the garden is not asked."""
    response = served.ask("garden.example", "CNAME")
    (cname,) = response.answer
    assert cname[0].target.to_text() == "walled.garden.test."
    assert served.upstream.asked == []


def test_wildcard_cname_target_takes_the_query_name(served: Served) -> None:
    """`CNAME *.garden.test.` rewrites to `<query name>.garden.test`."""
    response = served.ask("sub.garden.example")
    assert response.answer[0][0].target.to_text() == "sub.garden.example.garden.test."
    assert served.upstream.asked == [b"sub.garden.example.garden.test"]


def test_local_data_answers_its_types_and_nodata_for_others(served: Served) -> None:
    """A/AAAA/TXT local data answer their own type; another type gets NODATA."""
    a = served.ask("local.example", "A")
    aaaa = served.ask("local.example", "AAAA")
    txt = served.ask("local.example", "TXT")
    mx = served.ask("local.example", "MX")
    assert [r.address for r in a.answer[0]] == ["192.0.2.99"]
    assert [r.address for r in aaaa.answer[0]] == ["2001:db8::99"]
    assert [r.strings for r in txt.answer[0]] == [(b"local text",)]
    assert mx.rcode() == dns.rcode.NOERROR and mx.answer == []
    assert served.upstream.asked == []


def test_rpz_ip_trigger_rewrites_an_answer_with_a_listed_address(served: Served) -> None:
    """An upstream answer holding 192.0.2.7 (`32.7.2.0.192.rpz-ip CNAME .`) becomes NXDOMAIN."""
    response = served.ask("to-bad-ip.example")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert ede(response) == [(15, "source=rpz;zone=rpz.test;ip=32.7.2.0.192.rpz-ip")]
    assert served.events[-1].answer.decision.trigger == "ip"  # type: ignore[union-attr]


def test_qname_trigger_applies_to_a_cname_target(served: Served) -> None:
    """A CNAME chain into `*.wild.example` is rewritten like the listed name itself."""
    response = served.ask("to-listed.example")
    assert response.rcode() == dns.rcode.NXDOMAIN


def test_unlisted_names_resolve(served: Served) -> None:
    """A name no trigger matches is forwarded as usual."""
    response = served.ask("fine.example")
    assert [r.address for r in response.answer[0]] == ["198.51.100.1"]


def test_monitor_mode_blocks_nothing(tmp_path: Path) -> None:
    """enable_blocking = false: the name resolves and the decision is still recorded."""
    served = Served(build(tmp_path, enable_blocking=False))
    response = served.ask("blocked.example")
    assert response.rcode() == dns.rcode.NOERROR
    decision = served.events[-1].answer.decision
    assert decision is not None and not decision.enforced


def test_no_zone_yet_means_no_opinion(tmp_path: Path) -> None:
    """Before any copy of the zone is served, every name resolves."""
    policy = build(tmp_path)
    policy.follower.zone = None
    assert Served(policy).ask("blocked.example").rcode() == dns.rcode.NOERROR


def notify_wire(zone: str = "rpz.test.") -> dns.message.Message:
    message = dns.message.make_query(zone, "SOA")
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags |= dns.flags.AA
    return message


def test_notify_from_the_primary_is_answered_and_starts_a_check(tmp_path: Path) -> None:
    """A NOTIFY from the primary's address: NOERROR, AA, opcode NOTIFY, and a check at once."""
    policy = build(tmp_path)
    checks: list[str] = []
    policy.follower.notify = lambda: checks.append("now")  # type: ignore[method-assign]
    served = Served(policy)
    message = notify_wire()
    wire = served.raw(message.to_wire(), client="127.0.0.1")
    response = dns.message.from_wire(wire)
    assert response.opcode() == dns.opcode.NOTIFY
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.QR and response.flags & dns.flags.AA
    assert response.id == message.id and response.question == message.question
    assert checks == ["now"]


@pytest.mark.parametrize(
    ("zone", "client"), [("rpz.test.", "127.0.0.2"), ("other.test.", "127.0.0.1")]
)
def test_notify_from_elsewhere_or_for_another_zone_is_refused(
    tmp_path: Path, zone: str, client: str
) -> None:
    """A NOTIFY from another address, or for a zone nothing follows, is REFUSED, no check."""
    policy = build(tmp_path)
    checks: list[str] = []
    policy.follower.notify = lambda: checks.append("now")  # type: ignore[method-assign]
    wire = Served(policy).raw(notify_wire(zone).to_wire(), client=client)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.REFUSED
    assert checks == []


def test_refused_notifies_are_logged_once_a_minute_with_a_count(tmp_path: Path) -> None:
    """Anyone may send NOTIFYs: a flood of refused ones writes one line a minute, saying how
    many were refused, not a line each (each is still answered REFUSED)."""
    served = Served(build(tmp_path))
    wire = notify_wire().to_wire()
    with capturedLogs() as events:
        for _ in range(1000):
            assert dns.message.from_wire(served.raw(wire, client="192.0.2.9")).rcode() == (
                dns.rcode.REFUSED
            )
        served.clock.advance(NOTIFY_REPORT_INTERVAL)
        served.raw(wire, client="192.0.2.9")
    lines = [formatEvent(event) for event in events if "NOTIFY" in formatEvent(event)]
    assert len(lines) == 2, lines
    assert "from 192.0.2.9 refused" in lines[0] and "(1 refused since" in lines[0]
    assert "(1000 refused since" in lines[1]


def test_policy_provides_its_interfaces(tmp_path: Path) -> None:
    """The rpz policy is a zone follower and judges answers."""
    policy = build(tmp_path)
    assert verifyObject(IZoneFollower, policy)
    assert verifyObject(IAnswerPolicy, policy)
    assert default_registry().policies["rpz"] is plugin


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"zone": "rpz.test"}, "url"),
        ({"zone": "rpz.test", "primary": "127.0.0.1:53", "url": "file:///z"}, "primary"),
        ({"zone": "rpz.test", "primary": "localhost:53"}, "primary"),
        ({"zone": "rpz.test", "url": "file:///z", "tsig_key": "fleet"}, "tsig_key"),
    ],
)
def test_options_need_exactly_one_source(options: dict[str, Any], field: str) -> None:
    """One of primary and url; a primary is IP:port; a TSIG key only signs transfers."""
    with pytest.raises(FieldError) as raised:
        RpzOptions(**options)
    assert raised.value.field == field


def test_unknown_tsig_key_is_a_config_error(tmp_path: Path) -> None:
    """tsig_key must name a [[tsig_key]] table; its secret file is read at build."""
    context = context_for(ServerConfig(state_dir=str(tmp_path)), Clock())
    options = RpzOptions(zone="rpz.test", primary="127.0.0.1:53", tsig_key="fleet")
    with pytest.raises(ConfigError, match="no \\[\\[tsig_key\\]\\] named 'fleet'"):
        plugin.build(options, context)
    secret = tmp_path / "fleet.key"
    secret.write_text(
        'key "fleet" { algorithm hmac-sha256; secret "MDEyMzQ1Njc4OWFiY2RlZg=="; };\n'
    )
    keyed = context_for(
        ServerConfig(state_dir=str(tmp_path)),
        Clock(),
        (TsigKeyConfig(name="fleet", secret_file=str(secret)),),
    )
    policy = plugin.build(options, keyed)
    assert policy.follower.key is not None and policy.follower.key.name == "fleet"


def test_one_decision_object_per_rule(tmp_path: Path) -> None:
    """Names matched by one rule share its decision (the answer memo stays small), except
    a walled garden named after the question."""
    policy = build(tmp_path)
    first = policy.decide(PolicyQuery("a.wild.example", 1))
    second = policy.decide(PolicyQuery("b.wild.example", 1))
    assert first is not None and first is second
    one = policy.decide(PolicyQuery("sub.garden.example", 1))
    assert one is not None and one.local_data[0].rdata != name_to_wire("*.garden.test")


def test_api_key_file_is_read_for_a_url(tmp_path: Path) -> None:
    """api_key_file goes with an http(s) url; its key is read at build, a missing file named."""
    with pytest.raises(FieldError) as raised:
        RpzOptions(zone="rpz.test", url="file:///z", api_key_file="/k")
    assert raised.value.field == "api_key_file"
    key = tmp_path / "misp.key"
    options = RpzOptions(zone="rpz.test", url="https://misp.example/rpz", api_key_file=str(key))
    context = context_for(ServerConfig(state_dir=str(tmp_path)), Clock())
    with pytest.raises(ConfigError, match=r"misp\.key': cannot read"):
        plugin.build(options, context)
    key.write_text("secret-key-123456\n")
    assert plugin.build(options, context) is not None


def test_query_log_says_the_rpz_action_and_the_local_data(served: Served) -> None:
    """The query record names the trigger, the action when it is not NXDOMAIN, and the
    local data answered."""
    served.ask("local.example", "A")
    local = json.loads(RecordEncoder().encode(served.events[-1]).line)
    assert local["responseType"] == "Blocked"
    assert local["policy"] == {
        "source": "rpz",
        "domain": "local.example",
        "trigger": "qname",
        "action": "local-data",
    }
    assert [a["recordData"] for a in local["answers"]] == ["192.0.2.99"]
    served.raw(dns.message.make_query("drop.example", "A").to_wire())
    dropped = json.loads(RecordEncoder().encode(served.events[-1]).line)
    assert dropped["responseType"] == "Dropped" and dropped["policy"]["action"] == "drop"
    served.ask("blocked.example")
    blocked = json.loads(RecordEncoder().encode(served.events[-1]).line)
    assert "action" not in blocked["policy"]


def test_dropped_queries_count_as_blocked_in_the_metrics(served: Served) -> None:
    """An rpz-drop is a block: blocked_total counts it under its source and trigger."""
    counter = QueryCounter()
    served.responder.tally = counter.count
    served.raw(dns.message.make_query("drop.example", "A").to_wire())
    assert counter.blocked_by_cause() == {("rpz", "qname"): 1}
    assert ("udp", "A", "Dropped") in counter.by_label()


def test_notify_without_any_rpz_policy_is_notimp() -> None:
    """A server that follows no zone answers NOTIFY NOTIMP, as any opcode it does not do."""
    clock = Clock()
    resolver = ChainResolver(PolicyChain([]), AnswerCache(10, clock), Upstream(), "dns.test")  # type: ignore[arg-type]
    responder = Responder(resolver, ClientACL([ipaddress.ip_network("127.0.0.0/8")]), clock)
    wire = responder.respond(notify_wire().to_wire(), "127.0.0.1", "udp")
    assert isinstance(wire, bytes)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NOTIMP
