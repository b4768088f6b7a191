"""Pure builders of the answers misp-dns makes up itself (blocked, ANY, CHAOS, refused, failed).

The blocked answer is the one users migrate from, made right (the README, "What clients see"):
NXDOMAIN with one SOA owned by the query name, or, for TXT with the report allowed,
NOERROR with one TXT record holding the report; both with EDE 15 when the query had EDNS.
"""

from __future__ import annotations

from twisted.names import dns

from misp_dns.dns.packet import blocked_body, chaos_txt_body, empty_body, minimal_any_body
from misp_dns.event import Answer, Kind
from misp_dns.interfaces import ANSWER_DROP, Decision

__all__ = [
    "blocked_answer",
    "chaos_identity_answer",
    "minimal_any_answer",
    "other_class_answer",
    "policy_failure",
    "refused_answer",
    "server_failure",
]

EDE_PROHIBITED = 18
EDE_NOT_SUPPORTED = 21


def blocked_answer(decision: Decision, qtype: int, server_name: str) -> Answer:
    """The synthesized answer to a blocked question of type `qtype`.

    It is carried as a pre-encoded packet only: its records are owned by the question's
    name, whichever name that is, so the same answer serves every name the decision covers.
    A decision answering `ANSWER_DROP` gets the `Kind.DROPPED` answer: nothing is sent.
    """
    if decision.answer == ANSWER_DROP:
        return Answer(dns.OK, kind=Kind.DROPPED, decision=decision)
    ede = ((decision.ede_code, decision.report),) if decision.add_ede and decision.ede_code else ()
    packet = blocked_body(decision, qtype, server_name)
    return Answer(packet.rcode, kind=Kind.BLOCKED, ede=ede, decision=decision, packet=packet)


def minimal_any_answer() -> Answer:
    """The answer to every ANY query: one synthesized HINFO "RFC8482" (RFC 8482 section 4.2)."""
    return _MINIMAL_ANY


_MINIMAL_ANY = Answer(dns.OK, kind=Kind.CACHED, packet=minimal_any_body())


def chaos_identity_answer(server_name: str) -> Answer:
    """The answer to CH TXT id.server (RFC 4892) and hostname.bind: this server's name."""
    return Answer(dns.OK, kind=Kind.CACHED, packet=chaos_txt_body(server_name))


def other_class_answer() -> Answer:
    """REFUSED for a question of a class misp-dns does not serve, with EDE 21 (Not Supported)."""
    return _OTHER_CLASS


_OTHER_CLASS = Answer(
    dns.EREFUSED,
    kind=Kind.REFUSED,
    ede=((EDE_NOT_SUPPORTED, "only class IN is served"),),
    packet=empty_body(dns.EREFUSED),
)


def refused_answer() -> Answer:
    """REFUSED for a client outside `allow_clients`, with EDE 18 (Prohibited)."""
    return Answer(dns.EREFUSED, kind=Kind.REFUSED, ede=((EDE_PROHIBITED, ""),))


def policy_failure() -> Answer:
    """SERVFAIL for a query a policy failed to decide about (pre-encoded, as blocked ones)."""
    return _POLICY_FAILURE


def server_failure(reason: str = "") -> Answer:
    """SERVFAIL when no answer could be had."""
    return Answer(dns.ESERVER, kind=Kind.SERVER_FAILURE)


_POLICY_FAILURE = Answer(dns.ESERVER, kind=Kind.SERVER_FAILURE, packet=empty_body(dns.ESERVER))
