"""``docs/results/nets.md``: NeTS vs GD-IMP vs random (Jackson et al. 2023), from the run store and the
committed per-seed archive.

Reproduce (the XOR configs take about a minute each on the 2-core CPU, lenet_mnist_cpu ≈ 5 min,
lenet_mnist ≈ 20 min)::

    es-lottery nets configs/nets/xor_mlp10.yaml --out runs
    es-lottery nets configs/nets/xor_mlp100.yaml --out runs
    es-lottery nets configs/nets/xor_mlp10_inner_b32.yaml --out runs
    es-lottery nets configs/nets/lenet_mnist_cpu.yaml --out runs
    es-lottery nets configs/nets/lenet_mnist_cpu_noise001.yaml --out runs
    es-lottery nets configs/nets/lenet_mnist.yaml --out runs
    es-lottery report nets --runs runs --out docs/results/nets.md

Per-seed results are archived in ``docs/results/nets/data/`` (committed; ``reports.archive``): the page
rebuilds from the archive alone, and a run in the store adds to it. Every number in the page is read from
a per-seed row; a missing run is reported as missing, never invented. The paper's numbers are those
collected in REFERENCE.md §3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from es_lottery import plots
from es_lottery.experiments import config as config_lib
from es_lottery.experiments import nets
from es_lottery.experiments.reports import archive, parse_args

METHODS = nets.METHODS
NETWORK_DEFAULTS = {("hidden_activation", "relu"), ("output_activation", "none")}
METHOD_NAMES = {
    "nets": "NeTS ticket",
    "imp": "GD-IMP (7 × 20 %)",
    "random": "random mask, NeTS density",
    "dense": "dense (unpruned)",
}

# Jackson et al. (2023), 5 trials, as collected in REFERENCE.md §3: (test accuracy %, density % or None)
PAPER = {
    "xor": {"random": (84.0, 20.0), "imp": (100.0, 20.0), "nets": (100.0, 20.0)},
    "lenet": {"random": (90.0, 22.8), "imp": (95.2, 21.1), "nets": (92.3, 29.7)},
}

# (run name, title, paper key, config path)
EXPERIMENTS = (
    ("nets_xor_mlp10", "XOR, MLP 2-10-1", "xor", "configs/nets/xor_mlp10.yaml"),
    ("nets_xor_mlp100", "XOR, MLP 2-100-1", "xor", "configs/nets/xor_mlp100.yaml"),
    (
        "nets_xor_mlp10_inner_b32",
        "XOR, MLP 2-10-1 — ablation: inner epoch with minibatches of 32",
        "xor",
        "configs/nets/xor_mlp10_inner_b32.yaml",
    ),
    (
        "nets_lenet_mnist",
        "LeNet-300-100, MNIST (50 training epochs)",
        "lenet",
        "configs/nets/lenet_mnist.yaml",
    ),
    (
        "nets_lenet_mnist_cpu",
        "LeNet-300-100, MNIST — CPU variant (10 training epochs)",
        "lenet",
        "configs/nets/lenet_mnist_cpu.yaml",
    ),
    (
        "nets_lenet_mnist_cpu_noise001",
        "LeNet-300-100, MNIST — CPU variant, ablation: weight noise N(0, 0.01²)",
        "lenet",
        "configs/nets/lenet_mnist_cpu_noise001.yaml",
    ),
)


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def method_table(rows: list[dict], paper: dict) -> list[str]:
    out = [
        "| method | seeds | test accuracy (mean ± std) | min – max | density of prunable weights "
        "| paper: accuracy (density) | s / seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        rs = [r for r in rows if r["method"] == m]
        ref = paper.get(m)
        ref_s = "–" if ref is None else f"{ref[0]:.1f} % ({ref[1]:.1f} %)"
        if not rs:
            if ref is not None:
                out.append(f"| {METHOD_NAMES[m]} | 0 | not run | – | – | {ref_s} | – |")
            continue
        acc = np.asarray([r["test_accuracy"] for r in rs], float)
        dens = np.asarray([r["density"] for r in rs], float)
        kept = sorted({int(r["kept"]) for r in rs})
        total = rs[0]["total"]
        kept_s = f"{kept[0]}" if len(kept) == 1 else f"{kept[0]}–{kept[-1]}"
        secs = np.mean([r.get("seconds", 0.0) for r in rs])
        out.append(
            f"| {METHOD_NAMES[m]} | {len(rs)} | {pct(acc.mean())} ± {pct(acc.std())} | "
            f"{pct(acc.min())} – {pct(acc.max())} | {pct(dens.mean())} ± {pct(dens.std())} "
            f"({kept_s} of {total}) | {ref_s} | {secs:.1f} |"
        )
    return out


def per_seed_table(rows: list[dict]) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    present = [m for m in METHODS if any(r["method"] == m for r in rows)]
    out = ["| seed | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    by = {(r["method"], r["seed"]): r for r in rows}
    for s in seeds:
        cells = []
        for m in present:
            r = by.get((m, s))
            cells.append("–" if r is None else f"{pct(r['test_accuracy'])} @ {pct(r['density'])}")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return out


def settings_lines(cfg: dict, data: dict) -> list[str]:
    n = cfg.get("nets", {})
    ft = cfg.get("final_training", {})
    imp = cfg.get("imp", {})
    net = {
        k: v for k, v in cfg.get("network", {}).items() if v is not None and (k, v) not in NETWORK_DEFAULTS
    }
    return [
        f"- data: {data.get('dataset', cfg.get('dataset'))} — {data.get('n_train', '?')} train / "
        f"{data.get('n_val', '?')} validation / {data.get('n_test', '?')} test"
        + (
            " (the shared MNIST t10k split, divided 8000/2000)"
            if data.get("test_split_only") == "True"
            else ""
        ),
        f"- network: {net}",
        f"- NeTS: population {n.get('population_size')}, {n.get('generations')} generations"
        f"{'' if n.get('patience') is None else ', patience ' + str(n.get('patience'))}, τ = "
        f"{n.get('target_density')}, fitness {n.get('fitness')}, selection {n.get('selection')}, elites "
        f"{n.get('n_elite')}{' (re-evaluated)' if n.get('reevaluate_elites') else ''}, crossover "
        f"{n.get('crossover_rate')} ({n.get('crossover') or 'per_child'}, {n.get('crossover_mode')}), "
        f"init {n.get('genome_init') or 'network'}, noise rate "
        f"{n.get('noise_rate')} with N(0, {n.get('noise_scale')}²), resample {n.get('resample_rate')}, "
        f"dormancy {n.get('dormancy_rate')}, enable {n.get('enable_rate')}; inner training "
        f"{n.get('inner_epochs')} epoch(s) of SGD, lr {n.get('inner_learning_rate')}, batch "
        f"{n.get('inner_batch_size')}",
        f"- final training (all methods): {ft.get('epochs')} epochs of masked SGD, lr "
        f"{ft.get('learning_rate')}, batch "
        f"{ft.get('batch_size')}, momentum {ft.get('momentum')}",
        f"- IMP: {imp.get('num_levels')} levels ({imp.get('num_levels', 1) - 1} prunings of "
        f"{imp.get('prune_rate')}), {imp.get('criterion')} / {imp.get('scope')}, rewind to θ₀, every level "
        "trained like the final training",
        f"- seeds: {cfg.get('seeds')} (base seed {cfg.get('seed')})",
    ]


def last_improvement(metric_rows: list[dict]) -> list[int]:
    """Per NeTS seed: the last generation at which the best fitness decreased (the history starts at
    generation 1, so 1 means "not after the first generation")."""
    out = []
    rows = [r for r in metric_rows if r.get("job") == "nets"]
    for s in sorted({r["seed"] for r in rows}):
        curve = sorted((r["generation"], r["best_fitness"]) for r in rows if r["seed"] == s)
        last, prev = (curve[0][0] if curve else 0), None
        for g, f in curve:
            if prev is not None and f is not None and f < prev:
                last = g
            prev = f if prev is None or f is None else min(prev, f)
        out.append(last)
    return out


def collect(runs: Path | None, data: Path, name: str, cfg_path: str) -> tuple[list[dict], list[dict], dict]:
    """(result rows, metrics rows, run.json) of experiment ``name``: the archive in ``data`` merged with
    the jobs of ``cfg_path`` in the run store ``runs`` (old-layout run directories there are migrated
    first), whose rows win; the merged archive is written back."""
    meta, rows, metrics = archive.read(data, name)
    found = archive.from_store(runs, name, "nets", cfg_path, nets.load_config, nets.collect)
    if found is None:
        return rows, metrics, meta or {}
    exp, store_rows, store_metrics, jobs = found
    info_path = nets.trunk(exp, runs).path / "data.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else (meta or {}).get("data", {})
    rows, metrics = archive.merge(
        data,
        name,
        config_lib.to_dict(exp.replace(network=exp.resolved_network())),
        jobs,
        store_rows,
        store_metrics,
        metric_key=("generation", "level"),
        extra={"data": info},
    )
    return rows, metrics, archive.read(data, name)[0] or {}


def draw_plots(rows: list[dict], metrics: list[dict], dest: Path, prefix: str) -> list[str]:
    """The experiment's figures, drawn from its per-seed rows, as ``<dest>/<prefix>_<figure>.png``."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for png in sorted(plots.nets_plots(Path(tmp), prefix, rows, metrics)):
            target = dest / f"{prefix}_{png.name}"
            shutil.move(png, target)
            names.append(target.name)
    return names


def build(runs: Path, out: Path, data: Path | None = None) -> str:
    fig_dir = out.parent / "nets"
    data = data or fig_dir / "data"
    lines = [
        "# NeTS — Neuroevolution Ticket Search (Jackson et al. 2023)",
        "",
        f"Generated by `es-lottery report nets --runs {runs} --out {out}` on {date.today().isoformat()} from "
        f"the per-seed archive `{data}` and the run store `{runs}`. Every number below is read from a "
        "per-seed row; missing runs are marked as such.",
        "",
        "Protocol: NeTS evolves (weights, mask) genomes with fitness = validation loss after one epoch of "
        "SGD + ((d − τ)/(1 − τ))², d the GLOBAL density of the prunable weights. The best genome's ticket "
        "θ_best ⊙ m_best is trained with masked SGD and compared with GD-IMP (global magnitude, rewinding to "
        "θ₀, 8 levels = 7 × 20 % → 21 % density) and with a random mask that keeps exactly as many prunable "
        "weights as the seed's NeTS ticket (fresh init). All methods use the same masked SGD, the same train "
        "split (train minus the NeTS validation set) and the same test split. Densities count prunable "
        "weights (kernels) only; biases are never pruned.",
        "",
        "Differences from the original code (deliberate): selection favours the LOWER fitness (the "
        "original's roulette favoured the worse one; available as `selection: roulette_original`), Gaussian "
        "noise is applied once (the original scaled it twice), and the density is count-weighted over all "
        "prunable weights (the original averaged per-layer densities). The XOR networks have ONE output "
        "(2-h-1) trained with binary cross-entropy on the logit. GD-IMP uses the same SGD as the tickets "
        "(not Adam).",
        "",
        "## Summary: measured vs paper",
        "",
        "| experiment | NeTS | GD-IMP | random | paper NeTS | paper IMP | paper random |",
        "|---|---|---|---|---|---|---|",
    ]
    sections = []
    for name, title, key, cfg_path in EXPERIMENTS:
        rows, metric_rows, meta = collect(runs, data, name, cfg_path)
        paper = PAPER[key]
        ref = [f"{paper[m][0]:.1f} % ({paper[m][1]:.1f} %)" for m in ("nets", "imp", "random")]
        if not rows:
            lines.append(f"| {title} | not run yet | not run yet | not run yet | {' | '.join(ref)} |")
            sections += [
                f"## {title}",
                "",
                f"**Not run yet.** Reproduce with `es-lottery nets {cfg_path} --out {runs}`.",
                "",
            ]
            continue
        cfg = meta.get("config", {})
        info = meta.get("data", {})
        cells = []
        for m in ("nets", "imp", "random"):
            rs = [r for r in rows if r["method"] == m]
            if not rs:
                cells.append("not run")
                continue
            acc = np.mean([r["test_accuracy"] for r in rs])
            dens = np.mean([r["density"] for r in rs])
            cells.append(f"{pct(acc)} ({pct(dens)}), n={len(rs)}")
        lines.append(f"| {title} | {' | '.join(cells)} | {' | '.join(ref)} |")
        sections += [
            f"## {title}",
            "",
            f"Config: `{cfg_path}`; per-seed rows: `{data}/{name}.results.jsonl`",
            "",
        ]
        sections += [*settings_lines(cfg, info), ""]
        sections += [*method_table(rows, paper), ""]
        sections += ["Per seed (test accuracy @ density):", "", *per_seed_table(rows), ""]
        nets_rows = [r for r in rows if r["method"] == "nets"]
        if nets_rows:
            gens = np.mean([r["generations"] for r in nets_rows])
            search = np.mean([r.get("search_seconds", 0.0) for r in nets_rows])
            fit = np.mean([r["best_fitness"] for r in nets_rows])
            loss = np.mean([r["best_loss"] for r in nets_rows])
            sections += [
                f"NeTS search: {gens:.0f} generations on average, best fitness {fit:.4f} (of which loss "
                f"{loss:.4f}), {search:.1f} s per seed (all seeds vmapped in one program; the time includes "
                "compilation).",
                "",
            ]
        last = last_improvement(metric_rows)
        if last:
            sections += [
                "Generation of the last improvement of the best fitness, per seed: "
                + ", ".join(str(g) for g in last)
                + ".",
                "",
            ]
        for png in draw_plots(rows, metric_rows, fig_dir, name):
            sections.append(f"![{png}](nets/{png})")
        sections.append("")
    lines += [
        "",
        "Cells: mean test accuracy (mean density of prunable weights), n = seeds. The paper's XOR row gives "
        "20 % density for all methods; the paper trained LeNet on the full MNIST (60 000 training images), "
        "the runs here use the 8000/2000 division of the MNIST test split (offline), so absolute accuracies "
        "are not comparable one to one. XOR test accuracy moves in steps of 25 % (four distinct points).",
        "",
    ]
    return "\n".join(lines + sections) + "\n"


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        args = parse_args("nets", argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = build(args.runs, args.out, args.data)
    discussion = getattr(args, "discussion", None)  # hand-written text, appended verbatim
    if discussion is not None and Path(discussion).exists():
        text += "\n" + Path(discussion).read_text()
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0
