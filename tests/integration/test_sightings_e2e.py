"""Sightings end to end: a twistd-started misp-dns posting its blocks to the MISP stand-in.

The stand-in (`misp_stand_in.py`) is `misp_dns.testing.FakeMisp` served for real on
loopback, started with MISP's OpenAPI description (`openapi_check.SPEC`): every
`/sightings/add` it receives is checked against it (the key's header, the content type, the
body's schema) and refused with a 400 if it breaks it. Forwarded names go to the harness's
real Unbound. What is checked is what a MISP analyst sees: one sighting per attribute per
interval, with the configured source, for the names misp-dns blocked, and none for the
names it let through; what was noted when the server stops still reaches MISP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_package, unless_present

from .misp_stand_in import (
    MispStandIn,
    is_blocked,
    is_forwarded,
    key_file,
    misp_policy,
    no_server_tracebacks,  # noqa: F401  (an autouse fixture)
    start_misp_dns,
)
from .net import wait_until
from .openapi_check import SPEC
from .unbound import WWW, UnboundProcess
from .wire import ask_tcp, make_query

API_KEY = "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5oQ7s"
EVIL_UUID = "0b2d7d6a-3f0e-4c3e-9d55-6c4f3a1f8e01"
BAD_UUID = "0b2d7d6a-3f0e-4c3e-9d55-6c4f3a1f8e02"
INTERVAL = 10  # seconds, the shortest sightings_interval


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[MispStandIn]:
    """A MISP stand-in with two domain attributes, checking sightings against the spec."""
    require_package("PyYAML")
    attributes: list[dict[str, Any]] = [
        {"value": "evil.example", "uuid": EVIL_UUID},
        {"value": "bad.example", "uuid": BAD_UUID},
    ]
    workdir = tmp_path / "misp"
    workdir.mkdir()
    with MispStandIn(workdir, api_key=API_KEY, attributes=attributes, openapi=SPEC) as started:
        yield started


def _sighting_requests(stand_in: MispStandIn) -> list[dict[str, Any]]:
    return [r for r in stand_in.requests() if r["path"] == "/sightings/add"]


@unless_present(SPEC, "MISP's OpenAPI description in ../shared/data")
def test_a_blocked_query_becomes_a_sighting_at_misp(
    tmp_path: Path, unbound: UnboundProcess, stand_in: MispStandIn
) -> None:
    """Blocks of one attribute within an interval make one sighting (type 0, the configured
    source, the time of the first block) on that attribute; a forwarded name makes none;
    each request is one MISP's OpenAPI description allows; a block noted just before the
    server stops is sent as it stops."""
    policy = misp_policy(
        stand_in.url,
        key_file(tmp_path, API_KEY),
        update_interval="1h",
        sightings=True,
        sightings_source="misp-dns e2e",
        sightings_interval=f"{INTERVAL}s",
    )
    process = start_misp_dns(tmp_path / "server", unbound.address, [policy], port=free_port())
    wait_until(lambda: is_blocked(process, "evil.example"), 20, 0.1, "evil.example blocked")
    blocked_at = time.time()
    assert is_blocked(process, "www.evil.example", "evil.example")
    assert ask_tcp(make_query("evil.example", "AAAA"), process.address).rcode() == 3
    assert is_forwarded(process, WWW)

    wait_until(lambda: _sighting_requests(stand_in), INTERVAL + 10, 0.2, "a sighting sent")
    [request] = _sighting_requests(stand_in)
    assert (request["status"], request["problems"]) == (200, [])
    assert request["body"]["values"] == ["evil.example"]
    [sighting] = stand_in.sightings()
    attributes = {a["uuid"]: a for a in _attributes(stand_in)}
    assert sighting["attribute_id"] == attributes[EVIL_UUID]["id"]
    assert (sighting["type"], sighting["source"]) == ("0", "misp-dns e2e")
    assert blocked_at - 30 <= int(sighting["date_sighting"]) <= blocked_at + 1

    assert is_blocked(process, "bad.example")
    process.stop()
    sightings = stand_in.sightings()
    assert [s["attribute_id"] for s in sightings] == [
        attributes[EVIL_UUID]["id"],
        attributes[BAD_UUID]["id"],
    ]
    assert all(r["problems"] == [] for r in _sighting_requests(stand_in))
    assert API_KEY not in process.log_text()


def _attributes(stand_in: MispStandIn) -> list[dict[str, Any]]:
    """The stand-in's attributes (the control endpoint answers their count only, so they
    are read back through a search, as misp-dns reads them)."""
    import json
    import urllib.request

    request = urllib.request.Request(
        stand_in.url + "/attributes/restSearch",
        data=json.dumps({"returnFormat": "json"}).encode(),
        headers={"Authorization": API_KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        found: list[dict[str, Any]] = json.loads(response.read())["response"]["Attribute"]
    return found
