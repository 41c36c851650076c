"""kernels.conntrack against its plain-Python reference (tests/reference/conntrack.py)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import conntrack as ct
from kernels import drop
from tests.reference import conntrack as ref
from tests.util import run_with_boundscheck

U16, U32, U8 = np.uint16, np.uint32, np.uint8


# --- helpers -----------------------------------------------------------------

def tuple_arrays(packets):
    """Arrays (zone, src, dst, sport, dport, proto) from (zone, src, dst, sport, dport, proto) tuples."""
    cols = list(zip(*packets)) or [()] * 6
    return tuple(np.array(col, dtype) for col, dtype in zip(cols, (U16, U32, U32, U16, U16, U8)))


def reply_of(pkt, nat):
    zone, src, dst, sport, dport, proto = pkt
    return (dst, src, dport, sport) if nat is None else tuple(nat)


def reply_arrays(replies):
    cols = list(zip(*replies)) or [()] * 4
    return tuple(np.array(col, dtype) for col, dtype in zip(cols, (U32, U32, U16, U16)))


def ints(values, dtype):
    return np.array(values, dtype)


def check_invariants(table):
    """The index holds exactly two tuplehashes per live connection, each
    reachable from its home slot (no empty slot in between), with the hash
    bits the tuple really has; free ids are exactly the non-live ones."""
    conns, index = table.conns, table.index
    live = {c for c in range(len(conns)) if conns[c]["status"] & ct.IPS_CONFIRMED}
    assert ct.count(table) == len(live)
    free = table.free_ids[:len(conns) - len(live)]
    assert sorted(free.tolist()) == sorted(set(range(len(conns))) - live)
    mask = len(index) - 1
    seen = set()
    for pos, word in enumerate(index.tolist()):
        if word == int(ct._EMPTY):
            continue
        ref_id = word & 0xFFFFFFFF
        c, d = ref_id >> 1, ref_id & 1
        assert c in live and (c, d) not in seen
        seen.add((c, d))
        rec = conns[c]
        side = "orig" if d == ct.ORIGINAL else "reply"
        h = ref.hash5(int(rec[f"{side}_src"]), int(rec[f"{side}_dst"]), int(rec[f"{side}_sport"]),
                      int(rec[f"{side}_dport"]), int(rec["proto"]),
                      (int(table.seed) + int(rec["zone"])) & ref.MASK64)
        assert word >> 32 == h & 0xFFFFFFFF
        p = h & mask
        while p != pos:
            assert index[p] != ct._EMPTY, "a gap between an entry and its home slot"
            p = (p + 1) & mask
    assert len(seen) == 2 * len(live)


def check_same(table, model: ref.Conntrack):
    """Kernel table and reference agree on everything observable."""
    assert ct.stats(table) == model.stats
    conns = table.conns
    live = [c for c in range(len(conns)) if conns[c]["status"] & ct.IPS_CONFIRMED]
    assert live == sorted(model.conns)
    for c in live:
        rec, want = conns[c], model.conns[c]
        got = (int(rec["zone"]), int(rec["proto"]),
               (int(rec["orig_src"]), int(rec["orig_dst"]), int(rec["orig_sport"]), int(rec["orig_dport"])),
               (int(rec["reply_src"]), int(rec["reply_dst"]), int(rec["reply_sport"]), int(rec["reply_dport"])),
               int(rec["state"]), int(rec["status"]), int(rec["expires"]), int(rec["mark"]),
               table.counters[c].tolist())
        assert got == (want.zone, want.proto, want.orig, want.reply, want.state, want.status, want.expires,
                       want.mark, want.counters)
    assert table.free_ids[:len(conns) - len(live)].tolist() == model.free
    check_invariants(table)


# --- operations applied to both ----------------------------------------------------

def do_lookup(table, model, now, packets):
    got = ct.lookup(table, *tuple_arrays(packets), now)
    want = [model.lookup(*p, now) for p in packets]
    assert list(zip(got.conn.tolist(), got.direction.tolist())) == want
    return got


def do_insert(table, model, now, items):
    """items: (packet, nat, state, timeout)."""
    packets = [p for p, _, _, _ in items]
    replies = [reply_of(p, nat) for p, nat, _, _ in items]
    got = ct.insert(table, *tuple_arrays(packets), *reply_arrays(replies),
                    ints([s for _, _, s, _ in items], U8), ints([t for _, _, _, t in items], np.int64), now)
    want = [model.insert(*p, *r, s, t, now) for (p, _, s, t), r in zip(items, replies)]
    assert list(zip(got.conn.tolist(), got.drop.tolist())) == want
    return got


def do_lookup_or_insert(table, model, now, items, with_reply=True):
    packets = [p for p, _, _, _ in items]
    replies = [reply_of(p, nat) for p, nat, _, _ in items]
    state = ints([s for _, _, s, _ in items], U8)
    timeout = ints([t for _, _, _, t in items], np.int64)
    if with_reply:
        got = ct.lookup_or_insert(table, *tuple_arrays(packets), state, timeout, now,
                                  *reply_arrays(replies))
        want = [model.lookup_or_insert(*p, s, t, now, reply=r) for (p, _, s, t), r in zip(items, replies)]
    else:
        got = ct.lookup_or_insert(table, *tuple_arrays(packets), state, timeout, now)
        want = [model.lookup_or_insert(*p, s, t, now) for p, _, s, t in items]
    assert list(zip(got.conn.tolist(), got.direction.tolist(), got.created.tolist(), got.drop.tolist())) == want
    return got


def apply(table, model, now, op):
    kind, args = op[0], op[1:]
    cap = table.conns.shape[0]

    def clip(c):  # ids are drawn from [-1, 9]; keep them valid for this table
        return min(c, cap - 1)
    if kind == "lookup":
        do_lookup(table, model, now, args[0])
    elif kind == "insert":
        do_insert(table, model, now, args[0])
    elif kind == "lookup_or_insert":
        do_lookup_or_insert(table, model, now, args[1], with_reply=args[0])
    elif kind == "update":
        items = [(clip(c), s, t, a) for c, s, t, a in args[0]]
        ct.update(table, ints([c for c, _, _, _ in items], np.int32), ints([s for _, s, _, _ in items], U8),
                  ints([t for _, _, t, _ in items], np.int64), now, ints([a for _, _, _, a in items], U8))
        for c, s, t, a in items:
            model.update(c, s, t, now, a)
    elif kind == "delete":
        ids = [clip(c) for c in args[0]]
        assert ct.delete(table, ints(ids, np.int32)) == sum(model.delete(c) for c in ids)
    elif kind == "expire":
        assert ct.expire(table, now) == model.expire(now)
    elif kind == "mark":
        items = [(clip(c), m) for c, m in args[0]]
        ct.set_mark(table, ints([c for c, _ in items], np.int32), ints([m for _, m in items], U32))
        for c, m in items:
            model.set_mark(c, m)
    elif kind == "account":
        items = [(clip(c), d, n) for c, d, n in args[0]]
        ct.account(table, ints([c for c, _, _ in items], np.int32), ints([d for _, d, _ in items], np.int8),
                   ints([n for _, _, n in items], U32))
        for c, d, n in items:
            model.account(c, d, n)
    elif kind == "flush":
        assert ct.flush_matching(table, **args[0]) == model.flush_matching(**args[0])
    else:
        raise AssertionError(kind)


# --- strategies ------------------------------------------------------------------

ADDRS = [0, 1, 0xFFFFFFFF]
PORTS = [0, 65535]
addr = st.sampled_from(ADDRS)
port = st.sampled_from(PORTS)
tuple5 = st.tuples(st.sampled_from([0, 1]), addr, addr, port, port, st.sampled_from([6, 17]))
nat = st.one_of(st.none(), st.tuples(addr, addr, port, port))
timeout = st.sampled_from([0, 1, 2, 5, 1000, 1000])
item = st.tuples(tuple5, nat, st.integers(0, 255), timeout)
conn_id = st.integers(-1, 9)
FIELD_VALUES = {"zone": [0, 1], "proto": [6, 17], "mark": [0, 0x4000]}
FIELD_VALUES.update({name: (PORTS if "port" in name else ADDRS)
                     for name in ct.FLUSH_FIELDS if name not in FIELD_VALUES})
flush_fields = st.lists(st.sampled_from(ct.FLUSH_FIELDS), min_size=1, max_size=2, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({k: st.sampled_from(FIELD_VALUES[k]) for k in names}))

op = st.one_of(
    st.tuples(st.just("lookup"), st.lists(tuple5, max_size=6)),
    st.tuples(st.just("insert"), st.lists(item, min_size=1, max_size=6)),
    st.tuples(st.just("lookup_or_insert"), st.booleans(), st.lists(item, min_size=1, max_size=6)),
    st.tuples(st.just("update"), st.lists(st.tuples(conn_id, st.integers(0, 255), timeout, st.integers(0, 1)),
                                          max_size=4)),
    st.tuples(st.just("delete"), st.lists(conn_id, max_size=4)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("mark"), st.lists(st.tuples(conn_id, st.sampled_from([0, 0x4000, 2**32 - 1])), max_size=3)),
    st.tuples(st.just("account"), st.lists(st.tuples(conn_id, st.integers(0, 1), st.integers(0, 2**32 - 1)),
                                           max_size=3)),
    st.tuples(st.just("flush"), flush_fields),
)
steps = st.lists(st.tuples(st.integers(0, 3), op), min_size=8, max_size=40)


def run_steps(cap, seed, script, table=None):
    table = ct.make_table(cap, seed) if table is None else table
    model = ref.Conntrack(cap, seed)
    now = 0
    for dt, step in script:
        now += dt
        apply(table, model, now, step)
        check_same(table, model)
    return table


# --- property tests -------------------------------------------------------------

@settings(max_examples=150)
@given(cap=st.integers(1, 8), seed=st.sampled_from([0, 1, 2**64 - 1]), script=steps)
def test_random_operations_match_reference(cap, seed, script):
    run_steps(cap, seed, script)


def colliding_tuples(cap, seed, home, n):
    """n TCP tuples of zone 0 whose ORIGINAL and REPLY both hash to `home`."""
    slots = ref.index_slots(cap)
    found = []
    src = 0
    while len(found) < n:
        src += 1
        t = (0, src, 7, 1000, 80, 6)
        if (ref.hash5(src, 7, 1000, 80, 6, seed) % slots == home
                and ref.hash5(7, src, 80, 1000, 6, seed) % slots == home):
            found.append(t)
    return found


def one_home_tuples(cap, seed, home, n):
    """n tuples whose ORIGINAL hashes to `home` (replies land anywhere)."""
    slots = ref.index_slots(cap)
    found = []
    sport = 0
    while len(found) < n:
        sport += 1
        if ref.hash5(10, 20, sport, 443, 6, seed) % slots == home:
            found.append((0, 10, 20, sport, 443, 6))
    return found


# Home = the last slot, so clusters wrap around; some flows have both tuples there.
COLLIDING = (one_home_tuples(16, 3, ref.index_slots(16) - 1, 20)
             + colliding_tuples(16, 3, ref.index_slots(16) - 1, 4))


@settings(max_examples=60)
@given(script=st.lists(st.tuples(
    st.integers(0, 2),
    st.one_of(
        st.tuples(st.just("lookup_or_insert"), st.booleans(),
                  st.lists(st.tuples(st.sampled_from(COLLIDING), st.none(), st.integers(0, 3), timeout),
                           max_size=8)),
        st.tuples(st.just("lookup"), st.lists(st.sampled_from(COLLIDING), max_size=6)),
        st.tuples(st.just("delete"), st.lists(st.integers(-1, 15), max_size=4)),
        st.tuples(st.just("update"), st.lists(st.tuples(st.integers(0, 15), st.integers(0, 3), timeout,
                                                        st.integers(0, 1)), max_size=4)),
        st.tuples(st.just("expire")),
    )), max_size=40))
def test_colliding_flows_match_reference(script):
    run_steps(16, 3, script)


def test_colliding_tuples_really_collide():
    slots = ref.index_slots(16)
    assert {ref.hash5(t[1], t[2], t[3], t[4], t[5], 3) % slots for t in COLLIDING} == {slots - 1}
    assert all(ref.hash5(t[2], t[1], t[4], t[3], t[5], 3) % slots == slots - 1 for t in COLLIDING[-4:])


def test_reference_hash_is_kernels_hash5():
    from kernels.hashing import hash5

    for args in [(0, 0, 0, 0, 0, 0), (1, 2, 3, 4, 6, 7), (2**32 - 1, 2**32 - 1, 65535, 65535, 255, 2**64 - 1)]:
        assert int(hash5(*(np.uint64(a) for a in args))) == ref.hash5(*args)


# --- unit tests ------------------------------------------------------------------

CLIENT, VIP, BACKEND, NODE = 0x0AF40105, 0x0A600A0A, 0x0AF40207, 0xC0A8000B


def pkt(src, dst, sport, dport, proto=6, zone=0):
    return (zone, src, dst, sport, dport, proto)


def test_dnat_connection_is_found_from_both_sides():
    table, model = ct.make_table(8), ref.Conntrack(8)
    orig = pkt(CLIENT, VIP, 40000, 80)
    got = do_lookup_or_insert(table, model, 10, [(orig, (BACKEND, CLIENT, 8080, 40000), 1, 100)])
    c = int(got.conn[0])
    assert got.created.tolist() == [True]
    assert table.conns[c]["status"] & ct.IPS_DST_NAT and not table.conns[c]["status"] & ct.IPS_SRC_NAT
    got = do_lookup(table, model, 20, [pkt(BACKEND, CLIENT, 8080, 40000), orig, pkt(VIP, CLIENT, 80, 40000)])
    assert got.conn.tolist() == [c, c, -1] and got.direction.tolist() == [ct.REPLY, ct.ORIGINAL, -1]
    assert table.conns[c]["status"] & ct.IPS_SEEN_REPLY
    check_same(table, model)


def test_masquerade_sets_src_nat_and_flush_by_reply_src():
    table, model = ct.make_table(8), ref.Conntrack(8)
    items = [(pkt(CLIENT, VIP, 40000 + k, 53, 17), (BACKEND + k % 2, NODE, 53, 61000 + k), 0, 30) for k in range(4)]
    got = do_insert(table, model, 0, items)
    assert all(table.conns[c]["status"] & ct.IPS_SRC_NAT for c in got.conn)
    ct.set_mark(table, got.conn, np.full(4, 0x4000, U32))
    for c in got.conn.tolist():
        model.set_mark(c, 0x4000)
    flushed = ct.flush_matching(table, proto=17, reply_src=BACKEND)
    assert flushed == model.flush_matching(proto=17, reply_src=BACKEND) == 2
    assert ct.count(table) == 2
    check_same(table, model)


def test_same_new_flow_twice_in_a_batch_maps_to_one_connection():
    table, model = ct.make_table(4), ref.Conntrack(4)
    p = pkt(1, 2, 3, 4)
    got = do_lookup_or_insert(table, model, 0, [(p, None, 1, 10)] * 3 + [(pkt(2, 1, 4, 3), None, 1, 10)],
                              with_reply=False)
    assert got.conn.tolist() == [0, 0, 0, 0]
    assert got.created.tolist() == [True, False, False, False]
    assert got.direction.tolist() == [0, 0, 0, 1]


def test_zero_timeout_is_expired_at_once():
    table, model = ct.make_table(4), ref.Conntrack(4)
    p = pkt(1, 2, 3, 4)
    got = do_lookup_or_insert(table, model, 5, [(p, None, 1, 0), (p, None, 2, 0)])
    assert got.created.tolist() == [True, True] and got.conn.tolist() == [0, 0]  # the id comes back
    assert ct.stats(table)["expired"] == 1
    assert do_lookup(table, model, 5, [p]).conn.tolist() == [-1]
    assert ct.count(table) == 0
    check_same(table, model)


def test_delete_then_reinsert_reuses_the_id():
    table, model = ct.make_table(4), ref.Conntrack(4)
    items = [(pkt(1, 2, 3, k), None, 1, 100) for k in range(3)]
    got = do_insert(table, model, 0, items)
    assert got.conn.tolist() == [0, 1, 2]
    assert ct.delete(table, ints([1, 1, -1], np.int32)) == model.delete(1) == 1
    assert do_lookup(table, model, 1, [pkt(1, 2, 3, 1)]).conn.tolist() == [-1]
    assert do_insert(table, model, 1, [items[1]]).conn.tolist() == [1]
    assert do_insert(table, model, 1, [items[1]]).conn.tolist() == [1]  # the same connection again
    check_same(table, model)


def test_reply_tuple_of_one_flow_is_another_flows_original():
    table, model = ct.make_table(4), ref.Conntrack(4)
    a = pkt(1, 2, 10, 20)
    do_insert(table, model, 0, [(a, (3, 1, 30, 10), 1, 100)])  # DNAT: reply from 3
    # B's reply would be A's original: clash, and so is inserting A's reply as an original.
    got = do_insert(table, model, 0, [(pkt(9, 9, 9, 9), (1, 2, 10, 20), 1, 100),
                                      (pkt(3, 1, 30, 10), (1, 3, 10, 30), 1, 100),
                                      (a, (4, 1, 30, 10), 1, 100)])
    assert got.drop.tolist() == [ct.CT_CLASH_DROP] * 3 and got.conn.tolist() == [-1] * 3
    assert ct.stats(table)["insert_failed"] == 3
    # lookup_or_insert of A's reply tuple is just a REPLY hit
    got = do_lookup_or_insert(table, model, 1, [(pkt(3, 1, 30, 10), None, 1, 100)], with_reply=False)
    assert got.conn.tolist() == [0] and got.direction.tolist() == [ct.REPLY]
    check_same(table, model)


def test_self_flow_is_found_as_original():
    table, model = ct.make_table(2), ref.Conntrack(2)
    p = pkt(5, 5, 7, 7)
    assert do_lookup_or_insert(table, model, 0, [(p, None, 1, 10)] * 2).direction.tolist() == [0, 0]
    assert not table.conns[0]["status"] & (ct.IPS_SRC_NAT | ct.IPS_DST_NAT | ct.IPS_SEEN_REPLY)
    assert ct.delete(table, ints([0], np.int32)) == model.delete(0) == 1
    check_same(table, model)


def test_full_table_early_drops_unassured_then_refuses():
    cap = 4
    table, model = ct.make_table(cap), ref.Conntrack(cap)
    # A tiny index (16 slots): every new tuple is near some entry.
    items = [(pkt(1, 2, 3, k), None, 1, 100) for k in range(cap)]
    got = do_insert(table, model, 0, items)
    ct.update(table, got.conn, np.ones(cap, U8), np.full(cap, 100, np.int64), 0, np.ones(cap, U8))
    for c in got.conn.tolist():
        model.update(c, 1, 100, 0, 1)
    got = do_insert(table, model, 1, [(pkt(7, 8, 9, k), None, 1, 100) for k in range(3)])
    assert got.drop.tolist() == [drop.CT_TABLE_FULL] * 3
    assert ct.stats(table)["drop"] == 3 and ct.count(table) == cap
    # Once one connection is not assured any more (deleted and re-made), it can be evicted.
    ct.delete(table, ints([2], np.int32))
    model.delete(2)
    do_insert(table, model, 2, [(pkt(1, 2, 3, 2), None, 1, 100)])
    got = do_lookup_or_insert(table, model, 3, [(pkt(7, 8, 9, k), None, 1, 100) for k in range(40)])
    assert ct.stats(table)["early_drop"] >= 1
    check_same(table, model)


def test_full_table_evicts_expired_before_unexpired():
    cap = 3
    table, model = ct.make_table(cap), ref.Conntrack(cap)
    do_insert(table, model, 0, [(pkt(1, 1, 1, k), None, 1, t) for k, t in enumerate((50, 10, 30))])
    got = do_insert(table, model, 20, [(pkt(2, 2, 2, 2), None, 1, 100)])  # id 1 expired at 10
    assert got.conn.tolist() == [1] and ct.stats(table)["early_drop"] == 1
    got = do_insert(table, model, 20, [(pkt(2, 2, 2, 3), None, 1, 100)])  # then the soonest to expire
    assert got.conn.tolist() == [2]
    check_same(table, model)


def test_expire_sweeps_in_id_order_and_counts():
    table, model = ct.make_table(8), ref.Conntrack(8)
    do_insert(table, model, 0, [(pkt(1, 2, 3, k), None, 1, k) for k in range(8)])
    assert ct.expire(table, 4) == model.expire(4) == 5
    assert table.free_ids[:5].tolist() == [0, 1, 2, 3, 4]  # 4 is reused first
    check_same(table, model)


def test_update_account_and_free_ids_are_skipped():
    table, model = ct.make_table(4), ref.Conntrack(4)
    do_insert(table, model, 0, [(pkt(1, 2, 3, 4), None, 1, 10)])
    ct.update(table, ints([0, -1, 3], np.int32), ints([9, 9, 9], U8), ints([50, 50, 50], np.int64), 5)
    ct.account(table, ints([0, 0, 3, -1], np.int32), ints([0, 1, 0, 1], np.int8), ints([100, 60, 1, 1], U32))
    assert table.conns[0]["state"] == 9 and table.conns[0]["expires"] == 55
    assert table.counters[0].tolist() == [1, 100, 1, 60] and table.counters[3].tolist() == [0, 0, 0, 0]
    assert ct.delete(table, ints([0], np.int32)) == 1
    assert table.counters[0].tolist() == [0, 0, 0, 0]


def test_empty_batches():
    table = ct.make_table(2)
    empty = tuple_arrays([])
    assert ct.lookup(table, *empty, 0).conn.shape == (0,)
    assert ct.lookup_or_insert(table, *empty, ints([], U8), ints([], np.int64), 0).drop.shape == (0,)
    assert ct.insert(table, *empty, *reply_arrays([]), ints([], U8), ints([], np.int64), 0).conn.shape == (0,)
    assert ct.delete(table, ints([], np.int32)) == 0


def test_same_operations_same_result():
    script = [(1, ("lookup_or_insert", False, [(pkt(k % 5, 2, 3, k % 7), None, 1, 3 + k % 4) for k in range(30)])),
              (2, ("delete", [3, 4])), (1, ("expire",)),
              (1, ("insert", [(pkt(k, 9, 9, 9), (9, 9, 9, k), 2, 5) for k in range(10)]))]
    a, b = run_steps(6, 42, script), run_steps(6, 42, script)
    for x, y in zip(a[:5], b[:5]):
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


def test_table_sizes():
    assert ct.index_slots(1) == 4 and ct.index_slots(1000) == 4096 and ct.index_slots(1 << 20) == 1 << 22
    table = ct.make_table(1000)
    assert table.conns.ctypes.data % 64 == 0 and ct.CONN_DTYPE.itemsize == 64
    assert ct.nbytes(table) == ct.table_bytes(1000) == 1000 * (64 + 32 + 4) + 4096 * 8 + len(ct.STAT_NAMES) * 8
    assert ct.table_bytes(10_000_000) < 4 << 30


# --- validation ------------------------------------------------------------------

def test_validation_errors():
    table = ct.make_table(4)
    good = tuple_arrays([pkt(1, 2, 3, 4)])
    st1, to1 = ints([1], U8), ints([5], np.int64)
    with pytest.raises(ValueError, match="max_connections"):
        ct.make_table(0)
    with pytest.raises(ValueError, match="max_connections"):
        ct.make_table(ct.MAX_CONNECTIONS + 1)
    with pytest.raises(ValueError, match="seed"):
        ct.make_table(4, seed=-1)
    with pytest.raises(ValueError, match="src"):
        ct.lookup(table, good[0], good[1].astype(np.int64), *good[2:], 0)
    with pytest.raises(ValueError, match="zone"):
        ct.lookup(table, [0], *good[1:], 0)
    with pytest.raises(ValueError, match="same length"):
        ct.lookup(table, good[0], ints([1, 2], U32), *good[2:], 0)
    with pytest.raises(ValueError, match="now"):
        ct.lookup(table, *good, -1)
    with pytest.raises(ValueError, match="timeout"):
        ct.lookup_or_insert(table, *good, st1, ints([-1], np.int64), 0)
    with pytest.raises(ValueError, match="state"):
        ct.lookup_or_insert(table, *good, st1.astype(U16), to1, 0)
    with pytest.raises(ValueError, match="same length"):
        ct.lookup_or_insert(table, *good, ints([1, 1], U8), ints([1, 1], np.int64), 0)
    with pytest.raises(ValueError, match="reply_dport"):
        ct.lookup_or_insert(table, *good, st1, to1, 0, good[1], good[2], good[3], None)
    with pytest.raises(ValueError, match="reply_src"):
        ct.insert(table, *good, ints([1, 2], U32), good[2], good[3], good[4], st1, to1, 0)
    with pytest.raises(ValueError, match="conn"):
        ct.delete(table, ints([4], np.int32))
    with pytest.raises(ValueError, match="conn"):
        ct.update(table, ints([-2], np.int32), st1, to1, 0)
    with pytest.raises(ValueError, match="conn"):
        ct.delete(table, ints([0], np.int64))
    with pytest.raises(ValueError, match="assure"):
        ct.update(table, ints([0], np.int32), st1, to1, 0, ints([1], bool))
    with pytest.raises(ValueError, match="direction"):
        ct.account(table, ints([0], np.int32), ints([2], np.int8), ints([1], U32))
    with pytest.raises(ValueError, match="mark"):
        ct.set_mark(table, ints([0], np.int32), ints([1], np.int64))
    with pytest.raises(ValueError, match="unknown"):
        ct.flush_matching(table, backend=1)
    with pytest.raises(ValueError, match="at least one"):
        ct.flush_matching(table)
    with pytest.raises(ValueError, match="orig_dport"):
        ct.flush_matching(table, orig_dport=70000)
    with pytest.raises(ValueError, match="now"):
        ct.expire(table, 1.5)
    assert ct.count(table) == 0 and ct.stats(table)["insert"] == 0


# --- bounds-checked fuzz -------------------------------------------------------------

def test_fuzz_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import conntrack as ct
        from tests.test_conntrack import check_invariants
        rng = np.random.default_rng(7)
        def col(n, dtype, pool):
            full = rng.integers(0, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True)
            return np.where(rng.random(n) < 0.8, rng.choice(pool, n).astype(dtype), full)
        for cap in (1, 2, 3, 7, 64):
            t = ct.make_table(cap, seed=int(rng.integers(0, 2**63)))
            now = 0
            for step in range(300):
                n = int(rng.integers(0, 12))
                z = col(n, np.uint16, [0, 1]); p = col(n, np.uint8, [6, 17])
                a = [col(n, np.uint32, [1, 2, 3]) for _ in range(4)]
                b = [col(n, np.uint16, [1, 2]) for _ in range(4)]
                st_ = rng.integers(0, 256, n, dtype=np.uint8)
                to = rng.choice([0, 1, 3, 2**62 - 1], n).astype(np.int64)
                ids = rng.integers(-1, cap, n).astype(np.int32)
                now += int(rng.integers(0, 3))
                k = step % 8
                if k == 0: ct.lookup(t, z, a[0], a[1], b[0], b[1], p, now)
                elif k == 1: ct.insert(t, z, a[0], a[1], b[0], b[1], p, a[2], a[3], b[2], b[3], st_, to, now)
                elif k == 2: ct.lookup_or_insert(t, z, a[0], a[1], b[0], b[1], p, st_, to, now)
                elif k == 3: ct.lookup_or_insert(t, z, a[0], a[1], b[0], b[1], p, st_, to, now, a[2], a[3], b[2], b[3])
                elif k == 4: ct.update(t, ids, st_, to, now, st_)
                elif k == 5: ct.delete(t, ids); ct.set_mark(t, ids, a[0])
                elif k == 6: ct.account(t, ids, (st_ & 1).astype(np.int8), a[1]); ct.flush_matching(t, proto=6)
                else: ct.expire(t, now)
            check_invariants(t)
        print("ok")
    """)
    assert out.strip().endswith("ok")
