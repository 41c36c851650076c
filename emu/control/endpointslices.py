"""The EndpointSlice controller (pkg/controller/endpointslice, staging
endpointslice reconciler), for Services with a selector.

* Pods: in the Service's namespace, matching its selector, with an IP and not
  in a terminal phase (terminating pods are kept, with their condition).
* Conditions (``podToEndpoint``): ``serving`` = pod ready or
  ``publishNotReadyAddresses``; ``terminating`` = deletion timestamp set;
  ``ready`` = ``publishNotReadyAddresses`` or (serving and not terminating).
* ``hostname`` = pod ``spec.hostname`` when its ``spec.subdomain`` is the
  Service's name (StatefulSet pods behind their governing Service);
  ``nodeName``; ``zone`` from the node label topology.kubernetes.io/zone;
  ``targetRef`` = the Pod.
* Ports (``getEndpointPorts``): each Service port with ``targetPort``
  resolved per pod: a number as is, a name against the pod's container ports
  of the same protocol; a pod lacking the name is left out of that port.
  Pods are grouped by their resolved port list (one group of slices per
  distinct list) and each group is cut into slices of at most
  ``MAX_ENDPOINTS_PER_SLICE`` endpoints, pods in creation order.
* Names ``<svc>-<5 chars>`` (generateName, deterministic from the seed);
  labels: the Service's labels, ``kubernetes.io/service-name``,
  ``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``
  and ``service.kubernetes.io/headless`` for headless Services;
  ``addressType: IPv4``. On an update the Service's existing slice names are
  reused in order (the real controller updates slices in place too; its
  packing heuristics -- fill the fullest slice first, no rebalancing -- are
  not reproduced: slices are re-packed). A Service selecting no pod gets one
  empty placeholder slice (no endpoints, no ports), as the controller makes.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from emu.model.objects import (
    SERVICE_NAME_LABEL, Endpoint, EndpointPort, EndpointSlice, ObjectRef, Service,
)
from emu.control.state import PodInfo

MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager --max-endpoints-per-slice default
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
ZONE_LABEL = "topology.kubernetes.io/zone"


def resolve_ports(svc: Service, pod: PodInfo) -> tuple[EndpointPort, ...]:
    out = []
    for sp in svc.ports:
        tp = sp.target_port
        if isinstance(tp, str):
            num = None
            for cp in pod.ports:
                if cp.name == tp and cp.protocol == sp.protocol:
                    num = cp.container_port
                    break
            if num is None:
                continue
        else:
            num = tp
        out.append(EndpointPort(num, sp.protocol, sp.name, sp.app_protocol))
    return tuple(out)


def endpoint(svc: Service, pod: PodInfo, zone: str | None) -> Endpoint:
    serving = svc.publish_not_ready_addresses or pod.ready
    ready = svc.publish_not_ready_addresses or (serving and not pod.terminating)
    hostname = pod.hostname if (pod.hostname and pod.subdomain == svc.name) else None
    return Endpoint((pod.ip,), ready, serving, pod.terminating, hostname,
                    pod.node or None, zone, ObjectRef("Pod", pod.name, pod.namespace))


def slice_labels(svc: Service) -> dict[str, str]:
    labels = {k: v for k, v in svc.labels.items()
              if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
    labels[SERVICE_NAME_LABEL] = svc.name
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    if svc.headless:
        labels[HEADLESS_LABEL] = ""
    return labels


def build_slices(svc: Service, pods: Iterable[PodInfo], node_zone: Mapping[str, str],
                 previous: Sequence[EndpointSlice], new_name: Callable[[], str],
                 max_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> tuple[EndpointSlice, ...]:
    """The controller's slices for ``svc`` given its selected pods (already
    filtered: IP set, not terminal), in creation order. ``previous``: the
    Service's current controller slices (names reused); ``new_name()`` makes
    a fresh name."""
    groups: dict[tuple[EndpointPort, ...], list[Endpoint]] = {}
    for pod in pods:
        ports = resolve_ports(svc, pod)
        groups.setdefault(ports, []).append(endpoint(svc, pod, node_zone.get(pod.node)))
    labels = slice_labels(svc)
    names = [s.name for s in previous]
    out = []
    if not groups:  # the controller keeps one empty "placeholder" slice
        name = names[0] if names else new_name()
        return (EndpointSlice(svc.namespace, name, labels, "IPv4", (), ()),)
    for ports, eps in groups.items():
        for i in range(0, len(eps), max_per_slice):
            name = names[len(out)] if len(out) < len(names) else new_name()
            out.append(EndpointSlice(svc.namespace, name, labels, "IPv4",
                                     tuple(eps[i:i + max_per_slice]), ports))
    return tuple(out)
