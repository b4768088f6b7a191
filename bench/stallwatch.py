"""Where the reactor thread was when it could not answer: stalls with their stacks (diagnosis).

    watch = StallWatch(reactor)      # ticks every millisecond from now on
    ...                              # the work to look at
    watch.stop()
    for stall in watch.stalls(over=0.010):
        print(stall.describe())

A 1 ms `LoopingCall` notes the gap between two of its ticks: how long a query arriving in
between would have waited. To say *where* the reactor thread was during a long gap, each
tick arms `faulthandler.dump_traceback_later`, whose timer runs in a C thread that needs no
GIL: when the reactor has not ticked again before it expires, it writes every thread's
Python stack to a file, even while the reactor thread holds the GIL inside one long C call
(freeing a big dict, `gc.collect`), where a Python watchdog thread reading
`sys._current_frames()` would only run after the call was over. The tick that ends the
gap finds the file grown and keeps the reactor thread's part of it with the gap.

Arming costs about 0.1 ms (faulthandler starts a thread each time), so a tick re-arms only
when the last arming is `rearm` old: the stack is then taken between `threshold - rearm`
and `threshold` into a gap, and a stall shorter than `threshold - rearm` has none. A long
stall without a stack is one in which the watchdog's thread did not run either: the CPU was
taken from the whole process (another process, a long system call of another thread on a
kernel without preemption, the hypervisor).

The timer reads the other threads' frames without the GIL, as faulthandler does when a
process crashes, so it can read a frame being torn down: one `memprofile.py` run of nine
here ended in a segmentation fault (cause not pinned down). A diagnosis tool only.
"""

from __future__ import annotations

import faulthandler
import os
import tempfile
import threading
import time
from typing import Any

import attrs

__all__ = ["Stall", "StallWatch"]

_NO_STACK = "(no stack: the watchdog did not run either, the CPU was taken from the process)"


@attrs.frozen
class Stall:
    """A gap between two ticks: its length, when it ended (`perf_counter`) and, when the
    watchdog fired in it, the reactor thread's stack at that moment (innermost first)."""

    seconds: float
    ended: float
    stack: tuple[str, ...] = ()

    def describe(self, frames: int = 6) -> str:
        """One line for the gap, then its innermost `frames` frames, one a line."""
        lines = [f"{self.seconds * 1000:6.1f} ms"]
        lines += [f"    {frame}" for frame in self.stack[:frames]] or [f"    {_NO_STACK}"]
        return "\n".join(lines)


class StallWatch:
    """Ticks every `interval` on `reactor`, keeping every gap and, for the long ones, the
    reactor thread's stack (see the module docstring). Start it on the reactor thread."""

    def __init__(
        self,
        reactor: Any,
        threshold: float = 0.010,
        interval: float = 0.001,
        rearm: float = 0.003,
    ) -> None:
        from twisted.internet.task import LoopingCall

        self.gaps: list[Stall] = []
        self._threshold = threshold
        self._rearm = rearm
        self._thread = f"0x{threading.get_ident():016x}"
        self._dumps = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self._read = 0
        self._armed = 0.0
        self._last = time.perf_counter()
        self._call = LoopingCall(self._tick)
        self._call.clock = reactor
        self._call.start(interval)

    def _tick(self) -> None:
        now = time.perf_counter()
        written = os.fstat(self._dumps.fileno()).st_size
        stack: tuple[str, ...] = ()
        if written > self._read:
            self._dumps.seek(self._read)
            stack = self._reactor_stack(self._dumps.read(written - self._read).decode())
            self._read = written
            self._armed = 0.0  # it fired: arm again now
        self.gaps.append(Stall(now - self._last, now, stack))
        if now - self._armed >= self._rearm:
            faulthandler.dump_traceback_later(self._threshold, file=self._dumps)
            self._armed = now
        self._last = time.perf_counter()

    def _reactor_stack(self, dump: str) -> tuple[str, ...]:
        """The reactor thread's frames in one faulthandler dump, as `file:line in function`."""
        frames: list[str] = []
        inside = False
        for line in dump.splitlines():
            if line.startswith(("Thread ", "Current thread ")):
                inside = self._thread in line
            elif inside and line.strip().startswith("File "):
                frames.append(_short(line.strip()))
        return tuple(frames)

    def stop(self) -> None:
        """Stop ticking and disarm the watchdog."""
        self._call.stop()
        faulthandler.cancel_dump_traceback_later()
        self._dumps.close()

    def stalls(
        self, over: float = 0.010, since: float = 0.0, until: float = float("inf")
    ) -> list[Stall]:
        """The gaps longer than `over` that ended between `since` and `until`."""
        return [g for g in self.gaps if g.seconds > over and since <= g.ended <= until]

    def summary(self, since: float = 0.0, until: float = float("inf")) -> str:
        """The longest gap and how many were over 10, 20 and 50 ms."""
        chosen = [g.seconds for g in self.gaps if since <= g.ended <= until]
        counts = ", ".join(
            f"{sum(1 for s in chosen if s > limit)} over {limit * 1000:.0f} ms"
            for limit in (0.010, 0.020, 0.050)
        )
        return f"longest gap {max(chosen, default=0.0) * 1000:.1f} ms; {counts}"


def _short(frame: str) -> str:
    """`File "/x/misp_dns/intel/updater.py", line 12 in f` as `intel/updater.py:12 f`."""
    location, _, function = frame.removeprefix("File ").rpartition(" in ")
    path, _, line = location.rpartition(", line ")
    path = path.strip('"')
    for marker in ("/misp_dns/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line} {function}"
