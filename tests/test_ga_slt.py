"""The strong-lottery-ticket GA (Altmann et al.; REFERENCE §1) against independent references.

References used here: hand-worked values (survivor order, bound sequence, termination generations,
``has_path`` on hand-made masks), plain Python loops (sorting, pairwise Hamming distance, path search),
a per-genome evaluation with ``networks.apply`` on explicitly masked weights (never the population
kernels under test), and a re-derivation of one generation from the documented key splits of ``step``.

Everything runs on tiny moons data (2000 / 500 points) with small populations; compiled functions are
shared through module-scoped fixtures (compilation dominates the run time on CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from es_lottery import networks
from es_lottery.networks import MLP, PaperCNN
from es_lottery.search import ga_slt as ga
from es_lottery.tasks.classification import moons

ARCH = (2, 20, 2)  # the paper's moons "A": 80 mask bits
CFG = ga.GAConfig(pop_size=12, min_generations=6, patience=3, max_generations=40)
# operator property test: no migrants, a small mating pool (top 2), many children and mutants
CFG_OPS = ga.GAConfig(pop_size=12, rec_rate=0.5, par_rate=0.2, mut_rate=0.3, mig_rate=0.0)
CFG_AB_INIT = ga.GAConfig(pop_size=12, variant="adaptive_ab", bound_start=0.8, bound_patience=48)
CFG_AB_CHANCE = ga.GAConfig(
    pop_size=8, variant="adaptive_ab", min_generations=5, patience=3, bound_patience=16
)
RUN_SEEDS = (0, 1, 2)


# ----------------------------------------------------------------------------------------------
# independent references


def kernel_shapes(sizes):
    return [(int(sizes[i]), int(sizes[i + 1])) for i in range(len(sizes) - 1)]


def genome_kernels(sizes, genome):
    """Split a flat genome into the row-major (in, out) kernel masks dense_0, dense_1, …"""
    genome = np.asarray(genome, bool)
    out, offset = [], 0
    for a, b in kernel_shapes(sizes):
        out.append(genome[offset : offset + a * b].reshape(a, b))
        offset += a * b
    assert offset == genome.size
    return out


def ref_has_path(sizes, genome) -> bool:
    """Plain loop: is some output unit reachable from some input unit through kept weights?"""
    reach = [True] * int(sizes[0])
    for k in genome_kernels(sizes, genome):
        reach = [any(reach[i] and bool(k[i, j]) for i in range(k.shape[0])) for j in range(k.shape[1])]
    return any(reach)


@functools.cache
def _apply_jit(module):
    return jax.jit(lambda p, x: networks.apply(module, p, x))


def ref_counts(module, params, genomes, x, y) -> np.ndarray:
    """Number of correct argmax predictions of each genome, one ``networks.apply`` per genome."""
    f = _apply_jit(module)
    y = np.asarray(y)
    out = []
    for g in np.asarray(genomes):
        masked = {}
        for i, k in enumerate(genome_kernels(module.sizes, g)):
            layer = params[f"dense_{i}"]
            masked[f"dense_{i}"] = {
                "kernel": np.where(k, np.asarray(layer["kernel"]), np.float32(0.0)),
                "bias": np.asarray(layer["bias"]),
            }
        logits = np.asarray(f(masked, x))
        out.append(int(np.sum(np.argmax(logits, axis=1) == y)))
    return np.asarray(out)


def ref_sort(fit, zeros):
    """Plain ``sorted``: fitness desc (NaN lowest), zero bits desc, index asc."""
    key = [(-np.inf if np.isnan(f) else f) for f in fit]
    return sorted(range(len(fit)), key=lambda i: (-key[i], -int(zeros[i]), i))


def ref_stop_generation(improvements, config, horizon=5000):
    """Generation at which ``run`` stops for a best-fitness history that changes at ``improvements``."""
    last = 0
    for g in range(horizon):
        if g in improvements:
            last = g
        if bool(ga.should_stop(g, last, config)):
            return g
    raise AssertionError("never stopped")


def ref_step(key, state, task, config):
    """One generation re-derived from the documented key splits of ``step`` (plain numpy + sort).

    Returns (genomes, correct counts, zeros, number of evaluated new members) of the survivors.
    """
    g_old = np.asarray(state.genomes)
    n, length = g_old.shape
    n_train = task.data["x_train"].shape[0]
    k_par, k_mate, k_cross, k_mut, k_pos, k_mig = jax.random.split(key, 6)
    is_parent = np.asarray(jax.random.bernoulli(k_par, config.rec_rate, (n,)))
    mates = np.asarray(jax.random.randint(k_mate, (n,), 0, config.n_mates))
    assert mates.max() < config.n_mates
    take_first = np.asarray(jax.random.bernoulli(k_cross, 0.5, (n, length)))
    children = np.where(take_first, g_old, g_old[mates])
    enlarged = np.concatenate([g_old, children])
    spawn = np.concatenate([np.ones(n, bool), is_parent]) & np.asarray(
        jax.random.bernoulli(k_mut, config.mut_rate, (2 * n,))
    )
    pos = np.asarray(jax.random.randint(k_pos, (2 * n,), 0, length))
    mutants = enlarged.copy()
    mutants[np.arange(2 * n), pos] ^= True
    migrants = np.asarray(jax.random.bernoulli(k_mig, 0.5, (config.n_migrants, length)))

    # pool order: survivors, children, mutants (of survivors, then of children), migrants
    pool = [(g_old[i], round(float(state.fit[i]) * n_train), i) for i in range(n)]
    new = [(children[i], n + i) for i in range(n) if is_parent[i]]
    new += [(mutants[j], 2 * n + j) for j in range(2 * n) if spawn[j]]
    new += [(migrants[j], 4 * n + j) for j in range(config.n_migrants)]
    counts = ref_counts(
        task.module, state.params, [g for g, _ in new], task.data["x_train"], task.data["y_train"]
    )
    pool += [(g, int(c), idx) for (g, idx), c in zip(new, counts, strict=True)]
    pool.sort(key=lambda t: (-t[1], -int(np.sum(~t[0])), t[2]))
    keep = pool[:n]
    genomes = np.stack([t[0] for t in keep])
    return genomes, np.array([t[1] for t in keep]), np.sum(~genomes, axis=1), len(new)


def tree_equal(a, b) -> bool:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(
        np.array_equal(
            np.asarray(x), np.asarray(y), equal_nan=np.issubdtype(np.asarray(x).dtype, np.floating)
        )
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def valid_rows(history, generation):
    return {k: np.asarray(v)[: int(generation)] for k, v in history.items()}


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def data():
    return moons(n_train=2000, n_test=500)


@pytest.fixture(scope="module")
def task(data):
    return ga.make_task(MLP(ARCH), data.x_train, data.y_train, data.x_test, data.y_test)


@pytest.fixture(scope="module")
def runs(task):
    """Separate ``run`` calls for a few seeds: seed → (final state, history)."""
    return {s: jax.block_until_ready(ga.run(jax.random.key(s), task, CFG)) for s in RUN_SEEDS}


@pytest.fixture(scope="module")
def chance_task():
    """All inputs zero, balanced labels: every mask predicts one class everywhere → accuracy 0.5."""
    n_tr, n_te = 400, 100
    return ga.make_task(
        MLP((2, 1, 2)),
        np.zeros((n_tr, 2), np.float32),
        np.arange(n_tr) % 2,
        np.zeros((n_te, 2), np.float32),
        np.arange(n_te) % 2,
    )


@pytest.fixture(scope="module")
def chance_run(chance_task):
    return jax.block_until_ready(ga.run(jax.random.key(3), chance_task, CFG_AB_CHANCE))


# ----------------------------------------------------------------------------------------------
# survivor selection


def test_select_survivors_hand_worked():
    nan = np.nan
    fit = jnp.array([0.5, 0.7, nan, 0.7, 0.5, 0.7, 0.2, nan], jnp.float32)
    zeros = jnp.array([3, 2, 9, 4, 3, 2, 0, 1], jnp.int32)
    # 0.7: idx 3 (4 zeros), then 1 and 5 (2 zeros, index asc); 0.5: 0, 4; 0.2: 6; NaN last: 2 (9 zeros), 7
    expected = [3, 1, 5, 0, 4, 6, 2, 7]
    assert np.asarray(ga.select_survivors(fit, zeros, 8)).tolist() == expected
    assert np.asarray(ga.select_survivors(fit, zeros, 4)).tolist() == expected[:4]
    assert np.asarray(jax.jit(ga.select_survivors, static_argnums=2)(fit, zeros, 6)).tolist() == expected[:6]


def test_select_survivors_matches_plain_sort_with_many_ties():
    rng = np.random.default_rng(0)
    fit = rng.choice([0.25, 0.5, 0.75, np.nan, -np.inf], size=40).astype(np.float32)
    zeros = rng.integers(0, 4, size=40)
    got = np.asarray(ga.select_survivors(jnp.asarray(fit), jnp.asarray(zeros, jnp.int32), 25))
    assert got.tolist() == ref_sort(fit, zeros)[:25]


# ----------------------------------------------------------------------------------------------
# operators


def test_flip_one_flips_exactly_one_bit():
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.random((64, 30)) < 0.5)
    hit_positions = set()
    for s in range(8):
        out = np.asarray(ga._flip_one(jax.random.key(s), g))
        diff = out ^ np.asarray(g)
        assert diff.sum(axis=1).tolist() == [1] * 64
        hit_positions |= set(np.argmax(diff, axis=1).tolist())
    assert hit_positions == set(range(30))  # every position can be hit


def test_crossover_takes_every_bit_from_a_parent():
    rng = np.random.default_rng(2)
    a = rng.random((50, 40)) < 0.5
    b = rng.random((50, 40)) < 0.5
    child = np.asarray(ga._crossover(jax.random.key(0), jnp.asarray(a), jnp.asarray(b)))
    assert np.all((child == a) | (child == b))
    # complementary parents: the child's bits show which parent each came from — about half each
    child = np.asarray(ga._crossover(jax.random.key(1), jnp.asarray(a), jnp.asarray(~a)))
    from_a = np.mean(child == a)
    assert 0.4 < from_a < 0.6
    assert np.all((child == a) | (child == ~a))


def test_step_population_is_survivors_mutants_and_children_of_top_mates(task):
    """mig_rate = 0: every new member is within one bit of a crossover of an old member and a top mate."""
    n_mates = CFG_OPS.n_mates
    assert n_mates == 2
    state = ga.init(jax.random.key(10), task, CFG_OPS)
    novel = 0
    for g in range(5):
        old = np.asarray(state.genomes)
        state, _ = ga.step(jax.random.key(100 + g), state, task, CFG_OPS)
        for new in np.asarray(state.genomes):
            if any(np.array_equal(new, o) for o in old):
                continue
            novel += 1
            # bits where the new genome differs from both old[i] and a top mate old[j]
            off = (new[None, None, :] != old[:, None, :]) & (new[None, None, :] != old[None, :n_mates, :])
            assert off.sum(axis=-1).min() <= 1, "a member that is no survivor, mutant or child"
    assert novel > 0  # the check saw children / mutants, not only copies


def test_step_matches_rederivation_from_key_splits(task):
    """Survivors after each step == plain re-derivation (mates from the top, crossover, one-bit mutants,
    migrants, evaluation with networks.apply, sort by (acc, zeros, index))."""
    n_train = task.data["x_train"].shape[0]
    state = ga.init(jax.random.key(20), task, CFG)
    init_counts = ref_counts(
        task.module, state.params, state.genomes, task.data["x_train"], task.data["y_train"]
    )
    np.testing.assert_array_equal(np.round(np.asarray(state.acc) * n_train), init_counts)
    for g in range(4):
        key = jax.random.key(200 + g)
        genomes, counts, zeros, n_new = ref_step(key, state, task, CFG)
        new_state, metrics = ga.step(key, state, task, CFG)
        np.testing.assert_array_equal(np.asarray(new_state.genomes), genomes)
        np.testing.assert_array_equal(np.round(np.asarray(new_state.acc) * n_train), counts)
        np.testing.assert_array_equal(np.asarray(new_state.fit), np.asarray(new_state.acc))
        np.testing.assert_array_equal(np.asarray(new_state.zeros), zeros)
        assert int(new_state.generation) == int(state.generation) + 1
        assert int(new_state.n_evals) - int(state.n_evals) == n_new == int(metrics["n_evals"])
        assert float(new_state.best_fit) == float(new_state.fit[0]) >= float(state.best_fit)
        changed = float(new_state.best_fit) != float(state.best_fit)
        expect_last = int(new_state.generation) if changed else int(state.last_change)
        assert int(new_state.last_change) == expect_last
        state = new_state


# ----------------------------------------------------------------------------------------------
# termination and the accuracy bound


def test_should_stop_on_synthetic_histories():
    paper = ga.GAConfig()
    assert ref_stop_generation({70}, paper) == 120
    assert ref_stop_generation({30}, paper) == 100  # min_generations
    assert ref_stop_generation(set(), paper) == 100
    assert ref_stop_generation({99}, paper) == 149
    assert ref_stop_generation({50, 100, 140}, paper) == 190
    always = set(range(5000))
    assert ref_stop_generation(always, paper) == 1000  # ga safety cap
    assert ref_stop_generation(always, paper.replace(variant="adaptive_ab")) == 200
    assert ref_stop_generation(always, paper.replace(max_generations=150)) == 150
    assert ref_stop_generation({70}, paper.replace(variant="adaptive_ab", max_generations=110)) == 110
    # traced arguments give the same answer
    stop = jax.jit(ga.should_stop, static_argnums=2)
    assert bool(stop(jnp.int32(120), jnp.int32(70), paper))
    assert not bool(stop(jnp.int32(119), jnp.int32(70), paper))


def test_adaptive_bound_sequence():
    for d in range(11):
        hand = max(0.51, 0.85 - sum(0.1 ** (1 + 0.15 * i) for i in range(d)))
        np.testing.assert_allclose(float(ga.adaptive_bound(0.85, 0.51, d)), hand, rtol=1e-6)
    np.testing.assert_allclose(float(ga.adaptive_bound(0.85, 0.51, 1)), 0.75, rtol=1e-6)
    np.testing.assert_allclose(float(ga.adaptive_bound(0.85, 0.51, 2)), 0.679205, rtol=1e-5)
    # Σ 0.1^(1 + 0.15 i) → 0.3425: 0.85 reaches the floor only after 15 drops; 0.7 after 3
    assert float(ga.adaptive_bound(0.85, 0.51, 14)) > 0.51
    np.testing.assert_allclose(float(ga.adaptive_bound(0.85, 0.51, 15)), 0.51, rtol=1e-7)
    seq = [float(ga.adaptive_bound(0.7, 0.51, d)) for d in range(5)]
    np.testing.assert_allclose(seq, [0.7, 0.6, 0.6 - 0.1**1.15, 0.51, 0.51], rtol=1e-6)


def test_bound_start():
    ab = ga.GAConfig(variant="adaptive_ab")
    assert ga._bound_start(ab, MLP((2, 20, 2))) == 0.7
    assert ga._bound_start(ab, MLP((2, 39, 2))) == 0.7
    assert ga._bound_start(ab, MLP((2, 40, 2))) == 0.85
    assert ga._bound_start(ab, MLP((2, 75, 2))) == 0.85
    # the original's rule: one hidden layer < 40, or two hidden layers both < 30
    assert ga._bound_start(ab, MLP((2, 20, 20, 2))) == 0.7
    assert ga._bound_start(ab, MLP((2, 29, 29, 2))) == 0.7
    assert ga._bound_start(ab, MLP((2, 30, 10, 2))) == 0.85
    assert ga._bound_start(ab, MLP((2, 50, 50, 2))) == 0.85  # D
    assert ga._bound_start(ab, MLP((2, 10, 10, 10, 2))) == 0.85  # three hidden layers: not small
    assert ga._bound_start(ab, MLP((64, 20, 10))) == 0.7
    assert ga._bound_start(ab.replace(bound_start=0.6), MLP((2, 75, 2))) == 0.6
    assert ga._bound_start(ga.GAConfig(variant="static_ab", static_bound=0.15), MLP((2, 75, 2))) == 0.15


def test_adaptive_ab_initial_population_respects_bound(task):
    start, floor = 0.8, CFG_AB_INIT.bound_floor
    seen_drop_without_fallback = seen_fallback = False
    for seed in (0, 1, 2):
        st = ga.init(jax.random.key(seed), task, CFG_AB_INIT)
        acc = np.asarray(st.acc)
        drops, fallback = int(st.bound_drops), bool(st.fallback)
        np.testing.assert_allclose(
            float(st.bound), max(floor, start - sum(0.1 ** (1 + 0.15 * i) for i in range(drops))), rtol=1e-6
        )
        counts = ref_counts(task.module, st.params, st.genomes, task.data["x_train"], task.data["y_train"])
        np.testing.assert_array_equal(np.round(acc * task.data["x_train"].shape[0]), counts)
        assert all(ref_has_path(ARCH, g) for g in np.asarray(st.genomes))  # repair is on for AB
        # every drop (and the switch to the fallback) needs bound_patience rejected proposals
        assert int(st.n_evals) >= (drops + fallback) * CFG_AB_INIT.bound_patience + CFG_AB_INIT.pop_size
        if fallback:
            assert float(st.bound) == pytest.approx(floor)
            seen_fallback = True
        else:
            assert acc.min() >= float(st.bound), (seed, acc, float(st.bound))
            seen_drop_without_fallback |= drops > 0
    assert seen_drop_without_fallback and seen_fallback  # both branches were exercised


# ----------------------------------------------------------------------------------------------
# has_path and diversity


def test_genome_layout_is_row_major_kernels():
    module = MLP((2, 3, 2))
    assert ga.genome_length(module) == 12
    for p in range(12):
        g = np.zeros((1, 12), bool)
        g[0, p] = True
        m = ga.genomes_to_masks(module, jnp.asarray(g))
        ref = genome_kernels(module.sizes, g[0])
        np.testing.assert_array_equal(np.asarray(m["dense_0"]["kernel"][0]), ref[0])
        np.testing.assert_array_equal(np.asarray(m["dense_1"]["kernel"][0]), ref[1])
        assert bool(jnp.all(m["dense_0"]["bias"])) and bool(jnp.all(m["dense_1"]["bias"]))


def _genome(sizes, edges):
    """Genome with exactly the listed (layer, in, out) weights kept."""
    kernels = [np.zeros(s, bool) for s in kernel_shapes(sizes)]
    for layer, i, j in edges:
        kernels[layer][i, j] = True
    return np.concatenate([k.ravel() for k in kernels])


def test_has_path_hand_made_masks():
    sizes = (2, 3, 2)
    module = MLP(sizes)
    full = np.ones(12, bool)
    no_first = full.copy()
    no_first[:6] = False
    no_last = full.copy()
    no_last[6:] = False
    cases = {
        "all ones": (full, True),
        "all-zero first layer": (no_first, False),
        "all-zero last layer": (no_last, False),
        "single path x1→h2→o0": (_genome(sizes, [(0, 1, 2), (1, 2, 0)]), True),
        "dead ends x1→h2, h1→o0": (_genome(sizes, [(0, 1, 2), (1, 1, 0)]), False),
        "empty": (np.zeros(12, bool), False),
    }
    got = np.asarray(ga.has_path(module, jnp.asarray(np.stack([g for g, _ in cases.values()]))))
    assert dict(zip(cases, got.tolist(), strict=True)) == {k: v for k, (_, v) in cases.items()}

    deep = (2, 2, 3, 2)
    gs = [
        _genome(deep, [(0, 0, 1), (1, 1, 2), (2, 2, 1)]),  # x0→a1→b2→o1
        _genome(deep, [(0, 0, 1), (1, 0, 2), (2, 2, 1)]),  # a0 is never reached
    ]
    assert np.asarray(ga.has_path(MLP(deep), jnp.asarray(np.stack(gs)))).tolist() == [True, False]


def test_has_path_matches_plain_loop_on_random_masks():
    rng = np.random.default_rng(3)
    for sizes, density in (((2, 3, 2), 0.3), ((3, 2, 4, 2), 0.4), ((2, 1, 2), 0.5)):
        length = sum(a * b for a, b in kernel_shapes(sizes))
        gs = rng.random((60, length)) < density
        ref = [ref_has_path(sizes, g) for g in gs]
        assert 0 < sum(ref) < len(ref)  # both outcomes occur
        assert np.asarray(ga.has_path(MLP(sizes), jnp.asarray(gs))).tolist() == ref


def test_diversity_matches_pairwise_loop():
    rng = np.random.default_rng(4)
    g = rng.random((7, 13)) < 0.4
    pairs = [(i, j) for i in range(7) for j in range(i + 1, 7)]
    ref = np.mean([np.sum(g[i] != g[j]) / 13 for i, j in pairs])
    np.testing.assert_allclose(float(ga.diversity(jnp.asarray(g))), ref, rtol=1e-6)
    assert float(ga.diversity(jnp.asarray([[1, 0], [0, 1]], bool))) == 1.0
    assert float(ga.diversity(jnp.ones((5, 9), bool))) == 0.0


# ----------------------------------------------------------------------------------------------
# whole runs


def test_elitism_best_accuracy_never_decreases(runs):
    improved = False
    for state, hist in runs.values():
        rows = valid_rows(hist, state.generation)
        best = rows["best_acc"]
        assert np.all(np.diff(best) >= 0), best
        np.testing.assert_array_equal(rows["best_fit"], best)
        improved |= bool(np.any(np.diff(best) > 0))
    assert improved  # at least one run actually improved during the run


def test_run_equals_step_loop(task, runs):
    key = jax.random.key(RUN_SEEDS[1])
    final, hist = runs[RUN_SEEDS[1]]
    n_gen = int(final.generation)
    k_init, k_run = ga.split_run_key(key)
    state = ga.init(k_init, task, CFG)
    best, last = float(state.best_fit), 0
    rows = []
    for g in range(n_gen):
        state, metrics = ga.step(ga.generation_key(k_run, g), state, task, CFG)
        rows.append(metrics)
        if float(state.best_fit) != best:
            best, last = float(state.best_fit), g + 1
        # the run must not have stopped earlier
        assert bool(ga.should_stop(g + 1, last, CFG)) == (g + 1 == n_gen)
    assert tree_equal(state, final)
    for k, col in hist.items():
        np.testing.assert_array_equal(np.asarray(col)[:n_gen], [np.asarray(r[k]) for r in rows], err_msg=k)
        pad = np.asarray(col)[n_gen:]
        assert pad.shape == (CFG.cap - n_gen,)
        assert np.all(pad == -1) if np.issubdtype(pad.dtype, np.integer) else np.all(np.isnan(pad))
    np.testing.assert_array_equal(np.asarray(hist["generation"])[:n_gen], np.arange(1, n_gen + 1))
    assert int(final.last_change) == last


def test_same_key_same_result_different_key_different_result(task, runs):
    again = ga.run(jax.random.key(RUN_SEEDS[0]), task, CFG)
    assert tree_equal(again, runs[RUN_SEEDS[0]])
    (s0, _), (s1, _) = runs[RUN_SEEDS[0]], runs[RUN_SEEDS[1]]
    assert not np.array_equal(np.asarray(s0.genomes), np.asarray(s1.genomes))
    assert not np.array_equal(
        np.asarray(s0.params["dense_0"]["kernel"]), np.asarray(s1.params["dense_0"]["kernel"])
    )


def test_vmap_over_seeds_equals_separate_runs(task, runs):
    keys = jnp.stack([jax.random.key(s) for s in RUN_SEEDS])
    batched = jax.vmap(lambda k: ga.run(k, task, CFG))(keys)
    lengths = {int(runs[s][0].generation) for s in RUN_SEEDS}
    assert len(lengths) > 1  # runs of different lengths share the batched while_loop
    for i, s in enumerate(RUN_SEEDS):
        assert tree_equal(jax.tree_util.tree_map(lambda x, i=i: x[i], batched), runs[s]), s


def test_evaluate_final_matches_direct_evaluation(task, runs):
    state, _ = runs[RUN_SEEDS[1]]
    out = ga.evaluate_final(state, task, CFG)
    n_test = task.data["x_test"].shape[0]
    test_counts = ref_counts(
        task.module, state.params, state.genomes, task.data["x_test"], task.data["y_test"]
    )
    assert round(float(out["test_acc"]) * n_test) == test_counts[0]  # the train-best individual
    assert round(float(out["best_test_acc"]) * n_test) == test_counts.max()
    assert float(out["best_test_acc"]) >= float(out["test_acc"])
    assert float(out["train_acc"]) == float(state.acc[0])
    length = state.genomes.shape[1]
    assert float(out["sparsity"]) == pytest.approx(np.sum(~np.asarray(state.genomes[0])) / length)
    best_idx = int(np.argmax(test_counts))
    assert float(out["best_test_sparsity"]) == pytest.approx(
        np.sum(~np.asarray(state.genomes[best_idx])) / length
    )
    assert int(out["generations"]) == int(state.generation)
    assert not bool(out["capped"])
    assert not bool(out["at_chance"])  # moons is balanced: chance is 0.5
    assert float(state.acc[0]) > 0.55


def test_run_at_chance_finishes_and_is_reported(chance_task, chance_run):
    state, hist = chance_run
    cfg = CFG_AB_CHANCE
    # the best accuracy never changes (0.5 for every mask): stop at max(min_generations, patience)
    assert int(state.generation) == max(cfg.min_generations, cfg.patience) == 5
    assert int(state.last_change) == 0
    np.testing.assert_array_equal(np.asarray(state.acc), 0.5)
    rows = valid_rows(hist, state.generation)
    for k, v in rows.items():
        assert not np.any(np.isnan(v)), k
    np.testing.assert_array_equal(rows["best_acc"], 0.5)
    out = ga.evaluate_final(state, chance_task, cfg)
    for k, v in out.items():
        assert not np.any(np.isnan(np.asarray(v, np.float64))), k
    assert bool(out["at_chance"])
    assert float(out["test_acc"]) == 0.5 == float(out["best_test_acc"])
    assert not bool(out["capped"])
    # accuracy 0.5 never reaches the bound: 0.7 → 0.6 → 0.529 → 0.51 (floor), then the fallback
    assert int(state.bound_drops) == 3
    assert float(state.bound) == pytest.approx(0.51)
    assert bool(state.fallback)
    assert int(state.n_evals) >= 4 * cfg.bound_patience + cfg.pop_size
    # repair (on for AB): every member of the final population has an input→output path, although
    # random masks of this 4-bit net often have none (see test_has_path_matches_plain_loop_on_random_masks)
    assert all(ref_has_path((2, 1, 2), g) for g in np.asarray(state.genomes))
    assert bool(jnp.all(ga.has_path(chance_task.module, state.genomes)))


# ----------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rec_rate": 1.5}, "rec_rate"),
        ({"mut_rate": -0.1}, "mut_rate"),
        ({"mig_rate": "0.1"}, "mig_rate"),
        ({"pop_size": 1}, "pop_size"),
        ({"pop_size": 10.0}, "pop_size"),
        ({"variant": "foo"}, "variant"),
        ({"fitness": "bar"}, "fitness"),
        ({"pop_size": 10, "par_rate": 0.05}, "par_rate"),  # int(0.5) = 0 mates
        ({"patience": 0}, "patience"),
        ({"max_generations": 0}, "max_generations"),
        ({"eval_block": 0}, "eval_block"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ga.GAConfig(**kwargs)


def test_make_task_validation(data):
    d = data
    with pytest.raises(TypeError, match="MLP"):
        ga.make_task(PaperCNN(), d.x_train, d.y_train, d.x_test, d.y_test)
    with pytest.raises(ValueError, match="x_train"):
        ga.make_task(MLP((3, 20, 2)), d.x_train, d.y_train, d.x_test, d.y_test)
    with pytest.raises(ValueError, match="x_test"):
        ga.make_task(MLP(ARCH), d.x_train, d.y_train, d.x_test[:, :1], d.y_test)
    with pytest.raises(ValueError, match="classes"):
        ga.make_task(MLP((2, 20, 1)), d.x_train, d.y_train, d.x_test, d.y_test)


def test_make_task_rejects_length_mismatch(data):
    d = data
    with pytest.raises(ValueError, match="y_train"):
        ga.make_task(MLP(ARCH), d.x_train[:100], d.y_train[:50], d.x_test, d.y_test)


def test_make_task_rejects_negative_labels(data):
    d = data
    with pytest.raises(ValueError, match="y_train"):
        ga.make_task(MLP(ARCH), d.x_train, d.y_train - 1, d.x_test, d.y_test)
