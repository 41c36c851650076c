"""One namespace at a time, driven with frames crafted by Scapy: ARP, ICMP,
bad input, VXLAN edge cases. Expected frames are Scapy expressions compared
byte for byte."""
from __future__ import annotations

import numpy as np
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from emu.dataplane.engine import Device, Engine
from emu.dataplane.netns import ARP_RETRANS_NS, ARP_PROBES, Netns
from emu.hosts.ping import Ping
from emu.wire.ethernet import mac_to_str
from kernels.drop import Drop

HOST_MAC = 0x02AABBCCDD01
PEER_MAC = "02:00:00:00:00:99"


class Wire(Device):
    """The far end of a link: records what arrives, sends what a test says."""

    def __init__(self, name="wire"):
        super().__init__(name)
        self.got: list[tuple[int, bytes]] = []

    def receive(self, engine, ports, slots, times):
        for s, t in zip(slots.tolist(), times.tolist()):
            self.got.append((t, engine.pool.frame(s)))
        engine.deliver(self, slots, times, -1, engine.note("wire"))
        return np.zeros(len(slots), np.int32)


def _host(forwarding=False):
    eng = Engine(seed=3)
    ns = eng.add(Netns("host", forwarding=forwarding))
    eth0 = ns.add_interface("eth0", HOST_MAC)
    ns.add_address("eth0", "10.0.0.1/24")
    wire = eng.add(Wire())
    wport = eng.add_port(wire, "p0")
    eng.link(eth0.port, wport)
    return eng, ns, wire, wport


def test_arp_request_for_us_gets_a_reply_byte_for_byte():
    eng, ns, wire, wport = _host()
    req = Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(op=1, hwsrc=PEER_MAC, psrc="10.0.0.9",
                                                             pdst="10.0.0.1")
    eng.send(wport, bytes(req))
    eng.run()
    me = mac_to_str(HOST_MAC)
    want = Ether(dst=PEER_MAC, src=me) / ARP(op=2, hwsrc=me, psrc="10.0.0.1", hwdst=PEER_MAC, pdst="10.0.0.9")
    assert [f for _, f in wire.got] == [bytes(want)]
    assert ns.neigh[(0, 0x0A000009)].state == "REACHABLE"  # learned from the request


def test_echo_reply_byte_for_byte():
    eng, ns, wire, wport = _host()
    ns.add_neighbour("10.0.0.9", 0x020000000099, "eth0")
    req = Ether(dst=mac_to_str(HOST_MAC), src=PEER_MAC) / IP(src="10.0.0.9", dst="10.0.0.1", id=5) \
        / ICMP(id=9, seq=3) / b"abcdefgh"
    eng.send(wport, bytes(req))
    eng.run()
    want = Ether(dst=PEER_MAC, src=mac_to_str(HOST_MAC)) / IP(src="10.0.0.1", dst="10.0.0.9", id=0) \
        / ICMP(type=0, id=9, seq=3) / b"abcdefgh"
    assert [f for _, f in wire.got] == [bytes(want)]


def test_unanswered_arp_retries_then_host_unreachable():
    eng, ns, wire, wport = _host()
    p = Ping(eng, ns, "10.0.0.50").start()
    eng.run()
    arps = [Ether(f) for _, f in wire.got]
    assert len(arps) == ARP_PROBES and all(a[ARP].pdst == "10.0.0.50" for a in arps)
    times = [t for t, _ in wire.got]
    assert np.all(np.diff(times) == ARP_RETRANS_NS)
    assert p.echoes[0].status == "host unreachable"  # icmp to ourselves, as Linux reports EHOSTUNREACH
    assert eng.drops[ns.id, Drop.NEIGH_FAILED] == 1


def test_bad_frames_are_counted_drops_and_do_not_disturb_the_batch():
    eng, ns, wire, wport = _host()
    ns.add_neighbour("10.0.0.9", 0x020000000099, "eth0")
    me = mac_to_str(HOST_MAC)
    good = Ether(dst=me, src=PEER_MAC) / IP(src="10.0.0.9", dst="10.0.0.1") / ICMP(id=1, seq=1)
    bad_csum = bytearray(bytes(good))
    bad_csum[24] ^= 0xFF
    bad_ihl = bytearray(bytes(good))
    bad_ihl[14] = 0x43
    frames = [bytes(good)[:10], bytes(bad_csum), bytes(bad_ihl),
              bytes(Ether(dst=me, src=PEER_MAC, type=0x88B5) / (b"x" * 50)), bytes(good),
              bytes(Ether(dst="02:11:11:11:11:11", src=PEER_MAC) / IP(src="10.0.0.9", dst="10.0.0.1") / ICMP()),
              bytes(good)[:30]]
    for f in frames:
        eng.send(wport, f, time_ns=0)
    eng.run()
    reasons = {r: n for d, r, n in eng.drop_summary() if d == "host"}
    assert reasons == {"TRUNC_ETH": 1, "BAD_IP_CHECKSUM": 1, "BAD_IHL": 1, "UNKNOWN_ETHERTYPE": 1,
                       "NOT_FOR_US": 1, "TRUNC_IPV4": 1}
    replies = [Ether(f) for _, f in wire.got]
    assert len(replies) == 1 and replies[0][ICMP].type == 0


def test_vxlan_for_an_unknown_vni_is_dropped():
    eng, ns, wire, wport = _host()
    ns.add_vxlan("flannel.1", 0x020000000042, vni=1, local_ip="10.0.0.1")
    me = mac_to_str(HOST_MAC)
    inner = Ether(dst="02:00:00:00:00:42", src="02:00:00:00:00:43") / IP(src="10.244.1.2", dst="10.244.0.2") / ICMP()
    for vni in (7, 1):
        outer = Ether(dst=me, src=PEER_MAC) / IP(src="10.0.0.9", dst="10.0.0.1") \
            / UDP(sport=40000, dport=8472, chksum=0) / VXLAN(vni=vni, flags=0x08) / inner
        eng.send(wport, bytes(outer))
    eng.run()
    assert eng.drops[ns.id, Drop.UNKNOWN_VNI] == 1
    assert eng.drops[ns.id, Drop.FORWARDING_OFF] == 1  # the VNI 1 one: decapsulated, not ours, no forwarding


def test_vxlan_encapsulation_byte_for_byte():
    """A frame routed into flannel.1 leaves eth0 exactly as this Scapy expression."""
    from kernels.hashing import flow_hash, udp_source_port

    eng, ns, wire, wport = _host(forwarding=True)
    vx = ns.add_vxlan("flannel.1", 0x020000000042, vni=1, local_ip="10.0.0.1")
    ns.add_address("flannel.1", "10.244.0.0/32")
    ns.add_route("10.244.1.0/24", "flannel.1", via="10.244.1.0", onlink=True)
    ns.add_neighbour("10.244.1.0", 0x020000000077, "flannel.1")
    ns.add_fdb("flannel.1", 0x020000000077, "10.0.0.2")
    ns.add_neighbour("10.0.0.2", 0x020000000088, "eth0")
    inner_ip = IP(src="10.244.0.0", dst="10.244.1.5", id=1) / UDP(sport=5353, dport=53) / b"q"
    ns.send_ip(eng, bytes(inner_ip), 0)
    eng.run()
    u32, u16 = np.uint32, np.uint16
    h = flow_hash(np.array([0x0AF40000], u32), np.array([0x0AF40105], u32), np.array([5353], u16),
                  np.array([53], u16), np.array([17], np.uint8), eng.seed)
    sport = int(udp_source_port(h, 0, 0)[0])
    want = Ether(dst="02:00:00:00:00:88", src=mac_to_str(HOST_MAC)) \
        / IP(src="10.0.0.1", dst="10.0.0.2", id=0, ttl=64, flags=0) \
        / UDP(sport=sport, dport=8472, chksum=0) / VXLAN(vni=1, flags=0x08) \
        / Ether(dst="02:00:00:00:00:77", src="02:00:00:00:00:42") / inner_ip
    assert [f for _, f in wire.got] == [bytes(want)]
    assert 32768 <= sport < 61000
