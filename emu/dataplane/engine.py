"""The event engine: ports, links, devices and a virtual clock.

Topology is data (Mininet style): devices own ports; a link joins two ports
with a latency (a veth pair is such a link: what one end transmits the other
receives). Packets live in the Pool and move as slot indices.

Time is virtual, in integer nanoseconds; nothing reads the wall clock.
Every packet carries an arrival time; ties break by a global sequence number,
so the order of events is (time, sequence) and runs are reproducible.

Devices process packets in batches (VPP style). The engine repeatedly takes
the earliest pending time T and lets devices process everything that arrives
before T + window, earliest device first. With `window` no larger than the
smallest link latency (the default) no packet sent in a window can arrive in
the same window, so batching changes nothing observable. A larger window
(bulk runs) trades strict causality across devices for bigger batches; each
device still sees its own packets in time order.

Timers (ARP retries, app steps, TCP retransmission) are callbacks at a
virtual time; they run before any packet of the same or a later time.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from emu.dataplane.pool import Pool
from emu.errors import EmuError
from kernels.drop import Drop, describe

NS_PER_US = 1_000
DEFAULT_LATENCY_NS = 1 * NS_PER_US  # a veth or bridge hop; underlay links set their own


@dataclass
class Port:
    id: int
    name: str            # "node-1/cni0": device name / interface name
    device: "Device"
    mac: int = 0         # 48-bit MAC as an int (0: none)
    mtu: int = 1500
    peer: int = -1       # port id at the other end of the link, -1 unconnected
    latency_ns: int = DEFAULT_LATENCY_NS
    up: bool = True
    tapped: bool = False


class Device:
    """A network element: owns ports and processes batches of arriving packets.

    Subclasses implement `receive(engine, ports, slots, times) -> notes`: for
    every arriving packet, transmit it (engine.transmit), deliver it, drop it
    (engine.drop) or hold it, and return per packet the note id of what was
    decided (used as the comment of its capture on a tapped ingress port)."""

    kind = "device"

    def __init__(self, name: str, host: str | None = None):
        self.name = name
        self.host = host or name  # the namespace its interfaces are named after
        self.id = -1
        self.ports: list[Port] = []
        self.engine: Engine | None = None

    def port(self, ifname: str) -> Port:
        for p in self.ports:
            if p.name.endswith("/" + ifname):
                return p
        raise EmuError(f"{self.name} has no interface {ifname}")

    def receive(self, engine: "Engine", ports: np.ndarray, slots: np.ndarray,
                times: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass
class _Inbox:
    times: list = field(default_factory=list)
    seqs: list = field(default_factory=list)
    ports: list = field(default_factory=list)
    slots: list = field(default_factory=list)
    earliest: int | None = None

    def add(self, times, seqs, ports, slots) -> None:
        self.times.append(times)
        self.seqs.append(seqs)
        self.ports.append(ports)
        self.slots.append(slots)
        t = int(times.min())
        if self.earliest is None or t < self.earliest:
            self.earliest = t

    def take_before(self, end: int):
        """Remove and return (ports, slots, times) of packets arriving before
        `end`, ordered by (time, sequence)."""
        times = np.concatenate(self.times)
        seqs = np.concatenate(self.seqs)
        ports = np.concatenate(self.ports)
        slots = np.concatenate(self.slots)
        now = times < end
        keep = ~now
        if keep.any():
            self.times, self.seqs = [times[keep]], [seqs[keep]]
            self.ports, self.slots = [ports[keep]], [slots[keep]]
            self.earliest = int(times[keep].min())
        else:
            self.times, self.seqs, self.ports, self.slots = [], [], [], []
            self.earliest = None
        t, q, p, s = times[now], seqs[now], ports[now], slots[now]
        order = np.lexsort((q, t))
        return p[order], s[order], t[order]


class HopLog:
    """Every transmit, delivery and drop as columns: the data behind traces."""

    KINDS = ("tx", "deliver", "drop", "hold", "decap")

    def __init__(self):
        self._cols: dict[str, list[np.ndarray]] = {
            k: [] for k in ("time", "pkt_id", "flow", "port", "kind", "note")}

    def add(self, time, pool, slots, port, kind: int, note) -> None:
        n = len(slots)
        self._cols["time"].append(np.asarray(time, np.int64))
        self._cols["pkt_id"].append(pool.pkt_id[slots])
        self._cols["flow"].append(pool.flow_hash[slots])
        self._cols["port"].append(np.broadcast_to(np.asarray(port, np.int32), (n,)).copy())
        self._cols["kind"].append(np.full(n, kind, np.uint8))
        self._cols["note"].append(np.broadcast_to(np.asarray(note, np.int32), (n,)).copy())

    def columns(self) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self._cols.items()}


@dataclass
class Hop:
    time_ns: int
    kind: str      # tx, deliver, drop, hold, decap
    port: str      # the interface it left by, or where it was delivered / dropped
    note: str      # the decision


class Engine:
    def __init__(self, seed: int = 1, window_ns: int | None = None, trace: bool = True):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.pool = Pool()
        self.ports: list[Port] = []
        self.devices: list[Device] = []
        self.now = 0
        self._window = window_ns
        self._seq = 0
        self.events = 0      # timers run and device visits: caches of table state compare it
        self._inbox: list[_Inbox] = []
        self._ready: list[tuple[int, int]] = []  # heap of (earliest time, device id), may hold stale entries
        self._timers: list[tuple[int, int, object]] = []
        self.notes: list[str] = []
        self._note_ids: dict[str, int] = {}
        self.drops = np.zeros((0, 256), np.int64)
        self.log = HopLog() if trace else None
        self.taps = None  # an emu.capture.taps.Taps, set by Engine.capture()
        self._port_arrays = None

    # -- building -------------------------------------------------------------
    def add(self, device: Device) -> Device:
        if any(d.name == device.name for d in self.devices):
            raise EmuError(f"duplicate device name {device.name!r}")
        device.id = len(self.devices)
        device.engine = self
        self.devices.append(device)
        self._inbox.append(_Inbox())
        self.drops = np.vstack([self.drops, np.zeros((1, 256), np.int64)])
        return device

    def add_port(self, device: Device, ifname: str, mac: int = 0, mtu: int = 1500) -> Port:
        """A port named "<host>/<ifname>", host being the namespace the
        interface lives in (device.host, by default the device's own name)."""
        port = Port(len(self.ports), f"{device.host}/{ifname}", device, mac=mac, mtu=mtu)
        if any(p.name == port.name for p in self.ports):
            raise EmuError(f"duplicate interface {port.name}")
        self.ports.append(port)
        device.ports.append(port)
        self._port_arrays = None
        return port

    def link(self, a: Port, b: Port, latency_ns: int = DEFAULT_LATENCY_NS) -> None:
        """Join two ports (a veth pair, or a cable to a switch)."""
        if latency_ns <= 0:
            raise EmuError(f"link {a.name} <-> {b.name}: latency must be positive")
        for p in (a, b):
            if p.peer != -1:
                raise EmuError(f"{p.name} is already linked to {self.ports[p.peer].name}")
        a.peer, b.peer = b.id, a.id
        a.latency_ns = b.latency_ns = latency_ns
        self._port_arrays = None

    def set_link_up(self, port: Port, up: bool) -> None:
        port.up = up
        self._port_arrays = None

    def capture(self, ports) -> None:
        """Tap these ports (Port objects): their frames go into the run's capture."""
        from emu.capture.taps import Taps

        self.taps = Taps(list(ports))

    def note(self, text: str) -> int:
        """The id of a decision text (interned: bulk paths pass ids, not strings)."""
        i = self._note_ids.get(text)
        if i is None:
            i = self._note_ids[text] = len(self.notes)
            self.notes.append(text)
        return i

    def _arrays(self):
        if self._port_arrays is None:
            self._port_arrays = (
                np.array([p.peer for p in self.ports], np.int32),
                np.array([p.latency_ns for p in self.ports], np.int64),
                np.array([p.device.id for p in self.ports], np.int32),
                np.array([p.up for p in self.ports], bool),
            )
        return self._port_arrays

    @property
    def window_ns(self) -> int:
        if self._window is not None:
            return self._window
        lat = [p.latency_ns for p in self.ports if p.peer != -1]
        return min(lat) if lat else DEFAULT_LATENCY_NS

    # -- what devices call ---------------------------------------------------------
    def transmit(self, ports: np.ndarray, slots: np.ndarray, times: np.ndarray, notes) -> None:
        """Send packets out of ports at times; they arrive at the peers after the link latency."""
        ports = np.asarray(ports, np.int32)
        if len(slots) == 0:
            return
        notes = np.broadcast_to(np.asarray(notes, np.int32), (len(slots),))
        if self.taps is not None:
            self.taps.record(self, ports, slots, times, notes)
        if self.log is not None:
            self.log.add(times, self.pool, slots, ports, 0, notes)
        # leaving the namespace: skb_scrub_packet forgets the mark and the
        # conntrack reference (the next namespace tracks the packet afresh)
        self.pool.mark[slots] = 0
        self.pool.ct[slots] = -1
        self.pool.ctinfo[slots] = 0
        peer, latency, device_of, up = self._arrays()
        dst = peer[ports]
        ok = (dst >= 0) & up[ports]
        ok[ok] &= up[dst[ok]]
        if not ok.all():
            bad = ~ok
            owners = device_of[ports[bad]]
            for dev in np.unique(owners):
                sel = owners == dev
                self.drop(self.devices[dev], slots[bad][sel], Drop.LINK_DOWN, times[bad][sel],
                          ports[bad][sel])
            ports, slots, times, dst = ports[ok], slots[ok], times[ok], dst[ok]
        arrive = times + latency[ports]
        dev_of_dst = device_of[dst]
        seqs = np.arange(self._seq, self._seq + len(slots), dtype=np.int64)
        self._seq += len(slots)
        for dev in np.unique(dev_of_dst):
            sel = dev_of_dst == dev
            box = self._inbox[dev]
            box.add(arrive[sel], seqs[sel], dst[sel], slots[sel])
            heapq.heappush(self._ready, (box.earliest, int(dev)))

    def drop_notes(self, reasons) -> np.ndarray:
        """Note ids "drop: REASON" for an array of drop codes."""
        reasons = np.asarray(reasons, np.uint8)
        table = np.zeros(256, np.int32)
        for r in np.unique(reasons).tolist():
            table[r] = self.note(f"drop: {describe(r)}")
        return table[reasons]

    def drop(self, device: Device, slots: np.ndarray, reasons, times, ports=-1) -> None:
        """Packets end here with a reason from kernels.drop; counted per device and reason."""
        if len(slots) == 0:
            return
        reasons = np.broadcast_to(np.asarray(reasons, np.uint8), (len(slots),))
        np.add.at(self.drops[device.id], reasons, 1)
        if self.log is not None:
            self.log.add(times, self.pool, slots, ports, 2, self.drop_notes(reasons))
        self.pool.release(np.asarray(slots, np.int32))

    def deliver(self, device: Device, slots: np.ndarray, times, port: int, note: int) -> None:
        """Packets consumed by the device itself (a socket, the ARP code)."""
        if self.log is not None and len(slots):
            self.log.add(times, self.pool, slots, port, 1, note)
        self.pool.release(np.asarray(slots, np.int32))

    def held(self, slots, times, port: int, note: int) -> None:
        """Packets parked by a device (waiting for ARP): logged, not released."""
        if self.log is not None and len(slots):
            self.log.add(times, self.pool, slots, port, 3, note)

    def observe(self, ports, slots, times, notes) -> None:
        """Frames seen on a virtual interface (a VXLAN device) without crossing a
        link: captured and logged like a transmit, but nothing is scheduled."""
        ports = np.broadcast_to(np.asarray(ports, np.int32), (len(slots),))
        notes = np.broadcast_to(np.asarray(notes, np.int32), (len(slots),))
        if self.taps is not None:
            self.taps.record(self, ports, slots, times, notes)
        if self.log is not None:
            self.log.add(times, self.pool, slots, ports, 0, notes)

    def at(self, time_ns: int, callback) -> None:
        """Run callback(engine) at a virtual time (not before now)."""
        t = max(int(time_ns), self.now)
        heapq.heappush(self._timers, (t, self._seq, callback))
        self._seq += 1

    def send(self, port: Port, frame: bytes, time_ns: int | None = None, note: str = "sent") -> int:
        """Slow path: put one frame on the wire from `port` (as its device); returns the packet id."""
        slot = self.pool.put(frame)
        t = self.now if time_ns is None else int(time_ns)
        self.transmit(np.array([port.id], np.int32), np.array([slot], np.int32),
                      np.array([t], np.int64), self.note(note))
        return int(self.pool.pkt_id[slot])

    # -- running -------------------------------------------------------------------
    def _next_packet_time(self) -> int | None:
        while self._ready:
            t, dev = self._ready[0]
            if self._inbox[dev].earliest == t:
                return t
            heapq.heappop(self._ready)  # stale
        return None

    def run(self, until_ns: int | None = None) -> None:
        """Process events in (time, sequence) order until none is left or the
        next one is after `until_ns`."""
        window = self.window_ns
        inf = np.iinfo(np.int64).max
        while True:
            tp = self._next_packet_time()
            tt = self._timers[0][0] if self._timers else None
            t_next = min(x for x in (tp, tt, inf) if x is not None)
            if t_next == inf or (until_ns is not None and t_next > until_ns):
                break
            if tt is not None and tt <= t_next:
                while self._timers and self._timers[0][0] == tt:
                    _, _, cb = heapq.heappop(self._timers)
                    self.now = tt
                    self.events += 1
                    cb(self)
                continue
            end = t_next + window
            if tt is not None:
                end = min(end, tt)
            if until_ns is not None:
                end = min(end, until_ns + 1)
            while (tp := self._next_packet_time()) is not None and tp < end:
                _, dev = heapq.heappop(self._ready)
                ports, slots, times = self._inbox[dev].take_before(end)
                if self._inbox[dev].earliest is not None:
                    heapq.heappush(self._ready, (self._inbox[dev].earliest, dev))
                self.now = int(times[0])
                self._receive(self.devices[dev], ports, slots, times)
            self.now = max(self.now, end - 1)
        if until_ns is not None:
            self.now = max(self.now, until_ns)

    def _receive(self, device: Device, ports, slots, times) -> None:
        self.events += 1
        rec = self.taps.record_rx(self, ports, slots, times) if self.taps is not None else None
        notes = device.receive(self, ports, slots, times)
        if rec is not None:
            self.taps.set_notes(rec, notes)

    # -- results ---------------------------------------------------------------------
    def drop_summary(self) -> list[tuple[str, str, int]]:
        """(device, reason, count) for every non-zero counter, by device then reason."""
        rows = []
        for dev in self.devices:
            for reason in np.nonzero(self.drops[dev.id])[0]:
                rows.append((dev.name, describe(int(reason)), int(self.drops[dev.id, reason])))
        return rows

    def trace_flow(self, src: str, dst: str, proto: int, sport: int = 0, dport: int = 0,
                   both_ways: bool = True) -> dict[int, list[Hop]]:
        """The hops of every packet of a flow (for ICMP queries sport is the
        echo id), by packet id; with both_ways the replies too."""
        from emu.wire import ipv4
        from kernels.hashing import flow_hash

        if self.log is None:
            raise EmuError("tracing is off for this run")
        a, b = ipv4.aton(src), ipv4.aton(dst)
        tuples = [(a, b, sport, dport)] + ([(b, a, dport, sport)] if both_ways else [])
        if proto == 1:  # ICMP queries: the id, both ways (as the data plane hashes them)
            tuples = [(x, y, sport, 0) for x, y, _, _ in tuples]
        cols = [np.array(c, dtype) for c, dtype in zip(zip(*tuples), (np.uint32, np.uint32, np.uint16, np.uint16))]
        hashes = flow_hash(*cols, np.full(len(tuples), proto, np.uint8), self.seed)
        c = self.log.columns()
        ids = np.unique(c["pkt_id"][np.isin(c["flow"], hashes)])
        return {int(i): self.trace(int(i)) for i in ids}

    def trace(self, pkt_id: int) -> list[Hop]:
        """The hops of one packet (all its copies), in time order."""
        if self.log is None:
            raise EmuError("tracing is off for this run")
        c = self.log.columns()
        sel = np.nonzero(c["pkt_id"] == pkt_id)[0]
        hops = []
        for i in sel[np.argsort(c["time"][sel], kind="stable")]:
            port = int(c["port"][i])
            hops.append(Hop(int(c["time"][i]), HopLog.KINDS[int(c["kind"][i])],
                            self.ports[port].name if port >= 0 else "-", self.notes[int(c["note"][i])]))
        return hops
