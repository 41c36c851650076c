"""kernels.netns_fast against its reference (tests/reference/netns_fast.py):
random tables and packets (collisions, expired and NAT'd entries, misses,
SYN/FIN/RST, NEW and REPLY packets, unresolved neighbours, missing FDB
entries, masquerade marks), and a bounds-checked fuzz run."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import conntrack as ct
from kernels import flow, lpm, netns_fast, parse
from tests.reference import netns_fast as ref
from tests.util import run_with_boundscheck

STRIDE = 256
HEAD = 128
MASQ = 0x4000


def _same(a, b) -> bool:
    """Equal records, field by field (the padding is not copied)."""
    return all(np.array_equal(a[f], b[f]) for f in a.dtype.names)


def _table(rng, n_conns, tcp_states=(3, 3, 3, 1, 4)):
    t = ct.make_table(max(n_conns, 1) * 2, seed=int(rng.integers(0, 2**32)))
    ips = rng.integers(1, 6, n_conns).astype(np.uint32) | np.uint32(0x0A000000)
    dsts = rng.integers(1, 6, n_conns).astype(np.uint32) | np.uint32(0x0A600000)
    sp = rng.integers(1000, 1004, n_conns).astype(np.uint16)
    dp = rng.integers(80, 82, n_conns).astype(np.uint16)
    proto = rng.choice(np.array([6, 17], np.uint8), n_conns)
    state = np.where(proto == 6, rng.choice(np.array(tcp_states, np.uint8), n_conns), 0).astype(np.uint8)
    timeout = rng.integers(1, 100, n_conns).astype(np.int64)
    z = np.zeros(n_conns, np.uint16)
    ins = ct.insert(t, z, ips, dsts, sp, dp, proto, dsts, ips, dp, sp, state, timeout, 10)
    conn = ins.conn[ins.conn >= 0]
    nat = conn[rng.random(len(conn)) < 0.4]
    if len(nat):  # DNAT some: a new reply source
        recs = t.conns[nat]
        flow.renat(t, nat, rng.integers(1, 4, len(nat)).astype(np.uint32) | np.uint32(0x0AF40000),
                   recs["reply_dst"].copy(), rng.integers(8080, 8082, len(nat)).astype(np.uint16),
                   recs["reply_dport"].copy(), 10)
    live = np.nonzero(t.conns["status"] & ct.IPS_CONFIRMED)[0]
    seen = live[rng.random(len(live)) < 0.3]
    t.conns["status"][seen] |= ct.IPS_SEEN_REPLY
    return t, live


def _packets(rng, t, live, n):
    recs = t.conns
    cols = {k: np.zeros(n, d) for k, d in (("src", np.uint32), ("dst", np.uint32), ("sport", np.uint16),
                                           ("dport", np.uint16), ("proto", np.uint8))}
    for i in range(n):
        u = rng.random()
        if len(live) and u < 0.85:
            c = int(rng.choice(live))
            side = "orig" if rng.random() < 0.5 else "reply"
            vals = [recs[f"{side}_src"][c], recs[f"{side}_dst"][c], recs[f"{side}_sport"][c],
                    recs[f"{side}_dport"][c], recs["proto"][c]]
        else:
            vals = [rng.integers(1, 6) | 0x0A000000, rng.integers(1, 6) | 0x0A600000, rng.integers(1000, 1004),
                    rng.integers(80, 82), rng.choice([6, 17])]
        for k, v in zip(("src", "dst", "sport", "dport", "proto"), vals):
            cols[k][i] = v
    flags = rng.choice(np.array([0x10, 0x18, 0x10, 0x18, 0x02, 0x11, 0x14, 0x12], np.uint8), n)
    buf = np.zeros(n * STRIDE + HEAD, np.uint8)
    starts = np.arange(n, dtype=np.int64) * STRIDE + HEAD
    payload = np.arange(64, dtype=np.uint8)
    lens = flow.fill_frames(buf, starts, cols["proto"], cols["src"], cols["dst"], cols["sport"], cols["dport"],
                            rng.integers(0, 2**32, n).astype(np.uint32), rng.integers(0, 2**32, n).astype(np.uint32),
                            flags, rng.integers(0, 2**16, n).astype(np.uint16), payload,
                            rng.integers(0, 40, n).astype(np.uint16), None)
    h = parse.parse(buf, starts, lens.astype(np.int64), ())
    return cols, flags, buf, starts, lens.astype(np.int64), h


def _pkts(cols, flags, starts, h):
    return [dict(src=int(cols["src"][i]), dst=int(cols["dst"][i]), sport=int(cols["sport"][i]),
                 dport=int(cols["dport"][i]), proto=int(cols["proto"][i]), flags=int(flags[i]),
                 l3=int(starts[i] + h.l3_off[i]), l4=int(starts[i] + h.l4_off[i])) for i in range(len(starts))]


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 12), st.integers(0, 6), st.integers(5, 120))
def test_prerouting_equals_reference(seed, n_conns, n, now):
    rng = np.random.default_rng(seed)
    t, live = _table(rng, n_conns, (3,) if seed % 3 else (3, 3, 1, 4))
    cols, flags, buf, starts, lens, h = _packets(rng, t, live, n)
    conns_ref, buf_ref = t.conns.copy(), bytearray(buf.tobytes())
    want = ref.prerouting(conns_ref, _pkts(cols, flags, starts, h), now, buf_ref)
    before = t.conns.copy()
    ok, conn, direction, maybe_new = netns_fast.prerouting_check(t, cols["src"], cols["dst"], cols["sport"],
                                                                 cols["dport"], cols["proto"], flags, now)
    assert _same(t.conns, before)  # the check touches nothing
    assert ok == (want is not None)
    if not ok:
        return
    assert conn.tolist() == [w[0] for w in want]
    assert direction.tolist() == [w[1] for w in want]
    assert maybe_new.tolist() == [w[2] for w in want]
    dst, dport = cols["dst"].copy(), cols["dport"].copy()
    info = netns_fast.prerouting_apply(t, conn, direction, cols["proto"], flags, now, buf, starts,
                                       np.ascontiguousarray(h.l3_off), np.ascontiguousarray(h.l4_off),
                                       cols["src"], dst, cols["sport"], dport)
    assert info.tolist() == [w[3] for w in want]
    assert dst.tolist() == [w[4] for w in want] and dport.tolist() == [w[5] for w in want]
    assert buf.tobytes() == bytes(buf_ref)
    assert _same(t.conns, conns_ref)


LOCAL_IP, VPORT, VNI = 0xC0A80001, 8472, 1
# routes: 10.96/16 -> cni0 (dev 1, on-link); 10.97/16 -> flannel (dev 2) via 10.97.0.0; 192.168/16 -> eth0 (dev 0)
ROUTES = [(0x0A600000, 16, 1, 0), (0x0A610000, 16, 2, 0x0A610000), (0xC0A80000, 16, 0, 0)]


def _forward_case(seed, n, n_conns):
    rng = np.random.default_rng(seed)
    t, live = _table(rng, n_conns)
    cols, flags, buf, starts, lens, h = _packets(rng, t, live, n)
    # a third of the packets go to 10.97/16 (VXLAN), with their own rewritten dst
    vx_dst = rng.random(n) < 0.5
    dst = np.where(vx_dst, (cols["dst"] & np.uint32(0xFFFF)) | np.uint32(0x0A610000), cols["dst"]).astype(np.uint32)
    fib = lpm.build(np.array([r[0] for r in ROUTES], np.uint32), np.array([r[1] for r in ROUTES], np.uint8),
                    np.arange(len(ROUTES), dtype=np.int32), stride=8)
    routes = lpm.lookup(fib, dst)
    route_dev = np.array([r[2] for r in ROUTES], np.int32)
    route_via = np.array([r[3] for r in ROUTES], np.uint32)
    if_mtu = np.array([1500, rng.choice([1500, 100]), 1450], np.int64)
    if_vxlan = np.array([False, False, True])
    if_macs = np.array([0x020000000001, 0x020000000002, 0x020000000003], np.uint64)
    neigh = {(1, int(d)): 0x0A0000000000 + int(d & 0xFF) for d in np.unique(dst) if rng.random() < 0.9}
    neigh[(2, 0x0A610000)] = 0x0E0000000001
    remotes = [0xC0A80002, 0xC0A80003]
    for r in remotes:
        if rng.random() < 0.95:
            neigh[(0, r)] = 0x0C0000000000 + (r & 0xFF)
    fdb = {0x0E0000000001: remotes[int(rng.integers(0, 2))]} if rng.random() < 0.95 else {}
    fhash = rng.integers(0, 2**32, n).astype(np.uint32)
    fhash[rng.random(n) < 0.03] = 0
    # outer entries for most of the encapsulated flows
    from kernels.hashing import udp_source_port
    osp = udp_source_port(fhash, 0, 0)
    for r in fdb.values():
        m = np.nonzero(rng.random(n) < 0.95)[0]
        if len(m):
            z = np.zeros(len(m), np.uint16)
            src = np.full(len(m), LOCAL_IP, np.uint32)
            rem = np.full(len(m), r, np.uint32)
            vp = np.full(len(m), VPORT, np.uint16)
            p17 = np.full(len(m), 17, np.uint8)
            ct.lookup_or_insert(t, z, src, rem, osp[m], vp, p17, np.zeros(len(m), np.uint8),
                                np.full(len(m), 100, np.int64), 10)
    conn = np.array([ref.live(t.conns, int(cols["src"][i]), int(cols["dst"][i]), int(cols["sport"][i]),
                              int(cols["dport"][i]), int(cols["proto"][i]), 11)[0] for i in range(n)], np.int32)
    ctinfo = rng.choice(np.array([1, 2, 2], np.uint8), n)
    mark = np.where(rng.random(n) < 0.05, MASQ, 0).astype(np.uint32)
    times = rng.integers(11, 40, n).astype(np.int64)
    ip_len = np.ascontiguousarray(h.ip_len)
    return dict(t=t, cols=cols, buf=buf, starts=starts, lens=lens, h=h, dst=dst, fib=fib, routes=routes,
                route_dev=route_dev, route_via=route_via, if_mtu=if_mtu, if_vxlan=if_vxlan, if_macs=if_macs,
                neigh=neigh, fdb=fdb, fhash=fhash, conn=conn, ctinfo=ctinfo, mark=mark, times=times, ip_len=ip_len)


def _run_forward(k, ids_start=7):
    t, cols, h = k["t"], k["cols"], k["h"]
    nbs = sorted(((a << 32) | b, m) for (a, b), m in k["neigh"].items())
    nb_keys, nb_macs = np.array([x for x, _ in nbs], np.uint64), np.array([m for _, m in nbs], np.uint64)
    fdb = sorted(k["fdb"].items())
    ok, fw = netns_fast.forward_check(
        t, k["fib"], k["routes"], k["route_dev"], k["route_via"], k["if_mtu"], k["if_vxlan"], nb_keys, nb_macs,
        np.array([a for a, _ in fdb], np.uint64), np.array([b for _, b in fdb], np.uint32), 2, LOCAL_IP, VPORT,
        cols["src"], k["dst"], cols["sport"], cols["proto"], k["ip_len"], k["conn"], k["ctinfo"], k["mark"], MASQ,
        k["fhash"], k["times"], k["starts"], k["lens"], 50)
    if not ok:
        return None
    start, length = k["starts"].copy(), k["lens"].copy()
    ids = (ids_start + np.arange(int((fw.o_conn >= 0).sum()))).astype(np.uint16)
    netns_fast.forward_apply(t, fw, k["buf"], start, length, np.ascontiguousarray(h.l3_off),
                             np.ascontiguousarray(h.l4_off), cols["proto"], k["dst"], cols["dport"], nb_macs,
                             k["if_macs"], k["if_vxlan"], ids, LOCAL_IP, VPORT, VNI, 64)
    return list(zip(fw.out_if.tolist(), start.tolist(), length.tolist()))


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 6), st.integers(0, 10))
def test_forward_equals_reference(seed, n, n_conns):
    k = _forward_case(seed, n, n_conns)
    t, cols, h = k["t"], k["cols"], k["h"]
    # the packets' dst as the route sees it (as if DNAT had written it)
    for i in range(n):
        p = int(k["starts"][i] + h.l3_off[i])
        k["buf"][p + 16:p + 20] = np.frombuffer(int(k["dst"][i]).to_bytes(4, "big"), np.uint8)
    conns_ref, buf_ref = t.conns.copy(), bytearray(k["buf"].tobytes())
    pkts = [dict(route=int(k["routes"][i]), src=int(cols["src"][i]), dst=int(k["dst"][i]),
                 sport=int(cols["sport"][i]), dport=int(cols["dport"][i]), proto=int(cols["proto"][i]),
                 ip_len=int(k["ip_len"][i]), conn=int(k["conn"][i]), ctinfo=int(k["ctinfo"][i]),
                 mark=int(k["mark"][i]), fhash=int(k["fhash"][i]), time=int(k["times"][i]),
                 start=int(k["starts"][i]), length=int(k["lens"][i]), l3=int(k["starts"][i] + h.l3_off[i]),
                 l4=int(k["starts"][i] + h.l4_off[i])) for i in range(n)]
    routes = {(r[0], r[1]): j for j, r in enumerate(ROUTES)}
    want = ref.forward(conns_ref, pkts, routes, k["route_dev"].tolist(), k["route_via"].tolist(),
                       k["if_mtu"].tolist(), k["if_vxlan"].tolist(), k["if_macs"].tolist(), k["neigh"], k["fdb"], 2,
                       LOCAL_IP, VPORT, VNI, 64, MASQ, 50, buf_ref, lambda m: list(range(7, 7 + m)))
    before = t.conns.copy()
    got = _run_forward(k)
    if got is None:
        assert _same(t.conns, before)
    assert (got is None) == (want is None)
    if got is None:
        return
    assert got == want
    assert k["buf"].tobytes() == bytes(buf_ref)
    assert _same(t.conns, conns_ref)


def test_fused_paths_are_taken():
    """The common case does pass the checks (not a vacuous comparison)."""
    hits = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        t, live = _table(rng, 8, (3,))
        cols, flags, buf, starts, lens, h = _packets(rng, t, live, 3)
        flags[:] = 0x10
        ok, *_ = netns_fast.prerouting_check(t, cols["src"], cols["dst"], cols["sport"], cols["dport"],
                                             cols["proto"], flags, 11)
        hits += ok
    assert hits > 5
    fwd = sum(_run_forward(_forward_case(seed, 3, 8)) is not None for seed in range(60))
    assert fwd > 3


def test_wrappers_validate():
    import pytest
    t = ct.make_table(4)
    z32 = np.zeros(1, np.uint32)
    with pytest.raises(ValueError):
        netns_fast.prerouting_check(t, z32, z32, np.zeros(1, np.uint16), np.zeros(1, np.uint16),
                                    np.zeros(1, np.uint8), np.zeros(2, np.uint8), 0)
    with pytest.raises(ValueError):
        netns_fast.prerouting_check(t, z32.astype(np.int64), z32, np.zeros(1, np.uint16), np.zeros(1, np.uint16),
                                    np.zeros(1, np.uint8), np.zeros(1, np.uint8), 0)


def test_kernels_in_bounds_under_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from tests.test_netns_fast import _table, _packets, _forward_case, _run_forward
        from kernels import netns_fast
        done = 0
        for seed in range(40):
            rng = np.random.default_rng(seed)
            t, live = _table(rng, 10, (3,))
            cols, flags, buf, starts, lens, h = _packets(rng, t, live, 8)
            ok, conn, d, new = netns_fast.prerouting_check(t, cols["src"], cols["dst"], cols["sport"],
                                                           cols["dport"], cols["proto"], flags, 11)
            if ok:
                netns_fast.prerouting_apply(t, conn, d, cols["proto"], flags, 11, buf, starts,
                                            np.ascontiguousarray(h.l3_off), np.ascontiguousarray(h.l4_off),
                                            cols["src"], cols["dst"].copy(), cols["sport"], cols["dport"].copy())
                done += 1
            done += _run_forward(_forward_case(seed, 8, 10)) is not None
        print("ok", done)
    """)
    assert out.startswith("ok")
