"""`twistd misp-dns`: command-line options and the wiring of the service tree.

    twistd -n --pidfile= misp-dns --config PATH        run in the foreground
    twistd misp-dns --check-config --config PATH       validate the config and exit

The config is loaded while the options are parsed, before twistd daemonizes, so a bad
config is reported on the terminal, one line per problem, and twistd exits with status 1.
`build_service` then puts the parts together in named steps; docs/architecture.md shows the
tree it builds and the data path through it.
"""

from __future__ import annotations

import gc
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application import internet, service
from twisted.logger import Logger
from twisted.python import usage

from misp_dns import __version__
from misp_dns.admin.api import ServerParts
from misp_dns.admin.web import AdminService, read_token
from misp_dns.allocator import configure_malloc
from misp_dns.build import build_exporter, build_policies
from misp_dns.config import load_config
from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.forwarder import Forwarder, system_upstreams
from misp_dns.dns.ratelimit import RateLimiter
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import DNSStreamFactory, Responder, Tally
from misp_dns.dns.udp import UDPListener
from misp_dns.event import Answer
from misp_dns.export.exporter import ExporterService
from misp_dns.export.jsonl import hangup
from misp_dns.interfaces import IPolicy
from misp_dns.policy.chain import PolicyChain
from misp_dns.policy.sightings import SightingsTally, wants_sightings
from misp_dns.registry import Registry, default_registry
from misp_dns.reload import PolicyReloader, RunningPolicy
from misp_dns.values import Config, ConfigError, ServerConfig, Upstream

__all__ = ["Options", "build_service", "makeService", "upstreams_of"]

log = Logger()


class Options(usage.Options):
    """The options of `twistd misp-dns`."""

    optParameters = [
        ["config", "c", "/etc/misp-dns/misp-dns.toml", "Path of the TOML configuration file."],
    ]
    optFlags = [
        ["check-config", None, "Validate the configuration, print what is wrong, and exit."],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor

        registry = default_registry()
        try:
            config = load_config(self["config"], registry)
            upstreams = upstreams_of(config.server)
            # Building the policies reads their files (allowlists, API keys), so that a
            # problem there is a config error too, reported before anything starts.
            policies = build_policies(config, registry, reactor)
            exporter = None
            if config.export:
                exporter = build_exporter(config.export, registry, reactor, server=config.server)
            admin_token = read_token(config.admin) if config.admin is not None else None
        except ConfigError as problem:
            for line in problem.problems:
                print(f"misp-dns: {line}", file=sys.stderr)
            sys.exit(1)
        self["parsed"] = config
        self["upstreams"] = upstreams
        self["registry"] = registry
        self["policies"] = policies
        self["exporter"] = exporter
        self["admin_token"] = admin_token
        if self["check-config"]:
            print(f"misp-dns: {self['config']}: configuration is valid")
            sys.exit(0)


class _ServerService(service.MultiService):
    """The whole server, with a start-up line saying where it listens and forwards to."""

    def __init__(self, summary: str) -> None:
        super().__init__()
        self.summary = summary

    def startService(self) -> None:
        log.info("{summary}", summary=self.summary)
        super().startService()
        # Everything built at start lives as long as the server: keep it out of the cyclic
        # collector's full passes, which would otherwise stall answers for tens of ms.
        gc.freeze()


def upstreams_of(server: ServerConfig) -> list[Upstream]:
    """`server.upstreams`, or the nameservers of /etc/resolv.conf; ConfigError if neither."""
    upstreams = list(server.upstreams) or system_upstreams()
    if not upstreams:
        raise ConfigError(["server.upstreams: empty, and /etc/resolv.conf names no nameserver"])
    return upstreams


def build_service(
    config: Config,
    policies: Sequence[IPolicy],
    reactor: Any,
    *,
    exporter: ExporterService | None = None,
    config_path: str | None = None,
    registry: Registry | None = None,
    upstreams: Sequence[Upstream] | None = None,
    admin_token: bytes | None = None,
) -> service.MultiService:
    """The service tree for `config`: exporter, policy services, admin, then the listeners.

    Services stop in the reverse order: the listeners first (no new queries), then the
    admin listener and the policies, then the exporter, which writes out what is still
    queued. With `config_path`, SIGHUP reloads the `[[policy]]` tables from it (see
    `misp_dns.reload`). With `[admin]`, the admin listener (named "admin") serves metrics,
    health and the API; `admin_token` is its token, read from `token_file` when not given.
    The responder's tally counts queries for the admin listener and, while a policy of the
    chain posts sightings, hands blocks to its reporter (`misp_dns.policy.sightings`).
    Raises ConfigError when no upstream is configured or found, or the token file is bad.
    """
    upstreams = list(upstreams) if upstreams is not None else upstreams_of(config.server)
    resolver = _resolver(config, policies, upstreams, reactor)
    responder = _responder(config.server, resolver, reactor)
    tcp_factory = _tcp_factory(config.server, responder, reactor)
    top = _ServerService(_summary(config.server, upstreams))
    if exporter is not None:
        exporter.setServiceParent(top)
        responder.observers.append(exporter.observe)
    policy_services = _policy_services(policies)
    policy_services.setServiceParent(top)
    count_query: Tally | None = None
    if config.admin is not None:
        if admin_token is None:
            admin_token = read_token(config.admin)
        parts = ServerParts(resolver, responder, tcp_factory, exporter, reactor, reactor.seconds())
        admin = AdminService(config.admin, admin_token, parts, reactor)
        count_query = admin.queries.count
        admin.setServiceParent(top)
    sightings = SightingsTally(lambda: resolver.policy)

    def install_tallies(chain: Sequence[IPolicy]) -> None:
        note_block = sightings.count if wants_sightings(chain) else None
        responder.tally = _tallies(count_query, note_block)

    install_tallies(policies)
    if config_path is not None:
        reloader = PolicyReloader(
            config_path,
            config,
            [RunningPolicy(t, p) for t, p in zip(config.policy, policies, strict=True)],
            registry or default_registry(),
            resolver,
            policy_services,
            reactor,
            on_chain=install_tallies,
        )
        hangup_service = _OnHangup(reactor, reloader.reload)
        hangup_service.setName("reload")
        hangup_service.setServiceParent(top)
    for listener in _listeners(config.server, responder, tcp_factory, reactor):
        listener.setServiceParent(top)
    return top


def _tallies(*tallies: Tally | None) -> Tally | None:
    """One responder tally calling each of `tallies` that is not None (or None if none is)."""
    chosen = [tally for tally in tallies if tally is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None
    first, second = chosen

    def both(transport: str, question: bytes, answer: Answer) -> None:
        first(transport, question, answer)
        second(transport, question, answer)

    return both


def _resolver(
    config: Config, policies: Sequence[IPolicy], upstreams: list[Upstream], reactor: Any
) -> ChainResolver:
    """The policy chain, then the answer cache, then the upstream forwarder."""
    server = config.server
    server_name = server.server_name or socket.gethostname() or "localhost"
    return ChainResolver(
        PolicyChain(list(policies), now=reactor.seconds),
        AnswerCache(config.cache.max_entries, reactor),
        Forwarder(upstreams, reactor, timeout=server.upstream_timeout),
        server_name.rstrip("."),
    )


def _responder(server: ServerConfig, resolver: ChainResolver, reactor: Any) -> Responder:
    """The responder both listeners share: ACL, rate limit, resolver, encoding."""
    limiter = None
    if server.rate_limit:
        limiter = RateLimiter(
            server.rate_limit,
            server.rate_limit_slip,
            server.rate_limit_ipv4_prefix,
            server.rate_limit_ipv6_prefix,
            server.rate_limit_exempt,
            reactor,
        )
    return Responder(resolver, ClientACL(server.allow_clients), reactor, limiter=limiter)


def _summary(server: ServerConfig, upstreams: list[Upstream]) -> str:
    return "misp-dns {version} listening on {listen}, forwarding to {upstreams}".format(
        version=__version__,
        listen=", ".join(str(a) for a in server.listen),
        upstreams=", ".join(str(u) for u in upstreams),
    )


def _policy_services(policies: Sequence[IPolicy]) -> service.MultiService:
    """One parent for the background services of the policies that have one."""
    services = service.MultiService()
    for policy in policies:
        if policy.service is not None:
            policy.service.setServiceParent(services)
    return services


def _tcp_factory(server: ServerConfig, responder: Responder, reactor: Any) -> DNSStreamFactory:
    """The factory every TCP listener shares (it counts and caps the open connections)."""
    return DNSStreamFactory(responder, server.tcp_idle_timeout, server.tcp_max_connections, reactor)


def _listeners(
    server: ServerConfig, responder: Responder, tcp_factory: DNSStreamFactory, reactor: Any
) -> list[service.IService]:
    """A UDP and a TCP listener for each `server.listen` address."""
    # A backlog as deep as the connections allowed, so a burst of them is not made to wait
    # for the kernel's handshake retries (Twisted's default is 50).
    backlog = min(max(server.tcp_max_connections, 50), 4096)
    listeners: list[service.IService] = []
    for address in server.listen:
        listeners.append(UDPListener(reactor, address, responder))
        listeners.append(
            internet.TCPServer(address.port, tcp_factory, backlog=backlog, interface=address.host)
        )
    return listeners


class _OnHangup(service.Service):
    """Calls `callback` on SIGHUP while the server runs."""

    def __init__(self, reactor: Any, callback: Any) -> None:
        self.reactor = reactor
        self.callback = callback
        self._token: int | None = None

    def startService(self) -> None:
        super().startService()
        self._token = hangup.add(self.reactor, self.callback)

    def stopService(self) -> None:
        super().stopService()
        if self._token is not None:
            hangup.remove(self._token)
            self._token = None


def makeService(options: Options) -> service.IService:
    """Called by twistd with the parsed options."""
    from twisted.internet import reactor

    # Before any thread starts, so that the thread pool's workers share the main arena
    # (see misp_dns.allocator for why memory would creep otherwise).
    configure_malloc()

    return build_service(
        options["parsed"],
        options["policies"],
        reactor,
        exporter=options["exporter"],
        config_path=options["config"],
        registry=options["registry"],
        upstreams=options["upstreams"],
        admin_token=options["admin_token"],
    )
