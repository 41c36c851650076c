"""IPv4 longest-prefix match: the routing tables (FIBs) of the emulated nodes.

Two shapes, one structure (the jitted core and its layout are described in
`kernels.lpm_trie`):

- `build(...)` makes one large table, by default DIR-24-8 as in DPDK's
  rte_lpm: a 2**24-entry first level indexed by the top 24 address bits and
  256-entry groups for longer prefixes, so most lookups are one load.
- `build_many([...])` makes a set of small tables (one FIB per cluster node)
  that share one pool of 256-entry nodes, an 8-8-8-8 trie: a few KiB per
  table where DIR-24-8 would take 64 MiB each.

A `Fib` holds `count` tables; table k's routes are (prefix, length, next
hop) rules, next hops are int32 >= 0 and a lookup that matches nothing gives
-1. Every node keeps its own rules beside its leaf-pushed entries, so
`add` and `remove` cost the span the prefix covers, never the table size
(plus, rarely, an amortised regrowth of the node pool). A route whose
prefix has bits set past its length is rejected, as Linux does (`ip route
add 10.0.0.1/8` fails with "Invalid prefix for given prefix length").

Inside numba, `lookup_one(fib.tables, fib_id, addr)` looks one address up;
take `fib.tables` again after an update, which may have grown the arrays.
"""
from __future__ import annotations

import ipaddress
from typing import NamedTuple

import numpy as np

from kernels import _check, lpm_trie
from kernels._jit import jit
from kernels.lpm_trie import NO_ROUTE, NODE_BITS

STRIDES = (8, 16, 24)
_NEXTHOP_MAX = 2**31 - 1
_MAX_TABLES = 1 << 24  # table ids take 24 bits of the keys _first_duplicate sorts


class Tables(NamedTuple):
    """What a lookup needs, as numba can take it: see `lookup_one`."""
    entries: np.ndarray
    stride: int
    count: int


class Fib:
    """`count` routing tables in one node pool; the first level of each has
    2**stride entries. Made by `build` or `build_many`, changed in place by
    `add`, `remove`, `add_batch` and `remove_batch`."""

    def __init__(self, count: int, stride: int, spare_nodes: int):
        self.count = count
        self.stride = stride
        self.levels = (32 - stride) // NODE_BITS   # node levels below a root
        self.root_nodes = count << (stride - NODE_BITS)  # node ids the roots take
        total = self.root_nodes + spare_nodes
        # node pool: entries (read by lookups), per-node rule heaps, rule and
        # child counts, and a stack of free node ids (see kernels.lpm_trie)
        self.entries = np.empty(total << NODE_BITS, np.int32)
        self.rules = np.empty(2 * self.entries.size, np.int32)
        self.entries[:self.root_nodes << NODE_BITS] = NO_ROUTE
        self.rules[:self.root_nodes << (NODE_BITS + 1)] = NO_ROUTE
        self.used = np.zeros(total, np.int32)
        self.free = np.arange(total - 1, self.root_nodes - 1, -1, dtype=np.int32)
        self.state = np.array([spare_nodes], np.int64)  # state[0]: free node ids on the stack

    @property
    def tables(self) -> Tables:
        return Tables(self.entries, self.stride, self.count)

    @property
    def nbytes(self) -> int:
        """Bytes of every array of the table."""
        return sum(a.nbytes for a in (self.entries, self.rules, self.used, self.free, self.state))

    @property
    def nodes_in_use(self) -> int:
        return self.used.size - int(self.state[0])

    def _resize(self, total: int) -> None:
        """Give the pool `total` node ids. Growing keeps every node; shrinking
        (after a build) drops only free ids past the highest one in use."""
        keep = min(total, self.used.size)
        entries = np.empty(total << NODE_BITS, np.int32)
        entries[:keep << NODE_BITS] = self.entries[:keep << NODE_BITS]
        rules = np.empty(2 * entries.size, np.int32)
        rules[:keep << (NODE_BITS + 1)] = self.rules[:keep << (NODE_BITS + 1)]
        used = np.zeros(total, np.int32)
        used[:keep] = self.used[:keep]
        free = self.free[:self.state[0]]
        free = np.concatenate([np.arange(total - 1, keep - 1, -1, dtype=np.int32), free[free < keep]])
        self.entries, self.rules, self.used = entries, rules, used
        self.free = np.empty(total - self.root_nodes, np.int32)
        self.free[:free.size] = free
        self.state[0] = free.size

    def _grow(self) -> None:
        child = self.used.size - self.root_nodes
        self._resize(self.used.size + max(1024, child // 2))

    def _reserve(self) -> None:
        """Enough free nodes for one more add (one per level below the root)."""
        if self.state[0] < self.levels:
            self._grow()

    def __repr__(self) -> str:
        return (f"Fib(count={self.count}, stride={self.stride}, nodes={self.nodes_in_use}, "
                f"nbytes={self.nbytes})")


def _ip(x) -> str:
    return str(ipaddress.IPv4Address(int(x)))


def _routes(prefixes, lengths, nexthops=None):
    """Validated route arrays; host bits set past a length are an error."""
    prefixes = _check.array(prefixes, "prefixes", np.uint32)
    lengths = _check.array(lengths, "lengths", np.uint8)
    arrays = {"prefixes": prefixes, "lengths": lengths}
    if nexthops is not None:
        nexthops = _check.array(nexthops, "nexthops", np.int32)
        _check.in_range(nexthops, "nexthops", 0, _NEXTHOP_MAX)
        arrays["nexthops"] = nexthops
    _check.same_length(**arrays)
    _check.in_range(lengths, "lengths", 0, 32)
    host = (np.uint64(1) << (np.uint64(32) - lengths.astype(np.uint64))) - np.uint64(1)
    bad = np.flatnonzero(prefixes.astype(np.uint64) & host)
    if bad.size:
        i = bad[0]
        raise ValueError(f"prefixes[{i}]: {_ip(prefixes[i])}/{lengths[i]} has bits set past its "
                         f"length (Linux: Invalid prefix for given prefix length)")
    return prefixes, lengths, nexthops


def _stride(stride) -> int:
    if stride not in STRIDES:
        raise ValueError(f"stride: must be one of {STRIDES}, got {stride!r}")
    return stride


def _table_id(fib: Fib, fib_id) -> int:
    if not isinstance(fib, Fib):
        raise ValueError(f"fib: expected a Fib, got {type(fib).__name__}")
    if fib_id is None:
        if fib.count != 1:
            raise ValueError(f"fib_id: required, this Fib holds {fib.count} tables (lookups: lookup_many)")
        return 0
    return _check.integer(fib_id, "fib_id", 0, fib.count - 1)


def _table_ids(fib: Fib, fib_ids, n: int) -> np.ndarray:
    if fib_ids is None:
        _table_id(fib, None)
        return np.zeros(n, np.int32)
    fib_ids = _check.array(fib_ids, "fib_ids", np.int32)
    _check.in_range(fib_ids, "fib_ids", 0, fib.count - 1)
    return fib_ids


def _insert(fib: Fib, fib_ids, prefixes, lengths, nexthops, building: bool) -> bool:
    """Run the batch add, growing the pool whenever it runs dry. False if a
    build met a duplicate route."""
    start = 0
    while True:
        status, start = lpm_trie.add_batch(fib.entries, fib.rules, fib.used, fib.free, fib.state,
                                           fib.stride, fib_ids, prefixes, lengths, nexthops,
                                           start, building)
        if status == lpm_trie.DONE:
            return True
        if status == lpm_trie.DUPLICATE:
            return False
        fib._grow()


def _first_duplicate(fib_ids, prefixes, lengths) -> int:
    """Index of the first route that repeats an earlier one of its table, or -1."""
    keys = (fib_ids.astype(np.uint64) << np.uint64(40)) | (prefixes.astype(np.uint64) << np.uint64(8)) | lengths
    seen = np.zeros(keys.size, bool)
    seen[np.unique(keys, return_index=True)[1]] = True
    return int(np.argmin(seen)) if not seen.all() else -1


def _build(count: int, stride: int, fib_ids, prefixes, lengths, nexthops) -> Fib:
    """The tables, or _Duplicate naming the first duplicate route."""
    # A route longer than the root's stride needs at most one node per level
    # below it; that bound is the first pool size when it is modest, else the
    # pool grows as needed.
    levels = (32 - stride) // NODE_BITS
    longer = int(np.count_nonzero(lengths > stride))
    fib = Fib(count, stride, spare_nodes=min(levels * longer, max(1024, longer // 128)))
    order = np.argsort(lengths, kind="stable")  # shortest first: see lpm_trie._add
    if not _insert(fib, fib_ids[order], prefixes[order], lengths[order], nexthops[order], True):
        raise _Duplicate(_first_duplicate(fib_ids, prefixes, lengths))
    # Give back what the pool grew past its needs, keeping some spare nodes for updates.
    top = fib.used.size - int(fib.state[0])  # a build frees nothing: in-use ids are contiguous
    want = top + max(1024, (top - fib.root_nodes) // 16)
    if fib.used.size > want + want // 8:
        fib._resize(want)
    return fib


class _Duplicate(Exception):
    def __init__(self, index: int):
        self.index = index


def build(prefixes, lengths, nexthops, *, stride: int = 24) -> Fib:
    """One table from uint32 prefixes, uint8 lengths (0..32) and int32 next
    hops (>= 0). A duplicate (prefix, length) is a ValueError. stride 24 is
    DIR-24-8 (64 MiB first level); 16 and 8 make smaller, deeper tables."""
    prefixes, lengths, nexthops = _routes(prefixes, lengths, nexthops)
    stride = _stride(stride)
    try:
        return _build(1, stride, np.zeros(prefixes.size, np.int32), prefixes, lengths, nexthops)
    except _Duplicate as e:
        i = e.index
        raise ValueError(f"duplicate route {_ip(prefixes[i])}/{lengths[i]} at index {i}") from None


def build_many(tables, *, stride: int = 8) -> Fib:
    """A set of tables in one node pool: `tables` is a sequence of (prefixes,
    lengths, nexthops), as for `build`; table k answers to fib_id k."""
    stride = _stride(stride)
    checked = []
    for k, (prefixes, lengths, nexthops) in enumerate(tables):
        try:
            checked.append(_routes(prefixes, lengths, nexthops))
        except ValueError as e:
            raise ValueError(f"tables[{k}]: {e}") from None
    if not 1 <= len(checked) <= _MAX_TABLES:
        raise ValueError(f"tables: expected 1 to {_MAX_TABLES} tables, got {len(checked)}")
    sizes = np.array([t[0].size for t in checked], np.int64)
    fib_ids = np.repeat(np.arange(len(checked), dtype=np.int32), sizes)
    prefixes, lengths, nexthops = (np.concatenate([t[j] for t in checked]) for j in range(3))
    try:
        return _build(len(checked), stride, fib_ids, prefixes, lengths, nexthops)
    except _Duplicate as e:
        k = int(fib_ids[e.index])
        i = e.index - int(sizes[:k].sum())
        raise ValueError(f"tables[{k}]: duplicate route {_ip(prefixes[e.index])}/{lengths[e.index]} "
                         f"at index {i}") from None


def lookup(fib: Fib, addrs) -> np.ndarray:
    """Next hop (int32) of the longest prefix matching each uint32 address of
    a one-table Fib, -1 where none matches."""
    _table_id(fib, None)
    addrs = _check.array(addrs, "addrs", np.uint32)
    out = np.empty(addrs.size, np.int32)
    lpm_trie.lookup_table(fib.entries, fib.stride, addrs, out)
    return out


def lookup_many(fib: Fib, fib_ids, addrs) -> np.ndarray:
    """Next hop (int32) of each (int32 table id, uint32 address) pair, -1
    where no route matches."""
    if not isinstance(fib, Fib):
        raise ValueError(f"fib: expected a Fib, got {type(fib).__name__}")
    addrs = _check.array(addrs, "addrs", np.uint32)
    fib_ids = _check.array(fib_ids, "fib_ids", np.int32)
    _check.same_length(fib_ids=fib_ids, addrs=addrs)
    _check.in_range(fib_ids, "fib_ids", 0, fib.count - 1)
    out = np.empty(addrs.size, np.int32)
    lpm_trie.lookup_set(fib.entries, fib.stride, fib_ids, addrs, out)
    return out


@jit
def lookup_one(tables, fib_id, addr):
    """Next hop for `addr` in table `fib_id` of `tables` (a Fib's `.tables`),
    -1 if no route matches or there is no such table. For other kernels."""
    if fib_id < 0 or fib_id >= tables.count:
        return NO_ROUTE
    return np.int64(lpm_trie.walk(tables.entries, tables.stride, np.int64(fib_id) << tables.stride, addr))


def _one_route(prefix, length):
    p = _check.integer(prefix, "prefix", 0, 2**32 - 1)
    n = _check.integer(length, "length", 0, 32)
    if p & ((1 << (32 - n)) - 1):
        raise ValueError(f"prefix: {_ip(p)}/{n} has bits set past its length "
                         f"(Linux: Invalid prefix for given prefix length)")
    return p, n


def add(fib: Fib, prefix, length, nexthop, fib_id=None) -> int:
    """Add route prefix/length -> nexthop to table `fib_id` (needed when the Fib
    holds several), replacing the route's next hop if present. Returns the
    previous next hop, -1 if the route is new."""
    k = _table_id(fib, fib_id)
    p, n = _one_route(prefix, length)
    nexthop = _check.integer(nexthop, "nexthop", 0, _NEXTHOP_MAX)
    fib._reserve()
    return int(lpm_trie.add_one(fib.entries, fib.rules, fib.used, fib.free, fib.state,
                                fib.stride, k, p, n, nexthop))


def remove(fib: Fib, prefix, length, fib_id=None) -> int:
    """Remove route prefix/length from table `fib_id`; its next hop. KeyError
    if the table has no such route."""
    k = _table_id(fib, fib_id)
    p, n = _one_route(prefix, length)
    old = int(lpm_trie.remove_one(fib.entries, fib.rules, fib.used, fib.free, fib.state,
                                  fib.stride, k, p, n))
    if old == NO_ROUTE:
        raise KeyError(f"no route {_ip(p)}/{n} in table {k}")
    return old


def add_batch(fib: Fib, prefixes, lengths, nexthops, fib_ids=None) -> None:
    """`add` for each route in order (a later duplicate replaces an earlier
    one); `fib_ids` (int32) names each route's table when the Fib holds several."""
    prefixes, lengths, nexthops = _routes(prefixes, lengths, nexthops)
    fib_ids = _table_ids(fib, fib_ids, prefixes.size)
    _check.same_length(prefixes=prefixes, fib_ids=fib_ids)
    _insert(fib, fib_ids, prefixes, lengths, nexthops, False)


def remove_batch(fib: Fib, prefixes, lengths, fib_ids=None) -> None:
    """`remove` each route, all or none: KeyError naming the first absent
    route (nothing removed), ValueError if a route is listed twice."""
    prefixes, lengths, _ = _routes(prefixes, lengths)
    fib_ids = _table_ids(fib, fib_ids, prefixes.size)
    _check.same_length(prefixes=prefixes, fib_ids=fib_ids)
    i = _first_duplicate(fib_ids, prefixes, lengths)
    if i >= 0:
        raise ValueError(f"route {_ip(prefixes[i])}/{lengths[i]} listed twice (again at index {i})")
    i = lpm_trie.remove_batch(fib.entries, fib.rules, fib.used, fib.free, fib.state, fib.stride,
                              fib_ids, prefixes, lengths)
    if i >= 0:
        raise KeyError(f"no route {_ip(prefixes[i])}/{lengths[i]} in table {fib_ids[i]} "
                       f"(index {i}; nothing removed)")


def routes(fib: Fib, fib_id=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The routes of table `fib_id` as (uint32 prefixes, uint8 lengths, int32
    next hops), sorted by prefix then length."""
    k = _table_id(fib, fib_id)
    n = lpm_trie.count_rules(fib.entries, fib.rules, fib.stride, k)
    prefixes = np.empty(n, np.uint32)
    lengths = np.empty(n, np.uint8)
    nexthops = np.empty(n, np.int32)
    lpm_trie.collect_rules(fib.entries, fib.rules, fib.stride, k, prefixes, lengths, nexthops)
    order = np.lexsort((lengths, prefixes))
    return prefixes[order], lengths[order], nexthops[order]
