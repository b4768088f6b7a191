"""What a `misp` policy asks MISP to leave out, and the same rules checked on what comes back.

`MispFilters` holds the filter keys of a `[[policy]] type = "misp"` table:

- `tags`: only attributes that carry, or whose event carries, at least one of these tags;
- `exclude_tags`: no attribute that carries, or whose event carries, any of these tags;
- `enforce_warninglists`: MISP leaves out the attributes on its enabled warninglists
  (`enforceWarninglist`);
- `published_only`: only attributes of published events (`published`);
- `threat_levels`: only attributes of events of these threat levels, 1 (high), 2 (medium),
  3 (low), 4 (undefined) (`threat_level_id`);
- `exclude_decayed`: MISP leaves out the attributes every decaying model finds decayed
  (`excludeDecayed`).

`search_terms()` is what goes into the restSearch body. A MISP that ignores a filter (an old
version, a proxy rewriting the body) must not make misp-dns block more, so `rejection(item)`
checks the rules again on each attribute MISP sends, as far as the answer carries what they
need: the tags always (the attribute's `Tag` list, which holds its event's tags with
`includeEventTags`, and the `Event`'s own `Tag` list when present), the decay scores when
`exclude_decayed` asked for them, and the published flag and threat level only when the
attribute's `Event` holds them (restSearch's answer does not by default, so those two rest on
MISP). Tag names compare as MISP looks them up (SQL LIKE): in any case, `%` standing for any
text and `_` for one character.

    filters = MispFilters(tags=("tlp:red", "tlp:amber%"), exclude_tags=("false-positive",))
    body.update(filters.search_terms())
    why = filters.rejection(attribute)   # None, or "excluded-tag", "unpublished", ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "DECAYED",
    "EXCLUDED_TAG",
    "NO_WANTED_TAG",
    "REJECTIONS",
    "THREAT_LEVEL",
    "THREAT_LEVELS",
    "UNPUBLISHED",
    "UNREADABLE_TAGS",
    "MispFilters",
    "like",
]

#: MISP's threat levels: 1 high, 2 medium, 3 low, 4 undefined.
THREAT_LEVELS = (1, 2, 3, 4)

# Why an attribute MISP sent is left out here.
NO_WANTED_TAG = "no-wanted-tag"
EXCLUDED_TAG = "excluded-tag"
UNREADABLE_TAGS = "unreadable-tags"
UNPUBLISHED = "unpublished"
THREAT_LEVEL = "threat-level"
DECAYED = "decayed"
REJECTIONS = (NO_WANTED_TAG, EXCLUDED_TAG, UNREADABLE_TAGS, UNPUBLISHED, THREAT_LEVEL, DECAYED)


def like(pattern: str) -> re.Pattern[str]:
    """A tag name pattern as MISP's SQL LIKE reads it: `%` any text, `_` one character, any
    case. Use with `fullmatch`."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE | re.DOTALL)


def _tag_names(item: Mapping[str, Any]) -> list[str] | None:
    """The tag names on the attribute and on its `Event`; None if a tag list is unreadable."""
    names: list[str] = []
    for holder in (item, item.get("Event")):
        if not isinstance(holder, Mapping) or holder.get("Tag") is None:
            continue
        tags = holder["Tag"]
        if not isinstance(tags, list):
            return None
        for tag in tags:
            name = tag.get("name") if isinstance(tag, Mapping) else None
            if not isinstance(name, str):
                return None
            names.append(name)
    return names


@attrs.frozen
class _TagPatterns:
    """Tag name patterns: those without wildcards compared as lower-case text (the usual case,
    and several times faster than a pattern), the others as LIKE patterns."""

    exact: frozenset[str]
    wildcards: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, tags: tuple[str, ...]) -> _TagPatterns:
        exact = frozenset(tag.lower() for tag in tags if "%" not in tag and "_" not in tag)
        wildcards = tuple(like(tag) for tag in tags if "%" in tag or "_" in tag)
        return cls(exact, wildcards)

    def __bool__(self) -> bool:
        return bool(self.exact or self.wildcards)

    def carried(self, names: list[str]) -> bool:
        """Whether one of `names` matches one of the patterns."""
        exact = self.exact
        if exact and any(name.lower() in exact for name in names):
            return True
        return any(pattern.fullmatch(name) for pattern in self.wildcards for name in names)


def _is_true(value: object) -> bool:
    return value is True or value == 1 or str(value).strip().lower() in ("1", "true")


def _all_decayed(scores: object) -> bool:
    """MISP's rule: left out when it has scores and every one says decayed."""
    return (
        isinstance(scores, list)
        and bool(scores)
        and all(isinstance(s, Mapping) and _is_true(s.get("decayed")) for s in scores)
    )


@attrs.frozen
class MispFilters:
    """The filters of one `misp` policy (`MispOptions.filters()`); the same defaults."""

    tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    enforce_warninglists: bool = True
    published_only: bool = True
    threat_levels: tuple[int, ...] = THREAT_LEVELS
    exclude_decayed: bool = False
    _wanted: _TagPatterns = attrs.field(init=False, repr=False, eq=False)
    _excluded: _TagPatterns = attrs.field(init=False, repr=False, eq=False)
    _levels: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_wanted", _TagPatterns.of(self.tags))
        object.__setattr__(self, "_excluded", _TagPatterns.of(self.exclude_tags))
        levels = frozenset(str(level) for level in self.threat_levels)
        every = levels >= {str(level) for level in THREAT_LEVELS}
        object.__setattr__(self, "_levels", frozenset() if every else levels)

    def search_terms(self) -> dict[str, Any]:
        """The restSearch filters these stand for (nothing for a filter that keeps all)."""
        terms: dict[str, Any] = {"enforceWarninglist": self.enforce_warninglists}
        if self.published_only:
            terms["published"] = True
        if self._levels:
            terms["threat_level_id"] = sorted(self._levels)
        tags: dict[str, list[str]] = {}
        if self.tags:
            tags["OR"] = list(self.tags)
        if self.exclude_tags:
            tags["NOT"] = list(self.exclude_tags)
        if tags:
            terms["tags"] = tags
        if self.exclude_decayed:
            # MISP computes scores whenever excludeDecayed is present, even false, so it is
            # only sent when wanted; includeDecayScore makes sure the scores come back.
            terms["excludeDecayed"] = True
            terms["includeDecayScore"] = True
        return terms

    def rejection(self, item: Mapping[str, Any]) -> str | None:
        """Why an attribute MISP sent breaks these filters (one of `REJECTIONS`), or None."""
        if self._wanted or self._excluded:
            names = _tag_names(item)
            if names is None:
                return UNREADABLE_TAGS
            if self._wanted and not self._wanted.carried(names):
                return NO_WANTED_TAG
            if self._excluded.carried(names):
                return EXCLUDED_TAG
        event = item.get("Event")
        if isinstance(event, Mapping):
            if self.published_only and "published" in event and not _is_true(event["published"]):
                return UNPUBLISHED
            level = event.get("threat_level_id")
            if self._levels and level is not None and str(level).strip() not in self._levels:
                return THREAT_LEVEL
        if self.exclude_decayed and _all_decayed(item.get("decay_score")):
            return DECAYED
        return None
