"""Distinct (a, c) pairs of a burst (kernels.distinct.pairs), against what
one would call instead: numpy's unique along the rows of the stacked
columns. The burst is a new-connection benchmark's: 20,000 first packets
over 4 keys (two clients x two backends), and the same count of all-
distinct keys."""
from __future__ import annotations

import numpy as np
import pytest

from bench.conftest import size
from kernels import distinct

N = size(20_000, 500)


def burst(keys: int):
    rng = np.random.default_rng(4)
    if keys == 4:
        src = rng.choice(np.array([0x0AF40002, 0x0AF40003], np.uint64), N)
        dst = rng.choice(np.array([0x0AF40102, 0x0AF40103], np.uint64), N)
        return (src << np.uint64(32)) | dst, np.full(N, (6 << 16) | 80, np.uint64)
    return rng.integers(0, 2**64, N, dtype=np.uint64), rng.integers(0, 2**64, N, dtype=np.uint64)


@pytest.mark.parametrize("keys", [4, "all"])
def test_pairs_emu(benchmark, record, keys):
    a, c = burst(keys)
    distinct.pairs(a[:8], c[:8])   # compile outside the timed calls
    record(f"distinct pairs, {keys} keys", "emu", N, "items")
    got, inverse = benchmark(distinct.pairs, a, c)
    want, want_inverse = np.unique(np.stack([a, c], axis=1), axis=0, return_inverse=True)
    assert (got == want).all() and (inverse == want_inverse.reshape(-1)).all()


@pytest.mark.parametrize("keys", [4, "all"])
def test_pairs_baseline(benchmark, record, keys):
    a, c = burst(keys)
    record(f"distinct pairs, {keys} keys", "baseline", N, "items")
    benchmark(lambda: np.unique(np.stack([a, c], axis=1), axis=0, return_inverse=True))
