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


def is_address(text: str) -> bool:
    """A dotted-quad IPv4 address (not a name)."""
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


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


def reassemble(q) -> bytes | None:
    """The whole datagram from a fragment queue {"pieces": {offset: data},
    "total": length once the last fragment is in, "header": the first
    fragment's header}: the header with offset and MF cleared, new length and
    checksum, once every byte from 0 to the end is in; None before that."""
    if q["total"] is None or q["header"] is None:
        return None
    data, at = bytearray(), 0
    for off in sorted(q["pieces"]):
        piece = q["pieces"][off]
        if off > at:
            return None  # a hole
        data += piece[at - off:]
        at = max(at, off + len(piece))
    if at < q["total"]:
        return None
    header = bytearray(q["header"])
    header[2:4] = (len(header) + len(data)).to_bytes(2, "big")
    header[6:8] = (int.from_bytes(header[6:8], "big") & 0x4000).to_bytes(2, "big")  # keep DF only
    header[10:12] = b"\0\0"
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + bytes(data)
