"""Header rewrites in place (kernels.rewrite) against Scapy doing the same
rewrite by dissecting, changing the fields and rebuilding with fresh
checksums (what one would do without the kernel). No issue target; the rate
matters for NAT and forwarding in bulk runs."""
from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench.conftest import size
from kernels import rewrite
from tests.reference import rewrite as ref

N = size(200_000, 200)
BASELINE_N = size(2_000, 20)
SLOT, HEADROOM = 2048, 128


def _batch(n):
    frame = np.frombuffer(bytes(Ether() / IP(src="10.244.0.2", dst="10.96.0.10") / TCP(sport=40000, dport=80)
                                / (b"x" * 10)), np.uint8)
    buf = np.zeros(n * SLOT, np.uint8)
    starts = np.arange(n, dtype=np.int64) * SLOT + HEADROOM
    for k in range(n):
        buf[starts[k]:starts[k] + len(frame)] = frame
    return buf, starts, bytes(frame)


def test_nat_emu(benchmark, record):
    buf, starts, _ = _batch(N)
    l3, l4 = starts + 14, starts + 34
    args = (np.full(N, 6, np.uint8), np.full(N, 0x0AF40002, np.uint32), np.full(N, 0x0AF40105, np.uint32),
            np.full(N, 40000, np.uint16), np.full(N, 8080, np.uint16))
    rewrite.nat(buf, l3[:2], l4[:2], *(a[:2] for a in args))  # compile outside the timing
    record("NAT rewrite (DNAT, TCP)", "emu", N, "packets")
    benchmark(rewrite.nat, buf, l3, l4, *args)


def test_nat_scapy(benchmark, record):
    _, _, frame = _batch(1)
    record("NAT rewrite (DNAT, TCP)", "baseline", BASELINE_N, "packets")
    benchmark.pedantic(lambda: [ref.nat(frame, "10.244.0.2", "10.244.1.5", 40000, 8080)
                                for _ in range(BASELINE_N)], rounds=3, iterations=1)


def test_ttl_emu(benchmark, record):
    buf, starts, _ = _batch(N)
    rewrite.decrement_ttl(buf, starts[:2] + 14)
    record("TTL decrement", "emu", N, "packets")
    benchmark(rewrite.decrement_ttl, buf, starts + 14)


def test_ttl_scapy(benchmark, record):
    _, _, frame = _batch(1)
    record("TTL decrement", "baseline", BASELINE_N, "packets")
    benchmark.pedantic(lambda: [ref.decrement_ttl(frame) for _ in range(BASELINE_N)], rounds=3, iterations=1)


def _ranges(n):
    src = np.random.default_rng(1).integers(0, 256, 1 << 20).astype(np.uint8)
    src_starts = (np.arange(n, dtype=np.int64) * 7919) % ((1 << 20) - 256)
    lengths = np.full(n, 150, np.int64)
    return src, src_starts, lengths, np.zeros(n * 150, np.uint8), np.arange(n, dtype=np.int64) * 150


def test_copy_ranges_emu(benchmark, record):
    args = _ranges(N)
    rewrite.copy_ranges(*(a[:2] if k in (1, 2, 4) else a for k, a in enumerate(args)))
    record("copy 150-byte frames (capture, pool)", "emu", N, "frames")
    benchmark(rewrite.copy_ranges, *args)


def test_copy_ranges_numpy_slices(benchmark, record):
    src, ss, ls, dst, ds = _ranges(BASELINE_N * 10)

    def run():
        for s, n, d in zip(ss.tolist(), ls.tolist(), ds.tolist()):
            dst[d:d + n] = src[s:s + n]
    record("copy 150-byte frames (capture, pool)", "baseline", BASELINE_N * 10, "frames")
    benchmark.pedantic(run, rounds=3, iterations=1)
