"""The MISP blocking policy in the resolver chain: the exact blocked answer users rely on."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import Responder
from misp_dns.event import Answer, Kind, QueryEvent
from misp_dns.intel.misp_options import MispOptions
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import IPolicy, PolicyQuery, RawIndicator
from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
from misp_dns.policy.chain import PolicyChain
from misp_dns.policy.misp import MISP_SOURCE, MispBlockingPolicy
from misp_dns.testing import MemoryIndicatorSource


class NoUpstream:
    """A forwarder that must not be asked: blocked answers never leave the server."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def resolve(self, name: bytes, *args: Any, **kwargs: Any) -> defer.Deferred[Answer]:
        """Note `name` (wire format) in text, as b"www.example"."""
        self.asked.append(dns.name.from_wire(name, 0)[0].to_text(omit_final_dot=True).encode())
        return defer.succeed(Answer(dns.rcode.NOERROR))


def misp_policy(indicators: list[RawIndicator], **options: Any) -> MispBlockingPolicy:
    settings = MispOptions(server_url="https://misp.example", api_key="k" * 40, **options)
    updater = IndicatorUpdater(
        MISP_SOURCE,
        MemoryIndicatorSource(indicators),
        clock=Clock(),
        interval=7200,
        max_age=settings.max_ioc_age,
        state_path=None,
        run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a),
    )
    updater.startService()
    return MispBlockingPolicy("misp", MISP_SOURCE, settings, updater)


INDICATORS = [
    RawIndicator("Evil.Example. ", "domain", event_id="12", event_uuid="e-uuid", event_info="C2"),
    RawIndicator("host.example", "hostname", attribute_uuid="a-uuid"),
    RawIndicator("both.example|192.0.2.1", "domain|ip"),
]


def ask(
    policies: list[Any], name: str, rdtype: str = "A", use_edns: Any = 0, rdclass: str = "IN"
) -> tuple[dns.message.Message, Answer, NoUpstream]:
    """Ask over UDP (the fast path when it can) and TCP (the full path); both must agree."""
    upstream = NoUpstream()
    resolver = ChainResolver(
        PolicyChain(policies),
        AnswerCache(100, Clock()),
        upstream,  # type: ignore[arg-type]
        "dns.corp.example",
    )
    responder = Responder(resolver, ClientACL([ip_network("127.0.0.0/8")]), Clock())
    events: list[QueryEvent] = []
    responder.observers.append(events.append)
    query = dns.message.make_query(name, rdtype, rdclass, use_edns=use_edns).to_wire()
    wires = []
    for transport in ("udp", "tcp"):
        result = responder.respond(query, "127.0.0.1", transport)
        if isinstance(result, defer.Deferred):
            result = result.result
        wires.append(result)
    assert wires[0] == wires[1]
    return dns.message.from_wire(wires[0]), events[0].answer, upstream


def test_policy_implements_the_interface() -> None:
    """Third parties and the chain rely on IPolicy."""
    assert verifyObject(IPolicy, misp_policy(INDICATORS))


def test_blocked_name_gets_nxdomain_with_the_reference_soa() -> None:
    """NXDOMAIN, RA, no AA, one SOA owned by the query name with the documented fields."""
    response, answer, upstream = ask([misp_policy(INDICATORS)], "WWW.evil.example")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.RA and not response.flags & dns.flags.AA
    assert response.answer == []
    (soa_set,) = response.authority
    assert soa_set.name.to_text() == "WWW.evil.example."
    assert soa_set.ttl == 30
    (soa,) = soa_set
    assert soa.mname.to_text() == "dns.corp.example."
    assert soa.rname.to_text() == "hostadmin.dns.corp.example."
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        1,
        14400,
        3600,
        604800,
        30,
    )
    (ede,) = response.options
    assert ede.code == dns.edns.EDECode.BLOCKED
    assert ede.text == "source=misp-connector;domain=evil.example"
    assert answer.kind is Kind.BLOCKED
    assert answer.decision.provenance.event_id == "12"
    assert upstream.asked == []


def test_txt_query_gets_the_report() -> None:
    """A TXT query for a blocked name answers NOERROR with the report, EDE alongside."""
    response, _, _ = ask([misp_policy(INDICATORS)], "evil.example", "TXT")
    assert response.rcode() == dns.rcode.NOERROR
    (txt_set,) = response.answer
    assert txt_set.ttl == 30
    assert b"".join(next(iter(txt_set)).strings) == b"source=misp-connector;domain=evil.example"
    assert response.options[0].code == dns.edns.EDECode.BLOCKED


def test_txt_report_can_be_turned_off() -> None:
    """With allow_txt_blocking_report = false, TXT gets the NXDOMAIN answer."""
    policy = misp_policy(INDICATORS, allow_txt_blocking_report=False)
    response, _, _ = ask([policy], "evil.example", "TXT")
    assert response.rcode() == dns.rcode.NXDOMAIN


def test_no_opt_at_all_without_edns() -> None:
    """A query without EDNS gets the blocked answer without any OPT record."""
    response, _, _ = ask([misp_policy(INDICATORS)], "evil.example", use_edns=False)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.edns == -1


def test_ede_can_be_turned_off() -> None:
    """add_extended_dns_error = false: OPT comes back, without the EDE option."""
    response, _, _ = ask([misp_policy(INDICATORS, add_extended_dns_error=False)], "evil.example")
    assert response.edns == 0 and response.options == ()


@pytest.mark.parametrize(
    ("name", "blocked"),
    [
        ("host.example", True),
        ("sub.host.example", False),
        ("both.example", True),
        ("x.both.example", True),
        ("notevil.example", False),
    ],
)
def test_hostname_is_exact_domain_covers_subdomains(name: str, blocked: bool) -> None:
    """`hostname` blocks that name alone; `domain` and `domain|ip` block below too."""
    response, _, upstream = ask([misp_policy(INDICATORS)], name)
    assert (response.rcode() == dns.rcode.NXDOMAIN) is blocked
    assert bool(upstream.asked) is not blocked


def test_monitor_mode_resolves_but_keeps_the_decision() -> None:
    """enable_blocking = false: the query is forwarded; the log still sees the decision."""
    response, answer, upstream = ask(
        [misp_policy(INDICATORS, enable_blocking=False)], "evil.example"
    )
    assert response.rcode() == dns.rcode.NOERROR
    assert set(upstream.asked) == {b"evil.example"}
    assert answer.decision is not None and not answer.decision.enforced


def test_allowlist_before_misp_wins() -> None:
    """An allowlisted name is resolved even though MISP lists it."""
    allow = AllowlistPolicy.from_config(AllowlistOptions(domains=("evil.example",)))
    response, answer, upstream = ask([allow, misp_policy(INDICATORS)], "www.evil.example")
    assert response.rcode() == dns.rcode.NOERROR
    assert answer.kind is Kind.ALLOWED
    assert set(upstream.asked) == {b"www.evil.example"}


def test_any_is_answered_minimally() -> None:
    """RFC 8482: ANY gets one HINFO "RFC8482" record, never forwarded, never amplified."""
    response, _, upstream = ask([], "example.org", "ANY")
    assert response.rcode() == dns.rcode.NOERROR
    (hinfo_set,) = response.answer
    assert hinfo_set.rdtype == dns.rdatatype.HINFO
    assert next(iter(hinfo_set)).cpu == b"RFC8482"
    assert upstream.asked == []


@pytest.mark.parametrize("rdclass", ["CH", "HS", "ANY", "NONE", "CLASS4711"])
def test_a_listed_name_in_another_class_does_not_get_past(rdclass: str) -> None:
    """`dig -c CH evil.example` (or HS, or QCLASS * that an upstream may answer with class
    IN data) is refused, with EDE 21 (Not Supported), and never reaches the upstream."""
    response, answer, upstream = ask([misp_policy(INDICATORS)], "evil.example", "A", 0, rdclass)
    assert response.rcode() == dns.rcode.REFUSED
    assert [(o.code, o.text) for o in response.options] == [(21, "only class IN is served")]
    assert answer.kind is Kind.REFUSED
    assert upstream.asked == []


def test_a_refresh_keeps_the_decisions_it_did_not_change() -> None:
    """After a refresh, a name whose indicator is unchanged gets the very decision it had (no
    garbage, warm memos); one whose indicator changed gets a decision that says the new."""
    policy = misp_policy(list(INDICATORS))
    updater, source = policy.updater, policy.updater.source
    evil, host = PolicyQuery("www.evil.example", 1), PolicyQuery("host.example", 1)
    before = policy.decide(evil), policy.decide(host)
    assert before[0] is not None and before[0].provenance.event_info == "C2"
    first = updater.snapshot

    source.indicators = [
        RawIndicator("evil.example", "domain", event_id="12", event_uuid="e-uuid", event_info="C2"),
        RawIndicator("host.example", "hostname", attribute_uuid="a-uuid", event_info="moved"),
        RawIndicator("new.example", "domain"),
    ]
    updater.update_now()
    assert updater.snapshot is not first
    after = policy.decide(evil), policy.decide(host)
    assert after[0] is before[0]
    assert after[1] is not None and after[1] != before[1]
    assert after[1].provenance.event_info == "moved"
    assert policy.decide(PolicyQuery("new.example", 1)) is not None
