"""Ethernet II (IEEE 802.3) header: dst(6) src(6) type(2)."""
from __future__ import annotations

HEADER_LEN = 14
DST, SRC, TYPE = 0, 6, 12
TYPE_IPV4 = 0x0800
TYPE_ARP = 0x0806
TYPE_VLAN = 0x8100
BROADCAST = 0xFFFF_FFFF_FFFF


def mac_to_str(value: int) -> str:
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))

