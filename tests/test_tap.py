"""`twistd misp-dns` options (misp_dns.tap.Options) as the command line sees them."""

from __future__ import annotations

import platform

import pytest
import twisted

import misp_dns
from misp_dns.tap import Options


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
