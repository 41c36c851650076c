"""Plain-Python reference for kernels.frametpl: each template frame with the
record's fields written in, and every checksum computed from scratch (RFC
1071) rather than updated: the inner IPv4 header, the TCP segment with its
pseudo-header, and a VXLAN packet's outer IPv4 header. The outer UDP
checksum is 0 (none, as Linux sends VXLAN over IPv4) and stays 0."""
from __future__ import annotations

import struct


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fields(blob: bytes) -> tuple[int, ...]:
    """(ip_id, outer_id, seq, ack, tag, ports, outer_sport) of a FIELD_BYTES blob."""
    return struct.unpack("!HHIIQIH", blob[:26])


def frame(template: bytes, inner: int, ip_id: int, outer_id: int, seq: int, ack: int, tag: int, ports: int = None,
          outer_sport: int = None) -> bytes:
    """The template with the fields written in (ports, outer_sport: None
    keeps the template's)."""
    f = bytearray(template)
    ip, tcp = inner, inner + 20
    total = struct.unpack_from("!H", f, ip + 2)[0]
    struct.pack_into("!H", f, ip + 4, ip_id)
    if ports is not None:
        struct.pack_into("!I", f, tcp, ports)
    struct.pack_into("!II", f, tcp + 4, seq, ack)
    if total - 40 >= 8:
        struct.pack_into("!Q", f, tcp + 20, tag)
    struct.pack_into("!H", f, ip + 10, 0)
    struct.pack_into("!H", f, ip + 10, checksum(bytes(f[ip:ip + 20])))
    segment = bytearray(f[tcp:ip + total])
    segment[16:18] = b"\x00\x00"
    pseudo = bytes(f[ip + 12:ip + 20]) + struct.pack("!BBH", 0, 6, len(segment))
    struct.pack_into("!H", f, tcp + 16, checksum(pseudo + bytes(segment)))
    if inner > 14:   # the outer IPv4 header at 14
        struct.pack_into("!H", f, 18, outer_id)
        if outer_sport is not None:
            struct.pack_into("!H", f, 34, outer_sport)
        struct.pack_into("!H", f, 24, 0)
        struct.pack_into("!H", f, 24, checksum(bytes(f[14:34])))
    return bytes(f)


def materialize(buf: bytes, starts, lengths, tpl_ids, tpl_buf: bytes, tpl) -> list[bytes]:
    """The frame of each record (see kernels.frametpl.materialize)."""
    out = []
    for s, n, k in zip(starts, lengths, tpl_ids):
        s, n, k = int(s), int(n), int(k)
        if k < 0:
            out.append(bytes(buf[s:s + n]))
            continue
        start, length, _, _, inner = (int(v) for v in tpl[k])
        assert length == n
        out.append(frame(bytes(tpl_buf[start:start + length]), inner, *fields(bytes(buf[s:s + 26]))))
    return out
