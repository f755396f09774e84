"""Strong-lottery-ticket experiments: YAML config → run directory with results, metrics and plots.

Config (``configs/slt/*.yaml``)::

    name: moons_ga
    dataset: moons            # any of tasks.classification.DATASETS
    dataset_args: {}          # passed to load_dataset (e.g. {classes: 3} for digits, {k: 4} for blobs)
    archs: {A: [2, 20, 2]}    # label → MLP sizes (input and output must fit the data); "k" = class count
    class_counts: []          # optional sweep over class counts: digits classes 0..k-1 / blobs with k centers
    variants: [ga, adaptive_ab]
    seeds: 25
    seed: 0                   # seed s: key fold_in(key(seed), s), the same frozen weights for every variant
    ga: {}                    # GAConfig overrides (pop_size, rates, fitness, …)
    backprop: true            # the tuned MLPClassifier-style baseline (paper settings for moons/circles)
    edge_popup: []            # list of {weight_init, kept_fraction (number, "matched" or "matched_best"),
                              # epochs}; "matched" = mean density of the config's GA variants on that
                              # arch; "matched_best" = mean density of the variant with the higher mean
                              # test accuracy there (the paper's Fig. 6 rule)
    progress_every: 10        # generations between progress updates

Each (arch, method) is a job; all seeds of a job run at once (``vmap``), or ``seed_chunk`` of them at a
time, each chunk's results recorded as it finishes. Finished jobs (and seeds) are skipped when the same
config is run again into the same output directory, and a GA job that was interrupted resumes from its
last checkpoint (``checkpoints/`` in the run directory, written about once a minute).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from es_lottery import networks, plots
from es_lottery._checks import check_number
from es_lottery.experiments.rundir import (
    RunDir,
    check_dataset,
    check_keys,
    from_dict,
    load_tree,
    load_yaml,
    require_fields,
    save_tree,
)
from es_lottery.search import ga_slt
from es_lottery.tasks import classification

TOP_KEYS = (
    "name",
    "dataset",
    "dataset_args",
    "archs",
    "variants",
    "seeds",
    "seed",
    "ga",
    "backprop",
    "edge_popup",
    "progress_every",
    "class_counts",
)
CLASS_COUNT_ARG = {"digits": "classes", "blobs": "k"}
EDGE_POPUP_KEYS = ("weight_init", "kept_fraction", "epochs", "scale_init", "batch_size")
MATCHED = ("matched", "matched_best")  # kept fractions taken from the GA's results on the same arch

DEFAULT_CONFIG = {
    "name": "quickstart_moons_B",
    "dataset": "moons",
    "archs": {"B": [2, 75, 2]},
    "variants": ["ga"],
    "seeds": 8,
    "backprop": False,
}


@dataclass(frozen=True)
class SLTExperiment:
    name: str
    dataset: str
    archs: dict
    variants: tuple[str, ...] = ("ga",)
    seeds: int = 5
    seed: int = 0
    dataset_args: dict = field(default_factory=dict)
    ga: ga_slt.GAConfig = field(default_factory=ga_slt.GAConfig)
    backprop: bool = False
    edge_popup: tuple[dict, ...] = ()
    progress_every: int = 10
    class_counts: tuple[int, ...] = ()

    def resolved(self) -> dict:
        d = dataclasses.asdict(self)
        d["ga"] = dataclasses.asdict(self.ga)
        d["variants"] = list(self.variants)
        d["edge_popup"] = [dict(e) for e in self.edge_popup]
        d["class_counts"] = list(self.class_counts)
        return d

    def settings(self):
        """(class count or None, dataset kwargs, {label: sizes}) for every class-count setting."""
        if not self.class_counts:
            return [(None, dict(self.dataset_args), self.archs)]
        arg = CLASS_COUNT_ARG[self.dataset]
        return [
            (
                k,
                {**self.dataset_args, arg: k},
                {f"{a}@{k}": [k if s == "k" else s for s in v] for a, v in self.archs.items()},
            )
            for k in self.class_counts
        ]


def parse_config(data: dict, seeds: int | None = None) -> SLTExperiment:
    """Validate a config mapping (every error names its field) without compiling anything."""
    check_keys(data, TOP_KEYS, "slt")
    require_fields(data, ("name", "dataset", "archs"), "slt")
    check_dataset(data["dataset"])
    archs = data["archs"]
    if not isinstance(archs, dict) or not archs:
        raise ValueError("field 'archs' must map labels to MLP sizes, e.g. {A: [2, 20, 2]}")
    counts = tuple(int(k) for k in (data.get("class_counts") or ()))
    if counts and data["dataset"] not in CLASS_COUNT_ARG:
        raise ValueError(
            f"class_counts works for datasets {', '.join(CLASS_COUNT_ARG)}, not {data['dataset']!r}"
        )
    if any(k < 2 for k in counts):
        raise ValueError(f"class_counts must all be ≥ 2, got {list(counts)}")
    for label, sizes in archs.items():
        if not isinstance(sizes, (list, tuple)) or len(sizes) < 3:
            raise ValueError(f"archs.{label} must be a list of ≥ 3 layer sizes, got {sizes!r}")
        if "k" in sizes and not counts:
            raise ValueError(f"archs.{label} uses 'k' (the class count) but 'class_counts' is not set")
        networks.MLP(tuple(2 if s == "k" else int(s) for s in sizes)).validate()
    variants = data.get("variants", ["ga"])
    if isinstance(variants, str):
        variants = [variants]
    for v in variants:
        if v not in ga_slt.VARIANTS:
            raise ValueError(
                f"unknown variant {v!r} in field 'variants'; allowed: {', '.join(ga_slt.VARIANTS)}"
            )
    ga = from_dict(ga_slt.GAConfig, data.get("ga"), "ga")
    edge = tuple(data.get("edge_popup") or ())
    for i, e in enumerate(edge):
        check_keys(e, EDGE_POPUP_KEYS, f"edge_popup[{i}]")
        kf = e.get("kept_fraction", 0.5)
        if kf not in MATCHED and not (isinstance(kf, (int, float)) and 0 < kf <= 1):
            raise ValueError(
                f"edge_popup[{i}].kept_fraction must be in (0, 1], 'matched' or 'matched_best', got {kf!r}"
            )
        if kf in MATCHED and not variants:
            raise ValueError(
                f"edge_popup[{i}].kept_fraction {kf!r} needs at least one GA variant in 'variants'"
            )
    n_seeds = int(seeds if seeds is not None else data.get("seeds", 5))
    if n_seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {n_seeds}")
    every = int(data.get("progress_every", 10))
    if every < 1:
        raise ValueError(f"progress_every must be ≥ 1, got {every}")
    return SLTExperiment(
        name=str(data["name"]),
        dataset=data["dataset"],
        dataset_args=dict(data.get("dataset_args") or {}),
        archs={str(k): [s if s == "k" else int(s) for s in v] for k, v in archs.items()},
        variants=tuple(variants),
        seeds=n_seeds,
        seed=int(data.get("seed", 0)),
        ga=ga,
        backprop=bool(data.get("backprop", False)),
        edge_popup=edge,
        progress_every=every,
        class_counts=counts,
    )


def load_config(path: str | Path | None, seeds: int | None = None) -> SLTExperiment:
    return parse_config(DEFAULT_CONFIG if path is None else load_yaml(path), seeds)


def seed_keys(base_seed: int, n: int) -> jax.Array:
    base = jax.random.key(base_seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(n))


# ----------------------------------------------------------------------------------------------
# jobs


def _seed_map(fn):
    """``fn(key, state, hist, until)`` over the leading seed axis.

    On a CPU the seeds run one after another inside one program (``lax.map``): under ``vmap`` every
    while-loop would run until the slowest seed and the per-seed GEMMs would be batched, which measured
    1.7× slower for 25 moons-A seeds (benchmarks/ga_generation.py). Accelerators use ``vmap``.
    """
    if jax.default_backend() != "cpu":
        return jax.vmap(fn, in_axes=(0, 0, 0, None))
    return lambda k, s, h, u: jax.lax.map(lambda a: fn(a[0], a[1], a[2], u), (k, s, h))


def checkpoint_path(rundir: RunDir, job: str, seeds: range | None = None) -> Path:
    """Where a running GA job keeps its latest state: ``checkpoints/<arch>_<variant>.npz``, or
    ``…_s<first>-<last>.npz`` for a chunk of its seeds."""
    tag = "" if seeds is None else f"_s{seeds.start}-{seeds.stop - 1}"
    return rundir.path / "checkpoints" / (job.replace("/", "_") + tag + ".npz")


def seed_chunks(todo: Sequence[int], chunk: int | None) -> list[range]:
    """Consecutive runs of the seeds in ``todo``, at most ``chunk`` long (``None``: as long as they go)."""
    out: list[range] = []
    for s in sorted(todo):
        last = out[-1] if out else None
        if last is not None and s == last.stop and (chunk is None or len(last) < chunk):
            out[-1] = range(last.start, s + 1)
        else:
            out.append(range(s, s + 1))
    return out


def _drop_checkpoints(rundir: RunDir, job: str) -> None:
    """Remove every checkpoint of ``job`` (whole-job and per-chunk ones)."""
    stem = job.replace("/", "_")
    for p in (rundir.path / "checkpoints").glob(f"{glob.escape(stem)}*.npz"):
        if p.stem == stem or p.stem[len(stem) : len(stem) + 2] == "_s":
            p.unlink(missing_ok=True)


def _ga_job(
    exp: SLTExperiment, label, sizes, variant, data, console, progress, rundir, checkpoint_seconds, seeds
):
    """Seeds ``seeds`` of one GA job. Every ``checkpoint_seconds`` (at a progress step) the
    seeds' states and histories go to :func:`checkpoint_path`; a job that finds its checkpoint continues
    from it. Since chunks of ``ga_slt.advance`` reproduce one whole run exactly, a resumed job gives the
    same numbers as an uninterrupted one (only its ``seconds`` include the time before the interruption),
    and since seed s always gets the key ``fold_in(key(seed), s)``, so does a job run in seed chunks."""
    module = networks.make_network("mlp", sizes=sizes, weight_init="uniform")
    cfg = exp.ga.replace(variant=variant)
    task = ga_slt.make_task(
        module, data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, config=cfg
    )
    keys = seed_keys(exp.seed, exp.seeds)[seeds.start : seeds.stop]
    n = len(seeds)
    split = jax.vmap(ga_slt.split_run_key)(keys)
    k_init, k_run = split
    t0 = time.time()
    init = jax.jit(jax.vmap(lambda k: ga_slt.init(k, task, cfg)))
    state = init(k_init)
    hist = jax.vmap(lambda s: ga_slt.empty_history(task, cfg, s))(state)
    advance = jax.jit(_seed_map(lambda k, s, h, u: ga_slt.advance(k, s, h, task, cfg, u)))
    part = "" if n == exp.seeds else f" seeds {seeds.start}–{seeds.stop - 1}"
    job = progress.add_task(f"{label} {variant}{part}", total=cfg.cap)
    until = 0
    ckpt = checkpoint_path(rundir, f"{label}/{variant}", None if not part else seeds)
    if ckpt.exists():
        (state, hist), meta = load_tree(ckpt, (state, hist))
        until = int(meta["until"])
        t0 = time.time() - float(meta["seconds"])
        console.print(f"  {escape(label)}/{variant}: resuming at generation {until} from {ckpt}")
    saved_at = time.time()
    while True:
        until += exp.progress_every
        state, hist = advance(k_run, state, hist, until)
        gens = np.asarray(state.generation)
        stopped = np.asarray(ga_slt.should_stop(state.generation, state.last_change, cfg))
        best = np.asarray(state.acc[:, 0])
        line = (
            f"{label} {variant}{part}: gen {int(gens.max())}, {int(stopped.sum())}/{n} done, "
            f"best train acc {best.mean():.3f}"
        )
        progress.update(job, completed=int(gens.max()), description=line)
        if not console.is_terminal and (until % (5 * exp.progress_every) == 0 or stopped.all()):
            console.print(f"  {line} ({time.time() - t0:.0f} s)")  # logs get lines, terminals a bar
        if stopped.all():
            break
        if time.time() - saved_at >= checkpoint_seconds:
            save_tree(
                ckpt,
                (state, hist),
                {
                    "job": f"{label}/{variant}",
                    "seeds": [seeds.start, seeds.stop],
                    "until": until,
                    "seconds": time.time() - t0,
                },
            )
            saved_at = time.time()
    final = jax.vmap(lambda s: ga_slt.evaluate_final(s, task, cfg))(state)
    seconds = time.time() - t0
    progress.update(job, completed=cfg.cap)
    final = {k: np.asarray(v) for k, v in final.items()}
    results = [
        {
            "job": f"{label}/{variant}",
            "arch": label,
            "method": variant,
            "seed": seed,
            **{k: final[k][i].item() for k in final},
            "seconds": seconds / n,
        }
        for i, seed in enumerate(seeds)
    ]
    hist = {k: np.array(v) for k, v in hist.items()}
    for v in hist.values():
        if np.issubdtype(v.dtype, np.floating):
            for i in range(n):
                v[i, int(gens[i]) :] = np.nan
    metrics = [
        {"job": f"{label}/{variant}", "seed": seed, **{k: hist[k][i, g].item() for k in hist}}
        for i, seed in enumerate(seeds)
        for g in range(int(gens[i]))
    ]
    return results, metrics


def _backprop_job(exp: SLTExperiment, label, sizes, data):
    from es_lottery.gradient import backprop

    cfg = backprop.PAPER_SETTINGS.get((exp.dataset, label), backprop.BackpropConfig())
    keys = seed_keys(exp.seed + 10_000, exp.seeds)
    t0 = time.time()
    res = backprop.train_seeds(keys, tuple(sizes), data.x_train, data.y_train, cfg)
    acc = np.asarray(backprop.evaluate(res, data.x_test, data.y_test))
    train = np.asarray(res.train_accuracy)
    seconds = (time.time() - t0) / exp.seeds
    return [
        {
            "job": f"{label}/backprop",
            "arch": label,
            "method": "backprop",
            "seed": s,
            "test_acc": float(acc[s]),
            "train_acc": float(train[s]),
            "sparsity": 0.0,
            "seconds": seconds,
        }
        for s in range(exp.seeds)
    ]


def _edge_popup_name(spec: dict) -> str:
    scaled = ",scaled" if spec.get("scale_init") else ""
    return f"edge_popup[{spec.get('weight_init', 'uniform')}{scaled},k={spec.get('kept_fraction', 0.5)}]"


def matched_kept_fraction(rule: str, rows: list[dict], ga_jobs: Sequence[str]) -> float:
    """Edge-popup's kept fraction matched to the GA's per-seed ``rows`` (those of ``ga_jobs``) on one arch.

    ``"matched"``: one minus the mean sparsity over the rows of every GA variant; ``"matched_best"``: one
    minus the mean sparsity of the variant with the highest mean test accuracy (the first in ``ga_jobs``
    on a tie) — Altmann et al.'s Fig. 6, which takes whichever GA configuration is more accurate.
    """
    by_job = {j: [r for r in rows if r["job"] == j] for j in ga_jobs}
    by_job = {j: rs for j, rs in by_job.items() if rs}
    if not by_job:
        raise ValueError(f"kept_fraction {rule!r} needs GA results of {', '.join(ga_jobs)}; none found")
    if rule == "matched":
        pick = [r for rs in by_job.values() for r in rs]
    elif rule == "matched_best":
        accs = {j: float(np.mean([r["test_acc"] for r in rs])) for j, rs in by_job.items()}
        pick = by_job[max(accs, key=lambda j: (accs[j], -list(by_job).index(j)))]
    else:
        raise ValueError(f"kept_fraction rule must be one of {MATCHED}, got {rule!r}")
    return 1.0 - float(np.mean([r["sparsity"] for r in pick]))


def _edge_popup_job(exp: SLTExperiment, label, sizes, data, spec: dict, matched: float | None):
    from es_lottery.gradient import edge_popup

    kf = spec.get("kept_fraction", 0.5)
    kept = matched if kf in MATCHED else float(kf)
    kept = float(min(1.0, max(kept, 1e-3)))
    cfg_kw = {k: v for k, v in spec.items() if k in ("weight_init", "epochs", "scale_init", "batch_size")}
    cfg = edge_popup.EdgePopupConfig(kept_fraction=kept, **cfg_kw)
    name = _edge_popup_name(spec)
    keys = seed_keys(exp.seed + 20_000, exp.seeds)
    t0 = time.time()
    res = edge_popup.train_seeds(keys, tuple(sizes), data.x_train, data.y_train, cfg)
    acc = np.asarray(edge_popup.evaluate(res, data.x_test, data.y_test))
    seconds = (time.time() - t0) / exp.seeds
    return [
        {
            "job": f"{label}/{name}",
            "arch": label,
            "method": name,
            "seed": s,
            "test_acc": float(acc[s]),
            "sparsity": 1.0 - kept,
            "seconds": seconds,
        }
        for s in range(exp.seeds)
    ]


# ----------------------------------------------------------------------------------------------
# the experiment


def summarise(results: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["job"], []).append(r)
    out = {}
    for job, rows in by.items():
        acc = np.asarray([r["test_acc"] for r in rows], float)
        entry = {
            "arch": rows[0]["arch"],
            "method": rows[0]["method"],
            "seeds": len(rows),
            "test_acc_mean": float(np.mean(acc)),
            "test_acc_median": float(np.median(acc)),
            "test_acc_std": float(np.std(acc)),
            "sparsity_mean": float(np.mean([r.get("sparsity", 0.0) for r in rows])),
            "seconds_per_seed": float(np.mean([r.get("seconds", 0.0) for r in rows])),
        }
        if "best_test_acc" in rows[0]:
            entry["best_test_acc_mean"] = float(np.mean([r["best_test_acc"] for r in rows]))
            entry["best_test_sparsity_mean"] = float(np.mean([r["best_test_sparsity"] for r in rows]))
            entry["generations_mean"] = float(np.mean([r["generations"] for r in rows]))
            entry["at_chance"] = int(sum(bool(r["at_chance"]) for r in rows))
            entry["capped"] = int(sum(bool(r["capped"]) for r in rows))
        out[job] = entry
    return out


def job_selector(only: Sequence[str] | None) -> Callable[[str], bool]:
    """Predicate over job names (``"B/ga"``, ``"B@5/backprop"``, ``"A/edge_popup[uniform,k=0.5]"``):
    True when ``only`` is empty or an entry equals the name or matches it as a glob (``"D/*"``,
    ``"*/adaptive_ab"``; the brackets of edge-popup names are glob syntax, so those match by equality)."""
    patterns = [str(p) for p in (only or ())]
    for p in patterns:
        if not p.strip():
            raise ValueError("--only patterns must not be empty")
    return lambda job: not patterns or any(job == p or fnmatch.fnmatchcase(job, p) for p in patterns)


def run_experiment(
    exp: SLTExperiment,
    out: str | Path = "runs",
    console: Console | None = None,
    only: Sequence[str] | None = None,
    checkpoint_seconds: float = 60.0,
    seed_chunk: int | None = None,
) -> Path:
    """Run every job of ``exp`` (skipping finished ones) and write the run directory; returns its path.

    ``only``: glob patterns over job names; jobs that match none are left for a later call into the same
    run directory (the split does not change the results: every job draws its keys from the config alone).
    ``checkpoint_seconds``: how often a running GA job saves its state (an interrupted job resumes from it).
    ``seed_chunk``: run a GA job's seeds in chunks of this many and append each chunk's results as soon as
    it finishes (a long job then leaves finished seeds behind; a later call runs only the missing seeds).
    The numbers do not depend on it; ``None`` runs all seeds of a job at once.
    """
    checkpoint_seconds = check_number(checkpoint_seconds, "checkpoint_seconds", 0.0)
    if seed_chunk is not None:
        seed_chunk = int(check_number(seed_chunk, "seed_chunk", 1.0))
    console = console or Console()
    selected = job_selector(only)
    rundir = RunDir(out, exp.name, exp.resolved())
    console.print(f"[bold]slt[/] {exp.name}: {exp.dataset}, {exp.seeds} seeds → {rundir.path}")
    seeds_done: dict[str, set[int]] = {}
    for r in rundir.read("results.jsonl"):
        seeds_done.setdefault(r["job"], set()).add(int(r["seed"]))
    done = {j for j, got in seeds_done.items() if got >= set(range(exp.seeds))}
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for classes, data_args, archs in exp.settings():
            data = classification.load_dataset(exp.dataset, **data_args)
            extra = {} if classes is None else {"classes": classes}
            for label, sizes in archs.items():
                if sizes[0] != data.x_train.shape[1] or sizes[-1] < data.num_classes:
                    raise ValueError(
                        f"archs.{label} = {sizes} does not fit dataset {exp.dataset!r} "
                        f"({data.x_train.shape[1]} inputs, {data.num_classes} classes)"
                    )
            for label, sizes in archs.items():
                for variant in exp.variants:
                    job = f"{label}/{variant}"
                    if job in done:
                        console.print(f"  {escape(job)}: finished earlier, skipped")
                        _drop_checkpoints(rundir, job)  # left by a kill after the append
                        continue
                    if not selected(job):
                        continue
                    todo = sorted(set(range(exp.seeds)) - seeds_done.get(job, set()))
                    if len(todo) < exp.seeds:
                        console.print(f"  {escape(job)}: {exp.seeds - len(todo)} seeds finished earlier")
                    chunks = seed_chunks(todo, seed_chunk)
                    for chunk in chunks:
                        results, metrics = _ga_job(
                            exp,
                            label,
                            sizes,
                            variant,
                            data,
                            console,
                            progress,
                            rundir,
                            checkpoint_seconds,
                            chunk,
                        )
                        rundir.append("metrics.jsonl", metrics)
                        rundir.append("results.jsonl", [{**r, **extra} for r in results])
                    _drop_checkpoints(rundir, job)
                if exp.backprop and f"{label}/backprop" not in done and selected(f"{label}/backprop"):
                    console.print(f"  {label}: backprop baseline …")
                    rows = _backprop_job(exp, label, sizes, data)
                    rundir.append("results.jsonl", [{**r, **extra} for r in rows])
                ga_jobs = [f"{label}/{v}" for v in exp.variants]
                for spec in exp.edge_popup:
                    so_far = rundir.read("results.jsonl")
                    name = _edge_popup_name(spec)
                    if name in {r["method"] for r in so_far if r["arch"] == label}:
                        continue
                    if not selected(f"{label}/{name}"):
                        continue
                    # "matched"/"matched_best": the kept fraction comes from the GA's rows on this arch
                    prior = [r for r in so_far if r["job"] in ga_jobs]
                    missing = [
                        j
                        for j in ga_jobs
                        if {r["seed"] for r in prior if r["job"] == j} < set(range(exp.seeds))
                    ]
                    rule = spec.get("kept_fraction")
                    if rule in MATCHED and missing:
                        console.print(
                            f"  {escape(label)}/{escape(name)}: needs the GA results of "
                            f"{escape(', '.join(missing))} first "
                            "(its kept fraction comes from their sparsity), skipped"
                        )
                        continue
                    matched = matched_kept_fraction(rule, prior, ga_jobs) if rule in MATCHED else None
                    rows = _edge_popup_job(exp, label, sizes, data, spec, matched)
                    console.print(
                        f"  {escape(rows[0]['job'])}: test acc {np.mean([r['test_acc'] for r in rows]):.3f}"
                    )
                    rundir.append("results.jsonl", [{**r, **extra} for r in rows])
    results = rundir.read("results.jsonl")
    summary = summarise(results)
    rundir.write_json("summary.json", {"experiment": exp.resolved(), "jobs": summary})
    hists = histories_from_metrics(rundir.read("metrics.jsonl"))  # every GA job, this call's and earlier
    write_plots(rundir.path / "plots", exp.name, results, hists, by_classes=bool(exp.class_counts))
    console.print(summary_table(summary, title=f"{exp.name} ({exp.dataset})"))
    return rundir.path


def histories_from_metrics(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Per-job (seeds × generations) curves from ``metrics.jsonl`` rows (NaN after a seed stopped)."""
    hists = {}
    for job in sorted({r["job"] for r in rows}):
        jr = [r for r in rows if r["job"] == job]
        seeds = sorted({r["seed"] for r in jr})
        length = max(r["generation"] for r in jr)
        h = {
            k: np.full((len(seeds), length), np.nan)
            for k in ("best_acc", "sparsity_fittest", "best_sparsity", "best_ever_sparsity")
        }
        for r in jr:
            for k in h:
                h[k][seeds.index(r["seed"]), r["generation"] - 1] = np.nan if r[k] is None else r[k]
        hists[job] = h
    return hists


def write_plots(
    plot_dir: Path, name: str, results: list[dict], hists: dict, by_classes: bool = False
) -> list[Path]:
    """Fig. 4 curves per GA job, Fig. 3-style boxes (backprop mean dashed), accuracy vs sparsity, and
    (``by_classes``) accuracy vs the number of classes."""
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    out = [
        plots.ga_curves(h, plot_dir / f"curves_{job.replace('/', '_')}.png", f"{name}: {job}")
        for job, h in hists.items()
    ]
    ref = {}
    for r in results:
        if r["method"] == "backprop":
            ref.setdefault(r["arch"], []).append(r["test_acc"])
    ref = {a: float(np.mean(v)) for a, v in ref.items()}
    xlabel = "architecture@number of classes" if by_classes else "architecture"
    box = plots.box_by_arch(results, plot_dir / "box_test_acc.png", f"{name}: test accuracy", ref, xlabel)
    out.append(box)
    out.append(plots.accuracy_vs_sparsity(results, plot_dir / "acc_vs_sparsity.png", name))
    if by_classes:
        out.append(plots.curve_by_classes(results, plot_dir / "acc_vs_classes.png", f"{name}: test accuracy"))
    return out


def summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("job", "seeds", "test mean", "median", "std", "sparsity", "pop-best", "gens", "s/seed"):
        table.add_column(col, justify="right" if col != "job" else "left")
    for job, e in summary.items():
        table.add_row(
            escape(job),
            str(e["seeds"]),
            f"{e['test_acc_mean']:.4f}",
            f"{e['test_acc_median']:.4f}",
            f"{e['test_acc_std']:.4f}",
            f"{e['sparsity_mean']:.3f}",
            f"{e['best_test_acc_mean']:.4f}" if "best_test_acc_mean" in e else "–",
            f"{e['generations_mean']:.0f}" if "generations_mean" in e else "–",
            f"{e['seconds_per_seed']:.1f}",
        )
    return table
