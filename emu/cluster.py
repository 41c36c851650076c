"""A running emulated cluster: manifests in, packets out.

    model (emu.model) -> controllers (emu.control.cluster) -> ClusterState
      -> Flannel wires nodes and pods into an Engine (emu.control.flannel)
      -> kube-proxy's rules on every node (emu.control.proxier)
      -> CoreDNS pods answer from the cluster zone (emu.hosts.coredns)
      -> an external host and a network load balancer on the underlay
         (emu.dataplane.loadbalancer) for NodePorts and LoadBalancer IPs

Changes (scale, delete a pod, fail a node, apply more manifests) go through
the controllers; `sync()` then updates kube-proxy's rules and the DNS zone,
and wires pods that did not exist yet, as the kubelet and CNI plugin would.
Existing connections keep their conntrack entries (and so their backends).
"""
from __future__ import annotations

from dataclasses import dataclass

from emu.control import cluster as controllers
from emu.control import flannel
from emu.control.ipam import UNDERLAY
from emu.control.kubeproxy import KubeProxy
from emu.control.proxier import Proxier, clean_stale_udp
from emu.control.state import ClusterState
from emu.dataplane.engine import Engine
from emu.dataplane.loadbalancer import LoadBalancer
from emu.dataplane.netns import Netns
from emu.hosts import apps
from emu.hosts.coredns import CoreDNS, zone_from_state
from emu.hosts.dns_tcp import CoreDnsTcp
from emu.errors import EmuError
from emu.model.manifests import Model

COREDNS_LABEL = ("k8s-app", "kube-dns")
EXTERNAL_IP = "192.168.0.200"  # the external host on the underlay


@dataclass(frozen=True)
class AppOverride:
    """Extra HTTP answers (path -> emu.hosts.http.Response or bytes/str) on
    `port` of the pods in `namespace` whose labels match `selector`."""
    selector: dict
    port: int
    responses: dict
    namespace: str = "default"


class Cluster:
    """`apps`: start what each pod's containers serve (emu.hosts.apps), with
    these overrides when it is a list; False leaves pods silent (tests that
    start their own servers)."""

    def __init__(self, model: Model, seed: int = 1, capture: bool = True,
                 apps: bool | list[AppOverride] = False):
        self.model = model
        self.seed = seed
        self.app_overrides = list(apps) if isinstance(apps, (list, tuple)) else []
        self.apps_on = bool(apps) or apps == []
        self.apps: dict[tuple[str, str], list] = {}
        # kube-proxy reconciles UDP conntrack entries after each sync; False models
        # one that cannot (the UDP blackhole of older kube-proxies without `conntrack`)
        self.conntrack_cleanup = model.settings.conntrack_cleanup
        self.udp_entries_cleaned = 0
        self.state: ClusterState = controllers.build(model, seed)
        self.engine = Engine(seed=seed)
        settings = self.state.settings
        self._wired = {k: p.ip for k, p in self.state.pods.items()}  # the IP each pod was wired with
        self.fabric = flannel.build(self.state, self.engine, underlay_plen=UNDERLAY.prefixlen,
                                    underlay_mtu=settings.underlay_mtu, pod_mtu=settings.mtu,
                                    conntrack_max=settings.conntrack_max)
        self.proxies = {
            name: KubeProxy(self.state, name, mode=settings.kube_proxy_mode,
                            scheduler=settings.ipvs_scheduler, seed=seed)
            for name in self.fabric.nodes}
        for name, node in self.fabric.nodes.items():
            Proxier(self.proxies[name]).attach(node.ns)
        self.dns_servers: dict[tuple[str, str], CoreDNS] = {}
        self.dns_tcp_servers: dict[tuple[str, str], CoreDnsTcp] = {}
        self._serve_dns()
        self.external = self._external_host()
        self.load_balancer = self._load_balancer()
        self._program_load_balancer()
        self._start_apps()
        if capture:
            self.engine.capture(default_taps(self.engine))

    def _start_apps(self) -> None:
        if not self.apps_on:
            return
        for key, netns in self.fabric.pods.items():
            info = self.state.pods[key]
            if key in self.apps or key in self.dns_servers or info.host_network:
                continue
            extra = {}
            for o in self.app_overrides:
                if o.namespace == key[0] and all(info.labels.get(k) == v for k, v in o.selector.items()):
                    extra.setdefault(o.port, {}).update(o.responses)
            self.apps[key] = apps.start(netns, key[1], self._containers(key), extra)

    def _containers(self, key):
        """The containers of a pod, from its manifest or its workload's template."""
        return controllers.controllers(self.state).spec[key].containers

    def _serve_dns(self) -> None:
        zone = zone_from_state(self.state, serial=1 + self.engine.now // 1_000_000_000)
        key, value = COREDNS_LABEL
        for pod_key, pod in self.state.pods.items():
            if pod.labels.get(key) == value and pod_key in self.fabric.pods:
                server = self.dns_servers.get(pod_key)
                if server is None:
                    self.dns_servers[pod_key] = CoreDNS(zone).serve(self.fabric.pods[pod_key])
                    # DNS over TCP on port 53 too, reading the same (UDP server's) zone
                    self.dns_tcp_servers[pod_key] = CoreDnsTcp(self.dns_servers[pod_key]).serve(
                        self.fabric.pods[pod_key])
                else:
                    server.zone = zone

    def _external_host(self):
        """A host outside the cluster on the underlay (a user's laptop on the
        node network): for NodePorts, external IPs and LoadBalancers."""
        host = self.engine.add(Netns("external"))
        eth0 = host.add_interface("eth0", flannel.mac_for(self.seed, "external/eth0"))
        host.add_address("eth0", f"{EXTERNAL_IP}/{UNDERLAY.prefixlen}")
        self.engine.link(eth0.port, self.fabric.switch.add_bridge_port("port-external"),
                         flannel.UNDERLAY_LATENCY_NS)
        return host

    def _load_balancer(self) -> LoadBalancer:
        lb = self.engine.add(LoadBalancer("loadbalancer", flannel.mac_for(self.seed, "loadbalancer/eth0")))
        self.engine.link(lb.attach(self.engine), self.fabric.switch.add_bridge_port("port-loadbalancer"),
                         flannel.UNDERLAY_LATENCY_NS)
        return lb

    def _program_load_balancer(self) -> None:
        """Every LoadBalancer IP to the ready nodes, or for externalTrafficPolicy
        Local to the ready nodes with a ready local endpoint."""
        ready = [n for n in self.state.nodes.values() if n.ready]
        for info in self.state.services.values():
            if not info.load_balancer_ips:
                continue
            nodes = ready
            if info.service.external_traffic_policy == "Local":
                local = {e.node_name for s in self.state.slices.get(info.key, ()) for e in s.endpoints if e.ready}
                nodes = [n for n in ready if n.name in local]
            members = [(n.name, self.fabric.nodes[n.name].ns.iface("eth0").mac) for n in nodes]
            for ip in info.load_balancer_ips:
                self.load_balancer.set_backends(ip, members)

    def outside_name(self, name: str) -> str | None:
        """What a name means to hosts outside the cluster (their /etc/hosts or
        public DNS): a node's address, or a LoadBalancer Service's (`web` or
        `web.namespace`); None for anything else."""
        node = self.state.nodes.get(name)
        if node is not None:
            return node.ip
        svc, _, ns = name.partition(".")
        info = self.state.services.get((ns or "default", svc))
        return info.load_balancer_ips[0] if info is not None and info.load_balancer_ips else None

    def pod(self, namespace: str, name: str):
        """The namespace (Netns) of a running pod."""
        return self.fabric.pods[(namespace, name)]

    # -- changes, through the controllers ------------------------------------------
    def scale(self, namespace: str, name: str, replicas: int) -> None:
        controllers.scale(self.state, self.model, namespace, name, replicas)
        self.sync()

    def delete_pod(self, namespace: str, name: str) -> None:
        controllers.delete_pod(self.state, namespace, name)
        self.sync()

    def apply(self, more: Model) -> None:
        controllers.apply(self.state, more)
        self.sync()

    def fail_node(self, name: str, not_ready_after_ns: int = 0) -> None:
        """The node goes down: its link to the underlay is cut (its pods stop
        answering) now; the node lifecycle controller marks it NotReady (its
        pods' endpoints not ready) once `not_ready_after_ns` has passed
        without a heartbeat (node-monitor-grace-period, 40 s by default in
        kube-controller-manager; 0 = at once)."""
        if name not in self.fabric.nodes:
            raise EmuError(f"no node named {name!r} (nodes: {', '.join(self.fabric.nodes)})")
        self._cut(self.fabric.nodes[name].ns.iface("eth0").port)

        def not_ready(engine=None):
            controllers.fail_node(self.state, name)
            self.sync()

        if not_ready_after_ns:
            self.engine.at(self.engine.now + int(not_ready_after_ns), not_ready)
        else:
            not_ready()

    def _cut(self, port) -> None:
        """Both ends of a link go down: a deleted veth takes its bridge port
        with it, a dead NIC drops the switch port's carrier (neither is
        flooded to any more)."""
        self.engine.set_link_up(port, False)
        if port.peer >= 0:
            self.engine.set_link_up(self.engine.ports[port.peer], False)

    def sync(self) -> None:
        """After a change through the controllers: wire new pods and unplug
        deleted ones (the kubelet and CNI plugin), update every node's
        kube-proxy rules and the DNS zone. Conntrack entries stay."""
        # a pod re-created under the same name (a StatefulSet's) is a new sandbox: new veth, new IP
        gone = [k for k, ns in self.fabric.pods.items()
                if k not in self.state.pods or (ns.kind == "netns" and self._wired.get(k) != self.state.pods[k].ip)]
        for key in gone:
            pod = self.fabric.pods.pop(key)
            self.apps.pop(key, None)
            if pod.kind == "netns" and not any(pod is n.ns for n in self.fabric.nodes.values()):
                self._cut(pod.iface("eth0").port)  # CNI DEL: the veth pair is gone
        for key, p in self.state.pods.items():
            if key not in self.fabric.pods and p.ip and p.node and not p.host_network:
                name = flannel.pod_device_name(p.namespace, p.name)
                taken = {d.name for d in self.engine.devices}
                n = 2
                while name in taken:   # a re-created pod's sandbox: `db-1~2` in captures
                    name, n = f"{flannel.pod_device_name(p.namespace, p.name)}~{n}", n + 1
                self.fabric.pods[key] = flannel.add_pod(self.engine, self.fabric.nodes[p.node], name, p.ip)
                self._wired[key] = p.ip
        for name, proxy in self.proxies.items():
            proxy.update(self.state)
            if self.conntrack_cleanup:
                self.udp_entries_cleaned += clean_stale_udp(proxy, self.fabric.nodes[name].ns.conntrack.table)
        self._serve_dns()
        self._program_load_balancer()
        self._start_apps()


def default_taps(engine: Engine):
    """Every interface a user would tcpdump: all but the bridges' internal host links."""
    return [p for p in engine.ports if not p.name.endswith("cni0-bridge")]
