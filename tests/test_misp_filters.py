"""The rules of a misp policy's filters on one attribute, as MISP would apply them.

The request they make and their effect through a MISP are pinned in test_misp_client.py;
here is the matching itself: tag names compared as MISP's SQL LIKE, and what is judged when
the answer lacks a field.
"""

from __future__ import annotations

from typing import Any

import pytest

from misp_dns.intel.misp_filters import MispFilters


def tagged(*names: str, event: dict[str, Any] | None = None) -> dict[str, Any]:
    attribute: dict[str, Any] = {"type": "domain", "value": "x.example"}
    attribute["Tag"] = [{"name": name} for name in names]
    if event is not None:
        attribute["Event"] = event
    return attribute


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("tlp:red", "TLP:RED", True),
        ("tlp:red", "tlp:red+strict", False),
        ("tlp:amber%", "tlp:amber+strict", True),
        ("tlp:amber%", "tlp:amber", True),
        ("%:c2", "kill-chain:c2", True),
        ("tlp:re_", "tlp:red", True),
        ("tlp:re_", "tlp:re", False),
        ('misp-galaxy:threat-actor="APT (28)"', 'misp-galaxy:threat-actor="APT (28)"', True),
        ("a.b", "axb", False),
        ("a*", "abc", False),
    ],
)
def test_tag_names_match_as_sql_like(pattern: str, name: str, matches: bool) -> None:
    """Any case; `%` any text, `_` one character; every other character (regex ones too)
    stands for itself."""
    filters = MispFilters(tags=(pattern,))
    assert (filters.rejection(tagged(name)) is None) is matches


def test_event_tags_count_like_the_attribute_s_own() -> None:
    """A tag on the embedded Event selects and excludes like one on the attribute."""
    red_event = {"Tag": [{"name": "tlp:red"}]}
    assert MispFilters(tags=("tlp:red",)).rejection(tagged(event=red_event)) is None
    excluded = MispFilters(exclude_tags=("tlp:red",)).rejection(tagged(event=red_event))
    assert excluded == "excluded-tag"


def test_defaults_judge_only_what_the_answer_carries() -> None:
    """With the defaults an attribute without tags or Event fields is kept: the published
    flag is only judged when the Event holds it."""
    filters = MispFilters()
    assert filters.rejection({"type": "domain", "value": "x.example"}) is None
    assert filters.rejection(tagged(event={"published": "0"})) == "unpublished"
    assert filters.rejection(tagged(event={"published": True})) is None


def test_all_four_threat_levels_check_nothing_and_send_nothing() -> None:
    """threat_levels listing every level neither filters nor asks MISP to."""
    filters = MispFilters(threat_levels=(4, 3, 2, 1))
    assert filters.rejection(tagged(event={"threat_level_id": "9"})) is None
    assert "threat_level_id" not in filters.search_terms()


@pytest.mark.parametrize(
    ("scores", "decayed"),
    [
        ([], False),
        ([{"decayed": True}], True),
        ([{"decayed": True}, {"decayed": False}], False),
        ([{"decayed": True}, {"decayed": True}], True),
        ("not a list", False),
    ],
)
def test_decayed_means_every_score_says_so(scores: object, decayed: bool) -> None:
    """As in MISP: left out when it has scores and every model finds it decayed."""
    attribute = {"type": "domain", "value": "x.example", "decay_score": scores}
    found = MispFilters(exclude_decayed=True).rejection(attribute)
    assert found == ("decayed" if decayed else None)
