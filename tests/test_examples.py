"""Every example as a user runs it: its scenario's expectations hold, its
capture matches the golden one in pcaps/ byte for byte, Wireshark finds
nothing wrong with it (or only what the example is about), and the outcomes
are checked again independently from the capture, with tshark and Scapy."""
from __future__ import annotations

import pytest

from emu.scenario import load, run
from tests.tshark import fields, one_interface, problems
from tests.util import ROOT

EXAMPLES = ("quickstart", "nodeport", "headless-dns", "no-endpoints", "mtu", "failover", "bulk-traffic")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("examples")
    return {x: (run(load(str(ROOT / "examples" / x / "scenario.yaml")), output=out / f"{x}.pcapng"),
                out / f"{x}.pcapng") for x in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_expectations_hold_and_capture_is_golden(runs, example):
    report, path = runs[example]
    assert report.ok, report.failures()
    assert all(r.result is not None for r in report.steps)
    golden = ROOT / "pcaps" / f"{example}.pcapng"
    assert path.read_bytes() == golden.read_bytes(), "capture changed: review it, then `make pcaps`"
    assert (ROOT / "examples" / example / "README.md").stat().st_size > 200


@pytest.mark.parametrize("example", ("quickstart", "headless-dns", "no-endpoints"))
def test_clean_examples_have_no_wireshark_problems(runs, example):
    assert problems(runs[example][1]) == []


def test_nodeport_problems_are_the_dropped_local_syns(runs):
    """Only the client's retransmitted SYNs to the node without a local endpoint,
    and on the one-armed load balancer's link each packet seen twice (in, then
    out again towards the node: Wireshark calls the second a retransmission)."""
    found = problems(runs["nodeport"][1])
    lb = [p for p in found if p.startswith(("loadbalancer/eth0:", "underlay/port-loadbalancer:"))]
    rest = [p for p in found if p not in lb]
    assert rest and all("[TCP Retransmission]" in p and "→ 30081 [SYN]" in p for p in rest)
    assert lb and all("192.168.0.200 → 192.168.1.240" in p for p in lb)


def _problem_kinds(path) -> set[str]:
    """What Wireshark flags, by kind: ICMP errors (an expert note on each) and TCP analysis flags."""
    kinds = set()
    for line in problems(path):
        if "Fragmentation needed" in line or "Destination unreachable" in line:
            kinds.add("icmp")
        elif "[TCP Retransmission]" in line or "[TCP Previous segment not captured]" in line \
                or "[TCP Out-Of-Order]" in line or "[TCP ACKed unseen segment]" in line:
            kinds.add("tcp-retransmission")
        else:
            kinds.add(line)
    return kinds


def test_mtu_problems_are_the_mtu_ones(runs):
    """Only ICMP fragmentation-needed errors and the retransmissions they cause."""
    assert _problem_kinds(runs["mtu"][1]) <= {"icmp", "tcp-retransmission"}


def test_failover_problems_are_the_failure_ones(runs):
    """Only retransmitted SYNs and DNS queries to the dead node."""
    assert _problem_kinds(runs["failover"][1]) <= {"tcp-retransmission"}


def test_every_capture_reads_back_with_scapy(runs):
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgReader

    for example, (report, path) in runs.items():
        frames = list(PcapNgReader(str(path)))
        assert len(frames) == report.frames > 100
        assert all(f.haslayer(Ether) for f in frames)
        assert all(f.comment and f.comment.startswith(b"pkt ") for f in frames)


# ------------------------------------------------------------------ outcomes from the capture
def test_quickstart_on_the_wire(runs, tmp_path):
    report, path = runs["quickstart"]
    c = report.cluster
    vip = c.state.services[("default", "web")].cluster_ip
    client = one_interface(path, "client/eth0", tmp_path / "client.pcapng")
    dns = fields(client, "dns.qry.name", "dns.qry.type", "dns.a", display_filter="dns.flags.response == 1")
    # the search path: web.default.svc.cluster.local answers first, A then AAAA (NODATA)
    assert dns[0] == ["web.default.svc.cluster.local", "1", vip]
    assert dns[1] == ["web.default.svc.cluster.local", "28", ""]
    bodies = fields(client, "http.response.code", "http.file_data", display_filter="http.response")
    web_pods = {k[1] for k in c.state.pods if k[1].startswith("web-")}
    assert len(bodies) == 5 and all(code == "200" for code, _ in bodies)
    assert {bytes.fromhex(b.replace(":", "")).decode() if all(ch in "0123456789abcdef:" for ch in b) else b
            for _, b in bodies} <= web_pods
    # the refused Service: ICMP port unreachable back to the client
    assert fields(client, "icmp.type", "icmp.code", display_filter="icmp.type == 3") == [["3", "3"]]
    # the overlay: VXLAN VNI 1 on UDP 8472 between the nodes, inner traffic to the backends' pod IPs
    vx = fields(path, "ip.src", "ip.dst", "udp.dstport", "vxlan.vni",
                display_filter='frame.interface_name == "underlay/port-node-2" && vxlan')
    assert vx and {tuple(r[:4]) for r in vx} >= {("192.168.0.11,10.244.0.4", "192.168.0.12,10.244.1.3", "8472", "1")}


def test_nodeport_source_addresses_on_the_backend(runs, tmp_path):
    report, path = runs["nodeport"]
    c = report.cluster
    pod = next(k[1] for k in c.state.pods if k[1].startswith("web-"))
    web = one_interface(path, f"{pod}/eth0", tmp_path / "web.pcapng")
    sources = [r[0] for r in fields(web, "ip.src", display_filter="http.request")]
    assert sources == ["10.244.0.0", "10.244.1.1", "192.168.0.200", "192.168.0.200"]
    # the load balancer sends to node-2 only (Local): the VIP arrives on node-2's eth0 unchanged
    vip = c.state.services[("default", "web-lb")].load_balancer_ips[0]
    node2 = one_interface(path, "node-2/eth0", tmp_path / "node2.pcapng")
    assert fields(node2, "ip.src", display_filter=f"ip.dst == {vip} && tcp.flags.syn == 1") == [["192.168.0.200"]]
    # externalTrafficPolicy Local on node-1: SYNs arrive, nothing answers them
    node1 = one_interface(path, "node-1/eth0", tmp_path / "node1.pcapng")
    syns = fields(node1, "tcp.flags.syn", "tcp.flags.ack", display_filter="tcp.dstport == 30081")
    assert len(syns) >= 2 and all(r == ["1", "0"] for r in syns)
    assert fields(node1, "tcp.srcport", display_filter="tcp.srcport == 30081") == []


def test_headless_dns_answers_on_the_wire(runs, tmp_path):
    report, path = runs["headless-dns"]
    client = one_interface(path, "client/eth0", tmp_path / "client.pcapng")
    answers = fields(client, "dns.qry.name", "dns.count.answers", "dns.srv.target", "dns.a",
                     display_filter="dns.flags.response == 1")
    by_name = {r[0]: r for r in answers}
    assert by_name["db.default.svc.cluster.local"][1] == "3"
    srv = by_name["_http._tcp.db.default.svc.cluster.local"]
    assert srv[1] == "3" and sorted(srv[2].split(",")) == [f"db-{i}.db.default.svc.cluster.local" for i in range(3)]
    first = report.steps[0].result.detail   # dig's result, before db-1 was re-created
    assert sorted(by_name["db.default.svc.cluster.local"][3].split(",")) == sorted(first.addresses)
    assert len(set(first.addresses)) == 3 and all(a.startswith("10.244.") for a in first.addresses)
    # the re-created db-1 answers from its new address
    new_db1 = report.cluster.state.pods[("default", "db-1")].ip
    assert new_db1 not in first.addresses
    assert fields(client, "ip.src", display_filter="http.response")[-1] == [new_db1]


def test_no_endpoints_reject_then_answers(runs, tmp_path):
    report, path = runs["no-endpoints"]
    client = one_interface(path, "client/eth0", tmp_path / "client.pcapng")
    unreach = fields(client, "icmp.type", "icmp.code", "ip.proto", display_filter="icmp.type == 3")
    assert [r[:2] for r in unreach] == [["3", "3"], ["3", "3"]]   # TCP, then UDP: both rejected
    assert fields(client, "http.response.code", display_filter="http.response") == [["200"]]
    udp = fields(client, "udp.payload", display_filter="udp.srcport == 81")
    assert len(udp) == 1 and bytes.fromhex(udp[0][0].replace(":", "")).decode().startswith("web-")


def test_mtu_frag_needed_and_recovery(runs, tmp_path):
    report, path = runs["mtu"]
    pod = next(k[1] for k in report.cluster.state.pods if k[1].startswith("web-"))
    web = one_interface(path, f"{pod}/eth0", tmp_path / "web.pcapng")
    frag = fields(web, "icmp.mtu", display_filter="icmp.type == 3 && icmp.code == 4")
    assert frag and {r[0] for r in frag} == {"1450"}
    # after the ICMP error the server sends segments that fit: 1450-byte IP packets
    sizes = [int(r[0]) for r in fields(web, "ip.len", display_filter="tcp.srcport == 8080 && tcp.len > 0")]
    assert max(sizes) == 1500 and sizes[-1] <= 1450
    client = one_interface(path, "client/eth0", tmp_path / "client.pcapng")
    pod_name_length = str(len(pod))
    assert fields(client, "http.response.code", "http.content_length", display_filter="http.response") == [
        ["200", pod_name_length], ["200", "20000"]]   # the small answer, then all 20 kB despite the MTU


def test_failover_timeline_on_the_wire(runs, tmp_path):
    report, path = runs["failover"]
    c = report.cluster
    dead_web = next(p.ip for p in c.state.pods.values() if p.name.startswith("web-") and p.node == "node-2")
    on_node2 = {p.ip for p in c.state.pods.values() if p.node == "node-2" and not p.host_network}
    fail_at = report.steps[1].started_ns / 1e9
    not_ready_at = fail_at + 40
    # new connections (SYNs) and DNS queries still DNATed to pods on node-2 leave node-1
    # after the failure, and only until the node is NotReady
    flannel = one_interface(path, "node-1/flannel.1", tmp_path / "flannel.pcapng")
    sent = fields(flannel, "frame.time_epoch", "ip.dst",
                  display_filter="(tcp.flags.syn == 1 && tcp.flags.ack == 0) || dns.flags.response == 0")
    late = [(float(t), dst) for t, dst in sent if float(t) > fail_at and dst in on_node2]
    assert any(dst == dead_web for _, dst in late)
    assert late and max(t for t, _ in late) < not_ready_at
    # the capture (timestamps are the virtual clock) shows answers again after NotReady
    client = one_interface(path, "client/eth0", tmp_path / "client.pcapng")
    ok = fields(client, "frame.time_epoch", display_filter="http.response.code == 200")
    assert any(float(t) > not_ready_at for (t,) in ok)


def test_bulk_traffic_on_the_wire(runs, tmp_path):
    """The sampled bulk flows in the capture: whole TCP connections (SYN to
    the ClusterIP on the client, DNATed SYN at a backend, FIN both ways),
    UDP datagrams echoed; Wireshark's only remarks are SYNs resent after a
    burst overflowed a neighbour queue (as on Linux)."""
    report, path = runs["bulk-traffic"]
    tcp, udp = report.steps[2].result.detail, report.steps[3].result.detail
    assert (tcp.flows, tcp.completed, tcp.broken) == (4000, 4000, 0) and len(tcp.backends) == 3
    assert udp.flows == 600 and udp.packets > udp.delivered > 0.9 * udp.packets   # node-2 failed meanwhile
    vip = report.cluster.state.services[("default", "web")].cluster_ip
    client = one_interface(path, "client-1/eth0", tmp_path / "client.pcapng")
    syns = fields(client, "tcp.srcport", display_filter=f"ip.dst == {vip} && tcp.flags.syn == 1 && tcp.dstport == 80")
    fins = fields(client, "tcp.srcport", display_filter=f"ip.dst == {vip} && tcp.flags.fin == 1 && tcp.dstport == 80")
    # one sampled flow in 400: 5 of client-1's 2000, plus its two curls
    assert len({r[0] for r in syns}) == 7 and {r[0] for r in fins} == {r[0] for r in syns}
    echoed = fields(client, "udp.srcport", display_filter=f"ip.src == {vip} && udp.srcport == 81")
    assert echoed
    found = problems(path)
    assert all("[TCP Retransmission]" in p and "[SYN]" in p for p in found), found
