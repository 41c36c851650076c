"""The flow cache: what the fast path did to one packet of a TCP flow,
replayed for the rest of that direction of the flow.

Learning. Packets the generator marks (Traffic._learners) get a learner
slot (`Batch.learn`) and log into it, as they cross the fast path, the
operations whose effect differs from packet to packet: the links they take
(`transmit`), the conntrack entries they step (every conntrack hook, with a
fingerprint of the entry's original tuple), the bridge FDB entries they
refresh and look up, the VXLAN encapsulations (one IP id each), the capture
points, and their delivery. A capture point's frame and comment become
three templates in the taps (emu.bulk.variants: steady packet, pure ACK,
FIN), shared by every flow whose frame there differs only in the fields
kernels.frametpl fills (`_path_keys`): the program keeps the flow's ports.
What only a connection's first packet does (the conntrack insert,
kube-proxy's pick, the NAT binding) stays its own: the program is the path
the packets after it take. A learner that leaves the common case (handed
to an interactive device, dropped) fails. When a learner is delivered its
rows become the (flow, direction)'s program (kernels.replay), provided
every connection it stepped is still the same one.

Everything else a hop does to an established packet (routes, neighbours,
the NAT of an existing binding, MACs, TTL, kube-proxy's no-op for the outer
VXLAN packets) depends only on tables the control plane changes, never on
the packet; so programs are dropped whenever anything else happens in the
engine (an event, a packet of the interactive engine, a hand-off from the
fast path): see `stale`. Flows are then learned again.

Replay. kernels.replay carries flows along their programs on the live
tables: conntrack state, timeouts and ASSURED, FDB refreshes, IP ids drawn,
links up, captured frames; a packet it cannot carry goes down the fast path.
"""
from __future__ import annotations

import numpy as np

from emu.bulk import variants
from kernels import conntrack as ct
from kernels import parse
from kernels import replay as rk
from kernels.frametpl import FIELD_BYTES, TPL
from kernels.replay import OP_CAP, OP_CT, OP_DELIVER, OP_FDB_FWD, OP_FDB_LEARN, OPS

OP_FAIL = 0                 # learning only: a learner left the common case
MAX_ROWS = 48               # a learner's rows at most (a two-node path with capture takes ~30)
CAPTURE_RECORDS = 1 << 16   # room made in the taps before each replay call (more when it fills)
MAX_OPS = 8 << 20           # program rows (40 bytes each) the cache holds at most: 320 MiB
MAX_LEARNERS = 1 << 16      # learners in flight at most (MAX_ROWS x 40 bytes each: 120 MiB)
COMPACT_AFTER = 1 << 18     # dead program rows before reclaiming them is worth a copy

FREE, LEARNING, DELIVERED, FAILED = 0, 1, 2, 3
# a logged row (one array each, [row, slot]): an operation's kind and arguments as
# kernels.replay has them (a, b, c; its d is made by compile), and for conntrack the
# fingerprint of the entry's tuples
ROW = ("kind", "a", "b", "c", "fp")


class FlowCache:
    def __init__(self, engine, flows: int, payload, kinds: dict):
        """payload: a data segment's bytes before its tag is written; kinds:
        the comment the sender gives each kind of packet ("SYN", "FIN",
        "data", "ACK"): see emu.bulk.variants."""
        self.engine = engine
        self.n = flows
        self.payload = payload
        self.kinds = kinds
        self.replayed = 0
        self._tpl_of: dict[bytes, int] = {}   # a path's frame (_path_keys) -> its templates in the taps
        self.prog_start = np.zeros(2 * self.n, np.int64)
        self.prog_len = np.zeros(2 * self.n, np.int64)
        # programs' rows (the first _n_ops in use) and their connections' snapshots: room
        # for every flow's two programs up front (zeroed lazily by the OS: the pages no
        # program reaches cost nothing), so they seldom grow
        self.ops = np.zeros((min(MAX_OPS, 2 * self.n * 20), OPS), np.int64)
        self.snap = ct._aligned_zeros(min(MAX_OPS, 2 * self.n * 5), ct.CONN_DTYPE)
        # learner slots: rows (kind, a, b, c, fingerprint), how many, the key, the state
        self._rows = {name: np.zeros((MAX_ROWS, 0), np.int64) for name in ROW}
        self._fill = np.zeros(0, np.int64)
        self._key = np.zeros(0, np.int64)
        self._state = np.zeros(0, np.int8)        # FREE, LEARNING, DELIVERED, FAILED
        self._free = np.zeros(0, np.int64)
        self._ct_ns: dict[int, int] = {}         # namespace id -> table number
        self._ct_objs: list = []
        self._fdb_br: dict[int, int] = {}
        self._fdb_objs: list = []
        self._enc_ns: dict[int, int] = {}
        self._enc_objs: list = []
        self._clear()

    def _clear(self) -> None:
        """No programs and no learners. The arrays stay, to be written again:
        their memory is touched already."""
        self.prog_len[:] = 0
        self._n_ops = 0
        self._dead = 0                               # rows of programs forgotten
        self._n_snap = 0
        self._state[:] = FREE
        self._free[:] = np.arange(len(self._key) - 1, -1, -1)
        self._n_free = len(self._key)
        self._ended = False                      # a learner finished since the last compile

    # -- learning (called by the generator and the fast path) --------------------------------
    def begin(self, batch, idx, keys) -> None:
        """Packets idx start learning (flow, direction) keys: as many as
        MAX_LEARNERS allows in flight, none while the programs fill MAX_OPS
        (those flows stay on the fast path)."""
        n = min(len(idx), MAX_LEARNERS - (len(self._key) - self._n_free))
        if n <= 0 or self._n_ops - self._dead >= MAX_OPS:
            return
        idx, keys = idx[:n], keys[:n]
        if n > self._n_free:
            self._grow(n)
        slots = self._free[self._n_free - n:self._n_free].copy()
        self._n_free -= n
        self._fill[slots] = 0
        self._key[slots] = keys
        self._state[slots] = LEARNING
        batch.learn[idx] = slots

    def _grow(self, need: int) -> None:
        old = len(self._key)
        size = max(2 * old, old + need, 256)
        for name in ROW:   # [row, slot]: the rows no learner reaches stay untouched memory
            col = np.zeros((MAX_ROWS, size), np.int64)
            col[:, :old] = self._rows[name]
            self._rows[name] = col
        self._fill, self._key, self._state = (np.r_[a, np.zeros(size - old, a.dtype)]
                                              for a in (self._fill, self._key, self._state))
        free = np.empty(size, np.int64)
        free[:self._n_free] = self._free[:self._n_free]
        free[self._n_free:self._n_free + size - old] = np.arange(size - 1, old - 1, -1)
        self._free, self._n_free = free, self._n_free + size - old

    def log(self, batch, idx, kind: int, a=0, b=0, c=0, fp=0) -> None:
        """A row for each learner among packets idx (a, b, c, fp: scalars or per packet)."""
        slot = batch.learn[idx]
        sel = slot >= 0
        if not sel.any():
            return
        s = slot[sel]
        live = self._state[s] == LEARNING
        s, sel_idx = s[live], np.nonzero(sel)[0][live]
        pos = self._fill[s]
        full = pos >= MAX_ROWS
        if full.any():                       # a path this long is not cached
            self._state[s[full]] = FAILED
            self._ended = True
            batch.learn[idx[sel_idx[full]]] = -1
            s, sel_idx, pos = s[~full], sel_idx[~full], pos[~full]
        self._rows["kind"][pos, s] = kind
        for name, col in (("a", a), ("b", b), ("c", c), ("fp", fp)):
            self._rows[name][pos, s] = col if np.isscalar(col) else np.asarray(col)[sel_idx]
        self._fill[s] = pos + 1
        if kind == OP_DELIVER:
            self._state[s] = DELIVERED
            self._ended = True
            batch.learn[idx[sel_idx]] = -1
        elif kind == OP_FAIL:
            self._state[s] = FAILED
            self._ended = True
            batch.learn[idx[sel_idx]] = -1

    # the numbers programs give tables: a namespace's conntrack, a bridge's FDB,
    # a namespace's IP id counter
    def ct_table(self, ns) -> int:
        return _number(self._ct_ns, self._ct_objs, ns)

    def fdb(self, br) -> int:
        return _number(self._fdb_br, self._fdb_objs, br)

    def counter(self, ns) -> int:
        return _number(self._enc_ns, self._enc_objs, ns)

    # -- compiling --------------------------------------------------------------------------
    def compile(self) -> None:
        """Programs from the learners that were delivered: every connection
        still the one they stepped. Their slots (and the failed ones') are free again."""
        if not self._ended:
            return
        self._ended = False
        done = np.nonzero((self._state == DELIVERED) | (self._state == FAILED))[0]
        good = done[self._state[done] == DELIVERED]
        self._state[done] = FREE
        self._free[self._n_free:self._n_free + len(done)] = done
        self._n_free += len(done)
        if not len(good):
            return
        fill = self._fill[good]
        owner = np.repeat(np.arange(len(good)), fill)
        pos = np.arange(len(owner)) - np.repeat(np.cumsum(fill) - fill, fill)
        # the learners' rows, learner after learner, as flat indices into the [row, slot] arrays
        flat = pos * len(self._key) + good[owner]
        kind = self._rows["kind"].ravel()[flat]
        ok = np.ones(len(good), bool)
        isct = np.nonzero(kind == OP_CT)[0]
        table, conn, fps = (self._rows[name].ravel()[flat[isct]] for name in ("a", "b", "fp"))
        recs = ct._aligned_zeros(len(isct), ct.CONN_DTYPE)   # the connections now: checked, then kept
        for k in np.unique(table).tolist():            # each connection still the one stepped
            m = np.nonzero(table == k)[0]
            now = conn_records(self._ct_objs[k].conntrack.table.conns, conn[m])
            _words(recs)[m] = _words(now)
            same = fingerprint(now) == fps[m]
            ok[owner[isct[m[~same]]]] = False
        # the last good learner of each key (a flow with a short round trip may finish several)
        keys = self._key[good]
        last = np.ones(len(good), bool)
        order = np.argsort(keys, kind="stable")
        ko = keys[order]
        last[order[:-1][ko[:-1] == ko[1:]]] = False
        ok &= last
        if not ok.any():
            return
        keep = np.nonzero(ok[owner])[0]
        base = self._room(len(keep))
        rows = self.ops[base:base + len(keep)]          # written in place
        rows[:, 0] = kind[keep]
        flat = flat[keep]
        for j, name in ((1, "a"), (2, "b"), (3, "c")):
            rows[:, j] = self._rows[name].ravel()[flat]
        fdb = (rows[:, 0] == OP_FDB_LEARN) | (rows[:, 0] == OP_FDB_FWD)
        rows[:, 4] = np.where(fdb, -1, 0)               # no slot hint yet
        fill, keys = fill[ok], keys[ok]
        c = np.nonzero(rows[:, 0] == OP_CT)[0]
        if len(c):   # snapshots of the connections' tuples
            rows[c, 4] = self._append_snaps(_words(recs)[np.searchsorted(isct, keep[c])])
        cap = np.nonzero(rows[:, 0] == OP_CAP)[0]
        if len(cap):
            client = np.repeat(keys, fill)[cap] % 2 == 0
            rows[cap, 1], rows[cap, 2], rows[cap, 3] = self._templates(rows[cap, 1], client)
        self._n_ops += len(keep)
        self.prog_start[keys] = base + np.r_[0, np.cumsum(fill)[:-1]]
        self.prog_len[keys] = fill

    def _room(self, n: int) -> int:
        """Room for n more program rows (it doubles as programs come): where they go."""
        base = self._n_ops
        if base + n > len(self.ops):
            grown = np.zeros((max(2 * len(self.ops), base + n, 1024), OPS), np.int64)
            grown[:base] = self.ops[:base]
            self.ops = grown
        return base

    def _append_ops(self, ops) -> int:
        """`ops` after the programs' rows: where they start."""
        base = self._room(len(ops))
        self.ops[base:base + len(ops)] = ops
        self._n_ops += len(ops)
        return base

    def _append_snaps(self, words) -> np.ndarray:
        """Snapshots (conntrack records as _words rows) after the others: their numbers."""
        base = self._n_snap
        if base + len(words) > len(self.snap):
            grown = ct._aligned_zeros(max(2 * len(self.snap), base + len(words), 1024), ct.CONN_DTYPE)
            _words(grown)[:base] = _words(self.snap)[:base]
            self.snap = grown
        _words(self.snap)[base:base + len(words)] = words
        self._n_snap += len(words)
        return base + np.arange(len(words))

    def _templates(self, records, client):
        """The templates of the learners' capture records (their frames, ports
        and notes as the taps hold them; client: sent by the client) and the
        flow's own fields there: (template, TCP ports, outer UDP source port)
        per record. A template (three: emu.bulk.variants) is shared by every
        flow whose frame there differs only in the fields kernels.frametpl
        fills: one per path, not per flow."""
        taps = self.engine.taps
        r = {k: v[records] for k, v in taps._cols.items()}
        frames, at = taps.frames(r)
        length = r["length"]
        ports = sorted(set().union(*(ns._vxlan_ports() for ns in self._vxlan_owners())))
        h = parse.parse(frames, at, length, tuple(ports))
        inner = np.where((h.flags & parse.VXLAN) != 0, h.inner_off.astype(np.int64) + 14, 14)
        tcp_ports = _be(frames, at + inner + 20, 4)
        outer_sport = np.where(inner > 14, _be(frames, at + 34, 2), 0)
        port, note = r["port"], r["note"]
        keys, first, inverse = _path_keys(frames, at, length, inner, port, note, client)
        ids = np.array([self._tpl_of.get(k, -1) for k in keys], np.int64)
        new = np.nonzero(ids < 0)[0]
        if len(new):
            r = first[new]
            buf, starts, lengths = variants.tcp_variants(frames, at[r], inner[r], client[r], self.payload)
            got = taps.add_templates(buf, starts, lengths, np.repeat(port[r], 3),
                                     self._variant_notes(note[r], client[r]), np.repeat(inner[r], 3))[::3]
            ids[new] = got
            self._tpl_of.update(zip((keys[k] for k in new.tolist()), got.tolist()))
        return ids[inverse], tcp_ports, outer_sport

    def _variant_notes(self, notes, client) -> np.ndarray:
        """The comments of the three templates of each record: the sender's
        own record names the kind of packet (a text of self.kinds, first):
        that name becomes the template's; any other comment is the same."""
        eng = self.engine
        out = np.repeat(np.asarray(notes, np.int64), 3).reshape(-1, 3)
        for note in np.unique(notes).tolist():
            text = eng.notes[note] if note >= 0 else ""
            kind = next((k for k in self.kinds.values() if text.startswith(k)), None)
            if kind is None:
                continue
            rest = text[len(kind):]
            for side in (True, False):
                m = (notes == note) & (client == side)
                names = (self.kinds["data"] if side else self.kinds["ACK"], self.kinds["ACK"], self.kinds["FIN"])
                out[m] = [eng.note(name + rest) for name in names]
        return out.ravel().astype(np.int32)

    def _vxlan_owners(self):
        return [ns for ns in self.engine.devices if hasattr(ns, "_vxlan_ports")]

    def stale(self, batch) -> None:
        """Something changed the tables: no program holds any more, and the
        learners in flight stop (their rows so far are gone)."""
        self._clear()
        batch.learn[:] = -1

    def has(self, keys) -> np.ndarray:
        return self.prog_len[keys] > 0

    def forget(self, flows) -> None:
        """Flows that ended: their programs go (the rows are reclaimed once
        most of them are dead)."""
        keys = np.concatenate([2 * np.asarray(flows, np.int64), 2 * np.asarray(flows, np.int64) + 1])
        self._dead += int(self.prog_len[keys].sum())
        self.prog_len[keys] = 0
        if self._dead > COMPACT_AFTER and 2 * self._dead > self._n_ops:
            self._compact()

    def _compact(self) -> None:
        """The live programs' rows (and their connections' snapshots) packed
        at the start again."""
        live = np.nonzero(self.prog_len > 0)[0]
        lens = self.prog_len[live]
        at = np.repeat(self.prog_start[live] - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
        ops = self.ops[at]
        c = np.nonzero(ops[:, 0] == OP_CT)[0]
        snaps = _words(self.snap)[ops[c, 4]]
        ops[c, 4] = np.arange(len(c))
        self._n_ops = self._n_snap = self._dead = 0
        self.prog_start[live] = self._append_ops(ops) + np.r_[0, np.cumsum(lens)[:-1]]
        self._append_snaps(snaps)

    # -- replay -----------------------------------------------------------------------------
    def run(self, traffic, f, s, t, end: int, horizon: int) -> rk.Result:
        """kernels.replay over the items (flow, step, time) of a Traffic:
        where each flow stopped, the packets carried per item and direction,
        their latency, the last arrival. Captured packets go to the taps as
        template records (kernels.frametpl)."""
        eng = self.engine
        peer, latency, _, up = eng._arrays()
        ip_ids = np.array([ns._ip_id for ns in self._enc_objs], np.int64)
        flows = rk.Flows(traffic.isn_c, traffic.isn_s, traffic.ipid_c, traffic.ipid_s, traffic.c_got, traffic.echoes)
        cts = tuple(ns.conntrack.table.conns for ns in self._ct_objs)
        fdbs = tuple(br.fdb for br in self._fdb_objs)
        taps = eng.taps
        counts = np.array([0, 0, eng.pool._next_id, 0], np.int64)
        sent = lat = None
        last = -1
        while True:
            if taps is not None:   # room for what the flows may capture (more if it fills)
                records = self._capture_need(traffic, f, s)
                taps._reserve(records + CAPTURE_RECORDS, (records + CAPTURE_RECORDS) * FIELD_BYTES)
                c = taps._cols
                cap = rk.Capture(taps.tpl, taps.buf, c["start"], c["length"], c["port"], c["time"],
                                 c["pkt_id"], c["note"], c["tpl"])
                counts[rk.N_REC], counts[rk.N_BYTES] = taps.count, taps._used
            else:
                cap = rk.Capture(np.zeros((0, TPL), np.int64), np.zeros(0, np.uint8), *_NO_RECORDS)
            out = rk.replay(f, s, t, end, horizon, traffic.k, traffic.payload, self.prog_start, self.prog_len,
                            self.ops, self.snap, cts, fdbs, peer, latency, up, ip_ids, flows, cap, counts)
            if taps is not None:
                taps.count, taps._used = int(counts[rk.N_REC]), int(counts[rk.N_BYTES])
            sent = out.sent if sent is None else sent + out.sent
            lat = out.latency if lat is None else np.where(out.sent > 0, out.latency, lat)
            last = max(last, out.last)
            if not counts[rk.FULL]:
                break
            counts[rk.FULL] = 0
            s, t = out.step, out.time
        for ns, nxt in zip(self._enc_objs, ip_ids.tolist()):
            ns._ip_id = nxt
        eng.pool._next_id = int(counts[rk.NEXT_ID])
        self.replayed += int(sent.sum())
        return rk.Result(out.step, out.time, sent, lat, last)

    def _capture_need(self, traffic, f, s) -> int:
        """Records the items' remaining packets would capture (at most: each
        as many as its flow's larger program)."""
        caps = np.r_[0, np.cumsum(self.ops[:self._n_ops, 0] == OP_CAP)]
        keys = np.stack([2 * f, 2 * f + 1])
        length = self.prog_len[keys]
        start = np.where(length > 0, self.prog_start[keys], 0)
        records = (caps[start + length] - caps[start]).max(axis=0)
        return int((records * np.maximum(traffic.steps - s, 0)).sum())


_NO_RECORDS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64),
               np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))


def _be(buf, at, n: int) -> np.ndarray:
    """The big-endian n-byte numbers at offsets `at` of buf (int64)."""
    out = np.zeros(len(at), np.int64)
    for k in range(n):
        out = out << 8 | buf[at + k]
    return out


def _path_keys(frames, at, length, inner, port, note, client):
    """Frames told apart by what is not per flow or per packet: each frame's
    bytes with the fields kernels.frametpl fills (IP ids, ports, sequence and
    acknowledgement numbers, the payload tag, the outer UDP source port) and
    the checksums zeroed, with its capture port, note and sender. Returns the
    distinct keys (bytes), the first frame of each, and each frame's key number."""
    n = len(at)
    inverse = np.zeros(n, np.int64)
    keys, first = [], []
    for size, off in sorted(set(zip(length.tolist(), inner.tolist()))):
        sel = np.nonzero((length == size) & (inner == off))[0]
        rows = np.zeros((len(sel), -(-(size + 9) // 8) * 8), np.uint8)
        rows[:, :size] = frames[at[sel, None] + np.arange(size)]
        blank = [off + 4, off + 5, off + 10, off + 11, *range(off + 20, off + 32), off + 36, off + 37]
        if size >= off + 48:
            blank += range(off + 40, off + 48)
        if off > 14:
            blank += [18, 19, 24, 25, 34, 35]
        rows[:, blank] = 0
        rows[:, size:size + 4] = port[sel].astype(np.int32).view(np.uint8).reshape(-1, 4)
        rows[:, size + 4:size + 8] = note[sel].astype(np.int32).view(np.uint8).reshape(-1, 4)
        rows[:, size + 8] = client[sel]
        one, inv = _unique_rows(rows)
        inverse[sel] = len(keys) + inv.reshape(-1)
        keys += [bytes([off]) + rows[k].tobytes() for k in one.tolist()]
        first += sel[one].tolist()
    return keys, np.array(first, np.int64), inverse


def _unique_rows(rows):
    """np.unique(rows, axis=0)'s index and inverse, through a 64-bit hash of
    each row (checked: rows that share a hash must be equal)."""
    words = rows.view(np.uint64)
    h = np.zeros(len(rows), np.uint64)
    for k in range(words.shape[1]):
        h = (h ^ (h >> np.uint64(29)) ^ words[:, k]) * np.uint64(0xBF58476D1CE4E5B9)
    _, one, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if not (words == words[one[inv]]).all():   # a collision: sort the rows themselves
        _, one, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
    return one, inv


def _number(numbers: dict, devices: list, device) -> int:
    k = numbers.get(device.id)
    if k is None:
        k = numbers[device.id] = len(devices)
        devices.append(device)
    return k


def _words(conns) -> np.ndarray:
    """Conntrack records as rows of uint64 words: gathers and copies of them
    go at memory speed (a structured dtype copies field by field)."""
    return conns.view(np.uint64).reshape(len(conns), conns.dtype.itemsize // 8)


def conn_records(conns, index) -> np.ndarray:
    """conns[index] (conntrack records), gathered as words."""
    return _words(conns)[index].reshape(-1).view(ct.CONN_DTYPE)


def fingerprint(recs) -> np.ndarray:
    """A 64-bit hash of conntrack records' zone, protocol and original tuple
    (int64): a learner's connection, told from another that took its slot
    (the reply tuple is not in it: a SYN's NAT binding changes it after the
    conntrack hook logged the entry)."""
    u = np.uint64
    h = recs["orig_src"].astype(u) << u(32) | recs["orig_dst"].astype(u)
    for word in (recs["orig_sport"].astype(u) << u(16) | recs["orig_dport"].astype(u),
                 recs["proto"].astype(u) << u(16) | recs["zone"].astype(u)):
        h = (h ^ (h >> u(29)) ^ word) * u(0xBF58476D1CE4E5B9)
    return (h ^ (h >> u(32))).view(np.int64)


__all__ = ["FlowCache", "OP_FAIL", "conn_records", "fingerprint"]
