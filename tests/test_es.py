"""The evosax adapter (es_lottery.search.es) against independent references.

Compile time dominates on CPU, so the algorithm tests share one toy task, one search space and one config
per algorithm: ``step`` compiles once per algorithm and is then driven from Python.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from es_lottery import masks as masks_lib
from es_lottery import networks, population
from es_lottery.search import es
from es_lottery.tasks import base as tasks_base
from es_lottery.tasks import classification as cls

DIM = 6
POP = 16
CENTER = np.array([0.6, -1.0, 0.3, 0.8, -0.4, 0.1], np.float32)
CURVATURE = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0], np.float32)  # anisotropic → anisotropic std


def _quad_fitness(data, key, member):
    """−Σ a_i (x_i − c_i)² (to maximise); members flagged in data['bad'] return data['bad_value']."""
    f = -jnp.sum(data["a"] * (member["x"] - data["c"]) ** 2, axis=-1)
    return jnp.where(data["bad"], data["bad_value"], f)


def _quad_eval(data, params):
    return {"score": -jnp.sum(data["a"] * (params["x"] - data["c"]) ** 2)}


def _quad_task(bad=None, bad_value=np.nan):
    data = {
        "a": jnp.asarray(CURVATURE),
        "c": jnp.asarray(CENTER),
        "bad": jnp.zeros(POP, bool) if bad is None else jnp.asarray(bad),
        "bad_value": jnp.broadcast_to(jnp.asarray(bad_value, jnp.float32), (POP,)),
    }
    return tasks_base.from_function(
        _quad_fitness, batched=True, evaluate=_quad_eval, data=data, score_key="score"
    )


THETA0 = {"x": jnp.zeros(DIM, jnp.float32)}
FULL_MASK = {"x": np.ones(DIM, bool)}

CONFIGS = {
    "PGPE": es.ESConfig("PGPE", POP, sigma_init=0.1, optimizer="adam", lr=0.05),
    "SNES": es.ESConfig("SNES", POP, sigma_init=0.1),
    "Sep_CMA_ES": es.ESConfig("Sep_CMA_ES", POP, sigma_init=0.1),
    "DES": es.ESConfig("DES", POP, sigma_init=0.1),
    "ARS": es.ESConfig("ARS", POP, sigma_init=0.1, optimizer="adam", lr=0.05),
    "Open_ES": es.ESConfig("Open_ES", POP, sigma_init=0.1, optimizer="adam", lr=0.05),
    "CMA_ES": es.ESConfig("CMA_ES", POP, sigma_init=0.1),
}


def _steps(state, task, config, n, seed=0):
    key = jax.random.key(seed)
    metrics = []
    for g in range(n):
        state, m = es.step(jax.random.fold_in(key, g), state, task, config)
        metrics.append(m)
    return state, metrics


def _dist(state):
    return float(np.linalg.norm(np.asarray(es.mean_params(state)["x"]) - CENTER))


# ----------------------------------------------------------------------------------------------
# per-weight std, fresh init, direction of optimisation, non-finite fitness


@pytest.mark.parametrize("algorithm", es.ALGORITHMS)
def test_per_weight_std_matches_sampling(algorithm):
    config = CONFIGS[algorithm]
    state = es.init(jax.random.key(1), THETA0, FULL_MASK, config)
    # fresh init: mean = θ₀, std = sigma_init on every coordinate
    np.testing.assert_array_equal(es.mean_params(state)["x"], THETA0["x"])
    np.testing.assert_allclose(es.std_params(state)["x"], config.sigma_init, rtol=1e-3)
    state, _ = _steps(state, _quad_task(), config, 12)
    std = np.asarray(es.per_weight_std(config, state.es_state))
    assert std.shape == (DIM,) and np.all(np.isfinite(std)) and np.all(std > 0)
    # empirical per-coordinate std of evosax's own samples around the mean
    keys = jax.random.split(jax.random.key(2), 150)
    vectors, _ = jax.vmap(lambda k: es.ask(k, state, config))(keys)
    dev = np.asarray(vectors).reshape(-1, DIM) - np.asarray(state.es_state.mean)
    empirical = np.sqrt(np.mean(dev**2, axis=0))
    np.testing.assert_allclose(empirical, std, rtol=0.1)
    if algorithm == "Sep_CMA_ES":
        compat = es.per_weight_std(config, state.es_state, sep_cma_compat=True)
        np.testing.assert_allclose(compat, state.es_state.std * state.es_state.C, rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["SNES", "PGPE", "Sep_CMA_ES"])
def test_es_maximises_a_convex_quadratic(algorithm):
    """Our API maximises f(x) = −Σ a_i (x_i − c_i)²: the mean must move from 0 to c."""
    config = CONFIGS[algorithm]
    state = es.init(jax.random.key(3), THETA0, FULL_MASK, config)
    start = _dist(state)
    state, metrics = _steps(state, _quad_task(), config, 250, seed=4)
    assert _dist(state) < 0.02 * start, (algorithm, _dist(state), start)
    assert float(metrics[-1]["fitness_mean"]) > float(metrics[0]["fitness_mean"])
    # long after convergence (evosax's CMA step size alone would underflow to 0 → NaN) all stays finite
    state, metrics = _steps(state, _quad_task(), config, 350, seed=5)
    assert _dist(state) < 0.02 * start
    assert not any(bool(m["update_skipped"]) for m in metrics)
    for leaf in jax.tree_util.tree_leaves(state.es_state):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_train_solves_linear_regression():
    """``train`` (lax.scan in chunks, best-mean tracking) on least squares y = X w*."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    w_star = np.array([1.0, -2.0, 0.5, 0.25], np.float32)
    y = x @ w_star

    def fitness(key, member):  # (P, 4) weights → −MSE
        return -jnp.mean((member["w"] @ x.T - y) ** 2, axis=-1)

    def evaluate(params):
        return {"score": -jnp.mean((x @ params["w"] - y) ** 2)}

    task = es.make_task(fitness, evaluate)
    config = es.ESConfig("Sep_CMA_ES", 16, sigma_init=0.3)
    theta0 = {"w": jnp.zeros(4)}
    state, hist = es.run(jax.random.key(5), theta0, {"w": np.ones(4, bool)}, task, config, 140, 50)
    assert hist["eval"]["score"].shape == (3,) and hist["train"]["fitness_mean"].shape == (140,)
    np.testing.assert_array_equal(hist["eval"]["generation"], [50, 100, 140])  # the remainder chunk too
    np.testing.assert_allclose(es.best_mean_params(state)["w"], w_star, atol=1e-3)
    assert float(state.best_eval) == pytest.approx(float(np.max(hist["eval"]["score"])))


@pytest.mark.parametrize("algorithm", es.ALGORITHMS)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nonfinite_fitness_is_replaced_and_counted(algorithm, bad_value):
    config = CONFIGS[algorithm]
    bad = np.arange(POP) % 2 == 1  # half the members (whole antithetic pairs for PGPE/ARS/Open_ES)
    state = es.init(jax.random.key(6), THETA0, FULL_MASK, config)
    state, metrics = _steps(state, _quad_task(bad, bad_value), config, 8)
    assert [int(m["n_nonfinite"]) for m in metrics] == [POP // 2] * 8
    for leaf in jax.tree_util.tree_leaves(state.es_state):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert np.all(np.isfinite(es.std_params(state)["x"]))
    assert _dist(state) < np.linalg.norm(CENTER)  # still learns from the finite half


@pytest.mark.parametrize("algorithm", ["SNES", "PGPE"])
def test_all_nonfinite_generation_leaves_the_state_unchanged(algorithm):
    config = CONFIGS[algorithm]
    state0 = es.init(jax.random.key(7), THETA0, FULL_MASK, config)
    state, (m,) = _steps(state0, _quad_task(np.ones(POP, bool), np.nan), config, 1)
    assert int(m["n_nonfinite"]) == POP and int(state.generation) == 1
    np.testing.assert_array_equal(state.es_state.mean, state0.es_state.mean)
    np.testing.assert_array_equal(state.es_state.std, state0.es_state.std)


def test_update_that_would_poison_the_state_is_skipped():
    """Finite but huge fitness: ARS's identity shaping overflows (inf − inf) → the update is discarded."""
    config = CONFIGS["ARS"]
    huge = np.where(np.arange(POP) < POP // 2, 3e38, -3e38)  # antithetic pairs (i, i + P/2) differ by 6e38
    state0 = es.init(jax.random.key(7), THETA0, FULL_MASK, config)
    state, (m,) = _steps(state0, _quad_task(np.ones(POP, bool), huge), config, 1)
    assert bool(m["update_skipped"]) and int(m["n_nonfinite"]) == 0
    np.testing.assert_array_equal(state.es_state.mean, state0.es_state.mean)
    state, (m,) = _steps(state, _quad_task(), config, 1)  # and it goes on normally
    assert not bool(m["update_skipped"]) and np.all(np.isfinite(state.es_state.mean))


def test_mean_decay_and_fresh_init():
    base = CONFIGS["SNES"]
    decayed = base.replace(mean_decay=0.1)
    state = es.init(jax.random.key(8), THETA0, FULL_MASK, base)
    state, _ = _steps(state, _quad_task(), base, 5)
    key = jax.random.key(9)
    plain, _ = es.step(key, state, _quad_task(), base)
    decay, _ = es.step(key, state, _quad_task(), decayed)
    np.testing.assert_allclose(decay.es_state.mean, 0.9 * np.asarray(plain.es_state.mean), rtol=1e-6)
    np.testing.assert_array_equal(decay.es_state.std, plain.es_state.std)
    # a fresh init from the trained mean: mean = that θ, std back to sigma_init, optimizer state reset
    assert not np.allclose(plain.es_state.std, base.sigma_init)
    theta = es.mean_params(plain)
    fresh = es.init(jax.random.key(10), theta, FULL_MASK, base)
    np.testing.assert_array_equal(es.mean_params(fresh)["x"], theta["x"])
    np.testing.assert_allclose(es.std_params(fresh)["x"], base.sigma_init, rtol=1e-6)
    assert int(fresh.generation) == 0 and int(fresh.es_state.generation_counter) == 0


# ----------------------------------------------------------------------------------------------
# search spaces on a pruned MLP


MLP = networks.MLP((3, 5, 4), weight_init="kaiming_normal")  # zero-initialised biases


def _random_mask(params, density, seed):
    """Bernoulli(density) kernels, all-ones biases (numpy: no eager JAX compiles)."""
    rng = np.random.default_rng(seed)
    flags = masks_lib.prunable_flags(params)
    return jax.tree_util.tree_map(
        lambda a, f: rng.random(np.shape(a)) < density if f else np.ones(np.shape(a), bool), params, flags
    )


@pytest.fixture(scope="module")
def pruned_mlp():
    theta0 = networks.init_params(jax.random.key(11), MLP)
    return theta0, _random_mask(theta0, 0.5, 12)


def test_compressed_and_masked_spaces_evaluate_the_same_network(pruned_mlp):
    theta0, mask = pruned_mlp
    comp = es.make_space("compressed", mask, theta0)
    full = es.make_space("masked", mask, theta0)
    kept, _ = masks_lib.count(mask)
    n_bias = 5 + 4
    assert comp.dim == int(kept) + n_bias  # zero-valued biases keep their place
    assert full.dim == networks.num_params(theta0)
    # the same point: a random full vector, pruned coordinates dropped / zeroed
    v_full = jnp.asarray(np.random.default_rng(13).normal(size=(7, full.dim)), jnp.float32)
    v_comp = full.project(v_full)[:, comp.view.index]
    p_comp, p_full = jax.jit(comp.to_params)(v_comp), jax.jit(full.to_params)(v_full)
    for a, b, m in zip(*(jax.tree_util.tree_leaves(t) for t in (p_comp, p_full, mask)), strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.asarray(a)[:, ~m] == 0.0)
    x = np.random.default_rng(14).normal(size=(20, 3)).astype(np.float32)
    y = np.arange(20) % 4
    out_c = population.evaluate_params(MLP, p_comp, x, y, ("cross_entropy",))
    out_f = population.evaluate_params(MLP, p_full, x, y, ("cross_entropy",))
    np.testing.assert_array_equal(out_c["cross_entropy"], out_f["cross_entropy"])
    # round trips
    np.testing.assert_array_equal(comp.from_params(comp.to_params(v_comp[0])), v_comp[0])
    np.testing.assert_array_equal(full.from_params(full.to_params(v_full[0])), full.project(v_full[0]))
    # rebuilt from the same mask: equal (jit cache hits), different mask: not
    assert comp == es.make_space("compressed", mask, theta0) and comp != full
    assert hash(comp) == hash(es.make_space("compressed", mask, theta0))


def _mlp_fitness(data, key, member):
    out = population.forward_population(MLP, member, data["x"])
    return -jnp.mean((out - data["t"]) ** 2, axis=(1, 2))


@pytest.mark.parametrize("search_space", es.SEARCH_SPACES)
def test_mean_starts_at_theta0_and_pruned_entries_stay_zero(pruned_mlp, search_space):
    theta0, mask = pruned_mlp
    task = tasks_base.from_function(
        _mlp_fitness,
        batched=True,
        data={"x": jax.random.normal(jax.random.key(15), (16, 3)), "t": jnp.ones((16, 4))},
    )
    config = es.ESConfig("Sep_CMA_ES", 8, sigma_init=0.1, mean_decay=0.01, search_space=search_space)
    state = es.init(jax.random.key(16), theta0, mask, config)
    expected = masks_lib.apply(theta0, mask)
    for a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (es.mean_params(state), expected)), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        es.best_mean_params(state)["dense_0"]["kernel"], expected["dense_0"]["kernel"]
    )
    for g in range(3):
        state, _ = es.step(jax.random.key(100 + g), state, task, config)
        vectors, _ = es.ask(jax.random.key(200 + g), state, config)
        samples = state.space.to_params(vectors)
        for tree in (es.mean_params(state), es.std_params(state), samples):
            for leaf, m in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(mask), strict=True):
                leaf = np.asarray(leaf)
                assert np.all(leaf[..., ~m] == 0.0)
        if search_space == "masked":  # the raw ES vectors themselves hold exact zeros
            assert np.all(np.asarray(vectors)[:, ~state.space.keep] == 0.0)
            assert np.all(np.asarray(state.es_state.mean)[~state.space.keep] == 0.0)
    assert np.all(np.asarray(es.std_params(state)["dense_0"]["kernel"])[mask["dense_0"]["kernel"]] > 0)


# ----------------------------------------------------------------------------------------------
# classification task


@pytest.fixture(scope="module")
def classification():
    module = networks.MLP((4, 8, 3))
    rng = np.random.default_rng(1)
    x_tr = rng.normal(size=(40, 4)).astype(np.float32)
    y_tr = (x_tr[:, 0] > 0).astype(np.int32) + (x_tr[:, 1] > 0)
    x_te = rng.normal(size=(30, 4)).astype(np.float32)
    y_te = (x_te[:, 0] > 0).astype(np.int32) + (x_te[:, 1] > 0)
    task = es.make_classification_task(module, x_tr, y_tr, x_te, y_te, batch_size=16)
    return module, task


def _ce(logits, y):
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=-1)
    logz = top + np.log(np.sum(np.exp(logits - top[:, None]), axis=-1))
    return float(np.mean(logz - logits[np.arange(len(y)), y]))


def test_classification_fitness_is_minus_ce_on_a_fresh_batch(classification):
    module, task = classification
    theta = networks.init_params(jax.random.key(17), module)
    rng = np.random.default_rng(18)
    member = jax.tree_util.tree_map(lambda a: a[None] + 0.3 * rng.normal(size=(5, *a.shape)), theta)
    key = jax.random.key(19)
    fitness = jax.jit(lambda k, m: task.fitness(None, k, m)[0])
    fit = np.asarray(fitness(key, member))
    xb, yb = jax.jit(cls.sample_batch, static_argnums=3)(key, task.data["x_train"], task.data["y_train"], 16)
    assert xb.shape == (16, 4) and len(set(np.asarray(xb)[:, 0].tolist())) == 16  # no repeats
    apply = jax.jit(lambda p, x: networks.apply(module, p, x))
    expected = [
        -_ce(apply(jax.tree_util.tree_map(lambda a, i=i: a[i], member), xb), np.asarray(yb)) for i in range(5)
    ]
    np.testing.assert_allclose(fit, expected, rtol=1e-5, atol=1e-6)
    # another key, another batch
    assert not np.allclose(np.asarray(fitness(jax.random.key(20), member)), fit)
    # eval: test accuracy of one network on the full test set
    logits = apply(theta, task.data["x_test"])
    acc = np.mean(np.argmax(logits, axis=-1) == np.asarray(task.data["y_test"]))
    out = task.evaluate(None, theta)
    assert float(out["accuracy"]) == pytest.approx(acc)
    assert float(out["cross_entropy"]) == pytest.approx(
        _ce(logits, np.asarray(task.data["y_test"])), rel=1e-5
    )


def test_run_keeps_best_mean_and_advance_resumes_exactly(classification):
    module, task = classification
    theta0 = networks.init_params(jax.random.key(21), module)
    mask = _random_mask(theta0, 0.6, 22)
    config = es.ESConfig("SNES", 8, sigma_init=0.05)
    key = jax.random.key(23)
    state, hist = es.run(key, theta0, mask, task, config, num_generations=6, eval_every=3)
    np.testing.assert_array_equal(hist["eval"]["generation"], [3, 6])
    assert hist["train"]["fitness_mean"].shape == (6,)
    assert float(state.best_eval) == pytest.approx(float(np.max(hist["eval"]["accuracy"])))
    np.testing.assert_array_equal(hist["eval"]["best_eval"], np.maximum.accumulate(hist["eval"]["accuracy"]))
    best_acc = task.evaluate(None, es.best_mean_params(state))["accuracy"]
    assert float(best_acc) == pytest.approx(float(state.best_eval))
    # the same run in two pieces (as after a checkpoint) gives identical results
    k_init, k_run = jax.random.split(key)
    s = es.init(k_init, theta0, mask, config)
    s, _ = es.advance(k_run, s, task, config, 3, 3)
    s, h2 = es.advance(k_run, s, task, config, 3, 3)
    np.testing.assert_array_equal(s.es_state.mean, state.es_state.mean)
    np.testing.assert_array_equal(h2["eval"]["accuracy"], hist["eval"]["accuracy"][1:])


# ----------------------------------------------------------------------------------------------
# configuration errors


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"algorithm": "CMAES"}, "algorithm"),
        ({"algorithm": "PGPE", "population_size": 15}, "population_size"),
        ({"algorithm": "Open_ES", "population_size": 7}, "population_size"),
        ({"population_size": 1}, "population_size"),
        ({"sigma_init": 0.0}, "sigma_init"),
        ({"sigma_init": -0.1}, "sigma_init"),
        ({"sigma_init": float("nan")}, "sigma_init"),
        ({"optimizer": "rmsprop", "lr": 0.1}, "optimizer"),
        ({"algorithm": "Sep_CMA_ES", "optimizer": "adam", "lr": 0.1}, "optimizer"),
        ({"algorithm": "SNES", "optimizer": "adam"}, "lr"),
        ({"algorithm": "SNES", "lr": 0.1}, "lr"),
        ({"algorithm": "PGPE", "optimizer": "adam", "lr": -1.0}, "lr"),
        ({"algorithm": "SNES", "fitness_shaping": "centered_rank"}, "fitness_shaping"),
        ({"algorithm": "PGPE", "fitness_shaping": "rank"}, "fitness_shaping"),
        ({"mean_decay": -0.1}, "mean_decay"),
        ({"mean_decay": 1.0}, "mean_decay"),
        ({"search_space": "sparse"}, "search_space"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        es.ESConfig(**kwargs)


def test_unknown_algorithm_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="algorithm") as err:
        es.ESConfig(algorithm="DiscoveredES")
    assert all(name in str(err.value) for name in es.ALGORITHMS)


def test_state_and_config_must_match():
    state = es.init(jax.random.key(0), THETA0, FULL_MASK, CONFIGS["SNES"])
    with pytest.raises(ValueError, match="algorithm"):
        es.step(jax.random.key(1), state, _quad_task(), CONFIGS["PGPE"])
    with pytest.raises(ValueError, match="search_space"):
        masked = CONFIGS["SNES"].replace(search_space="masked")
        es.advance(jax.random.key(1), state, _quad_task(), masked, 2, 1)
    with pytest.raises(ValueError, match="num_generations"):
        es.advance(jax.random.key(1), state, _quad_task(), CONFIGS["SNES"], 0, 1)
    # the verbs: run is fresh, advance continues; a state handed to run says which to call, and the old
    # name of run still works (with a warning)
    with pytest.raises(TypeError, match=r"es\.advance"):
        es.run(jax.random.key(1), state, _quad_task(), CONFIGS["SNES"], 2, 1)
    with pytest.warns(DeprecationWarning, match=r"es\.run"):
        old, _ = es.train(jax.random.key(1), THETA0, FULL_MASK, _quad_task(), CONFIGS["SNES"], 2, 1)
    new, _ = es.run(jax.random.key(1), THETA0, FULL_MASK, _quad_task(), CONFIGS["SNES"], 2, 1)
    np.testing.assert_array_equal(old.es_state.mean, new.es_state.mean)


def test_explicit_shaping_and_optimizers_build():
    for shaping in ("centered_rank", "z_score", "none"):
        algo, _ = es.make_algorithm(es.ESConfig("PGPE", 4, fitness_shaping=shaping), 3)
        assert algo.fitness_shaping_fn is es._SHAPING_FNS[shaping]
    for opt in ("adam", "sgd", "clipup"):
        cfg = es.ESConfig("SNES", 4, optimizer=opt, lr=0.01, lr_decay=0.99, lr_limit=0.001)
        algo, params = es.make_algorithm(cfg, 3)
        state = algo.init(jax.random.key(0), jnp.zeros(3), params)
        assert np.allclose(state.std, cfg.sigma_init)
