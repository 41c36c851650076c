"""Plain-Python reference for kernels.netns_fast: the same check and apply,
written from the staged path (emu.bulk.fastpath: _conntrack, _proxier,
_nat/_bind for PREROUTING; _output's NAT, neighbour, encap and the outer
packet's OUTPUT conntrack for forwarding) over the reference conntrack
(tests.reference.conntrack.Conntrack: connection ids from its free stack,
statistics, lazy expiry, clash-twin merge), tests.reference.flow for the
tracker's step and the NAT tuple, tests.reference.checksum for RFC 1624 and
the IPv4 header checksum, tests.reference.hashing for the VXLAN source port,
tests.reference.lpm for routes; a bytearray and plain ints."""
from __future__ import annotations

import struct

from emu.dataplane import conntrack as dct
from tests.reference import checksum as cks
from tests.reference import flow as rflow
from tests.reference.conntrack import DST_NAT, ORIGINAL, REPLY, SEEN_REPLY, SRC_NAT, Conntrack
from tests.reference.hashing import udp_flow_src_port
from tests.reference.lpm import lookup as lpm_lookup

SYN, FIN, RST = 0x02, 0x01, 0x04
TCP_ESTABLISHED = 3
NEW = 1
A_NONE, A_DNAT, A_REJECT, A_DROP = 0, 1, 2, 3           # kube-proxy's decisions
SERVICE_NO_ENDPOINTS, SERVICE_NO_LOCAL, CT_CLASH = 64, 65, 34   # kernels.drop


# --- the reference conntrack seen as kernel records ---------------------------------------

_TUPLE_FIELDS = {f"{side}_{part}": (side, k) for side in ("orig", "reply")
                 for k, part in enumerate(("src", "dst", "sport", "dport"))}


class _Rec:
    """A reference connection read and written as a kernel record
    (rec["status"], rec["reply_src"], ...), so tests.reference.flow's step and
    NAT tuple work on it unchanged. A free id reads as a record with no
    status (not IPS_CONFIRMED), as the kernel's zeroed record does."""

    def __init__(self, conn):
        self.conn = conn

    def __getitem__(self, name):
        if self.conn is None:
            return 0
        if name in _TUPLE_FIELDS:
            side, k = _TUPLE_FIELDS[name]
            return getattr(self.conn, side)[k]
        return getattr(self.conn, name)

    def __setitem__(self, name, value):
        setattr(self.conn, name, int(value))


class _Records:
    def __init__(self, model: Conntrack):
        self.model = model

    def __getitem__(self, c):
        return _Rec(self.model.conns.get(c))


def live(model: Conntrack, src, dst, sport, dport, proto, now):
    """(conn, direction) of the unexpired entry (zone 0) with this tuple, else
    (-1, -1); reads only (a lookup would reap an expired one)."""
    hit = model.tuples.get((0, proto, src, dst, sport, dport))
    if hit is None or model.conns[hit[0]].expires <= now:
        return -1, -1
    return hit


def _taken(model: Conntrack, proto, t) -> bool:
    """Some entry has tuple t (zone 0), live or expired."""
    return (0, proto) + tuple(t) in model.tuples


def renat(model: Conntrack, c, rsrc, rdst, rsport, rdport, now) -> int:
    """kernels.flow.renat for one connection (Nat._reinsert): delete it,
    insert it again with the new reply tuple, the same original tuple, state
    and remaining time, keeping its mark; on a clash put it back as it was
    (its mark then lost, as the kernel's re-insert leaves it 0). The new
    id, or -1 (clash, or c not live). No delete and no insert in the
    statistics: a binding."""
    conn = model.conns.get(c)
    if conn is None:
        return -1
    left = max(conn.expires - now, 1)
    model.delete(c)
    model.stats["deleted"] -= 1
    model.stats["insert"] -= 1   # given back by the insert below (or the one putting it back)
    head = (conn.zone, *conn.orig, conn.proto)
    got, reason = model.insert(*head, rsrc, rdst, rsport, rdport, conn.state, left, now)
    if reason:
        model.insert(*head, *conn.reply, conn.state, left, now)
        return -1
    model.set_mark(got, conn.mark)
    return got


# --- bytes ---------------------------------------------------------------------------------

def _get16(buf, p):
    return buf[p] << 8 | buf[p + 1]


def _get32(buf, p):
    return _get16(buf, p) << 16 | _get16(buf, p + 2)


def _put16(buf, p, v):
    buf[p:p + 2] = struct.pack("!H", v & 0xFFFF)


def _put32(buf, p, v):
    buf[p:p + 4] = struct.pack("!I", v & 0xFFFFFFFF)


def nat(buf, l3, l4, proto, src, dst, sport, dport):
    osrc, odst = _get32(buf, l3 + 12), _get32(buf, l3 + 16)
    _put16(buf, l3 + 10, cks.update32(cks.update32(_get16(buf, l3 + 10), osrc, src), odst, dst))
    _put32(buf, l3 + 12, src)
    _put32(buf, l3 + 16, dst)
    at = l4 + (16 if proto == 6 else 6)
    udp = proto == 17
    c = _get16(buf, at)
    c = cks.update32(c, osrc, src, udp)
    c = cks.update32(c, odst, dst, udp)
    c = cks.update16(c, _get16(buf, l4), sport, udp)
    c = cks.update16(c, _get16(buf, l4 + 2), dport, udp)
    _put16(buf, at, c)
    _put16(buf, l4, sport)
    _put16(buf, l4 + 2, dport)


# --- PREROUTING ---------------------------------------------------------------------------

def _tracked(conn, d, proto, flags) -> bool:
    """A packet of a live entry the fused path takes: it leaves the state as
    it is (TCP ESTABLISHED without SYN/FIN/RST; UDP), or it is TCP with
    ctinfo ESTABLISHED (a REPLY, or the entry has seen one) and a valid step
    (kube-proxy and the NAT hooks leave such packets alone)."""
    if proto == 17:
        return True
    if proto != 6:
        return False
    if conn.state & 0x7F == TCP_ESTABLISHED and not flags & (SYN | FIN | RST):
        return True
    if d != REPLY and not conn.status & SEEN_REPLY:
        return False
    return dct.tcp_next(conn.state, flags, d) >= 0


def prerouting_check(model: Conntrack, pkts, now):
    """kernels.netns_fast.prerouting_check: None when some packet is not the
    common case, else per packet (conn, direction, maybe_new, new, first).
    Reads only."""
    out = []
    firsts = {}   # (proto, tuple) of the batch's first packets -> the first one's index
    for i, p in enumerate(pkts):
        proto = p["proto"]
        t = (p["src"], p["dst"], p["sport"], p["dport"])
        inverse = (p["dst"], p["src"], p["dport"], p["sport"])
        c, d = live(model, *t, proto, now)
        if c >= 0:
            conn = model.conns[c]
            if not _tracked(conn, d, proto, p["flags"]):
                return None
            out.append((c, d, not conn.status & SEEN_REPLY and d != REPLY, False, -1))
            continue
        # a connection's first packet: it must open an entry whose reply tuple
        # is free (no clash to resolve, no expired entry to reap there) ...
        if not rflow.ct_open(proto, p["flags"])[0]:
            return None
        if inverse != t and _taken(model, proto, inverse):
            return None
        # ... and not be the reverse of an earlier first packet (a clash at insert)
        if (proto, inverse) in firsts:
            return None
        out.append((-1, -1, False, True, firsts.setdefault((proto, t), i)))
    if len(model.conns) + sum(row[3] for row in out) > model.capacity:
        return None   # the table may fill: early drop is the staged path's
    return out


def prerouting(model: Conntrack, pkts, now, buf, bind):
    """pkts: dicts with src, dst, sport, dport, proto, flags, l3, l4
    (absolute), and kube-proxy's decision for a first packet: act, bip, bport
    (a duplicate carries its first's). bind: the DNAT hook has a rule.
    Returns None when the check fails (nothing changed), else per packet a
    dict: the check's conn0, direction0, maybe_new, new, first; the apply's
    info, verdict, conn, direction, dst, dport; model and buf updated."""
    checked = prerouting_check(model, pkts, now)
    if checked is None:
        return None
    recs = _Records(model)
    conn = [row[0] for row in checked]
    direction = [row[1] for row in checked]
    new = [row[3] for row in checked]
    # the conntrack hook: the batch's lookups, in order (a REPLY hit sets
    # SEEN_REPLY; a first packet's lookup reaps an expired entry at its tuple) ...
    for i, p in enumerate(pkts):
        got = model.lookup(0, p["src"], p["dst"], p["sport"], p["dport"], p["proto"], now)
        assert new[i] or got == (conn[i], direction[i])
    # ... then the misses' entries, in order (a duplicate meets the earlier's entry) ...
    for i, p in enumerate(pkts):
        if new[i]:
            _, state, timeout = rflow.ct_open(p["proto"], p["flags"])
            c, reason = model.insert(0, p["src"], p["dst"], p["sport"], p["dport"], p["proto"],
                                     p["dst"], p["src"], p["dport"], p["sport"], state, timeout, now)
            assert reason == 0, "the check rules a refused insert out"
            conn[i], direction[i] = c, ORIGINAL
    # ... then every packet's step
    info = [int(rflow.ct_advance(recs, conn[i], direction[i], p["proto"], p["flags"], now))
            for i, p in enumerate(pkts)]
    # kube-proxy (the caller's decisions, for the first packets only)
    verdict = [0] * len(pkts)
    for i, p in enumerate(pkts):
        if new[i] and p["act"] == A_REJECT:
            verdict[i] = SERVICE_NO_ENDPOINTS
        elif new[i] and p["act"] == A_DROP:
            verdict[i] = SERVICE_NO_LOCAL
    # the DNAT hook's bindings, in order, each from its entry as the insert
    # left it (read before any is rebound, as _bind reads them)
    if bind:
        todo = [(i, conn[i], p["bip"], model.conns[conn[i]].reply[1], p["bport"], model.conns[conn[i]].reply[3])
                for i, p in enumerate(pkts) if new[i] and p["act"] == A_DNAT and info[i] == NEW]
        for i, c, rsrc, rdst, rsport, rdport in todo:
            got = renat(model, c, rsrc, rdst, rsport, rdport, now)
            if got < 0:
                verdict[i] = CT_CLASH
            else:
                conn[i] = got
    # the DNAT hook's rewrite, from the entry, for the packets still going
    out = []
    for i, p in enumerate(pkts):
        t, tp = p["dst"], p["dport"]
        if verdict[i] == 0:
            s, t, sp, tp, changed = rflow.nat_tuple(recs, conn[i], p["src"], p["dst"], p["sport"], p["dport"],
                                                    False)
            if changed:
                nat(buf, p["l3"], p["l4"], p["proto"], s, t, sp, tp)
        c0, d0, maybe_new, is_new, first = checked[i]
        out.append(dict(conn0=c0, direction0=d0, maybe_new=maybe_new, new=is_new, first=first, info=info[i],
                        verdict=verdict[i], conn=conn[i], direction=direction[i], dst=t, dport=tp))
    return out


# --- forward ------------------------------------------------------------------------------

def _encap(buf, q, inner_len, src_ip, dst_ip, sport, dport, vni, ttl, ip_id):
    hdr = bytearray(14 + 20 + 8 + 8)
    hdr[12:14] = b"\x08\x00"
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 36 + inner_len, ip_id, 0, ttl, 17, 0, src_ip, dst_ip))
    ip[10:12] = struct.pack("!H", cks.ipv4_header_checksum(bytes(ip)))
    hdr[14:34] = ip
    hdr[34:42] = struct.pack("!HHHH", sport, dport, 16 + inner_len, 0)
    hdr[42:50] = bytes([0x08, 0, 0, 0, (vni >> 16) & 0xFF, (vni >> 8) & 0xFF, vni & 0xFF, 0])
    buf[q:q + 50] = hdr


def _plan(model, pkts, routes, route_dev, route_via, if_mtu, if_vxlan, neigh, fdb, vx_if, masq_mark, headroom):
    """Per packet what forwarding will do (source NAT, interface, neighbour,
    and for VXLAN the remote, outer source port and outer route), or None
    when some packet is not the common case. Reads only."""
    recs = _Records(model)
    plan = []
    for p in pkts:
        c = p["conn"]
        if c < 0 or c >= model.capacity:
            return None
        if p["ctinfo"] == NEW and p["mark"] & masq_mark:
            return None   # the masquerade rule may bind: the staged path
        if p["route"] < 0:
            return None
        s, _, sp, _, changed = rflow.nat_tuple(recs, c, p["src"], p["dst"], p["sport"], p["dport"], True)
        f = route_dev[p["route"]]
        if p["ip_len"] > if_mtu[f]:
            return None
        nh = route_via[p["route"]] or p["dst"]
        if (f, nh) not in neigh:
            return None
        step = dict(p=p, s=s, sp=sp, changed=changed, f=f, mac=neigh[(f, nh)])
        if if_vxlan[f]:
            if f != vx_if or p["fhash"] == 0:
                return None
            rem = fdb.get(step["mac"], 0)
            if rem == 0 or p["start"] < headroom or p["length"] + 50 > 0xFFFF - 20:
                return None
            orr = lpm_lookup(routes, rem)
            if orr < 0:
                return None
            of = route_dev[orr]
            if if_vxlan[of]:
                return None
            onh = route_via[orr] or rem
            if (of, onh) not in neigh:
                return None
            step.update(rem=rem, osport=udp_flow_src_port(p["fhash"], 0, 0), of=of, omac=neigh[(of, onh)])
        plan.append(step)
    return plan


def _outer_check(model, vx, local_ip, vport, now_out) -> bool:
    """The outer packets' OUTPUT conntrack is the common case: a live entry
    without DNAT (oc, od, o_new), or a miss (the outer flow's first packet)
    whose reply tuple is free, with room for every miss. Reads only."""
    misses = 0
    for st in vx:
        t = (local_ip, st["rem"], st["osport"], vport)
        c, d = live(model, *t, 17, now_out)
        if c < 0:
            if st["rem"] == local_ip or _taken(model, 17, (st["rem"], local_ip, vport, st["osport"])):
                return False
            st.update(oc=-1, od=ORIGINAL, o_new=True, o_miss=True)
            misses += 1
            continue
        conn = model.conns[c]
        original = local_ip == conn.orig[0] and st["osport"] == conn.orig[2]
        if (original and conn.status & DST_NAT) or (not original and conn.status & SRC_NAT):
            return False   # an outer DNAT: the staged path
        st.update(oc=c, od=d, o_new=not conn.status & SEEN_REPLY and d != REPLY, o_miss=False)
    return len(model.conns) + misses <= model.capacity


def forward_check(model: Conntrack, pkts, routes, route_dev, route_via, if_mtu, if_vxlan, neigh, fdb, vx_if,
                  local_ip, vport, masq_mark, headroom):
    """kernels.netns_fast.forward_check: None when some packet is not the
    common case, else (plan, the encapsulated ones' steps, now_out). Reads
    only."""
    plan = _plan(model, pkts, routes, route_dev, route_via, if_mtu, if_vxlan, neigh, fdb, vx_if, masq_mark,
                 headroom)
    if plan is None:
        return None
    vx = [st for st in plan if "rem" in st]
    now_out = max((st["p"]["time"] for st in vx), default=-1)
    if not _outer_check(model, vx, local_ip, vport, now_out):
        return None
    return plan, vx, now_out


def forward(model: Conntrack, pkts, routes, route_dev, route_via, if_mtu, if_vxlan, if_macs, neigh, fdb, vx_if,
            local_ip, vport, vni, ttl, masq_mark, headroom, buf, next_ids):
    """pkts: dicts with route, src, dst, sport, dport, proto, ip_len, conn,
    ctinfo, mark, fhash, time, start, length, l3, l4 (absolute). routes: the
    one routing table as {(prefix, length): route index}; neigh: {(interface,
    ip): mac}; fdb: {mac: remote}. Returns None (not the common case), else
    per packet a dict: out_if, start, length, and for an encapsulated packet
    o_conn, o_dir, o_new, o_miss (o_conn -1 otherwise); model and buf
    updated; next_ids(n) gives the IP ids of the n encapsulated packets."""
    checked = forward_check(model, pkts, routes, route_dev, route_via, if_mtu, if_vxlan, neigh, fdb, vx_if,
                            local_ip, vport, masq_mark, headroom)
    if checked is None:
        return None
    plan, vx, now_out = checked
    ids = next_ids(len(vx)) if vx else []
    j = 0
    out = []
    for st in plan:
        p = st["p"]
        l3 = p["l3"]
        old = _get16(buf, l3 + 8)
        buf[l3 + 8] = (buf[l3 + 8] - 1) & 0xFF
        _put16(buf, l3 + 10, cks.update16(_get16(buf, l3 + 10), old, _get16(buf, l3 + 8)))
        if st["changed"]:
            nat(buf, l3, p["l4"], p["proto"], st["s"], p["dst"], st["sp"], p["dport"])
        start, length = p["start"], p["length"]
        buf[start:start + 12] = st["mac"].to_bytes(6, "big") + int(if_macs[st["f"]]).to_bytes(6, "big")
        if "rem" in st:
            _encap(buf, start - 50, length, local_ip, st["rem"], st["osport"], vport, vni, ttl, int(ids[j]))
            j += 1
            start, length = start - 50, length + 50
        out.append(dict(out_if=st["f"], start=start, length=length, o_conn=-1))
    # the outer packets' OUTPUT conntrack (staged _conntrack): the lookups in
    # order (SEEN_REPLY; a miss's lookup reaps an expired entry at its tuple),
    # the misses' entries in order (a duplicate outer flow meets the first's),
    # every outer packet's step
    for st in vx:
        got = model.lookup(0, local_ip, st["rem"], st["osport"], vport, 17, now_out)
        assert st["o_miss"] or got == (st["oc"], st["od"])
    _, state, timeout = rflow.ct_open(17, 0)
    for st in vx:
        if st["o_miss"]:
            c, reason = model.insert(0, local_ip, st["rem"], st["osport"], vport, 17, st["rem"], local_ip, vport,
                                     st["osport"], state, timeout, now_out)
            assert reason == 0, "the check rules a refused insert out"
            st["oc"] = c
    recs = _Records(model)
    for st in vx:
        rflow.ct_advance(recs, st["oc"], st["od"], 17, 0, now_out)
    for st, row in zip(plan, out):
        if "rem" in st:
            s = row["start"]
            buf[s:s + 12] = st["omac"].to_bytes(6, "big") + int(if_macs[st["of"]]).to_bytes(6, "big")
            row.update(o_conn=st["oc"], o_dir=st["od"], o_new=st["o_new"], o_miss=st["o_miss"])
    return out

