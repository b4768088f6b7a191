"""The sockets of a group of serving processes (`[server] workers`, docs/workers.md).

The supervisor opens every listening socket itself, before twistd gives up root (port 53),
and hands each serving process its own: one UDP and one TCP socket per listen address, all
bound with SO_REUSEPORT, so that the kernel spreads clients over the processes (by a hash of
the client's address and port) and no process wakes for a datagram another one reads. The
supervisor keeps its copies open: a process that replaces one that died adopts the same
sockets, and what arrived meanwhile waits in their queues.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import attrs

from misp_dns.dns.listen import dual_stack, tcp_socket
from misp_dns.dns.udp import udp_socket
from misp_dns.values import HostPort

__all__ = ["ListeningSockets", "group_sockets"]


@attrs.frozen
class ListeningSockets:
    """The UDP and TCP sockets one serving process of a group listens on at `address`."""

    address: HostPort
    dual: bool
    udp: socket.socket
    tcp: socket.socket


def group_sockets(
    listen: Sequence[HostPort], processes: int, backlog: int
) -> list[list[ListeningSockets]]:
    """For each of `processes` serving processes, a UDP and a TCP socket per `listen`
    address, all bound with SO_REUSEPORT; CannotListenError (every socket closed) when one
    cannot be. An address with port 0 gets the port its first socket was given."""
    opened: list[socket.socket] = []
    try:
        bound: list[tuple[HostPort, bool]] = []
        for address in listen:
            dual = dual_stack(address, listen)
            first = udp_socket(address, dual, reuse_port=True)
            opened.append(first)
            if address.port == 0:
                address = attrs.evolve(address, port=first.getsockname()[1])
            opened.append(tcp_socket(address, dual, backlog, reuse_port=True))
            bound.append((address, dual))
        group = [
            [
                ListeningSockets(a, d, opened[2 * k], opened[2 * k + 1])
                for k, (a, d) in enumerate(bound)
            ]
        ]
        for _ in range(processes - 1):
            mine = []
            for address, dual in bound:
                udp = udp_socket(address, dual, reuse_port=True)
                opened.append(udp)
                tcp = tcp_socket(address, dual, backlog, reuse_port=True)
                opened.append(tcp)
                mine.append(ListeningSockets(address, dual, udp, tcp))
            group.append(mine)
    except BaseException:
        for each in opened:
            each.close()
        raise
    return group
