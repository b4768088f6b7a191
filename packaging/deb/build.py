"""Build the Debian package of misp-dns: `<out>/misp-dns_<version>_<arch>.deb`.

Run as `python3 packaging/deb/build.py [--out dist]` (what `make deb` does), as root, or as
another user where unprivileged user namespaces are allowed. It needs dpkg-deb, unshare and
a Debian Python with its venv module (`python3-venv`); the Python libraries come from the
package index pip is set up to use. Only the standard library is imported here, so any
Python 3.11+ can run it.

What the package holds:

- `/opt/misp-dns`: a virtualenv of the Debian interpreter (`--python`, default
  /usr/bin/python3, resolved to its versioned name such as /usr/bin/python3.11, which the
  package then depends on) with misp-dns and its dependencies installed by pip, byte-compiled,
  and Twisted's plugin cache written;
- the systemd unit of `contrib/systemd/` unchanged, with a drop-in
  (`misp-dns.service.d/package.conf`) that runs it as the system user `misp-dns`;
- `/etc/misp-dns/misp-dns.toml` (this folder's), `/etc/logrotate.d/misp-dns` (contrib's, its
  `create` line naming that user) and `/etc/rsyslog.d/30-misp-dns.conf` (contrib's), all
  three conffiles;
- `/usr/bin/misp-dns`, the operator's command; the maintainer scripts of this folder.

How the virtualenv gets its final path: a venv records the path it was made at in its
scripts' `#!` lines, in its byte-compiled files and in pip's records, so it is made at
/opt/misp-dns itself, in a private mount namespace (`unshare --mount`) where the staging
folder is bind-mounted on /opt/misp-dns, over a throwaway overlay of /opt (so the host's
/opt is neither changed nor hidden, and a misp-dns installed there is not touched). No path
is rewritten afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: Where the virtualenv lives on the installed system.
PREFIX = "/opt/misp-dns"
#: The files under /etc that dpkg keeps an operator's changes of.
CONFFILES = (
    "/etc/misp-dns/misp-dns.toml",
    "/etc/logrotate.d/misp-dns",
    "/etc/rsyslog.d/30-misp-dns.conf",
)
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
#: Variables of the caller's environment that would make the venv's Python or pip look
#: elsewhere than the venv (a developer's PYTHONPATH=$PWD, an activated venv).
_FOREIGN_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV")

# Runs in the private mount namespace: $1 scratch folder, $2 staging prefix, $3 interpreter,
# $4 the misp-dns source tree.
_MAKE_VENV = r"""
set -eu
mount -t tmpfs tmpfs "$1"
mkdir "$1/upper" "$1/work"
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$1/upper,workdir=$1/work" /opt
mkdir -p /opt/misp-dns
mount --bind "$2" /opt/misp-dns
"$3" -m venv /opt/misp-dns
/opt/misp-dns/bin/python -m pip install --quiet --no-warn-script-location "$4"
/opt/misp-dns/bin/python -m misp_dns.plugincache
"""


class BuildError(Exception):
    """The package cannot be built; the message says why."""


def main(argv: list[str] | None = None) -> int:
    """Build the package and print its path."""
    options = _parser().parse_args(argv)
    try:
        deb = build(
            Path(options.out),
            python=options.python,
            version=options.version,
            compression=options.compression,
            maintainer=options.maintainer,
        )
    except BuildError as error:
        print(f"build.py: {error}", file=sys.stderr)
        return 1
    print(deb)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Build the misp-dns Debian package.")
    parser.add_argument("--out", default=str(REPO / "dist"), help="folder of the .deb")
    parser.add_argument(
        "--python", default="/usr/bin/python3", help="the Debian interpreter of the venv"
    )
    parser.add_argument("--version", help="the package version (default misp-dns's)")
    parser.add_argument(
        "--compression", default="zstd", help="dpkg-deb -Z: zstd (fast), xz (smallest), gzip"
    )
    parser.add_argument(
        "--maintainer",
        default=os.environ.get("DEB_MAINTAINER", "misp-dns developers <root@localhost>"),
    )
    return parser


def build(
    out: Path,
    *,
    python: str = "/usr/bin/python3",
    version: str | None = None,
    compression: str = "zstd",
    maintainer: str = "misp-dns developers <root@localhost>",
) -> Path:
    """Build the package into `out` and return its path."""
    os.umask(0o022)
    interpreter, python_version = debian_interpreter(python)
    version = version or misp_dns_version()
    arch = _output(["dpkg", "--print-architecture"])
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"misp-dns_{version}_{arch}.deb"
    with tempfile.TemporaryDirectory(prefix="misp-dns-deb-") as scratch:
        root = Path(scratch) / "root"
        make_venv(root / PREFIX.lstrip("/"), interpreter, Path(scratch) / "ns")
        lay_out(root)
        write_control(
            root,
            version=version,
            arch=arch,
            depends=f"python{python_version}, adduser",
            maintainer=maintainer,
        )
        _run(
            [
                "dpkg-deb",
                "--root-owner-group",
                f"-Z{compression}",
                "--build",
                str(root),
                str(deb),
            ]
        )
    return deb


def misp_dns_version() -> str:
    """The `__version__` of the misp_dns package in this tree."""
    text = (REPO / "misp_dns" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise BuildError("misp_dns/__init__.py has no __version__")
    return found.group(1)


def debian_interpreter(python: str) -> tuple[Path, str]:
    """The versioned path of `python` (/usr/bin/python3 -> /usr/bin/python3.11) and its
    X.Y, which names the Debian package it comes from."""
    path = Path(python).resolve()
    if path.parent != Path("/usr/bin"):
        raise BuildError(f"{python} is not a Debian interpreter (/usr/bin/pythonX.Y): {path}")
    version = _output([str(path), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    if path.name != f"python{version}":
        raise BuildError(f"{path} is not named after its version {version}")
    return path, version


def make_venv(prefix: Path, interpreter: Path, scratch: Path) -> None:
    """Make the venv that will live at PREFIX in the staging folder `prefix` (see the module
    docstring), with misp-dns from this tree."""
    if not Path("/opt").is_dir():
        raise BuildError("/opt is missing: the venv is made at /opt/misp-dns")
    prefix.mkdir(parents=True)
    scratch.mkdir()
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    environment = {k: v for k, v in os.environ.items() if k not in _FOREIGN_VARIABLES}
    script = [*unshare, "sh", "-c", _MAKE_VENV, "sh", str(scratch), str(prefix)]
    _run([*script, str(interpreter), str(REPO)], env=environment)


def lay_out(root: Path) -> None:
    """Put the unit, the configs, the command and the docs where the package installs them,
    and the maintainer scripts in DEBIAN/."""
    units = root / "lib/systemd/system"
    _copy(REPO / "contrib/systemd/misp-dns.service", units / "misp-dns.service")
    _copy(HERE / "package.conf", units / "misp-dns.service.d/package.conf")
    _copy(HERE / "misp-dns.toml", root / "etc/misp-dns/misp-dns.toml")
    logrotate = (REPO / "contrib/logrotate/misp-dns").read_text()
    _write(root / "etc/logrotate.d/misp-dns", logrotate_for_package(logrotate))
    _copy(REPO / "contrib/rsyslog/misp-dns.conf", root / "etc/rsyslog.d/30-misp-dns.conf")
    command = root / "usr/bin/misp-dns"
    command.parent.mkdir(parents=True, exist_ok=True)
    command.symlink_to(f"{PREFIX}/bin/misp-dns")
    docs = root / "usr/share/doc/misp-dns"
    _copy(REPO / "README.md", docs / "README.md")
    _copy(HERE / "README.md", docs / "README.Debian")
    _copy(HERE / "copyright", docs / "copyright")
    control = root / "DEBIAN"
    for name in MAINTAINER_SCRIPTS:
        _copy(HERE / name, control / name, mode=0o755)
    _write(control / "conffiles", "".join(f"{path}\n" for path in CONFFILES))


def logrotate_for_package(text: str) -> str:
    """contrib's logrotate config with its `create` line naming the package's user, so the
    new log file after a rotation is one misp-dns can write."""
    new, count = re.subn(
        r"^(\s*)create\b.*$", r"\1create 0600 misp-dns misp-dns", text, flags=re.MULTILINE
    )
    if count != 1:
        raise BuildError(f"contrib/logrotate/misp-dns has {count} create lines, expected 1")
    return new


def write_control(root: Path, *, version: str, arch: str, depends: str, maintainer: str) -> None:
    """DEBIAN/control from control.in, and DEBIAN/md5sums (for `dpkg --verify`)."""
    sums = md5sums(root)
    template = Template((HERE / "control.in").read_text())
    control = template.substitute(
        version=version,
        arch=arch,
        depends=depends,
        maintainer=maintainer,
        installed_size=installed_size(root),
    )
    _write(root / "DEBIAN/control", control)
    _write(root / "DEBIAN/md5sums", sums)


def md5sums(root: Path) -> str:
    """The md5sums lines of every regular file outside DEBIAN/ but the conffiles (whose sums
    dpkg keeps itself)."""
    lines = []
    for path in sorted(_payload(root)):
        relative = path.relative_to(root)
        if path.is_symlink() or not path.is_file() or f"/{relative}" in CONFFILES:
            continue
        lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {relative}\n")
    return "".join(lines)


def installed_size(root: Path) -> int:
    """Installed-Size: KiB the payload takes, each file rounded up (as dpkg-gencontrol)."""
    total = 0
    for path in _payload(root):
        size = path.lstat().st_size if path.is_file() and not path.is_symlink() else 0
        total += max(1, -(-size // 1024))
    return total


def _payload(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.relative_to(root).parts[0] != "DEBIAN"]


def _copy(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o644)


def _output(argv: list[str]) -> str:
    return _run(argv, capture=True).strip()


def _run(argv: list[str], *, env: dict[str, str] | None = None, capture: bool = False) -> str:
    try:
        done = subprocess.run(argv, env=env, check=False, text=True, capture_output=capture)
    except FileNotFoundError as error:
        raise BuildError(f"{argv[0]} is not installed") from error
    if done.returncode != 0:
        detail = (done.stderr or "").strip()
        raise BuildError(f"{argv[0]} exited {done.returncode}" + (f": {detail}" if detail else ""))
    return done.stdout or ""


if __name__ == "__main__":
    sys.exit(main())
