"""Where misp-dns spends its time under load: py-spy samples summarised by function.

With `run.py --profile`, after a scenario's measured rounds one more dnsperf run drives the
server while `py-spy record --nonblocking` samples it (py-spy is a dev tool, not a
dependency: `.venv/bin/pip install py-spy`). The collapsed stacks and a summary go to
bench/out/profile-<scenario>.txt; the summary lists the functions with the most samples on
top of the stack (self) and anywhere in it (inclusive), in percent of the samples in which
the process was running Python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["OUT", "profile_run", "py_spy", "record", "summarise"]

OUT = Path(__file__).resolve().parent / "out"
_WAITING = "EPollReactor.doPoll ("  # the reactor waiting for I/O, not working
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy next to this interpreter, or on PATH, or None."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def record(pid: int, seconds: float, output: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into `output` (collapsed stacks); returns the
    py-spy process to wait for."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        str(rate),
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/misp_dns/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/misp_dns/":
                path = "misp_dns/" + path
            break
    return f"{match.group('function')} ({path})"


def summarise(collapsed: Path, top: int = 12) -> tuple[str, list[tuple[str, float]]]:
    """A text summary of collapsed stacks and the top self-time functions (name, %).

    Shares are of the samples in which a thread ran Python. Frames found in nearly every
    sample (the reactor's loop) are left out of the inclusive list. When other threads ran
    too (a snapshot build in the thread pool), the reactor thread's own top functions are
    listed separately: those are what delays answers.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    reactor_own: Counter[str] = Counter()
    total = reactor_total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames[0].startswith("<module> (twistd") and not frames[-1].startswith(_WAITING):
            reactor_total += count
            reactor_own[frames[-1]] += count
    if not total:
        return "no samples", []
    lines = [f"{total} samples", "", "self %   function"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in own.most_common(top)]
    lines += ["", "incl %   function (frames in over 90% of the samples left out)"]
    shown = [(name, n) for name, n in inclusive.most_common() if n <= 0.9 * total]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in shown[: top * 2]]
    if reactor_total and reactor_total < total:
        lines += [
            "",
            f"reactor thread, busy (not waiting in epoll): {100 * reactor_total / total:.0f}%"
            " of the samples; its self %:",
        ]
        lines += [
            f"{100 * n / reactor_total:6.1f}   {name}" for name, n in reactor_own.most_common(top)
        ]
    return "\n".join(lines), [(name, 100 * n / total) for name, n in own.most_common(top)]


def profile_run(
    bench: Any,
    scenario: str,
    server: Any,
    queries: Path,
    label: str = "misp-dns",
    clients: int | None = None,
) -> str:
    """With `--profile`: one more dnsperf run (over `clients` sockets) under py-spy; a note
    naming the top functions and the summary file (empty without `--profile`)."""
    if not getattr(bench.args, "profile", False):
        return ""
    OUT.mkdir(parents=True, exist_ok=True)
    collapsed = OUT / f"profile-{scenario}.collapsed"
    seconds = max(3.0, float(bench.args.seconds))
    sampler = record(server.pid, seconds - 1, collapsed)
    bench.run_dnsperf(
        scenario,
        f"{label} (profiled)",
        server.address[1],
        queries,
        keep=False,
        seconds=seconds,
        clients=clients,
    )
    _, errors = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode != 0 or not collapsed.exists():
        return f"profiling failed: {errors.decode(errors='replace').strip()[-200:]}"
    text, tops = summarise(collapsed)
    (OUT / f"profile-{scenario}.txt").write_text(f"{scenario}: {label}\n{text}\n")
    bench.profiles[scenario] = text
    head = ", ".join(f"{name} {share:.0f}%" for name, share in tops[:4])
    return f"profile (self time): {head}"
