"""Plain-Python flow hashing on ints with masks: murmur3's fmix64, the seeded
5-tuple hash, the 32-bit flow hash and its symmetric form, and Linux's
udp_flow_src_port() (include/net/udp.h)."""
from __future__ import annotations

MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN = 0x9E3779B97F4A7C15
LOCAL_PORT_RANGE = (32768, 60999)


def mix64(x: int) -> int:
    """murmur3 fmix64."""
    x &= MASK64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & MASK64
    x ^= x >> 33
    return x


def hash5(src: int, dst: int, sport: int, dport: int, proto: int, seed: int) -> int:
    """The tuple as two 64-bit words (src|dst and sport|dport|proto|0), each
    mixed in after a seeded start."""
    a = (src << 32) | dst
    b = (sport << 32) | (dport << 16) | (proto << 8)
    h = mix64(a ^ mix64((seed + GOLDEN) & MASK64))
    return mix64(h ^ ((b + GOLDEN) & MASK64))


def flow_hash32(src: int, dst: int, sport: int, dport: int, proto: int, seed: int) -> int:
    """High 32 bits of hash5; 0 (Linux's "no hash") becomes 1."""
    return (hash5(src, dst, sport, dport, proto, seed) >> 32) or 1


def symmetric_flow_hash32(src: int, dst: int, sport: int, dport: int, proto: int, seed: int) -> int:
    """flow_hash32 with the smaller (address, port) endpoint first."""
    if (src, sport) > (dst, dport):
        src, dst, sport, dport = dst, src, dport, sport
    return flow_hash32(src, dst, sport, dport, proto, seed)


def udp_flow_src_port(hash32: int, lo: int, hi: int) -> int:
    """Linux: if (min >= max) use the local port range; hash ^= hash << 16;
    return (((u64) hash * (max - min)) >> 32) + min."""
    if lo >= hi:
        lo, hi = LOCAL_PORT_RANGE
    h = hash32 & MASK32
    h = (h ^ (h << 16)) & MASK32
    return ((h * (hi - lo)) >> 32) + lo
