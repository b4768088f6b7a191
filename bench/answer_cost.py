"""What one blocked or cached answer costs the server process, in one process, no sockets.

    .venv/bin/python bench/answer_cost.py                # every case, 3 rounds
    .venv/bin/python bench/answer_cost.py --rounds 5 --case blocked-cold
    PYTHONPATH=<other checkout> .venv/bin/python bench/answer_cost.py   # another version

A real `Responder` over a real `ChainResolver`, a `misp` policy holding the real feed's
domains with their provenance (event UUID and info, attribute UUID), answers wire queries
(EDNS, DO clear, as `dnsperf` sends them) given straight to `Responder.respond`. No
observers, no rate limiter, no socket: what is left is the answer itself. The cases:

- `blocked-hot`: 20,000 queries drawn from the feed's names (half as `www.` subdomains,
  the `independent` scenario's draw), every one answered once before timing;
- `blocked-cold`: each feed name asked once (every other one as its `www.` subdomain),
  with a fresh policy, snapshot and resolver and no memo warm: the first pass of the
  `independent` scenario, every query a first;
- `cached-hot`: 20,000 draws from 1,000 names in the answer cache, asked before;
- `cached-cold`: 10,000 names in the answer cache, each asked once, the policy fresh (its
  decision about each name is a first).

The collector is set up as the server sets it once started (`misp_dns.tap`; only
`gc.freeze()` in versions before `settle_collector`). Printed: CPU time of this process
per answer (the cheapest round) and every round.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from corpus import REAL_FEED, allowed_beside, sampled_queries  # noqa: E402

QUERIES = 20_000
CASES = ("blocked-hot", "blocked-cold", "cached-hot", "cached-cold")


def feed_indicators(feed: Path = REAL_FEED) -> list[Any]:
    """The feed's `domain` and `hostname` attributes as `RawIndicator`s, with provenance."""
    from misp_dns.interfaces import RawIndicator

    found = []
    for path in sorted(feed.glob("*.json")):
        if path.name == "manifest.json":
            continue
        event = json.loads(path.read_text())["Event"]
        for attribute in event.get("Attribute", []):
            if attribute.get("type") in ("domain", "hostname"):
                found.append(
                    RawIndicator(
                        str(attribute["value"]),
                        attribute["type"],
                        event_id=str(event.get("id", "")),
                        event_uuid=event.get("uuid", ""),
                        event_info=event.get("info", ""),
                        attribute_uuid=attribute.get("uuid", ""),
                    )
                )
    return found


def _empty(memo: dict[Any, Any]) -> None:
    """Empty a memo, or each memo in a dict of them."""
    inner = [value for value in memo.values() if isinstance(value, dict)]
    if inner:
        for value in inner:
            value.clear()
    else:
        memo.clear()


def main() -> None:
    """Measure and print the CPU per answer of each case."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", action="append", choices=CASES)
    args = parser.parse_args()

    import dns.message
    from test_misp_policy import NoUpstream, misp_policy
    from twisted.internet.task import Clock
    from twisted.names import dns as tdns

    from misp_dns.dns import packet
    from misp_dns.dns.acl import ClientACL
    from misp_dns.dns.cache import AnswerCache
    from misp_dns.dns.resolver import ChainResolver
    from misp_dns.dns.server import Responder
    from misp_dns.event import Answer
    from misp_dns.policy.chain import PolicyChain

    try:
        from misp_dns.tap import settle_collector as settle
    except ImportError:  # a version from before it
        settle = gc.freeze

    indicators = feed_indicators()
    policy = misp_policy(indicators, max_ioc_age=36500 * 86400)
    domains = [name for name, _ in policy.updater.snapshot.names()]
    allowed = allowed_beside(10_000, domains)
    acl = ClientACL([ipaddress.ip_network("127.0.0.0/8")])

    def wires(names: list[str]) -> list[bytes]:
        return [dns.message.make_query(n, "A", use_edns=0).to_wire() for n in names]

    def responder(fresh_policy: bool, cached: list[str]) -> Responder:
        chosen = misp_policy(indicators, max_ioc_age=36500 * 86400) if fresh_policy else policy
        clock = Clock()
        clock.advance(time.time())
        cache = AnswerCache(100_000, clock)
        for name in cached:
            record = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 3600, tdns.Record_A("192.0.2.1"))
            wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
            cache.put((wire, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=(record,)))
        resolver = ChainResolver(PolicyChain([chosen]), cache, NoUpstream(), "bench.example")
        # Memos that outlive a resolver start empty too, as in a new process.
        _empty(packet._OPT_MEMO)
        return Responder(resolver, acl, clock)

    def timed(server: Responder, queries: list[bytes]) -> float:
        respond = server.respond
        # As the server does once started (`tap.py`): what was built before stays out of
        # the collector's full passes (and, where this version has them, its thresholds).
        gc.collect()
        settle()
        started = time.process_time()
        for wire in queries:
            if not isinstance(respond(wire, "127.0.0.1", "udp"), bytes):
                raise SystemExit("an answer left the fast path: the bench is not measuring it")
        spent = time.process_time() - started
        gc.unfreeze()
        return spent / len(queries) * 1e6

    cold_names = [name if i % 2 == 0 else f"www.{name}" for i, name in enumerate(domains)]
    hot = wires(sampled_queries(domains, QUERIES))
    cached_hot = wires(random.Random(19).choices(allowed[:1000], k=QUERIES))
    cases: dict[str, Callable[[], float]] = {
        "blocked-hot": lambda: timed(warm, hot),
        "blocked-cold": lambda: timed(responder(True, []), wires(cold_names)),
        "cached-hot": lambda: timed(warm_cache, cached_hot),
        "cached-cold": lambda: timed(responder(True, allowed), wires(allowed)),
    }
    warm = responder(False, [])
    warm_cache = responder(False, allowed[:1000])
    timed(warm, hot)
    timed(warm_cache, cached_hot)
    for case in args.case or CASES:
        figures = [cases[case]() for _ in range(args.rounds)]
        print(
            f"{case}: {min(figures):.2f} us an answer (rounds: "
            + ", ".join(f"{figure:.2f}" for figure in figures)
            + ")",
            flush=True,
        )


if __name__ == "__main__":
    main()
