"""IPv4 longest-prefix match, in the two shapes emu needs.

1. One large table: a synthetic Internet table of 1M unique prefixes (seeded)
   with a DFZ-like length mix: 64% /24, 35% /16-/23, about 1%
   shorter than /16 and 0.2% longer than /24. Looked up with uniformly random
   addresses in DIR-24-8, against pytricia (a C Patricia trie, what a Python
   user would pick) on int keys, its fastest form.
2. A cluster: 5,000 node FIBs of about 5,000 routes each, built as a Flannel
   node's main table: a default route, the node network 172.18.0.0/16 and
   docker0 172.17.0.0/16 (connected), one /24 per node carved from the pod
   CIDR 10.0.0.0/8 (its own via cni0, the others via flannel.1, a next hop per
   node), 169.254.169.254/32 and three host routes in 192.168.0.0/16. Lookups
   are random (fib, address) pairs, the addresses 90% pod IPs of random nodes,
   5% node IPs, 5% uniformly random. Baseline: one Python dict per prefix
   length per FIB, longest first, over the first 200 FIBs (25M dict entries
   for all 5,000 would need several GiB; fewer, smaller dicts only flatter
   the baseline).

Rates are per lookup or per route update. The machine's 2 cores are shared,
so each emu entry also reports `cpu_rate`: the rate by this thread's CPU
time over one more call, which timesharing with other processes does not dilute.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from bench.conftest import size
from kernels import lpm

PREFIXES = size(1_000_000, 20_000)
LOOKUPS = size(10_000_000, 100_000)
BASELINE_LOOKUPS = size(300_000, 2_000)
UPDATES = size(10_000, 200)
NODES = size(5_000, 60)
BASELINE_FIBS = min(200, NODES)

# share of each prefix length in the synthetic Internet table; /24 takes the rest
SHARES = {8: 2e-5, 9: 3e-5, 10: 1e-4, 11: 3e-4, 12: 8e-4, 13: 1.5e-3, 14: 2.5e-3, 15: 4e-3,
          16: 0.013, 17: 0.008, 18: 0.014, 19: 0.027, 20: 0.04, 21: 0.045, 22: 0.11, 23: 0.09,
          25: 4e-4, 26: 4e-4, 27: 3e-4, 28: 3e-4, 29: 3e-4, 30: 2e-4, 31: 1e-4, 32: 3e-4}


def mask(length: int) -> np.uint32:
    return np.uint32(((1 << length) - 1) << (32 - length))


def internet_table(n: int, seed: int):
    """n unique prefixes in 1.0.0.0-223.255.255.255 with the SHARES length mix."""
    rng = np.random.default_rng(seed)
    counts = {length: round(share * n) for length, share in SHARES.items()}
    counts[24] = n - sum(counts.values())
    prefixes, lengths = [], []
    for length, count in sorted(counts.items()):
        got = np.empty(0, np.uint32)
        while got.size < count:
            drawn = rng.integers(1 << 24, 224 << 24, 2 * count + 16, dtype=np.uint32) & mask(length)
            got = np.unique(np.concatenate([got, drawn]))
        prefixes.append(rng.permutation(got)[:count])
        lengths.append(np.full(count, length, np.uint8))
    order = rng.permutation(n)
    prefixes, lengths = np.concatenate(prefixes)[order], np.concatenate(lengths)[order]
    return prefixes, lengths, rng.integers(0, 1 << 16, n, dtype=np.int32)


def node_fib(k: int, nodes: int, rng):
    """Node k's main table: see the module docstring. Next hops: 0 default
    gateway, 1 eth0, 2 docker0, 3 cni0, 4 + j flannel.1 via node j."""
    fixed = [(0, 0, 0), (172 << 24 | 18 << 16, 16, 1), (172 << 24 | 17 << 16, 16, 2),
             (169 << 24 | 254 << 16 | 169 << 8 | 254, 32, 0)]
    hosts = np.uint32(192 << 24 | 168 << 16) + rng.choice(1 << 16, 3, replace=False).astype(np.uint32)
    pods = np.uint32(10 << 24) + (np.arange(nodes, dtype=np.uint32) << np.uint32(8))
    nexthops = 4 + np.arange(nodes, dtype=np.int32)
    nexthops[k] = 3
    return (np.concatenate([np.array([r[0] for r in fixed], np.uint32), pods, hosts]),
            np.concatenate([np.array([r[1] for r in fixed], np.uint8), np.full(nodes, 24, np.uint8),
                            np.full(3, 32, np.uint8)]),
            np.concatenate([np.array([r[2] for r in fixed], np.int32), nexthops, np.zeros(3, np.int32)]))


def pod_traffic(m: int, fibs: int, seed: int):
    """(fib_ids, addrs): 90% pod IPs, 5% node IPs, 5% uniformly random."""
    rng = np.random.default_rng(seed)
    fib_ids = rng.integers(0, fibs, m).astype(np.int32)
    addrs = (np.uint32(10 << 24) + (rng.integers(0, NODES, m).astype(np.uint32) << np.uint32(8))
             + rng.integers(1, 255, m).astype(np.uint32))
    kind = rng.random(m)
    node_ips = kind >= 0.90
    addrs[node_ips] = np.uint32(172 << 24 | 18 << 16) + rng.integers(0, 1 << 16, node_ips.sum()).astype(np.uint32)
    anywhere = kind >= 0.95
    addrs[anywhere] = rng.integers(0, 2**32, anywhere.sum(), dtype=np.uint32)
    return fib_ids, addrs


def cpu_rate(fn, items: int) -> str:
    start = time.thread_time()
    fn()
    return f"{items / (time.thread_time() - start) / 1e6:.1f} M/s"


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def internet():
    routes = internet_table(PREFIXES, seed=1)
    return routes, lpm.build(*routes)


@pytest.fixture(scope="module")
def cluster():
    rng = np.random.default_rng(3)
    tables = [node_fib(k, NODES, rng) for k in range(NODES)]
    return tables, lpm.build_many(tables)


@pytest.fixture(scope="module")
def pytricia_table(internet):
    pytricia = pytest.importorskip("pytricia")
    (prefixes, lengths, nexthops), _ = internet
    tree = pytricia.PyTricia(32)
    for p, n, h in zip(prefixes.tolist(), lengths.tolist(), nexthops.tolist()):
        tree.insert(p, n, h)
    return tree


def dicts_per_length(tables):
    """For each FIB: [(netmask, {prefix: next hop})], longest prefix first."""
    out = []
    for prefixes, lengths, nexthops in tables:
        by_length = {}
        for p, n, h in zip(prefixes.tolist(), lengths.tolist(), nexthops.tolist()):
            by_length.setdefault(n, {})[p] = h
        out.append([(int(mask(n)), by_length[n]) for n in sorted(by_length, reverse=True)])
    return out


def dict_lookups(fibs, fib_ids, addrs):
    out = []
    for f, a in zip(fib_ids, addrs):
        for netmask, routes in fibs[f]:
            h = routes.get(a & netmask)
            if h is not None:
                break
        else:
            h = -1
        out.append(h)
    return out


# -- one large table -------------------------------------------------------------------

BIG = f"lpm {PREFIXES // 1000}k-prefix table"


def test_big_lookup_emu(benchmark, record, internet):
    _, fib = internet
    addrs = np.random.default_rng(5).integers(0, 2**32, LOOKUPS, dtype=np.uint32)
    lpm.lookup(fib, addrs[:16])
    record(f"{BIG}: lookup", "emu", LOOKUPS, "lookups", target_rate=60e6, target_ratio=100,
           memory=mib(fib.nbytes), lookup_arrays=mib(fib.entries.nbytes),
           cpu_rate=cpu_rate(lambda: lpm.lookup(fib, addrs), LOOKUPS))
    benchmark(lpm.lookup, fib, addrs)


def test_big_lookup_pytricia(benchmark, record, internet, pytricia_table):
    _, fib = internet
    addrs = np.random.default_rng(6).integers(0, 2**32, BASELINE_LOOKUPS, dtype=np.uint32)
    keys = addrs.tolist()
    get = pytricia_table.get
    record(f"{BIG}: lookup", "baseline", BASELINE_LOOKUPS, "lookups", library="pytricia")
    got = benchmark.pedantic(lambda: [get(a, -1) for a in keys], rounds=3, iterations=1)
    assert got == lpm.lookup(fib, addrs).tolist()


def test_big_build_emu(benchmark, record, internet):
    routes, fib = internet
    record(f"{BIG}: build", "emu", PREFIXES, "routes", memory=mib(fib.nbytes),
           nodes=fib.nodes_in_use - fib.root_nodes)
    benchmark.pedantic(lpm.build, args=routes, rounds=3, iterations=1)


def test_big_build_pytricia(benchmark, record, internet):
    pytricia = pytest.importorskip("pytricia")
    rows = list(zip(*(a.tolist() for a in internet[0])))

    def build():
        tree = pytricia.PyTricia(32)
        for p, n, h in rows:
            tree.insert(p, n, h)
        return tree

    record(f"{BIG}: build", "baseline", PREFIXES, "routes", library="pytricia")
    benchmark.pedantic(build, rounds=1, iterations=1)


def new_routes(internet):
    """UPDATES routes that the table does not hold (same length mix)."""
    (prefixes, lengths, _), _ = internet
    p, n, h = internet_table(4 * UPDATES, seed=11)
    held = np.isin(p.astype(np.uint64) << np.uint64(8) | n, prefixes.astype(np.uint64) << np.uint64(8) | lengths)
    return p[~held][:UPDATES], n[~held][:UPDATES], h[~held][:UPDATES]


def test_big_update_emu(benchmark, record, internet):
    _, fib = internet
    p, n, h = new_routes(internet)

    def churn():
        lpm.add_batch(fib, p, n, h)
        lpm.remove_batch(fib, p, n)

    churn()
    record(f"{BIG}: add+remove", "emu", 2 * p.size, "updates", batch=p.size,
           cpu_rate=cpu_rate(churn, 2 * p.size))
    benchmark(churn)


def test_big_update_emu_one_call_each(benchmark, record, internet):
    _, fib = internet
    rows = list(zip(*(a.tolist() for a in new_routes(internet))))[:1000]

    def churn():
        for p, n, h in rows:
            lpm.add(fib, p, n, h)
        for p, n, _ in rows:
            lpm.remove(fib, p, n)

    churn()
    record(f"{BIG}: add+remove", "emu", 2 * len(rows), "updates", api="add()/remove() per route")
    benchmark(churn)


def test_big_update_pytricia(benchmark, record, internet, pytricia_table):
    import ipaddress

    rows = list(zip(*(a.tolist() for a in new_routes(internet))))
    names = [str(ipaddress.IPv4Network((p, n))) for p, n, _ in rows]

    def churn():
        for p, n, h in rows:
            pytricia_table.insert(p, n, h)
        for name in names:
            pytricia_table.delete(name)

    record(f"{BIG}: add+remove", "baseline", 2 * len(rows), "updates", library="pytricia")
    benchmark.pedantic(churn, rounds=3, iterations=1)


# -- one FIB per node ---------------------------------------------------------------------

SET = f"lpm {NODES} FIBs x {NODES + 7} routes"


def test_set_lookup_emu(benchmark, record, cluster):
    _, fibs = cluster
    fib_ids, addrs = pod_traffic(LOOKUPS, NODES, seed=8)
    lpm.lookup_many(fibs, fib_ids[:16], addrs[:16])
    record(f"{SET}: lookup", "emu", LOOKUPS, "lookups", target_rate=20e6,
           memory=mib(fibs.nbytes), memory_target=f"<= 1024 MiB {'ok' if fibs.nbytes <= 2**30 else 'MISSED'}",
           lookup_arrays=mib(fibs.entries.nbytes),
           cpu_rate=cpu_rate(lambda: lpm.lookup_many(fibs, fib_ids, addrs), LOOKUPS))
    benchmark(lpm.lookup_many, fibs, fib_ids, addrs)


def test_set_lookup_dicts(benchmark, record, cluster):
    tables, fibs = cluster
    fib_ids, addrs = pod_traffic(BASELINE_LOOKUPS, BASELINE_FIBS, seed=9)
    dicts = dicts_per_length(tables[:BASELINE_FIBS])
    ids, keys = fib_ids.tolist(), addrs.tolist()
    record(f"{SET}: lookup", "baseline", BASELINE_LOOKUPS, "lookups",
           baseline=f"dict per length, {BASELINE_FIBS} FIBs")
    got = benchmark.pedantic(dict_lookups, args=(dicts, ids, keys), rounds=3, iterations=1)
    assert got == lpm.lookup_many(fibs, fib_ids, addrs).tolist()


def test_set_build_emu(benchmark, record, cluster):
    tables, fibs = cluster
    record(f"{SET}: build", "emu", sum(t[0].size for t in tables), "routes", memory=mib(fibs.nbytes),
           nodes=fibs.nodes_in_use)
    benchmark.pedantic(lpm.build_many, args=(tables,), rounds=1, iterations=1)


def node_joins():
    """A new node's pod CIDR, added to every FIB then removed (the node leaves)."""
    cidr = np.uint32(10 << 24) + np.uint32(NODES << 8)
    return cidr, 4 + NODES


def test_set_update_emu(benchmark, record, cluster):
    _, fibs = cluster
    cidr, nexthop = node_joins()
    ids = np.arange(NODES, dtype=np.int32)
    p, n, h = np.full(NODES, cidr, np.uint32), np.full(NODES, 24, np.uint8), np.full(NODES, nexthop, np.int32)

    def churn():
        lpm.add_batch(fibs, p, n, h, fib_ids=ids)
        lpm.remove_batch(fibs, p, n, fib_ids=ids)

    churn()
    record(f"{SET}: node joins+leaves", "emu", 2 * NODES, "updates", batch="one /24 in every FIB",
           cpu_rate=cpu_rate(churn, 2 * NODES))
    benchmark(churn)


def test_set_update_dicts(benchmark, record, cluster):
    tables, _ = cluster
    dicts = dicts_per_length(tables[:BASELINE_FIBS])
    cidr, nexthop = node_joins()
    cidr, slash24 = int(cidr), int(mask(24))

    def churn():
        for fib in dicts:
            for netmask, routes in fib:
                if netmask == slash24:
                    routes[cidr] = nexthop
        for fib in dicts:
            for netmask, routes in fib:
                if netmask == slash24:
                    del routes[cidr]

    record(f"{SET}: node joins+leaves", "baseline", 2 * BASELINE_FIBS, "updates",
           baseline=f"dict per length, {BASELINE_FIBS} FIBs")
    benchmark.pedantic(churn, rounds=5, iterations=1)
