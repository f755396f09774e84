"""NeTS experiments (Jackson et al. 2023): YAML config → run directory with results, metrics and plots.

Config (``configs/nets/*.yaml``)::

    name: nets_xor_mlp10
    dataset: xor                     # any of tasks.classification.DATASETS
    dataset_args: {n: 250}           # loader arguments (mnist offline: the shared t10k split 8000/2000)
    validation_fraction: 0.1         # NeTS validation = this fraction of the train split (fixed permutation)
    network: {name: mlp, sizes: [2, 10, 1], weight_init: lecun_normal}   # networks.make_network arguments
    nets: {pop_size: 5, generations: 25, target_density: 0.2, ...}       # search.nets_lib.NeTSConfig fields
    final_training: {epochs: 50, lr: 0.1, batch_size: 32}               # search.nets_lib.TrainConfig fields
    imp: {num_levels: 8, prune_rate: 0.2}                                # pruning.loop.IMPConfig fields
    methods: [nets, imp, random]     # + dense (optional: the unpruned network, trained the same way)
    seeds: 5
    seed: 0
    progress_every: 5                # generations between progress updates

Protocol (the paper's, with the fixes listed in ``search/nets.py``): per seed,

* ``nets`` — NeTS search on (train minus validation, validation); the best genome's ticket
  ``θ_best ⊙ m_best`` is then trained with masked SGD (``final_training``) and tested on the test split.
* ``imp`` — iterative magnitude pruning with rewinding (``pruning.loop.run``, global magnitude,
  ``num_levels`` − 1 prunings of ``prune_rate``: 8 levels → 0.8⁷ ≈ 0.21 density) from a fresh init; every
  level is trained with the SAME masked SGD (``SGDTrainer``), the last level is the IMP ticket.
* ``random`` — a fresh init and a uniformly random global mask with exactly as many prunable weights as
  that seed's NeTS ticket, trained the same way.
* ``dense`` (optional) — a fresh init, no mask, trained the same way.

All methods train on the same split (train minus validation) and are tested on the same test split.
Densities count prunable weights (kernels) only; biases are never pruned.

Keys: seed s uses ``k = fold_in(key(seed), s)``; the methods use ``fold_in(k, i)`` with i = 0 (NeTS search),
1 (NeTS final training), 2 (IMP run key), 3 (random: init, mask, training), 4 (dense).

Run directory ``<out>/<name>-<hash>/``: ``config.yaml``, ``results.jsonl`` (per method and seed: density,
kept/total, test accuracy/loss, seconds), ``metrics.jsonl`` (NeTS per generation; IMP per level),
``summary.json``, ``tickets/nets_seed<s>.npz`` (best genome weights and mask) and ``plots/``. Finished
methods are skipped when the same config is run again into the same output directory.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from es_lottery import masks as masks_lib
from es_lottery import networks
from es_lottery.experiments.rundir import (
    RunDir,
    check_dataset,
    check_keys,
    from_dict,
    load_yaml,
    require_fields,
)
from es_lottery.pruning import loop
from es_lottery.search import nets as nets_lib
from es_lottery.tasks import classification

PyTree = Any

TOP_KEYS = (
    "name",
    "dataset",
    "dataset_args",
    "validation_fraction",
    "network",
    "nets",
    "final_training",
    "imp",
    "methods",
    "seeds",
    "seed",
    "progress_every",
)
METHODS = ("nets", "imp", "random", "dense")
METHOD_KEY = {"nets": 0, "nets_train": 1, "imp": 2, "random": 3, "dense": 4}
IMP_KEYS = ("num_levels", "prune_rate", "criterion", "scope")

DEFAULT_CONFIG = {
    "name": "quickstart_nets_xor_mlp10",
    "dataset": "xor",
    "network": {"name": "mlp", "sizes": [2, 10, 1], "weight_init": "lecun_normal"},
    "nets": {"inner_batch_size": 32},
    "final_training": {"epochs": 50, "lr": 0.1, "batch_size": 32},
    "seeds": 5,
}

__all__ = [
    "DEFAULT_CONFIG",
    "METHODS",
    "NeTSExperiment",
    "SGDTrainer",
    "load_config",
    "main_nets",
    "parse_config",
    "run_experiment",
    "summarise",
]


# ----------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class NeTSExperiment:
    name: str
    dataset: str
    network: dict
    dataset_args: dict = field(default_factory=dict)
    validation_fraction: float = 0.1
    nets: nets_lib.NeTSConfig = field(default_factory=nets_lib.NeTSConfig)
    final_training: nets_lib.TrainConfig = field(default_factory=nets_lib.TrainConfig)
    imp: loop.IMPConfig = field(default_factory=lambda: loop.IMPConfig(num_levels=8, prune_rate=0.2))
    methods: tuple[str, ...] = ("nets", "imp", "random")
    seeds: int = 5
    seed: int = 0
    progress_every: int = 5

    def resolved(self) -> dict:
        d = dataclasses.asdict(self)
        d["nets"] = dataclasses.asdict(self.nets)
        d["final_training"] = dataclasses.asdict(self.final_training)
        d["imp"] = {k: getattr(self.imp, k) for k in IMP_KEYS}
        d["methods"] = list(self.methods)
        return d

    def module(self) -> nn.Module:
        spec = dict(self.network)
        return networks.make_network(spec.pop("name"), **spec)


def _parse_network(spec) -> dict:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(
            "field 'network' must be a mapping with a 'name', e.g. {name: mlp, sizes: [2, 10, 1]}"
        )
    spec = dict(spec)
    if "sizes" in spec:
        spec["sizes"] = [int(s) for s in spec["sizes"]]
    kw = dict(spec)
    name = kw.pop("name")
    try:
        networks.make_network(name, **kw)
    except (ValueError, TypeError) as err:
        raise type(err)(f"network.{err}") from None
    return spec


def parse_config(data: dict, seeds: int | None = None) -> NeTSExperiment:
    """Validate a config mapping (every error names its field) without compiling anything."""
    check_keys(data, TOP_KEYS, "nets")
    require_fields(data, ("name", "dataset", "network"), "nets")
    check_dataset(data["dataset"])
    network = _parse_network(data["network"])
    frac = data.get("validation_fraction", 0.1)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {frac!r}")
    nets_cfg = from_dict(nets_lib.NeTSConfig, data.get("nets"), "nets")
    train_cfg = from_dict(nets_lib.TrainConfig, data.get("final_training"), "final_training")
    imp_data = {"num_levels": 8, "prune_rate": 0.2, **dict(data.get("imp") or {})}
    check_keys(imp_data, IMP_KEYS, "imp")
    imp_cfg = from_dict(loop.IMPConfig, imp_data, "imp")
    methods = data.get("methods", ["nets", "imp", "random"])
    if isinstance(methods, str):
        methods = [methods]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} in field 'methods'; allowed: {', '.join(METHODS)}")
    if "random" in methods and "nets" not in methods:
        raise ValueError("method 'random' matches the NeTS ticket's density and needs 'nets' in 'methods'")
    if not methods:
        raise ValueError(f"field 'methods' must list at least one of {', '.join(METHODS)}")
    n_seeds = seeds if seeds is not None else data.get("seeds", 5)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"seeds must be an integer ≥ 1, got {n_seeds!r}")
    every = data.get("progress_every", 5)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"progress_every must be an integer ≥ 1, got {every!r}")
    return NeTSExperiment(
        name=str(data["name"]),
        dataset=data["dataset"],
        dataset_args=dict(data.get("dataset_args") or {}),
        validation_fraction=float(frac),
        network=network,
        nets=nets_cfg,
        final_training=train_cfg,
        imp=imp_cfg,
        methods=tuple(m for m in METHODS if m in methods),
        seeds=int(n_seeds),
        seed=int(data.get("seed", 0)),
        progress_every=int(every),
    )


def load_config(path: str | Path | None, seeds: int | None = None) -> NeTSExperiment:
    return parse_config(DEFAULT_CONFIG if path is None else load_yaml(path), seeds)


# ----------------------------------------------------------------------------------------------
# data and trainer


@dataclass(frozen=True, eq=False)
class Splits:
    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    info: dict


def load_splits(exp: NeTSExperiment, module: nn.Module) -> Splits:
    """Dataset → (train minus validation, validation, test), checked against the network."""
    data = classification.load_dataset(exp.dataset, **exp.dataset_args)
    x_tr, y_tr, x_va, y_va = nets_lib.split_validation(data.x_train, data.y_train, exp.validation_fraction)
    task = classification.make_task(
        module,
        x_train=x_tr,
        y_train=y_tr,
        x_val=x_va,
        y_val=y_va,
        x_test=data.x_test,
        y_test=data.y_test,
        objective="log_loss",  # a 1-output network is a binary classifier on its logit
    )
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (task.split(s) for s in ("train", "val", "test"))
    info = {
        "dataset": data.name,
        "n_train": int(x_tr.shape[0]),
        "n_val": int(x_va.shape[0]),
        "n_test": int(x_te.shape[0]),
        **{k: str(v) for k, v in data.info.items()},
    }
    return Splits(x_tr, y_tr, x_va, y_va, x_te, y_te, info)


class SGDTrainer:
    """``pruning.loop.Trainer`` with the masked SGD of ``search.nets_lib.train_ticket`` (so IMP levels are
    trained exactly like the NeTS and random tickets); 1-output networks use the binary logit loss."""

    name = "sgd"
    provides_std = False

    def __init__(self, module: nn.Module, splits: Splits, config: nets_lib.TrainConfig):
        self.module, self.splits, self.config = module, splits, config

    def init_params(self, key: jax.Array) -> PyTree:
        return networks.init_params(key, self.module)

    def train(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> loop.TrainResult:
        s = self.splits
        params, metrics = nets_lib.train_ticket(
            key, theta0, mask, s.x_train, s.y_train, s.x_test, s.y_test, self.module, self.config
        )
        return loop.TrainResult(final_params=params, metrics=metrics, eval_score=metrics["test_accuracy"])


def seed_keys(base_seed: int, n: int) -> jax.Array:
    base = jax.random.key(base_seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(n))


def method_keys(keys: jax.Array, method: str) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, METHOD_KEY[method]))(keys)


def _train_seeds(keys, params, masks, module, splits: Splits, config: nets_lib.TrainConfig) -> dict:
    """``train_ticket`` of one ticket per seed (leading axis S), vmapped: metrics as numpy arrays."""
    fn = jax.vmap(
        lambda k, p, m: nets_lib.train_ticket(
            k, p, m, splits.x_train, splits.y_train, splits.x_test, splits.y_test, module, config
        )[1]
    )
    return {k: np.asarray(v) for k, v in fn(keys, params, masks).items()}


def _row(method: str, seed: int, kept: int, total: int, metrics: dict, s: int, seconds: float, **extra):
    return {
        "job": method,
        "method": method,
        "seed": seed,
        "density": kept / total,
        "kept": int(kept),
        "total": int(total),
        "test_accuracy": float(metrics["test_accuracy"][s]),
        "test_loss": float(metrics["test_loss"][s]),
        "final_train_loss": float(metrics["train_loss"][s][-1]),
        "seconds": seconds,
        **extra,
    }


# ----------------------------------------------------------------------------------------------
# jobs


def _nets_job(exp: NeTSExperiment, module, splits: Splits, rundir: RunDir, progress: Progress):
    cfg = exp.nets
    task = nets_lib.make_task(
        module, splits.x_train, splits.y_train, splits.x_val, splits.y_val, eval_chunk=cfg.eval_chunk
    )
    keys = seed_keys(exp.seed, exp.seeds)
    k_init, k_run = jax.vmap(nets_lib.split_run_key)(method_keys(keys, "nets"))
    job = progress.add_task("nets: compiling", total=cfg.generations)
    t0 = time.time()
    state = jax.jit(jax.vmap(lambda k: nets_lib.init(k, task, cfg)))(k_init)
    hist = jax.vmap(lambda s: nets_lib.empty_history(task, cfg, s))(state)
    advance = jax.jit(
        jax.vmap(lambda k, s, h, u: nets_lib.advance(k, s, h, task, cfg, u), in_axes=(0, 0, 0, None))
    )
    until = 0
    while True:
        until += exp.progress_every
        state, hist = advance(k_run, state, hist, until)
        gens = np.asarray(state.generation)
        stopped = np.asarray(nets_lib.should_stop(state.generation, state.last_change, cfg))
        progress.update(
            job,
            completed=int(gens.max()),
            description=f"nets: gen {int(gens.max())}/{cfg.generations}, best fitness "
            f"{np.nanmean(np.asarray(state.best_fitness)):.4f}, density "
            f"{np.mean(np.asarray(state.best_density)):.3f}",
        )
        if stopped.all():
            break
    search_seconds = time.time() - t0
    progress.update(job, description="nets: training the tickets")
    tickets, tmasks = jax.vmap(nets_lib.best_ticket)(state)
    t1 = time.time()
    metrics = _train_seeds(
        method_keys(keys, "nets_train"), tickets, tmasks, module, splits, exp.final_training
    )
    train_seconds = time.time() - t1
    progress.update(job, completed=cfg.generations, description="nets: done")

    total = networks.num_prunable(jax.tree_util.tree_map(lambda x: x[0], tickets))
    kept = np.asarray(jax.vmap(lambda m: masks_lib.count(m)[0])(tmasks))
    _save_tickets(rundir, state)
    rows = [
        _row(
            "nets",
            s,
            int(kept[s]),
            total,
            metrics,
            s,
            (search_seconds + train_seconds) / exp.seeds,
            search_seconds=search_seconds / exp.seeds,
            generations=int(gens[s]),
            best_fitness=float(state.best_fitness[s]),
            best_loss=float(state.best_loss[s]),
            n_evals=int(state.n_evals[s]),
        )
        for s in range(exp.seeds)
    ]
    hist = {k: np.asarray(v) for k, v in hist.items()}
    metric_rows = [
        {"job": "nets", "seed": s, **{k: hist[k][s, g].item() for k in hist}}
        for s in range(exp.seeds)
        for g in range(int(gens[s]))
    ]
    return rows, metric_rows


def _save_tickets(rundir: RunDir, state: nets_lib.NeTSState) -> None:
    out = rundir.path / "tickets"
    out.mkdir(exist_ok=True)
    n = int(np.shape(state.generation)[0])
    for s in range(n):
        arrays = {}
        for kind, tree in (("params", state.best_params), ("mask", state.best_mask)):
            for path, x in jax.tree_util.tree_leaves_with_path(tree):
                arrays[f"{kind}/{masks_lib.path_name(path)}"] = np.asarray(x[s])
        np.savez_compressed(out / f"nets_seed{s}.npz", **arrays)


def _random_job(exp: NeTSExperiment, module, splits: Splits, nets_rows: list[dict]):
    by_seed = {r["seed"]: r for r in nets_rows}
    missing = [s for s in range(exp.seeds) if s not in by_seed]
    if missing:
        raise ValueError(f"random baseline: no NeTS result for seeds {missing} (run method 'nets' first)")
    keys = method_keys(seed_keys(exp.seed, exp.seeds), "random")
    params, masks = [], []
    for s in range(exp.seeds):
        k_init, k_mask, _ = jax.random.split(keys[s], 3)
        p = networks.init_params(k_init, module)
        kept, total = by_seed[s]["kept"], by_seed[s]["total"]
        m = masks_lib.random_mask(k_mask, kept / total, p)
        assert int(masks_lib.count(m)[0]) == kept
        params.append(p)
        masks.append(m)
    stack = lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    k_train = jax.vmap(lambda k: jax.random.split(k, 3)[2])(keys)
    t0 = time.time()
    metrics = _train_seeds(k_train, stack(params), stack(masks), module, splits, exp.final_training)
    seconds = (time.time() - t0) / exp.seeds
    return [
        _row("random", s, by_seed[s]["kept"], by_seed[s]["total"], metrics, s, seconds)
        for s in range(exp.seeds)
    ]


def _dense_job(exp: NeTSExperiment, module, splits: Splits):
    keys = method_keys(seed_keys(exp.seed, exp.seeds), "dense")
    params = jax.vmap(lambda k: networks.init_params(jax.random.split(k)[0], module))(keys)
    masks = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape, bool), params)
    k_train = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
    t0 = time.time()
    metrics = _train_seeds(k_train, params, masks, module, splits, exp.final_training)
    seconds = (time.time() - t0) / exp.seeds
    total = networks.num_prunable(jax.tree_util.tree_map(lambda x: x[0], params))
    return [_row("dense", s, total, total, metrics, s, seconds) for s in range(exp.seeds)]


def _imp_job(exp: NeTSExperiment, module, splits: Splits, progress: Progress):
    trainer = SGDTrainer(module, splits, exp.final_training)
    keys = method_keys(seed_keys(exp.seed, exp.seeds), "imp")
    levels = exp.imp.num_levels
    job = progress.add_task("imp", total=levels * exp.seeds)
    rows, metric_rows = [], []
    for s in range(exp.seeds):
        t0 = time.time()

        def callback(record: loop.LevelRecord, s=s):
            metric_rows.append(
                {
                    "job": "imp",
                    "seed": s,
                    "level": record.level,
                    "density": record.kept / record.total,
                    "kept": record.kept,
                    "total": record.total,
                    "test_accuracy": record.eval_score,
                    "test_loss": float(record.metrics["test_loss"]),
                }
            )
            progress.update(
                job,
                advance=1,
                description=f"imp: seed {s}, level {record.level}/{levels - 1}, density "
                f"{record.kept / record.total:.3f}, test acc {record.eval_score:.3f}",
            )

        result = loop.run(keys[s], trainer, exp.imp, callback=callback, keep_params=False)
        last = result.records[-1]
        metrics = {k: np.asarray(v)[None] for k, v in last.metrics.items()}
        rows.append(
            _row("imp", s, last.kept, last.total, metrics, 0, time.time() - t0, levels=len(result.records))
        )
    return rows, metric_rows


# ----------------------------------------------------------------------------------------------
# the experiment


def summarise(results: list[dict]) -> dict:
    """Per method: seeds, test accuracy mean / median / std / min / max, density mean / std, seconds."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["method"], []).append(r)
    out = {}
    for method in sorted(by, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS)):
        rows = by[method]
        acc = np.asarray([r["test_accuracy"] for r in rows], float)
        dens = np.asarray([r["density"] for r in rows], float)
        entry = {
            "seeds": len(rows),
            "test_accuracy_mean": float(np.mean(acc)),
            "test_accuracy_median": float(np.median(acc)),
            "test_accuracy_std": float(np.std(acc)),
            "test_accuracy_min": float(np.min(acc)),
            "test_accuracy_max": float(np.max(acc)),
            "density_mean": float(np.mean(dens)),
            "density_std": float(np.std(dens)),
            "seconds_per_seed": float(np.mean([r.get("seconds", 0.0) for r in rows])),
        }
        if method == "nets":
            entry["generations_mean"] = float(np.mean([r["generations"] for r in rows]))
            entry["best_fitness_mean"] = float(np.mean([r["best_fitness"] for r in rows]))
            entry["search_seconds_per_seed"] = float(np.mean([r["search_seconds"] for r in rows]))
        out[method] = entry
    return out


def run_experiment(exp: NeTSExperiment, out: str | Path = "runs", console: Console | None = None) -> Path:
    """Run every method of ``exp`` (skipping finished ones) and write the run directory; returns its path."""
    console = console or Console()
    module = exp.module()
    splits = load_splits(exp, module)
    resolved = exp.resolved()
    rundir = RunDir(out, exp.name, resolved)
    info = splits.info
    console.print(
        f"[bold]nets[/] {escape(exp.name)}: {exp.dataset} ({info['n_train']} train / {info['n_val']} val / "
        f"{info['n_test']} test), {exp.seeds} seeds → {rundir.path}"
    )
    done = {r["method"] for r in rundir.read("results.jsonl")}
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for method in exp.methods:
            if method in done:
                console.print(f"  {method}: finished earlier, skipped")
                continue
            if method == "nets":
                rows, metric_rows = _nets_job(exp, module, splits, rundir, progress)
                rundir.append("metrics.jsonl", metric_rows)
            elif method == "imp":
                rows, metric_rows = _imp_job(exp, module, splits, progress)
                rundir.append("metrics.jsonl", metric_rows)
            elif method == "random":
                nets_rows = [r for r in rundir.read("results.jsonl") if r["method"] == "nets"]
                rows = _random_job(exp, module, splits, nets_rows)
            else:
                rows = _dense_job(exp, module, splits)
            rundir.append("results.jsonl", rows)
            acc = np.mean([r["test_accuracy"] for r in rows])
            dens = np.mean([r["density"] for r in rows])
            console.print(
                f"  {method}: test acc {acc:.4f} at density {dens:.3f} (mean over {len(rows)} seeds)"
            )
    results = rundir.read("results.jsonl")
    summary = summarise(results)
    rundir.write_json("summary.json", {"experiment": resolved, "data": info, "methods": summary})
    write_plots(rundir.path, exp.name, results, rundir.read("metrics.jsonl"))
    console.print(summary_table(summary, title=f"{exp.name} ({exp.dataset})"))
    return rundir.path


def summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("method", "seeds", "test acc mean", "median", "std", "min", "density", "s/seed"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, e in summary.items():
        table.add_row(
            method,
            str(e["seeds"]),
            f"{e['test_accuracy_mean']:.4f}",
            f"{e['test_accuracy_median']:.4f}",
            f"{e['test_accuracy_std']:.4f}",
            f"{e['test_accuracy_min']:.4f}",
            f"{e['density_mean']:.3f} ± {e['density_std']:.3f}",
            f"{e['seconds_per_seed']:.1f}",
        )
    return table


def main_nets(args, console: Console) -> int:
    """CLI entry: ``args.config`` (YAML path or None for the embedded quickstart), ``args.seeds``
    (override or None), ``args.out`` (output directory)."""
    exp = load_config(getattr(args, "config", None), seeds=getattr(args, "seeds", None))
    path = run_experiment(exp, out=getattr(args, "out", "runs"), console=console)
    console.print(f"run directory: {path}")
    return 0


# ----------------------------------------------------------------------------------------------
# plots (NeTS-specific; matplotlib, Agg backend)


def write_plots(path: Path, title: str, results: list[dict], metric_rows: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plots = Path(path) / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]

    # 1. test accuracy per method, one dot per seed, density annotated
    if methods:
        fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2.5, 4))
        for i, m in enumerate(methods):
            rows = [r for r in results if r["method"] == m]
            acc = np.asarray([r["test_accuracy"] for r in rows], float)
            dens = np.asarray([r["density"] for r in rows], float)
            jitter = np.linspace(-0.12, 0.12, len(acc)) if len(acc) > 1 else np.zeros(1)
            ax.bar(i, acc.mean(), width=0.6, color=f"C{i}", alpha=0.35)
            ax.errorbar(i, acc.mean(), yerr=acc.std(), color="k", capsize=4)
            ax.plot(i + jitter, acc, "o", color=f"C{i}", ms=4)
            ax.annotate(
                f"{100 * acc.mean():.1f} %\nd = {100 * dens.mean():.1f} %",
                (i, min(acc.mean() + acc.std(), 1.0)),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
        ax.set_xticks(range(len(methods)), methods)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.15)
        ax.set_title(f"{title}: test accuracy (mean ± std, dots = seeds; d = density of prunable weights)")
        ax.title.set_fontsize(9)
        fig.tight_layout()
        written.append(plots / "accuracy_by_method.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # 2. NeTS search curves
    nets_rows = [r for r in metric_rows if r.get("job") == "nets"]
    if nets_rows:
        seeds = sorted({r["seed"] for r in nets_rows})
        length = max(r["generation"] for r in nets_rows)
        curves = {
            k: np.full((len(seeds), length), np.nan)
            for k in ("best_fitness", "best_loss", "best_density", "mean_density")
        }
        for r in nets_rows:
            for k in curves:
                v = r.get(k)
                curves[k][seeds.index(r["seed"]), r["generation"] - 1] = np.nan if v is None else v
        gens = np.arange(1, length + 1)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for k, ax, color in (
            ("best_fitness", a1, "C0"),
            ("best_loss", a1, "C1"),
            ("best_density", a2, "C0"),
            ("mean_density", a2, "C2"),
        ):
            data = curves[k]
            for row in data:
                ax.plot(gens, row, color=color, alpha=0.2, lw=0.8)
            with np.errstate(all="ignore"):
                ax.plot(gens, np.nanmean(data, axis=0), color=color, label=k.replace("_", " "))
        a1.set_xlabel("generation")
        a1.set_ylabel("fitness (minimised) / loss")
        a1.legend(fontsize=8)
        a2.set_xlabel("generation")
        a2.set_ylabel("density of prunable weights")
        a2.legend(fontsize=8)
        fig.suptitle(f"{title}: NeTS search (thin lines = seeds, thick = mean)")
        fig.tight_layout()
        written.append(plots / "nets_search.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # 3. IMP levels (test accuracy vs density) with the other methods as points
    imp_rows = [r for r in metric_rows if r.get("job") == "imp"]
    if imp_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        levels = sorted({r["level"] for r in imp_rows})
        d = [np.mean([r["density"] for r in imp_rows if r["level"] == k]) for k in levels]
        a = np.asarray(
            [[r["test_accuracy"] for r in imp_rows if r["level"] == k] for k in levels], dtype=object
        )
        mean = [float(np.mean(v)) for v in a]
        std = [float(np.std(v)) for v in a]
        ax.errorbar(d, mean, yerr=std, marker="o", color="C1", capsize=3, label="IMP levels")
        for i, m in enumerate(methods):
            if m == "imp":
                continue
            rows = [r for r in results if r["method"] == m]
            ax.errorbar(
                np.mean([r["density"] for r in rows]),
                np.mean([r["test_accuracy"] for r in rows]),
                xerr=np.std([r["density"] for r in rows]),
                yerr=np.std([r["test_accuracy"] for r in rows]),
                marker="s",
                ls="none",
                capsize=3,
                color=f"C{i}" if m != "imp" else "C1",
                label=m,
            )
        ax.invert_xaxis()
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
        ax.set_xlabel("density of prunable weights")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
        ax.set_title(f"{title}: accuracy vs density")
        fig.tight_layout()
        written.append(plots / "accuracy_vs_density.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
