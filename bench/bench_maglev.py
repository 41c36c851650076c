"""Maglev table build and lookup, against the plain-Python Pseudocode 1 and
lookup of tests/reference/maglev.py (what one would write without numba)."""
from __future__ import annotations

import numpy as np

from bench.conftest import size
from kernels import maglev
from tests.reference import maglev as ref

BACKENDS = size(1000, 10)
TABLE_SIZE = size(65537, 1009)
LOOKUPS = size(10_000_000, 10_000)
BASELINE_LOOKUPS = size(500_000, 1_000)


def backend_keys() -> np.ndarray:
    rng = np.random.default_rng(42)
    return np.unique(rng.integers(0, 2**64 - 1, BACKENDS * 2, dtype=np.uint64, endpoint=True))[:BACKENDS]


def balance(table: np.ndarray) -> str:
    counts = np.bincount(table, minlength=BACKENDS)
    return f"{counts.max() / counts.mean():.4f}"


def test_build_emu(benchmark, record):
    keys = backend_keys()
    table = maglev.build(keys, TABLE_SIZE)  # compile outside the timed calls
    record(f"maglev build {BACKENDS}x{TABLE_SIZE}", "emu", 1, "tables",
           target_seconds=0.002, balance=balance(table))
    benchmark(maglev.build, keys, TABLE_SIZE)


def test_build_baseline(benchmark, record):
    keys = [int(k) for k in backend_keys()]
    record(f"maglev build {BACKENDS}x{TABLE_SIZE}", "baseline", 1, "tables")
    table = benchmark.pedantic(ref.populate, args=(keys, TABLE_SIZE), rounds=3, iterations=1)
    assert table == maglev.build(backend_keys(), TABLE_SIZE).tolist()


def flow_hashes(n: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True)


def test_lookup_emu_uint64(benchmark, record):
    table = maglev.build(backend_keys(), TABLE_SIZE)
    hashes = flow_hashes(LOOKUPS, np.uint64)
    maglev.lookup(table, hashes[:16])
    record("maglev lookup", "emu", LOOKUPS, "lookups", target_rate=200e6, hashes="uint64")
    out = benchmark(maglev.lookup, table, hashes)
    assert np.array_equal(out[:1000], table[hashes[:1000] % np.uint64(TABLE_SIZE)])


def test_lookup_emu_uint32(benchmark, record):
    table = maglev.build(backend_keys(), TABLE_SIZE)
    hashes = flow_hashes(LOOKUPS, np.uint32)
    maglev.lookup(table, hashes[:16])
    record("maglev lookup", "emu", LOOKUPS, "lookups", target_rate=200e6, hashes="uint32")
    benchmark(maglev.lookup, table, hashes)


def test_lookup_baseline(benchmark, record):
    table = maglev.build(backend_keys(), TABLE_SIZE).tolist()
    hashes = flow_hashes(BASELINE_LOOKUPS, np.uint64).tolist()
    record("maglev lookup", "baseline", BASELINE_LOOKUPS, "lookups")
    benchmark.pedantic(ref.lookup, args=(table, hashes), rounds=3, iterations=1)
