"""Running out of file descriptors: one warning per episode, and TCP sized to the limit."""

from __future__ import annotations

import resource
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from misp_dns.dns.descriptors import DescriptorShortage, tcp_connection_cap
from misp_dns.values import ServerConfig


def test_an_episode_is_logged_once_however_often_descriptors_come_and_go() -> None:
    """Near the limit, failures and successes alternate many times a second: that is one
    warning, and one line when a descriptor is obtained after a quiet minute, with the
    failures of the whole episode; a later shortage is a new episode."""
    clock = Clock()
    shortage = DescriptorShortage(clock)
    with capturedLogs() as events:
        for _ in range(100):
            shortage.happened("socket")
            clock.advance(0.5)
            shortage.over()
        shortage.happened("accept")
        clock.advance(59)
        shortage.over()
        assert shortage.ongoing
        clock.advance(1)
        shortage.over()
        assert not shortage.ongoing
        shortage.happened("socket")
    assert [e["log_level"] for e in events] == [LogLevel.warn, LogLevel.info, LogLevel.warn]
    assert events[1]["failed"] == 101
    assert shortage.failures == {"socket": 101, "accept": 1}


def test_tcp_connections_get_half_of_the_descriptors_beyond_a_reserve() -> None:
    """With the common default soft limit of 1024, the 1000 connections configured by
    default would leave no descriptor for the upstream queries: 480 are allowed. A
    generous limit (or none) leaves the configured number; a tiny one still allows one."""
    assert tcp_connection_cap(1000, 1024) == 480
    assert tcp_connection_cap(1000, 65536) == 1000
    assert tcp_connection_cap(1000, resource.RLIM_INFINITY) == 1000
    assert tcp_connection_cap(1000, 64) == 1


def test_the_systemd_unit_leaves_room_for_the_default_tcp_cap() -> None:
    """The shipped unit sets LimitNOFILE high enough that the default 1000 TCP connections
    are allowed in full (systemd's default soft limit, 1024, would cut them to 480)."""
    unit = Path(__file__).parent.parent / "contrib" / "systemd" / "misp-dns.service"
    [limit] = [
        line.split("=", 1)[1]
        for line in unit.read_text().splitlines()
        if line.startswith("LimitNOFILE=")
    ]
    assert tcp_connection_cap(ServerConfig().tcp_max_connections, int(limit)) == 1000
