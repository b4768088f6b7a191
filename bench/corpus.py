"""The names the benchmark asks for and blocks, and the files it feeds them through.

- `allowed_names(n)`: real names (the Cloudflare top list in ../shared/data), answered by
  Unbound from local data and by misp-dns from its cache;
- `indicators(n, allowed)`: n distinct domain indicators, none of them an allowed name, a
  parent or a child of one: first the rest of the Cloudflare list, then made-up names shaped
  like feed entries (DGA-like labels, hyphenated combosquats, hosts under dynamic-DNS
  suffixes) under real top-level domains. The same arguments always give the same list, so a
  MISP stand-in process can rebuild it from the count alone;
- `write_feed`: a MISP feed directory (manifest.json + one <uuid>.json per event);
- `write_queries`: a dnsperf query file (`name TYPE` per line);
- `feed_domains()`, `sampled_queries` and `allowed_beside`: the real feed's domain
  indicators (../shared/data/misp-feed-infoblox), queries drawn at random from them, and
  allowed names that none of them blocks (the `independent` scenario).
"""

from __future__ import annotations

import json
import random
import re
import string
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "DATA",
    "REAL_FEED",
    "allowed_beside",
    "allowed_names",
    "blocked_queries",
    "event_uuid",
    "feed_domains",
    "indicators",
    "popular_names",
    "sampled_queries",
    "write_feed",
    "write_queries",
]

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "warninglists"
#: A real MISP feed (about 60,000 domain indicators from Infoblox's threat intel).
REAL_FEED = DATA.parent / "misp-feed-infoblox"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
# Feed names may hold service labels (`_dmarc.example.com`), which resolvers accept.
_FEED_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_FEED_NAME = re.compile(rf"^(?=.{{1,253}}$){_FEED_LABEL}(?:\.{_FEED_LABEL})+$")
# A byte-order mark left at a value's start, as such or mis-decoded (cp1252, Mac Roman),
# lower-cased: the real feed has two values starting with the Mac Roman form.
_BOM_FORMS = ("\ufeff", "\u00ef\u00bb\u00bf", "\u00f4\u00aa\u00f8")
_ALPHABET = string.ascii_lowercase + string.digits
_FALLBACK_TLDS = ["com", "net", "org", "info", "xyz", "top", "online", "site", "ru", "cn"]
_SUBDOMAIN_LABELS = ["www", "login", "cdn", "api", "mail.secure"]


def popular_names() -> list[str]:
    """The Cloudflare top list (lower case, well formed), or [] when the file is absent."""
    path = DATA / "cloudflare-top100k.json"
    if not path.exists():
        return []
    listed = json.loads(path.read_text())["list"]
    return list(dict.fromkeys(n.lower() for n in listed if _NAME.match(n.lower())))


def allowed_names(count: int) -> list[str]:
    """`count` names to answer normally: the top of the popular list, then made-up ones."""
    names = popular_names()[:count]
    names += [f"host{i}.allowed.bench.example" for i in range(len(names), count)]
    return names


def _ancestors(name: str) -> Iterable[str]:
    labels = name.split(".")
    return (".".join(labels[i:]) for i in range(1, len(labels)))


def indicators(count: int, allowed: Sequence[str], seed: int = 5) -> list[str]:
    """`count` distinct indicators that neither block nor are blocked by an allowed name."""
    allowed_set = set(allowed)
    above_allowed = {parent for name in allowed for parent in _ancestors(name)}
    popular = popular_names()
    chosen: dict[str, None] = {}
    for name in popular:
        if len(chosen) >= count:
            break
        if name in allowed_set or name in above_allowed:
            continue
        if any(parent in allowed_set for parent in _ancestors(name)):
            continue
        chosen[name] = None
    rng = random.Random(seed)
    tlds = sorted({n.rsplit(".", 1)[-1] for n in popular}) or _FALLBACK_TLDS
    words = sorted({n.split(".")[-2] for n in popular if n.count(".") >= 1}) or ["bank", "mail"]
    dynamic = _dynamic_suffixes()
    serial = 0
    while len(chosen) < count:
        serial += 1
        roll = rng.random()
        label = "".join(rng.choices(_ALPHABET, k=rng.randint(8, 16)))
        if roll < 0.6:
            name = f"{label}.{rng.choice(tlds)}"
        elif roll < 0.85:
            name = f"{rng.choice(words)}-{rng.choice(words)}{serial % 97}.{rng.choice(tlds)}"
        else:
            name = f"{label}.{rng.choice(dynamic)}"
        if name in above_allowed or not _NAME.match(name):
            continue
        chosen[name] = None
    return list(chosen)


def _dynamic_suffixes() -> list[str]:
    path = DATA / "dynamic-dns.json"
    if path.exists():
        suffixes = [s.strip(".").lower() for s in json.loads(path.read_text())["list"]]
        suffixes = [s for s in suffixes if _NAME.match(s)]
        if suffixes:
            return sorted(suffixes)
    return ["dyndns.example", "no-ip.example"]


def blocked_queries(names: Sequence[str], limit: int | None = None) -> list[str]:
    """Query names for blocked answers: every other indicator as is, the rest as a subdomain
    of it, in a shuffled order (the same every time)."""
    picked = list(names[:limit] if limit else names)
    random.Random(7).shuffle(picked)
    return [
        name if i % 2 == 0 else f"{_SUBDOMAIN_LABELS[i % len(_SUBDOMAIN_LABELS)]}.{name}"
        for i, name in enumerate(picked)
    ]


def write_queries(path: Path, names: Iterable[str], qtype: str = "A") -> Path:
    """A dnsperf data file with one `name qtype` line per name."""
    path.write_text("".join(f"{name} {qtype}\n" for name in names))
    return path


def event_uuid(index: int) -> str:
    """A stable UUID for event `index` of the generated feeds and the MISP stand-in."""
    return str(uuid.UUID(int=(0xBE7C << 112) | index, version=4))


def write_feed(directory: Path, names: Sequence[str], events: int = 100) -> Path:
    """A MISP feed directory holding `names` as `domain` attributes spread over `events`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    per_event = -(-len(names) // events)
    manifest = {}
    for number in range(events):
        chunk = names[number * per_event : (number + 1) * per_event]
        if not chunk:
            break
        ident = event_uuid(number)
        info = f"benchmark event {number}"
        manifest[ident] = {"info": info, "timestamp": now, "Orgc": {"name": "bench"}}
        attributes = [
            {
                "category": "Network activity",
                "comment": "",
                "deleted": False,
                "disable_correlation": False,
                "timestamp": str(now),
                "to_ids": True,
                "type": "domain",
                "uuid": str(uuid.UUID(int=(number << 64) | i, version=4)),
                "value": value,
            }
            for i, value in enumerate(chunk)
        ]
        event = {
            "uuid": ident,
            "info": info,
            "date": time.strftime("%Y-%m-%d"),
            "timestamp": str(now),
            "publish_timestamp": str(now),
            "published": True,
            "Attribute": attributes,
        }
        (directory / f"{ident}.json").write_text(json.dumps({"Event": event}))
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def feed_domains(feed: Path = REAL_FEED) -> list[str]:
    """The `domain` and `hostname` indicators of a MISP feed directory, lower case, well
    formed, each once, in file order: the names misp-dns blocks from it (a leading
    byte-order mark dropped, service labels such as `_dmarc` kept)."""
    names: dict[str, None] = {}
    for path in sorted(feed.glob("*.json")):
        if path.name == "manifest.json":
            continue
        event = json.loads(path.read_text())["Event"]
        for attribute in event.get("Attribute", []):
            if attribute.get("type") in ("domain", "hostname"):
                value = _without_bom(str(attribute["value"]).strip().lower()).rstrip(".")
                if _FEED_NAME.match(value):
                    names[value] = None
    return list(names)


def _without_bom(value: str) -> str:
    for bom in _BOM_FORMS:
        if value.startswith(bom):
            return value[len(bom) :].lstrip()
    return value


def sampled_queries(names: Sequence[str], count: int, seed: int = 17) -> list[str]:
    """`count` query names drawn at random (with repeats) from `names`, every other one
    asked as its `www.` subdomain: what many clients beaconing to many campaigns ask."""
    rng = random.Random(seed)
    drawn = rng.choices(names, k=count)
    return [name if i % 2 == 0 else f"www.{name}" for i, name in enumerate(drawn)]


def allowed_beside(count: int, blocked: Sequence[str]) -> list[str]:
    """`count` allowed names (the popular list's top) that no name in `blocked` blocks."""
    listed = set(blocked)
    names = [
        name
        for name in popular_names()
        if name not in listed and not any(parent in listed for parent in _ancestors(name))
    ]
    names = names[:count]
    names += [f"host{i}.allowed.bench.example" for i in range(len(names), count)]
    return names
