"""Pure builders of the answers misp-dns makes up itself (blocked, refused, failed).

The blocked answer is the one users migrate from, made right (see DESIGN.md):
NXDOMAIN with one SOA owned by the query name, or, for TXT with the report allowed,
NOERROR with one TXT record holding the report; both with EDE 15 when the query had EDNS.
"""

from __future__ import annotations

from twisted.names import dns

from misp_dns.dns.answer import Answer, Kind
from misp_dns.policy.decision import Decision

__all__ = ["blocked_answer", "refused_answer", "server_failure"]

EDE_PROHIBITED = 18

SOA_SERIAL = 1
SOA_REFRESH = 14400
SOA_RETRY = 3600
SOA_EXPIRE = 604800


def blocked_answer(qname: bytes, qtype: int, decision: Decision, server_name: str) -> Answer:
    """The synthesized answer for a blocked question; `qname` as the client wrote it."""
    ede = [(decision.ede_code, decision.report)] if decision.add_ede and decision.ede_code else []
    if qtype == dns.TXT and decision.add_txt_report:
        report = dns.Record_TXT(decision.report.encode("utf-8"), ttl=decision.ttl)
        record = dns.RRHeader(qname, dns.TXT, dns.IN, decision.ttl, report)
        return Answer(dns.OK, answers=(record,), kind=Kind.BLOCKED, ede=ede, decision=decision)
    soa = dns.Record_SOA(
        mname=server_name,
        rname=f"hostadmin.{server_name}",
        serial=SOA_SERIAL,
        refresh=SOA_REFRESH,
        retry=SOA_RETRY,
        expire=SOA_EXPIRE,
        minimum=decision.ttl,
        ttl=decision.ttl,
    )
    record = dns.RRHeader(qname, dns.SOA, dns.IN, decision.ttl, soa)
    return Answer(dns.ENAME, authority=(record,), kind=Kind.BLOCKED, ede=ede, decision=decision)


def refused_answer() -> Answer:
    """REFUSED for a client outside `allow_clients`, with EDE 18 (Prohibited)."""
    return Answer(dns.EREFUSED, kind=Kind.REFUSED, ede=[(EDE_PROHIBITED, "")])


def server_failure(reason: str = "") -> Answer:
    """SERVFAIL when no answer could be had."""
    return Answer(dns.ESERVER, kind=Kind.SERVER_FAILURE)
