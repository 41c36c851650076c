"""Printing library results in the terminal: rich tables on a terminal,
plain aligned columns (as kubectl prints) when piped, so nothing is cut."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text


def print_tables(items, console: Console | None = None) -> None:
    console = console or Console()
    for item in items:
        if isinstance(item, str):
            console.print(item, highlight=False, markup=False, soft_wrap=True)
        elif console.is_terminal:
            t = RichTable(title=Text(item.title), title_justify="left")
            for col in item.columns:
                t.add_column(col, overflow="fold")
            for row in item.rows:  # as text: "[ct NEW]" is not rich markup
                t.add_row(*(Text(c) for c in row))
            console.print(t)
        else:
            console.print(plain(item), highlight=False, markup=False, soft_wrap=True)


def plain(table) -> str:
    """`# title`, then the columns padded to their widest cell."""
    rows = [tuple(c.replace("\n", ", ") for c in row) for row in table.rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(table.columns)]
    lines = [f"# {table.title}"]
    for row in [tuple(table.columns)] + rows:
        lines.append("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _inspect_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]):
    """A table as print_tables takes it (title, columns, rows of str)."""
    from types import SimpleNamespace

    return SimpleNamespace(title=title, columns=columns, rows=rows)


def _inspect_seconds(t: float) -> str:
    return f"{t:.9f}"  # emu's virtual clock counts nanoseconds, as tshark prints them


def _inspect_problems(i) -> str:
    if not i.problem_frames:
        return "-"
    counts = (("malformed", i.malformed), ("bad checksum", i.bad_checksums),
              ("expert", i.expert_warnings), ("tcp analysis", i.tcp_analysis))
    return f"{i.problem_frames}: " + ", ".join(f"{name} {n}" for name, n in counts if n)


def inspect_summary(path, interfaces, tshark_command: str) -> list:
    """`emu inspect FILE`: a row per interface, a totals line, then how to
    go further (follow a packet, the same view in tshark)."""
    import shlex

    rows = [(i.name, str(i.frames), str(i.bytes), _inspect_seconds(i.first), _inspect_seconds(i.last),
             ", ".join(i.protocols), _inspect_problems(i)) for i in interfaces]
    frames = sum(i.frames for i in interfaces)
    problems = sum(i.problem_frames for i in interfaces)
    return [
        _inspect_table(f"{path}: frames per interface",
                       ("INTERFACE", "FRAMES", "BYTES", "FIRST", "LAST", "PROTOCOLS", "PROBLEMS"), rows),
        f"{len(interfaces)} interface{'s' * (len(interfaces) != 1)}, {frames} frames, {problems} with problems "
        "(each interface analysed alone, checksums validated)",
        f"follow one packet across hops: emu inspect {shlex.quote(str(path))} --packet ID "
        "(IDs: the 'pkt N:' of each comment)",
        f"the same capture in tshark: {tshark_command}",
    ]


def inspect_frames(title: str, frames, with_packet: bool = True) -> list:
    """A frame listing; `with_packet` False drops the packet id column (one packet followed)."""
    columns = ["FRAME", "TIME", "INTERFACE", "PKT", "SOURCE", "DESTINATION", "PROTOCOL", "INFO", "DECISION"]
    rows = [[str(f.number), _inspect_seconds(f.time), f.interface, "" if f.packet is None else str(f.packet),
             f.source, f.destination, f.protocol, f.info, f.comment] for f in frames]
    if not with_packet:  # one packet followed: the same id on every row
        for row in [columns, *rows]:
            del row[3]
    return [_inspect_table(title, tuple(columns), [tuple(row) for row in rows])]


# ------------------------------------------------------------------ emu run / emu trace
def _ms(ns) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f} ms"


def run_report(report) -> list:
    """`emu run`: the steps with their outcomes, drops, what was written, and what failed."""
    from emu.show import Table

    rows = []
    for r in report.steps:
        res = r.result
        drops = ", ".join(f"{reason} x{n}" for reason, n in r.drops) or "-"
        check = "-" if not r.step.expect.present else ("ok" if not r.failures else "FAILED")
        rows.append((str(r.step.index), f"{r.started_ns / 1e9:.3f} s", r.label,
                     res.outcome if res else "did not finish", _ms(res.latency_ns if res else None),
                     (res.backend if res else "") or "-", str(r.packets), drops, check))
    s = report.scenario
    out = [Table(f"{s.name}: {len(report.steps)} steps (seed {s.seed}, virtual time)",
                  ("#", "AT", "STEP", "OUTCOME", "LATENCY", "BACKEND", "PACKETS", "DROPS", "EXPECT"), rows)]
    drops = report.drops
    if drops:
        out.append(Table("drops by device and reason", ("DEVICE", "REASON", "COUNT"),
                          [(d, reason, str(n)) for d, reason, n in drops]))
    if report.output is not None:
        out.append(f"wrote {report.frames} frames to {report.output}; "
                   f"emu inspect {report.output} (or tshark -r {report.output} -d udp.port==8472,vxlan)")
    failures = report.failures()
    out.append(f"{len(failures)} expectation(s) failed:\n  " + "\n  ".join(failures) if failures
               else "all expectations met")
    return out


def trace_report(result) -> list:
    """`emu trace`: each packet's hops."""
    from emu.show import Table

    out = [f"{result.source} -> {result.target}"
           + (f" ({result.address})" if result.address and result.address not in result.target else "")
           + f": {result.outcome}"]
    for p in result.packets:
        t0 = p.hops[0].time_ns
        rows = [(f"+{(h.time_ns - t0) / 1e3:.0f} µs", h.kind, h.port, h.note) for h in p.hops]
        out.append(Table(f"packet {p.pkt_id}: {p.summary} (at {t0 / 1e9:.6f} s)",
                          ("TIME", "HOP", "WHERE", "DECISION"), rows))
    return out


class step_progress:
    """Transient progress bars on a terminal (stderr): the scenario's steps,
    and a traffic step's packets with their rate; nothing when piped. Used as
    `with step_progress() as progress:`."""

    def __enter__(self):
        import sys

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if not sys.stderr.isatty():
            self.progress = None
            return lambda done, total, label, unit="steps": None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.progress.start()
        self.tasks = {}

        def update(done, total, label, unit="steps"):
            task = self.tasks.get(unit)
            if task is None:
                task = self.tasks[unit] = self.progress.add_task(label, total=total, unit=unit, rate="")
            speed = self.progress.tasks[task].speed if unit == "packets" else None
            self.progress.update(task, completed=done, total=total, description=label,
                                 rate=f"{speed / 1e6:.2f} M/s" if speed else "")

        return update

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
