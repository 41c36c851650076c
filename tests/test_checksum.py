"""kernels.checksum against Scapy's checksums and the plain-Python RFC 1071 /
RFC 1624 reference in tests/reference/checksum.py."""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest
import scapy.utils
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP

from kernels import checksum as ck
from kernels._jit import jit
from tests.reference import checksum as ref
from tests.util import run_with_boundscheck

U32 = st.integers(0, 2**32 - 1)
U16 = st.integers(0, 0xFFFF)
ADDRESSES = U32.map(lambda a: str(ipaddress.IPv4Address(a)))


def as_buf(data: bytes) -> np.ndarray:
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def be16(buf: np.ndarray, p: int) -> int:
    return (int(buf[p]) << 8) | int(buf[p + 1])


def put16(buf: np.ndarray, p: int, v: int) -> None:
    buf[p], buf[p + 1] = v >> 8, v & 0xFF


# Byte strings: random, and the adversarial fills (all 0xFF, all zero) at any length.
byte_strings = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b, n: b * n, st.sampled_from([b"\xff", b"\x00", b"\xff\x00", b"\x00\xff"]),
              st.integers(0, 300)),
)


@st.composite
def buffers_with_ranges(draw):
    data = draw(byte_strings)
    size = len(data)
    ranges = draw(st.lists(st.tuples(st.integers(0, size), st.integers(0, size)), max_size=8))
    starts = [s for s, _ in ranges]
    lengths = [min(n, size - s) for s, n in ranges]
    return data, starts, lengths


# --- known answers -----------------------------------------------------------

def test_rfc1071_numerical_example():
    # RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ck.checksum(as_buf(data), 0, 8) == ~0xDDF2 & 0xFFFF
    assert ref.ones_sum(data) == 0xDDF2


def test_rfc1624_example_gives_plus_zero():
    # RFC 1624 section 4: m = 0x5555 -> 0x3285 with the rest summing to
    # 0xCD7A; the full recomputation is 0x0000, which eqn. 3 gives (eqn. 2
    # gives -0, 0xFFFF).
    hc = ~(0xCD7A + 0x5555 - 0xFFFF) & 0xFFFF          # ones' complement sum with carry
    assert hc == ref.internet_checksum(bytes.fromhex("cd7a5555"))
    assert ref.internet_checksum(bytes.fromhex("cd7a3285")) == 0x0000
    out = ck.update16(np.array([hc], np.uint16), np.array([0x5555], np.uint16),
                      np.array([0x3285], np.uint16))
    assert out.tolist() == [0x0000]


def test_empty_and_single_byte():
    buf = as_buf(b"\xab\xcd")
    assert ck.checksum(buf, 0, 0) == 0xFFFF          # sum of nothing is 0
    assert ck.checksum(buf, 1, 1) == ~0xCD00 & 0xFFFF  # padded with a zero byte
    assert ck.checksums(buf, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)


# --- against Scapy ----------------------------------------------------------------

@settings(max_examples=300)
@given(byte_strings, st.data())
def test_checksum_matches_scapy(data, draw):
    start = draw.draw(st.integers(0, len(data)))
    length = draw.draw(st.integers(0, len(data) - start))
    assert ck.checksum(as_buf(data), start, length) == scapy.utils.checksum(data[start:start + length])


@st.composite
def scapy_packets(draw):
    ip = IP(src=draw(ADDRESSES), dst=draw(ADDRESSES), ttl=draw(st.integers(0, 255)), id=draw(U16),
            options=[IPOption_NOP()] * (4 * draw(st.integers(0, 10))))
    payload = draw(st.binary(max_size=200))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    if kind == "tcp":
        l4 = TCP(sport=draw(U16), dport=draw(U16), seq=draw(U32), flags=draw(st.integers(0, 255)))
    elif kind == "udp":
        l4 = UDP(sport=draw(U16), dport=draw(U16))
    else:
        l4 = ICMP(type=8, id=draw(U16), seq=draw(U16))
    return IP(bytes(ip / l4 / payload))        # built, so every checksum is Scapy's


def kernel_checksums_of(raw: bytes) -> tuple[int, int]:
    """(IPv4 header checksum, L4 checksum) of one packet by the kernels, with both fields zeroed."""
    buf = as_buf(raw)
    ihl = (raw[0] & 0xF) * 4
    proto = raw[9]
    put16(buf, 10, 0)
    put16(buf, ihl + ref.L4_CHECK_OFFSET[proto], 0)
    ip = ck.ipv4_header_checksums(buf, np.array([0], np.int64))
    l4 = ck.l4_checksums(buf, np.array([0], np.int64), np.array([ihl], np.int64),
                         np.array([len(raw) - ihl], np.int64))
    return int(ip[0]), int(l4[0])


@settings(max_examples=150)
@given(scapy_packets())
def test_ip_and_l4_checksums_match_scapy(pkt):
    raw = bytes(pkt)
    l4 = pkt.payload
    assert kernel_checksums_of(raw) == (pkt.chksum, l4.chksum)
    # Not zeroing the fields gives the same values: the field counts as zero.
    buf = as_buf(raw)
    ihl = pkt.ihl * 4
    assert ck.ipv4_header_checksums(buf, np.array([0], np.int64)).tolist() == [pkt.chksum]
    assert ck.l4_checksums(buf, np.array([0], np.int64), np.array([ihl], np.int64),
                           np.array([len(raw) - ihl], np.int64)).tolist() == [l4.chksum]


def scapy_recomputed(raw: bytes) -> IP:
    """The packet as Scapy computes its checksums afresh."""
    pkt = IP(raw)
    del pkt.chksum
    del pkt.payload.chksum
    return IP(bytes(pkt))


def test_udp_computed_zero_is_sent_as_ffff():
    # Choose the last two payload bytes so that the ones' complement sum is
    # 0xFFFF: the computed checksum is then 0, which UDP sends as 0xFFFF.
    pkt = IP(src="10.244.1.3", dst="10.96.0.10") / UDP(sport=40000, dport=53) / b"query\0\0\0"
    raw = bytearray(bytes(pkt))
    raw[-2:] = ref.l4_checksum(0x0AF40103, 0x0A60000A, 17, bytes(raw[20:])).to_bytes(2, "big")
    assert ref.ones_sum(ref.zero_field(bytes(raw[20:]), 6)) != 0xFFFF  # the pseudo-header completes it
    assert scapy_recomputed(bytes(raw))[UDP].chksum == 0xFFFF
    assert kernel_checksums_of(bytes(raw))[1] == 0xFFFF


# --- against the reference on random and adversarial input ---------------------------------

@settings(max_examples=300)
@given(buffers_with_ranges())
def test_checksums_match_reference(case):
    data, starts, lengths = case
    out = ck.checksums(as_buf(data), np.array(starts, np.int64), np.array(lengths, np.int64))
    assert out.dtype == np.uint16
    assert out.tolist() == [ref.internet_checksum(data[s:s + n]) for s, n in zip(starts, lengths)]


@pytest.mark.parametrize("fill", [0x00, 0xFF, None])
def test_huge_ranges(fill):
    size = 3_000_001                       # odd, and not a multiple of 8
    rng = np.random.default_rng(7)
    buf = (rng.integers(0, 256, size, dtype=np.uint8) if fill is None
           else np.full(size, fill, np.uint8))
    data = buf.tobytes()
    starts = np.array([0, 1, 3, 5], np.int64)
    lengths = np.array([size, size - 1, size - 4, size - 12], np.int64)
    out = ck.checksums(buf, starts, lengths)
    assert out.tolist() == [ref.internet_checksum(data[s:s + n]) for s, n in zip(starts, lengths)]


@st.composite
def ipv4_headers(draw):
    """A random IPv4 header (any bytes, version 4, any valid IHL) inside a buffer at some offset."""
    ihl = draw(st.integers(5, 15))
    body = draw(st.one_of(st.binary(min_size=4 * ihl - 1, max_size=4 * ihl - 1),
                          st.just(b"\xff" * (4 * ihl - 1)), st.just(b"\x00" * (4 * ihl - 1))))
    header = bytes([0x40 | ihl]) + body
    before = draw(st.binary(max_size=9))
    after = draw(st.binary(max_size=9))
    return before + header + after, len(before)


@settings(max_examples=200)
@given(ipv4_headers())
def test_ipv4_header_checksum_matches_reference(case):
    data, off = case
    out = ck.ipv4_header_checksums(as_buf(data), np.array([off], np.int64))
    assert out.tolist() == [ref.ipv4_header_checksum(data[off:])]


@st.composite
def l4_packets(draw):
    """An IPv4 header (addresses random) and an L4 segment of a supported protocol at random offsets."""
    proto = draw(st.sampled_from([1, 6, 17]))
    ip = bytearray(draw(st.binary(min_size=20, max_size=20)))
    ip[0], ip[9] = 0x45, proto
    seg_len = draw(st.integers(ref.L4_CHECK_OFFSET[proto] + 2, 400))
    segment = draw(st.one_of(st.binary(min_size=seg_len, max_size=seg_len),
                             st.sampled_from([b"\xff", b"\x00"]).map(lambda b: b * seg_len)))
    gap = draw(st.binary(max_size=5))
    return bytes(ip) + gap + segment, proto, 20 + len(gap), seg_len


@settings(max_examples=300)
@given(l4_packets())
def test_l4_checksum_matches_reference(case):
    data, proto, l4_off, l4_len = case
    src, dst = int.from_bytes(data[12:16], "big"), int.from_bytes(data[16:20], "big")
    out = ck.l4_checksums(as_buf(data), np.array([0], np.int64), np.array([l4_off], np.int64),
                          np.array([l4_len], np.int64))
    assert out.tolist() == [ref.l4_checksum(src, dst, proto, data[l4_off:l4_off + l4_len])]


# --- incremental updates (RFC 1624) ---------------------------------------------------

@settings(max_examples=300)
@given(st.lists(st.tuples(U16, U16, U16), max_size=20), st.booleans())
def test_update16_matches_reference(rows, udp):
    checks, old, new = (np.array([r[i] for r in rows], np.uint16) for i in range(3))
    out = ck.update16(checks, old, new, udp=udp)
    assert out.tolist() == [ref.update16(c, o, n, udp) for c, o, n in rows]


@settings(max_examples=300)
@given(st.lists(st.tuples(U16, U32, U32), max_size=20), st.booleans())
def test_update32_matches_reference(rows, udp):
    checks = np.array([r[0] for r in rows], np.uint16)
    old = np.array([r[1] for r in rows], np.uint32)
    new = np.array([r[2] for r in rows], np.uint32)
    out = ck.update32(checks, old, new, udp=udp)
    assert out.tolist() == [ref.update32(c, o, n, udp) for c, o, n in rows]


def ones_solve(total_others: int) -> int:
    """The word that brings a ones' complement sum of `total_others` to 0xFFFF."""
    return ~ref.ones_sum(total_others.to_bytes(2, "big")) & 0xFFFF


@settings(max_examples=400)
@given(ipv4_headers(), st.data())
def test_ipv4_incremental_equals_recomputation(case, data):
    """Change any 16-bit word (not the first, which holds version 4, nor the
    checksum) or any aligned 32-bit field; sometimes forced so that the old or
    the new checksum is 0x0000 (the -0 trap of RFC 1624)."""
    raw, off = case
    buf = as_buf(raw)
    ihl = (raw[off] & 0xF) * 4
    words = [w for w in range(1, ihl // 2) if w != 5]
    if data.draw(st.booleans(), "force old checksum 0"):
        w = data.draw(st.sampled_from(words), "word to adjust")
        put16(buf, off + 2 * w, 0)
        put16(buf, off + 2 * w, ones_solve(ref.ones_sum(ref.zero_field(buf[off:off + ihl].tobytes(), 10))))
    check = ref.ipv4_header_checksum(buf[off:].tobytes())
    put16(buf, off + 10, check)
    if data.draw(st.booleans(), "16-bit change"):
        w = data.draw(st.sampled_from(words), "word")
        p = off + 2 * w
        old = be16(buf, p)
        put16(buf, p, 0)
        others = ref.ones_sum(ref.zero_field(buf[off:off + ihl].tobytes(), 10))
        new = data.draw(st.one_of(U16, st.sampled_from([0, 0xFFFF, old, ones_solve(others)])), "new")
        put16(buf, p, new)
        got = ck.update16(np.array([check], np.uint16), np.array([old], np.uint16),
                          np.array([new], np.uint16))
    else:
        # two words forming a 32-bit field; neither the first word nor the checksum
        pairs = [w for w in words if w + 1 in words]
        assume(pairs)
        w = data.draw(st.sampled_from(pairs), "pair")
        p = off + 2 * w
        old = (be16(buf, p) << 16) | be16(buf, p + 2)
        new = data.draw(st.one_of(U32, st.sampled_from([0, 2**32 - 1, old])), "new")
        put16(buf, p, new >> 16)
        put16(buf, p + 2, new & 0xFFFF)
        got = ck.update32(np.array([check], np.uint16), np.array([old], np.uint32),
                          np.array([new], np.uint32))
    assert got.tolist() == [ref.ipv4_header_checksum(buf[off:].tobytes())]
    assert got.tolist() == ck.ipv4_header_checksums(buf, np.array([off], np.int64)).tolist()


def test_ttl_decrement_keeps_checksum_right():
    pkt = IP(bytes(IP(src="10.244.1.3", dst="10.244.2.7", ttl=64) / UDP()))
    buf = as_buf(bytes(pkt))
    for _ in range(64):
        old = be16(buf, 8)
        buf[8] -= 1
        check = ck.update16(np.array([be16(buf, 10)], np.uint16), np.array([old], np.uint16),
                            np.array([be16(buf, 8)], np.uint16))[0]
        put16(buf, 10, int(check))
        assert int(check) == scapy_recomputed(buf.tobytes()).chksum
    assert buf[8] == 0


@settings(max_examples=150)
@given(scapy_packets(), U32, U16)
def test_nat_rewrite_incremental_equals_recomputation(pkt, new_dst, new_port):
    """DNAT as kube-proxy does it: the destination address changes in the IP
    header (IP and L4 checksums: the address is in the pseudo-header) and the
    destination port in the L4 header (TCP/UDP only)."""
    raw = bytes(pkt)
    buf = as_buf(raw)
    ihl = pkt.ihl * 4
    proto = pkt.proto
    l4_check_at = ihl + ref.L4_CHECK_OFFSET[proto]
    udp = proto == 17
    old_dst = int.from_bytes(raw[16:20], "big")
    ip_check = ck.update32(np.array([be16(buf, 10)], np.uint16), np.array([old_dst], np.uint32),
                           np.array([new_dst], np.uint32))[0]
    buf[16:20] = np.frombuffer(new_dst.to_bytes(4, "big"), np.uint8)
    put16(buf, 10, int(ip_check))
    l4_check = be16(buf, l4_check_at)
    if proto != 1:                         # ICMP has no pseudo-header
        l4_check = int(ck.update32(np.array([l4_check], np.uint16), np.array([old_dst], np.uint32),
                                   np.array([new_dst], np.uint32), udp=udp)[0])
        old_port = be16(buf, ihl + 2)
        put16(buf, ihl + 2, new_port)
        l4_check = int(ck.update16(np.array([l4_check], np.uint16), np.array([old_port], np.uint16),
                                   np.array([new_port], np.uint16), udp=udp)[0])
    put16(buf, l4_check_at, l4_check)
    assert (int(ip_check), l4_check) == kernel_checksums_of(buf.tobytes())
    again = scapy_recomputed(buf.tobytes())
    assert (int(ip_check), l4_check) == (again.chksum, again.payload.chksum)


def test_udp_without_checksum_stays_without():
    zero = np.zeros(3, np.uint16)
    old = np.array([0, 0x1234, 0xFFFF], np.uint16)
    new = np.array([0xFFFF, 0x4321, 0], np.uint16)
    assert ck.update16(zero, old, new, udp=True).tolist() == [0, 0, 0]
    assert ck.update32(zero, old.astype(np.uint32), new.astype(np.uint32), udp=True).tolist() == [0, 0, 0]
    # and a computed 0 becomes 0xFFFF, where the plain update gives 0
    hc = np.array([0xDD2F], np.uint16)
    m, m2 = np.array([0x5555], np.uint16), np.array([0x3285], np.uint16)
    assert ck.update16(hc, m, m2).tolist() == [0]
    assert ck.update16(hc, m, m2, udp=True).tolist() == [0xFFFF]


# --- scalar cores, as other kernels call them -------------------------------------------

@jit
def _cores(buf, start, length, ip_off, l4_off, l4_len, proto):
    acc = ck.ones_sum(buf, start, length, np.uint64(0))
    return (ck.fold(acc), ck.finish(acc), ck.ipv4_header_checksum(buf, ip_off),
            ck.l4_checksum(buf, ip_off, l4_off, l4_len, proto),
            ck.csum_replace16(0xDD2F, 0x5555, 0x3285), ck.csum_replace32(0, 1, 2, True))


def test_scalar_cores_from_numba_with_int32_offsets():
    pkt = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80) / b"hello"
    raw = bytes(pkt)
    built = IP(raw)
    buf = as_buf(raw)
    i32 = np.int32
    got = _cores(buf, i32(0), i32(20), i32(0), i32(20), i32(len(raw) - 20), np.uint8(6))
    assert got == (ref.ones_sum(raw[:20]), ~ref.ones_sum(raw[:20]) & 0xFFFF, built.chksum,
                   built[TCP].chksum, 0, 0)


EDGES = st.one_of(st.integers(-100, 100), st.sampled_from([-2**63, -2**62, 2**62, 2**63 - 1]))


@settings(max_examples=300)
@given(st.binary(max_size=64), EDGES, EDGES)
def test_ones_sum_cuts_ranges_to_the_buffer(data, start, length):
    buf = as_buf(data)
    lo = max(start, 0)
    hi = min(start + length, len(data))
    expected = ref.ones_sum(data[lo:hi]) if hi > lo else 0
    got = _cores(buf, start, length, -1, -1, 0, 6)
    assert got[0] == expected and got[2] == -1 and got[3] == -1


def test_cores_reject_what_does_not_fit():
    buf = as_buf(bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2)))   # 28 bytes
    n = len(buf)

    @jit
    def both(buf, ip_off, l4_off, l4_len, proto):
        return ck.ipv4_header_checksum(buf, ip_off), ck.l4_checksum(buf, ip_off, l4_off, l4_len, proto)

    assert both(buf, 0, 20, 8, 17)[0] >= 0 and both(buf, 0, 20, 8, 17)[1] >= 0
    assert both(buf, n, 20, 8, 17)[0] == -1            # header past the end
    assert both(buf, 9, 20, 8, 17)[0] == -1            # IHL runs past the end
    assert both(buf, 0, 20, 9, 17)[1] == -1            # L4 range past the end
    assert both(buf, 0, 20, 7, 17)[1] == -1            # checksum field not inside
    assert both(buf, 0, 20, 8, 47)[1] == -1            # GRE: unsupported
    assert both(buf, 9, 20, 8, 17)[1] == -1            # addresses past the end
    assert both(buf, 0, -2, 8, 1)[1] == -1
    buf[0] = 0x44                                       # IHL 4
    assert both(buf, 0, 20, 8, 17)[0] == -1


# --- validation ------------------------------------------------------------------------

def test_validation_of_ranges():
    buf = np.zeros(10, np.uint8)
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    with pytest.raises(ValueError, match="buf"):
        ck.checksums(buf.astype(np.int8), i64(0), i64(1))
    with pytest.raises(ValueError, match="buf"):
        ck.checksum(buf.tobytes(), 0, 1)
    with pytest.raises(ValueError, match="starts"):
        ck.checksums(buf, np.array([0], np.int32), i64(1))
    with pytest.raises(ValueError, match="dimension"):
        ck.checksums(buf.reshape(2, 5), i64(0), i64(1))
    with pytest.raises(ValueError, match="same length"):
        ck.checksums(buf, i64(0, 1), i64(1))
    with pytest.raises(ValueError, match="starts"):
        ck.checksums(buf, i64(-1), i64(1))
    with pytest.raises(ValueError, match="lengths"):
        ck.checksums(buf, i64(0), i64(-1))
    with pytest.raises(ValueError, match="past the buffer"):
        ck.checksums(buf, i64(0, 6), i64(10, 5))
    with pytest.raises(ValueError, match="lengths"):
        ck.checksums(buf, i64(0), i64(2**62))
    with pytest.raises(ValueError, match="length"):
        ck.checksum(buf, 4, 7)
    with pytest.raises(ValueError, match="start"):
        ck.checksum(buf, 11, 0)
    with pytest.raises(ValueError, match="start"):
        ck.checksum(buf, 1.0, 0)
    assert ck.checksum(buf, 10, 0) == 0xFFFF


def test_validation_of_headers():
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2))
    buf = as_buf(raw)
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    with pytest.raises(ValueError, match="ip_offs"):
        ck.ipv4_header_checksums(buf, i64(9))
    with pytest.raises(ValueError, match="ip_offs"):
        ck.ipv4_header_checksums(buf, i64(-1))
    bad = buf.copy()
    bad[0] = 0x43
    with pytest.raises(ValueError, match="header length 12"):
        ck.ipv4_header_checksums(bad, i64(0))
    bad[0] = 0x4F
    with pytest.raises(ValueError, match="header length 60"):
        ck.ipv4_header_checksums(bad, i64(0))
    with pytest.raises(ValueError, match="L4"):
        ck.l4_checksums(buf, i64(0), i64(20), i64(9))
    with pytest.raises(ValueError, match="does not hold the checksum field"):
        ck.l4_checksums(buf, i64(0), i64(20), i64(7))
    gre = buf.copy()
    gre[9] = 47
    with pytest.raises(ValueError, match="protocol 47"):
        ck.l4_checksums(gre, i64(0), i64(20), i64(8))
    with pytest.raises(ValueError, match="same length"):
        ck.l4_checksums(buf, i64(0, 0), i64(20), i64(8))
    with pytest.raises(ValueError, match="l4_lens"):
        ck.l4_checksums(buf, i64(0), i64(20), np.array([8], np.uint16))


def test_validation_of_updates():
    u16 = np.zeros(2, np.uint16)
    with pytest.raises(ValueError, match="old"):
        ck.update16(u16, u16.astype(np.int32), u16)
    with pytest.raises(ValueError, match="new"):
        ck.update32(u16, u16.astype(np.uint32), u16)
    with pytest.raises(ValueError, match="checks"):
        ck.update32(u16.astype(np.int64), u16.astype(np.uint32), u16.astype(np.uint32))
    with pytest.raises(ValueError, match="same length"):
        ck.update16(u16, u16[:1], u16)
    with pytest.raises(ValueError, match="udp"):
        ck.update16(u16, u16, u16, udp=1)


# --- bounds: nothing read outside the buffer, whatever the input ------------------------------

def test_fuzz_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import checksum as ck
        from kernels._jit import jit

        @jit
        def poke(buf, start, length, ip_off, l4_off, l4_len, proto):
            a = ck.finish(ck.ones_sum(buf, start, length, np.uint64(12345)))
            b = ck.ipv4_header_checksum(buf, ip_off)
            c = ck.l4_checksum(buf, ip_off, l4_off, l4_len, proto)
            return a + b + c

        rng = np.random.default_rng(99)
        edges = [-2**63, -2**62, -9, -1, 0, 1, 7, 8, 9, 2**62, 2**63 - 1]
        calls = 0
        for _ in range(400):
            size = int(rng.integers(0, 80))
            buf = rng.integers(0, 256, size, dtype=np.uint8)
            if rng.random() < 0.3:
                buf[:] = rng.choice([0, 0xFF])
            if size:
                buf[0] = rng.choice([0x45, 0x4F, 0x40, int(buf[0])])
            for _ in range(20):
                pick = lambda: int(rng.choice(edges)) if rng.random() < 0.3 else int(rng.integers(-5, size + 5))
                poke(buf, pick(), pick(), pick(), pick(), pick(), int(rng.choice([1, 6, 17, 0, 255])))
                calls += 1
            # the private batch kernels behind the wrappers, on garbage offsets
            offs = rng.integers(-5, size + 5, 6).astype(np.int64)
            lens = rng.integers(-5, size + 5, 6).astype(np.int64)
            out = np.empty(6, np.uint16)
            ck._checksums(buf, offs, lens, out)
            ck._ipv4_header_checksums(buf, offs, out)
            ck._l4_checksums(buf, offs, lens, lens, out)
            # and the wrappers on valid ranges
            starts = rng.integers(0, size + 1, 5).astype(np.int64)
            lengths = (rng.integers(0, size + 1, 5) % (size - starts + 1)).astype(np.int64)
            ck.checksums(buf, starts, lengths)
        print("calls", calls)
    """)
    assert "calls 8000" in out
