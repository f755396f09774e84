"""The iterative-pruning sparsity schedule: level k trains at density ``(1 − p)^k``.

Level 0 is dense; each later level removes the fraction ``p`` (``prune_rate``) of what was left, so after
``L`` levels with p = 0.2 the last level (k = L − 1) keeps 0.8^(L−1) of the prunable weights (20 levels →
1.44 %). Counts are exact and count PRUNABLE weights only (kernels; biases are never pruned):

* ``scope="global"`` (default, the paper's): level k keeps ``masks.kept_count(0.8^k, n)`` of all n
  prunable weights, ranked by one global threshold;
* ``scope="layerwise"``: each prunable leaf of size n_l keeps ``masks.kept_count(0.8^k, n_l)``.

Because ``kept_count`` is monotone in the density, the counts never increase from one level to the next,
so the masks that ``masks.prune_to`` builds level by level are nested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from es_lottery import masks as masks_lib
from es_lottery._checks import check_int

PyTree = Any

SCOPES = ("global", "layerwise")

__all__ = ["SCOPES", "PruningSchedule", "check_prune_rate", "check_scope", "level_density"]


def check_prune_rate(prune_rate: Any) -> float:
    """``prune_rate`` must be a number in the open interval (0, 1)."""
    ok = not isinstance(prune_rate, bool) and isinstance(prune_rate, (int, float, np.integer, np.floating))
    p = float(prune_rate) if ok else math.nan
    if not ok or not (0.0 < p < 1.0):
        raise ValueError(
            f"prune_rate must be a number in the open interval (0, 1) (fraction of the remaining weights "
            f"removed per level, e.g. 0.2), got {prune_rate!r}"
        )
    return p


def check_scope(scope: Any) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    return scope


def level_density(level: int, prune_rate: float) -> float:
    """``(1 − prune_rate) ** level`` (level 0 → 1.0)."""
    p = check_prune_rate(prune_rate)
    k = check_int(level, "level", 0)
    return (1.0 - p) ** k


@dataclass(frozen=True)
class PruningSchedule:
    """Densities of ``num_levels`` pruning levels (hashable, validated on construction).

    prune_rate: fraction of the surviving prunable weights removed per level, in (0, 1).
    num_levels: pruning levels, the dense level 0 included (level k keeps (1 − prune_rate)^k).
    scope: ``global`` (one threshold over every prunable weight) or ``layerwise`` (each layer alike).
    """

    prune_rate: float = 0.2
    num_levels: int = 20
    scope: str = "global"

    def __post_init__(self):
        check_prune_rate(self.prune_rate)
        check_int(self.num_levels, "num_levels", 1)
        check_scope(self.scope)

    def density(self, level: int) -> float:
        """Target density of ``level`` (fraction of prunable weights kept)."""
        k = check_int(level, "level", 0)
        if k >= self.num_levels:
            raise ValueError(
                f"level must be in 0..{self.num_levels - 1} (num_levels={self.num_levels}), got {k}"
            )
        return level_density(k, self.prune_rate)

    @property
    def densities(self) -> tuple[float, ...]:
        return tuple(self.density(k) for k in range(self.num_levels))

    def kept(self, level: int, params: PyTree, prunable=None) -> int:
        """Exact number of prunable weights kept at ``level`` for ``params`` (a tree or its mask)."""
        return sum(self.kept_per_layer(level, params, prunable).values())

    def kept_per_layer(self, level: int, params: PyTree, prunable=None) -> dict[str, int]:
        """Kept count per prunable leaf at ``level``.

        Layerwise scope: ``kept_count(d, n_l)`` for each leaf. Global scope: only the total
        ``kept_count(d, n)`` is fixed, so the result is ``{"<all prunable>": total}``.
        """
        d = self.density(level)
        sizes = _prunable_sizes(params, prunable)
        if self.scope == "global":
            return {"<all prunable>": masks_lib.kept_count(d, sum(sizes.values()))}
        return {name: masks_lib.kept_count(d, n) for name, n in sizes.items()}

    def validate_for(self, params: PyTree, prunable=None) -> None:
        """Raise if the last level would keep no prunable weight at all (``num_levels`` too large)."""
        last = self.num_levels - 1
        if self.kept(last, params, prunable) < 1:
            total = sum(_prunable_sizes(params, prunable).values())
            raise ValueError(
                f"num_levels={self.num_levels} with prune_rate={self.prune_rate} keeps 0 of the {total} "
                f"prunable weights at level {last}; use fewer levels"
            )


def _prunable_sizes(params: PyTree, prunable=None) -> dict[str, int]:
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(params, prunable))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    sizes = {
        masks_lib.path_name(path): int(np.size(x))
        for (path, x), is_p in zip(leaves, flags, strict=True)
        if is_p
    }
    if not sizes:
        raise ValueError("params have no prunable leaves (the prunable predicate rejected every leaf)")
    return sizes
