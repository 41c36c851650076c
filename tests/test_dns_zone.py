"""CoreDNS kubernetes-plugin zone: answers table and wire round trips.

The ``testns`` fixture and most expectations are CoreDNS's own
(coredns/coredns plugin/kubernetes/handler_test.go ``dnsTestCases``,
handler_case_test.go, handler_pod_insecure_test.go), re-stated at kubeadm's
``ttl 30`` (SOA TTL = min(ttl, 300) = 30, SOA minimum = ttl).
"""

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRROPT

from emu.control.dns import (
    RR,
    EndpointRecord,
    EndpointSliceRecord,
    PodRecord,
    PortRecord,
    ServiceRecord,
    Zone,
)

SERIAL = 1499347823
HTTP = (PortRecord(80, "http", "TCP"),)

SERVICES = [
    ServiceRecord("kube-system", "kube-dns", cluster_ip="10.96.0.10",
                  ports=(PortRecord(53, "dns", "UDP"), PortRecord(53, "dns-tcp", "TCP"),
                         PortRecord(9153, "metrics", "TCP"))),
    ServiceRecord("default", "kubernetes", cluster_ip="10.96.0.1", ports=(PortRecord(443, "https", "TCP"),)),
    ServiceRecord("testns", "svc1", cluster_ip="10.0.0.1", ports=HTTP),
    ServiceRecord("testns", "svcempty", cluster_ip="10.0.0.1", ports=HTTP),
    ServiceRecord("testns", "svc6", cluster_ip="1234:abcd::1", ports=HTTP),
    ServiceRecord("testns", "hdls1", cluster_ip="None", ports=HTTP),
    ServiceRecord("testns", "external", type="ExternalName", external_name="ext.interwebs.test", ports=HTTP),
    ServiceRecord("testns", "external-to-service", type="ExternalName",
                  external_name="svc1.testns.svc.cluster.local.", ports=HTTP),
    ServiceRecord("testns", "hdlsprtls", type="Headless"),
    ServiceRecord("testns", "svc-dual-stack", cluster_ips=("10.0.0.3", "10::3"), ports=HTTP),
    ServiceRecord("testns", "multi", cluster_ip="10.0.0.7",
                  ports=(PortRecord(80, "http", "TCP"), PortRecord(443, "https", "TCP"), PortRecord(8080))),
    ServiceRecord("testns", "hdls-empty", cluster_ip="None", ports=HTTP),
    ServiceRecord("testns", "web", type="NodePort", cluster_ip="10.96.5.5", ports=HTTP),
]
SLICES = [
    EndpointSliceRecord("kube-system", "kube-dns", (EndpointRecord("10.244.0.2"), EndpointRecord("10.244.0.3"))),
    EndpointSliceRecord("testns", "svc1", (EndpointRecord("172.0.0.1", hostname="ep1a"),)),
    EndpointSliceRecord("testns", "hdls1", (
        EndpointRecord("172.0.0.2"), EndpointRecord("172.0.0.3"),
        EndpointRecord("172.0.0.4", hostname="dup-name"), EndpointRecord("172.0.0.5", hostname="dup-name"),
        EndpointRecord("5678:abcd::1"), EndpointRecord("5678:abcd::2"),
        EndpointRecord("172.0.0.9", ready=False),  # not ready: never published
    )),
    EndpointSliceRecord("testns", "hdlsprtls", (EndpointRecord("172.0.0.20"),), ports=()),
    EndpointSliceRecord("testns", "hdls-empty", (EndpointRecord("172.0.0.30", ready=False),)),
    EndpointSliceRecord("testns", "web", (EndpointRecord("10.244.1.5"),),
                        ports=(PortRecord(8080, "http", "TCP"),)),
]
PODS = [PodRecord("podns", "10.240.0.1")]

ZONE = Zone(SERVICES, SLICES, PODS, namespaces=["podns"], serial=SERIAL)

SOA = RR("cluster.local.", "SOA", 30,
         ("ns.dns.cluster.local.", "hostmaster.cluster.local.", SERIAL, 7200, 1800, 86400, 30))


def A(name, ip, ttl=30):
    return RR(name, "A", ttl, ip)


def AAAA(name, ip):
    return RR(name, "AAAA", 30, ip)


def SRV(name, w, port, target, prio=0):
    return RR(name, "SRV", 30, (prio, w, port, target))


S = ".testns.svc.cluster.local."
H = "hdls1" + S

# qname, qtype, rcode, answer, additional (authority is SOA iff answer empty)
CASES = [
    # ClusterIP service
    ("svc1" + S, "A", "NOERROR", [A("svc1" + S, "10.0.0.1")], []),
    ("svcempty" + S, "A", "NOERROR", [A("svcempty" + S, "10.0.0.1")], []),
    ("web" + S, "A", "NOERROR", [A("web" + S, "10.96.5.5")], []),
    ("svc1" + S, "AAAA", "NOERROR", [], []),  # NODATA
    ("svc1" + S, "TXT", "NOERROR", [], []),
    ("svc1" + S, "MX", "NOERROR", [], []),
    ("svc1" + S, "HINFO", "NOERROR", [], []),
    ("svc1" + S, "SOA", "NOERROR", [], []),
    ("svc1" + S, "NS", "NOERROR", [], []),
    ("svc1" + S, "PTR", "NOERROR", [], []),
    ("svc6" + S, "AAAA", "NOERROR", [AAAA("svc6" + S, "1234:abcd::1")], []),
    ("svc6" + S, "A", "NOERROR", [], []),
    ("svc-dual-stack" + S, "A", "NOERROR", [A("svc-dual-stack" + S, "10.0.0.3")], []),
    ("svc-dual-stack" + S, "AAAA", "NOERROR", [AAAA("svc-dual-stack" + S, "10::3")], []),
    # SRV, ClusterIP
    ("svc1" + S, "SRV", "NOERROR", [SRV("svc1" + S, 100, 80, "svc1" + S)], [A("svc1" + S, "10.0.0.1")]),
    ("_http._tcp.svc1" + S, "SRV", "NOERROR", [SRV("_http._tcp.svc1" + S, 100, 80, "svc1" + S)],
     [A("svc1" + S, "10.0.0.1")]),
    ("_http._tcp.svcempty" + S, "SRV", "NOERROR", [SRV("_http._tcp.svcempty" + S, 100, 80, "svcempty" + S)],
     [A("svcempty" + S, "10.0.0.1")]),
    ("_http._tcp.svc6" + S, "SRV", "NOERROR", [SRV("_http._tcp.svc6" + S, 100, 80, "svc6" + S)],
     [AAAA("svc6" + S, "1234:abcd::1")]),
    ("svc-dual-stack" + S, "SRV", "NOERROR", [SRV("svc-dual-stack" + S, 50, 80, "svc-dual-stack" + S)],
     [A("svc-dual-stack" + S, "10.0.0.3"), AAAA("svc-dual-stack" + S, "10::3")]),
    ("_https._tcp.multi" + S, "SRV", "NOERROR", [SRV("_https._tcp.multi" + S, 100, 443, "multi" + S)],
     [A("multi" + S, "10.0.0.7")]),
    ("multi" + S, "SRV", "NOERROR",  # bare SRV: every port, unnamed ones included
     [SRV("multi" + S, 33, 80, "multi" + S), SRV("multi" + S, 33, 443, "multi" + S),
      SRV("multi" + S, 33, 8080, "multi" + S)], [A("multi" + S, "10.0.0.7")]),
    ("_http._udp.svc1" + S, "SRV", "NXDOMAIN", [], []),
    ("_nope._tcp.svc1" + S, "SRV", "NXDOMAIN", [], []),
    ("_dns._udp.kube-dns.kube-system.svc.cluster.local.", "SRV", "NOERROR",
     [SRV("_dns._udp.kube-dns.kube-system.svc.cluster.local.", 100, 53, "kube-dns.kube-system.svc.cluster.local.")],
     [A("kube-dns.kube-system.svc.cluster.local.", "10.96.0.10")]),
    # headless: ready endpoints only
    (H, "A", "NOERROR", [A(H, "172.0.0.2"), A(H, "172.0.0.3"), A(H, "172.0.0.4"), A(H, "172.0.0.5")], []),
    (H, "AAAA", "NOERROR", [AAAA(H, "5678:abcd::1"), AAAA(H, "5678:abcd::2")], []),
    ("hdlsprtls" + S, "A", "NOERROR", [A("hdlsprtls" + S, "172.0.0.20")], []),
    ("172-0-0-20.hdlsprtls" + S, "A", "NOERROR", [A("172-0-0-20.hdlsprtls" + S, "172.0.0.20")], []),
    ("hdlsprtls" + S, "SRV", "NOERROR", [], []),  # portless: no SRV, still exists
    ("hdls-empty" + S, "A", "NXDOMAIN", [], []),  # no ready endpoints
    ("172-0-0-2." + H, "A", "NOERROR", [A("172-0-0-2." + H, "172.0.0.2")], []),
    ("172-0-0-3." + H, "A", "NOERROR", [A("172-0-0-3." + H, "172.0.0.3")], []),
    ("dup-name." + H, "A", "NOERROR", [A("dup-name." + H, "172.0.0.4"), A("dup-name." + H, "172.0.0.5")], []),
    ("5678-abcd--2." + H, "AAAA", "NOERROR", [AAAA("5678-abcd--2." + H, "5678:abcd::2")], []),
    ("5678-abcd--1." + H, "AAAA", "NOERROR", [AAAA("5678-abcd--1." + H, "5678:abcd::1")], []),
    ("172-0-0-9." + H, "A", "NXDOMAIN", [], []),  # not ready
    ("bogusendpoint." + H, "A", "NXDOMAIN", [], []),
    ("bogusendpoint.svc0" + S, "A", "NXDOMAIN", [], []),
    # endpoint names exist for ClusterIP services too
    ("ep1a.svc1" + S, "A", "NOERROR", [A("ep1a.svc1" + S, "172.0.0.1")], []),
    ("10-244-1-5.web" + S, "A", "NOERROR", [A("10-244-1-5.web" + S, "10.244.1.5")], []),
    # SRV, headless: N endpoints x M named ports, weight floor(100/6) = 16
    ("_http._tcp." + H, "SRV", "NOERROR",
     [SRV("_http._tcp." + H, 16, 80, t + "." + H)
      for t in ("172-0-0-2", "172-0-0-3", "dup-name", "5678-abcd--1", "5678-abcd--2")],
     [A("172-0-0-2." + H, "172.0.0.2"), A("172-0-0-3." + H, "172.0.0.3"),
      A("dup-name." + H, "172.0.0.4"), A("dup-name." + H, "172.0.0.5"),
      AAAA("5678-abcd--1." + H, "5678:abcd::1"), AAAA("5678-abcd--2." + H, "5678:abcd::2")]),
    # endpoint port numbers (targetPort), not the service port
    ("_http._tcp.10-244-1-5.web" + S, "SRV", "NXDOMAIN", [], []),  # too many labels
    ("10-244-1-5.web" + S, "SRV", "NOERROR", [SRV("10-244-1-5.web" + S, 100, 8080, "10-244-1-5.web" + S)],
     [A("10-244-1-5.web" + S, "10.244.1.5")]),
    # ExternalName
    ("external" + S, "CNAME", "NOERROR", [RR("external" + S, "CNAME", 30, "ext.interwebs.test.")], []),
    ("external" + S, "A", "NOERROR", [RR("external" + S, "CNAME", 30, "ext.interwebs.test.")], []),
    ("external-to-service" + S, "A", "NOERROR",
     [RR("external-to-service" + S, "CNAME", 30, "svc1.testns.svc.cluster.local."), A("svc1" + S, "10.0.0.1")],
     []),
    ("external" + S, "SRV", "NOERROR", [], []),
    ("endpoint.external" + S, "CNAME", "NXDOMAIN", [], []),
    # nonexistent
    ("svc0" + S, "A", "NXDOMAIN", [], []),
    ("svc0" + S, "AAAA", "NXDOMAIN", [], []),
    ("svc0.svc-nons.svc.cluster.local.", "A", "NXDOMAIN", [], []),
    ("a.b.c.svc1" + S, "A", "NXDOMAIN", [], []),
    ("foo.cluster.local.", "NS", "NXDOMAIN", [], []),
    ("foo.svc.cluster.local.", "NS", "NXDOMAIN", [], []),
    ("dns-version.cluster.local.", "A", "NXDOMAIN", [], []),
    # structure names: NODATA
    ("svc.cluster.local.", "A", "NOERROR", [], []),
    ("pod.cluster.local.", "A", "NOERROR", [], []),
    ("testns.svc.cluster.local.", "A", "NOERROR", [], []),
    ("svc.cluster.local.", "NS", "NOERROR", [], []),
    ("testns.svc.cluster.local.", "NS", "NOERROR", [], []),
    ("cluster.local.", "A", "NOERROR", [], []),
    # TXT
    ("dns-version.cluster.local.", "TXT", "NOERROR", [RR("dns-version.cluster.local.", "TXT", 28800, "1.1.0")], []),
    # pods insecure
    ("10-240-0-1.podns.pod.cluster.local.", "A", "NOERROR", [A("10-240-0-1.podns.pod.cluster.local.", "10.240.0.1")], []),
    ("172-0-0-2.podns.pod.cluster.local.", "A", "NOERROR", [A("172-0-0-2.podns.pod.cluster.local.", "172.0.0.2")], []),
    ("10-244-3-7.testns.pod.cluster.local.", "A", "NOERROR", [A("10-244-3-7.testns.pod.cluster.local.", "10.244.3.7")], []),
    ("10-244-3-7.testns.pod.cluster.local.", "AAAA", "NOERROR", [], []),
    ("blah.podns.pod.cluster.local.", "A", "NXDOMAIN", [], []),
    ("blah.podns.pod.cluster.local.", "AAAA", "NXDOMAIN", [], []),
    ("blah.podns.pod.cluster.local.", "HINFO", "NXDOMAIN", [], []),
    ("blah.pod-nons.pod.cluster.local.", "A", "NXDOMAIN", [], []),
    ("10-240-0-1.pod-nons.pod.cluster.local.", "A", "NXDOMAIN", [], []),
    ("podns.pod.cluster.local.", "A", "NOERROR", [], []),
    # PTR: service IP, endpoint IPs (one per selecting service)
    ("1.0.0.10.in-addr.arpa.", "PTR", "NOERROR", [RR("1.0.0.10.in-addr.arpa.", "PTR", 30, "svc1.testns.svc.cluster.local.")], []),
    ("10.0.96.10.in-addr.arpa.", "PTR", "NOERROR",
     [RR("10.0.96.10.in-addr.arpa.", "PTR", 30, "kube-dns.kube-system.svc.cluster.local.")], []),
    ("4.0.0.172.in-addr.arpa.", "PTR", "NOERROR", [RR("4.0.0.172.in-addr.arpa.", "PTR", 30, "dup-name." + H)], []),
    ("2.0.0.172.in-addr.arpa.", "PTR", "NOERROR", [RR("2.0.0.172.in-addr.arpa.", "PTR", 30, "172-0-0-2." + H)], []),
    ("5.1.244.10.in-addr.arpa.", "PTR", "NOERROR", [RR("5.1.244.10.in-addr.arpa.", "PTR", 30, "10-244-1-5.web" + S)], []),
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa.", "PTR", "NOERROR",
     [RR("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa.", "PTR", 30, "svc6" + S)], []),
]


@pytest.mark.parametrize("qname,qtype,rcode,answer,extra", CASES, ids=[f"{c[1]} {c[0]}" for c in CASES])
def test_answer_table(qname, qtype, rcode, answer, extra):
    a = ZONE.answer(qname, qtype)
    assert not a.forward
    assert a.authoritative
    assert a.rcode == rcode
    assert list(a.answer) == answer
    assert list(a.additional) == extra
    if answer:
        assert a.authority == ()
    else:
        assert list(a.authority) == [SOA]


def test_nxdomain_vs_nodata_flags():
    assert ZONE.answer("svc0" + S, "A").nxdomain
    n = ZONE.answer("svc1" + S, "AAAA")
    assert n.nodata and not n.nxdomain


def test_soa_at_apex_and_ns():
    a = ZONE.answer("cluster.local", "SOA")
    assert list(a.answer) == [SOA] and a.authority == ()
    ns = ZONE.answer("cluster.local.", "NS")
    assert list(ns.answer) == [RR("cluster.local.", "NS", 30, "kube-dns.kube-system.svc.cluster.local.")]
    assert list(ns.additional) == [A("kube-dns.kube-system.svc.cluster.local.", "10.96.0.10")]
    n = ZONE.answer("ns.dns.cluster.local.", "A")
    assert list(n.answer) == [A("ns.dns.cluster.local.", "10.96.0.10")]


def test_case_preserved_and_trailing_dot_optional():
    # handler_case_test.go
    a = ZONE.answer("SvC1.TeStNs.SvC.cLuStEr.LoCaL.", "A")
    assert list(a.answer) == [A("SvC1.TeStNs.SvC.cLuStEr.LoCaL.", "10.0.0.1")]
    assert ZONE.answer("svc1.testns.svc.cluster.local", "a").answer == ZONE.answer("svc1" + S, 1).answer
    s = ZONE.answer("_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.", "SRV")
    assert list(s.answer) == [SRV("_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.", 100, 80, "svc1.testns.svc.cLuStEr.LoCaL.")]
    assert list(s.additional) == [A("svc1.testns.svc.cLuStEr.LoCaL.", "10.0.0.1")]
    nx = ZONE.answer("not-a-service.testns.svc.ClUsTeR.lOcAl.", "A")
    assert nx.rcode == "NXDOMAIN"
    assert nx.authority[0].name == "ClUsTeR.lOcAl."
    assert nx.authority[0].rdata[:2] == ("ns.dns.ClUsTeR.lOcAl.", "hostmaster.ClUsTeR.lOcAl.")


def test_outside_zone_is_forwarded():
    for q in ("google.com", "google.com.", "example.org.", "local."):
        a = ZONE.answer(q, "A")
        assert a.forward and not a.authoritative and a.answer == ()
    # search-path expansions inside the zone are authoritative NXDOMAIN
    assert ZONE.answer("google.com.default.svc.cluster.local.", "A").rcode == "NXDOMAIN"
    assert ZONE.answer("google.com.svc.cluster.local.", "A").rcode == "NXDOMAIN"
    assert ZONE.answer("google.com.cluster.local.", "A").rcode == "NXDOMAIN"
    # web.default -> parsed as endpoint `web` of service `default` in ns `default`
    assert ZONE.answer("kubernetes.default.default.svc.cluster.local.", "A").rcode == "NXDOMAIN"


def test_reverse_fallthrough():
    # unknown reverse names fall through to `forward` (kubeadm fallthrough in-addr.arpa ip6.arpa)
    assert ZONE.answer("9.9.9.9.in-addr.arpa.", "PTR").forward
    assert ZONE.answer("1.0.0.10.in-addr.arpa.", "A").forward
    assert ZONE.answer("0.10.in-addr.arpa.", "PTR").forward
    z = Zone(SERVICES, SLICES, fallthrough=())
    a = z.answer("9.9.9.9.in-addr.arpa.", "PTR")
    assert a.rcode == "NXDOMAIN" and a.authority[0].name == "in-addr.arpa."


def test_external_name_chase():
    a = ZONE.answer("external" + S, "A")
    assert a.chase == ("ext.interwebs.test.", 1)
    assert ZONE.answer("external-to-service" + S, "A").chase is None


def test_pod_modes_and_domain_and_ttl():
    z = Zone(SERVICES, SLICES, PODS, namespaces=["podns"], pod_mode="verified", ttl=5, domain="k8s.example")
    assert list(z.answer("10-240-0-1.podns.pod.k8s.example", "A").answer) == [
        A("10-240-0-1.podns.pod.k8s.example.", "10.240.0.1", ttl=5)]
    nx = z.answer("10-240-0-2.podns.pod.k8s.example", "A")
    assert nx.rcode == "NXDOMAIN"
    assert nx.authority[0].ttl == 5 and nx.authority[0].rdata[-1] == 5
    assert z.answer("svc1.testns.svc.cluster.local.", "A").forward
    d = Zone(SERVICES, SLICES, pod_mode="disabled")
    assert d.answer("10-240-0-1.default.pod.cluster.local.", "A").rcode == "NXDOMAIN"


def test_soa_ttl_capped_at_300():
    z = Zone(SERVICES, SLICES, ttl=3600)
    soa = z.answer("svc0" + S, "A").authority[0]
    assert soa.ttl == 300 and soa.rdata[-1] == 3600


# ------------------------------------------------------------------ wire


def _query(qname, qtype, **kw):
    return bytes(DNS(id=kw.pop("id", 0x1234), rd=kw.pop("rd", 1), qd=DNSQR(qname=qname, qtype=qtype), **kw))


def _rr_tuple(rr):
    name = rr.rrname.decode()
    t = rr.type
    if t == 6:
        return (name, t, rr.ttl, (rr.mname.decode(), rr.rname.decode(), rr.serial, rr.refresh, rr.retry,
                                  rr.expire, rr.minimum))
    if t == 33:
        return (name, t, rr.ttl, (rr.priority, rr.weight, rr.port, rr.target.decode()))
    data = rr.rdata
    if isinstance(data, list):
        data = b"".join(data)
    if isinstance(data, bytes):
        data = data.decode()
    return (name, t, rr.ttl, data)


def _sections(d):
    return [_rr_tuple(r) for r in (d.an or [])], [_rr_tuple(r) for r in (d.ns or [])], \
        [_rr_tuple(r) for r in (d.ar or [])]


def test_wire_a_answer():
    resp = DNS(ZONE.to_wire(_query("web.testns.svc.cluster.local.", "A", id=0xBEEF)))
    assert resp.id == 0xBEEF and resp.qr == 1 and resp.aa == 1 and resp.rd == 1 and resp.ra == 0
    assert resp.opcode == 0 and resp.rcode == 0 and resp.tc == 0
    assert resp.qd[0].qname == b"web.testns.svc.cluster.local." and resp.qd[0].qtype == 1
    an, ns, ar = _sections(resp)
    assert an == [("web.testns.svc.cluster.local.", 1, 30, "10.96.5.5")]
    assert ns == [] and ar == []


def test_wire_nxdomain_and_nodata_carry_soa():
    soa = ("cluster.local.", 6, 30, ("ns.dns.cluster.local.", "hostmaster.cluster.local.", SERIAL, 7200, 1800, 86400, 30))
    nx = DNS(ZONE.to_wire(_query("nope.testns.svc.cluster.local.", "A", rd=0)))
    assert nx.rcode == 3 and nx.aa == 1 and nx.rd == 0 and nx.ancount == 0
    assert _sections(nx)[1] == [soa]
    nd = DNS(ZONE.to_wire(_query("web.testns.svc.cluster.local.", "AAAA")))
    assert nd.rcode == 0 and nd.ancount == 0 and nd.nscount == 1
    assert _sections(nd)[1] == [soa]


def test_wire_srv_headless_with_additional():
    resp = DNS(ZONE.to_wire(_query("_http._tcp.hdls1.testns.svc.cluster.local.", "SRV")))
    an, ns, ar = _sections(resp)
    assert len(an) == 5 and all(r[1] == 33 and r[3][:3] == (0, 16, 80) for r in an)
    assert {r[3][3] for r in an} == {t + "." + H for t in ("172-0-0-2", "172-0-0-3", "dup-name",
                                                           "5678-abcd--1", "5678-abcd--2")}
    assert ("dup-name." + H, 1, 30, "172.0.0.5") in ar and ("5678-abcd--2." + H, 28, 30, "5678:abcd::2") in ar
    assert ns == []


def test_wire_ptr_txt_cname():
    p = DNS(ZONE.to_wire(_query("10.0.96.10.in-addr.arpa.", "PTR")))
    assert _sections(p)[0] == [("10.0.96.10.in-addr.arpa.", 12, 30, "kube-dns.kube-system.svc.cluster.local.")]
    t = DNS(ZONE.to_wire(_query("dns-version.cluster.local.", "TXT")))
    assert _sections(t)[0] == [("dns-version.cluster.local.", 16, 28800, "1.1.0")]
    c = DNS(ZONE.to_wire(_query("external.testns.svc.cluster.local.", "A")))
    assert _sections(c)[0] == [("external.testns.svc.cluster.local.", 5, 30, "ext.interwebs.test.")]


def test_wire_forwarded_and_bad_queries():
    assert ZONE.to_wire(_query("example.com.", "A")) is None
    got = ZONE.to_wire(_query("example.com.", "A"), forward=lambda ans, q: b"upstream")
    assert got == b"upstream"
    no_q = DNS(ZONE.to_wire(bytes(DNS(id=7, rd=1, qd=[]))))
    assert no_q.id == 7 and no_q.qr == 1 and no_q.rcode == 1 and no_q.qdcount == 0
    notimp = DNS(ZONE.to_wire(bytes(DNS(id=8, opcode=2, qd=DNSQR(qname="a.cluster.local.")))))
    assert notimp.rcode == 4
    assert ZONE.to_wire(bytes(DNS(id=9, qr=1, qd=DNSQR(qname="a.cluster.local.")))) is None


def test_wire_edns_echo_and_case():
    q = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="SVC1.testns.svc.cluster.local.", qtype="A"),
                  ar=[DNSRROPT(rclass=1232, z=0x8000)]))
    r = DNS(ZONE.to_wire(q))
    assert r.qd[0].qname == b"SVC1.testns.svc.cluster.local."
    assert r.an[0].rrname == b"SVC1.testns.svc.cluster.local."
    assert r.arcount == 1
    opt = r.ar[0]
    assert isinstance(opt, DNSRROPT) and opt.rclass == 1232 and opt.version == 0 and int(opt.z) & 0x8000


def test_wire_uncompressed_when_small_and_truncated_when_big():
    raw = ZONE.to_wire(_query("svc1.testns.svc.cluster.local.", "SRV"))
    assert b"\xc0" not in raw[12:]  # Scrub: no compression when it fits
    eps = tuple(EndpointRecord(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(100))
    big = Zone([ServiceRecord("ns", "many", cluster_ip="None", ports=HTTP)],
               [EndpointSliceRecord("ns", "many", eps)])
    r = DNS(big.to_wire(_query("many.ns.svc.cluster.local.", "A")))
    assert r.tc == 1 and 0 < r.ancount < 100
    assert len(big.to_wire(_query("many.ns.svc.cluster.local.", "A"))) <= 512
    full = DNS(big.to_wire(_query("many.ns.svc.cluster.local.", "A"), transport="tcp"))
    assert full.tc == 0 and full.ancount == 100
