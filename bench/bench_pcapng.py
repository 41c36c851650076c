"""Bulk pcapng capture: PcapngWriter.write_batch against Scapy's PcapNgWriter,
both writing the same frames to a new file in a temp dir, every frame with an
interface name, a ns timestamp, a packet id and a comment ("pkt N: <one of four
decisions>"). Timed: open the file, describe 4 interfaces, write, close.

Frames sit in a packet-pool layout (2048-byte slots, 128 bytes of headroom),
as the engine hands them over. Sizes: all 64 bytes; simple IMIX (7:4:1 of 64,
576 and 1514 bytes, mean 355); uniform in 64..1514 (mean 789). Scapy gets its
cheapest path that still writes comments and interface names
(RawPcapNgWriter._write_packet on raw bytes: no Packet objects).
"""
from __future__ import annotations

import numpy as np
import pytest

from bench.conftest import size
from emu.capture import PcapngWriter

FRAMES = size(200_000, 2_000)
BASELINE_FRAMES = size(50_000, 500)
SLOT, HEADROOM = 2048, 128
INTERFACES = ["node-1/cni0", "node-1/flannel.1", "node-2/cni0", "node-2/eth0"]
COMMENTS = ["bridge forward cni0 -> veth1a2b", "drop: BAD_IP_CHECKSUM",
            "DNAT 10.96.0.10:53 -> 10.244.1.3:53 via KUBE-SEP-ABCDEF",
            "VXLAN encap VNI 1 -> 192.168.0.12"]
TARGET = 1.5e6  # frames/s


def frame_sizes(mix: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if mix == "64B":
        return np.full(n, 64, np.int64)
    if mix == "IMIX":
        return rng.choice(np.array([64] * 7 + [576] * 4 + [1514], np.int64), n)
    return rng.integers(64, 1515, n).astype(np.int64)


class Run:
    """One batch as the engine would hand it to the writer."""

    def __init__(self, mix: str, n: int):
        rng = np.random.default_rng(17)
        self.buf = rng.integers(0, 256, n * SLOT, dtype=np.uint8)
        self.starts = np.arange(n, dtype=np.int64) * SLOT + HEADROOM
        self.lengths = frame_sizes(mix, n, rng)
        self.if_ids = rng.integers(0, len(INTERFACES), n).astype(np.int32)
        self.ts_ns = np.cumsum(rng.integers(1, 5000, n)).astype(np.int64)
        self.packet_ids = np.arange(n, dtype=np.int64) * 7
        self.comment_ids = rng.integers(0, len(COMMENTS), n).astype(np.int32)

    def write(self, path) -> None:
        with PcapngWriter(path) as w:
            for name in INTERFACES:
                w.add_interface(name)
            w.write_batch(self.buf, self.starts, self.lengths, self.if_ids, self.ts_ns,
                          self.packet_ids, self.comment_ids, COMMENTS)

    def scapy_write(self, path) -> None:
        from scapy.utils import PcapNgWriter

        names = [name.encode() for name in INTERFACES]
        w = PcapNgWriter(str(path))
        w.linktype = 1
        w.write_header(None)
        for i in range(len(self.starts)):
            s = int(self.starts[i])
            frame = self.buf[s:s + int(self.lengths[i])].tobytes()
            pid = int(self.packet_ids[i])
            comment = f"pkt {pid}: {COMMENTS[self.comment_ids[i]]}".encode()
            w._write_packet(frame, linktype=1, sec=int(self.ts_ns[i]) / 1e9,
                            ifname=names[self.if_ids[i]], comments=[comment])
        w.close()


MIXES = ["64B", "IMIX", "uniform 64..1514"]
_RUNS: dict[tuple[str, int], Run] = {}


def run_for(mix: str, n: int) -> Run:
    if (mix, n) not in _RUNS:
        _RUNS.clear()  # one pool-sized buffer at a time
        _RUNS[mix, n] = Run(mix, n)
    return _RUNS[mix, n]


def _fresh(path):
    """pedantic setup: start each round on a new file, as a run does."""
    def setup():
        path.unlink(missing_ok=True)
    return setup


@pytest.mark.parametrize("mix", MIXES)
def test_pcapng_emu(benchmark, record, tmp_path, mix):
    run = run_for(mix, FRAMES)
    path = tmp_path / "emu.pcapng"
    run.write(path)  # compile outside the timed calls
    record(f"pcapng write, {mix} frames", "emu", FRAMES, "frames", target_rate=TARGET,
           mean_frame=f"{run.lengths.mean():.0f}B", file=f"{path.stat().st_size / 1e6:.0f}MB")
    benchmark.pedantic(run.write, args=(path,), setup=_fresh(path), rounds=7, iterations=1)


@pytest.mark.parametrize("mix", MIXES)
def test_pcapng_baseline_scapy(benchmark, record, tmp_path, mix):
    run = run_for(mix, BASELINE_FRAMES)
    path = tmp_path / "scapy.pcapng"
    record(f"pcapng write, {mix} frames", "baseline", BASELINE_FRAMES, "frames")
    benchmark.pedantic(run.scapy_write, args=(path,), setup=_fresh(path), rounds=3, iterations=1)


def test_pcapng_layout_only(benchmark, record):
    """The kernel alone, IMIX, chunks laid out and dropped: what the file
    write adds on this machine is the difference to the group above."""
    from kernels import pcapng as kernel

    run = run_for("IMIX", FRAMES)
    encoded = [c.encode() for c in COMMENTS]
    utf8 = np.frombuffer(b"".join(encoded), np.uint8)
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    snaplens = np.full(len(INTERFACES), kernel.MAX_SNAPLEN, np.int64)
    scratch = np.empty(kernel.CHUNK_BYTES, np.uint8)

    def layout():
        for _ in kernel.epb_chunks(run.buf, run.starts, run.lengths, run.if_ids, run.ts_ns, snaplens,
                                   run.packet_ids, run.comment_ids, utf8, offsets, scratch):
            pass

    layout()
    record("pcapng EPB layout only, IMIX (no file)", "emu", FRAMES, "frames")
    benchmark.pedantic(layout, rounds=7, iterations=1)
