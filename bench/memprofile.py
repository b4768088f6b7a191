"""Where the memory and the reactor's time go during one full fetch from MISP (diagnosis).

    .venv/bin/python bench/memprofile.py [--count 1000000] [--cycles 2] [--tracemalloc]

Runs, in this process, `--cycles` cycles of a `misp` policy's updater
(`IndicatorUpdater.update_now`: fetch, normalise, build, install, save) against the MISP
stand-in (`misp_standin.py`, started here on the other CPUs), and reports for each:

- the RSS before and after, and the peak (VmHWM), with an RSS sample every 50 ms to place it;
- every garbage collection and its pause (`gc.callbacks`), full ones listed;
- how long the reactor thread could not run: the gaps between ticks of a 1 ms
  `LoopingCall` (what a query arriving then would have waited), and for each gap over
  10 ms where the reactor thread was (`stallwatch.StallWatch`);
- what stays: tracked objects, pymalloc's arenas (memory the process keeps although
  nothing uses it), and the RSS after `malloc_trim`;
- with `--tracemalloc`, the traced peak and the allocation sites still holding the most
  memory at the end (slows everything down several times; the RSS figures then include
  tracemalloc's own memory);
- with `--freeze`, the same after `gc.freeze()`: what the collector's pauses would be if the
  server moved its start-up objects out of its way.

From the second cycle on, the stand-in changes 1% of the values, so a cycle replaces a
snapshot of `--count` names, as a refresh does; before each cycle, the policy decides
`--warm` query names (blocked ones, half of them subdomains, and allowed ones), so its
decision memos are as full as under the `million` scenario's steady load, and is asked
again for one name after the cycle, when it drops the memos of the old snapshot.

It uses the server's own classes (`build_policies` from `misp_dns.build`) and changes
nothing in them.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from integration.net import free_port  # noqa: E402
from probe import MemoryWatch, memory_mib  # noqa: E402
from stallwatch import StallWatch  # noqa: E402

__all__ = ["main"]

API_KEY = "m3mpr0f1l3m3mpr0f1l3m3mpr0f1l3m3mpr0f1"


class _GcPauses:
    """Every collection: (generation, seconds, start time), through `gc.callbacks`."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []
        self.tracked: list[int] = []  # objects the collector tracks, at each full collection
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if info["generation"] == 2:
                self.tracked.append(len(gc.get_objects()))
            self._started = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self._started
            self.pauses.append((info["generation"], elapsed, self._started))

    def summary(self, since: float, until: float) -> str:
        chosen = [p for p in self.pauses if since <= p[2] <= until]
        full = [p for p in chosen if p[0] == 2]
        longest = max((p[1] for p in chosen), default=0.0)
        tracked = sorted(self.tracked)
        objects = (
            f"; objects tracked at a full collection: median {tracked[len(tracked) // 2]:,},"
            f" most {tracked[-1]:,}"
            if tracked
            else ""
        )
        return (
            f"{len(chosen)} collections ({len(full)} full), {sum(p[1] for p in chosen):.2f} s"
            f" in all, the longest {longest * 1000:.0f} ms; full ones: "
            + ", ".join(f"{p[1] * 1000:.0f} ms" for p in full[:12])
            + objects
        )


def _overlap(stalls: StallWatch, pauses: _GcPauses, over: float = 0.05) -> str:
    """How many reactor stalls contain a garbage collection, and how much of them it was."""
    long = [(g.ended - g.seconds, g.ended) for g in stalls.stalls(over)]
    with_gc = 0
    gc_time = 0.0
    for begin, end in long:
        inside = [p[1] for p in pauses.pauses if begin <= p[2] <= end]
        if inside:
            with_gc += 1
            gc_time += sum(inside)
    total = sum(end - begin for begin, end in long)
    return (
        f"stalls with a garbage collection inside: {with_gc} of {len(long)}; collections take"
        f" {gc_time:.1f} s of their {total:.1f} s"
    )


def _page_decode(port: int, limit: int = 5000) -> str:
    """What decoding one page of `limit` attributes costs (json.loads holds the GIL)."""
    import json
    import urllib.request

    body = json.dumps({"limit": limit, "page": 1, "includeEventTags": True}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/attributes/restSearch",
        data=body,
        headers={"Authorization": API_KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        page = response.read()
    best = min(_timed(json.loads, page) for _ in range(5))
    return (
        f"json.loads of one page ({limit:,} attributes, {len(page) / 2**20:.1f} MiB):"
        f" {best * 1000:.0f} ms, all of it holding the GIL"
    )


def _timed(function: Any, argument: Any) -> float:
    started = time.perf_counter()
    function(argument)
    return time.perf_counter() - started


def _standin(count: int, allowed: int) -> tuple[subprocess.Popen[bytes], int]:
    """The stand-in on every CPU but the first; this process then keeps to the first."""
    port = free_port()
    command = [
        sys.executable,
        str(HERE / "misp_standin.py"),
        "--port",
        str(port),
        "--count",
        str(count),
        "--allowed",
        str(allowed),
        "--api-key",
        API_KEY,
    ]
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        command = ["taskset", "-c", ",".join(map(str, cpus[1:])), *command]
        os.sched_setaffinity(0, {cpus[0]})
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    for line in process.stdout:
        if b"ready" in line:
            return process, port
    raise RuntimeError("the MISP stand-in did not start")


def _policy(port: int, state_dir: str, reactor: Any) -> Any:
    from misp_dns.build import build_policies
    from misp_dns.config import load_config
    from misp_dns.registry import default_registry

    config_path = Path(state_dir) / "memprofile.toml"
    config_path.write_text(
        f'[server]\nstate_dir = "{state_dir}"\nupstreams = ["127.0.0.1:9"]\n'
        f'[[policy]]\ntype = "misp"\nserver_url = "http://127.0.0.1:{port}"\n'
        f'api_key = "{API_KEY}"\nmax_ioc_age = "36500d"\n'
    )
    registry = default_registry()
    return build_policies(load_config(config_path, registry), registry, reactor)[0]


def _arenas() -> str:
    """pymalloc's arena counts, from `sys._debugmallocstats()` (which writes to fd 2)."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    wanted = ("arenas allocated current", "bytes in allocated blocks", "bytes in available blocks")
    found = []
    for line in text.splitlines():
        label, _, value = line.partition("=")
        if label.strip().lstrip("#").strip() in wanted:
            found.append(f"{label.strip().lstrip('#').strip()} {value.strip()}")
    return "; ".join(found)


def _malloc_trim() -> bool:
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _count_objects() -> dict[str, int]:
    from misp_dns.interfaces import RawIndicator

    counts = {"RawIndicator": 0, "dict": 0, "all tracked": 0}
    for item in gc.get_objects():
        counts["all tracked"] += 1
        if isinstance(item, RawIndicator):
            counts["RawIndicator"] += 1
        elif type(item) is dict:
            counts["dict"] += 1
    return counts


# How long the reactor is watched after a cycle: the memory trimming thread runs then.
_TAIL_SECONDS = 2.0


def _asked_names(count: int, allowed: int, warm: int) -> list[str]:
    """What `million` asks during a refresh: blocked names (half of them subdomains) among
    those the stand-in never changes, and allowed names, shuffled."""
    from corpus import allowed_names, blocked_queries, indicators
    from misp_standin import CHANGED_SHARE

    names = indicators(count, allowed_names(allowed))
    usable = names[: count - count // CHANGED_SHARE]
    mixed = blocked_queries(random.Random(11).sample(usable, min(len(usable), warm)))
    mixed += allowed_names(allowed)[:warm]
    random.Random(12).shuffle(mixed)
    return mixed


def _ask_all(policy: Any, names: list[str]) -> None:
    from misp_dns.interfaces import PolicyQuery

    for name in names:
        policy.decide(PolicyQuery(name, 1))


class _Asker:
    """Asks the policy about the next of `names` every 5 ms, as queries would (so the first
    one after the swap drops the old snapshot's memos, on the reactor thread)."""

    def __init__(self, policy: Any, names: list[str], reactor: Any) -> None:
        from twisted.internet.task import LoopingCall

        self._policy = policy
        self._names = names
        self._next = 0
        self._call = LoopingCall(self._ask)
        self._call.clock = reactor
        self._call.start(0.005)

    def _ask(self) -> None:
        from misp_dns.interfaces import PolicyQuery

        self._policy.decide(PolicyQuery(self._names[self._next % len(self._names)], 1))
        self._next += 1

    def stop(self) -> None:
        self._call.stop()


def main() -> None:
    """Fetch `--cycles` times, report each."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--allowed", type=int, default=10_000)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="gc.freeze() before the cycle (an experiment: what if the server froze its"
        " start-up objects out of the collector's way)",
    )
    parser.add_argument(
        "--cycles",
        type=int,
        default=2,
        help="update cycles in a row; from the second on, each replaces a full snapshot",
    )
    parser.add_argument(
        "--warm",
        type=int,
        default=10_000,
        help="blocked query names the policy decides before and during each cycle"
        " (and as many allowed ones, up to --allowed)",
    )
    args = parser.parse_args()

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater

    standin, port = _standin(args.count, args.allowed)
    pid = os.getpid()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    async def run(state_dir: str) -> None:
        policy = _policy(port, state_dir, reactor)
        asked = _asked_names(args.count, args.allowed, args.warm)
        gc.collect()
        if args.freeze:
            gc.freeze()
            say(f"gc.freeze(): {gc.get_freeze_count():,} objects out of the collector's way")
        for cycle in range(1, args.cycles + 1):
            await _one_cycle(cycle, policy, asked, args.tracemalloc)
        _what_stays(policy.updater)

    async def _one_cycle(cycle: int, policy: Any, asked: list[str], traced: bool) -> None:
        updater = policy.updater
        _ask_all(policy, asked)
        pauses = _GcPauses()
        asker = _Asker(policy, asked, reactor)
        stalls = StallWatch(reactor)
        watch = MemoryWatch(pid, 0.05).start()
        before = memory_mib(pid)
        if traced:
            tracemalloc.start(8)
        started = time.perf_counter()
        await updater.update_now()
        ended = time.perf_counter()
        # What follows a cycle: the thread trimming memory, queries on the new snapshot.
        await deferLater(reactor, _TAIL_SECONDS, lambda: None)
        tail = time.perf_counter()
        watch.stop()
        stalls.stop()
        asker.stop()
        gc.callbacks.remove(pauses._callback)
        peak_at, _ = watch.peak()
        say(
            f"cycle {cycle}: {len(updater.snapshot):,} names in {ended - started:.1f} s"
            f" (failures: {updater.failures}); RSS {before:.0f} MiB before,"
            f" {memory_mib(pid):.0f} MiB after, peak {memory_mib(pid, 'VmHWM'):.0f} MiB at"
            f" +{peak_at - watch.samples[0][0]:.1f} s; load average"
            f" {os.getloadavg()[0]:.2f}"
        )
        say(f"  reactor, cycle and {_TAIL_SECONDS:.0f} s after: {stalls.summary(started, tail)}")
        for stall in stalls.stalls(0.010, started, tail):
            say(f"  +{stall.ended - started:6.2f} s {stall.describe()}")
        say(f"  GC: {pauses.summary(started, tail)}")
        say(f"  {_overlap(stalls, pauses)}")
        if traced:
            _traced_sites()

    def _traced_sites() -> None:
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        say(
            f"  tracemalloc: peak {peak / 2**20:.0f} MiB traced, {current / 2**20:.0f} MiB"
            " still held; largest sites still holding memory:"
        )
        for stat in snapshot.statistics("lineno")[:10]:
            frame = stat.traceback[0]
            say(
                f"    {stat.size / 2**20:7.1f} MiB {stat.count:>9,} blocks"
                f"  {frame.filename.split('/misp_dns/')[-1]}:{frame.lineno}"
            )

    def _what_stays(updater: Any) -> None:
        say(f"  {_page_decode(port)}")
        gc.collect()
        say(f"  after gc.collect(): RSS {memory_mib(pid):.0f} MiB; objects: {_count_objects()}")
        say(f"  pymalloc: {_arenas()}")
        trimming = time.perf_counter()
        trimmed = _malloc_trim()
        took = (time.perf_counter() - trimming) * 1000
        say(
            f"  after malloc_trim(0) (released: {trimmed}, {took:.1f} ms):"
            f" RSS {memory_mib(pid):.0f} MiB"
        )
        payload = sum(buffer.nbytes for buffer in updater.snapshot.to_buffers())
        say(f"  the DomainSet itself: {payload / 2**20:.0f} MiB of buffers")

    try:
        with tempfile.TemporaryDirectory(prefix="misp-dns-memprofile-") as state_dir:
            done = ensureDeferred(run(state_dir))
            done.addErrback(lambda failure: say(f"failed: {failure.getTraceback()}"))
            done.addBoth(lambda _: reactor.stop())
            reactor.run()
    finally:
        standin.terminate()
        standin.wait(10)


if __name__ == "__main__":
    main()
