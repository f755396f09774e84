"""``es_lottery.sweep``: 3 configurations through submitit's local executor, collected, skipped when
submitted again; grid parsing and bad input.

The configurations are a tiny strong-ticket GA (moons, 600 points, 1 seed, ≤ 3 generations) at three
population sizes; each job is a fresh subprocess (import + compile ≈ 10–20 s on 2 busy cores).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("submitit")

from es_lottery import sweep as sweep_lib

BASE = {
    "name": "tiny",
    "dataset": "moons",
    "dataset_args": {"n_train": 600, "n_test": 200},
    "networks": {"A": {"sizes": [2, 4, 2]}},
    "variants": ["ga"],
    "seeds": 1,
    "ga": {"population_size": 10, "min_generations": 2, "patience": 1, "max_generations": 3},
    "progress_every": 2,
}
GRID = {"ga.population_size": [8, 10, 12]}


@pytest.mark.slow
def test_local_sweep_runs_collects_and_skips(tmp_path):
    first = sweep_lib.sweep(BASE, GRID, kind="slt", out=tmp_path, max_parallel=2, poll_seconds=0.5)
    assert [j.status for j in first.jobs] == ["done"] * 3, [(j.name, j.error) for j in first.jobs]
    names = [j.name for j in first.jobs]
    assert names == [f"tiny-ga.population_size-{n}" for n in (8, 10, 12)]
    assert len({j.run_dir for j in first.jobs}) == 3
    for job in first.jobs:
        assert job.summary is not None, job
        assert any(k.endswith("test_acc_mean") for k in sweep_lib._headline(job.summary)), job.summary
    summary = json.loads((first.directory / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done"] * 3
    assert (first.directory / "summary.md").read_text().count("| tiny-ga.population_size-") == 3
    submitted = sorted(p.name for p in (first.directory / "submitit").iterdir())

    second = sweep_lib.sweep(BASE, GRID, kind="slt", out=tmp_path, max_parallel=2, poll_seconds=0.5)
    assert [j.status for j in second.jobs] == ["skipped"] * 3
    assert [j.run_dir for j in second.jobs] == [j.run_dir for j in first.jobs]
    assert sorted(p.name for p in (first.directory / "submitit").iterdir()) == submitted  # nothing new


def test_identical_configurations_run_once_and_bad_values_name_the_field(tmp_path):
    jobs = sweep_lib.expand_grid({"seeds": [1, 1], "ga.population_size": [8]})
    assert jobs == [{"seeds": 1, "ga.population_size": 8}] * 2
    with pytest.raises(ValueError, match="population_size"):
        sweep_lib.sweep(BASE, {"ga.population_size": [10, -1]}, kind="slt", out=tmp_path)
    assert not (tmp_path / "sweeps" / "tiny" / "submitit").exists()  # nothing was submitted
    with pytest.raises(ValueError, match="kind must be one of slt, imp, nets"):
        sweep_lib.sweep(BASE, kind="ga", out=tmp_path)
    with pytest.raises(ValueError, match="executor must be one of local, slurm"):
        sweep_lib.sweep(BASE, kind="slt", executor="pbs", out=tmp_path)


def test_parse_grid_reads_yaml_values():
    grid = sweep_lib.parse_grid(["ga.population_size=50,100", "variants=[ga],[ga,adaptive_ab]", "seed=3"])
    assert grid == {"ga.population_size": [50, 100], "variants": [["ga"], ["ga", "adaptive_ab"]], "seed": [3]}
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        sweep_lib.parse_grid(["nonsense"])


def test_parse_options_for_the_slurm_executor():
    assert sweep_lib.parse_options(["partition=gpu", "gpus_per_node=8", "setup=[module load cuda]"]) == {
        "partition": "gpu",
        "gpus_per_node": 8,
        "setup": ["module load cuda"],
    }
    with pytest.raises(ValueError, match="--slurm expects KEY=VALUE"):
        sweep_lib.parse_options(["gpu"])


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    """Every documented ``slurm=`` key reaches submitit's SLURM executor (a fake ``srun`` on PATH lets it
    be built here; nothing is submitted), and an unknown key names the allowed ones."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    options = {
        "partition": "gpu",
        "nodes": 2,
        "tasks_per_node": 8,
        "gpus_per_node": 8,
        "cpus_per_task": 8,
        "mem_gb": 100,
        "timeout_min": 60,
        "account": "a",
        "qos": "q",
        "constraint": "h100",
        "exclusive": True,
        "array_parallelism": 4,
        "setup": ["module load cuda"],
        "additional_parameters": {"mail-type": "END"},
    }
    assert set(options) == set(sweep_lib.SLURM_KEYS)
    ex = sweep_lib._executor("slurm", tmp_path / "submitit", options, 10)
    params = ex._executor.parameters
    assert params["partition"] == "gpu" and params["ntasks_per_node"] == 8 and params["time"] == 60
    assert params["setup"] == ["module load cuda"] and params["mem"] == "100GB"
    with pytest.raises(ValueError, match=r"unknown key 'slurm\.gpus'; allowed: partition"):
        sweep_lib._executor("slurm", tmp_path / "submitit", {"gpus": 2}, 10)
