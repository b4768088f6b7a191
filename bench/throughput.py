"""Throughput scenarios: blocked answers, cached answers (with stock Twisted), sinks on/off.

Each compares servers over the same dnsperf query file in alternating rounds (`--repeats`,
best run of each kept), with Unbound in the same rounds where it is the reference:

- `blocked` (goal 1): the indicators as Unbound `always_nxdomain` local zones vs misp-dns
  blocking them from a generated MISP feed, EDE on; half the queries ask for a subdomain;
- `cached` (goals 2 and 3): allowed names, Unbound from local data vs misp-dns from its
  answer cache (the feed policy loaded, so every query is checked first) vs Twisted's stock
  `DNSServerFactory` + `CacheResolver`;
- `sinks` (goal 6): misp-dns with the JSONL and syslog (UDP) sinks vs without, over the
  allowed names, with the syslog sending process on the server CPU and, on a third
  server, on the client CPUs; a UDP socket in this process receives the syslog datagrams.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from harness import Bench, Figure, Measurement, children
from integration.server import stock_command
from profiling import profile_run

__all__ = ["blocked", "cached", "sinks"]


def _ratio(ours: Measurement, reference: Measurement) -> float:
    return ours.qps / reference.qps if reference.qps else 0.0


def _qps(measurement: Measurement) -> str:
    return f"{measurement.qps:,.0f} q/s"


def _cpu_note(ours: Measurement, reference: Measurement) -> str:
    """The capacity ratio from CPU time per answer, which other jobs disturb far less."""
    if not ours.cpu_us or not reference.cpu_us:
        return ""
    own = ""
    if ours.own_cpu_us and ours.own_cpu_us < ours.cpu_us - 0.05:
        own = (
            f" (the server process {ours.own_cpu_us:.1f} us, its syslog sending process"
            f" {ours.cpu_us - ours.own_cpu_us:.1f} us; the server process alone: capacity"
            f" ratio {reference.cpu_us / ours.own_cpu_us:.2f})"
        )
    return (
        f"CPU per answer {ours.cpu_us:.1f} us ({ours.target}){own} vs {reference.cpu_us:.1f}"
        f" us ({reference.target}): capacity ratio {reference.cpu_us / ours.cpu_us:.2f}"
    )


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _unclear(ours: Measurement, reference: Measurement, ratio: float, goal: float) -> bool:
    """True when the CPU-per-answer ratio and the queries/s ratio disagree about `goal`."""
    if not ours.cpu_us or not reference.cpu_us:
        return False
    return (reference.cpu_us / ours.cpu_us >= goal) != (ratio >= goal)


def _capacity(ours: Measurement, reference: Measurement) -> str:
    if not ours.cpu_us or not reference.cpu_us:
        return ""
    return f"; {reference.cpu_us / ours.cpu_us:.2f}x by CPU per answer"


def _answers_note(measurement: Measurement, code: str, expected: float = 99.0) -> str:
    share = measurement.nxdomain_percent if code == "NXDOMAIN" else measurement.noerror_percent
    if share >= expected:
        return ""
    return f"{measurement.target} answered only {share:.1f}% {code}"


def blocked(bench: Bench) -> None:
    """Goal 1: blocked answers at least 0.70x Unbound's queries/s.

    Measured twice: every indicator in turn (each blocked name differs from the last tens of
    thousands, as in a scan of the whole list), and a hot set of 1,000 indicators asked
    over and over (what a few infected hosts beaconing look like)."""
    bench.say(f"blocked: misp-dns loading {len(bench.indicators):,} indicators from a feed")
    with bench.misp_dns(
        "blocked",
        policies=[bench.feed_policy()],
        blocked_probe=bench.indicators[-1],
        timeout=180,
    ) as server:
        targets = [bench.unbound_target(), ("misp-dns", server.address[1], server.pid)]
        results = []
        for label, queries in (
            (f"all {len(bench.indicators):,} indicators in turn", bench.files["blocked"]),
            ("1,000 hot indicators", bench.files["blocked-hot"]),
        ):
            scenario = "blocked" if queries == bench.files["blocked"] else "blocked-hot"
            bench.run_dnsperf(scenario, "misp-dns", server.address[1], queries, warmup=True)
            best = bench.rotate(scenario, targets, queries)
            profile = profile_run(bench, scenario, server, queries)
            results.append((label, best, profile))
    for label, best, profile in results:
        ours, unbound = best["misp-dns"], best["unbound"]
        ratio = _ratio(ours, unbound)
        note = _join(
            _cpu_note(ours, unbound),
            _answers_note(ours, "NXDOMAIN"),
            _answers_note(unbound, "NXDOMAIN"),
            profile,
        )
        bench.figure(
            Figure(
                "1",
                f"blocked answers (EDE on), {len(bench.indicators):,} indicators loaded;"
                f" queries: {label}, half of them subdomains",
                _qps(ours),
                f"Unbound {_qps(unbound)}",
                f"{ratio:.2f}x Unbound{_capacity(ours, unbound)}",
                ">= 0.70x Unbound",
                ratio >= 0.70,
                note,
                _unclear(ours, unbound, ratio, 0.70),
            )
        )


def cached(bench: Bench) -> None:
    """Goals 2 and 3: cached answers at least 0.60x Unbound and 3x stock Twisted."""
    queries = bench.files["allowed"]
    with (
        bench.misp_dns(
            "cached",
            policies=[bench.feed_policy()],
            blocked_probe=bench.indicators[-1],
            timeout=180,
        ) as server,
        bench.misp_dns("stock", command=stock_command) as stock,
    ):
        for label, port in (("misp-dns", server.address[1]), ("stock", stock.address[1])):
            bench.run_dnsperf("cached", label, port, queries, warmup=True)
        best = bench.rotate(
            "cached",
            [
                bench.unbound_target(),
                ("misp-dns", server.address[1], server.pid),
                ("stock", stock.address[1], stock.pid),
            ],
            queries,
        )
        profile = profile_run(bench, "cached", server, queries)
    ours, unbound, twisted = best["misp-dns"], best["unbound"], best["stock"]
    ratio = _ratio(ours, unbound)
    note = _join(
        _cpu_note(ours, unbound),
        _answers_note(ours, "NOERROR"),
        _answers_note(unbound, "NOERROR"),
        profile,
    )
    bench.figure(
        Figure(
            "2",
            f"cached answers for allowed names ({len(bench.allowed):,} names)",
            _qps(ours),
            f"Unbound {_qps(unbound)}",
            f"{ratio:.2f}x Unbound{_capacity(ours, unbound)}",
            ">= 0.60x Unbound",
            ratio >= 0.60,
            note,
            _unclear(ours, unbound, ratio, 0.60),
        )
    )
    times = _ratio(ours, twisted)
    bench.figure(
        Figure(
            "3",
            "cached answers vs Twisted's stock DNSServerFactory + CacheResolver",
            _qps(ours),
            f"stock Twisted {_qps(twisted)} (Unbound {_qps(unbound)})",
            f"{times:.2f}x stock{_capacity(ours, twisted)}",
            ">= 3x stock Twisted",
            times >= 3.0,
            _cpu_note(ours, twisted),
            _unclear(ours, twisted, times, 3.0),
        )
    )


class _SyslogReceiver:
    """A UDP socket on 127.0.0.1 counting the datagrams the syslog sink sends."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.datagrams = 0
        self.sample = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    def _run(self) -> None:
        buffer = bytearray(65536)
        while not self._stop.is_set():
            try:
                size = self.socket.recv_into(buffer)
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.sample:
                self.sample = bytes(buffer[:size])
            self.datagrams += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.socket.close()


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    count = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _move_children(bench: Bench, pid: int) -> list[int]:
    """Put the processes server `pid` started (its syslog sender) on the client CPUs, as a
    server with a core to spare runs them; their pids."""
    moved = children(pid)
    if bench.client_cpu is not None:
        for child in moved:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", bench.client_cpu, str(child)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    return moved


def sinks(bench: Bench) -> None:
    """Goal 6: with the JSONL and syslog sinks on, at most 15% fewer queries/s.

    Three misp-dns side by side: no sinks; JSONL + syslog (UDP) with everything on the
    server CPU (the syslog sending process included); the same with the syslog sending
    process moved to the client CPUs, as on a server with a core to spare. CPU per answer
    counts the sending process too."""
    queries = bench.files["allowed"]
    receiver = _SyslogReceiver()
    files = {}
    exports: dict[str, list[dict[str, Any]]] = {}
    for name in ("sinks-on", "sinks-spread"):
        jsonl = bench.workdir / name / "export" / "queries.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        files[name] = jsonl
        exports[name] = [
            {"type": "jsonl", "path": str(jsonl)},
            {"type": "syslog", "address": f"127.0.0.1:{receiver.port}", "protocol": "udp"},
        ]
    labels = {"with sinks": "sinks-on", _SPREAD: "sinks-spread"}
    written = 0

    def before(label: str) -> None:
        # Keep the disk use bounded: count what the last run wrote, then empty the file.
        nonlocal written
        jsonl = files.get(labels.get(label, ""))
        if jsonl is not None and jsonl.exists():
            written += _lines(jsonl)
            os.truncate(jsonl, 0)

    policies = [bench.feed_policy()]
    probe = bench.indicators[-1]
    try:
        with (
            bench.misp_dns(
                "sinks-off", policies=policies, blocked_probe=probe, timeout=180
            ) as plain,
            bench.misp_dns(
                "sinks-on",
                policies=policies,
                exports=exports["sinks-on"],
                blocked_probe=probe,
                timeout=180,
            ) as logged,
            bench.misp_dns(
                "sinks-spread",
                policies=policies,
                exports=exports["sinks-spread"],
                blocked_probe=probe,
                timeout=180,
            ) as spread,
        ):
            moved = _move_children(bench, spread.pid)
            bench.say(f"sinks: the syslog sending processes {moved} moved to the client CPUs")
            targets = [
                ("no sinks", plain.address[1], plain.pid),
                ("with sinks", logged.address[1], logged.pid),
                (_SPREAD, spread.address[1], spread.pid),
            ]
            for label, port, _ in targets:
                bench.run_dnsperf("sinks", label, port, queries, warmup=True)
            best = bench.rotate("sinks", targets, queries, before=before)
            profile = profile_run(bench, "sinks", logged, queries, label="with sinks")
        written += sum(_lines(path) for path in files.values())
    finally:
        receiver.close()
    off = best["no sinks"]
    answered = sum(
        m.sent - m.lost for m in bench.measurements if m.scenario == "sinks" and m.target in labels
    )
    exported = f"{written:,} JSONL lines and {receiver.datagrams:,} syslog datagrams"
    for label, what in (
        ("with sinks", "everything on the server CPU"),
        (_SPREAD, "the syslog sending process on another CPU"),
    ):
        on = best[label]
        ratio = _ratio(on, off)
        note = _join(
            _cpu_note(on, off),
            f"{exported} written by both logging servers (their measured runs alone"
            f" answered {answered:,}; the rest are warm-up and profiling runs)",
            profile if label == "with sinks" else "",
        )
        bench.figure(
            Figure(
                "6",
                f"JSONL + syslog (UDP) sinks on vs none, allowed names from cache; {what}",
                f"{_qps(on)} with, {_qps(off)} without",
                "-",
                (
                    f"{ratio:.2f}x ({(1 - ratio) * 100:.0f}% fewer)"
                    if ratio <= 1
                    else f"{ratio:.2f}x"
                )
                + _capacity(on, off),
                ">= 0.85x (at most 15% fewer)",
                ratio >= 0.85,
                note,
                _unclear(on, off, ratio, 0.85),
            )
        )


#: The logging server whose syslog sending process runs on the client CPUs.
_SPREAD = "with sinks, sender spread"
