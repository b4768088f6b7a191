"""Running a command as an unprivileged user, as the packaged service runs."""

from __future__ import annotations

import os

from conftest import require_tool

__all__ = ["NOBODY", "as_nobody"]

#: The uid and gid commands are run as (nobody, nogroup on Debian).
NOBODY = 65534


def as_nobody(command: list[str]) -> list[str]:
    """`command` run as nobody when the tests run as root (as it is otherwise), through
    `setpriv`; without setpriv the test is skipped, or fails on CI."""
    if os.geteuid() != 0:
        return command
    setpriv = require_tool("setpriv")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
