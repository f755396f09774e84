"""Iterative pruning (Algorithm 1), criteria, schedule, baselines and the GD trainer.

References are independent of the code under test: hand-computed scores, ``masks.kept_count`` counts
over the prunable weights, numpy sorts for permutations, and a fake trainer that records every call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from es_lottery import masks as M
from es_lottery import networks
from es_lottery.pruning import baselines as B
from es_lottery.pruning import criteria as C
from es_lottery.pruning import gd as G
from es_lottery.pruning import loop as L
from es_lottery.pruning.schedule import PruningSchedule

CNN_PRUNABLE = 11_240

# ----------------------------------------------------------------------------------------------
# helpers


class FakeTrainer:
    """Records every call. ``train`` returns θ₀ ⊙ m + noise(key) ⊙ m (biases of the result set to 0,
    so zero-valued biases have the LOWEST magnitude scores) and, optionally, a random positive std."""

    def __init__(self, module, provides_std=True, name="fake"):
        self.module = module
        self.provides_std = provides_std
        self.name = name
        self.init_calls = []
        self.train_calls = []

    def init_params(self, key):
        self.init_calls.append(key)
        return networks.init_params(key, self.module)

    def train(self, key, theta0, mask):
        self.train_calls.append({"key": key, "theta0": theta0, "mask": mask})
        # numpy, seeded by the key: nothing to compile, deterministic in the key
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
        flags = M.prunable_flags(theta0)
        final = jax.tree.map(
            lambda x, m, f: (
                np.where(m, np.asarray(x) + rng.standard_normal(x.shape), 0.0).astype(np.float32)
                if f
                else np.zeros(x.shape, np.float32)
            ),
            theta0,
            mask,
            flags,
        )
        std = jax.tree.map(lambda x: rng.uniform(0.1, 1.0, x.shape).astype(np.float32), theta0)
        kept, total = M.count(mask)
        return L.TrainResult(
            final, std if self.provides_std else None, {"n": len(self.train_calls)}, int(kept) / total
        )


def bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def prunable_leaves(tree):
    flags = jax.tree_util.tree_leaves(M.prunable_flags(tree))
    return [np.asarray(x) for x, f in zip(jax.tree_util.tree_leaves(tree), flags, strict=True) if f]


def bias_leaves(tree):
    flags = jax.tree_util.tree_leaves(M.prunable_flags(tree))
    return [np.asarray(x) for x, f in zip(jax.tree_util.tree_leaves(tree), flags, strict=True) if not f]


# one small MLP for the fake-trainer tests: shared shapes → JAX compiles the eager ops once
MLP = networks.make_network("mlp", sizes=[6, 10, 3], weight_init="kaiming_normal")
MLP_PRUNABLE = 6 * 10 + 10 * 3


@pytest.fixture(scope="module")
def cnn():
    return networks.make_network("paper_cnn")


@pytest.fixture(scope="module")
def cnn_run(cnn):
    """11 levels (density 0.8^0 … 0.8^10) of magnitude IMP on the paper CNN with random final params."""
    trainer = FakeTrainer(cnn)
    res = L.run(jax.random.key(3), trainer, L.IMPConfig(num_levels=11, criterion="magnitude"))
    return trainer, res


# ----------------------------------------------------------------------------------------------
# schedule and validation


def test_schedule_densities_and_exact_counts():
    s = PruningSchedule(prune_rate=0.2, num_levels=21)
    assert s.density(0) == 1.0
    for k in range(21):
        assert s.density(k) == pytest.approx(0.8**k, rel=1e-12)
    assert s.density(20) == pytest.approx(0.01153, abs=1e-5)
    cnn = networks.make_network("paper_cnn")
    tmpl = jax.eval_shape(lambda: networks.init_params(jax.random.key(0), cnn))  # shapes suffice
    assert [s.kept(k, tmpl) for k in range(21)] == [M.kept_count(0.8**k, CNN_PRUNABLE) for k in range(21)]
    lw = PruningSchedule(0.2, 5, scope="layerwise").kept_per_layer(3, tmpl)
    sizes = {"conv_0/kernel": 200, "conv_1/kernel": 3200, "dense_0/kernel": 7840}
    assert lw == {k: M.kept_count(0.8**3, n) for k, n in sizes.items()}
    with pytest.raises(ValueError, match="level"):
        s.density(21)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, 0.0, 1.0, float("nan"), True, "0.2"])
def test_bad_prune_rate_names_the_field(bad):
    with pytest.raises(ValueError, match="prune_rate"):
        PruningSchedule(prune_rate=bad)
    with pytest.raises(ValueError, match="prune_rate"):
        L.IMPConfig(prune_rate=bad)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"criterion": "weight_norm"}, "criterion"),
        ({"criterion": None}, "criterion"),
        ({"scope": "per_layer"}, "scope"),
        ({"num_levels": 0}, "num_levels"),
        ({"num_levels": 2.5}, "num_levels"),
        ({"check_pruned_zero": "yes"}, "check_pruned_zero"),
    ],
)
def test_bad_imp_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        L.IMPConfig(**kw)


def test_unknown_criterion_lists_allowed():
    with pytest.raises(ValueError, match="criterion") as e:
        C.get_criterion("l1")
    for name in ("magnitude", "snr", "random", "movement", "smallest_initial"):
        assert name in str(e.value)


def test_too_many_levels_raise():
    trainer = FakeTrainer(MLP)  # 90 prunable weights: 0.8^59 · 90 < 1/2
    with pytest.raises(ValueError, match="num_levels"):
        L.run(jax.random.key(0), trainer, L.IMPConfig(num_levels=60))
    assert trainer.train_calls == []


# ----------------------------------------------------------------------------------------------
# criteria against hand values


def test_criteria_hand_values():
    f = {"d": {"kernel": jnp.array([[1.0, -2.0], [0.5, -0.1]]), "bias": jnp.array([0.0, 3.0])}}
    i = {"d": {"kernel": jnp.array([[-0.5, -1.0], [1.0, 0.3]]), "bias": jnp.array([0.0, 1.0])}}
    s = {"d": {"kernel": jnp.array([[2.0, 0.5], [0.25, 0.1]]), "bias": jnp.array([1.0, 1.0])}}

    def k(tree):
        return np.asarray(tree["d"]["kernel"])

    np.testing.assert_allclose(k(C.magnitude(f)), [[1.0, 2.0], [0.5, 0.1]])
    np.testing.assert_allclose(k(C.snr(f, std_params=s)), [[0.5, 4.0], [2.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(
        k(C.snr_sep_cma_compat(f, std_params=s)), [[0.25, 8.0], [8.0, 10.0]], rtol=1e-6
    )
    np.testing.assert_allclose(k(C.movement(f, init_params=i)), [[1.5, 1.0], [0.5, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(
        k(C.magnitude_increase(f, init_params=i)), [[0.5, 1.0], [-0.5, -0.2]], rtol=1e-6
    )
    np.testing.assert_allclose(k(C.smallest_initial(f, init_params=i)), [[-0.5, -1.0], [-1.0, -0.3]])
    r1 = k(C.random(f, key=jax.random.key(0)))
    r2 = k(C.random(f, key=jax.random.key(0)))
    assert np.array_equal(r1, r2) and np.all((r1 >= 0) & (r1 < 1)) and len(np.unique(r1)) == 4
    # smallest_initial keeps the smallest |θ₀|: density 0.5 of 4 → the 0.3 and 0.5 entries
    m = M.prune_to(0.5, C.smallest_initial(f, init_params=i), M.ones(f))
    assert np.array_equal(k(m), [[True, False], [False, True]])
    # registry wrapper and missing inputs
    assert np.array_equal(k(C.CRITERIA["movement"](f, init_params=i)), k(C.movement(f, init_params=i)))
    with pytest.raises(ValueError, match="init_params"):
        C.movement(f)
    with pytest.raises(ValueError, match="key"):
        C.random(f)


def test_snr_ranks_by_sigma_where_magnitude_disagrees():
    """|μ| = [1, .5, .2, 3], σ = [10, .1, .1, 100] → |μ|/σ = [.1, 5, 2, .03]: magnitude keeps {1, 3},
    SNR keeps {.5, .2} — through the loop with a trainer that reports these μ and σ."""
    mlp = networks.make_network("mlp", sizes=[2, 2], weight_init="kaiming_normal")
    mu = {"dense_0": {"kernel": jnp.array([[1.0, 0.5], [0.2, -3.0]]), "bias": jnp.zeros(2)}}
    sigma = {"dense_0": {"kernel": jnp.array([[10.0, 0.1], [0.1, 100.0]]), "bias": jnp.ones(2)}}

    class Fixed:
        provides_std = True

        def init_params(self, key):
            return networks.init_params(key, mlp)

        def train(self, key, theta0, mask):
            return L.TrainResult(M.apply(mu, mask), sigma, {}, 0.0)

    got = {}
    for crit in ("magnitude", "snr"):
        res = L.run(jax.random.key(0), Fixed(), L.IMPConfig(num_levels=2, prune_rate=0.5, criterion=crit))
        got[crit] = np.asarray(res.records[1].mask["dense_0"]["kernel"])
        assert np.all(np.asarray(res.records[1].mask["dense_0"]["bias"]))
    assert np.array_equal(got["magnitude"], [[True, False], [False, True]])
    assert np.array_equal(got["snr"], [[False, True], [True, False]])


def test_sep_cma_compat_ranks_like_original_mu_over_c():
    rng = np.random.default_rng(0)
    shapes = {"a": (6, 7), "b": (7, 3)}
    mu = {n: {"kernel": jnp.asarray(rng.standard_normal(s), jnp.float32)} for n, s in shapes.items()}
    c = {n: {"kernel": jnp.asarray(rng.uniform(0.05, 3.0, s), jnp.float32)} for n, s in shapes.items()}
    sigma = 0.3  # scalar Sep-CMA step size; per-weight std = σ·sqrt(C)
    std = jax.tree_util.tree_map(lambda x: sigma * jnp.sqrt(x), c)
    original = jax.tree_util.tree_map(lambda m, cc: jnp.abs(m) / cc, mu, c)
    for d in (0.7, 0.4, 0.1):
        want = M.prune_to(d, original, M.ones(mu))
        have = M.prune_to(d, C.snr_sep_cma_compat(mu, std_params=std), M.ones(mu))
        assert all(
            np.array_equal(a, b) for a, b in zip(prunable_leaves(want), prunable_leaves(have), strict=True)
        )
    # and it is a different criterion from snr (|μ|/σ_i) on this example
    snr_mask = M.prune_to(0.4, C.snr(mu, std_params=std), M.ones(mu))
    compat_mask = M.prune_to(0.4, C.snr_sep_cma_compat(mu, std_params=std), M.ones(mu))
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(prunable_leaves(snr_mask), prunable_leaves(compat_mask), strict=True)
    )


def test_snr_without_sigma_is_rejected_for_gd_before_training():
    mlp = MLP
    trainer = FakeTrainer(mlp, provides_std=False, name="gd")
    with pytest.raises(ValueError, match=r"'snr'.*GD|GD.*'snr'"):
        L.run(jax.random.key(0), trainer, L.IMPConfig(num_levels=3, criterion="snr"))
    assert trainer.train_calls == []
    # a trainer that does not declare provides_std but returns no std fails at the first pruning step
    trainer = FakeTrainer(mlp, provides_std=False)
    trainer.provides_std = None
    with pytest.raises(ValueError, match="std_params"):
        L.run(jax.random.key(0), trainer, L.IMPConfig(num_levels=3, criterion="snr_sep_cma_compat"))
    with pytest.raises(ValueError, match="snr"):
        C.compute_scores("snr", {"k": jnp.ones((2, 2))}, std_params=None, trainer_name="GDTrainer")


# ----------------------------------------------------------------------------------------------
# the loop on the paper CNN


def test_exact_densities_nested_and_biases_kept(cnn_run):
    trainer, res = cnn_run
    assert res.levels == list(range(11))
    prev = None
    for k, rec in enumerate(res.records):
        kept, total = M.count(rec.mask)
        assert total == CNN_PRUNABLE == rec.total
        assert int(kept) == rec.kept == M.kept_count(0.8**k, CNN_PRUNABLE)
        assert rec.density == pytest.approx(0.8**k)
        # biases: zero-valued (lecun init) AND zero in the final params (lowest scores) — never pruned
        assert all(np.all(b) for b in bias_leaves(rec.mask))
        assert all(np.all(b == 0) for b in bias_leaves(rec.final_params))
        if prev is not None:
            assert bool(M.is_nested(rec.mask, prev))
        prev = rec.mask
        # the trainer trained exactly this mask
        got = trainer.train_calls[k]["mask"]
        assert all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(rec.mask), strict=True)
        )
    assert res.records[-1].next_mask is None
    assert int(M.count(res.records[-2].next_mask)[0]) == M.kept_count(0.8**10, CNN_PRUNABLE)


def test_pruning_keeps_the_top_scored_survivors(cnn_run):
    """Level k+1's mask = the kept_count(0.8^(k+1)) largest |θ_f| among level k's survivors (numpy)."""
    _, res = cnn_run
    for k in (0, 4, 9):
        rec = res.records[k]
        f = np.concatenate([np.ravel(x) for x in prunable_leaves(rec.final_params)])
        m = np.concatenate([np.ravel(x) for x in prunable_leaves(rec.mask)])
        s = np.where(m, np.abs(f), -np.inf)
        n_keep = M.kept_count(0.8 ** (k + 1), CNN_PRUNABLE)
        want = np.zeros(s.size, bool)
        want[np.argsort(-s, kind="stable")[:n_keep]] = True
        got = np.concatenate([np.ravel(x) for x in prunable_leaves(res.records[k + 1].mask)])
        assert np.array_equal(got, want)


def test_rewind_restores_theta0_bitwise_and_fresh_keys(cnn_run):
    trainer, res = cnn_run
    assert len(trainer.init_calls) == 1  # θ₀ drawn once
    k_init, _ = L.split_run_key(jax.random.key(3))
    theta0 = networks.init_params(k_init, trainer.module)
    assert all(
        np.array_equal(bits(a), bits(b))
        for a, b in zip(jax.tree.leaves(theta0), jax.tree.leaves(res.theta0), strict=True)
    )
    keys = []
    for k, call in enumerate(trainer.train_calls):
        mask = res.records[k].mask
        for t, m, x in zip(
            jax.tree.leaves(call["theta0"]), jax.tree.leaves(mask), jax.tree.leaves(theta0), strict=True
        ):
            t, m, x = np.asarray(t), np.asarray(m), np.asarray(x)
            assert np.array_equal(bits(t[m]), bits(x[m]))  # surviving: θ₀ exactly
            assert np.all(bits(t[~m]) == 0)  # pruned: +0.0 exactly
        if k > 0:  # rewound, not continued from the previous level's result
            prev_final = jax.tree.leaves(res.records[k - 1].final_params)[1]
            assert not np.array_equal(np.asarray(jax.tree.leaves(call["theta0"])[1]), np.asarray(prev_final))
        kd = np.asarray(jax.random.key_data(call["key"]))
        assert np.array_equal(kd, np.asarray(jax.random.key_data(L.level_keys(jax.random.key(3), k)[0])))
        keys.append(kd.tobytes())
    assert len(set(keys)) == len(keys)  # a fresh key every level


def test_resume_from_start_level_reproduces_later_levels():
    mlp = MLP
    cfg = L.IMPConfig(num_levels=6, criterion="random")  # random scores: the score keys must match too
    key = jax.random.key(11)
    full = L.run(key, FakeTrainer(mlp), cfg)
    saved = []
    first = L.run(key, FakeTrainer(mlp), cfg, end_level=3, callback=saved.append)
    assert first.levels == [0, 1, 2] and [r.level for r in saved] == [0, 1, 2]
    resumed = L.run(
        key, FakeTrainer(mlp), cfg, theta0=first.theta0, start_level=3, start_mask=saved[-1].next_mask
    )
    assert resumed.levels == [3, 4, 5]
    for a, b in zip(full.records[3:], resumed.records, strict=True):
        assert a.eval_score == b.eval_score
        for x, y in zip(
            jax.tree.leaves((a.mask, a.final_params)), jax.tree.leaves((b.mask, b.final_params)), strict=True
        ):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    # θ₀ redrawn from the key gives the same result
    again = L.run(key, FakeTrainer(mlp), cfg, start_level=3, start_mask=saved[-1].next_mask)
    assert np.array_equal(
        np.asarray(again.records[-1].mask["dense_0"]["kernel"]),
        np.asarray(resumed.records[-1].mask["dense_0"]["kernel"]),
    )
    # a wrong start mask (level 2's) or none at all is rejected
    with pytest.raises(ValueError, match="start_mask"):
        L.run(key, FakeTrainer(mlp), cfg, start_level=3, start_mask=saved[-1].mask)
    with pytest.raises(ValueError, match="start_mask"):
        L.run(key, FakeTrainer(mlp), cfg, start_level=3)
    with pytest.raises(ValueError, match="start_level"):
        L.run(key, FakeTrainer(mlp), cfg, start_level=6, start_mask=saved[-1].next_mask)


def test_layerwise_scope_counts_per_layer():
    res = L.run(jax.random.key(1), FakeTrainer(MLP), L.IMPConfig(num_levels=5, scope="layerwise"))
    for k, rec in enumerate(res.records):
        assert int(np.sum(rec.mask["dense_0"]["kernel"])) == M.kept_count(0.8**k, 60)
        assert int(np.sum(rec.mask["dense_1"]["kernel"])) == M.kept_count(0.8**k, 30)
        assert all(np.all(b) for b in bias_leaves(rec.mask))
    # resuming a layerwise run checks the per-layer counts of the start mask
    good = res.records[3].mask
    again = L.run(
        jax.random.key(1), FakeTrainer(MLP), res.config, theta0=res.theta0, start_level=3, start_mask=good
    )
    assert np.array_equal(
        again.records[-1].mask["dense_0"]["kernel"], res.records[-1].mask["dense_0"]["kernel"]
    )
    k0, k1 = np.asarray(good["dense_0"]["kernel"]).copy(), np.asarray(good["dense_1"]["kernel"]).copy()
    i0, i1 = np.argwhere(~k0)[0], np.argwhere(k1)[0]
    k0[tuple(i0)], k1[tuple(i1)] = True, False  # same total, wrong split between layers
    bad = {"dense_0": {**good["dense_0"], "kernel": k0}, "dense_1": {**good["dense_1"], "kernel": k1}}
    with pytest.raises(ValueError, match="dense_0/kernel"):
        L.run(
            jax.random.key(1), FakeTrainer(MLP), res.config, theta0=res.theta0, start_level=3, start_mask=bad
        )


def test_trainer_that_revives_pruned_weights_is_caught():
    mlp = MLP

    class Leaky(FakeTrainer):
        def train(self, key, theta0, mask):
            r = super().train(key, theta0, mask)
            return r.replace(final_params=jax.tree.map(lambda x: x + 1.0, r.final_params))

    with pytest.raises(ValueError, match="pruned"):
        L.run(jax.random.key(0), Leaky(mlp), L.IMPConfig(num_levels=3))


# ----------------------------------------------------------------------------------------------
# baselines


@pytest.fixture(scope="module")
def ticket(cnn):
    theta0 = networks.init_params(jax.random.key(5), cnn)
    # a non-uniform IMP-like mask: scores favour the dense layer, so per-layer densities differ
    rng = np.random.default_rng(0)
    scores = jax.tree.map(lambda x: jnp.asarray(rng.uniform(size=x.shape), jnp.float32), theta0)
    scores["dense_0"]["kernel"] = scores["dense_0"]["kernel"] + 0.2  # ≈ 36 % dense vs 16 % conv kept
    mask = M.topk(scores, 0.3)
    return theta0, mask


def _layer_counts(mask):
    return [int(np.sum(m)) for m in prunable_leaves(mask)]


def test_permute_weights_keeps_mask_and_permutes_surviving_values(ticket):
    theta0, mask = ticket
    new, new_mask = B.permute_weights(jax.random.key(1), theta0, mask)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_mask), jax.tree.leaves(mask), strict=True)
    )
    moved = 0
    for t, n, m in zip(prunable_leaves(theta0), prunable_leaves(new), prunable_leaves(mask), strict=True):
        assert np.array_equal(np.sort(n[m]), np.sort(t[m]))  # a permutation of the surviving θ₀ values
        assert np.all(n[~m] == 0)
        moved += int(np.sum(n[m] != t[m]))
    assert moved > 0.9 * sum(_layer_counts(mask))
    for a, b in zip(bias_leaves(new), bias_leaves(theta0), strict=True):
        assert np.array_equal(a, b)


def test_permutations_are_jit_safe():
    theta0 = networks.init_params(jax.random.key(0), MLP)
    mask = M.random_mask(jax.random.key(1), 0.4, theta0)
    eager = B.permute_weights(jax.random.key(2), theta0, mask)
    jitted = jax.jit(B.permute_weights)(jax.random.key(2), theta0, mask)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True)
    )


def test_permute_mask_and_weights_keeps_layer_counts(ticket):
    theta0, mask = ticket
    new, new_mask = B.permute_mask_and_weights(jax.random.key(2), theta0, mask)
    assert _layer_counts(new_mask) == _layer_counts(mask)
    for t, n, m, nm in zip(
        prunable_leaves(theta0),
        prunable_leaves(new),
        prunable_leaves(mask),
        prunable_leaves(new_mask),
        strict=True,
    ):
        assert not np.array_equal(m, nm)  # positions moved
        assert np.array_equal(np.sort(n[nm]), np.sort(t[m]))  # the surviving values came along
        assert np.all(n[~nm] == 0)
    assert all(np.all(b) for b in bias_leaves(new_mask))
    for a, b in zip(bias_leaves(new), bias_leaves(theta0), strict=True):
        assert np.array_equal(a, b)


def test_reinit_baselines(cnn, ticket):
    theta0, mask = ticket

    def init_fn(k):
        return networks.init_params(k, cnn)

    _, new_mask = B.random_reinit(jax.random.key(3), theta0, mask, init_fn)
    assert int(M.count(new_mask)[0]) == int(M.count(mask)[0])
    assert _layer_counts(new_mask) != _layer_counts(mask)  # global random mask: IMP's layer ratios lost
    assert all(np.all(b) for b in bias_leaves(new_mask))
    new2, mask2 = B.mask_reinit(jax.random.key(4), theta0, mask, init_fn)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(mask2), jax.tree.leaves(mask), strict=True)
    )
    for t, n, m in zip(prunable_leaves(theta0), prunable_leaves(new2), prunable_leaves(mask), strict=True):
        assert not np.array_equal(n[m], t[m]) and np.all(n[~m] == 0)
    with pytest.raises(ValueError, match="init_fn"):
        B.mask_reinit(jax.random.key(4), theta0, mask)
    with pytest.raises(ValueError, match="baseline"):
        B.get_baseline("shuffle")


def test_run_baseline_over_imp_levels():
    mlp = MLP
    imp = L.run(jax.random.key(0), FakeTrainer(mlp), L.IMPConfig(num_levels=4))
    trainer = FakeTrainer(mlp)
    recs = B.run_baseline(
        jax.random.key(9), trainer, "permute_mask_and_weights", imp.theta0, imp, levels=[1, 3]
    )
    assert [r.level for r in recs] == [1, 3] and len(trainer.train_calls) == 2
    for r in recs:
        assert r.kept == imp.records[r.level].kept
        assert _layer_counts(r.mask) == _layer_counts(imp.records[r.level].mask)
    recs = B.run_baseline(jax.random.key(9), FakeTrainer(mlp), "random_reinit", imp.theta0, imp)
    assert [r.kept for r in recs] == [r.kept for r in imp.records]


# ----------------------------------------------------------------------------------------------
# GD trainer


@pytest.fixture(scope="module")
def digits_trainer():
    from es_lottery.tasks.classification import digits

    mlp = networks.make_network("mlp", sizes=[64, 32, 10], weight_init="lecun_normal")
    return G.GDTrainer.from_dataset(mlp, digits(), G.GDConfig(epochs=40))


def test_gd_learns_digits(digits_trainer):
    t = digits_trainer
    theta0 = t.init_params(jax.random.key(0))
    res = t.train(jax.random.key(1), theta0, M.ones(theta0))
    assert res.std_params is None
    assert res.eval_score > 0.8
    loss = np.asarray(res.metrics["train_loss"])
    assert loss.shape == (40,) and loss[-1] < 0.5 * loss[0]


def test_gd_keeps_pruned_weights_exactly_zero(digits_trainer):
    t = digits_trainer
    theta0 = t.init_params(jax.random.key(0))
    mask = M.random_mask(jax.random.key(2), 0.3, theta0)
    res = t.train(jax.random.key(1), theta0, mask)  # θ₀ given UNmasked: the trainer masks it
    changed = 0
    for f, x, m in zip(
        jax.tree.leaves(res.final_params), jax.tree.leaves(theta0), jax.tree.leaves(mask), strict=True
    ):
        f, x, m = np.asarray(f), np.asarray(x), np.asarray(m)
        assert np.all(bits(f[~m]) == 0)
        changed += int(np.sum(f[m] != x[m]))
    assert changed > 0.9 * sum(int(np.sum(m)) for m in jax.tree.leaves(mask))
    assert res.eval_score > 0.5


def test_gd_imp_end_to_end(digits_trainer):
    t = digits_trainer
    cfg = L.IMPConfig(num_levels=3, prune_rate=0.5, criterion="movement")
    res = L.run(jax.random.key(0), t, cfg)
    assert [r.kept for r in res.records] == [M.kept_count(0.5**k, 64 * 32 + 32 * 10) for k in range(3)]
    assert all(0.0 <= s <= 1.0 for s in res.eval_scores) and res.eval_scores[0] > 0.8
    with pytest.raises(ValueError, match="GD"):
        L.run(jax.random.key(0), t, cfg.replace(criterion="snr"))


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_gd_config_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        G.GDConfig(**kw)


def test_gd_trainer_rejects_bad_data():
    mlp = networks.make_network("mlp", sizes=[4, 3])
    x, y = np.zeros((5, 4), np.float32), np.zeros(5, np.int32)
    with pytest.raises(ValueError, match="x_train"):
        G.GDTrainer(mlp, np.zeros((5, 3)), y, x, y)
    with pytest.raises(ValueError, match="y_test"):
        G.GDTrainer(mlp, x, y, x, np.full(5, 3))
    assert isinstance(G.GDTrainer(mlp, x, y, x, y), L.Trainer)
