"""kernels.lpm against the plain-Python reference: tables with /0 and /32,
nested and same-address prefixes, addresses at every prefix boundary, then
add/remove sequences compared after each step, for one table and for a set;
validation; a bounds-checked fuzz run."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import lpm
from kernels._jit import jit
from tests.reference import lpm as ref
from tests.util import run_with_boundscheck

MAX32 = 2**32 - 1
NEXTHOPS = st.one_of(st.integers(0, 20), st.just(2**31 - 1))
LENGTHS = st.one_of(st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32]), st.integers(0, 32))


@st.composite
def prefixes(draw, anchors):
    """A prefix near one of a few anchor addresses, so that prefixes nest,
    share an address at different lengths, and sit side by side."""
    addr = draw(st.sampled_from(anchors))
    if draw(st.booleans()):
        addr ^= 1 << draw(st.integers(0, 31))
    length = draw(LENGTHS)
    return addr & ref.mask(length), length


@st.composite
def tables(draw, anchors, max_routes=30):
    routes = {}
    for _ in range(draw(st.integers(0, max_routes))):
        routes[draw(prefixes(anchors))] = draw(NEXTHOPS)
    return [(p, n, h) for (p, n), h in routes.items()]


ANCHORS = st.lists(st.integers(0, MAX32), min_size=1, max_size=3).map(lambda a: a + [0, MAX32])


def arrays(routes):
    return (np.array([r[0] for r in routes], np.uint32), np.array([r[1] for r in routes], np.uint8),
            np.array([r[2] for r in routes], np.int32))


def probes(prefix_lengths, extra=()):
    """First and last address of each prefix and the ones just outside."""
    out = set(extra)
    for p, n in prefix_lengths:
        last = p | (~ref.mask(n) & MAX32)
        out.update(a for a in (p, last, p - 1, last + 1) if 0 <= a <= MAX32)
    return np.array(sorted(out), np.uint32)


def expect(table: ref.Table, addrs):
    return np.array([table.lookup(int(a)) for a in addrs], np.int32)


# -- one table ---------------------------------------------------------------

def test_examples():
    p, n, h = arrays([(0, 0, 1), (0x0A000000, 8, 2), (0x0A010000, 16, 3), (0x0A010203, 32, 4),
                      (0x0A010200, 24, 5), (0x0A010200, 25, 6)])
    addrs = np.array([0x01020304, 0x0A050505, 0x0A01FFFF, 0x0A010203, 0x0A010202, 0x0A0102FF,
                      0x0A010280], np.uint32)
    for stride in lpm.STRIDES:
        fib = lpm.build(p, n, h, stride=stride)
        assert lpm.lookup(fib, addrs).tolist() == [1, 2, 3, 4, 6, 5, 5]
        assert lpm.remove(fib, 0x0A010200, 25) == 6
        assert lpm.add(fib, 0x0A010200, 24, 7) == 5
        assert lpm.lookup(fib, addrs).tolist() == [1, 2, 3, 4, 7, 7, 7]


def test_empty_table_and_default_route():
    empty = np.array([], np.uint32), np.array([], np.uint8), np.array([], np.int32)
    fib = lpm.build(*empty, stride=8)
    addrs = np.array([0, 1, MAX32], np.uint32)
    assert lpm.lookup(fib, addrs).tolist() == [-1, -1, -1]
    lpm.add(fib, 0, 0, 5)
    assert lpm.lookup(fib, addrs).tolist() == [5, 5, 5]
    lpm.add(fib, MAX32, 32, 6)
    assert lpm.lookup(fib, addrs).tolist() == [5, 5, 6]
    assert lpm.lookup(fib, np.array([], np.uint32)).size == 0


@settings(max_examples=150)
@given(st.data(), st.sampled_from([8, 16]))
def test_lookup_matches_reference(data, stride):
    anchors = data.draw(ANCHORS)
    routes = data.draw(tables(anchors))
    table = ref.Table(routes)
    addrs = probes(table.routes, data.draw(st.lists(st.integers(0, MAX32), max_size=10)))
    fib = lpm.build(*arrays(routes), stride=stride)
    np.testing.assert_array_equal(lpm.lookup(fib, addrs), expect(table, addrs))
    assert list(zip(*(a.tolist() for a in lpm.routes(fib)))) == table.sorted_routes()


def ops(anchors, fib_count=1):
    """add (replace), remove of a route present (picked by an index) or of a
    prefix that may be absent, in some table."""
    fib = st.integers(0, fib_count - 1)
    kinds = st.sampled_from(["add", "add", "remove", "remove present"])
    return st.lists(st.tuples(kinds, fib, prefixes(anchors), NEXTHOPS), max_size=25)


def apply(fib, tables_ref, steps, check):
    """Run the steps on the kernel and the reference, checking after each."""
    count = len(tables_ref)
    for op, k, (p, n), h in steps:
        fib_id = k if count > 1 else None
        table = tables_ref[k]
        if op == "remove present" and table.routes:
            p, n = sorted(table.routes)[h % len(table.routes)]
        if op == "add":
            assert lpm.add(fib, p, n, h, fib_id=fib_id) == table.add(p, n, h)
        elif (p, n) in table.routes:
            assert lpm.remove(fib, p, n, fib_id=fib_id) == table.remove(p, n)
        else:
            with pytest.raises(KeyError):
                lpm.remove(fib, p, n, fib_id=fib_id)
        check()


def check_all_removed_frees_every_node(fib, tables_ref):
    for k, table in enumerate(tables_ref):
        for p, n in list(table.routes):
            lpm.remove(fib, p, n, fib_id=k if len(tables_ref) > 1 else None)
    assert fib.nodes_in_use == fib.root_nodes
    assert (fib.entries[:fib.root_nodes << 8] == -1).all()


@settings(max_examples=100)
@given(st.data(), st.sampled_from([8, 16]))
def test_updates_match_reference(data, stride):
    anchors = data.draw(ANCHORS)
    routes = data.draw(tables(anchors, max_routes=15))
    steps = data.draw(ops(anchors))
    table = ref.Table(routes)
    fib = lpm.build(*arrays(routes), stride=stride)
    addrs = probes(list(table.routes) + [s[2] for s in steps])

    def check():
        np.testing.assert_array_equal(lpm.lookup(fib, addrs), expect(table, addrs))

    apply(fib, [table], steps, check)
    assert list(zip(*(a.tolist() for a in lpm.routes(fib)))) == table.sorted_routes()
    check_all_removed_frees_every_node(fib, [table])


@settings(max_examples=6)
@given(st.data())
def test_dir_24_8_matches_reference(data):
    """The full-size first level (64 MiB): few examples, it is the same kernel."""
    anchors = data.draw(ANCHORS)
    routes = data.draw(tables(anchors, max_routes=20))
    steps = data.draw(ops(anchors))
    table = ref.Table(routes)
    fib = lpm.build(*arrays(routes))
    addrs = probes(list(table.routes) + [s[2] for s in steps])

    def check():
        np.testing.assert_array_equal(lpm.lookup(fib, addrs), expect(table, addrs))

    check()
    apply(fib, [table], steps, check)
    check_all_removed_frees_every_node(fib, [table])


@settings(max_examples=60)
@given(st.data(), st.sampled_from([8, 16]))
def test_batches_match_reference(data, stride):
    anchors = data.draw(ANCHORS)
    fib = lpm.build(*arrays(data.draw(tables(anchors))), stride=stride)
    table = ref.Table(zip(*(a.tolist() for a in lpm.routes(fib))))
    adds = data.draw(st.lists(st.tuples(prefixes(anchors), NEXTHOPS), max_size=20))
    lpm.add_batch(fib, *arrays([(p, n, h) for (p, n), h in adds]))
    for (p, n), h in adds:  # in order: a later duplicate wins
        table.add(p, n, h)
    gone = data.draw(st.lists(st.sampled_from(sorted(table.routes)), unique=True)) if table.routes else []
    lpm.remove_batch(fib, *arrays([(p, n, 0) for p, n in gone])[:2])
    for p, n in gone:
        table.remove(p, n)
    addrs = probes(table.routes | dict.fromkeys(gone))
    np.testing.assert_array_equal(lpm.lookup(fib, addrs), expect(table, addrs))


def test_pool_grows_and_shrinks_back():
    rng = np.random.default_rng(1)
    fib = lpm.build(np.array([0], np.uint32), np.array([0], np.uint8), np.array([9], np.int32), stride=8)
    hosts = np.unique(rng.integers(0, 2**32, 3000, dtype=np.uint32))
    nexthops = np.arange(hosts.size, dtype=np.int32)
    lpm.add_batch(fib, hosts, np.full(hosts.size, 32, np.uint8), nexthops)
    assert fib.nodes_in_use > 3000
    np.testing.assert_array_equal(lpm.lookup(fib, hosts), nexthops)
    np.testing.assert_array_equal(lpm.lookup(fib, hosts ^ np.uint32(1)), 9)
    lpm.remove_batch(fib, hosts, np.full(hosts.size, 32, np.uint8))
    assert fib.nodes_in_use == fib.root_nodes
    np.testing.assert_array_equal(lpm.lookup(fib, hosts), 9)


def test_build_1m_style_table_then_update():
    """A few thousand routes of Internet-like lengths in DIR-24-8, then churn."""
    rng = np.random.default_rng(2)
    lengths = rng.choice(np.array([8, 12, 16, 19, 20, 22, 24, 24, 24, 26, 32], np.uint8), 4000)
    prefixes = rng.integers(0, 2**32, 4000, dtype=np.uint32) & np.array(
        [ref.mask(int(n)) for n in lengths], np.uint32)
    keys = np.unique(prefixes.astype(np.uint64) << np.uint64(8) | lengths, return_index=True)[1]
    prefixes, lengths = prefixes[keys], lengths[keys]
    nexthops = rng.integers(0, 100, prefixes.size, dtype=np.int32)
    fib = lpm.build(prefixes, lengths, nexthops)
    table = ref.Table(zip(prefixes.tolist(), lengths.tolist(), nexthops.tolist()))
    addrs = np.concatenate([prefixes, prefixes - np.uint32(1), rng.integers(0, 2**32, 2000, dtype=np.uint32)])
    np.testing.assert_array_equal(lpm.lookup(fib, addrs), expect(table, addrs))
    lpm.remove_batch(fib, prefixes[::3], lengths[::3])
    for p, n in zip(prefixes[::3].tolist(), lengths[::3].tolist()):
        table.remove(p, n)
    np.testing.assert_array_equal(lpm.lookup(fib, addrs), expect(table, addrs))


# -- a set of tables -----------------------------------------------------------

@settings(max_examples=60)
@given(st.data(), st.integers(1, 4), st.sampled_from([8, 16]))
def test_set_matches_reference(data, count, stride):
    anchors = data.draw(ANCHORS)
    routes = [data.draw(tables(anchors, max_routes=12)) for _ in range(count)]
    steps = data.draw(ops(anchors, count))
    refs = [ref.Table(r) for r in routes]
    fib = lpm.build_many([arrays(r) for r in routes], stride=stride)
    seen = [pn for t in refs for pn in t.routes] + [s[2] for s in steps]
    addrs = probes(seen)
    fib_ids = np.repeat(np.arange(count, dtype=np.int32), addrs.size)
    pairs = np.tile(addrs, count)

    def check():
        want = np.concatenate([expect(t, addrs) for t in refs])
        np.testing.assert_array_equal(lpm.lookup_many(fib, fib_ids, pairs), want)

    check()
    apply(fib, refs, steps, check)
    for k, t in enumerate(refs):
        assert list(zip(*(a.tolist() for a in lpm.routes(fib, k)))) == t.sorted_routes()
    check_all_removed_frees_every_node(fib, refs)


def test_set_batches_name_tables():
    a = arrays([(0, 0, 1)])
    fib = lpm.build_many([a, a, a])
    p, n, h = arrays([(0x0A000000, 8, 5), (0x0A000000, 8, 6)])
    lpm.add_batch(fib, p, n, h, fib_ids=np.array([0, 2], np.int32))
    addr = np.full(3, 0x0A000001, np.uint32)
    ids = np.arange(3, dtype=np.int32)
    assert lpm.lookup_many(fib, ids, addr).tolist() == [5, 1, 6]
    with pytest.raises(KeyError, match="table 1"):
        lpm.remove_batch(fib, p, n, fib_ids=np.array([0, 1], np.int32))
    assert lpm.lookup_many(fib, ids, addr).tolist() == [5, 1, 6]  # nothing removed
    lpm.remove_batch(fib, p, n, fib_ids=np.array([2, 0], np.int32))
    assert lpm.lookup_many(fib, ids, addr).tolist() == [1, 1, 1]


def test_lookup_one_from_a_kernel():
    fib = lpm.build_many([arrays([(0, 0, 1)]), arrays([(0x0A000000, 8, 2)])])

    @jit
    def route_all(tables, fib_ids, addrs, out):
        for i in range(addrs.size):
            out[i] = lpm.lookup_one(tables, fib_ids[i], addrs[i])

    ids = np.array([0, 1, 1, 2, -1], np.int32)
    addrs = np.array([0x0A000001, 0x0A000001, 0x0B000001, 0x0A000001, 0x0A000001], np.uint32)
    out = np.empty(5, np.int32)
    route_all(fib.tables, ids, addrs, out)
    assert out.tolist() == [1, 2, -1, -1, -1]  # table 2 and -1 do not exist


# -- validation -------------------------------------------------------------------

def test_validation():
    p, n, h = arrays([(0x0A000000, 8, 1)])
    with pytest.raises(ValueError, match="prefixes: expected dtype uint32"):
        lpm.build(p.astype(np.int64), n, h)
    with pytest.raises(ValueError, match="lengths: expected dtype uint8"):
        lpm.build(p, n.astype(np.int32), h)
    with pytest.raises(ValueError, match="nexthops: expected a numpy array of int32"):
        lpm.build(p, n, [1])
    with pytest.raises(ValueError, match="same length"):
        lpm.build(p, n, np.array([1, 2], np.int32))
    with pytest.raises(ValueError, match="lengths: values must be in \\[0, 32\\], found 33"):
        lpm.build(p, np.array([33], np.uint8), h)
    with pytest.raises(ValueError, match="nexthops: values must be in"):
        lpm.build(p, n, np.array([-1], np.int32))
    with pytest.raises(ValueError, match=r"prefixes\[1\]: 10.0.0.1/8 has bits set past its length"):
        lpm.build(*arrays([(0, 0, 1), (0x0A000001, 8, 2)]))
    with pytest.raises(ValueError, match="duplicate route 10.0.0.0/8 at index 2"):
        lpm.build(*arrays([(0x0A000000, 8, 1), (0x0A000000, 16, 1), (0x0A000000, 8, 2)]), stride=8)
    with pytest.raises(ValueError, match=r"tables\[1\]: duplicate route 10.0.0.0/8 at index 2"):
        lpm.build_many([arrays([(0x0A000000, 8, 1)]),
                        arrays([(0x0A000000, 8, 1), (0, 0, 1), (0x0A000000, 8, 2)])])
    with pytest.raises(ValueError, match=r"tables\[0\]: lengths"):
        lpm.build_many([(p, np.array([40], np.uint8), h)])
    with pytest.raises(ValueError, match="expected 1 to 16777216 tables, got 0"):
        lpm.build_many([])
    with pytest.raises(ValueError, match="stride"):
        lpm.build(p, n, h, stride=12)


def test_update_and_lookup_validation():
    fib = lpm.build(*arrays([(0x0A000000, 8, 1)]), stride=8)
    many = lpm.build_many([arrays([]), arrays([])])
    with pytest.raises(ValueError, match="has bits set past its length"):
        lpm.add(fib, 0x0A000001, 8, 1)
    with pytest.raises(ValueError, match="has bits set past its length"):
        lpm.remove(fib, 0x0A000001, 8)
    with pytest.raises(ValueError, match="length: must be in"):
        lpm.add(fib, 0, 33, 1)
    with pytest.raises(ValueError, match="nexthop: must be in"):
        lpm.add(fib, 0, 0, -3)
    with pytest.raises(ValueError, match="prefix: expected an integer"):
        lpm.add(fib, "10.0.0.0", 8, 1)
    with pytest.raises(KeyError, match="no route 10.0.0.0/16"):
        lpm.remove(fib, 0x0A000000, 16)
    with pytest.raises(ValueError, match="fib_id: required"):
        lpm.add(many, 0, 0, 1)
    with pytest.raises(ValueError, match="fib_id: must be in"):
        lpm.add(many, 0, 0, 1, fib_id=2)
    with pytest.raises(ValueError, match="fib_id: must be in"):
        lpm.add(fib, 0, 0, 1, fib_id=1)
    with pytest.raises(ValueError, match="listed twice"):
        lpm.remove_batch(fib, *arrays([(0x0A000000, 8, 0), (0x0A000000, 8, 0)])[:2])
    with pytest.raises(ValueError, match="fib_ids: values must be in"):
        lpm.add_batch(many, *arrays([(0, 0, 1)]), fib_ids=np.array([5], np.int32))
    with pytest.raises(ValueError, match="fib_ids: required|fib_id: required"):
        lpm.add_batch(many, *arrays([(0, 0, 1)]))
    with pytest.raises(ValueError, match="addrs: expected dtype uint32"):
        lpm.lookup(fib, np.array([1], np.int64))
    with pytest.raises(ValueError, match="fib_id: required"):
        lpm.lookup(many, np.array([1], np.uint32))
    with pytest.raises(ValueError, match="fib_ids: values must be in"):
        lpm.lookup_many(many, np.array([2], np.int32), np.array([1], np.uint32))
    with pytest.raises(ValueError, match="same length"):
        lpm.lookup_many(many, np.array([0, 1], np.int32), np.array([1], np.uint32))
    with pytest.raises(ValueError, match="fib: expected a Fib"):
        lpm.lookup_many({}, np.array([0], np.int32), np.array([1], np.uint32))
    assert lpm.lookup(fib, np.array([0x0A0000FF], np.uint32)).tolist() == [1]  # unchanged by the errors


# -- bounds-checked fuzz ---------------------------------------------------------------

def test_fuzz_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import lpm
        from tests.reference import lpm as ref

        rng = np.random.default_rng(7)
        def table(size):
            lengths = rng.integers(0, 33, size).astype(np.uint8)
            anchors = rng.integers(0, 2**32, 4, dtype=np.uint32)
            prefixes = anchors[rng.integers(0, 4, size)] ^ (np.uint32(1) << rng.integers(0, 32, size).astype(np.uint32))
            prefixes &= np.array([ref.mask(int(n)) for n in lengths], np.uint32)
            keep = np.unique(prefixes.astype(np.uint64) << np.uint64(8) | lengths, return_index=True)[1]
            return prefixes[keep], lengths[keep], rng.integers(0, 50, keep.size).astype(np.int32)

        checked = 0
        for stride in (8, 16, 24, 8, 16, 8):
            parts = [table(int(rng.integers(0, 200))) for _ in range(3)]
            fib = lpm.build_many(parts, stride=stride)
            refs = [ref.Table(zip(*(a.tolist() for a in t))) for t in parts]
            for _ in range(300):
                k = int(rng.integers(0, 3))
                p, n, h = table(1)
                if rng.random() < 0.6:
                    lpm.add(fib, int(p[0]), int(n[0]), int(h[0]), fib_id=k)
                    refs[k].add(int(p[0]), int(n[0]), int(h[0]))
                elif refs[k].routes:
                    keys = sorted(refs[k].routes)
                    q, m = keys[int(rng.integers(0, len(keys)))]
                    lpm.remove(fib, q, m, fib_id=k)
                    refs[k].remove(q, m)
            ids = rng.integers(0, 3, 3000).astype(np.int32)
            addrs = rng.integers(0, 2**32, 3000, dtype=np.uint32)
            got = lpm.lookup_many(fib, ids, addrs)
            want = [refs[i].lookup(int(a)) for i, a in zip(ids.tolist(), addrs.tolist())]
            assert got.tolist() == want
            for k in range(3):
                assert list(zip(*(a.tolist() for a in lpm.routes(fib, k)))) == refs[k].sorted_routes()
                lpm.remove_batch(fib, *lpm.routes(fib, k)[:2], fib_ids=np.full(len(refs[k].routes), k, np.int32))
            assert fib.nodes_in_use == fib.root_nodes
            checked += 1
        one = lpm.build(*table(500), stride=8)
        lpm.lookup(one, rng.integers(0, 2**32, 1000, dtype=np.uint32))
        print("ok", checked)
    """, timeout=120)
    assert out.split() == ["ok", "6"]
