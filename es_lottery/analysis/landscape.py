"""Loss-landscape projections around a trained network (Lange & Sprekeler 2023, Fig. 6 bottom, Fig. 10).

1-D random projections (Sec. 5)
    ``L(ξ) = L(θ + ξ·η)`` with ``η ~ N(0, I)`` (raw, not normalised, as in the paper) for ξ ∈ [−1, 1]
    (:func:`projection_1d`). :func:`fit_quadratic` fits ``L(ξ) ≈ a·ξ² + b·ξ + c`` by least squares and
    reports ``curvature = 2a`` — the second derivative ``d²L/dξ²`` of the fitted parabola (the paper's
    "approximate curvature"; ``a`` is returned as well).

2-D projections (appendix A.3, after Li et al. 2018)
    ``L(α, β) = L(θ + α·η₁ + β·η₂)`` on an α × β grid, by default 51 × 51 points in [−1, 1]²
    (:func:`projection_2d`). The directions are FILTER-NORMALISED (:func:`filter_normalize`): every
    filter / neuron of a Gaussian direction is rescaled to the norm of the corresponding filter / neuron
    of a reference network. A filter is everything that feeds ONE output unit, i.e. all axes of a kernel
    except the last: a dense kernel ``(in, out)`` has ``out`` neurons (its columns), a conv kernel
    ``(kh, kw, in, out)`` has ``out`` filters. The reference is the centre network by default; the paper
    normalises with the trained DENSE level-0 network and applies the same directions at every level
    (pass ``reference=`` for that). Biases (and every other 1-D leaf): ``bias="zero"`` (default) leaves
    them unperturbed (Li et al.'s ``ignore='biasbn'``); ``bias="copy"`` uses the reference's bias itself as
    the direction (Li et al.'s other choice). The grid comes back heatmap-ready: ``values[m][j, i]`` is
    metric m at ``(α_i, β_j)`` — ``imshow(values[m], origin="lower", extent=(α₀, α₋₁, β₀, β₋₁))``.

Masks
    With ``mask=``, directions are exactly zero at pruned entries, so every projected point stays in the
    sparse subspace of the ticket (pruned weights stay 0); filter norms are then taken over the surviving
    entries of the direction. Directions are float32 and drawn from an explicit key (one draw for all leaves).

Evaluation
    Every projection is ONE population: all ξ (or all α × β) points are built as member params and handed
    to an evaluator (``analysis.evaluate``: the population kernels for classification, ``task_evaluator``
    for any task) — in member blocks only when the weights of all points would not fit in memory
    (``block_size="auto"``, see ``analysis.evaluate``). The centre point (0 or (0, 0)) is exactly θ.
    For an MLP a ``classification_evaluator`` takes a faster exact route (``fast=True``, the default):
    every point's first layer is ``xW + b + α(xD₁ + e₁) + β(xD₂ + e₂)``, so the first-layer products are
    computed once per data chunk for the whole grid (``evaluate.evaluate_affine``); the results equal the
    population kernel on the built points up to float32 rounding. ``fast=False`` builds the points.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import masks as masks_lib
from es_lottery.analysis.evaluate import Evaluator, evaluate_affine

PyTree = Any

DEFAULT_XIS = np.linspace(-1.0, 1.0, 41)
DEFAULT_GRID = np.linspace(-1.0, 1.0, 51)
NORMALIZATIONS = ("filter", "layer", "none")
BIAS_MODES = ("zero", "copy")

__all__ = [
    "BIAS_MODES",
    "DEFAULT_GRID",
    "DEFAULT_XIS",
    "NORMALIZATIONS",
    "Landscape2D",
    "Projection1D",
    "QuadraticFit",
    "filter_normalize",
    "fit_quadratic",
    "gaussian_direction",
    "mask_direction",
    "projection_1d",
    "projection_2d",
    "random_directions",
]


# ----------------------------------------------------------------------------------------------
# directions


def mask_direction(direction: PyTree, mask: PyTree | None) -> PyTree:
    """``direction`` with exact zeros where ``mask`` is False (``None``: unchanged)."""
    if mask is None:
        return direction
    masks_lib.check_congruent(direction, mask)
    return jax.tree_util.tree_map(
        lambda d, m: jnp.where(jnp.asarray(m, bool), d, jnp.zeros((), jnp.asarray(d).dtype)), direction, mask
    )


@partial(jax.jit, static_argnames=("treedef", "shapes"))
def _gaussian(key, mask, treedef, shapes):
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)  # ONE draw: one threefry program to compile
    leaves, offset = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        leaves.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return mask_direction(jax.tree_util.tree_unflatten(treedef, leaves), mask)


def gaussian_direction(key: jax.Array, like: PyTree, mask: PyTree | None = None) -> PyTree:
    """``η ~ N(0, I)`` shaped like ``like`` (float32), zero where ``mask`` is False.

    One draw of all entries from ``key``, cut into the leaves in tree order (row-major). ``like``: params,
    or anything with their shapes (``jax.ShapeDtypeStruct`` leaves). Jitted.
    """
    if mask is not None:
        masks_lib.check_congruent(like, mask)
        mask = jax.tree_util.tree_map(lambda m: jnp.asarray(m, bool), mask)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    return _gaussian(key, mask, treedef, tuple(tuple(np.shape(x)) for x in leaves))


def _filter_norms(x: jax.Array) -> jax.Array:
    """Norm of every filter (all axes but the last), kept broadcastable against ``x``."""
    axes = tuple(range(x.ndim - 1))
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))


def _rescale(d: jax.Array, norm_d: jax.Array, norm_ref: jax.Array) -> jax.Array:
    safe = jnp.where(norm_d > 0, norm_d, 1.0)
    return jnp.where(norm_d > 0, d * (norm_ref / safe), 0.0).astype(d.dtype)


def _normalize(direction, reference, mask, normalization: str, bias: str):
    direction = mask_direction(direction, mask)

    def leaf(d, r):
        if d.ndim < 2:
            return jnp.zeros_like(d) if bias == "zero" else r.astype(d.dtype)
        if normalization == "none":
            return d
        if normalization == "layer":
            nd = jnp.sqrt(jnp.sum(jnp.square(d.astype(jnp.float32))))
            nr = jnp.sqrt(jnp.sum(jnp.square(r.astype(jnp.float32))))
            return _rescale(d, nd, nr)
        return _rescale(d, _filter_norms(d), _filter_norms(r))

    out = jax.tree_util.tree_map(leaf, direction, reference)
    return mask_direction(out, mask) if bias == "copy" else out


_normalize_jit = jax.jit(_normalize, static_argnames=("normalization", "bias"))


def filter_normalize(
    direction: PyTree,
    reference: PyTree,
    mask: PyTree | None = None,
    normalization: str = "filter",
    bias: str = "zero",
) -> PyTree:
    """Rescale ``direction`` filter by filter to the norms of ``reference`` (Li et al. 2018).

    ``normalization``: "filter" (each filter / neuron, all kernel axes but the last), "layer" (each leaf as
    a whole) or "none". Applies to leaves with ≥ 2 dims; 1-D leaves (biases) follow ``bias`` ("zero": not
    perturbed, "copy": the reference's values). ``mask`` zeroes the direction at pruned entries BEFORE the
    norms are taken; a filter whose direction is all zero stays zero. Jitted (one compile per tree).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")
    if bias not in BIAS_MODES:
        raise ValueError(f"unknown bias mode {bias!r}; allowed: {', '.join(BIAS_MODES)}")
    masks_lib.check_congruent(reference, direction, field="direction")
    if mask is not None:
        masks_lib.check_congruent(reference, mask)
        mask = jax.tree_util.tree_map(lambda m: jnp.asarray(m, bool), mask)
    direction = jax.tree_util.tree_map(jnp.asarray, direction)
    reference = jax.tree_util.tree_map(jnp.asarray, reference)
    return _normalize_jit(direction, reference, mask, normalization=normalization, bias=bias)


def random_directions(
    key: jax.Array,
    reference: PyTree,
    n: int = 2,
    mask: PyTree | None = None,
    normalization: str = "filter",
    bias: str = "zero",
) -> tuple[PyTree, ...]:
    """``n`` independent Gaussian directions (keys ``split(key, n)``), masked and filter-normalised to
    ``reference`` — the 2-D projection's η₁, η₂ (``normalization="none"`` gives raw η ~ N(0, I), with
    ``bias`` still applied to 1-D leaves)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return tuple(
        filter_normalize(gaussian_direction(k, reference, mask), reference, mask, normalization, bias)
        for k in jax.random.split(key, int(n))
    )


# ----------------------------------------------------------------------------------------------
# evaluation of a projection


def _check_axis(values, name: str) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size < 1 or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite values, got shape {v.shape}")
    return v


# ----------------------------------------------------------------------------------------------
# 1-D


@dataclass(frozen=True)
class QuadraticFit:
    """Least-squares ``y ≈ a·x² + b·x + c``; ``curvature = 2a`` (the fitted second derivative);
    ``rmse`` of the residuals."""

    a: float
    b: float
    c: float
    curvature: float
    rmse: float

    def __call__(self, x):
        x = np.asarray(x, np.float64)
        return self.a * x * x + self.b * x + self.c


def fit_quadratic(x, y) -> QuadraticFit:
    """Fit ``a·x² + b·x + c`` to ``(x, y)`` by least squares (float64); needs ≥ 3 distinct x values."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y need the same length, got {x.size} and {y.size}")
    if np.unique(x).size < 3:
        raise ValueError("a quadratic fit needs at least 3 distinct x values")
    if not np.all(np.isfinite(y)):
        raise ValueError("y holds NaN/inf values; a least-squares fit needs finite values")
    design = np.stack([x * x, x, np.ones_like(x)], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    rmse = float(np.sqrt(np.mean((design @ np.array([a, b, c]) - y) ** 2)))
    return QuadraticFit(float(a), float(b), float(c), float(2 * a), rmse)


@dataclass(frozen=True, eq=False)
class Projection1D:
    """``values[m] (X,)``: metric m at ``θ + xis[i]·η``; ``fits[m]``: its :class:`QuadraticFit`."""

    xis: np.ndarray
    values: dict[str, np.ndarray]
    fits: dict[str, QuadraticFit]


def projection_1d(
    evaluate: Evaluator,
    center: PyTree,
    direction: PyTree,
    xis=DEFAULT_XIS,
    block_size: int | str | None = "auto",
    fast: bool = True,
) -> Projection1D:
    """Evaluate ``θ + ξ·η`` for every ξ as ONE population; fit a parabola to every metric.

    ``direction``: e.g. ``gaussian_direction(key, θ, mask)`` (the paper's raw η ~ N(0, I)). ``fast``: use
    the evaluator's shared-first-layer path when it has one (``evaluate.evaluate_affine``).
    """
    xs = _check_axis(xis, "xis")
    values = evaluate_affine(evaluate, center, [direction], xs[:, None], block_size, fast)
    fits = {}
    for k, v in values.items():
        if xs.size >= 3 and np.unique(xs).size >= 3 and np.all(np.isfinite(v)):
            fits[k] = fit_quadratic(xs, v)
    return Projection1D(xs, values, fits)


# ----------------------------------------------------------------------------------------------
# 2-D


@dataclass(frozen=True, eq=False)
class Landscape2D:
    """``values[m] (len(betas), len(alphas))``: metric m at ``θ + alphas[i]·η₁ + betas[j]·η₂`` in
    ``[j, i]`` (rows = β, columns = α: ready for ``imshow(origin="lower")``)."""

    alphas: np.ndarray
    betas: np.ndarray
    values: dict[str, np.ndarray]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (float(self.alphas[0]), float(self.alphas[-1]), float(self.betas[0]), float(self.betas[-1]))


def projection_2d(
    evaluate: Evaluator,
    center: PyTree,
    direction1: PyTree,
    direction2: PyTree,
    alphas=DEFAULT_GRID,
    betas=None,
    block_size: int | str | None = "auto",
    fast: bool = True,
) -> Landscape2D:
    """Evaluate ``θ + α·η₁ + β·η₂`` on the whole α × β grid as ONE population (blocks if needed).

    ``direction1/2``: e.g. ``random_directions(key, θ_ref, 2, mask)`` (filter-normalised). ``betas``
    defaults to ``alphas``. Members are ordered β-major (row j of the heatmap is one β). ``fast``: use
    the evaluator's shared-first-layer path when it has one (``evaluate.evaluate_affine``).
    """
    al = _check_axis(alphas, "alphas")
    be = al if betas is None else _check_axis(betas, "betas")
    bb, aa = np.meshgrid(be, al, indexing="ij")  # (B, A)
    coeffs = np.stack([aa.ravel(), bb.ravel()], axis=1)
    flat = evaluate_affine(evaluate, center, [direction1, direction2], coeffs, block_size, fast)
    return Landscape2D(al, be, {k: v.reshape(be.size, al.size) for k, v in flat.items()})
