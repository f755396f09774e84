"""``docs/results/es_imp.md``: ES lottery tickets, iterative pruning with ES and GD (Lange & Sprekeler 2023),
from the run store.

Reproduce (CPU-sized variants, each well under an hour on 2 cores; the paper configs are GPU work)::

    es-lottery imp configs/imp/mnist_sep_cma_cpu.yaml --out runs
    es-lottery imp configs/imp/mnist_snes_cpu.yaml --out runs
    es-lottery imp configs/imp/mnist_pgpe_cpu.yaml --out runs
    es-lottery imp configs/imp/gd_mnist_cpu.yaml --out runs
    es-lottery report es_imp --runs runs --out docs/results/es_imp.md

For every config in ``--configs`` the finished levels of its jobs are read from the store (old-layout run
directories ``<runs>/<name>-<hash>`` are migrated first, also while an old process still writes into them)
and merged into the committed per-level archive ``docs/results/es_imp/data/`` (``archive.merge_levels``);
the page is built from that archive alone.
Seeds or levels that have not finished are reported as missing — numbers are never invented. The paper's
numbers are the read-offs collected in REFERENCE.md §2 ("Read-off results", ≈ from plots).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from datetime import date
from pathlib import Path

import numpy as np

from es_lottery import plots
from es_lottery.experiments import config as config_lib
from es_lottery.experiments import imp, legacy_runs
from es_lottery.experiments.reports import archive, parse_args

# Lange & Sprekeler (2023), read off Fig. 3 (REFERENCE.md §2): test accuracy dense → 1.44 % remaining
# (level 19 of 20 with p = 0.2). "ES" is the SNR-pruned ES ticket of the figure, "GD" the Adam IMP ticket.
PAPER = {
    "mnist": {"es_algorithm": "Sep_CMA_ES", "es": (0.98, 0.93), "gd": (0.99, 0.84)},
    "fashion_mnist": {"es_algorithm": "SNES", "es": (0.85, 0.82), "gd": (0.89, 0.75)},
    "kmnist": {"es_algorithm": "PGPE", "es": (0.83, 0.66), "gd": (0.92, 0.52)},
}
PAPER_LAST_DENSITY = 0.8**19  # 1.44 %
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "F-MNIST", "kmnist": "K-MNIST"}


def find_run(runs: Path, exp: imp.IMPExperiment) -> tuple[Path | None, dict | None]:
    """(the trunk of this config in the store, or None when nothing of it finished; its data sizes)."""
    if not runs.exists():
        return None, None
    legacy_runs.migrate_matching(runs, exp.name, "imp")
    root = imp.data_dir(exp, runs)
    if not root.is_dir():
        return None, None
    info = root / "data.json"
    return root, (json.loads(info.read_text()) if info.exists() else None)


def stats(values: list[float]) -> tuple[float, float | None, int]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if not v.size:
        return math.nan, None, 0
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
    return float(v.mean()), se, int(v.size)


def fmt(mean: float, se: float | None, n: int, want: int) -> str:
    if n == 0:
        return "missing"
    s = f"{mean:.4f}" + ("" if se is None else f" ± {se:.4f}")
    return s + ("" if n == want else f" (n={n}/{want})")


def level_table(exp: imp.IMPExperiment, rows: list[dict]) -> list[str]:
    crits = list(exp.criteria)
    out = [
        "| level | target density | " + " | ".join(crits) + " |",
        "|---|---|" + "---|" * len(crits),
    ]
    for level in range(exp.num_levels):
        cells = []
        for c in crits:
            rs = [r for r in rows if r["criterion"] == c and r["level"] == level]
            cells.append(fmt(*stats([r["test_accuracy"] for r in rs]), exp.seeds))
        out.append(f"| {level} | {exp.schedule.density(level):.4f} | " + " | ".join(cells) + " |")
    return out


def value_at(rows: list[dict], criterion: str, level: int) -> tuple[float, float | None, int]:
    return stats([r["test_accuracy"] for r in rows if r["criterion"] == criterion and r["level"] == level])


def describe(exp: imp.IMPExperiment, data: dict | None) -> str:
    t = config_lib.to_dict(exp.trainer)
    if exp.trainer_type == "es":
        tr = (
            f"{t['algorithm']} σ_init {t['sigma_init']}, population {t['population_size']}, "
            f"{t['num_generations']} generations, batch {t['batch_size']}"
        )
    else:
        tr = f"Adam lr {t['learning_rate']}, batch {t['batch_size']}, {t['epochs']} epochs"
    net = exp.network.name + (f" {list(exp.network.sizes)}" if exp.network.sizes else "")
    where = exp.dataset
    if data:
        split = " (t10k files split)" if data.get("test_split_only") else ""
        where += f" {data.get('train')}/{data.get('test')}{split}"
    elif exp.dataset_args:
        where += " (" + ", ".join(f"{k}={v}" for k, v in exp.dataset_args.items()) + ")"
    return (
        f"{where}; {net}; {tr}; {exp.num_levels} levels × p = {exp.prune_rate} ({exp.scope}); "
        f"{exp.seeds} seeds"
    )


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        args = parse_args("es_imp", argv)
    out: Path = args.out
    fig_dir = out.parent / "es_imp"
    archive_dir: Path = args.data or fig_dir / "data"
    configs = sorted(args.configs.glob("*.yaml"), key=lambda p: (p.stem.endswith("_cpu"), p.stem))
    lines = [
        "# ES lottery tickets — iterative pruning with ES and GD (Lange & Sprekeler 2023)",
        "",
        f"Generated by `es-lottery report es_imp --runs {args.runs} --out {out}` on {date.today()}.",
        "Built from the committed per-level archive `docs/results/es_imp/data/` (one row per seed × "
        "criterion × level; `es-lottery report es_imp` merges a run store's finished levels into it first), "
        "so it rebuilds on a fresh clone. "
        "Test accuracy of the trained network (ES: the final search mean) at every pruning level, mean ± "
        "standard error over seeds (`n=k/N` where only k of N seeds finished). Density counts prunable "
        "weights (kernels) only; biases are never pruned. `missing` = not run / not finished — never filled "
        "in.",
        "",
        "## Runs",
        "",
        "| config | setting | store directory | finished level runs |",
        "|---|---|---|---|",
    ]
    found: dict[str, tuple[imp.IMPExperiment, list[dict], dict | None]] = {}
    sections: list[str] = []
    for cfg_path in configs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            exp = imp.load_config(cfg_path)
        if exp.env is not None:  # control configs: docs/results/es_imp_control.md
            continue
        run, data = find_run(args.runs, exp)
        if run is not None:  # the store's finished levels join the committed per-level archive
            trunk = imp.trunk(exp, args.runs)
            jobs = {c: f"{trunk.relpath}/seed_*/{d}" for c, d in imp.branch_dirs(exp).items()}
            extra = {"data": data} if data else {}
            archive.merge_levels(
                archive_dir, exp.name, {**config_lib.to_dict(exp), **extra}, imp.rows_of(exp, args.runs), jobs
            )
        meta, rows = archive.read_levels(archive_dir, exp.name)
        rows = [r for r in rows if r["seed"] < exp.seeds and r["level"] < exp.num_levels]
        data = data or (meta or {}).get("config", {}).get("data")
        summary = {"data": data} if data else None
        expected = exp.seeds * exp.num_levels * len(exp.criteria)
        stores = sorted({d.split("/seed_")[0] for d in (meta or {}).get("jobs", {}).values()})
        where = ", ".join(f"`{d}`" for d in stores) if stores else "missing"
        lines.append(f"| `{cfg_path}` | {describe(exp, data)} | {where} | {len(rows)}/{expected} |")
        found[exp.name] = (exp, rows, summary)
        sections += [f"## {exp.name}", "", describe(exp, data), ""]
        if not rows:
            sections += [f"_Missing: run `es-lottery imp {cfg_path} --out {args.runs}`._", ""]
            continue
        sections += level_table(exp, rows)
        secs = [r.get("seconds") or 0.0 for r in rows]
        sections += [
            "",
            f"Compute: {sum(secs) / 60:.1f} min over {len(rows)} level runs "
            f"({np.mean(secs):.1f} s per level run).",
            "",
        ]
        reference = None
        paper = PAPER.get(exp.dataset)
        if (
            paper
            and exp.network.name == "paper_cnn"
            and not (summary or {}).get("data", {}).get("test_split_only")
        ):
            pts = paper["es"] if exp.trainer_type == "es" else paper["gd"]
            reference = {"paper (read-off)": [(1.0, pts[0]), (PAPER_LAST_DENSITY, pts[1])]}
        png = plots.performance_vs_density(
            rows,
            fig_dir / f"{exp.name}.png",
            f"{exp.name}: {exp.dataset}",
            order=exp.criteria,
            reference=reference,
        )
        sections += [f"![{exp.name}](es_imp/{png.name})", ""]
        sections += archive.budget_table(archive_dir, [exp.name], "accuracy")

    # ES vs GD on the same data and network (the paper's Fig. 3)
    sections += ["## ES vs GD on the same data and network (Fig. 3 analogue)", ""]
    pairs = 0
    for name, (exp, rows, _) in found.items():
        if exp.trainer_type != "es" or not rows:
            continue
        for gname, (gexp, grows, _) in found.items():
            same = (gexp.dataset, gexp.dataset_args, gexp.network) == (
                exp.dataset,
                exp.dataset_args,
                exp.network,
            )
            if gexp.trainer_type != "gd" or not grows or not same:
                continue
            merged = [
                {**r, "criterion": f"ES {r['criterion']}"}
                for r in rows
                if r["criterion"] in ("snr", "magnitude")
            ] + [{**r, "criterion": f"GD {r['criterion']}"} for r in grows if r["criterion"] == "magnitude"]
            png = plots.performance_vs_density(
                merged, fig_dir / f"{name}_vs_{gname}.png", f"{name} vs {gname}", order=None
            )
            sections += [f"![{name} vs {gname}](es_imp/{png.name})", ""]
            pairs += 1
    if not pairs:
        sections += ["_Missing: no finished ES run has a finished GD run on the same data and network._", ""]

    # comparison with the paper
    cmp = [
        "## Comparison with the paper's read-off numbers",
        "",
        "Paper: Fig. 3, dense → 1.44 % remaining (level 19), ≈ read off the plots (REFERENCE.md §2).",
        "Ours: the run of the paper config on the same dataset (paper CNN, full data), SNR criterion for",
        "ES and magnitude for GD, at level 0 and level 19. CPU-sized variants use other data, network and",
        "budget and are listed separately below — they are not comparable number for number.",
        "",
        "| task | ES | paper ES dense | paper ES 1.44 % | ours ES dense | ours ES 1.44 % | paper GD dense "
        "| paper GD 1.44 % | ours GD dense | ours GD 1.44 % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def paper_run(dataset: str, trainer: str):
        """The run of the paper config (paper CNN, full data) on ``dataset`` with ``trainer``."""
        return next(
            (
                v
                for v in found.values()
                if (v[0].dataset, v[0].trainer_type) == (dataset, trainer)
                and v[0].network.name == "paper_cnn"
                and not v[0].dataset_args
            ),
            None,
        )

    for ds, p in PAPER.items():
        es_run, gd_run = paper_run(ds, "es"), paper_run(ds, "gd")

        def ours(v, crit, level):
            if v is None:
                return "missing"
            exp, rows, summary = v
            if (summary or {}).get("data", {}).get("test_split_only"):
                return "missing (ran on the t10k split, not the full data)"
            if level >= exp.num_levels:
                return "missing (not in config)"
            return fmt(*value_at(rows, crit, level), exp.seeds)

        cmp.append(
            f"| {DATASET_NAMES[ds]} | {p['es_algorithm']} | {p['es'][0]:.2f} | {p['es'][1]:.2f} | "
            f"{ours(es_run, 'snr', 0)} | {ours(es_run, 'snr', 19)} | {p['gd'][0]:.2f} | {p['gd'][1]:.2f} | "
            f"{ours(gd_run, 'magnitude', 0)} | {ours(gd_run, 'magnitude', 19)} |"
        )
    cmp += [
        "",
        "### CPU-sized variants: first and last level",
        "",
        "| config | criterion | level 0 | last level | last density |",
        "|---|---|---|---|---|",
    ]
    for name, (exp, rows, _) in found.items():
        if not name.endswith("_cpu"):
            continue
        last = exp.num_levels - 1
        for c in exp.criteria:
            cmp.append(
                f"| {name} | {c} | {fmt(*value_at(rows, c, 0), exp.seeds)} | "
                f"{fmt(*value_at(rows, c, last), exp.seeds)} | {exp.schedule.density(last):.4f} |"
            )
    cmp.append("")
    discussion = getattr(args, "discussion", None)  # hand-written claims, appended verbatim
    if discussion is not None and Path(discussion).exists():
        sections += [Path(discussion).read_text().rstrip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([*lines, "", *cmp, *sections]) + "\n")
    print(f"wrote {out}")
    return 0
