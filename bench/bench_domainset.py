"""Measure the indicator matcher with 1,000 and 1,000,000 indicators.

    .venv/bin/python bench/bench_domainset.py [--small 1000] [--large 1000000]

For each size: normalising and building time, snapshot size, save and load time, memory of a
fresh process once the snapshot is loaded (what a restarted server holds), peak memory of a
streamed refresh, and the cost of one `DomainSet.match` for exact hits, subdomain hits and
misses, with the large/small ratio (issue 5 asks for the same cost at both sizes).

Indicators are synthetic but shaped like real feeds: DGA-style names, combosquats built from
second-level labels of the Cloudflare top 100k, hosts under dynamic-DNS providers (MISP's
dynamic-dns warninglist), 10% `hostname` entries, some case and whitespace mess, 2,000
events. Misses are the Cloudflare top 100k names themselves.

Every figure comes from a child process of its own, so one measurement's garbage does not
weigh on the next. Lookups of both sizes run in one process, alternating, and the fastest of
several runs is kept, so a busy machine skews both sides alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "warninglists"
EVENTS = 2000
POOL = 1000  # distinct names in each hit mix, the same at every size
MISSES = 50_000  # distinct names in the miss mix
QUERIES = 200_000  # queries per timed run
REPEATS = 7  # timed runs per mix and size; the fastest is reported


def _memory(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def _popular() -> list[str]:
    return json.loads((DATA / "cloudflare-top100k.json").read_text())["list"]


def _indicators(count: int, seed: int = 1) -> Iterator[Any]:
    """`count` RawIndicator values, made lazily, as the pages of a fetch would arrive."""
    from misp_dns.interfaces import RawIndicator

    rng = random.Random(seed)
    popular = _popular()
    words = [name.split(".")[-2] for name in popular if "." in name]
    tlds = [name.rsplit(".", 1)[-1] for name in popular]
    dynamic = json.loads((DATA / "dynamic-dns.json").read_text())["list"]
    providers = [suffix.lstrip(".") for suffix in dynamic]
    alphabet = string.ascii_lowercase + string.digits

    def uuid4() -> str:
        h = f"{rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    events = [(str(1000 + n), uuid4(), f"synthetic_campaign_{n}") for n in range(EVENTS)]
    per_event = max(1, count // EVENTS)
    for n in range(count):
        roll = rng.random()
        dga = "".join(rng.choices(alphabet, k=rng.randint(8, 18)))
        kind = "domain"
        if roll < 0.55:
            value = f"{dga}.{rng.choice(tlds)}"
        elif roll < 0.80:
            value = f"{rng.choice(words)}-{rng.choice(words)}{n % 97}.{rng.choice(tlds)}"
        elif roll < 0.90:
            value = f"{dga}.{rng.choice(providers)}"
        else:
            value = f"{rng.choice(['login', 'mail', 'cdn', 'api'])}.{dga}.{rng.choice(tlds)}"
            kind = "hostname"
        if n % 50 == 0:
            value = f" {value.upper()}. "
        event_id, event_uuid, event_info = events[min(n // per_event, EVENTS - 1)]
        yield RawIndicator(
            value=value,
            type=kind,
            event_id=event_id,
            event_uuid=event_uuid,
            event_info=event_info,
            attribute_uuid=uuid4(),
        )


def build(count: int, directory: Path) -> dict[str, Any]:
    """Normalise and build from lists in memory; save the snapshot and the query pools."""
    from misp_dns.intel.domainset import DomainSet
    from misp_dns.intel.normalize import select
    from misp_dns.intel.store import save

    raws = list(_indicators(count))
    started = time.perf_counter()
    selection = select(raws, now=time.time(), max_age=None)
    normalised = time.perf_counter()
    domainset = DomainSet.build(selection.kept)
    built = time.perf_counter()
    snapshot = directory / f"{count}.snapshot"
    save(snapshot, domainset)
    saved = time.perf_counter()

    rng = random.Random(2)
    sample = rng.sample(selection.kept, min(len(selection.kept), 50 * POOL))
    domains = [entry for entry in sample if entry.subdomains][:POOL]
    prefixes = ["www", "a.b", "x1.cdn"]
    pools = {
        "hit": [entry.name for entry in sample[:POOL]],
        "subdomain hit": [f"{rng.choice(prefixes)}.{entry.name}" for entry in domains],
        "miss": [name for name in _popular() if domainset.match(name) is None][:MISSES],
        # More distinct names than the match memo holds: Match objects are made afresh.
        "hit, 50k distinct": [entry.name for entry in sample] if len(sample) > POOL else [],
    }
    (directory / f"{count}.queries.json").write_text(json.dumps(pools))
    return {
        "names": len(domainset),
        "selection": selection.summary(),
        "normalise s (select)": normalised - started,
        "build s (DomainSet.build)": built - normalised,
        "save s": saved - built,
        "snapshot MiB": snapshot.stat().st_size / 2**20,
    }


def stream(count: int, directory: Path) -> dict[str, Any]:
    """A refresh as the updater can do it: attributes streamed through `selected` into
    `DomainSet.build`, never all held at once."""
    from misp_dns.intel.domainset import DomainSet
    from misp_dns.intel.normalize import Tally, selected

    before = _memory("VmRSS")
    started = time.perf_counter()
    tally = Tally()
    domainset = DomainSet.build(
        selected(_indicators(count), now=time.time(), max_age=None, tally=tally)
    )
    return {
        "streamed refresh s (generate+normalise+build)": time.perf_counter() - started,
        "streamed refresh peak RSS MiB": _memory("VmHWM"),
        "streamed refresh RSS before MiB": before,
        "streamed names": len(domainset),
    }


def load(count: int, directory: Path) -> dict[str, Any]:
    """A restart: a fresh process loads the snapshot."""
    import twisted.internet.reactor  # noqa: F401 - count what a server has loaded anyway

    from misp_dns.intel import store

    before = _memory("VmRSS")
    started = time.perf_counter()
    domainset = store.load(directory / f"{count}.snapshot")
    loaded = time.perf_counter()
    assert domainset is not None
    gc.collect()
    return {
        "load s": loaded - started,
        "RSS before load MiB (python+twisted)": before,
        "RSS after load MiB": _memory("VmRSS"),
        "peak RSS while loading MiB": _memory("VmHWM"),
    }


def lookups(counts: list[int], directory: Path) -> dict[str, dict[str, Any]]:
    """Time every mix against each size, alternating sizes between runs."""
    from misp_dns.intel import store

    sets = {count: store.load(directory / f"{count}.snapshot") for count in counts}
    pools = {
        count: json.loads((directory / f"{count}.queries.json").read_text()) for count in counts
    }
    results: dict[str, dict[str, Any]] = {str(count): {} for count in counts}
    for mix in pools[counts[0]]:
        best: dict[int, float] = {}
        for _ in range(REPEATS):
            for count in counts:
                pool = pools[count][mix]
                domainset = sets[count]
                if not pool or domainset is None:
                    continue
                queries = (pool * (QUERIES // len(pool) + 1))[:QUERIES]
                elapsed = _timed(domainset.match, queries) / len(queries)
                best[count] = min(best.get(count, elapsed), elapsed)
        for count, cost in best.items():
            matched = sum(sets[count].match(name) is not None for name in pools[count][mix])  # type: ignore[union-attr]
            results[str(count)][f"{mix} ns"] = cost
            results[str(count)][f"{mix} matched"] = f"{matched}/{len(pools[count][mix])}"
    return results


def _timed(match: Callable[[str], object], queries: list[str]) -> int:
    started = time.perf_counter_ns()
    for query in queries:
        match(query)
    return time.perf_counter_ns() - started


def _child(mode: str, counts: list[int], directory: Path) -> Any:
    command = [sys.executable, __file__, "--child", mode, str(directory), *map(str, counts)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(sizes: list[int], columns: list[dict[str, Any]]) -> str:
    rows = list(dict.fromkeys(key for column in columns for key in column))
    width = max(len(row) for row in rows)
    lines = [f"{'indicators':{width}}  {sizes[0]:>12,}  {sizes[1]:>12,}  ratio"]
    for row in rows:
        small, large = (column.get(row, "") for column in columns)
        ratio = ""
        if row.endswith(" ns") and isinstance(small, float) and isinstance(large, float):
            ratio = f"{large / small:.2f}"
        lines.append(f"{row:{width}}  {_cell(small):>12}  {_cell(large):>12}  {ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark misp_dns.intel.domainset.")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, directory, *counts = args.child
        numbers = [int(count) for count in counts]
        work = {"build": build, "stream": stream, "load": load}
        if mode == "lookups":
            print(json.dumps(lookups(numbers, Path(directory))))
        else:
            print(json.dumps(work[mode](numbers[0], Path(directory))))
        return

    sizes = [args.small, args.large]
    columns: list[dict[str, Any]] = [{} for _ in sizes]
    with tempfile.TemporaryDirectory(prefix="bench-domainset-") as directory:
        for column, count in zip(columns, sizes, strict=True):
            for mode in ("build", "stream", "load"):
                column.update(_child(mode, [count], Path(directory)))
        timed = _child("lookups", sizes, Path(directory))
        for column, count in zip(columns, sizes, strict=True):
            column.update(timed[str(count)])
    print(f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}")
    print(_table(sizes, columns))


if __name__ == "__main__":
    main()
