"""A small network built by hand with the data plane API: the shape Flannel
(VXLAN backend) gives a two-node cluster, before any Kubernetes model exists.

    pod-a (10.244.0.2)            pod-b (10.244.1.2)
       | veth                         | veth
    node-1 cni0 bridge 10.244.0.1  node-2 cni0 bridge 10.244.1.1
    node-1 flannel.1 10.244.0.0    node-2 flannel.1 10.244.1.0   (VNI 1, UDP 8472, MTU 1450)
    node-1 eth0 192.168.0.11  ---- underlay switch ----  node-2 eth0 192.168.0.12

Routes, neighbour and FDB entries are those flanneld programs
(reference/k8s-networking.md section 4.2): on node-1,
`10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink`, a permanent neighbour
10.244.1.0 -> node-2's flannel.1 MAC, and an FDB entry that MAC -> 192.168.0.12.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from emu.dataplane.bridge import Bridge
from emu.dataplane.conntrack import Conntrack
from emu.dataplane.engine import Engine
from emu.dataplane.netns import Netns

UNDERLAY_LATENCY_NS = 50_000   # a switched datacenter hop
VETH_LATENCY_NS = 1_000


def mac_for(seed: int, name: str) -> int:
    """A deterministic MAC for an interface, of the kind Linux gives veth and
    VXLAN devices (eth_random_addr): random bits, locally administered, unicast."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return (((digest[0] & 0xFE) | 0x02) << 40) | int.from_bytes(digest[1:6], "big")


@dataclass
class Node:
    name: str
    ns: Netns
    bridge: Bridge
    ip: str
    subnet: str       # the node's pod /24
    pods: dict = field(default_factory=dict)


def two_node_flannel(engine: Engine, pod_mtu: int = 1450, vxlan_mtu: int = 1450,
                     underlay_mtu: int = 1500) -> dict:
    """Build the network above in `engine`; returns its parts by name. The MTUs
    are Flannel's unless a test wants a mistake (pods at 1500 over a 1450 overlay)."""
    seed = engine.seed
    switch = engine.add(Bridge("underlay", host="underlay", seed=seed))
    nodes = {}
    for i in (1, 2):
        name = f"node-{i}"
        ns = engine.add(Netns(name, forwarding=True))
        Conntrack(seed=seed).attach(ns)  # kube-proxy's rules load nf_conntrack on every node
        eth0 = ns.add_interface("eth0", mac_for(seed, f"{name}/eth0"), mtu=underlay_mtu)
        ns.add_address("eth0", f"192.168.0.1{i}/24")
        engine.link(eth0.port, switch.add_bridge_port(f"port{i}"), UNDERLAY_LATENCY_NS)
        bridge_mac = mac_for(seed, f"{name}/cni0")
        br = engine.add(Bridge(f"{name}:cni0", mac=bridge_mac, host=name, seed=seed))
        cni0 = ns.add_interface("cni0", bridge_mac, mtu=pod_mtu)
        ns.add_address("cni0", f"10.244.{i - 1}.1/24")
        engine.link(cni0.port, br.add_host_port("cni0-bridge"), VETH_LATENCY_NS)
        ns.add_vxlan("flannel.1", mac_for(seed, f"{name}/flannel.1"), vni=1,
                     local_ip=f"192.168.0.1{i}", dstport=8472, mtu=vxlan_mtu)
        ns.add_address("flannel.1", f"10.244.{i - 1}.0/32")
        nodes[name] = Node(name, ns, br, f"192.168.0.1{i}", f"10.244.{i - 1}.0/24")
    for node in nodes.values():
        for other in nodes.values():
            if other is node:
                continue
            vtep_mac = other.ns.iface("flannel.1").mac
            gw = other.subnet.split("/")[0]
            node.ns.add_route(other.subnet, "flannel.1", via=gw, onlink=True, proto="flannel")
            node.ns.add_neighbour(gw, vtep_mac, "flannel.1")
            node.ns.add_fdb("flannel.1", vtep_mac, other.ip)
    add_pod(engine, nodes["node-1"], "pod-a", "10.244.0.2", pod_mtu)
    add_pod(engine, nodes["node-2"], "pod-b", "10.244.1.2", pod_mtu)
    return {"engine": engine, "switch": switch, "nodes": nodes,
            "pods": {p: n.pods[p] for n in nodes.values() for p in n.pods}}


def add_pod(engine: Engine, node: Node, name: str, ip: str, mtu: int = 1450) -> Netns:
    """A pod as the bridge CNI plugin wires it: a veth pair, eth0 in the pod on the
    node's /24 with the bridge as default gateway, the host end on cni0 (hairpin on)."""
    pod = engine.add(Netns(name))
    eth0 = pod.add_interface("eth0", mac_for(engine.seed, f"{name}/eth0"), mtu=mtu)
    plen = node.subnet.split("/")[1]
    pod.add_address("eth0", f"{ip}/{plen}")
    gateway = node.ns.iface("cni0").addrs[0][0]
    from emu.wire import ipv4

    pod.add_route("default", "eth0", via=ipv4.ntoa(gateway))
    veth = node.bridge.add_bridge_port(f"veth-{name}", mac=mac_for(engine.seed, f"{node.name}/veth-{name}"),
                                       hairpin=True)
    engine.link(eth0.port, veth, VETH_LATENCY_NS)
    node.pods[name] = pod
    return pod
