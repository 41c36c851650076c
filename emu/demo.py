"""`emu demo`: the quickstart cluster (examples/quickstart) with a few
requests through it, printed as a table of steps with the first request's
path hop by hop, and written to a capture. `emu run` with scenario files
will generalise this."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from emu.cluster import Cluster
from emu.hosts.http import HttpServer, curl
from emu.hosts.ping import Ping
from emu.model import load

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart" / "manifests.yaml"
SECOND = 1_000_000_000


def run_demo(output: Path, seed: int = 1, pcap_dir: Path | None = None, manifests: Path = QUICKSTART,
             console: Console | None = None) -> Cluster:
    console = console or Console()
    c = Cluster(load([str(manifests)]), seed=seed)
    for (namespace, name), pod in c.fabric.pods.items():
        if name.startswith("web-"):
            HttpServer(pod, port=8080, hostname=name).start()
    client = c.pod("default", "client")
    steps = []
    at = 0
    for url in ["http://web/", "http://web/", "http://web/", "http://web.default.svc.cluster.local/",
                "http://empty/"]:
        c.engine.at(at, lambda e, url=url: steps.append((f"curl {url}", curl(client, url, cluster=c))))
        at += SECOND
    other = next(p for p in c.state.pods.values() if p.name.startswith("web-") and p.node != "node-1")
    c.engine.at(at, lambda e: steps.append((f"ping {other.name}", Ping(e, client, other.ip).start())))
    c.engine.run()

    table = Table(title=f"emu demo: {manifests.parent.name} cluster, seed {seed}")
    for col in ("step", "outcome", "answered by", "virtual time"):
        table.add_column(col)
    for name, result in steps:
        if isinstance(result, Ping):
            e = result.echoes[0]
            table.add_row(name, e.status, e.responder or "-", f"{e.rtt_ns / 1000:.0f} µs" if e.rtt_ns else "-")
            continue
        outcome = f"{result.status} {result.reason}" if result.status else f"error: {result.error}"
        body = result.body.decode(errors="replace") if result.status else "-"
        total = (result.finished_ns - result.started_ns) if result.finished_ns else None
        table.add_row(name, outcome, body, f"{total / 1000:.0f} µs" if total else "-")
    console.print(table)

    first = steps[0][1]
    syn = first.connection.history and _syn_packet(c, first)
    if syn is not None:
        trace = Table(title=f"the first request's SYN (packet {syn}), hop by hop")
        for col in ("time", "hop", "where", "decision"):
            trace.add_column(col)
        for h in c.engine.trace(syn):
            trace.add_row(f"{h.time_ns / 1000:.0f} µs", h.kind, h.port, h.note)
        console.print(trace)
    drops = c.engine.drop_summary()
    if drops:
        dt = Table(title="drops by device and reason")
        for col in ("device", "reason", "count"):
            dt.add_column(col)
        for row in drops:
            dt.add_row(*map(str, row))
        console.print(dt)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    n = c.engine.taps.write_pcapng(output, c.engine)
    console.print(f"wrote {n} frames on {len(c.engine.taps.port_ids)} interfaces to [bold]{output}[/bold]; "
                  f"open it in Wireshark (Decode As UDP 8472 -> VXLAN) or run "
                  f"`tshark -r {output} -d udp.port==8472,vxlan`")
    if pcap_dir is not None:
        paths = c.engine.taps.write_pcaps(pcap_dir)
        console.print(f"wrote {len(paths)} classic pcap files to [bold]{pcap_dir}[/bold]")
    return c


def _syn_packet(c: Cluster, result) -> int | None:
    """The packet id of the request's SYN: the first packet the connection sent."""
    notes = c.engine.notes
    log = c.engine.log.columns()
    want = f":{result.local_port} -> "
    for pid, note in zip(log["pkt_id"].tolist(), log["note"].tolist()):
        text = notes[note]
        if text.startswith("tcp ") and want in text and text.endswith("SYN"):
            return int(pid)
    return None
