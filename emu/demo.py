"""`emu demo`: the hand-built two-node Flannel network, a few pings through it,
and the capture. Replaced by a real cluster scenario once manifests load."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from emu.dataplane.engine import Engine
from emu.dataplane.handbuilt import two_node_flannel
from emu.hosts.ping import Ping


def default_taps(engine: Engine):
    """Every interface a user would tcpdump: all but the bridges' internal host links."""
    return [p for p in engine.ports if not p.name.endswith("cni0-bridge")]


def run_demo(output: Path, seed: int = 1, pcap_dir: Path | None = None,
             console: Console | None = None) -> Engine:
    console = console or Console()
    eng = Engine(seed=seed)
    net = two_node_flannel(eng)
    eng.capture(default_taps(eng))
    a = net["pods"]["pod-a"]
    steps = [
        ("pod-a -> pod-b across VXLAN", Ping(eng, a, "10.244.1.2", count=3).start()),
        ("pod-a -> node-2 (its flannel.1)", Ping(eng, a, "10.244.1.0", start_ns=5_000_000_000).start()),
        ("pod-a -> pod-b with TTL 1", Ping(eng, a, "10.244.1.2", ttl=1, start_ns=6_000_000_000).start()),
        ("pod-a -> 10.250.0.9 (no route)", Ping(eng, a, "10.250.0.9",
                                                start_ns=7_000_000_000).start()),
    ]
    eng.run()
    table = Table(title=f"emu demo: two-node Flannel (VXLAN) network, seed {seed}")
    for col in ("step", "seq", "outcome", "from", "virtual RTT"):
        table.add_column(col)
    for name, ping in steps:
        for e in ping.echoes:
            rtt = f"{e.rtt_ns / 1000:.0f} µs" if e.rtt_ns is not None else "-"
            table.add_row(name, str(e.seq), e.status, e.responder or "-", rtt)
    console.print(table)
    first = steps[0][1].echoes[0]
    trace = Table(title=f"trace of packet {first.pkt_id} (the first echo request)")
    for col in ("time", "hop", "where", "decision"):
        trace.add_column(col)
    for h in eng.trace(first.pkt_id):
        trace.add_row(f"{h.time_ns / 1000:.0f} µs", h.kind, h.port, h.note)
    console.print(trace)
    drops = eng.drop_summary()
    if drops:
        dt = Table(title="drops by device and reason")
        for col in ("device", "reason", "count"):
            dt.add_column(col)
        for row in drops:
            dt.add_row(*map(str, row))
        console.print(dt)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    n = eng.taps.write_pcapng(output, eng)
    console.print(f"wrote {n} frames on {len(eng.taps.port_ids)} interfaces to [bold]{output}[/bold]; "
                  f"open it in Wireshark (Decode As UDP 8472 -> VXLAN) or run "
                  f"`tshark -r {output} -d udp.port==8472,vxlan`")
    if pcap_dir is not None:
        paths = eng.taps.write_pcaps(pcap_dir)
        console.print(f"wrote {len(paths)} classic pcap files to [bold]{pcap_dir}[/bold]")
    return eng
