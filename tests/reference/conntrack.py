"""Plain-Python reference for kernels.conntrack: dicts keyed by tuples.

It keeps the kernel's whole observable contract, so tests compare them
exactly after every operation: results, statistics, every connection's
fields, and the order in which free connection ids are reused (a stack).

The one place the kernel's hash table shows through is early drop, which
looks for victims "near the insertion point" as Linux does. The reference
defines that without probe positions: a connection is near when one of its
tuples hashes to a home slot among the EARLY_DROP_RANGE slots starting at
the new original tuple's home slot (home = hash5(tuple, seed + zone) modulo
the kernel's index size). The victim is the near, evictable (expired or not
ASSURED) connection with the smallest (expires, id).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tests.reference.hashing import MASK64, hash5

ORIGINAL, REPLY = 0, 1
SEEN_REPLY, ASSURED, CONFIRMED, SRC_NAT, DST_NAT = 2, 4, 8, 16, 32
EARLY_DROP_RANGE = 8
TABLE_FULL = 32   # drop.CT_TABLE_FULL
CLASH = 34        # conntrack.CT_CLASH_DROP (drop.CT_CLASH)
STAT_NAMES = ("count", "insert", "insert_failed", "drop", "early_drop", "expired", "deleted")



def index_slots(max_connections: int) -> int:
    slots = 1
    while slots < 4 * max_connections:
        slots *= 2
    return slots


@dataclass
class Conn:
    zone: int
    proto: int
    orig: tuple   # (src, dst, sport, dport)
    reply: tuple
    state: int
    status: int
    expires: int
    mark: int = 0
    counters: list = field(default_factory=lambda: [0, 0, 0, 0])  # orig pkts, bytes, reply pkts, bytes


class Conntrack:
    def __init__(self, max_connections: int, seed: int = 0):
        self.capacity = max_connections
        self.slots = index_slots(max_connections)
        self.seed = seed
        self.tuples: dict[tuple, tuple[int, int]] = {}  # (zone, proto, src, dst, sport, dport) -> (id, dir)
        self.conns: dict[int, Conn] = {}
        self.free = list(range(max_connections - 1, -1, -1))  # a stack: id 0 on top
        self.stats = dict.fromkeys(STAT_NAMES, 0)

    # -- helpers -------------------------------------------------------------
    def _home(self, zone, proto, t):
        src, dst, sport, dport = t
        return hash5(src, dst, sport, dport, proto, (self.seed + zone) & MASK64) % self.slots

    def _remove(self, c):
        conn = self.conns.pop(c)
        del self.tuples[(conn.zone, conn.proto) + conn.orig]
        self.tuples.pop((conn.zone, conn.proto) + conn.reply, None)  # gone already if reply == orig
        self.free.append(c)
        self.stats["count"] -= 1

    def _expire_one(self, c):
        self._remove(c)
        self.stats["expired"] += 1

    def _find_live(self, key, now):
        """(id, dir) of a tuple, removing it instead if its connection expired."""
        hit = self.tuples.get(key)
        if hit is None:
            return None
        if self.conns[hit[0]].expires <= now:
            self._expire_one(hit[0])
            return None
        return hit

    def _early_drop_victim(self, zone, proto, orig, now):
        start = self._home(zone, proto, orig)
        best = None
        for c, conn in self.conns.items():
            near = any((self._home(conn.zone, conn.proto, t) - start) % self.slots < EARLY_DROP_RANGE
                       for t in (conn.orig, conn.reply))
            if near and (conn.expires <= now or not conn.status & ASSURED):
                if best is None or (conn.expires, c) < best:
                    best = (conn.expires, c)
        return None if best is None else best[1]

    def _insert_new(self, zone, proto, orig, reply, state, timeout, now):
        """Insert with the original tuple known to be absent: (id, drop)."""
        if reply != orig:
            hit = self.tuples.get((zone, proto) + reply)
            if hit is not None:
                if self.conns[hit[0]].expires > now:
                    self.stats["insert_failed"] += 1
                    return -1, CLASH
                self._expire_one(hit[0])
        if len(self.conns) >= self.capacity:
            victim = self._early_drop_victim(zone, proto, orig, now)
            if victim is None:
                self.stats["drop"] += 1
                return -1, TABLE_FULL
            self._remove(victim)
            self.stats["early_drop"] += 1
        c = self.free.pop()
        status = CONFIRMED
        if reply[1] != orig[0] or reply[3] != orig[2]:
            status |= SRC_NAT
        if reply[0] != orig[1] or reply[2] != orig[3]:
            status |= DST_NAT
        self.conns[c] = Conn(zone, proto, orig, reply, state, status, now + timeout)
        self.tuples[(zone, proto) + orig] = (c, ORIGINAL)
        self.tuples.setdefault((zone, proto) + reply, (c, REPLY))  # a self-flow stays ORIGINAL
        self.stats["count"] += 1
        self.stats["insert"] += 1
        return c, 0

    # -- the batch API, one element at a time -------------------------------------
    def lookup(self, zone, src, dst, sport, dport, proto, now):
        hit = self._find_live((zone, proto, src, dst, sport, dport), now)
        if hit is None:
            return -1, -1
        if hit[1] == REPLY:
            self.conns[hit[0]].status |= SEEN_REPLY
        return hit

    def insert(self, zone, src, dst, sport, dport, proto, rsrc, rdst, rsport, rdport, state, timeout, now):
        orig, reply = (src, dst, sport, dport), (rsrc, rdst, rsport, rdport)
        hit = self._find_live((zone, proto) + orig, now)
        if hit is not None:
            c, d = hit
            if d == ORIGINAL and self.conns[c].reply == reply:
                return c, 0  # the same connection again
            self.stats["insert_failed"] += 1
            return -1, CLASH
        return self._insert_new(zone, proto, orig, reply, state, timeout, now)

    def lookup_or_insert(self, zone, src, dst, sport, dport, proto, state, timeout, now, reply=None):
        c, d = self.lookup(zone, src, dst, sport, dport, proto, now)
        if c >= 0:
            return c, d, False, 0
        orig = (src, dst, sport, dport)
        reply = (dst, src, dport, sport) if reply is None else tuple(reply)
        c, reason = self._insert_new(zone, proto, orig, reply, state, timeout, now)
        return c, (ORIGINAL if c >= 0 else -1), c >= 0, reason

    def update(self, c, state, timeout, now, assure=0):
        conn = self.conns.get(c)
        if conn is not None:
            conn.state = state
            conn.expires = now + timeout
            if assure:
                conn.status |= ASSURED

    def set_mark(self, c, mark):
        if c in self.conns:
            self.conns[c].mark = mark

    def account(self, c, direction, length):
        if c in self.conns:
            self.conns[c].counters[2 * direction] += 1
            self.conns[c].counters[2 * direction + 1] += length

    def delete(self, c):
        if c not in self.conns:
            return 0
        self._remove(c)
        self.stats["deleted"] += 1
        return 1

    def expire(self, now):
        dead = sorted(c for c, conn in self.conns.items() if conn.expires <= now)
        for c in dead:
            self._expire_one(c)
        return len(dead)

    def flush_matching(self, **want):
        def value(conn, name):
            if name in ("zone", "proto", "mark"):
                return getattr(conn, name)
            side, part = name.split("_")
            t = conn.orig if side == "orig" else conn.reply
            return t[("src", "dst", "sport", "dport").index(part)]

        hits = sorted(c for c, conn in self.conns.items()
                      if all(value(conn, k) == v for k, v in want.items()))
        for c in hits:
            self._remove(c)
        self.stats["deleted"] += len(hits)
        return len(hits)
