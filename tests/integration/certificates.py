"""Throwaway TLS certificates for the MISP stand-ins: self-signed, or from a test authority.

`self_signed` writes a key and a self-signed certificate for one name (trusted by nobody);
`Authority.create` makes a certificate authority and writes its certificate (the file to
trust, e.g. through SSL_CERT_FILE); `Authority.issue` writes a key and a certificate it
signed for a name, current or a month out of date. A name is an IP address or a host name,
and goes in the subject alternative name as such. The key and certificate files are what
`misp_stand_in --tls-pem` reads: the PEM private key, then the PEM certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "self_signed"]

_Key = ec.EllipticCurvePrivateKey


def _alternative(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _certificate(
    name: str,
    key: _Key,
    days: tuple[int, int],
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
    issuer: tuple[x509.Name, _Key] | None = None,
) -> x509.Certificate:
    """A certificate for `name` and `key`, valid from `days[0]` to `days[1]` days from now,
    signed by `issuer` (its name and key), or by `key` itself."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def _write_pair(path: Path, key: _Key, certificate: x509.Certificate) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + certificate.public_bytes(serialization.Encoding.PEM)
    )
    return path


def self_signed(path: Path, name: str = "127.0.0.1") -> Path:
    """Write to `path` a key and a self-signed certificate for `name`, valid for a month."""
    key = ec.generate_private_key(ec.SECP256R1())
    alternative = x509.SubjectAlternativeName([_alternative(name)])
    return _write_pair(path, key, _certificate(name, key, (-1, 30), [(alternative, False)]))


@attrs.frozen
class Authority:
    """A certificate authority for one test: its key, its certificate, the file to trust."""

    key: _Key = attrs.field(repr=False)
    certificate: x509.Certificate
    trusted: Path

    @classmethod
    def create(cls, directory: Path) -> Authority:
        """A new authority, its certificate written to `directory/authority.pem`."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        extensions = [(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)]
        certificate = _certificate("misp-dns test authority", key, (-10, 30), extensions)
        trusted = directory / "authority.pem"
        trusted.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(key, certificate, trusted)

    def issue(self, directory: Path, name: str, *, expired: bool = False) -> Path:
        """A key and a server certificate for `name` signed by this authority, in one PEM
        file in `directory`; `expired` makes it a month out of date."""
        key = ec.generate_private_key(ec.SECP256R1())
        extensions = [
            (x509.SubjectAlternativeName([_alternative(name)]), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ]
        days = (-60, -30) if expired else (-1, 30)
        issuer = (self.certificate.subject, self.key)
        certificate = _certificate(name, key, days, extensions, issuer)
        return _write_pair(
            directory / f"{name}{'-expired' if expired else ''}.pem", key, certificate
        )
