"""A node namespace's common case fused: packets of live conntrack entries
that change no state but their timeout (and SEEN_REPLY / ASSURED), through
PREROUTING (conntrack + DNAT from the entry) and through forwarding (SNAT
from the entry, MTU, neighbour, MACs, VXLAN encap and the outer packet's
OUTPUT conntrack), each in two steps:

- a check, read-only, over the whole group: whether every packet is that
  common case (any other packet: the caller runs its ordinary path for the
  whole group, nothing having been touched);
- an apply, doing exactly what the staged path (kernels.conntrack lookup,
  kernels.flow ct_advance / nat_tuple, kernels.rewrite nat / decrement_ttl /
  set_macs / vxlan_encap) does to those packets, in the same order.

Tables are the caller's (a conntrack Table's arrays, an lpm Fib's tables,
small sorted arrays for neighbours and the VXLAN FDB); nothing is kept here.
"""
from __future__ import annotations

import numpy as np

from kernels import _check
from kernels import conntrack as ct
from kernels import flow
from kernels import lpm
from kernels._jit import jit
from kernels.checksum import csum_replace16
from kernels.hashing import udp_flow_src_port
from kernels.rewrite import _get16, _put16, nat_one, vxlan_outer_one

OK = 0
FAIL = 1

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
def _pre_check(conns, index, seed, src, dst, sport, dport, proto, flags, now, conn, direction, maybe_new):
    zone = np.zeros(len(src), np.uint16)
    hashes = ct._hashes(zone, src, dst, sport, dport, proto, seed)
    ahead = ct.PREFETCH_AHEAD
    for i in range(len(src)):
        ct._prefetch_ahead(conns, index, hashes[i + 2 * ahead], hashes[i + ahead], hashes[i + ahead])
        c, d = _live_h(conns, index, hashes[i], src[i], dst[i], sport[i], dport[i], proto[i], now)
        if c < 0 or not _steady(conns, c, proto[i], flags[i]):
            return FAIL
        conn[i] = c
        direction[i] = d
        maybe_new[i] = (conns[c].status & ct.IPS_SEEN_REPLY) == 0 and d != ct.REPLY
    return OK


@jit
def _pre_apply(conns, conn, direction, proto, flags, now, buf, start, l3_off, l4_off, src, dst, sport, dport, info):
    for i in range(len(conn)):
        _see(conns, conn[i], direction[i])
    for i in range(len(conn)):
        c = conn[i]
        info[i] = _advance_one(conns, c, np.int64(direction[i]), proto[i], flags[i], now)
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


def prerouting_check(table: ct.Table, src, dst, sport, dport, proto, tcp_flags, now: int):
    """Whether every packet (zone 0) has a live, confirmed entry whose state it
    leaves as it is (TCP: ESTABLISHED without SYN/FIN/RST; UDP). Returns
    (ok, conn int32, direction int8, maybe_new bool: NEW unless a REPLY
    packet of the batch marks the entry SEEN_REPLY first). Touches nothing."""
    src = _check.array(src, "src", np.uint32)
    dst = _check.array(dst, "dst", np.uint32)
    sport = _check.array(sport, "sport", np.uint16)
    dport = _check.array(dport, "dport", np.uint16)
    proto = _check.array(proto, "proto", np.uint8)
    tcp_flags = _check.array(tcp_flags, "tcp_flags", np.uint8)
    n = _check.same_length(src=src, dst=dst, sport=sport, dport=dport, proto=proto, tcp_flags=tcp_flags)
    now = _check.integer(now, "now", 0, ct.MAX_TIME // 2)
    conn, direction, maybe_new = np.full(n, -1, np.int32), np.full(n, -1, np.int8), np.zeros(n, np.bool_)
    ok = _pre_check(table.conns, table.index, table.seed, src, dst, sport, dport, proto, tcp_flags,
                    np.int64(now), conn, direction, maybe_new) == OK
    return ok, conn, direction, maybe_new


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


def prerouting_apply(table: ct.Table, conn, direction, proto, tcp_flags, now: int, buf, start, l3_off, l4_off,
                     src, dst, sport, dport) -> np.ndarray:
    """What conntrack lookup (SEEN_REPLY), ct_advance and the DNAT hook's
    nat_tuple + rewrite do to packets `prerouting_check` accepted. dst and
    dport are updated in place (NAT); returns ctinfo per packet."""
    conn = _check.array(conn, "conn", np.int32)
    direction = _check.array(direction, "direction", np.int8)
    proto = _check.array(proto, "proto", np.uint8)
    tcp_flags = _check.array(tcp_flags, "tcp_flags", np.uint8)
    buf = _check.array(buf, "buf", np.uint8)
    for name, x, dt in (("src", src, np.uint32), ("dst", dst, np.uint32), ("sport", sport, np.uint16),
                        ("dport", dport, np.uint16)):
        _check.array(x, name, dt)
        if not x.flags.c_contiguous:
            raise ValueError(f"{name}: must be C-contiguous (updated in place)")
    n = _check.same_length(conn=conn, direction=direction, proto=proto, tcp_flags=tcp_flags, src=src, dst=dst,
                           sport=sport, dport=dport)
    _check.in_range(conn, "conn", 0, len(table.conns) - 1)
    _check.in_range(direction, "direction", 0, 1)
    now = _check.integer(now, "now", 0, ct.MAX_TIME // 2)
    start, l3_off, l4_off = _offsets(buf, start, l3_off, l4_off, n, 18)
    info = np.empty(n, np.uint8)
    _pre_apply(table.conns, conn, direction, proto, tcp_flags, np.int64(now), buf, start, l3_off, l4_off,
               src, dst, sport, dport, info)
    return info


# --- forward: POSTROUTING, neighbour, MACs, VXLAN encap + outer OUTPUT conntrack -----------

@jit
def _fwd_check(conns, index, seed, fib, routes, route_dev, route_via, if_mtu, if_vxlan, nb_keys, nb_macs,
               fdb_keys, fdb_remote, vx_if, local_ip, vport, src, dst, sport, proto, ip_len, conn, ctinfo,
               mark, masq_mark, fhash, times, start, length, headroom,
               out_if, nb, nsrc, nsport, snat, remote, osport, o_if, o_nb, o_conn, o_dir, o_new):
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
    ahead = ct.PREFETCH_AHEAD
    hashes = np.zeros(n + 2 * ahead, np.uint64)
    for i in range(n):
        if if_vxlan[out_if[i]]:
            hashes[i] = ct._hash(np.uint16(0), np.uint8(17), np.uint32(local_ip), remote[i], np.uint16(osport[i]),
                                 np.uint16(vport), seed)
    for i in range(n):
        ct._prefetch_ahead(conns, index, hashes[i + 2 * ahead], hashes[i + ahead], hashes[i + ahead])
        if not if_vxlan[out_if[i]]:
            continue
        c, d = _live_h(conns, index, hashes[i], np.uint32(local_ip), remote[i], np.uint16(osport[i]),
                       np.uint16(vport), np.uint8(17), now_out)
        if c < 0:
            return FAIL
        rec = conns[c]
        original = np.uint32(local_ip) == rec.orig_src and np.uint16(osport[i]) == rec.orig_sport
        if (original and rec.status & ct.IPS_DST_NAT) or (not original and rec.status & ct.IPS_SRC_NAT):
            return FAIL  # an outer DNAT: the staged path
        o_conn[i] = c
        o_dir[i] = d
        o_new[i] = (rec.status & ct.IPS_SEEN_REPLY) == 0 and d != ct.REPLY
    return OK


@jit
def _fwd_apply(conns, buf, start, length, l3_off, l4_off, proto, dst, dport, out_if, nb, nsrc, nsport, snat,
               nb_macs, if_macs, if_vxlan, remote, osport, o_if, o_nb, o_conn, o_dir, ip_ids, local_ip, vport,
               vni, ttl, now_out):
    n = len(out_if)
    j = 0
    ahead = ct.PREFETCH_AHEAD
    for i in range(n):
        if i + ahead < n:   # the frame's first line and the line the outer header goes to
            ct._prefetch(buf, start[i + ahead])
            if if_vxlan[out_if[i + ahead]]:
                ct._prefetch(buf, start[i + ahead] - 50)
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
    for i in range(n):
        if o_conn[i] >= 0:
            _see(conns, o_conn[i], np.int64(o_dir[i]))
    for i in range(n):
        if o_conn[i] >= 0:
            _advance_one(conns, o_conn[i], np.int64(o_dir[i]), 17, 0, now_out)
    for i in range(n):
        if o_conn[i] >= 0:
            _set_macs_one(buf, start[i], nb_macs[o_nb[i]], if_macs[o_if[i]])


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
    of the encapsulated packets). Returns (ok, Forward); touches nothing."""
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
    ok = _fwd_check(table.conns, table.index, table.seed, fib.tables, a["routes"], a["route_dev"], a["route_via"],
                    a["if_mtu"], a["if_vxlan"], a["nb_keys"], a["nb_macs"], a["fdb_keys"], a["fdb_remote"],
                    np.int64(vx_if), np.int64(local_ip), np.int64(vport), a["src"], a["dst"], a["sport"],
                    a["proto"], a["ip_len"], a["conn"], a["ctinfo"], a["mark"], np.uint32(masq_mark), a["fhash"],
                    a["times"], a["start"], a["length"], np.int64(headroom),
                    out.out_if, out.nb, out.nsrc, out.nsport, out.snat, out.remote, out.osport, out.o_if,
                    out.o_nb, out.o_conn, out.o_dir, out.o_new) == OK
    vx = out.o_conn >= 0
    out.now_out = int(a["times"][vx].max()) if vx.any() else -1
    return ok, out


def forward_apply(table: ct.Table, fw: Forward, buf, start, length, l3_off, l4_off, proto, dst, dport, nb_macs,
                  if_macs, if_vxlan, ip_ids, local_ip: int, vport: int, vni: int, ttl: int) -> None:
    """What forwarding does to packets `forward_check` accepted (fw): TTL - 1,
    source NAT from the entry, MACs, and for the VXLAN ones: the encap
    (ip_ids: one per encapsulated packet, in order; start/length updated in
    place), the outer entries' lookup (SEEN_REPLY) and advance at fw.now_out,
    the outer MACs."""
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
    vx = fw.o_conn >= 0
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
    _fwd_apply(table.conns, buf, start, length, l3_off, l4_off, proto, dst, dport, fw.out_if, fw.nb, fw.nsrc,
               fw.nsport, fw.snat, nb_macs, if_macs, if_vxlan, fw.remote, fw.osport, fw.o_if, fw.o_nb, fw.o_conn,
               fw.o_dir, ip_ids, np.int64(local_ip), np.int64(vport), np.int64(vni), np.int64(ttl),
               np.int64(fw.now_out))
