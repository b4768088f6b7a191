"""A process that exports numbered query records to a JSONL file at a steady rate.

Run as a program it feeds `--count` events (question names `n<i>.load.example`) through the
real `ExporterService` and `JsonlSink` on the real reactor, `--rate` per second, then stops
the service (flushing) and exits 0. Its SIGHUP handling is the sink's own, so logrotate's
`postrotate` can signal it. `JsonlWriter` runs it from a test; `sequence_numbers` reads the
numbers back from any set of files, failing on a line that is not whole JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["JsonlWriter", "sequence_numbers"]


class JsonlWriter:
    """The writer as a child process."""

    def __init__(self, path: Path, count: int, rate: int, workdir: Path) -> None:
        self.path = path
        self.count = count
        self.rate = rate
        self.ready = workdir / "writer.ready"
        self.log_path = workdir / "writer.out"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Its process id (for `kill -HUP`)."""
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 15.0) -> None:
        """Start writing; return once the sink is started and its SIGHUP handler installed."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--path",
                    str(self.path),
                    "--count",
                    str(self.count),
                    "--rate",
                    str(self.rate),
                    "--ready",
                    str(self.ready),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the writer did not start:\n{self.log_text()}")
            time.sleep(0.02)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the writer to finish; its exit status."""
        assert self.process is not None
        return self.process.wait(timeout)

    def reopened(self) -> int:
        """How often the sink opened its file again (printed when the writer finished)."""
        found = re.search(r"reopened (\d+)", self.log_text())
        return int(found.group(1)) if found else -1

    def log_text(self) -> str:
        """What the writer printed."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def sequence_numbers(paths: Iterable[Path]) -> list[int]:
    """The record numbers found in `paths`; AssertionError on a line that is not whole."""
    numbers = []
    for path in paths:
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends in the middle of a line"
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(
                    f"{path}: a line that is not whole JSON: {line[:80]!r}"
                ) from None
            name = record["question"]["questionName"]
            numbers.append(int(name.split(".", 1)[0][1:]))
    return numbers


def _main() -> None:
    import attrs
    from twisted.internet import reactor, task

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from integration.export_events import recursive_event
    from misp_dns.export.exporter import ExporterService, SinkSlot
    from misp_dns.export.jsonl import JsonlSink

    parser = argparse.ArgumentParser()
    parser.add_argument("--path", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--ready", required=True)
    args = parser.parse_args()

    sink = JsonlSink(args.path, reactor)
    exporter = ExporterService([SinkSlot("jsonl", sink)], reactor)
    exporter.startService()
    template = recursive_event("load.example")
    tick = 0.01
    per_tick = max(1, int(args.rate * tick))
    sent = 0

    def produce() -> None:
        nonlocal sent
        for _ in range(min(per_tick, args.count - sent)):
            name = f"n{sent}".encode()
            question = bytes([len(name)]) + name + template.question
            event = attrs.evolve(template, question=question, timestamp=time.time())
            exporter.observe(event)
            sent += 1
        if sent >= args.count:
            loop.stop()

    def finished(_: object) -> None:
        stopping = exporter.stopService()
        stopping.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    loop = task.LoopingCall(produce)
    loop.clock = reactor  # type: ignore[assignment]
    loop.start(tick).addCallback(finished)
    Path(args.ready).write_text("ready")
    reactor.run()  # type: ignore[attr-defined]
    print(f"reopened {sink.reopened}", flush=True)
    if exporter.dropped or sink.dropped:
        print(f"dropped: queue {exporter.dropped}, sink {sink.dropped}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    _main()
