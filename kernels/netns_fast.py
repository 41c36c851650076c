"""A node namespace's common case fused, through PREROUTING (conntrack,
kube-proxy's decision, DNAT) and through forwarding (SNAT from the entry,
MTU, neighbour, MACs, VXLAN encap and the outer packet's OUTPUT conntrack),
each in two steps:

- a check, read-only, over the whole group: whether every packet is that
  common case (any other packet: the caller runs its ordinary path for the
  whole group, nothing having been touched);
- an apply, doing exactly what the staged path (kernels.conntrack lookup and
  insert, kernels.flow ct_advance / renat / nat_tuple, kernels.rewrite nat /
  decrement_ttl / set_macs / vxlan_encap) does to those packets, in the
  same order: each stage over the whole group before the next.

The common case: packets of live conntrack entries that change no state
but their timeout (and SEEN_REPLY / ASSURED), or whose ctinfo is
ESTABLISHED; and connections' first packets, which get their entry (and,
at PREROUTING, kube-proxy's decision, made by the caller, and its DNAT
binding) as the staged path gives them. What the staged path does in rare
cases is left to it: a table that may fill (early drop), a first packet
whose reply tuple is taken (a clash, or an expired entry to reap there),
two first packets of a group that are each other's reply.

Tables are the caller's (a conntrack Table's arrays, an lpm Fib's tables,
small sorted arrays for neighbours and the VXLAN FDB); nothing is kept here.
References: tests/reference/netns_fast.py.
"""
from __future__ import annotations

import numpy as np

from kernels import _check, drop
from kernels import conntrack as ct
from kernels import flow
from kernels import lpm
from kernels._jit import AHEAD, jit, prefetch
from kernels.checksum import csum_replace16
from kernels.hashing import udp_flow_src_port
from kernels.rewrite import _get16, _put16, nat_one, vxlan_outer_one

OK = 0
FAIL = 1
A_NONE, A_DNAT, A_REJECT, A_DROP = 0, 1, 2, 3   # kube-proxy's decisions (emu.bulk.decide)

_TCP_CHANGE = flow.SYN | flow.FIN | flow.RST


# --- helpers (one packet) ---------------------------------------------------------------

@jit
def _live_h(conns, index, h, src, dst, sport, dport, proto, now):
    """(conn, direction) of a live, confirmed entry for the tuple (hash h, zone
    0), or (-1, -1); reads only."""
    pos = ct._find(index, conns, h, np.uint16(0), proto, src, dst, sport, dport)
    if pos < 0:
        return -1, -1
    word = index[pos]
    c = ct._slot_conn(word)
    rec = conns[c]
    if rec.expires <= now or (rec.status & ct.IPS_CONFIRMED) == 0:
        return -1, -1
    return c, ct._slot_direction(word)


@jit
def _steady(conns, c, proto, flags):
    """The packet leaves its entry's state as it is (TCP: ESTABLISHED, no SYN/FIN/RST)."""
    if proto == 6:
        return (np.int64(conns[c].state) & 0x7F) == flow.TCP_ESTABLISHED and (np.int64(flags) & _TCP_CHANGE) == 0
    return proto == 17


@jit
def _advance_one(conns, c, d, proto, flags, now):
    """kernels.flow._advance for one packet of a confirmed entry; the ctinfo."""
    rec = conns[c]
    seen_reply = (rec.status & ct.IPS_SEEN_REPLY) != 0 or d == ct.REPLY
    info = flow.ESTABLISHED if seen_reply else flow.NEW
    p = np.int64(proto)
    state = np.int64(rec.state)
    if p == 6:
        nxt = flow.tcp_next(state, flags, d)
        if nxt < 0:
            return flow.INVALID
        state = nxt
    assure = (p == 6 and (state & 0x7F) == flow.TCP_ESTABLISHED) or (p != 6 and seen_reply)
    flow._refresh(rec, state, now + flow._timeout(p, state, seen_reply))
    if assure:
        rec.status |= ct.IPS_ASSURED
    return info


@jit
def _see(conns, c, d):
    """What a lookup's REPLY hit does to the entry (kernels.conntrack._live_match)."""
    if d == ct.REPLY and (conns[c].status & ct.IPS_SEEN_REPLY) == 0:
        conns[c].status |= ct.IPS_SEEN_REPLY


@jit
def _neigh(keys, ifx, ip):
    """Index in `keys` (sorted (interface << 32) | ip) of (ifx, ip), or -1."""
    k = (np.uint64(ifx) << np.uint64(32)) | np.uint64(ip)
    j = np.searchsorted(keys, k)
    if j < len(keys) and keys[j] == k:
        return np.int64(j)
    return np.int64(-1)


@jit
def _set_macs_one(buf, p, d, s):
    for b in range(6):
        shift = np.uint64(8 * (5 - b))
        buf[p + b] = (d >> shift) & np.uint64(0xFF)
        buf[p + 6 + b] = (s >> shift) & np.uint64(0xFF)


# --- PREROUTING ---------------------------------------------------------------------------

@jit
def _tracked_step(conns, c, d, proto, flags):
    """A packet of a live entry the fused path takes: one that leaves its
    state as it is (_steady), or a TCP packet whose step is valid and whose
    ctinfo is ESTABLISHED (a REPLY, or the entry has seen one: kube-proxy and
    the NAT hooks leave it alone, as they leave an unchanged one)."""
    if _steady(conns, c, proto, flags):
        return True
    if proto != 6:
        return False
    if d != ct.REPLY and (conns[c].status & ct.IPS_SEEN_REPLY) == 0:
        return False
    return flow.tcp_next(np.int64(conns[c].state), np.int64(flags), np.int64(d)) >= 0


@jit
def _open_state(proto, flags):
    """kernels.flow._open for one packet: (may open, state, timeout)."""
    p = np.int64(proto)
    f = np.int64(flags)
    s = 0
    if p == 6:
        s = flow.SYN_SENT if (f & flow.SYN) and not (f & flow.ACK) else flow.TCP_ESTABLISHED
    ok = not (p == 6 and flow.tcp_next(flow.NONE, f, ct.ORIGINAL) < 0)
    return ok, s, flow._timeout(p, s, False)


@jit
def _first_of(hashes, rhashes, src, dst, sport, dport, proto, new, first):
    """For each first packet: the first one of the batch with its tuple
    (itself, or an earlier one: the staged path inserts both, the later
    meets the earlier's entry and follows its decision). False when one's
    tuple is the inverse of an earlier one's (the staged path refuses that
    insert as a clash)."""
    m = 0
    for i in range(len(src)):
        if new[i]:
            m += 1
    size = 4
    while size < 4 * m:
        size *= 2
    slots = np.full(size, -1, np.int64)
    mask = size - 1
    for i in range(len(src)):
        if not new[i]:
            continue
        first[i] = i
        for side in range(2):   # the inverse, then the tuple itself, among the earlier ones' tuples
            h = rhashes[i] if side == 0 else hashes[i]
            a, b, x, y = (dst[i], src[i], dport[i], sport[i]) if side == 0 else (src[i], dst[i], sport[i], dport[i])
            k = np.int64(h & np.uint64(mask))
            while slots[k] >= 0:
                j = slots[k]
                if proto[j] == proto[i] and src[j] == a and dst[j] == b and sport[j] == x and dport[j] == y:
                    if side == 0:
                        return False
                    first[i] = j
                    break
                k = (k + 1) & mask
            if side == 1 and first[i] == i:
                slots[k] = i
    return True


@jit
def _insert_firsts(conns, counters, index, free_ids, stats, seed, at, src, dst, sport, dport, proto, state, timeout,
                   now, conn, direction):
    """The staged conntrack hook's part for first packets (their tuples,
    state and timeout; `at`: their places in the group): its lookups reap
    an expired entry at each tuple, then one insert of them all in order
    (reply tuple: the inverse; a later packet of the same tuple meets the
    earlier's entry). Writes conn and direction (ORIGINAL) at `at`; FAIL
    if an insert was refused (the checks rule that out)."""
    m = len(at)
    z = np.zeros(m, np.uint16)
    hashes = ct._hashes(z, src, dst, sport, dport, proto, seed)
    for k in range(m):
        prefetch(index, ct._home(hashes[k + AHEAD], index))
        h = hashes[k]
        pos = ct._find(index, conns, h, np.uint16(0), proto[k], src[k], dst[k], sport[k], dport[k])
        if pos >= 0:   # not live, or the check would not have called it a first packet
            ct._expire_conn(conns, counters, index, free_ids, stats, seed, ct._slot_conn(index[pos]))
    got, d = np.empty(m, np.int32), np.empty(m, np.int8)
    created, refused = np.empty(m, np.bool_), np.empty(m, np.uint8)
    ct._track(conns, counters, index, free_ids, stats, seed, ct._INSERT, z, src, dst, sport, dport, proto,
              dst, src, dport, sport, state, timeout, now, got, d, created, refused)
    for k in range(m):
        if refused[k] != 0:
            return FAIL
        conn[at[k]] = got[k]
        direction[at[k]] = ct.ORIGINAL
    return OK


@jit
def _pre_check(conns, index, stats, seed, src, dst, sport, dport, proto, flags, now, conn, direction, maybe_new,
               new, first):
    zone = np.zeros(len(src), np.uint16)
    hashes = ct._hashes(zone, src, dst, sport, dport, proto, seed)
    # the inverse tuples' hashes: a first packet looks its up (fetched ahead with the others)
    rhashes = ct._hashes(zone, dst, src, dport, sport, proto, seed)
    n_new = 0
    for i in range(len(src)):
        ct._prefetch_ahead(conns, index, hashes[i + 2 * AHEAD], hashes[i + AHEAD], rhashes[i + AHEAD])
        c, d = _live_h(conns, index, hashes[i], src[i], dst[i], sport[i], dport[i], proto[i], now)
        if c < 0:   # a first packet: its entry made here, if it may open one and its inverse is free
            ok, _, _ = _open_state(proto[i], flags[i])
            if not ok:
                return FAIL
            same = src[i] == dst[i] and sport[i] == dport[i]
            if not same and ct._find(index, conns, rhashes[i], np.uint16(0), proto[i], dst[i], src[i], dport[i],
                                     sport[i]) >= 0:
                return FAIL   # the reply tuple is taken (a clash, or an expired entry to reap)
            new[i] = True
            n_new += 1
            continue
        if not _tracked_step(conns, c, d, proto[i], flags[i]):
            return FAIL
        conn[i] = c
        direction[i] = d
        maybe_new[i] = (conns[c].status & ct.IPS_SEEN_REPLY) == 0 and d != ct.REPLY
    if n_new:
        if stats[ct.STAT_COUNT] + n_new > len(conns):
            return FAIL   # the table may fill: early drop is the staged path's
        if not _first_of(hashes, rhashes, src, dst, sport, dport, proto, new, first):
            return FAIL
    return OK


@jit
def _pre_apply(conns, counters, index, free_ids, stats, seed, conn, direction, new, act, bip, bport, bind, proto,
               flags, now, buf, start, l3_off, l4_off, src, dst, sport, dport, info, verdict):
    n = len(conn)
    # the conntrack hook: lookups (SEEN_REPLY), then the first packets' entries, then every packet's step
    for i in range(n):
        if not new[i]:
            _see(conns, conn[i], direction[i])
    at = np.nonzero(new)[0]
    m = len(at)
    if m:
        a_src, a_dst = np.empty(m, np.uint32), np.empty(m, np.uint32)
        a_sport, a_dport = np.empty(m, np.uint16), np.empty(m, np.uint16)
        a_proto, a_state, a_timeout = np.empty(m, np.uint8), np.empty(m, np.uint8), np.empty(m, np.int64)
        for k in range(m):
            i = at[k]
            a_src[k], a_dst[k], a_sport[k], a_dport[k], a_proto[k] = src[i], dst[i], sport[i], dport[i], proto[i]
            _, a_state[k], a_timeout[k] = _open_state(proto[i], flags[i])
        if _insert_firsts(conns, counters, index, free_ids, stats, seed, at, a_src, a_dst, a_sport, a_dport,
                          a_proto, a_state, a_timeout, now, conn, direction) != OK:
            return FAIL   # the check ruled this out
    for i in range(n):
        info[i] = _advance_one(conns, conn[i], np.int64(direction[i]), proto[i], flags[i], now)
    # kube-proxy's decisions for the first packets (the caller's), then the DNAT hook's bindings, in order
    nb = 0
    for i in range(n):
        verdict[i] = 0
        if not new[i]:
            continue
        if act[i] == A_REJECT:
            verdict[i] = drop.SERVICE_NO_ENDPOINTS
        elif act[i] == A_DROP:
            verdict[i] = drop.SERVICE_NO_LOCAL
        elif act[i] == A_DNAT and bind and info[i] == flow.NEW:
            nb += 1
    if nb:
        at = np.empty(nb, np.int64)
        b_conn = np.empty(nb, np.int32)
        r_src, r_dst = np.empty(nb, np.uint32), np.empty(nb, np.uint32)
        r_sport, r_dport = np.empty(nb, np.uint16), np.empty(nb, np.uint16)
        k = 0
        for i in range(n):
            if new[i] and act[i] == A_DNAT and bind and info[i] == flow.NEW:
                rec = conns[conn[i]]
                at[k], b_conn[k] = i, conn[i]
                r_src[k], r_dst[k], r_sport[k], r_dport[k] = bip[i], rec.reply_dst, bport[i], rec.reply_dport
                k += 1
        got = np.empty(nb, np.int32)
        flow._renat(conns, counters, index, free_ids, stats, seed, b_conn, r_src, r_dst, r_sport, r_dport, now, got)
        for k in range(nb):
            if got[k] < 0:
                verdict[at[k]] = drop.CT_CLASH
            else:
                conn[at[k]] = got[k]
    # the DNAT hook's rewrite, from the entry (the frames' headers fetched AHEAD packets on)
    for i in range(n):
        if i + AHEAD < n:
            prefetch(buf, start[i + AHEAD] + np.int64(l4_off[i + AHEAD]))
        if verdict[i] != 0:
            continue
        c = conn[i]
        rec = conns[c]
        original = src[i] == rec.orig_src and sport[i] == rec.orig_sport
        st = rec.status
        if original and st & ct.IPS_DST_NAT:
            ndst, ndport = rec.reply_src, rec.reply_sport
        elif not original and st & ct.IPS_SRC_NAT:
            ndst, ndport = rec.orig_src, rec.orig_sport
        else:
            continue
        p = start[i] + np.int64(l3_off[i])
        q = start[i] + np.int64(l4_off[i])
        nat_one(buf, p, q, proto[i], src[i], ndst, sport[i], ndport)
        dst[i] = ndst
        dport[i] = ndport
    return OK


def prerouting_check(table: ct.Table, src, dst, sport, dport, proto, tcp_flags, now: int):
    """Whether every packet (zone 0) is the common case: a packet of a live,
    confirmed entry whose state it leaves as it is (TCP: ESTABLISHED without
    SYN/FIN/RST; UDP) or whose ctinfo is ESTABLISHED with a valid TCP step;
    or a connection's first packet (no entry; it may open one; its reply
    tuple free; no earlier first packet of the batch with the inverse
    tuple; room in the table for all of them). Returns (ok, conn int32,
    direction int8, maybe_new bool: NEW unless a REPLY packet of the batch
    marks the entry SEEN_REPLY first, new bool: a first packet, first
    int64: for a first packet, the batch's first packet with its tuple,
    whose decision it follows). Touches nothing."""
    src = _check.array(src, "src", np.uint32)
    dst = _check.array(dst, "dst", np.uint32)
    sport = _check.array(sport, "sport", np.uint16)
    dport = _check.array(dport, "dport", np.uint16)
    proto = _check.array(proto, "proto", np.uint8)
    tcp_flags = _check.array(tcp_flags, "tcp_flags", np.uint8)
    n = _check.same_length(src=src, dst=dst, sport=sport, dport=dport, proto=proto, tcp_flags=tcp_flags)
    now = _check.integer(now, "now", 0, ct.MAX_TIME // 2)
    conn, direction = np.full(n, -1, np.int32), np.full(n, -1, np.int8)
    maybe_new, new, first = np.zeros(n, np.bool_), np.zeros(n, np.bool_), np.full(n, -1, np.int64)
    ok = _pre_check(table.conns, table.index, table.stats, table.seed, src, dst, sport, dport, proto, tcp_flags,
                    np.int64(now), conn, direction, maybe_new, new, first) == OK
    return ok, conn, direction, maybe_new, new, first


def _offsets(buf, start, l3_off, l4_off, n, need_l4):
    start = _check.array(start, "start", np.int64)
    l3_off = _check.array(l3_off, "l3_off", np.int32)
    l4_off = _check.array(l4_off, "l4_off", np.int32)
    _check.same_length(start=start, l3_off=l3_off, l4_off=l4_off, n=np.empty(n))
    if n:
        if l3_off.min() < 0 or l4_off.min() < 0:
            raise ValueError("l3_off/l4_off: negative (no header)")
        if start.min() < 0 or np.max(start + l3_off) + 20 > len(buf) or np.max(start + l4_off) + need_l4 > len(buf):
            raise ValueError("a header lies outside buf")
    return start, l3_off, l4_off


def prerouting_apply(table: ct.Table, conn, direction, new, act, bip, bport, bind: bool, proto, tcp_flags, now: int,
                     buf, start, l3_off, l4_off, src, dst, sport, dport):
    """What the staged PREROUTING does to packets `prerouting_check`
    accepted: conntrack (lookups with SEEN_REPLY, the first packets' entries
    inserted in order, every packet's step), kube-proxy's decisions for the
    first packets (act: A_NONE, A_DNAT to bip:bport, A_REJECT, A_DROP; the
    caller made them, in order), the DNAT hook's bindings (kernels.flow
    renat, in order; only with `bind`: the hook has a rule) and its rewrite.
    conn and direction (the first packets' entries, their bindings), dst and
    dport (NAT) are updated in place. Returns (ctinfo, verdict) per packet:
    verdict 0, SERVICE_NO_ENDPOINTS (REJECT: the caller sends the ICMP
    error), SERVICE_NO_LOCAL or CT_CLASH (the binding clashed)."""
    conn = _check.updated(conn, "conn", np.int32)
    direction = _check.updated(direction, "direction", np.int8)
    new = _check.array(new, "new", np.bool_)
    act = _check.array(act, "act", np.uint8)
    bip = _check.array(bip, "bip", np.uint32)
    bport = _check.array(bport, "bport", np.uint16)
    proto = _check.array(proto, "proto", np.uint8)
    tcp_flags = _check.array(tcp_flags, "tcp_flags", np.uint8)
    buf = _check.array(buf, "buf", np.uint8)
    for name, x, dt in (("src", src, np.uint32), ("sport", sport, np.uint16)):
        _check.array(x, name, dt)
    dst, dport = _check.updated(dst, "dst", np.uint32), _check.updated(dport, "dport", np.uint16)
    n = _check.same_length(conn=conn, direction=direction, new=new, act=act, bip=bip, bport=bport, proto=proto,
                           tcp_flags=tcp_flags, src=src, dst=dst, sport=sport, dport=dport)
    if n:
        _check.in_range(conn[~new], "conn", 0, len(table.conns) - 1)
        _check.in_range(direction[~new], "direction", 0, 1)
        _check.in_range(act, "act", A_NONE, A_DROP)
        if ct.count(table) + int(new.sum()) > len(table.conns):
            raise ValueError("new: no room in the table for every first packet (prerouting_check rules it out)")
    now = _check.integer(now, "now", 0, ct.MAX_TIME // 2)
    start, l3_off, l4_off = _offsets(buf, start, l3_off, l4_off, n, 18)
    info, verdict = np.empty(n, np.uint8), np.empty(n, np.uint8)
    if _pre_apply(table.conns, table.counters, table.index, table.free_ids, table.stats, table.seed, conn,
                  direction, new, act, bip, bport, bool(bind), proto, tcp_flags, np.int64(now), buf, start, l3_off,
                  l4_off, src, dst, sport, dport, info, verdict) != OK:
        raise ValueError("new: a first packet's tuple is taken (prerouting_check rules it out)")
    return info, verdict


# --- forward: POSTROUTING, neighbour, MACs, VXLAN encap + outer OUTPUT conntrack -----------

@jit
def _fwd_check(conns, index, stats, seed, fib, routes, route_dev, route_via, if_mtu, if_vxlan, nb_keys, nb_macs,
               fdb_keys, fdb_remote, vx_if, local_ip, vport, src, dst, sport, proto, ip_len, conn, ctinfo,
               mark, masq_mark, fhash, times, start, length, headroom,
               out_if, nb, nsrc, nsport, snat, remote, osport, o_if, o_nb, o_conn, o_dir, o_new, o_miss):
    n = len(src)
    now_out = np.int64(-1)
    for i in range(n):
        c = conn[i]
        if c < 0 or c >= len(conns):
            return FAIL
        if ctinfo[i] == flow.NEW and (mark[i] & masq_mark) != 0:
            return FAIL   # the masquerade rule may bind: the staged path
        rec = conns[c]
        nsrc[i], nsport[i], snat[i] = src[i], sport[i], False
        if rec.status & ct.IPS_CONFIRMED:
            original = src[i] == rec.orig_src and sport[i] == rec.orig_sport
            if original and rec.status & ct.IPS_SRC_NAT:
                nsrc[i], nsport[i], snat[i] = rec.reply_dst, rec.reply_dport, True
            elif not original and rec.status & ct.IPS_DST_NAT:
                nsrc[i], nsport[i], snat[i] = rec.orig_dst, rec.orig_dport, True
        r = routes[i]
        if r < 0 or r >= len(route_dev):
            return FAIL
        f = route_dev[r]
        if f < 0 or f >= len(if_mtu):
            return FAIL
        out_if[i] = f
        if np.int64(ip_len[i]) > if_mtu[f]:
            return FAIL
        nh = route_via[r]
        if nh == 0:
            nh = dst[i]
        j = _neigh(nb_keys, f, nh)
        if j < 0:
            return FAIL
        nb[i] = j
        o_conn[i] = -1
        if not if_vxlan[f]:
            continue
        if f != vx_if or fhash[i] == 0:
            return FAIL
        k = np.searchsorted(fdb_keys, nb_macs[j])
        if k >= len(fdb_keys) or fdb_keys[k] != nb_macs[j] or fdb_remote[k] == 0:
            return FAIL
        rem = fdb_remote[k]
        remote[i] = rem
        if start[i] < headroom or length[i] + 50 > 0xFFFF - 20:
            return FAIL
        osport[i] = udp_flow_src_port(fhash[i], 0, 0)
        orr = lpm.lookup_one(fib, 0, rem)
        if orr < 0 or orr >= len(route_dev):
            return FAIL
        of = route_dev[orr]
        if of < 0 or of >= len(if_mtu) or if_vxlan[of]:
            return FAIL
        o_if[i] = of
        onh = route_via[orr]
        if onh == 0:
            onh = rem
        jj = _neigh(nb_keys, of, onh)
        if jj < 0:
            return FAIL
        o_nb[i] = jj
        if times[i] > now_out:
            now_out = times[i]
    hashes = np.zeros(n + 2 * AHEAD, np.uint64)
    rhashes = np.zeros(n + 2 * AHEAD, np.uint64)   # the inverse tuples': a first packet looks its up
    for i in range(n):
        if if_vxlan[out_if[i]]:
            hashes[i] = ct._hash(np.uint16(0), np.uint8(17), np.uint32(local_ip), remote[i], np.uint16(osport[i]),
                                 np.uint16(vport), seed)
            rhashes[i] = ct._hash(np.uint16(0), np.uint8(17), remote[i], np.uint32(local_ip), np.uint16(vport),
                                  np.uint16(osport[i]), seed)
    n_miss = 0
    for i in range(n):
        ct._prefetch_ahead(conns, index, hashes[i + 2 * AHEAD], hashes[i + AHEAD], rhashes[i + AHEAD])
        if not if_vxlan[out_if[i]]:
            continue
        c, d = _live_h(conns, index, hashes[i], np.uint32(local_ip), remote[i], np.uint16(osport[i]),
                       np.uint16(vport), np.uint8(17), now_out)
        if c < 0:   # the outer flow's first packet: its entry made at OUTPUT, if its reply tuple is free
            if remote[i] == local_ip:
                return FAIL
            hr = rhashes[i]
            if ct._find(index, conns, hr, np.uint16(0), np.uint8(17), remote[i], np.uint32(local_ip),
                        np.uint16(vport), np.uint16(osport[i])) >= 0:
                return FAIL
            o_miss[i] = True
            o_new[i] = True
            n_miss += 1
            continue
        rec = conns[c]
        original = np.uint32(local_ip) == rec.orig_src and np.uint16(osport[i]) == rec.orig_sport
        if (original and rec.status & ct.IPS_DST_NAT) or (not original and rec.status & ct.IPS_SRC_NAT):
            return FAIL  # an outer DNAT: the staged path
        o_conn[i] = c
        o_dir[i] = d
        o_new[i] = (rec.status & ct.IPS_SEEN_REPLY) == 0 and d != ct.REPLY
    if stats[ct.STAT_COUNT] + n_miss > len(conns):
        return FAIL   # the table may fill: early drop is the staged path's
    return OK


@jit
def _fwd_apply(conns, counters, index, free_ids, stats, seed, buf, start, length, l3_off, l4_off, proto, dst, dport, out_if, nb, nsrc, nsport, snat,
               nb_macs, if_macs, if_vxlan, remote, osport, o_if, o_nb, o_conn, o_dir, o_miss, ip_ids, local_ip,
               vport, vni, ttl, now_out):
    n = len(out_if)
    j = 0
    for i in range(n):
        if i + AHEAD < n:   # the frame's first line and the line the outer header goes to
            prefetch(buf, start[i + AHEAD])
            if if_vxlan[out_if[i + AHEAD]]:
                prefetch(buf, start[i + AHEAD] - 50)
        p = start[i]
        l3 = p + np.int64(l3_off[i])
        old = _get16(buf, l3 + 8)
        buf[l3 + 8] = (np.int64(buf[l3 + 8]) - 1) & 0xFF
        _put16(buf, l3 + 10, csum_replace16(_get16(buf, l3 + 10), old, _get16(buf, l3 + 8)))
        if snat[i]:
            nat_one(buf, l3, p + np.int64(l4_off[i]), proto[i], nsrc[i], dst[i], nsport[i], dport[i])
        f = out_if[i]
        _set_macs_one(buf, p, nb_macs[nb[i]], if_macs[f])
        if if_vxlan[f]:
            q = p - 50
            vxlan_outer_one(buf, q, length[i], local_ip, remote[i], osport[i], vport, vni, ttl, ip_ids[j])
            j += 1
            start[i] = q
            length[i] = length[i] + 50
    # the outer packets' OUTPUT conntrack: lookups (SEEN_REPLY), the first packets' entries in order, steps
    for i in range(n):
        if not o_miss[i] and o_conn[i] >= 0:
            _see(conns, o_conn[i], np.int64(o_dir[i]))
    at = np.nonzero(o_miss)[0]
    m = len(at)
    if m:
        a_dst, a_sport = remote[at], osport[at].astype(np.uint16)
        if _insert_firsts(conns, counters, index, free_ids, stats, seed, at, np.full(m, local_ip, np.uint32),
                          a_dst, a_sport, np.full(m, vport, np.uint16), np.full(m, 17, np.uint8),
                          np.zeros(m, np.uint8), np.full(m, flow._timeout(17, 0, False), np.int64), now_out,
                          o_conn, o_dir) != OK:
            return FAIL   # the check ruled this out
    for i in range(n):
        if o_conn[i] >= 0:
            _advance_one(conns, o_conn[i], np.int64(o_dir[i]), 17, 0, now_out)
    for i in range(n):
        if o_conn[i] >= 0:
            _set_macs_one(buf, start[i], nb_macs[o_nb[i]], if_macs[o_if[i]])
    return OK


class Forward:
    """What `forward_check` found, for `forward_apply`."""

    def __init__(self, n):
        self.out_if = np.zeros(n, np.int32)
        self.nb = np.zeros(n, np.int64)
        self.nsrc = np.zeros(n, np.uint32)
        self.nsport = np.zeros(n, np.uint16)
        self.snat = np.zeros(n, np.bool_)
        self.remote = np.zeros(n, np.uint32)
        self.osport = np.zeros(n, np.int64)
        self.o_if = np.zeros(n, np.int32)
        self.o_nb = np.zeros(n, np.int64)
        self.o_conn = np.full(n, -1, np.int32)
        self.o_dir = np.zeros(n, np.int8)
        self.o_new = np.zeros(n, np.bool_)
        self.o_miss = np.zeros(n, np.bool_)     # a first packet of its outer flow: an entry to make
        self.now_out = -1


def forward_check(table: ct.Table, fib: lpm.Fib, routes, route_dev, route_via, if_mtu, if_vxlan, nb_keys, nb_macs,
                  fdb_keys, fdb_remote, vx_if: int, local_ip: int, vport: int, src, dst, sport, proto, ip_len,
                  conn, ctinfo, mark, masq_mark: int, fhash, times, start, length, headroom: int):
    """Whether every forwarded packet (route index `routes`, TTL already
    checked) is the common case: a tracked packet the source NAT hook does
    not bind, within its interface's MTU, a resolved neighbour (nb_keys:
    sorted (interface << 32) | next hop, nb_macs), and for the VXLAN
    interface `vx_if`: an FDB entry, a route and neighbour for the remote,
    a live outer conntrack entry without DNAT (zone 0, at the latest time
    of the encapsulated packets), or none yet with its reply tuple free and
    room in the table (fw.o_miss: forward_apply makes it, as the OUTPUT
    hook's conntrack would). Returns (ok, Forward); touches nothing."""
    arrs = {}
    for name, x, dt in (("routes", routes, np.int32), ("route_dev", route_dev, np.int32),
                        ("route_via", route_via, np.uint32), ("if_mtu", if_mtu, np.int64),
                        ("if_vxlan", if_vxlan, np.bool_), ("nb_keys", nb_keys, np.uint64),
                        ("nb_macs", nb_macs, np.uint64), ("fdb_keys", fdb_keys, np.uint64),
                        ("fdb_remote", fdb_remote, np.uint32), ("src", src, np.uint32), ("dst", dst, np.uint32),
                        ("sport", sport, np.uint16), ("proto", proto, np.uint8), ("ip_len", ip_len, np.uint16),
                        ("conn", conn, np.int32), ("ctinfo", ctinfo, np.uint8), ("mark", mark, np.uint32),
                        ("fhash", fhash, np.uint32), ("times", times, np.int64), ("start", start, np.int64),
                        ("length", length, np.int64)):
        arrs[name] = _check.array(x, name, dt)
    _check.same_length(routes=arrs["routes"], src=arrs["src"], dst=arrs["dst"], sport=arrs["sport"],
                       proto=arrs["proto"], ip_len=arrs["ip_len"], conn=arrs["conn"], ctinfo=arrs["ctinfo"],
                       mark=arrs["mark"], fhash=arrs["fhash"], times=arrs["times"], start=arrs["start"],
                       length=arrs["length"])
    _check.same_length(route_dev=arrs["route_dev"], route_via=arrs["route_via"])
    _check.same_length(if_mtu=arrs["if_mtu"], if_vxlan=arrs["if_vxlan"])
    _check.same_length(nb_keys=arrs["nb_keys"], nb_macs=arrs["nb_macs"])
    _check.same_length(fdb_keys=arrs["fdb_keys"], fdb_remote=arrs["fdb_remote"])
    for name in ("nb_keys", "fdb_keys"):
        k = arrs[name]
        if len(k) > 1 and not (k[1:] > k[:-1]).all():
            raise ValueError(f"{name}: must be sorted and distinct")
    if not isinstance(fib, lpm.Fib) or fib.count != 1:
        raise ValueError("fib: expected a one-table lpm.Fib")
    _check.integer(vx_if, "vx_if", -1, 2**31 - 1)
    _check.integer(local_ip, "local_ip", 0, 2**32 - 1)
    _check.integer(vport, "vport", 0, 0xFFFF)
    _check.integer(masq_mark, "masq_mark", 0, 2**32 - 1)
    _check.integer(headroom, "headroom", 50, 2**31 - 1)
    n = len(arrs["src"])
    out = Forward(n)
    a = arrs
    ok = _fwd_check(table.conns, table.index, table.stats, table.seed, fib.tables, a["routes"], a["route_dev"], a["route_via"],
                    a["if_mtu"], a["if_vxlan"], a["nb_keys"], a["nb_macs"], a["fdb_keys"], a["fdb_remote"],
                    np.int64(vx_if), np.int64(local_ip), np.int64(vport), a["src"], a["dst"], a["sport"],
                    a["proto"], a["ip_len"], a["conn"], a["ctinfo"], a["mark"], np.uint32(masq_mark), a["fhash"],
                    a["times"], a["start"], a["length"], np.int64(headroom),
                    out.out_if, out.nb, out.nsrc, out.nsport, out.snat, out.remote, out.osport, out.o_if,
                    out.o_nb, out.o_conn, out.o_dir, out.o_new, out.o_miss) == OK
    vx = (out.o_conn >= 0) | out.o_miss
    out.now_out = int(a["times"][vx].max()) if vx.any() else -1
    return ok, out


def forward_apply(table: ct.Table, fw: Forward, buf, start, length, l3_off, l4_off, proto, dst, dport, nb_macs,
                  if_macs, if_vxlan, ip_ids, local_ip: int, vport: int, vni: int, ttl: int) -> None:
    """What forwarding does to packets `forward_check` accepted (fw): TTL - 1,
    source NAT from the entry, MACs, and for the VXLAN ones: the encap
    (ip_ids: one per encapsulated packet, in order; start/length updated in
    place), the outer entries' lookup (SEEN_REPLY), the missing ones
    inserted in order (a later packet of the same outer flow meets the
    earlier's entry), every outer packet's step at fw.now_out, the outer MACs."""
    buf = _check.array(buf, "buf", np.uint8)
    start = _check.array(start, "start", np.int64)
    length = _check.array(length, "length", np.int64)
    proto = _check.array(proto, "proto", np.uint8)
    dst = _check.array(dst, "dst", np.uint32)
    dport = _check.array(dport, "dport", np.uint16)
    nb_macs = _check.array(nb_macs, "nb_macs", np.uint64)
    if_macs = _check.array(if_macs, "if_macs", np.uint64)
    if_vxlan = _check.array(if_vxlan, "if_vxlan", np.bool_)
    ip_ids = _check.array(ip_ids, "ip_ids", np.uint16)
    n = _check.same_length(start=start, length=length, proto=proto, dst=dst, dport=dport, out_if=fw.out_if)
    _check.same_length(if_macs=if_macs, if_vxlan=if_vxlan)
    start_, l3_off, l4_off = _offsets(buf, start, l3_off, l4_off, n, 18)
    vx = (fw.o_conn >= 0) | fw.o_miss
    if int(vx.sum()) != len(ip_ids):
        raise ValueError("ip_ids: one per encapsulated packet")
    if n:
        _check.in_range(fw.out_if, "out_if", 0, len(if_macs) - 1)
        _check.in_range(fw.nb, "nb", 0, len(nb_macs) - 1)
        if vx.any():
            _check.in_range(fw.o_if[vx], "o_if", 0, len(if_macs) - 1)
            _check.in_range(fw.o_nb[vx], "o_nb", 0, len(nb_macs) - 1)
            _check.in_range(fw.o_conn, "o_conn", -1, len(table.conns) - 1)
            if start[vx].min() < 50 or np.max(start[vx] + length[vx]) > len(buf):
                raise ValueError("no headroom for the VXLAN header, or a frame past the end of buf")
        if (if_vxlan[fw.out_if] != vx).any():
            raise ValueError("fw does not match if_vxlan")
    if ct.count(table) + int(fw.o_miss.sum()) > len(table.conns):
        raise ValueError("fw: no room in the table for the outer first packets (forward_check rules it out)")
    if _fwd_apply(table.conns, table.counters, table.index, table.free_ids, table.stats, table.seed, buf, start,
                  length, l3_off, l4_off, proto, dst, dport, fw.out_if, fw.nb, fw.nsrc, fw.nsport, fw.snat, nb_macs,
                  if_macs, if_vxlan, fw.remote, fw.osport, fw.o_if, fw.o_nb, fw.o_conn, fw.o_dir, fw.o_miss, ip_ids,
                  np.int64(local_ip), np.int64(vport), np.int64(vni), np.int64(ttl), np.int64(fw.now_out)) != OK:
        raise ValueError("fw: an outer first packet's tuple is taken (forward_check rules it out)")
