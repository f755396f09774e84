"""``es-lottery report RUN_DIR [RUN_DIR …] --out DIR``: every figure of finished IMP / transfer runs on one
Markdown page (``report.md``) and one static HTML page (``report.html``), figures as PNG files in
``DIR/figures/`` referenced by both.

A run is a view ``<out>/<name>/`` (``es-lottery imp`` or ``es-lottery transfer``), an old-layout run
directory, or a committed archive (``analysis.write_archive``: its ``.json``); it is read with
``analysis.load_run`` / ``load_archive``, so an incomplete run is refused with everything that is missing.
Per run:

* performance (test accuracy or return) vs remaining prunable weights, one curve per criterion (mean ±
  s.e. over seeds) and a table per level;
* layer-wise remaining fractions per criterion (Fig. 11);
* where the per-weight std is stored (ES): the Spearman correlation of SNR and |θ| per level and the
  overlap of the SNR and magnitude masks pruned to the next level's density (Fig. 7);
* ``--connectivity``: the error barrier between the trained networks of consecutive levels (Fig. 6 top),
  evaluated as one population on the run's test set (classification runs);
* ``--curvature``: the curvature of a quadratic fit to the loss along one masked Gaussian direction per
  level (Fig. 6 bottom), also on the test set.

The page is built as a list of blocks (:class:`Block`) rendered twice (:func:`to_markdown`,
:func:`to_html`), so both pages always hold the same numbers and figures.
"""

from __future__ import annotations

import argparse
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Block",
    "build_report",
    "load_any",
    "main",
    "run_blocks",
    "to_html",
    "to_markdown",
]


@dataclass(frozen=True)
class Block:
    """One element of a page: ``kind`` is ``h1`` / ``h2`` / ``h3`` / ``p`` (text), ``table`` (``rows``, the
    first one the header) or ``figure`` (``path`` of a PNG, ``text`` its caption)."""

    kind: str
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()
    path: Path | None = None


def h(level: int, text: str) -> Block:
    return Block(f"h{level}", text)


def p(text: str) -> Block:
    return Block("p", text)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Block:
    return Block("table", rows=(tuple(map(str, header)), *(tuple(map(str, r)) for r in rows)))


def figure(path: Path, caption: str) -> Block:
    return Block("figure", caption, path=Path(path))


# ----------------------------------------------------------------------------------------------
# rendering


def _rel(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """The page as Markdown; figure paths relative to ``base`` (the page's directory)."""
    out: list[str] = []
    for b in blocks:
        if b.kind.startswith("h"):
            out += ["#" * int(b.kind[1:]) + " " + b.text, ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "table":
            head, *rows = b.rows
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
            out.append("")
        elif b.kind == "figure":
            out += [f"![{b.text}]({_rel(b.path, base)})", "", f"*{b.text}*", ""]
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return "\n".join(out).rstrip() + "\n"


def _inline_html(text: str) -> str:
    """Escape, then the little Markdown the pages use: ``code``, **bold**, *italic*."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    return re.sub(r"(?<![*\w])\*([^*]+)\*(?![*\w])", r"<i>\1</i>", t)


def to_html(blocks: Sequence[Block], base: Path, title: str) -> str:
    """The page as one static HTML file (no scripts, no external resources but the figure files)."""
    body: list[str] = []
    for b in blocks:
        if b.kind.startswith("h"):
            body.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "table":
            head, *rows = b.rows
            cells = "".join(f"<th>{_inline_html(c)}</th>" for c in head)
            lines = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
            lines += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rows]
            body.append("\n".join(lines) + "</tbody></table>")
        elif b.kind == "figure":
            src = html.escape(_rel(b.path, base), quote=True)
            alt = html.escape(b.text, quote=True)
            body.append(
                f'<figure><img src="{src}" alt="{alt}">'
                f"<figcaption>{_inline_html(b.text)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}img{max-width:100%}figure{margin:1em 0}figcaption{font-style:italic}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------------------
# reading runs


def load_any(path: str | Path):
    """A run view / run directory (``analysis.load_run``) or an archive (``.json``: ``load_archive``)."""
    from es_lottery.analysis import runs as runs_lib

    p_ = Path(path)
    if p_.suffix in (".json", ".npz") and p_.is_file():
        return runs_lib.load_archive(p_)
    return runs_lib.load_run(p_)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def fmt_mean(values) -> str:
    v = np.asarray([x for x in np.ravel(values) if x is not None and math.isfinite(x)], np.float64)
    if not v.size:
        return "–"
    if v.size == 1:
        return f"{v[0]:.4f}"
    return f"{v.mean():.4f} ± {v.std(ddof=1) / math.sqrt(v.size):.4f}"


def _mean_density(run, criterion: str) -> np.ndarray:
    return run.densities(criterion).mean(axis=0)


def _evaluator(run):
    """A test-set evaluator of a classification run (None for control runs or missing data)."""
    from es_lottery.analysis import evaluate
    from es_lottery.tasks import classification

    cfg = run.config
    if cfg.get("env") is not None or not cfg.get("dataset"):
        return None, "a control run: barriers and curvature are evaluated for classification runs only"
    try:
        data = classification.load_dataset(cfg["dataset"], **(cfg.get("dataset_args") or {}))
    except (FileNotFoundError, ValueError, TypeError) as err:
        return None, f"dataset {cfg['dataset']!r} is not available here ({err})"
    return evaluate.classification_evaluator(run.module(), data.x_test, data.y_test), None


# ----------------------------------------------------------------------------------------------
# the blocks of one run


def run_blocks(
    run, fig_dir: Path, connectivity: bool = False, curvature: bool = False, label: str | None = None
) -> tuple[list[Block], dict]:
    """The blocks of one run and the numbers behind them (``{"performance", "layers", "rho", "overlap",
    "barrier", "curvature"}``: per criterion, ``(seeds, levels)`` arrays or dicts of them)."""
    import jax

    from es_lottery.analysis import connectivity as conn
    from es_lottery.analysis import landscape, stats
    from es_lottery.analysis import plots as aplots

    label = label or run.name
    slug = _slug(label)
    score = run.score
    blocks: list[Block] = [h(2, f"{label}")]
    info = (run.summary or {}).get("transfer")
    cfg = run.config
    what = cfg.get("dataset") or (cfg.get("env") or {}).get("name", "?")
    trainer = cfg.get("trainer") or {}
    tname = trainer.get("type", "es") + (f" ({trainer['algorithm']})" if trainer.get("algorithm") else "")
    line = (
        f"`{what}`, trainer {tname}, criteria {', '.join(run.criteria)}, seeds {list(run.seeds)}, "
        f"{len(run.level_ids)} levels (prune rate {(cfg.get('imp') or {}).get('prune_rate', 0.2)})."
    )
    if info:
        line += (
            f" A transfer: the `{info['source_criterion']}` tickets of `{info['source']}` "
            f"({info.get('source_trainer')}) retrained as `{info['target']}` ({info.get('target_trainer')})."
        )
    blocks.append(p(line))
    numbers: dict[str, Any] = {"performance": {}, "layers": {}, "rho": {}, "overlap": {}}

    # performance vs density
    series = {c: (run.densities(c), run.metric(c, score)) for c in run.criteria}
    numbers["performance"] = {c: v for c, (_, v) in series.items()}
    fig = aplots.transfer_curves(
        series, fig_dir / f"{slug}_performance.png", ylabel=score.replace("_", " "), title=label
    )
    blocks.append(figure(fig, f"{label}: {score.replace('_', ' ')} vs remaining prunable weights"))
    rows = []
    for i, k in enumerate(run.level_ids):
        dens = np.mean([run.densities(c)[:, i].mean() for c in run.criteria])
        rows.append([k, f"{dens:.4f}", *(fmt_mean(v[:, i]) for _, v in series.values())])
    blocks.append(table(["level", "density", *run.criteria], rows))

    # layer-wise remaining fractions
    blocks.append(h(3, f"{label}: layer-wise remaining fractions"))
    for c in run.criteria:
        per_seed = [stats.layer_fractions_by_level([lv.mask for lv in run.series(s, c)]) for s in run.seeds]
        fr = {layer: np.stack([d[layer] for d in per_seed]) for layer in per_seed[0]}
        numbers["layers"][c] = fr
        fig = aplots.layer_ratio_bars(
            fr,
            fig_dir / f"{slug}_{_slug(c)}_layers.png",
            level_labels=[str(k) for k in run.level_ids],
            title=f"{label} {c}: remaining fraction per layer",
        )
        blocks.append(figure(fig, f"{label} {c}: remaining fraction per prunable layer and level"))
    last = len(run.level_ids) - 1
    layers = list(next(iter(numbers["layers"].values())))
    blocks.append(
        table(
            ["criterion", *(f"{n} (level {run.level_ids[last]})" for n in layers)],
            [[c, *(fmt_mean(numbers["layers"][c][n][:, last]) for n in layers)] for c in run.criteria],
        )
    )

    # SNR vs magnitude
    with_std = [c for c in run.criteria if all(lv.std is not None for lv in run.series(run.seeds[0], c))]
    if with_std:
        blocks.append(h(3, f"{label}: SNR vs magnitude"))
        rate = float((cfg.get("imp") or {}).get("prune_rate", 0.2))
        scope = str((cfg.get("imp") or {}).get("scope", "global"))
        rho_series, ov_series = {}, {}
        for c in with_std:
            rho = np.stack([stats.snr_magnitude_correlation_by_level(run.series(s, c)) for s in run.seeds])
            ov = np.asarray(
                [
                    [
                        stats.snr_magnitude_overlap(
                            lv.final_params, lv.std, lv.mask, lv.density * (1 - rate), scope
                        )["fraction_of_a"]
                        for lv in run.series(s, c)
                    ]
                    for s in run.seeds
                ]
            )
            numbers["rho"][c], numbers["overlap"][c] = rho, ov
            rho_series[c] = (run.densities(c), rho)
            ov_series[c] = (run.densities(c), ov)
        f1 = aplots.correlation_curves(rho_series, fig_dir / f"{slug}_snr_rho.png", title=f"{label}: SNR–|θ|")
        f2 = aplots.correlation_curves(
            ov_series,
            fig_dir / f"{slug}_snr_overlap.png",
            ylabel="|magnitude ∩ SNR| / |magnitude|",
            title=f"{label}: mask overlap at the next density",
        )
        blocks.append(figure(f1, f"{label}: Spearman ρ of SNR = |μ|/σ and |μ| over the surviving weights"))
        blocks.append(
            figure(
                f2,
                f"{label}: overlap of the magnitude and SNR masks pruned from each level to the next density",
            )
        )
        blocks.append(
            table(
                ["level", *(f"ρ {c}" for c in with_std), *(f"overlap {c}" for c in with_std)],
                [
                    [
                        k,
                        *(fmt_mean(numbers["rho"][c][:, i]) for c in with_std),
                        *(fmt_mean(numbers["overlap"][c][:, i]) for c in with_std),
                    ]
                    for i, k in enumerate(run.level_ids)
                ],
            )
        )
    elif run.criteria:
        blocks.append(p("No per-weight std stored (not an ES run): no SNR–magnitude statistics."))

    if connectivity or curvature:
        ev, why = _evaluator(run)
        if ev is None:
            blocks.append(p(f"Barriers / curvature not computed: {why}."))
        else:
            if connectivity and len(run.level_ids) > 1:
                numbers["barrier"] = {}
                bseries = {}
                for c in run.criteria:
                    b = []
                    for s in run.seeds:
                        fin = [lv.final_params for lv in run.series(s, c)]
                        pairs = [(i, i + 1) for i in range(len(fin) - 1)]
                        pw = conn.pairwise_barriers(ev, fin, pairs=pairs)
                        b.append([pw.barrier[i, j] for i, j in pairs])
                    numbers["barrier"][c] = np.asarray(b)
                    bseries[c] = (run.densities(c)[:, 1:], np.asarray(b))
                fig = aplots.correlation_curves(
                    bseries,
                    fig_dir / f"{slug}_barriers.png",
                    ylabel="error barrier (level k−1 → k)",
                    title=f"{label}: linear mode connectivity",
                )
                blocks.append(
                    figure(
                        fig, f"{label}: test-error barrier between the trained networks of consecutive levels"
                    )
                )
            if curvature:
                numbers["curvature"] = {}
                cseries = {}
                for c in run.criteria:
                    cur = []
                    for s in run.seeds:
                        row = []
                        for lv in run.series(s, c):
                            key = jax.random.fold_in(jax.random.key(0), 1000 * s + lv.level)
                            d = landscape.gaussian_direction(key, lv.final_params, lv.mask)
                            proj = landscape.projection_1d(ev, lv.final_params, d)
                            fit = proj.fits.get("cross_entropy")
                            row.append(np.nan if fit is None else fit.curvature)
                        cur.append(row)
                    numbers["curvature"][c] = np.asarray(cur)
                    cseries[c] = (run.densities(c), np.asarray(cur))
                fig = aplots.correlation_curves(
                    cseries,
                    fig_dir / f"{slug}_curvature.png",
                    ylabel="curvature 2a of L(θ + ξη)",
                    title=f"{label}: 1-D projection curvature",
                )
                blocks.append(
                    figure(
                        fig,
                        f"{label}: curvature of a quadratic fit to the test loss along a masked η ~ N(0, I)",
                    )
                )
    return blocks, numbers


def build_report(
    run_paths: Sequence[str | Path],
    out: str | Path,
    connectivity: bool = False,
    curvature: bool = False,
    title: str = "es-lottery report",
) -> tuple[Path, Path]:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/*.png``; returns the two pages."""
    if not run_paths:
        raise ValueError("no run directories given")
    out = Path(out)
    runs = [load_any(r) for r in run_paths]  # every run is read (and checked) before anything is written
    fig_dir = out / "figures"
    blocks = [
        h(1, title),
        p(f"Generated {date.today().isoformat()} from: " + ", ".join(f"`{r}`" for r in run_paths)),
    ]
    names: dict[str, int] = {}
    for run in runs:
        n = names.get(run.name, 0)
        names[run.name] = n + 1
        label = run.name if n == 0 else f"{run.name} ({n + 1})"
        blocks += run_blocks(run, fig_dir, connectivity, curvature, label)[0]
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(blocks, out))
    page.write_text(to_html(blocks, out, title))
    return md, page


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        from es_lottery.experiments import analysis_cli

        parser = argparse.ArgumentParser(prog="es-lottery report")
        analysis_cli.register_report_pages(parser.add_subparsers(dest="page", required=True))
        args = parser.parse_args(["runs", *(argv or [])])
    md, page = build_report(args.run_dirs, args.out, args.connectivity, args.curvature)
    print(f"wrote {md} and {page}")
    return 0
