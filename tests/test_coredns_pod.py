"""A CoreDNS pod answering real DNS queries over the overlay."""
from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP

from emu.control import dns
from emu.dataplane.engine import Engine
from emu.dataplane.handbuilt import two_node_flannel
from emu.hosts.coredns import CoreDNS
from tests.tshark import fields, problems


def test_queries_answered_from_the_zone(tmp_path):
    eng = Engine(seed=2)
    net = two_node_flannel(eng)
    eng.capture([p for p in eng.ports if not p.name.endswith("cni0-bridge")])
    zone = dns.Zone([dns.ServiceRecord("default", "web", cluster_ip="10.96.12.34",
                                       ports=(dns.PortRecord(80, "http"),))])
    server = CoreDNS(zone).serve(net["pods"]["pod-b"])
    a = net["pods"]["pod-a"]
    answers = []
    a.bind(17, 33333, lambda ns, frame, l3, t: answers.append(DNS(bytes(IP(frame[l3:])[UDP].payload))))
    for i, (name, qtype) in enumerate([("web.default.svc.cluster.local", "A"),
                                       ("nope.default.svc.cluster.local", "A"),
                                       ("example.com", "A")]):
        q = IP(src="10.244.0.2", dst="10.244.1.2") / UDP(sport=33333, dport=53) \
            / DNS(id=100 + i, rd=1, qd=DNSQR(qname=name, qtype=qtype))
        a.send_ip(eng, bytes(q), i * 1_000_000, note=f"dig {name}")
    eng.run()
    assert server.queries == 3
    by_id = {d.id: d for d in answers}
    assert by_id[100].rcode == 0 and by_id[100].aa == 1 and by_id[100].an[0].rdata == "10.96.12.34"
    assert by_id[100].an[0].ttl == 30
    assert by_id[101].rcode == 3 and by_id[101].ns[0].type == 6  # NXDOMAIN with the SOA
    assert by_id[102].rcode == 2  # SERVFAIL: no upstream resolver
    path = tmp_path / "dns.pcapng"
    eng.taps.write_pcapng(path, eng)
    assert problems(path) == []
    rows = fields(path, "dns.qry.name", "dns.a", "dns.flags.rcode",
                  display_filter='frame.interface_name == "pod-a/eth0" && dns.flags.response == 1')
    assert ["web.default.svc.cluster.local", "10.96.12.34", "0"] in rows
