"""ES lottery-ticket experiments (Lange & Sprekeler 2023): a YAML config → a resumable trunk in the run store.

Config (``configs/imp/*.yaml``; every field in ``docs/configs.md``)::

    name: mnist_sep_cma
    dataset: mnist                 # any of tasks.classification.DATASETS
    dataset_args: {}               # loader arguments, e.g. {test_split_only: true, split_train: 8000}
    network: {name: paper_cnn}     # paper_cnn | mlp (sizes: [...]) | lenet_300_100; + weight_init, …
    trainer:                       # type es: ESConfig fields + the ESTrainerConfig fields, side by side
      type: es
      algorithm: Sep_CMA_ES
      population_size: 128
      sigma_init: 0.025
      num_generations: 4000
      eval_every: 100
      batch_size: 1024
      checkpoint_every: 500        # mid-level checkpoints (a multiple of eval_every)
    # trainer: {type: gd, epochs: 20, learning_rate: 3.0e-4, batch_size: 128}   (GDConfig fields)
    # trainer: {type: ppo, total_env_steps: 163840, …}   (control only: gradient.ppo.PPOConfig fields)
    imp: {num_levels: 20, prune_rate: 0.2, scope: global}
    criteria: [magnitude, snr, random_reinit]
    baseline_mode: chain           # chain (default) | branch: how the baselines in criteria run, see below
    seeds: 5
    seed: 0

A control experiment has an ``env:`` section (``tasks.control.control_task_from_config``; the policy is
``env.policy``) instead of ``dataset``/``network``. Trainers are looked up in :data:`TRAINERS` by
``trainer.type``: a new kind (PPO) is one entry there — its config dataclass and how to build the trainer
for a classification dataset or a control task.

``criteria`` mixes IMP criteria (``pruning.criteria.CRITERIA``) and ticket baselines
(``pruning.baselines.BASELINES``). A baseline controls the ``magnitude`` run of the same seed (or the first
IMP criterion listed when magnitude is not: the "mask source") and trains with the same trainer.
``baseline_mode`` says how (``pruning.baselines``' module doc):

* ``chain`` (default; the original code's semantics, the paper's Fig. 2 / Fig. 8 curves): each baseline is
  its own IMP chain. Its level 0 IS the mask source's dense level 0 (files copied, not retrained; the row
  says ``shared_from``); level k ≥ 1 transforms the chain's OWN ``next_mask`` of level k − 1 and trains
  the control ticket (``baselines.run_baseline_chain``).
* ``branch``: level k (0 included) transforms the mask source's level-k mask once
  (``baselines.run_baseline``).

Keys. Seed s uses the run key ``fold_in(key(seed), s)``: θ₀ = ``trainer.init_params`` of its first half
(``keys.split_run_key``), shared by every criterion of the seed; level k of an IMP criterion trains with
``loop.level_keys(run_key, k)``; a baseline chain trains and scores level k with the same keys and
transforms with ``baselines.chain_transform_key(run_key, k)``; a branch-mode baseline b uses
``fold_in(run_key, BASELINE_KEY_OFFSET + index of b)``.

The store. The TRUNK ``store/imp/<dataset or env>-<key>`` is keyed by what every level's result depends on
and differs from its default: the data (or the env), the network, the trainer, the pruning rate and scope,
the base seed — not the name, the seeds, ``num_levels`` (level k does not depend on how many follow: more
levels continue a finished chain) nor the criteria. Inside it, the old run directory's layout::

    seed_<s>/theta0.npz                       the unmasked θ₀ of the seed (shared by every branch)
    seed_<s>/<branch>/branch.json             the branch: an IMP criterion, or a baseline named
                                              <baseline> (chain mode, source magnitude) or
                                              <baseline>-<key> (another mode or source)
    seed_<s>/<branch>/level_<k>/
        mask.npz         the level's mask, prunable entries bit-packed (masks.pack) + kept/total
        next_mask.npz    IMP criteria and baseline chains: the mask of level k+1 (what a resume starts from)
        theta0.npz       the level's start: θ₀ ⊙ m_k (baselines: their control init θ₀' ⊙ m')
        final_params.npz the trained params (ES: the final — or best — search mean)
        std.npz          ES: per-weight std of the search distribution (zeros at pruned entries)
        task_state.npz   control: the observation statistics the policy was scored with
        curves.npz       eval / per-generation (ES) or per-epoch (GD) curves
        metrics.json     written LAST: its presence marks the level as finished
        checkpoint/      ES: the run state inside the level (state.npz; removed when done)

Re-running a config skips finished levels (the trainer is not called for them) and resumes an unfinished
ES level from its checkpoint; the result is bitwise identical to an uninterrupted run. The view
``<out>/<name>/`` (config, ``jobs.json`` with the trunk and branch directories, ``metrics.jsonl``,
``summary.json``, ``plots/performance_vs_density.png``) is rebuilt after every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from es_lottery import masks as masks_lib
from es_lottery import networks, plots, population
from es_lottery.experiments import config as config_lib
from es_lottery.experiments import locks
from es_lottery.experiments.common import (
    DatasetName,
    NetworkConfig,
    View,
    check_dataset_args,
    check_name,
    loaders,
)
from es_lottery.experiments.store import Job, dirname
from es_lottery.gradient.ppo import PPOConfig, PPOTrainer
from es_lottery.keys import split_run_key
from es_lottery.pruning import baselines as baselines_lib
from es_lottery.pruning import criteria as criteria_lib
from es_lottery.pruning import loop
from es_lottery.pruning.es_trainer import ESTrainer, ESTrainerConfig, NpzCheckpointer
from es_lottery.pruning.gd import GDConfig, GDTrainer
from es_lottery.pruning.schedule import PruningSchedule
from es_lottery.tasks import classification
from es_lottery.treeio import (
    DamagedFile,
    atomic_write,
    load_arrays,
    load_tree,
    read_json,
    save_arrays,
    save_tree,
    to_jsonable,
    write_json,
)

PyTree = Any

IMP_CRITERIA = tuple(criteria_lib.CRITERIA)
BASELINE_CRITERIA = tuple(baselines_lib.BASELINES)
ALL_CRITERIA = IMP_CRITERIA + BASELINE_CRITERIA
BASELINE_KEY_OFFSET = 1000
BASELINE_MODES = ("chain", "branch")  # chain: the original's chains (default); branch: one-shot
DEFAULT_WEIGHT_INIT = "lecun_normal"  # flax's default: the "standard init" of the paper's code (zero biases)
DEFAULT_MASK_SOURCE = "magnitude"

__all__ = [
    "ALL_CRITERIA",
    "TRAINERS",
    "IMPExperiment",
    "TrainerKind",
    "collect_rows",
    "load_config",
    "parse_config",
    "run_experiment",
    "summarise",
]


# ----------------------------------------------------------------------------------------------
# trainers


@dataclass(frozen=True)
class TrainerKind:
    """One ``trainer.type``: its config dataclass (the YAML section's fields), whether it has a search
    distribution (the SNR criteria need one), and how to build the trainer for a classification dataset
    (``classification(module, dataset, config)``) and for a control task (``control(task, config)``);
    ``None`` where the kind does not apply."""

    config: type
    provides_std: bool
    classification: Callable[[nn.Module, Any, Any], Any] | None
    control: Callable[[Any, Any], Any] | None
    segmented: bool = False  # trains a level in checkpointed segments (ESTrainer.checkpointing)


#: ``trainer.type`` → :class:`TrainerKind`: ES (classification and control), GD (Adam, classification) and
#: PPO (control: ``gradient.ppo.PPOTrainer``, the paper's gradient baseline for control tickets).
TRAINERS: dict[str, TrainerKind] = {
    "es": TrainerKind(ESTrainerConfig, True, ESTrainer.from_dataset, ESTrainer.from_task, segmented=True),
    "gd": TrainerKind(GDConfig, False, GDTrainer.from_dataset, None),
    "ppo": TrainerKind(PPOConfig, False, None, PPOTrainer.from_task),
}


class _TrainerConfigs(Mapping):
    """``trainer.type`` → config dataclass, read from :data:`TRAINERS` when the config is loaded."""

    def __getitem__(self, key):
        return TRAINERS[key].config

    def __iter__(self):
        return iter(TRAINERS)

    def __len__(self):
        return len(TRAINERS)


Criterion = Literal[ALL_CRITERIA]


def _check_env(value: dict | None, path: str) -> dict | None:
    """The ``env`` section: validated by building its task (every bad field in one line, nothing compiled)."""
    if value is None:
        return None
    from es_lottery.tasks import control

    try:
        control.control_task_from_config(value)
    except (ValueError, TypeError) as err:
        msg = str(err)
        raise config_lib.ConfigError("" if msg.startswith(path) else path, msg) from None
    return value


# ----------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class IMPExperiment:
    """A validated IMP experiment (the module doc has the YAML form). Classification experiments have
    ``dataset`` and ``network``; control experiments have ``env`` (the policy is ``env.policy``)."""

    name: str = field(
        metadata={"doc": "the experiment's view: <out>/<name>/", "check": check_name, "hashed": False}
    )
    dataset: DatasetName | None = field(default=None, metadata={"doc": "classification: the dataset"})
    dataset_args: dict[str, Any] = field(
        default_factory=dict, metadata={"doc": "arguments of the dataset loader"}
    )
    network: NetworkConfig | None = field(
        default=None, metadata={"doc": "classification: the network (weight_init null: lecun_normal)"}
    )
    env: dict[str, Any] | None = field(
        default=None,
        metadata={
            "doc": "control: the env and policy (tasks.control.control_task_from_config)",
            "check": _check_env,
        },
    )
    trainer: Any = field(
        default_factory=ESTrainerConfig,
        metadata={"doc": "type: es | gd | ppo (+ its fields)", "tagged": ("type", _TrainerConfigs())},
    )
    imp: PruningSchedule = field(
        default_factory=PruningSchedule, metadata={"doc": "the pruning schedule: (1 − prune_rate)^level"}
    )
    criteria: tuple[Criterion, ...] = field(default=(), metadata={"doc": "IMP criteria and ticket baselines"})
    baseline_mode: Literal[BASELINE_MODES] = field(
        default="chain", metadata={"doc": "chain: each baseline its own IMP chain; branch: one-shot controls"}
    )
    seeds: int = field(default=5, metadata={"doc": "seeds 0..seeds-1", "hashed": False})
    seed: int = field(default=0, metadata={"doc": "base seed: seed s uses fold_in(key(seed), s)"})

    def __post_init__(self):
        if self.env is not None:
            clash = [k for k, v in (("dataset", self.dataset), ("network", self.network)) if v is not None]
            clash += ["dataset_args"] if self.dataset_args else []
            if clash:
                raise ValueError(
                    f"{clash[0]} does not apply with env: a control experiment takes its policy network from "
                    "env.policy (hidden sizes, activation, action mode)"
                )
            if self.trainer_kind.control is None:
                raise ValueError(
                    f"trainer.type: a control task (env) cannot train with type {self.trainer_type!r}"
                )
        else:
            if self.dataset is None:
                raise ValueError(
                    f"dataset is required (one of {', '.join(classification.DATASETS)}), or an env section "
                    "for a "
                    "control task"
                )
            if self.network is None:
                raise ValueError("network is required (name: one of mlp, paper_cnn, lenet_300_100)")
            if "k" in self.network.sizes:
                raise ValueError("network.sizes: 'k' (a class count) is for slt's class-count sweeps only")
            check_dataset_args(self.dataset, self.dataset_args, "dataset_args")
            try:
                self.module()
            except (ValueError, TypeError) as err:
                raise ValueError(f"network: {err}") from None
            if self.trainer_kind.classification is None:
                raise ValueError(
                    f"trainer.type: {self.trainer_type!r} trains control tasks only (give an env)"
                )
        if not self.criteria:
            raise ValueError(f"criteria is required: a non-empty list of {', '.join(ALL_CRITERIA)}")
        dup = sorted({c for c in self.criteria if self.criteria.count(c) > 1})
        if dup:
            raise ValueError(f"criteria lists {', '.join(dup)} more than once")
        if not self.imp_criteria:
            raise ValueError(
                f"criteria holds only baselines ({', '.join(self.criteria)}); they transform the masks of "
                "an IMP "
                f"criterion of the same run, so list one too (one of: {', '.join(IMP_CRITERIA)})"
            )
        for c in self.imp_criteria:
            try:
                criteria_lib.check_trainer_compatible(
                    c, self.trainer_kind.provides_std, f"trainer type {self.trainer_type!r}"
                )
            except ValueError as err:
                raise ValueError(f"criteria: {err}") from None
        if self.seeds < 1:
            raise ValueError(f"seeds must be ≥ 1, got {self.seeds}")
        if self.seed < 0:
            raise ValueError(f"seed must be ≥ 0, got {self.seed}")
        if self.env is None:
            shapes = jax.eval_shape(lambda: networks.init_params(jax.random.key(0), self.module()))
            try:
                self.schedule.validate_for(shapes)
            except ValueError as err:
                raise ValueError(f"imp.num_levels: {err}") from None

    def replace(self, **kw) -> IMPExperiment:
        return dataclasses.replace(self, **kw)

    @property
    def trainer_type(self) -> str:
        return next(t for t, k in TRAINERS.items() if isinstance(self.trainer, k.config))

    @property
    def trainer_kind(self) -> TrainerKind:
        return TRAINERS[self.trainer_type]

    @property
    def score(self) -> str:
        """The level score's name: ``accuracy`` (classification) or ``return`` (control); rows hold it as
        ``test_<score>``."""
        return "accuracy" if self.env is None else "return"

    @property
    def num_levels(self) -> int:
        return self.imp.num_levels

    @property
    def prune_rate(self) -> float:
        return self.imp.prune_rate

    @property
    def scope(self) -> str:
        return self.imp.scope

    @property
    def schedule(self) -> PruningSchedule:
        return self.imp

    @property
    def imp_criteria(self) -> tuple[str, ...]:
        return tuple(c for c in self.criteria if c in IMP_CRITERIA)

    @property
    def baseline_criteria(self) -> tuple[str, ...]:
        return tuple(c for c in self.criteria if c in BASELINE_CRITERIA)

    @property
    def mask_source(self) -> str | None:
        """The IMP criterion whose masks the baselines transform."""
        imp = self.imp_criteria
        if not imp:
            return None
        return DEFAULT_MASK_SOURCE if DEFAULT_MASK_SOURCE in imp else imp[0]

    def imp_config(self, criterion: str) -> loop.IMPConfig:
        return loop.IMPConfig(self.num_levels, self.prune_rate, criterion, self.scope)

    def resolved_network(self) -> NetworkConfig | None:
        return None if self.network is None else self.network.resolved(DEFAULT_WEIGHT_INIT)

    def control_task(self):
        """The control task of the ``env`` section (``tasks.control.ControlTask``)."""
        from es_lottery.tasks import control

        return control.control_task_from_config(self.env)

    def module(self) -> nn.Module:
        if self.env is not None:
            return self.control_task().module
        return self.resolved_network().module()

    def resolved(self) -> IMPExperiment:
        """The same experiment with the network's ``weight_init`` filled in (what the view records)."""
        return self if self.network is None else self.replace(network=self.resolved_network())


parse_config, load_config = loaders(IMPExperiment, "imp")


# ----------------------------------------------------------------------------------------------
# the store


def trunk(exp: IMPExperiment, out: str | Path) -> Job:
    """The trunk of ``exp`` in ``out``'s store (see the module doc for what keys it)."""
    nd = config_lib.nondefault(exp.resolved())
    if exp.env is not None:
        fields: dict[str, Any] = {"env": to_jsonable(exp.env)}
        stem = str(exp.env.get("name", "env"))
    else:
        fields = {"dataset": exp.dataset, "network": config_lib.nondefault(exp.resolved_network())}
        fields.update({k: nd[k] for k in ("dataset_args",) if k in nd})
        stem = exp.dataset
    fields["trainer"] = nd["trainer"]
    schedule = {k: v for k, v in nd.get("imp", {}).items() if k != "num_levels"}
    if schedule:
        fields["imp"] = schedule
    if "seed" in nd:
        fields["seed"] = nd["seed"]
    return Job.open(out, "imp", stem.replace("/", "_"), fields)


def branch_fields(exp: IMPExperiment, name: str) -> dict:
    """What keys a branch besides its name: a baseline's mode and mask source where they are not the
    defaults (chain, magnitude); nothing for an IMP criterion."""
    if name in IMP_CRITERIA:
        return {}
    fields = {}
    if exp.baseline_mode != "chain":
        fields["baseline_mode"] = exp.baseline_mode
    if exp.mask_source != DEFAULT_MASK_SOURCE:
        fields["mask_source"] = exp.mask_source
    return fields


def branch_dirs(exp: IMPExperiment) -> dict[str, str]:
    """Criterion → its directory name under ``seed_<s>/``."""
    return {c: dirname(c, branch_fields(exp, c)) for c in exp.criteria}


def data_dir(exp: IMPExperiment, out: str | Path) -> Path:
    """The trunk directory of ``exp`` in ``out`` (``seed_<s>/…`` below it)."""
    return trunk(exp, out).path


# ----------------------------------------------------------------------------------------------
# data and trainer (before anything compiles)


def _fail(where: str, err: Exception) -> Exception:
    return type(err)(f"{where}: {err}")


def load_data(exp: IMPExperiment) -> classification.Dataset:
    try:
        return classification.load_dataset(exp.dataset, **exp.dataset_args)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"field 'dataset' = {exp.dataset!r} (dataset_args {exp.dataset_args}): {err}"
        ) from None
    except (ValueError, TypeError) as err:
        raise _fail("dataset_args", err) from None


def check_fit(exp: IMPExperiment, module: nn.Module, data: classification.Dataset) -> None:
    """The network's input/output sizes must fit the data."""
    x_shape = tuple(data.x_train.shape[1:])
    want = tuple(module.input_shape)
    flat = isinstance(module, networks.MLP)
    ok = x_shape == want or (flat and int(np.prod(x_shape)) == int(np.prod(want)))
    if not ok:
        raise ValueError(
            f"network: {exp.network.name} takes inputs of shape {want}, but dataset "
            f"{exp.dataset!r} has inputs of shape {x_shape}"
        )
    n_out = population.num_outputs(module)
    if n_out < data.num_classes:
        raise ValueError(
            f"network: the network has {n_out} outputs but dataset {exp.dataset!r} has "
            f"{data.num_classes} classes"
        )


def make_trainer(exp: IMPExperiment, module: nn.Module, data: classification.Dataset):
    """The trainer of a classification experiment (``TRAINERS[trainer.type].classification``)."""
    return exp.trainer_kind.classification(module, data, exp.trainer)


# ----------------------------------------------------------------------------------------------
# files of a level


def save_mask(path: Path, mask: PyTree) -> None:
    kept, total = masks_lib.count(mask)
    packed = np.asarray(masks_lib.pack(mask))
    save_arrays(path, {"packed": packed, "kept": np.int64(int(kept)), "total": np.int64(int(total))})


def load_mask(path: Path, like: PyTree) -> PyTree:
    data, _ = load_arrays(path)
    if not {"packed", "kept", "total"} <= set(data):
        raise DamagedFile(path, ValueError("not a mask file (packed, kept, total)"))
    packed, kept, total = data["packed"], int(data["kept"]), int(data["total"])
    mask = masks_lib.unpack(jnp.asarray(packed), like)
    k, t = masks_lib.count(mask)
    if int(k) != kept or int(t) != total:
        raise ValueError(f"{path}: the packed mask keeps {int(k)}/{t}, the file says {kept}/{total}")
    return mask


def _flat_curves(metrics: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat_curves(v, f"{prefix}{k}/"))
        elif np.ndim(v) >= 1:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _scalars(metrics: dict) -> dict[str, Any]:
    return {
        k: np.asarray(v).item() for k, v in metrics.items() if not isinstance(v, dict) and np.ndim(v) == 0
    }


def level_done(ldir: Path) -> bool:
    return (ldir / "metrics.json").is_file()


def write_level(
    ldir: Path, record: loop.LevelRecord, theta_start: PyTree, meta: dict, score: str = "accuracy"
) -> dict:
    """Persist one finished level; ``metrics.json`` goes last (the "finished" marker). Returns its row, in
    which the level's score is ``test_<score>`` (``test_accuracy``, control: ``test_return``)."""
    ldir.mkdir(parents=True, exist_ok=True)
    save_mask(ldir / "mask.npz", record.mask)
    if record.next_mask is not None:
        save_mask(ldir / "next_mask.npz", record.next_mask)
    save_tree(ldir / "theta0.npz", theta_start)
    save_tree(ldir / "final_params.npz", record.final_params)
    if record.std_params is not None:
        save_tree(ldir / "std.npz", record.std_params)
    if record.task_state is not None:  # control: the observation statistics the policy was scored with
        save_tree(ldir / "task_state.npz", record.task_state)
    save_arrays(ldir / "curves.npz", _flat_curves(record.metrics))
    layer = {k: float(v) for k, v in masks_lib.layer_density(record.mask).items()}
    row = {
        **meta,
        "level": record.level,
        "density": record.kept / record.total,
        "kept": record.kept,
        "total": record.total,
        f"test_{score}": record.eval_score,
        **{k: v for k, v in _scalars(record.metrics).items() if k != f"test_{score}"},
        "layer_density": layer,
    }
    write_json(ldir / "metrics.json", row)
    shutil.rmtree(ldir / "checkpoint", ignore_errors=True)
    return row


def collect_rows(root: Path, branches: Mapping[str, str] | None = None) -> list[dict]:
    """Every finished level's ``metrics.json`` under a trunk (or an old run directory), sorted by seed,
    criterion, level; ``branches`` (criterion → directory name) limits it to those branches."""
    root = Path(root)
    if branches is None:
        files = root.glob("seed_*/*/level_*/metrics.json")
    else:
        files = (f for d in branches.values() for f in root.glob(f"seed_*/{d}/level_*/metrics.json"))
    rows = []
    for f in files:
        try:
            rows.append(json.loads(f.read_text()))
        except json.JSONDecodeError:
            continue
    return sorted(rows, key=lambda r: (r["seed"], str(r["criterion"]), r["level"]))


# ----------------------------------------------------------------------------------------------
# running


@dataclass
class _Ctx:
    exp: IMPExperiment
    trainer: Any
    root: Path
    dirs: dict[str, str]
    console: Console
    progress: Progress
    on_segment: Callable[[dict], Any] | None

    def chain(self, seed: int, name: str) -> Path:
        return self.root / f"seed_{seed}" / self.dirs[name]


def _level_context(ctx: _Ctx, ldir: Path, hook: Callable[[dict], Any]):
    if isinstance(ctx.trainer, ESTrainer):

        def on_damaged(path: Path, message: str) -> None:
            ctx.console.print(
                f"  [yellow]warning:[/] {escape(message)}; deleted it, {ldir.parent.name}/{ldir.name} "
                "restarts from generation 0"
            )

        return ctx.trainer.checkpointing(NpzCheckpointer(ldir / "checkpoint", on_damaged), hook)
    return contextlib.nullcontext()


def _units(ctx: _Ctx) -> int:
    """Progress units per level (generations for ES, 1 otherwise)."""
    return ctx.trainer.config.num_generations if isinstance(ctx.trainer, ESTrainer) else 1


def _make_hook(ctx: _Ctx, task, seed: int, criterion: str, level: int):
    units = _units(ctx)
    score = ctx.exp.score

    def hook(info: dict) -> None:
        value = info["eval"].get(score, float("nan"))
        line = (
            f"seed {seed} {criterion} L{level} gen {info['generation']}/{info['num_generations']} "
            f"test {score} {value:.4g}"
        )
        if "fitness_max" in info:
            line += f", fitness best {info['fitness_max']:.4g} mean {info['fitness_mean']:.4g}"
        if "env_steps_per_s" in info:
            line += f", {info['env_steps_per_s'] / 1e3:.0f}k env steps/s"
        ctx.progress.update(task, completed=level * units + info["generation"], description=line)
        if not ctx.console.is_terminal:  # logs get a line per segment, terminals the bar
            ctx.console.print(f"  {line}")
        if ctx.on_segment is not None:
            ctx.on_segment({**info, "seed": seed, "criterion": criterion, "level": level})

    return hook


def _finish_level(ctx: _Ctx, ldir: Path, record, theta_start, meta: dict, t0: float, task) -> None:
    row = write_level(ldir, record, theta_start, {**meta, "seconds": time.time() - t0}, ctx.exp.score)
    ctx.progress.update(task, completed=(record.level + 1) * _units(ctx))
    ctx.console.print(
        f"  seed {meta['seed']} {escape(meta['criterion'])} level {record.level}: "
        f"{record.kept}/{record.total} prunable ({record.kept / record.total:.2%}), "
        f"test {ctx.exp.score} {record.eval_score:.4f} ({row['seconds']:.1f} s)"
    )
    if ctx.exp.trainer_kind.segmented:
        # An ES level compiles its own programs (the search space is the level's surviving weights), which
        # no later level reuses; XLA:CPU keeps every executable mapped, and a long run exhausts the
        # process's memory maps (vm.max_map_count: "LLVM compilation error: Cannot allocate memory" after
        # ≈ 70 levels). GD and PPO take the mask as data and reuse one program: their cache is kept.
        jax.clear_caches()


def _theta0(ctx: _Ctx, seed: int, run_key) -> PyTree:
    k_init, _ = split_run_key(run_key)
    theta0 = ctx.trainer.init_params(k_init)
    path = ctx.root / f"seed_{seed}" / "theta0.npz"
    if path.exists():
        stored, _ = load_tree(path, theta0)
        same = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree_util.tree_leaves(stored), jax.tree_util.tree_leaves(theta0), strict=True)
        )
        if not same:
            raise ValueError(
                f"{path} differs from the θ₀ drawn now for seed {seed} (did the init code change?); "
                "use another --out directory"
            )
    else:
        save_tree(path, theta0)
    return theta0


def _open_branch(ctx: _Ctx, seed: int, name: str) -> Path:
    cdir = ctx.chain(seed, name)
    if not (cdir / "branch.json").exists():
        write_json(cdir / "branch.json", {"criterion": name, "fields": branch_fields(ctx.exp, name)})
    return cdir


def _first_unfinished(cdir: Path, n: int) -> int:
    start = 0
    while start < n and level_done(cdir / f"level_{start}"):
        start += 1
    return start


def _start_mask(ctx: _Ctx, cdir: Path, level: int, run_key, config: loop.IMPConfig, theta0) -> PyTree:
    """The mask a chain continues with at ``level``: ``next_mask.npz`` of level − 1, or — when that level was
    the last of a shorter run (``num_levels`` grew) — the same mask computed again from its saved files
    (``loop.next_mask`` with the level's score key, exactly as an uninterrupted run computes it), then
    saved."""
    prev = cdir / f"level_{level - 1}"
    if (prev / "next_mask.npz").is_file():
        return load_mask(prev / "next_mask.npz", theta0)
    mask = load_mask(prev / "mask.npz", theta0)
    start, _ = load_tree(prev / "theta0.npz", theta0)
    final, _ = load_tree(prev / "final_params.npz", theta0)
    std = load_tree(prev / "std.npz", theta0)[0] if (prev / "std.npz").is_file() else None
    _, k_score = loop.level_keys(run_key, level - 1)
    result = loop.TrainResult(final_params=final, std_params=std)
    nxt = loop.next_mask(
        config, level - 1, result, masks_lib.apply(start, mask), mask, k_score, None, ctx.trainer.name
    )
    save_mask(prev / "next_mask.npz", nxt)
    return nxt


def _skipped(ctx: _Ctx, seed, criterion, done: list[int]) -> None:
    if done:
        ctx.console.print(
            f"  seed {seed} {escape(criterion)}: level(s) {_ranges(done)} finished earlier, skipped"
        )


def _ranges(levels: list[int]) -> str:
    out, start, prev = [], None, None
    for k in sorted(levels):
        if start is None:
            start = prev = k
        elif k == prev + 1:
            prev = k
        else:
            out.append(f"{start}–{prev}" if prev > start else f"{start}")
            start = prev = k
    if start is not None:
        out.append(f"{start}–{prev}" if prev > start else f"{start}")
    return ", ".join(out)


def _meta(ctx: _Ctx, seed: int, name: str, kind: str, source: str) -> dict:
    meta = {"seed": seed, "criterion": name, "kind": kind, "mask_source": source, "trainer": ctx.trainer.name}
    if kind == "baseline" and ctx.exp.baseline_mode == "chain":
        meta["baseline_mode"] = "chain"
    return meta


@contextlib.contextmanager
def _bar(ctx: _Ctx, seed: int, name: str, done: int) -> Iterator[Any]:
    n = ctx.exp.num_levels
    task = ctx.progress.add_task(f"seed {seed} {name}", total=n * _units(ctx), completed=done * _units(ctx))
    try:
        yield task
    finally:
        ctx.progress.remove_task(task)


def _run_imp(ctx: _Ctx, seed: int, criterion: str, run_key, theta0) -> None:
    exp = ctx.exp
    cdir = _open_branch(ctx, seed, criterion)
    n = exp.num_levels
    start = _first_unfinished(cdir, n)
    _skipped(ctx, seed, criterion, list(range(start)))
    if start == n:
        return
    mask = None if start == 0 else _start_mask(ctx, cdir, start, run_key, exp.imp_config(criterion), theta0)
    meta = _meta(ctx, seed, criterion, "imp", criterion)
    with _bar(ctx, seed, criterion, start) as task:
        for level in range(start, n):
            ldir = cdir / f"level_{level}"
            t0 = time.time()
            with _level_context(ctx, ldir, _make_hook(ctx, task, seed, criterion, level)):
                result = loop.run(
                    run_key,
                    ctx.trainer,
                    exp.imp_config(criterion),
                    theta0=theta0,
                    start_level=level,
                    start_mask=mask,
                    end_level=level + 1,
                )
            record = result.records[0]
            meta_l = {**meta, "target_density": exp.schedule.density(level)}
            _finish_level(ctx, ldir, record, masks_lib.apply(theta0, record.mask), meta_l, t0, task)
            mask = record.next_mask


def _run_baseline_branch(ctx: _Ctx, seed: int, name: str, run_key, theta0) -> None:
    """``baseline_mode: branch``: level k transforms the mask-source chain's level-k mask (level 0
    included), keys from ``fold_in(run_key, BASELINE_KEY_OFFSET + index of name)``."""
    exp = ctx.exp
    source = exp.mask_source
    cdir = _open_branch(ctx, seed, name)
    key = jax.random.fold_in(run_key, BASELINE_KEY_OFFSET + BASELINE_CRITERIA.index(name))
    n = exp.num_levels
    done = [k for k in range(n) if level_done(cdir / f"level_{k}")]
    _skipped(ctx, seed, name, done)
    meta = _meta(ctx, seed, name, "baseline", source)
    with _bar(ctx, seed, name, len(done)) as task:
        for level in range(n):
            ldir = cdir / f"level_{level}"
            if level in done:
                continue
            src = ctx.chain(seed, source) / f"level_{level}" / "mask.npz"
            if not src.is_file():
                raise FileNotFoundError(
                    f"baseline {name!r} needs the {source!r} mask of level {level}: {src} is missing"
                )
            mask = load_mask(src, theta0)
            t0 = time.time()
            with _level_context(ctx, ldir, _make_hook(ctx, task, seed, name, level)):
                (record,) = baselines_lib.run_baseline(
                    key, ctx.trainer, name, theta0, {level: mask}, levels=[level]
                )
            meta_l = {**meta, "target_density": exp.schedule.density(level)}
            _finish_level(ctx, ldir, record, record.theta_start, meta_l, t0, task)


def _share_level0(ctx: _Ctx, src: Path, dst: Path, meta: dict) -> None:
    """A chain's level 0 IS the mask-source chain's dense level 0: copy its files (bit-identical) and write
    ``metrics.json`` (last, the "finished" marker) with the chain's criterion and ``shared_from``."""
    if not level_done(src):
        raise FileNotFoundError(f"baseline {meta['criterion']!r} shares level 0 of {src}, unfinished")
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "metrics.json" and not f.name.startswith("."):
            atomic_write(dst / f.name, lambda fh, f=f: fh.write(f.read_bytes()))
    row = {
        **read_json(src / "metrics.json"),
        **meta,
        "shared_from": f"{src.parent.name}/{src.name}",
        "seconds": 0.0,
    }
    write_json(dst / "metrics.json", row)
    ctx.console.print(
        f"  seed {meta['seed']} {escape(meta['criterion'])} level 0: the dense run of "
        f"{escape(meta['mask_source'])}, shared, test {ctx.exp.score} {row[f'test_{ctx.exp.score}']:.4f}"
    )


def _run_baseline_chain(ctx: _Ctx, seed: int, name: str, run_key, theta0) -> None:
    """``baseline_mode: chain``: baseline ``name`` as its own IMP chain (``baselines.run_baseline_chain``).
    Level 0 is the mask-source chain's level 0; level k ≥ 1 transforms the chain's OWN ``next_mask`` of
    level k − 1 and trains with the IMP chain's level keys. Resumes from the chain's last finished level."""
    exp = ctx.exp
    source = exp.mask_source
    cdir = _open_branch(ctx, seed, name)
    n = exp.num_levels
    start = _first_unfinished(cdir, n)
    _skipped(ctx, seed, name, list(range(start)))
    meta = _meta(ctx, seed, name, "baseline", source)
    with _bar(ctx, seed, name, start) as task:
        if start == 0:
            meta_0 = {**meta, "target_density": exp.schedule.density(0)}
            _share_level0(ctx, ctx.chain(seed, source) / "level_0", cdir / "level_0", meta_0)
            ctx.progress.update(task, completed=_units(ctx))
            start = 1
        chain = baselines_lib.chain_config(name, exp.imp_config(source))
        for level in range(start, n):
            ldir = cdir / f"level_{level}"
            mask = _start_mask(ctx, cdir, level, run_key, chain, theta0)
            t0 = time.time()
            with _level_context(ctx, ldir, _make_hook(ctx, task, seed, name, level)):
                (record,) = baselines_lib.run_baseline_chain(
                    run_key,
                    ctx.trainer,
                    name,
                    exp.imp_config(source),
                    theta0,
                    start_level=level,
                    start_mask=mask,
                    end_level=level + 1,
                )
            meta_l = {**meta, "target_density": exp.schedule.density(level)}
            _finish_level(ctx, ldir, record, record.theta_start, meta_l, t0, task)


def summarise(rows: list[dict], score: str = "accuracy") -> dict:
    """Per criterion and level: seeds, mean density, mean ± standard error of the test score
    (``test_<score>`` of the rows: accuracy, or a control task's return)."""
    key = f"test_{score}"
    by: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        by.setdefault((r["criterion"], int(r["level"])), []).append(r)
    out: dict[str, list[dict]] = {}
    for (crit, level), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        acc = np.asarray([np.nan if r.get(key) is None else r[key] for r in rs], float)
        acc = acc[np.isfinite(acc)]
        n = len(acc)
        se = float(np.std(acc, ddof=1) / math.sqrt(n)) if n > 1 else None
        out.setdefault(crit, []).append(
            {
                "level": level,
                "seeds": len(rs),
                "density": float(np.mean([r["density"] for r in rs])),
                "kept": round(float(np.mean([r["kept"] for r in rs]))),
                "total": int(rs[0]["total"]),
                f"{key}_mean": float(np.mean(acc)) if n else None,
                f"{key}_se": se,
                f"{key}_min": float(np.min(acc)) if n else None,
                f"{key}_max": float(np.max(acc)) if n else None,
                "seconds_mean": float(np.mean([r.get("seconds", 0.0) for r in rs])),
            }
        )
    return out


def summary_table(summary: dict, title: str, criteria: tuple[str, ...], score: str = "accuracy") -> Table:
    key = f"test_{score}"
    table = Table(title=title)
    table.add_column("level", justify="right")
    table.add_column("density", justify="right")
    crits = [c for c in criteria if c in summary] + [c for c in summary if c not in criteria]
    for c in crits:
        table.add_column(c, justify="right")
    levels = sorted({e["level"] for es_ in summary.values() for e in es_})
    for level in levels:
        cells, density = [], None
        for c in crits:
            e = next((e for e in summary[c] if e["level"] == level), None)
            if e is None or e[f"{key}_mean"] is None:
                cells.append("–")
                continue
            density = density if density is not None else e["density"]
            se = "" if e[f"{key}_se"] is None else f" ± {e[f'{key}_se']:.4g}"
            cells.append(f"{e[f'{key}_mean']:.4g}{se} ({e['seeds']})")
        table.add_row(str(level), "–" if density is None else f"{density:.4f}", *cells)
    return table


def rows_of(exp: IMPExperiment, out: str | Path) -> list[dict]:
    """The finished levels of ``exp``'s seeds and criteria in ``out``'s store (sorted by seed, criterion,
    level; levels ≥ num_levels left out)."""
    dirs = branch_dirs(exp)
    return [
        r
        for r in collect_rows(data_dir(exp, out), dirs)
        if r["seed"] < exp.seeds and r["criterion"] in exp.criteria and r["level"] < exp.num_levels
    ]


def run_experiment(
    exp: IMPExperiment,
    out: str | Path = "runs",
    console: Console | None = None,
    on_segment: Callable[[dict], Any] | None = None,
) -> Path:
    """Run (or resume) every seed × criterion × level of ``exp`` in ``out``'s store, rebuild the view
    ``<out>/<name>/`` and return its path.

    ``on_segment(info)`` is called after every ES training segment (and its checkpoint), with ``seed``,
    ``criterion``, ``level``, ``generation``, ``num_generations`` and the latest ``eval`` row.
    """
    from es_lottery.experiments import legacy_runs

    console = console or Console()
    legacy_runs.migrate_matching(out, exp.name, "imp", console)
    if exp.env is not None:
        task = exp.control_task()
        trainer = exp.trainer_kind.control(task, exp.trainer)
        data_line = (
            f"{task.env.name} ({task.env.backend or 'gymnax'}), policy {list(task.module.sizes)}, "
            f"{task.train_rollouts} rollouts × {task.episode_length} steps"
        )
        data_info = {"env": to_jsonable(exp.env)}
    else:
        data = load_data(exp)  # missing data fails here, before anything compiles
        module = exp.module()
        check_fit(exp, module, data)
        trainer = make_trainer(exp, module, data)
        data_line = f"{exp.dataset} ({len(data.x_train)}/{len(data.x_test)}), {exp.network.name}"
        data_info = {
            "train": len(data.x_train),
            "test": len(data.x_test),
            **{k: v for k, v in data.info.items() if isinstance(v, str | int | float | bool)},
        }
        if (
            exp.dataset in classification.IMAGE_DATASETS
            and data.info.get("test_split_only")
            and not exp.dataset_args.get("test_split_only")
        ):
            console.print(
                f"[yellow]warning:[/] only the t10k files of {exp.dataset!r} were found: training on "
                f"{len(data.x_train)} and testing on {len(data.x_test)} images of the official TEST set"
            )
    job = trunk(exp, out).ensure()
    write_json(job.path / "data.json", data_info)
    view = View(out, exp.name)
    console.print(
        f"[bold]imp[/] {escape(exp.name)}: {data_line}, {trainer.name}, "
        f"{exp.num_levels} levels × p={exp.prune_rate}, "
        f"criteria {', '.join(exp.criteria)}, {exp.seeds} seed(s) → {view.path} (data: {job.path})"
    )
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    notify = lambda m: console.print(f"  {escape(m)}")  # noqa: E731
    # one writer per trunk: a second run of the same experiment waits here, then skips the finished levels
    with Progress(*columns, console=console) as progress, locks.hold(job.path, f"imp {exp.name}", notify):
        ctx = _Ctx(exp, trainer, job.path, branch_dirs(exp), console, progress, on_segment)
        for seed in range(exp.seeds):
            run_key = jax.random.fold_in(jax.random.key(exp.seed), seed)
            theta0 = _theta0(ctx, seed, run_key)
            for criterion in exp.imp_criteria:
                _run_imp(ctx, seed, criterion, run_key, theta0)
            for name in exp.baseline_criteria:
                if exp.baseline_mode == "chain":
                    _run_baseline_chain(ctx, seed, name, run_key, theta0)
                else:
                    _run_baseline_branch(ctx, seed, name, run_key, theta0)
    return write_view(exp, out, console)


def write_view(exp: IMPExperiment, out: str | Path, console: Console | None = None) -> Path:
    """Rebuild ``<out>/<name>/`` from the store: config, jobs, metrics rows, summary and the plot."""
    view = View(out, exp.name)
    with locks.hold(view.path, f"the view {view.path}"):
        summary = _write_view(exp, out, view)
    if console is not None:
        title = f"{exp.name}: test {exp.score} (mean ± s.e., seeds)"
        console.print(summary_table(summary, title, exp.criteria, exp.score))
    return view.path


def _write_view(exp: IMPExperiment, out: str | Path, view: View) -> dict:
    job = trunk(exp, out)
    rows = rows_of(exp, out)
    view.write_config(exp.resolved())
    data = Path(os.path.relpath(job.path, view.path)).as_posix()
    view.write_jobs({"trunk": job.relpath, "data": data, "branches": branch_dirs(exp)})
    view.write_rows("metrics.jsonl", rows)
    summary = summarise(rows, exp.score)
    data_info = read_json(job.path / "data.json") if (job.path / "data.json").exists() else {}
    view.write_json(
        "summary.json",
        {
            "experiment": config_lib.to_dict(exp.resolved()),
            "store": job.relpath,
            "data": data_info,
            "sparsity_counts": "prunable weights only (kernels; biases are never pruned)",
            "criteria": summary,
        },
    )
    trainer_name = exp.trainer_type if exp.trainer_type != "es" else f"es[{exp.trainer.es.algorithm}]"
    plots.performance_vs_density(
        rows,
        view.path / "plots" / "performance_vs_density.png",
        f"{exp.name}: {exp.dataset or exp.env['name']}, {trainer_name}",
        order=exp.criteria,
        metric=f"test_{exp.score}",
    )
    return summary
