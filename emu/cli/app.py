"""The `emu` command. Commands are thin: options, then one call into the
library. Heavy modules (numba, scapy, the kernels) are imported inside the
commands so that `emu --help` and `emu --version` start fast and compile nothing."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from emu import __version__
from emu.errors import EmuError

app = typer.Typer(
    name="emu",
    help="Packet-level emulator of Kubernetes networking: real frames, Wireshark-ready captures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emu {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
) -> None:
    _state["verbose"] = verbose


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="A scenario file (kind: Scenario), e.g. examples/quickstart/scenario.yaml."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="Capture (pcapng) to write (default: <scenario name>.pcapng)."),
    pcap_dir: Path = typer.Option(None, "--pcap-dir", help="Also write one classic pcap per interface here."),
    no_capture: bool = typer.Option(False, "--no-capture", help="Run without writing a capture."),
    seed: int = typer.Option(None, help="Seed for every random choice (default: the scenario's)."),
) -> None:
    """Run a scenario: build its cluster, play its steps, check each expect, write the capture."""
    from dataclasses import replace

    from emu.cli.render import print_tables, run_report, step_progress
    from emu.scenario import load, run as run_scenario

    spec = load(str(scenario))
    if seed is not None:
        spec = replace(spec, seed=seed)
    if output is None and not no_capture:
        output = Path(f"{spec.name}.pcapng")
    with step_progress() as progress:
        report = run_scenario(spec, None if no_capture else output, None if no_capture else pcap_dir,
                              progress=progress)
    print_tables(run_report(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def trace(
    source: str = typer.Option(..., "--from", help="The pod it starts from (name or namespace/name), or external."),
    to: str = typer.Option(..., "--to", help="http://name/path, host:port, or an address (ping)."),
    files: list[str] = typer.Option(..., "--filename", "-f",
                                    help="Manifests or a scenario: a file, a folder or - for stdin (repeatable)."),
    protocol: str = typer.Option(None, "--protocol", help="tcp | udp | icmp (default: tcp with a port, icmp without)."),
    seed: int = typer.Option(None, help="Seed for every random choice (default: the scenario's, or 1)."),
) -> None:
    """The first packet to a destination (and the first answer), hop by hop, with each decision."""
    from emu.cli.render import print_tables, trace_report
    from emu.cluster import Cluster
    from emu.scenario.runner import model_for
    from emu.trace import trace as trace_path

    model, seed = model_for(files, seed, stdin=sys.stdin if "-" in files else None)
    print_tables(trace_report(trace_path(Cluster(model, seed=seed, capture=False, apps=True), source, to, protocol)))


@app.command()
def show(
    kind: str = typer.Argument(..., help="pods | services | endpoints | routes | neigh | fdb | iptables | conntrack | dns"),
    files: list[str] = typer.Option(..., "--filename", "-f",
                                    help="Manifests or a scenario: a file, a folder or - for stdin (repeatable)."),
    node: str = typer.Option(None, "--node", help="Only this node (routes, neigh, fdb, iptables, conntrack)."),
    seed: int = typer.Option(None, help="Seed for every random choice (default: the scenario's, or 1)."),
) -> None:
    """Build the cluster the manifests (or a scenario's) describe and print one of its tables."""
    from emu.cli.render import print_tables
    from emu.cluster import Cluster
    from emu.scenario.runner import model_for
    from emu.show import show as show_tables

    model, seed = model_for(files, seed, stdin=sys.stdin if "-" in files else None)
    print_tables(show_tables(Cluster(model, seed=seed, capture=False), kind, node))
    for ig in model.ignored:  # unknown kinds are listed, not fatal
        typer.echo(f"ignored: {ig.file}:{ig.line}: {ig.kind} {ig.name or ''}".rstrip(), err=True)


@app.command()
def inspect(
    capture: Path = typer.Argument(..., help="A capture emu wrote (pcapng), or any pcapng/pcap."),
    packet: int = typer.Option(None, "--packet", "-p", metavar="ID",
                               help="Follow packet ID (the 'pkt ID:' of the frame comments) across hops."),
    display_filter: str = typer.Option(None, "--filter", "-Y", metavar="EXPR",
                                       help="List the frames matching a Wireshark display filter."),
    interface: str = typer.Option(None, "--interface", "-i", metavar="NAME",
                                  help="List the frames seen on one interface, e.g. node-1/eth0."),
    limit: int = typer.Option(200, "--limit", "-n", help="List at most this many frames (0: all)."),
) -> None:
    """Read a capture with tshark (VXLAN on UDP 8472 decoded): per-interface summary, or frames, or one packet."""
    import shlex

    from rich.console import Console

    from emu import inspect as lib
    from emu.cli.render import inspect_frames, inspect_summary, print_tables

    console = Console(markup=False)  # decisions and tshark's Info hold brackets ("[ct NEW]"), not markup

    if packet is not None and (display_filter or interface):
        raise EmuError("inspect: --packet follows one packet on every interface; "
                       "it does not combine with --filter or --interface")
    if packet is not None:
        hops = lib.follow(capture, packet)
        print_tables(inspect_frames(f"packet {packet} in {capture}: {len(hops)} frames", hops, with_packet=False),
                     console)
    elif display_filter or interface:
        listed = lib.frames(capture, display_filter, interface, limit=limit + 1 if limit > 0 else None)
        shown = listed[:limit] if limit > 0 else listed
        what = " and ".join(filter(None, [display_filter and f"matching {display_filter}",
                                          interface and f"on {interface}"]))
        print_tables(inspect_frames(f"{capture}: frames {what}", shown), console)
        if len(listed) > len(shown):
            typer.echo(f"(first {limit} frames; --limit 0 lists all)")
    else:
        print_tables(inspect_summary(capture, lib.summary(capture), shlex.join(lib.tshark_command(capture))),
                     console)


def main() -> None:
    try:
        app()
    except (EmuError, OSError) as e:  # the user's input or files: one line, not a traceback
        if _state["verbose"]:
            raise
        from rich.console import Console

        from rich.text import Text

        Console(stderr=True).print(Text.assemble(("error:", "red"), f" {e}"), highlight=False, soft_wrap=True)
        sys.exit(2)
