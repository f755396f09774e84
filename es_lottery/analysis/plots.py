"""Figures of the analysis (PNG): barriers, landscapes, layer-wise ratios, correlations, transfer.

Every function takes plain results (of ``connectivity``, ``landscape``, ``stats``, ``transfer``, or arrays)
and a path, writes ONE PNG and returns its path. Figures are drawn with matplotlib's object-oriented API on
an Agg canvas created inside each function (``Figure`` + ``FigureCanvasAgg``): importing this module does
not import pyplot and never changes the global backend of the caller's session.

Curves over levels are plotted against the density of prunable weights on a log axis that runs from dense
(left) to sparse (right), as in the paper's figures; arrays shaped ``(seeds, levels)`` are drawn as the
mean over seeds with a ± standard-error band.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "barrier_curves",
    "barrier_matrix",
    "correlation_curves",
    "figure",
    "landscape_heatmaps",
    "layer_ratio_bars",
    "projection_curves",
    "save",
    "transfer_curves",
]


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.5, 4.0)):
    """A figure of ``nrows × ncols`` panels of ``size`` inches each on its own Agg canvas (pyplot's global
    state and backend untouched): ``(figure, axes)``, ``axes`` always 2-D."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig, path) -> Path:
    """Lay out and write ``fig`` to ``path`` (PNG, 120 dpi; parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _mean_se(values) -> tuple[np.ndarray, np.ndarray | None]:
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        return v, None
    if v.ndim != 2:
        raise ValueError(f"values must be (levels,) or (seeds, levels), got shape {v.shape}")
    v = np.where(np.isfinite(v), v, np.nan)
    n = np.sum(np.isfinite(v), axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns / one seed: NaN, said by n
        mean = np.nanmean(v, axis=0)
        se = np.where(n > 1, np.nanstd(v, axis=0, ddof=1) / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean, se


def _density_axis(ax, xlabel: str = "density of prunable weights") -> None:
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def _lines(ax, series: Mapping[str, tuple[Any, Any]], density_axis: bool) -> None:
    for i, (label, (x, values)) in enumerate(series.items()):
        x = np.asarray(x, np.float64)
        x = np.nanmean(x, axis=0) if x.ndim == 2 else x
        mean, se = _mean_se(values)
        color = f"C{i % 10}"
        ax.plot(x, mean, "o-", ms=3, label=label, color=color)
        if se is not None and np.any(np.isfinite(se)):
            ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.2, lw=0)
    if density_axis:
        _density_axis(ax)
    if series:
        ax.legend(fontsize=8)


# ----------------------------------------------------------------------------------------------
# connectivity


def barrier_curves(
    curves: Mapping[str, Any], path, title: str = "linear interpolation", ylabel: str | None = None
) -> Path:
    """Error along the path θ(α) for each label; ``curves[label]`` is a ``ConnectivityResult`` or a pair
    ``(alphas, errors)``. The legend gives each barrier."""
    fig, axes = figure()
    ax = axes[0, 0]
    name = None
    for i, (label, c) in enumerate(curves.items()):
        if hasattr(c, "alphas"):
            a, e, b, name = c.alphas, c.error, c.barrier, c.error_name
            text = f"{label} (barrier {b:.3g})"
        else:
            a, e = (np.asarray(v, np.float64) for v in c)
            text = label
        ax.plot(a, e, "o-", ms=3, color=f"C{i % 10}", label=text)
    ax.set_xlabel("α   (θ(α) = α·θ + (1 − α)·θ′)")
    ax.set_ylabel(ylabel or name or "error")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return save(fig, path)


def barrier_matrix(barrier, path, labels: Sequence[str] | None = None, title: str = "error barrier") -> Path:
    """Heatmap of a pairwise barrier matrix (``connectivity.pairwise_barriers(...).barrier``)."""
    b = np.asarray(barrier, np.float64)
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"barrier must be a square matrix, got shape {b.shape}")
    labels = list(labels) if labels is not None else [str(i) for i in range(b.shape[0])]
    fig, axes = figure(size=(5.5, 4.8))
    ax = axes[0, 0]
    im = ax.imshow(np.ma.masked_invalid(b), cmap="viridis", origin="upper")
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title)
    return save(fig, path)


# ----------------------------------------------------------------------------------------------
# landscapes


def landscape_heatmaps(
    landscapes: Mapping[str, Any],
    path,
    metric: str = "cross_entropy",
    log: bool = False,
    shared_scale: bool = True,
    title: str | None = None,
) -> Path:
    """One heatmap (with contours) per ``landscape.Landscape2D``, side by side, α on x and β on y."""
    if not landscapes:
        raise ValueError("landscapes is empty")
    grids = {k: np.asarray(v.values[metric], np.float64) for k, v in landscapes.items()}
    if log:
        grids = {k: np.log10(np.maximum(g, 1e-12)) for k, g in grids.items()}
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if shared_scale and finite.size else (None, None)
    fig, axes = figure(ncols=len(grids), size=(4.4, 4.0))
    for ax, (label, g) in zip(axes[0], grids.items(), strict=True):
        land = landscapes[label]
        im = ax.imshow(
            g, origin="lower", extent=land.extent, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax
        )
        if np.all(np.isfinite(g)) and g.shape[0] > 1 and g.shape[1] > 1 and np.ptp(g) > 0:
            ax.contour(land.alphas, land.betas, g, levels=10, colors="white", linewidths=0.5)
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label=f"log10 {metric}" if log else metric)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def projection_curves(
    projections: Mapping[str, Any], path, metric: str = "cross_entropy", title: str = "1-D projection"
) -> Path:
    """``landscape.Projection1D`` per label: the evaluated points and the fitted parabola (legend: its
    curvature 2a)."""
    fig, axes = figure()
    ax = axes[0, 0]
    for i, (label, p) in enumerate(projections.items()):
        color = f"C{i % 10}"
        xs, ys = np.asarray(p.xis), np.asarray(p.values[metric], np.float64)
        fit = p.fits.get(metric)
        text = label if fit is None else f"{label} (curvature {fit.curvature:.3g})"
        ax.plot(xs, ys, "o", ms=3, color=color, label=text)
        if fit is not None:
            fine = np.linspace(xs.min(), xs.max(), 200)
            ax.plot(fine, fit(fine), "-", color=color, lw=1)
    ax.set_xlabel("ξ   (θ + ξ·η, η ~ N(0, I))")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if projections:
        ax.legend(fontsize=8)
    return save(fig, path)


# ----------------------------------------------------------------------------------------------
# statistics over levels


def layer_ratio_bars(
    fractions: Mapping[str, Any],
    path,
    level_labels: Sequence[str] | None = None,
    title: str = "remaining fraction per layer",
) -> Path:
    """Grouped bars: for every level, the remaining fraction of each prunable layer
    (``stats.layer_fractions_by_level``; values ``(levels,)`` or ``(seeds, levels)`` → mean ± s.e.)."""
    if not fractions:
        raise ValueError("fractions is empty")
    stats = {k: _mean_se(v) for k, v in fractions.items()}
    n_levels = len(next(iter(stats.values()))[0])
    labels = list(level_labels) if level_labels is not None else [str(i) for i in range(n_levels)]
    fig, axes = figure(size=(max(5.5, 0.45 * n_levels * max(1, len(stats)) ** 0.5), 4.0))
    ax = axes[0, 0]
    width = 0.8 / len(stats)
    x = np.arange(n_levels)
    for i, (layer, (mean, se)) in enumerate(stats.items()):
        ax.bar(x + (i - (len(stats) - 1) / 2) * width, mean, width, yerr=se, label=layer, color=f"C{i % 10}")
    ax.set_xticks(x, labels, rotation=90 if n_levels > 12 else 0, fontsize=8)
    ax.set_xlabel("level")
    ax.set_ylabel("remaining fraction")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


def _density_lines(series: Mapping[str, tuple[Any, Any]], path, ylabel: str, title: str) -> Path:
    fig, axes = figure()
    ax = axes[0, 0]
    _lines(ax, series, density_axis=True)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save(fig, path)


def correlation_curves(
    series: Mapping[str, tuple[Any, Any]],
    path,
    ylabel: str = "Spearman ρ (SNR, |θ|)",
    title: str = "SNR–magnitude correlation",
) -> Path:
    """``series[label] = (densities, ρ)`` with ρ ``(levels,)`` or ``(seeds, levels)``: one line per label
    against the density (log, dense → sparse)."""
    return _density_lines(series, path, ylabel, title)


def transfer_curves(
    series: Mapping[str, tuple[Any, Any]],
    path,
    ylabel: str = "test accuracy",
    title: str = "ticket transfer",
) -> Path:
    """``series[label] = (densities, scores)``: e.g. the transferred tickets, the target's own IMP ticket
    and its random-reinit control, mean ± s.e. over seeds against the density (log, dense → sparse)."""
    return _density_lines(series, path, ylabel, title)
