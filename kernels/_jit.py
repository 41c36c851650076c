"""The one place numba JIT flags come from (and the prefetch hint kernels share).

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

from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

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


AHEAD = 8   # packets (items) between a loop fetching what one will read and reading it: see prefetch


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the CPU to fetch arr[i]'s cache line (x86 PREFETCHT0); arr is
    one-dimensional (one index). A prefetch never faults and changes
    nothing, so it needs no bounds check. Loops over
    a batch fetch a few packets ahead what they will read (index lines,
    records, frame headers): their misses then overlap instead of coming one
    after the other."""
    def codegen(context, builder, signature, args):
        arr_type = signature.args[0]
        array = context.make_array(arr_type)(context, builder, args[0])
        item = cgutils.get_item_pointer(context, builder, arr_type, array, [args[1]], wraparound=False)
        ptr = builder.bitcast(item, cgutils.voidptr_t)
        ir = cgutils.ir  # llvmlite's IR builder, as numba itself uses it
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()
    return types.void(arr, types.intp), codegen
