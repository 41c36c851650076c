"""The CoreDNS ``kubernetes`` plugin's zone, as kubeadm configures it.

Input is plain records (:class:`ServiceRecord`, :class:`EndpointSliceRecord`,
:class:`PodRecord`); a controller fills them from the cluster model. A
:class:`Zone` answers ``(qname, qtype)`` with an :class:`Answer` and turns a
DNS query message into the response message CoreDNS would send
(:meth:`Zone.to_wire`).

What is reproduced and where it comes from (coredns/coredns main):

* the Corefile kubeadm writes:
  ``kubernetes cluster.local in-addr.arpa ip6.arpa { pods insecure;
  fallthrough in-addr.arpa ip6.arpa; ttl 30 }`` then ``forward .
  /etc/resolv.conf`` -- so TTL 30, pod records answered for any well-formed
  dashed IP, and negative answers in the reverse zones fall through to
  ``forward`` (reported here as ``Answer.forward``);
* name parsing: plugin/kubernetes/parse.go ``parseRequest`` (5 shapes:
  ``_port._proto.svc.ns.svc.zone``, ``endpoint.svc.ns.svc.zone``,
  ``svc.ns.svc.zone``, ``ns.svc.zone`` (NODATA), longer -> NXDOMAIN; the
  underscore of ``_port``/``_proto`` is stripped when present, not required);
* record lookup: plugin/kubernetes/kubernetes.go ``Records``,
  ``findServices``, ``findPods``, ``endpointHostname``; namespace existence:
  namespace.go; reverse: reverse.go ``serviceRecordForIP``; NS: ns.go;
* record synthesis: plugin/backend_lookup.go ``A``, ``AAAA``, ``SRV`` (weight
  = floor(100 / number of candidate records), min 1; SRV deduplicated on
  (target, port), additional A/AAAA on (target, address)), ``PTR``,
  ``CNAME``, ``TXT``, ``NS``, ``SOA`` (``ns.dns.<zone>``,
  ``hostmaster.<zone>``, refresh 7200, retry 1800, expire 86400, minimum =
  ttl, SOA TTL = min(ttl, 300)) and ``BackendError`` (negative answers carry
  the SOA in the authority section, AA set);
* the handler: plugin/kubernetes/handler.go (the zone keeps the query's
  case; "fake A lookup" for other types to tell NXDOMAIN from NODATA;
  ``m.SetReply(r); m.Authoritative = true`` -> QR, AA, RD copied from the
  query, RA clear, CD copied);
* the outcomes are checked against plugin/kubernetes/handler_test.go,
  handler_case_test.go and handler_pod_insecure_test.go (see
  tests/test_dns_zone.py);
* message size: request/request.go ``SizeAndDo`` (the query's OPT is echoed
  with version 0 and flags other than DO cleared) and ``Scrub`` (no name
  compression unless the reply does not fit; then compress, then drop
  additional records, then answers with TC set); the limit is 512 bytes on
  UDP or the query's EDNS0 size, 65535 on TCP (plugin/pkg/edns ``Size``).

Not modelled: the ``cache`` plugin (older kubeadm Corefiles cache cluster
answers and a cached reply has AA clear), ``loadbalance`` (shuffles A/AAAA
order per reply; here the order is deterministic: endpoint order as given),
zone transfers, multicluster/zonal names, ``endpoint_pod_names``/``autopath``
options and the SERVFAIL that CoreDNS returns before its first API sync.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

__all__ = [
    "PortRecord",
    "ServiceRecord",
    "EndpointRecord",
    "EndpointSliceRecord",
    "PodRecord",
    "RR",
    "Answer",
    "Zone",
    "QTYPES",
    "DEFAULT_TTL",
    "DNS_SCHEMA_VERSION",
]

#: kubeadm's Corefile sets ``ttl 30`` (the plugin default is 5).
DEFAULT_TTL = 30
#: kubernetes.go ``DNSSchemaVersion``; served as ``dns-version.<zone>`` TXT.
DNS_SCHEMA_VERSION = "1.1.0"
#: TTL of the dns-version TXT record (kubernetes.go ``Services``).
DNS_VERSION_TTL = 28800

QTYPES: dict[str, int] = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "MX": 15,
    "TXT": 16, "AAAA": 28, "SRV": 33, "NAPTR": 35, "OPT": 41, "DS": 43,
    "DNSKEY": 48, "HTTPS": 65, "SVCB": 64, "IXFR": 251, "AXFR": 252, "ANY": 255, "CAA": 257,
}
_QTYPE_NAMES = {v: k for k, v in QTYPES.items()}

RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}

_KUBEADM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


# --------------------------------------------------------------------------
# input records


@dataclass(frozen=True)
class PortRecord:
    """A Service port (or an EndpointSlice port: then ``port`` is the target port)."""

    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServiceRecord:
    """What CoreDNS keeps of a Service (object/service.go).

    ``type``: ClusterIP, NodePort, LoadBalancer (all served like ClusterIP),
    ExternalName, or Headless (same as ``cluster_ip="None"``).
    ``cluster_ips`` holds both families of a dual-stack service.
    """

    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ip: str = ""
    cluster_ips: tuple[str, ...] = ()
    external_name: str = ""
    ports: tuple[PortRecord, ...] = ()

    @property
    def ips(self) -> tuple[str, ...]:
        ips = tuple(self.cluster_ips) or ((self.cluster_ip,) if self.cluster_ip else ())
        return tuple(i for i in ips if i and i != "None")

    @property
    def headless(self) -> bool:
        if self.type.lower() == "headless":
            return True
        if self.type == "ExternalName":
            return False
        ips = tuple(self.cluster_ips) or ((self.cluster_ip,) if self.cluster_ip else ())
        return ips == ("None",)


@dataclass(frozen=True)
class EndpointRecord:
    """One endpoint address of an EndpointSlice."""

    ip: str
    hostname: str = ""
    node_name: str = ""
    ready: bool = True
    target_name: str = ""  # targetRef.name (pod name), unused unless endpoint_pod_names


@dataclass(frozen=True)
class EndpointSliceRecord:
    """Endpoints of one service (one EndpointSlice, or all of them merged).

    ``ports`` are the slice's ports (target port numbers). ``None`` copies
    the service's ports, which is right when targetPort == port.
    """

    namespace: str
    service: str
    endpoints: tuple[EndpointRecord, ...] = ()
    ports: tuple[PortRecord, ...] | None = None


@dataclass(frozen=True)
class PodRecord:
    namespace: str
    ip: str
    name: str = ""


# --------------------------------------------------------------------------
# output


@dataclass(frozen=True)
class RR:
    """One resource record. ``rdata`` by type: A/AAAA the address; CNAME/PTR/NS
    the target name; TXT the text; SRV ``(priority, weight, port, target)``;
    SOA ``(mname, rname, serial, refresh, retry, expire, minimum)``."""

    name: str
    type: str
    ttl: int
    rdata: object

    def __str__(self) -> str:
        d = self.rdata
        if isinstance(d, tuple):
            d = " ".join(str(x) for x in d)
        elif self.type == "TXT":
            d = f'"{d}"'
        return f"{self.name}\t{self.ttl}\tIN\t{self.type}\t{d}"


@dataclass(frozen=True)
class Answer:
    """Result of :meth:`Zone.answer`.

    ``forward`` True means the kubernetes plugin did not answer (name outside
    its zones, or a negative answer in a fallthrough zone): the Corefile's
    ``forward . /etc/resolv.conf`` would take the query; ``rcode`` is then
    meaningless. ``chase`` is set for an ExternalName whose target lies
    outside the zone: CoreDNS would append the upstream's answer for
    ``(target, qtype)`` after the CNAME.
    """

    qname: str
    qtype: int
    rcode: str = "NOERROR"
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    authoritative: bool = True
    forward: bool = False
    zone: str | None = None
    chase: tuple[str, int] | None = None

    @property
    def nxdomain(self) -> bool:
        return self.rcode == "NXDOMAIN"

    @property
    def nodata(self) -> bool:
        return self.rcode == "NOERROR" and not self.answer and not self.forward


# --------------------------------------------------------------------------
# helpers


class _NameError(Exception):
    """errNoItems / errNsNotExposed / errInvalidRequest: NXDOMAIN."""


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _qtype_num(qtype: str | int) -> int:
    if isinstance(qtype, int):
        return qtype
    q = str(qtype).upper()
    if q.isdigit():
        return int(q)
    if q.startswith("TYPE") and q[4:].isdigit():
        return int(q[4:])
    try:
        return QTYPES[q]
    except KeyError:
        raise ValueError(f"unknown query type {qtype!r}") from None


def _qtype_name(n: int) -> str:
    return _QTYPE_NAMES.get(n, f"TYPE{n}")


def _is_subdomain(parent: str, child: str) -> bool:
    """dns.IsSubDomain: child equals parent or lies below it (case-insensitive)."""
    p, c = _fqdn(parent).lower(), _fqdn(child).lower()
    return p == "." or c == p or c.endswith("." + p)


def _host_type(host: str) -> str:
    """msg.Service.HostType: A for IPv4, AAAA for IPv6, else CNAME."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "CNAME"
    if ip.version == 4:
        return "A"
    if ip.ipv4_mapped is not None:  # Go's To4() succeeds on ::ffff:a.b.c.d
        return "A"
    return "AAAA"


def _canon_ip(ip: str) -> str:
    a = ipaddress.ip_address(ip)
    return str(a)


def _extract_reverse(name: str) -> str:
    """dnsutil.ExtractAddressFromReverse (name lowercased, fqdn)."""
    if name.endswith(".in-addr.arpa."):
        labels = name[: -len(".in-addr.arpa.")].split(".")
        if len(labels) != 4:
            return ""
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(labels))))
        except ValueError:
            return ""
    if name.endswith(".ip6.arpa."):
        labels = name[: -len(".ip6.arpa.")].split(".")
        if len(labels) != 32 or any(len(x) != 1 for x in labels):
            return ""
        nib = "".join(reversed(labels))
        try:
            return str(ipaddress.IPv6Address(int(nib, 16)))
        except ValueError:
            return ""
    return ""


def _endpoint_hostname(ep: EndpointRecord, endpoint_pod_names: bool = False) -> str:
    """kubernetes.go endpointHostname: hostname, else the dashed IP."""
    if ep.hostname:
        return ep.hostname
    if endpoint_pod_names and ep.target_name:
        return ep.target_name
    if "." in ep.ip:
        return ep.ip.replace(".", "-")
    if ":" in ep.ip:
        return ep.ip.replace(":", "-")
    return ""


@dataclass
class _Svc:
    """msg.Service: what the backend hands to the record synthesis."""

    host: str
    port: int = 0
    ttl: int = 0
    key: str = ""  # owner-ish domain name (msg.Domain(Key)), no trailing dot
    text: str = ""


@dataclass
class _Req:
    port: str = ""
    protocol: str = ""
    endpoint: str = ""
    service: str = ""
    namespace: str = ""
    pod_or_svc: str = ""


def _match(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _match_port_proto(a_port: str, b_port: str, a_proto: str, b_proto: str) -> bool:
    return (_match(a_port, b_port) or a_port == "") and (_match(a_proto, b_proto) or a_proto == "")


# --------------------------------------------------------------------------
# the zone


class Zone:
    """The kubernetes plugin's view of a cluster, answering like CoreDNS."""

    def __init__(
        self,
        services: Iterable[ServiceRecord] = (),
        endpoint_slices: Iterable[EndpointSliceRecord] = (),
        pods: Iterable[PodRecord] = (),
        *,
        domain: str = "cluster.local",
        namespaces: Iterable[str] | None = None,
        ttl: int = DEFAULT_TTL,
        pod_mode: str = "insecure",
        serial: int = 1,
        dns_service: tuple[str, str] | None = ("kube-system", "kube-dns"),
        local_ips: Sequence[str] = (),
        reverse_zones: Sequence[str] = ("in-addr.arpa", "ip6.arpa"),
        fallthrough: Sequence[str] = ("in-addr.arpa", "ip6.arpa"),
        endpoint_pod_names: bool = False,
    ) -> None:
        if not 0 <= int(ttl) <= 3600:
            raise ValueError("ttl must be in 0..3600 (kubernetes plugin limit)")
        if pod_mode not in ("disabled", "insecure", "verified"):
            raise ValueError("pod_mode must be disabled, insecure or verified")
        self.domain = _fqdn(domain.strip()).lower()
        self.ttl = int(ttl)
        self.pod_mode = pod_mode
        self.serial = int(serial) & 0xFFFFFFFF
        self.endpoint_pod_names = endpoint_pod_names
        self.zones = [self.domain] + [_fqdn(z).lower() for z in reverse_zones]
        self.fallthrough = [_fqdn(z).lower() for z in fallthrough]
        self.local_ips = [_canon_ip(i) for i in local_ips]
        self.dns_service = dns_service

        self._svcs: dict[tuple[str, str], list[ServiceRecord]] = {}
        self._slices: dict[tuple[str, str], list[EndpointSliceRecord]] = {}
        self._svc_by_ip: dict[str, ServiceRecord] = {}
        self._ep_by_ip: dict[str, list[tuple[EndpointSliceRecord, EndpointRecord]]] = {}
        self._pods_by_ip: dict[str, list[PodRecord]] = {}
        ns = set(_KUBEADM_NAMESPACES if namespaces is None else ())
        ns.update(n.lower() for n in (namespaces or ()))

        for s in services:
            key = (s.namespace.lower(), s.name.lower())
            self._svcs.setdefault(key, []).append(s)
            ns.add(s.namespace.lower())
            for ip in s.ips:
                self._svc_by_ip.setdefault(_canon_ip(ip), s)
        for sl in endpoint_slices:
            key = (sl.namespace.lower(), sl.service.lower())
            eps = tuple(
                EndpointRecord(_canon_ip(e.ip), e.hostname, e.node_name, e.ready, e.target_name)
                for e in sl.endpoints
            )
            ports = sl.ports
            if ports is None:
                svc = self._svcs.get(key)
                ports = svc[0].ports if svc else ()
            sl = EndpointSliceRecord(sl.namespace, sl.service, eps, tuple(ports))
            self._slices.setdefault(key, []).append(sl)
            ns.add(sl.namespace.lower())
            for e in eps:
                if e.ready:  # object/endpoint.go keeps ready (or unset) endpoints only
                    self._ep_by_ip.setdefault(e.ip, []).append((sl, e))
        for p in pods:
            self._pods_by_ip.setdefault(_canon_ip(p.ip), []).append(p)
            ns.add(p.namespace.lower())
        self.namespaces = frozenset(ns)

    # ---------------------------------------------------------------- backend

    def _ns_exposed(self, ns: str) -> bool:
        return ns.lower() in self.namespaces

    @staticmethod
    def _parse(name: str, zone: str) -> _Req:
        """parse.go parseRequest (name and zone lowercased fqdn)."""
        r = _Req()
        base = name[: -len(zone)].rstrip(".") if name != zone else ""
        if base in ("", "svc", "pod"):
            return r
        segs = base.split(".")
        last = len(segs) - 1
        r.pod_or_svc = segs[last]
        if r.pod_or_svc not in ("pod", "svc"):
            raise _NameError("invalid request")
        last -= 1
        if last < 0:
            return r
        r.namespace = segs[last]
        last -= 1
        if last < 0:
            return r
        r.service = segs[last]
        last -= 1
        if last < 0:
            return r
        if last == 0:
            r.endpoint = segs[0]
        elif last == 1:
            r.protocol = segs[1][1:] if segs[1].startswith("_") else segs[1]
            r.port = segs[0][1:] if segs[0].startswith("_") else segs[0]
        else:
            raise _NameError("too long")
        return r

    def _records(self, name: str, zone: str, zone_q: str) -> list[_Svc]:
        """kubernetes.go Records."""
        r = self._parse(name, zone)
        if r.pod_or_svc == "":
            return []
        if name.endswith(".in-addr.arpa.") or name.endswith(".ip6.arpa."):
            raise _NameError("reverse")
        if not self._ns_exposed(r.namespace):
            raise _NameError("namespace")
        if r.pod_or_svc == "pod":
            return self._find_pods(r, zone_q)
        return self._find_services(r, zone_q)

    def _find_pods(self, r: _Req, zone_q: str) -> list[_Svc]:
        if self.pod_mode == "disabled":
            raise _NameError("pods disabled")
        podname = r.service
        if podname == "":
            return []  # NODATA
        if podname.count("-") == 3 and "--" not in podname:
            ip = podname.replace("-", ".")
        else:
            ip = podname.replace("-", ":")
        key = f"{podname}.{r.namespace}.pod.{zone_q}".rstrip(".")
        try:
            canon = _canon_ip(ip)
        except ValueError:
            raise _NameError("not an ip") from None
        if self.pod_mode == "insecure":
            return [_Svc(host=canon, ttl=self.ttl, key=key)]
        out = [
            _Svc(host=canon, ttl=self.ttl, key=key)
            for p in self._pods_by_ip.get(canon, ())
            if _match(r.namespace, p.namespace)
        ]
        if not out:
            raise _NameError("no such pod")
        return out

    def _find_services(self, r: _Req, zone_q: str) -> list[_Svc]:
        if r.service == "":
            return []  # NODATA for <ns>.svc.<zone>
        found = False
        out: list[_Svc] = []
        zq = zone_q.rstrip(".")
        for svc in self._svcs.get((r.namespace.lower(), r.service.lower()), ()):
            base = f"{svc.name}.{svc.namespace}.svc.{zq}"
            if svc.type == "ExternalName":
                if r.endpoint:
                    continue
                if _host_type(svc.external_name) == "CNAME":
                    out.append(_Svc(host=svc.external_name, ttl=self.ttl, key=base))
                    found = True
                continue
            if svc.headless or r.endpoint:
                for sl in self._slices.get((svc.namespace.lower(), svc.name.lower()), ()):
                    ports = sl.ports or (PortRecord(port=-1, name="", protocol=""),)
                    for ep in sl.endpoints:
                        if not ep.ready:
                            continue
                        hn = _endpoint_hostname(ep, self.endpoint_pod_names)
                        if r.endpoint and not _match(r.endpoint, hn):
                            continue
                        for p in ports:
                            if not _match_port_proto(r.port, p.name, r.protocol, p.protocol):
                                continue
                            out.append(_Svc(host=ep.ip, port=p.port, ttl=self.ttl, key=f"{hn}.{base}"))
                            found = True
                continue
            for p in svc.ports:
                if not _match_port_proto(r.port, p.name, r.protocol, p.protocol):
                    continue
                found = True
                for ip in svc.ips:
                    out.append(_Svc(host=_canon_ip(ip), port=p.port, ttl=self.ttl, key=base))
        if not found:
            raise _NameError("no items")
        return out

    def _ns_addrs(self, zone_q: str) -> list[tuple[str, str]]:
        """ns.go nsAddrs: (name, ip) of the CoreDNS service."""
        out: list[tuple[str, str]] = []
        if self.dns_service is not None:
            ns, name = self.dns_service
            for svc in self._svcs.get((ns.lower(), name.lower()), ()):
                svc_name = f"{svc.name}.{svc.namespace}.svc.{zone_q}"
                if svc.headless:
                    for sl in self._slices.get((ns.lower(), name.lower()), ()):
                        for ep in sl.endpoints:
                            if ep.ready:
                                out.append((f"{_endpoint_hostname(ep)}.{svc_name}", ep.ip))
                else:
                    out.extend((svc_name, _canon_ip(ip)) for ip in svc.ips)
        if not out:
            out = [(f"ns.dns.{zone_q}", ip) for ip in self.local_ips]
        return out

    def _services(self, name: str, qtype: int, zone: str, zone_q: str) -> list[_Svc]:
        """kubernetes.go Services."""
        if qtype == QTYPES["TXT"]:
            base = name[: -len(zone)].rstrip(".") if name != zone else ""
            segs = base.split(".") if base else []
            if len(segs) != 1 or segs[0] != "dns-version":
                return []
            return [_Svc(host="", ttl=DNS_VERSION_TTL, text=DNS_SCHEMA_VERSION)]
        if qtype == QTYPES["NS"]:
            return [
                _Svc(host=ip, ttl=self.ttl, key=n.rstrip("."))
                for n, ip in self._ns_addrs(zone_q)
            ]
        if name.startswith("ns.dns.") and name[len("ns.dns."):] == zone:
            want = {QTYPES["A"]: "A", QTYPES["AAAA"]: "AAAA"}.get(qtype)
            return [
                _Svc(host=ip, ttl=self.ttl, key=name.rstrip("."))
                for _, ip in self._ns_addrs(zone_q)
                if _host_type(ip) == want
            ]
        s = self._records(name, zone, zone_q)
        if qtype == QTYPES["SRV"]:
            s = [x for x in s if _host_type(x.host) != "CNAME"]
        return s

    def _reverse(self, name: str, zone: str, zone_q: str) -> list[_Svc]:
        """reverse.go Reverse / serviceRecordForIP."""
        ip = _extract_reverse(name)
        if not ip:
            self._records(name, zone, zone_q)
            return []
        primary = self.domain.rstrip(".")
        svc = self._svc_by_ip.get(ip)
        if svc is not None and self._ns_exposed(svc.namespace):
            return [_Svc(host=f"{svc.name}.{svc.namespace}.svc.{primary}", ttl=self.ttl)]
        out = [
            _Svc(host=f"{_endpoint_hostname(ep, self.endpoint_pod_names)}.{sl.service}.{sl.namespace}.svc.{primary}",
                 ttl=self.ttl)
            for sl, ep in self._ep_by_ip.get(ip, ())
            if self._ns_exposed(sl.namespace)
        ]
        if not out:
            raise _NameError("no reverse")
        return out

    # ------------------------------------------------------ record synthesis

    def _addr(self, qname: str, qtype: int, zone: str, zone_q: str, previous: list[RR],
              chase: list) -> list[RR]:
        """backend_lookup.go A / AAAA / TXT (they share the CNAME handling)."""
        name = qname.lower()
        services = self._services(name, qtype, zone, zone_q)  # checkForApex: apex.dns never exists
        want = _qtype_name(qtype)
        records: list[RR] = []
        dup: set[str] = set()
        for s in services:
            what = "TXT" if (qtype == QTYPES["TXT"] and s.text) else _host_type(s.host)
            if what == "CNAME":
                target = _fqdn(s.host)
                if _is_subdomain(name, target):  # x CNAME x (or below): loop
                    continue
                cname = RR(qname, "CNAME", s.ttl, target)
                if len(previous) > 7:
                    continue
                if any(p.type == "CNAME" and p.rdata == target for p in previous):
                    continue
                if _is_subdomain(zone, target):
                    try:
                        nxt = self._addr(target, qtype, zone, target[len(target) - len(zone):],
                                         previous + [cname], chase)
                    except _NameError:
                        nxt = []
                    if nxt:
                        records.append(cname)
                        records.extend(nxt)
                    continue
                # target outside the zone: CoreDNS asks its upstream (itself ->
                # forward) and appends that answer after the CNAME.
                records.append(cname)
                chase.append((target, qtype))
                continue
            if what == want:
                k = s.text if what == "TXT" else s.host
                if k not in dup:
                    dup.add(k)
                    records.append(RR(qname, what, s.ttl, k))
        return records

    def _srv(self, qname: str, zone: str, zone_q: str) -> tuple[list[RR], list[RR]]:
        services = self._services(qname.lower(), QTYPES["SRV"], zone, zone_q)
        n = len(services)  # all priority 0, weight 0 -> 100 each
        records: list[RR] = []
        extra: list[RR] = []
        dup: set[tuple] = set()
        for s in services:
            if s.port == -1:
                continue
            w = math.floor((100.0 / (100.0 * n)) * 100.0)
            w = w if w > 0 else 1
            what = _host_type(s.host)
            target = _fqdn(s.key)
            if (target, "", s.port) not in dup:
                dup.add((target, "", s.port))
                records.append(RR(qname, "SRV", s.ttl, (0, w, s.port & 0xFFFF, target)))
            if (target, s.host, 0) not in dup:
                dup.add((target, s.host, 0))
                extra.append(RR(target, what, s.ttl, s.host))
        return records, extra

    def _soa(self, zone_q: str) -> RR:
        return RR(
            _fqdn(zone_q), "SOA", min(self.ttl, 300),
            (f"ns.dns.{zone_q}", f"hostmaster.{zone_q}", self.serial, 7200, 1800, 86400, self.ttl),
        )

    def _match_zone(self, name: str) -> str | None:
        best = None
        for z in self.zones:
            if _is_subdomain(z, name) and (best is None or len(z) > len(best)):
                best = z
        return best

    # ------------------------------------------------------------ the handler

    def answer(self, qname: str, qtype: str | int = "A") -> Answer:
        """Answer one question as CoreDNS (kubeadm Corefile) would."""
        qt = _qtype_num(qtype)
        qname = _fqdn(qname.strip())
        name = qname.lower()
        zone = self._match_zone(name)
        if zone is None:
            return Answer(qname, qt, authoritative=False, forward=True)
        zone_q = qname[len(qname) - len(zone):]  # keeps the query's case
        records: list[RR] = []
        extra: list[RR] = []
        chase: list = []
        try:
            if qt in (QTYPES["A"], QTYPES["AAAA"], QTYPES["TXT"]):
                records = self._addr(qname, qt, zone, zone_q, [], chase)
            elif qt == QTYPES["CNAME"]:
                s = self._services(name, qt, zone, zone_q)
                if s and _host_type(s[0].host) == "CNAME":
                    records = [RR(qname, "CNAME", s[0].ttl, _fqdn(s[0].host))]
            elif qt == QTYPES["PTR"]:
                seen: set[str] = set()
                for s in self._reverse(name, zone, zone_q):
                    if _host_type(s.host) == "CNAME" and s.host not in seen:
                        seen.add(s.host)
                        records.append(RR(qname, "PTR", s.ttl, _fqdn(s.host)))
            elif qt == QTYPES["SRV"]:
                records, extra = self._srv(qname, zone, zone_q)
            elif qt == QTYPES["SOA"] and name == zone:
                records = [self._soa(zone_q)]
            elif qt == QTYPES["NS"] and name == zone:
                seen = set()
                for s in self._services(name, qt, zone, zone_q):
                    ns_name = _fqdn(s.key)
                    extra.append(RR(ns_name, _host_type(s.host), s.ttl, s.host))
                    if ns_name not in seen:
                        seen.add(ns_name)
                        records.append(RR(qname, "NS", s.ttl, ns_name))
            else:
                # MX (never Mail here), non-apex SOA/NS and every other type:
                # a fake A lookup tells NXDOMAIN from NODATA.
                self._addr(qname, QTYPES["A"], zone, zone_q, [], [])
        except _NameError:
            if any(_is_subdomain(f, name) for f in self.fallthrough):
                return Answer(qname, qt, authoritative=False, forward=True, zone=zone)
            return Answer(qname, qt, "NXDOMAIN", authority=(self._soa(zone_q),), zone=zone)
        if not records:
            return Answer(qname, qt, "NOERROR", authority=(self._soa(zone_q),), zone=zone)
        return Answer(qname, qt, "NOERROR", tuple(records), (), tuple(extra), zone=zone,
                      chase=chase[0] if chase else None)

    # ---------------------------------------------------------------- on wire

    def to_wire(
        self,
        query: bytes,
        *,
        transport: str = "udp",
        forward: Callable[[Answer, object], bytes | None] | None = None,
    ) -> bytes | None:
        """Response bytes CoreDNS would send for a query message.

        Returns None for a query the kubernetes plugin does not answer
        (``Answer.forward``), unless ``forward(answer, query_dns)`` supplies
        the bytes (the upstream's reply).
        """
        from scapy.layers.dns import DNS

        try:
            q = DNS(query)
        except Exception:  # pragma: no cover - scapy rarely raises
            return None
        if len(query) < 12:
            return None
        qd = list(q.qd or [])
        if q.qr == 1:
            return None  # miekg's default accept func ignores responses
        if q.opcode != 0:
            return bytes(DNS(id=q.id, qr=1, opcode=q.opcode, rcode=RCODES["NOTIMP"], qd=[]))
        if len(qd) != 1:
            return bytes(DNS(id=q.id, qr=1, opcode=q.opcode, rcode=RCODES["FORMERR"], qd=[]))
        question = qd[0]
        qname = question.qname.decode("ascii", "replace") if isinstance(question.qname, bytes) else str(question.qname)
        ans = self.answer(qname, int(question.qtype))
        if ans.forward:
            return forward(ans, q) if forward is not None else None
        return self.message(q, ans, transport=transport)

    def message(self, q, ans: Answer, *, transport: str = "udp") -> bytes:
        """Serialise ``ans`` as the reply to the Scapy query ``q`` (SizeAndDo + Scrub)."""
        from scapy.layers.dns import DNS, DNSRROPT

        opt = None
        for rr in list(q.ar or []):
            if isinstance(rr, DNSRROPT):
                opt = rr
                break
        answers = [_to_scapy(r) for r in ans.answer]
        auth = [_to_scapy(r) for r in ans.authority]
        extra = [_to_scapy(r) for r in ans.additional]
        opt_rr = None
        if opt is not None:
            do = int(opt.z) & 0x8000
            opt_rr = DNSRROPT(rrname=".", rclass=int(opt.rclass), extrcode=0, version=0, z=do, rdata=[])
        if transport == "udp":
            size = int(opt.rclass) if opt is not None else 0
            size = max(size, 512)
        else:
            size = 65535
        qd = list(q.qd)

        def build(an, ex, tc=0, compress=False):
            ar = list(ex) + ([opt_rr] if opt_rr is not None else [])
            m = DNS(
                id=q.id, qr=1, opcode=q.opcode, aa=1 if ans.authoritative else 0, tc=tc,
                rd=q.rd, ra=0, z=0, ad=0, cd=q.cd, rcode=RCODES[ans.rcode],
                qd=qd, an=list(an), ns=list(auth), ar=ar,
            )
            return bytes(m.compress()) if compress else bytes(m)

        raw = build(answers, extra)
        if len(raw) <= size:
            return raw
        raw = build(answers, extra, compress=True)
        if len(raw) <= size:
            return raw
        for k in range(len(extra) - 1, -1, -1):
            raw = build(answers, extra[:k], compress=True)
            if len(raw) <= size:
                return raw
        for k in range(len(answers) - 1, -1, -1):
            raw = build(answers[:k], [], tc=1, compress=True)
            if len(raw) <= size:
                return raw
        return build([], [], tc=1, compress=True)


def _to_scapy(r: RR):
    from scapy.layers.dns import DNSRR, DNSRRSOA, DNSRRSRV

    if r.type == "SOA":
        mname, rname, serial, refresh, retry, expire, minimum = r.rdata  # type: ignore[misc]
        return DNSRRSOA(rrname=r.name, ttl=r.ttl, mname=mname, rname=rname, serial=serial,
                        refresh=refresh, retry=retry, expire=expire, minimum=minimum)
    if r.type == "SRV":
        prio, weight, port, target = r.rdata  # type: ignore[misc]
        return DNSRRSRV(rrname=r.name, ttl=r.ttl, priority=prio, weight=weight, port=port, target=target)
    if r.type == "TXT":
        return DNSRR(rrname=r.name, type="TXT", ttl=r.ttl, rdata=[str(r.rdata)])
    return DNSRR(rrname=r.name, type=r.type, ttl=r.ttl, rdata=r.rdata)
