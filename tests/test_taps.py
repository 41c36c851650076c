"""emu.capture.taps with template records: files written in chunks hold the
same bytes as if every frame had been recorded in full."""
from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import PcapNgReader, rdpcap

from emu.capture import taps as taps_mod
from emu.capture.taps import Taps
from kernels import frametpl
from tests.reference import frametpl as ref

PORTS = [SimpleNamespace(id=0, name="node-1/eth0"), SimpleNamespace(id=2, name="node-2/cni0")]
ENGINE = SimpleNamespace(notes=["bridge forward", "vxlan encap"])


def _templates():
    inner = (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src="10.244.1.2", dst="10.96.0.10", id=7)
             / TCP(sport=40000, dport=80, flags="PA", seq=1000, ack=2000) / (b"p" * 32))
    ack = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.96.0.10", dst="10.244.1.2")
           / TCP(sport=80, dport=40000, flags="A"))
    vxlan = (Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04") / IP(src="192.168.0.1", dst="192.168.0.2")
             / UDP(sport=5555, dport=8472, chksum=0) / VXLAN(vni=1, flags=0x08) / inner)
    return [(bytes(inner), 14), (bytes(ack), 14), (bytes(vxlan), 64)]


def _taps(compact: bool):
    """Ten records on two ports, times out of order: plain frames, and the
    same template frames either as template records (compact) or in full."""
    rng = np.random.default_rng(3)
    t = Taps(PORTS)
    tpls = _templates()
    if compact:
        frames = np.frombuffer(b"".join(f for f, _ in tpls), np.uint8)
        lengths = np.array([len(f) for f, _ in tpls], np.int64)
        ids = t.add_templates(frames, np.cumsum(lengths) - lengths, lengths, [0, 2, 2], [0, 1, 1],
                              [i for _, i in tpls])
        assert list(ids) == [0, 1, 2]
    for i in range(10):
        time, port, pkt = int(rng.integers(1, 4)), PORTS[i % 2].id, 100 + i
        if i % 3 == 0:   # a plain frame (the first three at time 0: a chunk of them alone)
            time = 0 if i < 9 else time
            frame = np.frombuffer(bytes(Ether(dst="02:00:00:00:00:09") / IP(dst="10.0.0.9", id=i)
                                        / UDP(dport=53)), np.uint8)
            t.record_frames(frame, [0], [len(frame)], [port], [time], [pkt], [0])
            continue
        k = i % 3
        f = (int(rng.integers(0, 2**16)), int(rng.integers(0, 2**16)), int(rng.integers(0, 2**32)),
             int(rng.integers(0, 2**32)), int(rng.integers(0, 2**63)), int(rng.integers(0, 2**32)),
             int(rng.integers(0, 2**16)))
        frame, inner = tpls[k]
        if not compact:
            full = np.frombuffer(ref.frame(frame, inner, *f), np.uint8)
            t.record_frames(full, [0], [len(full)], [port], [time], [pkt], [1])
            continue
        # a template record, as the replay kernel writes it
        t._reserve(1, frametpl.FIELD_BYTES)
        c, r = t._cols, t.count
        c["start"][r], c["length"][r], c["port"][r], c["time"][r], c["pkt_id"][r], c["note"][r], c["tpl"][r] = \
            t._used, len(frame), port, time, pkt, 1, k
        frametpl.put_fields(t.buf, t._used, f[0], f[1], f[2], f[3], np.uint64(f[4]), f[5], f[6])
        t._used += frametpl.FIELD_BYTES
        t.count += 1
    return t


def test_records_and_frames():
    compact, full = _taps(True), _taps(False)
    rc, rf = compact.records(), full.records()
    assert (rc["tpl"] >= 0).sum() == 6 and (rf["tpl"] == -1).all()
    for k in ("length", "port", "time", "pkt_id", "note"):
        assert (rc[k] == rf[k]).all()
    (bc, sc), (bf, sf) = compact.frames(), full.frames(rf)
    assert bc.tobytes() == bf.tobytes() and (sc == sf).all()
    assert compact._used < full._used


def test_pcapng_in_chunks(tmp_path, monkeypatch):
    full = tmp_path / "full.pcapng"
    assert _taps(False).write_pcapng(full, ENGINE) == 10
    monkeypatch.setattr(taps_mod, "CHUNK_RECORDS", 3)
    t = _taps(True)
    plain = [(c["tpl"] < 0).all() for c, _, _ in t._chunks(t.records())]
    assert len(plain) == 4 and any(plain) and not all(plain)   # chunks of plain records alone, and mixed
    compact = tmp_path / "compact.pcapng"
    assert t.write_pcapng(compact, ENGINE) == 10
    assert compact.read_bytes() == full.read_bytes()
    buf, starts = _taps(False).frames()
    r = _taps(False).records()
    want = [buf[s:s + n].tobytes() for s, n in zip(starts, r["length"])]
    with PcapNgReader(str(compact)) as reader:
        assert [bytes(p) for p in reader] == want
    assert [bytes(p) for p in rdpcap(str(compact))] == want


def test_pcaps_in_chunks(tmp_path, monkeypatch):
    full = _taps(False).write_pcaps(tmp_path / "full")
    monkeypatch.setattr(taps_mod, "CHUNK_RECORDS", 2)
    compact = _taps(True).write_pcaps(tmp_path / "compact")
    assert [p.name for p in compact] == ["node-1_eth0.pcap", "node-2_cni0.pcap"]
    for a, b in zip(compact, full):
        assert a.read_bytes() == b.read_bytes()
    assert sum(len(rdpcap(str(p))) for p in compact) == 10


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_it(tmp_path, monkeypatch):
    monkeypatch.setattr(taps_mod, "CHUNK_RECORDS", 4)
    path = tmp_path / "c.pcapng"
    t = _taps(True)
    t.write_pcapng(path, ENGINE)
    def tshark(*args):
        return subprocess.run(["tshark", "-r", str(path), "-d", "udp.port==8472,vxlan", *args],
                              capture_output=True, text=True, timeout=60, check=True).stdout

    assert [int(x) for x in tshark("-T", "fields", "-e", "frame.len").split()] == t.records()["length"].tolist()
    bad = tshark("-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                 "-Y", 'ip.checksum.status == "Bad" || tcp.checksum.status == "Bad"')
    assert bad == ""
