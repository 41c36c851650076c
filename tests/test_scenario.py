"""Scenario files: parsing, step timing, expectations, and what pods serve."""
from __future__ import annotations

import pytest

from emu.hosts import apps
from emu.model.fields import Ctx, F
from emu.model.load import ManifestError
from emu.model.objects import Container, ContainerPort
from emu.scenario import load, run
from emu.scenario.spec import duration_ns
from tests.util import ROOT

QUICKSTART = ROOT / "examples" / "quickstart"


def _scenario(tmp_path, steps: str, extra: str = "") -> str:
    path = tmp_path / "scenario.yaml"
    path.write_text(f"apiVersion: emu.dev/v1alpha1\nkind: Scenario\nmetadata: {{name: t}}\n"
                    f"manifests: [{QUICKSTART}/manifests.yaml]\n{extra}steps:\n{steps}")
    return str(path)


def test_durations():
    f = lambda v: F(v, "x", 1, Ctx("f", None))  # noqa: E731
    assert duration_ns(f("500ms")) == 500_000_000 and duration_ns(f("2s")) == 2_000_000_000
    assert duration_ns(f(1.5)) == 1_500_000_000 and duration_ns(f("1m")) == 60_000_000_000
    assert duration_ns(f("10us")) == 10_000 and duration_ns(f(None), 7) == 7
    for bad in ("soon", "-1s", True, [1]):
        with pytest.raises(ManifestError, match="duration"):
            duration_ns(f(bad))


def test_steps_run_in_order_with_at_and_wait(tmp_path):
    report = run(load(_scenario(tmp_path, """\
- sleep: 2s
  wait: false
- at: 500ms
  sleep: 1s
- ping: web-*
  from: client
- at: 10s
  sleep: 1s
""")))
    starts = [r.started_ns for r in report.steps]
    ends = [r.finished_ns for r in report.steps]
    assert starts[0] == 0 and ends[0] == 2_000_000_000
    assert starts[1] == 500_000_000          # did not wait for step 1, waited for its `at`
    assert starts[2] == ends[1] == 1_500_000_000
    assert starts[3] == 10_000_000_000
    assert report.ok and report.frames == 0 and report.output is None


def test_each_kind_reports_unmet_expectations(tmp_path):
    report = run(load(_scenario(tmp_path, """\
- curl: http://web/
  from: client
  expect: {status: 200, backend: nope-*}
- dig: web.default.svc.cluster.local
  from: client
  expect: {addresses: [10.0.0.1]}
- ping: web-*
  from: client
  count: 2
  expect: 3
- connect: empty:80
  from: client
  expect: open
- curl: http://web/
  from: client
  count: 3
  interval: 10ms
  expect: {failed: ">=1"}
""")))
    failures = report.failures()
    assert len(failures) == 5, failures
    assert failures[0].startswith("step 1 (curl http://web/ from client): backend 'web-")
    assert "expected 'nope-*'" in failures[0]
    assert failures[1].startswith("step 2 (dig web.default.svc.cluster.local from client): addresses [")
    assert failures[2] == "step 3 (ping web-* from client): received: 2, expected 3"
    assert failures[3] == "step 4 (connect empty:80 from client): refused, expected open"
    assert failures[4] == "step 5 (curl http://web/ from client): failed: 0, expected >=1"


def test_scenario_cluster_settings_override_the_manifests(tmp_path):
    path = _scenario(tmp_path, "- sleep: 1s\n", extra="cluster: {nodes: 3, mtu: 1400}\n")
    report = run(load(path))
    assert sorted(report.cluster.state.nodes) == ["node-1", "node-2", "node-3"]
    assert report.cluster.pod("default", "client").iface("eth0").mtu == 1400
    bad = _scenario(tmp_path, "- sleep: 1s\n", extra="cluster: {nodes: 0}\n")
    with pytest.raises(ManifestError, match=r"scenario.yaml:\d+: ClusterSettings: nodes"):
        run(load(bad))


def test_capture_patterns_choose_the_interfaces(tmp_path):
    path = _scenario(tmp_path, "- ping: node-2\n  from: client\n",
                     extra="capture: {interfaces: [\"client/*\", \"node-1/eth0\"]}\n")
    report = run(load(path), output=tmp_path / "c.pcapng")
    from tests.tshark import fields
    names = {row[0] for row in fields(tmp_path / "c.pcapng", "frame.interface_name")}
    assert names == {"client/eth0", "node-1/eth0"}


# ------------------------------------------------------------------ apps from container images
def _c(image, *args, ports=()):
    return Container("c", tuple(ContainerPort(p, proto) for p, proto in ports), image, (), tuple(args))


@pytest.mark.parametrize("container, want", [
    (_c("registry.k8s.io/e2e-test-images/agnhost:2.45", "serve-hostname"), [("http", 9376)]),
    (_c("agnhost", "serve-hostname", "--port", "8080", "--udp", "--http=false"), [("udp", 8080)]),
    (_c("registry.k8s.io/e2e-test-images/agnhost:2.45", "netexec", "--http-port=9000"),
     [("http", 9000), ("udp", 8081)]),
    (_c("hashicorp/http-echo:1.0", "-listen=:8080", "-text=hi"), [("http", 8080)]),
    (_c("docker.io/library/nginx:1.25"), [("http", 80)]),
    (_c("ghcr.io/me/app:v1", ports=[(7000, "TCP"), (7001, "UDP"), (7002, "SCTP")]),
     [("http", 7000), ("udp", 7001)]),
    (_c("curlimages/curl:8.5.0", "sleep", "infinity"), []),
    (_c("registry.k8s.io/coredns/coredns:v1.11.1", ports=[(53, "UDP")]), []),
])
def test_what_a_container_serves(container, want):
    assert [(ls.protocol, ls.port) for ls in apps.listens(container)] == want


def test_http_echo_answers_its_text_and_udp_answers_commands(tmp_path):
    from emu.cluster import Cluster
    from emu.hosts.http import curl
    from emu.hosts.udp import UdpProbe
    from emu.model import load as load_manifests

    m = tmp_path / "m.yaml"
    m.write_text((QUICKSTART / "manifests.yaml").read_text() + """
---
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  nodeName: node-2
  containers:
  - name: e
    image: hashicorp/http-echo
    args: [-listen=:5678, -text=hello]
  - name: n
    image: registry.k8s.io/e2e-test-images/agnhost:2.45
    args: [netexec, --http-port=8080, --udp-port=8081]
""")
    c = Cluster(load_manifests([str(m)]), apps=True)
    echo_ip = c.state.pods[("default", "echo")].ip
    client = c.pod("default", "client")
    r1 = curl(client, f"http://{echo_ip}:5678/anything")
    r2 = curl(client, f"http://{echo_ip}:8080/echo?msg=ping")
    r3 = curl(client, f"http://{echo_ip}:8080/clientip")
    p1 = UdpProbe(client, echo_ip, 8081, message=b"hostname").start()
    p2 = UdpProbe(client, echo_ip, 8081, message=b"nonsense", timeout_ns=500_000_000).start()
    p3 = UdpProbe(client, echo_ip, 9999).start()
    c.engine.run()
    client_ip = c.state.pods[("default", "client")].ip
    assert (r1.status, r1.text) == (200, "hello") and r2.text == "ping"
    assert r3.text.startswith(client_ip + ":")
    assert (p1.status, p1.reply, p1.responder) == ("open", b"echo", echo_ip)
    assert p2.status == "timeout" and p2.reply is None        # netexec ignores unknown commands
    assert (p3.status, p3.responder) == ("refused", echo_ip)   # ICMP port unreachable from the pod


@pytest.mark.parametrize("cleanup", [True, False])
def test_kube_proxy_cleans_stale_udp_conntrack_or_the_flow_blackholes(cleanup):
    """A UDP client keeps one socket (one 5-tuple) to a Service. Its backend
    is deleted: kube-proxy's conntrack reconcile deletes the entry and the next
    datagram picks a live endpoint; without it the entry keeps sending the
    flow to the dead address until the client stops for 30/120 s."""
    from scapy.layers.inet import IP, UDP

    from emu.cluster import Cluster
    from emu.model import load as load_manifests
    from emu.wire import ipv4 as v4

    c = Cluster(load_manifests([str(ROOT / "examples" / "no-endpoints" / "manifests.yaml")]), apps=True)
    c.conntrack_cleanup = cleanup
    c.scale("default", "web", 2)
    vip = c.state.services[("default", "web")].cluster_ip
    client = c.pod("default", "client")
    me = c.state.pods[("default", "client")].ip
    answers = []
    client.bind(17, 40000, lambda ns, frame, l3, t: answers.append(bytes(IP(bytes(frame[l3:]))[UDP].payload)))

    def send():
        client.send_ip(c.engine, bytes(IP(src=me, dst=vip) / UDP(sport=40000, dport=81) / b"hostname"))
        c.engine.run()

    send()
    assert len(answers) == 1
    first = answers[0].decode()
    c.delete_pod("default", first)
    dead = {k: p for k, p in c.state.pods.items()}   # the pod is gone from the state
    assert ("default", first) not in dead
    send()
    node1 = c.fabric.nodes["node-1"].ns.conntrack
    to_vip = [e for e in node1.entries() if e["proto"] == 17 and v4.ntoa(e["orig_dst"]) == vip]
    if cleanup:
        assert len(answers) == 2 and answers[1].decode() != first and c.udp_entries_cleaned >= 1
        assert len(to_vip) == 1 and v4.ntoa(to_vip[0]["reply_src"]) != vip
    else:
        assert len(answers) == 1 and c.udp_entries_cleaned == 0   # the blackhole
        assert len(to_vip) == 1


# ------------------------------------------------------------------ the traffic step (emu.bulk)
def test_traffic_step_reports_and_shares_the_cluster(tmp_path):
    report = run(load(_scenario(tmp_path, """\
- curl: http://web/
  from: client
- traffic: web:80
  from: client
  flows: 60
  packets: 3
  expect: {completed: 60, broken: 0, backends: 2, drops: {CT_TABLE_FULL: 0}}
- curl: http://web/
  from: client
  expect: 200
""")))
    assert report.ok, report.failures()
    bulk = report.steps[1].result.detail
    assert (bulk.flows, bulk.completed, sum(bulk.backends.values())) == (60, 60, 60)
    assert bulk.packets == 60 * (2 * 3 + 6)   # handshake, 3 acknowledged segments, teardown
    assert bulk.cached > bulk.packets // 2    # the flow cache carried most of them
    assert "60 flows: 60 completed" in report.steps[1].result.outcome
    # the flows are in the same conntrack table the curls use (TIME_WAIT entries)
    node1 = report.cluster.fabric.nodes["node-1"].ns.conntrack
    assert len([e for e in node1.entries() if e["proto"] == 6]) >= 60


@pytest.mark.parametrize("value,ok", [("false", True), ("maybe", False)])
def test_traffic_step_flow_cache_option(tmp_path, value, ok):
    text = f"""\
- traffic: web:80
  from: client
  flows: 20
  packets: 4
  flowCache: {value}
  expect: {{completed: 20}}
"""
    if not ok:
        with pytest.raises(ManifestError, match=r"steps\[0\] \(traffic\)\.flowCache: .*true or false"):
            run(load(_scenario(tmp_path, text)))
        return
    report = run(load(_scenario(tmp_path, text)))
    assert report.ok, report.failures()
    assert report.steps[0].result.detail.cached == 0


def test_traffic_step_under_conntrack_pressure(tmp_path):
    report = run(load(_scenario(tmp_path, """\
- curl: http://web/
  from: client
- traffic: web:80
  from: client
  flows: 300
  packets: 1
  expect: {drops: {CT_TABLE_FULL: ">=1"}, completed: "<=299"}
""", extra="cluster: {conntrackMax: 128}\n")))
    assert report.ok, report.failures()
    bulk = report.steps[1].result.detail
    assert bulk.completed + bulk.broken == bulk.flows == 300
    assert any(reason == "CT_TABLE_FULL" for _, reason, _ in bulk.drops)
    assert all(cap == 128 for _, cap in bulk.conntrack.values())
