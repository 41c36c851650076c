"""The packet pool: every packet in flight lives in one slot of one flat byte
buffer, with metadata in columns indexed by slot. Devices pass slot indices
around; bytes move only when a frame is captured or copied (flooding).

Each slot has HEADROOM bytes in front of the frame, so pushing an outer
header (VXLAN encapsulation: 50 bytes) is moving `start` back, not copying,
as DPDK mbufs do. Simplification: frames are at most MAX_FRAME bytes (no
jumbo frames); the slot layout is fixed so offsets stay valid when the pool
grows.
"""
from __future__ import annotations

import numpy as np

from emu.errors import EmuError

SLOT = 2048
HEADROOM = 128
MAX_FRAME = SLOT - HEADROOM


class Pool:
    """Slots of bytes plus per-packet columns. `start` is an absolute offset
    into `buf`; a packet's frame is buf[start:start + length]."""

    COLUMNS = {
        "start": np.int64,      # absolute offset of the frame in buf
        "length": np.int64,     # frame length in bytes
        "pkt_id": np.int64,     # stable across hops and copies of one packet
        "flow_hash": np.uint32,  # hash of the (inner) 5-tuple, set on first parse
        "mark": np.uint32,      # skb->mark (kube-proxy's 0x4000 masquerade bit)
        "ct": np.int32,         # conntrack connection, -1 untracked
        "ctinfo": np.uint8,     # conntrack state of this packet (see netfilter)
    }

    def __init__(self, capacity: int = 1024):
        self.capacity = 0
        self.buf = np.zeros(0, np.uint8)
        for name, dtype in self.COLUMNS.items():
            setattr(self, name, np.zeros(0, dtype))
        self._free = np.zeros(0, np.int32)  # stack of free slots, top at the end
        self._nfree = 0
        self._next_id = 0
        self._grow(capacity)

    # -- allocation ------------------------------------------------------------
    def _grow(self, capacity: int) -> None:
        old = self.capacity
        self.buf = np.concatenate([self.buf, np.zeros((capacity - old) * SLOT, np.uint8)])
        for name, dtype in self.COLUMNS.items():
            col = getattr(self, name)
            setattr(self, name, np.concatenate([col, np.zeros(capacity - old, dtype)]))
        # new slots are handed out lowest first: push them highest first
        new = np.arange(capacity - 1, old - 1, -1, dtype=np.int32)
        free = np.empty(capacity, np.int32)  # room for every slot to be free at once
        free[: len(new)] = new
        free[len(new): len(new) + self._nfree] = self._free[: self._nfree]
        self._free, self._nfree = free, len(new) + self._nfree
        self.capacity = capacity

    def alloc(self, n: int) -> np.ndarray:
        """n free slots (deterministic order), with fresh packet ids and empty frames."""
        if n > self._nfree:
            self._grow(max(self.capacity * 2, self.capacity + n - self._nfree))
        slots = self._free[self._nfree - n: self._nfree][::-1].copy()
        self._nfree -= n
        self.start[slots] = slots.astype(np.int64) * SLOT + HEADROOM
        self.length[slots] = 0
        self.pkt_id[slots] = np.arange(self._next_id, self._next_id + n)
        self._next_id += n
        self.flow_hash[slots] = 0
        self.mark[slots] = 0
        self.ct[slots] = -1
        self.ctinfo[slots] = 0
        return slots

    def release(self, slots: np.ndarray) -> None:
        n = len(slots)
        self._free[self._nfree: self._nfree + n] = slots[::-1]
        self._nfree += n

    @property
    def in_use(self) -> int:
        return self.capacity - self._nfree

    # -- slow path: one packet at a time --------------------------------------
    def put(self, frame: bytes) -> int:
        """A new packet holding `frame`; returns its slot."""
        if len(frame) > MAX_FRAME:
            raise EmuError(f"frame of {len(frame)} bytes is larger than the {MAX_FRAME}-byte maximum")
        slot = int(self.alloc(1)[0])
        s = int(self.start[slot])
        self.buf[s: s + len(frame)] = np.frombuffer(frame, np.uint8)
        self.length[slot] = len(frame)
        return slot

    def frame(self, slot: int) -> bytes:
        s = int(self.start[slot])
        return self.buf[s: s + int(self.length[slot])].tobytes()

    def replace(self, slot: int, frame: bytes) -> None:
        """Rewrite a packet's bytes in place (slow path), keeping its id and metadata."""
        if len(frame) > MAX_FRAME:
            raise EmuError(f"frame of {len(frame)} bytes is larger than the {MAX_FRAME}-byte maximum")
        s = slot * SLOT + HEADROOM
        self.buf[s: s + len(frame)] = np.frombuffer(frame, np.uint8)
        self.start[slot] = s
        self.length[slot] = len(frame)

    def clone(self, slots: np.ndarray) -> np.ndarray:
        """Copies of packets (bytes and metadata, same packet ids): a bridge flood."""
        from kernels.rewrite import copy_ranges

        new = self.alloc(len(slots))
        # same headroom as the original
        self.start[new] = new.astype(np.int64) * SLOT + (self.start[slots] - slots.astype(np.int64) * SLOT)
        copy_ranges(self.buf, self.start[slots], self.length[slots], self.buf, self.start[new])
        for name in ("length", "pkt_id", "flow_hash", "mark", "ct", "ctinfo"):
            col = getattr(self, name)
            col[new] = col[slots]
        return new
