"""Ticket-effect baselines (Vischer et al. 2021, as used by Lange & Sprekeler 2023, Fig. 2 / Fig. 8).

Each baseline turns an IMP ticket ``(θ₀, m)`` of one level into a control ticket ``(θ₀', m')`` that keeps
some ingredients and destroys others; training the controls at every level decomposes the ticket effect:

============================  ================================  =============================================
name                          mask m'                           init θ₀'
============================  ================================  =============================================
``random_reinit``             random GLOBAL mask, same count    fresh draw of the trainer's init
``mask_reinit``               the IMP mask                      fresh draw of the trainer's init
``permute_weights``           the IMP mask                      surviving θ₀ values shuffled among the
                                                                surviving positions, within each layer
``permute_mask_and_weights``  IMP mask permuted within each     surviving θ₀ values moved along with their
                              layer (per-layer counts kept)     positions (a random permutation per layer)
============================  ================================  =============================================

* permute_weights vs IMP: the weight (init) effect; permute_mask_and_weights vs permute_weights: the mask
  effect; random_reinit vs permute_mask_and_weights: the effect of the layerwise pruning ratios.
* Only prunable leaves (kernels) are touched: biases keep their θ₀ values (or the fresh init's, for the
  re-init baselines) and stay unmasked. Counts are exact: ``random_reinit`` keeps exactly the IMP mask's
  number of prunable weights, the permutations keep every layer's count.
* Every function is ``fn(key, theta0, mask, init_fn, prunable=None) -> (theta0' ⊙ m', m')``; the returned
  init is already masked. ``init_fn(key) -> params`` is the trainer's ``init_params`` (the permutation
  baselines ignore it). The functions are jit-safe (fixed shapes; masks may be traced) apart from
  ``random_reinit``, whose count is read on the host.

``run_baseline`` trains one baseline at every level of a finished IMP run, a fresh key per level:
``k_transform, k_train = split(fold_in(key, level))``. The controls are independent per level (a new random
mask / init / permutation at every level); they are one-shot branches off the IMP masks, not a loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from es_lottery import masks as masks_lib
from es_lottery.pruning.loop import IMPResult, LevelRecord, Trainer, TrainResult, trainer_name

PyTree = Any
InitFn = Callable[[jax.Array], PyTree]

__all__ = [
    "BASELINES",
    "get_baseline",
    "make_ticket",
    "mask_reinit",
    "permute_mask_and_weights",
    "permute_weights",
    "random_reinit",
    "run_baseline",
]


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


def make_ticket(
    name: str, key: jax.Array, theta0: PyTree, mask: PyTree, init_fn: InitFn | None = None, prunable=None
) -> tuple[PyTree, PyTree]:
    """``(θ₀' ⊙ m', m')`` of baseline ``name`` for the IMP ticket ``(theta0, mask)``."""
    return get_baseline(name)(key, theta0, mask, init_fn, prunable=prunable)


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
        result = trainer.train(k_train, theta_b, mask_b)
        if not isinstance(result, TrainResult):
            raise TypeError(f"{tname}.train must return a TrainResult, got {type(result).__name__}")
        kept, total = masks_lib.count(mask_b, prunable)
        record = LevelRecord(
            level=level,
            density=int(kept) / total,
            kept=int(kept),
            total=int(total),
            mask=mask_b,
            metrics=jax.device_get(dict(result.metrics)),
            eval_score=float(jax.device_get(result.eval_score)),
            final_params=result.final_params if keep_params else None,
            std_params=result.std_params if keep_params else None,
            theta_start=theta_b if keep_params else None,
        )
        records.append(record)
        if callback is not None:
            callback(record)
    return records
