"""Typed Kubernetes objects: only what networking needs, already defaulted
and validated (see validate.py). No behaviour lives here.

Every object has ``source`` (file and line of the object; ``source.line_of``
finds the line of any field path) so later stages can still point the user
at the right place (``source.error(...)``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

from .load import ManifestError, Map, Seq
from .selectors import LabelSelector

DEFAULT_NAMESPACE = "default"
# Namespaces every cluster has; they exist even when no manifest defines them.
BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_SESSION_AFFINITY_TIMEOUT = 10800  # seconds, 3 h


@dataclass(frozen=True)
class Source:
    """Where an object was defined. ``line`` is the object's first line."""

    file: str
    line: int
    obj: str = ""  # "Service default/web"
    tree: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def _walk(self, path: str):
        node, line, found = self.tree, self.line, True
        for part in _split_path(path):
            if isinstance(node, Map) and isinstance(part, str) and part in node:
                line, node = node.line_of(part), node[part]
            elif isinstance(node, Seq) and isinstance(part, int) and 0 <= part < len(node):
                line, node = node.line_of(part), node[part]
            else:
                found = False
                break
        return line, found

    def has(self, path: str) -> bool:
        """Is this field path present in the manifest?"""
        return self._walk(path)[1]

    def line_of(self, path: str) -> int:
        """Line of a field path like ``spec.ports[1].nodePort`` (the nearest
        existing ancestor if the field is absent)."""
        return self._walk(path)[0]

    def error(self, path: str | None, problem: str) -> ManifestError:
        line = self.line_of(path) if path else self.line
        return ManifestError(problem, self.file, line, self.obj or None, path)


def _split_path(path: str) -> list:
    parts: list = []
    for piece in path.split("."):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        while rest:
            idx, _, rest = rest.partition("]")
            parts.append(int(idx) if idx.isdigit() else idx)
            rest = rest.lstrip("[")
    return parts


NO_SOURCE = Source("<built-in>", 0)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClusterSettings:
    """``apiVersion: emu.dev/v1alpha1, kind: ClusterSettings``; fields at top
    level (as kubeadm's and kube-proxy's configuration kinds). Defaults are
    kubeadm + Flannel's."""

    nodes: tuple[str, ...] = ("node-1", "node-2")  # used only without Node objects
    nodes_given: bool = False  # True if the user set `nodes`
    pod_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.244.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/12")
    cluster_domain: str = "cluster.local"
    cni: str = "flannel"  # flannel | calico | cilium (only flannel is built so far)
    kube_proxy_mode: str = "iptables"  # iptables | ipvs
    ipvs_scheduler: str = "rr"  # rr | mh (ipvs mode only)
    node_port_range: tuple[int, int] = (30000, 32767)
    node_cidr_mask_size: int = 24
    underlay_mtu: int = 1500        # the nodes' NICs (eth0)
    mtu: int | None = None          # pods' veth/cni0 MTU (the CNI config's "mtu"); None: flannel's underlay - 50
    conntrack_cleanup: bool = True  # kube-proxy deletes stale UDP conntrack entries after each sync
    conntrack_max: int = 262_144    # net.netfilter.nf_conntrack_max on every node
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def kubernetes_service_ip(self) -> ipaddress.IPv4Address:
        """The `default/kubernetes` Service VIP: first host of the service CIDR."""
        return self.service_cidr[1]

    @property
    def dns_service_ip(self) -> ipaddress.IPv4Address:
        """The `kube-system/kube-dns` VIP: the 10th address (kubeadm)."""
        return self.service_cidr[10]


# ---------------------------------------------------------------- cluster objects


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str]  # always includes kubernetes.io/metadata.name
    source: Source = field(default=NO_SOURCE, compare=False)  # NO_SOURCE: built in or only referenced

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class NodeAddress:
    type: str  # InternalIP, ExternalIP, Hostname, ...
    address: str


@dataclass(frozen=True)
class Node:
    name: str
    labels: Mapping[str, str]
    addresses: tuple[NodeAddress, ...] = ()
    pod_cidrs: tuple[ipaddress.IPv4Network, ...] = ()  # spec.podCIDRs (or podCIDR)
    unschedulable: bool = False
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def key(self) -> str:
        return self.name

    @property
    def internal_ip(self) -> ipaddress.IPv4Address | None:
        for a in self.addresses:
            if a.type == "InternalIP":
                return ipaddress.IPv4Address(a.address)
        return None


# ---------------------------------------------------------------- pods


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"  # TCP | UDP | SCTP
    name: str | None = None
    host_port: int | None = None


@dataclass(frozen=True)
class Container:
    name: str
    ports: tuple[ContainerPort, ...] = ()
    image: str = ""
    command: tuple[str, ...] = ()   # the image's entrypoint when empty
    args: tuple[str, ...] = ()      # emu.hosts.apps reads these to pick what the pod serves


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    node_name: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    host_network: bool = False
    hostname: str | None = None
    subdomain: str | None = None
    dns_policy: str = "ClusterFirst"

    def ports(self) -> tuple[ContainerPort, ...]:
        return tuple(p for c in self.containers for p in c.ports)

    def named_port(self, name: str, protocol: str = "TCP") -> int | None:
        """Resolve a Service's named targetPort against this pod (None if absent)."""
        for p in self.ports():
            if p.name == name and p.protocol == protocol:
                return p.container_port
        return None


@dataclass(frozen=True)
class PodTemplate:
    labels: Mapping[str, str]
    spec: PodSpec
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    spec: PodSpec
    # status, if the manifest carries it (kubectl get -o yaml); None = unknown
    phase: str | None = None
    ready: bool | None = None  # status.conditions[type=Ready]
    pod_ips: tuple[str, ...] = ()
    host_ip: str | None = None
    terminating: bool = False  # metadata.deletionTimestamp set
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Workload:
    """Deployment, ReplicaSet, StatefulSet or DaemonSet (``kind`` says which).
    ``replicas`` is None for a DaemonSet (one per eligible node)."""

    kind: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    selector: LabelSelector
    template: PodTemplate
    replicas: int | None = 1
    service_name: str | None = None  # StatefulSet spec.serviceName
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


# ---------------------------------------------------------------- services


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str  # number, or a container port name
    protocol: str = "TCP"
    name: str | None = None  # "" in the API is None here
    node_port: int | None = None  # as given; allocation is the controllers' job
    app_protocol: str | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    labels: Mapping[str, str]
    type: str  # ClusterIP | NodePort | LoadBalancer | ExternalName
    ports: tuple[ServicePort, ...]
    # None: no selector (absent or empty): endpoints come from user EndpointSlices
    selector: Mapping[str, str] | None = None
    # None: allocate one; "None": headless; else the requested IP. Same for cluster_ips.
    cluster_ip: str | None = None
    cluster_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    external_name: str | None = None
    session_affinity: str = "None"  # None | ClientIP
    session_affinity_timeout: int = DEFAULT_SESSION_AFFINITY_TIMEOUT
    external_traffic_policy: str | None = None  # Cluster | Local; NodePort/LB only
    internal_traffic_policy: str | None = "Cluster"  # None for ExternalName
    load_balancer_ip: str | None = None
    load_balancer_ingress_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    publish_not_ready_addresses: bool = False
    allocate_load_balancer_node_ports: bool | None = None  # True by default for LB
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


# ---------------------------------------------------------------- endpoint slices


@dataclass(frozen=True)
class ObjectRef:
    kind: str | None
    name: str | None
    namespace: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    # API defaults: ready and serving nil -> True, terminating nil -> False
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    target_ref: ObjectRef | None = None


@dataclass(frozen=True)
class EndpointPort:
    port: int | None  # None: "all ports" (API semantics of an unset port)
    protocol: str = "TCP"
    name: str | None = None  # "" in the API is None here
    app_protocol: str | None = None


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    labels: Mapping[str, str]
    address_type: str  # IPv4 | IPv6 | FQDN
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]
    source: Source = field(default=NO_SOURCE, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def service_name(self) -> str | None:
        return self.labels.get(SERVICE_NAME_LABEL)


class Ignored(NamedTuple):
    """A document of a kind the model does not handle (listed, not fatal)."""

    file: str
    line: int
    kind: str  # "apiVersion/kind", e.g. "apiextensions.k8s.io/v1/CustomResourceDefinition"
    name: str | None
