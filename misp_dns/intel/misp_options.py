"""The options of the `misp` and `misp-feed` policy tables.

    [[policy]]
    type = "misp"
    server_url = "https://misp.example.com"   # required
    api_key_file = "/etc/misp-dns/misp.key"   # or api_key = "..."; one is required;
                                              # $VARIABLES and ~ are expanded
    enable_blocking = true                    # false: monitor mode, nothing is blocked
    disable_tls_validation = false            # true: any certificate (logs a warning)
    update_interval = "2h"                    # how often indicators are fetched
    max_ioc_age = "15d"                       # older attributes are not blocked
    blocking_answer_ttl = 30                  # 30..86400 seconds
    allow_txt_blocking_report = true          # TXT queries get the report as an answer
    pagination_limit = 5000                   # attributes per page, 1..100000
    add_extended_dns_error = true             # EDE 15 (Blocked) when the query had EDNS
    block_response_ips = false                # true: block answers holding a listed address
    request_timeout = "60s"                   # one HTTP answer must be complete within it
    # which attributes MISP is asked for (`misp` only; see misp_dns.intel.misp_filters):
    tags = []                                 # only those it or its event has one of
    exclude_tags = []                         # none it or its event has
    enforce_warninglists = true               # MISP leaves out what its warninglists hold
    published_only = true                     # only attributes of published events
    threat_levels = [1, 2, 3, 4]              # 1 high, 2 medium, 3 low, 4 undefined
    exclude_decayed = false                   # MISP leaves out what its decaying models
                                              # find decayed
    # blocks posted back to MISP (`misp` only; see misp_dns.intel.sightings):
    sightings = false                         # true: blocks go back to MISP as sightings
    sightings_source = "misp-dns"             # the sightings' source in MISP
    sightings_interval = "10m"                # one sighting per attribute per interval, 10s..1d
    sightings_max_pending = 10000             # attributes waiting to be sent, at most

    [[policy]]
    type = "misp-feed"
    url = "etc/sample-feed"                   # a directory or http(s) URL with manifest.json
    warninglists = []                         # MISP warninglist files; indicators on them
                                              # are dropped as the feed is read
    # plus the blocking keys above (enable_blocking ... request_timeout)

`__init__` checks values only; the key file is read by `MispOptions.read_api_key()` and the
warninglists by `MispFeedOptions.read_warninglists()` when the policy is built, so
`--check-config` reports a missing or unreadable file too.
`security_warnings()` names what works but exposes the key: a key file or a config holding
the key inline that other users can read, and an `http://` server URL; `--check-config`
prints these and the server logs them at start. `MispFeedOptions.deployment_problems()`
names a feed directory that is missing or holds no manifest: `--check-config` fails on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.logger import Logger

from misp_dns.intel.misp_filters import THREAT_LEVELS, MispFilters
from misp_dns.intel.warninglist import Warninglist, WarninglistError, load_warninglist
from misp_dns.values import BlockingOptions, ConfigError, Duration, FieldError, between

__all__ = ["BlockingOptions", "MispFeedOptions", "MispOptions", "readable_by_others"]

_log = Logger()


_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def readable_by_others(path: str | os.PathLike[str]) -> int | None:
    """The permission bits of `path` when its group or everyone may read it, else None
    (also when it cannot be looked at)."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        return None
    return mode if mode & 0o044 else None


def _http_url(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FieldError(
            attribute.name, f"expected an http:// or https:// URL such as {_EXAMPLE}, got {value!r}"
        )
    if parts.username or parts.password:
        raise FieldError(attribute.name, "must not hold a user name or password")


_EXAMPLE = "https://misp.example.com"


def _not_empty(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise FieldError(attribute.name, "must not be empty")


def _tags(_instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for tag in value:
        if not tag.strip():
            raise FieldError(attribute.name, "holds an empty tag name")
        if tag.strip().isdigit():
            raise FieldError(
                attribute.name, f"{tag!r}: MISP reads a number as a tag id, give the tag's name"
            )
        if tag.startswith("!"):
            raise FieldError(
                attribute.name, f"{tag!r}: write the tags to leave out in exclude_tags, without !"
            )


def _threat_levels(
    _instance: object, attribute: attrs.Attribute[Any], value: tuple[int, ...]
) -> None:
    if not value:
        raise FieldError(attribute.name, "must name at least one level (1, 2, 3 or 4)")
    for level in value:
        if level not in THREAT_LEVELS:
            raise FieldError(
                attribute.name,
                f"{level!r} is not a MISP threat level: 1 high, 2 medium, 3 low, 4 undefined",
            )


def _paths(_instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for index, path in enumerate(value):
        if not path.strip():
            raise FieldError(attribute.name, f"entry {index} is an empty path")


def _sighting_source(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    # MISP keeps a sighting's source, trimmed, in a 255-character column.
    if not value.strip() or len(value.strip()) > 255 or not value.isprintable():
        raise FieldError(
            attribute.name, f"expected 1 to 255 printable characters, got {value[:60]!r}"
        )


@attrs.frozen(kw_only=True)
class MispOptions(BlockingOptions):
    """`[[policy]] type = "misp"`: indicators from a MISP server's REST API.

    With `sightings`, every block (and in monitor mode every query that would have been
    blocked) is posted back to MISP as a sighting of its indicator; see
    `misp_dns.intel.sightings`.
    """

    server_url: str = attrs.field(validator=_http_url)
    api_key: str = attrs.field(default="", repr=False)
    api_key_file: str = ""
    pagination_limit: int = attrs.field(default=5000, validator=between(1, 100_000))
    tags: tuple[str, ...] = attrs.field(default=(), validator=_tags)
    exclude_tags: tuple[str, ...] = attrs.field(default=(), validator=_tags)
    enforce_warninglists: bool = True
    published_only: bool = True
    threat_levels: tuple[int, ...] = attrs.field(default=THREAT_LEVELS, validator=_threat_levels)
    exclude_decayed: bool = False
    sightings: bool = False
    sightings_source: str = attrs.field(default="misp-dns", validator=_sighting_source)
    sightings_interval: Duration = attrs.field(default=Duration(600), validator=between(10, 86400))
    sightings_max_pending: int = attrs.field(default=10_000, validator=between(1, 10_000_000))

    def __attrs_post_init__(self) -> None:
        if bool(self.api_key.strip()) == bool(self.api_key_file.strip()):
            raise FieldError(
                "api_key" if self.api_key.strip() else "api_key_file",
                "give exactly one of api_key and api_key_file",
            )
        wanted = {tag.strip().casefold() for tag in self.tags}
        for tag in self.exclude_tags:
            if tag.strip().casefold() in wanted:
                raise FieldError("exclude_tags", f"{tag!r} is in tags too")

    def filters(self) -> MispFilters:
        """What MISP is asked to leave out, and checked again on what it sends."""
        return MispFilters(
            tags=self.tags,
            exclude_tags=self.exclude_tags,
            enforce_warninglists=self.enforce_warninglists,
            published_only=self.published_only,
            threat_levels=self.threat_levels,
            exclude_decayed=self.exclude_decayed,
        )

    def read_api_key(self) -> str:
        """The API key, read from `api_key_file` if given (whitespace stripped).

        Raises `ConfigError` naming the file (never its content) if it cannot be used.
        """
        if not self.api_key_file.strip():
            key = self.api_key.strip()
            where = "api_key"
        else:
            path = self.key_file_path()
            where = f"api_key_file {str(path)!r}"
            unset = _VARIABLE.search(str(path)) if _VARIABLE.search(self.api_key_file) else None
            if unset is not None:
                raise ConfigError(
                    [
                        f"{where}: the environment variable {unset.group(1).strip('{}')} is not"
                        " set (systemd sets CREDENTIALS_DIRECTORY for a unit with"
                        " LoadCredential=)"
                    ]
                )
            try:
                key = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
            except UnicodeDecodeError:
                raise ConfigError([f"{where}: not a text file"]) from None
        if not key:
            raise ConfigError([f"{where}: the API key is empty"])
        if not all(" " < char < "\x7f" for char in key):
            raise ConfigError(
                [f"{where}: the API key holds spaces or characters an HTTP header cannot carry"]
            )
        return key

    def key_file_path(self) -> Path:
        """`api_key_file` with environment variables and `~` expanded.

        `${CREDENTIALS_DIRECTORY}/misp.key` is the key systemd hands to the service with
        `LoadCredential=misp.key:...` (see contrib/systemd/README.md).
        """
        return Path(os.path.expandvars(self.api_key_file.strip())).expanduser()

    def security_warnings(self, config_path: str | None) -> list[str]:
        """What works but exposes the key, one line each, starting with the key it is about.

        `config_path` is the file this table was read from, if any.
        """
        found = []
        if urlsplit(self.server_url).scheme == "http":
            found.append(
                "server_url: http:// sends the API key and the indicators unencrypted; use https://"
            )
        if self.api_key.strip():
            mode = None if config_path is None else readable_by_others(config_path)
            if mode is not None:
                found.append(
                    f"api_key: the MISP API key is written in {config_path!r}, which other"
                    f" users can read (mode {mode:04o}); chmod 600 it, or move the key to an"
                    " api_key_file of mode 600"
                )
        else:
            path = self.key_file_path()
            mode = readable_by_others(path)
            if mode is not None:
                found.append(
                    f"api_key_file {str(path)!r} can be read by other users than its owner"
                    f" (mode {mode:04o}); the MISP API key in it should not (chmod 600)"
                )
        return found


@attrs.frozen(kw_only=True)
class MispFeedOptions(BlockingOptions):
    """`[[policy]] type = "misp-feed"`: indicators from a MISP feed (a directory or URL)."""

    url: str = attrs.field(validator=_not_empty)
    warninglists: tuple[str, ...] = attrs.field(default=(), validator=_paths)

    def read_warninglists(self) -> tuple[Warninglist, ...]:
        """The `warninglists` files, read and ready to match.

        Raises `ConfigError` with one line per file that cannot be used. Logs, per list, the
        entries left out (networks or patterns that are not valid).
        """
        lists: list[Warninglist] = []
        problems: list[str] = []
        for index, path in enumerate(self.warninglists):
            try:
                found = load_warninglist(path)
            except WarninglistError as exc:
                problems.append(f"warninglists[{index}]: {exc}")
                continue
            if found.skipped:
                _log.warn(
                    "warninglist {path} ({name}): {skipped} of its entries are not valid for"
                    " its type {type!r} and are left out",
                    path=path,
                    name=found.name,
                    skipped=found.skipped,
                    type=found.type,
                )
            lists.append(found)
        if problems:
            raise ConfigError(problems)
        return tuple(lists)

    def deployment_problems(self) -> list[str]:
        """What makes a local feed unusable although its table is valid: no such directory,
        or no manifest.json in it (one line each, starting with the key)."""
        if self.url.lower().startswith(("http://", "https://")):
            return []
        directory = Path(self.url.removeprefix("file://")).expanduser()
        if not directory.is_dir():
            what = "not a directory" if directory.exists() else "no such directory"
            return [f"url: {what}: {str(directory)!r}"]
        if not (directory / "manifest.json").is_file():
            return [f"url: no manifest.json in {str(directory)!r}; is it a MISP feed?"]
        return []
