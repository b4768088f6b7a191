"""A throwaway copy of this machine's root file system, to install a Debian package in.

`ThrowawayRoot` starts a holder process in a private mount namespace (`unshare --mount`).
There, on a tmpfs of its own, it mounts an overlay whose lower layer is `/` (this machine: a
Debian that has the package's dependencies, read-only) and whose upper layer takes every
write; it gives the overlay its own /proc, /run (empty, so systemd does not seem to run
there) and /tmp, this machine's /dev, and chroots into it. Commands run inside with
`nsenter --mount --root` into the holder, with a clean environment, as root or as a user of
the throwaway root (`setpriv`); the test reads and writes its files through
`/proc/<holder>/root`.

So `dpkg -i` in there is a real install on a fresh Debian: maintainer scripts run, users are
added to its own /etc/passwd, its dpkg database records the package. None of it reaches the
real system, no container or image is needed, and stopping the holder drops the namespace
and the tmpfs with everything written. The network is this machine's: servers started in
there answer on its loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ThrowawayRoot"]

#: The environment commands get inside (a login's, not the test runner's).
CLEAN_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}

# $1 is the folder the tmpfs goes on.
_SETUP = r"""
set -eu
mount -t tmpfs tmpfs "$1"
mkdir "$1/upper" "$1/work" "$1/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" "$1/root"
mount --rbind /dev "$1/root/dev"
mount -t proc proc "$1/root/proc"
mount -t tmpfs tmpfs "$1/root/run"
mount -t tmpfs -o mode=1777 tmpfs "$1/root/tmp"
exec chroot "$1/root" sh -c 'echo ready && exec sleep infinity'
"""


class ThrowawayRoot:
    """A copy-on-write root file system in a private mount namespace (see the module)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._holder: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Set the namespace and the overlay up; return once commands can run inside."""
        self.directory.mkdir(parents=True, exist_ok=True)
        unshare = ["unshare", "--mount", "--propagation", "private"]
        holder = subprocess.Popen(
            [*unshare, "sh", "-c", _SETUP, "sh", str(self.directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "ready":
            holder.kill()
            _, errors = holder.communicate()
            raise RuntimeError(f"could not set the throwaway root up: {errors}")
        self._holder = holder
        if _same_file(self.path("/"), Path("/")):
            self.stop()
            raise RuntimeError("the throwaway root is this machine's root")

    def stop(self) -> None:
        """Stop the holder, which drops the namespace and all that was written."""
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.send_signal(signal.SIGKILL)
            holder.communicate()

    def __enter__(self) -> ThrowawayRoot:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def path(self, inside: str) -> Path:
        """Where the file `inside` (an absolute path in the throwaway root) is seen from
        here."""
        assert self._holder is not None
        return Path(f"/proc/{self._holder.pid}/root") / inside.lstrip("/")

    def command(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        capabilities: Sequence[str] = (),
        umask: str | None = None,
    ) -> list[str]:
        """The command line that runs `argv` inside, as root or as `user` with only the
        ambient `capabilities` (names such as "net_bind_service") and `umask`."""
        # A dead holder's pid may name another process, whose root is this machine's.
        assert self._holder is not None and self._holder.poll() is None, "the holder is gone"
        inside = list(argv)
        if umask is not None:
            inside = ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *inside]
        if user is not None:
            caps = ",".join(f"+{name}" for name in capabilities) or "-all"
            inside = [
                "setpriv",
                f"--reuid={user}",
                f"--regid={user}",
                "--init-groups",
                f"--inh-caps={caps}",
                f"--ambient-caps={caps}",
                "--",
                *inside,
            ]
        enter = ["nsenter", f"--target={self._holder.pid}", "--mount", "--root", "--wd"]
        return [*enter, "--", *inside]

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside and return what it printed; fail with its output if `check`
        and it exits non-zero."""
        done = subprocess.run(
            self.command(argv, user=user),
            env={**CLEAN_ENVIRONMENT, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode} in the throwaway root:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def popen(self, argv: Sequence[str], log: Path, **options: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside (`command`'s options), its output going to `log`; stop it
        with `net.stop_process` before `stop`."""
        with open(log, "wb") as output:
            return subprocess.Popen(
                self.command(argv, **options),
                env=CLEAN_ENVIRONMENT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def install(self, deb: Path) -> subprocess.CompletedProcess[str]:
        """`dpkg -i` the package file `deb` inside."""
        inside = f"/tmp/{deb.name}"
        target = self.path(inside)
        target.write_bytes(deb.read_bytes())
        try:
            return self.run(["dpkg", "-i", inside])
        finally:
            os.unlink(target)


def _same_file(a: Path, b: Path) -> bool:
    first, second = a.stat(), b.stat()
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
