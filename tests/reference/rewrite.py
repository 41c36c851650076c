"""Plain-Python references for kernels.rewrite: the same rewrites done by
rebuilding the packet with Scapy, which recomputes every checksum."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN


def _rebuild(pkt):
    """Drop stored checksums so Scapy computes them again; a UDP checksum of 0
    means "none" (RFC 768) and stays 0."""
    for layer in (IP, TCP, UDP, ICMP):
        if pkt.haslayer(layer) and not (layer is UDP and pkt[UDP].chksum == 0):
            del pkt[layer].chksum
    return bytes(pkt)


def decrement_ttl(frame: bytes) -> bytes:
    p = Ether(frame)
    p[IP].ttl = (p[IP].ttl - 1) & 0xFF
    return _rebuild(p)


def nat(frame: bytes, src: str, dst: str, sport: int, dport: int) -> bytes:
    p = Ether(frame)
    p[IP].src, p[IP].dst = src, dst
    if p.haslayer(TCP) or p.haslayer(UDP):
        l4 = p[TCP] if p.haslayer(TCP) else p[UDP]
        l4.sport, l4.dport = sport, dport
    elif p.haslayer(ICMP):
        p[ICMP].id = sport
    return _rebuild(p)


def vxlan_encap(inner: bytes, src: str, dst: str, sport: int, dport: int, vni: int, ttl: int, ip_id: int) -> bytes:
    return bytes(Ether(dst="00:00:00:00:00:00", src="00:00:00:00:00:00")
                 / IP(src=src, dst=dst, ttl=ttl, id=ip_id, flags=0)
                 / UDP(sport=sport, dport=dport, chksum=0) / VXLAN(vni=vni, flags=0x08) / inner)
