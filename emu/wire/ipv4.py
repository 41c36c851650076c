"""IPv4 header offsets and address conversions."""
from __future__ import annotations

import ipaddress

from emu.errors import EmuError

HEADER_LEN = 20
VER_IHL, TOS, TOTAL_LEN, IDENT, FLAGS_FRAG, TTL, PROTO, CHECKSUM, SRC, DST = 0, 1, 2, 4, 6, 8, 9, 10, 12, 16
FLAG_DF = 0x4000
FLAG_MF = 0x2000
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
DEFAULT_TTL = 64  # net.ipv4.ip_default_ttl


def aton(text: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise EmuError(f"invalid IPv4 address {text!r}") from None


def ntoa(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def parse_cidr(text: str, strict: bool = True) -> tuple[int, int]:
    """'10.244.1.0/24' -> (address int, prefix length). strict: no host bits
    (as `ip route add` insists); otherwise an interface address like 10.244.1.1/24."""
    try:
        net = ipaddress.IPv4Interface(text)
    except ValueError:
        raise EmuError(f"invalid IPv4 CIDR {text!r}") from None
    if "/" not in text:
        raise EmuError(f"invalid IPv4 CIDR {text!r}: missing /prefix-length")
    if strict and net.ip != net.network.network_address:
        raise EmuError(f"invalid prefix {text!r}: host bits set (did you mean {net.network}?)")
    return int(net.ip), net.network.prefixlen


def mask(plen: int) -> int:
    return (0xFFFF_FFFF << (32 - plen)) & 0xFFFF_FFFF if plen else 0
