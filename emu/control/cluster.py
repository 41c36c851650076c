"""The control plane: a Model in, a ClusterState out, and changes applied
through the same controllers.

    from emu.model import load
    from emu.control import cluster
    state = cluster.build(load(["manifests/"]), seed=1)
    cluster.scale(state, None, "default", "web", 5)
    cluster.delete_pod(state, "default", "web-6c9f8b7d45-x2k9p")
    cluster.fail_node(state, "node-2")
    cluster.apply(state, load("-", stdin=more_yaml))

``build`` returns a new ClusterState; every later call MUTATES that state in
place (dicts updated, PodInfo/ServiceInfo/EndpointSlice values replaced, never
changed) and returns it, so a caller may diff the old values it kept. The
controllers' own bookkeeping (allocators, IPAM, scheduler, indexes) rides
along with the state (``controllers(state)``).

Order of creation in ``build`` (it decides pod IPs): nodes (node order),
Services (user-given clusterIPs/nodePorts reserved first, then the built-in
``default/kubernetes`` and ``kube-system/kube-dns``, then the user's Services
in manifest order), standalone Pods with a given IP, the built-in CoreDNS
Deployment, then the user's Pods and workloads in manifest order (file, then
line); finally every Service's EndpointSlices.

Node failure (``fail_node``): the node turns NotReady and the node lifecycle
controller marks its pods not ready at once (their endpoints: ready=false,
serving=false). Pods are NOT moved: taint-based eviction deletes them only
after ``tolerationSeconds`` (300 s by default, ``EVICTION_TIMEOUT``); call
``fail_node(..., evict=True)`` (or ``evict_node`` later) to play that out:
the pods (not DaemonSet pods, which tolerate it) get a deletion timestamp and
stay Terminating, since their kubelet is gone to confirm, and their
ReplicaSets create replacements on other nodes; StatefulSet pods are not
replaced (the name is still taken), as in a real cluster.
``recover_node`` brings the node back (its terminating pods then go away).
"""
from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Iterable

from emu.errors import EmuError
from emu.model.manifests import Model
from emu.model.objects import (
    SERVICE_NAME_LABEL, Container, ContainerPort, Endpoint, EndpointPort, EndpointSlice,
    Namespace, Node, Pod, PodSpec, PodTemplate, Service, ServicePort, Source, Workload,
)
from emu.model.selectors import LabelSelector
from emu.control.alloc import ServiceAllocator
from emu.control.endpointslices import build_slices
from emu.control.ipam import HostLocal, NodeCIDRs, node_ips
from emu.control.state import ClusterState, NodeInfo, PodInfo
from emu.control.workloads import (
    Scheduler, generate_name, replicaset_name, scale_down_order, template_hash,
)

EVICTION_TIMEOUT = 300  # s: default tolerationSeconds for not-ready/unreachable taints
ZONE_LABEL = "topology.kubernetes.io/zone"


def _builtin(obj: str) -> Source:
    return Source("<built-in>", 0, obj)


def kubernetes_service(settings) -> Service:
    return Service("default", "kubernetes", {"component": "apiserver", "provider": "kubernetes"},
                   "ClusterIP", (ServicePort(443, 6443, "TCP", "https"),), None,
                   str(settings.kubernetes_service_ip), (str(settings.kubernetes_service_ip),),
                   source=_builtin("Service default/kubernetes"))


def kube_dns_service(settings) -> Service:
    ip = str(settings.dns_service_ip)
    return Service(
        "kube-system", "kube-dns",
        {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
        "ClusterIP",
        (ServicePort(53, 53, "UDP", "dns"), ServicePort(53, 53, "TCP", "dns-tcp"),
         ServicePort(9153, 9153, "TCP", "metrics")),
        {"k8s-app": "kube-dns"}, ip, (ip,), source=_builtin("Service kube-system/kube-dns"))


def coredns_deployment() -> Workload:
    spec = PodSpec((Container("coredns", (ContainerPort(53, "UDP", "dns"),
                                          ContainerPort(53, "TCP", "dns-tcp"),
                                          ContainerPort(9153, "TCP", "metrics"))),),
                   node_selector={"kubernetes.io/os": "linux"}, dns_policy="Default")
    return Workload("Deployment", "kube-system", "coredns", {"k8s-app": "kube-dns"},
                    LabelSelector.of({"k8s-app": "kube-dns"}),
                    PodTemplate({"k8s-app": "kube-dns"}, spec), 2,
                    source=_builtin("Deployment kube-system/coredns"))


class Controllers:
    """Everything the controllers remember between calls."""

    def __init__(self, model: Model, seed: int):
        self.seed = seed
        self.settings = model.settings
        self.state = ClusterState(model.settings)
        self.services: dict[tuple[str, str], Service] = {}
        self.user_slices: dict[tuple[str, str], dict[str, EndpointSlice]] = {}
        self.gen_slices: dict[tuple[str, str], tuple[EndpointSlice, ...]] = {}
        self.workloads: dict[tuple[str, str, str], Workload] = {}  # (kind, ns, name)
        self.replicas: dict[tuple[str, str, str], int] = {}
        self.deploy_rs: dict[tuple[str, str], str] = {}  # Deployment -> its current RS name
        self.alloc = ServiceAllocator(model.settings, seed)
        self.cidrs = NodeCIDRs(model.settings.pod_cidr, model.settings.node_cidr_mask_size)
        self.hostlocal: dict[str, HostLocal] = {}
        self.sched = Scheduler()
        # pods
        self.seq: dict[tuple[str, str], int] = {}
        self._next_seq = 0
        self.spec: dict[tuple[str, str], PodSpec] = {}
        self.source: dict[tuple[str, str], Source] = {}
        self.owner: dict[tuple[str, str], tuple[str, str, str] | None] = {}
        self.owned: dict[tuple[str, str, str], dict[tuple[str, str], None]] = {}
        self.terminal: set[tuple[str, str]] = set()
        self.by_label: dict[str, dict[tuple[str, str], set]] = {}
        self.pending: dict[tuple[str, str], None] = {}
        self.name_counter: dict[tuple, int] = {}
        # services by (namespace, one selector pair) for change tracking
        self.svc_by_label: dict[str, dict[tuple[str, str], set]] = {}
        self.dirty: set[tuple[str, str]] | None = None  # None: bulk mode (build)
        self.zone: dict[str, str] = {}

    # ------------------------------------------------------------ helpers

    def _suffix_name(self, base: str, *scope) -> str:
        """A fresh generated name ``base<5 chars>`` unique in its namespace."""
        ns = scope[0]
        while True:
            n = self.name_counter.get(scope, 0)
            self.name_counter[scope] = n + 1
            name = generate_name(base, self.seed, *scope, n)
            if (ns, name) not in self.state.pods:
                return name

    def _set_pod(self, info: PodInfo) -> None:
        key = info.key
        old = self.state.pods.get(key)
        self.state.pods[key] = info
        if old is not None and old.labels is not info.labels:
            self._unindex(old)
            self._index(info)
        self._touch(old)
        self._touch(info)

    def _index(self, info: PodInfo) -> None:
        idx = self.by_label.setdefault(info.namespace, {})
        key = info.key
        for kv in info.labels.items():
            s = idx.get(kv)
            if s is None:
                s = idx[kv] = set()
            s.add(key)

    def _unindex(self, info: PodInfo) -> None:
        idx = self.by_label.get(info.namespace, {})
        for kv in info.labels.items():
            s = idx.get(kv)
            if s is not None:
                s.discard(info.key)

    def _touch(self, info: PodInfo | None) -> None:
        if info is None or self.dirty is None:
            return
        idx = self.svc_by_label.get(info.namespace)
        if not idx:
            return
        for kv in info.labels.items():
            for skey in idx.get(kv, ()):
                sel = self.services[skey].selector
                if all(info.labels.get(k) == v for k, v in sel.items()):
                    self.dirty.add(skey)

    def select(self, namespace: str, match: dict) -> list[tuple[str, str]]:
        """Pods of a namespace whose labels include every pair of ``match``,
        in creation order."""
        idx = self.by_label.get(namespace)
        if not idx or not match:
            return []
        sets = sorted((idx.get(kv, set()) for kv in match.items()), key=len)
        found = set(sets[0])
        for s in sets[1:]:
            if not found:
                break
            found &= s
        seq = self.seq
        return sorted(found, key=seq.__getitem__)

    # ------------------------------------------------------------ nodes

    def add_nodes(self, nodes: list[tuple[str, Node | None]]) -> None:
        for name, node in nodes:
            if node is not None:
                for cidr in node.pod_cidrs:
                    self.cidrs.occupy(cidr, name)
        taken = {n.ip for n in self.state.nodes.values()}
        given = [node.internal_ip if node is not None else None for _, node in nodes]
        for ip, (name, node) in zip(given, nodes):
            if ip is not None and str(ip) in taken:
                raise node.source.error("status.addresses", f"InternalIP {ip} is already a node's address")
        ips = node_ips(given) if not taken else self._node_ips_more(given, taken)
        for ip, (name, node) in zip(ips, nodes):
            cidr = node.pod_cidrs[0] if node is not None and node.pod_cidrs else self.cidrs.allocate(name)
            labels = dict(node.labels) if node is not None else {}
            labels.setdefault("kubernetes.io/arch", "amd64")
            labels.setdefault("kubernetes.io/hostname", name)
            labels.setdefault("kubernetes.io/os", "linux")
            info = NodeInfo(name, str(ip), str(cidr), labels, True)
            self.state.nodes[name] = info
            self.hostlocal[name] = HostLocal(ipaddress.IPv4Network(cidr))
            self.sched.add_node(name, labels, node.unschedulable if node is not None else False)
            if ZONE_LABEL in labels:
                self.zone[name] = labels[ZONE_LABEL]

    def _node_ips_more(self, given, taken):
        # allocate after the existing nodes: pretend they were given
        prior = [ipaddress.IPv4Address(t) for t in taken]
        return node_ips(prior + list(given))[len(prior):]

    # ------------------------------------------------------------ pods

    def create_pod(self, ns: str, name: str, spec: PodSpec, labels, owner, src: Source,
                   hostname: str | None = None, subdomain: str | None = None,
                   given: Pod | None = None, node: str | None = None,
                   path: str = "spec.nodeName") -> PodInfo:
        key = (ns, name)
        given_ip = given.pod_ips[0] if given is not None and given.pod_ips and not spec.host_network else None
        if node is None and spec.node_name:
            node = spec.node_name
        if node is not None and node not in self.state.nodes:
            raise _error(src, path, f"no Node named {node!r} (nodes: {_names(self.state.nodes)})")
        if node is None and given_ip is not None:
            ip = ipaddress.IPv4Address(given_ip)
            for n in self.state.nodes.values():
                if ip in ipaddress.IPv4Network(n.pod_cidr):
                    node = n.name
                    break
            else:
                raise _error(src, "status.podIPs", f"{given_ip} is not inside any node's pod CIDR")
        if node is None:
            node = self.sched.pick(spec.node_selector) or ""
        ip = ""
        if node:
            self.sched.place(node)
            if spec.host_network:
                ip = self.state.nodes[node].ip
            elif given_ip is not None:
                problem = self.hostlocal[node].reserve(given_ip, key)
                if problem:
                    self.sched.unplace(node)
                    raise _error(src, "status.podIPs", f"{problem} (node {node})")
                ip = given_ip
            else:
                ip = self.hostlocal[node].allocate(key) or ""
        else:
            self.pending[key] = None
        ready = True
        terminating = False
        if given is not None:
            terminating = given.terminating
            if given.ready is not None:
                ready = given.ready
            elif given.phase not in (None, "Running"):
                ready = False
            if given.phase in ("Succeeded", "Failed"):
                self.terminal.add(key)
        if node and not self.state.nodes[node].ready:
            ready = False
        info = PodInfo(ns, name, node, ip, labels, spec.ports(), ready and bool(node), terminating,
                       spec.host_network, hostname if hostname is not None else spec.hostname,
                       subdomain if subdomain is not None else spec.subdomain,
                       (owner[0], owner[2]) if owner else None)
        self.seq[key] = self._next_seq
        self._next_seq += 1
        self.spec[key], self.source[key], self.owner[key] = spec, src, owner
        if owner:
            self.owned.setdefault(owner, {})[key] = None
        self._index(info)
        self._set_pod(info)
        return info

    def remove_pod(self, key: tuple[str, str]) -> None:
        info = self.state.pods.pop(key)
        self._unindex(info)
        if info.node:
            self.sched.unplace(info.node)
            if info.ip and not info.host_network:
                self.hostlocal[info.node].release(info.ip)
        owner = self.owner.pop(key, None)
        if owner:
            self.owned[owner].pop(key, None)
        for d in (self.seq, self.spec, self.source, self.pending):
            d.pop(key, None)
        self.terminal.discard(key)
        self._touch(info)

    def schedule_pending(self) -> None:
        for key in list(self.pending):
            info = self.state.pods[key]
            node = self.sched.pick(self.spec[key].node_selector)
            if not node:
                continue
            del self.pending[key]
            self.sched.place(node)
            spec = self.spec[key]
            ip = self.state.nodes[node].ip if spec.host_network else (self.hostlocal[node].allocate(key) or "")
            self._set_pod(replace(info, node=node, ip=ip, ready=True))

    # ------------------------------------------------------------ workloads

    def add_workload(self, w: Workload) -> None:
        wkey = (w.kind, w.namespace, w.name)
        old = self.workloads.get(wkey)
        self.workloads[wkey] = w
        if old is None or old.replicas != w.replicas:
            self.replicas.pop(wkey, None)
        self.reconcile(wkey)

    def reconcile(self, wkey: tuple[str, str, str]) -> None:
        kind, ns, name = wkey
        w = self.workloads[wkey]
        replicas = self.replicas.get(wkey, w.replicas)
        if kind == "Deployment":
            h = template_hash(w.template)
            rs = replicaset_name(w, h)
            labels = dict(w.template.labels)
            labels["pod-template-hash"] = h
            prev = self.deploy_rs.get((ns, name))
            if prev is not None and prev != rs:  # new template: a finished rollout
                for key in list(self.owned.get(("ReplicaSet", ns, prev), ())):
                    self.remove_pod(key)
            self.deploy_rs[(ns, name)] = rs
            self._reconcile_rs(("ReplicaSet", ns, rs), w, labels, replicas)
        elif kind == "ReplicaSet":
            self._reconcile_rs(wkey, w, w.template.labels, replicas)
        elif kind == "StatefulSet":
            self._reconcile_sts(wkey, w, replicas)
        else:
            self._reconcile_ds(wkey, w)

    def _adopt(self, owner, w: Workload) -> None:
        """Orphan pods (standalone Pods from the manifests) matching the
        selector are adopted, as the ReplicaSet controller does."""
        for key in self.select(w.namespace, dict(w.selector.match_labels)):
            if self.owner.get(key) is None and key not in self.terminal and \
                    w.selector.matches(self.state.pods[key].labels):
                self.owner[key] = owner
                self.owned.setdefault(owner, {})[key] = None
                self._set_pod(replace(self.state.pods[key], owner=(owner[0], owner[2])))

    def _reconcile_rs(self, owner, w: Workload, labels, replicas: int) -> None:
        if owner not in self.owned:
            self.owned[owner] = {}
            self._adopt(owner, w)
        pods = self.state.pods
        active = [pods[k] for k in self.owned[owner] if not pods[k].terminating and k not in self.terminal]
        ns, rs = owner[1], owner[2]
        if len(active) < replicas:
            path = "spec.template.spec.nodeName"
            for _ in range(replicas - len(active)):
                name = self._suffix_name(rs + "-", ns, rs)
                self.create_pod(ns, name, w.template.spec, labels, owner, w.source, path=path)
        elif len(active) > replicas:
            per_node: dict[str, int] = {}
            for p in active:
                per_node[p.node] = per_node.get(p.node, 0) + 1
            for p in scale_down_order(active, per_node, self.seq)[:len(active) - replicas]:
                self.remove_pod(p.key)

    def _reconcile_sts(self, owner, w: Workload, replicas: int) -> None:
        ns = w.namespace
        self.owned.setdefault(owner, {})
        for i in range(replicas):
            name = f"{w.name}-{i}"
            if (ns, name) in self.state.pods:
                continue
            labels = dict(w.template.labels)
            labels["statefulset.kubernetes.io/pod-name"] = name
            labels["apps.kubernetes.io/pod-index"] = str(i)
            self.create_pod(ns, name, w.template.spec, labels, owner, w.source,
                            hostname=name, subdomain=w.service_name or None,
                            path="spec.template.spec.nodeName")
        for key in [k for k in self.owned[owner]
                    if int(k[1].rsplit("-", 1)[1]) >= replicas]:
            self.remove_pod(key)

    def _reconcile_ds(self, owner, w: Workload) -> None:
        ns = w.namespace
        have = {self.state.pods[k].node: k for k in self.owned.setdefault(owner, {})}
        sel = w.template.spec.node_selector
        for node, info in self.state.nodes.items():
            eligible = all(info.labels.get(k) == v for k, v in sel.items())
            if eligible and node not in have:
                name = self._suffix_name(w.name + "-", ns, w.name)
                self.create_pod(ns, name, w.template.spec, w.template.labels, owner, w.source,
                                node=node)
            elif not eligible and node in have:
                self.remove_pod(have[node])

    # ------------------------------------------------------------ services

    def add_services(self, services: Iterable[Service]) -> None:
        services = list(services)
        for svc in services:
            old = self.state.services.get(svc.key)
            if old is not None:
                self.alloc.release(old)
                self._unindex_svc(self.services[svc.key])
        for svc in services:
            self.alloc.reserve(svc)
        for svc in services:
            self.state.services[svc.key] = self.alloc.allocate(svc, self.state.services.get(svc.key))
            self.services[svc.key] = svc
            if svc.selector:
                k, v = next(iter(svc.selector.items()))
                self.svc_by_label.setdefault(svc.namespace, {}).setdefault((k, v), set()).add(svc.key)
            if self.dirty is not None:
                self.dirty.add(svc.key)

    def _unindex_svc(self, svc: Service) -> None:
        if svc.selector:
            k, v = next(iter(svc.selector.items()))
            self.svc_by_label.get(svc.namespace, {}).get((k, v), set()).discard(svc.key)

    def add_user_slices(self, slices: Iterable[EndpointSlice]) -> None:
        for s in slices:
            svc = s.service_name
            if svc is None:
                continue  # not bound to a Service: nobody reads it
            self.user_slices.setdefault((s.namespace, svc), {})[s.name] = s
            if self.dirty is not None:
                self.dirty.add((s.namespace, svc))

    def reconcile_slices(self, skey: tuple[str, str]) -> None:
        svc = self.services.get(skey)
        user = tuple(self.user_slices.get(skey, {}).values())
        if svc is None:
            return
        gen: tuple[EndpointSlice, ...] = ()
        if svc.type != "ExternalName" and svc.selector:
            pods = self.state.pods
            selected = [pods[k] for k in self.select(svc.namespace, svc.selector)]
            selected = [p for p in selected if p.ip and p.key not in self.terminal]
            def new_name():
                return self._suffix_name(svc.name + "-", svc.namespace, "EndpointSlice", svc.name)

            gen = build_slices(svc, selected, self.zone, self.gen_slices.get(skey, ()), new_name)
        self.gen_slices[skey] = gen
        if svc.type == "ExternalName":
            user = ()
        if gen or user:
            self.state.slices[skey] = gen + user
        else:
            self.state.slices.pop(skey, None)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for skey in sorted(dirty):
            self.reconcile_slices(skey)


def _names(d) -> str:
    names = list(d)
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def _error(src: Source, path: str | None, problem: str) -> EmuError:
    if src is not None and src.line:
        return src.error(path, problem)
    obj = (src.obj + ": ") if src is not None and src.obj else ""
    return EmuError(f"{obj}{(path + ': ') if path else ''}{problem}")


def _order(objs) -> list:
    """Objects in manifest order: file (in order of first appearance), then line."""
    files: dict[str, int] = {}
    for o in objs:
        files.setdefault(o.source.file, len(files))
    return sorted(objs, key=lambda o: (files[o.source.file], o.source.line))


def controllers(state: ClusterState) -> Controllers:
    c = state.controllers
    if c is None:
        raise EmuError("this ClusterState was not made by emu.control.cluster.build")
    return c


# ---------------------------------------------------------------- the API


def build(model: Model, seed: int = 0) -> ClusterState:
    """Run every controller over ``model``; a new ClusterState."""
    c = Controllers(model, seed)
    st = c.state
    st.controllers = c
    st.namespaces = tuple(model.namespaces)
    # nodes
    if model.nodes:
        c.add_nodes([(n.name, n) for n in model.nodes.values()])
    else:
        c.add_nodes([(name, None) for name in model.settings.nodes])
    # services: built-ins first (fixed IPs), then the user's
    services = []
    if ("default", "kubernetes") not in model.services:
        services.append(kubernetes_service(model.settings))
    if ("kube-system", "kube-dns") not in model.services:
        services.append(kube_dns_service(model.settings))
    services.extend(model.services.values())
    c.add_services(services)
    c.add_user_slices(model.endpointslices.values())
    if ("default", "kubernetes") not in model.services and \
            not c.user_slices.get(("default", "kubernetes")):
        first = next(iter(st.nodes.values()), None)
        if first is not None:
            c.add_user_slices([EndpointSlice(
                "default", "kubernetes", {SERVICE_NAME_LABEL: "kubernetes"}, "IPv4",
                (Endpoint((first.ip,), node_name=None),), (EndpointPort(6443, "TCP", "https"),),
                source=_builtin("EndpointSlice default/kubernetes"))])
    # pods with a given IP reserve it before anything is allocated
    with_ip = [p for p in model.pods.values() if p.pod_ips and not p.spec.host_network]
    for p in with_ip:
        c.create_pod(p.namespace, p.name, p.spec, p.labels, None, p.source, given=p)
    if ("kube-system", "coredns") not in model.deployments:
        c.add_workload(coredns_deployment())
    rest = [p for p in model.pods.values() if not (p.pod_ips and not p.spec.host_network)]
    for obj in _order(rest + list(model.workloads())):
        if isinstance(obj, Pod):
            c.create_pod(obj.namespace, obj.name, obj.spec, obj.labels, None, obj.source, given=obj)
        else:
            c.add_workload(obj)
    for skey in c.services:
        c.reconcile_slices(skey)
    c.dirty = set()
    return st


def _find_workload(c: Controllers, namespace: str, name: str, kind: str | None):
    kinds = (kind,) if kind else ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")
    found = [(k, namespace, name) for k in kinds if (k, namespace, name) in c.workloads]
    if not found:
        raise EmuError(f"no {kind or 'workload'} {namespace}/{name} "
                       f"(Deployment, ReplicaSet, StatefulSet or DaemonSet)")
    if len(found) > 1:
        raise EmuError(f"{namespace}/{name} names a {' and a '.join(k for k, _, _ in found)}: "
                       f"say which kind")
    return found[0]


def scale(state: ClusterState, model: Model | None, namespace: str, name: str,
          replicas: int, kind: str | None = None) -> ClusterState:
    """``kubectl scale``: set a Deployment's, ReplicaSet's or StatefulSet's
    replicas (``model`` is not needed: the controllers keep the workloads;
    accepted for symmetry). Mutates and returns ``state``."""
    c = controllers(state)
    wkey = _find_workload(c, namespace, name, kind)
    if wkey[0] == "DaemonSet":
        raise EmuError(f"DaemonSet {namespace}/{name} cannot be scaled: it runs one pod per node")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise EmuError(f"replicas must be a whole number >= 0, not {replicas!r}")
    c.replicas[wkey] = replicas
    c.reconcile(wkey)
    c.flush()
    return state


def delete_pod(state: ClusterState, namespace: str, name: str, graceful: bool = False) -> ClusterState:
    """``kubectl delete pod``. The pod goes away at once (``graceful=False``)
    or stays Terminating (``graceful=True``: endpoints terminating, not ready,
    still serving; a second delete_pod removes it). Its owner reconciles: a
    ReplicaSet/DaemonSet creates a replacement with a new name at once, a
    StatefulSet re-creates the same name once the old pod is gone."""
    c = controllers(state)
    key = (namespace, name)
    info = state.pods.get(key)
    if info is None:
        raise EmuError(f"no Pod {namespace}/{name}")
    owner = c.owner.get(key)
    if graceful and not info.terminating:
        c._set_pod(replace(info, terminating=True))
    else:
        c.remove_pod(key)
    if owner is not None:
        _reconcile_owner(c, owner)
    c.flush()
    return state


def _reconcile_owner(c: Controllers, owner) -> None:
    kind, ns, name = owner
    if kind == "ReplicaSet" and ("ReplicaSet", ns, name) not in c.workloads:
        for (dns, dname), rs in c.deploy_rs.items():
            if dns == ns and rs == name:
                c.reconcile(("Deployment", ns, dname))
                return
        return
    if owner in c.workloads:
        c.reconcile(owner)


def fail_node(state: ClusterState, name: str, evict: bool = False) -> ClusterState:
    """The node goes NotReady: its pods are marked not ready (endpoints
    ready=false, serving=false); nothing is rescheduled (that takes the
    EVICTION_TIMEOUT). ``evict=True``: also play out the eviction
    (``evict_node``)."""
    c = controllers(state)
    node = state.nodes.get(name)
    if node is None:
        raise EmuError(f"no Node named {name!r} (nodes: {_names(state.nodes)})")
    state.nodes[name] = replace(node, ready=False)
    c.sched.set_ready(name, False)
    for key, info in list(state.pods.items()):
        if info.node == name and info.ready:
            c._set_pod(replace(info, ready=False))
    if evict:
        evict_node(state, name)
    c.flush()
    return state


def evict_node(state: ClusterState, name: str) -> ClusterState:
    """Taint-based eviction after EVICTION_TIMEOUT on a NotReady node: its pods
    (except DaemonSet pods) get a deletion timestamp and stay Terminating
    (their kubelet is gone); their owners create replacements elsewhere."""
    c = controllers(state)
    if state.nodes[name].ready:
        raise EmuError(f"node {name} is ready: fail_node it first")
    owners = []
    for key, info in list(state.pods.items()):
        owner = c.owner.get(key)
        if info.node != name or info.terminating or (owner and owner[0] == "DaemonSet"):
            continue
        c._set_pod(replace(info, terminating=True, ready=False))
        if owner and owner not in owners:
            owners.append(owner)
    for owner in owners:
        _reconcile_owner(c, owner)
    c.flush()
    return state


def recover_node(state: ClusterState, name: str) -> ClusterState:
    """The node is Ready again: its kubelet finishes the pending deletions
    and its remaining pods become ready; Pending pods may now be scheduled."""
    c = controllers(state)
    node = state.nodes.get(name)
    if node is None:
        raise EmuError(f"no Node named {name!r} (nodes: {_names(state.nodes)})")
    state.nodes[name] = replace(node, ready=True)
    c.sched.set_ready(name, True)
    owners = []
    for key, info in list(state.pods.items()):
        if info.node != name:
            continue
        if info.terminating and key not in c.pending:
            owner = c.owner.get(key)
            c.remove_pod(key)
            if owner and owner not in owners:
                owners.append(owner)
        elif not info.ready:
            c._set_pod(replace(info, ready=True))
    for owner in owners:
        _reconcile_owner(c, owner)
    c.schedule_pending()
    c.flush()
    return state


def apply(state: ClusterState, more: Model | Iterable) -> ClusterState:
    """``kubectl apply``: add or replace objects (a Model from emu.model.load,
    or an iterable of model objects). New nodes get addresses and DaemonSet
    pods (and Pending pods a chance); Services keep their allocated
    clusterIP/nodePorts when re-applied without them; a Deployment with a new
    template rolls out at once (new ReplicaSet, old pods gone); a scaled
    workload keeps the replicas of the new manifest. ClusterSettings cannot
    change. Mutates and returns ``state``."""
    c = controllers(state)
    if isinstance(more, Model):
        if more.settings.source.line and more.settings != c.settings:
            raise more.settings.source.error(None, "cluster settings cannot change on a running cluster")
        objs = list(more.namespaces.values()) + list(more.nodes.values()) + \
            list(more.services.values()) + list(more.endpointslices.values()) + \
            _order(list(more.pods.values()) + list(more.workloads()))
    else:
        objs = list(more)
    nodes = [o for o in objs if isinstance(o, Node)]
    new_nodes = [(n.name, n) for n in nodes if n.name not in state.nodes]
    if new_nodes:
        c.add_nodes(new_nodes)
    for n in nodes:
        if n.name in dict(new_nodes):
            continue
        info = state.nodes[n.name]
        labels = dict(info.labels)
        labels.update(n.labels)
        state.nodes[n.name] = replace(info, labels=labels)
        c.sched.add_node(n.name, labels, n.unschedulable)
        c.sched.set_ready(n.name, info.ready)
    ns = [o.name for o in objs if isinstance(o, Namespace) and o.name not in state.namespaces]
    state.namespaces = state.namespaces + tuple(ns)
    for o in objs:
        for nsname in _namespace_of(o):
            if nsname not in state.namespaces:
                state.namespaces = state.namespaces + (nsname,)
    c.add_services([o for o in objs if isinstance(o, Service)])
    c.add_user_slices([o for o in objs if isinstance(o, EndpointSlice)])
    for o in objs:
        if isinstance(o, Pod):
            old = state.pods.get(o.key)
            if old is None:
                c.create_pod(o.namespace, o.name, o.spec, o.labels, None, o.source, given=o)
            elif dict(old.labels) != dict(o.labels):
                c._set_pod(replace(old, labels=o.labels))
        elif isinstance(o, Workload):
            c.add_workload(o)
    if new_nodes:
        for wkey in [k for k in c.workloads if k[0] == "DaemonSet"]:
            c.reconcile(wkey)
        c.schedule_pending()
    c.flush()
    return state


def _namespace_of(o) -> tuple[str, ...]:
    ns = getattr(o, "namespace", None)
    return (ns,) if isinstance(ns, str) else ()
