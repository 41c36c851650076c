"""The package's own rules: where JIT flags come from, what kernels/ imports,
and that the CLI starts without compiling anything."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.util import ROOT

KERNELS = sorted((ROOT / "kernels").glob("*.py"))
ALLOWED_TOP = {"numpy", "numba", "kernels"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_kernels_import_only_numpy_numba_and_stdlib():
    for path in KERNELS:
        for name in _imports(path):
            assert name in ALLOWED_TOP or name in sys.stdlib_module_names, (
                f"{path.name} imports {name}: kernels/ may import only numpy, numba and the standard library"
            )


def test_no_kernel_sets_its_own_jit_flags():
    for path in KERNELS:
        if path.name == "_jit.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("numba"):
                imported = {a.name for a in node.names}
                assert not imported & {"njit", "jit", "vectorize", "guvectorize", "cfunc", "stencil"}, (
                    f"{path.name} imports a numba decorator; use kernels._jit.jit"
                )
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "numba":
                assert node.attr not in {"njit", "jit", "vectorize", "guvectorize", "cfunc"}, (
                    f"{path.name} uses numba.{node.attr}; use kernels._jit.jit"
                )
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "jit":
                flags = {k.arg for k in node.keywords} - {"parallel"}
                assert not flags, f"{path.name} passes JIT flags {flags}; they come from kernels/_jit.py"


def test_jit_flags_come_from_one_place():
    from kernels import _jit

    assert _jit.FLAGS["cache"] is True  # cache on by default
    out = subprocess.run(
        [sys.executable, "-c", "from kernels import _jit; print(_jit.FLAGS['cache'], _jit.FLAGS['boundscheck'])"],
        env={"PATH": "", "EMU_JIT_CACHE": "0", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == ["False", "False"]


def _cli_modules(*args: str) -> tuple[str, list[str]]:
    code = (
        "import sys\n"
        f"sys.argv = ['emu', {', '.join(repr(a) for a in args)}]\n"
        "from emu.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'kernels', 'scapy', 'llvmlite'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    text, _, mods = out.rpartition("MODULES")
    return text, mods.split()


def test_help_and_version_compile_nothing():
    text, mods = _cli_modules("--help")
    assert "run" in text and "inspect" in text and mods == []
    text, mods = _cli_modules("--version")
    assert text.strip().startswith("emu ") and mods == []
