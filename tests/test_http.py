"""The shared HTTP client (misp_dns.http): what it logs while it works.

Redirects, body caps and retries are pinned through their users (tests/test_feed.py,
tests/test_misp_client.py); this module pins the client itself over a real loopback server.
"""

from __future__ import annotations

import pytest_twisted
from twisted.logger import capturedLogs, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from misp_dns.http import make_http_client


class _Closing(Resource):
    """Answers every GET with "ok" and closes the connection, as many servers do."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Connection", b"close")
        return b"ok"


@pytest_twisted.ensureDeferred
async def test_requests_log_no_factory_lines() -> None:
    """Three requests, each on a new connection that the server closes, log no
    "Starting factory" or "Stopping factory" line (Twisted's pool logs two per request)."""
    from twisted.internet import reactor

    site = Site(_Closing())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/"
    http = make_http_client(reactor)
    try:
        with capturedLogs() as events:
            for _ in range(3):
                response = await http.get(url)
                assert await response.content() == b"ok"
    finally:
        await port.stopListening()
    noise = [formatEvent(e) for e in events if "factory" in formatEvent(e).lower()]
    assert noise == []
