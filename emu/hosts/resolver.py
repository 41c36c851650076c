"""The stub resolver in every pod: glibc's getaddrinfo over DNS, with the
resolv.conf the kubelet gives a pod (dnsPolicy ClusterFirst).

What is reproduced, and where it comes from (glibc resolv/, 2.26 and later):

- Search walk (res_query.c, __res_context_search): a name with at least
  `ndots` dots, or with a trailing dot, is tried as is first (a trailing dot
  ends there). Otherwise, and after a failed first try of a dotted name, each
  search domain is appended in order; NXDOMAIN (HOST_NOT_FOUND), NODATA and
  SERVFAIL move to the next domain, any other failure (a timeout) stops the
  walk; ECONNREFUSED (an ICMP port unreachable on the socket) gives up at
  once. Then the name as is, unless already tried. An answer with addresses
  ends the search. The error reported is the first as-is try's, else NODATA
  if any step had it, else SERVFAIL if any step had it, else the last one's.
- One step (res_query.c, __res_context_query): with AF_UNSPEC one A and one
  AAAA query (T_QUERY_A_AND_AAAA), each with its own random id (res_mkquery,
  RD set, no EDNS by default). The step succeeds if either answer is NOERROR
  with records; NXDOMAIN -> HOST_NOT_FOUND, NOERROR without records ->
  NO_DATA, SERVFAIL -> TRY_AGAIN.
- Sending (res_send.c, __res_context_send and send_dg): per try (`attempts`)
  and per nameserver, both queries go out back to back (sendmmsg) from one
  connected UDP socket, so from one source port, and the socket waits for both
  answers. The wait for nameserver i is `timeout << i` seconds, divided by
  the number of nameservers when i > 0 (so with one nameserver, `timeout`
  every try). A timeout leaves the socket open (the retry uses the same port
  and the same query ids); SERVFAIL/NOTIMP/REFUSED on both answers, or an
  ICMP error on the socket, closes it (the next try gets a new port). If one
  answer came and the other timed out, glibc switches to single-request (then
  to single-request-reopen) for the rest of the resolver's life and resends
  at once. With `single-request` the AAAA query is sent only after the A
  answer; `single-request-reopen` also opens a new socket for it. A step
  closes its socket when it ends: each candidate name has its own port.
- ICMP errors reach the socket only if they are "hard" for a connected UDP
  socket without IP_RECVERR (Linux __udp4_lib_err and icmp_err_convert):
  port/protocol unreachable and the administrative codes, not net or host
  unreachable, nor time exceeded; those end in a timeout.
- TCP fallback (send_dg's `anhp->tc` branch, then send_vc): an answer with
  TC=1 that passed the checks above (not SERVFAIL/NOTIMP/REFUSED, not a
  referral) sets v_circuit; the UDP socket is closed at once (a second UDP
  answer still on its way meets a closed port), and the same queries, with
  the same ids, go to the same server over a new TCP connection (an
  emu.hosts.tcp connection: handshake, both queries in one write with their
  two-byte length prefixes, the answers, FIN from the resolver, which keeps
  TIME_WAIT). Answers are matched by id in whatever order they come; over
  TCP no rcode makes glibc move on, so the answers are used as they are,
  even without addresses. With v_circuit set there is no further try
  (`try = statp->retry`): a failed connection (refused, timed out by TCP's
  own SYN retries: send_vc has no timer of its own) or an EOF before both
  answers moves to the next nameserver, over TCP too, and after the last
  res_send fails with that connection's errno. A reset is retried once on
  the same server (send_vc's `connreset`).

Left out: /etc/hosts and nsswitch (getaddrinfo asks `files` first), `options
use-vc` and `options ignore-tc` (RES_USEVC, RES_IGNTC: TCP fallback is always
on), EDNS0 and `options edns0`/`rotate`/`no-tld-query`, RFC 6724
sorting of the addresses, the case where a SERVFAIL and an answer arrive in
an order that makes glibc keep a different buffer, HOSTALIASES, and the
musl resolver (Alpine), which sends to all nameservers in parallel.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from emu.errors import EmuError
from emu.wire import ipv4
from emu.hosts.outcome import Outcome

DNS_PORT = 53
EPHEMERAL_PORTS = (32768, 60999)   # net.ipv4.ip_local_port_range
# glibc resolv.h / res_init.c defaults and limits
RES_TIMEOUT = 5          # options timeout:
RES_DFLRETRY = 2         # options attempts:
RES_MAXNDOTS = 15
RES_MAXRETRANS = 30
RES_MAXRETRY = 5
MAXNS = 3
NS_PER_SEC = 1_000_000_000

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_REJECTED = {"SERVFAIL", "NOTIMP", "REFUSED"}   # send_dg: "server rejected query"
QTYPES = {"A": 1, "AAAA": 28}
FAMILIES = {"unspec": ("A", "AAAA"), "inet": ("A",), "inet6": ("AAAA",)}
# ICMP destination-unreachable codes Linux reports to a connected UDP socket
# without IP_RECVERR (icmp_err_convert[code].fatal); parameter problem too.
_HARD_UNREACH = {2, 3, 6, 7, 8, 9, 10, 13, 14, 15}


# ------------------------------------------------------------------ resolv.conf
@dataclass(frozen=True)
class ResolvConf:
    """The parts of resolv.conf(5) glibc's stub resolver uses."""

    nameservers: tuple[str, ...]
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: int = RES_TIMEOUT
    attempts: int = RES_DFLRETRY
    single_request: bool = False
    single_request_reopen: bool = False

    def __post_init__(self):
        if not self.nameservers:
            raise EmuError("resolv.conf: no nameserver")
        for ns in self.nameservers:
            try:
                ipaddress.IPv4Address(ns)
            except ValueError:
                raise EmuError(f"resolv.conf: nameserver {ns!r} is not an IPv4 address") from None
        if not 0 <= self.ndots <= RES_MAXNDOTS:
            raise EmuError(f"resolv.conf: ndots:{self.ndots} is not in 0..{RES_MAXNDOTS}")
        if not 1 <= self.timeout <= RES_MAXRETRANS:
            raise EmuError(f"resolv.conf: timeout:{self.timeout} is not in 1..{RES_MAXRETRANS}")
        if not 1 <= self.attempts <= RES_MAXRETRY:
            raise EmuError(f"resolv.conf: attempts:{self.attempts} is not in 1..{RES_MAXRETRY}")

    @classmethod
    def for_pod(cls, namespace: str, cluster_dns_ip: str = "10.96.0.10",
                domain: str = "cluster.local") -> "ResolvConf":
        """dnsPolicy ClusterFirst: what the kubelet hands the runtime
        (pkg/kubelet/network/dns: search <ns>.svc.<domain> svc.<domain>
        <domain>, the cluster DNS Service, ndots:5). The node's own search
        domains are not appended: the emulated nodes have none."""
        domain = domain.rstrip(".")
        return cls(nameservers=(str(cluster_dns_ip),),
                   search=(f"{namespace}.svc.{domain}", f"svc.{domain}", domain), ndots=5)

    @classmethod
    def parse(cls, text: str) -> "ResolvConf":
        """resolv.conf text as res_init reads it: up to three nameservers, the
        last `search`/`domain` line wins, options ndots/timeout/attempts (capped
        as glibc caps them), single-request, single-request-reopen."""
        servers, search, kw = [], (), {}
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].split(";", 1)[0].split()
            if not line:
                continue
            key, args = line[0], line[1:]
            if key == "nameserver" and args and len(servers) < MAXNS:
                servers.append(args[0])
            elif key in ("search", "domain") and args:
                search = tuple(args) if key == "search" else (args[0],)
            elif key == "options":
                for opt in args:
                    name, _, value = opt.partition(":")
                    if name == "ndots" and value.isdigit():
                        kw["ndots"] = min(int(value), RES_MAXNDOTS)
                    elif name == "timeout" and value.isdigit():
                        kw["timeout"] = max(1, min(int(value), RES_MAXRETRANS))
                    elif name == "attempts" and value.isdigit():
                        kw["attempts"] = max(1, min(int(value), RES_MAXRETRY))
                    elif name == "single-request":
                        kw["single_request"] = True
                    elif name == "single-request-reopen":
                        kw["single_request_reopen"] = True
        return cls(nameservers=tuple(servers), search=search, **kw)

    def text(self) -> str:
        """The file, in the order the container runtime writes it (search,
        nameserver, options); options only where they differ from glibc's defaults."""
        lines = []
        if self.search:
            lines.append("search " + " ".join(self.search))
        lines += [f"nameserver {ns}" for ns in self.nameservers]
        opts = []
        if self.ndots != 1:
            opts.append(f"ndots:{self.ndots}")
        if self.timeout != RES_TIMEOUT:
            opts.append(f"timeout:{self.timeout}")
        if self.attempts != RES_DFLRETRY:
            opts.append(f"attempts:{self.attempts}")
        if self.single_request:
            opts.append("single-request")
        if self.single_request_reopen:
            opts.append("single-request-reopen")
        if opts:
            lines.append("options " + " ".join(opts))
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ results
@dataclass
class Query:
    """One DNS message the resolver sent, and what came of it."""

    name: str                  # the name asked (no trailing dot)
    qtype: str                 # A | AAAA
    id: int
    server: str
    sport: int                 # local port of the UDP socket or the TCP connection
    attempt: int               # 1-based try (options attempts)
    sent_ns: int
    pkt_id: int                # of the UDP datagram; -1 over TCP (the query rides in a stream)
    rcode: str | None = None   # of the answer; None if none came
    answers: list[str] = field(default_factory=list)  # A/AAAA addresses in it
    answered_ns: int | None = None
    icmp: str | None = None    # an ICMP error the socket got while waiting for it
    protocol: str = "udp"      # udp | tcp (the fallback after a truncated answer)
    tc: bool = False           # the answer had TC set (it was truncated)


@dataclass
class Resolution(Outcome):
    """The outcome of one getaddrinfo call."""

    name: str
    family: str
    started_ns: int
    addresses: list[str] = field(default_factory=list)
    error: str | None = None   # NXDOMAIN | NODATA | SERVFAIL | timeout | refused | NO_RECOVERY
    queries: list[Query] = field(default_factory=list)
    finished_ns: int | None = None

    @property
    def elapsed_ns(self) -> int | None:
        return None if self.finished_ns is None else self.finished_ns - self.started_ns

    @property
    def gai_error(self) -> str | None:
        """What getaddrinfo returns (nss_dns maps h_errno: HOST_NOT_FOUND ->
        EAI_NONAME, NO_DATA -> EAI_NODATA, TRY_AGAIN -> EAI_AGAIN, else EAI_FAIL)."""
        return {None: None, "NXDOMAIN": "EAI_NONAME", "NODATA": "EAI_NODATA", "SERVFAIL": "EAI_AGAIN",
                "timeout": "EAI_AGAIN", "refused": "EAI_AGAIN"}.get(self.error, "EAI_FAIL")

    def sequence(self) -> list[tuple[str, str]]:
        """(name, type) of every query in the order sent (retries included)."""
        return [(q.name, q.qtype) for q in self.queries]


@dataclass
class _StepResult:
    """What __res_context_query leaves: h_errno, the errno of res_send, and
    whether the answer buffer holds a SERVFAIL (what the search loop looks at)."""

    herrno: str                 # OK | HOST_NOT_FOUND | NO_DATA | TRY_AGAIN | NO_RECOVERY
    addresses: list[str] = field(default_factory=list)
    errno: str | None = None    # ETIMEDOUT | ECONNREFUSED when res_send failed
    servfail: bool = False

    @property
    def label(self) -> str | None:
        if self.herrno == "OK":
            return None
        if self.herrno == "HOST_NOT_FOUND":
            return "NXDOMAIN"
        if self.herrno == "NO_DATA":
            return "NODATA"
        if self.herrno == "TRY_AGAIN":
            if self.errno == "ECONNREFUSED":
                return "refused"
            return "SERVFAIL" if self.servfail else "timeout"
        return "NO_RECOVERY"


# ------------------------------------------------------------------ the resolver
class Resolver:
    """glibc's stub resolver in one network namespace (a pod)."""

    def __init__(self, netns, resolv_conf: ResolvConf):
        self.netns = netns
        self.conf = resolv_conf
        # RES_SNGLKUP / RES_SNGLKUPREOP: set by the options, and by send_dg for
        # good once a server is seen to drop one of two parallel queries
        self.single_request = resolv_conf.single_request or resolv_conf.single_request_reopen
        self.single_request_reopen = resolv_conf.single_request_reopen

    @classmethod
    def for_pod(cls, cluster, namespace: str, name: str) -> "Resolver":
        """The resolver of a running pod of an emu.cluster.Cluster."""
        settings = cluster.state.settings
        conf = ResolvConf.for_pod(namespace, str(settings.dns_service_ip), settings.cluster_domain)
        return cls(cluster.pod(namespace, name), conf)

    @property
    def engine(self):
        return self.netns.engine

    def resolve(self, name: str, on_done: Callable[[Resolution], None] | None = None,
                family: str = "unspec", at: int | None = None) -> Resolution:
        """getaddrinfo(name, AF_UNSPEC|AF_INET|AF_INET6) at virtual time `at`
        (now by default). Returns the Resolution at once; it is filled in as
        the engine runs, and on_done(resolution) is called when it is complete."""
        if family not in FAMILIES:
            raise EmuError(f"resolve {name!r}: family must be one of {', '.join(FAMILIES)}")
        if not name or len(name.rstrip(".")) > 253 or ".." in name:
            raise EmuError(f"resolve {name!r}: not a valid host name")
        engine = self.engine
        start = engine.now if at is None else max(int(at), engine.now)
        result = Resolution(name, family, start)
        lookup = _Lookup(self, result, on_done)
        if start > engine.now:
            engine.at(start, lambda e: lookup.start())
        else:
            lookup.start()
        return result


class _Lookup:
    """One getaddrinfo call: the search walk as a generator of candidate names,
    each step a _Step that sends and waits on the virtual clock."""

    def __init__(self, resolver: Resolver, result: Resolution, on_done):
        self.r = resolver
        self.result = result
        self.on_done = on_done
        self.walk = None

    def start(self) -> None:
        name = self.result.name
        try:  # a numeric address: getaddrinfo answers without asking anyone
            addr = ipaddress.ip_address(name)
        except ValueError:
            addr = None
        if addr is not None:
            wanted = {"unspec": (4, 6), "inet": (4,), "inet6": (6,)}[self.result.family]
            if addr.version in wanted:
                self.result.addresses = [str(addr)]
            else:
                self.result.error = "NO_RECOVERY"
            self._finish()
            return
        self.walk = self._search(name)
        self._advance(None)

    def _search(self, name: str):
        """__res_context_search: yields the names to query, receives each step's result."""
        conf = self.r.conf
        dots = name.count(".")
        trailing = name.endswith(".")
        saved, tried_as_is, root_on_list = None, False, False
        got_nodata = got_servfail = False
        last = _StepResult("HOST_NOT_FOUND")   # "true if we never query"
        if dots >= conf.ndots or trailing:
            r = yield name
            if r.herrno == "OK" or trailing:
                return r
            saved, tried_as_is, last = r, True, r
        if dots == 0 or not trailing:  # RES_DEFNAMES and RES_DNSRCH are on by default
            for domain in conf.search:
                domain = domain[1:] if domain.startswith(".") else domain
                root_on_list |= domain == ""
                r = yield f"{name}.{domain}" if domain else f"{name}."
                if r.herrno == "OK":
                    return r
                last = r
                if r.errno == "ECONNREFUSED":   # no server present: give up
                    return r
                if r.herrno == "NO_DATA":
                    got_nodata = True
                elif r.herrno == "HOST_NOT_FOUND":
                    pass
                elif r.herrno == "TRY_AGAIN" and r.servfail:
                    got_servfail = True
                else:
                    break   # anything else (a timeout) ends the walk; the name as is is still tried
        if not (tried_as_is or root_on_list):
            r = yield name
            if r.herrno == "OK":
                return r
            last = r
        if saved is not None:
            return saved
        if got_nodata:
            return _StepResult("NO_DATA")
        if got_servfail:
            return _StepResult("TRY_AGAIN", servfail=True)
        return last

    def _advance(self, step_result) -> None:
        try:
            candidate = self.walk.send(step_result)
        except StopIteration as stop:
            final: _StepResult = stop.value
            self.result.addresses = list(final.addresses)
            self.result.error = final.label
            self._finish()
            return
        _Step(self, candidate).start()

    def _finish(self) -> None:
        self.result.finished_ns = self.r.engine.now
        if self.on_done is not None:
            self.on_done(self.result)


class _Step:
    """__res_context_query + __res_context_send + send_dg for one candidate name."""

    def __init__(self, lookup: _Lookup, name: str):
        self.lookup = lookup
        self.r = lookup.r
        self.qname = name                       # as asked (maybe with a trailing dot)
        self.shown = name[:-1] if name.endswith(".") else name
        rng = self.r.engine.rng
        # res_mkquery: a random id per query, kept for the retransmissions
        self.qtypes = FAMILIES[lookup.result.family]
        self.ids = [int(rng.integers(0, 65536)) for _ in self.qtypes]
        self.try_index = 0
        self.ns_index = 0
        self.gotsomewhere = False
        self.servfail = False   # the answer buffer holds a SERVFAIL
        self.port = None        # the UDP socket (its local port) while open
        self.ip_id = 0
        self.token = 0          # invalidates timers of earlier sends
        self.finished = False

    # -- the socket ------------------------------------------------------------------
    def _open(self) -> None:
        ns = self.r.netns
        rng = self.r.engine.rng
        lo, hi = EPHEMERAL_PORTS
        while True:
            port = int(rng.integers(lo, hi + 1))
            if (ipv4.PROTO_UDP, port) not in ns.sockets:
                break
        self.port = port
        self.ip_id = int(rng.integers(0, 65536))  # inet_id is random at connect()
        ns.bind(ipv4.PROTO_UDP, port, self._receive)

    def _close(self) -> None:
        if self.port is not None:
            self.r.netns.sockets.pop((ipv4.PROTO_UDP, self.port), None)
            self.port = None

    # -- tries -------------------------------------------------------------------------
    def start(self) -> None:
        self._try()

    @property
    def server(self) -> str:
        return self.r.conf.nameservers[self.ns_index]

    def _try(self) -> None:
        """One send_dg: (re)open the socket, send, arm the timer."""
        if self.port is None:
            self._open()
        nscount = len(self.r.conf.nameservers)
        seconds = self.r.conf.timeout << self.ns_index
        if self.ns_index > 0:
            seconds //= nscount
        self.seconds = max(seconds, 1)
        self._retry()

    def _retry(self) -> None:
        """send_dg's `retry:` label: fresh state, both queries (or the first one) out."""
        self.received: dict[int, str] = {}   # query index -> rcode
        self.good_first = False              # resplen > 1: a usable answer in buffer 1
        self.sent: list[Query | None] = [None] * len(self.qtypes)
        self.token += 1
        token = self.token
        engine = self.r.engine
        self._send(0)
        if len(self.qtypes) > 1 and not self.r.single_request:
            self._send(1)
        engine.at(engine.now + self.seconds * NS_PER_SEC, lambda e: self._timeout(token))

    def message(self, k: int) -> bytes:
        """res_mkquery's message for query k: its id, RD, one question, no EDNS."""
        from scapy.layers.dns import DNS, DNSQR

        return bytes(DNS(id=self.ids[k], rd=1, qd=DNSQR(qname=self.qname, qtype=self.qtypes[k])))

    def _send(self, k: int) -> None:
        from scapy.layers.inet import IP, UDP

        ns, engine = self.r.netns, self.r.engine
        server = self.server
        r = ns.route(ipv4.aton(server))
        if r < 0:
            raise EmuError(f"{ns.name}: nameserver {server}: Network is unreachable")
        src = ipv4.ntoa(ns.source_for(ns.routes[r]))
        qtype = self.qtypes[k]
        pkt = (IP(src=src, dst=server, ttl=ipv4.DEFAULT_TTL, id=self.ip_id, flags="DF")
               / UDP(sport=self.port, dport=DNS_PORT) / self.message(k))
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        attempt = self.try_index + 1
        note = f"dns query {qtype} {self.shown}" + (f" (attempt {attempt})" if attempt > 1 else "")
        query = Query(self.shown, qtype, self.ids[k], server, self.port, attempt, engine.now, 0)
        self.sent[k] = query
        self.lookup.result.queries.append(query)
        query.pkt_id = ns.send_ip(engine, bytes(pkt), engine.now, note=note)

    def _next(self) -> None:
        """`goto next_ns`: the next nameserver, then the next try; after the
        last, res_send fails (ETIMEDOUT if any server was heard from or timed
        out, else ECONNREFUSED)."""
        self.token += 1
        self.ns_index += 1
        if self.ns_index >= len(self.r.conf.nameservers):
            self.ns_index = 0
            self.try_index += 1
        if self.try_index >= self.r.conf.attempts:
            errno = "ETIMEDOUT" if self.gotsomewhere else "ECONNREFUSED"
            self._end(_StepResult("TRY_AGAIN", errno=errno, servfail=self.servfail))
            return
        self._try()

    def _end(self, result: _StepResult) -> None:
        self.finished = True
        self.token += 1
        self._close()
        self.lookup._advance(result)

    # -- events ------------------------------------------------------------------------
    def _timeout(self, token: int) -> None:
        if token != self.token or self.finished:
            return
        if self.good_first and len(self.received) < len(self.sent):
            # one answer came, the other did not: glibc assumes a server that
            # cannot take two queries at once and switches mode for good
            if not self.r.single_request:
                self.r.single_request = True
                self._retry()
                return
            if not self.r.single_request_reopen:
                self.r.single_request_reopen = True
                self._close()
                self._open()
                self._retry()
                return
            self._complete()  # *resplen2 = 1: use the one answer there is
            return
        self.gotsomewhere = True
        self._next()   # the socket stays open: the next try reuses its port

    def _receive(self, netns, frame: bytes, l3: int, time: int) -> None:
        from scapy.layers.dns import DNS
        from scapy.layers.inet import ICMP, IP, UDP

        if self.finished:
            return
        ip = IP(frame[l3:])
        if ip.proto == ipv4.PROTO_ICMP:
            if ip.haslayer(ICMP):
                self._icmp(ip[ICMP])
            return
        if not ip.haslayer(UDP):
            return
        udp = ip[UDP]
        # res_ourserver_p: from the nameserver we asked, port 53
        if ip.src != self.server or udp.sport != DNS_PORT:
            return
        try:
            msg = DNS(bytes(udp.payload))
        except Exception:
            return
        if not msg.qr:
            return
        self.gotsomewhere = True   # send_dg: something was read from the server
        k = next((i for i, q in enumerate(self.sent)
                  if q is not None and i not in self.received and self.ids[i] == msg.id), None)
        if k is None:
            return   # an answer to an old query: ignored
        qd = msg.qd[0] if msg.qd else None
        if qd is not None:  # res_queriesmatch
            if (qd.qname.decode(errors="replace").rstrip(".").lower() != self.shown.lower()
                    or qd.qtype != QTYPES[self.qtypes[k]]):
                return
        rcode = RCODES.get(msg.rcode, str(msg.rcode))
        query = self.sent[k]
        query.rcode, query.answered_ns = rcode, time
        query.answers = [str(rr.rdata) for rr in (msg.an or []) if rr.type in (1, 28)]
        first = not self.received
        if rcode in _REJECTED:
            self.servfail |= first  # the first answer is read into the answer buffer
            if self.received and any(c not in _REJECTED for c in self.received.values()):
                self.received[k] = rcode
                self._complete()
                return
            self.received[k] = rcode
            if len(self.received) < len(self.qtypes):
                return  # waiting for a possible second answer (never sent in single-request mode)
            self._close()   # next_ns: __res_iclose
            self._next()
            return
        if rcode == "NOERROR" and not msg.ancount and not msg.aa and not msg.ra and not msg.arcount:
            self.received[k] = rcode   # "referred query": next server
            self._close()
            self._next()
            return
        if msg.tc:
            query.tc = True
            self._use_tcp()
            return
        self.received[k] = rcode
        if first:
            self.good_first = True
            self.servfail = False
        if len(self.received) == len(self.qtypes):
            self._complete()
        elif self.r.single_request and self.sent[1] is None:
            if self.r.single_request_reopen:
                self._close()
                self._open()
            self._send(1)

    def _use_tcp(self) -> None:
        """send_dg saw TC: v_circuit = 1, __res_iclose, `goto same_ns` -> send_vc."""
        self.token += 1   # the UDP wait is over
        self._close()
        _VirtualCircuit(self).start()

    def _icmp(self, icmp) -> None:
        """A hard ICMP error on the connected socket: poll says POLLERR, send_dg
        closes the socket and the next server/try goes on (gotsomewhere unchanged)."""
        from emu.wire import icmp as icmp_names

        hard = (icmp.type == 3 and icmp.code in _HARD_UNREACH) or icmp.type == 12
        if not hard:
            return  # a soft error (host/net unreachable, time exceeded): the socket never sees it
        waiting = [q for i, q in enumerate(self.sent) if q is not None and i not in self.received]
        for q in waiting:
            q.icmp = icmp_names.name(icmp.type, icmp.code)
        self._close()
        self._next()

    def _complete(self) -> None:
        """Both answers in (or as many as glibc keeps): __res_context_query's verdict."""
        good = [(i, c) for i, c in self.received.items() if c not in _REJECTED]
        addresses = [a for i, _ in sorted(good) for a in self.sent[i].answers]
        if addresses:
            self._end(_StepResult("OK", addresses))
            return
        codes = [c for _, c in good]
        if "NXDOMAIN" in codes:
            herrno = "HOST_NOT_FOUND"
        elif codes and all(c == "NOERROR" for c in codes):
            herrno = "NO_DATA"
        else:
            herrno = "NO_RECOVERY"
        self._end(_StepResult(herrno))


# errno of send_vc's failed connect/read, from emu.hosts.tcp's reasons
_TCP_ERRNO = {"refused": "ECONNREFUSED", "timeout": "ETIMEDOUT", "unreachable": "EHOSTUNREACH",
              "reset": "ECONNRESET"}


class _VirtualCircuit:
    """send_vc for one step after a truncated UDP answer: every query of the
    step over one TCP connection to the step's current nameserver."""

    def __init__(self, step: _Step):
        self.step = step
        self.connreset = False   # one ECONNRESET is retried on the same server
        self.finished = False
        self.client = None

    def start(self) -> None:
        """send_vc's `same_ns`: connect, write all queries at once (writev), read."""
        from emu.hosts.dns_tcp import DnsTcpClient

        step = self.step
        self.sent: list[Query] = []
        self.received: dict[int, str] = {}
        client = DnsTcpClient(step.r.netns, step.server, self._answer, on_error=self._failed)
        eof = client.conn.on_closed
        client.conn.on_closed = lambda: (eof(), self._eof())
        self.client = client
        engine = step.r.engine
        for k, qtype in enumerate(step.qtypes):
            query = Query(step.shown, qtype, step.ids[k], step.server, client.conn.lport,
                          step.try_index + 1, engine.now, -1, protocol="tcp")
            self.sent.append(query)
            step.lookup.result.queries.append(query)
        client.query(*(step.message(k) for k in range(len(step.qtypes))))

    def _answer(self, data: bytes) -> None:
        from scapy.layers.dns import DNS

        if self.finished:
            return
        try:
            msg = DNS(data)
        except Exception:
            return
        k = next((i for i, q in enumerate(self.sent) if i not in self.received and q.id == msg.id), None)
        if k is None:
            return   # "old answer (unexpected)": read the next one
        query = self.sent[k]
        query.rcode = RCODES.get(msg.rcode, str(msg.rcode))
        query.answered_ns = self.step.r.engine.now
        query.answers = [str(rr.rdata) for rr in (msg.an or []) if rr.type in (1, 28)]
        query.tc = bool(msg.tc)
        self.received[k] = query.rcode
        if len(self.received) == len(self.sent):
            self.finished = True
            self._complete()

    def _complete(self) -> None:
        """Both answers read: no rcode check in send_vc, __res_context_query decides."""
        step = self.step
        step.sent, step.received = self.sent, self.received
        codes = [self.received[i] for i in sorted(self.received)]
        if all(c in _REJECTED for c in codes):
            step._end(_StepResult("TRY_AGAIN", servfail=codes[0] == "SERVFAIL"))
            return
        step._complete()

    def _failed(self, reason: str) -> None:
        """connect() or read() failed: *terrno = errno, `return 0` -> next_ns."""
        if self.finished:
            return
        errno = _TCP_ERRNO.get(reason, "EIO")
        if errno == "ECONNRESET" and not self.connreset:
            self.connreset = True
            self.start()
            return
        self._next(errno)

    def _eof(self) -> None:
        """read() returned 0 before every answer was in: next_ns."""
        if not self.finished:
            self._next("EPIPE")

    def _next(self, errno: str) -> None:
        """`goto next_ns` with v_circuit set: the remaining nameservers over TCP,
        no further try; after the last, res_send fails with terrno."""
        self.finished = True
        step = self.step
        step.ns_index += 1
        if step.ns_index < len(step.r.conf.nameservers):
            _VirtualCircuit(step).start()
            return
        step._end(_StepResult("TRY_AGAIN", errno=errno))
