"""Flow hashing throughput, against the plain-Python reference of
tests/reference/hashing.py (what one would write without numba). No target
rate is set; the summary reports hashes per second."""
from __future__ import annotations

import numpy as np

from bench.conftest import size
from kernels import hashing
from tests.reference import hashing as ref

TUPLES = size(4_000_000, 1000)
BASELINE_TUPLES = size(50_000, 200)
SEED = 1


def tuples(n: int):
    rng = np.random.default_rng(8)
    return (rng.integers(0, 2**32, n, dtype=np.uint32), rng.integers(0, 2**32, n, dtype=np.uint32),
            rng.integers(0, 2**16, n, dtype=np.uint16), rng.integers(0, 2**16, n, dtype=np.uint16),
            rng.choice(np.array([6, 17], np.uint8), n))


def as_rows(cols) -> list[tuple[int, ...]]:
    return list(zip(*(c.tolist() for c in cols)))


def test_flow_hash_emu(benchmark, record):
    cols = tuples(TUPLES)
    hashing.flow_hash(*(c[:4] for c in cols), SEED)       # compile outside the timed calls
    record("flow_hash", "emu", TUPLES, "hashes")
    out = benchmark(hashing.flow_hash, *cols, SEED)
    assert out[:100].tolist() == [ref.flow_hash32(*t, SEED) for t in as_rows(c[:100] for c in cols)]


def test_flow_hash_baseline(benchmark, record):
    rows = as_rows(tuples(BASELINE_TUPLES))
    record("flow_hash", "baseline", BASELINE_TUPLES, "hashes")
    benchmark.pedantic(lambda: [ref.flow_hash32(*t, SEED) for t in rows], rounds=3, iterations=1)


def test_symmetric_flow_hash_emu(benchmark, record):
    cols = tuples(TUPLES)
    hashing.symmetric_flow_hash(*(c[:4] for c in cols), SEED)
    record("symmetric_flow_hash", "emu", TUPLES, "hashes")
    benchmark(hashing.symmetric_flow_hash, *cols, SEED)


def test_symmetric_flow_hash_baseline(benchmark, record):
    rows = as_rows(tuples(BASELINE_TUPLES))
    record("symmetric_flow_hash", "baseline", BASELINE_TUPLES, "hashes")
    benchmark.pedantic(lambda: [ref.symmetric_flow_hash32(*t, SEED) for t in rows], rounds=3, iterations=1)


def test_udp_source_port_emu(benchmark, record):
    hashes = hashing.flow_hash(*tuples(TUPLES), SEED)
    hashing.udp_source_port(hashes[:4], 0, 0)
    record("udp_source_port", "emu", TUPLES, "ports")
    benchmark(hashing.udp_source_port, hashes, 0, 0)


def test_udp_source_port_baseline(benchmark, record):
    hashes = hashing.flow_hash(*tuples(BASELINE_TUPLES), SEED).tolist()
    record("udp_source_port", "baseline", BASELINE_TUPLES, "ports")
    benchmark.pedantic(lambda: [ref.udp_flow_src_port(h, 0, 0) for h in hashes], rounds=3, iterations=1)
