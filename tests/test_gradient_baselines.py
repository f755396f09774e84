"""Edge-popup and the sklearn-style backprop baseline (es_lottery.gradient)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from es_lottery import masks as masks_lib
from es_lottery import networks
from es_lottery.gradient import backprop as bp
from es_lottery.gradient import edge_popup as ep
from es_lottery.tasks import classification

# ----------------------------------------------------------------------------------------------
# shared small problem (one compile shared by several tests)

SMALL_SIZES = (3, 7, 5, 3)
SMALL_CFG = ep.EdgePopupConfig(kept_fraction=0.3, epochs=3, batch_size=32)


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3)).astype(np.float32)
    y = (np.argmax(x, axis=1)).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def moons_small():
    return classification.moons(n_train=5000, n_test=4000)


# ----------------------------------------------------------------------------------------------
# edge-popup


@pytest.mark.parametrize(
    "cfg",
    [SMALL_CFG, SMALL_CFG.replace(weight_init="signed_kaiming_constant", scale_init=True)],
    ids=["uniform", "scaled_signed_constant"],
)
def test_edge_popup_exact_counts_and_frozen_params(small_data, cfg):
    x, y = small_data
    key = jax.random.key(3)
    res = ep.train(key, SMALL_SIZES, x, y, cfg)
    module = ep.make_module(SMALL_SIZES, cfg)
    params0, scores0 = ep.init(key, module, cfg)

    # exactly floor(k·n + 1/2) kept per layer, biases never masked
    kept_total, total = 0, 0
    for layer, m in res.mask.items():
        n = m["kernel"].size
        want = masks_lib.kept_count(cfg.kept_fraction, n)
        assert int(jnp.sum(m["kernel"])) == want == int(np.floor(cfg.kept_fraction * n + 0.5)), layer
        assert bool(jnp.all(m["bias"]))
        kept_total += want
        total += n
    assert float(res.sparsity) == pytest.approx(1.0 - kept_total / total, abs=1e-7)

    # weights and biases bitwise equal to the init (and to networks.init_params with the first subkey)
    direct = jax.jit(networks.init_params, static_argnums=1)(jax.random.split(key, 3)[0], module)
    for a, b, c in zip(
        jax.tree_util.tree_leaves(res.params),
        jax.tree_util.tree_leaves(params0),
        jax.tree_util.tree_leaves(direct),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    if cfg.weight_init == "uniform":
        assert any(float(jnp.max(jnp.abs(p["bias"]))) > 0 for p in res.params.values())

    # scores: Kaiming uniform a=√5 bound 1/sqrt(fan_in), and training moved them
    for layer, s in scores0.items():
        bound = 1.0 / np.sqrt(s["kernel"].shape[0])
        assert float(jnp.max(jnp.abs(s["kernel"]))) <= bound
        assert float(jnp.max(jnp.abs(s["kernel"]))) > 0.5 * bound
        assert not np.allclose(np.asarray(res.scores[layer]["kernel"]), np.asarray(s["kernel"]))

    # the final mask is the top-k of the final scores, and evaluate() uses it
    np.testing.assert_array_equal(
        np.asarray(res.mask["dense_0"]["kernel"]),
        np.asarray(ep.subnet_mask(res.scores, cfg)["dense_0"]["kernel"]),
    )
    assert float(ep.evaluate(res, x, y)) == pytest.approx(float(res.train_accuracy))
    assert res.loss_curve.shape == (cfg.epochs,)


@pytest.mark.parametrize("abs_scores", [True, False])
def test_straight_through_gradient_matches_hand_formula(abs_scores):
    cfg = ep.EdgePopupConfig(kept_fraction=0.5, abs_scores=abs_scores)
    module = ep.make_module((3, 4, 2), cfg)
    params, scores = ep.init(jax.random.key(0), module, cfg)
    scores = jax.tree_util.tree_map(
        lambda s: s * jnp.where(jnp.arange(s.size) % 3 == 0, -1.0, 1.0).reshape(s.shape), scores
    )
    x = jax.random.normal(jax.random.key(1), (9, 3))
    y = jnp.arange(9) % 2

    kmask = ep.subnet_mask(scores, cfg)
    masked = masks_lib.apply(params, ep.full_mask(params, kmask))

    @jax.jit
    def loss_of_params(p):
        logits = networks.apply(module, p, x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(9), y])

    # forward: the straight-through loss equals the loss of the masked network
    assert float(ep.batch_loss(scores, params, x, y, module, cfg)) == pytest.approx(
        float(loss_of_params(masked)), rel=1e-6
    )
    g_scores = jax.jit(jax.grad(ep.batch_loss), static_argnums=(4, 5))(scores, params, x, y, module, cfg)
    g_masked = jax.grad(loss_of_params)(masked)
    for layer in scores:
        w = params[layer]["kernel"]
        s = scores[layer]["kernel"]
        want = g_masked[layer]["kernel"] * w * (jnp.sign(s) if abs_scores else 1.0)
        np.testing.assert_allclose(
            np.asarray(g_scores[layer]["kernel"]), np.asarray(want), rtol=1e-5, atol=1e-7
        )
        # pruned weights get gradient too (the point of the straight-through estimator)
        pruned = ~kmask[layer]["kernel"]
        assert float(jnp.max(jnp.abs(jnp.where(pruned, g_scores[layer]["kernel"], 0.0)))) > 0
    # kept entries are the top-k by |score| (or by score)
    ranked = jnp.abs(scores["dense_0"]["kernel"]) if abs_scores else scores["dense_0"]["kernel"]
    m = kmask["dense_0"]["kernel"]
    assert float(jnp.min(jnp.where(m, ranked, jnp.inf))) >= float(jnp.max(jnp.where(m, -jnp.inf, ranked)))


def test_edge_popup_vmapped_seeds_equal_separate_runs(small_data):
    x, y = small_data
    keys = jax.random.split(jax.random.key(11), 3)
    batched = ep.train_seeds(keys, SMALL_SIZES, x, y, SMALL_CFG)
    accs = ep.evaluate(batched, x, y)
    assert accs.shape == (3,)
    for i in range(3):
        single = ep.train(keys[i], SMALL_SIZES, x, y, SMALL_CFG)
        for a, b in zip(
            jax.tree_util.tree_leaves(single.mask),
            jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda t, i=i: t[i], batched.mask)),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(
            np.asarray(single.scores["dense_1"]["kernel"]),
            np.asarray(batched.scores["dense_1"]["kernel"][i]),
            rtol=1e-5,
            atol=1e-6,
        )
        assert float(single.train_accuracy) == pytest.approx(float(batched.train_accuracy[i]))
        assert float(accs[i]) == pytest.approx(float(single.train_accuracy))


def test_edge_popup_learns_moons(moons_small):
    """Arch B, 5 epochs on 5k points (the paper: 100 epochs on 50k) — clearly above chance."""
    d = moons_small
    res = ep.train(jax.random.key(0), bp.ARCHS["B"], d.x_train, d.y_train, ep.EdgePopupConfig(epochs=5))
    assert float(res.sparsity) == 0.5
    assert float(ep.evaluate(res, d.x_test, d.y_test)) > 0.8


# ----------------------------------------------------------------------------------------------
# backprop


def test_backprop_paper_settings_moons_a():
    """Paper settings for moons A (adam, lr 0.021544, batch 128), 10k train points, ≤ 60 epochs."""
    d = classification.moons(n_train=10000, n_test=4000)
    sizes, cfg = bp.paper_config("moons", "A", max_epochs=60)
    assert sizes == (2, 20, 2) and cfg.batch_size == 128 and cfg.solver == "adam"
    res = bp.train(jax.random.key(0), sizes, d.x_train, d.y_train, cfg)
    assert float(bp.evaluate(res, d.x_test, d.y_test)) > 0.99
    assert 1 <= int(res.epochs) <= 60
    assert np.all(np.isfinite(np.asarray(res.loss_curve[: int(res.epochs)])))
    assert np.all(np.isnan(np.asarray(res.loss_curve[int(res.epochs) :])))


def _sklearn_fit(x, y, **kw):
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    return clf


@pytest.fixture(scope="module")
def tiny_binary():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    return x, (x[:, 0] > 0).astype(np.int32)


def test_early_stopping_on_plateau(tiny_binary):
    """lr = 0: constant loss → the first epoch sets the best, n_iter_no_change + 1 more epochs without
    improvement trigger the stop: n_iter_no_change + 2 epochs in all, as sklearn does."""
    x, y = tiny_binary
    cfg = bp.BackpropConfig(solver="sgd", learning_rate=0.0, momentum=0.0, batch_size=200, alpha=0.0)
    res = bp.train(jax.random.key(0), (2, 5, 2), x, y, cfg)
    assert int(res.epochs) == cfg.n_iter_no_change + 2
    assert bool(res.converged) and not bool(res.diverged)
    curve = np.asarray(res.loss_curve[: int(res.epochs)])
    np.testing.assert_allclose(curve, curve[0], rtol=1e-6)  # reshuffled batch: last-ulp differences
    clf = _sklearn_fit(
        x, y, hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=1e-12, momentum=0.0,
        batch_size=200, alpha=0.0, max_iter=500, random_state=0,
    )  # fmt: skip
    assert clf.n_iter_ == int(res.epochs)

    # adaptive sgd: lr /5 on each plateau while lr > 1e-6 (1e-5 → 2e-6 → 4e-7, then stop)
    cfg = cfg.replace(learning_rate=1e-5, lr_schedule="adaptive")
    res = bp.train(jax.random.key(0), (2, 5, 2), x, y, cfg)
    clf = _sklearn_fit(
        x, y, hidden_layer_sizes=(5,), solver="sgd", learning_rate="adaptive", learning_rate_init=1e-5,
        momentum=0.0, batch_size=200, alpha=0.0, max_iter=500, random_state=0,
    )  # fmt: skip
    assert int(res.epochs) == clf.n_iter_ == 3 * (cfg.n_iter_no_change + 1) + 1
    assert float(res.final_lr) == pytest.approx(4e-7, rel=1e-5)


@pytest.mark.parametrize(
    "solver, kw",
    [
        ("adam", dict(learning_rate_init=0.01, epsilon=4.64e-9)),
        ("sgd", dict(learning_rate_init=0.05, momentum=0.5, nesterovs_momentum=True)),
    ],
)
def test_backprop_matches_sklearn_step_for_step(tiny_binary, solver, kw):
    """Same init (sklearn's RandomState draws), no shuffling, one logistic output: same loss curve."""
    x, y = tiny_binary
    clf = _sklearn_fit(
        x, y, hidden_layer_sizes=(8,), solver=solver, batch_size=64, alpha=0.01, max_iter=6,
        shuffle=False, random_state=3, **kw,
    )  # fmt: skip
    rs = np.random.RandomState(3)
    init = {}
    for i, (a, b) in enumerate([(2, 8), (8, 1)]):  # sklearn's _init_coef, in its order
        bound = np.sqrt(6.0 / (a + b))
        init[f"dense_{i}"] = {
            "kernel": rs.uniform(-bound, bound, (a, b)),
            "bias": rs.uniform(-bound, bound, b),
        }
    cfg = bp.BackpropConfig(
        solver=solver,
        learning_rate=kw["learning_rate_init"],
        batch_size=64,
        alpha=0.01,
        max_epochs=6,
        shuffle=False,
        momentum=kw.get("momentum", 0.9),
        nesterov=kw.get("nesterovs_momentum", True),
        epsilon=kw.get("epsilon", 1e-8),
    )
    res = bp.train(jax.random.key(0), (2, 8, 1), x, y, cfg, init=init)
    np.testing.assert_allclose(np.asarray(res.loss_curve), clf.loss_curve_, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(res.params["dense_0"]["kernel"]), clf.coefs_[0], atol=1e-4)
    assert float(bp.evaluate(res, x, y)) == pytest.approx(clf.score(x, y), abs=1e-6)


def test_backprop_vmapped_seeds_and_glorot_init(tiny_binary):
    x, y = tiny_binary
    cfg = bp.BackpropConfig(learning_rate=0.01, batch_size=64, max_epochs=4)
    keys = jax.random.split(jax.random.key(5), 2)
    batched = bp.train_seeds(keys, (2, 6, 2), x, y, cfg)
    for i in range(2):
        single = bp.train(keys[i], (2, 6, 2), x, y, cfg)
        np.testing.assert_allclose(
            np.asarray(single.loss_curve), np.asarray(batched.loss_curve[i]), rtol=1e-5, atol=1e-7
        )
        assert int(single.epochs) == int(batched.epochs[i])
    p = bp.init_params(keys[0], (2, 6, 2), cfg)
    bound = np.sqrt(6.0 / (2 + 6))
    assert float(jnp.max(jnp.abs(p["dense_0"]["kernel"]))) <= bound
    assert float(jnp.max(jnp.abs(p["dense_0"]["bias"]))) > 0  # biases drawn too, not zero
    assert set(bp.PAPER_SETTINGS) == {(d, a) for d in ("moons", "circles") for a in "ABCD"}
    assert bp.ARCHS["D"] == (2, 50, 50, 2)


# ----------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: ep.EdgePopupConfig(kept_fraction=0.0), "kept_fraction"),
        (lambda: ep.EdgePopupConfig(kept_fraction=1.5), "kept_fraction"),
        (lambda: ep.EdgePopupConfig(learning_rate=-0.1), "learning_rate"),
        (lambda: ep.EdgePopupConfig(epochs=0), "epochs"),
        (lambda: ep.EdgePopupConfig(batch_size=0), "batch_size"),
        (lambda: ep.EdgePopupConfig(momentum=1.0), "momentum"),
        (lambda: ep.EdgePopupConfig(weight_init="xavier"), "weight_init"),
        (lambda: bp.BackpropConfig(solver="lbfgs"), "solver"),
        (lambda: bp.BackpropConfig(learning_rate=-1e-3), "learning_rate"),
        (lambda: bp.BackpropConfig(lr_schedule="invscaling"), "lr_schedule"),
        (lambda: bp.BackpropConfig(alpha=-1.0), "alpha"),
        (lambda: bp.BackpropConfig(n_iter_no_change=0), "n_iter_no_change"),
        (lambda: bp.paper_config("blobs", "A"), "dataset"),
    ],
)
def test_bad_configs_raise_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_bad_inputs_raise(small_data):
    x, y = small_data
    with pytest.raises(ValueError, match="labels"):
        ep.train(jax.random.key(0), (3, 4, 2), x, y, SMALL_CFG)
    with pytest.raises(ValueError, match="x must have shape"):
        bp.train(jax.random.key(0), (2, 4, 3), x, y)
    with pytest.raises(ValueError, match="weight_init"):
        ep.train(jax.random.key(0), networks.MLP(SMALL_SIZES, weight_init="kaiming_normal"), x, y, SMALL_CFG)
