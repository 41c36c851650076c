"""Plain-Python references for kernels.flow."""
from __future__ import annotations

import struct

from emu.dataplane import conntrack as dct
from kernels import conntrack as ct


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(proto, src, dst, sport, dport, seq, ack, flags, ip_id, payload: bytes, tag=None) -> bytes:
    if tag is not None and len(payload) >= 8:
        payload = struct.pack("!Q", tag) + payload[8:]
    l4len = (20 if proto == 6 else 8) + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + l4len, ip_id, 0x4000, 64, proto, 0, src, dst))
    ip[10:12] = struct.pack("!H", _csum(bytes(ip)))
    pseudo = struct.pack("!IIBBH", src, dst, 0, proto, l4len)
    if proto == 6:
        l4 = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 64240, 0, 0)) + payload
        l4[16:18] = struct.pack("!H", _csum(pseudo + bytes(l4)))
    else:
        l4 = bytearray(struct.pack("!HHHH", sport, dport, l4len, 0)) + payload
        c = _csum(pseudo + bytes(l4))
        l4[6:8] = struct.pack("!H", c or 0xFFFF)
    return bytes(12) + b"\x08\x00" + bytes(ip) + bytes(l4)


def ct_open(proto, flags):
    if proto == 6:
        state = dct.SYN_SENT if flags & dct.SYN and not flags & dct.ACK else dct.TCP_ESTABLISHED
        return dct.tcp_next(dct.NONE, flags, ct.ORIGINAL) >= 0, state, dct.Conntrack._timeout(6, state, False)
    return True, 0, dct.Conntrack._timeout(proto, 0, False)


def ct_advance(conns, conn, direction, proto, flags, now):
    """The interactive tracker's update for one packet with its connection: ctinfo."""
    if conn < 0:
        return dct.UNTRACKED
    rec = conns[conn]
    if not rec["status"] & ct.IPS_CONFIRMED:
        return dct.INVALID
    seen_reply = bool(rec["status"] & ct.IPS_SEEN_REPLY) or direction == ct.REPLY
    info = dct.ESTABLISHED if seen_reply else dct.NEW
    state = int(rec["state"])
    if proto == 6:
        nxt = dct.tcp_next(state, flags, direction)
        if nxt < 0:
            return dct.INVALID
        state = nxt
    assure = (proto == 6 and state & 0x7F == dct.TCP_ESTABLISHED) or (proto != 6 and seen_reply)
    expires = now + dct.Conntrack._timeout(proto, state, seen_reply)
    if int(rec["state"]) != state or expires > int(rec["expires"]):
        rec["expires"] = expires   # the same state never brings the expiry forward
    rec["state"] = state
    if assure:
        rec["status"] |= ct.IPS_ASSURED
    return info


def nat_tuple(conns, conn, src, dst, sport, dport, source):
    if conn < 0 or not conns[conn]["status"] & ct.IPS_CONFIRMED:
        return src, dst, sport, dport, False
    rec = conns[conn]
    st = int(rec["status"])
    original = src == rec["orig_src"] and sport == rec["orig_sport"]
    if not source:
        if original and st & ct.IPS_DST_NAT:
            return src, int(rec["reply_src"]), sport, int(rec["reply_sport"]), True
        if not original and st & ct.IPS_SRC_NAT:
            return src, int(rec["orig_src"]), sport, int(rec["orig_sport"]), True
    else:
        if original and st & ct.IPS_SRC_NAT:
            return int(rec["reply_dst"]), dst, int(rec["reply_dport"]), dport, True
        if not original and st & ct.IPS_DST_NAT:
            return int(rec["orig_dst"]), dst, int(rec["orig_dport"]), dport, True
    return src, dst, sport, dport, False
