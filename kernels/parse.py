"""Parse a batch of Ethernet frames into header offsets and fields.

`parse(buf, starts, lengths, vxlan_ports)` reads frame k from
`buf[starts[k] : starts[k] + lengths[k]]` (frames may sit anywhere in the
buffer, with headroom or gaps between them) and returns a `Headers`: one 1-D
numpy column per field, one row per frame, for the data plane's kernels.
The columns are views of the fields of one numpy record array (a 96-byte
record per frame), so they are strided: `np.ascontiguousarray(h.ip_src)`
packs one when that matters; indexing (`h.ip_src[idx]`) copies as usual.

Protocols: Ethernet II with at most one 802.1Q tag; ARP for Ethernet/IPv4;
IPv4 with options and fragments; ICMP, TCP and UDP; VXLAN (RFC 7348) in UDP
to one of `vxlan_ports`. The inner frame of VXLAN is not parsed: its offset is
reported and the data plane parses it again after decapsulation.

Drop codes (`kernels.drop`) follow Linux's receive path (arp_rcv,
ip_rcv_core, tcp_v4_rcv, __udp4_lib_rcv, icmp_rcv, vxlan_rcv) in its order;
for IPv4: version, IHL, header checksum, then total length. Only bytes inside
the frame are read. Bytes past the IPv4 total length are Ethernet padding and
ignored: L4 headers must fit inside the total length. A frame's row keeps
every field parsed before its error; a bad frame never disturbs the others.

Columns (offsets are from the frame start and -1 where absent; other fields
are 0 where absent):

  drop         uint8   `kernels.drop` code, 0 = parsed fine
  flags        uint16  bit set of the flag constants below
  eth_dst      uint64  destination MAC, first byte most significant (48 bits)
  eth_src      uint64  source MAC, same layout
  vlan_tci     uint16  802.1Q tag control information (PCP, DEI, VID)
  ethertype    uint16  EtherType after the tag (0x8100 if the tag is cut short)
  l3_off       int32   offset of the EtherType's payload (ARP, IPv4 or other)
  arp_op       uint16  ARP operation (1 request, 2 reply; others not rejected)
  arp_sha      uint64  ARP sender hardware address
  arp_tha      uint64  ARP target hardware address
  ip_src       uint32  IPv4 source; for ARP the sender protocol address
  ip_dst       uint32  IPv4 destination; for ARP the target protocol address
  ip_proto     uint8   IPv4 protocol
  tos          uint8   IPv4 type of service (DSCP and ECN)
  ttl          uint8   IPv4 time to live
  ip_len       uint16  IPv4 total length
  ip_id        uint16  IPv4 identification
  frag_off     uint16  fragment offset in bytes (the field times 8)
  l4_off       int32   offset of the IPv4 payload once the IPv4 header passed
                       every check: the L4 header, or fragment data when
                       frag_off != 0
  sport        uint16  TCP/UDP source port; ICMP query identifier
  dport        uint16  TCP/UDP destination port; ICMP query sequence number
  tcp_flags    uint8   TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN)
  tcp_seq      uint32  TCP sequence number
  tcp_ack      uint32  TCP acknowledgment number
  icmp_type    uint8   ICMP type
  icmp_code    uint8   ICMP code
  payload_off  int32   offset of the L4 payload: after the TCP header and its
                       options, the UDP header or the 8-byte ICMP header
                       (for VXLAN, the VXLAN header)
  payload_len  uint16  bytes of L4 payload, up to the IPv4 total length, and
                       for UDP up to the UDP length (Linux trims the rest)
  vni          int32   VXLAN network identifier, -1 if none
  inner_off    int32   VXLAN: offset of the inner Ethernet header; ICMP error:
                       offset of the quoted IPv4 header (when its 20 fixed
                       bytes are there)

ICMP query messages (echo, timestamp, information, address mask and their
replies) carry an identifier and a sequence number. The identifier is what
Linux's conntrack and NAT use as the ICMP "port", so it goes in `sport`, the
sequence number in `dport`: hash ICMP flows on `sport` only.

Fragments: the L4 header is parsed only in the first fragment (offset 0). A
first fragment holds only part of the datagram, so an L4 or VXLAN header cut
short by its end stops parsing without a drop (the header goes on in the next
fragment; Linux reassembles before L4), and the UDP length, which counts the
whole datagram, is only checked to be at least 8.

Speed: each frame is parsed into locals (an error breaks out of a one-pass
`while`), then its record is stored once: the output is one sequential write
stream, nothing is allocated per frame, and the common path is straight-line
code. Header words are read with single unaligned big-endian loads (see
`_load_be`). The data plane parses small batches (one to thousands of
frames), so the fixed cost of a call matters as much as the rate: one record
array instead of 30 columns makes the allocation and numba's dispatch cheap,
the frame bounds are checked inside the kernel (before it writes anything)
rather than with several numpy passes, and the validated VXLAN port array is
cached per distinct port tuple. `out=` reuses a batch's records, which
spares the page faults of fresh allocations on large batches.
"""
from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import numpy as np
from numba.core import types
from numba.extending import intrinsic

from kernels import _check, drop
from kernels._jit import AHEAD, BOUNDSCHECK, jit, prefetch

# -- flags -------------------------------------------------------------------
HAS_VLAN = 1 << 0        # one 802.1Q tag
ARP = 1 << 1             # ARP header read (arp_* columns, ip_src, ip_dst)
IPV4 = 1 << 2            # IPv4 fixed header read (version 4)
IP_OPTIONS = 1 << 3      # IHL > 5
FRAGMENT = 1 << 4        # MF set or fragment offset != 0
MORE_FRAGMENTS = 1 << 5  # MF set: a fragment other than the last
DF = 1 << 6              # don't fragment
L4 = 1 << 7              # TCP/UDP/ICMP header passed every check (payload_* set)
TCP = 1 << 8             # TCP fixed header read
UDP = 1 << 9             # UDP header read
ICMP = 1 << 10           # ICMP header read
VXLAN = 1 << 11          # UDP to a VXLAN port, and its 8-byte header read
ICMP_ERROR = 1 << 12     # ICMP error message (types 3, 4, 5, 11, 12)

FLAGS = {
    "HAS_VLAN": HAS_VLAN, "ARP": ARP, "IPV4": IPV4, "IP_OPTIONS": IP_OPTIONS,
    "FRAGMENT": FRAGMENT, "MORE_FRAGMENTS": MORE_FRAGMENTS, "DF": DF, "L4": L4,
    "TCP": TCP, "UDP": UDP, "ICMP": ICMP, "VXLAN": VXLAN, "ICMP_ERROR": ICMP_ERROR,
}

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
# Linux's VXLAN port (Flannel's default) and IANA's.
DEFAULT_VXLAN_PORTS = (8472, 4789)

COLUMNS = {
    "drop": np.uint8, "flags": np.uint16, "eth_dst": np.uint64, "eth_src": np.uint64,
    "vlan_tci": np.uint16, "ethertype": np.uint16, "l3_off": np.int32,
    "arp_op": np.uint16, "arp_sha": np.uint64, "arp_tha": np.uint64,
    "ip_src": np.uint32, "ip_dst": np.uint32, "ip_proto": np.uint8, "tos": np.uint8,
    "ttl": np.uint8, "ip_len": np.uint16, "ip_id": np.uint16, "frag_off": np.uint16,
    "l4_off": np.int32, "sport": np.uint16, "dport": np.uint16, "tcp_flags": np.uint8,
    "tcp_seq": np.uint32, "tcp_ack": np.uint32, "icmp_type": np.uint8,
    "icmp_code": np.uint8, "payload_off": np.int32, "payload_len": np.uint16,
    "vni": np.int32, "inner_off": np.int32,
}

# One 1-D column per field, one row per frame (meanings in the docstring).
Headers = NamedTuple("Headers", [(name, np.ndarray) for name in COLUMNS])
_DTYPES = [np.dtype(dtype) for dtype in COLUMNS.values()]

# The record the kernel writes per frame; the Headers columns are views of
# its fields. Widest fields first: every field is naturally aligned without
# padding inside the record (95 bytes of fields, 96 with the tail). The
# records live in a plain uint8 array, viewed as records with np.frombuffer:
# numpy allocates an array of a 30-field dtype ~1 us slower (it walks the
# fields), a fixed cost per call worth sparing.
_ROW = np.dtype([(name, COLUMNS[name]) for name in
                 sorted(COLUMNS, key=lambda name: -np.dtype(COLUMNS[name]).itemsize)],
                align=True)
_field_views = operator.itemgetter(*Headers._fields)  # records -> tuple of field views
_bases = operator.attrgetter("base")
_dtypes = operator.attrgetter("dtype")


def _new_rows(n: int) -> np.ndarray:
    return np.frombuffer(np.empty(n * _ROW.itemsize, np.uint8), _ROW)


def _headers(rows: np.ndarray) -> Headers:
    return Headers._make(_field_views(rows))


def empty_headers(n: int) -> Headers:
    """Uninitialised columns for n frames (the kernel writes every cell):
    views of one new record array, as `parse(out=...)` wants them."""
    return _headers(_new_rows(n))


def parse(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
          vxlan_ports=DEFAULT_VXLAN_PORTS, out: Headers | None = None) -> Headers:
    """Parse frames buf[starts[k] : starts[k] + lengths[k]] into a `Headers`.

    buf is uint8[:]; starts and lengths are int64[n] and every frame lies
    inside buf. vxlan_ports: UDP destination ports treated as VXLAN (may be
    empty). out: a `Headers` to fill and return instead of new ones, whose
    columns are views of one record array of n rows: that of
    `empty_headers(n)` or of an earlier parse of n frames.
    """
    buf = _check.array(buf, "buf", np.uint8)
    starts = _check.array(starts, "starts", np.int64)
    lengths = _check.array(lengths, "lengths", np.int64)
    n = len(starts)
    if len(lengths) != n:  # as _check.same_length, without its cost per call
        raise ValueError(f"arrays must have the same length: starts={n}, lengths={len(lengths)}")
    ports = _vxlan_port_array(vxlan_ports)
    if out is None:
        rows = _new_rows(n)
        out = _headers(rows)
    else:
        rows = _rows_of(out, n)
    k = _parse(buf, starts, lengths, ports, rows)
    if k >= 0:
        raise ValueError(f"frame {k}: start {starts[k]} and length {lengths[k]} do not lie "
                         f"inside buf ({len(buf)} bytes)")
    return out


def _vxlan_port_array(vxlan_ports) -> np.ndarray:
    if isinstance(vxlan_ports, (str, bytes)) or not hasattr(vxlan_ports, "__iter__"):
        raise ValueError(f"vxlan_ports: expected a sequence of UDP ports, got {vxlan_ports!r}")
    ports = tuple(vxlan_ports)
    try:
        # The types are part of the key: True == 1 and 4789.0 == 4789 must
        # not pass for validated ports.
        return _port_array(ports, tuple(map(type, ports)))
    except TypeError:  # unhashable, so not an integer
        raise ValueError(f"vxlan_ports: expected integers, got {vxlan_ports!r}") from None


@functools.lru_cache(maxsize=64)
def _port_array(ports: tuple, port_types: tuple) -> np.ndarray:
    """The ports validated, as the kernel's int64 array: cached, since the
    data plane passes the same few tuples on every call (read-only, as it is
    shared)."""
    array = np.array([_check.integer(p, "vxlan_ports", 0, 0xFFFF) for p in ports],
                     dtype=np.int64)
    array.flags.writeable = False
    return array


def _rows_of(out, n: int) -> np.ndarray:
    """The records behind out's columns, which the kernel fills. Every
    column must have as its numpy base the same uint8 array of n records'
    bytes (as `_new_rows` makes them), its field's dtype and n rows. (The
    per-column checks run in C, through map: they are most of the fixed
    cost of a call with out=.)"""
    raw = getattr(out[0], "base", None) if isinstance(out, Headers) else None
    try:
        ok = (isinstance(raw, np.ndarray) and raw.dtype == np.uint8
              and raw.shape == (n * _ROW.itemsize,)
              and raw.flags.c_contiguous and raw.flags.writeable
              and set(map(id, map(_bases, out))) == {id(raw)}
              and list(map(_dtypes, out)) == _DTYPES
              and set(map(len, out)) == {n})
    except (AttributeError, TypeError):  # a column that is no array, or 0-d
        ok = False
    if not ok:
        raise ValueError(f"out: expected the Headers of empty_headers({n}) or of an "
                         f"earlier parse of {n} frames")
    return np.frombuffer(raw, _ROW)


# -- big-endian reads -------------------------------------------------------
# A header field is read with one unaligned load and a byte swap. Numba has no
# such load, and LLVM does not merge shifted byte reads back into one when only
# part of the word is used (it splits it into byte loads), so a small
# intrinsic emits it: it made the kernel ~20% faster. The intrinsic skips
# numba's bounds check. Every caller checks the frame length first, and under
# EMU_JIT_BOUNDSCHECK the readers take the indexed, bounds-checked path
# instead, so the fuzz tests check the very same bytes.

_WORD = {2: types.uint16, 4: types.uint32, 8: types.uint64}


def _load_be(nbytes: int):
    """An intrinsic (buf: uint8[:], pos: int64) -> int64: the nbytes-wide
    big-endian word at buf[pos] (8 bytes: two's complement bits)."""
    @intrinsic
    def load(typingctx, arr, pos):
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint8
                and pos == types.int64):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            word = context.get_value_type(_WORD[nbytes])
            where = builder.bitcast(builder.gep(data, [args[1]]), word.as_pointer())
            value = builder.bswap(builder.load(where, align=1))
            return builder.zext(value, context.get_value_type(types.int64))
        return types.int64(arr, pos), codegen
    return load


_load_be16 = _load_be(2)
_load_be32 = _load_be(4)
_load_be64 = _load_be(8)


@jit
def _u8(buf, p):
    # An unsigned index spares numba's negative-index wraparound check;
    # positions here are never negative.
    return np.int64(buf[np.uint64(p)])


@jit
def _be16(buf, p):
    if BOUNDSCHECK:
        return (_u8(buf, p) << 8) | _u8(buf, p + 1)
    return _load_be16(buf, p)


@jit
def _be32(buf, p):
    if BOUNDSCHECK:
        return (_be16(buf, p) << 16) | _be16(buf, p + 2)
    return _load_be32(buf, p)


@jit
def _mac(buf, p):
    """The 48-bit MAC address at p, read as one 8-byte word: p + 8 must be
    inside the frame."""
    if BOUNDSCHECK:
        word = (_be32(buf, p) << 32) | _be32(buf, p + 4)
    else:
        word = _load_be64(buf, p)
    return (word >> 16) & 0xFFFFFFFFFFFF  # the mask drops the sign extension


@jit
def _is_vxlan_port(ports, port):
    for k in range(len(ports)):
        if ports[k] == port:
            return True
    return False


@jit
def _parse(buf, starts, lengths, ports, out):
    """Parse each frame into its record of `out`. Fields live in locals while
    parsing (an error breaks out of the one-pass `while`), then the record is
    stored once. Returns -1, or the first frame not inside buf, before
    writing anything."""
    size = len(buf)
    for i in range(len(starts)):
        # Unsigned compares: a negative start or length is huge, so outside.
        if (np.uint64(starts[i]) > np.uint64(size)
                or np.uint64(lengths[i]) > np.uint64(size - starts[i])):
            return i
    for i in range(len(starts)):
        if i + AHEAD < len(starts):   # the headers of a frame ahead: at most two lines
            prefetch(buf, starts[i + AHEAD])
            prefetch(buf, starts[i + AHEAD] + 64)
        s = starts[i]
        n = lengths[i]
        code = 0
        flags = 0
        eth_dst = 0
        eth_src = 0
        vlan_tci = 0
        ethertype = 0
        l3_off = -1
        arp_op = 0
        arp_sha = 0
        arp_tha = 0
        ip_src = 0
        ip_dst = 0
        ip_proto = 0
        tos = 0
        ttl = 0
        ip_len = 0
        ip_id = 0
        frag_off = 0
        l4_off = -1
        sport = 0
        dport = 0
        tcp_flags = 0
        tcp_seq = 0
        tcp_ack = 0
        icmp_type = 0
        icmp_code = 0
        payload_off = -1
        payload_len = 0
        vni = -1
        inner_off = -1
        while True:
            # -- Ethernet II, at most one 802.1Q tag --------------------------
            if n < 14:
                code = drop.TRUNC_ETH
                break
            eth_dst = _mac(buf, s)
            eth_src = _mac(buf, s + 6)
            ethertype = _be16(buf, s + 12)
            l3 = 14
            if ethertype == ETH_P_8021Q:
                if n < 18:
                    code = drop.TRUNC_VLAN
                    break
                flags |= HAS_VLAN
                vlan_tci = _be16(buf, s + 14)
                ethertype = _be16(buf, s + 16)
                l3 = 18
            l3_off = l3
            p = s + l3          # absolute position of the L3 header
            avail = n - l3      # bytes of the frame from there on

            if ethertype == ETH_P_ARP:
                # -- ARP (RFC 826), Ethernet/IPv4 only, as arp_rcv ------------
                if avail < 28:
                    code = drop.TRUNC_ARP
                    break
                # hardware type Ethernet, protocol IPv4, address lengths 6, 4
                if _be32(buf, p) != (1 << 16 | ETH_P_IP) or _be16(buf, p + 4) != 0x0604:
                    code = drop.BAD_ARP
                    break
                flags |= ARP
                arp_op = _be16(buf, p + 6)
                arp_sha = _mac(buf, p + 8)
                ip_src = _be32(buf, p + 14)
                arp_tha = _mac(buf, p + 18)
                ip_dst = _be32(buf, p + 24)
                break
            if ethertype != ETH_P_IP:
                code = drop.UNKNOWN_ETHERTYPE
                break

            # -- IPv4 (RFC 791), checked in ip_rcv_core's order --------------
            if avail < 20:
                code = drop.TRUNC_IPV4
                break
            w0 = _be32(buf, p)  # version, IHL, TOS, total length
            if w0 >> 28 != 4:
                code = drop.BAD_IP_VERSION
                break
            w1 = _be32(buf, p + 4)  # identification, flags, fragment offset
            w2 = _be32(buf, p + 8)  # TTL, protocol, header checksum
            flags |= IPV4
            tos = (w0 >> 16) & 0xFF
            ip_len = w0 & 0xFFFF
            ip_id = w1 >> 16
            ttl = w2 >> 24
            ip_proto = (w2 >> 16) & 0xFF
            ip_src = _be32(buf, p + 12)
            ip_dst = _be32(buf, p + 16)
            frag_off = (w1 & 0x1FFF) << 3
            more_frags = (w1 & 0x2000) != 0
            ihl = (w0 >> 22) & 0x3C
            # Branch-free: DF and MF sit 8 bits above their flags' positions.
            flags |= ((w1 & 0x6000) >> 8) | FRAGMENT * ((w1 & 0x3FFF) != 0)
            flags |= IP_OPTIONS * (ihl > 20)
            if ihl < 20 or ihl > avail:
                code = drop.BAD_IHL
                break
            # Header checksum (RFC 1071): the ones' complement sum of the
            # header's 16-bit words must be 0xFFFF. Summing 32-bit words and
            # folding the carries gives the same sum (2**16 = 1 mod 0xFFFF).
            # Two folds bring the < 2**36 total to <= 0x1000F; a value above
            # 0xFFFF there would fold to <= 0x10, so it fails either way.
            csum = w0 + w1 + w2 + ip_src + ip_dst
            for k in range(p + 20, p + ihl, 4):
                csum += _be32(buf, k)
            csum = (csum & 0xFFFF) + (csum >> 16)
            csum = (csum & 0xFFFF) + (csum >> 16)
            if csum != 0xFFFF:
                code = drop.BAD_IP_CHECKSUM
                break
            if ip_len > avail or ip_len < ihl:
                code = drop.BAD_IP_LENGTH
                break
            l4 = l3 + ihl
            l4_off = l4
            if frag_off != 0:
                break               # later fragment: no L4 header here
            q = s + l4              # absolute position of the L4 header
            l4_avail = ip_len - ihl  # L4 bytes in this packet (padding excluded)

            # A header cut short: a drop, or in a first fragment the end of what
            # this packet holds (the datagram continues in the next fragment).
            if ip_proto == IPPROTO_TCP:
                # -- TCP (RFC 9293), as tcp_v4_rcv ----------------------------
                if l4_avail < 20:
                    code = 0 if more_frags else drop.TRUNC_TCP
                    break
                flags |= TCP
                ports_word = _be32(buf, q)
                sport = ports_word >> 16
                dport = ports_word & 0xFFFF
                tcp_seq = _be32(buf, q + 4)
                tcp_ack = _be32(buf, q + 8)
                offset_flags = _be16(buf, q + 12)
                tcp_flags = offset_flags & 0xFF
                doff = (offset_flags >> 12) << 2
                if doff < 20:
                    code = drop.BAD_TCP_OFFSET
                    break
                if doff > l4_avail:
                    code = 0 if more_frags else drop.BAD_TCP_OFFSET
                    break
                flags |= L4
                payload_off = l4 + doff
                payload_len = l4_avail - doff
            elif ip_proto == IPPROTO_UDP:
                # -- UDP (RFC 768), as __udp4_lib_rcv -------------------------
                if l4_avail < 8:
                    code = 0 if more_frags else drop.TRUNC_UDP
                    break
                flags |= UDP
                ports_word = _be32(buf, q)
                sport = ports_word >> 16
                dport = ports_word & 0xFFFF
                udp_len = _be16(buf, q + 4)
                if udp_len < 8 or (udp_len > l4_avail and not more_frags):
                    code = drop.BAD_UDP_LENGTH
                    break
                flags |= L4
                payload_off = l4 + 8
                payload_len = min(udp_len, l4_avail) - 8
                if _is_vxlan_port(ports, dport):
                    # -- VXLAN (RFC 7348), as vxlan_rcv -----------------------
                    if payload_len < 8:
                        code = 0 if more_frags else drop.TRUNC_VXLAN
                        break
                    flags |= VXLAN
                    v = s + payload_off
                    if (_u8(buf, v) & 0x08) == 0:   # I flag: the VNI is valid
                        code = drop.BAD_VXLAN_FLAGS
                        break
                    vni = _be32(buf, v + 4) >> 8    # 24 bits, then a reserved byte
                    if payload_len < 8 + 14:
                        code = 0 if more_frags else drop.TRUNC_VXLAN
                        break
                    inner_off = payload_off + 8
            elif ip_proto == IPPROTO_ICMP:
                # -- ICMP (RFC 792), as icmp_rcv ------------------------------
                if l4_avail < 8:
                    code = 0 if more_frags else drop.TRUNC_ICMP
                    break
                flags |= ICMP | L4
                icmp_type = _u8(buf, q)
                icmp_code = _u8(buf, q + 1)
                payload_off = l4 + 8
                payload_len = l4_avail - 8
                if icmp_type == 0 or icmp_type == 8 or 13 <= icmp_type <= 18:  # queries
                    sport = _be16(buf, q + 4)   # identifier
                    dport = _be16(buf, q + 6)   # sequence number
                elif 3 <= icmp_type <= 5 or icmp_type == 11 or icmp_type == 12:  # errors
                    flags |= ICMP_ERROR
                    if payload_len >= 20:
                        inner_off = payload_off
            break

        row = out[i]
        row.drop = code
        row.flags = flags
        row.eth_dst = eth_dst
        row.eth_src = eth_src
        row.vlan_tci = vlan_tci
        row.ethertype = ethertype
        row.l3_off = l3_off
        row.arp_op = arp_op
        row.arp_sha = arp_sha
        row.arp_tha = arp_tha
        row.ip_src = ip_src
        row.ip_dst = ip_dst
        row.ip_proto = ip_proto
        row.tos = tos
        row.ttl = ttl
        row.ip_len = ip_len
        row.ip_id = ip_id
        row.frag_off = frag_off
        row.l4_off = l4_off
        row.sport = sport
        row.dport = dport
        row.tcp_flags = tcp_flags
        row.tcp_seq = tcp_seq
        row.tcp_ack = tcp_ack
        row.icmp_type = icmp_type
        row.icmp_code = icmp_code
        row.payload_off = payload_off
        row.payload_len = payload_len
        row.vni = vni
        row.inner_off = inner_off
    return -1
