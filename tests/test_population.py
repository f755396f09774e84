"""Population kernels checked against a plain per-member loop over ``networks.apply`` + numpy metrics."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import _sharding_check as SC
import jax
import numpy as np
import pytest

from es_lottery import masks as M
from es_lottery import networks as N
from es_lottery import population as pop

ROOT = Path(__file__).resolve().parents[1]
ALL = ("accuracy", "cross_entropy", "mse")
NPOP = 5
DENSITIES = (0.1, 0.3, 0.5, 0.7, 1.0)

# ----------------------------------------------------------------------------------------------
# cases and the independent reference


def _mlp(sizes, **kw):
    return N.make_network("mlp", sizes=list(sizes), **kw)


# name → (module, x, number of classes, weight scale)
CASE_SPECS = {
    # 2 inputs and one hidden layer: the GA "table path"
    "mlp_table": (lambda: _mlp((2, 20, 2)), lambda r: r.standard_normal((60, 2)), 2, "uniform"),
    "mlp_2hidden": (lambda: _mlp((4, 16, 12, 3)), lambda r: r.standard_normal((50, 4)), 3, "uniform"),
    "mlp_tanh": (
        lambda: _mlp((3, 10, 4), hidden_activation="tanh", output_activation="tanh"),
        lambda r: r.standard_normal((40, 3)),
        4,
        "fan_in",
    ),
    # a 784-input MLP fed 28x28x1 images (flattened by the network)
    "mlp_image": (lambda: _mlp((784, 16, 10)), lambda r: r.random((30, 28, 28, 1)), 10, "fan_in"),
    "paper_cnn": (lambda: N.make_network("paper_cnn"), lambda r: r.random((16, 28, 28, 1)), 10, "fan_in"),
}


@functools.cache
def case(name: str):
    """(module, params, stacked masks (P, …), member params (P, …), x, y): deterministic per name."""
    make_module, make_x, n_cls, scale = CASE_SPECS[name]
    rng = np.random.default_rng(sorted(CASE_SPECS).index(name))
    module = make_module()
    x = make_x(rng).astype(np.float32)
    y = rng.integers(0, n_cls, size=len(x)).astype(np.int32)
    params = SC.random_params(module, rng, scale)
    masks = SC.random_masks(params, DENSITIES, rng)
    member_params = SC.perturbed(params, NPOP, rng)
    return module, params, masks, member_params, x, y


def member(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def loop_outputs_ga(module, params, masks, x) -> list[np.ndarray]:
    """The reference: one member at a time, ``networks.apply(module, masks.apply(params, mask_i), x)``."""
    npop = len(jax.tree_util.tree_leaves(masks)[0])
    return [
        np.asarray(N.apply(module, M.apply(params, member(masks, i)), x), np.float64) for i in range(npop)
    ]


def loop_outputs_es(module, member_params, x) -> list[np.ndarray]:
    npop = len(jax.tree_util.tree_leaves(member_params)[0])
    return [np.asarray(N.apply(module, member(member_params, i), x), np.float64) for i in range(npop)]


def np_metrics(outs: list[np.ndarray], y: np.ndarray) -> dict:
    """numpy metrics per member; accuracy as an integer COUNT of hits."""
    res = {"count": [], "cross_entropy": [], "mse": []}
    for o in outs:
        n = len(o)
        if np.issubdtype(y.dtype, np.integer):
            res["count"].append(int(np.sum(np.argmax(o, axis=-1) == y)))
            m = o.max(axis=-1)
            logz = m + np.log(np.sum(np.exp(o - m[:, None]), axis=-1))
            res["cross_entropy"].append(np.mean(logz - o[np.arange(n), y]))
            target = np.eye(o.shape[-1])[y]
        else:
            target = y.reshape(n, -1).astype(np.float64)
        res["mse"].append(np.mean((o - target) ** 2))
    return {k: np.asarray(v) for k, v in res.items()}


@functools.cache
def reference(name: str, mode: str) -> dict:
    module, params, masks, member_params, x, y = case(name)
    outs = (
        loop_outputs_ga(module, params, masks, x)
        if mode == "ga"
        else loop_outputs_es(module, member_params, x)
    )
    return np_metrics(outs, y)


def run(name: str, mode: str, metrics=ALL, **kw) -> dict:
    module, params, masks, member_params, x, y = case(name)
    if mode == "ga":
        res = pop.evaluate_masks(module, params, masks, x, y, metrics, **kw)
    else:
        res = pop.evaluate_params(module, member_params, x, y, metrics, **kw)
    return {k: np.asarray(v) for k, v in res.items()}


def assert_matches_reference(res: dict, ref: dict, n: int, float32: bool = True) -> None:
    for k, v in res.items():
        assert v.shape == (len(ref["mse"]),) and (v.dtype == np.float32 or not float32), k
    if "accuracy" in res:
        np.testing.assert_array_equal(np.round(res["accuracy"] * n).astype(int), ref["count"])
    for k in ("cross_entropy", "mse"):
        if k in res:
            np.testing.assert_allclose(res[k], ref[k], rtol=1e-5, atol=1e-7, err_msg=k)


# ----------------------------------------------------------------------------------------------
# the subprocess with 4 fake CPU devices runs while the in-process tests below do


@pytest.fixture(scope="module", autouse=True)
def sharding_run():
    """Start the 4-device subprocess when this module starts; ``get()`` waits for its JSON."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_sharding_check.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )

    @functools.cache
    def get() -> dict:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        return json.loads(out)

    yield get
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# ----------------------------------------------------------------------------------------------
# kernels == plain loop


@pytest.mark.parametrize(
    ("name", "use_table"),
    [
        ("mlp_table", None),
        ("mlp_table", True),
        ("mlp_table", False),
        ("mlp_2hidden", None),
        ("mlp_tanh", None),
        ("mlp_image", None),
        ("paper_cnn", None),
    ],
)
def test_evaluate_masks_matches_loop(name, use_table):
    res = run(name, "ga", chunk_size=None, use_table=use_table)
    assert set(res) == set(ALL)
    assert_matches_reference(res, reference(name, "ga"), len(case(name)[4]))


@pytest.mark.parametrize("name", ["mlp_table", "mlp_2hidden", "mlp_tanh", "mlp_image", "paper_cnn"])
def test_evaluate_params_matches_loop(name):
    res = run(name, "es", chunk_size=None)
    assert_matches_reference(res, reference(name, "es"), len(case(name)[4]))


def test_reference_is_not_trivial():
    # the cases must discriminate: members differ, and accuracy is neither 0 nor 1 everywhere
    for name in ("mlp_table", "paper_cnn"):
        for mode in ("ga", "es"):
            ref = reference(name, mode)
            assert len(set(np.round(ref["cross_entropy"], 6))) == NPOP
            n = len(case(name)[4])
            assert np.any((ref["count"] > 0) & (ref["count"] < n))


def test_single_metric_as_string():
    res = run("mlp_table", "ga", metrics="accuracy", chunk_size=None)
    assert set(res) == {"accuracy"}
    assert_matches_reference(res, reference("mlp_table", "ga"), 60)


def test_ga_with_pruned_biases_falls_back_and_matches_loop():
    # the mask convention keeps biases, but a caller may prune them; the automatic choice must notice
    for name in ("mlp_table", "mlp_2hidden"):
        module, params, masks, _, x, y = case(name)
        masks = jax.tree_util.tree_map(np.copy, masks)
        masks["dense_0"]["bias"][1, ::2] = False
        masks["dense_1"]["bias"][3, 0] = False
        res = pop.evaluate_masks(module, params, masks, x, y, ALL, chunk_size=None)
        assert_matches_reference(res, np_metrics(loop_outputs_ga(module, params, masks, x), y), len(x))


def test_forced_table_path_never_silently_ignores_pruned_biases():
    # use_table=True with masks that prune biases: raise a ValueError or give the loop's numbers
    module, params, masks, _, x, y = case("mlp_table")
    masks = jax.tree_util.tree_map(np.copy, masks)
    masks["dense_1"]["bias"][:, :] = False
    ref = np_metrics(loop_outputs_ga(module, params, masks, x), y)
    try:
        res = pop.evaluate_masks(module, params, masks, x, y, ALL, chunk_size=None, use_table=True)
    except ValueError as err:
        assert "use_table" in str(err) or "bias" in str(err)
    else:
        assert_matches_reference({k: np.asarray(v) for k, v in res.items()}, ref, len(x))


@pytest.mark.parametrize("name", ["mlp_2hidden", "mlp_tanh", "mlp_scalar"])
@pytest.mark.parametrize("mode", ["ga", "es"])
def test_mse_with_float_regression_targets(name, mode):
    if name == "mlp_scalar":  # one output, targets of shape (n,)
        module = _mlp((3, 8, 1))
        rng = np.random.default_rng(7)
        x = rng.standard_normal((33, 3)).astype(np.float32)
        y = rng.standard_normal(33).astype(np.float32)
        params = SC.random_params(module, rng)
        masks = SC.random_masks(params, (0.3, 0.6, 1.0), rng)
        member_params = SC.perturbed(params, 3, rng)
    else:
        module, params, masks, member_params, x, _ = case(name)
        y = np.random.default_rng(8).standard_normal((len(x), module.sizes[-1])).astype(np.float32)
    if mode == "ga":
        res = pop.evaluate_masks(module, params, masks, x, y, "mse", chunk_size=None)
        outs = loop_outputs_ga(module, params, masks, x)
    else:
        res = pop.evaluate_params(module, member_params, x, y, "mse", chunk_size=None)
        outs = loop_outputs_es(module, member_params, x)
    ref = np_metrics(outs, y)
    # the float target is used as is, not one-hot encoded
    np.testing.assert_allclose(np.asarray(res["mse"]), ref["mse"], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# chunked == unchunked


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("mlp_table", "ga"),
        ("mlp_2hidden", "ga"),
        ("mlp_2hidden", "es"),
        ("paper_cnn", "ga"),
        ("paper_cnn", "es"),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 7, "auto"])
def test_chunked_equals_unchunked(name, mode, chunk_size):
    n = len(case(name)[4])
    assert n % 7 != 0  # the last chunk is padded
    whole = run(name, mode, chunk_size=None)
    chunked = run(name, mode, chunk_size=chunk_size)
    np.testing.assert_array_equal(chunked["accuracy"], whole["accuracy"])
    for k in ("cross_entropy", "mse"):
        np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # and padding does not leak into the means: still equal to the plain loop
    assert_matches_reference(chunked, reference(name, mode), n)


def test_chunk_larger_than_data():
    res = run("mlp_table", "ga", chunk_size=1000)
    assert_matches_reference(res, reference("mlp_table", "ga"), 60)


# ----------------------------------------------------------------------------------------------
# sharding over 4 fake devices (population 7, not a multiple of 4)


@pytest.mark.parametrize("chunk", SC.CHUNKS)
@pytest.mark.parametrize("name", ["mlp_ga", "mlp_es", "cnn_ga", "cnn_es"])
def test_sharded_over_4_devices_equals_unsharded_and_loop(sharding_run, name, chunk):
    result = sharding_run()
    assert result["device_count"] == 4
    got = result["cases"][f"{name}/chunk={chunk}"]
    assert "error" not in got["unsharded"], got["unsharded"]
    assert "error" not in got["sharded"], got["sharded"]["error"]
    sharded = {k: np.asarray(v) for k, v in got["sharded"].items()}
    unsharded = {k: np.asarray(v) for k, v in got["unsharded"].items()}
    assert set(sharded) == set(SC.METRICS) and all(v.shape == (SC.NPOP,) for v in sharded.values())
    np.testing.assert_array_equal(sharded["accuracy"], unsharded["accuracy"])
    for k in ("cross_entropy", "mse"):
        np.testing.assert_allclose(sharded[k], unsharded[k], rtol=1e-6, err_msg=k)
    # independent reference computed here, in a 1-device process, with the plain loop
    module, mode, tree, params, x, y = sharding_cases()[name]
    if mode == "ga":
        outs = loop_outputs_ga(module, params, tree, x)
    else:
        outs = loop_outputs_es(module, tree, x)
    assert_matches_reference(sharded, np_metrics(outs, y), len(x), float32=False)  # dtype lost in JSON
    n = len(x)
    assert np.any((np.round(sharded["accuracy"] * n) > 0) & (np.round(sharded["accuracy"] * n) < n))


@functools.cache
def sharding_cases() -> dict:
    return SC.cases()


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.fixture
def small():
    module, params, masks, member_params, x, y = case("mlp_2hidden")
    return module, params, masks, member_params, x, y


def test_unknown_metric_names_the_field(small):
    module, params, masks, member_params, x, y = small
    with pytest.raises(ValueError, match="metrics") as err:
        pop.evaluate_masks(module, params, masks, x, y, ("accuracy", "f1"))
    assert "f1" in str(err.value)
    with pytest.raises(ValueError, match="metrics"):
        pop.evaluate_params(module, member_params, x, y, "top5")
    with pytest.raises(ValueError, match="metrics"):
        pop.evaluate_params(module, member_params, x, y, ())


def test_wrong_input_shape_mentions_input(small):
    module, params, masks, member_params, x, y = small
    bad = np.zeros((len(x), 5), np.float32)
    with pytest.raises(ValueError, match="input"):
        pop.evaluate_masks(module, params, masks, bad, y)
    with pytest.raises(ValueError, match="input"):
        pop.evaluate_params(module, member_params, bad, y)
    with pytest.raises(ValueError, match="input"):
        pop.evaluate_params(module, member_params, np.zeros(4, np.float32), y[:4])  # unbatched
    cnn, cparams, cmasks, cmember, cx, cy = case("paper_cnn")
    with pytest.raises(ValueError, match="input"):
        pop.evaluate_masks(cnn, cparams, cmasks, cx.reshape(len(cx), 784), cy)
    with pytest.raises(ValueError, match="input"):
        pop.evaluate_params(cnn, cmember, cx[:, :14], cy)


def test_labels_must_match_inputs(small):
    module, params, masks, member_params, x, y = small
    with pytest.raises(ValueError, match="labels"):
        pop.evaluate_params(module, member_params, x, y[:-1])
    with pytest.raises(TypeError, match="accuracy"):
        pop.evaluate_params(module, member_params, x, y.astype(np.float32))
    with pytest.raises(TypeError, match="cross_entropy"):
        pop.evaluate_masks(module, params, masks, x, np.zeros((len(x), 3), np.int32), "cross_entropy")


def test_mismatched_population_axes(small):
    module, params, masks, member_params, x, y = small
    bad_masks = jax.tree_util.tree_map(np.copy, masks)
    bad_masks["dense_1"]["kernel"] = bad_masks["dense_1"]["kernel"][:3]
    with pytest.raises(ValueError, match="population"):
        pop.evaluate_masks(module, params, bad_masks, x, y)
    bad_params = jax.tree_util.tree_map(np.copy, member_params)
    bad_params["dense_0"]["bias"] = bad_params["dense_0"]["bias"][:4]
    with pytest.raises(ValueError, match="population"):
        pop.evaluate_params(module, bad_params, x, y)
    # unstacked params (no population axis at all) are caught too
    with pytest.raises(ValueError):
        pop.evaluate_params(module, params, x, y)
    assert pop.population_size(masks) == NPOP


def test_incongruent_masks_name_the_leaf(small):
    module, params, masks, _, x, y = small
    missing = dict(masks, dense_1={"bias": masks["dense_1"]["bias"]})
    with pytest.raises(ValueError, match="dense_1/kernel"):
        pop.evaluate_masks(module, params, missing, x, y)
    wrong = jax.tree_util.tree_map(np.copy, masks)
    wrong["dense_2"]["kernel"] = np.ones((NPOP, 12, 4), bool)
    with pytest.raises(ValueError, match="dense_2/kernel"):
        pop.evaluate_masks(module, params, wrong, x, y)


def test_labels_out_of_range_empty_data_and_empty_population_are_rejected(small):
    module, params, masks, member_params, x, y = small
    n_out = np.shape(params["dense_2"]["kernel"])[-1]  # the last layer's width: the classes allowed
    for bad_label in (n_out, -1):
        y_bad = np.asarray(y).copy()
        y_bad[3] = bad_label
        expect = rf"labels y lie in \[{min(bad_label, 0)}, .*0 … {n_out - 1}"
        with pytest.raises(ValueError, match=expect):
            pop.evaluate_masks(module, params, masks, x, y_bad)
        with pytest.raises(ValueError, match=expect):
            pop.evaluate_params(module, member_params, x, y_bad)
    with pytest.raises(ValueError, match="data are empty"):
        pop.evaluate_params(module, member_params, np.asarray(x)[:0], np.asarray(y)[:0])
    empty = jax.tree_util.tree_map(lambda a: np.asarray(a)[:0], member_params)
    with pytest.raises(ValueError, match="population is empty"):
        pop.evaluate_params(module, empty, x, y)
    with pytest.raises(ValueError, match="population is empty"):
        pop.evaluate_masks(module, params, jax.tree_util.tree_map(lambda a: np.asarray(a)[:0], masks), x, y)
    # the labels are only read when concrete: under jit the check is skipped, and the kernel still runs
    out = jax.jit(lambda yy: pop.evaluate_params(module, member_params, x, yy)["accuracy"])(y)
    np.testing.assert_array_equal(out, pop.evaluate_params(module, member_params, x, y)["accuracy"])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "big"])
def test_bad_chunk_size(small, bad):
    module, _, _, member_params, x, y = small
    with pytest.raises(ValueError, match="chunk_size"):
        pop.evaluate_params(module, member_params, x, y, chunk_size=bad)


def test_forcing_the_table_path_where_it_does_not_apply(small):
    module, params, masks, _, x, y = small
    with pytest.raises(ValueError, match="use_table"):
        pop.evaluate_masks(module, params, masks, x, y, use_table=True)
