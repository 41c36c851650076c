"""The flow cache's data plane: established TCP packets of learned flows
carried along their path, with every hop's per-packet state change made on
the live tables, and their frames written where they are captured.

A program is what the fast path saw one packet of a (flow, direction) do,
hop by hop (emu.bulk.flowcache learns and compiles it): one row per
operation, in path order (columns kind, a, b, c, d). Flows along the same
path share its rows; what is the flow's own (its connections, and the ports
written in its captured frames) is in its references: `refs` rows from
ref_start[key] on, one per OP_CT and OP_CAP row of the path, in path order
(REFS columns).

    OP_LINK      a = engine port        the link is up at both ends; adds its latency
    OP_CT        a = table,             conntrack at a namespace: the connection (ref: conn,
                 c = direction          then its tuples as four words, tuple_words) still holds
                 ref = (conn, w0..w3)   those tuples, is confirmed, lives past the horizon, has
                                        seen a reply if this is one (but for the SYN-ACK, which
                                        sets SEEN_REPLY, as the lookup does); TCP: the packet's
                                        flags are a valid step (tcp_next). Then the state step,
                                        kernels.flow's refresh and ASSURED. A reference whose
                                        conn is NEW_CONN (ORIGINAL rows) names a connection the
                                        packet opens: found holding those tuples as ORIGINAL,
                                        it is the flow's from then on; else it is inserted if
                                        both tuples are free and the table has room (at most
                                        MAX_OPEN a packet, no two sharing a tuple), as the hook
                                        opens one. On a REPLY row it names one an earlier
                                        packet of the flow opened: found so, it is the flow's
                                        from then on; else the fast path takes the packet
    OP_FDB_LEARN a = bridge,            br_fdb_update of the source MAC b: its entry still says
                 b = MAC, c = port,     ingress port c and has not aged; its time is refreshed
                 d = slot hint
    OP_FDB_FWD   a = bridge,            the destination MAC b's entry still says port c (-1: a
                 b = MAC, c = port,     local entry, the bridge's own address) and has not aged
                 d = slot hint          (slot hints are the kernel's own: -1 at first)
    OP_ENCAP     a = counter            a VXLAN encapsulation draws the next IP id there
    OP_CAP       a = template,          a capture point: templates a, a + 1, a + 2 are the frame
                 ref = (TCP ports,      there of a steady packet (data or ACK), a pure ACK and a
                        outer UDP       FIN (made from the learner's, with their own comments);
                        source port)    a record of the packet's template and fields (IP id,
                                        the id the encapsulation drew for an outer header,
                                        sequence and acknowledgement numbers, payload tag, and
                                        the flow's ports there) is written: kernels.frametpl
                                        makes the frame from them
    OP_DELIVER                          the endpoint's socket

The traffic is emu.bulk.traffic's closed loop: packet s of a flow leaves
when packet s - 1 arrives. A flow's steady steps are its data segments
(client -> server, PSH|ACK, odd steps) and their acknowledgements (server
-> client, ACK, even steps): 3 <= s < 3 + 2K; the kernel also carries the
handshake (SYN, s = 0, client: its connections all NEW_CONN references,
kube-proxy's pick made by the caller; SYN-ACK, s = 1, server; ACK, s = 2,
client) and the teardown (FIN, FIN-ACK, ACK: s = 3 + 2K .. 5 + 2K); a SYN
or SYN-ACK is never captured here. For each item (flow, step, time) the kernel carries the flow
on while its next packet has a program, passes every check of its program
and arrives before `horizon` (the caller's next event: a table may change
then); the first packet that does not is left to the fast path (nothing of
it done). A packet whose capture records would not fit stops its flow too,
with `full` set: the caller drains the records and calls again.

Order: flows are carried one after the other, possibly ahead of the fast
path's window (`end`). What they share with other flows commutes: a
connection or FDB entry refreshed by packets of several flows keeps the
latest time whatever the order (kernels.flow._refresh, kernels.fdb); IP ids
are drawn from counters (in capture, their order is the kernel's). Checks
ask entries to live past the horizon, so none can expire during the call
(an entry that could is left to the fast path). An FDB table's clock is not
moved past `end`: the fast path's packets of the window keep their times.

Checked once: nothing but the kernel changes a table during a call, and a
data segment or ACK only refreshes what its program checked (their flags
are a valid step from any TCP state). So once a direction's program passed
its check for a steady packet, the next steady packets of that direction
in the call reuse the result (the path's latency, records and bytes),
until a packet of the flow changes a TCP state (its timeout may be
shorter); a teardown packet is always checked.

Checked again: within one item, a packet of a direction whose program
passed the whole check earlier in the item checks only what its flow's own
packets may have changed since: each connection's TCP step for its flags,
its expiry past the horizon (a new state may have a shorter timeout), and
SEEN_REPLY on REPLY rows. Tuples, links, FDB ports and latencies stay as
they were (the kernel never deletes, moves or takes down anything, and a
refresh only moves a time later); records and bytes are the path's.

Fetching ahead: the kernel fetches the records and NEW_CONN index lines of
the item AHEAD places on while it works on this one, so their cache
misses overlap.

References: tests/reference/replay.py.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kernels import _check
from kernels import conntrack as ct
from kernels import fdb as fdbk
from kernels._jit import AHEAD, jit, prefetch
from kernels.flow import ACK, FIN, SYN, TCP_ESTABLISHED, _refresh, _timeout, first_state, tcp_next
from kernels.frametpl import FIELD_BYTES, TPL, put_fields

OP_LINK, OP_CT, OP_FDB_LEARN, OP_FDB_FWD, OP_ENCAP, OP_CAP, OP_DELIVER = 1, 2, 3, 4, 5, 6, 7
PSH = 0x08
NEW_CONN = -1    # an OP_CT reference's conn: the connection its tuples name is opened (or found) by the packet
MAX_OPEN = 16    # connections a packet opens at most
OPS = 5          # columns of a program row: kind, a, b, c, d
REFS = 5         # columns of a reference row: conn and four tuple words (OP_CT); ports, outer port (OP_CAP)
(N_REC, N_BYTES, NEXT_ID, FULL) = range(4)   # the `counts` array


class Flows(NamedTuple):
    """Per flow: how its packets look (emu.bulk.traffic), and what the client has seen."""
    isn_c: np.ndarray      # uint32 initial sequence numbers, client and server
    isn_s: np.ndarray
    ipid_c: np.ndarray     # uint16 IP id of the flow's first packet from each side
    ipid_s: np.ndarray
    c_got: np.ndarray      # int64: the last step the client received (updated)
    echoes: np.ndarray     # int64: packets the client received (updated)


class Capture(NamedTuple):
    """The templates' columns in (kernels.frametpl: their bytes are not
    read here); records out, written as emu.capture.taps keeps them:
    template records (their fields in `buf` from byte counts[N_BYTES] on,
    FIELD_BYTES each), columns from row counts[N_REC] on (up to their
    length: then FULL)."""
    tpl: np.ndarray        # int64 [templates, TPL]
    buf: np.ndarray        # uint8
    start: np.ndarray      # int64
    length: np.ndarray     # int64
    port: np.ndarray       # int32
    time: np.ndarray       # int64
    pkt_id: np.ndarray     # int64
    note: np.ndarray       # int32
    tpl_id: np.ndarray     # int32: the record's template


def tuple_words(conns) -> np.ndarray:
    """Conntrack records' tuples as four int64 words each (their bytes 0-31
    as stored: zone, protocol, both tuples; word 0 without state and status,
    which change): what an OP_CT reference holds."""
    w = conns.view(np.uint64).reshape(len(conns), conns.dtype.itemsize // 8)[:, :4].copy()
    w[:, 0] &= np.uint64(0xFFFFFF)
    return w.view(np.int64)


def tuple_words_with_port(words, port) -> np.ndarray:
    """Tuple words (last axis: tuple_words' four) with the original source
    port and the reply's destination port made `port` (broadcast against
    the words' rows): a connection without NAT whose client port differs."""
    port = np.asarray(port, np.int64)
    words = np.asarray(words, np.int64)
    out = np.empty(np.broadcast_shapes(words.shape[:-1], port.shape) + (4,), np.int64)
    out[..., :2] = words[..., :2]
    out[..., 2] = (words[..., 2] & ~0xFFFF) | port
    out[..., 3] = (words[..., 3] & 0xFFFFFFFFFFFF) | (port << 48)   # int64 bits: the uint64 word's
    return out


@jit
def _same_tuples(rec, w0, w1, w2, w3):
    """The record's tuples are the words' (tuple_words, field by field)."""
    return rec.zone == (w0 & 0xFFFF) and rec.proto == ((w0 >> 16) & 0xFF) \
        and rec.orig_src == (w1 & 0xFFFFFFFF) and rec.orig_dst == ((w1 >> 32) & 0xFFFFFFFF) \
        and rec.orig_sport == (w2 & 0xFFFF) and rec.orig_dport == ((w2 >> 16) & 0xFFFF) \
        and rec.reply_src == ((w2 >> 32) & 0xFFFFFFFF) and rec.reply_dst == (w3 & 0xFFFFFFFF) \
        and rec.reply_sport == ((w3 >> 32) & 0xFFFF) and rec.reply_dport == ((w3 >> 48) & 0xFFFF)


@jit
def _fdb_slot(entries, salt, mac, port, hint):
    """The slot of `mac`'s entry (tried at `hint` first) if it still says
    `port` (-1: a local entry), or -1."""
    m = np.uint64(mac)
    i = hint if 0 <= hint < len(entries) and entries[hint].mac == m else fdbk._find(entries, salt, m)
    if i < 0:
        return -1
    e = entries[i]
    if port < 0:
        return i if (e.flags & fdbk.FLAG_LOCAL) != 0 else -1
    if (e.flags & fdbk.FLAG_LOCAL) != 0 or e.port != port:
        return -1
    return i


@jit
def _words(w0, w1, w2, w3):
    """tuple_words back into (zone, proto, orig src, dst, sport, dport, reply src, dst, sport, dport)."""
    return (np.uint16(w0 & 0xFFFF), np.uint8((w0 >> 16) & 0xFF), np.uint32(w1 & 0xFFFFFFFF),
            np.uint32((w1 >> 32) & 0xFFFFFFFF), np.uint16(w2 & 0xFFFF), np.uint16((w2 >> 16) & 0xFFFF),
            np.uint32((w2 >> 32) & 0xFFFFFFFF), np.uint32(w3 & 0xFFFFFFFF), np.uint16((w3 >> 32) & 0xFFFF),
            np.uint16((w3 >> 48) & 0xFFFF))


@jit
def _tuples_meet(refs, i, j):
    """Whether references i and j share a tuple (either of each)."""
    z, p, a, b, x, y, ra, rb, rx, ry = _words(refs[i, 1], refs[i, 2], refs[i, 3], refs[i, 4])
    z2, p2, a2, b2, x2, y2, ra2, rb2, rx2, ry2 = _words(refs[j, 1], refs[j, 2], refs[j, 3], refs[j, 4])
    if z != z2 or p != p2:
        return False
    return (a == a2 and b == b2 and x == x2 and y == y2) or (a == ra2 and b == rb2 and x == rx2 and y == ry2) \
        or (ra == a2 and rb == b2 and rx == x2 and ry == y2) or (ra == ra2 and rb == rb2 and rx == rx2 and ry == ry2)


@jit
def _open_check(conns, index, stats, seed, w0, w1, w2, w3, flags, pending):
    """A NEW_CONN reference's tuples at a table: (conn, 0) when a connection
    holds the original tuple in the ORIGINAL direction (the packet is then
    checked as its), (-1, 0) when both tuples are free and the table has room
    for it after the packet's `pending` other inserts there (the commit
    inserts), (-1, 1) otherwise: the fast path decides (a clash, an expired
    entry to reap, a full table, a TCP packet that opens nothing, a SYN
    meeting its TCP connection: the NAT hooks may bind it anew). Then the
    hashes of both tuples, for the commit's insert."""
    z, p, a, b, x, y, ra, rb, rx, ry = _words(w0, w1, w2, w3)
    h = ct._hash(z, p, a, b, x, y, seed)
    hr = h
    pos = ct._find(index, conns, h, z, p, a, b, x, y)
    if pos >= 0:
        word = index[pos]
        if ct._slot_direction(word) != ct.ORIGINAL or (p == 6 and flags == SYN):
            return -1, 1, h, hr
        return ct._slot_conn(word), 0, h, hr
    if not first_state(p, flags)[0]:
        return -1, 1, h, hr
    if not (ra == a and rb == b and rx == x and ry == y):
        hr = ct._hash(z, p, ra, rb, rx, ry, seed)
        if ct._find(index, conns, hr, z, p, ra, rb, rx, ry) >= 0:
            return -1, 1, h, hr
    return -1, 0 if stats[ct.STAT_COUNT] + pending < len(conns) else 1, h, hr


@jit
def _held(conns, index, seed, w0, w1, w2, w3):
    """The connection holding a NEW_CONN reference's tuples (original tuple
    in the ORIGINAL direction, the same reply tuple), or -1."""
    z, p, a, b, x, y, ra, rb, rx, ry = _words(w0, w1, w2, w3)
    pos = ct._find(index, conns, ct._hash(z, p, a, b, x, y, seed), z, p, a, b, x, y)
    if pos < 0 or ct._slot_direction(index[pos]) != ct.ORIGINAL:
        return -1
    c = ct._slot_conn(index[pos])
    return c if _same_tuples(conns[c], w0, w1, w2, w3) else -1


@jit
def _open(conns, index, free_ids, stats, w0, w1, w2, w3, h, hr, flags, now):
    """Insert a NEW_CONN reference's connection (checked by _open_check,
    whose hashes h and hr are its tuples') as the conntrack hook opens one
    (kernels.flow.first_state)."""
    z, p, a, b, x, y, ra, rb, rx, ry = _words(w0, w1, w2, w3)
    state = first_state(p, flags)[1]
    return ct._insert_free(conns, index, free_ids, stats, h, hr, z, p, a, b, x, y, ra, rb, rx, ry, np.uint8(state),
                           now + _timeout(np.int64(p), state, False))


@jit
def _prefetch_item(f, prog_start, prog_len, ops, ref_start, refs, cts, ct_index, ct_seeds, n_cts):
    """Fetch what an item AHEAD will touch at its tables: its connections'
    records, and the index lines where its NEW_CONN tuples are looked up."""
    for d in range(2):
        key = 2 * f + d
        ref = ref_start[key]
        first = prog_start[key]
        for r in range(first, first + prog_len[key]):
            kind = ops[r, 0]
            if kind == OP_CT:
                a = ops[r, 1]
                if 0 <= a < n_cts and 0 <= ref < len(refs):
                    c = refs[ref, 0]
                    if c >= 0 and c < len(cts[a]):
                        prefetch(cts[a], c)
                    elif c == NEW_CONN:
                        z, p, sa, sb, x, y, ra, rb, rx, ry = _words(refs[ref, 1], refs[ref, 2], refs[ref, 3],
                                                                    refs[ref, 4])
                        index = ct_index[a]
                        prefetch(index, ct._home(ct._hash(z, p, sa, sb, x, y, ct_seeds[a]), index))
                        prefetch(index, ct._home(ct._hash(z, p, ra, rb, rx, ry, ct_seeds[a]), index))
                ref += 1
            elif kind == OP_CAP:
                ref += 1


@jit
def _replay(flow, step, time, end, horizon, k_data, payload, prog_start, prog_len, ops, ref_start, refs, cts, ct_index,
            ct_free, ct_stats, ct_seeds, n_cts, fdb_entries, fdb_states, fdb_salts, n_fdbs, peer, latency, up, ip_ids,
            isn_c, isn_s, ipid_c, ipid_s, c_got, echoes, tpl, cap_buf, cap_start, cap_len, cap_port, cap_time, cap_pkt,
            cap_note, cap_tpl, counts, out_step, out_time, sent, lat):
    """The loops of `replay` in one function (helpers taking the table tuples
    would pay reference counting on every call). Returns the last arrival
    (-1: none), or -2 - r when program row r refers to nothing that exists
    (its reference included)."""
    last = np.int64(-1)
    n_ports = len(peer)
    open_table = np.empty(MAX_OPEN, np.int64)
    open_ref = np.empty(MAX_OPEN, np.int64)
    open_h = np.empty(MAX_OPEN, np.uint64)      # their tuples' hashes, for the commit
    open_hr = np.empty(MAX_OPEN, np.uint64)
    checked = np.zeros(2, np.bool_)
    path_lat = np.zeros(2, np.int64)
    path_rec = np.zeros(2, np.int64)
    path_bytes = np.zeros(2, np.int64)
    seen = np.zeros(2, np.bool_)         # per direction: a packet of the item's flow passed the whole check
    seen_lat = np.zeros(2, np.int64)
    seen_rec = np.zeros(2, np.int64)
    for i in range(len(flow)):
        if i + AHEAD < len(flow):
            _prefetch_item(flow[i + AHEAD], prog_start, prog_len, ops, ref_start, refs, cts, ct_index, ct_seeds,
                           n_cts)
        f = flow[i]
        s = np.int64(step[i])
        t = np.int64(time[i])
        last_step = 6 + 2 * k_data
        # per direction, once its program passed a check for a steady packet in this
        # call: the latency, records and bytes of its path (see "Checked once")
        checked[0] = False
        checked[1] = False
        seen[0] = False
        seen[1] = False
        while t < horizon and 0 <= s < last_step and counts[FULL] == 0:
            server = s == 1 or ((s % 2) == 0 and s >= 4)
            d = 1 if server else 0
            key = 2 * f + d
            count = prog_len[key]
            if count == 0:
                break
            first = prog_start[key]
            steady = 3 <= s < 3 + 2 * k_data
            if steady:
                flags = ACK if server else PSH | ACK
            elif s == 0:     # the client's SYN
                flags = SYN
            elif s == 1:     # the server's SYN-ACK
                flags = SYN | ACK
            elif s == 2:     # the handshake's last ACK
                flags = ACK
            else:            # the teardown: FIN, FIN-ACK, ACK
                flags = ACK if s == 5 + 2 * k_data else FIN | ACK
            # which of a capture point's templates: steady, pure ACK, FIN
            variant = 0 if steady else (2 if (flags & FIN) != 0 else 1)
            tt = t
            ok = True
            n_rec = 0
            n_bytes = 0
            n_open = 0      # the connections this packet inserts: their tables and references
            if steady and checked[d]:
                tt = t + path_lat[d]
                n_rec = path_rec[d]
                n_bytes = path_bytes[d]
                count_check = 0
            elif seen[d]:   # see "Checked again". The conditions are the whole check's (below), written
                # out in both places: a helper taking the record made the kernel 12% slower
                tt = t + seen_lat[d]
                n_rec = seen_rec[d]
                n_bytes = n_rec * FIELD_BYTES
                count_check = 0
                ref = ref_start[key]
                for r in range(first, first + count):
                    kind = ops[r, 0]
                    if kind == OP_CT:
                        direction = ops[r, 3]
                        rec = cts[ops[r, 1]][refs[ref, 0]]
                        ref += 1
                        if rec.expires <= horizon or (direction == ct.REPLY and (rec.status & ct.IPS_SEEN_REPLY) == 0) \
                                or (rec.proto == 6 and tcp_next(np.int64(rec.state), flags, direction) < 0):
                            ok = False
                            break
                    elif kind == OP_CAP:
                        ref += 1
            else:
                count_check = count
            # check: the path is still the program's, and valid for this packet
            ref = ref_start[key]
            for r in range(first, first + count_check):
                kind = ops[r, 0]
                a = ops[r, 1]
                if kind == OP_LINK:
                    if a < 0 or a >= n_ports:
                        return -2 - r
                    q = peer[a]
                    if q < 0 or q >= n_ports or not up[a] or not up[q]:
                        ok = False
                        break
                    tt += latency[a]
                elif kind == OP_CT:
                    direction = ops[r, 3]
                    if a < 0 or a >= n_cts or ref < 0 or ref >= len(refs) or refs[ref, 0] < NEW_CONN \
                            or refs[ref, 0] >= len(cts[a]) or (direction != ct.ORIGINAL and direction != ct.REPLY):
                        return -2 - r
                    if refs[ref, 0] == NEW_CONN and direction == ct.REPLY:   # opened by the flow before
                        c = _held(cts[a], ct_index[a], ct_seeds[a], refs[ref, 1], refs[ref, 2], refs[ref, 3],
                                  refs[ref, 4])
                        if c < 0:
                            ok = False
                            break
                        refs[ref, 0] = c   # the flow's from then on, checked below as any
                    if refs[ref, 0] == NEW_CONN:
                        pending = 0
                        meet = False
                        for q in range(n_open):
                            if open_table[q] == a:
                                pending += 1
                                meet |= _tuples_meet(refs, open_ref[q], ref)
                        c, busy, h, hr = _open_check(cts[a], ct_index[a], ct_stats[a], ct_seeds[a], refs[ref, 1],
                                                     refs[ref, 2], refs[ref, 3], refs[ref, 4], flags, pending)
                        if busy or meet or (c < 0 and n_open == MAX_OPEN) or (c >= 0 and not _same_tuples(
                                cts[a][c], refs[ref, 1], refs[ref, 2], refs[ref, 3], refs[ref, 4])):
                            ok = False   # a clash (here or in the table), no room, another reply tuple
                            break
                        if c < 0:
                            open_table[n_open] = a
                            open_ref[n_open] = ref
                            open_h[n_open] = h
                            open_hr[n_open] = hr
                            n_open += 1
                            ref += 1
                            continue
                        refs[ref, 0] = c   # found: the flow's connection, checked below as any
                    rec = cts[a][refs[ref, 0]]
                    same = _same_tuples(rec, refs[ref, 1], refs[ref, 2], refs[ref, 3], refs[ref, 4])
                    ref += 1
                    if (rec.status & ct.IPS_CONFIRMED) == 0 or not same or rec.expires <= max(tt, horizon):
                        ok = False
                        break
                    if direction == ct.REPLY and (rec.status & ct.IPS_SEEN_REPLY) == 0 and s != 1:
                        ok = False  # only the SYN-ACK is the first reply
                        break
                    if rec.proto == 6 and tcp_next(np.int64(rec.state), flags, direction) < 0:
                        ok = False   # INVALID: the fast path says so
                        break
                elif kind == OP_FDB_LEARN or kind == OP_FDB_FWD:
                    if a < 0 or a >= n_fdbs or (kind == OP_FDB_LEARN and ops[r, 3] < 0) \
                            or ops[r, 2] < 0 or ops[r, 2] > fdbk.MAX_MAC:
                        return -2 - r
                    entries = fdb_entries[a]
                    ageing = fdb_states[a][0].ageing
                    j = _fdb_slot(entries, fdb_salts[a], ops[r, 2], ops[r, 3], ops[r, 4])
                    if ageing == 0 or j < 0 or ((entries[j].flags & fdbk.FLAG_LOCAL) == 0
                                                and entries[j].updated + ageing <= max(tt, horizon)):
                        ok = False
                        break
                    ops[r, 4] = j
                elif kind == OP_ENCAP:
                    if a < 0 or a >= len(ip_ids):
                        return -2 - r
                elif kind == OP_CAP:
                    if a < 0 or a + 2 >= len(tpl) or ref < 0 or ref >= len(refs) \
                            or not (0 <= refs[ref, 0] <= 0xFFFFFFFF and 0 <= refs[ref, 1] <= 0xFFFF):
                        return -2 - r
                    if s <= 1:   # no template for a SYN or SYN-ACK: the fast path captures them
                        ok = False
                        break
                    ref += 1
                    n_rec += 1
                    n_bytes += FIELD_BYTES
                elif kind != OP_DELIVER:
                    return -2 - r
            if not ok or tt >= horizon:   # nothing may happen to a table before the packet arrives
                break
            if count_check:
                seen[d] = True
                seen_lat[d] = tt - t
                seen_rec[d] = n_rec
            if steady and not checked[d] and n_open == 0:   # a connection opened now is checked again
                checked[d] = True
                path_lat[d] = tt - t
                path_rec[d] = n_rec
                path_bytes[d] = n_bytes
            if counts[N_REC] + n_rec > len(cap_start) or counts[N_BYTES] + n_bytes > len(cap_buf):
                counts[FULL] = 1
                break
            arrive = tt
            # commit: what each hop does to its tables (and its capture) for this packet
            pkt = counts[NEXT_ID]
            counts[NEXT_ID] += 1
            # sequence numbers as emu.bulk.traffic's script has them
            sent_data = np.int64(isn_c[f]) + 1 + k_data * payload
            if server:
                ip_id = (np.int64(ipid_s[f]) + s) & 0xFFFF
                seq = (np.int64(isn_s[f]) + 1) & 0xFFFFFFFF
                if steady:
                    ack = (np.int64(isn_c[f]) + 1 + ((s - 4) // 2 + 1) * payload) & 0xFFFFFFFF
                else:   # the FIN-ACK
                    ack = (sent_data + 1) & 0xFFFFFFFF
            else:
                ip_id = (np.int64(ipid_c[f]) + s) & 0xFFFF
                ack = (np.int64(isn_s[f]) + (2 if s == 5 + 2 * k_data else 1)) & 0xFFFFFFFF
                if s == 0:
                    seq = np.int64(isn_c[f])
                    ack = np.int64(0)
                elif s == 2:
                    seq = (np.int64(isn_c[f]) + 1) & 0xFFFFFFFF
                elif s == 5 + 2 * k_data:
                    seq = (sent_data + 1) & 0xFFFFFFFF
                else:   # data, and the FIN
                    seq = (np.int64(isn_c[f]) + 1 + ((s - 3) // 2) * payload) & 0xFFFFFFFF
            tag = (np.uint64(f) << np.uint64(16)) | np.uint64(s)
            outer_id = np.int64(0)
            tt = t
            ref = ref_start[key]
            k_open = 0
            for r in range(first, first + count):
                kind = ops[r, 0]
                a = ops[r, 1]
                if kind == OP_LINK:
                    tt += latency[a]
                elif kind == OP_CT:
                    if refs[ref, 0] == NEW_CONN:   # the check's opens, in the same order
                        refs[ref, 0] = _open(cts[a], ct_index[a], ct_free[a], ct_stats[a], refs[ref, 1], refs[ref, 2],
                                             refs[ref, 3], refs[ref, 4], open_h[k_open], open_hr[k_open], flags, tt)
                        k_open += 1
                    rec = cts[a][refs[ref, 0]]
                    ref += 1
                    if ops[r, 3] == ct.REPLY:   # what the lookup does
                        rec.status |= ct.IPS_SEEN_REPLY
                    seen_reply = (rec.status & ct.IPS_SEEN_REPLY) != 0
                    p = np.int64(rec.proto)
                    state = np.int64(rec.state)
                    if p == 6:
                        state = tcp_next(state, flags, ops[r, 3])
                        if state != rec.state:   # a shorter timeout, maybe: check again
                            checked[0] = False
                            checked[1] = False
                    _refresh(rec, state, tt + _timeout(p, state, seen_reply))
                    if (p == 6 and (state & 0x7F) == TCP_ESTABLISHED) or (p != 6 and seen_reply):
                        rec.status |= ct.IPS_ASSURED
                elif kind == OP_FDB_LEARN:
                    entries = fdb_entries[a]
                    j = ops[r, 4]   # found by the check
                    if tt > entries[j].updated:
                        entries[j].updated = tt
                    st = fdb_states[a][0]
                    if min(tt, end) > st.now:
                        st.now = min(tt, end)
                elif kind == OP_ENCAP:
                    outer_id = ip_ids[a]
                    ip_ids[a] = (outer_id + 1) & 0xFFFF
                elif kind == OP_CAP:
                    k = counts[N_REC]
                    pos = counts[N_BYTES]
                    v = a + variant
                    put_fields(cap_buf, pos, ip_id, outer_id, seq, ack, tag, refs[ref, 0], refs[ref, 1])
                    ref += 1
                    cap_start[k] = pos
                    cap_len[k] = tpl[v, 1]
                    cap_port[k] = tpl[v, 2]
                    cap_time[k] = tt
                    cap_pkt[k] = pkt
                    cap_note[k] = tpl[v, 3]
                    cap_tpl[k] = v
                    counts[N_REC] = k + 1
                    counts[N_BYTES] = pos + FIELD_BYTES
            sent[2 * i + d] += 1
            lat[2 * i + d] = arrive - t
            if server:
                echoes[f] += 1
                if s > c_got[f]:
                    c_got[f] = s
            if arrive > last:
                last = arrive
            s += 1
            t = arrive
        out_step[i] = s
        out_time[i] = t
    return last


class Result(NamedTuple):
    step: np.ndarray       # where each item's flow stopped: its next step and when it leaves
    time: np.ndarray
    sent: np.ndarray       # [2 * item + direction]: packets carried (0 client -> server)
    latency: np.ndarray    # [2 * item + direction]: the one-way latency of the last of them
    last: int              # the latest arrival, -1 if none


def replay(flow, step, time, end: int, horizon: int, k_data: int, payload: int, prog_start, prog_len, ops,
           ref_start, refs, cts: tuple, fdbs: tuple, peer, latency, up, ip_ids, flows: Flows, capture: Capture,
           counts) -> Result:
    """Carry the flows on (see the module docstring). cts: the conntrack
    tables (kernels.conntrack.Table) by table number; fdbs: kernels.fdb.Fdb by bridge
    number; ip_ids: each counter's next IP id (updated); counts: int64
    [records written, bytes written, next packet id, full] (updated)."""
    flow = _check.array(flow, "flow", np.int64)
    step = _check.array(step, "step", np.int64)
    time = _check.array(time, "time", np.int64)
    n = _check.same_length(flow=flow, step=step, time=time)
    prog_start = _check.array(prog_start, "prog_start", np.int64)
    prog_len = _check.array(prog_len, "prog_len", np.int64)
    ops = _check.array(ops, "ops", np.int64, ndim=2)
    if ops.shape[1] != OPS:
        raise ValueError(f"ops: expected {OPS} columns, got {ops.shape[1]}")
    ref_start = _check.array(ref_start, "ref_start", np.int64)
    refs = _check.array(refs, "refs", np.int64, ndim=2)
    if refs.shape[1] != REFS:
        raise ValueError(f"refs: expected {REFS} columns, got {refs.shape[1]}")
    fl = Flows(*(_check.updated(a, name, dt) for a, name, dt in zip(
        flows, Flows._fields, (np.uint32, np.uint32, np.uint16, np.uint16, np.int64, np.int64))))
    n_flows = _check.same_length(**dict(zip(Flows._fields, fl)))
    if len(prog_start) != len(prog_len) or len(prog_start) != 2 * n_flows or len(ref_start) != len(prog_start):
        raise ValueError("prog_start/prog_len/ref_start: two programs (one per direction) per flow")
    _check.in_range(flow, "flow", 0, n_flows - 1)
    if len(prog_len) and (prog_len.min() < 0 or prog_start[prog_len > 0].min(initial=0) < 0
                          or (prog_start + prog_len).max() > len(ops)):
        raise ValueError("prog_start/prog_len: programs must lie within ops")
    peer = _check.array(peer, "peer", np.int32)
    latency = _check.array(latency, "latency", np.int64)
    up = _check.array(up, "up", np.bool_)
    _check.same_length(peer=peer, latency=latency, up=up)
    ip_ids = _check.updated(ip_ids, "ip_ids", np.int64)
    _check.in_range(ip_ids, "ip_ids", 0, 0xFFFF)
    cap = Capture(*(_check.updated(a, name, dt, ndim=2 if name == "tpl" else 1) for a, name, dt in zip(
        capture, Capture._fields, (np.int64, np.uint8, np.int64, np.int64, np.int32, np.int64, np.int64, np.int32,
                                   np.int32))))
    if cap.tpl.shape[1] != TPL:
        raise ValueError(f"tpl: expected {TPL} columns")
    _check.same_length(start=cap.start, length=cap.length, port=cap.port, time=cap.time, pkt_id=cap.pkt_id,
                       note=cap.note, tpl_id=cap.tpl_id)
    counts = _check.updated(counts, "counts", np.int64)
    if len(counts) != 4 or not (0 <= counts[N_REC] <= len(cap.start) and 0 <= counts[N_BYTES] <= len(cap.buf)):
        raise ValueError("counts: [records, bytes, next packet id, full], within the capture arrays")
    if not 8 <= payload <= 1400:
        raise ValueError("payload: 8..1400 bytes")
    out = Result(np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(2 * n, np.int64), np.zeros(2 * n, np.int64),
                 -1)
    if not n:
        return out
    for k, table in enumerate(cts):
        if not isinstance(table, ct.Table) or table.conns.dtype != ct.CONN_DTYPE or table.conns.ndim != 1:
            raise ValueError(f"cts[{k}]: expected a kernels.conntrack.Table")
    for k, f in enumerate(fdbs):
        if not isinstance(f, fdbk.Fdb) or f.entries.dtype != fdbk.ENTRY_DTYPE or f.state.dtype != fdbk.STATE_DTYPE:
            raise ValueError(f"fdbs[{k}]: expected a kernels.fdb.Fdb")
    n_cts, n_fdbs = len(cts), len(fdbs)
    cts = tuple(cts) if cts else (ct.make_table(1),)  # numba wants a non-empty tuple
    fdbs = tuple(fdbs) if fdbs else (fdbk.make_fdb(1),)
    last = _replay(flow, step, time, np.int64(end), np.int64(max(horizon, end)), np.int64(k_data),
                   np.int64(payload), prog_start, prog_len, ops, ref_start, refs, tuple(t.conns for t in cts),
                   tuple(t.index for t in cts), tuple(t.free_ids for t in cts), tuple(t.stats for t in cts),
                   np.array([t.seed for t in cts], np.uint64), np.int64(n_cts),
                   tuple(f.entries for f in fdbs), tuple(f.state for f in fdbs),
                   np.array([f.salt for f in fdbs], np.uint64), np.int64(n_fdbs), peer, latency, up,
                   ip_ids, *fl, *cap, counts, out.step, out.time, out.sent, out.latency)
    if last <= -2:
        r = -2 - int(last)
        raise ValueError(f"ops: row {r} ({ops[r].tolist()}) or its reference refers to nothing that exists")
    return out._replace(last=int(last))
