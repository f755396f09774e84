"""The strong-ticket page (``es_lottery.experiments.reports.slt``): the committed per-seed archive, the
summaries of lost runs, and a fresh machine that continues from the archive."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from es_lottery.experiments import legacy_runs, slt
from es_lottery.experiments.reports import archive
from es_lottery.experiments.reports import slt as report

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "dataset": "moons",
    "dataset_args": {"n_train": 600, "n_test": 200},
    "networks": {"A": {"sizes": [2, 8, 2]}},
    "variants": ["ga"],
    "seeds": 2,
    "ga": {"population_size": 6, "min_generations": 3, "patience": 2},
    "progress_every": 3,
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=150)


def _row(job, seed, acc):
    arch, method = job.split("/")
    return {"job": job, "arch": arch, "method": method, "seed": seed, "test_acc": acc, "sparsity": 0.5}


def test_archive_keeps_rows_of_earlier_sessions_and_new_runs_win(tmp_path):
    data = tmp_path / "data"
    first = [_row("D/ga", 0, 0.9), _row("D/ga", 1, 0.8)]
    m1 = [{"job": "D/ga", "seed": 0, "generation": 1, "best_acc": 0.7}]
    rows, metrics = archive.merge(data, "moons_ga", {"name": "moons_ga"}, {"D/ga": "slt/x/ga"}, first, m1)
    assert [(r["job"], r["seed"]) for r in rows] == [("D/ga", 0), ("D/ga", 1)] and len(metrics) == 1
    assert archive.read(data, "moons_ga")[0]["jobs"] == {"D/ga": "slt/x/ga"}

    # a later session: its store holds only a new job and a re-run seed; the archive the rest
    second = [_row("D/ga", 1, 0.85), _row("D/backprop", 0, 1.0)]
    m2 = [{"job": "D/ga", "seed": 0, "generation": 2, "best_acc": 0.75}]
    jobs = {"D/ga": "slt/x/ga", "D/backprop": "slt/x/backprop"}
    rows, metrics = archive.merge(data, "moons_ga", {"name": "moons_ga"}, jobs, second, m2)
    got = {(r["job"], r["seed"]): r["test_acc"] for r in rows}
    assert got == {("D/ga", 0): 0.9, ("D/ga", 1): 0.85, ("D/backprop", 0): 1.0}
    assert [m["generation"] for m in metrics] == [1, 2]
    # rebuilt from the archive alone: the same rows
    assert report.collect(None, data, "moons_ga", None)[0] == rows

    # a job whose settings changed (another store directory) replaces its archived rows, the others stay
    rows, metrics = archive.merge(
        data, "moons_ga", {}, {"D/ga": "slt/x/ga-1234567890"}, [_row("D/ga", 0, 0.7)], []
    )
    got = {(r["job"], r["seed"]): r["test_acc"] for r in rows}
    assert got == {("D/ga", 0): 0.7, ("D/backprop", 0): 1.0} and metrics == []


def test_summaries_of_lost_runs_fill_only_jobs_with_fewer_seeds():
    per_seed = [_row("D/ga", s, acc) for s, acc in enumerate([0.6, 0.8, 1.0])]
    agg = report.aggregate(per_seed, "arch")
    assert agg[("D", "ga")]["seeds"] == 3
    assert agg[("D", "ga")]["test_acc_mean"] == pytest.approx(0.8)
    assert agg[("D", "ga")]["test_acc_std"] == pytest.approx((0.08 / 3) ** 0.5)
    earlier = [
        {"dataset": "moons", "arch": "D", "method": "ga", "seeds": 25, "test_acc_mean": 0.99},
        {"dataset": "moons", "arch": "A", "method": "ga", "seeds": 2, "test_acc_mean": 0.93},
        {"dataset": "circles", "arch": "C", "method": "ga", "seeds": 25, "test_acc_mean": 0.88},
    ]
    merged = report.with_earlier(agg, earlier, "moons", "arch")
    assert merged[("D", "ga")]["earlier"] and merged[("D", "ga")]["test_acc_mean"] == 0.99  # 3 < 25 seeds
    assert merged[("A", "ga")]["earlier"] and ("C", "ga") not in merged
    full = report.aggregate([_row("D/ga", s, 0.9) for s in range(25)], "arch")
    assert not report.with_earlier(full, earlier, "moons", "arch")[("D", "ga")]["earlier"]


def test_a_fresh_machine_continues_from_the_archive(tmp_path):
    """Run → archive (the report) → the machine is replaced → ``es-lottery migrate`` of the archive → the
    same config skips every archived job and gives the same rows."""
    exp = slt.parse_config(TINY)
    path = slt.run_experiment(exp, out=tmp_path / "runs", console=quiet())
    before = archive.read_jsonl(path / "results.jsonl")
    cfg = tmp_path / "configs" / "tiny.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump(TINY))
    data = tmp_path / "data"
    rows, _ = report.collect(tmp_path / "runs", data, "tiny", report.find_config(cfg.parent, "tiny"))
    assert rows == sorted(before, key=lambda r: (r["job"], r["seed"]))
    shutil.rmtree(tmp_path / "runs")  # the machine is replaced; the committed archive remains

    legacy_runs.migrate_paths([data], tmp_path / "runs", quiet())
    log = quiet()
    assert slt.run_experiment(exp, out=tmp_path / "runs", console=log) == path
    assert "A/ga: finished earlier, skipped" in log.file.getvalue()
    assert archive.read_jsonl(path / "results.jsonl") == before


def test_the_committed_archive_lands_where_the_shipped_configs_look(tmp_path):
    """Every row of the committed strong-ticket archive maps to a job of the shipped config."""
    for name, config in (("moons_ga", "moons"), ("circles_ga", "circles")):
        run_json = ROOT / f"docs/results/slt/data/{name}.run.json"
        rep = legacy_runs.migrate_archive(run_json, tmp_path)
        assert rep["rows_without_a_job"] == 0 and rep["results"] > 0
        exp = slt.load_config(ROOT / f"configs/slt/{config}.yaml")
        rows, _, _ = slt.collect(exp, tmp_path)
        archived = archive.read_jsonl(ROOT / f"docs/results/slt/data/{name}.results.jsonl")
        assert sorted(rows, key=lambda r: (r["job"], r["seed"])) == archived


def test_paper_sparsity_sits_on_the_better_variants_row():
    # Fig. 6's sparsities are the better variant's (the original's evaluation script): adaptive AB on
    # moons A–C and circles C, the plain GA elsewhere — never both rows of one architecture
    rows = [
        {"arch": a, "method": m, "test_acc": 0.9, "sparsity": 0.6}
        for a in ("A", "C", "D")
        for m in ("ga", "adaptive_ab", "backprop")
    ]
    agg = report.aggregate(rows, "arch")
    for dataset, want in {
        "moons": {("A", "adaptive_ab"): "0.732", ("C", "adaptive_ab"): "0.561", ("D", "ga"): "0.546"},
        "circles": {("A", "ga"): "0.663", ("C", "adaptive_ab"): "0.539", ("D", "ga"): "0.581"},
    }.items():
        table = report.table_arch_method(agg, dataset)
        header = [c.strip() for c in table[0].strip("|").split("|")]
        col = header.index("paper sparsity (its variant)")
        for line in table[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            expected = want.get((cells[0], cells[1]), "–")
            assert cells[col] == expected, (dataset, cells[:2], cells[col])
