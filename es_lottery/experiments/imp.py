"""ES lottery-ticket experiments (Lange & Sprekeler 2023): YAML config → resumable run directory.

Config (``configs/imp/*.yaml``)::

    name: mnist_sep_cma
    dataset: mnist                 # any of tasks.classification.DATASETS
    dataset_args: {}               # loader arguments, e.g. {test_split_only: true, split_train: 8000}
    network: {name: paper_cnn}     # paper_cnn | mlp (sizes: [...]) | lenet_300_100; + weight_init, …
    trainer:                       # type es: ESConfig fields + the ESTrainerConfig fields below
      type: es
      algorithm: Sep_CMA_ES
      population_size: 128
      sigma_init: 0.025
      num_generations: 4000
      eval_every: 100
      batch_size: 1024
      checkpoint_every: 500        # mid-level orbax checkpoints (a multiple of eval_every)
      use_best_mean: false
    # trainer: {type: gd, epochs: 20, learning_rate: 3.0e-4, batch_size: 128}   (GDConfig fields)
    imp: {num_levels: 20, prune_rate: 0.2, scope: global}
    criteria: [magnitude, snr, random_reinit]
    baseline_mode: chain           # chain (default) | branch: how the baselines in criteria run, see below
    seeds: 5
    seed: 0

``criteria`` mixes IMP criteria (``pruning.criteria.CRITERIA``: magnitude, snr, snr_sep_cma_compat, random,
movement, magnitude_increase, smallest_initial) and ticket baselines (``pruning.baselines.BASELINES``:
random_reinit, mask_reinit, permute_weights, permute_mask_and_weights). A baseline controls the
``magnitude`` run of the same seed (or the first IMP criterion listed when magnitude is not: the "mask
source") and trains with the same trainer. ``baseline_mode`` says how (rules and sources: the module doc of
``pruning.baselines``):

* ``chain`` (default; the original code's semantics, the paper's Fig. 2 / Fig. 8 curves): each baseline is
  its own IMP chain. Its level 0 IS the mask source's dense level 0 (files copied, not retrained; the row
  says ``shared_from``); level k ≥ 1 transforms the chain's OWN ``next_mask`` of level k − 1 (pruned from
  its own trained network by the mask source's criterion) and trains the control ticket;
  ``baselines.run_baseline_chain``.
* ``branch`` (the behaviour before the key existed): level k (0 included) transforms the mask source's
  level-k mask once, a one-shot control of that IMP ticket; ``baselines.run_baseline``.

The resolved (hashed) config holds ``baseline_mode`` only when baselines are listed and the mode is not
``branch``, so configs without baselines and ``branch`` configs keep their run-directory names.

Keys and randomness. Seed s uses the run key ``fold_in(key(seed), s)``: θ₀ = ``trainer.init_params`` of
its first half (``loop.split_run_key``), shared by every criterion of the seed; level k of an IMP
criterion trains with ``loop.level_keys(run_key, k)`` (so level 0 is the same dense run for every IMP
criterion); a baseline chain trains and scores level k with the same ``loop.level_keys(run_key, k)`` and
transforms with ``baselines.chain_transform_key(run_key, k)``, common to all baselines (as in the
original); a branch-mode baseline b uses ``fold_in(run_key, BASELINE_KEY_OFFSET + index of b)`` and
``baselines.run_baseline``'s per-level keys.

Run directory ``<out>/<name>-<hash>/`` (hash over the resolved config without ``seeds``, so adding seeds
later reuses the finished ones)::

    config.yaml  metrics.jsonl  summary.json  plots/performance_vs_density.png
    seed_<s>/theta0.npz                       the unmasked θ₀ of the seed
    seed_<s>/<criterion>/level_<k>/
        mask.npz         the level's mask, prunable entries bit-packed (masks.pack) + kept/total
        next_mask.npz    IMP criteria and baseline chains: the mask of level k+1 (what a resume starts
                         from; a chain's is its pruned mask before the baseline's transform)
        theta0.npz       the level's start: θ₀ ⊙ m_k (baselines: their control init θ₀' ⊙ m')
        final_params.npz the trained params (ES: the final — or best — search mean)
        std.npz          ES: per-weight std of the search distribution (zeros at pruned entries)
        curves.npz       eval / per-generation (ES) or per-epoch (GD) curves
        metrics.json     written LAST: its presence marks the level as finished
        checkpoint/      ES: orbax checkpoints of the run state inside the level (removed when done)

Re-running a config into the same ``--out`` skips finished levels (the trainer is not called for them)
and resumes an unfinished ES level from its latest checkpoint; the result is bitwise identical to an
uninterrupted run. Arrays are stored with their params-tree path names (e.g. ``dense_0/kernel``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import time
from collections.abc import Callable
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
from es_lottery import networks, plots
from es_lottery.experiments.rundir import RunDir, check_dataset, check_keys, load_yaml, to_jsonable
from es_lottery.pruning import baselines as baselines_lib
from es_lottery.pruning import criteria as criteria_lib
from es_lottery.pruning import loop
from es_lottery.pruning.es_trainer import ESTrainer, ESTrainerConfig, OrbaxCheckpointer
from es_lottery.pruning.gd import GDConfig, GDTrainer
from es_lottery.pruning.schedule import SCOPES, PruningSchedule
from es_lottery.search import es
from es_lottery.tasks import classification

PyTree = Any

TOP_KEYS = (
    "env",
    "name",
    "dataset",
    "dataset_args",
    "network",
    "trainer",
    "imp",
    "criteria",
    "seeds",
    "seed",
    "baseline_mode",
)
TRAINER_TYPES = ("es", "gd")
ES_FIELDS = tuple(f.name for f in dataclasses.fields(es.ESConfig))
ES_TRAINER_FIELDS = tuple(f.name for f in dataclasses.fields(ESTrainerConfig) if f.name != "es")
GD_FIELDS = tuple(f.name for f in dataclasses.fields(GDConfig))
NETWORK_KEYS = {
    "mlp": ("sizes", "hidden_activation", "output_activation", "weight_init"),
    "paper_cnn": ("weight_init", "num_classes"),
    "lenet_300_100": ("weight_init",),
}
NETWORK_ALIASES = {"lenet": "lenet_300_100", "cnn": "paper_cnn"}
DEFAULT_WEIGHT_INIT = "lecun_normal"  # flax's default: the "standard init" of the paper's code (zero biases)
IMP_KEYS = ("num_levels", "prune_rate", "scope")
IMP_CRITERIA = tuple(criteria_lib.CRITERIA)
BASELINE_CRITERIA = tuple(baselines_lib.BASELINES)
ALL_CRITERIA = IMP_CRITERIA + BASELINE_CRITERIA
BASELINE_KEY_OFFSET = 1000
BASELINE_MODES = ("chain", "branch")  # chain: the original's chains (default); branch: one-shot, as before
LOADER_FNS = {
    "moons": classification.moons,
    "circles": classification.circles,
    "blobs": classification.blobs,
    "digits": classification.digits,
    "xor": classification.xor,
    **dict.fromkeys(classification.IMAGE_DATASETS, classification.image_dataset),
}

__all__ = [
    "ALL_CRITERIA",
    "IMPExperiment",
    "collect_rows",
    "load_config",
    "parse_config",
    "run_experiment",
    "summarise",
]


# ----------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class IMPExperiment:
    """A validated IMP experiment (see the module doc for the YAML form). Classification experiments have
    ``dataset`` and ``network``; control experiments have ``env`` (the policy is ``env.policy``)."""

    name: str
    dataset: str | None
    network: dict | None
    trainer: ESTrainerConfig | GDConfig
    criteria: tuple[str, ...]
    dataset_args: dict = field(default_factory=dict)
    num_levels: int = 20
    prune_rate: float = 0.2
    scope: str = "global"
    seeds: int = 5
    seed: int = 0
    baseline_mode: str = "chain"
    env: dict | None = None

    @property
    def trainer_type(self) -> str:
        return "es" if isinstance(self.trainer, ESTrainerConfig) else "gd"

    @property
    def score(self) -> str:
        """The level score's name: ``accuracy`` (classification) or ``return`` (control); rows hold it as
        ``test_<score>``."""
        return "accuracy" if self.env is None else "return"

    def control_task(self):
        """The control task of the ``env`` section (``tasks.control.ControlTask``)."""
        from es_lottery.tasks import control

        return control.control_task_from_config(self.env)

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
        return "magnitude" if "magnitude" in imp else imp[0]

    @property
    def schedule(self) -> PruningSchedule:
        return PruningSchedule(self.prune_rate, self.num_levels, self.scope)

    def imp_config(self, criterion: str) -> loop.IMPConfig:
        return loop.IMPConfig(self.num_levels, self.prune_rate, criterion, self.scope)

    def module(self) -> nn.Module:
        if self.env is not None:
            return self.control_task().module
        return build_module(self.network)

    def trainer_dict(self) -> dict:
        if isinstance(self.trainer, ESTrainerConfig):
            # The run directory's name hashes this dict. ESConfig fields added after the first configs were
            # hashed (``ESConfig.ADDED_FIELDS``) are left out while they hold the value that reproduces the
            # behaviour from before they existed (their default as added) or do not apply to the algorithm
            # (validation keeps them at their default then), so a new field renames no existing run
            # directory, while a config that changes behaviour through one hashes differently.
            cfg = self.trainer.es
            d = {"type": "es"}
            for k, v in dataclasses.asdict(cfg).items():
                neutral, algorithms = cfg.ADDED_FIELDS.get(k, (None, None))
                if algorithms is None or (cfg.algorithm in algorithms and v != neutral):
                    d[k] = v
            d.update({k: getattr(self.trainer, k) for k in ES_TRAINER_FIELDS})
            return d
        return {"type": "gd", **dataclasses.asdict(self.trainer)}

    def resolved(self, with_seeds: bool = True) -> dict:
        if self.env is None:
            d = {
                "name": self.name,
                "dataset": self.dataset,
                "dataset_args": dict(self.dataset_args),
                "network": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.network.items()},
            }
        else:
            d = {"name": self.name, "env": to_jsonable(self.env)}
        d.update(
            {
                "trainer": self.trainer_dict(),
                "imp": {"num_levels": self.num_levels, "prune_rate": self.prune_rate, "scope": self.scope},
                "criteria": list(self.criteria),
                "seed": self.seed,
            }
        )
        d.update(_resolved_baseline_mode(self))
        if with_seeds:
            d["seeds"] = self.seeds
        return d


def _fail(where: str, err: Exception) -> Exception:
    return type(err)(f"{where}: {err}")


def _int_field(value, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"field '{where}' must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _parse_dataset(data: dict) -> tuple[str, dict]:
    if "dataset" not in data:
        raise ValueError(
            f"imp config needs the field 'dataset' (one of: {', '.join(classification.DATASETS)})"
        )
    name = check_dataset(data["dataset"])
    args = data.get("dataset_args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"field 'dataset_args' must be a mapping, got {type(args).__name__}")
    allowed = [p for p in inspect.signature(LOADER_FNS[name]).parameters if p != "name"]
    check_keys(args, allowed, "dataset_args")
    return name, dict(args)


def _parse_network(spec) -> dict:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(
            f"field 'network' must be a mapping with 'name' (one of: {', '.join(networks.NETWORKS)}), "
            f"got {spec!r}"
        )
    kind = spec["name"]
    kind = NETWORK_ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if not isinstance(kind, str) or kind not in NETWORK_KEYS:
        raise ValueError(
            f"unknown network {kind!r} in field 'network.name'; allowed: {', '.join(NETWORK_KEYS)} "
            f"(aliases: {', '.join(f'{a} = {b}' for a, b in NETWORK_ALIASES.items())})"
        )
    check_keys(spec, ("name", *NETWORK_KEYS[kind]), "network")
    out = {"name": kind, **{k: v for k, v in spec.items() if k != "name"}}
    out.setdefault("weight_init", DEFAULT_WEIGHT_INIT)
    if kind == "mlp":
        sizes = out.get("sizes")
        if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
            raise ValueError(f"field 'network.sizes' must be a list of ≥ 2 layer sizes, got {sizes!r}")
        out["sizes"] = [
            int(s) if isinstance(s, (int, np.integer)) and not isinstance(s, bool) else s for s in sizes
        ]
    try:
        module = build_module(out)
    except (ValueError, TypeError) as err:
        raise _fail("network", err) from None
    return {**out, "sizes": list(module.sizes)} if kind == "mlp" else out


def build_module(network: dict) -> nn.Module:
    """The flax module of a resolved ``network`` mapping."""
    kw = {k: (tuple(v) if k == "sizes" else v) for k, v in network.items() if k != "name"}
    return networks.make_network(network["name"], **kw)


def _parse_trainer(spec) -> ESTrainerConfig | GDConfig:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(f"field 'trainer' must be a mapping, got {type(spec).__name__}")
    kind = spec.get("type", "es")
    if kind not in TRAINER_TYPES:
        raise ValueError(f"unknown trainer type {kind!r} in field 'trainer.type'; allowed: es, gd")
    body = {k: v for k, v in spec.items() if k != "type"}
    if kind == "gd":
        check_keys(body, ("type", *GD_FIELDS), "trainer")
        try:
            return GDConfig(**body)
        except (ValueError, TypeError) as err:
            raise _fail("trainer", err) from None
    check_keys(body, ("type", *ES_FIELDS, *ES_TRAINER_FIELDS), "trainer")
    es_kw = {k: v for k, v in body.items() if k in ES_FIELDS}
    tr_kw = {k: v for k, v in body.items() if k in ES_TRAINER_FIELDS}
    if "algorithm" in es_kw and es_kw["algorithm"] not in es.ALGORITHMS:
        raise ValueError(
            f"unknown ES algorithm {es_kw['algorithm']!r} in field 'trainer.algorithm'; "
            f"allowed: {', '.join(es.ALGORITHMS)}"
        )
    float_fields = ("sigma_init", "lr", "lr_decay", "lr_limit", "mean_decay")
    float_fields += ("elite_ratio", "temperature", "sigma_decay", "sigma_limit")
    for k in float_fields:
        if isinstance(es_kw.get(k), int) and not isinstance(es_kw.get(k), bool):
            es_kw[k] = float(es_kw[k])  # YAML "1" and "1.0" must resolve (and hash) the same
    try:
        return ESTrainerConfig(es=es.ESConfig(**es_kw), **tr_kw)
    except (ValueError, TypeError) as err:
        raise _fail("trainer", err) from None


def _parse_imp(spec) -> dict:
    spec = {} if spec is None else spec
    check_keys(spec, IMP_KEYS, "imp")
    out = {"num_levels": 20, "prune_rate": 0.2, "scope": "global", **spec}
    if out["scope"] not in SCOPES:
        raise ValueError(f"unknown scope {out['scope']!r} in field 'imp.scope'; allowed: {', '.join(SCOPES)}")
    try:
        PruningSchedule(out["prune_rate"], out["num_levels"], out["scope"])
    except (ValueError, TypeError) as err:
        raise _fail("imp", err) from None
    if isinstance(out["prune_rate"], int):
        out["prune_rate"] = float(out["prune_rate"])
    return out


def _parse_criteria(spec, trainer) -> tuple[str, ...]:
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(
            f"field 'criteria' must be a non-empty list; allowed entries: {', '.join(ALL_CRITERIA)}"
        )
    for c in spec:
        if c not in ALL_CRITERIA:
            raise ValueError(
                f"unknown criterion {c!r} in field 'criteria'; allowed: {', '.join(ALL_CRITERIA)}"
            )
    dup = sorted({c for c in spec if spec.count(c) > 1})
    if dup:
        raise ValueError(f"field 'criteria' lists {', '.join(dup)} more than once")
    if not any(c in IMP_CRITERIA for c in spec):
        raise ValueError(
            f"field 'criteria' holds only baselines ({', '.join(spec)}); they transform the masks of an IMP "
            f"criterion of the same run, so list one too (one of: {', '.join(IMP_CRITERIA)})"
        )
    provides_std = isinstance(trainer, ESTrainerConfig)
    for c in spec:
        if c in IMP_CRITERIA:
            try:
                criteria_lib.check_trainer_compatible(c, provides_std, "trainer type 'gd'")
            except ValueError as err:
                raise _fail("criteria", err) from None
    return tuple(spec)


def _parse_baseline_mode(data: dict) -> str:
    """The top-level ``baseline_mode`` key: ``chain`` (default) or ``branch`` (see ``_run_baseline``)."""
    mode = data.get("baseline_mode", "chain")
    if not isinstance(mode, str) or mode not in BASELINE_MODES:
        raise ValueError(f"unknown baseline mode {mode!r} in field 'baseline_mode'; allowed: chain, branch")
    return mode


def _resolved_baseline_mode(exp: IMPExperiment) -> dict:
    """``baseline_mode`` in the resolved (hashed) config only where it changes behaviour from before the key
    existed: with baselines listed and a mode other than ``branch``. Configs without baselines, and
    ``branch`` ones, keep their run-directory names; the ``chain`` default renames configs with baselines
    (their numbers differ from those of the one-shot branches)."""
    if exp.baseline_criteria and exp.baseline_mode != "branch":
        return {"baseline_mode": exp.baseline_mode}
    return {}


def parse_config(data: dict, seeds: int | None = None) -> IMPExperiment:
    """Validate a config mapping. Every error names its field (and the allowed values); nothing is
    compiled and no data is loaded."""
    if not isinstance(data, dict):
        raise ValueError("an imp config must be a mapping")
    check_keys(data, TOP_KEYS, "imp config")
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"field 'name' must be a non-empty string usable as a directory name, got {name!r}")
    env = None
    if "env" in data:
        env = _parse_env(data)
        dataset, dataset_args, network = None, {}, None
    else:
        dataset, dataset_args = _parse_dataset(data)
        if "network" not in data:
            raise ValueError(
                f"imp config needs the field 'network' (name: one of {', '.join(NETWORK_KEYS)}), or an 'env' "
                "section for a control task"
            )
        network = _parse_network(data["network"])
    trainer = _parse_trainer(data.get("trainer"))
    if env is not None and not isinstance(trainer, ESTrainerConfig):
        raise ValueError(
            "field 'trainer.type': a control task ('env') trains with type es (gd is classification's Adam)"
        )
    imp = _parse_imp(data.get("imp"))
    if "criteria" not in data:
        raise ValueError(f"imp config needs the field 'criteria' (a list of: {', '.join(ALL_CRITERIA)})")
    crit = _parse_criteria(data["criteria"], trainer)
    n_seeds = _int_field(seeds if seeds is not None else data.get("seeds", 5), "seeds", 1)
    seed = _int_field(data.get("seed", 0), "seed", 0)
    exp = IMPExperiment(
        name=name,
        dataset=dataset,
        dataset_args=dataset_args,
        network=network,
        trainer=trainer,
        criteria=crit,
        num_levels=int(imp["num_levels"]),
        prune_rate=imp["prune_rate"],
        scope=imp["scope"],
        seeds=n_seeds,
        seed=seed,
        baseline_mode=_parse_baseline_mode(data),
        env=env,
    )
    shapes = jax.eval_shape(lambda: networks.init_params(jax.random.key(0), exp.module()))
    try:
        exp.schedule.validate_for(shapes)
    except ValueError as err:
        raise _fail("imp.num_levels", err) from None
    return exp


def _parse_env(data: dict) -> dict:
    """The ``env`` section of a control experiment: validated by building its task (every bad field named
    in one line, nothing compiled)."""
    from es_lottery.tasks import control

    clash = [k for k in ("dataset", "dataset_args", "network") if k in data]
    if clash:
        raise ValueError(
            f"field '{clash[0]}' does not apply with 'env': a control experiment takes its policy network "
            "from env.policy (hidden sizes, activation, action mode)"
        )
    spec = data["env"]
    try:
        control.control_task_from_config(spec)
    except (ValueError, TypeError) as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith("env") else f"env: {msg}") from None
    return dict(spec)


def load_config(path: str | Path, seeds: int | None = None) -> IMPExperiment:
    return parse_config(load_yaml(path), seeds)


# ----------------------------------------------------------------------------------------------
# data and trainer (before anything compiles)


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
            f"field 'network': {exp.network['name']} takes inputs of shape {want}, but dataset "
            f"{exp.dataset!r} has inputs of shape {x_shape}"
        )
    shapes = jax.eval_shape(lambda: networks.init_params(jax.random.key(0), module))
    xb = jax.ShapeDtypeStruct((1, *want), jnp.float32)
    n_out = jax.eval_shape(lambda p, x: networks.apply(module, p, x), shapes, xb).shape[-1]
    if n_out < data.num_classes:
        raise ValueError(
            f"field 'network': the network has {n_out} outputs but dataset {exp.dataset!r} has "
            f"{data.num_classes} classes"
        )


def make_trainer(exp: IMPExperiment, module: nn.Module, data: classification.Dataset):
    if isinstance(exp.trainer, ESTrainerConfig):
        return ESTrainer.from_dataset(module, data, exp.trainer)
    return GDTrainer.from_dataset(module, data, exp.trainer)


# ----------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open(mode) as fh:
        write(fh)
    os.replace(tmp, path)


def _tree_arrays(tree: PyTree) -> dict[str, np.ndarray]:
    return {
        masks_lib.path_name(p): np.asarray(jax.device_get(x))
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def save_tree(path: Path, tree: PyTree) -> None:
    """A params-like tree as ``.npz`` keyed by path names (``dense_0/kernel``)."""
    arrays = _tree_arrays(tree)
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_tree(path: Path, like: PyTree) -> PyTree:
    """Inverse of :func:`save_tree` for a tree shaped like ``like``."""
    with np.load(path) as data:
        leaves = []
        for p, x in jax.tree_util.tree_leaves_with_path(like):
            name = masks_lib.path_name(p)
            if name not in data.files:
                raise ValueError(f"{path} lacks the array {name!r}")
            arr = data[name]
            if arr.shape != tuple(np.shape(x)):
                raise ValueError(f"{path}: {name!r} has shape {arr.shape}, expected {np.shape(x)}")
            leaves.append(jnp.asarray(arr))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def save_mask(path: Path, mask: PyTree) -> None:
    kept, total = masks_lib.count(mask)
    packed = np.asarray(masks_lib.pack(mask))
    _atomic_write(
        path, lambda fh: np.savez(fh, packed=packed, kept=np.int64(int(kept)), total=np.int64(int(total)))
    )


def load_mask(path: Path, like: PyTree) -> PyTree:
    with np.load(path) as data:
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
    curves = _flat_curves(record.metrics)
    _atomic_write(ldir / "curves.npz", lambda fh: np.savez(fh, **curves))
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
    text = json.dumps(to_jsonable(row), indent=2) + "\n"
    _atomic_write(ldir / "metrics.json", lambda fh: fh.write(text), mode="w")
    shutil.rmtree(ldir / "checkpoint", ignore_errors=True)
    return row


def collect_rows(path: Path) -> list[dict]:
    """Every finished level's ``metrics.json`` under a run directory, sorted by seed, criterion, level."""
    rows = []
    for f in Path(path).glob("seed_*/*/level_*/metrics.json"):
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
    rundir: RunDir
    console: Console
    progress: Progress
    on_segment: Callable[[dict], Any] | None


def _level_context(ctx: _Ctx, ldir: Path, hook: Callable[[dict], Any]):
    if isinstance(ctx.trainer, ESTrainer):
        return ctx.trainer.checkpointing(OrbaxCheckpointer(ldir / "checkpoint"), hook)
    return contextlib.nullcontext()


def _units(ctx: _Ctx) -> int:
    """Progress units per level (generations for ES, 1 for GD)."""
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
    ctx.rundir.append("metrics.jsonl", [row])
    ctx.progress.update(task, completed=(record.level + 1) * _units(ctx))
    ctx.console.print(
        f"  seed {meta['seed']} {escape(meta['criterion'])} level {record.level}: "
        f"{record.kept}/{record.total} prunable ({record.kept / record.total:.2%}), "
        f"test {ctx.exp.score} {record.eval_score:.4f} ({row['seconds']:.1f} s)"
    )


def _theta0(ctx: _Ctx, seed: int, run_key) -> PyTree:
    k_init, _ = loop.split_run_key(run_key)
    theta0 = ctx.trainer.init_params(k_init)
    path = ctx.root / f"seed_{seed}" / "theta0.npz"
    if path.exists():
        stored = load_tree(path, theta0)
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
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tree(path, theta0)
    return theta0


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


def _run_imp(ctx: _Ctx, seed: int, criterion: str, run_key, theta0) -> None:
    exp = ctx.exp
    cdir = ctx.root / f"seed_{seed}" / criterion
    cfg = exp.imp_config(criterion)
    n = exp.num_levels
    start = 0
    while start < n and level_done(cdir / f"level_{start}"):
        start += 1
    task = ctx.progress.add_task(
        f"seed {seed} {criterion}", total=n * _units(ctx), completed=start * _units(ctx)
    )
    _skipped(ctx, seed, criterion, list(range(start)))
    if start == n:
        ctx.progress.remove_task(task)
        return
    mask = None if start == 0 else load_mask(cdir / f"level_{start - 1}" / "next_mask.npz", theta0)
    meta = {
        "seed": seed,
        "criterion": criterion,
        "kind": "imp",
        "mask_source": criterion,
        "trainer": ctx.trainer.name,
    }
    for level in range(start, n):
        ldir = cdir / f"level_{level}"
        t0 = time.time()
        with _level_context(ctx, ldir, _make_hook(ctx, task, seed, criterion, level)):
            result = loop.run(
                run_key,
                ctx.trainer,
                cfg,
                theta0=theta0,
                start_level=level,
                start_mask=mask,
                end_level=level + 1,
            )
        record = result.records[0]
        meta_l = {**meta, "target_density": exp.schedule.density(level)}
        _finish_level(ctx, ldir, record, masks_lib.apply(theta0, record.mask), meta_l, t0, task)
        mask = record.next_mask
    ctx.progress.remove_task(task)


def _run_baseline(ctx: _Ctx, seed: int, name: str, run_key, theta0) -> None:
    """Baseline ``name`` of one seed, as ``exp.baseline_mode`` says: ``chain`` (default; the original's
    semantics, ``baselines.run_baseline_chain``) or ``branch`` (one-shot branches off the IMP masks)."""
    if ctx.exp.baseline_mode == "chain":
        _run_baseline_chain(ctx, seed, name, run_key, theta0)
    else:
        _run_baseline_branch(ctx, seed, name, run_key, theta0)


def _run_baseline_branch(ctx: _Ctx, seed: int, name: str, run_key, theta0) -> None:
    """``baseline_mode: branch``: level k transforms the mask-source chain's level-k mask (level 0
    included), keys from ``fold_in(run_key, BASELINE_KEY_OFFSET + index of name)``."""
    exp = ctx.exp
    sdir = ctx.root / f"seed_{seed}"
    source = exp.mask_source
    key = jax.random.fold_in(run_key, BASELINE_KEY_OFFSET + BASELINE_CRITERIA.index(name))
    n = exp.num_levels
    done = [k for k in range(n) if level_done(sdir / name / f"level_{k}")]
    task = ctx.progress.add_task(
        f"seed {seed} {name}", total=n * _units(ctx), completed=len(done) * _units(ctx)
    )
    _skipped(ctx, seed, name, done)
    meta = {
        "seed": seed,
        "criterion": name,
        "kind": "baseline",
        "mask_source": source,
        "trainer": ctx.trainer.name,
    }
    for level in range(n):
        ldir = sdir / name / f"level_{level}"
        if level in done:
            continue
        src = sdir / source / f"level_{level}" / "mask.npz"
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
    ctx.progress.remove_task(task)


def _share_level0(ctx: _Ctx, src: Path, dst: Path, meta: dict) -> None:
    """A chain's level 0 IS the mask-source chain's dense level 0: copy its files (bit-identical) and write
    ``metrics.json`` (last, the "finished" marker) with the chain's criterion and ``shared_from``."""
    if not level_done(src):
        raise FileNotFoundError(f"baseline {meta['criterion']!r} shares level 0 of {src}, unfinished")
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "metrics.json" and not f.name.startswith("."):
            _atomic_write(dst / f.name, lambda fh, f=f: fh.write(f.read_bytes()))
    row = {
        **json.loads((src / "metrics.json").read_text()),
        **meta,
        "shared_from": f"{src.parent.name}/{src.name}",
        "seconds": 0.0,
    }
    text = json.dumps(to_jsonable(row), indent=2) + "\n"
    _atomic_write(dst / "metrics.json", lambda fh: fh.write(text), mode="w")
    ctx.rundir.append("metrics.jsonl", [row])
    ctx.console.print(
        f"  seed {meta['seed']} {escape(meta['criterion'])} level 0: the dense run of "
        f"{escape(meta['mask_source'])}, shared, test {ctx.exp.score} {row[f'test_{ctx.exp.score}']:.4f}"
    )


def _run_baseline_chain(ctx: _Ctx, seed: int, name: str, run_key, theta0) -> None:
    """``baseline_mode: chain``: baseline ``name`` as its own IMP chain (``baselines.run_baseline_chain``).
    Level 0 is the mask-source chain's level 0; level k ≥ 1 transforms the chain's OWN ``next_mask`` of
    level k − 1 and trains with the IMP chain's level keys. Resumes from the chain's last finished level."""
    exp = ctx.exp
    sdir = ctx.root / f"seed_{seed}"
    cdir = sdir / name
    source = exp.mask_source
    cfg = exp.imp_config(source)
    n = exp.num_levels
    start = 0
    while start < n and level_done(cdir / f"level_{start}"):
        start += 1
    task = ctx.progress.add_task(f"seed {seed} {name}", total=n * _units(ctx), completed=start * _units(ctx))
    _skipped(ctx, seed, name, list(range(start)))
    meta = {
        "seed": seed,
        "criterion": name,
        "kind": "baseline",
        "mask_source": source,
        "trainer": ctx.trainer.name,
        "baseline_mode": "chain",
    }
    if start == 0:
        meta_0 = {**meta, "target_density": exp.schedule.density(0)}
        _share_level0(ctx, sdir / source / "level_0", cdir / "level_0", meta_0)
        ctx.progress.update(task, completed=_units(ctx))
        start = 1
    for level in range(start, n):
        ldir = cdir / f"level_{level}"
        mask = load_mask(cdir / f"level_{level - 1}" / "next_mask.npz", theta0)
        t0 = time.time()
        with _level_context(ctx, ldir, _make_hook(ctx, task, seed, name, level)):
            (record,) = baselines_lib.run_baseline_chain(
                run_key,
                ctx.trainer,
                name,
                cfg,
                theta0,
                start_level=level,
                start_mask=mask,
                end_level=level + 1,
            )
        meta_l = {**meta, "target_density": exp.schedule.density(level)}
        _finish_level(ctx, ldir, record, record.theta_start, meta_l, t0, task)
    ctx.progress.remove_task(task)


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


def run_experiment(
    exp: IMPExperiment,
    out: str | Path = "runs",
    console: Console | None = None,
    on_segment: Callable[[dict], Any] | None = None,
) -> Path:
    """Run (or resume) every seed × criterion × level of ``exp``; returns the run directory.

    ``on_segment(info)`` is called after every ES training segment (and its checkpoint), with ``seed``,
    ``criterion``, ``level``, ``generation``, ``num_generations`` and the latest ``eval`` row.
    """
    console = console or Console()
    if exp.env is not None:
        task = exp.control_task()
        trainer = ESTrainer.from_task(task, exp.trainer)
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
        data_line = f"{exp.dataset} ({len(data.x_train)}/{len(data.x_test)}), {exp.network['name']}"
        data_info = {
            "train": len(data.x_train),
            "test": len(data.x_test),
            **{k: v for k, v in data.info.items() if isinstance(v, (str, int, float, bool))},
        }
    if (
        exp.env is None
        and exp.dataset in classification.IMAGE_DATASETS
        and data.info.get("test_split_only")
        and not exp.dataset_args.get("test_split_only")
    ):
        console.print(
            f"[yellow]warning:[/] only the t10k files of {exp.dataset!r} were found: training on "
            f"{len(data.x_train)} and testing on {len(data.x_test)} images of the official TEST set"
        )
    rundir = RunDir(out, exp.name, exp.resolved(with_seeds=False))
    root = rundir.path
    console.print(
        f"[bold]imp[/] {exp.name}: {data_line}, {trainer.name}, "
        f"{exp.num_levels} levels × p={exp.prune_rate}, "
        f"criteria {', '.join(exp.criteria)}, {exp.seeds} seed(s) → {root}"
    )
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        ctx = _Ctx(exp, trainer, root, rundir, console, progress, on_segment)
        for seed in range(exp.seeds):
            run_key = jax.random.fold_in(jax.random.key(exp.seed), seed)
            theta0 = _theta0(ctx, seed, run_key)
            for criterion in exp.imp_criteria:
                _run_imp(ctx, seed, criterion, run_key, theta0)
            for name in exp.baseline_criteria:
                _run_baseline(ctx, seed, name, run_key, theta0)
    rows = [r for r in collect_rows(root) if r["seed"] < exp.seeds and r["criterion"] in exp.criteria]
    text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows)
    _atomic_write(root / "metrics.jsonl", lambda fh: fh.write(text), mode="w")
    summary = summarise(rows, exp.score)
    rundir.write_json(
        "summary.json",
        {
            "experiment": exp.resolved(),
            "config_hash": rundir.hash,
            "data": data_info,
            "sparsity_counts": "prunable weights only (kernels; biases are never pruned)",
            "criteria": summary,
        },
    )
    plots.performance_vs_density(
        rows,
        root / "plots" / "performance_vs_density.png",
        f"{exp.name}: {exp.dataset or exp.env['name']}, {trainer.name}",
        order=exp.criteria,
        metric=f"test_{exp.score}",
    )
    title = f"{exp.name}: test {exp.score} (mean ± s.e., seeds)"
    console.print(summary_table(summary, title, exp.criteria, exp.score))
    return root
