"""Header rewrites in place over a packet buffer: TTL decrement, MAC
addresses, VXLAN encapsulation. Checksums are kept right incrementally
(RFC 1624) or recomputed (a new outer header).

Every function takes the flat byte buffer and, per packet, absolute
offsets; the caller (the data plane) owns the layout and its headroom.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels.checksum import csum_replace16, csum_replace32, ipv4_header_checksum
from kernels._jit import jit

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 (RFC 7348)


@jit
def _decrement_ttl(buf, l3):
    for i in range(len(l3)):
        p = l3[i]
        old = _get16(buf, p + 8)
        ttl = (np.int64(buf[p + 8]) - 1) & 0xFF
        buf[p + 8] = ttl
        _put16(buf, p + 10, csum_replace16(_get16(buf, p + 10), old, _get16(buf, p + 8)))


def decrement_ttl(buf: np.ndarray, l3_offsets: np.ndarray) -> None:
    """TTL - 1 and the IPv4 header checksum updated, at each absolute IPv4 header offset."""
    buf = _check.array(buf, "buf", np.uint8)
    l3_offsets = _check.array(l3_offsets, "l3_offsets", np.int64)
    _check.in_range(l3_offsets, "l3_offsets", 0, len(buf) - 20)
    _decrement_ttl(buf, l3_offsets)


@jit
def _set_macs(buf, starts, dst, src):
    for i in range(len(starts)):
        p = starts[i]
        d = dst[i]
        s = src[i]
        for b in range(6):
            shift = np.uint64(8 * (5 - b))
            buf[p + b] = (d >> shift) & np.uint64(0xFF)
            buf[p + 6 + b] = (s >> shift) & np.uint64(0xFF)


def set_macs(buf: np.ndarray, starts: np.ndarray, dst: np.ndarray, src: np.ndarray) -> None:
    """Write destination and source MACs (uint64, 48 bits) at each frame start."""
    buf = _check.array(buf, "buf", np.uint8)
    starts = _check.array(starts, "starts", np.int64)
    dst = _check.array(dst, "dst", np.uint64)
    src = _check.array(src, "src", np.uint64)
    _check.same_length(starts=starts, dst=dst, src=src)
    _check.in_range(starts, "starts", 0, len(buf) - 12)
    _set_macs(buf, starts, dst, src)


@jit
def _put16(buf, p, v):
    buf[p] = (v >> 8) & 0xFF
    buf[p + 1] = v & 0xFF


@jit
def _put32(buf, p, v):
    _put16(buf, p, v >> 16)
    _put16(buf, p + 2, v & 0xFFFF)


@jit
def _get16(buf, p):
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@jit
def _get32(buf, p):
    return (_get16(buf, p) << 16) | _get16(buf, p + 2)


@jit
def vxlan_outer_one(buf, p, inner_len, src_ip, dst_ip, sport, dport, vni, ttl, ip_id):
    """Write one VXLAN packet's outer headers (50 bytes) at p, before its inner frame."""
    for b in range(12):          # outer MACs: filled by the neighbour output
        buf[p + b] = 0
    _put16(buf, p + 12, 0x0800)
    ip = p + 14
    buf[ip] = 0x45
    buf[ip + 1] = 0              # TOS 0 (Linux vxlan default: tos 0)
    _put16(buf, ip + 2, 20 + 8 + 8 + inner_len)
    _put16(buf, ip + 4, np.int64(ip_id))
    _put16(buf, ip + 6, 0)       # outer DF not set (vxlan "df unset")
    buf[ip + 8] = ttl
    buf[ip + 9] = 17
    _put32(buf, ip + 12, src_ip)
    _put32(buf, ip + 16, np.int64(dst_ip))
    _put16(buf, ip + 10, ipv4_header_checksum(buf, ip))
    udp = ip + 20
    _put16(buf, udp, np.int64(sport))
    _put16(buf, udp + 2, dport)
    _put16(buf, udp + 4, 8 + 8 + inner_len)
    _put16(buf, udp + 6, 0)      # zero UDP checksum over IPv4 (RFC 7348, Linux default)
    vx = udp + 8
    buf[vx] = 0x08               # I flag: VNI valid
    buf[vx + 1] = 0
    buf[vx + 2] = 0
    buf[vx + 3] = 0
    buf[vx + 4] = (vni >> 16) & 0xFF
    buf[vx + 5] = (vni >> 8) & 0xFF
    buf[vx + 6] = vni & 0xFF
    buf[vx + 7] = 0


@jit
def _vxlan_encap(buf, start, length, slots, src_ip, dst_ips, sports, dport, vni, ttl, ip_ids):
    for i in range(len(slots)):
        s = slots[i]
        inner_len = length[s]
        p = start[s] - 50
        vxlan_outer_one(buf, p, inner_len, src_ip, dst_ips[i], sports[i], dport, vni, ttl, ip_ids[i])
        start[s] = p
        length[s] = inner_len + 50


def vxlan_encap(buf, start, length, slots, src_ip: int, dst_ips, sports, dport: int, vni: int,
                ttl: int, ip_ids) -> None:
    """Push outer Ethernet/IPv4/UDP/VXLAN headers in front of packets[slots]
    (start/length are the pool's per-slot columns, updated in place). The
    outer MACs are left zero for the neighbour output to fill."""
    buf = _check.array(buf, "buf", np.uint8)
    start = _check.array(start, "start", np.int64)
    length = _check.array(length, "length", np.int64)
    slots = _check.array(slots, "slots", np.int32)
    dst_ips = _check.array(dst_ips, "dst_ips", np.uint32)
    sports = _check.array(sports, "sports", np.uint16)
    ip_ids = _check.array(ip_ids, "ip_ids", np.uint16)
    _check.same_length(slots=slots, dst_ips=dst_ips, sports=sports, ip_ids=ip_ids)
    _check.in_range(slots, "slots", 0, len(start) - 1)
    _check.integer(src_ip, "src_ip", 0, 0xFFFFFFFF)
    _check.integer(dport, "dport", 0, 0xFFFF)
    _check.integer(vni, "vni", 0, 0xFFFFFF)
    _check.integer(ttl, "ttl", 1, 255)
    if len(slots):
        if np.any(start[slots] < VXLAN_OVERHEAD):
            raise ValueError("no headroom for the VXLAN header")
        if np.any(start[slots] + length[slots] > len(buf)) or np.any(length[slots] + 50 > 0xFFFF - 20):
            raise ValueError("frame past the end of buf or too long to encapsulate")
    _vxlan_encap(buf, start, length, slots, np.int64(src_ip), dst_ips, sports, np.int64(dport),
                 np.int64(vni), np.int64(ttl), ip_ids)


@jit
def _copy_ranges(src, src_starts, lengths, dst, dst_starts):
    # Byte copies in kernels are loops over views indexed from range(): no
    # negative-index test per byte, so LLVM vectorizes them. On the 2-core VM
    # a 150-byte frame took 14 ns so, 215 as `dst[d + b] = src[s + b]`, 60-150
    # with numba's slice assignment, 27 through a helper function (each call
    # counts references to its arrays): kernels write the loop in place.
    for i in range(len(src_starts)):
        n = lengths[i]
        a, z = src[src_starts[i]:src_starts[i] + n], dst[dst_starts[i]:dst_starts[i] + n]
        for b in range(n):
            z[b] = a[b]


def copy_ranges(src: np.ndarray, src_starts: np.ndarray, lengths: np.ndarray,
                dst: np.ndarray, dst_starts: np.ndarray) -> None:
    """dst[dst_starts[i]:+lengths[i]] = src[src_starts[i]:+lengths[i]] for every i
    (gathers frames into a capture buffer, or copies them into new slots)."""
    src = _check.array(src, "src", np.uint8)
    dst = _check.array(dst, "dst", np.uint8)
    src_starts = _check.array(src_starts, "src_starts", np.int64)
    dst_starts = _check.array(dst_starts, "dst_starts", np.int64)
    lengths = _check.array(lengths, "lengths", np.int64)
    _check.same_length(src_starts=src_starts, lengths=lengths, dst_starts=dst_starts)
    if len(lengths):
        _check.in_range(lengths, "lengths", 0, max(len(src), len(dst)))
        if (src_starts.min() < 0 or dst_starts.min() < 0 or np.max(src_starts + lengths) > len(src)
                or np.max(dst_starts + lengths) > len(dst)):
            raise ValueError("copy_ranges: a range lies outside its buffer")
    _copy_ranges(src, src_starts, lengths, dst, dst_starts)


@jit
def nat_one(buf, p, q, pr, src, dst, sport, dport):
    """NAT one packet in place: IPv4 header at p, L4 at q (-1: none)."""
    old_src, old_dst = _get32(buf, p + 12), _get32(buf, p + 16)
    new_src, new_dst = np.int64(src), np.int64(dst)
    # the IPv4 header checksum covers the addresses
    c = _get16(buf, p + 10)
    c = csum_replace32(c, old_src, new_src)
    c = csum_replace32(c, old_dst, new_dst)
    _put16(buf, p + 10, c)
    _put32(buf, p + 12, new_src)
    _put32(buf, p + 16, new_dst)
    if q < 0:
        return  # a non-first fragment: no ports here
    if pr == 6 or pr == 17:
        at = q + 16 if pr == 6 else q + 6
        udp = pr == 17
        c = _get16(buf, at)
        if not (udp and c == 0):  # UDP without a checksum stays without one
            # the pseudo-header covers the addresses, the header the ports
            c = csum_replace32(c, old_src, new_src, udp)
            c = csum_replace32(c, old_dst, new_dst, udp)
            c = csum_replace16(c, _get16(buf, q), np.int64(sport), udp)
            c = csum_replace16(c, _get16(buf, q + 2), np.int64(dport), udp)
            _put16(buf, at, c)
        _put16(buf, q, np.int64(sport))
        _put16(buf, q + 2, np.int64(dport))
    elif pr == 1:
        # ICMP queries: the id is the "port"; ICMP has no pseudo-header
        _put16(buf, q + 2, csum_replace16(_get16(buf, q + 2), _get16(buf, q + 4), np.int64(sport)))
        _put16(buf, q + 4, np.int64(sport))


@jit
def _nat(buf, l3, l4, proto, src, dst, sport, dport):
    for i in range(len(l3)):
        nat_one(buf, l3[i], l4[i], proto[i], src[i], dst[i], sport[i], dport[i])


def nat(buf, l3_offsets, l4_offsets, proto, src, dst, sport, dport) -> None:
    """Rewrite addresses and ports (NAT) in place with RFC 1624 checksum
    updates: IPv4 header; TCP/UDP pseudo-header and ports (a zero UDP
    checksum stays zero, a computed zero becomes 0xFFFF); for ICMP queries
    `sport` is the new identifier. l4_offsets -1: no L4 header (a fragment).
    Offsets are absolute; values are the new ones (equal to the old = unchanged)."""
    buf = _check.array(buf, "buf", np.uint8)
    l3 = _check.array(l3_offsets, "l3_offsets", np.int64)
    l4 = _check.array(l4_offsets, "l4_offsets", np.int64)
    proto = _check.array(proto, "proto", np.uint8)
    src = _check.array(src, "src", np.uint32)
    dst = _check.array(dst, "dst", np.uint32)
    sport = _check.array(sport, "sport", np.uint16)
    dport = _check.array(dport, "dport", np.uint16)
    _check.same_length(l3_offsets=l3, l4_offsets=l4, proto=proto, src=src, dst=dst, sport=sport, dport=dport)
    _check.in_range(l3, "l3_offsets", 0, len(buf) - 20)
    # bytes each L4 header must have from its offset: through the TCP checksum,
    # the UDP header, the ICMP identifier
    need = np.where(proto == 6, 18, np.where(proto == 17, 8, np.where(proto == 1, 6, 0)))
    bad = (l4 < -1) | ((l4 >= 0) & (l4 + need > len(buf)))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"l4_offsets[{k}]: {l4[k]} leaves no room for the protocol {proto[k]} header")
    _nat(buf, l3, l4, proto, src, dst, sport, dport)
