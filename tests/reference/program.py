"""Plain-Python reference for kernels.program: one learner at a time, with
Python ints (64-bit arithmetic by masking), over conntrack records read
field by field."""
from __future__ import annotations

MASK = (1 << 64) - 1
MIX = 0xBF58476D1CE4E5B9
OP_CT, OP_CAP = 2, 6
REFS = 5


def _signed(x: int) -> int:
    x &= MASK
    return x - (1 << 64) if x >> 63 else x


def _mix(h: int, word: int) -> int:
    return ((h ^ (h >> 29) ^ (word & MASK)) * MIX) & MASK


def fingerprint(rec) -> int:
    h = (int(rec["orig_src"]) << 32) | int(rec["orig_dst"])
    h = _mix(h, (int(rec["orig_sport"]) << 16) | int(rec["orig_dport"]))
    h = _mix(h, (int(rec["proto"]) << 16) | int(rec["zone"]))
    return _signed(h ^ (h >> 32))


def tuple_words(rec) -> list[int]:
    """The record's bytes 0-31 as four little-endian words, the state and
    status (and padding) of word 0 left out."""
    f = {k: int(rec[k]) for k in rec.dtype.names}
    return [_signed(f["zone"] | f["proto"] << 16),
            _signed(f["orig_src"] | f["orig_dst"] << 32),
            _signed(f["orig_sport"] | f["orig_dport"] << 16 | f["reply_src"] << 32),
            _signed(f["reply_dst"] | f["reply_sport"] << 32 | f["reply_dport"] << 48)]


def gather(kinds, col_a, col_b, col_c, col_fp, slots, fill, used, cts):
    """(keep, n_ref, rows [(kind, a, b, c)], refs [[REFS ints]]) as kernels.program.gather."""
    keep, n_ref, rows, refs = [], [], [], []
    for g, (s, n) in enumerate(zip(slots, fill)):
        mine = [(int(kinds[r, s]), int(col_a[r, s]), int(col_b[r, s]), int(col_c[r, s]), int(col_fp[r, s]))
                for r in range(n)]
        ok = True
        for k, a, b, _, fp in mine:
            if k == OP_CT and not (0 <= a < len(cts) and 0 <= b < len(cts[a]) and fingerprint(cts[a][b]) == fp):
                ok = False
        if not ok:
            continue
        keep.append(g)
        n_ref.append(sum(k in (OP_CT, OP_CAP) for k, *_ in mine))
        for k, a, b, c, _ in mine:
            u = used[k] if 0 <= k < len(used) else (0, 0, 0)
            row = [k, a if u[0] else 0, b if u[1] else 0, c if u[2] else 0]
            if k == OP_CT:
                refs.append([row[2], *tuple_words(cts[a][b])])
                row[2] = 0
            elif k == OP_CAP:
                refs.append([0] * REFS)
            rows.append(tuple(row))
    return keep, n_ref, rows, refs


def path_hash(rows) -> int:
    """The hash of one learner's rows (kind, a, b, c), unsigned."""
    total = 0
    for r, row in enumerate(rows):
        h = (r * MIX) & MASK
        for v in row:
            h = _mix(h, v)
        total = (total + (h ^ (h >> 32))) & MASK
    return total ^ ((len(rows) * MIX) & MASK)


def differ(ops, n_ops, start, rows) -> bool:
    if start < 0 or start + len(rows) > n_ops:
        return True
    return any(tuple(int(x) for x in ops[start + r, :4]) != tuple(row) for r, row in enumerate(rows))


FREE, LEARNING, DELIVERED, FAILED = 0, 1, 2, 3
OP_FAIL, OP_DELIVER = 0, 7


def log(learn, idx, cols, fill, state, kind, values, used) -> bool:
    """kernels.program.log over lists: cols {name: [row][slot] list}, values
    {name: list of one value or one per packet}; updates learn, cols, fill,
    state; returns whether a learner ended."""
    ended = False
    rows = len(cols["kind"])
    for i, p in enumerate(idx):
        s = learn[p]
        if s < 0 or state[s] != LEARNING:
            continue
        r = fill[s]
        if r >= rows:
            state[s], learn[p], ended = FAILED, -1, True
            continue
        cols["kind"][r][s] = kind
        for j, name in enumerate(("a", "b", "c", "fp")):
            if 0 <= kind < len(used) and used[kind][j]:
                v = values[name]
                cols[name][r][s] = v[i] if len(v) > 1 else v[0]
        fill[s] = r + 1
        if kind in (OP_DELIVER, OP_FAIL):
            state[s] = DELIVERED if kind == OP_DELIVER else FAILED
            learn[p], ended = -1, True
    return ended
