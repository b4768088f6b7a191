"""Tests for misp_dns.zygote: how a forked serving process takes its descriptors."""

from __future__ import annotations

import os

from misp_dns.zygote import place_descriptors


def test_descriptors_land_in_order_even_when_they_overlap_their_targets() -> None:
    """Descriptors received as, say, 4, 3 and 7 become 0, 1 and 2 in that order, none
    overwritten by another's move, and the received numbers are closed. Run in a child,
    since it replaces descriptors 0, 1, 2."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            pipes = [os.pipe() for _ in range(3)]
            readers = [r for r, _ in pipes]
            writers = [w for _, w in pipes]
            # Move the write ends onto 3, 4 and 7 in a crossed order.
            for target, fd in zip((4, 3, 7), writers, strict=True):
                os.dup2(fd, target)
            place_descriptors([4, 3, 7])
            for number, reader in enumerate(readers):
                os.write(number, b"%d" % number)
                assert os.read(reader, 10) == b"%d" % number
            for received in (3, 4, 7):
                try:
                    os.fstat(received)
                except OSError:
                    continue
                assert received in readers or received in writers
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
