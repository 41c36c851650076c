"""End to end on the hand-built two-node Flannel network: ping across the
overlay, ICMP errors, bridge flooding and learning, MTU; every capture is read
back with tshark and Scapy."""
from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from emu.dataplane.engine import Engine
from emu.dataplane.handbuilt import two_node_flannel
from kernels.drop import Drop
from tests.tshark import fields, problems
from tests.util import ROOT


def _network(**kw):
    eng = Engine(seed=7)
    net = two_node_flannel(eng, **kw)
    eng.capture([p for p in eng.ports if not p.name.endswith("cni0-bridge")])
    return eng, net


def _ping(eng, pod, src, dst, ident=7, ttl=64, size=56, df=True, time=0):
    got = []
    pod.bind(1, ident, lambda ns, frame, l3, t: got.append((t, Ether(frame))))
    pkt = IP(src=src, dst=dst, ttl=ttl, id=1, flags="DF" if df else 0) / ICMP(id=ident, seq=1) / (b"x" * size)
    pid = pod.send_ip(eng, bytes(pkt), time, note=f"ping {dst}")
    return pid, got


def _write(eng, tmp_path, name="run.pcapng"):
    path = tmp_path / name
    eng.taps.write_pcapng(path, eng)
    return path


def test_ping_across_the_overlay(tmp_path):
    eng, net = _network()
    a = net["pods"]["pod-a"]
    pid, replies = _ping(eng, a, "10.244.0.2", "10.244.1.2")
    eng.run()
    assert len(replies) == 1
    reply = replies[0][1]
    assert reply[IP].src == "10.244.1.2" and reply[IP].ttl == 62  # two routed hops
    path = _write(eng, tmp_path)
    assert problems(path) == []
    rows = fields(path, "frame.interface_name", "eth.type", "arp.opcode", "ip.src", "ip.dst",
                  "ip.ttl", "vxlan.vni", "udp.dstport", "icmp.type")
    by_if = {}
    for r in rows:
        by_if.setdefault(r[0], []).append(r[1:])
    # ARP on both sides of the overlay (pod <-> cni0) and on the underlay
    for iface in ("pod-a/eth0", "node-2/cni0", "node-1/eth0"):
        assert any(r[1] == "1" for r in by_if[iface]) and any(r[1] == "2" for r in by_if[iface]), iface
    # on the underlay the echo travels in VXLAN, VNI 1, UDP 8472, between node IPs
    under = [r for r in by_if["underlay/port-node-1"] if r[5] == "1"]
    assert under and all(r[2].startswith("192.168.0.1") and r[6] == "8472" for r in under)
    # inner TTL: 64 from pod-a, 63 on node-1's flannel.1 and the wire, 62 at pod-b
    inner_ttls = {iface: [r[4].split(",")[-1] for r in rows if r[7] == "8"]
                  for iface, rows in by_if.items()}
    assert inner_ttls["pod-a/eth0"] == ["64"] and inner_ttls["node-1/flannel.1"] == ["63"]
    assert inner_ttls["pod-b/eth0"] == ["62"]
    # Scapy reads the same frames
    frames = rdpcap(str(path))
    assert len(frames) == len(rows)
    assert sum(1 for f in frames if f.haslayer(ICMP) and f[ICMP].type == 0) > 0
    # the trace follows the request hop by hop
    hops = eng.trace(pid)
    kinds = [h.kind for h in hops]
    assert kinds[0] == "hold" and "decap" in kinds and kinds[-1] == "deliver"
    assert any("VXLAN encap VNI 1 -> 192.168.0.12" in h.note for h in hops)
    assert eng.drop_summary() == []


def test_ttl_exceeded_and_unreachables(tmp_path):
    eng, net = _network()
    a = net["pods"]["pod-a"]
    errors = []
    # ICMP errors reach pod-a's stack; catch them with a raw hook on INPUT
    a.hooks["INPUT"].append(lambda ns, e, slots, times, h, ifx: errors.extend(
        (int(h.icmp_type[i]), int(h.icmp_code[i]), int(h.ip_src[i])) for i in range(len(slots))
        if h.icmp_type[i] in (3, 11) and h.ip_proto[i] == 1) or None)
    _ping(eng, a, "10.244.0.2", "10.244.1.2", ttl=1, ident=1)
    _ping(eng, a, "10.244.0.2", "10.250.0.9", ident=2, time=1_000_000)
    a.send_ip(eng, bytes(IP(src="10.244.0.2", dst="10.244.1.2") / UDP(sport=40000, dport=9) / b"hi"),
              2_000_000, note="udp to a closed port")
    eng.run()
    assert (11, 0, 0x0AF40001) in errors   # time exceeded from node-1's cni0 address
    assert (3, 0, 0x0AF40001) in errors    # net unreachable: node-1 has no route to 10.250/16
    assert (3, 3, 0x0AF40102) in errors    # port unreachable from pod-b itself
    drops = {(d, r) for d, r, _ in eng.drop_summary()}
    assert {("node-1", "TTL_EXCEEDED"), ("node-1", "NO_ROUTE"), ("pod-b", "PORT_UNREACHABLE")} <= drops
    path = _write(eng, tmp_path)
    assert problems(path) == []
    # (fields list the outer ICMP header first, then the quoted packet's)
    icmp = fields(path, "frame.interface_name", "icmp.type", "icmp.code", display_filter="icmp.type == 3 || icmp.type == 11")
    seen = {(r[0], r[1].split(",")[0], r[2].split(",")[0]) for r in icmp}
    assert {("pod-a/eth0", "11", "0"), ("pod-a/eth0", "3", "0"), ("pod-a/eth0", "3", "3")} <= seen


def test_overlay_mtu_mistake_gives_frag_needed(tmp_path):
    """Pods told MTU 1500 over a 1450 VXLAN: a full-size DF packet dies at flannel.1."""
    eng, net = _network(pod_mtu=1500, vxlan_mtu=1450)
    a = net["pods"]["pod-a"]
    seen = []
    a.hooks["INPUT"].append(lambda ns, e, slots, times, h, ifx: seen.extend(
        zip(h.icmp_type.tolist(), h.icmp_code.tolist())) or None)
    _ping(eng, a, "10.244.0.2", "10.244.1.2", size=1472)  # 1500-byte IP packet, DF
    eng.run()
    assert (3, 4) in seen
    assert eng.drops[net["nodes"]["node-1"].ns.id, Drop.FRAG_NEEDED] == 1
    path = _write(eng, tmp_path)
    rows = fields(path, "frame.interface_name", "icmp.type", "icmp.code", "icmp.mtu",
                  display_filter="icmp.type == 3")
    assert ("pod-a/eth0", "3", "4", "1450") in {(r[0], r[1].split(",")[0], r[2].split(",")[0], r[3]) for r in rows}
    assert problems(path) == []


def test_small_packets_cross_and_df_clear_is_fragmented(tmp_path):
    eng, net = _network(pod_mtu=1500, vxlan_mtu=1450)
    a = net["pods"]["pod-a"]
    pid, replies = _ping(eng, a, "10.244.0.2", "10.244.1.2", size=1472, df=False)
    eng.run()
    path = _write(eng, tmp_path)
    frags = fields(path, "frame.interface_name", "ip.flags.mf", display_filter="ip.flags.mf == 1")
    assert any(r[0] == "node-1/flannel.1" for r in frags)
    # pod-b reassembles, answers with the whole 1472 bytes (fragmented again), pod-a reassembles
    assert len(replies) == 1 and len(bytes(replies[0][1][ICMP].payload)) == 1472
    assert problems(path) == []


def test_bridge_floods_unknown_then_learns(tmp_path):
    eng, net = _network()
    node1 = net["nodes"]["node-1"]
    from emu.control.flannel import add_pod, veth_name

    c = add_pod(eng, node1, "pod-c", "10.244.0.3")
    eng.capture([p for p in eng.ports if not p.name.endswith("cni0-bridge")])
    a = net["pods"]["pod-a"]
    pid, replies = _ping(eng, a, "10.244.0.2", "10.244.0.3")
    eng.run()
    assert len(replies) == 1
    path = _write(eng, tmp_path)
    # pod-a's ARP broadcast floods to pod-c's port; after learning, the echo is forwarded, not flooded
    notes = fields(path, "frame.interface_name", "frame.comment", "icmp.type")
    veth_a, veth_c = veth_name(eng.seed, "pod-a"), veth_name(eng.seed, "pod-c")
    assert any(r[0] == f"node-1/{veth_c}" and "flood" in r[1] for r in notes)
    echo = [r for r in notes if r[2] == "8" and r[0] == f"node-1/{veth_c}"]
    assert echo and all(f"forward {veth_a} -> {veth_c} (learned)" in r[1] for r in echo)
    assert not any(r[0] == "node-1/cni0" and r[2] == "8" for r in notes)  # bridged, not routed


def test_same_seed_same_bytes_across_processes(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tests.test_overlay import _network, _ping\n"
        "eng, net = _network()\n"
        "_ping(eng, net['pods']['pod-a'], '10.244.0.2', '10.244.1.2')\n"
        "eng.run()\n"
        "eng.taps.write_pcapng(sys.argv[1], eng)\n"
    )
    outs = []
    for i in range(2):
        p = tmp_path / f"run{i}.pcapng"
        subprocess.run([sys.executable, "-c", code, str(p)], check=True, cwd=ROOT)
        outs.append(p.read_bytes())
    assert outs[0] == outs[1] and len(outs[0]) > 1000


def test_classic_pcap_per_interface(tmp_path):
    eng, net = _network()
    _ping(eng, net["pods"]["pod-a"], "10.244.0.2", "10.244.1.2")
    eng.run()
    paths = eng.taps.write_pcaps(tmp_path / "pcaps")
    names = {p.name for p in paths}
    assert {"pod-a_eth0.pcap", "node-1_flannel.1.pcap", "underlay_port-node-1.pcap"} <= names
    flannel = rdpcap(str(tmp_path / "pcaps" / "node-1_flannel.1.pcap"))
    assert [f[ICMP].type for f in flannel if f.haslayer(ICMP)] == [8, 0]
    assert problems(tmp_path / "pcaps" / "underlay_port-node-1.pcap") == []


def test_conntrack_states_on_the_nodes(tmp_path):
    from emu.dataplane import conntrack as ctm
    from emu.hosts.ping import Ping

    eng, net = _network()
    a = net["pods"]["pod-a"]
    Ping(eng, a, "10.244.1.2", count=2).start()
    Ping(eng, a, "10.244.1.2", ttl=1, start_ns=5_000_000_000).start()
    eng.run()
    path = _write(eng, tmp_path)
    rows = fields(path, "frame.interface_name", "icmp.type", "frame.comment",
                  display_filter='frame.interface_name == "node-1/cni0" && icmp')
    states = [(r[1].split(",")[0], r[2].rsplit("[ct ", 1)[-1].rstrip("]")) for r in rows]
    # first request NEW, its reply and everything after ESTABLISHED; the TTL-1 probe is a new
    # flow (NEW) and node-1's time exceeded about it is RELATED
    assert states[:4] == [("8", "NEW"), ("0", "ESTABLISHED"), ("8", "ESTABLISHED"), ("0", "ESTABLISHED")]
    assert ("8", "NEW") in states[4:] and ("11", "RELATED") in states[4:]
    node1 = net["nodes"]["node-1"].ns
    echo = [e for e in node1.conntrack.entries() if e["proto"] == 1 and e["orig_sport"] == 0x1000]
    assert len(echo) == 1 and echo[0]["status"] & 0x2  # IPS_SEEN_REPLY


def test_tcp_tracker_transitions():
    from emu.dataplane.conntrack import (ACK, CLOSE, CLOSE_WAIT, FIN, FIN_WAIT, LAST_ACK, NONE, RST, SYN,
                                         SYN_RECV, SYN_SENT, TCP_ESTABLISHED, TIME_WAIT, tcp_next)
    from kernels.conntrack import ORIGINAL, REPLY

    s = tcp_next(NONE, SYN, ORIGINAL)
    assert s == SYN_SENT
    s = tcp_next(s, SYN | ACK, REPLY)
    assert s == SYN_RECV
    s = tcp_next(s, ACK, ORIGINAL)
    assert s == TCP_ESTABLISHED
    s = tcp_next(s, FIN | ACK, ORIGINAL)
    assert s & 0x7F == FIN_WAIT
    s = tcp_next(s, ACK, REPLY)
    assert s & 0x7F == CLOSE_WAIT
    s = tcp_next(s, FIN | ACK, REPLY)
    assert s & 0x7F == LAST_ACK
    s = tcp_next(s, ACK, ORIGINAL)
    assert s & 0x7F == TIME_WAIT
    assert tcp_next(TCP_ESTABLISHED, RST, REPLY) == CLOSE
    assert tcp_next(NONE, SYN | ACK, REPLY) == -1 and tcp_next(NONE, FIN, ORIGINAL) == -1
    assert tcp_next(NONE, ACK, ORIGINAL) == TCP_ESTABLISHED  # loose pickup


def test_trace_a_flow_both_ways():
    from emu.hosts.ping import Ping

    eng, net = _network()
    p = Ping(eng, net["pods"]["pod-a"], "10.244.1.2", count=2).start()
    Ping(eng, net["pods"]["pod-a"], "10.244.1.0").start()  # another flow, not in the trace
    eng.run()
    flows = eng.trace_flow("10.244.0.2", "10.244.1.2", 1, sport=p.ident)
    requests = {e.pkt_id for e in p.echoes}
    assert requests < set(flows) and len(flows) == 4  # two requests, two replies
    for hops in flows.values():
        assert hops[-1].kind == "deliver" and any(h.kind == "decap" for h in hops)
    one_way = eng.trace_flow("10.244.0.2", "10.244.1.2", 1, sport=p.ident, both_ways=False)
    assert set(one_way) == requests
