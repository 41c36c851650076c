"""Controllers: Model -> ClusterState (emu.control.cluster and friends)."""
from __future__ import annotations

import ipaddress
import re

import pytest

from emu.control import cluster
from emu.control.alloc import LB_POOL
from emu.control.workloads import ALPHANUMS, MAX_PODS
from emu.errors import EmuError
from emu.model import load

SUFFIX = f"[{ALPHANUMS}]{{5}}"


def build(text: str, seed: int = 1):
    return cluster.build(load("-", stdin=text), seed)


def deploy(name, replicas=3, labels=None, ports="", ns="default", node_selector=None, extra=""):
    labels = labels or {"app": name}
    lab = ", ".join(f"{k}: {v}" for k, v in labels.items())
    sel = f"\n      nodeSelector: {node_selector}" if node_selector else ""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{{lab}}}}}
  template:
    metadata: {{labels: {{{lab}}}}}
    spec:{sel}{extra}
      containers: [{{name: c, image: x, ports: [{ports}]}}]
---"""


def service(name, selector=None, ports="{port: 80, targetPort: 8080}", ns="default", extra=""):
    sel = f"\n  selector: {{app: {selector}}}" if selector else ""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:{sel}{extra}
  ports: [{ports}]
---"""


def settings(nodes=2, extra=""):
    return f"apiVersion: emu.dev/v1alpha1\nkind: ClusterSettings\nnodes: {nodes}\n{extra}---\n"


def pods_of(state, prefix, ns="default"):
    return [p for p in state.pods.values() if p.namespace == ns and p.name.startswith(prefix)]


def endpoints(state, ns, svc):
    return [e for s in state.slices.get((ns, svc), ()) for e in s.endpoints]


# ---------------------------------------------------------------- names, determinism

def test_deterministic_names_and_ips():
    text = settings(3) + deploy("web", 4) + service("web", "web")
    a, b, c = build(text, 7), build(text, 7), build(text, 8)
    assert list(a.pods) == list(b.pods)
    assert [p.ip for p in a.pods.values()] == [p.ip for p in b.pods.values()]
    assert a.services == b.services
    assert [s.name for s in a.slices["default", "web"]] == [s.name for s in b.slices["default", "web"]]
    names_a = {p.name for p in pods_of(a, "web-")}
    names_c = {p.name for p in pods_of(c, "web-")}
    assert names_a != names_c  # another seed, other suffixes
    for name in names_a:
        assert re.fullmatch(rf"web-[{ALPHANUMS}]+-{SUFFIX}", name)
    # the ReplicaSet hash depends on the template only, not the seed
    assert {n.rsplit("-", 1)[0] for n in names_a} == {n.rsplit("-", 1)[0] for n in names_c}
    p = pods_of(a, "web-")[0]
    assert p.labels["pod-template-hash"] == p.name.split("-")[1]
    assert p.owner == ("ReplicaSet", p.name.rsplit("-", 1)[0])


def test_nodes_and_ipam():
    st = build(settings(3) + deploy("web", 6))
    assert [n.ip for n in st.nodes.values()] == ["192.168.0.11", "192.168.0.12", "192.168.0.13"]
    assert [n.pod_cidr for n in st.nodes.values()] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    n1 = st.nodes["node-1"]
    assert n1.labels["kubernetes.io/hostname"] == "node-1" and n1.labels["kubernetes.io/os"] == "linux"
    for node in st.nodes.values():
        ips = sorted(ipaddress.IPv4Address(p.ip) for p in st.pods.values() if p.node == node.name)
        net = ipaddress.IPv4Network(node.pod_cidr)
        # .1 is cni0; pods get .2, .3, ... in creation order
        assert ips == [net[i] for i in range(2, 2 + len(ips))]


def test_given_nodes_cidrs_and_pod_ip():
    text = """
apiVersion: v1
kind: Node
metadata: {name: a, labels: {disk: ssd}}
spec: {podCIDR: 10.244.7.0/24}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: b}
---
apiVersion: v1
kind: Pod
metadata: {name: fixed, labels: {app: fixed}}
spec: {containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 10.244.7.9}]}
"""
    st = build(text)
    assert st.nodes["a"].ip == "172.18.0.2" and st.nodes["a"].pod_cidr == "10.244.7.0/24"
    assert st.nodes["b"].ip == "192.168.0.11" and st.nodes["b"].pod_cidr == "10.244.0.0/24"
    assert st.nodes["a"].labels["disk"] == "ssd"
    fixed = st.pods["default", "fixed"]
    assert (fixed.node, fixed.ip) == ("a", "10.244.7.9")
    bad = text.replace("10.244.7.9", "10.244.9.9")
    with pytest.raises(EmuError, match="not inside any node's pod CIDR"):
        build(bad)
    with pytest.raises(EmuError, match="cni0 gateway"):
        build(text.replace("10.244.7.9", "10.244.7.1"))


def test_scheduling_spread_selector_nodename_pending():
    nodes = """
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {zone: b}}
---
apiVersion: v1
kind: Node
metadata: {name: n3, labels: {zone: b}}
---"""
    pinned = """
apiVersion: v1
kind: Pod
metadata: {name: pinned}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
---"""
    st = build(nodes + pinned + deploy("web", 7) + deploy("b", 4, node_selector="{zone: b}")
               + deploy("none", 2, node_selector="{zone: z}"))
    assert st.pods["default", "pinned"].node == "n1"
    count = {n: sum(p.node == n for p in st.pods.values()) for n in ("n1", "n2", "n3")}
    assert max(count.values()) - min(count.values()) <= 1  # 2 CoreDNS + 1 + 7 + 4 = 14 pods
    assert {p.node for p in pods_of(st, "b-")} == {"n2", "n3"}
    pending = pods_of(st, "none-")
    assert len(pending) == 2 and all(p.node == "" and p.ip == "" and not p.ready for p in pending)
    with pytest.raises(EmuError, match="no Node named 'nope'"):
        build(nodes + pinned.replace("nodeName: n1", "nodeName: nope"))
    # a matching node arrives: the pending pods are scheduled
    cluster.apply(st, load("-", stdin="apiVersion: v1\nkind: Node\nmetadata: {name: n4, labels: {zone: z}}\n"))
    assert {p.node for p in pods_of(st, "none-")} == {"n4"}
    assert all(p.ip for p in pods_of(st, "none-"))


def test_max_pods_per_node():
    st = build(settings(1) + deploy("big", MAX_PODS + 3))
    placed = [p for p in st.pods.values() if p.node]
    assert len(placed) == MAX_PODS and len(st.pods) == MAX_PODS + 5  # 2 CoreDNS


def test_statefulset_and_daemonset():
    text = settings(3) + """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: c, image: x}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {hostNetwork: true, containers: [{name: c, image: x}]}
---""" + service("db", "db", extra="\n  clusterIP: None")
    st = build(text)
    db = pods_of(st, "db-")
    assert [p.name for p in db] == ["db-0", "db-1", "db-2"]
    assert all(p.hostname == p.name and p.subdomain == "db" for p in db)
    assert {e.hostname for e in endpoints(st, "default", "db")} == {"db-0", "db-1", "db-2"}
    assert st.services["default", "db"].cluster_ip is None
    agents = pods_of(st, "agent-", "kube-system")
    assert sorted(p.node for p in agents) == ["node-1", "node-2", "node-3"]
    assert all(p.ip == st.nodes[p.node].ip and p.host_network for p in agents)
    assert all(re.fullmatch(f"agent-{SUFFIX}", p.name) for p in agents)
    cluster.scale(st, None, "default", "db", 1)
    assert [p.name for p in pods_of(st, "db-")] == ["db-0"]
    cluster.delete_pod(st, "default", "db-0")
    assert [p.name for p in pods_of(st, "db-")] == ["db-0"]  # same name re-created
    cluster.apply(st, load("-", stdin="apiVersion: v1\nkind: Node\nmetadata: {name: node-4}\n"))
    assert len(pods_of(st, "agent-", "kube-system")) == 4
    assert st.nodes["node-4"].ip == "192.168.0.14"


# ---------------------------------------------------------------- services

def test_service_allocations():
    svcs = "".join(service(f"s{i}", "x", extra="\n  type: NodePort") for i in range(30))
    svcs += service("fixed", "x", ports="{port: 80, nodePort: 30080}",
                    extra="\n  type: NodePort\n  clusterIP: 10.96.0.50")
    svcs += service("lb", "x", extra="\n  type: LoadBalancer")
    svcs += service("lb2", "x", extra="\n  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false")
    svcs += service("lb3", "x", extra="\n  type: LoadBalancer")[:-4] + """
status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
---"""
    st = build(svcs)
    info = st.services
    assert info["default", "kubernetes"].cluster_ip == "10.96.0.1"
    assert info["kube-system", "kube-dns"].cluster_ip == "10.96.0.10"
    assert info["default", "fixed"].cluster_ip == "10.96.0.50"
    assert info["default", "fixed"].node_ports == (30080,)
    ips = [s.cluster_ip for s in info.values() if s.cluster_ip]
    assert len(ips) == len(set(ips))
    net = ipaddress.IPv4Network("10.96.0.0/12")
    for s in info.values():
        if s.cluster_ip and s.key not in (("default", "kubernetes"), ("kube-system", "kube-dns"),
                                          ("default", "fixed")):
            # dynamic allocations come from the upper band (offset 256)
            assert ipaddress.IPv4Address(s.cluster_ip) >= net[257]
    ports = [p for s in info.values() for p in s.node_ports if p is not None]
    assert len(ports) == len(set(ports)) and all(30000 <= p <= 32767 for p in ports)
    assert info["default", "lb"].node_ports[0] is not None
    assert ipaddress.IPv4Address(info["default", "lb"].load_balancer_ips[0]) in LB_POOL
    assert info["default", "lb2"].node_ports == (None,)
    assert info["default", "lb3"].load_balancer_ips == ("203.0.113.7",)
    assert info["default", "ext"].cluster_ip is None and ("default", "ext") not in st.slices
    assert info["default", "s0"].node_ports[0] is not None
    dns = info["kube-system", "kube-dns"].service
    assert [(p.name, p.port, p.protocol) for p in dns.ports] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]
    assert len(pods_of(st, "coredns-", "kube-system")) == 2
    assert len(endpoints(st, "kube-system", "kube-dns")) == 2
    (k8s,) = st.slices["default", "kubernetes"]
    assert k8s.endpoints[0].addresses == ("192.168.0.11",) and k8s.ports[0].port == 6443


# ---------------------------------------------------------------- endpoint slices

POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: api}}{meta}}}
spec: {{containers: [{{name: c, image: x, ports: [{{name: http, containerPort: {port}}}]}}]}}
status: {{conditions: [{{type: Ready, status: "{ready}"}}]}}
---"""


def api_pod(name, port=8080, ready=True, terminating=False):
    meta = ", deletionTimestamp: '2024-01-01T00:00:00Z'" if terminating else ""
    return POD.format(name=name, port=port, ready="True" if ready else "False", meta=meta)


def test_slice_conditions_and_named_ports():
    text = (api_pod("ok") + api_pod("notready", ready=False) + api_pod("going", terminating=True)
            + api_pod("other", port=9090)
            + service("api", "api", ports="{name: web, port: 80, targetPort: http}"))
    st = build(text)
    slices = st.slices["default", "api"]
    for s in slices:
        assert s.labels["kubernetes.io/service-name"] == "api"
        assert s.labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
        assert s.address_type == "IPv4" and re.fullmatch(f"api-{SUFFIX}", s.name)
    by_port = {s.ports[0].port: [e.target_ref.name for e in s.endpoints] for s in slices}
    assert by_port == {8080: ["ok", "notready", "going"], 9090: ["other"]}
    cond = {e.target_ref.name: (e.ready, e.serving, e.terminating) for e in endpoints(st, "default", "api")}
    assert cond["ok"] == (True, True, False)
    assert cond["notready"] == (False, False, False)
    assert cond["going"] == (False, True, True)
    assert all(e.node_name for e in endpoints(st, "default", "api"))
    # publishNotReadyAddresses: everything ready
    st2 = build(text.replace("ports: [{name: web", "publishNotReadyAddresses: true\n  ports: [{name: web"))
    assert all(e.ready and e.serving for e in endpoints(st2, "default", "api"))
    # a pod without the named port is left out of that port
    st3 = build(api_pod("ok") + service("api", "api", ports=(
        "{name: web, port: 80, targetPort: http}, {name: grpc, port: 90, targetPort: grpc}")))
    (s,) = st3.slices["default", "api"]
    assert [p.name for p in s.ports] == ["web"]


def test_no_pods_placeholder_and_user_slices():
    text = service("empty", "nothing") + service("manual") + """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-1, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
endpoints: [{addresses: [10.1.2.3]}]
ports: [{port: 8080}]
"""
    st = build(text)
    (empty,) = st.slices["default", "empty"]
    assert empty.endpoints == () and empty.ports == ()
    (manual,) = st.slices["default", "manual"]
    assert manual.name == "manual-1" and manual.endpoints[0].addresses == ("10.1.2.3",)


def test_over_100_endpoints_split():
    st = build(settings(3) + deploy("many", 250) + service("many", "many"))
    slices = st.slices["default", "many"]
    assert [len(s.endpoints) for s in slices] == [100, 100, 50]
    assert len({s.name for s in slices}) == 3


# ---------------------------------------------------------------- changes

def test_scale_delete_fail_go_through_controllers():
    st = build(settings(3) + deploy("web", 3) + service("web", "web"))
    slice_names = [s.name for s in st.slices["default", "web"]]
    cluster.scale(st, None, "default", "web", 5)
    assert len(pods_of(st, "web-")) == 5 and len(endpoints(st, "default", "web")) == 5
    assert [s.name for s in st.slices["default", "web"]] == slice_names  # updated in place
    cluster.scale(st, None, "default", "web", 2)
    assert len(pods_of(st, "web-")) == 2 and len(endpoints(st, "default", "web")) == 2
    # delete: a replacement with a new name (and the next IP: host-local does not reuse at once)
    victim = pods_of(st, "web-")[0]
    cluster.delete_pod(st, "default", victim.name)
    now = pods_of(st, "web-")
    assert len(now) == 2 and victim.name not in {p.name for p in now}
    assert now[-1].ip != victim.ip  # the replacement, newest last
    assert {e.target_ref.name for e in endpoints(st, "default", "web")} == {p.name for p in now}
    # graceful delete: terminating endpoint plus a replacement
    target = now[0]
    cluster.delete_pod(st, "default", target.name, graceful=True)
    eps = {e.target_ref.name: e for e in endpoints(st, "default", "web")}
    assert eps[target.name].terminating and not eps[target.name].ready and eps[target.name].serving
    assert len(eps) == 3
    cluster.delete_pod(st, "default", target.name)
    assert len(endpoints(st, "default", "web")) == 2
    # fail a node: its pods not ready, not moved
    node = pods_of(st, "web-")[0].node
    before = {p.name for p in pods_of(st, "web-")}
    cluster.fail_node(st, node)
    assert not st.nodes[node].ready
    assert {p.name for p in pods_of(st, "web-")} == before
    for e in endpoints(st, "default", "web"):
        assert (e.ready, e.serving) == ((False, False) if e.node_name == node else (True, True))
    # new pods avoid the failed node
    cluster.scale(st, None, "default", "web", 6)
    assert all(p.node != node for p in pods_of(st, "web-") if p.name not in before)
    # eviction: terminating on the dead node, replacements elsewhere
    on_node = [p.name for p in pods_of(st, "web-") if p.node == node]
    cluster.evict_node(st, node)
    assert all(st.pods["default", n].terminating for n in on_node)
    active = [p for p in pods_of(st, "web-") if not p.terminating]
    assert len(active) == 6 and all(p.node != node for p in active)
    cluster.recover_node(st, node)
    assert len(pods_of(st, "web-")) == 6 and st.nodes[node].ready


def test_apply_service_and_rollout():
    st = build(settings(2) + deploy("web", 2) + service("web", "web", extra="\n  type: NodePort"))
    before = st.services["default", "web"]
    # re-apply unchanged: allocations sticky; a new service gets slices
    cluster.apply(st, load("-", stdin=service("web", "web", extra="\n  type: NodePort")
                           + service("web2", "web")))
    assert st.services["default", "web"].cluster_ip == before.cluster_ip
    assert st.services["default", "web"].node_ports == before.node_ports
    assert len(endpoints(st, "default", "web2")) == 2
    old = {p.name for p in pods_of(st, "web-")}
    cluster.apply(st, load("-", stdin=deploy("web", 2, ports="{containerPort: 81}")))
    new = {p.name for p in pods_of(st, "web-")}
    assert len(new) == 2 and not (old & new)
    assert {e.target_ref.name for e in endpoints(st, "default", "web2")} == new


def test_errors():
    with pytest.raises(EmuError, match="already allocated"):
        st = build(service("a", "x", ports="{port: 80, nodePort: 30001}", extra="\n  type: NodePort"))
        cluster.apply(st, load("-", stdin=service("b", "x", ports="{port: 80, nodePort: 30001}",
                                                  extra="\n  type: NodePort")))
    with pytest.raises(EmuError, match="no Pod"):
        cluster.delete_pod(build(""), "default", "ghost")
    with pytest.raises(EmuError, match="no workload"):
        cluster.scale(build(""), None, "default", "ghost", 2)
    with pytest.raises(EmuError, match="no free /24"):
        build(settings(3, "podCIDR: 10.244.0.0/23\n"))
