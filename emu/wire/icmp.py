"""ICMP (RFC 792) types and codes the data plane sends and reports, named as
iputils' ping prints them."""
from __future__ import annotations

ECHO_REPLY, DEST_UNREACH, ECHO_REQUEST, TIME_EXCEEDED = 0, 3, 8, 11
NET_UNREACH, HOST_UNREACH, PORT_UNREACH, FRAG_NEEDED = 0, 1, 3, 4
TTL_EXCEEDED, REASSEMBLY_TIMEOUT = 0, 1

NAMES = {
    (DEST_UNREACH, NET_UNREACH): "net unreachable",
    (DEST_UNREACH, HOST_UNREACH): "host unreachable",
    (DEST_UNREACH, PORT_UNREACH): "port unreachable",
    (DEST_UNREACH, FRAG_NEEDED): "frag needed and DF set",
    (TIME_EXCEEDED, TTL_EXCEEDED): "time to live exceeded",
    (TIME_EXCEEDED, REASSEMBLY_TIMEOUT): "frag reassembly time exceeded",
}


def name(icmp_type: int, code: int) -> str:
    return NAMES.get((icmp_type, code), f"ICMP type {icmp_type} code {code}")


def quoted_endpoint(frame: bytes, inner: int) -> tuple[int, int]:
    """(protocol, local port or echo id) of the packet an ICMP error quotes."""
    proto = frame[inner + 9]
    l4 = inner + (frame[inner] & 0x0F) * 4
    if proto in (6, 17) and len(frame) >= l4 + 2:
        return proto, int.from_bytes(frame[l4:l4 + 2], "big")
    if proto == 1 and len(frame) >= l4 + 6:
        return proto, int.from_bytes(frame[l4 + 4:l4 + 6], "big")
    return proto, -1
