"""Plain-Python distinct pairs: a dict of the pairs seen, then sorted."""
from __future__ import annotations


def pairs(a: list[int], c: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    keys = sorted(set(zip(a, c)))
    row = {k: i for i, k in enumerate(keys)}
    return keys, [row[k] for k in zip(a, c)]
