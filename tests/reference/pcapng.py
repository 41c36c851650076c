"""Plain-Python reference for emu.capture: the same pcapng and classic pcap
bytes, built block by block with struct and nothing clever.

pcapng: draft-ietf-opsawg-pcapng (Section Header Block 3.1 / 4.1, Interface
Description Block 4.2, Enhanced Packet Block 4.3, options 3.5). Everything is
little-endian. Classic pcap: draft-ietf-opsawg-pcap, nanosecond magic.
"""
from __future__ import annotations

import struct

ETHERNET = 1


def pad4(data: bytes) -> bytes:
    """`data` followed by zero bytes up to a multiple of 4."""
    while len(data) % 4:
        data += b"\x00"
    return data


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + pad4(value)


def options(opts: list[tuple[int, bytes]]) -> bytes:
    """An option list ended by opt_endofopt, or nothing when there are none."""
    if not opts:
        return b""
    out = b""
    for code, value in opts:
        out += option(code, value)
    return out + option(0, b"")


def block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header(userappl: str, comment: str | None = None) -> bytes:
    opts = []
    if comment is not None:
        opts.append((1, comment.encode("utf-8")))
    opts.append((4, userappl.encode("utf-8")))
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + options(opts)
    return block(0x0A0D0D0A, body)


def interface(name: str, description: str | None, snaplen: int) -> bytes:
    opts = [(2, name.encode("utf-8"))]
    if description is not None:
        opts.append((3, description.encode("utf-8")))
    opts.append((9, bytes([9])))  # if_tsresol: 10^-9 s
    body = struct.pack("<HHI", ETHERNET, 0, snaplen) + options(opts)
    return block(1, body)


def packet(if_id: int, ts_ns: int, frame: bytes, snaplen: int,
           comment: str | None = None, packet_id: int | None = None) -> bytes:
    captured = frame[:snaplen]
    opts = []
    if comment is not None:
        text = comment if packet_id is None else f"pkt {packet_id}: {comment}"
        opts.append((1, text.encode("utf-8")))
    if packet_id is not None:
        opts.append((5, struct.pack("<Q", packet_id)))
    body = struct.pack("<IIIII", if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(captured), len(frame))
    body += pad4(captured) + options(opts)
    return block(6, body)


def pcap_header(snaplen: int) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, snaplen, ETHERNET)


def pcap_record(ts_ns: int, frame: bytes, snaplen: int) -> bytes:
    captured = frame[:snaplen]
    seconds, nanoseconds = divmod(ts_ns, 1_000_000_000)
    return struct.pack("<IIII", seconds, nanoseconds, len(captured), len(frame)) + captured
