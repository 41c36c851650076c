"""NAT over conntrack on the hand-built network: DNAT of a virtual IP to a pod
on the other node, masquerade, and the reverse translation of replies."""
from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from emu.dataplane.engine import Engine
from emu.dataplane.handbuilt import two_node_flannel
from emu.dataplane.nat import Nat
from emu.wire.ipv4 import aton
from kernels import conntrack as ct
from tests.tshark import problems

VIP, PORT = "10.96.0.100", 80


def _echo_server(pod, port):
    """A UDP echo on `port`: answers to whoever asked, from where it was asked."""
    seen = []

    def handler(ns, frame, l3, t):
        ip = IP(frame[l3:])
        seen.append((ip.src, ip[UDP].sport, ip.dst, ip[UDP].dport))
        reply = IP(src=ip.dst, dst=ip.src) / UDP(sport=ip[UDP].dport, dport=ip[UDP].sport) / bytes(ip[UDP].payload)
        ns.send_ip(ns.engine, bytes(reply), t, note="udp echo")
    pod.bind(17, port, handler)
    return seen


def _client(pod, sport):
    got = []
    pod.bind(17, sport, lambda ns, frame, l3, t: got.append(IP(frame[l3:])))
    return got


def _setup(snat=None):
    eng = Engine(seed=11)
    net = two_node_flannel(eng)
    eng.capture([p for p in eng.ports if not p.name.endswith("cni0-bridge")])
    node1 = net["nodes"]["node-1"].ns
    Nat(dnat=lambda ns, t: (aton("10.244.1.2"), 8080) if t.dst == aton(VIP) and t.dport == PORT else None,
        snat=snat).attach(node1)
    return eng, net, node1


def test_dnat_to_a_pod_on_the_other_node_and_back(tmp_path):
    eng, net, node1 = _setup()
    a, b = net["pods"]["pod-a"], net["pods"]["pod-b"]
    seen = _echo_server(b, 8080)
    got = _client(a, 40000)
    for i in range(2):
        a.send_ip(eng, bytes(IP(src="10.244.0.2", dst=VIP) / UDP(sport=40000, dport=PORT) / b"ping"),
                  i * 1_000_000, note="udp to the VIP")
    eng.run()
    # the backend sees the client's own address (no masquerade), on its real port
    assert seen == [("10.244.0.2", 40000, "10.244.1.2", 8080)] * 2
    # the client sees the answers come from the VIP
    assert [(p.src, p[UDP].sport, bytes(p[UDP].payload)) for p in got] == [(VIP, PORT, b"ping")] * 2
    conns = [e for e in node1.conntrack.entries() if e["proto"] == 17 and e["orig_dst"] == aton(VIP)]
    assert len(conns) == 1
    c = conns[0]
    assert c["reply_src"] == aton("10.244.1.2") and c["reply_sport"] == 8080
    assert c["status"] & ct.IPS_DST_NAT and c["status"] & ct.IPS_SEEN_REPLY
    path = tmp_path / "nat.pcapng"
    eng.taps.write_pcapng(path, eng)
    assert problems(path) == []  # every rewritten checksum verifies


def test_masquerade_and_reverse(tmp_path):
    flannel_ip = aton("10.244.0.0")
    eng, net, node1 = _setup(snat=lambda ns, t, out_if, mark: flannel_ip
                             if ns.ifaces[out_if].name == "flannel.1" else None)
    a, b = net["pods"]["pod-a"], net["pods"]["pod-b"]
    seen = _echo_server(b, 8080)
    got = _client(a, 40000)
    a.send_ip(eng, bytes(IP(src="10.244.0.2", dst=VIP) / UDP(sport=40000, dport=PORT) / b"hi"), 0)
    eng.run()
    (src, sport, dst, dport), = seen
    assert (src, dst, dport) == ("10.244.0.0", "10.244.1.2", 8080) and 1024 <= sport < 65536
    assert [(p.src, p[UDP].sport, p.dst, p[UDP].dport) for p in got] == [(VIP, PORT, "10.244.0.2", 40000)]
    c, = [e for e in node1.conntrack.entries() if e["proto"] == 17 and e["orig_dst"] == aton(VIP)]
    assert c["status"] & ct.IPS_SRC_NAT and c["status"] & ct.IPS_DST_NAT
    path = tmp_path / "masq.pcapng"
    eng.taps.write_pcapng(path, eng)
    assert problems(path) == []


def test_nat_decisions_are_in_the_capture_notes(tmp_path):
    from tests.tshark import fields

    eng, net, node1 = _setup()
    a, b = net["pods"]["pod-a"], net["pods"]["pod-b"]
    _echo_server(b, 8080)
    _client(a, 40000)
    a.send_ip(eng, bytes(IP(src="10.244.0.2", dst=VIP) / UDP(sport=40000, dport=PORT) / b"x"), 0)
    eng.run()
    path = tmp_path / "notes.pcapng"
    eng.taps.write_pcapng(path, eng)
    notes = [r[1] for r in fields(path, "frame.interface_name", "frame.comment")
             if r[0] in ("node-1/cni0", "node-1/flannel.1")]
    assert any(n.endswith("; DNAT 10.96.0.100:80 -> 10.244.1.2:8080") for n in notes)
