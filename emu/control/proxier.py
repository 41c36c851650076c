"""kube-proxy installed in a node's namespace: the netfilter side of
emu.control.kubeproxy.

At PREROUTING (packets arriving) and OUTPUT (sent by the node), after
conntrack and before NAT, the first packet of every new connection is put
to the node's rules (`KubeProxy.decide`):
- DNAT: the backend becomes the connection's reply source (emu.dataplane.nat),
  so every later packet of the connection, both ways, is translated from
  conntrack alone, as in Linux; a masquerade decision sets mark 0x4000 on
  the packet, and KUBE-POSTROUTING masquerades marked packets to the
  address of the interface they leave by;
- REJECT (a Service without endpoints): ICMP port unreachable, packet dropped;
- DROP (traffic policy Local without a local endpoint): dropped.
The decision's one-line explanation goes into the capture notes.
"""
from __future__ import annotations

import numpy as np

from emu.control.kubeproxy import DNAT, DROP, MASQ_MARK, REJECT, KubeProxy
from emu.dataplane.conntrack import NEW
from emu.dataplane.nat import Nat
from emu.wire import ipv4
from kernels import parse
from kernels import conntrack as ct
from kernels.conntrack import IPS_CONFIRMED, IPS_DST_NAT
from kernels.drop import Drop

class Proxier:
    def __init__(self, kube_proxy: KubeProxy):
        self.kube_proxy = kube_proxy
        self._pending: dict[tuple, tuple[int, int]] = {}  # original tuple -> backend, for Nat

    def attach(self, netns) -> "Proxier":
        netns.hooks["PREROUTING"].append(self._prerouting)
        netns.hooks["OUTPUT"].append(self._output)
        self.nat = Nat(dnat=self._dnat, snat=self._masquerade)
        self.nat.attach(netns)
        return self

    def _prerouting(self, netns, engine, slots, times, h, ifx):
        return self._decide(netns, engine, slots, times, h, "PREROUTING")

    def _output(self, netns, engine, slots, times, h, ifx):
        return self._decide(netns, engine, slots, times, h, "OUTPUT")

    def _decide(self, netns, engine, slots, times, h, hook):
        pool = engine.pool
        verdict = np.zeros(len(slots), np.uint8)
        for k, slot in enumerate(slots.tolist()):
            if pool.ctinfo[slot] != NEW or not h.flags[k] & parse.L4 or pool.ct[slot] < 0:
                continue
            proto = int(h.ip_proto[k])
            if proto not in (6, 17, 132):
                continue
            key = (int(h.ip_src[k]), int(h.ip_dst[k]), int(h.sport[k]), int(h.dport[k]), proto)
            # the nat table sees only a connection's first packet (nf_nat_inet_fn: once the
            # binding is made, later packets follow it): a second NEW packet of the flow in
            # the same batch, or one after the binding (a retransmitted SYN), is not decided again
            if key in self._pending:
                self.nat.annotate(engine, slot, self._pending[key][2])
                continue
            if int(netns.conntrack.table.conns[int(pool.ct[slot])]["status"]) & IPS_DST_NAT:
                continue
            d = self.kube_proxy.decide(ipv4.ntoa(int(h.ip_src[k])), proto, ipv4.ntoa(int(h.ip_dst[k])),
                                       int(h.dport[k]), now_ns=int(times[k]), hook=hook,
                                       src_port=int(h.sport[k]))
            if d.action == DNAT:
                self._pending[key] = (ipv4.aton(d.backend[0]), d.backend[1], d.explain)
                pool.mark[slot] |= d.mark
                self.nat.annotate(engine, slot, d.explain)
            elif d.action == REJECT:
                netns.reject(engine, slot, int(times[k]))
                verdict[k] = Drop.SERVICE_NO_ENDPOINTS
            elif d.action == DROP:
                verdict[k] = Drop.SERVICE_NO_LOCAL
            elif d.masquerade:
                pool.mark[slot] |= d.mark
        return verdict

    def _dnat(self, netns, t):
        target = self._pending.pop((t.src, t.dst, t.sport, t.dport, t.proto), None)
        return None if target is None else target[:2]

    @staticmethod
    def _masquerade(netns, t, out_ifindex, mark):
        """KUBE-POSTROUTING: MASQUERADE what kube-proxy marked, to the egress interface's address."""
        if not mark & MASQ_MARK:
            return None
        addrs = netns.ifaces[out_ifindex].addrs
        return addrs[0][0] if addrs else None


def clean_stale_udp(kube_proxy: KubeProxy, table) -> int:
    """kube-proxy's conntrack reconcile after a sync (pkg/proxy/conntrack
    CleanStaleEntries): for every UDP Service port with serving endpoints,
    delete the UDP entries to its ClusterIP, LoadBalancer or external IP and
    port, or to its NodePort, whose reply source is not a serving endpoint
    (`conntrack -D -p udp --orig-dst VIP --dst-nat EP`). Without this, a UDP
    client that keeps sending (its entry never times out) stays pinned to an
    endpoint that is gone: the UDP blackhole. Returns the entries deleted."""
    by_vip: dict[tuple[int, int], set[int]] = {}
    by_nodeport: dict[int, set[int]] = {}
    for sp in kube_proxy.service_ports:
        if sp.proto != "udp":
            continue
        serving = {ipv4.aton(e.ip) for e in sp.endpoints if e.serving}
        if not serving:
            continue  # a Service without endpoints needs no cleanup
        for vip in (sp.cluster_ip, *sp.lb_ips, *sp.external_ips):
            if vip:
                by_vip[(ipv4.aton(vip), sp.port)] = serving
        if sp.node_port:
            by_nodeport[sp.node_port] = serving
    if not by_vip and not by_nodeport:
        return 0
    conns = table.conns
    live = np.nonzero(((conns["status"] & IPS_CONFIRMED) != 0) & (conns["proto"] == 17))[0]
    stale = []
    for c in live.tolist():
        rec = conns[c]
        dst, dport, rsrc = int(rec["orig_dst"]), int(rec["orig_dport"]), int(rec["reply_src"])
        eps = by_vip.get((dst, dport))
        if (eps is not None and rsrc not in eps) or (dport in by_nodeport and rsrc not in by_nodeport[dport]):
            stale.append(c)
    if stale:
        ct.delete(table, np.array(stale, np.int32))
    return len(stale)
