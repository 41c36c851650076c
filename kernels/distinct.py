"""Distinct keys of a batch and each item's key number, by hashing: one
pass, for batches where few keys repeat many times (kube-proxy's decision
keys of a burst of first packets: a handful of (source, destination)
pairs for 20,000 packets: the lexsort behind `np.unique` along rows took
0.8-1.3 ms in a bulk run, this 0.2 ms; 0.1 ms when the data is in cache).
Past MAX_HASHED distinct keys it sorts instead, as np.unique would.

  pairs(a, c) -> (keys, inverse)
      The distinct (a[i], c[i]) pairs of two uint64 columns as a (k, 2)
      uint64 array sorted by a then c, and for each item the row of its
      pair: what np.unique(np.stack([a, c], 1), axis=0, return_inverse=True)
      gives.

  values(x) -> keys
      np.unique(x) for an integer array of many distinct values (flow
      numbers): sorted, then the first of each run. numpy 2's np.unique
      finds values through a hash table, ~5x slower for 20,000 distinct
      int64 (2.6 ms against 0.6 ms); for a few distinct values np.unique
      is the faster.

References: tests/reference/distinct.py.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels._jit import jit
from kernels.hashing import mix64

_C = np.uint64(0x9E3779B97F4A7C15)
MAX_HASHED = 2048   # keys hashed at most (a table of 32 KiB); more: sorted


@jit
def _pairs(a, c, inverse, key_a, key_c):
    """Key numbers in order of first appearance; returns how many, or -1
    past MAX_HASHED keys. The hash table starts small and doubles when half
    full: a burst's handful of keys never touches more than a few cache
    lines."""
    size = 64
    slots = np.full(size, -1, np.int64)
    k = 0
    for i in range(len(a)):
        h = _home(a[i], c[i], size)
        while True:
            j = slots[h]
            if j < 0:
                break
            if key_a[j] == a[i] and key_c[j] == c[i]:
                break
            h = (h + 1) & (size - 1)
        if j >= 0:
            inverse[i] = j
            continue
        key_a[k] = a[i]
        key_c[k] = c[i]
        inverse[i] = k
        slots[h] = k
        k += 1
        if k > MAX_HASHED:
            return -1
        if 2 * k > size:   # rehash into twice the room
            size *= 2
            slots = np.full(size, -1, np.int64)
            for q in range(k):
                h = _home(key_a[q], key_c[q], size)
                while slots[h] >= 0:
                    h = (h + 1) & (size - 1)
                slots[h] = q
    return k


@jit
def _home(a, c, size):
    return np.int64(mix64(a ^ mix64(c + _C)) & np.uint64(size - 1))


def pairs(a, c):
    """See the module docstring."""
    a = _check.array(a, "a", np.uint64)
    c = _check.array(c, "c", np.uint64)
    n = _check.same_length(a=a, c=c)
    inverse = np.empty(n, np.int64)
    key_a, key_c = np.empty(n, np.uint64), np.empty(n, np.uint64)
    k = _pairs(a, c, inverse, key_a, key_c)
    if k < 0:   # many keys: sorting them all is quicker than a table out of cache
        order = np.lexsort((c, a))
        sa, sc = a[order], c[order]
        new = np.ones(n, bool)
        new[1:] = (sa[1:] != sa[:-1]) | (sc[1:] != sc[:-1])
        inverse[order] = np.cumsum(new) - 1
        return np.stack([sa[new], sc[new]], axis=1), inverse
    order = np.lexsort((key_c[:k], key_a[:k]))
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return np.stack([key_a[:k][order], key_c[:k][order]], axis=1), rank[inverse]


def values(x) -> np.ndarray:
    """See the module docstring."""
    u = np.sort(x)
    if len(u) > 1:
        u = u[np.concatenate(([True], u[1:] != u[:-1]))]
    return u
