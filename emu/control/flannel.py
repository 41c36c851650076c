"""Flannel with its VXLAN backend, as the CNI plugin of the emulated cluster:
what flanneld and the bridge CNI plugin set up on every node
(reference/k8s-networking.md section 4.2):

- a `cni0` bridge holding the node's .1 address, pods on veth pairs with
  hairpin mode on, each pod's default route via .1;
- `flannel.1`, a VXLAN device (VNI 1, UDP 8472, learning off) with the
  node's subnet address as /32, MTU = underlay MTU - 50;
- for every other node: `<subnet> via <subnet address> dev flannel.1 onlink`,
  a permanent neighbour entry for that address with the other node's VTEP
  MAC, and an FDB entry that MAC -> the other node's IP;
- nodes joined by an underlay switch; conntrack on every node (kube-proxy
  loads it).

Input: ClusterState (emu.control.state). Output: devices in an Engine.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from emu.dataplane.bridge import Bridge
from emu.dataplane.conntrack import Conntrack
from emu.dataplane.engine import Engine
from emu.dataplane.netns import Netns
from emu.wire import ipv4

VXLAN_OVERHEAD = 50
VNI, VXLAN_PORT = 1, 8472
UNDERLAY_LATENCY_NS = 50_000   # a switched datacenter hop
VETH_LATENCY_NS = 1_000


def mac_for(seed: int, name: str) -> int:
    """A deterministic MAC for an interface, of the kind Linux gives veth and
    VXLAN devices (eth_random_addr): random bits, locally administered, unicast."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return (((digest[0] & 0xFE) | 0x02) << 40) | int.from_bytes(digest[1:6], "big")


def veth_name(seed: int, pod: str) -> str:
    """The host end of a pod's veth pair: "veth" + 8 hex digits, as the CNI plugins name it."""
    return "veth" + hashlib.sha256(f"{seed}/veth/{pod}".encode()).hexdigest()[:8]


@dataclass
class Node:
    name: str
    ns: Netns
    bridge: Bridge
    ip: str
    subnet: str       # the node's pod /24
    pods: dict = field(default_factory=dict)


def add_underlay(engine: Engine) -> Bridge:
    return engine.add(Bridge("underlay", host="underlay", seed=engine.seed))


def add_node(engine: Engine, switch: Bridge, name: str, ip: str, subnet: str, underlay_plen: int = 24,
             underlay_mtu: int = 1500, pod_mtu: int | None = None, vxlan_mtu: int | None = None,
             conntrack_max: int = 262_144) -> Node:
    """One node: eth0 on the underlay, cni0, flannel.1, conntrack."""
    seed = engine.seed
    vxlan_mtu = vxlan_mtu or underlay_mtu - VXLAN_OVERHEAD
    pod_mtu = pod_mtu or vxlan_mtu
    net, plen = ipv4.parse_cidr(subnet)
    ns = engine.add(Netns(name, forwarding=True))
    Conntrack(conntrack_max, seed=seed).attach(ns)  # kube-proxy's rules load nf_conntrack on every node
    eth0 = ns.add_interface("eth0", mac_for(seed, f"{name}/eth0"), mtu=underlay_mtu)
    ns.add_address("eth0", f"{ip}/{underlay_plen}")
    engine.link(eth0.port, switch.add_bridge_port(f"port-{name}"), UNDERLAY_LATENCY_NS)
    bridge_mac = mac_for(seed, f"{name}/cni0")
    br = engine.add(Bridge(f"{name}:cni0", mac=bridge_mac, host=name, seed=seed))
    cni0 = ns.add_interface("cni0", bridge_mac, mtu=pod_mtu)
    ns.add_address("cni0", f"{ipv4.ntoa(net + 1)}/{plen}")
    engine.link(cni0.port, br.add_host_port("cni0-bridge"), VETH_LATENCY_NS)
    br.netfilter, br.netfilter_ifname = ns, "cni0"  # br_netfilter: kubeadm's bridge-nf-call-iptables=1
    ns.add_vxlan("flannel.1", mac_for(seed, f"{name}/flannel.1"), vni=VNI, local_ip=ip,
                 dstport=VXLAN_PORT, mtu=vxlan_mtu)
    ns.add_address("flannel.1", f"{ipv4.ntoa(net)}/32")
    return Node(name, ns, br, ip, subnet)


def connect_overlay(nodes) -> None:
    """What flanneld programs on each node for every other node's subnet."""
    for node in nodes:
        for other in nodes:
            if other is node:
                continue
            vtep_mac = other.ns.iface("flannel.1").mac
            gw = other.subnet.split("/")[0]
            node.ns.add_route(other.subnet, "flannel.1", via=gw, onlink=True, proto="flannel")
            node.ns.add_neighbour(gw, vtep_mac, "flannel.1")
            node.ns.add_fdb("flannel.1", vtep_mac, other.ip)


def add_pod(engine: Engine, node: Node, name: str, ip: str, mtu: int | None = None) -> Netns:
    """A pod as the bridge CNI plugin wires it: a veth pair, eth0 in the pod on the
    node's subnet with the bridge as default gateway, the host end on cni0 (hairpin on)."""
    mtu = mtu or node.ns.iface("cni0").mtu
    pod = engine.add(Netns(name))
    eth0 = pod.add_interface("eth0", mac_for(engine.seed, f"{name}/eth0"), mtu=mtu)
    plen = node.subnet.split("/")[1]
    pod.add_address("eth0", f"{ip}/{plen}")
    pod.add_route("default", "eth0", via=ipv4.ntoa(node.ns.iface("cni0").addrs[0][0]))
    host_end = veth_name(engine.seed, name)
    veth = node.bridge.add_bridge_port(host_end, mac=mac_for(engine.seed, f"{node.name}/{host_end}"),
                                       hairpin=True)
    engine.link(eth0.port, veth, VETH_LATENCY_NS)
    node.pods[name] = pod
    return pod


def pod_device_name(namespace: str, name: str) -> str:
    """Pods of the default namespace by name, others as name.namespace (unique, readable)."""
    return name if namespace == "default" else f"{name}.{namespace}"


@dataclass
class Fabric:
    """The wired cluster: nodes and pods (by (namespace, name)) in an engine."""
    engine: Engine
    switch: Bridge
    nodes: dict[str, Node]
    pods: dict[tuple[str, str], Netns]


def build(state, engine: Engine, underlay_plen: int = 16, underlay_mtu: int = 1500,
          pod_mtu: int | None = None, conntrack_max: int = 262_144) -> Fabric:
    """Wire a ClusterState: every node, every pod with an IP (hostNetwork pods
    live in their node's namespace and get no devices). `pod_mtu` is the CNI
    config's "mtu" (None: what flanneld computes, underlay MTU - 50)."""
    switch = add_underlay(engine)
    nodes = {n.name: add_node(engine, switch, n.name, n.ip, n.pod_cidr, underlay_plen, underlay_mtu, pod_mtu,
                              conntrack_max=conntrack_max)
             for n in state.nodes.values()}
    connect_overlay(list(nodes.values()))
    pods = {}
    for key, p in state.pods.items():
        if not p.ip or not p.node:
            continue  # pending
        if p.host_network:
            pods[key] = nodes[p.node].ns
            continue
        pods[key] = add_pod(engine, nodes[p.node], pod_device_name(p.namespace, p.name), p.ip)
    return Fabric(engine, switch, nodes, pods)
