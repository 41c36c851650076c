"""Bulk-traffic kernels: frames from templates, and the per-packet
conntrack/NAT work of an established path, over the same tables the
interactive data plane uses.

- `fill_frames`: Ethernet (MACs zero, for the neighbour output to fill) +
  IPv4 (no options, DF, TTL 64) + TCP (no options, window 64240) or UDP,
  then a payload cut from a template; addresses, ports, sequence numbers,
  flags, IP id, lengths and both checksums filled per packet. One template
  byte string per traffic run, no per-packet Python object.
- `ct_open`: may a packet with no connection open one (the TCP tracker's
  NONE transition), and with which state and timeout.
- `ct_advance`: the tracker's step for packets that found (or just created)
  their connection: ctinfo NEW/ESTABLISHED/INVALID, the TCP state machine of
  nf_conntrack_proto_tcp (as emu.dataplane.conntrack.tcp_next), the timeout
  refresh and ASSURED. The same rules, in the same order, as the
  interactive tracker (`emu.dataplane.conntrack.Conntrack`).
- `nat_tuple`: what NAT makes of each tracked packet at a destination
  (PREROUTING/OUTPUT) or source (POSTROUTING/INPUT) hook, from its
  connection alone (emu.dataplane.nat.Nat._translate).
- `renat`: give connections their NAT reply tuple, one after the other, as
  Nat._reinsert does (out of the hash, back in with the new reply tuple; put
  back as it was when the new one clashes).

References: tests/reference/flow.py.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels import conntrack as ct
from kernels._jit import AHEAD, jit, prefetch
from kernels.checksum import ipv4_header_checksum, l4_checksum
from kernels.rewrite import _put16, _put32

ETH, IPH, TCPH, UDPH = 14, 20, 20, 8
TTL = 64
TCP_WINDOW = 64240
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

UNTRACKED, NEW, ESTABLISHED, RELATED, INVALID = 0, 1, 2, 3, 4
NONE, SYN_SENT, SYN_RECV, TCP_ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE = range(9)
FIN_FROM_REPLY = 0x80
SEC = 1_000_000_000
# nf_conntrack_tcp_timeout_* by state; UDP, UDP stream, ICMP, generic
TCP_TIMEOUTS = np.array([10 * SEC, 120 * SEC, 60 * SEC, 432000 * SEC, 120 * SEC, 60 * SEC, 30 * SEC,
                         120 * SEC, 10 * SEC], np.int64)
UDP_TIMEOUT, UDP_STREAM_TIMEOUT, ICMP_TIMEOUT, GENERIC_TIMEOUT = 30 * SEC, 120 * SEC, 30 * SEC, 600 * SEC


# --- frames --------------------------------------------------------------------


@jit
def _fill(buf, starts, proto, src, dst, sport, dport, seq, ack, flags, ip_id, payload, paylen, tag, use_tag, out_len):
    for i in range(len(starts)):
        p = starts[i]
        for b in range(12):
            buf[p + b] = 0
        _put16(buf, p + 12, 0x0800)
        ip = p + ETH
        pr = np.int64(proto[i])
        l4h = TCPH if pr == 6 else UDPH
        n = np.int64(paylen[i])
        total = IPH + l4h + n
        buf[ip] = 0x45
        buf[ip + 1] = 0
        _put16(buf, ip + 2, total)
        _put16(buf, ip + 4, np.int64(ip_id[i]))
        _put16(buf, ip + 6, 0x4000)
        buf[ip + 8] = TTL
        buf[ip + 9] = pr
        _put16(buf, ip + 10, 0)
        _put32(buf, ip + 12, np.int64(src[i]))
        _put32(buf, ip + 16, np.int64(dst[i]))
        _put16(buf, ip + 10, ipv4_header_checksum(buf, ip))
        l4 = ip + IPH
        _put16(buf, l4, np.int64(sport[i]))
        _put16(buf, l4 + 2, np.int64(dport[i]))
        if pr == 6:
            _put32(buf, l4 + 4, np.int64(seq[i]))
            _put32(buf, l4 + 8, np.int64(ack[i]))
            buf[l4 + 12] = 0x50
            buf[l4 + 13] = flags[i]
            _put16(buf, l4 + 14, TCP_WINDOW)
            _put16(buf, l4 + 16, 0)
            _put16(buf, l4 + 18, 0)
        else:
            _put16(buf, l4 + 4, UDPH + n)
            _put16(buf, l4 + 6, 0)
        body = l4 + l4h
        z = buf[body:body + n]
        for b in range(n):   # a byte copy, as rewrite._copy_ranges does it
            z[b] = payload[b]
        if use_tag and n >= 8:
            t = tag[i]
            for b in range(8):
                buf[body + b] = (t >> np.uint64(8 * (7 - b))) & np.uint64(0xFF)
        c = l4_checksum(buf, ip, l4, l4h + n, pr)
        _put16(buf, l4 + (16 if pr == 6 else 6), c)
        out_len[i] = ETH + total


def fill_frames(buf, starts, proto, src, dst, sport, dport, seq, ack, flags, ip_id, payload,
                paylen, tag=None) -> np.ndarray:
    """Write one Ethernet/IPv4/TCP-or-UDP frame per packet at `starts` (absolute
    offsets into `buf`); proto 6 or 17 per packet; payload[:paylen[i]] as its
    data, its first 8 bytes replaced by tag[i] (big-endian uint64) when
    paylen >= 8 and a tag is given. Returns the frame lengths (int64)."""
    buf = _check.array(buf, "buf", np.uint8)
    starts = _check.array(starts, "starts", np.int64)
    proto = _check.array(proto, "proto", np.uint8)
    src = _check.array(src, "src", np.uint32)
    dst = _check.array(dst, "dst", np.uint32)
    sport = _check.array(sport, "sport", np.uint16)
    dport = _check.array(dport, "dport", np.uint16)
    seq = _check.array(seq, "seq", np.uint32)
    ack = _check.array(ack, "ack", np.uint32)
    flags = _check.array(flags, "flags", np.uint8)
    ip_id = _check.array(ip_id, "ip_id", np.uint16)
    payload = _check.array(payload, "payload", np.uint8)
    paylen = _check.array(paylen, "paylen", np.uint16)
    n = _check.same_length(starts=starts, proto=proto, src=src, dst=dst, sport=sport, dport=dport, seq=seq,
                           ack=ack, flags=flags, ip_id=ip_id, paylen=paylen)
    if n:
        if not np.all((proto == 6) | (proto == 17)):
            raise ValueError("proto: only TCP (6) and UDP (17) frames are made from templates")
        _check.in_range(paylen, "paylen", 0, len(payload))
        need = ETH + IPH + np.where(proto == 6, TCPH, UDPH) + paylen.astype(np.int64)
        if starts.min() < 0 or np.max(starts + need) > len(buf):
            raise ValueError("fill_frames: a frame would lie outside buf")
    use_tag = tag is not None
    if tag is None:
        tag = np.zeros(n, np.uint64)
    tag = _check.array(tag, "tag", np.uint64)
    _check.same_length(starts=starts, tag=tag)
    out = np.empty(n, np.int64)
    _fill(buf, starts, proto, src, dst, sport, dport, seq, ack, flags, ip_id, payload, paylen, tag, use_tag, out)
    return out


# --- conntrack -------------------------------------------------------------------

@jit
def tcp_next(state, flags, direction):
    """emu.dataplane.conntrack.tcp_next: the next state, -1 for invalid."""
    state = np.int64(state)
    flags = np.int64(flags)
    base = state & 0x7F
    fin_dir = 1 if state & FIN_FROM_REPLY else 0
    if flags & RST:
        return np.int64(CLOSE)
    if flags & SYN and flags & ACK:
        if direction == ct.REPLY and (base == SYN_SENT or base == SYN_RECV):
            return np.int64(SYN_RECV)
        return state if base != NONE else np.int64(-1)
    if flags & SYN:
        if direction == ct.ORIGINAL and (base == NONE or base == SYN_SENT or base == TIME_WAIT
                                         or base == CLOSE):
            return np.int64(SYN_SENT)
        return state if base != NONE else np.int64(-1)
    if flags & FIN:
        if base == NONE:
            return np.int64(-1)
        if base == SYN_RECV or base == TCP_ESTABLISHED:
            return np.int64(FIN_WAIT | (FIN_FROM_REPLY if direction == ct.REPLY else 0))
        if (base == FIN_WAIT or base == CLOSE_WAIT) and direction != fin_dir:
            return np.int64(LAST_ACK | (state & FIN_FROM_REPLY))
        return state
    if flags & ACK:
        if base == NONE:
            return np.int64(TCP_ESTABLISHED)
        if base == SYN_RECV and direction == ct.ORIGINAL:
            return np.int64(TCP_ESTABLISHED)
        if base == FIN_WAIT and direction != fin_dir:
            return np.int64(CLOSE_WAIT | (state & FIN_FROM_REPLY))
        if base == LAST_ACK and direction == fin_dir:
            return np.int64(TIME_WAIT | (state & FIN_FROM_REPLY))
        return state
    return state if base != NONE else np.int64(-1)


@jit
def _timeout(proto, state, seen_reply):
    if proto == 6:
        s = np.int64(state) & 0x7F
        return TCP_TIMEOUTS[s] if s < 9 else TCP_TIMEOUTS[CLOSE]
    if proto == 17:
        return np.int64(UDP_STREAM_TIMEOUT if seen_reply else UDP_TIMEOUT)
    if proto == 1:
        return np.int64(ICMP_TIMEOUT)
    return np.int64(GENERIC_TIMEOUT)


@jit
def first_state(proto, flags):
    """(may open, state) of a packet without a connection, as the tracker
    opens one: a TCP SYN in SYN_SENT, any other TCP packet that may start a
    connection ESTABLISHED (nf_conntrack_tcp_loose), other protocols 0."""
    p = np.int64(proto)
    f = np.int64(flags)
    if p != 6:
        return True, np.int64(0)
    return tcp_next(NONE, f, ct.ORIGINAL) >= 0, np.int64(SYN_SENT if (f & SYN) and not (f & ACK) else TCP_ESTABLISHED)


@jit
def _open(proto, flags, ok, state, timeout):
    for i in range(len(proto)):
        ok[i], s = first_state(proto[i], flags[i])
        state[i] = s
        timeout[i] = _timeout(np.int64(proto[i]), s, False)


def ct_open(proto, tcp_flags):
    """For packets without a connection (TCP, UDP): (may open: bool, initial
    state: uint8, timeout: int64), as the interactive tracker decides."""
    proto = _check.array(proto, "proto", np.uint8)
    tcp_flags = _check.array(tcp_flags, "tcp_flags", np.uint8)
    n = _check.same_length(proto=proto, tcp_flags=tcp_flags)
    ok, state, timeout = np.empty(n, np.bool_), np.empty(n, np.uint8), np.empty(n, np.int64)
    _open(proto, tcp_flags, ok, state, timeout)
    return ok, state, timeout


@jit
def _refresh(rec, state, expires):
    """The new state and expiry; a packet that keeps the state never brings
    the expiry forward. In time order that is plain assignment (the same
    state gives the same timeout, or a longer one once a reply is seen); it
    keeps the result the same when packets of a shared connection are
    tracked out of time order (emu.bulk's flow cache runs ahead)."""
    if np.int64(rec.state) != state or expires > rec.expires:
        rec.expires = expires
    rec.state = state


@jit
def _advance(conns, conn, direction, proto, flags, now, info):
    for i in range(len(conn)):
        c = conn[i]
        if c < 0 or (conns[c].status & ct.IPS_CONFIRMED) == 0:
            info[i] = UNTRACKED if c < 0 else INVALID
            continue
        rec = conns[c]
        d = np.int64(direction[i])
        seen_reply = (rec.status & ct.IPS_SEEN_REPLY) != 0 or d == ct.REPLY
        info[i] = ESTABLISHED if seen_reply else NEW
        p = np.int64(proto[i])
        state = np.int64(rec.state)
        if p == 6:
            nxt = tcp_next(state, flags[i], d)
            if nxt < 0:
                info[i] = INVALID
                continue
            state = nxt
        assure = (p == 6 and (state & 0x7F) == TCP_ESTABLISHED) or (p != 6 and seen_reply)
        _refresh(rec, state, now + _timeout(p, state, seen_reply))
        if assure:
            rec.status |= ct.IPS_ASSURED


def ct_advance(table: ct.Table, conn, direction, proto, tcp_flags, now: int) -> np.ndarray:
    """Track packets that have their connection (conn, direction from a
    lookup or insert; -1: none) at time `now`; returns ctinfo per packet
    (UNTRACKED for conn -1). Updates state, expiry and ASSURED in place."""
    conn = _check.array(conn, "conn", np.int32)
    direction = _check.array(direction, "direction", np.int8)
    proto = _check.array(proto, "proto", np.uint8)
    tcp_flags = _check.array(tcp_flags, "tcp_flags", np.uint8)
    _check.same_length(conn=conn, direction=direction, proto=proto, tcp_flags=tcp_flags)
    _check.in_range(conn, "conn", -1, len(table.conns) - 1)
    now = _check.integer(now, "now", 0, ct.MAX_TIME // 2)
    info = np.empty(len(conn), np.uint8)
    _advance(table.conns, conn, direction, proto, tcp_flags, np.int64(now), info)
    return info


# --- NAT -------------------------------------------------------------------------

@jit
def _nat_tuple(conns, conn, src, dst, sport, dport, source, out_src, out_dst, out_sport, out_dport, changed):
    for i in range(len(conn)):
        out_src[i], out_dst[i], out_sport[i], out_dport[i] = src[i], dst[i], sport[i], dport[i]
        changed[i] = False
        c = conn[i]
        if c < 0 or (conns[c].status & ct.IPS_CONFIRMED) == 0:
            continue
        rec = conns[c]
        original = src[i] == rec.orig_src and sport[i] == rec.orig_sport
        st = rec.status
        if not source:
            if original and st & ct.IPS_DST_NAT:
                out_dst[i], out_dport[i] = rec.reply_src, rec.reply_sport
            elif not original and st & ct.IPS_SRC_NAT:
                out_dst[i], out_dport[i] = rec.orig_src, rec.orig_sport
            else:
                continue
        else:
            if original and st & ct.IPS_SRC_NAT:
                out_src[i], out_sport[i] = rec.reply_dst, rec.reply_dport
            elif not original and st & ct.IPS_DST_NAT:
                out_src[i], out_sport[i] = rec.orig_dst, rec.orig_dport
            else:
                continue
        changed[i] = True


def nat_tuple(table: ct.Table, conn, src, dst, sport, dport, source: bool):
    """The (src, dst, sport, dport) NAT gives tracked TCP/UDP packets at a
    destination hook (source=False) or a source hook (source=True), and a
    mask of the packets it changes (their bytes then need kernels.rewrite.nat)."""
    conn = _check.array(conn, "conn", np.int32)
    src = _check.array(src, "src", np.uint32)
    dst = _check.array(dst, "dst", np.uint32)
    sport = _check.array(sport, "sport", np.uint16)
    dport = _check.array(dport, "dport", np.uint16)
    n = _check.same_length(conn=conn, src=src, dst=dst, sport=sport, dport=dport)
    _check.in_range(conn, "conn", -1, len(table.conns) - 1)
    out = (np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(n, np.uint16), np.empty(n, np.uint16))
    changed = np.empty(n, np.bool_)
    _nat_tuple(table.conns, conn, src, dst, sport, dport, bool(source), *out, changed)
    return (*out, changed)


@jit
def _renat(conns, counters, index, free_ids, stats, seed, conn, rsrc, rdst, rsport, rdport, now, out):
    z = np.zeros(1, np.uint16)
    a_src, a_dst = np.zeros(1, np.uint32), np.zeros(1, np.uint32)
    a_sport, a_dport = np.zeros(1, np.uint16), np.zeros(1, np.uint16)
    a_proto = np.zeros(1, np.uint8)
    r_src, r_dst = np.zeros(1, np.uint32), np.zeros(1, np.uint32)
    r_sport, r_dport = np.zeros(1, np.uint16), np.zeros(1, np.uint16)
    a_state, a_timeout = np.zeros(1, np.uint8), np.zeros(1, np.int64)
    o_conn, o_dir = np.zeros(1, np.int32), np.zeros(1, np.int8)
    o_created, o_drop = np.zeros(1, np.bool_), np.zeros(1, np.uint8)
    n = len(conn)
    # the new reply tuples' hashes, to fetch their index lines AHEAD connections on
    reply_h = np.zeros(n + AHEAD, np.uint64)
    for i in range(n):
        c = conn[i]
        if c >= 0:
            reply_h[i] = ct._hash(conns[c].zone, conns[c].proto, rsrc[i], rdst[i], rsport[i], rdport[i], seed)
    for i in range(n):
        prefetch(index, ct._home(reply_h[i + AHEAD], index))
        out[i] = -1
        c = conn[i]
        if c < 0 or (conns[c].status & ct.IPS_CONFIRMED) == 0:
            continue
        rec = conns[c]
        z[0] = rec.zone
        a_proto[0] = rec.proto
        a_src[0], a_dst[0], a_sport[0], a_dport[0] = rec.orig_src, rec.orig_dst, rec.orig_sport, rec.orig_dport
        old_rsrc, old_rdst, old_rsport, old_rdport = rec.reply_src, rec.reply_dst, rec.reply_sport, rec.reply_dport
        a_state[0] = rec.state
        left = rec.expires - now
        a_timeout[0] = left if left > 1 else 1
        mark = rec.mark
        ct._remove(conns, counters, index, free_ids, stats, seed, c)
        stats[ct.STAT_INSERT] -= 1   # a binding, not a delete and an insert (see renat)
        # the common case, as _track's insert does it: both tuples free, room in the table
        h = ct._hash(z[0], a_proto[0], a_src[0], a_dst[0], a_sport[0], a_dport[0], seed)
        hr = ct._hash(z[0], a_proto[0], rsrc[i], rdst[i], rsport[i], rdport[i], seed)
        same = rsrc[i] == a_src[0] and rdst[i] == a_dst[0] and rsport[i] == a_sport[0] and rdport[i] == a_dport[0]
        if stats[ct.STAT_COUNT] < len(conns) \
                and ct._find(index, conns, h, z[0], a_proto[0], a_src[0], a_dst[0], a_sport[0], a_dport[0]) < 0 \
                and (same or ct._find(index, conns, hr, z[0], a_proto[0], rsrc[i], rdst[i], rsport[i],
                                      rdport[i]) < 0):
            new = ct._insert_free(conns, index, free_ids, stats, h, hr, z[0], a_proto[0], a_src[0],
                                  a_dst[0], a_sport[0], a_dport[0], rsrc[i], rdst[i], rsport[i], rdport[i],
                                  a_state[0], now + a_timeout[0])
            conns[new].mark = mark
            out[i] = new
            continue
        r_src[0], r_dst[0], r_sport[0], r_dport[0] = rsrc[i], rdst[i], rsport[i], rdport[i]
        ct._track(conns, counters, index, free_ids, stats, seed, ct._INSERT, z, a_src, a_dst, a_sport, a_dport,
                  a_proto, r_src, r_dst, r_sport, r_dport, a_state, a_timeout, now,
                  o_conn, o_dir, o_created, o_drop)
        if o_drop[0] != 0:
            r_src[0], r_dst[0], r_sport[0], r_dport[0] = old_rsrc, old_rdst, old_rsport, old_rdport
            ct._track(conns, counters, index, free_ids, stats, seed, ct._INSERT, z, a_src, a_dst, a_sport,
                      a_dport, a_proto, r_src, r_dst, r_sport, r_dport, a_state, a_timeout, now,
                      o_conn, o_dir, o_created, o_drop)
            continue
        new = o_conn[0]
        conns[new].mark = mark
        out[i] = new


def renat(table: ct.Table, conn, reply_src, reply_dst, reply_sport, reply_dport, now: int) -> np.ndarray:
    """Give each connection a new reply tuple (its NAT binding), in order:
    remove it, insert it again with the same original tuple, state and
    remaining time, keeping its mark. Returns the new connection id, or -1
    where the new reply tuple clashed (the connection is then put back as
    it was) or conn was -1 / not live. In the statistics a binding is no
    delete and no insert: Linux binds NAT before it confirms the connection,
    which it counts once."""
    conn = _check.array(conn, "conn", np.int32)
    rsrc = _check.array(reply_src, "reply_src", np.uint32)
    rdst = _check.array(reply_dst, "reply_dst", np.uint32)
    rsport = _check.array(reply_sport, "reply_sport", np.uint16)
    rdport = _check.array(reply_dport, "reply_dport", np.uint16)
    n = _check.same_length(conn=conn, reply_src=rsrc, reply_dst=rdst, reply_sport=rsport, reply_dport=rdport)
    _check.in_range(conn, "conn", -1, len(table.conns) - 1)
    now = _check.integer(now, "now", 0, ct.MAX_TIME // 2)
    out = np.empty(n, np.int32)
    _renat(table.conns, table.counters, table.index, table.free_ids, table.stats, table.seed, conn,
           rsrc, rdst, rsport, rdport, np.int64(now), out)
    return out
