"""Classic pcap files (draft-ietf-opsawg-pcap), for tools that read nothing
newer: one file per interface, Ethernet, nanosecond timestamps (magic
0xa1b23c4d). The format has no interface names, comments or packet ids; a run
that wants those writes pcapng (emu.capture.pcapng).

One `PcapWriter` per tapped port, with the pcapng writer's single and batch
calls minus what pcap cannot hold: a caller splitting a multi-port batch picks
each port's frames with a mask on its if_ids column. Seconds are 32-bit, so
timestamps stop at 2^32 s (year 2106 as wall time; virtual time starts at 0).
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO

import numpy as np

from emu.capture.pcapng import DEFAULT_SNAPLEN, ETHERNET, CaptureFile, frame_view
from kernels import _check
from kernels import pcapng as kernel

NANOSECOND_MAGIC = 0xA1B23C4D
_RECORD_HEAD = struct.Struct("<IIII")  # seconds, nanoseconds, caplen, len


class PcapWriter(CaptureFile):
    """Write a classic pcap file for one interface.

    `file`: a path (created or truncated, closed by `close`) or a binary file
    object. Frames longer than `snaplen` (1..262144) are captured truncated,
    with their full length recorded.
    """

    def __init__(self, file: str | os.PathLike | BinaryIO, snaplen: int = DEFAULT_SNAPLEN):
        self.snaplen = _check.integer(snaplen, "snaplen", 1, kernel.MAX_SNAPLEN)
        super().__init__(file)
        # version 2.4, thiszone 0, sigfigs 0
        self._put(struct.pack("<IHHiIII", NANOSECOND_MAGIC, 2, 4, 0, 0, self.snaplen, ETHERNET))

    def write(self, ts_ns: int, frame) -> None:
        """One frame (bytes-like) at virtual time `ts_ns` (ns, 0..MAX_PCAP_TS_NS)."""
        ts_ns = _check.integer(ts_ns, "ts_ns", 0, kernel.MAX_PCAP_TS_NS)
        data = frame_view(frame)
        if len(data) > kernel.MAX_LENGTH:
            raise ValueError(f"frame: {len(data)} bytes, at most {kernel.MAX_LENGTH}")
        captured = data[: self.snaplen]
        seconds, nanoseconds = divmod(ts_ns, 1_000_000_000)
        self._put(_RECORD_HEAD.pack(seconds, nanoseconds, len(captured), len(data)) + captured)

    def write_batch(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                    ts_ns: np.ndarray) -> None:
        """A batch of frames, in order, as `write` would write them: frame i is
        buf[starts[i]:starts[i] + lengths[i]] (buf uint8[:], starts and lengths
        int64[n]) at ts_ns[i] (int64[n]). ValueError (and nothing written) if
        any frame is bad."""
        self._open_file()
        self._put_chunks(kernel.pcap_record_chunks(buf, starts, lengths, ts_ns, self.snaplen,
                                                   self._layout_scratch()))
