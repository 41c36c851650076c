"""Addresses: node IPs on the underlay, node pod CIDRs, pod IPs.

* Node InternalIP: as given on the Node object, else allocated in node order
  on ``UNDERLAY`` starting at ``UNDERLAY[FIRST_NODE_HOST]`` (node-1 =
  192.168.0.11, node-2 = 192.168.0.12, ...), skipping addresses already
  given to other nodes, the LoadBalancer pool (alloc.LB_POOL) and the
  underlay's network/broadcast addresses.
* Node pod CIDR (kube-controller-manager's node-ipam "RangeAllocator" over a
  cidrset): ``spec.podCIDRs`` when given (reserved first), else the next free
  ``/node_cidr_mask_size`` of the cluster pod CIDR in node order, the first
  node taking the first subnet (10.244.0.0/24). Running out is an error (the
  real controller leaves the node without a CIDR; its pods could never start).
* Pod IPs (CNI host-local IPAM as the flannel CNI config sets it up over the
  node subnet): ``.1`` is the gateway (``cni0``), never handed out; the range
  is ``.2`` .. broadcast-1. host-local allocates sequentially after the last
  reserved address (its ``last_reserved_ip`` file), skipping used ones, and
  wraps around at the end of the range: a released address is not reused
  until the allocator wraps. That is reproduced here exactly.
"""
from __future__ import annotations

import ipaddress

from emu.errors import EmuError
from emu.control.alloc import LB_POOL

UNDERLAY = ipaddress.IPv4Network("192.168.0.0/16")
FIRST_NODE_HOST = 11  # node-1 = 192.168.0.11 (a kind/vagrant-like numbering)


def node_ips(given: list[ipaddress.IPv4Address | None]) -> list[ipaddress.IPv4Address]:
    """InternalIPs for nodes in order: the given ones kept, the others
    allocated sequentially on UNDERLAY."""
    taken = {ip for ip in given if ip is not None}
    out = []
    nxt = int(UNDERLAY.network_address) + FIRST_NODE_HOST
    end = int(UNDERLAY.broadcast_address)
    for ip in given:
        if ip is None:
            while nxt < end and (ipaddress.IPv4Address(nxt) in taken or ipaddress.IPv4Address(nxt) in LB_POOL):
                nxt += 1
            if nxt >= end:
                raise EmuError(f"no free node address left on the underlay {UNDERLAY}")
            ip = ipaddress.IPv4Address(nxt)
            taken.add(ip)
            nxt += 1
        out.append(ip)
    return out


class NodeCIDRs:
    """node-ipam's cidrset over the cluster pod CIDR."""

    def __init__(self, pod_cidr: ipaddress.IPv4Network, mask: int):
        if mask < pod_cidr.prefixlen:
            raise EmuError(f"nodeCIDRMaskSize /{mask} is larger than the pod CIDR {pod_cidr}")
        self.pod_cidr, self.mask = pod_cidr, mask
        self.count = 1 << (mask - pod_cidr.prefixlen)
        self.step = 1 << (32 - mask)
        self.base = int(pod_cidr.network_address)
        self.used: dict[int, str] = {}
        self.next_candidate = 0

    def occupy(self, cidr: ipaddress.IPv4Network, node: str) -> None:
        first = (int(cidr.network_address) - self.base) // self.step
        last = (int(cidr.broadcast_address) - self.base) // self.step
        for i in range(max(first, 0), min(last, self.count - 1) + 1):
            self.used[i] = node

    def allocate(self, node: str) -> ipaddress.IPv4Network:
        for k in range(self.count):
            i = (self.next_candidate + k) % self.count
            if i not in self.used:
                self.used[i] = node
                self.next_candidate = (i + 1) % self.count
                return ipaddress.IPv4Network((self.base + i * self.step, self.mask))
        raise EmuError(f"the pod CIDR {self.pod_cidr} has no free /{self.mask} left for node "
                       f"{node} ({self.count} node subnets in all); use a larger podCIDR or "
                       f"a longer nodeCIDRMaskSize")

    def release(self, node: str) -> None:
        for i in [i for i, n in self.used.items() if n == node]:
            del self.used[i]


class HostLocal:
    """host-local IPAM over one node subnet (gateway .1 reserved)."""

    def __init__(self, subnet: ipaddress.IPv4Network):
        self.subnet = subnet
        net = int(subnet.network_address)
        self.gateway = net + 1
        self.first = net + 2
        self.last = int(subnet.broadcast_address) - 1
        self.last_reserved: int | None = None
        self.used: dict[int, tuple[str, str]] = {}

    @property
    def gateway_ip(self) -> str:
        return str(ipaddress.IPv4Address(self.gateway))

    def reserve(self, ip: str, owner: tuple[str, str]) -> str | None:
        """Claim a given address; returns a problem text when it cannot be."""
        a = int(ipaddress.IPv4Address(ip))
        if not self.first <= a <= self.last:
            if a == self.gateway:
                return f"{ip} is the node's cni0 gateway address"
            if ipaddress.IPv4Address(ip) in self.subnet:
                return f"{ip} is the network or broadcast address of {self.subnet}"
            return f"{ip} is outside the node's pod CIDR {self.subnet}"
        prev = self.used.get(a)
        if prev is not None and prev != owner:
            return f"{ip} is already the IP of Pod {prev[0]}/{prev[1]}"
        self.used[a] = owner
        return None

    def allocate(self, owner: tuple[str, str]) -> str | None:
        """The next free address after the last reserved one (None: full)."""
        n = self.last - self.first + 1
        if len(self.used) >= n:
            return None
        start = self.first if self.last_reserved is None else self.last_reserved + 1
        for k in range(n):
            a = start + k
            if a > self.last:
                a -= n
            if a not in self.used:
                self.used[a] = owner
                self.last_reserved = a
                return str(ipaddress.IPv4Address(a))
        return None

    def release(self, ip: str) -> None:
        self.used.pop(int(ipaddress.IPv4Address(ip)), None)
