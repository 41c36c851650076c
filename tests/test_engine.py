"""The event engine: virtual time, (time, sequence) order, links, drops, traces."""
from __future__ import annotations

import numpy as np
import pytest

from emu.dataplane.engine import Device, Engine
from emu.dataplane.pool import HEADROOM, MAX_FRAME, SLOT, Pool
from emu.errors import EmuError
from kernels.drop import Drop


class Reflector(Device):
    """Sends every frame back out of the port it came in on, `bounces` times, then delivers it."""

    def __init__(self, name, bounces=1):
        super().__init__(name)
        self.bounces = bounces
        self.seen = []  # (time, pkt_id, port)

    def receive(self, engine, ports, slots, times):
        for p, s, t in zip(ports.tolist(), slots.tolist(), times.tolist()):
            self.seen.append((t, int(engine.pool.pkt_id[s]), p))
        count = np.array([sum(1 for x in self.seen if x[1] == engine.pool.pkt_id[s]) for s in slots])
        back = count <= self.bounces
        note = engine.note(f"{self.name} reflects")
        engine.transmit(ports[back], slots[back], times[back], note)
        engine.deliver(self, slots[~back], times[~back], -1, engine.note("consumed"))
        return np.full(len(slots), note, np.int32)


class Sink(Device):
    def __init__(self, name):
        super().__init__(name)
        self.got = []

    def receive(self, engine, ports, slots, times):
        self.got += [(int(t), engine.pool.frame(int(s))) for s, t in zip(slots, times)]
        engine.deliver(self, slots, times, -1, engine.note("sink"))
        return np.zeros(len(slots), np.int32)


def _pair(latency=5_000):
    eng = Engine(seed=1)
    a, b = eng.add(Reflector("a", bounces=10)), eng.add(Reflector("b", bounces=2))
    pa, pb = eng.add_port(a, "eth0"), eng.add_port(b, "eth0")
    eng.link(pa, pb, latency_ns=latency)
    return eng, a, b, pa, pb


def test_latency_and_order_on_the_virtual_clock():
    eng, a, b, pa, pb = _pair()
    eng.send(pa, b"\x00" * 60, time_ns=100)
    eng.send(pa, b"\x01" * 60, time_ns=50)
    eng.run()
    # b sees the later-sent but earlier-timed frame first; each link crossing adds 5 us;
    # b reflects twice, then consumes
    assert [(t, i) for t, i, _ in b.seen] == [(5050, 1), (5100, 0), (15050, 1), (15100, 0),
                                               (25050, 1), (25100, 0)]
    assert [(t, i) for t, i, _ in a.seen] == [(10050, 1), (10100, 0), (20050, 1), (20100, 0)]
    assert eng.pool.in_use == 0


def test_same_time_ties_break_by_sequence():
    eng = Engine()
    src, sink = eng.add(Sink("src")), eng.add(Sink("sink"))
    ps, pk = eng.add_port(src, "eth0"), eng.add_port(sink, "eth0")
    eng.link(ps, pk)
    for i in range(5):
        eng.send(ps, bytes([i]) * 20, time_ns=0)
    eng.run()
    assert [f[0] for _, f in sink.got] == [0, 1, 2, 3, 4]


def test_timers_run_in_time_order_with_packets():
    eng, a, b, pa, pb = _pair()
    events = []
    eng.at(7_000, lambda e: events.append(("timer", e.now)))
    eng.at(3_000, lambda e: e.send(pa, b"x" * 60))
    eng.run()
    assert events == [("timer", 7_000)]
    assert b.seen[0][0] == 8_000


def test_run_until_stops_and_resumes():
    eng, a, b, pa, pb = _pair()
    eng.send(pa, b"x" * 60, time_ns=0)
    eng.run(until_ns=6_000)
    assert len(b.seen) == 1 and not a.seen and eng.now == 6_000
    eng.run()
    assert len(b.seen) == 3 and len(a.seen) == 2


def test_unlinked_or_down_port_drops_with_reason():
    eng = Engine()
    d = eng.add(Sink("lonely"))
    p = eng.add_port(d, "eth0")
    eng.send(p, b"x" * 60)
    eng.run()
    assert eng.drop_summary() == [("lonely", "LINK_DOWN", 1)]
    eng2, a, b, pa, pb = _pair()
    eng2.set_link_up(pb, False)
    eng2.send(pa, b"x" * 60)
    eng2.run()
    assert eng2.drops[a.id, Drop.LINK_DOWN] == 1 and not b.seen


def test_trace_lists_hops_of_one_packet():
    eng, a, b, pa, pb = _pair()
    pid = eng.send(pa, b"x" * 60, note="hello")
    eng.run()
    hops = eng.trace(pid)
    assert [(h.kind, h.port, h.note) for h in hops] == [
        ("tx", "a/eth0", "hello"), ("tx", "b/eth0", "b reflects"), ("tx", "a/eth0", "a reflects"),
        ("tx", "b/eth0", "b reflects"), ("tx", "a/eth0", "a reflects"), ("deliver", "-", "consumed")]
    assert [h.time_ns for h in hops] == sorted(h.time_ns for h in hops)


def test_build_errors_are_readable():
    eng = Engine()
    d = eng.add(Sink("x"))
    with pytest.raises(EmuError, match="duplicate device name"):
        eng.add(Sink("x"))
    p, q, r = eng.add_port(d, "a"), eng.add_port(d, "b"), eng.add_port(d, "c")
    eng.link(p, q)
    with pytest.raises(EmuError, match="already linked"):
        eng.link(p, r)
    with pytest.raises(EmuError, match="latency must be positive"):
        eng.link(r, eng.add_port(d, "e"), latency_ns=0)


def test_pool_slots_headroom_growth_and_ids():
    pool = Pool(capacity=2)
    s = [pool.put(bytes([i]) * 10) for i in range(5)]  # grows past 2
    assert pool.capacity >= 5 and pool.in_use == 5
    assert [pool.frame(x) for x in s] == [bytes([i]) * 10 for i in range(5)]
    assert all(pool.start[x] == x * SLOT + HEADROOM for x in s)
    assert list(pool.pkt_id[s]) == [0, 1, 2, 3, 4]
    c = pool.clone(np.array(s[:2], np.int32))
    assert [pool.frame(x) for x in c] == [b"\x00" * 10, b"\x01" * 10]
    assert list(pool.pkt_id[c]) == [0, 1]
    pool.release(np.array(s, np.int32))
    assert pool.in_use == 2
    with pytest.raises(EmuError, match="larger than"):
        pool.put(b"x" * (MAX_FRAME + 1))
