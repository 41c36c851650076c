"""Flow hashing over the IPv4 5-tuple.

`hash5` is the scalar core other kernels call from inside numba (conntrack
slots, VXLAN source ports, load balancing). It packs the tuple into two
64-bit words and mixes them with the murmur3 64-bit finalizer, keyed by a
seed, so every bit of the input reaches every bit of the output.
"""
from __future__ import annotations

import numpy as np

from kernels._jit import jit

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_S16 = np.uint64(16)
_S8 = np.uint64(8)


@jit
def mix64(x):
    """murmur3 fmix64: a bijection on uint64 with full avalanche."""
    x = np.uint64(x)
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@jit
def hash5(src, dst, sport, dport, proto, seed):
    """Seeded 64-bit hash of one (src, dst, sport, dport, proto) tuple."""
    a = (np.uint64(src) << _S32) | np.uint64(dst)
    b = (np.uint64(sport) << _S32) | (np.uint64(dport) << _S16) | (np.uint64(proto) << _S8)
    h = mix64(a ^ mix64(np.uint64(seed) + _GOLDEN))
    return mix64(h ^ (b + _GOLDEN))
