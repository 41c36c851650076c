"""TCP endpoints in a namespace, as Linux's stack behaves (RFC 9293 with
Linux's defaults), driven by the engine's virtual clock: no threads, only
callbacks and `engine.at` timers.

    tcp = Tcp.of(pod)                       # one per namespace
    tcp.listen(80, on_accept)               # on_accept(conn) once the handshake is done
    conn = tcp.connect("10.244.1.2", 80, on_connected, on_error)
    conn.on_data = lambda data: ...         # in-order bytes
    conn.on_closed = lambda: ...            # the peer's FIN (EOF)
    conn.send(b"..."); conn.close(); conn.abort()

`on_error(reason)` gets "refused" (ECONNREFUSED: a RST for our SYN, or ICMP
port unreachable), "unreachable" (ENETUNREACH/EHOSTUNREACH: no route, or an
ICMP error for the SYN), "timeout" (ETIMEDOUT: SYN or data retransmissions
exhausted) or "reset" (ECONNRESET/EPIPE: a RST on a synchronized connection);
`conn.error` holds the errno name. States carry Linux's names
(`conn.state`: SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT1, FIN_WAIT2,
CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT, CLOSE; listeners are LISTEN).

What follows Linux (sources: net/ipv4/tcp_output.c, tcp_input.c, tcp_ipv4.c,
tcp_timer.c, include/net/tcp.h, Documentation/networking/ip-sysctl.rst):
- ISN and TS offset from the engine's seeded rng (Linux: secure_tcp_seq and
  secure_tcp_ts_off, keyed hashes); connect() picks an ephemeral port from
  ip_local_port_range 32768-60999, even ports first (__inet_hash_connect,
  since Linux 4.6).
- SYN options in tcp_options_write order: MSS, SACK_PERM, TS, NOP, WS
  (40-byte header). MSS = egress MTU - 40 (ipv4_default_advmss); window
  scale 7 (ilog2(tcp_rmem[2] = 6 MiB) - 15); SYN window =
  rounddown(65536, advmss) (tcp_select_initial_window with tcp_rmem[1] =
  128 KiB halved by tcp_adv_win_scale=1): 64240 for MSS 1460, 64860 for
  1410. A SYN-ACK uses advmss - 12 when timestamps are on
  (tcp_openreq_init_rwin): 65160 / 64308. Options in a SYN-ACK mirror the
  peer's SYN. After the handshake the window field is
  ALIGN(window, 1 << wscale) >> wscale (__tcp_select_window): 502 (64256)
  for MSS 1460.
- Data segments carry NOP NOP TS; payload per segment = min(peer MSS,
  PMTU - 40) - 12 (tcp_sync_mss). TSval = virtual ms clock + per-connection
  offset; TSecr = ts_recent (updated when SEG.SEQ <= the last ack sent).
- IP: TTL 64, DF (PMTU discovery), ID from the socket's counter starting at
  a random value (ip_select_ident_segs); SYN-ACKs and RSTs without a socket
  carry ID 0 (ip_build_and_send_pkt, ip_send_unicast_reply).
- Send: IW10 (TCP_INIT_CWND), slow start by segments acked, congestion
  avoidance +1 per cwnd (Reno, not CUBIC), a full-MSS segment only when it
  fits in the peer's window (tcp_snd_wnd_test), Nagle with Minshall's
  variant (TCP_NODELAY off), PSH on the segment that empties the queue,
  FIN piggybacked on the last data segment when it is still unsent
  (tcp_send_fin).
- Receive: in order to the app, out-of-order segments kept and answered
  with an immediate ACK; quick ACKs for the first 16 data segments
  (TCP_MAX_QUICKACKS), then an ACK for every second full segment or after
  the 40 ms delayed-ACK timer (TCP_DELACK_MIN); a FIN is acked at once.
- Timers: RTO 1 s initially (TCP_TIMEOUT_INIT, RFC 6298), then
  srtt + max(200 ms, 4 rttvar) (TCP_RTO_MIN), doubling per retry, at most
  120 s (TCP_RTO_MAX). tcp_syn_retries=6: SYNs at 0, 1, 3, 7, 15, 31, 63 s,
  connect fails with ETIMEDOUT at 127 s. tcp_synack_retries=5.
  tcp_retries2=15 retransmissions of data, then ETIMEDOUT (Linux derives
  the deadline from the count; here the count itself). On RTO: ssthresh =
  max(flight/2, 2), cwnd 1, go-back-N from snd_una.
- Close: FIN/ACK, TIME_WAIT 60 s (TCP_TIMEWAIT_LEN) on the active closer, a
  retransmitted FIN in TIME_WAIT is acked again and restarts the timer;
  FIN_WAIT2 of a closed socket ends after tcp_fin_timeout=60 s.
- RST: in SYN_SENT an RST acking our SYN -> ECONNREFUSED; otherwise
  accepted only at exactly RCV.NXT, one elsewhere in the window gets a
  challenge ACK, as does a SYN on a synchronized connection (RFC 5961,
  tcp_validate_incoming). tcp_reset: CLOSE_WAIT -> EPIPE, else ECONNRESET.
  abort() sends RST|ACK (tcp_send_active_reset). A segment for no socket
  gets a RST (tcp_v4_send_reset, RFC 9293 3.10.7.1).
- ICMP (tcp_v4_err): the quoted sequence number must lie in
  [snd_una, snd_nxt]; errno from icmp_err_convert. In SYN_SENT any
  destination-unreachable (not frag-needed) or time-exceeded error fails
  the connect at once (port unreachable -> ECONNREFUSED, net/host ->
  ENETUNREACH/EHOSTUNREACH); on an established connection it is only a soft
  error (inet->recverr off): retransmissions go on. Fragmentation needed
  lowers the path MTU, the MSS with it, and retransmits what is in flight
  at once (tcp_v4_mtu_reduced, tcp_simple_retransmit).

Left out: SACK blocks (SACK is negotiated but never sent), fast retransmit
and recovery, CUBIC/HyStart, receive-buffer autotuning (the advertised
window stays at its initial value: apps read at once), zero-window probes,
keepalive, urgent data, TFO, simultaneous open, SYN cookies and backlog
limits, PAWS rejection, TIME_WAIT reuse by a new SYN.
"""
from __future__ import annotations

import weakref

from emu.errors import EmuError
from emu.wire import ipv4

MASK = 0xFFFFFFFF
MS = 1_000_000
SEC = 1_000_000_000

EPHEMERAL = (32768, 60999)        # net.ipv4.ip_local_port_range
RTO_INIT_NS = 1 * SEC             # TCP_TIMEOUT_INIT
RTO_MIN_NS = 200 * MS             # TCP_RTO_MIN
RTO_MAX_NS = 120 * SEC            # TCP_RTO_MAX
SYN_RETRIES = 6                   # net.ipv4.tcp_syn_retries
SYNACK_RETRIES = 5                # net.ipv4.tcp_synack_retries
RETRIES2 = 15                     # net.ipv4.tcp_retries2
TIME_WAIT_NS = 60 * SEC           # TCP_TIMEWAIT_LEN
FIN_TIMEOUT_NS = 60 * SEC         # net.ipv4.tcp_fin_timeout
DELACK_NS = 40 * MS               # TCP_DELACK_MIN
MAX_QUICKACKS = 16                # TCP_MAX_QUICKACKS
INIT_CWND = 10                    # TCP_INIT_CWND
RCV_SPACE = 65536                 # tcp_full_space: tcp_rmem[1]=131072 >> tcp_adv_win_scale=1
WSCALE = 7                        # ilog2(max(tcp_rmem[2]=6291456, rmem_max)) - 15
DEFAULT_MSS = 536                 # TCP_MSS_DEFAULT when the peer sends no MSS option
TS_LEN = 12                       # TCPOLEN_TSTAMP_ALIGNED

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# icmp_err_convert (net/ipv4/icmp.c): destination unreachable code -> errno
_UNREACH_ERRNO = {0: "ENETUNREACH", 1: "EHOSTUNREACH", 2: "ENOPROTOOPT", 3: "ECONNREFUSED",
                  5: "EOPNOTSUPP", 6: "ENETUNREACH", 7: "EHOSTDOWN", 8: "ENONET",
                  9: "ENETUNREACH", 10: "EHOSTUNREACH", 11: "ENETUNREACH", 12: "EHOSTUNREACH",
                  13: "EHOSTUNREACH", 14: "EHOSTUNREACH", 15: "EHOSTUNREACH"}
_REASON = {"ECONNREFUSED": "refused", "ETIMEDOUT": "timeout", "ECONNRESET": "reset", "EPIPE": "reset"}

_SYNC_STATES = ("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT")
_SENDING_STATES = ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "CLOSING", "LAST_ACK")

_instances: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def reason_of(errno: str) -> str:
    """The short reason apps get for an errno name."""
    return _REASON.get(errno, "unreachable" if "UNREACH" in errno or errno in ("EHOSTDOWN", "ENONET")
                       else errno.lower())


def _flag_text(flags: int) -> str:
    names = [n for bit, n in ((FIN, "FIN"), (SYN, "SYN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"))
             if flags & bit]
    return ",".join(names)


class _Segment:
    """The fields of one received TCP segment (parsed from the bytes)."""
    __slots__ = ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "payload",
                 "mss", "wscale", "sack_ok", "ts")

    def __init__(self, pkt: bytes):
        ihl = (pkt[0] & 0x0F) * 4
        total = int.from_bytes(pkt[2:4], "big")
        self.src = int.from_bytes(pkt[12:16], "big")
        self.dst = int.from_bytes(pkt[16:20], "big")
        t = pkt[ihl:total]
        self.sport, self.dport = int.from_bytes(t[0:2], "big"), int.from_bytes(t[2:4], "big")
        self.seq, self.ack = int.from_bytes(t[4:8], "big"), int.from_bytes(t[8:12], "big")
        doff = (t[12] >> 4) * 4
        self.flags = t[13]
        self.window = int.from_bytes(t[14:16], "big")
        self.payload = bytes(t[doff:])
        self.mss = self.wscale = self.ts = None
        self.sack_ok = False
        opts, i = t[20:doff], 0
        while i < len(opts):
            kind = opts[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= len(opts) or opts[i + 1] < 2:
                break
            ln = opts[i + 1]
            body = opts[i + 2:i + ln]
            if kind == 2 and ln == 4:
                self.mss = int.from_bytes(body, "big")
            elif kind == 3 and ln == 3:
                self.wscale = min(body[0], 14)
            elif kind == 4 and ln == 2:
                self.sack_ok = True
            elif kind == 8 and ln == 10:
                self.ts = (int.from_bytes(body[:4], "big"), int.from_bytes(body[4:], "big"))
            i += ln


class Listener:
    state = "LISTEN"

    def __init__(self, tcp: "Tcp", port: int, on_accept):
        self.tcp, self.port, self.on_accept = tcp, port, on_accept

    def close(self) -> None:
        """Stop listening (connections already accepted go on)."""
        self.tcp._listeners.pop(self.port, None)
        self.tcp._maybe_unbind(self.port)


class Tcp:
    """The TCP layer of one namespace. Use `Tcp.of(netns)`."""

    def __init__(self, netns):
        if netns in _instances:
            raise EmuError(f"{netns.name}: already has a TCP layer (use Tcp.of)")
        if netns.engine is None:
            raise EmuError(f"{netns.name}: add the namespace to an engine first")
        _instances[netns] = self
        self.netns = netns
        self.engine = netns.engine
        self._listeners: dict[int, Listener] = {}
        self._conns: dict[tuple[int, int, int, int], Connection] = {}  # (lip, lport, rip, rport)
        self._bound: set[int] = set()

    @classmethod
    def of(cls, netns) -> "Tcp":
        return _instances.get(netns) or cls(netns)

    # -- API ---------------------------------------------------------------------------
    def listen(self, port: int, on_accept) -> Listener:
        if not 0 < port < 65536:
            raise EmuError(f"{self.netns.name}: listen: bad port {port}")
        if port in self._listeners:
            raise EmuError(f"{self.netns.name}: listen: port {port} in use (EADDRINUSE)")
        lst = self._listeners[port] = Listener(self, port, on_accept)
        self._bind(port)
        return lst

    def connect(self, dst_ip: str, dst_port: int, on_connected=None, on_error=None,
                src_port: int | None = None) -> "Connection":
        """Start a handshake now; on_connected(conn) or on_error(reason) later."""
        netns, eng = self.netns, self.engine
        dst = ipv4.aton(dst_ip)
        r = netns.route(dst)
        conn = Connection(self, 0, 0, dst, dst_port)
        conn.on_connected, conn.on_error = on_connected, on_error
        if r < 0:  # ip_route_connect fails: connect() returns ENETUNREACH
            conn.state = "CLOSE"
            eng.at(eng.now, lambda e: conn._fail("ENETUNREACH"))
            return conn
        route = netns.routes[r]
        conn.lip = netns.source_for(route)
        conn.mtu = netns.ifaces[route.dev].mtu
        conn.lport = src_port if src_port is not None else self._ephemeral(conn.lip, dst, dst_port)
        key = conn.key
        if key in self._conns:
            raise EmuError(f"{netns.name}: connect: {ipv4.ntoa(conn.lip)}:{conn.lport} -> "
                           f"{dst_ip}:{dst_port} exists (EADDRNOTAVAIL)")
        self._conns[key] = conn
        self._bind(conn.lport)
        conn._start_active()
        return conn

    def connections(self) -> list["Connection"]:
        return list(self._conns.values())

    # -- ports -------------------------------------------------------------------------
    def _ephemeral(self, lip, rip, rport) -> int:
        lo, hi = EPHEMERAL
        n = hi - lo + 1
        start = int(self.engine.rng.integers(0, n)) & ~1   # even ports first for connect()
        for parity in (0, 1):
            for i in range(0, n, 2):
                port = lo + (start + i + parity) % n
                if (ipv4.PROTO_TCP, port) in self.netns.sockets and port not in self._bound:
                    continue  # someone else's socket
                if port in self._listeners or (lip, port, rip, rport) in self._conns:
                    continue
                if any(k[1] == port for k in self._conns):
                    continue
                return port
        raise EmuError(f"{self.netns.name}: connect: no free ephemeral port (EADDRNOTAVAIL)")

    def _bind(self, port: int) -> None:
        key = (ipv4.PROTO_TCP, port)
        if port in self._bound:
            return
        if key in self.netns.sockets:
            raise EmuError(f"{self.netns.name}: TCP port {port} is bound by another handler")
        self.netns.bind(ipv4.PROTO_TCP, port, self._input)
        self._bound.add(port)

    def _maybe_unbind(self, port: int) -> None:
        if port in self._listeners or any(k[1] == port for k in self._conns):
            return
        self._bound.discard(port)
        self.netns.sockets.pop((ipv4.PROTO_TCP, port), None)

    def _forget(self, conn: "Connection") -> None:
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
            self._maybe_unbind(conn.lport)

    # -- input -------------------------------------------------------------------------
    def _input(self, netns, frame: bytes, l3: int, time: int) -> None:
        pkt = bytes(frame[l3:])
        if pkt[9] == ipv4.PROTO_ICMP:
            self._icmp_error(pkt)
            return
        if pkt[9] != ipv4.PROTO_TCP:
            return
        seg = _Segment(pkt)
        conn = self._conns.get((seg.dst, seg.dport, seg.src, seg.sport))
        if conn is not None:
            conn._input(seg)
            return
        lst = self._listeners.get(seg.dport)
        if lst is not None and seg.flags & SYN and not seg.flags & (ACK | RST | FIN):
            conn = Connection(self, seg.dst, seg.dport, seg.src, seg.sport)
            conn.listener = lst
            route = self.netns.route(seg.src)
            conn.mtu = self.netns.ifaces[self.netns.routes[route].dev].mtu if route >= 0 else 576
            self._conns[conn.key] = conn
            conn._start_passive(seg)
            return
        if not seg.flags & RST:
            self._reset_for(seg)

    def _reset_for(self, seg: _Segment) -> None:
        """tcp_v4_send_reset: RST for a segment no socket wants (RFC 9293 3.10.7.1)."""
        from scapy.layers.inet import IP, TCP

        if seg.flags & ACK:
            tcp = TCP(sport=seg.dport, dport=seg.sport, seq=seg.ack, flags="R", window=0)
        else:
            n = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
            tcp = TCP(sport=seg.dport, dport=seg.sport, seq=0, ack=(seg.seq + n) & MASK, flags="RA", window=0)
        pkt = IP(src=ipv4.ntoa(seg.dst), dst=ipv4.ntoa(seg.src), ttl=ipv4.DEFAULT_TTL, id=0, flags="DF") / tcp
        self.netns.send_ip(self.engine, bytes(pkt), self.engine.now,
                           note=f"tcp {ipv4.ntoa(seg.dst)}:{seg.dport} -> {ipv4.ntoa(seg.src)}:{seg.sport} "
                                f"{_flag_text(int(tcp.flags))} (no socket)")

    def _icmp_error(self, pkt: bytes) -> None:
        ihl = (pkt[0] & 0x0F) * 4
        icmp_type, code = pkt[ihl], pkt[ihl + 1]
        inner = pkt[ihl + 8:]
        if len(inner) < 20 or icmp_type not in (3, 11, 12):
            return
        iihl = (inner[0] & 0x0F) * 4
        if len(inner) < iihl + 8 or inner[9] != ipv4.PROTO_TCP:
            return
        lip, rip = int.from_bytes(inner[12:16], "big"), int.from_bytes(inner[16:20], "big")
        th = inner[iihl:]
        lport, rport = int.from_bytes(th[0:2], "big"), int.from_bytes(th[2:4], "big")
        seq = int.from_bytes(th[4:8], "big")
        conn = self._conns.get((lip, lport, rip, rport))
        if conn is None:
            return
        if icmp_type == 3 and code == 4:
            conn._mtu_reduced(int.from_bytes(pkt[ihl + 6:ihl + 8], "big"), seq)
        elif icmp_type == 3:
            conn._icmp(_UNREACH_ERRNO.get(code, "EHOSTUNREACH"), seq)
        elif icmp_type == 11:
            conn._icmp("EHOSTUNREACH", seq)
        else:
            conn._icmp("EPROTO", seq)


class Connection:
    """One TCP connection (a socket after connect() or accept())."""

    def __init__(self, tcp: Tcp, lip: int, lport: int, rip: int, rport: int):
        self.tcp, self.engine = tcp, tcp.engine
        self.lip, self.lport, self.rip, self.rport = lip, lport, rip, rport
        self.state = "CLOSE"
        self.listener: Listener | None = None
        self.on_connected = self.on_error = None
        self.on_data = None
        self.on_closed = None
        self.error: str | None = None        # errno name once failed
        self.soft_error: str | None = None   # last ICMP error that did not kill the connection
        self.received = bytearray()          # everything delivered (kept for tests and apps)
        self.mtu = 1500
        self._adv_mss = 0
        rng = self.engine.rng
        self.iss = int(rng.integers(0, 1 << 32))
        self.ts_off = int(rng.integers(0, 1 << 32))
        self.ip_id = int(rng.integers(0, 1 << 16))
        # send side (offsets from iss: SYN is 0, first data byte 1)
        self.snd_una = self.snd_nxt = self.snd_max = 0
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_wscale = 0
        self.peer_mss = DEFAULT_MSS
        self.mss = DEFAULT_MSS
        self.cwnd, self.ssthresh, self._ca_count = INIT_CWND, 1 << 30, 0
        self.out = bytearray()
        self.out_base = 1
        self.fin_off: int | None = None      # offset of our FIN once close() is called
        self.snd_sml = 0                     # end of the last small segment sent (Minshall)
        self._sent: list[list] = []          # [start, end, time sent] of first transmissions
        # receive side (offsets from irs)
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0
        self.ts_ok = self.sack_ok = self.ws_ok = False
        self.ts_recent = 0
        self.last_ack_sent = 0
        self.ooo: dict[int, bytes] = {}
        self.fin_received = False
        self.quickacks = 0
        self.rcv_mss = DEFAULT_MSS
        self._delack_gen = 0
        self._delack_armed = False
        self._quick_started = False
        # timers
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INIT_NS
        self.retransmits = 0
        self._rto_gen = 0
        self._rto_armed = False
        self._tw_gen = 0
        self.history: list[tuple[int, str]] = [(self.engine.now, "CLOSE")]

    # -- identity ----------------------------------------------------------------------
    @property
    def key(self):
        return (self.lip, self.lport, self.rip, self.rport)

    def __repr__(self):
        return f"<tcp {self._name()} {self.state}>"

    def _name(self) -> str:
        return f"{ipv4.ntoa(self.lip)}:{self.lport} -> {ipv4.ntoa(self.rip)}:{self.rport}"

    def _set_state(self, state: str) -> None:
        self.state = state
        self.history.append((self.engine.now, state))

    # -- API ---------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.state in ("SYN_SENT", "SYN_RECV"):
            self.out += data  # queued until established (Linux blocks in sk_stream_wait_connect)
            return
        if self.state not in ("ESTABLISHED", "CLOSE_WAIT") or self.fin_off is not None:
            raise EmuError(f"tcp {self._name()}: send in state {self.state} (EPIPE)")
        self.out += data
        self._output()

    def close(self) -> None:
        """close(): FIN after the queued data (or just forget a SYN_SENT)."""
        if self.state == "SYN_SENT":
            self._done("CLOSE")
            return
        if self.state not in ("ESTABLISHED", "CLOSE_WAIT") or self.fin_off is not None:
            return
        self.fin_off = self.out_base + len(self.out)
        self._set_state("FIN_WAIT1" if self.state == "ESTABLISHED" else "LAST_ACK")
        self._output(nagle=False)

    def abort(self) -> None:
        """SO_LINGER 0 + close(): RST|ACK (tcp_send_active_reset), no TIME_WAIT."""
        if self.state in _SYNC_STATES and self.state != "TIME_WAIT" or self.state == "SYN_RECV":
            self._emit(RST | ACK, self.snd_nxt, note_extra="(abort)")
        self._done("CLOSE")

    # -- segments out -------------------------------------------------------------------
    def _tsval(self) -> int:
        return (self.engine.now // MS + self.ts_off) & MASK

    def _window_field(self, syn: bool) -> int:
        if syn:
            return min(self.rcv_wnd, 65535)
        if self.ws_ok:
            return min(-(-self.rcv_wnd // (1 << self.rcv_wscale)), 65535)
        return min(self.rcv_wnd, 65535)

    @property
    def adv_window(self) -> int:
        """The receive window as the peer sees it, in bytes."""
        return self._window_field(False) << (self.rcv_wscale if self.ws_ok else 0)

    def _emit(self, flags: int, off: int, payload: bytes = b"", note_extra: str = "") -> None:
        from scapy.layers.inet import IP, TCP

        syn = bool(flags & SYN)
        if syn:
            opts = [("MSS", self.adv_mss)]
            if self.state == "SYN_SENT" or (self.sack_ok and self.ts_ok):
                opts += [("SAckOK", b""), ("Timestamp", (self._tsval(), self.ts_recent))]
            elif self.ts_ok:
                opts += [("NOP", None), ("NOP", None), ("Timestamp", (self._tsval(), self.ts_recent))]
            elif self.sack_ok:
                opts += [("NOP", None), ("NOP", None), ("SAckOK", b"")]
            if self.state == "SYN_SENT" or self.ws_ok:
                opts += [("NOP", None), ("WScale", self.rcv_wscale)]
        elif self.ts_ok:
            opts = [("NOP", None), ("NOP", None), ("Timestamp", (self._tsval(), self.ts_recent))]
        else:
            opts = []
        ack = (self.irs + self.rcv_nxt) & MASK if flags & ACK else 0
        if self.state == "SYN_RECV" and syn:
            ip_id = 0  # ip_build_and_send_pkt: DF and id 0
        else:
            ip_id, self.ip_id = self.ip_id, (self.ip_id + 1) & 0xFFFF
        pkt = (IP(src=ipv4.ntoa(self.lip), dst=ipv4.ntoa(self.rip), ttl=ipv4.DEFAULT_TTL, id=ip_id, flags="DF")
               / TCP(sport=self.lport, dport=self.rport, seq=(self.iss + off) & MASK, ack=ack, flags=flags,
                     window=self._window_field(syn), options=opts))
        if payload:
            pkt = pkt / payload
        note = f"tcp {self._name()} {_flag_text(flags)}"
        if payload:
            note += f" len={len(payload)}"
        if note_extra:
            note += " " + note_extra
        self.tcp.netns.send_ip(self.engine, bytes(pkt), self.engine.now, note=note)
        if flags & ACK:
            self._ack_sent()

    def _ack_sent(self) -> None:
        self.last_ack_sent = self.rcv_nxt
        self._delack_armed = False
        self._delack_gen += 1

    def _send_ack(self) -> None:
        self._emit(ACK, self.snd_nxt)

    @property
    def adv_mss(self) -> int:
        """The MSS we announce: the route's MTU - 40 (ipv4_default_advmss), fixed at the SYN."""
        return self._adv_mss or self.mtu - 40

    @property
    def rcv_wnd(self) -> int:
        return self._rcv_wnd

    def _init_rcv_wnd(self, mss: int) -> None:
        space = RCV_SPACE
        if space > mss:
            space -= space % mss
        self._rcv_wnd = min(space, 65535)

    def _sync_mss(self) -> None:
        self.mss = max(min(self.peer_mss, self.mtu - 40) - (TS_LEN if self.ts_ok else 0), 48)

    # -- opening ------------------------------------------------------------------------
    def _start_active(self) -> None:
        self._adv_mss = self.mtu - 40
        self._set_state("SYN_SENT")
        self.rcv_wscale = WSCALE
        self._init_rcv_wnd(self.adv_mss)
        self.snd_nxt = self.snd_max = 1
        self._emit(SYN, 0)
        self._arm_rto()

    def _start_passive(self, seg: _Segment) -> None:
        self._adv_mss = self.mtu - 40
        self._set_state("SYN_RECV")
        self.irs = seg.seq
        self.rcv_nxt = self.last_ack_sent = 1
        self._peer_syn_options(seg)
        self._init_rcv_wnd(self.adv_mss - (TS_LEN if self.ts_ok else 0))
        self.snd_wnd = seg.window
        self.snd_nxt = self.snd_max = 1
        self._emit(SYN | ACK, 0)
        self._arm_rto()

    def _peer_syn_options(self, seg: _Segment) -> None:
        self.peer_mss = seg.mss if seg.mss else DEFAULT_MSS
        self.ts_ok = seg.ts is not None
        if self.ts_ok:
            self.ts_recent = seg.ts[0]
        self.sack_ok = seg.sack_ok
        self.ws_ok = seg.wscale is not None
        self.snd_wscale = seg.wscale if self.ws_ok else 0
        self.rcv_wscale = WSCALE if self.ws_ok else 0
        self._sync_mss()
        self.rcv_mss = min(self.mss, DEFAULT_MSS)

    def _synsent(self, seg: _Segment) -> None:
        ack_off = (seg.ack - self.iss) & MASK
        if seg.flags & ACK and ack_off != 1:
            if not seg.flags & RST:
                self.tcp._reset_for(seg)
            return
        if seg.flags & RST:
            if seg.flags & ACK:
                self._fail("ECONNREFUSED")
            return
        if not seg.flags & SYN or not seg.flags & ACK:
            return  # simultaneous open is not modelled
        self.irs = seg.seq
        self.rcv_nxt = 1
        self._peer_syn_options(seg)
        if not self.ws_ok:
            self._init_rcv_wnd(self.adv_mss)
        self.snd_una = 1
        self.snd_wnd = seg.window  # unscaled in a SYN
        self.snd_wl1, self.snd_wl2 = 0, 1
        if self.retransmits:
            self.rto = 3 * SEC  # RFC 6298 5.7 (TCP_TIMEOUT_FALLBACK) after a retransmitted SYN
        else:
            self._rtt_sample(self.engine.now - self._syn_time)
        self.retransmits = 0
        self._cancel_rto()
        self._set_state("ESTABLISHED")
        self._send_ack()
        if self.on_connected:
            self.on_connected(self)
        if self.out:
            self._output()

    # -- input --------------------------------------------------------------------------
    def _rel_seq(self, seq: int) -> int:
        return ((seq - self.irs + (1 << 31)) & MASK) - (1 << 31)

    def _input(self, seg: _Segment) -> None:
        if self.state == "SYN_SENT":
            self._synsent(seg)
            return
        if self.state == "CLOSE":
            return
        if self.state == "SYN_RECV" and seg.flags & SYN and not seg.flags & ACK and seg.seq == self.irs:
            self._emit(SYN | ACK, 0, note_extra="(retransmission)")  # the peer resent its SYN
            return
        off = self._rel_seq(seg.seq)
        n = len(seg.payload) + (1 if seg.flags & FIN else 0)
        wnd = self.adv_window
        if self.state == "TIME_WAIT":
            if seg.flags & RST:
                self._done("CLOSE")  # RFC 1337 behaviour off: a RST kills TIME_WAIT
            elif seg.flags & FIN and off + n == self.rcv_nxt:
                self._send_ack()
                self._arm_time_wait()
            elif seg.flags & SYN:
                pass  # a new SYN for a TIME_WAIT socket: reuse not modelled
            return
        # RFC 9293 3.10.7.4: acceptability test
        if n == 0:
            ok = off == self.rcv_nxt or self.rcv_nxt <= off < self.rcv_nxt + wnd
        else:
            ok = self.rcv_nxt <= off < self.rcv_nxt + wnd or \
                self.rcv_nxt <= off + n - 1 < self.rcv_nxt + wnd or (off < self.rcv_nxt < off + n)
        if not ok:
            if not seg.flags & RST:
                self._send_ack()
            return
        if seg.flags & RST:
            if off == self.rcv_nxt:
                if self.state == "SYN_RECV":
                    self._done("CLOSE")  # back to the listener, nobody told
                else:
                    self._fail("EPIPE" if self.state == "CLOSE_WAIT" else "ECONNRESET")
            else:
                self._send_ack()  # challenge ACK (RFC 5961 3.2)
            return
        if seg.flags & SYN:
            self._send_ack()  # challenge ACK (RFC 5961 4.2)
            return
        if not seg.flags & ACK:
            return
        if seg.ts is not None and self.ts_ok and off <= self.last_ack_sent:
            self.ts_recent = seg.ts[0]
        ack_off = (seg.ack - self.iss) & MASK
        accepted = False
        if self.state == "SYN_RECV":
            if ack_off != 1:
                self.tcp._reset_for(seg)
                return
            self.snd_una = 1
            self.snd_wnd = seg.window << self.snd_wscale
            self.snd_wl1, self.snd_wl2 = off, ack_off
            if not self.retransmits:
                self._rtt_sample(self.engine.now - self._syn_time)
            else:
                self.rto = 3 * SEC
            self.retransmits = 0
            self._cancel_rto()
            self._set_state("ESTABLISHED")
            accepted = True
        elif not self._process_ack(seg, off, ack_off):
            return
        if self.state == "CLOSE":
            return
        data, got_fin, ack_now = self._process_data(seg, off)
        self._output()             # tcp_data_snd_check: what the ACK and the window allow
        self._ack_check(ack_now)   # tcp_ack_snd_check (a data segment above carried it already)
        # the app runs after the softirq: it accepts, reads, sees EOF, writes, closes
        if accepted and self.listener is not None and self.listener.on_accept:
            self.listener.on_accept(self)
        if data:
            self.received += data
            if self.on_data:
                self.on_data(data)
        if got_fin and self.on_closed:
            self.on_closed()

    def _process_ack(self, seg: _Segment, off: int, ack_off: int) -> bool:
        if ack_off > self.snd_max and ack_off < (1 << 31):
            self._send_ack()  # acks something not yet sent
            return False
        if ack_off >= 1 << 31:
            return True  # before our ISN: ignore the ack, keep the data
        if ack_off >= self.snd_una:
            if off > self.snd_wl1 or (off == self.snd_wl1 and ack_off >= self.snd_wl2):
                self.snd_wnd = seg.window << self.snd_wscale
                self.snd_wl1, self.snd_wl2 = off, ack_off
        if ack_off > self.snd_una:
            acked = ack_off - self.snd_una
            data_end = self.out_base + len(self.out)
            upto = min(ack_off, data_end)
            if upto > self.out_base:
                del self.out[:upto - self.out_base]
                self.out_base = upto
            self.snd_una = ack_off
            if self.snd_nxt < self.snd_una:
                self.snd_nxt = self.snd_una
            sample = None
            while self._sent and self._sent[0][1] <= ack_off:
                rec = self._sent.pop(0)
                if sample is None and rec[2] is not None:
                    sample = self.engine.now - rec[2]
            if sample is not None:
                self._rtt_sample(sample)
            segs = max(1, -(-acked // self.mss))
            if self.cwnd < self.ssthresh:
                self.cwnd += segs
            else:
                self._ca_count += segs
                if self._ca_count >= self.cwnd:
                    self._ca_count -= self.cwnd
                    self.cwnd += 1
            self.retransmits = 0
            if self.snd_una < self.snd_max:
                self._arm_rto(restart=True)
            else:
                self._cancel_rto()
            if self.fin_off is not None and ack_off == self.fin_off + 1:
                self._fin_acked()
                if self.state == "CLOSE":
                    return False
        return True

    def _fin_acked(self) -> None:
        if self.state == "FIN_WAIT1":
            self._set_state("FIN_WAIT2")
            gen = self._tw_gen = self._tw_gen + 1
            self.engine.at(self.engine.now + FIN_TIMEOUT_NS,
                           lambda e: self._tw_gen == gen and self.state == "FIN_WAIT2" and self._done("CLOSE"))
        elif self.state == "CLOSING":
            self._enter_time_wait()
        elif self.state == "LAST_ACK":
            self._done("CLOSE")

    def _process_data(self, seg: _Segment, off: int):
        """tcp_data_queue: returns (bytes now in order, FIN reached, ACK at once)."""
        payload, fin = seg.payload, bool(seg.flags & FIN)
        if (not payload and not fin) or self.fin_received:
            return b"", False, False
        if off > self.rcv_nxt:
            if payload:
                self.ooo.setdefault(off, payload)
            if fin:
                self.ooo.setdefault(off + len(payload), b"FIN")
            return b"", False, True  # out of order: ACK at once (a dup ACK)
        if off < self.rcv_nxt:  # overlap with what we have: keep the new part
            cut = self.rcv_nxt - off
            if cut > len(payload) or (cut == len(payload) and not fin):
                return b"", False, True  # all old: ACK again (tcp_send_dupack)
            payload, off = payload[cut:], self.rcv_nxt
        delivered = bytearray(payload)
        self.rcv_nxt += len(payload)
        if len(payload) >= self.rcv_mss:
            self.rcv_mss = len(payload)
        got_fin = fin
        while not got_fin and self.rcv_nxt in self.ooo:
            chunk = self.ooo.pop(self.rcv_nxt)
            if chunk == b"FIN":
                got_fin = True
                break
            delivered += chunk
            self.rcv_nxt += len(chunk)
        if got_fin:
            self.rcv_nxt += 1
            self.fin_received = True
            if self.state == "ESTABLISHED":
                self._set_state("CLOSE_WAIT")
            elif self.state == "FIN_WAIT1":
                self._set_state("CLOSING")
            elif self.state == "FIN_WAIT2":
                self._enter_time_wait()
            return bytes(delivered), True, True
        return bytes(delivered), False, self._ack_now(bool(self.ooo))

    def _ack_now(self, ooo: bool) -> bool:
        """__tcp_ack_snd_check, simplified: quick ACKs for the first data
        segments, then one ACK per two full segments, else the delayed ACK."""
        if not self._quick_started:
            self._quick_started = True
            self.quickacks = MAX_QUICKACKS
        if ooo:
            return True
        if self.quickacks > 0:
            self.quickacks -= 1
            return True
        return self.rcv_nxt - self.last_ack_sent > self.rcv_mss

    def _ack_check(self, now: bool) -> None:
        if self.rcv_nxt == self.last_ack_sent or self.state not in _SYNC_STATES:
            return
        if now:
            self._send_ack()
        elif not self._delack_armed:
            self._delack_armed = True
            gen = self._delack_gen

            def fire(engine):
                if self._delack_gen == gen and self.rcv_nxt > self.last_ack_sent and self.state in _SYNC_STATES:
                    self._send_ack()
            self.engine.at(self.engine.now + DELACK_NS, fire)

    # -- output -------------------------------------------------------------------------
    def _output(self, nagle: bool = True) -> None:
        if self.state not in _SENDING_STATES:
            return
        while True:
            data_end = self.out_base + len(self.out)
            in_flight = self.snd_nxt - self.snd_una
            avail = data_end - self.snd_nxt
            retrans = self.snd_nxt < self.snd_max
            if avail > 0:
                n = min(self.mss, avail)
                if self.snd_nxt + n > self.snd_una + self.snd_wnd:
                    break  # tcp_snd_wnd_test
                if in_flight and -(-in_flight // self.mss) >= self.cwnd:
                    break  # tcp_cwnd_test
                fin = self.fin_off is not None and self.snd_nxt + n == self.fin_off
                if n < self.mss and nagle and self.fin_off is None and in_flight and self.snd_sml > self.snd_una:
                    break  # Nagle, Minshall's variant (tcp_nagle_check)
                start = self.snd_nxt
                payload = bytes(self.out[start - self.out_base:start - self.out_base + n])
                flags = ACK | (PSH if start + n == data_end else 0) | (FIN if fin else 0)
                self._emit(flags, start, payload, "(retransmission)" if retrans else "")
                self.snd_nxt = start + n + (1 if fin else 0)
                if n < self.mss:
                    self.snd_sml = start + n
            elif self.fin_off is not None and self.snd_nxt == self.fin_off:
                start = self.snd_nxt
                self._emit(FIN | ACK, start, note_extra="(retransmission)" if retrans else "")
                self.snd_nxt = start + 1
            else:
                break
            if self.snd_nxt > self.snd_max:
                self._sent.append([max(start, self.snd_max), self.snd_nxt, None if retrans else self.engine.now])
                self.snd_max = self.snd_nxt
            if not self._rto_armed:
                self._arm_rto()

    # -- timers -------------------------------------------------------------------------
    def _rtt_sample(self, r: int) -> None:
        r = max(r, 1)
        if self.srtt is None:
            self.srtt, self.rttvar = float(r), r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = int(min(max(self.srtt + max(RTO_MIN_NS, 4 * self.rttvar), RTO_MIN_NS), RTO_MAX_NS))

    def _arm_rto(self, restart: bool = False) -> None:
        if self.state in ("SYN_SENT", "SYN_RECV") and not self.retransmits:
            self._syn_time = self.engine.now
        self._rto_gen += 1
        self._rto_armed = True
        gen = self._rto_gen
        delay = min(self.rto << self.retransmits, RTO_MAX_NS) if self.state in ("SYN_SENT", "SYN_RECV") \
            else min(self.rto, RTO_MAX_NS)
        self.engine.at(self.engine.now + delay, lambda e: self._rto_gen == gen and self._timeout())

    def _cancel_rto(self) -> None:
        self._rto_gen += 1
        self._rto_armed = False

    def _timeout(self) -> None:
        self._rto_armed = False
        if self.state == "SYN_SENT":
            if self.retransmits >= SYN_RETRIES:
                self._fail("ETIMEDOUT")
                return
            self.retransmits += 1
            self._emit(SYN, 0, note_extra="(retransmission)")
            self._arm_rto()
            return
        if self.state == "SYN_RECV":
            if self.retransmits >= SYNACK_RETRIES:
                self._done("CLOSE")
                return
            self.retransmits += 1
            self._emit(SYN | ACK, 0, note_extra="(retransmission)")
            self._arm_rto()
            return
        if self.state not in _SENDING_STATES or self.snd_una >= self.snd_max:
            return
        if self.retransmits >= RETRIES2:
            self._fail("ETIMEDOUT")
            return
        self.retransmits += 1
        flight = -(-(self.snd_nxt - self.snd_una) // self.mss)
        self.ssthresh = max(flight // 2, 2)
        self.cwnd, self._ca_count = 1, 0
        for rec in self._sent:
            rec[2] = None  # Karn: no RTT samples from retransmitted data
        self.snd_nxt = self.snd_una  # go-back-N
        self.rto = min(self.rto * 2, RTO_MAX_NS)
        self._output(nagle=False)
        if not self._rto_armed:
            self._arm_rto()

    def _enter_time_wait(self) -> None:
        self._set_state("TIME_WAIT")
        self._cancel_rto()
        self._arm_time_wait()

    def _arm_time_wait(self) -> None:
        gen = self._tw_gen = self._tw_gen + 1
        self.engine.at(self.engine.now + TIME_WAIT_NS,
                       lambda e: self._tw_gen == gen and self.state == "TIME_WAIT" and self._done("CLOSE"))

    # -- ICMP -----------------------------------------------------------------------------
    def _quoted_ok(self, seq: int) -> bool:
        off = (seq - self.iss) & MASK
        return self.snd_una <= off <= self.snd_nxt or (self.state == "SYN_SENT" and off == 0)

    def _icmp(self, errno: str, seq: int) -> None:
        if self.state == "TIME_WAIT" or not self._quoted_ok(seq):
            return  # LINUX_MIB_OUTOFWINDOWICMPS
        if self.state in ("SYN_SENT", "SYN_RECV"):
            if self.state == "SYN_RECV" and self.listener is not None:
                self._done("CLOSE")
            else:
                self._fail(errno)
            return
        self.soft_error = errno  # sk_err_soft: retransmissions go on

    def _mtu_reduced(self, mtu: int, seq: int) -> None:
        if not self._quoted_ok(seq) or mtu < 68 or mtu >= self.mtu:
            return
        self.mtu = mtu
        self._sync_mss()
        if self.state in _SENDING_STATES and self.snd_una < self.snd_nxt:
            # tcp_simple_retransmit: resend what is in flight at the new size, cwnd unchanged
            for rec in self._sent:
                rec[2] = None
            self.snd_nxt = self.snd_una
            self._output(nagle=False)

    # -- the end ------------------------------------------------------------------------
    def _fail(self, errno: str) -> None:
        self.error = errno
        self._done("CLOSE")
        if self.on_error:
            self.on_error(reason_of(errno))

    def _done(self, state: str) -> bool:
        self._cancel_rto()
        self._delack_gen += 1
        self._tw_gen += 1
        if self.state != state:
            self._set_state(state)
        self.tcp._forget(self)
        return True
