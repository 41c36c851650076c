"""Validation for the public kernel wrappers: wrong dtype, shape or range is a
clear ValueError naming the argument, before any kernel runs."""
from __future__ import annotations

import numpy as np


def array(x, name: str, dtype, ndim: int = 1) -> np.ndarray:
    """`x` as a C-contiguous array of exactly `dtype` and `ndim` (no silent casts)."""
    want = np.dtype(dtype)
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of {want.name}, got {type(x).__name__}")
    if x.dtype != want:
        raise ValueError(f"{name}: expected dtype {want.name}, got {x.dtype.name}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {x.shape}")
    return np.ascontiguousarray(x)


def updated(x, name: str, dtype, ndim: int = 1) -> np.ndarray:
    """`array` for an array the kernel writes to: it must be the caller's
    own (C-contiguous, so no copy is made behind its back)."""
    if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (updated in place)")
    return array(x, name, dtype, ndim)


def same_length(**arrays: np.ndarray) -> int:
    """The common length of 1-D arrays given by name, or a ValueError listing them."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(f"arrays must have the same length: {shown}")
    return next(iter(lengths.values()), 0)


def in_range(x: np.ndarray, name: str, lo: int, hi: int) -> None:
    """Every element of `x` within [lo, hi]."""
    if x.size and (x.min() < lo or x.max() > hi):
        bad = x[(x < lo) | (x > hi)][0]
        raise ValueError(f"{name}: values must be in [{lo}, {hi}], found {bad}")


def integer(x, name: str, lo: int, hi: int) -> int:
    """A Python or numpy integer scalar within [lo, hi]."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {type(x).__name__}")
    if not lo <= int(x) <= hi:
        raise ValueError(f"{name}: must be in [{lo}, {hi}], got {int(x)}")
    return int(x)


def frames(buf, starts, lengths) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A flat uint8 buffer and int64 start/length per frame, every frame inside
    the buffer; returns them checked, with the frame count."""
    buf = array(buf, "buf", np.uint8)
    starts = array(starts, "starts", np.int64)
    lengths = array(lengths, "lengths", np.int64)
    n = same_length(starts=starts, lengths=lengths)
    in_range(starts, "starts", 0, len(buf))
    in_range(lengths, "lengths", 0, len(buf))
    past_end = lengths > len(buf) - starts
    if past_end.any():
        k = int(np.argmax(past_end))
        raise ValueError(f"frame {k}: [{starts[k]}, {starts[k] + lengths[k]}) "
                         f"goes past the end of buf ({len(buf)} bytes)")
    return buf, starts, lengths, n
