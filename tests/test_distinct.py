"""kernels.distinct against tests/reference/distinct.py and numpy's unique along rows."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import distinct
from tests.reference import distinct as ref
from tests.util import run_with_boundscheck

U64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(U64, U64), max_size=200), st.integers(1, 6))
def test_pairs_equal_the_reference(items, few):
    # few distinct keys repeated (the use), and any keys (collisions, extremes)
    rows = items + [items[i % len(items)] for i in range(0, 3 * len(items), few)] if items else []
    a = np.array([r[0] for r in rows], np.uint64)
    c = np.array([r[1] for r in rows], np.uint64)
    keys, inverse = distinct.pairs(a, c)
    want_keys, want_inverse = ref.pairs([r[0] for r in rows], [r[1] for r in rows])
    assert [tuple(k) for k in keys.tolist()] == want_keys
    assert inverse.tolist() == want_inverse
    assert keys.dtype == np.uint64 and inverse.dtype == np.int64


def test_pairs_as_numpy_unique_on_a_burst():
    rng = np.random.default_rng(7)
    a = rng.choice(np.array([5, 2**63 + 1, 7], np.uint64), 20_000)
    c = rng.choice(np.array([80, 443], np.uint64), 20_000)
    keys, inverse = distinct.pairs(a, c)
    want, want_inverse = np.unique(np.stack([a, c], axis=1), axis=0, return_inverse=True)
    assert (keys == want).all() and (inverse == want_inverse.reshape(-1)).all()
    # more keys than are hashed (sorted instead), repeated; and just within
    for n_keys in (distinct.MAX_HASHED + 1, distinct.MAX_HASHED):
        pool = rng.integers(0, 2**64, n_keys, dtype=np.uint64)
        a = np.concatenate([pool, rng.choice(pool, 3_000)])
        c = a % np.uint64(3)
        keys, inverse = distinct.pairs(a, c)
        want, want_inverse = np.unique(np.stack([a, c], axis=1), axis=0, return_inverse=True)
        assert (keys == want).all() and (inverse == want_inverse.reshape(-1)).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2**63, 2**63 - 1), max_size=100), st.integers(1, 5))
def test_values_equal_numpy_unique(xs, repeat):
    x = np.array(xs * repeat, np.int64)
    assert np.array_equal(distinct.values(x), np.unique(x))


def test_pairs_validates():
    with pytest.raises(ValueError, match="a: expected dtype uint64"):
        distinct.pairs(np.zeros(2, np.int64), np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match="same length"):
        distinct.pairs(np.zeros(2, np.uint64), np.zeros(3, np.uint64))
    keys, inverse = distinct.pairs(np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    assert keys.shape == (0, 2) and len(inverse) == 0


def test_fuzz_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import distinct
        rng = np.random.default_rng(3)
        for n in list(range(0, 40)) + [1000, 4096]:
            for top in (1, 3, 2**64 - 1):
                a = rng.integers(0, top, n, dtype=np.uint64, endpoint=True)
                keys, inverse = distinct.pairs(a, a[::-1].copy())
                assert (keys[inverse, 0] == a).all()
        print("ok")
    """)
    assert out.strip() == "ok"
