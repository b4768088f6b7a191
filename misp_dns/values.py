"""The value types of the configuration, at the bottom of every layer.

Everything here is a plain frozen value or a validator: no I/O, no Twisted, no imports from
the rest of misp-dns. Policies, sinks and the DNS listeners take these values; only
`misp_dns.config` turns a TOML file into them (see docs/architecture.md for the layers).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Any

import attrs

__all__ = [
    "TSIG_ALGORITHMS",
    "AdminConfig",
    "BadValue",
    "BlockingOptions",
    "CacheConfig",
    "Config",
    "ConfigError",
    "Duration",
    "FieldError",
    "HostPort",
    "Network",
    "PluginConfig",
    "RpzConfig",
    "ServerConfig",
    "TsigKeyConfig",
    "Upstream",
    "at_least",
    "between",
    "describe_value",
    "parse_duration",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one readable line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class BadValue(ValueError):
    """A value that has the right type but not an acceptable content (the message says why)."""


def describe_value(value: object) -> str:
    """A bad value for an error line: scalars shown, arrays and tables only by kind.

    Arrays and tables are never quoted: a secret put in the wrong shape (an API key in an
    array, a header table written as a string) must not reach the terminal or a log.
    """
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(value), type(value).__name__
    )
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


@attrs.frozen(order=True)
class HostPort:
    """An IP address and port, written "127.0.0.1:53" or "[::1]:53" in the file."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> HostPort:
        """Parse "IP:port", "[IPv6]:port" or, with `default_port`, a bare IP."""
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
        if match:
            host = match.group(1) or match.group(3)
            port = int(match.group(2) or match.group(4))
        elif default_port is not None:
            host, port = text, default_port
        else:
            raise BadValue(f'expected "IP:port" or "[IPv6]:port", got {text!r}')
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise BadValue(f"expected an IP address, got {text!r}") from None
        if not 0 <= port <= 65535:
            raise BadValue(f"port out of range 0..65535 in {text!r}")
        return cls(str(address), port)

    @property
    def family(self) -> int:
        """`socket.AF_INET` or `socket.AF_INET6`."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Upstream(HostPort):
    """An upstream nameserver; the port may be left out and defaults to 53."""


class Duration(float):
    """A length of time in seconds, written `<int>s`, `<int>m`, `<int>h` or `<int>d` in the file."""


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> Duration:
    """Parse "30m", "2h" or "15d" (and "45s") into seconds."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd])\s*", text)
    if not match or int(match.group(1)) == 0:
        raise BadValue(f"expected a duration such as 30m, 2h or 15d, got {text!r}")
    return Duration(int(match.group(1)) * _DURATION_UNITS[match.group(2)])


#: The most serving processes `[server] workers` may ask for.
MAX_WORKERS = 64


def between(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator for a number within [low, high] that names the bad value."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if not low <= value <= high:
            raise FieldError(attribute.name, f"must be within {low}..{high}, got {value!r}")

    return check


def at_least(low: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator for a number of at least `low` that names the bad value."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if value < low:
            raise FieldError(attribute.name, f"must be at least {low}, got {value!r}")

    return check


class FieldError(ValueError):
    """Raised by validators in `__init__`, where cattrs cannot tell which field failed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _loopback() -> tuple[Network, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _default_allow_clients() -> tuple[Network, ...]:
    nets = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    return tuple(ipaddress.ip_network(n) for n in nets)


def _valid_server_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or any(
        not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label)
        for label in labels
    ):
        raise FieldError(attribute.name, f"expected a host name, got {value!r}")


@attrs.frozen
class ServerConfig:
    """`[server]`: where to listen, where to forward, who may ask, and where state lives.

    `workers` is how many processes serve the listen addresses (see docs/workers.md): 1 is
    this process alone; more is a supervisor that fetches the indicators and that many
    serving children.

    `rate_limit` is UDP responses per second per client network (0 turns it off); see
    `misp_dns.dns.ratelimit`. A client network is a /`rate_limit_ipv4_prefix` (IPv6:
    /`rate_limit_ipv6_prefix`); `tcp_max_connections_per_client` caps the TCP connections
    one such network may hold open.
    """

    listen: tuple[HostPort, ...] = (HostPort("127.0.0.1", 5300),)
    upstreams: tuple[Upstream, ...] = ()
    allow_clients: tuple[Network, ...] = attrs.field(factory=_default_allow_clients)
    server_name: str = attrs.field(default="", validator=_valid_server_name)
    state_dir: str = "/var/lib/misp-dns"
    tcp_idle_timeout: float = attrs.field(default=30.0, validator=between(1, 3600))
    tcp_max_connections: int = attrs.field(default=1000, validator=between(1, 1_000_000))
    # A stub opens one connection per truncated answer and closes it after the answer, so
    # a whole office network seldom holds more than a few dozen at once; 100 keeps one
    # network (one attacker) from holding more than a tenth of the default total.
    tcp_max_connections_per_client: int = attrs.field(default=100, validator=between(1, 1_000_000))
    upstream_timeout: float = attrs.field(default=5.0, validator=between(0.5, 60))
    rate_limit: int = attrs.field(default=1000, validator=between(0, 10_000_000))
    rate_limit_slip: int = attrs.field(default=2, validator=between(0, 10))
    rate_limit_ipv4_prefix: int = attrs.field(default=24, validator=between(8, 32))
    rate_limit_ipv6_prefix: int = attrs.field(default=56, validator=between(16, 128))
    rate_limit_exempt: tuple[Network, ...] = attrs.field(factory=_loopback)
    # Serving processes sharing the listen addresses (docs/workers.md); 1 = this process.
    workers: int = attrs.field(default=1, validator=between(1, MAX_WORKERS))

    def __attrs_post_init__(self) -> None:
        if not self.listen:
            raise FieldError("listen", "needs at least one address")


@attrs.frozen
class CacheConfig:
    """`[cache]`: the answer cache's size (least recently used entries leave first)."""

    max_entries: int = attrs.field(default=100_000, validator=between(0, 100_000_000))


@attrs.frozen
class AdminConfig:
    """`[admin]`: the HTTP listener for metrics, health checks and the `misp-dns` command.

    The listener is off unless the section is present. `token_file` names a file holding a
    Bearer token that every request but /healthz and /readyz must carry; it is required
    when `listen` is not a loopback address, so the API is never open to a network.
    """

    listen: HostPort = HostPort("127.0.0.1", 8053)
    token_file: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.token_file and not ipaddress.ip_address(self.listen.host).is_loopback:
            raise FieldError(
                "token_file",
                f"required when listen ({self.listen}) is not a loopback address",
            )


#: The TSIG algorithms misp-dns signs and verifies with (RFC 8945 section 6).
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")


def _valid_key_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    labels = value.rstrip(".").split(".")
    if (
        not value.rstrip(".")
        or len(value) > 253
        or any(
            not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label)
            for label in labels
        )
    ):
        raise FieldError(attribute.name, f"expected a key name such as fleet, got {value!r}")


def _valid_tsig_algorithm(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value.lower() not in TSIG_ALGORITHMS:
        raise FieldError(
            attribute.name, f"expected one of {', '.join(TSIG_ALGORITHMS)}, got {value!r}"
        )


@attrs.frozen
class TsigKeyConfig:
    """One `[[tsig_key]]`: a TSIG key (RFC 8945) that transfers and NOTIFY are signed with.

    `name` is the key's name on the wire (both ends must use the same), `secret_file` a
    file holding the base64 secret as BIND's `tsig-keygen` prints it (the bare secret, or
    the whole `key "name" { ... };` statement). The secret is read when the server is built
    (`misp_dns.tsig.load_keys`), never here, and never appears in a message.
    """

    name: str = attrs.field(validator=_valid_key_name)
    secret_file: str
    algorithm: str = attrs.field(default="hmac-sha256", validator=_valid_tsig_algorithm)


RPZ_ACTIONS = ("nxdomain", "nodata")


def _valid_zone_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    labels = value.rstrip(".").split(".")
    if (
        not value.rstrip(".")
        or len(value.rstrip(".")) > 200
        or any(
            not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label)
            for label in labels
        )
    ):
        raise FieldError(attribute.name, f"expected a zone name such as rpz.example, got {value!r}")


def _valid_rpz_action(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in RPZ_ACTIONS:
        raise FieldError(attribute.name, f"expected nxdomain or nodata, got {value!r}")


def _valid_rpz_actions(
    _instance: object, attribute: attrs.Attribute[Any], value: dict[str, str]
) -> None:
    for key, action in value.items():
        if not re.fullmatch(r"policy\[\d{1,4}\]", key):
            raise FieldError(attribute.name, f'expected keys such as "policy[1]", got {key!r}')
        if action not in RPZ_ACTIONS:
            raise FieldError(attribute.name, f"{key}: expected nxdomain or nodata, got {action!r}")


@attrs.frozen
class RpzConfig:
    """`[rpz]`: this server is the primary of a Response Policy Zone of its blocking policies.

    The zone (`zone`) holds what the `[[policy]]` chain blocks, served over the `[server]
    listen` addresses (SOA over UDP and TCP, AXFR and IXFR over TCP) to the networks of
    `allow_transfer`, signed with one of `tsig_keys` (names of `[[tsig_key]]` tables; empty
    means unsigned transfers are served, with a warning at start). `notify` lists the
    secondaries told of each new serial. `action` is what a blocked name becomes in the zone
    (nxdomain: `CNAME .`, nodata: `CNAME *.`), `actions` overrides it per policy
    (`{ "policy[2]" = "nodata" }`); allowlists become `CNAME rpz-passthru.`.
    `traceability` adds a TXT record per trigger with the MISP event and attribute UUIDs.
    `ixfr_history` is how many changes are kept for IXFR; older serials get the whole zone.
    """

    zone: str = attrs.field(validator=_valid_zone_name)
    allow_transfer: tuple[Network, ...] = attrs.field(factory=_loopback)
    tsig_keys: tuple[str, ...] = ()
    notify: tuple[Upstream, ...] = ()
    action: str = attrs.field(default="nxdomain", validator=_valid_rpz_action)
    actions: dict[str, str] = attrs.field(factory=dict, validator=_valid_rpz_actions)
    traceability: bool = False
    ixfr_history: int = attrs.field(default=16, validator=between(1, 1000))


@attrs.frozen
class PluginConfig:
    """One `[[policy]]` or `[[export]]` table: its `type` and its structured options."""

    type: str
    options: Any


@attrs.frozen
class Config:
    """The whole, validated configuration."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    cache: CacheConfig = attrs.field(factory=CacheConfig)
    policy: tuple[PluginConfig, ...] = ()
    export: tuple[PluginConfig, ...] = ()
    #: None when the config has no `[admin]` section: no admin listener.
    admin: AdminConfig | None = None
    tsig_key: tuple[TsigKeyConfig, ...] = ()
    #: None when the config has no `[rpz]` section: this server is no RPZ primary.
    rpz: RpzConfig | None = None


_TWO_HOURS = Duration(2 * 3600)
_FIFTEEN_DAYS = Duration(15 * 86400)
_ONE_MINUTE = Duration(60)


@attrs.frozen(kw_only=True)
class BlockingOptions:
    """What every indicator-fed blocking policy shares: refreshing, freshness and the answer.

    The `misp` and `misp-feed` options extend it, and so does the options class of an
    installed indicator source (see docs/extending.md).
    """

    enable_blocking: bool = True
    disable_tls_validation: bool = False
    update_interval: Duration = _TWO_HOURS
    max_ioc_age: Duration = _FIFTEEN_DAYS
    blocking_answer_ttl: int = attrs.field(default=30, validator=between(30, 86400))
    allow_txt_blocking_report: bool = True
    add_extended_dns_error: bool = True
    # Off by default: one listed address of a CDN or shared host would block every name it
    # serves, and an upgrade must not start blocking what it did not block before.
    block_response_ips: bool = False
    # A slow MISP answering a big page needs more than a minute; a dead one should not
    # hold a refresh for longer than an hour per attempt.
    request_timeout: Duration = attrs.field(default=_ONE_MINUTE, validator=between(1, 3600))
