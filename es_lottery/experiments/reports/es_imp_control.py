"""``docs/results/es_imp_control.md``: ES and PPO lottery tickets on control tasks (Lange & Sprekeler 2023,
Fig. 2/3), from a committed per-level archive.

Reproduce (CPU-sized variants; the paper-scale configs in ``configs/imp/`` are GPU work)::

    es-lottery imp configs/imp/cartpole_snes_cpu.yaml --out runs
    es-lottery imp configs/imp/cartpole_ppo_cpu.yaml --out runs
    es-lottery imp configs/imp/pendulum_sep_cma_cpu.yaml --out runs
    es-lottery imp configs/imp/pendulum_ppo_cpu.yaml --out runs
    es-lottery report es_imp_control --runs runs

Every control config of ``--configs`` (those with an ``env:`` section) is read from the run store (its
old-layout run directories migrated first) and its finished levels are merged into the archive
``docs/results/es_imp_control/data/<config name>.levels.jsonl.gz`` (one row per seed × criterion × level:
return, density, per-layer density, seconds) with ``<config name>.run.json`` (the config and the store
directory of each criterion). The page is built from the archive alone, so it rebuilds on a fresh clone;
a criterion whose store directory changed (its settings changed) has its archived rows replaced, never
mixed. Levels that have not finished are reported as missing — never filled in.

"Keeps its return" is measured against a no-skill reference computed here: the return of the all-zero
policy (every weight pruned: a constant action) on the task's test episodes. A curve keeps its return at a
level when its mean over seeds recovers ≥ 90 % of its dense (level 0) gain over that reference; the page
lists the sparsest such level, how many finished levels keep it, and the first level that does not.
"""

from __future__ import annotations

import argparse
import warnings
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np

from es_lottery import plots
from es_lottery.experiments import config as config_lib
from es_lottery.experiments import imp, legacy_runs
from es_lottery.experiments.reports import archive, parse_args
from es_lottery.experiments.reports.es_imp import stats

#: Lange & Sprekeler (2023), read off Fig. 2/3 (REFERENCE.md §2): mean test return of the ES ticket against
#: the fraction of remaining weights. Pendulum: ≈ −130 dense, flat to 10 %, then → −1250 at 1.44 %.
PAPER = {
    "Pendulum-v1": {
        "es": "Sep_CMA_ES",
        "points": [(1.0, -130.0), (0.1, -130.0), (0.8**19, -1250.0)],
        "note": "≈ −130 dense, flat to 10 %, then → −1250 at 1.44 % (Sep-CMA-ES, population 256, "
        "3000 generations, 2 × 64 tanh policy)",
    },
}
KEEP_FRACTION = 0.9  # a curve keeps its return while it recovers ≥ 90 % of the dense gain over no-skill

__all__ = ["PAPER", "build_page", "control_configs", "kept_levels", "main", "no_skill_return"]


# ----------------------------------------------------------------------------------------------
# the store


def store_rows(runs: Path, exp: imp.IMPExperiment) -> tuple[list[dict], dict[str, str]]:
    """(the finished level rows of ``exp`` in the store ``runs``, criterion → store directory)."""
    if not runs.exists():
        return [], {}
    legacy_runs.migrate_matching(runs, exp.name, "imp")
    trunk = imp.trunk(exp, runs)
    if not trunk.path.is_dir():
        return [], {}
    jobs = {c: f"{trunk.relpath}/seed_*/{d}" for c, d in imp.branch_dirs(exp).items()}
    return imp.rows_of(exp, runs), jobs


def control_configs(configs: Path) -> list[imp.IMPExperiment]:
    """The CPU-sized control configs (an ``env:`` section, name ending in ``_cpu``) of ``configs``."""
    out = []
    for path in sorted(configs.glob("*_cpu.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            exp = imp.load_config(path)
        if exp.env is not None:
            out.append(exp)
    return out


# ----------------------------------------------------------------------------------------------
# numbers


def no_skill_return(exp: imp.IMPExperiment) -> float:
    """Mean test return of the all-zero policy (every weight pruned) on ``exp``'s test episodes."""
    import jax

    task = exp.control_task()
    params = jax.tree.map(lambda x: x * 0, task.init_params(jax.random.key(0)))
    return float(task.evaluate(task.init_state(jax.random.key(0)), params)["return"])


def fmt(mean: float, se: float | None, n: int, want: int) -> str:
    if n == 0:
        return "missing"
    s = f"{mean:.1f}" + ("" if se is None else f" ± {se:.1f}")
    return s + ("" if n == want else f" (n={n}/{want})")


def curve(rows: list[dict], criterion: str) -> dict[int, tuple[float, float | None, int, float]]:
    """level → (mean return, s.e., seeds, mean density) of one criterion."""
    by = defaultdict(list)
    for r in rows:
        if r["criterion"] == criterion:
            by[r["level"]].append(r)
    return {
        k: (*stats([r["test_return"] for r in rs]), float(np.mean([r["density"] for r in rs])))
        for k, rs in sorted(by.items())
    }


def kept_levels(c: dict[int, tuple], reference: float, seeds: int) -> tuple[list[int], int | None]:
    """(the levels, all seeds finished, whose mean keeps ≥ KEEP_FRACTION of the dense gain over
    ``reference``; the first level, from dense on, that does not — None when every finished level keeps
    it). Empty and None when level 0 has not finished for every seed."""
    if 0 not in c or c[0][2] < seeds:
        return [], None
    gain = c[0][0] - reference
    keep = [k for k in sorted(c) if c[k][2] == seeds and c[k][0] - reference >= KEEP_FRACTION * gain]
    first_drop = next((k for k in sorted(c) if c[k][2] == seeds and k not in keep), None)
    return keep, first_drop


# ----------------------------------------------------------------------------------------------
# the page


def describe(exp: imp.IMPExperiment) -> str:
    t = config_lib.to_dict(exp.trainer)
    e = exp.env
    pol = e.get("policy", {})
    env = (
        f"{e['name']}, {e.get('episode_length')} steps, {e.get('train_rollouts', '—')} train rollouts, "
        f"{e.get('test_episodes')} test episodes, policy {pol.get('hidden')} {pol.get('activation', 'tanh')} "
        f"({pol.get('action_mode', 'auto')})"
    )
    if exp.trainer_type == "es":
        tr = (
            f"{t['algorithm']} σ_init {t['sigma_init']}, population {t['population_size']}, "
            f"{t['num_generations']} generations"
        )
    else:
        tr = (
            f"PPO {t['total_env_steps']:,} env steps ({t['num_envs']} envs × {t['rollout_length']}), "
            f"Adam {t['learning_rate']}"
        )
    return f"{env}; {tr}; {exp.num_levels} levels × p = {exp.prune_rate}; {exp.seeds} seeds"


def label(exp: imp.IMPExperiment, criterion: str) -> str:
    return f"{'PPO' if exp.trainer_type == 'ppo' else 'ES'} {criterion}"


def build_page(
    exps: list[imp.IMPExperiment],
    data: Path,
    out: Path,
    command: str,
    references: dict[str, float] | None = None,
) -> str:
    """The page's Markdown from the archive ``data`` (figures written next to ``out``)."""
    fig_dir = out.parent / out.stem
    by_env: dict[str, list[tuple[imp.IMPExperiment, list[dict]]]] = defaultdict(list)
    lines = [
        "# ES and PPO lottery tickets on control tasks (Lange & Sprekeler 2023, Fig. 2/3)",
        "",
        f"Generated by `{command}` on {date.today()} from the committed per-level archive "
        f"`{data}` (one row per seed × criterion × level). Reproduce:",
        "",
        "```bash",
        *[f"es-lottery imp configs/imp/{exp.name}.yaml --out runs" for exp in exps],
        "es-lottery report es_imp_control --runs runs",
        "```",
        "",
        "Mean test return (64 test episodes of the deterministic policy, observation statistics frozen) of "
        "the trained ticket at every level, ± standard error over seeds (`n=k/N` where only k of N seeds "
        "finished; `missing` = not finished, never filled in). Density counts the policy's prunable weights "
        "(kernels); biases and PPO's critic are never pruned. ES and PPO runs of a task share the env "
        "section, hence θ₀ of every seed. `random_reinit` is the paper's baseline: a random mask of the "
        "same size and a fresh initialisation, pruned along its own chain.",
        "",
        "## Runs",
        "",
        "| config | setting | finished level runs |",
        "|---|---|---|",
    ]
    for exp in exps:
        _, rows = archive.read_levels(data, exp.name)
        rows = [r for r in rows if r["seed"] < exp.seeds and r["level"] < exp.num_levels]
        expected = exp.seeds * exp.num_levels * len(exp.criteria)
        lines.append(f"| `configs/imp/{exp.name}.yaml` | {describe(exp)} | {len(rows)}/{expected} |")
        by_env[exp.env["name"]].append((exp, rows))
    lines.append("")
    references = dict(references or {})
    for env, runs in by_env.items():
        lines += [f"## {env}", ""]
        if not any(rows for _, rows in runs):
            lines += ["_Missing: no finished level yet._", ""]
            continue
        ref = references.get(env)
        if ref is None:
            ref = no_skill_return(runs[0][0])
        lines += [
            f"No-skill reference (the all-zero policy: every weight pruned): return {ref:.1f}. "
            f"A curve *keeps its return* while its mean recovers ≥ {KEEP_FRACTION:.0%} of its dense gain "
            "over it (levels with every seed finished).",
            "",
        ]
        merged, order, curves = [], [], {}
        for exp, rows in runs:
            for c in exp.criteria:
                name = label(exp, c)
                order.append(name)
                curves[name] = (curve(rows, c), exp.seeds)
            merged += [{**r, "criterion": label(exp, r["criterion"])} for r in rows]
        paper = PAPER.get(env)
        reference = {"paper ES (read-off)": paper["points"]} if paper else None
        png = plots.performance_vs_density(
            merged,
            fig_dir / f"{env}.png",
            f"{env}: return of the ticket against remaining weights",
            order=order,
            metric="test_return",
            ylabel="test return",
            reference=reference,
        )
        lines += [f"![{env}]({fig_dir.name}/{png.name})", ""]
        levels = max(exp.num_levels for exp, _ in runs)
        lines += ["| level | density | " + " | ".join(order) + " |", "|---|---|" + "---|" * len(order)]
        for k in range(levels):
            density = 0.8**k
            for exp, _ in runs:
                density = exp.schedule.density(k)
                break
            cells = []
            for name in order:
                c, seeds = curves[name]
                cells.append(fmt(*c[k][:3], seeds) if k in c else "missing")
            lines.append(f"| {k} | {density:.4f} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| curve | dense return | sparsest level that keeps it | levels that keep it | first level "
            "below | last level |",
            "|---|---|---|---|---|---|",
        ]
        for name in order:
            c, seeds = curves[name]
            keep, drop = kept_levels(c, ref, seeds)
            done = [k for k in c if c[k][2] == seeds]
            sparsest = f"{c[keep[-1]][3]:.2%} (level {keep[-1]})" if keep else "—"
            below = "none" if keep and drop is None else ("—" if drop is None else f"level {drop}")
            last = max(c) if c else None
            dense = fmt(*c[0][:3], seeds) if 0 in c else "missing"
            tail = f"{fmt(*c[last][:3], seeds)} at {c[last][3]:.2%}" if last is not None else "missing"
            lines.append(f"| {name} | {dense} | {sparsest} | {len(keep)}/{len(done)} | {below} | {tail} |")
        lines.append("")
        if paper:
            lines += [f"Paper ({paper['es']}): {paper['note']}.", ""]
        lines += archive.budget_table(data, [exp.name for exp, _ in runs])
        secs = [r.get("seconds") or 0.0 for _, rows in runs for r in rows]
        lines += [f"Compute: {sum(secs) / 60:.1f} min over {len(secs)} level runs.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        args = parse_args("es_imp_control", argv)
    out: Path = args.out
    data: Path = args.data or out.parent / out.stem / "data"
    exps = control_configs(args.configs)
    for exp in exps:
        rows, jobs = store_rows(args.runs, exp)
        if rows:
            archive.merge_levels(data, exp.name, config_lib.to_dict(exp), rows, jobs)
    text = build_page(exps, data, out, f"es-lottery report es_imp_control --runs {args.runs} --out {out}")
    if args.discussion is not None and args.discussion.exists():
        text += "\n" + args.discussion.read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0
