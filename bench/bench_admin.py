"""What counting for the metrics costs: queries/s with `[admin]` on, against off.

    .venv/bin/python bench/bench_admin.py                  # 3 rounds of 5 s runs
    .venv/bin/python bench/bench_admin.py --seconds 10 --rounds 5 --export none

Two misp-dns servers run side by side in the same run, like `bench_export.py`: the same
config (a one-event MISP feed, forwarding to a real Unbound, by default a JSONL sink to
/dev/null so both build the query events), one of them with an `[admin]` listener. dnsperf
sends each, in turn, round after round, a file of blocked names and a file of cached names
(after a warm-up pass); the best queries/s of each server and file are compared. The goal
(issue 16) is that counting costs at most 5% of the blocked and of the cached queries/s.
/metrics is scraped once a second during the runs, as Prometheus would (more often than
its usual 15 s), so the scrape's own cost is in the figures.

Then, in one process and free of other processes' noise, a real `Responder` answers the
same names with and without the `QueryCounter` observer: the CPU microseconds it adds to a
query, which, set against the server's CPU per query, gives the capacity ratio.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_export import (  # noqa: E402
    BLOCKED_DOMAIN,
    _config,
    _cpu_seconds,
    _cpus,
    _dnsperf,
    _taskset,
    _tool,
)
from integration.net import free_port  # noqa: E402
from integration.server import MispDnsProcess, misp_dns_command  # noqa: E402
from integration.unbound import NODATA, WWW, UnboundProcess, integration_config  # noqa: E402

# Names whose A answers fit in 512 bytes: cached answers on the fast path (mid.test's do not).
ALLOWED = [WWW, NODATA, "ttl.test."]
GOAL = 0.95


def _query_files(work: Path) -> dict[str, Path]:
    blocked = work / "blocked.txt"
    blocked.write_text("".join(f"q{i}.{BLOCKED_DOMAIN} A\n" for i in range(10_000)))
    cached = work / "cached.txt"
    cached.write_text("".join(f"{ALLOWED[i % len(ALLOWED)]} A\n" for i in range(10_000)))
    return {"blocked": blocked, "cached": cached}


class _Scraper:
    """Fetches /metrics once a second in a thread, as a (keen) Prometheus would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop.wait(1.0):
            with opener.open(self.url, timeout=5) as response:
                response.read()
            self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def in_process(export: str, queries: int = 40_000, rounds: int = 5) -> dict[str, float]:
    """CPU microseconds `QueryCounter.count` adds to a blocked and to a cached query.

    Measured with no observer and with an exporter observer (its queue only), in rounds
    that alternate; the cheapest of each counts. Returns the figures for `export`'s setting.
    """
    import dns.message
    from twisted.internet.task import Clock
    from twisted.names import dns as tdns

    from misp_dns.admin.metrics import QueryCounter
    from misp_dns.dns.acl import ClientACL
    from misp_dns.dns.cache import AnswerCache
    from misp_dns.dns.forwarder import Forwarder
    from misp_dns.dns.resolver import ChainResolver
    from misp_dns.dns.server import Responder
    from misp_dns.event import Answer
    from misp_dns.export.exporter import ExporterService, SinkSlot
    from misp_dns.interfaces import Action, Decision
    from misp_dns.policy.chain import PolicyChain
    from misp_dns.testing import MemorySink
    from misp_dns.values import HostPort

    decision = Decision(Action.BLOCK, "misp-feed", indicator=BLOCKED_DOMAIN, report="r")

    class Feed:
        name = "feed"

        def decide(self, query: Any) -> Any:
            return decision if query.name.endswith(BLOCKED_DOMAIN) else None

    clock = Clock()
    clock.advance(time.time())
    cache = AnswerCache(10_000, clock)
    for name in ALLOWED:
        name = name.rstrip(".")
        record = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 3600, tdns.Record_A("192.0.2.1"))
        wire_name = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
        cache.put((wire_name, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=(record,)))
    resolver = ChainResolver(
        PolicyChain([Feed()]), cache, Forwarder([HostPort("127.0.0.1", 9)], clock), "b.example"
    )
    responder = Responder(resolver, ClientACL([ipaddress.ip_network("127.0.0.0/8")]), clock)
    files = {
        "blocked": [f"q{i}.{BLOCKED_DOMAIN}" for i in range(1000)],
        "cached": [ALLOWED[i % len(ALLOWED)] for i in range(1000)],
    }
    exporter = ExporterService([SinkSlot("memory", MemorySink())], clock)

    def run(wires: list[bytes], counting: bool, exporting: bool) -> float:
        counter = QueryCounter()
        responder.recorder = exporter.record if exporting else None  # as tap.py wires it
        responder.tally = counter.count if counting else None
        started = time.process_time()
        for index in range(queries):
            responder.respond(wires[index % len(wires)], "127.0.0.1", "udp")
        spent = time.process_time() - started
        exporter._queue.clear()
        return spent / queries * 1e6

    added = {}
    for kind, names in files.items():
        wires = [dns.message.make_query(name, "A", use_edns=0).to_wire() for name in names]
        for exporting in (False, True):
            run(wires, True, exporting)
            plain, counting = [], []
            for _ in range(rounds):
                plain.append(run(wires, False, exporting))
                counting.append(run(wires, True, exporting))
            extra = min(counting) - min(plain)
            if exporting == (export == "null"):
                added[kind] = extra
            print(
                f"in-process, {kind}, {'with' if exporting else 'without'} an exporter:"
                f" {min(plain):.2f} CPU us per query without counting,"
                f" {min(counting):.2f} with: +{extra:.2f} us"
            )
    return added


def main() -> None:
    """Run the side-by-side comparison, then the in-process one, and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--export",
        choices=["null", "none"],
        default="null",
        help="both servers with a JSONL sink to /dev/null (default), or with no sink",
    )
    args = parser.parse_args()
    dnsperf, unbound_binary = _tool("dnsperf"), _tool("unbound")
    server_cpu, client_cpus = _cpus()
    work = Path(tempfile.mkdtemp(prefix="bench-admin-"))
    unbound_port = free_port()
    (work / "unbound").mkdir()
    unbound = UnboundProcess(
        unbound_binary,
        integration_config(work / "unbound", unbound_port),
        ("127.0.0.1", unbound_port),
    )
    unbound.start()
    exports = [{"type": "jsonl", "path": "/dev/null"}] if args.export == "null" else []
    servers: dict[str, MispDnsProcess] = {}
    scrapers: list[_Scraper] = []
    best: dict[tuple[str, str], float] = {}
    cheapest: dict[tuple[str, str], float] = {}
    try:
        for label in ("admin off", "admin on"):
            folder = work / label.replace(" ", "-")
            port = free_port()
            config = _config(folder, port, unbound_port, exports)
            if label == "admin on":
                admin_port = free_port()
                with open(config, "a") as file:
                    file.write(f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
            server = MispDnsProcess(
                config,
                [("127.0.0.1", port)],
                folder,
                lambda path: _taskset(server_cpu, misp_dns_command(path)),
            )
            server.start(probe=WWW, timeout=60)
            servers[label] = server
        scrapers.append(_Scraper(f"http://127.0.0.1:{admin_port}/metrics"))
        files = _query_files(work)
        for server in servers.values():
            for path in files.values():
                _dnsperf(dnsperf, client_cpus, server.address[1], path, args.seconds, True)
        for round_ in range(args.rounds):
            for kind, path in files.items():
                order = list(servers.items())
                if round_ % 2:
                    order.reverse()
                for label, server in order:
                    before = _cpu_seconds(server.pid)
                    qps, completed = _dnsperf(
                        dnsperf, client_cpus, server.address[1], path, args.seconds, False
                    )
                    per_query = 1e6 * (_cpu_seconds(server.pid) - before) / max(completed, 1)
                    key = (kind, label)
                    best[key] = max(best.get(key, 0.0), qps)
                    cheapest[key] = min(cheapest.get(key, float("inf")), per_query)
                    print(
                        f"round {round_ + 1}: {kind:>7} {label:>9}: {qps:9.0f} queries/s,"
                        f" {per_query:5.1f} CPU us per query",
                        flush=True,
                    )
    finally:
        for scraper in scrapers:
            scraper.stop()
        for server in servers.values():
            server.stop()
        unbound.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nbest of {args.rounds} x {args.seconds:g} s, export {args.export}:")
    for kind in files:
        on, off = best[(kind, "admin on")], best[(kind, "admin off")]
        capacity = cheapest[(kind, "admin off")] / cheapest[(kind, "admin on")]
        print(
            f"  {kind}: off {off:.0f} q/s, on {on:.0f} q/s: ratio {on / off:.3f}"
            f" (goal >= {GOAL}); CPU per query ratio {capacity:.3f}"
        )
    print(f"  /metrics scraped {scrapers[0].scrapes} times during the runs")
    added = in_process(args.export)
    for kind, extra in added.items():
        base = cheapest[(kind, "admin off")]
        print(
            f"implied capacity ratio, {kind}, at {base:.1f} us per query:"
            f" {base / (base + extra):.3f}"
        )


if __name__ == "__main__":
    main()
