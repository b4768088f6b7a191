"""A scripted upstream nameserver on loopback, for what a real Unbound will not do on demand.

Queries are answered according to the second label of the name, `<nonce>.<behaviour>.fake.`
(a fresh nonce per test keeps misp-dns's cache out of the way):

- `answer`: one A record `ANSWER_A` (the genuine answer);
- `wrongid`, `wrongq`, `wrongsrc`: first a forged reply holding `FORGED_A` (wrong ID, wrong
  question, or sent from another port), then the genuine answer;
- `forgedid`, `forgedq`, `forgedsrc`: only that forged reply; the genuine answer never comes;
- `forgedmany`: `FORGED_COUNT` replies with wrong IDs, then the genuine answer;
- `garbage`: a reply with the right ID and QR set whose body is not a DNS message;
- `late<ms>` (e.g. `late2000`): the genuine answer, `ms` milliseconds late;
- `tc`: over UDP an empty reply with TC set; over TCP `TC_COUNT` A records;
- `tcforged`, `tcclose`, `tcgarbage`: TC over UDP; over TCP a reply with a wrong ID, the
  connection closed without a reply, or a frame that is not a DNS message;
- `silent`: never answers;
- `nx` / `nodata`: NXDOMAIN / NOERROR without answer, with the `fake.` SOA (minimum
  `NEGATIVE_TTL`);
- `servfail`, `refused`: that RCODE;
- anything else: the `answer` behaviour.

Queries in a class other than IN are answered with one TXT record "class=<CLASS>".

Every query received is kept (transport, parsed message) in `received`, parsed strictly.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import attrs
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .wire import Address, read_tcp_message, tcp_frame

__all__ = [
    "ANSWER_A",
    "FORGED_A",
    "FORGED_COUNT",
    "NEGATIVE_TTL",
    "TC_COUNT",
    "Received",
    "ScriptedUpstream",
]

ANSWER_A = "192.0.2.77"
FORGED_A = "198.18.6.6"
FORGED_COUNT = 50
NEGATIVE_TTL = 60
TC_COUNT = 120
_DELAY = 0.05
#: Over TCP, these end the connection after their (broken) reply, or without one.
_BROKEN_TCP = ("tcforged", "tcclose", "tcgarbage")


@attrs.frozen
class Received:
    """One query as the upstream saw it."""

    transport: str
    message: dns.message.Message


def _behaviour(query: dns.message.Message) -> str:
    labels = query.question[0].name.labels if query.question else ()
    return labels[1].decode("ascii", "replace").lower() if len(labels) > 2 else "answer"


def _lateness(behaviour: str) -> float:
    """Seconds `late<ms>` asks the answer to wait (0 for any other behaviour)."""
    if behaviour.startswith("late") and behaviour[4:].isdigit():
        return int(behaviour[4:]) / 1000
    return 0.0


def _response(
    query: dns.message.Message, rcode: dns.rcode.Rcode = dns.rcode.NOERROR
) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    response.set_rcode(rcode)
    return response


def _with_a(query: dns.message.Message, address: str, count: int = 1) -> dns.message.Message:
    """An answer to `query`: A records in class IN, one TXT naming the class otherwise."""
    response = _response(query)
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        text = f'"class={dns.rdataclass.to_text(question.rdclass)}"'
        response.answer.append(
            dns.rrset.from_text(question.name, 300, question.rdclass, "TXT", text)
        )
        return response
    addresses = [address] if count == 1 else [f"10.0.{i // 250}.{i % 250}" for i in range(count)]
    response.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", "A", addresses))
    return response


def _negative(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = _response(query, rcode)
    soa = dns.rrset.from_text(
        "fake.",
        NEGATIVE_TTL,
        "IN",
        "SOA",
        f"ns.fake. hostmaster.fake. 7 3600 600 86400 {NEGATIVE_TTL}",
    )
    response.authority.append(soa)
    return response


def _wrong_id(query: dns.message.Message, offset: int = 1) -> dns.message.Message:
    forged = _with_a(query, FORGED_A)
    forged.id = (query.id + offset) % 65536
    return forged


class ScriptedUpstream:
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
        self.received: list[Received] = []
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

    def queries_for(self, name: str, transport: str | None = None) -> list[dns.message.Message]:
        """The queries received for `name` (any case), optionally over one transport only."""
        wanted = dns.name.from_text(name)
        with self._lock:
            return [
                r.message
                for r in self.received
                if r.message.question
                and r.message.question[0].name == wanted
                and (transport is None or r.transport == transport)
            ]

    def _record(self, transport: str, wire: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        with self._lock:
            self.received.append(Received(transport, query))
        return query if len(query.question) == 1 else None

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
        try:
            self._send_udp(query, _behaviour(query), source)
        except OSError:
            return  # stopping

    def _send_udp(self, query: dns.message.Message, behaviour: str, source: Address) -> None:
        def send(data: bytes) -> None:
            self._udp.sendto(data, source)

        if behaviour == "silent":
            return
        if behaviour.startswith("tc"):
            response = _response(query)
            response.flags |= dns.flags.TC
            send(response.to_wire())
            return
        if behaviour == "garbage":
            header = struct.pack("!HBBHHHH", query.id, 0x81, 0x80, 1, 1, 0, 0)
            send(header + b"\x07garbage" * 8)
            return
        if behaviour == "forgedmany":
            for offset in range(1, FORGED_COUNT + 1):
                send(_wrong_id(query, offset).to_wire())
        elif behaviour.startswith(("wrong", "forged")):
            self._forge(query, behaviour, source)
            if behaviour.startswith("forged"):
                return  # the genuine answer never comes
            time.sleep(_DELAY)
        time.sleep(_lateness(behaviour))
        send(self._reply(query, behaviour).to_wire())

    def _forge(self, query: dns.message.Message, behaviour: str, source: Address) -> None:
        """Send a forged reply: with a wrong ID (`...id`), for another question (`...q`),
        or from another port (`...src`)."""
        if behaviour.endswith("id"):
            self._udp.sendto(_wrong_id(query).to_wire(), source)
        elif behaviour.endswith("q"):
            question = query.question[0]
            other = dns.message.make_query(
                f"other.{behaviour}.fake.", question.rdtype, question.rdclass
            )
            other.id = query.id
            self._udp.sendto(_with_a(other, FORGED_A).to_wire(), source)
        else:
            self._forger.sendto(_with_a(query, FORGED_A).to_wire(), source)

    def _reply(self, query: dns.message.Message, behaviour: str) -> dns.message.Message:
        if behaviour == "nx":
            return _negative(query, dns.rcode.NXDOMAIN)
        if behaviour == "nodata":
            return _negative(query, dns.rcode.NOERROR)
        if behaviour == "servfail":
            return _response(query, dns.rcode.SERVFAIL)
        if behaviour == "refused":
            return _response(query, dns.rcode.REFUSED)
        if behaviour == "tc":
            return _with_a(query, "", TC_COUNT)
        return _with_a(query, ANSWER_A)

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
            while not self._stopping.is_set():
                try:
                    wire = read_tcp_message(conn, timeout=5)
                except (OSError, ConnectionError):
                    return
                query = self._record("tcp", wire)
                if query is None:
                    return
                behaviour = _behaviour(query)
                try:
                    if behaviour in _BROKEN_TCP:
                        self._break_tcp(conn, query, behaviour)
                        return
                    if behaviour != "silent":
                        reply = self._reply(query, behaviour).to_wire(max_size=65535)
                        conn.sendall(tcp_frame(reply))
                except OSError:
                    return

    @staticmethod
    def _break_tcp(conn: socket.socket, query: dns.message.Message, behaviour: str) -> None:
        if behaviour == "tcforged":
            conn.sendall(tcp_frame(_wrong_id(query).to_wire()))
        elif behaviour == "tcgarbage":
            conn.sendall(tcp_frame(struct.pack("!H", query.id) + b"\x81\x80" + b"\xff" * 40))
        time.sleep(0.2)  # let the reply (or the close) reach the server
