"""The `workers` scenario (issue 17, item 4): `[server] workers = 1` against `workers = 2`.

Both servers load the blocked scenario's feed and run side by side, neither pinned to a CPU
(so that two serving processes can use both; dnsperf shares them), and are asked in
alternating rounds over the hot blocked names and over the allowed names from the cache,
with `CLIENTS` dnsperf sockets so that the kernel's SO_REUSEPORT hash spreads them over the
serving processes. Each figure gives queries/s and the CPU time per answer summed over the
whole group (supervisor and serving processes, `harness.cpu_seconds`), from which
bench/README.md's capacity model takes queries/s per core.

Then memory: a server holding `--million` indicators from a feed, with 1 and with 4
serving processes, each measured once every serving process blocks: the group's RSS and
PSS (`/proc/PID/smaps_rollup`, PSS counting a page shared by k processes as 1/k in each,
so their sum is what the group costs), beside the same group with no indicator at all,
so that the indicators' own share shows. The verdict is on that share (what sharing the
snapshot is for); the whole group's figure beside it also counts each serving process's
interpreter (about 40 MiB of PSS each, Twisted and OpenSSL's bindings mostly).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rdataclass
import dns.rdatatype
from corpus import indicators, write_feed
from harness import Bench, Figure, Measurement, descendants
from probe import blocked_here

__all__ = ["workers"]

#: dnsperf sockets: enough client ports for the kernel to spread over the processes.
CLIENTS = 16
#: The goal of issue 17 item 4 for memory: 4 serving processes at most 1.5x one.
MEMORY_GOAL = 1.5


def _ask(sock: socket.socket, query: dns.message.Message) -> bytes | None:
    for _ in range(3):
        sock.send(query.to_wire())
        try:
            return sock.recv(65535)
        except TimeoutError:
            continue
    return None


def _identity(sock: socket.socket) -> str | None:
    data = _ask(sock, dns.message.make_query("id.server", "TXT", "CH"))
    if data is None:
        return None
    answer = dns.message.from_wire(data).answer
    return b"".join(answer[0][0].strings).decode() if answer else None


def wait_for_group(address: tuple[str, int], processes: int, blocked: str, timeout: float) -> None:
    """Return once `processes` serving processes answer (told apart by id.server) and each
    blocks `blocked` itself."""
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    while len(ready) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sorted(ready)} of {processes} processes ready")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            sock.connect(address)
            identity = _identity(sock)
            if identity is None or identity in ready:
                continue
            query = dns.message.make_query(blocked, "A", use_edns=0)
            if blocked_here(_ask(sock, query)):
                ready.add(identity)


def group_memory(pid: int) -> tuple[float, float]:
    """RSS and PSS in MiB of `pid` and every process under it (a whole group)."""
    rss = pss = 0.0
    for member in [pid, *descendants(pid)]:
        for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
            field, _, value = line.partition(":")
            if field == "Rss":
                rss += int(value.split()[0]) / 1024
            elif field == "Pss":
                pss += int(value.split()[0]) / 1024
    return rss, pss


def _per_core(measurement: Measurement) -> str:
    if not measurement.cpu_us:
        return "-"
    return f"{1e6 / measurement.cpu_us:,.0f} q/s per core"


def _throughput(bench: Bench) -> None:
    probe = bench.indicators[-1]
    policies = [bench.feed_policy()]
    with (
        bench.misp_dns(
            "workers-1",
            policies=policies,
            blocked_probe=probe,
            timeout=180,
            server={"workers": 1},
            pinned=False,
        ) as one,
        bench.misp_dns(
            "workers-2",
            policies=policies,
            blocked_probe=probe,
            timeout=180,
            server={"workers": 2},
            pinned=False,
        ) as two,
    ):
        wait_for_group(two.address, 2, probe, 180)
        targets = [
            ("workers=1", one.address[1], one.pid),
            ("workers=2", two.address[1], two.pid),
        ]
        results: dict[str, dict[str, Measurement]] = {}
        for scenario, queries in (
            ("workers-blocked", bench.files["blocked-hot"]),
            ("workers-cached", bench.files["allowed"]),
        ):
            for label, port, _ in targets:
                bench.run_dnsperf(scenario, label, port, queries, warmup=True, clients=CLIENTS)
            results[scenario] = bench.rotate(scenario, targets, queries, clients=CLIENTS)
    for scenario, what in (
        ("workers-blocked", "blocked answers, 1,000 hot indicators"),
        ("workers-cached", "cached answers for allowed names"),
    ):
        single, pair = results[scenario]["workers=1"], results[scenario]["workers=2"]
        ratio = pair.qps / single.qps if single.qps else 0.0
        bench.figure(
            Figure(
                "17.4",
                f"workers = 2 vs 1: {what} ({len(bench.indicators):,} indicators loaded,"
                f" {CLIENTS} client sockets, servers not pinned)",
                f"{pair.qps:,.0f} q/s",
                f"workers = 1 {single.qps:,.0f} q/s",
                f"{ratio:.2f}x",
                "-",
                None,
                f"CPU per answer, whole group: workers = 1 {single.cpu_us:.1f} us"
                f" ({_per_core(single)}), workers = 2 {pair.cpu_us:.1f} us"
                f" ({_per_core(pair)})",
            )
        )


def _memory(bench: Bench) -> None:
    names = indicators(bench.args.million, bench.allowed, seed=11)
    feed = write_feed(bench.workdir / "workers-million-feed", names)
    empty = write_feed(bench.workdir / "workers-empty-feed", [])
    found: dict[tuple[int, bool], tuple[float, float]] = {}
    for processes in (1, 4):
        for loaded in (False, True):
            policy: dict[str, Any] = {**bench.feed_policy(), "url": str(feed if loaded else empty)}
            name = f"workers-memory-{processes}-{'loaded' if loaded else 'empty'}"
            with bench.misp_dns(
                name,
                policies=[policy],
                blocked_probe=names[-1] if loaded else None,
                timeout=900,
                server={"workers": processes},
                pinned=False,
            ) as server:
                if loaded:
                    wait_for_group(server.address, processes, names[-1], 900)
                else:
                    time.sleep(5)  # the serving processes started and settled
                time.sleep(2)
                found[processes, loaded] = group_memory(server.pid)
                rss, pss = found[processes, loaded]
                bench.say(f"{name}: RSS {rss:.0f} MiB, PSS {pss:.0f} MiB")
    one_pss = found[1, True][1]
    four_pss = found[4, True][1]
    share_one = one_pss - found[1, False][1]
    share_four = four_pss - found[4, False][1]
    ratio = four_pss / one_pss if one_pss else 0.0
    share_ratio = share_four / share_one if share_one > 0 else 0.0
    bench.figure(
        Figure(
            "17.4",
            f"memory (PSS of the whole group) with {len(names):,} indicators:"
            " workers = 4 vs workers = 1",
            f"{four_pss:.0f} MiB",
            f"workers = 1 {one_pss:.0f} MiB",
            f"the indicators' share {share_ratio:.2f}x; the whole group {ratio:.2f}x",
            f"indicators' share <= {MEMORY_GOAL}x",
            share_ratio <= MEMORY_GOAL,
            f"RSS summed: workers = 1 {found[1, True][0]:.0f} MiB, workers = 4"
            f" {found[4, True][0]:.0f} MiB (shared pages counted in each process);"
            f" with no indicator: PSS {found[1, False][1]:.0f} MiB and"
            f" {found[4, False][1]:.0f} MiB, so the indicators cost {share_one:.0f} MiB"
            f" with one process and {share_four:.0f} MiB with four",
        )
    )


def workers(bench: Bench) -> None:
    """Issue 17, item 4: throughput and CPU per answer of workers = 1 and 2, and the
    memory of a group of 4 against one process with `--million` indicators."""
    _throughput(bench)
    _memory(bench)
