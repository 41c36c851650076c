"""kernels.fdb against the plain-Python bridge of tests/reference/fdb.py:
hand-made scenarios for each Linux rule (learning, moves, own addresses,
ageing, hairpin, floods, down ports, full tables), random sequences of
batches and table operations compared after every step, tiny tables full of
collisions, validation, and a bounds-checked fuzz run."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Ether

from kernels import drop, fdb
from kernels._jit import jit
from tests.reference import fdb as ref
from tests.util import run_with_boundscheck

S = 10**9  # one second in ns
AGEING = fdb.DEFAULT_AGEING_TIME
BCAST = 0xFFFFFFFFFFFF
MCAST = 0x01005E000001  # 224.0.0.1
IPV6_MCAST = 0x333300000001
A, B, C, D = 0x0A0000000001, 0x0A0000000002, 0x0A0000000003, 0x0A0000000004
BRIDGE_MAC = 0x02000000FFFF


def u64(*macs) -> np.ndarray:
    return np.array(macs, np.uint64)


def i32(*ports) -> np.ndarray:
    return np.array(ports, np.int32)


def bools(*flags) -> np.ndarray:
    return np.array(flags, np.bool_)


def up(n: int) -> np.ndarray:
    return np.ones(n, np.bool_)


def no_hairpin(n: int) -> np.ndarray:
    return np.zeros(n, np.bool_)


def decide(f, dst, src, ingress, now, port_up, hairpin):
    d = fdb.forward(f, u64(*dst), u64(*src), i32(*ingress), now, port_up, hairpin)
    return list(zip(d.out_port.tolist(), d.action.tolist(), d.drop.tolist()))


def table(f) -> list[tuple[int, int, int, bool]]:
    e = fdb.entries(f)
    return list(zip(e.mac.tolist(), e.port.tolist(), e.updated.tolist(), e.local.tolist()))


def assert_probe_invariant(f) -> None:
    """Every held MAC sits in the probe run from its home slot, with no empty
    slot in between (what backward-shift deletion must preserve)."""
    macs = f.entries["mac"]
    mask = len(macs) - 1
    for i, mac in enumerate(macs):
        if mac == np.uint64(fdb.NO_MAC):
            continue
        j = fdb._home(mac, f.salt, mask)
        while j != i:
            assert macs[j] != np.uint64(fdb.NO_MAC), f"slot {i} unreachable from its home"
            j = (j + 1) & mask
    assert np.count_nonzero(macs != np.uint64(fdb.NO_MAC)) == fdb.count(f)


FWD = fdb.FORWARD
FLOOD = fdb.FLOOD
LOCAL = fdb.LOCAL


# --- learning -----------------------------------------------------------------------

def test_learn_lookup_and_move():
    f = fdb.make_fdb(16)
    fdb.learn(f, u64(A, B), i32(1, 2), 5 * S)
    assert fdb.lookup(f, u64(A, B, C), 5 * S).tolist() == [1, 2, fdb.NO_PORT]
    fdb.learn(f, u64(A), i32(3), 6 * S)  # A moved to port 3
    assert fdb.lookup(f, u64(A), 6 * S).tolist() == [3]
    assert table(f) == [(A, 3, 6 * S, False), (B, 2, 5 * S, False)]
    assert fdb.stats(f) == dict(count=2, learned=2, moved=1, refused=0, own_address=0, expired=0, deleted=0)


def test_multicast_broadcast_and_zero_sources_are_not_learned():
    f = fdb.make_fdb(16)
    fdb.learn(f, u64(BCAST, MCAST, IPV6_MCAST, 0, 0x010000000000), i32(1, 1, 1, 1, 1), 0)
    assert fdb.count(f) == 0
    assert fdb.lookup(f, u64(BCAST, MCAST, 0), 0).tolist() == [fdb.NO_PORT] * 3


def test_local_entries_are_never_overwritten_by_learning():
    f = fdb.make_fdb(16)
    fdb.add_permanent(f, BRIDGE_MAC, -1)
    fdb.add_permanent(f, A, 2)
    fdb.learn(f, u64(BRIDGE_MAC, A), i32(3, 3), 10 * S)
    assert table(f) == [(BRIDGE_MAC, -1, 0, True), (A, 2, 0, True)]
    assert fdb.stats(f)["own_address"] == 2
    assert fdb.lookup(f, u64(BRIDGE_MAC, A), 10 * S).tolist() == [fdb.HOST_PORT] * 2


def test_add_permanent_replaces_learned_and_keeps_first_local():
    f = fdb.make_fdb(16)
    fdb.learn(f, u64(A), i32(1), 0)
    fdb.add_permanent(f, A, 4)  # fdb_add_local: "same address as a received packet"
    assert table(f) == [(A, 4, 0, True)]
    fdb.add_permanent(f, A, 5)  # first port with the address keeps it
    assert table(f) == [(A, 4, 0, True)]
    assert fdb.count(f) == 1


# --- ageing --------------------------------------------------------------------------

def test_entry_expires_exactly_at_ageing_time():
    f = fdb.make_fdb(16)
    fdb.add_permanent(f, BRIDGE_MAC, -1)
    fdb.learn(f, u64(A), i32(1), 7)
    assert fdb.lookup(f, u64(A), 7 + AGEING - 1).tolist() == [1]
    assert fdb.lookup(f, u64(A), 7 + AGEING).tolist() == [fdb.NO_PORT]  # updated + ageing <= now
    assert fdb.count(f) == 2  # held until reclaimed
    assert fdb.expire(f, 7 + AGEING) == 1
    assert table(f) == [(BRIDGE_MAC, -1, 0, True)]
    assert fdb.lookup(f, u64(BRIDGE_MAC), fdb.MAX_TIME).tolist() == [fdb.HOST_PORT]  # never ages
    assert fdb.stats(f)["expired"] == 1


def test_refresh_keeps_an_entry_alive():
    f = fdb.make_fdb(16, ageing_time_ns=10)
    fdb.learn(f, u64(A, A, A), i32(1, 1, 1), np.array([0, 9, 18], np.int64))
    assert fdb.lookup(f, u64(A), 27).tolist() == [1]
    assert fdb.lookup(f, u64(A), 28).tolist() == [fdb.NO_PORT]


def test_relearning_an_expired_entry_is_a_new_entry():
    f = fdb.make_fdb(16, ageing_time_ns=10)
    fdb.learn(f, u64(A), i32(1), 0)
    fdb.learn(f, u64(A), i32(2), 10)
    assert table(f) == [(A, 2, 10, False)]
    assert fdb.stats(f) == dict(count=1, learned=2, moved=0, refused=0, own_address=0, expired=1, deleted=0)


def test_ageing_time_zero_learns_nothing_and_floods():
    f = fdb.make_fdb(16, ageing_time_ns=0)
    out = decide(f, [B, A], [A, B], [0, 1], 5, up(3), no_hairpin(3))
    assert out == [(-1, FLOOD, 0), (-1, FLOOD, 0)]
    assert fdb.count(f) == 0


# --- forwarding ------------------------------------------------------------------------

def test_broadcast_floods_and_goes_up():
    f = fdb.make_fdb(16)
    out = decide(f, [BCAST, MCAST, IPV6_MCAST], [A, A, A], [0, 0, 0], 0, up(4), no_hairpin(4))
    assert out == [(-1, FLOOD | LOCAL, 0)] * 3
    assert fdb.flood_ports(0, up(4), no_hairpin(4)).tolist() == [1, 2, 3]


def test_unknown_unicast_floods_without_going_up():
    f = fdb.make_fdb(16)
    assert decide(f, [B], [A], [2], 0, up(4), no_hairpin(4)) == [(-1, FLOOD, 0)]


def test_known_unicast_forwards_and_local_goes_up():
    f = fdb.make_fdb(16)
    fdb.add_permanent(f, BRIDGE_MAC, -1)
    fdb.learn(f, u64(B), i32(3), 0)
    assert decide(f, [B, BRIDGE_MAC], [A, A], [1, 1], 1, up(4), no_hairpin(4)) == [
        (3, FWD, 0), (-1, LOCAL, 0)]


def test_later_frames_of_a_batch_see_earlier_learning():
    f = fdb.make_fdb(16)
    # ARP request from A (port 0) floods; B's reply (port 2) is forwarded to A,
    # then A's unicast to B goes straight to port 2: all in one batch.
    out = decide(f, [BCAST, A, B], [A, B, A], [0, 2, 0], np.array([1, 2, 3], np.int64), up(3),
                 no_hairpin(3))
    assert out == [(-1, FLOOD | LOCAL, 0), (0, FWD, 0), (2, FWD, 0)]
    assert table(f) == [(A, 0, 3, False), (B, 2, 2, False)]


def test_hairpin():
    # kubenet/bridge CNI turn hairpin on for pod ports, so a frame for a MAC
    # behind the port it came in on goes back out of it instead of dying.
    f = fdb.make_fdb(16)
    fdb.learn(f, u64(B), i32(1), 0)
    hairpin = bools(False, True, False)
    assert decide(f, [B], [A], [1], 1, up(3), no_hairpin(3)) == [(-1, 0, drop.BRIDGE_NO_PORT)]
    assert decide(f, [B], [A], [1], 1, up(3), hairpin) == [(1, FWD, 0)]
    # A frame to itself: its source is learned first, then found on the ingress port.
    assert decide(f, [C], [C], [2], 1, up(3), hairpin) == [(-1, 0, drop.BRIDGE_NO_PORT)]
    assert decide(f, [C], [C], [1], 1, up(3), hairpin) == [(1, FWD, 0)]


def test_hairpin_floods_come_back_out_of_the_ingress_port():
    # br_flood -> should_deliver: (hairpin || skb->dev != p->dev), for floods too.
    hairpin = bools(False, True, False)
    assert fdb.flood_ports(1, up(3), hairpin).tolist() == [0, 1, 2]
    assert fdb.flood_ports(0, up(3), hairpin).tolist() == [1, 2]
    f = fdb.make_fdb(16)
    assert decide(f, [BCAST, D], [A, A], [1, 1], 0, up(3), hairpin) == [(-1, FLOOD | LOCAL, 0), (-1, FLOOD, 0)]


def test_a_lone_port_has_nowhere_to_flood():
    f = fdb.make_fdb(16)
    out = decide(f, [BCAST, B], [A, A], [0, 0], 0, up(1), no_hairpin(1))
    assert out == [(-1, LOCAL, 0), (-1, 0, drop.BRIDGE_NO_PORT)]
    out = decide(f, [BCAST, B], [A, A], [0, 0], 0, up(1), bools(True))
    assert out == [(-1, FLOOD | LOCAL, 0), (-1, FLOOD, 0)]
    # the only other port is down
    out = decide(f, [BCAST, B], [A, A], [0, 0], 0, bools(True, False), no_hairpin(2))
    assert out == [(-1, LOCAL, 0), (-1, 0, drop.BRIDGE_NO_PORT)]


def test_down_ports():
    f = fdb.make_fdb(16)
    fdb.learn(f, u64(B), i32(2), 0)
    port_up = bools(True, False, False)
    # a frame in on a down port: dropped, and its source is not learned
    assert decide(f, [B], [C], [1], 1, port_up, no_hairpin(3)) == [(-1, 0, drop.LINK_DOWN)]
    assert fdb.lookup(f, u64(C), 1).tolist() == [fdb.NO_PORT]
    # a frame for a MAC behind a down port (not flushed yet): should_deliver fails
    assert decide(f, [B], [A], [0], 1, port_up, no_hairpin(3)) == [(-1, 0, drop.LINK_DOWN)]
    # Linux flushes a port's entries when it goes down; then the MAC is unknown
    assert fdb.flush_port(f, 2) == 1
    assert decide(f, [B], [A], [0], 1, bools(True, True, False), no_hairpin(3)) == [(-1, FLOOD, 0)]
    assert fdb.flood_ports(0, bools(True, True, False), no_hairpin(3)).tolist() == [1]


def test_invalid_source_is_dropped_and_not_learned():
    f = fdb.make_fdb(16)
    out = decide(f, [B, B, BCAST], [0, MCAST, BCAST], [0, 0, 0], 0, up(2), no_hairpin(2))
    assert out == [(-1, 0, fdb.INVALID_SOURCE_DROP)] * 3
    assert fdb.count(f) == 0


def test_entry_for_a_port_the_bridge_no_longer_has_is_unknown():
    f = fdb.make_fdb(16)
    fdb.learn(f, u64(B), i32(7), 0)
    assert decide(f, [B], [A], [0], 1, up(3), no_hairpin(3)) == [(-1, FLOOD, 0)]


def test_flush_port_keeps_local_entries_and_delete_removes_any():
    f = fdb.make_fdb(16)
    fdb.add_permanent(f, C, 1)
    fdb.learn(f, u64(A, B, D), i32(1, 1, 2), 0)
    assert fdb.flush_port(f, 1) == 2
    assert table(f) == [(C, 1, 0, True), (D, 2, 0, False)]
    assert fdb.delete(f, u64(C, A, C)) == 1
    assert table(f) == [(D, 2, 0, False)]
    assert fdb.stats(f)["deleted"] == 3


# --- full table ------------------------------------------------------------------------

def test_full_table_refuses_learning_but_still_forwards():
    f = fdb.make_fdb(2)
    fdb.learn(f, u64(A, B), i32(0, 1), 0)
    out = decide(f, [A, C], [C, D], [2, 2], 1, up(3), no_hairpin(3))
    assert out == [(0, FWD, 0), (-1, FLOOD, 0)]
    assert fdb.stats(f)["refused"] == 2
    assert fdb.lookup(f, u64(C, D), 1).tolist() == [fdb.NO_PORT] * 2


def test_full_table_reclaims_expired_entries_first():
    f = fdb.make_fdb(2, ageing_time_ns=10)
    fdb.learn(f, u64(A, B), i32(0, 1), np.array([0, 5], np.int64))
    fdb.learn(f, u64(C), i32(2), 9)  # nothing expired yet
    assert fdb.stats(f)["refused"] == 1
    fdb.learn(f, u64(C), i32(2), 10)  # A expired at 10: its slot is reclaimed
    assert table(f) == [(B, 1, 5, False), (C, 2, 10, False)]
    assert fdb.stats(f)["expired"] == 1
    with pytest.raises(ValueError, match="fdb full"):
        fdb.add_permanent(f, D, 0)
    fdb.expire(f, 15)  # B expires: room for D (C expires at 20)
    fdb.add_permanent(f, D, 0)
    assert table(f) == [(C, 2, 10, False), (D, 0, 15, True)]


def test_full_table_sweep_is_skipped_until_something_can_expire():
    f = fdb.make_fdb(2, ageing_time_ns=100)
    fdb.learn(f, u64(A, B), i32(0, 1), np.array([0, 50], np.int64))
    fdb.learn(f, u64(C), i32(0), 60)  # sweeps: A expires at 100 at the earliest
    assert f.state[0]["sweep_after"] == 100
    fdb.learn(f, u64(D), i32(0), 99)
    assert fdb.stats(f)["refused"] == 2 and fdb.count(f) == 2
    fdb.learn(f, u64(D), i32(0), 100)
    assert table(f) == [(B, 1, 50, False), (D, 0, 100, False)]


# --- collisions in tiny tables ------------------------------------------------------

def macs_with_home(f, home: int, n: int, start: int = 0x020000000000) -> list[int]:
    """n unicast MACs whose home slot in f is `home`."""
    mask = len(f.entries) - 1
    out, mac = [], start
    while len(out) < n:
        if fdb._home(np.uint64(mac), f.salt, mask) == home:
            out.append(mac)
        mac += 1
    return out


@pytest.mark.parametrize("home", [0, 3, 7])
def test_one_cluster_delete_and_expire_anywhere(home):
    # 8 slots; a cluster of four MACs with the same home, others interleaved,
    # wrapping around the end when home is 7.
    f = fdb.make_fdb(4, ageing_time_ns=10)
    assert len(f.entries) == 8
    same = macs_with_home(f, home, 3)
    other = macs_with_home(f, (home + 1) % 8, 1, start=0x040000000000)
    r = ref.Fdb(4, 10)
    macs = same[:2] + other + same[2:]
    times = [0, 1, 2, 3]
    fdb.learn(f, u64(*macs), i32(0, 1, 2, 3), np.array(times, np.int64))
    r.learn(macs, [0, 1, 2, 3], times)
    assert_probe_invariant(f)
    for victim in macs:
        g = fdb.make_fdb(4, ageing_time_ns=10)
        fdb.learn(g, u64(*macs), i32(0, 1, 2, 3), np.array(times, np.int64))
        fdb.delete(g, u64(victim))
        assert_probe_invariant(g)
        rest = [m for m in macs if m != victim]
        assert sorted(fdb.lookup(g, u64(*rest), 4).tolist()) == sorted(
            p for m, p in zip(macs, [0, 1, 2, 3]) if m != victim)
    # one sweep expires the three learned at times 0, 1 and 2
    assert fdb.expire(f, 12) == r.expire(12) == 3
    assert table(f) == r.entries()
    assert_probe_invariant(f)


def test_capacity_one():
    f = fdb.make_fdb(1)
    assert len(f.entries) == 2
    r = ref.Fdb(1, AGEING)
    out = fdb.forward(f, u64(B, A, A), u64(A, B, C), i32(0, 1, 1), 0, up(2), no_hairpin(2))
    assert list(zip(out.out_port.tolist(), out.action.tolist(), out.drop.tolist())) == r.forward(
        [B, A, A], [A, B, C], [0, 1, 1], [0, 0, 0], [True, True], [False, False])
    assert table(f) == r.entries()


# --- kernel == reference on random histories ----------------------------------------

UNICAST = [A, B, C, D, 0x000000000001, 0xFEFFFFFFFFFF, 0x02ABCDEF0001]
DST_MACS = UNICAST + [BCAST, MCAST, IPV6_MCAST, 0]
SRC_MACS = UNICAST * 3 + [BCAST, MCAST, 0]
AGEINGS = [0, 1, 10, 1000, AGEING]


@st.composite
def histories(draw):
    capacity = draw(st.sampled_from([1, 2, 3, 4, 8, 64]))
    ageing = draw(st.sampled_from(AGEINGS))
    n_ports = draw(st.integers(1, 4))
    seed = draw(st.sampled_from([0, 1, 2**64 - 1]))
    steps = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["forward"] * 5 + ["learn", "expire", "delete", "flush", "permanent"]))
        if kind == "forward":
            n = draw(st.integers(0, 12))
            frames = [(draw(st.sampled_from(DST_MACS)), draw(st.sampled_from(SRC_MACS)),
                       draw(st.integers(0, n_ports - 1))) for _ in range(n)]
            port_up = draw(st.lists(st.sampled_from([True, True, True, False]),
                                    min_size=n_ports, max_size=n_ports))
            hairpin = draw(st.lists(st.booleans(), min_size=n_ports, max_size=n_ports))
            steps.append((kind, frames, port_up, hairpin, draw(time_steps(ageing, n))))
        elif kind == "learn":
            n = draw(st.integers(0, 8))
            items = [(draw(st.sampled_from(SRC_MACS)), draw(st.integers(0, n_ports + 1))) for _ in range(n)]
            steps.append((kind, items, draw(time_steps(ageing, n))))
        elif kind == "expire":
            steps.append((kind, draw(time_steps(ageing, 1))))
        elif kind == "delete":
            steps.append((kind, draw(st.lists(st.sampled_from(DST_MACS), max_size=4))))
        elif kind == "flush":
            steps.append((kind, draw(st.integers(0, n_ports))))
        else:
            steps.append((kind, draw(st.sampled_from(UNICAST + [BRIDGE_MAC])), draw(st.integers(-1, n_ports))))
    return capacity, ageing, n_ports, seed, steps


def time_steps(ageing, n):
    """n non-negative increments: none, a tick, just under/at/over the ageing time, a leap."""
    jumps = st.sampled_from([0, 0, 0, 1, max(ageing - 1, 0), ageing, ageing + 1, 10**15])
    return st.lists(jumps, min_size=n, max_size=n)


def run_history(capacity, ageing, n_ports, seed, steps):
    f = fdb.make_fdb(capacity, ageing_time_ns=ageing, seed=seed)
    r = ref.Fdb(capacity, ageing)
    clock = 0

    def times(increments):
        nonlocal clock
        out = []
        for inc in increments:
            clock += inc
            out.append(clock)
        return out

    for step in steps:
        kind = step[0]
        if kind == "forward":
            _, frames, port_up, hairpin, incs = step
            dst, src, ingress = ([fr[k] for fr in frames] for k in range(3))
            now = times(incs)
            got = fdb.forward(f, u64(*dst), u64(*src), i32(*ingress), np.array(now, np.int64),
                              bools(*port_up), bools(*hairpin))
            want = r.forward(dst, src, ingress, now, port_up, hairpin)
            assert list(zip(got.out_port.tolist(), got.action.tolist(), got.drop.tolist())) == want
            for (_, action, _), ing in zip(want, ingress):
                if action & fdb.FLOOD:
                    assert fdb.flood_ports(ing, bools(*port_up), bools(*hairpin)).tolist() == \
                        ref.flood_ports(ing, port_up, hairpin)
        elif kind == "learn":
            _, items, incs = step
            now = times(incs)
            fdb.learn(f, u64(*[m for m, _ in items]), i32(*[p for _, p in items]), np.array(now, np.int64))
            r.learn([m for m, _ in items], [p for _, p in items], now)
        elif kind == "expire":
            (when,) = times(step[1])
            assert fdb.expire(f, when) == r.expire(when)
        elif kind == "delete":
            assert fdb.delete(f, u64(*step[1])) == r.delete(step[1])
        elif kind == "flush":
            assert fdb.flush_port(f, step[1]) == r.flush_port(step[1])
        else:
            _, mac, port = step
            if r.add_permanent(mac, port):
                fdb.add_permanent(f, mac, port)
            else:
                with pytest.raises(ValueError, match="fdb full"):
                    fdb.add_permanent(f, mac, port)
        assert table(f) == r.entries(), step
        assert fdb.stats(f) == r.stats
        assert fdb.current_time(f) == r.clock
        assert fdb.lookup(f, u64(*DST_MACS), clock).tolist() == [r.lookup_one(m, clock) for m in DST_MACS]
        assert_probe_invariant(f)


@settings(max_examples=400)
@given(histories())
def test_random_histories_match_reference(history):
    run_history(*history)


def test_many_macs_many_ports_match_reference():
    rng = np.random.default_rng(5)
    n_ports, n = 64, 20_000
    pool = rng.integers(1, 2**47, 3000, dtype=np.uint64) << np.uint64(1)  # unicast
    pool[:20] |= np.uint64(1 << 40)  # a few multicast
    f = fdb.make_fdb(1000, ageing_time_ns=50_000)
    r = ref.Fdb(1000, 50_000)
    now = np.cumsum(rng.integers(0, 20, n)).astype(np.int64)
    dst, src = rng.choice(pool, n), rng.choice(pool, n)
    ingress = rng.integers(0, n_ports, n).astype(np.int32)
    port_up = rng.random(n_ports) < 0.95
    hairpin = rng.random(n_ports) < 0.5
    got = fdb.forward(f, dst, src, ingress, now, port_up, hairpin)
    want = r.forward(dst.tolist(), src.tolist(), ingress.tolist(), now.tolist(),
                     port_up.tolist(), hairpin.tolist())
    assert list(zip(got.out_port.tolist(), got.action.tolist(), got.drop.tolist())) == want
    assert table(f) == r.entries()
    assert fdb.stats(f) == r.stats
    assert fdb.stats(f)["refused"] > 0 and fdb.stats(f)["expired"] > 0
    assert set(got.action.tolist()) == {0, FWD, FLOOD, FLOOD | LOCAL}


# --- frame MACs -------------------------------------------------------------------------

def test_frame_macs_against_scapy():
    frames = [bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="0a:58:0a:f4:01:05") / (b"x" * 30)),
              bytes(Ether(dst="33:33:00:00:00:01", src="fe:ff:ff:ff:ff:ff")),
              bytes(Ether(dst="00:00:00:00:00:00", src="01:02:03:04:05:06"))[:14],
              bytes(13), b""]
    buf = np.frombuffer(b"\xee" * 3 + b"".join(frames), np.uint8)
    lengths = np.array([len(x) for x in frames], np.int64)
    starts = (3 + np.concatenate([[0], np.cumsum(lengths)[:-1]])).astype(np.int64)
    got = fdb.frame_macs(buf, starts, lengths)
    assert got.dst.tolist() == [BCAST, 0x333300000001, 0, fdb.NO_MAC, fdb.NO_MAC]
    assert got.src.tolist() == [0x0A580AF40105, 0xFEFFFFFFFFFF, 0x010203040506, fdb.NO_MAC, fdb.NO_MAC]
    for k, frame in enumerate(frames[:3]):
        assert got.dst[k] == ref.mac_at(frame, 0) and got.src[k] == ref.mac_at(frame, 6)


def test_mac_at_from_another_kernel():
    @jit
    def read_all(buf, positions):
        out = np.empty(len(positions), np.uint64)
        for k in range(len(positions)):
            out[k] = fdb.mac_at(buf, positions[k])
        return out

    buf = np.arange(1, 11, dtype=np.uint8)
    got = read_all(buf, np.array([0, 4, 5, -1, 100], np.int64))
    assert got.tolist() == [0x010203040506, 0x05060708090A, fdb.NO_MAC, fdb.NO_MAC, fdb.NO_MAC]


def test_should_deliver_from_another_kernel():
    @jit
    def deliveries(ingress, port_up, hairpin):
        out = np.zeros(len(port_up) + 2, np.bool_)
        for p in range(-1, len(port_up) + 1):
            out[p + 1] = fdb.should_deliver(p, ingress, port_up, hairpin)
        return out

    got = deliveries(1, bools(True, True, False, True), bools(False, True, True, False))
    assert got.tolist() == [False, True, True, False, True, False]


# --- validation -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(capacity=0), "capacity"), (dict(capacity=fdb.MAX_CAPACITY + 1), "capacity"), (dict(capacity=4.0), "capacity"),
    (dict(capacity=4, ageing_time_ns=-1), "ageing_time_ns"), (dict(capacity=4, ageing_time_ns=2**62), "ageing_time_ns"),
    (dict(capacity=4, seed=-1), "seed"), (dict(capacity=4, seed=2**64), "seed"),
])
def test_bad_make_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fdb.make_fdb(**kwargs)


GOOD = dict(eth_dst=u64(A), eth_src=u64(B), ingress=i32(0), now=0, port_up=up(2), hairpin=no_hairpin(2))


@pytest.mark.parametrize("change, match", [
    (dict(eth_dst=np.array([A], np.int64)), "eth_dst"),
    (dict(eth_dst=[A]), "eth_dst"),
    (dict(eth_dst=u64(1 << 48)), "eth_dst"),
    (dict(eth_src=u64(A, B)), "same length"),
    (dict(eth_src=np.array([[B]], np.uint64)), "eth_src"),
    (dict(ingress=np.array([0], np.int64)), "ingress"),
    (dict(ingress=i32(2)), "ingress"),
    (dict(ingress=i32(-1)), "ingress"),
    (dict(now=-1), "now"),
    (dict(now=2**62), "now"),
    (dict(now=1.0), "now"),
    (dict(now=np.array([0, 1], np.int64)), "same length"),
    (dict(now=np.array([0], np.int32)), "now"),
    (dict(port_up=np.ones(2, np.uint8)), "port_up"),
    (dict(port_up=up(3)), "same length"),
    (dict(hairpin=[False, False]), "hairpin"),
    (dict(port_up=up(0), hairpin=no_hairpin(0)), "1 to 1024 ports"),
    (dict(port_up=up(1025), hairpin=no_hairpin(1025)), "1 to 1024 ports"),
])
def test_bad_forward_arguments(change, match):
    f = fdb.make_fdb(4)
    with pytest.raises(ValueError, match=match):
        fdb.forward(f, **{**GOOD, **change})
    assert fdb.count(f) == 0


def test_time_never_goes_back():
    f = fdb.make_fdb(4)
    fdb.forward(f, **{**GOOD, "now": 100})
    for bad in (99, np.array([99], np.int64)):
        with pytest.raises(ValueError, match="time never goes back"):
            fdb.forward(f, **{**GOOD, "now": bad})
    with pytest.raises(ValueError, match="must not decrease"):
        fdb.learn(f, u64(A, B, C), i32(0, 0, 0), np.array([100, 102, 101], np.int64))
    for call in (lambda: fdb.lookup(f, u64(A), 99), lambda: fdb.expire(f, 99),
                 lambda: fdb.learn(f, u64(A), i32(0), 99)):
        with pytest.raises(ValueError, match="time never goes back"):
            call()
    assert fdb.current_time(f) == 100
    fdb.learn(f, u64(), i32(), np.array([], np.int64))  # empty batches are fine


@pytest.mark.parametrize("call, match", [
    (lambda f: fdb.learn(f, u64(A), i32(1024), 0), "ports"),
    (lambda f: fdb.learn(f, u64(A), i32(-1), 0), "ports"),
    (lambda f: fdb.learn(f, u64(A), np.array([1], np.int64), 0), "ports"),
    (lambda f: fdb.learn(f, u64(A, B), i32(1), 0), "same length"),
    (lambda f: fdb.learn(f, np.array([A], np.int64), i32(1), 0), "macs"),
    (lambda f: fdb.lookup(f, u64(2**48), 0), "macs"),
    (lambda f: fdb.lookup(f, u64(A), np.int64(-5)), "now"),
    (lambda f: fdb.delete(f, [A]), "macs"),
    (lambda f: fdb.flush_port(f, -1), "port"),
    (lambda f: fdb.flush_port(f, 1024), "port"),
    (lambda f: fdb.add_permanent(f, BCAST, -1), "multicast or zero"),
    (lambda f: fdb.add_permanent(f, MCAST, 0), "multicast or zero"),
    (lambda f: fdb.add_permanent(f, 0, 0), "multicast or zero"),
    (lambda f: fdb.add_permanent(f, 1 << 48, 0), "mac"),
    (lambda f: fdb.add_permanent(f, A, -2), "port"),
    (lambda f: fdb.add_permanent(f, A, 1024), "port"),
    (lambda f: fdb.flood_ports(3, up(3), no_hairpin(3)), "ingress"),
    (lambda f: fdb.flood_ports(0, up(3), no_hairpin(2)), "same length"),
    (lambda f: fdb.frame_macs(np.zeros(20, np.uint8), np.array([10], np.int64), np.array([14], np.int64)),
     "past the end"),
    (lambda f: fdb.frame_macs(np.zeros(20, np.int8), np.array([0], np.int64), np.array([14], np.int64)), "buf"),
    (lambda f: fdb.frame_macs(np.zeros(20, np.uint8), np.array([0], np.int32), np.array([14], np.int64)),
     "starts"),
])
def test_bad_arguments(call, match):
    f = fdb.make_fdb(4)
    with pytest.raises(ValueError, match=match):
        call(f)


# --- bounds-checked fuzz ----------------------------------------------------------------

def test_fuzz_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import fdb
        rng = np.random.default_rng(2024)
        specials = np.array([0, 1, 0xFFFFFFFFFFFF, 0x01005E000001, 0xFEFFFFFFFFFF, 2**47], np.uint64)
        runs = 0
        for _ in range(150):
            capacity = int(rng.choice([1, 2, 3, 8, 100]))
            f = fdb.make_fdb(capacity, ageing_time_ns=int(rng.choice([0, 1, 50, 10**9])),
                             seed=int(rng.integers(0, 2**63)))
            n_ports = int(rng.integers(1, 9))
            pool = np.concatenate([specials, rng.integers(0, 2**48, 10, dtype=np.uint64)])
            clock = 0
            for _ in range(8):
                n = int(rng.integers(0, 40))
                clock += int(rng.choice([0, 1, 60, 10**9, 10**12]))
                now = clock + np.cumsum(rng.integers(0, 3, n)).astype(np.int64)
                clock = int(now[-1]) if n else clock
                d = fdb.forward(f, rng.choice(pool, n), rng.choice(pool, n),
                                rng.integers(0, n_ports, n).astype(np.int32), now,
                                rng.random(n_ports) < 0.8, rng.random(n_ports) < 0.5)
                assert ((d.action == 0) == (d.drop != 0)).all()
                assert ((d.out_port >= 0) == (d.action == fdb.FORWARD)).all()
                fdb.learn(f, rng.choice(pool, 5), rng.integers(0, 1024, 5).astype(np.int32), clock)
                if rng.random() < 0.3:
                    try:
                        fdb.add_permanent(f, int(rng.choice(pool[pool & np.uint64(1 << 40) == 0])),
                                          int(rng.integers(-1, n_ports)))
                    except ValueError as e:
                        assert "full" in str(e) or "multicast or zero" in str(e)
                fdb.lookup(f, rng.choice(pool, 7), clock)
                fdb.delete(f, rng.choice(pool, 2))
                fdb.flush_port(f, int(rng.integers(0, n_ports)))
                if rng.random() < 0.3:
                    clock += int(rng.integers(0, 100))
                    fdb.expire(f, clock)
                assert fdb.count(f) <= capacity
                fdb.flood_ports(int(rng.integers(0, n_ports)), rng.random(n_ports) < 0.5,
                                rng.random(n_ports) < 0.5)
            # the private kernel guards ingress ports the wrapper would reject
            n = 16
            out = (np.empty(n, np.int32), np.empty(n, np.uint8), np.empty(n, np.uint8))
            fdb._forward(f.entries, f.salt, f.state, rng.choice(pool, n),
                         rng.choice(pool, n), rng.integers(-5, 20, n).astype(np.int32),
                         np.full(n, clock, np.int64), np.ones(n_ports, np.bool_),
                         np.ones(n_ports, np.bool_), *out)
            buf = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8)
            starts = rng.integers(0, len(buf) + 1, 10).astype(np.int64)
            lengths = (rng.random(10) * (len(buf) - starts + 1)).astype(np.int64)
            fdb.frame_macs(buf, starts, lengths)
            for pos in (-7, -1, 0, len(buf) - 6, len(buf) - 5, len(buf)):
                fdb.mac_at(buf, pos)
            runs += 1
        print(runs)
    """)
    assert out.split() == ["150"]
