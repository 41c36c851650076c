"""A cloud network load balancer in front of the nodes: passthrough with
direct server return, as Google's Maglev and the GCP/AWS passthrough network
load balancers work. It owns the LoadBalancer IPs on the underlay (answers
ARP for them), picks a node for each flow with Maglev consistent hashing
(kernels.maglev) over the 5-tuple, and forwards the packet unchanged but for
the MACs and TTL. The node's kube-proxy then matches the LoadBalancer IP
(KUBE-EXT), and the node's answers go straight back to the client.

Which nodes: the ready nodes, or for externalTrafficPolicy Local only those
with a ready local endpoint (what the cloud learns from kube-proxy's
healthCheckNodePort; the health checks themselves are not sent).
"""
from __future__ import annotations

import numpy as np

from emu.dataplane.engine import Device, Engine
from emu.wire import craft, ethernet, ipv4
from kernels import hashing, maglev, parse, rewrite
from kernels.drop import Drop

MAGLEV_TABLE_SIZE = 65537  # Maglev's default M (NSDI 2016)


class LoadBalancer(Device):
    kind = "loadbalancer"

    def __init__(self, name: str = "loadbalancer", mac: int = 0):
        super().__init__(name)
        self.mac = mac
        self.vips: dict[int, tuple[list[tuple[str, int]], np.ndarray]] = {}  # VIP -> (nodes, table)

    def attach(self, engine: Engine):
        self.port = engine.add_port(self, "eth0", mac=self.mac)
        return self.port

    def set_backends(self, vip: str, nodes: list[tuple[str, int]]) -> None:
        """Nodes (name, eth0 MAC) that take the flows of `vip`; Maglev keeps
        most flows on their node when the list changes."""
        keys = np.array([hashing.mix64(np.uint64(int.from_bytes(n.encode()[:8].ljust(8, b"\0"), "big")
                                                 ^ len(n))) for n, _ in nodes], np.uint64)
        table = maglev.build(keys, MAGLEV_TABLE_SIZE) if nodes else np.full(MAGLEV_TABLE_SIZE, -1, np.int32)
        self.vips[ipv4.aton(vip)] = (list(nodes), table)

    def receive(self, engine, ports, slots, times) -> np.ndarray:
        pool = engine.pool
        h = parse.parse(pool.buf, pool.start[slots], pool.length[slots], ())
        notes = np.zeros(len(slots), np.int32)
        for k, slot in enumerate(slots.tolist()):
            one, t = slots[k:k + 1], times[k:k + 1]
            dst = int(h.ip_dst[k])
            if h.drop[k]:
                notes[k] = engine.drop_notes(h.drop[k:k + 1])[0]
                engine.drop(self, one, h.drop[k:k + 1], t, self.port.id)
            elif h.flags[k] & parse.ARP and int(h.arp_op[k]) == 1 and dst in self.vips:
                notes[k] = self._arp_reply(engine, h, k, int(t[0]))
                engine.deliver(self, one, t, self.port.id, notes[k])
            elif h.flags[k] & parse.ARP:
                notes[k] = engine.note("ARP ignored (not a load-balanced address)")
                engine.deliver(self, one, t, self.port.id, notes[k])
            elif h.flags[k] & parse.IPV4 and dst in self.vips and int(h.eth_dst[k]) == self.mac:
                notes[k] = self._forward(engine, slot, h, k, int(t[0]))
            else:
                notes[k] = engine.note("drop: NOT_FOR_US (not a load-balanced address)")
                engine.drop(self, one, Drop.NOT_FOR_US, t, self.port.id)
        return notes

    def _arp_reply(self, engine, h, k, time) -> int:
        vip, asker = int(h.ip_dst[k]), int(h.arp_sha[k])
        reply = craft.arp(2, self.mac, vip, asker, int(h.ip_src[k]), eth_dst=asker)
        engine.send(self.port, reply, time,
                    note=f"ARP reply {ipv4.ntoa(vip)} is-at {ethernet.mac_to_str(self.mac)} (load balancer)")
        vip = ipv4.ntoa(vip)
        return engine.note(f"ARP who-has {vip}: the load balancer's")

    def _forward(self, engine, slot, h, k, time) -> int:
        pool = engine.pool
        one, t = np.array([slot], np.int32), np.array([time], np.int64)
        nodes, table = self.vips[int(h.ip_dst[k])]
        dport = 0 if int(h.ip_proto[k]) == ipv4.PROTO_ICMP else int(h.dport[k])
        flow = hashing.flow_hash(h.ip_src[k:k + 1], h.ip_dst[k:k + 1], h.sport[k:k + 1],
                                 np.array([dport], np.uint16), h.ip_proto[k:k + 1], 0)
        pick = int(maglev.lookup(table, flow)[0])
        if pick < 0:
            engine.drop(self, one, Drop.SERVICE_NO_ENDPOINTS, t, self.port.id)
            return engine.note("drop: no healthy node behind the load balancer")
        if int(h.ttl[k]) <= 1:
            engine.drop(self, one, Drop.TTL_EXCEEDED, t, self.port.id)
            return engine.note("drop: TTL_EXCEEDED")
        name, mac = nodes[pick]
        start = pool.start[one]
        rewrite.decrement_ttl(pool.buf, start + h.l3_off[k:k + 1].astype(np.int64))
        rewrite.set_macs(pool.buf, start, np.array([mac], np.uint64), np.array([self.mac], np.uint64))
        note = engine.note(f"load balancer: Maglev picks {name} for {ipv4.ntoa(int(h.ip_dst[k]))}")
        engine.transmit(np.array([self.port.id], np.int32), one, t, note)
        return note
