"""CoreDNS in a pod: answers DNS queries on UDP port 53 from the zone the
control plane builds (emu.control.dns), as the kubernetes plugin does.

Names outside the cluster zones would go to `forward . /etc/resolv.conf`;
the emulated cluster has no upstream resolver, so those get SERVFAIL, which
is what CoreDNS answers when its upstreams cannot be reached. DNS over TCP
is emu.hosts.dns_tcp, serving the same zone.
"""
from __future__ import annotations

from emu.control import dns
from emu.control.state import ClusterState
from emu.wire import ipv4

DNS_PORT = 53


def zone_from_state(state: ClusterState, serial: int = 1) -> dns.Zone:
    """The kubernetes plugin's view of the cluster: Services, their
    EndpointSlices and the pods."""
    services, slices = [], []
    for info in state.services.values():
        svc = info.service
        ports = tuple(dns.PortRecord(p.port, p.name or "", p.protocol) for p in svc.ports)
        if svc.type == "ExternalName":
            kind = "ExternalName"
        elif info.cluster_ip is None:
            kind = "Headless"
        else:
            kind = "ClusterIP"
        services.append(dns.ServiceRecord(svc.namespace, svc.name, kind, cluster_ip=info.cluster_ip or "",
                                          external_name=svc.external_name or "", ports=ports))
    for (namespace, service), group in state.slices.items():
        for s in group:
            eps = tuple(dns.EndpointRecord(addr, e.hostname or "", e.node_name or "", e.ready,
                                           e.target_ref.name if e.target_ref else "")
                        for e in s.endpoints for addr in e.addresses)
            ports = tuple(dns.PortRecord(p.port or 0, p.name or "", p.protocol) for p in s.ports)
            slices.append(dns.EndpointSliceRecord(namespace, service, eps, ports))
    pods = [dns.PodRecord(p.namespace, p.ip, p.name) for p in state.pods.values() if p.ip]
    return dns.Zone(services, slices, pods, domain=state.settings.cluster_domain,
                    namespaces=state.namespaces or None, serial=serial)


class CoreDNS:
    """The DNS server of one CoreDNS pod."""

    def __init__(self, zone: dns.Zone):
        self.zone = zone
        self.queries = 0

    def serve(self, netns) -> "CoreDNS":
        netns.bind(ipv4.PROTO_UDP, DNS_PORT, self._on_query)
        return self

    def _on_query(self, netns, frame: bytes, l3: int, time: int) -> None:
        from scapy.layers.dns import DNS
        from scapy.layers.inet import IP, UDP

        ip = IP(frame[l3:])
        if not ip.haslayer(UDP):
            return
        query = bytes(ip[UDP].payload)
        self.queries += 1
        answer = self.zone.to_wire(query, transport="udp", forward=_servfail)
        if answer is None:
            return  # not a query (or unreadable): CoreDNS drops it
        reply = IP(src=ip.dst, dst=ip.src) / UDP(sport=ip[UDP].dport, dport=ip[UDP].sport) / answer
        q = DNS(query)
        name = q.qd[0].qname.decode(errors="replace") if q.qd else "?"
        netns.send_ip(netns.engine, bytes(reply), time, note=f"CoreDNS answers {name}")


def _servfail(answer, query) -> bytes:
    """No upstream resolver in the emulated cluster: SERVFAIL, as CoreDNS's forward plugin."""
    from scapy.layers.dns import DNS

    return bytes(DNS(id=query.id, qr=1, rd=query.rd, ra=1, rcode=2, qd=query.qd))
