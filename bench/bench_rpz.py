"""What the RPZ primary costs: a million-indicator zone transferred to a real BIND.

    .venv/bin/python bench/bench_rpz.py                     # 1,000,000 indicators
    .venv/bin/python bench/bench_rpz.py --count 100000      # a quicker run

In order:

1. `misp_standin.py` serves `--count` domain attributes; misp-dns (twistd, a `misp` policy
   refreshing every minute, `[rpz]` signed with a TSIG key) fetches them and builds the zone;
2. a BIND 9 secondary (`named`, the resolver config of tests/integration/bind.py) transfers
   it by AXFR: its own "Transfer completed" line gives the messages, records, bytes and
   seconds; meanwhile a client thread asks misp-dns a blocked name every 5 ms over UDP and
   notes the slowest answer (the goal: a transfer never stalls answers by more than 50 ms),
   beside the slowest answer of the same client for 10 s before, with no transfer;
3. the stand-in's next round changes 1% of the values; misp-dns's refresh gives the next
   serial and a NOTIFY, and BIND's IXFR line gives that transfer's bytes (the goal: about
   1% of the AXFR's);
4. the reference: a BIND primary serving the zone file BIND wrote, and a second BIND
   secondary transferring it by AXFR, with the same key, on the same machine.

The figures are printed as a Markdown table, for bench/README.md and bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

import dns.message  # noqa: E402
import dns.query  # noqa: E402
from corpus import allowed_names, indicators  # noqa: E402
from harness import stop_process, write_misp_dns_config  # noqa: E402
from integration.bind import rpz_secondary_config  # noqa: E402
from integration.net import free_port  # noqa: E402
from integration.server import misp_dns_command  # noqa: E402
from integration.unbound import UnboundProcess, integration_config  # noqa: E402

ZONE = "rpz.misp-dns.example"
KEY = ("bench", b"benchmark tsig key, 32 bytes ok")
API_KEY = "b3nchb3nchb3nchb3nchb3nchb3nchb3nchb3nc"
_COMPLETED = re.compile(
    r"Transfer completed: (\d+) messages, (\d+) records, (\d+) bytes, ([\d.]+) secs"
)


def _spawn(command: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _wait_for(path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line of `path` matching `pattern` (waiting for it)."""
    deadline = time.monotonic() + timeout
    compiled = re.compile(pattern)
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if compiled.search(line):
                    return line
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited:\n{path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no {pattern!r} in {path} within {timeout} s")


def _completed(line: str) -> dict[str, float]:
    found = _COMPLETED.search(line)
    assert found is not None, line
    messages, records, size, seconds = found.groups()
    return {
        "messages": int(messages),
        "records": int(records),
        "bytes": int(size),
        "seconds": float(seconds),
    }


class _Prober(threading.Thread):
    """Asks `name` every 5 ms over UDP; keeps the slowest answer and the losses."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.name = name
        self.running = True
        self.slowest = 0.0
        self.lost = 0
        self.answered = 0

    def run(self) -> None:
        query = dns.message.make_query(self.name, "A")
        while self.running:
            started = time.monotonic()
            try:
                dns.query.udp(query, self.address[0], port=self.address[1], timeout=1.0)
                self.answered += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
            except Exception:
                self.lost += 1
            time.sleep(max(0.0, 0.005 - (time.monotonic() - started)))


def _named_primary_config(directory: Path, port: int, zone_file: Path) -> Path:
    name, secret = KEY
    conf = directory / "named.conf"
    conf.write_text(
        f"""key "{name}" {{ algorithm hmac-sha256; secret "{base64.b64encode(secret).decode()}"; }};
options {{
    directory "{directory}";
    pid-file none;
    session-keyfile none;
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    allow-transfer {{ key {name}; }};
}};
controls {{ }};
logging {{
    channel out {{ stderr; severity info; print-time yes; }};
    category default {{ out; }};
}};
zone "{ZONE}" {{ type primary; file "{zone_file}"; }};
"""
    )
    return conf


def _bind_secondary(
    named: str, folder: Path, upstream: tuple[str, int], primary: tuple[str, int]
) -> tuple[subprocess.Popen[bytes], Path, tuple[str, int]]:
    folder.mkdir(parents=True)
    port = free_port()
    conf = rpz_secondary_config(folder, port, upstream, ZONE, primary, KEY)
    log = folder / "named.log"
    process = _spawn([named, "-g", "-c", str(conf)], folder, log)
    return process, log, ("127.0.0.1", port)


def run(count: int, workdir: Path) -> list[tuple[str, str]]:
    """The whole benchmark; returns (figure, value) rows."""
    named = shutil.which("named") or "/usr/sbin/named"
    unbound_binary = shutil.which("unbound") or "/usr/sbin/unbound"
    rows: list[tuple[str, str]] = []
    processes: list[subprocess.Popen[bytes]] = []
    upstream_dir = workdir / "unbound"
    upstream_dir.mkdir()
    upstream_port = free_port()
    upstream = UnboundProcess(
        unbound_binary,
        integration_config(upstream_dir, upstream_port),
        ("127.0.0.1", upstream_port),
    )
    upstream.start()
    try:
        standin_port = free_port()
        standin_log = workdir / "standin.log"
        print(f"stand-in: building {count:,} attributes", flush=True)
        command = [sys.executable, str(HERE / "misp_standin.py"), "--port", str(standin_port)]
        command += ["--count", str(count), "--allowed", "1000", "--api-key", API_KEY]
        standin = _spawn(command, workdir, standin_log)
        processes.append(standin)
        _wait_for(standin_log, "ready", standin, 600)
        probe_name = indicators(count, allowed_names(1000))[0]

        port = free_port()
        address = ("127.0.0.1", port)
        secret_file = workdir / "bench.key"
        secret_file.write_text(base64.b64encode(KEY[1]).decode())
        bind_dir = workdir / "bind-from-misp-dns"
        bind_port_hint = free_port()
        config = write_misp_dns_config(
            workdir / "misp-dns.toml",
            {
                "server": {
                    "listen": [f"127.0.0.1:{port}"],
                    "upstreams": [f"127.0.0.1:{upstream_port}"],
                    "server_name": "ns.misp-dns.example",
                    "state_dir": str(workdir / "state"),
                },
            },
            [
                {
                    "type": "misp",
                    "server_url": f"http://127.0.0.1:{standin_port}",
                    "api_key": API_KEY,
                    "update_interval": "1m",
                    "max_ioc_age": "36500d",
                }
            ],
        )
        with config.open("a") as extra:
            extra.write(
                f'[[tsig_key]]\nname = "{KEY[0]}"\nsecret_file = "{secret_file}"\n'
                f'[rpz]\nzone = "{ZONE}"\nallow_transfer = ["127.0.0.1/32"]\n'
                f'tsig_keys = ["{KEY[0]}"]\nnotify = ["127.0.0.1:{bind_port_hint}"]\n'
            )
        log = workdir / "twistd.log"
        print("misp-dns: fetching from the stand-in", flush=True)
        server = _spawn(misp_dns_command(config), workdir, log)
        processes.append(server)
        built = _wait_for(log, r"RPZ zone \S+ serial \d+: [1-9]", server, 1800)
        rows.append(("zone built (misp-dns log)", built.split("] ", 1)[1]))

        # The same client before any transfer: what the machine's own noise gives.
        baseline = _Prober(address, probe_name)
        baseline.start()
        time.sleep(10)
        baseline.running = False
        baseline.join()
        rows.append(
            (
                "slowest answer of misp-dns with no transfer (UDP, every 5 ms, 10 s)",
                f"{baseline.slowest * 1000:.1f} ms, {baseline.lost} lost of"
                f" {baseline.answered + baseline.lost}",
            )
        )

        # 2. AXFR to BIND from misp-dns, with a client asking misp-dns meanwhile. The
        # secondary listens where the NOTIFY goes, so the refresh reaches it at once.
        prober = _Prober(address, probe_name)
        prober.start()
        bind_dir.mkdir()
        conf = rpz_secondary_config(
            bind_dir, bind_port_hint, ("127.0.0.1", upstream_port), ZONE, address, KEY
        )
        bind_log = bind_dir / "named.log"
        bind = _spawn([named, "-g", "-c", str(conf)], bind_dir, bind_log)
        processes.append(bind)
        axfr = _completed(_wait_for(bind_log, "Transfer completed", bind, 1800))
        time.sleep(1)
        prober.running = False
        prober.join()
        rows.append(
            (
                "AXFR misp-dns -> BIND",
                f"{axfr['seconds']:.2f} s, {axfr['bytes']:,} bytes, {axfr['messages']:,}"
                f" messages, {axfr['records']:,} records",
            )
        )
        rows.append(
            (
                "slowest answer of misp-dns during the AXFR (UDP, every 5 ms)",
                f"{prober.slowest * 1000:.1f} ms, {prober.lost} lost of"
                f" {prober.answered + prober.lost}",
            )
        )

        # 3. The next round changes 1%: IXFR.
        print("waiting for the refresh (1% changed) and the IXFR", flush=True)
        ixfr_line = _wait_for(bind_log, r"Transfer completed.*serial", bind, 1800)
        deadline = time.monotonic() + 600
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = [
                line
                for line in bind_log.read_text(errors="replace").splitlines()
                if "Transfer completed" in line
            ]
            if len(lines) >= 2:
                break
            time.sleep(0.5)
        del ixfr_line
        if len(lines) >= 2:
            ixfr = _completed(lines[1])
            primary_lines = [
                line for line in log.read_text(errors="replace").splitlines() if "RPZ zone" in line
            ]
            rows.append(("zone changed (misp-dns log)", primary_lines[-1].split("] ", 1)[1]))
            rows.append(
                (
                    "IXFR misp-dns -> BIND after a 1% change",
                    f"{ixfr['seconds']:.2f} s, {ixfr['bytes']:,} bytes"
                    f" ({100 * ixfr['bytes'] / axfr['bytes']:.2f}% of the AXFR),"
                    f" {ixfr['records']:,} records",
                )
            )
            ixfr_kind = [line for line in log.read_text().splitlines() if "IXFR (delta" in line]
            rows.append(("IXFR served as a delta", "yes" if ixfr_kind else "no (whole zone)"))
        else:
            rows.append(("IXFR misp-dns -> BIND after a 1% change", "not seen within 10 min"))

        # 4. The reference: BIND serving the zone file BIND wrote to another BIND.
        zone_file = bind_dir / "rpz.db"
        text_file = workdir / "rpz.zone"
        subprocess.run(
            [
                "named-compilezone",
                "-f",
                "raw",
                "-F",
                "text",
                "-o",
                str(text_file),
                ZONE,
                str(zone_file),
            ],
            check=True,
            capture_output=True,
        )
        reference_dir = workdir / "bind-primary"
        reference_dir.mkdir()
        reference_port = free_port()
        reference_log = reference_dir / "named.log"
        reference = _spawn(
            [
                named,
                "-g",
                "-c",
                str(_named_primary_config(reference_dir, reference_port, text_file)),
            ],
            reference_dir,
            reference_log,
        )
        processes.append(reference)
        _wait_for(reference_log, "all zones loaded|running", reference, 600)
        secondary, secondary_log, _ = _bind_secondary(
            named,
            workdir / "bind-from-bind",
            ("127.0.0.1", upstream_port),
            ("127.0.0.1", reference_port),
        )
        processes.append(secondary)
        reference_axfr = _completed(_wait_for(secondary_log, "Transfer completed", secondary, 1800))
        rows.append(
            (
                "AXFR BIND -> BIND (same zone file, same key)",
                f"{reference_axfr['seconds']:.2f} s, {reference_axfr['bytes']:,} bytes,"
                f" {reference_axfr['messages']:,} messages, {reference_axfr['records']:,} records",
            )
        )
        rows.append(
            (
                "misp-dns AXFR vs BIND's",
                f"{axfr['seconds'] / max(reference_axfr['seconds'], 1e-6):.1f}x the time,"
                f" {axfr['bytes'] / reference_axfr['bytes']:.2f}x the bytes",
            )
        )
    finally:
        for process in reversed(processes):
            stop_process(process)
        upstream.stop()
    return rows


def main() -> None:
    """Parse the options, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-rpz-"))
    try:
        rows = run(args.count, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder: {workdir}")
    print(f"\n| figure ({args.count:,} indicators) | value |\n|---|---|")
    for figure, value in rows:
        print(f"| {figure} | {value} |")


if __name__ == "__main__":
    main()
