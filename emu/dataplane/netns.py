"""A network namespace: the Linux IPv4 stack of a pod or a node.

Interfaces with addresses and MTUs, connected routes, a FIB (kernels.lpm),
a neighbour table with ARP, netfilter hook points, local delivery, ICMP
errors, and VXLAN devices (RFC 7348) as Flannel configures them. Received
frames follow Linux's order:

  parse -> L2 accept (our MAC, broadcast, multicast) -> ARP | IPv4:
  PREROUTING -> local? INPUT -> deliver (ICMP echo, VXLAN decap, sockets)
             -> else FORWARD (ip_forward on): TTL, FIB, MTU -> POSTROUTING
                -> neighbour (ARP, queue) -> rewrite MACs, TTL-1 -> transmit
  Locally sent packets: route -> OUTPUT -> POSTROUTING -> neighbour -> transmit.

The common path works on whole batches with kernels (parse, lpm, rewrite);
ARP, ICMP errors, fragmentation and local delivery are per-packet slow paths
that craft frames with Scapy.

Simplifications (said here so nobody is surprised):
- Neighbour entries, once resolved, stay REACHABLE (no STALE/DELAY/PROBE
  cycle); an unanswered ARP request is broadcast mcast_solicit=3 times one
  second apart (retrans_time), then the entry is FAILED and its queue dropped
  with ICMP host unreachable, as Linux does.
- ICMP errors are not rate limited (Linux's icmp_ratelimit is).
- One routing table (main); the local table is the set of own addresses.
- No IP options processing beyond carrying them; reassembly only for local
  delivery is not modelled (fragments to a local socket are delivered as is).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emu.dataplane.conntrack import CTINFO_NAMES
from emu.dataplane.engine import Device, Engine, HopLog, Port
from emu.errors import EmuError
from emu.wire import craft, ethernet, icmp, ipv4
from kernels import hashing, lpm, parse, rewrite
from kernels.drop import Drop

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

# ARP (net/ipv4/arp.c, neigh defaults)
ARP_PROBES = 3                # mcast_solicit: broadcast requests before FAILED
ARP_RETRANS_NS = 1_000_000_000  # retrans_time_ms = 1000
UNRES_QLEN = 101              # unres_qlen: packets queued per unresolved neighbour

ICMP_QUOTE_LIMIT = 576        # icmp_send quotes so the error fits in 576 bytes
IPFRAG_TIME_NS = 30_000_000_000  # net.ipv4.ipfrag_time


@dataclass
class Interface:
    name: str
    index: int
    port: Port              # engine port (unlinked for VXLAN devices: taps still see it)
    mac: int
    mtu: int
    kind: str = "ether"     # ether | vxlan | loopback
    addrs: list[tuple[int, int]] = field(default_factory=list)  # (ip, prefix length)
    # VXLAN device settings (kind == "vxlan")
    vni: int = -1
    dstport: int = 0
    local_ip: int = 0
    fdb: dict[int, int] = field(default_factory=dict)  # inner MAC -> remote VTEP IP


@dataclass
class Route:
    prefix: int
    plen: int
    dev: int                # interface index
    via: int = 0            # gateway, 0 for a directly connected destination
    src: int = 0            # preferred source address, 0 to pick the interface's
    proto: str = "static"   # kernel (connected), static, flannel ...
    onlink: bool = False

    def text(self, netns: "Netns") -> str:
        dst = "default" if self.plen == 0 else f"{ipv4.ntoa(self.prefix)}/{self.plen}"
        via = f" via {ipv4.ntoa(self.via)}" if self.via else ""
        onlink = " onlink" if self.onlink else ""
        return f"{dst}{via} dev {netns.ifaces[self.dev].name}{onlink}"


@dataclass
class Neighbour:
    mac: int = 0
    state: str = "INCOMPLETE"   # INCOMPLETE, REACHABLE, PERMANENT, FAILED
    probes: int = 0
    queue: list = field(default_factory=list)  # [(slot, route index, forwarded, note)] waiting for ARP


class Netns(Device):
    kind = "netns"

    def __init__(self, name: str, forwarding: bool = False):
        super().__init__(name)
        self.forwarding = forwarding        # net.ipv4.ip_forward
        self.ifaces: list[Interface] = []
        self.routes: list[Route] = []
        self.neigh: dict[tuple[int, int], Neighbour] = {}
        self.hooks: dict[str, list] = {h: [] for h in HOOKS}
        self.sockets: dict[tuple[int, int], object] = {}  # (ip proto, port or ICMP id) -> handler
        self._fib = None
        self._if_of_port: dict[int, int] = {}
        self._local: dict[int, int] = {}    # own address -> interface index
        self._ip_id = 0
        self._frags: dict[tuple, dict] = {}  # (src, dst, id, proto) -> fragments waiting
        self.conntrack = None  # an emu.dataplane.conntrack.Conntrack once attached
        self.nat = None        # an emu.dataplane.nat.Nat once attached
        # what hooks said about a packet (e.g. kube-proxy's DNAT), by packet id,
        # added to the notes of its capture records here
        self.annotations: dict[int, str] = {}
        self.held_annotations: dict[int, str] = {}   # of packets waiting for ARP

    # -- configuration (what `ip` commands would do) ----------------------------------
    def add_interface(self, name: str, mac: int, mtu: int = 1500) -> Interface:
        if self.engine is None:
            raise EmuError(f"{self.name}: add the namespace to an engine before its interfaces")
        if any(i.name == name for i in self.ifaces):
            raise EmuError(f"{self.name}: duplicate interface {name}")
        port = self.engine.add_port(self, name, mac=mac, mtu=mtu)
        iface = Interface(name, len(self.ifaces), port, mac, mtu)
        self.ifaces.append(iface)
        self._if_of_port[port.id] = iface.index
        return iface

    def add_vxlan(self, name: str, mac: int, vni: int, local_ip: str, dstport: int = 8472,
                  mtu: int = 1450) -> Interface:
        """`ip link add NAME type vxlan id VNI local IP dstport PORT nolearning`."""
        iface = self.add_interface(name, mac, mtu)
        iface.kind, iface.vni, iface.dstport, iface.local_ip = "vxlan", vni, dstport, ipv4.aton(local_ip)
        return iface

    def _loopback(self) -> Interface:
        """`lo`, made when first used: 127.0.0.1/8, MAC 0, MTU 65536."""
        for i in self.ifaces:
            if i.name == "lo":
                return i
        lo = self.add_interface("lo", 0, mtu=65536)
        lo.kind = "loopback"
        self.add_address("lo", "127.0.0.1/8")
        return lo

    def iface(self, name: str) -> Interface:
        for i in self.ifaces:
            if i.name == name:
                return i
        raise EmuError(f"{self.name}: no interface {name}")

    def add_address(self, ifname: str, cidr: str) -> None:
        """`ip addr add CIDR dev IFNAME`: the address and its connected route."""
        ip, plen = ipv4.parse_cidr(cidr, strict=False)
        if ip in self._local:
            raise EmuError(f"{self.name}: address {ipv4.ntoa(ip)} is already assigned")
        iface = self.iface(ifname)
        iface.addrs.append((ip, plen))
        self._local[ip] = iface.index
        if plen < 32:
            net = ip & ipv4.mask(plen)
            if not any(r.prefix == net and r.plen == plen for r in self.routes):
                self.routes.append(Route(net, plen, iface.index, src=ip, proto="kernel"))
        self._fib = None

    def add_route(self, dst: str, dev: str, via: str | None = None, onlink: bool = False,
                  src: str | None = None, proto: str = "static") -> Route:
        """`ip route add DST [via GW] dev DEV [onlink]`; DST may be 'default'."""
        prefix, plen = (0, 0) if dst == "default" else ipv4.parse_cidr(dst)
        if any(r.prefix == prefix and r.plen == plen for r in self.routes):
            raise EmuError(f"{self.name}: route {dst} exists")
        iface = self.iface(dev)
        gw = ipv4.aton(via) if via else 0
        if gw and not onlink and not self._connected(gw, iface.index):
            raise EmuError(f"{self.name}: route {dst}: gateway {via} is not on a network of {dev} "
                           "(Linux: 'Nexthop has invalid gateway'); add 'onlink'")
        route = Route(prefix, plen, iface.index, gw, ipv4.aton(src) if src else 0, proto, onlink)
        self.routes.append(route)
        self._fib = None
        return route

    def add_neighbour(self, ip: str, mac: int, dev: str) -> None:
        """`ip neigh replace IP lladdr MAC dev DEV nud permanent` (Flannel does this per node)."""
        key = (self.iface(dev).index, ipv4.aton(ip))
        entry = self.neigh.setdefault(key, Neighbour())
        entry.mac, entry.state = mac, "PERMANENT"

    def add_fdb(self, dev: str, mac: int, dst: str) -> None:
        """`bridge fdb append MAC dev VXLAN dst IP self permanent` (Flannel's per-node entry)."""
        iface = self.iface(dev)
        if iface.kind != "vxlan":
            raise EmuError(f"{self.name}: {dev} is not a VXLAN device")
        iface.fdb[mac] = ipv4.aton(dst)

    def bind(self, proto: int, port: int, handler) -> None:
        """Deliver packets for (protocol, local port / ICMP echo id) to
        handler(netns, frame_bytes, l3_offset, time_ns)."""
        self.sockets[(proto, port)] = handler

    def _connected(self, ip: int, ifindex: int) -> bool:
        return any((ip & ipv4.mask(plen)) == (a & ipv4.mask(plen)) for a, plen in self.ifaces[ifindex].addrs)

    def _fib_table(self):
        if self._fib is None:
            r = self.routes
            self._fib = lpm.build(np.array([x.prefix for x in r], np.uint32),
                                  np.array([x.plen for x in r], np.uint8),
                                  np.arange(len(r), dtype=np.int32), stride=8)  # small: 8-8-8-8 trie
        return self._fib

    def route(self, dst: int) -> int:
        """Index of the route for one destination, -1 for none."""
        return int(lpm.lookup(self._fib_table(), np.array([dst], np.uint32))[0])

    def source_for(self, route: Route) -> int:
        """The source address Linux picks for a route: its src, else the
        interface's first address (inet_select_addr, simplified)."""
        if route.src:
            return route.src
        addrs = self.ifaces[route.dev].addrs
        if addrs:
            return addrs[0][0]
        return next(iter(self._local), 0)

    # -- receive ------------------------------------------------------------------
    def receive(self, engine: Engine, ports, slots, times) -> np.ndarray:
        ifx = np.array([self._if_of_port[p] for p in ports.tolist()], np.int32)
        return self._input(engine, ifx, slots, times)

    def _input(self, engine: Engine, ifx, slots, times) -> np.ndarray:
        """Frames received on interfaces ifx; returns a note id per frame."""
        pool = engine.pool
        notes = np.zeros(len(slots), np.int32)
        h = parse.parse(pool.buf, pool.start[slots], pool.length[slots], self._vxlan_ports())
        bad = h.drop != 0
        if bad.any():
            notes[bad] = engine.drop_notes(h.drop[bad])
            engine.drop(self, slots[bad], h.drop[bad], times[bad], self._ports(ifx[bad]))
        ok = ~bad
        our_mac = np.array([i.mac for i in self.ifaces], np.uint64)[ifx]
        l2_ok = (h.eth_dst == our_mac) | ((h.eth_dst >> np.uint64(40)) & np.uint64(1)).astype(bool)
        other = ok & ~l2_ok
        if other.any():
            notes[other] = engine.note("drop: NOT_FOR_US (frame for another MAC)")
            engine.drop(self, slots[other], Drop.NOT_FOR_US, times[other], self._ports(ifx[other]))
        ok &= l2_ok
        is_arp = ok & ((h.flags & parse.ARP) != 0)
        for k in np.nonzero(is_arp)[0].tolist():
            notes[k] = self._arp_input(engine, int(ifx[k]), int(slots[k]), int(times[k]), h, k)
        is_ip = ok & ((h.flags & parse.IPV4) != 0)
        if is_ip.any():
            sel = np.nonzero(is_ip)[0]
            hip = _take(h, sel)
            _flow_hashes(engine, slots[sel], hip)
            notes[sel] = self._ip_input(engine, ifx[sel], slots[sel], times[sel], hip)
        return notes

    def _vxlan_ports(self):
        return tuple(sorted({i.dstport for i in self.ifaces if i.kind == "vxlan"}))

    def _ports(self, ifx) -> np.ndarray:
        return np.array([self.ifaces[i].port.id for i in np.atleast_1d(ifx).tolist()], np.int32)

    # -- ARP (net/ipv4/arp.c: arp_process) ----------------------------------------
    def _arp_input(self, engine, ifindex, slot, time, h, k) -> int:
        iface = self.ifaces[ifindex]
        op, sha, spa, tpa = int(h.arp_op[k]), int(h.arp_sha[k]), int(h.ip_src[k]), int(h.ip_dst[k])
        port = iface.port.id
        note = "ARP ignored"
        # arp_ignore=0: answer for any local address, whichever interface asked
        if op == 1 and tpa in self._local:
            self._neigh_update(engine, ifindex, spa, sha, create=True, time=time)
            reply = craft.arp(2, iface.mac, tpa, sha, spa, eth_dst=sha)
            engine.send(iface.port, reply, time, note=f"ARP reply {ipv4.ntoa(tpa)} is-at {ethernet.mac_to_str(iface.mac)}")
            note = f"ARP who-has {ipv4.ntoa(tpa)}: ours, answered"
        elif op == 2:
            # arp_accept=0: a reply updates an entry we have, never creates one
            if self._neigh_update(engine, ifindex, spa, sha, create=False, time=time):
                note = f"ARP reply learned {ipv4.ntoa(spa)} at {ethernet.mac_to_str(sha)}"
            else:
                note = "ARP reply ignored (no entry: arp_accept=0)"
        elif op == 1:
            note = f"ARP who-has {ipv4.ntoa(tpa)}: not ours"
        note_id = engine.note(note)
        engine.deliver(self, np.array([slot], np.int32), np.array([time], np.int64), port, note_id)
        return note_id

    def _neigh_update(self, engine, ifindex, ip, mac, create, time) -> bool:
        entry = self.neigh.get((ifindex, ip))
        if entry is None:
            if not create:
                return False
            entry = self.neigh[(ifindex, ip)] = Neighbour()
        if entry.state == "PERMANENT":
            return True
        entry.mac, entry.state, entry.probes = mac, "REACHABLE", 0
        queued, entry.queue = entry.queue, []
        for slot, route_index, forwarded, note in queued:
            self._finish_output(engine, np.array([slot], np.int32), np.array([time], np.int64),
                                np.array([route_index], np.int32), forwarded, note)
        return True

    def _arp_solicit(self, engine, ifindex, ip, time, src_hint) -> None:
        iface = self.ifaces[ifindex]
        src = src_hint if src_hint in self._local else (iface.addrs[0][0] if iface.addrs else 0)
        req = craft.arp(1, iface.mac, src, 0, ip, eth_dst=ethernet.BROADCAST)
        engine.send(iface.port, req, time, note=f"ARP who-has {ipv4.ntoa(ip)} tell {ipv4.ntoa(src)}")

    def _arp_timer(self, ifindex, ip, src_hint):
        def fire(engine):
            entry = self.neigh.get((ifindex, ip))
            if entry is None or entry.state != "INCOMPLETE":
                return
            if entry.probes < ARP_PROBES:
                entry.probes += 1
                self._arp_solicit(engine, ifindex, ip, engine.now, src_hint)
                engine.at(engine.now + ARP_RETRANS_NS, fire)
                return
            entry.state = "FAILED"
            queued, entry.queue = entry.queue, []
            for slot, _, _, _ in queued:
                self._icmp_error(engine, slot, engine.now, 3, 1)  # host unreachable
                engine.drop(self, np.array([slot], np.int32), Drop.NEIGH_FAILED,
                            np.array([engine.now], np.int64), self.ifaces[ifindex].port.id)
            del self.neigh[(ifindex, ip)]  # the next packet tries again
        return fire

    # -- IPv4 input -----------------------------------------------------------------
    def run_hook(self, name, engine, slots, times, h, ifx) -> np.ndarray:
        """Run a hook's functions in order; a drop code per packet (0 = accept).
        Hook functions: fn(netns, engine, slots, times, headers, ifindex) -> codes or None."""
        verdict = np.zeros(len(slots), np.uint8)
        for fn in self.hooks[name]:
            v = fn(self, engine, slots, times, h, ifx)
            if v is not None:
                verdict = np.where(verdict == 0, v, verdict).astype(np.uint8)
        return verdict

    def _drop_rejected(self, engine, verdict, slots, times, ifx, notes, index) -> np.ndarray:
        """Drop packets a hook rejected; returns the mask of those still going."""
        bad = verdict != 0
        if bad.any():
            notes[index[bad]] = engine.drop_notes(verdict[bad])
            engine.drop(self, slots[bad], verdict[bad], times[bad], self._ports(ifx[bad]))
        return ~bad

    def _ip_input(self, engine, ifx, slots, times, h) -> np.ndarray:
        notes = np.zeros(len(slots), np.int32)
        go = self._drop_rejected(engine, self.run_hook("PREROUTING", engine, slots, times, h, ifx),
                                 slots, times, ifx, notes, np.arange(len(slots)))
        ctinfo = engine.pool.ctinfo[slots].copy()  # before the slots can be released and reused
        ids = engine.pool.pkt_id[slots].tolist()
        said = {k: self.annotations[i] for k, i in enumerate(ids) if i in self.annotations}
        local = np.array([d in self._local for d in h.ip_dst.tolist()], bool) | (h.ip_dst == 0xFFFFFFFF)
        for k in np.nonzero(go & local)[0].tolist():
            notes[k] = self._local_input(engine, int(ifx[k]), int(slots[k]), int(times[k]), h, k)
        sel = np.nonzero(go & ~local)[0]
        if len(sel):
            notes[sel] = self._forward(engine, ifx[sel], slots[sel], times[sel], _take(h, sel))
        notes = self._ct_notes(engine, notes, ctinfo)
        for k, text in said.items():
            self.annotations.pop(ids[k], None)
            notes[k] = engine.note(f"{engine.notes[notes[k]]}; {text}")
        return notes

    def _ct_notes(self, engine, notes, ctinfo) -> np.ndarray:
        """Notes with the packets' conntrack state appended (when conntrack runs here)."""
        out = notes.copy()
        for k in np.nonzero(ctinfo)[0].tolist():
            out[k] = engine.note(self._with_ct(engine.notes[notes[k]], int(ctinfo[k])))
        return out

    def _forward(self, engine, ifx, slots, times, h) -> np.ndarray:
        """ip_forward(): route, TTL, FORWARD hook, then the common output."""
        notes = np.zeros(len(slots), np.int32)
        if not self.forwarding:
            # ip_route_input_slow fails with EHOSTUNREACH; ip_error only counts it, no ICMP
            notes[:] = engine.drop_notes(np.full(len(slots), Drop.FORWARDING_OFF, np.uint8))
            engine.drop(self, slots, Drop.FORWARDING_OFF, times, self._ports(ifx))
            return notes
        routes = lpm.lookup(self._fib_table(), h.ip_dst)
        self._error_out(engine, routes < 0, slots, times, ifx, notes, Drop.NO_ROUTE, (3, 0),
                        "ICMP net unreachable sent")
        expired = (routes >= 0) & (h.ttl <= 1)
        self._error_out(engine, expired, slots, times, ifx, notes, Drop.TTL_EXCEEDED, (11, 0),
                        "ICMP time exceeded sent")
        sel = np.nonzero((routes >= 0) & ~expired)[0]
        if len(sel):
            go = self._drop_rejected(engine, self.run_hook("FORWARD", engine, slots[sel], times[sel],
                                                        _take(h, sel), ifx[sel]),
                                     slots[sel], times[sel], ifx[sel], notes, sel)
            sel = sel[go]
            pool = engine.pool
            rewrite.decrement_ttl(pool.buf, pool.start[slots[sel]] + h.l3_off[sel].astype(np.int64))
            notes[sel] = self._output(engine, slots[sel], times[sel], routes[sel], forwarded=True)
        return notes

    def _error_out(self, engine, mask, slots, times, ifx, notes, reason, icmp, text) -> None:
        """Drop the packets in mask with a reason, answering each with an ICMP error."""
        idx = np.nonzero(mask)[0]
        if not len(idx):
            return
        for k in idx.tolist():
            self._icmp_error(engine, int(slots[k]), int(times[k]), *icmp)
        notes[idx] = engine.note(f"drop: {Drop(reason).name}, {text}")
        engine.drop(self, slots[idx], reason, times[idx], self._ports(ifx[idx]))

    def _local_input(self, engine, ifindex, slot, time, h, k) -> int:
        """INPUT hook, then the owner of the packet: VXLAN, ICMP echo, a socket, or an error."""
        port = self.ifaces[ifindex].port.id
        one_slot, one_time = np.array([slot], np.int32), np.array([time], np.int64)
        v = self.run_hook("INPUT", engine, one_slot, one_time, _take(h, [k]), np.array([ifindex], np.int32))
        if v[0]:
            engine.drop(self, one_slot, v, one_time, port)
            return int(engine.drop_notes(v)[0])
        proto, flags, dst = int(h.ip_proto[k]), int(h.flags[k]), int(h.ip_dst[k])
        l3 = int(h.l3_off[k])
        if flags & parse.FRAGMENT:
            return self._defragment(engine, ifindex, slot, time, h, k)
        if flags & parse.VXLAN:
            return self._vxlan_input(engine, ifindex, slot, time, h, k)
        if proto == ipv4.PROTO_ICMP and h.icmp_type[k] == 8 and (flags & parse.L4):
            reply = craft.echo_reply(engine.pool.frame(slot)[l3:])
            engine.deliver(self, one_slot, one_time, port, engine.note("ICMP echo request: ours"))
            self.send_ip(engine, reply, time, note=f"ICMP echo reply from {ipv4.ntoa(dst)}")
            return engine.note(f"ICMP echo request to {ipv4.ntoa(dst)}: answered")
        key = int(h.dport[k]) if proto in (ipv4.PROTO_TCP, ipv4.PROTO_UDP) else int(h.sport[k])
        if flags & parse.ICMP_ERROR and int(h.inner_off[k]) >= 0:
            # icmp_unreach -> the protocol's err_handler: the socket that sent the quoted packet
            quoted = icmp.quoted_endpoint(engine.pool.frame(slot), int(h.inner_off[k]))
            handler = self.sockets.get(quoted)
            note = engine.note(f"ICMP error for local socket proto {quoted[0]} port {quoted[1]}"
                               if handler else "ICMP error, no socket to report it to")
            frame = engine.pool.frame(slot)
            engine.deliver(self, one_slot, one_time, port, note)
            if handler is not None:
                handler(self, frame, l3, time)
            return note
        handler = self.sockets.get((proto, key))
        if handler is not None:
            frame = engine.pool.frame(slot)
            note = engine.note(f"delivered to local socket proto {proto} port {key}")
            engine.deliver(self, one_slot, one_time, port, note)
            handler(self, frame, l3, time)
            return note
        if proto == ipv4.PROTO_UDP and (flags & parse.L4):
            self._icmp_error(engine, slot, time, 3, 3)
            engine.drop(self, one_slot, Drop.PORT_UNREACHABLE, one_time, port)
            return engine.note(f"drop: PORT_UNREACHABLE udp/{key}, ICMP port unreachable sent")
        if proto == ipv4.PROTO_TCP and (flags & parse.L4) and not (int(h.tcp_flags[k]) & 0x04):
            rst = craft.tcp_reset(engine.pool.frame(slot)[l3:])
            engine.drop(self, one_slot, Drop.PORT_UNREACHABLE, one_time, port)
            self.send_ip(engine, rst, time, note=f"TCP RST: nothing listens on port {key}")
            return engine.note(f"drop: PORT_UNREACHABLE tcp/{key}, RST sent")
        note = engine.note("delivered to the host stack (no listener)")
        engine.deliver(self, one_slot, one_time, port, note)
        return note

    # -- reassembly (net/ipv4/ip_fragment.c) --------------------------------------
    def _defragment(self, engine, ifindex, slot, time, h, k) -> int:
        """Queue a fragment for local delivery; when all pieces are in, the whole
        datagram goes through local input again as one packet (with the first
        fragment's packet id). An incomplete datagram is dropped after
        ipfrag_time (30 s), with ICMP time exceeded (code 1) if the first
        fragment had arrived."""
        pool = engine.pool
        l3, ihl = int(h.l3_off[k]), int(h.l4_off[k]) - int(h.l3_off[k])
        frame = pool.frame(slot)
        key = (int(h.ip_src[k]), int(h.ip_dst[k]), int(h.ip_id[k]), int(h.ip_proto[k]))
        q = self._frags.get(key)
        if q is None:
            q = self._frags[key] = {"pieces": {}, "total": None, "header": None, "first": None}
            engine.at(time + IPFRAG_TIME_NS, self._frag_timer(key, q))
        offset = int(h.frag_off[k])
        q["pieces"][offset] = frame[l3 + ihl: l3 + int(h.ip_len[k])]
        if offset == 0:
            q["header"], q["first"] = frame[l3: l3 + ihl], (slot, int(pool.pkt_id[slot]))
        if not h.flags[k] & parse.MORE_FRAGMENTS:
            q["total"] = offset + len(q["pieces"][offset])
        one_slot, one_time = np.array([slot], np.int32), np.array([time], np.int64)
        port = self.ifaces[ifindex].port.id
        note = engine.note("fragment queued for reassembly")
        whole = ipv4.reassemble(q)
        if whole is None:
            if offset != 0:
                engine.deliver(self, one_slot, one_time, port, note)
            return note
        del self._frags[key]
        first_slot, first_id = q["first"]
        for s in {first_slot, slot}:
            engine.deliver(self, np.array([s], np.int32), one_time, port, note)
        new = pool.put(frame[:l3] + whole)
        pool.pkt_id[new] = first_id
        nh = parse.parse(pool.buf, pool.start[[new]], pool.length[[new]], self._vxlan_ports())
        self._local_input(engine, ifindex, new, time, nh, 0)
        return engine.note(f"reassembled {len(whole)}-byte datagram")

    def _frag_timer(self, key, q):
        def fire(engine):
            if self._frags.get(key) is not q:
                return
            del self._frags[key]
            if q["first"] is not None:
                slot = q["first"][0]
                self._icmp_error(engine, slot, engine.now, 11, 1)
                engine.drop(self, np.array([slot], np.int32), Drop.REASSEMBLY_TIMEOUT,
                            np.array([engine.now], np.int64))
        return fire

    # -- output -----------------------------------------------------------------------
    def send_ip(self, engine: Engine, packet: bytes, time: int | None = None, note: str = "sent") -> int:
        """A locally generated IPv4 packet (bytes from the IP header on), sent
        at `time` (now by default; a later time is scheduled): route lookup,
        OUTPUT hook, then the common output. Returns its packet id at once."""
        time = engine.now if time is None else int(time)
        pool = engine.pool
        slot = pool.put(b"\x00" * 12 + b"\x08\x00" + packet)
        if time > engine.now:
            engine.at(time, lambda e: self._send_slot(e, slot, time, note))
        else:
            self._send_slot(engine, slot, time, note)
        return int(pool.pkt_id[slot])

    def _send_slot(self, engine: Engine, slot: int, time: int, note: str) -> None:
        pool = engine.pool
        slots, times = np.array([slot], np.int32), np.array([time], np.int64)
        dst = int.from_bytes(pool.frame(slot)[30:34], "big")
        if dst in self._local:  # the local table: out and back in through lo
            lo = self._loopback()
            engine.observe(lo.port.id, slots, times, engine.note(note))
            self._input(engine, np.array([lo.index], np.int32), slots, times)
            return
        r = self.route(dst)
        if r < 0:  # ENETUNREACH to the sender
            engine.drop(self, slots, Drop.NO_ROUTE, times)
            return
        h = parse.parse(pool.buf, pool.start[slots], pool.length[slots], ())
        _flow_hashes(engine, slots, h)
        v = self.run_hook("OUTPUT", engine, slots, times, h, np.array([self.routes[r].dev], np.int32))
        if v[0]:
            engine.drop(self, slots, v, times)
            return
        self._output(engine, slots, times, np.array([r], np.int32), forwarded=False, first_note=note)

    def _output(self, engine, slots, times, routes, forwarded: bool, first_note: str | None = None) -> np.ndarray:
        """POSTROUTING, MTU, then the neighbour for each packet's route; returns notes."""
        pool = engine.pool
        notes = np.array([self._route_note(engine, r, forwarded, int(pool.ctinfo[slot]))
                          for r, slot in zip(routes.tolist(), slots.tolist())], np.int32)
        h = parse.parse(pool.buf, pool.start[slots], pool.length[slots], ())
        out_if = np.array([self.routes[r].dev for r in routes.tolist()], np.int32)
        go = self._drop_rejected(engine, self.run_hook("POSTROUTING", engine, slots, times, h, out_if),
                                 slots, times, out_if, notes, np.arange(len(slots)))
        mtu = np.array([self.ifaces[i].mtu for i in out_if.tolist()], np.int64)
        too_big = go & (h.ip_len.astype(np.int64) > mtu)
        for k in np.nonzero(too_big)[0].tolist():
            notes[k] = self._too_big(engine, int(slots[k]), int(times[k]), int(routes[k]),
                                     int(mtu[k]), bool(h.flags[k] & parse.DF), forwarded, h, k)
        for k in np.nonzero(go & ~too_big)[0].tolist():
            self._resolve(engine, int(slots[k]), int(times[k]), int(routes[k]), forwarded,
                          int(h.ip_dst[k]), int(h.ip_src[k]), first_note)
        return notes

    def _route_note(self, engine, r: int, forwarded: bool, ctinfo: int = 0) -> int:
        verb = "forward" if forwarded else "send"
        return engine.note(self._with_ct(f"{self.name}: {verb} via route {self.routes[r].text(self)}", ctinfo))

    def _with_ct(self, text: str, ctinfo: int) -> str:
        if self.conntrack is None or not ctinfo or text.endswith("]"):  # none, or already said
            return text
        return f"{text} [ct {CTINFO_NAMES[ctinfo]}]"

    def _too_big(self, engine, slot, time, r, mtu, df, forwarded, h, k) -> int:
        one_slot, one_time = np.array([slot], np.int32), np.array([time], np.int64)
        dev = self.ifaces[self.routes[r].dev].name
        if df:
            if forwarded:  # ip_forward: ICMP_FRAG_NEEDED with the next-hop MTU (RFC 1191)
                self._icmp_error(engine, slot, time, 3, 4, mtu=mtu)
            engine.drop(self, one_slot, Drop.FRAG_NEEDED, one_time, self.ifaces[self.routes[r].dev].port.id)
            sent = ", ICMP fragmentation needed sent" if forwarded else " (EMSGSIZE to the sender)"
            return engine.note(f"drop: FRAG_NEEDED {int(h.ip_len[k])} > mtu {mtu} of {dev}{sent}")
        # DF clear: ip_fragment into pieces that fit, each a packet on the wire
        frags = craft.fragment(engine.pool.frame(slot)[int(h.l3_off[k]):], mtu)
        pkt_id = int(engine.pool.pkt_id[slot])
        engine.deliver(self, one_slot, one_time, -1, engine.note(f"fragmented for mtu {mtu} of {dev}"))
        for frag in frags:
            fslot = engine.pool.put(b"\x00" * 12 + b"\x08\x00" + frag)
            engine.pool.pkt_id[fslot] = pkt_id  # the fragments are copies of one packet
            engine.pool.flow_hash[fslot] = engine.pool.flow_hash[slot]
            dst = int.from_bytes(frag[16:20], "big")
            self._resolve(engine, fslot, time, r, forwarded, dst, int.from_bytes(frag[12:16], "big"),
                          f"fragment of {len(frag)} bytes for mtu {mtu}")
        return engine.note(f"fragmented into {len(frags)} for mtu {mtu} of {dev}")

    def _resolve(self, engine, slot, time, r, forwarded, dst, src, first_note=None) -> None:
        """Neighbour lookup for the next hop: send, or hold the packet while ARP resolves."""
        route = self.routes[r]
        nexthop = route.via or dst
        key = (route.dev, nexthop)
        entry = self.neigh.get(key)
        if entry is not None and entry.state in ("REACHABLE", "PERMANENT"):
            self._finish_output(engine, np.array([slot], np.int32), np.array([time], np.int64),
                                np.array([r], np.int32), forwarded, first_note)
            return
        iface = self.ifaces[route.dev]
        if entry is None:
            entry = self.neigh[key] = Neighbour()
            entry.probes = 1
            self._arp_solicit(engine, route.dev, nexthop, time, src)
            engine.at(time + ARP_RETRANS_NS, self._arp_timer(route.dev, nexthop, src))
        if len(entry.queue) >= UNRES_QLEN:
            # __neigh_event_send drops the oldest queued packet to make room
            old = entry.queue.pop(0)[0]
            engine.drop(self, np.array([old], np.int32), Drop.NEIGH_QUEUE_FULL,
                        np.array([time], np.int64), iface.port.id)
        entry.queue.append((slot, r, forwarded, first_note))
        # what NAT said of it belongs to the hop it leaves by, once ARP answers
        said = self.annotations.pop(int(engine.pool.pkt_id[slot]), None)
        if said:
            self.held_annotations[int(engine.pool.pkt_id[slot])] = said
        engine.held(np.array([slot], np.int32), np.array([time], np.int64), iface.port.id,
                    engine.note(f"held: waiting for ARP {ipv4.ntoa(nexthop)} on {iface.name}"))

    def _finish_output(self, engine, slots, times, routes, forwarded, first_note=None) -> None:
        """Next hop resolved: set the MACs and put the frames on their interfaces."""
        pool = engine.pool
        for slot, time, r in zip(slots.tolist(), times.tolist(), routes.tolist()):
            route = self.routes[r]
            iface = self.ifaces[route.dev]
            dst_ip = int.from_bytes(pool.frame(slot)[30:34], "big")
            entry = self.neigh[(route.dev, route.via or dst_ip)]
            rewrite.set_macs(pool.buf, pool.start[[slot]], np.array([entry.mac], np.uint64),
                             np.array([iface.mac], np.uint64))
            ctinfo = int(pool.ctinfo[slot])
            note = engine.note(self._with_ct(first_note, ctinfo)) if first_note \
                else self._route_note(engine, r, forwarded, ctinfo)
            pid = int(pool.pkt_id[slot])
            said = self.annotations.pop(pid, None) or self.held_annotations.pop(pid, None)
            if said:
                note = engine.note(f"{engine.notes[note]}; {said}")
            one_slot, one_time = np.array([slot], np.int32), np.array([time], np.int64)
            if iface.kind == "vxlan":
                engine.observe(iface.port.id, one_slot, one_time, note)
                self._vxlan_output(engine, iface, one_slot, one_time)
            else:
                engine.transmit(np.array([iface.port.id], np.int32), one_slot, one_time, note)

    # -- VXLAN (drivers/net/vxlan: vxlan_rcv, vxlan_xmit_one) -------------------------
    def _vxlan_input(self, engine, ifindex, slot, time, h, k) -> int:
        port = self.ifaces[ifindex].port.id
        one_slot, one_time = np.array([slot], np.int32), np.array([time], np.int64)
        dev = next((i for i in self.ifaces if i.kind == "vxlan" and i.dstport == int(h.dport[k])
                    and i.vni == int(h.vni[k])), None)
        if dev is None:
            engine.drop(self, one_slot, Drop.UNKNOWN_VNI, one_time, port)
            return engine.note(f"drop: UNKNOWN_VNI {int(h.vni[k])} on udp/{int(h.dport[k])}")
        pool = engine.pool
        inner = int(h.inner_off[k])
        pool.start[slot] += inner
        pool.length[slot] -= inner
        note = engine.note(f"VXLAN decap VNI {dev.vni} from {ipv4.ntoa(int(h.ip_src[k]))} into {dev.name}")
        if engine.log is not None:
            engine.log.add(one_time, pool, one_slot, dev.port.id, HopLog.KINDS.index("decap"), note)
        # the inner frame is received on the VXLAN device, where a tap sees it
        rec = engine.taps.record_rx(engine, np.array([dev.port.id], np.int32), one_slot, one_time) \
            if engine.taps is not None else None
        inner_notes = self._input(engine, np.array([dev.index], np.int32), one_slot, one_time)
        if rec is not None:
            engine.taps.set_notes(rec, inner_notes)
        return note

    def _vxlan_output(self, engine, dev: Interface, slots, times) -> None:
        """Encapsulate frames sent on a VXLAN device toward the VTEP its FDB
        names for the inner destination MAC, and route them from the local address."""
        pool = engine.pool
        h = parse.parse(pool.buf, pool.start[slots], pool.length[slots], ())
        remote = np.array([dev.fdb.get(int(m), 0) for m in h.eth_dst.tolist()], np.uint32)
        miss = remote == 0  # learning is off: no FDB entry, no destination (ARP broadcasts too)
        if miss.any():
            engine.drop(self, slots[miss], Drop.NO_FDB_ENTRY, times[miss], dev.port.id)
        keep = np.nonzero(~miss)[0]
        if not len(keep):
            return
        slots, times, h, remote = slots[keep], times[keep], _take(h, keep), remote[keep]
        # Linux picks the outer source port with udp_flow_src_port() from the inner flow hash
        sport = hashing.udp_source_port(_flow_hashes(engine, slots, h), 0, 0)
        rewrite.vxlan_encap(pool.buf, pool.start, pool.length, slots, dev.local_ip, remote,
                            sport, dev.dstport, dev.vni, ipv4.DEFAULT_TTL, self._next_ip_ids(len(slots)))
        # the outer packet is locally generated: ip_local_out runs the OUTPUT hook
        pool.ct[slots], pool.ctinfo[slots] = -1, 0
        routes = lpm.lookup(self._fib_table(), remote)
        outer = parse.parse(pool.buf, pool.start[slots], pool.length[slots], self._vxlan_ports())
        out_if = np.array([self.routes[r].dev if r >= 0 else 0 for r in routes.tolist()], np.int32)
        verdict = self.run_hook("OUTPUT", engine, slots, times, outer, out_if)
        for k in range(len(slots)):
            if verdict[k]:
                engine.drop(self, slots[k:k + 1], verdict[k:k + 1], times[k:k + 1], dev.port.id)
                continue
            one_slot, one_time = slots[k:k + 1], times[k:k + 1]
            if routes[k] < 0:
                engine.drop(self, one_slot, Drop.NO_ROUTE, one_time, dev.port.id)
                continue
            text = f"VXLAN encap VNI {dev.vni} -> {ipv4.ntoa(int(remote[k]))}, " \
                   f"route {self.routes[int(routes[k])].text(self)}"
            self._resolve(engine, int(slots[k]), int(times[k]), int(routes[k]), False,
                          int(remote[k]), dev.local_ip, text)

    def _next_ip_ids(self, n):
        ids = (self._ip_id + np.arange(n)) & 0xFFFF
        self._ip_id = (self._ip_id + n) & 0xFFFF
        return ids.astype(np.uint16)

    # -- ICMP errors (net/ipv4/icmp.c: icmp_send) --------------------------------------
    def reject(self, engine, slot: int, time: int, code: int = 3) -> None:
        """iptables -j REJECT (icmp-port-unreachable by default) for the packet in
        `slot`: the ICMP error is sent; dropping the packet is the caller's verdict."""
        self._icmp_error(engine, slot, time, 3, code)

    def _icmp_error(self, engine, slot, time, icmp_type, code, mtu=0) -> None:
        """Answer the packet in `slot` with an ICMP error, unless Linux would not:
        never about an ICMP error, a non-first fragment, or a broadcast/multicast."""
        frame = engine.pool.frame(slot)
        h = parse.parse(engine.pool.buf, engine.pool.start[[slot]], engine.pool.length[[slot]], ())
        flags = int(h.flags[0])
        if not flags & parse.IPV4 or flags & parse.ICMP_ERROR or int(h.frag_off[0]):
            return
        dst = int(h.ip_src[0])
        if dst == 0 or dst >> 28 == 0xE or dst == 0xFFFFFFFF or int(h.eth_dst[0]) >> 40 & 1:
            return
        r = self.route(dst)
        if r < 0:
            return
        quoted = frame[int(h.l3_off[0]):int(h.l3_off[0]) + int(h.ip_len[0])]
        quoted = quoted[: ICMP_QUOTE_LIMIT - 28]
        packet = craft.icmp_error(self.source_for(self.routes[r]), dst, icmp_type, code, quoted, mtu)
        what = icmp.name(icmp_type, code) + (f" (mtu {mtu})" if mtu else "")
        self.send_ip(engine, packet, time, note=f"ICMP {what} to {ipv4.ntoa(dst)}")


def _flow_hashes(engine, slots, h) -> np.ndarray:
    """The packets' flow hashes (skb->hash): computed once from the 5-tuple
    (ICMP queries by their id) and then carried with the packet across hops."""
    pool = engine.pool
    have = pool.flow_hash[slots]
    todo = have == 0
    if todo.any():
        t = np.nonzero(todo)[0]
        icmp = h.ip_proto[t] == ipv4.PROTO_ICMP
        dport = np.where(icmp, 0, h.dport[t]).astype(np.uint16)  # sequence numbers are not flow
        have[t] = hashing.flow_hash(h.ip_src[t], h.ip_dst[t], h.sport[t], dport, h.ip_proto[t], engine.seed)
        pool.flow_hash[slots[t]] = have[t]
    return have


def _take(h: parse.Headers, index) -> parse.Headers:
    """The rows `index` of every column."""
    return parse.Headers(*(col[index] for col in h))
