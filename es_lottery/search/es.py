"""A thin typed adapter over evosax 0.3.x distribution-based evolution strategies.

What it adds to evosax
----------------------
* **One fitness direction.** Our API maximises (accuracy, return, −loss); evosax minimises. Fitness is
  negated exactly once, in :func:`tell`, right before ``algorithm.tell``.
* **Non-finite fitness never reaches the search state.** NaN/±inf values are replaced by the worst finite
  fitness of the generation before ``tell`` and counted in the metrics (``n_nonfinite``). When no member of
  a generation has a finite fitness the update is skipped (the search state stays as it was), and so is
  any update that would leave a non-finite number in the state (``update_skipped``).
* **Mean decay** (the paper's ``mean_decay``, removed from evosax): after every ``tell``,
  ``mean ← mean · (1 − mean_decay)``.
* **Search spaces over a mask** (:class:`SearchSpace`): ``"compressed"`` searches only the active entries
  (prunable weights kept by the mask + every non-prunable leaf such as biases, zero-valued ones included —
  the active set comes from the mask, never from the values), as the original code did; ``"masked"`` keeps
  the full dimension and holds pruned entries at exactly zero (samples are zeroed after ``ask``, the mean is
  re-zeroed after ``tell``; their reported std is 0). Note that evosax's dimension-dependent constants
  (SNES's std learning rate, CMA's ``chi_n``/``c_std``/``c_c``…) then see the full dimension, so the two
  spaces are NOT the same algorithm; ``"compressed"`` is the paper's setting.
* **Per-weight std** (:func:`per_weight_std`): the std of the search distribution per coordinate —
  PGPE/SNES/DES ``state.std`` (a vector); Sep-CMA-ES ``state.std · sqrt(C)`` (exactly what ``ask`` samples
  with: ``sqrt(clip(C, 0, 1e8) + 1e-8)``); ARS/Open-ES a scalar ``std`` broadcast (so SNR = magnitude);
  CMA-ES ``std · sqrt(diag C)``.
* **Pure, jittable training** (:func:`init`, :func:`step`, :func:`run` for a fresh ES, :func:`advance` to
  continue a state — the GA's and NeTS's verbs): ``advance`` is a ``lax.scan`` over chunks of
  ``eval_every`` generations; after each chunk the mean is evaluated and the best-scoring search state kept.

evosax details that matter (0.3.2)
----------------------------------
* ``std_init`` lives in the algorithm *params* for PGPE/SNES/DES/Sep-CMA-ES/CMA-ES, but ARS and Open-ES
  take their std from ``std_schedule`` (the ``std_init`` param of ARS is unused): we pass
  ``optax.constant_schedule(sigma_init)``.
* Default fitness shaping: PGPE and Open-ES centred ranks, ARS identity; SNES, DES, Sep-CMA-ES and CMA-ES use
  ``weights_fitness_shaping_fn``, whose output IS the rank-based recombination weights of the update (best
  member → largest weight). Replacing it by centred ranks or z-scores would reverse or break those updates,
  so for these four only ``fitness_shaping="default"`` is accepted (an order-preserving pre-shaping would
  be a no-op on rank weights anyway).
* Algorithms that take an optax optimizer: PGPE (default ClipUp lr 0.01, max velocity 0.02), SNES and DES
  (SGD lr 1.0 — the natural-gradient step), ARS (Adam 1e-3), Open-ES (SGD 1e-3). Sep-CMA-ES and CMA-ES
  take none.
* PGPE, ARS and Open-ES sample antithetically and need an even population.
* CMA-ES / Sep-CMA-ES have ``std_min = 0``: on a problem they solve exactly, the step size underflows to
  0 after a few hundred generations and the next update is 0/0 = NaN everywhere. We set
  ``std_min = CMA_STD_MIN`` (1e-30), which changes nothing before that point.
* Rank weights come from ``rankdata`` (average ranks) truncated to integers, so tied fitness values (common
  once an ES has converged) make the weights no longer sum to their nominal value. In the masked space this
  would let SNES's std at pruned coordinates drift without bound; hence the freezing described in ``tell``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from evosax.algorithms.distribution_based import (
    ARS,
    CMA_ES,
    PGPE,
    SNES,
    DiscoveredES,
    Open_ES,
    Sep_CMA_ES,
)
from evosax.algorithms.distribution_based import sep_cma_es as _sep_cma_es
from evosax.core import fitness_shaping as _shaping
from evosax.core.optimizer import scale_by_clipup
from flax import struct

from es_lottery import masks as masks_lib
from es_lottery._checks import check_choice, check_int, check_number, check_positive
from es_lottery.keys import generation_key
from es_lottery.search import paper_settings
from es_lottery.tasks import base as tasks_base
from es_lottery.tasks import classification

PyTree = Any

ALGORITHMS = ("PGPE", "SNES", "Sep_CMA_ES", "DES", "ARS", "Open_ES", "CMA_ES")
OPTIMIZERS = ("default", "adam", "sgd", "clipup")
FITNESS_SHAPINGS = ("default", "centered_rank", "z_score", "none")
SEARCH_SPACES = ("compressed", "masked")

EVOSAX_CLASSES = {
    "PGPE": PGPE,
    "SNES": SNES,
    "Sep_CMA_ES": Sep_CMA_ES,
    "DES": DiscoveredES,
    "ARS": ARS,
    "Open_ES": Open_ES,
    "CMA_ES": CMA_ES,
}
TAKES_OPTIMIZER = ("PGPE", "SNES", "DES", "ARS", "Open_ES")
EVEN_POPULATION = ("PGPE", "ARS", "Open_ES")  # antithetic sampling
RANK_WEIGHTED = ("SNES", "DES", "Sep_CMA_ES", "CMA_ES")  # default shaping = recombination weights
SCALAR_STD = ("ARS", "Open_ES")
CLIPUP_VELOCITY_RATIO = 2.0  # max_velocity = 2 · lr, as evosax's PGPE default (0.02 / 0.01)
LOW_FITNESS = -1e30  # stands in for non-finite fitness when a generation has no finite value at all
CMA_STD_MIN = 1e-30  # evosax's CMA step size may underflow to exactly 0, then (x − mean)/std = 0/0 = NaN
FROZEN_IN_MASKED = ("std", "C")  # per-coordinate statistics held fixed at pruned coordinates (masked space)
TASK_KEY = 7919  # the task state is initialised with fold_in(init key, TASK_KEY)
SUMMED_TASK_METRICS = ("env_steps",)  # per-member task metrics summed into the per-generation history

__all__ = [
    "ALGORITHMS",
    "FITNESS_SHAPINGS",
    "OPTIMIZERS",
    "SEARCH_SPACES",
    "ESConfig",
    "ESRunState",
    "SearchSpace",
    "ask",
    "best_mean_params",
    "generation_key",
    "init",
    "init_from_space",
    "make_algorithm",
    "make_classification_task",
    "make_space",
    "make_task",
    "mean_params",
    "per_weight_std",
    "run",
    "std_params",
    "std_vector",
    "step",
    "tell",
    "train",
]


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ESConfig:
    """Static ES settings (hashable; passed as a static argument).

    algorithm: one of ``ALGORITHMS`` (``"DES"`` is evosax's ``DiscoveredES``).
    population_size: members per generation (even for PGPE, ARS, Open_ES).
    sigma_init: initial std of every coordinate (> 0).
    optimizer: ``"default"`` (evosax's default for the algorithm), ``"adam"``, ``"sgd"`` or ``"clipup"``
        (max velocity 2·lr); only for algorithms that take an optax optimizer (``TAKES_OPTIMIZER``).
    lr: learning rate of an explicit optimizer (required then; must be None with ``"default"``).
    lr_decay, lr_limit: ``lr_t = max(lr · lr_decay**t, lr_limit)`` per generation (old-evosax style);
        ``lr_decay=1`` keeps lr constant.
    fitness_shaping: ``"default"`` (evosax's default for the algorithm), ``"centered_rank"``, ``"z_score"``
        or ``"none"``; the last three only for PGPE, ARS and Open_ES (see the module doc).
    mean_decay: after each tell ``mean ← mean · (1 − mean_decay)``; in [0, 1).
    search_space: ``"compressed"`` (active entries only) or ``"masked"`` (full dimension, pruned = 0).

    The paper's evosax 0.1.4 settings (:mod:`es_lottery.search.paper_settings`):
    sep_cma_rates: Sep-CMA-ES only: ``"evosax_0.1.4"`` (default: the separable learning rates of the paper's
        evosax, c_μ scaled by (n + 2)/3, so that the diagonal C adapts and SNR differs from magnitude) or
        ``"evosax_0.3"`` (0.3.2's constants, inherited from full CMA-ES: C barely moves at n ≈ 10⁴).
    elite_ratio: Sep-CMA-ES only: None (= 0.5) or the fraction in (0, 1] of the population that gets a
        positive recombination weight (sets the weights and μ_eff); other values than 0.5 need
        ``sep_cma_rates="evosax_0.1.4"`` (evosax 0.3 fixes its weights at the top half).
    temperature: SNES only: 0 (evosax's rank weights) or > 0: evosax 0.1.4's ``softmax(−T · centred
        rank)`` weights (the paper: 12).
    sigma_decay, sigma_limit: PGPE only: after each tell ``std ← max(std · sigma_decay, sigma_limit)``
        (evosax 0.1.4; the paper: 0.999 and 0.01); sigma_decay in (0, 1], sigma_limit ≥ 0. The defaults
        1 and 0 leave std untouched.
    """

    # Fields added after run directories were first named by a hash of every field, each with the value
    # that reproduces the behaviour from before it existed and the algorithms it applies to. The IMP
    # experiments' ``trainer_dict`` (the hashed dict) leaves such a field out while it holds that value or
    # does not apply to the algorithm, so adding a field renames no existing run directory.
    ADDED_FIELDS: ClassVar[dict[str, tuple[Any, tuple[str, ...]]]] = {
        "sep_cma_rates": ("evosax_0.3", ("Sep_CMA_ES",)),
        "elite_ratio": (None, ("Sep_CMA_ES",)),
        "temperature": (0.0, ("SNES",)),
        "sigma_decay": (1.0, ("PGPE",)),
        "sigma_limit": (0.0, ("PGPE",)),
    }

    algorithm: str = "SNES"
    population_size: int = 128
    sigma_init: float = 0.05
    optimizer: str = "default"
    lr: float | None = None
    lr_decay: float = 1.0
    lr_limit: float = 0.0
    fitness_shaping: str = "default"
    mean_decay: float = 0.0
    search_space: str = "compressed"
    sep_cma_rates: str = "evosax_0.1.4"
    elite_ratio: float | None = None
    temperature: float = 0.0
    sigma_decay: float = 1.0
    sigma_limit: float = 0.0

    def __post_init__(self):
        check_choice(self.algorithm, ALGORITHMS, "algorithm")
        p = check_int(self.population_size, "population_size", 2)
        if self.algorithm in EVEN_POPULATION and p % 2:
            raise ValueError(
                f"population_size must be even for {self.algorithm} (antithetic sampling), got {p}"
            )
        check_positive(self.sigma_init, "sigma_init")
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        if self.optimizer != "default" and self.algorithm not in TAKES_OPTIMIZER:
            raise ValueError(
                f"optimizer must be 'default' for {self.algorithm} (it takes no optax optimizer); "
                f"explicit optimizers are for {', '.join(TAKES_OPTIMIZER)}"
            )
        if self.optimizer == "default":
            if self.lr is not None or self.lr_decay != 1.0 or self.lr_limit != 0.0:
                raise ValueError(
                    "lr, lr_decay and lr_limit need an explicit optimizer "
                    f"({', '.join(OPTIMIZERS[1:])}); optimizer='default' uses evosax's own settings"
                )
        else:
            if self.lr is None:
                raise ValueError(f"lr is required with optimizer={self.optimizer!r}")
            check_positive(self.lr, "lr")
        check_number(self.lr_decay, "lr_decay", 0.0, 1.0, lo_open=True)
        check_number(self.lr_limit, "lr_limit", 0.0)
        check_choice(self.fitness_shaping, FITNESS_SHAPINGS, "fitness_shaping")
        if self.fitness_shaping != "default" and self.algorithm in RANK_WEIGHTED:
            raise ValueError(
                f"fitness_shaping must be 'default' for {self.algorithm}: its default shaping produces the "
                "rank-based recombination weights of the update; other shapings are for "
                f"{', '.join(a for a in ALGORITHMS if a not in RANK_WEIGHTED)}"
            )
        check_number(self.mean_decay, "mean_decay", 0.0, 1.0, hi_open=True)
        check_choice(self.search_space, SEARCH_SPACES, "search_space")
        check_choice(self.sep_cma_rates, paper_settings.SEP_CMA_RATES, "sep_cma_rates")
        if self.elite_ratio is not None:
            check_number(self.elite_ratio, "elite_ratio", 0.0, 1.0, lo_open=True)
            if self.sep_cma_rates == "evosax_0.3" and self.elite_ratio != paper_settings.DEFAULT_ELITE_RATIO:
                raise ValueError(
                    f"elite_ratio={self.elite_ratio!r} needs sep_cma_rates='evosax_0.1.4': evosax 0.3's "
                    "Sep-CMA-ES fixes its recombination weights at the top half (elite_ratio 0.5 or None)"
                )
        check_number(self.temperature, "temperature", 0.0)
        check_number(self.sigma_decay, "sigma_decay", 0.0, 1.0, lo_open=True)
        check_number(self.sigma_limit, "sigma_limit", 0.0)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, (_, algorithms) in self.ADDED_FIELDS.items():
            value = getattr(self, name)
            if self.algorithm not in algorithms and value != defaults[name]:
                raise ValueError(
                    f"{name} applies to {', '.join(algorithms)} only; leave it at its default "
                    f"{defaults[name]!r} for {self.algorithm}, got {value!r}"
                )

    def replace(self, **kw) -> ESConfig:
        return dataclasses.replace(self, **kw)


def _optimizer(config: ESConfig) -> optax.GradientTransformation:
    lr: Any = float(config.lr)
    if config.lr_decay != 1.0:
        lr = optax.exponential_decay(
            lr, transition_steps=1, decay_rate=float(config.lr_decay), end_value=float(config.lr_limit)
        )
    if config.optimizer == "adam":
        return optax.adam(lr)
    if config.optimizer == "sgd":
        return optax.sgd(lr)
    # clipup: normalise the gradient, momentum velocity clipped at CLIPUP_VELOCITY_RATIO (× lr), scale by lr
    return optax.chain(
        optax.normalize_by_update_norm(eps=1e-8),
        scale_by_clipup(max_velocity_ratio=CLIPUP_VELOCITY_RATIO, momentum=0.9),
        optax.scale_by_learning_rate(lr),
    )


_SHAPING_FNS = {
    "centered_rank": _shaping.centered_rank_fitness_shaping_fn,
    "z_score": _shaping.standardize_fitness_shaping_fn,
    "none": _shaping.identity_fitness_shaping_fn,
}


@functools.lru_cache(maxsize=128)
def make_algorithm(config: ESConfig, dim: int):
    """(evosax algorithm, its params) for ``config`` over ``dim``-dimensional vectors (cached).

    Built eagerly (``jax.ensure_compile_time_eval``) so that the cached objects hold no tracers even when
    first requested inside a jitted function.

    The paper's evosax 0.1.4 settings (:mod:`~es_lottery.search.paper_settings`) enter here: Sep-CMA-ES
    with ``sep_cma_rates="evosax_0.1.4"`` is :class:`~es_lottery.search.paper_settings.SepCMAES014` (its
    elite ratio ``elite_ratio``); PGPE with a ``sigma_decay``/``sigma_limit`` is
    :class:`~es_lottery.search.paper_settings.PGPEStdDecay`; SNES with ``temperature`` > 0 gets 0.1.4's
    temperature weights as ``params.weights``. At the defaults the algorithms are evosax's own.
    """
    if not isinstance(config, ESConfig):
        raise TypeError(f"config must be an ESConfig, got {type(config).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"the search dimension must be ≥ 1, got {dim!r} (does the mask keep anything?)")
    name = config.algorithm
    cls = EVOSAX_CLASSES[name]
    kwargs: dict[str, Any] = {}
    if config.optimizer != "default":
        kwargs["optimizer"] = _optimizer(config)
    if config.fitness_shaping != "default":
        kwargs["fitness_shaping_fn"] = _SHAPING_FNS[config.fitness_shaping]
    if name in SCALAR_STD:
        kwargs["std_schedule"] = optax.constant_schedule(float(config.sigma_init))
    if name == "Sep_CMA_ES" and config.sep_cma_rates == "evosax_0.1.4":
        cls = paper_settings.SepCMAES014
        if config.elite_ratio is not None:
            kwargs["elite_ratio"] = float(config.elite_ratio)
    if name == "PGPE" and (config.sigma_decay != 1.0 or config.sigma_limit != 0.0):
        cls = paper_settings.PGPEStdDecay
        kwargs.update(std_decay=float(config.sigma_decay), std_limit=float(config.sigma_limit))
    with jax.ensure_compile_time_eval():
        algo = cls(int(config.population_size), jnp.zeros((int(dim),), jnp.float32), **kwargs)
        params = algo.default_params
        if name == "SNES" and config.temperature > 0:
            weights = paper_settings.snes_temperature_weights(config.population_size, config.temperature)
            params = params.replace(weights=jnp.asarray(weights, jnp.float32))
        if hasattr(params, "std_init"):
            params = params.replace(std_init=jnp.asarray(config.sigma_init, jnp.float32))
        if hasattr(params, "std_min"):  # CMA_ES, Sep_CMA_ES: a floor that only acts after std underflows
            params = params.replace(std_min=CMA_STD_MIN)
    return algo, params


def per_weight_std(config_or_name: ESConfig | str, es_state, sep_cma_compat: bool = False) -> jax.Array:
    """Per-coordinate std ``(D,)`` of the search distribution held in an evosax ``es_state``.

    PGPE/SNES/DES: ``state.std``. Sep-CMA-ES: ``state.std · sqrt(C)`` (with evosax's clipping and diagonal
    loading, i.e. exactly the std ``ask`` samples with). ARS/Open-ES: the scalar ``state.std`` broadcast.
    CMA-ES: ``state.std · sqrt(diag C)`` (the marginal std).

    ``sep_cma_compat=True`` (compatibility option, Sep-CMA-ES only; ignored by the others) returns the
    quantity the original es-lottery code divided by: ``state.std · C`` — the step size times the diagonal
    *variance*, not a std. (Its "final" network used ``C`` alone; with a scalar step size both rank weights
    identically.) Use it only to reproduce the original SNR rankings.
    """
    name = config_or_name.algorithm if isinstance(config_or_name, ESConfig) else config_or_name
    check_choice(name, ALGORITHMS, "algorithm")
    mean = es_state.mean
    if name in ("PGPE", "SNES", "DES"):
        return jnp.broadcast_to(es_state.std, mean.shape)
    if name == "Sep_CMA_ES":
        if sep_cma_compat:
            return es_state.std * es_state.C
        _, d = _sep_cma_es.eigen_decomposition(es_state.C)
        return es_state.std * d
    if name in SCALAR_STD:
        return jnp.broadcast_to(jnp.asarray(es_state.std, mean.dtype), mean.shape)
    # CMA_ES: the diagonal of the covariance evosax's eigen_decomposition samples from
    c = jnp.diagonal(es_state.C)
    return es_state.std * jnp.sqrt(jnp.minimum(jnp.maximum(c, 0.0), 1e8) + 1e-8)


# ----------------------------------------------------------------------------------------------
# search spaces


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """Maps ES vectors to params pytrees and back, for one mask.

    ``kind="compressed"``: vectors hold the active entries only (``view`` is the mask's
    :class:`~es_lottery.masks.CompressedView`). ``kind="masked"``: vectors hold every entry in flat params
    order (``jax.tree_util`` leaf order, each leaf row-major); ``keep`` marks the active ones and
    :meth:`project` zeroes the rest. Built on the host once per mask.
    """

    kind: str
    view: masks_lib.CompressedView
    keep: np.ndarray | None = None  # masked: (D,) bool, True = active

    # Equality and hash by content, so that a search space rebuilt from the same mask (a new seed, a
    # resumed run) hits the jit cache instead of recompiling.
    def _key(self):
        v = self.view
        keep = None if self.keep is None else self.keep.tobytes()
        return (self.kind, v.treedef, v.shapes, v.dtypes, v.full_size, v.index.tobytes(), keep)

    def __eq__(self, other):
        return isinstance(other, SearchSpace) and (self is other or self._key() == other._key())

    def __hash__(self):
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(self._key())
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def dim(self) -> int:
        """Dimension of the ES vectors."""
        return self.view.size

    @property
    def num_active(self) -> int:
        return self.view.size if self.keep is None else int(self.keep.sum())

    def project(self, vectors: jax.Array) -> jax.Array:
        """Zero the pruned coordinates (masked space); identity for the compressed space."""
        if self.keep is None:
            return vectors
        return jnp.where(jnp.asarray(self.keep), vectors, jnp.zeros((), vectors.dtype))

    def to_params(self, vectors: jax.Array) -> PyTree:
        """``(D,)`` → a params tree; ``(P, D)`` → a member-params tree with a leading axis P on every leaf.

        Pruned entries are exactly zero in both spaces.
        """
        vectors = self.project(jnp.asarray(vectors))
        if vectors.shape[-1] != self.dim:
            raise ValueError(f"vectors have {vectors.shape[-1]} entries, the search space has {self.dim}")
        if vectors.ndim == 1:
            return self.view.scatter(vectors)
        if vectors.ndim == 2:
            return jax.vmap(self.view.scatter)(vectors)
        raise ValueError(f"vectors must have shape (D,) or (P, D), got {vectors.shape}")

    def from_params(self, params: PyTree) -> jax.Array:
        """A params tree → its ES vector ``(D,)`` (masked space: pruned entries set to 0)."""
        return self.project(self.view.flatten(params))


def make_space(kind: str, mask: PyTree, params: PyTree | None = None) -> SearchSpace:
    """Build the ``kind`` search space for a concrete ``mask`` (congruent to ``params`` if given)."""
    check_choice(kind, SEARCH_SPACES, "search_space")
    if params is not None:
        masks_lib.check_congruent(params, mask)
    if kind == "compressed":
        return SearchSpace("compressed", masks_lib.CompressedView.from_mask(mask, params))
    full = masks_lib.CompressedView.from_mask(masks_lib.ones(mask), params)
    keep = np.concatenate([np.ravel(np.asarray(m, dtype=bool)) for m in jax.tree_util.tree_leaves(mask)])
    return SearchSpace("masked", full, keep)


# ----------------------------------------------------------------------------------------------
# tasks


def make_task(
    fitness_fn: Callable[[jax.Array, PyTree], jax.Array],
    eval_fn: Callable[[PyTree], dict] | None = None,
    score_key: str = "score",
) -> tasks_base.FunctionTask:
    """A task from closures ``fitness_fn(key, member_params) -> (P,)`` (to maximise) and
    ``eval_fn(params) -> {name: scalar}``: ``tasks.base.from_function(fitness_fn, batched=True, …)``.

    Arrays captured by the closures become compile-time constants; for large datasets pass them as
    ``data`` to :func:`es_lottery.tasks.base.from_function`, or use a ``ClassificationTask``.
    """
    return tasks_base.from_function(fitness_fn, batched=True, evaluate=eval_fn, score_key=score_key)


def make_classification_task(
    module: nn.Module,
    x_train,
    y_train,
    x_test,
    y_test,
    batch_size: int | None = 1024,
    chunk_size: int | str | None = "auto",
) -> classification.ClassificationTask:
    """The ES classification task: fitness = −mean cross-entropy of each member on a FRESH random training
    batch per generation (the same batch for every member of a generation, drawn with the fitness key);
    eval = test accuracy (and cross-entropy) of the mean on the full test set; ``score_key="accuracy"``.
    ``batch_size=None`` (or ≥ the training size) uses the whole training set every generation.
    (``classification.make_task(module, objective="cross_entropy", batch_size=…)``.)
    """
    return classification.make_task(
        module,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        objective="cross_entropy",
        batch_size=batch_size,
        chunk_size=chunk_size,
    )


# ----------------------------------------------------------------------------------------------
# state


@struct.dataclass
class ESRunState:
    """Everything that changes during an ES run (``space`` and ``algorithm`` are static)."""

    es_state: Any  # the evosax state (mean, std, optimizer state, …) in ES-vector coordinates
    generation: jax.Array  # int32: generations done
    best_eval: jax.Array  # float32: best eval score of the mean so far (−inf before the first eval)
    best_es_state: Any  # the evosax state at that best evaluation
    task_state: Any  # the task's state (a control task's observation statistics; None: stateless)
    best_task_state: Any  # the task state at the best evaluation (the best mean is evaluated with it)
    space: SearchSpace = struct.field(pytree_node=False)
    algorithm: str = struct.field(pytree_node=False)


def _check_config(config, state: ESRunState | None = None) -> ESConfig:
    if not isinstance(config, ESConfig):
        raise TypeError(f"config must be an ESConfig, got {type(config).__name__}")
    if state is not None:
        if state.algorithm != config.algorithm:
            raise ValueError(
                f"the state was initialised for {state.algorithm}, "
                f"but config.algorithm is {config.algorithm!r}"
            )
        if state.space.kind != config.search_space:
            raise ValueError(
                f"the state searches the {state.space.kind!r} space but config.search_space is "
                f"{config.search_space!r}"
            )
    return config


def _check_task_state(task, state: ESRunState) -> None:
    """The run state must carry a state of the task's structure (``es.init(..., task=task)``)."""
    tasks_base.check_task(task)
    want = jax.eval_shape(task.init_state, jax.random.key(0))
    have = jax.tree_util.tree_structure(state.task_state)
    if jax.tree_util.tree_structure(want) != have:
        raise ValueError(
            f"the ES state carries a task state of structure {have}, but this task's state is "
            f"{jax.tree_util.tree_structure(want)}: initialise the ES with es.init(..., task=task)"
        )


def _strong(tree):
    """Every leaf as a strongly typed array (evosax states start with Python scalars such as
    ``generation_counter=0``), so that scan carries keep one type."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), tree)


@partial(jax.jit, static_argnames=("space", "config"))
def init_from_space(
    key: jax.Array, theta0: PyTree, space: SearchSpace, config: ESConfig, task: Any = None
) -> ESRunState:
    """Jittable :func:`init` for a prepared search space."""
    algo, params = make_algorithm(config, space.dim)
    mean = space.from_params(theta0).astype(jnp.float32)
    es_state = _strong(algo.init(key, mean, params))
    task_state = None if task is None else _strong(task.init_state(jax.random.fold_in(key, TASK_KEY)))
    return ESRunState(
        es_state=es_state,
        generation=jnp.int32(0),
        best_eval=jnp.float32(-jnp.inf),
        best_es_state=es_state,
        task_state=task_state,
        best_task_state=task_state,
        space=space,
        algorithm=config.algorithm,
    )


def init(
    key: jax.Array, theta0_params: PyTree, mask: PyTree, config: ESConfig, task: Any = None
) -> ESRunState:
    """A FRESH ES on the weights kept by ``mask``: mean = θ₀ (⊙ mask), std = ``sigma_init`` everywhere,
    new optimizer state. ``mask`` must be concrete (the search space is built on the host).

    ``task``: the task the ES will run on, when it has a state (``task.init_state``, drawn with
    ``fold_in(key, TASK_KEY)``) — a control task's observation statistics; stateless tasks
    (classification, plain functions) need not be given.
    """
    config = _check_config(config)
    if task is not None:
        tasks_base.check_task(task)
    space = make_space(config.search_space, mask, theta0_params)
    return init_from_space(key, theta0_params, space, config, task)


def mean_params(state: ESRunState, best: bool = False) -> PyTree:
    """The search mean as a full params tree (exact zeros at pruned entries); ``best``: the best-eval one."""
    es_state = state.best_es_state if best else state.es_state
    return state.space.to_params(es_state.mean)


def best_mean_params(state: ESRunState) -> PyTree:
    """The mean with the best eval score so far (= the initial mean before any evaluation)."""
    return mean_params(state, best=True)


def std_vector(state: ESRunState, best: bool = False, sep_cma_compat: bool = False) -> jax.Array:
    """Per-weight std in ES-vector coordinates (masked space: 0 at pruned coordinates)."""
    es_state = state.best_es_state if best else state.es_state
    return state.space.project(per_weight_std(state.algorithm, es_state, sep_cma_compat))


def std_params(state: ESRunState, best: bool = False, sep_cma_compat: bool = False) -> PyTree:
    """Per-weight std of the search distribution as a full params tree (exact zeros at pruned entries)."""
    return state.space.to_params(std_vector(state, best, sep_cma_compat))


# ----------------------------------------------------------------------------------------------
# one generation


@partial(jax.jit, static_argnames=("config",))
def ask(key: jax.Array, state: ESRunState, config: ESConfig):
    """Sample a population: ``(vectors (P, D), es_state after ask)``; masked space: pruned coords are 0."""
    _check_config(config, state)
    algo, params = make_algorithm(config, state.space.dim)
    vectors, es_state = algo.ask(key, state.es_state, params)
    return state.space.project(vectors), es_state


def _sanitize(fitness: jax.Array):
    """Replace non-finite fitness by the worst finite one (LOW_FITNESS if none): (clean, n_bad, any_ok)."""
    finite = jnp.isfinite(fitness)
    any_ok = jnp.any(finite)
    worst = jnp.min(jnp.where(finite, fitness, jnp.inf))
    fill = jnp.where(any_ok, worst, jnp.float32(LOW_FITNESS))
    clean = jnp.where(finite, fitness, fill)
    return clean, jnp.sum(~finite, dtype=jnp.int32), any_ok


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


@partial(jax.jit, static_argnames=("config",))
def tell(
    key: jax.Array, state: ESRunState, es_state, vectors: jax.Array, fitness: jax.Array, config: ESConfig
):
    """Update the search distribution with the fitness (to MAXIMISE) of ``vectors`` from :func:`ask`.

    Non-finite fitness is replaced by the generation's worst finite value (the update is skipped when there
    is none); fitness is negated here, once, for evosax; then mean decay and, in the masked space,
    re-zeroing of the mean and freezing of the per-coordinate std/C at pruned coordinates (nothing drives
    them there, but evosax's rank-weight ties would let them drift). As a last safety net an update that
    leaves any non-finite number in the search state is discarded (``update_skipped``).
    Returns ``(state, metrics)``.
    """
    _check_config(config, state)
    algo, params = make_algorithm(config, state.space.dim)
    npop = config.population_size
    fitness = jnp.asarray(fitness, jnp.float32)
    if fitness.shape != (npop,):
        raise ValueError(f"fitness must have shape ({npop},) (one value per member), got {fitness.shape}")
    clean, n_bad, any_ok = _sanitize(fitness)
    new, _ = algo.tell(key, vectors, -clean, es_state, params)  # evosax minimises: the one negation
    mean = new.mean
    if config.mean_decay:
        mean = mean * jnp.float32(1.0 - config.mean_decay)
    new = new.replace(mean=state.space.project(mean))
    if state.space.keep is not None:
        keep = jnp.asarray(state.space.keep)
        frozen = {
            f: jnp.where(keep, getattr(new, f), getattr(es_state, f))
            for f in FROZEN_IN_MASKED
            if hasattr(new, f) and jnp.shape(getattr(new, f)) == keep.shape
        }
        new = new.replace(**frozen)
    ok = any_ok & _all_finite(new)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, es_state)
    state = state.replace(es_state=new, generation=state.generation + 1)
    finite = jnp.isfinite(fitness)
    n_ok = jnp.maximum(jnp.sum(finite), 1)
    std = per_weight_std(config, new)
    if state.space.keep is not None:
        keep = jnp.asarray(state.space.keep)
        std_mean = jnp.sum(jnp.where(keep, std, 0.0)) / max(state.space.num_active, 1)
    else:
        std_mean = jnp.mean(std)
    nan = jnp.float32(jnp.nan)
    metrics = {
        "generation": state.generation,
        "fitness_mean": jnp.where(any_ok, jnp.sum(jnp.where(finite, fitness, 0.0)) / n_ok, nan),
        "fitness_max": jnp.where(any_ok, jnp.max(clean), nan),
        "fitness_min": jnp.where(any_ok, jnp.min(clean), nan),
        "n_nonfinite": n_bad,
        "update_skipped": ~ok,
        "mean_norm": jnp.linalg.norm(new.mean),
        "std_mean": std_mean,
    }
    return state, metrics


def _step(key, state: ESRunState, task, config: ESConfig):
    k_ask, k_fit, k_tell = jax.random.split(key, 3)
    vectors, es_state = ask(k_ask, state, config)
    members = state.space.to_params(vectors)
    fitness, task_metrics, task_state = tasks_base.fitness_metrics(task, state.task_state, k_fit, members)
    state, metrics = tell(k_tell, state.replace(task_state=task_state), es_state, vectors, fitness, config)
    for name in SUMMED_TASK_METRICS:  # e.g. a control task's env steps of the generation
        if name in task_metrics:
            metrics[name] = jnp.sum(task_metrics[name])
    return state, metrics


@partial(jax.jit, static_argnames=("config",))
def step(key: jax.Array, state: ESRunState, task, config: ESConfig):
    """One generation: ask → to_params → ``task.fitness`` → tell → mean decay. Returns ``(state, metrics)``.

    ``task`` follows the task protocol (``es_lottery.tasks.base.Task``); its state travels in
    ``state.task_state``."""
    return _step(key, state, task, config)


# ----------------------------------------------------------------------------------------------
# whole runs


def _chunk(key, state: ESRunState, task, config: ESConfig, length: int):
    """``length`` generations, then evaluate the mean and keep the best. Returns (state, row, train)."""

    def body(st, _):
        return _step(generation_key(key, st.generation), st, task, config)

    state, train_metrics = jax.lax.scan(body, state, None, length=length)
    if getattr(task, "has_eval", True):
        evals = task.evaluate(state.task_state, mean_params(state))
        evals = {k: jnp.asarray(v, jnp.float32) for k, v in evals.items()}
        if task.score_key not in evals:
            raise ValueError(
                f"the task's evaluate returned {sorted(evals)}, which lacks its score_key {task.score_key!r}"
            )
        score = evals[task.score_key]
        better = score > state.best_eval  # NaN never wins
        pick = partial(jax.tree_util.tree_map, lambda a, b: jnp.where(better, a, b))
        state = state.replace(
            best_eval=jnp.where(better, score, state.best_eval),
            best_es_state=pick(state.es_state, state.best_es_state),
            best_task_state=pick(state.task_state, state.best_task_state),
        )
    else:  # nothing to select with: the best is the latest
        evals = {}
        state = state.replace(best_es_state=state.es_state, best_task_state=state.task_state)
    row = {"generation": state.generation, **evals, "best_eval": state.best_eval}
    return state, row, train_metrics


@partial(jax.jit, static_argnames=("config", "num_generations", "eval_every"))
def _run(key, state, task, config, num_generations, eval_every):
    n_full, rem = divmod(num_generations, eval_every)
    rows, trains = [], []
    if n_full:

        def outer(st, _):
            st, row, tr = _chunk(key, st, task, config, eval_every)
            return st, (row, tr)

        state, (row, tr) = jax.lax.scan(outer, state, None, length=n_full)
        rows.append(row)
        trains.append(jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), tr))
    if rem:
        state, row, tr = _chunk(key, state, task, config, rem)
        rows.append(jax.tree_util.tree_map(lambda a: a[None], row))
        trains.append(tr)
    cat = partial(jax.tree_util.tree_map, lambda *xs: jnp.concatenate(xs))
    return state, {"eval": cat(*rows), "train": cat(*trains)}


def advance(
    key: jax.Array,
    state: ESRunState,
    task,
    config: ESConfig,
    num_generations: int,
    eval_every: int | None = None,
):
    """Continue ``state`` for ``num_generations`` generations (generation g uses
    ``generation_key(key, g)``, so runs split into pieces with the same key reproduce one long run).

    After every ``eval_every`` generations (and at the end; None: only at the end) the mean is evaluated
    with ``task.eval_fn`` and the best-scoring search state kept. Returns ``(state, history)``:
    ``history["eval"]`` has one row per evaluation (``generation``, the eval metrics, ``best_eval``),
    ``history["train"]`` one row per generation (fitness statistics, ``n_nonfinite``, ``mean_norm``,
    ``std_mean``).
    """
    config = _check_config(config, state)
    _check_task_state(task, state)
    num_generations = check_int(num_generations, "num_generations", 1)
    eval_every = num_generations if eval_every is None else check_int(eval_every, "eval_every", 1)
    return _run(key, state, task, config, num_generations, min(eval_every, num_generations))


def run(
    key: jax.Array,
    theta0: PyTree,
    mask: PyTree,
    task,
    config: ESConfig,
    num_generations: int,
    eval_every: int | None = None,
):
    """A FRESH ES from θ₀ on ``mask`` for ``num_generations``: ``(final state, history)`` (see
    :func:`advance`, which continues a state). Use :func:`mean_params`, :func:`best_mean_params` and
    :func:`std_params` on the final state.
    """
    if isinstance(theta0, ESRunState):
        raise TypeError(
            "es.run starts a fresh ES from (key, theta0, mask, task, config, …); to continue a state, "
            "call es.advance(key, state, task, config, num_generations, eval_every)"
        )
    k_init, k_run = jax.random.split(key)
    state = init(k_init, theta0, mask, config, task)
    return advance(k_run, state, task, config, num_generations, eval_every)


def train(*args, **kwargs):
    """Deprecated name of :func:`run` (a fresh ES); kept so that older research code keeps working."""
    warnings.warn("es.train is now es.run (fresh); es.advance continues a state", DeprecationWarning, 2)
    return run(*args, **kwargs)
