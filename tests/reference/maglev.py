"""Plain-Python Maglev: Pseudocode 1 of Eisenbud et al. (NSDI 2016) as printed,
Katran's MaglevHashV2 weighted fill, and the lookup, on Python ints.

The hash of a backend key is the plain-Python mix64 of tests.reference.hashing,
independent of kernels.hashing, so a change to either side shows up in the tests."""
from __future__ import annotations

from tests.reference.hashing import mix64

OFFSET_SEED = 0x6A09E667F3BCC908  # SHA-512 H0 (sqrt 2)
SKIP_SEED = 0xBB67AE8584CAA73B    # SHA-512 H1 (sqrt 3)


def offset_skip(key: int, m: int) -> tuple[int, int]:
    offset = mix64(key ^ OFFSET_SEED) % m
    skip = mix64(key ^ SKIP_SEED) % (m - 1) + 1
    return offset, skip


def permutation(key: int, m: int, j: int) -> int:
    """permutation[i][j] for the backend with `key`."""
    offset, skip = offset_skip(key, m)
    return (offset + j * skip) % m


def populate(keys: list[int], m: int) -> list[int]:
    """Pseudocode 1: backends take turns in order, each claiming the next free
    slot of its permutation, until all m slots are taken."""
    n_backends = len(keys)
    entry = [-1] * m
    if n_backends == 0:
        return entry
    rows = [offset_skip(k, m) for k in keys]
    nxt = [0] * n_backends
    n = 0
    while True:
        for i in range(n_backends):
            offset, skip = rows[i]
            c = (offset + nxt[i] * skip) % m
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset + nxt[i] * skip) % m
            entry[c] = i
            nxt[i] += 1
            n += 1
            if n == m:
                return entry


def populate_weighted(keys: list[int], weights: list[int], m: int) -> list[int]:
    """Katran MaglevHashV2: each round a backend adds its weight to its credit
    and takes a Pseudocode-1 turn when the credit reaches the largest weight."""
    entry = [-1] * m
    max_weight = max(weights, default=0)
    if max_weight == 0:
        return entry
    rows = [offset_skip(k, m) for k in keys]
    nxt = [0] * len(keys)
    credit = [0] * len(keys)
    n = 0
    while True:
        for i in range(len(keys)):
            credit[i] += weights[i]
            if credit[i] < max_weight:
                continue
            credit[i] -= max_weight
            offset, skip = rows[i]
            c = (offset + nxt[i] * skip) % m
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset + nxt[i] * skip) % m
            entry[c] = i
            nxt[i] += 1
            n += 1
            if n == m:
                return entry


def lookup(table: list[int], flow_hashes: list[int]) -> list[int]:
    return [table[h % len(table)] for h in flow_hashes]
