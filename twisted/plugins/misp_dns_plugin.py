"""Registers `twistd misp-dns`; the service itself is built lazily in misp_dns.tap."""

from twisted.application.service import ServiceMaker

misp_dns = ServiceMaker(
    "misp-dns",
    "misp_dns.tap",
    "A protective DNS resolver that blocks the domains curated in MISP.",
    "misp-dns",
)
