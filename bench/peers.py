"""Issue 17, item 6: misp-dns beside PowerDNS Recursor and dnsmasq, in the same rounds.

Both peers hold the same indicators as misp-dns (PowerDNS Recursor as an RPZ zone file,
dnsmasq as `address=/name/` lines, as Pi-hole feeds it; `peerconf.py` writes both) and
forward everything else to the bench's Unbound, caching the answers as misp-dns does. Each
runs in the foreground on a loopback port the bench chooses, on the server CPU, and is
stopped at the end.

- `peers` (a scenario): one misp-dns (the generated feed), Unbound, PowerDNS Recursor and
  dnsmasq take turns over the blocked query files (every indicator in turn, the 1,000 hot
  ones) and the allowed names (after a warm-up pass, so every one is a cache hit); the goal
  figures are misp-dns's queries/s over each peer's, at or above 1.00x.
- `peer_memory` (called by `million.py`): each peer started with the million names, its
  time from spawn to the first NXDOMAIN and its RSS once loaded, beside misp-dns's.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import dns.message
import dns.rcode
from harness import Bench, Figure, Measurement
from integration.daemon import DnsDaemon
from integration.net import free_port
from peerconf import write_dnsmasq_conf, write_recursor_conf, write_rpz_zone
from probe import memory_mib

__all__ = [
    "PEERS",
    "PeerProcess",
    "peer_figures",
    "peer_memory",
    "peer_process",
    "peer_versions",
    "peers",
]

#: Label -> the command that runs it.
PEERS = {"pdns-recursor": "pdns_recursor", "dnsmasq": "dnsmasq"}
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class PeerProcess(DnsDaemon):
    """A peer resolver run in the foreground by `command`, ready once the probe (a blocked
    name) answers NXDOMAIN, that is once its indicators are loaded."""

    def __init__(
        self, name: str, command: list[str], log: Path, address: tuple[str, int], probe: str
    ) -> None:
        super().__init__(command[0], log.with_suffix(".conf"), address, probe)
        self.name = name
        self._command = command

    def command(self) -> list[str]:
        """The command line given."""
        return self._command

    def ready(self, response: dns.message.Message) -> bool:
        """NXDOMAIN for the blocked probe."""
        return response.rcode() == dns.rcode.NXDOMAIN


def _binary(label: str) -> str:
    name = PEERS[label]
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if Path(d, name).exists()), None
    )
    if found is None:
        raise RuntimeError(f"{name} is not installed (`make bench` installs {label})")
    return found


def peer_versions() -> dict[str, str]:
    """The version line of each peer installed."""
    found = {}
    for label in PEERS:
        try:
            binary = _binary(label)
        except RuntimeError:
            found[label] = "not installed"
            continue
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        words = (done.stdout + done.stderr).split()
        version = next((w for w in words if w[:1].isdigit() and "." in w and ":" not in w), "?")
        found[label] = version
    return found


def peer_process(
    bench: Bench, label: str, folder: Path, names: Sequence[str], cache_entries: int
) -> PeerProcess:
    """`label` blocking `names` and forwarding to the bench's Unbound, on the server CPU,
    its files written, not started yet; ready once the last of `names` is NXDOMAIN."""
    folder.mkdir(parents=True, exist_ok=True)
    binary = _binary(label)
    port = free_port()
    upstream = bench.unbound_address
    if label == "pdns-recursor":
        zone = write_rpz_zone(folder / "indicators.rpz", names)
        config_dir = write_recursor_conf(folder, port, upstream, zone, cache_entries)
        command = [binary, f"--config-dir={config_dir}"]
    else:
        conf = write_dnsmasq_conf(folder / "dnsmasq.conf", port, upstream, names, cache_entries)
        command = [binary, "--keep-in-foreground", "--log-facility=-", f"--conf-file={conf}"]
    return PeerProcess(
        label, bench.on_server_cpu(command), folder / label, ("127.0.0.1", port), names[-1]
    )


def _ratio(ours: Measurement, theirs: Measurement) -> float:
    return ours.qps / theirs.qps if theirs.qps else 0.0


def _capacity(ours: Measurement, theirs: Measurement) -> float:
    return theirs.cpu_us / ours.cpu_us if ours.cpu_us and theirs.cpu_us else 0.0


def _answers(measurement: Measurement, blocked: bool) -> str:
    share = measurement.nxdomain_percent if blocked else measurement.noerror_percent
    if share >= 99.0:
        return ""
    code = "NXDOMAIN" if blocked else "NOERROR"
    return f"{measurement.target} answered only {share:.1f}% {code}"


def peer_figures(
    what: str, best: dict[str, Measurement], blocked: bool, labels: Sequence[str] = tuple(PEERS)
) -> list[Figure]:
    """One figure per peer: misp-dns's queries/s over the peer's, goal at least 1.00x."""
    ours = best["misp-dns"]
    figures = []
    for label in labels:
        theirs = best[label]
        ratio, capacity = _ratio(ours, theirs), _capacity(ours, theirs)
        notes = [
            f"CPU per answer {ours.cpu_us:.1f} us (misp-dns) vs {theirs.cpu_us:.1f} us"
            f" ({label}); Unbound {best['unbound'].qps:,.0f} q/s"
            if "unbound" in best
            else "",
            _answers(ours, blocked),
            _answers(theirs, blocked),
        ]
        figures.append(
            Figure(
                "17.6",
                f"{what}: misp-dns vs {label}",
                f"{ours.qps:,.0f} q/s",
                f"{label} {theirs.qps:,.0f} q/s",
                f"{ratio:.2f}x {label}"
                + (f"; {capacity:.2f}x by CPU per answer" if capacity else ""),
                f">= 1.00x {label}",
                ratio >= 1.0,
                "; ".join(note for note in notes if note),
                bool(capacity) and (capacity >= 1.0) != (ratio >= 1.0),
            )
        )
    return figures


def peers(bench: Bench) -> None:
    """Blocked and cached answers: misp-dns at or above PowerDNS Recursor and dnsmasq."""
    cache = max(100_000, 2 * len(bench.allowed))
    indicators, allowed = f"{len(bench.indicators):,}", f"{len(bench.allowed):,}"
    started: list[PeerProcess] = []
    results: list[tuple[str, dict[str, Measurement], bool]] = []
    bench.say(
        f"peers: misp-dns, pdns-recursor and dnsmasq with {len(bench.indicators):,} indicators"
    )
    try:
        for label in PEERS:
            process = peer_process(bench, label, bench.workdir / label, bench.indicators, cache)
            process.start(timeout=120)
            started.append(process)
        with bench.misp_dns(
            "peers",
            policies=[bench.feed_policy()],
            blocked_probe=bench.indicators[-1],
            timeout=180,
        ) as server:
            targets = [
                bench.unbound_target(),
                ("misp-dns", server.address[1], server.pid),
                *((p.name, p.address[1], p.pid) for p in started),
            ]
            for scenario, files, what, blocked in (
                ("peers-blocked", "blocked", f"blocked, all {indicators} indicators in turn", True),
                ("peers-blocked-hot", "blocked-hot", "blocked, 1,000 hot indicators", True),
                ("peers-cached", "allowed", f"cached, {allowed} allowed names", False),
            ):
                queries = bench.files[files]
                for label, port, _ in targets[1:]:
                    bench.run_dnsperf(scenario, label, port, queries, warmup=True)
                results.append((what, bench.rotate(scenario, targets, queries), blocked))
    finally:
        for process in started:
            process.stop()
    for what, best, blocked in results:
        for figure in peer_figures(what, best, blocked):
            bench.figure(figure)


def _loaded(
    bench: Bench, label: str, folder: Path, names: Sequence[str]
) -> tuple[float, float, float]:
    """Seconds from spawn to the first NXDOMAIN, RSS and peak RSS (MiB) of `label` holding
    `names`."""
    process = peer_process(bench, label, folder, names, 100_000)
    spawned = time.monotonic()
    process.start(timeout=900)
    try:
        answered = time.monotonic()
        time.sleep(1)
        return answered - spawned, memory_mib(process.pid), memory_mib(process.pid, "VmHWM")
    finally:
        process.stop()


def peer_memory(
    bench: Bench,
    folder: Path,
    names: Sequence[str],
    ours: float,
) -> list[Figure]:
    """RSS of each peer holding `names`, beside misp-dns's `ours` (MiB); no goal."""
    figures = []
    for label in PEERS:
        bench.say(f"million: {label} loading {len(names):,} indicators")
        try:
            seconds, rss, peak = _loaded(bench, label, folder / label, names)
        except Exception as problem:  # a peer that fails leaves the million figures whole
            note = f"{type(problem).__name__}: {str(problem).splitlines()[0][:300]}"
            figures.append(
                Figure(
                    "17.6",
                    f"RSS with {len(names):,} indicators: {label}",
                    f"{ours:.0f} MiB",
                    "-",
                    "-",
                    "-",
                    None,
                    note,
                )
            )
            continue
        figures.append(
            Figure(
                "17.6",
                f"RSS with {len(names):,} indicators loaded: misp-dns vs {label}",
                f"{ours:.0f} MiB",
                f"{label} {rss:.0f} MiB",
                f"{ours / rss:.2f}x {label}'s RSS",
                "-",
                None,
                f"{label}: {seconds:.1f} s from spawn to its first NXDOMAIN, peak {peak:.0f} MiB",
            )
        )
    return figures
