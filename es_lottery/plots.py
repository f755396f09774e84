"""Plots for run directories (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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
    fig, (ax_acc, ax_sp) = plt.subplots(1, 2, figsize=(11, 4))
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
            import warnings

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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def box_by_arch(
    results: list[dict], path: str | Path, title: str, reference: dict[str, float] | None = None
) -> Path:
    """The paper's Fig. 3: test-accuracy boxes per architecture and method; ``reference`` (e.g. the
    backprop mean per architecture) is drawn as a dashed marker."""
    by = defaultdict(list)
    for r in results:
        by[(r["arch"], r["method"])].append(r["test_acc"])
    archs = sorted({a for a, _ in by})
    methods = sorted({m for _, m in by if m != "backprop"})
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(archs) * max(1, len(methods))), 4.5))
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
    ax.set_xlabel("architecture")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_sparsity(results: list[dict], path: str | Path, title: str) -> Path:
    """Scatter of test accuracy against sparsity, one colour per (arch, method)."""
    by = defaultdict(list)
    for r in results:
        if r.get("sparsity") is not None:
            by[f"{r['arch']} {r['method']}"].append((r["sparsity"], r["test_acc"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, pts) in enumerate(sorted(by.items())):
        pts = np.asarray(pts, dtype=float)
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.7, color=f"C{i % 10}", label=label)
    ax.set_xlabel("sparsity (fraction of prunable weights removed)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_by_classes(rows: list[dict], path: str | Path, title: str) -> Path:
    """Test accuracy (mean ± std over seeds) against the number of classes, one line per method."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["method"]][int(r["classes"])].append(r["test_acc"])
    fig, ax = plt.subplots(figsize=(6, 4))
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
