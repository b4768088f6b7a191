"""Goal 7: `twistd misp-dns` started with an empty state, to its first answer, under 1 s.

The clock starts when the process is spawned (on the server CPU, as users would start it)
and stops at the first answer to a query for an allowed name, forwarded to Unbound (the
answer cache is empty too). The config holds a `misp` policy whose server is down and an
empty state_dir, so nothing is loaded and nothing may be waited for. Unbound started with a
one-name configuration is timed the same way, as the reference. Each is started
`--repeats` times; the median is reported.
"""

from __future__ import annotations

import statistics
import subprocess
import time

from harness import Bench, Figure, cpu_seconds, stop_process, write_misp_dns_config
from integration.net import free_port
from integration.server import misp_dns_command
from integration.unbound import base_server_lines, write_config
from probe import NOERROR, wait_for_rcode

__all__ = ["startup"]


def _time_to_answer(command: list[str], port: int, name: str, cwd: str) -> tuple[float, float]:
    """Seconds from spawn to the first answer, and the CPU seconds the process used."""
    started = time.monotonic()
    log = open(f"{cwd}/process.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        answered = wait_for_rcode(
            ("127.0.0.1", port), name, NOERROR, timeout=30, interval=0.001, alive=process
        )
        cpu = cpu_seconds(process.pid)
    finally:
        stop_process(process)
        log.close()
    return answered - started, cpu


def startup(bench: Bench) -> None:
    """Time misp-dns and Unbound from spawn to first answer."""
    name = bench.allowed[0]
    ours: list[float] = []
    theirs: list[float] = []
    cpu: list[float] = []
    for number in range(bench.args.repeats):
        folder = bench.workdir / f"startup-{number}"
        (folder / "state").mkdir(parents=True)
        port = free_port()
        misp_down = free_port()  # nothing listens there
        policy = {
            "type": "misp",
            "server_url": f"http://127.0.0.1:{misp_down}",
            "api_key": "0" * 40,
        }
        config = write_misp_dns_config(
            folder / "misp-dns.toml", bench.server_sections(folder, port), [policy]
        )
        command = bench.on_server_cpu(misp_dns_command(config))
        seconds, used = _time_to_answer(command, port, name, str(folder))
        ours.append(seconds)
        cpu.append(used)

        unbound_folder = folder / "unbound"
        unbound_folder.mkdir()
        unbound_port = free_port()
        conf = write_config(
            unbound_folder,
            [
                *base_server_lines(unbound_folder, unbound_port),
                "verbosity: 0",
                f'local-data: "{name}. 3600 IN A 192.0.2.1"',
            ],
        )
        command = bench.on_server_cpu([bench.unbound_binary, "-d", "-c", str(conf)])
        theirs.append(_time_to_answer(command, unbound_port, name, str(unbound_folder))[0])
        bench.say(f"startup: misp-dns {ours[-1]:.3f} s, unbound {theirs[-1]:.3f} s")
    median = statistics.median(ours)
    busy = statistics.median(cpu)
    bench.figure(
        Figure(
            "7",
            "startup of `twistd misp-dns` to the first answer, empty state, MISP down",
            f"{median:.2f} s",
            f"Unbound {statistics.median(theirs):.3f} s",
            f"{median:.2f} s",
            "< 1 s",
            median < 1.0,
            f"median of {len(ours)}: " + ", ".join(f"{t:.2f}" for t in ours) + " s; CPU time"
            " used by then (which a busy machine stretches less): "
            + ", ".join(f"{t:.2f}" for t in cpu)
            + " s",
            # CPU time is a floor of a one-threaded start: under the goal by CPU but over it
            # on the clock means the machine, not the code, took the difference.
            (busy < 1.0) != (median < 1.0),
        )
    )
