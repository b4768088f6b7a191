"""`tld-block`: an example misp-dns policy that blocks whole top-level domains.

Some TLDs are mostly abuse in practice (`.zip` and `.mov` look like file names in phishing
mail). This policy blocks every name under the listed TLDs, answering like the MISP policy
does (NXDOMAIN with an SOA, a TXT report, EDE 15), with the report `source=tld-block;tld=<tld>`.

Config keys:
    tlds  array of top-level domains to block (required, without dots)
    ttl   TTL of the blocked answer, 30..86400, default 300

Example:
    [[policy]]
    type = "tld-block"
    tlds = ["zip", "mov"]

It is registered through the entry point group `misp_dns.policies` in pyproject.toml; once the
package is installed beside misp-dns, `type = "tld-block"` works in the config.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from zope.interface import implementer

from misp_dns.interfaces import (
    Action,
    BuildContext,
    Decision,
    FieldError,
    IPolicy,
    PluginType,
    PolicyQuery,
    between,
)

__all__ = ["TldBlockOptions", "TldBlockPolicy", "plugin"]

SOURCE = "tld-block"


def _tld_names(
    _instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise FieldError(attribute.name, "list at least one top-level domain")
    for tld in value:
        if not tld.isascii() or not tld.replace("-", "").isalnum():
            raise FieldError(
                attribute.name, f"expected a top-level domain such as 'zip', got {tld!r}"
            )


@attrs.frozen
class TldBlockOptions:
    """The options of a `[[policy]] type = "tld-block"` table."""

    tlds: tuple[str, ...] = attrs.field(validator=_tld_names)
    ttl: int = attrs.field(default=300, validator=between(30, 86400))


@implementer(IPolicy)
@attrs.frozen
class TldBlockPolicy:
    """Blocks every name whose last label is one of `tlds`."""

    tlds: frozenset[str]
    ttl: int
    name: str = SOURCE
    #: Nothing to fetch or refresh: the TLDs come from the config.
    service: None = attrs.field(default=None, init=False)

    def whenReady(self) -> defer.Deferred[None]:
        """Ready at once: there is nothing to load."""
        return defer.succeed(None)

    def decide(self, query: PolicyQuery) -> Decision | None:
        """BLOCK names under a listed TLD; no opinion about the others."""
        tld = query.name.rpartition(".")[2]
        if tld not in self.tlds:
            return None
        report = f"source={SOURCE};tld={tld}"
        return Decision(Action.BLOCK, SOURCE, indicator=tld, report=report, ttl=self.ttl)


def _build(options: TldBlockOptions, context: BuildContext) -> TldBlockPolicy:
    return TldBlockPolicy(frozenset(t.lower() for t in options.tlds), options.ttl)


plugin = PluginType(SOURCE, TldBlockOptions, _build)
