"""Mask pytrees: congruent to the params, every leaf present.

Conventions (see the README's "Masks" section):

* A mask has exactly the tree structure and leaf shapes of the params it masks. Leaves are ``bool``
  arrays. Non-prunable leaves (biases and anything the ``prunable`` predicate rejects) are all ones.
* Sparsity and density always count *prunable* weights only.
* Exact counts: keeping a fraction ``d`` of ``n`` prunable weights keeps ``kept_count(d, n)`` =
  ``floor(d * n + 1/2)`` of them. Ties in a score are broken by index: the entry that comes first in
  the flattened order (leaves in ``jax.tree_util`` order, each leaf row-major) wins.
* ``prune_to`` only removes: the result is nested in the current mask.

All array functions are jit-safe (counts may be traced); validation happens in Python before tracing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Predicate = Callable[[tuple, Any], bool]

__all__ = [
    "CompressedView",
    "apply",
    "check_congruent",
    "check_density",
    "count",
    "default_prunable",
    "density",
    "is_nested",
    "kept_count",
    "layer_density",
    "ones",
    "pack",
    "path_name",
    "prunable_flags",
    "prune_to",
    "random_mask",
    "sparsity",
    "topk",
    "unpack",
]


# ----------------------------------------------------------------------------------------------
# paths and the prunable predicate


def path_name(path: Sequence) -> str:
    """``('params', 'dense_0', 'kernel')``-style key path → ``'params/dense_0/kernel'``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def default_prunable(path: Sequence, leaf: Any) -> bool:
    """Kernels (leaves named ``kernel`` with ≥ 2 dims) are prunable; biases and everything else not."""
    name = path_name(path).rsplit("/", 1)[-1]
    return name == "kernel" and np.ndim(leaf) >= 2


def prunable_flags(tree: PyTree, prunable: Predicate | None = None) -> PyTree:
    """A tree of Python bools, one per leaf: is the leaf prunable?"""
    pred = prunable or default_prunable
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(pred(p, x)), tree)


def _leaves_with_flags(tree: PyTree, prunable: Predicate | None):
    pred = prunable or default_prunable
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(path_name(p), x, bool(pred(p, x))) for p, x in leaves]


# ----------------------------------------------------------------------------------------------
# validation


def check_density(density: float, field: str = "density") -> float:
    """Density must be a number in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, (int, float, np.floating, np.integer)):
        raise TypeError(f"{field} must be a float in (0, 1], got {type(density).__name__}: {density!r}")
    d = float(density)
    if not (0.0 < d <= 1.0) or math.isnan(d):
        raise ValueError(f"{field} must be in (0, 1], got {d}")
    return d


def check_congruent(params: PyTree, mask: PyTree, field: str = "mask") -> None:
    """Raise a ``ValueError`` naming the first leaf where ``mask`` does not match ``params``."""
    p_leaves = {path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    m_leaves = {path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(mask)}
    missing = [k for k in p_leaves if k not in m_leaves]
    extra = [k for k in m_leaves if k not in p_leaves]
    if missing:
        raise ValueError(f"{field} is missing leaf '{missing[0]}' of the params (every leaf must be present)")
    if extra:
        raise ValueError(f"{field} has leaf '{extra[0]}' that the params do not have")
    for k, x in p_leaves.items():
        ms, ps = np.shape(m_leaves[k]), np.shape(x)
        if ms != ps:
            raise ValueError(f"{field} leaf '{k}' has shape {ms}, the params leaf has shape {ps}")
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(mask):
        raise ValueError(
            f"{field} tree structure differs from the params: {jax.tree_util.tree_structure(mask)}"
        )


# ----------------------------------------------------------------------------------------------
# construction and accounting


def ones(params: PyTree) -> PyTree:
    """The all-ones (dense) mask for ``params``: bool leaves of the same shapes."""
    return jax.tree_util.tree_map(lambda x: jnp.ones(jnp.shape(x), dtype=bool), params)


def apply(params: PyTree, mask: PyTree) -> PyTree:
    """``params ⊙ mask`` leaf by leaf (pruned entries become exactly 0)."""
    return jax.tree_util.tree_map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), params, mask)


def count(mask: PyTree, prunable: Predicate | None = None) -> tuple[jax.Array, int]:
    """(kept, total) over prunable leaves. ``kept`` is an int32 array (jit-safe), ``total`` a Python int."""
    kept = jnp.zeros((), jnp.int32)
    total = 0
    for _, m, is_p in _leaves_with_flags(mask, prunable):
        if is_p:
            kept = kept + jnp.sum(m, dtype=jnp.int32)
            total += int(np.size(m))
    if total == 0:
        raise ValueError("mask has no prunable leaves (the prunable predicate rejected every leaf)")
    return kept, total


def density(mask: PyTree, prunable: Predicate | None = None) -> jax.Array:
    """Fraction of prunable weights kept."""
    kept, total = count(mask, prunable)
    return kept / total


def sparsity(mask: PyTree, prunable: Predicate | None = None) -> jax.Array:
    """Fraction of prunable weights removed (1 − density)."""
    return 1.0 - density(mask, prunable)


def layer_density(mask: PyTree, prunable: Predicate | None = None) -> dict[str, jax.Array]:
    """Density per prunable leaf, keyed by its path name."""
    return {
        name: jnp.mean(m.astype(jnp.float32)) for name, m, is_p in _leaves_with_flags(mask, prunable) if is_p
    }


def kept_count(density: float, n: int) -> int:
    """Number of weights kept at ``density`` out of ``n``: ``floor(density * n + 1/2)``."""
    return math.floor(density * n + 0.5)


def is_nested(inner: PyTree, outer: PyTree) -> jax.Array:
    """True iff every entry kept by ``inner`` is also kept by ``outer``."""
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: jnp.all(~a | b), inner, outer))
    return jnp.all(jnp.stack(leaves))


# ----------------------------------------------------------------------------------------------
# top-k selection


def _keep_top(scores: jax.Array, k) -> jax.Array:
    """Boolean vector keeping the ``k`` largest scores; ties go to the lower index; NaN counts as −inf."""
    s = jnp.where(jnp.isnan(scores), -jnp.inf, scores.astype(jnp.float32))
    order = jnp.argsort(-s, stable=True)  # stable: among equal scores the lower index comes first
    rank = jnp.zeros(s.shape, jnp.int32).at[order].set(jnp.arange(s.size, dtype=jnp.int32))
    return rank < k


def _prunable_vectors(tree, prunable):
    entries = _leaves_with_flags(tree, prunable)
    return [(name, x) for name, x, is_p in entries if is_p]


def topk(
    scores: PyTree,
    density: float,
    scope: str = "global",
    prunable: Predicate | None = None,
    within: PyTree | None = None,
) -> PyTree:
    """Mask keeping the highest-scoring prunable weights, exactly ``kept_count(density, n)`` of them.

    scope="global": one ranking over all prunable leaves (n = all prunable weights).
    scope="layerwise": each prunable leaf keeps ``kept_count(density, leaf.size)`` entries.
    ``within``: optional current mask; entries it has removed are never kept (see ``prune_to``).
    Non-prunable leaves are all ones.
    """
    d = check_density(density)
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if within is not None:
        check_congruent(scores, within, field="current_mask")
        scores = jax.tree_util.tree_map(
            lambda s, m: jnp.where(m, jnp.asarray(s, jnp.float32), -jnp.inf), scores, within
        )
    flags = prunable_flags(scores, prunable)
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    flag_leaves = jax.tree_util.tree_leaves(flags)
    if not any(flag_leaves):
        raise ValueError("scores have no prunable leaves (the prunable predicate rejected every leaf)")
    out = [None] * len(leaves)
    if scope == "global":
        idx = [i for i, f in enumerate(flag_leaves) if f]
        flat = jnp.concatenate([jnp.ravel(leaves[i]) for i in idx])
        keep = _keep_top(flat, kept_count(d, flat.size))
        offset = 0
        for i in idx:
            n = int(np.size(leaves[i]))
            out[i] = keep[offset : offset + n].reshape(np.shape(leaves[i]))
            offset += n
    else:
        for i, f in enumerate(flag_leaves):
            if f:
                n = int(np.size(leaves[i]))
                out[i] = _keep_top(jnp.ravel(leaves[i]), kept_count(d, n)).reshape(np.shape(leaves[i]))
    for i, f in enumerate(flag_leaves):
        if not f:
            out[i] = jnp.ones(np.shape(leaves[i]), bool)
    return jax.tree_util.tree_unflatten(treedef, out)


def prune_to(
    density: float,
    scores: PyTree,
    current_mask: PyTree,
    scope: str = "global",
    prunable: Predicate | None = None,
) -> PyTree:
    """Remove the lowest-scoring surviving weights until ``density`` (of ALL prunable weights) is left.

    Only removes: the result is nested in ``current_mask``. If ``current_mask`` is concrete and keeps
    fewer weights than requested, a ``ValueError`` is raised (use a lower density).
    """
    d = check_density(density)
    check_congruent(scores, current_mask, field="current_mask")
    try:
        if scope == "global":
            kept, total = count(current_mask, prunable)
            need = [(kept_count(d, total), int(kept), "all prunable weights")]
        else:
            need = [
                (kept_count(d, int(np.size(m))), int(np.sum(m)), name)
                for name, m in _prunable_vectors(current_mask, prunable)
            ]
    except jax.errors.ConcretizationTypeError:
        need = []  # traced mask: the caller is responsible; the result is still nested (−inf scores)
    for want, have, where in need:
        if want > have:
            raise ValueError(
                f"density={d} asks to keep {want} of {where} but the current mask keeps only {have}; "
                "prune_to only removes weights"
            )
    return topk(scores, d, scope=scope, prunable=prunable, within=current_mask)


def random_mask(
    key: jax.Array, density: float, like: PyTree, scope: str = "global", prunable: Predicate | None = None
) -> PyTree:
    """A uniformly random mask keeping exactly ``kept_count(density, n)`` prunable weights."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, len(leaves))
    scores = jax.tree_util.tree_unflatten(
        treedef, [jax.random.uniform(k, np.shape(x)) for k, x in zip(keys, leaves, strict=True)]
    )
    return topk(scores, density, scope=scope, prunable=prunable)


# ----------------------------------------------------------------------------------------------
# bit packing


def pack(mask: PyTree, prunable: Predicate | None = None) -> jax.Array:
    """Pack the prunable entries (flattened order) into a uint8 bit vector (``jnp.packbits``)."""
    bits = jnp.concatenate([jnp.ravel(m).astype(jnp.uint8) for _, m in _prunable_vectors(mask, prunable)])
    return jnp.packbits(bits)


def unpack(packed: jax.Array, like: PyTree, prunable: Predicate | None = None) -> PyTree:
    """Inverse of ``pack``: a mask shaped like ``like``; non-prunable leaves are all ones."""
    flags = jax.tree_util.tree_leaves(prunable_flags(like, prunable))
    leaves, treedef = jax.tree_util.tree_flatten(like)
    n = sum(int(np.size(x)) for x, f in zip(leaves, flags, strict=True) if f)
    bits = jnp.unpackbits(packed, count=n).astype(bool)
    out, offset = [], 0
    for x, f in zip(leaves, flags, strict=True):
        size = int(np.size(x))
        if f:
            out.append(bits[offset : offset + size].reshape(np.shape(x)))
            offset += size
        else:
            out.append(jnp.ones(np.shape(x), bool))
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------
# the compressed view used by ES


@dataclass(frozen=True, eq=False)
class CompressedView:
    """Flatten only the active entries of a params tree, and scatter a vector back.

    Built once per mask on the host (the mask changes only between pruning levels). The active set is
    taken from the MASK, never from the values, so active weights that are exactly zero (e.g.
    zero-initialised biases) keep their place. ``flatten`` and ``scatter`` are jit- and vmap-safe.
    """

    treedef: Any
    shapes: tuple
    dtypes: tuple
    index: np.ndarray  # int32 positions of active entries in the full flat vector
    full_size: int

    @classmethod
    def from_mask(cls, mask: PyTree, params: PyTree | None = None) -> CompressedView:
        if params is not None:
            check_congruent(params, mask)
        leaves, treedef = jax.tree_util.tree_flatten(mask)
        ref = jax.tree_util.tree_leaves(params) if params is not None else [None] * len(leaves)
        flat = np.concatenate([np.ravel(np.asarray(m, dtype=bool)) for m in leaves])
        return cls(
            treedef=treedef,
            shapes=tuple(np.shape(m) for m in leaves),
            dtypes=tuple(jnp.float32 if r is None else jnp.asarray(r).dtype for r in ref),
            index=np.flatnonzero(flat).astype(np.int32),
            full_size=int(flat.size),
        )

    @property
    def size(self) -> int:
        """Number of active entries (the dimension the ES searches)."""
        return int(self.index.size)

    def _ravel(self, params: PyTree) -> jax.Array:
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(params)])

    def flatten(self, params: PyTree) -> jax.Array:
        """Active entries of ``params`` as one vector of length ``self.size``."""
        return self._ravel(params)[self.index]

    def scatter(self, vector: jax.Array) -> PyTree:
        """A full params tree with ``vector`` at the active entries and exact zeros elsewhere."""
        if vector.shape[-1] != self.size:
            raise ValueError(f"vector has {vector.shape[-1]} entries, the view has {self.size} active ones")
        full = jnp.zeros(self.full_size, vector.dtype).at[self.index].set(vector)
        out, offset = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape, dtype=np.int64))
            out.append(full[offset : offset + n].reshape(shape).astype(dtype))
            offset += n
        return jax.tree_util.tree_unflatten(self.treedef, out)
