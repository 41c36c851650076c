"""DNS over TCP (emu.hosts.dns_tcp): CoreDNS's TCP listener and a client on
the hand-built two-node Flannel network, and through kube-proxy on a
cluster. Captures read back with tshark: DNS dissected over TCP, no
Wireshark warnings in a clean exchange."""
from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR

from emu.cluster import COREDNS_LABEL, Cluster
from emu.control import dns
from emu.dataplane.engine import Engine
from emu.dataplane.handbuilt import two_node_flannel
from emu.hosts.dns_tcp import IDLE_TIMEOUT_NS, READ_TIMEOUT_NS, CoreDnsTcp, query_tcp
from emu.hosts.tcp import Tcp
from emu.model import load
from tests.tshark import fields, problems, tshark
from tests.util import ROOT

SEC = 1_000_000_000
SERVER = "10.244.1.2"
HEADLESS = 100  # endpoints of the headless service: 100 A records, ~1.7 kB


def _zone():
    eps = tuple(dns.EndpointRecord(f"10.244.{1 + i // 200}.{10 + i % 200}") for i in range(HEADLESS))
    return dns.Zone([dns.ServiceRecord("default", "web", cluster_ip="10.96.12.34",
                                       ports=(dns.PortRecord(80, "http"),)),
                     dns.ServiceRecord("default", "db", "Headless", ports=(dns.PortRecord(5432, "pg"),))],
                    [dns.EndpointSliceRecord("default", "db", eps)])


def _network():
    eng = Engine(seed=5)
    net = two_node_flannel(eng)
    # both pods and the underlay between them (VXLAN): each interface is a tshark run in problems()
    eng.capture([p for p in eng.ports if p.name in ("pod-a/eth0", "node-1/eth0", "pod-b/eth0")])
    server = CoreDnsTcp(_zone()).serve(net["pods"]["pod-b"])
    return eng, net["pods"]["pod-a"], server


def _q(name, qid, qtype="A"):
    return bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def _write(eng, tmp_path, name="dns-tcp.pcapng"):
    path = tmp_path / name
    eng.taps.write_pcapng(path, eng)
    return path


def _at(path, iface):
    """The frames seen on one interface, in a file of their own: Wireshark's
    TCP analysis (and so DNS-over-TCP reassembly) assumes one capture point."""
    part = path.with_name(f"{path.stem}-{iface.replace('/', '_')}.pcapng")
    tshark("-r", str(path), "-Y", f'frame.interface_name == "{iface}"', "-w", str(part))
    return part


def test_a_record_over_tcp_and_a_clean_close(tmp_path):
    eng, a, server = _network()
    got = []
    client = query_tcp(a, SERVER, _q("web.default.svc.cluster.local", 7), got.append)
    eng.run()
    assert client.error is None and server.queries == 1 and len(got) == 1
    ans = DNS(got[0])
    assert ans.id == 7 and ans.qr == 1 and ans.aa == 1 and ans.rcode == 0
    assert ans.an[0].rdata == "10.96.12.34" and ans.an[0].ttl == 30
    # the client closes first (TIME_WAIT on its side), the server follows on EOF
    assert [s for _, s in client.conn.history][-3:] == ["FIN_WAIT2", "TIME_WAIT", "CLOSE"]
    session = server.sessions[0]
    assert session.closed_by == "eof"
    assert [s for _, s in session.conn.history] == ["CLOSE", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT",
                                                    "LAST_ACK", "CLOSE"]
    assert Tcp.of(a).connections() == []
    path = _write(eng, tmp_path)
    assert problems(path) == []
    rows = fields(_at(path, "pod-a/eth0"), "dns.id", "dns.qry.name", "dns.flags.response", "dns.a",
                  display_filter="tcp.port == 53 && dns")
    assert rows == [["0x0007", "web.default.svc.cluster.local", "0", ""],
                    ["0x0007", "web.default.svc.cluster.local", "1", "10.96.12.34"]]


def test_two_queries_on_one_connection(tmp_path):
    eng, a, server = _network()
    got = []
    # pipelined: both written at once (as glibc writes A and AAAA), answered in order
    c1 = query_tcp(a, SERVER, [_q("web.default.svc.cluster.local", 1),
                               _q("nope.default.svc.cluster.local", 2)], got.append)
    eng.run(until_ns=eng.now + SEC)
    # one after the other on a connection kept open
    later = []

    def second(answer):
        later.append(answer)
        if len(later) == 1:
            c2.query(_q("example.com", 4))
        else:
            c2.close()
    c2 = query_tcp(a, SERVER, _q("web.default.svc.cluster.local", 3), second, keep_open=True)
    eng.run()
    assert [DNS(m).id for m in got] == [1, 2] and [DNS(m).id for m in later] == [3, 4]
    assert DNS(got[0]).an[0].rdata == "10.96.12.34"
    assert DNS(got[1]).rcode == 3 and DNS(got[1]).ns[0].type == 6   # NXDOMAIN with the SOA
    assert DNS(later[1]).rcode == 2                                 # SERVFAIL: no upstream
    assert len(server.sessions) == 2 and [s.answered for s in server.sessions] == [2, 2]
    assert c1.conn.lport != c2.conn.lport
    path = _write(eng, tmp_path)
    assert problems(path) == []
    rows = fields(_at(path, "pod-b/eth0"), "tcp.stream", "dns.id", "dns.flags.response", display_filter="dns")
    by_stream = {}
    for stream, ids, resp in rows:
        by_stream.setdefault(stream, []).append((ids, resp))
    # the pipelined queries may share a segment: ids are comma-joined then
    assert sorted(by_stream.values()) == sorted([[("0x0001,0x0002", "0,0"), ("0x0001", "1"), ("0x0002", "1")],
                                                 [("0x0003", "0"), ("0x0003", "1"), ("0x0004", "0"), ("0x0004", "1")]])


def test_large_answer_truncated_over_udp_comes_whole_over_tcp(tmp_path):
    eng, a, server = _network()
    query = _q("db.default.svc.cluster.local", 9)
    udp = DNS(server.zone.to_wire(query, transport="udp"))
    assert udp.tc == 1 and len(bytes(udp)) <= 512 and udp.ancount < HEADLESS
    got = []
    client = query_tcp(a, SERVER, query, got.append)
    eng.run()
    assert len(got) == 1 and len(got[0]) > 1398  # more than one segment's worth (MSS 1398)
    ans = DNS(got[0])
    assert ans.tc == 0 and ans.ancount == HEADLESS
    assert {r.rdata for r in ans.an} == {f"10.244.{1 + i // 200}.{10 + i % 200}" for i in range(HEADLESS)}
    assert client.error is None
    path = _write(eng, tmp_path)
    assert problems(path) == []
    rows = fields(_at(path, "pod-a/eth0"), "dns.flags.response", "dns.flags.truncated", "dns.count.answers",
                  display_filter="dns.flags.response == 1")
    assert rows == [["1", "0", str(HEADLESS)]]  # reassembled from two segments


def test_read_and_idle_timeouts_close_from_the_server():
    eng, a, server = _network()
    # a connection that never sends: closed after the read timeout
    silent = Tcp.of(a).connect(SERVER, 53)
    silent.on_closed = silent.close
    # a query, then nothing: closed the idle timeout after the answer
    got = []
    idle = query_tcp(a, SERVER, _q("web.default.svc.cluster.local", 11), got.append, keep_open=True)
    eng.run()
    s_silent, s_idle = server.sessions
    assert s_silent.closed_by == "read timeout" and s_idle.closed_by == "idle timeout"
    est = dict((s, t) for t, s in s_silent.conn.history)
    assert est["FIN_WAIT1"] - est["ESTABLISHED"] == READ_TIMEOUT_NS
    fin = dict((s, t) for t, s in s_idle.conn.history)["FIN_WAIT1"]
    assert fin - s_idle.last_answer_ns == IDLE_TIMEOUT_NS and len(got) == 1
    # the server was the active closer: TIME_WAIT on its side, LAST_ACK on the client's
    assert "TIME_WAIT" in [s for _, s in s_idle.conn.history]
    assert [s for _, s in idle.conn.history][-3:] == ["CLOSE_WAIT", "LAST_ACK", "CLOSE"]


def test_max_queries_and_zero_length():
    eng = Engine(seed=5)
    net = two_node_flannel(eng)
    server = CoreDnsTcp(_zone(), max_queries=2).serve(net["pods"]["pod-b"])
    a = net["pods"]["pod-a"]
    got = []
    query_tcp(a, SERVER, [_q("web.default.svc.cluster.local", i) for i in range(3)], got.append)
    bad = Tcp.of(a).connect(SERVER, 53)
    bad.send(b"\x00\x00")
    bad.on_closed = bad.close
    eng.run()
    assert [DNS(m).id for m in got] == [0, 1]
    assert [s.closed_by for s in server.sessions] == ["max queries", "short read"]


def test_tcp_query_to_the_dns_service_through_kube_proxy(tmp_path):
    c = Cluster(load([str(ROOT / "examples" / "cluster" / "app.yaml")]), seed=1)
    key, value = COREDNS_LABEL
    dns_pods = [k for k, p in c.state.pods.items() if p.labels.get(key) == value]
    # emu.cluster wires them, sharing the UDP server's zone (updated by sync)
    servers = [c.dns_tcp_servers[k] for k in dns_pods]
    client = c.pod("default", "client")
    web_vip = c.state.services[("default", "web")].cluster_ip
    got = []
    q = query_tcp(client, "10.96.0.10", [_q("web.default.svc.cluster.local", 21),
                                         _q("kubernetes.default.svc.cluster.local", 22)], got.append)
    c.engine.run()
    assert q.error is None and [DNS(m).id for m in got] == [21, 22]
    assert DNS(got[0]).an[0].rdata == web_vip
    assert sum(s.queries for s in servers) == 2 and sum(len(s.sessions) for s in servers) == 1
    assert all(s.zone is c.dns_servers[k].zone for s, k in zip(servers, dns_pods))
    path = tmp_path / "cluster-dns-tcp.pcapng"
    c.engine.taps.write_pcapng(path, c.engine)
    assert problems(path) == []
    client_if = f"{client.name}/eth0"
    rows = fields(_at(path, client_if), "ip.src", "dns.id",
                  display_filter="tcp.port == 53 && dns.flags.response == 1")
    assert rows and {r[0] for r in rows} == {"10.96.0.10"}
