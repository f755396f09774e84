"""es_lottery.analysis: run store and archive, connectivity, landscapes, statistics, transfer, plots.

Small networks and data throughout; one tiny real ES-IMP run (digits, MLP [64, 8, 10], SNES, 2 levels of
2 generations) is built once per module and shared by the run-store and transfer tests.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from rich.console import Console

from es_lottery import masks as M
from es_lottery import networks, population
from es_lottery.analysis import connectivity as C
from es_lottery.analysis import evaluate as E
from es_lottery.analysis import landscape as LS
from es_lottery.analysis import plots as PL
from es_lottery.analysis import runs as R
from es_lottery.analysis import stats as S
from es_lottery.analysis import transfer as T
from es_lottery.experiments import imp
from es_lottery.pruning import loop

TINY_RUN = {
    "name": "tiny_analysis",
    "dataset": "digits",
    "network": {"name": "mlp", "sizes": [64, 8, 10]},
    "trainer": {
        "type": "es",
        "algorithm": "SNES",
        "population_size": 4,
        "sigma_init": 0.05,
        "num_generations": 2,
        "eval_every": 2,
        "batch_size": 32,
        "checkpoint_every": 2,
    },
    "imp": {"num_levels": 2, "prune_rate": 0.2},
    "criteria": ["snr"],
    "seeds": 1,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analysis_run")
    return imp.run_experiment(imp.parse_config(TINY_RUN), out, console=Console(file=io.StringIO()))


def same_bits(a, b) -> bool:
    """Two pytrees with identical structure, dtypes, shapes and bytes."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b) or len(la) != len(lb):
        return False
    return all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(map(np.asarray, la), map(np.asarray, lb), strict=True)
    )


def small_mlp(sizes=(6, 5, 3), n=48, seed=0):
    """A ReLU MLP, its params (drawn with NumPy, in flax's layout) and random labelled data."""
    module = networks.make_network("mlp", sizes=list(sizes))
    rng = np.random.default_rng(seed)
    params = {
        f"dense_{i}": {
            "kernel": (rng.normal(size=(a, b)) * np.sqrt(2 / a)).astype(np.float32),
            "bias": rng.normal(scale=0.1, size=b).astype(np.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }
    x = rng.normal(size=(n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=n).astype(np.int32)
    return module, params, x, y


def random_mask(params, density, seed=0):
    """Kernels kept with probability ``density``; biases all ones."""
    rng = np.random.default_rng(seed)
    return {
        k: {"kernel": rng.random(v["kernel"].shape) < density, "bias": np.ones(v["bias"].shape, bool)}
        for k, v in params.items()
    }


class Recorder:
    """An evaluator with a known metric that records the population sizes it was called with."""

    def __init__(self, fn):
        self.fn, self.sizes = fn, []

    def __call__(self, members):
        self.sizes.append(population.population_size(members))
        return self.fn(members)


# ----------------------------------------------------------------------------------------------
# connectivity


def test_barrier_between_a_network_and_itself_is_exactly_zero():
    module, params, x, y = small_mlp()
    ev = E.classification_evaluator(module, x, y, metrics=("accuracy", "cross_entropy"))
    for reference in C.REFERENCES:
        for error in ("accuracy", "cross_entropy"):
            r = C.linear_mode_connectivity(ev, params, params, error=error, reference=reference)
            assert r.barrier == 0.0
            for v in r.metrics.values():
                assert np.all(v == v[0])


def test_interpolation_is_exact_at_both_endpoints():
    _, a, _, _ = small_mlp(seed=1)
    _, b, _, _ = small_mlp(seed=2)
    path = C.interpolate(a, b, [0.0, 0.3, 1.0])
    assert same_bits(jax.tree_util.tree_map(lambda p: p[2], path), a)
    assert same_bits(jax.tree_util.tree_map(lambda p: p[0], path), b)
    mid = jax.tree_util.tree_map(lambda p: p[1], path)
    want = jax.tree_util.tree_map(lambda u, v: 0.3 * u + 0.7 * v, a, b)
    for got, w in zip(jax.tree_util.tree_leaves(mid), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)


def test_barrier_equals_the_analytic_value_of_a_known_error_curve():
    """Error 0.1 + 0.2·w + 0.3·sin(πw) along w = α: the excess over the chord is 0.3·sin(πα)."""

    def err(w):
        return 0.1 + 0.2 * w + 0.3 * np.sin(np.pi * w)

    ev = Recorder(lambda m: {"accuracy": 1.0 - err(np.asarray(m["w"][:, 0], np.float64))})
    alphas = np.linspace(0.0, 1.0, 21)
    theta, theta_p = {"w": jnp.ones(1)}, {"w": jnp.zeros(1)}
    r = C.linear_mode_connectivity(ev, theta, theta_p, alphas)
    assert ev.sizes == [21]  # the whole path is ONE population
    assert r.barrier == pytest.approx(0.3, abs=1e-6) and r.barrier_alpha == 0.5
    np.testing.assert_allclose(r.error, err(alphas), atol=1e-6)
    mean = C.linear_mode_connectivity(ev, theta, theta_p, alphas, reference="mean")
    grid = err(alphas) - (err(0.0) + err(1.0)) / 2
    assert mean.barrier == pytest.approx(grid.max(), abs=1e-6)
    assert mean.barrier_alpha == alphas[np.argmax(grid)]

    # pairwise: w = 0, 1, 2 with E(w) = 0.3·sin(πw) → (0,1): 0.3, (0,2): 0.3 at α = ¼, (1,2): 0
    ev2 = Recorder(lambda m: {"accuracy": 1.0 - 0.3 * np.sin(np.pi * np.asarray(m["w"][:, 0], np.float64))})
    nets = [{"w": jnp.full(1, float(v))} for v in (0, 1, 2)]
    pb = C.pairwise_barriers(ev2, nets, alphas)
    assert ev2.sizes == [3 * 21]
    assert pb.pairs == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(pb.barrier, [[0, 0.3, 0.3], [0.3, 0, 0], [0.3, 0, 0]], atol=1e-6)


def test_barrier_of_a_linear_model_through_the_population_kernel():
    """MLP [1, 1] (linear), w: 1 → 0, MSE on x with mean(x²) = 2, y = 0: E(α) = 2α² exactly known."""
    module = networks.make_network("mlp", sizes=[1, 1])
    theta = {"dense_0": {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros(1)}}
    theta_p = {"dense_0": {"kernel": jnp.zeros((1, 1)), "bias": jnp.zeros(1)}}
    x = np.array([[1.0], [-1.0], [2.0], [0.0]], np.float32)
    y = np.zeros((4, 1), np.float32)
    ev = E.classification_evaluator(module, x, y, metrics=("mse",))
    alphas = np.linspace(0, 1, 11)
    r = C.linear_mode_connectivity(ev, theta, theta_p, alphas, error="mse")
    np.testing.assert_allclose(r.error, 1.5 * alphas**2, rtol=1e-6)
    assert r.barrier == 0.0  # convex along the path: never above the chord
    m = C.linear_mode_connectivity(ev, theta, theta_p, alphas, error="mse", reference="mean")
    assert m.barrier == pytest.approx(0.75) and m.barrier_alpha == 1.0


class ReturnTask:
    """A task of the protocol whose test 'return' of a member is −|w − 1|² (best at w = 1)."""

    def evaluate_members(self, state, members):
        return {"return": -jnp.sum(jnp.square(members["w"] - 1.0), axis=1)}


def test_connectivity_with_a_task_evaluator_and_an_error_function():
    ev = E.task_evaluator(ReturnTask())
    alphas = np.linspace(0, 1, 5)
    # θ = (1, 1) optimal, θ′ = (1, −1): along the path the return is −(2 − 2α)², convex: no barrier
    r = C.linear_mode_connectivity(
        ev, {"w": jnp.ones(2)}, {"w": jnp.array([1.0, -1.0])}, alphas, error=lambda m: -m["return"]
    )
    np.testing.assert_allclose(r.error, (2 - 2 * alphas) ** 2, rtol=1e-6)
    assert r.barrier == 0.0 and r.error_name == "<lambda>"


def test_connectivity_rejects_grids_without_endpoints():
    with pytest.raises(ValueError, match="both endpoints 0 and 1"):
        C.error_barrier([0.1, 0.2], [0.0, 0.5])
    with pytest.raises(ValueError, match="reference"):
        C.error_barrier([0.1, 0.2], [0.0, 1.0], reference="max")


# ----------------------------------------------------------------------------------------------
# landscapes


def test_quadratic_fit_recovers_a_known_curvature():
    xs = np.linspace(-1, 1, 41)
    fit = LS.fit_quadratic(xs, 3.0 * xs**2 - 0.5 * xs + 2.0)
    assert (fit.a, fit.b, fit.c) == pytest.approx((3.0, -0.5, 2.0), abs=1e-12)
    assert fit.curvature == pytest.approx(6.0, abs=1e-12) and fit.rmse < 1e-12
    noisy = 3.0 * xs**2 + 0.01 * np.sin(40 * xs)
    assert LS.fit_quadratic(xs, noisy).curvature == pytest.approx(6.0, abs=0.05)


def test_projection_1d_of_a_quadratic_loss():
    """L(w) = |w|²: along θ + ξη the curvature is exactly 2|η|²; all ξ in one population."""
    theta = {"w": jnp.asarray([0.5, -1.0, 2.0, 0.0])}
    eta = LS.gaussian_direction(jax.random.key(3), theta)
    ev = Recorder(lambda m: {"loss": jnp.sum(jnp.square(m["w"]), axis=1)})
    p = LS.projection_1d(ev, theta, eta)
    assert ev.sizes == [len(LS.DEFAULT_XIS)]
    assert p.values["loss"][len(p.xis) // 2] == pytest.approx(float(jnp.sum(theta["w"] ** 2)))
    assert p.fits["loss"].curvature == pytest.approx(2 * float(jnp.sum(eta["w"] ** 2)), rel=1e-5)


def filter_norms(x):
    return np.sqrt(np.sum(np.square(np.asarray(x, np.float64)), axis=tuple(range(np.ndim(x) - 1))))


def test_filter_normalisation_gives_every_filter_the_weights_filter_norm():
    rng = np.random.default_rng(0)
    ref = {
        "conv_0": {
            "kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
            "bias": np.ones(4, np.float32),
        },
        "dense_0": {
            "kernel": rng.normal(size=(6, 5)).astype(np.float32),
            "bias": np.arange(5.0, dtype=np.float32),
        },
    }
    d1, d2 = LS.random_directions(jax.random.key(0), ref, 2)
    for d in (d1, d2):
        for layer in ("conv_0", "dense_0"):
            np.testing.assert_allclose(
                filter_norms(d[layer]["kernel"]), filter_norms(ref[layer]["kernel"]), rtol=1e-5
            )
            assert np.all(np.asarray(d[layer]["bias"]) == 0)  # bias="zero": not perturbed
    assert not np.allclose(d1["dense_0"]["kernel"], d2["dense_0"]["kernel"])  # independent draws
    (copy,) = LS.random_directions(jax.random.key(0), ref, 1, bias="copy")
    assert np.array_equal(copy["dense_0"]["bias"], ref["dense_0"]["bias"])
    (layer,) = LS.random_directions(jax.random.key(0), ref, 1, normalization="layer")
    assert np.linalg.norm(layer["conv_0"]["kernel"]) == pytest.approx(
        np.linalg.norm(ref["conv_0"]["kernel"]), rel=1e-5
    )

    # masked: zeros at pruned entries, surviving entries carry the reference filter's norm
    mask = jax.tree_util.tree_map(lambda a: np.ones(a.shape, bool), ref)
    km = rng.random((6, 5)) < 0.5
    km[:, 0] = False  # neuron 0 loses every input: its direction stays zero
    km[0, 1:] = True
    mask["dense_0"]["kernel"] = km
    (dm,) = LS.random_directions(jax.random.key(1), ref, 1, mask=mask)
    k = np.asarray(dm["dense_0"]["kernel"])
    assert np.all(k[~km] == 0) and np.all(k[:, 0] == 0)
    np.testing.assert_allclose(filter_norms(k)[1:], filter_norms(ref["dense_0"]["kernel"])[1:], rtol=1e-5)


def test_masked_projection_stays_in_the_sparse_subspace():
    _, params, _, _ = small_mlp()
    mask = random_mask(params, 0.5)
    center = jax.tree_util.tree_map(lambda p, m: np.where(m, p, np.float32(0)), params, mask)
    d1, d2 = LS.random_directions(jax.random.key(6), center, 2, mask=mask)
    members = E.affine_members(center, [d1, d2], np.array([[0.5, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    for mem, m in zip(jax.tree_util.tree_leaves(members), jax.tree_util.tree_leaves(mask), strict=True):
        assert np.all(np.asarray(mem)[:, ~np.asarray(m)] == 0)
    assert same_bits(jax.tree_util.tree_map(lambda a: a[2], members), center)  # (0, 0) is exactly θ


def point_by_point(module, center, d1, d2, alphas, betas, x, y, metrics):
    out = {m: np.zeros((len(betas), len(alphas))) for m in metrics}
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            one = E.affine_members(center, [d1, d2], np.array([[a, b]], np.float32))
            res = population.evaluate_params(module, one, x, y, metrics)
            for m in metrics:
                out[m][j, i] = float(res[m][0])
    return out


@pytest.mark.parametrize(
    "fast, block_size, chunk_size",
    [(True, "auto", "auto"), (False, "auto", "auto"), (False, 4, 16), (True, 5, 16)],
)
def test_grid_as_one_population_equals_point_by_point_evaluation(fast, block_size, chunk_size):
    module, params, x, y = small_mlp(sizes=(6, 5, 4, 3))
    metrics = ("accuracy", "cross_entropy", "mse")
    d1, d2 = LS.random_directions(jax.random.key(7), params, 2)
    grid = np.array([-1.0, -0.25, 0.0, 0.5])
    ev = E.classification_evaluator(module, x, y, metrics=metrics, chunk_size=chunk_size)
    land = LS.projection_2d(ev, params, d1, d2, grid, grid[:3], block_size=block_size, fast=fast)
    want = point_by_point(module, params, d1, d2, grid, grid[:3], x, y, metrics)
    assert land.values["accuracy"].shape == (3, 4)
    np.testing.assert_array_equal(land.values["accuracy"], want["accuracy"])
    for m in ("cross_entropy", "mse"):
        np.testing.assert_allclose(land.values[m], want[m], rtol=2e-6, atol=1e-7)


@pytest.mark.slow
def test_cnn_grid_as_one_population_equals_point_by_point_evaluation():
    module = networks.make_network("paper_cnn")
    params = networks.init_params(jax.random.key(0), module)
    rng = np.random.default_rng(0)
    x = rng.random((6, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 6).astype(np.int32)
    d1, d2 = LS.random_directions(jax.random.key(1), params, 2)
    ev = E.classification_evaluator(module, x, y)
    grid = np.array([-1.0, 0.0, 1.0])
    land = LS.projection_2d(ev, params, d1, d2, grid, grid[:2])
    want = point_by_point(module, params, d1, d2, grid, grid[:2], x, y, ev.metrics)
    np.testing.assert_array_equal(land.values["accuracy"], want["accuracy"])
    np.testing.assert_allclose(land.values["cross_entropy"], want["cross_entropy"], rtol=2e-6)


# ----------------------------------------------------------------------------------------------
# statistics


def test_rank_correlation_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    cases = [
        (rng.integers(0, 5, 60), rng.integers(0, 4, 60)),  # many ties in both
        (rng.normal(size=40), rng.normal(size=40)),
        (np.r_[rng.integers(0, 3, 20), np.inf], np.r_[rng.normal(size=20), 5.0]),
    ]
    for a, b in cases:
        np.testing.assert_array_equal(S.rankdata(a), scipy.stats.rankdata(a))
        assert S.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(S.spearman(np.ones(5), np.arange(5)))
    with pytest.raises(ValueError, match="NaN"):
        S.rankdata([1.0, np.nan])


def test_snr_magnitude_correlation_uses_the_surviving_kernels_only():
    _, mu, _, _ = small_mlp(seed=3)
    rng = np.random.default_rng(1)
    std = jax.tree_util.tree_map(lambda a: rng.uniform(0.01, 0.1, a.shape).astype(np.float32), mu)
    mask = random_mask(mu, 0.6, seed=2)
    kern = [("dense_0", "kernel"), ("dense_1", "kernel")]
    m = np.concatenate([np.asarray(mu[a][b])[np.asarray(mask[a][b])] for a, b in kern])
    s = np.concatenate([np.asarray(std[a][b])[np.asarray(mask[a][b])] for a, b in kern])
    want = scipy.stats.spearmanr(np.abs(m) / s, np.abs(m)).statistic
    assert S.snr_magnitude_correlation(mu, std, mask) == pytest.approx(want, abs=1e-12)


def test_mask_overlap_and_equal_density_snr_vs_magnitude_masks():
    a = {"k": {"kernel": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)}, "b": {"bias": np.ones(3, bool)}}
    b = {"k": {"kernel": np.array([[1, 0, 1, 0], [1, 0, 0, 1]], bool)}, "b": {"bias": np.ones(3, bool)}}
    o = S.mask_overlap(a, b)
    assert (o["kept_a"], o["kept_b"], o["total"], o["intersection"]) == (3, 4, 8, 2)
    assert o["fraction_of_a"] == pytest.approx(2 / 3) and o["jaccard"] == pytest.approx(2 / 5)
    assert o["random_expectation"] == pytest.approx(4 / 8)

    _, mu, _, _ = small_mlp(seed=4)
    std = jax.tree_util.tree_map(lambda v: jnp.abs(v) + 0.05, mu)
    level_mask = random_mask(mu, 0.8)
    ov = S.snr_magnitude_overlap(mu, std, level_mask, 0.5)
    n = M.count(level_mask)[1]
    assert ov["kept_a"] == ov["kept_b"] == M.kept_count(0.5, n)
    assert 0 < ov["fraction_of_a"] <= 1


def test_layer_fractions_and_weight_stats():
    masks = [
        {"dense_0": {"kernel": np.ones((2, 4), bool), "bias": np.ones(4, bool)}},
        {"dense_0": {"kernel": np.array([[1, 0, 0, 0], [1, 1, 0, 0]], bool), "bias": np.ones(4, bool)}},
    ]
    assert S.layer_fractions(masks[1]) == {"dense_0/kernel": 3 / 8}
    np.testing.assert_array_equal(S.layer_fractions_by_level(masks)["dense_0/kernel"], [1.0, 3 / 8])
    params = {"dense_0": {"kernel": np.arange(8.0).reshape(2, 4) - 4, "bias": np.zeros(4)}}
    st = S.layer_weight_stats(params, masks[1])["dense_0/kernel"]
    assert st["count"] == 3 and st["mean_abs"] == pytest.approx((4 + 0 + 1) / 3) and st["max_abs"] == 4


def test_ticket_effect_decomposition():
    acc = {
        "magnitude": np.array([0.90, 0.88]),
        "snr": np.array([0.91, 0.90]),
        "permute_weights": np.array([0.89, 0.85]),
        "permute_mask_and_weights": np.array([0.85, 0.80]),
        "random_reinit": np.array([0.84, 0.70]),
        "mask_reinit": np.array([0.88, 0.86]),
    }
    eff = S.ticket_effects(acc, ticket="magnitude", extra_ticket="snr")
    np.testing.assert_allclose(eff["total"], [0.06, 0.18])
    np.testing.assert_allclose(eff["weights"], [0.01, 0.03])
    np.testing.assert_allclose(eff["mask"], [0.04, 0.05])
    np.testing.assert_allclose(eff["layerwise_ratio"], [0.01, 0.10])
    np.testing.assert_allclose(eff["reinit"], [0.02, 0.02])
    np.testing.assert_allclose(eff["extra"], [0.01, 0.02])
    np.testing.assert_allclose(eff["weights"] + eff["mask"] + eff["layerwise_ratio"], eff["total"])
    assert set(S.ticket_effects({"imp": [1.0], "random_reinit": [0.5]})) == {"total"}
    with pytest.raises(ValueError, match="ticket 'imp'"):
        S.ticket_effects({"magnitude": [1.0]})


# ----------------------------------------------------------------------------------------------
# run store and archive


def test_load_run_reads_every_level(tiny_run):
    run = R.load_run(tiny_run)
    assert (run.seeds, run.criteria, run.level_ids) == ((0,), ("snr",), (0, 1))
    lv0, lv1 = run.series(0, "snr")
    assert lv0.density == 1.0 and lv1.kept == M.count(lv1.mask)[0] == M.kept_count(0.8, lv1.total)
    assert bool(M.is_nested(lv1.mask, lv0.mask))
    assert same_bits(
        lv1.theta0,
        jax.tree_util.tree_map(lambda t, m: np.where(m, t, np.float32(0)), run.theta0[0], lv1.mask),
    )
    for leaf, m in zip(
        jax.tree_util.tree_leaves(lv1.final_params), jax.tree_util.tree_leaves(lv1.mask), strict=True
    ):
        assert np.all(np.asarray(leaf)[~np.asarray(m)] == 0)
    assert lv1.std is not None and "eval/accuracy" in lv1.curves
    assert run.metric("snr").shape == (1, 2)
    rho = S.snr_magnitude_correlation_by_level(run.series(0, "snr"))
    assert rho.shape == (2,) and np.all((rho > -1) & (rho <= 1))
    assert isinstance(run.module(), networks.MLP)


def test_incomplete_run_directory_names_everything_missing(tiny_run, tmp_path):
    shutil.copytree(tiny_run.parent, tmp_path / "out")  # the view and the store
    broken = tmp_path / "out" / tiny_run.name
    data = imp.data_dir(imp.parse_config(TINY_RUN), tmp_path / "out")
    (data / "seed_0/snr/level_1/final_params.npz").unlink()
    (data / "seed_0/snr/level_0/metrics.json").unlink()
    (data / "seed_0/theta0.npz").unlink()
    with pytest.raises(R.RunDirectoryError) as info:
        R.load_run(broken)
    msg = str(info.value)
    for where in (
        "seed_0/snr/level_1/final_params.npz: missing",
        "seed_0/snr/level_0/metrics.json: missing",
        "seed_0/theta0.npz: missing",
    ):
        assert where in msg
    assert len(info.value.problems) == 3

    shutil.rmtree(data / "seed_0/snr/level_1")
    np.savez(data / "seed_0/theta0.npz", **{"dense_0/kernel": np.zeros((3, 8)), "dense_0/bias": np.zeros(8)})
    with pytest.raises(R.RunDirectoryError) as info:
        R.load_run(broken)
    msg = str(info.value)
    assert "seed_0/snr/level_1/: missing" in msg
    assert "seed_0/theta0.npz: 'dense_0/kernel' has shape (3, 8), the config's network needs (64, 8)" in msg
    assert "seed_0/theta0.npz: lacks the array 'dense_1/kernel'" in msg
    # only the levels asked for are required
    R.load_run(tiny_run, levels=[0])


def test_archive_round_trip_is_exact(tiny_run, tmp_path):
    run = R.load_run(tiny_run)
    # one level stored densely: nonzero and -0.0 values at pruned entries must survive too
    lv = run.level(0, "snr", 1)
    odd = jax.tree_util.tree_map(lambda p, m: np.where(m, p, np.float32(-0.0)), lv.final_params, lv.mask)
    odd["dense_1"]["kernel"][~np.asarray(lv.mask["dense_1"]["kernel"])] = 7.0
    levels = dict(run.levels)
    levels[(0, "snr", 1)] = dataclasses.replace(lv, final_params=odd)
    run = dataclasses.replace(run, levels=levels)

    json_path, npz_path = R.write_archive(run, tmp_path / "data")
    meta = json.loads(json_path.read_text())
    assert meta["encoding"]["seed_0/snr/level_1/final_params"] == "dense"
    assert meta["encoding"]["seed_0/snr/level_1/theta0"] == "masked_reference"
    assert meta["encoding"]["seed_0/snr/level_1/std"] == "active"
    back = R.load_archive(json_path)
    assert (back.seeds, back.criteria, back.level_ids, back.name) == (
        run.seeds,
        run.criteria,
        run.level_ids,
        run.name,
    )
    assert back.config == run.config and back.summary == run.summary
    assert same_bits(back.theta0, run.theta0)
    assert back.levels.keys() == run.levels.keys()
    for key, lv in run.levels.items():
        got = back.levels[key]
        for f in ("mask", "theta0", "final_params", "std", "curves"):
            assert same_bits(getattr(got, f), getattr(lv, f)), (key, f)
        assert got.metrics == lv.metrics
    assert npz_path.stat().st_size < 20_000  # compact: 2 levels of a 600-weight MLP


# ----------------------------------------------------------------------------------------------
# transfer


class RecordingTrainer:
    """A fake target trainer: records what it is given, returns the start as the 'trained' params."""

    name = "recording"

    def __init__(self, shapes_from):
        self.like, self.calls = shapes_from, []

    def init_params(self, key):
        return jax.tree_util.tree_map(lambda a: jnp.zeros(np.shape(a), jnp.float32), self.like)

    def train(self, key, theta0, mask):
        self.calls.append((key, theta0, mask))
        return loop.TrainResult(final_params=theta0, eval_score=0.5 + 0.1 * len(self.calls))


def test_transfer_trains_exactly_the_source_tickets(tiny_run):
    run = R.load_run(tiny_run)
    tickets = T.tickets_from_run(run, 0, "snr")
    trainer = RecordingTrainer(run.theta0[0])
    key = jax.random.key(42)
    res = T.transfer_tickets(key, trainer, tickets)
    assert res.levels == [0, 1] and res.trainer == "recording"
    for (k_train, theta0, mask), lv in zip(trainer.calls, run.series(0, "snr"), strict=True):
        assert same_bits(theta0, lv.theta0) and same_bits(mask, lv.mask)
        assert np.array_equal(
            jax.random.key_data(k_train), jax.random.key_data(loop.level_keys(key, lv.level)[0])
        )
    np.testing.assert_allclose(res.densities, run.densities("snr")[0])
    np.testing.assert_allclose(res.eval_scores, [0.6, 0.7])
    assert same_bits(res.records[1].theta_start, run.level(0, "snr", 1).theta0)

    other = RecordingTrainer({"dense_0": {"kernel": np.zeros((64, 9)), "bias": np.zeros(9)}})
    with pytest.raises(ValueError, match="level 0"):
        T.transfer_tickets(key, other, tickets)


# ----------------------------------------------------------------------------------------------
# plots


def test_plots_write_pngs_and_leave_the_backend_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    alphas = np.linspace(0, 1, 5)
    curve = C.ConnectivityResult(
        alphas, {"accuracy": 1 - alphas}, alphas * (1 - alphas), 0.25, 0.5, "linear", "e"
    )
    land = LS.Landscape2D(
        np.linspace(-1, 1, 5),
        np.linspace(-1, 1, 4),
        {"cross_entropy": np.random.default_rng(0).random((4, 5))},
    )
    proj = LS.Projection1D(
        alphas, {"cross_entropy": alphas**2}, {"cross_entropy": LS.fit_quadratic(alphas, alphas**2)}
    )
    dens = np.array([1.0, 0.8, 0.64])
    paths = [
        PL.barrier_curves({"0–1": curve, "raw": (alphas, alphas)}, tmp_path / "barrier.png"),
        PL.barrier_matrix(np.array([[0, 0.1], [0.1, 0]]), tmp_path / "matrix.png", ["a", "b"]),
        PL.landscape_heatmaps({"L0": land, "L1": land}, tmp_path / "land.png"),
        PL.projection_curves({"L0": proj}, tmp_path / "proj.png"),
        PL.layer_ratio_bars({"dense_0/kernel": [[1, 0.7, 0.5], [1, 0.75, 0.5]]}, tmp_path / "bars.png"),
        PL.correlation_curves({"snr": (dens, [[0.9, 0.8, 0.7], [0.95, 0.8, 0.6]])}, tmp_path / "rho.png"),
        PL.transfer_curves(
            {"transfer": (dens, [0.9, 0.85, 0.8]), "own": (dens, [0.9, 0.9, 0.85])}, tmp_path / "t.png"
        ),
    ]
    for p in paths:
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend


def test_importing_the_package_has_no_side_effects():
    code = (
        "import sys, es_lottery.analysis as A; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
        "assert not any(m.startswith('es_lottery.experiments') for m in sys.modules); "
        "missing = [n for n in A.__all__ if not hasattr(A, n)]; assert not missing, missing"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_transfer_to_the_source_trainer_with_the_run_key_repeats_the_source(tiny_run):
    run = R.load_run(tiny_run)
    exp = imp.parse_config(TINY_RUN)
    module = exp.module()
    trainer = imp.make_trainer(exp, module, imp.load_data(exp))
    run_key = jax.random.fold_in(jax.random.key(exp.seed), 0)
    res = T.transfer_tickets(run_key, trainer, T.tickets_from_run(run, 0, "snr"))
    for rec, lv in zip(res.records, run.series(0, "snr"), strict=True):
        assert same_bits(jax.tree_util.tree_map(np.asarray, rec.final_params), lv.final_params)
        assert rec.eval_score == lv.test_accuracy
