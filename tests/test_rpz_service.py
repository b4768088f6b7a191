"""The RPZ primary as a service: it follows the chain's snapshots, versions and announces.

A real `IndicatorUpdater` over `MemoryIndicatorSource` feeds a real `MispBlockingPolicy`;
time is a Clock (which also hands out fake UDP ports for NOTIFY). What is pinned: the zone
appears once the policies are ready, a changed snapshot gives the next serial, an IXFR
delta with only the change and a NOTIFY; an unchanged refresh changes nothing; a restart
keeps the serial; policies in monitor mode are left out.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import dns.message
from test_rpz_notify import UdpClock
from twisted.internet import defer

from misp_dns.intel.updater import IndicatorUpdater
from misp_dns.interfaces import BlockingOptions, RawIndicator
from misp_dns.policy.allowlist import AllowlistOptions, AllowlistPolicy
from misp_dns.policy.misp import MispBlockingPolicy
from misp_dns.primary.service import RpzPrimary
from misp_dns.testing import MemoryIndicatorSource
from misp_dns.values import HostPort, RpzConfig, ServerConfig

ZONE = "rpz.misp-dns.example"


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    """The updater's 'thread' work, run at once."""
    return defer.maybeDeferred(function, *args)


def turn(clock: UdpClock) -> None:
    """One turn of a reactor: the calls due now, not those they schedule meanwhile."""
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


class Rig:
    """A chain of an allowlist and one MISP-fed policy, and an RPZ primary over it."""

    def __init__(
        self,
        state_dir: Path,
        names: list[str],
        *,
        clock: UdpClock | None = None,
        enforced: bool = True,
    ) -> None:
        self.clock = clock or UdpClock()
        if clock is None:
            self.clock.advance(1_796_000_000)
        self.source = MemoryIndicatorSource([RawIndicator(n, "domain") for n in names])
        self.updater = IndicatorUpdater(
            "misp-connector",
            self.source,
            clock=self.clock,
            interval=3600,
            max_age=15 * 86400,
            state_path=None,
            run_in_thread=inline,
        )
        self.chain = [
            AllowlistPolicy.from_config(AllowlistOptions(domains=("good.example",))),
            MispBlockingPolicy(
                "misp", "misp-connector", BlockingOptions(enable_blocking=enforced), self.updater
            ),
        ]
        server = ServerConfig(server_name="ns.misp-dns.example", state_dir=str(state_dir))
        config = RpzConfig(
            zone=ZONE,
            allow_transfer=(ipaddress.ip_network("127.0.0.0/8"),),
            notify=(HostPort("192.0.2.53", 53),),
        )
        self.primary = RpzPrimary(config, server, {}, lambda: self.chain, self.clock)

    def start(self) -> None:
        self.updater.startService()
        self.primary.startService()
        self.clock.advance(0)

    def stop(self) -> None:
        self.primary.stopService()
        self.updater.stopService()

    def refresh(self, names: list[str]) -> None:
        self.source.indicators = [RawIndicator(n, "domain") for n in names]
        self.updater.update_now()
        self.clock.advance(1)
        self.clock.advance(0)

    def axfr_owners(self) -> set[str]:
        request = dns.message.make_query(ZONE, "AXFR").to_wire()
        stream = self.primary.respond(request, "127.0.0.1", "tcp")
        assert stream is not None and not isinstance(stream, bytes)
        owners = set()
        for wire in stream:
            message = dns.message.from_wire(wire, xfr=True, origin=dns.name.from_text(ZONE))
            owners |= {rrset.name.to_text() for rrset in message.answer}
        return owners - {"@"}


def test_zone_follows_the_snapshot_with_serial_delta_and_notify(tmp_path: Path) -> None:
    """Once the policies are ready the zone holds the allowlist and the blocked names; a
    refresh that removes one gives the next serial, a delta deleting just that name's two
    records, and a NOTIFY of the new serial."""
    rig = Rig(tmp_path, ["evil.example", "bad.example"])
    rig.start()
    version = rig.primary.current
    assert version is not None
    assert rig.axfr_owners() == {
        "good.example",
        "*.good.example",
        "evil.example",
        "*.evil.example",
        "bad.example",
        "*.bad.example",
    }
    rig.refresh(["evil.example"])
    newer = rig.primary.current
    assert newer is not None and newer.serial == version.serial + 1
    [delta] = rig.primary.history.since(version.serial, newer.serial) or []
    assert {r.owner for r in delta.deleted} == {"bad.example", "*.bad.example"}
    assert delta.added == []
    serials = [dns.message.from_wire(w).answer[0][0].serial for _, w, _ in rig.clock.sent]
    assert serials[-1] == newer.serial
    rig.stop()


def test_unchanged_refresh_keeps_the_serial(tmp_path: Path) -> None:
    """A refresh that brings the same indicators changes neither serial nor history."""
    rig = Rig(tmp_path, ["evil.example"])
    rig.start()
    serial = rig.primary.current.serial  # type: ignore[union-attr]
    rig.refresh(["evil.example"])
    assert rig.primary.current.serial == serial  # type: ignore[union-attr]
    assert len(rig.primary.history) == 0
    rig.stop()


def test_restart_keeps_the_serial_of_an_unchanged_zone(tmp_path: Path) -> None:
    """Restarted with the same indicators, the zone keeps its serial; with other
    indicators, it takes the next one (never going back)."""
    first = Rig(tmp_path, ["evil.example"])
    first.start()
    serial = first.primary.current.serial  # type: ignore[union-attr]
    first.stop()
    later = UdpClock()
    later.advance(1_796_000_000 + 86400)
    again = Rig(tmp_path, ["evil.example"], clock=later)
    again.start()
    assert again.primary.current.serial == serial  # type: ignore[union-attr]
    again.stop()
    changed = Rig(tmp_path, ["other.example"], clock=later)
    changed.start()
    assert changed.primary.current.serial == serial + 1  # type: ignore[union-attr]
    changed.stop()


def test_monitor_mode_policy_is_left_out(tmp_path: Path) -> None:
    """A policy that does not enforce (enable_blocking = false) puts nothing in the zone."""
    rig = Rig(tmp_path, ["evil.example"], enforced=False)
    rig.start()
    assert rig.axfr_owners() == {"good.example", "*.good.example"}
    rig.stop()


def test_the_next_zone_is_built_in_slices_between_answers(tmp_path: Path) -> None:
    """A zone of 5,000 names is built over several turns of the reactor (2,000 names a turn),
    serving the previous version meanwhile; checks during the build start no second one."""
    names = [f"n{index}.example" for index in range(5000)]
    rig = Rig(tmp_path, names[:10])
    rig.start()
    first = rig.primary.current
    assert first is not None
    rig.source.indicators = [RawIndicator(n, "domain") for n in names]
    rig.updater.update_now()
    rig.primary.check()
    rig.primary.check()
    turns = 0
    while rig.primary.current is first:
        turn(rig.clock)
        turns += 1
        assert turns < 100
    # 5,000 names in slices of 2,000 and the delta's 5,010: at least five turns.
    assert turns >= 5
    assert rig.primary.current.serial == first.serial + 1
    assert len(rig.primary.current.content) == 5001  # and good.example
    rig.stop()
