"""A Linux bridge (cni0, or the underlay switch): MAC learning with ageing,
flooding of broadcast and unknown unicast, per-port hairpin mode, and the
bridge's own interface as a host port (kernels.fdb has the rules, with
their sources in net/bridge).

Ports 0..P-1 are bridge ports (the host ends of pod veths). The optional
host port is the bridge device itself as the host sees it: its link leads
to the node namespace's `cni0` interface. Frames the bridge passes up
(br_pass_frame_up) go out of the host port; frames the host sends on cni0
come in on it and are forwarded without learning (br_dev_xmit).
"""
from __future__ import annotations

import numpy as np

from emu.dataplane.engine import Device, Engine, Port
from emu.errors import EmuError
from kernels import fdb as fdbk
from kernels import parse
from kernels.drop import Drop


class Bridge(Device):
    kind = "bridge"

    def __init__(self, name: str, mac: int = 0, host: str | None = None,
                 ageing_time_ns: int = fdbk.DEFAULT_AGEING_TIME, capacity: int = 4096, seed: int = 0):
        super().__init__(name, host)
        self.mac = mac
        self.fdb = fdbk.make_fdb(capacity, ageing_time_ns, seed)
        if mac:
            fdbk.add_permanent(self.fdb, mac, -1)
        self.bports: list[Port] = []      # bridge ports, index = fdb port number
        self.hairpin: list[bool] = []
        self.host_port: Port | None = None
        self._index: dict[int, int] = {}  # engine port id -> bridge port number
        self.netfilter = None            # the host Netns whose hooks see bridged IPv4 (br_netfilter)
        self.netfilter_ifname = ""       # the bridge's interface in that namespace

    def add_bridge_port(self, ifname: str, mac: int = 0, hairpin: bool = False) -> Port:
        """`ip link set IFNAME master BRIDGE` (+ `bridge link set dev IFNAME hairpin on`)."""
        port = self.engine.add_port(self, ifname, mac=mac)
        self._index[port.id] = len(self.bports)
        self.bports.append(port)
        self.hairpin.append(hairpin)
        if mac:
            fdbk.add_permanent(self.fdb, mac, len(self.bports) - 1)
        return port

    def add_host_port(self, ifname: str) -> Port:
        if self.host_port is not None:
            raise EmuError(f"{self.name} already has a host port")
        self.host_port = self.engine.add_port(self, ifname, mac=self.mac)
        return self.host_port

    def _port_state(self):
        up = np.array([p.up for p in self.bports], bool)
        return up, np.array(self.hairpin, bool)

    def receive(self, engine: Engine, ports, slots, times) -> np.ndarray:
        notes = np.zeros(len(slots), np.int32)
        from_host = ports == (self.host_port.id if self.host_port else -1)
        if from_host.any():
            sel = np.nonzero(from_host)[0]
            notes[sel] = self._from_host(engine, slots[sel], times[sel])
        sel = np.nonzero(~from_host)[0]
        if len(sel):
            notes[sel] = self._from_ports(engine, ports[sel], slots[sel], times[sel])
        return notes

    def _frame_macs(self, engine, slots):
        pool = engine.pool
        return fdbk.frame_macs(pool.buf, pool.start[slots], pool.length[slots])

    def _from_ports(self, engine, ports, slots, times) -> np.ndarray:
        up, hairpin = self._port_state()
        macs = self._frame_macs(engine, slots)
        short = macs.dst == np.uint64(fdbk.NO_MAC)
        notes = np.zeros(len(slots), np.int32)
        if short.any():
            notes[short] = engine.drop_notes(np.full(short.sum(), Drop.TRUNC_ETH, np.uint8))
            engine.drop(self, slots[short], Drop.TRUNC_ETH, times[short], ports[short])
        ok = np.nonzero(~short)[0]
        ingress = np.array([self._index[p] for p in ports[ok].tolist()], np.int32)
        # the FDB's clock never goes back; a packet the bulk fast path handed over
        # may be a little behind it (emu.bulk): learn it at the clock's time
        learn_times = np.maximum(times[ok], fdbk.current_time(self.fdb))
        d = fdbk.forward(self.fdb, macs.dst[ok], macs.src[ok], ingress, learn_times, up, hairpin)
        if self.netfilter is not None:
            self._br_netfilter(engine, slots[ok], times[ok], d)
        for j, k in enumerate(ok.tolist()):
            slot, t, act = slots[k:k + 1], times[k:k + 1], int(d.action[j])
            inport = self.bports[int(ingress[j])].name.split("/")[-1]
            if act == 0:
                notes[k] = engine.drop_notes(d.drop[j:j + 1])[0]
                engine.drop(self, slot, d.drop[j:j + 1], t, int(ports[k]))
                continue
            if act & fdbk.FORWARD:
                out = self.bports[int(d.out_port[j])]
                notes[k] = engine.note(f"bridge {self.name}: forward {inport} -> {out.name.split('/')[-1]} (learned)")
                engine.transmit(np.array([out.id], np.int32), slot, t, notes[k])
                continue
            targets = []
            if act & fdbk.FLOOD:
                targets = [self.bports[p].id for p in fdbk.flood_ports(int(ingress[j]), up, hairpin).tolist()]
            if act & fdbk.LOCAL and self.host_port is not None:
                targets.append(self.host_port.id)
            what = "flood" if act & fdbk.FLOOD else "to host"
            why = " (broadcast/multicast)" if act & fdbk.LOCAL and act & fdbk.FLOOD else \
                  " (unknown unicast)" if act & fdbk.FLOOD else ""
            notes[k] = engine.note(f"bridge {self.name}: {what} from {inport}{why}")
            self._send_copies(engine, slot, t, targets, notes[k])
        return notes

    def _br_netfilter(self, engine, slots, times, d) -> None:
        """br_netfilter (bridge-nf-call-iptables=1, which kubeadm requires): IPv4
        frames bridged between ports go through the host namespace's
        PREROUTING, FORWARD and POSTROUTING hooks, so conntrack and NAT see
        pod-to-pod traffic on one node (the reply of a Service connection
        whose backend shares the client's bridge is un-DNATed here). A frame
        a hook rejects becomes a drop with that reason."""
        bridged = np.nonzero((d.action & (fdbk.FORWARD | fdbk.FLOOD)) != 0)[0]
        if not len(bridged):
            return
        pool, ns = engine.pool, self.netfilter
        h = parse.parse(pool.buf, pool.start[slots[bridged]], pool.length[slots[bridged]], ())
        ip = np.nonzero((h.drop == 0) & ((h.flags & parse.IPV4) != 0))[0]
        if not len(ip):
            return
        idx, hh = bridged[ip], parse.Headers(*(col[ip] for col in h))
        ifx = np.full(len(idx), ns.iface(self.netfilter_ifname).index, np.int32)
        verdict = np.zeros(len(idx), np.uint8)
        for hook in ("PREROUTING", "FORWARD", "POSTROUTING"):
            live = verdict == 0
            v = ns.run_hook(hook, engine, slots[idx], times[idx], hh, ifx)
            verdict[live] = v[live]
        rejected = np.nonzero(verdict)[0]
        d.action[idx[rejected]] = 0
        d.drop[idx[rejected]] = verdict[rejected]

    def _from_host(self, engine, slots, times) -> np.ndarray:
        """br_dev_xmit: the host sends through the bridge; no learning."""
        up, hairpin = self._port_state()
        macs = self._frame_macs(engine, slots)
        where = fdbk.lookup(self.fdb, macs.dst, max(int(times.max()), fdbk.current_time(self.fdb)))
        notes = np.zeros(len(slots), np.int32)
        for k in range(len(slots)):
            slot, t, p = slots[k:k + 1], times[k:k + 1], int(where[k])
            mcast = bool((int(macs.dst[k]) >> 40) & 1)
            if p >= 0 and not mcast and up[p]:
                out = self.bports[p]
                notes[k] = engine.note(f"bridge {self.name}: host -> {out.name.split('/')[-1]} (learned)")
                engine.transmit(np.array([out.id], np.int32), slot, t, notes[k])
            elif p == fdbk.HOST_PORT:
                notes[k] = engine.note(f"drop: bridge {self.name}: frame to its own address")
                engine.drop(self, slot, Drop.BRIDGE_NO_PORT, t, self.host_port.id)
            else:
                targets = [q.id for i, q in enumerate(self.bports) if up[i]]
                notes[k] = engine.note(f"bridge {self.name}: host floods to {len(targets)} ports")
                self._send_copies(engine, slot, t, targets, notes[k])
        return notes

    def _send_copies(self, engine, slot, t, targets, note) -> None:
        if not targets:
            engine.drop(self, slot, Drop.BRIDGE_NO_PORT, t)
            return
        copies = [slot] + [engine.pool.clone(slot) for _ in targets[1:]]
        engine.transmit(np.array(targets, np.int32), np.concatenate(copies), np.repeat(t, len(targets)), note)
