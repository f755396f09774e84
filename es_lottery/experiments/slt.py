"""Strong-lottery-ticket experiments (Altmann et al. 2024): a YAML config → jobs in the run store.

Config (``configs/slt/*.yaml``; every field in ``docs/configs.md``)::

    name: moons_ga
    dataset: moons            # any of tasks.classification.DATASETS
    dataset_args: {}          # passed to load_dataset (e.g. {classes: [0, 1, 2]} for digits)
    networks:                 # label → network (MLP sizes, input and output included; 'k' = class count)
      A: {sizes: [2, 20, 2]}
    class_counts: []          # optional sweep: digits classes 0..k-1 / blobs with k centres
    variants: [ga, adaptive_ab]
    seeds: 25
    seed: 0                   # seed s: key fold_in(key(seed), s), the same frozen weights for every variant
    ga: {}                    # GAConfig fields (population_size, rates, fitness, …)
    backprop: true            # the tuned MLPClassifier-style baseline (paper settings for moons/circles)
    edge_popup: []            # list of {weight_init, kept_fraction (number, matched or matched_best), …}

Jobs and the store. For every class-count setting and network, a TRUNK (``store/slt/<dataset>-<key>``,
keyed by the data, the network and the base seed) holds one BRANCH per method: each GA variant (keyed by
the GA fields that differ from their defaults), ``backprop`` (keyed by its resolved settings) and each
edge-popup entry (keyed by its fields; a matched kept fraction also by the GA branches it is matched to and
their number of seeds). Seeds are ``seed_<s>/`` directories of a branch (``result.json``, GA:
``metrics.jsonl`` per generation). Adding a variant, a baseline or seeds to a config runs only what is
new; the config's name, its seed count and ``progress_every`` are no part of any key.

Each (network, method) is a job; a GA job's missing seeds run at once (``lax.map`` on CPUs, ``vmap``
elsewhere), or ``seed_chunk`` of them at a time, each chunk recorded as it finishes (with ``ga.bound_carry``
adaptive AB runs one seed at a time, in order: seed s starts from the bound recorded by seed s − 1, as the
original's process-wide bound did); an interrupted chunk
resumes from its checkpoint (``<branch>/checkpoints/seeds_<a>-<b>.npz``, written every
``checkpoint_seconds``). Seed s always gets ``fold_in(key(seed), s)``, so neither the chunking nor an
interruption changes a number. After the run the view ``<out>/<name>/`` is rebuilt (``common.View``): rows
in config order, ``job`` = ``<label>/<method>`` (``A/ga``, ``B@5/backprop``,
``D/edge_popup[uniform,k=0.5]``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from es_lottery import plots
from es_lottery._checks import check_number
from es_lottery.experiments import config as config_lib
from es_lottery.experiments import locks
from es_lottery.experiments.common import (
    DatasetName,
    InitName,
    NetworkConfig,
    View,
    check_name,
    group_by,
    loaders,
    rebuild_view,
)
from es_lottery.experiments.generations import advance_until_stopped, history_rows
from es_lottery.experiments.store import Job
from es_lottery.gradient import edge_popup as edge_popup_lib
from es_lottery.keys import seed_keys, split_run_key
from es_lottery.search import ga_slt
from es_lottery.tasks import classification

CLASS_COUNT_ARG = {"digits": "classes", "blobs": "k"}
MATCHED = ("matched", "matched_best")  # kept fractions taken from the GA's results on the same network
BACKPROP_SEED_OFFSET = 10_000  # backprop seed s: fold_in(key(seed + 10 000), s)
EDGE_POPUP_SEED_OFFSET = 20_000  # edge-popup seed s: fold_in(key(seed + 20 000), s)
GA_INIT = "uniform"  # the GA's frozen weights: U[-1, 1] weights and biases (the paper's)

DEFAULT_CONFIG = {
    "name": "quickstart_moons_B",
    "dataset": "moons",
    "networks": {"B": {"sizes": [2, 75, 2]}},
    "variants": ["ga"],
    "seeds": 8,
    "backprop": False,
}

__all__ = [
    "DEFAULT_CONFIG",
    "EdgePopupJob",
    "SLTConfig",
    "collect",
    "histories_from_metrics",
    "job_selector",
    "load_config",
    "matched_kept_fraction",
    "parse_config",
    "run_experiment",
    "seed_chunks",
    "summarise",
    "summary_table",
    "write_plots",
]

Variant = Literal[ga_slt.VARIANTS]


@dataclass(frozen=True)
class EdgePopupJob:
    """One edge-popup baseline (``gradient.edge_popup``) on every network of the config."""

    weight_init: InitName = field(default="uniform", metadata={"doc": "initialisation of the frozen weights"})
    kept_fraction: float | Literal["matched", "matched_best"] = field(
        default=0.5,
        metadata={
            "doc": "k in (0, 1]; matched: 1 − the mean sparsity over the config's GA variants on that "
            "network; "
            "matched_best: that of the variant with the higher mean test accuracy (the paper's Fig. 6)"
        },
    )
    epochs: int = field(default=edge_popup_lib.EdgePopupConfig.epochs, metadata={"doc": "training epochs"})
    batch_size: int = field(
        default=edge_popup_lib.EdgePopupConfig.batch_size, metadata={"doc": "minibatch size"}
    )
    scale_init: bool = field(default=False, metadata={"doc": "the 'scaled' Kaiming variants (fan_in · k)"})

    def __post_init__(self):
        if self.kept_fraction not in MATCHED and not 0 < self.kept_fraction <= 1:
            raise ValueError(
                f"kept_fraction must be in (0, 1], matched or matched_best, got {self.kept_fraction!r}"
            )

    @property
    def method(self) -> str:
        """The method's name in result rows: ``edge_popup[uniform,k=0.5]`` (``,scaled``; non-default
        epochs and batch size appended as ``,epochs=…``, ``,batch=…``)."""
        parts = [self.weight_init + (",scaled" if self.scale_init else ""), f"k={self.kept_fraction}"]
        if self.epochs != edge_popup_lib.EdgePopupConfig.epochs:
            parts.append(f"epochs={self.epochs}")
        if self.batch_size != edge_popup_lib.EdgePopupConfig.batch_size:
            parts.append(f"batch={self.batch_size}")
        return f"edge_popup[{','.join(parts)}]"

    def config(self, kept: float) -> edge_popup_lib.EdgePopupConfig:
        return edge_popup_lib.EdgePopupConfig(
            kept_fraction=kept,
            epochs=self.epochs,
            batch_size=self.batch_size,
            weight_init=self.weight_init,
            scale_init=self.scale_init,
        )


@dataclass(frozen=True)
class SLTConfig:
    """A strong-ticket experiment (see the module doc)."""

    name: str = field(
        metadata={"doc": "the experiment's view: <out>/<name>/", "check": check_name, "hashed": False}
    )
    dataset: DatasetName = field(metadata={"doc": "tasks.classification dataset"})
    networks: dict[str, NetworkConfig] = field(
        metadata={"doc": "label → network (GA: MLPs; weight_init null = uniform, the paper's U[-1, 1])"}
    )
    dataset_args: dict[str, Any] = field(
        default_factory=dict, metadata={"doc": "arguments of the dataset loader"}
    )
    class_counts: tuple[int, ...] = field(
        default=(), metadata={"doc": "sweep over class counts (digits: classes 0..k-1, blobs: k centres)"}
    )
    variants: tuple[Variant, ...] = field(default=("ga",), metadata={"doc": "GA variants to run"})
    seeds: int = field(default=5, metadata={"doc": "seeds 0..seeds-1 of every job", "hashed": False})
    seed: int = field(default=0, metadata={"doc": "base seed: seed s uses fold_in(key(seed), s)"})
    ga: ga_slt.GAConfig = field(default_factory=ga_slt.GAConfig, metadata={"doc": "GA settings"})
    backprop: bool = field(default=False, metadata={"doc": "the tuned backprop baseline"})
    edge_popup: tuple[EdgePopupJob, ...] = field(default=(), metadata={"doc": "edge-popup baselines"})
    progress_every: int = field(
        default=10, metadata={"doc": "generations between progress updates", "hashed": False}
    )

    def __post_init__(self):
        if not self.networks:
            raise ValueError(
                "networks must map at least one label to a network, e.g. {A: {sizes: [2, 20, 2]}}"
            )
        if self.class_counts and self.dataset not in CLASS_COUNT_ARG:
            raise ValueError(
                f"class_counts works for datasets {', '.join(CLASS_COUNT_ARG)}, not {self.dataset!r}"
            )
        if any(k < 2 for k in self.class_counts):
            raise ValueError(f"class_counts must all be ≥ 2, got {list(self.class_counts)}")
        for label, net in self.networks.items():
            if net.name != "mlp":
                raise ValueError(
                    f"networks.{label}: the strong-ticket GA evolves MLPs, got name {net.name!r}"
                )
            if "k" in net.sizes and not self.class_counts:
                raise ValueError(f"networks.{label} uses 'k' (the class count) but class_counts is not set")
            try:
                net.with_classes(2).module(GA_INIT)
            except (ValueError, TypeError) as err:
                raise ValueError(f"networks.{label}: {err}") from None
        for i, e in enumerate(self.edge_popup):
            if e.kept_fraction in MATCHED and not self.variants:
                raise ValueError(
                    f"edge_popup[{i}].kept_fraction {e.kept_fraction!r} needs a GA variant in variants"
                )
        if self.seeds < 1:
            raise ValueError(f"seeds must be ≥ 1, got {self.seeds}")
        if self.progress_every < 1:
            raise ValueError(f"progress_every must be ≥ 1, got {self.progress_every}")

    def replace(self, **kw) -> SLTConfig:
        return dataclasses.replace(self, **kw)

    def settings(self) -> list[tuple[int | None, dict, dict[str, NetworkConfig]]]:
        """(class count or None, dataset kwargs, {label: network}) for every class-count setting; labels
        of a sweep are ``<label>@<k>``."""
        if not self.class_counts:
            return [(None, dict(self.dataset_args), dict(self.networks))]
        arg = CLASS_COUNT_ARG[self.dataset]
        return [
            (
                k,
                {**self.dataset_args, arg: k},
                {f"{a}@{k}": net.with_classes(k) for a, net in self.networks.items()},
            )
            for k in self.class_counts
        ]


parse_config, load_config = loaders(SLTConfig, "slt", DEFAULT_CONFIG)


# ----------------------------------------------------------------------------------------------
# jobs in the store


@dataclass(frozen=True)
class _Job:
    name: str  # "<label>/<method>"
    label: str
    method: str
    kind: str  # ga | backprop | edge_popup
    branch: Job
    sizes: tuple[int, ...]
    network: NetworkConfig
    classes: int | None
    spec: Any  # GAConfig | BackpropConfig | EdgePopupJob


def _trunk(exp: SLTConfig, out, data_args: dict, network: NetworkConfig) -> Job:
    fields = {"dataset": exp.dataset, "network": config_lib.nondefault(network.resolved(GA_INIT))}
    if data_args:
        fields["dataset_args"] = data_args
    if exp.seed:
        fields["seed"] = exp.seed
    return Job.open(out, "slt", exp.dataset, fields)


def _backprop_config(exp: SLTConfig, label: str):
    from es_lottery.gradient import backprop

    return backprop.PAPER_SETTINGS.get((exp.dataset, label.split("@")[0]), backprop.BackpropConfig())


def plan(exp: SLTConfig, out: str | Path) -> list[_Job]:
    """Every job of ``exp`` in config order (setting, network: GA variants, backprop, edge-popup), each
    with its branch in the store."""
    jobs = []
    for classes, data_args, nets in exp.settings():
        for label, net in nets.items():
            trunk = _trunk(exp, out, data_args, net)
            sizes = tuple(int(s) for s in net.sizes)
            ga_branches = []
            for variant in exp.variants:
                cfg = exp.ga.for_variant(variant)  # fields the variant does not read: defaults
                fields = config_lib.nondefault(cfg)
                fields.pop("variant", None)
                branch = trunk.branch(variant, fields)
                ga_branches.append(branch)
                jobs.append(
                    _Job(f"{label}/{variant}", label, variant, "ga", branch, sizes, net, classes, cfg)
                )
            if exp.backprop:
                cfg = _backprop_config(exp, label)
                branch = trunk.branch("backprop", config_lib.nondefault(cfg))
                jobs.append(
                    _Job(f"{label}/backprop", label, "backprop", "backprop", branch, sizes, net, classes, cfg)
                )
            for spec in exp.edge_popup:
                fields = config_lib.nondefault(spec)
                if spec.kept_fraction in MATCHED:
                    fields["matched_to"] = [b.relpath for b in ga_branches]
                    fields["matched_over_seeds"] = exp.seeds
                branch = trunk.branch("edge_popup", fields)
                jobs.append(
                    _Job(
                        f"{label}/{spec.method}",
                        label,
                        spec.method,
                        "edge_popup",
                        branch,
                        sizes,
                        net,
                        classes,
                        spec,
                    )
                )
    return jobs


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


def _seed_map(fn):
    """``fn(key, state, hist, until)`` over the leading seed axis.

    On a CPU the seeds run one after another inside one program (``lax.map``): under ``vmap`` every
    while-loop would run until the slowest seed and the per-seed GEMMs would be batched, which measured
    1.7× slower for 25 moons-A seeds (benchmarks/ga_generation.py). Accelerators use ``vmap``.
    """
    if jax.default_backend() != "cpu":
        return jax.vmap(fn, in_axes=(0, 0, 0, None))
    return lambda k, s, h, u: jax.lax.map(lambda a: fn(a[0], a[1], a[2], u), (k, s, h))


def checkpoint_path(job: _Job, seeds: range) -> Path:
    """Where a running chunk of a GA job keeps its latest state."""
    return job.branch.path / "checkpoints" / f"seeds_{seeds.start}-{seeds.stop - 1}.npz"


def _ga_chunk(
    exp: SLTConfig, job: _Job, data, seeds: range, console, progress, checkpoint_seconds, carry=None
) -> None:
    """Seeds ``seeds`` of one GA job, recorded per seed in the job's branch; ``carry``: the adaptive bound
    they start from (``bound_carry``: one seed per chunk)."""
    module = job.network.module(GA_INIT)
    cfg = job.spec
    task = ga_slt.make_task(
        module, data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, config=cfg
    )
    keys = seed_keys(exp.seed, seeds.stop)[seeds.start : seeds.stop]
    n = len(seeds)
    started = time.time()
    k_init, k_run = jax.vmap(split_run_key)(keys)
    state = jax.jit(jax.vmap(lambda k: ga_slt.init(k, task, cfg, carry)))(k_init)
    hist = jax.vmap(lambda s: ga_slt.empty_history(task, cfg, s))(state)
    advance = jax.jit(_seed_map(lambda k, s, h, u: ga_slt.advance(k, s, h, task, cfg, u)))
    part = "" if n == exp.seeds else f" seeds {seeds.start}–{seeds.stop - 1}"
    bar = progress.add_task(f"{job.name}{part}", total=cfg.cap)

    def on_chunk(state, until, stopped, seconds):
        gens = np.asarray(state.generation)
        line = (
            f"{job.name}{part}: gen {int(gens.max())}, {int(stopped.sum())}/{n} done, "
            f"best train acc {np.asarray(state.acc[:, 0]).mean():.3f}"
        )
        progress.update(bar, completed=int(gens.max()), description=escape(line))
        if not console.is_terminal and (until % (5 * exp.progress_every) == 0 or stopped.all()):
            console.print(f"  {escape(line)} ({seconds:.0f} s)")  # logs get lines, terminals a bar

    def on_resume(until, path):
        console.print(f"  {escape(job.name)}{part}: resuming at generation {until} from {path}")

    state, hist, seconds = advance_until_stopped(
        advance,
        lambda s: ga_slt.should_stop(s.generation, s.last_change, cfg),
        k_run,
        state,
        hist,
        every=exp.progress_every,
        on_chunk=on_chunk,
        checkpoint=checkpoint_path(job, seeds),
        checkpoint_seconds=checkpoint_seconds,
        meta={"job": job.branch.ensure().relpath, "seeds": [seeds.start, seeds.stop]},
        on_resume=on_resume,
        started=started,
        on_damaged=lambda path, msg: console.print(
            f"  [yellow]warning:[/] {escape(msg)}; deleted it, {escape(job.name)}{part} restarts from "
            "generation 0"
        ),
    )
    final = jax.vmap(lambda s: ga_slt.evaluate_final(s, task, cfg))(state)
    progress.update(bar, completed=cfg.cap)
    final = {k: np.asarray(v) for k, v in final.items()}
    rows = history_rows(hist, state.generation)
    for i, s in enumerate(seeds):
        result = {"seed": s, **{k: final[k][i].item() for k in final}, "seconds": seconds / n}
        job.branch.finish_seed(s, result, rows[i])
    checkpoint_path(job, seeds).unlink(missing_ok=True)


def _backprop_seeds(exp: SLTConfig, job: _Job, data, seeds: list[int]) -> None:
    from es_lottery.gradient import backprop

    keys = seed_keys(exp.seed + BACKPROP_SEED_OFFSET, max(seeds) + 1)[np.asarray(seeds)]
    t0 = time.time()
    res = backprop.train_seeds(keys, job.sizes, data.x_train, data.y_train, job.spec)
    acc = np.asarray(backprop.evaluate(res, data.x_test, data.y_test))
    train = np.asarray(res.train_accuracy)
    seconds = (time.time() - t0) / len(seeds)
    for i, s in enumerate(seeds):
        job.branch.finish_seed(
            s,
            {
                "seed": s,
                "test_acc": float(acc[i]),
                "train_acc": float(train[i]),
                "sparsity": 0.0,
                "seconds": seconds,
            },
        )


def matched_kept_fraction(rule: str, rows: list[dict], ga_jobs: Sequence[str]) -> float:
    """Edge-popup's kept fraction matched to the GA's per-seed ``rows`` (those of ``ga_jobs``) on one network.

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


def _edge_popup_seeds(exp: SLTConfig, job: _Job, data, seeds: list[int], kept: float) -> None:
    kept = float(min(1.0, max(kept, 1e-3)))
    keys = seed_keys(exp.seed + EDGE_POPUP_SEED_OFFSET, max(seeds) + 1)[np.asarray(seeds)]
    t0 = time.time()
    res = edge_popup_lib.train_seeds(keys, job.sizes, data.x_train, data.y_train, job.spec.config(kept))
    acc = np.asarray(edge_popup_lib.evaluate(res, data.x_test, data.y_test))
    seconds = (time.time() - t0) / len(seeds)
    for i, s in enumerate(seeds):
        job.branch.finish_seed(
            s, {"seed": s, "test_acc": float(acc[i]), "sparsity": 1.0 - kept, "seconds": seconds}
        )


# ----------------------------------------------------------------------------------------------
# the experiment


def job_selector(only: Sequence[str] | None) -> Callable[[str], bool]:
    """Predicate over job names (``"B/ga"``, ``"B@5/backprop"``, ``"A/edge_popup[uniform,k=0.5]"``):
    True when ``only`` is empty or an entry equals the name or matches it as a glob (``"D/*"``,
    ``"*/adaptive_ab"``; the brackets of edge-popup names are glob syntax, so those match by equality)."""
    patterns = [str(p) for p in (only or ())]
    for p in patterns:
        if not p.strip():
            raise ValueError("--only patterns must not be empty")
    return lambda job: not patterns or any(job == p or fnmatch.fnmatchcase(job, p) for p in patterns)


def _rows(job: _Job, results: list[dict]) -> list[dict]:
    extra = {} if job.classes is None else {"classes": job.classes}
    return [{"job": job.name, "arch": job.label, "method": job.method, **r, **extra} for r in results]


def collect(exp: SLTConfig, out: str | Path) -> tuple[list[dict], list[dict], dict[str, str]]:
    """(results rows, per-generation metrics rows, {job: store directory}) of every finished seed of
    ``exp``'s jobs in ``out``'s store, in config order."""
    results, metrics, where = [], [], {}
    seeds = range(exp.seeds)
    for job in plan(exp, out):
        where[job.name] = job.branch.relpath
        results += _rows(job, job.branch.results(seeds))
        if job.kind == "ga":
            for s in sorted(job.branch.done_seeds(seeds)):
                metrics += [{"job": job.name, "seed": s, **m} for m in job.branch.metrics(s)]
    return results, metrics, where


def run_experiment(
    exp: SLTConfig,
    out: str | Path = "runs",
    console: Console | None = None,
    only: Sequence[str] | None = None,
    checkpoint_seconds: float = 60.0,
    seed_chunk: int | None = None,
) -> Path:
    """Run every missing seed of every job of ``exp`` into the store under ``out``, rebuild the view
    ``<out>/<name>/`` and return its path.

    ``only``: glob patterns over job names; jobs that match none are left for a later call (the split does
    not change the results: every job draws its keys from the config alone). ``checkpoint_seconds``: how
    often a running GA chunk saves its state. ``seed_chunk``: run a GA job's seeds this many at a time,
    each chunk recorded when it finishes (``None``: all missing seeds at once); the numbers do not depend
    on it.
    """
    from es_lottery.experiments import legacy_runs

    checkpoint_seconds = check_number(checkpoint_seconds, "checkpoint_seconds", 0.0)
    if seed_chunk is not None:
        seed_chunk = int(check_number(seed_chunk, "seed_chunk", 1.0))
    console = console or Console()
    selected = job_selector(only)
    jobs = plan(exp, out)
    if only and not any(selected(j.name) for j in jobs):
        raise ValueError(
            f"--only {' '.join(only)} matches none of the jobs of {exp.name!r}: "
            f"{', '.join(j.name for j in jobs)}"
        )
    legacy_runs.migrate_matching(out, exp.name, "slt", console)
    console.print(
        f"[bold]slt[/] {escape(exp.name)}: {exp.dataset}, {exp.seeds} seeds → {Path(out) / exp.name}"
    )
    seeds = list(range(exp.seeds))
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for classes, data_args, nets in exp.settings():
            todo = [j for j in jobs if j.classes == classes and j.label in nets]
            if not any(selected(j.name) and len(j.branch.done_seeds(seeds)) < len(seeds) for j in todo):
                for j in todo:
                    _skip_line(console, j, seeds)
                continue
            data = classification.load_dataset(exp.dataset, **data_args)
            for label, net in nets.items():
                sizes = net.sizes
                if sizes[0] != data.x_train.shape[1] or sizes[-1] < data.num_classes:
                    raise ValueError(
                        f"networks.{label.split('@')[0]} = {list(sizes)} does not fit dataset "
                        f"{exp.dataset!r} "
                        f"({data.x_train.shape[1]} inputs, {data.num_classes} classes)"
                    )
            for job in todo:
                _run_job(
                    exp, job, jobs, data, seeds, selected, console, progress, checkpoint_seconds, seed_chunk
                )
    return write_view(exp, out, console)


def _skip_line(console, job: _Job, seeds: list[int]) -> None:
    done = len(job.branch.done_seeds(seeds))
    if done == len(seeds):
        console.print(f"  {escape(job.name)}: finished earlier, skipped")


def _run_job(exp, job: _Job, jobs, data, seeds, selected, console, progress, checkpoint_seconds, seed_chunk):
    if not selected(job.name) or not set(seeds) - job.branch.done_seeds(seeds):
        return _job_body(
            exp, job, jobs, data, seeds, selected, console, progress, checkpoint_seconds, seed_chunk
        )
    # one writer per job: a second run of the same job waits here, then finds its seeds finished
    with locks.hold(job.branch.path, f"job {job.name}", lambda m: console.print(f"  {escape(m)}")):
        return _job_body(
            exp, job, jobs, data, seeds, selected, console, progress, checkpoint_seconds, seed_chunk
        )


def _job_body(exp, job: _Job, jobs, data, seeds, selected, console, progress, checkpoint_seconds, seed_chunk):
    missing = sorted(set(seeds) - job.branch.done_seeds(seeds))
    if not missing:
        console.print(f"  {escape(job.name)}: finished earlier, skipped")
        shutil.rmtree(job.branch.path / "checkpoints", ignore_errors=True)  # left by a kill after the results
        return
    if not selected(job.name):
        return
    if len(missing) < len(seeds):
        console.print(f"  {escape(job.name)}: {len(seeds) - len(missing)} seeds finished earlier")
    if job.kind == "ga":
        if job.spec.carries_bound:  # seed s starts from the bound seed s − 1 ended with: one at a time
            for s in missing:
                carry = ga_slt.carry_from_result(job.branch.result(s - 1)) if s > 0 else None
                _ga_chunk(exp, job, data, range(s, s + 1), console, progress, checkpoint_seconds, carry)
        else:
            for chunk in seed_chunks(missing, seed_chunk):
                _ga_chunk(exp, job, data, chunk, console, progress, checkpoint_seconds)
        shutil.rmtree(job.branch.path / "checkpoints", ignore_errors=True)
    elif job.kind == "backprop":
        console.print(f"  {escape(job.name)}: backprop baseline …")
        _backprop_seeds(exp, job, data, missing)
    else:
        kept = job.spec.kept_fraction
        if kept in MATCHED:
            ga = [j for j in jobs if j.kind == "ga" and j.label == job.label]
            short = [j.name for j in ga if len(j.branch.done_seeds(seeds)) < len(seeds)]
            if short:
                console.print(
                    f"  {escape(job.name)}: needs the GA results of {escape(', '.join(short))} first "
                    "(its kept fraction comes from their sparsity), skipped"
                )
                return
            prior = [r for j in ga for r in _rows(j, j.branch.results(seeds))]
            kept = matched_kept_fraction(kept, prior, [j.name for j in ga])
        _edge_popup_seeds(exp, job, data, missing, kept)
        rows = job.branch.results(seeds)
        console.print(f"  {escape(job.name)}: test acc {np.mean([r['test_acc'] for r in rows]):.3f}")


def write_view(exp: SLTConfig, out: str | Path, console: Console | None = None) -> Path:
    """Rebuild ``<out>/<name>/`` from the store: config, jobs, results, metrics, summary and plots."""
    return rebuild_view(exp, out, _write_view, summary_table, console)


def _write_view(exp: SLTConfig, out: str | Path, view: View) -> dict:
    results, metrics, where = collect(exp, out)
    view.write_config(exp)
    view.write_jobs(where)
    view.write_rows("results.jsonl", results)
    view.write_rows("metrics.jsonl", metrics)
    summary = summarise(results)
    view.write_json("summary.json", {"experiment": config_lib.to_dict(exp), "jobs": summary})
    write_plots(
        view.path / "plots", exp.name, results, histories_from_metrics(metrics), bool(exp.class_counts)
    )
    return summary


def summarise(results: list[dict]) -> dict:
    """Per job: seeds, test accuracy mean / median / std, sparsity and seconds (GA: the best-in-population
    test accuracy, generations, seeds at chance, seeds at the generation cap)."""
    out = {}
    for job, rows in group_by(results, "job").items():
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


def histories_from_metrics(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Per-job (seeds × generations) curves from metrics rows (NaN after a seed stopped)."""
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
    if not results:
        return out
    backprop = group_by([r for r in results if r["method"] == "backprop"], "arch")
    means = {a: float(np.mean([r["test_acc"] for r in rs])) for a, rs in backprop.items()}
    xlabel = "architecture@number of classes" if by_classes else "architecture"
    out.append(
        plots.box_by_arch(results, plot_dir / "box_test_acc.png", f"{name}: test accuracy", means, xlabel)
    )
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
