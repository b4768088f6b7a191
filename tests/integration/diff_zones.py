"""The zones the differential test serves from NSD: many record shapes, one zone signed.

- `diff.test.` (unsigned) holds one name per shape a forwarder must relay unchanged: CNAME
  and DNAME chains (to names inside the zone and in another zone NSD serves, and a CNAME
  into a zone nobody serves), long, multi-string and escaped TXT, owner names with an escaped dot
  (`a\\.b`) and an escaped space (`\\032`), a CNAME to the dotted name, wildcards (with an
  answer and with NODATA), a delegation with in-zone glue and one without, an empty
  non-terminal, SRV/MX/NAPTR/CAA/SSHFP/TLSA/HINFO, an unknown type written in RFC 3597
  `\\#` syntax, and RRsets over 1232 bytes (A, AAAA, TXT) or between 512 and 1232.
- `wide.test.` (unsigned) has twelve name servers with long names and glue, so its
  authority and additional sections are large: a positive answer that fits in 512 bytes
  only without them, and one that fits in 1232 only without the glue.
- `elsewhere.example.` is where names of `diff.test.` point out of their zone to (a CNAME,
  a DNAME): an authoritative server stops at the zone's edge, a resolver follows them.
- `signed.test.` is signed at test time (`ldns-keygen`, `ldns-signzone`, ECDSA P-256,
  NSEC) with fresh keys: answers, a wildcard, a DNAME, NODATA, NXDOMAIN, a secure and an
  insecure delegation, an RRset over 1232 bytes with its RRSIG, and `bogus.signed.test.`,
  whose A record is changed after signing so a validator finds it bogus.

`build_zones(directory, keygen, signzone)` writes the zone files there and returns them with
the key that anchors `signed.test.` for a validator.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import attrs

__all__ = [
    "DIFF",
    "ELSEWHERE",
    "SIGNED",
    "WIDE",
    "BuiltZones",
    "build_zones",
]

DIFF = "diff.test."
ELSEWHERE = "elsewhere.example."
WIDE = "wide.test."
SIGNED = "signed.test."
#: The A record of bogus.signed.test. as signed, and as served once changed.
_SIGNED_BOGUS_A = "192.0.2.98"
_BOGUS_A = "192.0.2.99"
_SOA_TIMERS = "3600 600 86400 300"


def _diff_zone() -> str:
    lines = [
        f"$ORIGIN {DIFF}",
        "$TTL 3600",
        f"@ SOA ns1 hostmaster 2024060101 {_SOA_TIMERS}",
        "@ NS ns1",
        "@ NS ns2",
        "ns1 A 192.0.2.53",
        "ns1 AAAA 2001:db8::53",
        "ns2 A 192.0.2.54",
        "www A 192.0.2.1",
        "www AAAA 2001:db8::1",
        "chain1 CNAME chain2",
        "chain2 CNAME www",
        "out-alias CNAME www.elsewhere.example.",
        "away CNAME host.nowhere.example.",
        "dname DNAME target.diff.test.",
        "host.target A 192.0.2.7",
        "dname-out DNAME elsewhere.example.",
        "nodata A 192.0.2.2",
        "deep.ent A 192.0.2.3",  # ent.diff.test. is an empty non-terminal
        f'txt-long TXT "{"L" * 255}"',
        'txt-multi TXT "one" "two words" "quote\\"d" "back\\\\slash" "" "semi;colon"',
        'txt-multi TXT "\\000nul\\255high"',
        'txt-empty TXT ""',
        "a\\.b A 192.0.2.10",
        'a\\.b TXT "a label holding a dot"',
        "space\\032label A 192.0.2.11",
        "to-dotted CNAME a\\.b",
        "*.wild A 192.0.2.20",
        '*.wild TXT "wildcard"',
        "sub NS ns.sub",
        "sub NS ns2.sub",
        "ns.sub A 192.0.2.30",
        "ns.sub AAAA 2001:db8::30",
        "ns2.sub A 192.0.2.31",
        "outsub NS ns.elsewhere.example.",
        "_sip._tcp SRV 10 60 5060 www",
        "_sip._tcp SRV 20 0 5061 www.elsewhere.example.",
        "mx MX 10 mail",
        "mx MX 20 mail.elsewhere.example.",
        "mail A 192.0.2.25",
        'naptr NAPTR 100 10 "U" "E2U+sip" "!^.*$!sip:info@example.com!" .',
        'naptr NAPTR 102 10 "S" "SIP+D2U" "" _sip._tcp',
        'caa CAA 0 issue "ca.example.net"',
        'caa CAA 128 tbs "Unknown"',
        "sshfp SSHFP 4 2 " + "0123456789abcdef" * 4,
        "_443._tcp.tlsa TLSA 3 1 1 " + "fedcba9876543210" * 4,
        'hinfo HINFO "PDP-11" "UNIX"',
        "unknown TYPE65280 \\# 4 0a000001",
        "unknown TYPE65280 \\# 0",
    ]
    lines += [f"many A 198.51.100.{i}" for i in range(1, 101)]
    lines += [f"many6 AAAA 2001:db8:6::{i:x}" for i in range(1, 61)]
    lines += [f"mid A 203.0.113.{i}" for i in range(1, 41)]
    lines += [f'bigtxt TXT "{i:02d}{"x" * 198}"' for i in range(8)]
    lines += ["big-alias CNAME many"]
    return "\n".join(lines) + "\n"


def _elsewhere_zone() -> str:
    lines = [
        f"$ORIGIN {ELSEWHERE}",
        "$TTL 1800",
        f"@ SOA ns.diff.test. hostmaster.diff.test. 2024060101 {_SOA_TIMERS}",
        "@ NS ns1.diff.test.",
        "www A 192.0.2.80",
        "host A 192.0.2.81",
    ]
    return "\n".join(lines) + "\n"


def _wide_zone() -> str:
    servers = [f"ns{i:02d}.a-rather-long-name-server-label" for i in range(12)]
    lines = [
        f"$ORIGIN {WIDE}",
        "$TTL 3600",
        f"@ SOA {servers[0]} hostmaster 2024060101 {_SOA_TIMERS}",
    ]
    lines += [f"@ NS {server}" for server in servers]
    for i, server in enumerate(servers):
        lines += [f"{server} A 192.0.2.{100 + i}", f"{server} AAAA 2001:db8:100::{i:x}"]
    # 400 bytes of answer: fits in 512 alone, not with the authority section.
    lines += [f'fits512 TXT "{"f" * 200}" "{"g" * 190}"']
    # About 1000 bytes of answer: fits in 1232 with the NS records, not with their glue.
    lines += [f"fits1232 A 198.51.100.{i}" for i in range(1, 61)]
    return "\n".join(lines) + "\n"


def _signed_zone() -> str:
    lines = [
        f"$ORIGIN {SIGNED}",
        "$TTL 3600",
        f"@ SOA ns hostmaster 2024060101 {_SOA_TIMERS}",
        "@ NS ns",
        "ns A 192.0.2.53",
        "www A 192.0.2.1",
        "www AAAA 2001:db8::1",
        "alias CNAME www",
        '*.wild TXT "signed wildcard"',
        "dname DNAME target.signed.test.",
        "host.target A 192.0.2.7",
        "nodata A 192.0.2.2",
        'txt TXT "signed" "text"',
        f"bogus A {_SIGNED_BOGUS_A}",
        "secure NS ns.secure",
        "ns.secure A 192.0.2.40",
        # Any digest will do: nothing below the cut is ever asked for.
        "secure DS 12345 13 2 " + "ab" * 32,
        "insecure NS ns.insecure",
        "ns.insecure A 192.0.2.41",
    ]
    lines += [f"many A 198.51.100.{i}" for i in range(1, 81)]
    return "\n".join(lines) + "\n"


@attrs.frozen
class BuiltZones:
    """Zone files by origin, and the DNSKEY file that anchors `signed.test.`."""

    files: dict[str, Path]
    trust_anchor: Path


def _keygen(keygen: str, directory: Path, ksk: bool) -> str:
    flags = ["-k"] if ksk else []
    done = subprocess.run(
        [keygen, "-a", "ECDSAP256SHA256", *flags, SIGNED],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip()


def _sign(directory: Path, keygen: str, signzone: str) -> tuple[Path, Path]:
    """Sign signed.test. with a new KSK and ZSK; return the signed file and the KSK file."""
    unsigned = directory / "signed.test.zone"
    unsigned.write_text(_signed_zone())
    ksk = _keygen(keygen, directory, ksk=True)
    zsk = _keygen(keygen, directory, ksk=False)
    signed = directory / "signed.test.zone.signed"
    subprocess.run(
        [signzone, "-o", SIGNED, "-f", str(signed), str(unsigned), zsk, ksk],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    _tamper(signed)
    return signed, directory / f"{ksk}.key"


def _tamper(signed: Path) -> None:
    """Change bogus.signed.test.'s address after signing, keeping its old RRSIG."""
    lines = signed.read_text().splitlines()
    changed = 0
    for index, line in enumerate(lines):
        fields = line.split()
        if fields[:1] == [f"bogus.{SIGNED}"] and fields[3:4] == ["A"]:
            lines[index] = line.replace(_SIGNED_BOGUS_A, _BOGUS_A)
            changed += 1
    if changed != 1:
        raise RuntimeError(f"expected one A record of bogus.{SIGNED} in {signed}")
    signed.write_text("\n".join(lines) + "\n")


def build_zones(directory: Path, keygen: str, signzone: str) -> BuiltZones:
    """Write the four zones into `directory` (signing signed.test.); return them."""
    diff = directory / "diff.test.zone"
    diff.write_text(_diff_zone())
    wide = directory / "wide.test.zone"
    wide.write_text(_wide_zone())
    elsewhere = directory / "elsewhere.example.zone"
    elsewhere.write_text(_elsewhere_zone())
    signed, anchor = _sign(directory, keygen, signzone)
    files = {DIFF: diff, WIDE: wide, SIGNED: signed, ELSEWHERE: elsewhere}
    return BuiltZones(files, anchor)
