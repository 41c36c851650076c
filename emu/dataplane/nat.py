"""NAT over conntrack, as Linux's nf_nat does it: the first packet of a
connection is matched against rules (kube-proxy's, later); the translation
chosen is stored in the connection's REPLY tuple; every later packet of
either direction is translated from the connection alone.

Hook order (as Linux's priorities): PREROUTING and OUTPUT translate
destinations after conntrack (DNAT, -100); POSTROUTING and INPUT translate
sources (SNAT/MASQUERADE, +100). For a tracked packet:
- destination hooks: ORIGINAL with DST_NAT -> dst := reply src;
                     REPLY with SRC_NAT    -> dst := original src;
- source hooks:      ORIGINAL with SRC_NAT -> src := reply dst;
                     REPLY with DST_NAT    -> src := original dst.

Rules are callables over one NEW packet:
- `dnat(netns, tuple) -> (ip, port) | None` at PREROUTING/OUTPUT;
- `snat(netns, tuple, out_ifindex, mark) -> ip | None` at POSTROUTING
  (masquerade: the egress interface's address, source port picked at
  random from 1024-65535 as `--random-fully` does, from the run's seed).

Simplified: ICMP errors RELATED to a NATed connection are not translated
inside (Linux rewrites the quoted header too); a port clash after SNAT
retries a few random ports then drops with CT_CLASH.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from emu.dataplane.conntrack import NEW
from kernels import conntrack as ct
from kernels import parse
from kernels import rewrite
from kernels.drop import Drop


def _ep(ip: int, port: int) -> str:
    from emu.wire.ipv4 import ntoa

    return f"{ntoa(ip)}:{port}"


class Tuple(NamedTuple):
    src: int
    dst: int
    sport: int
    dport: int
    proto: int


class Nat:
    def __init__(self, dnat=None, snat=None):
        self.dnat_rule = dnat
        self.snat_rule = snat

    def attach(self, netns) -> None:
        if netns.conntrack is None:
            raise ValueError(f"{netns.name}: NAT needs conntrack attached first")
        self.netns = netns
        netns.hooks["PREROUTING"].append(self._destination)
        netns.hooks["OUTPUT"].append(self._destination)
        netns.hooks["POSTROUTING"].append(self._source)
        netns.hooks["INPUT"].append(self._source)
        netns.nat = self

    # -- hooks -------------------------------------------------------------------
    def _destination(self, netns, engine, slots, times, h, ifx):
        return self._run(engine, slots, times, h, ifx, source=False)

    def _source(self, netns, engine, slots, times, h, ifx):
        return self._run(engine, slots, times, h, ifx, source=True)

    def _run(self, engine, slots, times, h, ifx, source: bool):
        pool = engine.pool
        table = self.netns.conntrack.table
        verdict = np.zeros(len(slots), np.uint8)
        for k, slot in enumerate(slots.tolist()):
            c = int(pool.ct[slot])
            if c < 0 or not h.flags[k] & parse.L4:  # untracked, or no ports to translate
                continue
            if pool.ctinfo[slot] == NEW and self._is_first(table, c, h, k):
                c = self._new(engine, slot, c, h, k, int(ifx[k]), source, times[k])
                if c < 0:
                    verdict[k] = Drop.CT_CLASH
                    continue
            self._translate(engine, slot, c, h, k, source)
        return verdict

    @staticmethod
    def _is_first(table, c, h, k) -> bool:
        """The packet goes in the connection's original direction (its source
        is still the original one: SNAT happens last, at POSTROUTING)."""
        rec = table.conns[c]
        return int(rec["orig_src"]) == int(h.ip_src[k]) and int(rec["orig_sport"]) == int(h.sport[k])

    def _new(self, engine, slot, c, h, k, ifindex, source, now) -> int:
        table = self.netns.conntrack.table
        rec = table.conns[c]
        orig = Tuple(int(rec["orig_src"]), int(rec["orig_dst"]), int(rec["orig_sport"]),
                     int(rec["orig_dport"]), int(rec["proto"]))
        reply = [int(rec["reply_src"]), int(rec["reply_dst"]), int(rec["reply_sport"]), int(rec["reply_dport"])]
        if not source:
            if rec["status"] & ct.IPS_DST_NAT or self.dnat_rule is None:
                return c
            target = self.dnat_rule(self.netns, orig)
            if target is None:
                return c
            reply[0], reply[2] = target
        else:
            if rec["status"] & ct.IPS_SRC_NAT or self.snat_rule is None:
                return c
            addr = self.snat_rule(self.netns, orig, ifindex, int(engine.pool.mark[slot]))
            if addr is None:
                return c
            reply[1] = addr
        for attempt in range(8):
            if source:
                # --random-fully: a random source port (ICMP: the id) from the seed
                reply[3] = int(engine.rng.integers(1024, 65536)) if attempt or orig.proto != 1 else orig.sport
            new = self._reinsert(engine, c, rec, orig, reply, now)
            if new >= 0:
                engine.pool.ct[slot] = new
                if source:
                    self.annotate(engine, slot, f"SNAT {_ep(orig.src, orig.sport)} -> {_ep(reply[1], reply[3])}")
                elif int(engine.pool.pkt_id[slot]) not in self.netns.annotations:  # the rule has not said it
                    self.annotate(engine, slot, f"DNAT {_ep(orig.dst, orig.dport)} -> {_ep(reply[0], reply[2])}")
                return new
        return -1

    def annotate(self, engine, slot, text: str) -> None:
        """Say what NAT did to this packet in its capture notes at this namespace."""
        pid = int(engine.pool.pkt_id[slot])
        before = self.netns.annotations.get(pid)
        self.netns.annotations[pid] = f"{before}; {text}" if before else text

    def _reinsert(self, engine, c, rec, orig: Tuple, reply, now) -> int:
        """Give connection c a new reply tuple: out of the hash and back in
        (no delete and no insert in the statistics: kernels.flow.renat)."""
        table = self.netns.conntrack.table
        state, expires = int(rec["state"]), int(rec["expires"])
        mark = int(rec["mark"])
        ct.delete(table, np.array([c], np.int32))
        table.stats[ct.STAT_DELETED] -= 1
        table.stats[ct.STAT_INSERT] -= 1   # given back by the insert below (or the one putting it back)
        u = lambda v, d: np.array([v], d)  # noqa: E731
        ins = ct.insert(table, u(0, np.uint16), u(orig.src, np.uint32), u(orig.dst, np.uint32),
                        u(orig.sport, np.uint16), u(orig.dport, np.uint16), u(orig.proto, np.uint8),
                        u(reply[0], np.uint32), u(reply[1], np.uint32), u(reply[2], np.uint16),
                        u(reply[3], np.uint16), u(state, np.uint8), u(max(expires - int(now), 1), np.int64),
                        int(now))
        if ins.drop[0]:
            # put the connection back as it was; the caller tries another tuple
            ct.insert(table, u(0, np.uint16), u(orig.src, np.uint32), u(orig.dst, np.uint32),
                      u(orig.sport, np.uint16), u(orig.dport, np.uint16), u(orig.proto, np.uint8),
                      u(int(rec["reply_src"]), np.uint32), u(int(rec["reply_dst"]), np.uint32),
                      u(int(rec["reply_sport"]), np.uint16), u(int(rec["reply_dport"]), np.uint16),
                      u(state, np.uint8), u(max(expires - int(now), 1), np.int64), int(now))
            return -1
        new = int(ins.conn[0])
        ct.set_mark(table, np.array([new], np.int32), np.array([mark], np.uint32))
        return new

    def _translate(self, engine, slot, c, h, k, source: bool) -> None:
        rec = self.netns.conntrack.table.conns[c]
        status = int(rec["status"])
        src, dst = int(h.ip_src[k]), int(h.ip_dst[k])
        sport, dport = int(h.sport[k]), int(h.dport[k])
        original = src == int(rec["orig_src"]) and sport == int(rec["orig_sport"])
        if not source:
            if original and status & ct.IPS_DST_NAT:
                dst, dport = int(rec["reply_src"]), int(rec["reply_sport"])
            elif not original and status & ct.IPS_SRC_NAT:
                dst, dport = int(rec["orig_src"]), int(rec["orig_sport"])
            else:
                return
        else:
            if original and status & ct.IPS_SRC_NAT:
                src, sport = int(rec["reply_dst"]), int(rec["reply_dport"])
            elif not original and status & ct.IPS_DST_NAT:
                src, sport = int(rec["orig_dst"]), int(rec["orig_dport"])
            else:
                return
        if int(h.ip_proto[k]) == 1:  # ICMP queries: one id, in sport (and dport mirrors it)
            dport = sport = (sport if source else dport)
        pool = engine.pool
        start = int(pool.start[slot])
        rewrite.nat(pool.buf, np.array([start + int(h.l3_off[k])], np.int64),
                    np.array([start + int(h.l4_off[k])], np.int64), h.ip_proto[k:k + 1],
                    np.array([src], np.uint32), np.array([dst], np.uint32),
                    np.array([sport], np.uint16), np.array([dport], np.uint16))
        # keep the parsed columns coherent for the hooks and routing that follow
        h.ip_src[k], h.ip_dst[k], h.sport[k], h.dport[k] = src, dst, sport, dport
