"""Frames made from capture templates (kernels.frametpl.materialize, as a
capture is written) against Scapy building the same frames field by field
with fresh checksums. No issue target; it is part of writing a full
capture of bulk traffic."""
from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from bench.conftest import size
from kernels import frametpl

N = size(500_000, 200)
BASELINE_N = size(3_000, 20)
PAYLOAD = bytes(range(64))


def _templates():
    inner = bytes(Ether(dst="02:00:00:00:00:02") / IP(src="10.244.0.5", dst="10.244.1.7", flags="DF")
                  / TCP(sport=40000, dport=8080, flags="PA") / PAYLOAD)
    outer = bytes(Ether(dst="02:00:00:00:00:04") / IP(src="192.168.0.11", dst="192.168.0.12", flags="DF")
                  / UDP(sport=50000, dport=8472, chksum=0) / VXLAN(vni=1, flags=0x08)) + inner
    tpl_buf = np.frombuffer(inner + outer, np.uint8).copy()
    tpl = np.array([[0, len(inner), 0, -1, 14], [len(inner), len(outer), 0, -1, 64]], np.int64)
    return tpl_buf, tpl


def _records(n):
    tpl_buf, tpl = _templates()
    buf = np.zeros(n * frametpl.FIELD_BYTES, np.uint8)
    ids = (np.arange(n) % 2).astype(np.int32)
    for k in range(min(n, 1024)):   # the fields do not change the cost
        frametpl.put_fields(buf, k * frametpl.FIELD_BYTES, k, k, 1000 + k, 2000 + k, np.uint64(k), 40000 << 16 | 8080,
                            50000)
    starts = np.arange(n, dtype=np.int64) * frametpl.FIELD_BYTES
    lengths = tpl[ids, 1].copy()
    out_starts = np.cumsum(lengths) - lengths
    return buf, starts, lengths, ids, tpl_buf, tpl, np.zeros(int(lengths.sum()), np.uint8), out_starts


def test_materialize_emu(benchmark, record):
    args = _records(N)
    frametpl.materialize(*(a[:2] if k in (1, 2, 3, 7) else a for k, a in enumerate(args)))
    record("frames from capture templates (half VXLAN)", "emu", N, "frames")
    benchmark(frametpl.materialize, *args)


def test_materialize_scapy(benchmark, record):
    def run():
        for k in range(BASELINE_N):
            inner = (Ether(dst="02:00:00:00:00:02") / IP(src="10.244.0.5", dst="10.244.1.7", flags="DF", id=k)
                     / TCP(sport=40000, dport=8080, flags="PA", seq=1000 + k, ack=2000 + k) / PAYLOAD)
            if k % 2:
                bytes(Ether(dst="02:00:00:00:00:04") / IP(src="192.168.0.11", dst="192.168.0.12", flags="DF", id=k)
                      / UDP(sport=50000, dport=8472, chksum=0) / VXLAN(vni=1, flags=0x08) / inner)
            else:
                bytes(inner)
    record("frames from capture templates (half VXLAN)", "baseline", BASELINE_N, "frames")
    benchmark.pedantic(run, rounds=3, iterations=1)
