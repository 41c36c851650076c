"""UDP in pods: a server that answers like `agnhost netexec --udp-port`, and a
probe that behaves like `echo hostname | nc -u -w TIMEOUT HOST PORT`.

    UdpServer(pod, port=8081, hostname="web-abc").start()
    probe = UdpProbe(client, "10.96.0.20", 8081).start()
    c.engine.run()
    probe.status, probe.reply, probe.responder      # "open", b"web-abc", "10.244.1.3"

Server (agnhost netexec's UDP handler): a datagram "hostname" is answered
with the pod's name, "echo MSG" with MSG, "clientip" with the sender's
address and port as the server sees them (after any SNAT); anything else
gets no answer. The answer goes from the port it was sent to.

Probe: one datagram from a random ephemeral port (Linux's
udp_lib_get_port picks at random in 32768-60999), DF set as Linux UDP
sockets do (IP_PMTUDISC_WANT). Outcome: "open" (an answer came),
"refused" (ICMP port unreachable: the connected socket's ECONNREFUSED),
"unreachable" (another ICMP destination unreachable), or "timeout" (no
answer within `timeout_ns`; with UDP that is also what an open port that
does not answer looks like, as nc reports it).
"""
from __future__ import annotations

from dataclasses import dataclass

from emu.errors import EmuError
from emu.hosts.outcome import Outcome
from emu.wire import icmp as icmp_names
from emu.wire import ipv4

EPHEMERAL_PORTS = (32768, 60999)
NS_PER_SEC = 1_000_000_000


def _datagram(src: str, dst: str, sport: int, dport: int, payload: bytes, ip_id: int) -> bytes:
    from scapy.layers.inet import IP, UDP

    return bytes(IP(src=src, dst=dst, ttl=ipv4.DEFAULT_TTL, id=ip_id, flags="DF")
                 / UDP(sport=sport, dport=dport) / payload)


class UdpServer:
    def __init__(self, netns, port: int = 8081, hostname: str | None = None):
        self.netns, self.port = netns, port
        self.hostname = hostname or netns.name
        self.requests = 0

    def start(self) -> "UdpServer":
        if (ipv4.PROTO_UDP, self.port) in self.netns.sockets:
            raise EmuError(f"{self.netns.name}: UDP port {self.port} is already bound")
        self.netns.bind(ipv4.PROTO_UDP, self.port, self._receive)
        return self

    def stop(self) -> None:
        self.netns.sockets.pop((ipv4.PROTO_UDP, self.port), None)

    def answer(self, data: bytes, client: str) -> bytes | None:
        text = data.decode("utf-8", "replace").strip()
        if text == "hostname":
            return self.hostname.encode()
        if text.startswith("echo "):
            return text[5:].encode()
        if text == "clientip":
            return client.encode()
        return None

    def _receive(self, netns, frame: bytes, l3: int, time: int) -> None:
        from scapy.layers.inet import IP, UDP

        ip = IP(bytes(frame[l3:]))
        if ip.proto != ipv4.PROTO_UDP or not ip.haslayer(UDP):
            return  # an ICMP error about an answer we sent: nobody is told
        udp = ip[UDP]
        self.requests += 1
        reply = self.answer(bytes(udp.payload), f"{ip.src}:{udp.sport}")
        if reply is not None:
            ip_id = int(netns.engine.rng.integers(0, 65536))
            netns.send_ip(netns.engine, _datagram(ip.dst, ip.src, udp.dport, udp.sport, reply, ip_id),
                          time, note=f"udp answer from :{udp.dport}")


@dataclass
class UdpProbe(Outcome):
    """`echo MESSAGE | nc -u -w TIMEOUT DST PORT` from `netns`."""
    netns: object
    dst: str
    port: int
    message: bytes = b"hostname"
    timeout_ns: int = 1 * NS_PER_SEC
    status: str | None = None       # open | refused | unreachable | timeout
    reply: bytes | None = None
    responder: str | None = None    # who answered (or sent the ICMP error)
    local_port: int | None = None
    started_ns: int | None = None
    finished_ns: int | None = None
    error: str | None = None
    pkt_id: int | None = None

    def start(self, on_done=None) -> "UdpProbe":
        ns, engine = self.netns, self.netns.engine
        self.on_done = on_done
        r = ns.route(ipv4.aton(self.dst))
        if r < 0:
            raise EmuError(f"nc -u {self.dst} {self.port} from {ns.name}: Network is unreachable")
        lo, hi = EPHEMERAL_PORTS
        while (port := int(engine.rng.integers(lo, hi + 1))) and (ipv4.PROTO_UDP, port) in ns.sockets:
            pass
        self.local_port, self.started_ns = port, engine.now
        ns.bind(ipv4.PROTO_UDP, port, self._receive)
        src = ipv4.ntoa(ns.source_for(ns.routes[r]))
        pkt = _datagram(src, self.dst, port, self.port, self.message, int(engine.rng.integers(0, 65536)))
        self.pkt_id = ns.send_ip(engine, pkt, engine.now, note=f"udp probe to {self.dst}:{self.port}")
        engine.at(engine.now + self.timeout_ns, lambda e: self._finish("timeout", None, None))
        return self

    def _receive(self, netns, frame: bytes, l3: int, time: int) -> None:
        from scapy.layers.inet import ICMP, IP, UDP

        ip = IP(bytes(frame[l3:]))
        if ip.proto == ipv4.PROTO_ICMP and ip.haslayer(ICMP):
            icmp = ip[ICMP]
            if icmp.type == 3:
                self._finish("refused" if icmp.code == 3 else "unreachable", None, ip.src,
                             None if icmp.code == 3 else icmp_names.name(icmp.type, icmp.code))
            return
        if ip.haslayer(UDP) and ip.src == self.dst and ip[UDP].sport == self.port:
            self._finish("open", bytes(ip[UDP].payload), ip.src)

    def _finish(self, status: str, reply, responder, error: str | None = None) -> None:
        if self.done:
            return
        self.status, self.reply, self.responder = status, reply, responder
        self.error = None if status == "open" else (error or status)
        self.finished_ns = self.netns.engine.now
        self.netns.sockets.pop((ipv4.PROTO_UDP, self.local_port), None)
        if self.on_done is not None:
            self.on_done(self)
