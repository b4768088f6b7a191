"""What a systemd service unit runs, read from the unit file and its drop-ins, for tests that
run a packaged service's commands where no systemd runs.

`ServiceUnit.read` merges `[Service]` as systemd does for the settings used here: a later
file's value replaces an earlier one's, list settings (`ExecStartPre=`) add up, and an empty
assignment empties them. It keeps the user, the ambient capabilities, the umask and the
commands with their prefixes (`-`: a failure is ignored; `+`: runs with full privileges).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

import attrs

__all__ = ["ExecCommand", "ServiceUnit"]

_LISTS = {"ExecStartPre", "ExecStart", "AmbientCapabilities"}
_PREFIXES = "-+!@:"


@attrs.frozen
class ExecCommand:
    """One `Exec...=` line: its arguments and what its prefix says."""

    argv: tuple[str, ...]
    ignore_failure: bool
    privileged: bool

    @classmethod
    def parse(cls, line: str) -> ExecCommand:
        """The command of an `Exec...=` value such as `-+/usr/bin/x --y`."""
        stripped = line.lstrip(_PREFIXES)
        prefix = line[: len(line) - len(stripped)]
        return cls(tuple(shlex.split(stripped)), "-" in prefix, "+" in prefix)


@attrs.frozen
class ServiceUnit:
    """The settings of a service unit that say how its commands run."""

    user: str
    group: str
    dynamic_user: bool
    capabilities: tuple[str, ...]
    umask: str | None
    exec_start_pre: tuple[ExecCommand, ...]
    exec_start: ExecCommand

    @classmethod
    def read(cls, texts: Iterable[str]) -> ServiceUnit:
        """The unit made of the unit file's text followed by its drop-ins' texts."""
        settings: dict[str, list[str]] = {}
        for text in texts:
            for key, value in _service_assignments(text):
                if key in _LISTS:
                    settings[key] = [*settings.get(key, []), value] if value else []
                else:
                    settings[key] = [value]
        (start,) = settings["ExecStart"]
        return cls(
            user=_last(settings, "User", "root"),
            group=_last(settings, "Group", _last(settings, "User", "root")),
            dynamic_user=_last(settings, "DynamicUser", "no") in {"yes", "true", "1", "on"},
            capabilities=tuple(
                name.lower().removeprefix("cap_")
                for value in settings.get("AmbientCapabilities", [])
                for name in value.split()
            ),
            umask=_last(settings, "UMask", "") or None,
            exec_start_pre=tuple(ExecCommand.parse(v) for v in settings.get("ExecStartPre", [])),
            exec_start=ExecCommand.parse(start),
        )


def _last(settings: dict[str, list[str]], key: str, default: str) -> str:
    values = settings.get(key) or [default]
    return values[-1]


def _service_assignments(text: str) -> Iterable[tuple[str, str]]:
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()
