"""Goals 4 and 5: a million indicators from a MISP REST stand-in.

One misp-dns with a `misp` policy (`pagination_limit` left at its default, so the fetch is
200 pages of 5,000) pointing at `misp_standin.py`, which serves `--million` domain
attributes. In order:

1. the first full fetch: peak RSS (VmHWM), the RSS once loaded and saved, with an RSS
   sample every 50 ms to say when the peak came;
2. a steady 10,000 queries/s (allowed names from the cache and blocked names, half of them
   subdomains) from before the next refresh (`update_interval = "1m"`) until well after it:
   the stand-in changes 1% of the values, so the refresh fetches, builds, swaps and saves a
   new snapshot; dnsperf -v gives every answer's latency; a thread notes when a changed
   value starts being blocked (the swap); Unbound at the same rate is the reference;
3. restart with MISP down: from spawn to the first blocked answer, served from the disk
   cache, and the RSS of that fresh process once loaded;
4. Unbound with the same names as `always_nxdomain` local zones: time to its first
   NXDOMAIN and its RSS; then PowerDNS Recursor and dnsmasq holding them (`peers.py`),
   their RSS beside misp-dns's;
5. the cost of one lookup with 1k and 1M indicators, by bench/bench_domainset.py (its
   `build` and `lookups` children; it owns that measurement).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from corpus import allowed_names, blocked_queries, indicators, write_queries
from harness import Bench, Figure, parse_dnsperf, stop_process, write_misp_dns_config
from integration.net import free_port
from integration.server import misp_dns_command
from integration.unbound import base_server_lines, write_config
from misp_standin import CHANGED_SHARE, changed_value
from peers import peer_memory
from probe import NOERROR, NXDOMAIN, MemoryWatch, memory_mib, rcode, wait_for_rcode
from profiling import OUT, record, summarise

__all__ = ["million"]

API_KEY = "b3nchb3nchb3nchb3nchb3nchb3nchb3nchb3nc"
RATE = 10_000
SLOW_MS = 50.0
HERE = Path(__file__).resolve().parent


def _spawn(command: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _wait_for_line(path: Path, word: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and word in path.read_text():
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited:\n{path.read_text()[-2000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no {word!r} in {path} within {timeout} s")


def _pages(log: Path) -> dict[int, tuple[float, float, int]]:
    """Round -> (unix time of its first page, of its last (empty) page, pages served)."""
    rounds: dict[int, list[float]] = {}
    ends: dict[int, float] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[1] == "page":
            stamp, number, attributes = float(parts[0]), int(parts[4]), int(parts[6])
            rounds.setdefault(number, []).append(stamp)
            if attributes == 0:
                ends[number] = stamp
    return {n: (s[0], ends.get(n, s[-1]), len(s)) for n, s in rounds.items()}


class _Clock:
    """Maps unix times (the stand-in's log) to this process's monotonic clock."""

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()

    def monotonic(self, unix: float) -> float:
        return unix - self.offset


def _domainset_child(mode: str, counts: list[int], directory: Path, bench: Bench) -> Any:
    command = [sys.executable, str(HERE / "bench_domainset.py"), "--child", mode, str(directory)]
    command = bench.on_server_cpu(command + [str(count) for count in counts])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _child_result(process: subprocess.Popen[str]) -> Any:
    output, errors = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"bench_domainset failed:\n{errors[-2000:]}")
    return json.loads(output.splitlines()[-1])


class _SwapWatch:
    """Polls a name every 100 ms; notes when it is first blocked."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.address = address
        self.name = name
        self.blocked_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if rcode(self.address, self.name, timeout=0.5) == NXDOMAIN:
                self.blocked_at = time.monotonic()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _per_second(output: str) -> list[tuple[float, int, int, float]]:
    """dnsperf `-v -S 1` output as one bucket per second: (unix time at its end, answers,
    answers over SLOW_MS, slowest ms). `-v` prints `> RCODE name type seconds` per answer,
    `-S 1` a `<unix time>: <qps>` line every second."""
    buckets: list[tuple[float, int, int, float]] = []
    count = slow = 0
    worst = 0.0
    for line in output.splitlines():
        if line.startswith("> "):
            try:
                latency = float(line.rsplit(" ", 1)[1]) * 1000
            except ValueError:  # a line cut by the -S output printed from another thread
                continue
            count += 1
            slow += latency > SLOW_MS
            worst = max(worst, latency)
        elif line[:1].isdigit() and ": " in line:
            stamp = line.split(":", 1)[0]
            try:
                buckets.append((float(stamp), count, slow, worst))
            except ValueError:
                continue
            count = slow = 0
            worst = 0.0
    if count:
        end = buckets[-1][0] + 1 if buckets else 0.0
        buckets.append((end, count, slow, worst))
    return buckets


def _steady_run(
    bench: Bench, port: int, queries: Path, seconds: float, output: Path
) -> subprocess.Popen[bytes]:
    command = bench.dnsperf_command(port, queries, seconds=seconds, rate=RATE, verbose=True)
    command += ["-S", "1"]
    with output.open("wb") as file:
        return subprocess.Popen(command, stdout=file, stderr=subprocess.STDOUT)


def million(bench: Bench) -> None:
    """Goals 4 (memory, restart, lookup cost) and 5 (refresh under load)."""
    count = bench.args.million
    folder = bench.workdir / "million"
    (folder / "state").mkdir(parents=True)
    clock = _Clock()
    fetch_note = refresh_note = ""

    # Lookup-cost snapshots are built on the (idle) server CPU while the stand-in builds.
    domainsets = folder / "domainset"
    domainsets.mkdir()
    builders = [_domainset_child("build", [n], domainsets, bench) for n in (1000, count)]
    standin_port = free_port()
    standin_log = folder / "standin.log"
    bench.say(f"million: MISP stand-in building {count:,} attributes")
    standin = _spawn(
        bench.on_client_cpu(
            [
                sys.executable,
                str(HERE / "misp_standin.py"),
                "--port",
                str(standin_port),
                "--count",
                str(count),
                "--allowed",
                str(len(bench.allowed)),
                "--api-key",
                API_KEY,
            ]
        ),
        folder,
        standin_log,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        names = indicators(count, allowed_names(len(bench.allowed)))
        # The last name the stand-in never changes: beyond the indicators the shared Unbound
        # blocks, so misp-dns answers NXDOMAIN for it only once it holds the fetched set.
        probe = names[-(count // CHANGED_SHARE) - 1]
        _wait_for_line(standin_log, "ready", standin, 300)
        for builder in builders:
            _child_result(builder)

        # 1. The first full fetch.
        port = free_port()
        address = ("127.0.0.1", port)
        policy = {
            "type": "misp",
            "server_url": f"http://127.0.0.1:{standin_port}",
            "api_key": API_KEY,
            "update_interval": "1m",
            "max_ioc_age": "36500d",
        }
        config = write_misp_dns_config(
            folder / "misp-dns.toml", bench.server_sections(folder, port), [policy]
        )
        log = folder / "twistd.log"
        bench.say("million: misp-dns fetching from the stand-in")
        spawned = time.monotonic()
        server = _spawn(bench.on_server_cpu(misp_dns_command(config)), folder, log)
        watch = MemoryWatch(server.pid).start()
        wait_for_rcode(address, bench.allowed[0], NOERROR, 60, interval=0.01, alive=server)
        started_rss = memory_mib(server.pid)
        loaded = wait_for_rcode(address, probe, NXDOMAIN, 900, interval=0.1, alive=server)
        fetch_seconds = loaded - spawned
        snapshot = _wait_for_snapshot(folder / "state", server, 120)
        saved = time.monotonic()
        time.sleep(3)
        rss_loaded = memory_mib(server.pid)
        peak_fetch = memory_mib(server.pid, "VmHWM")
        peak_time, _ = watch.peak()
        first = _pages(standin_log).get(1)
        if first is not None:
            fetch_start, fetch_end = clock.monotonic(first[0]), clock.monotonic(first[1])
            fetch_note = (
                f"first fetch: {first[2]} pages in {fetch_end - fetch_start:.1f} s, blocking"
                f" {loaded - fetch_start:.1f} s after the first page (parse, normalise, build),"
                f" snapshot {snapshot.stat().st_size / 2**20:.0f} MiB saved"
                f" {saved - fetch_start:.1f} s after it; RSS {started_rss:.0f} MiB before the"
                f" fetch, {watch.at(fetch_end):.0f} MiB at its last page, peak"
                f" {peak_fetch:.0f} MiB at +{peak_time - fetch_start:.1f} s"
            )
        bench.say(
            f"million: loaded after {fetch_seconds:.1f} s; RSS {rss_loaded:.0f} MiB,"
            f" peak {peak_fetch:.0f} MiB"
        )

        # 2. Refresh under a steady load. The next cycle starts `update_interval` after the
        # save; meanwhile: warm the cache, measure Unbound at the same rate.
        refresh_at = saved + 60
        usable = names[: count - count // CHANGED_SHARE]
        sample = random.Random(11).sample(usable, min(len(usable), 10_000))
        mixed = blocked_queries(sample) + bench.allowed
        random.Random(12).shuffle(mixed)
        mixed_file = write_queries(folder / "refresh-queries.txt", mixed)
        bench.run_dnsperf("refresh", "misp-dns", port, mixed_file, warmup=True, rate=RATE)
        theirs = _unbound_steady(bench, folder)
        window = 15 + 3.0 * fetch_seconds + 30  # at most; stopped 10 s after the swap
        delay = refresh_at - 15 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        bench.say(f"million: {RATE:,} q/s from 15 s before the refresh to 10 s after its swap")
        swap = _SwapWatch(address, changed_value(names[-1], 2))
        hwm_before = memory_mib(server.pid, "VmHWM")
        steady_output = folder / "refresh-dnsperf.txt"
        window_start = time.monotonic()
        steady = _steady_run(bench, port, mixed_file, window, steady_output)
        sampler = None
        if getattr(bench.args, "profile", False):
            OUT.mkdir(parents=True, exist_ok=True)
            sampler = record(server.pid, window, OUT / "profile-refresh.collapsed", rate=100)
        # Stop 10 s after the swap, before the next cycle (a minute after this one) begins.
        while steady.poll() is None and time.monotonic() < window_start + window + 120:
            if swap.blocked_at is not None and time.monotonic() > swap.blocked_at + 10:
                steady.send_signal(signal.SIGINT)  # dnsperf stops and prints its statistics
                if sampler is not None:
                    sampler.send_signal(signal.SIGINT)  # py-spy writes what it has
                break
            time.sleep(0.2)
        steady.wait(60)
        window_end = time.monotonic()
        swap.stop()
        if sampler is not None:
            sampler.wait(60)
            text, _ = summarise(OUT / "profile-refresh.collapsed")
            (OUT / "profile-refresh.txt").write_text(f"refresh under {RATE} q/s\n{text}\n")
            bench.profiles["refresh"] = text
        peak_all = memory_mib(server.pid, "VmHWM")
        watch.stop()
        output = steady_output.read_text()
        summary = parse_dnsperf(output)
        buckets = _per_second(output)
        slow_total = sum(bucket[2] for bucket in buckets)
        second = _pages(standin_log).get(2)
        covered = (
            second is not None
            and clock.monotonic(second[0]) > window_start
            and swap.blocked_at is not None
            and swap.blocked_at < window_end
        )
        timeline = ""
        if second is not None:
            # Times relative to the refresh's first page request (the stand-in's clock).
            origin = second[0]
            timeline = f"refresh: {second[2]} pages fetched in {second[1] - origin:.1f} s"
            if swap.blocked_at is not None:
                swapped = swap.blocked_at + clock.offset - origin
                timeline += f", new snapshot served {swapped:.1f} s after the first page"
            slowest = sorted(buckets, key=lambda bucket: -bucket[3])[:6]
            if slow_total:
                timeline += (
                    f"; {slow_total} answers over {SLOW_MS:.0f} ms; slowest seconds (end time"
                    " relative to the first page: answers over, max): "
                    + ", ".join(
                        f"{end - origin:+.0f} s: {over}, {most:.0f} ms"
                        for end, _, over, most in sorted(slowest)
                        if over
                    )
                )
        refresh_note = (
            f"{timeline}; peak RSS {hwm_before:.0f} MiB before the refresh, {peak_all:.0f} MiB"
            " after it"
        )
        bench.say(
            f"million: refresh run max {summary['max_latency_ms']:.1f} ms,"
            f" lost {int(summary['lost'])}, {slow_total} over {SLOW_MS:.0f} ms"
        )
        stop_process(server)
        server = None

        # 3. Restart with MISP down.
        stop_process(standin)
        bench.say("million: restart with MISP down")
        spawned = time.monotonic()
        server = _spawn(bench.on_server_cpu(misp_dns_command(config)), folder, log)
        blocked_at = wait_for_rcode(address, probe, NXDOMAIN, 60, interval=0.002, alive=server)
        restart_seconds = blocked_at - spawned
        time.sleep(3)
        rss_restart = memory_mib(server.pid)
        peak_restart = memory_mib(server.pid, "VmHWM")
        stop_process(server)
        server = None

        # 4. Unbound holding the same names.
        unbound_seconds, unbound_rss, unbound_peak = _unbound_million(bench, folder, names)
        peer_rss = peer_memory(bench, folder, names, rss_loaded)  # issue 17, item 6

        # 5. Lookup cost with 1k and 1M indicators (server CPU, nothing else running).
        bench.say("million: lookup cost, 1k vs 1M (bench_domainset.py)")
        costs = _child_result(_domainset_child("lookups", [1000, count], domainsets, bench))
    finally:
        if server is not None:
            stop_process(server)
        stop_process(standin)

    reference = f"Unbound {unbound_rss:.0f} MiB"
    bench.figure(
        Figure(
            "4a",
            f"RSS with {count:,} indicators loaded, after a fetch from MISP",
            f"{rss_loaded:.0f} MiB",
            reference,
            f"{rss_loaded:.0f} MiB",
            "<= 200 MiB",
            rss_loaded <= 200,
        )
    )
    bench.figure(
        Figure(
            "4a",
            f"RSS with {count:,} indicators loaded, restarted from the disk cache",
            f"{rss_restart:.0f} MiB",
            reference,
            f"{rss_restart:.0f} MiB",
            "<= 200 MiB",
            rss_restart <= 200,
            f"peak while loading {peak_restart:.0f} MiB",
        )
    )
    bench.figure(
        Figure(
            "4b",
            f"peak RSS (VmHWM) of a full fetch of {count:,} from MISP, refresh included",
            f"{peak_all:.0f} MiB",
            f"Unbound {unbound_peak:.0f} MiB",
            f"{peak_all:.0f} MiB",
            "<= 400 MiB",
            peak_all <= 400,
            f"{peak_fetch:.0f} MiB after the first fetch; {fetch_note}",
        )
    )
    bench.figure(
        Figure(
            "4c",
            "restart with MISP down to the first blocked answer (disk cache)",
            f"{restart_seconds:.2f} s",
            f"Unbound {unbound_seconds:.2f} s",
            f"{restart_seconds:.2f} s",
            "<= 3 s",
            restart_seconds <= 3.0,
        )
    )
    for figure in peer_rss:
        bench.figure(figure)
    small, large = costs["1000"], costs[str(count)]
    ratios = {
        mix: large[f"{mix} ns"] / small[f"{mix} ns"]
        for mix in ("hit", "subdomain hit", "miss")
        if f"{mix} ns" in small and f"{mix} ns" in large
    }
    worst = max(ratios.values())
    bench.figure(
        Figure(
            "4d",
            f"cost of one lookup, {count:,} vs 1,000 indicators (DomainSet.match)",
            ", ".join(f"{mix} {large[f'{mix} ns']:.0f} ns" for mix in ratios),
            "1k: " + ", ".join(f"{mix} {small[f'{mix} ns']:.0f} ns" for mix in ratios),
            f"{worst:.2f}x (worst mix)",
            "the same (<= 1.25x, noise allowance)",
            worst <= 1.25,
            _lookup_note(ratios, large),
        )
    )
    note = refresh_note + (
        "" if covered else "; WARNING: the refresh did not fall inside the measured window"
    )
    bench.figure(
        Figure(
            "5",
            f"slowest answer during a full refresh of {count:,}, steady {RATE:,} q/s",
            f"{summary['max_latency_ms']:.1f} ms max, {int(summary['lost'])} lost"
            f" of {int(summary['sent']):,}",
            f"Unbound {theirs['max_latency_ms']:.1f} ms max, {int(theirs['lost'])} lost",
            f"{summary['max_latency_ms']:.1f} ms, {int(summary['lost'])} lost",
            f"<= {SLOW_MS:.0f} ms, none lost",
            covered and summary["max_latency_ms"] <= SLOW_MS and summary["lost"] == 0,
            note.strip("; "),
        )
    )


def _lookup_note(ratios: dict[str, float], large: dict[str, Any]) -> str:
    note = ", ".join(f"{mix} {ratio:.2f}x" for mix, ratio in ratios.items())
    note += (
        "; bench_domainset.py's hit mixes cycle over 1,000 names, fewer than DomainSet's match"
        " memo holds, so they time the hash probe plus a memo hit"
    )
    distinct = large.get("hit, 50k distinct ns")
    if distinct:
        note += (
            f"; with 50,000 distinct hits (memo misses, a Match built each time) a hit costs"
            f" {distinct:.0f} ns at the large size (no such mix exists at 1k)"
        )
    return note


def _wait_for_snapshot(state: Path, process: subprocess.Popen[bytes], timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in state.glob("*.snapshot") if p.stat().st_size > 0]
        if found:
            return found[0]
        if process.poll() is not None:
            raise RuntimeError("misp-dns exited before saving its snapshot")
        time.sleep(0.1)
    raise TimeoutError(f"no snapshot in {state} within {timeout} s")


def _unbound_steady(bench: Bench, folder: Path) -> dict[str, float]:
    """The shared Unbound at the same steady rate, over its own mix of names."""
    mixed = blocked_queries(bench.indicators, 10_000) + bench.allowed
    random.Random(13).shuffle(mixed)
    queries = write_queries(folder / "unbound-steady.txt", mixed)
    output = folder / "unbound-steady.txt.out"
    run = _steady_run(bench, bench.unbound_address[1], queries, 15, output)
    run.wait(200)
    return parse_dnsperf(output.read_text())


def _unbound_million(bench: Bench, folder: Path, names: list[str]) -> tuple[float, float, float]:
    """Unbound with `names` as always_nxdomain zones: seconds to first NXDOMAIN, RSS, peak."""
    directory = folder / "unbound-million"
    directory.mkdir()
    port = free_port()
    zones = [f'local-zone: "{name}" always_nxdomain' for name in names]
    conf = write_config(directory, [*base_server_lines(directory, port), "verbosity: 0", *zones])
    bench.say(f"million: Unbound loading {len(names):,} local zones")
    spawned = time.monotonic()
    process = _spawn(
        bench.on_server_cpu([bench.unbound_binary, "-d", "-c", str(conf)]),
        directory,
        directory / "unbound.log",
    )
    try:
        answered = wait_for_rcode(
            ("127.0.0.1", port), names[0], NXDOMAIN, 300, interval=0.005, alive=process
        )
        time.sleep(1)
        return answered - spawned, memory_mib(process.pid), memory_mib(process.pid, "VmHWM")
    finally:
        stop_process(process)
