"""Printing library results in the terminal: rich tables on a terminal,
plain aligned columns (as kubectl prints) when piped, so nothing is cut."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table as RichTable


def print_tables(items, console: Console | None = None) -> None:
    console = console or Console()
    for item in items:
        if isinstance(item, str):
            console.print(item, highlight=False, markup=False, soft_wrap=True)
        elif console.is_terminal:
            t = RichTable(title=item.title, title_justify="left")
            for col in item.columns:
                t.add_column(col, overflow="fold")
            for row in item.rows:
                t.add_row(*row)
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
