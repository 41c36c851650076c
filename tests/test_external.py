"""Traffic from outside the cluster: NodePort with externalTrafficPolicy
Cluster and Local (the source address the backend sees), and a LoadBalancer
IP through the network load balancer in front of the nodes."""
from __future__ import annotations

from scapy.layers.inet import IP, UDP

from emu.cluster import EXTERNAL_IP, Cluster
from emu.model import load
from tests.tshark import fields, problems
from tests.util import ROOT

MANIFESTS = str(ROOT / "examples" / "cluster" / "external.yaml")


def _cluster():
    c = Cluster(load([MANIFESTS]), seed=3)

    def echo(ns, frame, l3, t):  # answers with who it is and whom it saw
        ip = IP(frame[l3:])
        ns.send_ip(ns.engine, bytes(IP(src=ip.dst, dst=ip.src) / UDP(sport=ip[UDP].dport, dport=ip[UDP].sport)
                                    / f"{ns.name} saw {ip.src}".encode()), t)
    for (ns, name), pod in c.fabric.pods.items():
        if name.startswith("api-"):
            pod.bind(17, 9000, echo)
    return c


def _ask(c, dst, dport, sports):
    got = {}
    for sport in sports:
        c.external.bind(17, sport, lambda ns, f, l3, t: got.setdefault(IP(f[l3:])[UDP].dport, IP(f[l3:])))
        c.external.send_ip(c.engine, bytes(IP(src=EXTERNAL_IP, dst=dst) / UDP(sport=sport, dport=dport) / b"?"),
                           c.engine.now + sport)
    c.engine.run()
    return got


def test_nodeport_cluster_policy_masquerades(tmp_path):
    c = _cluster()
    node1 = c.state.nodes["node-1"].ip
    got = _ask(c, node1, 30080, range(50000, 50010))
    assert len(got) == 10 and {p.src for p in got.values()} == {node1}  # answers from the NodePort
    seen = {bytes(p[UDP].payload).decode() for p in got.values()}
    # both backends answer, and neither saw the client: the source was masqueraded to node-1
    assert len({s.split()[0] for s in seen}) == 2
    assert all(not s.endswith(EXTERNAL_IP) for s in seen)
    path = tmp_path / "np.pcapng"
    c.engine.taps.write_pcapng(path, c.engine)
    assert problems(path) == []


def test_nodeport_local_policy_keeps_the_source_and_stays_local():
    c = _cluster()
    pods_on = {p.node: p.name for p in c.state.pods.values() if p.name.startswith("api-")}
    for node, pod in pods_on.items():
        got = _ask(c, c.state.nodes[node].ip, 30081, range(51000, 51005))
        answers = {bytes(p[UDP].payload).decode() for p in got.values()}
        assert answers == {f"{pod} saw {EXTERNAL_IP}"}  # only the local pod, the client's own address


def test_nodeport_local_policy_without_local_endpoint_drops():
    c = _cluster()
    # scale to one pod: one node has no local endpoint for the Local service
    c.scale("default", "api", 1)
    for (ns, name), pod in c.fabric.pods.items():
        if name.startswith("api-") and (17, 9000) not in pod.sockets:
            pod.bind(17, 9000, lambda *a: None)
    empty = next(n for n in c.state.nodes if n not in {p.node for p in c.state.pods.values()
                                                       if p.name.startswith("api-")})
    got = _ask(c, c.state.nodes[empty].ip, 30081, [52000])
    assert got == {}
    assert any(r == "SERVICE_NO_LOCAL" for _, r, _ in c.engine.drop_summary())


def test_load_balancer_ip(tmp_path):
    c = _cluster()
    lb_ip = c.state.services[("default", "api-lb")].load_balancer_ips[0]
    got = _ask(c, lb_ip, 80, range(53000, 53020))
    assert len(got) == 20 and {p.src for p in got.values()} == {lb_ip}  # answers come from the LB IP
    path = tmp_path / "lb.pcapng"
    c.engine.taps.write_pcapng(path, c.engine)
    assert problems(path) == []
    picks = {r[0] for r in fields(path, "frame.comment") if "Maglev picks" in r[0]}
    assert {p.rsplit("picks ", 1)[1].split()[0] for p in picks} == {"node-1", "node-2"}  # flows spread
    # direct server return: the answers never pass the load balancer
    assert not [r for r in fields(path, "frame.interface_name", "ip.src")
                if r[0] == "loadbalancer/eth0" and r[1] == lb_ip]
