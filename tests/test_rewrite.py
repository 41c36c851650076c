"""kernels.rewrite against Scapy rebuilding the same packets."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from kernels import rewrite
from tests.reference import rewrite as ref
from tests.util import run_with_boundscheck

ips = st.integers(0, 2**32 - 1).map(lambda v: ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0)))
ports = st.integers(0, 65535)


@st.composite
def packets(draw):
    l4 = draw(st.sampled_from(["tcp", "udp", "udp0", "icmp"]))
    ip = IP(src=draw(ips), dst=draw(ips), ttl=draw(st.integers(1, 255)), id=draw(ports),
            options=draw(st.sampled_from([[], [b"\x01\x01\x01\x00"]])))
    payload = draw(st.binary(max_size=40))
    if l4 == "tcp":
        seg = TCP(sport=draw(ports), dport=draw(ports), seq=draw(st.integers(0, 2**32 - 1)), flags="PA")
    elif l4 == "udp":
        seg = UDP(sport=draw(ports), dport=draw(ports))
    elif l4 == "udp0":
        seg = UDP(sport=draw(ports), dport=draw(ports), chksum=0)
    else:
        seg = ICMP(type=8, id=draw(ports), seq=draw(ports))
    return bytes(Ether() / ip / seg / payload)


def _place(frame: bytes, headroom: int = 64):
    buf = np.zeros(headroom + len(frame) + 7, np.uint8)
    buf[headroom:headroom + len(frame)] = np.frombuffer(frame, np.uint8)
    return buf, headroom


@settings(max_examples=150)
@given(packets())
def test_decrement_ttl_equals_scapy(frame):
    buf, at = _place(frame)
    rewrite.decrement_ttl(buf, np.array([at + 14], np.int64))
    assert buf[at:at + len(frame)].tobytes() == ref.decrement_ttl(frame)


@settings(max_examples=200)
@given(packets(), ips, ips, ports, ports)
def test_nat_equals_scapy(frame, src, dst, sport, dport):
    p = Ether(frame)
    buf, at = _place(frame)
    l3 = at + 14
    l4 = l3 + p[IP].ihl * 4
    proto = p[IP].proto
    rewrite.nat(buf, np.array([l3], np.int64), np.array([l4], np.int64), np.array([proto], np.uint8),
                np.array([_ip(src)], np.uint32), np.array([_ip(dst)], np.uint32),
                np.array([sport], np.uint16), np.array([dport], np.uint16))
    assert buf[at:at + len(frame)].tobytes() == ref.nat(frame, src, dst, sport, dport)


def _ip(text):
    a, b, c, d = map(int, text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


@settings(max_examples=100)
@given(packets(), ips, ips, ports, st.sampled_from([8472, 4789]), st.integers(0, 2**24 - 1),
       st.integers(1, 255), ports)
def test_vxlan_encap_equals_scapy(inner, src, dst, sport, dport, vni, ttl, ip_id):
    buf, at = _place(inner)
    start, length = np.array([at], np.int64), np.array([len(inner)], np.int64)
    rewrite.vxlan_encap(buf, start, length, np.array([0], np.int32), _ip(src),
                        np.array([_ip(dst)], np.uint32), np.array([sport], np.uint16), dport, vni, ttl,
                        np.array([ip_id], np.uint16))
    assert int(length[0]) == len(inner) + rewrite.VXLAN_OVERHEAD
    got = buf[start[0]:start[0] + length[0]].tobytes()
    assert got == ref.vxlan_encap(inner, src, dst, sport, dport, vni, ttl, ip_id)


def test_set_macs_and_copy_ranges():
    buf = np.zeros(64, np.uint8)
    rewrite.set_macs(buf, np.array([0, 20], np.int64), np.array([0x0A0B0C0D0E0F, 1], np.uint64),
                     np.array([0x010203040506, 2], np.uint64))
    assert bytes(buf[:12]) == bytes.fromhex("0a0b0c0d0e0f010203040506")
    assert bytes(buf[20:32]) == bytes(5) + b"\x01" + bytes(5) + b"\x02"
    dst = np.zeros(30, np.uint8)
    rewrite.copy_ranges(buf, np.array([0, 20], np.int64), np.array([12, 12], np.int64), dst,
                        np.array([0, 15], np.int64))
    assert bytes(dst[:12]) == bytes(buf[:12]) and bytes(dst[15:27]) == bytes(buf[20:32])


def test_validation():
    buf = np.zeros(40, np.uint8)
    with pytest.raises(ValueError, match="dtype"):
        rewrite.decrement_ttl(buf, np.array([0], np.int32))
    with pytest.raises(ValueError, match="l3_offsets"):
        rewrite.decrement_ttl(buf, np.array([30], np.int64))
    with pytest.raises(ValueError, match="no room"):
        rewrite.nat(buf, np.array([0], np.int64), np.array([30], np.int64), np.array([6], np.uint8),
                    *(np.zeros(1, d) for d in (np.uint32, np.uint32, np.uint16, np.uint16)))
    with pytest.raises(ValueError, match="headroom"):
        rewrite.vxlan_encap(buf, np.array([10], np.int64), np.array([20], np.int64), np.array([0], np.int32),
                            1, np.zeros(1, np.uint32), np.zeros(1, np.uint16), 8472, 1, 64, np.zeros(1, np.uint16))
    with pytest.raises(ValueError, match="outside"):
        rewrite.copy_ranges(buf, np.array([35], np.int64), np.array([10], np.int64), buf, np.array([0], np.int64))


def test_fuzz_in_bounds():
    run_with_boundscheck("""
        import numpy as np
        from kernels import rewrite
        rng = np.random.default_rng(5)
        rejected = 0
        for _ in range(300):
            n = int(rng.integers(80, 200))
            buf = rng.integers(0, 256, n).astype(np.uint8)
            l3 = np.array([int(rng.integers(0, n - 20))], np.int64)
            rewrite.decrement_ttl(buf, l3)
            proto = np.array([rng.choice([1, 6, 17, 47])], np.uint8)
            l4 = np.array([int(rng.integers(-1, n))], np.int64)
            try:  # offsets the wrapper refuses are fine; reading past them is not
                rewrite.nat(buf, l3, l4, proto, rng.integers(0, 2**32, 1).astype(np.uint32),
                            rng.integers(0, 2**32, 1).astype(np.uint32),
                            rng.integers(0, 2**16, 1).astype(np.uint16),
                            rng.integers(0, 2**16, 1).astype(np.uint16))
            except ValueError:
                rejected += 1
            start = np.array([int(rng.integers(50, n - 10))], np.int64)
            length = np.array([int(rng.integers(0, n - start[0]))], np.int64)
            rewrite.vxlan_encap(buf, start, length, np.array([0], np.int32), 1, np.ones(1, np.uint32),
                                np.ones(1, np.uint16), 8472, 1, 64, np.ones(1, np.uint16))
        assert 0 < rejected < 300
        print("ok")
    """)
