"""pcapng capture files: what Wireshark opens, one per run.

A file is one section (draft-ietf-opsawg-pcapng 4.1) naming emu as the
application, one Interface Description Block (4.2) per tapped device port
(`node-1/cni0`), Ethernet, nanosecond timestamps (if_tsresol = 9: emu's
virtual clock counts int64 nanoseconds), then Enhanced Packet Blocks (4.3).
Nothing machine-dependent is written (no shb_hardware / shb_os, no wall
clock), so the same run gives the same bytes.

Each packet can carry a comment naming the decision that moved it and the
packet id that follows it across hops. The id goes into `epb_packetid`
(option 5; tshark 4.0 filters on it as `frame.packet_id`) and prefixes the
comment ("pkt 17: bridge forward cni0 -> veth1a2b"), which every viewer
shows; pass only the decision as the comment.

Two ways in, giving the same bytes (tests compare them with a plain-struct
reference): `write` takes one frame as bytes, for the slow path; and
`write_batch` takes a packet batch as numpy columns (frames as slices of
one uint8 buffer, as in the packet pool) with comments as indices into a
few distinct strings, so no Python object is made per packet: a numba
kernel (kernels.pcapng) lays the blocks out in a reused 1 MiB scratch that
goes to the file chunk by chunk.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from emu import __version__
from kernels import _check
from kernels import pcapng as kernel

ETHERNET = 1                    # LINKTYPE_ETHERNET
TSRESOL_NS = 9                  # if_tsresol: 10^-9 s
DEFAULT_SNAPLEN = kernel.MAX_SNAPLEN
MAX_TS_NS = 2**63 - 1
MAX_PACKET_ID = 2**63 - 1
MAX_OPTION_BYTES = 2**16 - 1    # an option's length is a u16

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 1
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9

_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total length, if id, ts high, ts low, caplen, len
_U32 = struct.Struct("<I")
_OPTION_HEAD = struct.Struct("<HH")
_PACKET_ID = struct.Struct("<HHQ")
_END_OF_OPTIONS = b"\x00\x00\x00\x00"


def _padding(n: int) -> bytes:
    return b"\x00" * (-n % 4)


def _option(code: int, value: bytes) -> bytes:
    return _OPTION_HEAD.pack(code, len(value)) + value + _padding(len(value))


def _text(value, name: str, limit: int = MAX_OPTION_BYTES) -> bytes:
    """A string option's UTF-8 bytes, or a ValueError naming the argument."""
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a str, got {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name}: not encodable as UTF-8 ({e.reason})") from None
    if len(data) > limit:
        raise ValueError(f"{name}: {len(data)} bytes of UTF-8, at most {limit} fit in a pcapng option")
    return data


def _block(block_type: int, body: bytes) -> bytes:
    total = _U32.pack(12 + len(body))
    return _U32.pack(block_type) + total + body + total


def frame_view(frame) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError:
        raise ValueError(f"frame: expected bytes-like, got {type(frame).__name__}") from None
    if view.itemsize != 1 or not view.c_contiguous:
        raise ValueError("frame: expected contiguous bytes (itemsize 1)")
    return view.cast("B")


class CaptureFile:
    """A binary sink shared by the capture writers: a path it opens and owns,
    or a binary file object the caller owns (flushed, not closed, at close)."""

    def __init__(self, file: str | os.PathLike | BinaryIO):
        if isinstance(file, (str, os.PathLike)):
            self._file = open(file, "wb")
            self._owned = True
        elif hasattr(file, "write"):
            self._file = file
            self._owned = False
        else:
            raise ValueError(f"file: expected a path or a binary file object, got {type(file).__name__}")
        self._scratch: np.ndarray | None = None  # the kernels' layout buffer, made on first batch

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise ValueError("the capture file is closed")
        return self._file

    def _put(self, data) -> None:
        self._open_file().write(data)

    def _put_chunks(self, chunks) -> None:
        file = self._open_file()
        for chunk in chunks:
            file.write(chunk)

    def _layout_scratch(self) -> np.ndarray:
        if self._scratch is None:
            self._scratch = np.empty(kernel.CHUNK_BYTES, np.uint8)
        return self._scratch

    @property
    def closed(self) -> bool:
        return self._file is None

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush; close the file if this writer opened it. Closing twice is fine."""
        if self._file is None:
            return
        file, self._file = self._file, None
        if self._owned:
            file.close()
        else:
            file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PcapngWriter(CaptureFile):
    """Write one pcapng section: `add_interface` per tapped port, then frames.

    `file`: a path (created or truncated, closed by `close`) or a binary file
    object. `comment`: an optional section comment (opt_comment on the SHB),
    e.g. the scenario and seed that produced the capture.
    """

    def __init__(self, file: str | os.PathLike | BinaryIO, *, comment: str | None = None):
        options = b""
        if comment is not None:
            options += _option(OPT_COMMENT, _text(comment, "comment"))
        options += _option(SHB_USERAPPL, f"emu {__version__}".encode())
        super().__init__(file)
        # section length -1: not given, so the file can be written as a stream
        header = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
        self._put(_block(SHB_TYPE, header + options + _END_OF_OPTIONS))
        self._names: list[str] = []
        self._snaplens = np.zeros(0, np.int64)

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Interface names in if_id order."""
        return tuple(self._names)

    def add_interface(self, name: str, description: str | None = None,
                      snaplen: int = DEFAULT_SNAPLEN) -> int:
        """Describe a tapped port (Ethernet, ns timestamps); return its if_id
        (0, 1, ... in call order). Frames longer than `snaplen` (1..262144) are
        captured truncated, with their full length recorded. An interface may be
        added at any time, also after packets on other interfaces."""
        options = _option(IF_NAME, _text(name, "name"))
        if description is not None:
            options += _option(IF_DESCRIPTION, _text(description, "description"))
        options += _option(IF_TSRESOL, bytes([TSRESOL_NS]))
        snaplen = _check.integer(snaplen, "snaplen", 1, kernel.MAX_SNAPLEN)
        head = struct.pack("<HHI", ETHERNET, 0, snaplen)
        self._put(_block(IDB_TYPE, head + options + _END_OF_OPTIONS))
        self._names.append(name)
        self._snaplens = np.append(self._snaplens, np.int64(snaplen))
        return len(self._names) - 1

    def write(self, if_id: int, ts_ns: int, frame, comment: str | None = None,
              packet_id: int | None = None) -> None:
        """One frame (bytes-like) seen on interface `if_id` at virtual time
        `ts_ns` (ns, >= 0); `comment` names the decision that moved it,
        `packet_id` (>= 0) the packet it belongs to."""
        if isinstance(if_id, bool) or not isinstance(if_id, (int, np.integer)) \
                or not 0 <= if_id < len(self._names):
            raise ValueError(f"if_id: {if_id!r} is not an interface added to this file "
                             f"({len(self._names)} so far)")
        if_id = int(if_id)
        ts_ns = _check.integer(ts_ns, "ts_ns", 0, MAX_TS_NS)
        if packet_id is not None:
            packet_id = _check.integer(packet_id, "packet_id", 0, MAX_PACKET_ID)
        data = frame_view(frame)
        length = len(data)
        if length > kernel.MAX_LENGTH:
            raise ValueError(f"frame: {length} bytes, at most {kernel.MAX_LENGTH}")
        captured = data[: int(self._snaplens[if_id])]
        options = b""
        if comment is not None:
            text = _text(comment, "comment", kernel.MAX_COMMENT_BYTES)
            if packet_id is not None:
                text = b"pkt %d: " % packet_id + text
            options += _option(OPT_COMMENT, text)
        if packet_id is not None:
            options += _PACKET_ID.pack(kernel.EPB_PACKETID, 8, packet_id)
        if options:
            options += _END_OF_OPTIONS
        total = 32 + len(captured) + (-len(captured) % 4) + len(options)
        head = _EPB_HEAD.pack(kernel.EPB_TYPE, total, if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF,
                              len(captured), length)
        self._put(b"".join((head, captured, _padding(len(captured)), options, _U32.pack(total))))

    def write_batch(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                    if_ids: np.ndarray, ts_ns: np.ndarray, packet_ids: np.ndarray | None = None,
                    comment_ids: np.ndarray | None = None, comments: Sequence[str] = ()) -> None:
        """A batch of frames, in order, as `write` would write them one by one.

        buf uint8[:]: frame i is buf[starts[i]:starts[i] + lengths[i]];
        starts, lengths int64[n]; if_ids int32[n]; ts_ns int64[n] >= 0;
        packet_ids int64[n] >= 0 or None; comment_ids int32[n] or None: frame i's
        comment is comments[comment_ids[i]], -1 for none. ValueError (and
        nothing written) if any frame is bad.
        """
        if isinstance(comments, str):
            raise ValueError("comments: expected a sequence of str, got one str")
        encoded = [_text(c, f"comments[{k}]", kernel.MAX_COMMENT_BYTES) for k, c in enumerate(comments)]
        utf8 = np.frombuffer(b"".join(encoded), np.uint8)
        offsets = np.zeros(len(encoded) + 1, np.int64)
        offsets[1:] = np.cumsum(np.array([len(e) for e in encoded], np.int64))
        self._open_file()
        self._put_chunks(kernel.epb_chunks(buf, starts, lengths, if_ids, ts_ns, self._snaplens,
                                           packet_ids, comment_ids, utf8, offsets,
                                           self._layout_scratch()))
