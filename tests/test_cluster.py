"""A cluster from manifests: controllers, Flannel, kube-proxy and CoreDNS
together, packets crossing it (UDP apps; TCP comes with the socket layer)."""
from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP, IPerror

from emu.cluster import Cluster
from emu.model import load
from tests.tshark import fields, problems
from tests.util import ROOT

MANIFESTS = str(ROOT / "examples" / "cluster" / "app.yaml")


def _udp_echo(netns, port):
    def handler(ns, frame, l3, t):
        ip = IP(frame[l3:])
        ns.send_ip(ns.engine, bytes(IP(src=ip.dst, dst=ip.src) / UDP(sport=ip[UDP].dport, dport=ip[UDP].sport)
                                    / ns.name.encode()), t, note="udp echo")
    netns.bind(17, port, handler)


def _cluster():
    c = Cluster(load([MANIFESTS]), seed=1)
    for (ns, name), pod in c.fabric.pods.items():
        if name.startswith("web-"):
            _udp_echo(pod, 8080)
    return c


def test_service_dns_and_no_endpoints_through_the_cluster(tmp_path):
    c = _cluster()
    st, eng = c.state, c.engine
    client_ip = st.pods[("default", "client")].ip
    client = c.pod("default", "client")
    web_vip = st.services[("default", "web")].cluster_ip
    empty_vip = st.services[("default", "empty")].cluster_ip
    got = []
    for port in range(40000, 40008):
        client.bind(17, port, lambda ns, f, l3, t: got.append(IP(f[l3:])))
    # eight connections (source ports) to the Service, a DNS query, one to a Service without endpoints
    for i in range(8):
        client.send_ip(eng, bytes(IP(src=client_ip, dst=web_vip) / UDP(sport=40000 + i, dport=80) / b"hi"),
                       i * 1_000_000)
    client.send_ip(eng, bytes(IP(src=client_ip, dst="10.96.0.10") / UDP(sport=40000, dport=53)
                              / DNS(id=5, rd=1, qd=DNSQR(qname="web.default.svc.cluster.local"))), 9_000_000)
    client.send_ip(eng, bytes(IP(src=client_ip, dst=empty_vip) / UDP(sport=40001, dport=80) / b"x"), 10_000_000)
    eng.run()
    echoes = [p for p in got if p.haslayer(UDP) and p[UDP].sport == 80]
    # every answer comes back from the Service address (reverse NAT), from both backends
    assert len(echoes) == 8 and {p.src for p in echoes} == {web_vip}
    backends = {bytes(p[UDP].payload).decode() for p in echoes}
    assert len(backends) == 2 and all(b.startswith("web-") for b in backends)
    dns = [DNS(bytes(p[UDP].payload)) for p in got if p.haslayer(UDP) and p[UDP].sport == 53]
    assert len(dns) == 1 and dns[0].an[0].rdata == web_vip and {p.src for p in got if p.haslayer(DNS)} == {"10.96.0.10"}
    unreachable = [p for p in got if p.haslayer(ICMP) and p[ICMP].type == 3 and p[ICMP].code == 3]
    assert len(unreachable) == 1 and unreachable[0][IPerror].dst == empty_vip
    assert ("node-1", "SERVICE_NO_ENDPOINTS", 1) in eng.drop_summary()
    path = tmp_path / "cluster.pcapng"
    eng.taps.write_pcapng(path, eng)
    assert problems(path) == []
    notes = [r[0] for r in fields(path, "frame.comment")]
    assert any("DNAT" in n and "KUBE-SEP-" in n for n in notes)


def test_same_seed_same_capture(tmp_path):
    outs = []
    for i in range(2):
        c = _cluster()
        st = c.state
        ip = st.pods[("default", "client")].ip
        c.pod("default", "client").send_ip(
            c.engine, bytes(IP(src=ip, dst=st.services[("default", "web")].cluster_ip) / UDP(sport=40000, dport=80)))
        c.engine.run()
        c.engine.taps.write_pcapng(tmp_path / f"{i}.pcapng", c.engine)
        outs.append((tmp_path / f"{i}.pcapng").read_bytes())
    assert outs[0] == outs[1]


def test_scaling_keeps_existing_flows_on_their_backend():
    c = _cluster()
    st, eng = c.state, c.engine
    client_ip = st.pods[("default", "client")].ip
    client = c.pod("default", "client")
    vip = st.services[("default", "web")].cluster_ip
    got = []
    for port in range(41000, 41020):
        client.bind(17, port, lambda ns, f, l3, t: got.append((IP(f[l3:])[UDP].dport, bytes(IP(f[l3:])[UDP].payload))))

    def send(sport, t):
        client.send_ip(eng, bytes(IP(src=client_ip, dst=vip) / UDP(sport=sport, dport=80) / b"x"), t)
    send(41000, 0)
    eng.run()
    first = dict(got)[41000]
    c.scale("default", "web", 6)
    for (ns, name), pod in c.fabric.pods.items():
        if name.startswith("web-") and (17, 8080) not in pod.sockets:
            _udp_echo(pod, 8080)
    send(41000, eng.now + 1_000_000)          # the same flow: conntrack keeps its backend
    for i in range(1, 20):
        send(41000 + i, eng.now + 2_000_000 + i)  # new flows spread over six backends
    eng.run()
    same_flow = [b for port, b in got if port == 41000]
    assert same_flow == [first, first]
    assert len({b for port, b in got if port != 41000}) > 2
    assert len([p for p in st.pods if p[1].startswith("web-")]) == 6


def test_deleted_backend_stops_answering_and_leaves_the_rules():
    c = _cluster()
    st, eng = c.state, c.engine
    web = sorted(k for k in st.pods if k[1].startswith("web-"))
    c.delete_pod(*web[0])
    assert web[0] not in c.fabric.pods
    for (ns, name), pod in c.fabric.pods.items():
        if name.startswith("web-") and (17, 8080) not in pod.sockets:
            _udp_echo(pod, 8080)
    client_ip = st.pods[("default", "client")].ip
    client = c.pod("default", "client")
    got = []
    for port in range(42000, 42010):
        client.bind(17, port, lambda ns, f, l3, t: got.append(bytes(IP(f[l3:])[UDP].payload).decode()))
        client.send_ip(eng, bytes(IP(src=client_ip, dst=st.services[("default", "web")].cluster_ip)
                                  / UDP(sport=port, dport=80)), port)
    eng.run()
    assert len(got) == 10 and web[0][1] not in got  # the replacement and the other pod answer
