"""Linear mode connectivity: metrics along the straight line between two networks, and the error barrier.

The path (Frankle et al. 2020; Lange & Sprekeler 2023, Sec. 5 and Fig. 6) is

    θ(α) = α·θ + (1 − α)·θ′,   α ∈ [0, 1]      (α = 1: θ, α = 0: θ′),

evaluated on an α grid that contains both endpoints. It is computed as the "precise lerp"
``θ′ + α(θ − θ′)`` for α < ½ and ``θ − (1 − α)(θ − θ′)`` otherwise, which is EXACT (bitwise) at both
endpoints and gives exactly θ everywhere when θ = θ′.

Error barrier (``reference="linear"``, the default; Entezari et al. 2022's form, the one in our brief)::

    B = max_α  E(θ(α)) − [α·E(θ) + (1 − α)·E(θ′)]

i.e. the largest excess of the error along the path over the straight line between the endpoint errors.
``reference="mean"`` gives Frankle et al. 2020's "error barrier height" ``max_α E(θ(α)) − ½(E(θ) + E(θ′))``.
The paper (Sec. 5) writes only ``max_α A(αθ + (1 − α)θ′)`` of the test accuracy A and plots the curves;
with E = 1 − A both forms measure the dip below the endpoints. The reference line is also a precise lerp,
so the barrier of a network with itself is exactly 0, and with the endpoints on the grid B ≥ 0 (the
endpoints themselves give 0 for "linear"). B is reported in the units of E (accuracy error: a fraction).

The error E is a function of the evaluator's metrics: ``error="accuracy"`` → ``1 − accuracy`` (default);
any other metric name is taken as an error already (a loss); a callable ``error(metrics) -> (A,)`` covers
everything else (a control task: ``lambda m: -m["return"]``).

Every path is ONE population: all α points (and, for :func:`pairwise_barriers`, all pairs' paths) are built
as member params and given to an evaluator (``analysis.evaluate``) at once — in member blocks only when their
weights would not fit (``block_size``). For classification use
``evaluate.classification_evaluator(module, x_test, y_test)``; for any task of the task protocol
``evaluate.task_evaluator(task, state)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import masks as masks_lib
from es_lottery.analysis.evaluate import Evaluator, evaluate_generated

PyTree = Any
ErrorSpec = str | Callable[[Mapping[str, np.ndarray]], Any]

DEFAULT_ALPHAS = np.linspace(0.0, 1.0, 21)  # step 0.05
REFERENCES = ("linear", "mean")

__all__ = [
    "DEFAULT_ALPHAS",
    "REFERENCES",
    "ConnectivityResult",
    "PairwiseBarriers",
    "error_barrier",
    "error_curve",
    "interpolate",
    "lerp",
    "linear_mode_connectivity",
    "pairwise_barriers",
]


def lerp(a, b, alpha):
    """``α·a + (1 − α)·b`` as a precise lerp: exactly ``a`` at α = 1, exactly ``b`` at α = 0, and exactly
    ``a`` for every α when ``a == b``. Works on arrays (broadcasting) with JAX or NumPy inputs."""
    xp = jnp if any(isinstance(v, jax.Array) for v in (a, b, alpha)) else np
    d = a - b
    return xp.where(alpha < 0.5, b + alpha * d, a - (1 - alpha) * d)


def _check_alphas(alphas, name: str = "alphas", need_endpoints: bool = True) -> np.ndarray:
    a = np.asarray(alphas, np.float64)
    if a.ndim != 1 or a.size < 2 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a 1-D array of ≥ 2 finite values, got shape {a.shape}")
    if need_endpoints and not (np.any(a == 0.0) and np.any(a == 1.0)):
        raise ValueError(f"{name} must contain both endpoints 0 and 1 (the two networks), got {a.tolist()}")
    return a


def _check_pair(theta_a: PyTree, theta_b: PyTree) -> None:
    masks_lib.check_congruent(theta_a, theta_b, field="theta_b")


def interpolate(theta_a: PyTree, theta_b: PyTree, alphas) -> PyTree:
    """Member params of the path: leaves ``(A, …)`` with member i = θ(α_i) = α_i·θ_a + (1 − α_i)·θ_b."""
    _check_pair(theta_a, theta_b)
    return _interpolate(theta_a, theta_b, alphas)


def _interpolate(theta_a: PyTree, theta_b: PyTree, alphas) -> PyTree:
    al = jnp.asarray(alphas, jnp.float32)

    def leaf(a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        w = al.astype(a.dtype).reshape((-1,) + (1,) * a.ndim)
        return lerp(a[None], b[None], w)

    return jax.tree_util.tree_map(leaf, theta_a, theta_b)


def _path_rows(alphas, theta_a, theta_b):
    return _interpolate(theta_a, theta_b, alphas)


def _pair_rows(rows, stacked):
    """Members of several paths at once: row = (index i, index j, α) into the stacked networks."""
    i, j, w = rows

    def leaf(s):
        ww = w.astype(s.dtype).reshape((-1,) + (1,) * (s.ndim - 1))
        return lerp(s[i], s[j], ww)

    return jax.tree_util.tree_map(leaf, stacked)


def error_curve(metrics: Mapping[str, Any], error: ErrorSpec = "accuracy") -> np.ndarray:
    """The error along a path from the evaluator's metrics (see the module doc), float64."""
    if callable(error):
        return np.asarray(error(metrics), np.float64)
    if not isinstance(error, str):
        raise TypeError(f"error must be a metric name or a callable, got {error!r}")
    if error not in metrics:
        raise ValueError(f"error metric {error!r} is not among the evaluated metrics: {', '.join(metrics)}")
    values = np.asarray(metrics[error], np.float64)
    return 1.0 - values if error == "accuracy" else values


def error_barrier(errors, alphas, reference: str = "linear") -> tuple[float, float]:
    """``(B, α*)``: the barrier of an error curve and the α where it is attained (first on ties).

    ``errors[i]`` is the error at ``alphas[i]``; the grid must contain 0 and 1. ``reference``: "linear"
    (``max_α E(α) − [α·E(1) + (1 − α)·E(0)]``) or "mean" (``max_α E(α) − ½(E(1) + E(0))``).
    """
    a = _check_alphas(alphas)
    e = np.asarray(errors, np.float64)
    if e.shape != a.shape:
        raise ValueError(f"errors has shape {e.shape}, alphas {a.shape}: one error per α")
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; allowed: {', '.join(REFERENCES)}")
    e1 = e[np.flatnonzero(a == 1.0)[0]]  # error of θ
    e0 = e[np.flatnonzero(a == 0.0)[0]]  # error of θ′
    ref = lerp(e1, e0, a) if reference == "linear" else np.full_like(a, (e1 + e0) / 2)
    excess = e - ref
    i = int(np.argmax(excess))
    return float(excess[i]), float(a[i])


@dataclass(frozen=True, eq=False)
class ConnectivityResult:
    """One path: ``alphas (A,)``, every metric ``(A,)``, the ``error (A,)`` curve and its barrier."""

    alphas: np.ndarray
    metrics: dict[str, np.ndarray]
    error: np.ndarray
    barrier: float
    barrier_alpha: float
    reference: str
    error_name: str


def _error_name(error: ErrorSpec) -> str:
    if callable(error):
        return getattr(error, "__name__", "error")
    return "1 − accuracy" if error == "accuracy" else error


def linear_mode_connectivity(
    evaluate: Evaluator,
    theta_a: PyTree,
    theta_b: PyTree,
    alphas=DEFAULT_ALPHAS,
    error: ErrorSpec = "accuracy",
    reference: str = "linear",
    block_size: int | str | None = "auto",
) -> ConnectivityResult:
    """Evaluate the path θ(α) = α·θ_a + (1 − α)·θ_b as ONE population and compute its error barrier."""
    a = _check_alphas(alphas)
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; allowed: {', '.join(REFERENCES)}")
    _check_pair(theta_a, theta_b)
    theta_a = jax.tree_util.tree_map(jnp.asarray, theta_a)
    theta_b = jax.tree_util.tree_map(jnp.asarray, theta_b)
    metrics = evaluate_generated(
        evaluate, _path_rows, jnp.asarray(a, jnp.float32), block_size, (theta_a, theta_b)
    )
    err = error_curve(metrics, error)
    barrier, at = error_barrier(err, a, reference)
    return ConnectivityResult(a, metrics, err, barrier, at, reference, _error_name(error))


@dataclass(frozen=True, eq=False)
class PairwiseBarriers:
    """Barriers between every listed pair of networks: ``barrier[i, j]`` (symmetric, NaN where not
    computed, 0 on the diagonal), and the paths ``metrics[m] (pairs, A)`` / ``error (pairs, A)`` with
    ``pairs[k] = (i, j)`` (α = 1 is network i)."""

    alphas: np.ndarray
    pairs: list[tuple[int, int]]
    metrics: dict[str, np.ndarray]
    error: np.ndarray
    barrier: np.ndarray
    reference: str
    error_name: str


def pairwise_barriers(
    evaluate: Evaluator,
    params: Sequence[PyTree],
    alphas=DEFAULT_ALPHAS,
    pairs: Sequence[tuple[int, int]] | None = None,
    error: ErrorSpec = "accuracy",
    reference: str = "linear",
    block_size: int | str | None = "auto",
) -> PairwiseBarriers:
    """Error barriers between networks (e.g. the trained params of every IMP level, or of every seed).

    ``pairs``: index pairs ``(i, j)``; default all ``i < j``. All pairs' paths together are ONE population
    (``len(pairs) · len(alphas)`` members, in blocks if needed) — e.g. Fig. 6's level-by-level matrix.
    """
    a = _check_alphas(alphas)
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; allowed: {', '.join(REFERENCES)}")
    n = len(params)
    if n < 2:
        raise ValueError(f"params must hold ≥ 2 networks, got {n}")
    for k, p in enumerate(params[1:], 1):
        masks_lib.check_congruent(params[0], p, field=f"params[{k}]")
    if pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    pairs = [(int(i), int(j)) for i, j in pairs]
    bad = [p for p in pairs if not (0 <= p[0] < n and 0 <= p[1] < n)]
    if not pairs or bad:
        raise ValueError(f"pairs must index 0 … {n - 1} (and be non-empty), got {bad or pairs}")
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *params)
    ii = np.repeat([p[0] for p in pairs], a.size).astype(np.int32)
    jj = np.repeat([p[1] for p in pairs], a.size).astype(np.int32)
    al = np.tile(a, len(pairs)).astype(np.float32)

    flat = evaluate_generated(evaluate, _pair_rows, (ii, jj, al), block_size, (stacked,))
    metrics = {k: v.reshape(len(pairs), a.size) for k, v in flat.items()}
    err = error_curve(flat, error).reshape(len(pairs), a.size)
    barrier = np.full((n, n), np.nan)
    np.fill_diagonal(barrier, 0.0)
    for k, (i, j) in enumerate(pairs):
        b, _ = error_barrier(err[k], a, reference)
        barrier[i, j] = barrier[j, i] = b
    return PairwiseBarriers(a, pairs, metrics, err, barrier, reference, _error_name(error))
