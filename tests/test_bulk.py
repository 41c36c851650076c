"""Bulk traffic (emu.bulk): same results as the interactive engine, real
load-balancing spreads, conntrack pressure, failures, determinism, captures
Wireshark accepts."""
from __future__ import annotations

import numpy as np
import pytest

from emu.bulk import Traffic, set_conntrack_max
from emu.cluster import Cluster
from emu.model import load
from emu.wire import ipv4
from kernels import conntrack as ct
from tests.tshark import problems

APP = """\
apiVersion: emu.dev/v1alpha1
kind: ClusterSettings
nodes: 2
{settings}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - {{name: http, containerPort: 8080, protocol: TCP}}
        - {{name: echo, containerPort: 9000, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http, protocol: TCP, nodePort: 30080}}
  - {{name: echo, port: 53, targetPort: echo, protocol: UDP, nodePort: 30053}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: node-1
  containers: [{{name: c, image: busybox}}]
"""


def cluster(tmp_path, replicas=2, settings="", seed=1, capture=True):
    path = tmp_path / f"app-{replicas}-{abs(hash(settings))}.yaml"
    path.write_text(APP.format(replicas=replicas, settings=settings))
    return Cluster(load([str(path)]), seed=seed, capture=capture)


def warm(c, target="web:53", proto="udp", client="default/client"):
    """Resolve ARP everywhere first: a burst of first packets would otherwise
    overflow the neighbour queue (unres_qlen 101) as it does on Linux."""
    Traffic(c, [client], target, protocol=proto, flows=40, packets=1, rate_pps=200_000).run()


def frames_by_interface(c):
    taps = c.engine.taps
    r = taps.records()
    buf, starts = taps.frames(r)
    out: dict[str, list] = {}
    for i in range(len(r["start"])):
        frame = buf[starts[i]:starts[i] + r["length"][i]].tobytes()
        out.setdefault(taps._names[int(r["port"][i])], []).append((int(r["time"][i]), frame))
    return {k: sorted(v) for k, v in out.items()}  # same-time frames: in byte order


def nat_entries(c):
    return {name: sorted(tuple(int(e[k]) for k in ("proto", "orig_src", "orig_dst", "orig_sport", "orig_dport",
                                                   "reply_src", "reply_dst", "reply_sport", "reply_dport"))
                         for e in n.ns.conntrack.entries())
            for name, n in c.fabric.nodes.items()}


def outer_ids(frames):
    """VXLAN frames' outer IPv4 id and header checksum blanked (bytes 18-19,
    24-25), and the outer ids seen, per interface."""
    blanked, ids = {}, {}
    for name, seen in frames.items():
        rows = []
        for t, f in seen:
            if len(f) > 64 and f[12:14] == b"\x08\x00" and f[23] == 17 and f[36:38] == (8472).to_bytes(2, "big"):
                ids.setdefault(name, []).append(f[18:20])
                f = f[:18] + bytes(2) + f[20:24] + bytes(2) + f[26:]
            rows.append((t, f))
        blanked[name] = sorted(rows)
    return blanked, {k: sorted(v) for k, v in ids.items()}


@pytest.mark.parametrize("flow_cache", [False, True])
@pytest.mark.parametrize("proto,target,client,flows", [
    ("tcp", "web:80", "default/client", 6),                 # pod -> ClusterIP -> pods on both nodes
    ("tcp", "nodeport:node-2:30080", "external", 6),        # NodePort with masquerade
    ("udp", "web:53", "default/client", 3),
])
def test_bulk_and_interactive_agree(tmp_path, proto, target, client, flows, flow_cache):
    runs = {}
    for mode in ("bulk", "interactive"):
        c = cluster(tmp_path)
        t = Traffic(c, [client], target, protocol=proto, flows=flows, packets=4, capture="full", engine=mode,
                    window_ns=1000, rate_pps=20_000, flow_cache=flow_cache)
        r = t.run()
        runs[mode] = (r, frames_by_interface(c), nat_entries(c))
    (rb, fb, nb), (ri, fi, ni) = runs["bulk"], runs["interactive"]
    assert rb.completed == ri.completed == flows and rb.broken == 0
    assert rb.backends == ri.backends and len(rb.backends) == 2       # same backends
    assert nb == ni                                                     # same NAT (conntrack tuples)
    assert rb.handed_off < rb.packets // 2                              # most packets took the fast path
    if not flow_cache or proto == "udp":
        assert rb.cached == 0
        assert fb == fi                                                 # same bytes on every wire, same times
    else:
        # The flow cache carries each flow's data along its program, ahead of
        # the other flows: the VXLAN outer IP ids (one counter per node) go
        # to concurrent flows' packets in another order. The same ids, every
        # other byte the same.
        assert rb.cached >= flows * 4
        assert fb != fi
        assert outer_ids(fb) == outer_ids(fi)


TUPLE = ["proto", "orig_src", "orig_dst", "orig_sport", "orig_dport", "zone"]


@pytest.mark.parametrize("settings,proto,target,client", [
    ("", "tcp", "web:80", "default/client"),                          # DNAT, VXLAN to node-2, local backend
    ("", "tcp", "nodeport:node-2:30080", "external"),                 # masquerade
    ("", "udp", "web:53", "default/client"),
    ("kubeProxyMode: ipvs\nipvsScheduler: mh", "tcp", "web:80", "default/client"),
])
def test_fused_first_packets_agree_with_interactive(tmp_path, monkeypatch, settings, proto, target, client):
    """Without capture the fast path fuses connections' first packets
    (kernels.netns_fast: conntrack inserts, kube-proxy's decisions, DNAT
    bindings, the outer VXLAN flows' entries), and the flow cache carries
    SYN-ACKs along other connections' paths (opening their outer flows): the
    same flows reach the same backends as through the interactive engine,
    with the same conntrack entries and counters and the same drops."""
    from emu.bulk.flowcache import FlowCache
    from kernels import netns_fast
    fused = {"new": 0, "outer": 0, "synacks": 0}
    pre, fwd = netns_fast.prerouting_apply, netns_fast.forward_apply

    def count_pre(table, conn, direction, new, *a, **k):
        fused["new"] += int(new.sum())
        return pre(table, conn, direction, new, *a, **k)

    def count_fwd(table, fw, *a, **k):
        fused["outer"] += int(fw.o_miss.sum())
        return fwd(table, fw, *a, **k)
    adopt = FlowCache.adopt

    def count_adopt(self, traffic, f):
        adopted, path = adopt(self, traffic, f)
        fused["synacks"] += int(adopted.sum())
        return adopted, path
    monkeypatch.setattr(netns_fast, "prerouting_apply", count_pre)
    monkeypatch.setattr(netns_fast, "forward_apply", count_fwd)
    monkeypatch.setattr(FlowCache, "adopt", count_adopt)
    runs = {}
    for mode in ("bulk", "interactive"):
        c = cluster(tmp_path, replicas=3, settings=settings, capture=False)
        warm(c, "web:80", "tcp", client)
        t = Traffic(c, [client], target, protocol=proto, flows=60, packets=2, rate_pps=2_000_000, engine=mode,
                    window_ns=1000)
        r = t.run()
        runs[mode] = (r, t, _tables(c)[0], {n: ct.stats(node.ns.conntrack.table) for n, node in c.fabric.nodes.items()})
    rb, ri = runs["bulk"][0], runs["interactive"][0]
    assert fused["new"] >= 30 and (fused["outer"] > 0 or target.startswith("nodeport"))  # not vacuous
    # (the NodePort flows from outside have no client program from their SYN when the SYN-ACK is due)
    assert fused["synacks"] >= 30 or proto == "udp" or target.startswith("nodeport")
    assert rb.completed == ri.completed == 60
    _same_outcome(runs["bulk"], runs["interactive"], window=1000)


def _same_outcome(bulk, interactive, window: int) -> None:
    """Bulk and interactive runs, each (report, traffic, conntrack records,
    statistics by node): each flow's backend, the drops, conntrack occupancy
    and statistics, the same connections field by field; their expiry times
    within the window (the fast path stamps a visit's packets at its latest
    time)."""
    (rb, tb, ctb, sb), (ri, ti, cti, si) = bulk, interactive
    assert rb.backends == ri.backends and np.array_equal(tb.srv_ns, ti.srv_ns)   # each flow's backend
    assert rb.drops == ri.drops and rb.conntrack == ri.conntrack and sb == si
    for node in ctb:
        a, b = (np.sort(x[(x["status"] & ct.IPS_CONFIRMED) != 0], order=TUPLE) for x in (ctb[node], cti[node]))
        assert len(a) == len(b) > 0
        for field in a.dtype.names:
            if field != "expires":
                assert np.array_equal(a[field], b[field]), (node, field)
        assert np.abs(a["expires"].astype(np.int64) - b["expires"].astype(np.int64)).max() <= window, node


def _tables(c):
    """Conntrack records of every node, FDB entries and clocks of every
    bridge, the nodes' IP id counters."""
    from emu.dataplane.bridge import Bridge
    from kernels import fdb as fdbk
    cts = {n: node.ns.conntrack.table.conns.copy() for n, node in c.fabric.nodes.items()}
    fdbs = {d.name: fdbk.entries(d.fdb) for d in c.engine.devices if isinstance(d, Bridge)}
    ids = {n: node.ns._ip_id for n, node in c.fabric.nodes.items()}
    return cts, fdbs, ids


@pytest.mark.parametrize("settings,client,target", [
    ("", "default/client", "web:80"),                                  # pods on both nodes, one local
    ("", "external", "nodeport:node-1:30080"),                        # masquerade, back through node-1
    ("kubeProxyMode: ipvs\nipvsScheduler: mh", "default/client", "web:80"),
])
def test_flow_cache_changes_nothing_but_time_resolution(tmp_path, settings, client, target):
    """The same run with and without the flow cache (emu.bulk.flowcache):
    same outcome, conntrack, FDB and IP id counters. Times of last use are
    the one difference: the fast path refreshes a visit's packets at the
    visit's latest time (conntrack) or the bridge's clock (FDB), the cache
    each packet at its own; so the cache's are earlier, by less than the
    window."""
    out = {}
    for flow_cache in (False, True):
        c = cluster(tmp_path, replicas=3, settings=settings, capture=False)
        warm(c, "web:80", "tcp")
        t = Traffic(c, [client], target, protocol="tcp", flows=150, packets=12, rate_pps=3_000_000,
                    flow_cache=flow_cache)
        r = t.run()
        assert c.engine.now >= t._last          # the clock moved on to the last delivery
        out[flow_cache] = (r, _tables(c), t, c.engine.now)
    (r0, (ct0, fdb0, ids0), t0, now0), (r1, (ct1, fdb1, ids1), t1, now1) = out[False], out[True]
    assert 0 <= now0 - now1 < 20_000          # (the fast path's last window ends a little later)
    assert r1.cached > r1.packets * 0.8 and r0.cached == 0
    for k in ("packets", "delivered", "flows", "completed", "broken", "backends", "drops", "conntrack",
              "latency_ns", "virtual_ns"):
        assert getattr(r0, k) == getattr(r1, k), k
    assert r0.completed == r0.flows
    assert np.array_equal(t0.echoes, t1.echoes) and np.array_equal(t0.c_got, t1.c_got)
    assert ids0 == ids1
    for name in fdb0:
        a, b = fdb0[name], fdb1[name]
        assert np.array_equal(a.mac, b.mac) and np.array_equal(a.port, b.port) and np.array_equal(a.local, b.local)
        late = a.updated - b.updated            # the fast path's bridge clamps a visit to its clock
        assert late.min() >= 0 and late.max() < 20_000, name            # Traffic's window: 20 us
    for node in ct0:   # the same connections (in slots the order of inserts gave them)
        a, b = (np.sort(x[(x["status"] & ct.IPS_CONFIRMED) != 0], order=TUPLE) for x in (ct0[node], ct1[node]))
        assert len(a) == len(b) > 0
        for field in a.dtype.names:
            if field != "expires":
                assert np.array_equal(a[field], b[field]), (node, field)
        late = a["expires"].astype(np.int64) - b["expires"].astype(np.int64)
        assert late.min() >= 0 and late.max() < 20_000, node


def test_flow_cache_learns_both_directions_of_short_connections(tmp_path):
    """One segment a connection: the client's program carries 4 packets (the
    handshake's ACK, the segment, FIN, last ACK), the server's 2 (ACK,
    FIN-ACK); both are learned, along the paths the other connections
    learned before them. The server's program also carries the SYN-ACK of
    every connection but one scout per path, taken from the scout
    (FlowCache.adopt). Same outcome with the cache and without."""
    out = {}
    for flow_cache in (False, True):
        c = cluster(tmp_path, capture=False)
        warm(c, "web:80", "tcp")
        t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=100, packets=1, flow_cache=flow_cache)
        out[flow_cache] = (t.run(), t)
    (r0, _), (r1, t1) = out[False], out[True]
    scouts = len(t1._scouts)
    assert scouts == len(r1.backends) == 2          # one per client path: per backend
    assert r1.cached == 100 * (4 + 2) + 100 - scouts and r0.cached == 0
    assert len(t1.fast.cache._paths) <= 2 * 2    # one per backend and direction
    for k in ("packets", "delivered", "completed", "broken", "backends", "drops", "conntrack"):
        assert getattr(r0, k) == getattr(r1, k), k


def test_synacks_follow_paths_whose_teachers_ended(tmp_path):
    """Connections one after the other (each ends before the next starts):
    the SYN-ACK plan a path's first connection made outlives it
    (FlowCache.learn_plans), so every later SYN-ACK on that path is
    carried; so is every SYN to a backend a SYN reached before (the SYN
    plans), but those of the first 40 flows: they reuse the source ports of
    the warm-up's 40 connections, in TIME_WAIT, and a SYN meeting its
    connection goes down the fast path (the NAT hooks may bind it anew).
    Same outcome as without the cache."""
    out = {}
    for flow_cache in (False, True):
        c = cluster(tmp_path, capture=False)
        warm(c, "web:80", "tcp")
        t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=200, packets=1, rate_pps=20_000,
                    flow_cache=flow_cache)
        out[flow_cache] = (t.run(), t)
    (r0, _), (r1, t1) = out[False], out[True]
    assert len(t1._scouts) == len(r1.backends) and t1.syns_carried == 200 - 40
    assert r1.cached == 200 * (4 + 2) + 200 - len(t1._scouts) + t1.syns_carried
    for k in ("packets", "delivered", "completed", "broken", "backends", "drops", "conntrack"):
        assert getattr(r0, k) == getattr(r1, k), k


def test_a_quiet_engine_hands_its_paths_to_the_next_run(tmp_path):
    """A burst of connections on an engine whose last bulk run found it quiet
    (no event since its cache was cleared: engine.bulk_legacy): the run starts
    with that run's paths and plans, so kube-proxy's pick is made ahead for
    every SYN and the flow cache carries them all at once (but the 40 that
    reuse the warm-up's source ports, in TIME_WAIT), with no scout. The same
    backends per flow, conntrack entries and statistics, and drops as through
    the interactive engine. Without that run (the first warm-up resolved
    ARP: events), or with kube-proxy's rules changed since, the burst's SYNs
    all take the fast path: a path no SYN showed may be cold."""
    runs = {}
    for mode in ("bulk", "interactive", "cold", "resynced"):
        c = cluster(tmp_path, replicas=3, capture=False)
        warm(c, "web:80", "tcp")            # resolves ARP: the engine is not quiet, nothing is handed on
        if mode != "cold":
            warm(c, "web:80", "tcp")        # finds it quiet: hands on its paths
        if mode == "resynced":
            c.scale("default", "web", 4)
        t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=300, packets=2,
                    engine="interactive" if mode == "interactive" else "bulk")
        r = t.run()
        runs[mode] = (r, t, _tables(c)[0], {n: ct.stats(node.ns.conntrack.table) for n, node in c.fabric.nodes.items()})
    (rb, tb, _, _), ri = runs["bulk"], runs["interactive"][0]
    assert tb.syns_carried == 300 - 40 and not tb._scouts and len(rb.backends) == 3
    assert rb.cached == 300 * 10 - 40            # every packet but those 40 SYNs: the SYN-ACKs' plans came too
    for mode in ("cold", "resynced"):
        r, t, _, _ = runs[mode]
        assert t.syns_carried == 0 and r.completed == 300, mode
    assert rb.completed == ri.completed == 300 and rb.broken == 0
    _same_outcome(runs["bulk"], runs["interactive"], window=20_000 - 1)   # less than Traffic's default window


def test_flow_cache_paths_too_long_stay_on_the_fast_path(tmp_path, monkeypatch):
    """A learner whose path needs more than MAX_ROWS rows (here 3) fails:
    no program, every packet on the fast path, the same outcome."""
    from emu.bulk import flowcache
    monkeypatch.setattr(flowcache, "MAX_ROWS", 3)
    c = cluster(tmp_path, capture=False)
    warm(c, "web:80", "tcp")
    t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=30, packets=4)
    r = t.run()
    assert r.cached == 0 and r.completed == 30 and not t.fast.cache.prog_len.any()
    assert (t.fast.cache._state == flowcache.FREE).all()   # every slot given back


def test_flow_cache_programs_are_dropped_when_tables_change(tmp_path):
    """An event during the run (a backend deleted by kube-proxy's sync, with
    the interactive engine's packets in between) drops every program: the
    flows learn again, and all see what the fast path alone would."""
    out = {}
    for flow_cache in (False, True):
        c = cluster(tmp_path, replicas=2, capture=False)
        warm(c, "web:80", "tcp")
        t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=120, packets=30, rate_pps=2_000_000,
                    flow_cache=flow_cache)
        t.at(c.engine.now + 1_500_000, lambda cl: cl.fail_node("node-2"))
        r = t.run()
        out[flow_cache] = (r, t)
    (r0, t0), (r1, t1) = out[False], out[True]
    assert r1.cached > 0 and r1.broken > 0
    for k in ("packets", "delivered", "completed", "broken", "backends", "drops"):
        assert getattr(r0, k) == getattr(r1, k), k
    assert np.array_equal(t0.broken, t1.broken) and np.array_equal(t0.srv_ns, t1.srv_ns)


def test_flow_cache_reclaims_ended_flows_programs(tmp_path, monkeypatch):
    """Programs of flows that ended are forgotten and their references
    reclaimed (here after 64 dead ones), while the rest keep running on
    theirs; and no more than MAX_REFS references are learned (here 4, one
    connection's on a VXLAN path: most flows stay on the fast path). The outcome is the fast path's either way."""
    from emu.bulk import flowcache
    monkeypatch.setattr(flowcache, "COMPACT_AFTER", 64)
    compactions = []
    real = flowcache.FlowCache._compact
    monkeypatch.setattr(flowcache.FlowCache, "_compact", lambda self: (compactions.append(self._n_refs), real(self)))
    out = {}
    for flow_cache, max_refs in ((False, 0), (True, 1 << 20), (True, 4)):
        monkeypatch.setattr(flowcache, "MAX_REFS", max_refs)
        c = cluster(tmp_path, replicas=3, capture=False)
        warm(c, "web:80", "tcp")
        t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=200, packets=8, rate_pps=400_000,
                    flow_cache=flow_cache)
        r = t.run()
        entries = {n: sorted(tuple(int(e[k]) for k in TUPLE + ["state", "status"]) for e in node.ns.conntrack.entries())
                   for n, node in c.fabric.nodes.items()}
        out[(flow_cache, max_refs)] = (r, entries, t.fast.cache)
    (r0, e0, _), (r1, e1, c1), (r2, e2, c2) = out.values()
    assert compactions and c1._n_refs < max(compactions)
    assert r1.cached > r2.cached > 0 and r2.cached < r1.cached / 2
    for r, e in ((r1, e1), (r2, e2)):
        for k in ("packets", "delivered", "completed", "broken", "backends", "drops"):
            assert getattr(r0, k) == getattr(r, k), k
        assert e == e0


def test_flow_cache_with_sampled_capture(tmp_path):
    """Every 3rd flow captured: its frames come from the cache's templates,
    byte for byte what the fast path writes (but the VXLAN outer ids: see
    test_bulk_and_interactive_agree), with the same comments."""
    got = {}
    for flow_cache in (False, True):
        c = cluster(tmp_path)
        warm(c, "web:80", "tcp")
        t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=30, packets=6, capture=3,
                    rate_pps=500_000, flow_cache=flow_cache)
        r = t.run()
        taps = c.engine.taps
        rec = taps.records()
        notes = sorted((int(rec["time"][i]), taps._names[int(rec["port"][i])], c.engine.notes[int(rec["note"][i])])
                       for i in range(len(rec["time"])))
        got[flow_cache] = (r, frames_by_interface(c), notes)
    (r0, f0, n0), (r1, f1, n1) = got[False], got[True]
    assert r1.cached > 0 and r0.completed == r1.completed == 30
    assert f0 != f1 and outer_ids(f0)[0] == outer_ids(f1)[0]   # (the uncaptured flows draw ids too)
    assert n0 == n1


def test_flow_cache_capture_templates_are_per_path(tmp_path):
    """Full capture: the cache's frames, handshake ACK and teardown too, come
    from templates shared by every flow of a path (client, backend, capture
    point, direction, kind of packet): as many for 60 flows as for 20. But
    at the client's eth0, where the delivery's comment names the flow's port."""
    from collections import Counter

    from scapy.layers import vxlan  # noqa: F401  (VXLAN frames dissected to their TCP)
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether
    counts = []
    for flows in (20, 60):
        c = cluster(tmp_path)
        warm(c, "web:80", "tcp")
        r = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=flows, packets=3, capture="full",
                    rate_pps=500_000).run()
        assert r.completed == flows and len(r.backends) == 2
        taps = c.engine.taps
        rec = taps.records()
        mine = {k: v[rec["tpl"] >= 0] for k, v in rec.items()}
        buf, starts = taps.frames(mine)
        flags = {str(Ether(buf[s:s + n].tobytes())[TCP].flags) for s, n in zip(starts, mine["length"])}
        assert flags == {"A", "PA", "FA"}
        assert len(mine["tpl"]) > 20 * flows
        per_port = Counter(taps._names[int(p)] for p in taps.tpl[::3, 2])
        assert per_port.pop("client/eth0") <= flows + 1
        counts.append(per_port)
    assert counts[0] == counts[1]


def test_chi_square_iptables_random(tmp_path):
    c = cluster(tmp_path, replicas=4, capture=False)
    warm(c)
    r = Traffic(c, ["default/client"], "web:53", protocol="udp", flows=800, packets=1).run()
    counts = np.array(list(r.backends.values()), float)
    assert len(counts) == 4 and counts.sum() == 800
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 16.27  # df = 3, p = 0.001


def test_ipvs_maglev_spread_and_disruption(tmp_path):
    c = cluster(tmp_path, replicas=4, settings="kubeProxyMode: ipvs\nipvsScheduler: mh", capture=False)
    kp = c.proxies["node-1"]
    client_ip = c.state.pods[("default", "client")].ip
    vip = c.state.services[("default", "web")].cluster_ip
    warm(c)
    t = Traffic(c, ["default/client"], "web:53", protocol="udp", flows=2000, packets=1)
    r = t.run()
    counts = np.array(list(r.backends.values()), float)
    assert len(counts) == 4 and counts.max() / counts.mean() < 1.15          # Maglev balance
    # every flow went where IPVS mh (Maglev over client address and port) sends it
    ip_of = {f"{k[0]}/{k[1]}": p.ip for k, p in c.state.pods.items()}
    want = [kp.decide(client_ip, "udp", vip, 53, src_port=int(p)).backend[0] for p in t.f_sport.tolist()]
    got = [t.srv_ip[f] for f in range(t.n)]
    assert [ipv4.ntoa(int(x)) for x in got] == want
    assert set(ip_of[b] for b in r.backends) == set(want)
    # a backend leaves: flows on the others stay where they were (Maglev's minimal disruption)
    before_ips = set(want)
    c.scale("default", "web", 3)
    (gone,) = before_ips - {p.ip for k, p in c.state.pods.items() if k[1].startswith("web-")}
    after = [kp.decide(client_ip, "udp", vip, 53, src_port=int(p)).backend[0] for p in t.f_sport.tolist()]
    stay = [a == b for a, b in zip(want, after) if b != gone and a != gone]
    assert gone not in after and np.mean(stay) > 0.9


def test_conntrack_full_drops_new_connections(tmp_path):
    c = cluster(tmp_path, capture=False)
    set_conntrack_max(c, 64)
    r = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=300, packets=1).run()
    full = [(d, n) for d, reason, n in r.drops if reason == "CT_TABLE_FULL"]
    assert full and sum(n for _, n in full) > 0
    assert r.conntrack["node-1"] == (64, 64)
    assert 0 < r.completed < 300 and r.broken > 0
    assert r.completed + r.broken == 300            # the SYNs dropped were sent again, then given up on
    assert ("conntrack node-1", "64 / 64") in r.rows()


@pytest.mark.parametrize("engine,flows", [("bulk", 300), ("interactive", 120)])
def test_cold_arp_burst_syns_are_retransmitted(tmp_path, engine, flows):
    """No warm-up: the first SYNs overflow the client's neighbour queue
    (unres_qlen 101, NEIGH_QUEUE_FULL); Linux sends them again after the
    initial RTO (1 s), by when ARP is resolved, so every flow completes."""
    c = cluster(tmp_path, capture=False)
    t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=flows, packets=2, engine=engine)
    r = t.run()
    lost = sum(n for _, reason, n in r.drops if reason == "NEIGH_QUEUE_FULL")
    assert lost > 0 and t.syn_sent == lost
    assert r.completed == flows and r.broken == 0 and r.completed + r.broken == r.flows
    assert r.packets == flows * (2 * 2 + 6) + lost
    assert 1e9 <= r.virtual_ns < 1.1e9                                    # the retries left at 1 s


def _backend_node(c, pod_name):
    ns, name = pod_name.split("/")
    return c.state.pods[(ns, name)].node


def test_node_failure_during_tcp_traffic(tmp_path):
    c = cluster(tmp_path, capture=False)
    warm(c, "web:80", "tcp")
    t = Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=200, packets=20, rate_pps=2_000_000)
    dead_node = "node-2"
    t.at(c.engine.now + 2_500_000, lambda cl: cl.fail_node(dead_node))
    r = t.run()
    dead_ns = {ns.id for key, ns in c.fabric.pods.items() if c.state.pods[key].node == dead_node}
    start = t._start_times()
    on_dead = np.isin(t.srv_ns, list(dead_ns))
    late = start > start[0] + 2_600_000
    assert t.broken[on_dead & (start < start[0] + 2_000_000)].any()          # established flows there break
    assert not on_dead[late].any() and t.done[late].all()                   # new flows go to the live backend
    assert any(reason == "LINK_DOWN" for _, reason, _ in r.drops)


@pytest.mark.parametrize("flush", [False, True])
def test_udp_blackhole_until_flushed(tmp_path, flush):
    c = cluster(tmp_path, capture=False)
    c.conntrack_cleanup = False   # kube-proxy's own reconcile off: the Traffic option decides
    warm(c)
    t = Traffic(c, ["default/client"], "web:53", protocol="udp", flows=40, packets=40, interval_ns=100_000,
                flush_udp=flush)
    t0 = c.engine.now
    t.at(t0 + 1_000_000, lambda cl: cl.fail_node("node-2"))
    r = t.run()
    dead_ip = {c.state.pods[k].ip for k in c.state.pods if c.state.pods[k].node == "node-2"
               and k[1].startswith("web-")}
    stale = [e for e in c.fabric.nodes["node-1"].ns.conntrack.entries()
             if e["proto"] == 17 and ipv4.ntoa(e["reply_src"]) in dead_ip]
    lost = 40 * 40 - int(t.echoes.sum())
    if flush:
        assert r.flushed > 0 and not stale
        assert t.moved > 0 and lost < 40 * 12                   # flows recover on the live backend
    else:
        assert stale and r.flushed == 0 and t.moved == 0
        assert lost > 40 * 12                                   # the blackhole: no answers until timeout


def test_same_seed_same_capture(tmp_path):
    outs = []
    for i in range(2):
        c = cluster(tmp_path, seed=7)
        Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=20, packets=3, capture=2).run()
        path = tmp_path / f"{i}.pcapng"
        c.engine.taps.write_pcapng(path, c.engine)
        outs.append(path.read_bytes())
    assert outs[0] == outs[1] and len(outs[0]) > 10_000


def test_full_capture_is_clean_for_wireshark(tmp_path):
    c = cluster(tmp_path)
    Traffic(c, ["default/client"], "web:80", protocol="tcp", flows=10, packets=3, capture="full").run()
    Traffic(c, ["external"], "nodeport:node-1:30053", protocol="udp", flows=10, packets=2, capture="full").run()
    path = tmp_path / "bulk.pcapng"
    assert c.engine.taps.write_pcapng(path, c.engine) > 500
    assert problems(path) == []


def test_interactive_packets_share_the_tables(tmp_path):
    """A packet sent the ordinary way during a bulk run meets the same conntrack."""
    from scapy.layers.inet import IP, UDP
    c = cluster(tmp_path, capture=False)
    client = c.pod("default", "client")
    ip = c.state.pods[("default", "client")].ip
    vip = c.state.services[("default", "web")].cluster_ip
    t = Traffic(c, ["default/client"], "web:53", protocol="udp", flows=50, packets=5)
    t.at(c.engine.now + 200_000, lambda cl: client.send_ip(
        cl.engine, bytes(IP(src=ip, dst=vip) / UDP(sport=33000 + 1, dport=53) / b"curl-ish"), note="interactive"))
    t.run()
    entries = c.fabric.nodes["node-1"].ns.conntrack.entries()
    sports = {e["orig_sport"] for e in entries if e["proto"] == 17}
    # sport 32769 is bulk flow 1's: the interactive datagram hit its connection (same tuple) and was DNATed alike
    assert 32769 in sports and 33001 in sports


def test_decider_equals_kube_proxy_per_packet(tmp_path):
    """emu.bulk.decide: a mixed batch (ClusterIP and NodePort flows from two
    sources, a destination no rule matches, UDP) decided at once equals
    KubeProxy.decide called once per packet in order."""
    from emu.bulk.decide import A_DNAT, _CODE, Decider
    c = cluster(tmp_path, replicas=3, capture=False)
    kp = c.proxies["node-1"]
    vip = ipv4.aton(c.state.services[("default", "web")].cluster_ip)
    node = ipv4.aton(c.state.nodes["node-1"].ip)
    client = ipv4.aton(c.state.pods[("default", "client")].ip)
    rng = np.random.default_rng(5)
    n = 400
    kind = rng.integers(0, 5, n)
    src = np.where(kind == 4, ipv4.aton("192.168.7.7"), client).astype(np.uint32)
    dst = np.select([kind == 2, kind == 3], [node, ipv4.aton("10.1.2.3")], vip).astype(np.uint32)
    dport = np.select([kind == 1, kind == 2], [53, 30080], 80).astype(np.uint16)
    proto = np.where(kind == 1, 17, 6).astype(np.uint8)
    sport = rng.integers(1024, 65536, n).astype(np.uint16)
    times = np.arange(n, dtype=np.int64) * 1000 + c.engine.now
    want_explain = rng.random(n) < 0.5
    d = Decider(kp)
    got = [d.decide(src[k:k + 100], proto[k:k + 100], dst[k:k + 100], dport[k:k + 100], sport[k:k + 100],
                    times[k:k + 100], "PREROUTING", want_explain[k:k + 100]) for k in range(0, n, 100)]
    for k in range(n):
        one = kp.decide(ipv4.ntoa(int(src[k])), int(proto[k]), ipv4.ntoa(int(dst[k])), int(dport[k]),
                        now_ns=int(times[k]), hook="PREROUTING", src_port=int(sport[k]))
        action, bip, bport, masq, explain = got[k // 100]
        j = k % 100
        assert int(action[j]) == _CODE[one.action] and bool(masq[j]) == one.masquerade
        if one.backend is not None:
            assert (ipv4.ntoa(int(bip[j])), int(bport[j])) == (one.backend[0], one.backend[1])
        if want_explain[k] and action[j] == A_DNAT:
            assert explain[j] == one.explain
    assert len({int(b) for a, b in zip(np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]))
                if a == A_DNAT}) == 3
