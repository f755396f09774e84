"""Neuroevolution Ticket Search (NeTS, Jackson et al. 2023) as pure jitted functions.

Weak lottery tickets: a genome is a (weights, mask) pair for every parameter of a network — biases carry
weights only and are never masked (their mask leaves are all ones, as everywhere in this package), except
with the original's bias-free inits (``genome_init``, below). The population (``pop_size`` genomes, leading
axis P on every leaf) is kept sorted best first.

Initial genomes (``genome_init``):

* ``"network"`` (default): the task's ``init_params`` as they are (the network's ``weight_init``; the
  biases are genes, expressed and trained like the weights).
* ``"kaiming_uniform"`` — the original CODE (``nets/genetic.py``, ``init_population``: torch's
  ``kaiming_uniform_(a=√5)``): every prunable kernel entry ~ U(−1/√fan_in, 1/√fan_in), fan_in = the
  product of all kernel dims but the last (dense: inputs; conv: kh·kw·inputs). NO biases: the original's
  search builds its networks with ``bias=False``; here the bias leaves are 0 and their mask leaves are 0,
  so they are never expressed, never trained (masked gradient) and crossover/dormancy/enabling leave them
  off.
* ``"normal"`` — the PAPER's text (§3.1: "a normal distribution with mean 0 and standard deviation 0.1"):
  every prunable kernel entry ~ N(0, 0.1²), no biases as above.

Weight resampling (mutation) draws from the same ``genome_init`` (the paper: "sampled identically to their
original initialisation"; the original code resamples N(0, 0.1²) whatever the init).

Fitness (MINIMISED, the only place in the package where lower is better — NeTS is defined that way)::

    fitness = L + ((d − τ) / (1 − τ))²

with ``d`` the GLOBAL density of the prunable weights (kept / total, counted over ALL prunable weights — not
the mean of per-layer densities, which was a bug of the original code) and ``τ = target_density``. ``L``
depends on ``fitness``:

* ``"train_then_val"`` (the paper's): the genome ``θ ⊙ m`` is trained for ``inner_epochs`` (1) epochs of
  masked SGD on the train split, ``L`` is the validation loss of the trained weights; the trained weights are
  DISCARDED (the genome keeps θ).
* ``"forward"``: ``L`` = validation loss of ``θ ⊙ m`` as is (no training).
* ``"train_val"``: the same inner training, then ``L`` = train-split loss + validation loss, both of the
  trained weights.

Loss: mean binary cross-entropy on the logit for 1-output networks (XOR 2-h-1), mean softmax cross-entropy
otherwise. A non-finite loss gives fitness +inf (ranked last); NaN never enters the search state.

The inner training of ALL members is ONE jitted program: ``vmap`` over members of ``lax.scan`` (epochs) of
``lax.scan`` (batches). All members see the same shuffled batch order in a generation (common random
numbers: differences in fitness come from the genomes, not from the batch order).

One generation (``step``), with E = ``n_elite`` and C = P − E children:

1. Selection of 2·C parents from the current population, favouring LOWER fitness: ``"rank"`` (linear
   ranking, the best member weighs P, the worst 1) or ``"tournament"`` (``tournament_size`` candidates drawn
   with replacement, the lowest fitness wins, ties to the lower population index). ``"roulette_original"``
   reproduces the original code's roulette, whose probabilities are proportional to the min-max-normalised
   (minimised) fitness, so the best genome is never picked and worse ones are favoured — a compatibility
   switch only, never the default.
2. Uniform crossover. ``crossover="per_child"`` (default): with probability ``crossover_rate`` a child
   mixes its two parents entry by entry (each entry from either parent with probability 1/2); otherwise it
   is a clone of its first parent. ``crossover="per_gene"`` (the paper, §3.3, and the original code,
   ``uniform_crossover``): EVERY child mixes its parents, each entry coming from the first parent with
   probability ``crossover_rate`` and from the second otherwise. ``crossover_mode="gene"`` takes the
   weight AND the mask bit of an entry from the same parent; ``"independent"`` draws them separately (the
   original code draws one uniform per weight and per mask bit: ``"independent"``).
3. Mutation, entry by entry: Gaussian weight noise (probability ``noise_rate``, ``w += noise_scale · ε``,
   applied once — the original scaled it twice), weight resampling from the init distribution
   (``resample_rate``), dormancy (prunable mask bit → 0 with ``dormancy_rate``) and, optionally, enabling
   (prunable mask bit → 1 with ``enable_rate``, default 0). Weights of dormant entries stay in the genome.
4. The E elites are copied bitwise unchanged and the children are evaluated; the elites keep their
   fitness (default), or with ``reevaluate_elites`` they are evaluated again together with the children
   (one call, the same key, so the same inner batch order: the original's drivers, 2 elites, evaluate the
   whole population every generation). Elites + children are sorted by (fitness, index).

The best genome ever seen is tracked (``best_params``/``best_mask``; with E ≥ 1 and elites that keep
their fitness it is member 0; a re-evaluated elite may score worse than when it was recorded).
``run`` stops after ``generations`` generations, or earlier when the best fitness has not changed for
``patience`` generations (``lax.while_loop``). Everything is a pure function of explicit keys:
``init(key, task, config)``, ``step(key, state, task, config)``, ``run(key, task, config)``;
``jax.vmap(run, in_axes=(0, None, None))`` runs many seeds.

After the search, ``train_ticket`` trains ``θ_best ⊙ m_best`` (or any masked init) with masked SGD and
reports test accuracy — the evaluation protocol of the paper (see ``es_lottery.experiments.nets``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from es_lottery import masks as masks_lib
from es_lottery import networks, population
from es_lottery._checks import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive,
    check_rate,
)
from es_lottery.keys import split_run_key
from es_lottery.search._generations import advance_search, generation_key, history_buffers
from es_lottery.tasks import base as tasks_base
from es_lottery.tasks import classification
from es_lottery.tasks.supervised import (
    TrainConfig,
    evaluate_ticket,
    per_example_loss,
    population_loss,
    predictions,
    sgd_train,
    train_population,
    train_ticket,
)

PyTree = Any

FITNESS = ("train_then_val", "forward", "train_val")
SELECTIONS = ("rank", "tournament", "roulette_original")
CROSSOVER_MODES = ("gene", "independent")
CROSSOVERS = ("per_child", "per_gene")  # what crossover_rate means
GENOME_INITS = ("network", "kaiming_uniform", "normal")
PAPER_INIT_STD = 0.1  # genome_init "normal": the paper's N(0, 0.1²)
TASK_KEY = 7919  # the task state is initialised with fold_in(evaluation key of init, TASK_KEY)

__all__ = [
    "CROSSOVERS",
    "CROSSOVER_MODES",
    "FITNESS",
    "GENOME_INITS",
    "SELECTIONS",
    "NeTSConfig",
    "NeTSState",
    "TrainConfig",
    "advance",
    "best_ticket",
    "crossover",
    "density_penalty",
    "dormancy",
    "empty_history",
    "enable",
    "evaluate_genomes",
    "evaluate_ticket",
    "generation_key",
    "genome_init_fn",
    "global_density",
    "init",
    "make_task",
    "member_density",
    "mutate",
    "per_example_loss",
    "population_loss",
    "predictions",
    "rank_order",
    "run",
    "select",
    "selection_probs",
    "sgd_train",
    "should_stop",
    "split_run_key",
    "split_validation",
    "step",
    "tournament_winners",
    "train_population",
    "train_ticket",
]


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class NeTSConfig:
    """Static NeTS settings (hashable; a static argument). Defaults follow the paper (REFERENCE.md §3);
    the defaults of the fidelity options (``reevaluate_elites``, ``crossover``, ``genome_init``) keep the
    behaviour runs were made with, the other values are the original's rules.

    reevaluate_elites: false: the elites keep their fitness; true: they are evaluated again every generation
        with the children (the original's drivers, with n_elite 2)
    crossover_rate: per_child: probability that a child is a uniform crossover (else a clone of parent 1);
        per_gene: each entry's probability of coming from parent 1
    crossover: what crossover_rate means: per_child, or per_gene (the paper's and the original code's:
        every child a uniform crossover)
    genome_init: network (the network's init, biases kept and trained), kaiming_uniform (the original
        code: kernels U(±1/√fan_in), no biases) or normal (the paper's text: kernels N(0, 0.1²), no biases)
    """

    pop_size: int = 5
    generations: int = 25
    patience: int | None = None  # stop when the best fitness is unchanged this many generations; None: off
    target_density: float = 0.2  # τ
    fitness: str = "train_then_val"
    selection: str = "rank"
    tournament_size: int = 2
    n_elite: int = 1
    reevaluate_elites: bool = False
    crossover_rate: float = 0.5
    crossover: str = "per_child"
    crossover_mode: str = "gene"
    noise_rate: float = 0.1
    noise_scale: float = 0.1
    resample_rate: float = 0.1
    dormancy_rate: float = 0.2
    enable_rate: float = 0.0
    genome_init: str = "network"
    init_density: float = 1.0  # initial masks: Bernoulli(init_density) on prunable entries (1: dense)
    inner_epochs: int = 1
    inner_lr: float = 0.1
    inner_batch_size: int = 64
    inner_momentum: float = 0.0
    eval_chunk: int = 2048

    def __post_init__(self):
        check_int(self.pop_size, "pop_size", 2)
        check_int(self.n_elite, "n_elite", 0)
        if self.pop_size < self.n_elite + 1:
            raise ValueError(
                f"pop_size must be ≥ n_elite + 1 = {self.n_elite + 1} (at least one child per generation), "
                f"got {self.pop_size}"
            )
        check_int(self.generations, "generations", 1)
        if self.patience is not None:
            check_int(self.patience, "patience", 1)
        tau = check_number(self.target_density, "target_density")
        if not 0.0 < tau < 1.0:
            raise ValueError(f"target_density (τ) must be in (0, 1), got {self.target_density!r}")
        check_choice(self.fitness, FITNESS, "fitness")
        check_choice(self.selection, SELECTIONS, "selection")
        check_int(self.tournament_size, "tournament_size", 1)
        check_bool(self.reevaluate_elites, "reevaluate_elites")
        check_choice(self.crossover, CROSSOVERS, "crossover")
        check_choice(self.crossover_mode, CROSSOVER_MODES, "crossover_mode")
        check_choice(self.genome_init, GENOME_INITS, "genome_init")
        for f in ("crossover_rate", "noise_rate", "resample_rate", "dormancy_rate", "enable_rate"):
            check_rate(getattr(self, f), f)
        if check_number(self.noise_scale, "noise_scale") < 0:
            raise ValueError(f"noise_scale must be ≥ 0, got {self.noise_scale!r}")
        masks_lib.check_density(self.init_density, field="init_density")
        check_int(self.inner_epochs, "inner_epochs", 1)
        check_positive(self.inner_lr, "inner_lr")
        check_int(self.inner_batch_size, "inner_batch_size", 1)
        m = check_number(self.inner_momentum, "inner_momentum")
        if not 0.0 <= m < 1.0:
            raise ValueError(f"inner_momentum must be in [0, 1), got {self.inner_momentum!r}")
        check_int(self.eval_chunk, "eval_chunk", 1)

    @property
    def n_children(self) -> int:
        return self.pop_size - self.n_elite

    @property
    def inner(self) -> TrainConfig:
        """The inner (fitness) training as a ``TrainConfig``."""
        return TrainConfig(
            epochs=self.inner_epochs,
            lr=self.inner_lr,
            batch_size=self.inner_batch_size,
            momentum=self.inner_momentum,
            eval_chunk=self.eval_chunk,
        )

    def replace(self, **kw) -> NeTSConfig:
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------------------
# task


def make_task(module: nn.Module, x_train, y_train, x_val, y_val, eval_chunk: int = 2048):
    """NeTS's classification task: the log loss (binary cross-entropy on the logit of a 1-output network,
    softmax cross-entropy otherwise) on the validation split, evaluated ``eval_chunk`` examples at a time;
    the train split feeds the inner training (``train_members``). Labels are ints.

    NeTS runs on any task of the protocol (``es_lottery.tasks.base``): its loss is −fitness. The
    ``train_*`` fitness variants also need the task's ``train_members`` (classification has it)."""
    return classification.make_task(
        module,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        objective="log_loss",
        fitness_split="val",
        eval_split="val",
        chunk_size=check_int(eval_chunk, "eval_chunk", 1),
    )


def split_validation(x, y, fraction: float = 0.1, seed: int = 0):
    """Deterministic split of a train set: ``(x_train, y_train, x_val, y_val)``.

    A fixed random permutation (``numpy.random.default_rng(seed)``); the validation part holds
    ``round(fraction · n)`` examples (at least 1, at most n − 1).
    """
    f = check_number(fraction, "validation_fraction")
    if not 0.0 < f < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}")
    n = int(np.shape(x)[0])
    if n < 2:
        raise ValueError(f"need at least 2 training examples to split off a validation set, got {n}")
    n_val = min(max(round(f * n), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    val, tr = perm[:n_val], perm[n_val:]
    x, y = np.asarray(x), np.asarray(y)
    return x[tr], y[tr], x[val], y[val]


# ----------------------------------------------------------------------------------------------
# loss, density and penalty


def global_density(mask: PyTree, prunable=None) -> jax.Array:
    """Kept / total over ALL prunable weights of ONE mask (count-weighted, not a mean of layer densities)."""
    kept, total = masks_lib.count(mask, prunable)
    return kept.astype(jnp.float32) / jnp.float32(total)


def member_density(masks: PyTree, prunable=None) -> jax.Array:
    """``global_density`` of every member of a population of masks (leading axis P): (P,)."""
    return jax.vmap(lambda m: global_density(m, prunable))(masks)


def density_penalty(density, target_density: float) -> jax.Array:
    """``((d − τ) / (1 − τ))²``: 0 at τ, 1 for a dense network."""
    tau = jnp.float32(target_density)
    return ((jnp.asarray(density, jnp.float32) - tau) / (1.0 - tau)) ** 2


# ----------------------------------------------------------------------------------------------
# fitness


def evaluate_genomes(
    key: jax.Array, member_params: PyTree, member_masks: PyTree, task, config: NeTSConfig, task_state=None
) -> dict:
    """Fitness of every genome (leading axis P): {fitness, loss, density, val_accuracy}, each (P,).

    ``loss`` is the fitness term without the density penalty (see the module doc for the variants);
    non-finite losses become +inf. ``key`` sets the inner training's batch order. (Stateful tasks: see
    :func:`_evaluate_genomes`, which also returns the task's new state.)
    """
    return _evaluate_genomes(key, member_params, member_masks, task, config, task_state)[0]


def _task_loss(task, task_state, key, members):
    """(loss = −fitness, validation accuracy or NaN, task state)."""
    fit, metrics, task_state = tasks_base.fitness_metrics(task, task_state, key, members)
    return -fit, metrics.get("accuracy", jnp.full_like(fit, jnp.nan)), task_state


def _evaluate_genomes(key, member_params, member_masks, task, config: NeTSConfig, task_state):
    density = member_density(member_masks)
    members = tasks_base.MaskedPopulation(member_params, member_masks, shared=False)
    if config.fitness == "forward":
        loss, acc, task_state = _task_loss(task, task_state, key, members)
    else:
        if not callable(getattr(task, "train_members", None)):
            raise ValueError(
                f"NeTS fitness {config.fitness!r} trains every genome, so the task needs train_members "
                f"(ClassificationTask has it); {type(task).__name__} has not — use fitness='forward'"
            )
        trained = task.train_members(key, members, config.inner)
        loss, acc, task_state = _task_loss(task, task_state, key, trained)
        if config.fitness == "train_val":
            train_task = task.replace(fitness_split="train")
            loss = loss + _task_loss(train_task, task_state, key, trained)[0]
    loss = jnp.where(jnp.isfinite(loss), loss, jnp.inf)
    fitness = loss + density_penalty(density, config.target_density)
    return {"fitness": fitness, "loss": loss, "density": density, "val_accuracy": acc}, task_state


# ----------------------------------------------------------------------------------------------
# selection


def _finite_or_inf(fitness: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(fitness), jnp.inf, fitness)


def rank_order(fitness: jax.Array) -> jax.Array:
    """Indices sorted best first: by (fitness ascending, index ascending); NaN ranks last."""
    idx = jnp.arange(fitness.shape[0], dtype=jnp.int32)
    _, order = jax.lax.sort((_finite_or_inf(fitness), idx), num_keys=2)
    return order


def _ranks(fitness: jax.Array) -> jax.Array:
    order = rank_order(fitness)
    return jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))


def selection_probs(fitness: jax.Array, method: str) -> jax.Array:
    """Selection probabilities (P,) for ``"rank"`` or ``"roulette_original"``.

    rank: linear ranking, weight P − rank (the best has weight P, the worst 1).
    roulette_original: the original code's roulette (``nets/genetic.py``, ``select_parents``): weights
    ``(f − min f) / (max f − min f + 1e-6)`` of the MINIMISED fitness, normalised to sum 1 — so the best
    genome gets probability 0 and worse genomes more (the original's bug, kept as a compatibility switch).
    Non-finite fitness weighs 0 and is left out of min/max; when every weight is 0 (all equal): uniform.
    """
    n = fitness.shape[0]
    if method == "rank":
        w = (n - _ranks(fitness)).astype(jnp.float32)
    elif method == "roulette_original":
        f = jnp.asarray(fitness, jnp.float32)
        finite = jnp.isfinite(f)
        lo = jnp.min(jnp.where(finite, f, jnp.inf))
        hi = jnp.max(jnp.where(finite, f, -jnp.inf))
        w = jnp.where(finite, (f - lo) / (hi - lo + 1e-6), 0.0)
        w = jnp.where(jnp.sum(w) > 0, w, jnp.ones_like(w))
    else:
        raise ValueError(f"selection_probs handles 'rank' and 'roulette_original', got {method!r}")
    return w / jnp.sum(w)


def tournament_winners(fitness: jax.Array, candidates: jax.Array) -> jax.Array:
    """Winner of each row of ``candidates`` (…, k) (population indices): the lowest fitness; ties go to
    the lower index; NaN loses."""
    ranks = _ranks(fitness)
    best = jnp.argmin(ranks[candidates], axis=-1)
    return jnp.take_along_axis(candidates, best[..., None], axis=-1)[..., 0]


def select(key: jax.Array, fitness: jax.Array, n: int, config: NeTSConfig) -> jax.Array:
    """``n`` parent indices drawn by ``config.selection`` (lower fitness favoured, except the compat
    roulette)."""
    npop = fitness.shape[0]
    if config.selection == "tournament":
        cand = jax.random.randint(key, (n, config.tournament_size), 0, npop, dtype=jnp.int32)
        return tournament_winners(fitness, cand)
    p = selection_probs(fitness, config.selection)
    return jax.random.choice(key, npop, (n,), replace=True, p=p).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# variation operators (populations: leading axis C on every leaf)


def _init_fn(like):
    """``key -> params`` of a network module, or of anything with ``init_params`` (a task)."""
    if isinstance(like, nn.Module):
        return lambda k: networks.init_params(k, like)
    if callable(getattr(like, "init_params", None)):
        return like.init_params
    raise TypeError(f"need a network module or a task with init_params, got {type(like).__name__}")


def _flags(like) -> list[bool]:
    tmpl = jax.eval_shape(_init_fn(like), jax.random.key(0))
    return jax.tree_util.tree_leaves(masks_lib.prunable_flags(tmpl))


def _kernel_fan_in(shape) -> int:
    # flax kernels: dense (in, out), conv (kh, kw, in, out) — torch's fan_in of the same layer
    return int(np.prod(shape[:-1]))


def genome_init_fn(like, genome_init: str = "network"):
    """``key -> params`` of one initial genome's weights under ``genome_init`` (see the module doc).

    ``"network"``: the network's / task's own ``init_params``. ``"kaiming_uniform"``: prunable kernels
    U(−1/√fan_in, 1/√fan_in) (torch's ``kaiming_uniform_(a=√5)``, the original code's); ``"normal"``:
    prunable kernels N(0, 0.1²) (the paper's text). Both bias-free: every non-prunable leaf is 0 (its mask
    leaf is 0 too, see ``init``). One random draw for all kernels.
    """
    check_choice(genome_init, GENOME_INITS, "genome_init")
    base = _init_fn(like)
    if genome_init == "network":
        return base
    tmpl = jax.eval_shape(base, jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten(tmpl)
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(tmpl))
    kernels = [x for x, f in zip(leaves, flags, strict=True) if f]

    def draw(key):
        u = iter(_draw(key, kernels, "uniform" if genome_init == "kaiming_uniform" else "normal"))
        out = []
        for x, f in zip(leaves, flags, strict=True):
            if not f:
                out.append(jnp.zeros(x.shape, x.dtype))
            elif genome_init == "kaiming_uniform":
                bound = 1.0 / np.sqrt(_kernel_fan_in(x.shape))
                out.append(((2.0 * next(u) - 1.0) * bound).astype(x.dtype))  # [−b, b)
            else:
                out.append((PAPER_INIT_STD * next(u)).astype(x.dtype))
        return jax.tree_util.tree_unflatten(treedef, out)

    return draw


def _draw(key: jax.Array, leaves: list, kind: str = "uniform", dtype=jnp.float32) -> list:
    """One random draw (uniform [0, 1) or standard normal) for all ``leaves``, split into leaf shapes.

    A single draw instead of one per leaf: every random call is a threefry program of its own, and on a
    small CPU their compile time dominates the operators.
    """
    sizes = [int(np.prod(np.shape(x))) for x in leaves]
    total = max(sum(sizes), 1)
    flat = (
        jax.random.normal(key, (total,), dtype)
        if kind == "normal"
        else jax.random.uniform(key, (total,), dtype)
    )
    out, offset = [], 0
    for x, size in zip(leaves, sizes, strict=True):
        out.append(flat[offset : offset + size].reshape(np.shape(x)))
        offset += size
    return out


def _bcast(v: jax.Array, leaf: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (leaf.ndim - v.ndim))


def crossover(
    key: jax.Array,
    params_a: PyTree,
    masks_a: PyTree,
    params_b: PyTree,
    masks_b: PyTree,
    do_cross: jax.Array,
    mode: str = "gene",
    share_a: float = 0.5,
) -> tuple[PyTree, PyTree]:
    """Uniform crossover of parents a and b (leading axis C): where ``do_cross`` (C,) is set, every entry
    comes from parent a with probability ``share_a`` and from parent b otherwise (mode "gene": its weight
    and mask bit from the same parent; "independent": drawn separately); elsewhere the child is a clone of
    parent a. (An entry comes from b when its uniform draw u < 1 − ``share_a``.)"""
    check_choice(mode, CROSSOVER_MODES, "crossover_mode")
    share_a = check_rate(share_a, "share_a")
    to_b = 1.0 - share_a
    pa, treedef = jax.tree_util.tree_flatten(params_a)
    ma = jax.tree_util.tree_leaves(masks_a)
    pb, mb = jax.tree_util.tree_leaves(params_b), jax.tree_util.tree_leaves(masks_b)
    k_w, k_m = jax.random.split(key)
    uw = _draw(k_w, pa)
    um = uw if mode == "gene" else _draw(k_m, pa)
    out_p, out_m = [], []
    for i, leaf in enumerate(pa):
        cross = _bcast(do_cross, leaf)
        out_p.append(jnp.where(cross & (uw[i] < to_b), pb[i], leaf))
        out_m.append(jnp.where(cross & (um[i] < to_b), mb[i], ma[i]))
    return jax.tree_util.tree_unflatten(treedef, out_p), jax.tree_util.tree_unflatten(treedef, out_m)


def _flip_masks(key, masks, rate: float, flags, value: bool) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(masks)
    flags = _default_flags(masks, flags)
    chosen = [m for m, f in zip(leaves, flags, strict=True) if f]
    hits = iter(_draw(key, chosen))
    out = []
    for m, f in zip(leaves, flags, strict=True):
        if not f:
            out.append(m)
            continue
        hit = next(hits) < rate
        out.append(m | hit if value else m & ~hit)
    return jax.tree_util.tree_unflatten(treedef, out)


def dormancy(key: jax.Array, masks: PyTree, rate: float, flags: list[bool] | None = None) -> PyTree:
    """Each prunable mask bit → 0 with probability ``rate`` (only removes; non-prunable leaves untouched).
    ``flags``: prunable flag per leaf (default: ``masks.default_prunable`` on the unbatched shapes)."""
    return _flip_masks(key, masks, rate, flags, False)


def enable(key: jax.Array, masks: PyTree, rate: float, flags: list[bool] | None = None) -> PyTree:
    """Each prunable mask bit → 1 with probability ``rate`` (only adds; non-prunable leaves untouched)."""
    return _flip_masks(key, masks, rate, flags, True)


def _default_flags(masks: PyTree, flags) -> list[bool]:
    if flags is not None:
        return list(flags)
    # batched leaves: judge prunability on the per-member shape (drop the leading axis)
    return [
        masks_lib.default_prunable(p, np.empty(np.shape(x)[1:], bool))
        for p, x in jax.tree_util.tree_leaves_with_path(masks)
    ]


def mutate(key: jax.Array, params: PyTree, masks: PyTree, like, config: NeTSConfig) -> tuple[PyTree, PyTree]:
    """Noise, resampling, dormancy and enabling of a population of children (leading axis C), in that
    order (a resampled entry loses its noise). ``like``: the network module or the task (resampling draws
    from its ``init_params``, through ``config.genome_init``)."""
    k_sel_n, k_noise, k_res, k_sel_r, k_dorm, k_en = jax.random.split(key, 6)
    n = population.population_size(params)
    flags = _flags(like)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if config.noise_rate > 0 and config.noise_scale > 0:
        sel, eps = _draw(k_sel_n, leaves), _draw(k_noise, leaves, "normal")
        leaves = [
            x + jnp.where(u < config.noise_rate, config.noise_scale * e, 0.0).astype(x.dtype)
            for x, u, e in zip(leaves, sel, eps, strict=True)
        ]
    if config.resample_rate > 0:
        fresh = jax.vmap(genome_init_fn(like, config.genome_init))(jax.random.split(k_res, n))
        fresh = jax.tree_util.tree_leaves(fresh)
        sel = _draw(k_sel_r, leaves)
        leaves = [
            jnp.where(u < config.resample_rate, f, x) for x, f, u in zip(leaves, fresh, sel, strict=True)
        ]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    if config.dormancy_rate > 0:
        masks = dormancy(k_dorm, masks, config.dormancy_rate, flags)
    if config.enable_rate > 0:
        masks = enable(k_en, masks, config.enable_rate, flags)
    return params, masks


# ----------------------------------------------------------------------------------------------
# state and the algorithm


@struct.dataclass
class NeTSState:
    params: PyTree  # (P, …) genome weights (biases included), sorted best first
    masks: PyTree  # (P, …) bool; bias leaves all ones
    fitness: jax.Array  # (P,) minimised
    loss: jax.Array  # (P,) fitness without the density penalty
    density: jax.Array  # (P,) global density of the prunable weights
    val_accuracy: jax.Array  # (P,) validation accuracy of the (trained, for train_* fitness) genome
    generation: jax.Array
    best_params: PyTree  # best genome ever seen (unbatched)
    best_mask: PyTree
    best_fitness: jax.Array
    best_loss: jax.Array
    best_density: jax.Array
    last_change: jax.Array  # generation at which best_fitness last changed
    n_evals: jax.Array
    task_state: Any = None  # the task's state (None for classification)


def _take(tree: PyTree, idx) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def _initial_masks(key, params, like, config: NeTSConfig):
    flags = _flags(like)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    biases = config.genome_init == "network"  # the original's inits have none: their masks are 0
    out = []
    for x, f, k in zip(leaves, flags, keys, strict=True):
        if f and config.init_density < 1.0:
            out.append(jax.random.bernoulli(k, config.init_density, x.shape))
        else:
            out.append(jnp.full(x.shape, f or biases, bool))
    return jax.tree_util.tree_unflatten(treedef, out)


@partial(jax.jit, static_argnames=("config",))
def init(key: jax.Array, task, config: NeTSConfig) -> NeTSState:
    """Draw ``pop_size`` genomes (independent draws of ``genome_init``, masks dense unless
    ``init_density`` < 1; bias masks 0 for the bias-free inits) and the task state, evaluate and sort
    them."""
    k_params, k_masks, k_eval = jax.random.split(key, 3)
    params = jax.vmap(genome_init_fn(task, config.genome_init))(jax.random.split(k_params, config.pop_size))
    masks = _initial_masks(k_masks, params, task, config)
    task_state = task.init_state(jax.random.fold_in(k_eval, TASK_KEY))
    ev, task_state = _evaluate_genomes(k_eval, params, masks, task, config, task_state)
    order = rank_order(ev["fitness"])
    params, masks, ev = _take(params, order), _take(masks, order), {k: v[order] for k, v in ev.items()}
    return NeTSState(
        params=params,
        masks=masks,
        fitness=ev["fitness"],
        loss=ev["loss"],
        density=ev["density"],
        val_accuracy=ev["val_accuracy"],
        generation=jnp.int32(0),
        best_params=_take(params, 0),
        best_mask=_take(masks, 0),
        best_fitness=ev["fitness"][0],
        best_loss=ev["loss"][0],
        best_density=ev["density"][0],
        last_change=jnp.int32(0),
        n_evals=jnp.int32(config.pop_size),
        task_state=task_state,
    )


def _record(state: NeTSState) -> dict:
    finite = jnp.isfinite(state.fitness)
    return {
        "generation": state.generation,
        "best_fitness": state.best_fitness,
        "best_loss": state.best_loss,
        "best_density": state.best_density,
        "pop_best_fitness": state.fitness[0],
        "pop_best_val_accuracy": state.val_accuracy[0],
        "mean_fitness": jnp.sum(jnp.where(finite, state.fitness, 0.0)) / jnp.maximum(jnp.sum(finite), 1),
        "mean_density": jnp.mean(state.density),
        "min_density": jnp.min(state.density),
    }


def _step(key: jax.Array, state: NeTSState, task, config: NeTSConfig):
    n_child, n_elite = config.n_children, config.n_elite
    k_sel, k_do, k_cross, k_mut, k_eval = jax.random.split(key, 5)

    # 1. parents (lower fitness favoured)
    parents = select(k_sel, state.fitness, 2 * n_child, config)
    pa, pb = parents[:n_child], parents[n_child:]
    # 2. crossover (per_child: or a clone of parent a) and 3. mutation
    if config.crossover == "per_gene":
        do_cross, share_a = jnp.ones((n_child,), bool), config.crossover_rate
    else:
        do_cross, share_a = jax.random.bernoulli(k_do, config.crossover_rate, (n_child,)), 0.5
    child_p, child_m = crossover(
        k_cross,
        _take(state.params, pa),
        _take(state.masks, pa),
        _take(state.params, pb),
        _take(state.masks, pb),
        do_cross,
        config.crossover_mode,
        share_a,
    )
    child_p, child_m = mutate(k_mut, child_p, child_m, task, config)
    # 4. the elites keep their genomes bitwise; the children (and, re-evaluating, the elites) are evaluated
    cat = lambda a, b: jnp.concatenate([a[:n_elite], b])  # noqa: E731
    pool_p = jax.tree_util.tree_map(cat, state.params, child_p)
    pool_m = jax.tree_util.tree_map(cat, state.masks, child_m)
    if config.reevaluate_elites and n_elite > 0:
        ev, task_state = _evaluate_genomes(k_eval, pool_p, pool_m, task, config, state.task_state)
        fitness, loss, density, val_acc = (ev[k] for k in ("fitness", "loss", "density", "val_accuracy"))
        n_evaluated = config.pop_size
    else:
        ev, task_state = _evaluate_genomes(k_eval, child_p, child_m, task, config, state.task_state)
        fitness = cat(state.fitness, ev["fitness"])
        loss = cat(state.loss, ev["loss"])
        density = cat(state.density, ev["density"])
        val_acc = cat(state.val_accuracy, ev["val_accuracy"])
        n_evaluated = n_child
    order = rank_order(fitness)
    params, masks = _take(pool_p, order), _take(pool_m, order)
    fitness, loss, density, val_acc = fitness[order], loss[order], density[order], val_acc[order]

    generation = state.generation + 1
    better = _finite_or_inf(fitness[0]) < _finite_or_inf(state.best_fitness)
    pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), new, old)  # noqa: E731
    best_fitness = jnp.where(better, fitness[0], state.best_fitness)
    state = NeTSState(
        params=params,
        masks=masks,
        fitness=fitness,
        loss=loss,
        density=density,
        val_accuracy=val_acc,
        generation=generation,
        best_params=pick(_take(params, 0), state.best_params),
        best_mask=pick(_take(masks, 0), state.best_mask),
        best_fitness=best_fitness,
        best_loss=jnp.where(better, loss[0], state.best_loss),
        best_density=jnp.where(better, density[0], state.best_density),
        last_change=jnp.where(better, generation, state.last_change),
        n_evals=state.n_evals + n_evaluated,
        task_state=task_state,
    )
    return state, _record(state)


@partial(jax.jit, static_argnames=("config",))
def step(key: jax.Array, state: NeTSState, task, config: NeTSConfig):
    """One generation: (state, metrics)."""
    return _step(key, state, task, config)


def should_stop(generation, last_change, config: NeTSConfig) -> jax.Array:
    """``generations`` reached, or the best fitness unchanged for ``patience`` generations."""
    stop = generation >= config.generations
    if config.patience is not None:
        stop = stop | (generation - last_change >= config.patience)
    return stop


def empty_history(task, config: NeTSConfig, state: NeTSState) -> dict:
    """Per-generation history buffers with ``config.generations`` rows (NaN / −1 padding)."""
    return history_buffers(jax.eval_shape(lambda s: _record(s), state), config.generations)


def _advance(k_run, state: NeTSState, hist: dict, task, config: NeTSConfig, until):
    return advance_search(_step, should_stop, k_run, state, hist, task, config, until)


@partial(jax.jit, static_argnames=("config",))
def advance(k_run, state: NeTSState, hist: dict, task, config: NeTSConfig, until):
    """Generations until the termination rule or generation ``until`` (chunks for progress reporting);
    chunks of ``advance`` with the same ``k_run`` reproduce ``run`` exactly."""
    return _advance(k_run, state, hist, task, config, until)


@partial(jax.jit, static_argnames=("config",))
def run(key: jax.Array, task, config: NeTSConfig):
    """A whole search: (final state, per-generation history with ``config.generations`` rows; rows at
    and after ``state.generation`` are padding)."""
    k_init, k_run = split_run_key(key)
    state = init(k_init, task, config)
    return _advance(k_run, state, empty_history(task, config, state), task, config, config.generations)


def best_ticket(state: NeTSState) -> tuple[PyTree, PyTree]:
    """(θ_best ⊙ m_best, m_best): the best genome's masked weights and its mask."""
    return masks_lib.apply(state.best_params, state.best_mask), state.best_mask
