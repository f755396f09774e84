"""The slt experiment driver: config validation, the view and the store, skipping finished jobs and seeds."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from es_lottery.experiments import generations, slt

TINY = {
    "name": "tiny",
    "dataset": "moons",
    "dataset_args": {"n_train": 1500, "n_test": 500},
    "networks": {"A": {"sizes": [2, 20, 2]}},
    "variants": ["ga"],
    "seeds": 2,
    "ga": {"population_size": 10, "min_generations": 6, "patience": 3},
    "progress_every": 4,
}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"dataset": "moonz"}, "dataset"),
        ({"variants": ["gaa"]}, "variants"),
        ({"ga": {"rec_rate": 1.5}}, "ga.rec_rate"),
        ({"ga": {"population_size": 1}}, "ga.population_size: must be an integer"),
        ({"ga": {"population_size": 10.0}}, "ga.population_size: expected an integer"),
        ({"backprop": "yes"}, "backprop: expected true or false"),
        ({"bogus": 1}, "bogus"),
        ({"networks": {"A": {"sizes": [2, "k", 2]}}}, "class_counts"),
        ({"networks": {"A": {"sizes": [2, 20, 2], "widths": 3}}}, "networks.A.widths"),
        ({"edge_popup": [{"kept_fraction": 0}]}, "edge_popup[0].kept_fraction"),
        ({"edge_popup": [{"kept_fraction": "best"}]}, "edge_popup[0].kept_fraction"),
        ({"variants": [], "edge_popup": [{"kept_fraction": "matched_best"}]}, "edge_popup[0].kept_fraction"),
        ({"class_counts": [2, 3]}, "class_counts"),  # moons has no class-count sweep
    ],
)
def test_bad_configs_name_the_field(patch, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        slt.parse_config({**TINY, **patch})


def test_matched_kept_fractions_against_hand_computed_values():
    rows = [
        {"job": "A/ga", "test_acc": 0.90, "sparsity": 0.60},
        {"job": "A/ga", "test_acc": 0.80, "sparsity": 0.70},  # GA: acc 0.85, sparsity 0.65
        {"job": "A/adaptive_ab", "test_acc": 0.95, "sparsity": 0.40},
        {"job": "A/adaptive_ab", "test_acc": 0.85, "sparsity": 0.50},  # AB: acc 0.90, sparsity 0.45
        {"job": "B/ga", "test_acc": 1.0, "sparsity": 0.99},  # another arch: ignored
    ]
    jobs = ["A/ga", "A/adaptive_ab"]
    # mean over all four A rows: sparsity 0.55 → kept 0.45; the more accurate variant is AB: kept 0.55
    assert slt.matched_kept_fraction("matched", rows, jobs) == pytest.approx(0.45)
    assert slt.matched_kept_fraction("matched_best", rows, jobs) == pytest.approx(0.55)
    tie = [{**r, "test_acc": 0.5} for r in rows]  # a tie goes to the first variant listed (GA: 0.65)
    assert slt.matched_kept_fraction("matched_best", tie, jobs) == pytest.approx(0.35)
    assert slt.matched_kept_fraction("matched_best", tie, jobs[::-1]) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="none found"):
        slt.matched_kept_fraction("matched", rows, ["C/ga"])


def test_old_spellings_are_read_with_a_warning():
    old = {**TINY, "archs": {"A": [2, 20, 2]}, "ga": {"pop_size": 10, "min_generations": 6, "patience": 3}}
    del old["networks"]
    with pytest.warns(FutureWarning, match="ga.pop_size → ga.population_size"):
        assert slt.parse_config(old) == slt.parse_config(TINY)


def test_run_directory_and_skip_on_rerun(tmp_path):
    exp = slt.parse_config(TINY)
    console = Console(file=io.StringIO(), width=150)
    path = slt.run_experiment(exp, out=tmp_path, console=console)
    rows = [json.loads(x) for x in (path / "results.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["sparsity"] <= 1.0
        assert r["generations"] >= 6
    summary = json.loads((path / "summary.json").read_text())["jobs"]["A/ga"]
    assert summary["seeds"] == 2
    assert summary["test_acc_mean"] == pytest.approx(np.mean([r["test_acc"] for r in rows]))
    metrics = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == sum(r["generations"] for r in rows)
    assert {p.name for p in (path / "plots").glob("*.png")} >= {"curves_A_ga.png", "box_test_acc.png"}

    # a second run of the same config finds the finished job and does not run it again
    console2 = Console(file=io.StringIO(), width=150)
    again = slt.run_experiment(exp, out=tmp_path, console=console2)
    assert again == path
    assert "finished earlier, skipped" in console2.file.getvalue()
    assert len((path / "results.jsonl").read_text().splitlines()) == 2


def test_histories_from_metrics_roundtrip():
    rows = [
        {
            "job": "A/ga",
            "seed": s,
            "generation": g,
            "best_acc": 0.5 + 0.01 * g,
            "sparsity_fittest": 0.1,
            "best_sparsity": 0.2,
            "best_ever_sparsity": 0.3,
        }
        for s, n in ((0, 3), (1, 5))
        for g in range(1, n + 1)
    ]
    h = slt.histories_from_metrics(rows)["A/ga"]
    assert h["best_acc"].shape == (2, 5)
    np.testing.assert_allclose(h["best_acc"][1], [0.51, 0.52, 0.53, 0.54, 0.55])
    assert np.isnan(h["best_acc"][0, 3:]).all() and np.isfinite(h["best_acc"][0, :3]).all()


class Killed(Exception):
    """Stands for a kill of the process at a chosen point of a run."""


def _rows(file):
    return [json.loads(x) for x in file.read_text().splitlines()]


def _results(path):
    return _rows(path / "results.jsonl")


def test_only_splits_jobs_without_changing_results(tmp_path, monkeypatch):
    cfg = {
        **TINY,
        "variants": ["ga", "static_ab"],
        "edge_popup": [
            {"kept_fraction": "matched", "epochs": 2},
            {"kept_fraction": "matched_best", "epochs": 2},
        ],
        "seeds": 1,
    }
    exp = slt.parse_config(cfg)
    quiet = Console(file=io.StringIO(), width=150)
    kept, real_job = {}, slt._edge_popup_seeds

    def recording_job(exp, job, data, seeds, matched):
        kept[job.spec.kept_fraction] = matched
        return real_job(exp, job, data, seeds, matched)

    monkeypatch.setattr(slt, "_edge_popup_seeds", recording_job)
    whole = slt.run_experiment(exp, out=tmp_path / "whole", console=quiet)

    # first only the static-AB job and the matched edge-popup; the latter needs the GA's sparsity first
    log = Console(file=io.StringIO(), width=150)
    split = slt.run_experiment(exp, out=tmp_path / "split", console=log, only=["*/static_ab", "A/edge*"])
    assert {r["job"] for r in _results(split)} == {"A/static_ab"}
    assert "needs the GA results of A/ga first" in log.file.getvalue()
    # then the rest, into the same run directory
    again = slt.run_experiment(exp, out=tmp_path / "split", console=quiet, only=["A/ga", "A/edge_popup*"])
    assert again.name == split.name

    def key(rows):
        drop = {"seconds"}
        return sorted(
            (r["job"], r["seed"], json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True))
            for r in rows
        )

    assert key(_results(split)) == key(_results(whole))  # same jobs, same numbers, any order of calls
    rows = {r["method"]: r for r in _results(whole)}  # one seed: a job's mean is its one row
    best = max(("ga", "static_ab"), key=lambda m: rows[m]["test_acc"])
    assert rows["ga"]["sparsity"] != rows["static_ab"]["sparsity"]  # else the two rules agree
    assert kept["matched"] == pytest.approx(1 - (rows["ga"]["sparsity"] + rows["static_ab"]["sparsity"]) / 2)
    assert kept["matched_best"] == pytest.approx(1 - rows[best]["sparsity"])
    assert {p.name for p in (split / "plots").glob("curves_*.png")} == {
        "curves_A_ga.png",
        "curves_A_static_ab.png",
    }


def test_only_rejects_empty_patterns():
    with pytest.raises(ValueError, match="--only"):
        slt.job_selector([""])
    sel = slt.job_selector(["D/*", "*/backprop"])
    assert sel("D/ga") and sel("B/backprop") and not sel("B/ga") and not sel("B@5/ga")
    assert slt.job_selector(None)("anything")
    ep = "D/edge_popup[uniform,k=0.5]"
    assert slt.job_selector([ep])(ep) and not slt.job_selector([ep])("D/edge_popup[uniform,k=matched]")


def test_plot_orderings():
    from es_lottery import plots

    labels = ["B@10", "B@2", "100@9", "B@5", "100@10", "A"]
    assert sorted(labels, key=plots.natural_key) == ["100@9", "100@10", "A", "B@2", "B@5", "B@10"]
    methods = [
        "edge_popup[uniform,k=0.5]",
        "backprop",
        "ga",
        "adaptive_ab",
        "edge_popup[kaiming_normal,k=0.5]",
    ]
    assert sorted(methods, key=plots.method_key) == [
        "ga",
        "adaptive_ab",
        "backprop",
        "edge_popup[kaiming_normal,k=0.5]",
        "edge_popup[uniform,k=0.5]",
    ]


def test_interrupted_ga_job_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    cfg = {**TINY, "variants": ["adaptive_ab"], "ga": {**TINY["ga"], "min_generations": 14}}
    exp = slt.parse_config(cfg)
    quiet = Console(file=io.StringIO(), width=150)
    whole = slt.run_experiment(exp, out=tmp_path / "whole", console=quiet)

    real_save = generations.save_tree
    saved = []

    def save_then_die(path, tree, meta):
        saved.append(meta["until"])
        if len(saved) == 2:  # killed right after the second checkpoint (generation 8) ...
            state, hist = tree  # ... whose evaluation counters carry a marker, to see they are resumed
            real_save(path, (state.replace(n_evals=state.n_evals + 1000), hist), meta)
            raise Killed
        real_save(path, tree, meta)

    monkeypatch.setattr(generations, "save_tree", save_then_die)
    with pytest.raises(Killed):
        slt.run_experiment(exp, out=tmp_path / "cut", console=quiet, checkpoint_seconds=0)
    monkeypatch.setattr(generations, "save_tree", real_save)
    run = tmp_path / "cut" / whole.name
    (job,) = slt.plan(exp, tmp_path / "cut")
    ckpt = slt.checkpoint_path(job, range(0, 2))
    assert saved == [4, 8] and ckpt.exists() and not (run / "results.jsonl").exists()
    assert ckpt.parent.parent == job.branch.path

    log = Console(file=io.StringIO(), width=150)
    resumed = slt.run_experiment(exp, out=tmp_path / "cut", console=log)
    assert "resuming at generation 8" in log.file.getvalue()
    assert not ckpt.exists()  # removed once the job's results are written

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("seconds", "n_evals")} for r in rows]

    # the same run, continued from the saved state (its total evaluation count carries the marker)
    assert strip(_results(resumed)) == strip(_results(whole))
    assert [r["n_evals"] for r in _results(resumed)] == [r["n_evals"] + 1000 for r in _results(whole)]
    assert _rows(resumed / "metrics.jsonl") == _rows(whole / "metrics.jsonl")  # per-generation deltas
    assert min(r["generations"] for r in _results(whole)) > 8  # the cut really was mid-run


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    import jax.numpy as jnp

    from es_lottery import treeio

    path = tmp_path / "c.npz"
    treeio.save_tree(path, {"a": jnp.zeros((2, 3)), "b": jnp.int32(4)}, {"until": 4})
    tree, meta = treeio.load_tree(path, {"a": jnp.ones((2, 3)), "b": jnp.int32(0)})
    assert meta == {"until": 4} and int(tree["b"]) == 4 and tree["a"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"array 'a' is float32\[2, 3\].*float32\[5, 3\]"):
        treeio.load_tree(path, {"a": jnp.ones((5, 3)), "b": jnp.int32(0)})
    with pytest.raises(ValueError, match="lacks the array 'c'"):
        treeio.load_tree(path, {"a": jnp.ones((2, 3)), "c": jnp.int32(0)})


def test_seed_chunks_are_consecutive_and_bounded():
    assert slt.seed_chunks([9, 0, 1, 2, 5, 6], 2) == [range(0, 2), range(2, 3), range(5, 7), range(9, 10)]
    assert slt.seed_chunks([0, 1, 2, 5, 6, 9], None) == [range(0, 3), range(5, 7), range(9, 10)]
    assert slt.seed_chunks([], 3) == []
    with pytest.raises(ValueError, match="seed_chunk"):
        slt.run_experiment(slt.parse_config(TINY), out="unused", seed_chunk=0)


def test_a_job_run_in_seed_chunks_keeps_finished_seeds_and_gives_the_same_numbers(tmp_path, monkeypatch):
    exp = slt.parse_config({**TINY, "seeds": 3})
    quiet = Console(file=io.StringIO(), width=150)
    whole = slt.run_experiment(exp, out=tmp_path / "whole", console=quiet)

    real_job = slt._ga_chunk
    calls = []

    def job_then_die(*args):
        calls.append(args[3])
        if len(calls) == 2:  # killed while running the second chunk
            raise Killed
        return real_job(*args)

    monkeypatch.setattr(slt, "_ga_chunk", job_then_die)
    with pytest.raises(Killed):
        slt.run_experiment(exp, out=tmp_path / "cut", console=quiet, seed_chunk=2)
    run = tmp_path / "cut" / whole.name
    assert calls == [range(0, 2), range(2, 3)]
    (job,) = slt.plan(exp, tmp_path / "cut")
    assert job.branch.done_seeds(range(3)) == {0, 1}  # the first chunk's seeds are kept

    calls.clear()
    log = Console(file=io.StringIO(), width=150)
    slt.run_experiment(exp, out=tmp_path / "cut", console=log, seed_chunk=2)
    assert calls == [range(2, 3)]  # only the missing seed runs again
    assert "2 seeds finished earlier" in log.file.getvalue()

    def strip(rows):
        return sorted(
            json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in rows
        )

    assert strip(_results(run)) == strip(_results(whole))  # seed s gets the same key in any chunk
    assert sorted(map(json.dumps, _rows(run / "metrics.jsonl"))) == sorted(
        map(json.dumps, _rows(whole / "metrics.jsonl"))
    )
    assert json.loads((run / "summary.json").read_text())["jobs"]["A/ga"]["seeds"] == 3
