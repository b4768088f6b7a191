"""The allowlist policy: listed names and their subdomains are allowed, nothing else decided."""

from __future__ import annotations

from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from misp_dns.interfaces import Action, IPolicy, PolicyQuery
from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
from misp_dns.values import ConfigError


def ask(policy: AllowlistPolicy, name: str) -> Action | None:
    decision = policy.decide(PolicyQuery(name, 1))
    return None if decision is None else decision.action


def test_listed_name_and_subdomains_allowed(tmp_path: Path) -> None:
    """A listed domain allows itself and every name below it, nothing beside it."""
    policy = AllowlistPolicy.from_config(AllowlistOptions(domains=("Example.COM.",)))
    assert verifyObject(IPolicy, policy)
    assert ask(policy, "example.com") is Action.ALLOW
    assert ask(policy, "deep.www.example.com") is Action.ALLOW
    assert ask(policy, "badexample.com") is None
    assert ask(policy, "com") is None


def test_names_from_files_with_comments(tmp_path: Path) -> None:
    """Files hold one name per line; `#` starts a comment; blank lines are fine."""
    listed = tmp_path / "allow.txt"
    listed.write_text("# corporate\nintranet.corp  # the wiki\n\n  mail.example.org\n")
    policy = AllowlistPolicy.from_config(AllowlistOptions(files=(str(listed),)))
    assert ask(policy, "wiki.intranet.corp") is Action.ALLOW
    assert ask(policy, "mail.example.org") is Action.ALLOW
    assert ask(policy, "example.org") is None


def test_bad_names_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    """A name that is no domain is reported with its file and line; a missing file too."""
    listed = tmp_path / "allow.txt"
    listed.write_text("good.example\nbad name.example\n")
    with pytest.raises(ConfigError) as caught:
        AllowlistPolicy.from_config(AllowlistOptions(files=(str(listed),)))
    assert caught.value.problems[0].startswith(f"allowlist {listed}:2: ")
    with pytest.raises(ConfigError, match="cannot read"):
        AllowlistPolicy.from_config(AllowlistOptions(files=(str(tmp_path / "nope.txt"),)))


def test_a_name_allowed_again_gets_the_same_decision() -> None:
    """Every query under one listed name gets one decision object, equal to what the query
    log has always shown (ALLOW, the listed name, no EDE), so nothing is built per query."""
    policy = AllowlistPolicy.from_config(AllowlistOptions(domains=("example.com",)))
    first = policy.decide(PolicyQuery("www.example.com", 1))
    assert first is not None
    assert (first.action, first.source, first.indicator, first.ede_code) == (
        Action.ALLOW,
        "allowlist",
        "example.com",
        None,
    )
    assert policy.decide(PolicyQuery("mail.example.com", 1)) is first
    assert policy.decide(PolicyQuery("example.com", 28)) is first
