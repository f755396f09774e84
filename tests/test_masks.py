"""Mask pytrees checked against hand counts and an independent numpy top-k (stable argsort)."""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from es_lottery import masks as M

# ----------------------------------------------------------------------------------------------
# helpers: a small params-like tree and independent numpy references

# jax.tree_util orders dict keys, so the flattened order is a/bias, a/kernel, b/bias, b/kernel and the
# prunable (kernel) order is a/kernel (12 entries) then b/kernel (10 entries): 22 prunable weights.
SHAPES = {"a": {"bias": (4,), "kernel": (3, 4)}, "b": {"bias": (5,), "kernel": (2, 5)}}
N_PRUNABLE = 22


def tree_of(fill) -> dict:
    """A tree shaped like SHAPES with ``fill(name, shape)`` as leaves."""
    return {layer: {leaf: fill(f"{layer}/{leaf}", s) for leaf, s in d.items()} for layer, d in SHAPES.items()}


def random_scores(seed: int, low: int | None = None, high: int | None = None) -> dict:
    """Random float32 scores; with ``low/high`` small integers, so there are many ties."""
    rng = np.random.default_rng(seed)
    if low is None:
        return tree_of(lambda _, s: rng.standard_normal(s).astype(np.float32))
    return tree_of(lambda _, s: rng.integers(low, high, size=s).astype(np.float32))


def np_keep_top(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Keep the k largest; ties → lower flat index; NaN and disallowed entries rank last."""
    s = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    order = np.argsort(-s, kind="stable")
    keep = np.zeros(s.size, bool)
    keep[order[:k]] = True
    return keep


def kernels_flat(tree) -> np.ndarray:
    return np.concatenate(
        [np.ravel(np.asarray(tree["a"]["kernel"])), np.ravel(np.asarray(tree["b"]["kernel"]))]
    )


def split_flat(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return flat[:12].reshape(3, 4), flat[12:].reshape(2, 5)


def assert_biases_kept(mask) -> None:
    for layer in ("a", "b"):
        b = np.asarray(mask[layer]["bias"])
        assert b.dtype == np.bool_ and b.all()


# ----------------------------------------------------------------------------------------------
# kept_count and top-k


@pytest.mark.parametrize(
    ("d", "n", "expected"),
    [(0.5, 22, 11), (0.25, 22, 6), (0.25, 10, 3), (0.5, 3, 2), (0.3, 10, 3), (0.05, 10, 1), (0.04, 10, 0)],
)
def test_kept_count_rounds_half_up(d, n, expected):
    # hand values of floor(d * n + 1/2): 5.5 → 6, 2.5 → 3, 1.5 → 2, 0.5 → 1, 0.4 → 0
    assert M.kept_count(d, n) == expected


@pytest.mark.parametrize("k_density", [0.5, 0.25, 0.6])
def test_all_equal_scores_keep_the_first_k_in_flattened_order(k_density):
    scores = tree_of(lambda _, s: np.ones(s, np.float32))
    mask = M.topk(scores, k_density)
    k = M.kept_count(k_density, N_PRUNABLE)
    expected = np.arange(N_PRUNABLE) < k
    np.testing.assert_array_equal(kernels_flat(mask), expected)
    assert_biases_kept(mask)
    # layerwise: the first k_leaf of each leaf, row-major
    mask = M.topk(scores, k_density, scope="layerwise")
    for layer, size in (("a", 12), ("b", 10)):
        flat = np.ravel(np.asarray(mask[layer]["kernel"]))
        np.testing.assert_array_equal(flat, np.arange(size) < M.kept_count(k_density, size))


def test_ties_straddling_the_threshold_go_to_the_lower_index():
    # hand-made: the 3 largest of [5, 3, 3, 3, 1, 3 | ...] are 5 and the FIRST two 3s
    a = np.array([[5, 3, 3, 3], [1, 3, 0, 0], [0, 0, 0, 0]], np.float32)
    b = np.full((2, 5), -1.0, np.float32)
    scores = {"a": {"bias": np.zeros(4, np.float32), "kernel": a}, "b": {"bias": np.zeros(5), "kernel": b}}
    mask = M.topk(scores, 3 / 22)  # kept_count = floor(3 + 0.5) = 3
    expected_a = np.zeros((3, 4), bool)
    expected_a[0, :3] = True
    np.testing.assert_array_equal(np.asarray(mask["a"]["kernel"]), expected_a)
    assert not np.asarray(mask["b"]["kernel"]).any()
    # 7 kept: 5, all four 3s, the 1, then the first 0 (a[1, 2]) beats the later zeros and all of b
    mask = M.topk(scores, 7 / 22)
    expected_a = np.zeros((3, 4), bool)
    expected_a[0, :] = True
    expected_a[1, :3] = True
    np.testing.assert_array_equal(np.asarray(mask["a"]["kernel"]), expected_a)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("d", [0.1, 0.25, 0.5, 0.8, 1.0])
def test_topk_matches_numpy_stable_argsort_with_many_ties(scope, d):
    scores = random_scores(seed=3, low=0, high=4)  # 22 values in {0..3}: plenty of ties
    mask = M.topk(scores, d, scope=scope)
    flat = kernels_flat(scores)
    if scope == "global":
        expected = np_keep_top(flat, M.kept_count(d, N_PRUNABLE))
    else:
        expected = np.concatenate(
            [np_keep_top(flat[:12], M.kept_count(d, 12)), np_keep_top(flat[12:], M.kept_count(d, 10))]
        )
    np.testing.assert_array_equal(kernels_flat(mask), expected)
    assert_biases_kept(mask)


def test_global_vs_layerwise_counts():
    # d = 0.3: global floor(6.6 + .5) = 7; layerwise floor(3.6 + .5) + floor(3.0 + .5) = 4 + 3
    # d = 0.25: global floor(5.5 + .5) = 6; layerwise floor(3.0 + .5) + floor(2.5 + .5) = 3 + 3
    # d = 0.125: global floor(2.75 + .5) = 3; layerwise floor(1.5 + .5) + floor(1.25 + .5) = 2 + 1
    scores = random_scores(seed=0)
    for d, global_n, (la, lb) in [(0.3, 7, (4, 3)), (0.25, 6, (3, 3)), (0.125, 3, (2, 1))]:
        g = M.topk(scores, d, scope="global")
        assert int(M.count(g)[0]) == global_n
        lw = M.topk(scores, d, scope="layerwise")
        assert int(np.sum(lw["a"]["kernel"])) == la and int(np.sum(lw["b"]["kernel"])) == lb


def test_global_scope_ranks_across_layers():
    # all of b's scores beat all of a's: a global 10/22 keeps exactly b, layerwise keeps half of each
    scores = tree_of(lambda name, s: np.full(s, 2.0 if name == "b/kernel" else 1.0, np.float32))
    g = M.topk(scores, 10 / 22)
    assert not np.asarray(g["a"]["kernel"]).any() and np.asarray(g["b"]["kernel"]).all()
    lw = M.topk(scores, 0.5, scope="layerwise")
    assert int(np.sum(lw["a"]["kernel"])) == 6 and int(np.sum(lw["b"]["kernel"])) == 5


def test_nan_scores_rank_last_and_tie_with_minus_inf_by_index():
    scores = {"w": {"kernel": np.array([[np.nan, 1.0, 2.0], [np.nan, 0.0, -np.inf]], np.float32)}}
    keep = lambda k: np.asarray(M.topk(scores, k / 6)["w"]["kernel"]).ravel()  # noqa: E731
    np.testing.assert_array_equal(keep(3), [0, 1, 1, 0, 1, 0])
    # the fourth slot goes to the first of the "−inf-like" entries (the NaN at index 0)
    np.testing.assert_array_equal(keep(4), [1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(keep(5), [1, 1, 1, 1, 1, 0])
    # NaN is never preferred to a finite score, however low
    low = {"w": {"kernel": np.array([[np.nan, -1e30]], np.float32)}}
    np.testing.assert_array_equal(np.asarray(M.topk(low, 0.5)["w"]["kernel"]), [[False, True]])


def test_topk_is_jit_safe_with_traced_scores():
    scores = random_scores(seed=5, low=0, high=3)
    eager = M.topk(scores, 0.4)
    jitted = jax.jit(lambda s: M.topk(s, 0.4))(scores)
    expected = np_keep_top(kernels_flat(scores), M.kept_count(0.4, N_PRUNABLE))
    np.testing.assert_array_equal(kernels_flat(jitted), expected)
    np.testing.assert_array_equal(kernels_flat(eager), expected)
    assert_biases_kept(jitted)
    # density/count also work on a traced mask
    dens = jax.jit(M.density)(jitted)
    assert float(dens) == pytest.approx(M.kept_count(0.4, N_PRUNABLE) / N_PRUNABLE)


def test_biases_are_never_pruned_even_when_zero_and_lowest_scored():
    scores = tree_of(
        lambda name, s: np.full(s, -1e9, np.float32) if "bias" in name else np.ones(s, np.float32)
    )
    params = tree_of(lambda name, s: np.zeros(s, np.float32) if "bias" in name else np.ones(s, np.float32))
    for scope in ("global", "layerwise"):
        assert_biases_kept(M.topk(scores, 0.1, scope=scope))
        assert_biases_kept(M.prune_to(0.1, scores, M.ones(params), scope=scope))
        assert_biases_kept(M.random_mask(jax.random.key(0), 0.1, params, scope=scope))
    # CompressedView keeps zero-valued biases active (the active set comes from the mask)
    view = M.CompressedView.from_mask(M.topk(scores, 0.1), params)
    assert view.size == M.kept_count(0.1, N_PRUNABLE) + 4 + 5


# ----------------------------------------------------------------------------------------------
# prune_to


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_prune_to_is_nested_and_exact_over_successive_levels(scope):
    params = tree_of(lambda _, s: np.ones(s, np.float32))
    current = M.ones(params)
    prev_flat = kernels_flat(current)
    for level in range(1, 9):
        d = 0.8**level
        scores = random_scores(seed=100 + level, low=0, high=5)  # fresh scores each level, with ties
        new = M.prune_to(d, scores, current, scope=scope)
        flat = kernels_flat(new)
        # nested: nothing comes back (checked by hand and by is_nested)
        assert not np.any(flat & ~prev_flat)
        assert bool(M.is_nested(new, current))
        # exact counts of ALL prunable weights and the right survivors (numpy reference)
        sflat = kernels_flat(scores)
        if scope == "global":
            assert int(flat.sum()) == M.kept_count(d, N_PRUNABLE)
            expected = np_keep_top(sflat, M.kept_count(d, N_PRUNABLE), allowed=prev_flat)
        else:
            assert int(flat[:12].sum()) == M.kept_count(d, 12)
            assert int(flat[12:].sum()) == M.kept_count(d, 10)
            expected = np.concatenate(
                [
                    np_keep_top(sflat[:12], M.kept_count(d, 12), allowed=prev_flat[:12]),
                    np_keep_top(sflat[12:], M.kept_count(d, 10), allowed=prev_flat[12:]),
                ]
            )
        np.testing.assert_array_equal(flat, expected)
        assert_biases_kept(new)
        current, prev_flat = new, flat


def test_prune_to_refuses_to_grow_the_mask():
    scores = random_scores(seed=1)
    current = M.topk(scores, 0.5)  # keeps 11 of 22
    with pytest.raises(ValueError, match=r"density=0\.6") as err:
        M.prune_to(0.6, scores, current)  # wants 13
    assert "keep 13" in str(err.value) and "only 11" in str(err.value)
    # same density is fine and returns the same mask
    same = M.prune_to(0.5, scores, current)
    np.testing.assert_array_equal(kernels_flat(same), kernels_flat(current))
    # layerwise: the leaf that is short is named
    half = M.topk(scores, 0.5, scope="layerwise")
    with pytest.raises(ValueError, match="a/kernel"):
        M.prune_to(0.7, scores, half, scope="layerwise")


def test_prune_to_with_traced_mask_under_jit_stays_nested():
    scores = random_scores(seed=2)
    current = M.topk(random_scores(seed=9), 0.5)
    new = jax.jit(lambda s, m: M.prune_to(0.3, s, m))(scores, current)
    flat, prev = kernels_flat(new), kernels_flat(current)
    assert not np.any(flat & ~prev)
    assert int(flat.sum()) == M.kept_count(0.3, N_PRUNABLE)
    np.testing.assert_array_equal(flat, np_keep_top(kernels_flat(scores), 7, allowed=prev))


# ----------------------------------------------------------------------------------------------
# random masks and accounting


@pytest.mark.parametrize("d", [0.05, 0.3, 0.5, 1.0])
def test_random_mask_exact_counts_and_keys(d):
    like = tree_of(lambda _, s: np.zeros(s, np.float32))
    m1 = M.random_mask(jax.random.key(1), d, like)
    assert int(kernels_flat(m1).sum()) == M.kept_count(d, N_PRUNABLE)
    assert_biases_kept(m1)
    again = M.random_mask(jax.random.key(1), d, like)
    np.testing.assert_array_equal(kernels_flat(again), kernels_flat(m1))
    lw = M.random_mask(jax.random.key(1), d, like, scope="layerwise")
    assert int(np.sum(lw["a"]["kernel"])) == M.kept_count(d, 12)
    assert int(np.sum(lw["b"]["kernel"])) == M.kept_count(d, 10)
    if d < 1.0:
        masks = {kernels_flat(M.random_mask(jax.random.key(s), d, like)).tobytes() for s in range(2, 8)}
        assert len(masks) > 1  # different keys give different masks


def test_random_mask_is_roughly_uniform():
    # each of the 22 positions should be kept about d of the time over many keys
    like = tree_of(lambda _, s: np.zeros(s, np.float32))
    keys = jax.random.split(jax.random.key(0), 400)
    many = jax.vmap(lambda k: kernels_vec(M.random_mask(k, 0.5, like)))(keys)
    freq = np.asarray(many).mean(axis=0)
    assert np.all(np.abs(freq - 11 / 22) < 0.12)


def kernels_vec(tree):
    return jnp.concatenate([jnp.ravel(tree["a"]["kernel"]), jnp.ravel(tree["b"]["kernel"])])


def test_density_sparsity_layer_density_hand_counts():
    a = np.zeros((3, 4), bool)
    a[0, :3] = a[2, 1] = a[2, 3] = True  # 5 of 12
    b = np.zeros((2, 5), bool)
    b[1, ::2] = True  # 3 of 10
    # a pruned bias must not count: density is over prunable weights only
    mask = {"a": {"bias": np.zeros(4, bool), "kernel": a}, "b": {"bias": np.ones(5, bool), "kernel": b}}
    kept, total = M.count(mask)
    assert int(kept) == 8 and total == 22
    assert float(M.density(mask)) == pytest.approx(8 / 22)
    assert float(M.sparsity(mask)) == pytest.approx(14 / 22)
    ld = M.layer_density(mask)
    assert set(ld) == {"a/kernel", "b/kernel"}
    assert float(ld["a/kernel"]) == pytest.approx(5 / 12) and float(ld["b/kernel"]) == pytest.approx(3 / 10)
    # a custom predicate that also counts biases
    everything = lambda path, leaf: True  # noqa: E731
    kept, total = M.count(mask, prunable=everything)
    assert int(kept) == 8 + 5 and total == 22 + 9


def test_count_without_prunable_leaves_raises():
    with pytest.raises(ValueError, match="prunable"):
        M.count({"bias": np.ones(3, bool)})


# ----------------------------------------------------------------------------------------------
# pack / unpack


@pytest.mark.parametrize("seed", [0, 1])
def test_pack_unpack_round_trip_size_not_divisible_by_8(seed):
    rng = np.random.default_rng(seed)
    mask = tree_of(lambda name, s: np.ones(s, bool) if "bias" in name else rng.random(s) < 0.5)
    packed = M.pack(mask)
    assert packed.dtype == jnp.uint8 and packed.shape == (math.ceil(22 / 8),)
    np.testing.assert_array_equal(np.asarray(packed), np.packbits(kernels_flat(mask).astype(np.uint8)))
    back = M.unpack(packed, mask)
    for layer in ("a", "b"):
        np.testing.assert_array_equal(np.asarray(back[layer]["kernel"]), mask[layer]["kernel"])
        assert back[layer]["kernel"].dtype == jnp.bool_
    assert_biases_kept(back)


def test_pack_single_leaf_of_13_bits():
    m = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1], bool)
    mask = {"w": {"kernel": m.reshape(1, 13)}}
    # hand packing, MSB first: 10110001 = 0xB1, 11001000 = 0xC8
    np.testing.assert_array_equal(np.asarray(M.pack(mask)), [0xB1, 0xC8])
    np.testing.assert_array_equal(np.asarray(M.unpack(M.pack(mask), mask)["w"]["kernel"]), m.reshape(1, 13))


# ----------------------------------------------------------------------------------------------
# CompressedView


def _view_case():
    params = tree_of(lambda _, s: np.arange(1, int(np.prod(s)) + 1, dtype=np.float32).reshape(s) / 10)
    params["a"]["bias"] = np.zeros(4, np.float32)  # active and exactly zero
    params["a"]["kernel"][0, 0] = 0.0  # an active kernel entry that is exactly zero
    mask = M.ones(params)
    ak = np.ones((3, 4), bool)
    ak[1, :] = False
    ak[2, 3] = False
    bk = np.zeros((2, 5), bool)
    bk[0, 1] = bk[1, 4] = True
    mask = {"a": {"bias": np.ones(4, bool), "kernel": ak}, "b": {"bias": np.ones(5, bool), "kernel": bk}}
    return params, mask


def _np_active(params, mask) -> np.ndarray:
    # tree order: a/bias, a/kernel, b/bias, b/kernel; row-major within a leaf
    order = [("a", "bias"), ("a", "kernel"), ("b", "bias"), ("b", "kernel")]
    return np.concatenate([np.asarray(params[l][k])[np.asarray(mask[l][k])] for l, k in order])


def test_compressed_view_round_trip_keeps_zero_active_values():
    params, mask = _view_case()
    view = M.CompressedView.from_mask(mask, params)
    # 7 active of a/kernel, 2 of b/kernel, plus 4 + 5 biases
    assert view.size == 7 + 2 + 4 + 5
    vec = view.flatten(params)
    np.testing.assert_array_equal(np.asarray(vec), _np_active(params, mask))
    assert int(np.sum(np.asarray(vec) == 0.0)) == 4 + 1  # zero biases and a[0, 0] keep their place
    back = view.scatter(vec)
    ref = jax.tree_util.tree_map(lambda p, m: np.where(m, p, 0.0), params, mask)
    for layer in ("a", "b"):
        for leaf in ("bias", "kernel"):
            got = np.asarray(back[layer][leaf])
            assert got.dtype == np.float32 and got.shape == SHAPES[layer][leaf]
            np.testing.assert_array_equal(got, ref[layer][leaf])
    # pruned entries come back as exact zeros even though the params there are not zero
    assert np.asarray(params["a"]["kernel"])[1, 0] != 0.0 and float(back["a"]["kernel"][1, 0]) == 0.0
    np.testing.assert_array_equal(np.asarray(M.apply(params, mask)["b"]["kernel"]), back["b"]["kernel"])
    # scatter then flatten of an arbitrary vector is the identity
    v = jnp.arange(view.size, dtype=jnp.float32) - 3.0
    np.testing.assert_array_equal(np.asarray(view.flatten(view.scatter(v))), np.asarray(v))


def test_compressed_view_under_jit_and_vmap():
    params, mask = _view_case()
    view = M.CompressedView.from_mask(mask, params)
    np.testing.assert_array_equal(np.asarray(jax.jit(view.flatten)(params)), _np_active(params, mask))
    rows = np.random.default_rng(0).standard_normal((3, view.size)).astype(np.float32)
    batched = jax.jit(jax.vmap(view.scatter))(jnp.asarray(rows))
    for i in range(3):
        single = view.scatter(jnp.asarray(rows[i]))
        for layer in ("a", "b"):
            for leaf in ("bias", "kernel"):
                assert batched[layer][leaf].shape == (3, *SHAPES[layer][leaf])
                np.testing.assert_array_equal(
                    np.asarray(batched[layer][leaf][i]), np.asarray(single[layer][leaf])
                )
        np.testing.assert_array_equal(
            _np_active(jax.tree_util.tree_map(operator.itemgetter(i), batched), mask), rows[i]
        )
    flat = jax.vmap(view.flatten)(batched)
    np.testing.assert_array_equal(np.asarray(flat), rows)


def test_compressed_view_rejects_wrong_vector_and_incongruent_params():
    params, mask = _view_case()
    view = M.CompressedView.from_mask(mask, params)
    with pytest.raises(ValueError, match="entries"):
        view.scatter(jnp.zeros(view.size + 1))
    bad = {"a": mask["a"], "b": {"bias": mask["b"]["bias"]}}
    with pytest.raises(ValueError, match="b/kernel"):
        M.CompressedView.from_mask(bad, params)


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, float("nan"), float("inf")])
def test_bad_density_raises_value_error_naming_density(bad):
    scores = random_scores(seed=0)
    with pytest.raises(ValueError, match="density"):
        M.check_density(bad)
    with pytest.raises(ValueError, match="density"):
        M.topk(scores, bad)
    with pytest.raises(ValueError, match="density"):
        M.prune_to(bad, scores, M.ones(scores))
    with pytest.raises(ValueError, match="density"):
        M.random_mask(jax.random.key(0), bad, scores)


@pytest.mark.parametrize("bad", [True, "0.5", None])
def test_non_numeric_density_raises_type_error(bad):
    with pytest.raises(TypeError, match="density"):
        M.topk(random_scores(seed=0), bad)


def test_bad_scope_raises():
    with pytest.raises(ValueError, match="scope"):
        M.topk(random_scores(seed=0), 0.5, scope="per_layer")


def test_incongruent_mask_names_the_leaf():
    params = tree_of(lambda _, s: np.zeros(s, np.float32))
    missing = {"a": M.ones(params)["a"], "b": {"bias": np.ones(5, bool)}}
    with pytest.raises(ValueError, match="'b/kernel'") as err:
        M.check_congruent(params, missing)
    assert "missing" in str(err.value)
    wrong_shape = M.ones(params)
    wrong_shape["a"]["kernel"] = np.ones((4, 3), bool)
    with pytest.raises(ValueError, match="'a/kernel'") as err:
        M.check_congruent(params, wrong_shape)
    assert "(4, 3)" in str(err.value) and "(3, 4)" in str(err.value)
    extra = M.ones(params)
    extra["c"] = {"kernel": np.ones((2, 2), bool)}
    with pytest.raises(ValueError, match="'c/kernel'"):
        M.check_congruent(params, extra)
    # the validated entry points report the same leaf
    with pytest.raises(ValueError, match="'a/kernel'"):
        M.prune_to(0.5, params, wrong_shape)
    with pytest.raises(ValueError, match="'b/kernel'"):
        M.topk(params, 0.5, within=missing)
