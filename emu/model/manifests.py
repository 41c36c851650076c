"""The loaded cluster description (``Model``) and the checks that span objects."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator

from .load import ManifestError, RawDoc, read_docs
from .objects import (
    BUILTIN_NAMESPACES, NAMESPACE_NAME_LABEL, ClusterSettings, EndpointSlice, Ignored,
    Namespace, Node, Pod, Service, Workload,
)
from .validate import parse_doc


@dataclass
class Model:
    """Everything the manifests said, typed and validated.

    Namespaced kinds are dicts keyed by ``(namespace, name)``, cluster-scoped
    ones by name; all keep the order in which the manifests gave them.
    ``namespaces`` also holds the built-in namespaces and any namespace an
    object uses without defining it (those have ``source.line == 0``).
    ``nodes`` holds only Node objects from the manifests; when it is empty,
    ``settings.nodes`` names the nodes to create (see ``node_names``).
    """

    settings: ClusterSettings = field(default_factory=ClusterSettings)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    deployments: dict[tuple[str, str], Workload] = field(default_factory=dict)
    replicasets: dict[tuple[str, str], Workload] = field(default_factory=dict)
    statefulsets: dict[tuple[str, str], Workload] = field(default_factory=dict)
    daemonsets: dict[tuple[str, str], Workload] = field(default_factory=dict)
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    endpointslices: dict[tuple[str, str], EndpointSlice] = field(default_factory=dict)
    ignored: list[Ignored] = field(default_factory=list)

    def node_names(self) -> tuple[str, ...]:
        return tuple(self.nodes) if self.nodes else self.settings.nodes

    def workloads(self) -> Iterator[Workload]:
        for d in (self.deployments, self.replicasets, self.statefulsets, self.daemonsets):
            yield from d.values()

    def slices_for(self, service: Service) -> list[EndpointSlice]:
        """User-supplied EndpointSlices of a Service (label kubernetes.io/service-name)."""
        return [s for s in self.endpointslices.values()
                if s.namespace == service.namespace and s.service_name == service.name]


Manifests = Model

_BY_KIND = {
    "Namespace": "namespaces", "Node": "nodes", "Pod": "pods", "Deployment": "deployments",
    "ReplicaSet": "replicasets", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
    "Service": "services", "EndpointSlice": "endpointslices",
}


def _kind(obj) -> str:
    return obj.kind if isinstance(obj, Workload) else type(obj).__name__


def build(docs: Iterable[RawDoc]) -> Model:
    """Typed objects from raw documents, with the cross-object checks."""
    m = Model()
    settings_obj = None
    for doc in docs:
        obj = parse_doc(doc)
        if isinstance(obj, Ignored):
            m.ignored.append(obj)
            continue
        if isinstance(obj, ClusterSettings):
            if settings_obj is not None:
                raise obj.source.error(
                    None, f"defined twice (first at {settings_obj.source}); give one ClusterSettings")
            settings_obj = m.settings = obj
            continue
        table = getattr(m, _BY_KIND[_kind(obj)])
        if obj.key in table:
            raise obj.source.error(
                "metadata.name", f"defined twice (first at {table[obj.key].source})")
        table[obj.key] = obj
    _namespaces(m)
    _check_nodes(m)
    _check_services(m)
    return m


def _namespaces(m: Model) -> None:
    explicit = dict(m.namespaces)
    m.namespaces = {}
    used = list(BUILTIN_NAMESPACES) + list(explicit)
    for table in (m.pods, m.deployments, m.replicasets, m.statefulsets, m.daemonsets,
                  m.services, m.endpointslices):
        used.extend(ns for ns, _ in table)
    for ns in used:
        if ns not in m.namespaces:
            m.namespaces[ns] = explicit.get(ns) or Namespace(ns, {NAMESPACE_NAME_LABEL: ns})


def _check_nodes(m: Model) -> None:
    s = m.settings
    if m.nodes and s.nodes_given:
        first = next(iter(m.nodes.values()))
        raise s.source.error("nodes", f"is set, but the manifests also define Node objects "
                                      f"({first.name} at {first.source}); keep one of the two")
    taken: list[tuple[ipaddress.IPv4Network, Node]] = []
    ips: dict[ipaddress.IPv4Address, Node] = {}
    for node in m.nodes.values():
        for cidr in node.pod_cidrs:
            path = "spec.podCIDRs[0]" if node.source.has("spec.podCIDRs") else "spec.podCIDR"
            if not cidr.subnet_of(s.pod_cidr):
                raise node.source.error(path, f"{cidr} is outside the cluster podCIDR {s.pod_cidr}")
            for other_cidr, other in taken:
                if cidr.overlaps(other_cidr):
                    raise node.source.error(
                        path, f"{cidr} overlaps {other_cidr} of Node {other.name} ({other.source})")
            taken.append((cidr, node))
        ip = node.internal_ip
        if ip is not None:
            for i, a in enumerate(node.addresses):
                if a.type == "InternalIP":
                    path = f"status.addresses[{i}].address"
                    break
            for net, what in ((s.pod_cidr, "podCIDR"), (s.service_cidr, "serviceCIDR")):
                if ip in net:
                    raise node.source.error(path, f"InternalIP {ip} is inside the {what} {net}")
            if ip in ips:
                raise node.source.error(
                    path, f"InternalIP {ip} is also Node {ips[ip].name}'s ({ips[ip].source})")
            ips[ip] = node


def _check_services(m: Model) -> None:
    s = m.settings
    lo, hi = s.node_port_range
    net = s.service_cidr
    reserved = {s.kubernetes_service_ip: ("default", "kubernetes"),
                s.dns_service_ip: ("kube-system", "kube-dns")}
    cluster_ips: dict[ipaddress.IPv4Address, Service] = {}
    node_ports: dict[int, tuple[Service, str]] = {}
    for svc in m.services.values():
        if svc.cluster_ip and svc.cluster_ip != "None":
            path = "spec.clusterIP" if svc.source.has("spec.clusterIP") else "spec.clusterIPs[0]"
            ip = ipaddress.IPv4Address(svc.cluster_ip)
            if ip not in net:
                raise svc.source.error(path, f"{ip} is not in the serviceCIDR {net}")
            if ip in (net.network_address, net.broadcast_address):
                raise svc.source.error(path, f"{ip} is the {'network' if ip == net.network_address else 'broadcast'} "
                                             f"address of the serviceCIDR {net}")
            owner = reserved.get(ip)
            if owner and owner != svc.key:
                raise svc.source.error(path, f"{ip} is reserved for the Service {owner[0]}/{owner[1]}")
            if ip in cluster_ips:
                other = cluster_ips[ip]
                raise svc.source.error(path, f"{ip} is already the clusterIP of Service "
                                             f"{other.namespace}/{other.name} ({other.source})")
            cluster_ips[ip] = svc
        for i, p in enumerate(svc.ports):
            if p.node_port is None:
                continue
            path = f"spec.ports[{i}].nodePort"
            if not lo <= p.node_port <= hi:
                raise svc.source.error(path, f"{p.node_port} is outside the NodePort range {lo}-{hi}")
            prev = node_ports.get(p.node_port)
            if prev and prev[0] is not svc:
                other = prev[0]
                raise svc.source.error(path, f"{p.node_port} is already taken by Service "
                                             f"{other.namespace}/{other.name} ({other.source.file}:{other.source.line_of(prev[1])})")
            node_ports[p.node_port] = (svc, path)


def load(paths: Iterable[str] | str, stdin: IO[str] | str | None = None) -> Model:
    """Load manifests as ``kubectl apply -f`` takes them: files, folders
    (recursive, sorted) or "-" for stdin (``stdin``: a stream or a string,
    default ``sys.stdin``). Raises ``ManifestError`` on any bad input."""
    if isinstance(paths, str):
        paths = [paths]
    try:
        return build(read_docs(paths, stdin))
    except ManifestError:
        raise
    except RecursionError:
        raise ManifestError("manifest is nested too deeply") from None
