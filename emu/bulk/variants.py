"""The frames the flow cache captures: from the frame one packet of a TCP
flow had at a capture point, the frames every later packet of that
direction has there.

A learner's frame at a capture point (Ethernet, IPv4, TCP without options,
maybe under VXLAN with the inner IPv4 header at `inner`) differs from a
later packet's of the same direction only in:

- what kernels.frametpl fills per packet: IP id, sequence and
  acknowledgement numbers, the payload's tag, the outer IP id (and per
  flow: the ports, the outer UDP source port);
- the TCP flags and the payload: a data segment (PSH|ACK and the
  generator's payload), a pure ACK, a FIN (FIN|ACK);
- the lengths and checksums that follow from those;
- the comment of the sender's own record, which names the kind of packet
  ("bulk tcp data", emu.bulk.traffic). The rest (delivery, routes, bridges,
  conntrack's ctinfo) is the same for every packet of a direction but the
  client's SYN, whose ctinfo (NEW) differs: a captured flow's client learns
  from the handshake's ACK, its server from the SYN-ACK (a reply, so
  ESTABLISHED_REPLY as every later one).

So each capture point gets three templates: the steady packet (the
client's data segment, the server's ACK), a pure ACK (the handshake's last
and the teardown's last ACK) and a FIN.
"""
from __future__ import annotations

import numpy as np

from kernels import checksum, rewrite
from kernels.flow import ACK, FIN
from kernels.replay import PSH


def tcp_variants(frames, at, inner, client, payload):
    """Per base frame (at frames[at:], inner IPv4 header at `inner`, sent by
    the client or not): its three variants, in one new buffer.
    Returns (buffer, starts, lengths), variant after variant of each base."""
    n = len(at)
    inner = np.asarray(inner, np.int64)
    payload = np.asarray(payload, np.uint8)
    plen = np.stack([np.where(client, len(payload), 0), np.zeros(n, np.int64), np.zeros(n, np.int64)], 1).ravel()
    flags = np.stack([np.where(client, PSH | ACK, ACK), np.full(n, ACK), np.full(n, FIN | ACK)], 1).ravel()
    base = np.repeat(np.arange(n), 3)
    off = inner[base]
    head = off + 40                                       # through the TCP header
    lengths = head + plen
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    out = np.zeros(int(lengths.sum()), np.uint8)
    rewrite.copy_ranges(frames, np.asarray(at, np.int64)[base], head, out, starts)
    data = np.nonzero(plen)[0]
    if len(data):
        out[(starts[data] + head[data])[:, None] + np.arange(len(payload))] = payload
    ip = starts + off
    _put16(out, ip + 2, 40 + plen)
    out[ip + 33] = flags
    # (the checksum functions count the checksum's own field as zero)
    _put16(out, ip + 10, checksum.ipv4_header_checksums(out, ip))
    _put16(out, ip + 36, checksum.l4_checksums(out, ip, ip + 20, 20 + plen))
    vx = np.nonzero(off > 14)[0]
    if len(vx):   # the outer IPv4 and UDP headers (RFC 7348) around it
        outer = starts[vx] + 14
        _put16(out, outer + 2, lengths[vx] - 14)
        _put16(out, outer + 10, checksum.ipv4_header_checksums(out, outer))
        _put16(out, outer + 24, lengths[vx] - 34)   # no UDP checksum: Linux sends none (rewrite.vxlan_encap)
    return out, starts, lengths


def _put16(buf, at, value) -> None:
    value = np.asarray(value, np.int64)
    buf[at] = (value >> 8) & 0xFF
    buf[at + 1] = value & 0xFF
