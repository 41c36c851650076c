"""HTTP/1.1 in pods: a server app (what `agnhost serve-hostname` or `agnhost
netexec` answer) and a client that behaves like `curl URL` run in a pod.
Both sit on emu.hosts.tcp and leave parsing and framing to h11 (sans-IO):
the bytes on the wire are h11's.

    HttpServer(pod, port=8080).start()                 # 200, body = the pod's name
    HttpServer(pod, responses={"/healthz": Response(200, body=b"ok"),
                               "/missing": Response(404, body=b"nope")}).start()
    result = curl(client, "http://web/", on_done, resolver=Resolver.for_pod(c, "default", "client"))
    c.engine.run()
    result.status, result.body, result.address, result.timings, result.error

Server (Go's net/http as agnhost runs it):
- Every path answers 200 with the hostname (the pod's name) as the body, no
  newline (`fmt.Fprintf(w, "%s", hostname)`), headers in Go's order: Date,
  Content-Length, Content-Type `text/plain; charset=utf-8`. Date is the
  virtual clock read as wall time from the Unix epoch (the capture's
  timestamps start there too).
- `responses` maps a path (the target without its query) to a Response,
  bytes/str (a 200 with that body), a (status, headers, body) tuple or a
  callable(HttpRequest) -> one of those.
- Keep-alive: requests on one connection are answered in order (pipelining
  too). A `Connection: close` request (or an HTTP/1.0 one without
  keep-alive) gets `Connection: close` in the answer (h11 adds it) and the
  server closes after the response. When the client closes (FIN), the
  server closes its side. HEAD gets the headers only. A malformed request
  gets 400 with `Connection: close`.

Client (curl 8.5.0 defaults):
- The host is resolved with the pod's stub resolver (glibc getaddrinfo,
  AF_UNSPEC: A and AAAA) unless it is an IPv4 literal; the first IPv4
  address is used (emu's TCP is IPv4 only: no Happy Eyeballs).
- Request headers in curl's order: Host (with the port only when it is not
  80), User-Agent `curl/8.5.0`, Accept `*/*`, then extra headers; an extra
  header with the name of a built-in one replaces it, one with an empty
  value removes it (`-H 'Accept:'`). With a body (curl -d), Content-Length
  and Content-Type application/x-www-form-urlencoded, method POST.
- After a complete response the client closes the connection (curl tears
  its connection cache down at exit): FIN from the client first on a
  keep-alive connection, all data read so no RST. After a `Connection:
  close` answer the client closes once the server's FIN is in (in Linux the
  FIN is processed before curl returns from reading the body), so the
  server is the active closer and no simultaneous close happens.
- No redirects followed (curl without -L). Timings on the virtual clock as
  `curl -w` reports them, from the start: time_namelookup, time_connect,
  time_starttransfer, time_total (`CurlResult.timings`, in ns).
- Errors (`CurlResult.error`, None on success; curl's exit codes in
  `exit_code`): "dns: NXDOMAIN" / "dns: NODATA" / "dns: SERVFAIL" /
  "dns: timeout" (6, Could not resolve host), "refused" (7), "unreachable"
  (7), "timeout" (28: the TCP layer gave up, or `timeout_ns`, curl's
  --max-time, passed), "reset" (56), "empty reply" (52: the server closed
  without answering), "partial" (18: closed mid-body), "protocol: ..."
  (8: h11 could not parse the response).

Left out: HTTPS/TLS, HTTP/2, proxies, redirects, cookies, chunked uploads,
100-continue, IPv6 destinations, connection reuse across curl calls.
"""
from __future__ import annotations

import email.utils
from http import HTTPStatus
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import h11

from emu.errors import EmuError
from emu.hosts.tcp import Tcp
from emu.hosts.outcome import Outcome
from emu.wire import ipv4

NS_PER_SEC = 1_000_000_000
USER_AGENT = "curl/8.5.0"
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"   # what Go's http.DetectContentType gives text

# curl's exit codes for the errors
EXIT_CODES = {"dns": 6, "refused": 7, "unreachable": 7, "timeout": 28, "reset": 56,
              "empty reply": 52, "partial": 18, "protocol": 8}


def http_date(now_ns: int) -> str:
    """The Date header for virtual time `now_ns` (seconds since the Unix epoch)."""
    return email.utils.formatdate(now_ns // NS_PER_SEC, usegmt=True)


# ------------------------------------------------------------------ server
@dataclass
class Response:
    """A configured answer: status, extra headers, body. Date,
    Content-Length and Content-Type (text/plain unless given) are added."""
    status: int = 200
    headers: list[tuple[str, str]] | dict = field(default_factory=list)
    body: bytes | str = b""

    @classmethod
    def coerce(cls, value) -> "Response":
        if isinstance(value, Response):
            return value
        if isinstance(value, (bytes, str)):
            return cls(200, [], value)
        if isinstance(value, tuple) and len(value) == 3:
            return cls(*value)
        if isinstance(value, dict):
            return cls(**value)
        raise EmuError(f"http: a response must be a Response, bytes, str, (status, headers, body) "
                       f"or a dict, not {value!r}")


@dataclass
class HttpRequest:
    """One request as the server saw it."""
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int]
    http_version: str
    received_ns: int
    status: int | None = None     # of the answer

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class HttpServer:
    """An HTTP/1.1 server app listening on `port` in a namespace (a pod)."""

    def __init__(self, netns, port: int = 8080, hostname: str | None = None,
                 responses: dict | None = None):
        self.netns = netns
        self.port = port
        # pods outside the default namespace are wired as "name.namespace"
        self.hostname = hostname if hostname is not None else netns.name.split(".", 1)[0]
        self.responses = dict(responses or {})
        self.requests: list[HttpRequest] = []
        self.connections = 0
        self.listener = None

    def start(self) -> "HttpServer":
        if self.listener is None:
            self.listener = Tcp.of(self.netns).listen(self.port, self._accept)
        return self

    def stop(self) -> None:
        """Stop listening; connections already open go on."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    # -- answers -----------------------------------------------------------------------
    def answer(self, req: HttpRequest) -> Response:
        spec = self.responses.get(req.path, self.responses.get(req.target))
        if spec is None:
            return Response(200, [], self.hostname)
        if callable(spec):
            spec = spec(req)
        return Response.coerce(spec)

    def _accept(self, conn) -> None:
        self.connections += 1
        _ServerConn(self, conn)


class _ServerConn:
    def __init__(self, server: HttpServer, conn):
        from emu.wire import ipv4

        self.server, self.conn = server, conn
        self.engine = conn.engine
        self.h = h11.Connection(h11.SERVER)
        self.client = (ipv4.ntoa(conn.rip), conn.rport)
        self.req: HttpRequest | None = None
        self.closed = False
        conn.on_data = self._data
        conn.on_closed = self._eof
        conn.on_error = lambda reason: setattr(self, "closed", True)

    def _data(self, data: bytes) -> None:
        if self.closed:
            return
        self.h.receive_data(bytes(data))
        self._pump()

    def _eof(self) -> None:
        if self.closed:
            return
        self.h.receive_data(b"")
        self._pump()
        self._close()   # the client is done (FIN): Go's server closes its side too

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close()

    def _pump(self) -> None:
        while not self.closed:
            try:
                ev = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(exc)
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                self.req = HttpRequest(
                    ev.method.decode("ascii"), ev.target.decode("ascii", "replace"),
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers.raw_items()],
                    b"", self.client, ev.http_version.decode("ascii"), self.engine.now)
            elif isinstance(ev, h11.Data):
                self.req.body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                self._respond(self.req)
                if self.closed:
                    return
                if self.h.our_state is h11.MUST_CLOSE:
                    self._close()
                    return
                if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
                    self.h.start_next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                self._close()
                return

    def _respond(self, req: HttpRequest) -> None:
        self.server.requests.append(req)
        try:
            resp = self.server.answer(req)
        except Exception as exc:  # a handler bug is the app's 500, as Go's server recovers
            resp = Response(500, [], f"handler error: {exc}")
        self._send(resp, head=req.method == "HEAD")
        req.status = resp.status

    def _send(self, resp: Response, head: bool = False) -> None:
        body = resp.body.encode() if isinstance(resp.body, str) else bytes(resp.body)
        extra = list(resp.headers.items()) if isinstance(resp.headers, dict) else list(resp.headers)
        given = {k.lower() for k, _ in extra}
        headers = [("Date", http_date(self.engine.now))]
        if "content-length" not in given and "transfer-encoding" not in given:
            headers.append(("Content-Length", str(len(body))))
        if "content-type" not in given and (body or resp.status == 200):
            headers.append(("Content-Type", DEFAULT_CONTENT_TYPE))
        headers += extra
        try:
            reason = HTTPStatus(resp.status).phrase   # Go's http.StatusText
        except ValueError:
            reason = ""
        out = self.h.send(h11.Response(status_code=resp.status, headers=headers, reason=reason))
        if body and not head:
            out += self.h.send(h11.Data(data=body))
        out += self.h.send(h11.EndOfMessage())
        self.conn.send(out)

    def _bad_request(self, exc) -> None:
        if self.h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._send(Response(exc.error_status_hint, [("Connection", "close")],
                                    f"{exc.error_status_hint} Bad Request"))
            except h11.LocalProtocolError:
                pass
        self._close()


# ------------------------------------------------------------------ client
@dataclass
class CurlResult(Outcome):
    """What `curl -w` and the response tell; filled in as the engine runs."""
    url: str
    method: str
    host: str
    port: int
    started_ns: int
    status: int | None = None
    reason: str | None = None
    http_version: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    address: str | None = None           # the address connected to (remote_ip)
    local_port: int | None = None
    resolution: object | None = None     # the resolver's Resolution, if a name was resolved
    error: str | None = None
    dns_ns: int | None = None            # absolute virtual times of each phase's end
    connect_ns: int | None = None
    first_byte_ns: int | None = None
    finished_ns: int | None = None
    connection: object | None = None     # the TCP connection (emu.hosts.tcp.Connection)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def exit_code(self) -> int | None:
        if not self.done:
            return None
        if self.error is None:
            return 0
        return EXIT_CODES.get(self.error.split(":", 1)[0], 1)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def timings(self) -> dict[str, int | None]:
        """curl -w's time_namelookup, time_connect, time_starttransfer,
        time_total, in virtual ns from the start (None for phases not reached)."""
        rel = (lambda t: None if t is None else t - self.started_ns)
        return {"dns": rel(self.dns_ns), "connect": rel(self.connect_ns),
                "first_byte": rel(self.first_byte_ns), "total": rel(self.finished_ns)}


def _request_headers(host_header: str, extra, body: bytes | None) -> list[tuple[str, str]]:
    headers = [("Host", host_header), ("User-Agent", USER_AGENT), ("Accept", "*/*")]
    if body is not None:
        headers += [("Content-Length", str(len(body))),
                    ("Content-Type", "application/x-www-form-urlencoded")]
    items = list(extra.items()) if isinstance(extra, dict) else list(extra or [])
    for name, value in items:
        idx = next((i for i, (k, _) in enumerate(headers) if k.lower() == name.lower()), None)
        if value == "" or value is None:
            if idx is not None:
                del headers[idx]
        elif idx is not None:
            headers[idx] = (name, str(value))
        else:
            headers.append((name, str(value)))
    return headers


def curl(netns, url: str, on_done: Callable[[CurlResult], None] | None = None, *,
         resolver=None, cluster=None, headers=None, method: str | None = None,
         data: bytes | str | None = None, timeout_ns: int | None = None) -> CurlResult:
    """`curl URL` from a namespace, now. Returns the CurlResult at once; it is
    filled in as the engine runs and on_done(result) is called once it is
    complete (response read, or an error).

    A host name is resolved with `resolver` (an emu.hosts.resolver.Resolver),
    else with the pod's own (Resolver.for_pod) when `cluster` is given.
    `timeout_ns` is curl's --max-time (None: no limit, as curl)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise EmuError(f"curl {url}: only http:// URLs are supported")
    host = parts.hostname
    if not host:
        raise EmuError(f"curl {url}: no host in the URL")
    try:
        port = parts.port or 80
    except ValueError:
        raise EmuError(f"curl {url}: bad port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = data.encode() if isinstance(data, str) else data
    method = method or ("POST" if body is not None else "GET")
    host_header = host if port == 80 else f"{host}:{port}"
    if not ipv4.is_address(host) and resolver is None:
        resolver = _pod_resolver(netns, cluster, url)
    client = _Curl(netns, url, method, host, port, target,
                   _request_headers(host_header, headers, body), body, resolver, on_done, timeout_ns)
    client.start()
    return client.result


def _pod_resolver(netns, cluster, url):
    from emu.hosts.resolver import Resolver

    if cluster is not None:
        for (ns, name), pod in cluster.fabric.pods.items():
            if pod is netns:
                return Resolver.for_pod(cluster, ns, name)
    raise EmuError(f"curl {url}: {netns.name} has no resolver: pass resolver= or cluster=")


class _Curl:
    def __init__(self, netns, url, method, host, port, target, headers, body, resolver, on_done, timeout_ns):
        self.netns, self.engine = netns, netns.engine
        self.target, self.req_headers, self.req_body = target, headers, body
        self.resolver, self.on_done, self.timeout_ns = resolver, on_done, timeout_ns
        self.result = CurlResult(url, method, host, port, self.engine.now)
        self.h = h11.Connection(h11.CLIENT)
        self.conn = None

    def start(self) -> None:
        eng, r = self.engine, self.result
        if self.timeout_ns is not None:
            eng.at(r.started_ns + int(self.timeout_ns), lambda e: self._fail("timeout"))
        if ipv4.is_address(r.host):
            r.dns_ns = eng.now
            self._connect(r.host)
        else:
            r.resolution = self.resolver.resolve(r.host, self._resolved)

    def _resolved(self, res) -> None:
        r = self.result
        if r.done:
            return
        r.dns_ns = self.engine.now
        if res.error is not None:
            self._fail(f"dns: {res.error}")
            return
        v4 = [a for a in res.addresses if ipv4.is_address(a)]
        if not v4:
            self._fail("dns: no IPv4 address")
            return
        self._connect(v4[0])

    def _connect(self, address: str) -> None:
        r = self.result
        r.address = address
        self.conn = Tcp.of(self.netns).connect(address, r.port, self._connected, self._tcp_error)
        r.connection = self.conn
        r.local_port = self.conn.lport or None
        self.conn.on_data = self._data
        self.conn.on_closed = self._eof

    def _connected(self, conn) -> None:
        r = self.result
        if r.done:
            return
        r.connect_ns = self.engine.now
        out = self.h.send(h11.Request(method=r.method, target=self.target, headers=self.req_headers))
        if self.req_body:
            out += self.h.send(h11.Data(data=self.req_body))
        out += self.h.send(h11.EndOfMessage())
        conn.send(out)

    def _tcp_error(self, reason: str) -> None:
        self._fail(reason)

    def _data(self, data: bytes) -> None:
        r = self.result
        if r.done:
            return
        if r.first_byte_ns is None:
            r.first_byte_ns = self.engine.now
        self.h.receive_data(bytes(data))
        self._pump()

    def _eof(self) -> None:
        if self.result.done:
            return
        self.h.receive_data(b"")
        self._pump()

    def _pump(self) -> None:
        r = self.result
        while not r.done:
            try:
                ev = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                if self.h.their_state is h11.SEND_RESPONSE and r.status is None and r.first_byte_ns is None:
                    self._fail("empty reply")
                elif r.status is not None:
                    self._fail("partial")
                else:
                    self._fail(f"protocol: {exc}")
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                r.status = ev.status_code
                r.reason = ev.reason.decode("latin-1")
                r.http_version = ev.http_version.decode("ascii")
                r.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers.raw_items()]
            elif isinstance(ev, h11.Data):
                r.body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                self._finish(None)
                return
            elif isinstance(ev, h11.ConnectionClosed):
                self._fail("empty reply" if r.status is None else "partial")
                return

    def _fail(self, reason: str) -> None:
        if not self.result.done:
            self._finish(reason)

    def _finish(self, error: str | None) -> None:
        r = self.result
        r.error = error
        r.finished_ns = self.engine.now
        if self.conn is not None and self.conn.state not in ("CLOSE", "TIME_WAIT"):
            if error is None and self.h.their_state is h11.MUST_CLOSE and not self.conn.fin_received:
                # `Connection: close` answer: the server's FIN follows its last
                # byte, and the kernel has it before curl gets to close()
                self.conn.on_closed = self.conn.close
            else:
                self.conn.close()   # FIN after a complete response (or forget a SYN_SENT)
        if self.on_done is not None:
            self.on_done(r)
