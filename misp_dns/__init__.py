"""misp-dns: a protective DNS resolver that enforces the domain indicators curated in MISP."""

__version__ = "0.1.0"
