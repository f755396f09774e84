"""`es-lottery imp` on a control task (the `env:` section): ES-IMP on CartPole, the observation statistics
kept per level and in checkpoints (a killed run resumes bit-identically), and clear config errors."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
from rich.console import Console

from es_lottery.experiments import imp

TINY = {
    "name": "tiny_cartpole",
    "env": {
        "name": "CartPole-v1",
        "episode_length": 60,
        "train_rollouts": 2,
        "test_episodes": 4,
        "policy": {"hidden": [6]},
    },
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 8,
        "sigma_init": 0.1,
        "num_generations": 6,
        "eval_every": 3,
        "checkpoint_every": 3,
    },
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["magnitude", "random_reinit"],
    "seeds": 1,
}


class Killed(Exception):
    """Stands in for SIGKILL."""


def quiet() -> Console:
    return Console(file=io.StringIO(), width=150)


def npz_bytes(root):
    out = {}
    for f in sorted(root.rglob("*.npz")):
        with np.load(f) as data:
            out[str(f.relative_to(root))] = {k: data[k].tobytes() for k in data.files}
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """(the view of the run, its data directory in the store)."""
    exp = imp.parse_config(copy.deepcopy(TINY))
    out = tmp_path_factory.mktemp("run")
    return imp.run_experiment(exp, out, quiet()), imp.data_dir(exp, out)


def test_control_imp_writes_returns_and_observation_statistics(full_run):
    view, data = full_run
    rows = [json.loads(x) for x in (view / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["criterion"], r["level"]) for r in rows) == [
        ("magnitude", 0),
        ("magnitude", 1),
        ("random_reinit", 0),
        ("random_reinit", 1),
    ]
    for r in rows:
        assert 1.0 <= r["test_return"] <= 60.0  # CartPole: +1 per step, horizon 60
        assert "test_accuracy" not in r
    ldir = data / "seed_0" / "magnitude" / "level_0"
    with np.load(ldir / "task_state.npz") as stats:
        assert float(stats["count"]) > 0  # the normaliser saw the training rollouts' observations
    summary = json.loads((view / "summary.json").read_text())
    assert summary["criteria"]["magnitude"][0]["test_return_mean"] == pytest.approx(rows[0]["test_return"])
    assert "env" in summary["experiment"] and "dataset" not in summary["experiment"]


def test_control_imp_resumes_bit_identically(full_run, tmp_path):
    exp = imp.parse_config(copy.deepcopy(TINY))
    seen = []

    def kill(info):
        seen.append(info)
        if len(seen) == 3:  # level 1 of magnitude, after its first segment (obs statistics mid-level)
            raise Killed

    with pytest.raises(Killed):
        imp.run_experiment(exp, tmp_path, quiet(), on_segment=kill)
    assert "env_steps_per_s" in seen[0] and seen[0]["fitness_max"] >= seen[0]["fitness_mean"]
    root = imp.run_experiment(exp, tmp_path, quiet())
    assert root.name == full_run[0].name
    assert npz_bytes(imp.data_dir(exp, tmp_path)) == npz_bytes(full_run[1])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"env": {"name": "CartPol-v1"}}, "CartPol-v1"),
        ({"env": {"name": "CartPole-v1", "episode_length": 0}}, "episode_length"),
        ({"dataset": "digits"}, "dataset: does not apply with env"),
        ({"env": {"name": "CartPole-v1", "episodes": 3}}, "env.*episodes"),
        ({"trainer": {"type": "gd"}}, "trainer.type"),
    ],
)
def test_control_config_errors_name_the_field(change, words):
    cfg = {**copy.deepcopy(TINY), **change}
    with pytest.raises(ValueError, match=words):
        imp.parse_config(cfg)
