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
def demo(
    output: Path = typer.Option(Path("demo.pcapng"), "--output", "-o", help="Capture (pcapng) to write."),
    pcap_dir: Path = typer.Option(None, "--pcap-dir", help="Also write one classic pcap per interface here."),
    seed: int = typer.Option(1, help="Seed for every random choice."),
) -> None:
    """Ping across a hand-built two-node Flannel (VXLAN) network; print the trace, write the capture."""
    from emu.demo import run_demo

    run_demo(output, seed=seed, pcap_dir=pcap_dir)


@app.command()
def show(
    kind: str = typer.Argument(..., help="pods | services | endpoints | routes | neigh | fdb | iptables | conntrack | dns"),
    files: list[str] = typer.Option(..., "--filename", "-f",
                                    help="Manifests: a file, a folder or - for stdin (repeatable)."),
    node: str = typer.Option(None, "--node", help="Only this node (routes, neigh, fdb, iptables, conntrack)."),
    seed: int = typer.Option(1, help="Seed for every random choice (names, addresses)."),
) -> None:
    """Build the cluster the manifests describe and print one of its tables."""
    from emu.cli.render import print_tables
    from emu.cluster import Cluster
    from emu.model import load
    from emu.show import show as show_tables

    model = load(files, stdin=sys.stdin if "-" in files else None)
    print_tables(show_tables(Cluster(model, seed=seed, capture=False), kind, node))
    for ig in model.ignored:  # unknown kinds are listed, not fatal
        typer.echo(f"ignored: {ig.file}:{ig.line}: {ig.kind} {ig.name or ''}".rstrip(), err=True)


def main() -> None:
    try:
        app()
    except (EmuError, OSError) as e:  # the user's input or files: one line, not a traceback
        if _state["verbose"]:
            raise
        from rich.console import Console

        Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
