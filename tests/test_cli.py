"""The `emu` command as a user runs it."""
from __future__ import annotations

import subprocess
import sys

from tests.tshark import fields, one_interface, problems
from tests.util import ROOT


def _emu(*args):
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_demo_writes_a_clean_capture(tmp_path):
    out = tmp_path / "demo.pcapng"
    r = _emu("demo", "-o", str(out), "--pcap-dir", str(tmp_path / "pcaps"))
    assert r.returncode == 0, r.stderr
    # curl through the Service (DNS, kube-proxy, VXLAN), a Service without endpoints, a ping
    assert r.stdout.count("200 OK") == 4 and "refused" in r.stdout and "reply" in r.stdout
    assert "KUBE-SEP-" in r.stdout and "VXLAN encap" in r.stdout
    assert problems(out) == []
    names = {row[0] for row in fields(out, "frame.interface_name")}
    assert {"client/eth0", "node-1/flannel.1", "underlay/port-node-1", "node-2/cni0"} <= names
    assert len(list((tmp_path / "pcaps").glob("*.pcap"))) == len(names)
    client = one_interface(out, "client/eth0", tmp_path / "client.pcapng")
    http = fields(client, "http.response.code", display_filter="http.response")
    assert [r[0] for r in http] == ["200"] * 4


def test_demo_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert _emu("demo", "-o", str(tmp_path / f"{name}.pcapng")).returncode == 0
    assert (tmp_path / "a.pcapng").read_bytes() == (tmp_path / "b.pcapng").read_bytes()


def test_errors_are_one_line_and_non_zero(tmp_path):
    r = _emu("demo", "-o", "/proc/no/such/dir/x.pcapng")
    assert r.returncode != 0
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


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
