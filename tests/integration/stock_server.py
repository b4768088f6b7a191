"""Twisted's stock DNS server, configured from a misp-dns config file, for comparison only.

    python tests/integration/stock_server.py CONFIG.toml

It forwards to `[server].upstreams` through `twisted.names.client.Resolver` behind an
unbounded `CacheResolver`, serving `DNSServerFactory` over UDP and TCP on each `listen`
address. The end-to-end suite runs against it with `MISP_DNS_E2E_STOCK=1`: the tests that
pin the defects of the stock Twisted Names server then fail, which shows they can. The
benchmark uses it as the "stock Twisted" reference.
"""

from __future__ import annotations

import sys
import tomllib

from twisted.internet import reactor
from twisted.names import cache, client, dns, server
from twisted.python import log


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(path: str) -> None:
    """Serve forever with the stock factory."""
    with open(path, "rb") as file:
        settings = tomllib.load(file)["server"]
    log.startLogging(sys.stdout)
    upstreams = [_split(text) for text in settings["upstreams"]]
    factory = server.DNSServerFactory(
        caches=[cache.CacheResolver()], clients=[client.Resolver(servers=upstreams)]
    )
    for text in settings["listen"]:
        host, port = _split(text)
        reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=host)  # type: ignore[attr-defined]
        reactor.listenTCP(port, factory, interface=host)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[-1])
