"""Internet checksums over frames in one flat buffer, against Scapy (what one
would use without numba): scapy.utils.checksum for the bare RFC 1071 sum,
scapy.layers.inet.in4_chksum for TCP with its pseudo-header. The incremental
NAT update (RFC 1624) is measured against recomputing the TCP checksum."""
from __future__ import annotations

import numpy as np
import pytest
import scapy.utils
from scapy.layers.inet import IP, in4_chksum

from bench.conftest import size
from kernels import checksum as ck

# Frames sit in fixed slots with headroom in front, as the data plane lays
# them out: (slot size, headroom) per frame length.
SLOTS = {1500: (2048, 128), 64: (128, 50)}
FRAMES = {1500: size(40_000, 200), 64: size(500_000, 200)}
BASELINE_FRAMES = {1500: size(20_000, 50), 64: size(200_000, 50)}
TARGET_RATE = 2e9           # bytes per second, single thread, over 1500-byte frames


def frames(n: int, length: int, seed: int = 3):
    """`n` random frames of `length` bytes, one per slot after the headroom;
    (buffer, starts, lengths)."""
    slot, headroom = SLOTS[length]
    rng = np.random.default_rng(seed)
    buf = rng.integers(0, 256, n * slot, dtype=np.uint8)
    starts = np.arange(n, dtype=np.int64) * slot + headroom
    return buf, starts, np.full(n, length, np.int64)


@pytest.mark.parametrize("length", [1500, 64])
def test_checksum_emu(benchmark, record, length):
    n = FRAMES[length]
    buf, starts, lengths = frames(n, length)
    ck.checksums(buf, starts[:4], lengths[:4])          # compile outside the timed calls
    record(f"checksum {length}B frames", "emu", n * length, "bytes",
           target_rate=TARGET_RATE if length == 1500 else None, frames=n)
    out = benchmark(ck.checksums, buf, starts, lengths)
    s = int(starts[-1])
    assert out[-1] == scapy.utils.checksum(buf[s:s + length].tobytes())


@pytest.mark.parametrize("length", [1500, 64])
def test_checksum_baseline(benchmark, record, length):
    n = BASELINE_FRAMES[length]
    buf, starts, _ = frames(n, length)
    data = [buf[s:s + length].tobytes() for s in starts.tolist()]
    record(f"checksum {length}B frames", "baseline", n * length, "bytes", frames=n)

    def scapy_all():
        return [scapy.utils.checksum(d) for d in data]

    benchmark.pedantic(scapy_all, rounds=5, iterations=1)


def tcp_frames(n: int):
    """`n` 1500-byte IPv4/TCP packets (random addresses and payload): (buffer,
    IP offsets, L4 offsets, L4 lengths)."""
    buf, starts, lengths = frames(n, 1500)
    buf[starts] = 0x45                   # version 4, IHL 5
    buf[starts + 2], buf[starts + 3] = 1500 >> 8, 1500 & 0xFF   # total length (Scapy reads it)
    buf[starts + 9] = 6                  # TCP
    return buf, starts, starts + 20, lengths - 20


def scapy_tcp_inputs(buf: np.ndarray, s: int) -> tuple[IP, bytes]:
    """in4_chksum's arguments for the 1500-byte packet at `s`: the IP layer
    and the TCP segment with its checksum field zeroed (in4_chksum sums the
    segment as it is)."""
    segment = bytearray(buf[s + 20:s + 1500].tobytes())
    segment[16:18] = b"\0\0"
    return IP(buf[s:s + 20].tobytes()), bytes(segment)


def test_tcp_checksum_emu(benchmark, record):
    n = FRAMES[1500]
    buf, ip, l4, l4_len = tcp_frames(n)
    ck.l4_checksums(buf, ip[:4], l4[:4], l4_len[:4])
    record("TCP checksum 1500B (pseudo-header)", "emu", n * 1500, "bytes",
           target_rate=TARGET_RATE, frames=n)
    out = benchmark(ck.l4_checksums, buf, ip, l4, l4_len)
    assert out[-1] == in4_chksum(6, *scapy_tcp_inputs(buf, int(ip[-1])))


def test_tcp_checksum_baseline(benchmark, record):
    n = BASELINE_FRAMES[1500]
    buf, ip, l4, l4_len = tcp_frames(n)
    packets = [scapy_tcp_inputs(buf, s) for s in ip.tolist()]
    record("TCP checksum 1500B (pseudo-header)", "baseline", n * 1500, "bytes", frames=n)

    def scapy_all():
        return [in4_chksum(6, u, p) for u, p in packets]

    out = benchmark.pedantic(scapy_all, rounds=3, iterations=1)
    assert out == ck.l4_checksums(buf, ip, l4, l4_len).tolist()


UPDATES = size(10_000_000, 1000)


def nat_rewrites(n: int):
    rng = np.random.default_rng(5)
    return (rng.integers(0, 2**16, n, dtype=np.uint16), rng.integers(0, 2**32, n, dtype=np.uint32),
            rng.integers(0, 2**32, n, dtype=np.uint32))


def test_nat_update_emu(benchmark, record):
    checks, old, new = nat_rewrites(UPDATES)
    ck.update32(checks[:4], old[:4], new[:4])
    record("NAT: TCP checksum after DNAT", "emu", UPDATES, "packets", method="RFC 1624 update32")
    benchmark(ck.update32, checks, old, new)


def test_nat_update_baseline(benchmark, record):
    n = FRAMES[1500]
    buf, ip, l4, l4_len = tcp_frames(n)
    ck.l4_checksums(buf, ip[:4], l4[:4], l4_len[:4])
    record("NAT: TCP checksum after DNAT", "baseline", n, "packets",
           method="recompute over 1500B (emu kernel)")
    benchmark(ck.l4_checksums, buf, ip, l4, l4_len)
