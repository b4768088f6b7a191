"""Verified fakes for tests, ours and third parties': MISP, a MISP feed, and one of each seam.

- `FakeMisp`: a `twisted.web` resource speaking MISP's `POST /attributes/restSearch` and
  `POST /sightings/add` as MISP 2.5 does (auth, filters, `limit`/`page`, JSON shapes, the
  sightings it records), with scripted faults. Use it in memory with
  `treq.testing.StubTreq(fake)`, or serve it for real with `twisted.web.server.Site(fake)`
  on 127.0.0.1.
- `FakeFeed`: a resource serving a MISP feed (`manifest.json` and `<uuid>.json`).
- `MemoryIndicatorSource`: an `IIndicatorSource` that hands out a list you control.
- `MemorySink`: an `ISink` that keeps every batch, and can fail or hold its stop.
- `ScriptedPolicy`: an `IPolicy` that decides from a dict of query name -> `Decision`.

They are verified: the tests of `misp_dns.intel.misp_client` and `misp_dns.intel.feed` run
against FakeMisp and FakeFeed, the exporter's tests against MemorySink, and
tests/test_testing.py pins the MISP behaviours they imitate and checks each seam's fake
with `verifyObject`. They import only `misp_dns.interfaces` from misp-dns.

    fake = FakeMisp(api_key="k" * 40)
    fake.add_values(["evil.example", "bad.example"])
    fake.script(Fault.server_error(), None, Fault.rate_limited(retry_after="5"))
    http = StubTreq(fake)
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid as uuid_module
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from misp_dns.intel.warninglist import Warninglist
from misp_dns.interfaces import (
    Decision,
    IIndicatorSource,
    IPolicy,
    ISink,
    PolicyQuery,
    RawIndicator,
)

__all__ = [
    "FakeFeed",
    "FakeMisp",
    "Fault",
    "MemoryIndicatorSource",
    "MemorySink",
    "RecordedRequest",
    "ScriptedPolicy",
]

_SEARCH_PATH = b"/attributes/restSearch"
_SIGHTINGS_PATH = b"/sightings/add"
_NO_PERMISSION = "You do not have permission to use this functionality."
_SIGHTING_FAILED = "Could not add the Sighting. Reason: "
_AUTH_FAILED = (
    "Authentication failed. Please make sure you pass the API key of an API enabled user "
    "along in the Authorization header."
)


@attrs.frozen
class Fault:
    """One scripted misbehaviour, used for one request instead of the normal answer."""

    status: int = 500
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    hang: bool = False

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """A 5xx with a MISP-style error body."""
        return cls(status, body=_error_body("Internal Error", "An internal error has occurred."))

    @classmethod
    def rate_limited(cls, retry_after: str | None = None, reset: str | None = None) -> Fault:
        """A 429, with `Retry-After` and/or MISP's `X-Rate-Limit-Reset` (seconds)."""
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if reset is not None:
            headers["X-Rate-Limit-Reset"] = reset
        body = _error_body("Rate limit exceeded.", "Rate limit exceeded.")
        return cls(429, headers=headers, body=body)

    @classmethod
    def garbage(cls, body: bytes = b"<html><body>Bad Gateway?</body></html>") -> Fault:
        """A 200 whose body is not what MISP sends (by default not JSON at all)."""
        return cls(200, headers={"Content-Type": "text/html"}, body=body)

    @classmethod
    def json(cls, payload: object, status: int = 200) -> Fault:
        """A reply with any JSON document."""
        return cls(status, body=json.dumps(payload).encode())

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Fault:
        """A redirect elsewhere (a client must not resend the API key there)."""
        return cls(status, headers={"Location": location}, body=b"")

    @classmethod
    def hanging(cls) -> Fault:
        """No answer at all: the request stays open until the client gives up."""
        return cls(hang=True)


@attrs.frozen
class RecordedRequest:
    """A request as the fake saw it; header names are lower case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None if it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _error_body(name: str, message: str, url: str = "/attributes/restSearch") -> bytes:
    return json.dumps({"name": name, "message": message, "url": url}).encode()


def _iso(moment: float | str | None) -> str | None:
    if moment is None or isinstance(moment, str):
        return moment
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds")


@attrs.define
class _Stored:
    id: int
    timestamp: int
    event_uuid: str
    tags: list[dict[str, Any]]
    attribute: dict[str, Any]
    decayed: bool | None = None


@attrs.frozen
class _EventMeta:
    """What MISP knows of an event but does not put in a restSearch attribute's `Event`."""

    published: bool
    threat_level_id: str


def _serve_faulted(request: Request, fault: Fault, hanging: list[Request]) -> bytes | int:
    if fault.hang:
        hanging.append(request)
        request.notifyFinish().addBoth(lambda _: hanging.remove(request))
        return NOT_DONE_YET
    request.setResponseCode(fault.status)
    if "Content-Type" not in fault.headers:
        request.setHeader(b"Content-Type", b"application/json")
    for name, value in fault.headers.items():
        request.setHeader(name.encode(), value.encode())
    return fault.body


def _record(request: Request) -> RecordedRequest:
    body = request.content.read() if request.content is not None else b""
    headers = {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in request.requestHeaders.getAllRawHeaders()
    }
    return RecordedRequest(
        method=(request.method or b"").decode("ascii", "replace"),
        path=(request.path or b"").decode("latin-1"),
        headers=headers,
        body=body,
    )


def _json_reply(request: Request, status: int, payload: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(payload).encode()


def _truthy(value: object) -> bool | None:
    """A MISP boolean filter: True, False, or None for "both/absent"."""
    if value is None or isinstance(value, list):
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true")


def _tag_terms(value: object) -> tuple[list[str], list[str], list[str]]:
    """MISP's `tags` filter as its (OR, NOT, AND) lists: an object with those keys, or a list
    (or a `&&`-joined string) whose `!`-prefixed entries are negated."""
    if isinstance(value, str):
        value = value.split("&&")
    if isinstance(value, Mapping):
        return tuple(  # type: ignore[return-value]
            [str(tag) for tag in _as_list(value.get(key))] for key in ("OR", "NOT", "AND")
        )
    wanted: list[str] = []
    negated: list[str] = []
    for tag in _as_list(value):
        text = str(tag)
        if text.startswith("!"):
            negated.append(text[1:])
        else:
            wanted.append(text)
    return wanted, negated, []


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _like(pattern: str) -> re.Pattern[str]:
    """SQL LIKE, as MISP matches tag names: `%` any text, `_` one character, any case."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE | re.DOTALL)


def _carries(names: list[str], pattern: re.Pattern[str]) -> bool:
    return any(pattern.fullmatch(name) for name in names)


_RELATIVE = re.compile(r"^(\d+)([dhms])$")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class FakeMisp(Resource):
    """An in-memory MISP answering `POST /attributes/restSearch` and `POST /sightings/add`
    (MISP 2.5.1 behaviour).

    - `Authorization` must equal `api_key`, else 403 with `{"name", "message", "url"}`.
    - An empty body answers 400; the filters may be wrapped as `{"request": {...}}`.
    - Filters: `type` (string or list), `to_ids`, `deleted` (default: not deleted; `[0, 1]`
      both), `timestamp` (`15d`/`12h`/`30m` relative to `now()`, or epoch; anything else
      matches nothing), `includeEventTags`, `published` (the event's flag), `threat_level_id`
      (one or a list, "1".."4"), and `tags`: `{"OR": [...], "NOT": [...], "AND": [...]}` or a
      list with `!`-negated entries; a tag is carried when the attribute or its event has it,
      and names match as SQL LIKE (`%`, `_`, any case), as MISP looks tags up.
    - `limit` + `page` (offset = limit * (page - 1)); the order is stable only with
      `"order": "Attribute.id asc"` (or `desc`), otherwise it changes from request to request.
      A page past the end is 200 with an empty list.
    - After the limit, as MISP does, so that a short page is not the end: `enforceWarninglist`
      removes the attributes on any of `warninglists` (the fake's enabled lists);
      `excludeDecayed` removes those whose every decay score is decayed (`add_attribute(...,
      decayed=True)`); values in `after_limit_filter` are removed too.
    - `includeDecayScore` (implied by `excludeDecayed`, whatever its value, as in MISP) gives
      each attribute a `decay_score` list (empty when no model scored it) and its event's tags.
    - Filters named in `ignored_filters` are ignored, as an older or misconfigured MISP would.
    - The embedded `Event` holds what MISP puts there (`id`, `uuid`, `info`, orgs,
      `publish_timestamp`), not the published flag or the threat level.
    - `script(...)` queues `Fault`s (None = answer normally) for the next requests.
    - `requests` records every request; `hanging` holds the requests left unanswered.

    `/sightings/add` (see `_add_sightings`) takes `{"values": [...], "type": "0", "source":
    ..., "timestamp": ...}` (or `value`, or an attribute's `id`/`uuid`; optionally wrapped in
    `request` or `Sighting`), and records one sighting in `sightings` for every attribute
    holding one of the values, as MISP does: compared without case or trailing spaces, both
    halves of a `domain|ip`, deleted attributes too. With `can_sight = False` the key's role
    lacks `perm_sighting` and gets MISP's 403.
    """

    isLeaf = True

    def __init__(self, api_key: str = "fake-misp-api-key", *, now: Callable[[], float] = time.time):
        super().__init__()
        self.api_key = api_key
        self.now = now
        self.requests: list[RecordedRequest] = []
        self.hanging: list[Request] = []
        self.after_limit_filter: set[str] = set()
        self.warninglists: list[Warninglist] = []
        self.ignored_filters: set[str] = set()
        self.can_sight = True
        self.sightings: list[dict[str, str]] = []
        self._faults: deque[Fault | None] = deque()
        self._stored: list[_Stored] = []
        self._events: dict[str, dict[str, Any]] = {}
        self._event_tags: dict[str, list[dict[str, Any]]] = {}
        self._event_meta: dict[str, _EventMeta] = {}

    # -- loading --------------------------------------------------------------------------

    def add_event(
        self,
        info: str = "misp-dns test event",
        *,
        uuid: str | None = None,
        tags: Iterable[str] = ("tlp:white",),
        publish_timestamp: int | None = None,
        published: bool = True,
        threat_level_id: int | str = 4,
    ) -> dict[str, Any]:
        """Add an event (the small form restSearch embeds) and return it."""
        event_uuid = uuid or str(uuid_module.uuid4())
        event = {
            "org_id": "1",
            "distribution": "3",
            "id": str(len(self._events) + 1),
            "info": info,
            "orgc_id": "1",
            "uuid": event_uuid,
            "publish_timestamp": str(publish_timestamp or int(self.now())),
        }
        self._events[event_uuid] = event
        self._event_tags[event_uuid] = [
            _tag(name, i + 1, inherited=True) for i, name in enumerate(tags)
        ]
        self._event_meta[event_uuid] = _EventMeta(published, str(threat_level_id))
        return event

    def add_attribute(
        self,
        value: str,
        type: str = "domain",
        *,
        event: Mapping[str, Any] | None = None,
        to_ids: bool = True,
        deleted: bool = False,
        timestamp: int | None = None,
        first_seen: float | str | None = None,
        last_seen: float | str | None = None,
        uuid: str | None = None,
        category: str = "Network activity",
        tags: Iterable[str] = (),
        decayed: bool | None = None,
    ) -> dict[str, Any]:
        """Add one attribute (to `event`, or to a default event) and return its JSON form.

        `decayed` is what MISP's decaying models say of it: None (no model scores it), True
        (every model finds it decayed) or False.
        """
        if event is None:
            event = self._default_event()
        ident = len(self._stored) + 1
        stamp = int(self.now()) if timestamp is None else int(timestamp)
        attribute = {
            "id": str(ident),
            "event_id": event["id"],
            "object_id": "0",
            "object_relation": None,
            "category": category,
            "type": type,
            "to_ids": to_ids,
            "uuid": uuid or str(uuid_module.uuid4()),
            "timestamp": str(stamp),
            "distribution": "5",
            "sharing_group_id": "0",
            "comment": "",
            "deleted": deleted,
            "disable_correlation": False,
            "first_seen": _iso(first_seen),
            "last_seen": _iso(last_seen),
            "value": value,
        }
        own_tags = [_tag(name, 100 + i) for i, name in enumerate(tags)]
        self._stored.append(_Stored(ident, stamp, event["uuid"], own_tags, attribute, decayed))
        return attribute

    def add_values(self, values: Iterable[str], type: str = "domain", **options: Any) -> int:
        """Add one attribute per value, all alike otherwise; return how many."""
        count = 0
        for value in values:
            self.add_attribute(value, type, **options)
            count += 1
        return count

    def load_feed(self, directory: str | Path) -> int:
        """Add every event file of a MISP feed directory as events and attributes.

        Event files the manifest lists but the directory lacks are skipped. Returns the
        number of attributes added (all types, as MISP would hold them).
        """
        folder = Path(directory)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        added = 0
        for event_uuid in manifest:
            path = folder / f"{event_uuid}.json"
            if not path.exists():
                continue
            raw = json.loads(path.read_text(encoding="utf-8"))["Event"]
            event = self.add_event(
                raw.get("info", ""),
                uuid=raw.get("uuid", event_uuid),
                tags=[tag["name"] for tag in raw.get("Tag", [])],
                publish_timestamp=int(raw.get("publish_timestamp") or raw.get("timestamp") or 0),
                published=bool(raw.get("published", True)),
                threat_level_id=raw.get("threat_level_id") or 4,
            )
            attributes = list(raw.get("Attribute", []))
            for obj in raw.get("Object", []):
                attributes.extend(obj.get("Attribute", []))
            for item in attributes:
                self.add_attribute(
                    item["value"],
                    item["type"],
                    event=event,
                    to_ids=bool(item.get("to_ids", True)),
                    deleted=bool(item.get("deleted", False)),
                    timestamp=int(item.get("timestamp") or 0),
                    first_seen=item.get("first_seen"),
                    last_seen=item.get("last_seen"),
                    uuid=item.get("uuid"),
                    category=item.get("category", "Network activity"),
                    tags=[tag["name"] for tag in item.get("Tag", [])],
                )
                added += 1
        return added

    @classmethod
    def from_feed(
        cls, directory: str | Path, api_key: str = "fake-misp-api-key", **options: Any
    ) -> FakeMisp:
        """A fake MISP holding the events of a feed directory (see `load_feed`)."""
        fake = cls(api_key, **options)
        fake.load_feed(directory)
        return fake

    def script(self, *faults: Fault | None) -> None:
        """Queue misbehaviours for the next requests, in order; None answers normally."""
        self._faults.extend(faults)

    @property
    def attributes(self) -> list[dict[str, Any]]:
        """Every stored attribute, as MISP holds it (before any filter)."""
        return [stored.attribute for stored in self._stored]

    def _default_event(self) -> dict[str, Any]:
        if not self._events:
            self.add_event()
        return next(iter(self._events.values()))

    # -- serving --------------------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        recorded = _record(request)
        self.requests.append(recorded)
        if self._faults:
            fault = self._faults.popleft()
            if fault is not None:
                return _serve_faulted(request, fault, self.hanging)
        if request.path not in (_SEARCH_PATH, _SIGHTINGS_PATH):
            message = f"Could not find {recorded.path}"
            return _json_reply(
                request, 404, {"name": "Not Found", "message": message, "url": recorded.path}
            )
        if recorded.headers.get("authorization") != self.api_key:
            return _json_reply(
                request,
                403,
                {"name": _AUTH_FAILED, "message": _AUTH_FAILED, "url": recorded.path},
            )
        if request.path == _SIGHTINGS_PATH and not self.can_sight:
            payload = {"name": _NO_PERMISSION, "message": _NO_PERMISSION, "url": recorded.path}
            return _json_reply(request, 403, payload)
        if recorded.method != "POST":
            return _json_reply(request, 405, _error_json("Method Not Allowed", "Use POST."))
        if request.path == _SIGHTINGS_PATH:
            return self._add_sightings(request, recorded)
        if not recorded.body.strip():
            message = "Either specify the search terms in the url, or POST a json array / object."
            return _json_reply(request, 400, _error_json(message, message))
        filters = recorded.json()
        if not isinstance(filters, dict):
            return _json_reply(request, 400, _error_json("Invalid JSON", "Invalid JSON body."))
        if isinstance(filters.get("request"), dict):
            filters = filters["request"]
        if filters.get("returnFormat", "json") != "json":
            message = "This fake speaks returnFormat json only."
            return _json_reply(request, 400, _error_json(message, message))
        page = self._search(filters, len(self.requests))
        request.setHeader(b"X-Result-Count", str(len(page)).encode())
        return _json_reply(request, 200, {"response": {"Attribute": page}})

    def _add_sightings(self, request: Request, recorded: RecordedRequest) -> bytes:
        """`POST /sightings/add` as MISP's SightingsController::add and
        Sighting::saveSightings answer a REST client.

        A refusal after authentication is a 200 whose body is only `{"message": "Could not
        add the Sighting. Reason: ..."}`; a success is the last sighting saved, as
        `{"Sighting": {...}}`.
        """
        data: Any = recorded.json() if recorded.body.strip() else {}
        if not isinstance(data, dict):
            return _json_reply(request, 400, _error_json("Invalid JSON", "Invalid JSON body."))
        for wrapper in ("request", "Sighting"):
            if isinstance(data.get(wrapper), dict):
                data = data[wrapper]
        if "value" in data:
            data = dict(data, values=[data["value"]])
        kind = data.get("type", "0")
        if str(kind).strip() not in ("0", "1", "2") or isinstance(kind, bool):
            return self._sighting_refused(
                request, "Invalid type, please change it before you POST 1000000 sightings."
            )
        ident = data.get("uuid") or data.get("id")
        values = data.get("values") or []
        if not ident and not values:
            return self._sighting_refused(request, "No valid attributes found.")
        if ident:
            found = [
                s for s in self._stored if str(ident) in (s.attribute["id"], s.attribute["uuid"])
            ]
        else:
            found = self._holding(values if isinstance(values, list) else [values])
            filters = data.get("filters")
            if filters:
                kept = {id(s) for s in self._filtered(filters)}
                uuids = filters.get("uuid")
                if uuids is not None:
                    wanted = {uuids} if isinstance(uuids, str) else set(uuids)
                    kept &= {id(s) for s in self._stored if s.attribute["uuid"] in wanted}
                found = [s for s in found if id(s) in kept]
        if not found:
            return self._sighting_refused(
                request, "No valid attributes found that match the criteria."
            )
        stamp = data.get("timestamp")
        when = str(stamp) if stamp not in (None, "") else str(int(self.now()))
        source = str(data.get("source") or "").strip()
        for stored in found:
            self.sightings.append(
                {
                    "id": str(len(self.sightings) + 1),
                    "attribute_id": stored.attribute["id"],
                    "event_id": stored.attribute["event_id"],
                    "org_id": "1",
                    "date_sighting": when,
                    "uuid": str(uuid_module.uuid4()),
                    "source": source,
                    "type": str(kind).strip(),
                }
            )
        return _json_reply(request, 200, {"Sighting": dict(self.sightings[-1])})

    def _holding(self, values: list[Any]) -> list[_Stored]:
        """The attributes whose value (either half of a composite) is one of `values`,
        compared as MySQL's default collation does: without case or trailing spaces."""
        wanted = {str(value).rstrip(" ").lower() for value in values}
        found = []
        for stored in self._stored:
            value = stored.attribute["value"]
            halves = value.split("|", 1) if "|" in stored.attribute["type"] else [value]
            if any(half.rstrip(" ").lower() in wanted for half in halves):
                found.append(stored)
        return found

    @staticmethod
    def _sighting_refused(request: Request, reason: str) -> bytes:
        return _json_reply(request, 200, {"message": _SIGHTING_FAILED + reason})

    def _search(self, filters: Mapping[str, Any], serial: int) -> list[dict[str, Any]]:
        filters = {k: v for k, v in filters.items() if k not in self.ignored_filters}
        found = self._filtered(filters)
        order = str(filters.get("order") or "").strip().lower()
        if order in ("attribute.id asc", "attribute.id"):
            found.sort(key=lambda stored: stored.id)
        elif order == "attribute.id desc":
            found.sort(key=lambda stored: -stored.id)
        else:
            random.Random(serial).shuffle(found)  # no order asked: none promised
        limit = _int_or_none(filters.get("limit"))
        if limit:
            page = max(1, _int_or_none(filters.get("page")) or 1)
            found = found[limit * (page - 1) : limit * page]
        found = [s for s in found if not self._removed_after_limit(s, filters)]
        scored = bool(_truthy(filters.get("includeDecayScore"))) or "excludeDecayed" in filters
        with_event_tags = scored or bool(_truthy(filters.get("includeEventTags")))
        return [self._render_attribute(stored, with_event_tags, scored) for stored in found]

    def _removed_after_limit(self, stored: _Stored, filters: Mapping[str, Any]) -> bool:
        """What MISP drops after its SQL limit: warninglisted and decayed attributes."""
        attribute = stored.attribute
        if attribute["value"] in self.after_limit_filter:
            return True
        if _truthy(filters.get("enforceWarninglist")) and any(
            warninglist.match(attribute["type"], attribute["value"]) is not None
            for warninglist in self.warninglists
        ):
            return True
        return bool(_truthy(filters.get("excludeDecayed"))) and stored.decayed is True

    def _filtered(self, filters: Mapping[str, Any]) -> list[_Stored]:
        found = self._stored
        types = filters.get("type")
        if types is not None:
            wanted = {types} if isinstance(types, str) else set(types)
            found = [s for s in found if s.attribute["type"] in wanted]
        to_ids = _truthy(filters.get("to_ids"))
        if to_ids is not None:
            found = [s for s in found if s.attribute["to_ids"] == to_ids]
        deleted = filters.get("deleted", False)
        if not isinstance(deleted, list):
            hidden = bool(_truthy(deleted))
            found = [s for s in found if s.attribute["deleted"] == hidden]
        if "timestamp" in filters:
            since = self._since(filters["timestamp"])
            found = [] if since is None else [s for s in found if s.timestamp >= since]
        published = _truthy(filters.get("published"))
        if published is not None:
            found = [s for s in found if self._event_meta[s.event_uuid].published == published]
        levels = {str(level) for level in _as_list(filters.get("threat_level_id"))}
        if levels:
            found = [s for s in found if self._event_meta[s.event_uuid].threat_level_id in levels]
        if filters.get("tags"):
            found = self._tagged(found, filters["tags"])
        return list(found)

    def _tagged(self, found: list[_Stored], value: object) -> list[_Stored]:
        wanted, negated, required = ([_like(tag) for tag in terms] for terms in _tag_terms(value))
        kept = []
        for stored in found:
            names = [t["name"] for t in (*self._event_tags[stored.event_uuid], *stored.tags)]
            if wanted and not any(_carries(names, tag) for tag in wanted):
                continue
            if any(_carries(names, tag) for tag in negated):
                continue
            if all(_carries(names, tag) for tag in required):
                kept.append(stored)
        return kept

    def _since(self, value: object) -> int | None:
        """A MISP time filter as an epoch; None when MISP would match nothing."""
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not isinstance(value, str):
            return None
        text = value.strip()
        if text.isdigit():
            return int(text)
        match = _RELATIVE.match(text)
        if not match:
            return None
        return int(self.now()) - int(match.group(1)) * _UNIT[match.group(2)]

    def _render_attribute(
        self, stored: _Stored, with_event_tags: bool, scored: bool = False
    ) -> dict[str, Any]:
        out = dict(stored.attribute)
        out["Event"] = dict(self._events[stored.event_uuid])
        tags = list(stored.tags)
        if with_event_tags:
            tags = [*self._event_tags[stored.event_uuid], *tags]
        if tags:
            out["Tag"] = [dict(tag) for tag in tags]
        if scored:
            out["decay_score"] = _decay_score(stored.decayed)
        return out


def _decay_score(decayed: bool | None) -> list[dict[str, Any]]:
    """MISP's `decay_score` list: one score per model that applies, none when none does."""
    if decayed is None:
        return []
    model = {"id": "1", "name": "NIDS Simple Decaying Model"}
    score = 0.0 if decayed else 87.5
    return [{"score": score, "base_score": 100.0, "decayed": decayed, "DecayingModel": model}]


def _tag(name: str, ident: int, inherited: bool = False) -> dict[str, Any]:
    tag: dict[str, Any] = {
        "id": str(ident),
        "name": name,
        "colour": "#ffffff",
        "numerical_value": None,
        "is_galaxy": False,
        "local": False,
    }
    if inherited:  # an event's tag on one of its attributes (includeEventTags)
        tag["inherited"] = True
    return tag


def _error_json(name: str, message: str) -> dict[str, str]:
    return {"name": name, "message": message, "url": "/attributes/restSearch"}


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


class FakeFeed(Resource):
    """A web server holding a MISP feed: `GET .../manifest.json` and `.../<uuid>.json`.

    Files are found by the last segment of the path, so any base URL works. `files` maps a
    file name to its bytes; change it (or use `put_event`) to simulate a feed update.
    Unknown names answer 404. `script(...)` and `requests` work as in `FakeMisp`.
    """

    isLeaf = True

    def __init__(self, files: Mapping[str, bytes] | None = None) -> None:
        super().__init__()
        self.files: dict[str, bytes] = dict(files or {})
        self.requests: list[RecordedRequest] = []
        self.hanging: list[Request] = []
        self._faults: deque[Fault | None] = deque()

    @classmethod
    def from_directory(cls, directory: str | Path) -> FakeFeed:
        """Serve the `.json` files of a feed directory."""
        folder = Path(directory)
        return cls({path.name: path.read_bytes() for path in folder.glob("*.json")})

    def script(self, *faults: Fault | None) -> None:
        """Queue misbehaviours for the next requests, in order; None answers normally."""
        self._faults.extend(faults)

    def put_event(self, event: Mapping[str, Any], timestamp: int) -> None:
        """Add or replace an event (`{"uuid", "info", "Attribute": [...]}`) in the manifest."""
        manifest = json.loads(self.files.get("manifest.json", b"{}"))
        manifest[event["uuid"]] = {"info": event.get("info", ""), "timestamp": timestamp}
        self.files["manifest.json"] = json.dumps(manifest).encode()
        body = dict(event, timestamp=str(timestamp))
        self.files[f"{event['uuid']}.json"] = json.dumps({"Event": body}).encode()

    def fetched(self) -> list[str]:
        """The file names requested so far, in order."""
        return [request.path.rsplit("/", 1)[-1] for request in self.requests]

    def render_GET(self, request: Request) -> bytes | int:
        recorded = _record(request)
        self.requests.append(recorded)
        if self._faults:
            fault = self._faults.popleft()
            if fault is not None:
                return _serve_faulted(request, fault, self.hanging)
        name = recorded.path.rsplit("/", 1)[-1]
        if name not in self.files:
            request.setResponseCode(404)
            return b"Not Found"
        request.setHeader(b"Content-Type", b"application/json")
        return self.files[name]


@implementer(IIndicatorSource)
@attrs.define
class MemoryIndicatorSource:
    """An `IIndicatorSource` serving `indicators`, as set by the test.

    Set `error` to make fetches fail with it; set `hold = True` to make fetches wait until
    `release()` (to test that an updater never overlaps two fetches). `fetches` counts calls.
    """

    indicators: list[RawIndicator] = attrs.field(factory=list)
    error: Exception | None = None
    hold: bool = False
    fetches: int = 0
    page_size: int = 2
    _waiting: list[Deferred[list[RawIndicator]]] = attrs.field(factory=list, alias="_waiting")

    def fetch(self) -> Deferred[list[RawIndicator]]:
        """Fire with a copy of `indicators` (now, or at `release()` when holding)."""
        self.fetches += 1
        if self.hold:
            waiting: Deferred[list[RawIndicator]] = Deferred()
            self._waiting.append(waiting)
            return waiting
        return self._answer()

    def fetch_pages(self, consume: Any) -> Deferred[None]:
        """`fetch`, handing the indicators to `consume` in pages of `page_size`."""

        async def pages(indicators: list[RawIndicator]) -> None:
            for start in range(0, len(indicators), self.page_size):
                consumed = consume(indicators[start : start + self.page_size])
                if isinstance(consumed, Deferred):
                    await consumed

        return self.fetch().addCallback(lambda found: Deferred.fromCoroutine(pages(found)))

    @property
    def pending(self) -> int:
        """Fetches waiting for `release()`."""
        return len(self._waiting)

    def release(self) -> None:
        """Answer every held fetch with the current `indicators` or `error`."""
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            self._answer().chainDeferred(deferred)

    def _answer(self) -> Deferred[list[RawIndicator]]:
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(list(self.indicators))


@implementer(ISink)
class MemorySink:
    """An `ISink` that records every batch; `fail` makes `write` raise; `hold_stop` delays `stop`.

    It lets exporter behaviour (batching, filtering, flushing on stop, isolation of a
    failing sink) be checked without files or sockets:

        sink = MemorySink()
        exporter = ExporterService([SinkSlot("memory", sink)], clock)
        ...
        assert [r["responseType"] for r in sink.records] == ["Blocked"]
    """

    def __init__(self, *, fail: bool = False, hold_stop: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.started = False
        self.stopped = False
        self.fail = fail
        self.dropped = 0
        self._hold_stop = hold_stop
        self.stopping: Deferred[None] | None = None

    @property
    def records(self) -> list[Any]:
        """Every record received, in order."""
        return [record for batch in self.batches for record in batch]

    def start(self) -> None:
        """Note that the sink was started."""
        self.started = True

    def write(self, records: Sequence[Any]) -> None:
        """Keep the batch (a copy), or raise if told to fail (as a real sink must not)."""
        if self.fail:
            raise RuntimeError("MemorySink told to fail")
        self.batches.append(list(records))

    def stop(self) -> Deferred[None] | None:
        """Stop now, or, with `hold_stop`, when the test fires `self.stopping`."""
        self.stopped = True
        if self._hold_stop:
            self.stopping = Deferred()
            return self.stopping
        return None


@implementer(IPolicy)
@attrs.define
class ScriptedPolicy:
    """An `IPolicy` deciding from `decisions` (query name -> `Decision`); None for the rest.

    Names are looked up as a policy receives them: lower case, without the trailing dot.
    `asked` lists every query it was asked about, in order. With `ready = False`,
    `whenReady()` waits until `make_ready()`.

        policy = ScriptedPolicy({"evil.example": Decision(Action.BLOCK, "scripted")})
    """

    decisions: dict[str, Decision] = attrs.field(factory=dict)
    name: str = "scripted"
    ready: bool = True
    service: None = attrs.field(default=None, init=False)
    asked: list[PolicyQuery] = attrs.field(factory=list, init=False)
    _waiting: list[Deferred[None]] = attrs.field(factory=list, init=False)

    def decide(self, query: PolicyQuery) -> Decision | None:
        """The scripted decision for `query.name`, or None (no opinion)."""
        self.asked.append(query)
        return self.decisions.get(query.name)

    def whenReady(self) -> Deferred[None]:
        """Fires at once when `ready`, else at `make_ready()`."""
        if self.ready:
            return defer.succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def make_ready(self) -> None:
        """Become ready, firing every waiting `whenReady()`."""
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(None)
