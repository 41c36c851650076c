"""Ethernet II (IEEE 802.3) header: dst(6) src(6) type(2)."""
from __future__ import annotations

from emu.errors import EmuError

HEADER_LEN = 14
DST, SRC, TYPE = 0, 6, 12
TYPE_IPV4 = 0x0800
TYPE_ARP = 0x0806
TYPE_VLAN = 0x8100
BROADCAST = 0xFFFF_FFFF_FFFF


def mac_to_int(text: str) -> int:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise EmuError(f"invalid MAC address {text!r}")
    try:
        return int("".join(parts), 16)
    except ValueError:
        raise EmuError(f"invalid MAC address {text!r}") from None


def mac_to_str(value: int) -> str:
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def is_multicast(mac: int) -> bool:
    """The I/G bit: broadcast and multicast frames."""
    return bool((mac >> 40) & 1)
