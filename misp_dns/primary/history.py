"""The zone's versions: the serial, kept on disk so it never goes back, and recent deltas.

Every change of the zone's content takes the next serial (RFC 1982 arithmetic, skipping 0).
The serial and the digest of the content it names are written to `<state_dir>/rpz-<zone>.serial`
(a small JSON file, replaced atomically), so that after a restart an unchanged zone keeps
its serial and a changed one takes the next; without the file, the first serial is the
current time in seconds, above whatever an earlier install may have handed out.

`History` keeps the last `limit` deltas (`Delta`: the serial before and after, the records
deleted and added) for IXFR (RFC 1995); a secondary whose serial is older than the oldest
delta gets the whole zone instead.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Sequence

import attrs
from twisted.logger import Logger

from misp_dns.primary.zone import Record, ZoneContent

__all__ = ["Delta", "History", "SerialStore", "Version", "next_serial"]

log = Logger()


def next_serial(serial: int) -> int:
    """The serial after `serial` (RFC 1982: adding 1 modulo 2**32; 0 is skipped)."""
    following = (serial + 1) & 0xFFFFFFFF
    return following or 1


@attrs.frozen
class Version:
    """One version of the zone: its serial and content."""

    serial: int
    content: ZoneContent


@attrs.frozen
class Delta:
    """The change from serial `before` to serial `after`."""

    before: int
    after: int
    deleted: Sequence[Record]
    added: Sequence[Record]


class History:
    """The last `limit` deltas, oldest first."""

    def __init__(self, limit: int) -> None:
        self._deltas: deque[Delta] = deque(maxlen=limit)

    def add(self, delta: Delta) -> None:
        """Keep `delta` (the oldest one leaves when `limit` are kept)."""
        self._deltas.append(delta)

    def since(self, serial: int, current: int) -> list[Delta] | None:
        """The deltas from `serial` up to `current`, or None when they are not all kept."""
        deltas = list(self._deltas)
        for index, delta in enumerate(deltas):
            if delta.before == serial:
                chain = deltas[index:]
                if chain[-1].after == current:
                    return chain
                return None
        return None

    def __len__(self) -> int:
        return len(self._deltas)


class SerialStore:
    """The serial's file in the state directory."""

    def __init__(self, state_dir: str, zone: str) -> None:
        self.path = os.path.join(state_dir, f"rpz-{zone.rstrip('.').lower()}.serial")

    def load(self) -> tuple[int, str] | None:
        """The saved (serial, digest), or None when there is none that reads."""
        try:
            with open(self.path, encoding="utf-8") as file:
                saved = json.load(file)
            serial, digest = int(saved["serial"]), str(saved["digest"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warn("cannot read the RPZ serial from {path}: {why}", path=self.path, why=exc)
            return None
        if not 0 < serial <= 0xFFFFFFFF:
            return None
        return serial, digest

    def save(self, serial: int, digest: str) -> None:
        """Write the serial and its content's digest (a failure is logged, not raised)."""
        temporary = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump({"serial": serial, "digest": digest}, file)
            os.replace(temporary, self.path)
        except OSError as exc:
            log.error(
                "cannot save the RPZ serial {serial} to {path}: {why}; after a restart the"
                " zone may take a serial its secondaries already passed",
                serial=serial,
                path=self.path,
                why=exc.strerror,
            )

    def first_serial(self, digest: str, now: float) -> int:
        """The serial of the first version built after a start, with content `digest`."""
        saved = self.load()
        if saved is None:
            return int(now) & 0xFFFFFFFF or 1
        serial, saved_digest = saved
        return serial if saved_digest == digest else next_serial(serial)
