"""Build docs/results/nets.md from the run directories of the NeTS experiments.

Reproduce (the XOR configs take about a minute each on the 2-core CPU, lenet_mnist_cpu ≈ 5 min,
lenet_mnist ≈ 20 min):

    es-lottery nets configs/nets/xor_mlp10.yaml --out runs
    es-lottery nets configs/nets/xor_mlp100.yaml --out runs
    es-lottery nets configs/nets/xor_mlp10_inner_b32.yaml --out runs
    es-lottery nets configs/nets/lenet_mnist_cpu.yaml --out runs
    es-lottery nets configs/nets/lenet_mnist.yaml --out runs
    python scripts/nets_report.py --runs runs --out docs/results/nets.md

(Without the CLI wiring: ``python -c "from es_lottery.experiments import nets; ..."`` with
``nets.run_experiment(nets.load_config(path), out="runs")``.)

Every number in the document is read from a run directory; a missing run is reported as missing, never
invented. The paper's numbers are those collected in REFERENCE.md §3.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import date
from pathlib import Path

import numpy as np

METHODS = ("nets", "imp", "random", "dense")
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


def latest_run(runs: Path, name: str) -> Path | None:
    """The most recently modified ``<name>-<hash>`` directory with results (exact name match)."""
    found = [
        p
        for p in runs.glob(f"{name}-*")
        if p.name.rsplit("-", 1)[0] == name and (p / "results.jsonl").exists()
    ]
    return max(found, key=lambda p: (p / "results.jsonl").stat().st_mtime) if found else None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


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
    net = cfg.get("network", {})
    return [
        f"- data: {data.get('dataset', cfg.get('dataset'))} — {data.get('n_train', '?')} train / "
        f"{data.get('n_val', '?')} validation / {data.get('n_test', '?')} test"
        + (
            " (the shared MNIST t10k split, divided 8000/2000)"
            if data.get("test_split_only") == "True"
            else ""
        ),
        f"- network: {net}",
        f"- NeTS: population {n.get('pop_size')}, {n.get('generations')} generations"
        f"{'' if n.get('patience') is None else ', patience ' + str(n.get('patience'))}, τ = "
        f"{n.get('target_density')}, fitness {n.get('fitness')}, selection {n.get('selection')}, elites "
        f"{n.get('n_elite')}, crossover {n.get('crossover_rate')} ({n.get('crossover_mode')}), noise rate "
        f"{n.get('noise_rate')} with N(0, {n.get('noise_scale')}²), resample {n.get('resample_rate')}, "
        f"dormancy {n.get('dormancy_rate')}, enable {n.get('enable_rate')}; inner training "
        f"{n.get('inner_epochs')} epoch(s) of SGD, lr {n.get('inner_lr')}, batch {n.get('inner_batch_size')}",
        f"- final training (all methods): {ft.get('epochs')} epochs of masked SGD, lr {ft.get('lr')}, batch "
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


def copy_plots(run: Path, dest: Path, prefix: str) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for png in sorted((run / "plots").glob("*.png")):
        target = dest / f"{prefix}_{png.name}"
        shutil.copyfile(png, target)
        names.append(target.name)
    return names


def build(runs: Path, out: Path) -> str:
    fig_dir = out.parent / "nets"
    lines = [
        "# NeTS — Neuroevolution Ticket Search (Jackson et al. 2023)",
        "",
        f"Generated by `scripts/nets_report.py` on {date.today().isoformat()} from the run directories "
        f"in `{runs}`. Every number below is read from a run; missing runs are marked as such.",
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
        run = latest_run(runs, name)
        paper = PAPER[key]
        ref = [f"{paper[m][0]:.1f} % ({paper[m][1]:.1f} %)" for m in ("nets", "imp", "random")]
        if run is None:
            lines.append(f"| {title} | not run yet | not run yet | not run yet | {' | '.join(ref)} |")
            sections += [
                f"## {title}",
                "",
                f"**Not run yet.** Reproduce with `es-lottery nets {cfg_path} --out {runs}`.",
                "",
            ]
            continue
        rows = read_jsonl(run / "results.jsonl")
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        cfg = summary.get("experiment", {})
        data = summary.get("data", {})
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
        sections += [f"## {title}", "", f"Run directory: `{run}`", ""]
        sections += [*settings_lines(cfg, data), ""]
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
        last = last_improvement(read_jsonl(run / "metrics.jsonl"))
        if last:
            sections += [
                "Generation of the last improvement of the best fitness, per seed: "
                + ", ".join(str(g) for g in last)
                + ".",
                "",
            ]
        for png in copy_plots(run, fig_dir, name):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", type=Path)
    parser.add_argument("--out", default="docs/results/nets.md", type=Path)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build(args.runs, args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
