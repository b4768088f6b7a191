"""The backlog of a TCP/TLS syslog sink: frames delivered whole and in order, and the memory an
outage took given back to the system once they are delivered."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from integration.hostile_dns import rss_kib
from test_syslog import frames, stream
from twisted.internet.testing import StringTransport

from misp_dns.export.spool import FrameSpool

messages = st.lists(
    st.one_of(st.binary(max_size=300), st.binary(min_size=900, max_size=3000)), max_size=60
)


@given(messages, st.integers(min_value=4, max_value=6))
def test_frames_come_out_whole_and_in_order(held: list[bytes], pages: int) -> None:
    """Whatever the sizes (frames larger than a segment included), taking segment after
    segment yields every message octet-counted, in order, with the right frame counts."""
    spool = FrameSpool(segment_size=pages * 1024)  # smaller than a page: rounded up
    for message in held:
        spool.append(message)
    assert len(spool) == len(held)
    out, counted = b"", 0
    while len(spool):
        data, count = spool.take()
        assert len(frames(data)) == count
        out, counted = out + data, counted + count
    assert frames(out) == held and counted == len(held)
    assert spool.take() == (b"", 0)


def test_take_all_and_clear_empty_the_spool_and_unmap_it() -> None:
    """Records sent in one go, or dropped, leave no mapped memory behind."""
    spool = FrameSpool()
    for index in range(500):
        spool.append(b"x" * 600 + str(index).encode())
    assert spool.mapped >= 500 * 600
    data, count = spool.take_all()
    assert count == 500 and len(frames(data)) == 500
    assert len(spool) == 0 and spool.mapped == 0
    spool.append(b"again")
    assert spool.clear() == 1 and spool.mapped == 0


def test_a_healthy_connection_reuses_one_segment() -> None:
    """Sent as soon as written, frames never need more than the one segment."""
    sender, connector, _ = stream(max_queue=100_000)
    _, transport = connector.succeed()
    for batch in range(200):
        sender.send([b"%d" % batch * 300] * 50)
        assert sender._backlog.mapped <= 64 * 1024
    assert len(frames(transport.value())) == 200 * 50


class _DiscardingTransport(StringTransport):
    """A receiver that reads everything at once and keeps none of it."""

    def write(self, data: bytes) -> None:
        self.received = getattr(self, "received", 0) + len(data)


def _rss_mib() -> float:
    return rss_kib(os.getpid()) / 1024


def test_memory_held_during_an_outage_goes_back_once_delivered() -> None:
    """30,000 records (about 18 MB) wait while the receiver is down, while the server keeps
    allocating things that outlive them; delivered, their memory leaves the process."""
    sender, connector, clock = stream(max_queue=100_000)
    connector.fail()
    survivors = []
    for index in range(30_000):
        sender.send([b"%08d" % index + b"m" * 592])
        if index % 10 == 0:
            survivors.append(bytes(600) + b"%d" % index)  # lives on, allocated in between
    assert len(sender) == 30_000
    holding = _rss_mib()
    clock.advance(0.5)  # the receiver is back: the retry connects
    _, transport = connector.succeed(_DiscardingTransport())
    delivered = _rss_mib()
    assert transport.received >= 30_000 * 600 and len(sender) == 0
    assert holding - delivered > 12, (holding, delivered)
    assert len(survivors) == 3000
