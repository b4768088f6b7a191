"""Query events as the responder hands them to the exporter, for the export tests and bench.

Requests are real wire queries (built with dnspython, read by `misp_dns.dns.wire`), answers
come from the same builders the server uses, so the records under test are the ones a
running server produces.
"""

from __future__ import annotations

from typing import Any

import dns.message
from twisted.names import dns as tdns

from misp_dns.dns.responses import blocked_answer, refused_answer
from misp_dns.dns.wire import Request, read_request
from misp_dns.event import Answer, Kind, QueryEvent
from misp_dns.interfaces import Action, Decision, Provenance

__all__ = [
    "PROVENANCE",
    "allowed_event",
    "blocked_event",
    "event_for",
    "misp_decision",
    "recursive_event",
    "refused_event",
    "request",
]

#: 2025-11-26T10:10:30.567Z
TIMESTAMP = 1764151830.567

PROVENANCE = Provenance(
    event_id="1234",
    event_uuid="5f0c4c9e-1b7a-4d3c-9a55-3f1f7c0b9e21",
    event_info="Phishing campaign: stemtopx",
    attribute_uuid="a1c2e3f4-5b6d-4e8f-9a0b-1c2d3e4f5a6b",
)


def request(name: str = "www.example.com", rdtype: str = "A", *, edns: bool = True) -> Request:
    """A query for `name` as the server reads it off the wire."""
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    return read_request(query.to_wire())


def misp_decision(indicator: str = "stemtopx.com", *, enforced: bool = True) -> Decision:
    """The decision the MISP policy makes for a listed name."""
    return Decision(
        Action.BLOCK,
        "misp-connector",
        indicator=indicator,
        report=f"source=misp-connector;domain={indicator}",
        ttl=30,
        enforced=enforced,
        provenance=PROVENANCE,
    )


def _event(req: Request, answer: Answer, **kwargs: Any) -> QueryEvent:
    values: dict[str, Any] = {
        "timestamp": TIMESTAMP,
        "client": "127.0.0.1",
        "transport": "udp",
        "response_size": 100,
    }
    values.update(kwargs)
    return QueryEvent(
        question=req.question_wire,
        edns=req.edns is not None,
        answer=answer,
        age=answer.age,
        **values,
    )


def event_for(req: Request, answer: Answer, **kwargs: Any) -> QueryEvent:
    """The event the responder makes when it answers `req` with `answer`."""
    return _event(req, answer, **kwargs)


def blocked_event(
    name: str = "stemtopx.com",
    rdtype: str = "A",
    *,
    edns: bool = True,
    decision: Decision | None = None,
    **kwargs: Any,
) -> QueryEvent:
    """A query the MISP policy blocked (NXDOMAIN + SOA, or the TXT report)."""
    req = request(name, rdtype, edns=edns)
    decision = decision or misp_decision(name)
    question = req.question
    answer = blocked_answer(decision, question.type, "dns.example.net")
    return _event(req, answer, **kwargs)


def recursive_event(
    name: str = "www.example.com",
    address: str = "192.0.2.7",
    *,
    kind: Kind = Kind.RECURSIVE,
    rtt: float | None = 0.0123,
    decision: Decision | None = None,
    **kwargs: Any,
) -> QueryEvent:
    """A query answered by the upstream (or, with `kind=Kind.CACHED`, from the cache)."""
    req = request(name, "A")
    record = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 300, tdns.Record_A(address, 300))
    answer = Answer(tdns.OK, answers=(record,), kind=kind, rtt=rtt, decision=decision)
    return _event(req, answer, **kwargs)


def allowed_event(name: str = "intranet.example.org", **kwargs: Any) -> QueryEvent:
    """A query the allowlist let through (answered by the upstream)."""
    decision = Decision(Action.ALLOW, "allowlist", indicator="example.org", ede_code=None)
    return recursive_event(name, kind=Kind.ALLOWED, decision=decision, **kwargs)


def refused_event(name: str = "www.example.com", **kwargs: Any) -> QueryEvent:
    """A query from a client outside `allow_clients`."""
    kwargs.setdefault("client", "203.0.113.9")
    return _event(request(name, "A"), refused_answer(), **kwargs)
