"""The typed config loader, the run store's keys, adding jobs to finished configs, and run directories of the
old layout (made by the code before the store: ``tests/data/old_runs``) migrated without a number lost."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml
from rich.console import Console

from es_lottery import cli
from es_lottery.experiments import config as C
from es_lottery.experiments import imp, legacy_runs, nets, slt
from es_lottery.experiments.store import Job, dirname, key_of
from es_lottery.pruning import gd
from es_lottery.treeio import read_jsonl

OLD_RUNS = Path(__file__).with_name("data") / "old_runs"


def quiet() -> Console:
    return Console(file=io.StringIO(), width=150)


# ----------------------------------------------------------------------------------------------
# the loader


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    steps: int = 3


@dataclass(frozen=True)
class Outer:
    name: str
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=lambda: Inner(steps=7))
    maybe: float | None = None
    table: dict[str, Inner] = field(default_factory=dict)
    quiet: int = field(default=1, metadata={"hashed": False})


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"name": "x", "inner": {"steps": 2.0}}, "inner.steps", "expected an integer, got the number 2.0"),
        ({"name": "x", "inner": {"steps": True}}, "inner.steps", "expected an integer"),
        ({"name": "x", "flag": "true"}, "flag", "expected true or false"),
        ({"name": "x", "flag": 1}, "flag", "expected true or false"),
        ({"name": 3}, "name", "expected a string"),
        ({"name": "x", "mode": "c"}, "mode", "one of a, b"),
        ({"name": "x", "sizes": [1, "2"]}, "sizes[1]", "expected an integer"),
        ({"name": "x", "inner": {"rate": "1e-4"}}, "inner.rate", "write 1.0e-4"),
        ({"name": "x", "inner": {"rat": 1}}, "inner.rat", "allowed: rate, steps"),
        ({"name": "x", "table": {"k": {"steps": "3"}}}, "table.k.steps", "expected an integer"),
        ({"flag": True}, "name", "is required"),
        ({"name": "x", "maybe": "no"}, "maybe", "expected a number"),
    ],
)
def test_the_loader_is_strict_and_names_the_field_path(data, path, words):
    with pytest.raises(C.ConfigError) as err:
        C.load(Outer, data)
    assert err.value.path == path and words in str(err.value), str(err.value)


def test_partial_sections_merge_into_their_default_and_round_trip():
    cfg = C.load(Outer, {"name": "x", "inner": {"rate": 1}, "maybe": 2})
    assert cfg.inner == Inner(rate=1.0, steps=7) and isinstance(cfg.inner.rate, float)  # merged, 1 → 1.0
    assert cfg.maybe == 2.0 and cfg.sizes == (1, 2)
    assert C.load(Outer, C.to_dict(cfg)) == cfg
    assert C.nondefault(cfg) == {"name": "x", "inner": {"rate": 1.0}, "maybe": 2.0}  # steps=7 is the default
    assert "quiet" not in C.nondefault(dataclasses.replace(cfg, quiet=5))  # not hashed: no result changes


def test_a_field_added_with_its_default_keys_no_job_differently():
    @dataclass(frozen=True)
    class Before:
        a: int = 1

    @dataclass(frozen=True)
    class After:
        a: int = 1
        b: str = "new"  # a field added later, with the default that keeps the old behaviour

    assert key_of(C.nondefault(Before(a=2))) == key_of(C.nondefault(After(a=2)))
    assert dirname("ga", C.nondefault(After())) == "ga"  # all defaults: the plain name
    assert dirname("ga", C.nondefault(After(b="other"))).startswith("ga-")


def test_library_fields_take_the_canonical_spelling():
    exp = nets.parse_config(
        {
            "name": "t",
            "dataset": "xor",
            "network": {"name": "mlp", "sizes": [2, 3, 1]},
            "nets": {"population_size": 4, "inner_learning_rate": 0.2},
            "final_training": {"learning_rate": 0.3},
        }
    )
    assert (exp.nets.pop_size, exp.nets.inner_lr, exp.final_training.lr) == (4, 0.2, 0.3)
    assert C.to_dict(exp)["nets"]["population_size"] == 4 and "pop_size" not in C.to_dict(exp)["nets"]
    with pytest.raises(C.ConfigError, match=r"nets\.population_size: must be an integer ≥ 2"):
        nets.parse_config(
            {"name": "t", "dataset": "xor", "network": {"sizes": [2, 3, 1]}, "nets": {"population_size": 1}}
        )


def test_a_key_collision_or_an_edited_job_file_is_refused(tmp_path):
    job = Job.open(tmp_path, "slt", "moons", {"a": 1}).branch("ga", {"population_size": 10}).ensure()
    (job.path / "job.json").write_text(json.dumps({"format": 2, "stem": "ga", "fields": {"x": 1}}))
    with pytest.raises(ValueError, match="describes another job"):
        Job.open(tmp_path, "slt", "moons", {"a": 1}).branch("ga", {"population_size": 10})


# ----------------------------------------------------------------------------------------------
# adding a job to a finished config runs only the new job

TINY_SLT = {
    "name": "tiny",
    "dataset": "moons",
    "dataset_args": {"n_train": 400, "n_test": 200},
    "networks": {"A": {"sizes": [2, 8, 2]}},
    "variants": ["ga"],
    "seeds": 2,
    "ga": {"population_size": 6, "min_generations": 3, "patience": 2},
    "progress_every": 3,
}


def test_adding_an_edge_popup_variant_or_a_baseline_runs_only_the_new_job(tmp_path, monkeypatch):
    first = slt.run_experiment(slt.parse_config(TINY_SLT), tmp_path, console=quiet())
    ga_rows = read_jsonl(first / "results.jsonl")

    def no_ga(*args, **kwargs):
        raise AssertionError("a finished GA job ran again")

    monkeypatch.setattr(slt, "_ga_chunk", no_ga)
    ran: list[str] = []
    for name in ("_backprop_seeds", "_edge_popup_seeds"):
        real = getattr(slt, name)

        def spy(exp, job, *rest, real=real):
            ran.append(job.name)
            return real(exp, job, *rest)

        monkeypatch.setattr(slt, name, spy)
    grown = {
        **TINY_SLT,
        "backprop": True,
        "edge_popup": [{"kept_fraction": "matched_best", "epochs": 1}],
        "progress_every": 5,  # not part of any key
    }
    path = slt.run_experiment(slt.parse_config(grown), tmp_path, console=quiet())
    assert path == first and ran == ["A/backprop", "A/edge_popup[uniform,k=matched_best,epochs=1]"]
    rows = read_jsonl(path / "results.jsonl")
    assert [r for r in rows if r["method"] == "ga"] == ga_rows  # the finished job's rows, untouched
    # a second edge-popup variant: only it runs; the first one and the GA are left alone
    ran.clear()
    more = {**grown, "edge_popup": [*grown["edge_popup"], {"kept_fraction": 0.3, "epochs": 1}]}
    slt.run_experiment(slt.parse_config(more), tmp_path, console=quiet())
    assert ran == ["A/edge_popup[uniform,k=0.3,epochs=1]"]
    # more seeds: only the new seeds of every job
    ran.clear()
    monkeypatch.setattr(
        slt, "_ga_chunk", lambda exp, job, data, seeds, *a: ran.append((job.name, list(seeds)))
    )
    slt.run_experiment(slt.parse_config({**more, "seeds": 3}), tmp_path, console=quiet())
    assert ("A/ga", [2]) in ran


def test_adding_a_baseline_to_a_finished_imp_config_trains_only_the_baseline(tmp_path, monkeypatch):
    cfg = {
        "name": "tiny_gd",
        "dataset": "digits",
        "network": {"name": "mlp", "sizes": [64, 8, 10]},
        "trainer": {"type": "gd", "epochs": 1, "batch_size": 128},
        "imp": {"num_levels": 2},
        "criteria": ["magnitude"],
        "seeds": 1,
    }
    imp.run_experiment(imp.parse_config(cfg), tmp_path, console=quiet())
    calls: list = []
    real = gd.GDTrainer.train
    monkeypatch.setattr(gd.GDTrainer, "train", lambda self, *a: calls.append(1) or real(self, *a))
    grown = imp.parse_config({**cfg, "criteria": ["magnitude", "mask_reinit"], "imp": {"num_levels": 3}})
    view = imp.run_experiment(grown, tmp_path, console=quiet())
    # magnitude: only its new level 2; mask_reinit: level 0 shared, levels 1 and 2 trained
    assert len(calls) == 1 + 2
    rows = read_jsonl(view / "metrics.jsonl")
    assert sorted((r["criterion"], r["level"]) for r in rows) == [
        (c, k) for c in ("magnitude", "mask_reinit") for k in range(3)
    ]
    # the grown run holds exactly what the grown config run from scratch holds (the mask that continues
    # the chain past its old last level is computed again from that level's files)
    monkeypatch.setattr(gd.GDTrainer, "train", real)
    imp.run_experiment(grown, tmp_path / "fresh", console=quiet())
    a, b = imp.data_dir(grown, tmp_path), imp.data_dir(grown, tmp_path / "fresh")
    files = sorted(f.relative_to(b) for f in b.rglob("*.npz"))
    assert files == sorted(f.relative_to(a) for f in a.rglob("*.npz"))
    for f in files:
        with np.load(a / f) as x, np.load(b / f) as y:
            assert all(x[k].tobytes() == y[k].tobytes() for k in y.files), f


# ----------------------------------------------------------------------------------------------
# run directories of the old layout


def _new_spelling(kind: str, old: dict) -> dict:
    """The current config of an old run directory's resolved config, written by hand."""
    cfg = copy.deepcopy(old)
    if kind == "slt":
        cfg["networks"] = {k: {"sizes": v} for k, v in cfg.pop("archs").items()}
        cfg["ga"]["population_size"] = cfg["ga"].pop("pop_size")
    elif kind == "nets":
        cfg["nets"]["population_size"] = cfg["nets"].pop("pop_size")
        cfg["nets"]["inner_learning_rate"] = cfg["nets"].pop("inner_lr")
        cfg["final_training"]["learning_rate"] = cfg["final_training"].pop("lr")
    else:
        cfg["trainer"]["learning_rate"] = cfg["trainer"].pop("lr")
        cfg["baseline_mode"] = "branch"  # what the old config (with baselines, no key) meant
        cfg["seeds"] = 1
    return cfg


@pytest.mark.parametrize("kind", ["slt", "imp", "nets"])
def test_old_run_directories_are_migrated_and_their_jobs_never_rerun(kind, tmp_path, monkeypatch):
    (old,) = OLD_RUNS.glob(f"old_{kind}-*")
    runs = tmp_path / "runs"
    shutil.copytree(old, runs / old.name)
    assert cli.main(["migrate", "--out", str(runs)]) == 0
    assert legacy_runs.migrate(runs / old.name, runs)["experiment"] == kind  # a second time: nothing new
    shutil.rmtree(runs / old.name)  # the store alone must hold everything

    def no_training(*a, **k):
        raise AssertionError("a migrated job was computed again")

    for mod, names in (
        (slt, ("_ga_chunk", "_edge_popup_seeds")),
        (nets, ("_nets_seeds", "_imp_seeds", "_random_seeds")),
    ):
        for name in names:
            monkeypatch.setattr(mod, name, no_training)
    monkeypatch.setattr(imp.ESTrainer, "train", no_training)

    config = yaml.safe_load((old / "config.yaml").read_text())
    cfg_path = tmp_path / "new.yaml"
    cfg_path.write_text(yaml.safe_dump(_new_spelling(kind, config)))
    assert cli.main([kind, str(cfg_path), "--out", str(runs)]) == 0
    view = runs / config["name"]
    if kind == "imp":
        want = read_jsonl(old / "metrics.jsonl")
        assert read_jsonl(view / "metrics.jsonl") == want
        exp = imp.load_config(cfg_path)
        data = imp.data_dir(exp, runs)
        for f in sorted(old.rglob("*.npz")):
            rel = f.relative_to(old)
            rel = Path(str(rel).replace("random_reinit", imp.branch_dirs(exp)["random_reinit"]))
            with np.load(f) as a, np.load(data / rel) as b:
                assert all(a[k].tobytes() == b[k].tobytes() for k in a.files), rel
    else:
        for name in ("results.jsonl", "metrics.jsonl"):
            assert read_jsonl(view / name) == read_jsonl(old / name), name
    if kind == "nets":
        exp = nets.load_config(cfg_path)
        with (
            np.load(old / "tickets" / "nets_seed1.npz") as a,
            np.load(nets.branches(exp, runs)["nets"].seed(1) / "ticket.npz") as b,
        ):
            assert sorted(a.files) == sorted(b.files) and all(
                a[k].tobytes() == b[k].tobytes() for k in a.files
            )


def test_running_a_config_next_to_its_old_directory_migrates_it_first(tmp_path, monkeypatch):
    (old,) = OLD_RUNS.glob("old_slt-*")
    shutil.copytree(old, tmp_path / old.name)
    monkeypatch.setattr(slt, "_ga_chunk", lambda *a, **k: pytest.fail("a migrated job ran again"))
    cfg = _new_spelling("slt", yaml.safe_load((old / "config.yaml").read_text()))
    log = quiet()
    view = slt.run_experiment(slt.parse_config(cfg), tmp_path, console=log)
    assert "migrated 4 finished result(s) of the old-layout" in log.file.getvalue()
    assert read_jsonl(view / "results.jsonl") == read_jsonl(old / "results.jsonl")
    assert (tmp_path / old.name / "results.jsonl").read_bytes() == (old / "results.jsonl").read_bytes()
