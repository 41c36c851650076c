"""Capture blocks for a batch of frames: pcapng Enhanced Packet Blocks and
classic pcap records, laid out by numba straight from the packet buffer.

`epb_chunks` turns a batch (frames as start/length slices of one uint8
buffer, plus per-frame columns) into pcapng Enhanced Packet Blocks
(draft-ietf-opsawg-pcapng section 4.3); `pcap_record_chunks` does the same
for classic pcap records (draft-ietf-opsawg-pcap section 5). Section and
interface blocks are few and written by the caller (emu.capture).

A batch is checked whole before anything is laid out: the wrapper reports the
first bad frame as a ValueError, so a bad batch writes nothing rather than
half a batch. The layout pass checks each frame again as it goes (a few
compares), because chunks are handed out lazily and the caller's arrays may
change in between: a changed frame stops the layout with a ValueError instead
of sending it out of bounds. The small tables (snaplens, comment offsets) are
copied instead.

Blocks are laid back to back into one scratch array (1 MiB by default) that
is handed out chunk by chunk: the caller writes each chunk to its file and
the next chunk reuses the array. Memory stays bounded whatever the batch
size, and the scratch stays in cache between the kernel writing it and the
file write reading it. A batch that fits in the scratch is one chunk.

One Enhanced Packet Block, little-endian like everything else here, so the
same batch gives the same bytes on any machine:

    u32 type = 6 | u32 total length | u32 interface id
    u32 timestamp high | u32 timestamp low   (units set by the IDB's if_tsresol)
    u32 captured length = min(length, snaplen of the interface) | u32 length
    captured bytes, zero-padded to 32 bits
    [opt_comment (1): "pkt <packet id>: <comment>", or "<comment>" without id]
    [epb_packetid (5): u64 packet id; tshark 4.0 shows it as frame.packet_id]
    [opt_endofopt (0), when any option was written]
    u32 total length

Comments come as one flat UTF-8 buffer with offsets (comment k is
utf8[offsets[k]:offsets[k + 1]]) and a comment id per frame (-1: none), so a
batch names its few decisions once, not one string per frame. The "pkt N: "
prefix is formatted here, so a frame's comment names its packet also in
viewers that do not show epb_packetid.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kernels import _check
from kernels._jit import jit

MAX_SNAPLEN = 262144           # Wireshark's largest Ethernet snaplen (WTAP_MAX_PACKET_SIZE_STANDARD)
MAX_LENGTH = 2**32 - 1         # the original length is a u32 in both formats
PACKET_ID_PREFIX = len("pkt 9223372036854775807: ")
MAX_COMMENT_BYTES = 2**16 - 1 - PACKET_ID_PREFIX  # an option's length is a u16
MAX_PCAP_TS_NS = 2**32 * 1_000_000_000 - 1       # classic pcap seconds are a u32
MAX_EPB_BYTES = 32 + MAX_SNAPLEN + (4 + 2**16) + 12 + 4  # the largest block
CHUNK_BYTES = 1 << 20          # default scratch: several blocks of any size

EPB_TYPE = 6
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
EPB_PACKETID = 5

# error codes of the checking passes, turned into messages by the wrappers
_OK = 0
_BAD_IF_ID = 1
_BAD_SLICE = 2
_BAD_TS = 3
_BAD_COMMENT_ID = 4
_BAD_PACKET_ID = 5
_BAD_LENGTH = 6


# --- little-endian stores and small helpers ---------------------------------

@jit
def _put_u16(out, o, v):
    out[o] = v & 0xFF
    out[o + 1] = (v >> 8) & 0xFF


@jit
def _put_u32(out, o, v):
    out[o] = v & 0xFF
    out[o + 1] = (v >> 8) & 0xFF
    out[o + 2] = (v >> 16) & 0xFF
    out[o + 3] = (v >> 24) & 0xFF


@jit
def _put_u64(out, o, v):
    _put_u32(out, o, v & 0xFFFFFFFF)
    _put_u32(out, o + 4, (v >> 32) & 0xFFFFFFFF)


@jit
def _pad4(n):
    return (n + 3) & ~3


@jit
def _zero_pad(out, p):
    """Zero bytes from p up to the next multiple of 4; the new position."""
    while p & 3:
        out[p] = 0
        p += 1
    return p


@jit
def _decimal_digits(v):
    """Digits of a non-negative int64 in base 10."""
    d = 1
    while v >= 10:
        v //= 10
        d += 1
    return d


@jit
def _check_slice(start, length, buf_len):
    if length < 0 or length > MAX_LENGTH:
        return _BAD_LENGTH
    if start < 0 or start > buf_len or length > buf_len - start:
        return _BAD_SLICE
    return _OK


def _scratch(scratch, least: int) -> np.ndarray:
    if scratch is None:
        return np.empty(max(CHUNK_BYTES, least), np.uint8)
    scratch = _check.array(scratch, "scratch", np.uint8)
    if len(scratch) < least:
        raise ValueError(f"scratch: needs at least {least} bytes, got {len(scratch)}")
    return scratch


def _slice_error(err: int, i: int, starts, lengths, buf_len: int) -> ValueError:
    if err == _BAD_LENGTH:
        return ValueError(f"lengths[{i}]: {lengths[i]} is not in [0, {MAX_LENGTH}]")
    return ValueError(f"frame {i}: buf[{starts[i]}:{starts[i]} + {lengths[i]}] is outside buf "
                      f"(length {buf_len})")


def _chunks(write, scratch, n, *args) -> Iterator[np.ndarray]:
    """Run a layout kernel `write(scratch, first, *args) -> (next, used, error)`
    until all n frames are laid out, handing out each filled prefix of scratch."""
    first = 0
    while first < n:
        first, used, err = write(scratch, first, *args)
        if err != _OK:
            raise ValueError(f"frame {first} changed after its batch was checked")
        yield scratch[:used]


# --- Enhanced Packet Blocks -------------------------------------------------

@jit
def _epb_error(start, length, buf_len, if_id, n_if, ts, packet_id, comment_id, n_comments):
    """What is wrong with one frame, or _OK. Scalars only, so the call inlines:
    passing a dozen arrays to a helper per frame cost more than the checks."""
    err = _check_slice(start, length, buf_len)
    if err != _OK:
        return err
    if if_id < 0 or if_id >= n_if:
        return _BAD_IF_ID
    if ts < 0:
        return _BAD_TS
    if packet_id < 0:
        return _BAD_PACKET_ID
    if comment_id < -1 or comment_id >= n_comments:
        return _BAD_COMMENT_ID
    return _OK


@jit
def _check_epbs(buf_len, starts, lengths, if_ids, ts_ns, n_if, packet_ids, has_packet_ids,
                comment_ids, has_comments, n_comments):
    """(error code, index of the first bad frame), or (_OK, -1)."""
    for i in range(starts.shape[0]):
        pid = packet_ids[i] if has_packet_ids else 0
        cid = comment_ids[i] if has_comments else -1
        err = _epb_error(starts[i], lengths[i], buf_len, if_ids[i], n_if, ts_ns[i], pid, cid,
                         n_comments)
        if err != _OK:
            return err, i
    return _OK, -1


@jit
def _write_epbs(out, first, buf, starts, lengths, if_ids, ts_ns, snaplens, packet_ids,
                has_packet_ids, comment_ids, has_comments, comment_utf8, comment_offsets):
    """Lay out the blocks of frames first, first + 1, ... while they fit in
    `out` (len(out) >= MAX_EPB_BYTES, so at least one does); return (the next
    frame, bytes used, _OK), or stop at a bad frame with its error."""
    o = 0
    for i in range(first, starts.shape[0]):
        ifid = if_ids[i]
        length = lengths[i]
        pid = packet_ids[i] if has_packet_ids else -1
        cid = comment_ids[i] if has_comments else -1
        err = _epb_error(starts[i], length, buf.shape[0], ifid, snaplens.shape[0], ts_ns[i],
                         pid if has_packet_ids else 0, cid, comment_offsets.shape[0] - 1)
        if err != _OK:
            return i, o, err
        cap = min(length, snaplens[ifid])
        digits = _decimal_digits(pid) if pid >= 0 else 0
        comment_len = 0
        size = 32 + _pad4(cap)
        if cid >= 0:
            comment_len = comment_offsets[cid + 1] - comment_offsets[cid]
            if pid >= 0:
                comment_len += 4 + digits + 2  # "pkt " digits ": "
            size += 4 + _pad4(comment_len)
        if pid >= 0:
            size += 12
        if cid >= 0 or pid >= 0:
            size += 4
        if o + size > out.shape[0]:
            return i, o, _OK

        ts = ts_ns[i]
        _put_u32(out, o, EPB_TYPE)
        _put_u32(out, o + 4, size)
        _put_u32(out, o + 8, ifid)
        _put_u32(out, o + 12, (ts >> 32) & 0xFFFFFFFF)
        _put_u32(out, o + 16, ts & 0xFFFFFFFF)
        _put_u32(out, o + 20, cap)
        _put_u32(out, o + 24, length)
        # Copies index views from 0: indices numba knows are non-negative (no
        # wraparound test), so LLVM vectorises the loop, ten times faster than
        # out[o + k] = buf[s + k]. Inline, not a helper: a call passing arrays
        # costs reference counting per frame.
        dst = out[o + 28:o + 28 + cap]
        src = buf[starts[i]:starts[i] + cap]
        for k in range(cap):
            dst[k] = src[k]
        p = _zero_pad(out, o + 28 + cap)

        if cid >= 0:
            _put_u16(out, p, OPT_COMMENT)
            _put_u16(out, p + 2, comment_len)
            p += 4
            if pid >= 0:
                out[p] = 112  # "pkt "
                out[p + 1] = 107
                out[p + 2] = 116
                out[p + 3] = 32
                p += 4
                v = pid
                for k in range(digits - 1, -1, -1):
                    out[p + k] = 48 + v % 10
                    v //= 10
                p += digits
                out[p] = 58  # ": "
                out[p + 1] = 32
                p += 2
            c0 = comment_offsets[cid]
            c1 = comment_offsets[cid + 1]
            dst = out[p:p + c1 - c0]
            src = comment_utf8[c0:c1]
            for k in range(c1 - c0):
                dst[k] = src[k]
            p = _zero_pad(out, p + c1 - c0)
        if pid >= 0:
            _put_u16(out, p, EPB_PACKETID)
            _put_u16(out, p + 2, 8)
            _put_u64(out, p + 4, pid)
            p += 12
        if cid >= 0 or pid >= 0:
            _put_u32(out, p, OPT_ENDOFOPT)  # code 0, length 0
            p += 4
        _put_u32(out, p, size)
        o = p + 4
    return starts.shape[0], o, _OK


def epb_chunks(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, if_ids: np.ndarray,
               ts_ns: np.ndarray, snaplens: np.ndarray, packet_ids: np.ndarray | None,
               comment_ids: np.ndarray | None, comment_utf8: np.ndarray,
               comment_offsets: np.ndarray, scratch: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Enhanced Packet Blocks of a batch, as consecutive chunks of whole blocks.

    buf uint8[:]: frame i is buf[starts[i]:starts[i] + lengths[i]].
    starts, lengths int64[n]; if_ids int32[n] (index into snaplens);
    ts_ns int64[n] >= 0, in the interface's if_tsresol units (emu: nanoseconds);
    snaplens int64[n_if] in [1, MAX_SNAPLEN]: frames are captured up to their
    interface's snaplen; packet_ids int64[n] >= 0 or None;
    comment_ids int32[n] in [-1, n_comments) (-1: no comment) or None;
    comment_utf8 uint8[:] with comment_offsets int64[n_comments + 1]: comment k
    is comment_utf8[offsets[k]:offsets[k + 1]], at most MAX_COMMENT_BYTES.
    scratch: uint8[>= MAX_EPB_BYTES] to lay the blocks in (None: a new one of
    CHUNK_BYTES).

    The whole batch is checked now (ValueError naming the first bad argument or
    frame); the iterator then yields views of `scratch`, each valid until the
    next one is asked for. Their concatenation is the batch's blocks.
    """
    buf = _check.array(buf, "buf", np.uint8)
    starts = _check.array(starts, "starts", np.int64)
    lengths = _check.array(lengths, "lengths", np.int64)
    if_ids = _check.array(if_ids, "if_ids", np.int32)
    ts_ns = _check.array(ts_ns, "ts_ns", np.int64)
    snaplens = _check.array(snaplens, "snaplens", np.int64).copy()  # copied: see the module docstring
    _check.in_range(snaplens, "snaplens", 1, MAX_SNAPLEN)
    columns = dict(starts=starts, lengths=lengths, if_ids=if_ids, ts_ns=ts_ns)
    has_packet_ids = packet_ids is not None
    if has_packet_ids:
        packet_ids = columns["packet_ids"] = _check.array(packet_ids, "packet_ids", np.int64)
    else:
        packet_ids = np.zeros(0, np.int64)
    has_comments = comment_ids is not None
    if has_comments:
        comment_ids = columns["comment_ids"] = _check.array(comment_ids, "comment_ids", np.int32)
    else:
        comment_ids = np.zeros(0, np.int32)
    n = _check.same_length(**columns)
    comment_utf8 = _check.array(comment_utf8, "comment_utf8", np.uint8)
    comment_offsets = _check.array(comment_offsets, "comment_offsets", np.int64).copy()
    _check_comment_table(comment_utf8, comment_offsets)
    scratch = _scratch(scratch, MAX_EPB_BYTES)

    n_comments = len(comment_offsets) - 1
    err, i = _check_epbs(len(buf), starts, lengths, if_ids, ts_ns, len(snaplens), packet_ids,
                         has_packet_ids, comment_ids, has_comments, n_comments)
    if err == _BAD_IF_ID:
        raise ValueError(f"if_ids[{i}]: {if_ids[i]} is not an interface (0..{len(snaplens) - 1})")
    if err == _BAD_TS:
        raise ValueError(f"ts_ns[{i}]: {ts_ns[i]} is negative")
    if err == _BAD_PACKET_ID:
        raise ValueError(f"packet_ids[{i}]: {packet_ids[i]} is negative")
    if err == _BAD_COMMENT_ID:
        raise ValueError(f"comment_ids[{i}]: {comment_ids[i]} is neither -1 nor a comment "
                         f"(0..{n_comments - 1})")
    if err != _OK:
        raise _slice_error(err, i, starts, lengths, len(buf))
    return _chunks(_write_epbs, scratch, n, buf, starts, lengths, if_ids, ts_ns, snaplens,
                   packet_ids, has_packet_ids, comment_ids, has_comments, comment_utf8,
                   comment_offsets)


def _check_comment_table(utf8: np.ndarray, offsets: np.ndarray) -> None:
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(utf8):
        raise ValueError("comment_offsets: must start at 0 and end at len(comment_utf8)")
    sizes = np.diff(offsets)
    if sizes.size and (sizes.min() < 0 or sizes.max() > MAX_COMMENT_BYTES):
        raise ValueError(f"comment_offsets: must be non-decreasing, with comments of at most "
                         f"{MAX_COMMENT_BYTES} bytes")


# --- classic pcap records ---------------------------------------------------

@jit
def _pcap_error(start, length, buf_len, ts):
    err = _check_slice(start, length, buf_len)
    if err != _OK:
        return err
    if ts < 0 or ts > MAX_PCAP_TS_NS:
        return _BAD_TS
    return _OK


@jit
def _check_pcap_records(buf_len, starts, lengths, ts_ns):
    for i in range(starts.shape[0]):
        err = _pcap_error(starts[i], lengths[i], buf_len, ts_ns[i])
        if err != _OK:
            return err, i
    return _OK, -1


@jit
def _write_pcap_records(out, first, buf, starts, lengths, ts_ns, snaplen):
    """As `_write_epbs`, for classic pcap records (16-byte header + bytes)."""
    o = 0
    for i in range(first, starts.shape[0]):
        length = lengths[i]
        err = _pcap_error(starts[i], length, buf.shape[0], ts_ns[i])
        if err != _OK:
            return i, o, err
        cap = min(length, snaplen)
        if o + 16 + cap > out.shape[0]:
            return i, o, _OK
        ts = ts_ns[i]
        _put_u32(out, o, ts // 1_000_000_000)
        _put_u32(out, o + 4, ts % 1_000_000_000)
        _put_u32(out, o + 8, cap)
        _put_u32(out, o + 12, length)
        dst = out[o + 16:o + 16 + cap]  # as in _write_epbs
        src = buf[starts[i]:starts[i] + cap]
        for k in range(cap):
            dst[k] = src[k]
        o += 16 + cap
    return starts.shape[0], o, _OK


def pcap_record_chunks(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                       ts_ns: np.ndarray, snaplen: int,
                       scratch: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Classic pcap records (nanosecond timestamps) of a batch, in chunks.

    buf uint8[:]; starts, lengths int64[n] (frame i is buf[starts[i]:starts[i] +
    lengths[i]]); ts_ns int64[n] in [0, MAX_PCAP_TS_NS]; snaplen in [1, MAX_SNAPLEN];
    scratch uint8[>= 16 + MAX_SNAPLEN] or None. Checked and handed out as in
    `epb_chunks`.
    """
    buf = _check.array(buf, "buf", np.uint8)
    starts = _check.array(starts, "starts", np.int64)
    lengths = _check.array(lengths, "lengths", np.int64)
    ts_ns = _check.array(ts_ns, "ts_ns", np.int64)
    n = _check.same_length(starts=starts, lengths=lengths, ts_ns=ts_ns)
    snaplen = _check.integer(snaplen, "snaplen", 1, MAX_SNAPLEN)
    scratch = _scratch(scratch, 16 + MAX_SNAPLEN)
    err, i = _check_pcap_records(len(buf), starts, lengths, ts_ns)
    if err == _BAD_TS:
        raise ValueError(f"ts_ns[{i}]: {ts_ns[i]} is not in [0, {MAX_PCAP_TS_NS}] "
                         f"(classic pcap seconds are 32-bit)")
    if err != _OK:
        raise _slice_error(err, i, starts, lengths, len(buf))
    return _chunks(_write_pcap_records, scratch, n, buf, starts, lengths, ts_ns, snaplen)
