"""NeTS (search/nets.py) and its experiment driver (experiments/nets.py)."""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console

from es_lottery import cli, networks
from es_lottery import masks as masks_lib
from es_lottery.search import nets
from es_lottery.tasks import classification

# small everything: the suite runs on 2 CPU cores
FAST = dict(pop_size=4, generations=3, inner_batch_size=16, fitness="forward")


@pytest.fixture(scope="module")
def xor_task():
    ds = classification.xor(n=20)
    x_tr, y_tr, x_va, y_va = nets.split_validation(ds.x_train, ds.y_train, 0.25)
    module = networks.make_network("mlp", sizes=[2, 4, 1], weight_init="lecun_normal")
    return nets.make_task(module, x_tr, y_tr, x_va, y_va)


def _tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _member(tree, i):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


# ----------------------------------------------------------------------------------------------
# fitness terms


def test_density_penalty_hand_values():
    tau = 0.2
    assert float(nets.density_penalty(0.2, tau)) == pytest.approx(0.0, abs=1e-7)
    assert float(nets.density_penalty(1.0, tau)) == pytest.approx(1.0)
    assert float(nets.density_penalty(0.6, tau)) == pytest.approx(0.25)  # (0.4 / 0.8)²
    assert float(nets.density_penalty(0.0, tau)) == pytest.approx(0.0625)  # (0.2 / 0.8)²
    # quadratic in the distance to τ, on both sides
    p1 = float(nets.density_penalty(tau + 0.05, tau))
    assert float(nets.density_penalty(tau + 0.1, tau)) == pytest.approx(4 * p1, rel=1e-5)
    assert float(nets.density_penalty(tau - 0.05, tau)) == pytest.approx(p1, rel=1e-5)
    assert float(nets.density_penalty(0.55, 0.5)) == pytest.approx(0.01)  # (0.05 / 0.5)²


def test_global_density_is_count_weighted():
    module = networks.make_network("mlp", sizes=[10, 10, 1])
    params = networks.init_params(jax.random.key(0), module)
    mask = masks_lib.ones(params)
    k0 = np.zeros((10, 10), bool)
    k0[0] = True  # 10 of 100 kept
    mask["dense_0"]["kernel"] = jnp.asarray(k0)  # dense_1: 10 of 10 kept
    d = float(nets.global_density(mask))
    assert d == pytest.approx(20 / 110)
    layer_mean = float(np.mean([float(v) for v in masks_lib.layer_density(mask).values()]))
    assert layer_mean == pytest.approx(0.55)  # the original's unweighted mean: not what NeTS uses
    batched = jax.tree_util.tree_map(lambda m: jnp.stack([m, jnp.ones_like(m)]), mask)
    np.testing.assert_allclose(np.asarray(nets.member_density(batched)), [20 / 110, 1.0], rtol=1e-6)


def test_forward_fitness_is_loss_plus_penalty(xor_task):
    cfg = nets.NeTSConfig(**FAST)
    state = nets.init(jax.random.key(1), xor_task, cfg)
    pen = np.asarray(nets.density_penalty(state.density, cfg.target_density))
    np.testing.assert_allclose(np.asarray(state.fitness), np.asarray(state.loss) + pen, rtol=1e-6)
    # the forward loss of member 0, computed by hand with the plain flax forward pass
    p0 = masks_lib.apply(_member(state.params, 0), _member(state.masks, 0))
    logits = networks.apply(xor_task.module, p0, xor_task.data["x_val"])[:, 0]
    y = np.asarray(xor_task.data["y_val"], np.float64)
    z = np.asarray(logits, np.float64)
    bce = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    assert float(state.loss[0]) == pytest.approx(bce, rel=1e-4)
    # sorted best first; initial masks are dense
    assert np.all(np.diff(np.asarray(state.fitness)) >= 0)
    np.testing.assert_array_equal(np.asarray(state.density), 1.0)


# ----------------------------------------------------------------------------------------------
# operators


def _population(module, n, key=0):
    return _population_jit(module, n, key)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _population_jit(module, n, key):
    params = jax.vmap(lambda k: networks.init_params(k, module))(jax.random.split(jax.random.key(key), n))
    masks = jax.tree_util.tree_map(
        lambda x: jax.random.bernoulli(jax.random.key(key + 1), 0.7, x.shape), params
    )
    flags = jax.tree_util.tree_leaves(
        masks_lib.prunable_flags(jax.tree_util.tree_map(lambda x: x[0], params))
    )
    leaves, treedef = jax.tree_util.tree_flatten(masks)
    masks = jax.tree_util.tree_unflatten(
        treedef, [m if f else jnp.ones_like(m) for m, f in zip(leaves, flags, strict=True)]
    )
    return params, masks


def test_dormancy_only_removes_and_enable_only_adds():
    module = networks.make_network("mlp", sizes=[3, 8, 2])
    _, masks = _population(module, 6)
    dormancy = jax.jit(nets.dormancy, static_argnums=2)
    before = _leaves(masks)
    after = _leaves(dormancy(jax.random.key(5), masks, 0.3))
    assert all(np.all(m1 <= m0) for m0, m1 in zip(before, after, strict=True))
    assert sum(int(np.sum(a & ~b)) for a, b in zip(before, after, strict=True)) > 0
    # biases are never masked, even at rate 1
    gone = jax.device_get(dormancy(jax.random.key(6), masks, 1.0))
    assert gone["dense_0"]["bias"].all() and gone["dense_1"]["bias"].all()
    assert not gone["dense_0"]["kernel"].any() and not gone["dense_1"]["kernel"].any()
    on = _leaves(jax.jit(nets.enable, static_argnums=2)(jax.random.key(7), masks, 0.5))
    assert all(np.all(m1 >= m0) for m0, m1 in zip(before, on, strict=True))


def test_crossover_gene_mode_keeps_weight_and_mask_together():
    module = networks.make_network("mlp", sizes=[3, 8, 2])
    pa, ma = _population(module, 4, key=0)
    pa, ma = jax.device_get((pa, ma))
    pb = jax.tree_util.tree_map(lambda x: x + 100.0, pa)  # distinguishable parents
    mb = jax.tree_util.tree_map(lambda m: ~m, ma)
    do = np.array([True, True, False, True])
    cross = jax.jit(nets.crossover, static_argnames="mode")
    cp, cm = cross(jax.random.key(3), pa, ma, pb, mb, do, mode="gene")
    w, m = np.asarray(cp["dense_0"]["kernel"]), np.asarray(cm["dense_0"]["kernel"])
    from_b = w > 50
    np.testing.assert_array_equal(from_b, m == np.asarray(mb["dense_0"]["kernel"]))
    assert 0 < from_b[0].mean() < 1  # a real mix
    assert not from_b[2].any()  # no crossover: clone of parent a
    assert _tree_equal(_member(cp, 2), _member(pa, 2)) and _tree_equal(_member(cm, 2), _member(ma, 2))


# ----------------------------------------------------------------------------------------------
# selection


def test_tournament_winners_hand_case():
    fitness = jnp.array([0.3, 0.1, 0.5, 0.2, jnp.nan])
    cand = jnp.array(
        [
            [0, 2],
            [2, 3],
            [1, 3],
            [4, 2],
            [2, 2],
            [
                0,
                1,
            ],
            [4, 4],
        ]
    )
    np.testing.assert_array_equal(np.asarray(nets.tournament_winners(fitness, cand)), [0, 3, 1, 2, 2, 1, 4])
    # ties go to the lower index
    tie = jnp.array([0.2, 0.2, 0.2])
    np.testing.assert_array_equal(
        np.asarray(nets.tournament_winners(tie, jnp.array([[2, 1], [1, 0]]))), [1, 0]
    )


@pytest.mark.parametrize("selection", ["rank", "tournament"])
def test_selection_favours_lower_fitness(selection):
    fitness = jnp.array([0.5, 0.1, 0.9, 0.3])
    cfg = nets.NeTSConfig(selection=selection, tournament_size=2)
    picks = np.asarray(nets.select(jax.random.key(0), fitness, 40_000, cfg))
    freq = np.bincount(picks, minlength=4) / picks.size
    by_rank = freq[np.argsort(np.asarray(fitness))]  # best … worst
    assert np.all(np.diff(by_rank) < 0), freq
    if selection == "rank":  # linear ranking: weights 4, 3, 2, 1
        np.testing.assert_allclose(by_rank, [0.4, 0.3, 0.2, 0.1], atol=0.01)
    else:  # binary tournament with replacement: P(rank r wins) = ((P−r)² − (P−r−1)²) / P²
        np.testing.assert_allclose(by_rank, [7 / 16, 5 / 16, 3 / 16, 1 / 16], atol=0.01)
    assert float(np.asarray(fitness)[picks].mean()) < float(jnp.mean(fitness))


def test_roulette_original_is_the_compat_switch_favouring_worse():
    fitness = jnp.array([0.5, 0.1, 0.9, 0.3, jnp.nan])
    p = np.asarray(nets.selection_probs(fitness, "roulette_original"))
    # the original's select_parents: w = (f − min) / (max − min + 1e-6), p = w / Σw (min 0.1, max 0.9)
    w = np.array([0.4, 0.0, 0.8, 0.2]) / (0.8 + 1e-6)
    np.testing.assert_allclose(p, [*(w / w.sum()), 0.0], rtol=1e-6)
    assert p[1] == 0.0  # the best genome is never selected
    equal = np.asarray(nets.selection_probs(jnp.full(4, 0.3), "roulette_original"))
    np.testing.assert_allclose(equal, 0.25)  # no spread: uniform
    assert nets.NeTSConfig().selection == "rank"  # never the default
    rank = np.asarray(nets.selection_probs(fitness, "rank"))
    assert rank[4] == rank.min()  # NaN ranks last


# ----------------------------------------------------------------------------------------------
# the algorithm


def test_elitism_keeps_the_best_genome_bitwise(xor_task):
    cfg = nets.NeTSConfig(**{**FAST, "n_elite": 2, "noise_scale": 0.5, "dormancy_rate": 0.5})
    state = jax.device_get(nets.init(jax.random.key(2), xor_task, cfg))
    for g in range(3):
        new, metrics = jax.device_get(nets.step(jax.random.key(10 + g), state, xor_task, cfg))
        for e in range(cfg.n_elite):
            old_p, old_m = _member(state.params, e), _member(state.masks, e)
            hits = [
                i
                for i in range(cfg.pop_size)
                if _tree_equal(_member(new.params, i), old_p) and _tree_equal(_member(new.masks, i), old_m)
            ]
            assert hits, f"elite {e} of generation {g} was changed or dropped"
            assert float(new.fitness[hits[0]]) == float(state.fitness[e])
        assert float(new.best_fitness) <= float(state.best_fitness)
        assert _tree_equal(new.best_params, _member(new.params, 0))
        assert int(new.generation) == g + 1 and float(metrics["best_fitness"]) == float(new.best_fitness)
        state = new


def test_vmapped_inner_training_equals_one_member_at_a_time(xor_task):
    cfg = nets.TrainConfig(epochs=2, lr=0.3, batch_size=8)
    params, masks = _population(xor_task.module, 3, key=4)
    key = jax.random.key(9)
    args = (xor_task.data["x_train"], xor_task.data["y_train"], xor_task.module, cfg)
    batched, losses = jax.jit(nets.train_population, static_argnums=(5, 6))(key, params, masks, *args)
    one = jax.jit(nets.sgd_train, static_argnums=(5, 6))
    for i in range(3):
        p_i, l_i = one(key, _member(params, i), _member(masks, i), *args)
        for a, b in zip(
            jax.tree_util.tree_leaves(_member(batched, i)), jax.tree_util.tree_leaves(p_i), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(losses[i]), np.asarray(l_i), rtol=1e-5)
        # pruned weights stay exactly zero and something was learned
        m_i = _member(masks, i)
        assert not bool(jnp.any(jnp.where(m_i["dense_0"]["kernel"], 0.0, p_i["dense_0"]["kernel"])))
        assert not _tree_equal(p_i, masks_lib.apply(_member(params, i), m_i))


def test_run_same_key_same_result_and_patience(xor_task):
    cfg = nets.NeTSConfig(**{**FAST, "generations": 4})
    a_state, a_hist = nets.run(jax.random.key(3), xor_task, cfg)
    b_state, b_hist = nets.run(jax.random.key(3), xor_task, cfg)
    assert _tree_equal(a_state, b_state) and _tree_equal(a_hist, b_hist)
    assert int(a_state.generation) == 4
    h = np.asarray(a_hist["best_fitness"])
    assert np.all(np.diff(h) <= 0)  # elitism: the best fitness never gets worse
    assert float(a_state.best_fitness) == pytest.approx(float(h[-1]))
    # patience: a stalled best fitness stops the loop early
    assert bool(nets.should_stop(7, 2, cfg.replace(generations=50, patience=5)))
    assert not bool(nets.should_stop(6, 2, cfg.replace(generations=50, patience=5)))
    assert not bool(nets.should_stop(40, 0, cfg.replace(generations=50)))


def test_train_ticket_learns_xor():
    ds = classification.xor(n=50)
    module = networks.make_network("mlp", sizes=[2, 16, 1], weight_init="lecun_normal")
    params = networks.init_params(jax.random.key(0), module)
    cfg = nets.TrainConfig(epochs=30, lr=0.1, batch_size=8)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    _, m = nets.train_ticket(jax.random.key(1), params, masks_lib.ones(params), x, y, x, y, module, cfg)
    assert float(m["test_accuracy"]) == 1.0
    assert m["train_loss"].shape == (30,) and float(m["train_loss"][-1]) < float(m["train_loss"][0])


# ----------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"target_density": 0.0}, "target_density"),
        ({"target_density": 1.0}, "target_density"),
        ({"target_density": 1.5}, "target_density"),
        ({"crossover_rate": 1.2}, "crossover_rate"),
        ({"noise_rate": -0.1}, "noise_rate"),
        ({"resample_rate": 2}, "resample_rate"),
        ({"dormancy_rate": -1}, "dormancy_rate"),
        ({"enable_rate": 1.01}, "enable_rate"),
        ({"noise_scale": -0.1}, "noise_scale"),
        ({"pop_size": 1}, "pop_size"),
        ({"pop_size": 3, "n_elite": 3}, "pop_size"),
        ({"generations": 0}, "generations"),
        ({"patience": 0}, "patience"),
        ({"selection": "roulette"}, "selection"),
        ({"fitness": "accuracy"}, "fitness"),
        ({"crossover_mode": "layer"}, "crossover_mode"),
        ({"inner_lr": 0.0}, "inner_lr"),
    ],
)
def test_invalid_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        nets.NeTSConfig(**kw)


def test_invalid_train_config_and_task():
    with pytest.raises(ValueError, match="lr"):
        nets.TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        nets.TrainConfig(epochs=0)
    module = networks.make_network("mlp", sizes=[2, 4, 1])
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="y_train"):
        nets.make_task(module, x, np.array([0, 1, 2, 0]), x, np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="x_val"):
        nets.make_task(module, x, np.zeros(4, np.int32), np.zeros((4, 3)), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="validation_fraction"):
        nets.split_validation(x, np.zeros(4, np.int32), 1.0)


# ----------------------------------------------------------------------------------------------
# the experiment driver


def test_experiment_config_errors_name_the_field():
    from es_lottery.experiments import nets as exp_nets

    base = {"name": "t", "dataset": "xor", "network": {"name": "mlp", "sizes": [2, 4, 1]}}
    with pytest.raises(ValueError, match=r"nets\.target_density"):
        exp_nets.parse_config({**base, "nets": {"target_density": 2.0}})
    with pytest.raises(ValueError, match="prune_rate"):
        exp_nets.parse_config({**base, "imp": {"prune_rate": 1.5}})
    with pytest.raises(ValueError, match="methods"):
        exp_nets.parse_config({**base, "methods": ["nets", "magic"]})
    with pytest.raises(ValueError, match="random"):
        exp_nets.parse_config({**base, "methods": ["random"]})
    with pytest.raises(ValueError, match="final_training"):
        exp_nets.parse_config({**base, "final_training": {"momentum": 1.0}})
    with pytest.raises(ValueError, match="unknown field 'nets_cfg'"):
        exp_nets.parse_config({**base, "nets_cfg": {}})
    with pytest.raises(ValueError, match=r"nets\.population_size: expected an integer"):
        exp_nets.parse_config({**base, "nets": {"population_size": 4.0}})
    exp = exp_nets.parse_config(base)
    assert exp.imp.num_levels == 8 and exp.imp.prune_rate == 0.2  # 7 × 20 % by default
    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "nets").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"xor_mlp10", "xor_mlp100", "lenet_mnist", "lenet_mnist_cpu"}
    for path in configs:
        exp_nets.load_config(path)


def test_experiment_end_to_end(tmp_path):
    from es_lottery.experiments import nets as exp_nets

    data = {
        "name": "tiny",
        "dataset": "xor",
        "dataset_args": {"n": 10},
        "network": {"name": "mlp", "sizes": [2, 4, 1], "weight_init": "lecun_normal"},
        "nets": {"population_size": 3, "generations": 2, "inner_batch_size": 16, "fitness": "forward"},
        "final_training": {"epochs": 2, "learning_rate": 0.1, "batch_size": 16},
        "imp": {"num_levels": 2},
        "methods": ["nets", "imp", "random"],
        "seeds": 2,
    }
    cfg_path = tmp_path / "tiny.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(data))
    assert cli.main(["nets", str(cfg_path), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        (m, s) for m in ("imp", "nets", "random") for s in range(2)
    ]
    by = {(r["method"], r["seed"]): r for r in rows}
    for s in range(2):
        assert by[("random", s)]["kept"] == by[("nets", s)]["kept"]  # matched density, exact count
        assert by[("imp", s)]["kept"] == masks_lib.kept_count(0.8, 12)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["methods"]) == {"nets", "imp", "random"}
    assert (run / "plots" / "accuracy_by_method.png").exists()
    assert (run / "plots" / "nets_search.png").exists()
    jobs = json.loads((run / "jobs.json").read_text())
    assert (tmp_path / "runs" / "store" / jobs["nets"] / "seed_1" / "ticket.npz").exists()
    # a second run skips the finished methods
    log = Console(file=io.StringIO(), width=120)
    exp_nets.run_experiment(exp_nets.load_config(cfg_path), tmp_path / "runs", console=log)
    assert log.file.getvalue().count("finished earlier, skipped") == 3
    assert len((run / "results.jsonl").read_text().splitlines()) == 6
