"""Plain-Python reference for kernels.parse: one frame at a time, with
struct and ints, written for obviousness rather than speed.

`parse_frame(frame, vxlan_ports)` returns a dict with one entry per column of
`kernels.parse.Headers` (same names, same meanings, see that module's
docstring); `parse(frames, vxlan_ports)` returns a dict of lists.
"""
from __future__ import annotations

import struct

from kernels.drop import Drop
from kernels.parse import (ARP, COLUMNS, DF, FRAGMENT, HAS_VLAN, ICMP, ICMP_ERROR,
                           IP_OPTIONS, IPV4, L4, MORE_FRAGMENTS, TCP, UDP, VXLAN)

OFFSETS = {"l3_off", "l4_off", "payload_off", "inner_off", "vni"}  # -1 where absent
ICMP_QUERIES = {0, 8, 13, 14, 15, 16, 17, 18}   # carry identifier and sequence
ICMP_ERRORS = {3, 4, 5, 11, 12}                  # quote the offending IP header


class _Stop(Exception):
    """Parsing of this frame ends here with `code` (0: no drop)."""

    def __init__(self, code: int = 0):
        self.code = code


def _mac(data: bytes) -> int:
    return int.from_bytes(data[:6], "big")


def ones_complement_sum(data: bytes) -> int:
    total = 0
    for k in range(0, len(data), 2):
        total += (data[k] << 8) | data[k + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def parse_frame(frame: bytes, vxlan_ports=(8472, 4789)) -> dict:
    row = {name: (-1 if name in OFFSETS else 0) for name in COLUMNS}
    try:
        _parse_into(row, bytes(frame), set(vxlan_ports))
    except _Stop as stop:
        row["drop"] = stop.code
    return row


def parse(frames, vxlan_ports=(8472, 4789)) -> dict:
    rows = [parse_frame(f, vxlan_ports) for f in frames]
    return {name: [r[name] for r in rows] for name in COLUMNS}


def _parse_into(row: dict, frame: bytes, vxlan_ports: set) -> None:
    # Ethernet II and one optional 802.1Q tag.
    if len(frame) < 14:
        raise _Stop(Drop.TRUNC_ETH)
    row["eth_dst"] = _mac(frame[0:6])
    row["eth_src"] = _mac(frame[6:12])
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    row["ethertype"] = ethertype
    l3 = 14
    if ethertype == 0x8100:
        if len(frame) < 18:
            raise _Stop(Drop.TRUNC_VLAN)
        row["flags"] |= HAS_VLAN
        row["vlan_tci"], ethertype = struct.unpack_from("!HH", frame, 14)
        row["ethertype"] = ethertype
        l3 = 18
    row["l3_off"] = l3
    l3_data = frame[l3:]

    if ethertype == 0x0806:
        _arp(row, l3_data)
    elif ethertype == 0x0800:
        _ipv4(row, l3_data, l3, vxlan_ports)
    else:
        raise _Stop(Drop.UNKNOWN_ETHERTYPE)


def _arp(row: dict, data: bytes) -> None:
    if len(data) < 28:
        raise _Stop(Drop.TRUNC_ARP)
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", data, 0)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        raise _Stop(Drop.BAD_ARP)
    row["flags"] |= ARP
    row["arp_op"] = op
    row["arp_sha"] = _mac(data[8:14])
    row["ip_src"] = int.from_bytes(data[14:18], "big")
    row["arp_tha"] = _mac(data[18:24])
    row["ip_dst"] = int.from_bytes(data[24:28], "big")


def _ipv4(row: dict, data: bytes, l3: int, vxlan_ports: set) -> None:
    if len(data) < 20:
        raise _Stop(Drop.TRUNC_IPV4)
    version = data[0] >> 4
    if version != 4:
        raise _Stop(Drop.BAD_IP_VERSION)
    ihl_words = data[0] & 0x0F
    tos, total_len, ident, frag, ttl, proto, _csum, src, dst = struct.unpack_from("!BHHHBBHII", data, 1)
    mf = bool(frag & 0x2000)
    offset_bytes = (frag & 0x1FFF) * 8
    row["flags"] |= IPV4
    if frag & 0x4000:
        row["flags"] |= DF
    if mf:
        row["flags"] |= MORE_FRAGMENTS
    if mf or offset_bytes:
        row["flags"] |= FRAGMENT
    if ihl_words > 5:
        row["flags"] |= IP_OPTIONS
    row.update(tos=tos, ip_len=total_len, ip_id=ident, frag_off=offset_bytes, ttl=ttl,
               ip_proto=proto, ip_src=src, ip_dst=dst)

    header_len = ihl_words * 4
    if header_len < 20 or header_len > len(data):
        raise _Stop(Drop.BAD_IHL)
    if ones_complement_sum(data[:header_len]) != 0xFFFF:
        raise _Stop(Drop.BAD_IP_CHECKSUM)
    if total_len > len(data) or total_len < header_len:
        raise _Stop(Drop.BAD_IP_LENGTH)
    l4 = l3 + header_len
    row["l4_off"] = l4
    if offset_bytes:
        return  # a later fragment carries no L4 header
    segment = data[header_len:total_len]  # Ethernet padding dropped

    def cut_short(code):
        # In a first fragment the header goes on in the next fragment.
        return _Stop(0 if mf else code)

    if proto == 6:
        _tcp(row, segment, l4, cut_short)
    elif proto == 17:
        _udp(row, segment, l4, mf, cut_short, vxlan_ports)
    elif proto == 1:
        _icmp(row, segment, l4, cut_short)


def _tcp(row, segment, l4, cut_short):
    if len(segment) < 20:
        raise cut_short(Drop.TRUNC_TCP)
    sport, dport, seq, ack, doff_byte, tcp_flags = struct.unpack_from("!HHIIBB", segment, 0)
    row["flags"] |= TCP
    row.update(sport=sport, dport=dport, tcp_seq=seq, tcp_ack=ack, tcp_flags=tcp_flags)
    header_len = (doff_byte >> 4) * 4
    if header_len < 20:
        raise _Stop(Drop.BAD_TCP_OFFSET)
    if header_len > len(segment):
        raise cut_short(Drop.BAD_TCP_OFFSET)
    row["flags"] |= L4
    row["payload_off"] = l4 + header_len
    row["payload_len"] = len(segment) - header_len


def _udp(row, segment, l4, mf, cut_short, vxlan_ports):
    if len(segment) < 8:
        raise cut_short(Drop.TRUNC_UDP)
    sport, dport, udp_len = struct.unpack_from("!HHH", segment, 0)
    row["flags"] |= UDP
    row.update(sport=sport, dport=dport)
    # The UDP length counts the whole datagram: a first fragment holds less.
    if udp_len < 8 or (udp_len > len(segment) and not mf):
        raise _Stop(Drop.BAD_UDP_LENGTH)
    payload = segment[8:udp_len]
    row["flags"] |= L4
    row["payload_off"] = l4 + 8
    row["payload_len"] = len(payload)
    if dport not in vxlan_ports:
        return
    if len(payload) < 8:
        raise cut_short(Drop.TRUNC_VXLAN)
    row["flags"] |= VXLAN
    if not payload[0] & 0x08:
        raise _Stop(Drop.BAD_VXLAN_FLAGS)
    row["vni"] = int.from_bytes(payload[4:7], "big")
    if len(payload) < 8 + 14:
        raise cut_short(Drop.TRUNC_VXLAN)
    row["inner_off"] = l4 + 8 + 8


def _icmp(row, segment, l4, cut_short):
    if len(segment) < 8:
        raise cut_short(Drop.TRUNC_ICMP)
    icmp_type, icmp_code, _csum, ident, seq = struct.unpack_from("!BBHHH", segment, 0)
    row["flags"] |= ICMP | L4
    row.update(icmp_type=icmp_type, icmp_code=icmp_code,
               payload_off=l4 + 8, payload_len=len(segment) - 8)
    if icmp_type in ICMP_QUERIES:
        row.update(sport=ident, dport=seq)
    elif icmp_type in ICMP_ERRORS:
        row["flags"] |= ICMP_ERROR
        if len(segment) - 8 >= 20:
            row["inner_off"] = l4 + 8
