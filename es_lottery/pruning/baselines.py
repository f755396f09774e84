"""Ticket-effect baselines (Vischer et al. 2021, as used by Lange & Sprekeler 2023, Fig. 2 / Fig. 8).

Each baseline turns a pruned mask ``m`` (and the run's θ₀) into a control ticket ``(θ₀', m')`` that keeps
some ingredients of an IMP ticket and destroys others; training the controls at every level decomposes the
ticket effect:

============================  ================================  =============================================
name                          mask m'                           init θ₀'
============================  ================================  =============================================
``random_reinit``             random GLOBAL mask, same count    fresh draw of the trainer's init
``mask_reinit``               the pruned mask                   fresh draw of the trainer's init
``permute_weights``           the pruned mask                   surviving θ₀ values shuffled among the
                                                                surviving positions, within each layer
``permute_mask_and_weights``  the mask permuted within each     surviving θ₀ values moved along with their
                              layer (per-layer counts kept)     positions (a random permutation per layer)
============================  ================================  =============================================

* permute_weights vs IMP: the weight (init) effect; permute_mask_and_weights vs permute_weights: the mask
  effect; random_reinit vs permute_mask_and_weights: the effect of the layerwise pruning ratios.
* Only prunable leaves (kernels) are touched: biases keep their θ₀ values (or the fresh init's, for the
  re-init baselines) and stay unmasked. Counts are exact: ``random_reinit`` keeps exactly the given mask's
  number of prunable weights, the permutations keep every layer's count.
* Every transform is ``fn(key, theta0, mask, init_fn, prunable=None) -> (theta0' ⊙ m', m')``; the
  returned init is already masked. ``init_fn(key) -> params`` is the trainer's ``init_params`` (the
  permutation baselines ignore it). The functions are jit-safe (fixed shapes; masks may be traced) apart
  from ``random_reinit``, whose count is read on the host.

What the original code does (RobertTLange/es-lottery, ``src/prune/imp.py`` class ``IMPBaselines`` and the
drivers ``run_es.py`` / ``run_gd_mnist.py`` ``main``; read for rules only)
----------------------------------------------------------------------------------------------------------
O1. Every baseline is its OWN run of the IMP loop (one job per ``imp_config.baseline_name``: "final-ticket"
    = IMP, "mask-reinit", "final-ticket_permute" = permute_weights, "final_permute-ticket_permute" =
    permute_mask_and_weights, "random-reinit"). After training level k the driver calls
    ``IMPBaselines.apply(rng_mask, iter_id, pruning_ckpt)`` with THAT run's trained network (final mean, or
    best with ``network_to_prune: best``); every baseline method first computes the global magnitude mask of
    that network (``global_magnitude_prune_threshold`` / ``global_mask_from_threshold``, the same rule as
    IMP; pruned weights are zero in the trained network, so the new mask is nested in the run's own mask)
    and then transforms it. So a baseline chain prunes from its own trained network, never from IMP's.
O2. Level 0 is shared: ``apply(rng, 0, params_init)`` returns the dense mask and θ₀ for EVERY baseline
    (``iter_id == 0`` always goes to ``final_ticket``), and θ₀ = ``model.init(PRNGKey(seed_id))`` and the
    training seed are the same in every job of a seed, so each chain's first (dense) level is the same run
    as IMP's (the original recomputes it per job; here it is reused, see ``run_baseline_chain``).
O3. Randomness per level: one stream ``rng = PRNGKey(seed_id)``, ``rng, rng_mask = split(rng)`` per level,
    identical in every job of a seed — the transform key of level k is common to all baselines. Training
    uses a seed that depends only on (seed, level) (ES: ``seed_id + imp_iter`` in ``src/es/masked_es.py``;
    GD: ``PRNGKey(seed_id + iter_id)`` in ``src/mnist_gd/train_mnist.py``), the same for IMP and every
    baseline. Everything a baseline draws is re-drawn at every level.
O4. "mask-reinit" (``IMPBaselines.mask_reinit``): the chain's own magnitude mask, and a FRESH init
    ``model.init(split(rng_mask)[0])`` (the model's standard init, biases included) at every level.
O5. "random-reinit" (``IMPBaselines.random_reinit``, ``get_random_masks``): BOTH a random mask and a fresh
    init. The magnitude mask of the chain's network only sets the count; the new mask prunes that many
    prunable weights chosen uniformly over ALL prunable weights of all layers (``jax.random.choice``
    without replacement; global, not nested in the previous mask), and the init is
    ``model.init(split(rng_mask)[0])`` — the same key as mask-reinit's, so at a given seed and level the two
    baselines draw the same fresh init.
O6. "final-ticket_permute" (``final_permute``, ``get_final_permuted``): the chain's own magnitude mask; the
    init is the ORIGINAL θ₀ under that mask with its surviving values randomly permuted among the surviving
    positions of each layer (a fresh permutation of θ₀ per level, not of the previous level's init).
O7. "final_permute-ticket_permute" (``permute_permute``, ``get_permuted_permuted``): the chain's own
    magnitude mask, permuted within each layer (per-layer counts kept), and the original θ₀'s surviving
    values of that layer placed in random order at the permuted positions (independent keys for mask and
    values — distributionally the same as moving values with their positions). Deviation: the original
    permutes the mask array with ``jax.random.permutation(key, mask)``, which for an n-d kernel shuffles
    whole slices along axis 0 only (input-unit rows of a Dense kernel; the kernel-height axis of a conv
    kernel); we permute individual entries within the layer, as "Layerwise Permuted" and Vischer et al.
    describe.
O8. Counts: the original thresholds at a percentile (ties keep extra weights; checked to 1e-2); ours are
    exact (``masks.prune_to``), so every chain keeps exactly the schedule's count at every level.

Two ways to run the baselines here
----------------------------------
``run_baseline_chain`` (the paper-figure default of ``es-lottery imp``, ``baseline_mode: chain``) follows
O1–O7 with our exact counts and key scheme. For run key ``key`` (the IMP chain's):

* level 0 = the IMP chain's dense level 0 (θ₀, all-ones mask, trained with ``loop.level_keys(key, 0)``);
  pass the IMP chain's level-0 record as ``level0`` to reuse it instead of training it again.
* level k ≥ 1: ``m = `` the chain's own ``next_mask`` of level k − 1;
  ``(θ₀', m') = chain_ticket(name, chain_transform_key(key, k), θ₀, m, trainer.init_params)``; train with
  the IMP chain's ``loop.level_keys(key, k)`` (O3); the next mask scores the chain's trained network with
  the IMP criterion of the chain (``config.criterion``, magnitude in the paper; the criterion's init is θ₀')
  and prunes it nested in m' to the next density (``loop.run_level``). ``random_reinit`` prunes with scope
  ``global`` whatever the config's scope (its random mask has no layer structure; only the count is used).
* ``chain_transform_key(key, k) = fold_in(fold_in(key, CHAIN_KEY_TAG), k)`` is the same for every baseline
  (O3); ``chain_ticket`` gives ``mask_reinit`` the init key ``split(key)[1]`` that ``random_reinit`` draws
  its init from, so the two share the fresh init at every level (O5).
* Resume: the chain's ``next_mask`` of level k − 1 and the key determine level k entirely, so calling with
  ``start_level=k, start_mask=next_mask`` reproduces an uninterrupted chain bit for bit.

``run_baseline`` (``baseline_mode: branch``, the behaviour before chains) instead branches every baseline
once off the masks of a finished IMP run at every level, level 0 included, with its own keys
``k_transform, k_train = split(fold_in(key, level))``: one-shot controls of the IMP tickets, not a loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from es_lottery import masks as masks_lib
from es_lottery.pruning import loop
from es_lottery.pruning.loop import IMPConfig, IMPResult, LevelRecord, Trainer, trainer_name

PyTree = Any
InitFn = Callable[[jax.Array], PyTree]

__all__ = [
    "BASELINES",
    "CHAIN_KEY_TAG",
    "chain_config",
    "chain_ticket",
    "chain_transform_key",
    "get_baseline",
    "mask_reinit",
    "permute_mask_and_weights",
    "permute_weights",
    "random_reinit",
    "run_baseline",
    "run_baseline_chain",
]

CHAIN_KEY_TAG = 2000  # fold_in tag of the chains' transform keys (the run key's other streams: split, ≥ 1000)


def _need_init(init_fn, name):
    if init_fn is None or not callable(init_fn):
        raise ValueError(f"baseline {name!r} needs init_fn (the trainer's init_params), got {init_fn!r}")


def random_reinit(
    key: jax.Array, theta0: PyTree, mask: PyTree, init_fn: InitFn | None = None, prunable=None
) -> tuple[PyTree, PyTree]:
    """A uniformly random global mask with the IMP mask's exact prunable count, and a fresh init."""
    _need_init(init_fn, "random_reinit")
    masks_lib.check_congruent(theta0, mask)
    k_mask, k_init = jax.random.split(key)
    kept, total = masks_lib.count(mask, prunable)
    kept = int(kept)
    if kept < 1:
        raise ValueError("mask keeps no prunable weight; random_reinit needs at least one")
    new_mask = masks_lib.random_mask(k_mask, kept / total, theta0, scope="global", prunable=prunable)
    fresh = init_fn(k_init)
    masks_lib.check_congruent(theta0, fresh, field="init_fn(key)")
    return masks_lib.apply(fresh, new_mask), new_mask


def mask_reinit(
    key: jax.Array, theta0: PyTree, mask: PyTree, init_fn: InitFn | None = None, prunable=None
) -> tuple[PyTree, PyTree]:
    """The IMP mask with a fresh draw of the init."""
    _need_init(init_fn, "mask_reinit")
    masks_lib.check_congruent(theta0, mask)
    fresh = init_fn(key)
    masks_lib.check_congruent(theta0, fresh, field="init_fn(key)")
    return masks_lib.apply(fresh, mask), mask


def _per_prunable_leaf(key, theta0, mask, prunable, leaf_fn):
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(theta0, prunable))
    t_leaves, treedef = jax.tree_util.tree_flatten(theta0)
    m_leaves = jax.tree_util.tree_leaves(mask)
    keys = jax.random.split(key, len(t_leaves))
    out_t, out_m = [], []
    for k, t, m, is_p in zip(keys, t_leaves, m_leaves, flags, strict=True):
        t, m = jnp.asarray(t), jnp.asarray(m, bool)
        if is_p:
            nt, nm = leaf_fn(k, jnp.ravel(t), jnp.ravel(m))
            t, m = nt.reshape(t.shape), nm.reshape(m.shape)
        out_t.append(t)
        out_m.append(m)
    new_mask = jax.tree_util.tree_unflatten(treedef, out_m)
    return masks_lib.apply(jax.tree_util.tree_unflatten(treedef, out_t), new_mask), new_mask


@jax.jit
def _shuffle_surviving(key, v, m):
    """Shuffle the values at the surviving positions among themselves (uniform permutation)."""
    n = v.shape[0]
    perm = jax.random.permutation(key, n)
    src = perm[jnp.argsort(~m[perm], stable=True)]  # surviving positions in random order, first
    dst = jnp.argsort(~m, stable=True)  # surviving positions in index order, first
    take = jnp.arange(n) < jnp.sum(m)
    out = v.at[jnp.where(take, dst, n)].set(v[src], mode="drop")
    return out, m


@jax.jit
def _permute_all(key, v, m):
    """Permute positions of the whole layer: mask bits and values move together."""
    perm = jax.random.permutation(key, v.shape[0])
    return v[perm], m[perm]


def permute_weights(
    key: jax.Array, theta0: PyTree, mask: PyTree, init_fn: InitFn | None = None, prunable=None
) -> tuple[PyTree, PyTree]:
    """The IMP mask; within each prunable leaf the surviving θ₀ values are shuffled among the surviving
    positions."""
    masks_lib.check_congruent(theta0, mask)
    return _per_prunable_leaf(key, theta0, mask, prunable, _shuffle_surviving)


def permute_mask_and_weights(
    key: jax.Array, theta0: PyTree, mask: PyTree, init_fn: InitFn | None = None, prunable=None
) -> tuple[PyTree, PyTree]:
    """Within each prunable leaf, one random permutation moves the mask bits and θ₀ values together:
    per-layer counts are kept, the surviving values are those of the ticket at random new positions."""
    masks_lib.check_congruent(theta0, mask)
    return _per_prunable_leaf(key, theta0, mask, prunable, _permute_all)


BASELINES: dict[str, Callable[..., tuple[PyTree, PyTree]]] = {
    "random_reinit": random_reinit,
    "mask_reinit": mask_reinit,
    "permute_weights": permute_weights,
    "permute_mask_and_weights": permute_mask_and_weights,
}


def get_baseline(name: str) -> Callable[..., tuple[PyTree, PyTree]]:
    if not isinstance(name, str) or name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES)}")
    return BASELINES[name]


def _level_masks(imp: IMPResult | Mapping[int, PyTree] | Sequence[PyTree]) -> dict[int, PyTree]:
    if isinstance(imp, IMPResult):
        return {r.level: r.mask for r in imp.records}
    if isinstance(imp, Mapping):
        return {int(k): v for k, v in imp.items()}
    return dict(enumerate(imp))


def run_baseline(
    key: jax.Array,
    trainer: Trainer,
    name: str,
    theta0: PyTree,
    imp: IMPResult | Mapping[int, PyTree] | Sequence[PyTree],
    *,
    levels: Sequence[int] | None = None,
    callback: Callable[[LevelRecord], Any] | None = None,
    prunable=None,
    keep_params: bool = True,
) -> list[LevelRecord]:
    """Train baseline ``name`` at every level of an IMP run.

    ``imp``: the IMP run (its records' masks) or the masks by level (a mapping, or a sequence indexed by
    level). ``theta0``: the IMP run's unmasked θ₀. ``levels``: which levels (default: all given).
    """
    fn = get_baseline(name)
    by_level = _level_masks(imp)
    todo = sorted(by_level) if levels is None else [int(k) for k in levels]
    missing = [k for k in todo if k not in by_level]
    if missing:
        raise ValueError(f"levels {missing} have no IMP mask; available: {sorted(by_level)}")
    tname = trainer_name(trainer)
    records = []
    for level in todo:
        k_transform, k_train = jax.random.split(jax.random.fold_in(key, level))
        theta_b, mask_b = fn(k_transform, theta0, by_level[level], trainer.init_params, prunable=prunable)
        record = loop.train_record(
            trainer, k_train, theta_b, mask_b, level, tname, keep_params=keep_params, prunable=prunable
        )
        records.append(record)
        if callback is not None:
            callback(record)
    return records


# ----------------------------------------------------------------------------------------------
# baseline chains (the original's semantics, see the module doc)


def chain_transform_key(key: jax.Array, level: int) -> jax.Array:
    """The transform key of ``level`` for run key ``key``, common to every baseline chain of the run (O3)."""
    return jax.random.fold_in(jax.random.fold_in(key, CHAIN_KEY_TAG), level)


def chain_ticket(
    name: str, key: jax.Array, theta0: PyTree, mask: PyTree, init_fn: InitFn | None = None, prunable=None
) -> tuple[PyTree, PyTree]:
    """``(θ₀' ⊙ m', m')`` of baseline ``name`` at one level of its chain: ``mask`` is the chain's own
    pruned mask, ``key`` the level's :func:`chain_transform_key`. As ``get_baseline(name)(key, theta0,
    mask, …)``, except that ``mask_reinit`` draws its init from ``split(key)[1]``, the key
    ``random_reinit`` draws its init from, so the two chains share the fresh init of every level, as in
    the original (O5)."""
    fn = get_baseline(name)
    if name == "mask_reinit":
        key = jax.random.split(key)[1]
    return fn(key, theta0, mask, init_fn, prunable=prunable)


def chain_config(name: str, config: IMPConfig) -> IMPConfig:
    """The pruning settings of baseline ``name``'s chain: ``config`` (its IMP criterion, schedule, scope),
    with scope ``global`` for ``random_reinit`` (its random global mask need not hold a layerwise level's
    per-layer counts; only its count is used)."""
    get_baseline(name)
    return config.replace(scope="global") if name == "random_reinit" else config


def run_baseline_chain(
    key: jax.Array,
    trainer: Trainer,
    name: str,
    config: IMPConfig,
    theta0: PyTree,
    *,
    level0: LevelRecord | None = None,
    start_level: int = 0,
    start_mask: PyTree | None = None,
    end_level: int | None = None,
    callback: Callable[[LevelRecord], Any] | None = None,
    prunable=None,
    keep_params: bool = True,
) -> list[LevelRecord]:
    """Baseline ``name`` as its own IMP chain (see the module doc), levels ``start_level … end_level − 1``.

    ``key``: the RUN key of the IMP chain it controls (training and scoring use that chain's level keys);
    ``config``: that chain's ``IMPConfig`` (criterion, schedule); ``theta0``: the run's unmasked θ₀.
    ``level0``: the IMP chain's finished level-0 record, reused as the chain's level 0 instead of training
    the identical dense run again (it must carry ``next_mask``). ``start_level > 0`` resumes and needs
    ``start_mask``, the chain's own ``next_mask`` of level ``start_level − 1`` (the mask BEFORE the
    baseline's transform). Every record's ``theta_start`` is the level's start ``θ₀' ⊙ m'``.
    """
    get_baseline(name)
    if not isinstance(config, IMPConfig):
        raise TypeError(f"config must be an IMPConfig, got {type(config).__name__}")
    loop.check_trainer(trainer, config.criterion)
    end = loop.check_level_range(config, start_level, end_level, start_mask, "the chain's next_mask")
    if level0 is not None:
        if not isinstance(level0, LevelRecord) or level0.level != 0:
            raise ValueError(f"level0 must be the IMP chain's level-0 LevelRecord, got {level0!r}")
        if config.num_levels > 1 and level0.next_mask is None:
            raise ValueError("level0 has no next_mask; a chain continues from it")
    cfg = chain_config(name, config)
    schedule = config.schedule
    mask = None
    if start_level > 0:
        # random_reinit under scope layerwise: level 1 starts from IMP's layerwise count, later levels from
        # a global prune (``chain_config``), so only the other chains' counts are fixed by the schedule
        loose = name == "random_reinit" and config.scope != "global"
        expected = None if loose else schedule.kept(start_level, theta0, prunable)
        loop.check_mask(start_mask, theta0, expected, prunable, "start_mask")
        mask = jax.tree_util.tree_map(lambda m: jnp.asarray(m, bool), start_mask)
    records = []
    for level in range(int(start_level), int(end)):
        if level == 0:
            # O2: the chain's level 0 IS the IMP chain's dense level 0 (same θ₀, mask, keys)
            theta_b = theta0
            if level0 is not None:
                record = level0
            else:
                dense = masks_lib.ones(theta0)
                record = loop.run_level(key, trainer, theta0, dense, 0, config, prunable, keep_params)
        else:
            theta_b, mask_b = chain_ticket(
                name, chain_transform_key(key, level), theta0, mask, trainer.init_params, prunable
            )
            masks_lib.check_congruent(theta0, theta_b, field=f"{name} init")
            record = loop.run_level(key, trainer, theta_b, mask_b, level, cfg, prunable, keep_params)
        record = dataclasses.replace(record, theta_start=theta_b if keep_params else None)
        records.append(record)
        if callback is not None:
            callback(record)
        mask = record.next_mask
    return records
