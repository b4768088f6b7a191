"""Benchmark misp-dns against a real Unbound with dnsperf, over the same query file.

    .venv/bin/python bench/run.py [--seconds N] [--names N] [--scenario cached ...]

Unbound (one thread) holds local data for N names; misp-dns is started the way users start it,
`twistd -n --pidfile= misp-dns --config PATH`, forwarding to that Unbound. Each scenario
prints queries per second of each server and the ratio misp-dns / Unbound; the table also
goes to bench/out/. See bench/README.md.

Scenarios are functions `(Bench) -> list[Measurement]` registered in SCENARIOS; add new ones
(blocked answers, sinks on, ...) there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from integration.net import free_port  # noqa: E402
from integration.server import (  # noqa: E402
    MispDnsProcess,
    misp_dns_command,
    stock_command,
    write_toml,
)
from integration.unbound import UnboundProcess, base_server_lines, write_config  # noqa: E402

__all__ = ["SCENARIOS", "Bench", "Measurement", "main"]

OUT = REPO / "bench" / "out"
NAMES_FILE = REPO.parent / "shared" / "data" / "warninglists" / "cloudflare-top100k.json"
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


@attrs.frozen
class Measurement:
    """One dnsperf run against one server."""

    scenario: str
    target: str
    qps: float
    lost_percent: float
    latency_ms: float
    noerror_percent: float


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )
    if found is None:
        sys.exit(f"bench: {name} is not installed (`make tools` installs the Debian packages)")
    return found


def _names(count: int) -> list[str]:
    """`count` real domain names (Cloudflare top list) or, without that file, made-up ones."""
    names: list[str] = []
    if NAMES_FILE.exists():
        listed = json.loads(NAMES_FILE.read_text())["list"]
        pattern = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
        names = [n.lower() for n in listed if pattern.match(n.lower())][:count]
    names += [f"host{i}.bench.example" for i in range(len(names), count)]
    return names


def _parse_dnsperf(output: str) -> tuple[float, float, float, float]:
    def number(label: str) -> float:
        match = re.search(rf"{label}:\s+([\d.]+)", output)
        if match is None:
            raise RuntimeError(f"dnsperf printed no {label!r}:\n{output}")
        return float(match.group(1))

    lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", output)
    noerror = re.search(r"NOERROR \d+ \(([\d.]+)%\)", output)
    return (
        number("Queries per second"),
        float(lost.group(1)) if lost else 0.0,
        number(r"Average Latency \(s\)") * 1000,
        float(noerror.group(1)) if noerror else 0.0,
    )


@attrs.define
class Bench:
    """What every scenario shares: tools, the work folder, Unbound, the query file."""

    args: argparse.Namespace
    workdir: Path
    dnsperf: str
    unbound: UnboundProcess
    names: list[str]
    query_file: Path
    server_cpu: str | None
    client_cpu: str | None

    def pin(self, pid: int) -> None:
        """Pin a server process (and its threads) to the server CPU, when pinning is on."""
        if self.server_cpu is not None:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", self.server_cpu, str(pid)],
                check=True,
                stdout=subprocess.DEVNULL,
            )

    def run_dnsperf(
        self, scenario: str, target: str, port: int, seconds: float, warmup: bool = False
    ) -> Measurement:
        """Drive 127.0.0.1:port with dnsperf over the query file; `warmup` runs it once."""
        command = [
            self.dnsperf,
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(self.query_file),
            "-c",
            str(self.args.clients),
            "-q",
            str(self.args.outstanding),
            "-t",
            "2",
        ]
        command += ["-n", "1"] if warmup else ["-l", str(seconds)]
        if self.client_cpu is not None:
            command = ["taskset", "-c", self.client_cpu, *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"dnsperf failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        qps, lost, latency, noerror = _parse_dnsperf(done.stdout)
        return Measurement(scenario, target, qps, lost, latency, noerror)

    @contextlib.contextmanager
    def misp_dns(
        self,
        name: str,
        extra: dict[str, Any] | None = None,
        command: Callable[[Path], list[str]] = misp_dns_command,
    ) -> Iterator[MispDnsProcess]:
        """misp-dns under twistd (or `command`), forwarding to Unbound, pinned; stopped on
        exit. `extra` adds or overrides config keys per section."""
        folder = self.workdir / name
        (folder / "state").mkdir(parents=True)
        port = free_port()
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "listen": [f"127.0.0.1:{port}"],
                "upstreams": [f"127.0.0.1:{self.unbound.address[1]}"],
                "state_dir": str(folder / "state"),
            },
            "cache": {"max_entries": max(100_000, 2 * len(self.names))},
        }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        config = write_toml(folder / "misp-dns.toml", sections)
        process = MispDnsProcess(config, [("127.0.0.1", port)], folder, command)
        process.start(probe=self.names[0])
        try:
            self.pin(process.pid)
            yield process
        finally:
            process.stop()


def cached_answer(bench: Bench) -> list[Measurement]:
    """Every query is a cache hit: misp-dns after one warm-up pass vs Unbound's local data."""
    seconds = bench.args.seconds
    unbound = bench.run_dnsperf("cached-answer", "unbound", bench.unbound.address[1], seconds)
    with bench.misp_dns("cached") as server:
        bench.run_dnsperf("cached-answer", "misp-dns", server.address[1], seconds, warmup=True)
        ours = bench.run_dnsperf("cached-answer", "misp-dns", server.address[1], seconds)
    return [unbound, ours]


def stock_cached_answer(bench: Bench) -> list[Measurement]:
    """The cached-answer scenario for Twisted's stock DNSServerFactory, as a reference."""
    seconds = bench.args.seconds
    with bench.misp_dns("stock", command=stock_command) as server:
        bench.run_dnsperf("stock-cached", "stock", server.address[1], seconds, warmup=True)
        stock = bench.run_dnsperf("stock-cached", "stock", server.address[1], seconds)
    unbound = bench.run_dnsperf("stock-cached", "unbound", bench.unbound.address[1], seconds)
    return [unbound, stock]


SCENARIOS: dict[str, Callable[[Bench], list[Measurement]]] = {
    "cached": cached_answer,
    "stock": stock_cached_answer,
}


def _cpus(pin: bool) -> tuple[str | None, str | None]:
    if not pin or shutil.which("taskset") is None:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return str(available[0]), ",".join(str(c) for c in available[1:])


def _table(rows: list[Measurement]) -> str:
    lines = [
        f"{'scenario':<16}{'server':<10}{'queries/s':>12}{'lost %':>9}"
        f"{'latency ms':>12}{'NOERROR %':>11}{'ratio':>8}",
    ]
    reference: dict[str, float] = {}
    for row in rows:
        if row.target == "unbound":
            reference[row.scenario] = row.qps
        base = reference.get(row.scenario)
        ratio = f"{row.qps / base:.3f}" if base else "-"
        lines.append(
            f"{row.scenario:<16}{row.target:<10}{row.qps:>12.0f}{row.lost_percent:>9.2f}"
            f"{row.latency_ms:>12.3f}{row.noerror_percent:>11.2f}{ratio:>8}"
        )
    return "\n".join(lines)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each measured run")
    parser.add_argument("--names", type=int, default=10_000, help="names in Unbound and the file")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="scenario to run (repeatable; default: cached)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print the table and write it to bench/out/."""
    args = _arguments(argv)
    if not 1 <= args.seconds <= 600:
        sys.exit("bench: --seconds must be within 1..600")
    dnsperf = _tool("dnsperf")
    unbound_binary = _tool("unbound")
    server_cpu, client_cpu = _cpus(not args.no_pin)
    OUT.mkdir(parents=True, exist_ok=True)
    names = _names(args.names)
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="misp-dns-bench-") as temp:
        workdir = Path(temp)
        query_file = workdir / "queries.txt"
        query_file.write_text("".join(f"{name} A\n" for name in names))
        port = free_port()
        local = [
            f'local-data: "{name}. 3600 IN A 192.0.2.{index % 250 + 1}"'
            for index, name in enumerate(names)
        ]
        conf = write_config(workdir, [*base_server_lines(workdir, port), "verbosity: 0", *local])
        unbound = UnboundProcess(unbound_binary, conf, ("127.0.0.1", port), probe=names[0])
        unbound.start(timeout=60)
        try:
            bench = Bench(
                args, workdir, dnsperf, unbound, names, query_file, server_cpu, client_cpu
            )
            bench.pin(unbound.pid)
            for scenario in args.scenario or ["cached"]:
                rows.extend(SCENARIOS[scenario](bench))
        finally:
            unbound.stop()
    table = _table(rows)
    pinning = f"servers on CPU {server_cpu}, dnsperf on CPU {client_cpu}" if server_cpu else "off"
    header = (
        f"misp-dns benchmark {time.strftime('%Y-%m-%d %H:%M:%S')}: {len(names)} names, "
        f"{args.seconds:g} s per run, dnsperf -c {args.clients} -q {args.outstanding}, "
        f"pinning {pinning}"
    )
    report = f"{header}\n{table}\n"
    print(report, end="")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"bench-{stamp}.txt").write_text(report)
    (OUT / f"bench-{stamp}.json").write_text(
        json.dumps({"header": header, "rows": [attrs.asdict(r) for r in rows]}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
