"""`emu show`: the tables of a cluster built from manifests, as the real
tools print them (kubectl get, ip route, ip neigh, bridge fdb,
iptables-save, conntrack -L, DNS answers). Each function returns a Table
(title, columns, rows) or, for iptables, text; the CLI renders them."""
from __future__ import annotations

from dataclasses import dataclass

from emu.cluster import Cluster
from emu.errors import EmuError
from emu.wire import ethernet, ipv4

KINDS = ("pods", "services", "endpoints", "routes", "neigh", "fdb", "iptables", "conntrack", "dns")


@dataclass
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


def show(cluster: Cluster, kind: str, node: str | None = None) -> list[Table | str]:
    if kind not in KINDS:
        raise EmuError(f"show: unknown table {kind!r}; one of {', '.join(KINDS)}")
    if node is not None and node not in cluster.fabric.nodes:
        raise EmuError(f"show: no node {node!r}; nodes: {', '.join(cluster.fabric.nodes)}")
    if kind in ("pods", "services", "endpoints", "dns"):
        return [globals()[f"_{kind}"](cluster)]
    nodes = [node] if node else list(cluster.fabric.nodes)
    return [globals()[f"_{kind}"](cluster, n) for n in nodes]


def _pods(c: Cluster) -> Table:
    rows = []
    for p in c.state.pods.values():
        status = "Pending" if not p.node else "Terminating" if p.terminating else "Running"
        rows.append((p.namespace, p.name, "1/1" if p.ready and p.node else "0/1", status, p.ip or "<none>",
                     p.node or "<none>"))
    return Table("pods", ("NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE"), rows)


def _services(c: Cluster) -> Table:
    rows = []
    for info in c.state.services.values():
        s = info.service
        ports = ",".join(f"{p.port}:{np}/{p.protocol}" if np else f"{p.port}/{p.protocol}"
                         for p, np in zip(s.ports, info.node_ports or (None,) * len(s.ports)))
        external = ",".join(info.load_balancer_ips or s.external_ips) or (
            s.external_name if s.type == "ExternalName" else "<none>")
        cluster_ip = info.cluster_ip or ("None" if s.type != "ExternalName" else "<none>")
        rows.append((s.namespace, s.name, s.type, cluster_ip, external, ports or "<none>"))
    return Table("services", ("NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"), rows)


def _endpoints(c: Cluster) -> Table:
    rows = []
    for (ns, svc), slices in c.state.slices.items():
        for s in slices:
            ports = ",".join(f"{p.name + ':' if p.name else ''}{p.port}/{p.protocol}" for p in s.ports)
            eps = []
            for e in s.endpoints:
                flags = "ready" if e.ready else "serving" if e.serving else "not ready"
                flags += ",terminating" if e.terminating else ""
                eps += [f"{a} ({flags}, {e.node_name or '-'})" for a in e.addresses]
            rows.append((ns, s.name, svc, ports or "<unset>", "\n".join(eps) or "<none>"))
    return Table("endpointslices", ("NAMESPACE", "NAME", "SERVICE", "PORTS", "ENDPOINTS"), rows)


def _routes(c: Cluster, node: str) -> Table:
    ns = c.fabric.nodes[node].ns
    rows = []
    for r in sorted(ns.routes, key=lambda r: (-r.plen, r.prefix)):
        line = r.text(ns)
        if r.proto == "kernel":
            line += f" proto kernel scope link src {ipv4.ntoa(r.src)}"
        elif r.proto != "static":
            line += f" proto {r.proto}" if r.proto != "flannel" else ""
        rows.append((line,))
    return Table(f"{node}: ip route", ("ROUTE",), rows)


def _neigh(c: Cluster, node: str) -> Table:
    ns = c.fabric.nodes[node].ns
    rows = [(ipv4.ntoa(ip), ns.ifaces[i].name, ethernet.mac_to_str(n.mac) if n.mac else "-", n.state)
            for (i, ip), n in sorted(ns.neigh.items())]
    return Table(f"{node}: ip neigh", ("ADDRESS", "DEV", "LLADDR", "STATE"), rows)


def _fdb(c: Cluster, node: str) -> Table:
    from kernels import fdb as fdbk

    n = c.fabric.nodes[node]
    rows = [(ethernet.mac_to_str(mac), "flannel.1", f"dst {ipv4.ntoa(dst)} self permanent")
            for mac, dst in n.ns.iface("flannel.1").fdb.items()]
    e = fdbk.entries(n.bridge.fdb)
    for mac, port, local in zip(e.mac.tolist(), e.port.tolist(), e.local.tolist()):
        dev = n.bridge.bports[port].name.split("/")[-1] if port >= 0 else "cni0"
        rows.append((ethernet.mac_to_str(mac), dev, "master cni0 permanent" if local else "master cni0"))
    return Table(f"{node}: bridge fdb show", ("MAC", "DEV", ""), rows)


def _iptables(c: Cluster, node: str) -> str:
    proxy = c.proxies[node]
    text = proxy.iptables_save()
    if proxy.mode == "ipvs":
        text += "\n# ipvsadm-save -n\n" + proxy.ipvs.ipvsadm_save()
    return f"# {node}\n{text}"


def _conntrack(c: Cluster, node: str) -> Table:
    from emu.dataplane.conntrack import TCP_STATE_NAMES

    rows = []
    for e in c.fabric.nodes[node].ns.conntrack.entries():
        proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(e["proto"], str(e["proto"]))
        state = TCP_STATE_NAMES[e["state"] & 0x7F] if e["proto"] == 6 else ""
        rows.append((proto, state,
                     f"src={ipv4.ntoa(e['orig_src'])} dst={ipv4.ntoa(e['orig_dst'])} "
                     f"sport={e['orig_sport']} dport={e['orig_dport']}",
                     f"src={ipv4.ntoa(e['reply_src'])} dst={ipv4.ntoa(e['reply_dst'])} "
                     f"sport={e['reply_sport']} dport={e['reply_dport']}",
                     "ASSURED" if e["status"] & 4 else "[UNREPLIED]" if not e["status"] & 2 else ""))
    return Table(f"{node}: conntrack -L", ("PROTO", "STATE", "ORIGINAL", "REPLY", "FLAGS"), rows)


def _dns(c: Cluster) -> Table:
    from emu.hosts.coredns import zone_from_state

    zone = zone_from_state(c.state)
    domain = c.state.settings.cluster_domain
    rows = []
    for info in c.state.services.values():
        s = info.service
        name = f"{s.name}.{s.namespace}.svc.{domain}"
        qtypes = ["CNAME"] if s.type == "ExternalName" else ["A"]
        qtypes += ["SRV"] if any(p.name for p in s.ports) else []
        for qtype in qtypes:
            for rr in zone.answer(name, qtype).answer:
                data = " ".join(map(str, rr.rdata)) if isinstance(rr.rdata, tuple) else str(rr.rdata)
                rows.append((rr.name, str(rr.ttl), rr.type, data))
    return Table(f"DNS answers (zone {domain})", ("NAME", "TTL", "TYPE", "DATA"), rows)
