"""Programs from what learners logged (emu.bulk.flowcache compiles with
these): each delivered learner's rows gathered from the log, its
connections checked, its path told apart from the others by a hash.

A learner logged rows (kind, a, b, c, fp) into column `slot` of [row, slot]
arrays, `fill` of them. For kernels.replay its rows become a path (kind, a,
b, c: shared by every flow whose rows are the same) and references (per
OP_CT row: the connection and its tuples as four words, `tuple_words`; per
OP_CAP row: filled in by the caller, which holds the capture templates).

- `log`: a row for each learner among a group of packets at a hop.
- `fingerprints`: what a learner logs of a connection it stepped: a hash
  of the record's zone, protocol and original tuple.
- `gather`: the learners whose every OP_CT row's connection is still the
  one it stepped (its record's fingerprint is the logged one), in order; their rows one after the
  other, with the columns their kind does not use as 0 and an OP_CT row's
  connection (b) moved to its reference; their references in row order.
- `path_hashes`: a 64-bit hash of each learner's rows.
- `differ`: whether a learner's rows are not those of the path at `start`.

References: tests/reference/program.py.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels import conntrack as ct
from kernels._jit import AHEAD, jit, prefetch
from kernels.replay import OP_CAP, OP_CT, OP_DELIVER, OPS, REFS

MIX = np.uint64(0xBF58476D1CE4E5B9)
FREE, LEARNING, DELIVERED, FAILED = 0, 1, 2, 3   # a learner slot's state
OP_FAIL = 0                                        # learning only: a learner left the common case


@jit
def _fingerprint(rec):
    """One record's fingerprint (see `fingerprints`)."""
    h = (np.uint64(rec.orig_src) << np.uint64(32)) | np.uint64(rec.orig_dst)
    w = (np.uint64(rec.orig_sport) << np.uint64(16)) | np.uint64(rec.orig_dport)
    h = (h ^ (h >> np.uint64(29)) ^ w) * MIX
    w = (np.uint64(rec.proto) << np.uint64(16)) | np.uint64(rec.zone)
    h = (h ^ (h >> np.uint64(29)) ^ w) * MIX
    return np.int64(h ^ (h >> np.uint64(32)))


def _log_arrays(check, kinds, *cols):
    """The log's [row, slot] int64 arrays, checked by `check` (_check.array or .updated), of one shape."""
    kinds = check(kinds, "kinds", np.int64, ndim=2)
    out = [kinds]
    for x, name in zip(cols, ("col_a", "col_b", "col_c", "col_fp")):
        x = check(x, name, np.int64, ndim=2)
        if x.shape != kinds.shape:
            raise ValueError(f"{name}: expected the shape of kinds {kinds.shape}, got {x.shape}")
        out.append(x)
    return out


def _used(used) -> np.ndarray:
    used = _check.array(used, "used", np.int64, ndim=2)
    if used.shape[1] != 4:
        raise ValueError("used: expected 4 columns (a, b, c, fp)")
    return used


BAD_IDX, BAD_SLOT = -1, -2   # _log's answers for arguments the wrapper refuses


@jit
def _log(learn, idx, kinds, col_a, col_b, col_c, col_fp, fill, state, kind, a, b, c, fp, used):
    # the arguments first, nothing written yet (one pass here is cheaper than numpy's three)
    for i in range(len(idx)):
        if idx[i] < 0 or idx[i] >= len(learn):
            return BAD_IDX
        if learn[idx[i]] >= len(fill):
            return BAD_SLOT
    ended = False
    ends = kind == OP_DELIVER or kind == OP_FAIL
    u = 0 <= kind < used.shape[0]
    for i in range(len(idx)):
        s = learn[idx[i]]
        if s < 0 or state[s] != LEARNING:
            continue
        r = fill[s]
        if r >= kinds.shape[0]:       # a path this long is not cached
            state[s] = FAILED
            learn[idx[i]] = -1
            ended = True
            continue
        kinds[r, s] = kind
        if u and used[kind, 0]:
            col_a[r, s] = a[i if len(a) > 1 else 0]
        if u and used[kind, 1]:
            col_b[r, s] = b[i if len(b) > 1 else 0]
        if u and used[kind, 2]:
            col_c[r, s] = c[i if len(c) > 1 else 0]
        if u and used[kind, 3]:
            col_fp[r, s] = fp[i if len(fp) > 1 else 0]
        fill[s] = r + 1
        if ends:
            state[s] = DELIVERED if kind == OP_DELIVER else FAILED
            learn[idx[i]] = -1
            ended = True
    return 1 if ended else 0


def log(learn, idx, kinds, col_a, col_b, col_c, col_fp, fill, state, kind: int, a, b, c, fp, used) -> bool:
    """A row (kind, a, b, c, fp: arrays of one value each or one per packet)
    at the next place of each learner among packets idx (learn[idx]: its
    slot, or -1; only a slot in state LEARNING logs); the columns a row of
    that kind does not use (used[kind]: a, b, c, fp) are left as they were. A learner whose rows are full fails; a delivery or failure
    row ends it (DELIVERED, FAILED). Either way its packet stops learning
    (learn -1). Returns whether a learner ended."""
    learn = _check.updated(learn, "learn", np.int32)
    idx = _check.array(idx, "idx", np.int64)
    kinds, *cols = _log_arrays(_check.updated, kinds, col_a, col_b, col_c, col_fp)
    fill = _check.updated(fill, "fill", np.int64)
    state = _check.updated(state, "state", np.int8)
    _check.same_length(fill=fill, state=state)
    if kinds.shape[1] != len(fill):
        raise ValueError("kinds: one column per learner slot")
    values = [_check.array(x, name, np.int64) for x, name in ((a, "a"), (b, "b"), (c, "c"), (fp, "fp"))]
    for x, name in zip(values, ("a", "b", "c", "fp")):
        if len(x) not in (1, len(idx)):
            raise ValueError(f"{name}: one value, or one per packet")
    used = _used(used)
    got = _log(learn, idx, kinds, *cols, fill, state, np.int64(kind), *values, used)
    if got == BAD_IDX:
        raise ValueError(f"idx: values must be in [0, {len(learn) - 1}]")
    if got == BAD_SLOT:
        raise ValueError("learn: a slot past the learners")
    return bool(got)


@jit
def _fingerprints(conns, index, out):
    for k in range(len(index)):
        out[k] = _fingerprint(conns[index[k]])


def fingerprints(conns, index) -> np.ndarray:
    """What a learner logs of the connections conns[index] it stepped (int64
    each): a 64-bit hash of their zone, protocol and original tuple, so a
    connection is told from another that took its slot by the time the
    program is made (the reply tuple is not in it: a SYN's NAT binding
    changes it after the conntrack hook logged the entry)."""
    if not isinstance(conns, np.ndarray) or conns.dtype != ct.CONN_DTYPE or conns.ndim != 1:
        raise ValueError("conns: expected a conntrack table's conns (CONN_DTYPE records)")
    index = _check.array(index, "index", np.int32) if getattr(index, "dtype", None) == np.int32 \
        else _check.array(index, "index", np.int64)
    _check.in_range(index, "index", 0, len(conns) - 1)
    out = np.empty(len(index), np.int64)
    _fingerprints(conns, index, out)
    return out


@jit
def _gather(kinds, col_a, col_b, col_c, col_fp, slots, fill, used, cts, n_cts, keep, n_ref, kind, a, b, c, refs):
    # row by row over the learners, not learner by learner: the log is [row, slot], so a
    # row of learners in slot order is one run of memory (a learner's rows are far apart)
    n = len(slots)
    good = np.ones(n, np.bool_)
    refs_of = np.zeros(n, np.int64)
    deepest = 0
    for g in range(n):
        deepest = max(deepest, fill[g])
    for r in range(deepest):
        for g in range(n):
            if g + AHEAD < n and r < fill[g + AHEAD]:   # the record a learner AHEAD on stepped here
                q = slots[g + AHEAD]
                t = col_a[r, q]
                if kinds[r, q] == OP_CT and 0 <= t < n_cts:
                    prefetch(cts[t], col_b[r, q])
            if r >= fill[g]:
                continue
            s = slots[g]
            k = kinds[r, s]
            if k == OP_CT:
                t = col_a[r, s]
                conn = col_b[r, s]
                if t < 0 or t >= n_cts or conn < 0 or conn >= len(cts[t]) \
                        or _fingerprint(cts[t][conn]) != col_fp[r, s]:
                    good[g] = False
            if k == OP_CT or k == OP_CAP:
                refs_of[g] += 1
    row_at = np.empty(n, np.int64)
    ref_at = np.empty(n, np.int64)
    n_keep = n_rows = n_refs = 0
    for g in range(n):
        if good[g]:
            keep[n_keep], n_ref[n_keep] = g, refs_of[g]
            row_at[g], ref_at[g] = n_rows, n_refs
            n_keep += 1
            n_rows += fill[g]
            n_refs += refs_of[g]
    for r in range(deepest):
        for g in range(n):
            if r >= fill[g] or not good[g]:
                continue
            s = slots[g]
            k = kinds[r, s]
            u = 0 <= k < used.shape[0]
            at = row_at[g] + r
            kind[at] = k
            a[at] = col_a[r, s] if u and used[k, 0] else 0
            b[at] = col_b[r, s] if u and used[k, 1] else 0
            c[at] = col_c[r, s] if u and used[k, 2] else 0
            if k == OP_CT:
                q = ref_at[g]
                rec = cts[col_a[r, s]][col_b[r, s]]
                refs[q, 0] = b[at]
                refs[q, 1] = np.int64(rec.zone) | (np.int64(rec.proto) << 16)
                refs[q, 2] = np.int64(rec.orig_src) | (np.int64(rec.orig_dst) << 32)
                refs[q, 3] = np.int64(rec.orig_sport) | (np.int64(rec.orig_dport) << 16) \
                    | (np.int64(rec.reply_src) << 32)
                refs[q, 4] = np.int64(rec.reply_dst) | (np.int64(rec.reply_sport) << 32) \
                    | (np.int64(rec.reply_dport) << 48)
                b[at] = 0          # the connection is the flow's own: in its reference
                ref_at[g] = q + 1
            elif k == OP_CAP:
                q = ref_at[g]
                for j in range(REFS):
                    refs[q, j] = 0   # the caller's: the template's ports
                ref_at[g] = q + 1
    return n_keep, n_rows, n_refs


def gather(kinds, col_a, col_b, col_c, col_fp, slots, fill, used, cts: tuple):
    """The learners `slots` (with `fill` rows each) whose connections are
    still theirs: (keep: their positions in slots, n_ref: their references
    each, kind, a, b, c: their rows one after the other, refs: [OP_CT and
    OP_CAP rows, REFS] in row order).
    The log is [row, slot] int64 arrays; used[kind, j]: whether a row of
    that kind uses column a, b, c, fp (j = 0..3); cts: the conntrack tables'
    `conns` by table number (a of an OP_CT row). A learner whose OP_CT row
    names a table or connection that does not exist is left out."""
    kinds, *cols = _log_arrays(_check.array, kinds, col_a, col_b, col_c, col_fp)
    slots = _check.array(slots, "slots", np.int64)
    fill = _check.array(fill, "fill", np.int64)
    _check.same_length(slots=slots, fill=fill)
    _check.in_range(slots, "slots", 0, kinds.shape[1] - 1)
    _check.in_range(fill, "fill", 0, kinds.shape[0])
    used = _used(used)
    for k, conns in enumerate(cts):
        if not isinstance(conns, np.ndarray) or conns.dtype != ct.CONN_DTYPE or conns.ndim != 1:
            raise ValueError(f"cts[{k}]: expected a conntrack table's conns (CONN_DTYPE records)")
    n_cts = len(cts)
    cts = tuple(cts) if cts else (ct._aligned_zeros(1, ct.CONN_DTYPE),)  # numba wants a non-empty tuple
    total = int(fill.sum())
    keep, n_ref = np.empty(len(slots), np.int64), np.empty(len(slots), np.int64)
    kind, a, b, c = (np.empty(total, np.int64) for _ in range(4))
    refs = np.empty((total, REFS), np.int64)
    n_keep, n_rows, n_refs = _gather(kinds, *cols, slots, fill, used, cts, np.int64(n_cts), keep, n_ref, kind, a, b,
                                     c, refs)
    return keep[:n_keep], n_ref[:n_keep], kind[:n_rows], a[:n_rows], b[:n_rows], c[:n_rows], refs[:n_refs]


@jit
def _path_hashes(kind, a, b, c, fill, out):
    at = 0
    for g in range(len(fill)):
        total = np.uint64(0)
        for r in range(fill[g]):
            h = np.uint64(r) * MIX
            for v in (kind[at], a[at], b[at], c[at]):
                h = (h ^ (h >> np.uint64(29)) ^ np.uint64(v)) * MIX
            total += h ^ (h >> np.uint64(32))
            at += 1
        out[g] = total ^ (np.uint64(fill[g]) * MIX)


def path_hashes(kind, a, b, c, fill) -> np.ndarray:
    """A 64-bit hash (uint64) of each learner's rows (columns kind, a, b, c;
    `fill` rows a learner, one learner after the other): each row hashed
    with its place in the path, the rows' hashes summed, the length mixed in."""
    cols = [_check.array(x, name, np.int64) for x, name in ((kind, "kind"), (a, "a"), (b, "b"), (c, "c"))]
    _check.same_length(kind=cols[0], a=cols[1], b=cols[2], c=cols[3])
    fill = _check.array(fill, "fill", np.int64)
    if len(fill) and (fill.min() < 0 or int(fill.sum()) != len(cols[0])):
        raise ValueError("fill: the learners' rows, as many in all as the columns hold")
    out = np.empty(len(fill), np.uint64)
    _path_hashes(*cols, fill, out)
    return out


@jit
def _differ(ops, n_ops, start, kind, a, b, c, fill, out):
    at = 0
    for g in range(len(fill)):
        s = start[g]
        bad = s < 0 or s + fill[g] > n_ops
        for r in range(fill[g]):
            if not bad:
                p = s + r
                bad = ops[p, 0] != kind[at] or ops[p, 1] != a[at] or ops[p, 2] != b[at] or ops[p, 3] != c[at]
            at += 1
        out[g] = bad


def differ(ops, n_ops: int, start, kind, a, b, c, fill) -> np.ndarray:
    """Per learner (`fill` rows each, one after the other in kind, a, b, c):
    whether its rows are not the path's at ops[start] (columns 0-3; a path
    past the first n_ops rows, or a start < 0, is not theirs)."""
    ops = _check.array(ops, "ops", np.int64, ndim=2)
    if ops.shape[1] != OPS:
        raise ValueError(f"ops: expected {OPS} columns")
    n_ops = _check.integer(n_ops, "n_ops", 0, len(ops))
    cols = [_check.array(x, name, np.int64) for x, name in ((kind, "kind"), (a, "a"), (b, "b"), (c, "c"))]
    _check.same_length(kind=cols[0], a=cols[1], b=cols[2], c=cols[3])
    start = _check.array(start, "start", np.int64)
    fill = _check.array(fill, "fill", np.int64)
    _check.same_length(start=start, fill=fill)
    if len(fill) and (fill.min() < 0 or int(fill.sum()) != len(cols[0])):
        raise ValueError("fill: the learners' rows, as many in all as the columns hold")
    out = np.empty(len(fill), np.bool_)
    _differ(ops, np.int64(n_ops), start, *cols, fill, out)
    return out
