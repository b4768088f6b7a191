"""A broken disk, end to end: misp-dns keeps answering, blocking and counting what it lost.

The server runs under twistd with a MISP stand-in. The disk is broken for real where the
kernel allows it: a read-only or a tiny tmpfs mounted over the state or log directory (the
tests run as root, for whom permissions are no obstacle). Where mounting is not permitted
(an unprivileged container), the same tests use what any process may do to itself: a file
in the way of `state_dir`, and `RLIMIT_FSIZE` for a full disk. The full-disk test also runs
with `RLIMIT_FSIZE` everywhere, since the two fail differently (ENOSPC, EFBIG).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import struct
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from misp_dns.intel import store
from misp_dns.intel.domainset import FORMAT_VERSION, DomainSet
from misp_dns.intel.indicator import BlockEntry
from misp_dns.policy.misp import snapshot_path

from .hostile_dns import server_table, start_server, write_config
from .misp_stand_in import (
    MispStandIn,
    is_blocked,
    is_forwarded,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
)
from .net import wait_until
from .server import MispDnsProcess, misp_dns_command
from .unbound import UnboundProcess
from .wire import make_query, udp_exchange

API_KEY = "Dk3Jw7Qp1Zm5Xv9Bn2Hc6Lt0Rf4Ys8Ge3Ua7Wi1O"
NAMES = ["first.disk.test", "second.disk.test"]
#: A name only an old or forged cache file lists: blocking it means the file was trusted.
CACHED_ONLY = "cached-only.disk.test"


@contextlib.contextmanager
def _mounted(where: Path, options: str) -> Iterator[bool]:
    """A tmpfs mounted at `where` with `options` while the block runs; False if not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        problem = done.stderr.strip() if done.returncode != 0 else ""
    except OSError as error:
        problem = str(error)
    if problem:
        print(f"\ncannot mount a tmpfs here ({problem}); using the fallback")
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="module")
def misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MispStandIn]:
    """A MISP stand-in listing NAMES."""
    with MispStandIn(
        tmp_path_factory.mktemp("disk-misp"),
        api_key=API_KEY,
        attributes=[{"value": name} for name in NAMES],
    ) as stand_in:
        yield stand_in


def _policy(misp: MispStandIn, workdir: Path, interval: str = "1h") -> dict[str, Any]:
    return misp_policy(misp.url, key_file(workdir, API_KEY), update_interval=interval)


def _config(
    workdir: Path,
    unbound: UnboundProcess,
    state: Path,
    policies: list[dict[str, Any]],
    exports: Sequence[Mapping[str, Any]] = (),
) -> tuple[Path, int]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(
        workdir / "misp-dns.toml", server_table(port, unbound.address, state), policies, exports
    )
    return config, port


# -- state_dir ----------------------------------------------------------------------------


def test_unwritable_state_dir_serves_from_memory_and_warns_once(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn
) -> None:
    """With a state_dir that cannot be written (a read-only file system; or a file in the way
    where mounting is not allowed), every fetch is served from memory, new names included,
    and the log says so once, not at every refresh."""
    state = tmp_path / "state"
    with _mounted(state, "ro,size=1m") as mounted:
        if not mounted:
            (tmp_path / "in-the-way").write_text("a file where a directory should be")
            state = tmp_path / "in-the-way" / "state"
        config, port = _config(tmp_path, unbound, state, [_policy(misp, tmp_path, "1s")])
        process = start_server(tmp_path / "server", config, port)
        try:
            wait_until(lambda: is_blocked(process, NAMES[0]), 20, 0.1, "the first fetch")
            for round_ in range(3):
                name = f"round{round_}.unwritable.disk.test"
                misp.control(add=[{"value": name}])
                wait_until(lambda name=name: is_blocked(process, name), 10, 0.1, name)
            log = process.log_text(limit=1 << 24)
        finally:
            process.stop()
        warnings = [line for line in log.splitlines() if "cannot save the indicator cache" in line]
        assert len(warnings) == 1, warnings
        assert "serving from memory" in warnings[0]
        if mounted:
            assert list(state.iterdir()) == []


# -- the cache file -----------------------------------------------------------------------


def _forged_snapshot(version: int = FORMAT_VERSION, payload: bytes | None = None) -> bytes:
    """A snapshot file listing CACHED_ONLY, with the header's version set to `version`, or
    with `payload` in place of the real one (and a checksum that matches it)."""
    if payload is None:
        domainset = DomainSet.build([BlockEntry(CACHED_ONLY, True)])
        payload = b"".join(bytes(buffer) for buffer in domainset.to_buffers())
    checksum = hashlib.blake2b(payload, digest_size=32).digest()
    return struct.pack("<8sIQ32s", store.MAGIC, version, len(payload), checksum) + payload


GARBAGE: dict[str, bytes | None] = {
    "random-bytes": os.urandom(8192),
    "empty": b"",
    "text": b"# not a snapshot\nfirst.disk.test\n",
    "huge-length": struct.pack("<8sIQ32s", store.MAGIC, FORMAT_VERSION, 2**63, b"\0" * 32),
    "forged-checksum": _forged_snapshot(payload=os.urandom(4096)),
    "meta-lies": _forged_snapshot(payload=b"\x20\0\0\0" + b'{"count": 99999999999}'.ljust(32)),
    "older-version": _forged_snapshot(FORMAT_VERSION - 1),
    "newer-version": _forged_snapshot(FORMAT_VERSION + 1),
    "directory": None,
}


def _lines_naming(process: Any, path: Path) -> list[str]:
    return [line for line in process.log_text(limit=1 << 24).splitlines() if str(path) in line]


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_a_bad_cache_file_is_ignored_with_one_line_and_replaced(
    tmp_path: Path, unbound: UnboundProcess, misp: MispStandIn, kind: str
) -> None:
    """A cache file replaced by garbage, forged with a matching checksum, cut short, or
    written by another format version is ignored with one log line: the server starts,
    blocks nothing the file lists, fetches from MISP, and then saves a good file in its
    place (a directory in its place gets one warning, and is left alone)."""
    state = tmp_path / "state"
    state.mkdir()
    policy = _policy(misp, tmp_path)
    path = Path(snapshot_path(str(state), "misp", policy["server_url"]))
    content = GARBAGE[kind]
    if content is None:
        path.mkdir()
        (path / "inside").write_text("x")
    else:
        path.write_bytes(content)
    config, port = _config(tmp_path, unbound, state, [policy])
    process = start_server(tmp_path / "server", config, port)
    try:
        wait_until(lambda: is_blocked(process, NAMES[0]), 20, 0.1, "the fetch")
        assert is_forwarded(process, CACHED_ONLY)
        # The snapshot is saved (or found unsavable) just after it is served.
        expected = 1 + (kind == "directory")
        wait_until(lambda: len(_lines_naming(process, path)) >= expected, 20, 0.1, "the save")
        about = _lines_naming(process, path)
    finally:
        process.stop()
    assert len(about) == 1 + (kind == "directory"), about
    if "version" in kind:
        assert re.search(
            rf"format version {FORMAT_VERSION + (1 if 'newer' in kind else -1)}\b", about[0]
        ), about
    if kind == "directory":
        assert path.is_dir() and "cannot save" in about[1]
    else:
        loaded = store.load(path)
        assert loaded is not None and loaded.match(NAMES[1]) is not None
        assert loaded.match(CACHED_ONLY) is None


# -- a full disk under the JSONL sink -----------------------------------------------------


def _limited_command(limit: int) -> Any:
    """The twistd command line run with RLIMIT_FSIZE = `limit` bytes."""

    def command(config: Path) -> list[str]:
        setup = (
            "import os, resource, sys; "
            # Only the soft limit: the test may raise it again without CAP_SYS_RESOURCE.
            "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, hard)); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        return [sys.executable, "-c", setup, *misp_dns_command(config)]

    return command


def _ask_all(process: MispDnsProcess, names: list[str]) -> int:
    answered = 0
    for name in names:
        reply = udp_exchange(make_query(name, "A").to_wire(), process.address, timeout=2)
        answered += reply is not None
    return answered


def _dropped_total(log: str) -> int:
    totals = re.findall(
        r"export\[0\] \(jsonl\): \d+ query records dropped \((\d+) since start", log
    )
    return int(totals[-1]) if totals else 0


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_full_disk_for_the_jsonl_sink_counts_drops_and_recovers(
    tmp_path: Path, unbound: UnboundProcess, how: str
) -> None:
    """When the disk under the query log fills up (a 256 KiB tmpfs, or a file size limit
    where mounting is not allowed or asked for), every query is still answered; records
    that cannot be written are counted and reported, and once space returns the next
    records are written. Every line in the file is whole JSON, and the records in the
    file plus those reported dropped are exactly the queries answered."""
    logs = tmp_path / "logs"
    limit = 256 * 1024
    with contextlib.ExitStack() as stack:
        mounted = how == "tmpfs" and stack.enter_context(_mounted(logs, f"size={limit}"))
        logs.mkdir(exist_ok=True)
        filler = logs / "filler"
        if mounted:
            # Leave about 40 KiB: a hundred records or so.
            filler.write_bytes(b"\0" * (limit - 40 * 1024))
        journal = logs / "queries.jsonl"
        config, port = _config(
            tmp_path, unbound, tmp_path / "state", [], [{"type": "jsonl", "path": str(journal)}]
        )
        (tmp_path / "server").mkdir()
        process = MispDnsProcess(config, [("127.0.0.1", port)], tmp_path / "server")
        if not mounted:
            process.command = _limited_command(40 * 1024)
        process.start(probe="www.test.")
        try:
            before = _ask_all(process, [f"n{i}.before.full.test" for i in range(400)])
            wait_until(
                lambda: "query records dropped" in process.log_text(), 5, 0.1, "a drop report"
            )
            # Space returns.
            if mounted:
                filler.unlink()
            else:
                hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)[1]
                resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (hard, hard))
            after_names = [f"n{i}.after.full.test" for i in range(100)]
            after = _ask_all(process, after_names)
            wait_until(lambda: after_names[-1].encode() in journal.read_bytes(), 5, 0.1, "recovery")
        finally:
            process.stop()
        log = process.log_text(limit=1 << 24)
        assert (before, after) == (400, 100), log[-3000:]
        assert "Server Shut Down." in log
        assert "again" in log  # "writing query records to ... again"
        lines = journal.read_bytes().splitlines()
        torn = [line for line in lines if not _whole_record(line)]
        whole = len(lines) - len(torn)
        written = {
            json.loads(line)["question"]["questionName"].rstrip(".")
            for line in lines
            if _whole_record(line)
        }
        dropped = _dropped_total(log)
        print(
            f"\nfull disk ({'tmpfs' if mounted else 'RLIMIT_FSIZE'}): {whole} whole records "
            f"written, {len(torn)} torn lines, {dropped} reported dropped, of "
            f"{before + after + 1} answered"
        )
        assert dropped > 0
        assert torn == [], f"lines cut by the full disk and glued to the next: {torn[:2]}"
        assert set(after_names) <= written
        assert whole + dropped == before + after + 1  # the start-up probe too


def _whole_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
