"""`dig` (BIND 9.18) run in a pod, for one question: what a user types in
`kubectl exec client -- dig web.default.svc.cluster.local`.

    result = dig(pod, "web.default.svc.cluster.local", cluster=cluster)       # the pod's resolv.conf server
    result = dig(pod, "_http._tcp.web.default.svc.cluster.local", "SRV", server="10.96.0.10")
    result = dig_x(pod, "10.244.1.3", cluster=cluster)                        # dig -x
    engine.run(); result.status, result.answers, print(result.text())

What is reproduced (BIND 9.18 bin/dig/dighost.c defaults):
- One query for the name as given: no search list unless `search=True`
  (+search), and a name without a trailing dot is absolute. With +search
  the resolv.conf search list and ndots apply: a name with fewer dots than
  ndots goes through the search domains first and then as is, one with
  more is tried as is first; only NXDOMAIN moves on to the next name
  (dighost.c next_origin), and only the last answer is shown.
- The message: a random id, RD=1, AD=1, one question, an EDNS0 OPT record
  (version 0, no DO, UDP payload size 1232) carrying a COOKIE option with an
  8-byte client cookie (dig's `compute_cookie`: random per run, the same for
  every query of the run). Ids, cookie and source ports come from the
  engine's seeded RNG.
- UDP: a connected socket on an ephemeral port (ip_local_port_range), DF
  clear (BIND turns path MTU discovery off on its UDP sockets). `tries` (3)
  tries of `timeout` (5 s) each; a retry opens a new socket (a new source
  port) and resends the same message (same id). A hard ICMP error on the
  connected socket (port unreachable: nobody on port 53) fails that try at
  once with "connection refused" and the next try goes out at once; host or
  net unreachable is never seen by the socket (a timeout), as for glibc.
  Each failed try prints ";; communications error to S#53: timed out" (or
  "connection refused"); after the last, ";; connection timed out; no
  servers could be reached" (or ";; no servers could be reached").
- TC=1 on a UDP answer (unless `ignore_tc`, +ignore): ";; Truncated,
  retrying in TCP mode." and the question is asked again as a new lookup
  (a new id) over a TCP connection (emu.hosts.dns_tcp's client: handshake,
  length-prefixed query, answer, FIN from dig). `tcp=True` (+tcp) starts
  there. A TCP try waits 10 s (dighost.c TCP_TIMEOUT) unless `timeout` is
  given, and counts against `tries` too; a refused connection or an EOF
  before the answer ends the try at once.
- The result: rcode, header flags, the sections in presentation format,
  the OPT record of the reply, query time (from the last query's send, or
  the TCP connection's establishment, to its answer), the server and the
  protocol, the answer's size; `text()` renders dig's default output.
  dig exits 0 whenever an answer came (NXDOMAIN and SERVFAIL included), 9
  when no server answered.

Simplified or left out: only the first resolv.conf nameserver is asked
(pods have one; dig would move to the next after a failure), the ";; WHEN:"
line (wall-clock time: nothing here reads it), server cookies (CoreDNS does
not send one, so nothing is echoed), +trace/+nssearch/+short and every other
option, IPv6 transport, ANY/AXFR/IXFR, the "; (1 server found)" line
after an @server, dig's column padding of records (tabs here), and IDN
conversion. SERVFAIL is shown as it is (+fail, dig's default: no next
server).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from emu.control import dns
from emu.errors import EmuError
from emu.hosts.outcome import Outcome
from emu.hosts.resolver import _HARD_UNREACH, EPHEMERAL_PORTS, RCODES, ResolvConf
from emu.wire import ipv4

DNS_PORT = 53
EDNS_UDP_SIZE = 1232       # dig 9.18's default +bufsize (DNS flag day 2020)
COOKIE_LEN = 8             # client cookie, RFC 7873
OPT_COOKIE = 10            # EDNS0 option code of COOKIE
UDP_TIMEOUT_S = 5          # dighost.c UDP_TIMEOUT (+timeout)
TCP_TIMEOUT_S = 10         # dighost.c TCP_TIMEOUT
TRIES = 3                  # +tries
NS_PER_SEC = 1_000_000_000
VERSION = "9.18"

_FLAG_ORDER = ("qr", "aa", "tc", "rd", "ra", "ad", "cd")   # as dig prints them
_TYPE_NAMES = {v: k for k, v in dns.QTYPES.items()}
# Types whose data is a domain name
_NAME_TYPES = {"NS", "CNAME", "PTR"}
# dig's exit status: 0 an answer came, 9 no reply from the server
EXIT_NO_REPLY = 9
# how a try ended without an answer -> isc_result_totext, as dig prints it
_FAILURES = {"timeout": "timed out", "refused": "connection refused",
             "unreachable": "host unreachable", "reset": "connection reset", "eof": "end of file"}

Record = tuple[str, int, str, str]   # (owner name, TTL, type, data), dig's presentation format


def reverse_name(ip: str) -> str:
    """The in-addr.arpa name `dig -x ip` asks for (IPv4)."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise EmuError(f"dig -x {ip!r}: not an IPv4 address") from None
    return ".".join(reversed(str(addr).split("."))) + ".in-addr.arpa."


# ------------------------------------------------------------------ results
@dataclass
class DigExchange:
    """One message dig sent, and what came of it."""

    qname: str              # as sent, absolute (trailing dot)
    protocol: str           # udp | tcp
    id: int
    server: str
    sport: int              # local port of the UDP socket or the TCP connection
    sent_ns: int            # the query left (TCP: the connection was established)
    pkt_id: int = -1        # of the UDP datagram; -1 over TCP
    answered_ns: int | None = None
    outcome: str | None = None   # answer | truncated | timeout | refused | unreachable | reset | eof


@dataclass
class DigResult(Outcome):
    """What dig printed, as data. `status` is the rcode of the answer shown
    (NOERROR, NXDOMAIN, SERVFAIL, ...) or, when no answer came, the error
    ("timeout", "refused"), which is then also in `error`."""

    name: str                       # as given on the command line
    qtype: str
    server: str
    started_ns: int
    port: int = DNS_PORT
    qname: str = ""                 # the name in the question of the answer shown (absolute)
    protocol: str = "udp"           # of the answer shown (tcp after a truncated UDP answer)
    status: str | None = None
    error: str | None = None        # timeout | refused (| unreachable | reset | eof over TCP); None once answered
    id: int | None = None
    flags: list[str] = field(default_factory=list)      # header flags of the answer, dig's order
    answers: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)   # without the OPT pseudo-record
    edns: dict | None = None        # the answer's OPT: {"version", "flags", "udp"}
    msg_size: int | None = None     # bytes of the answer message ("MSG SIZE rcvd")
    query_time_ns: int | None = None
    finished_ns: int | None = None
    cookie: str = ""                # the client cookie sent, hex
    truncated_udp: bool = False     # a UDP answer came with TC: retried over TCP
    exchanges: list[DigExchange] = field(default_factory=list)
    command: str = ""

    @property
    def elapsed_ns(self) -> int | None:
        return None if self.finished_ns is None else self.finished_ns - self.started_ns

    @property
    def addresses(self) -> list[str]:
        """The A and AAAA data of the answer section, in order."""
        return [d for _, _, t, d in self.answers if t in ("A", "AAAA")]

    @property
    def aa(self) -> bool:
        return "aa" in self.flags

    @property
    def tc(self) -> bool:
        return "tc" in self.flags

    @property
    def rd(self) -> bool:
        return "rd" in self.flags

    @property
    def ra(self) -> bool:
        return "ra" in self.flags

    @property
    def exit_code(self) -> int | None:
        if not self.done:
            return None
        return 0 if self.error is None else EXIT_NO_REPLY

    def text(self) -> str:
        """dig's default output (without the ;; WHEN: line)."""
        lines = ["", f"; <<>> DiG {VERSION} <<>> {self.command}", ";; global options: +cmd"]
        lines += [_failure_line(x) for x in self.exchanges if x.outcome in _FAILURES]
        if self.truncated_udp:
            lines.append(";; Truncated, retrying in TCP mode.")
        if self.error is not None:
            if self.error == "timeout":
                lines.append(";; connection timed out; no servers could be reached")
            else:
                lines.append(";; no servers could be reached")
            return "\n".join(lines) + "\n"
        return "\n".join(lines + self._answer_lines()) + "\n"

    def _answer_lines(self) -> list[str]:
        counts = (1, len(self.answers), len(self.authority), len(self.additional) + (self.edns is not None))
        lines = [";; Got answer:",
                 f";; ->>HEADER<<- opcode: QUERY, status: {self.status}, id: {self.id}",
                 f";; flags: {' '.join(self.flags)}; QUERY: {counts[0]}, ANSWER: {counts[1]}, "
                 f"AUTHORITY: {counts[2]}, ADDITIONAL: {counts[3]}"]
        if self.rd and not self.ra:
            lines.append(";; WARNING: recursion requested but not available")
        lines.append("")
        if self.edns is not None:
            lines += [";; OPT PSEUDOSECTION:",
                      f"; EDNS: version: {self.edns['version']}, flags:{self.edns['flags']}; udp: {self.edns['udp']}"]
        lines += [";; QUESTION SECTION:", f";{self.qname}\t\tIN\t{self.qtype}", ""]
        for title, records in (("ANSWER", self.answers), ("AUTHORITY", self.authority),
                               ("ADDITIONAL", self.additional)):
            if records:
                lines.append(f";; {title} SECTION:")
                lines += [f"{n}\t{ttl}\tIN\t{t}\t{d}" for n, ttl, t, d in records]
                lines.append("")
        ms = (self.query_time_ns or 0) // 1_000_000
        lines += [f";; Query time: {ms} msec",
                  f";; SERVER: {self.server}#{self.port}({self.server}) ({self.protocol.upper()})",
                  f";; MSG SIZE  rcvd: {self.msg_size}", ""]
        return lines


def _failure_line(x: DigExchange) -> str:
    return f";; communications error to {x.server}#{DNS_PORT}: {_FAILURES[x.outcome]}"


# ------------------------------------------------------------------ presentation format
def _name_text(value) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text if text.endswith(".") else text + "."


def _rdata_text(rr, rtype: str) -> str:
    """RDATA as dig prints it."""
    if rtype in ("A", "AAAA"):
        return str(rr.rdata)
    if rtype in _NAME_TYPES:
        return _name_text(rr.rdata)
    if rtype == "SRV":
        return f"{rr.priority} {rr.weight} {rr.port} {_name_text(rr.target)}"
    if rtype == "SOA":
        return (f"{_name_text(rr.mname)} {_name_text(rr.rname)} {rr.serial} {rr.refresh} "
                f"{rr.retry} {rr.expire} {rr.minimum}")
    if rtype == "TXT":
        parts = rr.rdata if isinstance(rr.rdata, list) else [rr.rdata]
        return " ".join('"' + (p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p)) + '"'
                        for p in parts)
    raw = bytes(rr.rdata) if isinstance(rr.rdata, (bytes, bytearray)) else str(rr.rdata).encode()
    return f"\\# {len(raw)} {raw.hex().upper()}"   # RFC 3597 unknown type


def _records(section) -> list[Record]:
    from scapy.layers.dns import DNSRROPT

    out = []
    for rr in section or []:
        if isinstance(rr, DNSRROPT):
            continue
        rtype = _TYPE_NAMES.get(int(rr.type), f"TYPE{int(rr.type)}")
        out.append((_name_text(rr.rrname), int(rr.ttl), rtype, _rdata_text(rr, rtype)))
    return out


def _edns(msg) -> dict | None:
    from scapy.layers.dns import DNSRROPT

    opt = next((rr for rr in (msg.ar or []) if isinstance(rr, DNSRROPT)), None)
    if opt is None:
        return None
    flags = " do" if int(opt.z) & 0x8000 else ""
    return {"version": int(opt.version), "flags": flags, "udp": int(opt.rclass)}


def _flags(msg) -> list[str]:
    return [f for f in _FLAG_ORDER if getattr(msg, f)]


# ------------------------------------------------------------------ the query
def query_message(qname: str, qtype: str, qid: int, cookie: bytes) -> bytes:
    """The message dig 9.18 sends by default: RD, AD, EDNS0 1232 with a COOKIE."""
    from scapy.layers.dns import DNS, DNSQR, DNSRROPT, EDNS0COOKIE

    opt = DNSRROPT(rrname=".", rclass=EDNS_UDP_SIZE, extrcode=0, version=0, z=0,
                   rdata=[EDNS0COOKIE(optcode=OPT_COOKIE, client_cookie=cookie)])
    return bytes(DNS(id=qid, qr=0, opcode=0, rd=1, ad=1, cd=0,
                     qd=DNSQR(qname=qname, qtype=qtype), ar=[opt]))


def dig(netns, name: str, qtype: str = "A", *, server: str | None = None, tcp: bool = False,
        cluster=None, on_done: Callable[[DigResult], None] | None = None, search: bool = False,
        tries: int = TRIES, timeout: int | None = None, ignore_tc: bool = False) -> DigResult:
    """`dig [@server] name qtype` from a namespace, now. Returns the DigResult
    at once; it is filled in as the engine runs and on_done(result) is
    called once dig would have printed it.

    The server is `server`, else the first nameserver of the pod's
    resolv.conf (ClusterFirst, from `cluster`); `search` (+search) uses the
    resolv.conf search list and ndots. `tcp` is +tcp, `tries` +tries,
    `timeout` +timeout (seconds; default 5 over UDP, 10 over TCP),
    `ignore_tc` +ignore."""
    qtype = str(qtype).upper()
    if qtype not in dns.QTYPES or qtype in ("OPT", "ANY", "AXFR", "IXFR"):
        raise EmuError(f"dig {name}: query type {qtype} is not supported")
    if not name or len(name.rstrip(".")) > 253 or ".." in name:
        raise EmuError(f"dig {name!r}: not a valid domain name")
    if tries < 1:
        raise EmuError(f"dig {name}: +tries={tries} must be at least 1")
    conf = _resolv_conf(netns, cluster)
    args = [f"@{server}"] if server is not None else []   # the command line dig echoes
    if server is None:
        if conf is None:
            raise EmuError(f"dig {name}: {netns.name} has no resolv.conf: pass server= or cluster=")
        server = conf.nameservers[0]
    try:
        ipaddress.IPv4Address(server)
    except ValueError:
        raise EmuError(f"dig @{server}: the server must be an IPv4 address") from None
    engine = netns.engine
    result = DigResult(name, qtype, server, engine.now)
    result.command = " ".join(args + [name, qtype] + (["+tcp"] if tcp else []) + (["+search"] if search else []))
    names = _candidates(name, conf if search else None)
    run = _Dig(netns, result, names, tcp=tcp, tries=tries, timeout=timeout, ignore_tc=ignore_tc,
               on_done=on_done)
    run.start()
    return result


def dig_x(netns, ip: str, **kw) -> DigResult:
    """`dig -x ip`: the PTR record of the address's in-addr.arpa name."""
    result = dig(netns, reverse_name(ip), "PTR", **kw)
    server = kw.get("server")
    result.command = " ".join(([f"@{server}"] if server else []) + ["-x", ip])
    return result


def _resolv_conf(netns, cluster) -> ResolvConf | None:
    """The pod's resolv.conf as the kubelet writes it (dnsPolicy ClusterFirst)."""
    if cluster is None:
        return None
    settings = cluster.state.settings
    for (namespace, _), pod in cluster.fabric.pods.items():
        if pod is netns:
            return ResolvConf.for_pod(namespace, str(settings.dns_service_ip), settings.cluster_domain)
    raise EmuError(f"dig: {netns.name} is not a pod of this cluster")


def _candidates(name: str, conf: ResolvConf | None) -> list[str]:
    """The absolute names dig asks, in order (dighost.c setup_lookup/next_origin)."""
    if name.endswith(".") or conf is None or not conf.search:
        return [name if name.endswith(".") else name + "."]
    searched = [f"{name}.{d.strip('.')}." for d in conf.search]
    if name.count(".") >= conf.ndots:
        return [name + "."] + searched
    return searched + [name + "."]


class _Dig:
    """One dig run: lookups (one per candidate name, and the TCP retry), each
    with its tries, on the virtual clock."""

    def __init__(self, netns, result: DigResult, names: list[str], *, tcp: bool, tries: int,
                 timeout: int | None, ignore_tc: bool, on_done):
        self.netns, self.engine = netns, netns.engine
        self.result, self.names = result, list(names)
        self.tcp, self.tries, self.timeout, self.ignore_tc = tcp, tries, timeout, ignore_tc
        self.on_done = on_done
        self.cookie = bytes(int(b) for b in self.engine.rng.integers(0, 256, COOKIE_LEN))
        result.cookie = self.cookie.hex()
        self.token = 0          # invalidates the timer and handlers of a finished try
        self.port = None        # the UDP socket's local port while open
        self.client = None      # the TCP client while open

    # -- lookups -----------------------------------------------------------------------
    def start(self) -> None:
        self._lookup(self.names.pop(0), tcp=self.tcp)

    def _lookup(self, qname: str, tcp: bool) -> None:
        """setup_lookup: a new message (a new id) for one name, then its tries."""
        self.qname, self.protocol = qname, "tcp" if tcp else "udp"
        self.id = int(self.engine.rng.integers(0, 65536))
        self.message = query_message(qname, self.result.qtype, self.id, self.cookie)
        self.tries_left = self.tries
        self._try()

    def _try(self) -> None:
        self.tries_left -= 1
        self.token += 1
        if self.protocol == "udp":
            self._send_udp()
        else:
            self._send_tcp()
        seconds = self.timeout or (UDP_TIMEOUT_S if self.protocol == "udp" else TCP_TIMEOUT_S)
        token = self.token
        self.engine.at(self.engine.now + seconds * NS_PER_SEC, lambda e: self._timed_out(token))

    def _failed(self, outcome: str) -> None:
        """This try is over without an answer: the next one, or dig gives up."""
        self.token += 1
        self.exchange.outcome = outcome
        self.exchange.answered_ns = None
        self._close()
        if self.tries_left > 0:
            self._try()
            return
        self.result.error = self.result.status = outcome
        self._finish()

    def _timed_out(self, token: int) -> None:
        if token == self.token:
            self._failed("timeout")

    # -- UDP ---------------------------------------------------------------------------
    def _send_udp(self) -> None:
        from scapy.layers.inet import IP, UDP

        ns, engine, server = self.netns, self.engine, self.result.server
        r = ns.route(ipv4.aton(server))
        if r < 0:
            raise EmuError(f"{ns.name}: dig @{server}: Network is unreachable")
        src = ipv4.ntoa(ns.source_for(ns.routes[r]))
        self.port = self._free_port()
        token = self.token
        ns.bind(ipv4.PROTO_UDP, self.port, lambda n, frame, l3, t: self._udp_in(token, frame, l3, t))
        ip_id = int(engine.rng.integers(0, 65536))
        # BIND turns path MTU discovery off on its UDP sockets: DF clear
        pkt = IP(src=src, dst=server, ttl=ipv4.DEFAULT_TTL, id=ip_id) / UDP(sport=self.port, dport=DNS_PORT)
        self.exchange = DigExchange(self.qname, "udp", self.id, server, self.port, engine.now)
        self.result.exchanges.append(self.exchange)
        note = f"dig {self.qname} {self.result.qtype}"
        self.exchange.pkt_id = ns.send_ip(engine, bytes(pkt / self.message), engine.now, note=note)

    def _free_port(self) -> int:
        lo, hi = EPHEMERAL_PORTS
        while True:
            port = int(self.engine.rng.integers(lo, hi + 1))
            if (ipv4.PROTO_UDP, port) not in self.netns.sockets:
                return port

    def _udp_in(self, token: int, frame: bytes, l3: int, time: int) -> None:
        from scapy.layers.inet import ICMP, IP, UDP

        if token != self.token:
            return
        ip = IP(frame[l3:])
        if ip.proto == ipv4.PROTO_ICMP:
            icmp = ip[ICMP] if ip.haslayer(ICMP) else None
            if icmp is not None and ((icmp.type == 3 and icmp.code in _HARD_UNREACH) or icmp.type == 12):
                self._failed("refused")   # ECONNREFUSED on the connected socket
            return
        if not ip.haslayer(UDP) or ip.src != self.result.server or ip[UDP].sport != DNS_PORT:
            return   # a connected socket only hears from the server's port 53
        self._answer(bytes(ip[UDP].payload))

    # -- TCP ---------------------------------------------------------------------------
    def _send_tcp(self) -> None:
        from emu.hosts.dns_tcp import DnsTcpClient

        token = self.token
        client = DnsTcpClient(self.netns, self.result.server,
                              lambda data: token == self.token and self._answer(data),
                              on_error=lambda reason: token == self.token and self._tcp_error(reason))
        self.client = client
        self.exchange = DigExchange(self.qname, "tcp", self.id, self.result.server, client.conn.lport,
                                    self.engine.now)
        self.result.exchanges.append(self.exchange)
        exchange = self.exchange
        # the query time runs from the send, once the connection is up
        client.conn.on_connected = lambda conn: setattr(exchange, "sent_ns", self.engine.now)
        eof = client.conn.on_closed
        client.conn.on_closed = lambda: (eof(), token == self.token and self._tcp_error("eof"))
        client.query(self.message)

    def _tcp_error(self, reason: str) -> None:
        self.client = None   # the connection is gone already
        self._failed(reason if reason in _FAILURES else "timeout")

    # -- the answer --------------------------------------------------------------------
    def _answer(self, data: bytes) -> None:
        from scapy.layers.dns import DNS

        try:
            msg = DNS(data)
        except Exception:
            return
        if not msg.qr or msg.id != self.id:
            return   # not ours: dig keeps waiting
        self.token += 1
        ex = self.exchange
        ex.answered_ns = self.engine.now
        if msg.tc and self.protocol == "udp" and not self.ignore_tc:
            ex.outcome = "truncated"
            self._close()
            self.result.truncated_udp = True
            self._lookup(self.qname, tcp=True)
            return
        ex.outcome = "answer"
        rcode = RCODES.get(msg.rcode, f"RESERVED{msg.rcode}")
        if rcode == "NXDOMAIN" and self.names:
            self._close()
            self._lookup(self.names.pop(0), tcp=self.tcp)   # +search: the next name
            return
        self._close()
        self._fill(msg, len(data))
        self._finish()

    def _fill(self, msg, size: int) -> None:
        r, ex = self.result, self.exchange
        r.status = RCODES.get(msg.rcode, f"RESERVED{msg.rcode}")
        r.qname, r.protocol, r.id = self.qname, self.protocol, msg.id
        r.flags = _flags(msg)
        r.answers, r.authority, r.additional = _records(msg.an), _records(msg.ns), _records(msg.ar)
        r.edns = _edns(msg)
        r.msg_size = size
        r.query_time_ns = ex.answered_ns - ex.sent_ns

    def _close(self) -> None:
        if self.port is not None:
            self.netns.sockets.pop((ipv4.PROTO_UDP, self.port), None)
            self.port = None
        if self.client is not None:
            # dig closes its side once the answer is read (or the try is given up)
            self.client.close()
            self.client = None

    def _finish(self) -> None:
        self.result.finished_ns = self.engine.now
        if self.on_done is not None:
            self.on_done(self.result)
