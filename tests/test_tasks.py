"""The task protocol (es_lottery.tasks): classification as a task, a user's own fitness through GA, ES and
NeTS, task state threaded through a search, and clear errors for bad tasks and data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from es_lottery import masks as masks_lib
from es_lottery import networks, population
from es_lottery.search import es, nets
from es_lottery.search import ga_slt as ga
from es_lottery.tasks import base, classification

# ----------------------------------------------------------------------------------------------
# a user's own fitness

TARGET = np.array(
    [[1, 0, 1, 0, 1, 1], [0, 0, 1, 1, 0, 1], [1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0]], bool
)  # the mask bits the GA should find


def _ones_params(key):
    del key
    return {"layer": {"kernel": jnp.ones((4, 6), jnp.float32), "bias": jnp.zeros((6,), jnp.float32)}}


def _match(params):
    """Fraction of kernel entries whose "kept" state (weight ≠ 0) agrees with TARGET."""
    kept = params["layer"]["kernel"] != 0
    return jnp.mean((kept == jnp.asarray(TARGET)).astype(jnp.float32))


def test_user_fitness_runs_through_the_ga():
    task = base.from_function(_match, init_params=_ones_params)
    cfg = ga.GAConfig(pop_size=16, min_generations=40, patience=20, max_generations=120)
    state, _ = ga.run(jax.random.key(0), task, cfg)
    # the GA's fitness of its best genome is the user's function of the masked weights
    best = np.asarray(state.genomes[0]).reshape(4, 6)
    assert float(state.fit[0]) == pytest.approx(np.mean(best == TARGET))
    assert float(state.fit[0]) > 0.9  # a 24-bit one-max: the GA gets there
    final = ga.evaluate_final(state, task, cfg)  # no test metric: the score key is the fitness
    assert not bool(final["at_chance"])


def test_user_fitness_runs_through_the_es():
    center = jnp.asarray([0.5, -1.0, 2.0], jnp.float32)
    task = base.from_function(
        lambda p: -jnp.sum((p["w"] - center) ** 2),
        evaluate=lambda p: {"score": -jnp.sum((p["w"] - center) ** 2)},
    )
    theta0 = {"w": jnp.zeros(3, jnp.float32)}
    config = es.ESConfig("SNES", 16, sigma_init=0.3)
    state, hist = es.run(jax.random.key(1), theta0, {"w": np.ones(3, bool)}, task, config, 150, 50)
    np.testing.assert_allclose(np.asarray(es.mean_params(state)["w"]), np.asarray(center), atol=0.1)
    assert hist["eval"]["score"][-1] > -0.02


def test_user_fitness_runs_through_nets_forward():
    def init(key):
        return {"layer": {"kernel": jax.random.normal(key, (4, 6)), "bias": jnp.zeros((6,))}}

    def fit(p):  # reward large kept weights: a density-independent signal
        return jnp.sum(jnp.abs(p["layer"]["kernel"]))

    task = base.from_function(fit, init_params=init)
    cfg = nets.NeTSConfig(pop_size=4, generations=3, fitness="forward")
    state, _ = nets.run(jax.random.key(2), task, cfg)
    # NeTS's loss is −fitness; its fitness adds the density penalty
    p, m = nets.best_ticket(state)
    expected = -float(fit(p)) + float(nets.density_penalty(nets.global_density(m), cfg.target_density))
    assert float(state.best_fitness) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="train_members"):
        nets.run(jax.random.key(2), task, cfg.replace(fitness="train_then_val"))


@struct.dataclass
class _Counting(base.TaskBase):
    """Stateful: its state counts fitness calls; the test score rises with the count (so the best
    evaluation is the last one) — shows that the ES threads the state and keeps it with the best mean."""

    score_key: str = struct.field(pytree_node=False, default="score")

    def init_state(self, key):
        return jnp.int32(0)

    def fitness(self, state, key, members):
        return -jnp.sum(members["w"] ** 2, axis=-1), state + 1

    def evaluate(self, state, params):
        return {"score": state.astype(jnp.float32), "norm": jnp.sum(params["w"] ** 2)}


def test_es_threads_the_task_state_and_keeps_it_with_the_best_mean():
    task = _Counting()
    config = es.ESConfig("SNES", 8, sigma_init=0.1)
    theta0, mask = {"w": jnp.ones(4)}, {"w": np.ones(4, bool)}
    state, hist = es.run(jax.random.key(3), theta0, mask, task, config, 12, 4)
    assert int(state.task_state) == 12  # one fitness call per generation
    assert int(state.best_task_state) == 12  # the best evaluation (the last) carries its state
    np.testing.assert_array_equal(hist["eval"]["score"], [4.0, 8.0, 12.0])
    # an ES initialised without the task's state is told how to fix it
    bare = es.init(jax.random.key(4), theta0, mask, config)
    with pytest.raises(ValueError, match="task=task"):
        es.advance(jax.random.key(5), bare, task, config, 2, 1)


def test_objects_that_are_not_tasks_are_named():
    with pytest.raises(TypeError, match=r"lacks .*fitness"):
        base.check_task(object())
    with pytest.raises(TypeError, match="fitness must be callable"):
        base.from_function(3)


# ----------------------------------------------------------------------------------------------
# classification as a task


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)).astype(np.int32)
    return x[:200], y[:200], x[200:], y[200:]


def test_classification_fitness_on_masks_and_params_equals_the_kernels(data):
    x_tr, y_tr, x_te, y_te = data
    module = networks.MLP((3, 8, 3))
    params = networks.init_params(jax.random.key(6), module)
    masks = jax.vmap(lambda k: masks_lib.random_mask(k, 0.6, params))(jax.random.split(jax.random.key(7), 5))
    task = classification.make_task(
        module, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, objective="accuracy"
    )
    fit, metrics, st = task.fitness_metrics(None, jax.random.key(8), base.MaskedPopulation(params, masks))
    ref = population.evaluate_masks(module, params, masks, x_tr, y_tr, ("accuracy",))["accuracy"]
    np.testing.assert_array_equal(fit, ref)
    assert st is None and set(metrics) == {"accuracy"}
    # the same members as per-member params (masks applied) give the same accuracies
    member = base.member_params(base.MaskedPopulation(params, masks))
    np.testing.assert_array_equal(task.fitness(None, jax.random.key(8), member)[0], ref)
    # evaluate: one network on the test split
    out = task.evaluate(None, jax.tree_util.tree_map(lambda a: a[0], member))
    direct = population.evaluate_params(module, member, x_te, y_te, ("accuracy", "cross_entropy"))
    assert float(out["accuracy"]) == float(direct["accuracy"][0])
    assert float(out["cross_entropy"]) == pytest.approx(float(direct["cross_entropy"][0]), rel=1e-6)


def test_classification_batches_are_fresh_per_key(data):
    x_tr, y_tr, x_te, y_te = data
    module = networks.MLP((3, 8, 3))
    params = networks.init_params(jax.random.key(9), module)
    member = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a]), params)
    task = classification.make_task(
        module, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, batch_size=32
    )
    f1 = task.fitness(None, jax.random.key(1), member)[0]
    f2 = task.fitness(None, jax.random.key(2), member)[0]
    assert not np.allclose(f1, f2)
    xb, yb = classification.sample_batch(jax.random.key(1), task.data["x_train"], task.data["y_train"], 32)
    ref = population.evaluate_params(module, member, xb, yb, ("cross_entropy",))["cross_entropy"]
    np.testing.assert_allclose(f1, -ref, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"objective": "hinge"}, "objective"),
        ({"fitness_split": "val"}, "x_val"),
        ({"y_train_shift": 3}, r"labels in \[3, 5\].*classes 0 … 2"),
        ({"y_train_shift": -1}, r"labels in \[-1, 1\]"),
        ({"batch_size": 0}, "batch_size"),
        ({"x_bogus": np.zeros((2, 3))}, "unknown data array 'x_bogus'"),
    ],
)
def test_classification_task_rejects_bad_input_by_name(data, kwargs, words):
    x_tr, y_tr, x_te, y_te = data
    kwargs = dict(kwargs)
    y_tr = y_tr + kwargs.pop("y_train_shift", 0)
    with pytest.raises(ValueError, match=words):
        classification.make_task(
            networks.MLP((3, 8, 3)), x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, **kwargs
        )
