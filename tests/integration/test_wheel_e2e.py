"""The wheel, built and installed as a user installs it: what it brings besides the code.

Built with `pip wheel` (hatchling comes from PyPI, as for `make`'s `pip install -e .`) and
installed with `pip install --prefix` into a temporary folder.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .server import _environment, twistd_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prefix a freshly built wheel of this checkout was installed into."""
    folder = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = folder.glob("misp_dns-*.whl")
    prefix = folder / "prefix"
    # --ignore-installed: without it pip uninstalls the misp-dns of the environment running
    # the tests (an editable install) before it installs into the prefix, and every later
    # test starting twistd then finds no misp-dns.
    install = [
        sys.executable,
        *("-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q"),
    ]
    done = subprocess.run(
        [*install, "--prefix", str(prefix), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    still = subprocess.run(
        [sys.executable, "-m", "pip", "show", "-q", "misp-dns"], capture_output=True, timeout=60
    )
    assert still.returncode == 0, "installing the wheel elsewhere removed this env's misp-dns"
    return prefix


def _run(prefix: Path, arguments: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """twistd with the installed wheel first on the path (not this checkout)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = _environment()
    env["PYTHONPATH"] = str(prefix / "lib" / version / "site-packages")
    return subprocess.run(
        [twistd_path(), *arguments],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )


def test_the_wheel_installs_an_example_config_that_checks_from_where_it_lies(
    installed: Path,
) -> None:
    """The wheel puts the quick-start config, its sample feed and the contrib files under
    share/misp-dns/, laid out as in a checkout, so the config passes `--check-config` run
    from there."""
    share = installed / "share" / "misp-dns"
    for name in (
        "etc/misp-dns.toml",
        "etc/sample-feed/manifest.json",
        "contrib/systemd/misp-dns.service",
        "contrib/logrotate/misp-dns",
    ):
        assert (share / name).is_file(), name
    done = _run(installed, ["misp-dns", "--check-config", "--config", "etc/misp-dns.toml"], share)
    assert done.returncode == 0, done.stdout
    assert "configuration is valid" in done.stdout


def test_version_of_the_installed_wheel(installed: Path) -> None:
    """`twistd misp-dns --version` names misp-dns and its version, as installed."""
    done = _run(installed, ["misp-dns", "--version"], installed)
    assert done.returncode == 0, done.stdout
    found = re.search(r'__version__ = "([^"]+)"', (REPO / "misp_dns" / "__init__.py").read_text())
    assert found is not None
    version = found.group(1)
    assert done.stdout.startswith(f"misp-dns {version} "), done.stdout
