"""The README's Python example runs as written."""
from __future__ import annotations

import os
import re

from tests.util import ROOT


def test_readme_python_example_runs(tmp_path, capsys):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    os.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[('reply', 416000), ('reply', 208000)]"
    assert out[-1] == "[('node-1', 'TTL_EXCEEDED', 1)]"
    assert (tmp_path / "out" / "api.pcapng").stat().st_size > 1000
