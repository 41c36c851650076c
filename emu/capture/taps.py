"""Capture taps: frames seen on chosen ports, as tcpdump on that interface
would see them (both directions), with the decision that moved each frame.

Records are columns plus one growing byte buffer; frames are copied with a
kernel, never through a Python object per packet. At the end of a run the
records are written sorted by (virtual time, record order) into one pcapng
(one interface block per tapped port) or one classic pcap per port.

The rx record of a frame is taken when it arrives, before the device changes
it, and its comment is the receiving device's decision; a tx record carries
the sending device's decision.

Most frames of bulk traffic are a template frame with a few per-packet fields
changed (kernels.frametpl), and writing millions of them out in full at run
time makes first-touching the capture memory the cost of a run. So a record
is one of two kinds, told by its `tpl` column:

    tpl == -1   `buf[start:start + length]` is the frame (`record`, `record_frames`)
    tpl >= 0    the frame is template `tpl` (`tpl_buf`, `tpl`: kernels.frametpl's
                layout, added with `add_templates`) with the fields blob at
                `buf[start:start + FIELD_BYTES]`; `length` is the frame's. The
                replay kernel writes such records straight into the columns,
                using FIELD_BYTES of `buf` for each.

Frames are materialised only when read (`frames`) or written, a chunk of
CHUNK_RECORDS records at a time, so no buffer of all the frames is needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kernels import frametpl, rewrite

CHUNK_RECORDS = 65_536   # records materialised per write_batch call when writing files


class Taps:
    def __init__(self, ports):
        self.port_ids = sorted({p.id for p in ports})
        self._names = {p.id: p.name for p in ports}
        self._tapped = np.zeros(0, bool)
        self.buf = np.zeros(1 << 16, np.uint8)
        self._used = 0
        self._cols = {k: np.zeros(1024, d) for k, d in
                      (("start", np.int64), ("length", np.int64), ("port", np.int32),
                       ("time", np.int64), ("pkt_id", np.int64), ("note", np.int32), ("tpl", np.int32))}
        # rows not written yet say "plain frame": a writer of the other columns
        # that knows nothing of templates still makes valid records
        self._cols["tpl"][:] = -1
        self.count = 0
        self.tpl_buf = np.zeros(0, np.uint8)         # templates' frames (with room to grow)
        self._tpl_rows = np.zeros((0, frametpl.TPL), np.int64)
        self.tpl = self._tpl_rows                    # int64 [templates, TPL]: a view of the rows in use
        self._tpl_used = 0

    def _is_tapped(self, engine, ports) -> np.ndarray:
        if len(self._tapped) != len(engine.ports):
            self._tapped = np.zeros(len(engine.ports), bool)
            self._tapped[self.port_ids] = True
        return self._tapped[ports]

    def _reserve(self, n: int, nbytes: int) -> None:
        if self.count + n > len(self._cols["start"]):
            for k, v in self._cols.items():
                self._cols[k] = _grown(v, self.count + n, self.count, fill=-1 if k == "tpl" else None)
        if self._used + nbytes > len(self.buf):
            self.buf = _grown(self.buf, self._used + nbytes, self._used)

    def record(self, engine, ports, slots, times, notes=None) -> np.ndarray | None:
        """Copy the frames of `slots` seen on `ports` (only tapped ones); returns record indices."""
        ports = np.broadcast_to(np.asarray(ports, np.int32), (len(slots),))
        sel = np.nonzero(self._is_tapped(engine, ports))[0]
        if not len(sel):
            return None
        pool = engine.pool
        s = np.asarray(slots)[sel]
        lengths = pool.length[s]
        self._reserve(len(sel), int(lengths.sum()))
        dst = self._used + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        rewrite.copy_ranges(pool.buf, pool.start[s], lengths, self.buf, dst)
        rec = np.arange(self.count, self.count + len(sel))
        c = self._cols
        c["start"][rec], c["length"][rec], c["port"][rec] = dst, lengths, ports[sel]
        c["time"][rec], c["pkt_id"][rec] = np.asarray(times)[sel], pool.pkt_id[s]
        c["note"][rec] = -1 if notes is None else np.broadcast_to(np.asarray(notes), (len(slots),))[sel]
        c["tpl"][rec] = -1
        self._used += int(lengths.sum())
        self.count += len(sel)
        return np.stack([rec, sel])

    def record_frames(self, buf, starts, lengths, ports, times, pkt_ids, notes=None) -> np.ndarray:
        """Record frames held outside the pool (bulk traffic's batches), all on
        tapped ports; returns their record indices (notes -1 until set_notes)."""
        n = len(starts)
        lengths = np.asarray(lengths, np.int64)
        self._reserve(n, int(lengths.sum()))
        dst = self._used + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        rewrite.copy_ranges(buf, np.asarray(starts, np.int64), lengths, self.buf, dst)
        rec = np.arange(self.count, self.count + n)
        c = self._cols
        c["start"][rec], c["length"][rec], c["port"][rec] = dst, lengths, ports
        c["time"][rec], c["pkt_id"][rec] = times, pkt_ids
        c["note"][rec] = -1 if notes is None else notes
        c["tpl"][rec] = -1
        self._used += int(lengths.sum())
        self.count += n
        return rec

    def add_templates(self, frames, at, lengths, ports, notes, inner) -> np.ndarray:
        """Templates (kernels.frametpl): frame k is frames[at[k]:at[k] + lengths[k]]
        (uint8 buffer, int64 offsets), captured on ports[k] with note notes[k],
        its TCP packet's IPv4 header at inner[k] (14, or 64 under VXLAN). The
        frames are copied in; returns the new template ids."""
        at, lengths = np.asarray(at, np.int64), np.asarray(lengths, np.int64)
        n = len(at)
        dst = np.cumsum(lengths) - lengths
        part = np.empty(int(lengths.sum()), np.uint8)
        rewrite.copy_ranges(frames, at, lengths, part, dst)
        rows = np.stack(np.broadcast_arrays(dst, lengths, ports, notes, inner), axis=1).astype(np.int64)
        frametpl.check_templates(part, rows)   # refused here, not when the capture is written
        rows[:, 0] += self._tpl_used
        if self._tpl_used + len(part) > len(self.tpl_buf):
            self.tpl_buf = _grown(self.tpl_buf, self._tpl_used + len(part), self._tpl_used)
        self.tpl_buf[self._tpl_used:self._tpl_used + len(part)] = part
        self._tpl_used += len(part)
        first = len(self.tpl)
        if first + n > len(self._tpl_rows):
            self._tpl_rows = _grown(self._tpl_rows, first + n, first)
        self._tpl_rows[first:first + n] = rows
        self.tpl = self._tpl_rows[:first + n]
        return first + np.arange(n)

    def record_rx(self, engine, ports, slots, times):
        """Frames arriving on ports: copied now (before the device changes them);
        their notes come from the receiving device's decision (set_notes)."""
        return self.record(engine, ports, slots, times)

    def set_notes(self, rec, notes) -> None:
        if rec is not None:
            self._cols["note"][rec[0]] = np.asarray(notes)[rec[1]]

    def records(self):
        """Record columns in capture order: by time, then by when they were recorded."""
        n = self.count
        order = np.argsort(self._cols["time"][:n], kind="stable")
        return {k: v[:n][order] for k, v in self._cols.items()}

    def frames(self, r=None) -> tuple[np.ndarray, np.ndarray]:
        """The frames of record columns `r` (default: all, in `records()` order)
        in a new buffer, one after the other: (buf, start of each frame)."""
        r = self.records() if r is None else r
        starts = np.cumsum(r["length"]) - r["length"]
        out = np.empty(int(r["length"].sum()), np.uint8)
        self._materialize(r, out, starts)
        return out, starts

    def _materialize(self, r, out, starts) -> None:
        frametpl.materialize(self.buf[:self._used], r["start"], r["length"], r["tpl"], self.tpl_buf, self.tpl,
                             out, starts)

    def _chunks(self, r):
        """(chunk, buf, starts) per CHUNK_RECORDS records of columns `r`: the
        chunk's columns, and frame i of the chunk is buf[starts[i]:...]. A
        chunk of plain records is read where it lies; the others are made in
        one buffer, reused (a chunk is valid until the next is asked for)."""
        scratch = np.zeros(0, np.uint8)
        for lo in range(0, len(r["start"]), CHUNK_RECORDS):
            chunk = {k: v[lo:lo + CHUNK_RECORDS] for k, v in r.items()}
            if (chunk["tpl"] < 0).all():
                yield chunk, self.buf, chunk["start"]
                continue
            starts = np.cumsum(chunk["length"]) - chunk["length"]
            need = int(chunk["length"].sum())
            if need > len(scratch):
                scratch = np.empty(max(need, 2 * len(scratch)), np.uint8)
            self._materialize(chunk, scratch, starts)
            yield chunk, scratch, starts

    def write_pcapng(self, path: str | Path, engine) -> int:
        """One pcapng with an interface per tapped port; returns frames written."""
        from emu.capture.pcapng import PcapngWriter

        r = self.records()
        with PcapngWriter(path) as w:
            if_of_port = {pid: w.add_interface(self._names[pid]) for pid in self.port_ids}
            lut = np.full(max(self.port_ids) + 1, -1, np.int32)
            for pid, i in if_of_port.items():
                lut[pid] = i
            for c, buf, starts in self._chunks(r):
                w.write_batch(buf, starts, c["length"], lut[c["port"]], c["time"], c["pkt_id"],
                              c["note"].astype(np.int32), engine.notes)
        return len(r["start"])

    def write_pcaps(self, directory: str | Path) -> list[Path]:
        """Classic pcap, one file per tapped port ("node-1/eth0" -> node-1_eth0.pcap),
        for tools that do not read pcapng; comments do not exist there."""
        from emu.capture.pcap import PcapWriter

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        r = self.records()
        paths = []
        for pid in self.port_ids:
            sel = r["port"] == pid
            path = directory / (self._names[pid].replace("/", "_") + ".pcap")
            with PcapWriter(path) as w:
                for c, buf, starts in self._chunks({k: v[sel] for k, v in r.items()}):
                    w.write_batch(buf, starts, c["length"], c["time"])
            paths.append(path)
        return paths


def _grown(a: np.ndarray, need: int, used: int, fill=None) -> np.ndarray:
    """`a` with room for `need` rows (at least double), its first `used` kept;
    the rest is `fill`, or left unwritten (np.empty: no zero-filling of memory
    we overwrite)."""
    out = np.empty((max(need, 2 * len(a)), *a.shape[1:]), a.dtype)
    out[:used] = a[:used]
    if fill is not None:
        out[used:] = fill
    return out
