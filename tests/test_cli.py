"""The `emu` command as a user runs it."""
from __future__ import annotations

import subprocess
import sys

from tests.tshark import fields, one_interface, problems
from tests.util import ROOT


def _emu(*args):
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


QUICKSTART = str(ROOT / "examples" / "quickstart" / "scenario.yaml")


def test_run_writes_a_clean_capture(tmp_path):
    out = tmp_path / "q.pcapng"
    r = _emu("run", QUICKSTART, "-o", str(out), "--pcap-dir", str(tmp_path / "pcaps"))
    assert r.returncode == 0, r.stderr
    # the steps table: outcomes, backends, packets; then the capture and the verdict
    assert r.stdout.count("200 OK") == 2 and "3/3 ok" in r.stdout and "refused" in r.stdout
    assert "2/2 replies" in r.stdout and "web-" in r.stdout and "SERVICE_NO_ENDPOINTS" in r.stdout
    assert "all expectations met" in r.stdout and f"to {out}" in r.stdout
    assert out.read_bytes() == (ROOT / "pcaps" / "quickstart.pcapng").read_bytes()
    names = {row[0] for row in fields(out, "frame.interface_name")}
    assert {"client/eth0", "node-1/flannel.1", "underlay/port-node-1", "node-2/cni0"} <= names
    assert len(list((tmp_path / "pcaps").glob("*.pcap"))) == len(names)


def test_run_fails_on_an_unmet_expectation_and_says_which(tmp_path):
    text = (ROOT / "examples" / "quickstart" / "scenario.yaml").read_text()
    bad = tmp_path / "scenario.yaml"
    bad.write_text(text.replace("manifests: [manifests.yaml]", f"manifests: [{ROOT}/examples/quickstart/manifests.yaml]")
                   .replace("  expect: refused", "  expect: 200"))
    r = _emu("run", str(bad), "--no-capture")
    assert r.returncode == 1
    assert "1 expectation(s) failed" in r.stdout
    assert "step 5 (curl http://empty/ from client): status refused, expected 200" in r.stdout


def test_bad_scenarios_and_arguments_are_one_line(tmp_path):
    def one_line_error(*args):
        r = _emu(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        return lines[0]

    (tmp_path / "m.yaml").write_text((ROOT / "examples" / "quickstart" / "manifests.yaml").read_text())
    head = "apiVersion: emu.dev/v1alpha1\nkind: Scenario\nmanifests: [m.yaml]\nsteps:\n"
    cases = {
        "- curl: http://web/\n  from: client\n  expct: 200\n": "steps[0] (curl).expct: unknown field (did you mean \"expect\"?)",
        "- curl: http://web/\n  from: client\n  expect: {status: 999}\n": "steps[0] (curl).expect.status",
        "- sleep: soon\n": "steps[0] (sleep).sleep: 'soon' is not a duration",
        "- curl: http://web/\n  from: nobody\n": "steps[0] (curl).from: no running pod default/nobody",
        "- ping: 10.0.0.1\n  fly: 1\n": "steps[0] (ping).fly: unknown field",
        "- {}\n": "step 1 must have exactly one of curl, dig",
        "- curl: ftp://web/\n  from: client\n": "must be an http:// URL",
        "- scale: web\n": "steps[0] (scale).replicas: required field is missing",
    }
    for i, (steps, want) in enumerate(cases.items()):
        f = tmp_path / f"s{i}.yaml"
        f.write_text(head + steps)
        line = one_line_error("run", str(f), "--no-capture")
        assert str(f) in line and want in line, (steps, line)
    assert "No such file" in one_line_error("run", str(tmp_path / "nope.yaml"))
    assert "--from nobody" in one_line_error("trace", "--from", "nobody", "--to", "http://web/", "-f", QUICKSTART)
    assert "--to" in one_line_error("trace", "--from", "client", "--to", "web:http", "-f", QUICKSTART)
    r = _emu("-v", "trace", "--from", "nobody", "--to", "http://web/", "-f", QUICKSTART)
    assert r.returncode != 0 and "Traceback" in r.stderr   # -v: the traceback, for bug reports


def test_trace_shows_each_hop_and_decision():
    r = _emu("trace", "--from", "client", "--to", "http://web/", "-f", QUICKSTART)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("client -> http://web/ (10.") and ": open" in out.splitlines()[0]
    assert "SYN" in out and "SYN,ACK" in out
    assert "DNAT 10." in out and "KUBE-SEP-" in out and "delivered to local socket proto 6 port 8080" in out
    r = _emu("trace", "--from", "client", "--to", "http://empty/", "-f", QUICKSTART)
    assert r.returncode == 0 and ": refused" in r.stdout.splitlines()[0] and "SERVICE_NO_ENDPOINTS" in r.stdout
    r = _emu("trace", "--from", "external", "--to", "node-2:30080", "-f",
             str(ROOT / "examples" / "nodeport" / "scenario.yaml"))
    assert r.returncode == 0 and ": open" in r.stdout.splitlines()[0] and "SNAT" in r.stdout


def test_show_takes_a_scenario():
    r = _emu("show", "pods", "-f", QUICKSTART)
    assert r.returncode == 0, r.stderr
    assert "client" in r.stdout and "web-" in r.stdout and "coredns-" in r.stdout


CLUSTER = str(ROOT / "examples" / "cluster")


def test_show_tables_from_manifests():
    r = _emu("show", "services", "-f", CLUSTER + "/app.yaml")
    assert r.returncode == 0, r.stderr
    assert "10.96.0.10" in r.stdout and "kube-dns" in r.stdout and "web" in r.stdout
    r = _emu("show", "iptables", "-f", CLUSTER + "/app.yaml", "--node", "node-2")
    assert r.returncode == 0 and "*nat" in r.stdout and "-A KUBE-SERVICES" in r.stdout
    assert "KUBE-SVC-" in r.stdout and "COMMIT" in r.stdout and "# node-1" not in r.stdout
    r = _emu("show", "routes", "-f", CLUSTER + "/external.yaml")
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in r.stdout  # node-1's view of node-2
    for kind in ("pods", "endpoints", "neigh", "fdb", "conntrack", "dns"):
        r = _emu("show", kind, "-f", CLUSTER + "/app.yaml")
        assert r.returncode == 0, (kind, r.stderr)


def test_show_reads_stdin_and_reports_bad_manifests_in_one_line():
    bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 70000}]}\n"
    r = subprocess.run([sys.executable, "-m", "emu.cli", "show", "services", "-f", "-"], input=bad,
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: <stdin>:4: Service default/x: spec.ports[0].port: 70000 is out of range 1-65535"]
    r = _emu("show", "tables", "-f", CLUSTER + "/app.yaml")
    assert r.returncode != 0 and "unknown table" in r.stderr
