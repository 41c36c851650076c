"""The jitted core of `kernels.lpm`: a leaf-pushed multibit trie whose nodes
also store their own rules, so that an update touches only the span its
prefix covers.

Layout (all offsets in int32 slots, node ids in units of 256 slots):

- `entries` (int32) is what a lookup reads. A table's root has 2**stride
  entries and starts at `fib_id << stride`; every node below a root has 256
  entries (8 bits of address) and starts at `node_id << 8`. An entry holds a
  next hop (>= 0), NO_ROUTE (-1), or a pointer `-2 - node_id` to a child
  node. With stride 24 and one table this is DIR-24-8 (Gupta, Lin and
  McKeown 1998; DPDK rte_lpm): tbl24 is the root and each child node is a
  tbl8 group. With stride 8 it is an 8-8-8-8 trie; many tables then share
  one node pool.
- `rules` (int32, twice the size of `entries`) is the rule store: the node
  at offset `off` with stride `s` keeps its rules of length d+k (d = bits
  above the node, k = 0..s) as a binary heap at `rules[2*off + (1 << k) + b]`
  where b is the k address bits below d. Slot 1 of a root holds /0; slot 1 of
  other nodes is unused (a rule as long as the node's own prefix lives in the
  parent, at k = s). -1 marks an empty slot.
- `used` (int32 per node id) counts the rules and child pointers of each
  node below a root, so a node left with neither is folded back into its
  parent's entry and freed on the spot.
- `free` (int32) is a stack of free node ids; `state[0]` is its depth.

Leaf pushing: every entry holds the next hop of the longest rule covering
it. Applying a rule at heap position (k, b) walks the heap subtree below it,
skipping any subtree that has a longer rule of its own, and writes every
entry reached, continuing into child nodes: the cost is proportional to the
span the prefix covers. Removing a rule applies, the same way, the longest
rule that covers it (read along the path from the root).
"""
from __future__ import annotations

import numpy as np

from kernels._jit import jit

NO_ROUTE = -1
NODE_BITS = 8
NODE = 1 << NODE_BITS
# _push's explicit stack: one pending sibling per heap level on the current
# path (at most 33 bit positions plus one per node crossed) and the current item.
_STACK = 64

# status codes of add_batch
DONE = 0
NEED_NODES = 1   # ran out of free nodes: grow the pool, then resume at the index returned
DUPLICATE = 2    # a build met a (prefix, length) already present


@jit
def walk(entries, stride, root, addr):
    """Longest-prefix match of `addr` in the table whose root starts at `root`:
    a next hop or NO_ROUTE. One load per level of the trie."""
    a = np.int64(addr)
    shift = 32 - stride
    e = entries[root + (a >> shift)]
    while e < -1:
        shift -= NODE_BITS
        e = entries[((-2 - np.int64(e)) << NODE_BITS) + ((a >> shift) & (NODE - 1))]
    return e


@jit
def lookup_table(entries, stride, addrs, out):
    for i in range(addrs.size):
        out[i] = walk(entries, stride, 0, addrs[i])


@jit
def lookup_set(entries, stride, fib_ids, addrs, out):
    for i in range(addrs.size):
        out[i] = walk(entries, stride, np.int64(fib_ids[i]) << stride, addrs[i])


@jit
def _push(entries, rules, stack, off, s, k, b, value):
    """Make `value` the next hop of every entry under heap position (k, b) of
    the node at `off` (stride `s`) that no longer rule below (k, b) covers."""
    stack[0, 0] = off
    stack[0, 1] = s
    stack[0, 2] = k
    stack[0, 3] = b
    n = 1
    while n > 0:
        n -= 1
        off = stack[n, 0]
        s = stack[n, 1]
        k = stack[n, 2]
        b = stack[n, 3]
        if k == s:
            e = entries[off + b]
            if e < -1:  # a child node: its entries inherit the value, bar its own rules
                stack[n, 0] = (-2 - np.int64(e)) << NODE_BITS
                stack[n, 1] = NODE_BITS
                stack[n, 2] = 0
                stack[n, 3] = 0
                n += 1
            else:
                entries[off + b] = value
            continue
        first = 2 * off + (np.int64(2) << k) + 2 * b
        for j in range(2):
            if rules[first + j] == NO_ROUTE:
                stack[n, 0] = off
                stack[n, 1] = s
                stack[n, 2] = k + 1
                stack[n, 3] = 2 * b + j
                n += 1


@jit
def _new_node(entries, rules, used, free, state, value):
    """Pop a free node, every entry `value`, no rules; its id."""
    state[0] -= 1
    c = np.int64(free[state[0]])
    entries[c << NODE_BITS:(c + 1) << NODE_BITS] = value
    rules[2 * (c << NODE_BITS):2 * ((c + 1) << NODE_BITS)] = NO_ROUTE
    used[c] = 0
    return c


@jit
def _add(entries, rules, used, free, state, stack, stride, fib, p, l, nexthop, building):
    """Add or replace rule p/l -> nexthop in table `fib`. Returns the previous
    next hop (NO_ROUTE if new), or -2 if building and the rule exists.
    The caller guarantees (32 - stride) // 8 free nodes.

    A build adds its routes shortest first to empty tables, so no rule under
    the new one exists yet (nor any child node, which only a longer rule
    makes): its span of entries is filled directly, without walking the heap."""
    off = fib << stride
    s = stride
    d = 0
    while l > d + s:
        idx = (p >> (32 - d - s)) & ((np.int64(1) << s) - 1)
        e = np.int64(entries[off + idx])
        if e >= NO_ROUTE:  # a leaf: split it into a child node that inherits its value
            c = _new_node(entries, rules, used, free, state, e)
            entries[off + idx] = -2 - c
            if d > 0:
                used[off >> NODE_BITS] += 1
            e = -2 - c
        off = (-2 - e) << NODE_BITS
        d += s
        s = NODE_BITS
    k = l - d
    b = (p >> (32 - l)) & ((np.int64(1) << k) - 1)
    slot = 2 * off + (np.int64(1) << k) + b
    old = rules[slot]
    if old != NO_ROUTE and building:
        return -2
    rules[slot] = nexthop
    if old == NO_ROUTE and d > 0:
        used[off >> NODE_BITS] += 1
    if building:
        entries[off + (b << (s - k)):off + ((b + 1) << (s - k))] = nexthop
    elif old != nexthop:
        _push(entries, rules, stack, off, s, k, b, nexthop)
    return old


@jit
def add_batch(entries, rules, used, free, state, stride, fib_ids, prefixes, lengths, nexthops,
              start, building):
    """Add routes start.. in order (building: see _add). Returns (status,
    index): DONE, or where it stopped (NEED_NODES: grow, then resume there;
    DUPLICATE: that route)."""
    stack = np.empty((_STACK, 4), np.int64)
    need = (32 - stride) // NODE_BITS
    for i in range(start, prefixes.size):
        if state[0] < need:
            return NEED_NODES, i
        old = _add(entries, rules, used, free, state, stack, stride, np.int64(fib_ids[i]),
                   np.int64(prefixes[i]), np.int64(lengths[i]), nexthops[i], building)
        if old == -2:
            return DUPLICATE, i
    return DONE, prefixes.size


@jit
def find(entries, rules, stride, fib, p, l):
    """Next hop of rule p/l in table `fib`, or NO_ROUTE if there is no such rule."""
    off = fib << stride
    s = stride
    d = 0
    while l > d + s:
        e = np.int64(entries[off + ((p >> (32 - d - s)) & ((np.int64(1) << s) - 1))])
        if e >= NO_ROUTE:
            return NO_ROUTE
        off = (-2 - e) << NODE_BITS
        d += s
        s = NODE_BITS
    k = l - d
    return rules[2 * off + (np.int64(1) << k) + ((p >> (32 - l)) & ((np.int64(1) << k) - 1))]


@jit
def _remove(entries, rules, used, free, state, stack, stride, fib, p, l):
    """Remove rule p/l from table `fib`; its next hop, or NO_ROUTE (and no
    change) if absent. The entries it covered fall back to the longest rule
    covering it, and nodes left empty are folded into their parents."""
    parents = np.empty(4, np.int64)  # entry offset, in the parent, of each node crossed
    depth = 0
    off = fib << stride
    s = stride
    d = 0
    cover = NO_ROUTE
    while True:
        # rules of this node on p's path that are shorter than l (longest last)
        for k in range(min(s, l - d - 1) + 1):
            r = rules[2 * off + (np.int64(1) << k) + ((p >> (32 - d - k)) & ((np.int64(1) << k) - 1))]
            if r != NO_ROUTE:
                cover = r
        if l <= d + s:
            break
        at = off + ((p >> (32 - d - s)) & ((np.int64(1) << s) - 1))
        e = np.int64(entries[at])
        if e >= NO_ROUTE:
            return NO_ROUTE
        parents[depth] = at
        depth += 1
        off = (-2 - e) << NODE_BITS
        d += s
        s = NODE_BITS
    k = l - d
    b = (p >> (32 - l)) & ((np.int64(1) << k) - 1)
    slot = 2 * off + (np.int64(1) << k) + b
    old = rules[slot]
    if old == NO_ROUTE:
        return NO_ROUTE
    rules[slot] = NO_ROUTE
    _push(entries, rules, stack, off, s, k, b, cover)
    # Fold empty nodes: a node with no rule and no child holds one value, the
    # one it inherits, which its parent's entry can hold instead.
    while depth > 0:
        node = off >> NODE_BITS
        used[node] -= 1
        if used[node] > 0:
            break
        depth -= 1
        at = parents[depth]
        entries[at] = entries[off]
        free[state[0]] = node
        state[0] += 1
        off = (at >> NODE_BITS) << NODE_BITS  # the parent node (a root: loop ends, depth 0)
    return old


@jit
def remove_batch(entries, rules, used, free, state, stride, fib_ids, prefixes, lengths):
    """Remove routes in order, all or none: returns -1 when done, or the index
    of the first route that is absent (then nothing was removed). Routes in
    the batch must be distinct (the caller checks)."""
    for i in range(prefixes.size):
        if find(entries, rules, stride, np.int64(fib_ids[i]), np.int64(prefixes[i]),
                np.int64(lengths[i])) == NO_ROUTE:
            return i
    stack = np.empty((_STACK, 4), np.int64)
    for i in range(prefixes.size):
        _remove(entries, rules, used, free, state, stack, stride, np.int64(fib_ids[i]),
                np.int64(prefixes[i]), np.int64(lengths[i]))
    return -1


@jit
def add_one(entries, rules, used, free, state, stride, fib, p, l, nexthop):
    """_add for one route (the caller reserved the free nodes); the previous next hop."""
    stack = np.empty((_STACK, 4), np.int64)
    return _add(entries, rules, used, free, state, stack, stride, fib, p, l, nexthop, False)


@jit
def remove_one(entries, rules, used, free, state, stride, fib, p, l):
    """_remove for one route; its next hop, NO_ROUTE if absent."""
    stack = np.empty((_STACK, 4), np.int64)
    return _remove(entries, rules, used, free, state, stack, stride, fib, p, l)


@jit
def count_rules(entries, rules, stride, fib):
    """Number of rules of table `fib` (walks its nodes)."""
    return _rules(entries, rules, stride, fib, np.empty(0, np.uint32), np.empty(0, np.uint8),
                  np.empty(0, np.int32))


@jit
def collect_rules(entries, rules, stride, fib, prefixes, lengths, nexthops):
    """Write the rules of table `fib` into the arrays (sized by count_rules)."""
    return _rules(entries, rules, stride, fib, prefixes, lengths, nexthops)


@jit
def _rules(entries, rules, stride, fib, prefixes, lengths, nexthops):
    """Visit table `fib`'s nodes depth first; count its rules, and write them
    while the output arrays have room."""
    levels = 1 + (32 - stride) // NODE_BITS
    off = np.empty(levels, np.int64)     # the node being visited at each level
    above = np.empty(levels, np.int64)   # the address bits above it
    cursor = np.empty(levels, np.int64)  # its next entry to look at
    found = 0
    level = 0
    off[0] = fib << stride
    above[0] = 0
    cursor[0] = 0
    visit = True
    while level >= 0:
        s = stride if level == 0 else NODE_BITS
        d = 0 if level == 0 else stride + NODE_BITS * (level - 1)
        if visit:  # the node's own rules
            visit = False
            for k in range(s + 1):
                for b in range(np.int64(1) << k):
                    r = rules[2 * off[level] + (np.int64(1) << k) + b]
                    if r != NO_ROUTE:
                        if found < prefixes.size:
                            prefixes[found] = above[level] | (b << (32 - d - k))
                            lengths[found] = d + k
                            nexthops[found] = r
                        found += 1
        if cursor[level] == np.int64(1) << s:
            level -= 1
            continue
        idx = cursor[level]
        cursor[level] += 1
        e = np.int64(entries[off[level] + idx])
        if e < -1:
            off[level + 1] = (-2 - e) << NODE_BITS
            above[level + 1] = above[level] | (idx << (32 - d - s))
            cursor[level + 1] = 0
            level += 1
            visit = True
    return found
