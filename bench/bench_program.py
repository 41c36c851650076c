"""The flow cache's learning and compiling kernels (kernels.program) against
tests/reference/program.py (what one would write without numba), on a log
shaped as a new-connection run leaves it: 20,000 learners of 17 rows, four
of them conntrack rows naming live connections. No issue target; they are
part of every new connection's cost (bench_e2e)."""
from __future__ import annotations

import numpy as np

from bench.conftest import size
from kernels import conntrack as ct
from kernels import program
from kernels.replay import OP_CT, OP_DELIVER, OP_LINK
from tests.reference import program as ref

N = size(20_000, 200)
BASELINE_N = size(1_000, 20)
ROWS = 17
USED = np.array([[k in (1, 2, 3, 4, 5, 6), k in (2, 3, 4), k in (2, 3, 4), k == 2] for k in range(8)], np.int64)


def _log(n):
    t = ct.make_table(4 * n, seed=1)
    r = np.arange(4 * n)
    z = np.zeros(4 * n, np.uint16)
    ins = ct.insert(t, z, (r + 1).astype(np.uint32), np.full(4 * n, 7, np.uint32), (r % 60000).astype(np.uint16),
                    np.full(4 * n, 80, np.uint16), np.full(4 * n, 6, np.uint8), np.full(4 * n, 7, np.uint32),
                    (r + 1).astype(np.uint32), np.full(4 * n, 80, np.uint16), (r % 60000).astype(np.uint16),
                    np.ones(4 * n, np.uint8), np.full(4 * n, 10**9, np.int64), 0)
    kinds = np.full((48, n), OP_LINK, np.int64)
    kinds[ROWS - 1] = OP_DELIVER
    a, b, c, fp = (np.zeros((48, n), np.int64) for _ in range(4))
    a[:ROWS] = np.arange(ROWS)[:, None]
    for j, row in enumerate((2, 6, 9, 13)):   # four conntrack hops a path
        kinds[row] = OP_CT
        a[row] = 0
        b[row] = ins.conn[j * n:(j + 1) * n]
        c[row] = j % 2
        fp[row] = program.fingerprints(t.conns, ins.conn[j * n:(j + 1) * n])
    return (kinds, a, b, c, fp), np.arange(n, dtype=np.int64), np.full(n, ROWS, np.int64), (t.conns,)


def _compile(log, slots, fill, cts):
    keep, n_ref, kind, a, b, c, refs = program.gather(*log, slots, fill, USED, cts)
    program.path_hashes(kind, a, b, c, fill[keep])


def test_compile_emu(benchmark, record):
    args = _log(N)
    _compile(*args)
    record("flow cache: compile learners (gather, check, hash)", "emu", N, "learners")
    benchmark(_compile, *args)


def test_compile_reference(benchmark, record):
    log, slots, fill, cts = _log(BASELINE_N)

    def run():
        keep, _, rows, _ = ref.gather(*log, slots.tolist(), fill.tolist(), USED.tolist(), cts)
        at = 0
        for g in keep:
            ref.path_hash(rows[at:at + fill[g]])
            at += fill[g]
    record("flow cache: compile learners (gather, check, hash)", "baseline", BASELINE_N, "learners")
    benchmark(run)


def _log_rows(cols, learn, idx, fill, state, values):
    fill[:] = 0
    state[:] = program.LEARNING
    for kind in (OP_LINK, OP_LINK, OP_CT, OP_LINK):
        program.log(learn, idx, *cols, fill, state, kind, *values, USED)


def test_log_emu(benchmark, record):
    cols = [np.zeros((48, N), np.int64) for _ in range(5)]
    learn, idx = np.arange(N, dtype=np.int32), np.arange(N, dtype=np.int64)
    fill, state = np.zeros(N, np.int64), np.zeros(N, np.int8)
    values = [np.arange(N, dtype=np.int64)] * 4
    _log_rows(cols, learn, idx, fill, state, values)
    record("flow cache: learners log a row", "emu", 4 * N, "rows")
    benchmark(_log_rows, cols, learn, idx, fill, state, values)


def test_log_reference(benchmark, record):
    n = BASELINE_N
    cols = {name: [[0] * n for _ in range(48)] for name in ("kind", "a", "b", "c", "fp")}
    values = {name: list(range(n)) for name in ("a", "b", "c", "fp")}

    def run():
        fill, state = [0] * n, [program.LEARNING] * n
        for kind in (OP_LINK, OP_LINK, OP_CT, OP_LINK):
            ref.log(list(range(n)), list(range(n)), cols, fill, state, kind, values, USED.tolist())
    record("flow cache: learners log a row", "baseline", 4 * n, "rows")
    benchmark(run)
