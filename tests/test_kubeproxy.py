"""kube-proxy decisions (iptables and IPVS modes) and its iptables-save text.

The golden dump is upstream's: kubernetes/kubernetes
pkg/proxy/iptables/proxier_test.go TestTracePackets (services ns1..ns6 on
node IP 192.168.0.2, pod CIDR 10.0.0.0/8), minus what the model lacks
(svc5's loadBalancerSourceRanges, svc2's healthCheckNodePort).
"""
import ipaddress
import time

import numpy as np
import pytest

from emu.control.kubeproxy import DNAT, DROP, NONE, REJECT, KubeProxy, build_service_ports
from emu.control.state import ClusterState, NodeInfo, ServiceInfo
from emu.model.objects import (ClusterSettings, Endpoint, EndpointPort, EndpointSlice, Service,
                               ServicePort)

N1, N2 = "192.168.0.11", "192.168.0.12"
OUTSIDE = "203.0.113.9"


def svc(ns, name, ports, *, cluster_ip, type="ClusterIP", node_ports=(), lb=(), **kw):
    s = Service(namespace=ns, name=name, labels={}, type=type, ports=tuple(ports), selector={"a": name},
                cluster_ip=cluster_ip, **kw)
    return ServiceInfo(s, cluster_ip, tuple(node_ports), tuple(lb))


def eps(ns, name, endpoints, ports=(EndpointPort(80, "TCP", "p80"),)):
    return (EndpointSlice(ns, name + "-abc", {"kubernetes.io/service-name": name}, "IPv4",
                          tuple(endpoints), tuple(ports)),)


def ep(ip, node, **cond):
    return Endpoint((ip,), node_name=node, **cond)


def cluster(services, slices, pod_cidr="10.244.0.0/16"):
    st = ClusterState(ClusterSettings(pod_cidr=ipaddress.IPv4Network(pod_cidr)))
    st.nodes = {"node-1": NodeInfo("node-1", N1, "10.244.1.0/24"),
                "node-2": NodeInfo("node-2", N2, "10.244.2.0/24")}
    for s in services:
        st.services[s.key] = s
    st.slices.update(slices)
    return st


P80 = [ServicePort(80, 8080, "TCP", "p80")]


@pytest.fixture
def state():
    S = [
        svc("default", "web", P80, cluster_ip="10.96.0.20"),
        svc("default", "np", P80, cluster_ip="10.96.0.21", type="NodePort", node_ports=(30080,)),
        svc("default", "npl", P80, cluster_ip="10.96.0.22", type="NodePort", node_ports=(30081,),
            external_traffic_policy="Local"),
        svc("default", "lb", P80, cluster_ip="10.96.0.23", type="LoadBalancer", node_ports=(30082,),
            lb=("198.51.100.7",)),
        svc("default", "ext", P80, cluster_ip="10.96.0.24", external_ips=("198.51.100.8",)),
        svc("default", "itl", P80, cluster_ip="10.96.0.25", internal_traffic_policy="Local"),
        svc("default", "empty", P80, cluster_ip="10.96.0.26", type="NodePort", node_ports=(30083,)),
        svc("default", "term", P80, cluster_ip="10.96.0.27"),
        svc("default", "aff", P80, cluster_ip="10.96.0.28", session_affinity="ClientIP",
            session_affinity_timeout=10),
        svc("default", "lbl", P80, cluster_ip="10.96.0.29", type="LoadBalancer", node_ports=(30084,),
            lb=("198.51.100.9",), external_traffic_policy="Local"),
        svc("default", "dns", [ServicePort(53, 53, "UDP", "dns")], cluster_ip="10.96.0.10"),
    ]
    remote = ep("10.244.2.5", "node-2")
    local = ep("10.244.1.5", "node-1")
    slices = {
        ("default", "web"): eps("default", "web", [remote]),
        ("default", "np"): eps("default", "np", [remote]),
        ("default", "npl"): eps("default", "npl", [remote]),
        ("default", "lb"): eps("default", "lb", [remote]),
        ("default", "ext"): eps("default", "ext", [remote]),
        ("default", "itl"): eps("default", "itl", [remote]),
        ("default", "term"): eps("default", "term", [
            ep("10.244.2.6", "node-2", ready=False, serving=True, terminating=True),
            ep("10.244.2.7", "node-2", ready=False, serving=False, terminating=True)]),
        ("default", "aff"): eps("default", "aff", [ep(f"10.244.2.{i}", "node-2") for i in range(10, 14)]),
        ("default", "lbl"): eps("default", "lbl", [local, remote]),
        ("default", "dns"): eps("default", "dns", [ep("10.244.1.3", "node-1")],
                                (EndpointPort(53, "UDP", "dns"),)),
    }
    return cluster(S, slices)


R, L = ("10.244.2.5", 80), ("10.244.1.5", 80)
POD, POD2 = "10.244.1.9", "10.244.2.9"
# (name, src, proto, dst, port, hook, action, backend, masq)
TABLE = [
    ("clusterIP from local pod", POD, "tcp", "10.96.0.20", 80, "PREROUTING", DNAT, R, False),
    ("clusterIP from remote pod", POD2, "tcp", "10.96.0.20", 80, "PREROUTING", DNAT, R, False),
    ("clusterIP from node", N1, "tcp", "10.96.0.20", 80, "OUTPUT", DNAT, R, True),
    ("clusterIP from outside", OUTSIDE, "tcp", "10.96.0.20", 80, "PREROUTING", DNAT, R, True),
    ("clusterIP wrong port", POD, "tcp", "10.96.0.20", 81, "PREROUTING", NONE, None, False),
    ("clusterIP wrong proto", POD, "udp", "10.96.0.20", 80, "PREROUTING", NONE, None, False),
    ("udp dns", POD, "udp", "10.96.0.10", 53, "PREROUTING", DNAT, ("10.244.1.3", 53), False),
    ("nodeport cluster", OUTSIDE, "tcp", N1, 30080, "PREROUTING", DNAT, R, True),
    ("nodeport on cni0 address", OUTSIDE, "tcp", "10.244.1.1", 30080, "PREROUTING", DNAT, R, True),
    ("nodeport on other node's IP", OUTSIDE, "tcp", N2, 30080, "PREROUTING", NONE, None, False),
    ("nodeport localhost from host", "127.0.0.1", "tcp", "127.0.0.1", 30080, "OUTPUT", DNAT, R, True),
    ("nodeport local, no local ep", OUTSIDE, "tcp", N1, 30081, "PREROUTING", DROP, None, False),
    ("nodeport local, pod source short-circuit", POD, "tcp", N1, 30081, "PREROUTING", DNAT, R, False),
    ("nodeport local, from node", N1, "tcp", N1, 30081, "OUTPUT", DNAT, R, True),
    ("LB local with local ep keeps source", OUTSIDE, "tcp", "198.51.100.9", 80, "PREROUTING", DNAT, L, False),
    ("nodeport local with local ep", OUTSIDE, "tcp", N1, 30084, "PREROUTING", DNAT, L, False),
    ("LB IP cluster", OUTSIDE, "tcp", "198.51.100.7", 80, "PREROUTING", DNAT, R, True),
    ("LB IP from pod", POD, "tcp", "198.51.100.7", 80, "PREROUTING", DNAT, R, True),
    ("externalIP", OUTSIDE, "tcp", "198.51.100.8", 80, "PREROUTING", DNAT, R, True),
    ("ITP local, no local ep", POD, "tcp", "10.96.0.25", 80, "PREROUTING", DROP, None, False),
    ("ITP local from outside", OUTSIDE, "tcp", "10.96.0.25", 80, "PREROUTING", DROP, None, False),
    ("no endpoints clusterIP", POD, "tcp", "10.96.0.26", 80, "PREROUTING", REJECT, None, False),
    ("no endpoints nodeport", OUTSIDE, "tcp", N1, 30083, "PREROUTING", REJECT, None, False),
    ("terminating fallback", POD, "tcp", "10.96.0.27", 80, "PREROUTING", DNAT, ("10.244.2.6", 80), False),
    ("hairpin", "10.244.1.5", "tcp", "10.96.0.29", 80, "PREROUTING", DNAT, L, True),
]


@pytest.mark.parametrize("name,src,proto,dst,port,hook,action,backend,masq", TABLE, ids=[t[0] for t in TABLE])
def test_iptables_decisions(state, name, src, proto, dst, port, hook, action, backend, masq):
    kp = KubeProxy(state, "node-1", seed=1)
    d = kp.decide(src, proto, dst, port, now_ns=0, hook=hook)
    if name == "hairpin":   # a connection whose random pick is the client itself (two endpoints)
        d = next(x for x in (kp.decide(src, proto, dst, port, now_ns=0, hook=hook, src_port=p)
                             for p in range(40000, 40064)) if x.backend == backend)
    assert d.action == action, d.explain
    if action == DNAT:
        assert d.backend == backend, d.explain
        assert d.masquerade == masq, d.explain
        assert d.chains[0] == "KUBE-SERVICES" and d.chains[-1 if not masq or "KUBE-SEP" in d.chains[-1] else -2]
        assert any(c.startswith("KUBE-SEP-") for c in d.chains)
        assert d.explain.startswith(f"DNAT {dst}:{port} -> {backend[0]}:{backend[1]} via KUBE-SEP-")


def test_hairpin_without_lb_path(state):
    kp = KubeProxy(state, "node-2")
    d = kp.decide("10.244.2.5", "tcp", "10.96.0.20", 80)
    assert d.action == DNAT and d.masquerade and d.chains[-1] == "KUBE-MARK-MASQ"


def test_local_policy_depends_on_node(state):
    # node-2 has the remote endpoint locally: the Local NodePort serves it, source kept
    d = KubeProxy(state, "node-2").decide(OUTSIDE, "tcp", N2, 30081)
    assert (d.action, d.backend, d.masquerade) == (DNAT, R, False)
    assert any(c.startswith("KUBE-SVL-") for c in d.chains)


def test_chain_path_names(state):
    kp = KubeProxy(state, "node-1")
    d = kp.decide(OUTSIDE, "tcp", N1, 30080)
    sp = kp.service_port("default/np:p80")
    assert d.chains == ("KUBE-SERVICES", "KUBE-NODEPORTS", sp.ext_chain, "KUBE-MARK-MASQ", sp.svc_chain,
                        sp.endpoints[0].chain)


def test_session_affinity(state):
    kp = KubeProxy(state, "node-1", seed=3)
    s = 1_000_000_000
    first = kp.decide(POD, "tcp", "10.96.0.28", 80, now_ns=0).backend
    for k in range(1, 20):
        d = kp.decide(POD, "tcp", "10.96.0.28", 80, now_ns=k * s // 2)
        assert d.backend == first and "affinity" in d.explain
    # the timer runs from the last connection (recent --set); 10 s idle -> new pick
    picks = {kp.decide(f"10.244.1.{100 + i}", "tcp", "10.96.0.28", 80, now_ns=100 * s * i).backend
             for i in range(40)}
    assert len(picks) > 1
    later = [kp.decide(POD, "tcp", "10.96.0.28", 80, now_ns=10_000 * s + i * 11 * s).backend for i in range(40)]
    assert len(set(later)) > 1            # each call is past the timeout: fresh random picks


def test_affinity_survives_update(state):
    kp = KubeProxy(state, "node-1", seed=5)
    b = kp.decide(POD, "tcp", "10.96.0.28", 80, now_ns=0).backend
    kp.update(state)
    assert kp.decide(POD, "tcp", "10.96.0.28", 80, now_ns=1).backend == b


def test_uniform_distribution(state):
    kp = KubeProxy(state, "node-1", seed=11)
    n = 8000
    counts = {}
    for i in range(n):
        b = kp.decide(f"10.244.1.{i % 200}", "tcp", "10.96.0.28", 80, now_ns=i * 20_000_000_000).backend
        counts[b] = counts.get(b, 0) + 1
    assert len(counts) == 4
    exp = n / 4
    chi2 = sum((c - exp) ** 2 / exp for c in counts.values())
    assert chi2 < 16.27                   # p = 0.001, 3 degrees of freedom


def test_endpoint_order_is_by_ip_port_string():
    st = cluster([svc("a", "s", P80, cluster_ip="10.96.0.5")],
                 {("a", "s"): eps("a", "s", [ep(ip, "node-2") for ip in ("10.244.2.10", "10.244.2.9", "10.244.2.2")])})
    sp = build_service_ports(st, "node-1")[0]
    assert [e.string for e in sp.endpoints] == ["10.244.2.10:80", "10.244.2.2:80", "10.244.2.9:80"]


# ------------------------------------------------------------------ IPVS

def test_ipvs_rr_order_and_masq(state):
    kp = KubeProxy(state, "node-1", mode="ipvs", scheduler="rr")
    seq = [kp.decide(POD, "tcp", "10.96.0.28", 80, now_ns=i * 100_000_000_000).backend[0] for i in range(8)]
    assert seq == ["10.244.2.10", "10.244.2.11", "10.244.2.12", "10.244.2.13"] * 2
    assert not kp.decide(POD, "tcp", "10.96.0.20", 80).masquerade
    assert kp.decide(N1, "tcp", "10.96.0.20", 80, hook="OUTPUT").masquerade
    d = kp.decide(OUTSIDE, "tcp", N1, 30080)
    assert d.action == DNAT and d.masquerade and "KUBE-NODE-PORT" in d.chains
    d = kp.decide(OUTSIDE, "tcp", "198.51.100.9", 80)
    assert d.backend == L and not d.masquerade
    assert kp.decide(POD, "tcp", "10.96.0.26", 80).action == REJECT
    assert kp.decide("10.244.2.5", "tcp", "10.96.0.20", 80).masquerade     # KUBE-LOOP-BACK
    assert "-A -t 10.96.0.28:80 -s rr -p 10" in kp.ipvs.ipvsadm_save()


def _mh_cluster(n):
    return cluster([svc("a", "s", P80, cluster_ip="10.96.0.5")],
                   {("a", "s"): eps("a", "s", [ep(f"10.244.2.{i}", "node-2") for i in range(1, n + 1)])})


def test_ipvs_mh_consistent_and_minimal_disruption():
    kp = KubeProxy(_mh_cluster(5), "node-1", mode="ipvs", scheduler="mh", seed=2)
    flows = [(f"10.{i % 250}.{i // 250 % 250}.7", 1024 + i) for i in range(3000)]
    before = [kp.decide(s, "tcp", "10.96.0.5", 80, src_port=p).backend for s, p in flows]
    again = [kp.decide(s, "tcp", "10.96.0.5", 80, src_port=p).backend for s, p in flows]
    assert before == again
    assert len(set(before)) == 5
    kp.update(_mh_cluster(4))              # 10.244.2.5 goes away
    after = [kp.decide(s, "tcp", "10.96.0.5", 80, src_port=p).backend for s, p in flows]
    kept = [(b, a) for b, a in zip(before, after) if b[0] != "10.244.2.5"]
    moved = sum(b != a for b, a in kept)
    assert moved / len(kept) < 0.03       # Maglev: nearly only the removed backend's flows move
    # mh-port: the source port takes part in the hash
    assert len({kp.decide("10.1.1.1", "tcp", "10.96.0.5", 80, src_port=p).backend for p in range(1000, 1100)}) > 1


# ------------------------------------------------------------------ iptables-save

def upstream_state():
    """proxier_test.go TestTracePackets' services, as a ClusterState."""
    st = cluster([
        svc("ns1", "svc1", P80, cluster_ip="172.30.0.41"),
        svc("ns2", "svc2", P80, cluster_ip="172.30.0.42", type="LoadBalancer", node_ports=(3001,),
            lb=("1.2.3.4",), external_ips=("192.168.99.22",), external_traffic_policy="Local"),
        svc("ns3", "svc3", P80, cluster_ip="172.30.0.43", type="NodePort", node_ports=(3003,)),
        svc("ns4", "svc4", P80, cluster_ip="172.30.0.44", external_ips=("192.168.99.33",)),
        svc("ns6", "svc6", P80, cluster_ip="172.30.0.46"),
    ], {
        ("ns1", "svc1"): eps("ns1", "svc1", [ep("10.180.0.1", "node-2")]),
        ("ns2", "svc2"): eps("ns2", "svc2", [ep("10.180.0.2", "node-2")]),
        ("ns3", "svc3"): eps("ns3", "svc3", [ep("10.180.0.3", "node-2")]),
        ("ns4", "svc4"): eps("ns4", "svc4", [ep("10.180.0.4", "node-2"), ep("10.180.0.5", "node-2")]),
    }, pod_cidr="10.0.0.0/8")
    st.nodes["node-1"] = NodeInfo("node-1", "192.168.0.2", "10.0.1.0/24")
    return st


# Copied from upstream TestTracePackets (comment quoting as kube-proxy writes it).
GOLDEN_FILTER = """\
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
"""
GOLDEN_NAT = """\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
"""


def _by_chain(lines):
    out = {}
    for ln in lines:
        out.setdefault(ln.split()[1], []).append(ln)
    return out


def test_restore_text_matches_upstream_golden():
    text = KubeProxy(upstream_state(), "node-1").iptables_save(style="restore")
    f, n = text.split("*nat\n")
    assert f.startswith("*filter\n") and f.endswith("COMMIT\n") and text.endswith("COMMIT\n")
    ours_f = [ln for ln in f.splitlines() if ln.startswith("-A")]
    ours_n = [ln for ln in n.splitlines() if ln.startswith("-A")]
    # same rules, same order within every chain (services in name order)
    assert _by_chain(ours_f) == _by_chain(GOLDEN_FILTER.splitlines())
    assert _by_chain(ours_n) == _by_chain(GOLDEN_NAT.splitlines())
    decl = {ln for ln in n.splitlines() if ln.startswith(":")}
    assert ":KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]" in decl and ":KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]" in decl
    assert not any("SVL" in d for d in decl)    # svc2 has no local endpoint on this node


def test_save_text_looks_like_a_node():
    kp = KubeProxy(upstream_state(), "node-1")
    text = kp.iptables_save()
    lines = text.splitlines()
    assert lines[0] == "*filter" and ":INPUT ACCEPT [0:0]" in lines and "*nat" in lines
    assert lines.index("*filter") < lines.index("*nat") and text.count("COMMIT") == 2
    for want in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        "-A KUBE-SERVICES -d 172.30.0.44/32 -p tcp -m comment --comment \"ns4/svc4:p80 cluster IP\" "
        "-m tcp --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK",
        "-A KUBE-SVC-4SW47YFZTEDKD3PK ! -s 10.0.0.0/8 -d 172.30.0.44/32 -p tcp -m comment --comment "
        "\"ns4/svc4:p80 cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ",
        "-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 -> 10.180.0.4:80\" -m statistic "
        "--mode random --probability 0.50000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC",
        "-A KUBE-SEP-UKSFD7AGPMPPLUHC -s 10.180.0.4/32 -m comment --comment \"ns4/svc4:p80\" -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-UKSFD7AGPMPPLUHC -p tcp -m comment --comment \"ns4/svc4:p80\" -m tcp -j DNAT "
        "--to-destination 10.180.0.4:80",
        "-A KUBE-SERVICES -d 172.30.0.46/32 -p tcp -m comment --comment \"ns6/svc6:p80 has no endpoints\" "
        "-m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
    ]:
        assert want in lines, want
    user = [ln[1:].split()[0] for ln in lines if ln.startswith(":") and " - " in ln]
    nat_user = user[user.index("KUBE-EXT-4SW47YFZTEDKD3PK"):]
    assert nat_user == sorted(nat_user)


def test_probabilities_and_affinity_rules(state):
    text = KubeProxy(state, "node-1").iptables_save(style="restore")
    aff = [ln for ln in text.splitlines() if ln.startswith("-A KUBE-SVC") and "default/aff:p80 ->" in ln]
    assert [("--rcheck" in ln) for ln in aff] == [True] * 4 + [False] * 4
    assert "--seconds 10 --reap" in aff[0]
    probs = [ln.split("--probability ")[1].split()[0] for ln in aff if "--probability" in ln]
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000"]
    saved = KubeProxy(state, "node-1").iptables_save()
    assert "--probability 0.33333333349" in saved
    assert "-m recent --rcheck --seconds 10 --reap --name KUBE-SEP-" in saved
    assert "-m recent --set --name KUBE-SEP-" in saved


def test_large_cluster_builds_fast():
    nodes = {f"n{i}": NodeInfo(f"n{i}", f"192.168.{i // 250}.{i % 250 + 1}", f"10.{64 + i // 256}.{i % 256}.0/24")
             for i in range(100)}
    st = ClusterState(ClusterSettings(pod_cidr=ipaddress.IPv4Network("10.0.0.0/8")), nodes=nodes)
    k = 0
    for s in range(10_000):
        name = f"s{s}"
        st.services[("ns", name)] = svc("ns", name, P80, cluster_ip=str(ipaddress.IPv4Address(0x0A600000 + s + 20)))
        e = []
        for j in range(15):
            e.append(ep(str(ipaddress.IPv4Address(0x0A400000 + k)), f"n{k % 100}"))
            k += 1
        st.slices[("ns", name)] = eps("ns", name, e)
    t0 = time.perf_counter()
    kp = KubeProxy(st, "n0", seed=1)
    build = time.perf_counter() - t0
    assert kp.total_endpoints == 150_000 and kp.large_cluster
    assert build < 10, build
    t0 = time.perf_counter()
    for i in range(2000):
        kp.decide("10.64.0.5", "tcp", str(ipaddress.IPv4Address(0x0A600000 + 20 + i)), 80)
    assert time.perf_counter() - t0 < 2
    text = kp.iptables_save(style="restore")
    assert "-A KUBE-SEP-" in text and "--comment ns/s0:p80" not in text   # large cluster mode: no comments


def test_ipvs_mode_renders_rules():
    kp = KubeProxy(upstream_state(), "node-1", mode="ipvs")
    save = kp.iptables_save()
    assert "-m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE" in save
    assert "--match-set KUBE-CLUSTER-IP dst,dst" in kp.iptables_save(style="restore")
    assert "-a -t 172.30.0.44:80 -r 10.180.0.4:80 -m -w 1" in kp.ipvs.ipvsadm_save()


def test_random_picks_are_uniform_and_need_no_order():
    """iptables' random pick (random_picks): uniform over the endpoints
    (chi-square, df = 4, p = 0.001), the same for a packet whatever else is
    decided before it, and a tuple used again later draws again."""
    from emu.control.kubeproxy import random_picks
    n = 20_000
    sport = 1024 + np.arange(n) % 50_000
    now = np.arange(n, dtype=np.int64) * 997
    picks = random_picks(7, 0x0AF40109, 6, 0x0A600014, 80, sport, now, 5)
    counts = np.bincount(picks, minlength=5)
    assert ((counts - n / 5) ** 2 / (n / 5)).sum() < 18.47
    order = np.random.default_rng(3).permutation(n)
    assert np.array_equal(random_picks(7, 0x0AF40109, 6, 0x0A600014, 80, sport[order], now[order], 5), picks[order])
    again = [int(random_picks(7, 0x0AF40109, 6, 0x0A600014, 80, 40000, t, 5)[0]) for t in range(0, 10**6, 10**4)]
    assert len(set(again)) == 5
    assert not np.array_equal(random_picks(8, 0x0AF40109, 6, 0x0A600014, 80, sport, now, 5), picks)   # the seed
