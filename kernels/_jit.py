"""The one place numba JIT flags come from.

Every kernel is decorated with `jit` from here; no module passes its own
flags (a test checks). Environment switches:

- EMU_JIT_CACHE=0        turn numba's on-disk compile cache off (on by default).
- EMU_JIT_BOUNDSCHECK=1  compile with bounds checking, for the fuzz tests; an
                         out-of-bounds access then raises IndexError instead of
                         reading stray memory. It also turns the cache off,
                         because numba's cache key does not include the flag.
"""
from __future__ import annotations

import os

from numba import njit

BOUNDSCHECK = os.environ.get("EMU_JIT_BOUNDSCHECK", "0") == "1"
CACHE = os.environ.get("EMU_JIT_CACHE", "1") != "0" and not BOUNDSCHECK

FLAGS = {
    "cache": CACHE,
    "nogil": True,
    "boundscheck": BOUNDSCHECK,
    # numpy semantics for division by zero: no Python exception machinery in
    # hot loops. Kernels guard their own divisors.
    "error_model": "numpy",
}


def jit(fn=None, **overrides):
    """Decorate a kernel: `@jit` or `@jit(parallel=True)` (only `parallel` may vary)."""
    bad = set(overrides) - {"parallel"}
    if bad:
        raise TypeError(f"kernels set no JIT flags of their own: {sorted(bad)}")
    flags = {**FLAGS, **overrides}
    if fn is None:
        return lambda f: njit(**flags)(f)
    return njit(**flags)(fn)
