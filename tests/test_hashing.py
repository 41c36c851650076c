"""kernels.hashing against the plain-Python reference in tests/reference/hashing.py,
plus the properties flow hashes need: symmetry, seed sensitivity, and uniform
buckets on random and on realistic (structured) traffic."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import hashing
from tests.reference import hashing as ref
from tests.util import run_with_boundscheck

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 2**32 - 1)
SEEDS = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))
# Tuple fields: anything, with the extremes and equal endpoints drawn often.
addresses = st.one_of(U32, st.sampled_from([0, 1, 2**32 - 1, 0x0A000001, 0x0A000002]))
ports = st.one_of(U16, st.sampled_from([0, 1, 53, 80, 0xFFFF]))
tuples = st.tuples(addresses, addresses, ports, ports, st.one_of(U8, st.sampled_from([1, 6, 17])))

ALPHA = 1e-3        # chi-square significance level; every sample below has a fixed seed
N_TUPLES = 1 << 16
BUCKETS = 256


def columns(rows):
    """5 typed columns from a list of (src, dst, sport, dport, proto)."""
    dtypes = (np.uint32, np.uint32, np.uint16, np.uint16, np.uint8)
    if not rows:
        return tuple(np.zeros(0, d) for d in dtypes)
    return tuple(np.array(c, d) for c, d in zip(zip(*rows), dtypes))


# --- chi-square, without scipy ---------------------------------------------------

def chi2_critical(df: int, alpha: float) -> float:
    """Upper `alpha` quantile of chi-square with `df` degrees of freedom, by
    the Wilson-Hilferty cube-root normal approximation."""
    z = NormalDist().inv_cdf(1 - alpha)
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def chi2_statistic(counts: np.ndarray, expected: np.ndarray) -> float:
    return float((((counts - expected) ** 2) / expected).sum())


def assert_uniform(values: np.ndarray, buckets: int, what: str) -> None:
    counts = np.bincount(values, minlength=buckets).astype(float)
    assert len(counts) == buckets
    stat = chi2_statistic(counts, np.full(buckets, len(values) / buckets))
    crit = chi2_critical(buckets - 1, ALPHA)
    assert stat < crit, f"{what}: chi-square {stat:.1f} >= {crit:.1f} (df={buckets - 1}, alpha={ALPHA})"


def test_chi2_critical_matches_tables():
    # Published chi-square table values.
    for df, alpha, table in [(100, 0.001, 149.449), (100, 0.05, 124.342), (10, 0.001, 29.588),
                             (255, 0.05, 293.248)]:
        assert chi2_critical(df, alpha) == pytest.approx(table, rel=0.01)


def test_chi2_check_rejects_a_bad_hash():
    # The checker has teeth: a naive sum of addresses from one /24 piles into few high-byte buckets.
    src = (0x0AF40100 + np.arange(N_TUPLES) % 256).astype(np.uint64)
    naive = ((src + np.uint64(0x0A60000A)) >> np.uint64(24)) & np.uint64(0xFF)
    with pytest.raises(AssertionError, match="chi-square"):
        assert_uniform(naive.astype(np.int64), BUCKETS, "naive")


# --- known values: hash5's semantics stay put ------------------------------------------

def test_golden_hashes():
    assert hashing.hash5(0x0AF40103, 0x0A60000A, 40000, 53, 17, 1) == 0x4DE28438ED572B13
    assert hashing.hash5(0, 0, 0, 0, 0, 0) == 0x2D6EBC23D0537117
    assert ref.hash5(0x0AF40103, 0x0A60000A, 40000, 53, 17, 1) == 0x4DE28438ED572B13
    h = hashing.flow_hash(*columns([(0x0AF40103, 0x0A60000A, 40000, 53, 17)]), 1)
    assert h.dtype == np.uint32 and h.tolist() == [0x4DE28438]


def test_udp_flow_src_port_known_values():
    # Linux's formula by hand: 0x12345678 ^ 0x56780000 = 0x444C5678;
    # 0x444C5678 * 65534 >> 32 = 17483; + 1.
    hashes = np.array([0, 1, 0x12345678, 0x80000000, 0xFFFFFFFF, 0xFFFF0000], np.uint32)
    assert hashing.udp_source_port(hashes, 1, 65535).tolist() == [1, 1, 17484, 32768, 1, 65534]
    # lo >= hi: the local port range, hi never reached
    default = hashing.udp_source_port(hashes, 0, 0)
    assert default.dtype == np.uint16
    assert default.tolist() == [ref.udp_flow_src_port(int(h), 0, 0) for h in hashes]
    assert default.tolist() == hashing.udp_source_port(hashes, 60999, 32768).tolist()
    assert default[0] == 32768 and default.max() < 60999
    assert hashing.udp_source_port(hashes, 4789, 4790).tolist() == [4789] * len(hashes)


# --- against the reference --------------------------------------------------------

@settings(max_examples=300)
@given(tuples, SEEDS)
def test_hash5_and_mix64_match_reference(t, seed):
    assert hashing.hash5(*t, np.uint64(seed)) == ref.hash5(*t, seed)   # from Python: a uint64 seed
    x = (t[0] * t[2] + seed) & ref.MASK64
    assert hashing.mix64(np.uint64(x)) == ref.mix64(x)


@settings(max_examples=200)
@given(st.lists(tuples, max_size=30), SEEDS)
def test_flow_hashes_match_reference(rows, seed):
    cols = columns(rows)
    assert hashing.flow_hash(*cols, seed).tolist() == [ref.flow_hash32(*t, seed) for t in rows]
    assert (hashing.symmetric_flow_hash(*cols, seed).tolist()
            == [ref.symmetric_flow_hash32(*t, seed) for t in rows])


@settings(max_examples=300)
@given(st.lists(U32, max_size=30), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_udp_source_port_matches_reference(hashes, lo, hi):
    out = hashing.udp_source_port(np.array(hashes, np.uint32), lo, hi)
    assert out.tolist() == [ref.udp_flow_src_port(h, lo, hi) for h in hashes]
    low, high = (lo, hi) if lo < hi else ref.LOCAL_PORT_RANGE
    assert all(low <= p < high for p in out.tolist())


def test_zero_is_never_a_flow_hash():
    # No search finds a tuple whose hash5 has a zero high half; the rule itself:
    assert hashing._high_half_not_zero(np.uint64(0)) == 1
    assert hashing._high_half_not_zero(np.uint64(0xFFFFFFFF)) == 1
    assert hashing._high_half_not_zero(np.uint64(5 << 32 | 7)) == 5
    assert hashing._high_half_not_zero(np.uint64(2**64 - 1)) == 2**32 - 1


# --- properties ------------------------------------------------------------------

@settings(max_examples=300)
@given(st.lists(tuples, min_size=1, max_size=30), SEEDS)
def test_symmetric_hash_is_the_same_both_ways(rows, seed):
    src, dst, sport, dport, proto = columns(rows)
    there = hashing.symmetric_flow_hash(src, dst, sport, dport, proto, seed)
    back = hashing.symmetric_flow_hash(dst, src, dport, sport, proto, seed)
    assert there.tolist() == back.tolist()
    # and it is the directed hash of one of the two directions
    fwd = hashing.flow_hash(src, dst, sport, dport, proto, seed)
    rev = hashing.flow_hash(dst, src, dport, sport, proto, seed)
    assert all(s in (f, r) for s, f, r in zip(there.tolist(), fwd.tolist(), rev.tolist()))


def random_tuples(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2**32, n, dtype=np.uint32), rng.integers(0, 2**32, n, dtype=np.uint32),
            rng.integers(0, 2**16, n, dtype=np.uint16), rng.integers(0, 2**16, n, dtype=np.uint16),
            rng.choice(np.array([6, 17], np.uint8), n))


def test_directed_hash_tells_directions_apart():
    src, dst, sport, dport, proto = random_tuples(N_TUPLES, 3)
    fwd = hashing.flow_hash(src, dst, sport, dport, proto, 7)
    rev = hashing.flow_hash(dst, src, dport, sport, proto, 7)
    assert (fwd == rev).sum() <= 2


@pytest.mark.parametrize("seed_a, seed_b", [(0, 1), (1, 2), (1, 1 | 2**63), (2**64 - 1, 2**64 - 2)])
def test_seed_sensitivity(seed_a, seed_b):
    cols = random_tuples(N_TUPLES, 4)
    a = hashing.flow_hash(*cols, seed_a)
    b = hashing.flow_hash(*cols, seed_b)
    assert (a == b).sum() <= 2                     # ~ N / 2**32 expected
    flipped = np.unpackbits((a ^ b).view(np.uint8)).reshape(-1, 32).sum(axis=1)
    assert flipped.mean() == pytest.approx(16, abs=0.1)   # half the bits change (std of mean 0.011)


# --- uniformity: random tuples and what real traffic looks like --------------------------------

def structured_traffic():
    """Tuple sets as traffic produces them: one client's sequential source
    ports, a /24 of pods hitting one Service, a scan of sequential addresses,
    and random tuples. Each has 2**16 tuples."""
    n = N_TUPLES
    i = np.arange(n, dtype=np.int64)
    one = lambda v, dt: np.full(n, v, dt)  # noqa: E731
    yield "sequential source ports", (one(0x0AF40103, np.uint32), one(0x0A60000A, np.uint32),
                                      i.astype(np.uint16), one(80, np.uint16), one(6, np.uint8))
    yield "pods of one /24 to one Service", ((0x0AF40100 + i % 256).astype(np.uint32),
                                             one(0x0A60000A, np.uint32),
                                             (32768 + i // 256).astype(np.uint16), one(53, np.uint16),
                                             one(17, np.uint8))
    yield "sequential destination addresses", (one(0xC0A80001, np.uint32), (0x0A000000 + i).astype(np.uint32),
                                               one(40000, np.uint16), one(443, np.uint16), one(6, np.uint8))
    yield "sequential ports both sides", (one(0x0AF40103, np.uint32), one(0x0AF40207, np.uint32),
                                          (i % 256).astype(np.uint16), (i // 256).astype(np.uint16),
                                          one(17, np.uint8))
    yield "random tuples", random_tuples(n, 5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_flow_hash_buckets_are_uniform(symmetric):
    fn = hashing.symmetric_flow_hash if symmetric else hashing.flow_hash
    for name, cols in structured_traffic():
        h = fn(*cols, 1)
        assert len(np.unique(h)) >= N_TUPLES - 4, name     # distinct tuples, (nearly) distinct hashes
        assert_uniform((h & 0xFF).astype(np.int64), BUCKETS, f"{name}, low byte")
        assert_uniform((h >> 24).astype(np.int64), BUCKETS, f"{name}, high byte")
        assert_uniform((h % 251).astype(np.int64), 251, f"{name}, modulo a prime")


@pytest.mark.parametrize("lo, hi", [(0, 0), (49152, 65535), (1000, 1010), (1, 65535)])
def test_udp_source_ports_are_uniform_in_range(lo, hi):
    for name, cols in structured_traffic():
        ports = hashing.udp_source_port(hashing.flow_hash(*cols, 1), lo, hi).astype(np.int64)
        low, high = (lo, hi) if lo < hi else hashing.LOCAL_PORT_RANGE
        assert ports.min() >= low and ports.max() < high, name
        span = high - low
        bins = min(span, BUCKETS)
        which = (ports - low) * bins // span
        per_bin = np.bincount(np.arange(span) * bins // span, minlength=bins)   # ports in each bin
        counts = np.bincount(which, minlength=bins).astype(float)
        stat = chi2_statistic(counts, len(ports) * per_bin / span)
        assert stat < chi2_critical(bins - 1, ALPHA), f"{name}, ports [{low}, {high}): chi-square {stat:.1f}"


# --- validation --------------------------------------------------------------------

def test_validation():
    src, dst, sport, dport, proto = columns([(1, 2, 3, 4, 6)])
    with pytest.raises(ValueError, match="src"):
        hashing.flow_hash(src.astype(np.int64), dst, sport, dport, proto, 1)
    with pytest.raises(ValueError, match="sport"):
        hashing.flow_hash(src, dst, sport.astype(np.uint32), dport, proto, 1)
    with pytest.raises(ValueError, match="proto"):
        hashing.symmetric_flow_hash(src, dst, sport, dport, proto.astype(np.int8), 1)
    with pytest.raises(ValueError, match="same length"):
        hashing.flow_hash(src, dst, sport, dport, np.zeros(2, np.uint8), 1)
    with pytest.raises(ValueError, match="dimension"):
        hashing.flow_hash(src.reshape(1, 1), dst, sport, dport, proto, 1)
    with pytest.raises(ValueError, match="seed"):
        hashing.flow_hash(src, dst, sport, dport, proto, -1)
    with pytest.raises(ValueError, match="seed"):
        hashing.flow_hash(src, dst, sport, dport, proto, 2**64)
    with pytest.raises(ValueError, match="seed"):
        hashing.flow_hash(src, dst, sport, dport, proto, 1.5)
    with pytest.raises(ValueError, match="hashes"):
        hashing.udp_source_port(np.zeros(1, np.uint64), 0, 0)
    with pytest.raises(ValueError, match="lo"):
        hashing.udp_source_port(np.zeros(1, np.uint32), -1, 0)
    with pytest.raises(ValueError, match="hi"):
        hashing.udp_source_port(np.zeros(1, np.uint32), 0, 65536)
    assert hashing.flow_hash(*columns([]), 0).shape == (0,)
    assert hashing.udp_source_port(np.zeros(0, np.uint32), 0, 0).shape == (0,)


def test_fuzz_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import hashing
        rng = np.random.default_rng(11)
        for n in list(range(0, 40)) + [1000]:
            cols = (rng.integers(0, 2**32, n, dtype=np.uint32), rng.integers(0, 2**32, n, dtype=np.uint32),
                    rng.integers(0, 2**16, n, dtype=np.uint16), rng.integers(0, 2**16, n, dtype=np.uint16),
                    rng.integers(0, 256, n, dtype=np.uint8))
            h = hashing.flow_hash(*cols, int(rng.integers(0, 2**63)))
            s = hashing.symmetric_flow_hash(*cols, 2**64 - 1)
            for lo, hi in [(0, 0), (0, 65535), (65535, 0), (100, 101)]:
                hashing.udp_source_port(h, lo, hi)
                hashing.udp_source_port(s, lo, hi)
        print("ok")
    """)
    assert "ok" in out
