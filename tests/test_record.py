"""The query record: the README's schema, field by field, for every kind of answer."""

from __future__ import annotations

import gc
import json
import re
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import attrs
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st
from integration.export_events import (
    PROVENANCE,
    allowed_event,
    blocked_event,
    event_for,
    misp_decision,
    recursive_event,
    refused_event,
    request,
)
from twisted.internet.task import Clock
from twisted.names import dns as tdns

import misp_dns.export.record as record_module
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.wire import parse_message
from misp_dns.event import Answer, Kind, QueryEvent
from misp_dns.export.record import (
    MAX_RECORD_BYTES,
    RecordEncoder,
    class_name,
    ede_name,
    encode_records,
    format_timestamp,
    is_blocking,
    rcode_name,
    rdata_text,
)
from misp_dns.interfaces import Action, Decision, Provenance
from misp_dns.qtypes import qtype_name


def written(event: QueryEvent) -> Any:
    """The record of `event` as the sinks write it, read back."""
    return json.loads(RecordEncoder().encode(event).line)


def test_blocked_query_record_matches_the_design_example() -> None:
    """A blocked A query gives exactly the record the README shows, key for key."""
    record = written(blocked_event("stemtopx.com"))
    assert record == {
        "timestamp": "2025-11-26T10:10:30.567Z",
        "clientIp": "127.0.0.1",
        "protocol": "Udp",
        "question": {"questionName": "stemtopx.com", "questionType": "A", "questionClass": "IN"},
        "responseCode": "NxDomain",
        "responseType": "Blocked",
        "answers": [],
        "edns": [{"errType": "Blocked", "message": "source=misp-connector;domain=stemtopx.com"}],
        "policy": {
            "source": "misp-connector",
            "domain": "stemtopx.com",
            "trigger": "qname",
            "mispEventId": PROVENANCE.event_id,
            "mispEventUuid": PROVENANCE.event_uuid,
            "mispAttributeUuid": PROVENANCE.attribute_uuid,
            "mispEventInfo": PROVENANCE.event_info,
        },
    }


def test_blocked_subdomain_names_the_query_and_the_matched_indicator() -> None:
    """The question is what the client asked (lower case); `policy.domain` is the IOC."""
    event = blocked_event("WWW.StemTopx.com", decision=misp_decision("stemtopx.com"))
    record = written(event)
    assert record["question"]["questionName"] == "www.stemtopx.com"
    assert record["policy"]["domain"] == "stemtopx.com"


def test_txt_report_is_listed_as_an_answer_with_its_ttl() -> None:
    """A blocked TXT query's record shows the TXT report answer in presentation format."""
    record = written(blocked_event("stemtopx.com", "TXT"))
    assert record["responseCode"] == "NoError"
    assert record["responseType"] == "Blocked"
    assert record["question"]["questionType"] == "TXT"
    assert record["answers"] == [
        {
            "name": "stemtopx.com",
            "recordType": "TXT",
            "recordClass": "IN",
            "recordTtl": 30,
            "recordData": '"source=misp-connector;domain=stemtopx.com"',
            "dnssecStatus": "Disabled",
        }
    ]


def test_ede_message_keeps_every_colon() -> None:
    """The reference exporter cut EDE text at the first colon; the whole text is kept."""
    decision = misp_decision("evil.example")
    decision = type(decision)(
        decision.action, decision.source, decision.indicator, report="a:b:c;domain=x:y"
    )
    record = written(blocked_event("evil.example", decision=decision))
    assert record["edns"] == [{"errType": "Blocked", "message": "a:b:c;domain=x:y"}]


def test_no_edns_in_the_query_means_no_ede_in_the_record() -> None:
    """A query without OPT gets a response without OPT, so the record lists no EDE."""
    record = written(blocked_event("stemtopx.com", edns=False))
    assert record["edns"] == []
    assert record["responseType"] == "Blocked"


def test_refused_client_record_says_prohibited() -> None:
    """A client outside allow_clients: Refused, EDE 18 named "Prohibited", its address."""
    record = written(refused_event(client="203.0.113.9"))
    assert record["responseCode"] == "Refused"
    assert record["responseType"] == "Refused"
    assert record["clientIp"] == "203.0.113.9"
    assert record["edns"] == [{"errType": "Prohibited", "message": ""}]
    assert "policy" not in record and "responseRtt" not in record


def test_recursive_record_has_rtt_in_milliseconds_and_the_answers() -> None:
    """An upstream answer: responseRtt in ms, each answer with TTL and presentation data."""
    record = written(recursive_event("www.example.com", "192.0.2.7", rtt=0.0123))
    assert record["responseType"] == "Recursive"
    assert record["responseRtt"] == pytest.approx(12.3)
    assert record["responseCode"] == "NoError"
    assert record["answers"] == [
        {
            "name": "www.example.com",
            "recordType": "A",
            "recordClass": "IN",
            "recordTtl": 300,
            "recordData": "192.0.2.7",
            "dnssecStatus": "Disabled",
        }
    ]
    assert "policy" not in record


def test_cached_record_has_no_rtt() -> None:
    """An answer from the cache has responseType Cached and no responseRtt."""
    record = written(recursive_event(kind=Kind.CACHED, rtt=None))
    assert record["responseType"] == "Cached"
    assert "responseRtt" not in record


def test_allowlisted_record_names_the_allowlist_without_misp_fields() -> None:
    """An allowlisted query: responseType Allowed, policy says allowlist and the entry."""
    record = written(allowed_event("intranet.example.org"))
    assert record["responseType"] == "Allowed"
    assert record["policy"] == {"source": "allowlist", "domain": "example.org", "trigger": "qname"}


def test_monitor_mode_record_shows_the_decision_not_enforced() -> None:
    """In monitor mode the query resolves; the record keeps the decision, enforced false."""
    event = recursive_event("stemtopx.com", decision=misp_decision(enforced=False))
    record = written(event)
    assert record["responseType"] == "Recursive"
    assert record["policy"]["enforced"] is False
    assert record["policy"]["mispEventId"] == PROVENANCE.event_id
    assert "enforced" not in written(blocked_event())["policy"]


def test_missing_provenance_fields_are_left_out() -> None:
    """Only the MISP fields the indicator came with are written."""
    decision = misp_decision()
    decision = type(decision)(
        decision.action, decision.source, "x.example", provenance=Provenance(event_id="7")
    )
    record = written(recursive_event(decision=decision))
    assert record["policy"] == {
        "source": "misp-connector",
        "domain": "x.example",
        "trigger": "qname",
        "mispEventId": "7",
    }


def test_a_block_through_the_chain_names_the_chain_and_the_listed_name() -> None:
    """A question blocked because its CNAME chain reached a listed name: `trigger` cname,
    `domain` the listed name, the EDE text saying `via=cname`."""
    decision = attrs.evolve(
        misp_decision("evil.test"),
        report="source=misp-connector;domain=evil.test;via=cname",
        trigger="cname",
    )
    record = written(blocked_event("innocent.example", decision=decision))
    assert record["question"]["questionName"] == "innocent.example"
    assert record["edns"] == [
        {"errType": "Blocked", "message": "source=misp-connector;domain=evil.test;via=cname"}
    ]
    assert record["policy"] == {
        "source": "misp-connector",
        "domain": "evil.test",
        "trigger": "cname",
        "mispEventId": PROVENANCE.event_id,
        "mispEventUuid": PROVENANCE.event_uuid,
        "mispAttributeUuid": PROVENANCE.attribute_uuid,
        "mispEventInfo": PROVENANCE.event_info,
    }


def test_a_block_on_an_address_names_the_listed_network_as_ip() -> None:
    """A question blocked because its answer held a listed address: `trigger` ip, and the
    listed address or range under `ip`, not `domain`."""
    decision = attrs.evolve(
        misp_decision("203.0.113.0/24"),
        report="source=misp-connector;ip=203.0.113.0/24",
        trigger="ip",
    )
    record = written(blocked_event("innocent.example", decision=decision))
    assert record["policy"]["ip"] == "203.0.113.0/24"
    assert record["policy"]["trigger"] == "ip"
    assert "domain" not in record["policy"]


def test_tcp_queries_say_tcp() -> None:
    """The protocol is "Udp" or "Tcp" as in the reference records."""
    assert written(recursive_event(transport="tcp"))["protocol"] == "Tcp"
    assert written(recursive_event(transport="udp"))["protocol"] == "Udp"


def test_server_failure_record() -> None:
    """An upstream failure: ServerFailure both as response code and response type."""
    answer = Answer(tdns.ESERVER, kind=Kind.SERVER_FAILURE)
    event = event_for(request(), answer, client="::1")
    record = written(event)
    assert record["responseCode"] == "ServerFailure"
    assert record["responseType"] == "ServerFailure"
    assert record["clientIp"] == "::1"


def test_authentic_answers_are_marked_secure() -> None:
    """Answers that came with AD from a validating upstream say dnssecStatus Secure."""
    record_a = tdns.RRHeader(b"a.example", tdns.A, tdns.IN, 5, tdns.Record_A("192.0.2.1"))
    answer = Answer(tdns.OK, answers=(record_a,), authentic=True)
    record = written(event_for(request("a.example"), answer))
    assert record["answers"][0]["dnssecStatus"] == "Secure"


def test_cached_answers_show_the_ttl_the_client_got() -> None:
    """A cached answer's records keep their stored TTL; the record shows it minus the age."""
    event = recursive_event(kind=Kind.CACHED, rtt=None)
    aged = attrs.evolve(event, age=120)
    assert written(aged)["answers"][0]["recordTtl"] == 180
    older = attrs.evolve(event, age=1000)
    assert written(older)["answers"][0]["recordTtl"] == 0


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "NoError"),
        (1, "FormatError"),
        (2, "ServerFailure"),
        (3, "NxDomain"),
        (4, "NotImplemented"),
        (5, "Refused"),
        (16, "BADVERS"),
        (3841, "RCODE3841"),
    ],
)
def test_response_code_names(code: int, name: str) -> None:
    """Response codes carry the reference exporter's names; unknown ones their number."""
    assert rcode_name(code) == name


def test_ede_type_and_class_names() -> None:
    """EDE codes get their RFC 8914 names; types and classes their mnemonics or RFC 3597."""
    assert ede_name(15) == "Blocked"
    assert ede_name(18) == "Prohibited"
    assert ede_name(17) == "Filtered"
    assert ede_name(3) == "Stale Answer"
    assert ede_name(999) == "EDE999"
    assert qtype_name(1) == "A"
    assert qtype_name(65) == "HTTPS"
    assert qtype_name(255) == "ANY"
    assert qtype_name(65280) == "TYPE65280"
    assert class_name(1) == "IN"
    assert class_name(3) == "CH"
    assert class_name(7) == "CLASS7"


@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_timestamp_is_iso_utc_with_milliseconds(seconds: float) -> None:
    """Timestamps read YYYY-MM-DDTHH:MM:SS.mmmZ and are within a millisecond of the time."""
    text = format_timestamp(seconds)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs(parsed.timestamp() - seconds) < 0.0011
    assert parsed.tzinfo == UTC


_PRESENTATION_CASES = [
    ("A", "192.0.2.1"),
    ("AAAA", "2001:db8::1"),
    ("MX", "10 mail.example.com."),
    ("TXT", '"hello world" "a\\"b\\\\c" "\\255\\000"'),
    ("SOA", "ns.example. hostmaster.example. 2024010101 7200 3600 1209600 300"),
    ("SRV", "1 2 443 target.example."),
    ("CNAME", "x.example."),
    ("PTR", "host.example."),
    ("NAPTR", '100 10 "U" "E2U+sip" "!^.*$!sip:info@example.com!" .'),
    ("HINFO", '"cpu" "os x"'),
    ("SSHFP", "1 1 0123456789ABCDEF0123456789ABCDEF01234567"),
    ("DS", "12345 8 1 49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE"),
    ("DNSKEY", "257 3 8 AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3"),
    ("RRSIG", "A 8 2 300 20251201000000 20251101000000 12345 example.com. AwEAAaz/tAm8"),
    ("CAA", '0 issue "letsencrypt.org"'),
    ("TLSA", "3 1 1 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"),
    ("HTTPS", "1 . alpn=h2"),
    ("NULL", "\\# 3 010203"),
]


def _through_twisted(rdtype: str, text: str) -> tuple[tdns.RRHeader, dns.rdata.Rdata]:
    rrset = dns.rrset.from_text("www.example.com.", 300, "IN", rdtype, text)
    response = dns.message.make_response(dns.message.make_query("www.example.com", rdtype))
    response.answer.append(rrset)
    message = tdns.Message()
    message.fromStr(response.to_wire())
    return message.answers[0], rrset[0]


@pytest.mark.parametrize(("rdtype", "text"), _PRESENTATION_CASES)
def test_answer_data_is_presentation_format(rdtype: str, text: str) -> None:
    """recordData is zone-file text that a DNS library reads back to the same data."""
    record, rdata = _through_twisted(rdtype, text)
    shown = rdata_text(record)
    parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), shown)
    assert parsed == rdata


def test_unknown_types_use_the_generic_form() -> None:
    """Types nothing here decodes are written as RFC 3597 `\\# length hex`."""
    record, _ = _through_twisted("HTTPS", "1 . alpn=h2")
    assert rdata_text(record).startswith("\\# ")


@given(
    st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=4),
)
def test_txt_strings_of_any_bytes_read_back(strings: list[bytes]) -> None:
    """TXT data with any bytes (quotes, backslashes, controls) reads back unchanged."""
    payload = tdns.Record_TXT(*strings)
    record = tdns.RRHeader(b"t.example", tdns.TXT, tdns.IN, 60, payload)
    parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, rdata_text(record))
    assert list(parsed.strings) == strings  # type: ignore[attr-defined]


@given(
    st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_*", min_size=1, max_size=20),
        min_size=1,
        max_size=4,
    )
)
def test_names_are_lower_case_without_trailing_dot(labels: list[str]) -> None:
    """questionName and answer names are lower case, without the trailing dot."""
    name = ".".join(labels).upper()
    record = written(recursive_event(name))
    assert record["question"]["questionName"] == name.lower()
    assert record["answers"][0]["name"] == name.lower()


def test_question_name_with_a_dot_inside_a_label_is_escaped() -> None:
    """A question for `a\\.b.example` (its first label holds a dot) is logged as zone files
    write it, `a\\.b.example`, not as the three-label `a.b.example`."""
    event = blocked_event("A\\.b.Example")
    assert written(event)["question"]["questionName"] == "a\\.b.example"


_ODD_NAME_CASES = [
    ("CNAME", "a\\.b.diff.test."),
    ("SOA", "m\\.n.diff.test. back\\\\slash.diff.test. 1 2 3 4 5"),
    ("MX", "10 with\\032space.diff.test."),
    ("SRV", "0 0 53 \\195\\169.diff.test."),
    ("RRSIG", "A 13 3 300 20300101000000 20200101000000 1 s\\.t.diff.test. AAAA"),
]


@pytest.mark.parametrize(("rdtype", "text"), _ODD_NAME_CASES)
def test_names_whose_labels_hold_dots_are_logged_with_their_labels(rdtype: str, text: str) -> None:
    """An upstream's record owned by `o\\.p.diff.test`, whose RDATA names hold a dot, a
    backslash, a space or octets from 0x80 inside a label, is logged as zone files write
    it: a DNS library reads the owner and the data back to the same labels."""
    owner = dns.name.from_text("o\\.p.diff.test")
    rrset = dns.rrset.from_text(owner, 300, "IN", rdtype, text)
    response = dns.message.make_response(dns.message.make_query("q.diff.test", rdtype))
    response.answer.append(rrset)
    record = parse_message(response.to_wire()).answers[0]
    shown = rdata_text(record)
    parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), shown)
    assert parsed == rrset[0]
    event = recursive_event("q.diff.test")
    event = attrs.evolve(event, answer=attrs.evolve(event.answer, answers=(record,)))
    assert dns.name.from_text(written(event)["answers"][0]["name"]) == owner


def _all_kinds() -> list[Any]:
    monitor = misp_decision(enforced=False)
    cached = recursive_event(kind=Kind.CACHED, rtt=None)
    failure = event_for(request(), Answer(tdns.ESERVER, kind=Kind.SERVER_FAILURE))
    return [
        blocked_event(),
        blocked_event("WWW.StemTopx.com", decision=misp_decision("stemtopx.com")),
        blocked_event("stemtopx.com", "TXT"),
        blocked_event("stemtopx.com", edns=False),
        recursive_event(),
        recursive_event(transport="tcp", rtt=0.1),
        recursive_event(decision=monitor),
        cached,
        attrs.evolve(cached, answer=attrs.evolve(cached.answer, age=100)),
        allowed_event(),
        refused_event(),
        failure,
    ]


def test_record_reads_as_the_mapping_of_its_line_and_knows_type_and_time() -> None:
    """Sinks can read a record as a mapping; type and time are there without parsing."""
    record = RecordEncoder().encode(blocked_event())
    assert record == json.loads(record.line)
    assert dict(record) == written(blocked_event())
    assert record["responseType"] == record.response_type == "Blocked"
    assert record.timestamp == "2025-11-26T10:10:30.567Z"


def _cached(name: str, count: int = 1, ttl: int = 300) -> QueryEvent:
    """A query answered from the cache as the server does it: the entry's records and its
    pre-encoded packet, as an `AnswerCache` holds them."""
    records = tuple(
        tdns.RRHeader(name.encode(), tdns.A, tdns.IN, ttl, tdns.Record_A(f"198.51.100.{i}"))
        for i in range(count)
    )
    req = request(name)
    cache = AnswerCache(1, Clock())
    key = (req.question_wire[:-4].lower(), tdns.A, tdns.IN, False, 0)
    cache.put(key, Answer(tdns.OK, answers=records))
    found = cache.lookup(key)
    assert found is not None and found[0].packet is not None
    return event_for(req, found[0])


def test_a_cached_answer_shows_the_ttls_of_each_age_it_is_served_at() -> None:
    """One cached entry served again and again, at various ages: each record shows the
    TTLs the client got that time."""
    encoder = RecordEncoder()
    cached = _cached("a.example")
    for age in (0, 10, 10, 250, 0, 400, 10):
        line = encoder.encode(attrs.evolve(cached, age=age)).line
        assert json.loads(line)["answers"][0]["recordTtl"] == max(0, 300 - age)


def test_answers_sharing_a_packet_show_their_own_records() -> None:
    """An answer whose records differ from the cached entry's, though it carries the same
    packet, shows its own records."""
    encoder = RecordEncoder()
    cached = _cached("a.example")
    encoder.encode(cached)
    other = tdns.RRHeader(b"a.example", tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.99"))
    changed = attrs.evolve(cached, answer=attrs.evolve(cached.answer, answers=(other,)))
    assert json.loads(encoder.encode(changed).line)["answers"][0]["recordData"] == "192.0.2.99"


def _memory_kept_by(export: Any) -> int:
    """The bytes allocated with the record encoder's code on the stack while `export()` ran
    and still held after its garbage was collected (what other threads of the test process allocate
    meanwhile, a thread pool left by an earlier test, is not counted)."""
    gc.collect()
    tracemalloc.start(8)
    try:
        before = tracemalloc.take_snapshot()
        export()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    only_encoder = [tracemalloc.Filter(True, record_module.__file__, all_frames=True)]
    growth = after.filter_traces(only_encoder).compare_to(
        before.filter_traces(only_encoder), "filename"
    )
    return sum(stat.size_diff for stat in growth)


def test_a_cached_answer_served_for_an_hour_keeps_one_json_text() -> None:
    """A 40-record answer served from the cache at every second of its hour does not
    leave a copy of its 5 kB of JSON behind for each second (that was 20 MB)."""
    encoder = RecordEncoder()
    cached = _cached("many.example", count=40, ttl=3600)
    encoder.encode(cached)

    def serve_for_an_hour() -> None:
        for age in range(1, 3600):
            line = encoder.encode(attrs.evolve(cached, age=age)).line
        assert json.loads(line)["answers"][0]["recordTtl"] == 1

    assert _memory_kept_by(serve_for_an_hour) < 1 << 20


def test_large_answers_in_the_json_memo_stay_within_its_budget() -> None:
    """Thousands of distinct large answers exported: the memo of their JSON keeps a few MB,
    not all of them (10 MB here)."""
    encoder = RecordEncoder()
    events = [_cached(f"n{i}.example", count=40, ttl=3600) for i in range(2000)]

    def export_all() -> None:
        for event in events:
            encoder.encode(event)

    assert _memory_kept_by(export_all) < 6 << 20


#: The documented keys (`misp_dns.export.record`, the README), in the order records list them.
_RECORD_KEYS = (
    "timestamp",
    "clientIp",
    "protocol",
    "question",
    "responseCode",
    "responseType",
    "answers",
    "edns",
    "responseRtt",
    "policy",
)
_QUESTION_KEYS = ["questionName", "questionType", "questionClass"]
_ANSWER_KEYS = ["name", "recordType", "recordClass", "recordTtl", "recordData", "dnssecStatus"]
_POLICY_KEYS = (
    "source",
    "domain",
    "ip",
    "trigger",
    "mispEventId",
    "mispEventUuid",
    "mispAttributeUuid",
    "mispEventInfo",
    "enforced",
)
_RESPONSE_TYPES = {
    "Blocked",
    "Allowed",
    "Recursive",
    "Cached",
    "Refused",
    "Dropped",
    "ServerFailure",
}


def _wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


_labels = st.lists(st.binary(min_size=1, max_size=63), max_size=3)
_records = st.lists(
    st.one_of(
        st.builds(tdns.Record_A, st.ip_addresses(v=4).map(str)),
        st.builds(
            lambda strings: tdns.Record_TXT(*strings),
            st.lists(st.binary(max_size=255), min_size=1, max_size=3),
        ),
        st.builds(tdns.Record_CNAME, _labels.map(lambda labels: b".".join(labels))),
        st.builds(tdns.UnknownRecord, st.binary(max_size=40)),
    ),
    max_size=4,
)


def _type_of(payload: Any) -> int:
    if isinstance(payload, tdns.UnknownRecord):
        return 65280
    return int(payload.TYPE)


_decisions = st.one_of(
    st.none(),
    st.builds(
        Decision,
        st.sampled_from(Action),
        st.text(),
        indicator=st.text(),
        enforced=st.booleans(),
        provenance=st.builds(Provenance, st.text(), st.text(), st.text(), st.text()),
        trigger=st.sampled_from(["qname", "cname", "ip"]),
    ),
)


@given(
    labels=_labels,
    qtype=st.integers(0, 65535),
    qclass=st.integers(0, 65535),
    payloads=_records,
    ttl=st.integers(0, 2**31 - 1),
    age=st.integers(0, 10**6),
    kind=st.sampled_from(Kind),
    rcode=st.integers(0, 4095),
    authentic=st.booleans(),
    ede=st.lists(st.tuples(st.integers(0, 65535), st.text()), max_size=3).map(tuple),
    edns=st.booleans(),
    rtt=st.one_of(st.none(), st.floats(0, 100)),
    decision=_decisions,
    client=st.one_of(st.sampled_from(["127.0.0.1", "::1"]), st.text()),
    transport=st.one_of(st.sampled_from(["udp", "tcp"]), st.text()),
    seconds=st.floats(0, 4102444800),
)
def test_any_record_is_one_valid_json_line_with_the_documented_keys(
    labels: list[bytes],
    qtype: int,
    qclass: int,
    payloads: list[Any],
    ttl: int,
    age: int,
    kind: Kind,
    rcode: int,
    authentic: bool,
    ede: tuple[tuple[int, str], ...],
    edns: bool,
    rtt: float | None,
    decision: Decision | None,
    client: str,
    transport: str,
    seconds: float,
) -> None:
    """Whatever the query, its answer and the decision, the record is one line of valid
    UTF-8 JSON holding the documented keys in the documented order, and the same line
    again when the same event is encoded a second time."""
    owner = b".".join(labels)
    records = tuple(
        tdns.RRHeader(owner, _type_of(payload), tdns.IN, ttl, payload) for payload in payloads
    )
    answer = Answer(rcode, records, kind=kind, authentic=authentic, ede=ede, rtt=rtt)
    answer = attrs.evolve(answer, decision=decision)
    question = _wire_name(labels) + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
    event = QueryEvent(seconds, client, transport, question, edns, answer, 100, age)
    encoder = RecordEncoder()
    record = encoder.encode(event)
    data = encode_records([record])
    assert data.count(b"\n") == 1 and data.endswith(b"\n")

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    parsed = json.loads(data.decode("utf-8"), parse_constant=no_constants)
    optional = {"responseRtt": kind is Kind.RECURSIVE and rtt is not None, "policy": decision}
    assert list(parsed) == [key for key in _RECORD_KEYS if optional.get(key, True)]
    assert parsed["responseType"] == record.response_type in _RESPONSE_TYPES
    assert parsed["timestamp"] == record.timestamp
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record.timestamp)
    assert list(parsed["question"]) == _QUESTION_KEYS
    assert [list(shown) for shown in parsed["answers"]] == [_ANSWER_KEYS] * len(records)
    assert [shown["recordTtl"] for shown in parsed["answers"]] == [max(0, ttl - age)] * len(records)
    assert [list(shown) for shown in parsed["edns"]] == [["errType", "message"]] * (
        len(ede) if edns else 0
    )
    if decision is not None:
        shown = list(parsed["policy"])
        assert shown[:3] == ["source", "ip" if decision.trigger == "ip" else "domain", "trigger"]
        assert shown == [key for key in _POLICY_KEYS if key in shown]
        assert ("enforced" in shown) is not decision.enforced
    assert encoder.encode(event).line == record.line


def test_memos_go_with_their_encoder() -> None:
    """What an encoder keeps (here the JSON of 500 large answers, MBs) is freed with it: no
    memo outlives the exporter that owns the encoder, none is shared between two."""
    events = [_cached(f"n{i}.example", count=40, ttl=3600) for i in range(500)]

    def export_with_an_encoder_of_its_own() -> None:
        encoder = RecordEncoder()
        for event in events:
            encoder.encode(event)

    assert _memory_kept_by(export_with_an_encoder_of_its_own) < 64 << 10


def test_json_line_is_compact_single_line() -> None:
    """Each record is one line of compact JSON, and NDJSON ends every line."""
    record = RecordEncoder().encode(blocked_event())
    line = record.line
    assert "\n" not in line and ", " not in line and '": ' not in line
    assert encode_records([record, record]) == (line + "\n" + line + "\n").encode()


def test_non_ascii_and_lone_surrogates_stay_valid_utf8_json() -> None:
    """MISP event info in any language, even broken, still gives valid UTF-8 JSON lines."""
    decision = misp_decision()
    for info in ("Кампания «фишинг» 🎣", "broken \udc80 text"):
        provenance = Provenance(event_id="1", event_info=info)
        odd = type(decision)(decision.action, decision.source, "x", provenance=provenance)
        data = encode_records([RecordEncoder().encode(recursive_event(decision=odd))])
        parsed = json.loads(data.decode("utf-8"))
        assert parsed["policy"]["mispEventInfo"] in (info, "broken \udc80 text")


def test_blocked_filter_keeps_blocks_and_monitor_mode_blocks() -> None:
    """include = "blocked" keeps blocked queries and would-be blocks in monitor mode."""
    assert is_blocking(blocked_event())
    assert is_blocking(recursive_event(decision=misp_decision(enforced=False)))
    assert not is_blocking(recursive_event())
    assert not is_blocking(allowed_event())
    assert not is_blocking(refused_event())


_CONTRIB = Path(__file__).parents[1] / "contrib" / "wazuh"


def _flat_keys(record: Any, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in record.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def test_wazuh_rules_name_only_fields_records_have() -> None:
    """Every field the shipped Wazuh rules match on exists in the records we write."""
    root = ElementTree.parse(_CONTRIB / "misp-dns_rules.xml").getroot()
    fields = {field.get("name") for field in root.iter("field")}
    fields |= {same.text for same in root.iter("same_field")}
    known: set[str] = set()
    for event in _all_kinds():
        known |= _flat_keys(written(event))
    assert fields and fields <= known, fields - known
    described = " ".join(rule.findtext("description") or "" for rule in root.iter("rule"))
    assert set(re.findall(r"\$\(([\w.]+)\)", described)) <= known


def test_wazuh_decoder_recognizes_jsonl_lines() -> None:
    """The decoder for JSONL lines read as plain logs matches the lines the sink writes."""
    text = (_CONTRIB / "misp-dns_decoders.xml").read_text()
    root = ElementTree.fromstring(f"<decoders>{text}</decoders>")
    (prematch,) = [d.findtext("prematch") for d in root if d.get("name") == "misp-dns-jsonl"]
    assert prematch is not None and prematch.startswith("^")
    pattern = r"\d".join(re.escape(part) for part in prematch[1:].split(r"\d"))
    for event in _all_kinds():
        assert re.match(pattern, RecordEncoder().encode(event).line)


def _txt_event(*sizes: int, seconds: float = 1764151830.567, client: str = "127.0.0.1") -> Any:
    """A recursive TXT answer (in monitor mode) of one record per size, each `size` bytes of
    binary data (most bytes show as \\DDD, so the record is about four times the data)."""
    data = bytes(range(256)) * 256
    records = tuple(
        tdns.RRHeader(
            b"big.example",
            tdns.TXT,
            tdns.IN,
            300,
            tdns.Record_TXT(*[data[i : i + 255] for i in range(0, size, 255)]),
        )
        for size in sizes
    )
    decision = misp_decision("big.example", enforced=False)
    answer = Answer(tdns.OK, records, kind=Kind.RECURSIVE, rtt=0.01, decision=decision)
    return event_for(request("big.example", "TXT"), answer, timestamp=seconds, client=client)


def test_a_record_over_the_cap_keeps_its_first_answers_and_says_it_was_cut() -> None:
    """A huge answer (here six TXT records of 16 KB of binary data, 340 kB of JSON, the shape
    an attacker serves to fill the sinks' queues) gives a record of at most MAX_RECORD_BYTES:
    still one valid JSON line with every key and value of the whole record, its `answers` the
    first answers that fit, each whole, and `"answersTruncated": true` right after them."""
    event = _txt_event(*[16_000] * 6)
    whole = json.loads(RecordEncoder(max_record_bytes=1 << 30).encode(event).line)
    line = RecordEncoder().encode(event).line
    assert len(line.encode()) <= MAX_RECORD_BYTES < 64 * 1024
    record = json.loads(line)
    assert list(record) == [*_RECORD_KEYS[:7], "answersTruncated", *_RECORD_KEYS[7:]]
    assert record["answersTruncated"] is True
    kept = record.pop("answers")
    assert 0 < len(kept) < 6 and kept == whole.pop("answers")[: len(kept)]
    del record["answersTruncated"]
    assert record == whole


def test_records_up_to_the_cap_are_left_byte_for_byte_as_they_were() -> None:
    """A record exactly at the cap is written unchanged, with no new key; one byte over, its
    answers are cut."""
    event = _txt_event(3_000, 3_000, 3_000)
    line = RecordEncoder(max_record_bytes=1 << 30).encode(event).line
    size = len(line.encode())
    assert RecordEncoder(max_record_bytes=size).encode(event).line == line
    cut = json.loads(RecordEncoder(max_record_bytes=size - 1).encode(event).line)
    assert cut["answersTruncated"] is True and len(cut["answers"]) == 2
    assert "answersTruncated" not in RecordEncoder().encode(_txt_event(3_000)).line


def test_one_answer_larger_than_the_cap_leaves_an_empty_list_marked_cut() -> None:
    """An answer that alone is over the cap is left out whole, never cut in the middle."""
    record = json.loads(RecordEncoder().encode(_txt_event(60_000)).line)
    assert record["answers"] == [] and record["answersTruncated"] is True
    assert record["question"]["questionName"] == "big.example"


@given(
    sizes=st.lists(st.integers(0, 4_000), min_size=1, max_size=8),
    cap=st.integers(200, 40_000),
    clients=st.lists(st.sampled_from(["10.0.0.1", "192.168.100.200", "2001:db8::1"]), min_size=1),
)
def test_cut_records_keep_the_longest_prefix_of_answers_that_fits(
    sizes: list[int], cap: int, clients: list[str]
) -> None:
    """Whatever the answers and the cap, and for the same answer served to clients whose
    records differ in length: a record fits the cap (unless even no answer would), keeps the
    longest prefix of the answers that fits, and is marked exactly when it was cut."""
    encoder = RecordEncoder(max_record_bytes=cap)
    whole_encoder = RecordEncoder(max_record_bytes=1 << 30)
    base = _txt_event(*sizes)
    for client in clients:
        event = attrs.evolve(base, client=client)
        whole = json.loads(whole_encoder.encode(event).line)
        line = encoder.encode(event).line
        record = json.loads(line)
        if "answersTruncated" not in record:
            assert record == whole and len(line.encode()) <= cap
            continue
        kept = record["answers"]
        assert kept == whole["answers"][: len(kept)] and len(kept) < len(whole["answers"])
        assert len(line.encode()) <= cap or kept == []
        longer = dict(record, answers=whole["answers"][: len(kept) + 1])
        assert len(json.dumps(longer, separators=(",", ":")).encode()) > cap


@given(st.text())
def test_json_strings_are_written_as_the_json_encoder_writes_them(text: str) -> None:
    """Names and record data are put into the line without the JSON encoder where they need
    no escape; any text, control characters, quotes, backslashes, non-ASCII and lone
    surrogates included, comes out exactly as the encoder writes it."""
    from misp_dns.export.record import _dumps, _json_string

    assert _json_string(text) == _dumps(text)


@given(st.binary(max_size=70))
def test_escaped_name_bytes_are_written_as_before(data: bytes) -> None:
    """The quick check for plain name bytes gives the same text as the byte-by-byte rule:
    printable ASCII as itself, `\\` and `"` backslashed, anything else as \\DDD."""
    from misp_dns.export.record import _PLAIN, _escaped

    expected = "".join(
        chr(b) if b in _PLAIN else ("\\" + chr(b) if b in (0x5C, 0x22) else f"\\{b:03d}")
        for b in data
    )
    assert _escaped(data) == expected
