"""The README's "Bring your own domain" example runs as written and prints what it says."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_bring_your_own_domain_runs_and_prints_the_documented_line() -> None:
    section = README[README.index("## Bring your own domain") :]
    start = section.index("```python") + len("```python\n")
    block = section[start : section.index("```\n", start)]
    lines = block.rstrip("\n").splitlines()
    assert len(lines) < 40, f"the example has {len(lines)} lines"
    expected = lines[-1].removeprefix("# ")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    assert out.getvalue().strip() == expected
