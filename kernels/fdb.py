"""The forwarding database (FDB) of an emulated Linux bridge, and the bridge's
per-batch forwarding decision (net/bridge: br_fdb.c, br_input.c, br_forward.c).

Table. Open addressing with linear probing over 2**k slots, at most half full
(k is chosen for `capacity` entries when the table is made). A slot is one
32-byte `ENTRY_DTYPE` record (MAC, port, last-seen time, flags), two per cache
line, so a probe that hits reads one line. MACs are 48-bit ints, first byte
most significant (00:11:22:33:44:55 is 0x001122334455); an all-ones word
marks an empty slot. The home slot is `mix64(mac ^ salt)` masked, with a salt
drawn from the table's seed (Linux salts its jhash the same way). Deletion is
backward-shift (no tombstones), as in kernels.conntrack. The table's
scalars (clock, ageing time, capacity, counters) sit in one `STATE_DTYPE`
record.

Entries are of two kinds:
- learned (dynamic): MAC -> the port a frame from it last came in on, with
  `updated`, the time it was last seen (br_fdb_update).
- local (permanent): the bridge's own MAC and its ports' MACs (br_fdb_add_local,
  flags BR_FDB_LOCAL | BR_FDB_STATIC): frames to them are for the bridge host
  (br_pass_frame_up); they never age and learning never overwrites them (Linux
  warns "received packet on X with own address as source address" instead;
  counted in `own_address`). `port` records whose MAC it is (-1: the bridge
  device's own).

Time is int64 nanoseconds on the caller's virtual clock; it never goes back:
every call taking `now` requires it to be >= the latest time the table has
seen (its clock), and times within a batch to be non-decreasing.

Ageing: a learned entry has expired once `updated + ageing_time <= now`
(has_expired). An expired entry is treated as gone everywhere, exactly as if
Linux's GC (br_fdb_cleanup) had deleted it on time: lookups miss it, learning
its MAC again creates it afresh. It holds its slot until a sweep (`expire`,
or a full table, below) or its re-learning reclaims it. ageing_time 0 turns
learning off, as in Linux ("some users want to always flood").

Full table. Linux has no limit by default; kernels >= 6.8 have `max_learned`,
which refuses new learned entries once reached. Here `capacity` bounds all
entries, local ones included: learning a new MAC into a full table first
reclaims expired entries (a sweep, skipped while no entry can have expired
yet), then, if still full, is refused and counted in `refused` -- the frame is
still forwarded, only its source is not learned. Give local entries room in
`capacity`; `add_permanent` into a full table raises.

Forwarding (`forward`), per frame in batch order, so a frame sees what earlier
frames of the batch taught the table (br_handle_frame, br_handle_frame_finish):

1. ingress port down (or not a port): DROP, LINK_DOWN; nothing is learned.
2. source MAC multicast/broadcast or all zeros: DROP, INVALID_SOURCE_DROP
   (br_handle_frame: !is_valid_ether_addr(h_source); Linux's reason is
   SKB_DROP_REASON_MAC_INVALID_SOURCE); nothing is learned.
3. learn source -> ingress port at the frame's time.
4. destination with the I/G bit set (multicast, broadcast): FLOOD | LOCAL --
   flooded and also passed up to the bridge host (local_rcv; no multicast
   snooping state is modelled, so multicast floods like broadcast).
5. destination a live local entry: LOCAL.
6. destination a live learned entry on port q < len(port_up): FORWARD to q
   when should_deliver(q) holds; else DROP: BRIDGE_NO_PORT when q is the
   ingress port without hairpin mode, LINK_DOWN when q is down. An entry whose
   port is not below len(port_up) is for a port that no longer exists (Linux
   deletes a removed port's entries): it counts as unknown.
7. unknown unicast: FLOOD (not passed up to the host).

A flood goes to every port p with `should_deliver(p, ingress)`: p up, and p
not the ingress port unless p has hairpin mode on. That is br_flood ->
maybe_deliver -> should_deliver, whose test `(p->flags & BR_HAIRPIN_MODE) ||
skb->dev != p->dev` applies to floods too: with hairpin on, a broadcast comes
back out of the port it came in on (why IPv6 DAD trips over hairpin ports).
`flood_ports` lists them; when there are none, a flood becomes LOCAL alone
(step 4) or DROP BRIDGE_NO_PORT (step 7), as br_flood frees the frame.

Actions are bits: FORWARD, FLOOD, LOCAL (DROP is 0, with a `drop` code).

Not modelled: VLANs, STP port states other than up/down (a port in LEARNING
state learns but does not forward), link-local 01:80:C2:00:00:0X groups,
per-port learning/flood flags (on by default), bridge promiscuity, static
non-local entries, sticky and externally learned entries. When a port goes
down Linux flushes its learned entries (br_stp_disable_port ->
br_fdb_delete_by_port); the caller does that with `flush_port`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kernels import _check, drop
from kernels._jit import AHEAD, jit, prefetch
from kernels.hashing import mix64

# Actions (bits of the `action` column); 0 is DROP.
DROP = 0
FORWARD = 1  # to out_port
FLOOD = 2    # to every port of flood_ports(ingress, ...); out_port is -1
LOCAL = 4    # up to the bridge host (br_pass_frame_up)

# lookup() results other than a port number.
NO_PORT = -1    # unknown or expired
HOST_PORT = -2  # a local entry: the bridge host

# A frame whose source MAC is multicast or zero (Linux: MAC_INVALID_SOURCE).
INVALID_SOURCE_DROP = drop.MAC_INVALID_SOURCE

MAX_PORTS = 1024              # BR_MAX_PORTS (1 << BR_PORT_BITS)
MAX_CAPACITY = 1 << 24
MAX_TIME = (1 << 62) - 1      # times and ageing_time: their sum fits int64
DEFAULT_AGEING_TIME = 300 * 10**9  # BR_DEFAULT_AGEING_TIME, 300 s
MAX_MAC = (1 << 48) - 1
NO_MAC = (1 << 64) - 1        # frame_macs() for frames too short to hold one
ETH_HLEN = 14

FLAG_LOCAL = 1  # BR_FDB_LOCAL (implies BR_FDB_STATIC here: never ages)

ENTRY_DTYPE = np.dtype({
    "names": ["mac", "updated", "port", "flags"],
    "formats": ["u8", "i8", "i4", "u4"],
    "offsets": [0, 8, 16, 20],
    "itemsize": 32,  # two slots per cache line, never straddling one
    "aligned": True,
})

# Counters, read with stats().
STAT_NAMES = ("count",        # entries held
              "learned",      # entries created by learning
              "moved",        # a learned MAC seen on another port
              "refused",      # a new MAC not learned: table full
              "own_address",  # a frame from a MAC with a local entry
              "expired",      # learned entries aged out and reclaimed
              "deleted")      # removed by delete / flush_port

# The table's scalars, one record: kernels pass records (pointers) to their
# helpers, where an array would cost reference counting on every call.
STATE_DTYPE = np.dtype([
    ("now", "i8"),          # the latest time the table has seen
    ("sweep_after", "i8"),  # no learned entry can have expired before this time
    ("ageing", "i8"),       # ageing_time
    ("capacity", "i8"),
    *((name, "i8") for name in STAT_NAMES),
])

_EMPTY = np.uint64(NO_MAC)
_GROUP_BIT = np.uint64(1 << 40)  # I/G bit: least significant bit of the first byte
_SALT_KEY = np.uint64(0x9E3779B97F4A7C15)


class Fdb(NamedTuple):
    """A bridge's forwarding database: see the module docstring."""
    entries: np.ndarray  # ENTRY_DTYPE[2**k]
    state: np.ndarray    # STATE_DTYPE[1]
    salt: np.uint64


class Entries(NamedTuple):
    """A dump of the table (`bridge fdb show`), sorted by MAC."""
    mac: np.ndarray      # uint64
    port: np.ndarray     # int32
    updated: np.ndarray  # int64
    local: np.ndarray    # bool


class Decision(NamedTuple):
    """What the bridge does with each frame of a batch."""
    out_port: np.ndarray  # int32: the port for FORWARD, else -1
    action: np.ndarray    # uint8: FORWARD, FLOOD, LOCAL bits; 0 = dropped
    drop: np.ndarray      # uint8: kernels.drop code, 0 unless dropped


class FrameMacs(NamedTuple):
    dst: np.ndarray  # uint64, NO_MAC for frames shorter than ETH_HLEN
    src: np.ndarray  # uint64, same


def slots_for(capacity: int) -> int:
    """Table size for a capacity: the power of two keeping it at most half full."""
    return 1 << (2 * capacity - 1).bit_length()


def make_fdb(capacity: int, ageing_time_ns: int = DEFAULT_AGEING_TIME, seed: int = 0) -> Fdb:
    """An empty FDB for at most `capacity` entries (local ones included),
    whose learned entries expire after `ageing_time_ns` (0: never learn)."""
    capacity = _check.integer(capacity, "capacity", 1, MAX_CAPACITY)
    ageing = _check.integer(ageing_time_ns, "ageing_time_ns", 0, MAX_TIME)
    seed = _check.integer(seed, "seed", 0, (1 << 64) - 1)
    entries = _aligned_empty(slots_for(capacity))
    entries["mac"] = _EMPTY
    state = np.zeros(1, STATE_DTYPE)
    state["ageing"] = ageing
    state["capacity"] = capacity
    return Fdb(entries, state, np.uint64(mix64(np.uint64(seed) ^ _SALT_KEY)))


def _aligned_empty(n: int, align: int = 64) -> np.ndarray:
    raw = np.zeros(n * ENTRY_DTYPE.itemsize + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n * ENTRY_DTYPE.itemsize].view(ENTRY_DTYPE)


def count(fdb: Fdb) -> int:
    """Entries held, expired ones not yet reclaimed included."""
    return int(fdb.state[0]["count"])


def stats(fdb: Fdb) -> dict[str, int]:
    """The table's counters by name (see STAT_NAMES)."""
    return {name: int(fdb.state[0][name]) for name in STAT_NAMES}


def ageing_time(fdb: Fdb) -> int:
    return int(fdb.state[0]["ageing"])


def current_time(fdb: Fdb) -> int:
    """The latest time the table has seen (its clock)."""
    return int(fdb.state[0]["now"])


# --- public API -----------------------------------------------------------------

def add_permanent(fdb: Fdb, mac: int, port: int) -> None:
    """Add a local entry: `mac` is the bridge's own (port -1) or port `port`'s.
    As fdb_add_local: an existing local entry for the MAC is kept (the first
    port wins), a learned one is replaced. Raises ValueError for a multicast or
    zero MAC (Linux: EINVAL) or a full table."""
    mac = _check.integer(mac, "mac", 0, MAX_MAC)
    port = _check.integer(port, "port", -1, MAX_PORTS - 1)
    if not _valid_mac(np.uint64(mac)):
        raise ValueError(f"mac: {mac:#014x} is multicast or zero; a local entry needs a unicast MAC")
    if not _add_local(fdb.entries, fdb.salt, fdb.state, np.uint64(mac), port):
        raise ValueError(f"fdb full: {int(fdb.state[0]['capacity'])} entries, none expired")


def learn(fdb: Fdb, macs, ports, now) -> None:
    """Learn source MACs in order: macs[i] was seen on ports[i] at now[i] (or at
    the scalar `now`), as br_fdb_update. Multicast and zero MACs are skipped,
    local entries kept (counted in own_address), a moved MAC takes its new
    port, a new one is refused when the table is full (counted in refused)."""
    macs = _mac_array(macs, "macs")
    ports = _check.array(ports, "ports", np.int32)
    n = _check.same_length(macs=macs, ports=ports)
    _check.in_range(ports, "ports", 0, MAX_PORTS - 1)
    times = _times(fdb, now, n)
    _learn(fdb.entries, fdb.salt, fdb.state, macs, ports, times)


def lookup(fdb: Fdb, macs, now: int) -> np.ndarray:
    """int32 per MAC: its port, HOST_PORT for a local entry, NO_PORT when
    unknown or expired at `now`. Changes nothing."""
    macs = _mac_array(macs, "macs")
    when = _time(fdb, now)
    out = np.empty(len(macs), np.int32)
    _lookup(fdb.entries, fdb.salt, fdb.state, macs, when, out)
    return out


def forward(fdb: Fdb, eth_dst, eth_src, ingress, now, port_up, hairpin) -> Decision:
    """Learn and decide for a batch of frames, in order (module docstring).

    eth_dst, eth_src: uint64[n] MACs; ingress: int32[n] port each frame came
    in on, in [0, P); now: int64[n] non-decreasing times, or one int;
    port_up, hairpin: bool[P] per-port state and hairpin mode."""
    dst = _mac_array(eth_dst, "eth_dst")
    src = _mac_array(eth_src, "eth_src")
    ingress = _check.array(ingress, "ingress", np.int32)
    n = _check.same_length(eth_dst=dst, eth_src=src, ingress=ingress)
    port_up, hairpin = _port_arrays(port_up, hairpin)
    _check.in_range(ingress, "ingress", 0, len(port_up) - 1)
    times = _times(fdb, now, n)
    out_port = np.empty(n, np.int32)
    action = np.empty(n, np.uint8)
    reason = np.empty(n, np.uint8)
    _forward(fdb.entries, fdb.salt, fdb.state, dst, src, ingress, times, port_up, hairpin,
             out_port, action, reason)
    return Decision(out_port, action, reason)


def flood_ports(ingress: int, port_up, hairpin) -> np.ndarray:
    """The ports (int32, ascending) a frame that came in on `ingress` floods to."""
    port_up, hairpin = _port_arrays(port_up, hairpin)
    ingress = _check.integer(ingress, "ingress", 0, len(port_up) - 1)
    return _flood_ports(ingress, port_up, hairpin)


def expire(fdb: Fdb, now: int) -> int:
    """Remove every learned entry expired at `now` (br_fdb_cleanup); returns
    how many."""
    when = _time(fdb, now)
    return int(_expire(fdb.entries, fdb.salt, fdb.state, when))


def delete(fdb: Fdb, macs) -> int:
    """Remove the entries of these MACs, local ones too (`bridge fdb del`);
    absent MACs are skipped. Returns how many were removed."""
    macs = _mac_array(macs, "macs")
    return int(_delete(fdb.entries, fdb.salt, fdb.state, macs))


def flush_port(fdb: Fdb, port: int) -> int:
    """Remove the learned entries on `port`, keeping local ones (what Linux does
    when a port goes down: br_fdb_delete_by_port(br, p, 0, 0)). Returns how many."""
    port = _check.integer(port, "port", 0, MAX_PORTS - 1)
    return int(_flush_port(fdb.entries, fdb.salt, fdb.state, port))


def entries(fdb: Fdb) -> Entries:
    """Every entry held (expired ones not yet reclaimed included), by MAC."""
    held = fdb.entries[fdb.entries["mac"] != _EMPTY]
    held = held[np.argsort(held["mac"], kind="stable")]
    return Entries(held["mac"].copy(), held["port"].copy(), held["updated"].copy(),
                   (held["flags"] & FLAG_LOCAL) != 0)


def frame_macs(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> FrameMacs:
    """Destination and source MACs of frames buf[starts[k] : starts[k] + lengths[k]]
    (uint8 buf, int64 starts and lengths, every frame inside buf). Frames
    shorter than an Ethernet header (14 bytes) get NO_MAC, which `forward`
    rejects: drop them first (kernels.parse marks them TRUNC_ETH)."""
    buf, starts, lengths, n = _check.frames(buf, starts, lengths)
    dst = np.empty(n, np.uint64)
    src = np.empty(n, np.uint64)
    _frame_macs(buf, starts, lengths, dst, src)
    return FrameMacs(dst, src)


# --- validation helpers -----------------------------------------------------------

def _mac_array(x, name: str) -> np.ndarray:
    x = _check.array(x, name, np.uint64)
    _check.in_range(x, name, 0, MAX_MAC)
    return x


def _port_arrays(port_up, hairpin) -> tuple[np.ndarray, np.ndarray]:
    port_up = _check.array(port_up, "port_up", np.bool_)
    hairpin = _check.array(hairpin, "hairpin", np.bool_)
    ports = _check.same_length(port_up=port_up, hairpin=hairpin)
    if not 1 <= ports <= MAX_PORTS:
        raise ValueError(f"port_up: a bridge has 1 to {MAX_PORTS} ports, got {ports}")
    return port_up, hairpin


def _time(fdb: Fdb, now) -> int:
    when = _check.integer(now, "now", 0, MAX_TIME)
    if when < current_time(fdb):
        raise ValueError(f"now: {when} is before the fdb's clock ({current_time(fdb)}); "
                         "time never goes back")
    return when


def _times(fdb: Fdb, now, n: int) -> np.ndarray:
    """Per-frame times: an int64 array of n, or a scalar for all of them."""
    if isinstance(now, np.ndarray):
        times = _check.array(now, "now", np.int64)
        _check.same_length(frames=np.empty(n), now=times)
        _check.in_range(times, "now", 0, MAX_TIME)
        if n and times[0] < current_time(fdb):
            raise ValueError(f"now: {int(times[0])} is before the fdb's clock "
                             f"({current_time(fdb)}); time never goes back")
        back = np.flatnonzero(times[1:] < times[:-1])
        if len(back):
            k = int(back[0]) + 1
            raise ValueError(f"now: must not decrease, now[{k}] = {int(times[k])} < "
                             f"now[{k - 1}] = {int(times[k - 1])}")
        return times
    return np.full(n, _time(fdb, now), np.int64)


# --- kernels: MACs and ports -------------------------------------------------------

@jit
def _valid_mac(mac):
    """is_valid_ether_addr: neither multicast (I/G bit) nor all zeros."""
    return mac != np.uint64(0) and (mac & _GROUP_BIT) == np.uint64(0)


@jit
def mac_at(buf, pos):
    """The 6-byte big-endian MAC at buf[pos] as a uint64, NO_MAC when it is
    not all inside buf. Callable from other kernels."""
    if pos < 0 or pos > len(buf) - 6:
        return _EMPTY
    mac = np.uint64(0)
    for k in range(6):
        mac = (mac << np.uint64(8)) | np.uint64(buf[pos + k])
    return mac


@jit
def _frame_macs(buf, starts, lengths, dst, src):
    for k in range(len(starts)):
        if k + AHEAD < len(starts):
            prefetch(buf, starts[k + AHEAD])
        if lengths[k] < ETH_HLEN:
            dst[k] = _EMPTY
            src[k] = _EMPTY
        else:
            dst[k] = mac_at(buf, starts[k])
            src[k] = mac_at(buf, starts[k] + 6)


@jit
def _delivers(port, ingress, port_is_up, port_hairpin):
    """should_deliver on scalars: the port is up, and another port than the
    ingress one unless it has hairpin mode on."""
    return port_is_up and (port != ingress or port_hairpin)


@jit
def should_deliver(port, ingress, port_up, hairpin):
    """br_forward.c should_deliver: may a frame that came in on `ingress` go out
    of `port` (which must exist)? Callable from other kernels."""
    if port < 0 or port >= len(port_up):
        return False
    return _delivers(port, ingress, port_up[port], hairpin[port])


@jit
def _flood_ports(ingress, port_up, hairpin):
    out = np.empty(len(port_up), np.int32)
    k = 0
    for p in range(len(port_up)):
        if _delivers(p, ingress, port_up[p], hairpin[p]):
            out[k] = p
            k += 1
    return out[:k]


# --- kernels: the table ------------------------------------------------------------

@jit
def _home(mac, salt, mask):
    return np.int64(mix64(mac ^ salt) & np.uint64(mask))


@jit
def _find(entries, salt, mac):
    """Slot holding `mac`, or -1. The table is never full, so an empty slot
    ends every probe; the bound only guards a corrupted table."""
    mask = len(entries) - 1
    i = _home(mac, salt, mask)
    for _ in range(len(entries)):
        held = entries[i].mac
        if held == mac:
            return i
        if held == _EMPTY:
            return -1
        i = (i + 1) & mask
    return -1


@jit
def _free_slot(entries, salt, mac):
    """The first empty slot of `mac`'s probe sequence (the MAC is absent and
    the table at most half full)."""
    mask = len(entries) - 1
    i = _home(mac, salt, mask)
    while entries[i].mac != _EMPTY:
        i = (i + 1) & mask
    return i


@jit
def _remove_at(entries, salt, hole):
    """Empty slot `hole`, shifting later entries of its cluster back so every
    probe still finds them: the entry at j may fill the hole when the hole
    lies between its home slot and j."""
    mask = len(entries) - 1
    j = hole
    while True:
        j = (j + 1) & mask
        mac = entries[j].mac
        if mac == _EMPTY:
            break
        home = _home(mac, salt, mask)
        if ((j - home) & mask) >= ((j - hole) & mask):
            entries[hole] = entries[j]
            hole = j
    entries[hole].mac = _EMPTY


@jit
def _expired(entry, now, ageing):
    return (entry.flags & FLAG_LOCAL) == 0 and entry.updated + ageing <= now


@jit
def _sweep(entries, salt, st, now):
    """Remove the learned entries expired at `now`; note when the next one can
    expire. After a removal slot i holds an entry shifted back from later in
    its cluster, so it is looked at again; shifts only move entries back
    towards i, so none is skipped (one that wrapped around from the start is
    merely looked at twice)."""
    next_expiry = now + st.ageing  # nothing learned from now on expires sooner
    removed = 0
    i = 0
    while i < len(entries):
        entry = entries[i]
        if entry.mac != _EMPTY and (entry.flags & FLAG_LOCAL) == 0:
            expiry = entry.updated + st.ageing
            if expiry <= now:
                _remove_at(entries, salt, i)
                removed += 1
                continue
            next_expiry = min(next_expiry, expiry)
        i += 1
    st.sweep_after = next_expiry
    st.count -= removed
    st.expired += removed
    return removed


@jit
def _expire(entries, salt, state, now):
    st = state[0]
    st.now = now
    return _sweep(entries, salt, st, now)


@jit
def _room(entries, salt, st, now):
    """Is there room for one more entry, once expired ones are reclaimed?"""
    if st.count < st.capacity:
        return True
    if now >= st.sweep_after:
        _sweep(entries, salt, st, now)
    return st.count < st.capacity


@jit
def _refresh(entry, st, port, now):
    """br_fdb_update on an existing entry."""
    if entry.flags & FLAG_LOCAL:
        st.own_address += 1  # Linux warns: "received packet on X with own address as source"
    elif entry.updated + st.ageing <= now:
        # Aged out: Linux's GC would have deleted it, so this is a new entry.
        st.expired += 1
        st.learned += 1
        entry.port = port
        entry.updated = now
    else:
        if entry.port != port:
            st.moved += 1
            entry.port = port
            entry.updated = now
        elif now > entry.updated:  # never back: a frame seen out of time order (emu.bulk's flow cache)
            entry.updated = now


@jit
def _learn_new(entries, salt, st, mac, port, now):
    """br_fdb_update creating an entry (fdb_create), if there is room."""
    if not _room(entries, salt, st, now):
        st.refused += 1
        return
    entry = entries[_free_slot(entries, salt, mac)]
    entry.mac = mac
    entry.updated = now
    entry.port = port
    entry.flags = 0
    st.count += 1
    st.learned += 1


# The per-frame loops (_learn, _forward) spell br_fdb_update out as
# `_find` then `_refresh` or `_learn_new`: helpers that take arrays are
# reference counted on every call unless LLVM inlines them, and a single
# helper doing all three is too big to be inlined. Only creating an entry,
# rare in steady state, pays for a call.

@jit
def _learn(entries, salt, state, macs, ports, times):
    st = state[0]
    for k in range(len(macs)):
        mac, port, now = macs[k], ports[k], times[k]
        st.now = now
        if st.ageing == 0 or not _valid_mac(mac):
            continue  # ageing_time 0: "some users want to always flood"
        i = _find(entries, salt, mac)
        if i >= 0:
            _refresh(entries[i], st, port, now)
        else:
            _learn_new(entries, salt, st, mac, port, now)


@jit
def _add_local(entries, salt, state, mac, port):
    st = state[0]
    i = _find(entries, salt, mac)
    if i < 0:
        if not _room(entries, salt, st, st.now):
            return False
        i = _free_slot(entries, salt, mac)
        st.count += 1
        entries[i].mac = mac
    elif entries[i].flags & FLAG_LOCAL:
        return True  # the first port with this MAC keeps it
    entry = entries[i]
    entry.port = port
    entry.updated = st.now
    entry.flags = FLAG_LOCAL
    return True


@jit
def _lookup(entries, salt, state, macs, now, out):
    ageing = state[0].ageing
    for k in range(len(macs)):
        i = _find(entries, salt, macs[k])
        if i < 0 or _expired(entries[i], now, ageing):
            out[k] = NO_PORT
        elif entries[i].flags & FLAG_LOCAL:
            out[k] = HOST_PORT
        else:
            out[k] = entries[i].port


@jit
def _delete(entries, salt, state, macs):
    st = state[0]
    removed = 0
    for k in range(len(macs)):
        i = _find(entries, salt, macs[k])
        if i >= 0:
            _remove_at(entries, salt, i)
            removed += 1
    st.count -= removed
    st.deleted += removed
    return removed


@jit
def _flush_port(entries, salt, state, port):
    """As _sweep, with "learned on `port`" for "expired"."""
    st = state[0]
    removed = 0
    i = 0
    while i < len(entries):
        entry = entries[i]
        if entry.mac != _EMPTY and (entry.flags & FLAG_LOCAL) == 0 and entry.port == port:
            _remove_at(entries, salt, i)
            removed += 1
            continue
        i += 1
    st.count -= removed
    st.deleted += removed
    return removed


# --- kernels: forwarding -----------------------------------------------------------

@jit
def _forward(entries, salt, state, dst, src, ingress, times, port_up, hairpin,
             out_port, action, reason):
    st = state[0]
    n_ports = len(port_up)
    ports_up = 0
    for p in range(n_ports):
        if port_up[p]:
            ports_up += 1
    for k in range(len(dst)):
        now = times[k]
        st.now = now
        p = ingress[k]
        out_port[k] = NO_PORT
        action[k] = DROP
        reason[k] = 0
        if p < 0 or p >= n_ports or not port_up[p]:
            reason[k] = drop.LINK_DOWN
            continue
        mac = src[k]
        if not _valid_mac(mac):
            reason[k] = INVALID_SOURCE_DROP
            continue
        if st.ageing > 0:  # learn (see _learn)
            i = _find(entries, salt, mac)
            if i >= 0:
                _refresh(entries[i], st, p, now)
            else:
                _learn_new(entries, salt, st, mac, p, now)
        # Ports a flood reaches: every port up but this one, which counts
        # again with hairpin on (should_deliver).
        floods = ports_up if hairpin[p] else ports_up - 1
        mac = dst[k]
        if mac & _GROUP_BIT:
            action[k] = FLOOD | LOCAL if floods > 0 else LOCAL
            continue
        i = _find(entries, salt, mac)
        if i >= 0 and not _expired(entries[i], now, st.ageing):
            if entries[i].flags & FLAG_LOCAL:
                action[k] = LOCAL
                continue
            q = entries[i].port
            if 0 <= q < n_ports:
                if _delivers(q, p, port_up[q], hairpin[q]):
                    action[k] = FORWARD
                    out_port[k] = q
                elif q == p:
                    reason[k] = drop.BRIDGE_NO_PORT  # back where it came from, no hairpin
                else:
                    reason[k] = drop.LINK_DOWN
                continue
        if floods > 0:
            action[k] = FLOOD
        else:
            reason[k] = drop.BRIDGE_NO_PORT
