"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4).

A Maglev table is an int32 array of prime length M: slot j holds the index of
the backend that flows hashing to j go to (-1: no backend). A lookup is
`table[flow_hash % M]`; the table is rebuilt whenever the backend set changes,
and Maglev's fill order keeps most slots on the same backend across a change.

Backend permutations. Backend i with key k gets two hashes of its key,

    h1 = mix64(k ^ OFFSET_SEED)      OFFSET_SEED = 0x6A09E667F3BCC908
    h2 = mix64(k ^ SKIP_SEED)        SKIP_SEED   = 0xBB67AE8584CAA73B

(`kernels.hashing.mix64` is murmur3's fmix64; the seeds are SHA-512's first two
initial hash words, sqrt(2) and sqrt(3), nothing up the sleeve), then

    offset = h1 % M,   skip = h2 % (M - 1) + 1,
    permutation[i][j] = (offset + j * skip) % M.

M prime and 1 <= skip < M make each row a permutation of all M slots. Rows are
never materialised (the paper's N x M matrix is 256 MB at N = 1,000 and
M = 65,537): each backend keeps its current position and steps it by `skip`
modulo M, which is `(offset + j * skip) % M` for its next j.

Filling (Pseudocode 1). In rounds, backends take turns in the order of
`backend_keys`; on its turn a backend walks its permutation to its first free
slot and takes it; the build ends when all M slots are taken. Every backend
therefore owns floor(M/N) or ceil(M/N) slots: max/mean <= 1 + N/M. The table
depends on the key order (as in the paper and Linux IPVS `mh`, whose turn
order is the order destinations were added); pass sorted keys for a table
that depends only on the key set, as Cilium does.

Weights follow Katran's MaglevHashV2: in every round each backend adds its
weight to a credit and takes a turn only while its credit reaches the largest
weight, which it then pays. After r rounds backend i has had
floor(r * w_i / w_max) turns, so its share of slots is w_i / sum(w) to within
about one slot; weight 0 never gets a turn. With equal weights every backend
takes a turn every round, which is exactly Pseudocode 1, so `build` is
`build_weighted` with all weights 1.

Lookups reduce a 64-bit hash modulo M with a Barrett reduction by a
precomputed reciprocal (`reciprocal(M)`; four 32x32 -> 64 bit partial products
stand in for the 64 x 64 -> 128 bit multiply-high numba lacks), which is exact
(see `mod_by`) and here ~1.5x faster than a hardware divide by a runtime M.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels._jit import jit
from kernels.hashing import mix64

OFFSET_SEED = np.uint64(0x6A09E667F3BCC908)
SKIP_SEED = np.uint64(0xBB67AE8584CAA73B)
MAX_TABLE_SIZE = 2**31 - 1  # a prime; slot numbers and backend indices fit int32
MAX_WEIGHT = 2**32 - 1

_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_ONE = np.uint64(1)


# --- table construction -----------------------------------------------------

@jit
def _offset_skip(key, table_size):
    """(offset, skip) of the backend with `key`, as documented above."""
    m = np.uint64(table_size)
    offset = mix64(np.uint64(key) ^ OFFSET_SEED) % m
    skip = mix64(np.uint64(key) ^ SKIP_SEED) % (m - _ONE) + _ONE
    return np.int64(offset), np.int64(skip)


@jit
def _populate(keys, weights, table_size):
    """Pseudocode 1 with Katran's weighted turns. The caller guarantees a prime
    `table_size` >= len(keys) >= 0 and weights >= 0; a backend walking its
    permutation always finds a free slot while one is left, so every turn
    ends and every round fills at least one slot (the heaviest backend's)."""
    n = len(keys)
    table = np.full(table_size, -1, np.int32)
    max_weight = np.int64(0)
    for i in range(n):
        max_weight = max(max_weight, np.int64(weights[i]))
    if max_weight == 0:
        return table
    position = np.empty(n, np.int64)  # permutation[i][next[i]]
    skip = np.empty(n, np.int64)
    for i in range(n):
        position[i], skip[i] = _offset_skip(keys[i], table_size)
    credit = np.zeros(n, np.int64)
    filled = 0
    while True:
        for i in range(n):
            credit[i] += weights[i]
            if credit[i] < max_weight:
                continue
            credit[i] -= max_weight
            c = position[i]
            step = skip[i]
            while table[c] >= 0:
                c += step
                if c >= table_size:
                    c -= table_size
            table[c] = i
            c += step
            if c >= table_size:
                c -= table_size
            position[i] = c
            filled += 1
            if filled == table_size:
                return table


def _is_prime(m: int) -> bool:
    if m < 2:
        return False
    if m % 2 == 0 or m % 3 == 0:
        return m in (2, 3)
    f = 5
    while f * f <= m:
        if m % f == 0 or m % (f + 2) == 0:
            return False
        f += 6
    return True


def _check_keys_and_size(backend_keys, table_size) -> tuple[np.ndarray, int]:
    keys = _check.array(backend_keys, "backend_keys", np.uint64)
    m = _check.integer(table_size, "table_size", 2, MAX_TABLE_SIZE)
    if not _is_prime(m):
        raise ValueError(f"table_size: Maglev needs a prime table size, got {m}")
    if m < len(keys):
        raise ValueError(f"table_size: Maglev needs table_size >= number of backends, got {m} < {len(keys)}")
    uniq, counts = np.unique(keys, return_counts=True)
    if len(uniq) != len(keys):
        raise ValueError(f"backend_keys: duplicate key {int(uniq[counts > 1][0])}")
    return keys, m


def build(backend_keys: np.ndarray, table_size: int) -> np.ndarray:
    """The Maglev table (int32[table_size], backend index per slot) of the
    backends with distinct uint64 `backend_keys`, filled in that order.
    `table_size` is a prime >= len(backend_keys); the paper recommends
    >= 100 x the number of backends for balance. No backends: all -1."""
    keys, m = _check_keys_and_size(backend_keys, table_size)
    return _populate(keys, np.ones(len(keys), np.int64), m)


def build_weighted(backend_keys: np.ndarray, weights: np.ndarray, table_size: int) -> np.ndarray:
    """`build` where backend i takes slots in proportion to `weights[i]`
    (uint32 or int64, each in [0, 2**32 - 1]; 0 = no slots). All weights 0:
    all -1."""
    keys, m = _check_keys_and_size(backend_keys, table_size)
    if not isinstance(weights, np.ndarray) or weights.dtype not in (np.uint32, np.int64):
        got = weights.dtype.name if isinstance(weights, np.ndarray) else type(weights).__name__
        raise ValueError(f"weights: expected a numpy array of uint32 or int64, got {got}")
    w = _check.array(weights, "weights", weights.dtype)
    _check.same_length(backend_keys=keys, weights=w)
    _check.in_range(w, "weights", 0, MAX_WEIGHT)
    return _populate(keys, w.astype(np.int64), m)


# --- lookup -----------------------------------------------------------------

@jit
def reciprocal(table_size):
    """floor((2**64 - 1) / table_size): the constant `mod_by` needs (table_size >= 1)."""
    return _U64_MAX // np.uint64(table_size)


@jit
def _mulhi64(a, b):
    """The high 64 bits of the 128-bit product a * b (schoolbook on 32-bit halves)."""
    a0 = a & _LOW32
    a1 = a >> _S32
    b0 = b & _LOW32
    b1 = b >> _S32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    middle = (p00 >> _S32) + (p01 & _LOW32) + (p10 & _LOW32)
    return a1 * b1 + (p01 >> _S32) + (p10 >> _S32) + (middle >> _S32)


@jit
def mod_by(x, divisor, recip):
    """x % divisor exactly, for uint64 x and divisor >= 1 with recip = reciprocal(divisor).

    Barrett: with r = recip >= (2**64 - divisor) / divisor, q = mulhi(x, r)
    satisfies x/divisor - 1 < q <= x/divisor, so x - q * divisor lies in
    [0, 2 * divisor) and one conditional subtraction finishes."""
    x = np.uint64(x)
    d = np.uint64(divisor)
    rem = x - _mulhi64(x, recip) * d
    if rem >= d:
        rem -= d
    return rem


@jit
def lookup_one(table, recip, flow_hash):
    """The backend index (int32, -1: none) for one flow hash (any unsigned
    integer up to 64 bits): table[flow_hash % len(table)], with
    recip = reciprocal(len(table)) computed once per table. For other kernels."""
    return table[mod_by(flow_hash, len(table), recip)]


@jit
def _lookup(table, flow_hashes, out):
    recip = reciprocal(len(table))
    for i in range(len(flow_hashes)):
        out[i] = lookup_one(table, recip, flow_hashes[i])


def lookup(table: np.ndarray, flow_hashes: np.ndarray) -> np.ndarray:
    """int32[m] backend indices `table[flow_hashes % len(table)]` for uint32 or
    uint64 `flow_hashes`; `table` is a non-empty int32 array (a Maglev table)."""
    t = _check.array(table, "table", np.int32)
    if len(t) == 0:
        raise ValueError("table: must not be empty")
    if not isinstance(flow_hashes, np.ndarray) or flow_hashes.dtype not in (np.uint32, np.uint64):
        got = flow_hashes.dtype.name if isinstance(flow_hashes, np.ndarray) else type(flow_hashes).__name__
        raise ValueError(f"flow_hashes: expected a numpy array of uint32 or uint64, got {got}")
    h = _check.array(flow_hashes, "flow_hashes", flow_hashes.dtype)
    out = np.empty(len(h), np.int32)
    _lookup(t, h, out)
    return out
