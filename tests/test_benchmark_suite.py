"""``python -m benchmarks`` (``benchmarks/__main__.py``): every benchmark in its own process, one table,
a non-zero exit only on errors — never on a missed goal — and the README block it maintains.

The benchmarks here are stand-ins written into a temporary directory (the runner is pointed at it), so
nothing is timed: one writes a ``scaling.json`` whose goal is missed, one exits with an error, one exits 0
without writing its result file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

OK_SCALING = """
import json, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1])
quick = "--quick" in sys.argv
row = {"what": "GA generation: 2 devices vs 1", "value": "90 ms vs 100 ms", "ratio": 1.11, "goal": 1.6,
       "met": False}
(out / "scaling.json").write_text(json.dumps({"headline": [row], "load_start": [7.5, 1, 1], "quick": quick}))
(out / "scaling.md").write_text("# scaling")
"""
FAILS = "raise SystemExit(3)\n"
NO_RESULT = "print('forgot to write my result')\n"


@pytest.fixture
def suite(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_suite", ROOT / "benchmarks" / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "_common.py").write_text("# helpers: never run as a benchmark\n")
    (bench / "scaling.py").write_text(OK_SCALING)
    monkeypatch.setattr(module, "HERE", bench)
    monkeypatch.setattr(module, "backend", lambda: "cpu")
    return module, bench


def test_a_missed_goal_is_reported_and_exits_zero(suite, tmp_path):
    module, _ = suite
    out = tmp_path / "results"
    assert module.discover() == ["scaling"]
    assert module.main(["--quick", "--out", str(out)]) == 0
    assert json.loads((out / "scaling.json").read_text())["quick"] is True  # --quick reached the benchmark
    table = (out / "README.md").read_text()
    row = next(line for line in table.splitlines() if "GA generation: 2 devices vs 1" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "[scaling](scaling.md)"
    assert cells[4:7] == ["1.11", "≥ 1.6", "NO"]  # ratio, goal, met
    assert float(cells[7]) == 7.5  # the load when it ran
    assert "CPU cores" in table and "load average" in table  # the machine description


@pytest.mark.parametrize(("script", "status"), [(FAILS, "failed"), (NO_RESULT, "no result file")])
def test_a_failing_benchmark_makes_the_exit_status_non_zero(suite, tmp_path, script, status):
    module, bench = suite
    (bench / "broken.py").write_text(script)
    out = tmp_path / "results"
    assert module.main(["--out", str(out)]) == 1
    table = (out / "README.md").read_text()
    assert f"| [broken](broken.md) | {status} |" in table
    assert "GA generation: 2 devices vs 1" in table  # the others still ran and are in the table
    assert module.main(["--out", str(out), "--only", "scaling"]) == 0


def test_table_only_runs_nothing_and_the_readme_block_is_replaced(suite, tmp_path):
    module, bench = suite
    (bench / "broken.py").write_text(FAILS)
    out = tmp_path / "results"
    out.mkdir()
    (out / "scaling.json").write_text(json.dumps({"headline": [], "load_start": [1.0]}))
    assert module.main(["--table-only", "--out", str(out)]) == 0  # broken.py was not run
    assert "Runs:" not in (out / "README.md").read_text()

    readme = tmp_path / "README.md"
    readme.write_text(f"# P\n\nbefore\n\n{module.README_BEGIN}\nold table\n{module.README_END}\n\nafter\n")
    text = "# Benchmark results\n\nMachine: x.\n\n| benchmark |\n|---|\n| [scaling](scaling.md) |\n"
    module.update_project_readme(out, text, readme)
    new = readme.read_text()
    assert new.startswith("# P\n\nbefore\n\n") and new.endswith("\n\nafter\n")
    assert "old table" not in new and "# Benchmark results" not in new
    assert "| [scaling](results/scaling.md) |" in new  # links relative to the README
    assert new.count(module.README_BEGIN) == 1 == new.count(module.README_END)
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="benchmarks:begin"):
        module.update_project_readme(out, text, readme)
    assert readme.read_text() == "# no markers\n"
