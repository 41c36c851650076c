"""Golden captures in pcaps/: regenerated and compared byte for byte (`make
pcaps` rewrites them when a change is meant to alter them)."""
from __future__ import annotations

from emu.demo import run_demo
from tests.tshark import problems
from tests.util import ROOT


def test_demo_capture_matches_the_golden_one(tmp_path):
    out = tmp_path / "demo.pcapng"
    run_demo(out, seed=1)
    golden = ROOT / "pcaps" / "demo.pcapng"
    assert out.read_bytes() == golden.read_bytes(), "capture changed: review it, then `make pcaps`"
    assert problems(golden) == []
