"""Control plane at the Kubernetes scalability limits: 5,000 nodes, 150,000
pods, 10,000 Services (issue 4: loads and compiles in <= 60 s and <= 8 GiB).

The manifests are generated here: a ClusterSettings with ``nodes: 5000`` and
``podCIDR: 10.128.0.0/9`` (the default /16 holds only 256 node /24s), and
10,000 Deployments of 15 replicas, each with a ClusterIP Service selecting it
(one in ten a NodePort, one in twenty headless), spread over 20 namespaces,
as one multi-document YAML text. One call = load it (``emu.model.load``) and
run every controller (``emu.control.cluster.build``). Peak memory is the
process's ru_maxrss after the run (it includes the interpreter and the
YAML text), reported with the object counts.
"""
from __future__ import annotations

import resource
import time

from bench.conftest import size
from emu.control import cluster
from emu.control.kubeproxy import KubeProxy
from emu.model import load

NODES = size(5_000, 20)
DEPLOYMENTS = size(10_000, 40)
REPLICAS = 15
NAMESPACES = size(20, 2)


def manifests(nodes: int, deployments: int, replicas: int, namespaces: int) -> str:
    # 5,000 node /24s need more than the default 10.244.0.0/16 (256 subnets)
    out = [f"apiVersion: emu.dev/v1alpha1\nkind: ClusterSettings\nnodes: {nodes}\n"
           f"podCIDR: 10.128.0.0/9\n"]
    for i in range(namespaces):
        out.append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{i}\n")
    for i in range(deployments):
        ns = f"ns-{i % namespaces}"
        name = f"app-{i}"
        out.append(f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}, tier: backend}}
    spec:
      containers:
      - name: main
        image: registry.example/{name}:1.0
        ports:
        - {{name: http, containerPort: 8080}}
        - {{name: metrics, containerPort: 9090}}
""")
        svc_type = "NodePort" if i % 10 == 0 else "ClusterIP"
        headless = "\n  clusterIP: None" if i % 20 == 5 else ""
        out.append(f"""apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  type: {svc_type}{headless}
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: metrics, port: 9090, targetPort: 9090}}
""")
    return "---\n".join(out)


def test_controllers_scale(benchmark, record):
    text = manifests(NODES, DEPLOYMENTS, REPLICAS, NAMESPACES)
    timing = {}

    def run():
        t0 = time.perf_counter()
        model = load("-", stdin=text)
        t1 = time.perf_counter()
        state = cluster.build(model, seed=1)
        t2 = time.perf_counter()
        # one node's kube-proxy tables (every node builds its own the same way)
        proxy = KubeProxy(state, "node-1", seed=1)
        t3 = time.perf_counter()
        timing.update(load_s=round(t1 - t0, 2), build_s=round(t2 - t1, 2),
                      kube_proxy_s=round(t3 - t2, 2), rules=proxy.iptables_save().count("\n-A "))
        return state

    state = benchmark.pedantic(run, rounds=1, iterations=1)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    pods = len(state.pods)
    assert len(state.nodes) == NODES
    assert pods == DEPLOYMENTS * REPLICAS + 2  # + CoreDNS
    assert all(p.ip for p in state.pods.values())
    assert len(state.services) == DEPLOYMENTS + 2
    record("control plane: load + controllers + kube-proxy", "emu", pods, "pods", target_seconds=60,
           nodes=NODES, services=len(state.services),
           slices=sum(len(s) for s in state.slices.values()),
           peak_rss_gib=round(peak_gib, 2), **timing)
    assert peak_gib <= 8
