"""The strong-lottery-ticket genetic algorithm of Altmann et al. (2024) as pure jitted functions.

A genome is a flat bit vector over the prunable weights (kernels; biases are never masked) of an MLP whose
weights AND biases are drawn once from U[-1, 1] and stay frozen. One generation (``step``):

1. The population is kept sorted (best first). Each individual becomes a first parent with probability
   ``rec_rate``; its mate is uniform over the top ``int(par_rate · N)``; the child takes every bit from one
   of the two parents with probability 1/2 (uniform crossover).
2. Every individual of the enlarged population (survivors + children) spawns, with probability
   ``mut_rate``, one mutant with exactly one flipped bit: a uniformly chosen bit, or (AB variants with
   ``ab_mutation="layer_uniform"``) a uniformly chosen layer, then a uniformly chosen connection inside it.
3. ``m = int(mig_rate · N)`` fresh individuals are appended (Bernoulli(1/2) bits).
4. Survivor selection: sort by (fitness desc, number of zero bits desc, index asc) and keep the top N —
   fully elitist, so the best fitness never decreases.

Fitness is the train accuracy (paper) or −cross-entropy (``fitness="cross_entropy"``, the multi-class
follow-up); NaN fitness ranks last. Survivors keep their fitness; only new members are evaluated, in blocks
of ``eval_block`` after compacting the valid ones to the front (fixed shapes, nothing recompiles).

Variants
--------
* ``"ga"`` — the initial population and migrants are Bernoulli(1/2) masks.
* ``"adaptive_ab"`` — fresh individuals (initial population and migrants) are only accepted when their train
  accuracy reaches the accuracy bound. The bound starts at 0.85 (0.7 for small nets: the original's rule —
  one hidden layer narrower than 40, or two hidden layers both narrower than 30) and,
  every time ``bound_patience`` proposals in a row have been rejected, drops by ``0.1**n`` with
  n = 1, 1.15, 1.30, …, never below ``bound_floor`` (0.51). The original code lowered it by wall-clock
  seconds; counting proposals makes it deterministic. At the floor the filter gives way to a fallback:
  any proposal with an input→output path is accepted. With ``floor_rule="patience"`` (the default, kept
  so that finished runs keep their numbers) the floor itself still filters until ``bound_patience`` more
  proposals have been rejected; ``floor_rule="immediate"`` is the original's rule
  (``generate_lax_connectivity_learned_accuracy_filter``: a bound equal to 0.51 stops filtering at once).
  Every run starts at the start bound unless ``bound_carry``: then seed s + 1 starts from the bound (and
  the number of drops, and the fallback) that seed s ended with, as the original's bound did, kept in a
  module-level dict shared by all runs of one process (``run_seeds`` then runs the seeds one after
  another, in order; see ``bound_carry_of``).
* ``"static_ab"`` — the same with a fixed bound (``static_bound``) and the same fallback after
  ``bound_patience`` rejections (the original's static AB has none: it draws until a proposal passes).

The AB variants by default also re-draw children and mutants (up to ``repair_tries`` times) until an
input→output path exists (``repair``). Their mutation flips a uniformly chosen bit (``ab_mutation="bit"``,
the default) or is the original's ``single_point_mutation`` → ``apply_mutation``
(``ab_mutation="layer_uniform"``): a layer (kernel) uniformly, then a connection uniformly inside it, so
each bit of a layer of n_l connections is hit with probability 1 / (n_layers · n_l) — equal to the
uniform bit's 1/L only when all layers are equally large (not for the paper's D, [2, 50, 50, 2]: 1/300
per bit in the 100-bit outer layers, 1/7500 in the 2500-bit middle one, where a uniform bit gives 1/2700).
The plain GA always flips a uniform bit (the original's ``single_point_mutation_negligent_optimized``).
Fields a variant does not read are reset to their defaults by ``GAConfig.for_variant`` (the run store's
keys).

Termination (``run``): at least ``min_generations`` (100) generations and no change of the best fitness in
the last ``patience`` (50); the adaptive variant stops at 200 generations, the others at
``max_generations`` (default 1000, a safety cap reported as ``capped``).

Everything is a pure function of an explicit key: ``init(key, task, config)``, ``step(key, state, task,
config)``, ``run(key, task, config)``; ``run`` is ``lax.while_loop`` over ``step`` with the key
``generation_key(key, g)`` for generation g, and ``jax.vmap(run, in_axes=(0, None, None))`` runs many seeds
(``run_seeds``: the same, or in order with ``bound_carry``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from es_lottery import masks as masks_lib
from es_lottery import networks
from es_lottery._checks import check_bool, check_choice, check_int, check_rate
from es_lottery.keys import split_run_key
from es_lottery.networks import MLP
from es_lottery.search._generations import advance_search, generation_key, history_buffers
from es_lottery.tasks import base as tasks_base
from es_lottery.tasks import classification

VARIANTS = ("ga", "adaptive_ab", "static_ab")
FITNESS = ("accuracy", "cross_entropy")
#: the one-bit mutation of the AB variants: "bit" — a uniformly chosen bit (ours from the start);
#: "layer_uniform" — a uniformly chosen layer, then a uniformly chosen connection inside it (the original's
#: single_point_mutation → apply_mutation)
AB_MUTATIONS = ("bit", "layer_uniform")
#: adaptive AB at the floor: "patience" — the floor still filters until bound_patience more rejected
#: proposals, then any proposal with a path is accepted (ours from the start); "immediate" — the filter
#: stops as soon as the bound reaches the floor (the original)
FLOOR_RULES = ("patience", "immediate")
#: fields read by some variants only → those variants (``GAConfig.for_variant``)
VARIANT_FIELDS = {
    "ab_mutation": ("adaptive_ab", "static_ab"),
    "floor_rule": ("adaptive_ab",),
    "bound_carry": ("adaptive_ab",),
}
ADAPTIVE_CAP = 200
DEFAULT_CAP = 1000
EVAL_KEY = 104729  # evaluation keys are fold_in(generation key, EVAL_KEY) (unused by classification)
EVAL_WIDEST = 256  # the layer width make_task's test evaluation plans its data chunk with (as the tables)

__all__ = [
    "AB_MUTATIONS",
    "FLOOR_RULES",
    "VARIANTS",
    "VARIANT_FIELDS",
    "GAConfig",
    "GAState",
    "adaptive_bound",
    "advance",
    "bound_carry_of",
    "carry_from_result",
    "diversity",
    "empty_history",
    "evaluate_final",
    "generation_key",
    "has_path",
    "init",
    "layer_sizes",
    "make_task",
    "run",
    "run_seeds",
    "select_survivors",
    "should_stop",
    "split_run_key",
    "start_carry",
    "step",
]


# ----------------------------------------------------------------------------------------------
# configuration and task


@dataclass(frozen=True)
class GAConfig:
    """Static GA settings (hashable; passed as a static argument). Defaults are the paper's, except
    ``floor_rule``, ``bound_carry`` and ``ab_mutation``: their defaults keep the rules this code had before
    they existed (the run store keys a job by its non-default fields), the original's are the other
    values (see the module doc)."""

    pop_size: int = 100
    rec_rate: float = 0.3
    par_rate: float = 0.3
    mut_rate: float = 0.1
    mig_rate: float = 0.1
    variant: str = "ga"
    fitness: str = "accuracy"
    min_generations: int = 100
    patience: int = 50
    max_generations: int | None = None  # None: 200 for adaptive_ab, else 1000
    bound_start: float | None = None  # None: 0.85, or 0.7 for small nets (see the module doc)
    bound_floor: float = 0.51
    static_bound: float = 0.7
    bound_patience: int = 500  # rejected proposals before the adaptive bound drops one step
    floor_rule: Literal["patience", "immediate"] = field(
        default="patience",
        metadata={
            "doc": "adaptive AB at the floor: patience — it still filters until bound_patience more "
            "rejected proposals, then any proposal with an input→output path is accepted; immediate — "
            "filtering stops as soon as the bound reaches the floor (the original's rule)"
        },
    )
    bound_carry: bool = field(
        default=False,
        metadata={
            "doc": "adaptive AB: seed s + 1 starts from the bound (and drop count) seed s ended with, as "
            "the original's process-wide bound did; false: every seed starts at the start bound. True "
            "runs a job's seeds one after another, in order"
        },
    )
    ab_mutation: Literal["bit", "layer_uniform"] = field(
        default="bit",
        metadata={
            "doc": "AB variants' one-bit mutation: bit — a uniformly chosen bit; layer_uniform — a "
            "uniformly chosen layer, then a uniformly chosen connection inside it (the original's "
            "single_point_mutation). The plain GA always flips a uniform bit"
        },
    )
    repair: bool | None = None  # None: True for the AB variants
    repair_tries: int = 50
    eval_block: int | None = None  # members evaluated per block; None: ≈ 1.25 × the expected new ones
    chunk_size: int | str | None = "auto"

    def __post_init__(self):
        check_int(self.pop_size, "pop_size", 2)
        for f in ("rec_rate", "par_rate", "mut_rate", "mig_rate"):
            check_rate(getattr(self, f), f)
        if int(self.par_rate * self.pop_size) < 1:
            raise ValueError(
                f"par_rate · pop_size must be ≥ 1 (mates come from the top), got {self.par_rate}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; allowed: {', '.join(VARIANTS)}")
        if self.fitness not in FITNESS:
            raise ValueError(f"unknown fitness {self.fitness!r}; allowed: {', '.join(FITNESS)}")
        check_int(self.min_generations, "min_generations", 0)
        check_int(self.patience, "patience", 1)
        if self.max_generations is not None:
            check_int(self.max_generations, "max_generations", 1)
        for f in ("bound_floor", "static_bound"):
            check_rate(getattr(self, f), f)
        if self.bound_start is not None:
            check_rate(self.bound_start, "bound_start")
        check_int(self.bound_patience, "bound_patience", 1)
        check_choice(self.floor_rule, FLOOR_RULES, "floor_rule")
        check_bool(self.bound_carry, "bound_carry")
        check_choice(self.ab_mutation, AB_MUTATIONS, "ab_mutation")
        check_int(self.repair_tries, "repair_tries", 0)
        if self.eval_block is not None:
            check_int(self.eval_block, "eval_block", 1)

    @property
    def n_migrants(self) -> int:
        return int(self.mig_rate * self.pop_size)

    @property
    def n_mates(self) -> int:
        return int(self.par_rate * self.pop_size)

    @property
    def cap(self) -> int:
        if self.max_generations is not None:
            return self.max_generations
        return ADAPTIVE_CAP if self.variant == "adaptive_ab" else DEFAULT_CAP

    def for_variant(self, variant: str) -> GAConfig:
        """This config for ``variant``, with the fields that variant does not read (``VARIANT_FIELDS``)
        at their defaults — so they key no run of it in the store."""
        cfg = self.replace(variant=variant)
        unread = {
            f.name: f.default
            for f in dataclasses.fields(cfg)
            if f.name in VARIANT_FIELDS and variant not in VARIANT_FIELDS[f.name]
        }
        return cfg.replace(**unread) if unread else cfg

    @property
    def carries_bound(self) -> bool:
        """Does seed s + 1 start from the bound seed s ended with (adaptive AB with ``bound_carry``)?"""
        return self.variant == "adaptive_ab" and self.bound_carry

    @property
    def use_repair(self) -> bool:
        return self.variant != "ga" if self.repair is None else bool(self.repair)

    @property
    def block(self) -> int:
        if self.eval_block is not None:
            return self.eval_block
        n = self.pop_size
        expected = self.rec_rate * n + self.mut_rate * n * (1 + self.rec_rate) + self.n_migrants
        return max(8, math.ceil(1.25 * expected / 8.0) * 8)

    def replace(self, **kw) -> GAConfig:
        return dataclasses.replace(self, **kw)


def make_task(
    module: nn.Module,
    x_train,
    y_train,
    x_test,
    y_test,
    num_classes: int | None = None,
    config: GAConfig | None = None,
) -> classification.ClassificationTask:
    """The strong-ticket classification task (``module`` must be an ``MLP``; labels int).

    Fitness on the whole train split: the train accuracy, or −cross-entropy with
    ``config.fitness="cross_entropy"`` (accuracy is reported either way: the AB variants bound it); the
    final population is scored by test accuracy. ``config.chunk_size`` sets the data chunk. The GA runs
    on any task of the protocol (``es_lottery.tasks.base``); this builds the paper's.
    """
    if not isinstance(module, MLP):
        raise TypeError(f"arch must be an MLP for the strong-ticket GA, got {type(module).__name__}")
    config = GAConfig() if config is None else config
    if not isinstance(config, GAConfig):
        raise TypeError(f"config must be a GAConfig, got {type(config).__name__}")
    module.validate()
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if np.ndim(x) != 2 or np.shape(x)[1] != module.sizes[0]:
            raise ValueError(f"{name} must have shape (n, {module.sizes[0]}), got {np.shape(x)}")
    return classification.make_task(
        module,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        objective=config.fitness,
        extra_metrics=("accuracy",),
        eval_metrics=("accuracy",),
        eval_widest=EVAL_WIDEST,
        chunk_size=config.chunk_size,
    )


# ----------------------------------------------------------------------------------------------
# genome ↔ mask trees


def _template(like):
    """The params structure (shapes) of a network module or of a params tree."""
    if isinstance(like, nn.Module):
        return jax.eval_shape(lambda: networks.init_params(jax.random.key(0), like))
    return like


def genome_length(like) -> int:
    """Mask bits of a genome: the prunable weights of ``like`` (a network module or a params tree)."""
    return networks.num_prunable(_template(like))


def layer_sizes(like) -> tuple[int, ...]:
    """Mask bits of each prunable leaf (an MLP's kernels: its layers of connections), in genome order."""
    tmpl = _template(like)
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(tmpl))
    leaves = jax.tree_util.tree_leaves(tmpl)
    return tuple(int(np.prod(leaf.shape)) for leaf, is_p in zip(leaves, flags, strict=True) if is_p)


def genomes_to_masks(like, genomes: jax.Array):
    """(B, L) bool genomes → a mask tree with leading axis B (biases all ones); ``like``: the network
    module or a params tree of the same structure."""
    tmpl = _template(like)
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(tmpl))
    leaves, treedef = jax.tree_util.tree_flatten(tmpl)
    out, offset = [], 0
    b = genomes.shape[0]
    for leaf, is_p in zip(leaves, flags, strict=True):
        if is_p:
            n = int(np.prod(leaf.shape))
            out.append(genomes[:, offset : offset + n].reshape((b, *leaf.shape)))
            offset += n
        else:
            out.append(jnp.ones((b, *leaf.shape), bool))
    return jax.tree_util.tree_unflatten(treedef, out)


def has_path(module: MLP, genomes: jax.Array) -> jax.Array:
    """(B,) bool: does the masked MLP connect some input to some output?"""
    m = genomes_to_masks(module, genomes)
    reach = jnp.ones((genomes.shape[0], module.sizes[0]), bool)
    for i in range(len(module.sizes) - 1):
        k = m[f"dense_{i}"]["kernel"]  # (B, in, out)
        reach = jnp.any(reach[:, :, None] & k, axis=1)
    return jnp.any(reach, axis=1)


# ----------------------------------------------------------------------------------------------
# state


@struct.dataclass
class GAState:
    params: dict  # the frozen random weights and biases
    genomes: jax.Array  # (N, L) bool, sorted best first
    fit: jax.Array  # (N,) primary fitness (accuracy or −CE), higher is better
    acc: jax.Array  # (N,) train accuracy
    zeros: jax.Array  # (N,) int32 number of zero bits
    generation: jax.Array
    best_fit: jax.Array
    last_change: jax.Array  # generation at which best_fit last changed
    best_ever_sparsity: jax.Array
    bound: jax.Array  # current accuracy bound (AB variants)
    bound_drops: jax.Array
    rejects: jax.Array  # rejected proposals since the bound last dropped
    fallback: jax.Array  # the bound's floor failed too: accept any proposal with a path
    n_evals: jax.Array  # total network evaluations so far
    task_state: object = None  # the task's state (None for classification)


def adaptive_bound(start: float, floor: float, drops) -> jax.Array:
    """Bound after ``drops`` steps: start − Σ_{i<drops} 0.1**(1 + 0.15 i), clipped at ``floor``."""
    i = jnp.arange(64, dtype=jnp.float32)
    steps = jnp.where(i < drops, 0.1 ** (1.0 + 0.15 * i), 0.0)
    return jnp.maximum(jnp.float32(floor), jnp.float32(start) - jnp.sum(steps))


def _at_floor(bound, config: GAConfig):
    return bound <= config.bound_floor + 1e-6


def bound_carry_of(state: GAState) -> dict:
    """What seed s + 1 takes over from seed s's final ``state`` with ``bound_carry``: the bound, the
    number of drops (the original's ``num_rec``: the size of the next drop) and the fallback flag. The
    count of rejected proposals starts afresh, as the original's per-call counter did."""
    return {"bound": state.bound, "bound_drops": state.bound_drops, "fallback": state.fallback}


def start_carry(task, config: GAConfig) -> dict:
    """The bound state of a fresh adaptive-AB run (what ``init`` starts from without a ``carry``)."""
    start = _bound_start(config, getattr(task, "module", None))
    at_floor = config.floor_rule == "immediate" and bool(_at_floor(start, config))
    return {"bound": jnp.float32(start), "bound_drops": jnp.int32(0), "fallback": jnp.bool_(at_floor)}


def carry_from_result(result: dict) -> dict:
    """``bound_carry_of`` of a run from its recorded ``evaluate_final`` values (a result row)."""
    return {
        "bound": jnp.float32(result["final_bound"]),
        "bound_drops": jnp.int32(result["bound_drops"]),
        "fallback": jnp.bool_(result["bound_fallback"]),
    }


def _bound_start(config: GAConfig, module) -> float:
    if config.variant == "static_ab":
        return config.static_bound
    if config.bound_start is not None:
        return config.bound_start
    if not isinstance(module, MLP):
        return 0.85
    hidden = module.sizes[1:-1]
    # the original's rule: one hidden layer narrower than 40, or two hidden layers both narrower than 30
    small = (len(hidden) == 1 and hidden[0] < 40) or (len(hidden) == 2 and max(hidden) < 30)
    return 0.7 if small else 0.85


def _module(task, config: GAConfig):
    """The task's network; repair (AB variants) needs an ``MLP`` to check input→output paths."""
    module = getattr(task, "module", None)
    if config.use_repair and not isinstance(module, MLP):
        raise ValueError(
            f"repair (the AB variants' path check) needs a task with an MLP 'module', got "
            f"{type(module).__name__}; set repair=False"
        )
    return module


# ----------------------------------------------------------------------------------------------
# evaluation


def _evaluate(task, config: GAConfig, params, genomes, task_state, key):
    """(fit, acc, task state) of (B, L) genomes: the task's fitness of the masked shared weights; ``acc``
    is the task's ``"accuracy"`` metric (its fitness when it reports none). NaN fitness → −inf."""
    masks = genomes_to_masks(params, genomes)
    members = tasks_base.MaskedPopulation(params, masks, shared=True)
    fit, metrics, task_state = tasks_base.fitness_metrics(task, task_state, key, members)
    acc = metrics.get("accuracy", fit)
    fit = jnp.where(jnp.isnan(fit), -jnp.inf, fit)
    return fit, acc, task_state


def _evaluate_valid(task, config: GAConfig, params, genomes, valid, task_state, key):
    """Evaluate only the valid rows of ``genomes`` (C, L), in blocks; invalid rows get fit = −inf.
    Block b evaluates with ``fold_in(key, b)``.

    Returns (fit, acc, n_evaluated, task state).
    """
    cap, length = genomes.shape
    block = min(config.block, cap)
    order = jnp.argsort(~valid, stable=True)  # valid rows first, in their order
    packed = genomes[order]
    count = jnp.sum(valid, dtype=jnp.int32)
    n_blocks_max = -(-cap // block)
    padded = jnp.concatenate([packed, jnp.zeros((n_blocks_max * block - cap, length), bool)])
    fit0 = jnp.full((n_blocks_max * block,), -jnp.inf, jnp.float32)

    def body(carry):
        b, fit, acc, ts = carry
        rows = jax.lax.dynamic_slice_in_dim(padded, b * block, block)
        f, a, ts = _evaluate(task, config, params, rows, ts, jax.random.fold_in(key, b))
        fit = jax.lax.dynamic_update_slice_in_dim(fit, f, b * block, 0)
        acc = jax.lax.dynamic_update_slice_in_dim(acc, a, b * block, 0)
        return b + 1, fit, acc, ts

    init = (0, fit0, jnp.zeros_like(fit0), task_state)
    _, fit, acc, task_state = jax.lax.while_loop(lambda c: c[0] * block < count, body, init)
    in_range = jnp.arange(cap) < count
    fit_packed = jnp.where(in_range, fit[:cap], -jnp.inf)
    acc_packed = jnp.where(in_range, acc[:cap], 0.0)
    inverse = jnp.zeros(cap, jnp.int32).at[order].set(jnp.arange(cap, dtype=jnp.int32))
    return fit_packed[inverse], acc_packed[inverse], count, task_state


def _fresh(key, task, config: GAConfig, state: GAState, need: int):
    """``need`` fresh individuals, with their fitness, honouring the accuracy bound of the AB variants.

    Returns (genomes, fit, acc, state) with the bound bookkeeping, ``n_evals`` and the task state updated.
    """
    length = state.genomes.shape[1]
    batch = max(config.block, need) if config.variant != "ga" else need
    module = _module(task, config)

    if config.variant == "ga":
        g = jax.random.bernoulli(key, 0.5, (need, length))
        k_eval = jax.random.fold_in(key, EVAL_KEY)
        fit, acc, n, ts = _evaluate_valid(
            task, config, state.params, g, jnp.ones(need, bool), state.task_state, k_eval
        )
        return g, fit, acc, state.replace(n_evals=state.n_evals + n, task_state=ts)

    start = _bound_start(config, module)
    adaptive = config.variant == "adaptive_ab"

    def cond(c):
        return c[0] < need

    def body(c):
        filled, g_buf, f_buf, a_buf, st, k = c
        k, kb = jax.random.split(k)
        props = jax.random.bernoulli(kb, 0.5, (batch, length))
        fit, acc, n, ts = _evaluate_valid(
            task,
            config,
            st.params,
            props,
            jnp.ones(batch, bool),
            st.task_state,
            jax.random.fold_in(kb, EVAL_KEY),
        )
        path = has_path(module, props) if config.use_repair else jnp.ones(batch, bool)
        ok = jnp.where(st.fallback, path, (acc >= st.bound) & path)
        rank = jnp.cumsum(ok) - 1
        take = ok & (rank < need - filled)
        pos = jnp.where(take, filled + rank, need)  # out-of-range rows are dropped
        g_buf = g_buf.at[pos].set(props, mode="drop")
        f_buf = f_buf.at[pos].set(fit, mode="drop")
        a_buf = a_buf.at[pos].set(acc, mode="drop")
        n_ok = jnp.sum(take, dtype=jnp.int32)
        rejects = jnp.where(n_ok > 0, 0, st.rejects + batch)
        exhausted = rejects >= config.bound_patience
        can_drop = adaptive & (st.bound > config.bound_floor + 1e-6) & ~st.fallback
        drops = st.bound_drops + (exhausted & can_drop).astype(jnp.int32)
        bound = adaptive_bound(start, config.bound_floor, drops) if adaptive else st.bound
        fallback = st.fallback | (exhausted & ~can_drop)
        if adaptive and config.floor_rule == "immediate":  # the original: no filtering at the floor
            fallback = fallback | _at_floor(bound, config)
        st = st.replace(
            bound=bound,
            bound_drops=drops,
            rejects=jnp.where(exhausted, 0, rejects),
            fallback=fallback,
            n_evals=st.n_evals + n,
            task_state=ts,
        )
        return filled + n_ok, g_buf, f_buf, a_buf, st, k

    init = (
        jnp.int32(0),
        jnp.zeros((need, length), bool),
        jnp.full((need,), -jnp.inf, jnp.float32),
        jnp.zeros((need,), jnp.float32),
        state,
        key,
    )
    _, g, f, a, state, _ = jax.lax.while_loop(cond, body, init)
    return g, f, a, state


# ----------------------------------------------------------------------------------------------
# selection, operators, bookkeeping


def select_survivors(fit, zeros, n: int):
    """Indices of the top ``n`` by (fit desc, zeros desc, index asc); NaN fitness ranks last."""
    fit = jnp.where(jnp.isnan(fit), -jnp.inf, fit)
    idx = jnp.arange(fit.shape[0], dtype=jnp.int32)
    _, _, order = jax.lax.sort((-fit, -zeros.astype(jnp.int32), idx), num_keys=3)
    return order[:n]


def diversity(genomes) -> jax.Array:
    """Mean pairwise Hamming distance of (N, L) genomes, as a fraction of L."""
    n, length = genomes.shape
    ones = jnp.sum(genomes, axis=0, dtype=jnp.float32)
    return jnp.sum(2.0 * ones * (n - ones)) / (n * (n - 1) * length)


def should_stop(generation, last_change, config: GAConfig):
    """The paper's rule: ≥ min_generations and no change of the best fitness in the last ``patience``."""
    return ((generation >= config.min_generations) & (generation - last_change >= config.patience)) | (
        generation >= config.cap
    )


def _crossover(key, a, b):
    return jnp.where(jax.random.bernoulli(key, 0.5, a.shape), a, b)


def _flip_one(key, g):
    pos = jax.random.randint(key, g.shape[:-1], 0, g.shape[-1])
    hit = jnp.arange(g.shape[-1]) == pos[..., None]
    return g ^ hit


def _flip_one_layer_uniform(key, g, sizes: tuple[int, ...]):
    """Flip one bit per row of ``g``: a layer uniformly (``sizes``: its bits per layer, in genome order),
    then a bit uniformly inside it — the original's ``apply_mutation``."""
    if sum(sizes) != g.shape[-1]:
        raise ValueError(f"layer sizes {sizes} do not add up to the genome length {g.shape[-1]}")
    k_layer, k_bit = jax.random.split(key)
    offsets = jnp.asarray(np.concatenate([[0], np.cumsum(sizes)[:-1]]), jnp.int32)
    counts = jnp.asarray(sizes, jnp.int32)
    layer = jax.random.randint(k_layer, g.shape[:-1], 0, len(sizes))
    pos = offsets[layer] + jax.random.randint(k_bit, g.shape[:-1], 0, counts[layer])
    hit = jnp.arange(g.shape[-1]) == pos[..., None]
    return g ^ hit


def _mutate(key, g, config: GAConfig, params):
    """One flipped bit per row of ``g`` by the variant's rule (``ab_mutation`` for the AB variants)."""
    if config.variant != "ga" and config.ab_mutation == "layer_uniform":
        return _flip_one_layer_uniform(key, g, layer_sizes(params))
    return _flip_one(key, g)


def _repair(key, module, config: GAConfig, make, valid):
    """Draw ``make(key)`` and re-draw the valid rows without an input→output path (up to repair_tries)."""
    g = make(key)
    if not config.use_repair:
        return g

    def cond(c):
        t, g = c
        return (t < config.repair_tries) & jnp.any(valid & ~has_path(module, g))

    def body(c):
        t, g = c
        bad = valid & ~has_path(module, g)
        return t + 1, jnp.where(bad[:, None], make(jax.random.fold_in(key, t + 1)), g)

    return jax.lax.while_loop(cond, body, (0, g))[1]


def _record(state: GAState, n_new, config: GAConfig) -> dict:
    length = state.genomes.shape[1]
    return {
        "generation": state.generation,
        "best_acc": state.acc[0],
        "best_fit": state.fit[0],
        "sparsity_fittest": state.zeros[0] / length,
        "best_sparsity": jnp.max(state.zeros) / length,
        "best_ever_sparsity": state.best_ever_sparsity,
        "diversity": diversity(state.genomes),
        "n_evals": n_new,
        "bound": state.bound,
    }


# ----------------------------------------------------------------------------------------------
# the algorithm


@partial(jax.jit, static_argnames=("config",))
def init(key: jax.Array, task, config: GAConfig, carry: dict | None = None) -> GAState:
    """Draw the frozen weights (``task.init_params``), the task state and the initial population
    (evaluated and sorted).

    ``carry`` (adaptive AB): the bound state a previous run ended with (``bound_carry_of``), used
    instead of the start bound — ``bound_carry``'s seed-to-seed hand-over; None: a fresh start."""
    k_params, k_pop = jax.random.split(key)
    params = task.init_params(k_params)
    length = genome_length(params)
    n = config.pop_size
    start = _bound_start(config, getattr(task, "module", None)) if config.variant != "ga" else 0.0
    fallback0 = jnp.bool_(False)
    if config.variant == "adaptive_ab" and config.floor_rule == "immediate":
        fallback0 = jnp.bool_(bool(_at_floor(start, config)))
    bound0, drops0 = jnp.float32(start), jnp.int32(0)
    if carry is not None:
        if config.variant != "adaptive_ab":
            raise ValueError(f"carry is for the adaptive_ab variant, not {config.variant!r}")
        bound0 = jnp.asarray(carry["bound"], jnp.float32)
        drops0 = jnp.asarray(carry["bound_drops"], jnp.int32)
        fallback0 = jnp.asarray(carry["fallback"], bool)
        if config.floor_rule == "immediate":
            fallback0 = fallback0 | _at_floor(bound0, config)
    state = GAState(
        params=params,
        genomes=jnp.zeros((n, length), bool),
        fit=jnp.full((n,), -jnp.inf, jnp.float32),
        acc=jnp.zeros((n,), jnp.float32),
        zeros=jnp.zeros((n,), jnp.int32),
        generation=jnp.int32(0),
        best_fit=jnp.float32(-jnp.inf),
        last_change=jnp.int32(0),
        best_ever_sparsity=jnp.float32(0.0),
        bound=bound0,
        bound_drops=drops0,
        rejects=jnp.int32(0),
        fallback=fallback0,
        n_evals=jnp.int32(0),
        task_state=task.init_state(jax.random.fold_in(k_params, EVAL_KEY)),
    )
    g, fit, acc, state = _fresh(k_pop, task, config, state, n)
    zeros = length - jnp.sum(g, axis=1, dtype=jnp.int32)
    order = select_survivors(fit, zeros, n)
    state = state.replace(genomes=g[order], fit=fit[order], acc=acc[order], zeros=zeros[order])
    return state.replace(
        best_fit=state.fit[0], best_ever_sparsity=jnp.max(state.zeros).astype(jnp.float32) / length
    )


def _step(key, state: GAState, task, config: GAConfig):
    n, length = state.genomes.shape
    module = _module(task, config)
    k_eval = jax.random.fold_in(key, EVAL_KEY)
    k_par, k_mate, k_cross, k_mut, k_pos, k_mig = jax.random.split(key, 6)

    # 1. recombination: first parents with p = rec_rate, mates uniform over the top par_rate·N
    is_parent = jax.random.bernoulli(k_par, config.rec_rate, (n,))
    mates = jax.random.randint(k_mate, (n,), 0, config.n_mates)
    children = _repair(
        k_cross, module, config, lambda k: _crossover(k, state.genomes, state.genomes[mates]), is_parent
    )

    # 2. mutation: each member of survivors + children spawns a one-bit mutant with p = mut_rate
    enlarged = jnp.concatenate([state.genomes, children])
    enlarged_valid = jnp.concatenate([jnp.ones(n, bool), is_parent])
    spawn = enlarged_valid & jax.random.bernoulli(k_mut, config.mut_rate, (2 * n,))
    mutants = _repair(k_pos, module, config, lambda k: _mutate(k, enlarged, config, state.params), spawn)

    # 3. migrants; evaluate the new members only (survivors keep their fitness)
    new = jnp.concatenate([children, mutants])
    new_valid = jnp.concatenate([is_parent, spawn])
    evals_before = state.n_evals
    if config.variant == "ga":  # plain migrants are evaluated together with children and mutants
        mig = jax.random.bernoulli(k_mig, 0.5, (config.n_migrants, length))
        new = jnp.concatenate([new, mig])
        new_valid = jnp.concatenate([new_valid, jnp.ones(config.n_migrants, bool)])
        fit_new, acc_new, n_eval, ts = _evaluate_valid(
            task, config, state.params, new, new_valid, state.task_state, k_eval
        )
        state = state.replace(n_evals=state.n_evals + n_eval, task_state=ts)
    else:  # bounded migrants come with their fitness from the acceptance loop
        fit_new, acc_new, n_eval, ts = _evaluate_valid(
            task, config, state.params, new, new_valid, state.task_state, k_eval
        )
        state = state.replace(n_evals=state.n_evals + n_eval, task_state=ts)
        mig, fit_mig, acc_mig, state = _fresh(k_mig, task, config, state, config.n_migrants)
        new = jnp.concatenate([new, mig])
        fit_new = jnp.concatenate([fit_new, fit_mig])
        acc_new = jnp.concatenate([acc_new, acc_mig])

    # 4. survivor selection over survivors + new members
    pool = jnp.concatenate([state.genomes, new])
    fit = jnp.concatenate([state.fit, fit_new])
    acc = jnp.concatenate([state.acc, acc_new])
    zeros = length - jnp.sum(pool, axis=1, dtype=jnp.int32)
    zeros = jnp.where(jnp.isneginf(fit), -1, zeros)  # invalid slots sort last
    keep = select_survivors(fit, zeros, n)
    generation = state.generation + 1
    best = fit[keep[0]]
    changed = best != state.best_fit
    state = state.replace(
        genomes=pool[keep],
        fit=fit[keep],
        acc=acc[keep],
        zeros=zeros[keep],
        generation=generation,
        best_fit=best,
        last_change=jnp.where(changed, generation, state.last_change),
        best_ever_sparsity=jnp.maximum(state.best_ever_sparsity, jnp.max(zeros[keep]) / length),
    )
    return state, _record(state, state.n_evals - evals_before, config)


@partial(jax.jit, static_argnames=("config",))
def step(key: jax.Array, state: GAState, task, config: GAConfig):
    """One generation: (state, metrics)."""
    return _step(key, state, task, config)


def empty_history(task, config: GAConfig, state: GAState) -> dict:
    """Per-generation history buffers with ``config.cap`` rows (NaN / −1 padding)."""
    return history_buffers(
        jax.eval_shape(lambda s: _step(jax.random.key(0), s, task, config)[1], state), config.cap
    )


def _advance(k_run, state: GAState, hist: dict, task, config: GAConfig, until):
    return advance_search(_step, should_stop, k_run, state, hist, task, config, until)


@partial(jax.jit, static_argnames=("config",))
def advance(k_run, state: GAState, hist: dict, task, config: GAConfig, until):
    """Run generations until the termination rule or generation ``until`` (for progress reporting).

    Chunks of ``advance`` with the same ``k_run`` reproduce ``run`` exactly.
    """
    return _advance(k_run, state, hist, task, config, until)


@partial(jax.jit, static_argnames=("config",))
def run(key: jax.Array, task, config: GAConfig, carry: dict | None = None):
    """A whole run until the termination rule: (final state, per-generation history).

    The history has ``config.cap`` rows; rows at and after ``state.generation`` are padding (NaN / −1).
    ``carry``: the adaptive bound to start from (see ``init``).
    """
    k_init, k_run = split_run_key(key)
    state = init(k_init, task, config, carry)
    return _advance(k_run, state, empty_history(task, config, state), task, config, config.cap)


@partial(jax.jit, static_argnames=("config",))
def run_seeds(keys: jax.Array, task, config: GAConfig, carry: dict | None = None):
    """``run`` for every key of ``keys`` (stacked final states and histories).

    Without ``bound_carry`` the runs are independent (``vmap``). With it (adaptive AB) they run one after
    another in the order of ``keys``, run i + 1 starting from the bound run i ended with
    (``bound_carry_of``) — the original's bound, kept for all runs of one process; ``carry`` is the bound
    run 0 starts from (None: the start bound).
    """
    if not config.carries_bound:
        if carry is not None:
            raise ValueError("carry needs an adaptive_ab config with bound_carry")
        return jax.vmap(lambda k: run(k, task, config))(keys)

    def one(c, k):
        state, hist = run(k, task, config, c)
        return bound_carry_of(state), (state, hist)

    if carry is None:
        carry = start_carry(task, config)
    return jax.lax.scan(one, carry, keys)[1]


@partial(jax.jit, static_argnames=("config",))
def evaluate_final(state: GAState, task, config: GAConfig) -> dict:
    """Test score (``task.score_key`` of ``evaluate_members``: test accuracy for classification) of the
    train-best individual and the best test score in the final population. A task without test metrics
    (``has_eval`` false) is scored by its fitness. With ``bound_carry`` also ``bound_drops`` and
    ``bound_fallback``: with ``final_bound`` the state the next seed starts from (``carry_from_result``)."""
    masks = genomes_to_masks(state.params, state.genomes)
    members = tasks_base.MaskedPopulation(state.params, masks, shared=True)
    if getattr(task, "has_eval", True):
        test = task.evaluate_members(state.task_state, members)[task.score_key]
    else:
        test = state.fit
    length = state.genomes.shape[1]
    sparsity = state.zeros / length
    best_test = jnp.argmax(test)
    chance = getattr(task, "chance_accuracy", -jnp.inf)
    carried = (
        {"bound_drops": state.bound_drops, "bound_fallback": state.fallback} if config.carries_bound else {}
    )
    return {
        "train_acc": state.acc[0],
        "test_acc": test[0],
        "sparsity": sparsity[0],
        "best_test_acc": test[best_test],
        "best_test_sparsity": sparsity[best_test],
        "generations": state.generation,
        "n_evals": state.n_evals,
        "capped": state.generation >= config.cap,
        "at_chance": state.acc[0] <= chance + 1e-6,
        "final_bound": state.bound,
        **carried,  # bound_carry: what the next seed starts from (with final_bound)
    }
