"""kube-proxy IPVS mode for one node (used by KubeProxy(mode="ipvs")).

[kubernetes/kubernetes pkg/proxy/ipvs/proxier.go; reference section 1.8]
- One IPVS virtual server per ClusterIP:port, externalIP:port, LB IP:port and
  node address x NodePort (node addresses: eth0, cni0, flannel.1; not
  127.0.0.1), forwarding method masquerade. Real servers: the Cluster
  endpoints, or the node-local ones where the matching traffic policy is
  Local (upstream CategorizeEndpoints, shared with iptables mode).
- A virtual server without real servers answers ICMP port unreachable
  (kernel ip_vs_leave) -> REJECT (hedged).
- Schedulers: `rr` (per virtual server, in endpoint order, the kernel's
  "next after the last pick") and `mh` (Maglev: kernels.maglev with IPVS's
  table size 65537; the flow hashes the source address, and the source port
  too with the `mh-port` flag, which the reference says kube-proxy sets).
  Linux keys its mh hash with a random boot-time secret, so exact slots are
  ours, not the kernel's; the properties (consistency, minimal disruption)
  are the same.
- ClientIP affinity = IPVS persistence (client IP, virtual server) with the
  affinity timeout, refreshed by every new connection.
- Masquerade via ipsets: ClusterIP from outside the pod CIDR
  (KUBE-CLUSTER-IP + `! -s <podCIDR>`), NodePort / LB IP / externalIP unless
  the Service is externalTrafficPolicy Local (KUBE-NODE-PORT-LOCAL-*,
  KUBE-LOAD-BALANCER-LOCAL, KUBE-EXTERNAL-IP-LOCAL), and hairpin through
  KUBE-LOOP-BACK (dst,dst,src) in KUBE-POSTROUTING.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

import numpy as np

from kernels import maglev
from kernels.hashing import mix64

MH_TABLE_SIZE = 65537          # IP_VS_MH_TAB_SIZE with the default CONFIG_IP_VS_MH_TAB_INDEX (12)
_SEED_MIX = 0x9E3779B97F4A7C15


@dataclass(eq=False)
class VirtualServer:
    addr: str
    proto: str
    port: int
    kind: str                  # cluster | external | loadbalancer | nodeport
    sp: object                 # kubeproxy.ServicePort
    eps: list                  # real servers (kubeproxy.Endpoint), in order
    local_policy: bool         # the traffic policy that chose eps is Local

    @property
    def key(self):
        return (self.addr, self.proto, self.port)

    @property
    def label(self) -> str:
        return f"{self.addr}:{self.port}/{self.proto}"


def _key64(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")


class Ipvs:
    def __init__(self, kp, scheduler: str = "rr", *, mh_port: bool = True, seed: int = 0):
        self.kp, self.scheduler, self.mh_port = kp, scheduler, mh_port
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.vs: dict[tuple[str, str, int], VirtualServer] = {}
        self._rr_last: dict[tuple, str] = {}          # virtual server -> last real server picked
        self._mh: dict[tuple, tuple[tuple[str, ...], np.ndarray]] = {}
        self._persist: dict[tuple, tuple[str, int]] = {}   # (vs, client) -> (real server, last seen)

    # -- tables ----------------------------------------------------------------
    def node_addresses(self) -> list[str]:
        return sorted(a for a in self.kp.local_addresses
                      if ipaddress.IPv4Address(a) not in ipaddress.IPv4Network("127.0.0.0/8"))

    def sync(self) -> None:
        vs: dict[tuple[str, str, int], VirtualServer] = {}
        nodes = self.node_addresses()
        for sp in self.kp.service_ports:
            int_eps = sp.internal_eps if sp.has_internal else []
            ext_eps = (sp.local_eps if sp.etp_local else sp.cluster_eps) if sp.has_external else []
            vs[(sp.cluster_ip, sp.proto, sp.port)] = VirtualServer(
                sp.cluster_ip, sp.proto, sp.port, "cluster", sp, int_eps, sp.itp_local)
            for kind, ips in (("external", sp.external_ips), ("loadbalancer", sp.lb_ips)):
                for ip in ips:
                    vs.setdefault((ip, sp.proto, sp.port),
                                  VirtualServer(ip, sp.proto, sp.port, kind, sp, ext_eps, sp.etp_local))
            if sp.node_port:
                for ip in nodes:
                    vs.setdefault((ip, sp.proto, sp.node_port),
                                  VirtualServer(ip, sp.proto, sp.node_port, "nodeport", sp, ext_eps, sp.etp_local))
        self.vs = vs
        # drop Maglev tables whose real-server set changed (rebuilt lazily)
        for k in list(self._mh):
            v = vs.get(k)
            if v is None or tuple(e.string for e in v.eps) != self._mh[k][0]:
                del self._mh[k]

    def maglev_table(self, v: VirtualServer) -> np.ndarray:
        names = tuple(e.string for e in v.eps)
        hit = self._mh.get(v.key)
        if hit is None or hit[0] != names:
            keys = np.array([_key64(n) for n in names], np.uint64)
            hit = (names, maglev.build(keys, MH_TABLE_SIZE))
            self._mh[v.key] = hit
        return hit[1]

    def flow_hash(self, src: str, sport: int) -> int:
        x = int(ipaddress.IPv4Address(src))
        if self.mh_port:
            x = (x << 16) | (int(sport) & 0xFFFF)
        return int(mix64(np.uint64(x ^ (self.seed * _SEED_MIX & 0xFFFFFFFFFFFFFFFF))))

    # -- decision --------------------------------------------------------------
    def decide(self, src, proto, dst, dport, now, hook, sport):
        from emu.control.kubeproxy import DNAT, NONE, REJECT, Decision
        kp = self.kp
        v = self.vs.get((dst, proto, dport))
        if v is None:
            return Decision(NONE, chains=("KUBE-SERVICES",), explain=f"no IPVS virtual server {dst}:{dport}/{proto}")
        sp = v.sp
        path = ["KUBE-SERVICES"]
        if v.kind == "cluster":
            masq = kp.masquerade_all or not kp.in_cluster(src)
        else:
            if v.kind == "nodeport":
                path.append("KUBE-NODE-PORT")
            elif v.kind == "loadbalancer":
                path.append("KUBE-LOAD-BALANCER")
            masq = kp.masquerade_all or not v.local_policy
        if masq:
            path.append("KUBE-MARK-MASQ")
        vs_name = f"IPVS {v.label} {self.scheduler}"
        path.append(vs_name)
        if not v.eps:
            why = "has no endpoints" if not sp.has_endpoints else "has no local endpoints"
            return Decision(REJECT, chains=tuple(path), service=sp.name,
                            explain=f"REJECT {v.label}: {sp.name} {why}; IPVS has no real server (ICMP port unreachable)")
        ep = None
        timeout = sp.affinity_s * 1_000_000_000
        if timeout:
            hit = self._persist.get((v.key, src))
            if hit is not None and now - hit[1] < timeout:
                ep = next((e for e in v.eps if e.string == hit[0]), None)
        sticky = ep is not None
        if ep is None:
            ep = self._schedule(v, src, sport)
        if timeout:
            self._persist[(v.key, src)] = (ep.string, now)
        if src == ep.ip:
            masq = True
            path.append("KUBE-LOOP-BACK")
        explain = (f"DNAT {dst}:{dport} -> {ep.ip}:{ep.port} via {vs_name}"
                   f"{' (persistence)' if sticky else ''} [{sp.name}]" + ("; masquerade" if masq else ""))
        return Decision(DNAT, (ep.ip, ep.port), masq, tuple(path), explain, sp.name)

    def _schedule(self, v: VirtualServer, src: str, sport: int):
        eps = v.eps
        if self.scheduler == "mh":
            table = self.maglev_table(v)
            return eps[int(table[self.flow_hash(src, sport) % len(table)])]
        last = self._rr_last.get(v.key)
        idx = 0
        if last is not None:
            names = [e.string for e in eps]
            if last in names:
                idx = (names.index(last) + 1) % len(eps)
            else:   # the last pick is gone: continue with the next address after it
                idx = next((i for i, n in enumerate(names) if n > last), 0)
        ep = eps[idx]
        self._rr_last[v.key] = ep.string
        return ep

    # -- text --------------------------------------------------------------------
    def ipvsadm_save(self) -> str:
        """`ipvsadm -S -n`-like listing of the virtual and real servers."""
        flag = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
        out = []
        for key in sorted(self.vs, key=lambda k: (ipaddress.IPv4Address(k[0]), k[1], k[2])):
            v = self.vs[key]
            f = flag[v.proto]
            line = f"-A {f} {v.addr}:{v.port} -s {self.scheduler}"
            if self.scheduler == "mh" and self.mh_port:
                line += " -b mh-port"
            if v.sp.affinity_s:
                line += f" -p {v.sp.affinity_s}"
            out.append(line)
            out += [f"-a {f} {v.addr}:{v.port} -r {e.string} -m -w 1" for e in v.eps]
        return "\n".join(out) + ("\n" if out else "")

    def rules(self):
        """IPVS mode's iptables rules (hedged: reconstructed from the ipvs
        proxier's chain/ipset inventory, not copied from a node)."""
        from emu.control.kubeproxy import Tables, _MARK
        kp = self.kp
        t = Tables()
        mm = f"{_MARK}/{_MARK}"
        t.filter_chains += ["KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL"]
        t.nat_chains += ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER",
                         "KUBE-MARK-MASQ"]
        nr, fr = t.nat_rules, t.filter_rules
        nr.append(("KUBE-POSTROUTING", ["-m", "comment", "--comment",
                                        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
                                        "-m", "set", "--match-set", "KUBE-LOOP-BACK", "dst,dst,src",
                                        "-j", "MASQUERADE"]))
        nr.append(("KUBE-POSTROUTING", ["-m", "mark", "!", "--mark", mm, "-j", "RETURN"]))
        nr.append(("KUBE-POSTROUTING", ["-j", "MARK", "--xor-mark", _MARK]))
        nr.append(("KUBE-POSTROUTING", ["-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
                                        "-j", "MASQUERADE", "--random-fully"]))
        nr.append(("KUBE-MARK-MASQ", ["-j", "MARK", "--or-mark", _MARK]))
        sps = kp.service_ports
        if any(sp.lb_ips for sp in sps):
            if any(sp.lb_ips and sp.etp_local for sp in sps):
                nr.append(("KUBE-LOAD-BALANCER", ["-m", "comment", "--comment",
                                                  "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
                                                  "-m", "set", "--match-set", "KUBE-LOAD-BALANCER-LOCAL", "dst,dst",
                                                  "-j", "RETURN"]))
            nr.append(("KUBE-LOAD-BALANCER", ["-j", "KUBE-MARK-MASQ"]))
        for p in ("tcp", "udp", "sctp"):
            nps = [sp for sp in sps if sp.proto == p and sp.node_port]
            if not nps:
                continue
            P = p.upper()
            if any(sp.etp_local for sp in nps):
                nr.append(("KUBE-NODE-PORT", ["-p", p, "-m", "comment", "--comment",
                                              f"Kubernetes nodeport {P} port with externalTrafficPolicy=local",
                                              "-m", "set", "--match-set", f"KUBE-NODE-PORT-LOCAL-{P}", "dst",
                                              "-j", "RETURN"]))
            nr.append(("KUBE-NODE-PORT", ["-p", p, "-m", "comment", "--comment",
                                          f"Kubernetes nodeport {P} port for masquerade purpose",
                                          "-m", "set", "--match-set", f"KUBE-NODE-PORT-{P}", "dst",
                                          "-j", "KUBE-MARK-MASQ"]))
        if any(sp.lb_ips for sp in sps):
            nr.append(("KUBE-SERVICES", ["-m", "comment", "--comment",
                                         "Kubernetes service lb portal", "-m", "set", "--match-set",
                                         "KUBE-LOAD-BALANCER", "dst,dst", "-j", "KUBE-LOAD-BALANCER"]))
        nr.append(("KUBE-SERVICES", ["-m", "comment", "--comment",
                                     "Kubernetes service cluster ip + port for masquerade purpose",
                                     "-m", "set", "--match-set", "KUBE-CLUSTER-IP", "dst,dst",
                                     "!", "-s", str(kp.pod_cidr), "-j", "KUBE-MARK-MASQ"]))
        if any(sp.external_ips and not sp.etp_local for sp in sps):
            nr.append(("KUBE-SERVICES", ["-m", "comment", "--comment",
                                         "Kubernetes service external ip + port for masquerade and filter purpose",
                                         "-m", "set", "--match-set", "KUBE-EXTERNAL-IP", "dst,dst",
                                         "-j", "KUBE-MARK-MASQ"]))
        nr.append(("KUBE-SERVICES", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "KUBE-NODE-PORT"]))
        nr.append(("KUBE-SERVICES", ["-m", "set", "--match-set", "KUBE-CLUSTER-IP", "dst,dst", "-j", "ACCEPT"]))
        fr.append(("KUBE-FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules",
                                    "-m", "mark", "--mark", mm, "-j", "ACCEPT"]))
        fr.append(("KUBE-FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
                                    "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]))
        t.builtin = {
            "nat": [("PREROUTING", ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
                    ("OUTPUT", ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
                    ("POSTROUTING", ["-m", "comment", "--comment", "kubernetes postrouting rules",
                                     "-j", "KUBE-POSTROUTING"])],
            "filter": [("INPUT", ["-m", "comment", "--comment", "kubernetes health check rules",
                                  "-j", "KUBE-NODE-PORT"]),
                       ("FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules",
                                    "-j", "KUBE-FORWARD"])],
        }
        return t
