"""``es-lottery transfer SOURCE_RUN --to CONFIG``: retrain a finished IMP run's tickets in another setting.

Every level k of the source run gives a ticket: its mask m_k and its start θ₀ ⊙ m_k (exactly the stored
arrays, ``analysis.transfer``). The target config (an ``es-lottery imp`` config, ``configs/imp/*.yaml``)
says where they are retrained: another dataset or env variant whose network has the SAME params shapes
(e.g. digits classes 0–4 → 5–9, Pendulum mass 1.0 → 1.5), another ES (SNES → PGPE), gradient descent
(``trainer.type: gd``, Adam) or PPO (``trainer.type: ppo``, control). The target's ``criteria`` and
``imp.num_levels`` are not used: the levels and masks come from the source.

Source: an experiment view ``<out>/<name>/`` (``es-lottery imp``'s, with ``jobs.json`` into the store), an
old-layout run directory, or a committed archive (``analysis.write_archive``: its ``.json``). Only the
chosen criterion and seeds are read; anything missing is listed by seed / criterion / level / file.

Keys: seed s trains level k with ``loop.level_keys(fold_in(key(target.seed), s), k)``, the keys of the
target's own IMP run — so transferring to the source's own config repeats the source bit for bit, and the
transferred curve is directly comparable with the target's own ticket.

The store: ``<out>/store/transfer/<source stem>-to-<target stem>-<key>/`` keyed by the source's trunk
fields (what its results depend on, ``experiments.imp.trunk``) and the target's; below it the layout of an
IMP trunk (``seed_<s>/theta0.npz`` = the source's θ₀, ``seed_<s>/<source branch>/level_<k>/`` with
``mask.npz``, ``theta0.npz``, ``final_params.npz``, ``std.npz`` (ES), ``curves.npz``, ``metrics.json``
last). Re-running skips finished levels and resumes an ES level from its checkpoint. The view
``<out>/<name>/`` (default name ``<target>-from-<source>-<criterion>``) has ``config.yaml`` (the target
config with the source's criterion and levels: ``analysis.load_run`` and ``es-lottery report`` read it like
an IMP run), ``jobs.json``, ``metrics.jsonl``, ``summary.json`` and ``plots/transfer_vs_native.png``: the
transferred tickets against the source's own curve and the target's own IMP curves (every criterion of the
target config found in the same store, e.g. its SNR ticket and random-reinit).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from rich.console import Console
from rich.markup import escape

from es_lottery import masks as masks_lib
from es_lottery import networks
from es_lottery.analysis import plots as analysis_plots
from es_lottery.analysis import runs as runs_lib
from es_lottery.analysis import transfer as transfer_lib
from es_lottery.experiments import config as config_lib
from es_lottery.experiments import imp
from es_lottery.experiments.common import View
from es_lottery.experiments.store import Job
from es_lottery.pruning.es_trainer import ESTrainer, NpzCheckpointer
from es_lottery.treeio import save_tree, to_jsonable

__all__ = ["load_source", "run_transfer", "source_fields", "view_name"]

EXPERIMENT = "transfer"


def load_source(
    path: str | Path, criterion: str | None = None, seeds: Sequence[int] | None = None
) -> tuple[runs_lib.RunData, str]:
    """(the source run restricted to one criterion and ``seeds``, that criterion). ``criterion`` None: the
    run's mask source (``magnitude`` when it has it, else its first IMP criterion)."""
    p = Path(path)
    archive = p.suffix in (".json", ".npz") and p.is_file()
    if not archive and not p.is_dir():
        raise FileNotFoundError(
            f"source run {p} does not exist (a run view, an old run directory or an archive)"
        )
    head = runs_lib.load_archive(p) if archive else None
    config = head.config if head is not None else _read_config(p)
    available = [str(c) for c in config.get("criteria") or []]
    if criterion is None:
        imp_crits = [c for c in available if c in imp.IMP_CRITERIA]
        criterion = "magnitude" if "magnitude" in imp_crits else (imp_crits or available or ["magnitude"])[0]
    if criterion not in available:
        raise ValueError(f"--criterion {criterion!r}: source run {p} has criteria {available}")
    if head is None:
        run = runs_lib.load_run(p, seeds=seeds, criteria=[criterion])
    else:
        bad = [s for s in seeds or () if s not in head.seeds]
        if bad:
            raise ValueError(f"--seeds {bad}: archive {p} holds seeds {list(head.seeds)}")
        keep = tuple(seeds) if seeds is not None else head.seeds
        run = runs_lib.RunData(
            head.name,
            head.config,
            head.summary,
            keep,
            (criterion,),
            head.level_ids,
            {s: head.theta0[s] for s in keep},
            {k: v for k, v in head.levels.items() if k[0] in keep and k[1] == criterion},
        )
        missing = [
            f"seed_{s}/{criterion}/level_{k}"
            for s in keep
            for k in head.level_ids
            if (s, criterion, k) not in run.levels
        ]
        if missing:
            raise runs_lib.RunDirectoryError(p, [f"{m}: missing from the archive" for m in missing])
    return run, criterion


def _read_config(path: Path) -> dict:
    f = path / "config.yaml"
    if not f.is_file():
        raise runs_lib.RunDirectoryError(
            path, ["config.yaml: missing (not an es-lottery imp run directory?)"]
        )
    return yaml.safe_load(f.read_text()) or {}


def source_fields(run: runs_lib.RunData, criterion: str, out: str | Path) -> tuple[dict, str, str]:
    """(what the source's results depend on, its stem, its branch directory name): its IMP trunk's fields
    when its config parses as an IMP config (so the source's name and location do not matter), else the
    whole config."""
    info = (run.summary or {}).get("transfer")
    if info is not None:  # a transfer view as the source: its config is its target's
        keep = {k: v for k, v in info.items() if k not in ("source_path", "target_config", "seeds")}
        stem = str(run.config.get("dataset") or (run.config.get("env") or {}).get("name", "run"))
        return {"transfer": to_jsonable(keep)}, f"{stem}_transfer", criterion
    try:
        src = imp.parse_config({**run.config, "seeds": 1})
    except (ValueError, TypeError):
        cfg = {k: v for k, v in run.config.items() if k not in ("name", "seeds")}
        stem = str(run.config.get("dataset") or (run.config.get("env") or {}).get("name", "run"))
        return {"config": to_jsonable(cfg)}, stem, criterion
    job = imp.trunk(src, out)
    return job.fields, job.stem, imp.branch_dirs(src).get(criterion, criterion)


def view_name(run: runs_lib.RunData, criterion: str, target: imp.IMPExperiment) -> str:
    return f"{target.name}-from-{run.name}-{criterion}"


def _trainer(exp: imp.IMPExperiment):
    if exp.env is not None:
        return exp.trainer_kind.control(exp.control_task(), exp.trainer)
    data = imp.load_data(exp)
    module = exp.module()
    imp.check_fit(exp, module, data)
    return imp.make_trainer(exp, module, data)


def _check_shapes(run: runs_lib.RunData, exp: imp.IMPExperiment, config_path: str) -> None:
    like = jax.eval_shape(lambda: networks.init_params(jax.random.key(0), exp.module()))
    src = run.theta0[run.seeds[0]]
    a = {masks_lib.path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(like)}
    b = {masks_lib.path_name(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(src)}
    if a != b:
        diff = next(
            (
                f"{k}: source {b.get(k)}, target {a.get(k)}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ),
            "",
        )
        field = "env.policy" if exp.env is not None else "network"
        raise ValueError(
            f"{config_path}: field {field!r} builds params of other shapes than the source run "
            f"{run.name!r} ({diff})"
        )
    if run.score != f"test_{exp.score}":
        raise ValueError(
            f"{config_path}: the target scores {exp.score}, the source run {run.name!r} scores "
            f"{run.score[5:]}: a ticket transfers between two classification or two control tasks"
        )


def _series(rows: list[dict], score: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean density per level, ``(seeds, levels)`` scores with NaN where a seed lacks a level)."""
    if not rows:
        return None
    levels = sorted({int(r["level"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    vals = np.full((len(seeds), len(levels)), np.nan)
    dens = np.full((len(seeds), len(levels)), np.nan)
    for r in rows:
        i, j = seeds.index(int(r["seed"])), levels.index(int(r["level"]))
        v = r.get(score)
        vals[i, j] = np.nan if v is None else float(v)
        dens[i, j] = float(r["density"])
    return np.nanmean(dens, axis=0), vals


def comparison_series(
    rows: list[dict], run: runs_lib.RunData, criterion: str, target: imp.IMPExperiment, out: str | Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The curves of the transfer plot: transferred, source, and the target's own criteria (from ``out``)."""
    score = f"test_{target.score}"
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    own = _series(rows, score)
    if own is not None:
        series[f"transfer: {run.name} {criterion} → {target.name}"] = own
    src_rows = [lv.metrics for (s, c, k), lv in sorted(run.levels.items()) if c == criterion]
    src = _series(src_rows, score)
    if src is not None:
        series[f"source: {run.name} {criterion}"] = src
    try:
        native = imp.rows_of(target, out)
    except (OSError, ValueError):
        native = []
    for c in target.criteria:
        got = _series([r for r in native if r["criterion"] == c], score)
        if got is not None:
            series[f"target's own: {target.name} {c}"] = got
    return series


def run_transfer(
    source: str | Path,
    target_config: str | Path,
    criterion: str | None = None,
    seeds: Sequence[int] | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    console: Console | None = None,
) -> Path:
    """Retrain (or resume) every level of the source run's ``criterion`` for each seed with the target
    config's trainer; store the levels, rebuild the view and return its path."""
    console = console or Console()
    exp = imp.load_config(target_config)
    run, criterion = load_source(source, criterion, seeds)
    _check_shapes(run, exp, str(target_config))
    trainer = _trainer(exp)
    src_fields, src_stem, branch = source_fields(run, criterion, out)
    tgt = imp.trunk(exp, out)
    fields = {"source": src_fields, "source_criterion": branch, "target": tgt.fields}
    job = Job.open(out, EXPERIMENT, f"{src_stem}-to-{tgt.stem}", fields).ensure()
    name = name or view_name(run, criterion, exp)
    console.print(
        f"[bold]transfer[/] {escape(run.name)} ({escape(criterion)}, seeds {list(run.seeds)}, levels "
        f"{list(run.level_ids)}) → {escape(exp.name)} ({trainer.name}) → {out}/{name} (data: {job.path})"
    )
    for s in run.seeds:
        run_key = jax.random.fold_in(jax.random.key(exp.seed), s)
        sdir = job.seed(s)
        if not (sdir / "theta0.npz").is_file():
            save_tree(sdir / "theta0.npz", run.theta0[s])
        for k in run.level_ids:
            ldir = sdir / branch / f"level_{k}"
            if imp.level_done(ldir):
                console.print(f"  seed {s} level {k}: finished earlier, skipped")
                continue
            lv = run.level(s, criterion, k)
            ticket = transfer_lib.Ticket(lv.mask, lv.theta0)
            t0 = time.time()
            ckpt = (
                trainer.checkpointing(NpzCheckpointer(ldir / "checkpoint"))
                if isinstance(trainer, ESTrainer)
                else contextlib.nullcontext()
            )
            with ckpt:
                res = transfer_lib.transfer_tickets(run_key, trainer, {k: ticket})
            meta = {
                "seed": s,
                "criterion": criterion,
                "kind": "transfer",
                "source": run.name,
                "source_score": lv.metrics.get(run.score),
                "trainer": trainer.name,
                "target_density": lv.density,
                "seconds": time.time() - t0,
            }
            row = imp.write_level(ldir, res.records[0], lv.theta0, meta, exp.score)
            console.print(
                f"  seed {s} level {k}: {row['kept']}/{row['total']} prunable ({row['density']:.2%}), test "
                f"{exp.score} {row[f'test_{exp.score}']:.4f} (source {meta['source_score']}) "
                f"({row['seconds']:.1f} s)"
            )
            if exp.trainer_kind.segmented:
                jax.clear_caches()  # as imp: an ES level's programs are not reused
    return write_view(run, criterion, branch, exp, job, out, name, source, target_config)


def write_view(
    run: runs_lib.RunData,
    criterion: str,
    branch: str,
    exp: imp.IMPExperiment,
    job: Job,
    out: str | Path,
    name: str,
    source: str | Path,
    target_config: str | Path,
) -> Path:
    view = View(out, name)
    rows = [
        r
        for r in imp.collect_rows(job.path, {criterion: branch})
        if r["seed"] in run.seeds and r["level"] in run.level_ids
    ]
    cfg = config_lib.to_dict(exp.resolved())
    cfg.update(name=name, criteria=[criterion], seeds=len(run.seeds))
    cfg["imp"] = {**cfg.get("imp", {}), "num_levels": max(run.level_ids) + 1}
    (view.path / "config.yaml").write_text(yaml.safe_dump(to_jsonable(cfg), sort_keys=False))
    data = Path(os.path.relpath(job.path, view.path)).as_posix()
    view.write_jobs({"trunk": job.relpath, "data": data, "branches": {criterion: branch}})
    view.write_rows("metrics.jsonl", rows)
    summary: dict[str, Any] = {
        "transfer": {
            "source": run.name,
            "source_path": str(source),
            "source_criterion": criterion,
            "source_trainer": run.trainer_type,
            "target": exp.name,
            "target_config": str(target_config),
            "target_trainer": exp.trainer_type,
            "seeds": list(run.seeds),
            "levels": list(run.level_ids),
        },
        "store": job.relpath,
        "criteria": imp.summarise(rows, exp.score),
    }
    if list(run.seeds) == list(range(len(run.seeds))):
        summary["experiment"] = {"seeds": len(run.seeds)}
    view.write_json("summary.json", summary)
    series = comparison_series(rows, run, criterion, exp, out)
    if series:
        analysis_plots.transfer_curves(
            series,
            view.path / "plots" / "transfer_vs_native.png",
            ylabel=f"test {exp.score}",
            title=f"{run.name} ({criterion}) → {exp.name}",
        )
    return view.path
