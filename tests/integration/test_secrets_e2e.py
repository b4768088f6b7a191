"""The MISP API key, end to end: used where it must be, and nowhere else.

One run of the real server (twistd) with a distinctive key, against a MISP that echoes the
key back in every way a careless or hostile server could: a 403 naming it, 5xx bodies quoting
it (at the start, and across the points where excerpts are cut), a redirect carrying it, a
200 that is not JSON or has the key as a field name, a 429. Then good answers, blocked and
forwarded queries exported to a JSONL file, a policy reload, a stop; a start that fails on a
bad config; `--check-config` on good and bad configs. Everything the server wrote (its log,
stderr, the records, the state directory) is scanned for any ten characters of the key.
`repr()` and error texts are scanned in tests/test_secrets.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from conftest import free_port

from .hostile_dns import read_jsonl, server_table, start_server, write_config
from .hostile_misp import HostileMisp, attribute
from .misp_stand_in import (
    blocked_problems,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
)
from .net import wait_until
from .server import check_config, twistd_path
from .unbound import WWW, UnboundProcess
from .wire import ask_tcp, ask_udp, make_query

KEY = "Sk7Vq2Xz9Lm4Np8Rt3Wb6Hc1Jd5Gf0Ya4Ue8Io2P"
WINDOW = 10
BLOCKED = "secret-blocked.test"
ECHO = "{authorization}"  # the hostile MISP puts the key it was sent here


def leaks(text: str) -> list[str]:
    """The WINDOW-character pieces of the key found in `text`."""
    return [
        KEY[start : start + WINDOW]
        for start in range(len(KEY) - WINDOW + 1)
        if KEY[start : start + WINDOW] in text
    ]


def _where(text: str) -> str:
    """The line of `text` holding the first piece of the key."""
    piece = leaks(text)[0]
    return next(line for line in text.splitlines() if piece in line)[:600]


#: Every way the hostile MISP echoes the key, one request each, then normal answers.
ECHOES: list[dict[str, Any]] = [
    {
        "kind": "reply",
        "status": 403,
        "body": json.dumps({"name": f"Authentication failed for {ECHO}", "message": ECHO}),
    },
    {"kind": "reply", "status": 500, "body": ECHO + " is not valid here"},
    {"kind": "reply", "status": 500, "body": "x" * 100 + ECHO},  # across a 120-byte excerpt
    {"kind": "reply", "status": 503, "body": json.dumps({"message": "m" * 290 + ECHO})},
    {"kind": "redirect", "status": 307, "location": "{other}/attributes/restSearch?key=" + ECHO},
    {"kind": "reply", "status": 200, "body": f"<html><body>{ECHO}</body></html>"},
    {"kind": "reply", "status": 200, "body": json.dumps({ECHO: []})},
    {"kind": "reply", "status": 200, "body": json.dumps({"response": {"Attribute": {ECHO: 1}}})},
    {"kind": "reply", "status": 429, "headers": {"Retry-After": "1"}, "body": ECHO},
]


def _policy(url: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "misp",
        "server_url": url,
        "api_key": KEY,
        "max_ioc_age": "3650d",
        "update_interval": "1s",
    } | options


def test_the_key_appears_nowhere_the_server_writes(tmp_path: Path, unbound: UnboundProcess) -> None:
    """Through a MISP echoing the key in errors, redirects and garbage, then serving good
    answers, through exported queries, a reload, a stop, a failing start and --check-config,
    the key reaches MISP (and only MISP) and no ten characters of it appear in the server's
    log, its stderr, the query records or the state directory."""
    (tmp_path / "misp").mkdir()
    misp = HostileMisp(tmp_path / "misp", api_key=KEY, attributes=[attribute(BLOCKED)])
    misp.start()
    misp.control(script=ECHOES)
    journal = tmp_path / "logs" / "queries.jsonl"
    port = free_port()
    state = tmp_path / "state"
    server = server_table(port, unbound.address, state)
    exports = [{"type": "jsonl", "path": str(journal)}]
    config = write_config(tmp_path / "misp-dns.toml", server, [_policy(misp.url)], exports)
    outputs: dict[str, str] = {}
    try:
        process = start_server(tmp_path / "server", config, port)
        try:
            wait_until(
                lambda: (
                    not blocked_problems(
                        ask_udp(make_query(BLOCKED, "A", edns=0), process.address),
                        BLOCKED,
                        f"source=misp-connector;domain={BLOCKED}",
                    )
                ),
                40,
                0.2,
                "blocking after the echoes",
            )
            for name in (BLOCKED, f"www.{BLOCKED}", WWW):
                ask_udp(make_query(name, "A", edns=0), process.address)
                ask_tcp(make_query(name, "TXT"), process.address)
            # A reload that builds the policy again (and reads the key again).
            write_config(config, server, [_policy(misp.url, blocking_answer_ttl=60)], exports)
            os.kill(process.pid, signal.SIGHUP)
            wait_until(lambda: "reloaded" in process.log_text(), 10, 0.1, "the reload")
            wait_until(lambda: len(read_jsonl(journal)) >= 7, 5, 0.1, "the records")
        finally:
            process.stop()
        outputs["server log"] = process.log_text(limit=1 << 26)
        sent = misp.requests()
    finally:
        misp.stop()
    assert {r["authorization"] for r in sent if r["site"] == "misp"} == {KEY}
    assert [r for r in sent if r["site"] == "other"] == []
    assert "redirect to" in outputs["server log"]

    outputs["query records"] = journal.read_text()
    for path in state.rglob("*"):
        if path.is_file():
            outputs[f"state file {path.name}"] = path.read_bytes().decode("latin-1")
    outputs |= _failing_starts(tmp_path, unbound, misp.url)
    found = {name: _where(text) for name, text in outputs.items() if leaks(text)}
    assert found == {}, "the key leaked:\n" + "\n".join(f"{k}: {v}" for k, v in found.items())


def _failing_starts(tmp_path: Path, unbound: UnboundProcess, url: str) -> dict[str, str]:
    """The output of `twistd -n misp-dns` with bad configs, and of `--check-config`."""
    outputs: dict[str, str] = {}
    server = server_table(free_port(), unbound.address, tmp_path / "state")
    configs = {
        "bad interval": [_policy(url, update_interval="soon")],
        "key and key file": [_policy(url, api_key_file=str(tmp_path / "misp.key"))],
        "key in a feed": [{"type": "misp-feed", "url": "feed", "api_key": KEY}],
        "key with a space": [_policy(url, api_key=f"{KEY} {KEY}")],
        "good": [_policy(url)],
    }
    for name, policies in configs.items():
        path = write_config(tmp_path / f"{name.replace(' ', '-')}.toml", server, policies)
        checked = check_config(path, tmp_path)
        assert (checked.returncode == 0) == (name == "good"), checked.stdout
        outputs[f"--check-config, {name}"] = checked.stdout
        if name == "good":
            continue
        started = subprocess.run(
            [twistd_path(), "-n", "--pidfile=", "misp-dns", "--config", str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert started.returncode != 0
        assert "misp-dns: " in started.stderr, started.stderr
        outputs[f"start, {name}"] = started.stdout + started.stderr
    return outputs


def test_a_key_file_others_can_read_gives_one_warning_naming_the_file(
    tmp_path: Path, unbound: UnboundProcess
) -> None:
    """A key file readable by other users still works, and the log warns once, naming the
    file and `chmod 600`, never its content."""
    (tmp_path / "misp").mkdir()
    misp = HostileMisp(tmp_path / "misp", api_key=KEY, attributes=[attribute(BLOCKED)])
    misp.start()
    key_file = tmp_path / "misp.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    port = free_port()
    policy = _policy(misp.url, api_key_file=str(key_file))
    del policy["api_key"]
    config = write_config(
        tmp_path / "misp-dns.toml",
        server_table(port, unbound.address, tmp_path / "state"),
        [policy],
    )
    try:
        process = start_server(tmp_path / "server", config, port)
        try:
            report = f"source=misp-connector;domain={BLOCKED}"
            wait_until(
                lambda: (
                    not blocked_problems(
                        ask_udp(make_query(BLOCKED, "A", edns=0), process.address), BLOCKED, report
                    )
                ),
                20,
                0.1,
                "blocking with the key from the file",
            )
        finally:
            process.stop()
    finally:
        misp.stop()
    log = process.log_text(limit=1 << 24)
    warnings = [line for line in log.splitlines() if "can be read by other users" in line]
    assert len(warnings) == 1, warnings
    assert str(key_file) in warnings[0] and "chmod 600" in warnings[0]
    assert leaks(log) == []
