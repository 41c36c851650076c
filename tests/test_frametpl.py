"""kernels.frametpl against the plain-Python reference (checksums from scratch)
and Scapy; the wrapper's validation."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from kernels import frametpl
from tests.reference import frametpl as ref
from tests.util import run_with_boundscheck

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
MAC = "02:00:00:00:00:01"
ips = u32.map(lambda v: ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0)))


@st.composite
def templates(draw) -> tuple[bytes, int]:
    """A template frame and its inner IPv4 offset: Ether/IPv4/TCP, maybe in VXLAN."""
    inner = (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
             / IP(src=draw(ips), dst=draw(ips), id=draw(u16), ttl=draw(st.integers(1, 255)),
                  flags=draw(st.sampled_from([0, "DF"])))
             / TCP(sport=draw(u16), dport=draw(u16), seq=draw(u32), ack=draw(u32),
                   flags=draw(st.sampled_from(["A", "PA"])), window=draw(u16))
             / draw(st.binary(max_size=64)))
    if not draw(st.booleans()):
        return bytes(inner), 14
    outer = (Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
             / IP(src=draw(ips), dst=draw(ips), id=draw(u16), ttl=64)
             / UDP(sport=draw(u16), dport=8472, chksum=0) / VXLAN(vni=draw(st.integers(0, 2**24 - 1)), flags=0x08))
    return bytes(outer / inner), 64


fields = st.tuples(u16, u16, u32, u32, u64, u32, u16)   # ip_id, outer_id, seq, ack, tag, ports, outer_sport


@st.composite
def batches(draw):
    """Templates and records (plain frames and template records, mixed), laid
    out as the taps hold them, with gaps."""
    tpls = draw(st.lists(templates(), min_size=1, max_size=4))
    tpl_buf, tpl = bytearray(draw(st.binary(max_size=8))), []
    for frame, inner in tpls:
        tpl.append([len(tpl_buf), len(frame), 0, -1, inner])
        tpl_buf += frame + draw(st.binary(max_size=3))
    buf, starts, lengths, ids = bytearray(), [], [], []
    for _ in range(draw(st.integers(0, 8))):
        buf += draw(st.binary(max_size=3))
        starts.append(len(buf))
        if draw(st.booleans()):
            frame = draw(st.binary(max_size=100))
            buf += frame
            lengths.append(len(frame))
            ids.append(-1)
        else:
            k = draw(st.integers(0, len(tpl) - 1))
            blob = np.zeros(frametpl.FIELD_BYTES, np.uint8)
            ip_id, outer_id, seq, ack, tag, ports, osport = draw(fields)
            frametpl.put_fields(blob, 0, ip_id, outer_id, seq, ack, np.uint64(tag), ports, osport)
            assert blob.tobytes() == struct.pack("!HHIIQIH", ip_id, outer_id, seq, ack, tag, ports, osport)
            buf += blob.tobytes()
            lengths.append(tpl[k][1])
            ids.append(k)
    return (np.frombuffer(bytes(buf), np.uint8).copy(), np.array(starts, np.int64), np.array(lengths, np.int64),
            np.array(ids, np.int32), np.frombuffer(bytes(tpl_buf), np.uint8).copy(),
            np.array(tpl, np.int64).reshape(-1, frametpl.TPL))


def _run(buf, starts, lengths, ids, tpl_buf, tpl, gap=0):
    """materialize into a fresh buffer, frames `gap` bytes apart; the frames."""
    out_starts = (np.cumsum(lengths + gap) - lengths - gap).astype(np.int64)
    out = np.full(int(lengths.sum()) + gap * len(lengths) + 1, 0xAA, np.uint8)
    frametpl.materialize(buf, starts, lengths, ids, tpl_buf, tpl, out, out_starts)
    assert out[-1] == 0xAA    # nothing written past the last frame
    return [out[s:s + n].tobytes() for s, n in zip(out_starts, lengths)]


@settings(max_examples=200)
@given(batches(), st.integers(0, 5))
def test_materialize_equals_reference(batch, gap):
    assert _run(*batch, gap=gap) == ref.materialize(*batch)


@settings(max_examples=40)
@given(templates(), fields)
def test_materialized_frames_parse_with_good_checksums(template, f):
    frame, inner = template
    ip_id, outer_id, seq, ack, tag, ports, osport = f
    buf = np.zeros(frametpl.FIELD_BYTES, np.uint8)
    frametpl.put_fields(buf, 0, ip_id, outer_id, seq, ack, np.uint64(tag), ports, osport)
    tpl = np.array([[0, len(frame), 0, -1, inner]], np.int64)
    (got,) = _run(buf, np.zeros(1, np.int64), np.array([len(frame)], np.int64), np.zeros(1, np.int32),
                  np.frombuffer(frame, np.uint8).copy(), tpl)
    p = Ether(got)
    layers = [p[IP], p[TCP]] if inner == 14 else [p[IP], p[VXLAN][IP], p[VXLAN][TCP]]
    tcp = layers[-1]
    assert (layers[-2].id, tcp.seq, tcp.ack, tcp.sport << 16 | tcp.dport) == (ip_id, seq, ack, ports)
    payload = bytes(tcp.payload)
    if len(payload) >= 8:
        assert payload[:8] == tag.to_bytes(8, "big")
    if inner > 14:
        assert p[IP].id == outer_id and p[UDP].chksum == 0 and p[UDP].sport == osport
    for layer in layers:
        del layer.chksum
    assert bytes(p) == got    # Scapy computes the same checksums


def _tcp_template():
    frame = bytes(Ether(dst=MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="PA") / (b"x" * 10))
    return np.frombuffer(frame, np.uint8).copy(), np.array([[0, len(frame), 0, -1, 14]], np.int64)


def _args(**changes):
    tpl_buf, tpl = _tcp_template()
    n = int(tpl[0, 1])
    args = dict(buf=np.zeros(100, np.uint8), starts=np.array([0, 40], np.int64), lengths=np.array([n, 30], np.int64),
                tpl_ids=np.array([0, -1], np.int32), tpl_buf=tpl_buf, tpl=tpl, out=np.zeros(200, np.uint8),
                out_starts=np.array([0, n], np.int64))
    args.update(changes)
    return args


def _bad_template(**at):
    """The TCP template with bytes changed (offset: value)."""
    tpl_buf, _ = _tcp_template()
    for k, v in at.items():
        tpl_buf[int(k[1:])] = v
    return tpl_buf


@pytest.mark.parametrize("changes, message", [
    (dict(starts=np.array([0, 40], np.int32)), "starts: expected dtype int64"),
    (dict(tpl_ids=np.array([0, -1], np.int64)), "tpl_ids: expected dtype int32"),
    (dict(out=np.zeros(400, np.uint8)[::2]), "out: must be C-contiguous"),
    (dict(out_starts=np.zeros(3, np.int64)), "same length"),
    (dict(tpl=np.zeros((1, 4), np.int64)), "expected 5 columns"),
    (dict(tpl=np.array([[10, 64, 0, -1, 14]], np.int64)), "outside tpl_buf"),
    (dict(tpl=np.array([[0, 64, 0, -1, 20]], np.int64)), "inner IPv4 offset 20"),
    (dict(tpl=np.array([[0, 64, 0, -1, 64]], np.int64)), "leaves no IPv4"),
    (dict(tpl_buf=_bad_template(b14=0x46)), "no IPv4 \\(no options\\) / TCP"),
    (dict(tpl_buf=_bad_template(b23=17)), "no IPv4"),
    (dict(tpl_buf=_bad_template(b46=0x60)), "no IPv4"),
    (dict(tpl_buf=_bad_template(b16=1)), "no IPv4"),     # total length past the frame
    (dict(tpl_ids=np.array([1, -1], np.int32)), "tpl_ids: values must be in \\[-1, 0\\]"),
    (dict(starts=np.array([90, 40], np.int64)), "record 0: its fields blob \\[90, 116\\) lies outside buf"),
    (dict(starts=np.array([0, 80], np.int64)), "record 1: its frame \\[80, 110\\) lies outside buf"),
    (dict(lengths=np.array([70, 30], np.int64)), "record 0: length 70, but template 0 is 64 bytes"),
    (dict(out_starts=np.array([0, 190], np.int64)), "record 1: \\[190, 220\\) lies outside out"),
    (dict(lengths=np.array([64, -1], np.int64)), "lengths: values must be in"),
])
def test_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        frametpl.materialize(**_args(**changes))
    frametpl.materialize(**_args())   # the unchanged arguments are fine


def test_validation_vxlan_outer_header():
    frame = bytes(Ether(dst=MAC) / IP(dst="10.0.0.2") / UDP(dport=8472, chksum=0) / VXLAN()
                  / Ether(dst=MAC) / IP(dst="10.0.1.2") / TCP())
    tpl_buf = np.frombuffer(frame, np.uint8).copy()
    tpl = np.array([[0, len(frame), 0, -1, 64]], np.int64)
    one = dict(buf=np.zeros(frametpl.FIELD_BYTES, np.uint8), starts=np.zeros(1, np.int64),
               lengths=np.array([len(frame)], np.int64),
               tpl_ids=np.zeros(1, np.int32), out=np.zeros(len(frame), np.uint8), out_starts=np.zeros(1, np.int64))
    frametpl.materialize(tpl_buf=tpl_buf, tpl=tpl, **one)
    for at, value in ((14, 0x60), (41, 1)):   # no outer IPv4 header; an outer UDP checksum
        bad = tpl_buf.copy()
        bad[at] = value
        with pytest.raises(ValueError, match="outer IPv4 / UDP header"):
            frametpl.materialize(tpl_buf=bad, tpl=tpl, **one)


def test_fuzz_in_bounds():
    run_with_boundscheck("""
        import numpy as np
        from kernels import frametpl
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether
        rng = np.random.default_rng(7)
        frame = bytes(Ether(dst="02:00:00:00:00:01") / IP(dst="10.0.0.2") / TCP() / (b"x" * 8))
        tpl_buf = np.frombuffer(frame * 2, np.uint8).copy()
        tpl = np.array([[0, len(frame), 0, -1, 14], [len(frame), len(frame), 0, -1, 14]], np.int64)
        rejected = 0
        for _ in range(300):
            n = int(rng.integers(1, 4))
            buf = rng.integers(0, 256, int(rng.integers(0, 120))).astype(np.uint8)
            out = np.zeros(int(rng.integers(0, 200)), np.uint8)
            ids = rng.integers(-1, 3 if rng.random() < 0.2 else 2, n).astype(np.int32)
            lengths = np.where(ids >= 0, len(frame), rng.integers(-1, 40, n)).astype(np.int64)
            try:  # records the wrapper refuses are fine; touching memory past them is not
                frametpl.materialize(buf, rng.integers(-1, len(buf) + 1, n).astype(np.int64), lengths, ids,
                                     tpl_buf, tpl, out, rng.integers(-1, len(out) + 1, n).astype(np.int64))
            except ValueError:
                rejected += 1
        assert 0 < rejected < 290, rejected
        print("ok")
    """)
