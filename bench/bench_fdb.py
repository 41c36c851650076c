"""Bridge forwarding (learn the source, decide for the destination) with
~1,000 learned MACs behind 64 ports and random known destinations, against
the plain-Python bridge of tests/reference/fdb.py (what one would write
without numba)."""
from __future__ import annotations

import numpy as np

from bench.conftest import size
from kernels import drop, fdb
from tests.reference import fdb as ref

PORTS = 64
MACS = size(1000, 100)
CAPACITY = 4096
FRAMES = size(1_000_000, 10_000)
BASELINE_FRAMES = size(100_000, 1_000)
GROUP = f"fdb forward {MACS} MACs x {PORTS} ports"


def hosts() -> tuple[np.ndarray, np.ndarray]:
    """MACs (unicast, locally administered) and the port each sits behind."""
    rng = np.random.default_rng(42)
    macs = np.unique(rng.integers(0, 2**40, MACS * 2, dtype=np.uint64))[:MACS]
    macs |= np.uint64(0x02 << 40)
    rng.shuffle(macs)
    return macs, (np.arange(MACS) % PORTS).astype(np.int32)


def traffic(n: int):
    """n frames between random known hosts, 1 ns apart, each in on its sender's port."""
    macs, ports = hosts()
    rng = np.random.default_rng(7)
    src = rng.integers(0, MACS, n)
    dst = rng.integers(0, MACS, n)
    return macs[dst], macs[src], ports[src], np.arange(n, dtype=np.int64)


class Clock:
    """Each timed round starts where the last ended (time never goes back)."""

    def __init__(self, times: np.ndarray):
        self.times = times
        self.offset = 0

    def next_round(self) -> np.ndarray:
        self.offset += len(self.times)
        return self.times + self.offset


def test_forward_emu(benchmark, record):
    macs, ports = hosts()
    table = fdb.make_fdb(CAPACITY)
    fdb.learn(table, macs, ports, 0)
    dst, src, ingress, times = traffic(FRAMES)
    port_up, hairpin = np.ones(PORTS, np.bool_), np.zeros(PORTS, np.bool_)
    clock = Clock(times)
    fdb.forward(table, dst[:16], src[:16], ingress[:16], clock.next_round()[:16], port_up, hairpin)

    def args():
        return (table, dst, src, ingress, clock.next_round(), port_up, hairpin), {}

    record(GROUP, "emu", FRAMES, "frames")
    out = benchmark.pedantic(fdb.forward, setup=args, rounds=size(15, 2), iterations=1)
    want = fdb.lookup(table, dst, fdb.current_time(table))
    same_port = want == ingress
    assert (out.out_port[~same_port] == want[~same_port]).all()
    assert (out.drop[same_port] == drop.BRIDGE_NO_PORT).all()
    assert fdb.stats(table)["learned"] == MACS and fdb.count(table) == MACS


def test_forward_baseline(benchmark, record):
    macs, ports = hosts()
    table = ref.Fdb(CAPACITY, fdb.DEFAULT_AGEING_TIME)
    table.learn(macs.tolist(), ports.tolist(), [0] * MACS)
    dst, src, ingress, times = (a.tolist() for a in traffic(BASELINE_FRAMES))
    port_up, hairpin = [True] * PORTS, [False] * PORTS
    clock = Clock(np.array(times, np.int64))

    def args():
        return (dst, src, ingress, clock.next_round().tolist(), port_up, hairpin), {}

    record(GROUP, "baseline", BASELINE_FRAMES, "frames")
    benchmark.pedantic(table.forward, setup=args, rounds=3, iterations=1)
