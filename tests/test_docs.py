"""The documentation's code runs: every ```python block of docs/api.md (in order, one namespace) and the
README's library quickstart — each page in a fresh interpreter, as a reader would run it (so a page may
claim what importing es_lottery does and does not load)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)

RUNNER = """
import sys
blocks = {blocks!r}
namespace = {{"__name__": "__docs__"}}
for i, block in enumerate(blocks):
    try:
        exec(compile(block, "{doc}[block %d]" % i, "exec"), namespace)
    except Exception as err:
        print("python block %d failed: %s: %s\\n%s" % (i, type(err).__name__, err, block), file=sys.stderr)
        sys.exit(1)
"""


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("doc", ["docs/api.md", "README.md"])
def test_every_python_block_runs(doc, tmp_path):
    code = blocks(ROOT / doc)
    assert code, f"{doc} has no python blocks"
    script = tmp_path / "page.py"
    script.write_text(RUNNER.format(blocks=code, doc=doc))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode:
        pytest.fail(f"{doc}: {proc.stderr[-4000:]}")


def test_a_failing_block_fails_the_page(tmp_path):
    script = tmp_path / "page.py"
    script.write_text(RUNNER.format(blocks=["x = 1\n", "assert x == 2\n"], doc="page"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 1 and "python block 1 failed: AssertionError" in proc.stderr
