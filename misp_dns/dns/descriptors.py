"""File descriptors: running out of them (EMFILE), and sizing TCP from the process's limit.

Every TCP connection and every question in flight to an upstream holds a descriptor. When
the process has used them all, `socket()` and `accept()` fail with EMFILE (ENFILE when the
whole system has): that is load, not a bug, so it is counted and logged once when it
starts, and once when it is over, never with a traceback per query (`DescriptorShortage`).
Twisted's TCP port keeps one descriptor in reserve to accept and close connections it has
no descriptor for; the listeners count those too.

`tcp_connection_cap` keeps the TCP listeners from taking the descriptors the upstream
sockets need: client connections get at most half of what is left after a reserve for the
listeners, the log files and the HTTP clients.
"""

from __future__ import annotations

import errno

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["DESCRIPTOR_ERRORS", "RESERVED_DESCRIPTORS", "DescriptorShortage", "tcp_connection_cap"]

#: The errno values that mean "no descriptor left" (for this process, for the system).
DESCRIPTOR_ERRORS = frozenset({errno.EMFILE, errno.ENFILE})

#: Descriptors kept for everything but client connections and upstream queries: the
#: listening sockets, the query log, syslog and HTTP sinks, MISP, the reserved EMFILE one.
RESERVED_DESCRIPTORS = 64


def tcp_connection_cap(configured: int, open_files_limit: int) -> int:
    """The most TCP client connections to allow under `open_files_limit` descriptors.

    Half of the descriptors beyond the reserve, so that as many remain for the sockets of
    the questions those connections (and the UDP clients) send upstream; never more than
    `configured`, never fewer than one. A negative limit (`resource.RLIM_INFINITY`) is
    no limit.
    """
    if open_files_limit < 0:
        return configured
    return max(1, min(configured, (open_files_limit - RESERVED_DESCRIPTORS) // 2))


class DescriptorShortage:
    """Counts operations that failed for want of a descriptor, and logs each episode once.

    `happened(what)` counts a failure (`what` is the operation, "socket" or "accept") and
    logs a warning if it starts an episode. `over()`, called where a descriptor was just
    obtained, ends the episode with one line, once `QUIET` seconds have passed without a
    failure: near the limit, descriptors come and go many times a second, and that is
    still one episode.
    """

    log = Logger()
    QUIET = 60.0

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.failures: dict[str, int] = {}
        self._episode = 0
        self._last = 0.0

    @property
    def ongoing(self) -> bool:
        """True from a failure until the episode is over."""
        return self._episode > 0

    def happened(self, what: str) -> None:
        """Count one `what` that failed with EMFILE or ENFILE."""
        self.failures[what] = self.failures.get(what, 0) + 1
        self._episode += 1
        self._last = self.clock.seconds()
        if self._episode == 1:
            self.log.warn(
                "out of file descriptors: {what}() failed; queries get SERVFAIL and new TCP"
                " connections are closed until descriptors are free again (raise the open"
                " files limit, LimitNOFILE= under systemd, or lower"
                " server.tcp_max_connections); logged again when it is over",
                what=what,
            )

    def over(self) -> None:
        """A descriptor was obtained: end the episode if it has been quiet long enough."""
        if self._episode and self.clock.seconds() - self._last >= self.QUIET:
            failed, self._episode = self._episode, 0
            self.log.info(
                "file descriptors available again after {failed} operations failed without one",
                failed=failed,
            )
