"""`domain-list`: an example misp-dns indicator source, the domains listed in a text file.

The file holds one domain per line; everything from a `#` to the end of the line is a
comment, and blank lines and surrounding white space are ignored. Each domain blocks itself
and every name below it, like a MISP `domain` attribute:

    # phishing kit seen 2025-11
    stemtopx.com
    evil.example      # and everything under it

misp-dns turns the source into a blocking policy of the same name, so the table takes the
options of every indicator-fed policy (`update_interval`, `enable_blocking`,
`blocking_answer_ttl`, ...; see `misp_dns.interfaces.BlockingOptions`) beside its own:

    path  the file to read (required; it must exist when the config is loaded)

Example:
    [[policy]]
    type = "domain-list"
    path = "/etc/misp-dns/blocked-domains.txt"
    update_interval = "5m"

The file is read again every `update_interval`, in the reactor's thread pool (never on the
thread that answers queries). A file that has gone missing or cannot be read fails that
refresh: the policy keeps blocking what the last good read listed and tries again sooner.
Lines carry no dates, so `max_ioc_age` never drops any of them. Blocked answers report
`source=domain-list;domain=<listed domain>`.

It is registered through the entry point group `misp_dns.sources` in pyproject.toml; once the
package is installed beside misp-dns, `type = "domain-list"` works in the config.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from misp_dns.interfaces import (
    BlockingOptions,
    BuildContext,
    ConfigError,
    FieldError,
    IIndicatorSource,
    PluginType,
    RawIndicator,
)

__all__ = [
    "DomainListOptions",
    "DomainListSource",
    "parse_domain_list",
    "plugin",
    "read_domain_list",
]

SOURCE = "domain-list"
#: How many indicators `fetch_pages` hands over at a time.
PAGE_SIZE = 10_000


def _not_empty(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise FieldError(attribute.name, "must name a file")


@attrs.frozen(kw_only=True)
class DomainListOptions(BlockingOptions):
    """The options of a `[[policy]] type = "domain-list"` table: `path` and the blocking ones."""

    path: str = attrs.field(validator=_not_empty)


def parse_domain_list(lines: Iterable[str]) -> Iterator[str]:
    """The domains of a list's lines: comments (`#` to the end), blanks and spaces removed."""
    for line in lines:
        domain = line.partition("#")[0].strip()
        if domain:
            yield domain


def read_domain_list(path: str) -> list[RawIndicator]:
    """Every domain listed in the UTF-8 file `path`, as `domain` indicators (blocking I/O)."""
    with open(path, encoding="utf-8") as lines:
        return [RawIndicator(domain, "domain") for domain in parse_domain_list(lines)]


@implementer(IIndicatorSource)
@attrs.frozen
class DomainListSource:
    """Reads the domains of `path` in `reactor`'s thread pool at every fetch."""

    path: str
    reactor: IReactorThreads
    page_size: int = PAGE_SIZE

    def fetch(self) -> Deferred[list[RawIndicator]]:
        """Fire with the file's domains, or fail with the OSError (or UnicodeDecodeError)."""
        pool = self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, read_domain_list, self.path)

    def fetch_pages(
        self, consume: Callable[[list[RawIndicator]], Deferred[Any] | None]
    ) -> Deferred[None]:
        """Read the file, then hand its domains to `consume` `page_size` at a time."""

        async def pages() -> None:
            indicators = await self.fetch()
            for start in range(0, len(indicators), self.page_size):
                consumed = consume(indicators[start : start + self.page_size])
                if isinstance(consumed, Deferred):
                    await consumed

        return Deferred.fromCoroutine(pages())


def _check_readable(path: str) -> None:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError([f"path {path!r}: not a regular file"])
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError([f"path {path!r}: cannot read: {exc.strerror or exc}"]) from None


def _build(options: DomainListOptions, context: BuildContext) -> DomainListSource:
    _check_readable(options.path)
    return DomainListSource(options.path, context.reactor)


plugin = PluginType(SOURCE, DomainListOptions, _build)
