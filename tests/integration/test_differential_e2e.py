"""Differential test: misp-dns in front of NSD, and in front of Unbound, answers as they do.

Started once for the module, on loopback ports chosen at run time, stopped at its end:

- NSD, authoritative for the zones of `integration.diff_zones` (CNAME/DNAME chains, long,
  multi-string and escaped TXT, labels holding a dot or a space, wildcards, delegations with
  and without glue, SRV/MX/NAPTR/CAA/SSHFP/TLSA/HINFO, an unknown type in `\\#` syntax,
  RRsets over 1232 bytes, and `signed.test.`, signed at test time with fresh keys);
- Unbound, validating (anchored at signed.test.'s KSK), asking NSD for every zone;
- one misp-dns forwarding to NSD, another forwarding to Unbound.

Each test asks one question one way (UDP or TCP, EDNS or not, DO, CD: see `Variant`) of
misp-dns and of the reference, parses both answers strictly with dnspython, and fails on
any difference the list below does not allow. First, the reference's answer (its full
answer over TCP with EDNS if it was truncated) must have the RCODE and answer types the
case expects (and AD, for a secure answer asked with DO), so that a zone NSD did not
load, or an Unbound that validates nothing, fails the test instead of letting it pass on
two equal error answers.

Allowed differences. Everything else must be equal: ID, opcode, RCODE with its extended
bits, QR, RD, CD, AD, TC, the question as written, the RRsets of the answer section in
order, the RRsets of the authority section, and the presence, version and DO bit of OPT.

- AA: always clear from misp-dns, set by NSD. misp-dns forwards; it is authoritative for
  nothing it relays (RFC 1035 section 4.1.1). Unbound clears it too.
- RA: set by misp-dns, clear from NSD, which offers no recursion. Against Unbound RA must
  be equal, in error answers too.
- TTL: up to `age` seconds lower than NSD's, or within `age` of Unbound's. A cache counts
  TTLs down while it holds an answer (RFC 1035 section 3.2.1, RFC 2181 section 8); `age`
  is the time since the servers started, plus a second.
- OPT: the UDP payload size and the options (EDE, ...). OPT is per hop (RFC 6891 section
  6.1.1) and misp-dns writes its own: Unbound's EDE 6 (DNSSEC Bogus) on the SERVFAIL for
  bogus data does not reach misp-dns's clients.
- Order: of the records inside an RRset, and of the RRsets in the authority and
  additional sections. RRsets are sets (RFC 2181 section 5) and Unbound rotates them. The
  answer section's RRsets keep their order: a CNAME or DNAME chain reads in order.
- Case of the names in the sections: names compare case-insensitively (RFC 4343) and a
  cached answer keeps the case of the client that asked first. The question must be
  echoed exactly as asked.
- Truncated answers: when both have TC set their sections are not compared; a client
  drops a truncated answer and asks over TCP (RFC 2181 section 9, RFC 7766).
- Additional section over UDP: fewer RRsets than the reference's. What additional data
  fits a datagram is up to each server and never required (RFC 2181 section 9); what is
  there must be whole and as in the reference's full answer.
- Authority section of a positive answer over UDP: fewer RRsets, as for additional data.
  The NS records of a positive answer are not required (RFC 2181 section 9; Unbound's
  minimal responses omit them). In negative answers (SOA, NSEC) and referrals the
  authority section must be equal.

Over TCP nothing may be left out. Read on misp-dns's raw bytes as well: an answer is never
larger than the query allowed (512 bytes without EDNS, 1232 with), and names inside RDATA
are compressed only in the types of RFC 1035 (RFC 3597 section 4).

What main gets wrong goes in `KNOWN`, each marked `xfail(strict=True)` so that the mark
fails once the fix lands and must then be removed; it is empty now. (Issue 13 items 1 to 5,
which this test caught, are fixed: a compressed DNAME target, FORMERR for a dot inside a
question's label, RA on NOTIMP and FORMERR, TC when only a positive answer's NS records did
not fit, and TCP answers missing what the upstream left out of a UDP answer; so is the
defect it found, a name inside an answer whose label holds a dot relayed as two labels.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from conftest import free_port, require_tool

from .diff_zones import DIFF, ELSEWHERE, SIGNED, WIDE, BuiltZones, build_zones
from .differential import PAYLOAD, Exchange, Rules, Variant, differences
from .nsd import NsdProcess, write_nsd_config
from .server import MispDnsProcess
from .server_group import ServerGroup
from .unbound import UnboundProcess, stub_resolver_config
from .wire import Address, parse, tcp_exchange


@attrs.frozen
class Case:
    """A question, and what the reference must answer to it for the zones to be as built.

    `expect` is the RCODE and the types of the answer's RRsets in order, RRSIGs aside
    (`expect_cd` the same when asked with CD, if it differs); `secure` says the reference
    validates the answer (AD when asked with DO).
    """

    name: str
    rdtype: str
    expect: str
    why: str
    expect_cd: str = ""
    secure: bool = False
    #: Odd shapes of query: another opcode, a second question, an EDNS version above 0.
    opcode: dns.opcode.Opcode = dns.opcode.Opcode.QUERY
    questions: int = 1
    edns_version: int = 0

    @property
    def id(self) -> str:
        """`name/type`, and the odd shape of the query if it has one."""
        shape = ""
        if self.opcode != dns.opcode.QUERY:
            shape = f"-opcode-{dns.opcode.to_text(self.opcode)}"
        elif self.questions > 1:
            shape = f"-{self.questions}-questions"
        elif self.edns_version:
            shape = f"-edns-version-{self.edns_version}"
        return f"{self.name.rstrip('.')}/{self.rdtype}{shape}"

    def query(self, variant: Variant) -> dns.message.Message:
        """The query of this case, asked as `variant` says."""
        query = variant.query(self.name, self.rdtype)
        query.set_opcode(self.opcode)
        # A name sharing no label with the first, so that neither is compressed.
        other = dns.name.from_text(f"www.{ELSEWHERE}")
        for _ in range(1, self.questions):
            query.question.append(dns.rrset.RRset(other, dns.rdataclass.IN, dns.rdatatype.AAAA))
        if self.edns_version and variant.edns:
            query.use_edns(self.edns_version, query.ednsflags, query.payload)
        return query

    def check_reference(self, full: dns.message.Message) -> None:
        """Fail unless the reference's answer (not truncated) is the one the zones give."""
        cd = bool(full.flags & dns.flags.CD)
        rcode, *types = (self.expect_cd if cd and self.expect_cd else self.expect).split()
        got = [
            dns.rdatatype.to_text(r.rdtype) for r in full.answer if r.rdtype != dns.rdatatype.RRSIG
        ]
        assert (dns.rcode.to_text(full.rcode()), got) == (rcode, types), full.to_text()
        if self.secure and full.ednsflags & dns.flags.DO:
            assert full.flags & dns.flags.AD, f"the reference did not validate:\n{full}"


UDP = Variant()
UDP_EDNS = Variant(edns=True)
TCP = Variant(tcp=True)
TCP_EDNS = Variant(tcp=True, edns=True)
UDP_DO = Variant(edns=True, dnssec_ok=True)
TCP_DO = Variant(tcp=True, edns=True, dnssec_ok=True)
UDP_CD = Variant(edns=True, checking_disabled=True)
UDP_DO_CD = Variant(edns=True, dnssec_ok=True, checking_disabled=True)

D, S, W = DIFF, SIGNED, WIDE

#: Questions for misp-dns in front of NSD, asked over UDP with EDNS and without, and TCP.
NSD_CASES = [
    Case(f"www.{D}", "A", "NOERROR A", "an address, with NS and glue around it"),
    Case(f"WwW.dIfF.{D[5:]}", "A", "NOERROR A", "mixed case, echoed as asked"),
    Case(f"chain1.{D}", "A", "NOERROR CNAME CNAME A", "two CNAMEs"),
    Case(f"out-alias.{D}", "A", "NOERROR CNAME A", "a CNAME to another zone NSD serves"),
    Case(f"away.{D}", "A", "NOERROR CNAME", "a CNAME to a zone NSD does not serve"),
    Case(f"host.dname.{D}", "A", "NOERROR DNAME CNAME A", "a DNAME inside the zone"),
    Case(f"nx.dname.{D}", "A", "NXDOMAIN DNAME CNAME", "a DNAME to a name that is not there"),
    Case(f"host.dname-out.{D}", "A", "NOERROR DNAME CNAME A", "a DNAME to another zone"),
    Case(f"dname.{D}", "DNAME", "NOERROR DNAME", "the DNAME record asked for"),
    Case(f"nodata.{D}", "AAAA", "NOERROR", "NODATA with the SOA"),
    Case(f"nx.{D}", "A", "NXDOMAIN", "NXDOMAIN with the SOA"),
    Case(f"ent.{D}", "A", "NOERROR", "an empty non-terminal"),
    Case(f"txt-long.{D}", "TXT", "NOERROR TXT", "a 255-octet string"),
    Case(f"txt-multi.{D}", "TXT", "NOERROR TXT", "several strings, escapes, NUL, high octets"),
    Case(f"txt-empty.{D}", "TXT", "NOERROR TXT", "one empty string"),
    Case(f"a\\.b.{D}", "A", "NOERROR A", "a label holding a dot"),
    Case(f"a\\.b.{D}", "TXT", "NOERROR TXT", "a label holding a dot, TXT"),
    Case(f"space\\032label.{D}", "A", "NOERROR A", "a label holding a space"),
    Case(f"to-dotted.{D}", "A", "NOERROR CNAME A", "a CNAME to a label holding a dot"),
    Case(f"any.wild.{D}", "A", "NOERROR A", "a wildcard"),
    Case(f"any.wild.{D}", "AAAA", "NOERROR", "a wildcard without the type asked"),
    Case(f"sub.{D}", "A", "NOERROR", "a referral with glue"),
    Case(f"host.outsub.{D}", "A", "NOERROR", "a referral without glue"),
    Case(f"_sip._tcp.{D}", "SRV", "NOERROR SRV", "SRV"),
    Case(f"mx.{D}", "MX", "NOERROR MX", "MX, with the exchange's address"),
    Case(f"naptr.{D}", "NAPTR", "NOERROR NAPTR", "NAPTR"),
    Case(f"caa.{D}", "CAA", "NOERROR CAA", "CAA, one flag critical"),
    Case(f"sshfp.{D}", "SSHFP", "NOERROR SSHFP", "SSHFP"),
    Case(f"_443._tcp.tlsa.{D}", "TLSA", "NOERROR TLSA", "TLSA"),
    Case(f"hinfo.{D}", "HINFO", "NOERROR HINFO", "HINFO"),
    Case(f"unknown.{D}", "TYPE65280", "NOERROR TYPE65280", "an unknown type, one empty"),
    Case(f"many.{D}", "A", "NOERROR A", "100 A records, over 1232 bytes"),
    Case(f"many6.{D}", "AAAA", "NOERROR AAAA", "60 AAAA records, over 1232 bytes"),
    Case(f"bigtxt.{D}", "TXT", "NOERROR TXT", "1.6 kB of TXT"),
    Case(f"mid.{D}", "A", "NOERROR A", "40 A records, between 512 and 1232 bytes"),
    Case(f"big-alias.{D}", "A", "NOERROR CNAME A", "a CNAME to 100 A records"),
    Case(f"fits512.{W}", "TXT", "NOERROR TXT", "fits in 512 bytes without its NS"),
    Case(f"fits1232.{W}", "A", "NOERROR A", "fits in 1232 bytes without its glue"),
]
#: Questions about the signed zone for misp-dns in front of NSD, with DO and without.
NSD_SIGNED_CASES = [
    Case(f"www.{S}", "A", "NOERROR A", "a signed address"),
    Case(f"alias.{S}", "A", "NOERROR CNAME A", "a signed CNAME"),
    Case(f"x.wild.{S}", "TXT", "NOERROR TXT", "a signed wildcard, with its NSEC"),
    Case(f"host.dname.{S}", "A", "NOERROR DNAME CNAME A", "a signed DNAME"),
    Case(f"nodata.{S}", "AAAA", "NOERROR", "signed NODATA"),
    Case(f"nx.{S}", "A", "NXDOMAIN", "signed NXDOMAIN"),
    Case(f"host.secure.{S}", "A", "NOERROR", "a secure referral (DS)"),
    Case(f"host.insecure.{S}", "A", "NOERROR", "an insecure referral (NSEC)"),
    Case(f"many.{S}", "A", "NOERROR A", "80 signed A records"),
    Case(S, "DNSKEY", "NOERROR DNSKEY", "the keys"),
    Case(f"bogus.{S}", "A", "NOERROR A", "a record whose signature does not match"),
]
#: Questions for misp-dns in front of Unbound (which follows chains out of a zone), asked
#: over UDP with EDNS and without, and over TCP without.
UNBOUND_CASES = [
    Case(f"www.{D}", "A", "NOERROR A", "an address"),
    Case(f"out-alias.{D}", "A", "NOERROR CNAME A", "a CNAME out of the zone, followed"),
    Case(f"host.dname-out.{D}", "A", "NOERROR DNAME CNAME A", "a DNAME out, followed"),
    Case(f"nx.{D}", "A", "NXDOMAIN", "NXDOMAIN"),
    Case(f"nodata.{D}", "AAAA", "NOERROR", "NODATA"),
    Case(f"many.{D}", "A", "NOERROR A", "over 1232 bytes"),
    Case(f"a\\.b.{D}", "A", "NOERROR A", "a label holding a dot"),
    Case(f"to-dotted.{D}", "A", "NOERROR CNAME A", "a CNAME to a label holding a dot"),
    Case(f"_sip._tcp.{D}", "SRV", "NOERROR SRV", "SRV"),
]
#: Questions about the signed zone for misp-dns in front of the validating Unbound.
UNBOUND_SIGNED_CASES = [
    Case(f"www.{S}", "A", "NOERROR A", "a secure answer", secure=True),
    Case(f"x.wild.{S}", "TXT", "NOERROR TXT", "a secure wildcard", secure=True),
    Case(f"host.dname.{S}", "A", "NOERROR DNAME CNAME A", "a secure DNAME", secure=True),
    Case(f"nodata.{S}", "AAAA", "NOERROR", "secure NODATA", secure=True),
    Case(f"nx.{S}", "A", "NXDOMAIN", "secure NXDOMAIN", secure=True),
    Case(f"many.{S}", "A", "NOERROR A", "secure, over 1232 bytes", secure=True),
    Case(f"bogus.{S}", "A", "SERVFAIL", "bogus: SERVFAIL, unless CD", expect_cd="NOERROR A"),
]
#: Queries that get an error answer, for misp-dns in front of Unbound.
ERROR_CASES = [
    Case(f"www.{D}", "A", "NOTIMP", "opcode STATUS", opcode=dns.opcode.STATUS),
    Case(f"www.{D}", "A", "NOTIMP", "opcode IQUERY", opcode=dns.opcode.IQUERY),
    Case(f"www.{D}", "A", "FORMERR", "two questions", questions=2),
]
BADVERS_CASES = [Case(f"www.{D}", "A", "BADVERS", "EDNS version 1", edns_version=1)]


#: What main gets wrong: (test, case id, variant id or "*" for all) -> its mark.
KNOWN: dict[tuple[str, str, str], pytest.MarkDecorator] = {}


#: Every (test, case id, variant id) asked, to check that each entry of KNOWN names one.
_ASKED: set[tuple[str, str, str]] = set()


def _params(test: str, cases: list[Case], variants: tuple[Variant, ...]) -> list[Any]:
    params = []
    for case in cases:
        for variant in variants:
            _ASKED.update({(test, case.id, variant.id), (test, case.id, "*")})
            mark = KNOWN.get((test, case.id, variant.id)) or KNOWN.get((test, case.id, "*"))
            marks = [] if mark is None else [mark]
            params.append(pytest.param(case, variant, id=f"{case.id}-{variant.id}", marks=marks))
    return params


_servers = ServerGroup(scope="module")


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which one of this module's misp-dns logged an error."""
    yield from _servers.check_logs(request)


@pytest.fixture(scope="module")
def began() -> float:
    """When the module's servers started: no cache holds an answer older than this."""
    return time.monotonic()


@pytest.fixture(scope="module")
def zones(began: float, tmp_path_factory: pytest.TempPathFactory) -> BuiltZones:
    """The zones, signed.test. signed with keys made now."""
    keygen = require_tool("ldns-keygen")
    signzone = require_tool("ldns-signzone")
    return build_zones(tmp_path_factory.mktemp("zones"), keygen, signzone)


@pytest.fixture(scope="module")
def nsd(zones: BuiltZones, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdProcess]:
    """NSD serving the zones on 127.0.0.1."""
    binary = require_tool("nsd")
    port = free_port()
    conf = write_nsd_config(tmp_path_factory.mktemp("nsd"), port, zones.files)
    process = NsdProcess(binary, conf, ("127.0.0.1", port), DIFF)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def resolver(
    nsd: NsdProcess, zones: BuiltZones, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UnboundProcess]:
    """A validating Unbound that asks NSD for every zone, anchored at signed.test."""
    binary = require_tool("unbound")
    port = free_port()
    directory = tmp_path_factory.mktemp("resolver")
    stubs = [DIFF, WIDE, SIGNED, ELSEWHERE]
    conf = stub_resolver_config(directory, port, stubs, nsd.address, zones.trust_anchor)
    process = UnboundProcess(binary, conf, ("127.0.0.1", port), probe=f"www.{DIFF}")
    process.start()
    yield process
    process.stop()


in_front_of_nsd = _servers.fixture(
    "in_front_of_nsd",
    "misp-dns forwarding to NSD.",
    upstreams=["nsd"],
    probe=f"www.{DIFF}",
)
in_front_of_resolver = _servers.fixture(
    "in_front_of_resolver",
    "misp-dns forwarding to the validating Unbound.",
    upstreams=["resolver"],
    probe=f"www.{DIFF}",
)

FullAnswer = Callable[[Address, dns.message.Message], Callable[[], dns.message.Message]]


@pytest.fixture(scope="module")
def full_answer() -> FullAnswer:
    """The reference's answer to a query sent over TCP with EDNS, asked once per module."""
    memo: dict[tuple[Address, bytes], dns.message.Message] = {}

    def get(reference: Address, query: dns.message.Message) -> Callable[[], dns.message.Message]:
        full = dns.message.from_wire(query.to_wire())
        full.use_edns(max(0, query.edns), query.ednsflags, PAYLOAD)
        key = (reference, full.to_wire()[2:])

        def ask() -> dns.message.Message:
            if key not in memo:
                memo[key] = parse(tcp_exchange(full.to_wire(), reference))
            return memo[key]

        return ask

    return get


def _compare(
    case: Case,
    variant: Variant,
    ours: MispDnsProcess,
    reference: Address,
    full_answer: FullAnswer,
    rules: Rules,
) -> None:
    query = case.query(variant)
    exchange = Exchange.run(variant, query, ours.address, reference, full_answer(reference, query))
    whole = exchange.theirs.flags & dns.flags.TC == 0
    case.check_reference(exchange.theirs if whole else exchange.full())
    found = differences(exchange, rules)
    assert not found, "\n".join(found) + "\n" + exchange.describe()


@pytest.mark.parametrize(
    ("case", "variant"),
    _params("nsd", NSD_CASES, (UDP, UDP_EDNS, TCP_EDNS))
    + _params("nsd", NSD_SIGNED_CASES, (UDP_EDNS, UDP_DO, TCP_DO)),
)
def test_answers_as_nsd(
    case: Case,
    variant: Variant,
    in_front_of_nsd: MispDnsProcess,
    nsd: NsdProcess,
    full_answer: FullAnswer,
    began: float,
) -> None:
    """misp-dns relays NSD's answer to each shape of record as NSD gives it, over UDP and
    TCP, with EDNS and DO or without, beyond the differences the module docstring allows."""
    rules = Rules(authoritative=True, age=time.monotonic() - began + 1)
    _compare(case, variant, in_front_of_nsd, nsd.address, full_answer, rules)


@pytest.mark.parametrize(
    ("case", "variant"),
    _params("unbound", UNBOUND_CASES, (UDP, UDP_EDNS, TCP))
    + _params("unbound", UNBOUND_SIGNED_CASES, (UDP, TCP_EDNS, UDP_DO, TCP_DO, UDP_CD, UDP_DO_CD))
    + _params("unbound", ERROR_CASES, (UDP, UDP_EDNS))
    + _params("unbound", BADVERS_CASES, (UDP_EDNS, TCP_EDNS)),
)
def test_answers_as_unbound(
    case: Case,
    variant: Variant,
    in_front_of_resolver: MispDnsProcess,
    resolver: UnboundProcess,
    full_answer: FullAnswer,
    began: float,
) -> None:
    """misp-dns in front of a validating Unbound answers as Unbound does: AD with DO,
    SERVFAIL for bogus data unless CD, error answers with Unbound's flags, beyond the
    differences the module docstring allows."""
    rules = Rules(authoritative=False, age=time.monotonic() - began + 1)
    _compare(case, variant, in_front_of_resolver, resolver.address, full_answer, rules)


def test_every_known_difference_names_a_question_asked() -> None:
    """Each entry of KNOWN marks questions the tests above ask: one naming a case or a
    variant that is gone would leave nothing marked and hide nothing, silently."""
    assert set(KNOWN) - _ASKED == set()
