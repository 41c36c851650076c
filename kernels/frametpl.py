"""Frames from templates: capture records kept compact, materialised when read.

Full capture of bulk traffic writes millions of frames that differ from a
few template frames (the flow cache's: one per path, direction, capture
point and kind of packet) only in a handful of per-flow and per-packet
fields. Copying every frame into the
capture buffer at run time makes first-touching that memory the cost of the
run. So a capture record can instead be a template id plus a FIELD_BYTES
blob of those fields; the frame's bytes are made from them only when the
frames are read or written out (emu.capture.taps), a chunk at a time.

Templates: rows of an int64 [n, TPL] array, columns

    0 start   where the frame starts in tpl_buf (uint8)
    1 length  the frame's length
    2 port    the engine port it is captured on
    3 note    its capture note
    4 inner   offset of the TCP packet's IPv4 header: 14, or 64 under VXLAN
              (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14)

A template is an IPv4 (no options) / TCP (no options) frame, possibly VXLAN
encapsulated, with correct checksums (the outer UDP checksum 0, as Linux
sends it: a template must have it so, since the outer source port changes).

The fields blob, big-endian:

    offset 0  ip_id     u16  the TCP packet's IPv4 id
           2  outer_id  u16  the outer IPv4 id (VXLAN; unused otherwise)
           4  seq       u32
           8  ack       u32
          12  tag       u64  the first 8 payload bytes (only if the payload has 8)
          20  ports     u32  the TCP source and destination ports
          24  outer_sport u16  the outer UDP source port (VXLAN; unused otherwise)

`emit` writes a template with the fields set, updating the checksums
incrementally (RFC 1624: equal to a recomputation, see kernels.checksum);
`materialize` turns a batch of records, plain frames and template records
mixed, into frames.

References: tests/reference/frametpl.py.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels._jit import jit
from kernels.checksum import csum_replace16, csum_replace32
from kernels.rewrite import _get16, _get32, _put16, _put32

TPL = 5            # template columns: start, length, port, note, inner IPv4 offset
FIELD_BYTES = 26   # the fields blob: ip_id u16, outer_id u16, seq u32, ack u32, tag u64, ports u32, outer_sport u16
VXLAN_INNER = 64   # inner IPv4 offset of a VXLAN packet
_B8 = np.uint64(8)
_BYTE = np.uint64(0xFF)


@jit
def put_fields(buf, pos, ip_id, outer_id, seq, ack, tag, ports, outer_sport):
    """The fields blob of one packet at buf[pos:pos + FIELD_BYTES] (tag: uint64)."""
    _put16(buf, pos, np.int64(ip_id) & 0xFFFF)
    _put16(buf, pos + 2, np.int64(outer_id) & 0xFFFF)
    _put32(buf, pos + 4, np.int64(seq) & 0xFFFFFFFF)
    _put32(buf, pos + 8, np.int64(ack) & 0xFFFFFFFF)
    t = np.uint64(tag)
    for b in range(8):
        buf[pos + 19 - b] = t & _BYTE
        t = t >> _B8
    _put32(buf, pos + 20, np.int64(ports) & 0xFFFFFFFF)
    _put16(buf, pos + 24, np.int64(outer_sport) & 0xFFFF)


@jit
def _get64(buf, p):
    t = np.uint64(0)
    for b in range(8):
        t = (t << _B8) | np.uint64(buf[p + b])
    return t


@jit
def _set16(buf, p, new, check):
    """Write the 16-bit word at p; the checksum covering it, updated."""
    check = csum_replace16(check, _get16(buf, p), new)
    _put16(buf, p, new)
    return check


@jit
def _set32(buf, p, new, check):
    check = csum_replace32(check, _get32(buf, p), new)
    _put32(buf, p, new)
    return check


@jit
def emit(tpl_buf, tpl, k, buf, pos, ip_id, seq, ack, tag, outer_id, ports, outer_sport):
    """Template k at buf[pos:] with this packet's fields, checksums updated
    for what changed; its length."""
    start, length, inner = tpl[k, 0], tpl[k, 1], tpl[k, 4]
    a, z = tpl_buf[start:start + length], buf[pos:pos + length]
    for b in range(length):   # a byte copy, as rewrite._copy_ranges does it
        z[b] = a[b]
    ip = pos + inner
    total = _get16(buf, ip + 2)
    _put16(buf, ip + 10, _set16(buf, ip + 4, ip_id, _get16(buf, ip + 10)))
    l4 = ip + 20
    c = _set32(buf, l4, ports, _get16(buf, l4 + 16))
    c = _set32(buf, l4 + 4, seq, c)
    c = _set32(buf, l4 + 8, ack, c)
    if total - 40 >= 8:
        c = _set32(buf, l4 + 20, np.int64(tag >> np.uint64(32)), c)
        c = _set32(buf, l4 + 24, np.int64(tag & np.uint64(0xFFFFFFFF)), c)
    _put16(buf, l4 + 16, c)
    if inner > 14:   # the outer IPv4 header of a VXLAN packet
        _put16(buf, pos + 24, _set16(buf, pos + 18, outer_id, _get16(buf, pos + 24)))
        _put16(buf, pos + 34, outer_sport)   # no UDP checksum to update (check_templates)
    return length


@jit
def _materialize(buf, starts, lengths, tpl_ids, tpl_buf, tpl, out, out_starts):
    for i in range(len(starts)):
        p = starts[i]
        q = out_starts[i]
        k = tpl_ids[i]
        if k < 0:
            a, z = buf[p:p + lengths[i]], out[q:q + lengths[i]]
            for b in range(lengths[i]):   # a byte copy, as rewrite._copy_ranges does it
                z[b] = a[b]
        else:
            emit(tpl_buf, tpl, k, out, q, _get16(buf, p), _get32(buf, p + 4), _get32(buf, p + 8),
                 _get64(buf, p + 12), _get16(buf, p + 2), _get32(buf, p + 20), _get16(buf, p + 24))


def _first(bad: np.ndarray) -> int:
    return int(np.nonzero(bad)[0][0])


def check_templates(tpl_buf, tpl, which=None) -> tuple[np.ndarray, np.ndarray]:
    """tpl_buf and tpl checked: every template (or those numbered `which`)
    inside tpl_buf, with the IPv4 (no options) / TCP (no options) headers
    `emit` writes into where its `inner` column says, and the TCP packet
    inside the frame."""
    tpl_buf = _check.array(tpl_buf, "tpl_buf", np.uint8)
    tpl = _check.array(tpl, "tpl", np.int64, ndim=2)
    if tpl.shape[1] != TPL:
        raise ValueError(f"tpl: expected {TPL} columns, got {tpl.shape[1]}")
    number = np.arange(len(tpl)) if which is None else which
    if not len(number):
        return tpl_buf, tpl
    start, length, inner = tpl[number, 0], tpl[number, 1], tpl[number, 4]
    bad = (start < 0) | (length < 0) | (start > len(tpl_buf) - length)
    if bad.any():
        k = _first(bad)
        raise ValueError(f"tpl: template {number[k]} [{start[k]}, {start[k] + length[k]}) lies outside "
                         f"tpl_buf ({len(tpl_buf)} bytes)")
    bad = ((inner != 14) & (inner != VXLAN_INNER)) | (length < inner + 40)
    if bad.any():
        k = _first(bad)
        raise ValueError(f"tpl: template {number[k]}: inner IPv4 offset {inner[k]} (14, or {VXLAN_INNER} under "
                         f"VXLAN) leaves no IPv4 + TCP header in its {length[k]} bytes")

    def b(at):   # the byte at each template's offset `at` (inside it: checked above)
        return tpl_buf[at].astype(np.int64)

    ip = start + inner
    total = b(ip + 2) << 8 | b(ip + 3)
    bad = (b(ip) != 0x45) | (b(ip + 9) != 6) | (b(ip + 32) >> 4 != 5) | (total < 40) \
        | (total > length - inner) \
        | ((inner > 14) & ((b(start + 14) != 0x45) | (b(start + 23) != 17)
                            | (b(start + 40) != 0) | (b(start + 41) != 0)))
    if bad.any():
        k = _first(bad)
        raise ValueError(f"tpl: template {number[k]} has no IPv4 (no options) / TCP (no options) packet at "
                         f"offset {inner[k]} that fits its {length[k]} bytes"
                         + (" (or no outer IPv4 / UDP header without a checksum at 14)" if inner[k] > 14 else ""))
    return tpl_buf, tpl


def materialize(buf, starts, lengths, tpl_ids, tpl_buf, tpl, out, out_starts) -> None:
    """Frames of records into out: record i is a plain frame
    buf[starts[i]:starts[i] + lengths[i]] (tpl_ids[i] < 0) or template
    tpl_ids[i] with the fields blob at buf[starts[i]:starts[i] + FIELD_BYTES]
    (its length must be lengths[i]); it goes to out[out_starts[i]:].

    buf, tpl_buf, out uint8[:] (out C-contiguous: written in place);
    starts, lengths, out_starts int64[n]; tpl_ids int32[n]; tpl int64[:, TPL].
    """
    buf = _check.array(buf, "buf", np.uint8)
    if isinstance(out, np.ndarray) and not out.flags.c_contiguous:
        raise ValueError("out: must be C-contiguous (written in place)")
    out = _check.array(out, "out", np.uint8)
    starts = _check.array(starts, "starts", np.int64)
    lengths = _check.array(lengths, "lengths", np.int64)
    tpl_ids = _check.array(tpl_ids, "tpl_ids", np.int32)
    out_starts = _check.array(out_starts, "out_starts", np.int64)
    _check.same_length(starts=starts, lengths=lengths, tpl_ids=tpl_ids, out_starts=out_starts)
    tpl = _check.array(tpl, "tpl", np.int64, ndim=2)
    _check.in_range(tpl_ids, "tpl_ids", -1, len(tpl) - 1)
    tpl_buf, tpl = check_templates(tpl_buf, tpl, np.unique(tpl_ids[tpl_ids >= 0]))   # the ones used
    _check.in_range(lengths, "lengths", 0, max(len(buf), len(out)))
    plain = tpl_ids < 0
    size = np.where(plain, lengths, FIELD_BYTES)   # what each record holds in buf
    bad = (starts < 0) | (starts > len(buf) - size)
    if bad.any():
        k = _first(bad)
        what = "frame" if plain[k] else "fields blob"
        raise ValueError(f"record {k}: its {what} [{starts[k]}, {starts[k] + size[k]}) lies outside "
                         f"buf ({len(buf)} bytes)")
    bad = ~plain & (tpl[np.maximum(tpl_ids, 0), 1] != lengths) if len(tpl) else np.zeros(len(plain), bool)
    if bad.any():
        k = _first(bad)
        raise ValueError(f"record {k}: length {lengths[k]}, but template {tpl_ids[k]} is "
                         f"{tpl[tpl_ids[k], 1]} bytes")
    bad = (out_starts < 0) | (out_starts > len(out) - lengths)
    if bad.any():
        k = _first(bad)
        raise ValueError(f"record {k}: [{out_starts[k]}, {out_starts[k] + lengths[k]}) lies outside "
                         f"out ({len(out)} bytes)")
    _materialize(buf, starts, lengths, tpl_ids, tpl_buf, tpl, out, out_starts)
