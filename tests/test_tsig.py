"""TSIG (RFC 8945): misp-dns signs what dnspython verifies, and verifies what dnspython signs.

dnspython is the independent implementation here: every signature misp-dns makes is
checked by `dns.message.from_wire` with a keyring, and every signature dnspython makes is
checked by `misp_dns.tsig.verify`, for single messages, responses (MAC over the request's
MAC) and multi-message TCP transfers (RFC 8945 section 5.3.1).
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import pytest

from misp_dns.config import parse_config
from misp_dns.registry import Registry
from misp_dns.tsig import (
    BADKEY,
    BADSIG,
    BADTIME,
    FORMERR,
    NOTAUTH,
    StreamSigner,
    StreamVerifier,
    TsigError,
    TsigKey,
    error_response,
    find_tsig,
    load_keys,
    sign,
    verify,
)
from misp_dns.values import ConfigError, TsigKeyConfig

SECRET = base64.b64decode("Zm9vYmFyYmF6cXV1eGZvb2JhcmJhenF1dXhmb29iYXI=")
KEY = TsigKey("fleet", "hmac-sha256", SECRET)
ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
}


def dnspython_key(key: TsigKey = KEY) -> dns.tsig.Key:
    return dns.tsig.Key(key.name, base64.b64encode(key.secret).decode(), ALGORITHMS[key.algorithm])


def soa_query() -> dns.message.Message:
    return dns.message.make_query("rpz.misp-dns.example", "SOA")


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_dnspython_signed_query_verifies(algorithm: str) -> None:
    """A query dnspython signs with any supported algorithm verifies, naming the key."""
    key = TsigKey("Fleet.", algorithm, SECRET)
    query = soa_query()
    query.use_tsig(dnspython_key(key))
    checked = verify(query.to_wire(), {key.name: key}, time.time())
    assert checked.key == key
    assert checked.mac == query.mac
    assert dns.message.from_wire(checked.unsigned).question == query.question


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_signed_query_verifies_in_dnspython(algorithm: str) -> None:
    """A query misp-dns signs is accepted by dnspython holding the same key."""
    key = TsigKey("fleet", algorithm, SECRET)
    signed = sign(soa_query().to_wire(), key, time.time())
    parsed = dns.message.from_wire(signed.wire, keyring=dnspython_key(key))
    assert parsed.had_tsig
    assert parsed.mac == signed.mac


def test_signed_response_verifies_in_dnspython() -> None:
    """A response signed over the request's MAC verifies in dnspython as that response."""
    query = soa_query()
    query.use_tsig(dnspython_key())
    request = verify(query.to_wire(), {"fleet": KEY}, time.time())
    response = dns.message.make_response(dns.message.from_wire(request.unsigned))
    signed = sign(response.to_wire(), KEY, time.time(), request_mac=request.mac)
    parsed = dns.message.from_wire(signed.wire, keyring=dnspython_key(), request_mac=query.mac)
    assert parsed.had_tsig


def test_dnspython_signed_response_verifies() -> None:
    """dnspython's response to a misp-dns-signed query verifies over the query's MAC, and
    not over another MAC."""
    signed_query = sign(soa_query().to_wire(), KEY, time.time())
    query = dns.message.from_wire(signed_query.wire, keyring=dnspython_key())
    response = dns.message.make_response(query)
    wire = response.to_wire()
    assert verify(wire, {"fleet": KEY}, time.time(), request_mac=signed_query.mac).key == KEY
    with pytest.raises(TsigError) as raised:
        verify(wire, {"fleet": KEY}, time.time(), request_mac=b"\0" * 32)
    assert raised.value.error == BADSIG


def test_wrong_secret_is_badsig_and_unknown_key_is_badkey() -> None:
    """A signature made with another secret is BADSIG; a key name the server does not hold,
    or the right name with another algorithm, is BADKEY; both answer NOTAUTH."""
    wire = sign(soa_query().to_wire(), TsigKey("fleet", "hmac-sha256", b"other"), time.time()).wire
    with pytest.raises(TsigError) as raised:
        verify(wire, {"fleet": KEY}, time.time())
    assert (raised.value.rcode, raised.value.error, raised.value.key_name) == (
        NOTAUTH,
        BADSIG,
        "fleet",
    )
    stranger = sign(soa_query().to_wire(), TsigKey("stranger", "hmac-sha256", SECRET), 0).wire
    with pytest.raises(TsigError) as raised:
        verify(stranger, {"fleet": KEY}, 0)
    assert (raised.value.error, raised.value.key_name) == (BADKEY, "stranger")
    other_algorithm = sign(soa_query().to_wire(), TsigKey("fleet", "hmac-sha512", SECRET), 0)
    with pytest.raises(TsigError) as raised:
        verify(other_algorithm.wire, {"fleet": KEY}, 0)
    assert raised.value.error == BADKEY


def test_tampered_message_is_badsig() -> None:
    """Changing one byte of a signed message (here the question) breaks its signature."""
    wire = bytearray(sign(soa_query().to_wire(), KEY, 1000).wire)
    wire[14] ^= 0x20
    with pytest.raises(TsigError) as raised:
        verify(bytes(wire), {"fleet": KEY}, 1000)
    assert raised.value.error == BADSIG


def test_time_outside_fudge_is_badtime() -> None:
    """A message signed more than the fudge (300 s) away from now is BADTIME; within it, fine."""
    wire = sign(soa_query().to_wire(), KEY, 10_000).wire
    assert verify(wire, {"fleet": KEY}, 10_300).key == KEY
    with pytest.raises(TsigError) as raised:
        verify(wire, {"fleet": KEY}, 10_301)
    assert raised.value.error == BADTIME
    with pytest.raises(TsigError):
        verify(wire, {"fleet": KEY}, 9_699)


def test_unsigned_message_and_misplaced_tsig_are_refused() -> None:
    """No TSIG at all fails verification; a TSIG record that is not the last record is
    FORMERR (RFC 8945 section 5.1)."""
    with pytest.raises(TsigError) as raised:
        verify(soa_query().to_wire(), {"fleet": KEY}, 0)
    assert raised.value.rcode == NOTAUTH
    query = soa_query()
    query.additional.append(dns.rrset.from_text("x.example.", 60, "IN", "A", "192.0.2.1"))
    signed = sign(soa_query().to_wire(), KEY, 0)
    start, _record = find_tsig(signed.wire) or (0, None)
    tsig_rr = signed.wire[start:]
    plain = query.to_wire()
    arcount = int.from_bytes(plain[10:12], "big")
    moved = plain[:10] + (arcount + 1).to_bytes(2, "big") + plain[12:]
    # The TSIG record goes before the A record: header counts, question, TSIG, then A.
    question_end = 12 + len(b"\x03rpz\x08misp-dns\x07example\x00") + 4
    moved = moved[:question_end] + tsig_rr + moved[question_end:]
    with pytest.raises(TsigError) as raised:
        verify(moved, {"fleet": KEY}, 0)
    assert raised.value.rcode == FORMERR


def test_error_response_reads_as_badkey_in_dnspython() -> None:
    """The NOTAUTH answer to an unknown key carries an unsigned TSIG with error BADKEY."""
    query = soa_query()
    query.use_tsig(dns.tsig.Key("stranger", base64.b64encode(SECRET).decode()))
    with pytest.raises(TsigError) as raised:
        verify(query.to_wire(), {"fleet": KEY}, time.time())
    assert raised.value.record is not None
    response = dns.message.make_response(soa_query())
    response.set_rcode(dns.rcode.NOTAUTH)
    wire = error_response(response.to_wire(), raised.value.record, BADKEY, 0)
    with pytest.raises(dns.tsig.PeerBadKey):
        dns.message.from_wire(wire, keyring=dnspython_key(), request_mac=query.mac)


def _transfer_messages(count: int) -> list[bytes]:
    messages = []
    for index in range(count):
        message = dns.message.make_response(soa_query())
        message.answer.append(
            dns.rrset.from_text(f"n{index}.rpz.misp-dns.example.", 60, "IN", "CNAME", ".")
        )
        messages.append(message.to_wire())
    return messages


def test_stream_signed_transfer_verifies_in_dnspython() -> None:
    """A transfer of several messages, each signed over the previous MAC (section 5.3.1),
    verifies message by message in dnspython, including one sent unsigned in between."""
    query = soa_query()
    query.use_tsig(dnspython_key())
    request = verify(query.to_wire(), {"fleet": KEY}, time.time())
    signer = StreamSigner(KEY, request.mac)
    first, second, third, fourth = _transfer_messages(4)
    stream = [
        signer.sign(first, time.time()),
        signer.sign(second, time.time()),
        signer.pass_unsigned(third),
        signer.sign(fourth, time.time()),
    ]
    ctx = None
    signed = []
    for index, wire in enumerate(stream):
        parsed = dns.message.from_wire(
            wire,
            keyring=dnspython_key(),
            request_mac=query.mac if index == 0 else b"",
            tsig_ctx=ctx,
            multi=True,
        )
        ctx = parsed.tsig_ctx
        signed.append(parsed.had_tsig)
    assert signed == [True, True, False, True]


def test_dnspython_stream_verifies_and_an_altered_message_does_not() -> None:
    """A multi-message response dnspython signs passes `StreamVerifier`; altering a later
    message fails it (its MAC chains to the previous one); a stream ending unsigned fails."""
    signed_query = sign(soa_query().to_wire(), KEY, time.time())
    query = dns.message.from_wire(signed_query.wire, keyring=dnspython_key())
    stream = []
    ctx = None
    for index in range(3):
        response = dns.message.make_response(query)
        response.answer.append(
            dns.rrset.from_text(f"n{index}.rpz.misp-dns.example.", 60, "IN", "CNAME", ".")
        )
        stream.append(response.to_wire(multi=True, tsig_ctx=ctx))
        ctx = response.tsig_ctx
    verifier = StreamVerifier(KEY, signed_query.mac)
    for wire in stream:
        verifier.verify(wire, time.time())
    verifier.finish()

    altered = bytearray(stream[2])
    altered[-60] ^= 0x01
    verifier = StreamVerifier(KEY, signed_query.mac)
    verifier.verify(stream[0], time.time())
    verifier.verify(stream[1], time.time())
    with pytest.raises(TsigError):
        verifier.verify(bytes(altered), time.time())

    unsigned_end = StreamVerifier(KEY, signed_query.mac)
    unsigned_end.verify(stream[0], time.time())
    unsigned_end.verify(_transfer_messages(1)[0], time.time())
    with pytest.raises(TsigError):
        unsigned_end.finish()


def test_keys_load_from_bare_secret_and_bind_statement(tmp_path: Path) -> None:
    """A file holding the base64 secret, or the whole statement tsig-keygen prints, loads."""
    bare = tmp_path / "bare.key"
    bare.write_text(base64.b64encode(SECRET).decode() + "\n")
    statement = tmp_path / "bind.key"
    statement.write_text(
        'key "other" {\n\talgorithm hmac-sha512;\n\tsecret "'
        + base64.b64encode(b"x" * 64).decode()
        + '";\n};\n'
    )
    keys = load_keys(
        [
            TsigKeyConfig("Fleet", str(bare)),
            TsigKeyConfig("other.", str(statement), "hmac-sha512"),
        ]
    )
    assert keys["fleet"] == KEY
    assert keys["other"] == TsigKey("other", "hmac-sha512", b"x" * 64)
    assert str(SECRET) not in repr(keys)


def test_bad_key_files_name_the_file_never_the_content(tmp_path: Path) -> None:
    """A missing file and a file that is no base64 secret are config errors naming the
    table and the file; what the file holds never appears."""
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not-base64 s3cr3t!!\n")
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigError) as raised:
        load_keys([TsigKeyConfig("a", str(missing)), TsigKeyConfig("b", str(garbage))])
    assert raised.value.problems == [
        f"tsig_key[0].secret_file: cannot read {missing}: No such file or directory",
        f"tsig_key[1].secret_file: {garbage} holds no base64 secret"
        " (expected what tsig-keygen prints)",
    ]
    assert "s3cr3t" not in str(raised.value)


def test_tsig_key_tables_in_the_config() -> None:
    """`[[tsig_key]]` tables are read with their defaults; a bad name, an unknown algorithm,
    a missing secret_file and a name used twice are each one line naming the table."""
    config = parse_config(
        {"tsig_key": [{"name": "fleet", "secret_file": "/etc/misp-dns/fleet.key"}]}, Registry()
    )
    assert config.tsig_key == (TsigKeyConfig("fleet", "/etc/misp-dns/fleet.key", "hmac-sha256"),)
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {
                "tsig_key": [
                    {"name": "fleet", "secret_file": "f"},
                    {"name": "y", "secret_file": "f", "algorithm": "hmac-md5"},
                    {"name": "bad name", "secret_file": "f"},
                    {"name": "x"},
                    {"name": "FLEET.", "secret_file": "g"},
                ]
            },
            Registry(),
        )
    assert raised.value.problems == [
        "tsig_key[1].algorithm: expected one of hmac-sha256, hmac-sha384, hmac-sha512,"
        " hmac-sha224, hmac-sha1, got 'hmac-md5'",
        "tsig_key[2].name: expected a key name such as fleet, got 'bad name'",
        "tsig_key[3].secret_file: required key is missing",
        "tsig_key[4].name: 'FLEET.' is already a key's name",
    ]


def test_dnspython_reads_names_the_same_way() -> None:
    """The key name is compared case-insensitively and without its final dot, as on the wire."""
    query = soa_query()
    query.use_tsig(dns.tsig.Key(dns.name.from_text("FLEET."), base64.b64encode(SECRET).decode()))
    assert verify(query.to_wire(), {"fleet": KEY}, time.time()).key.name == "fleet"
    assert dns.rdatatype.TSIG == 250
