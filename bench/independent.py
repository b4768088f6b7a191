"""The `independent` scenario: real feed names, cold and spread, over one client socket.

Issue 17's independent run, reproduced beside the generated-indicator scenarios: misp-dns
blocks the real MISP feed in ../shared/data/misp-feed-infoblox (about 60,000 domains,
read by a `misp-feed` policy as users read it) and forwards to an Unbound of its own (one
thread) holding the same domains as `always_nxdomain` local zones and 1,000 allowed names
(the popular list's top, none of them blocked) as local data. Two query files:

- blocked: 20,000 names drawn at random (with repeats) from the feed's domains, every
  other one asked as its `www.` subdomain;
- cached: 20,000 names drawn at random from the 1,000 allowed names.

Each is asked with `dnsperf -c 1` (one client socket, `--outstanding` queries in flight)
and again with `--clients` sockets, misp-dns and Unbound in the same alternating rounds, so
the figures tell what the socket count changes and what the names change (compare with
`blocked`, whose names are generated). The first pass over each file on a fresh misp-dns
(decision memos and answer cache empty) is kept too, as `first pass, cold`.
"""

from __future__ import annotations

import random
import time
from typing import Any

import attrs
from corpus import REAL_FEED, allowed_beside, feed_domains, sampled_queries, write_queries
from harness import Bench, Figure, Measurement, start_unbound
from profiling import OUT, profile_run, record, summarise

__all__ = ["ALLOWED", "QUERIES", "independent"]

#: Allowed names answered from the cache.
ALLOWED = 1_000
#: Queries in each file.
QUERIES = 20_000


def _figure(
    bench: Bench, shape: str, what: str, clients: int, best: dict[str, Measurement]
) -> None:
    ours, unbound = best["misp-dns"], best["unbound"]
    target = 0.70 if shape == "blocked" else 0.60
    ratio = ours.qps / unbound.qps if unbound.qps else 0.0
    capacity = unbound.cpu_us / ours.cpu_us if ours.cpu_us and unbound.cpu_us else 0.0
    notes = [
        f"CPU per answer {ours.cpu_us:.1f} us vs Unbound {unbound.cpu_us:.1f} us"
        f" (capacity ratio {capacity:.2f})"
    ]
    if ours.lost or unbound.lost:
        notes.append(f"lost: misp-dns {ours.lost}, Unbound {unbound.lost}")
    bench.figure(
        Figure(
            "1" if shape == "blocked" else "2",
            f"independent shape, {what}; dnsperf -c {clients}",
            f"{ours.qps:,.0f} q/s",
            f"Unbound {unbound.qps:,.0f} q/s",
            f"{ratio:.2f}x Unbound; {capacity:.2f}x by CPU per answer",
            f">= {target:.2f}x Unbound",
            ratio >= target and ours.lost == 0,
            "; ".join(notes),
            bool(capacity) and (capacity >= target) != (ratio >= target),
        )
    )


def _sample_cold(bench: Bench, scenario: str, pid: int, label: str) -> Any:
    """With `--profile`, py-spy on misp-dns for its cold first pass (started first, as the
    pass is short); None otherwise."""
    if label != "misp-dns" or not getattr(bench.args, "profile", False):
        return None
    OUT.mkdir(parents=True, exist_ok=True)
    sampler = record(pid, 4, OUT / f"profile-{scenario}-cold.collapsed", rate=500)
    time.sleep(0.5)  # py-spy attaching
    return sampler


def _summarise_cold(bench: Bench, scenario: str, sampler: Any) -> None:
    _, errors = sampler.communicate(timeout=60)
    collapsed = OUT / f"profile-{scenario}-cold.collapsed"
    if sampler.returncode != 0 or not collapsed.exists():
        bench.say(f"{scenario}: profiling the cold pass failed: {errors.decode()[-300:]}")
    else:
        text, _ = summarise(collapsed)
        (OUT / f"profile-{scenario}-cold.txt").write_text(f"{scenario}: first pass, cold\n{text}\n")
        bench.profiles[f"{scenario}-cold"] = text


def independent(bench: Bench) -> None:
    """Blocked and cached answers over real feed names, one client socket and many."""
    domains = feed_domains()
    if not domains:
        raise RuntimeError(f"no feed at {REAL_FEED}")
    allowed = allowed_beside(ALLOWED, domains)
    folder = bench.workdir / "independent"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "blocked": write_queries(folder / "blocked.txt", sampled_queries(domains, QUERIES)),
        "cached": write_queries(
            folder / "cached.txt", random.Random(19).choices(allowed, k=QUERIES)
        ),
    }
    bench.say(f"independent: Unbound with {len(domains):,} feed domains, {len(allowed)} names")
    unbound = start_unbound(folder / "unbound", bench.unbound_binary, allowed, domains)
    results: list[tuple[str, int, dict[str, Measurement]]] = []
    try:
        bench.pin(unbound.pid)
        policy = {
            "type": "misp-feed",
            "url": str(REAL_FEED),
            "max_ioc_age": "36500d",
            "update_interval": "1d",
        }
        with bench.misp_dns(
            "independent",
            policies=[policy],
            upstream=unbound.address[1],
            probe=allowed[0],
            blocked_probe=domains[-1],
            timeout=180,
        ) as server:
            targets = [
                ("unbound", unbound.address[1], unbound.pid),
                ("misp-dns", server.address[1], server.pid),
            ]
            for shape, queries in files.items():
                scenario = f"independent-{shape}"
                for label, port, _ in reversed(targets):  # misp-dns first: still cold
                    sampler = _sample_cold(bench, scenario, server.pid, label)
                    first = bench.run_dnsperf(
                        scenario, label, port, queries, warmup=True, clients=1
                    )
                    bench.record(attrs.evolve(first, note="first pass, cold"))
                    if sampler is not None:
                        _summarise_cold(bench, scenario, sampler)
                for clients in (1, bench.args.clients):
                    best = bench.rotate(
                        f"{scenario} -c {clients}", targets, queries, clients=clients
                    )
                    results.append((shape, clients, best))
                profile_run(bench, scenario, server, queries, clients=1)
    finally:
        unbound.stop()
    what = {
        "blocked": f"blocked: {QUERIES:,} queries drawn from the real feed's {len(domains):,}"
        " domains, half as www. subdomains",
        "cached": f"cached: {QUERIES:,} queries drawn from {len(allowed)} allowed names",
    }
    for shape, clients, best in results:
        _figure(bench, shape, what[shape], clients, best)
