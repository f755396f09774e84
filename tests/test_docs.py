"""The documentation's code runs: every ```python block of docs/api.md (in order, one namespace) and the
README's library quickstart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("doc", ["docs/api.md", "README.md"])
def test_every_python_block_runs(doc, capsys):
    code = blocks(ROOT / doc)
    assert code, f"{doc} has no python blocks"
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{doc}[block {i}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            pytest.fail(f"{doc}, python block {i} failed: {type(err).__name__}: {err}\n{block}")
