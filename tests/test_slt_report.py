"""scripts/slt_report.py: the committed per-seed archive and the summaries of lost runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slt_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("slt_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, rows: list[dict], metrics: list[dict]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (d / "config.yaml").write_text(f"name: {name.split('-')[0]}\nseeds: 2\n")
    return d


def _row(job, seed, acc):
    arch, method = job.split("/")
    return {"job": job, "arch": arch, "method": method, "seed": seed, "test_acc": acc, "sparsity": 0.5}


def test_archive_keeps_rows_of_earlier_sessions_and_new_runs_win(report, tmp_path):
    data = tmp_path / "data"
    first = _run(
        tmp_path / "s1",
        "moons_ga-aaaa",
        [_row("D/ga", 0, 0.9), _row("D/ga", 1, 0.8)],
        [{"job": "D/ga", "seed": 0, "generation": 1, "best_acc": 0.7}],
    )
    rows, metrics = report.collect(first.parent, data, "moons_ga")
    assert [(r["job"], r["seed"]) for r in rows] == [("D/ga", 0), ("D/ga", 1)] and len(metrics) == 1
    meta = json.loads((data / "moons_ga.run.json").read_text())
    assert meta == {"run": "moons_ga-aaaa", "config": {"name": "moons_ga", "seeds": 2}}

    # a later session: its run directory holds only a new job and a re-run seed; the archive the rest
    second = _run(
        tmp_path / "s2",
        "moons_ga-aaaa",
        [_row("D/ga", 1, 0.85), _row("D/backprop", 0, 1.0)],
        [{"job": "D/ga", "seed": 0, "generation": 2, "best_acc": 0.75}],
    )
    rows, metrics = report.collect(second.parent, data, "moons_ga")
    got = {(r["job"], r["seed"]): r["test_acc"] for r in rows}
    assert got == {("D/ga", 0): 0.9, ("D/ga", 1): 0.85, ("D/backprop", 0): 1.0}
    assert [m["generation"] for m in metrics] == [1, 2]
    # rebuilt from the archive alone: the same rows
    assert report.collect(None, data, "moons_ga")[0] == rows

    # a run of another configuration replaces the archive instead of mixing with it
    other = _run(tmp_path / "s3", "moons_ga-bbbb", [_row("A/ga", 0, 0.7)], [])
    rows, metrics = report.collect(other.parent, data, "moons_ga")
    assert [(r["job"], r["seed"]) for r in rows] == [("A/ga", 0)] and metrics == []


def test_summaries_of_lost_runs_fill_only_jobs_with_fewer_seeds(report):
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


def test_restore_writes_the_archive_back_into_its_run_directory(report, tmp_path):
    data = tmp_path / "data"
    run = _run(
        tmp_path / "s1",
        "moons_ga-aaaa",
        [_row("D/ga", 0, 0.9), _row("D/ga", 1, 0.8)],
        [{"job": "D/ga", "seed": s, "generation": g, "best_acc": 0.5} for s in (0, 1) for g in (1, 2)],
    )
    report.collect(run.parent, data, "moons_ga")
    assert report.restore(tmp_path / "fresh", data, "circles_ga") == 0  # nothing archived: nothing made
    assert not (tmp_path / "fresh").exists()

    # a fresh machine whose run directory holds one re-run seed already: that row is kept, the rest added
    fresh = tmp_path / "fresh" / "moons_ga-aaaa"
    fresh.mkdir(parents=True)
    (fresh / "results.jsonl").write_text(json.dumps(_row("D/ga", 1, 0.85)) + "\n")
    assert report.restore(tmp_path / "fresh", data, "moons_ga") == 1
    got = {(r["seed"], r["test_acc"]) for r in report.read_jsonl(fresh / "results.jsonl")}
    assert got == {(0, 0.9), (1, 0.85)}
    assert len(report.read_jsonl(fresh / "metrics.jsonl")) == 4
    assert report.load_yaml(fresh / "config.yaml") == {"name": "moons_ga", "seeds": 2}
    assert report.restore(tmp_path / "fresh", data, "moons_ga") == 0  # a second restore adds nothing
    assert len(report.read_jsonl(fresh / "results.jsonl")) == 2


def test_slt_on_a_restored_run_directory_skips_the_archived_jobs(report, tmp_path):
    import io
    import shutil

    from rich.console import Console

    from es_lottery.experiments import slt

    config = {
        "name": "tiny",
        "dataset": "moons",
        "dataset_args": {"n_train": 600, "n_test": 200},
        "archs": {"A": [2, 8, 2]},
        "variants": ["ga"],
        "seeds": 2,
        "ga": {"pop_size": 6, "min_generations": 3, "patience": 2},
        "progress_every": 3,
        "backprop": False,
    }
    exp = slt.parse_config(config)
    quiet = Console(file=io.StringIO(), width=150)
    path = slt.run_experiment(exp, out=tmp_path / "runs", console=quiet)
    before = report.read_jsonl(path / "results.jsonl")
    data = tmp_path / "data"
    report.collect(tmp_path / "runs", data, "tiny")
    shutil.rmtree(tmp_path / "runs")  # the machine is replaced; the committed archive remains

    assert report.restore(tmp_path / "runs", data, "tiny") == 2
    log = Console(file=io.StringIO(), width=150)
    assert slt.run_experiment(exp, out=tmp_path / "runs", console=log) == path
    assert "A/ga: finished earlier, skipped" in log.file.getvalue()
    assert report.read_jsonl(path / "results.jsonl") == before


def test_extra_edge_popup_joins_the_config_run_directory_with_the_papers_matched_rule(tmp_path, monkeypatch):
    import sys

    import yaml

    from es_lottery.experiments import slt
    from es_lottery.experiments.rundir import RunDir

    spec = importlib.util.spec_from_file_location(
        "slt_edge_popup_extra", SCRIPT.with_name("slt_edge_popup_extra.py")
    )
    extra = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extra)
    cfg = {
        "name": "tiny",
        "dataset": "moons",
        "dataset_args": {"n_train": 600, "n_test": 200},
        "archs": {"A": [2, 20, 2]},
        "variants": ["ga", "adaptive_ab"],
        "seeds": 2,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = RunDir(tmp_path / "runs", "tiny", slt.parse_config(cfg).resolved())
    # hand-made GA rows: GA acc 0.85 at sparsity 0.65, adaptive AB 0.90 at 0.45 → the rule keeps 0.55
    ga = [("ga", 0, 0.9, 0.6), ("ga", 1, 0.8, 0.7), ("adaptive_ab", 0, 0.95, 0.4)]
    rows = [
        {"job": f"A/{m}", "arch": "A", "method": m, "seed": s, "test_acc": a, "sparsity": sp}
        for m, s, a, sp in ga
    ]
    run.append("results.jsonl", rows)
    argv = ["x", str(path), "--archs", "A", "--epochs", "1", "--out", str(tmp_path / "runs")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="needs every seed of A/adaptive_ab"):
        extra.main()
    run.append("results.jsonl", [{**rows[2], "seed": 1, "test_acc": 0.85, "sparsity": 0.5}])
    extra.main()
    new = [r for r in run.read("results.jsonl") if r["method"] == "edge_popup[uniform,k=matched_best]"]
    assert sorted(r["seed"] for r in new) == [0, 1]
    assert all(r["sparsity"] == pytest.approx(0.45) and 0 <= r["test_acc"] <= 1 for r in new)
    extra.main()  # finished: nothing appended
    assert len(run.read("results.jsonl")) == 4 + 2
    monkeypatch.setattr(sys, "argv", [*argv[:3], "Z"])
    with pytest.raises(SystemExit, match="not in"):
        extra.main()
