"""Masked PPO (``es_lottery.gradient.ppo``): masks stay exact zeros, PPO learns CartPole-v1 and
Pendulum-v1, same key → same bits, the Trainer protocol and the IMP loop, config validation, and the
brax compatibility shim of ``benchmarks/ppo.py`` (scoped, and still needed).

Compiles: one program per (task, config) — CartPole and Pendulum below — shared by every mask and key
(≈ 6.5 CPU-s each); a CartPole run ≈ 0.5 CPU-s, a Pendulum run ≈ 2 CPU-s; 4 CartPole and 2 Pendulum
runs in all. Measured wall time of the module: ≈ 1.5–2 min with the 2 cores shared at load 8
(≈ 45 CPU-s); ``-m slow`` adds Acrobot (3 actions) and seeds under ``vmap``.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from es_lottery import masks
from es_lottery.gradient import ppo
from es_lottery.pruning import loop
from es_lottery.tasks import control

# budgets that pass reliably (measured over 6 seeds each: CartPole 98,304 steps → test return 500 for
# every seed; Pendulum 153,600 steps → −194 … −221, a random policy ≈ −1200 … −1500)
CARTPOLE = ppo.PPOConfig.preset("CartPole-v1", total_env_steps=98_304)
PENDULUM = ppo.PPOConfig.preset("Pendulum-v1", total_env_steps=153_600)
DENSITY = 0.3


def kernels(tree):
    return {k: v["kernel"] for k, v in tree.items()}


RUN_KEY = jax.random.key(11)  # the IMP run key of test_imp_levels_same_key_same_bits


@pytest.fixture(scope="module")
def cartpole():
    """Level 0 of an IMP run by hand (θ₀ and the training key exactly as ``loop.run`` draws them) and a
    30 % random-mask run."""
    task = control.make_control_task("CartPole-v1", test_episodes=32)
    trainer = ppo.PPOTrainer.from_task(task, CARTPOLE)
    theta0 = trainer.init_params(loop.split_run_key(RUN_KEY)[0])
    mask = masks.random_mask(jax.random.key(7), DENSITY, theta0)
    dense = trainer.train_full(loop.level_keys(RUN_KEY, 0)[0], theta0, masks.ones(theta0))
    sparse = trainer.train(jax.random.key(1), masks.apply(theta0, mask), mask)
    return {"trainer": trainer, "theta0": theta0, "mask": mask, "dense": dense, "sparse": sparse}


@pytest.fixture(scope="module")
def pendulum():
    task = control.make_control_task("Pendulum-v1", test_episodes=32)
    trainer = ppo.PPOTrainer.from_task(task, PENDULUM)
    theta0 = trainer.init_params(jax.random.key(0))
    mask = masks.random_mask(jax.random.key(7), DENSITY, theta0)
    dense = trainer.train(jax.random.key(1), theta0, masks.ones(theta0))
    sparse = trainer.train_full(jax.random.key(1), masks.apply(theta0, mask), mask)
    return {"trainer": trainer, "theta0": theta0, "mask": mask, "dense": dense, "sparse": sparse}


def random_policy_return(trainer, theta0) -> float:
    """The deterministic test return of θ₀ itself (no training, empty statistics)."""
    task = trainer.task
    return float(ppo._evaluate(task, task.init_state(jax.random.key(0)), theta0)["return"])


def live_entries(mask) -> tuple[dict, dict]:
    """(kernel entries, bias entries) with a path to the output through kept weights — only those get a
    gradient: a unit whose outgoing weights are all pruned has a dead bias and incoming column."""
    names = sorted(mask, key=lambda n: int(n.split("_")[1]))
    reaches = np.ones(np.shape(mask[names[-1]]["kernel"])[1], bool)  # output units
    kernel, bias = {}, {}
    for name in reversed(names):
        bias[name] = reaches
        kernel[name] = np.asarray(mask[name]["kernel"]) & reaches[None, :]
        reaches = np.any(kernel[name], axis=1)
    return kernel, bias


def assert_masked_training(theta0, mask, final):
    live, live_bias = live_entries(mask)
    for name, w in kernels(final).items():
        m = np.asarray(mask[name]["kernel"])
        w = np.asarray(w)
        assert np.all(w[~m] == 0.0), f"{name}: pruned weights are not exactly zero"
        moved = w != np.asarray(theta0[name]["kernel"])
        assert live[name].sum() > 0
        frac = moved[live[name]].mean()
        assert frac > 0.95, f"{name}: only {frac:.0%} of the kept, connected weights changed"
        # biases are never pruned: every bias of a unit connected to the output trains
        bias_moved = np.asarray(final[name]["bias"]) != np.asarray(theta0[name]["bias"])
        frac = bias_moved[live_bias[name]].mean()
        assert frac > 0.95, f"{name}: only {frac:.0%} of the connected biases changed"


# ----------------------------------------------------------------------------------------------
# learning


def test_cartpole_learns(cartpole):
    out, test = cartpole["dense"]
    baseline = random_policy_return(cartpole["trainer"], cartpole["theta0"])
    assert baseline < 60
    assert float(test["return"]) >= 200, f"test return {float(test['return'])} (θ₀: {baseline})"
    curve = np.asarray(out.metrics["train_return"])
    assert np.nanmean(curve[:3]) < 60 < np.nanmean(curve[-5:])


def test_pendulum_learns(pendulum):
    res = pendulum["dense"]
    baseline = random_policy_return(pendulum["trainer"], pendulum["theta0"])
    assert baseline < -900
    assert float(res.eval_score) > -500, f"test return {float(res.eval_score)} (θ₀: {baseline})"
    assert res.metrics["final_log_std"].shape == (1,)


# ----------------------------------------------------------------------------------------------
# masks


def test_cartpole_masked_policy(cartpole):
    res, theta0, mask = cartpole["sparse"], cartpole["theta0"], cartpole["mask"]
    assert_masked_training(theta0, mask, res.final_params)
    kept, total = masks.count(mask)
    assert int(kept) == masks.kept_count(DENSITY, total)
    # the policy is the task's own tree, scored exactly as ES scores it
    ref = cartpole["trainer"].init_params(jax.random.key(3))
    assert jax.tree_util.tree_structure(res.final_params) == jax.tree_util.tree_structure(ref)
    task = cartpole["trainer"].task
    again = ppo._evaluate(task, res.task_state, res.final_params)  # the trainer's jitted evaluate
    assert float(again["return"]) == float(res.eval_score)
    assert res.std_params is None
    # a 30 % ticket still learns from a random mask, far above θ₀
    assert float(res.eval_score) > 100


def test_pendulum_masked_policy_and_unpruned_critic(pendulum):
    out, test = pendulum["sparse"]
    assert_masked_training(pendulum["theta0"], pendulum["mask"], out.policy)
    # the critic is a separate network that is never masked
    critic0 = ppo.make_critic(3, PENDULUM)
    assert out.critic["dense_0"]["kernel"].shape == (3, 64)
    assert jax.tree_util.tree_structure(out.critic) == jax.tree_util.tree_structure(
        jax.eval_shape(lambda: ppo.networks.init_params(jax.random.key(0), critic0))
    )
    for name, leaf in kernels(out.critic).items():
        assert np.all(np.asarray(leaf) != 0.0), f"critic {name} has zeros"
    assert np.isfinite(float(test["return"]))


def test_observation_statistics(pendulum):
    out, _ = pendulum["sparse"]
    # every observation acted on counts once (nothing is non-finite in Pendulum)
    assert float(out.obs_stats.count) == PENDULUM.env_steps
    assert np.all(np.asarray(out.obs_stats.var) > 0)
    assert np.all(np.abs(np.asarray(out.obs_stats.mean[:2])) <= 1.0)  # cos θ, sin θ


# ----------------------------------------------------------------------------------------------
# determinism, protocol, IMP


def test_imp_levels_same_key_same_bits(cartpole):
    """``loop.run`` with the PPO trainer: level 0 is bit-identical to the fixture's run from the same key
    (so an unfinished level retrained from its key reproduces itself), level 1 trains a 50 % mask."""
    trainer = cartpole["trainer"]
    assert isinstance(trainer, loop.Trainer)
    assert trainer.name == "ppo" and trainer.provides_std is False
    imp = loop.run(RUN_KEY, trainer, loop.IMPConfig(num_levels=2, prune_rate=0.5))
    assert [r.level for r in imp.records] == [0, 1]
    out, test = cartpole["dense"]
    r0, r1 = imp.records
    for a, b in zip(
        jax.tree_util.tree_leaves(r0.final_params), jax.tree_util.tree_leaves(out.policy), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert r0.eval_score == float(test["return"])
    np.testing.assert_array_equal(
        np.asarray(r0.metrics["policy_loss"]), np.asarray(out.metrics["policy_loss"])
    )
    assert abs(r1.kept / r1.total - 0.5) < 0.01
    assert_masked_training(masks.apply(imp.theta0, r1.mask), r1.mask, r1.final_params)
    with pytest.raises(ValueError, match="snr"):
        loop.run(RUN_KEY, trainer, loop.IMPConfig(num_levels=2, criterion="snr"))


def test_overrides_and_metrics(cartpole):
    task = cartpole["trainer"].task
    t2 = ppo.PPOTrainer.from_task(task, CARTPOLE.replace(actor_hidden=(16,), actor_activation="relu"))
    assert tuple(t2.task.policy.sizes) == (4, 16, 2) and t2.task.policy.hidden_activation == "relu"
    assert ppo.PPOTrainer(task, CARTPOLE.replace(normalize_obs=False)).task.normalize_obs is False
    assert ppo.PPOTrainer(task, CARTPOLE).task is task
    res = cartpole["sparse"]
    n = CARTPOLE.num_updates
    for k in ("train_return", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "env_steps"):
        assert np.shape(res.metrics[k]) == (n,), k
    assert float(res.metrics["env_steps"][-1]) == CARTPOLE.env_steps
    assert np.ndim(res.metrics["test_return"]) == 0
    lr = np.asarray(res.metrics["learning_rate"])
    assert lr[0] < CARTPOLE.learning_rate and lr[-1] == 0.0 and np.all(np.diff(lr) < 0)  # linear to 0


def test_mask_must_fit(cartpole):
    trainer, theta0 = cartpole["trainer"], cartpole["theta0"]
    bad = {k: v for k, v in masks.ones(theta0).items() if k != "dense_0"}
    with pytest.raises(ValueError):
        trainer.train(jax.random.key(0), theta0, bad)


# ----------------------------------------------------------------------------------------------
# config validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_envs", 0),
        ("num_envs", 2.0),
        ("rollout_length", -1),
        ("update_epochs", 0),
        ("num_minibatches", 3),  # does not divide 16 · 128
        ("total_env_steps", 100),  # less than one update
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("lr_schedule", "cosine"),
        ("clip_eps", 0),
        ("gamma", 1.5),
        ("gae_lambda", -0.1),
        ("ent_coef", -1.0),
        ("vf_coef", "0.5"),
        ("max_grad_norm", 0.0),
        ("normalize_advantages", 1),
        ("reward_scale", 0),
        ("init_log_std", 50.0),
        ("bootstrap_truncation", "yes"),
        ("actor_hidden", (32, 0)),
        ("actor_activation", "gelu"),
        ("critic_hidden", "64"),
        ("critic_activation", "sigmoid"),
        ("normalize_obs", "true"),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ppo.PPOConfig(**{field: value})


def test_config_from_mapping():
    cfg = ppo.PPOConfig.from_mapping({"type": "ppo", "preset": "Pendulum-v1", "critic_hidden": [32, 32]})
    assert cfg.critic_hidden == (32, 32) and cfg.num_envs == ppo.PRESETS["Pendulum-v1"]["num_envs"]
    assert cfg == ppo.PPOConfig.preset("Pendulum-v1", critic_hidden=(32, 32))
    hash(cfg)
    with pytest.raises(ValueError, match=r"trainer: unknown field 'lr'"):
        ppo.PPOConfig.from_mapping({"lr": 1e-3})
    with pytest.raises(ValueError, match=r"trainer.*gamma"):
        ppo.PPOConfig.from_mapping({"gamma": 2})
    with pytest.raises(ValueError, match="preset"):
        ppo.PPOConfig.from_mapping({"preset": "Hopper"})
    with pytest.raises(TypeError, match="PPOConfig"):
        ppo.PPOTrainer(control.make_control_task("CartPole-v1"), {"num_envs": 4})
    max_none = ppo.PPOConfig(max_grad_norm=None)
    assert max_none.max_grad_norm is None


# ----------------------------------------------------------------------------------------------
# the brax compatibility shim of benchmarks/ppo.py


def _benchmark_module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "ppo.py"
    spec = importlib.util.spec_from_file_location("_ppo_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_brax_shim_still_needed():
    """Fails the day the shim in benchmarks/ppo.py (``brax_jax_compat``) can go."""
    assert not hasattr(jax, "device_put_replicated"), (
        "jax has jax.device_put_replicated again: remove brax_jax_compat from benchmarks/ppo.py "
        "(and this test)"
    )
    from brax.training.agents.ppo import train as brax_ppo_train

    assert "device_put_replicated" in inspect.getsource(brax_ppo_train), (
        "brax's PPO no longer calls jax.device_put_replicated: remove brax_jax_compat from "
        "benchmarks/ppo.py (and this test)"
    )


def test_brax_shim_is_scoped():
    bench = _benchmark_module()
    assert not hasattr(jax, "device_put_replicated")
    with bench.brax_jax_compat():
        x = jax.device_put_replicated(jnp.arange(3), jax.local_devices()[:1])
        assert x.shape == (1, 3)
    assert not hasattr(jax, "device_put_replicated"), "the shim leaked out of its with-block"
    with pytest.raises(RuntimeError), bench.brax_jax_compat():
        raise RuntimeError("boom")
    assert not hasattr(jax, "device_put_replicated"), "the shim leaked after an exception"


# ----------------------------------------------------------------------------------------------
# slower: discrete with 3 actions, seeds under vmap


@pytest.mark.slow
def test_acrobot_three_actions_learns():
    task = control.make_control_task("Acrobot-v1", test_episodes=16)
    trainer = ppo.PPOTrainer.from_task(task, ppo.PPOConfig.preset("Acrobot-v1"))
    theta0 = trainer.init_params(jax.random.key(0))
    mask = masks.random_mask(jax.random.key(1), 0.5, theta0)
    res = trainer.train(jax.random.key(2), masks.apply(theta0, mask), mask)
    assert_masked_training(masks.apply(theta0, mask), mask, res.final_params)
    assert float(res.eval_score) > -200  # random ≈ −500 (the episode limit)


@pytest.mark.slow
def test_vmap_over_seeds_matches_single_runs(cartpole):
    trainer, theta0 = cartpole["trainer"], cartpole["theta0"]
    cfg = CARTPOLE.replace(total_env_steps=CARTPOLE.steps_per_update * 8)
    mask = masks.ones(theta0)
    keys = jax.random.split(jax.random.key(5), 2)
    batched = jax.vmap(lambda k: ppo.train_ppo(k, theta0, mask, trainer.task, cfg))(keys)
    for i in range(2):
        single = ppo.train_ppo(keys[i], theta0, mask, trainer.task, cfg)
        for a, b in zip(
            jax.tree_util.tree_leaves(single.policy), jax.tree_util.tree_leaves(batched.policy), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[i], rtol=2e-3, atol=2e-4)
