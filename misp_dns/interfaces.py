"""The seams of misp-dns: what a policy, an indicator source and an export sink promise.

Third-party packages implement these to plug into the server; `misp_dns.testing` holds
verified in-memory fakes of each.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IIndicatorSource", "IPolicy", "ISink"]


class IPolicy(Interface):
    """Decides about one query: block, allow, or no opinion (None, the next policy decides)."""

    name = Attribute("The policy's type name, as written in the config's `type`.")

    def decide(query):
        """Return a `Decision` or None for a `PolicyQuery`.

        Synchronous and free of side effects: it runs on every query, on the reactor thread.
        """


class IIndicatorSource(Interface):
    """Fetches the current set of indicators from somewhere (MISP REST, a MISP feed, ...)."""

    def fetch():
        """Return a Deferred firing with the list of `RawIndicator`s, or failing on error."""

    def fetch_pages(consume):
        """Like `fetch`, handing the indicators to `consume` a batch at a time.

        `consume(indicators)` may return a Deferred; the source waits for it before the next
        batch. The returned Deferred fires with None when all is fetched, or fails.
        """


class ISink(Interface):
    """Receives finished query records for export (a file, syslog, an HTTP collector)."""

    def start():
        """Open what the sink needs; return None or a Deferred."""

    def write(records):
        """Take a batch of records (dicts); must not block or raise."""

    def stop():
        """Flush and close; return None or a Deferred."""
