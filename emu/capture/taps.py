"""Capture taps: frames seen on chosen ports, as tcpdump on that interface
would see them (both directions), with the decision that moved each frame.

Records are columns plus one growing byte buffer; frames are copied with a
kernel, never through a Python object per packet. At the end of a run the
records are written sorted by (virtual time, record order) into one pcapng
(one interface block per tapped port) or one classic pcap per port.

The rx record of a frame is taken when it arrives, before the device changes
it, and its comment is the receiving device's decision; a tx record carries
the sending device's decision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kernels import rewrite


class Taps:
    def __init__(self, ports):
        self.port_ids = sorted({p.id for p in ports})
        self._names = {p.id: p.name for p in ports}
        self._tapped = np.zeros(0, bool)
        self.buf = np.zeros(1 << 16, np.uint8)
        self._used = 0
        self._cols = {k: np.zeros(1024, d) for k, d in
                      (("start", np.int64), ("length", np.int64), ("port", np.int32),
                       ("time", np.int64), ("pkt_id", np.int64), ("note", np.int32))}
        self.count = 0

    def _is_tapped(self, engine, ports) -> np.ndarray:
        if len(self._tapped) != len(engine.ports):
            self._tapped = np.zeros(len(engine.ports), bool)
            self._tapped[self.port_ids] = True
        return self._tapped[ports]

    def _reserve(self, n: int, nbytes: int) -> None:
        if self.count + n > len(self._cols["start"]):
            for k, v in self._cols.items():
                self._cols[k] = _grown(v, self.count + n, self.count)
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
        self._used += int(lengths.sum())
        self.count += n
        return rec

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

    def write_pcapng(self, path: str | Path, engine) -> int:
        """One pcapng with an interface per tapped port; returns frames written."""
        from emu.capture.pcapng import PcapngWriter

        r = self.records()
        with PcapngWriter(path) as w:
            if_of_port = {pid: w.add_interface(self._names[pid]) for pid in self.port_ids}
            lut = np.full(max(self.port_ids) + 1, -1, np.int32)
            for pid, i in if_of_port.items():
                lut[pid] = i
            w.write_batch(self.buf, r["start"], r["length"], lut[r["port"]], r["time"],
                          r["pkt_id"], r["note"].astype(np.int32), engine.notes)
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
                w.write_batch(self.buf, r["start"][sel], r["length"][sel], r["time"][sel])
            paths.append(path)
        return paths


def _grown(a: np.ndarray, need: int, used: int) -> np.ndarray:
    """`a` with room for `need` items (at least double), its first `used` kept;
    the rest is left unwritten (np.empty: no zero-filling of memory we overwrite)."""
    out = np.empty(max(need, 2 * len(a)), a.dtype)
    out[:used] = a[:used]
    return out
