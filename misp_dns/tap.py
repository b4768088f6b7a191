"""`twistd misp-dns`: command-line options and the wiring of the service tree.

    twistd -n --pidfile= misp-dns --config PATH        run in the foreground
    twistd misp-dns --check-config --config PATH       validate the config and exit

The config is loaded while the options are parsed, before twistd daemonizes, so a bad
config is reported on the terminal, one line per problem, and twistd exits with status 1.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.application import internet, service
from twisted.logger import Logger
from twisted.python import usage

from misp_dns import __version__
from misp_dns.config import Config, ConfigError, load_config
from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.forwarder import Forwarder, system_upstreams
from misp_dns.dns.ratelimit import RateLimiter
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.server import DNSStreamFactory, Responder
from misp_dns.dns.udp import UDPListener
from misp_dns.policy.chain import PolicyChain
from misp_dns.registry import BuildContext, Registry, default_registry

__all__ = ["Options", "makeService"]

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
            # Building the policies reads their files (allowlists, API keys), so that a
            # problem there is a config error too, reported before anything starts.
            policies = build_policies(config, registry, reactor)
        except ConfigError as problem:
            for line in problem.problems:
                print(f"misp-dns: {line}", file=sys.stderr)
            sys.exit(1)
        self["parsed"] = config
        self["policies"] = policies
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


def build_policies(config: Config, registry: Registry, reactor: Any) -> list[Any]:
    """The `[[policy]]` tables turned into policy objects, in config order."""
    context = BuildContext(reactor=reactor, server=config.server, state_dir=config.server.state_dir)
    problems: list[str] = []
    policies = []
    for index, table in enumerate(config.policy):
        try:
            policies.append(registry.policies[table.type].build(table.options, context))
        except ConfigError as problem:
            problems.extend(f"policy[{index}]: {line}" for line in problem.problems)
    if problems:
        raise ConfigError(problems)
    return policies


def build_service(config: Config, policies: list[Any], reactor: Any) -> service.MultiService:
    """The service tree for `config`: listeners, resolver chain and policy services."""
    server = config.server
    upstreams = list(server.upstreams) or system_upstreams()
    if not upstreams:
        print(
            "misp-dns: server.upstreams: empty, and /etc/resolv.conf names no nameserver",
            file=sys.stderr,
        )
        sys.exit(1)
    server_name = server.server_name or socket.gethostname() or "localhost"
    services = [p.service for p in policies if getattr(p, "service", None) is not None]
    resolver = ChainResolver(
        PolicyChain(policies),
        AnswerCache(config.cache.max_entries, reactor),
        Forwarder(upstreams, reactor, timeout=server.upstream_timeout),
        server_name.rstrip("."),
    )
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
    responder = Responder(resolver, ClientACL(server.allow_clients), reactor, limiter=limiter)
    summary = "misp-dns {version} listening on {listen}, forwarding to {upstreams}".format(
        version=__version__,
        listen=", ".join(str(a) for a in server.listen),
        upstreams=", ".join(str(u) for u in upstreams),
    )
    top = _ServerService(summary)
    top.responder = responder  # type: ignore[attr-defined]
    for policy_service in services:
        policy_service.setServiceParent(top)
    tcp_factory = DNSStreamFactory(
        responder, server.tcp_idle_timeout, server.tcp_max_connections, reactor
    )
    for address in server.listen:
        UDPListener(reactor, address, responder).setServiceParent(top)
        tcp = internet.TCPServer(address.port, tcp_factory, interface=address.host)
        tcp.setServiceParent(top)
    return top


def makeService(options: Options) -> service.IService:
    """Called by twistd with the parsed options."""
    from twisted.internet import reactor

    return build_service(options["parsed"], options["policies"], reactor)
