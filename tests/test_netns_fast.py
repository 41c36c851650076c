"""kernels.netns_fast against its reference (tests/reference/netns_fast.py):
random tables and packets (collisions, expired and NAT'd entries, NEW and
REPLY packets, SYN/FIN/RST, SYN|ACK answers to SYN_SENT entries), first
packets of connections (duplicated, reversed, with their reply tuple taken
or an expired entry at their tuple, in nearly full tables) with random
kube-proxy decisions and DNAT bindings that may clash, forwarding with
unresolved neighbours, missing FDB entries, masquerade marks and missing,
duplicated or blocked outer entries; and a bounds-checked fuzz run. The
whole conntrack table is compared with the reference's (check_same)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import conntrack as ct
from kernels import drop, flow, lpm, netns_fast, parse
from kernels.hashing import udp_source_port
from tests.reference import conntrack as rct
from tests.reference import netns_fast as ref
from tests.test_conntrack import check_same
from tests.util import run_with_boundscheck

STRIDE = 256
HEAD = 128
MASQ = 0x4000
CLIENTS = [0x0A000001 + k for k in range(5)]
VIPS = [0x0A600001 + k for k in range(5)]
BACKENDS = [0x0AF40001 + k for k in range(3)]
# TCP flags: of a packet of a connection (ACK, PSH|ACK, now and then SYN, FIN, RST, SYN|ACK), of a
# connection's first packet (mostly SYN, else ACK or RST: both open one too; SYN|ACK and FIN do not)
FLAGS_TRACKED = [0x10, 0x18, 0x10, 0x18, 0x11, 0x14, 0x02, 0x12, 0x04, 0x01]
FLAGS_FIRST = [0x02] * 12 + [0x10, 0x18, 0x10, 0x14, 0x04, 0x10] + [0x12, 0x11]


# --- tables ---------------------------------------------------------------------------------

def _backends(rng, n):
    """DNAT targets (ip, port): skewed over a small set, so that two
    bindings of one client endpoint want the same reply tuple now and then."""
    return rng.choice(np.array(BACKENDS[:2], np.uint32), n, p=[0.9, 0.1]), \
        rng.choice(np.array([8080, 8081], np.uint16), n, p=[0.9, 0.1])


def _table(rng, n_conns, tcp_states=(3, 3, 3, 1, 4), capacity=None):
    """A table of n_conns connections client -> VIP made at time 10 (expiring
    at 11..110), some DNAT'd to a backend, some having seen a reply. Returns
    it with its connection ids."""
    t = ct.make_table(capacity or max(n_conns, 1) * 2, seed=int(rng.integers(0, 2**32)))
    ips = rng.choice(np.array(CLIENTS, np.uint32), n_conns)
    dsts = rng.choice(np.array(VIPS, np.uint32), n_conns)
    sp = rng.integers(1000, 1004, n_conns).astype(np.uint16)
    dp = rng.integers(80, 82, n_conns).astype(np.uint16)
    proto = rng.choice(np.array([6, 17], np.uint8), n_conns)
    state = np.where(proto == 6, rng.choice(np.array(tcp_states, np.uint8), n_conns), 0).astype(np.uint8)
    # nearly half expire within the tests' times (11..110), the others later
    timeout = np.where(rng.random(n_conns) < 0.45, rng.integers(1, 100, n_conns), 200).astype(np.int64)
    z = np.zeros(n_conns, np.uint16)
    ins = ct.insert(t, z, ips, dsts, sp, dp, proto, dsts, ips, dp, sp, state, timeout, 10)
    conn = ins.conn[ins.conn >= 0]
    nat = conn[rng.random(len(conn)) < 0.5]
    if len(nat):  # DNAT some: a new reply source
        recs = t.conns[nat]
        bip, bport = _backends(rng, len(nat))
        flow.renat(t, nat, bip, recs["reply_dst"].copy(), bport, recs["reply_dport"].copy(), 10)
    entries = np.nonzero(t.conns["status"] & ct.IPS_CONFIRMED)[0]
    seen = entries[rng.random(len(entries)) < 0.3]
    t.conns["status"][seen] |= ct.IPS_SEEN_REPLY
    return t, entries


def _model(t) -> rct.Conntrack:
    """The reference conntrack holding exactly the kernel table's state (the
    tables here are built by kernel calls and direct status edits; check_same
    confirms the copy, free stack and statistics included)."""
    m = rct.Conntrack(len(t.conns), int(t.seed))
    recs = t.conns
    for c in np.nonzero(recs["status"] & ct.IPS_CONFIRMED)[0].tolist():
        r = recs[c]
        zone, proto = int(r["zone"]), int(r["proto"])
        orig = (int(r["orig_src"]), int(r["orig_dst"]), int(r["orig_sport"]), int(r["orig_dport"]))
        reply = (int(r["reply_src"]), int(r["reply_dst"]), int(r["reply_sport"]), int(r["reply_dport"]))
        m.conns[c] = rct.Conn(zone, proto, orig, reply, int(r["state"]), int(r["status"]), int(r["expires"]),
                              int(r["mark"]), t.counters[c].tolist())
        m.tuples[(zone, proto) + orig] = (c, rct.ORIGINAL)
        m.tuples.setdefault((zone, proto) + reply, (c, rct.REPLY))
    m.free = t.free_ids[:len(recs) - len(m.conns)].tolist()
    m.stats = ct.stats(t)
    check_same(t, m)
    return m


def _snapshot(t):
    return [x.copy() for x in (t.conns, t.counters, t.index, t.free_ids, t.stats)]


def _untouched(t, snap) -> bool:
    """The table is as snap (records field by field: the padding is not copied)."""
    conns, *rest = snap
    same = all(np.array_equal(t.conns[f], conns[f]) for f in conns.dtype.names)
    return same and all(np.array_equal(a, b) for a, b in zip((t.counters, t.index, t.free_ids, t.stats), rest))


# --- packets --------------------------------------------------------------------------------

def _side(recs, c, side):
    return tuple(int(recs[f"{side}_{k}"][c]) for k in ("src", "dst", "sport", "dport")) + (int(recs["proto"][c]),)


def _inverse(tup):
    src, dst, sport, dport, proto = tup
    return dst, src, dport, sport, proto


def _fresh(rng):
    """A new tuple: a client to a VIP, or now and then straight to a backend
    (whose reply tuple a DNAT binding to that backend may then want)."""
    if rng.random() < 0.15:
        return int(rng.choice(CLIENTS)), int(rng.choice(BACKENDS)), int(rng.integers(1000, 1004)), \
            int(rng.integers(8080, 8082)), int(rng.choice([6, 17]))
    return int(rng.choice(CLIENTS)), int(rng.choice(VIPS)), int(rng.integers(1000, 1004)), \
        int(rng.integers(80, 82)), int(rng.choice([6, 17]))


# what a packet is (_tuples), and how often, for PREROUTING groups
KINDS = {"entry": 0.42, "expired": 0.05, "reversed": 0.05, "again": 0.14, "inverse": 0.05, "endpoint": 0.2,
         "self": 0.02, "fresh": 0.07}


def _tuples(rng, t, entries, n, now=None):
    """n packets as (tuple, TCP flags). Without `now` (forwarding): an
    entry's, either side, or now and then an unknown one. With it, one of
    KINDS: an entry's (a SYN|ACK answering a SYN_SENT one); an expired DNAT'd
    entry's (a first packet reaping it); an entry's reversed (a first packet
    whose reply tuple is taken when the entry is NAT'd); an earlier packet's
    again (a duplicate first packet) or reversed (an inverse pair); a DNAT'd
    entry's or an earlier packet's client endpoint to another VIP or
    straight to a backend (a DNAT binding may then clash with the other's
    tuples); a client to itself (a tuple its own inverse); a new one."""
    recs = t.conns
    dnat = entries[(recs["status"][entries] & ct.IPS_DST_NAT) != 0]
    expired = dnat[recs["expires"][dnat] <= now] if now is not None else dnat[:0]
    out, others = [], []   # others: the packets not of an entry (likely first packets)
    for _ in range(n):
        if now is None:
            kind = "entry" if len(entries) and rng.random() < 0.95 else "fresh"
        else:
            have = dict(entry=len(entries), expired=len(expired), reversed=len(entries), again=len(out),
                        inverse=len(out), endpoint=len(out) + len(dnat), self=1, fresh=1)
            w = np.array([KINDS[k] if have[k] else 0.0 for k in KINDS])
            kind = list(KINDS)[int(rng.choice(len(KINDS), p=w / w.sum()))]
        flags = FLAGS_FIRST
        if kind == "entry":
            c = int(rng.choice(entries))
            syn_sent = recs["proto"][c] == 6 and recs["state"][c] == flow.SYN_SENT
            side = "reply" if rng.random() < (0.8 if syn_sent else 0.5) else "orig"
            tup, flags = _side(recs, c, side), FLAGS_TRACKED
            if side == "reply" and syn_sent and rng.random() < 0.8:
                flags = [flow.SYN | flow.ACK]
        elif kind == "expired":
            tup = _side(recs, int(rng.choice(expired)), "orig" if rng.random() < 0.7 else "reply")
        elif kind == "reversed":
            tup = _inverse(_side(recs, int(rng.choice(entries)), "orig" if rng.random() < 0.5 else "reply"))
        elif kind == "again":
            tup = others[int(rng.integers(0, len(others)))] if others and rng.random() < 0.8 else \
                out[int(rng.integers(0, len(out)))][0]
        elif kind == "inverse":
            tup = _inverse(out[int(rng.integers(0, len(out)))][0])
        elif kind == "endpoint":
            if len(dnat) and (not out or rng.random() < 0.6):
                src, _, sport, _, proto = _side(recs, int(rng.choice(dnat)), "orig")
            else:
                src, _, sport, _, proto = out[int(rng.integers(0, len(out)))][0]
            if rng.random() < 0.2:   # straight to a backend: its reply tuple is a binding's
                b_ip, b_port = _backends(rng, 1)
                tup = src, int(b_ip[0]), sport, int(b_port[0]), proto
            else:
                tup = src, int(rng.choice(VIPS)), sport, int(rng.integers(80, 82)), proto
        elif kind == "self":
            ip, port = int(rng.choice(CLIENTS)), int(rng.integers(1000, 1004))
            tup = ip, ip, port, port, int(rng.choice([6, 17]))
        else:
            tup = _fresh(rng)
        if kind != "entry":
            others.append(tup)
        out.append((tup, int(rng.choice(flags))))
    return out


def _packets(rng, t, entries, n, now=None):
    made = _tuples(rng, t, entries, n, now)
    cols = {k: np.array([tup[j] for tup, _ in made], d) for j, (k, d) in enumerate(
        (("src", np.uint32), ("dst", np.uint32), ("sport", np.uint16), ("dport", np.uint16), ("proto", np.uint8)))}
    flags = np.array([f for _, f in made], np.uint8)
    buf = np.zeros(n * STRIDE + HEAD, np.uint8)
    starts = np.arange(n, dtype=np.int64) * STRIDE + HEAD
    payload = np.arange(64, dtype=np.uint8)
    lens = flow.fill_frames(buf, starts, cols["proto"], cols["src"], cols["dst"], cols["sport"], cols["dport"],
                            rng.integers(0, 2**32, n).astype(np.uint32), rng.integers(0, 2**32, n).astype(np.uint32),
                            flags, rng.integers(0, 2**16, n).astype(np.uint16), payload,
                            rng.integers(0, 40, n).astype(np.uint16), None)
    h = parse.parse(buf, starts, lens.astype(np.int64), ())
    return cols, flags, buf, starts, lens.astype(np.int64), h


def _decisions(rng, cols):
    """kube-proxy's decision per packet, drawn once per tuple (so a duplicate
    first packet carries its first's): mostly DNAT (_backends), else none,
    REJECT or DROP."""
    n = len(cols["src"])
    act, bip, bport = np.zeros(n, np.uint8), np.zeros(n, np.uint32), np.zeros(n, np.uint16)
    drawn = {}
    for i in range(n):
        key = tuple(int(cols[k][i]) for k in ("src", "dst", "sport", "dport", "proto"))
        if key not in drawn:
            b_ip, b_port = _backends(rng, 1)
            drawn[key] = (int(rng.choice([netns_fast.A_NONE, netns_fast.A_DNAT, netns_fast.A_DNAT, netns_fast.A_DNAT,
                                          netns_fast.A_DNAT, netns_fast.A_REJECT, netns_fast.A_DROP])),
                          int(b_ip[0]), int(b_port[0]))
        act[i], bip[i], bport[i] = drawn[key]
    return act, bip, bport


# --- PREROUTING -----------------------------------------------------------------------------

def _prerouting_case(seed, n_conns, n, spare, now):
    """A table (nearly full with a small `spare`), n packets, decisions."""
    rng = np.random.default_rng(seed)
    states = (3,) if seed % 4 == 0 else (3, 3, 1, 1, 1, 2, 4, 4 | flow.FIN_FROM_REPLY, 7)
    t, entries = _table(rng, n_conns, states, capacity=max(n_conns + spare, 1))
    cols, flags, buf, starts, lens, h = _packets(rng, t, entries, n, now)
    act, bip, bport = _decisions(rng, cols)
    return dict(t=t, cols=cols, flags=flags, buf=buf, starts=starts, h=h, act=act, bip=bip, bport=bport, now=now)


def _check(k):
    c = k["cols"]
    return netns_fast.prerouting_check(k["t"], c["src"], c["dst"], c["sport"], c["dport"], c["proto"], k["flags"],
                                       k["now"])


def _apply(k, conn, direction, new, bind):
    """prerouting_apply on the case; (info, verdict, dst, dport), conn and
    direction updated in place."""
    c, h = k["cols"], k["h"]
    dst, dport = c["dst"].copy(), c["dport"].copy()
    info, verdict = netns_fast.prerouting_apply(
        k["t"], conn, direction, new, k["act"], k["bip"], k["bport"], bind, c["proto"], k["flags"], k["now"],
        k["buf"], k["starts"], np.ascontiguousarray(h.l3_off), np.ascontiguousarray(h.l4_off), c["src"], dst,
        c["sport"], dport)
    return info, verdict, dst, dport


def _ref_pkts(k):
    c, h = k["cols"], k["h"]
    return [dict(src=int(c["src"][i]), dst=int(c["dst"][i]), sport=int(c["sport"][i]), dport=int(c["dport"][i]),
                 proto=int(c["proto"][i]), flags=int(k["flags"][i]), l3=int(k["starts"][i] + h.l3_off[i]),
                 l4=int(k["starts"][i] + h.l4_off[i]), act=int(k["act"][i]), bip=int(k["bip"][i]),
                 bport=int(k["bport"][i])) for i in range(len(k["starts"]))]


def _column(rows, name):
    return [r[name] for r in rows]


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 12), st.integers(0, 6), st.integers(5, 120), st.booleans(),
       st.sampled_from([0, 1, 2, 3, 16]))
def test_prerouting_equals_reference(seed, n_conns, n, now, bind, spare):
    k = _prerouting_case(seed, n_conns, n, spare, now)
    t = k["t"]
    model, buf_ref = _model(t), bytearray(k["buf"].tobytes())
    want = ref.prerouting(model, _ref_pkts(k), now, buf_ref, bind)
    snap = _snapshot(t)
    ok, conn, direction, maybe_new, new, first = _check(k)
    assert _untouched(t, snap)  # the check touches nothing
    assert ok == (want is not None)
    if not ok:
        check_same(t, model)
        return
    assert conn.tolist() == _column(want, "conn0") and direction.tolist() == _column(want, "direction0")
    assert maybe_new.tolist() == _column(want, "maybe_new") and new.tolist() == _column(want, "new")
    assert first.tolist() == _column(want, "first")
    info, verdict, dst, dport = _apply(k, conn, direction, new, bind)
    assert info.tolist() == _column(want, "info") and verdict.tolist() == _column(want, "verdict")
    assert conn.tolist() == _column(want, "conn") and direction.tolist() == _column(want, "direction")
    assert dst.tolist() == _column(want, "dst") and dport.tolist() == _column(want, "dport")
    assert k["buf"].tobytes() == bytes(buf_ref)
    check_same(t, model)


def test_expired_entry_at_a_first_packets_tuple_is_reaped_by_the_lookups():
    """The staged conntrack hook looks the whole batch up before inserting,
    and the lookup of a first packet reaps an expired entry at its tuple: the
    freed id is on top of the free stack before any insert, so the batch's
    first insert (here packet 0) takes it."""
    t = ct.make_table(4, seed=1)
    one = lambda v, d: np.array([v], d)  # noqa: E731
    # 10.0.0.2:1000 -> 10.96.0.1:80, DNAT'd to 10.244.0.1:8080, expired at 20 (id 0)
    ct.insert(t, one(0, np.uint16), one(CLIENTS[1], np.uint32), one(VIPS[0], np.uint32), one(1000, np.uint16),
              one(80, np.uint16), one(6, np.uint8), one(BACKENDS[0], np.uint32), one(CLIENTS[1], np.uint32),
              one(8080, np.uint16), one(1000, np.uint16), one(3, np.uint8), one(10, np.int64), 10)
    k = dict(t=t, cols=dict(src=np.array(CLIENTS[:2], np.uint32), dst=np.array([VIPS[0]] * 2, np.uint32),
                            sport=np.array([1000, 1000], np.uint16), dport=np.array([80, 80], np.uint16),
                            proto=np.array([6, 6], np.uint8)),
             flags=np.array([flow.SYN, flow.SYN], np.uint8), now=30, act=np.zeros(2, np.uint8),
             bip=np.zeros(2, np.uint32), bport=np.zeros(2, np.uint16))
    k["buf"] = np.zeros(2 * STRIDE + HEAD, np.uint8)
    k["starts"] = np.arange(2, dtype=np.int64) * STRIDE + HEAD
    z2 = np.zeros(2, np.uint32)
    lens = flow.fill_frames(k["buf"], k["starts"], *(k["cols"][c] for c in ("proto", "src", "dst", "sport",
                                                                             "dport")),
                            z2, z2, k["flags"], np.zeros(2, np.uint16), np.zeros(8, np.uint8), np.zeros(2, np.uint16))
    k["h"] = parse.parse(k["buf"], k["starts"], lens, ())
    model = _model(t)
    want = ref.prerouting(model, _ref_pkts(k), 30, bytearray(k["buf"].tobytes()), False)
    assert _column(want, "conn") == [0, 1]   # the staged path: lookups (reaping id 0), then inserts
    ok, conn, direction, _, new, _ = _check(k)
    assert ok
    _apply(k, conn, direction, new, False)
    assert conn.tolist() == [0, 1]
    check_same(t, model)


# --- forward --------------------------------------------------------------------------------

LOCAL_IP, VPORT, VNI = 0xC0A80001, 8472, 1
# routes: 10.0/16 and 10.96/16 -> cni0 (dev 1, on-link); 10.97/16 -> flannel (dev 2) via 10.97.0.0;
# 192.168/16 -> eth0 (dev 0); none for the backends' 10.244/16
ROUTES = [(0x0A000000, 16, 1, 0), (0x0A600000, 16, 1, 0), (0x0A610000, 16, 2, 0x0A610000), (0xC0A80000, 16, 0, 0)]
REMOTES = [0xC0A80002, 0xC0A80003]
ELSEWHERE = 0x0AF40009   # an address no packet uses: NAT'd outer entries' other end


def _outer_entries(rng, remote, osports):
    """Outer conntrack entries for the VXLAN flows (local_ip:osport ->
    remote:VPORT), one kind per distinct source port: none (a miss, so an
    entry to make), live (time 10 + 100), expired (timeout 1; its reply tuple
    then blocks the new one), made by the remote (the outer packet a REPLY),
    a live DNAT'd one holding the outer reply tuple (blocks the miss), an
    expired DNAT'd one at the outer tuple (a miss reaping it). As insert
    arguments (orig, reply, timeout)."""
    out = []
    for sp in sorted(set(osports)):
        ours, theirs = (LOCAL_IP, remote, sp, VPORT), (remote, LOCAL_IP, VPORT, sp)
        u = rng.random()
        if u < 0.4:
            out.append((ours, theirs, 100))
        elif u < 0.44:
            out.append((ours, theirs, 1))
        elif u < 0.51:
            out.append((theirs, ours, 100))
        elif u < 0.54:
            out.append((theirs, (ELSEWHERE, remote, 9999, sp), 100))
        elif u < 0.59:
            out.append((ours, (ELSEWHERE, LOCAL_IP, 9999, sp), 1))
    return out


def _forward_case(seed, n, n_conns, spare=16, outer_entries=None, vx_share=0.6):
    """A forwarding group: packets of the table's entries, most of them to
    10.97/16 (VXLAN), outer entries of every kind (or outer_entries' for the
    outer source ports in packet order), and a table with `spare` free ids
    after them (a small one: the misses may not all fit)."""
    orng = np.random.default_rng([seed, 1])   # the outer flows, drawn first: they size the table
    fhash = orng.integers(0, 2**32, n).astype(np.uint32)
    if orng.random() < 0.8:   # two flows only: outer source ports repeat
        fhash = orng.choice(orng.integers(1, 2**32, 2).astype(np.uint32), n)
    fhash[orng.random(n) < 0.03] = 0
    remote = REMOTES[int(orng.integers(0, 2))]
    fdb = {0x0E0000000001: remote} if orng.random() < 0.95 else {}
    osp = udp_source_port(fhash, 0, 0)
    outer = (outer_entries or _outer_entries)(orng, remote, osp.tolist()) if fdb else []
    rng = np.random.default_rng(seed)
    t, entries = _table(rng, n_conns, capacity=max(n_conns + len(outer) + spare, 1))
    if outer:
        m = len(outer)
        col = lambda j, k, d: np.array([e[j][k] for e in outer], d)  # noqa: E731
        ct.insert(t, np.zeros(m, np.uint16), col(0, 0, np.uint32), col(0, 1, np.uint32), col(0, 2, np.uint16),
                  col(0, 3, np.uint16), np.full(m, 17, np.uint8), col(1, 0, np.uint32), col(1, 1, np.uint32),
                  col(1, 2, np.uint16), col(1, 3, np.uint16), np.zeros(m, np.uint8),
                  np.array([e[2] for e in outer], np.int64), 10)
    cols, flags, buf, starts, lens, h = _packets(rng, t, entries, n)
    # most packets go to 10.97/16 (VXLAN), with their own rewritten dst
    vx_dst = rng.random(n) < vx_share
    dst = np.where(vx_dst, (cols["dst"] & np.uint32(0xFFFF)) | np.uint32(0x0A610000), cols["dst"]).astype(np.uint32)
    fib = lpm.build(np.array([r[0] for r in ROUTES], np.uint32), np.array([r[1] for r in ROUTES], np.uint8),
                    np.arange(len(ROUTES), dtype=np.int32), stride=8)
    routes = lpm.lookup(fib, dst)
    route_dev = np.array([r[2] for r in ROUTES], np.int32)
    route_via = np.array([r[3] for r in ROUTES], np.uint32)
    if_mtu = np.array([1500, rng.choice([1500, 100]), 1450], np.int64)
    if_vxlan = np.array([False, False, True])
    if_macs = np.array([0x020000000001, 0x020000000002, 0x020000000003], np.uint64)
    neigh = {(1, int(d)): 0x0A0000000000 + int(d & 0xFF) for d in np.unique(dst) if rng.random() < 0.95}
    neigh[(2, 0x0A610000)] = 0x0E0000000001
    for r in REMOTES:
        if rng.random() < 0.95:
            neigh[(0, r)] = 0x0C0000000000 + (r & 0xFF)
    model = _model(t)
    conn = np.array([ref.live(model, int(cols["src"][i]), int(cols["dst"][i]), int(cols["sport"][i]),
                              int(cols["dport"][i]), int(cols["proto"][i]), 11)[0] for i in range(n)], np.int32)
    ctinfo = rng.choice(np.array([1, 2, 2], np.uint8), n)
    mark = np.where(rng.random(n) < 0.05, MASQ, 0).astype(np.uint32)
    times = rng.integers(11, 40, n).astype(np.int64)
    ip_len = np.ascontiguousarray(h.ip_len)
    # the packets' dst as the route sees it (as if DNAT had written it)
    for i in range(n):
        p = int(starts[i] + h.l3_off[i])
        buf[p + 16:p + 20] = np.frombuffer(int(dst[i]).to_bytes(4, "big"), np.uint8)
    return dict(t=t, model=model, cols=cols, buf=buf, starts=starts, lens=lens, h=h, dst=dst, fib=fib,
                routes=routes, route_dev=route_dev, route_via=route_via, if_mtu=if_mtu, if_vxlan=if_vxlan,
                if_macs=if_macs, neigh=neigh, fdb=fdb, fhash=fhash, conn=conn, ctinfo=ctinfo, mark=mark,
                times=times, ip_len=ip_len)


def _nb(k):
    nbs = sorted(((a << 32) | b, m) for (a, b), m in k["neigh"].items())
    return np.array([x for x, _ in nbs], np.uint64), np.array([m for _, m in nbs], np.uint64)


def _forward_check(k):
    t, cols = k["t"], k["cols"]
    nb_keys, nb_macs = _nb(k)
    fdb = sorted(k["fdb"].items())
    return netns_fast.forward_check(
        t, k["fib"], k["routes"], k["route_dev"], k["route_via"], k["if_mtu"], k["if_vxlan"], nb_keys, nb_macs,
        np.array([a for a, _ in fdb], np.uint64), np.array([b for _, b in fdb], np.uint32), 2, LOCAL_IP, VPORT,
        cols["src"], k["dst"], cols["sport"], cols["proto"], k["ip_len"], k["conn"], k["ctinfo"], k["mark"], MASQ,
        k["fhash"], k["times"], k["starts"], k["lens"], 50)


def _run_forward(k, ids_start=7):
    """forward_check then forward_apply: None (not fused), or per packet a
    dict as the reference's."""
    ok, fw = _forward_check(k)
    if not ok:
        return None
    h = k["h"]
    start, length = k["starts"].copy(), k["lens"].copy()
    vx = (fw.o_conn >= 0) | fw.o_miss
    ids = (ids_start + np.arange(int(vx.sum()))).astype(np.uint16)
    netns_fast.forward_apply(k["t"], fw, k["buf"], start, length, np.ascontiguousarray(h.l3_off),
                             np.ascontiguousarray(h.l4_off), k["cols"]["proto"], k["dst"], k["cols"]["dport"],
                             _nb(k)[1], k["if_macs"], k["if_vxlan"], ids, LOCAL_IP, VPORT, VNI, 64)
    rows = [dict(out_if=int(f), start=int(s), length=int(n), o_conn=-1)
            for f, s, n in zip(fw.out_if.tolist(), start.tolist(), length.tolist())]
    for i in np.nonzero(vx)[0].tolist():
        rows[i].update(o_conn=int(fw.o_conn[i]), o_dir=int(fw.o_dir[i]), o_new=bool(fw.o_new[i]),
                       o_miss=bool(fw.o_miss[i]))
    return rows


def _forward_args(k):
    """The case as the reference's forward_check takes it (after the model)."""
    cols, h, n = k["cols"], k["h"], len(k["starts"])
    pkts = [dict(route=int(k["routes"][i]), src=int(cols["src"][i]), dst=int(k["dst"][i]),
                 sport=int(cols["sport"][i]), dport=int(cols["dport"][i]), proto=int(cols["proto"][i]),
                 ip_len=int(k["ip_len"][i]), conn=int(k["conn"][i]), ctinfo=int(k["ctinfo"][i]),
                 mark=int(k["mark"][i]), fhash=int(k["fhash"][i]), time=int(k["times"][i]),
                 start=int(k["starts"][i]), length=int(k["lens"][i]), l3=int(k["starts"][i] + h.l3_off[i]),
                 l4=int(k["starts"][i] + h.l4_off[i])) for i in range(n)]
    routes = {(r[0], r[1]): j for j, r in enumerate(ROUTES)}
    return (pkts, routes, k["route_dev"].tolist(), k["route_via"].tolist(), k["if_mtu"].tolist(),
            k["if_vxlan"].tolist(), k["neigh"], k["fdb"], 2, LOCAL_IP, VPORT, MASQ, 50)


def _forward_ref(k, buf_ref):
    pkts, routes, route_dev, route_via, if_mtu, if_vxlan, neigh, fdb, *_ = _forward_args(k)
    return ref.forward(k["model"], pkts, routes, route_dev, route_via, if_mtu, if_vxlan, k["if_macs"].tolist(), neigh,
                       fdb, 2, LOCAL_IP, VPORT, VNI, 64, MASQ, 50, buf_ref, lambda m: list(range(7, 7 + m)))


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 6), st.integers(0, 10), st.sampled_from([0, 1, 2, 16]))
def test_forward_equals_reference(seed, n, n_conns, spare):
    k = _forward_case(seed, n, n_conns, spare)
    t = k["t"]
    buf_ref = bytearray(k["buf"].tobytes())
    want = _forward_ref(k, buf_ref)
    snap = _snapshot(t)
    ok, _ = _forward_check(k)
    assert _untouched(t, snap)  # the check touches nothing
    assert ok == (want is not None)
    if not ok:
        check_same(t, k["model"])
        return
    got = _run_forward(k)
    assert got == want
    assert k["buf"].tobytes() == bytes(buf_ref)
    check_same(t, k["model"])


def test_expired_outer_entry_is_reaped_by_the_lookups():
    """As for PREROUTING, the outer packets' staged OUTPUT conntrack looks
    them all up before inserting: of two outer flows' first packets, the
    second with an expired entry at its tuple (a DNAT'd one, so its reply
    tuple is not the new entry's), the first inserted takes the reaped id."""
    def expired_at_second(rng, remote, osports):
        return [((LOCAL_IP, remote, osports[1], VPORT), (ELSEWHERE, LOCAL_IP, 9999, osports[1]), 1)]
    for seed in range(100):   # the first group of two encapsulated packets of distinct outer flows that fuses
        k = _forward_case(seed, 2, 4, outer_entries=expired_at_second, vx_share=1.0)
        ok, fw = _forward_check(k)
        if ok and fw.o_miss.all() and fw.osport[0] != fw.osport[1]:
            break
    else:
        raise AssertionError("no such group")
    reaped = k["model"].tuples[(0, 17, LOCAL_IP, int(fw.remote[1]), int(fw.osport[1]), VPORT)][0]
    want = _forward_ref(k, bytearray(k["buf"].tobytes()))
    assert want[0]["o_conn"] == reaped
    assert _run_forward(k) == want
    check_same(k["t"], k["model"])


# --- the property tests are not vacuous ---------------------------------------------------

def _draws(n_cases, *ranges):
    """n_cases argument tuples drawn as the property tests draw them (ints
    from ranges (lo, hi), inclusive, or from lists), reproducibly."""
    rng = np.random.default_rng(0)
    return [tuple(int(rng.integers(r[0], r[1] + 1)) if isinstance(r, tuple) else int(rng.choice(r)) for r in ranges)
            for _ in range(n_cases)]


def _fits_with_room(check, model, *args) -> bool:
    """Whether the reference check, which failed, passes in a bigger table
    (the capacity rule alone refused the group)."""
    roomy = copy.deepcopy(model)
    roomy.capacity += 100
    return check(roomy, *args) is not None


def test_fused_paths_are_taken():
    """The common case and the new cases (first packets, duplicated ones,
    with an expired entry reaped at their tuple, bindings that clash, REJECT
    and DROP, SYN|ACK answers; outer misses, duplicated ones) do pass the
    checks, and the capacity rule does refuse some groups, in the property
    tests' own distributions: the comparisons are not vacuous."""
    seen = dict.fromkeys(("ok", "first", "duplicate", "reap", "clash", "refused", "synack", "full"), 0)
    for seed, n_conns, n, now, bind, spare in _draws(300, (0, 2**32 - 1), (0, 12), (1, 6), (5, 120), (0, 1),
                                                      [0, 1, 2, 3, 16]):
        k = _prerouting_case(seed, n_conns, n, spare, now)
        model = _model(k["t"])
        ok, conn, direction, _, new, first = _check(k)
        if not ok:
            seen["full"] += _fits_with_room(ref.prerouting_check, model, _ref_pkts(k), now)
            continue
        recs = k["t"].conns
        syn_sent = (recs["state"][np.maximum(conn, 0)] & 0x7F) == flow.SYN_SENT
        synack = (k["flags"] == flow.SYN | flow.ACK) & (direction == ct.REPLY) & syn_sent & (k["cols"]["proto"] == 6)
        reap = [(0, int(k["cols"]["proto"][i])) + tuple(int(k["cols"][f][i]) for f in ("src", "dst", "sport", "dport"))
                in model.tuples for i in np.nonzero(new)[0]]
        info, verdict, _, _ = _apply(k, conn, direction, new, bool(bind))
        seen["ok"] += 1
        seen["first"] += bool(new.any())
        seen["duplicate"] += bool((new & (first != np.arange(n))).any())
        seen["reap"] += any(reap)
        seen["clash"] += bool((verdict == drop.CT_CLASH).any())
        seen["refused"] += bool(((verdict == drop.SERVICE_NO_ENDPOINTS) | (verdict == drop.SERVICE_NO_LOCAL)).any())
        seen["synack"] += bool(synack.any())
    assert seen["ok"] >= 80 and seen["first"] >= 45 and seen["duplicate"] >= 5 and seen["reap"] >= 5, seen
    assert seen["clash"] >= 2 and seen["refused"] >= 10 and seen["synack"] >= 3 and seen["full"] >= 20, seen
    fwd = dict.fromkeys(("ok", "miss", "duplicate", "reply", "full"), 0)
    for seed, n, n_conns, spare in _draws(300, (0, 2**32 - 1), (1, 6), (0, 10), [0, 1, 2, 16]):
        k = _forward_case(seed, n, n_conns, spare)
        ok, fw = _forward_check(k)
        if not ok:
            fwd["full"] += _fits_with_room(ref.forward_check, k["model"], *_forward_args(k))
            continue
        osp = fw.osport[fw.o_miss]
        fwd["ok"] += 1
        fwd["miss"] += bool(fw.o_miss.any())
        fwd["duplicate"] += len(np.unique(osp)) < len(osp)
        fwd["reply"] += bool(((fw.o_conn >= 0) & (fw.o_dir == ct.REPLY)).any())
    assert fwd["ok"] >= 80 and fwd["miss"] >= 25 and fwd["duplicate"] >= 3, fwd
    assert fwd["reply"] >= 5 and fwd["full"] >= 15, fwd


# --- wrappers and bounds ------------------------------------------------------------------

def test_wrappers_validate():
    t = ct.make_table(4)
    z32 = np.zeros(1, np.uint32)
    with pytest.raises(ValueError):
        netns_fast.prerouting_check(t, z32, z32, np.zeros(1, np.uint16), np.zeros(1, np.uint16),
                                    np.zeros(1, np.uint8), np.zeros(2, np.uint8), 0)
    with pytest.raises(ValueError):
        netns_fast.prerouting_check(t, z32.astype(np.int64), z32, np.zeros(1, np.uint16), np.zeros(1, np.uint16),
                                    np.zeros(1, np.uint8), np.zeros(1, np.uint8), 0)
    k = next(k for k in (_prerouting_case(s, 4, 3, 16, 40) for s in range(100)) if _check(k)[0])
    ok, conn, direction, _, new, _ = _check(k)
    snap = _snapshot(k["t"])
    for bad, says in ((dict(act=k["act"].astype(np.int64)), "act: expected dtype uint8"),
                      (dict(act=np.full(3, netns_fast.A_DROP + 1, np.uint8)), "act: values must be in"),
                      (dict(bip=k["bip"][:2]), "same length")):
        with pytest.raises(ValueError, match=says):
            _apply({**k, **bad}, conn, direction, new, True)
    with pytest.raises(ValueError, match="conn: must be C-contiguous"):   # a strided view would lose the writes
        _apply(k, np.repeat(conn, 2)[::2], direction, new, True)
    assert _untouched(k["t"], snap)   # refused before any kernel ran


def test_kernels_in_bounds_under_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from tests.test_netns_fast import _prerouting_case, _check, _apply, _forward_case, _run_forward
        done = firsts = 0
        for seed in range(40):
            k = _prerouting_case(seed, 10, 8, 16 if seed % 2 else 1, 40)
            ok, conn, direction, _, new, _ = _check(k)
            if ok:
                _apply(k, conn, direction, new, seed % 3 != 0)
                done += 1
                firsts += bool(new.any())
            done += _run_forward(_forward_case(seed, 8, 10, seed % 3)) is not None
        print("ok", done, firsts)
    """)
    assert out.startswith("ok")
    assert int(out.split()[2]) > 0   # first packets went through the kernels too
