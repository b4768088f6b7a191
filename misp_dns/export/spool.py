"""The frames a stream sink holds for its receiver, kept outside malloc's heap.

A syslog receiver that is down for ten seconds leaves twenty thousand records waiting at
2,000 queries/s, about 12 MB. Kept as one bytes object per frame they would be scattered
through malloc's heap between blocks that live longer, and once delivered the heap would
keep their pages: every outage would leave the server a few megabytes larger. A
`FrameSpool` packs frames into segments of 64 KiB instead, each an anonymous memory mapping
of its own. A delivered segment is unmapped, so its memory goes back to the system at once;
the one segment still being filled is emptied and reused, so a healthy connection costs no
system call at all.
"""

from __future__ import annotations

import mmap
from collections import deque

__all__ = ["SEGMENT_SIZE", "FrameSpool"]

#: Frames are packed into segments of this many bytes (a larger frame gets a segment to
#: itself), and each segment is written to the connection in one piece.
SEGMENT_SIZE = 64 * 1024


class _Segment:
    """One anonymous mapping and how much of it holds frames."""

    __slots__ = ("frames", "memory", "used")

    def __init__(self, capacity: int) -> None:
        self.memory = mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE)
        self.used = 0
        self.frames = 0

    def room(self) -> int:
        return len(self.memory) - self.used

    def put(self, data: bytes) -> None:
        end = self.used + len(data)
        self.memory[self.used : end] = data
        self.used = end


class FrameSpool:
    """Octet-counted frames (RFC 6587: `LEN SP MSG`), oldest first, in mapped segments."""

    def __init__(self, segment_size: int = SEGMENT_SIZE) -> None:
        self.segment_size = segment_size
        self._segments: deque[_Segment] = deque()
        self._frames = 0
        self._mapped = 0

    def __len__(self) -> int:
        """How many frames are held."""
        return self._frames

    @property
    def mapped(self) -> int:
        """Bytes of memory mapped for the frames (whole segments, filled or not)."""
        return self._mapped

    def cost(self, message: bytes) -> int:
        """Bytes of memory that appending `message` would map: 0 when the segment being
        filled has room for it, else the size of the segment it would get."""
        size = _framed_size(message)
        segment = self._segments[-1] if self._segments else None
        if segment is not None and segment.room() >= size:
            return 0
        return max(self.segment_size, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)

    def append(self, message: bytes) -> None:
        """Hold `message`, framed as `LEN SP MSG`."""
        capacity = self.cost(message)
        if capacity:
            self._segments.append(_Segment(capacity))
            self._mapped += capacity
        segment = self._segments[-1]
        segment.put(b"%d " % len(message))
        segment.put(message)
        segment.frames += 1
        self._frames += 1

    def take(self) -> tuple[bytes, int]:
        """The oldest segment's bytes and how many frames they hold, removed from the spool;
        `(b"", 0)` when it is empty."""
        if not self._segments:
            return b"", 0
        segment = self._segments[0]
        data, frames = segment.memory[: segment.used], segment.frames
        self._frames -= frames
        if len(self._segments) == 1 and len(segment.memory) == self.segment_size:
            segment.used = segment.frames = 0
        else:
            self._segments.popleft()
            self._unmap(segment)
        return data, frames

    def take_all(self) -> tuple[bytes, int]:
        """Every frame held, as one bytes object, and how many; the spool is left empty."""
        parts = [segment.memory[: segment.used] for segment in self._segments]
        frames = self._frames
        self.clear()
        return b"".join(parts), frames

    def clear(self) -> int:
        """Forget every frame and unmap every segment; how many frames there were."""
        frames = self._frames
        while self._segments:
            self._unmap(self._segments.popleft())
        self._frames = 0
        return frames

    def _unmap(self, segment: _Segment) -> None:
        self._mapped -= len(segment.memory)
        segment.memory.close()


def _framed_size(message: bytes) -> int:
    return len(b"%d " % len(message)) + len(message)
