"""A hostile upstream nameserver on loopback: late, lying, truncating, breaking TCP.

`ScriptedUpstream` (fake_upstream.py) sends a forged reply and then the genuine one; this
one goes further. Queries are answered by the second label of `<nonce>.<behaviour>.`:

- `late<ms>` (e.g. `late2000`): the genuine answer (`GENUINE_A`), `ms` milliseconds late;
- `forgedid`, `forgedq`, `forgedsrc`: only a forged reply (`FORGED_A`) with a wrong ID, for
  another question, or from another port; the genuine answer never comes;
- `forgedmany`: `FORGED_COUNT` replies with wrong IDs, then the genuine answer;
- `garbage`: a reply with the right ID and QR set whose body is not a DNS message;
- `tcforged`: TC over UDP; over TCP a reply with a wrong ID;
- `tcclose`: TC over UDP; over TCP the connection is closed without a reply;
- `tcgarbage`: TC over UDP; over TCP a frame that is not a DNS message;
- anything else: the genuine answer at once.

Every query is kept in `received` as (transport, name in lower case).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from .wire import Address, read_tcp_message, tcp_frame

__all__ = ["FORGED_A", "FORGED_COUNT", "GENUINE_A", "HostileUpstream"]

GENUINE_A = "192.0.2.99"
FORGED_A = "198.18.7.7"
FORGED_COUNT = 50


def _behaviour(query: dns.message.Message) -> str:
    labels = query.question[0].name.labels if query.question else ()
    return labels[1].decode("ascii", "replace").lower() if len(labels) > 2 else "answer"


def _answer(query: dns.message.Message, address: str) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    question = query.question[0]
    response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", address))
    return response


def _truncated(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC | dns.flags.RA
    return response.to_wire()


class HostileUpstream:
    """A UDP and TCP nameserver on loopback, run in background threads."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((host, 0))
        port = self._udp.getsockname()[1]
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((host, port))
        self._tcp.listen(16)
        self._forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._forger.bind((host, 0))
        self.address: Address = (host, port)
        self.received: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start serving in daemon threads."""
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop serving and close the sockets."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(3)
        for sock in (self._udp, self._tcp, self._forger):
            sock.close()

    def count(self, name: str, transport: str | None = None) -> int:
        """How many queries for `name` arrived (over `transport`, or either)."""
        wanted = name.lower().rstrip(".")
        with self._lock:
            return sum(
                1
                for kind, seen in self.received
                if seen == wanted and (transport is None or kind == transport)
            )

    def _record(self, transport: str, wire: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        if len(query.question) != 1:
            return None
        name = query.question[0].name.to_text().lower().rstrip(".")
        with self._lock:
            self.received.append((transport, name))
        return query

    def _serve_udp(self) -> None:
        self._udp.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                wire, source = self._udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            query = self._record("udp", wire)
            if query is not None:
                # Each reply in its own thread, so a late one holds nothing else up.
                threading.Thread(target=self._answer_udp, args=(query, source), daemon=True).start()

    def _answer_udp(self, query: dns.message.Message, source: Address) -> None:
        behaviour = _behaviour(query)
        genuine = _answer(query, GENUINE_A).to_wire()
        forged = _answer(query, FORGED_A)
        send = self._udp.sendto
        try:
            if behaviour.startswith("late") and behaviour[4:].isdigit():
                time.sleep(int(behaviour[4:]) / 1000)
                send(genuine, source)
            elif behaviour == "forgedid":
                forged.id = (query.id + 1) % 65536
                send(forged.to_wire(), source)
            elif behaviour == "forgedq":
                other = dns.message.make_query("other.forgedq.", "A")
                other.id = query.id
                send(_answer(other, FORGED_A).to_wire(), source)
            elif behaviour == "forgedsrc":
                self._forger.sendto(forged.to_wire(), source)
            elif behaviour == "forgedmany":
                for offset in range(1, FORGED_COUNT + 1):
                    forged.id = (query.id + offset) % 65536
                    send(forged.to_wire(), source)
                send(genuine, source)
            elif behaviour == "garbage":
                header = struct.pack("!HBBHHHH", query.id, 0x81, 0x80, 1, 1, 0, 0)
                send(header + b"\x07garbage" * 8, source)
            elif behaviour.startswith("tc"):
                send(_truncated(query), source)
            else:
                send(genuine, source)
        except OSError:
            return  # stopping

    def _serve_tcp(self) -> None:
        self._tcp.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                conn, _ = self._tcp.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                wire = read_tcp_message(conn, timeout=5)
            except (OSError, ConnectionError):
                return
            query = self._record("tcp", wire)
            if query is None:
                return
            behaviour = _behaviour(query)
            try:
                if behaviour == "tcforged":
                    forged = _answer(query, FORGED_A)
                    forged.id = (query.id + 1) % 65536
                    conn.sendall(tcp_frame(forged.to_wire()))
                elif behaviour == "tcgarbage":
                    conn.sendall(
                        tcp_frame(struct.pack("!H", query.id) + b"\x81\x80" + b"\xff" * 40)
                    )
                elif behaviour != "tcclose":
                    conn.sendall(tcp_frame(_answer(query, GENUINE_A).to_wire()))
                time.sleep(0.2)  # let the reply (or the close) reach the server
            except OSError:
                return
