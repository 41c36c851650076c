"""Plain-Python reference for kernels.netns_fast: the same check and apply,
written from the staged path's references (tests.reference.flow for the
conntrack step and NAT tuple, tests.reference.checksum for RFC 1624 and the
IPv4 header checksum, tests.reference.hashing for the VXLAN source port,
tests.reference.lpm for routes), over a copy of the table's records, a
bytearray and plain ints. Lookups scan the records (no index)."""
from __future__ import annotations

import struct

from kernels import conntrack as ct
from tests.reference import checksum as cks
from tests.reference import flow as rflow
from tests.reference.hashing import udp_flow_src_port
from tests.reference.lpm import lookup as lpm_lookup

SYN, FIN, RST = 0x02, 0x01, 0x04
TCP_ESTABLISHED = 3
NEW = 1


def live(conns, src, dst, sport, dport, proto, now):
    """(conn, direction) of the confirmed entry (zone 0) with this tuple, if
    unexpired; else (-1, -1)."""
    for c in range(len(conns)):
        r = conns[c]
        if not r["status"] & ct.IPS_CONFIRMED or r["zone"] != 0 or r["proto"] != proto:
            continue
        for d, (a, b, p, q) in ((ct.ORIGINAL, ("orig_src", "orig_dst", "orig_sport", "orig_dport")),
                                (ct.REPLY, ("reply_src", "reply_dst", "reply_sport", "reply_dport"))):
            if (r[a], r[b], r[p], r[q]) == (src, dst, sport, dport):
                return (c, d) if r["expires"] > now else (-1, -1)
    return -1, -1


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


def prerouting(conns, pkts, now, buf):
    """pkts: dicts with src, dst, sport, dport, proto, flags, l3, l4 (absolute).
    Returns None when some packet is not the common case (nothing changed),
    else per packet (conn, direction, maybe_new, info, dst, dport), with
    conns and buf updated."""
    found = []
    for p in pkts:
        c, d = live(conns, p["src"], p["dst"], p["sport"], p["dport"], p["proto"], now)
        if c < 0:
            return None
        r = conns[c]
        if p["proto"] == 6:
            if (int(r["state"]) & 0x7F) != TCP_ESTABLISHED or p["flags"] & (SYN | FIN | RST):
                return None
        elif p["proto"] != 17:
            return None
        found.append((c, d, not (r["status"] & ct.IPS_SEEN_REPLY) and d != ct.REPLY))
    for c, d, _ in found:
        if d == ct.REPLY:
            conns[c]["status"] |= ct.IPS_SEEN_REPLY
    out = []
    for p, (c, d, maybe_new) in zip(pkts, found):
        info = rflow.ct_advance(conns, c, d, p["proto"], p["flags"], now)
        s, t, sp, tp, changed = rflow.nat_tuple(conns, c, p["src"], p["dst"], p["sport"], p["dport"], False)
        if changed:
            nat(buf, p["l3"], p["l4"], p["proto"], s, t, sp, tp)
        out.append((c, d, maybe_new, int(info), t, tp))
    return out


def _encap(buf, q, inner_len, src_ip, dst_ip, sport, dport, vni, ttl, ip_id):
    hdr = bytearray(14 + 20 + 8 + 8)
    hdr[12:14] = b"\x08\x00"
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 36 + inner_len, ip_id, 0, ttl, 17, 0, src_ip, dst_ip))
    ip[10:12] = struct.pack("!H", cks.ipv4_header_checksum(bytes(ip)))
    hdr[14:34] = ip
    hdr[34:42] = struct.pack("!HHHH", sport, dport, 16 + inner_len, 0)
    hdr[42:50] = bytes([0x08, 0, 0, 0, (vni >> 16) & 0xFF, (vni >> 8) & 0xFF, vni & 0xFF, 0])
    buf[q:q + 50] = hdr


def forward(conns, pkts, routes, route_dev, route_via, if_mtu, if_vxlan, if_macs, neigh, fdb, vx_if, local_ip,
            vport, vni, ttl, masq_mark, headroom, buf, next_ids):
    """pkts: dicts with route, src, dst, sport, dport, proto, ip_len, conn,
    ctinfo, mark, fhash, time, start, length, l3, l4 (absolute). routes: the
    one routing table as {(prefix, length): route index}; neigh: {(interface,
    ip): mac}; fdb: {mac: remote}. Returns None (not the common case), else
    per packet (out_if, start, length), with conns and buf updated;
    next_ids(n) gives the IP ids of the n encapsulated packets."""
    plan = []
    for p in pkts:
        c = p["conn"]
        if c < 0:
            return None
        if p["ctinfo"] == NEW and p["mark"] & masq_mark:
            return None
        s, _, sp, _, changed = rflow.nat_tuple(conns, c, p["src"], p["dst"], p["sport"], p["dport"], True)
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
    vx = [st for st in plan if "rem" in st]
    now_out = max((st["p"]["time"] for st in vx), default=-1)
    for st in vx:
        c, d = live(conns, local_ip, st["rem"], st["osport"], vport, 17, now_out)
        if c < 0:
            return None
        r = conns[c]
        original = local_ip == r["orig_src"] and st["osport"] == r["orig_sport"]
        if (original and r["status"] & ct.IPS_DST_NAT) or (not original and r["status"] & ct.IPS_SRC_NAT):
            return None
        st.update(oc=c, od=d)
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
        out.append((st["f"], start, length))
    for st in vx:
        if st["od"] == ct.REPLY:
            conns[st["oc"]]["status"] |= ct.IPS_SEEN_REPLY
    for st in vx:
        rflow.ct_advance(conns, st["oc"], st["od"], 17, 0, now_out)
    for st, (f, start, length) in zip(plan, out):
        if "rem" in st:
            buf[start:start + 12] = st["omac"].to_bytes(6, "big") + int(if_macs[st["of"]]).to_bytes(6, "big")
    return out
