"""ES trainer for iterative pruning: ``ESTrainer`` implements the ``Trainer`` protocol over ``search.es``.

Every call of :meth:`ESTrainer.train` (one pruning level) starts a FRESH evolution strategy
(``es.init``): mean = θ₀ ⊙ mask in the configured search space (``"compressed"`` by default: only the
surviving weights and every bias are searched, as in the original code), σ = ``sigma_init`` everywhere and
a new optimiser state. It then trains ``num_generations`` generations with ``es.run``, evaluating the mean
on the test set every ``eval_every`` generations, and returns

* ``final_params`` — the final search mean (or, with ``use_best_mean=True``, the mean with the best test
  accuracy among the evaluations; the paper uses the final mean), exact zeros at pruned entries;
* ``std_params`` — the per-weight std of the search distribution at that mean (``es.std_params``:
  PGPE/SNES/DES ``std``, Sep-CMA-ES ``std·sqrt(C)``, ARS/Open-ES the scalar std), zeros at pruned entries;
* ``eval_score`` — the test accuracy of that mean; ``metrics`` — the eval and per-generation curves.

Checkpoint / resume inside a level
----------------------------------
Training runs in SEGMENTS of ``checkpoint_every`` generations (one segment when it is ``None``). After each
segment the trainer saves the ES run state and the history so far with its checkpointer (if one is set)
and then calls its segment hook (if one is set). On the next ``train`` call with the same level inputs the
checkpointer's latest state is restored and training continues from that generation. Because
``es.run`` gives generation g the key ``fold_in(k_run, g)``, and because an uninterrupted run executes
exactly the same segments (the segmentation is a function of the config, not of interruptions), a resumed
level is bitwise identical to an uninterrupted one. ``checkpoint_every`` must be a multiple of
``eval_every`` so that the evaluation points (and hence the best mean) do not depend on it either.

:class:`NpzCheckpointer` keeps the latest state in one ``.npz`` (the package's one array format,
``es_lottery.treeio``), replaced atomically after every segment. The experiment driver
(``experiments/imp.py``) gives every level its own checkpoint directory via :meth:`ESTrainer.checkpointing`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import masks as masks_lib
from es_lottery import networks, treeio
from es_lottery._checks import check_int
from es_lottery.pruning.loop import TrainResult
from es_lottery.search import es
from es_lottery.tasks import base as tasks_base

PyTree = Any
SegmentHook = Callable[[dict], Any]

__all__ = [
    "ESTrainer",
    "ESTrainerConfig",
    "NpzCheckpointer",
    "SegmentCheckpointer",
]


@dataclass(frozen=True)
class ESTrainerConfig:
    """Static settings of the ES trainer (hashable). Defaults: the paper's vision settings.

    es: the ``ESConfig`` (algorithm, population size, σ_init, optimiser, search space …).
    num_generations: generations per pruning level.
    eval_every: generations between evaluations of the mean on the test set (and at the end).
    batch_size: training examples per generation (a fresh batch each generation; ``None`` = all).
    checkpoint_every: generations per segment; the run state is checkpointed after each segment
        (``None``: one segment, no mid-level checkpoint). Must be a multiple of ``eval_every``.
    use_best_mean: return the best-evaluated mean instead of the final one.
    chunk_size: data chunk of the population kernels (``"auto"``, an int, or ``None``).
    """

    es: es.ESConfig = dataclasses.field(
        default_factory=es.ESConfig,
        metadata={"inline": True, "doc": "the ES (its fields sit in trainer: directly)"},
    )
    num_generations: int = 4000
    eval_every: int = 100
    batch_size: int | None = 1024
    checkpoint_every: int | None = None
    use_best_mean: bool = False
    chunk_size: int | str | None = "auto"

    def __post_init__(self):
        if not isinstance(self.es, es.ESConfig):
            raise TypeError(f"es must be an ESConfig, got {type(self.es).__name__}")
        check_int(self.num_generations, "num_generations", 1)
        check_int(self.eval_every, "eval_every", 1)
        check_int(self.batch_size, "batch_size", 1, allow_none=True)
        check_int(self.checkpoint_every, "checkpoint_every", 1, allow_none=True)
        if self.checkpoint_every is not None and self.checkpoint_every % self.eval_every:
            raise ValueError(
                f"checkpoint_every must be a multiple of eval_every ({self.eval_every}), got "
                f"{self.checkpoint_every}: the evaluation points must not depend on the checkpoints"
            )
        if not isinstance(self.use_best_mean, (bool, np.bool_)):
            raise ValueError(f"use_best_mean must be a bool, got {self.use_best_mean!r}")
        if self.chunk_size is not None and self.chunk_size != "auto":
            check_int(self.chunk_size, "chunk_size", 1)

    @property
    def segment(self) -> int:
        """Generations per segment."""
        return self.num_generations if self.checkpoint_every is None else self.checkpoint_every

    def replace(self, **kw) -> ESTrainerConfig:
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------------------
# checkpointing


class SegmentCheckpointer(Protocol):
    """Saves and restores the ES run state of ONE training run (one level)."""

    def save(self, state: es.ESRunState, history: dict) -> None: ...

    def restore(self, template: es.ESRunState) -> tuple[es.ESRunState, dict] | None: ...


def _host(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


class NpzCheckpointer:
    """``SegmentCheckpointer`` keeping the latest state in ``<directory>/state.npz`` (``es_lottery.treeio``:
    the package's one array format): the ``ESRunState``'s leaves by tree path under ``state/``, the
    history so far under ``history/`` and the generation in the metadata. Its static parts (search space,
    algorithm) come from the template at restore time, which also checks every array's name, shape and
    dtype; host arrays, so a checkpoint restores on any device layout. Each save replaces the file
    atomically."""

    FILE = "state.npz"

    def __init__(self, directory: str | Path, on_damaged: Callable[[Path, str], None] | None = None):
        self.directory = Path(directory)
        self.on_damaged = on_damaged

    @property
    def path(self) -> Path:
        return self.directory / self.FILE

    def latest_generation(self) -> int | None:
        if not self.path.is_file():
            return None
        try:
            return int(treeio.load_arrays(self.path)[1]["generation"])
        except (ValueError, KeyError, TypeError):
            return None

    def save(self, state: es.ESRunState, history: dict) -> None:
        arrays = {f"state/{k}": v for k, v in treeio.tree_arrays(state).items()}
        arrays.update({f"history/{k}": v for k, v in treeio.tree_arrays(history).items()})
        treeio.save_arrays(self.path, arrays, {"generation": int(jax.device_get(state.generation))})

    def restore(self, template: es.ESRunState) -> tuple[es.ESRunState, dict] | None:
        """The saved (state, history), or None when there is none. A checkpoint that does not read back
        (truncated, empty, random bytes, another layout, inconsistent) is deleted and ``on_damaged(path,
        message)`` told (default: a ``RuntimeWarning``): the level then runs from generation 0, to the
        same numbers."""
        if not self.path.is_file():
            return None
        try:
            arrays, meta = treeio.load_arrays(self.path)
            parts = treeio.nested(arrays)
            flat = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
            state = treeio.tree_from_arrays(flat, template, str(self.path))
            if int(state.generation) != int(meta.get("generation", -1)):
                raise ValueError(
                    f"{self.path} is inconsistent: its state is at generation {int(state.generation)}, "
                    f"its metadata says {meta.get('generation')}"
                )
        except (ValueError, KeyError, TypeError) as err:
            message = str(err) if str(self.path) in str(err) else f"{self.path}: unusable ({err})"
            self.path.unlink(missing_ok=True)
            if self.on_damaged is not None:
                self.on_damaged(self.path, message)
            else:
                warnings.warn(f"{message}; deleted it, the level restarts", RuntimeWarning, stacklevel=2)
            return None
        return state, parts.get("history", {})


# ----------------------------------------------------------------------------------------------
# the trainer


def _as_device(state: es.ESRunState) -> es.ESRunState:
    """Every leaf through host memory as a strongly typed array: a state fresh from ``es.run`` and one
    restored from a checkpoint enter the next segment in exactly the same form (same avals, same
    compiled program)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(jax.device_get(x))), state)


def _segment_info(generation: int, total: int, history: dict, train: dict, seconds: float) -> dict:
    """What a segment hook gets: the generation, the latest eval row, the segment's last fitness
    statistics and (tasks that count them: control) its env steps and env steps per second."""
    info = {
        "generation": generation,
        "num_generations": total,
        "eval": {k: float(v[-1]) for k, v in history["eval"].items()},
        "fitness_max": float(train["fitness_max"][-1]),
        "fitness_mean": float(train["fitness_mean"][-1]),
        "seconds": seconds,
    }
    if "env_steps" in train:
        steps = float(np.sum(train["env_steps"]))
        info["env_steps"] = steps
        info["env_steps_per_s"] = steps / max(seconds, 1e-9)
    return info


def _concat(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: _concat(a[k], b[k]) if isinstance(b[k], dict) else np.concatenate([a[k], b[k]]) for k in b}


class ESTrainer:
    """Masked ES trainer (``Trainer`` protocol) for iterative pruning, on any task of the task protocol.

    Classification keeps its constructor: ``ESTrainer(module, x_train, y_train, x_test, y_test, config)``
    — fitness −cross-entropy on a fresh training batch per generation, evaluation the test accuracy of the
    mean (``es.make_classification_task``); image inputs keep their (n, 28, 28, 1) shape, MLPs flatten
    trailing dimensions. Any other task (control, a user's function): :meth:`from_task`. The task's state
    (a control task's observation statistics) is part of the ES run state, its checkpoints and the
    result (``TrainResult.task_state``: the state the returned mean was evaluated with).
    """

    provides_std = True

    def __init__(
        self,
        module: nn.Module,
        x_train,
        y_train,
        x_test,
        y_test,
        config: ESTrainerConfig = ESTrainerConfig(),
    ):
        if not isinstance(config, ESTrainerConfig):
            raise TypeError(f"config must be an ESTrainerConfig, got {type(config).__name__}")
        module.validate()
        task = es.make_classification_task(
            module, x_train, y_train, x_test, y_test, config.batch_size, config.chunk_size
        )
        self._setup(task, config, lambda key: networks.init_params(key, module))
        self.module = module

    def _setup(self, task, config: ESTrainerConfig, init_params: Callable[[jax.Array], PyTree]) -> None:
        self.task = task
        self.config = config
        self._init_params = init_params
        self.module = getattr(task, "module", None)
        self.checkpointer: SegmentCheckpointer | None = None
        self.on_segment: SegmentHook | None = None

    @classmethod
    def from_task(
        cls,
        task,
        config: ESTrainerConfig = ESTrainerConfig(),
        init_params: Callable[[jax.Array], PyTree] | None = None,
    ) -> ESTrainer:
        """A trainer on any task of the protocol (``es_lottery.tasks.base.Task``). θ₀ comes from
        ``init_params(key)`` or, when omitted, the task's own ``init_params`` (tasks that own a network).
        ``config.batch_size`` and ``chunk_size`` belong to classification and are ignored here."""
        if not isinstance(config, ESTrainerConfig):
            raise TypeError(f"config must be an ESTrainerConfig, got {type(config).__name__}")
        tasks_base.check_task(task)
        if init_params is None:
            init_params = getattr(task, "init_params", None)
            if not callable(init_params):
                raise ValueError(
                    f"{type(task).__name__} has no init_params: pass init_params=... (key -> params tree)"
                )
        elif not callable(init_params):
            raise TypeError("init_params must be callable: init_params(key) -> params tree")
        trainer = cls.__new__(cls)
        trainer._setup(task, config, init_params)
        return trainer

    @classmethod
    def from_dataset(cls, module: nn.Module, dataset, config: ESTrainerConfig = ESTrainerConfig()):
        """From a ``tasks.classification.Dataset``."""
        return cls(module, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, config)

    @property
    def name(self) -> str:
        return f"es[{self.config.es.algorithm}]"

    @contextlib.contextmanager
    def checkpointing(
        self, checkpointer: SegmentCheckpointer | None, on_segment: SegmentHook | None = None
    ) -> Iterator[ESTrainer]:
        """Within the block, ``train`` checkpoints with ``checkpointer`` and calls ``on_segment(info)``
        after every segment (``info``: generation, num_generations, the latest eval row)."""
        old = (self.checkpointer, self.on_segment)
        self.checkpointer, self.on_segment = checkpointer, on_segment
        try:
            yield self
        finally:
            self.checkpointer, self.on_segment = old

    # -- the Trainer protocol ------------------------------------------------------------------

    def init_params(self, key: jax.Array) -> PyTree:
        return self._init_params(key)

    def init_state(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> es.ESRunState:
        """A FRESH ES on ``mask``: mean θ₀ ⊙ mask, σ = σ_init, new optimiser state, generation 0 (and a
        fresh task state)."""
        return _as_device(es.init(key, theta0, mask, self.config.es, self.task))

    def train(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> TrainResult:
        masks_lib.check_congruent(theta0, mask)
        cfg = self.config
        k_init, k_run = jax.random.split(key)
        state = self.init_state(k_init, theta0, mask)
        history = None
        if self.checkpointer is not None:
            restored = self.checkpointer.restore(state)
            if restored is not None:
                state, history = restored
        generation = int(state.generation)
        total = cfg.num_generations
        if generation > total:
            raise ValueError(f"the restored ES state is at generation {generation} > num_generations={total}")
        while generation < total:
            n = min(cfg.segment, total - generation)
            t0 = time.perf_counter()
            state, hist = es.advance(k_run, state, self.task, cfg.es, n, cfg.eval_every)
            state = _as_device(state)
            seconds = time.perf_counter() - t0
            hist = _host(hist)
            history = _concat(history, hist)
            generation += n
            if self.checkpointer is not None:
                self.checkpointer.save(state, history)
            if self.on_segment is not None:
                self.on_segment(_segment_info(generation, total, history, hist["train"], seconds))
        return self._result(state, history)

    def _result(self, state: es.ESRunState, history: dict) -> TrainResult:
        best = bool(self.config.use_best_mean)
        evals = history["eval"]
        key = self.task.score_key
        if best:  # the first evaluation that reached best_eval (the state es.run kept); none if all NaN
            hits = np.flatnonzero(evals[key] == np.float32(jax.device_get(state.best_eval)))
            row = int(hits[0]) if hits.size else None
        else:  # es.run always evaluates the mean after the last generation
            row = len(evals[key]) - 1
        final = es.mean_params(state, best=best)
        std = es.std_params(state, best=best)
        task_state = state.best_task_state if best else state.task_state
        chosen = {
            f"test_{k}": float("nan") if row is None else float(v[row])
            for k, v in evals.items()
            if k not in ("generation", "best_eval")
        }
        metrics = {
            "eval": evals,
            "train": history["train"],
            **chosen,
            "chosen_generation": 0 if row is None else int(evals["generation"][row]),
            "generations": int(state.generation),
        }
        return TrainResult(
            final_params=final,
            std_params=std,
            metrics=metrics,
            eval_score=chosen[f"test_{key}"],
            task_state=_host(task_state) if task_state is not None else None,
        )
