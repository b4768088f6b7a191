"""What fetching indicators can fail with; every message names the cause, never the API key.

The MISP REST client and the MISP feed reader raise these; the updater catches `MispError`,
keeps the last good snapshot and tries again later. The shared HTTP client raises the
`Misp...` kinds for them, since they are subclasses of its own `ResponseError` and
`UnavailableError`.
"""

from __future__ import annotations

from misp_dns.http import FetchError, ResponseError, UnavailableError

__all__ = ["MispAuthError", "MispError", "MispResponseError", "MispUnavailableError"]


class MispError(FetchError):
    """Fetching indicators failed; the message names the cause and never the API key."""


class MispAuthError(MispError):
    """MISP refused the API key (HTTP 401 or 403); retrying will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class MispResponseError(MispError, ResponseError):
    """MISP answered something unusable: not JSON, the wrong shape, too large, a redirect."""


class MispUnavailableError(MispError, UnavailableError):
    """MISP could not be reached or kept failing (connection, timeout, 5xx, 429) after retries."""
