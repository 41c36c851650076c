"""HTTP/1.1 in pods (emu.hosts.http): `curl http://web/` from a client pod
through CoreDNS, the ClusterIP, kube-proxy's DNAT and VXLAN to an agnhost-like
server, checked from the results and from the capture as tshark and Scapy
read it."""
from __future__ import annotations

import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.utils import rdpcap

from emu.cluster import Cluster
from emu.errors import EmuError
from emu.hosts.http import HttpServer, Response, curl
from emu.hosts.resolver import Resolver
from emu.hosts.tcp import Tcp
from emu.model import load
from tests.tshark import fields, problems
from tests.util import ROOT

MANIFESTS = str(ROOT / "examples" / "quickstart" / "manifests.yaml")
MS = 1_000_000
S = 1_000_000_000
CURL_GET = b"GET / HTTP/1.1\r\nHost: web\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"


def _echo(req):
    return Response(200, [("X-Method", req.method)], f"{req.target} {req.header('X-Trace')}")


RESPONSES = {"/healthz": Response(503, [("Retry-After", "1")], "down\n"), "/echo": _echo}


def _cluster():
    c = Cluster(load([MANIFESTS]), seed=1)
    webs = sorted(name for (ns, name), p in c.state.pods.items() if p.labels.get("app") == "web")
    servers = {name: HttpServer(c.pod("default", name), responses=RESPONSES).start() for name in webs}
    return c, servers, c.pod("default", "client")


def _service_ip(c, name):
    return next(str(i.cluster_ip) for i in c.state.services.values() if i.key == ("default", name))


# (url, curl keyword arguments) run one after the other, 100 ms apart
STEPS = [("http://web/", {})] * 8 + [
    ("http://web.default.svc.cluster.local:80/", {}),
    ("http://web/healthz", {}),
    ("http://web/echo?x=1", {"headers": {"X-Trace": "abc", "Accept": ""}}),
    ("http://web/", {"headers": {"Connection": "close"}}),
    ("http://web/", {"method": "HEAD"}),
    ("http://empty/", {}),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    c, servers, client = _cluster()
    resolver = Resolver.for_pod(c, "default", "client")
    results, done = [], []

    def step(i):
        url, kw = STEPS[i]
        results.append(curl(client, url, lambda r: after(i, r), resolver=resolver, **kw))

    def after(i, r):
        done.append(r)
        if i + 1 < len(STEPS):
            c.engine.at(c.engine.now + 100 * MS, lambda e: step(i + 1))

    step(0)
    c.engine.run()
    path = tmp_path_factory.mktemp("http") / "run.pcapng"
    c.engine.taps.write_pcapng(path, c.engine)
    assert done == results and len(results) == len(STEPS)
    return c, servers, results, path


def _interface(path, name, tmp_path):
    """The frames of one interface in a file of their own (TCP reassembly
    and the HTTP dissector assume one capture point)."""
    out = tmp_path / f"{name.replace('/', '_')}.pcapng"
    subprocess.run(["tshark", "-r", str(path), "-Y", f'frame.interface_name == "{name}"', "-w", str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


# ---------------------------------------------------------------- results
def test_curl_web_by_name_reaches_a_backend_through_the_cluster_ip(run):
    c, servers, results, _ = run
    r = results[0]
    assert r.ok and r.exit_code == 0
    assert (r.status, r.reason, r.http_version) == (200, "OK", "1.1")
    assert r.text in servers and r.body == r.text.encode()
    assert [k for k, _ in r.headers] == ["Date", "Content-Length", "Content-Type"]
    assert r.header("content-length") == str(len(r.body))
    assert r.header("Content-Type") == "text/plain; charset=utf-8"
    assert r.header("Date") == "Thu, 01 Jan 1970 00:00:00 GMT"   # virtual time 0 as wall time
    # DNS through CoreDNS with the pod's search path, then TCP to the ClusterIP
    assert r.address == _service_ip(c, "web") and r.port == 80
    assert r.resolution.addresses == [r.address]
    assert r.resolution.sequence() == [("web.default.svc.cluster.local", "A"),
                                       ("web.default.svc.cluster.local", "AAAA")]
    assert {q.server for q in r.resolution.queries} == {"10.96.0.10"}
    t = r.timings
    assert 0 < t["dns"] < t["connect"] < t["first_byte"] <= t["total"] < 10 * MS
    # the server saw curl's request from the client pod's address (DNAT only, no SNAT)
    req = servers[r.text].requests[0]
    assert (req.method, req.target, req.http_version, req.status) == ("GET", "/", "1.1", 200)
    assert req.headers == [("Host", "web"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*")]
    assert req.client == (str(c.state.pods[("default", "client")].ip), r.local_port)
    # curl closes first after a complete keep-alive response: FIN from the client
    states = [s for _, s in r.connection.history]
    assert states == ["CLOSE", "SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE"]
    assert Tcp.of(c.pod("default", "client")).connections() == []


def test_repeated_curls_reach_both_backends(run):
    c, servers, results, _ = run
    plain = results[:8]
    assert all(r.status == 200 for r in plain)
    assert {r.text for r in plain} == set(servers)
    assert len({r.local_port for r in plain}) == len(plain)   # a new connection each time
    # one connection per curl on the servers, every request answered once
    assert sum(s.connections for s in servers.values()) == len(STEPS) - 1
    assert all(s.requests for s in servers.values())


def test_fully_qualified_name_with_the_default_port(run):
    c, servers, results, _ = run
    r = results[8]
    assert r.status == 200 and r.text in servers and r.address == _service_ip(c, "web")
    # 4 dots < ndots:5: the search list first, then the name as is
    assert r.resolution.sequence()[-2:] == [("web.default.svc.cluster.local", "A"),
                                           ("web.default.svc.cluster.local", "AAAA")]
    assert len(r.resolution.queries) == 8
    req = next(q for s in servers.values() for q in s.requests if q.client[1] == r.local_port)
    assert req.header("Host") == "web.default.svc.cluster.local"   # curl leaves :80 out


def test_configured_responses(run):
    _, servers, results, _ = run
    health, echo = results[9], results[10]
    assert (health.status, health.reason, health.body) == (503, "Service Unavailable", b"down\n")
    assert health.header("Retry-After") == "1" and health.ok   # an HTTP error is not a curl error
    assert (echo.status, echo.text, echo.header("X-Method")) == (200, "/echo?x=1 abc", "GET")
    req = next(q for s in servers.values() for q in s.requests if q.path == "/echo")
    assert [k for k, _ in req.headers] == ["Host", "User-Agent", "X-Trace"]   # -H 'Accept:' removes it


def test_connection_close_and_head(run):
    c, servers, results, _ = run
    close, head = results[11], results[12]
    assert close.status == 200 and close.header("Connection") == "close"
    # the server closes after the answer; the client closes its side on EOF
    assert [s for _, s in close.connection.history] == ["CLOSE", "SYN_SENT", "ESTABLISHED", "CLOSE_WAIT",
                                                        "LAST_ACK", "CLOSE"]
    req = next(q for s in servers.values() for q in s.requests if q.client[1] == close.local_port)
    assert req.header("Connection") == "close"
    # HEAD: the headers of a GET (Content-Length of the hostname), no body
    assert head.status == 200 and head.body == b"" and head.error is None
    assert head.header("Content-Length") == str(len(results[0].body))


def test_service_without_endpoints_is_refused(run):
    c, _, results, path = run
    r = results[13]
    assert r.error == "refused" and r.exit_code == 7 and r.status is None
    assert r.address == _service_ip(c, "empty") and r.connect_ns is None
    rows = fields(path, "icmp.type", "icmp.code", "ip.src", "ip.dst",
                  display_filter='frame.interface_name == "client/eth0" && icmp')
    assert rows and rows[0][:2] == ["3", "3"]   # port unreachable from kube-proxy's REJECT


# ---------------------------------------------------------------- the capture
def test_capture_has_the_http_exchange_and_no_problems(run, tmp_path):
    c, servers, results, path = run
    assert problems(path) == []   # no RSTs, no TCP analysis flags, no bad checksums
    mine = _interface(path, "client/eth0", tmp_path)
    reqs = fields(mine, "http.request.method", "http.host", "http.user_agent", "http.accept",
                  "ip.dst", display_filter="http.request")
    assert [r[0] for r in reqs] == ["GET"] * 12 + ["HEAD"]
    assert reqs[0][1:] == ["web", "curl/8.5.0", "*/*", _service_ip(c, "web")]
    assert reqs[8][1] == "web.default.svc.cluster.local"
    codes = fields(mine, "http.response.code", "ip.src", display_filter="http.response")
    assert [r[0] for r in codes] == ["200"] * 9 + ["503", "200", "200", "200"]
    assert all(r[1] == _service_ip(c, "web") for r in codes)   # un-DNATed on the way back
    assert fields(mine, "frame.number", display_filter="tcp.flags.reset == 1") == []
    # on a backend the request arrives for the pod's own address, from the client
    far = next(name for name, s in servers.items() if c.state.pods[("default", name)].node == "node-2")
    rows = fields(_interface(path, f"{far}/eth0", tmp_path), "ip.src", "ip.dst", "tcp.dstport",
                  display_filter="http.request")
    assert rows and all(r == [str(c.state.pods[("default", "client")].ip),
                              str(c.state.pods[("default", far)].ip), "8080"] for r in rows)
    # and crossed the underlay inside VXLAN
    under = fields(path, "udp.dstport", "http.request.method",
                   display_filter='frame.interface_name == "node-1/eth0" && vxlan && tcp.dstport == 8080')
    assert under and all(r[0] == "8472" for r in under)


def test_scapy_reads_the_capture(run):
    c, _, results, path = run
    frames = rdpcap(str(path))
    client_ip = str(c.state.pods[("default", "client")].ip)
    sent = [bytes(f[TCP].payload) for f in frames
            if f.haslayer(TCP) and f[IP].src == client_ip and f[IP].dst == _service_ip(c, "web")
            and bytes(f[TCP].payload)]
    assert sent[0] == CURL_GET   # byte for byte what curl 8.5.0 sends
    got = [bytes(f[TCP].payload) for f in frames
           if f.haslayer(TCP) and f[IP].dst == client_ip and bytes(f[TCP].payload).startswith(b"HTTP/1.1")]
    assert got[0] == (b"HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: "
                      + str(len(results[0].body)).encode() + b"\r\nContent-Type: text/plain; charset=utf-8"
                      b"\r\n\r\n" + results[0].body)
    assert any(f.haslayer(ICMP) and f[ICMP].type == 3 and f[ICMP].code == 3 for f in frames)


# ---------------------------------------------------------------- more cases, own clusters
def test_errors_nxdomain_timeout_and_direct_ip():
    c, servers, client = _cluster()
    web = next(iter(servers))
    web_ip = str(c.state.pods[("default", web)].ip)
    Tcp.of(c.pod("default", web)).listen(9000, lambda conn: None)   # accepts, never answers
    nx = curl(client, "http://nothing.default.svc.cluster.local./", cluster=c)
    c.engine.run(until_ns=c.engine.now + 2 * S)
    assert nx.error == "dns: NXDOMAIN" and nx.exit_code == 6 and nx.address is None
    assert nx.resolution.sequence() == [("nothing.default.svc.cluster.local", "A"),
                                        ("nothing.default.svc.cluster.local", "AAAA")]
    # a short name: NXDOMAIN on the search domains, then CoreDNS has no upstream for the
    # bare name (SERVFAIL), which glibc reports over the NXDOMAINs
    short = curl(client, "http://nothing/", cluster=c)
    c.engine.run(until_ns=c.engine.now + 2 * S)
    assert short.error == "dns: SERVFAIL" and short.exit_code == 6
    direct = curl(client, f"http://{web_ip}:8080/", cluster=c)
    c.engine.run(until_ns=c.engine.now + S)
    assert direct.status == 200 and direct.text == web and direct.resolution is None
    assert direct.timings["dns"] == 0 and direct.address == web_ip
    slow = curl(client, f"http://{web_ip}:9000/", timeout_ns=S)
    c.engine.run(until_ns=c.engine.now + 2 * S)
    assert slow.error == "timeout" and slow.exit_code == 28 and slow.timings["total"] == S
    assert slow.connect_ns is not None and slow.first_byte_ns is None
    closed = curl(client, f"http://{web_ip}:8081/")   # no listener: RST for the SYN
    c.engine.run(until_ns=c.engine.now + S)
    assert closed.error == "refused"
    with pytest.raises(EmuError, match="resolver"):
        curl(client, "http://web/")
    with pytest.raises(EmuError, match="http://"):
        curl(client, "https://web/", cluster=c)


def test_server_keep_alive_pipelining_and_bad_request():
    c, servers, client = _cluster()
    web = next(iter(servers))
    web_ip = str(c.state.pods[("default", web)].ip)
    got = {}

    def connected(conn):
        conn.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")

    conn = Tcp.of(client).connect(web_ip, 8080, connected)
    c.engine.run(until_ns=c.engine.now + S)
    text = bytes(conn.received)
    assert text.count(b"HTTP/1.1 ") == 2 and b"503 Service Unavailable" in text
    assert conn.state == "ESTABLISHED"   # keep-alive: the server waits for more
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    c.engine.run(until_ns=c.engine.now + S)
    assert conn.state == "CLOSE_WAIT" and bytes(conn.received).count(b"HTTP/1.1 200 OK") == 2
    assert b"Connection: close" in bytes(conn.received)
    conn.close()
    bad = Tcp.of(client).connect(web_ip, 8080, lambda k: k.send(b"NOT HTTP AT ALL\r\n\r\n"))
    bad.on_closed = lambda: got.setdefault("eof", True)
    c.engine.run(until_ns=c.engine.now + S)
    assert bytes(bad.received).startswith(b"HTTP/1.1 400 Bad Request\r\n") and got.get("eof")
    assert [q.path for q in servers[web].requests] == ["/a", "/healthz", "/"]
