"""The Internet checksum (RFC 1071), its incremental update (RFC 1624) and the
TCP/UDP/ICMP checksums over IPv4, on a flat uint8 packet buffer.

Summing fast. RFC 1071 section 2 notes that the ones' complement sum does not
depend on byte order: summing the data as little-endian 16-bit words and
swapping the two bytes of the folded result gives the big-endian sum. So
`ones_sum` reads 8 bytes at a time as one little-endian uint64 and adds its
two 32-bit halves to a uint64 accumulator: no carry is lost (each step adds
less than 2**33) and there is no carry test in the loop, so LLVM vectorises
it. The bytes are assembled with shifts at unsigned indices (no negative-index
wraparound check), which LLVM turns into plain loads; nothing is read outside
the range and nothing assumes alignment. Every 2**30 words the accumulator is
folded to 33 bits so it cannot overflow on any buffer. A range is paired from
its own first byte; an odd last byte is padded with a zero byte.

Scalar cores (jitted, for other kernels to call from inside numba):

  ones_sum(buf, start, length, acc) -> uint64
      `acc` plus the big-endian 16-bit words of buf[start:start+length], as an
      unfolded ones' complement sum. A range reaching outside `buf` is cut to
      it: the cores never read outside the buffer, whatever they are given.
  fold(acc) -> int64            the 16-bit ones' complement sum, in [0, 0xFFFF]
  finish(acc) -> int64          ~fold(acc): the value a checksum field holds
  pseudo_header_sum(src, dst, proto, length) -> uint64   (RFC 793/768)
  ipv4_header_checksum(buf, ip_off) -> int64
  l4_checksum(buf, ip_off, l4_off, l4_len, proto) -> int64
      Both compute the checksum field's value as if the field were zero, so
      one call both fills a field and verifies one (compare with what is
      there). They return -1 when the header (or the IPv4 addresses, or the
      L4 checksum field) lies outside the buffer, when the IHL is below 5 or
      for a protocol other than ICMP (1), TCP (6) or UDP (17).
  csum_replace16(check, old, new, udp=False) -> int64
  csum_replace32(check, old, new, udp=False) -> int64
      RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for one 16-bit word or a 32-bit
      field (an IPv4 address: two words). Eqn. 3 never yields -0 (0xFFFF)
      where a full recomputation gives 0x0000, which eqn. 2 can (RFC 1624
      section 3): the folded sum of words that are not all zero is in
      [1, 0xFFFF], both ways. So the update equals a full recomputation
      whenever the checksummed words are not all zero after the change --
      always for IPv4 (version 4) and TCP/UDP (the pseudo-header holds the
      protocol). `udp=True` adds UDP's rules as Linux's NAT applies them:
      a zero checksum means "none" and stays 0, and a computed 0 is sent as
      0xFFFF (RFC 768; CSUM_MANGLED_0 in nf_nat_proto.c).

Checksum values are int64 in the scalar cores (16-bit values are easy to shift
and store from int64 without numba's uint64/int64 float promotion), uint16 in
the batch wrappers, and always the field's value read as a big-endian number
(the field's first byte is `value >> 8`).

Public wrappers (validate, then call a private batch kernel):

  checksum(buf, start, length) -> int
  checksums(buf, starts, lengths) -> uint16[n]
  ipv4_header_checksums(buf, ip_offs) -> uint16[n]
  l4_checksums(buf, ip_offs, l4_offs, l4_lens) -> uint16[n]
  update16(checks, old, new, udp=False) -> uint16[n]
  update32(checks, old, new, udp=False) -> uint16[n]

`l4_checksums` takes explicit L4 offsets and lengths rather than deriving them
from the IPv4 header: the data plane has them from `kernels.parse` (`l4_off`,
`ip_len` minus the header length), and a UDP datagram shorter than its IP
payload is checksummed over its own length, as Linux does after trimming.
The protocol and addresses come from the IPv4 header at `ip_offs`; the
pseudo-header length is `l4_lens`. ICMP (RFC 792) has no pseudo-header.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels._jit import jit

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV4_CHECK_OFFSET = 10          # header checksum, bytes 10-11 of the IPv4 header
IPV4_MIN_HEADER = 20
# offset of the checksum field in each L4 header
ICMP_CHECK_OFFSET = 2           # RFC 792
TCP_CHECK_OFFSET = 16           # RFC 9293
UDP_CHECK_OFFSET = 6            # RFC 768
L4_CHECK_OFFSET = {IPPROTO_ICMP: ICMP_CHECK_OFFSET, IPPROTO_TCP: TCP_CHECK_OFFSET,
                   IPPROTO_UDP: UDP_CHECK_OFFSET}

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_LOW32 = np.uint64(0xFFFFFFFF)
_LOW16 = np.uint64(0xFFFF)
_S32 = np.uint64(32)
_S16 = np.uint64(16)
_S8 = np.uint64(8)
# Words summed between two folds of the accumulator: each adds < 2**33, so
# 2**30 of them add < 2**63 to an accumulator folded below 2**33.
_WORDS_PER_FOLD = np.uint64(1 << 30)


# --- scalar cores --------------------------------------------------------------

@jit
def fold(acc):
    """Fold a uint64 ones' complement sum to 16 bits (end-around carries):
    0 only for a sum of zeros, else in [1, 0xFFFF]. 2**16 - 1 divides
    2**32 - 1 and 2**64 - 1, so each step keeps the sum modulo 0xFFFF."""
    x = np.uint64(acc)
    x = (x & _LOW32) + (x >> _S32)   # < 2**33
    x = (x & _LOW16) + (x >> _S16)   # < 2**17 + 2**16
    x = (x & _LOW16) + (x >> _S16)   # <= 0x10001
    x = (x & _LOW16) + (x >> _S16)   # <= 0xFFFF
    return np.int64(x)


@jit
def finish(acc):
    """The checksum field's value for a sum: its ones' complement."""
    return ~fold(acc) & 0xFFFF


@jit
def _add(acc, x):
    """Ones' complement addition of two uint64 partial sums (end-around carry)."""
    s = acc + x
    if s < x:
        s += _ONE
    return s


@jit
def _sum_le(buf, lo, n):
    """Unfolded sum of the `n` bytes from buf[lo] as little-endian 16-bit
    words, an odd last byte standing alone. The caller guarantees
    0 <= lo and lo + n <= len(buf)."""
    base = np.uint64(lo)
    words = np.uint64(n) >> np.uint64(3)
    acc = _ZERO
    done = _ZERO
    while done < words:
        stop = min(words, done + _WORDS_PER_FOLD)
        for k in range(done, stop):
            i = base + (k << np.uint64(3))
            w = (np.uint64(buf[i])
                 | (np.uint64(buf[i + np.uint64(1)]) << np.uint64(8))
                 | (np.uint64(buf[i + np.uint64(2)]) << np.uint64(16))
                 | (np.uint64(buf[i + np.uint64(3)]) << np.uint64(24))
                 | (np.uint64(buf[i + np.uint64(4)]) << np.uint64(32))
                 | (np.uint64(buf[i + np.uint64(5)]) << np.uint64(40))
                 | (np.uint64(buf[i + np.uint64(6)]) << np.uint64(48))
                 | (np.uint64(buf[i + np.uint64(7)]) << np.uint64(56)))
            acc += (w & _LOW32) + (w >> _S32)
        acc = (acc & _LOW32) + (acc >> _S32)
        done = stop
    i = base + (words << np.uint64(3))
    end = base + np.uint64(n)
    while i + _ONE < end:
        acc += np.uint64(buf[i]) | (np.uint64(buf[i + _ONE]) << _S8)
        i += np.uint64(2)
    if i < end:
        acc += np.uint64(buf[i])    # the zero pad byte is the high byte here
    return acc


@jit
def ones_sum(buf, start, length, acc):
    """`acc` plus the big-endian 16-bit words of buf[start:start+length] (an
    odd last byte padded with zero), an unfolded uint64 ones' complement sum.
    The range is cut to the buffer, so no call reads outside it."""
    start = np.int64(start)
    length = np.int64(length)
    acc = np.uint64(acc)
    size = np.int64(len(buf))
    if length <= 0 or start >= size:
        return acc
    if start < 0:               # drop the part before the buffer (opposite signs: no overflow)
        length += start
        start = np.int64(0)
    n = min(length, size - start)
    if n <= 0:
        return acc
    le = fold(_sum_le(buf, start, n))
    be = ((le & 0xFF) << 8) | (le >> 8)    # RFC 1071 2(B): swap after folding
    return _add(acc, np.uint64(be))


@jit
def pseudo_header_sum(src, dst, proto, length):
    """Unfolded sum of the IPv4 pseudo-header of TCP (RFC 793) and UDP (RFC 768):
    source, destination, zero, protocol, L4 length."""
    s = np.uint64(src)
    d = np.uint64(dst)
    return ((s >> _S16) + (s & _LOW16) + (d >> _S16) + (d & _LOW16)
            + np.uint64(proto) + np.uint64(length))


@jit
def _be32(buf, p):
    """The big-endian uint32 at buf[p:p+4] (the caller checks the bounds)."""
    return ((np.uint64(buf[p]) << np.uint64(24)) | (np.uint64(buf[p + 1]) << _S16)
            | (np.uint64(buf[p + 2]) << _S8) | np.uint64(buf[p + 3]))


@jit
def ipv4_header_checksum(buf, ip_off):
    """The header checksum the IPv4 header at `ip_off` should carry (its own
    field counted as zero), or -1 if the header is cut short or its IHL < 5."""
    ip_off = np.int64(ip_off)
    if ip_off < 0 or ip_off >= len(buf):
        return np.int64(-1)
    ihl = np.int64(buf[ip_off] & 0xF) * 4
    if ihl < IPV4_MIN_HEADER or ip_off + ihl > len(buf):
        return np.int64(-1)
    acc = ones_sum(buf, ip_off, IPV4_CHECK_OFFSET, _ZERO)
    acc = ones_sum(buf, ip_off + IPV4_CHECK_OFFSET + 2, ihl - IPV4_CHECK_OFFSET - 2, acc)
    return finish(acc)


@jit
def _check_offset(proto):
    """Offset of the checksum field in the L4 header of `proto`, -1 if unsupported."""
    if proto == IPPROTO_TCP:
        return np.int64(TCP_CHECK_OFFSET)
    if proto == IPPROTO_UDP:
        return np.int64(UDP_CHECK_OFFSET)
    if proto == IPPROTO_ICMP:
        return np.int64(ICMP_CHECK_OFFSET)
    return np.int64(-1)


@jit
def l4_checksum(buf, ip_off, l4_off, l4_len, proto):
    """The checksum the ICMP/TCP/UDP header at `l4_off` should carry over its
    `l4_len` bytes (its own field counted as zero), with the IPv4
    pseudo-header for TCP and UDP (addresses from the IPv4 header at
    `ip_off`, length `l4_len`). A UDP checksum computed as 0 is 0xFFFF
    (RFC 768: 0 means "no checksum"). -1 if the protocol is not one of these
    three, or the addresses or the L4 range (which must hold the checksum
    field) lie outside the buffer."""
    ip_off = np.int64(ip_off)
    l4_off = np.int64(l4_off)
    l4_len = np.int64(l4_len)
    proto = np.int64(proto)
    size = np.int64(len(buf))
    field = _check_offset(proto)
    if field < 0 or l4_off < 0 or l4_len < field + 2 or l4_len > size - l4_off:
        return np.int64(-1)
    acc = _ZERO
    if proto != IPPROTO_ICMP:
        if ip_off < 0 or ip_off > size - IPV4_MIN_HEADER:
            return np.int64(-1)
        acc = pseudo_header_sum(_be32(buf, ip_off + 12), _be32(buf, ip_off + 16), proto, l4_len)
    acc = ones_sum(buf, l4_off, field, acc)
    acc = ones_sum(buf, l4_off + field + 2, l4_len - field - 2, acc)
    c = finish(acc)
    if proto == IPPROTO_UDP and c == 0:
        c = np.int64(0xFFFF)
    return c


@jit
def _replace(check, acc, udp):
    """~(~HC + acc) where acc is ~m + m' summed: RFC 1624 eqn. 3, with the
    UDP rules when `udp` (0 stays 0; 0 becomes 0xFFFF)."""
    check = np.int64(check) & 0xFFFF
    if udp and check == 0:
        return np.int64(0)
    c = finish(np.uint64(~check & 0xFFFF) + acc)
    if udp and c == 0:
        c = np.int64(0xFFFF)
    return c


@jit
def csum_replace16(check, old, new, udp=False):
    """RFC 1624 eqn. 3 for a 16-bit word changing from `old` to `new`."""
    o = np.uint64(old) & _LOW16
    n = np.uint64(new) & _LOW16
    return _replace(check, (~o & _LOW16) + n, udp)


@jit
def csum_replace32(check, old, new, udp=False):
    """RFC 1624 eqn. 3 for a 32-bit field (two words) changing from `old` to `new`."""
    o = np.uint64(old) & _LOW32
    n = np.uint64(new) & _LOW32
    acc = (~(o >> _S16) & _LOW16) + (~o & _LOW16) + (n >> _S16) + (n & _LOW16)
    return _replace(check, acc, udp)


# --- batch kernels -----------------------------------------------------------

@jit
def _checksums(buf, starts, lengths, out):
    for k in range(len(starts)):
        out[k] = finish(ones_sum(buf, starts[k], lengths[k], _ZERO))


@jit
def _ipv4_header_checksums(buf, ip_offs, out):
    for k in range(len(ip_offs)):
        out[k] = ipv4_header_checksum(buf, ip_offs[k])


@jit
def _l4_checksums(buf, ip_offs, l4_offs, l4_lens, out):
    for k in range(len(ip_offs)):
        ip = ip_offs[k]
        proto = buf[ip + 9] if 0 <= ip <= len(buf) - IPV4_MIN_HEADER else 0
        out[k] = l4_checksum(buf, ip, l4_offs[k], l4_lens[k], proto)


@jit
def _update16(checks, old, new, udp, out):
    for k in range(len(checks)):
        out[k] = csum_replace16(checks[k], old[k], new[k], udp)


@jit
def _update32(checks, old, new, udp, out):
    for k in range(len(checks)):
        out[k] = csum_replace32(checks[k], old[k], new[k], udp)


# --- public wrappers -------------------------------------------------------------

def _ranges_in(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, what: str) -> None:
    """Every [start, start + length) inside `buf` (a ValueError naming the first that is not)."""
    size = len(buf)
    _check.in_range(starts, f"{what} starts", 0, size)
    _check.in_range(lengths, f"{what} lengths", 0, size)
    past = np.nonzero(starts + lengths > size)[0]
    if len(past):
        k = past[0]
        raise ValueError(f"{what} range {k} [{starts[k]}, {starts[k] + lengths[k]}) "
                         f"ends past the buffer ({size} bytes)")


def checksum(buf: np.ndarray, start: int, length: int) -> int:
    """RFC 1071 checksum of buf[start:start+length] (odd lengths padded with a
    zero byte): ~(ones' complement sum) as a 16-bit big-endian value."""
    buf = _check.array(buf, "buf", np.uint8)
    start = _check.integer(start, "start", 0, len(buf))
    length = _check.integer(length, "length", 0, len(buf) - start)
    return int(finish(ones_sum(buf, start, length, _ZERO)))


def checksums(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """RFC 1071 checksum of each range buf[starts[k]:starts[k]+lengths[k]] (int64 arrays)."""
    buf = _check.array(buf, "buf", np.uint8)
    starts = _check.array(starts, "starts", np.int64)
    lengths = _check.array(lengths, "lengths", np.int64)
    n = _check.same_length(starts=starts, lengths=lengths)
    _ranges_in(buf, starts, lengths, "byte")
    out = np.empty(n, np.uint16)
    _checksums(buf, starts, lengths, out)
    return out


def _ipv4_headers_in(buf: np.ndarray, ip_offs: np.ndarray) -> None:
    _check.in_range(ip_offs, "ip_offs", 0, len(buf) - IPV4_MIN_HEADER)
    ihl = (buf[ip_offs] & 0xF).astype(np.int64) * 4
    bad = np.nonzero((ihl < IPV4_MIN_HEADER) | (ip_offs + ihl > len(buf)))[0]
    if len(bad):
        k = bad[0]
        raise ValueError(f"ip_offs[{k}]={ip_offs[k]}: IPv4 header length {ihl[k]} is "
                         f"below 20 or runs past the buffer ({len(buf)} bytes)")


def ipv4_header_checksums(buf: np.ndarray, ip_offs: np.ndarray) -> np.ndarray:
    """The header checksum of each IPv4 header at `ip_offs` (int64), counting
    its own field as zero: the value to store, or to compare for verifying."""
    buf = _check.array(buf, "buf", np.uint8)
    ip_offs = _check.array(ip_offs, "ip_offs", np.int64)
    _ipv4_headers_in(buf, ip_offs)
    out = np.empty(len(ip_offs), np.uint16)
    _ipv4_header_checksums(buf, ip_offs, out)
    return out


def l4_checksums(buf: np.ndarray, ip_offs: np.ndarray, l4_offs: np.ndarray,
                 l4_lens: np.ndarray) -> np.ndarray:
    """The ICMP/TCP/UDP checksum of each packet, counting its own field as
    zero. Packet k's protocol and addresses are read from the IPv4 header at
    ip_offs[k]; its L4 header and data are buf[l4_offs[k]:l4_offs[k]+l4_lens[k]]
    and l4_lens[k] is the pseudo-header length. UDP's computed 0 is 0xFFFF."""
    buf = _check.array(buf, "buf", np.uint8)
    ip_offs = _check.array(ip_offs, "ip_offs", np.int64)
    l4_offs = _check.array(l4_offs, "l4_offs", np.int64)
    l4_lens = _check.array(l4_lens, "l4_lens", np.int64)
    n = _check.same_length(ip_offs=ip_offs, l4_offs=l4_offs, l4_lens=l4_lens)
    _check.in_range(ip_offs, "ip_offs", 0, len(buf) - IPV4_MIN_HEADER)
    _ranges_in(buf, l4_offs, l4_lens, "L4")
    protos = buf[ip_offs + 9]
    for proto in np.unique(protos).tolist():
        if proto not in L4_CHECK_OFFSET:
            k = int(np.nonzero(protos == proto)[0][0])
            raise ValueError(f"packet {k}: IPv4 protocol {proto} is not ICMP (1), TCP (6) or UDP (17)")
        need = L4_CHECK_OFFSET[proto] + 2
        short = np.nonzero((protos == proto) & (l4_lens < need))[0]
        if len(short):
            k = short[0]
            raise ValueError(f"packet {k}: L4 length {l4_lens[k]} does not hold the "
                             f"checksum field (protocol {proto} needs {need} bytes)")
    out = np.empty(n, np.uint16)
    _l4_checksums(buf, ip_offs, l4_offs, l4_lens, out)
    return out


def _udp_flag(udp) -> bool:
    if not isinstance(udp, (bool, np.bool_)):
        raise ValueError(f"udp: expected a bool, got {type(udp).__name__}")
    return bool(udp)


def update16(checks: np.ndarray, old: np.ndarray, new: np.ndarray, udp: bool = False) -> np.ndarray:
    """Checksums (uint16) after one 16-bit word of each header changes from
    old[k] to new[k] (uint16), by RFC 1624 eqn. 3; `udp` applies UDP's zero rules."""
    checks = _check.array(checks, "checks", np.uint16)
    old = _check.array(old, "old", np.uint16)
    new = _check.array(new, "new", np.uint16)
    n = _check.same_length(checks=checks, old=old, new=new)
    out = np.empty(n, np.uint16)
    _update16(checks, old, new, _udp_flag(udp), out)
    return out


def update32(checks: np.ndarray, old: np.ndarray, new: np.ndarray, udp: bool = False) -> np.ndarray:
    """Checksums (uint16) after a 32-bit field of each header (an IPv4
    address) changes from old[k] to new[k] (uint32), by RFC 1624 eqn. 3."""
    checks = _check.array(checks, "checks", np.uint16)
    old = _check.array(old, "old", np.uint32)
    new = _check.array(new, "new", np.uint32)
    n = _check.same_length(checks=checks, old=old, new=new)
    out = np.empty(n, np.uint16)
    _update32(checks, old, new, _udp_flag(udp), out)
    return out
