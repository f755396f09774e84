"""Iterative pruning with rewinding (Lange & Sprekeler 2023, Algorithm 1) over any ``Trainer``.

The loop (``run``)::

    k_init, k_levels = split(key)
    θ₀ = trainer.init_params(k_init)                      # drawn ONCE
    m_0 = all ones (dense)
    for level k = start_level … end_level − 1:
        k_train, k_score = split(fold_in(k_levels, k))    # a fresh key per level
        result = trainer.train(k_train, θ₀ ⊙ m_k, m_k)      # REWIND to θ₀, fresh trainer state
        if k < num_levels − 1:
            s = criterion(result.final_params, init=θ₀ ⊙ m_k, std=result.std_params, key=k_score)
            m_{k+1} = masks.prune_to((1 − p)^(k+1), s, m_k, scope)   # nested in m_k
        callback(record_k)

Level k trains at density (1 − p)^k of the PRUNABLE weights (kernels; biases are never pruned, whatever
their value or score). The pruning step ranks only weights that survived level k, so the masks are nested.

The loop is a Python-level driver: levels are few and each level's training is one jitted program inside
the trainer. After every level ``callback(record)`` runs; ``record.next_mask`` is the mask of the next
level, so a run directory that persists ``θ₀`` and the latest ``next_mask`` can resume: calling ``run``
with the same key and config, ``start_level=k``, ``start_mask=m_k`` (and ``theta0=θ₀``) reproduces
levels k, k+1, … exactly as an uninterrupted run would (every level's keys depend only on ``key`` and k).

The Trainer protocol
--------------------
``init_params(key) -> θ₀`` and ``train(key, theta0, mask) -> TrainResult``. ``train`` must start from a
FRESH state each call (a new optimizer state; for an ES: mean θ₀, σ back to σ_init) and keep pruned
weights exactly zero in ``final_params`` (the loop checks this unless ``check_pruned_zero=False``).
``theta0`` already has zeros at pruned entries; an ES may search only the active entries
(``masks.CompressedView.from_mask(mask)``). ``TrainResult.std_params`` is the per-weight std of the final
search distribution (ES) or ``None`` (GD). Optional attributes: ``name`` (used in messages) and
``provides_std`` (``False`` lets the loop reject std-based criteria before any training).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from es_lottery import masks as masks_lib
from es_lottery._checks import check_bool
from es_lottery.keys import split_run_key  # (k_init, k_levels): θ₀ from the first, level keys from the second
from es_lottery.pruning import criteria as criteria_lib
from es_lottery.pruning.schedule import PruningSchedule

PyTree = Any

__all__ = [
    "IMPConfig",
    "IMPResult",
    "LevelRecord",
    "TrainResult",
    "Trainer",
    "check_level_range",
    "check_mask",
    "check_trainer",
    "layer_counts",
    "level_keys",
    "level_record",
    "next_mask",
    "run",
    "run_level",
    "split_run_key",
    "train_checked",
    "train_record",
    "trainer_name",
]


@struct.dataclass
class TrainResult:
    """What one training run at one level returns.

    ``final_params``: trained params (ES: the final mean), zeros at pruned entries.
    ``std_params``: per-weight std of the final search distribution (same tree), or ``None`` (GD).
    ``metrics``: any dict of arrays/numbers (curves, losses). ``eval_score``: the level's test score
    (maximised: accuracy, return). ``task_state``: the task state the final params were evaluated with
    (a control task's observation statistics), or ``None``.
    """

    final_params: PyTree
    std_params: PyTree | None = None
    metrics: dict = struct.field(default_factory=dict)
    eval_score: Any = 0.0
    task_state: PyTree | None = None


@runtime_checkable
class Trainer(Protocol):
    """Anything that can draw an init and train a masked network from it (ES or GD)."""

    def init_params(self, key: jax.Array) -> PyTree: ...

    def train(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> TrainResult: ...


def trainer_name(trainer: Any) -> str:
    return str(getattr(trainer, "name", type(trainer).__name__))


@dataclass(frozen=True)
class IMPConfig:
    """Static settings of one iterative-pruning run (hashable). Defaults are the paper's.

    num_levels: pruning levels, the dense level 0 included (level k keeps (1 − prune_rate)^k).
    prune_rate: fraction of the surviving prunable weights removed per level, in (0, 1).
    criterion: the score that decides what survives (``pruning.criteria.CRITERIA``).
    scope: ``global`` (one threshold over every prunable weight) or ``layerwise`` (each layer alike).
    check_pruned_zero: check that the trainer left pruned weights at exactly zero.
    """

    num_levels: int = 20
    prune_rate: float = 0.2
    criterion: str = "magnitude"
    scope: str = "global"
    check_pruned_zero: bool = True

    def __post_init__(self):
        PruningSchedule(self.prune_rate, self.num_levels, self.scope)  # validates the three fields
        criteria_lib.get_criterion(self.criterion)
        check_bool(self.check_pruned_zero, "check_pruned_zero")

    @property
    def schedule(self) -> PruningSchedule:
        return PruningSchedule(self.prune_rate, self.num_levels, self.scope)

    def replace(self, **kw) -> IMPConfig:
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True, eq=False)
class LevelRecord:
    """One finished level. ``density`` is the schedule's target, ``kept / total`` the exact count of
    prunable weights trained (``total`` counts prunable weights only). ``next_mask`` is the mask of
    level + 1 (``None`` after the last level); persist it to resume."""

    level: int
    density: float
    kept: int
    total: int
    mask: PyTree
    metrics: dict
    eval_score: float
    next_mask: PyTree | None = None
    final_params: PyTree | None = None
    std_params: PyTree | None = None
    theta_start: PyTree | None = None  # baselines: the control init θ₀' ⊙ m' (IMP levels: None, it is θ₀ ⊙ m)
    task_state: PyTree | None = None  # the task state the final params were scored with (control: obs stats)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total


@dataclass(frozen=True, eq=False)
class IMPResult:
    """The run: θ₀ (unmasked, as drawn) and one record per level that ran."""

    theta0: PyTree
    records: tuple[LevelRecord, ...]
    config: IMPConfig

    @property
    def levels(self) -> list[int]:
        return [r.level for r in self.records]

    @property
    def densities(self) -> list[float]:
        return [r.kept / r.total for r in self.records]

    @property
    def eval_scores(self) -> list[float]:
        return [r.eval_score for r in self.records]

    @property
    def masks(self) -> list[PyTree]:
        return [r.mask for r in self.records]


# ----------------------------------------------------------------------------------------------
# keys


def level_keys(key: jax.Array, level: int) -> tuple[jax.Array, jax.Array]:
    """``(k_train, k_score)`` of ``level`` for the RUN key ``key`` (independent of every other level)."""
    _, k_levels = split_run_key(key)
    k_train, k_score = jax.random.split(jax.random.fold_in(k_levels, level))
    return k_train, k_score


# ----------------------------------------------------------------------------------------------
# checks


def check_mask(mask: PyTree, theta0: PyTree, expected_kept: int | None = None, prunable=None, field="mask"):
    """Congruent bool mask, non-prunable leaves all ones, and (optionally) the expected prunable count."""
    masks_lib.check_congruent(theta0, mask, field=field)
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(theta0, prunable))
    for (path, m), is_p in zip(jax.tree_util.tree_leaves_with_path(mask), flags, strict=True):
        if jnp.asarray(m).dtype != jnp.bool_:
            raise ValueError(
                f"{field} leaf '{masks_lib.path_name(path)}' must be bool, got {jnp.asarray(m).dtype}"
            )
        if not is_p and not bool(jnp.all(m)):
            raise ValueError(
                f"{field} leaf '{masks_lib.path_name(path)}' is not prunable (biases are never pruned) "
                "but the mask removes some of its entries"
            )
    if expected_kept is not None:
        kept, total = masks_lib.count(mask, prunable)
        if int(kept) != expected_kept:
            raise ValueError(
                f"{field} keeps {int(kept)} of {total} prunable weights; this level needs {expected_kept}"
            )


def layer_counts(mask: PyTree, prunable=None) -> dict[str, int]:
    """Kept entries per prunable leaf, keyed by path name (host ints)."""
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(mask, prunable))
    return {
        masks_lib.path_name(path): int(jnp.sum(m))
        for (path, m), is_p in zip(jax.tree_util.tree_leaves_with_path(mask), flags, strict=True)
        if is_p
    }


def _check_pruned_zero(final_params: PyTree, mask: PyTree, name: str) -> None:
    for (path, x), m in zip(
        jax.tree_util.tree_leaves_with_path(final_params), jax.tree_util.tree_leaves(mask), strict=True
    ):
        if bool(jnp.any(jnp.where(m, 0, jnp.asarray(x)) != 0)):
            raise ValueError(
                f"{name} returned nonzero values at pruned entries of '{masks_lib.path_name(path)}'; "
                "a trainer must keep pruned weights exactly zero"
            )


# ----------------------------------------------------------------------------------------------
# one level and the whole loop


def next_mask(
    config: IMPConfig,
    level: int,
    result: TrainResult,
    theta_level: PyTree,
    mask: PyTree,
    score_key: jax.Array,
    prunable=None,
    trainer_name: str = "the trainer",
) -> PyTree:
    """The mask of ``level + 1``: score the surviving weights and prune to ``(1 − p)^(level+1)``."""
    scores = criteria_lib.compute_scores(
        config.criterion,
        result.final_params,
        init_params=theta_level,
        std_params=result.std_params,
        key=score_key,
        trainer_name=trainer_name,
    )
    density = config.schedule.density(level + 1)
    return masks_lib.prune_to(density, scores, mask, scope=config.scope, prunable=prunable)


def check_trainer(trainer: Any, criterion: str) -> str:
    """The trainer's name, after checking it implements the ``Trainer`` protocol and suits ``criterion``
    (the SNR criteria need a search distribution)."""
    for method in ("init_params", "train"):
        if not callable(getattr(trainer, method, None)):
            raise TypeError(f"trainer must implement the Trainer protocol; it has no method {method!r}")
    name = trainer_name(trainer)
    criteria_lib.check_trainer_compatible(criterion, getattr(trainer, "provides_std", None), name)
    return name


def check_level_range(config: IMPConfig, start_level, end_level, start_mask, mask_source: str) -> int:
    """The end level of a run of ``config`` from ``start_level`` to ``end_level`` (None: the last), after
    checking both; a resumed run (``start_level > 0``) needs ``start_mask`` (``mask_source`` of level
    ``start_level − 1``)."""
    n = config.num_levels
    if (
        isinstance(start_level, bool)
        or not isinstance(start_level, int | np.integer)
        or not 0 <= start_level < n
    ):
        raise ValueError(f"start_level must be an integer in 0..{n - 1}, got {start_level!r}")
    end = n if end_level is None else end_level
    if isinstance(end, bool) or not isinstance(end, int | np.integer) or not start_level < end <= n:
        raise ValueError(f"end_level must be an integer in {start_level + 1}..{n}, got {end_level!r}")
    if start_level > 0 and start_mask is None:
        raise ValueError(
            f"start_level={start_level} resumes a run and needs start_mask ({mask_source} at level "
            f"{start_level - 1})"
        )
    return int(end)


def train_checked(trainer: Trainer, key: jax.Array, theta: PyTree, mask: PyTree, name: str) -> TrainResult:
    """``trainer.train(key, theta, mask)``, checked to return a ``TrainResult``."""
    result = trainer.train(key, theta, mask)
    if not isinstance(result, TrainResult):
        raise TypeError(f"{name}.train must return a TrainResult, got {type(result).__name__}")
    return result


def train_record(
    trainer: Trainer,
    key: jax.Array,
    theta: PyTree,
    mask: PyTree,
    level: int,
    name: str,
    *,
    keep_params: bool = True,
    prunable=None,
) -> LevelRecord:
    """Train ``theta`` on ``mask`` once (a control ticket, a transferred ticket) and record it as ``level``
    (``theta_start`` = ``theta``, density = the mask's kept fraction)."""
    result = train_checked(trainer, key, theta, mask, name)
    return level_record(level, mask, result, theta_start=theta, keep_params=keep_params, prunable=prunable)


def level_record(
    level: int,
    mask: PyTree,
    result: TrainResult,
    *,
    density: float | None = None,
    next_mask: PyTree | None = None,
    theta_start: PyTree | None = None,
    keep_params: bool = True,
    prunable=None,
) -> LevelRecord:
    """The ``LevelRecord`` of a level trained on ``mask`` (``density``: the schedule's target; default: the
    mask's exact kept fraction); ``keep_params=False`` drops params, stds and the start."""
    kept, total = masks_lib.count(mask, prunable)
    return LevelRecord(
        level=int(level),
        density=int(kept) / total if density is None else density,
        kept=int(kept),
        total=int(total),
        mask=mask,
        metrics=jax.device_get(dict(result.metrics)),
        eval_score=float(jax.device_get(result.eval_score)),
        next_mask=next_mask,
        final_params=result.final_params if keep_params else None,
        std_params=result.std_params if keep_params else None,
        theta_start=theta_start if keep_params else None,
        task_state=result.task_state if keep_params else None,
    )


def run_level(
    key: jax.Array,
    trainer: Trainer,
    theta0: PyTree,
    mask: PyTree,
    level: int,
    config: IMPConfig,
    prunable=None,
    keep_params: bool = True,
) -> LevelRecord:
    """Train level ``level`` from the rewound ``θ₀ ⊙ mask`` and build the next mask (run key ``key``)."""
    name = trainer_name(trainer)
    k_train, k_score = level_keys(key, level)
    theta_level = masks_lib.apply(theta0, mask)
    result = train_checked(trainer, k_train, theta_level, mask, name)
    masks_lib.check_congruent(theta0, result.final_params, field="TrainResult.final_params")
    if result.std_params is not None:
        masks_lib.check_congruent(theta0, result.std_params, field="TrainResult.std_params")
    if config.check_pruned_zero:
        _check_pruned_zero(result.final_params, mask, name)
    nxt = None
    if level < config.num_levels - 1:
        nxt = next_mask(config, level, result, theta_level, mask, k_score, prunable, name)
    return level_record(
        level,
        mask,
        result,
        density=config.schedule.density(level),
        next_mask=nxt,
        keep_params=keep_params,
        prunable=prunable,
    )


def run(
    key: jax.Array,
    trainer: Trainer,
    config: IMPConfig = IMPConfig(),
    *,
    theta0: PyTree | None = None,
    start_level: int = 0,
    start_mask: PyTree | None = None,
    end_level: int | None = None,
    callback: Callable[[LevelRecord], Any] | None = None,
    prunable=None,
    keep_params: bool = True,
) -> IMPResult:
    """Algorithm 1: levels ``start_level … end_level − 1`` (default: all ``config.num_levels``).

    ``theta0``: the unmasked initialisation; ``None`` draws it with ``trainer.init_params(k_init)``.
    ``start_level > 0`` resumes (skipping the finished levels) and needs ``start_mask``, the
    ``next_mask`` recorded at level ``start_level − 1``. ``callback(record)`` runs after every level.
    ``keep_params=False`` drops final params and stds from the records (memory).
    """
    if not isinstance(config, IMPConfig):
        raise TypeError(f"config must be an IMPConfig, got {type(config).__name__}")
    check_trainer(trainer, config.criterion)
    schedule = config.schedule
    end = check_level_range(config, start_level, end_level, start_mask, "the next_mask recorded")
    if theta0 is None:
        k_init, _ = split_run_key(key)
        theta0 = trainer.init_params(k_init)
    schedule.validate_for(theta0, prunable)
    if start_mask is None:
        mask = masks_lib.ones(theta0)
    else:
        expected = schedule.kept(start_level, theta0, prunable)
        check_mask(start_mask, theta0, expected, prunable, field="start_mask")
        if config.scope == "layerwise":
            want = schedule.kept_per_layer(start_level, theta0, prunable)
            have = layer_counts(start_mask, prunable)
            for leaf, n in want.items():
                if have[leaf] != n:
                    raise ValueError(
                        f"start_mask keeps {have[leaf]} weights of '{leaf}'; level {start_level} "
                        f"(layerwise) needs {n}"
                    )
        mask = jax.tree_util.tree_map(lambda m: jnp.asarray(m, bool), start_mask)
    records = []
    for level in range(int(start_level), int(end)):
        record = run_level(key, trainer, theta0, mask, level, config, prunable, keep_params)
        records.append(record)
        if callback is not None:
            callback(record)
        mask = record.next_mask
    return IMPResult(theta0=theta0, records=tuple(records), config=config)
