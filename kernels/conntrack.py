"""Connection tracking as Linux's nf_conntrack does it, over numpy arrays.

A connection has two tuples, as `struct nf_conn` has `tuplehash[IP_CT_DIR_MAX]`:
ORIGINAL (the first packet's zone/src/dst/sport/dport/proto) and REPLY (what
an answer looks like: the inverse of ORIGINAL unless NAT changed it -- after
DNAT to a backend the reply's src is the backend, after masquerade the reply's
dst is the node address). A lookup with either tuple finds the connection and
says which direction matched. The zone and the protocol belong to the
connection (both tuples share them, as nf_ct_invert_tuple keeps protonum).

Layout (one table = a bundle of arrays, built by `make_table`):

- `conns`: one 64-byte record per connection (`CONN_DTYPE`, cache-line
  aligned), holding both tuples, state, status, mark and expiry, so a lookup
  that hits touches one index line and one record line. Connection ids are
  record numbers; free ids sit on a stack (`free_ids`), so ids are reused
  last-freed-first, deterministically. A record is live iff its status has
  IPS_CONFIRMED (set when its tuples enter the hash, as in Linux).
- `counters`: packets/bytes per direction (`nf_conn_acct`, an extension kept
  apart in Linux too), off the lookup path.
- `index`: open addressing with linear probing over 2**k uint64 slots, two
  per connection (one per direction). A slot word is (low 32 bits of the
  hash) << 32 | (conn << 1 | direction); all ones is empty. The stored hash
  bits filter probes without touching records and give every entry's home
  slot, so backward-shift deletion (no tombstones) never reads a record.
  k is chosen so the index is at most half full when the table is full.
- `stats`: int64 counters named by `STAT_NAMES` (as /proc/net/stat/nf_conntrack).

Slot hashing is `kernels.hashing.hash5` keyed by the table's seed plus the
zone (so zones hash independently); the seed is fixed when the table is made.

Batches: `lookup`, `insert` and `lookup_or_insert` are one kernel, `_track`,
that handles the packets in order (a packet sees the connection an earlier
one created). It hashes the batch first, then software-pipelines the loop:
while on packet i it prefetches the index line of packet i + 16 and the
record of packet i + 8 (or, for a likely new flow, its reply tuple's index
line), so lookups in a table much bigger than the caches overlap their
memory latency instead of paying two cache misses in a row.

Policies (the reference in tests/reference/conntrack.py mirrors each):

- Expiry: a connection whose `expires <= now` is dead (nf_ct_is_expired). An
  expired connection whose tuple a lookup or insert meets is removed then and
  there (lazy expiry); `expire` sweeps the whole table (the GC worker).
- Clash: inserting an ORIGINAL tuple that is already a live connection's
  ORIGINAL tuple with the same REPLY tuple returns that connection (Linux
  nf_ct_resolve_clash merges such twins). Any other overlap -- the original
  tuple is another connection's reply, or the reply tuple is taken -- refuses
  the insert with CT_CLASH_DROP and counts insert_failed (Linux's
  __nf_conntrack_confirm does the same when NAT could not make it unique).
- Full table (count == max_connections): like Linux's early_drop, look at
  the connections with a tuple whose home slot is among the EARLY_DROP_RANGE
  (8, NF_CT_EVICTION_RANGE) slots starting at the new original tuple's home
  slot; among those that are expired or not ASSURED evict the one with the
  smallest (expires, conn). None: refuse with CT_TABLE_FULL and count drop.
  Expired connections elsewhere are not looked for: `expire` reaps them.
- A connection whose reply tuple equals its original (a flow to itself with
  the same ports) is always found in the ORIGINAL direction.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kernels import _check, drop
from kernels._jit import AHEAD, jit, prefetch
from kernels._memory import small_pages
from kernels.hashing import hash5

# Directions (enum ip_conntrack_dir).
ORIGINAL = 0
REPLY = 1

# Status bits, as enum ip_conntrack_status (uapi nf_conntrack_common.h).
IPS_SEEN_REPLY = 1 << 1   # a packet was seen in the REPLY direction
IPS_ASSURED = 1 << 2      # protected from early drop (caller decides when)
IPS_CONFIRMED = 1 << 3    # in the hash table: the record is live
IPS_SRC_NAT = 1 << 4      # reply dst/dport differ from original src/sport
IPS_DST_NAT = 1 << 5      # reply src/sport differ from original dst/dport

# Drop code for an insert whose tuples clash with another connection.
CT_CLASH_DROP = drop.CT_CLASH

EARLY_DROP_RANGE = 8      # NF_CT_EVICTION_RANGE
_NEEDS_ROOM = 255          # internal to inserts, never returned as a drop reason
_LOOKUP, _INSERT, _LOOKUP_OR_INSERT = 0, 1, 2  # modes of the batch kernel
MAX_CONNECTIONS = 1 << 30  # conn << 1 | direction must stay below 2**32 - 1
MAX_TIME = (1 << 62) - 1   # now and timeouts; now + timeout fits in int64

STAT_NAMES = ("count", "insert", "insert_failed", "drop", "early_drop", "expired", "deleted")
(STAT_COUNT, STAT_INSERT, STAT_INSERT_FAILED, STAT_DROP, STAT_EARLY_DROP,
 STAT_EXPIRED, STAT_DELETED) = range(len(STAT_NAMES))

CONN_DTYPE = np.dtype({
    "names": ["zone", "proto", "state", "status",
              "orig_src", "orig_dst", "orig_sport", "orig_dport",
              "reply_src", "reply_dst", "reply_sport", "reply_dport",
              "mark", "expires"],
    "formats": ["u2", "u1", "u1", "u2",
                "u4", "u4", "u2", "u2",
                "u4", "u4", "u2", "u2",
                "u4", "i8"],
    "offsets": [0, 2, 3, 4,
                8, 12, 16, 18,
                20, 24, 28, 30,
                32, 40],
    "itemsize": 64,  # one cache line per connection
    "aligned": True,  # numba then emits plain aligned loads and stores
})

# Flush filters: conn fields a `flush_matching` call may pin (in this order).
FLUSH_FIELDS = ("zone", "proto", "orig_src", "orig_dst", "orig_sport", "orig_dport",
                "reply_src", "reply_dst", "reply_sport", "reply_dport", "mark")

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_ONE = np.uint64(1)


class Table(NamedTuple):
    """A conntrack table: see the module docstring for what each array holds."""
    conns: np.ndarray     # CONN_DTYPE[max_connections]
    counters: np.ndarray  # uint64[max_connections, 4]: orig packets, orig bytes, reply packets, reply bytes
    index: np.ndarray     # uint64[2**k] slot words
    free_ids: np.ndarray  # int32[max_connections]: free ids in [0, max - count), top last
    stats: np.ndarray     # int64[len(STAT_NAMES)]
    seed: np.uint64


class Lookup(NamedTuple):
    conn: np.ndarray       # int32, -1 when absent or expired
    direction: np.ndarray  # int8, ORIGINAL / REPLY, -1 when absent


class Inserted(NamedTuple):
    conn: np.ndarray  # int32, -1 when refused
    drop: np.ndarray  # uint8, 0 or CT_TABLE_FULL / CT_CLASH_DROP


class Tracked(NamedTuple):
    conn: np.ndarray       # int32, -1 when refused
    direction: np.ndarray  # int8, direction of the packet, -1 when refused
    created: np.ndarray    # bool, this packet created the connection
    drop: np.ndarray       # uint8, 0 or CT_TABLE_FULL / CT_CLASH_DROP


def index_slots(max_connections: int) -> int:
    """Index size for a capacity: the power of two keeping it at most half full."""
    return 1 << (4 * max_connections - 1).bit_length()


def make_table(max_connections: int, seed: int = 0) -> Table:
    """An empty table for at most `max_connections` (nf_conntrack_max)."""
    capacity = _check.integer(max_connections, "max_connections", 1, MAX_CONNECTIONS)
    seed = _check.integer(seed, "seed", 0, (1 << 64) - 1)
    with small_pages():   # first touched insert by insert, on the data path (kernels._memory)
        conns = _aligned_zeros(capacity, CONN_DTYPE)
        counters = np.zeros((capacity, 4), np.uint64)
    return Table(
        conns=conns,
        counters=counters,
        index=np.full(index_slots(capacity), _EMPTY, np.uint64),
        free_ids=np.arange(capacity - 1, -1, -1, dtype=np.int32),  # id 0 on top
        stats=np.zeros(len(STAT_NAMES), np.int64),
        seed=np.uint64(seed),
    )


def _aligned_zeros(n: int, dtype: np.dtype, align: int = 64) -> np.ndarray:
    raw = np.zeros(n * dtype.itemsize + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n * dtype.itemsize].view(dtype)


def nbytes(table: Table) -> int:
    """Memory held by the table's arrays."""
    return sum(a.nbytes for a in (table.conns, table.counters, table.index, table.free_ids, table.stats))


def table_bytes(max_connections: int) -> int:
    """What `nbytes(make_table(max_connections))` will be, without allocating it."""
    per_connection = CONN_DTYPE.itemsize + 4 * 8 + 4  # record, counters, free id
    return max_connections * per_connection + index_slots(max_connections) * 8 + len(STAT_NAMES) * 8


def count(table: Table) -> int:
    """Live connections (expired ones not yet removed included)."""
    return int(table.stats[STAT_COUNT])


def stats(table: Table) -> dict[str, int]:
    """The table's counters by name."""
    return {name: int(v) for name, v in zip(STAT_NAMES, table.stats)}


# --- public batch API -------------------------------------------------------

def lookup(table: Table, zone, src, dst, sport, dport, proto, now: int) -> Lookup:
    """Find each packet's connection and direction; a REPLY hit sets SEEN_REPLY."""
    zone, src, dst, sport, dport, proto = _tuple_arrays(zone, src, dst, sport, dport, proto)
    now = _check.integer(now, "now", 0, MAX_TIME)
    out = _track_batch(table, _LOOKUP, zone, src, dst, sport, dport, proto, (dst, src, dport, sport),
                       np.empty(0, np.uint8), np.empty(0, np.int64), now)
    return Lookup(out.conn, out.direction)


def insert(table: Table, zone, src, dst, sport, dport, proto,
           reply_src, reply_dst, reply_sport, reply_dport, state, timeout, now: int) -> Inserted:
    """Insert connections (original tuple, reply tuple, initial state, timeout),
    one per element, in order. The zone and protocol are shared by both
    tuples. See the module docstring for clashes and full tables."""
    zone, src, dst, sport, dport, proto = _tuple_arrays(zone, src, dst, sport, dport, proto)
    reply = _reply_arrays(src, reply_src, reply_dst, reply_sport, reply_dport)
    state, timeout = _state_arrays(src, state, timeout)
    now = _check.integer(now, "now", 0, MAX_TIME)
    out = _track_batch(table, _INSERT, zone, src, dst, sport, dport, proto, reply, state, timeout, now)
    return Inserted(out.conn, out.drop)


def lookup_or_insert(table: Table, zone, src, dst, sport, dport, proto, state, timeout, now: int,
                     reply_src=None, reply_dst=None, reply_sport=None, reply_dport=None) -> Tracked:
    """The per-packet hot path: find each packet's connection, creating it on a
    miss with (`state`, `timeout`) and the given reply tuple (the inverse of the
    packet's tuple when none is given). Packets are handled in order, so a
    second packet of a new flow finds the connection the first one created."""
    zone, src, dst, sport, dport, proto = _tuple_arrays(zone, src, dst, sport, dport, proto)
    if reply_src is None and reply_dst is None and reply_sport is None and reply_dport is None:
        reply = (dst, src, dport, sport)
    else:
        reply = _reply_arrays(src, reply_src, reply_dst, reply_sport, reply_dport)
    state, timeout = _state_arrays(src, state, timeout)
    now = _check.integer(now, "now", 0, MAX_TIME)
    return _track_batch(table, _LOOKUP_OR_INSERT, zone, src, dst, sport, dport, proto, reply, state, timeout,
                        now)


def update(table: Table, conn, state, timeout, now: int, assure=None) -> None:
    """Set state and expiry (now + timeout) of connections still in the table
    (even if past their expiry: as nf_ct_refresh, this is the caller's call);
    `assure` (uint8, nonzero = yes) sets IPS_ASSURED, which is never cleared.
    conn -1 entries (lookup misses) and free ids are skipped."""
    conn = _conn_array(table, conn)
    state, timeout = _state_arrays(conn, state, timeout)
    if assure is None:
        assure = np.zeros(len(conn), np.uint8)
    assure = _check.array(assure, "assure", np.uint8)
    _check.same_length(conn=conn, assure=assure)
    now = _check.integer(now, "now", 0, MAX_TIME)
    _update(table.conns, conn, state, timeout, now, assure)


def set_mark(table: Table, conn, mark) -> None:
    """Set the connection mark (CONNMARK) of connections; -1 and free ids skipped."""
    conn = _conn_array(table, conn)
    mark = _check.array(mark, "mark", np.uint32)
    _check.same_length(conn=conn, mark=mark)
    _set_mark(table.conns, conn, mark)


def account(table: Table, conn, direction, length) -> None:
    """Count one packet of `length` bytes per element in its direction
    (nf_ct_acct_update); -1 and free ids are skipped."""
    conn = _conn_array(table, conn)
    direction = _check.array(direction, "direction", np.int8)
    length = _check.array(length, "length", np.uint32)
    _check.same_length(conn=conn, direction=direction, length=length)
    _check.in_range(direction, "direction", ORIGINAL, REPLY)
    _account(table.conns, table.counters, conn, direction, length)


def delete(table: Table, conn) -> int:
    """Remove connections (conntrack -D), in order; -1 and free ids are
    skipped. Returns how many were removed."""
    conn = _conn_array(table, conn)
    return int(_delete(*_arrays(table), conn))


def expire(table: Table, now: int) -> int:
    """Remove every connection with expires <= now, in id order (the GC
    sweep). Returns how many were removed."""
    now = _check.integer(now, "now", 0, MAX_TIME)
    return int(_expire(*_arrays(table), now))


def flush_matching(table: Table, **fields: int) -> int:
    """Remove, in id order, every connection whose fields equal all those
    given, e.g. `flush_matching(t, proto=17, reply_src=endpoint_ip)` for
    kube-proxy's `conntrack -D -p udp --reply-src <endpoint>`. Field names:
    FLUSH_FIELDS. Returns how many were removed."""
    unknown = set(fields) - set(FLUSH_FIELDS)
    if unknown:
        raise ValueError(f"flush_matching: unknown fields {sorted(unknown)}; known: {FLUSH_FIELDS}")
    if not fields:
        raise ValueError("flush_matching: give at least one field (expire or delete clear more)")
    want = np.full(len(FLUSH_FIELDS), -1, np.int64)
    for k, name in enumerate(FLUSH_FIELDS):
        if name in fields:
            want[k] = _check.integer(fields[name], name, 0, int(np.iinfo(CONN_DTYPE[name]).max))
    return int(_flush(*_arrays(table), want))


# --- wrappers' helpers --------------------------------------------------------

def _arrays(table: Table):
    return table.conns, table.counters, table.index, table.free_ids, table.stats, table.seed


def _track_batch(table, mode, zone, src, dst, sport, dport, proto, reply, state, timeout, now) -> Tracked:
    n = len(src)
    out = Tracked(np.empty(n, np.int32), np.empty(n, np.int8), np.empty(n, np.bool_), np.empty(n, np.uint8))
    _track(*_arrays(table), mode, zone, src, dst, sport, dport, proto, *reply, state, timeout, now, *out)
    return out


def _tuple_arrays(zone, src, dst, sport, dport, proto):
    out = (_check.array(zone, "zone", np.uint16), _check.array(src, "src", np.uint32),
           _check.array(dst, "dst", np.uint32), _check.array(sport, "sport", np.uint16),
           _check.array(dport, "dport", np.uint16), _check.array(proto, "proto", np.uint8))
    _check.same_length(zone=out[0], src=out[1], dst=out[2], sport=out[3], dport=out[4], proto=out[5])
    return out


def _reply_arrays(src, reply_src, reply_dst, reply_sport, reply_dport):
    out = (_check.array(reply_src, "reply_src", np.uint32), _check.array(reply_dst, "reply_dst", np.uint32),
           _check.array(reply_sport, "reply_sport", np.uint16),
           _check.array(reply_dport, "reply_dport", np.uint16))
    _check.same_length(src=src, reply_src=out[0], reply_dst=out[1], reply_sport=out[2], reply_dport=out[3])
    return out


def _state_arrays(like, state, timeout):
    state = _check.array(state, "state", np.uint8)
    timeout = _check.array(timeout, "timeout", np.int64)
    _check.same_length(packets=like, state=state, timeout=timeout)
    _check.in_range(timeout, "timeout", 0, MAX_TIME)
    return state, timeout


def _conn_array(table, conn):
    conn = _check.array(conn, "conn", np.int32)
    _check.in_range(conn, "conn", -1, len(table.conns) - 1)
    return conn


# --- kernels: hashing and prefetching ----------------------------------------------

@jit
def _hash(zone, proto, src, dst, sport, dport, seed):
    return hash5(src, dst, sport, dport, proto, seed + np.uint64(zone))


@jit
def _hashes(zone, src, dst, sport, dport, proto, seed):
    """Hash of each tuple, then 2 * AHEAD zeros so the pipelined loops
    can read ahead without a bounds test."""
    out = np.zeros(len(src) + 2 * AHEAD, np.uint64)
    for i in range(len(src)):
        out[i] = _hash(zone[i], proto[i], src[i], dst[i], sport[i], dport[i], seed)
    return out


@jit
def _home(h, index):
    return np.int64(h & np.uint64(len(index) - 1))


@jit
def _prefetch_ahead(conns, index, h_far, h_near, reply_h_near):
    """One step of the batch pipeline (as DPDK's bulk hash lookups): fetch the
    home index line of a far packet (hash h_far); read the home slot of a
    nearer one (h_near), fetched earlier and cached by now, to fetch what that
    packet will touch: its record if the slot's hash bits match, else (a new
    flow, probably) its reply tuple's home line. Hashes, not hash arrays, as
    arguments keep it small enough for LLVM to inline."""
    prefetch(index, _home(h_far, index))
    word = index[_home(h_near, index)]
    hit = word != _EMPTY and (word >> _S32) == (h_near & _LOW32)
    # Two ifs, not if/else: numba then prunes the arrays' reference counting
    # out of the loop (an if/else leaves an atomic incref/decref per packet).
    if hit:
        prefetch(conns, _slot_conn(word))
    if not hit:
        prefetch(index, _home(reply_h_near, index))


# --- kernels: the index ------------------------------------------------------------

@jit
def _slot_home(word, mask):
    return np.int64((word >> _S32) & np.uint64(mask))


@jit
def _slot_conn(word):
    return np.int64((word & _LOW32) >> _ONE)


@jit
def _slot_direction(word):
    return np.int64(word & _ONE)


@jit
def _matches(rec, direction, zone, proto, src, dst, sport, dport):
    if rec.zone != zone or rec.proto != proto:
        return False
    if direction == ORIGINAL:
        return (rec.orig_src == src and rec.orig_dst == dst
                and rec.orig_sport == sport and rec.orig_dport == dport)
    return (rec.reply_src == src and rec.reply_dst == dst
            and rec.reply_sport == sport and rec.reply_dport == dport)


@jit
def _find(index, conns, h, zone, proto, src, dst, sport, dport):
    """Slot holding this tuple (hash h), or -1. Probing stops at an empty slot."""
    mask = len(index) - 1
    tag = h & _LOW32
    pos = _home(h, index)
    for _ in range(len(index)):
        word = index[pos]
        if word == _EMPTY:
            return -1
        if (word >> _S32) == tag and _matches(conns[_slot_conn(word)], _slot_direction(word),
                                              zone, proto, src, dst, sport, dport):
            return pos
        pos = (pos + 1) & mask
    return -1


@jit
def _place(index, h, ref):
    """Put a tuplehash in the first empty slot from its home (one always exists)."""
    mask = len(index) - 1
    pos = _home(h, index)
    while index[pos] != _EMPTY:
        pos = (pos + 1) & mask
    index[pos] = (h << _S32) | np.uint64(ref)


@jit
def _remove_slot(index, pos):
    """Empty a slot by backward shift: later entries of the run move into the
    hole when their home allows, so probing needs no tombstones."""
    mask = len(index) - 1
    hole = pos
    j = pos
    for _ in range(len(index)):
        j = (j + 1) & mask
        word = index[j]
        if word == _EMPTY:
            break
        # The entry at j may fill the hole iff the hole lies cyclically in [home, j).
        if ((j - _slot_home(word, mask)) & mask) >= ((j - hole) & mask):
            index[hole] = word
            hole = j
    index[hole] = _EMPTY


@jit
def _unlink(index, h, ref):
    """Remove the slot holding tuplehash `ref` (hash h)."""
    mask = len(index) - 1
    pos = _home(h, index)
    for _ in range(len(index)):
        word = index[pos]
        if word == _EMPTY:
            return
        if (word & _LOW32) == np.uint64(ref):
            _remove_slot(index, pos)
            return
        pos = (pos + 1) & mask


# --- kernels: connections ------------------------------------------------------------

@jit
def _remove(conns, counters, index, free_ids, stats, seed, c):
    """Take connection c out of the index, zero its counters, free its id."""
    rec = conns[c]
    _unlink(index, _hash(rec.zone, rec.proto, rec.orig_src, rec.orig_dst, rec.orig_sport, rec.orig_dport,
                         seed), 2 * c + ORIGINAL)
    _unlink(index, _hash(rec.zone, rec.proto, rec.reply_src, rec.reply_dst, rec.reply_sport,
                         rec.reply_dport, seed), 2 * c + REPLY)
    rec.status = 0
    counters[c, :] = 0  # here rather than at insert: inserts stay off this array
    live = stats[STAT_COUNT]
    free_ids[len(conns) - live] = c
    stats[STAT_COUNT] = live - 1


@jit
def _expire_conn(conns, counters, index, free_ids, stats, seed, c):
    _remove(conns, counters, index, free_ids, stats, seed, c)
    stats[STAT_EXPIRED] += 1


@jit
def _live_match(conns, index, pos, now, see_reply):
    """(conn, direction) of the slot `_find` returned if that connection is
    unexpired, else (-1, -1). With see_reply, a REPLY hit sets SEEN_REPLY."""
    if pos < 0:
        return -1, -1
    word = index[pos]
    c = _slot_conn(word)
    rec = conns[c]
    if rec.expires <= now:
        return -1, -1
    d = _slot_direction(word)
    if see_reply and d == REPLY and (rec.status & IPS_SEEN_REPLY) == 0:
        rec.status |= IPS_SEEN_REPLY
    return c, d


@jit
def _early_drop_victim(conns, index, start, now):
    """Evictable connection (expired or not ASSURED) with a tuple homed in the
    EARLY_DROP_RANGE slots from `start`: the smallest (expires, conn), or -1.
    Entries homed there lie between `start` and the first empty slot at or
    after the window's end (linear probing leaves no gap behind an entry)."""
    mask = len(index) - 1
    best = -1
    best_expires = 0
    for k in range(len(index)):
        word = index[(start + k) & mask]
        if word == _EMPTY:
            if k >= EARLY_DROP_RANGE - 1:
                break
            continue
        if ((_slot_home(word, mask) - start) & mask) >= EARLY_DROP_RANGE:
            continue
        c = _slot_conn(word)
        rec = conns[c]
        if rec.expires <= now or (rec.status & IPS_ASSURED) == 0:
            if best < 0 or rec.expires < best_expires or (rec.expires == best_expires and c < best):
                best = c
                best_expires = rec.expires
    return best


@jit
def _fill(rec, zone, proto, src, dst, sport, dport, rsrc, rdst, rsport, rdport, state, expires):
    """Write a new connection's record; the NAT bits say which side NAT changed."""
    status = IPS_CONFIRMED
    if rdst != src or rdport != sport:
        status |= IPS_SRC_NAT
    if rsrc != dst or rsport != dport:
        status |= IPS_DST_NAT
    rec.zone = zone
    rec.proto = proto
    rec.state = state
    rec.status = status
    rec.orig_src = src
    rec.orig_dst = dst
    rec.orig_sport = sport
    rec.orig_dport = dport
    rec.reply_src = rsrc
    rec.reply_dst = rdst
    rec.reply_sport = rsport
    rec.reply_dport = rdport
    rec.mark = 0
    rec.expires = expires


@jit
def _make_room(conns, counters, index, free_ids, stats, seed, zone, proto, h, rsrc, rdst, rsport, rdport, hr,
               now):
    """Before an insert: remove the expired connection that holds the reply
    tuple, if any; then, if the table is full, early-drop a victim. Returns
    0, or CT_TABLE_FULL when nothing could be evicted."""
    pos = _find(index, conns, hr, zone, proto, rsrc, rdst, rsport, rdport)
    if pos >= 0 and conns[_slot_conn(index[pos])].expires <= now:
        _expire_conn(conns, counters, index, free_ids, stats, seed, _slot_conn(index[pos]))
    if stats[STAT_COUNT] < len(conns):
        return 0
    victim = _early_drop_victim(conns, index, _home(h, index), now)
    if victim < 0:
        stats[STAT_DROP] += 1
        return drop.CT_TABLE_FULL
    _remove(conns, counters, index, free_ids, stats, seed, victim)
    stats[STAT_EARLY_DROP] += 1
    return 0


@jit
def _insert_free(conns, index, free_ids, stats, h, hr, zone, proto, src, dst, sport, dport, rsrc, rdst, rsport,
                 rdport, state, expires):
    """`_track`'s insert for a caller that checked both tuples are free and
    the table is not full (kernels.replay): the next free id filled, both
    tuples placed. Returns the connection. `_track` keeps its own copy
    written out: calling this (arrays passed) took its insert benchmark
    from 19-20 M to 13-14 M connections/s."""
    live = stats[STAT_COUNT]
    c = free_ids[len(conns) - live - 1]
    stats[STAT_COUNT] = live + 1
    stats[STAT_INSERT] += 1
    _fill(conns[c], zone, proto, src, dst, sport, dport, rsrc, rdst, rsport, rdport, state, expires)
    _place(index, h, 2 * c + ORIGINAL)
    _place(index, hr, 2 * c + REPLY)
    return c


# --- kernels: batches -----------------------------------------------------------

@jit
def _track(conns, counters, index, free_ids, stats, seed, mode, zone, src, dst, sport, dport, proto,
           rsrc, rdst, rsport, rdport, state, timeout, now, out_conn, out_direction, out_created, out_drop):
    """lookup (mode _LOOKUP), insert (_INSERT) and lookup_or_insert
    (_LOOKUP_OR_INSERT), packet after packet. One loop with the insert written
    out in it, because in numba a call that passes arrays costs atomic
    reference counting (~10 atomics per call here); the rare paths (lazy
    expiry, making room) are calls."""
    hashes = _hashes(zone, src, dst, sport, dport, proto, seed)
    reply_hashes = hashes if mode == _LOOKUP else _hashes(zone, rsrc, rdst, rsport, rdport, proto, seed)
    for i in range(len(src)):
        _prefetch_ahead(conns, index, hashes[i + 2 * AHEAD], hashes[i + AHEAD],
                        reply_hashes[i + AHEAD])
        h = hashes[i]
        out_conn[i] = -1
        out_direction[i] = -1
        out_created[i] = False
        out_drop[i] = 0
        pos = _find(index, conns, h, zone[i], proto[i], src[i], dst[i], sport[i], dport[i])
        c, d = _live_match(conns, index, pos, now, mode != _INSERT)
        if c >= 0:
            if mode == _INSERT and not (d == ORIGINAL and _matches(
                    conns[c], REPLY, zone[i], proto[i], rsrc[i], rdst[i], rsport[i], rdport[i])):
                stats[STAT_INSERT_FAILED] += 1  # taken by another connection
                out_drop[i] = CT_CLASH_DROP
            else:  # a hit; for insert, the same connection again (nf_ct_resolve_clash)
                out_conn[i] = c
                out_direction[i] = d
            continue
        if pos >= 0:
            _expire_conn(conns, counters, index, free_ids, stats, seed, _slot_conn(index[pos]))
        if mode == _LOOKUP:
            continue
        # Insert: the reply tuple must be free, then an id must be free.
        hr = reply_hashes[i]
        reason = 0
        if not (rsrc[i] == src[i] and rdst[i] == dst[i] and rsport[i] == sport[i] and rdport[i] == dport[i]):
            rpos = _find(index, conns, hr, zone[i], proto[i], rsrc[i], rdst[i], rsport[i], rdport[i])
            if rpos >= 0:
                reason = _NEEDS_ROOM if conns[_slot_conn(index[rpos])].expires <= now else CT_CLASH_DROP
        if reason == 0 and stats[STAT_COUNT] >= len(conns):
            reason = _NEEDS_ROOM
        if reason == _NEEDS_ROOM:
            reason = _make_room(conns, counters, index, free_ids, stats, seed, zone[i], proto[i], h,
                                rsrc[i], rdst[i], rsport[i], rdport[i], hr, now)
        elif reason == CT_CLASH_DROP:
            stats[STAT_INSERT_FAILED] += 1
        if reason != 0:
            out_drop[i] = reason
            continue
        live = stats[STAT_COUNT]
        top = len(conns) - live - 1
        c = free_ids[top]
        if top > 0:
            prefetch(conns, free_ids[top - 1])  # the record the next insert will fill
        stats[STAT_COUNT] = live + 1
        stats[STAT_INSERT] += 1
        _fill(conns[c], zone[i], proto[i], src[i], dst[i], sport[i], dport[i],
              rsrc[i], rdst[i], rsport[i], rdport[i], state[i], now + timeout[i])
        _place(index, h, 2 * c + ORIGINAL)
        _place(index, hr, 2 * c + REPLY)
        out_conn[i] = c
        out_direction[i] = ORIGINAL
        out_created[i] = True


@jit
def _update(conns, conn, state, timeout, now, assure):
    for i in range(len(conn)):
        c = conn[i]
        if c >= 0 and conns[c].status & IPS_CONFIRMED:
            rec = conns[c]
            rec.state = state[i]
            rec.expires = now + timeout[i]
            if assure[i]:
                rec.status |= IPS_ASSURED


@jit
def _set_mark(conns, conn, mark):
    for i in range(len(conn)):
        c = conn[i]
        if c >= 0 and conns[c].status & IPS_CONFIRMED:
            conns[c].mark = mark[i]


@jit
def _account(conns, counters, conn, direction, length):
    for i in range(len(conn)):
        c = conn[i]
        if c >= 0 and conns[c].status & IPS_CONFIRMED:
            d = np.int64(direction[i])
            counters[c, 2 * d] += np.uint64(1)
            counters[c, 2 * d + 1] += np.uint64(length[i])


@jit
def _delete(conns, counters, index, free_ids, stats, seed, conn):
    removed = 0
    for i in range(len(conn)):
        c = conn[i]
        if c >= 0 and conns[c].status & IPS_CONFIRMED:
            _remove(conns, counters, index, free_ids, stats, seed, c)
            removed += 1
    stats[STAT_DELETED] += removed
    return removed


@jit
def _expire(conns, counters, index, free_ids, stats, seed, now):
    removed = 0
    for c in range(len(conns)):
        rec = conns[c]
        if rec.status & IPS_CONFIRMED and rec.expires <= now:
            _remove(conns, counters, index, free_ids, stats, seed, c)
            removed += 1
    stats[STAT_EXPIRED] += removed
    return removed


@jit
def _field_value(rec, k):
    """Field number k of FLUSH_FIELDS."""
    if k == 0:
        return np.int64(rec.zone)
    if k == 1:
        return np.int64(rec.proto)
    if k == 2:
        return np.int64(rec.orig_src)
    if k == 3:
        return np.int64(rec.orig_dst)
    if k == 4:
        return np.int64(rec.orig_sport)
    if k == 5:
        return np.int64(rec.orig_dport)
    if k == 6:
        return np.int64(rec.reply_src)
    if k == 7:
        return np.int64(rec.reply_dst)
    if k == 8:
        return np.int64(rec.reply_sport)
    if k == 9:
        return np.int64(rec.reply_dport)
    return np.int64(rec.mark)


@jit
def _flush(conns, counters, index, free_ids, stats, seed, want):
    removed = 0
    for c in range(len(conns)):
        rec = conns[c]
        if (rec.status & IPS_CONFIRMED) == 0:
            continue
        hit = True
        for k in range(len(want)):
            if want[k] >= 0 and _field_value(rec, k) != want[k]:
                hit = False
                break
        if hit:
            _remove(conns, counters, index, free_ids, stats, seed, c)
            removed += 1
    stats[STAT_DELETED] += removed
    return removed
