"""``docs/results/slt.md``: strong lottery tickets by GA (Altmann et al. 2024), from the run store and the
committed per-seed archive.

Reproduce (CPU, hours; GPU, minutes)::

    es-lottery migrate docs/results/slt/data --out runs   # a fresh machine: the archived seeds first
    es-lottery slt configs/slt/moons.yaml --out runs      # runs only the jobs and seeds still missing
    es-lottery slt configs/slt/circles.yaml --out runs
    es-lottery slt configs/slt/digits_classes.yaml --out runs
    es-lottery slt configs/slt/blobs_classes.yaml --out runs
    es-lottery report slt --runs runs --out docs/results/slt.md

Per-seed results are archived in ``docs/results/slt/data/`` (committed; ``reports.archive``), so the page
rebuilds from the archive alone (``--runs`` pointing nowhere) and later sessions add jobs to it. Jobs that
were never run are reported as missing, never invented.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import date
from pathlib import Path

import numpy as np

from es_lottery.experiments import config as config_lib
from es_lottery.experiments import legacy_runs, slt
from es_lottery.experiments.reports import archive, parse_args
from es_lottery.plots import method_key, natural_key

# Altmann et al. (2024), as collected in REFERENCE.md §1 (≈: read off plots)
# The paper's Fig. 6 sparsities are those of the BETTER GA variant per architecture (the original's v2
# experiments/edge_popup_performance_comparison/evalution.py, considered_GA_config_*): adaptive AB for moons
# A–C and circles C, the plain GA elsewhere. Each number sits on its own variant's row.
PAPER_SPARSITY = {
    "moons": {
        "A": ("adaptive_ab", 0.732),
        "B": ("adaptive_ab", 0.592),
        "C": ("adaptive_ab", 0.561),
        "D": ("ga", 0.546),
    },
    "circles": {"A": ("ga", 0.663), "B": ("ga", 0.623), "C": ("adaptive_ab", 0.539), "D": ("ga", 0.581)},
}
PAPER_NOTES = {
    "moons": "paper: median test acc of GA (adaptive AB) on A = 0.921; backprop A = 0.9999; "
    "GA on D ≈ 100 % mean",
    "circles": "paper: best mean test acc 91.6 % (D, plain GA); many runs stay at chance and then "
    "maximise sparsity",
}
PAPER_CLASSES = {
    "digits": "paper (Fig. 7a): 2 classes: most runs ≈ 100 %; 3 classes: more variance, some runs "
    "still ≈ 100 %; 4–5 classes: a clear drop; 10 classes: mean only a little above 54 %",
    "blobs": "paper (Fig. 7c): backprop 100 % for every class count; the GA finds high-accuracy tickets "
    "up to about 6 classes, then drops, with multi-modal accuracy distributions",
}
BACKPROP_NOTE = (
    "Backprop here has no tuned setting in the paper; it uses sklearn's MLPClassifier defaults "
    "(adam, lr 1e-3, batch 200, alpha 1e-4, early stopping on the training loss, ≤ 1000 epochs)."
)
EARLIER = "2026-11-22"  # summaries of runs whose per-seed files were lost (data/summaries_<date>.json)
GA_METHODS = ("ga", "adaptive_ab", "static_ab")


def find_config(configs: Path, name: str) -> Path | None:
    """The YAML under ``configs`` whose ``name`` is ``name``."""
    for p in sorted(configs.glob("*.yaml")):
        if config_lib.load_yaml(p).get("name") == name:
            return p
    return None


def _archived_jobs(meta: dict | None, runs: Path) -> dict[str, str]:
    """The store directories of the archived rows of an archive from before the store (its config)."""
    if not meta or meta.get("jobs") or meta.get("config") is None:
        return {}
    exp = legacy_runs.old_config("slt", meta["config"])
    return {j.name: j.branch.relpath for j in slt.plan(exp, runs)}


def collect(runs: Path | None, data: Path, name: str, config: Path | None) -> tuple[list[dict], list[dict]]:
    """Per-seed results and per-generation metrics of experiment ``name``: the archive in ``data``
    (committed, so results outlive the machine they were computed on) merged with the jobs of ``config``
    in the run store ``runs`` (old-layout run directories there are migrated first), whose rows win; the
    merged set is written back to the archive. Archived rows of a job whose settings changed are dropped."""
    meta, rows, metrics = archive.read(data, name)
    found = archive.from_store(runs, name, "slt", config, slt.load_config, slt.collect)
    if found is None:
        return rows, metrics
    exp, store_rows, store_metrics, jobs = found
    return archive.merge(
        data,
        name,
        config_lib.to_dict(exp),
        jobs,
        store_rows,
        store_metrics,
        archived_jobs=_archived_jobs(meta, runs),
    )


def stats(values) -> tuple[float, float, float]:
    v = np.asarray([np.nan if x is None else x for x in values], float)
    return float(np.nanmean(v)), float(np.nanmedian(v)), float(np.nanstd(v))


def aggregate(rows: list[dict], key: str) -> dict[tuple, dict]:
    """(key value, method) → the summary of that job's per-seed rows."""
    out = {}
    for k, m in {(r[key], r["method"]) for r in rows}:
        rs = [r for r in rows if r[key] == k and r["method"] == m]
        mean, med, std = stats([r["test_acc"] for r in rs])
        out[(k, m)] = {
            "seeds": len(rs),
            "test_acc_mean": mean,
            "test_acc_median": med,
            "test_acc_std": std,
            "sparsity_mean": float(np.mean([r.get("sparsity", 0.0) for r in rs])),
            "best_test_acc_mean": (
                float(np.mean([r["best_test_acc"] for r in rs])) if "best_test_acc" in rs[0] else None
            ),
            "at_chance": sum(bool(r["at_chance"]) for r in rs) if "at_chance" in rs[0] else None,
            "generations_mean": float(np.mean([r["generations"] for r in rs]))
            if "generations" in rs[0]
            else None,
            "earlier": False,
        }
    return out


def with_earlier(agg: dict[tuple, dict], earlier: list[dict], dataset: str, key: str) -> dict[tuple, dict]:
    """Add the 2026-11-22 summaries of jobs that have fewer per-seed rows than they had (marked †)."""
    out = dict(agg)
    for e in earlier:
        if e["dataset"] != dataset:
            continue
        k = (e[key], e["method"])
        if k not in out or out[k]["seeds"] < e["seeds"]:
            out[k] = {**e, "earlier": True}
    return out


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def table_arch_method(agg: dict[tuple, dict], dataset: str) -> list[str]:
    out = [
        "| arch | method | seeds | test acc mean | median | std | best-in-pop test acc (mean) "
        "| sparsity mean | paper sparsity (its variant) | at chance | gens (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a, m in sorted(agg, key=lambda k: (natural_key(k[0]), method_key(k[1]))):
        e = agg[(a, m)]
        variant, value = PAPER_SPARSITY.get(dataset, {}).get(a, (None, None))
        paper = value if m == variant else None
        out.append(
            f"| {a} | {m} | {e['seeds']}{' †' if e['earlier'] else ''} | {e['test_acc_mean']:.4f} | "
            f"{e['test_acc_median']:.4f} | {e['test_acc_std']:.4f} | "
            f"{_fmt(e['best_test_acc_mean'], '.4f')} | "
            f"{e['sparsity_mean']:.3f} | {_fmt(paper, '.3f')} | {_fmt(e['at_chance'], 'd')} | "
            f"{_fmt(e['generations_mean'], '.0f')} |"
        )
    return out


def table_classes(agg: dict[tuple, dict]) -> list[str]:
    out = [
        "| classes | method | seeds | test acc mean | median | std | sparsity mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, m in sorted(agg, key=lambda k: (int(k[0]), method_key(k[1]))):
        e = agg[(k, m)]
        out.append(
            f"| {k} | {m} | {e['seeds']}{' †' if e['earlier'] else ''} | {e['test_acc_mean']:.4f} | "
            f"{e['test_acc_median']:.4f} | {e['test_acc_std']:.4f} | {e['sparsity_mean']:.3f} |"
        )
    return out


def make_plots(rows: list[dict], metrics: list[dict], dest: Path, prefix: str, by_classes: bool) -> list[str]:
    """Draw the experiment's plots from its per-seed results / metrics (also while it is incomplete)."""
    hists = slt.histories_from_metrics(metrics) if metrics else {}
    paths = slt.write_plots(dest / prefix, prefix, rows, hists, by_classes=by_classes)
    names = []
    for p in paths:
        target = dest / f"{prefix}_{p.name}"
        shutil.move(p, target)
        names.append(target.name)
    (dest / prefix).rmdir()
    return names


def figures(rows, metrics, agg, fig_dir: Path, dataset: str, by_classes: bool) -> list[str]:
    """Markdown image lines: the plots of the per-seed data, and for jobs known only from the earlier
    summaries (†) the figures drawn from their per-seed data back then."""
    pngs = make_plots(rows, metrics, fig_dir, dataset, by_classes) if rows else []
    if by_classes:
        pngs = [p for p in pngs if "classes" in p]
    lines = [f"![{p}](slt/{p})" for p in pngs]
    earlier = [k for k, e in agg.items() if e["earlier"]]
    if earlier:
        old = []
        if not by_classes:  # Fig. 4 curves of † GA jobs, kept from their own run
            old += [f"{dataset}_curves_{a}_{m}.png" for a, m in sorted(earlier) if m in GA_METHODS]
        kinds = ("acc_vs_classes",) if by_classes else ("box_test_acc", "acc_vs_sparsity")
        old += [f"{dataset}_{k}_{EARLIER}.png" for k in kinds]
        old = [p for p in old if (fig_dir / p).exists() and p not in pngs]
        if old:
            note = f"Figures drawn on {EARLIER} from the per-seed data of that day's runs (the † rows):"
            lines += [*([""] if lines else []), note, ""]
            lines += [f"![{p}](slt/{p})" for p in old]
    return lines


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        args = parse_args("slt", argv)
    out: Path = args.out
    fig_dir = out.parent / "slt"
    data: Path = args.data or fig_dir / "data"
    summaries = data / f"summaries_{EARLIER}.json"
    earlier = json.loads(summaries.read_text())["jobs"] if summaries.exists() else []
    lines = [
        "# Strong lottery tickets by GA — reproduction of Altmann et al. (2024)",
        "",
        f"Generated by `es-lottery report slt --runs {args.runs} --out {out}` on {date.today()}.",
        "The runs behind it (CPU, 2 cores; every job lives in the run store under a key of its own settings,",
        "so each command runs only the jobs and seeds that are missing):",
        "",
        "```bash",
        "es-lottery migrate docs/results/slt/data --out runs  # a fresh machine: the archived seeds first",
        "es-lottery slt configs/slt/moons.yaml --out runs",
        "es-lottery slt configs/slt/circles.yaml --out runs",
        "es-lottery slt configs/slt/digits_classes.yaml --out runs",
        "es-lottery slt configs/slt/blobs_classes.yaml --out runs",
        "```",
        "",
        "Test accuracy is that of the train-best individual; the paper reports the best TEST accuracy in the",
        "final population (mild selection on the test set), shown here as 'best-in-pop'. Sparsity counts",
        "prunable weights (kernels) only.",
        "",
        "How the setup differs from the paper's code (all deliberate):",
        "",
        "* the adaptive accuracy bound drops by 0.1^n after `bound_patience` (500) rejected proposals",
        "  instead of after 5 wall-clock seconds of them (≈ 500 proposals at the original's ≈ 10 ms each),",
        "  so runs are deterministic and machine-independent; the original's extra nudge (−≈0.005 when a",
        "  proposal passes only after more than 4 s of tries) is left out. As in the original, migrants",
        "  pass the bound too: at a bound that settles at 0.75 with ≈ 2 % of random masks passing (D),",
        "  adaptive AB evaluates ≈ 500 proposals per generation against ≈ 53 new members for the plain GA;",
        "* the GA's frozen weights of seed s are the same for GA and adaptive AB (paired comparison);",
        "  backprop and edge-popup draw their own initialisations;",
        "* backprop reimplements sklearn's MLPClassifier in JAX (float32, two softmax outputs instead of one",
        "  logistic output for 2 classes); edge-popup's cosine schedule decays per step, not per epoch;",
        "* edge-popup 'k=matched' keeps the mean density over both GA variants of that architecture; the",
        "  paper's Fig. 6 takes the density of whichever variant has the higher mean accuracy, which is",
        "  'k=matched_best', the rule of every row compared with the paper. It needs the per-seed GA",
        "  results of its architecture, so it is missing where only the † summaries survive (moons C,",
        "  circles B and C: their GA jobs must run again first). The 'sparsity mean' of an edge-popup row",
        "  is 1 − its k.",
        "",
        "Every per-seed result and per-generation metric behind this page is kept in",
        f"`{data}/<experiment>.results.jsonl` / `.metrics.jsonl.gz`, so the page can be rebuilt without the",
        "run directories (`--runs` adds new ones to that archive). Rows marked † are the summaries of the",
        f"{EARLIER} runs, whose per-seed files were lost with that machine before the archive existed",
        f"(`{summaries.name}`); they give way to per-seed rows as the jobs are run again.",
        "",
        "A job listed below with fewer than 25 seeds, or an architecture that is missing, has not been run",
        "yet; nothing here is extrapolated.",
        "",
    ]
    sections = (  # (dataset, experiment, config file, per-arch or per-class-count)
        ("moons", "moons_ga", "moons", False),
        ("circles", "circles_ga", "circles", False),
        ("digits", "digits_classes", "digits_classes", True),
        ("blobs", "blobs_classes", "blobs_classes", True),
    )
    for dataset, name, config, by_classes in sections:
        rows, metrics = collect(args.runs, data, name, find_config(args.configs, name))
        key = "classes" if by_classes else "arch"
        agg = with_earlier(aggregate(rows, key), earlier, dataset, key)
        title = "accuracy against the number of classes" if by_classes else "architectures A–D"
        lines += [f"## {dataset}: {title}", ""]
        if not agg:
            lines += [f"_Not run yet: `es-lottery slt configs/slt/{config}.yaml --out {args.runs}`._", ""]
            continue
        if by_classes:
            lines += [*table_classes(agg), "", PAPER_CLASSES.get(dataset, ""), "", BACKPROP_NOTE, ""]
        else:
            lines += [*table_arch_method(agg, dataset), "", PAPER_NOTES[dataset], ""]
        lines += [*figures(rows, metrics, agg, fig_dir, dataset, by_classes=by_classes), ""]
    if args.discussion.exists():
        lines += [args.discussion.read_text().rstrip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0
