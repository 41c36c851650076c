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

from emu.control import cluster as controllers
from emu.control import flannel
from emu.control.ipam import UNDERLAY
from emu.control.kubeproxy import KubeProxy
from emu.control.proxier import Proxier
from emu.control.state import ClusterState
from emu.dataplane.engine import Engine
from emu.dataplane.loadbalancer import LoadBalancer
from emu.dataplane.netns import Netns
from emu.hosts.coredns import CoreDNS, zone_from_state
from emu.hosts.dns_tcp import CoreDnsTcp
from emu.model.manifests import Model

COREDNS_LABEL = ("k8s-app", "kube-dns")
EXTERNAL_IP = "192.168.0.200"  # the external host on the underlay


class Cluster:
    def __init__(self, model: Model, seed: int = 1, capture: bool = True):
        self.model = model
        self.seed = seed
        self.state: ClusterState = controllers.build(model, seed)
        self.engine = Engine(seed=seed)
        self.fabric = flannel.build(self.state, self.engine, underlay_plen=UNDERLAY.prefixlen)
        settings = self.state.settings
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
        if capture:
            self.engine.capture(default_taps(self.engine))

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

    def fail_node(self, name: str) -> None:
        """The node goes down: its link to the underlay is cut (its pods stop
        answering) and the controllers mark it NotReady."""
        eth0 = self.fabric.nodes[name].ns.iface("eth0").port
        self.engine.set_link_up(eth0, False)
        controllers.fail_node(self.state, name)
        self.sync()

    def sync(self) -> None:
        """After a change through the controllers: wire new pods and unplug
        deleted ones (the kubelet and CNI plugin), update every node's
        kube-proxy rules and the DNS zone. Conntrack entries stay."""
        for key, p in self.state.pods.items():
            if key not in self.fabric.pods and p.ip and p.node and not p.host_network:
                self.fabric.pods[key] = flannel.add_pod(
                    self.engine, self.fabric.nodes[p.node], flannel.pod_device_name(p.namespace, p.name), p.ip)
        for key in [k for k in self.fabric.pods if k not in self.state.pods]:
            pod = self.fabric.pods.pop(key)
            if pod.kind == "netns" and not any(pod is n.ns for n in self.fabric.nodes.values()):
                self.engine.set_link_up(pod.iface("eth0").port, False)  # CNI DEL: the veth is gone
        for proxy in self.proxies.values():
            proxy.update(self.state)
        self._serve_dns()
        self._program_load_balancer()


def default_taps(engine: Engine):
    """Every interface a user would tcpdump: all but the bridges' internal host links."""
    return [p for p in engine.ports if not p.name.endswith("cni0-bridge")]
