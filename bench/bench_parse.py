"""kernels.parse against Scapy's dissection (`Ether(raw)` and reading the same
fields), the tool a Python user would reach for.

Two workloads: 64-byte TCP frames (the target: >= 50 M frames/s on one
thread) and a shuffled mix of ARP, UDP, VXLAN and TCP frames of varied sizes.
A batch of 64 Ki frames keeps the frames and the columns in cache, as the
data plane's batches would be. The data plane mostly parses far smaller
batches, where the fixed cost of a call (validation, allocation, numba's
dispatch) weighs as much as the rate: a third group parses 1 Ki-frame batches.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from bench.conftest import size
from kernels.parse import parse

BATCH = size(65536, 4096)
SMALL_BATCH = size(1024, 256)
SMALL = "parse 64B TCP, 1 Ki batches"
SCAPY_FRAMES = size(2000, 50)


def tcp_frames(count: int, rng: random.Random) -> list[bytes]:
    """64-byte Ether/IPv4/TCP frames with 10 bytes of payload, varied fields."""
    return [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src=f"10.244.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                       dst=f"10.96.0.{rng.randrange(1, 255)}", id=rng.randrange(65536))
                  / TCP(sport=rng.randrange(1024, 65536), dport=rng.choice([80, 443, 8080]),
                        seq=rng.randrange(2**32), flags="PA")
                  / (b"x" * 10))
            for _ in range(count)]


def mixed_frames(count: int, rng: random.Random) -> list[bytes]:
    """ARP, DNS-like UDP, VXLAN with an inner TCP frame, and TCP, shuffled."""
    def one() -> bytes:
        kind = rng.randrange(4)
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        a, b = f"10.244.1.{rng.randrange(1, 255)}", f"10.244.2.{rng.randrange(1, 255)}"
        if kind == 0:
            return bytes(eth / ARP(op=rng.choice([1, 2]), psrc=a, pdst=b))
        if kind == 1:
            return bytes(eth / IP(src=a, dst="10.96.0.10") / UDP(sport=rng.randrange(1024, 65536), dport=53)
                         / (b"q" * rng.randrange(20, 60)))
        if kind == 2:
            inner = Ether() / IP(src=a, dst=b) / TCP(dport=80) / (b"p" * rng.randrange(0, 100))
            return bytes(eth / IP(src="192.168.0.1", dst="192.168.0.2")
                         / UDP(sport=rng.randrange(1024, 65536), dport=8472) / VXLAN(vni=1) / inner)
        return bytes(eth / IP(src=a, dst=b) / TCP(sport=rng.randrange(1024, 65536), dport=443)
                     / (b"d" * rng.randrange(0, 200)))
    return [one() for _ in range(count)]


def batch(distinct: list[bytes], n: int):
    """n frames (the distinct ones repeated) back to back in one buffer."""
    frames = [distinct[k % len(distinct)] for k in range(n)]
    lengths = np.array([len(f) for f in frames], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.frombuffer(b"".join(frames), np.uint8).copy(), starts, lengths


def scapy_parse(frames: list[bytes]) -> list[tuple]:
    """The baseline: dissect each frame and read the fields parse() returns."""
    rows = []
    for raw in frames:
        p = Ether(raw)
        fields = [p.dst, p.src, p.type]
        if ARP in p:
            a = p[ARP]
            fields += [a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst]
        elif IP in p:
            ip = p[IP]
            fields += [ip.src, ip.dst, ip.proto, ip.tos, ip.ttl, ip.len, ip.id, ip.frag, int(ip.flags), ip.ihl]
            l4 = ip.payload
            if isinstance(l4, TCP):
                fields += [l4.sport, l4.dport, l4.seq, l4.ack, int(l4.flags), l4.dataofs]
            elif isinstance(l4, UDP):
                fields += [l4.sport, l4.dport, l4.len]
                if isinstance(l4.payload, VXLAN):
                    fields += [l4.payload.vni]
        rows.append(tuple(fields))
    return rows


WORKLOADS = {
    "parse 64B TCP": (tcp_frames, 50e6),
    "parse mix ARP/UDP/VXLAN/TCP": (mixed_frames, None),
}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_emu_parse(benchmark, record, workload):
    make, target = WORKLOADS[workload]
    buf, starts, lengths = batch(make(512, random.Random(1)), BATCH)
    h = parse(buf, starts, lengths)  # compile outside the timed call
    assert not h.drop.any()
    record(workload, "emu", BATCH, "frames", target_rate=target,
           mean_frame_bytes=round(float(lengths.mean()), 1))
    benchmark(parse, buf, starts, lengths)


def test_emu_parse_into_reused_columns(benchmark, record):
    """The data plane's loop: the same column buffers for every batch, which
    spares the page faults of fresh allocations."""
    workload = "parse 64B TCP"
    make, target = WORKLOADS[workload]
    buf, starts, lengths = batch(make(512, random.Random(1)), BATCH)
    out = parse(buf, starts, lengths)
    record(workload, "emu", BATCH, "frames", target_rate=target, out="reused")
    benchmark(parse, buf, starts, lengths, out=out)


@pytest.mark.parametrize("columns", ["new", "reused"])
def test_emu_parse_small_batches(benchmark, record, columns):
    """The data plane's common case: a small batch (new columns each call,
    as the data plane does, or reused ones)."""
    make, _ = WORKLOADS["parse 64B TCP"]
    buf, starts, lengths = batch(make(512, random.Random(1)), SMALL_BATCH)
    out = parse(buf, starts, lengths)
    record(SMALL, "emu", SMALL_BATCH, "frames", out=columns)
    benchmark(parse, buf, starts, lengths, out=out if columns == "reused" else None)


@pytest.mark.parametrize("workload", [*WORKLOADS, SMALL])
def test_scapy_parse(benchmark, record, workload):
    make, _ = WORKLOADS.get(workload, WORKLOADS["parse 64B TCP"])
    frames = make(SCAPY_FRAMES, random.Random(1))
    record(workload, "baseline", len(frames), "frames")
    benchmark.pedantic(scapy_parse, args=(frames,), rounds=3, iterations=1, warmup_rounds=0)
