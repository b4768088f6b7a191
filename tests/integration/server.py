"""misp-dns started the way users start it: `twistd -n --pidfile= misp-dns --config PATH`.

`MispDnsProcess` writes nothing itself; `write_toml` renders a config from plain values (the
`[server]`/`[cache]` sections hold only strings, numbers, booleans and arrays of strings), and
`check_config` runs `twistd misp-dns --check-config --config PATH`.

With the environment variable `MISP_DNS_E2E_STOCK=1` the same tests start Twisted's stock
server (`stock_server.py`) instead, to see which of them catch its defects.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dns.message

from .wire import Address, make_query, udp_exchange

__all__ = [
    "MispDnsProcess",
    "check_config",
    "misp_dns_command",
    "stock_command",
    "twistd_path",
    "write_toml",
]


def stock_command(config: Path) -> list[str]:
    """The command line of Twisted's stock server (`stock_server.py`) for `config`."""
    return [sys.executable, str(Path(__file__).with_name("stock_server.py")), str(config)]


def misp_dns_command(config: Path) -> list[str]:
    """`twistd -n --pidfile= misp-dns --config PATH`, or the stock server when the
    environment variable MISP_DNS_E2E_STOCK is set."""
    if os.environ.get("MISP_DNS_E2E_STOCK"):
        return stock_command(config)
    return [twistd_path(), "-n", "--pidfile=", "misp-dns", "--config", str(config)]


def twistd_path() -> str:
    """The `twistd` of the interpreter running the tests (the project's venv)."""
    return str(Path(sys.executable).parent / "twistd")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write `{"server": {...}, "cache": {...}}` as a TOML file and return its path."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_config(
    config: Path, cwd: Path, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `twistd misp-dns --check-config --config PATH`; stdout and stderr are merged."""
    return subprocess.run(
        [twistd_path(), "misp-dns", "--check-config", "--config", str(config)],
        cwd=cwd,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


class MispDnsProcess:
    """A foreground twistd running misp-dns with a given config file."""

    def __init__(
        self,
        config: Path,
        listen: Sequence[Address],
        workdir: Path,
        command: Callable[[Path], list[str]] = misp_dns_command,
    ) -> None:
        self.config = config
        self.command = command
        self.listen = tuple(listen)
        self.workdir = workdir
        self.log_path = workdir / "twistd.out"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> Address:
        """The first listening address."""
        return self.listen[0]

    @property
    def pid(self) -> int:
        """The twistd process id (for CPU pinning)."""
        assert self._process is not None
        return self._process.pid

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self, probe: str = "www.test.", timeout: float = 20.0) -> None:
        """Start twistd; return once every address accepts TCP and one answers over UDP."""
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command(self.config),
                cwd=self.workdir,
                env=_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        try:
            for address in self.listen:
                self._wait_for_tcp(address, deadline)
            self._wait_for_udp(self.address, probe, deadline)
        except BaseException:
            self.stop()
            raise

    def _check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(
                f"twistd exited with status {self._process.returncode}:\n{self.log_text()}"
            )

    def _wait_for_tcp(self, address: Address, deadline: float) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        while True:
            self._check_alive()
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(address) == 0:
                    return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"misp-dns does not accept TCP on {address}:\n{self.log_text()}")
            time.sleep(0.05)

    def _wait_for_udp(self, address: Address, probe: str, deadline: float) -> None:
        while True:
            self._check_alive()
            query = make_query(probe, "A")
            wait = max(0.1, min(2.0, deadline - time.monotonic()))
            reply = udp_exchange(query.to_wire(), address, timeout=wait)
            if reply is not None and dns.message.from_wire(reply).id == query.id:
                return
            if reply is None:
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"misp-dns does not answer on {address}:\n{self.log_text()}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after five seconds; return the exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def log_size(self) -> int:
        """How many bytes the process has logged so far."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_text(self, start: int = 0, limit: int = 20000) -> str:
        """What twistd logged from byte `start` on (at most the last `limit` bytes)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(start, self.log_size() - limit))
                return log.read().decode(errors="replace")
        except OSError:
            return ""
