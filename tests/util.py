"""Helpers shared by tests."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_with_boundscheck(code: str, timeout: float = 300) -> str:
    """Run `code` in a fresh interpreter whose kernels are compiled with
    numba's bounds checking on (and the cache off), so any out-of-bounds read
    or write raises IndexError. Fails the calling test if the snippet fails;
    returns its stdout."""
    env = {**os.environ, "EMU_JIT_BOUNDSCHECK": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"bounds-checked run failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
