"""Service allocations: ClusterIP, NodePort and LoadBalancer ingress IPs.

As kube-apiserver's allocators (pkg/registry/core/service/ipallocator and
portallocator, bitmap with a static/dynamic split, KEP-3070 / KEP-3668):

* ClusterIP: addresses of the service CIDR without the network and
  broadcast addresses. The range is split at
  ``offset = min(max(16, size // 16), 256)``; dynamic allocation picks a
  random start in the upper band ``[offset, size)`` and scans forward (with
  wrap) to the next free address, then falls back to the lower band.
  User-given IPs may be anywhere. Two fixed ones as kubeadm:
  ``default/kubernetes`` = first address (10.96.0.1) and
  ``kube-system/kube-dns`` = 10th (10.96.0.10).
* NodePort: same scheme over ``settings.node_port_range`` with
  ``offset = min(max(16, size // 32), 128)``; one port per Service port
  (NodePort and LoadBalancer types; none for LoadBalancer with
  ``allocateLoadBalancerNodePorts: false`` unless given). A nodePort given
  for a ClusterIP Service is an error, as in the API.
* LoadBalancer: ``status.loadBalancer.ingress[].ip`` when given, else
  ``spec.loadBalancerIP`` when given, else the next free address of
  ``LB_POOL`` (a MetalLB-style pool, in order). When the pool is exhausted
  the Service stays ``<pending>`` (no ingress IP), as with MetalLB.

"Random" is deterministic: the start of each scan is a hash of
(seed, namespace, name[, port index]), so one Service's allocation does not
depend on the order of the others unless they collide.
"""
from __future__ import annotations

import hashlib
import ipaddress

from emu.errors import EmuError
from emu.model.objects import ClusterSettings, Service
from emu.control.state import ServiceInfo

# MetalLB-style address pool for LoadBalancer Services without a status IP
# (MetalLB's documentation example 192.168.1.240-250; here the /28).
LB_POOL = ipaddress.IPv4Network("192.168.1.240/28")


def stable_int(seed: int, *parts) -> int:
    """A 64-bit integer from the seed and some names (deterministic across runs)."""
    h = hashlib.blake2b(repr((seed,) + parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def range_offset(size: int, lo: int, hi: int, step: int) -> int:
    """Static/dynamic band split (calculateRangeOffset)."""
    if size < lo:
        return 0
    return max(lo, min(hi, size // step))


class BandAllocator:
    """A bitmap allocator over ``size`` items with the static/dynamic split;
    items are 0-based indices (callers map them to IPs or ports)."""

    def __init__(self, size: int, offset: int):
        self.size, self.offset = size, offset
        self.used: dict[int, object] = {}

    def take(self, i: int, owner) -> object | None:
        """Reserve ``i`` for ``owner``; returns the previous owner if taken."""
        prev = self.used.get(i)
        if prev is not None and prev != owner:
            return prev
        self.used[i] = owner
        return None

    def next(self, owner, start_hash: int) -> int | None:
        bands = [(self.offset, self.size), (0, self.offset)]
        for lo, hi in bands:
            n = hi - lo
            if n <= 0:
                continue
            start = lo + start_hash % n
            for k in range(n):
                i = start + k
                if i >= hi:
                    i -= n
                if i not in self.used:
                    self.used[i] = owner
                    return i
        return None

    def release(self, i: int) -> None:
        self.used.pop(i, None)


class ServiceAllocator:
    """ClusterIPs, NodePorts and LB IPs of every Service of one cluster."""

    def __init__(self, settings: ClusterSettings, seed: int):
        self.settings, self.seed = settings, seed
        net = settings.service_cidr
        self.base = int(net.network_address) + 1
        size = net.num_addresses - 2
        self.ips = BandAllocator(size, range_offset(size, 16, 256, 16))
        lo, hi = settings.node_port_range
        self.port_lo = lo
        nsize = hi - lo + 1
        self.ports = BandAllocator(nsize, range_offset(nsize, 16, 128, 32))
        self.lb_used: dict[str, tuple[str, str]] = {}

    # ---------------------------------------------------------------- static

    def reserve(self, svc: Service) -> None:
        """First pass: user-given ClusterIP and NodePorts (as the API server
        admits them before anything is allocated dynamically)."""
        key = svc.key
        if svc.type != "ExternalName" and svc.cluster_ip not in (None, "None"):
            i = int(ipaddress.IPv4Address(svc.cluster_ip)) - self.base
            path = "spec.clusterIP" if svc.source.has("spec.clusterIP") else "spec.clusterIPs[0]"
            if not 0 <= i < self.ips.size:
                raise _err(svc, path, f"{svc.cluster_ip} is not in the serviceCIDR "
                                      f"{self.settings.service_cidr}")
            prev = self.ips.take(i, key)
            if prev is not None:
                raise _err(svc, path, f"{svc.cluster_ip} is already allocated to Service "
                                      f"{prev[0]}/{prev[1]}")
        for n, p in enumerate(svc.ports):
            if p.node_port is None:
                continue
            path = f"spec.ports[{n}].nodePort"
            if svc.type not in ("NodePort", "LoadBalancer"):
                raise _err(svc, path, f"may not be set for a Service of type {svc.type}")
            lo, hi = self.settings.node_port_range
            if not lo <= p.node_port <= hi:
                raise _err(svc, path, f"{p.node_port} is outside the NodePort range {lo}-{hi}")
            prev = self.ports.take(p.node_port - self.port_lo, key)
            if prev is not None:
                raise _err(svc, path, f"{p.node_port} is already allocated to Service "
                                      f"{prev[0]}/{prev[1]}")
        for ip in svc.load_balancer_ingress_ips or ((svc.load_balancer_ip,) if svc.load_balancer_ip else ()):
            if ipaddress.IPv4Address(ip) in LB_POOL:
                self.lb_used.setdefault(ip, key)

    # ---------------------------------------------------------------- dynamic

    def allocate(self, svc: Service, previous: ServiceInfo | None = None) -> ServiceInfo:
        """The ServiceInfo of ``svc`` (after ``reserve``). ``previous``: the
        Service's earlier allocation, kept (clusterIP and nodePorts are sticky
        on update, as in the API)."""
        key = svc.key
        if svc.type == "ExternalName":
            return ServiceInfo(svc, None)
        # ClusterIP
        if svc.headless:
            cip = None
        elif svc.cluster_ip is not None:
            cip = svc.cluster_ip
        elif previous is not None and previous.cluster_ip is not None:
            cip = previous.cluster_ip
            self.ips.take(int(ipaddress.IPv4Address(cip)) - self.base, key)
        else:
            i = self.ips.next(key, stable_int(self.seed, "clusterIP", *key))
            if i is None:
                raise _err(svc, None, f"no free ClusterIP left in the serviceCIDR "
                                      f"{self.settings.service_cidr}")
            cip = str(ipaddress.IPv4Address(self.base + i))
        # NodePorts
        wants_ports = svc.type == "NodePort" or (
            svc.type == "LoadBalancer" and svc.allocate_load_balancer_node_ports is not False)
        prev_ports = previous.node_ports if previous is not None else ()
        node_ports: list[int | None] = []
        for n, p in enumerate(svc.ports):
            if p.node_port is not None:
                node_ports.append(p.node_port)
            elif not wants_ports:
                node_ports.append(None)
            elif n < len(prev_ports) and prev_ports[n] is not None and \
                    self.ports.used.get(prev_ports[n] - self.port_lo, key) == key:
                self.ports.take(prev_ports[n] - self.port_lo, key)
                node_ports.append(prev_ports[n])
            else:
                i = self.ports.next(key, stable_int(self.seed, "nodePort", *key, n))
                if i is None:
                    lo, hi = self.settings.node_port_range
                    raise _err(svc, f"spec.ports[{n}]", f"no free NodePort left in {lo}-{hi}")
                node_ports.append(self.port_lo + i)
        # LoadBalancer ingress
        lb: tuple[str, ...] = ()
        if svc.type == "LoadBalancer":
            if svc.load_balancer_ingress_ips:
                lb = svc.load_balancer_ingress_ips
            elif svc.load_balancer_ip:
                lb = (svc.load_balancer_ip,)
            elif previous is not None and previous.load_balancer_ips:
                lb = previous.load_balancer_ips
            else:
                for addr in LB_POOL:
                    a = str(addr)
                    if a not in self.lb_used:
                        self.lb_used[a] = key
                        lb = (a,)
                        break
        return ServiceInfo(svc, cip, tuple(node_ports), lb)

    def release(self, info: ServiceInfo) -> None:
        key = info.key
        if info.cluster_ip:
            i = int(ipaddress.IPv4Address(info.cluster_ip)) - self.base
            if self.ips.used.get(i) == key:
                self.ips.release(i)
        for p in info.node_ports:
            if p is not None and self.ports.used.get(p - self.port_lo) == key:
                self.ports.release(p - self.port_lo)
        for ip in info.load_balancer_ips:
            if self.lb_used.get(ip) == key:
                del self.lb_used[ip]


def _err(svc: Service, path: str | None, problem: str) -> EmuError:
    if svc.source.line:
        return svc.source.error(path, problem)
    return EmuError(f"Service {svc.namespace}/{svc.name}: {(path + ': ') if path else ''}{problem}")
