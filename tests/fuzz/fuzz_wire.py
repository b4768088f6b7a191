"""atheris harness for the wire code, for long fuzzing runs by hand (see README.md here).

Each input is one packet, fed to `read_request`, `read_plain_query` and `Responder.respond`
(over UDP, TCP and UDP beyond the rate limit, with the in-process stack of
`integration.abuse_checks`). With `MISP_DNS_FUZZ_CHECK=all` (the default) every check of
tests/test_fuzz_wire.py applies: defined outcomes only, strictly valid responses echoing
ID and question, the fast path agreeing with the full path. With `exceptions`, only an
exception other than the defined ones counts as a crash (useful to look past a known
malformed-response defect). Hangs are libFuzzer's `-timeout`.

    .venv/bin/python tests/fuzz/fuzz_wire.py --seeds var/fuzz-corpus   # write seed queries
    .venv/bin/python tests/fuzz/fuzz_wire.py var/fuzz-corpus -max_total_time=300

Not collected by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for integration.*

# Everything misp_dns and twisted.names that the checks import is instrumented for coverage.
with atheris.instrument_imports(include=["misp_dns", "twisted.names"]):
    from integration import abuse_checks
    from integration.abuse_mutations import Mutator

    from misp_dns.dns.packet import read_plain_query
    from misp_dns.dns.wire import DropPacket, RequestError, encode_error, read_request

#: What counts as a crash: "all" checks, or "exceptions" only.
CHECK = os.environ.get("MISP_DNS_FUZZ_CHECK", "all")
SEED_COUNT = 256

abuse_checks.hang_guard = None  # libFuzzer's -timeout watches for hangs


def _exceptions_only(data: bytes) -> None:
    try:
        read_request(data)
    except (DropPacket, RequestError) as outcome:
        if isinstance(outcome, RequestError):
            encode_error(outcome)
    read_plain_query(data)
    for transport in ("udp", "tcp"):
        abuse_checks.fired(abuse_checks.responder().respond(data, abuse_checks.CLIENT, transport))


def test_one_input(data: bytes) -> None:
    """One fuzzing input: one packet through every reader and the responder."""
    if CHECK == "exceptions":
        _exceptions_only(data)
    else:
        abuse_checks.check_all(data)


def _write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    mutator = Mutator(seed=1, names=abuse_checks.SPECIAL_NAMES)
    for index, wire in enumerate(mutator.bases[:SEED_COUNT]):
        (directory / f"seed-{index:04d}").write_bytes(wire)
    print(f"wrote {min(SEED_COUNT, len(mutator.bases))} seed queries to {directory}")


def main() -> None:
    """Write seeds (`--seeds DIR`) or fuzz (libFuzzer arguments)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        _write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
