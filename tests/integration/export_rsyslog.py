"""A real rsyslogd on loopback, receiving syslog over UDP and TCP into a file of fields.

`RsyslogProcess` writes a configuration that loads only `imudp` and `imtcp` (no system
sockets, no kernel log), listens on two loopback ports, and writes one line per message:
the parsed header fields and the MSG, separated by tabs, so tests check what rsyslog
understood rather than raw bytes. `messages()` returns them as `SyslogMessage`s. `extra`
is configuration appended after that (the shipped contrib/rsyslog snippet, in the tests).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import attrs

from .net import stop_process, wait_until

__all__ = ["RsyslogProcess", "SyslogMessage"]

_FIELDS = (
    "inputname",
    "syslogfacility-text",
    "syslogseverity-text",
    "hostname",
    "app-name",
    "procid",
    "msgid",
    "protocol-version",
    "msg",
)


@attrs.frozen
class SyslogMessage:
    """One message as rsyslog parsed it."""

    input: str
    facility: str
    severity: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    version: str
    msg: str


def _config(workdir: Path, udp_port: int, tcp_port: int, output: Path, extra: str) -> str:
    properties = "\n".join(
        f'  property(name="{name}")' + ("" if name == "msg" else '\n  constant(value="\\t")')
        for name in _FIELDS
    )
    return f"""
global(workDirectory="{workdir}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp_port}" name="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" name="tcp")
template(name="fields" type="list") {{
{properties}
  constant(value="\\n")
}}
*.* action(type="omfile" file="{output}" template="fields" flushOnTXEnd="on" asyncWriting="off")
{extra}
"""


class RsyslogProcess:
    """`rsyslogd -n -f <conf>` on 127.0.0.1 with one UDP and one TCP input."""

    def __init__(
        self, binary: str, workdir: Path, udp_port: int, tcp_port: int, extra: str = ""
    ) -> None:
        self.binary = binary
        self.extra = extra
        self.workdir = workdir
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.output = workdir / "messages.tsv"
        self.config = workdir / "rsyslog.conf"
        self.log_path = workdir / "rsyslogd.out"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start rsyslogd; return once its TCP input accepts connections."""
        self.config.write_text(
            _config(self.workdir, self.udp_port, self.tcp_port, self.output, self.extra)
        )
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [self.binary, "-n", "-f", str(self.config), "-i", str(self.workdir / "pid")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def accepting() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited:\n{self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(accepting, timeout, what="rsyslogd accepting TCP")

    def stop(self) -> None:
        """Stop rsyslogd (it flushes its file first)."""
        process, self._process = self._process, None
        stop_process(process)

    def messages(self) -> list[SyslogMessage]:
        """Every message written so far."""
        try:
            text = self.output.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            fields = line.split("\t", len(_FIELDS) - 1)
            if len(fields) == len(_FIELDS):
                out.append(SyslogMessage(*fields))
        return out

    def wait_for(self, count: int, timeout: float = 10.0) -> list[SyslogMessage]:
        """Wait until at least `count` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def log_text(self) -> str:
        """What rsyslogd printed."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
