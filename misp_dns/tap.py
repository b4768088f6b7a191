"""`twistd misp-dns`: command-line options and the wiring of the service tree.

    twistd -n --pidfile= misp-dns --config PATH        run in the foreground
    twistd misp-dns --check-config --config PATH       validate the config and exit

The config is loaded while the options are parsed, before twistd daemonizes, so a bad
config is reported on the terminal, one line per problem, and twistd exits with status 1.
`build_service` then puts the parts together in named steps; docs/architecture.md shows the
tree it builds and the data path through it.
"""

from __future__ import annotations

import errno
import gc
import os
import platform
import resource
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import twisted
from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from misp_dns import __version__
from misp_dns.admin.api import ServerParts
from misp_dns.admin.web import AdminService, read_token
from misp_dns.allocator import configure_malloc
from misp_dns.build import (
    build_exporter,
    build_policies,
    deployment_problems,
    describe_policies,
    describe_sinks,
    security_warnings,
)
from misp_dns.config import load_config
from misp_dns.dns.acl import ClientACL
from misp_dns.dns.cache import AnswerCache
from misp_dns.dns.descriptors import DescriptorShortage, tcp_connection_cap
from misp_dns.dns.forwarder import Forwarder, system_upstreams
from misp_dns.dns.listen import TCPListener, dual_stack
from misp_dns.dns.ratelimit import RateLimiter
from misp_dns.dns.resolver import ChainResolver
from misp_dns.dns.reuseport import ListeningSockets
from misp_dns.dns.server import DNSStreamFactory, Responder, Tally
from misp_dns.dns.udp import UDPListener
from misp_dns.event import Answer
from misp_dns.export.exporter import ExporterService
from misp_dns.export.jsonl import hangup
from misp_dns.group import WorkerGroup, zygote_command
from misp_dns.interfaces import SINGLE_PROCESS, IPolicy, SnapshotSharing
from misp_dns.policy.chain import PolicyChain
from misp_dns.policy.sightings import SightingsTally, wants_sightings
from misp_dns.primary.service import RpzPrimary
from misp_dns.registry import Registry, default_registry
from misp_dns.reload import PolicyReloader, RunningPolicy
from misp_dns.tsig import TsigKey, load_keys
from misp_dns.values import Config, ConfigError, ServerConfig, Upstream

__all__ = [
    "COLLECTOR_THRESHOLDS",
    "ListenFailed",
    "Options",
    "SnapshotRelay",
    "build_service",
    "build_supervisor",
    "cannot_listen_message",
    "makeService",
    "raise_open_files_limit",
    "settle_collector",
    "upstreams_of",
]

log = Logger()


class Options(usage.Options):
    """The options of `twistd misp-dns`."""

    optParameters = [
        ["config", "c", "/etc/misp-dns/misp-dns.toml", "Path of the TOML configuration file."],
    ]
    optFlags = [
        ["check-config", None, "Validate the configuration, print what is wrong, and exit."],
    ]

    def opt_version(self) -> None:
        """Print the versions of misp-dns, Twisted and Python, and exit."""
        print(
            f"misp-dns {__version__} (Twisted {twisted.__version__},"
            f" Python {platform.python_version()})"
        )
        sys.exit(0)

    def postOptions(self) -> None:
        from twisted.internet import reactor

        registry = default_registry()
        try:
            config = load_config(self["config"], registry)
            upstreams = upstreams_of(config.server)
            # Building the policies reads their files (allowlists, API keys), so that a
            # problem there is a config error too, reported before anything starts.
            relay = SnapshotRelay()
            sharing = SINGLE_PROCESS
            if config.server.workers > 1:
                # This process fetches for the group and tells the serving processes.
                sharing = SnapshotSharing(saved=relay)
            policies = build_policies(config, registry, reactor, sharing)
            exporter = None
            if config.export:
                exporter = build_exporter(config.export, registry, reactor, server=config.server)
            admin_token = read_token(config.admin) if config.admin is not None else None
            tsig_keys = load_keys(config.tsig_key)
            unworkable = deployment_problems(config, policies)
            if unworkable and self["check-config"]:
                raise ConfigError(unworkable)
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
        self["tsig_keys"] = tsig_keys
        self["relay"] = relay
        warnings = security_warnings(config, self["config"])
        if self["check-config"]:
            for line in warnings:
                print(f"misp-dns: warning: {line}", file=sys.stderr)
            print(f"misp-dns: {self['config']}: configuration is valid")
            sys.exit(0)
        # Logged before twistd starts logging: kept and written out once it does.
        for line in warnings + unworkable:
            log.warn("{warning}", warning=line)


#: The cyclic collector's thresholds while serving (`gc.set_threshold`). Python's (700, 10,
#: 10) make it walk every object still alive again and again while the answer memos fill
#: with first-seen names: a quarter of a cold blocked answer's cost (bench/RESULTS.md,
#: issue 17). Reference counting frees nearly everything an answer makes, so the
#: collector only finds the rare cycle (a failed Deferred), later.
COLLECTOR_THRESHOLDS = (20_000, 20, 100)


def settle_collector() -> None:
    """Set the collector up for serving: what was built at start is frozen (it lives as
    long as the server, and full passes over it would stall answers for tens of ms), and
    collections come at `COLLECTOR_THRESHOLDS`."""
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


class ListenFailed(Exception):
    """An address could not be listened on; the message is the one line saying why."""


class _ServerService(service.MultiService):
    """The whole server, with start-up lines saying where it listens and forwards to, then
    one line per policy of the chain and per sink.

    An address it cannot listen on (taken, not local, a privileged port) ends twistd with
    one line and a non-zero status, no traceback. twistd binds TCP in
    `privilegedStartService` and starts the rest (UDP included) in `startService`, both
    before its reactor runs, so the process can end from there: in the foreground with the
    line logged and status 1; when daemonizing, by raising `ListenFailed`, which twistd
    hands to the waiting parent (it prints the line and exits with 1; SystemExit there
    would leave the parent waiting forever).
    """

    def __init__(self, summary: str, foreground: bool = True, details: Sequence[str] = ()) -> None:
        super().__init__()
        self.summary = summary
        self.foreground = foreground
        self.details = list(details)

    def privilegedStartService(self) -> None:
        with self._ending_when_cannot_listen():
            super().privilegedStartService()

    def startService(self) -> None:
        with self._ending_when_cannot_listen():
            super().startService()
        log.info("{summary}", summary=self.summary)
        for line in self.details:
            log.info("{detail}", detail=line)
        settle_collector()

    @contextmanager
    def _ending_when_cannot_listen(self) -> Iterator[None]:
        try:
            yield
        except CannotListenError as error:
            problem = cannot_listen_message(error)
            log.critical("{problem}", problem=problem)
            if not self.foreground:
                raise ListenFailed(problem) from None
            raise SystemExit(1) from None


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another program (another DNS server?) holds it; see ss -lntup",
    errno.EACCES: "ports below 1024 need root or the capability CAP_NET_BIND_SERVICE",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
}


def cannot_listen_message(error: CannotListenError) -> str:
    """One line for a listener that could not bind: the address, the cause, what to do."""
    host = error.interface or "*"
    address = f"[{host}]:{error.port}" if ":" in host else f"{host}:{error.port}"
    cause = error.socketError
    number = getattr(cause, "errno", None)
    if number is None and isinstance(getattr(cause, "args", None), tuple) and cause.args:
        number = cause.args[0] if isinstance(cause.args[0], int) else None
    reason = os.strerror(number) if isinstance(number, int) else str(cause)
    hint = _LISTEN_HINTS.get(number) if isinstance(number, int) else None
    line = f"cannot listen on {address}: {reason.lower()}"
    return f"{line}; {hint}" if hint else line


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
    open_files_limit: int | None = None,
    foreground: bool = True,
    tsig_keys: Mapping[str, TsigKey] | None = None,
    sockets: Sequence[ListeningSockets] | None = None,
    identity: str | None = None,
    sharing: SnapshotSharing = SINGLE_PROCESS,
    with_admin: bool = True,
    tally: Tally | None = None,
) -> service.MultiService:
    """The service tree for `config`: exporter, policy services, admin, then the listeners.

    Services stop in the reverse order: the listeners first (no new queries), then the
    admin listener and the policies, then the exporter, which writes out what is still
    queued. With `config_path`, SIGHUP reloads the `[[policy]]` tables from it (see
    `misp_dns.reload`). With `[admin]`, the admin listener (named "admin") serves metrics,
    health and the API; `admin_token` is its token, read from `token_file` when not given.
    The TCP connections allowed are sized to `open_files_limit` (default: the process's
    soft limit). Raises ConfigError when no upstream is configured or found, or the token
    file is bad.
    `foreground` says whether twistd runs without daemonizing (how a listen failure ends
    it, see `_ServerService`). The responder's tally counts queries for the admin listener
    and, while a policy of the chain posts sightings, hands blocks to its reporter
    (`misp_dns.policy.sightings`). With `[rpz]`, the RPZ primary (named "rpz") serves the
    chain's blocking snapshots as a zone on the listeners (`tsig_keys`: the loaded
    `[[tsig_key]]` keys, read from their files when not given).

    A serving process of a group (`misp_dns.worker`) passes the `sockets` it inherited
    (listened on instead of binding), the `identity` CH TXT id.server answers, the
    `sharing` its reloaded policies are built with, `with_admin` false (the supervisor runs
    the admin listener) and a `tally` of its own.
    """
    if open_files_limit is None:
        open_files_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    upstreams = list(upstreams) if upstreams is not None else upstreams_of(config.server)
    shortage = DescriptorShortage(reactor)
    resolver = _resolver(config, policies, upstreams, reactor, shortage, identity)
    responder = _responder(config.server, resolver, reactor)
    tcp_factory = _tcp_factory(config.server, responder, reactor, shortage, open_files_limit)
    details = describe_policies(config.policy, policies) + describe_sinks(config.export)
    top = _ServerService(_summary(config.server, upstreams), foreground, details)
    if exporter is not None:
        exporter.setServiceParent(top)
        responder.recorder = exporter.record
    policy_services = _policy_services(policies)
    policy_services.setServiceParent(top)
    count_query: Tally | None = None
    if config.admin is not None and with_admin:
        if admin_token is None:
            admin_token = read_token(config.admin)
        parts = ServerParts(resolver, responder, tcp_factory, exporter, reactor, reactor.seconds())
        admin = AdminService(config.admin, admin_token, parts, reactor)
        count_query = admin.queries.count
        admin.setServiceParent(top)
    sightings = SightingsTally(lambda: resolver.policy)

    def install_tallies(chain: Sequence[IPolicy]) -> None:
        note_block = sightings.count if wants_sightings(chain) else None
        responder.tally = _tallies(count_query, note_block, tally)

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
            sharing=sharing,
        )
        hangup_service = _OnHangup(reactor, reloader.reload)
        hangup_service.setName("reload")
        hangup_service.setServiceParent(top)
    if config.rpz is not None:
        keys = tsig_keys if tsig_keys is not None else load_keys(config.tsig_key)
        primary = RpzPrimary(
            config.rpz, config.server, keys, lambda: resolver.policy.policies, reactor
        )
        primary.setName("rpz")
        responder.zone = primary.respond
        primary.setServiceParent(top)
    for listener in _listeners(config.server, responder, tcp_factory, reactor, shortage, sockets):
        listener.setServiceParent(top)
    return top


def _tallies(*tallies: Tally | None) -> Tally | None:
    """One responder tally calling each of `tallies` that is not None (or None if none is)."""
    chosen = [tally for tally in tallies if tally is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None

    def each(transport: str, question: bytes, answer: Answer) -> None:
        for one in chosen:
            one(transport, question, answer)

    return each


def _resolver(
    config: Config,
    policies: Sequence[IPolicy],
    upstreams: list[Upstream],
    reactor: Any,
    shortage: DescriptorShortage,
    identity: str | None = None,
) -> ChainResolver:
    """The policy chain, then the answer cache, then the upstream forwarder."""
    server = config.server
    server_name = server.server_name or socket.gethostname() or "localhost"
    return ChainResolver(
        PolicyChain(list(policies), now=reactor.seconds),
        AnswerCache(config.cache.max_entries, reactor),
        Forwarder(upstreams, reactor, timeout=server.upstream_timeout, shortage=shortage),
        server_name.rstrip("."),
        identity=identity,
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


def _tcp_factory(
    server: ServerConfig,
    responder: Responder,
    reactor: Any,
    shortage: DescriptorShortage,
    open_files_limit: int,
) -> DNSStreamFactory:
    """The factory every TCP listener shares (it counts and caps the open connections)."""
    max_connections = tcp_connection_cap(server.tcp_max_connections, open_files_limit)
    if max_connections < server.tcp_max_connections:
        log.warn(
            "at most {allowed} TCP connections, not server.tcp_max_connections = {configured}:"
            " the open files limit is {limit} (raise it: LimitNOFILE= under systemd)",
            allowed=max_connections,
            configured=server.tcp_max_connections,
            limit=open_files_limit,
        )
    return DNSStreamFactory(
        responder,
        server.tcp_idle_timeout,
        max_connections,
        reactor,
        max_per_client=server.tcp_max_connections_per_client,
        ipv4_prefix=server.rate_limit_ipv4_prefix,
        ipv6_prefix=server.rate_limit_ipv6_prefix,
        shortage=shortage,
    )


def _listeners(
    server: ServerConfig,
    responder: Responder,
    tcp_factory: DNSStreamFactory,
    reactor: Any,
    shortage: DescriptorShortage,
    sockets: Sequence[ListeningSockets] | None = None,
) -> list[service.IService]:
    """A UDP and a TCP listener for each `server.listen` address (on `sockets`, if given)."""
    backlog = _backlog(tcp_factory.max_connections)
    listeners: list[service.IService] = []
    if sockets is not None:
        for given in sockets:
            listeners.append(
                UDPListener(reactor, given.address, responder, dual=given.dual, sock=given.udp)
            )
            listeners.append(
                TCPListener(
                    reactor,
                    given.address,
                    tcp_factory,
                    backlog=backlog,
                    dual=given.dual,
                    shortage=shortage,
                    sock=given.tcp,
                )
            )
        return listeners
    for address in server.listen:
        dual = dual_stack(address, server.listen)
        listeners.append(UDPListener(reactor, address, responder, dual=dual))
        listeners.append(
            TCPListener(
                reactor, address, tcp_factory, backlog=backlog, dual=dual, shortage=shortage
            )
        )
    return listeners


def _backlog(max_connections: int) -> int:
    # A backlog as deep as the connections allowed, so a burst of them is not made to wait
    # for the kernel's handshake retries (Twisted's default is 50).
    return min(max(max_connections, 50), 4096)


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit if allowed; return the soft
    limit now in force, and log it.

    Every TCP connection and every question in flight upstream holds a descriptor; the
    common default soft limit, 1024, is reached long before the CPU is busy.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as problem:
            log.warn(
                "open files limit {soft}: cannot raise it to {wanted}: {problem}",
                soft=soft,
                wanted=wanted,
                problem=problem,
            )
            return soft
        log.info("open files limit raised from {soft} to {wanted}", soft=soft, wanted=wanted)
        return wanted
    log.info("open files limit {soft}", soft=soft)
    return soft


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


class SnapshotRelay:
    """Hands the path of each snapshot an updater saved to `target` (the `WorkerGroup`,
    which exists only once the service is built, after the policies)."""

    def __init__(self) -> None:
        self.target: Callable[[str], None] | None = None

    def __call__(self, path: str) -> None:
        if self.target is not None:
            self.target(path)


def build_supervisor(
    config: Config,
    policies: Sequence[IPolicy],
    reactor: Any,
    *,
    config_path: str,
    relay: SnapshotRelay,
    registry: Registry | None = None,
    upstreams: Sequence[Upstream] | None = None,
    admin_token: bytes | None = None,
    open_files_limit: int | None = None,
    foreground: bool = True,
) -> service.MultiService:
    """The service tree of a group's supervisor (`[server] workers` above 1, see
    docs/workers.md): the policies' updaters, the admin listener, SIGHUP reloading of the
    policy tables, and the `WorkerGroup` (named "workers") that opens the sockets and runs
    the serving processes. It answers no query itself and writes no query record.

    The resolver and responder it builds serve the admin listener and the reloader only:
    its query counters count nothing, the workers' answered queries are the
    `misp_dns_worker_queries` metric.
    """
    if open_files_limit is None:
        open_files_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    upstreams = list(upstreams) if upstreams is not None else upstreams_of(config.server)
    server = config.server
    shortage = DescriptorShortage(reactor)
    resolver = _resolver(config, policies, upstreams, reactor, shortage)
    responder = _responder(server, resolver, reactor)
    tcp_factory = _tcp_factory(server, responder, reactor, shortage, open_files_limit)
    group = WorkerGroup(
        reactor,
        config_path,
        server.workers,
        server.listen,
        _backlog(tcp_factory.max_connections),
        zygote=zygote_command,
    )
    group.setName("workers")
    relay.target = group.snapshot_saved
    summary = _summary(server, upstreams) + f" with {server.workers} serving processes"
    details = describe_policies(config.policy, policies) + describe_sinks(config.export)
    top = _ServerService(summary, foreground, details)
    policy_services = _policy_services(policies)
    policy_services.setServiceParent(top)
    if config.admin is not None:
        if admin_token is None:
            admin_token = read_token(config.admin)
        parts = ServerParts(
            resolver, responder, tcp_factory, None, reactor, reactor.seconds(), group.queries
        )
        AdminService(config.admin, admin_token, parts, reactor).setServiceParent(top)
    reloader = PolicyReloader(
        config_path,
        config,
        [RunningPolicy(t, p) for t, p in zip(config.policy, policies, strict=True)],
        registry or default_registry(),
        resolver,
        policy_services,
        reactor,
        sharing=SnapshotSharing(saved=relay),
    )
    hangup_service = _OnHangup(reactor, reloader.reload)
    hangup_service.setName("reload")
    hangup_service.setServiceParent(top)
    # Last, so that it stops first: the serving processes end before the updaters do.
    group.setServiceParent(top)
    return top


def makeService(options: Options) -> service.IService:
    """Called by twistd with the parsed options."""
    from twisted.internet import reactor

    # Before any thread starts, so that the thread pool's workers share the main arena
    # (see misp_dns.allocator for why memory would creep otherwise).
    configure_malloc()
    open_files_limit = raise_open_files_limit()
    config: Config = options["parsed"]
    if config.server.workers > 1:
        return build_supervisor(
            config,
            options["policies"],
            reactor,
            config_path=options["config"],
            relay=options["relay"],
            registry=options["registry"],
            upstreams=options["upstreams"],
            admin_token=options["admin_token"],
            open_files_limit=open_files_limit,
            foreground=options.parent is None or bool(options.parent["nodaemon"]),
        )

    return build_service(
        options["parsed"],
        options["policies"],
        reactor,
        exporter=options["exporter"],
        config_path=options["config"],
        registry=options["registry"],
        upstreams=options["upstreams"],
        admin_token=options["admin_token"],
        tsig_keys=options["tsig_keys"],
        open_files_limit=open_files_limit,
        foreground=options.parent is None or bool(options.parent["nodaemon"]),
    )
