"""`dig` (BIND 9.18) in a pod against CoreDNS in an emulated cluster: the
results, dig's printed output, and the bytes on the wire read back from the
capture with Scapy."""
from __future__ import annotations

import pytest
from scapy.layers.dns import DNS, DNSRROPT, EDNS0COOKIE
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import rdpcap

from emu.cluster import Cluster
from emu.errors import EmuError
from emu.hosts.dig import EDNS_UDP_SIZE, dig, dig_x, reverse_name
from emu.model import load
from tests.tshark import one_interface, problems

S = 1_000_000_000
CLIENT_IF = "client/eth0"

APP = """
apiVersion: emu.dev/v1alpha1
kind: ClusterSettings
nodes: 2
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: %(web)d
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: agnhost, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox}]
"""


def _cluster(web=2, seed=1):
    c = Cluster(load(["-"], stdin=APP % {"web": web}), seed=seed)
    return c, c.pod("default", "client")


def _run(c, *results):
    c.engine.run()
    assert all(r.done for r in results)
    return results[0] if len(results) == 1 else results


def _web_pods(c):
    return sorted(((k[1], p.ip) for k, p in c.state.pods.items() if k[1].startswith("web-")))


def _capture(c, tmp_path, name="dig.pcapng"):
    path = tmp_path / name
    c.engine.taps.write_pcapng(path, c.engine)
    return path


def _dns_on_client(path, proto=UDP):
    """(frame, DNS) of every DNS message over UDP seen on the client's eth0."""
    return [(p, DNS(bytes(p[proto].payload))) for p in rdpcap(str(path))
            if p.sniffed_on == CLIENT_IF and p.haslayer(proto) and 53 in (p[proto].sport, p[proto].dport)
            and len(p[proto].payload)]


def _tcp_messages(path, sport, dport):
    """The DNS messages sent from port `sport` to `dport` on one TCP
    connection, reassembled from the client-side capture (two-byte length
    prefix framing)."""
    segs = {}
    for p in rdpcap(str(path)):
        if (p.sniffed_on == CLIENT_IF and p.haslayer(TCP) and p[TCP].sport == sport
                and p[TCP].dport == dport and len(p[TCP].payload)):
            segs[p[TCP].seq] = bytes(p[TCP].payload)
    stream = b"".join(segs[s] for s in sorted(segs))
    out = []
    while len(stream) >= 2:
        n = int.from_bytes(stream[:2], "big")
        out.append(DNS(stream[2:2 + n]))
        stream = stream[2 + n:]
    return out


def _a_records(msg):
    return [(rr.rrname.decode(), rr.ttl, "A", rr.rdata) for rr in (msg.an or []) if rr.type == 1]


# ---------------------------------------------------------------- answers
def test_a_for_a_cluster_ip_service_and_the_printed_output():
    c, pod = _cluster()
    vip = c.state.services[("default", "api")].cluster_ip
    r = _run(c, dig(pod, "api.default.svc.cluster.local", cluster=c))
    assert (r.status, r.error, r.ok, r.exit_code) == ("NOERROR", None, True, 0)
    assert r.answers == [("api.default.svc.cluster.local.", 30, "A", vip)] and r.addresses == [vip]
    # CoreDNS's kubernetes plugin: authoritative, RD copied, no recursion offered
    assert r.flags == ["qr", "aa", "rd"] and r.aa and r.rd and not r.ra and not r.tc
    assert (r.server, r.protocol, r.qname) == ("10.96.0.10", "udp", "api.default.svc.cluster.local.")
    assert r.edns == {"version": 0, "flags": "", "udp": EDNS_UDP_SIZE}
    assert len(r.exchanges) == 1 and r.query_time_ns == r.elapsed_ns < 5_000_000
    text = r.text()
    assert f";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: {r.id}" in text
    assert ";; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1" in text
    assert ";; WARNING: recursion requested but not available" in text
    assert "; EDNS: version: 0, flags:; udp: 1232" in text
    assert ";; ANSWER SECTION:\napi.default.svc.cluster.local.\t30\tIN\tA\t" + vip in text
    assert ";; Query time: 0 msec" in text
    assert ";; SERVER: 10.96.0.10#53(10.96.0.10) (UDP)" in text
    assert f";; MSG SIZE  rcvd: {r.msg_size}" in text


def test_srv_of_a_headless_service_names_every_ready_pod_with_its_address():
    c, pod = _cluster()
    pods = _web_pods(c)
    r = _run(c, dig(pod, "_http._tcp.web.default.svc.cluster.local", "SRV", cluster=c))
    assert r.status == "NOERROR" and r.aa
    owner = "_http._tcp.web.default.svc.cluster.local."
    # weight 100/2 each, the port of the EndpointSlice (the target port), the pod's hostname
    assert r.answers == [(owner, 30, "SRV", f"0 50 8080 {name}.web.default.svc.cluster.local.")
                         for name, _ in pods]
    assert r.additional == [(f"{name}.web.default.svc.cluster.local.", 30, "A", ip) for name, ip in pods]
    assert ";; ADDITIONAL SECTION:" in r.text() and "ADDITIONAL: 3" in r.text()   # two A + the OPT


def test_a_for_a_headless_service_is_the_pod_ips_and_ptr_names_the_pod():
    c, pod = _cluster()
    pods = _web_pods(c)
    a = dig(pod, "web.default.svc.cluster.local", cluster=c)
    name, ip = pods[0]
    ptr = dig_x(pod, ip, cluster=c)
    _run(c, a, ptr)
    assert sorted(a.addresses) == sorted(ip for _, ip in pods)
    assert ptr.qname == reverse_name(ip) == ".".join(reversed(ip.split("."))) + ".in-addr.arpa."
    # the pod is an endpoint of two Services: a PTR per endpoint (the hostname
    # for the headless one, the dashed IP for the other), as CoreDNS answers
    assert sorted(ptr.answers) == sorted([
        (reverse_name(ip), 30, "PTR", f"{name}.web.default.svc.cluster.local."),
        (reverse_name(ip), 30, "PTR", f"{ip.replace('.', '-')}.api.default.svc.cluster.local.")])
    assert ptr.text().startswith(f"\n; <<>> DiG 9.18 <<>> -x {ip}\n")


def test_nxdomain_for_an_unknown_name_and_no_search_list_by_default():
    c, pod = _cluster()
    nx = dig(pod, "nope.default.svc.cluster.local", cluster=c)
    short = dig(pod, "api", cluster=c)                 # asked as "api.": outside the cluster zone
    searched = dig(pod, "api", cluster=c, search=True)  # +search: api.default.svc.cluster.local first
    _run(c, nx, short, searched)
    assert (nx.status, nx.error, nx.exit_code, nx.answers) == ("NXDOMAIN", None, 0, [])
    soa = nx.authority[0]
    assert soa[:3] == ("cluster.local.", 30, "SOA") and soa[3].startswith("ns.dns.cluster.local. hostmaster.")
    assert "status: NXDOMAIN" in nx.text() and ";; AUTHORITY SECTION:" in nx.text()
    assert (short.qname, short.status) == ("api.", "SERVFAIL")   # no upstream for CoreDNS's forward
    assert searched.qname == "api.default.svc.cluster.local." and searched.status == "NOERROR"
    assert len(searched.exchanges) == 1


# ---------------------------------------------------------------- failures
def test_timeout_when_no_dns_server_answers():
    c, pod = _cluster()
    for key in c.dns_servers:   # both CoreDNS pods unplugged: the queries vanish
        c.engine.set_link_up(c.pod(*key).iface("eth0").port, False)
    r = _run(c, dig(pod, "api.default.svc.cluster.local", cluster=c))
    assert (r.status, r.error, r.ok, r.exit_code) == ("timeout", "timeout", False, 9)
    # +tries=3 of +timeout=5: each try from a new socket, the same message
    assert [x.sent_ns - r.started_ns for x in r.exchanges] == [0, 5 * S, 10 * S]
    assert r.elapsed_ns == 15 * S
    assert len({x.sport for x in r.exchanges}) == 3 and len({x.id for x in r.exchanges}) == 1
    assert [x.outcome for x in r.exchanges] == ["timeout"] * 3
    text = r.text()
    assert text.count(";; communications error to 10.96.0.10#53: timed out") == 3
    assert text.endswith(";; connection timed out; no servers could be reached\n")


def test_nobody_listening_on_53_is_connection_refused_at_once():
    c, pod = _cluster()
    _, ip = _web_pods(c)[0]
    r = _run(c, dig(pod, "api.default.svc.cluster.local", server=ip))
    assert (r.status, r.error, r.exit_code) == ("refused", "refused", 9)
    assert [x.outcome for x in r.exchanges] == ["refused"] * 3 and r.elapsed_ns < S
    assert r.text().count(f";; communications error to {ip}#53: connection refused") == 3
    assert r.text().startswith(f"\n; <<>> DiG 9.18 <<>> @{ip} api.default.svc.cluster.local A\n")


def test_bad_arguments():
    c, pod = _cluster()
    with pytest.raises(EmuError, match="resolv.conf"):
        dig(pod, "api")
    with pytest.raises(EmuError, match="query type"):
        dig(pod, "api", "ANY", cluster=c)
    with pytest.raises(EmuError, match="IPv4"):
        dig_x(pod, "not-an-ip", cluster=c)


# ---------------------------------------------------------------- the bytes
def test_query_bytes_are_dig_defaults_and_answers_match_the_capture(tmp_path):
    c, pod = _cluster()
    a = dig(pod, "api.default.svc.cluster.local", cluster=c)
    srv = dig(pod, "_http._tcp.web.default.svc.cluster.local", "SRV", cluster=c)
    _run(c, a, srv)
    path = _capture(c, tmp_path)
    msgs = _dns_on_client(path)
    for r in (a, srv):
        (qframe, q), = [(f, m) for f, m in msgs if m.qr == 0 and m.id == r.id]
        assert qframe[UDP].sport == r.exchanges[0].sport and qframe[IP].dst == "10.96.0.10"
        assert qframe[IP].flags == 0   # BIND's UDP sockets: no DF
        assert (q.rd, q.ad, q.cd, q.opcode, q.qdcount, q.arcount) == (1, 1, 0, 0, 1, 1)
        assert q.qd[0].qname.decode() == r.qname and q.qd[0].qtype == {"A": 1, "SRV": 33}[r.qtype]
        opt = q.ar[0]
        assert isinstance(opt, DNSRROPT)
        assert (opt.rclass, opt.version, opt.z, opt.extrcode) == (1232, 0, 0, 0)   # no DO bit
        cookie, = opt.rdata
        assert isinstance(cookie, EDNS0COOKIE) and cookie.optcode == 10 and cookie.optlen == 8
        assert cookie.client_cookie.hex() == r.cookie and not cookie.server_cookie
        (aframe, ans), = [(f, m) for f, m in msgs if m.qr == 1 and m.id == r.id]
        assert aframe[IP].src == "10.96.0.10" and aframe[UDP].sport == 53   # after kube-proxy's reverse NAT
        assert len(bytes(aframe[UDP].payload)) == r.msg_size
        assert ans.aa == 1 and ans.rcode == 0 and ans.ancount == len(r.answers)
    # each dig run draws its own client cookie (the TCP retry of a run reuses it)
    assert a.cookie != srv.cookie
    ans_a = next(m for _, m in msgs if m.qr == 1 and m.id == a.id)
    assert _a_records(ans_a) == a.answers
    ans_srv = next(m for _, m in msgs if m.qr == 1 and m.id == srv.id)
    assert [(rr.rrname.decode(), rr.ttl, "SRV", f"{rr.priority} {rr.weight} {rr.port} {rr.target.decode()}")
            for rr in ans_srv.an] == srv.answers
    assert [(rr.rrname.decode(), rr.ttl, "A", rr.rdata) for rr in ans_srv.ar if rr.type == 1] == srv.additional


def test_same_seed_same_bytes():
    runs = []
    for _ in range(2):
        c, pod = _cluster()
        r = _run(c, dig(pod, "api.default.svc.cluster.local", cluster=c))
        runs.append((r.id, r.cookie, r.exchanges[0].sport, r.elapsed_ns))
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- TC -> TCP
BIG = 80   # 80 A records: more than 1232 bytes even with name compression


def test_truncated_answer_is_retried_over_tcp(tmp_path):
    c, pod = _cluster(web=BIG)
    ips = sorted(ip for _, ip in _web_pods(c))
    r = _run(c, dig(pod, "web.default.svc.cluster.local", cluster=c))
    assert r.ok and r.status == "NOERROR" and r.protocol == "tcp" and r.truncated_udp
    assert sorted(r.addresses) == ips and not r.tc
    udp, tcp = r.exchanges
    assert (udp.protocol, udp.outcome, tcp.protocol, tcp.outcome) == ("udp", "truncated", "tcp", "answer")
    assert tcp.id == r.id != udp.id          # a new lookup: a new message id
    assert tcp.sent_ns > udp.answered_ns     # the query time runs from the established connection
    assert r.query_time_ns == tcp.answered_ns - tcp.sent_ns
    text = r.text()
    assert ";; Truncated, retrying in TCP mode." in text and "(TCP)" in text and f"ANSWER: {BIG}," in text
    path = _capture(c, tmp_path)
    # the truncated UDP answer: TC set, fewer records, within dig's 1232 bytes
    (_, trunc), = [(f, m) for f, m in _dns_on_client(path) if m.qr == 1 and m.id == udp.id]
    assert trunc.tc == 1 and 0 < trunc.ancount < BIG and len(bytes(trunc)) <= EDNS_UDP_SIZE
    # over TCP: the query with the same EDNS/cookie, the whole answer
    queries = _tcp_messages(path, tcp.sport, 53)
    assert len(queries) == 1 and queries[0].id == tcp.id and queries[0].ar[0].rclass == 1232
    assert queries[0].ar[0].rdata[0].client_cookie.hex() == r.cookie
    answers = _tcp_messages(path, 53, tcp.sport)
    assert len(answers) == 1 and answers[0].id == tcp.id and answers[0].tc == 0
    assert len(bytes(answers[0])) == r.msg_size
    assert _a_records(answers[0]) == r.answers
    flags = [p[TCP].flags for p in rdpcap(str(path))
             if p.sniffed_on == CLIENT_IF and p.haslayer(TCP) and tcp.sport in (p[TCP].sport, p[TCP].dport)]
    assert [str(f) for f in flags[:3]] == ["S", "SA", "A"]
    fins = [p for p in rdpcap(str(path)) if p.sniffed_on == CLIENT_IF and p.haslayer(TCP)
            and tcp.sport in (p[TCP].sport, p[TCP].dport) and p[TCP].flags.F]
    assert len(fins) == 2 and fins[0][TCP].sport == tcp.sport   # dig closes first
    assert problems(one_interface(path, CLIENT_IF, tmp_path / "client.pcapng")) == []


def test_ignore_tc_keeps_the_truncated_udp_answer():
    c, pod = _cluster(web=BIG)
    r = _run(c, dig(pod, "web.default.svc.cluster.local", cluster=c, ignore_tc=True))
    assert r.tc and r.protocol == "udp" and not r.truncated_udp and 0 < len(r.answers) < BIG
    assert r.flags == ["qr", "aa", "tc", "rd"] and len(r.exchanges) == 1


def test_tcp_from_the_start():
    c, pod = _cluster()
    r = _run(c, dig(pod, "api.default.svc.cluster.local", cluster=c, tcp=True))
    assert r.ok and r.protocol == "tcp" and [x.protocol for x in r.exchanges] == ["tcp"]
    assert ";; SERVER: 10.96.0.10#53(10.96.0.10) (TCP)" in r.text()

