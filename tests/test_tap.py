"""`twistd misp-dns` options (misp_dns.tap.Options) as the command line sees them, and the
collector settings of a started server."""

from __future__ import annotations

import gc
import platform

import pytest
import twisted

import misp_dns
from misp_dns.tap import COLLECTOR_THRESHOLDS, Options, settle_collector


def test_version_names_misp_dns_twisted_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    """`twistd misp-dns --version` prints misp-dns's version (not only Twisted's), with the
    Twisted and Python it runs on, and exits 0 without reading a config."""
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--version"])
    assert exited.value.code in (0, None)
    printed = capsys.readouterr().out
    assert printed.startswith(f"misp-dns {misp_dns.__version__} ")
    assert f"Twisted {twisted.__version__}" in printed
    assert f"Python {platform.python_version()}" in printed


def test_serving_freezes_start_up_objects_and_collects_less_often() -> None:
    """Once the server is started, what start-up built is out of the collector's reach and
    the collector runs at the serving thresholds, not Python's (700, 10, 10) that made it
    rescan the answer memos while first-seen names fill them."""
    before = gc.get_threshold()
    kept: list[object] = []
    try:
        settle_collector()
        assert gc.get_threshold() == COLLECTOR_THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert all(kept is not o for o in gc.get_objects())  # frozen: no generation has it
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
