"""What the log exporter costs: queries/s with the JSONL and syslog sinks on, against none.

    .venv/bin/python bench/bench_export.py                 # 3 rounds of 5 s runs
    .venv/bin/python bench/bench_export.py --seconds 10 --rounds 5

Two misp-dns servers run side by side in the same run, forwarding to one real Unbound (the
`test.` zone of the integration tests) and blocking the names of a one-event MISP feed:
"no sinks" has no `[[export]]` table, "with sinks" has a JSONL file and syslog over UDP (to a
loopback socket nobody reads, so sending costs what it costs with a real receiver and no
receiver takes CPU from the servers). dnsperf sends the same query file to each in turn,
round after round (half blocked names, half cached names, after one warm-up pass each);
the best queries/s of each are compared. The goal (issue 4) is a ratio of at least 0.85.
The server CPU time per answered query (from /proc) is printed too: its ratio is the
capacity ratio, which other load on the machine disturbs much less than queries/s.

The servers run under twistd, as users run them. With `taskset` and two CPUs, the servers
share CPU 0 and dnsperf runs on the others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from integration.net import free_port  # noqa: E402
from integration.server import MispDnsProcess, misp_dns_command  # noqa: E402
from integration.unbound import MID, NODATA, WWW, UnboundProcess, integration_config  # noqa: E402

BLOCKED_DOMAIN = "stemtopx.com"
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )
    if found is None:
        sys.exit(f"bench_export: {name} is not installed (`make tools` installs it)")
    return found


def _taskset(cpus: str | None, command: list[str]) -> list[str]:
    if cpus is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", cpus, *command]


def _cpus() -> tuple[str | None, str | None]:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or shutil.which("taskset") is None:
        return None, None
    return str(available[0]), ",".join(str(cpu) for cpu in available[1:])


def _feed(directory: Path) -> Path:
    directory.mkdir(parents=True)
    now = int(time.time())
    event_uuid = "5f0c4c9e-1b7a-4d3c-9a55-3f1f7c0b9e21"
    (directory / "manifest.json").write_text(
        json.dumps({event_uuid: {"info": "bench", "timestamp": now}})
    )
    attribute = {
        "type": "domain",
        "value": BLOCKED_DOMAIN,
        "uuid": "a1c2e3f4-5b6d-4e8f-9a0b-1c2d3e4f5a6b",
        "timestamp": str(now),
        "to_ids": True,
    }
    event = {"Event": {"id": "1", "uuid": event_uuid, "info": "bench", "Attribute": [attribute]}}
    (directory / f"{event_uuid}.json").write_text(json.dumps(event))
    return directory


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(value)


def _config(folder: Path, port: int, upstream: int, exports: list[dict[str, Any]]) -> Path:
    (folder / "state").mkdir(parents=True)
    server = {
        "listen": [f"127.0.0.1:{port}"],
        "upstreams": [f"127.0.0.1:{upstream}"],
        "server_name": "bench.example",
        "state_dir": str(folder / "state"),
    }
    lines = ["[server]", *(f"{k} = {_toml(v)}" for k, v in server.items()), ""]
    lines += ["[[policy]]", 'type = "misp-feed"', f"url = {_toml(str(_feed(folder / 'feed')))}"]
    for table in exports:
        lines += ["", "[[export]]", *(f"{k} = {_toml(v)}" for k, v in table.items())]
    config = folder / "misp-dns.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _queries(path: Path, count: int) -> Path:
    allowed = [WWW, NODATA, MID, "ttl.test."]
    lines = []
    for index in range(count):
        if index % 2:
            lines.append(f"q{index}.{BLOCKED_DOMAIN} A")
        else:
            lines.append(f"{allowed[index // 2 % len(allowed)]} A")
    path.write_text("\n".join(lines) + "\n")
    return path


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dnsperf(
    dnsperf: str, cpus: str | None, port: int, queries: Path, seconds: float, warmup: bool
) -> tuple[float, int]:
    limit = ["-n", "1"] if warmup else ["-l", str(seconds)]
    command = _taskset(
        cpus,
        [dnsperf, "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), *limit,
         "-c", "4", "-q", "100"],
    )  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"Queries per second:\s+([\d.]+)", done.stdout)
    completed = re.search(r"Queries completed:\s+(\d+)", done.stdout)
    if done.returncode != 0 or match is None or completed is None:
        raise RuntimeError(f"dnsperf failed:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1)), int(completed.group(1))


class _TcpReader:
    """A loopback TCP receiver that reads and discards whatever arrives, in a thread."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(connection,), daemon=True).start()

    def _drain(self, connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(1 << 16):
                self.received += len(data)

    def close(self) -> None:
        self._listener.close()


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


def in_process(queries: int = 40_000, rounds: int = 5) -> float:
    """CPU microseconds the exporter adds to one query, measured inside one process.

    A real `Responder` (policy chain, answer cache, the UDP fast path) answers the same mix
    as dnsperf sends, once with no observer and once feeding an exporter with a JSONL file
    and syslog over UDP, the exporter draining as the reactor would; the rounds alternate
    and the cheapest of each counts. Socket I/O of the DNS queries themselves is left out,
    so this is the exporter's share alone, free of other processes' noise.
    """
    import ipaddress

    from integration.export_events import misp_decision
    from twisted.internet.task import Clock
    from twisted.names import dns as tdns

    from misp_dns.dns.acl import ClientACL
    from misp_dns.dns.cache import AnswerCache
    from misp_dns.dns.forwarder import Forwarder
    from misp_dns.dns.resolver import ChainResolver
    from misp_dns.dns.server import Responder
    from misp_dns.event import Answer
    from misp_dns.export.exporter import ExporterService, SinkSlot
    from misp_dns.export.jsonl import HangupSignal, JsonlSink
    from misp_dns.export.syslog import DatagramSender, SyslogFormatter, SyslogSink
    from misp_dns.policy.chain import PolicyChain
    from misp_dns.values import HostPort

    class Feed:
        name = "feed"

        def __init__(self) -> None:
            self.decision = misp_decision(BLOCKED_DOMAIN)

        def decide(self, query: Any) -> Any:
            name = query.name
            if name == BLOCKED_DOMAIN or name.endswith("." + BLOCKED_DOMAIN):
                return self.decision
            return None

    import dns.message

    clock = Clock()
    clock.advance(time.time())
    cache = AnswerCache(10_000, clock)
    allowed = ["www.test", "nodata.test", "mid.test", "ttl.test"]
    for name in allowed:
        record = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 3600, tdns.Record_A("192.0.2.1"))
        wire_name = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
        key = (wire_name, tdns.A, tdns.IN, False)
        cache.put(key, Answer(tdns.OK, answers=(record,)))
    resolver = ChainResolver(
        PolicyChain([Feed()]), cache, Forwarder([HostPort("127.0.0.1", 9)], clock), "b.example"
    )
    responder = Responder(resolver, ClientACL([ipaddress.ip_network("127.0.0.0/8")]), clock)
    wires = [
        dns.message.make_query(
            f"q{i}.{BLOCKED_DOMAIN}" if i % 2 else allowed[i // 2 % len(allowed)], "A"
        ).to_wire()
        for i in range(10_000)
    ]
    work = Path(tempfile.mkdtemp(prefix="bench-export-inproc-"))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sinks = [
        SinkSlot("jsonl", JsonlSink(str(work / "q.jsonl"), clock, signal_source=HangupSignal())),
        SinkSlot(
            "syslog",
            SyslogSink(SyslogFormatter(), DatagramSender(receiver.getsockname(), clock)),
        ),
    ]
    exporter = ExporterService(sinks, clock)
    exporter.startService()

    def run(observe: bool) -> float:
        responder.recorder = exporter.record if observe else None  # as tap.py wires it
        started = time.process_time()
        for index in range(queries):
            responder.respond(wires[index % len(wires)], "127.0.0.1", "udp")
            if index % 500 == 499:
                clock.advance(0.05)
        clock.advance(0.05)
        return (time.process_time() - started) / queries * 1e6

    try:
        run(True)
        plain, exporting = [], []
        for _ in range(rounds):
            plain.append(run(False))
            exporting.append(run(True))
            os.truncate(work / "q.jsonl", 0)
    finally:
        exporter.stopService()
        receiver.close()
        shutil.rmtree(work, ignore_errors=True)
    added = min(exporting) - min(plain)
    print(
        f"in-process: {min(plain):.1f} CPU us per query without observer,"
        f" {min(exporting):.1f} with the exporter (JSONL + syslog UDP): +{added:.1f} us"
    )
    return added


def main() -> None:
    """Run the comparison and print queries/s of each and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sinks",
        default="jsonl,syslog",
        help="the sinks of the second server, comma-separated among jsonl, syslog (UDP),"
        " syslog-tcp (to a local reader) and null (JSONL to /dev/null: the exporter alone)",
    )
    args = parser.parse_args()
    dnsperf, unbound_binary = _tool("dnsperf"), _tool("unbound")
    server_cpu, client_cpus = _cpus()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    unbound_port = free_port()
    (work / "unbound").mkdir()
    unbound = UnboundProcess(
        unbound_binary,
        integration_config(work / "unbound", unbound_port),
        ("127.0.0.1", unbound_port),
    )
    unbound.start()
    jsonl = work / "with-sinks" / "log" / "queries.jsonl"
    reader = _TcpReader()
    tables: dict[str, dict[str, Any]] = {
        "jsonl": {"type": "jsonl", "path": str(jsonl)},
        "syslog": {"type": "syslog", "address": f"127.0.0.1:{receiver.getsockname()[1]}"},
        "syslog-tcp": {"type": "syslog", "address": f"127.0.0.1:{reader.port}", "protocol": "tcp"},
        "null": {"type": "jsonl", "path": os.devnull},
    }
    exports = {
        "no sinks": [],
        "with sinks": [tables[name] for name in args.sinks.split(",")],
    }
    servers: dict[str, MispDnsProcess] = {}
    best: dict[str, float] = {}
    cheapest: dict[str, float] = {}
    written = 0
    try:
        for label, tables in exports.items():
            folder = work / label.replace(" ", "-")
            port = free_port()
            config = _config(folder, port, unbound_port, tables)
            server = MispDnsProcess(
                config,
                [("127.0.0.1", port)],
                folder,
                lambda path: _taskset(server_cpu, misp_dns_command(path)),
            )
            server.start(probe=WWW, timeout=60)
            servers[label] = server
        queries = _queries(work / "queries.txt", 10_000)
        for server in servers.values():
            _dnsperf(dnsperf, client_cpus, server.address[1], queries, args.seconds, warmup=True)
        for round_ in range(args.rounds):
            for label, server in servers.items():
                if label == "with sinks":
                    written += _lines(jsonl)
                    if jsonl.exists():
                        os.truncate(jsonl, 0)
                cpu_before = _cpu_seconds(server.pid)
                qps, completed = _dnsperf(
                    dnsperf, client_cpus, server.address[1], queries, args.seconds, warmup=False
                )
                cpu = _cpu_seconds(server.pid) - cpu_before
                best[label] = max(best.get(label, 0.0), qps)
                per_query = 1e6 * cpu / max(completed, 1)
                cheapest[label] = min(cheapest.get(label, float("inf")), per_query)
                print(
                    f"round {round_ + 1}: {label:>10}: {qps:10.0f} queries/s,"
                    f" {per_query:6.1f} CPU us per query",
                    flush=True,
                )
        time.sleep(0.5)
        written += _lines(jsonl)
    finally:
        for server in servers.values():
            server.stop()
        unbound.stop()
        receiver.close()
        reader.close()
        shutil.rmtree(work, ignore_errors=True)
    ratio = best["with sinks"] / best["no sinks"]
    print(
        f"\nbest of {args.rounds} x {args.seconds:g} s:"
        f" no sinks {best['no sinks']:.0f} q/s, with {args.sinks} {best['with sinks']:.0f} q/s"
    )
    print(f"ratio with/without sinks: {ratio:.3f} (goal >= 0.85); {written:,} JSONL lines written")
    added = in_process()
    base = cheapest["no sinks"]
    print(
        f"implied capacity ratio at {base:.1f} us per query without sinks:"
        f" {base / (base + added):.3f}"
    )
    cost_ratio = cheapest["no sinks"] / cheapest["with sinks"]
    print(
        f"server CPU per query: no sinks {cheapest['no sinks']:.1f} us, with sinks"
        f" {cheapest['with sinks']:.1f} us: capacity ratio {cost_ratio:.3f} (less noisy on a"
        " busy machine)"
    )
    if written == 0 and "jsonl" in args.sinks.split(","):
        sys.exit("bench_export: nothing was exported; the comparison is meaningless")


if __name__ == "__main__":
    main()
