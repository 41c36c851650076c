"""Flow hashing over the IPv4 5-tuple.

`hash5` is the scalar core other kernels call from inside numba (conntrack
slots, VXLAN source ports, load balancing). It packs the tuple into two
64-bit words and mixes them with the murmur3 64-bit finalizer, keyed by a
seed, so every bit of the input reaches every bit of the output.

On top of it, the 32-bit flow hash a packet batch carries (Linux's skb->hash)
and what Linux derives from it:

  flow_hash32(src, dst, sport, dport, proto, seed) -> uint32
      The high half of `hash5`. Never 0: as in Linux's __flow_hash_from_keys,
      0 is left to mean "no hash" (a 0 becomes 1).
  symmetric_flow_hash32(...) -> uint32
      The same for the tuple with its endpoints in canonical order (the
      smaller (address, port) first, kept whole), so both directions of a
      flow hash alike; Linux's __flow_hash_consistentify orders its flow
      keys for the same purpose.
  udp_flow_src_port(hash, lo, hi) -> int64
      Linux's udp_flow_src_port() (include/net/udp.h), the outer source port
      of VXLAN and Geneve: with lo >= hi the local port range is used
      (32768..60999, the ip_local_port_range default); then
      `hash ^= hash << 16` in 32 bits (only the upper 16 bits count below,
      so this brings the low half in) and `port = ((u64)hash * (hi - lo) >> 32) + lo`,
      a port in [lo, hi): `hi` itself is never chosen, as in Linux.

Batch wrappers: `flow_hash` and `symmetric_flow_hash` over uint32 addresses,
uint16 ports and uint8 protocols, `udp_source_port` over uint32 hashes.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels._jit import jit

LOCAL_PORT_RANGE = (32768, 60999)   # net.ipv4.ip_local_port_range default

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_S16 = np.uint64(16)
_S8 = np.uint64(8)
_LOW32 = np.uint64(0xFFFFFFFF)


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


@jit
def _high_half_not_zero(h64):
    """The high 32 bits of a 64-bit hash, 1 in place of 0."""
    h = np.uint32(np.uint64(h64) >> _S32)
    if h == 0:
        h = np.uint32(1)
    return h


@jit
def flow_hash32(src, dst, sport, dport, proto, seed):
    """32-bit flow hash of one tuple: the high half of `hash5`, 0 made 1."""
    return _high_half_not_zero(hash5(src, dst, sport, dport, proto, seed))


@jit
def symmetric_flow_hash32(src, dst, sport, dport, proto, seed):
    """`flow_hash32` of the tuple with the smaller (address, port) endpoint first."""
    a = (np.uint64(src) << _S16) | np.uint64(sport)
    b = (np.uint64(dst) << _S16) | np.uint64(dport)
    if a > b:
        return flow_hash32(dst, src, dport, sport, proto, seed)
    return flow_hash32(src, dst, sport, dport, proto, seed)


@jit
def udp_flow_src_port(hash32, lo, hi):
    """Linux's udp_flow_src_port(): a source port in [lo, hi) from a flow hash
    (the local port range 32768..60999 when lo >= hi)."""
    lo = np.int64(lo)
    hi = np.int64(hi)
    if lo >= hi:
        lo = np.int64(LOCAL_PORT_RANGE[0])
        hi = np.int64(LOCAL_PORT_RANGE[1])
    h = np.uint64(hash32) & _LOW32
    h ^= (h << _S16) & _LOW32
    return np.int64((h * np.uint64(hi - lo)) >> _S32) + lo


@jit
def _flow_hash(src, dst, sport, dport, proto, seed, symmetric, out):
    for k in range(len(src)):
        if symmetric:
            out[k] = symmetric_flow_hash32(src[k], dst[k], sport[k], dport[k], proto[k], seed)
        else:
            out[k] = flow_hash32(src[k], dst[k], sport[k], dport[k], proto[k], seed)


@jit
def _udp_source_port(hashes, lo, hi, out):
    for k in range(len(hashes)):
        out[k] = udp_flow_src_port(hashes[k], lo, hi)


def _tuples(src, dst, sport, dport, proto, seed):
    src = _check.array(src, "src", np.uint32)
    dst = _check.array(dst, "dst", np.uint32)
    sport = _check.array(sport, "sport", np.uint16)
    dport = _check.array(dport, "dport", np.uint16)
    proto = _check.array(proto, "proto", np.uint8)
    _check.same_length(src=src, dst=dst, sport=sport, dport=dport, proto=proto)
    seed = np.uint64(_check.integer(seed, "seed", 0, 2**64 - 1))
    return src, dst, sport, dport, proto, seed


def flow_hash(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray,
              proto: np.ndarray, seed: int) -> np.ndarray:
    """Seeded 32-bit hash (uint32, never 0) of each 5-tuple: addresses uint32,
    ports uint16, protocol uint8, seed in [0, 2**64)."""
    args = _tuples(src, dst, sport, dport, proto, seed)
    out = np.empty(len(args[0]), np.uint32)
    _flow_hash(*args, False, out)
    return out


def symmetric_flow_hash(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray,
                        proto: np.ndarray, seed: int) -> np.ndarray:
    """`flow_hash`, equal for (src, sport -> dst, dport) and (dst, dport -> src, sport)."""
    args = _tuples(src, dst, sport, dport, proto, seed)
    out = np.empty(len(args[0]), np.uint32)
    _flow_hash(*args, True, out)
    return out


def udp_source_port(hashes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Linux's udp_flow_src_port() for each uint32 flow hash: uint16 ports in
    [lo, hi), or in the local port range 32768..60999 when lo >= hi."""
    hashes = _check.array(hashes, "hashes", np.uint32)
    lo = _check.integer(lo, "lo", 0, 0xFFFF)
    hi = _check.integer(hi, "hi", 0, 0xFFFF)
    out = np.empty(len(hashes), np.uint16)
    _udp_source_port(hashes, lo, hi, out)
    return out
