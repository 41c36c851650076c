"""Packets the slow path sends, crafted with Scapy: ARP, ICMP echo replies and
errors, TCP resets, fragments. Each returns bytes (from the Ethernet header
for ARP, from the IPv4 header otherwise)."""
from __future__ import annotations

from emu.wire import ethernet, ipv4


def _scapy():
    from scapy.layers import inet, l2

    return inet, l2


def arp(op, hwsrc, psrc, hwdst, pdst, eth_dst) -> bytes:
    _, l2 = _scapy()
    return bytes(l2.Ether(dst=ethernet.mac_to_str(eth_dst), src=ethernet.mac_to_str(hwsrc))
                 / l2.ARP(op=op, hwsrc=ethernet.mac_to_str(hwsrc), psrc=ipv4.ntoa(psrc),
                          hwdst=ethernet.mac_to_str(hwdst), pdst=ipv4.ntoa(pdst)))


def echo_reply(request: bytes) -> bytes:
    """icmp_echo: same id, sequence and data, addresses swapped, TTL 64."""
    inet, _ = _scapy()
    req = inet.IP(request)
    ip_len = req.len
    req = inet.IP(request[:ip_len])
    icmp = req[inet.ICMP]
    return bytes(inet.IP(src=req.dst, dst=req.src, ttl=ipv4.DEFAULT_TTL, id=0)
                 / inet.ICMP(type=0, code=0, id=icmp.id, seq=icmp.seq) / bytes(icmp.payload))


def tcp_reset(segment: bytes) -> bytes:
    """tcp_v4_send_reset for a segment to a closed port (RFC 793: ack the SYN)."""
    inet, _ = _scapy()
    ip = inet.IP(segment)
    tcp = ip[inet.TCP]
    seg_len = len(bytes(tcp.payload)) + (1 if tcp.flags.S else 0) + (1 if tcp.flags.F else 0)
    if tcp.flags.A:
        rst = inet.TCP(sport=tcp.dport, dport=tcp.sport, seq=tcp.ack, flags="R", window=0)
    else:
        rst = inet.TCP(sport=tcp.dport, dport=tcp.sport, seq=0, ack=(tcp.seq + seg_len) & 0xFFFFFFFF,
                       flags="RA", window=0)
    return bytes(inet.IP(src=ip.dst, dst=ip.src, ttl=ipv4.DEFAULT_TTL, id=0, flags="DF") / rst)


def icmp_error(src, dst, icmp_type, code, quoted: bytes, mtu: int) -> bytes:
    inet, _ = _scapy()
    icmp = inet.ICMP(type=icmp_type, code=code, nexthopmtu=mtu) if icmp_type == 3 and code == 4 \
        else inet.ICMP(type=icmp_type, code=code)
    # ICMP errors go out with TOS 0xc0 (internetwork control), as icmp_send sets
    return bytes(inet.IP(src=ipv4.ntoa(src), dst=ipv4.ntoa(dst), ttl=ipv4.DEFAULT_TTL, tos=0xC0)
                 / icmp / quoted)


def fragment(packet: bytes, mtu: int) -> list[bytes]:
    inet, _ = _scapy()
    ip = inet.IP(packet)
    size = (mtu - ip.ihl * 4) // 8 * 8
    return [bytes(f) for f in inet.fragment(ip, fragsize=size)]
