"""`emu trace`: the first packet of a connection, hop by hop, with the
decision at each hop (as ovn-trace shows a packet's way through the logical
pipeline), and the first answer's way back.

Unlike ovn-trace nothing is simulated apart from the cluster: the source pod
really resolves the name (DNS packets go first), opens a TCP connection (or
sends one UDP datagram, or an ICMP echo) and the engine runs; the trace is
read from the engine's per-hop log of that packet id.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from emu.cluster import Cluster
from emu.dataplane.engine import Hop
from emu.errors import EmuError

SECOND = 1_000_000_000


@dataclass
class PacketTrace:
    pkt_id: int
    summary: str          # "TCP 10.244.0.5:40000 -> 10.96.0.20:80 SYN"
    hops: list[Hop]


@dataclass
class TraceResult:
    source: str
    target: str
    address: str | None = None          # what the name resolved to
    outcome: str = ""                   # open / refused / timeout / reply / ...
    backend: str = ""
    packets: list[PacketTrace] = field(default_factory=list)


def parse_target(target: str) -> tuple[str, int | None, str]:
    """`http://web/`, `web:80`, `10.96.0.10:53` or `10.244.1.3` -> (host, port, protocol)."""
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            raise EmuError(f"--to {target}: only http:// URLs, host:port or an address")
        try:
            return parts.hostname, parts.port or 80, "tcp"
        except ValueError:
            raise EmuError(f"--to {target}: bad port") from None
    host, sep, port = target.rpartition(":")
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise EmuError(f"--to {target}: must be a URL, host:port or an address")
        return host, int(port), "tcp"
    return target, None, "icmp"


def trace(cluster: Cluster, source: str, target: str, protocol: str | None = None) -> TraceResult:
    """Trace from pod `source` (`name` or `ns/name`, or `external`) to `target`."""
    host, port, proto = parse_target(target)
    if protocol is not None:
        if protocol not in ("tcp", "udp", "icmp"):
            raise EmuError(f"--protocol {protocol}: use tcp, udp or icmp")
        if protocol != "icmp" and port is None:
            raise EmuError(f"--to {target}: {protocol} needs a port (host:port)")
        proto = protocol
    netns, key = _source(cluster, source)
    result = TraceResult(source, target)
    engine = cluster.engine
    address = _resolve(cluster, key, host)
    result.address = address
    first = engine.pool._next_id
    if proto == "icmp":
        from emu.hosts.ping import Ping
        ping = Ping(engine, netns, address, start_ns=engine.now).start()
        engine.run(engine.now + 2 * SECOND)
        echo = ping.echoes[0]
        result.outcome = echo.status + (f" from {echo.responder}" if echo.responder else "")
    elif proto == "udp":
        from emu.hosts.udp import UdpProbe
        probe = UdpProbe(netns, address, port).start()
        engine.run()
        result.outcome = probe.status + (f": {probe.reply.decode(errors='replace')}" if probe.reply else "")
    else:
        from emu.hosts.tcp import Tcp, reason_of
        outcome = {}
        conn = Tcp.of(netns).connect(address, port, lambda c: outcome.setdefault("s", "open"),
                                     lambda e: outcome.setdefault("s", reason_of(e)))
        engine.run(engine.now + 3 * SECOND)   # the first SYN retransmission is at 1 s
        result.outcome = outcome.get("s", "no answer yet (SYN retransmitted)")
        conn.close()
        engine.run()
    result.packets = _packets(cluster, first, 2)
    for p in result.packets:
        for h in p.hops:
            if h.note.startswith("DNAT") or " DNAT " in h.note:
                result.backend = h.note
                break
        if result.backend:
            break
    return result


def _source(cluster: Cluster, source: str):
    if source == "external":
        return cluster.external, None
    ns, _, name = source.rpartition("/")
    key = (ns or "default", name)
    if key not in cluster.fabric.pods:
        pods = ", ".join(sorted(f"{k[0]}/{k[1]}" for k in cluster.fabric.pods))
        raise EmuError(f"--from {source}: no running pod {key[0]}/{key[1]} (running: {pods})")
    return cluster.pod(*key), key


def _resolve(cluster: Cluster, key, host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    outside = cluster.outside_name(host)
    if outside is not None:
        return outside
    if key is None:
        raise EmuError(f"--to {host}: the external host knows addresses, node names and "
                       "LoadBalancer Services, not cluster names")
    from emu.hosts.resolver import Resolver
    res = Resolver.for_pod(cluster, *key).resolve(host)
    cluster.engine.run()
    v4 = [a for a in res.addresses if ":" not in a]
    if not v4:
        raise EmuError(f"--to {host}: cannot resolve ({res.error or 'no IPv4 address'})")
    return v4[0]


def _packets(cluster: Cluster, first_id: int, n: int) -> list[PacketTrace]:
    """The first `n` IP packets (not ARP) created from `first_id` on, hop by hop."""
    engine = cluster.engine
    c = engine.log.columns()
    out = []
    for pid in sorted({int(i) for i in c["pkt_id"][c["pkt_id"] >= first_id].tolist()}):
        hops = engine.trace(pid)
        if not hops or hops[0].note.lower().startswith("arp"):
            continue
        first = next((h for h in hops if h.kind == "tx"), hops[0])
        out.append(PacketTrace(pid, first.note, hops))
        if len(out) == n:
            break
    return out
