"""The real-feed benchmark asks for the names misp-dns blocks from that feed (bench/corpus.py).

`feed_domains()` reads the real MISP feed in ../shared/data/misp-feed-infoblox on its own;
the names it gives, and their `www.` subdomains, must be exactly the names misp-dns's
`misp-feed` policy blocks from that feed (read with `MispFeedSource`, selected as the
updater selects), so the `independent` scenario's Unbound holds the same names and no
drawn name is one misp-dns forwards. Skipped where the shared data is absent (failed on CI).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conftest import unless_present

from misp_dns.intel.domainset import DomainSet
from misp_dns.intel.feed import MispFeedSource
from misp_dns.intel.indicator import BlockEntry
from misp_dns.intel.normalize import select
from misp_dns.interfaces import RawIndicator

HUNDRED_YEARS = 36500 * 86400.0


def _corpus() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "corpus.py"
    spec = importlib.util.spec_from_file_location("bench_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


corpus = _corpus()
FEED = Path(__file__).resolve().parents[2] / "shared" / "data" / "misp-feed-infoblox"

pytestmark = unless_present(FEED / "manifest.json", "the real MISP feed in ../shared/data")


def blocked_by_misp_dns(feed: Path) -> DomainSet:
    """The domain set a `misp-feed` policy with max_ioc_age 36500d serves for `feed`."""
    fetched: list[list[RawIndicator]] = []
    MispFeedSource(str(feed)).fetch().addCallback(fetched.append)
    selection = select(fetched[0], now=2_000_000_000.0, max_age=HUNDRED_YEARS)
    return DomainSet.build(e for e in selection.kept if isinstance(e, BlockEntry))


def test_feed_domains_are_the_names_misp_dns_blocks() -> None:
    """Every drawn name and its www. subdomain is blocked, and no blocked name is left out."""
    names = corpus.feed_domains(FEED)
    blocked = blocked_by_misp_dns(FEED)
    assert [n for n in names if blocked.match(n) is None] == []
    assert [n for n in names if blocked.match(f"www.{n}") is None] == []
    assert sorted(name for name, _ in blocked.names()) == sorted(names)
