"""kernels.flow against its references (tests/reference/flow.py) and Scapy."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from kernels import conntrack as ct
from kernels import flow
from tests.reference import flow as ref
from tests.util import run_with_boundscheck

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)


def _fill_one(proto, src, dst, sport, dport, seq, ack, flags, ipid, payload, tag=None):
    buf = np.zeros(2048, np.uint8)
    a = lambda v, d: np.array([v], d)  # noqa: E731
    n = flow.fill_frames(buf, a(64, np.int64), a(proto, np.uint8), a(src, np.uint32), a(dst, np.uint32),
                         a(sport, np.uint16), a(dport, np.uint16), a(seq, np.uint32), a(ack, np.uint32),
                         a(flags, np.uint8), a(ipid, np.uint16), np.frombuffer(payload, np.uint8).copy()
                         if payload else np.zeros(1, np.uint8), a(len(payload), np.uint16),
                         None if tag is None else a(tag, np.uint64))
    return buf[64:64 + int(n[0])].tobytes()


@settings(max_examples=150)
@given(st.sampled_from([6, 17]), u32, u32, u16, u16, u32, u32, st.integers(0, 255), u16,
       st.binary(min_size=0, max_size=64), st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_fill_frames_equals_reference(proto, src, dst, sport, dport, seq, ack, flags, ipid, payload, tag):
    got = _fill_one(proto, src, dst, sport, dport, seq, ack, flags, ipid, payload, tag)
    assert got == ref.frame(proto, src, dst, sport, dport, seq, ack, flags, ipid, payload, tag)


def test_templates_equal_scapy():
    payload = bytes(range(40))
    got = _fill_one(6, 0x0AF40004, 0x0A6063FA, 40000, 80, 1000, 2000, 0x18, 77, payload)
    want = bytes(Ether(dst="00:00:00:00:00:00", src="00:00:00:00:00:00")
                 / IP(src="10.244.0.4", dst="10.96.99.250", id=77, flags="DF", ttl=64)
                 / TCP(sport=40000, dport=80, seq=1000, ack=2000, flags="PA", window=64240) / payload)
    assert got == want
    got = _fill_one(17, 0x0AF40004, 0x0A6063FA, 40000, 53, 0, 0, 0, 5, payload)
    want = bytes(Ether(dst="00:00:00:00:00:00", src="00:00:00:00:00:00")
                 / IP(src="10.244.0.4", dst="10.96.99.250", id=5, flags="DF", ttl=64)
                 / UDP(sport=40000, dport=53) / payload)
    assert got == want
    syn = _fill_one(6, 1, 2, 3, 4, 5, 0, 0x02, 9, b"")
    assert bytes(Ether(syn)[TCP]) == bytes(TCP(sport=3, dport=4, seq=5, flags="S", window=64240,
                                               chksum=Ether(syn)[TCP].chksum))
    assert Ether(syn)[IP].chksum == IP(bytes(Ether(syn)[IP])).chksum  # Scapy agrees with the checksums
    e = Ether(syn)
    del e[IP].chksum, e[TCP].chksum
    assert bytes(e) == syn


flags_st = st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x01, 0x04, 0x14, 0x00, 0x03])


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from([6, 17, 1]), flags_st, st.integers(0, 1), st.integers(0, 8),
                          st.integers(0, 0x87)), min_size=1, max_size=20), st.integers(0, 10**12))
def test_ct_open_and_advance_equal_reference(packets, now):
    for proto, flags, _, _, _ in packets:
        if proto in (6, 17):
            ok, state, timeout = flow.ct_open(np.array([proto], np.uint8), np.array([flags], np.uint8))
            assert (bool(ok[0]), int(state[0]), int(timeout[0])) == ref.ct_open(proto, flags)
    table = ct.make_table(16)
    conns = []
    for proto, flags, direction, state, status in packets:
        c = len(conns) % 16
        table.conns[c]["status"] = (status & ~ct.IPS_CONFIRMED) | (ct.IPS_CONFIRMED if status & 1 else 0)
        table.conns[c]["state"] = state | (status & 0x80)
        table.conns[c]["proto"] = proto
        conns.append(c)
    a = table.conns.copy()
    b = table.conns.copy()
    for (proto, flags, direction, _, _), c in zip(packets, conns):
        want = ref.ct_advance(a, c, direction, proto, flags, now)
        info = np.zeros(1, np.uint8)
        flow._advance(b, np.array([c], np.int32), np.array([direction], np.int8), np.array([proto], np.uint8),
                      np.array([flags], np.uint8), np.int64(now), info)
        assert int(info[0]) == want
    assert (a == b).all()


@settings(max_examples=150)
@given(st.lists(st.tuples(u32, u32, u16, u16, u32, u32, u16, u16), min_size=1, max_size=8), st.booleans(),
       st.integers(0, 3))
def test_nat_tuple_equals_reference(conns_in, source, pick):
    table = ct.make_table(16)
    cols = [np.array(c, d) for c, d in zip(zip(*conns_in), (np.uint32, np.uint32, np.uint16, np.uint16,
                                                            np.uint32, np.uint32, np.uint16, np.uint16))]
    n = len(conns_in)
    ins = ct.insert(table, np.zeros(n, np.uint16), cols[0], cols[1], cols[2], cols[3], np.full(n, 6, np.uint8),
                    cols[4], cols[5], cols[6], cols[7], np.ones(n, np.uint8), np.full(n, 100, np.int64), 0)
    conn = ins.conn
    # packets: the original tuple, the reply tuple, or a stranger
    src = np.where(pick % 2 == 0, cols[0], cols[4]).astype(np.uint32)
    dst = np.where(pick % 2 == 0, cols[1], cols[5]).astype(np.uint32)
    sport = np.where(pick % 2 == 0, cols[2], cols[6]).astype(np.uint16)
    dport = np.where(pick % 2 == 0, cols[3], cols[7]).astype(np.uint16)
    got = flow.nat_tuple(table, conn, src, dst, sport, dport, source)
    for k in range(n):
        want = ref.nat_tuple(table.conns, int(conn[k]), int(src[k]), int(dst[k]), int(sport[k]), int(dport[k]),
                             source)
        assert tuple(int(x[k]) for x in got[:4]) + (bool(got[4][k]),) == want


@settings(max_examples=100)
@given(st.lists(st.tuples(u32, u32, u16, u16, u32, u16), min_size=1, max_size=12), st.integers(1, 16))
def test_renat_equals_delete_then_insert(flows_in, capacity):
    """renat is Nat._reinsert: delete, insert with the new reply tuple, or put
    back; a binding, not a delete and an insert, in the statistics."""
    def fresh():
        t = ct.make_table(capacity, seed=3)
        for src, dst, sp, dp, _, _ in flows_in:
            u = lambda v, d: np.array([v], d)  # noqa: E731
            ct.insert(t, u(0, np.uint16), u(src, np.uint32), u(dst, np.uint32), u(sp, np.uint16), u(dp, np.uint16),
                      u(17, np.uint8), u(dst, np.uint32), u(src, np.uint32), u(dp, np.uint16), u(sp, np.uint16),
                      u(0, np.uint8), u(50, np.int64), 5)
        return t
    a, b = fresh(), fresh()
    live = np.nonzero(a.conns["status"] & ct.IPS_CONFIRMED)[0].astype(np.int32)
    k = len(live)
    new_src = np.array([f[4] for f in flows_in][:k], np.uint32)
    new_port = np.array([f[5] for f in flows_in][:k], np.uint16)
    recs = a.conns[live]
    got = flow.renat(a, live, new_src, recs["reply_dst"].copy(), new_port, recs["reply_dport"].copy(), 7)
    for j, c in enumerate(live.tolist()):  # the reference: the wrappers, one connection at a time
        rec = b.conns[c].copy()
        mark = int(rec["mark"])
        ct.delete(b, np.array([c], np.int32))
        b.stats[ct.STAT_DELETED] -= 1
        b.stats[ct.STAT_INSERT] -= 1
        u = lambda v, d: np.array([v], d)  # noqa: E731
        args = (u(0, np.uint16), u(int(rec["orig_src"]), np.uint32), u(int(rec["orig_dst"]), np.uint32),
                u(int(rec["orig_sport"]), np.uint16), u(int(rec["orig_dport"]), np.uint16), u(17, np.uint8))
        left = max(int(rec["expires"]) - 7, 1)
        ins = ct.insert(b, *args, u(int(new_src[j]), np.uint32), u(int(rec["reply_dst"]), np.uint32),
                        u(int(new_port[j]), np.uint16), u(int(rec["reply_dport"]), np.uint16),
                        u(int(rec["state"]), np.uint8), u(left, np.int64), 7)
        if ins.drop[0]:
            ct.insert(b, *args, u(int(rec["reply_src"]), np.uint32), u(int(rec["reply_dst"]), np.uint32),
                      u(int(rec["reply_sport"]), np.uint16), u(int(rec["reply_dport"]), np.uint16),
                      u(int(rec["state"]), np.uint8), u(left, np.int64), 7)
            assert got[j] == -1
            continue
        ct.set_mark(b, ins.conn, np.array([mark], np.uint32))
        assert got[j] == ins.conn[0]
    assert (a.conns == b.conns).all() and (a.index == b.index).all() and (a.stats == b.stats).all()


def test_wrappers_reject_bad_input():
    import pytest
    buf = np.zeros(100, np.uint8)
    z = lambda d: np.zeros(1, d)  # noqa: E731
    with pytest.raises(ValueError):
        flow.fill_frames(buf, np.array([90], np.int64), np.array([6], np.uint8), z(np.uint32), z(np.uint32),
                         z(np.uint16), z(np.uint16), z(np.uint32), z(np.uint32), z(np.uint8), z(np.uint16),
                         np.zeros(4, np.uint8), np.zeros(1, np.uint16))
    with pytest.raises(ValueError):
        flow.ct_advance(ct.make_table(4), np.array([9], np.int32), z(np.int8), z(np.uint8), z(np.uint8), 0)


def test_kernels_in_bounds_under_boundscheck():
    run_with_boundscheck("""
        import numpy as np
        from kernels import conntrack as ct, flow
        rng = np.random.default_rng(1)
        n = 200
        buf = np.zeros(n * 256, np.uint8)
        proto = rng.choice(np.array([6, 17], np.uint8), n)
        r = lambda d, hi: rng.integers(0, hi, n).astype(d)
        flow.fill_frames(buf, np.arange(n, dtype=np.int64) * 256, proto, r(np.uint32, 2**32), r(np.uint32, 2**32),
                         r(np.uint16, 2**16), r(np.uint16, 2**16), r(np.uint32, 2**32), r(np.uint32, 2**32),
                         r(np.uint8, 256), r(np.uint16, 2**16), np.arange(150, dtype=np.uint8),
                         r(np.uint16, 150), r(np.uint64, 2**63))
        t = ct.make_table(8, seed=1)
        src, dst = r(np.uint32, 50), r(np.uint32, 50)
        sp, dp = r(np.uint16, 50), r(np.uint16, 50)
        ins = ct.insert(t, np.zeros(n, np.uint16), src, dst, sp, dp, proto, dst, src, dp, sp,
                        np.zeros(n, np.uint8), np.full(n, 10, np.int64), 0)
        conn = np.where(rng.random(n) < 0.2, -1, ins.conn).astype(np.int32)
        flow.ct_advance(t, conn, r(np.int8, 2), proto, r(np.uint8, 256), 3)
        flow.nat_tuple(t, conn, src, dst, sp, dp, True)
        flow.renat(t, conn, r(np.uint32, 50), src, r(np.uint16, 50), sp, 4)
        print("ok")
    """)
