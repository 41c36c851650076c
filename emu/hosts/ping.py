"""ping (iputils): ICMP echo requests from a namespace, with the answer to
each: a reply and its round-trip time on the virtual clock, an ICMP error
(and who sent it), or a timeout."""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.dataplane.engine import Engine
from emu.dataplane.netns import Netns
from emu.errors import EmuError
from emu.wire import icmp as icmp_names
from emu.wire import ipv4



@dataclass
class Echo:
    seq: int
    sent_ns: int
    pkt_id: int
    status: str = "timeout"      # reply | an ICMP error name | timeout
    rtt_ns: int | None = None
    responder: str | None = None
    ttl: int | None = None       # of the reply


@dataclass
class Ping:
    """`ping -c COUNT -i INTERVAL -s SIZE -t TTL [-M do] DST` from `netns`."""
    engine: Engine
    netns: Netns
    dst: str
    count: int = 1
    interval_ns: int = 1_000_000_000
    size: int = 56
    ttl: int = 64
    df: bool = True               # iputils' default PMTU discovery sets DF
    ident: int = 0
    start_ns: int = 0
    echoes: list[Echo] = field(default_factory=list)

    def start(self) -> "Ping":
        if not self.ident:  # iputils uses its pid; here each ping in a namespace gets the next id
            self.ident = 0x1000 + sum(1 for proto, _ in self.netns.sockets if proto == ipv4.PROTO_ICMP)
        if (ipv4.PROTO_ICMP, self.ident) in self.netns.sockets:
            raise EmuError(f"ping from {self.netns.name}: ICMP id {self.ident} is in use")
        if self.netns.route(ipv4.aton(self.dst)) < 0:
            raise EmuError(f"ping from {self.netns.name}: {self.dst}: Network is unreachable")
        self.netns.bind(ipv4.PROTO_ICMP, self.ident, self._receive)
        for seq in range(1, self.count + 1):
            self.engine.at(self.start_ns + (seq - 1) * self.interval_ns, self._sender(seq))
        return self

    def _sender(self, seq):
        def send(engine):
            from scapy.layers.inet import ICMP, IP

            dst = ipv4.aton(self.dst)
            src = self.netns.source_for(self.netns.routes[self.netns.route(dst)])
            pkt = IP(src=ipv4.ntoa(src), dst=self.dst, ttl=self.ttl, id=seq,
                     flags="DF" if self.df else 0) / ICMP(id=self.ident, seq=seq) / bytes(self.size)
            pid = self.netns.send_ip(engine, bytes(pkt), engine.now,
                                     note=f"ping {self.dst} icmp_seq={seq}")
            self.echoes.append(Echo(seq, engine.now, pid))
        return send

    def _receive(self, netns, frame: bytes, l3: int, time: int) -> None:
        from scapy.layers.inet import ICMP, IP, ICMPerror

        ip = IP(frame[l3:])
        icmp = ip[ICMP]
        if icmp.type == 0:
            seq, status = icmp.seq, "reply"
        else:
            if not ip.haslayer(ICMPerror):
                return
            seq = ip[ICMPerror].seq
            status = icmp_names.name(icmp.type, icmp.code)
        for echo in self.echoes:
            if echo.seq == seq and echo.rtt_ns is None:
                echo.status, echo.rtt_ns, echo.responder = status, time - echo.sent_ns, ip.src
                echo.ttl = ip.ttl
                return
