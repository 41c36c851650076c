"""nf_conntrack at a namespace's netfilter hooks: every IPv4 packet gets a
connection and a state (ctinfo) as Linux gives it, which NAT (kube-proxy)
and policy build on, and which traces and capture comments show.

Runs at PREROUTING (received) and OUTPUT (locally generated), before NAT,
as Linux's conntrack does (priority -200). The table is kernels.conntrack;
this module adds the protocol trackers:

- TCP: the connection states of nf_conntrack_proto_tcp.c (SYN_SENT,
  SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE)
  with their default timeouts. A first packet that is a SYN opens a
  connection; a bare ACK picks one up mid-stream (nf_conntrack_tcp_loose=1);
  a first packet that is SYN+ACK, FIN or RST is INVALID and creates nothing.
  Simplified: no window or sequence tracking (tcp_be_liberal semantics), no
  simultaneous open (SYN_SENT2).
- UDP: 30 s unreplied; once a reply is seen 120 s and ASSURED
  (nf_conntrack_udp_timeout / _stream; Linux waits 2 s of traffic before
  calling a flow a stream, not modelled).
- ICMP: echo (and the other queries) tracked by id, 30 s; an ICMP error
  whose quoted packet belongs to a connection is RELATED, otherwise INVALID.
- Fragments are not tracked (Linux reassembles them first: nf_defrag_ipv4).
- An entry is in the table from its first packet on. Linux confirms it only
  when that packet leaves the hooks, so a packet dropped on the way (TTL,
  no route) leaves no entry there; here it stays until its timeout.

ctinfo: NEW (original direction, no reply seen yet), ESTABLISHED (a reply,
or the original direction after one), RELATED, INVALID; 0 = untracked.
"""
from __future__ import annotations

import numpy as np

from kernels import conntrack as ct
from kernels import parse

UNTRACKED, NEW, ESTABLISHED, RELATED, INVALID = 0, 1, 2, 3, 4
CTINFO_NAMES = {UNTRACKED: "untracked", NEW: "NEW", ESTABLISHED: "ESTABLISHED",
                RELATED: "RELATED", INVALID: "INVALID"}

SEC = 1_000_000_000
# TCP states (enum tcp_conntrack) and default timeouts (nf_conntrack_tcp_timeout_*)
NONE, SYN_SENT, SYN_RECV, TCP_ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE = range(9)
TCP_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                   "LAST_ACK", "TIME_WAIT", "CLOSE")
TCP_TIMEOUT = {SYN_SENT: 120 * SEC, SYN_RECV: 60 * SEC, TCP_ESTABLISHED: 432000 * SEC,
               FIN_WAIT: 120 * SEC, CLOSE_WAIT: 60 * SEC, LAST_ACK: 30 * SEC,
               TIME_WAIT: 120 * SEC, CLOSE: 10 * SEC}
FIN_FROM_REPLY = 0x80  # state bit: the first FIN came from the reply side
UDP_TIMEOUT, UDP_STREAM_TIMEOUT, ICMP_TIMEOUT = 30 * SEC, 120 * SEC, 30 * SEC
GENERIC_TIMEOUT = 600 * SEC

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def tcp_next(state: int, flags: int, direction: int) -> int:
    """The TCP tracker's next state (state may carry FIN_FROM_REPLY); -1 = invalid."""
    base, fin_dir = state & 0x7F, (1 if state & FIN_FROM_REPLY else 0)
    if flags & RST:
        return CLOSE
    if flags & SYN and flags & ACK:
        return SYN_RECV if direction == ct.REPLY and base in (SYN_SENT, SYN_RECV) else \
            (state if base != NONE else -1)
    if flags & SYN:
        if direction == ct.ORIGINAL and base in (NONE, SYN_SENT, TIME_WAIT, CLOSE):
            return SYN_SENT
        return state if base != NONE else -1
    if flags & FIN:
        if base in (NONE,):
            return -1
        if base in (SYN_RECV, TCP_ESTABLISHED):
            return FIN_WAIT | (FIN_FROM_REPLY if direction == ct.REPLY else 0)
        if base in (FIN_WAIT, CLOSE_WAIT) and direction != fin_dir:
            return LAST_ACK | (state & FIN_FROM_REPLY)
        return state
    if flags & ACK:
        if base == NONE:
            return TCP_ESTABLISHED  # loose pickup of an established connection
        if base == SYN_RECV and direction == ct.ORIGINAL:
            return TCP_ESTABLISHED
        if base == FIN_WAIT and direction != fin_dir:
            return CLOSE_WAIT | (state & FIN_FROM_REPLY)
        if base == LAST_ACK and direction == fin_dir:
            return TIME_WAIT | (state & FIN_FROM_REPLY)
        return state
    return state if base != NONE else -1


class Conntrack:
    """One conntrack table (zone 0) for a namespace, as `hook` at PREROUTING/OUTPUT."""

    def __init__(self, max_connections: int = 262_144, seed: int = 0):
        self.table = ct.make_table(max_connections, seed)

    def attach(self, netns) -> None:
        netns.hooks["PREROUTING"].insert(0, self.hook)
        netns.hooks["OUTPUT"].insert(0, self.hook)
        netns.conntrack = self

    def hook(self, netns, engine, slots, times, h, ifx):
        pool = engine.pool
        n = len(slots)
        now = int(times.max())
        info = np.zeros(n, np.uint8)
        conn = np.full(n, -1, np.int32)
        verdict = np.zeros(n, np.uint8)
        tracked = ((h.flags & parse.FRAGMENT) == 0) & ((h.flags & parse.IPV4) != 0)
        err = tracked & ((h.flags & parse.ICMP_ERROR) != 0)
        for k in np.nonzero(err)[0].tolist():
            conn[k], info[k] = self._related(pool, int(slots[k]), h, k, now)
        flows = np.nonzero(tracked & ~err)[0]
        if len(flows):
            self._flows(h, flows, now, conn, info, verdict)
        pool.ct[slots] = conn
        pool.ctinfo[slots] = info
        return verdict

    def _key(self, h, idx):
        icmp = h.ip_proto[idx] == 1
        sport = h.sport[idx]
        dport = np.where(icmp, sport, h.dport[idx]).astype(np.uint16)  # ICMP: the id both ways
        return (np.zeros(len(idx), np.uint16), h.ip_src[idx], h.ip_dst[idx], sport, dport, h.ip_proto[idx])

    def _flows(self, h, idx, now, conn, info, verdict) -> None:
        t = self.table
        key = self._key(h, idx)
        found = ct.lookup(t, *key, now)
        for j, k in enumerate(idx.tolist()):
            c, d = int(found.conn[j]), int(found.direction[j])
            proto, flags = int(h.ip_proto[k]), int(h.tcp_flags[k])
            single = tuple(np.array([a[j]]) for a in key)
            if c < 0:  # a new connection, if this packet may open one
                state = SYN_SENT if flags & SYN and not flags & ACK else TCP_ESTABLISHED
                if proto == 6 and tcp_next(NONE, flags, ct.ORIGINAL) < 0:
                    info[k] = INVALID
                    continue
                if proto == 1 and int(h.icmp_type[k]) not in (8, 13, 15, 17):  # only requests open
                    info[k] = INVALID
                    continue
                state = state if proto == 6 else 0
                ins = ct.insert(t, *single, single[2], single[1], single[4], single[3],
                                np.array([state], np.uint8), np.array([self._timeout(proto, state, False)]), now)
                if ins.drop[0]:
                    verdict[k] = ins.drop[0]
                    info[k] = INVALID
                    continue
                c, d = int(ins.conn[0]), ct.ORIGINAL
                # a second packet of the same new flow in this batch finds it
                same = ((key[1][j:] == key[1][j]) & (key[2][j:] == key[2][j]) & (key[3][j:] == key[3][j])
                        & (key[4][j:] == key[4][j]) & (key[5][j:] == key[5][j]))
                found.conn[j:][same] = c
                found.direction[j:][same] = ct.ORIGINAL
            rec = t.conns[c]
            seen_reply = bool(rec["status"] & ct.IPS_SEEN_REPLY) or d == ct.REPLY
            info[k] = ESTABLISHED if seen_reply else NEW
            conn[k] = c
            state = int(rec["state"])
            if proto == 6:
                nxt = tcp_next(state, flags, d)
                if nxt < 0:
                    info[k] = INVALID
                    continue
                state = nxt
            assure = (proto == 6 and state & 0x7F == TCP_ESTABLISHED) or (proto != 6 and seen_reply)
            timeout = self._timeout(proto, state, seen_reply)
            if state == int(rec["state"]):  # as kernels.flow._refresh: the expiry never comes forward
                timeout = max(timeout, int(rec["expires"]) - now)
            ct.update(t, np.array([c], np.int32), np.array([state], np.uint8),
                      np.array([timeout], np.int64), now,
                      np.array([1 if assure else 0], np.uint8))
        return None

    @staticmethod
    def _timeout(proto: int, state: int, seen_reply: bool) -> int:
        if proto == 6:
            return TCP_TIMEOUT.get(state & 0x7F, TCP_TIMEOUT[CLOSE])
        if proto == 17:
            return UDP_STREAM_TIMEOUT if seen_reply else UDP_TIMEOUT
        if proto == 1:
            return ICMP_TIMEOUT
        return GENERIC_TIMEOUT

    def _related(self, pool, slot, h, k, now) -> tuple[int, int]:
        """icmp_error_message: look up the inverse of the quoted tuple."""
        inner = int(h.inner_off[k])
        if inner < 0:
            return -1, INVALID
        f = pool.frame(slot)
        proto = f[inner + 9]
        src, dst = int.from_bytes(f[inner + 12:inner + 16], "big"), int.from_bytes(f[inner + 16:inner + 20], "big")
        l4 = inner + (f[inner] & 0x0F) * 4
        if proto in (6, 17) and len(f) >= l4 + 4:
            sport, dport = int.from_bytes(f[l4:l4 + 2], "big"), int.from_bytes(f[l4 + 2:l4 + 4], "big")
        elif proto == 1 and len(f) >= l4 + 6:
            sport = dport = int.from_bytes(f[l4 + 4:l4 + 6], "big")
        else:
            return -1, INVALID
        u = lambda v, d: np.array([v], d)  # noqa: E731
        found = ct.lookup(self.table, u(0, np.uint16), u(dst, np.uint32), u(src, np.uint32),
                          u(dport, np.uint16), u(sport, np.uint16), u(proto, np.uint8), now)
        c = int(found.conn[0])
        return (c, RELATED) if c >= 0 else (-1, INVALID)

    def entries(self) -> list[dict]:
        """`conntrack -L`: live connections with their tuples, state and timeout."""
        t = self.table
        live = np.nonzero(t.conns["status"] & ct.IPS_CONFIRMED)[0]
        return [{name: int(t.conns[c][name]) for name in t.conns.dtype.names} | {"id": int(c)} for c in live]
