"""Raw documents -> typed, validated objects, then the checks that span
objects (duplicates, ClusterIP/NodePort collisions, CIDR overlaps).

Unknown fields are rejected as ``kubectl --validate=strict`` does: each part
of an object we model has an allow-list of the fields the Kubernetes API
defines for it (v1.33), so valid fields the model does not use are accepted
and typos (``spec.replica``) are not. ``status`` is output, not input: only the
parts the model reads are type-checked there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Callable

from .fields import (
    Ctx, F, dns1035_label_problem, dns_label_problem, dns_subdomain_problem,
    ipv4_or_fail, label_key_problem, label_value_problem, port_name_problem,
)
from .load import RawDoc
from .objects import (
    DEFAULT_NAMESPACE, NAMESPACE_NAME_LABEL, ClusterSettings, Container,
    ContainerPort, Endpoint, EndpointPort, EndpointSlice, Ignored, Namespace, Node, NodeAddress,
    ObjectRef, Pod, PodSpec, PodTemplate, Service, ServicePort, Source, Workload,
)
from .selectors import OPERATORS, LabelSelector, Requirement, matches

PROTOCOLS = ("TCP", "UDP", "SCTP")

OBJECT_META = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
}
TOP = {"apiVersion", "kind", "metadata", "spec", "status"}

POD_SPEC = {
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers",
    "dnsConfig", "dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases",
    "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname", "imagePullSecrets",
    "initContainers", "nodeName", "nodeSelector", "os", "overhead", "preemptionPolicy",
    "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext",
    "serviceAccount", "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace",
    "subdomain", "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints",
    "volumes",
}
CONTAINER = {
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle",
    "livenessProbe", "name", "ports", "readinessProbe", "resizePolicy", "resources",
    "restartPolicy", "securityContext", "startupProbe", "stdin", "stdinOnce",
    "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
    "volumeMounts", "workingDir",
}
CONTAINER_PORT = {"containerPort", "hostIP", "hostPort", "name", "protocol"}
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")

WORKLOAD_SPEC = {
    "Deployment": {"minReadySeconds", "paused", "progressDeadlineSeconds", "replicas",
                   "revisionHistoryLimit", "selector", "strategy", "template"},
    "ReplicaSet": {"minReadySeconds", "replicas", "selector", "template"},
    "StatefulSet": {"minReadySeconds", "ordinals", "persistentVolumeClaimRetentionPolicy",
                    "podManagementPolicy", "replicas", "revisionHistoryLimit", "selector",
                    "serviceName", "template", "updateStrategy", "volumeClaimTemplates"},
    "DaemonSet": {"minReadySeconds", "revisionHistoryLimit", "selector", "template",
                  "updateStrategy"},
}
SERVICE_SPEC = {
    "allocateLoadBalancerNodePorts", "clusterIP", "clusterIPs", "externalIPs", "externalName",
    "externalTrafficPolicy", "healthCheckNodePort", "internalTrafficPolicy", "ipFamilies",
    "ipFamilyPolicy", "loadBalancerClass", "loadBalancerIP", "loadBalancerSourceRanges",
    "ports", "publishNotReadyAddresses", "selector", "sessionAffinity",
    "sessionAffinityConfig", "trafficDistribution", "type",
}
SERVICE_PORT = {"appProtocol", "name", "nodePort", "port", "protocol", "targetPort"}
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
ENDPOINT_SLICE = {"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"}
ENDPOINT = {"addresses", "conditions", "deprecatedTopology", "hints", "hostname", "nodeName",
            "targetRef", "zone"}
OBJECT_REF = {"apiVersion", "fieldPath", "kind", "name", "namespace", "resourceVersion", "uid"}
NODE_SPEC = {"configSource", "externalID", "podCIDR", "podCIDRs", "providerID", "taints",
             "unschedulable"}
SETTINGS = {"apiVersion", "kind", "metadata", "nodes", "podCIDR", "serviceCIDR",
            "clusterDomain", "cni", "kubeProxyMode", "ipvsScheduler", "nodePortRange",
            "nodeCIDRMaskSize", "underlayMTU", "mtu", "kubeProxyConntrackCleanup",
            "conntrackMax"}

# kind -> (apiVersion it must have, group names under which the kind is "ours")
KINDS = {
    "Namespace": ("v1", {""}),
    "Node": ("v1", {""}),
    "Pod": ("v1", {""}),
    "Service": ("v1", {""}),
    "Deployment": ("apps/v1", {"apps", "extensions"}),
    "ReplicaSet": ("apps/v1", {"apps", "extensions"}),
    "StatefulSet": ("apps/v1", {"apps"}),
    "DaemonSet": ("apps/v1", {"apps", "extensions"}),
    "EndpointSlice": ("discovery.k8s.io/v1", {"discovery.k8s.io"}),
    "ClusterSettings": ("emu.dev/v1alpha1", {"emu.dev"}),
}
NAMESPACED = {"Pod", "Service", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet",
              "EndpointSlice"}
NAME_CHECK: dict[str, Callable[[str], str | None]] = {
    "Namespace": dns_label_problem,
    "Service": dns1035_label_problem,
}


# ---------------------------------------------------------------- helpers


def _meta(doc: F, kind: str, namespaced: bool):
    """Parse metadata; returns (namespace, name, labels, metadata F). The
    object's label for messages (``ctx.obj``) was set by ``parse_doc``."""
    meta = doc.get("metadata").require().map(OBJECT_META)
    name_f = meta.get("name")
    name = name_f.str()
    if not name:
        if meta.get("generateName").present:
            name_f.fail("required field is missing (generateName is not supported: "
                        "emu needs stable names)")
        name_f.fail("required field is missing")
    name_f.str(check=NAME_CHECK.get(kind, dns_subdomain_problem))
    ns = DEFAULT_NAMESPACE
    if namespaced:
        ns = meta.get("namespace").str(check=dns_label_problem) or DEFAULT_NAMESPACE
    labels = meta.get("labels").str_map()
    meta.get("annotations").str_map(key_check=label_key_problem, value_check=None)
    return ns, name, labels, meta


def _protocol(f: F) -> str:
    return f.str("TCP", choices=PROTOCOLS)


def label_selector(f: F) -> LabelSelector | None:
    """metav1.LabelSelector; None if absent."""
    if not f.present:
        return None
    f.map({"matchLabels", "matchExpressions"})
    match_labels = f.get("matchLabels").str_map()
    exprs = []
    for e in f.get("matchExpressions").items():
        e.map({"key", "operator", "values"})
        key = e.get("key").require().str(check=label_key_problem)
        op = e.get("operator").require().str(choices=OPERATORS)
        vals_f = e.get("values")
        values = []
        for v in vals_f.items():
            values.append(v.require().str(check=label_value_problem))
        if op in ("In", "NotIn") and not values:
            vals_f.fail(f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            vals_f.fail(f"must be empty when operator is {op}")
        exprs.append(Requirement(key, op, tuple(values)))
    return LabelSelector.of(match_labels, *exprs)


def _source(doc: RawDoc, ctx: Ctx) -> Source:
    return Source(doc.file, doc.line, ctx.obj or "", doc.data)


# ---------------------------------------------------------------- pods


def _container(c: F, port_names: dict[str, str]) -> Container:
    c.map(CONTAINER)
    name = c.get("name").require().str(check=dns_label_problem)
    image = c.get("image").require().str()
    command, args = (tuple(f.str() for f in c.get(k).items()) for k in ("command", "args"))
    ports = []
    for p in c.get("ports").items():
        p.map(CONTAINER_PORT)
        cp = p.get("containerPort").require().int(lo=1, hi=65535)
        pname_f = p.get("name")
        pname = pname_f.str(check=port_name_problem) or None
        if pname is not None:
            if pname in port_names:
                pname_f.fail(f"duplicate port name {pname!r} (also {port_names[pname]})")
            port_names[pname] = p.path
        host_port = p.get("hostPort").int(lo=1, hi=65535)
        p.get("hostIP").ipv4()
        ports.append(ContainerPort(cp, _protocol(p.get("protocol")), pname, host_port))
    return Container(name, tuple(ports), image, command, args)


def pod_spec(spec: F) -> PodSpec:
    spec.map(POD_SPEC)
    cs = spec.get("containers")
    if not cs.items():
        cs.fail("required field is missing" if not cs.present else "must have at least one container")
    port_names: dict[str, str] = {}
    names: dict[str, str] = {}
    containers = []
    for group in ("initContainers", "containers"):
        for c in spec.get(group).items():
            container = _container(c, port_names)
            if container.name in names:
                c.get("name").fail(f"duplicate container name {container.name!r} "
                                   f"(also {names[container.name]})")
            names[container.name] = c.path
            # regular containers and sidecars (init containers that keep running) serve traffic
            if group == "containers" or c.get("restartPolicy").str() == "Always":
                containers.append(container)
    return PodSpec(
        containers=tuple(containers),
        node_name=spec.get("nodeName").str(check=dns_subdomain_problem),
        node_selector=spec.get("nodeSelector").str_map(),
        host_network=spec.get("hostNetwork").bool(False),
        hostname=spec.get("hostname").str(check=dns_label_problem),
        subdomain=spec.get("subdomain").str(check=dns_label_problem),
        dns_policy=spec.get("dnsPolicy").str("ClusterFirst", choices=DNS_POLICIES),
    )


def parse_pod(doc: RawDoc, d: F) -> Pod:
    d.map(TOP)
    ns, name, labels, meta = _meta(d, "Pod", True)
    spec = pod_spec(d.get("spec").require())
    status = d.get("status").map()
    ready = None
    for cond in status.get("conditions").items():
        cond.map()
        if cond.get("type").str() == "Ready":
            ready = cond.get("status").str(choices=("True", "False", "Unknown")) == "True"
    ips = [x.get("ip").require().ipv4() for x in status.get("podIPs").items() if x.map() or True]
    pod_ip = status.get("podIP").ipv4()
    if pod_ip and not ips:
        ips = [pod_ip]
    return Pod(
        namespace=ns, name=name, labels=labels, spec=spec,
        phase=status.get("phase").str(choices=("Pending", "Running", "Succeeded", "Failed", "Unknown")),
        ready=ready, pod_ips=tuple(ips), host_ip=status.get("hostIP").ipv4(),
        terminating=meta.get("deletionTimestamp").present,
        source=_source(doc, d.ctx),
    )


# ---------------------------------------------------------------- workloads


def parse_workload(doc: RawDoc, d: F, kind: str) -> Workload:
    d.map(TOP)
    ns, name, labels, _ = _meta(d, kind, True)
    spec = d.get("spec").require().map(WORKLOAD_SPEC[kind])
    sel_f = spec.get("selector").require()
    selector = label_selector(sel_f)
    if selector.empty:
        sel_f.fail(f"must not be empty (an empty selector is invalid for a {kind})")
    tmpl = spec.get("template").require().map({"metadata", "spec"})
    tmeta = tmpl.get("metadata").map(OBJECT_META)
    tlabels_f = tmeta.get("labels")
    tlabels = tlabels_f.str_map()
    tmeta.get("annotations").str_map(key_check=label_key_problem, value_check=None)
    if not matches(selector, tlabels):
        shown = ", ".join(f"{k}={v}" for k, v in tlabels.items()) or "no labels"
        tlabels_f.fail(f"selector {str(selector)!r} does not match the template labels ({shown})")
    tspec = pod_spec(tmpl.get("spec").require())
    replicas = None if kind == "DaemonSet" else spec.get("replicas").int(1, lo=0)
    service_name = None
    if kind == "StatefulSet":
        service_name = spec.get("serviceName").str(check=dns1035_label_problem) or None
    return Workload(kind, ns, name, labels, selector, PodTemplate(tlabels, tspec),
                    replicas, service_name, _source(doc, d.ctx))


# ---------------------------------------------------------------- services


def _target_port(f: F, default: int) -> int | str:
    v = f.value
    if v is None:
        return default
    if isinstance(v, str):
        if v.isdigit():
            f.fail(f"{v!r} is a string; write the number unquoted, or use a port name")
        return f.str(check=port_name_problem)
    return f.int(lo=1, hi=65535)


def parse_service(doc: RawDoc, d: F) -> Service:
    d.map(TOP)
    ns, name, labels, _ = _meta(d, "Service", True)
    spec = d.get("spec").map(SERVICE_SPEC)
    stype = spec.get("type").str("ClusterIP", choices=SERVICE_TYPES)
    external_ips = tuple(x.require().ipv4() for x in spec.get("externalIPs").items())
    externally_accessible = stype in ("NodePort", "LoadBalancer") or (
        stype == "ClusterIP" and bool(external_ips))

    # cluster IPs
    cip_f = spec.get("clusterIP")
    cluster_ip = cip_f.str() or None
    cips_f = spec.get("clusterIPs")
    cluster_ips = tuple(x.require().str() for x in cips_f.items())
    if cluster_ips and cluster_ip and cluster_ips[0] != cluster_ip:
        cips_f.fail(f"first entry {cluster_ips[0]!r} must equal spec.clusterIP {cluster_ip!r}")
    if cluster_ips and not cluster_ip:
        cluster_ip = cluster_ips[0]
    if len(cluster_ips) > 1:
        cips_f.fail("dual-stack (more than one cluster IP) is not supported yet")
    if cluster_ip is not None:
        where = cip_f if cip_f.present else cips_f
        if stype == "ExternalName":
            where.fail("must be empty for type ExternalName")
        if cluster_ip == "None":
            if stype != "ClusterIP":
                where.fail(f"may be 'None' (headless) only for type ClusterIP, not {stype}")
        else:
            ipv4_or_fail(where, cluster_ip)
    cluster_ips = (cluster_ip,) if cluster_ip else ()

    # ports
    ports: list[ServicePort] = []
    ports_f = spec.get("ports")
    items = ports_f.items()
    if not items and stype != "ExternalName" and cluster_ip != "None":
        ports_f.fail("required field is missing (only headless and ExternalName "
                     "Services may have no ports)")
    seen_names: dict[str, str] = {}
    seen_ports: dict[tuple, str] = {}
    seen_node_ports: dict[tuple, str] = {}
    for p in items:
        p.map(SERVICE_PORT)
        port = p.get("port").require().int(lo=1, hi=65535)
        proto = _protocol(p.get("protocol"))
        pname_f = p.get("name")
        pname = pname_f.str(check=dns_label_problem) or None
        if len(items) > 1 and pname is None:
            pname_f.fail("required when the Service has more than one port")
        if pname is not None:
            if pname in seen_names:
                pname_f.fail(f"duplicate port name {pname!r} (also {seen_names[pname]})")
            seen_names[pname] = p.path
        if (port, proto) in seen_ports:
            p.fail(f"duplicate port {port}/{proto} (also {seen_ports[port, proto]})")
        seen_ports[port, proto] = p.path
        np_f = p.get("nodePort")
        node_port = np_f.int(lo=0, hi=65535) or None
        if node_port is not None:
            if stype not in ("NodePort", "LoadBalancer"):
                np_f.fail(f"may only be set when type is NodePort or LoadBalancer, not {stype}")
            if (node_port, proto) in seen_node_ports:
                np_f.fail(f"duplicate nodePort {node_port}/{proto} "
                          f"(also {seen_node_ports[node_port, proto]})")
            seen_node_ports[node_port, proto] = np_f.path
        ports.append(ServicePort(
            port=port, target_port=_target_port(p.get("targetPort"), port), protocol=proto,
            name=pname, node_port=node_port, app_protocol=p.get("appProtocol").str(),
        ))

    # selector: absent or empty -> no selector
    selector = spec.get("selector").str_map() or None

    external_name = None
    en_f = spec.get("externalName")
    if stype == "ExternalName":
        external_name = en_f.require().str()
        p = dns_subdomain_problem(external_name.rstrip(".").lower())
        if p:
            en_f.fail(f"{external_name!r} {p}")

    affinity = spec.get("sessionAffinity").str("None", choices=("None", "ClientIP"))
    sac = spec.get("sessionAffinityConfig").map({"clientIP"})
    timeout = 10800
    if sac.present:
        if affinity != "ClientIP":
            sac.fail("may only be set when sessionAffinity is ClientIP")
        timeout = sac.get("clientIP").map({"timeoutSeconds"}).get("timeoutSeconds").int(
            10800, lo=1, hi=86400)

    etp_f = spec.get("externalTrafficPolicy")
    etp = etp_f.str(choices=("Cluster", "Local"))
    if etp is not None and not externally_accessible:
        etp_f.fail("may only be set for externally reachable Services "
                   "(type NodePort or LoadBalancer, or with externalIPs)")
    if etp is None and externally_accessible:
        etp = "Cluster"
    itp = spec.get("internalTrafficPolicy").str(
        None if stype == "ExternalName" else "Cluster", choices=("Cluster", "Local"))

    alb_f = spec.get("allocateLoadBalancerNodePorts")
    alb = alb_f.bool()
    if alb is not None and stype != "LoadBalancer":
        alb_f.fail("may only be set when type is LoadBalancer")
    if alb is None and stype == "LoadBalancer":
        alb = True

    for fam in spec.get("ipFamilies").items():
        if fam.str(choices=("IPv4", "IPv6")) != "IPv4":
            fam.fail("IPv6 is not supported yet")

    status = d.get("status").map()
    lb_ips = []
    for ing in status.get("loadBalancer").map().get("ingress").items():
        ing.map()
        ip = ing.get("ip").ipv4()
        if ip:
            lb_ips.append(ip)

    return Service(
        namespace=ns, name=name, labels=labels, type=stype, ports=tuple(ports),
        selector=selector, cluster_ip=cluster_ip, cluster_ips=cluster_ips,
        external_ips=external_ips, external_name=external_name, session_affinity=affinity,
        session_affinity_timeout=timeout, external_traffic_policy=etp,
        internal_traffic_policy=itp, load_balancer_ip=spec.get("loadBalancerIP").ipv4(),
        load_balancer_ingress_ips=tuple(lb_ips),
        publish_not_ready_addresses=spec.get("publishNotReadyAddresses").bool(False),
        allocate_load_balancer_node_ports=alb, source=_source(doc, d.ctx),
    )


# ---------------------------------------------------------------- endpoint slices


def _address(f: F, address_type: str) -> str:
    s = f.require().str()
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        ip = None
    if address_type == "IPv4" and (ip is None or ip.version != 4):
        f.fail(f"{s!r} is not a valid IPv4 address")
    if address_type == "IPv6" and (ip is None or ip.version != 6):
        f.fail(f"{s!r} is not a valid IPv6 address")
    if address_type == "FQDN":
        p = dns_subdomain_problem(s)
        if p:
            f.fail(f"{s!r} {p}")
    return s


def parse_endpoint_slice(doc: RawDoc, d: F) -> EndpointSlice:
    d.map(ENDPOINT_SLICE)
    ns, name, labels, _ = _meta(d, "EndpointSlice", True)
    at = d.get("addressType").require().str(choices=("IPv4", "IPv6", "FQDN"))
    endpoints = []
    eps = d.get("endpoints").items()
    if len(eps) > 1000:
        d.get("endpoints").fail(f"has {len(eps)} endpoints; at most 1000 are allowed")
    for e in eps:
        e.map(ENDPOINT)
        addrs_f = e.get("addresses").require()
        addrs = tuple(_address(a, at) for a in addrs_f.items())
        if not 1 <= len(addrs) <= 100:
            addrs_f.fail("must have between 1 and 100 addresses")
        cond = e.get("conditions").map({"ready", "serving", "terminating"})
        tr = e.get("targetRef").map(OBJECT_REF)
        target = None
        if tr.present:
            target = ObjectRef(tr.get("kind").str(), tr.get("name").str(),
                               tr.get("namespace").str(), tr.get("uid").str())
        endpoints.append(Endpoint(
            addresses=addrs,
            ready=cond.get("ready").bool(True),
            serving=cond.get("serving").bool(True),
            terminating=cond.get("terminating").bool(False),
            hostname=e.get("hostname").str(check=dns_label_problem),
            node_name=e.get("nodeName").str(check=dns_subdomain_problem),
            zone=e.get("zone").str(),
            target_ref=target,
        ))
    ports = []
    names: dict[str, str] = {}
    ports_items = d.get("ports").items()
    if len(ports_items) > 100:
        d.get("ports").fail("at most 100 ports are allowed")
    for p in ports_items:
        p.map({"appProtocol", "name", "port", "protocol"})
        pname_f = p.get("name")
        pname = pname_f.str(check=dns_label_problem) or None
        key = pname or ""
        if key in names:
            pname_f.fail(f"duplicate port name {key!r} (also {names[key]})")
        names[key] = p.path
        ports.append(EndpointPort(p.get("port").int(lo=1, hi=65535), _protocol(p.get("protocol")),
                                  pname, p.get("appProtocol").str()))
    return EndpointSlice(ns, name, labels, at, tuple(endpoints), tuple(ports), _source(doc, d.ctx))


# ---------------------------------------------------------------- cluster-scoped


def parse_namespace(doc: RawDoc, d: F) -> Namespace:
    d.map(TOP)
    _, name, labels, _ = _meta(d, "Namespace", False)
    d.get("spec").map({"finalizers"})
    return Namespace(name, {**labels, NAMESPACE_NAME_LABEL: name}, _source(doc, d.ctx))


def parse_node(doc: RawDoc, d: F) -> Node:
    d.map(TOP)
    _, name, labels, _ = _meta(d, "Node", False)
    spec = d.get("spec").map(NODE_SPEC)
    cidr_f, cidrs_f = spec.get("podCIDR"), spec.get("podCIDRs")
    cidr = cidr_f.cidr4()
    cidrs = [x.require().cidr4() for x in cidrs_f.items()]
    if cidr and cidrs and cidrs[0] != cidr:
        cidrs_f.fail(f"first entry {cidrs[0]} must equal spec.podCIDR {cidr}")
    if len(cidrs) > 1:
        cidrs_f.fail("dual-stack (more than one pod CIDR) is not supported yet")
    if cidr and not cidrs:
        cidrs = [cidr]
    addrs = []
    for a in d.get("status").map().get("addresses").items():
        a.map({"type", "address"})
        t = a.get("type").require().str()
        addr_f = a.get("address").require()
        addr = addr_f.str()
        if t in ("InternalIP", "ExternalIP"):
            ipv4_or_fail(addr_f, addr)
        addrs.append(NodeAddress(t, addr))
    return Node(name, {"kubernetes.io/hostname": name, **labels}, tuple(addrs), tuple(cidrs),
                spec.get("unschedulable").bool(False), _source(doc, d.ctx))


def parse_settings(doc: RawDoc, d: F) -> ClusterSettings:
    d.map(SETTINGS)
    d.get("metadata").map(OBJECT_META)
    kw = {}
    nodes_f = d.get("nodes")
    if nodes_f.present:
        if isinstance(nodes_f.value, list):
            names = []
            for n in nodes_f.items():
                nm = n.require().str(check=dns_subdomain_problem)
                if nm in names:
                    n.fail(f"duplicate node name {nm!r}")
                names.append(nm)
            if not names:
                nodes_f.fail("must list at least one node")
        else:
            count = nodes_f.int(lo=1, hi=100000)
            names = [f"node-{i}" for i in range(1, count + 1)]
        kw["nodes"], kw["nodes_given"] = tuple(names), True
    pod_f, svc_f = d.get("podCIDR"), d.get("serviceCIDR")
    if pod_f.present:
        kw["pod_cidr"] = pod_f.cidr4()
    if svc_f.present:
        kw["service_cidr"] = svc_f.cidr4()
        if not 12 <= kw["service_cidr"].prefixlen <= 28:
            svc_f.fail(f"{kw['service_cidr']}: the prefix must be between /12 and /28")
    cd_f = d.get("clusterDomain")
    if cd_f.present:
        kw["cluster_domain"] = cd_f.str(check=dns_subdomain_problem)
    kw["cni"] = d.get("cni").str("flannel", choices=("flannel", "calico", "cilium"))
    kw["kube_proxy_mode"] = d.get("kubeProxyMode").str("iptables", choices=("iptables", "ipvs"))
    sched_f = d.get("ipvsScheduler")
    kw["ipvs_scheduler"] = sched_f.str("rr", choices=("rr", "mh"))
    if sched_f.present and kw["kube_proxy_mode"] != "ipvs":
        sched_f.fail("only applies when kubeProxyMode is ipvs")
    npr_f = d.get("nodePortRange")
    if npr_f.present:
        s = npr_f.str()
        lo, sep, hi = s.partition("-")
        if not (sep and lo.strip().isdigit() and hi.strip().isdigit()):
            npr_f.fail(f"{s!r} must be a range like 30000-32767")
        lo, hi = int(lo), int(hi)
        if not 1 <= lo <= hi <= 65535:
            npr_f.fail(f"{s!r} must be low-high with 1 <= low <= high <= 65535")
        kw["node_port_range"] = (lo, hi)
    kw["underlay_mtu"] = d.get("underlayMTU").int(1500, lo=576, hi=9216)
    # the smallest MTU Linux lets an IPv4 interface have is 68; a VXLAN overlay needs room for it
    kw["mtu"] = d.get("mtu").int(None, lo=68, hi=9216)
    # false: a kube-proxy that cannot delete conntrack entries (older ones without the
    # conntrack binary): UDP clients stay pinned to endpoints that are gone
    kw["conntrack_cleanup"] = d.get("kubeProxyConntrackCleanup").bool(True)
    # nf_conntrack_max (kube-proxy sets max(131072, 32768 per CPU) by default; emu's default 262144)
    kw["conntrack_max"] = d.get("conntrackMax").int(262_144, lo=16, hi=100_000_000)
    settings = ClusterSettings(**kw)
    mask_f = d.get("nodeCIDRMaskSize")
    mask = mask_f.int(24, lo=1, hi=30)
    plen = settings.pod_cidr.prefixlen
    if mask < plen:
        mask_f.fail(f"/{mask} is larger than podCIDR {settings.pod_cidr}")
    if mask - plen > 16:
        mask_f.fail(f"/{mask} would split podCIDR {settings.pod_cidr} into more than 65536 "
                    "node ranges (the controller-manager allows at most 16 extra bits)")
    if settings.pod_cidr.overlaps(settings.service_cidr):
        (svc_f if svc_f.present else pod_f).fail(
            f"podCIDR {settings.pod_cidr} and serviceCIDR {settings.service_cidr} overlap")
    return replace(settings, node_cidr_mask_size=mask, source=_source(doc, d.ctx))


PARSERS = {
    "Namespace": parse_namespace,
    "Node": parse_node,
    "Pod": parse_pod,
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "ClusterSettings": parse_settings,
}
for _k in WORKLOAD_SPEC:
    PARSERS[_k] = (lambda k: lambda doc, d: parse_workload(doc, d, k))(_k)


# ---------------------------------------------------------------- per document


def _object_label(data, kind: str) -> str:
    meta = data.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name")
    name = name if isinstance(name, str) and name else "<unnamed>"
    if kind in NAMESPACED:
        ns = meta.get("namespace")
        ns = ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE
        return f"{kind} {ns}/{name}"
    return kind if kind == "ClusterSettings" else f"{kind} {name}"


def parse_doc(doc: RawDoc):
    """One raw document -> a typed object, or an ``Ignored`` entry."""
    ctx = Ctx(doc.file, None)
    d = F(doc.data, "", doc.line, ctx)
    api = d.get("apiVersion")
    api_version = api.require().str()
    kind = d.get("kind").require().str()
    meta = doc.data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    name = name if isinstance(name, str) else None
    if kind not in KINDS:
        return Ignored(doc.file, doc.line, f"{api_version}/{kind}", name)
    want, groups = KINDS[kind]
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    if group not in groups:  # same kind name in another API (e.g. a Knative Service)
        return Ignored(doc.file, doc.line, f"{api_version}/{kind}", name)
    ctx.obj = _object_label(doc.data, kind)
    if api_version != want:
        api.fail(f"{api_version!r} is not served for {kind} by current Kubernetes; use {want}")
    return PARSERS[kind](doc, d)
