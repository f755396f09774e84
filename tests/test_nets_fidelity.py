"""NeTS's fidelity options (issue 21, items 10–12) against hand-computed cases: per-gene crossover
(``crossover="per_gene"``), re-evaluated elites (``reevaluate_elites``) and the original's initial genomes
(``genome_init``). The defaults of these options keep the old behaviour (``tests/pins.json`` pins it)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from es_lottery import networks
from es_lottery.experiments import config as config_lib
from es_lottery.search import nets
from es_lottery.tasks import base as tasks_base
from es_lottery.tasks import classification

NO_MUTATION = dict(noise_rate=0.0, resample_rate=0.0, dormancy_rate=0.0, enable_rate=0.0)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _member(tree, i):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def test_defaults_are_the_old_behaviour_and_stay_out_of_store_keys():
    cfg = nets.NeTSConfig()
    assert (cfg.crossover, cfg.reevaluate_elites, cfg.genome_init) == ("per_child", False, "network")
    assert config_lib.nondefault(cfg) == {}
    on = cfg.replace(crossover="per_gene", reevaluate_elites=True, n_elite=2, genome_init="kaiming_uniform")
    assert set(config_lib.nondefault(on)) == {"crossover", "reevaluate_elites", "n_elite", "genome_init"}


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"crossover": "per_parent"}, "crossover"),
        ({"genome_init": "xavier"}, "genome_init"),
        ({"reevaluate_elites": 1}, "reevaluate_elites"),
    ],
)
def test_bad_options_name_their_field(kw, field):
    with pytest.raises(ValueError, match=field):
        nets.NeTSConfig(**kw)


# ----------------------------------------------------------------------------------------------
# item 10: crossover_rate as the per-gene share of parent 1


def _parents(n_children: int, n_genes: int):
    """Parent a all zeros with every mask bit on; parent b all ones with every mask bit off."""
    shape = (n_children, n_genes)
    pa, ma = {"w": {"kernel": jnp.zeros(shape)}}, {"w": {"kernel": jnp.ones(shape, bool)}}
    pb, mb = {"w": {"kernel": jnp.ones(shape)}}, {"w": {"kernel": jnp.zeros(shape, bool)}}
    return pa, ma, pb, mb


@pytest.mark.parametrize("share", [0.5, 0.8, 0.25])
@pytest.mark.parametrize("mode", ["gene", "independent"])
def test_per_gene_share_of_parent_one_is_the_crossover_rate(share, mode):
    n_children, n_genes = 200, 100
    pa, ma, pb, mb = _parents(n_children, n_genes)
    every = jnp.ones((n_children,), bool)
    cross = jax.jit(nets.crossover, static_argnames=("mode", "share_a"))
    cp, cm = cross(jax.random.key(3), pa, ma, pb, mb, every, mode=mode, share_a=share)
    from_a_w = np.asarray(cp["w"]["kernel"]) == 0.0  # parent a's weights are 0, b's are 1
    from_a_m = np.asarray(cm["w"]["kernel"])  # parent a's mask bits are on, b's off
    n = n_children * n_genes
    tol = 5 * math.sqrt(share * (1 - share) / n)  # five binomial standard deviations
    assert from_a_w.mean() == pytest.approx(share, abs=tol)
    assert from_a_m.mean() == pytest.approx(share, abs=tol)
    # every child is a mix of both parents (no clones: P(all 100 genes from one parent) < 1e-12)
    for frm in (from_a_w, from_a_m):
        assert frm.any(axis=1).all() and (~frm).any(axis=1).all()
    if mode == "gene":
        np.testing.assert_array_equal(from_a_w, from_a_m)  # weight and mask bit travel together
    else:
        # drawn separately: they disagree where exactly one came from a (expected 2·s·(1 − s))
        assert (from_a_w != from_a_m).mean() == pytest.approx(2 * share * (1 - share), abs=0.02)


def test_per_child_default_is_the_unchanged_operator():
    """share_a 0.5 with the per-child flag is bit for bit the old rule: b where u < 0.5 in crossing
    children, clones of a elsewhere."""
    pa, ma, pb, mb = _parents(4, 50)
    do = jnp.array([True, False, True, False])
    key = jax.random.key(11)
    cp, cm = nets.crossover(key, pa, ma, pb, mb, do, "gene")
    u = nets._draw(jax.random.split(key)[0], [pa["w"]["kernel"]])[0]
    want_b = np.asarray(do)[:, None] & (np.asarray(u) < 0.5)
    np.testing.assert_array_equal(np.asarray(cp["w"]["kernel"]) == 1.0, want_b)
    np.testing.assert_array_equal(~np.asarray(cm["w"]["kernel"]), want_b)
    assert not want_b[1].any() and not want_b[3].any()  # non-crossing children: clones of a


def _marked_state(state: nets.NeTSState) -> nets.NeTSState:
    """Member i's every weight = i + 1, so a child's weights show which parents it came from."""
    n = state.fitness.shape[0]
    params = jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(
            (jnp.arange(n, dtype=x.dtype) + 1).reshape((n,) + (1,) * (x.ndim - 1)), x.shape
        ),
        state.params,
    )
    return state.replace(params=params)


@pytest.fixture(scope="module")
def xor_task():
    ds = classification.xor(n=20)
    x_tr, y_tr, x_va, y_va = nets.split_validation(ds.x_train, ds.y_train, 0.25)
    module = networks.make_network("mlp", sizes=[2, 8, 1], weight_init="lecun_normal")
    return nets.make_task(module, x_tr, y_tr, x_va, y_va)


def _mixed_children(task, crossover: str) -> np.ndarray:
    """Per child of one generation (no mutation, tournament selection): whether it mixes two parents."""
    cfg = nets.NeTSConfig(
        pop_size=41,
        n_elite=1,
        fitness="forward",
        selection="tournament",
        crossover=crossover,
        crossover_rate=0.5,
        **NO_MUTATION,
    )
    state = _marked_state(nets.init(jax.random.key(0), task, cfg))
    # all 41 marks distinct; a child's weights hold the marks of the parents it took genes from
    parents_of = []
    new, _ = nets.step(jax.random.key(1), state, task, cfg)
    flat = np.concatenate([x.reshape(x.shape[0], -1) for x in _leaves(new.params)], axis=1)
    for row in flat:
        parents_of.append(len(np.unique(row)))
    return np.asarray(parents_of)


def test_per_gene_mixes_every_child_per_child_clones_about_half(xor_task):
    per_gene = _mixed_children(xor_task, "per_gene")
    per_child = _mixed_children(xor_task, "per_child")
    assert set(per_gene.tolist()) <= {1, 2} and set(per_child.tolist()) <= {1, 2}
    # per gene: a child is a clone only when both tournaments picked the same member (or the elite)
    assert (per_gene == 2).mean() >= 0.85
    # per child at rate 0.5: about half the children are clones (binomial, 40 children: 0.5 ± 0.24)
    assert 0.25 <= (per_child == 2).mean() <= 0.75


# ----------------------------------------------------------------------------------------------
# item 11: elites re-evaluated every generation


@struct.dataclass
class CountingTask(tasks_base.TaskBase):
    """A hand-built stateful task: loss = Σ(w ⊙ m) + 10 · (evaluations so far); fitness = −loss."""

    module: nn.Module = struct.field(pytree_node=False)

    def init_state(self, key):
        del key
        return jnp.float32(0.0)

    def init_params(self, key):
        return networks.init_params(key, self.module)

    def fitness(self, state, key, members):
        del key
        params = tasks_base.member_params(members)
        total = sum(jnp.sum(x.reshape(x.shape[0], -1), axis=1) for x in jax.tree_util.tree_leaves(params))
        return -(total + 10.0 * state), state + 1.0


@pytest.fixture(scope="module")
def counting_task():
    return CountingTask(networks.make_network("mlp", sizes=[2, 3, 1], weight_init="lecun_normal"))


def _weight_sum(params, masks, i) -> float:
    p, m = _member(params, i), _member(masks, i)
    return float(sum(np.sum(np.where(mm, pp, 0.0)) for pp, mm in zip(_leaves(p), _leaves(m), strict=True)))


@pytest.mark.parametrize("reevaluate", [False, True])
def test_two_elites_carried_and_reevaluated(counting_task, reevaluate):
    cfg = nets.NeTSConfig(
        pop_size=5,
        n_elite=2,
        reevaluate_elites=reevaluate,
        fitness="forward",
        noise_rate=1.0,  # every child differs from its parents: the elites are the only bitwise copies
        noise_scale=0.5,
        dormancy_rate=0.0,
    )
    s0 = nets.init(jax.random.key(0), counting_task, cfg)
    penalty = float(nets.density_penalty(1.0, cfg.target_density))  # dense masks: 1
    for i in range(5):  # hand value at init: the first evaluation, counter 0
        assert float(s0.fitness[i]) == pytest.approx(_weight_sum(s0.params, s0.masks, i) + penalty, abs=1e-5)
    s1, _ = nets.step(jax.random.key(1), s0, counting_task, cfg)
    for e in range(2):
        # the e-th elite is carried bitwise; find it in the new (re-sorted) population
        where = [
            j
            for j in range(5)
            if _same(_member(s1.params, j), _member(s0.params, e))
            and _same(_member(s1.masks, j), _member(s0.masks, e))
        ]
        assert len(where) == 1
        j = where[0]
        old = float(s0.fitness[e])
        # re-evaluated: the second evaluation call adds 10 (the hand-built fitness changed); kept: unchanged
        want = old + 10.0 if reevaluate else old
        assert float(s1.fitness[j]) == pytest.approx(want, abs=1e-5)
    assert int(s1.n_evals) == 5 + (5 if reevaluate else 3)
    # the children saw the same counter as the re-evaluated elites (one evaluation call per generation)
    children = [
        j for j in range(5) if not any(_same(_member(s1.params, j), _member(s0.params, e)) for e in (0, 1))
    ]
    for j in children:
        want = _weight_sum(s1.params, s1.masks, j) + 10.0 + float(nets.density_penalty(s1.density[j], 0.2))
        assert float(s1.fitness[j]) == pytest.approx(want, abs=1e-4)
    assert np.all(np.diff(np.asarray(s1.fitness)) >= 0)  # sorted best first
    # the best ever keeps the best fitness seen (a re-evaluated elite may now score worse)
    assert float(s1.best_fitness) == pytest.approx(min(float(s0.fitness[0]), float(s1.fitness[0])))


def test_reevaluated_elites_run_jitted_and_vmapped(xor_task):
    cfg = nets.NeTSConfig(
        pop_size=4,
        generations=3,
        n_elite=2,
        reevaluate_elites=True,
        crossover="per_gene",
        inner_batch_size=8,
    )
    run = jax.jit(jax.vmap(lambda k: nets.run(k, xor_task, cfg)))
    state, hist = run(jax.random.split(jax.random.key(0), 2))
    assert np.asarray(state.generation).tolist() == [3, 3]
    assert np.asarray(state.n_evals).tolist() == [4 + 3 * 4] * 2
    assert np.isfinite(np.asarray(hist["best_fitness"])).all()


# ----------------------------------------------------------------------------------------------
# item 12: the original's initial genomes


@pytest.fixture(scope="module")
def wide_task():
    ds = classification.xor(n=20)
    x_tr, y_tr, x_va, y_va = nets.split_validation(ds.x_train, ds.y_train, 0.25)
    module = networks.make_network("mlp", sizes=[2, 400, 300, 1], weight_init="lecun_normal")
    return nets.make_task(module, x_tr, y_tr, x_va, y_va)


def _by_name(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(str(k.key) for k in p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_kaiming_uniform_genomes_bounds_and_moments(wide_task):
    params = jax.jit(nets.genome_init_fn(wide_task, "kaiming_uniform"))(jax.random.key(5))
    leaves = _by_name(params)
    for name, fan_in in (("dense_0/kernel", 2), ("dense_1/kernel", 400), ("dense_2/kernel", 300)):
        w = leaves[name]
        b = 1.0 / math.sqrt(fan_in)
        assert np.abs(w).max() <= b  # U[−b, b): never beyond the bound …
        assert np.abs(w).max() > 0.98 * b  # … and filling it
        n = w.size
        assert w.mean() == pytest.approx(0.0, abs=5 * b / math.sqrt(3 * n))
        assert w.var() == pytest.approx(b * b / 3, rel=0.1 if n > 1000 else 0.6)  # var of U(−b, b)
    for name in ("dense_0/bias", "dense_1/bias", "dense_2/bias"):
        assert not leaves[name].any()  # no biases


def test_normal_genomes_are_the_papers(wide_task):
    leaves = _by_name(jax.jit(nets.genome_init_fn(wide_task, "normal"))(jax.random.key(6)))
    w = np.concatenate([leaves[k].ravel() for k in ("dense_1/kernel", "dense_2/kernel")])
    assert w.mean() == pytest.approx(0.0, abs=5 * 0.1 / math.sqrt(w.size))
    assert w.std() == pytest.approx(0.1, rel=0.01)
    assert all(not leaves[f"dense_{i}/bias"].any() for i in range(3))


def test_network_init_is_the_tasks_own(wide_task):
    key = jax.random.key(7)
    assert _same(nets.genome_init_fn(wide_task, "network")(key), wide_task.init_params(key))


@pytest.mark.parametrize("genome_init", ["kaiming_uniform", "normal"])
def test_bias_free_genomes_stay_bias_free_through_the_search(xor_task, genome_init):
    cfg = nets.NeTSConfig(
        pop_size=4,
        generations=2,
        genome_init=genome_init,
        noise_rate=1.0,  # the bias genes get noise, but are never expressed
        resample_rate=0.5,
        enable_rate=0.5,
        init_density=0.5,
        inner_batch_size=8,
    )
    state, _ = nets.run(jax.random.key(2), xor_task, cfg)
    masks = _by_name(state.masks)
    for name, m in masks.items():
        if name.endswith("bias"):
            assert not m.any(), name  # off in every member, after crossover and every mutation
    kernels = [m for name, m in masks.items() if name.endswith("kernel")]
    assert any(m.any() for m in kernels)
    ticket, _ = nets.best_ticket(state)
    assert all(not x.any() for name, x in _by_name(ticket).items() if name.endswith("bias"))
    if genome_init == "kaiming_uniform":
        # resampled kernels come from the same U(±1/√fan_in): the first layer (fan_in 2) may only
        # leave the bound through noise, which needs noise_rate; without it, every entry is inside
        quiet = cfg.replace(noise_rate=0.0, resample_rate=1.0, enable_rate=0.0, init_density=1.0)
        s1, _ = nets.step(jax.random.key(3), nets.init(jax.random.key(4), xor_task, quiet), xor_task, quiet)
        for name, x in _by_name(s1.params).items():
            if name.endswith("kernel"):
                fan_in = int(np.prod(x.shape[1:-1]))
                assert np.abs(x).max() <= 1.0 / math.sqrt(fan_in)


def test_bias_free_genomes_evaluate_as_networks_without_biases(xor_task):
    """The masked-off bias genes change nothing: the fitness equals that of the same genome with its
    bias weights zeroed."""
    cfg = nets.NeTSConfig(pop_size=3, genome_init="kaiming_uniform", fitness="forward")
    s = nets.init(jax.random.key(9), xor_task, cfg)
    noisy = jax.tree_util.tree_map(lambda x: x + 3.0, s.params)  # biases (and kernels) shifted
    kernels_only = jax.tree_util.tree_map_with_path(
        lambda p, x, y: y if p[-1].key == "kernel" else x, noisy, s.params
    )
    a = nets.evaluate_genomes(jax.random.key(0), s.params, s.masks, xor_task, cfg)["fitness"]
    b = nets.evaluate_genomes(jax.random.key(0), kernels_only, s.masks, xor_task, cfg)["fitness"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
