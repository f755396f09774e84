"""`es-lottery imp` with ``trainer: {type: ppo}``: PPO-IMP and its random-reinit baseline on CartPole-v1 —
masks nested and applied (pruned policy weights exactly zero in the trained parameters), the ES config's θ₀
shared, and a run killed between levels resumes to the bytes of an uninterrupted one."""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest
from test_imp_control import Killed, npz_bytes, quiet  # the same kill stand-in and byte view

from es_lottery.experiments import imp
from es_lottery.gradient import ppo
from es_lottery.treeio import load_tree

TINY = {
    "name": "tiny_ppo",
    "env": {
        "name": "CartPole-v1",
        "episode_length": 100,
        "test_episodes": 4,
        "policy": {"hidden": [8], "action_mode": "argmax"},
    },
    "trainer": {
        "type": "ppo",
        "total_env_steps": 2048,
        "num_envs": 4,
        "rollout_length": 64,
        "update_epochs": 2,
        "num_minibatches": 2,
        "learning_rate": 2.5e-3,
    },
    "imp": {"num_levels": 3, "prune_rate": 0.5},
    "criteria": ["magnitude", "random_reinit"],
    "seeds": 1,
}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    exp = imp.parse_config(copy.deepcopy(TINY))
    out = tmp_path_factory.mktemp("run")
    return imp.run_experiment(exp, out, quiet()), imp.data_dir(exp, out)


def test_ppo_config_section_is_a_ppo_config():
    exp = imp.parse_config(copy.deepcopy(TINY))
    assert exp.trainer_type == "ppo" and isinstance(exp.trainer, ppo.PPOConfig)
    assert exp.trainer.total_env_steps == 2048 and exp.trainer.gamma == 0.99  # default kept
    bad = copy.deepcopy(TINY)
    bad["trainer"]["num_minibatches"] = 3  # 4 · 64 = 256 is not divisible by 3
    with pytest.raises(ValueError, match="num_minibatches"):
        imp.parse_config(bad)
    no_env = {k: v for k, v in copy.deepcopy(TINY).items() if k != "env"}
    no_env.update(dataset="digits", network={"name": "mlp", "sizes": [64, 8, 10]})
    with pytest.raises(ValueError, match=r"trainer\.type"):
        imp.parse_config(no_env)  # PPO needs an env


def test_ppo_imp_prunes_nested_masks_and_keeps_pruned_weights_zero(full_run):
    view, data = full_run
    rows = [json.loads(x) for x in (view / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["criterion"], r["level"]) for r in rows) == [
        (c, k) for c in ("magnitude", "random_reinit") for k in range(3)
    ]
    for r in rows:
        assert 1.0 <= r["test_return"] <= 100.0
    kept = {r["level"]: r["kept"] for r in rows if r["criterion"] == "magnitude"}
    total = next(r["total"] for r in rows)
    assert kept == {0: total, 1: total // 2, 2: total // 4}
    # θ₀ is the policy's init of the run key's first half: the draw ES makes for the same env section
    exp = imp.parse_config(copy.deepcopy(TINY))
    es_exp = imp.parse_config(
        {**copy.deepcopy(TINY), "trainer": {"type": "es", "algorithm": "SNES", "num_generations": 2}}
    )
    key = jax.random.key(7)
    ppo_theta = exp.trainer_kind.control(exp.control_task(), exp.trainer).init_params(key)
    es_theta = es_exp.trainer_kind.control(es_exp.control_task(), es_exp.trainer).init_params(key)
    for a, b in zip(jax.tree.leaves(ppo_theta), jax.tree.leaves(es_theta), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the trained policy of a pruned level is exactly zero where its mask is, and kept weights moved
    ldir = data / "seed_0" / "magnitude" / "level_2"
    theta0 = load_tree(data / "seed_0" / "theta0.npz", ppo_theta)[0]
    mask = imp.load_mask(ldir / "mask.npz", theta0)
    final = load_tree(ldir / "final_params.npz", theta0)[0]
    start = load_tree(ldir / "theta0.npz", theta0)[0]
    pruned = kept_moved = 0
    for f, m, s0 in zip(jax.tree.leaves(final), jax.tree.leaves(mask), jax.tree.leaves(start), strict=True):
        f, m, s0 = np.asarray(f), np.asarray(m), np.asarray(s0)
        assert np.all(f[m == 0] == 0)
        pruned += int((m == 0).sum())
        kept_moved += int((f[m == 1] != s0[m == 1]).sum())
    assert pruned > 0 and kept_moved > 0


def test_ppo_imp_resumes_to_the_bytes_of_an_uninterrupted_run(full_run, tmp_path, monkeypatch):
    exp = imp.parse_config(copy.deepcopy(TINY))
    calls = []
    train = ppo.PPOTrainer.train

    def killing_train(self, key, theta0, mask):
        calls.append(1)
        if len(calls) == 3:  # magnitude level 2: levels 0 and 1 are finished
            raise Killed
        return train(self, key, theta0, mask)

    monkeypatch.setattr(ppo.PPOTrainer, "train", killing_train)
    with pytest.raises(Killed):
        imp.run_experiment(exp, tmp_path, quiet())
    monkeypatch.setattr(ppo.PPOTrainer, "train", train)
    root = imp.run_experiment(exp, tmp_path, quiet())
    assert root.name == full_run[0].name
    assert npz_bytes(imp.data_dir(exp, tmp_path)) == npz_bytes(full_run[1])
    resumed = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    full = [json.loads(x) for x in (full_run[0] / "metrics.jsonl").read_text().splitlines()]
    key = ("criterion", "level", "kept", "test_return")
    assert [{k: r[k] for k in key} for r in resumed] == [{k: r[k] for k in key} for r in full]
