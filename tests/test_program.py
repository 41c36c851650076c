"""kernels.program against its reference (tests/reference/program.py):
random learner logs ([row, slot] arrays with every kind of row, connections
still theirs, taken by another connection, in tables or at indices that do
not exist), the paths' hashes and their comparison with stored paths, the
fingerprints learners log; the wrappers' validation and a bounds-checked run."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import conntrack as ct
from kernels import program
from kernels import replay as rk
from tests.reference import program as ref
from tests.util import run_with_boundscheck

# the columns (a, b, c, fp) a row of each kind uses, as emu.bulk.flowcache has them
USED = np.array([[k in (1, 2, 3, 4, 5, 6), k in (2, 3, 4), k in (2, 3, 4), k == 2] for k in range(8)], np.int64)


def _tables(rng, n_tables):
    """Conntrack tables with a few connections each (random tuples)."""
    out = []
    for _ in range(n_tables):
        t = ct.make_table(16, seed=int(rng.integers(0, 2**32)))
        n = int(rng.integers(1, 10))
        r = lambda d, lo, hi: rng.integers(lo, hi, n).astype(d)  # noqa: E731
        src, dst, sp, dp = r(np.uint32, 1, 2**32), r(np.uint32, 1, 2**32), r(np.uint16, 1, 2**16), r(np.uint16, 1, 2**16)
        proto = rng.choice(np.array([6, 17], np.uint8), n)
        ct.insert(t, r(np.uint16, 0, 3), src, dst, sp, dp, proto, r(np.uint32, 1, 2**32), src, r(np.uint16, 1, 2**16),
                  sp, r(np.uint8, 0, 8), r(np.int64, 1, 100), 5)
        out.append(t.conns)
    return out


def _log(rng, cts, max_rows, n_slots):
    """A log: [row, slot] columns; an OP_CT row names a connection (mostly
    one that exists, with its fingerprint or, now and then, another's)."""
    shape = (max_rows, n_slots)
    kinds = rng.integers(0, 8, shape).astype(np.int64)
    a = rng.integers(-3, 2**40, shape).astype(np.int64)
    b = rng.integers(-3, 2**48, shape).astype(np.int64)
    c = rng.integers(-3, 70, shape).astype(np.int64)
    fp = rng.integers(-2**63, 2**63 - 1, shape, dtype=np.int64)
    for r, s in zip(*np.nonzero(kinds == rk.OP_CT)):
        u = rng.random()
        t = int(rng.integers(0, len(cts) + (1 if u < 0.05 or not cts else 0)))   # now and then no such table
        a[r, s] = t
        if t < len(cts):
            b[r, s] = int(rng.integers(0, len(cts[t]) + (2 if u < 0.1 else 0)))
            if b[r, s] < len(cts[t]):
                rec = cts[t][b[r, s] if rng.random() < 0.97 else int(rng.integers(0, len(cts[t])))]
                fp[r, s] = ref.fingerprint(rec)
    return kinds, a, b, c, fp


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3), st.integers(1, 12), st.integers(1, 40))
def test_gather_equals_reference(seed, n_tables, max_rows, n_slots):
    rng = np.random.default_rng(seed)
    cts = _tables(rng, n_tables)
    log = _log(rng, cts, max_rows, n_slots)
    slots = rng.permutation(n_slots)[:int(rng.integers(0, n_slots + 1))].astype(np.int64)
    fill = rng.integers(0, max_rows + 1, len(slots)).astype(np.int64)
    keep, n_ref, kind, a, b, c, refs = program.gather(*log, slots, fill, USED, tuple(cts))
    w_keep, w_n_ref, w_rows, w_refs = ref.gather(*log, slots.tolist(), fill.tolist(), USED.tolist(), cts)
    assert keep.tolist() == w_keep and n_ref.tolist() == w_n_ref
    assert list(zip(kind.tolist(), a.tolist(), b.tolist(), c.tolist())) == w_rows
    assert refs.tolist() == w_refs
    # the hashes and the comparison with stored paths, over the learners kept
    fill_k = fill[keep]
    got = program.path_hashes(kind, a, b, c, fill_k)
    rows_of = np.split(np.arange(len(kind)), np.cumsum(fill_k)[:-1]) if len(fill_k) else []
    want = [ref.path_hash([w_rows[i] for i in idx]) for idx in rows_of]
    assert [int(x) for x in got] == want
    ops = np.zeros((len(kind) + 8, rk.OPS), np.int64)
    ops[:len(kind), 0], ops[:len(kind), 1], ops[:len(kind), 2], ops[:len(kind), 3] = kind, a, b, c
    first = np.cumsum(fill_k) - fill_k
    start = np.where(rng.random(len(fill_k)) < 0.6, first, rng.integers(-2, len(ops), len(fill_k)))
    n_ops = int(rng.integers(0, len(ops) + 1))
    got = program.differ(ops, n_ops, start, kind, a, b, c, fill_k)
    want = [ref.differ(ops, n_ops, int(st_), [w_rows[i] for i in idx]) for st_, idx in zip(start.tolist(), rows_of)]
    assert got.tolist() == want


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 12), st.integers(0, 30), st.integers(-1, 8))
def test_log_equals_reference(seed, max_rows, n_slots, n, kind):
    """Packets with and without a learner, learners in every state and at
    every depth (full ones fail), values given once or per packet; a kind
    outside the table's writes no column."""
    rng = np.random.default_rng(seed)
    shape = (max_rows, n_slots)
    cols = {name: rng.integers(-5, 5, shape).astype(np.int64) for name in ("kind", "a", "b", "c", "fp")}
    fill = rng.integers(0, max_rows + 1, n_slots).astype(np.int64)
    state = rng.choice(np.array([0, 1, 1, 1, 2, 3], np.int8), n_slots)
    learn = np.full(n + 3, -1, np.int32)
    slots = rng.permutation(n_slots)
    for p in range(n + 3):   # a learner's packet: each slot at most once
        if p < len(slots) and rng.random() < 0.8:
            learn[p] = slots[p]
    idx = rng.permutation(n + 3)[:n].astype(np.int64)
    values = {name: rng.integers(-2**40, 2**40, 1 if rng.random() < 0.4 else n).astype(np.int64)
              for name in ("a", "b", "c", "fp")}
    if n == 0:
        values = {name: np.zeros(1, np.int64) for name in values}
    want = [learn.tolist(), {k: v.tolist() for k, v in cols.items()}, fill.tolist(), state.tolist()]
    ended = ref.log(want[0], idx.tolist(), want[1], want[2], want[3], kind,
                    {k: v.tolist() for k, v in values.items()}, USED.tolist())
    got = program.log(learn, idx, cols["kind"], cols["a"], cols["b"], cols["c"], cols["fp"], fill, state, kind,
                      values["a"], values["b"], values["c"], values["fp"], USED)
    assert got == ended
    assert learn.tolist() == want[0] and fill.tolist() == want[2] and state.tolist() == want[3]
    assert {k: v.tolist() for k, v in cols.items()} == want[1]


def test_log_writes_rows_and_ends_learners():
    """Not vacuous: rows are written where the learner is, a delivery ends it."""
    learn = np.array([0, -1, 1], np.int32)
    cols = [np.zeros((3, 2), np.int64) for _ in range(5)]
    fill, state = np.array([0, 1], np.int64), np.array([1, 1], np.int8)
    one = np.array([9], np.int64)
    assert not program.log(learn, np.arange(3, dtype=np.int64), *cols, fill, state, 2, one, np.array([5, 6, 7]),
                           one, np.array([1, 2, 3]), USED)
    assert cols[0][:, 0].tolist() == [2, 0, 0] and cols[0][:, 1].tolist() == [0, 2, 0]
    assert cols[2][0, 0] == 5 and cols[2][1, 1] == 7 and cols[4][1, 1] == 3 and fill.tolist() == [1, 2]
    assert program.log(learn, np.array([2], np.int64), *cols, fill, state, 7, one, one, one, one, USED)
    assert state.tolist() == [1, 2] and learn.tolist() == [0, -1, -1]
    assert not program.log(learn, np.array([2], np.int64), *cols, fill, state, 1, one, one, one, one, USED)


def test_tuple_words_are_replays():
    """A reference's words are what kernels.replay checks connections against."""
    rng = np.random.default_rng(3)
    conns = _tables(rng, 1)[0]
    live = conns[(conns["status"] & ct.IPS_CONFIRMED) != 0]
    assert len(live)
    assert rk.tuple_words(live).tolist() == [ref.tuple_words(r) for r in live]


def test_fingerprints_equal_reference():
    rng = np.random.default_rng(5)
    conns = _tables(rng, 1)[0]
    idx = np.arange(len(conns), dtype=np.int32)
    assert program.fingerprints(conns, idx).tolist() == [ref.fingerprint(r) for r in conns]
    assert program.fingerprints(conns, idx.astype(np.int64)).tolist() == [ref.fingerprint(r) for r in conns]


def test_equal_rows_equal_hashes_and_no_path_differs_from_itself():
    kind = np.array([1, 2, 7, 1, 2, 7], np.int64)
    a, b, c = np.array([4, 0, 0, 4, 0, 0], np.int64), np.zeros(6, np.int64), np.array([0, 1, 0, 0, 1, 0], np.int64)
    h = program.path_hashes(kind, a, b, c, np.array([3, 3], np.int64))
    assert h[0] == h[1]
    assert program.path_hashes(kind[:3], a[:3] + 1, b[:3], c[:3], np.array([3], np.int64))[0] != h[0]
    ops = np.zeros((3, rk.OPS), np.int64)
    ops[:, 0], ops[:, 1], ops[:, 3] = kind[:3], a[:3], c[:3]
    assert program.differ(ops, 3, np.array([0, 0], np.int64), kind, a, b, c, np.array([3, 3], np.int64)).tolist() \
        == [False, False]
    assert program.differ(ops, 2, np.array([0], np.int64), kind[:3], a[:3], b[:3], c[:3],
                          np.array([3], np.int64)).tolist() == [True]


def test_wrappers_validate():
    z = np.zeros((4, 3), np.int64)
    conns = ct.make_table(4).conns
    with pytest.raises(ValueError, match="kinds"):
        program.gather(z.astype(np.int32), z, z, z, z, np.zeros(1, np.int64), np.zeros(1, np.int64), USED, ())
    with pytest.raises(ValueError, match="col_b"):
        program.gather(z, z, np.zeros((3, 3), np.int64), z, z, np.zeros(1, np.int64), np.zeros(1, np.int64), USED,
                       ())
    with pytest.raises(ValueError, match="slots"):
        program.gather(z, z, z, z, z, np.array([3], np.int64), np.zeros(1, np.int64), USED, ())
    with pytest.raises(ValueError, match="fill"):
        program.gather(z, z, z, z, z, np.array([0], np.int64), np.array([5], np.int64), USED, ())
    with pytest.raises(ValueError, match="cts"):
        program.gather(z, z, z, z, z, np.array([0], np.int64), np.array([1], np.int64), USED, (np.zeros(3),))
    one = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="fill"):
        program.path_hashes(one, one, one, one, np.array([3], np.int64))
    with pytest.raises(ValueError, match="ops"):
        program.differ(np.zeros((2, 4), np.int64), 0, np.zeros(1, np.int64), one, one, one, one,
                       np.array([2], np.int64))
    with pytest.raises(ValueError, match="index"):
        program.fingerprints(conns, np.array([4], np.int64))
    with pytest.raises(ValueError, match="conns"):
        program.fingerprints(np.zeros(4), np.array([0], np.int64))
    learn, fill, state = np.zeros(2, np.int32), np.zeros(3, np.int64), np.ones(3, np.int8)
    with pytest.raises(ValueError, match="learn"):
        program.log(np.zeros(4, np.int32)[::2], np.zeros(1, np.int64), z, z, z, z, z, fill, state, 1, one[:1],
                    one[:1], one[:1], one[:1], USED)
    with pytest.raises(ValueError, match="a: one value"):
        program.log(learn, np.zeros(1, np.int64), z, z, z, z, z, fill, state, 1, one, one[:1], one[:1], one[:1],
                    USED)
    with pytest.raises(ValueError, match="learn: a slot"):
        program.log(learn + 3, np.zeros(1, np.int64), z, z, z, z, z, fill, state, 1, one[:1], one[:1], one[:1],
                    one[:1], USED)
    with pytest.raises(ValueError, match="idx"):
        program.log(learn, np.array([2], np.int64), z, z, z, z, z, fill, state, 1, one[:1], one[:1], one[:1],
                    one[:1], USED)
    assert (fill == 0).all()   # a refused call writes nothing
    with pytest.raises(ValueError, match="used"):
        program.log(learn, np.zeros(1, np.int64), z, z, z, z, z, fill, state, 1, one[:1], one[:1], one[:1],
                    one[:1], USED[:, :3])


def test_kernels_in_bounds_under_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import program
        from tests.test_program import _tables, _log, USED
        done = 0
        for seed in range(30):
            rng = np.random.default_rng(seed)
            cts = _tables(rng, seed % 3)
            log = _log(rng, cts, 8, 20)
            slots = rng.permutation(20)[:12].astype(np.int64)
            fill = rng.integers(0, 9, 12).astype(np.int64)
            keep, n_ref, kind, a, b, c, refs = program.gather(*log, slots, fill, USED, tuple(cts))
            program.path_hashes(kind, a, b, c, fill[keep])
            ops = np.zeros((len(kind) + 2, 5), np.int64)
            program.differ(ops, len(ops), rng.integers(-1, len(ops), len(keep)), kind, a, b, c, fill[keep])
            learn = rng.integers(-1, 20, 30).astype(np.int32)
            state = rng.integers(0, 4, 20).astype(np.int8)
            f = rng.integers(0, 9, 20).astype(np.int64)
            program.log(learn, rng.permutation(30)[:25].astype(np.int64), *log, f, state, int(rng.integers(-1, 9)),
                        *(rng.integers(0, 9, 25).astype(np.int64) for _ in range(4)), USED)
            done += len(keep)
        print("ok", done)
    """)
    assert out.startswith("ok") and int(out.split()[1]) > 0
