"""The fast path: the common case of every device, on whole batches, over
the devices' own tables; everything else handed to the devices themselves.

A batch holds packets in a flat byte buffer (headroom in front of each, as
the engine's Pool) with metadata columns. Packets move device to device as
in the engine: a device takes everything that arrived before the end of the
current window, in (time, sequence) order, and transmits on ports; links add
their latency and a down link drops (LINK_DOWN). For each device kind the
fast version does what the interactive device does for an ordinary TCP/UDP
packet, with the same tables and in the same order:

- Netns (emu.dataplane.netns): parse, L2 accept, PREROUTING (conntrack
  lookup/insert and state step, kube-proxy's decision for NEW connections,
  DNAT), local delivery (INPUT, VXLAN decap, a bulk endpoint) or forward
  (FIB lookup, TTL, POSTROUTING with masquerade), neighbour lookup, MACs,
  VXLAN encap (FDB, udp_flow_src_port, the namespace's IP id counter, the
  outer packet's OUTPUT hook: conntrack, kube-proxy, NAT), transmit.
- Bridge (emu.dataplane.bridge): FDB learn + forward to a known unicast port
  or to the host, br_netfilter hooks on bridged IPv4.
- LoadBalancer: Maglev pick, TTL, MACs.

Whatever is not that common case goes to the interactive device at the same
point, as an ordinary packet in the engine's Pool: ARP and neighbour misses
(the packet waits in the neighbour queue as it would), ICMP and errors
(no route, TTL, too big, REJECT), floods, unknown hooks, local delivery to
anything but a bulk endpoint, IP fragments. The engine then carries it on.

Learning (emu.bulk.flowcache): packets marked in `Batch.learn` log what
they do that differs from packet to packet (links, conntrack entries, FDB
entries, VXLAN encapsulations, capture points, delivery), or that they left
the common case; the flow cache makes programs of them.

Drops are counted in the engine's per-device counters (engine.drops), so
`engine.drop_summary()` covers both paths. Capture: packets whose `cap` is
set are recorded by the engine's taps on tapped ports (tx when sent, rx when
received, with the receiving device's decision as the comment), as the
engine does. The hop log (engine.trace) does not see fast-path packets.
"""
from __future__ import annotations

import numpy as np

from emu.bulk.decide import A_DNAT, A_DROP, A_REJECT, Decider
from emu.bulk.flowcache import OP_FAIL
from emu.control.kubeproxy import MASQ_MARK
from emu.control.proxier import Proxier
from emu.dataplane.bridge import Bridge
from emu.dataplane.conntrack import CTINFO_NAMES, NEW
from emu.dataplane.loadbalancer import LoadBalancer
from emu.dataplane.nat import Nat
from emu.dataplane.netns import Netns
from emu.wire import ipv4
from kernels import conntrack as ct
from kernels import fdb as fdbk
from kernels import flow, hashing, lpm, maglev, netns_fast, parse, program, rewrite
from kernels.replay import OP_CAP, OP_CT, OP_DELIVER, OP_ENCAP, OP_FDB_FWD, OP_FDB_LEARN, OP_LINK
from kernels.drop import Drop

HEADROOM = 128
_SKIP = object()


class Batch:
    """The fast path's packets: bytes (fixed stride, headroom in front) and
    columns, by index; indices are allocated and released as packets come
    and go (as the engine's Pool does with slots)."""

    COLUMNS = {"start": np.int64, "length": np.int64, "flow": np.int64, "step": np.int32,
               "pkt_id": np.int64, "fhash": np.uint32, "mark": np.uint32, "ct": np.int32,
               "ctinfo": np.uint8, "sent": np.int64, "cap": np.bool_, "dnat_ip": np.uint32,
               "dnat_port": np.uint16, "has_dnat": np.bool_, "learn": np.int32}

    def __init__(self, max_frame: int, capacity: int = 1024):
        self.stride = -(-(HEADROOM + max_frame + 64) // 64) * 64
        self.capacity = 0
        self.buf = np.zeros(0, np.uint8)
        for name, dtype in self.COLUMNS.items():
            setattr(self, name, np.zeros(0, dtype))
        self._free = np.zeros(0, np.int64)
        self._nfree = 0
        self.said: dict[int, str] = {}   # captured packets: what NAT said at the current namespace
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        buf = np.zeros(capacity * self.stride, np.uint8)
        buf[:len(self.buf)] = self.buf
        self.buf = buf
        for name, dtype in self.COLUMNS.items():
            col = np.zeros(capacity, dtype)
            col[:old] = getattr(self, name)
            setattr(self, name, col)
        free = np.empty(capacity, np.int64)
        free[:self._nfree] = self._free[:self._nfree]
        new = np.arange(capacity - 1, old - 1, -1, dtype=np.int64)
        free[self._nfree:self._nfree + len(new)] = new
        self._free, self._nfree = free, self._nfree + len(new)
        self.capacity = capacity

    def alloc(self, n: int) -> np.ndarray:
        if n > self._nfree:
            self._grow(max(2 * self.capacity, self.capacity + n - self._nfree))
        idx = self._free[self._nfree - n:self._nfree][::-1].copy()
        self._nfree -= n
        self.start[idx] = idx * self.stride + HEADROOM
        self.length[idx] = 0
        self.flow[idx] = -1
        self.fhash[idx] = 0
        self.mark[idx] = 0
        self.ct[idx] = -1
        self.ctinfo[idx] = 0
        self.has_dnat[idx] = False
        self.learn[idx] = -1
        return idx

    def release(self, idx) -> None:
        idx = np.asarray(idx, np.int64)
        if self.said:  # what NAT said about a packet goes with it
            for i in idx[np.isin(idx, np.fromiter(self.said.keys(), np.int64, len(self.said)))].tolist():
                del self.said[i]
        self._free[self._nfree:self._nfree + len(idx)] = idx[::-1]
        self._nfree += len(idx)

    @property
    def in_use(self) -> int:
        return self.capacity - self._nfree


class FastPath:
    """Runs batches through an engine's devices; `endpoints` receives deliveries."""

    def __init__(self, engine, endpoints, max_frame: int, window_ns: int | None = None):
        self.engine = engine
        self.endpoints = endpoints   # has deliver(batch, idx, ns, times) and owns(ns, proto, port) -> bool
        self.window = window_ns
        self._deciders: dict[int, Decider] = {}
        self._notes: dict[tuple, int] = {}
        self._codes: dict[str, int] = {}
        self._texts: list[str] = []
        self.handed_off = 0
        self.batch = Batch(max_frame)
        self._work: dict[int, list] = {}
        self._seq = 0
        self._maps: dict = {}
        self._note_tables: dict = {}
        self.cache = None   # emu.bulk.flowcache.FlowCache: learners log what they do

    # -- bookkeeping -------------------------------------------------------------
    def note(self, key, make) -> int:
        i = self._notes.get(key)
        if i is None:
            i = self._notes[key] = self.engine.note(make())
        return i

    def code(self, text: str) -> int:
        """A small int for a first-hop note text (interned)."""
        c = self._codes.get(text)
        if c is None:
            c = self._codes[text] = len(self._texts)
            self._texts.append(text)
        return c

    def _dense_notes(self, table, keys, make) -> np.ndarray:
        """Note ids for small non-negative int keys, through a dense array per
        `table` (the same ids as self.note(key...) would give: make(u) is asked
        once per key)."""
        keys = np.asarray(keys, np.int64)
        if not len(keys):
            return np.zeros(0, np.int32)
        top = int(keys.max())
        tab = self._note_tables.get(table)
        if tab is None or top >= len(tab):
            new = np.full(max(top + 1, 2 * len(tab) if tab is not None else 64), -1, np.int32)
            if tab is not None:
                new[:len(tab)] = tab
            tab = self._note_tables[table] = new
        ids = tab[keys]
        miss = ids < 0
        if miss.any():
            for u in np.unique(keys[miss]).tolist():
                tab[u] = make(u)
            ids = tab[keys]
        return ids

    def _route_notes(self, ns, routes, forwarded, ctinfo) -> np.ndarray:
        key = routes.astype(np.int64) * 8 + ctinfo.astype(np.int64)
        return self._dense_notes(("route", ns.name, forwarded), key, lambda u: self.note(
            ("route", ns.name, u // 8, forwarded, u % 8),
            lambda: ns._with_ct(f"{ns.name}: {'forward' if forwarded else 'send'} "
                                f"via route {ns.routes[u // 8].text(ns)}", u % 8)))

    def _first_notes(self, ns, codes, ctinfo) -> np.ndarray:
        key = codes.astype(np.int64) * 8 + ctinfo.astype(np.int64)
        return self._dense_notes(("first", ns.name), key, lambda u: self.note(
            ("first", ns.name, u), lambda: ns._with_ct(self._texts[u // 8], u % 8)))

    def _neighbours(self, ns, out_if, nexthop):
        """MAC and resolved flag per (interface, next hop)."""
        key = (out_if.astype(np.uint64) << np.uint64(32)) | nexthop.astype(np.uint64)
        uniq, inv = _inverse(key)
        macs = np.zeros(len(uniq), np.uint64)
        ok = np.zeros(len(uniq), bool)
        for j, u in enumerate(uniq.tolist()):
            e = ns.neigh.get((u >> 32, u & 0xFFFFFFFF))
            if e is not None and e.state in ("REACHABLE", "PERMANENT"):
                macs[j], ok[j] = e.mac, True
        inv = inv.reshape(-1)
        return macs[inv], ok[inv]

    def _push(self, dev_id: int, ports, idx, times) -> None:
        n = len(idx)
        if not n:
            return
        seqs = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        self._work.setdefault(dev_id, []).append((np.asarray(ports, np.int32), idx, times, seqs))

    def _log(self, idx, kind, *cols, fp=0) -> None:
        if self.cache is not None and len(idx):
            self.cache.log(self.batch, idx, kind, *cols, fp=fp)

    def _log_ct(self, ns, idx, conn, direction) -> None:
        if self.cache is not None and len(idx):
            has = conn >= 0
            self._log(idx[~has], OP_FAIL)
            learn = has & (self.batch.learn[idx] >= 0)
            if learn.any():
                c = conn[learn]
                self._log(idx[learn], OP_CT, self.cache.ct_table(ns), c, direction[learn],
                          fp=program.fingerprints(ns.conntrack.table.conns, c))

    def _log_fdb(self, br, idx, src, ingress, dst, out) -> None:
        """br_fdb_update of the source, then the destination's entry (out -1: the bridge's own)."""
        if self.cache is None:
            return
        k = self.cache.fdb(br)
        self._log(idx, OP_FDB_LEARN, k, src, ingress)
        self._log(idx, OP_FDB_FWD, k, dst, out)

    def drop(self, device, idx, reasons, times=None) -> None:
        if len(idx):
            self._log(idx, OP_FAIL)
            reasons = np.broadcast_to(np.asarray(reasons, np.uint8), (len(idx),))
            np.add.at(self.engine.drops[device.id], reasons, 1)
            self.endpoints.dropped(self.batch, idx)
            self.batch.release(idx)

    def to_pool(self, idx) -> np.ndarray:
        """Hand packets to the interactive engine: copies in its Pool (same
        packet ids, flow hash, mark and conntrack reference)."""
        b, pool = self.batch, self.engine.pool
        idx = np.asarray(idx, np.int64)
        self._log(idx, OP_FAIL)
        slots = pool.alloc(len(idx))
        rewrite.copy_ranges(b.buf, b.start[idx], b.length[idx], pool.buf, pool.start[slots])
        pool.length[slots] = b.length[idx]
        pool.pkt_id[slots] = b.pkt_id[idx]
        pool.flow_hash[slots] = b.fhash[idx]
        pool.mark[slots] = b.mark[idx]
        pool.ct[slots] = b.ct[idx]
        pool.ctinfo[slots] = b.ctinfo[idx]
        self.handed_off += len(idx)
        self.endpoints.handed_off(b, idx)
        b.release(idx)
        return slots

    # -- capture -------------------------------------------------------------------
    def _record(self, ports, idx, times, notes):
        taps = self.engine.taps
        if taps is None or not len(idx):
            return None
        b = self.batch
        ports = np.broadcast_to(np.asarray(ports, np.int32), (len(idx),))
        sel = np.nonzero(b.cap[idx] & taps._is_tapped(self.engine, ports))[0]
        if not len(sel):
            return None
        i = idx[sel]
        rec = taps.record_frames(b.buf, b.start[i], b.length[i], ports[sel], np.asarray(times)[sel],
                                 b.pkt_id[i], None if notes is None else
                                 np.broadcast_to(np.asarray(notes, np.int32), (len(idx),))[sel])
        self._log(i, OP_CAP, rec)
        return rec, sel

    def _set_notes(self, rec, notes) -> None:
        if rec is not None:
            self.engine.taps.set_notes(np.stack([rec[0], np.arange(len(rec[1]))]), np.asarray(notes)[rec[1]])

    # -- links -----------------------------------------------------------------------
    def transmit(self, device, port: int, idx, times, notes) -> None:
        """Send packets out of one port: the link's latency, or LINK_DOWN."""
        if not len(idx):
            return
        self._record(port, idx, times, notes)
        b = self.batch
        b.mark[idx] = 0
        b.ct[idx] = -1
        b.ctinfo[idx] = 0
        peer, latency, device_of, up = self.engine._arrays()
        dst = int(peer[port])
        if dst < 0 or not up[port] or not up[dst]:
            self.drop(device, idx, Drop.LINK_DOWN)
            return
        self._log(idx, OP_LINK, port)
        self._push(int(device_of[dst]), np.full(len(idx), dst, np.int32), idx, times + latency[port])

    def observe(self, port, idx, times, notes) -> None:
        self._record(port, idx, times, notes)

    # -- running -----------------------------------------------------------------------
    def send(self, idx_by_ns: dict, times_by_ns: dict) -> None:
        """Queue packets (already in self.batch) to be sent by namespaces (locally generated)."""
        for ns_id, idx in idx_by_ns.items():
            self._push(ns_id, np.full(len(idx), -1, np.int32), idx, times_by_ns[ns_id])

    def next_time(self):
        ts = [min(int(t.min()) for _, _, t, _ in items) for items in self._work.values() if items]
        return min(ts) if ts else None

    def run(self, until: int | None = None) -> None:
        """Process queued packets that arrive before `until` (all when None),
        device by device, earliest first, as the engine does."""
        while True:
            best = None
            for dev, items in self._work.items():
                if not items:
                    continue
                t = min(int(x[2].min()) for x in items)
                if (until is None or t < until) and (best is None or t < best[0]):
                    best = (t, dev)
            if best is None:
                return
            end = until
            if self.window:
                end = best[0] + self.window if end is None else min(end, best[0] + self.window)
            self._visit(best[1], end)

    def _visit(self, dev_id: int, end) -> None:
        items = self._work.pop(dev_id)
        ports = np.concatenate([x[0] for x in items])
        idx = np.concatenate([x[1] for x in items])
        times = np.concatenate([x[2] for x in items])
        seqs = np.concatenate([x[3] for x in items])
        if end is not None:
            later = times >= end
            if later.any():
                self._work[dev_id] = [(ports[later], idx[later], times[later], seqs[later])]
                now = ~later
                ports, idx, times, seqs = ports[now], idx[now], times[now], seqs[now]
        if len(items) > 1 or (len(times) > 1 and not (np.diff(times) >= 0).all()):
            order = np.lexsort((seqs, times))
            ports, idx, times = ports[order], idx[order], times[order]
        device = self.engine.devices[dev_id]
        sends = ports < 0
        if sends.any():
            s = np.nonzero(sends)[0]
            self._send(device, idx[s], times[s])
            ports, idx, times = ports[~sends], idx[~sends], times[~sends]
        if not len(idx):
            return
        rec = self._record(ports, idx, times, None)
        if isinstance(device, Netns):
            notes = self._netns_receive(device, ports, idx, times)
        elif isinstance(device, Bridge):
            notes = self._bridge_receive(device, ports, idx, times)
        elif isinstance(device, LoadBalancer):
            notes = self._lb_receive(device, ports, idx, times)
        else:
            notes = device.receive(self.engine, ports, self.to_pool(idx), times)
        self._set_notes(rec, notes)

    # -- netns: hooks ------------------------------------------------------------------
    def _supported(self, ns: Netns) -> bool:
        for name, fns in ns.hooks.items():
            for fn in fns:
                if self._hook_kind(ns, fn) is None:
                    return False
            if name == "FORWARD" and fns:
                return False
        return True

    @staticmethod
    def _hook_kind(ns, fn):
        if ns.conntrack is not None and fn == ns.conntrack.hook:
            return "conntrack"
        owner, func = getattr(fn, "__self__", None), getattr(fn, "__func__", None)
        if isinstance(owner, Proxier) and func in (Proxier._prerouting, Proxier._output):
            return "proxier"
        if isinstance(owner, Nat) and func is Nat._destination:
            return "dnat"
        if isinstance(owner, Nat) and func is Nat._source:
            return "snat"
        return None

    def _run_hook(self, ns, name, idx, h, ifx, times) -> np.ndarray:
        verdict = np.zeros(len(idx), np.uint8)
        for fn in ns.hooks[name]:
            kind = self._hook_kind(ns, fn)
            live = np.nonzero(verdict == 0)[0]
            if not len(live):
                break
            hl = _take(h, live)
            if kind == "conntrack":
                v = self._conntrack(ns, idx[live], hl, times[live])
            elif kind == "proxier":
                v = self._proxier(ns, fn.__self__, idx[live], hl, times[live], name)
            else:
                v = self._nat(ns, fn.__self__, idx[live], hl, np.asarray(ifx)[live] if np.ndim(ifx) else
                              np.full(len(live), ifx, np.int32), times[live], kind == "snat")
            _put(h, live, hl)
            verdict[live] = np.where(verdict[live] == 0, v, verdict[live])
        return verdict

    def _conntrack(self, ns, idx, h, times) -> np.ndarray:
        b = self.batch
        table = ns.conntrack.table
        n = len(idx)
        now = int(times.max())
        verdict = np.zeros(n, np.uint8)
        zone = np.zeros(n, np.uint16)
        found = ct.lookup(table, zone, h.ip_src, h.ip_dst, h.sport, h.dport, h.ip_proto, now)
        conn, direction = found.conn.copy(), found.direction.copy()
        info = np.zeros(n, np.uint8)
        miss = np.nonzero(conn < 0)[0]
        if len(miss):
            ok, state, timeout = flow.ct_open(h.ip_proto[miss], h.tcp_flags[miss])
            info[miss[~ok]] = 4  # INVALID, nothing created
            m = miss[ok]
            if len(m):
                ins = ct.insert(table, zone[m], h.ip_src[m], h.ip_dst[m], h.sport[m], h.dport[m], h.ip_proto[m],
                                h.ip_dst[m], h.ip_src[m], h.dport[m], h.sport[m], state[ok], timeout[ok], now)
                conn[m] = ins.conn
                direction[m] = np.where(ins.conn >= 0, ct.ORIGINAL, -1)
                full = ins.drop != 0
                verdict[m[full]] = ins.drop[full]
                info[m[full]] = 4
        has = conn >= 0
        adv = flow.ct_advance(table, conn, direction.astype(np.int8), h.ip_proto, h.tcp_flags, now)
        info[has] = adv[has]
        b.ct[idx] = np.where(has, conn, -1)
        b.ctinfo[idx] = info
        self._log_ct(ns, idx, b.ct[idx], direction)
        return verdict

    def _decider(self, proxier) -> Decider:
        d = self._deciders.get(id(proxier))
        if d is None:
            d = self._deciders[id(proxier)] = Decider(proxier.kube_proxy)
        return d

    def _proxier(self, ns, proxier, idx, h, times, hook) -> np.ndarray:
        b = self.batch
        verdict = np.zeros(len(idx), np.uint8)
        sel = np.nonzero((b.ctinfo[idx] == NEW) & (b.ct[idx] >= 0)
                         & ((h.ip_proto == 6) | (h.ip_proto == 17)))[0]
        # the nat table sees only a connection's first packet (nf_nat_inet_fn; as
        # Proxier._decide): not one whose entry has its DNAT binding, and a second
        # packet of a connection in this batch follows the first one's decision
        sel = sel[(ns.conntrack.table.conns["status"][b.ct[idx[sel]]] & ct.IPS_DST_NAT) == 0]
        if not len(sel):
            return verdict
        _, first, again = np.unique(b.ct[idx[sel]], return_index=True, return_inverse=True)
        order = np.argsort(first)               # the connections' first packets, in batch order
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        d = sel[first[order]]
        act, bip, bport, masq, explain = self._decider(proxier).decide(
            h.ip_src[d], h.ip_proto[d], h.ip_dst[d], h.dport[d], h.sport[d], times[d], hook,
            want_explain=b.cap[idx[d]])
        if len(d) < len(sel):
            of = rank[again.reshape(-1)]
            act, bip, bport, masq = act[of], bip[of], bport[of], masq[of]
            if explain:
                explain = {k: explain[j] for k, j in enumerate(of.tolist()) if j in explain}
        i = idx[sel]
        dn = act == A_DNAT
        b.dnat_ip[i[dn]], b.dnat_port[i[dn]], b.has_dnat[i[dn]] = bip[dn], bport[dn], True
        b.mark[i[masq]] |= MASQ_MARK
        for k, text in explain.items():
            if act[k] == A_DNAT:
                self._say(i[k], text)
        rej = np.nonzero(act == A_REJECT)[0]
        if len(rej):
            self._reject(ns, i[rej], times[sel][rej])
            verdict[sel[rej]] = Drop.SERVICE_NO_ENDPOINTS
        verdict[sel[act == A_DROP]] = Drop.SERVICE_NO_LOCAL
        return verdict

    def _reject(self, ns, idx, times) -> None:
        """kube-proxy's REJECT: the namespace answers each packet with its ICMP error."""
        slots = self.to_pool(idx)
        for s, t in zip(slots.tolist(), times.tolist()):
            ns.reject(self.engine, s, t)
        self.engine.pool.release(slots)

    def _say(self, i, text) -> None:
        said = self.batch.said
        before = said.get(int(i))
        said[int(i)] = f"{before}; {text}" if before else text

    def _nat(self, ns, nat, idx, h, ifx, times, source: bool) -> np.ndarray:
        b = self.batch
        table = ns.conntrack.table
        verdict = np.zeros(len(idx), np.uint8)
        conn = b.ct[idx]
        tracked = np.nonzero(conn >= 0)[0]
        if not len(tracked):
            if not source:
                b.has_dnat[idx] = False
            return verdict
        nt = tracked[b.ctinfo[idx[tracked]] == NEW]
        if len(nt) and not self._may_bind(nat, idx[nt], source):
            nt = nt[:0]  # no rule target for any of them: nothing to bind (as _bind would find)
        c_nt = conn[nt]
        conns = table.conns
        bit = ct.IPS_SRC_NAT if source else ct.IPS_DST_NAT
        first = (conns["orig_src"][c_nt] == h.ip_src[nt]) & (conns["orig_sport"][c_nt] == h.sport[nt]) \
            & ((conns["status"][c_nt] & bit) == 0)
        cand = nt[first]
        if len(cand):
            self._bind(ns, nat, idx, h, ifx, times, cand, source, verdict)
        if not source:
            b.has_dnat[idx] = False  # the proxier's pending target is for this hook only
        conn = b.ct[idx]
        ok = np.nonzero((conn >= 0) & (verdict == 0))[0]
        src, dst, sport, dport, changed = flow.nat_tuple(table, conn[ok], h.ip_src[ok], h.ip_dst[ok], h.sport[ok],
                                                         h.dport[ok], source)
        c = np.nonzero(changed)[0]
        if len(c):
            k = ok[c]
            start = b.start[idx[k]]
            rewrite.nat(b.buf, start + h.l3_off[k].astype(np.int64), start + h.l4_off[k].astype(np.int64),
                        h.ip_proto[k], src[c], dst[c], sport[c], dport[c])
            h.ip_src[k], h.ip_dst[k], h.sport[k], h.dport[k] = src[c], dst[c], sport[c], dport[c]
        return verdict

    def _may_bind(self, nat, i, source) -> bool:
        """Whether the NAT rule can give any of the packets i a binding (the
        early returns of _bind, before looking at their connections)."""
        b = self.batch
        if not source:
            return nat.dnat_rule is not None and bool(b.has_dnat[i].any())
        if nat.snat_rule is None:
            return False
        plain = isinstance(getattr(nat.snat_rule, "__self__", None), Proxier) or \
            getattr(nat.snat_rule, "__func__", nat.snat_rule) is Proxier._masquerade
        return not plain or bool((b.mark[i] & MASQ_MARK).any())

    def _bind(self, ns, nat, idx, h, ifx, times, cand, source, verdict) -> None:
        """Nat._new for the first packets of connections: the rule's target,
        then the connection's reply tuple rewritten (kernels.flow.renat)."""
        b = self.batch
        table = ns.conntrack.table
        now = int(times.max())
        i = idx[cand]
        if not self._may_bind(nat, i, source):
            return
        conn = b.ct[i]
        recs = table.conns[conn]
        rsrc, rdst = recs["reply_src"].copy(), recs["reply_dst"].copy()
        rsport, rdport = recs["reply_sport"].copy(), recs["reply_dport"].copy()
        if not source:
            want = b.has_dnat[i]
            rsrc[want], rsport[want] = b.dnat_ip[i][want], b.dnat_port[i][want]
            b.has_dnat[i] = False
        else:
            if nat.snat_rule is None:
                return
            want = (b.mark[i] & MASQ_MARK) != 0
            if not isinstance(getattr(nat.snat_rule, "__self__", None), Proxier) and \
                    getattr(nat.snat_rule, "__func__", nat.snat_rule) is not Proxier._masquerade:
                want = np.array([nat.snat_rule(ns, _tuple(recs[k]), int(ifx[cand[k]]), int(b.mark[i[k]]))
                                 is not None for k in range(len(i))], bool)
            addrs = np.array([(x.addrs[0][0] if x.addrs else 0) for x in ns.ifaces], np.uint32)[ifx[cand]]
            want &= addrs != 0
            rdst[want] = addrs[want]
            w = np.nonzero(want)[0]
            ports = self.engine.rng.integers(1024, 65536, size=len(w)) if len(w) else np.zeros(0, np.int64)
            rdport[w] = ports
        w = np.nonzero(want)[0]
        if not len(w):
            return
        new = flow.renat(table, conn[w], rsrc[w], rdst[w], rsport[w], rdport[w], now)
        for k in np.nonzero(new < 0)[0].tolist():  # a clash: Nat._new tries 7 more tuples
            if source:
                for _ in range(7):
                    rdport[w[k]] = int(self.engine.rng.integers(1024, 65536))
                    got = flow.renat(table, conn[w[k]:w[k] + 1], rsrc[w[k]:w[k] + 1], rdst[w[k]:w[k] + 1],
                                     rsport[w[k]:w[k] + 1], rdport[w[k]:w[k] + 1], now)
                    if got[0] >= 0:
                        new[k] = got[0]
                        break
        bad = new < 0
        verdict[cand[w[bad]]] = Drop.CT_CLASH
        good = np.nonzero(~bad)[0]
        b.ct[i[w[good]]] = new[good]
        for k in good.tolist():
            j = i[w[k]]
            if b.cap[j]:
                o = recs[w[k]]
                if source:
                    self._say(j, f"SNAT {_ep(o['orig_src'], o['orig_sport'])} -> {_ep(rdst[w[k]], rdport[w[k]])}")
                elif int(j) not in b.said:
                    self._say(j, f"DNAT {_ep(o['orig_dst'], o['orig_dport'])} -> {_ep(rsrc[w[k]], rsport[w[k]])}")

    # -- netns: receive ------------------------------------------------------------------
    def _netns_receive(self, ns: Netns, ports, idx, times) -> np.ndarray:
        return self._input(ns, self._port_map(ns, ns._if_of_port)[ports], idx, times)

    def _port_map(self, dev, mapping) -> np.ndarray:
        """A device's {engine port id: its own index} as a dense array (-1: none)."""
        key = (dev.id, id(mapping))
        got = self._maps.get(key)
        if got is None or got[0] != len(mapping) or len(got[1]) < len(self.engine.ports):
            arr = np.full(max(len(self.engine.ports), max(mapping, default=0) + 1), -1, np.int32)
            for p, i in mapping.items():
                arr[p] = i
            got = self._maps[key] = (len(mapping), arr)
        return got[1]

    def _slow_input(self, ns, ifx, idx, times) -> np.ndarray:
        slots = self.to_pool(idx)
        return ns._input(self.engine, ifx, slots, times)

    def _input(self, ns: Netns, ifx, idx, times) -> np.ndarray:
        b = self.batch
        notes = np.zeros(len(idx), np.int32)
        if not self._supported(ns):
            return self._slow_input(ns, ifx, idx, times)
        h = parse.parse(b.buf, b.start[idx], b.length[idx], ns._vxlan_ports())
        bad = h.drop != 0
        if bad.any():
            notes[bad] = self.engine.drop_notes(h.drop[bad])
            self.drop(ns, idx[bad], h.drop[bad])
        our_mac = np.array([i.mac for i in ns.ifaces], np.uint64)[ifx]
        group = ((h.eth_dst >> np.uint64(40)) & np.uint64(1)).astype(bool)
        other = ~bad & (h.eth_dst != our_mac) & ~group
        if other.any():
            notes[other] = self.note("notforus", lambda: "drop: NOT_FOR_US (frame for another MAC)")
            self.drop(ns, idx[other], Drop.NOT_FOR_US)
        fast = ~bad & ~other & ~group & ((h.flags & parse.IPV4) != 0) & ((h.flags & parse.L4) != 0) \
            & ((h.flags & parse.FRAGMENT) == 0) & ((h.ip_proto == 6) | (h.ip_proto == 17))
        slow = ~bad & ~other & ~fast
        if slow.any():
            s = np.nonzero(slow)[0]
            notes[s] = self._slow_input(ns, ifx[s], idx[s], times[s])
        sel = np.nonzero(fast)[0]
        if len(sel):
            hs = _take(h, sel)
            self._flow_hashes(idx[sel], hs)
            notes[sel] = self._ip_input(ns, ifx[sel], idx[sel], times[sel], hs)
        return notes

    def _flow_hashes(self, idx, h) -> np.ndarray:
        b = self.batch
        have = b.fhash[idx]
        todo = np.nonzero(have == 0)[0]
        if len(todo):
            have[todo] = hashing.flow_hash(h.ip_src[todo], h.ip_dst[todo], h.sport[todo], h.dport[todo],
                                           h.ip_proto[todo], self.engine.seed)
            b.fhash[idx[todo]] = have[todo]
        return have

    def _ip_input(self, ns, ifx, idx, times, h) -> np.ndarray:
        b = self.batch
        notes = np.zeros(len(idx), np.int32)
        v = self._prerouting_fused(ns, idx, h, times)
        if v is None:
            v = self._run_hook(ns, "PREROUTING", idx, h, ifx, times)
        rejected = self._drop_verdicts(ns, idx, v, notes)
        ctinfo = b.ctinfo[idx].copy()
        said = {}
        if b.said:
            keys = np.fromiter(b.said.keys(), np.int64, len(b.said))
            said = {int(k): b.said[int(idx[k])] for k in np.nonzero(np.isin(idx, keys))[0].tolist()}
        local_addrs = np.array(sorted(ns._local), np.uint32)
        local = np.isin(h.ip_dst, local_addrs) | (h.ip_dst == 0xFFFFFFFF)
        lsel = np.nonzero(~rejected & local)[0]
        if len(lsel):
            notes[lsel] = self._local_input(ns, ifx[lsel], idx[lsel], times[lsel], _take(h, lsel))
        fsel = np.nonzero(~rejected & ~local)[0]
        if len(fsel):
            notes[fsel] = self._forward(ns, ifx[fsel], idx[fsel], times[fsel], _take(h, fsel))
        if ns.conntrack is not None:  # (notes are read for captured packets only)
            t = np.nonzero((ctinfo != 0) & b.cap[idx])[0]
            if len(t):
                key = notes[t].astype(np.int64) * 8 + ctinfo[t]
                notes[t] = self._dense_notes("ct", key, lambda u: self.note(
                    ("ct", u), lambda: ns._with_ct(self.engine.notes[u // 8], u % 8)))
        for k, text in said.items():
            b.said.pop(int(idx[k]), None)
            notes[k] = self.engine.note(f"{self.engine.notes[notes[k]]}; {text}")
        return notes

    def _drop_verdicts(self, ns, idx, verdicts, notes) -> np.ndarray:
        """Drop the packets a hook refused (with their reason as the note); the mask of them."""
        rejected = verdicts != 0
        if rejected.any():
            notes[rejected] = self.engine.drop_notes(verdicts[rejected])
            self.drop(ns, idx[rejected], verdicts[rejected])
        return rejected

    def _local_input(self, ns, ifx, idx, times, h) -> np.ndarray:
        b = self.batch
        notes = np.zeros(len(idx), np.int32)
        v = self._run_hook(ns, "INPUT", idx, h, ifx, times)
        rejected = self._drop_verdicts(ns, idx, v, notes)
        vx = ~rejected & ((h.flags & parse.VXLAN) != 0)
        vsel = np.nonzero(vx)[0]
        if len(vsel):
            notes[vsel] = self._vxlan_input(ns, ifx[vsel], idx[vsel], times[vsel], _take(h, vsel))
        rest = np.nonzero(~rejected & ~vx)[0]
        if len(rest):
            mine = self.endpoints.owns_many(ns, b.flow[idx[rest]], h.ip_proto[rest], h.dport[rest])
            d = rest[mine]
            if len(d):
                dc = d[b.cap[idx[d]]]  # notes are read for captured packets only
                key = h.ip_proto[dc].astype(np.int64) << 16 | h.dport[dc]
                notes[dc] = self._dense_notes("deliver", key, lambda u: self.note(
                    ("deliver", u), lambda: f"delivered to local socket proto {u >> 16} port {u & 0xFFFF}"))
                self.endpoints.deliver(b, idx[d], ns, times[d], _take(h, d))
                self._log(idx[d], OP_DELIVER)
                b.release(idx[d])
            s = rest[~mine]
            if len(s):
                slots = self.to_pool(idx[s])
                for j, (slot, k) in enumerate(zip(slots.tolist(), s.tolist())):
                    pool = self.engine.pool
                    one = parse.parse(pool.buf, pool.start[[slot]], pool.length[[slot]], ns._vxlan_ports())
                    notes[k] = ns._local_input(self.engine, int(ifx[k]), slot, int(times[k]), one, 0)
        return notes

    def _vxlan_input(self, ns, ifx, idx, times, h) -> np.ndarray:
        b = self.batch
        notes = np.zeros(len(idx), np.int32)
        for key in _values(h.dport.astype(np.int64) << 32 | (h.vni.astype(np.int64) & 0xFFFFFFFF)):
            dport, vni = key >> 32, key & 0xFFFFFFFF
            vni = vni - (1 << 32) if vni >= 1 << 31 else vni
            sel = np.nonzero((h.dport == dport) & (h.vni == vni))[0]
            dev = next((i for i in ns.ifaces if i.kind == "vxlan" and i.dstport == dport and i.vni == vni), None)
            if dev is None:
                notes[sel] = self.note(("vni", vni, dport), lambda: f"drop: UNKNOWN_VNI {vni} on udp/{dport}")
                self.drop(ns, idx[sel], Drop.UNKNOWN_VNI)
                continue
            i = idx[sel]
            inner = h.inner_off[sel].astype(np.int64)
            b.start[i] += inner
            b.length[i] -= inner
            src_ips = h.ip_src[sel]
            for src in _values(src_ips):
                k = sel[src_ips == src]
                notes[k] = self.note(("decap", ns.name, dev.name, src),
                                     lambda: f"VXLAN decap VNI {dev.vni} from {ipv4.ntoa(src)} into {dev.name}")
            rec = self._record(dev.port.id, i, times[sel], None)
            inner_notes = self._input(ns, np.full(len(i), dev.index, np.int32), i, times[sel])
            self._set_notes(rec, inner_notes)
        return notes

    def _forward(self, ns, ifx, idx, times, h) -> np.ndarray:
        b = self.batch
        notes = np.zeros(len(idx), np.int32)
        if not ns.forwarding:
            notes[:] = self.engine.drop_notes(np.full(len(idx), Drop.FORWARDING_OFF, np.uint8))
            self.drop(ns, idx, Drop.FORWARDING_OFF)
            return notes
        routes = lpm.lookup(ns._fib_table(), h.ip_dst)
        bad = (routes < 0) | (h.ttl <= 1)
        if bad.any():  # ICMP errors: the interactive device's own code
            for k in np.nonzero(bad)[0].tolist():
                slot = int(self.to_pool(idx[k:k + 1])[0])
                reason = Drop.NO_ROUTE if routes[k] < 0 else Drop.TTL_EXCEEDED
                icmp = (3, 0) if routes[k] < 0 else (11, 0)
                ns._icmp_error(self.engine, slot, int(times[k]), *icmp)
                self.engine.drop(ns, np.array([slot], np.int32), reason, times[k:k + 1],
                                 ns.ifaces[int(ifx[k])].port.id)
                self.endpoints.dropped(b, idx[k:k + 1])
                notes[k] = self.engine.drop_notes(np.array([reason], np.uint8))[0]
        sel = np.nonzero(~bad)[0]
        if len(sel):
            i = idx[sel]
            hs = _take(h, sel)
            if not self._forward_fused(ns, i, times[sel], routes[sel], hs):
                rewrite.decrement_ttl(b.buf, b.start[i] + hs.l3_off.astype(np.int64))
                notes[sel] = self._output(ns, i, times[sel], routes[sel], True, h=hs)
        return notes

    # -- netns: the fused common case (kernels.netns_fast) ---------------------------------
    # Each fused step replaces one call of the staged path for a whole group,
    # only when the kernel's check finds every packet of the group to be the
    # common case (otherwise the staged call runs, nothing having been
    # touched); notes are not made: no packet of the group is captured.
    def _fusable(self, ns, idx) -> bool:
        b = self.batch
        return len(idx) > 0 and ns.conntrack is not None and not b.said and \
            (self.engine.taps is None or not b.cap[idx].any())

    def _kinds(self, ns, hook) -> list:
        return [self._hook_kind(ns, fn) for fn in ns.hooks[hook]]

    def _prerouting_fused(self, ns, idx, h, times):
        """PREROUTING (conntrack, kube-proxy, DNAT) for packets of live entries
        and connections' first packets (kernels.netns_fast): the verdicts, or
        None (not fused)."""
        b = self.batch
        if not self._fusable(ns, idx) or self._kinds(ns, "PREROUTING") != ["conntrack", "proxier", "dnat"]:
            return None
        if b.has_dnat[idx].any():
            return None
        table = ns.conntrack.table
        now = int(times.max())
        src, dst = np.ascontiguousarray(h.ip_src), np.ascontiguousarray(h.ip_dst)
        sport, dport = np.ascontiguousarray(h.sport), np.ascontiguousarray(h.dport)
        proto, flags = np.ascontiguousarray(h.ip_proto), np.ascontiguousarray(h.tcp_flags)
        ok, conn, direction, maybe_new, new, first = netns_fast.prerouting_check(table, src, dst, sport, dport,
                                                                                 proto, flags, now)
        if not ok:
            return None
        proxier = ns.hooks["PREROUTING"][1].__self__
        if maybe_new.any():
            m = np.nonzero(maybe_new)[0]
            if not self._decider(proxier).static_none(src[m], proto[m], dst[m], dport[m], "PREROUTING"):
                return None
        act = np.zeros(len(idx), np.uint8)
        bip, bport = np.zeros(len(idx), np.uint32), np.zeros(len(idx), np.uint16)
        masq = np.zeros(len(idx), bool)
        if new.any():   # kube-proxy decides for each new connection's first packet, in order (its random stream)
            m = np.nonzero(new)[0]
            d = m[first[m] == m]
            act[d], bip[d], bport[d], masq[d], _ = self._decider(proxier).decide(
                src[d], proto[d], dst[d], dport[d], sport[d], times[d], "PREROUTING")
            f = first[m]
            act[m], bip[m], bport[m], masq[m] = act[f], bip[f], bport[f], masq[f]
        dst, dport = dst.copy(), dport.copy()
        info, verdict = netns_fast.prerouting_apply(
            table, conn, direction, new, act, bip, bport, ns.hooks["PREROUTING"][2].__self__.dnat_rule is not None,
            proto, flags, now, b.buf, b.start[idx], np.ascontiguousarray(h.l3_off), np.ascontiguousarray(h.l4_off),
            src, dst, sport, dport)
        h.ip_dst[:], h.dport[:] = dst, dport
        b.ct[idx], b.ctinfo[idx] = conn, info
        b.mark[idx[masq]] |= MASQ_MARK
        b.has_dnat[idx] = False
        self._log_ct(ns, idx, conn, direction)
        rej = np.nonzero(verdict == Drop.SERVICE_NO_ENDPOINTS)[0]
        if len(rej):
            self._reject(ns, idx[rej], times[rej])
        return verdict

    def _forward_fused(self, ns, idx, times, routes, h) -> bool:
        """_output for forwarded packets (TTL still to decrement), VXLAN encap
        and the outer OUTPUT hook included, when all are the common case."""
        b = self.batch
        if not self._fusable(ns, idx) or self._kinds(ns, "POSTROUTING") != ["snat"] \
                or self._kinds(ns, "OUTPUT") != ["conntrack", "proxier", "dnat"]:
            return False
        nat = ns.hooks["POSTROUTING"][0].__self__
        rule = nat.snat_rule
        if rule is not None and not (isinstance(getattr(rule, "__self__", None), Proxier)
                                     or getattr(rule, "__func__", rule) is Proxier._masquerade):
            return False
        vxs = [i for i in ns.ifaces if i.kind == "vxlan"]
        if len(vxs) > 1:
            return False
        vx = vxs[0] if vxs else None
        route_dev = np.array([r.dev for r in ns.routes], np.int32)
        route_via = np.array([r.via for r in ns.routes], np.uint32)
        if_mtu = np.array([i.mtu for i in ns.ifaces], np.int64)
        if_vxlan = np.array([i.kind == "vxlan" for i in ns.ifaces], np.bool_)
        if_macs = np.array([i.mac for i in ns.ifaces], np.uint64)
        nbs = sorted(((k[0] << 32) | k[1], e.mac) for k, e in ns.neigh.items()
                     if e.state in ("REACHABLE", "PERMANENT"))
        nb_keys = np.array([k for k, _ in nbs], np.uint64)
        nb_macs = np.array([m for _, m in nbs], np.uint64)
        fdb = sorted(vx.fdb.items()) if vx is not None else []
        fdb_keys = np.array([k for k, _ in fdb], np.uint64)
        fdb_remote = np.array([r for _, r in fdb], np.uint32)
        table = ns.conntrack.table
        local_ip = vx.local_ip if vx is not None else 0
        vport = vx.dstport if vx is not None else 0
        src, dst = np.ascontiguousarray(h.ip_src), np.ascontiguousarray(h.ip_dst)
        ok, fw = netns_fast.forward_check(
            table, ns._fib_table(), routes, route_dev, route_via, if_mtu, if_vxlan, nb_keys, nb_macs, fdb_keys,
            fdb_remote, vx.index if vx is not None else -1, local_ip, vport, src, dst,
            np.ascontiguousarray(h.sport), np.ascontiguousarray(h.ip_proto), np.ascontiguousarray(h.ip_len),
            b.ct[idx], b.ctinfo[idx], b.mark[idx], MASQ_MARK, b.fhash[idx], times, b.start[idx], b.length[idx],
            50)
        if not ok:
            return False
        if fw.o_new.any():
            m = np.nonzero(fw.o_new)[0]
            if not self._decider(ns.hooks["OUTPUT"][1].__self__).static_none(
                    np.full(len(m), local_ip, np.uint32), np.full(len(m), 17, np.uint8), fw.remote[m],
                    np.full(len(m), vport, np.uint16), "OUTPUT"):
                return False
        encap = (fw.o_conn >= 0) | fw.o_miss
        ids = ns._next_ip_ids(int(encap.sum())) if encap.any() else np.zeros(0, np.uint16)
        start, length = b.start[idx], b.length[idx]
        netns_fast.forward_apply(table, fw, b.buf, start, length, np.ascontiguousarray(h.l3_off),
                                 np.ascontiguousarray(h.l4_off), np.ascontiguousarray(h.ip_proto), dst,
                                 np.ascontiguousarray(h.dport), nb_macs, if_macs, if_vxlan, ids, local_ip, vport,
                                 vx.vni if vx is not None else 0, ipv4.DEFAULT_TTL)
        b.start[idx], b.length[idx] = start, length
        if self.cache is not None and encap.any():
            self._log(idx[encap], OP_ENCAP, self.cache.counter(ns))
            self._log_ct(ns, idx[encap], fw.o_conn[encap], fw.o_dir[encap])
        notes = np.zeros(len(idx), np.int32)
        out_if = fw.out_if
        for dev in _values(out_if):
            s = np.nonzero(out_if == dev)[0] if len(out_if) > 1 and not (out_if == dev).all() else \
                np.arange(len(out_if))
            iface = ns.ifaces[dev]
            if iface.kind == "vxlan":
                oi = fw.o_if[s]
                for od in _values(oi):
                    k = s[oi == od]
                    self.transmit(ns, ns.ifaces[od].port.id, idx[k], times[k], notes[k])
            else:
                self.transmit(ns, iface.port.id, idx[s], times[s], notes[s])
        return True

    # -- netns: output -------------------------------------------------------------------
    def _send(self, ns, idx, times) -> None:
        """Locally generated packets (Netns.send_ip / _send_slot)."""
        b = self.batch
        if not isinstance(ns, Netns) or not self._supported(ns):
            for i, t in zip(idx.tolist(), times.tolist()):
                slot = int(self.to_pool([i])[0])
                ns._send_slot(self.engine, slot, t, "sent")
            return
        h = parse.parse(b.buf, b.start[idx], b.length[idx], ())
        routes = lpm.lookup(ns._fib_table(), h.ip_dst)
        local = np.isin(h.ip_dst, np.array(sorted(ns._local), np.uint32))
        slow = local | (routes < 0)
        for k in np.nonzero(slow)[0].tolist():
            slot = int(self.to_pool(idx[k:k + 1])[0])
            ns._send_slot(self.engine, slot, int(times[k]), self._texts[int(self.endpoints.send_codes(self, b, idx[k:k + 1])[0])])
        sel = np.nonzero(~slow)[0]
        if not len(sel):
            return
        idx, times, routes, h = idx[sel], times[sel], routes[sel], _take(h, sel)
        self._flow_hashes(idx, h)
        out_if = np.array([r.dev for r in ns.routes], np.int32)[routes]
        v = self._run_hook(ns, "OUTPUT", idx, h, out_if, times)
        if v.any():
            self.drop(ns, idx[v != 0], v[v != 0])
        ok = v == 0
        firsts = self.endpoints.send_codes(self, b, idx[ok])
        self._output(ns, idx[ok], times[ok], routes[ok], False, firsts, h=_take(h, np.nonzero(ok)[0]))

    def _output(self, ns, idx, times, routes, forwarded, first_codes=None, h=None) -> np.ndarray:
        """h: the packets' headers as the earlier hooks left them (NAT keeps the
        tuple columns coherent; TTL and checksums are not read here), or None."""
        b = self.batch
        eng = self.engine
        notes = self._route_notes(ns, routes, forwarded, b.ctinfo[idx])
        if h is None:
            h = parse.parse(b.buf, b.start[idx], b.length[idx], ())
        route_dev = np.array([r.dev for r in ns.routes], np.int32)
        route_via = np.array([r.via for r in ns.routes], np.uint32)
        out_if = route_dev[routes]
        v = self._run_hook(ns, "POSTROUTING", idx, h, out_if, times)
        go = v == 0
        if not go.all():
            notes[~go] = eng.drop_notes(v[~go])
            self.drop(ns, idx[~go], v[~go])
        mtu = np.array([i.mtu for i in ns.ifaces], np.int64)[out_if]
        too_big = go & (h.ip_len.astype(np.int64) > mtu)
        for k in np.nonzero(too_big)[0].tolist():
            slot = int(self.to_pool(idx[k:k + 1])[0])
            pool = eng.pool
            one = parse.parse(pool.buf, pool.start[[slot]], pool.length[[slot]], ())
            notes[k] = ns._too_big(eng, slot, int(times[k]), int(routes[k]), int(mtu[k]),
                                   bool(one.flags[0] & parse.DF), forwarded, one, 0)
        go &= ~too_big
        # neighbour: (interface, next hop) -> MAC when resolved; else the device queues it
        nexthop = route_via[routes]
        nexthop = np.where(nexthop == 0, h.ip_dst, nexthop)
        macs, resolved = self._neighbours(ns, out_if, nexthop)
        for k in np.nonzero(go & ~resolved)[0].tolist():
            slot = int(self.to_pool(idx[k:k + 1])[0])
            ns._resolve(eng, slot, int(times[k]), int(routes[k]), forwarded, int(h.ip_dst[k]), int(h.ip_src[k]),
                        self._texts[int(first_codes[k])] if first_codes is not None else None)
        sel = np.nonzero(go & resolved)[0]
        if len(sel):
            self._finish(ns, idx[sel], times[sel], out_if[sel], macs[sel], routes[sel], forwarded,
                         first_codes[sel] if first_codes is not None else None)
        return notes

    def _finish(self, ns, idx, times, out_if, macs, routes, forwarded, first_codes) -> None:
        b = self.batch
        src_mac = np.array([i.mac for i in ns.ifaces], np.uint64)[out_if]
        rewrite.set_macs(b.buf, b.start[idx], macs, src_mac)
        ctinfo = b.ctinfo[idx]
        if first_codes is not None:
            notes = self._first_notes(ns, first_codes, ctinfo)
        else:
            notes = self._route_notes(ns, routes, forwarded, ctinfo)
        if b.said:
            keys = np.fromiter(b.said.keys(), np.int64, len(b.said))
            for k in np.nonzero(np.isin(idx, keys))[0].tolist():
                text = b.said.pop(int(idx[k]), None)
                if text:
                    notes[k] = self.engine.note(f"{self.engine.notes[notes[k]]}; {text}")
        for dev in _values(out_if):
            sel = np.nonzero(out_if == dev)[0]
            iface = ns.ifaces[dev]
            if iface.kind == "vxlan":
                self.observe(iface.port.id, idx[sel], times[sel], notes[sel])
                self._vxlan_output(ns, iface, idx[sel], times[sel], macs[sel])
            else:
                self.transmit(ns, iface.port.id, idx[sel], times[sel], notes[sel])

    def _vxlan_output(self, ns, dev, idx, times, eth_dst) -> None:
        """eth_dst: the inner frames' destination MACs (as _finish set them)."""
        b = self.batch
        um, minv = _inverse(eth_dst)
        remote = np.array([dev.fdb.get(int(m), 0) for m in um.tolist()], np.uint32)[minv.reshape(-1)]
        miss = remote == 0
        if miss.any():
            self.drop(ns, idx[miss], Drop.NO_FDB_ENTRY)
        keep = np.nonzero(~miss)[0]
        if not len(keep):
            return
        idx, times, remote = idx[keep], times[keep], remote[keep]
        fh = b.fhash[idx]
        if not fh.all():
            need = np.nonzero(fh == 0)[0]
            fh[need] = self._flow_hashes(idx[need], parse.parse(b.buf, b.start[idx[need]], b.length[idx[need]], ()))
        sport = hashing.udp_source_port(fh, 0, 0)
        rewrite.vxlan_encap(b.buf, b.start, b.length, idx.astype(np.int32), dev.local_ip, remote, sport,
                            dev.dstport, dev.vni, ipv4.DEFAULT_TTL, ns._next_ip_ids(len(idx)))
        b.ct[idx], b.ctinfo[idx] = -1, 0
        if self.cache is not None:
            self._log(idx, OP_ENCAP, self.cache.counter(ns))
        routes = lpm.lookup(ns._fib_table(), remote)
        outer = parse.parse(b.buf, b.start[idx], b.length[idx], ns._vxlan_ports())
        out_if = np.where(routes >= 0, np.array([r.dev for r in ns.routes], np.int32)[np.maximum(routes, 0)], 0)
        v = self._run_hook(ns, "OUTPUT", idx, outer, out_if, times)
        bad = (v != 0) | (routes < 0)
        if bad.any():
            self.drop(ns, idx[bad], np.where(v[bad] != 0, v[bad], Drop.NO_ROUTE).astype(np.uint8))
        sel = np.nonzero(~bad)[0]
        if not len(sel):
            return
        idx, times, routes, remote, out_if = idx[sel], times[sel], routes[sel], remote[sel], out_if[sel]
        key = routes.astype(np.int64) << 32 | remote.astype(np.int64)
        uniq, inv = _inverse(key)
        codes = np.array([self.code(f"VXLAN encap VNI {dev.vni} -> {ipv4.ntoa(u & 0xFFFFFFFF)}, "
                                    f"route {ns.routes[u >> 32].text(ns)}") for u in uniq.tolist()],
                         np.int64)[inv.reshape(-1)]
        route_via = np.array([r.via for r in ns.routes], np.uint32)
        nexthop = np.where(route_via[routes] == 0, remote, route_via[routes])
        macs, resolved = self._neighbours(ns, out_if, nexthop)
        for k in np.nonzero(~resolved)[0].tolist():
            slot = int(self.to_pool(idx[k:k + 1])[0])
            ns._resolve(self.engine, slot, int(times[k]), int(routes[k]), False, int(remote[k]), dev.local_ip,
                        self._texts[int(codes[k])])
        r = np.nonzero(resolved)[0]
        if len(r):
            self._finish(ns, idx[r], times[r], out_if[r], macs[r], routes[r], False, codes[r])

    # -- bridge --------------------------------------------------------------------------
    def _bridge_receive(self, br: Bridge, ports, idx, times) -> np.ndarray:
        b = self.batch
        notes = np.zeros(len(idx), np.int32)
        macs = fdbk.frame_macs(b.buf, b.start[idx], b.length[idx])
        up, hairpin = br._port_state()
        # the engine may have run this bridge a little later in the same window:
        # the FDB's clock never goes back, so learning times are clamped to it
        ftimes = np.maximum(times, fdbk.current_time(br.fdb))
        now = int(ftimes.max())
        where = fdbk.lookup(br.fdb, macs.dst, now) if len(idx) else np.zeros(0, np.int32)
        unicast = ((macs.dst >> np.uint64(40)) & np.uint64(1)) == 0
        hp = br.host_port.id if br.host_port else -1
        from_host = ports == hp
        known = where >= 0
        known_up = np.zeros(len(idx), bool)
        known_up[known] = up[where[known]]
        fast_host = from_host & unicast & known & known_up
        ingress = self._port_map(br, br._index)[ports]
        fast_port = ~from_host & unicast & (macs.dst != np.uint64(fdbk.NO_MAC)) & \
            (((known & known_up) & (where != ingress)) | (where == fdbk.HOST_PORT))
        slow = ~fast_host & ~fast_port
        if slow.any():
            s = np.nonzero(slow)[0]
            notes[s] = br.receive(self.engine, ports[s], self.to_pool(idx[s]), ftimes[s])
        s = np.nonzero(fast_host)[0]
        for p in _values(where[s]):
            k = s[where[s] == p]
            out = br.bports[p]
            notes[k] = self.note(("brhost", br.name, p),
                                 lambda: f"bridge {br.name}: host -> {out.name.split('/')[-1]} (learned)")
            if self.cache is not None:
                self._log(idx[k], OP_FDB_FWD, self.cache.fdb(br), macs.dst[k], p)
            self.transmit(br, out.id, idx[k], times[k], notes[k])
        s = np.nonzero(fast_port)[0]
        if len(s):
            ft = np.maximum(ftimes[s], fdbk.current_time(br.fdb))  # the slow part may have moved the clock
            d = fdbk.forward(br.fdb, macs.dst[s], macs.src[s], ingress[s], ft, up, hairpin)
            if br.netfilter is not None:
                self._br_netfilter(br, idx[s], times[s], d)
            drop = d.action == 0
            if drop.any():
                k = s[drop]
                notes[k] = self.engine.drop_notes(d.drop[drop])
                self.drop(br, idx[k], d.drop[drop])
            fwd = (d.action & fdbk.FORWARD) != 0
            for p in _values(d.out_port[fwd]):
                m = fwd & (d.out_port == p)
                k = s[m]
                out = br.bports[p]
                self._log_fdb(br, idx[k], macs.src[k], ingress[k], macs.dst[k], p)
                for q in _values(ingress[k]):
                    kk = k[ingress[k] == q]
                    inport = br.bports[q].name.split("/")[-1]
                    notes[kk] = self.note(("brfwd", br.name, q, p), lambda: f"bridge {br.name}: forward {inport} -> "
                                                                         f"{out.name.split('/')[-1]} (learned)")
                self.transmit(br, out.id, idx[k], times[k], notes[k])
            up_host = ((d.action & fdbk.LOCAL) != 0) & ((d.action & fdbk.FLOOD) == 0)
            k = s[up_host]
            if len(k):
                self._log_fdb(br, idx[k], macs.src[k], ingress[k], macs.dst[k], -1)
                notes[k] = self.note(("brlocal", br.name), lambda: f"bridge {br.name}: to host")
                if br.host_port is None:
                    self.drop(br, idx[k], Drop.BRIDGE_NO_PORT)
                else:
                    self.transmit(br, br.host_port.id, idx[k], times[k], notes[k])
            other = (d.action != 0) & ~fwd & ~up_host  # flooded after all: the device's own code
            if other.any():
                k = s[other]
                notes[k] = br._from_ports(self.engine, ports[k], self.to_pool(idx[k]), ftimes[k])
        return notes

    def _br_netfilter(self, br, idx, times, d) -> None:
        b = self.batch
        bridged = np.nonzero((d.action & (fdbk.FORWARD | fdbk.FLOOD)) != 0)[0]
        if not len(bridged):
            return
        ns = br.netfilter
        h = parse.parse(b.buf, b.start[idx[bridged]], b.length[idx[bridged]], ())
        ip = np.nonzero((h.drop == 0) & ((h.flags & parse.IPV4) != 0))[0]
        if not len(ip):
            return
        k, hh = bridged[ip], _take(h, ip)
        ifx = np.full(len(k), ns.iface(br.netfilter_ifname).index, np.int32)
        verdict = np.zeros(len(k), np.uint8)
        for hook in ("PREROUTING", "FORWARD", "POSTROUTING"):  # each hook sees what NAT did before it
            live = np.nonzero(verdict == 0)[0]
            hl = _take(hh, live)
            v = self._run_hook(ns, hook, idx[k][live], hl, ifx[live], times[k][live])
            _put(hh, live, hl)
            verdict[live] = v
        rej = np.nonzero(verdict)[0]
        d.action[k[rej]] = 0
        d.drop[k[rej]] = verdict[rej]

    # -- load balancer ---------------------------------------------------------------
    def _lb_receive(self, lb: LoadBalancer, ports, idx, times) -> np.ndarray:
        b = self.batch
        notes = np.zeros(len(idx), np.int32)
        h = parse.parse(b.buf, b.start[idx], b.length[idx], ())
        vips = np.array(sorted(lb.vips), np.uint32)
        fast = (h.drop == 0) & ((h.flags & parse.IPV4) != 0) & ((h.flags & parse.L4) != 0) \
            & np.isin(h.ip_dst, vips) & (h.eth_dst == np.uint64(lb.mac)) & (h.ip_proto != 1)
        slow = np.nonzero(~fast)[0]
        if len(slow):
            notes[slow] = lb.receive(self.engine, ports[slow], self.to_pool(idx[slow]), times[slow])
        for vip in _values(h.ip_dst[fast]):
            k = np.nonzero(fast & (h.ip_dst == vip))[0]
            nodes, table = lb.vips[vip]
            fl = hashing.flow_hash(h.ip_src[k], h.ip_dst[k], h.sport[k], h.dport[k], h.ip_proto[k], 0)
            pick = maglev.lookup(table, fl)
            none = pick < 0
            if none.any():
                notes[k[none]] = self.note("lbnone", lambda: "drop: no healthy node behind the load balancer")
                self.drop(lb, idx[k[none]], Drop.SERVICE_NO_ENDPOINTS)
            ttl = ~none & (h.ttl[k] <= 1)
            if ttl.any():
                notes[k[ttl]] = self.note("lbttl", lambda: "drop: TTL_EXCEEDED")
                self.drop(lb, idx[k[ttl]], Drop.TTL_EXCEEDED)
            go = ~none & ~ttl
            for p in _values(pick[go]):
                kk = k[go & (pick == p)]
                name, mac = nodes[p]
                i = idx[kk]
                rewrite.decrement_ttl(b.buf, b.start[i] + h.l3_off[kk].astype(np.int64))
                rewrite.set_macs(b.buf, b.start[i], np.full(len(i), mac, np.uint64),
                                 np.full(len(i), lb.mac, np.uint64))
                notes[kk] = self.note(("lb", vip, name),
                                      lambda: f"load balancer: Maglev picks {name} for {ipv4.ntoa(vip)}")
                self.transmit(lb, lb.port.id, i, times[kk], notes[kk])
        return notes


def _values(x) -> list:
    """The distinct values of x, ascending (np.unique without a sort when
    they are all the same, the common case)."""
    if not len(x):
        return []
    if (x == x[0]).all():
        return [x[0].item()]
    return np.unique(x).tolist()


def _inverse(x):
    """(distinct values, inverse), as np.unique(return_inverse=True), without a
    sort when they are all the same."""
    if len(x) and (x == x[0]).all():
        return x[:1], np.zeros(len(x), np.int64)
    uniq, inv = np.unique(x, return_inverse=True)
    return uniq, inv.reshape(-1)


def _rows(h):
    """The record array behind a Headers' columns (parse writes one record per
    frame and the columns are views of it), or None."""
    base = h[0].base
    if not isinstance(base, np.ndarray):
        return None
    if base.dtype == parse._ROW:
        rows = base
    elif base.dtype == np.uint8 and base.ndim == 1 and len(base) == len(h[0]) * parse._ROW.itemsize:
        rows = base.view(parse._ROW)
    else:
        return None
    return rows if len(rows) == len(h[0]) else None


def _take(h, index) -> parse.Headers:
    if len(index) == len(h[0]) and (len(index) == 0 or (index[0] == 0 and index[-1] == len(index) - 1
                                                        and index.dtype != bool)):
        if not len(index) or np.array_equal(index, np.arange(len(index))):
            return h
    rows = _rows(h)
    if rows is not None:
        return parse._headers(rows[index])
    return parse.Headers(*(col[index] for col in h))


def _put(h, index, part) -> None:
    if part is h:
        return
    rows, prow = _rows(h), _rows(part)
    if rows is not None and prow is not None:
        rows[index] = prow
        return
    for col, p in zip(h, part):
        col[index] = p


def _tuple(rec):
    from emu.dataplane.nat import Tuple
    return Tuple(int(rec["orig_src"]), int(rec["orig_dst"]), int(rec["orig_sport"]), int(rec["orig_dport"]),
                 int(rec["proto"]))


def _ep(ip, port) -> str:
    return f"{ipv4.ntoa(int(ip))}:{int(port)}"


__all__ = ["Batch", "FastPath", "CTINFO_NAMES", "A_DNAT"]
