"""The `emu` command as a user runs it."""
from __future__ import annotations

import subprocess
import sys

from tests.tshark import fields, problems
from tests.util import ROOT


def _emu(*args):
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_demo_writes_a_clean_capture(tmp_path):
    out = tmp_path / "demo.pcapng"
    r = _emu("demo", "-o", str(out), "--pcap-dir", str(tmp_path / "pcaps"))
    assert r.returncode == 0, r.stderr
    assert "reply" in r.stdout and "TTL exceeded" in r.stdout and "net unreachable" in r.stdout
    assert problems(out) == []
    names = {row[0] for row in fields(out, "frame.interface_name")}
    assert {"pod-a/eth0", "node-1/flannel.1", "underlay/port-node-1", "pod-b/eth0"} <= names
    assert len(list((tmp_path / "pcaps").glob("*.pcap"))) == len(names)


def test_demo_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert _emu("demo", "-o", str(tmp_path / f"{name}.pcapng")).returncode == 0
    assert (tmp_path / "a.pcapng").read_bytes() == (tmp_path / "b.pcapng").read_bytes()


def test_errors_are_one_line_and_non_zero(tmp_path):
    r = _emu("demo", "-o", "/proc/no/such/dir/x.pcapng")
    assert r.returncode != 0
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
