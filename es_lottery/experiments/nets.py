"""NeTS experiments (Jackson et al. 2023): a YAML config → jobs in the run store.

Config (``configs/nets/*.yaml``; every field in ``docs/configs.md``)::

    name: nets_xor_mlp10
    dataset: xor                     # any of tasks.classification.DATASETS
    dataset_args: {n: 250}           # loader arguments (mnist offline: the shared t10k split 8000/2000)
    validation_fraction: 0.1         # NeTS validation = this fraction of the train split (fixed permutation)
    network: {name: mlp, sizes: [2, 10, 1], weight_init: lecun_normal}
    nets: {population_size: 5, generations: 25, target_density: 0.2, ...}   # search.nets.NeTSConfig
    final_training: {epochs: 50, learning_rate: 0.1, batch_size: 32}        # tasks.supervised.TrainConfig
    imp: {num_levels: 8, prune_rate: 0.2}                                    # pruning.loop.IMPConfig
    methods: [nets, imp, random]     # + dense (optional: the unpruned network, trained the same way)
    seeds: 5
    seed: 0
    progress_every: 5                # generations between progress updates

Protocol (the paper's, with the fixes listed in ``search/nets.py``): per seed,

* ``nets`` — NeTS search on (train minus validation, validation); the best genome's ticket
  ``θ_best ⊙ m_best`` is then trained with masked SGD (``final_training``) and tested on the test split.
* ``imp`` — iterative magnitude pruning with rewinding (``pruning.loop.run``, ``num_levels`` − 1 prunings
  of ``prune_rate``: 8 levels → 0.8⁷ ≈ 0.21 density) from a fresh init; every level is trained with the
  SAME masked SGD (``pruning.gd.SGDTrainer``), the last level is the IMP ticket.
* ``random`` — a fresh init and a uniformly random global mask with exactly as many prunable weights as
  that seed's NeTS ticket, trained the same way.
* ``dense`` (optional) — a fresh init, no mask, trained the same way.

All methods train on the same split and are tested on the same test split. Densities count prunable
weights (kernels) only; biases are never pruned. Keys: seed s uses ``k = fold_in(key(seed), s)``; the
methods use ``fold_in(k, i)`` with i = 0 (NeTS search), 1 (NeTS final training), 2 (IMP run key), 3
(random: init, mask, training), 4 (dense).

Store: a trunk ``store/nets/<dataset>-<key>`` (data, validation fraction, network, base seed) with one
branch per method (``nets``: NeTS and final-training fields; ``imp``: IMP and final-training fields;
``random``: final training and the NeTS branch it matches; ``dense``: final training), a branch's key only
when a field differs from its default. Per seed: ``result.json``, ``metrics.jsonl`` (NeTS per generation,
IMP per level) and, for NeTS, ``ticket.npz`` (the best genome: ``params/<path>``, ``mask/<path>``). The
view ``<out>/<name>/`` is rebuilt after every run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from es_lottery import masks as masks_lib
from es_lottery import networks, plots
from es_lottery.experiments import config as config_lib
from es_lottery.experiments import locks
from es_lottery.experiments.common import (
    DatasetName,
    NetworkConfig,
    View,
    check_name,
    default_init,
    group_by,
    loaders,
    rebuild_view,
)
from es_lottery.experiments.generations import advance_until_stopped, history_rows
from es_lottery.experiments.store import Job
from es_lottery.keys import seed_keys, split_run_key
from es_lottery.pruning import loop
from es_lottery.pruning.gd import SGDTrainer
from es_lottery.search import nets as nets_lib
from es_lottery.tasks import classification
from es_lottery.treeio import read_json, save_arrays, write_json

PyTree = Any

METHODS = ("nets", "imp", "random", "dense")
METHOD_KEY = {"nets": 0, "nets_train": 1, "imp": 2, "random": 3, "dense": 4}

DEFAULT_CONFIG = {
    "name": "quickstart_nets_xor_mlp10",
    "dataset": "xor",
    "network": {"name": "mlp", "sizes": [2, 10, 1], "weight_init": "lecun_normal"},
    "nets": {"inner_batch_size": 32},
    "final_training": {"epochs": 50, "learning_rate": 0.1, "batch_size": 32},
    "seeds": 5,
}

__all__ = [
    "DEFAULT_CONFIG",
    "METHODS",
    "NeTSExperiment",
    "collect",
    "load_config",
    "parse_config",
    "run_experiment",
    "summarise",
    "summary_table",
]

Method = Literal[METHODS]


def _check_fraction(value: float, path: str) -> float:
    if not 0 < value < 1:
        raise config_lib.ConfigError(path, f"must be in (0, 1), got {value!r}")
    return value


@dataclass(frozen=True)
class NeTSExperiment:
    """A NeTS experiment (see the module doc)."""

    name: str = field(
        metadata={"doc": "the experiment's view: <out>/<name>/", "check": check_name, "hashed": False}
    )
    dataset: DatasetName = field(metadata={"doc": "tasks.classification dataset"})
    network: NetworkConfig = field(
        metadata={"doc": "the network (weight_init null: the network's own default; mlp: uniform)"}
    )
    dataset_args: dict[str, Any] = field(
        default_factory=dict, metadata={"doc": "arguments of the dataset loader"}
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"doc": "NeTS validation: this fraction of the train split", "check": _check_fraction},
    )
    nets: nets_lib.NeTSConfig = field(
        default_factory=nets_lib.NeTSConfig, metadata={"doc": "the NeTS search"}
    )
    final_training: nets_lib.TrainConfig = field(
        default_factory=nets_lib.TrainConfig,
        metadata={"doc": "masked SGD of every ticket (and of IMP's levels)"},
    )
    imp: loop.IMPConfig = field(
        default_factory=lambda: loop.IMPConfig(num_levels=8, prune_rate=0.2),
        metadata={"doc": "the IMP baseline (num_levels 8: 7 prunings)"},
    )
    methods: tuple[Method, ...] = field(default=("nets", "imp", "random"), metadata={"doc": "methods to run"})
    seeds: int = field(default=5, metadata={"doc": "seeds 0..seeds-1 of every method", "hashed": False})
    seed: int = field(default=0, metadata={"doc": "base seed: seed s uses fold_in(key(seed), s)"})
    progress_every: int = field(
        default=5, metadata={"doc": "generations between progress updates", "hashed": False}
    )

    def __post_init__(self):
        if not self.methods:
            raise ValueError(f"methods must list at least one of {', '.join(METHODS)}")
        if "random" in self.methods and "nets" not in self.methods:
            raise ValueError(
                "methods: 'random' matches the NeTS ticket's density and needs 'nets' in methods"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists a method twice: {list(self.methods)}")
        if "k" in self.network.sizes:
            raise ValueError("network.sizes: 'k' (a class count) is for slt's class-count sweeps only")
        try:
            self.module()
        except (ValueError, TypeError) as err:
            raise ValueError(f"network: {err}") from None
        if self.seeds < 1:
            raise ValueError(f"seeds must be ≥ 1, got {self.seeds}")
        if self.progress_every < 1:
            raise ValueError(f"progress_every must be ≥ 1, got {self.progress_every}")

    @property
    def ordered_methods(self) -> tuple[str, ...]:
        """The methods in their running order (``random`` after ``nets``)."""
        return tuple(m for m in METHODS if m in self.methods)

    def resolved_network(self) -> NetworkConfig:
        return self.network.resolved(default_init(self.network.name))

    def module(self):
        return self.resolved_network().module()

    def replace(self, **kw) -> NeTSExperiment:
        return dataclasses.replace(self, **kw)


parse_config, load_config = loaders(NeTSExperiment, "nets", DEFAULT_CONFIG)


# ----------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True, eq=False)
class Splits:
    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    info: dict


def load_splits(exp: NeTSExperiment, module) -> Splits:
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


# ----------------------------------------------------------------------------------------------
# jobs in the store


def trunk(exp: NeTSExperiment, out: str | Path) -> Job:
    """The store trunk of ``exp``: data, validation fraction, network and base seed."""
    nd = config_lib.nondefault(exp)
    fields = {"dataset": exp.dataset, "network": config_lib.nondefault(exp.resolved_network())}
    fields.update({k: nd[k] for k in ("dataset_args", "validation_fraction", "seed") if k in nd})
    return Job.open(out, "nets", exp.dataset, fields)


def branches(exp: NeTSExperiment, out: str | Path) -> dict[str, Job]:
    """The store branch of every method of ``exp`` (keyed by the fields that change its results)."""
    nd = config_lib.nondefault(exp)
    trunk_ = trunk(exp, out)
    train = {k: nd[k] for k in ("final_training",) if k in nd}
    nets = trunk_.branch("nets", {**{k: nd[k] for k in ("nets",) if k in nd}, **train})
    return {
        "nets": nets,
        "imp": trunk_.branch("imp", {**{k: nd[k] for k in ("imp",) if k in nd}, **train}),
        "random": trunk_.branch("random", {**train, "matched_to": nets.relpath}),
        "dense": trunk_.branch("dense", train),
    }


def method_keys(keys: jax.Array, method: str) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, METHOD_KEY[method]))(keys)


def _keys(exp: NeTSExperiment, seeds: list[int], method: str) -> jax.Array:
    return method_keys(seed_keys(exp.seed, max(seeds) + 1)[np.asarray(seeds)], method)


def _train_seeds(keys, params, masks, module, splits: Splits, config) -> dict:
    """``train_ticket`` of one ticket per seed (leading axis S), vmapped: metrics as numpy arrays."""
    fn = jax.vmap(
        lambda k, p, m: nets_lib.train_ticket(
            k, p, m, splits.x_train, splits.y_train, splits.x_test, splits.y_test, module, config
        )[1]
    )
    return {k: np.asarray(v) for k, v in fn(keys, params, masks).items()}


def _result(seed: int, kept: int, total: int, metrics: dict, i: int, seconds: float, **extra) -> dict:
    return {
        "seed": seed,
        "density": kept / total,
        "kept": int(kept),
        "total": int(total),
        "test_accuracy": float(metrics["test_accuracy"][i]),
        "test_loss": float(metrics["test_loss"][i]),
        "final_train_loss": float(metrics["train_loss"][i][-1]),
        "seconds": seconds,
        **extra,
    }


def _nets_seeds(
    exp, branch: Job, seeds: list[int], module, splits: Splits, progress, checkpoint_seconds
) -> None:
    cfg = exp.nets
    task = nets_lib.make_task(
        module, splits.x_train, splits.y_train, splits.x_val, splits.y_val, eval_chunk=cfg.eval_chunk
    )
    keys = seed_keys(exp.seed, max(seeds) + 1)[np.asarray(seeds)]
    k_init, k_run = jax.vmap(split_run_key)(method_keys(keys, "nets"))
    bar = progress.add_task("nets: compiling", total=cfg.generations)
    started = time.time()
    state = jax.jit(jax.vmap(lambda k: nets_lib.init(k, task, cfg)))(k_init)
    hist = jax.vmap(lambda s: nets_lib.empty_history(task, cfg, s))(state)
    advance = jax.jit(
        jax.vmap(lambda k, s, h, u: nets_lib.advance(k, s, h, task, cfg, u), in_axes=(0, 0, 0, None))
    )

    def on_chunk(state, until, stopped, seconds):
        gens = np.asarray(state.generation)
        progress.update(
            bar,
            completed=int(gens.max()),
            description=f"nets: gen {int(gens.max())}/{cfg.generations}, best fitness "
            f"{np.nanmean(np.asarray(state.best_fitness)):.4f}, density "
            f"{np.mean(np.asarray(state.best_density)):.3f}",
        )

    ckpt = branch.ensure().path / "checkpoints" / f"seeds_{seeds[0]}-{seeds[-1]}.npz"
    state, hist, search_seconds = advance_until_stopped(
        advance,
        lambda s: nets_lib.should_stop(s.generation, s.last_change, cfg),
        k_run,
        state,
        hist,
        every=exp.progress_every,
        on_chunk=on_chunk,
        checkpoint=ckpt,
        checkpoint_seconds=checkpoint_seconds,
        meta={"job": branch.relpath, "seeds": list(seeds)},
        started=started,
        on_damaged=lambda path, msg: progress.console.print(
            f"  [yellow]warning:[/] {escape(msg)}; deleted it, nets restarts from generation 0"
        ),
    )
    progress.update(bar, description="nets: training the tickets")
    tickets, tmasks = jax.vmap(nets_lib.best_ticket)(state)
    t1 = time.time()
    metrics = _train_seeds(
        method_keys(keys, "nets_train"), tickets, tmasks, module, splits, exp.final_training
    )
    train_seconds = time.time() - t1
    progress.update(bar, completed=cfg.generations, description="nets: done")
    total = networks.num_prunable(jax.tree_util.tree_map(lambda x: x[0], tickets))
    kept = np.asarray(jax.vmap(lambda m: masks_lib.count(m)[0])(tmasks))
    gens = np.asarray(state.generation)
    rows = history_rows(hist, gens)
    n = len(seeds)
    for i, s in enumerate(seeds):
        arrays = {}
        for kind, tree in (("params", state.best_params), ("mask", state.best_mask)):
            for p, x in jax.tree_util.tree_leaves_with_path(tree):
                arrays[f"{kind}/{masks_lib.path_name(p)}"] = np.asarray(x[i])
        save_arrays(branch.seed(s) / "ticket.npz", arrays)
        result = _result(
            s,
            int(kept[i]),
            total,
            metrics,
            i,
            (search_seconds + train_seconds) / n,
            search_seconds=search_seconds / n,
            generations=int(gens[i]),
            best_fitness=float(state.best_fitness[i]),
            best_loss=float(state.best_loss[i]),
            n_evals=int(state.n_evals[i]),
        )
        branch.finish_seed(s, result, rows[i])
    ckpt.unlink(missing_ok=True)


def _random_seeds(exp, branch: Job, nets_branch: Job, seeds: list[int], module, splits: Splits) -> None:
    by_seed = {r["seed"]: r for r in nets_branch.results(seeds)}
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise ValueError(f"random baseline: no NeTS result for seeds {missing} (run method 'nets' first)")
    keys = _keys(exp, seeds, "random")
    params, masks = [], []
    for i, s in enumerate(seeds):
        k_init, k_mask, _ = jax.random.split(keys[i], 3)
        p = networks.init_params(k_init, module)
        kept, total = by_seed[s]["kept"], by_seed[s]["total"]
        m = masks_lib.random_mask(k_mask, kept / total, p)
        if int(masks_lib.count(m)[0]) != kept:
            raise AssertionError(f"random mask of seed {s} keeps {int(masks_lib.count(m)[0])}, not {kept}")
        params.append(p)
        masks.append(m)
    stack = lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    k_train = jax.vmap(lambda k: jax.random.split(k, 3)[2])(keys)
    t0 = time.time()
    metrics = _train_seeds(k_train, stack(params), stack(masks), module, splits, exp.final_training)
    seconds = (time.time() - t0) / len(seeds)
    for i, s in enumerate(seeds):
        branch.finish_seed(s, _result(s, by_seed[s]["kept"], by_seed[s]["total"], metrics, i, seconds))


def _dense_seeds(exp, branch: Job, seeds: list[int], module, splits: Splits) -> None:
    keys = _keys(exp, seeds, "dense")
    params = jax.vmap(lambda k: networks.init_params(jax.random.split(k)[0], module))(keys)
    masks = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape, bool), params)
    k_train = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
    t0 = time.time()
    metrics = _train_seeds(k_train, params, masks, module, splits, exp.final_training)
    seconds = (time.time() - t0) / len(seeds)
    total = networks.num_prunable(jax.tree_util.tree_map(lambda x: x[0], params))
    for i, s in enumerate(seeds):
        branch.finish_seed(s, _result(s, total, total, metrics, i, seconds))


def _imp_seeds(exp, branch: Job, seeds: list[int], module, splits: Splits, progress) -> None:
    trainer = SGDTrainer(
        module, splits.x_train, splits.y_train, splits.x_test, splits.y_test, exp.final_training
    )
    keys = _keys(exp, seeds, "imp")
    levels = exp.imp.num_levels
    bar = progress.add_task("imp", total=levels * len(seeds))
    for i, s in enumerate(seeds):
        t0 = time.time()
        rows = []

        def callback(record: loop.LevelRecord, s=s, rows=rows):
            rows.append(
                {
                    "level": record.level,
                    "density": record.kept / record.total,
                    "kept": record.kept,
                    "total": record.total,
                    "test_accuracy": record.eval_score,
                    "test_loss": float(record.metrics["test_loss"]),
                }
            )
            progress.update(
                bar,
                advance=1,
                description=f"imp: seed {s}, level {record.level}/{levels - 1}, density "
                f"{record.kept / record.total:.3f}, test acc {record.eval_score:.3f}",
            )

        result = loop.run(keys[i], trainer, exp.imp, callback=callback, keep_params=False)
        last = result.records[-1]
        metrics = {k: np.asarray(v)[None] for k, v in last.metrics.items()}
        row = _result(s, last.kept, last.total, metrics, 0, time.time() - t0, levels=len(result.records))
        branch.finish_seed(s, row, rows)


# ----------------------------------------------------------------------------------------------
# the experiment


def collect(exp: NeTSExperiment, out: str | Path) -> tuple[list[dict], list[dict], dict[str, str]]:
    """(results rows, metrics rows, {method: store directory}) of ``exp``'s finished seeds in ``out``."""
    where = branches(exp, out)
    seeds = range(exp.seeds)
    results, metrics = [], []
    for m in exp.ordered_methods:
        results += [{"job": m, "method": m, **r} for r in where[m].results(seeds)]
    for m in ("nets", "imp"):
        if m in exp.methods:
            for s in sorted(where[m].done_seeds(seeds)):
                metrics += [{"job": m, "seed": s, **r} for r in where[m].metrics(s)]
    return results, metrics, {m: where[m].relpath for m in exp.ordered_methods}


def run_experiment(
    exp: NeTSExperiment,
    out: str | Path = "runs",
    console: Console | None = None,
    checkpoint_seconds: float = 60.0,
) -> Path:
    """Run every missing seed of every method of ``exp`` into the store under ``out``, rebuild the view
    ``<out>/<name>/`` and return its path."""
    from es_lottery.experiments import legacy_runs

    console = console or Console()
    legacy_runs.migrate_matching(out, exp.name, "nets", console)
    module = exp.module()
    where = branches(exp, out)
    seeds = list(range(exp.seeds))
    todo = {m: sorted(set(seeds) - where[m].done_seeds(seeds)) for m in exp.ordered_methods}
    splits = load_splits(exp, module) if any(todo.values()) else None  # data errors: before any writing
    if splits is not None:
        write_json(trunk(exp, out).ensure().path / "data.json", splits.info)
    view_path = Path(out) / exp.name
    console.print(f"[bold]nets[/] {escape(exp.name)}: {exp.dataset}, {exp.seeds} seeds → {view_path}")
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for method in exp.ordered_methods:
            if not todo[method]:
                console.print(f"  {method}: finished earlier, skipped")
                continue
            # one writer per method: a second run of it waits here, then runs only what is still missing
            notify = lambda m: console.print(f"  {escape(m)}")  # noqa: E731
            with locks.hold(where[method].path, f"nets method {method}", notify):
                missing = sorted(set(seeds) - where[method].done_seeds(seeds))
                if not missing:
                    console.print(f"  {method}: finished by another run, skipped")
                    continue
                if method == "nets":
                    _nets_seeds(exp, where["nets"], missing, module, splits, progress, checkpoint_seconds)
                elif method == "imp":
                    _imp_seeds(exp, where["imp"], missing, module, splits, progress)
                elif method == "random":
                    _random_seeds(exp, where["random"], where["nets"], missing, module, splits)
                else:
                    _dense_seeds(exp, where["dense"], missing, module, splits)
            rows = where[method].results(missing)
            acc = np.mean([r["test_accuracy"] for r in rows])
            dens = np.mean([r["density"] for r in rows])
            console.print(
                f"  {method}: test acc {acc:.4f} at density {dens:.3f} (mean over {len(rows)} seeds)"
            )
    return write_view(exp, out, console)


def write_view(exp: NeTSExperiment, out: str | Path, console: Console | None = None) -> Path:
    """Rebuild ``<out>/<name>/`` from the store: config, jobs, results, metrics, summary and plots."""
    return rebuild_view(exp, out, _write_view, summary_table, console)


def _write_view(exp: NeTSExperiment, out: str | Path, view: View) -> dict:
    results, metrics, where = collect(exp, out)
    data = trunk(exp, out).path / "data.json"
    info = read_json(data) if data.exists() else {}
    view.write_config(exp)
    view.write_jobs(where)
    view.write_rows("results.jsonl", results)
    view.write_rows("metrics.jsonl", metrics)
    summary = summarise(results)
    view.write_json("summary.json", {"experiment": config_lib.to_dict(exp), "data": info, "methods": summary})
    plots.nets_plots(view.path / "plots", exp.name, results, metrics)
    return summary


def summarise(results: list[dict]) -> dict:
    """Per method: seeds, test accuracy mean / median / std / min / max, density mean / std, seconds."""
    by = group_by(results, "method")
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
