"""Shared machinery for the benchmark suites.

Each benchmark runs the emu kernel and its baseline (pure Python, Scapy, or
the library a user would pick instead) in the same run, in the same
pytest-benchmark group. A test calls `record(...)` to say what one call of
the measured function does (`items` operations of `unit`), which role it
plays, and the issue's target; at the end of the session a table shows the
rate of each, the ratio emu/baseline and whether the target was met.

EMU_BENCH_QUICK=1 shrinks every size so the suites run in seconds: CI uses it
with --benchmark-disable to prove the benchmarks still work; figures come
from full runs (`make bench`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

QUICK = os.environ.get("EMU_BENCH_QUICK", "0") == "1"


def size(full: int, quick: int) -> int:
    """A problem size: `full` for real measurements, `quick` for smoke runs."""
    return quick if QUICK else full


@dataclass
class Entry:
    group: str
    name: str
    role: str  # "emu" or "baseline"
    items: int
    unit: str
    target_rate: float | None = None      # items per second, at least
    target_ratio: float | None = None     # emu rate / baseline rate, at least
    target_seconds: float | None = None   # mean time per call, at most
    extra: dict = field(default_factory=dict)
    mean: float | None = None


_ENTRIES: list[Entry] = []


@pytest.fixture
def record(benchmark, request):
    """record(group, role, items, unit, target_rate=None, target_ratio=None,
    target_seconds=None, **extra): describe this benchmark for the summary."""
    entries: list[Entry] = []

    def _record(group, role, items, unit, *, target_rate=None, target_ratio=None,
                target_seconds=None, **extra):
        if role not in ("emu", "baseline"):
            raise ValueError("role is 'emu' or 'baseline'")
        benchmark.group = group
        benchmark.extra_info.update(role=role, items=items, unit=unit, **extra)
        e = Entry(group, request.node.name, role, items, unit, target_rate,
                  target_ratio, target_seconds, extra)
        entries.append(e)
        return e

    yield _record
    stats = getattr(benchmark, "stats", None)
    for e in entries:
        if stats is not None and getattr(stats, "stats", None) is not None:
            e.mean = stats.stats.mean
            if e.mean:
                rate = e.items / e.mean
                benchmark.extra_info["rate"] = rate
                # issue 6 asks for `pps`/`cps` keys on end-to-end benchmarks
                if e.unit in ("packets", "frames"):
                    benchmark.extra_info["pps"] = rate
                if e.unit == "connections":
                    benchmark.extra_info["cps"] = rate
        _ENTRIES.append(e)


def _fmt_rate(r: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if r >= div:
            return f"{r / div:.2f} {suffix}"
    return f"{r:.1f} "


def pytest_terminal_summary(terminalreporter):
    measured = [e for e in _ENTRIES if e.mean]
    if not measured:
        return
    tr = terminalreporter
    tr.section("emu benchmarks: rates, ratios and targets")
    groups: dict[str, list[Entry]] = {}
    for e in measured:
        groups.setdefault(e.group, []).append(e)
    tr.write_line(f"{'group':34} {'role':9} {'rate':>16} {'mean':>11} {'ratio':>9}  target")
    for group, entries in groups.items():
        base = [e for e in entries if e.role == "baseline"]
        base_rate = (base[0].items / base[0].mean) if base else None
        for e in sorted(entries, key=lambda e: e.role != "emu"):
            rate = e.items / e.mean
            ratio = f"{rate / base_rate:8.1f}x" if (base_rate and e.role == "emu") else ""
            verdicts = []
            if e.target_rate is not None:
                ok = rate >= e.target_rate
                verdicts.append(f">= {_fmt_rate(e.target_rate)}{e.unit}/s {'ok' if ok else 'MISSED'}")
            if e.target_ratio is not None and base_rate:
                ok = rate / base_rate >= e.target_ratio
                verdicts.append(f">= {e.target_ratio:g}x {'ok' if ok else 'MISSED'}")
            if e.target_seconds is not None:
                ok = e.mean <= e.target_seconds
                verdicts.append(f"<= {e.target_seconds * 1e3:g} ms {'ok' if ok else 'MISSED'}")
            for k, v in e.extra.items():
                verdicts.append(f"{k}={v}")
            tr.write_line(f"{group:34} {e.role:9} {_fmt_rate(rate) + e.unit + '/s':>16} "
                          f"{e.mean * 1e3:9.3f}ms {ratio:>9}  {'; '.join(verdicts)}")
