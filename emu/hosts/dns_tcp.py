"""DNS over TCP (RFC 1035 4.2.2, RFC 7766): CoreDNS's TCP listener on port
53 and a small client, on the TCP endpoints of emu.hosts.tcp.

    server = CoreDnsTcp(zone).serve(pod)                 # next to CoreDNS(zone).serve(pod)
    client = query_tcp(pod_a, "10.96.0.10", query_bytes, on_answer)
    client = query_tcp(pod_a, ip, [q1, q2], on_answer)   # pipelined on one connection
    client = query_tcp(pod_a, ip, q1, on_answer, keep_open=True); client.query(q2); client.close()

Every message on the stream carries a two-byte length prefix. The server
behaves as CoreDNS's, which is miekg/dns's `Server.serveTCPConn`
(github.com/miekg/dns server.go): messages on a connection are read and
answered one after the other, in order; the answer and its prefix go out in
one write. The connection stays open until
- the client closes it (EOF on the next read: the server closes its side),
- a read times out: the first read of a connection gets the read timeout
  (`dnsTimeout`, 2 s), every later one the idle timeout (`tcpIdleTimeout`,
  8 s), the deadline set when the read starts; then the server closes
  (a FIN, the server becomes the active closer),
- `maxTCPQueries` (128) messages have been answered,
- a zero length prefix arrives (ErrShortRead).
Those are miekg's defaults, which CoreDNS used as they were until the
`timeouts` plugin (CoreDNS 1.10.1) let a Corefile set read/write/idle; the
values are constructor arguments here (`max_queries=-1`: no limit).

Answers come from the same zone as the UDP server (emu.hosts.coredns) with
`transport="tcp"`: no truncation below 64 KiB, so a reply too large for 512
bytes of UDP (TC set there) comes whole. Names outside the cluster get
SERVFAIL, as over UDP. Not modelled: the write timeout, FORMERR for an
unparsable message (it is ignored), TCP keepalive, edns-tcp-keepalive
(RFC 7828: CoreDNS does not send it).

The client (glibc's send_vc, roughly): connect, write the queries (all at
once when several are given, as glibc writes A and AAAA together), hand each
answer to `on_answer(answer_bytes)` in order, and close (FIN, the client is
the active closer and keeps TIME_WAIT) once every answer is in, unless
`keep_open`. An EOF from the server closes the client's side too;
`on_error(reason)` gets connect errors ("refused", "timeout", ...).
"""
from __future__ import annotations

from emu.control import dns
from emu.errors import EmuError
from emu.hosts.coredns import DNS_PORT, _servfail
from emu.hosts.tcp import SEC, Tcp

READ_TIMEOUT_NS = 2 * SEC    # miekg/dns dnsTimeout: the first read of a connection
IDLE_TIMEOUT_NS = 8 * SEC    # miekg/dns tcpIdleTimeout: every later read
MAX_TCP_QUERIES = 128        # miekg/dns maxTCPQueries
MAX_MSG = 65535


def frame(message: bytes) -> bytes:
    """A DNS message as it goes on a TCP stream: two-byte length, then the message."""
    if not 0 < len(message) <= MAX_MSG:
        raise EmuError(f"dns over tcp: message of {len(message)} bytes")
    return len(message).to_bytes(2, "big") + bytes(message)


def _qname(message: bytes) -> str:
    from scapy.layers.dns import DNS

    try:
        q = DNS(message)
        return q.qd[0].qname.decode(errors="replace") if q.qd else "?"
    except Exception:  # pragma: no cover - scapy rarely raises
        return "?"


class CoreDnsTcp:
    """The TCP side of one CoreDNS pod's server (port 53).

    `zone` is a Zone, or the pod's UDP server (emu.hosts.coredns.CoreDNS):
    then its zone is read at every query, so the zone updates a cluster
    gives the UDP server (`server.zone = zone`) reach TCP as well."""

    def __init__(self, zone, *, read_timeout_ns: int = READ_TIMEOUT_NS,
                 idle_timeout_ns: int = IDLE_TIMEOUT_NS, max_queries: int = MAX_TCP_QUERIES):
        self._zone = zone
        self.read_timeout_ns = read_timeout_ns
        self.idle_timeout_ns = idle_timeout_ns
        self.max_queries = max_queries
        self.queries = 0
        self.sessions: list[_Session] = []   # every accepted connection, for tests and `show`
        self.listener = None

    @property
    def zone(self) -> dns.Zone:
        return self._zone if isinstance(self._zone, dns.Zone) else self._zone.zone

    @zone.setter
    def zone(self, zone) -> None:
        self._zone = zone

    def serve(self, netns, port: int = DNS_PORT) -> "CoreDnsTcp":
        self.listener = Tcp.of(netns).listen(port, self._accept)
        return self

    def _accept(self, conn) -> None:
        self.sessions.append(_Session(self, conn))


class _Session:
    """One accepted connection: miekg's read loop, driven by callbacks."""

    def __init__(self, server: CoreDnsTcp, conn):
        self.server, self.conn = server, conn
        self.engine = conn.engine
        self.buf = bytearray()
        self.answered = 0
        # why it ended: "eof", "read timeout", "idle timeout", "max queries", "short read", "error"
        self.closed_by: str | None = None
        self.last_answer_ns: int | None = None
        self._gen = 0
        conn.on_data = self._on_data
        conn.on_closed = lambda: self._close("eof")
        conn.on_error = lambda reason: self._stop("error")
        self._arm(server.read_timeout_ns, "read timeout")

    def _arm(self, delay: int, why: str) -> None:
        self._gen += 1
        gen = self._gen
        self.engine.at(self.engine.now + delay, lambda e: gen == self._gen and self._close(why))

    def _on_data(self, data: bytes) -> None:
        if self.closed_by is not None:
            return
        self.buf += data
        while len(self.buf) >= 2:
            n = int.from_bytes(self.buf[:2], "big")
            if n == 0:
                self._close("short read")
                return
            if len(self.buf) < 2 + n:
                return  # the rest of the message is still on its way; the deadline stands
            message = bytes(self.buf[2:2 + n])
            del self.buf[:2 + n]
            self._answer(message)
            self.answered += 1
            limit = self.server.max_queries
            if limit != -1 and self.answered >= limit:
                self._close("max queries")
                return
            self._arm(self.server.idle_timeout_ns, "idle timeout")

    def _answer(self, message: bytes) -> None:
        self.server.queries += 1
        answer = self.server.zone.to_wire(message, transport="tcp", forward=_servfail)
        if answer is None:
            return  # a response or unreadable: miekg's default accept func drops it
        self.last_answer_ns = self.engine.now
        self.conn.send(frame(answer))

    def _close(self, why: str) -> bool:
        if self.closed_by is None:
            self.closed_by = why
            self._gen += 1
            self.conn.close()
        return True

    def _stop(self, why: str) -> None:
        if self.closed_by is None:
            self.closed_by = why
        self._gen += 1


class DnsTcpClient:
    """A client's DNS connection: queries written with their length prefix,
    answers handed over in order."""

    def __init__(self, netns, server_ip: str, on_answer, port: int = DNS_PORT, *,
                 on_error=None, keep_open: bool = False):
        self.on_answer, self.on_error, self.keep_open = on_answer, on_error, keep_open
        self.answers: list[bytes] = []
        self.pending = 0
        self.error: str | None = None
        self.buf = bytearray()
        self._closed = False
        self.conn = Tcp.of(netns).connect(server_ip, port, None, self._failed)
        self.conn.on_data = self._on_data
        self.conn.on_closed = self.close  # EOF from the server: close our side

    def query(self, *messages: bytes) -> None:
        """Write more queries (queued until the handshake is done)."""
        if self._closed:
            raise EmuError("dns over tcp: query on a closed connection")
        self.pending += len(messages)
        self.conn.send(b"".join(frame(m) for m in messages))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close()

    def _on_data(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            n = int.from_bytes(self.buf[:2], "big")
            if len(self.buf) < 2 + n:
                return
            answer = bytes(self.buf[2:2 + n])
            del self.buf[:2 + n]
            self.answers.append(answer)
            self.pending = max(self.pending - 1, 0)
            if self.on_answer:
                self.on_answer(answer)
        if not self.pending and not self.keep_open:
            self.close()

    def _failed(self, reason: str) -> None:
        self.error = reason
        self._closed = True
        if self.on_error:
            self.on_error(reason)


def query_tcp(netns, server_ip: str, query_bytes, on_answer, port: int = DNS_PORT, *,
              on_error=None, keep_open: bool = False) -> DnsTcpClient:
    """Connect from `netns` to server_ip:port, send the query (bytes, or a list
    of them pipelined in one write), call on_answer(answer_bytes) for each
    answer, then close. Returns the client (its `conn`, `answers`)."""
    client = DnsTcpClient(netns, server_ip, on_answer, port, on_error=on_error, keep_open=keep_open)
    messages = [query_bytes] if isinstance(query_bytes, (bytes, bytearray)) else list(query_bytes)
    if messages:
        client.query(*messages)
    return client
