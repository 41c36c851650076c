"""kube-proxy's decision for many first packets at once, equal to calling
`KubeProxy.decide` once per packet in the same order.

What the decision depends on is the packet's (source, protocol, destination,
destination port, hook); what it consumes is the proxy's random stream
(iptables mode: one `integers(len(endpoints))` draw per DNAT among more
than one endpoint). So per distinct key the first packet is decided by
`KubeProxy.decide` itself and the outcome classified:

- no DNAT (NONE, REJECT, DROP): no state touched, the decision is reused;
- iptables DNAT without session affinity: the endpoint list and masquerade
  flag are kept; later packets draw their endpoint from the same stream,
  a run of consecutive packets with the same endpoint count in one numpy
  call (numpy's Generator gives the same numbers for `integers(n, size=k)`
  as for k calls of `integers(n)`: a test checks);
- anything else (IPVS schedulers, ClientIP affinity): `decide` per packet.

The cache is dropped whenever the proxy resyncs (a new service_ports list).
"""
from __future__ import annotations

import numpy as np

from emu.control.kubeproxy import DNAT, DROP, NONE, REJECT
from emu.wire import ipv4

A_NONE, A_DNAT, A_REJECT, A_DROP = 0, 1, 2, 3
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
        uint16, masquerade bool, explain text or None (only where want_explain))."""
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
        packed = (src.astype(np.uint64) << np.uint64(32)) | dst.astype(np.uint64)
        packed2 = (proto.astype(np.uint64) << np.uint64(16)) | dport.astype(np.uint64)
        u, inv = np.unique(np.stack([packed, packed2], axis=1), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        todo = np.ones(n, bool)
        for j, (a, c) in enumerate(u.tolist()):
            info = self._cache.get((a >> 32, c >> 16, a & 0xFFFFFFFF, c & 0xFFFF, hook))
            if info is not None and info[0] == "static":
                sel = inv == j
                d = info[1]
                action[sel] = _CODE[d.action]
                masq[sel] = d.masquerade
                if d.backend is not None:
                    bip[sel], bport[sel] = ipv4.aton(d.backend[0]), d.backend[1]
                if want_explain is not None:
                    for k in np.nonzero(sel & want_explain)[0].tolist():
                        explain[k] = d.explain
                todo[sel] = False
        rest = np.nonzero(todo)[0]
        keys = {int(i): k for i, k in zip(rest.tolist(), zip(src[rest].tolist(), proto[rest].tolist(),
                                                           dst[rest].tolist(), dport[rest].tolist()))}
        pos = 0
        while pos < len(rest):
            i = int(rest[pos])
            key = keys[i] + (hook,)
            info = self._cache.get(key)
            if info is None or info[0] == "python":
                s = ipv4.ntoa(keys[i][0])
                d = kp.decide(s, keys[i][1], ipv4.ntoa(keys[i][2]), keys[i][3], now_ns=int(times[i]), hook=hook,
                              src_port=int(sport[i]))
                if info is None:
                    info = self._cache[key] = self._classify(d, s)
                self._apply(i, d, action, bip, bport, masq, explain, want_explain)
                pos += 1
                continue
            if info[0] == "static":
                self._apply(i, info[1], action, bip, bport, masq, explain, want_explain)
                pos += 1
                continue
            # a run of packets whose keys are "random" with the same endpoint count
            eps = info[1]
            end = pos + 1
            while end < len(rest):
                other = self._cache.get(keys[int(rest[end])] + (hook,))
                if other is None or other[0] != "random" or len(other[1]) != len(eps):
                    break
                end += 1
            run = rest[pos:end].tolist()
            picks = kp._rng.integers(len(eps), size=len(run)) if len(eps) > 1 else np.zeros(len(run), np.int64)
            for k, pick in zip(run, picks.tolist()):
                _, eps_k, base_masq, what = self._cache[keys[k] + (hook,)]
                ep = eps_k[pick]
                s = keys[k][0]
                ip = ipv4.aton(ep.ip)
                hairpin = s == ip
                action[k], bip[k], bport[k], masq[k] = A_DNAT, ip, ep.port, base_masq or hairpin
                if want_explain is not None and want_explain[k]:
                    explain[k] = (f"DNAT {ipv4.ntoa(keys[k][2])}:{keys[k][3]} -> {ep.ip}:{ep.port} via {ep.chain}"
                                  f" [{what}]" + ("; masquerade" if masq[k] else ""))
            pos = end
        return action, bip, bport, masq, explain

    @staticmethod
    def _apply(i, d, action, bip, bport, masq, explain, want_explain) -> None:
        action[i] = _CODE[d.action]
        masq[i] = d.masquerade
        if d.backend is not None:
            bip[i], bport[i] = ipv4.aton(d.backend[0]), d.backend[1]
        if want_explain is not None and want_explain[i]:
            explain[i] = d.explain
