"""The pod's stub resolver (glibc getaddrinfo, ClusterFirst resolv.conf)
against CoreDNS in an emulated cluster, checked from the results and from
the capture as tshark reads it."""
from __future__ import annotations

import pytest

from emu.cluster import Cluster
from emu.errors import EmuError
from emu.hosts.resolver import ResolvConf, Resolver
from emu.model import load
from tests.tshark import fields, one_interface, problems
from tests.util import ROOT

MANIFESTS = str(ROOT / "examples" / "cluster" / "app.yaml")
SEARCH = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
S = 1_000_000_000


def _client(**conf):
    c = Cluster(load([MANIFESTS]), seed=1)
    r = Resolver.for_pod(c, "default", "client")
    if conf:
        r = Resolver(r.netns, ResolvConf(**{**r.conf.__dict__, **conf}))
    return c, r


def _resolve(c, r, name, **kw):
    done = []
    res = r.resolve(name, done.append, **kw)
    c.engine.run()
    assert done == [res] and res.done
    return res


def _pairs(names):
    return [(n, t) for n in names for t in ("A", "AAAA")]


# ---------------------------------------------------------------- resolv.conf
def test_resolv_conf_for_a_pod_as_the_kubelet_writes_it():
    conf = ResolvConf.for_pod("default", "10.96.0.10", "cluster.local")
    assert conf.text() == ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
                           "nameserver 10.96.0.10\n"
                           "options ndots:5\n")
    assert (conf.ndots, conf.timeout, conf.attempts, conf.single_request) == (5, 5, 2, False)
    assert ResolvConf.parse(conf.text()) == conf
    other = ResolvConf.parse("nameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 9.9.9.9\nnameserver 4.4.4.4\n"
                             "domain a.example\nsearch b.example c.example\n"
                             "options ndots:20 timeout:1 attempts:9 single-request-reopen\n")
    assert other.nameservers == ("1.1.1.1", "8.8.8.8", "9.9.9.9")      # MAXNS = 3
    assert other.search == ("b.example", "c.example")                    # the last line wins
    assert (other.ndots, other.timeout, other.attempts) == (15, 1, 5)    # glibc's caps
    assert other.single_request_reopen
    with pytest.raises(EmuError, match="nameserver"):
        ResolvConf(nameservers=("kube-dns",))


# ---------------------------------------------------------------- query sequences
def test_short_name_resolves_on_the_first_search_domain_in_one_round():
    c, r = _client()
    vip = c.state.services[("default", "web")].cluster_ip
    res = _resolve(c, r, "web")
    assert res.addresses == [vip] and res.error is None and res.gai_error is None
    assert res.sequence() == _pairs(["web.default.svc.cluster.local"])
    a, aaaa = res.queries
    # glibc sends A and AAAA back to back from one socket: same port, same time, two ids
    assert a.sport == aaaa.sport and a.sent_ns == aaaa.sent_ns == res.started_ns and a.id != aaaa.id
    assert 32768 <= a.sport <= 60999
    assert (a.rcode, a.answers) == ("NOERROR", [vip])
    assert (aaaa.rcode, aaaa.answers) == ("NOERROR", [])              # NODATA: no IPv6 in the cluster
    assert res.elapsed_ns == max(a.answered_ns, aaaa.answered_ns) - res.started_ns < 5_000_000


def test_one_dot_walks_the_search_list_until_an_answer():
    c, r = _client()
    res = _resolve(c, r, "web.default")
    assert res.sequence() == _pairs(["web.default.default.svc.cluster.local", "web.default.svc.cluster.local"])
    assert [q.rcode for q in res.queries] == ["NXDOMAIN", "NXDOMAIN", "NOERROR", "NOERROR"]
    assert res.addresses == [c.state.services[("default", "web")].cluster_ip]
    # the next name only after both answers, from a new socket (glibc closes it after each name)
    assert res.queries[2].sent_ns >= max(q.answered_ns for q in res.queries[:2])
    assert res.queries[0].sport != res.queries[2].sport


def test_external_name_tries_every_search_domain_then_as_is_and_gets_servfail():
    c, r = _client()
    res = _resolve(c, r, "example.com")
    names = [f"example.com.{d}" for d in SEARCH]
    # SERVFAIL on both: glibc closes the socket and tries again (attempts:2) at once
    assert res.sequence() == _pairs(names + ["example.com", "example.com"])
    assert [q.rcode for q in res.queries] == ["NXDOMAIN"] * 6 + ["SERVFAIL"] * 4
    assert [q.attempt for q in res.queries[-4:]] == [1, 1, 2, 2]
    assert res.queries[-4].id == res.queries[-2].id and res.queries[-4].sport != res.queries[-2].sport
    assert (res.addresses, res.error, res.gai_error) == ([], "SERVFAIL", "EAI_AGAIN")
    assert res.elapsed_ns < 1 * S


def test_fqdn_with_trailing_dot_is_not_searched():
    c, r = _client()
    res = _resolve(c, r, "web.default.svc.cluster.local.")
    assert res.sequence() == _pairs(["web.default.svc.cluster.local"])
    assert res.addresses == [c.state.services[("default", "web")].cluster_ip]
    # without the dot the name has 4 dots < ndots:5: three NXDOMAIN pairs first
    res = _resolve(c, r, "web.default.svc.cluster.local")
    assert res.sequence() == _pairs([f"web.default.svc.cluster.local.{d}" for d in SEARCH]
                                    + ["web.default.svc.cluster.local"])
    assert res.ok
    # a name that does not exist: NXDOMAIN everywhere, EAI_NONAME
    res = _resolve(c, r, "nothing.default.svc.cluster.local.")
    assert (res.error, res.gai_error, len(res.queries)) == ("NXDOMAIN", "EAI_NONAME", 2)


def test_family_and_single_request():
    c, r = _client()
    res = _resolve(c, r, "web", family="inet")
    assert res.sequence() == [("web.default.svc.cluster.local", "A")] and res.ok
    assert _resolve(c, r, "10.1.2.3").addresses == ["10.1.2.3"]       # numeric: no query
    c, r = _client(single_request=True)
    res = _resolve(c, r, "web")
    a, aaaa = res.queries
    assert res.ok and a.sport == aaaa.sport and aaaa.sent_ns >= a.answered_ns  # AAAA after the A answer
    c, r = _client(single_request_reopen=True)
    a, aaaa = _resolve(c, r, "web").queries
    assert a.sport != aaaa.sport and aaaa.sent_ns >= a.answered_ns


# ---------------------------------------------------------------- failures
def test_unreachable_dns_times_out_after_the_retries():
    c, r = _client()
    for key in c.dns_servers:  # both CoreDNS pods unplugged: queries vanish
        c.engine.set_link_up(c.pod(*key).iface("eth0").port, False)
    res = _resolve(c, r, "web")
    # timeout:5 attempts:2 per name, the same socket for the retry; a timeout
    # ends the search walk, but glibc still tries the name as is
    assert res.sequence() == _pairs(["web.default.svc.cluster.local"] * 2 + ["web"] * 2)
    assert [q.attempt for q in res.queries] == [1, 1, 2, 2, 1, 1, 2, 2]
    assert [q.sent_ns - res.started_ns for q in res.queries] == [0, 0, 5 * S, 5 * S, 10 * S, 10 * S, 15 * S, 15 * S]
    assert len({q.sport for q in res.queries[:4]}) == 1 and res.queries[4].sport != res.queries[0].sport
    assert all(q.rcode is None for q in res.queries)
    assert (res.error, res.gai_error, res.elapsed_ns) == ("timeout", "EAI_AGAIN", 20 * S)


def test_port_unreachable_nameserver_is_refused_at_once():
    c, r = _client()
    web_pod = next(p for k, p in c.state.pods.items() if k[1].startswith("web-"))
    r = Resolver(r.netns, ResolvConf(nameservers=(web_pod.ip,), search=r.conf.search, ndots=5))
    res = _resolve(c, r, "web")
    # ICMP port unreachable closes the socket (POLLERR), the retry gets the same;
    # nothing was ever heard: ECONNREFUSED, and the search gives up
    assert res.sequence() == _pairs(["web.default.svc.cluster.local"] * 2)
    assert all(q.icmp == "port unreachable" for q in res.queries), [q.icmp for q in res.queries]
    assert (res.error, res.gai_error) == ("refused", "EAI_AGAIN") and res.elapsed_ns < 1 * S


def test_same_seed_same_ids_and_ports():
    runs = []
    for _ in range(2):
        c, r = _client()
        runs.append([(q.id, q.sport) for q in _resolve(c, r, "web.default").queries])
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- the capture
def test_capture_shows_glibc_order_on_the_pod_and_answers_from_the_service(tmp_path):
    c, r = _client()
    web_vip = c.state.services[("default", "web")].cluster_ip
    results = [_resolve(c, r, n) for n in ("web", "web.default", "example.com")]
    path = tmp_path / "resolver.pcapng"
    c.engine.taps.write_pcapng(path, c.engine)
    assert problems(path) == []
    on_pod = 'frame.interface_name == "client/eth0" && dns'
    queries = fields(path, "dns.qry.name", "dns.qry.type", "ip.dst", "udp.dstport", "dns.flags.recdesired",
                     "frame.comment", display_filter=on_pod + " && dns.flags.response == 0")
    expected = [(n, t) for res in results for n, t in res.sequence()]
    assert [(q[0], {"1": "A", "28": "AAAA"}[q[1]]) for q in queries] == expected
    assert {(q[2], q[3], q[4]) for q in queries} == {("10.96.0.10", "53", "1")}
    assert all(f"dns query {t} {n}" in q[5] for q, (n, t) in zip(queries, expected))
    answers = fields(path, "ip.src", "udp.srcport", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.a",
                     display_filter=on_pod + " && dns.flags.response == 1")
    assert len(answers) == len(queries)
    assert {(a[0], a[1]) for a in answers} == {("10.96.0.10", "53")}      # kube-proxy's reverse NAT
    hit = [a for a in answers if a[2] == "web.default.svc.cluster.local" and a[3] == "1"]
    assert hit and all(a[4] == "0" and a[5] == web_vip for a in hit)
    assert [a[4] for a in answers if a[2] == "example.com"] == ["2"] * 4


# ---------------------------------------------------------------- TC: the TCP fallback
BIG = 40   # ready pods behind a headless Service: 40 A records do not fit in 512 bytes


def _big_headless_cluster(pods=BIG):
    text = f"""
apiVersion: emu.dev/v1alpha1
kind: ClusterSettings
nodes: 2
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: big}}
spec:
  replicas: {pods}
  selector: {{matchLabels: {{app: big}}}}
  template:
    metadata: {{labels: {{app: big}}}}
    spec:
      containers: [{{name: c, image: agnhost, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: big}}
spec:
  clusterIP: None
  selector: {{app: big}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: node-1
  containers: [{{name: c, image: busybox}}]
"""
    c = Cluster(load(["-"], stdin=text), seed=1)
    return c, Resolver.for_pod(c, "default", "client")


def test_truncated_answer_is_asked_again_over_tcp_and_used_whole(tmp_path):
    c, r = _big_headless_cluster()
    pod_ips = sorted(p.ip for k, p in c.state.pods.items() if k[1].startswith("big-"))
    assert len(pod_ips) == BIG
    res = _resolve(c, r, "big")
    assert res.ok and sorted(res.addresses) == pod_ips              # every address, from the TCP answer
    name = "big.default.svc.cluster.local"
    assert res.sequence() == _pairs([name, name])                   # the same two queries, UDP then TCP
    udp_a, udp_aaaa, tcp_a, tcp_aaaa = res.queries
    assert [q.protocol for q in res.queries] == ["udp", "udp", "tcp", "tcp"]
    # the A answer came truncated: glibc closed the UDP socket at once (the AAAA
    # answer found no socket) and sent both queries, same ids, to the same server
    assert udp_a.tc and udp_a.rcode == "NOERROR" and 0 < len(udp_a.answers) < BIG
    assert udp_aaaa.rcode is None
    assert (tcp_a.id, tcp_aaaa.id) == (udp_a.id, udp_aaaa.id)
    assert tcp_a.server == tcp_aaaa.server == "10.96.0.10" and tcp_a.sport == tcp_aaaa.sport
    assert tcp_a.sent_ns == udp_a.answered_ns and tcp_a.attempt == 1
    assert (tcp_a.rcode, tcp_a.tc, sorted(tcp_a.answers)) == ("NOERROR", False, pod_ips)
    assert (tcp_aaaa.rcode, tcp_aaaa.answers) == ("NOERROR", [])
    assert res.elapsed_ns < 10_000_000
    path = tmp_path / "tc.pcapng"
    c.engine.taps.write_pcapng(path, c.engine)
    on_pod = 'frame.interface_name == "client/eth0"'
    udp = fields(path, "dns.id", "dns.flags.truncated", "dns.count.answers",
                 display_filter=on_pod + " && udp.port == 53 && dns.flags.response == 1")
    assert udp[0] == [f"0x{udp_a.id:04x}", "1", str(len(udp_a.answers))]
    # the TCP exchange as tcpdump on the pod saw it: handshake, both queries in
    # one segment, the answers, then the resolver's FIN first
    segs = fields(path, "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.flags.str", "tcp.len",
                  display_filter=on_pod + " && tcp.port == 53")
    me = c.state.pods[("default", "client")].ip
    assert [s[4].replace("·", "") for s in segs[:3]] == ["S", "AS", "A"]
    assert segs[0][:4] == [me, "10.96.0.10", str(tcp_a.sport), "53"]
    query_len = 12 + len(name) + 2 + 4          # header, the name's labels, type and class
    assert segs[3][0] == me and int(segs[3][5]) == 2 * (2 + query_len)
    assert segs[3][4].replace("·", "") == "AP"
    fins = [s for s in segs if "F" in s[4]]
    assert len(fins) == 2 and fins[0][0] == me                     # the resolver closes first
    one = one_interface(path, "client/eth0", tmp_path / "client-eth0.pcapng")
    answers = fields(one, "dns.id", "dns.qry.type", "dns.count.answers",
                     display_filter="tcp.port == 53 && dns.flags.response == 1")
    assert sorted(answers) == sorted([[f"0x{tcp_a.id:04x}", "1", str(BIG)], [f"0x{tcp_aaaa.id:04x}", "28", "0"]])
    assert problems(one) == []


def test_answers_that_fit_never_touch_tcp(tmp_path):
    c, r = _client()
    results = [_resolve(c, r, n) for n in ("web", "example.com", "nothing.default.svc.cluster.local.")]
    assert all(q.protocol == "udp" and not q.tc for res in results for q in res.queries)
    assert results[0].ok and [res.error for res in results[1:]] == ["SERVFAIL", "NXDOMAIN"]
    path = tmp_path / "udp-only.pcapng"
    c.engine.taps.write_pcapng(path, c.engine)
    assert fields(path, "frame.number", display_filter="tcp.port == 53") == []
