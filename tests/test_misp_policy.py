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
from twisted.names import dns as tdns
from zope.interface.verify import verifyObject

from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import Responder
from misp_dns.event import Answer, Kind, QueryEvent
from misp_dns.intel.misp_options import MispOptions
from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import Action, Decision, IAnswerPolicy, IPolicy, PolicyQuery, RawIndicator
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
        response_ips=settings.block_response_ips,
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


# -- the answer: CNAME/DNAME chains and response IPs ---------------------------------------


def cname(owner: str, target: str) -> tdns.RRHeader:
    return tdns.RRHeader(
        owner.encode(), tdns.CNAME, tdns.IN, 300, tdns.Record_CNAME(target.encode())
    )


def dname(owner: str, target: str) -> tdns.RRHeader:
    return tdns.RRHeader(
        owner.encode(), tdns.DNAME, tdns.IN, 300, tdns.Record_DNAME(target.encode())
    )


def a(owner: str, address: str) -> tdns.RRHeader:
    return tdns.RRHeader(owner.encode(), tdns.A, tdns.IN, 300, tdns.Record_A(address))


def aaaa(owner: str, address: str) -> tdns.RRHeader:
    return tdns.RRHeader(owner.encode(), tdns.AAAA, tdns.IN, 300, tdns.Record_AAAA(address))


#: What the upstream answers, by question name: the chain records, then the addresses.
ZONE = {
    "cloaked.example": [
        cname("cloaked.example", "metrics.cloaked.example"),
        cname("metrics.cloaked.example", "t.evil.example"),
        a("t.evil.example", "192.0.2.10"),
    ],
    "shop.example": [
        cname("shop.example", "shop.cdn.example"),
        cname("shop.cdn.example", "edge.cdn.example"),
        cname("edge.cdn.example", "origin.example"),
        a("origin.example", "192.0.2.20"),
    ],
    "www.alias.example": [
        dname("alias.example", "evil.example"),
        cname("www.alias.example", "www.evil.example"),
        a("www.evil.example", "192.0.2.30"),
    ],
    "via-cdn.example": [
        cname("via-cdn.example", "x.evil.example"),
        cname("x.evil.example", "edge.goodcdn.example"),
        a("edge.goodcdn.example", "192.0.2.40"),
    ],
    "hosted.example": [a("hosted.example", "198.51.100.99"), aaaa("hosted.example", "2001:db8::5")],
    "v6.example": [aaaa("v6.example", "2001:db8:bad::7")],
    "clean.example": [a("clean.example", "192.0.2.50"), aaaa("clean.example", "2001:db8::50")],
}


class ZoneUpstream:
    """A forwarder answering from `ZONE`: the chain records of the name, and the
    addresses of the asked type (NOERROR, no address, for other types); with `held`,
    only when the test calls `release()`."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []
        self.held: list[tuple[defer.Deferred[Answer], Answer]] | None = None

    def resolve(self, name: bytes, qtype: int, *args: Any, **kwargs: Any) -> defer.Deferred[Answer]:
        name = dns.name.from_wire(name, 0)[0].to_text(omit_final_dot=True).encode()
        self.asked.append(name)
        records = [
            r
            for r in ZONE.get(name.decode().lower(), [])
            if r.type in (tdns.CNAME, tdns.DNAME) or r.type == qtype
        ]
        answer = Answer(tdns.OK, answers=records)
        if self.held is None:
            return defer.succeed(answer)
        waiting: defer.Deferred[Answer] = defer.Deferred()
        self.held.append((waiting, answer))
        return waiting

    def release(self) -> None:
        held, self.held = self.held or [], None
        for waiting, answer in held:
            waiting.callback(answer)


class Served:
    """One resolver (with its cache) behind a responder, asked like a client would."""

    def __init__(self, policies: list[Any], cache_size: int = 100) -> None:
        self.clock = Clock()
        self.upstream = ZoneUpstream()
        self.resolver = resolver = ChainResolver(
            PolicyChain(policies),
            AnswerCache(cache_size, self.clock),
            self.upstream,  # type: ignore[arg-type]
            "dns.corp.example",
        )
        self.responder = Responder(resolver, ClientACL([ip_network("127.0.0.0/8")]), self.clock)
        self.events: list[QueryEvent] = []
        self.responder.observers.append(self.events.append)

    def ask(
        self, name: str, rdtype: str = "A", transport: str = "udp"
    ) -> tuple[dns.message.Message, Answer]:
        query = dns.message.make_query(name, rdtype, use_edns=0).to_wire()
        result = self.responder.respond(query, "127.0.0.1", transport)
        if isinstance(result, defer.Deferred):
            result = result.result
        return dns.message.from_wire(result), self.events[-1].answer


def blocked_with(response: dns.message.Message, qname: str, report: str) -> bool:
    """True for the README's blocked answer to `qname` carrying `report` in EDE 15."""
    (soa_set,) = response.authority
    return (
        response.rcode() == dns.rcode.NXDOMAIN
        and response.answer == []
        and soa_set.name.to_text() == qname + "."
        and [(o.code, o.text) for o in response.options] == [(dns.edns.EDECode.BLOCKED, report)]
    )


def addresses_of(response: dns.message.Message) -> set[str]:
    return {
        rdata.address
        for rrset in response.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rdata in rrset
    }


CHAIN_INDICATORS = [
    RawIndicator("evil.example", "domain", event_id="66", attribute_uuid="a-66"),
    RawIndicator("198.51.100.0/24", "ip-dst", event_id="77", attribute_uuid="a-77"),
    RawIndicator("mixed.example|2001:db8:bad::/48", "domain|ip", event_id="88"),
]


def test_misp_policy_judges_answers() -> None:
    """The MISP policy provides IAnswerPolicy, so the chain asks it about answers."""
    assert verifyObject(IAnswerPolicy, misp_policy(CHAIN_INDICATORS))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_cname_chain_into_a_listed_domain_is_blocked_forwarded_and_cached(
    transport: str,
) -> None:
    """cloaked.example -> metrics.cloaked.example -> t.evil.example (listed by its parent
    evil.example): the client gets the blocked answer for its own question, with the
    listed domain and `via=cname` in EDE 15, the first time and from the cache."""
    served = Served([misp_policy(CHAIN_INDICATORS)])
    report = "source=misp-connector;domain=evil.example;via=cname"
    for _ in range(3):
        response, answer = served.ask("cloaked.example", transport=transport)
        assert blocked_with(response, "cloaked.example", report)
        assert answer.kind is Kind.BLOCKED
        assert answer.decision is not None
        assert (answer.decision.trigger, answer.decision.indicator) == ("cname", "evil.example")
        assert answer.decision.provenance.event_id == "66"
    assert served.upstream.asked == [b"cloaked.example"]


def test_a_txt_question_through_a_listed_chain_gets_the_report() -> None:
    """For TXT the blocked answer is the report, which says the chain led there."""
    served = Served([misp_policy(CHAIN_INDICATORS)])
    response, _ = served.ask("cloaked.example", "TXT")
    (txt_set,) = response.answer
    assert b"".join(next(iter(txt_set)).strings) == (
        b"source=misp-connector;domain=evil.example;via=cname"
    )


def test_a_dname_into_a_listed_domain_is_blocked() -> None:
    """www.alias.example, redirected by `alias.example DNAME evil.example`, is blocked."""
    served = Served([misp_policy(CHAIN_INDICATORS)])
    response, _ = served.ask("www.alias.example")
    assert blocked_with(
        response, "www.alias.example", "source=misp-connector;domain=evil.example;via=cname"
    )


def test_a_chain_through_allowed_names_only_is_answered() -> None:
    """Three hops through names nobody lists: the upstream's answer, untouched."""
    served = Served([misp_policy(CHAIN_INDICATORS)])
    for _ in range(2):
        response, answer = served.ask("shop.example")
        assert response.rcode() == dns.rcode.NOERROR
        assert addresses_of(response) == {"192.0.2.20"}
        assert answer.decision is None


def test_an_allowlisted_question_is_never_blocked_by_its_chain() -> None:
    """The operator vouched for the name the user asks for: its chain is not judged."""
    allow = AllowlistPolicy.from_config(AllowlistOptions(domains=("cloaked.example",)))
    served = Served([allow, misp_policy(CHAIN_INDICATORS)])
    for kind in (Kind.ALLOWED, Kind.CACHED):
        response, answer = served.ask("cloaked.example")
        assert addresses_of(response) == {"192.0.2.10"}
        assert answer.kind is kind
        assert answer.decision is not None and answer.decision.source == "allowlist"


def test_an_allowlisted_name_inside_the_chain_does_not_launder_the_listed_one() -> None:
    """via-cdn.example -> x.evil.example (listed) -> edge.goodcdn.example (allowlisted):
    blocked by the listed name, whatever comes after it."""
    allow = AllowlistPolicy.from_config(AllowlistOptions(domains=("goodcdn.example",)))
    served = Served([allow, misp_policy(CHAIN_INDICATORS)])
    response, _ = served.ask("via-cdn.example")
    assert blocked_with(
        response, "via-cdn.example", "source=misp-connector;domain=evil.example;via=cname"
    )


def test_monitor_mode_answers_and_logs_the_chain_decision() -> None:
    """enable_blocking = false: the chain's answer reaches the client and the query log
    sees the decision, not enforced, forwarded and cached alike."""
    served = Served([misp_policy(CHAIN_INDICATORS, enable_blocking=False)])
    for kind in (Kind.RECURSIVE, Kind.CACHED):
        response, answer = served.ask("cloaked.example")
        assert addresses_of(response) == {"192.0.2.10"}
        assert answer.kind is kind
        assert answer.decision is not None and not answer.decision.enforced
        assert answer.decision.trigger == "cname"


@pytest.mark.parametrize(
    ("name", "rdtype", "network", "event"),
    [
        ("hosted.example", "A", "198.51.100.0/24", "77"),
        ("v6.example", "AAAA", "2001:db8:bad::/48", "88"),
    ],
)
def test_an_answer_holding_a_listed_address_is_blocked(
    name: str, rdtype: str, network: str, event: str
) -> None:
    """With `block_response_ips`, an A or AAAA answer holding an address in a listed
    network (an `ip-dst` range, the address half of a `domain|ip`) is blocked, the
    network in the report and in the decision."""
    served = Served([misp_policy(CHAIN_INDICATORS, block_response_ips=True)])
    for _ in range(2):
        response, answer = served.ask(name, rdtype)
        assert blocked_with(response, name, f"source=misp-connector;ip={network}")
        assert answer.decision is not None
        assert (answer.decision.trigger, answer.decision.indicator) == ("ip", network)
        assert answer.decision.provenance.event_id == event


def test_response_ips_are_off_unless_asked_for() -> None:
    """By default listed addresses block nothing; unlisted ones never do."""
    served = Served([misp_policy(CHAIN_INDICATORS)])
    assert addresses_of(served.ask("hosted.example")[0]) == {"198.51.100.99"}
    served = Served([misp_policy(CHAIN_INDICATORS, block_response_ips=True)])
    assert addresses_of(served.ask("clean.example")[0]) == {"192.0.2.50"}
    assert addresses_of(served.ask("clean.example", "AAAA")[0]) == {"2001:db8::50"}


# -- the cache stays honest ------------------------------------------------------------------


def refresh(policy: MispBlockingPolicy, indicators: list[RawIndicator]) -> None:
    """Have the policy's source hold `indicators` and run an update now."""
    policy.updater.source.indicators = indicators  # type: ignore[attr-defined]
    policy.updater.update_now()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_cached_answer_the_new_snapshot_lists_is_blocked_from_then_on(transport: str) -> None:
    """Cached while nothing was listed, then the refresh lists its chain target, its
    address, or its own name: the next hit is blocked, without asking the upstream."""
    policy = misp_policy([], block_response_ips=True)
    served = Served([policy])
    for name in ("cloaked.example", "hosted.example", "shop.example"):
        assert served.ask(name, transport=transport)[0].rcode() == dns.rcode.NOERROR
    refresh(
        policy,
        [
            RawIndicator("t.evil.example", "hostname"),
            RawIndicator("198.51.100.99", "ip-src"),
            RawIndicator("shop.example", "domain"),
        ],
    )
    for name, report in (
        ("cloaked.example", "source=misp-connector;domain=t.evil.example;via=cname"),
        ("hosted.example", "source=misp-connector;ip=198.51.100.99"),
        ("shop.example", "source=misp-connector;domain=shop.example"),
    ):
        assert blocked_with(served.ask(name, transport=transport)[0], name, report)
    assert len(served.upstream.asked) == 3


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_an_indicator_removed_from_misp_stops_blocking_after_the_refresh(transport: str) -> None:
    """Blocked (and cached) by its chain and by its address, then MISP drops both
    indicators: after the refresh the cached answer is served again."""
    policy = misp_policy(CHAIN_INDICATORS, block_response_ips=True)
    served = Served([policy])
    assert served.ask("cloaked.example", transport=transport)[1].kind is Kind.BLOCKED
    assert served.ask("hosted.example", transport=transport)[1].kind is Kind.BLOCKED
    refresh(policy, [RawIndicator("unrelated.example", "domain")])
    response, answer = served.ask("cloaked.example", transport=transport)
    assert (addresses_of(response), answer.kind) == ({"192.0.2.10"}, Kind.CACHED)
    response, answer = served.ask("hosted.example", transport=transport)
    assert (addresses_of(response), answer.kind) == ({"198.51.100.99"}, Kind.CACHED)
    assert len(served.upstream.asked) == 2


def test_a_cache_hit_does_not_ask_the_policy_again_until_its_snapshot_changes() -> None:
    """The verdict is reached once per answer and kept with it: a thousand hits ask the
    policy nothing; a refresh that changes the snapshot has the next hit ask once more."""

    class Counting(MispBlockingPolicy):
        asked = 0

        def decide_answer(self, *args: Any) -> Any:
            Counting.asked += 1
            return super().decide_answer(*args)

    inner = misp_policy(CHAIN_INDICATORS)
    policy = Counting(inner.name, inner.source, inner.options, inner.updater)
    served = Served([policy])
    for _ in range(1000):
        served.ask("shop.example")
    assert Counting.asked == 1
    refresh(policy, [*CHAIN_INDICATORS, RawIndicator("another.example", "domain")])
    for _ in range(10):
        served.ask("shop.example")
    assert Counting.asked == 2


def test_an_answer_too_short_lived_to_cache_is_judged_all_the_same() -> None:
    """With the cache off, every forwarded answer is judged as it arrives."""
    served = Served([misp_policy(CHAIN_INDICATORS)], cache_size=0)
    for _ in range(2):
        assert served.ask("cloaked.example")[1].kind is Kind.BLOCKED
    assert len(served.upstream.asked) == 2


def test_a_reload_that_allowlists_the_chain_name_serves_the_cached_answer() -> None:
    """A new chain (SIGHUP) judges cached answers afresh: allowlisting the listed name
    the chain reached lets the cached answer through at its next hit."""
    policy = misp_policy(CHAIN_INDICATORS)
    served = Served([policy])
    assert served.ask("cloaked.example")[1].kind is Kind.BLOCKED
    allow = AllowlistPolicy.from_config(AllowlistOptions(domains=("t.evil.example",)))
    served.resolver.policy = PolicyChain([allow, policy])
    response, answer = served.ask("cloaked.example")
    assert (addresses_of(response), answer.kind) == ({"192.0.2.10"}, Kind.CACHED)
    assert served.upstream.asked == [b"cloaked.example"]


class AllowClient:
    """Allows every name for one client (a per-client allowlist), no opinion otherwise."""

    name = "allow-client"

    def __init__(self, client: str) -> None:
        self.client = client

    def decide(self, query: PolicyQuery) -> Any:
        if query.client != self.client:
            return None
        return Decision(Action.ALLOW, "allow-client", indicator=query.name)


def test_clients_waiting_for_one_upstream_answer_each_get_their_own_verdict() -> None:
    """Two clients ask the same question while it is in flight: the one a policy allows
    gets the chain's answer, the other the blocked answer; the upstream is asked once."""
    served = Served([AllowClient("127.0.0.2"), misp_policy(CHAIN_INDICATORS)])
    served.upstream.held = []
    query = dns.message.make_query("cloaked.example", "A", use_edns=0).to_wire()
    waiting = [
        served.responder.respond(query, client, "tcp") for client in ("127.0.0.1", "127.0.0.2")
    ]
    served.upstream.release()
    blocked, allowed = (dns.message.from_wire(w.result) for w in waiting)  # type: ignore[union-attr]
    assert blocked_with(
        blocked, "cloaked.example", "source=misp-connector;domain=evil.example;via=cname"
    )
    assert addresses_of(allowed) == {"192.0.2.10"}
    assert served.upstream.asked == [b"cloaked.example"]
