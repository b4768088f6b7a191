"""Reproduce every figure of issue 5 against a real Unbound, in one command.

    .venv/bin/python bench/run.py            # all scenarios (about 12 minutes); writes
                                             # bench/RESULTS.md and bench/out/bench-<time>.*
    .venv/bin/python bench/run.py --scenario blocked --seconds 5 --repeats 1

Unbound (one thread) holds the allowed names as local data and the indicators as
`always_nxdomain` zones; misp-dns is started the way users start it (`twistd -n --pidfile=
misp-dns --config PATH`), forwarding to that Unbound. Every scenario records its dnsperf runs
and its goal figures; the report is printed and written as Markdown. See bench/README.md.

Scenarios are functions `(Bench) -> None` registered in SCENARIOS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from corpus import allowed_names, blocked_queries, indicators, write_queries
from harness import REPO, Bench, Figure, start_unbound, tool
from independent import independent
from million import million
from peers import peer_versions, peers
from report import machine, render, versions, write_results
from startup import startup
from throughput import blocked, cached, sinks
from workers import workers

__all__ = ["SCENARIOS", "main"]

OUT = REPO / "bench" / "out"
RESULTS = REPO / "bench" / "RESULTS.md"

SCENARIOS: dict[str, Callable[[Bench], None]] = {
    "startup": startup,  # goal 7
    "blocked": blocked,  # goal 1
    "cached": cached,  # goals 2 and 3
    "sinks": sinks,  # goal 6
    "peers": peers,  # issue 17, item 6: PowerDNS Recursor and dnsmasq
    "independent": independent,  # issue 17: real feed names, one client socket
    "million": million,  # goals 4 and 5
    "workers": workers,  # issue 17, item 4: [server] workers = N
}


def _cpus(pin: bool) -> tuple[str | None, str | None]:
    if not pin or shutil.which("taskset") is None:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return str(available[0]), ",".join(str(c) for c in available[1:])


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every scenario (the default)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="scenario to run (repeatable; default: all)",
    )
    parser.add_argument("--seconds", type=float, default=8, help="length of each measured run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per throughput scenario")
    parser.add_argument("--names", type=int, default=10_000, help="allowed names")
    parser.add_argument("--indicators", type=int, default=100_000, help="indicators (goal 1)")
    parser.add_argument("--million", type=int, default=1_000_000, help="indicators (goals 4-5)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--profile", action="store_true", help="also sample misp-dns with py-spy under load"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="write the Markdown report here (default: bench/RESULTS.md after a full run)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be within 1..600")
    if not 1 <= args.repeats <= 10:
        parser.error("--repeats must be within 1..10")
    if args.million < 10 * args.indicators // 9:
        parser.error("--million must exceed --indicators by a tenth (the probe names)")
    return args


def _freeze_source(workdir: Path) -> Path:
    """Copy the package (and its twistd plugin) into `workdir` and put the copy first on
    the import path of this process and of every process it starts, so that the whole run
    measures one version of the code even when the checkout changes meanwhile."""
    target = workdir / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    shutil.copytree(REPO / "misp_dns", target / "misp_dns", ignore=ignore)
    shutil.copytree(REPO / "twisted" / "plugins", target / "twisted" / "plugins", ignore=ignore)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    sys.path.insert(0, str(target))
    return target


def _versions(start: dict[str, str], end: dict[str, str]) -> dict[str, str]:
    """The versions measured (a copy taken at the start), noting a checkout that moved on."""
    if start["misp-dns"] != end["misp-dns"]:
        later = f"; the checkout has changed since: {end['misp-dns']}"
        return {**start, "misp-dns": start["misp-dns"] + later}
    return start


def _run(bench: Bench, chosen: list[str]) -> None:
    for name in chosen:
        started = time.monotonic()
        bench.say(f"scenario {name}")
        try:
            SCENARIOS[name](bench)
        except Exception as problem:  # one broken scenario must not lose the others' figures
            traceback.print_exc()
            bench.figure(
                Figure(
                    name,
                    f"scenario {name!r} failed",
                    "-",
                    "-",
                    "-",
                    "-",
                    None,
                    f"{type(problem).__name__}: {str(problem).splitlines()[0][:300]}",
                )
            )
        bench.say(f"scenario {name} took {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print the report, write it to bench/out (and RESULTS.md)."""
    args = _arguments(argv)
    chosen = args.scenario or list(SCENARIOS)
    dnsperf = tool("dnsperf")
    unbound_binary = tool("unbound")
    server_cpu, client_cpu = _cpus(not args.no_pin)
    if client_cpu is not None:  # this process and what it starts stay off the server CPU
        os.sched_setaffinity(0, {int(c) for c in client_cpu.split(",")})
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    host = machine()
    allowed = allowed_names(args.names)
    blocked_names = indicators(args.indicators, allowed)
    with tempfile.TemporaryDirectory(prefix="misp-dns-bench-") as temp:
        workdir = Path(temp)
        source = _freeze_source(workdir)
        at_start = {**versions(unbound_binary, dnsperf, source), **peer_versions()}
        files = {
            "allowed": write_queries(workdir / "allowed.txt", allowed),
            "blocked": write_queries(workdir / "blocked.txt", blocked_queries(blocked_names)),
            "blocked-hot": write_queries(
                workdir / "blocked-hot.txt", blocked_queries(blocked_names, 1000) * 20
            ),
        }
        print(f"starting Unbound with {len(allowed):,} names and {len(blocked_names):,} zones")
        unbound = start_unbound(workdir, unbound_binary, allowed, blocked_names)
        bench = Bench(
            args,
            workdir,
            dnsperf,
            unbound_binary,
            unbound,
            allowed,
            blocked_names,
            files,
            server_cpu,
            client_cpu,
        )
        try:
            bench.pin(unbound.pid)
            _run(bench, chosen)
        finally:
            unbound.stop()
        # The run used the copy; say so if the checkout moved on meanwhile.
        at_end = {**versions(unbound_binary, dnsperf, REPO / "misp_dns"), **peer_versions()}
        at_start = _versions(at_start, at_end)
    context = {
        "argv": " ".join(argv if argv is not None else sys.argv[1:]) or "(no options: all)",
        "date": date,
        "duration": time.monotonic() - started,
        "machine": host,
        "versions": at_start,
        "load_after": ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        "parameters": {
            "clients": args.clients,
            "outstanding": args.outstanding,
            "server_cpu": server_cpu or "any (not pinned)",
            "client_cpu": client_cpu or "any (not pinned)",
            "repeats": args.repeats,
            "seconds": args.seconds,
            "allowed": len(allowed),
            "indicators": len(blocked_names),
        },
    }
    report = render(bench.figures, bench.measurements, context, bench.profiles)
    print("\n" + report)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"bench-{stamp}.md").write_text(report)
    (OUT / f"bench-{stamp}.json").write_text(
        json.dumps(
            {
                "context": context,
                "figures": [attrs.asdict(f) for f in bench.figures],
                "runs": [attrs.asdict(m) for m in bench.measurements],
            },
            indent=2,
        )
    )
    target = args.results or (RESULTS if set(chosen) == set(SCENARIOS) else None)
    if target is not None:
        write_results(target, report)
        print(f"written to {target} (its hand-written analysis kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
