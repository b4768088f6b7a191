"""A MISP REST stand-in fast enough to serve a million attributes, for the benchmark.

    python bench/misp_standin.py --port PORT --count 1000000 --allowed 10000 --api-key KEY

Answers `POST /attributes/restSearch` the way `misp_dns.testing.FakeMisp` does (API key in
`Authorization`, `limit`/`page`, `Attribute.id` order, each attribute with its `Event` and,
with `includeEventTags`, the event's tags), but renders each page from a compact list of
names instead of a million stored dicts, so a page of 5,000 costs milliseconds rather than a
scan of every attribute. The values are `corpus.indicators(count, allowed_names(allowed))`,
`domain` attributes in events of 500, all changed just now.

Every request for page 1 starts a new round; from round 2 on, the last 1% of the attributes
carry new values (`r<round>-<old value>`), so a refresh replaces the snapshot. Each page
served is printed as `<unix time> page <n> round <r> attributes <k>`, and `ready` once
listening. Only the fields misp-dns reads are filtered on; this is not a MISP emulator (the
verified fake for tests is `FakeMisp`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import allowed_names, event_uuid, indicators

__all__ = ["CHANGED_SHARE", "StandIn", "changed_value", "main"]

PER_EVENT = 500
CHANGED_SHARE = 100  # from round 2 on, 1 attribute in 100 (the last ones) changes value
_TAGS = (
    '[{"id":"1","name":"tlp:white","colour":"#ffffff","numerical_value":null,'
    '"is_galaxy":false,"local":false}]'
)


def changed_value(value: str, round_number: int) -> str:
    """What an attribute among the changed ones holds in round `round_number` (>= 2)."""
    return f"r{round_number}-{value}"


class StandIn(Resource):
    """`POST /attributes/restSearch` over a fixed list of domain values."""

    isLeaf = True

    def __init__(self, values: list[str], api_key: str) -> None:
        super().__init__()
        self.values = values
        self.api_key = api_key.encode()
        self.round = 0
        self.stamp = str(int(time.time()))
        self._events: dict[int, str] = {}

    def _event(self, number: int) -> str:
        event = self._events.get(number)
        if event is None:
            event = self._events[number] = json.dumps(
                {
                    "org_id": "1",
                    "distribution": "3",
                    "id": str(number + 1),
                    "info": f"benchmark campaign {number}",
                    "orgc_id": "1",
                    "uuid": event_uuid(number),
                    "publish_timestamp": self.stamp,
                },
                separators=(",", ":"),
            )
        return event

    def _attribute(self, index: int, tags: bool) -> str:
        value = self.values[index]
        if self.round >= 2 and index >= len(self.values) - len(self.values) // CHANGED_SHARE:
            value = changed_value(value, self.round)
        event = index // PER_EVENT
        return (
            f'{{"id":"{index + 1}","event_id":"{event + 1}","object_id":"0",'
            f'"object_relation":null,"category":"Network activity","type":"domain",'
            f'"to_ids":true,"uuid":"{index:08x}-0000-4000-8000-{index:012x}",'
            f'"timestamp":"{self.stamp}","distribution":"5","sharing_group_id":"0",'
            f'"comment":"","deleted":false,"disable_correlation":false,"first_seen":null,'
            f'"last_seen":null,"value":"{value}","Event":{self._event(event)}'
            + (f',"Tag":{_TAGS}}}' if tags else "}")
        )

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.getHeader(b"authorization") != self.api_key:
            request.setResponseCode(403)
            return b'{"name":"Authentication failed.","message":"Authentication failed."}'
        if request.method != b"POST" or request.path != b"/attributes/restSearch":
            request.setResponseCode(404)
            return b'{"name":"Not Found","message":"Not Found"}'
        assert request.content is not None
        filters: dict[str, Any] = json.loads(request.content.read() or b"{}")
        filters = filters.get("request", filters)
        wanted = filters.get("type")
        types = {wanted} if isinstance(wanted, str) else set(wanted or ["domain"])
        limit = int(filters.get("limit") or len(self.values) or 1)
        page = max(1, int(filters.get("page") or 1))
        if page == 1:
            self.round += 1
        start = limit * (page - 1)
        indexes = range(start, min(start + limit, len(self.values))) if "domain" in types else ()
        tags = bool(filters.get("includeEventTags"))
        body = ",".join(self._attribute(i, tags) for i in indexes)
        print(f"{time.time():.3f} page {page} round {self.round} attributes {len(indexes)}")
        request.setHeader(b"X-Result-Count", str(len(indexes)).encode())
        return f'{{"response":{{"Attribute":[{body}]}}}}'.encode()


def main() -> None:
    """Build the values, listen on 127.0.0.1:PORT, print `ready`, serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--allowed", type=int, default=10_000)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    cast(Any, sys.stdout).reconfigure(line_buffering=True)
    values = indicators(args.count, allowed_names(args.allowed))
    reactor = cast(Any, _reactor)
    reactor.listenTCP(args.port, Site(StandIn(values, args.api_key)), interface="127.0.0.1")
    print(f"{time.time():.3f} ready {len(values)}")
    reactor.run()


if __name__ == "__main__":
    main()
