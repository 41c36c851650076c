"""kube-proxy for one node: Service semantics as data, a decision function for
the first packet of a connection, and the node's rules as `iptables-save` text.

Input: a `ClusterState` (Services with allocated IPs/ports, EndpointSlices).
One `KubeProxy` is one node's kube-proxy: Local traffic policies, node-local
endpoints and "local address" tests depend on the node.

    kp = KubeProxy(state, "node-1", mode="iptables", seed=7)
    d = kp.decide("10.244.1.5", "tcp", "10.96.0.10", 53, now_ns=t)
    d.action, d.backend, d.masquerade, d.chains, d.explain

`decide` walks what the kernel would walk for a NEW connection
[kubernetes/kubernetes pkg/proxy/iptables/proxier.go syncProxyRules]:
nat KUBE-SERVICES (cluster IP / external IP / LB IP rules, then the
`--dst-type LOCAL` jump to KUBE-NODEPORTS), KUBE-EXT-* (masquerade or the
Local-policy short circuits), KUBE-SVC-*/KUBE-SVL-* (ClientIP affinity via
`-m recent`, then one uniform pick, the distribution of the
`--probability 1/(n-i)` cascade: see `random_picks`), KUBE-SEP-* (hairpin mark, DNAT); when
nothing DNATs, the filter chains KUBE-SERVICES / KUBE-EXTERNAL-SERVICES
(REJECT: no endpoints; DROP: no local endpoints). Endpoint categorisation is
upstream's `CategorizeEndpoints` (ready, else serving+terminating; Local
policies over node-local endpoints with the same fallback).

IPVS mode (`mode="ipvs"`) shares the Service model and the Decision type:
one virtual server per (VIP|externalIP|LB IP|node address x NodePort, proto,
port), schedulers `rr` and `mh` (Maglev, table size 65537, see ipvs.py),
persistence for ClientIP affinity, masquerade as kube-proxy's ipvs ipsets do.

Not modelled: loadBalancerSourceRanges (KUBE-FW; the Service model has no
such field), healthCheckNodePort, topology hints / trafficDistribution,
IPv6, --nodeport-addresses, detect-local modes other than ClusterCIDR,
conntrack (the data plane's job: `decide` is only the first packet).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from emu.control import chains as ch
from emu.control.state import ClusterState

__all__ = [
    "DNAT", "REJECT", "DROP", "NONE", "Decision", "KubeProxy", "MASQ_MARK",
    "LARGE_CLUSTER_ENDPOINTS", "probability_string", "saved_probability_string", "random_picks",
]

DNAT, REJECT, DROP, NONE = "DNAT", "REJECT", "DROP", "NONE"
MASQ_MARK = 0x4000
#: upstream largeClusterEndpointsThreshold: above it SEP/SVC rules lose comments
LARGE_CLUSTER_ENDPOINTS = 1000
_PROTO_NUM = {6: "tcp", 17: "udp", 132: "sctp"}
_PROTO_CODE = {v: k for k, v in _PROTO_NUM.items()}
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h):
    """splitmix64's finaliser (uint64 arrays)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def random_picks(seed, src, proto, dst, dport, sport, now, n) -> np.ndarray:
    """The endpoint (0 .. n-1) the `--mode random` cascade picks for each
    first packet (arrays, or scalars broadcast; addresses as uint32).

    Simplification: the kernel draws from its per-CPU prandom state, so a
    pick depends on everything that ran on that CPU before. Here it is a
    keyed hash of the packet (addresses, ports, protocol) and the time it
    meets the rule, under kube-proxy's seed: as uniform, the same for a
    given packet however packets are batched (the interactive engine, the
    bulk fast path and the flow cache decide alike, in any order), and a
    connection that reuses a tuple later draws again."""
    def u(x):
        return np.atleast_1d(np.asarray(x)).astype(np.uint64)
    h = _mix((u(seed) * _GOLDEN) ^ ((u(src) << np.uint64(32)) | u(dst)))
    h = _mix(h ^ ((u(sport) << np.uint64(32)) | (u(dport) << np.uint64(16)) | u(proto)))
    h = _mix(h ^ u(now))
    return (((h >> np.uint64(32)) * u(n)) >> np.uint64(32)).astype(np.int64)


@dataclass(frozen=True)
class Decision:
    """What kube-proxy's rules do to the first packet of a connection."""
    action: str                                 # DNAT | REJECT | DROP | NONE
    backend: tuple[str, int] | None = None      # DNAT target
    masquerade: bool = False                    # mark 0x4000 -> MASQUERADE at POSTROUTING
    chains: tuple[str, ...] = ()                # chains entered, in order
    explain: str = ""                           # one line, for capture comments
    service: str | None = None                  # "<ns>/<svc>:<port>" matched, if any

    @property
    def mark(self) -> int:
        return MASQ_MARK if self.masquerade else 0


# ----------------------------------------------------------------- the model

@dataclass(eq=False)
class Endpoint:
    ip: str
    port: int
    node: str | None
    local: bool
    ready: bool
    serving: bool
    terminating: bool
    string: str                                 # "ip:port"
    chain: str                                  # KUBE-SEP-...


@dataclass(eq=False)
class ServicePort:
    """One Service port as kube-proxy sees it (upstream servicePortInfo)."""
    name: str                                   # "<ns>/<svc>[:<port name>]"
    namespace: str
    service: str
    port_name: str | None
    proto: str                                  # tcp | udp | sctp
    port: int
    cluster_ip: str
    node_port: int | None
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    affinity_s: int                             # ClientIP timeout (s), 0: no affinity
    etp_local: bool
    itp_local: bool
    svc_chain: str
    svl_chain: str
    ext_chain: str
    fw_chain: str
    endpoints: list[Endpoint] = field(default_factory=list)   # all, sorted
    cluster_eps: list[Endpoint] = field(default_factory=list)
    local_eps: list[Endpoint] = field(default_factory=list)
    has_endpoints: bool = False
    has_internal: bool = False
    has_external: bool = False

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port) or bool(self.lb_ips) or bool(self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # "Even if the external traffic policy is Local, we need Cluster
        # endpoints to implement short circuiting." (upstream)
        return not self.itp_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.itp_local or (self.etp_local and self.externally_accessible)

    @property
    def internal_chain(self) -> str:
        return self.svl_chain if self.itp_local else self.svc_chain

    @property
    def internal_eps(self) -> list[Endpoint]:
        return self.local_eps if self.itp_local else self.cluster_eps


def _categorize(sp: ServicePort) -> None:
    """upstream pkg/proxy/topology.go CategorizeEndpoints (without topology)."""
    eps = sp.endpoints
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if sp.uses_cluster_endpoints:
        cluster = [e for e in eps if e.ready]
        if not cluster:
            cluster = [e for e in eps if e.serving and e.terminating]
        has_any = bool(cluster)
    if sp.uses_local_endpoints:
        local_ready = local_st = False
        for e in eps:
            if e.ready:
                has_any = True
                local_ready |= e.local
            elif e.serving and e.terminating:
                has_any = True
                local_st |= e.local
        if local_ready:
            local = [e for e in eps if e.local and e.ready]
        elif local_st:
            local = [e for e in eps if e.local and e.serving and e.terminating]
    sp.cluster_eps, sp.local_eps, sp.has_endpoints = cluster, local, has_any
    sp.has_internal = has_any and (not sp.itp_local or bool(local))
    sp.has_external = has_any and (not sp.etp_local or bool(local))


def _proto(p) -> str:
    if isinstance(p, (int, np.integer)):
        try:
            return _PROTO_NUM[int(p)]
        except KeyError:
            raise ValueError(f"protocol number {p} is not TCP, UDP or SCTP") from None
    s = str(p).lower()
    if s not in ("tcp", "udp", "sctp"):
        raise ValueError(f"protocol must be TCP, UDP or SCTP, got {p!r}")
    return s


def _ip(a) -> str:
    if isinstance(a, str):
        return a
    return str(ipaddress.IPv4Address(int(a)))


def build_service_ports(state: ClusterState, node: str) -> list[ServicePort]:
    """Every proxied Service port of the cluster, endpoints resolved and
    categorised for `node`, in servicePortName order."""
    out: list[ServicePort] = []
    for key in sorted(state.services):
        info = state.services[key]
        svc = info.service
        if svc.type == "ExternalName" or not info.cluster_ip or info.cluster_ip == "None":
            continue
        slices = state.slices.get(key, ())
        for i, sport in enumerate(svc.ports):
            proto = _proto(sport.protocol)
            spn = ch.service_port_name(svc.namespace, svc.name, sport.name)
            suffix = ch.hash_suffix(spn + proto)
            node_port = info.node_ports[i] if i < len(info.node_ports) else None
            sp = ServicePort(
                name=spn, namespace=svc.namespace, service=svc.name, port_name=sport.name,
                proto=proto, port=int(sport.port), cluster_ip=info.cluster_ip,
                node_port=int(node_port) if node_port else None,
                external_ips=tuple(svc.external_ips), lb_ips=tuple(info.load_balancer_ips),
                affinity_s=int(svc.session_affinity_timeout) if svc.session_affinity == "ClientIP" else 0,
                etp_local=(svc.external_traffic_policy == "Local"),
                itp_local=(svc.internal_traffic_policy == "Local"),
                svc_chain="KUBE-SVC-" + suffix, svl_chain="KUBE-SVL-" + suffix,
                ext_chain="KUBE-EXT-" + suffix, fw_chain="KUBE-FW-" + suffix)
            sp.etp_local = sp.etp_local and sp.externally_accessible
            seen: dict[str, Endpoint] = {}
            prefix = spn + proto
            for sl in slices:
                if sl.address_type != "IPv4":
                    continue
                for eport in sl.ports:
                    if eport.port is None or eport.name != sport.name or _proto(eport.protocol) != proto:
                        continue
                    for e in sl.endpoints:
                        if not e.addresses:
                            continue
                        ip = e.addresses[0]
                        s = f"{ip}:{int(eport.port)}"
                        old = seen.get(s)
                        if old is not None and (old.ready or not e.ready):
                            continue
                        seen[s] = Endpoint(
                            ip=ip, port=int(eport.port), node=e.node_name, local=(e.node_name == node),
                            ready=bool(e.ready), serving=bool(e.serving), terminating=bool(e.terminating),
                            string=s, chain="KUBE-SEP-" + ch.hash_suffix(prefix + s))
            # upstream sorts a service's endpoints by their "IP:port" string
            sp.endpoints = [seen[s] for s in sorted(seen)]
            _categorize(sp)
            out.append(sp)
    return out


def probability_string(n: int) -> str:
    """kube-proxy's `--probability` for the rule with n endpoints left: %0.10f of 1/n."""
    return "%0.10f" % (1.0 / n)


def saved_probability_string(p: float) -> str:
    """What iptables-save prints for `--probability p`: libxt_statistic stores
    round(p * 2**31) and prints it back with %.11f (hedged, see report)."""
    return "%.11f" % (round(p * 0x80000000) / 0x80000000)


# ----------------------------------------------------------------- KubeProxy

class KubeProxy:
    """kube-proxy of one node; see the module docstring."""

    def __init__(self, state: ClusterState, node: str, mode: str = "iptables",
                 scheduler: str = "rr", seed: int = 0, *, masquerade_all: bool = False,
                 localhost_nodeports: bool = True, mh_port: bool = True,
                 extra_local_addresses: Iterable[str] = ()):
        if mode not in ("iptables", "ipvs"):
            raise ValueError(f"mode must be 'iptables' or 'ipvs', got {mode!r}")
        if scheduler not in ("rr", "mh"):
            raise ValueError(f"scheduler must be 'rr' or 'mh', got {scheduler!r}")
        if node not in state.nodes:
            raise ValueError(f"unknown node {node!r}")
        self.node, self.mode, self.scheduler, self.seed = node, mode, scheduler, int(seed)
        self.masquerade_all = masquerade_all
        self.localhost_nodeports = localhost_nodeports
        self.mh_port = mh_port
        self.extra_local_addresses = tuple(extra_local_addresses)
        # state that survives a resync, as in the kernel:
        self._recent: dict[str, dict[str, int]] = {}   # xt_recent lists, by KUBE-SEP name
        self.ipvs = None
        self.update(state)

    # -- build -------------------------------------------------------------
    def update(self, state: ClusterState) -> None:
        """Resync from a new ClusterState. Affinity lists (keyed by KUBE-SEP
        chain, as xt_recent's are) and IPVS scheduler state
        are kept; connections already tracked are the data plane's business."""
        self.state = state
        me = state.nodes[self.node]
        self.node_ip = me.ip
        self.pod_cidr = ipaddress.IPv4Network(str(state.settings.pod_cidr))
        net = ipaddress.IPv4Network(me.pod_cidr)
        # addresses on this node: eth0, flannel.1 (.0), cni0 (.1) + extras
        self.local_addresses = frozenset({me.ip, str(net.network_address), str(net.network_address + 1),
                                          *self.extra_local_addresses})
        self.service_ports = build_service_ports(state, self.node)
        self._vips: dict[tuple[str, str, int], tuple[str, ServicePort]] = {}
        self._nodeports: dict[tuple[str, int], ServicePort] = {}
        for sp in self.service_ports:
            self._vips[(sp.cluster_ip, sp.proto, sp.port)] = ("cluster", sp)
            for ip in sp.external_ips:
                self._vips.setdefault((ip, sp.proto, sp.port), ("external", sp))
            for ip in sp.lb_ips:
                self._vips.setdefault((ip, sp.proto, sp.port), ("loadbalancer", sp))
            if sp.node_port:
                self._nodeports[(sp.proto, sp.node_port)] = sp
        self.total_endpoints = sum(len(sp.endpoints) for sp in self.service_ports)
        self.large_cluster = self.total_endpoints > LARGE_CLUSTER_ENDPOINTS
        self._rules = None
        if self.mode == "ipvs":
            from emu.control.ipvs import Ipvs
            if self.ipvs is None:
                self.ipvs = Ipvs(self, self.scheduler, mh_port=self.mh_port, seed=self.seed)
            self.ipvs.sync()

    # -- queries -----------------------------------------------------------
    def service_port(self, name: str, proto: str = "tcp") -> ServicePort:
        for sp in self.service_ports:
            if sp.name == name and sp.proto == _proto(proto):
                return sp
        raise KeyError(name)

    def in_cluster(self, ip: str) -> bool:
        """detect-local-mode ClusterCIDR: is `ip` inside the pod CIDR?"""
        return ipaddress.IPv4Address(ip) in self.pod_cidr

    def is_local_address(self, ip: str, hook: str = "PREROUTING") -> bool:
        """`-m addrtype --dst-type/--src-type LOCAL` on this node."""
        if ip in self.local_addresses:
            return True
        if ipaddress.IPv4Address(ip) in _LOOPBACK:
            return True
        return False

    def no_service(self, dst_ip, proto, dst_port: int, hook: str = "PREROUTING") -> bool:
        """Whether `decide` for this destination is NONE before it looks at
        any service (no service, virtual server or node port there), so
        deciding touches no state (random stream, affinity): the bulk fast
        path asks before deciding a batch's packets ahead of time."""
        dst, p, dport = _ip(dst_ip), _proto(proto), int(dst_port)
        if self.mode == "ipvs":
            return (dst, p, dport) not in self.ipvs.vs
        if (dst, p, dport) in self._vips:
            return False
        return not (self._dst_local(dst, hook) and (p, dport) in self._nodeports)

    # -- the decision --------------------------------------------------------
    def decide(self, src_ip, proto, dst_ip, dst_port: int, *, now_ns: int = 0,
               hook: str = "PREROUTING", from_local_pod: bool | None = None,
               in_interface: str | None = None, src_port: int = 0) -> Decision:
        """The fate of the FIRST packet of a connection at this node.

        hook: "PREROUTING" (a packet arriving: from a pod, another node or
        outside) or "OUTPUT" (sent by the node itself, hostNetwork pods
        included). from_local_pod / in_interface are informational (the
        local-traffic detector is ClusterCIDR: the source address decides).
        src_port: the connection's source port (IPVS mh with mh-port hashes
        it; iptables' random pick takes it in, see `random_picks`)."""
        if hook not in ("PREROUTING", "OUTPUT"):
            raise ValueError(f"hook must be PREROUTING or OUTPUT, got {hook!r}")
        src, dst, p, dport = _ip(src_ip), _ip(dst_ip), _proto(proto), int(dst_port)
        if self.mode == "ipvs":
            return self.ipvs.decide(src, p, dst, dport, int(now_ns), hook, int(src_port))
        return self._decide_iptables(src, p, dst, dport, int(now_ns), hook, int(src_port))

    def _dst_local(self, dst: str, hook: str) -> bool:
        if dst in self.local_addresses:
            return True
        # 127.0.0.0/8 is LOCAL; NodePorts there work only from the host itself
        # (route_localnet=1 with --iptables-localhost-nodeports, the default)
        return hook == "OUTPUT" and self.localhost_nodeports and ipaddress.IPv4Address(dst) in _LOOPBACK

    def _decide_iptables(self, src, p, dst, dport, now, hook, sport) -> Decision:
        path = ["KUBE-SERVICES"]
        hit = self._vips.get((dst, p, dport))
        dst_local = self._dst_local(dst, hook)
        if hit is None and dst_local:
            sp = self._nodeports.get((p, dport))
            if sp is not None:
                hit = ("nodeport", sp)
        if hit is None:
            return Decision(NONE, chains=tuple(path), explain=f"no service at {dst}:{dport}/{p}")
        kind, sp = hit
        what = f"{sp.name} {'cluster IP' if kind == 'cluster' else kind.replace('loadbalancer', 'loadbalancer IP').replace('external', 'external IP').replace('nodeport', 'node port')}"
        if kind == "cluster":
            if sp.has_internal:
                path.append(sp.internal_chain)
                masq = self.masquerade_all or not self.in_cluster(src)
                if masq:
                    path.append("KUBE-MARK-MASQ")
                return self._dispatch(sp, sp.internal_chain, sp.internal_eps, src, dst, dport, now, path, masq, what, p, sport)
            # filter KUBE-SERVICES (FORWARD / OUTPUT)
            return self._filtered(sp, "KUBE-SERVICES", path, dst, dport, what)
        # external destinations: KUBE-EXT (if the service has endpoints anywhere)
        if sp.has_endpoints:
            if kind == "nodeport":
                path.append("KUBE-NODEPORTS")
            path.append(sp.ext_chain)
            if not sp.etp_local:
                path += ["KUBE-MARK-MASQ", sp.svc_chain]
                return self._dispatch(sp, sp.svc_chain, sp.cluster_eps, src, dst, dport, now, path, True, what, p, sport)
            if self.in_cluster(src):       # "pod traffic for ... external destinations"
                path.append(sp.svc_chain)
                return self._dispatch(sp, sp.svc_chain, sp.cluster_eps, src, dst, dport, now, path, False,
                                      what + ", pod short-circuit", p, sport)
            if hook == "OUTPUT" or self.is_local_address(src):   # --src-type LOCAL
                path += ["KUBE-MARK-MASQ", sp.svc_chain]
                return self._dispatch(sp, sp.svc_chain, sp.cluster_eps, src, dst, dport, now, path, True,
                                      what + ", LOCAL source", p, sport)
            if sp.has_external:
                path.append(sp.svl_chain)
                return self._dispatch(sp, sp.svl_chain, sp.local_eps, src, dst, dport, now, path, False, what, p, sport)
        # nothing DNATed: filter KUBE-EXTERNAL-SERVICES, hooked from INPUT and
        # FORWARD (not OUTPUT: host traffic to a non-local external IP leaves as is)
        if hook == "OUTPUT" and not dst_local:
            return Decision(NONE, chains=tuple(path), service=sp.name,
                            explain=f"{what}: no (local) endpoints, host traffic not filtered")
        return self._filtered(sp, "KUBE-EXTERNAL-SERVICES", path, dst, dport, what)

    def _filtered(self, sp, chain, path, dst, dport, what) -> Decision:
        path = path + ["filter:" + chain]
        if not sp.has_endpoints:
            return Decision(REJECT, chains=tuple(path), service=sp.name,
                            explain=f"REJECT {dst}:{dport}/{sp.proto}: {sp.name} has no endpoints "
                                    f"(ICMP port unreachable) in filter {chain}")
        return Decision(DROP, chains=tuple(path), service=sp.name,
                        explain=f"DROP {dst}:{dport}/{sp.proto}: {sp.name} has no local endpoints in filter {chain}")

    def _dispatch(self, sp, chain, eps, src, dst, dport, now, path, masq, what, proto, sport) -> Decision:
        ep = None
        if sp.affinity_s:
            horizon = sp.affinity_s * 1_000_000_000
            for e in eps:                    # -m recent --rcheck --seconds T, in chain order
                last = self._recent.get(e.chain, {}).get(src)
                if last is not None and now - last < horizon:
                    ep = e
                    break
        sticky = ep is not None
        if ep is None:
            ep = eps[int(random_picks(self.seed, int(ipaddress.IPv4Address(src)), _PROTO_CODE[proto],
                                      int(ipaddress.IPv4Address(dst)), dport, sport, now, len(eps))[0])] \
                if len(eps) > 1 else eps[0]
        path.append(ep.chain)
        if src == ep.ip:                     # hairpin: -s <ep ip> -j KUBE-MARK-MASQ
            masq = True
            path.append("KUBE-MARK-MASQ")
        if sp.affinity_s:                    # -m recent --name KUBE-SEP-X --set
            self._recent.setdefault(ep.chain, {})[src] = now
        how = " (affinity)" if sticky else ""
        explain = (f"DNAT {dst}:{dport} -> {ep.ip}:{ep.port} via {ep.chain}{how} [{what}]"
                   + ("; masquerade" if masq else ""))
        return Decision(DNAT, (ep.ip, ep.port), masq, tuple(path), explain, sp.name)

    # -- data-plane adapter --------------------------------------------------
    # -- iptables-save -------------------------------------------------------
    def iptables_save(self, style: str = "save") -> str:
        """The node's filter and nat tables.

        style="save": what `iptables-save` (legacy) prints on a real node:
        builtin chains first, user chains sorted, rules grouped by chain,
        canonical argument order, /32 on addresses, `--set-xmark`,
        `--reject-with icmp-port-unreachable`, 11-decimal probabilities.
        style="restore": the exact `iptables-restore` input kube-proxy writes
        (upstream's proxier_test.go form; 10-decimal probabilities), with
        services in servicePortName order."""
        it = _Text
        if self.mode == "ipvs":
            rules = self.ipvs.rules()
        else:
            if self._rules is None:
                self._rules = it.build_rules(self)
            rules = self._rules
        if style == "restore":
            return it.render_restore(rules)
        if style == "save":
            return it.render_save(rules)
        raise ValueError(f"style must be 'save' or 'restore', got {style!r}")


# ----------------------------------------------------------------- rule text

@dataclass
class Tables:
    """kube-proxy's restore payload as data: per table, the chain lines it
    declares (in write order) and its rules as (chain, tokens) with tokens
    unquoted, in upstream's argument order. `builtin` holds the jump rules
    kube-proxy/kubelet keep in the builtin chains (EnsureRule, not restore)."""
    filter_chains: list[str] = field(default_factory=list)
    filter_rules: list[tuple[str, list[str]]] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=list)
    nat_rules: list[tuple[str, list[str]]] = field(default_factory=list)
    builtin: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)


_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
            "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
_MARK = "0x4000"


def _iptables_builtin_jumps() -> dict[str, list[tuple[str, list[str]]]]:
    """upstream iptablesJumpChains, each EnsureRule(Prepend) in list order (so
    the later ones end up on top), then kubelet's appended KUBE-FIREWALL jumps
    (hedged: kubelet versions differ)."""
    new = ["-m", "conntrack", "--ctstate", "NEW"]
    jumps = [
        ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals", new),
        ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals", new),
        ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", []),
        ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", new),
        ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", new),
        ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", []),
        ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", new),
        ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", new),
        ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", new),
        ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", []),
        ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", []),
        ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", []),
    ]
    out: dict[str, list[tuple[str, list[str]]]] = {"filter": [], "nat": []}
    for table, dst, src, comment, extra in jumps:
        out[table].insert(0, (src, [*extra, "-m", "comment", "--comment", comment, "-j", dst]))
    # keep builtin chain order stable: group by builtin chain, preserving order
    for table in out:
        out[table].sort(key=lambda r: _BUILTIN[table].index(r[0]))
    out["filter"] += [("INPUT", ["-j", "KUBE-FIREWALL"]), ("OUTPUT", ["-j", "KUBE-FIREWALL"])]
    return out


def _proto_match(p: str) -> list[str]:
    return ["-m", p, "-p", p]


def build_rules(kp: "KubeProxy") -> Tables:
    """syncProxyRules, service by service in servicePortName order."""
    t = Tables()
    fr, nr = t.filter_rules, t.nat_rules
    t.filter_chains += ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                        "KUBE-PROXY-FIREWALL"]
    t.nat_chains += ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    mm = f"{_MARK}/{_MARK}"
    nr.append(("KUBE-POSTROUTING", ["-m", "mark", "!", "--mark", mm, "-j", "RETURN"]))
    nr.append(("KUBE-POSTROUTING", ["-j", "MARK", "--xor-mark", _MARK]))
    nr.append(("KUBE-POSTROUTING", ["-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
                                    "-j", "MASQUERADE", "--random-fully"]))
    nr.append(("KUBE-MARK-MASQ", ["-j", "MARK", "--or-mark", _MARK]))
    if kp.localhost_nodeports:
        t.filter_chains.append("KUBE-FIREWALL")
        fr.append(("KUBE-FIREWALL", ["-m", "comment", "--comment", "block incoming localnet connections",
                                     "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack",
                                     "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"]))
    cidr = str(kp.pod_cidr)
    large = kp.large_cluster

    def svc_comment(text):
        return [] if large else ["-m", "comment", "--comment", text]

    for sp in kp.service_ports:
        p, name, port = sp.proto, sp.name, str(sp.port)
        has_ext = sp.has_external
        int_chain = sp.internal_chain
        uses_ext = sp.has_endpoints and sp.externally_accessible
        if sp.has_endpoints and not sp.has_internal:
            itarget, icomment = "DROP", f"{name} has no local endpoints"
        else:
            itarget, icomment = "REJECT", f"{name} has no endpoints"
        etarget = "REJECT" if not sp.has_endpoints else "DROP"
        ecomment = f"{name} has no endpoints" if not sp.has_endpoints else f"{name} has no local endpoints"
        if sp.has_internal:
            nr.append(("KUBE-SERVICES", ["-m", "comment", "--comment", f"{name} cluster IP", *_proto_match(p),
                                         "-d", sp.cluster_ip, "--dport", port, "-j", int_chain]))
        else:
            fr.append(("KUBE-SERVICES", ["-m", "comment", "--comment", icomment, *_proto_match(p),
                                         "-d", sp.cluster_ip, "--dport", port, "-j", itarget]))
        for ip in sp.external_ips:
            if sp.has_endpoints:
                nr.append(("KUBE-SERVICES", ["-m", "comment", "--comment", f"{name} external IP", *_proto_match(p),
                                             "-d", ip, "--dport", port, "-j", sp.ext_chain]))
            if not has_ext:
                fr.append(("KUBE-EXTERNAL-SERVICES", ["-m", "comment", "--comment", ecomment, *_proto_match(p),
                                                      "-d", ip, "--dport", port, "-j", etarget]))
        for ip in sp.lb_ips:
            if sp.has_endpoints:
                nr.append(("KUBE-SERVICES", ["-m", "comment", "--comment", f"{name} loadbalancer IP",
                                             *_proto_match(p), "-d", ip, "--dport", port, "-j", sp.ext_chain]))
        if not has_ext:
            for ip in sp.lb_ips:
                fr.append(("KUBE-EXTERNAL-SERVICES", ["-m", "comment", "--comment", ecomment, *_proto_match(p),
                                                      "-d", ip, "--dport", port, "-j", etarget]))
        if sp.node_port:
            if sp.has_endpoints:
                nr.append(("KUBE-NODEPORTS", ["-m", "comment", "--comment", name, *_proto_match(p),
                                              "--dport", str(sp.node_port), "-j", sp.ext_chain]))
            if not has_ext:
                fr.append(("KUBE-EXTERNAL-SERVICES", ["-m", "comment", "--comment", ecomment,
                                                      "-m", "addrtype", "--dst-type", "LOCAL", *_proto_match(p),
                                                      "--dport", str(sp.node_port), "-j", etarget]))
        if sp.has_internal:
            args = ["-m", "comment", "--comment", f"{name} cluster IP", *_proto_match(p),
                    "-d", sp.cluster_ip, "--dport", port]
            if kp.masquerade_all:
                nr.append((int_chain, [*args, "-j", "KUBE-MARK-MASQ"]))
            else:
                nr.append((int_chain, [*args, "!", "-s", cidr, "-j", "KUBE-MARK-MASQ"]))
        if uses_ext:
            t.nat_chains.append(sp.ext_chain)
            if not sp.etp_local:
                nr.append((sp.ext_chain, ["-m", "comment", "--comment",
                                          f"masquerade traffic for {name} external destinations",
                                          "-j", "KUBE-MARK-MASQ"]))
            else:
                nr.append((sp.ext_chain, ["-m", "comment", "--comment",
                                          f"pod traffic for {name} external destinations",
                                          "-s", cidr, "-j", sp.svc_chain]))
                nr.append((sp.ext_chain, ["-m", "comment", "--comment",
                                          f"masquerade LOCAL traffic for {name} external destinations",
                                          "-m", "addrtype", "--src-type", "LOCAL", "-j", "KUBE-MARK-MASQ"]))
                nr.append((sp.ext_chain, ["-m", "comment", "--comment",
                                          f"route LOCAL traffic for {name} external destinations",
                                          "-m", "addrtype", "--src-type", "LOCAL", "-j", sp.svc_chain]))
            if has_ext:
                nr.append((sp.ext_chain, ["-j", sp.svl_chain if sp.etp_local else sp.svc_chain]))
        for chain, eps, used in ((sp.svc_chain, sp.cluster_eps, sp.uses_cluster_endpoints),
                                 (sp.svl_chain, sp.local_eps, sp.uses_local_endpoints)):
            if not (used and eps):
                continue
            t.nat_chains.append(chain)
            if sp.affinity_s:
                for e in eps:
                    nr.append((chain, [*svc_comment(f"{name} -> {e.string}"), "-m", "recent", "--name", e.chain,
                                       "--rcheck", "--seconds", str(sp.affinity_s), "--reap", "-j", e.chain]))
            n = len(eps)
            for i, e in enumerate(eps):
                stat = ["-m", "statistic", "--mode", "random", "--probability", probability_string(n - i)] \
                    if i < n - 1 else []
                nr.append((chain, [*svc_comment(f"{name} -> {e.string}"), *stat, "-j", e.chain]))
        reach = {e.chain: e for e in (sp.cluster_eps if sp.uses_cluster_endpoints else [])}
        for e in (sp.local_eps if sp.uses_local_endpoints else []):
            reach.setdefault(e.chain, e)
        for e in sorted(reach.values(), key=lambda e: e.string):
            t.nat_chains.append(e.chain)
            base = svc_comment(name)
            nr.append((e.chain, [*base, "-s", e.ip, "-j", "KUBE-MARK-MASQ"]))
            aff = ["-m", "recent", "--name", e.chain, "--set"] if sp.affinity_s else []
            nr.append((e.chain, [*base, *aff, *_proto_match(p), "-j", "DNAT", "--to-destination", e.string]))
    dest = ["-m", "addrtype", "--dst-type", "LOCAL"]
    if not kp.localhost_nodeports:
        dest += ["!", "-d", "127.0.0.0/8"]
    nr.append(("KUBE-SERVICES", ["-m", "comment", "--comment",
                                 "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
                                 *dest, "-j", "KUBE-NODEPORTS"]))
    fr.append(("KUBE-FORWARD", ["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]))
    fr.append(("KUBE-FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules",
                                "-m", "mark", "--mark", mm, "-j", "ACCEPT"]))
    fr.append(("KUBE-FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
                                "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]))
    t.builtin = _iptables_builtin_jumps()
    return t


_NO_QUOTE = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_FLAGS = {"--rcheck", "--set", "--update", "--remove", "--reap", "--rsource", "--rdest", "--random-fully"}


def _quote_restore(v: str) -> str:
    return f'"{v}"' if (" " in v or not v) else v


def _quote_save(v: str) -> str:
    """iptables' xtables_save_string: bare only for [A-Za-z0-9_-]+."""
    if v and all(c in _NO_QUOTE for c in v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + '"'


def _restore_line(chain: str, toks: list[str]) -> str:
    out = ["-A", chain]
    quote_next = False
    for tok in toks:
        out.append(_quote_restore(tok) if quote_next else tok)
        quote_next = tok == "--comment"
    return " ".join(out)


def _addr(a: str) -> str:
    return a if "/" in a else a + "/32"


def _save_line(chain: str, toks: list[str]) -> str:
    """Canonicalise a rule the way iptables-save prints it back."""
    ipf: dict[str, tuple[bool, str]] = {}
    matches: list[tuple[str, list[tuple[bool, str, str | None]]]] = []
    target, topts = None, []
    neg = False
    i = 0
    while i < len(toks):
        tk = toks[i]
        if tk == "!":
            neg = True
            i += 1
            continue
        if tk in ("-s", "-d", "-p", "-i", "-o"):
            ipf[tk] = (neg, toks[i + 1])
            neg = False
            i += 2
            continue
        if tk == "-m":
            matches.append((toks[i + 1], []))
            i += 2
            continue
        if tk == "-j":
            target, topts = toks[i + 1], toks[i + 2:]
            break
        if tk in _FLAGS:
            matches[-1][1].append((neg, tk, None))
            i += 1
        elif tk == "--match-set":          # ipset name + direction flags
            matches[-1][1].append((neg, tk, toks[i + 1] + " " + toks[i + 2]))
            i += 3
        else:
            matches[-1][1].append((neg, tk, toks[i + 1]))
            i += 2
        neg = False
    out = ["-A", chain]
    for k in ("-s", "-d", "-i", "-o", "-p"):
        if k in ipf:
            n, v = ipf[k]
            out += (["!"] if n else []) + [k, _addr(v) if k in ("-s", "-d") else v]
    for mod, opts in matches:
        out += ["-m", mod]
        if mod == "recent":
            order = ["--set", "--rcheck", "--update", "--remove", "--seconds", "--reap", "--name"]
            opts = sorted(opts, key=lambda o: order.index(o[1]) if o[1] in order else 99)
            opts = opts + [(False, "--mask", "255.255.255.255"), (False, "--rsource", None)]
        for n, k, v in opts:
            if n:
                out.append("!")
            out.append(k)
            if v is not None:
                if k == "--comment":
                    v = _quote_save(v)
                elif k == "--probability":
                    v = saved_probability_string(float(v))
                out.append(v)
    if target is not None:
        out += ["-j", target]
        if target == "MARK" and topts[:1] == ["--or-mark"]:
            topts = ["--set-xmark", f"{topts[1]}/{topts[1]}"]
        elif target == "MARK" and topts[:1] == ["--xor-mark"]:
            topts = ["--set-xmark", f"{topts[1]}/0x0"]
        elif target == "REJECT" and not topts:
            topts = ["--reject-with", "icmp-port-unreachable"]
        out += topts
    return " ".join(out)


class _Text:
    build_rules = staticmethod(build_rules)

    @staticmethod
    def render_restore(t: Tables) -> str:
        lines = ["*filter"]
        lines += [f":{c} - [0:0]" for c in t.filter_chains]
        lines += [_restore_line(c, r) for c, r in t.filter_rules]
        lines += ["COMMIT", "*nat"]
        lines += [f":{c} - [0:0]" for c in t.nat_chains]
        lines += [_restore_line(c, r) for c, r in t.nat_rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    @staticmethod
    def render_save(t: Tables) -> str:
        lines: list[str] = []
        for table, chains_, rules in (("filter", t.filter_chains, t.filter_rules),
                                      ("nat", t.nat_chains, t.nat_rules)):
            builtins = _BUILTIN[table]
            user = sorted(set(chains_) | {"KUBE-PROXY-CANARY"})
            by_chain: dict[str, list[list[str]]] = {}
            for c, r in t.builtin.get(table, []):
                by_chain.setdefault(c, []).append(r)
            for c, r in rules:
                by_chain.setdefault(c, []).append(r)
            lines.append(f"*{table}")
            lines += [f":{c} ACCEPT [0:0]" for c in builtins]
            lines += [f":{c} - [0:0]" for c in user]
            for c in (*builtins, *user):
                lines += [_save_line(c, r) for r in by_chain.get(c, [])]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"
