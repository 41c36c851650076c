"""kernels.parse: golden frames dissected by Scapy, the plain-Python reference
on random, truncated, mutated and garbage frames (hypothesis), a bounds-checked
fuzz run, and validation."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, UDPerror, IPerror, fragment
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Padding

from kernels import parse as P
from kernels.drop import Drop
from tests.reference import parse as ref
from tests.util import run_with_boundscheck

MAC_A, MAC_B = "02:00:0a:f4:01:05", "a2:11:22:33:44:55"


# -- helpers -------------------------------------------------------------------

def pack(frames, seed=0):
    """Frames in one buffer, with random gaps of random bytes before each (so
    a read past a frame's end would change the result) and the last frame
    ending exactly at the end of the buffer."""
    rng = np.random.default_rng(seed)
    parts, starts, at = [], [], 0
    for f in frames:
        gap = int(rng.integers(0, 9))
        parts.append(rng.integers(0, 256, gap, dtype=np.uint8).tobytes())
        at += gap
        starts.append(at)
        parts.append(bytes(f))
        at += len(f)
    buf = np.frombuffer(b"".join(parts), np.uint8).copy()
    return buf, np.array(starts, np.int64), np.array([len(f) for f in frames], np.int64)


def kernel_rows(frames, vxlan_ports=P.DEFAULT_VXLAN_PORTS, seed=0):
    h = P.parse(*pack(frames, seed), vxlan_ports=vxlan_ports)
    return {name: getattr(h, name).tolist() for name in P.COLUMNS}


def row(frame, vxlan_ports=P.DEFAULT_VXLAN_PORTS):
    cols = kernel_rows([frame], vxlan_ports)
    return {name: values[0] for name, values in cols.items()}


def assert_same_as_reference(frames, vxlan_ports=P.DEFAULT_VXLAN_PORTS, seed=0):
    got = kernel_rows(frames, vxlan_ports, seed)
    want = ref.parse(frames, vxlan_ports)
    for name in P.COLUMNS:
        if got[name] != want[name]:
            k = next(k for k, (a, b) in enumerate(zip(got[name], want[name])) if a != b)
            raise AssertionError(
                f"column {name}, frame {k} ({bytes(frames[k]).hex()}): kernel {got[name][k]}, "
                f"reference {want[name][k]}\nkernel row: { {c: got[c][k] for c in P.COLUMNS} }\n"
                f"reference row: { {c: want[c][k] for c in P.COLUMNS} }")


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def ip_int(addr: str) -> int:
    return int.from_bytes(bytes(int(x) for x in addr.split(".")), "big")


# -- golden frames: every field equals Scapy's dissection ----------------------

def golden_frames():
    payload = bytes(range(40))
    inner = Ether(src=MAC_B, dst=MAC_A) / IP(src="10.244.1.5", dst="10.244.2.7") / TCP(dport=80)
    frames = [
        Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2", ttl=63, tos=0xB8, id=777)
        / TCP(sport=40000, dport=443, seq=0xDEADBEEF, ack=12345, flags="PA") / payload,
        Ether(src=MAC_A, dst=MAC_B) / Dot1Q(prio=5, dei=1, vlan=100)
        / IP(src="192.168.1.1", dst="8.8.8.8", flags="DF", options=[b"\x94\x04\x00\x00"])
        / TCP(sport=1, dport=2, flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]),
        Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.96.0.10") / UDP(sport=5353, dport=53) / (b"q" * 30),
        Ether(src=MAC_A, dst=MAC_B) / IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2) / Padding(b"\0" * 18),
        Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=0x1234, seq=7) / payload,
        Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0, id=0x1234, seq=7),
        Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.254", dst="10.0.0.1")
        / ICMP(type=3, code=3) / IPerror(src="10.0.0.1", dst="10.0.0.2") / UDPerror(sport=9, dport=99),
        Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.254", dst="10.0.0.1") / ICMP(type=11, code=0),
        Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"),
        Ether(src=MAC_B, dst=MAC_A) / Dot1Q(vlan=4094)
        / ARP(op=2, hwsrc=MAC_B, psrc="10.0.0.2", hwdst=MAC_A, pdst="10.0.0.1"),
        Ether(src=MAC_A, dst=MAC_B) / IP(src="172.16.0.1", dst="172.16.0.2", proto=47) / (b"\x00\x00\x65\x58" * 4),
        Ether(src=MAC_A, dst=MAC_B) / IP(src="172.16.0.1", dst="172.16.0.2", proto=132) / payload,
        Ether(src=MAC_A, dst=MAC_B) / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=51000, dport=8472)
        / VXLAN(vni=1) / inner,
        Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=7) / IP(src="192.168.0.1", dst="192.168.0.2")
        / UDP(sport=51001, dport=4789) / VXLAN(vni=0xABCDEF) / inner,
    ]
    big = IP(src="10.0.0.1", dst="10.0.0.2", id=4242) / UDP(sport=7, dport=8472) / VXLAN(vni=9) / inner / (b"z" * 3000)
    frames += [Ether(src=MAC_A, dst=MAC_B) / f for f in fragment(big, fragsize=1000)]
    big_tcp = IP(src="10.0.0.3", dst="10.0.0.4") / TCP(sport=5, dport=6) / (b"t" * 2000)
    frames += [Ether(src=MAC_A, dst=MAC_B) / f for f in fragment(big_tcp, fragsize=800)]
    return [bytes(f) for f in frames]


GOLDEN = golden_frames()


def scapy_fields(frame: bytes) -> dict:
    """The columns as read from Scapy's dissection of a well-formed frame."""
    p = Ether(frame)
    e = {name: (-1 if name in ref.OFFSETS else 0) for name in P.COLUMNS}
    flags = 0
    e["eth_dst"], e["eth_src"] = mac_int(p.dst), mac_int(p.src)
    l3, layer = 14, p.payload
    e["ethertype"] = p.type
    if isinstance(layer, Dot1Q):
        flags |= P.HAS_VLAN
        e["vlan_tci"] = (layer.prio << 13) | (layer.dei << 12) | layer.vlan
        e["ethertype"] = layer.type
        l3, layer = 18, layer.payload
    e["l3_off"] = l3
    if isinstance(layer, ARP):
        flags |= P.ARP
        e.update(arp_op=layer.op, arp_sha=mac_int(layer.hwsrc), arp_tha=mac_int(layer.hwdst),
                 ip_src=ip_int(layer.psrc), ip_dst=ip_int(layer.pdst))
    elif isinstance(layer, IP):
        ip = layer
        flags |= P.IPV4
        flags |= P.DF if ip.flags.DF else 0
        flags |= (P.MORE_FRAGMENTS | P.FRAGMENT) if ip.flags.MF else 0
        flags |= P.FRAGMENT if ip.frag else 0
        flags |= P.IP_OPTIONS if ip.ihl > 5 else 0
        e.update(ip_src=ip_int(ip.src), ip_dst=ip_int(ip.dst), ip_proto=ip.proto, tos=ip.tos, ttl=ip.ttl,
                 ip_len=ip.len, ip_id=ip.id, frag_off=ip.frag * 8, l4_off=l3 + ip.ihl * 4)
        l4, seg = ip.payload, l3 + ip.ihl * 4
        l4_bytes = ip.len - ip.ihl * 4
        if ip.frag == 0 and isinstance(l4, TCP):
            flags |= P.TCP | P.L4
            e.update(sport=l4.sport, dport=l4.dport, tcp_seq=l4.seq, tcp_ack=l4.ack, tcp_flags=int(l4.flags),
                     payload_off=seg + l4.dataofs * 4, payload_len=l4_bytes - l4.dataofs * 4)
        elif ip.frag == 0 and isinstance(l4, UDP):
            flags |= P.UDP | P.L4
            e.update(sport=l4.sport, dport=l4.dport, payload_off=seg + 8,
                     payload_len=min(l4.len, l4_bytes) - 8)
            if isinstance(l4.payload, VXLAN):
                flags |= P.VXLAN
                e.update(vni=l4.payload.vni, inner_off=seg + 16)
        elif ip.frag == 0 and isinstance(l4, ICMP):
            flags |= P.ICMP | P.L4
            e.update(icmp_type=l4.type, icmp_code=l4.code, payload_off=seg + 8, payload_len=l4_bytes - 8)
            if l4.type in (0, 8):
                e.update(sport=l4.id, dport=l4.seq)
            if l4.type in (3, 11):
                flags |= P.ICMP_ERROR
                if isinstance(l4.payload, IPerror):
                    e["inner_off"] = seg + 8
    e["flags"] = flags
    return e


@pytest.mark.parametrize("k", range(len(GOLDEN)))
def test_golden_frame_matches_scapy(k):
    frame = GOLDEN[k]
    assert row(frame) == scapy_fields(frame), Ether(frame).summary()


def test_golden_frames_together_and_as_reference():
    # All in one batch, against the reference as well.
    assert_same_as_reference(GOLDEN)
    got = kernel_rows(GOLDEN)
    assert all(d == 0 for d in got["drop"])


def test_vxlan_fragments_parse_l4_only_in_the_first():
    ips = [Ether(f).getlayer(IP) for f in GOLDEN]
    frags = [f for f, ip in zip(GOLDEN, ips) if ip and ip.proto == 17 and (ip.flags.MF or ip.frag)]
    rows = [row(f) for f in frags]
    first, rest = rows[0], rows[1:]
    assert first["flags"] & (P.FRAGMENT | P.MORE_FRAGMENTS | P.UDP | P.VXLAN) == \
        P.FRAGMENT | P.MORE_FRAGMENTS | P.UDP | P.VXLAN
    assert first["vni"] == 9 and first["dport"] == 8472
    for r in rest:
        assert r["flags"] & P.FRAGMENT and not r["flags"] & (P.L4 | P.UDP)
        assert r["sport"] == r["dport"] == 0 and r["vni"] == -1 and r["l4_off"] == 34
    assert not rest[-1]["flags"] & P.MORE_FRAGMENTS


# -- drop codes ------------------------------------------------------------------

ETH = Ether(src=MAC_A, dst=MAC_B)
ARP_FRAME = bytes(ETH / ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1", pdst="10.0.0.2"))
TCP_FRAME = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80) / b"hello")


def with_bytes(frame: bytes, at: int, new: bytes) -> bytes:
    return frame[:at] + new + frame[at + len(new):]


def fix_ip_checksum(frame: bytes, l3: int = 14) -> bytes:
    ihl = (frame[l3] & 0x0F) * 4
    header = bytearray(frame[l3:l3 + ihl])
    header[10:12] = b"\0\0"
    csum = 0xFFFF - ref.ones_complement_sum(bytes(header))
    return with_bytes(frame, l3 + 10, struct.pack("!H", csum))


DROP_CASES = {
    "empty": (b"", Drop.TRUNC_ETH),
    "13 bytes": (TCP_FRAME[:13], Drop.TRUNC_ETH),
    "tag cut short": (bytes(ETH / Dot1Q(vlan=1))[:16], Drop.TRUNC_VLAN),
    "IPv6": (bytes(Ether(type=0x86DD) / (b"\x60" + b"\0" * 39)), Drop.UNKNOWN_ETHERTYPE),
    "802.3 length": (with_bytes(TCP_FRAME, 12, b"\x00\x40"), Drop.UNKNOWN_ETHERTYPE),
    "two tags": (bytes(ETH / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / TCP()), Drop.UNKNOWN_ETHERTYPE),
    "ARP cut short": (bytes(ETH / ARP())[:14 + 27], Drop.TRUNC_ARP),
    "ARP for IPv6": (with_bytes(ARP_FRAME, 16, b"\x86\xdd"), Drop.BAD_ARP),
    "ARP hlen 8": (with_bytes(ARP_FRAME, 18, b"\x08"), Drop.BAD_ARP),
    "ARP plen 16": (with_bytes(ARP_FRAME, 19, b"\x10"), Drop.BAD_ARP),
    "ARP htype 6": (with_bytes(ARP_FRAME, 14, b"\x00\x06"), Drop.BAD_ARP),
    "IPv4 cut short": (TCP_FRAME[:14 + 19], Drop.TRUNC_IPV4),
    "IP version 6": (fix_ip_checksum(with_bytes(TCP_FRAME, 14, b"\x65")), Drop.BAD_IP_VERSION),
    "IHL 4": (fix_ip_checksum(with_bytes(TCP_FRAME, 14, b"\x44")), Drop.BAD_IHL),
    "IHL past frame": (with_bytes(TCP_FRAME, 14, b"\x4f")[:14 + 40], Drop.BAD_IHL),
    "bad checksum": (with_bytes(TCP_FRAME, 24, b"\x12\x34"), Drop.BAD_IP_CHECKSUM),
    "total length past frame": (fix_ip_checksum(with_bytes(TCP_FRAME, 16, b"\x00\x64")), Drop.BAD_IP_LENGTH),
    "total length one past frame": (fix_ip_checksum(with_bytes(TCP_FRAME, 16, struct.pack("!H", 46))),
                                    Drop.BAD_IP_LENGTH),
    "total length < IHL": (fix_ip_checksum(with_bytes(TCP_FRAME, 16, b"\x00\x13")), Drop.BAD_IP_LENGTH),
    "total length inside the options": (fix_ip_checksum(bytes(ETH / IP(len=22, options=[b"\x01" * 4]) / UDP())),
                                        Drop.BAD_IP_LENGTH),
    "TCP cut short": (bytes(ETH / IP(proto=6) / (b"\0" * 19)), Drop.TRUNC_TCP),
    "TCP doff 4": (bytes(ETH / IP() / TCP(dataofs=4)), Drop.BAD_TCP_OFFSET),
    "TCP doff past packet": (bytes(ETH / IP() / TCP(dataofs=15)), Drop.BAD_TCP_OFFSET),
    "TCP doff one word past": (bytes(ETH / IP() / TCP(dataofs=6) / b"abc"), Drop.BAD_TCP_OFFSET),
    "UDP cut short": (bytes(ETH / IP(proto=17) / (b"\0" * 7)), Drop.TRUNC_UDP),
    "UDP length 7": (bytes(ETH / IP() / UDP(len=7) / (b"x" * 4)), Drop.BAD_UDP_LENGTH),
    "UDP length past IP": (bytes(ETH / IP() / UDP(len=100) / (b"x" * 4)), Drop.BAD_UDP_LENGTH),
    "UDP length one past IP": (bytes(ETH / IP() / UDP(len=13) / (b"x" * 4)), Drop.BAD_UDP_LENGTH),
    "ICMP cut short": (bytes(ETH / IP(proto=1) / (b"\0" * 7)), Drop.TRUNC_ICMP),
    "VXLAN header cut short": (bytes(ETH / IP() / UDP(dport=4789) / (b"\x08" + b"\0" * 6)), Drop.TRUNC_VXLAN),
    "VXLAN inner Ethernet cut short": (bytes(ETH / IP() / UDP(dport=8472) / VXLAN(vni=5) / (b"\0" * 13)),
                                       Drop.TRUNC_VXLAN),
    "VXLAN without I flag": (bytes(ETH / IP() / UDP(dport=4789) / VXLAN(flags=0, vni=5) / Ether()),
                             Drop.BAD_VXLAN_FLAGS),
}


@pytest.mark.parametrize("case", sorted(DROP_CASES))
def test_drop_codes(case):
    frame, code = DROP_CASES[case]
    assert row(frame)["drop"] == code
    assert_same_as_reference([frame])


def test_fields_parsed_before_an_error_are_kept():
    r = row(DROP_CASES["bad checksum"][0])
    assert r["ip_src"] == ip_int("10.0.0.1") and r["ip_proto"] == 6 and r["flags"] & P.IPV4
    assert r["l4_off"] == -1 and r["sport"] == 0          # nothing past the bad header
    r = row(DROP_CASES["TCP doff 4"][0])
    assert r["dport"] == 80 and r["flags"] & P.TCP and not r["flags"] & P.L4 and r["payload_off"] == -1
    r = row(DROP_CASES["VXLAN inner Ethernet cut short"][0])
    assert r["vni"] == 5 and r["inner_off"] == -1 and r["flags"] & P.VXLAN
    r = row(DROP_CASES["tag cut short"][0])
    assert r["ethertype"] == 0x8100 and r["eth_src"] == mac_int(MAC_A) and r["l3_off"] == -1


def icmp_frame(icmp_type: int, rest: bytes, body: bytes = b"") -> bytes:
    icmp = struct.pack("!BBH", icmp_type, 0, 0) + rest + body
    return bytes(ETH / IP(src="10.0.0.9", dst="10.0.0.1", proto=1) / icmp)


def test_icmp_queries_carry_identifier_and_sequence():
    for icmp_type in range(256):
        r = row(icmp_frame(icmp_type, b"\x12\x34\x00\x07"))
        query = icmp_type in (0, 8, 13, 14, 15, 16, 17, 18)
        assert (r["sport"], r["dport"]) == ((0x1234, 7) if query else (0, 0)), icmp_type
        assert bool(r["flags"] & P.ICMP_ERROR) == (icmp_type in (3, 4, 5, 11, 12)), icmp_type


def test_icmp_error_points_at_a_whole_quoted_header():
    quoted = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP())
    assert row(icmp_frame(3, bytes(4), quoted[:20]))["inner_off"] == 14 + 20 + 8
    assert row(icmp_frame(3, bytes(4), quoted[:19]))["inner_off"] == -1
    assert row(icmp_frame(11, bytes(4), quoted))["inner_off"] == 14 + 20 + 8


def test_padding_is_ignored_but_short_frames_are_not():
    padded = TCP_FRAME + b"\xff" * 20
    assert row(padded) == row(TCP_FRAME)
    assert row(TCP_FRAME[:-1])["drop"] == Drop.BAD_IP_LENGTH


def test_later_fragments_carry_no_l4_header():
    for frag in (1, 2, 0x1FFF):
        for mf in ("", "MF"):
            r = row(bytes(ETH / IP(flags=mf, frag=frag) / TCP(sport=1, dport=2)))
            assert r["drop"] == 0 and r["frag_off"] == frag * 8 and r["l4_off"] == 34
            assert r["flags"] & (P.FRAGMENT | P.TCP | P.L4) == P.FRAGMENT and r["sport"] == 0


def test_first_fragment_cut_short_is_not_a_drop():
    # 8 bytes of a TCP header in a first fragment: the rest is in the next one.
    tiny = bytes(ETH / IP(flags="MF", proto=6) / (b"\x00\x50\x01\xbb" + b"\0" * 4))
    r = row(tiny)
    assert r["drop"] == 0 and r["flags"] & P.FRAGMENT and not r["flags"] & (P.TCP | P.L4)
    # A first UDP fragment: its UDP length counts the whole datagram.
    first = bytes(ETH / IP(flags="MF") / UDP(sport=1, dport=2, len=3000) / (b"u" * 24))
    r = row(first)
    assert r["drop"] == 0 and r["flags"] & P.L4 and r["payload_len"] == 24


def test_vxlan_ports_are_configurable():
    frame = bytes(ETH / IP() / UDP(sport=1, dport=4789) / VXLAN(vni=77) / Ether())
    assert row(frame)["vni"] == 77
    assert row(frame, vxlan_ports=())["vni"] == -1
    assert row(frame, vxlan_ports=[4789])["inner_off"] == 14 + 20 + 8 + 8
    assert row(frame, vxlan_ports=(8472,))["flags"] & P.VXLAN == 0


def test_empty_batch_and_reused_output():
    h = P.parse(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert all(len(c) == 0 for c in h)
    buf, starts, lengths = pack(GOLDEN, seed=3)
    out = P.empty_headers(len(GOLDEN))
    again = P.parse(buf, starts, lengths, out=out)
    assert again is out
    fresh = P.parse(buf, starts, lengths)
    assert all((a == b).all() for a, b in zip(out, fresh))
    assert [c.dtype for c in fresh] == [np.dtype(d) for d in P.COLUMNS.values()]


# -- kernel == reference on random frames (hypothesis) ----------------------------

def mostly(draw, good, odd):
    """`good` nine times in ten, else a value drawn from the strategy `odd`
    (a coin from sampled_from: hypothesis biases plain integers to 0)."""
    return good if draw(st.sampled_from(range(10))) else draw(odd)


def u(bits):
    return st.integers(0, 2**bits - 1)


@st.composite
def frames(draw):
    """Ethernet frames from random header field values: mostly consistent
    (right lengths and checksums), sometimes not, at every layer."""
    eth = draw(st.binary(min_size=12, max_size=12))
    if draw(st.booleans()):
        eth += b"\x81\x00" + draw(st.binary(min_size=2, max_size=2))
    kind = draw(st.sampled_from(["tcp", "udp", "vxlan", "icmp", "ip-other", "arp", "other"]))
    if kind == "arp":
        fixed = mostly(draw, b"\x00\x01\x08\x00\x06\x04", st.binary(min_size=6, max_size=6))
        rest = mostly(draw, 22, st.integers(0, 21))
        return eth + b"\x08\x06" + fixed + draw(st.binary(min_size=rest, max_size=rest + 18))
    if kind == "other":
        return eth + draw(st.binary(max_size=60))

    body = draw(st.binary(max_size=40))
    if kind == "tcp":
        proto = 6
        opts = draw(st.sampled_from([0, 0, 4, 12, 40]))
        doff = mostly(draw, (20 + opts) // 4, u(4))
        l4 = struct.pack("!HHIIBBHHH", draw(u(16)), draw(u(16)), draw(u(32)), draw(u(32)), doff << 4,
                         draw(u(8)), 1024, 0, 0) + b"\x01" * opts + body
    elif kind in ("udp", "vxlan"):
        proto = 17
        dport = draw(u(16))
        if kind == "vxlan":
            dport = draw(st.sampled_from(P.DEFAULT_VXLAN_PORTS))
            inner = mostly(draw, draw(st.binary(min_size=14, max_size=40)), st.binary(max_size=13))
            body = struct.pack("!BBBBI", mostly(draw, 0x08, u(8)), 0, 0, 0, draw(u(32))) + inner
        ulen = mostly(draw, 8 + len(body), u(16))
        l4 = struct.pack("!HHHH", draw(u(16)), dport, ulen, 0) + body
    elif kind == "icmp":
        proto = 1
        icmp_type = draw(st.sampled_from([0, 3, 4, 5, 8, 11, 12, 13, 17, 42]))
        l4 = struct.pack("!BBHHH", icmp_type, draw(u(8)), 0, draw(u(16)), draw(u(16))) + body
    else:
        proto = draw(st.sampled_from([0, 2, 47, 50, 132, 255]))
        l4 = body
    l4 = l4[:mostly(draw, len(l4), st.integers(0, len(l4)))]

    options = draw(st.sampled_from([b"", b"", b"", b"\x01" * 4, b"\x94\x04\x00\x00" + b"\x00" * 4, bytes(40)]))
    ihl = mostly(draw, (20 + len(options)) // 4, u(4))
    version = mostly(draw, 4, u(4))
    frag = mostly(draw, draw(st.sampled_from([0] * 6 + [0x4000] * 6 + [0x2000, 0x2000 | 3, 5, 0x1FFF])), u(16))
    total = mostly(draw, 20 + len(options) + len(l4), u(16))
    header = bytearray(struct.pack("!BBHHHBBHII", (version << 4) | ihl, draw(u(8)), total, draw(u(16)), frag,
                                   draw(u(8)), proto, 0, draw(u(32)), draw(u(32))) + options)
    checked = header[:min(ihl * 4, len(header))]
    csum = 0xFFFF - ref.ones_complement_sum(bytes(checked))
    header[10:12] = struct.pack("!H", mostly(draw, csum, u(16)))
    padding = draw(st.binary(max_size=12))
    return eth + b"\x08\x00" + bytes(header) + l4 + padding


valid_frames = st.sampled_from(GOLDEN) | frames()


@st.composite
def tweaked_frames(draw):
    """A frame with one length field (IP total length, IHL, TCP data offset,
    UDP length) moved by a little, around the limits the checks test, and
    its IPv4 checksum made right again."""
    frame = bytearray(draw(valid_frames))
    r = ref.parse_frame(bytes(frame))
    l3, l4 = r["l3_off"], r["l4_off"]
    if r["ethertype"] != 0x0800 or l3 < 0 or len(frame) < l3 + 20:
        return bytes(frame)
    delta = draw(st.integers(-3, 3))
    field = draw(st.sampled_from(["ip_len", "ihl", "l4"]))
    if field == "ip_len":
        struct.pack_into("!H", frame, l3 + 2, (struct.unpack_from("!H", frame, l3 + 2)[0] + delta) % 65536)
    elif field == "ihl":
        frame[l3] = (frame[l3] & 0xF0) | ((frame[l3] + delta) & 0x0F)
    elif l4 >= 0 and r["ip_proto"] == 6 and len(frame) >= l4 + 13:
        frame[l4 + 12] = (frame[l4 + 12] + (delta << 4)) & 0xFF
    elif l4 >= 0 and r["ip_proto"] == 17 and len(frame) >= l4 + 6:
        struct.pack_into("!H", frame, l4 + 4, (struct.unpack_from("!H", frame, l4 + 4)[0] + delta) % 65536)
    ihl = (frame[l3] & 0x0F) * 4
    if draw(st.booleans()) and 20 <= ihl <= len(frame) - l3:
        frame = bytearray(fix_ip_checksum(bytes(frame), l3))
    return bytes(frame)


@settings(max_examples=300)
@given(st.lists(frames(), min_size=1, max_size=20), st.integers(0, 2**32))
def test_random_frames_match_reference(batch, seed):
    assert_same_as_reference(batch, seed=seed)


@settings(max_examples=60)
@given(valid_frames, st.integers(0, 2**32))
def test_every_truncation_matches_reference(frame, seed):
    assert_same_as_reference([frame[:k] for k in range(len(frame) + 1)], seed=seed)


@settings(max_examples=200)
@given(valid_frames, st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 2**32))
def test_mutated_frames_match_reference(frame, edits, seed):
    mutated = bytearray(frame)
    for at, value in edits:
        mutated[at % len(mutated)] = value
    assert_same_as_reference([bytes(mutated), frame], seed=seed)


@settings(max_examples=200)
@given(st.lists(tweaked_frames(), min_size=1, max_size=10), st.integers(0, 2**32))
def test_length_fields_at_their_limits_match_reference(batch, seed):
    assert_same_as_reference(batch, seed=seed)


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=20), st.integers(0, 2**32))
def test_garbage_matches_reference(batch, seed):
    assert_same_as_reference(batch, seed=seed)


@settings(max_examples=50)
@given(st.lists(frames(), min_size=1, max_size=10),
       st.lists(st.integers(0, 0xFFFF), max_size=3, unique=True))
def test_any_vxlan_ports_match_reference(batch, ports):
    assert_same_as_reference(batch, vxlan_ports=tuple(ports))


# -- bounds-checked fuzz ----------------------------------------------------------------

def test_fuzz_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import parse as P
        from tests.reference import parse as ref
        from tests.test_parse import GOLDEN

        rng = np.random.default_rng(7)
        frames = []
        for f in GOLDEN:
            frames += [f[:k] for k in range(len(f) + 1)]                      # every truncation
            for _ in range(60):                                               # byte mutations
                m = bytearray(f)
                for at in rng.integers(0, len(m), rng.integers(1, 6)):
                    m[at] = rng.integers(0, 256)
                frames.append(bytes(m[:rng.integers(0, len(m) + 1)]))
        frames += [rng.integers(0, 256, rng.integers(0, 100), dtype=np.uint8).tobytes() for _ in range(1000)]
        # Garbage behind plausible headers, to get past the first checks.
        prefixes = (b"\\x08\\x00\\x45", b"\\x81\\x00\\x00\\x01\\x08\\x00\\x4f",
                    b"\\x08\\x06\\x00\\x01\\x08\\x00\\x06\\x04")
        for prefix in prefixes:
            frames += [bytes(12) + prefix + rng.integers(0, 256, rng.integers(0, 80), dtype=np.uint8).tobytes()
                       for _ in range(300)]

        # One buffer, frames back to back, the last one ending at its very end.
        lengths = np.array([len(f) for f in frames], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        buf = np.frombuffer(b"".join(frames), np.uint8).copy()
        h = P.parse(buf, starts, lengths)
        want = ref.parse(frames)
        for name in P.COLUMNS:
            assert getattr(h, name).tolist() == want[name], name
        # Each frame alone in a buffer of exactly its size: a read one byte
        # past the frame is out of bounds.
        for f in frames[::3]:
            P.parse(np.frombuffer(f, np.uint8).copy(), np.zeros(1, np.int64), np.array([len(f)], np.int64))
        print(len(frames), "frames")
    """)
    assert "frames" in out


# -- validation ---------------------------------------------------------------------

def good_args():
    return np.zeros(100, np.uint8), np.array([0, 50], np.int64), np.array([50, 50], np.int64)


@pytest.mark.parametrize("bad", [
    dict(buf=np.zeros(100, np.int8)),
    dict(buf=np.zeros((10, 10), np.uint8)),
    dict(buf=b"\0" * 100),
    dict(starts=np.array([0, 50], np.int32)),
    dict(lengths=np.array([50.0, 50.0])),
    dict(lengths=np.array([50], np.int64)),                  # mismatched lengths
    dict(starts=np.array([0, 51], np.int64)),                # past the end by one
    dict(starts=np.array([-1, 50], np.int64)),
    dict(lengths=np.array([50, -1], np.int64)),
    dict(starts=np.array([0, 101], np.int64), lengths=np.array([0, 0], np.int64)),
    dict(starts=np.array([0, 2**62], np.int64), lengths=np.array([0, 2**62], np.int64)),
    dict(vxlan_ports=4789),
    dict(vxlan_ports=(4789, 70000)),
    dict(vxlan_ports=(-1,)),
    dict(vxlan_ports=("4789",)),
    dict(out=P.empty_headers(3)),
    dict(out=P.empty_headers(2)._replace(ttl=np.zeros(2, np.int64))),
    dict(out=tuple(P.empty_headers(2))),
])
def test_validation(bad):
    buf, starts, lengths = good_args()
    args = dict(buf=buf, starts=starts, lengths=lengths) | bad
    with pytest.raises(ValueError):
        P.parse(**args)


def test_frames_may_touch_the_end_of_buf():
    buf, _, _ = good_args()
    h = P.parse(buf, np.array([100, 0], np.int64), np.array([0, 100], np.int64))
    assert h.drop.tolist() == [Drop.TRUNC_ETH, Drop.UNKNOWN_ETHERTYPE]
