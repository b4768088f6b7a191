"""The pre-encoded answer pieces (`misp_dns.dns.packet`): the OPT record built in one go."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
from hypothesis import given
from hypothesis import strategies as st

from misp_dns.dns.packet import assemble, empty_body, opt_record, read_plain_query
from misp_dns.dns.wire import EDNS_UDP_SIZE, encode_ede, encode_opt

_ede = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.text(max_size=300)), min_size=1, max_size=3
).map(tuple)


@given(dnssec_ok=st.booleans(), ede=_ede)
def test_opt_record_with_errors_is_the_generic_encoding(
    dnssec_ok: bool, ede: tuple[tuple[int, str], ...]
) -> None:
    """The OPT the answers carry is byte for byte what the generic `encode_opt` writes for
    the same DO bit and Extended DNS Errors, asked once or again (from the memo)."""
    expected = encode_opt(
        EDNS_UDP_SIZE,
        dnssec_ok=dnssec_ok,
        options=[encode_ede(code, text) for code, text in ede],
    )
    assert opt_record(dnssec_ok, ede) == expected
    assert opt_record(dnssec_ok, ede) == expected


def test_opt_record_errors_reach_a_client() -> None:
    """dnspython reads the EDE code, its text and the DO bit back from an answer's OPT."""
    query = dns.message.make_query("blocked.example", "A", use_edns=0, want_dnssec=True)
    plain = read_plain_query(query.to_wire())
    assert plain is not None
    opt = opt_record(True, ((15, "source=misp-feed;domain=blocked.example"),))
    wire = assemble(plain.ident, plain.flags, plain.question, empty_body(3), 0, opt)
    answer = dns.message.from_wire(wire)
    assert answer.ednsflags & dns.flags.DO
    (option,) = answer.options
    assert isinstance(option, dns.edns.EDEOption)
    assert (option.code, option.text) == (15, "source=misp-feed;domain=blocked.example")
