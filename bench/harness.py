"""What every benchmark scenario shares: the tools, Unbound, dnsperf runs, misp-dns processes.

A scenario is a function `(Bench) -> None` that starts what it needs with `Bench.misp_dns`,
measures with `Bench.run_dnsperf` / `Bench.rotate`, and records its rows with
`Bench.record` and its goal figures with `Bench.figure`. Servers run on one CPU and dnsperf
(and the MISP stand-in) on the others when `taskset` and two CPUs are available.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corpus import write_feed  # noqa: E402
from integration.net import free_port  # noqa: E402
from integration.server import MispDnsProcess, misp_dns_command  # noqa: E402
from integration.unbound import (  # noqa: E402
    UnboundProcess,
    base_server_lines,
    write_config,
)
from probe import wait_for_block  # noqa: E402

__all__ = [
    "REPO",
    "Bench",
    "Figure",
    "Measurement",
    "children",
    "cpu_seconds",
    "descendants",
    "parse_dnsperf",
    "start_unbound",
    "stop_process",
    "tool",
    "write_misp_dns_config",
]

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
SERVER_NAME = "misp-dns.bench"


@attrs.frozen
class Measurement:
    """One dnsperf run against one server."""

    scenario: str
    target: str
    qps: float
    sent: int
    lost: int
    lost_percent: float
    latency_ms: float
    max_latency_ms: float
    noerror_percent: float
    nxdomain_percent: float
    note: str = ""
    #: Server CPU time (user + system, all threads, and the processes it started) per
    #: answered query, in microseconds; unlike queries/s, other jobs on the machine barely
    #: change it. 0 when not measured.
    cpu_us: float = 0.0
    #: The same for the server process alone (without the processes it started).
    own_cpu_us: float = 0.0


@attrs.frozen
class Figure:
    """One figure of the issue's goals: ours, the reference beside it, and the verdict.

    `met` is None when the figure could not be measured (the note says why); `unclear`
    when the queries/s ratio and the CPU-per-answer ratio fall on different sides of the
    goal (then `met` follows queries/s, as the goal is stated).
    """

    goal: str
    what: str
    ours: str
    reference: str
    result: str
    target: str
    met: bool | None
    note: str = ""
    unclear: bool = False


def tool(name: str) -> str:
    """The path of a command-line tool (also looked up in the sbin folders), or exit."""
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )
    if found is None:
        sys.exit(f"bench: {name} is not installed (`make tools` installs the Debian packages)")
    return found


def parse_dnsperf(output: str) -> dict[str, float]:
    """The summary figures of a dnsperf run."""

    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        if match is None:
            raise RuntimeError(f"dnsperf printed no {pattern!r}:\n{output[-3000:]}")
        return float(match.group(1))

    def share(code: str) -> float:
        match = re.search(rf"\b{code} \d+ \(([\d.]+)%\)", output)
        return float(match.group(1)) if match else 0.0

    return {
        "qps": number(r"Queries per second:\s+([\d.]+)"),
        "sent": number(r"Queries sent:\s+(\d+)"),
        "lost": number(r"Queries lost:\s+(\d+)"),
        "lost_percent": number(r"Queries lost:\s+\d+ \(([\d.]+)%\)"),
        "latency_ms": number(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        "max_latency_ms": number(r"Average Latency \(s\):.*max ([\d.]+)\)") * 1000,
        "noerror_percent": share("NOERROR"),
        "nxdomain_percent": share("NXDOMAIN"),
    }


def children(pid: int) -> list[int]:
    """The processes `pid` started and that still run (misp-dns's syslog sender)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every running process under `pid`: its children and theirs (a `workers` group's
    zygote and the serving processes it forked, each one's syslog sender)."""
    return [each for child in children(pid) for each in (child, *descendants(child))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) and of every process under
    it that still runs, so far, in seconds."""
    return _own_cpu_seconds(pid) + sum(_own_cpu_seconds(each) for each in descendants(pid))


def start_unbound(
    workdir: Path, binary: str, allowed: Sequence[str], blocked: Sequence[str]
) -> UnboundProcess:
    """An Unbound (one thread) in `workdir` answering `allowed` from local data (an A record
    each) and `blocked` as `always_nxdomain` local zones, started and answering."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    local = [
        f'local-data: "{name}. 3600 IN A 192.0.2.{index % 250 + 1}"'
        for index, name in enumerate(allowed)
    ]
    zones = [f'local-zone: "{name}" always_nxdomain' for name in blocked]
    conf = write_config(
        workdir, [*base_server_lines(workdir, port), "verbosity: 0", *local, *zones]
    )
    unbound = UnboundProcess(binary, conf, ("127.0.0.1", port), probe=allowed[0])
    unbound.start(timeout=120)
    return unbound


def _toml(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    return json.dumps(value)


def write_misp_dns_config(
    path: Path,
    sections: Mapping[str, Mapping[str, Any]],
    policies: Sequence[Mapping[str, Any]] = (),
    exports: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """A misp-dns TOML file: `[server]`/`[cache]` sections, `[[policy]]` and `[[export]]`."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    for table, items in (("policy", policies), ("export", exports)):
        for item in items:
            lines.append(f"[[{table}]]")
            lines += [f"{key} = {_toml(value)}" for key, value in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def stop_process(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


@attrs.define
class Bench:
    """Tools, the work folder, the shared Unbound, the names and the results so far."""

    args: Any
    workdir: Path
    dnsperf: str
    unbound_binary: str
    unbound: UnboundProcess
    allowed: list[str]
    indicators: list[str]
    files: dict[str, Path]
    server_cpu: str | None
    client_cpu: str | None
    measurements: list[Measurement] = attrs.Factory(list)
    figures: list[Figure] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    profiles: dict[str, str] = attrs.Factory(dict)

    # -- recording -----------------------------------------------------------------------

    def record(self, measurement: Measurement) -> Measurement:
        """Keep a dnsperf row for the detailed table."""
        self.measurements.append(measurement)
        return measurement

    def figure(self, figure: Figure) -> None:
        """Keep a goal figure and print it at once."""
        self.figures.append(figure)
        verdict = {True: "met", False: "MISSED", None: "not measured"}[figure.met]
        if figure.met is None and figure.target == "-" and figure.result != "-":
            verdict = "reported (no goal)"
        if figure.unclear:
            verdict = f"UNCLEAR (on queries/s: {verdict})"
        print(
            f"  goal {figure.goal}: {figure.what}: {figure.result} (misp-dns {figure.ours},"
            f" reference {figure.reference}; goal {figure.target}) {verdict}",
            flush=True,
        )

    def say(self, text: str) -> None:
        """A progress line."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- processes ----------------------------------------------------------------------

    def pin(self, pid: int) -> None:
        """Pin a server process (and its threads) to the server CPU, when pinning is on."""
        if self.server_cpu is not None:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", self.server_cpu, str(pid)],
                check=True,
                stdout=subprocess.DEVNULL,
            )

    def on_server_cpu(self, command: list[str]) -> list[str]:
        """`command` started on the server CPU (from its first instruction)."""
        return ["taskset", "-c", self.server_cpu, *command] if self.server_cpu else command

    def on_client_cpu(self, command: list[str]) -> list[str]:
        """`command` started on the client CPUs (dnsperf, the MISP stand-in)."""
        return ["taskset", "-c", self.client_cpu, *command] if self.client_cpu else command

    @property
    def unbound_address(self) -> tuple[str, int]:
        """Where the shared Unbound answers."""
        return self.unbound.address

    def unbound_target(self) -> tuple[str, int, int]:
        """The shared Unbound as a `rotate` target."""
        return ("unbound", self.unbound.address[1], self.unbound.pid)

    def server_sections(
        self, folder: Path, port: int, upstream: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """`[server]` and `[cache]` for a misp-dns on `port` forwarding to Unbound (the
        shared one, or the one listening on port `upstream`)."""
        upstream = upstream if upstream is not None else self.unbound_address[1]
        return {
            "server": {
                "listen": [f"127.0.0.1:{port}"],
                "upstreams": [f"127.0.0.1:{upstream}"],
                "server_name": SERVER_NAME,
                "state_dir": str(folder / "state"),
            },
            "cache": {"max_entries": max(100_000, 2 * len(self.allowed))},
        }

    @contextlib.contextmanager
    def misp_dns(
        self,
        name: str,
        *,
        policies: Sequence[Mapping[str, Any]] = (),
        exports: Sequence[Mapping[str, Any]] = (),
        command: Callable[[Path], list[str]] = misp_dns_command,
        blocked_probe: str | None = None,
        timeout: float = 60.0,
        upstream: int | None = None,
        probe: str | None = None,
        server: Mapping[str, Any] | None = None,
        pinned: bool = True,
    ) -> Iterator[MispDnsProcess]:
        """A server under twistd (or `command`) forwarding to Unbound (the shared one, or
        the one on port `upstream`), pinned (unless not `pinned`), stopped on exit; `server`
        adds keys to its `[server]` table. Returns once it answers `probe` (the first
        allowed name by default); with `blocked_probe`, once misp-dns itself blocks that
        name (not once the upstream answers it NXDOMAIN)."""
        folder = self.workdir / name
        (folder / "state").mkdir(parents=True, exist_ok=True)
        port = free_port()
        sections = self.server_sections(folder, port, upstream)
        sections["server"].update(server or {})
        config = write_misp_dns_config(folder / "misp-dns.toml", sections, policies, exports)
        process = MispDnsProcess(
            config,
            [("127.0.0.1", port)],
            folder,
            (lambda path: self.on_server_cpu(command(path))) if pinned else command,
        )
        process.start(probe=probe or self.allowed[0], timeout=timeout)
        try:
            if pinned:
                self.pin(process.pid)
            if blocked_probe is not None:
                wait_for_block(process.address, blocked_probe, timeout, interval=0.05)
            yield process
        finally:
            process.stop()

    # -- shared inputs ------------------------------------------------------------------

    @cached_property
    def feed(self) -> Path:
        """A MISP feed directory holding the blocked scenario's indicators."""
        return write_feed(self.workdir / "feed", self.indicators)

    def feed_policy(self) -> dict[str, Any]:
        """A `[[policy]]` table blocking `indicators` from the generated feed."""
        return {
            "type": "misp-feed",
            "url": str(self.feed),
            "max_ioc_age": "36500d",
            "update_interval": "1d",
        }

    # -- dnsperf ------------------------------------------------------------------------

    def dnsperf_command(
        self,
        port: int,
        query_file: Path,
        *,
        seconds: float | None = None,
        passes: int | None = None,
        rate: int | None = None,
        verbose: bool = False,
        clients: int | None = None,
    ) -> list[str]:
        """dnsperf against 127.0.0.1:port with EDNS on, on the client CPUs; `clients`
        sockets (`--clients` by default)."""
        command = [
            self.dnsperf,
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(query_file),
            "-c",
            str(clients if clients is not None else self.args.clients),
            "-q",
            str(self.args.outstanding),
            "-t",
            "2",
            "-e",
        ]
        if seconds is not None:
            command += ["-l", f"{seconds:g}"]
        if passes is not None:
            command += ["-n", str(passes)]
        if rate is not None:
            command += ["-Q", str(rate)]
        if verbose:
            command.append("-v")
        return self.on_client_cpu(command)

    def run_dnsperf(
        self,
        scenario: str,
        target: str,
        port: int,
        query_file: Path,
        *,
        seconds: float | None = None,
        warmup: bool = False,
        rate: int | None = None,
        keep: bool = True,
        pid: int | None = None,
        clients: int | None = None,
    ) -> Measurement:
        """One dnsperf run: `seconds` long, or one pass over the file when `warmup`; with
        `pid`, the server's CPU time per answered query too; over `clients` sockets."""
        length = seconds if seconds is not None else self.args.seconds
        command = self.dnsperf_command(
            port,
            query_file,
            seconds=None if warmup else length,
            passes=1 if warmup else None,
            rate=rate,
            clients=clients,
        )
        cpu_before = cpu_seconds(pid) if pid else 0.0
        own_before = _own_cpu_seconds(pid) if pid else 0.0
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=length + 120, check=False
        )
        cpu_used = cpu_seconds(pid) - cpu_before if pid else 0.0
        own_used = _own_cpu_seconds(pid) - own_before if pid else 0.0
        if done.returncode != 0:
            raise RuntimeError(f"dnsperf failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        figures = parse_dnsperf(done.stdout)
        answered = figures["sent"] - figures["lost"]
        measurement = Measurement(
            scenario,
            target,
            figures["qps"],
            int(figures["sent"]),
            int(figures["lost"]),
            figures["lost_percent"],
            figures["latency_ms"],
            figures["max_latency_ms"],
            figures["noerror_percent"],
            figures["nxdomain_percent"],
            "warm-up" if warmup else "",
            cpu_used / answered * 1e6 if answered and pid else 0.0,
            own_used / answered * 1e6 if answered and pid else 0.0,
        )
        if keep and not warmup:
            self.record(measurement)
        return measurement

    def rotate(
        self,
        scenario: str,
        targets: Sequence[tuple[str, int, int]],
        query_file: Path,
        *,
        before: Callable[[str], None] | None = None,
        clients: int | None = None,
    ) -> dict[str, Measurement]:
        """`--repeats` rounds over `targets` (label, port, pid), the order reversed every
        other round so a machine getting busier or quieter weighs on all alike; the best run
        of each (most queries/s; its CPU per query is the lowest seen for that server)."""
        best: dict[str, Measurement] = {}
        for number in range(self.args.repeats):
            order = list(targets) if number % 2 == 0 else list(reversed(targets))
            for label, port, pid in order:
                if before is not None:
                    before(label)
                measured = self.run_dnsperf(
                    scenario, label, port, query_file, pid=pid, clients=clients
                )
                own = (
                    f" ({measured.own_cpu_us:.1f} us in the server process)"
                    if measured.own_cpu_us and measured.own_cpu_us < measured.cpu_us - 0.05
                    else ""
                )
                self.say(
                    f"{scenario}: {label} {measured.qps:,.0f} q/s, {measured.cpu_us:.1f} us CPU"
                    f" per answer{own} (lost {measured.lost}, avg {measured.latency_ms:.2f} ms)"
                )
                if label not in best:
                    best[label] = measured
                    continue
                # The most queries/s; the CPU figures of the run that took the least CPU.
                leanest = measured if measured.cpu_us < best[label].cpu_us else best[label]
                fastest = measured if measured.qps > best[label].qps else best[label]
                best[label] = attrs.evolve(
                    fastest, cpu_us=leanest.cpu_us, own_cpu_us=leanest.own_cpu_us
                )
        return best
