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
