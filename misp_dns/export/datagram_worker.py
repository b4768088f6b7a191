"""The child process that sends the syslog sink's datagrams (udp and unix), off the server.

Sending one datagram per query costs about as much CPU as answering the query (the kernel
does the work, in the sender's context: on loopback it delivers the datagram too). The
syslog sink therefore hands its records, in batches, to this child, which formats each as
a syslog message and sends it, on whatever core is free. The server's part is one write of
the batch, the very bytes the JSONL sink writes (`record.encode_records`), to a pipe.

    python -m misp_dns.export.datagram_worker '<json parameters>'

Parameters: `address` ("host" and "port", or "path" for a unix socket), `format`,
`facility`, `severity`, `hostname` and `pid` (the server's: the messages name it, not this
child). Each batch on stdin is `LENGTH` (4 bytes, big-endian) then that many bytes of
NDJSON; once ready, and after each batch, stdout gets `REPORT`: records handled, sent and
dropped, and batch bytes read, all counted since start. A datagram that cannot leave at
once is dropped and counted, as the in-process sender does. The child ends when stdin
ends (after sending every batch it read), never on a signal: SIGTERM and SIGINT, which a
service manager sends to the whole process group, are ignored (from before Python starts,
see `syslog._IGNORE_SIGNALS`), so a stopping server loses nothing it handed over. SIGHUP is
ignored too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Any

from misp_dns.export.syslog import MAX_DATAGRAM, SyslogFormatter

__all__ = ["HEADER", "REPORT", "main", "message_parts", "serve"]

#: Precedes each batch on stdin: its length in bytes.
HEADER = struct.Struct("!I")
#: What the child writes after each batch: handled, sent, dropped, bytes read (cumulative).
REPORT = struct.Struct("!QQQQ")

_STAMP_AT = len(b'{"timestamp":"')
_STAMP_END = _STAMP_AT + len(b"2025-11-26T10:10:30.567Z")
_TYPE_KEY = b'"responseType":"'


def message_parts(line: bytes) -> tuple[str, str]:
    """The `timestamp` and `responseType` of a record line (see `record.RecordEncoder`:
    the line starts with its timestamp, and a quote inside a string is always escaped, so
    the first `"responseType":"` is the key)."""
    timestamp = line[_STAMP_AT:_STAMP_END].decode("ascii")
    start = line.index(_TYPE_KEY) + len(_TYPE_KEY)
    return timestamp, line[start : line.index(b'"', start)].decode("ascii")


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(
    read_fd: int,
    report: Callable[[bytes], Any],
    formatter: SyslogFormatter,
    send: Callable[[bytes], Any],
) -> tuple[int, int, int]:
    """Send every record of every batch read from `read_fd` until it ends; report after
    each batch. Returns the counts handled, sent and dropped."""
    handled = sent = dropped = read = 0
    while True:
        header = _read_exactly(read_fd, HEADER.size)
        if header is None:
            return handled, sent, dropped
        (length,) = HEADER.unpack(header)
        batch = _read_exactly(read_fd, length)
        if batch is None:
            return handled, sent, dropped
        read += HEADER.size + length
        for line in batch.split(b"\n"):
            if not line:
                continue
            handled += 1
            try:
                message = formatter.message(line, *message_parts(line))
            except ValueError:
                dropped += 1
                continue
            if len(message) > MAX_DATAGRAM:
                dropped += 1
                continue
            try:
                send(message)
            except OSError:
                dropped += 1
                continue
            sent += 1
        report(REPORT.pack(handled, sent, dropped, read))


class _Sender:
    """Sends datagrams as `DatagramSender` does: a connected UDP socket (the host resolved
    once), or a unix datagram socket addressed on every send (so a receiver that comes back
    at the same path is found); a warning on stderr when sending starts and stops failing."""

    def __init__(self, address: Mapping[str, Any]) -> None:
        self.description = (
            f"unix:{address['path']}"
            if "path" in address
            else (f"udp:{address['host']}:{address['port']}")
        )
        self._failing = False
        self._socket: socket.socket | None = None
        self._path: str | None = address.get("path")
        try:
            self._socket = self._open(address)
        except OSError as exc:
            self._warn(f"cannot open a socket: {exc.strerror or exc}; its records are dropped")

    def _open(self, address: Mapping[str, Any]) -> socket.socket:
        if self._path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            family, kind, proto, _, target = socket.getaddrinfo(
                address["host"], int(address["port"]), type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            # Connected: the kernel looks the route up once, not for every datagram.
            sock.connect(target)
        sock.setblocking(False)
        return sock

    def _warn(self, text: str) -> None:
        print(f"syslog {self.description}: {text}", file=sys.stderr, flush=True)

    def __call__(self, message: bytes) -> None:
        sock = self._socket
        if sock is None:
            raise OSError("no socket")
        try:
            if self._path is None:
                sock.send(message)
            else:
                sock.sendto(message, self._path)
        except OSError as exc:
            if not self._failing and not isinstance(exc, BlockingIOError):
                self._failing = True
                self._warn(
                    f"cannot send: {exc.strerror or exc}; records are dropped until it works"
                )
            raise
        if self._failing:
            self._failing = False
            self._warn("sending again")


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main(argv: list[str] | None = None) -> int:
    """Run the child: parameters as JSON in the first argument."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    params = json.loads((argv if argv is not None else sys.argv[1:])[0])
    formatter = SyslogFormatter(
        params["format"],
        params["facility"],
        params["severity"],
        params["hostname"],
        pid=int(params["pid"]),
    )
    sender = _Sender(params["address"])
    # A first report says the child is ready: from now on a signal to the group spares it.
    _write_all(REPORT.pack(0, 0, 0, 0))
    serve(0, _write_all, formatter, sender)
    return 0


if __name__ == "__main__":
    sys.exit(main())
