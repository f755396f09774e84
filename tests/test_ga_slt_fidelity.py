"""The strong-ticket GA's options that follow the original SLTN-GA code (issue 21, items 2–4).

* ``ab_mutation="layer_uniform"``: the original's ``single_point_mutation`` → ``apply_mutation`` — a layer
  uniformly, then a connection inside it — against the per-bit probabilities 1 / (n_layers · n_l) computed by
  hand (architecture D, [2, 50, 50, 2]: 1/300 in the two 100-bit outer layers, 1/7500 in the 2500-bit middle
  one), with tolerances from the binomial standard deviation; and one generation of ``step`` re-derived by
  hand on a task where every mask ties in accuracy (survivors then sort by zero bits and index alone).
* ``floor_rule="immediate"``: at the floor 0.51 the original stops filtering at once; the number of
  evaluations until the fallback is counted by hand from the documented key chain of the acceptance loop.
* ``bound_carry``: seed s + 1 starts from the bound seed s ended with (``run_seeds`` and the experiment
  driver, whose per-seed results must be the library's chain).
* Defaults: every new field's default is the rule the code had before (the run store keys omit defaults,
  ``tests/pins.json`` pins the numbers); ``for_variant`` keeps the fields a variant does not read out of its
  key.
"""

from __future__ import annotations

import io
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console

from es_lottery.experiments import config as config_lib
from es_lottery.experiments import slt
from es_lottery.keys import seed_keys
from es_lottery.networks import MLP
from es_lottery.search import ga_slt as ga
from es_lottery.tasks.classification import moons

D = (2, 50, 50, 2)  # the paper's architecture D: kernels of 100, 2500 and 100 bits
N_SIGMA = 5.0


def ref_has_path(sizes, genome) -> bool:
    """Plain loop over row-major (in, out) kernels: is some output reachable from some input?"""
    genome = np.asarray(genome, bool)
    reach, offset = [True] * int(sizes[0]), 0
    for a, b in itertools.pairwise(sizes):
        k = genome[offset : offset + a * b].reshape(a, b)
        offset += a * b
        reach = [any(reach[i] and bool(k[i, j]) for i in range(a)) for j in range(b)]
    return any(reach)


def chance_task(sizes, n_train=400, n_test=100):
    """All inputs zero, balanced labels: every mask predicts one class everywhere → accuracy exactly 0.5."""
    return ga.make_task(
        MLP(sizes),
        np.zeros((n_train, sizes[0]), np.float32),
        np.arange(n_train) % 2,
        np.zeros((n_test, sizes[0]), np.float32),
        np.arange(n_test) % 2,
    )


def flip_counts(flip, length: int, n_keys: int, per_key: int, key) -> tuple[np.ndarray, np.ndarray]:
    """(how often each bit was flipped, flipped bits per row) over n_keys · per_key all-zero genomes."""

    @jax.jit
    def go(key):
        def one(k):
            f = flip(k, jnp.zeros((per_key, length), bool))
            return jnp.sum(f, axis=0, dtype=jnp.int32), jnp.sum(f, axis=1, dtype=jnp.int32)

        per_bit, per_row = jax.lax.map(one, jax.random.split(key, n_keys))
        return per_bit.sum(0), per_row

    per_bit, per_row = go(key)
    return np.asarray(per_bit), np.asarray(per_row)


def assert_binomial(counts, n: int, p, what: str):
    """Every count within N_SIGMA binomial standard deviations of n · p."""
    p = np.broadcast_to(np.asarray(p, float), np.shape(counts))
    z = (np.asarray(counts) - n * p) / np.sqrt(n * p * (1 - p))
    assert np.abs(z).max() < N_SIGMA, f"{what}: worst |z| = {np.abs(z).max():.2f}"


# ----------------------------------------------------------------------------------------------
# item 2: the original's mutation rule


def test_layer_sizes_of_d_are_its_kernels():
    assert ga.layer_sizes(MLP(D)) == (100, 2500, 100)
    assert ga.layer_sizes(MLP((2, 20, 2))) == (40, 40)
    assert sum(ga.layer_sizes(MLP(D))) == ga.genome_length(MLP(D)) == 2700


def test_layer_uniform_mutation_frequencies_on_d():
    sizes = ga.layer_sizes(MLP(D))
    length, n_keys, per_key = sum(sizes), 30, 10_000
    n = n_keys * per_key
    # by hand: a layer with probability 1/3, then one of its n_l bits: 1/300, 1/7500, 1/300 per bit
    p_bit = np.concatenate([np.full(s, 1.0 / (3 * s)) for s in sizes])
    assert p_bit[0] == pytest.approx(1 / 300) and p_bit[100] == pytest.approx(1 / 7500)
    assert p_bit.sum() == pytest.approx(1.0)

    counts, per_row = flip_counts(
        lambda k, g: ga._flip_one_layer_uniform(k, g, sizes), length, n_keys, per_key, jax.random.key(0)
    )
    assert (per_row == 1).all()  # exactly one bit per mutant
    assert counts.sum() == n
    assert_binomial(counts, n, p_bit, "layer_uniform per bit")
    layers = np.split(counts, np.cumsum(sizes)[:-1])
    assert_binomial([c.sum() for c in layers], n, 1 / 3, "layer_uniform per layer")
    # the uniform bit (the default) is NOT this rule on D: 1/2700 per bit, layer shares 100 : 2500 : 100
    bit_counts, bit_rows = flip_counts(ga._flip_one, length, n_keys, per_key, jax.random.key(1))
    assert (bit_rows == 1).all()
    assert_binomial(bit_counts, n, 1 / 2700, "bit per bit")
    bit_layers = np.split(bit_counts, np.cumsum(sizes)[:-1])
    assert_binomial([c.sum() for c in bit_layers], n, np.asarray(sizes) / 2700, "bit per layer")
    # the two rules are far apart in the outer layers (1000 vs 111 expected hits per bit)
    assert layers[0].mean() > 5 * bit_layers[0].mean()


def test_layer_uniform_on_a_hand_sized_genome():
    """Layers of 1 and 3 bits: bit 0 is hit with probability 1/2, bits 1–3 with 1/6 each; flips are XOR."""
    sizes, n_keys, per_key = (1, 3), 12, 5000
    n = n_keys * per_key
    counts, per_row = flip_counts(
        lambda k, g: ga._flip_one_layer_uniform(k, g, sizes), 4, n_keys, per_key, jax.random.key(2)
    )
    assert (per_row == 1).all()
    assert_binomial(counts, n, [1 / 2, 1 / 6, 1 / 6, 1 / 6], "hand-sized")
    ones = jnp.ones((1000, 4), bool)
    flipped = ga._flip_one_layer_uniform(jax.random.key(3), ones, sizes)
    assert (np.asarray(jnp.sum(~flipped, axis=1)) == 1).all()  # a set bit is cleared
    with pytest.raises(ValueError, match="genome length"):
        ga._flip_one_layer_uniform(jax.random.key(0), ones, (1, 2))


def test_mutation_rule_per_variant():
    """layer_uniform applies to the AB variants; the plain GA always flips a uniform bit (the original's)."""
    module = MLP(D)
    g = jax.random.bernoulli(jax.random.key(4), 0.5, (64, 2700))
    key = jax.random.key(5)
    uniform = np.asarray(ga._flip_one(key, g))
    layered = np.asarray(ga._flip_one_layer_uniform(key, g, (100, 2500, 100)))
    assert not np.array_equal(uniform, layered)
    for variant, rule, want in [
        ("ga", "bit", uniform),
        ("ga", "layer_uniform", uniform),
        ("adaptive_ab", "bit", uniform),
        ("adaptive_ab", "layer_uniform", layered),
        ("static_ab", "layer_uniform", layered),
    ]:
        cfg = ga.GAConfig(variant=variant, ab_mutation=rule)
        np.testing.assert_array_equal(np.asarray(ga._mutate(key, g, cfg, module)), want, (variant, rule))


@pytest.mark.parametrize("rule", ["bit", "layer_uniform"])
def test_step_mutants_follow_the_rule(rule):
    """One generation re-derived by hand: no children (rec_rate 0), no migrants, every member spawns a
    mutant (mut_rate 1); every mask has accuracy 0.5, so survivors are the top N of survivors + mutants by
    (zero bits desc, index asc)."""
    task = chance_task(D)
    cfg = ga.GAConfig(
        pop_size=8, rec_rate=0.0, mut_rate=1.0, mig_rate=0.0, variant="static_ab", static_bound=0.5
    )
    cfg = cfg.replace(ab_mutation=rule)
    state = ga.init(jax.random.key(6), task, cfg)
    key = jax.random.key(7)
    new, _ = ga.step(key, state, task, cfg)

    n = cfg.pop_size
    g_old = np.asarray(state.genomes)
    k_pos = jax.random.split(key, 6)[4]
    enlarged = jnp.asarray(np.concatenate([g_old, g_old]))  # children rows are never valid here
    if rule == "bit":
        flipped = ga._flip_one(k_pos, enlarged)
    else:
        flipped = ga._flip_one_layer_uniform(k_pos, enlarged, (100, 2500, 100))
    mutants = np.asarray(flipped)[:n]
    assert all(ref_has_path(D, m) for m in mutants)  # so repair re-draws none of them
    pool = [(g_old[i], i) for i in range(n)] + [(mutants[j], 2 * n + j) for j in range(n)]
    pool.sort(key=lambda t: (-int(np.sum(~t[0])), t[1]))
    np.testing.assert_array_equal(np.asarray(new.genomes), np.stack([t[0] for t in pool[:n]]))
    np.testing.assert_array_equal(np.asarray(new.acc), 0.5)


# ----------------------------------------------------------------------------------------------
# item 4: the floor


def evaluations_until_filled(key, task, cfg: ga.GAConfig, filtering_batches: int) -> tuple[int, np.ndarray]:
    """Hand count for the chance task (every proposal has accuracy 0.5, so below the floor 0.51): the
    acceptance loop draws ``batch`` proposals per round (``k, kb = split(k)``; Bernoulli(1/2) bits from
    ``kb``); the first ``filtering_batches`` rounds reject everything, later rounds accept every proposal
    with an input→output path until the population is full. Returns (evaluations, accepted genomes)."""
    batch = max(cfg.block, cfg.pop_size)
    length = ga.genome_length(task.module)
    k = jax.random.split(key)[1]  # init: k_params, k_pop
    accepted, rounds = [], 0
    while len(accepted) < cfg.pop_size:
        k, kb = jax.random.split(k)
        props = np.asarray(jax.random.bernoulli(kb, 0.5, (batch, length)))
        if rounds >= filtering_batches:
            accepted += [p for p in props if ref_has_path(task.module.sizes, p)]
        rounds += 1
    return rounds * batch, np.stack(accepted[: cfg.pop_size])


def sorted_rows(a):
    return sorted(map(tuple, np.asarray(a, int)))


@pytest.mark.parametrize("rule", ["patience", "immediate"])
@pytest.mark.parametrize("start", [0.7, 0.51])
def test_floor_rule_counts_by_hand(rule, start):
    """From 0.7 the bound reaches the floor after 3 drops (0.6, 0.529, 0.51), each after ``bound_patience``
    rejected proposals; at the floor ``immediate`` accepts at once, ``patience`` filters for
    ``bound_patience`` more rejections. Starting AT the floor: no filtering at all with ``immediate``."""
    task = chance_task((2, 1, 2))
    cfg = ga.GAConfig(
        pop_size=8, variant="adaptive_ab", bound_start=start, bound_patience=16, floor_rule=rule
    )
    batch = max(cfg.block, cfg.pop_size)
    assert batch == 8
    per_drop = math.ceil(cfg.bound_patience / batch)  # rounds of rejections per drop: 2
    drops = 3 if start == 0.7 else 0
    filtering = per_drop * (drops + (rule == "patience"))
    key = jax.random.key(11)
    want_evals, want_genomes = evaluations_until_filled(key, task, cfg, filtering)

    state = ga.init(key, task, cfg)
    assert int(state.bound_drops) == drops
    assert float(state.bound) == pytest.approx(0.51)
    assert bool(state.fallback)
    assert int(state.n_evals) == want_evals
    assert sorted_rows(state.genomes) == sorted_rows(want_genomes)
    np.testing.assert_array_equal(np.asarray(state.acc), 0.5)  # accepted below the floor: no filter


def test_floor_rule_immediate_is_the_start_carry_at_the_floor():
    task = chance_task((2, 1, 2))
    cfg = ga.GAConfig(pop_size=8, variant="adaptive_ab", bound_start=0.51, floor_rule="immediate")
    assert bool(ga.start_carry(task, cfg)["fallback"])
    assert not bool(ga.start_carry(task, cfg.replace(floor_rule="patience"))["fallback"])
    assert not bool(ga.start_carry(task, cfg.replace(bound_start=0.6))["fallback"])


# ----------------------------------------------------------------------------------------------
# item 3: the bound carried over seeds


@pytest.fixture(scope="module")
def moons_task():
    d = moons(n_train=2000, n_test=500)
    return ga.make_task(MLP((2, 20, 2)), d.x_train, d.y_train, d.x_test, d.y_test)


CARRY = ga.GAConfig(
    pop_size=8,
    variant="adaptive_ab",
    min_generations=3,
    patience=2,
    max_generations=6,
    bound_start=0.85,
    bound_patience=16,
    bound_carry=True,
)


def test_bound_carry_order(moons_task):
    """run_seeds with bound_carry = a chain of runs, each starting from the previous run's final bound."""
    keys = jax.random.split(jax.random.key(8), 4)
    states, hists = ga.run_seeds(keys, moons_task, CARRY)
    drops = np.asarray(states.bound_drops)
    assert drops[0] > 0  # the chain is not trivial: seed 0 lowered the bound
    assert (np.diff(drops) >= 0).all()  # the bound only goes down along the chain
    carry = None
    for s in range(len(keys)):
        st, h = ga.run(keys[s], moons_task, CARRY, carry)
        one = jax.tree_util.tree_map(lambda x, s=s: x[s], (states, hists))
        assert jax.tree_util.tree_all(
            jax.tree_util.tree_map(
                lambda a, b: np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True), (st, h), one
            )
        ), s
        if carry is not None:  # seed s began where seed s − 1 ended: its init has at least those drops
            init = ga.init(ga.split_run_key(keys[s])[0], moons_task, CARRY, carry)
            assert int(init.bound_drops) >= int(carry["bound_drops"])
            assert float(init.bound) <= float(carry["bound"])
            np.testing.assert_allclose(
                float(init.bound), float(ga.adaptive_bound(0.85, 0.51, int(init.bound_drops))), rtol=1e-6
            )
        carry = ga.bound_carry_of(st)
    # seed 0 is a fresh run; without the carry seed 1 starts at 0.85 again and ends elsewhere
    fresh = CARRY.replace(bound_carry=False)
    st0, _ = ga.run(keys[0], moons_task, fresh)
    assert int(st0.bound_drops) == drops[0]
    st1, _ = ga.run(keys[1], moons_task, fresh)
    assert int(st1.bound_drops) < drops[1]
    # the order matters: the same keys reversed give another chain
    rev, _ = ga.run_seeds(keys[::-1], moons_task, CARRY)
    assert not np.array_equal(np.asarray(rev.bound_drops)[::-1], drops)


def test_run_seeds_without_carry_is_vmap(moons_task):
    keys = jax.random.split(jax.random.key(9), 2)
    cfg = CARRY.replace(bound_carry=False)
    states, _ = ga.run_seeds(keys, moons_task, cfg)
    for s in range(2):
        st, _ = ga.run(keys[s], moons_task, cfg)
        np.testing.assert_array_equal(np.asarray(states.genomes[s]), np.asarray(st.genomes))
    with pytest.raises(ValueError, match="bound_carry"):
        ga.run_seeds(keys, moons_task, cfg, ga.start_carry(moons_task, cfg))
    with pytest.raises(ValueError, match="adaptive_ab"):
        ga.init(keys[0], moons_task, cfg.replace(variant="static_ab"), ga.start_carry(moons_task, cfg))


def test_experiment_runs_carried_seeds_in_order(tmp_path):
    """The driver's seeds (one at a time, each from the previous seed's recorded bound) are the chain."""
    exp = slt.parse_config(
        {
            "name": "carry",
            "dataset": "moons",
            "dataset_args": {"n_train": 2000, "n_test": 500},
            "networks": {"A": {"sizes": [2, 20, 2]}},
            "variants": ["adaptive_ab"],
            "seeds": 3,
            "ga": {
                "population_size": 8,
                "min_generations": 3,
                "patience": 2,
                "max_generations": 6,
                "bound_start": 0.85,
                "bound_patience": 16,
                "bound_carry": True,
            },
        }
    )
    path = slt.run_experiment(exp, out=tmp_path, console=Console(file=io.StringIO(), width=150))
    rows = [json.loads(x) for x in (path / "results.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1, 2]
    data = moons(n_train=2000, n_test=500)
    task = ga.make_task(MLP((2, 20, 2)), data.x_train, data.y_train, data.x_test, data.y_test)
    cfg = exp.ga.for_variant("adaptive_ab")
    states, _ = ga.run_seeds(seed_keys(exp.seed, 3), task, cfg)
    assert [r["bound_drops"] for r in rows] == np.asarray(states.bound_drops).tolist()
    assert [r["final_bound"] for r in rows] == np.asarray(states.bound).tolist()
    assert [r["bound_fallback"] for r in rows] == np.asarray(states.fallback).tolist()
    assert [r["generations"] for r in rows] == np.asarray(states.generation).tolist()


# ----------------------------------------------------------------------------------------------
# defaults and keys


def test_new_fields_default_to_the_earlier_rules():
    cfg = ga.GAConfig()
    assert (cfg.ab_mutation, cfg.floor_rule, cfg.bound_carry) == ("bit", "patience", False)
    assert config_lib.nondefault(cfg) == {}
    original = cfg.replace(ab_mutation="layer_uniform", floor_rule="immediate", bound_carry=True)
    assert config_lib.nondefault(original.for_variant("ga")) == {}
    assert config_lib.nondefault(original.for_variant("static_ab")) == {
        "variant": "static_ab",
        "ab_mutation": "layer_uniform",
    }
    assert config_lib.nondefault(original.for_variant("adaptive_ab")) == {
        "variant": "adaptive_ab",
        "floor_rule": "immediate",
        "bound_carry": True,
        "ab_mutation": "layer_uniform",
    }
    assert original.for_variant("adaptive_ab").carries_bound
    assert not original.for_variant("static_ab").carries_bound
    assert not original.carries_bound  # variant ga


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ab_mutation": "layer"}, "ab_mutation"),
        ({"floor_rule": "never"}, "floor_rule"),
        ({"bound_carry": 1}, "bound_carry"),
    ],
)
def test_bad_new_fields_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ga.GAConfig(**kwargs)


def test_plan_keys_the_ga_branch_without_the_ab_fields(tmp_path):
    base = {
        "name": "keys",
        "dataset": "moons",
        "networks": {"D": {"sizes": list(D)}},
        "variants": ["ga", "adaptive_ab", "static_ab"],
    }
    plain = {j.name: j for j in slt.plan(slt.parse_config(base), tmp_path)}
    orig = slt.parse_config(
        {**base, "ga": {"ab_mutation": "layer_uniform", "floor_rule": "immediate", "bound_carry": True}}
    )
    jobs = {j.name: j for j in slt.plan(orig, tmp_path)}
    assert jobs["D/ga"].branch.relpath == plain["D/ga"].branch.relpath
    assert jobs["D/ga"].spec == plain["D/ga"].spec
    for name in ("D/adaptive_ab", "D/static_ab"):
        assert jobs[name].branch.relpath != plain[name].branch.relpath
    assert jobs["D/static_ab"].spec.ab_mutation == "layer_uniform"
    assert not jobs["D/static_ab"].spec.bound_carry
    assert jobs["D/adaptive_ab"].spec.carries_bound
