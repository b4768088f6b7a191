"""The benchmark's report: machine, versions, the goal table, every dnsperf run, profiles."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import REPO, Figure, Measurement

__all__ = ["HAND_WRITTEN", "machine", "render", "versions", "write_results"]

#: The heading under which bench/RESULTS.md holds what people wrote by hand (the analysis of
#: the figures, profiles read, designs proposed); a full run replaces what is above it only.
HAND_WRITTEN = "# Analysis, written by hand"

_VERDICT = {True: "met", False: "**missed**", None: "not measured"}


def _reported(figure: Figure) -> bool:
    """A figure measured beside a reference with no goal to meet (target "-")."""
    return figure.met is None and figure.target == "-" and figure.result != "-"


def _verdict(figure: Figure) -> str:
    if figure.unclear:
        return "**unclear**"
    return "reported (no goal)" if _reported(figure) else _VERDICT[figure.met]


def _first_line(command: list[str], pattern: str = r"\S.*") -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(0).strip() if match else "?"


def machine() -> dict[str, str]:
    """CPU, cores, memory, kernel and load of this machine."""
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "cpu": f"{model}, {os.cpu_count()} CPUs",
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at the start": load,
    }


def versions(unbound: str, dnsperf: str, package: Path) -> dict[str, str]:
    """Versions of what was measured and what measured it; `package` is the misp_dns
    source folder whose digest identifies the code (the checkout's or the run's copy)."""
    import twisted

    import misp_dns

    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    source = hashlib.sha256()
    package = package if package.name == "misp_dns" else package / "misp_dns"
    for path in sorted(package.rglob("*.py")):
        source.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "misp-dns": f"{misp_dns.__version__} (commit {commit}"
        + (", with uncommitted changes" if dirty not in ("?", "") else "")
        + f"; source digest {source.hexdigest()[:12]})",
        "python": sys.version.split()[0],
        "twisted": twisted.__version__,
        "unbound": _first_line([unbound, "-V"], r"Version \S+"),
        "dnsperf": _first_line([dnsperf, "-h"], r"Version \S+"),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _goal_table(figures: Sequence[Figure]) -> list[str]:
    lines = [
        "| # | figure | misp-dns | reference | result | goal | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        cells = [f.goal, f.what, f.ours, f.reference, f.result, f.target, _verdict(f)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _runs_table(rows: Sequence[Measurement]) -> list[str]:
    lines = [
        "| scenario | server | queries/s | CPU us/answer | sent | lost | avg ms | max ms "
        "| NOERROR % | NXDOMAIN % |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in rows:
        lines.append(
            f"| {m.scenario} | {m.target} | {m.qps:,.0f} | {m.cpu_us or 0:.1f} | {m.sent:,} |"
            f" {m.lost:,} |"
            f" {m.latency_ms:.3f} | {m.max_latency_ms:.1f} | {m.noerror_percent:.1f} |"
            f" {m.nxdomain_percent:.1f} |"
        )
    return lines


METHOD = """\
- One Unbound 1.x (`num-threads: 1`, `module-config: "iterator"`, everything else REFUSED)
  holds the allowed names as `local-data` and the indicators as `always_nxdomain` local
  zones; misp-dns is started as users start it (`twistd -n --pidfile= misp-dns --config
  PATH`), forwarding to that Unbound, its indicators from a generated MISP feed (goals 1, 2,
  6) or from a MISP REST stand-in (`bench/misp_standin.py`, goals 4, 5).
- dnsperf over loopback with EDNS on (`-e`), `-c {clients} -q {outstanding} -t 2`; the
  servers run on CPU {server_cpu} and dnsperf (and the MISP stand-in) on CPU {client_cpu}.
- Throughput: {repeats} rounds of {seconds:g} s runs, the servers taking turns (the order
  reversed every other round), after one warm-up pass over the file for misp-dns and stock
  Twisted (so every allowed name is a cache hit); the best run of each server is compared.
  The machine is shared with other jobs, so absolute figures move between runs (±30% and
  more has been seen); the ratios come from the same rounds. Each run also records the
  server's CPU time (user + system, all threads) per answered query, which other jobs
  barely change: "by CPU per answer" is the capacity ratio from it (the lowest CPU per
  answer of each server). Verdicts follow the goals as stated, on queries/s.
- Queries: {allowed:,} allowed names (the top of the Cloudflare list); {indicators:,}
  indicators (the rest of that list, then made-up feed-like names), queried half as is and
  half as a subdomain; goal 5 mixes 10,000 blocked and the allowed names at a steady rate.
- Peers (issue 17, item 6; `peers` and `million`): PowerDNS Recursor (one worker thread,
  the indicators as an RPZ zone file, `CNAME .` for each name and its wildcard) and dnsmasq
  (the indicators as `address=/name/` lines), both forwarding to the same Unbound and
  caching its answers, on the server CPU in the same rounds as misp-dns and Unbound, after
  the same warm-up pass.
- Memory is the whole process (VmRSS, VmHWM from /proc/PID/status)."""


def render(
    figures: Sequence[Figure],
    rows: Sequence[Measurement],
    context: dict[str, Any],
    profiles: dict[str, str],
) -> str:
    """The whole report as Markdown."""
    lines = [
        "# misp-dns benchmark results",
        "",
        f"Produced by `.venv/bin/python bench/run.py {context['argv']}` on {context['date']}"
        f" ({context['duration']:.0f} s). See bench/README.md for what each scenario does.",
        "",
    ]
    met = sum(1 for f in figures if f.met and not f.unclear)
    missed = [f.goal for f in figures if f.met is False and not f.unclear]
    unclear = [f.goal for f in figures if f.unclear]
    unmeasured = [f.goal for f in figures if f.met is None and not _reported(f)]
    goals = sum(1 for f in figures if not _reported(f))
    lines.append(
        f"**{met} of {goals} figures meet their goal**"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + (
            f"; unclear (queries/s and CPU per answer disagree): {', '.join(unclear)}"
            if unclear
            else ""
        )
        + (f"; not measured: {', '.join(unmeasured)}" if unmeasured else "")
        + "."
    )
    lines += ["", "## Goals (issues 5 and 17)", "", *_goal_table(figures), ""]
    noted = [f for f in figures if f.note]
    if noted:
        lines += ["Notes:", ""]
        lines += [f"- **{f.goal}** ({f.what}): {f.note}" for f in noted]
        lines.append("")
    lines += ["## Machine and versions", ""]
    for key, value in {**context["machine"], **context["versions"]}.items():
        lines.append(f"- {key}: {value}")
    lines.append(f"- load average at the end: {context['load_after']}")
    lines += ["", "## Method", "", METHOD.format(**context["parameters"]), ""]
    lines += ["## Every measured run", "", *_runs_table(rows), ""]
    if profiles:
        lines += ["## Profiles (py-spy, misp-dns under the scenario's load)", ""]
        for scenario, text in profiles.items():
            lines += [f"### {scenario}", "", "```", text, "```", ""]
    return "\n".join(lines)


def write_results(path: Path, report: str) -> None:
    """Write `report` to `path`, keeping the hand-written part of what `path` held.

    Everything from the `HAND_WRITTEN` heading on survives a new run, so the reasoning
    behind the figures is not lost each time they are measured again.
    """
    kept = ""
    if path.exists():
        previous = path.read_text()
        if previous.startswith(HAND_WRITTEN + "\n"):
            kept = previous
        elif (at := previous.find("\n" + HAND_WRITTEN + "\n")) >= 0:
            kept = previous[at + 1 :]
    path.write_text(report.rstrip("\n") + "\n\n" + kept if kept else report)
