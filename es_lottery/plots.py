"""Figures of the experiments (PNG): GA curves, accuracy boxes, ES-IMP levels, NeTS methods.

Every function takes result rows (as the experiment views hold them) and a path, writes ONE PNG and
returns its path. Figures are drawn with matplotlib's object-oriented API on an Agg canvas made inside each
function (``analysis.plots.figure``): importing this module imports no matplotlib, and nothing here changes
pyplot's backend or global state, so it is safe in a notebook.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from es_lottery.analysis.plots import figure, save

__all__ = [
    "accuracy_vs_sparsity",
    "box_by_arch",
    "curve_by_classes",
    "ga_curves",
    "method_key",
    "natural_key",
    "nets_plots",
    "performance_vs_density",
]


def _percent_axis(axis) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))


def _finite(values) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def _hold_last(data: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs along the last axis (a stopped seed keeps its final value)."""
    out = data.copy()
    for row in out:
        valid = np.nonzero(np.isfinite(row))[0]
        if valid.size:
            row[valid[-1] + 1 :] = row[valid[-1]]
    return out


def ga_curves(histories: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """The paper's Fig. 4: best train accuracy and three sparsity curves over generations.

    ``histories`` maps metric → (seeds, generations) arrays with NaN after a seed stopped; a stopped seed
    is held at its final value. Lines are the mean over seeds, the shaded band the 10–90 % range, and the
    ticks at the top mark the generations at which seeds stopped.
    """
    fig, axes = figure(ncols=2, size=(5.5, 4))
    ax_acc, ax_sp = axes[0]
    gens = np.arange(1, histories["best_acc"].shape[1] + 1)
    stops = [int(np.isfinite(row).sum()) for row in histories["best_acc"]]
    histories = {k: _hold_last(np.asarray(v, dtype=float)) for k, v in histories.items()}

    def band(ax, data, label, color):
        alive = np.isfinite(data).any(axis=0)
        if not alive.any():
            return
        last = int(np.nonzero(alive)[0][-1]) + 1
        d = data[:, :last]
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(d, axis=0)
                lo, hi = np.nanpercentile(d, 10, axis=0), np.nanpercentile(d, 90, axis=0)
        ax.plot(gens[:last], mean, label=label, color=color)
        ax.fill_between(gens[:last], lo, hi, color=color, alpha=0.15)

    band(ax_acc, histories["best_acc"], "best train accuracy", "C0")
    for ax in (ax_acc, ax_sp):
        ax.plot(stops, np.ones(len(stops)), "|", color="grey", transform=ax.get_xaxis_transform(), ms=8)
    ax_acc.set_xlabel("generation")
    ax_acc.set_ylabel("train accuracy")
    ax_acc.set_title("(a) accuracy of the fittest")
    band(ax_sp, histories["sparsity_fittest"], "sparsity of the fittest", "C0")
    band(ax_sp, histories["best_sparsity"], "best sparsity in population", "C1")
    band(ax_sp, histories["best_ever_sparsity"], "best sparsity ever", "C2")
    ax_sp.set_xlabel("generation")
    ax_sp.set_ylabel("sparsity (of prunable weights)")
    ax_sp.set_title("(b) sparsity")
    ax_sp.legend(fontsize=8)
    n = histories["best_acc"].shape[0]
    fig.suptitle(f"{title} — mean over {n} seeds, band 10–90 %")
    return save(fig, path)


METHOD_ORDER = ("ga", "adaptive_ab", "static_ab", "backprop")


def natural_key(label: str) -> tuple:
    """Sort key that orders embedded numbers numerically: ``B@2 < B@10``, ``100@9 < 100@10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(label)))


def method_key(method: str) -> tuple:
    """GA variants in the paper's order, backprop, then the rest (edge-popup variants) alphabetically."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def box_by_arch(
    results: list[dict],
    path: str | Path,
    title: str,
    reference: dict[str, float] | None = None,
    xlabel: str = "architecture",
) -> Path:
    """The paper's Fig. 3: test-accuracy boxes per architecture and method; ``reference`` (e.g. the
    backprop mean per architecture) is drawn as a dashed marker."""
    by = defaultdict(list)
    for r in results:
        by[(r["arch"], r["method"])].append(r["test_acc"])
    archs = sorted({a for a, _ in by}, key=natural_key)
    methods = sorted({m for _, m in by if m != "backprop"}, key=method_key)
    fig, axes = figure(size=(max(6, 1.8 * len(archs) * max(1, len(methods))), 4.5))
    ax = axes[0, 0]
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        data = [_finite(by.get((a, m), [])) for a in archs]
        pos = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(archs))]
        keep = [(p, d) for p, d in zip(pos, data, strict=True) if len(d)]
        if keep:
            bp = ax.boxplot(
                [d for _, d in keep],
                positions=[p for p, _ in keep],
                widths=width * 0.9,
                patch_artist=True,
                showmeans=True,
            )
            for patch in bp["boxes"]:
                patch.set_facecolor(f"C{j}")
                patch.set_alpha(0.5)
            ax.plot([], [], color=f"C{j}", lw=8, alpha=0.5, label=m)
    for i, a in enumerate(archs):
        ref = (reference or {}).get(a)
        if ref is not None:
            ax.hlines(
                ref,
                i - 0.45,
                i + 0.45,
                colors="k",
                linestyles="--",
                label="backprop mean" if i == 0 else None,
            )
    ax.set_xticks(range(len(archs)), archs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save(fig, path)


def accuracy_vs_sparsity(results: list[dict], path: str | Path, title: str) -> Path:
    """Scatter of test accuracy against sparsity, one colour per (arch, method)."""
    by = defaultdict(list)
    for r in results:
        if r.get("sparsity") is not None:
            by[f"{r['arch']} {r['method']}"].append((r["sparsity"], r["test_acc"]))
    fig, axes = figure(size=(7, 4.5))
    ax = axes[0, 0]
    for i, (label, pts) in enumerate(sorted(by.items())):
        pts = np.asarray(pts, dtype=float)
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.7, color=f"C{i % 10}", label=label)
    ax.set_xlabel("sparsity (fraction of prunable weights removed)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return save(fig, path)


def curve_by_classes(rows: list[dict], path: str | Path, title: str) -> Path:
    """Test accuracy (mean ± std over seeds) against the number of classes, one line per method."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["method"]][int(r["classes"])].append(r["test_acc"])
    fig, axes = figure(size=(6, 4))
    ax = axes[0, 0]
    for i, (method, per_k) in enumerate(sorted(by.items())):
        ks = sorted(per_k)
        mean = [np.mean(_finite(per_k[k])) for k in ks]
        std = [np.std(_finite(per_k[k])) for k in ks]
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, color=f"C{i}", label=method)
        ax.plot(ks, [1.0 / k for k in ks], color="grey", lw=0.8, ls=":", label="chance" if i == 0 else None)
    ax.set_xlabel("number of classes")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save(fig, path)


# ----------------------------------------------------------------------------------------------
# ES lottery tickets (Lange & Sprekeler 2023)

CRITERION_COLORS = {
    "snr": "black",
    "snr_sep_cma_compat": "dimgrey",
    "magnitude": "tab:red",
    "random_reinit": "goldenrod",
    "mask_reinit": "tab:purple",
    "permute_weights": "tab:blue",
    "permute_mask_and_weights": "tab:cyan",
    "random": "tab:orange",
    "movement": "tab:brown",
    "magnitude_increase": "tab:pink",
    "smallest_initial": "tab:olive",
    "gd": "tab:green",
}


def performance_vs_density(
    rows: list[dict],
    path: str | Path,
    title: str,
    order: tuple[str, ...] | list[str] | None = None,
    metric: str = "test_accuracy",
    ylabel: str = "test accuracy",
    reference: dict[str, list[tuple[float, float]]] | None = None,
    label_key: str = "criterion",
) -> Path:
    """The paper's Fig. 2/3: performance against the fraction of remaining (prunable) weights.

    ``rows``: one dict per (seed, criterion, level) with ``label_key`` (default ``criterion``), ``level``,
    ``density`` (kept / prunable) and ``metric``. Each line is the mean over seeds at every level (x: the
    mean density), the band and error bars ± one standard error (std with ddof=1 / √n; none for one seed).
    The x axis is logarithmic and runs from dense (left) to sparse (right). ``reference`` maps a label to
    ``(density, value)`` points drawn as open markers (e.g. numbers read off the paper's plots).
    """
    by: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = r.get(metric)
        if v is None or not np.isfinite(v):
            continue
        by[str(r[label_key])][int(r["level"])].append((float(r["density"]), float(v)))
    labels = [c for c in (order or ()) if c in by] + sorted(c for c in by if c not in (order or ()))
    fig, axes = figure(size=(7, 4.5))
    ax = axes[0, 0]
    for i, label in enumerate(labels):
        levels = sorted(by[label])
        x = np.asarray([np.mean([d for d, _ in by[label][k]]) for k in levels])
        vals = [np.asarray([v for _, v in by[label][k]]) for k in levels]
        y = np.asarray([v.mean() for v in vals])
        se = np.asarray([v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in vals])
        n = max(len(v) for v in vals)
        color = CRITERION_COLORS.get(label)
        if color is None:  # e.g. "ES snr" / "GD magnitude": GD green, else by the criterion's own colour
            low = label.lower()
            color = CRITERION_COLORS["gd"] if low.startswith("gd") else CRITERION_COLORS.get(low.split()[-1])
        color = color or f"C{i % 10}"
        ax.errorbar(x, y, yerr=se, marker="o", ms=3.5, capsize=2.5, color=color, label=f"{label} (n={n})")
        ax.fill_between(x, y - se, y + se, color=color, alpha=0.12, lw=0)
    for j, (label, pts) in enumerate((reference or {}).items()):
        pts = np.asarray(pts, float).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], ls=":", marker="s", mfc="none", color=f"C{(j + 5) % 10}", label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    dens = [d for per in by.values() for pts in per.values() for d, _ in pts]
    if dens:
        lo, hi = min(dens), max(dens)
        fine = [1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.015, 0.01]
        fine += [0.007, 0.005, 0.003, 0.002, 0.001]
        ticks = [t for t in fine if lo * 0.97 <= t <= hi * 1.03]
        if len(ticks) > 9:  # many decades: the 1-2-5 series
            ticks = [t for t in ticks if f"{t:.0e}"[0] in "125"]
        if ticks:
            ax.set_xticks(ticks)
    from matplotlib.ticker import NullFormatter

    _percent_axis(ax.xaxis)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("remaining prunable weights (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    if labels or reference:
        ax.legend(fontsize=8)
    return save(fig, path)


# ----------------------------------------------------------------------------------------------
# NeTS (Jackson et al. 2023)

NETS_METHODS = ("nets", "imp", "random", "dense")


def _nets_accuracy_by_method(results: list[dict], methods: list[str], path: Path, title: str) -> Path:
    """Test accuracy per method, one dot per seed, the mean density annotated."""
    fig, axes = figure(size=(1.6 * len(methods) + 2.5, 4))
    ax = axes[0, 0]
    for i, m in enumerate(methods):
        rows = [r for r in results if r["method"] == m]
        acc = np.asarray([r["test_accuracy"] for r in rows], float)
        dens = np.asarray([r["density"] for r in rows], float)
        jitter = np.linspace(-0.12, 0.12, len(acc)) if len(acc) > 1 else np.zeros(1)
        ax.bar(i, acc.mean(), width=0.6, color=f"C{i}", alpha=0.35)
        ax.errorbar(i, acc.mean(), yerr=acc.std(), color="k", capsize=4)
        ax.plot(i + jitter, acc, "o", color=f"C{i}", ms=4)
        ax.annotate(
            f"{100 * acc.mean():.1f} %\nd = {100 * dens.mean():.1f} %",
            (i, min(acc.mean() + acc.std(), 1.0)),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.15)
    ax.set_title(f"{title}: test accuracy (mean ± std, dots = seeds; d = density of prunable weights)")
    ax.title.set_fontsize(9)
    return save(fig, path)


def _nets_search(rows: list[dict], path: Path, title: str) -> Path:
    """NeTS search curves: best fitness and loss, best and mean density (thin: seeds, thick: mean)."""
    seeds = sorted({r["seed"] for r in rows})
    length = max(r["generation"] for r in rows)
    keys = ("best_fitness", "best_loss", "best_density", "mean_density")
    curves = {k: np.full((len(seeds), length), np.nan) for k in keys}
    for r in rows:
        for k in curves:
            v = r.get(k)
            curves[k][seeds.index(r["seed"]), r["generation"] - 1] = np.nan if v is None else v
    gens = np.arange(1, length + 1)
    fig, axes = figure(ncols=2, size=(5.5, 4))
    a1, a2 = axes[0]
    for k, ax, color in (
        ("best_fitness", a1, "C0"),
        ("best_loss", a1, "C1"),
        ("best_density", a2, "C0"),
        ("mean_density", a2, "C2"),
    ):
        for row in curves[k]:
            ax.plot(gens, row, color=color, alpha=0.2, lw=0.8)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(gens, np.nanmean(curves[k], axis=0), color=color, label=k.replace("_", " "))
    a1.set_xlabel("generation")
    a1.set_ylabel("fitness (minimised) / loss")
    a1.legend(fontsize=8)
    a2.set_xlabel("generation")
    a2.set_ylabel("density of prunable weights")
    a2.legend(fontsize=8)
    fig.suptitle(f"{title}: NeTS search (thin lines = seeds, thick = mean)")
    return save(fig, path)


def _nets_levels(
    results: list[dict], imp_rows: list[dict], methods: list[str], path: Path, title: str
) -> Path:
    """IMP levels (test accuracy against density) with the other methods as points."""
    fig, axes = figure(size=(6, 4))
    ax = axes[0, 0]
    levels = sorted({r["level"] for r in imp_rows})
    d = [np.mean([r["density"] for r in imp_rows if r["level"] == k]) for k in levels]
    a = [[r["test_accuracy"] for r in imp_rows if r["level"] == k] for k in levels]
    ax.errorbar(
        d,
        [float(np.mean(v)) for v in a],
        yerr=[float(np.std(v)) for v in a],
        marker="o",
        color="C1",
        capsize=3,
        label="IMP levels",
    )
    for i, m in enumerate(methods):
        if m == "imp":
            continue
        rows = [r for r in results if r["method"] == m]
        ax.errorbar(
            np.mean([r["density"] for r in rows]),
            np.mean([r["test_accuracy"] for r in rows]),
            xerr=np.std([r["density"] for r in rows]),
            yerr=np.std([r["test_accuracy"] for r in rows]),
            marker="s",
            ls="none",
            capsize=3,
            color=f"C{i}",
            label=m,
        )
    ax.invert_xaxis()
    _percent_axis(ax.xaxis)
    ax.set_xlabel("density of prunable weights")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: accuracy vs density")
    return save(fig, path)


def nets_plots(plot_dir: str | Path, title: str, results: list[dict], metric_rows: list[dict]) -> list[Path]:
    """A NeTS experiment's figures in ``plot_dir``: ``accuracy_by_method.png``, ``nets_search.png`` (with
    NeTS metrics rows) and ``accuracy_vs_density.png`` (with IMP level rows)."""
    plot_dir = Path(plot_dir)
    methods = [m for m in NETS_METHODS if any(r["method"] == m for r in results)]
    written = []
    if methods:
        written.append(_nets_accuracy_by_method(results, methods, plot_dir / "accuracy_by_method.png", title))
    nets_rows = [r for r in metric_rows if r.get("job") == "nets"]
    if nets_rows:
        written.append(_nets_search(nets_rows, plot_dir / "nets_search.png", title))
    imp_rows = [r for r in metric_rows if r.get("job") == "imp"]
    if imp_rows:
        written.append(_nets_levels(results, imp_rows, methods, plot_dir / "accuracy_vs_density.png", title))
    return written
