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
every connection it stepped is still the same one: a path (the rows,
shared by every flow whose rows are the same: one per client, backend and
direction without capture) and the flow's references (its connections,
with their tuples, and its ports at each capture point). A flow costs its
references, 40 bytes each (4 a direction on a two-node VXLAN path), not a
copy of its path.

Everything else a hop does to an established packet (routes, neighbours,
the NAT of an existing binding, MACs, TTL, kube-proxy's no-op for the outer
VXLAN packets) depends only on tables the control plane changes, never on
the packet; so programs are dropped whenever anything else happens in the
engine (an event, a packet of the interactive engine, a hand-off from the
fast path): see `stale`. Flows are then learned again.

Replay. kernels.replay carries flows along their programs on the live
tables: conntrack state, timeouts and ASSURED, FDB refreshes, IP ids drawn,
links up, captured frames; a packet it cannot carry goes down the fast path.

SYN-ACKs. A connection's way back is the way back of any connection with
the same client path (client, backend, route): an uncaptured flow whose SYN
taught its client program takes the server program of such a flow for its
SYN-ACK (`adopt`), with its own references: the connections its SYN opened,
and the outer VXLAN flows its SYN-ACK opens, named by their tuples
(kernels.replay's NEW_CONN). Until a path has such a flow, one SYN-ACK on it
goes down the fast path to teach it (emu.bulk.traffic's scout).

SYNs. A connection's way there is the way there of any connection of the
same client to the same backend: once kube-proxy's pick for a SYN is known
(emu.bulk.traffic's `_syns` makes it ahead, where the pick needs no order),
an uncaptured flow's SYN takes the client program of such a flow
(`adopt_syns`), every connection it steps a NEW_CONN reference of its own:
that flow's tuples with its source port (the DNAT binding included), or
with its outer VXLAN flow's source port. The plan notes where the client's
SYNs meet kube-proxy (`hooks`: the proxier and the latency to it), for the
picks.

From one run to the next. A run that ends with nothing having happened in
the engine since its cache was last cleared hands the next run on that
engine its paths and plans (`legacy`, `inherit`; emu.bulk.traffic checks
kube-proxy's rules too): that run's SYNs and SYN-ACKs take them from its
first packets on.
"""
from __future__ import annotations

import numpy as np

from emu.bulk import variants
from kernels import distinct, hashing, parse, program
from kernels import replay as rk
from kernels.frametpl import FIELD_BYTES, TPL
from kernels.replay import OP_CAP, OP_CT, OP_DELIVER, OP_FDB_FWD, OP_FDB_LEARN, OPS, REFS

OP_FAIL = program.OP_FAIL   # learning only: a learner left the common case
MAX_ROWS = 48               # a learner's rows at most (a two-node path with capture takes ~30)
CAPTURE_RECORDS = 1 << 16   # room made in the taps before each replay call (more when it fills)
MAX_OPS = 1 << 20           # path rows (40 bytes each) the cache holds at most: 40 MiB
MAX_REFS = 8 << 20          # flows' references (40 bytes each) the cache holds at most: 320 MiB
MAX_LEARNERS = 1 << 16      # learners in flight at most (MAX_ROWS x 40 bytes each: 120 MiB)
COMPACT_AFTER = 1 << 18     # dead references before reclaiming them is worth a copy
COMPILE_CHUNK = 2048        # learners compiled at a time

FREE, LEARNING, DELIVERED, FAILED = program.FREE, program.LEARNING, program.DELIVERED, program.FAILED
# a logged row (one array each, [row, slot]): an operation's kind and arguments as
# kernels.replay has them (a, b, c; its d is made by compile), and for conntrack the
# fingerprint of the entry's tuples
ROW = ("kind", "a", "b", "c", "fp")
# the columns each kind of row uses (a row's others are left as they were: compile
# reads them as 0)
_USES = {OP_FAIL: (), OP_DELIVER: (), rk.OP_LINK: ("a",), rk.OP_ENCAP: ("a",), OP_CAP: ("a",),
         OP_CT: ("a", "b", "c", "fp"), OP_FDB_LEARN: ("a", "b", "c"), OP_FDB_FWD: ("a", "b", "c")}
_USED = np.array([[name in _USES.get(k, ()) for name in ROW[1:]] for k in range(8)], np.int64)


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
        # per (flow, direction): its path's rows in ops, its references in refs
        self.prog_start = np.zeros(2 * self.n, np.int64)
        self.prog_len = np.zeros(2 * self.n, np.int64)
        self.ref_start = np.zeros(2 * self.n, np.int64)
        # paths' rows (the first _n_ops in use; few, shared by the flows that take them:
        # grown as paths come) and the flows' references (the first _n_refs: room for
        # every flow's up front, untouched until written, so they seldom grow; read only
        # where written: empty, not zeroed, see _grow)
        self.ops = np.zeros((1024, OPS), np.int64)
        self.refs = np.empty((min(MAX_REFS, 2 * self.n * 5), REFS), np.int64)
        self._paths: dict[int, int] = {}          # a path's hash (kernels.program) -> its first row
        self._synack: dict[int, tuple | None] = {}  # a client path's first row -> its SYN-ACK plan (`adopt`)
        self._syn: dict[tuple, tuple] = {}          # (client, backend ip, port) -> its SYN plan (`adopt_syns`)
        self.hooks: dict[int, tuple] = {}           # client -> where kube-proxy decides its SYNs (`_syn_plan`)
        self._fresh: list = []                      # keys compiled since the last learn_plans
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
        self._n_ops = self._n_refs = 0
        self._dead = 0                               # references of flows forgotten
        self._paths.clear()
        self._synack.clear()
        self._syn.clear()
        self.hooks.clear()
        self.quiet_since = self.engine.events       # what the cache holds was learned since
        self._fresh = []
        self._state[:] = FREE
        self._free[:] = np.arange(len(self._key) - 1, -1, -1)
        self._n_free = len(self._key)
        self._ended = False                      # a learner finished since the last compile

    # -- learning (called by the generator and the fast path) --------------------------------
    def begin(self, batch, idx, keys) -> None:
        """Packets idx start learning (flow, direction) keys: as many as
        MAX_LEARNERS allows in flight, none while the programs fill MAX_REFS
        or MAX_OPS (those flows stay on the fast path)."""
        n = min(len(idx), MAX_LEARNERS - (len(self._key) - self._n_free))
        if n <= 0 or self._n_refs - self._dead >= MAX_REFS or self._n_ops >= MAX_OPS:
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
        # [row, slot]: the rows no learner reaches stay untouched memory. Empty, not zeroed:
        # a row is read below its learner's fill only, and only the columns its kind uses
        # (written by log); calloc would clear memory a previous run freed, rows never
        # touched included (a 7.68 MB column faulted in whole: 4,000 faults, ~10 ms)
        for name in ROW:
            col = np.empty((MAX_ROWS, size), np.int64)
            col[:, :old] = self._rows[name]
            self._rows[name] = col
        self._fill, self._key, self._state = (np.r_[a, np.zeros(size - old, a.dtype)]
                                              for a in (self._fill, self._key, self._state))
        free = np.empty(size, np.int64)
        free[:self._n_free] = self._free[:self._n_free]
        free[self._n_free:self._n_free + size - old] = np.arange(size - 1, old - 1, -1)
        self._free, self._n_free = free, self._n_free + size - old

    def log(self, batch, idx, kind: int, a=0, b=0, c=0, fp=0) -> None:
        """A row for each learner among packets idx (a, b, c, fp: scalars or per packet): kernels.program.log."""
        if program.log(batch.learn, np.asarray(idx, np.int64), *(self._rows[name] for name in ROW), self._fill,
                       self._state, kind, *(np.asarray(x).astype(np.int64, copy=False).reshape(-1)
                                            for x in (a, b, c, fp)), _USED):
            self._ended = True

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
        still the one they stepped. A learner's rows are split into its path
        (shared with every flow whose rows are the same: `_share`) and its
        references (its connections with their tuples, its ports where it is
        captured). Their slots (and the failed ones') are free again."""
        if not self._ended:
            return
        self._ended = False
        done = np.nonzero((self._state == DELIVERED) | (self._state == FAILED))[0]
        good = done[self._state[done] == DELIVERED]
        self._state[done] = FREE
        self._free[self._n_free:self._n_free + len(done)] = done
        self._n_free += len(done)
        # the last learner of each key (a flow with a short round trip may finish several)
        keys = self._key[good]
        order = np.argsort(keys, kind="stable")
        ko = keys[order]
        last = np.ones(len(good), bool)
        last[order[:-1][ko[:-1] == ko[1:]]] = False
        good = good[last]
        # a chunk at a time: its temporary arrays are small enough for the allocator to
        # reuse their memory (fresh pages cost 2-10 us each to fault in on the 2-core VM)
        for lo in range(0, len(good), COMPILE_CHUNK):
            self._compile(good[lo:lo + COMPILE_CHUNK])

    def _compile(self, good) -> None:
        """Programs of the learners `good` (slots) whose connections are still theirs (kernels.program)."""
        cts = tuple(ns.conntrack.table.conns for ns in self._ct_objs)
        keep, n_ref, kind, a, b, c, refs = program.gather(*(self._rows[name] for name in ROW), good,
                                                          self._fill[good], _USED, cts)
        if not len(keep):
            return
        fill, keys = self._fill[good[keep]], self._key[good[keep]]
        cap = np.nonzero(kind == OP_CAP)[0]
        if len(cap):   # a capture point's references: the template's ports (and its number in the row)
            at = np.searchsorted(np.nonzero((kind == OP_CT) | (kind == OP_CAP))[0], cap)
            client = np.repeat(keys, fill)[cap] % 2 == 0
            a[cap], refs[at, 0], refs[at, 1] = self._templates(a[cap], client)
        self.ref_start[keys] = self._append_refs(refs) + np.cumsum(n_ref) - n_ref
        self._fresh.append(keys)
        self.prog_start[keys] = self._share((kind, a, b, c), fill)
        self.prog_len[keys] = fill

    def _share(self, cols, fill) -> np.ndarray:
        """Each learner's path (its `fill` rows, learner after learner, in
        the columns kind, a, b, c): where it starts in ops, the same rows
        another learner or flow had, or added. Paths are told apart by a
        64-bit hash of their rows (the slot hints are the kernel's), then
        compared: a learner whose rows differ from its hash's path gets its own."""
        first = np.cumsum(fill) - fill
        uniq, one, inv = np.unique(program.path_hashes(*cols, fill), return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        starts = np.array([self._paths.get(x, -1) for x in uniq.tolist()], np.int64)
        new = np.nonzero(starts < 0)[0]
        if len(new):
            lens = fill[one[new]]
            starts[new] = self._append_path(cols, _spans(first[one[new]], lens)) + np.cumsum(lens) - lens
            self._paths.update(zip(uniq[new].tolist(), starts[new].tolist()))
        start = starts[inv]
        # each learner's rows are its path's (a hash shared by different rows gets them their own)
        for k in np.nonzero(program.differ(self.ops, self._n_ops, start, *cols, fill))[0].tolist():
            start[k] = self._append_path(cols, np.arange(first[k], first[k] + fill[k]))
        return start

    def _append_path(self, cols, at) -> int:
        """The rows `at` of the columns (kind, a, b, c) after the paths, with no
        slot hints yet (-1 for FDB rows): where they start."""
        base = self._room("ops", self._n_ops, len(at))
        rows = self.ops[base:base + len(at)]
        for j in range(4):
            rows[:, j] = cols[j][at]
        rows[:, 4] = np.where((rows[:, 0] == OP_FDB_LEARN) | (rows[:, 0] == OP_FDB_FWD), -1, 0)
        self._n_ops += len(at)
        return base

    def _room(self, name: str, used: int, n: int) -> int:
        """Room for n more rows in self.<name> (it doubles as they come): where they go."""
        arr = getattr(self, name)
        if used + n > len(arr):
            grown = np.zeros((max(2 * len(arr), used + n, 1024), arr.shape[1]), arr.dtype)
            grown[:used] = arr[:used]
            setattr(self, name, grown)
        return used

    def _append_ops(self, ops) -> int:
        """Path rows after the others: where they start."""
        base = self._room("ops", self._n_ops, len(ops))
        self.ops[base:base + len(ops)] = ops
        self._n_ops += len(ops)
        return base

    def _append_refs(self, refs) -> int:
        """References after the others: where they start."""
        base = self._room("refs", self._n_refs, len(refs))
        self.refs[base:base + len(refs)] = refs
        self._n_refs += len(refs)
        return base

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

    def _n_path_refs(self, keys) -> np.ndarray:
        """How many references the keys' paths take (their OP_CT and OP_CAP rows)."""
        isref = (self.ops[:self._n_ops, 0] == OP_CT) | (self.ops[:self._n_ops, 0] == OP_CAP)
        upto = np.r_[0, np.cumsum(isref)]
        length = self.prog_len[keys]
        start = np.where(length > 0, self.prog_start[keys], 0)
        return upto[start + length] - upto[start]

    def forget(self, flows) -> None:
        """Flows that ended: their programs go (their references are
        reclaimed once most of them are dead)."""
        keys = np.concatenate([2 * np.asarray(flows, np.int64), 2 * np.asarray(flows, np.int64) + 1])
        self._dead += int(self._n_path_refs(keys).sum())
        self.prog_len[keys] = 0
        if self._dead > COMPACT_AFTER and 2 * self._dead > self._n_refs:
            self._compact()

    def _compact(self) -> None:
        """The live programs' references, and the paths they take, packed at
        the start again."""
        live = np.nonzero(self.prog_len > 0)[0]
        n_refs = self._n_path_refs(live)
        refs = self.refs[_spans(self.ref_start[live], n_refs)]
        old, one, inv = np.unique(self.prog_start[live], return_index=True, return_inverse=True)
        lens = self.prog_len[live][one]
        ops = self.ops[_spans(old, lens)]
        moved = dict(zip(old.tolist(), (np.cumsum(lens) - lens).tolist()))
        self._paths = {h: moved[at] for h, at in self._paths.items() if at in moved}
        self._synack.clear()
        self._syn.clear()
        self._n_ops = self._n_refs = self._dead = 0
        self.prog_start[live] = self._append_ops(ops) + (np.cumsum(lens) - lens)[inv.reshape(-1)]
        self.ref_start[live] = self._append_refs(refs) + np.cumsum(n_refs) - n_refs

    # -- SYN-ACKs along another flow's path ---------------------------------------------------
    def adopt(self, traffic, f):
        """Flows f, their SYN-ACK due (uncaptured, the client's program
        compiled from the SYN, the server's not yet): each gets the server
        program of a flow that took the same client path (the same client,
        backend and route: the same way back), with references of its own:
        its connections the SYN opened where that flow's reply stepped the
        flow's own, and NEW_CONN references for the outer VXLAN flows the
        SYN-ACK opens (kernels.replay), their source port what
        udp_flow_src_port makes of the SYN-ACK's flow hash. Returns (adopted,
        client path per flow: -1 without a program). `unadopt` takes back
        the programs of flows the kernel then left at their SYN-ACK."""
        f = np.asarray(f, np.int64)
        path = np.where(self.prog_len[2 * f] > 0, self.prog_start[2 * f], -1)
        path[(self.prog_len[2 * f + 1] > 0) | traffic.cap[f]] = -1
        adopted = np.zeros(len(f), bool)
        for p in np.unique(path[path >= 0]).tolist():
            plan = self._synack.get(p)
            if plan is None:
                continue
            room = (MAX_REFS - (self._n_refs - self._dead)) // max(len(plan[2]), 1)   # within MAX_REFS, as learning
            mine = np.nonzero(path == p)[0][:max(room, 0)]
            adopted[mine] = True
            self._adopt(traffic, f[mine], *plan)
        return adopted, path

    def unadopt(self, f, server: bool = True) -> None:
        """Take back flows' adopted programs: their SYN-ACK's (server), or their SYN's."""
        keys = 2 * np.asarray(f, np.int64) + int(server)
        self._dead += int(self._n_path_refs(keys).sum())
        self.prog_len[keys] = 0

    def _synack_plan(self, traffic, g: int):
        """A SYN-ACK plan from flow g, that has both programs: (the server
        path's first row and length, per server reference the client
        reference it copies or -1 for an outer flow, the outer flows' tuple
        words without their port); None if its server references are not of
        those two kinds."""
        start, length = int(self.prog_start[2 * g + 1]), int(self.prog_len[2 * g + 1])
        rows = self.ops[start:start + length]
        path = self.prog_start[2 * g]
        client = self.ops[path:path + self.prog_len[2 * g]]
        if (rows[:, 0] == OP_CAP).any() or (client[:, 0] == OP_CAP).any():
            return None
        mine = self.refs[self.ref_start[2 * g]:self.ref_start[2 * g] + int((client[:, 0] == OP_CT).sum())]
        theirs = self.refs[self.ref_start[2 * g + 1]:self.ref_start[2 * g + 1] + int((rows[:, 0] == OP_CT).sum())]
        c_table, s_rows = client[client[:, 0] == OP_CT, 1], rows[rows[:, 0] == OP_CT]
        port = _synack_ports(traffic, np.array([g]), self.engine.seed)[0]
        copy = np.full(len(theirs), -1, np.int64)
        words = theirs[:, 1:].copy()
        for j in range(len(theirs)):
            same = np.nonzero((c_table == s_rows[j, 1]) & (mine[:, 0] == theirs[j, 0]))[0]
            if len(same):
                copy[j] = same[0]
                continue
            w = words[j].view(np.uint64)   # tuple_words: protocol, original sport, reply dport
            if not (s_rows[j, 3] == 0 and ((w[0] >> 16) & 0xFF) == 17 and (w[2] & 0xFFFF) == port
                    and (w[3] >> 48) == port):
                return None
        return start, length, copy, words

    def _adopt(self, traffic, f, start, length, copy, words) -> None:
        n = len(copy)
        if not len(f):
            return
        refs = np.empty((len(f), n, REFS), np.int64)
        outer = copy < 0
        refs[:, ~outer] = self.refs[self.ref_start[2 * f][:, None] + copy[~outer][None, :]]
        if outer.any():
            ports = _synack_ports(traffic, f, self.engine.seed)
            refs[:, outer, 0] = rk.NEW_CONN
            refs[:, outer, 1:] = rk.tuple_words_with_port(words[outer], ports[:, None])
        base = self._append_refs(refs.reshape(-1, REFS))
        keys = 2 * f + 1
        self.ref_start[keys] = base + n * np.arange(len(f))
        self.prog_start[keys] = start
        self.prog_len[keys] = length

    def learn_plans(self, traffic) -> None:
        """The SYN-ACK plans (`adopt`) of the client paths whose flows got
        both programs since the last call, and the SYN plans (`adopt_syns`)
        of the (client, backend) pairs whose flows got a client program:
        one per path or pair, from one of them (kept when it ends)."""
        if not self._fresh:
            return
        g = distinct.values(np.concatenate(self._fresh) // 2)
        self._fresh = []
        g = g[(self.prog_len[2 * g] > 0) & ~traffic.cap[g]]
        pair = (traffic.f_client[g].astype(np.int64) << 48) | (traffic.srv_ip[g].astype(np.int64) << 16) \
            | traffic.srv_port[g].astype(np.int64)
        pairs, first = np.unique(pair, return_index=True)
        for donor in g[first].tolist():
            key = (int(traffic.f_client[donor]), int(traffic.srv_ip[donor]), int(traffic.srv_port[donor]))
            if key not in self._syn:
                self._syn[key] = self._syn_plan(traffic, donor)
        g = g[self.prog_len[2 * g + 1] > 0]
        paths, first = np.unique(self.prog_start[2 * g], return_index=True)
        for p, donor in zip(paths.tolist(), g[first].tolist()):
            if p not in self._synack:
                self._synack[p] = self._synack_plan(traffic, donor)

    # -- SYNs along another flow's path -------------------------------------------------------
    def _syn_plan(self, traffic, g: int):
        """A SYN plan from flow g's client program (its backend's address in
        srv_ip, srv_port; no SNAT): (the path's first row and length, per
        reference 0 if its port is the flow's source port or 1 if it is the
        outer VXLAN flow's, the references' tuple words), or None when the
        path is not one a SYN of another flow can take so: a capture point,
        a connection of another shape, no DNAT by kube-proxy at a node's
        PREROUTING. Also notes where the client's SYNs meet kube-proxy
        (self.hooks[client]: the proxier and the latency from the client to it)."""
        start, length = int(self.prog_start[2 * g]), int(self.prog_len[2 * g])
        rows = self.ops[start:start + length]
        if (rows[:, 0] == OP_CAP).any() or traffic.srv_ns[g] < 0 or traffic.peer_ip[g] != traffic.f_ip[g] \
                or traffic.peer_port[g] != traffic.f_sport[g]:
            return None
        at = np.nonzero(rows[:, 0] == OP_CT)[0]
        words = self.refs[self.ref_start[2 * g]:self.ref_start[2 * g] + len(at), 1:].copy()
        sport = int(traffic.f_sport[g])
        outer = int(_vxlan_ports(traffic.f_ip[g:g + 1], traffic.vip, traffic.f_sport[g:g + 1], traffic.vport,
                                 self.engine.seed)[0])
        kind = np.zeros(len(at), np.int64)
        hook = None
        for j in range(len(at)):
            z, p, a, b, x, y, ra, rb, rx, ry = (int(v) for v in rk._words(*words[j]))
            if rows[at[j], 3] != 0:   # ORIGINAL rows only: the SYN opens each connection it steps
                return None
            if x == sport and ry == sport and a == rb == traffic.f_ip[g]:
                kind[j] = 0
            elif p == 17 and x == outer and ry == outer:
                kind[j] = 1
            else:
                return None
            if (ra, rx) != (b, y):   # DNAT: to this backend, by kube-proxy at this namespace
                ns = self._ct_objs[int(rows[at[j], 1])]
                if hook is not None or (b, y) != (traffic.vip, traffic.vport) \
                        or (ra, rx) != (traffic.srv_ip[g], traffic.srv_port[g]) \
                        or traffic.fast._kinds(ns, "PREROUTING") != ["conntrack", "proxier", "dnat"]:
                    return None
                _, latency, _, _ = self.engine._arrays()
                links = rows[:at[j]]
                hook = (ns.hooks["PREROUTING"][1].__self__,
                        int(latency[links[links[:, 0] == rk.OP_LINK, 1]].sum()))
        if hook is None:
            return None
        self.hooks[int(traffic.f_client[g])] = hook
        return start, length, kind, words, int(traffic.srv_ns[g])

    # -- from one run to the next -------------------------------------------------------------
    def legacy(self, clients) -> dict | None:
        """What the next run on this engine may start with (`inherit`): the
        paths, the numbering of the tables they name, the SYN and SYN-ACK
        plans and the hooks (by client namespace id: clients, this run's);
        None when something happened in the engine since the cache was last
        cleared (what it holds may be stale: the same rule as `stale`).
        Captured paths' templates are not kept: the next run's taps may differ."""
        if self.engine.events != self.quiet_since:
            return None
        return {"ops": self.ops, "n_ops": self._n_ops, "paths": dict(self._paths), "synack": dict(self._synack),
                "syn": {(clients[c], ip, port): plan for (c, ip, port), plan in self._syn.items()},
                "hooks": {clients[c]: hook for c, hook in self.hooks.items()},
                "numbers": (self._ct_ns, self._ct_objs, self._fdb_br, self._fdb_objs, self._enc_ns, self._enc_objs)}

    def inherit(self, legacy: dict, clients) -> None:
        """Start from an earlier run's `legacy` (clients: this run's client
        namespace ids, in order): its flows are gone, its paths and plans hold."""
        index = {nid: c for c, nid in enumerate(clients)}
        self.ops, self._n_ops = legacy["ops"], legacy["n_ops"]
        self._paths, self._synack = dict(legacy["paths"]), dict(legacy["synack"])
        self._syn = {(index[n], ip, port): plan for (n, ip, port), plan in legacy["syn"].items() if n in index}
        self.hooks = {index[n]: hook for n, hook in legacy["hooks"].items() if n in index}
        (self._ct_ns, self._ct_objs, self._fdb_br, self._fdb_objs, self._enc_ns,
         self._enc_objs) = legacy["numbers"]

    def adopt_syns(self, traffic, f, bip, bport) -> np.ndarray:
        """Flows f (uncaptured, no client program), their SYN due and
        kube-proxy's pick for it made (backend bip, bport): each whose
        (client, backend) has a SYN plan gets that path as its client
        program, with NEW_CONN references of its own (kernels.replay): the
        plan's tuples with its source port, or its outer VXLAN flow's
        (`_vxlan_ports` of its frame before DNAT: the hash the skb keeps).
        Returns which did
        and their backend's namespace (id); `unadopt` takes back the
        programs of those the kernel then left."""
        f = np.asarray(f, np.int64)
        adopted = np.zeros(len(f), bool)
        server = np.full(len(f), -1, np.int64)
        pairs, inverse = distinct.pairs(traffic.f_client[f].astype(np.uint64),
                                        (bip.astype(np.uint64) << np.uint64(16)) | bport.astype(np.uint64))
        for j, (client, backend) in enumerate(pairs.tolist()):
            plan = self._syn.get((client, backend >> 16, backend & 0xFFFF))
            if plan is None:
                continue
            start, length, kind, words, srv_ns = plan
            room = (MAX_REFS - (self._n_refs - self._dead)) // max(len(kind), 1)   # within MAX_REFS, as learning
            mine = np.nonzero(inverse == j)[0][:max(room, 0)]
            if not len(mine):
                continue
            adopted[mine] = True
            server[mine] = srv_ns
            g = f[mine]
            outer = _vxlan_ports(traffic.f_ip[g], traffic.vip, traffic.f_sport[g], traffic.vport, self.engine.seed)
            refs = np.empty((len(g), len(kind), REFS), np.int64)
            refs[:, :, 0] = rk.NEW_CONN
            refs[:, :, 1:] = rk.tuple_words_with_port(words, np.where(kind == 0, traffic.f_sport[g][:, None],
                                                                      outer[:, None]))
            base = self._append_refs(refs.reshape(-1, REFS))
            self.ref_start[2 * g] = base + len(kind) * np.arange(len(g))
            self.prog_start[2 * g] = start
            self.prog_len[2 * g] = length
        return adopted, server

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
        cts = tuple(ns.conntrack.table for ns in self._ct_objs)
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
                            self.ops, self.ref_start, self.refs, cts, fdbs, peer, latency, up, ip_ids, flows, cap,
                            counts)
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


def _synack_ports(traffic, f, seed) -> np.ndarray:
    """The VXLAN source port of each flow's SYN-ACK, made from the frame the server sends (emu.bulk.traffic)."""
    return _vxlan_ports(traffic.srv_ip[f], traffic.peer_ip[f], traffic.srv_port[f], traffic.peer_port[f], seed)


def _vxlan_ports(src, dst, sport, dport, seed) -> np.ndarray:
    """udp_flow_src_port of each TCP packet's flow hash (scalars broadcast):
    the source port its VXLAN encapsulation takes."""
    src, dst, sport, dport = np.broadcast_arrays(np.asarray(src, np.uint32), np.asarray(dst, np.uint32),
                                                 np.asarray(sport, np.uint16), np.asarray(dport, np.uint16))
    h = hashing.flow_hash(*(np.ascontiguousarray(x) for x in (src, dst, sport, dport)),
                          np.full(len(src), 6, np.uint8), seed)
    return hashing.udp_source_port(h, 0, 0).astype(np.int64)


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


def _spans(starts, lengths) -> np.ndarray:
    """The indices starts[k] .. starts[k] + lengths[k] - 1, span after span."""
    lengths = np.asarray(lengths, np.int64)
    first = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - first, lengths) + np.arange(int(lengths.sum()))


def _number(numbers: dict, devices: list, device) -> int:
    k = numbers.get(device.id)
    if k is None:
        k = numbers[device.id] = len(devices)
        devices.append(device)
    return k


__all__ = ["FlowCache", "OP_FAIL"]
