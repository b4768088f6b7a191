"""The fork server of a group ("zygote"): `python -m misp_dns.zygote`.

The supervisor (`misp_dns.group.WorkerGroup`) starts one, and it forks every serving
process, so that they share its imported interpreter state copy-on-write instead of each
importing Twisted and misp-dns into a fresh interpreter (docs/workers.md, "Memory").

At start it imports everything a serving process runs (`misp_dns.worker` and what it
imports, the epoll reactor module without installing a reactor, the policy, source and
sink plugins from their entry points), freezes the garbage collector's view of those
objects (`gc.freeze()`, so that collections in the children do not write to the shared
pages), and says `ready` on stdout. Then, on descriptor 3 (a unix socket to the
supervisor), each request is one message, the JSON `{"index": N, "argv": [...]}` with the
descriptors the serving process gets as 0, 1, 2, 3, ... attached (`socket.send_fds`): it
forks, and the child makes those its descriptors and runs `misp_dns.worker.main(argv)`.

On stdout it reports `forked N PID` after each fork and `ended PID STATUS` (the wait
status) when a child ends. It ends when its stdin or the control socket closes (the
supervisor is gone or stops it), and is killed when the supervisor dies
(`PR_SET_PDEATHSIG`); it ignores SIGTERM, SIGINT and SIGHUP, which the supervisor and
systemd send to the serving processes, so that it keeps reporting their ends while the group stops.
Its children ask for SIGTERM when it dies: no serving process outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Any

__all__ = ["CONTROL_FD", "PROCESS_NAME", "main", "place_descriptors"]

#: The descriptor of the control socket the supervisor hands the zygote.
CONTROL_FD = 3
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
#: The name `ps` and /proc/PID/comm show for the zygote.
PROCESS_NAME = b"misp-dns-zygote"
#: Signals meant for the serving processes (SIGTERM, SIGINT from systemd or a terminal to
#: the whole group, SIGHUP on a terminal's hangup), which the zygote outlives.
_IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: At most this many descriptors come with one request (stdio and 2 per listen address).
_MAX_FDS = 3 + 2 * 64


def _preload() -> None:
    """Import what a serving process runs, without installing a reactor."""
    import twisted.internet.epollreactor
    import twisted.internet.stdio  # noqa: F401

    import misp_dns.worker  # noqa: F401
    from misp_dns.registry import default_registry

    default_registry()


def _prctl(option: int, value: Any) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def place_descriptors(fds: Sequence[int]) -> None:
    """Make `fds[i]` this process's descriptor `i`, and close the originals.

    Each is first copied above every target, so that moving one never overwrites another
    still to be moved."""
    floor = max([len(fds), *fds]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    for fd in fds:
        if fd >= len(fds):
            os.close(fd)
    for target, fd in enumerate(high):
        os.dup2(fd, target)
        os.close(fd)


def _report(line: str) -> None:
    os.write(1, line.encode("utf-8") + b"\n")


def _become_worker(zygote: int, fds: list[int], argv: list[str], closing: list[int]) -> None:
    """In a forked child: take the descriptors, run a serving process, never return."""
    code: Any = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, *_IGNORED):
            signal.signal(signum, signal.SIG_DFL)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != zygote:
            os._exit(1)  # the zygote died before we asked to die with it
        for fd in closing:
            os.close(fd)
        place_descriptors(fds)
        from misp_dns import worker

        code = worker.main(argv)
    except SystemExit as stop:
        code = stop.code
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _report(f"ended {pid} {status}")


def _fork(control: socket.socket, wake: tuple[int, int]) -> bool:
    """Serve one request; False once the supervisor closed the control socket."""
    message, fds, _, _ = socket.recv_fds(control, 65536, _MAX_FDS)
    if not message:
        return False
    try:
        request = json.loads(message)
        sys.stdout.flush()
        sys.stderr.flush()
        zygote = os.getpid()
        pid = os.fork()
        if pid == 0:
            _become_worker(zygote, fds, list(request["argv"]), [control.fileno(), *wake])
        _report(f"forked {int(request['index'])} {pid}")
    finally:
        for fd in fds:
            os.close(fd)
    return True


def main() -> int:
    """Preload, then fork serving processes on request until the supervisor goes away."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME))
    for signum in _IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    control = socket.socket(fileno=CONTROL_FD)
    wake = os.pipe()
    for fd in wake:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    _preload()
    gc.collect()
    gc.freeze()
    _report("ready")
    poller = select.poll()
    for fd in (0, control.fileno(), wake[0]):
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake[0]:
                _drain(wake[0])
            elif fd == 0:
                if not os.read(0, 512):
                    return 0
            elif not _fork(control, wake):
                return 0
        _reap()


def _drain(fd: int) -> None:
    """Empty the (non-blocking) signal wake-up pipe."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


if __name__ == "__main__":
    sys.exit(main())
