"""kernels.conntrack against a Python dict keyed by tuples doing the same work.

The workload: a table holding LIVE flows (random addresses and ports), and a
batch of packets of which NEW_SHARE are first packets of new flows and the
rest belong to live flows picked at random, half of them in the REPLY
direction. Each packet is looked up by its tuple; a hit checks expiry and,
for a reply, sets SEEN_REPLY; a miss inserts a connection (reply tuple = the
inverse, checked for clashes, under a capacity limit). Every round starts
from the same table (restored outside the timing).

The baseline is the lean loop a Python programmer would write: one dict from
(zone, proto, src, dst, sport, dport) to (connection, direction), the
connection a list; its packets are Python tuples made beforehand and the
cyclic GC is frozen, so only the tracking is timed.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

from bench.conftest import size
from kernels import conntrack as ct
from kernels import drop

LIVE = size(1_000_000, 10_000)
CAPACITY = 2 * LIVE              # nf_conntrack_max
PACKETS = size(1_000_000, 10_000)
BASELINE_PACKETS = size(200_000, 2_000)
NEW_SHARE = 0.05
INSERTS = size(500_000, 5_000)
NOW, TIMEOUT, STATE = 1_000, 10**12, 1
MIX = f"{100 - 100 * NEW_SHARE:g}% live flows (half replies), {100 * NEW_SHARE:g}% new"
MEMORY = {"bytes_per_conn": round(ct.table_bytes(CAPACITY) / CAPACITY, 1),
          "table_10M_GiB": round(ct.table_bytes(10_000_000) / 2**30, 2)}  # from array sizes


def random_flows(rng, n):
    return (np.zeros(n, np.uint16), rng.integers(0, 2**32, n, dtype=np.uint32),
            rng.integers(0, 2**32, n, dtype=np.uint32), rng.integers(1024, 65536, n, dtype=np.uint16),
            rng.integers(1, 65536, n, dtype=np.uint16), np.full(n, 6, np.uint8))


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(2024)
    live = random_flows(rng, LIVE)
    table = ct.make_table(CAPACITY, seed=7)
    made = ct.insert(table, *live, live[2], live[1], live[4], live[3],
                     np.full(LIVE, STATE, np.uint8), np.full(LIVE, TIMEOUT, np.int64), 0)
    assert (made.drop == 0).all()
    pick = rng.integers(0, LIVE, PACKETS)
    zone, src, dst, sport, dport, proto = (col[pick] for col in live)
    reply = rng.random(PACKETS) < 0.5
    packets = [zone, np.where(reply, dst, src), np.where(reply, src, dst),
               np.where(reply, dport, sport), np.where(reply, sport, dport), proto]
    new = rng.random(PACKETS) < NEW_SHARE
    fresh = random_flows(rng, PACKETS)
    packets = tuple(np.ascontiguousarray(np.where(new, f, p)) for f, p in zip(fresh, packets))
    inserts = random_flows(rng, INSERTS)
    py_table = python_table(live)
    gc.freeze()
    return dict(table=table, saved=[a.copy() for a in table[:5]], packets=packets, inserts=inserts,
                py_table=py_table, py_packets=python_tuples(packets, BASELINE_PACKETS),
                py_inserts=python_tuples(inserts, INSERTS))


def restore(world):
    for array, saved in zip(world["table"][:5], world["saved"]):
        np.copyto(array, saved)


# --- the baseline -----------------------------------------------------------------

SEEN_REPLY = ct.IPS_SEEN_REPLY


def python_tuples(cols, n):
    zone, src, dst, sport, dport, proto = (c[:n].tolist() for c in cols)
    return list(zip(zone, proto, src, dst, sport, dport))


def python_table(live):
    table = {}
    for key in python_tuples(live, LIVE):
        python_insert(table, key, 0)
    return table


def python_insert(table, key, now):
    """Insert a connection for a new original tuple: (conn, drop)."""
    zone, proto, src, dst, sport, dport = key
    reply = (zone, proto, dst, src, dport, sport)
    if reply in table:
        return None, ct.CT_CLASH_DROP
    if len(table) >= 2 * CAPACITY:
        return None, drop.CT_TABLE_FULL
    conn = [key, reply, STATE, ct.IPS_CONFIRMED, 0, now + TIMEOUT]
    table[key] = (conn, 0)
    table[reply] = (conn, 1)
    return conn, 0


def python_lookup_or_insert(table, packets, now):
    out = []
    for key in packets:
        hit = table.get(key)
        if hit is not None:
            conn, direction = hit
            if conn[5] > now:
                if direction and not conn[3] & SEEN_REPLY:
                    conn[3] |= SEEN_REPLY
                out.append(hit)
                continue
            del table[conn[0]], table[conn[1]]
        out.append(python_insert(table, key, now))
    return out


def python_inserts(table, keys, now):
    return [python_insert(table, key, now) for key in keys]


# --- benchmarks --------------------------------------------------------------------

def test_lookup_or_insert(benchmark, record, world):
    record("conntrack lookup_or_insert", "emu", PACKETS, "packets", target_rate=20e6, target_ratio=30,
           flows=LIVE, mix=MIX, **MEMORY)
    packets = world["packets"]
    state, timeout = np.full(PACKETS, STATE, np.uint8), np.full(PACKETS, TIMEOUT, np.int64)
    restore(world)
    ct.lookup_or_insert(world["table"], *packets, state, timeout, NOW)  # compile
    out = benchmark.pedantic(ct.lookup_or_insert, args=(world["table"], *packets, state, timeout, NOW),
                             setup=lambda: restore(world), rounds=size(10, 1))
    assert (out.drop == 0).all() and 0 < out.created.sum() < PACKETS


def test_lookup_or_insert_python_dict(benchmark, record, world):
    record("conntrack lookup_or_insert", "baseline", BASELINE_PACKETS, "packets", flows=LIVE, mix=MIX)

    def fresh():
        return (dict(world["py_table"]), world["py_packets"], NOW), {}
    out = benchmark.pedantic(python_lookup_or_insert, setup=fresh, rounds=size(3, 1))
    assert len(out) == BASELINE_PACKETS


def test_insert(benchmark, record, world):
    record("conntrack insert", "emu", INSERTS, "connections", flows=LIVE)
    z, src, dst, sport, dport, proto = world["inserts"]
    args = (world["table"], z, src, dst, sport, dport, proto, dst, src, dport, sport,
            np.full(INSERTS, STATE, np.uint8), np.full(INSERTS, TIMEOUT, np.int64), NOW)
    restore(world)
    ct.insert(*args)  # compile
    out = benchmark.pedantic(ct.insert, args=args, setup=lambda: restore(world), rounds=size(10, 1))
    assert (out.drop == 0).all()


def test_insert_python_dict(benchmark, record, world):
    record("conntrack insert", "baseline", INSERTS, "connections", flows=LIVE)

    def fresh():
        return (dict(world["py_table"]), world["py_inserts"], NOW), {}
    out = benchmark.pedantic(python_inserts, setup=fresh, rounds=size(3, 1))
    assert all(reason == 0 for _, reason in out)
