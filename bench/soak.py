"""Soak test, run by hand: misp-dns serving a steady mixed load for minutes while MISP
refreshes every 30 s and a syslog receiver goes up and down.

    .venv/bin/python bench/soak.py [--minutes 10] [--qps 2000] [--warmup 60] [--out bench/out]

What runs (all on loopback, in a temporary directory):
- the integration tests' Unbound (the `test.` zone) as the upstream;
- a MISP stand-in (tests/integration/misp_stand_in.py) holding the real feed of
  ../shared/data (about 60k domains; 5,000 synthetic names without it), to which 20 new
  names are added every 30 s so that every refresh changes the list and saves it to disk;
- misp-dns under twistd, `update_interval = "30s"`, exporting every query to a JSONL file and
  to a syslog TCP receiver that is up 20 s, down 10 s, over and over;
- dnsperf at a steady rate over a query file mixing blocked names (feed names and names
  below them), a few dozen names asked again and again (cache hits), and distinct names
  (forwarded to Unbound).

What it reports (and writes to `<out>/soak-<time>.json` and `.txt`): RSS at start, after the
warm-up and at the end, and the growth between the median of the minute after the warm-up
and the median of the last minute (must stay under 5%; single samples swing by 10 MiB with
each refresh and syslog outage), with the least-squares trend, queries sent,
answered and lost (dnsperf), refreshes that succeeded, records in the JSONL file against
queries answered (must be equal), records the syslog receiver got plus those the server
reported dropped against queries answered (bytes in flight when a connection breaks are
lost uncounted, as the syslog sink documents). The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from integration.hostile_dns import rss_kib  # noqa: E402
from integration.misp_stand_in import MispStandIn, write_config  # noqa: E402
from integration.net import free_port, wait_until  # noqa: E402
from integration.server import MispDnsProcess  # noqa: E402
from integration.unbound import UnboundProcess, integration_config  # noqa: E402
from integration.wire import make_query, udp_exchange  # noqa: E402

__all__ = ["FlappingSyslog", "main"]

FEED = REPO.parent / "shared" / "data" / "misp-feed-infoblox"
API_KEY = "So4Kq8Wx2Zm6Vb0Nt3Hr7Lc1Jp5Gd9Fy3Ue7Ia1O"
REFRESH = 30
CHURN = 20
RSS_GROWTH_LIMIT = 0.05
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )
    if found is None:
        sys.exit(f"soak: {name} is not installed (`make tools` installs it)")
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FlappingSyslog(threading.Thread):
    """A syslog TCP receiver (RFC 6587 octet counting) that is up `up` s, down `down` s."""

    def __init__(self, up: float, down: float) -> None:
        super().__init__(daemon=True)
        self.port = free_port()
        self.up = up
        self.down = down
        self.received = 0
        self.flaps = 0
        self._stopped = threading.Event()
        self._settled = threading.Event()

    def settle(self) -> None:
        """Stop flapping: be up (at once, or after the current down phase) until `stop()`."""
        self._settled.set()

    def stop(self) -> None:
        """Close everything now."""
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.is_set():
            self._serve(time.monotonic() + self.up)
            if self._settled.is_set() or self._stopped.wait(self.down):
                break
            self.flaps += 1
        if not self._stopped.is_set():
            self._serve(float("inf"))

    def _serve(self, until: float) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while time.monotonic() < until and not self._stopped.is_set():
                if self._settled.is_set() and until != float("inf"):
                    until = float("inf")
                readable, _, _ = select.select([listener, *buffers], [], [], 0.1)
                for sock in readable:
                    if sock is listener:
                        connection, _ = listener.accept()
                        buffers[connection] = bytearray()
                        continue
                    data = sock.recv(1 << 16)
                    if not data:
                        sock.close()
                        del buffers[sock]
                        continue
                    buffers[sock] += data
                    self.received += _frames(buffers[sock])
        finally:
            for sock in buffers:
                sock.close()
            listener.close()


def _frames(buffer: bytearray) -> int:
    """Remove the complete `LEN SP MSG` frames from `buffer`; return how many there were."""
    count = 0
    while True:
        space = buffer.find(b" ")
        if space <= 0:
            return count
        length = int(buffer[:space])
        if len(buffer) < space + 1 + length:
            return count
        del buffer[: space + 1 + length]
        count += 1


def _feed_names(limit: int) -> list[str]:
    names = []
    for path in sorted(FEED.glob("*.json")):
        if path.name == "manifest.json":
            continue
        for item in json.loads(path.read_text(encoding="utf-8"))["Event"]["Attribute"]:
            value = item["value"].strip().lower().rstrip(".")
            if item["type"] == "domain" and value.isascii() and " " not in value and value:
                names.append(value)
    random.Random(7).shuffle(names)
    return names[:limit]


def _query_file(path: Path, blocked: list[str], count: int = 60_000) -> dict[str, int]:
    """A third blocked names, a third cached names, a third distinct forwarded names."""
    rng = random.Random(11)
    cached = ["www.test", "nodata.test", "mid.test", *(f"hot{i}.soak.test" for i in range(40))]
    lines = []
    for index in range(count):
        kind = index % 3
        if kind == 0:
            name = rng.choice(blocked)
            name = f"sub{index}.{name}" if index % 2 else name
        elif kind == 1:
            name = rng.choice(cached)
        else:
            name = f"r{index}.soak.test"
        lines.append(f"{name} {rng.choice(['A', 'A', 'AAAA', 'TXT'])}")
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    return {"blocked": count // 3, "cached": count // 3, "forwarded": count // 3}


def _dnsperf_figures(output: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    for key, pattern in {
        "sent": r"Queries sent:\s+(\d+)",
        "completed": r"Queries completed:\s+(\d+)",
        "lost": r"Queries lost:\s+(\d+)",
        "qps": r"Queries per second:\s+([\d.]+)",
        "latency_avg_ms": r"Average Latency \(s\):\s+([\d.]+)",
    }.items():
        found = re.search(pattern, output)
        if found:
            figures[key] = float(found.group(1))
    if "latency_avg_ms" in figures:
        figures["latency_avg_ms"] *= 1000
    return figures


class LatencyProbe(threading.Thread):
    """One query for a cached name every `interval` s; the distribution of answer times."""

    def __init__(self, address: tuple[str, int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.interval = interval
        self.times: list[float] = []
        self.unanswered = 0
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Stop after the current query."""
        self._stopped.set()

    def run(self) -> None:
        wire = make_query("www.test", "A").to_wire()
        while not self._stopped.wait(self.interval):
            asked = time.monotonic()
            if udp_exchange(wire, self.address, timeout=3) is None:
                self.unanswered += 1
            else:
                self.times.append(time.monotonic() - asked)

    def figures(self) -> dict[str, float]:
        """p50, p99 and max in milliseconds, and how many went unanswered."""
        ordered = sorted(self.times) or [0.0]

        def at(share: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 2)

        return {
            "count": len(self.times),
            "p50_ms": at(0.5),
            "p99_ms": at(0.99),
            "max_ms": round(ordered[-1] * 1000, 2),
            "unanswered": self.unanswered,
        }


class _Probe:
    """Counts the soak's own queries, which are answered and exported like dnsperf's."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.answered = 0

    def rcode(self, name: str) -> int | None:
        reply = udp_exchange(make_query(name, "A").to_wire(), self.address, timeout=2)
        if reply is None:
            return None
        self.answered += 1
        return reply[3] & 0x0F


def _log_time(line: str) -> float:
    """The epoch seconds of a twistd log line (it starts with an ISO 8601 time)."""
    from datetime import datetime

    return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


def _median_kib(samples: list[tuple[float, int]], start: float, end: float) -> int:
    """The median RSS of the samples taken in [start, end), in KiB (0 without any)."""
    window = sorted(kib for t, kib in samples if start <= t < end)
    return window[len(window) // 2] if window else 0


def _slope(samples: list[tuple[float, int]], since: float) -> float:
    """The least-squares trend of the RSS samples taken after `since`, in MiB per minute."""
    points = [(t, kib / 1024) for t, kib in samples if t >= since]
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return round(60 * sum((t - mean_t) * (m - mean_m) for t, m in points) / spread, 3)


def _write_config(
    path: Path,
    port: int,
    upstream_port: int,
    workdir: Path,
    misp_url: str,
    key_file: Path,
    receiver: FlappingSyslog,
    refresh: int,
) -> None:
    write_config(
        path,
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"127.0.0.1:{upstream_port}"],
            "server_name": "soak.example",
            "state_dir": str(workdir / "state"),
        },
        [
            {
                "type": "misp",
                "server_url": misp_url,
                "api_key_file": str(key_file),
                "max_ioc_age": "3650d",
                "update_interval": f"{refresh}s",
            }
        ],
        {"max_entries": 20_000},
    )
    with path.open("a") as config:
        config.write(
            f'\n[[export]]\ntype = "jsonl"\npath = "{workdir / "queries.jsonl"}"\n'
            f'\n[[export]]\ntype = "syslog"\naddress = "127.0.0.1:{receiver.port}"\n'
            'protocol = "tcp"\nmax_queue = 20000\n'
        )


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print and save the figures; 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--qps", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS 'start'")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--refresh", type=int, default=REFRESH, help="update_interval in seconds (diagnosis)"
    )
    parser.add_argument("--no-flap", action="store_true", help="keep the receiver up (diagnosis)")
    args = parser.parse_args(argv)
    duration = int(args.minutes * 60)
    warmup = min(args.warmup, duration / 3)
    workdir = Path(tempfile.mkdtemp(prefix="misp-dns-soak-"))
    print(f"soak: {args.minutes:g} min at {args.qps} queries/s; work directory {workdir}")

    upstream_port = free_port()
    (workdir / "unbound").mkdir()
    unbound = UnboundProcess(
        _tool("unbound"),
        integration_config(workdir / "unbound", upstream_port),
        ("127.0.0.1", upstream_port),
    )
    dnsperf = _tool("dnsperf")
    (workdir / "misp").mkdir()
    if (FEED / "manifest.json").exists():
        stand_in = MispStandIn(workdir / "misp", api_key=API_KEY, feed=FEED)
        blocked = _feed_names(20_000)
    else:
        blocked = [f"evil{i}.soak-feed.example" for i in range(5000)]
        stand_in = MispStandIn(
            workdir / "misp", api_key=API_KEY, attributes=[{"value": n} for n in blocked]
        )
    receiver = FlappingSyslog(up=20, down=10)
    if args.no_flap:
        receiver.settle()
    journal = workdir / "queries.jsonl"
    port = free_port()
    key_file = workdir / "misp.key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o600)
    config = workdir / "misp-dns.toml"
    process = MispDnsProcess(config, [("127.0.0.1", port)], workdir / "server")
    (workdir / "server").mkdir()
    report: dict[str, Any] = {"minutes": args.minutes, "qps_asked": args.qps}
    churn_stop = threading.Event()
    try:
        unbound.start()
        stand_in.start()
        _write_config(
            config, port, upstream_port, workdir, stand_in.url, key_file, receiver, args.refresh
        )
        receiver.start()
        process.start(probe="www.test.")
        probe = _Probe(process.address)
        probe.answered = 1  # the start-up probe
        started = time.monotonic()
        wait_until(lambda: probe.rcode(blocked[0]) == 3, 120, 0.5, "the first fetch")
        first_fetch = time.monotonic() - started
        rss_start = rss_kib(process.pid)
        counts = _query_file(workdir / "queries.txt", blocked)
        print(f"soak: first fetch after {first_fetch:.1f} s; RSS {rss_start / 1024:.1f} MiB")

        def churn() -> None:
            batch = 0
            while not churn_stop.wait(args.refresh):
                batch += 1
                stand_in.control(
                    add=[{"value": f"churn{batch}-{i}.soak-new.example"} for i in range(CHURN)]
                )

        threading.Thread(target=churn, daemon=True).start()
        # dnsperf prints a line per timed-out query: into a file, since a pipe nobody reads
        # until the end fills up and stalls it.
        perf_output = (workdir / "dnsperf.txt").open("w+", encoding="utf-8")
        perf = subprocess.Popen(
            [
                dnsperf,
                "-s",
                "127.0.0.1",
                "-p",
                str(port),
                "-d",
                str(workdir / "queries.txt"),
                "-l",
                str(duration),
                "-Q",
                str(args.qps),
                "-q",
                "500",
                "-t",
                "3",
                "-c",
                "4",
            ],
            stdout=perf_output,
            stderr=subprocess.STDOUT,
        )
        latency = LatencyProbe(process.address)
        latency.start()
        samples: list[tuple[float, int]] = []
        cpu_start = _cpu_seconds(process.pid)
        rss_warm = None
        while perf.poll() is None:
            time.sleep(5)
            elapsed = time.monotonic() - started
            if process.running:
                samples.append((round(elapsed, 1), rss_kib(process.pid)))
            if rss_warm is None and elapsed - first_fetch >= warmup:
                rss_warm = samples[-1][1]
                print(f"soak: after the {warmup:.0f} s warm-up RSS {rss_warm / 1024:.1f} MiB")
        perf_output.seek(0)
        output = perf_output.read()
        perf_output.close()
        latency.stop()
        rss_end = rss_kib(process.pid)
        receiver.settle()
        cpu = _cpu_seconds(process.pid) - cpu_start
        churn_stop.set()
        still_blocked = probe.rcode(f"x.{blocked[-1]}") == 3
        time.sleep(12)  # the receiver is back for good: the syslog backlog drains
        log_before_stop = process.log_text(limit=1 << 28)
    finally:
        churn_stop.set()
        process.stop()
        receiver.stop()
        stand_in.stop()
        unbound.stop()
    log = process.log_text(limit=1 << 28)
    perf_figures = _dnsperf_figures(output)
    jsonl_records = sum(1 for _ in journal.open("rb")) if journal.exists() else 0
    answered = int(perf_figures.get("completed", 0)) + probe.answered + len(latency.times)
    syslog_drops = re.findall(
        r"export\[1\] \(syslog\): \d+ query records dropped \((\d+) since", log
    )
    refreshed_at = [
        _log_time(line)
        for line in log_before_stop.splitlines()
        if "distinct names; indicators kept" in line
    ]
    refreshes = len(refreshed_at)
    period = (refreshed_at[-1] - refreshed_at[0]) / (refreshes - 1) if refreshes > 1 else 0.0
    failed_refreshes = log_before_stop.count(": update failed: ")
    rss_warm = rss_warm or rss_start
    # RSS swings by 10 MiB and more with each refresh and each syslog outage (its backlog),
    # so growth compares the medians of the minute after the warm-up and of the last
    # minute, not two single samples that may each fall on a swing.
    warm_end = first_fetch + warmup
    last = samples[-1][0] if samples else warm_end
    median_warm = _median_kib(samples, warm_end, warm_end + 60) or rss_warm
    median_end = _median_kib(samples, last - 60, last + 1) or rss_end
    growth = (median_end - median_warm) / median_warm
    report |= {
        "dnsperf": perf_figures,
        "query_mix": counts,
        "rss_kib": {
            "after_first_fetch": rss_start,
            "after_warmup": rss_warm,
            "end": rss_end,
            "median_minute_after_warmup": median_warm,
            "median_last_minute": median_end,
        },
        "rss_growth_after_warmup": round(growth, 4),
        "rss_samples": samples,
        "server_cpu_seconds": round(cpu, 1),
        "probe_latency": latency.figures(),
        "refreshes_ok": refreshes,
        "refresh_period_s": round(period, 1),
        "rss_slope_mib_per_min_after_warmup": _slope(samples, first_fetch + warmup),
        "refreshes_failed": failed_refreshes,
        "answered": answered,
        "jsonl_records": jsonl_records,
        "syslog_received": receiver.received,
        "syslog_reported_dropped": int(syslog_drops[-1]) if syslog_drops else 0,
        "syslog_flaps": receiver.flaps,
        "still_blocking_at_end": still_blocked,
        "tracebacks_in_log": log.count("Traceback (most recent call last)"),
    }
    report["syslog_unaccounted"] = (
        answered - report["syslog_received"] - report["syslog_reported_dropped"]
    )
    checks = {
        "rss growth after warm-up < 5%": growth < RSS_GROWTH_LIMIT,
        "no query lost": perf_figures.get("lost", 1) == 0 and latency.unanswered == 0,
        "every answered query in the JSONL file": jsonl_records == answered,
        # A cycle starts update_interval after the previous one ended (cycles never overlap).
        "MISP refreshed all along, never failing": (
            refreshes >= duration // (2 * args.refresh) and failed_refreshes == 0
        ),
        "still blocking at the end": still_blocked,
        "no traceback in the server log": report["tracebacks_in_log"] == 0,
    }
    report["checks"] = checks
    lines = [
        f"soak of {args.minutes:g} min at {args.qps} queries/s asked "
        f"({perf_figures.get('qps', 0):.0f} achieved, "
        f"avg latency {perf_figures.get('latency_avg_ms', 0):.2f} ms)",
        "queries: {sent:.0f} sent, {completed:.0f} answered, {lost:.0f} lost".format(
            **({"sent": 0, "completed": 0, "lost": 0} | perf_figures)
        ),
        f"RSS: {rss_start / 1024:.1f} MiB after the first fetch, {rss_warm / 1024:.1f} MiB after "
        f"the warm-up, {rss_end / 1024:.1f} MiB at the end; median {median_warm / 1024:.1f} MiB "
        f"in the minute after the warm-up, {median_end / 1024:.1f} MiB in the last minute "
        f"({growth * 100:+.2f}%; trend {report['rss_slope_mib_per_min_after_warmup']:+.2f} "
        "MiB/min)",
        f"server CPU: {cpu:.0f} s over the run",
        "a cached name asked every 50 ms alongside: p50 {p50_ms} ms, p99 {p99_ms} ms, "
        "max {max_ms} ms, {unanswered} unanswered".format(**latency.figures()),
        f"MISP refreshes: {refreshes} succeeded, {failed_refreshes} failed, one every "
        f"{period:.1f} s ({CHURN} names added every {args.refresh} s)",
        f"records: {answered} answered; JSONL {jsonl_records}; syslog received "
        f"{receiver.received} + {report['syslog_reported_dropped']} reported dropped "
        f"({report['syslog_unaccounted']} in flight at {receiver.flaps} receiver outages)",
        *(f"check: {'ok  ' if ok else 'FAIL'} {name}" for name, ok in checks.items()),
    ]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"soak-{stamp}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"soak-{stamp}.txt").write_text("\n".join(lines) + "\n")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
