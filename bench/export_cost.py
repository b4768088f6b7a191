"""What logging costs the server process, in one process and free of dnsperf's noise.

    .venv/bin/python bench/export_cost.py             # JSONL + syslog (UDP), 2 alternations
    .venv/bin/python bench/export_cost.py --rounds 4
    .venv/bin/python bench/export_cost.py --sinks bytes   # the export path alone, no I/O
    PYTHONPATH=<other checkout> .venv/bin/python bench/export_cost.py   # another version

A real `Responder` over a real `ChainResolver` (the real feed's 60,435 domains in a MISP
policy, 1,000 allowed names in the answer cache) answers the two query files of the
`independent` scenario (20,000 blocked names drawn from the feed, half as `www.`
subdomains; 20,000 draws from the allowed names), with and without an `ExporterService`
holding a JSONL sink (a file in /tmp) and a syslog sink over UDP (to a socket here, read
between batches), the two alternating. The reactor runs, so the syslog sink starts its
sending process where this version has one. The clock moves a second after each pass, so
cached answers age as they do when served. Printed: the CPU time of this process (user +
system, the sending process left out) per query. The socket I/O of a real server (about
6-8 us a query on the benchmark box) is not in these figures, on either side.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from corpus import allowed_beside, feed_domains, sampled_queries  # noqa: E402

QUERIES = 20_000
BATCH = 500


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _BytesSink:
    """A sink that makes each batch's NDJSON bytes, as the JSONL and syslog sinks do, and
    writes them nowhere."""

    dropped = 0

    def start(self) -> None:
        pass

    def write(self, records: Any) -> None:
        from misp_dns.export.record import encode_records

        encode_records(records)

    def stop(self) -> None:
        pass


def main() -> None:
    """Measure and print the CPU per query with and without the sinks."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternations of off and on")
    parser.add_argument("--passes", type=int, default=3, help="passes over a file per run")
    parser.add_argument(
        "--sinks",
        choices=["real", "bytes"],
        default="real",
        help="real: JSONL + syslog; bytes: one sink that only takes each batch's NDJSON bytes"
        " (the export path in the server process, without the sinks' I/O)",
    )
    args = parser.parse_args()

    import dns.message
    from test_misp_policy import NoUpstream, misp_policy
    from twisted.internet import reactor
    from twisted.internet.task import Clock
    from twisted.names import dns as tdns

    from misp_dns.dns.acl import ClientACL
    from misp_dns.dns.cache import AnswerCache
    from misp_dns.dns.resolver import ChainResolver
    from misp_dns.dns.server import Responder
    from misp_dns.event import Answer
    from misp_dns.export.exporter import ExporterService, SinkSlot
    from misp_dns.export.jsonl import JsonlSink
    from misp_dns.export.syslog import SyslogOptions, SyslogSink
    from misp_dns.interfaces import BuildContext, RawIndicator
    from misp_dns.policy.chain import PolicyChain

    domains = feed_domains()
    allowed = allowed_beside(1000, domains)
    policy = misp_policy([RawIndicator(d, "domain") for d in domains], max_ioc_age=36500 * 86400)
    clock = Clock()
    clock.advance(time.time())
    cache = AnswerCache(100_000, clock)
    for name in allowed:
        record = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 3600, tdns.Record_A("192.0.2.1"))
        wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
        cache.put((wire, tdns.A, tdns.IN, False, 0), Answer(tdns.OK, answers=(record,)))
    resolver = ChainResolver(PolicyChain([policy]), cache, NoUpstream(), "bench.example")
    responder = Responder(resolver, ClientACL([ipaddress.ip_network("127.0.0.0/8")]), clock)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    options = SyslogOptions(address=f"127.0.0.1:{receiver.getsockname()[1]}")
    context = BuildContext(reactor, None, "")
    slots = [
        SinkSlot("jsonl", JsonlSink(tempfile.mktemp(suffix=".jsonl"), reactor)),
        SinkSlot("syslog", SyslogSink.from_config(options, context)),
    ]
    if args.sinks == "bytes":
        slots = [SinkSlot("bytes", _BytesSink())]
    exporter = ExporterService(slots, clock)
    files = {
        "blocked": sampled_queries(domains, QUERIES),
        "cached": random.Random(19).choices(allowed, k=QUERIES),
    }

    def drain_receiver() -> None:
        while True:
            try:
                receiver.recv(65535)
            except BlockingIOError:
                return

    def measure(wires: list[bytes], logging: bool) -> float:
        if hasattr(responder, "recorder"):
            responder.recorder = exporter.record if logging else None
        else:  # a version before the recorder hand-off
            responder.observers[:] = [exporter.observe] if logging else []
        started, count = _cpu(), 0
        for _ in range(args.passes):
            for index in range(0, len(wires), BATCH):
                for wire in wires[index : index + BATCH]:
                    responder.respond(wire, "127.0.0.1", "udp")
                count += len(wires[index : index + BATCH])
                while len(exporter):
                    exporter._export_chunk()
                for _ in range(3):
                    reactor.iterate(0)  # type: ignore[attr-defined]
                drain_receiver()
            clock.advance(1)
        return (_cpu() - started) / count * 1e6

    sinks = "JSONL + syslog" if args.sinks == "real" else "the batch bytes only"

    def run() -> None:
        exporter.startService()
        for kind, names in files.items():
            wires = [dns.message.make_query(n, "A", use_edns=0).to_wire() for n in names]
            measure(wires, True)  # warm-up: memos, and the sending process started
            figures: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for logging in (False, True):
                    figures[logging].append(measure(wires, logging))
            off, on = min(figures[False]), min(figures[True])
            print(
                f"{kind}: {off:.2f} us a query without sinks, {on:.2f} with {sinks}:"
                f" +{on - off:.2f} us (runs: off {figures[False]}, on {figures[True]})",
                flush=True,
            )
        stopped: Any = exporter.stopService()
        stopped.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    print("records dropped by the sinks:", [slot.dropped for slot in slots])


if __name__ == "__main__":
    main()
