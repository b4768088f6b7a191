"""The example policy blocks names under the listed TLDs, and plugs into misp-dns's config."""

from __future__ import annotations

import os

import pytest
from zope.interface.verify import verifyObject

try:
    from example_policy import TldBlockOptions, TldBlockPolicy, plugin
except ModuleNotFoundError as missing:
    if missing.name != "example_policy":
        raise
    # Installed by `make test`; a bare checkout skips these tests, CI must never.
    _MISSING = "misp-dns-example-policy is not installed (`make test` installs it)"
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(f"CI must run every test: {_MISSING}", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)

from misp_dns.config import parse_config
from misp_dns.interfaces import Action, IPolicy, PolicyQuery
from misp_dns.registry import default_registry
from misp_dns.values import ConfigError


def test_blocks_names_under_listed_tlds() -> None:
    """Every name under .zip is blocked with a report naming the TLD; others are not."""
    policy = TldBlockPolicy(frozenset({"zip"}), 300)
    assert verifyObject(IPolicy, policy)
    decision = policy.decide(PolicyQuery("invoice.pdf.zip", 1))
    assert decision is not None and decision.action is Action.BLOCK
    assert decision.report == "source=tld-block;tld=zip"
    assert policy.decide(PolicyQuery("zip.example.com", 1)) is None


def test_found_through_the_entry_point() -> None:
    """Installed beside misp-dns, `type = "tld-block"` is a known policy type."""
    registry = default_registry()
    assert registry.policies["tld-block"] is plugin
    config = parse_config({"policy": [{"type": "tld-block", "tlds": ["zip", "mov"]}]}, registry)
    assert config.policy[0].options == TldBlockOptions(("zip", "mov"))


def test_bad_options_are_config_errors() -> None:
    """An unknown key or a bad TLD is reported with its TOML path like any built-in."""
    registry = default_registry()
    with pytest.raises(ConfigError) as caught:
        parse_config({"policy": [{"type": "tld-block", "tlds": ["zip"], "tld": 1}]}, registry)
    assert caught.value.problems == ["policy[0].tld: unknown key"]


def test_bad_tld_names_the_field() -> None:
    """A TLD with a dot in it is reported under policy[0].tlds."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"policy": [{"type": "tld-block", "tlds": ["co.uk"]}]}, default_registry())
    assert caught.value.problems == [
        "policy[0].tlds: expected a top-level domain such as 'zip', got 'co.uk'"
    ]
