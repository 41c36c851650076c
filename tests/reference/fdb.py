"""Plain-Python bridge FDB and forwarding decision: a dict from MAC to entry,
frames handled one at a time, as br_handle_frame / br_fdb_update /
br_forward / br_flood read. Same semantics as kernels.fdb (its docstring
explains them), written without its hashing and slot bookkeeping: the table
is a dict, and the "full table" rule counts entries and drops expired ones
when a new MAC needs room."""
from __future__ import annotations

from dataclasses import dataclass, field

from kernels import drop

# Actions and results, as kernels.fdb (spelled out again so a change to either shows).
DROP, FORWARD, FLOOD, LOCAL = 0, 1, 2, 4
NO_PORT, HOST_PORT = -1, -2
LINK_DOWN = drop.LINK_DOWN
BRIDGE_NO_PORT = drop.BRIDGE_NO_PORT
INVALID_SOURCE = drop.MAC_INVALID_SOURCE

GROUP_BIT = 1 << 40  # I/G bit of the first byte


def valid_mac(mac: int) -> bool:
    """is_valid_ether_addr: not multicast, not zero."""
    return mac != 0 and not mac & GROUP_BIT


@dataclass
class Entry:
    port: int
    updated: int
    local: bool = False


@dataclass
class Fdb:
    capacity: int
    ageing_time: int
    table: dict[int, Entry] = field(default_factory=dict)
    clock: int = 0  # the latest time seen: learn, forward and expire set it
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("count", "learned", "moved", "refused", "own_address", "expired", "deleted"), 0))

    def expired(self, e: Entry, now: int) -> bool:
        return not e.local and e.updated + self.ageing_time <= now

    def _drop(self, mac: int, reason: str) -> None:
        del self.table[mac]
        self.stats[reason] += 1
        self.stats["count"] -= 1

    def expire(self, now: int) -> int:
        self.clock = now
        return self._reap(now)

    def _reap(self, now: int) -> int:
        gone = [mac for mac, e in self.table.items() if self.expired(e, now)]
        for mac in gone:
            self._drop(mac, "expired")
        return len(gone)

    def _room(self, now: int) -> bool:
        if len(self.table) >= self.capacity:
            self._reap(now)
        return len(self.table) < self.capacity

    def learn_one(self, mac: int, port: int, now: int) -> None:
        if self.ageing_time == 0 or not valid_mac(mac):
            return
        e = self.table.get(mac)
        if e is not None and e.local:
            self.stats["own_address"] += 1
        elif e is not None and self.expired(e, now):
            self._drop(mac, "expired")
            self._create(mac, port, now)
        elif e is not None:
            if e.port != port:
                self.stats["moved"] += 1
                e.port = port
                e.updated = now
            else:
                e.updated = max(e.updated, now)
        elif self._room(now):
            self._create(mac, port, now)
        else:
            self.stats["refused"] += 1

    def learn(self, macs, ports, times) -> None:
        for mac, port, now in zip(macs, ports, times):
            self.clock = now
            self.learn_one(mac, port, now)

    def _create(self, mac: int, port: int, now: int) -> None:
        self.table[mac] = Entry(port, now)
        self.stats["learned"] += 1
        self.stats["count"] += 1

    def add_permanent(self, mac: int, port: int) -> bool:
        """False when the table is full (the kernel raises)."""
        now = self.clock
        e = self.table.get(mac)
        if e is not None and e.local:
            return True
        if e is None:
            if not self._room(now):
                return False
            self.stats["count"] += 1
        self.table[mac] = Entry(port, now, local=True)
        return True

    def lookup_one(self, mac: int, now: int) -> int:
        e = self.table.get(mac)
        if e is None or self.expired(e, now):
            return NO_PORT
        return HOST_PORT if e.local else e.port

    def delete(self, macs: list[int]) -> int:
        n = 0
        for mac in macs:
            if mac in self.table:
                self._drop(mac, "deleted")
                n += 1
        return n

    def flush_port(self, port: int) -> int:
        gone = [mac for mac, e in self.table.items() if not e.local and e.port == port]
        for mac in gone:
            self._drop(mac, "deleted")
        return len(gone)

    def entries(self) -> list[tuple[int, int, int, bool]]:
        return [(mac, e.port, e.updated, e.local) for mac, e in sorted(self.table.items())]

    # -- the bridge --------------------------------------------------------------

    def forward_one(self, dst: int, src: int, ingress: int, now: int,
                    port_up: list[bool], hairpin: list[bool]) -> tuple[int, int, int]:
        """(out_port, action, drop reason) for one frame."""
        self.clock = now
        if not port_up[ingress]:
            return NO_PORT, DROP, LINK_DOWN
        if not valid_mac(src):
            return NO_PORT, DROP, INVALID_SOURCE
        self.learn_one(src, ingress, now)
        if dst & GROUP_BIT:
            return NO_PORT, (FLOOD | LOCAL) if flood_ports(ingress, port_up, hairpin) else LOCAL, 0
        e = self.table.get(dst)
        if e is not None and not self.expired(e, now):
            if e.local:
                return NO_PORT, LOCAL, 0
            if e.port < len(port_up):
                if should_deliver(e.port, ingress, port_up, hairpin):
                    return e.port, FORWARD, 0
                if e.port == ingress:
                    return NO_PORT, DROP, BRIDGE_NO_PORT
                return NO_PORT, DROP, LINK_DOWN
        if flood_ports(ingress, port_up, hairpin):
            return NO_PORT, FLOOD, 0
        return NO_PORT, DROP, BRIDGE_NO_PORT

    def forward(self, dst, src, ingress, now, port_up, hairpin) -> list[tuple[int, int, int]]:
        return [self.forward_one(d, s, p, t, port_up, hairpin)
                for d, s, p, t in zip(dst, src, ingress, now)]


def should_deliver(port: int, ingress: int, port_up: list[bool], hairpin: list[bool]) -> bool:
    """br_forward.c: the port is up, and not the ingress port unless in hairpin mode."""
    return port_up[port] and (port != ingress or hairpin[port])


def flood_ports(ingress: int, port_up: list[bool], hairpin: list[bool]) -> list[int]:
    return [p for p in range(len(port_up)) if should_deliver(p, ingress, port_up, hairpin)]


def mac_at(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 6], "big")
