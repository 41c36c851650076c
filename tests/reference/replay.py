"""Plain-Python reference for kernels.replay: the flow cache's replay of
established flows along their programs, one packet at a time, written from
the module's docstring and the staged path's references rather than from
the kernel: tests.reference.flow for the conntrack step (the "same state
never brings the expiry forward" rule), emu.dataplane.conntrack.tcp_next for
the TCP tracker, emu.bulk.traffic's `script` for each packet's flags,
sequence and acknowledgement numbers. Captured packets are records of a
template and the packet's fields (kernels.frametpl's layout); `frames`, if
given, collects each record's frame as tests.reference.frametpl builds it
from the templates' bytes `tpl_buf`,
every checksum from scratch (kernels.frametpl updates them
incrementally). FDB entries are found by scanning the table for the MAC
(no hashing); a NEW_CONN reference's tuples by scanning the conntrack
index, and the connection it opens is inserted through
kernels.conntrack.insert (tested against its own reference) with the
state and timeout tests.reference.flow.ct_open gives.

`replay` takes the kernel wrapper's arguments and mutates the same inputs
the kernel does: conntrack records, FDB entries and clocks, the slot hints
in `ops`, the IP id counters, the flows' c_got and echoes, the capture
buffer, columns and `counts`. A packet is carried only if it also arrives
before `horizon` (the caller's next event). `stops`, if given, collects why
each item's flow stopped (for tests that check their worlds reach every
branch)."""
from __future__ import annotations

import struct

import numpy as np

from emu.dataplane import conntrack as dct
from kernels import conntrack as ct
from kernels import fdb as fdbk
from kernels.frametpl import FIELD_BYTES
from kernels.replay import (FULL, MAX_OPEN, N_BYTES, N_REC, NEW_CONN, NEXT_ID, OP_CAP, OP_CT, OP_DELIVER,
                            OP_ENCAP, OP_FDB_FWD, OP_FDB_LEARN, OP_LINK, Result)
from tests.reference import flow as rflow
from tests.reference import frametpl as rframe

FIN, SYN, ACK, PSH = 0x01, 0x02, 0x10, 0x08
ORIG_FIELDS = ("zone", "proto", "orig_src", "orig_dst", "orig_sport", "orig_dport")
REPLY_FIELDS = ("zone", "proto", "reply_src", "reply_dst", "reply_sport", "reply_dport")


def script(f, s, k, payload, isn_c, isn_s, ipid_c, ipid_s):
    """emu.bulk.traffic's packet s of flow f (TCP): (from server, flags, seq,
    ack, IP id), for the handshake (SYN, SYN-ACK, ACK), the steady steps and the teardown."""
    ic, isv = int(isn_c[f]), int(isn_s[f])
    server = s == 1 or (s % 2 == 0 and s >= 4)
    if s == 0:
        flags, seq, ack = SYN, ic, 0
    elif s == 1:
        flags, seq, ack = SYN | ACK, isv, ic + 1
    elif s == 2:   # the handshake's last ACK
        flags, seq, ack = ACK, ic + 1, isv + 1
    elif 3 <= s < 3 + 2 * k:
        if not server:
            flags, seq, ack = PSH | ACK, ic + 1 + (s - 3) // 2 * payload, isv + 1
        else:
            flags, seq, ack = ACK, isv + 1, ic + 1 + ((s - 4) // 2 + 1) * payload
    elif s == 3 + 2 * k:
        flags, seq, ack = FIN | ACK, ic + 1 + k * payload, isv + 1
    elif s == 4 + 2 * k:
        flags, seq, ack = FIN | ACK, isv + 1, ic + 2 + k * payload
    elif s == 5 + 2 * k:
        flags, seq, ack = ACK, ic + 2 + k * payload, isv + 2
    else:
        raise AssertionError(f"step {s} is not replayed")
    ip_id = (int(ipid_s[f] if server else ipid_c[f]) + s) & 0xFFFF
    return server, flags, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, ip_id


def fdb_slot(entries, mac):
    """The slot holding `mac` (a scan), or -1."""
    for j in range(len(entries)):
        if int(entries[j]["mac"]) == mac:
            return j
    return -1


def _bad(r, row):
    return ValueError(f"ops: row {r} ({row}) refers to nothing that exists")


def words_tuple(w0, w1, w2, w3) -> dict:
    """An OP_CT reference's four tuple words as the record fields they hold
    (little-endian bytes 0-31 of a record, without state and status)."""
    m = 2**64
    w0, w1, w2, w3 = w0 % m, w1 % m, w2 % m, w3 % m
    return dict(zone=w0 & 0xFFFF, proto=(w0 >> 16) & 0xFF, orig_src=w1 & 0xFFFFFFFF, orig_dst=w1 >> 32,
                orig_sport=w2 & 0xFFFF, orig_dport=(w2 >> 16) & 0xFFFF, reply_src=w2 >> 32,
                reply_dst=w3 & 0xFFFFFFFF, reply_sport=(w3 >> 32) & 0xFFFF, reply_dport=w3 >> 48)


def flow_refs(rows, refs, ref0):
    """Each OP_CT / OP_CAP row's reference (the flow's next refs row, and
    last its number in refs; None outside refs, and for the other rows)."""
    out, j = [], ref0
    for row in rows:
        if row[0] in (OP_CT, OP_CAP):
            out.append((*(int(x) for x in refs[j]), j) if 0 <= j < len(refs) else None)
            j += 1
        else:
            out.append(None)
    return out


def in_index(table, fields: dict, direction=None):
    """(conn, direction) of the index entry (any, live or not; of that
    direction if given) whose tuple is `fields`, found by scanning the
    index, or None."""
    for word in table.index.tolist():
        if word == 2**64 - 1:
            continue
        conn, d = (word & 0xFFFFFFFF) >> 1, word & 1
        if direction is not None and d != direction:
            continue
        rec = table.conns[conn]
        if all(int(rec[k]) == fields[k2] for k, k2 in zip(ORIG_FIELDS if d == 0 else REPLY_FIELDS, ORIG_FIELDS)):
            return conn, d
    return None


def _two_tuples(words):
    w = words_tuple(*words)
    return {k: w[k] for k in ORIG_FIELDS}, dict(zip(ORIG_FIELDS, (w[k] for k in REPLY_FIELDS)))


def _held(table, words):
    """The connection whose ORIGINAL index entry holds the words' original
    tuple, its record holding both of their tuples, or None. (A connection
    whose reply tuple is its original one has two index entries for it: the
    kernel's probe meets the ORIGINAL one first, a scan may not.)"""
    w = words_tuple(*words)
    hit = in_index(table, _two_tuples(words)[0], ct.ORIGINAL)
    if hit is None or any(int(table.conns[hit[0]][k]) != v for k, v in w.items()):
        return None
    return hit[0]


def _open_check(table, words, flags, opened, a):
    """A NEW_CONN reference: (conn found holding its tuples as ORIGINAL, None),
    (None, None) when the commit may insert it, or (None, why). opened: the
    (table, words) of what the packet inserts before it."""
    w = words_tuple(*words)
    orig, reply = _two_tuples(words)
    hit = in_index(table, orig, ct.ORIGINAL) or in_index(table, orig)   # (see _held)
    if hit is not None:
        rec = table.conns[hit[0]]
        if hit[1] != ct.ORIGINAL or any(int(rec[k]) != w[k] for k in REPLY_FIELDS) \
                or (w["proto"] == 6 and flags == SYN):
            return None, "ct_open_busy"   # (a SYN meeting its TCP connection: kube-proxy may pick again)
        return hit[0], None
    if w["proto"] == 6 and not rflow.ct_open(6, flags)[0]:
        return None, "ct_open_busy"
    if reply != orig and in_index(table, reply) is not None:
        return None, "ct_open_busy"
    mine = [ww for aa, ww in opened if aa == a]
    if int(table.stats[ct.STAT_COUNT]) + len(mine) >= len(table.conns) or len(opened) == MAX_OPEN:
        return None, "ct_open_busy"
    if any(x in _two_tuples(ww) for ww in mine for x in (orig, reply)):
        return None, "ct_open_busy"
    return None, None


def _open(table, words, flags, now):
    """Insert a NEW_CONN reference's connection as the conntrack hook opens one: the conn."""
    w = words_tuple(*words)
    _, state, timeout = rflow.ct_open(int(w["proto"]), flags)
    col = lambda k, d: np.array([w[k]], d)  # noqa: E731
    got = ct.insert(table, col("zone", np.uint16), col("orig_src", np.uint32), col("orig_dst", np.uint32),
                    col("orig_sport", np.uint16), col("orig_dport", np.uint16), col("proto", np.uint8),
                    col("reply_src", np.uint32), col("reply_dst", np.uint32), col("reply_sport", np.uint16),
                    col("reply_dport", np.uint16), np.array([state], np.uint8), np.array([timeout], np.int64), now)
    assert got.drop[0] == 0   # checked
    return int(got.conn[0])


def _check(rows, frefs, r0, t, horizon, flags, s, ops, cts, refs, fdbs, peer, latency, up, ip_ids, tpl):
    """The checks of one packet's program: (arrival, None) or (None, why)."""
    tt = t
    opened = []
    for r, (kind, a, b, c, d), ref in zip(range(r0, r0 + len(rows)), rows, frefs):
        if kind == OP_LINK:
            if not 0 <= a < len(peer):
                raise _bad(r, rows)
            q = int(peer[a])
            if not (0 <= q < len(peer)) or not up[a] or not up[q]:
                return None, "link"
            tt += int(latency[a])
        elif kind == OP_CT:
            if ref is None or not (0 <= a < len(cts) and NEW_CONN <= ref[0] < len(cts[a].conns)) or c not in (0, 1):
                raise _bad(r, rows)
            conn = ref[0]
            if conn == NEW_CONN and c == ct.REPLY:   # one the flow opened before: found by its tuples
                conn = _held(cts[a], ref[1:5])
                if conn is None:
                    return None, "ct_not_held"
                refs[ref[-1]][0] = conn
            if conn == NEW_CONN:
                conn, why = _open_check(cts[a], ref[1:5], flags, opened, a)
                if why is not None:
                    return None, why
                if conn is None:
                    opened.append((a, ref[1:5]))
                    continue
                refs[ref[-1]][0] = conn
            rec = cts[a].conns[conn]
            if not int(rec["status"]) & ct.IPS_CONFIRMED:
                return None, "ct_unconfirmed"
            if any(int(rec[k]) != v for k, v in words_tuple(*ref[1:5]).items()):
                return None, "ct_tuples"
            if int(rec["expires"]) <= max(tt, horizon):
                return None, "ct_expired"
            if c == ct.REPLY and not int(rec["status"]) & ct.IPS_SEEN_REPLY and s != 1:
                return None, "ct_reply_unseen"
            if int(rec["proto"]) == 6 and dct.tcp_next(int(rec["state"]), flags, c) < 0:
                return None, "ct_tcp_invalid"
        elif kind in (OP_FDB_LEARN, OP_FDB_FWD):
            if not 0 <= a < len(fdbs) or (kind == OP_FDB_LEARN and c < 0) or not 0 <= b <= fdbk.MAX_MAC:
                raise _bad(r, rows)
            entries = fdbs[a].entries
            ageing = int(fdbs[a].state[0]["ageing"])
            j = fdb_slot(entries, b)
            if ageing == 0:
                return None, "fdb_no_learning"
            if j < 0:
                return None, "fdb_unknown"
            e = entries[j]
            local = bool(int(e["flags"]) & fdbk.FLAG_LOCAL)
            if (c < 0) != local or (not local and int(e["port"]) != c):
                return None, "fdb_port"
            if not local and int(e["updated"]) + ageing <= max(tt, horizon):
                return None, "fdb_aged"
            ops[r, 4] = j   # the slot hint
        elif kind == OP_ENCAP:
            if not 0 <= a < len(ip_ids):
                raise _bad(r, rows)
        elif kind == OP_CAP:
            if ref is None or not 0 <= a or a + 2 >= len(tpl) or not (0 <= ref[0] < 2**32 and 0 <= ref[1] < 2**16):
                raise _bad(r, rows)
            if s <= 1:
                return None, "handshake_captured"
        elif kind != OP_DELIVER:
            raise _bad(r, rows)
    return tt, None


def replay(flow, step, time, end, horizon, k_data, payload, prog_start, prog_len, ops, ref_start, refs, cts, fdbs, peer,
           latency, up, ip_ids, flows, capture, counts, stops=None, frames=None, tpl_buf=None) -> Result:
    horizon = max(int(horizon), int(end))
    end = int(end)
    n = len(flow)
    out_step, out_time = [0] * n, [0] * n
    sent, lat = [0] * (2 * n), [0] * (2 * n)
    last = -1
    tpl = [[int(x) for x in row] for row in capture.tpl]
    tpl_buf = None if tpl_buf is None else bytes(tpl_buf)
    for i in range(n):
        f, s, t = int(flow[i]), int(step[i]), int(time[i])
        why = None
        while True:
            if counts[FULL]:
                why = "full"
                break
            if t >= horizon:
                why = "horizon"
                break
            if not 0 <= s < 6 + 2 * k_data:
                why = "step"
                break
            server, flags, seq, ack, ip_id = script(f, s, k_data, payload, flows.isn_c, flows.isn_s,
                                                    flows.ipid_c, flows.ipid_s)
            key = 2 * f + (1 if server else 0)
            r0, count = int(prog_start[key]), int(prog_len[key])
            if count == 0:
                why = "no_program"
                break
            rows = [tuple(int(x) for x in ops[r]) for r in range(r0, r0 + count)]
            frefs = flow_refs(rows, refs, int(ref_start[key]))
            arrive, why = _check(rows, frefs, r0, t, horizon, flags, s, ops, cts, refs, fdbs, peer, latency, up, ip_ids,
                                 tpl)
            if why is not None:
                break
            if arrive >= horizon:   # it must arrive before the caller's next event
                why = "arrives_late"
                break
            caps = [a for kind, a, *_ in rows if kind == OP_CAP]
            if int(counts[N_REC]) + len(caps) > len(capture.start) \
                    or int(counts[N_BYTES]) + FIELD_BYTES * len(caps) > len(capture.buf):
                counts[FULL] = 1
                why = "full"
                break
            # commit, hop by hop
            pkt = int(counts[NEXT_ID])
            counts[NEXT_ID] = pkt + 1
            tt = t
            outer_id = 0
            # a capture point's templates: steady (data or ACK), pure ACK, FIN
            variant = 0 if 3 <= s < 3 + 2 * k_data else 2 if flags & FIN else 1
            frefs = flow_refs(rows, refs, int(ref_start[key]))   # the connections the checks found
            for (kind, a, b, c, d), ref in zip(rows, frefs):
                if kind == OP_LINK:
                    tt += int(latency[a])
                elif kind == OP_CT:
                    conns = cts[a].conns
                    conn = ref[0]
                    if conn == NEW_CONN:
                        conn = refs[ref[-1]][0] = _open(cts[a], ref[1:5], flags, tt)
                    if c == ct.REPLY:
                        conns[conn]["status"] |= ct.IPS_SEEN_REPLY
                    rflow.ct_advance(conns, conn, c, int(conns[conn]["proto"]), flags, tt)
                elif kind == OP_FDB_LEARN:
                    e = fdbs[a].entries[fdb_slot(fdbs[a].entries, b)]
                    e["updated"] = max(int(e["updated"]), tt)
                    st = fdbs[a].state[0]
                    st["now"] = max(int(st["now"]), min(tt, end))
                elif kind == OP_ENCAP:
                    outer_id = int(ip_ids[a])
                    ip_ids[a] = (outer_id + 1) & 0xFFFF
                elif kind == OP_CAP:
                    v = a + variant
                    start, length, port, note, inner = tpl[v]
                    tag = (f << 16) | s
                    k, pos = int(counts[N_REC]), int(counts[N_BYTES])
                    capture.buf[pos:pos + FIELD_BYTES] = bytearray(struct.pack("!HHIIQIH", ip_id, outer_id, seq, ack,
                                                                                tag, ref[0], ref[1]))
                    capture.start[k], capture.length[k], capture.port[k] = pos, length, port
                    capture.time[k], capture.pkt_id[k], capture.note[k] = tt, pkt, note
                    capture.tpl_id[k] = v
                    counts[N_REC], counts[N_BYTES] = k + 1, pos + FIELD_BYTES
                    if frames is not None:
                        frames.append(rframe.frame(tpl_buf[start:start + length], inner, ip_id, outer_id, seq, ack,
                                                   tag, ref[0], ref[1]))
            d = 1 if server else 0
            sent[2 * i + d] += 1
            lat[2 * i + d] = arrive - t
            if server:
                flows.echoes[f] += 1
                flows.c_got[f] = max(int(flows.c_got[f]), s)
            last = max(last, arrive)
            s, t = s + 1, arrive
        if stops is not None:
            stops.append(why)
        out_step[i], out_time[i] = s, t
    return Result(out_step, out_time, sent, lat, last)
