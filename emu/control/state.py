"""The cluster as the controllers leave it: what kube-proxy, DNS and the CNI
plugin read to build tables. The model (emu.model) is what the user wrote;
this is what the cluster made of it: pods with names, nodes and addresses,
Services with their allocated IPs and ports, and EndpointSlices.

Plain frozen dataclasses and dicts, no behaviour. Addresses are dotted-quad
strings. EndpointSlices reuse the model's type (a user-supplied slice and a
generated one look the same, as in the API)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from emu.model.objects import ClusterSettings, ContainerPort, EndpointSlice, Service


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: str                      # InternalIP: the node's address on the underlay
    pod_cidr: str                # "10.244.1.0/24": its share of the pod CIDR
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True           # False once the node has failed


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str
    ip: str                      # the node's IP for hostNetwork pods
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()   # every container's ports
    ready: bool = True
    terminating: bool = False
    host_network: bool = False
    hostname: str | None = None  # spec.hostname (StatefulSet pods: their name)
    subdomain: str | None = None  # spec.subdomain (StatefulSet pods: its serviceName)
    owner: tuple[str, str] | None = None  # (kind, name) of the workload that made it

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class ServiceInfo:
    service: Service
    cluster_ip: str | None       # None: headless or ExternalName
    node_ports: tuple[int | None, ...] = ()   # one per service port; None where there is none
    load_balancer_ips: tuple[str, ...] = ()   # status.loadBalancer.ingress, or allocated

    @property
    def key(self) -> tuple[str, str]:
        return (self.service.namespace, self.service.name)


@dataclass
class ClusterState:
    settings: ClusterSettings
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    pods: dict[tuple[str, str], PodInfo] = field(default_factory=dict)
    services: dict[tuple[str, str], ServiceInfo] = field(default_factory=dict)
    # EndpointSlices by Service (namespace, service name), generated and user-supplied
    slices: dict[tuple[str, str], tuple[EndpointSlice, ...]] = field(default_factory=dict)
    namespaces: tuple[str, ...] = ()
    # the controllers' own bookkeeping (allocators, IPAM, scheduler, indexes)
    controllers: object = field(default=None, repr=False, compare=False)
