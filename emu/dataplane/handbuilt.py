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

from emu.control.flannel import add_node, add_pod, add_underlay, connect_overlay
from emu.dataplane.engine import Engine


def two_node_flannel(engine: Engine, pod_mtu: int = 1450, vxlan_mtu: int = 1450,
                     underlay_mtu: int = 1500) -> dict:
    """Build the network above in `engine`; returns its parts by name. The MTUs
    are Flannel's unless a test wants a mistake (pods at 1500 over a 1450 overlay)."""
    switch = add_underlay(engine)
    nodes = {f"node-{i}": add_node(engine, switch, f"node-{i}", f"192.168.0.1{i}", f"10.244.{i - 1}.0/24",
                                   24, underlay_mtu, pod_mtu, vxlan_mtu) for i in (1, 2)}
    connect_overlay(list(nodes.values()))
    add_pod(engine, nodes["node-1"], "pod-a", "10.244.0.2", pod_mtu)
    add_pod(engine, nodes["node-2"], "pod-b", "10.244.1.2", pod_mtu)
    return {"engine": engine, "switch": switch, "nodes": nodes,
            "pods": {p: n.pods[p] for n in nodes.values() for p in n.pods}}
