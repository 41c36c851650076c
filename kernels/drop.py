"""The one numbered list of drop reasons (as Cilium's), shared by every kernel
and device. A number, once given, is never changed or reused: captures,
counters and golden files name reasons by it. Add new reasons at the end of
their block (or in a new block).

Kernels write these codes into a uint8 `drop` column; 0 means "not dropped".
numba reads the module-level integer constants below as compile-time
constants, so kernels use e.g. `drop.TRUNC_ETH`, and Python code uses `Drop`.
"""
from __future__ import annotations

from enum import IntEnum


class Drop(IntEnum):
    NONE = 0
    # -- frame parsing (kernels.parse) ---------------------------------------
    TRUNC_ETH = 1            # shorter than an Ethernet header
    TRUNC_VLAN = 2           # 802.1Q tag cut short
    UNKNOWN_ETHERTYPE = 3    # neither ARP nor IPv4
    TRUNC_ARP = 4            # ARP packet cut short
    BAD_ARP = 5              # ARP for something other than Ethernet/IPv4
    TRUNC_IPV4 = 6           # shorter than 20 bytes of IPv4 header
    BAD_IP_VERSION = 7       # version field is not 4
    BAD_IHL = 8              # header length < 5 words or past the frame
    BAD_IP_LENGTH = 9        # total length < header length or past the frame
    BAD_IP_CHECKSUM = 10     # header checksum does not verify (ip_rcv drops it)
    TRUNC_ICMP = 11          # ICMP header cut short
    TRUNC_TCP = 12           # TCP header cut short
    BAD_TCP_OFFSET = 13      # TCP data offset < 5 words or past the packet
    TRUNC_UDP = 14           # UDP header cut short
    BAD_UDP_LENGTH = 15      # UDP length < 8 or past the IP payload
    TRUNC_VXLAN = 16         # VXLAN header or inner Ethernet cut short
    BAD_VXLAN_FLAGS = 17     # the I flag (VNI valid) is not set
    # -- connection tracking (kernels.conntrack) -----------------------------
    CT_TABLE_FULL = 32       # nf_conntrack: table full, dropping packet
    CT_INVALID = 33          # packet does not fit the tracked connection state
    CT_CLASH = 34            # its tuple belongs to another connection (insert_failed)
    # -- forwarding (data plane devices) --------------------------------------
    NO_ROUTE = 48            # FIB lookup missed: ICMP net unreachable
    TTL_EXCEEDED = 49        # TTL reached 0 in forwarding: ICMP time exceeded
    NEIGH_FAILED = 50        # ARP got no answer: ICMP host unreachable
    NEIGH_QUEUE_FULL = 51    # too many packets held while ARP resolves
    FRAG_NEEDED = 52         # larger than the egress MTU with DF set
    MTU_EXCEEDED = 53        # larger than the egress MTU, no fragmentation modelled
    UNKNOWN_VNI = 54         # VXLAN packet for a VNI no device has
    NO_FDB_ENTRY = 55        # VXLAN device has no FDB entry for the inner MAC
    NOT_FOR_US = 56          # unicast frame for another MAC reached a host port
    PORT_UNREACHABLE = 57    # no socket listens: ICMP port unreachable / TCP RST
    LINK_DOWN = 58           # the device or its peer is down
    BRIDGE_NO_PORT = 59      # bridge has no port to send it to (hairpin off)
    FORWARDING_OFF = 60      # not for this host and ip_forward=0 (pods): counted, no ICMP
    MAC_INVALID_SOURCE = 61  # source MAC multicast or zero (bridge: SKB_DROP_REASON_MAC_INVALID_SOURCE)
    REASSEMBLY_TIMEOUT = 62  # fragments of a datagram not all in within ipfrag_time
    # -- policy and services (later issues) -----------------------------------
    SERVICE_NO_ENDPOINTS = 64  # kube-proxy REJECT: Service without endpoints
    SERVICE_NO_LOCAL = 65      # traffic policy Local with no local endpoint
    POLICY_DENIED = 66         # NetworkPolicy


# Module-level constants for numba kernels (compile-time constants there).
globals().update({member.name: int(member) for member in Drop})


def describe(code: int) -> str:
    """Readable name of a drop code, e.g. 'CT_TABLE_FULL'; unknown codes stay numeric."""
    try:
        return Drop(code).name
    except ValueError:
        return f"DROP_{code}"
