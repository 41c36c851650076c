"""Bulk traffic: N clients x M flows x K packets through an emulated cluster.

    t = Traffic(cluster, clients=["default/client"], target="web:80", protocol="tcp",
                flows=1000, packets=10, payload=64, rate_pps=None, capture="off")
    report = t.run(progress=lambda done, total: ...)

Targets: "svc:port" or "namespace/svc:port" (the Service's cluster IP),
"lb:svc:port" (its LoadBalancer IP, through the load balancer),
"nodeport:node-1:30080", "pod:namespace/name:port", or "a.b.c.d:port".
Clients: pod names ("default/client" or "client") or "external" (the host
on the underlay).

What a flow is (packets = K):
- TCP: handshake (SYN, SYN-ACK, ACK), K data segments of `payload` bytes
  client -> server each acknowledged by the server, teardown (FIN, FIN-ACK,
  ACK): 2K + 6 packets, each sent when the previous one arrives. A SYN
  without a SYN-ACK is sent again as Linux does (initial RTO 1 s doubling,
  tcp_syn_retries = 6: at 1, 3, 7, 15, 31 and 63 s; the connect fails at
  127 s); any other lost packet ends the flow, counted as broken.
- UDP: K datagrams client -> server, `interval_ns` apart, each echoed by the
  server: 2K packets (open loop: a lost datagram does not stop the flow;
  the flow is completed when its last echo arrives, broken otherwise).

Every flow ends completed or broken: completed + broken == flows.

The server side answers from the backend that received the flow, to the
address it saw (after NAT), as a socket would. A packet reaching another
backend than the flow's first one (its conntrack entry was flushed or
expired and kube-proxy picked again) is what a server without that
connection sees: the flow breaks (a real one would answer RST).

Frames come from templates (kernels.flow.fill_frames). Everything unusual
goes through the interactive devices, what the flow cache cannot carry
through the fast path (emu.bulk.fastpath), and the rest of a TCP flow
through the flow cache (emu.bulk.flowcache, kernels.replay): the SYN along
the path of a connection of the same client to the backend kube-proxy
picks for it (`_syns`), the SYN-ACK along the way back of a connection
with the same client path (one scout per path teaches it through the fast
path), then, the SYN and SYN-ACK having shown the path each way, the
handshake's ACK, data, ACKs and teardown; the same tables, each packet at
its own time. The cache runs
ahead of the window up to the engine's next event (HORIZON_NS at most);
what it changes commutes with the fast path's packets. `flow_cache=False`
leaves it out: then the bytes are the interactive engine's exactly (with
it, VXLAN outer IP ids of concurrent flows come in another order).
`engine="interactive"` sends every packet through the interactive engine
(the baseline, and the reference the tests compare with).

Virtual time: flows start `1 / flow rate` apart from the engine's current
time (flow rate = rate_pps / packets per flow; or spread over duration_ns;
or all at once), every answer leaves when its packet arrives, links add
their latency. Latency is one way, send to delivery, on the virtual clock.
"""
from __future__ import annotations

import functools
import gc
import struct
import time as wallclock
import weakref
from dataclasses import dataclass, field

import numpy as np

from emu.bulk.decide import A_DNAT
from emu.bulk.fastpath import FastPath
from emu.bulk.flowcache import FlowCache
from emu.errors import EmuError
from emu.wire import ipv4
from kernels import conntrack as ct
from kernels import distinct
from kernels import flow as fk
from kernels._memory import hugepages

TCP, UDP = 6, 17
SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08
TCP_KINDS = ("SYN", "FIN", "data", "ACK")   # the kinds of packet a TCP flow sends (their comments)
_SALT = 0x5DEECE66D
SYN_RTO_NS = 1_000_000_000      # TCP_TIMEOUT_INIT
SYN_RETRIES = 6                 # net.ipv4.tcp_syn_retries
HORIZON_NS = 100_000_000        # the flow cache runs at most this far ahead of the window


@dataclass
class Report:
    protocol: str
    packets: int = 0            # sent by the endpoints, both directions
    delivered: int = 0
    flows: int = 0
    completed: int = 0          # flows whose last packet arrived
    broken: int = 0
    wall_seconds: float = 0.0
    virtual_ns: int = 0
    backends: dict = field(default_factory=dict)
    drops: list = field(default_factory=list)
    conntrack: dict = field(default_factory=dict)
    latency_ns: tuple = (0, 0)
    handed_off: int = 0         # packets that took the interactive devices
    cached: int = 0             # packets the flow cache carried (emu.bulk.flowcache)
    flushed: int = 0            # conntrack entries deleted by a UDP flush

    @property
    def pps(self) -> float:
        return self.packets / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def cps(self) -> float:
        return self.completed / self.wall_seconds if self.wall_seconds else 0.0

    def rows(self) -> list[tuple[str, str]]:
        rows = [("protocol", self.protocol), ("flows", f"{self.flows} ({self.completed} completed, "
                                                      f"{self.broken} broken)"),
                ("packets", f"{self.packets} sent, {self.delivered} delivered"),
                ("wall time", f"{self.wall_seconds:.3f} s"),
                ("packets/s (wall)", f"{self.pps:,.0f}"), ("connections/s (wall)", f"{self.cps:,.0f}"),
                ("virtual time", f"{self.virtual_ns / 1e6:.3f} ms"),
                ("latency p50 / p99 (virtual)", f"{self.latency_ns[0] / 1e3:.1f} us / "
                                                f"{self.latency_ns[1] / 1e3:.1f} us"),
                ("flow cache packets", str(self.cached)),
                ("slow path packets", str(self.handed_off))]
        for b, n in sorted(self.backends.items()):
            rows.append((f"backend {b}", f"{n} flows"))
        for dev, reason, n in self.drops:
            rows.append((f"drops {dev}", f"{reason} {n}"))
        for node, (live, cap) in sorted(self.conntrack.items()):
            rows.append((f"conntrack {node}", f"{live} / {cap}"))
        if self.flushed:
            rows.append(("conntrack flushed (UDP)", str(self.flushed)))
        return rows


def _tcp_from_server(s) -> np.ndarray:
    """Which TCP steps the server sends: the SYN-ACK, the ACKs of the data
    (even steps from 4) and the FIN-ACK (4 + 2K)."""
    return (s == 1) | ((s % 2 == 0) & (s >= 4))


@functools.cache
def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep memory the process frees for its next
    allocations (M_TRIM_THRESHOLD 256 MiB) and to serve arrays up to 32 MiB
    from that heap (M_MMAP_THRESHOLD, its maximum), instead of handing
    pages back to the OS and faulting fresh ones in for the next array of
    the same size: a bulk run makes and drops many arrays of a batch's size,
    and a first touch costs 2-10 us per 4 KiB page on the 2-core VM (the new
    connections benchmark: 20-30 k page faults a run, 10 k with this). For
    the rest of the process: freed memory up to the threshold is not
    returned to the OS. Nothing happens without glibc. Once per process."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)   # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)    # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def set_conntrack_max(cluster, max_connections: int, nodes=None) -> None:
    """sysctl net.netfilter.nf_conntrack_max on nodes (all by default): their
    tables are made again with that capacity; only while they are empty."""
    for name, node in cluster.fabric.nodes.items():
        if nodes is not None and name not in nodes:
            continue
        c = node.ns.conntrack
        if ct.count(c.table):
            raise EmuError(f"{name}: conntrack holds connections; set its size before traffic")
        c.table = ct.make_table(max_connections, int(c.table.seed))


def udp_endpoints(cluster) -> dict:
    """(vip or ('nodeport', port)) -> endpoint IPs kube-proxy uses, for UDP services."""
    out: dict = {}
    proxy = next(iter(cluster.proxies.values()))
    for sp in proxy.service_ports:
        if sp.proto != "udp":
            continue
        eps = {e.ip for e in sp.endpoints if e.ready or (e.serving and e.terminating)}
        for vip in (sp.cluster_ip, *sp.external_ips, *sp.lb_ips):
            out.setdefault(vip, set()).update(eps)
        if sp.node_port:
            out.setdefault(("nodeport", sp.node_port), set()).update(eps)
    return out


def flush_stale_udp(cluster, before: dict) -> int:
    """What kube-proxy does after a sync for UDP Services whose endpoints went
    away (pkg/proxy/conntrack cleanup): `conntrack -D -p udp --orig-dst VIP
    --dst-nat ENDPOINT` on every node (node ports: by port). Returns entries deleted."""
    after = udp_endpoints(cluster)
    removed = 0
    for key, eps in before.items():
        gone = eps - after.get(key, set())
        for ep in gone:
            for node in cluster.fabric.nodes.values():
                table = node.ns.conntrack.table
                if isinstance(key, tuple):
                    removed += ct.flush_matching(table, proto=17, orig_dport=key[1], reply_src=ipv4.aton(ep))
                else:
                    removed += ct.flush_matching(table, proto=17, orig_dst=ipv4.aton(key), reply_src=ipv4.aton(ep))
    return removed


class Traffic:
    def __init__(self, cluster, clients, target: str, protocol: str = "tcp", flows: int = 1, packets: int = 1,
                 payload: int = 64, rate_pps: float | None = None, duration_ns: int | None = None,
                 capture="off", engine: str = "bulk", window_ns: int | None = 20_000,
                 interval_ns: int = 100_000, flush_udp: bool = False, seed: int | None = None,
                 flow_cache: bool = True):
        self.cluster = cluster
        self.eng = cluster.engine
        self.protocol = protocol.lower()
        if self.protocol not in ("tcp", "udp"):
            raise EmuError(f"protocol must be tcp or udp, got {protocol!r}")
        self.proto = TCP if self.protocol == "tcp" else UDP
        if engine not in ("bulk", "interactive"):
            raise EmuError(f"engine must be 'bulk' or 'interactive', got {engine!r}")
        self.mode = engine
        self.k = int(packets)
        self.payload = int(payload)
        if self.k < 1 or flows < 1:
            raise EmuError("flows and packets must be at least 1")
        if not 8 <= self.payload <= 1400:
            raise EmuError("payload must be 8..1400 bytes (8: the flow tag every datagram carries)")
        self.window = window_ns
        self.interval = int(interval_ns)
        self.flush_udp = flush_udp
        self.flow_cache = flow_cache
        self.rate_pps, self.duration_ns = rate_pps, duration_ns
        self.seed = cluster.seed if seed is None else seed
        self._target(target)
        self._clients(clients if isinstance(clients, (list, tuple)) else [clients], int(flows))
        self._capture(capture)
        self.steps = 2 * self.k + 6 if self.proto == TCP else 2 * self.k
        self.template = (np.arange(self.payload + 8) * 7 + 1).astype(np.uint8)
        self._events: list = []
        self.flushed = 0
        self.fast = None
        self._pending = []
        self._by_peer = None
        self._kind_codes = None

    # -- setup -----------------------------------------------------------------------
    def _target(self, spec: str) -> None:
        st = self.cluster.state
        parts = spec.split(":")
        try:
            if parts[0] == "nodeport" and len(parts) == 3:
                self.vip, self.vport = ipv4.aton(st.nodes[parts[1]].ip), int(parts[2])
            elif parts[0] in ("lb", "loadbalancer") and len(parts) == 3:
                info = self._service(parts[1])
                if not info.load_balancer_ips:
                    raise EmuError(f"service {parts[1]} has no LoadBalancer IP")
                self.vip, self.vport = ipv4.aton(info.load_balancer_ips[0]), int(parts[2])
            elif parts[0] == "pod" and len(parts) == 3:
                ns, _, name = parts[1].rpartition("/")
                self.vip, self.vport = ipv4.aton(st.pods[(ns or "default", name)].ip), int(parts[2])
            elif len(parts) == 2 and parts[0].count(".") == 3:
                self.vip, self.vport = ipv4.aton(parts[0]), int(parts[1])
            elif len(parts) == 2:
                self.vip, self.vport = ipv4.aton(self._service(parts[0]).cluster_ip), int(parts[1])
            else:
                raise ValueError
        except (KeyError, ValueError):
            raise EmuError(f"traffic target {spec!r}: expected svc:port, ns/svc:port, lb:svc:port, "
                           f"nodeport:NODE:PORT, pod:ns/name:PORT or IP:PORT") from None
        self.target = spec

    def _service(self, name: str):
        ns, _, svc = name.rpartition("/")
        try:
            return self.cluster.state.services[(ns or "default", svc)]
        except KeyError:
            raise EmuError(f"no service {name!r}") from None

    def _clients(self, names, m: int) -> None:
        c = self.cluster
        self.client_ns = []
        for name in names:
            if name == "external":
                self.client_ns.append(c.external)
            else:
                ns, _, pod = name.rpartition("/")
                key = (ns or "default", pod)
                if key not in c.fabric.pods:
                    raise EmuError(f"traffic client {name!r}: no such running pod")
                self.client_ns.append(c.fabric.pods[key])
        self.client_names = list(names)
        if m > 64511:
            raise EmuError("at most 64511 flows per client (one source port each)")
        n = len(names) * m
        self.n = n
        self.f_client = np.repeat(np.arange(len(names)), m)
        self.f_ns = np.array([self.client_ns[i].id for i in self.f_client.tolist()], np.int64) if n < 2_000_000 \
            else np.repeat(np.array([x.id for x in self.client_ns]), m)
        ips = np.array([x.iface("eth0").addrs[0][0] for x in self.client_ns], np.uint32)
        self.f_ip = ips[self.f_client]
        base = 32768 if m <= 60999 - 32768 + 1 else 1024
        self.f_sport = (base + np.tile(np.arange(m), len(names))).astype(np.uint16)
        h = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(self.seed * _SALT)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
        self.isn_c = (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        self.isn_s = ((h >> np.uint64(16)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        self.ipid_c = ((h >> np.uint64(7)) & np.uint64(0xFFFF)).astype(np.uint16)
        self.ipid_s = ((h >> np.uint64(23)) & np.uint64(0xFFFF)).astype(np.uint16)
        # what the server side learns from the flow's first packet
        self.srv_ns = np.full(n, -1, np.int64)
        self.srv_ip = np.zeros(n, np.uint32)
        self.srv_port = np.zeros(n, np.uint16)
        self.peer_ip = np.zeros(n, np.uint32)
        self.peer_port = np.zeros(n, np.uint16)
        self.done = np.zeros(n, bool)
        self.broken = np.zeros(n, bool)
        self.c_got = np.full(n, -1, np.int64)     # TCP: the last step the client received
        self.syn_tries = np.zeros(n, np.int64)    # SYNs sent again

    def _capture(self, capture) -> None:
        if capture in ("off", None, False, 0):
            self.cap = np.zeros(self.n, bool)
            self.capture = "off"
        elif capture in ("full", True):
            self.cap = np.ones(self.n, bool)
            self.capture = "full"
        elif isinstance(capture, int) and capture > 0:
            self.cap = np.arange(self.n) % capture == 0
            self.capture = capture
        else:
            raise EmuError(f"capture must be 'off', 'full' or N (every Nth flow), got {capture!r}")

    # -- the script --------------------------------------------------------------------
    def script(self, f, s):
        """Per packet (flow f, step s): from_server, tcp flags, seq, ack, payload length."""
        f = np.asarray(f, np.int64)
        s = np.asarray(s, np.int64)
        n, k, p = len(s), self.k, self.payload
        if self.proto == UDP:
            server = (s % 2) == 1
            return server, np.zeros(n, np.uint8), np.zeros(n, np.uint32), np.zeros(n, np.uint32), \
                np.full(n, p, np.uint16)
        ic = self.isn_c[f].astype(np.int64)
        isv = self.isn_s[f].astype(np.int64)
        flags = np.full(n, ACK, np.uint8)
        seq = np.zeros(n, np.int64)
        ack = np.zeros(n, np.int64)
        plen = np.zeros(n, np.uint16)
        server = _tcp_from_server(s)
        j = (s - 3) // 2
        c_data = (s >= 3) & (s < 3 + 2 * k) & (s % 2 == 1)
        s_ack = (s >= 4) & (s < 4 + 2 * k) & (s % 2 == 0)
        sel = s == 0
        flags[sel], seq[sel] = SYN, ic[sel]
        sel = s == 1
        flags[sel], seq[sel], ack[sel] = SYN | ACK, isv[sel], ic[sel] + 1
        sel = s == 2
        seq[sel], ack[sel] = ic[sel] + 1, isv[sel] + 1
        flags[c_data] = PSH | ACK
        seq[c_data] = ic[c_data] + 1 + j[c_data] * p
        ack[c_data] = isv[c_data] + 1
        plen[c_data] = p
        jj = (s - 4) // 2
        seq[s_ack], ack[s_ack] = isv[s_ack] + 1, ic[s_ack] + 1 + (jj[s_ack] + 1) * p
        sel = s == 3 + 2 * k
        flags[sel], seq[sel], ack[sel] = FIN | ACK, ic[sel] + 1 + k * p, isv[sel] + 1
        sel = s == 4 + 2 * k
        flags[sel], seq[sel], ack[sel] = FIN | ACK, isv[sel] + 1, ic[sel] + 2 + k * p
        sel = s == 5 + 2 * k
        seq[sel], ack[sel] = ic[sel] + 2 + k * p, isv[sel] + 2
        return server, flags, (seq & 0xFFFFFFFF).astype(np.uint32), (ack & 0xFFFFFFFF).astype(np.uint32), plen

    def _frames(self, buf, starts, f, s):
        """Fill frames for packets (f, s) at starts; returns (lengths, source namespace ids)."""
        server, flags, seq, ack, plen = self.script(f, s)
        src = np.where(server, self.srv_ip[f], self.f_ip[f]).astype(np.uint32)
        dst = np.where(server, self.peer_ip[f], self.vip).astype(np.uint32)
        sport = np.where(server, self.srv_port[f], self.f_sport[f]).astype(np.uint16)
        dport = np.where(server, self.peer_port[f], self.vport).astype(np.uint16)
        ipid = (np.where(server, self.ipid_s[f], self.ipid_c[f]).astype(np.int64) + s) & 0xFFFF
        tag = (f.astype(np.uint64) << np.uint64(16)) | s.astype(np.uint64)
        lengths = fk.fill_frames(buf, starts, np.full(len(f), self.proto, np.uint8), src, dst, sport, dport, seq,
                                 ack, flags, ipid.astype(np.uint16), self.template, plen, tag)
        ns_ids = np.where(server, self.srv_ns[f], self.f_ns[f])
        return lengths, ns_ids, flags

    def send_codes(self, fast, batch, idx) -> np.ndarray:
        """First-hop note codes (fast.code) per packet: one per kind of packet."""
        if self._kind_codes is None or self._kind_codes[0] is not fast:
            kinds = [self._kind_text(k) for k in range(4 if self.proto == TCP else 2)]
            self._kind_codes = (fast, np.array([fast.code(t) for t in kinds], np.int64))
        return self._kind_codes[1][self._kinds(batch.flow[idx], batch.step[idx])]

    def _kinds(self, f, s) -> np.ndarray:
        s = np.asarray(s, np.int64)
        if self.proto == UDP:
            return (s % 2).astype(np.int64)
        flags = self.script(np.asarray(f, np.int64), s)[1]
        return np.where(flags & SYN, 0, np.where(flags & FIN, 1, np.where(flags & PSH, 2, 3)))

    def _kind_text(self, k) -> str:
        if self.proto == UDP:
            return "bulk udp " + ("echo" if k else "datagram")
        return "bulk tcp " + TCP_KINDS[k]

    def _note_for(self, f, s) -> str:
        return self._kind_text(int(self._kinds([f], [s])[0]))

    # -- endpoints (called by the fast path and by the socket handlers) -----------------
    def owns_many(self, ns, f, proto, port) -> np.ndarray:
        ok = (f >= 0) & (proto == self.proto)
        fi = np.where(ok, f, 0)
        client = ok & (self.f_ns[fi] == ns.id) & (port == self.f_sport[fi])
        server = ok & (port == self._servers.get(ns.id, -1))
        return client | server

    def owns(self, ns, f, proto, port) -> bool:
        if f < 0 or proto != self.proto:
            return False
        if ns.id == self.f_ns[f] and port == self.f_sport[f]:
            return True
        return ns.id in self._servers and port == self._servers[ns.id]

    def dropped(self, batch, idx) -> None:
        f = batch.flow[idx]
        keep = (f >= 0) & (batch.step[idx] != 0)  # a lost SYN is sent again (_syn_checks)
        if self.proto == TCP:
            self.broken[f[keep]] = True

    def handed_off(self, batch, idx) -> None:
        for f in distinct.values(batch.flow[idx]).tolist():
            if f >= 0:
                self._bind_client(f)

    def deliver(self, batch, idx, ns, times, h) -> None:
        f = batch.flow[idx]
        s = batch.step[idx].astype(np.int64)
        self._lat.append(times - batch.sent[idx])
        self._arrived(f, s, times, ns, h.ip_src, h.sport, h.ip_dst, h.dport)

    def _arrived(self, f, s, times, ns, src, sport, dst, dport) -> None:
        self.delivered += len(f)
        if len(times):
            self._last = max(self._last, int(np.max(times)))
        at_client = (self.f_ns[f] == ns.id) & (dport == self.f_sport[f])
        srv = ~at_client
        if srv.any():
            fs, ss = f[srv], s[srv]
            first = self.srv_ns[fs] < 0
            moved = ~first & (self.srv_ns[fs] != ns.id)
            if self.proto == TCP:  # another backend: it has no such connection (a real one sends RST)
                self.broken[fs[moved]] = True
                ok = ~moved
            else:                  # UDP has no connection: the new backend answers
                ok = np.ones(len(fs), bool)
                self.moved += int(moved.sum())
            fs, ss, t = fs[ok], ss[ok], times[srv][ok]
            self.srv_ns[fs] = ns.id
            self.srv_ip[fs], self.srv_port[fs] = dst[srv][ok], dport[srv][ok]
            self.peer_ip[fs], self.peer_port[fs] = src[srv][ok], sport[srv][ok]
            nf = fs[first[ok]]
            self._backend_hits[ns.id] = self._backend_hits.get(ns.id, 0) + len(distinct.values(nf))
            nxt = ss + 1
            live = (nxt < self.steps) & ~self.broken[fs]
            self._schedule(fs[live], nxt[live], t[live])
            self._finished(fs[ss == self.steps - 1])
        if at_client.any():
            fc, sc, t = f[at_client], s[at_client], times[at_client]
            np.add.at(self.echoes, fc, 1)
            if self.proto == TCP:
                # a second SYN-ACK (the server answering a retransmitted SYN) is not news
                new = sc > self.c_got[fc]
                fc, sc, t = fc[new], sc[new], t[new]
                np.maximum.at(self.c_got, fc, sc)
                nxt = sc + 1
                live = (nxt < self.steps) & ~self.broken[fc]
                self._schedule(fc[live], nxt[live], t[live])
            self._finished(fc[sc == self.steps - 1])

    def _finished(self, f) -> None:
        self.done[f] = True
        if self.fast is not None and self.fast.cache is not None and len(f):
            self.fast.cache.forget(f)

    def _schedule(self, f, s, t) -> None:
        if not len(f):
            return
        if self.mode == "interactive":
            for fi, si, ti in zip(f.tolist(), s.tolist(), t.tolist()):
                self._send_one(fi, si, ti)
                if si == 0 and self.proto == TCP:
                    self.eng.at(ti + (SYN_RTO_NS << int(self.syn_tries[fi])), self._syn_timer(fi))
            return
        self._pending.append((np.asarray(f, np.int64), np.asarray(s, np.int64), np.asarray(t, np.int64)))

    # -- SYN retransmission ---------------------------------------------------------------------
    def _syn_due(self, f, t):
        """Retransmission timers that fire for flows f at times t: the flows
        still without a SYN-ACK send their SYN again, or give up after the last
        retry. Returns the (flows, times) to send again."""
        waiting = (self.c_got[f] < 1) & ~self.broken[f] & ~self.done[f]
        f, t = f[waiting], t[waiting]
        last = self.syn_tries[f] >= SYN_RETRIES
        self.broken[f[last]] = True
        f, t = f[~last], t[~last]
        self.syn_tries[f] += 1
        self.syn_sent += len(f)
        self.total += len(f)      # the progress bar counts them too
        return f, t

    def _syn_timer(self, f):
        def fire(engine):
            again, t = self._syn_due(np.array([f], np.int64), np.array([engine.now], np.int64))
            if len(again):
                self._schedule(again, np.zeros(len(again), np.int64), t)
        return fire

    def _syn_checks_due(self, end) -> None:
        """Bulk: the SYN timers before `end`, in one go."""
        f, t = self._checks
        due = t < end
        if not due.any():
            return
        self._checks = (f[~due], t[~due])
        again, at = self._syn_due(f[due], t[due])
        if len(again):
            self._schedule(again, np.zeros(len(again), np.int64), at)

    def _next_check(self):
        f, t = self._checks
        if not len(f):
            return None
        live = (self.c_got[f] < 1) & ~self.broken[f] & ~self.done[f]
        if not live.all():
            self._checks = f, t = f[live], t[live]
        return int(t.min()) if len(t) else None

    # -- sockets for packets that took the interactive devices -------------------------------
    def _bind_servers(self) -> None:
        """The bulk server listens on the target's backends (their pod port)."""
        self._servers = {}
        c = self.cluster
        st = c.state
        by_ip = {p.ip: key for key, p in st.pods.items() if p.ip}
        targets = []
        proxy = next(iter(c.proxies.values()))
        vip = ipv4.ntoa(self.vip)
        node_ips = {n.ip for n in st.nodes.values()}
        for sp in proxy.service_ports:
            if sp.proto != self.protocol:
                continue
            if (vip in (sp.cluster_ip, *sp.external_ips, *sp.lb_ips) and sp.port == self.vport) or \
                    (vip in node_ips and sp.node_port == self.vport):
                targets += [(e.ip, e.port) for e in sp.endpoints]
        if not targets:
            targets = [(vip, self.vport)]
        for ip, port in targets:
            key = by_ip.get(ip)
            if key is None or key not in c.fabric.pods:
                continue
            ns = c.fabric.pods[key]
            self._servers[ns.id] = port
            self._pod_of[ns.id] = f"{key[0]}/{key[1]}"
            if ns.sockets.get((self.proto, port)) != self._server_handler:
                self._bound.append((ns, (self.proto, port), ns.sockets.get((self.proto, port))))
                ns.bind(self.proto, port, self._server_handler)

    def _bind_client(self, f: int) -> None:
        ns = self.client_ns[int(self.f_client[f])]
        key = (self.proto, int(self.f_sport[f]))
        if ns.sockets.get(key) != self._client_handler:
            self._bound.append((ns, key, ns.sockets.get(key)))
            ns.bind(self.proto, int(self.f_sport[f]), self._client_handler)

    def _parse(self, frame, l3):
        ihl = (frame[l3] & 0x0F) * 4
        src, dst = struct.unpack_from("!II", frame, l3 + 12)
        ipid = struct.unpack_from("!H", frame, l3 + 4)[0]
        sport, dport = struct.unpack_from("!HH", frame, l3 + ihl)
        return src, dst, sport, dport, ipid

    def _client_handler(self, ns, frame, l3, t) -> None:
        src, dst, sport, dport, ipid = self._parse(frame, l3)
        hits = np.nonzero((self.f_ns == ns.id) & (self.f_sport == dport))[0]
        if not len(hits):
            self._pass_on(ns, (self.proto, dport), frame, l3, t)
            return
        f = int(hits[0])
        s = (ipid - int(self.ipid_s[f])) & 0xFFFF
        self._arrived(np.array([f]), np.array([s]), np.array([t], np.int64), ns, np.array([src], np.uint32),
                      np.array([sport], np.uint16), np.array([dst], np.uint32), np.array([dport], np.uint16))

    def _pass_on(self, ns, key, frame, l3, t) -> None:
        """A packet for a port the traffic borrowed that is not one of its
        flows: to whatever was bound there before (an app in the pod)."""
        before = next((b for n, k, b in self._bound if n is ns and k == key), None)
        if before is not None:
            before(ns, frame, l3, t)

    def _server_handler(self, ns, frame, l3, t) -> None:
        src, dst, sport, dport, ipid = self._parse(frame, l3)
        f = self._flow_of_peer(src, sport, dst, dport)
        if f < 0:  # not a bulk flow (a curl during the traffic): the pod's own server
            self._pass_on(ns, (self.proto, dport), frame, l3, t)
            return
        s = (ipid - int(self.ipid_c[f])) & 0xFFFF
        self._arrived(np.array([f]), np.array([s]), np.array([t], np.int64), ns, np.array([src], np.uint32),
                      np.array([sport], np.uint16), np.array([dst], np.uint32), np.array([dport], np.uint16))

    def _flow_of_peer(self, src, sport, dst, dport) -> int:
        if self._by_peer is None:
            keys = (self.f_ip.astype(np.uint64) << np.uint64(16)) | self.f_sport.astype(np.uint64)
            order = np.argsort(keys, kind="stable")
            self._by_peer = (keys[order], order)
        keys, order = self._by_peer
        want = np.uint64((src << 16) | sport)
        i = int(np.searchsorted(keys, want))
        if i < len(keys) and keys[i] == want:
            return int(order[i])
        # masqueraded: the node that owns `src` knows the original tuple
        for node in self.cluster.fabric.nodes.values():
            if src in node.ns._local:
                u = lambda v, d: np.array([v], d)  # noqa: E731
                hit = ct.lookup(node.ns.conntrack.table, u(0, np.uint16), u(dst, np.uint32), u(src, np.uint32),
                                u(dport, np.uint16), u(sport, np.uint16), u(self.proto, np.uint8), self.eng.now)
                c = int(hit.conn[0])
                if c >= 0:
                    rec = node.ns.conntrack.table.conns[c]
                    return self._flow_of_peer(int(rec["orig_src"]), int(rec["orig_sport"]), 0, 0) \
                        if (int(rec["orig_src"]), int(rec["orig_sport"])) != (src, sport) else -1
        return -1

    # -- events during the run ----------------------------------------------------------------
    def at(self, time_ns: int, change) -> None:
        """Run change(cluster) at a virtual time during the run (fail a node,
        scale, delete a pod); with flush_udp, kube-proxy then deletes the UDP
        conntrack entries of the endpoints that went away."""
        self._events.append((int(time_ns), change))

    def _event(self, change):
        def fire(engine):
            before = udp_endpoints(self.cluster)
            change(self.cluster)
            self._bind_servers()
            if self.flush_udp:
                self.flushed += flush_stale_udp(self.cluster, before)
        return fire

    # -- running ----------------------------------------------------------------------------------
    def _start_times(self) -> np.ndarray:
        t0 = self.eng.now + 1
        per_flow = self.steps
        if self.rate_pps:
            gap = 1e9 * per_flow / float(self.rate_pps)
        elif self.duration_ns:
            gap = float(self.duration_ns) / self.n
        else:
            gap = 1.0
        return t0 + (np.arange(self.n) * gap).astype(np.int64)

    def run(self, progress=None) -> Report:
        eng = self.eng
        wall = wallclock.perf_counter()
        drops_before = eng.drops.copy()
        self._pod_of: dict[int, str] = {}
        self._bound: list = []
        self._backend_hits: dict[int, int] = {}
        self._lat: list[np.ndarray] = []
        self.delivered = 0
        self.sent = 0
        self.moved = 0
        self._last = self.eng.now
        self.echoes = np.zeros(self.n, np.int64)
        self.syn_sent = 0
        self.syns_carried = 0      # SYNs the flow cache carried (`_syns`)
        self._waiting: list = []   # SYN-ACKs waiting for a scout (`_wait`)
        self._scouts: dict[int, int] = {}
        self._checks = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._bind_servers()
        for t, change in self._events:
            eng.at(t, self._event(change))
        start = self._start_times()
        v0 = eng.now
        if self.proto == TCP:
            first = (np.arange(self.n), np.zeros(self.n, np.int64), start)
        else:  # open loop: every datagram of the client at its time
            f = np.repeat(np.arange(self.n), self.k)
            j = np.tile(np.arange(self.k), self.n)
            first = (f, 2 * j, start[f] + j * self.interval)
        self.total = self.n * self.steps
        taps = eng.taps
        if self.mode == "interactive":
            if self.capture == "off":
                eng.taps = None
            for f in range(self.n):
                self._bind_client(f)
            order = np.lexsort((first[0], first[2]))
            self._schedule(first[0][order], first[1][order], first[2][order])
            eng.run()
            eng.taps = taps
        else:
            if self.capture != "off" and taps is None:
                from emu.cluster import default_taps
                eng.capture(default_taps(eng))
            # the run allocates many short-lived arrays: with the collector on, each of
            # its full passes walks every object of the process (costly after a big
            # heap, Scapy's say), and a bulk run makes no cycles to collect
            collecting = gc.isenabled()
            gc.disable()
            # before the run's arrays are made: the flow cache's (its references: 8 MB for
            # 10,000 flows) took a huge page each 2 MB, every first touch a ~7 ms stall
            huge = hugepages(False)
            _keep_freed_memory()
            try:
                # the fast path sees this generator through a weak proxy: no cycle, so the run's
                # buffers (the batch, the flow cache: tens of MB) are freed with it, not at the
                # collector's next full pass, and the next run reuses that memory instead of
                # faulting in fresh pages (~3 us each on the VM; five runs in one process:
                # 10,000 faults a run before, 3,000 after)
                self.fast = FastPath(eng, weakref.proxy(self), 14 + 20 + 20 + self.payload + 50,
                                     window_ns=self.window)
                cache = None
                if self.flow_cache and self.proto == TCP:
                    cache = self.fast.cache = FlowCache(eng, self.n, payload=self.template[:self.payload],
                                                        kinds={k: self._kind_text(i) for i, k in enumerate(TCP_KINDS)})
                    self._token = (eng.events, self.fast.handed_off)   # the cache is new: nothing stale
                    self._inherit(cache)
                self._pending = [first]
                self._loop(progress)
                # the flow cache ran ahead of the last window: the clock goes on to
                # the last delivery, as it would have with every packet in a window
                eng.run(until_ns=max(eng.now, self._last))
                if cache is not None:   # for the next run (`_inherit`)
                    eng.bulk_legacy = (self._rules(), cache.legacy([ns.id for ns in self.client_ns]))
            finally:
                hugepages(huge)
                if collecting:
                    gc.enable()
        virtual = max(self._last - v0, 0)
        self.broken |= ~self.done   # a flow that did not finish is broken: none is silently lost
        for ns, key, before in reversed(self._bound):  # give the ports back as they were
            if before is None:
                ns.sockets.pop(key, None)
            else:
                ns.sockets[key] = before
        report = self._report(wallclock.perf_counter() - wall, drops_before, virtual)
        if progress is not None:
            progress(self.sent, self.total)
        return report

    def _send_one(self, f, s, t) -> None:
        """Interactive: one packet through Netns.send_ip at its time."""
        buf = np.zeros(2048, np.uint8)
        lengths, ns_ids, _ = self._frames(buf, np.array([64], np.int64), np.array([f]), np.array([s]))
        ns = self.eng.devices[int(ns_ids[0])]
        frame = buf[64 + 14: 64 + int(lengths[0])].tobytes()
        self.sent += 1
        ns.send_ip(self.eng, frame, int(t), note=self._note_for(f, s))

    def _loop(self, progress) -> None:
        eng = self.eng
        w = self.window or 20_000
        while True:
            pend_t = min((int(p[2].min()) for p in self._pending if len(p[2])), default=None)
            te = eng._next_packet_time()
            tt = eng._timers[0][0] if eng._timers else None
            tc = self._next_check()
            cands = [x for x in (pend_t, te, tt, tc, self.fast.next_time()) if x is not None]
            if not cands:
                if self._waiting:   # nothing left to bring their scouts back
                    self._release(everything=True)
                    continue
                break
            t = min(cands)
            end = t + w
            if tt is not None and tt > t:
                end = min(end, tt)
            if tc is not None and tc < end:
                self._syn_checks_due(end)
            eng.run(until_ns=end - 1)
            while self._take(end):
                self.fast.run(until=end)
            self.fast.run(until=end)
            if progress is not None:
                progress(self.sent, self.total)

    def _take(self, end):
        self._release()
        if not self._pending:
            return None
        f = np.concatenate([p[0] for p in self._pending])
        s = np.concatenate([p[1] for p in self._pending])
        t = np.concatenate([p[2] for p in self._pending])
        now = t < end
        if not now.any():
            self._pending = [(f, s, t)]
            return None
        self._pending = [(f[~now], s[~now], t[~now])]
        f, s, t = f[now], s[now], t[now]
        alive = ~self.broken[f] | (self.proto == UDP)
        f, s, t = f[alive], s[alive], t[alive]
        if self.fast.cache is not None:
            f, s, t = self._replay(f, s, t, end)
        if not len(f):
            return None
        order = np.lexsort((f, t))
        f, s, t = f[order], s[order], t[order]
        if self.proto == TCP:
            syn = s == 0
            if syn.any():
                fs = f[syn]
                self._checks = (np.concatenate([self._checks[0], fs]),
                                np.concatenate([self._checks[1], t[syn] + (SYN_RTO_NS << self.syn_tries[fs])]))
        n = len(f)
        b = self.fast.batch
        idx = b.alloc(n)
        lengths, ns_ids, _ = self._frames(b.buf, b.start[idx], f, s)
        b.length[idx] = lengths
        b.flow[idx], b.step[idx] = f, s
        b.sent[idx] = t
        b.cap[idx] = self.cap[f]
        if self.fast.cache is not None:
            self._learners(b, idx, f, s)
        pool = self.eng.pool
        b.pkt_id[idx] = np.arange(pool._next_id, pool._next_id + n)
        pool._next_id += n
        self.sent += n
        groups, times = {}, {}
        for nid in np.unique(ns_ids).tolist():
            sel = np.nonzero(ns_ids == nid)[0]
            if nid < 0:
                b.release(idx[sel])
                continue
            groups[int(nid)], times[int(nid)] = idx[sel], t[sel]
        self.fast.send(groups, times)
        return True

    # -- the flow cache (emu.bulk.flowcache) ---------------------------------------------------
    def _steady(self, s) -> np.ndarray:
        """TCP steps the flow cache may carry: data segments and their ACKs."""
        return (s >= 3) & (s < 3 + 2 * self.k)

    def _replay(self, f, s, t, end):
        """Carry what the flow cache can of the items due before `end`; the
        rest (returned) goes down the fast path, or waits when it is due later."""
        cache = self.fast.cache
        token = (self.eng.events, self.fast.handed_off)
        if token != self._token:   # the tables moved under the programs
            cache.stale(self.fast.batch)
            self._token = token
        cache.compile()
        cache.learn_plans(self)
        f, s, t = self._syns(f, s, t, end)
        f, s, t = self._synacks(f, s, t, end)
        key = 2 * f + _tcp_from_server(s)
        go = (s >= 1) & (s < self.steps) & cache.has(key)
        if go.any():
            g = np.nonzero(go)[0]
            s2, t2, sent, lat, last = cache.run(self, f[g], s[g], t[g], end, self._horizon(end))
            left = (s2 == 1) & (s[g] == 1)
            if left.any():   # SYN-ACKs the kernel did not carry: the fast path's, and it learns their way
                cache.unadopt(f[g][left])
            self._carried(sent, lat, last)
            s, t = s.copy(), t.copy()
            s[g], t[g] = s2, t2
        finished = s >= self.steps   # (the SYNs' items too: `_syns` carries them on)
        if finished.any():    # the last ACK arrived
            self._finished(f[finished])
            f, s, t = f[~finished], s[~finished], t[~finished]
        later = t >= end
        if later.any():
            self._pending.append((f[later], s[later], t[later]))
        now = ~later
        return f[now], s[now], t[now]

    def _syns(self, f, s, t, end):
        """SYNs due of uncaptured flows take the path of a flow with the same
        client and backend (FlowCache.adopt_syns), once kube-proxy's pick for
        them is known: made here, ahead, where its rules need no order
        (Decider.stateless; iptables' random pick is a hash of the packet and
        its time at the rule, the same the fast path would draw). The kernel
        carries them on (`_syns_carried`); those it leaves go down the fast path.
        Other SYNs go down the fast path, and teach: those of a client not yet
        seen reaching kube-proxy, and those to a backend without a path yet
        (a run on a quiet engine starts with what the last one learned:
        `_inherit`). None waits: a path a SYN has not shown may be cold (a
        neighbour to resolve, its queue to fill), and that depends on order."""
        cache = self.fast.cache
        due = np.nonzero((s == 0) & ~self.cap[f] & ~cache.has(2 * f))[0]
        if not len(due):
            return f, s, t
        fd, td = f[due], t[due]
        client = self.f_client[fd]
        go = np.zeros(len(due), bool)                  # down the fast path
        adopt = np.zeros(len(due), bool)
        server = np.zeros(len(due), np.int64)
        for c in np.flatnonzero(np.bincount(client)).tolist():
            mine = np.nonzero(client == c)[0]
            hook = cache.hooks.get(c)
            if hook is None:   # not seen reaching kube-proxy yet: down the fast path (it teaches)
                go[mine] = True
                continue
            proxier, latency = hook
            decider = self.fast._decider(proxier)
            n = len(mine)
            src, proto = self.f_ip[fd[mine]], np.full(n, self.proto, np.uint8)
            dst, dport = np.full(n, self.vip, np.uint32), np.full(n, self.vport, np.uint16)
            if not decider.stateless(src, proto, dst, dport, "PREROUTING"):
                go[mine] = True
                continue
            act, ip, port, masq, _ = decider.decide(src, proto, dst, dport, self.f_sport[fd[mine]],
                                                    td[mine] + latency, "PREROUTING")
            ok = (act == A_DNAT) & ~masq
            go[mine[~ok]] = True
            mine, ip, port = mine[ok], ip[ok], port[ok]
            took, srv = cache.adopt_syns(self, fd[mine], ip, port)
            adopt[mine[took]] = True
            server[mine] = srv
            g = fd[mine[took]]   # what their server will see (`_arrived`), for their SYN-ACKs' plans
            self.srv_ns[g], self.srv_ip[g], self.srv_port[g] = srv[took], ip[took], port[took]
            self.peer_ip[g], self.peer_port[g] = self.f_ip[g], self.f_sport[g]
            cache.adopt(self, g)   # and their SYN-ACKs, where their path has a plan
            go[mine[~took]] = True   # no path a SYN of theirs showed yet (or none it can take): the fast path
        s, t = s.copy(), t.copy()
        a = np.nonzero(adopt)[0]
        if len(a):
            self._syns_carried(fd[a], td[a], server[a], end, s, t, due[a])
        return f, s, t

    def _rules(self) -> tuple:
        """What a path learned in an earlier run depends on besides the
        engine's events: every kube-proxy's rules (a resync makes new ones),
        and the engine's event count."""
        return (self.eng.events, *(kp.service_ports for kp in self.cluster.proxies.values()))

    def _inherit(self, cache) -> None:
        """Start the flow cache from what the last bulk run on this engine
        learned (FlowCache.legacy), if nothing happened since: no event, the
        same kube-proxy rules."""
        rules, legacy = getattr(self.eng, "bulk_legacy", None) or ((), None)
        now = self._rules()
        if legacy is not None and len(rules) == len(now) and rules[0] == now[0] \
                and all(a is b for a, b in zip(rules[1:], now[1:])):
            cache.inherit(legacy, [ns.id for ns in self.client_ns])

    def _syns_carried(self, f, t, server, end, s_all, t_all, at) -> None:
        """The kernel carries adopted SYNs (flows f, due at t) to their
        backend, and on as far as it can (their SYN-ACKs too, where adopted:
        their references find the connections the SYN opened); the server
        learns each flow's peer as from its first packet (`_arrived`). Their
        items (at, in s_all / t_all) move on; those left at their SYN keep it,
        those left at their SYN-ACK too (the fast path's), their programs
        taken back."""
        cache = self.fast.cache
        s2, t2, sent, lat, last = cache.run(self, f, np.zeros(len(f), np.int64), t, end, self._horizon(end))
        left = s2 == 0
        if left.any():   # their server has not seen them yet
            fl = f[left]
            cache.unadopt(fl, server=False)
            self.srv_ns[fl], self.srv_ip[fl], self.srv_port[fl], self.peer_ip[fl], self.peer_port[fl] = -1, 0, 0, 0, 0
        synack = (s2 <= 1) & cache.has(2 * f + 1)
        if synack.any():
            cache.unadopt(f[synack])
        got = ~left
        self.syns_carried += int(got.sum())
        for ns, hits in zip(*np.unique(server[got], return_counts=True)):
            self._backend_hits[int(ns)] = self._backend_hits.get(int(ns), 0) + int(hits)
        self._carried(sent, lat, last)
        s_all[at], t_all[at] = s2, t2

    def _carried(self, sent, lat, last) -> None:
        """Packets the flow cache carried: sent and delivered, their latency."""
        n = int(sent.sum())
        if n:
            self.sent += n
            self.delivered += n
            self._lat.append(np.repeat(lat, sent))
            self._last = max(self._last, last)

    def _synacks(self, f, s, t, end):
        """SYN-ACKs due before `end` take the server program of a flow on the
        same client path (FlowCache.adopt). On a path no flow has taught yet,
        one SYN-ACK (the scout) goes down the fast path and teaches it; the
        others wait until the client has the scout's (or the scout broke),
        then go at their own times (`_release`): the cache carries packets out
        of time order as it does ahead of the window (kernels.replay). (A
        SYN-ACK due later, after a SYN the cache carried ahead, waits in the
        pending items until it is due: a scout goes when it is chosen.)"""
        due = np.nonzero((s == 1) & (t < end))[0]
        if not len(due):
            return f, s, t
        adopted, path = self.fast.cache.adopt(self, f[due])
        untaught = np.nonzero((path >= 0) & ~adopted)[0]
        if not len(untaught):
            return f, s, t
        scout_of = np.empty(len(untaught), np.int64)
        go = np.zeros(len(untaught), bool)
        for p in np.unique(path[untaught]).tolist():
            mine = np.nonzero(path[untaught] == p)[0]
            scout = self._scouts.get(p, -1)
            if scout < 0 or self._taught(scout):   # none on its way: the first goes
                scout = self._scouts[p] = int(f[due[untaught[mine[0]]]])
                go[mine[0]] = True
            scout_of[mine] = scout
        wait = due[untaught[~go]]
        self._wait(f[wait], s[wait], t[wait], scout_of[~go])
        keep = np.ones(len(f), bool)
        keep[wait] = False
        return f[keep], s[keep], t[keep]

    def _taught(self, scout) -> np.ndarray:
        """Whether scouts are back (the client has their SYN-ACK) or broke."""
        return (self.c_got[scout] >= 1) | self.broken[scout] | self.done[scout]

    def _wait(self, f, s, t, scout, into=None) -> None:
        """SYN-ACKs (f, s, t) wait for their scouts:
        a chunk, with its distinct scouts and each item's among them."""
        if len(f):
            scouts, inverse = np.unique(scout, return_inverse=True)
            (self._waiting if into is None else into).append((f, s, t, scouts, inverse.reshape(-1)))

    def _release(self, everything=False) -> None:
        """SYN-ACKs waiting for a scout that is back go (all, with everything);
        a chunk none of whose scouts is back stays as it is."""
        keep = []
        for f, s, t, scouts, inverse in self._waiting:
            back = np.ones(len(scouts), bool) if everything else self._taught(scouts)
            if not back.any():
                keep.append((f, s, t, scouts, inverse))
                continue
            go = back[inverse]
            self._pending.append((f[go], s[go], t[go]))
            self._wait(f[~go], s[~go], t[~go], scouts[inverse[~go]], into=keep)
        self._waiting = keep

    def _horizon(self, end) -> int:
        """How far the flow cache may run ahead of the window: up to the
        engine's next timer or packet (anything that may change a table), at
        most HORIZON_NS. Its effects commute with the fast path's packets of
        the same times (see kernels.replay), so running ahead changes no result."""
        eng = self.eng
        nxt = [x for x in (eng._next_packet_time(), eng._timers[0][0] if eng._timers else None) if x is not None]
        return max(end, min(nxt + [end + HORIZON_NS]))

    def _learners(self, b, idx, f, s) -> None:
        """Mark packets whose (flow, direction) has no program yet: the SYN and
        the SYN-ACK (what they do once, a conntrack entry and a NAT binding,
        is then the path every packet after them takes; a SYN-ACK on the
        fast path is a scout, or one the cache could not carry), else any
        data segment or ACK. A captured flow's client learns from the handshake's
        ACK instead of the SYN: its program holds its frames and comments,
        and a SYN's comments say NEW (emu.bulk.variants)."""
        server = _tcp_from_server(s)
        key = 2 * f + server
        cap = self.cap[f]
        first = (s == 1) | np.where(cap, s == 2, s == 0)
        # every program pays for its learning: the server's carries at least two packets
        # (K ACKs and its FIN-ACK; with paths shared, the new-connection benchmark, K = 1,
        # ran at 68-74 k connections/s learning them, 60-66 k leaving them to the fast path)
        want = (first | self._steady(s)) & ~self.fast.cache.has(key)
        self.fast.cache.begin(b, idx[want], key[want])

    def _report(self, wall, drops_before, virtual) -> Report:
        eng = self.eng
        r = Report(self.protocol, packets=self.sent, delivered=self.delivered, flows=self.n,
                   completed=int((self.done & ~self.broken).sum()), broken=int(self.broken.sum()),
                   wall_seconds=wall, virtual_ns=int(virtual), flushed=self.flushed,
                   handed_off=self.fast.handed_off if self.fast else 0,
                   cached=self.fast.cache.replayed if self.fast and self.fast.cache else 0)
        r.backends = {self._pod_of.get(k, eng.devices[k].name): v for k, v in sorted(self._backend_hits.items())}
        diff = eng.drops - np.vstack([drops_before, np.zeros((len(eng.drops) - len(drops_before), 256),
                                                             np.int64)])
        from kernels.drop import describe
        for dev in eng.devices:
            for reason in np.nonzero(diff[dev.id])[0].tolist():
                r.drops.append((dev.name, describe(reason), int(diff[dev.id, reason])))
        for name, node in self.cluster.fabric.nodes.items():
            table = node.ns.conntrack.table
            r.conntrack[name] = (ct.count(table), len(table.conns))
        if self._lat:
            lat = np.concatenate(self._lat)
            if len(lat):
                r.latency_ns = (int(np.percentile(lat, 50)), int(np.percentile(lat, 99)))
        return r
