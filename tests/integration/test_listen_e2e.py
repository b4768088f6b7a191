"""Listening as a deployment does it, on real sockets: IPv4 and IPv6 wildcards together or
the IPv6 wildcard alone (dual-stack), and a process short of file descriptors.

Each test starts its own twistd (the addresses and the descriptor limit are the subject),
listening on an unprivileged port and asked through 127.0.0.1 and ::1. The descriptor
limit is set with util-linux's `prlimit` around twistd.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from conftest import free_port, require_tool

from .fake_upstream import ScriptedUpstream
from .hostile_dns import read_jsonl, write_config
from .net import ipv6_loopback_available, wait_until
from .server import MispDnsProcess, misp_dns_command
from .server_group import new_errors
from .unbound import WWW, WWW_A, UnboundProcess
from .wire import Address, ask_tcp, ask_udp, make_query, tcp_connect

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")


def _start(
    directory: Path,
    server: dict[str, Any],
    ask_at: Sequence[Address],
    *,
    export: Sequence[dict[str, Any]] = (),
    command: Callable[[Path], list[str]] = misp_dns_command,
    probe: str = "www.test.",
) -> MispDnsProcess:
    (directory / "state").mkdir()
    config = write_config(
        directory / "misp-dns.toml",
        {"state_dir": str(directory / "state")} | server,
        exports=export,
    )
    process = MispDnsProcess(config, ask_at, directory, command=command)
    process.start(probe=probe)
    return process


def _answers_www_everywhere(process: MispDnsProcess, addresses: Sequence[Address]) -> None:
    for address in addresses:
        for ask in (ask_udp, ask_tcp):
            response = ask(make_query(WWW, "A"), address, timeout=3.0)
            assert [r.to_text() for r in response.answer[0]] == [WWW_A], (address, ask)


def _upstream(unbound: UnboundProcess) -> str:
    host, port = unbound.address
    return f"{host}:{port}"


@needs_ipv6
def test_ipv4_and_ipv6_wildcards_on_one_port_both_listen(
    tmp_path: Path, unbound: UnboundProcess
) -> None:
    """`listen = ["0.0.0.0:P", "[::]:P"]` (the systemd README's example) starts, and both
    IPv4 and IPv6 clients are answered over UDP and TCP."""
    port = free_port()
    asked = [("127.0.0.1", port), ("::1", port)]
    process = _start(
        tmp_path,
        {"listen": [f"0.0.0.0:{port}", f"[::]:{port}"], "upstreams": [_upstream(unbound)]},
        asked,
    )
    try:
        _answers_www_everywhere(process, asked)
        assert not new_errors(process, 0)
    finally:
        process.stop()


@needs_ipv6
def test_the_ipv6_wildcard_alone_answers_ipv4_over_udp_and_tcp(
    tmp_path: Path, unbound: UnboundProcess
) -> None:
    """`listen = ["[::]:P"]` alone answers IPv4 clients over UDP as over TCP (and IPv6
    ones); the query log names an IPv4 client by its IPv4 address."""
    port = free_port()
    asked = [("127.0.0.1", port), ("::1", port)]
    log = tmp_path / "queries.jsonl"
    process = _start(
        tmp_path,
        {"listen": [f"[::]:{port}"], "upstreams": [_upstream(unbound)]},
        asked,
        export=[{"type": "jsonl", "path": str(log)}],
    )
    try:
        _answers_www_everywhere(process, asked)
        wait_until(lambda: log.exists() and len(read_jsonl(log)) >= 5, 10, what="the query log")
        clients = {record["clientIp"] for record in read_jsonl(log)}
        assert clients == {"127.0.0.1", "::1"}
        assert not new_errors(process, 0)
    finally:
        process.stop()


def _limited(soft: int, hard: int) -> Callable[[Path], list[str]]:
    prlimit = require_tool("prlimit")
    return lambda config: [prlimit, f"--nofile={soft}:{hard}", "--", *misp_dns_command(config)]


def test_the_open_files_limit_is_raised_to_the_hard_limit_at_start(
    tmp_path: Path, unbound: UnboundProcess
) -> None:
    """Started with the common default soft limit of 1024 under a hard limit of 4096, the
    server raises its soft limit to 4096 and says so."""
    port = free_port()
    process = _start(
        tmp_path,
        {"listen": [f"127.0.0.1:{port}"], "upstreams": [_upstream(unbound)]},
        [("127.0.0.1", port)],
        command=_limited(1024, 4096),
    )
    try:
        with open(f"/proc/{process.pid}/limits", encoding="ascii") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"]
        assert "open files limit raised from 1024 to 4096" in process.log_text()
    finally:
        process.stop()


#: The descriptor limit of the starved server, and the queries that exhaust it.
STARVED_LIMIT = 256
FLOOD = 400


def _flood_silent_names(address: Address, count: int) -> socket.socket:
    """Send `count` queries for names the scripted upstream never answers, back to back,
    from one socket (returned, so that the answers can be read)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    nonce = time.monotonic_ns()
    for i in range(count):
        sock.sendto(make_query(f"q{i}-{nonce}.silent.fake.", "A").to_wire(), address)
    return sock


def _rcodes(sock: socket.socket, wait: float) -> list[int]:
    sock.settimeout(wait)
    found = []
    try:
        while True:
            found.append(dns.message.from_wire(sock.recv(65535)).rcode())
    except TimeoutError:
        return found


def test_running_out_of_descriptors_is_one_warning_and_no_traceback(
    tmp_path: Path, fake_upstream: ScriptedUpstream
) -> None:
    """A server limited to 256 descriptors, flooded with queries its upstream never
    answers (each holds a socket) while TCP clients connect: queries beyond the limit get
    SERVFAIL at once, the log says so in one warning, with no traceback, the TCP cap was
    sized to the limit, and once the sockets are released it answers again."""
    host, upstream_port = fake_upstream.address
    port = free_port()
    address = ("127.0.0.1", port)
    process = _start(
        tmp_path,
        {
            "listen": [f"127.0.0.1:{port}"],
            "upstreams": [f"{host}:{upstream_port}"],
            "upstream_timeout": 3,
        },
        [address],
        command=_limited(STARVED_LIMIT, STARVED_LIMIT),
        probe="probe.answer.fake.",
    )
    try:
        flood = _flood_silent_names(address, FLOOD)
        held = []
        for _ in range(20):
            with contextlib.suppress(OSError):
                held.append(tcp_connect(address, timeout=1))
        rcodes = _rcodes(flood, wait=5)
        flood.close()
        for sock in held:
            sock.close()
        assert rcodes.count(dns.rcode.SERVFAIL) >= FLOOD - STARVED_LIMIT
        response = ask_udp(make_query("again.answer.fake.", "A"), address)
        assert response.rcode() == dns.rcode.NOERROR and response.answer
        text = process.log_text(limit=1 << 20)
        assert len(re.findall("out of file descriptors", text)) == 1, text[-4000:]
        assert "at most 96 TCP connections" in text
        assert "EMFILE encountered" not in text and "EMFILE recovery" not in text
        assert not new_errors(process, 0), text[-4000:]
    finally:
        process.stop()
