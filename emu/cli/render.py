"""Printing library results in the terminal with rich."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table as RichTable


def print_tables(items, console: Console | None = None) -> None:
    console = console or Console()
    for item in items:
        if isinstance(item, str):
            console.print(item, highlight=False, markup=False, soft_wrap=True)
            continue
        t = RichTable(title=item.title, title_justify="left")
        for col in item.columns:
            t.add_column(col, overflow="fold")  # whole addresses and names, folded, never cut
        for row in item.rows:
            t.add_row(*row)
        console.print(t)
