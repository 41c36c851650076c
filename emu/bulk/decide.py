"""kube-proxy's decision for many first packets at once, equal to calling
`KubeProxy.decide` once per packet in the same order.

What the decision depends on is the packet's (source, protocol, destination,
destination port, hook), and for iptables' random pick its source port and
time (`random_picks`, a keyed hash: no state). So per distinct key the first
packet is decided by `KubeProxy.decide` itself and the outcome classified:

- no DNAT (NONE, REJECT, DROP): no state touched, the decision is reused;
- iptables DNAT without session affinity: the endpoint list and masquerade
  flag are kept; every packet's endpoint is then its `random_picks`, all
  at once, in any order;
- anything else (IPVS schedulers, ClientIP affinity): `decide` per packet,
  in order (their state: the scheduler's, the affinity lists).

The cache is dropped whenever the proxy resyncs (a new service_ports list).
"""
from __future__ import annotations

import numpy as np

from emu.control.kubeproxy import DNAT, DROP, NONE, REJECT, random_picks
from emu.wire import ipv4
from kernels import distinct
from kernels.netns_fast import A_DNAT, A_DROP, A_NONE, A_REJECT  # one numbering, the fused kernels' too

_CODE = {NONE: A_NONE, DNAT: A_DNAT, REJECT: A_REJECT, DROP: A_DROP}


class Decider:
    def __init__(self, kube_proxy):
        self.kp = kube_proxy
        self._ref = None
        self._cache: dict[tuple, tuple] = {}

    def _fresh(self) -> None:
        if self._ref is not self.kp.service_ports:
            self._ref = self.kp.service_ports
            self._cache = {}

    def static_none(self, src, proto, dst, dport, hook: str) -> bool:
        """Whether the decision for every packet (arrays) is no action without
        masquerade, known already or learned now where deciding touches no
        state (`KubeProxy.no_service`): then deciding them has no effect."""
        self._fresh()
        if not len(src):
            return True
        for ka, kc in _keys(src, proto, dst, dport)[0].tolist():
            key = _key(ka, kc, hook)
            info = self._cache.get(key)
            if info is None and self.kp.no_service(ipv4.ntoa(key[2]), key[1], key[3], hook):
                d = self.kp.decide(ipv4.ntoa(key[0]), key[1], ipv4.ntoa(key[2]), key[3], hook=hook)
                info = self._cache[key] = self._classify(d, ipv4.ntoa(key[0]))
            if info is None or info[0] != "static" or info[1].action != NONE or info[1].masquerade:
                return False
        return True

    def stateless(self, src, proto, dst, dport, hook: str) -> bool:
        """Whether deciding for these packets (arrays) touches no state and
        needs no order: each key found static or random (not IPVS, not
        affinity): they may then be decided ahead, in any order. A key not
        decided before is, when no decision of this proxy touches state
        (iptables mode, no ClientIP affinity anywhere: its only state)."""
        self._fresh()
        kp = self.kp
        free = kp.mode == "iptables" and not any(sp.affinity_s for sp in kp.service_ports)
        for ka, kc in _keys(src, proto, dst, dport)[0].tolist():
            key = _key(ka, kc, hook)
            info = self._cache.get(key)
            if info is None and free:
                s = ipv4.ntoa(key[0])
                info = self._cache[key] = self._classify(kp.decide(s, key[1], ipv4.ntoa(key[2]), key[3], hook=hook), s)
            if info is None or info[0] == "python":
                return False
        return True

    def _classify(self, d, src: str):
        """("static", decision) | ("random", eps, base_masq, explain parts) | ("python",)."""
        if d.action != DNAT:
            return ("static", d)
        kp = self.kp
        sp = None
        if kp.mode == "iptables" and d.service:
            for cand in kp.service_ports:
                if cand.name == d.service and (cand.svc_chain in d.chains or cand.svl_chain in d.chains):
                    sp = cand
                    break
        if sp is None or sp.affinity_s:
            return ("python",)
        eps = sp.local_eps if sp.svl_chain in d.chains else sp.cluster_eps
        sep = next((c for c in d.chains if c.startswith("KUBE-SEP-")), None)
        if sep is None or not eps:
            return ("python",)
        base_masq = "KUBE-MARK-MASQ" in d.chains[:d.chains.index(sep)]
        # explain: "DNAT {dst}:{dport} -> {ip}:{port} via {chain} [{what}]" (+ "; masquerade")
        what = d.explain[d.explain.index(" [") + 2:].split("]")[0]
        return ("random", eps, base_masq, what)

    def decide(self, src, proto, dst, dport, sport, times, hook: str, want_explain=None):
        """Arrays in; per packet (action code, backend ip uint32, backend port
        uint16, masquerade bool) and {packet: explain text} for the packets
        where want_explain (those a kube-proxy decision without DNAT left
        alone may be missing: their text is never shown)."""
        self._fresh()
        n = len(src)
        action = np.zeros(n, np.uint8)
        bip = np.zeros(n, np.uint32)
        bport = np.zeros(n, np.uint16)
        masq = np.zeros(n, bool)
        explain: dict[int, str] = {}
        if n == 0:
            return action, bip, bport, masq, explain
        kp = self.kp
        # decisions without side effects (no DNAT) already known: all at once
        u, inv = _keys(src, proto, dst, dport)
        infos = [self._cache.get(_key(a, c, hook)) for a, c in u.tolist()]
        # per key: its endpoint count if its packets draw one ("random"), else -1
        n_eps = np.array([_n_random(info) for info in infos], np.int64)
        todo = np.ones(n, bool)
        static = [j for j, info in enumerate(infos) if info is not None and info[0] == "static"]
        if static:   # per key, then gathered for the packets
            k = len(infos)
            is_static, act_k, masq_k = np.zeros(k, bool), np.zeros(k, np.uint8), np.zeros(k, bool)
            bip_k, bport_k = np.zeros(k, np.uint32), np.zeros(k, np.uint16)
            for j in static:
                d = infos[j][1]
                is_static[j], act_k[j], masq_k[j] = True, _CODE[d.action], d.masquerade
                if d.backend is not None:
                    bip_k[j], bport_k[j] = ipv4.aton(d.backend[0]), d.backend[1]
                if want_explain is not None and d.action == DNAT:
                    for i in np.nonzero((inv == j) & want_explain)[0].tolist():
                        explain[i] = d.explain
            sel = np.nonzero(is_static[inv])[0]
            keys = inv[sel]
            action[sel], masq[sel], bip[sel], bport[sel] = act_k[keys], masq_k[keys], bip_k[keys], bport_k[keys]
            todo[sel] = False
        rest = np.nonzero(todo)[0]
        args = (inv, infos, src, proto, dst, dport, sport, times, action, bip, bport, masq, explain, want_explain)
        if len(rest) and (n_eps[inv[rest]] >= 0).all():   # every key known as "random": all at once
            self._draw(rest, *args)
            return action, bip, bport, masq, explain
        pos = 0
        while pos < len(rest):
            i = int(rest[pos])
            j = int(inv[i])
            info = infos[j]
            if info is None or info[0] == "python":
                a, c = u[j].tolist()
                s = ipv4.ntoa(a >> 32)
                d = kp.decide(s, c >> 16, ipv4.ntoa(a & 0xFFFFFFFF), c & 0xFFFF, now_ns=int(times[i]), hook=hook,
                              src_port=int(sport[i]))
                fill = info is None
                if fill:
                    info = infos[j] = self._cache[_key(a, c, hook)] = self._classify(d, s)
                    n_eps[j] = _n_random(info)
                self._apply(i, d, action, bip, bport, masq, explain, want_explain)
                pos += 1
                if fill and info[0] == "static":  # the later packets with this key: all at once
                    later = rest[pos:]
                    same = later[inv[later] == j]
                    if len(same):
                        action[same], masq[same] = _CODE[d.action], d.masquerade
                        if d.backend is not None:
                            bip[same], bport[same] = ipv4.aton(d.backend[0]), d.backend[1]
                        if want_explain is not None and d.action == DNAT:
                            for k in same[want_explain[same]].tolist():
                                explain[k] = d.explain
                        rest = np.concatenate([rest[:pos], later[inv[later] != j]])
                continue
            if info[0] == "static":
                self._apply(i, info[1], action, bip, bport, masq, explain, want_explain)
                pos += 1
                continue
            # a run of packets whose keys are "random" (no state: in any order)
            other = np.nonzero(n_eps[inv[rest[pos:]]] < 0)[0]
            end = pos + (int(other[0]) if len(other) else len(rest) - pos)
            self._draw(rest[pos:end], *args)
            pos = end
        return action, bip, bport, masq, explain

    def _draw(self, run, inv, infos, src, proto, dst, dport, sport, times, action, bip, bport, masq, explain,
              want_explain) -> None:
        """The packets `run` (their keys "random"): each packet's endpoint is
        its key's endpoint at its pick (`random_picks`)."""
        if not len(run):
            return
        keys = inv[run]
        n_eps = np.array([_n_random(info) for info in infos], np.int64)[keys]
        picks = random_picks(self.kp.seed, src[run], proto[run], dst[run], dport[run], sport[run], times[run], n_eps)
        for j in ([int(keys[0])] if (keys == keys[0]).all() else np.unique(keys).tolist()):
            _, eps, base_masq, what = infos[j]
            sel = keys == j
            k = run[sel]
            pk = picks[sel]
            ips = np.array([ipv4.aton(ep.ip) for ep in eps], np.uint32)
            ports = np.array([ep.port for ep in eps], np.uint16)
            action[k], bip[k], bport[k] = A_DNAT, ips[pk], ports[pk]
            masq[k] = base_masq | (src[k] == ips[pk])   # a hairpin: the client is its own endpoint
            if want_explain is not None:
                for kk, p in zip(k.tolist(), pk.tolist()):
                    if want_explain[kk]:
                        ep = eps[p]
                        explain[kk] = (f"DNAT {ipv4.ntoa(int(dst[kk]))}:{int(dport[kk])} -> {ep.ip}:{ep.port} "
                                       f"via {ep.chain} [{what}]" + ("; masquerade" if masq[kk] else ""))

    @staticmethod
    def _apply(i, d, action, bip, bport, masq, explain, want_explain) -> None:
        action[i] = _CODE[d.action]
        masq[i] = d.masquerade
        if d.backend is not None:
            bip[i], bport[i] = ipv4.aton(d.backend[0]), d.backend[1]
        if want_explain is not None and want_explain[i]:
            explain[i] = d.explain


def _keys(src, proto, dst, dport):
    """The packets' distinct (source << 32 | destination, protocol << 16 |
    port) pairs and each packet's pair number (kernels.distinct.pairs; one
    key, the common case, without a call)."""
    a = (src.astype(np.uint64) << np.uint64(32)) | dst.astype(np.uint64)
    c = (proto.astype(np.uint64) << np.uint64(16)) | dport.astype(np.uint64)
    if (a == a[0]).all() and (c == c[0]).all():
        return np.array([[a[0], c[0]]], np.uint64), np.zeros(len(a), np.int64)
    return distinct.pairs(a, c)


def _key(a: int, c: int, hook: str) -> tuple:
    """The cache key of a unique pair (source << 32 | destination, protocol << 16 | port)."""
    return (a >> 32, c >> 16, a & 0xFFFFFFFF, c & 0xFFFF, hook)


def _n_random(info) -> int:
    """A key's endpoint count if its packets draw one from the stream, else -1."""
    return len(info[1]) if info is not None and info[0] == "random" else -1
