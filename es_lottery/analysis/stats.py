"""Statistics of pruned networks across IMP levels (Lange & Sprekeler 2023, Fig. 2, 7, 8, 11).

Everything here is a plain function of params / std / mask pytrees or of accuracy arrays, so it works on
any network — from a run directory (:mod:`es_lottery.analysis.runs`) or straight from research code.

* **Layer-wise remaining fractions** (Fig. 11): :func:`layer_fractions` of one mask (kept / size of every
  prunable leaf), :func:`layer_fractions_by_level` stacked over levels. :func:`layer_weight_stats` gives
  per-layer summaries of the SURVIVING weights (mean |θ|, std, count).
* **Spearman correlation** (Fig. 7): :func:`rankdata` gives average ranks (tied values share the mean of the
  ranks they span, as ``scipy.stats.rankdata(method="average")``); :func:`spearman` is the Pearson
  correlation of those ranks (``scipy.stats.spearmanr``). :func:`snr_magnitude_correlation` correlates
  SNR = |μ|/σ with |μ| over the surviving prunable weights of one level.
* **Mask overlap** (:func:`mask_overlap`, :func:`snr_magnitude_overlap`): of two masks A, B over the prunable
  weights, ``|A∩B|``, ``|A∩B| / |A|``, the Jaccard index ``|A∩B| / |A∪B|`` and the overlap a random mask of
  B's density would have on average (``|B| / n``). :func:`snr_magnitude_overlap` prunes ONE trained level by
  both criteria to the SAME density (``masks.prune_to``: exact counts, nested in the level's mask) and
  compares the two masks.
* **Ticket-effect decomposition** (Fig. 2 / 8, after Vischer et al. 2021): :func:`ticket_effects`.

Only prunable leaves (``masks.default_prunable``: kernels) enter any statistic; biases never do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from es_lottery import masks as masks_lib

PyTree = Any

__all__ = [
    "layer_fractions",
    "layer_fractions_by_level",
    "layer_weight_stats",
    "mask_overlap",
    "rankdata",
    "snr_magnitude_correlation",
    "snr_magnitude_correlation_by_level",
    "snr_magnitude_overlap",
    "spearman",
    "surviving_values",
    "ticket_effects",
]


# ----------------------------------------------------------------------------------------------
# layer-wise fractions and weight summaries


def _prunable_leaves(tree: PyTree, prunable=None) -> list[tuple[str, np.ndarray]]:
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(tree, prunable))
    return [
        (masks_lib.path_name(p), np.asarray(jax.device_get(x)))
        for (p, x), f in zip(jax.tree_util.tree_leaves_with_path(tree), flags, strict=True)
        if f
    ]


def layer_fractions(mask: PyTree, prunable=None) -> dict[str, float]:
    """Fraction of each prunable leaf that the mask keeps, keyed by path name (``dense_0/kernel``)."""
    return {name: float(np.mean(np.asarray(m, bool))) for name, m in _prunable_leaves(mask, prunable)}


def layer_fractions_by_level(masks: Sequence[PyTree], prunable=None) -> dict[str, np.ndarray]:
    """:func:`layer_fractions` of every mask in ``masks`` (one per level): ``{layer: (levels,)}``."""
    if len(masks) == 0:
        raise ValueError("masks must hold at least one mask (one per level)")
    rows = [layer_fractions(m, prunable) for m in masks]
    for i, r in enumerate(rows[1:], 1):
        if r.keys() != rows[0].keys():
            raise ValueError(f"masks[{i}] has prunable leaves {sorted(r)}, masks[0] has {sorted(rows[0])}")
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def layer_weight_stats(params: PyTree, mask: PyTree | None = None, prunable=None) -> dict[str, dict]:
    """Per prunable leaf: ``count``, ``mean_abs``, ``std`` and ``max_abs`` of the surviving weights.

    ``mask=None`` takes every entry. A leaf with no survivors reports count 0 and NaN statistics.
    """
    mask = masks_lib.ones(params) if mask is None else mask
    masks_lib.check_congruent(params, mask)
    out = {}
    masked = dict(_prunable_leaves(mask, prunable))
    for name, w in _prunable_leaves(params, prunable):
        v = w[np.asarray(masked[name], bool)].astype(np.float64)
        n = int(v.size)
        out[name] = {
            "count": n,
            "mean_abs": float(np.mean(np.abs(v))) if n else float("nan"),
            "std": float(np.std(v)) if n else float("nan"),
            "max_abs": float(np.max(np.abs(v))) if n else float("nan"),
        }
    return out


def surviving_values(tree: PyTree, mask: PyTree, prunable=None) -> np.ndarray:
    """The surviving prunable entries of ``tree`` as one vector (leaves in tree order, row-major)."""
    masks_lib.check_congruent(tree, mask)
    m = dict(_prunable_leaves(mask, prunable))
    parts = [np.ravel(x)[np.ravel(np.asarray(m[name], bool))] for name, x in _prunable_leaves(tree, prunable)]
    return np.concatenate(parts) if parts else np.zeros(0)


# ----------------------------------------------------------------------------------------------
# rank correlation


def rankdata(x) -> np.ndarray:
    """Ranks 1 … n of a 1-D array; tied values get the AVERAGE of the ranks they span (float64).

    ``inf`` ranks above every finite value (``-inf`` below); NaN is rejected (drop such pairs first).
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"rankdata needs a 1-D array, got shape {x.shape}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError("rankdata got NaN values; drop them first (their rank is undefined)")
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # runs of equal values in sorted order: [start, end) → average of ranks start+1 … end
    new_run = np.empty(n, bool)
    if n:
        new_run[0] = True
        new_run[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)
    avg = (starts + 1 + ends) / 2.0  # mean of the integers start+1 … end
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks (ties handled as in scipy).

    NaN if either input is constant (its ranks have no spread) or has fewer than 2 entries.
    """
    x, y = np.ravel(np.asarray(x)), np.ravel(np.asarray(y))
    if x.shape != y.shape:
        raise ValueError(f"x and y need the same number of entries, got {x.size} and {y.size}")
    if x.size < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    if denom == 0:
        return float("nan")
    return float(np.clip(np.sum(rx * ry) / denom, -1.0, 1.0))


def snr_magnitude_correlation(final_params: PyTree, std_params: PyTree, mask: PyTree, prunable=None) -> float:
    """Spearman correlation of SNR ``|μ|/σ`` and magnitude ``|μ|`` over the surviving prunable weights.

    ``final_params`` is the trained mean μ, ``std_params`` the per-weight std σ of the search distribution
    (``TrainResult.std_params`` / a run's ``std.npz``), ``mask`` the level's mask (only its surviving
    prunable entries are used). σ = 0 gives SNR = inf (ranked highest); pairs with a NaN SNR are dropped.
    """
    if std_params is None:
        raise ValueError("std_params is None: SNR needs the per-weight std of an ES search distribution")
    masks_lib.check_congruent(final_params, std_params, field="std_params")
    mu = np.abs(surviving_values(final_params, mask, prunable).astype(np.float64))
    sigma = surviving_values(std_params, mask, prunable).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = mu / sigma
    ok = ~np.isnan(snr) & ~np.isnan(mu)
    return spearman(snr[ok], mu[ok])


def snr_magnitude_correlation_by_level(levels: Sequence[Any], prunable=None) -> np.ndarray:
    """:func:`snr_magnitude_correlation` of every level: ``levels`` holds objects with ``final_params``,
    ``std`` and ``mask`` (e.g. ``runs.RunData.series(seed, criterion)``); returns ``(levels,)``."""
    return np.asarray(
        [snr_magnitude_correlation(lv.final_params, lv.std, lv.mask, prunable) for lv in levels]
    )


# ----------------------------------------------------------------------------------------------
# mask overlap


def mask_overlap(a: PyTree, b: PyTree, prunable=None) -> dict[str, float]:
    """Overlap of masks A and B over the prunable weights.

    ``kept_a``, ``kept_b``, ``total``; ``intersection`` |A∩B|; ``fraction_of_a`` |A∩B| / |A|;
    ``jaccard`` |A∩B| / |A∪B|; ``random_expectation`` |B| / n — the mean ``fraction_of_a`` for a B drawn
    uniformly at random with its count (equal densities: ``fraction_of_a`` = 1 means identical masks).
    """
    masks_lib.check_congruent(a, b, field="mask b")
    va = np.concatenate([np.ravel(np.asarray(m, bool)) for _, m in _prunable_leaves(a, prunable)])
    vb = np.concatenate([np.ravel(np.asarray(m, bool)) for _, m in _prunable_leaves(b, prunable)])
    inter, union = int(np.sum(va & vb)), int(np.sum(va | vb))
    ka, kb, n = int(va.sum()), int(vb.sum()), int(va.size)
    return {
        "kept_a": ka,
        "kept_b": kb,
        "total": n,
        "intersection": inter,
        "fraction_of_a": inter / ka if ka else float("nan"),
        "jaccard": inter / union if union else float("nan"),
        "random_expectation": kb / n,
    }


def snr_magnitude_overlap(
    final_params: PyTree,
    std_params: PyTree,
    mask: PyTree,
    density: float,
    scope: str = "global",
    prunable=None,
) -> dict[str, float]:
    """Prune one trained level to ``density`` by magnitude |μ| and by SNR |μ|/σ; :func:`mask_overlap`.

    Both masks keep exactly ``masks.kept_count(density, n)`` prunable weights (ties by index) and are
    nested in ``mask``; A = magnitude mask, B = SNR mask.
    """
    if std_params is None:
        raise ValueError("std_params is None: SNR needs the per-weight std of an ES search distribution")
    from es_lottery.pruning import criteria as criteria_lib

    mag = masks_lib.prune_to(density, criteria_lib.magnitude(final_params), mask, scope, prunable)
    snr = masks_lib.prune_to(
        density, criteria_lib.snr(final_params, std_params=std_params), mask, scope, prunable
    )
    return mask_overlap(mag, snr, prunable)


# ----------------------------------------------------------------------------------------------
# ticket-effect decomposition


def ticket_effects(accuracy: Mapping[str, Any], ticket: str = "imp", extra_ticket: str | None = None) -> dict:
    """Decompose the ticket effect from the baselines' accuracies (Vischer et al. 2021's permutations).

    ``accuracy`` maps condition → accuracies (any shape, e.g. ``(levels,)`` or ``(seeds, levels)``, all
    the same) for ``ticket`` (the IMP ticket, e.g. ``"magnitude"`` or ``"imp"``) and the baselines of
    ``pruning.baselines``. Differences, wherever both conditions are given (higher = the ingredient helps):

    ===================  ==========================================  ========================================
    effect               difference                                  what it isolates
    ===================  ==========================================  ========================================
    ``total``            ticket − random_reinit                      the whole ticket effect
    ``weights``          ticket − permute_weights                    the surviving init values in place
    ``mask``             permute_weights − permute_mask_and_weights  which entries are kept (within a layer)
    ``layerwise_ratio``  permute_mask_and_weights − random_reinit    the per-layer counts implied by IMP
    ``reinit``           ticket − mask_reinit                        the init values and their distribution
    ``extra``            extra_ticket − ticket                       e.g. SNR − magnitude: curvature info
    ===================  ==========================================  ========================================

    ``weights + mask + layerwise_ratio == total`` (a telescoping sum). Returns ``{effect: array}``.
    """
    if not isinstance(accuracy, Mapping):
        raise TypeError("accuracy must map condition name → accuracies")
    acc = {k: np.asarray(v, np.float64) for k, v in accuracy.items()}
    if ticket not in acc:
        raise ValueError(f"accuracy has no entry for the ticket {ticket!r}; it has {', '.join(sorted(acc))}")
    shapes = {k: v.shape for k, v in acc.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"all accuracy arrays need one shape, got {shapes}")
    pairs = {
        "total": (ticket, "random_reinit"),
        "weights": (ticket, "permute_weights"),
        "mask": ("permute_weights", "permute_mask_and_weights"),
        "layerwise_ratio": ("permute_mask_and_weights", "random_reinit"),
        "reinit": (ticket, "mask_reinit"),
    }
    if extra_ticket is not None:
        if extra_ticket not in acc:
            raise ValueError(f"accuracy has no entry for extra_ticket {extra_ticket!r}")
        pairs["extra"] = (extra_ticket, ticket)
    return {name: acc[a] - acc[b] for name, (a, b) in pairs.items() if a in acc and b in acc}
