"""The backprop baseline of Altmann et al.: scikit-learn's ``MLPClassifier`` reimplemented in JAX/optax.

What is reproduced from sklearn (``sklearn/neural_network/_multilayer_perceptron.py`` and
``_stochastic_optimizers.py``, version 1.x):

* Init (``_init_coef``): Glorot uniform, weights AND biases U[-b, b], b = sqrt(6 / (fan_in + fan_out)).
  ``weight_init`` may name one of ``networks.INITS`` instead (e.g. "uniform" to start from the strong-ticket
  init).
* Loss per batch: mean log-loss + ``0.5 · alpha · Σ‖W‖² / n_batch`` (kernels only; ``n_batch`` = samples
  in the batch). Outputs: ``sizes[-1] ≥ 2`` → softmax cross-entropy; ``sizes[-1] == 1`` → one logistic
  output with binary log-loss, which is what sklearn builds for two classes. The paper's architectures
  ([2, h, 2]) therefore have one more output unit than sklearn's own binary network.
* Optimisers (as optax ``GradientTransformationExtraArgs`` taking ``learning_rate=`` per call):
  sgd — ``v ← μ v − lr g``; update ``μ v − lr g`` (Nesterov) or ``v``; adam — sklearn's bias-corrected step
  ``lr · sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ) · m / (sqrt(v) + ε)`` (ε outside the correction, unlike ``optax.adam``).
* Epochs: reshuffle (``shuffle=True``), batches of ``min(batch_size, n)`` with a smaller last batch; the
  epoch loss is Σ batch_loss · batch_len / n (each batch loss taken before its update).
* Stopping on the training loss: after each epoch ``no_improve += 1`` if ``loss > best − tol`` else 0;
  ``best = min(best, loss)``; when ``no_improve > n_iter_no_change``: stop — except sgd with
  ``lr_schedule="adaptive"``, which divides lr by 5 and resets the counter while lr > 1e-6. With a
  constant loss the run therefore stops after ``n_iter_no_change + 2`` epochs (the first sets ``best``).
  ``max_epochs`` caps the run (sklearn's ``max_iter``). A non-finite epoch loss stops the run
  (``diverged``).

Differences: float32 instead of float64; the log-loss is computed from logits (no probability clipping);
the random streams are JAX's (``k_init, k_data = split(key)``; epoch e shuffles with ``fold_in(k_data, e)``),
so runs match sklearn in distribution, and step for step when given the same init and ``shuffle=False``.

The whole run is one jitted program: ``lax.while_loop`` over epochs (state: params, optimiser state, lr,
best loss, counter) around ``lax.scan`` over the epoch's batches; ``jax.vmap`` over keys runs seeds.

``PAPER_SETTINGS`` holds Table 2 of the paper (moons/circles × architectures A–D of ``ARCHS``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from es_lottery import networks
from es_lottery._checks import check_bool, check_int, check_number, check_xy
from es_lottery.networks import MLP
from es_lottery.tasks.supervised import epoch_batches

PyTree = Any

SOLVERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "adaptive")
WEIGHT_INITS = ("glorot_uniform", *networks.INITS)
MIN_ADAPTIVE_LR = 1e-6  # sklearn: adaptive sgd stops once lr ≤ 1e-6

__all__ = [
    "ARCHS",
    "PAPER_SETTINGS",
    "BackpropConfig",
    "BackpropResult",
    "accuracy",
    "batch_loss",
    "evaluate",
    "glorot_init",
    "init_params",
    "make_module",
    "make_optimizer",
    "paper_config",
    "sklearn_adam",
    "sklearn_sgd",
    "train",
    "train_seeds",
]


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class BackpropConfig:
    """Static settings with sklearn's ``MLPClassifier`` names in brackets (defaults are sklearn's, except
    ``max_epochs`` = the paper's 1000 and ``batch_size`` = 200 for sklearn's "auto").

    solver ("adam" | "sgd"), learning_rate [learning_rate_init], batch_size, alpha (L2), momentum and
    nesterov [nesterovs_momentum] (sgd only), lr_schedule [learning_rate] ("constant" | "adaptive"; sgd
    only, ignored by adam as in sklearn), epsilon, beta_1, beta_2 (adam only), max_epochs [max_iter], tol,
    n_iter_no_change, shuffle, weight_init ("glorot_uniform" = sklearn, or one of ``networks.INITS``).
    ``learning_rate = 0`` is allowed.
    """

    solver: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 200
    alpha: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    lr_schedule: str = "constant"
    epsilon: float = 1e-8
    beta_1: float = 0.9
    beta_2: float = 0.999
    max_epochs: int = 1000
    tol: float = 1e-4
    n_iter_no_change: int = 10
    shuffle: bool = True
    weight_init: str = "glorot_uniform"

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; allowed: {', '.join(SOLVERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"unknown weight_init {self.weight_init!r}; allowed: {', '.join(WEIGHT_INITS)}")
        check_number(self.learning_rate, "learning_rate", 0.0)
        check_int(self.batch_size, "batch_size", 1)
        check_number(self.alpha, "alpha", 0.0)
        check_number(self.momentum, "momentum", 0.0, 1.0)
        check_bool(self.nesterov, "nesterov")
        check_number(self.epsilon, "epsilon", 0.0)
        if float(self.epsilon) <= 0.0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon!r}")
        check_number(self.beta_1, "beta_1", 0.0, 1.0, hi_open=True)
        check_number(self.beta_2, "beta_2", 0.0, 1.0, hi_open=True)
        check_int(self.max_epochs, "max_epochs", 1)
        check_number(self.tol, "tol", 0.0)
        check_int(self.n_iter_no_change, "n_iter_no_change", 1)
        check_bool(self.shuffle, "shuffle")

    @property
    def adaptive(self) -> bool:
        """True when a plateau divides the lr by 5 instead of stopping (sgd + "adaptive" only)."""
        return self.solver == "sgd" and self.lr_schedule == "adaptive"

    def replace(self, **kw) -> BackpropConfig:
        return dataclasses.replace(self, **kw)


ARCHS: dict[str, tuple[int, ...]] = {
    "A": (2, 20, 2),
    "B": (2, 75, 2),
    "C": (2, 100, 2),
    "D": (2, 50, 50, 2),
}

_MOONS_BCD = BackpropConfig(
    solver="adam", learning_rate=0.001, epsilon=4.64e-9, batch_size=64, alpha=0.000215
)

# Table 2 of Altmann et al. (sklearn MLPClassifier tuned by RandomizedSearchCV; 1000 epochs). Fields the
# table leaves out keep sklearn's defaults; momentum "0.0" without "nesterov" → nesterov=False.
PAPER_SETTINGS: dict[tuple[str, str], BackpropConfig] = {
    ("moons", "A"): BackpropConfig(
        solver="adam", learning_rate=0.021544, epsilon=4.64e-9, batch_size=128, alpha=0.0001
    ),
    ("moons", "B"): _MOONS_BCD,
    ("moons", "C"): _MOONS_BCD,
    ("moons", "D"): _MOONS_BCD,
    ("circles", "A"): BackpropConfig(
        solver="sgd",
        lr_schedule="adaptive",
        learning_rate=0.1,
        batch_size=64,
        alpha=0.046416,
        momentum=0.0,
        nesterov=False,
    ),
    ("circles", "B"): BackpropConfig(
        solver="sgd",
        lr_schedule="adaptive",
        learning_rate=0.004642,
        batch_size=128,
        alpha=0.046416,
        momentum=0.5,
        nesterov=True,
    ),
    ("circles", "C"): BackpropConfig(
        solver="adam", learning_rate=0.001, epsilon=4.64e-9, batch_size=64, alpha=0.000215
    ),
    ("circles", "D"): BackpropConfig(
        solver="sgd",
        lr_schedule="adaptive",
        learning_rate=0.1,
        batch_size=128,
        alpha=0.046416,
        momentum=0.0,
        nesterov=True,
    ),
}


def paper_config(dataset: str, arch: str, **overrides) -> tuple[tuple[int, ...], BackpropConfig]:
    """(sizes, config) of the paper's tuned baseline, e.g. ``paper_config("moons", "A", max_epochs=60)``."""
    if (dataset, arch) not in PAPER_SETTINGS:
        allowed = ", ".join(f"{d}/{a}" for d, a in PAPER_SETTINGS)
        raise ValueError(f"no paper setting for dataset={dataset!r}, arch={arch!r}; allowed: {allowed}")
    return ARCHS[arch], PAPER_SETTINGS[(dataset, arch)].replace(**overrides)


def make_module(sizes: Sequence[int]) -> MLP:
    """ReLU MLP with linear output (the params tree is ``networks.MLP``'s: ``dense_i/{kernel,bias}``)."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ValueError(f"sizes must be a sequence of ints (input, hidden…, output), got {sizes!r}")
    return MLP(tuple(int(s) if isinstance(s, (int, np.integer)) else s for s in sizes)).validate()


def _check_data(module: MLP, x, y) -> None:
    check_xy(x, y, module.sizes[0], max(int(module.sizes[-1]), 2))


# ----------------------------------------------------------------------------------------------
# init, loss, optimisers


def glorot_init(key: jax.Array, sizes: Sequence[int]) -> PyTree:
    """sklearn's ``_init_coef`` for ReLU: weights and biases U[-b, b], b = sqrt(6 / (fan_in + fan_out))."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        kk, kb = jax.random.split(keys[i])
        params[f"dense_{i}"] = {
            "kernel": jax.random.uniform(kk, (fan_in, fan_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
        }
    return params


def init_params(key: jax.Array, sizes: Sequence[int], config: BackpropConfig) -> PyTree:
    """The initial params ``train`` draws from ``key`` (``k_init = split(key)[0]``)."""
    return _init_params_jit(key, tuple(int(s) for s in sizes), config)


@partial(jax.jit, static_argnums=(1, 2))
def _init_params_jit(key: jax.Array, sizes: tuple[int, ...], config: BackpropConfig) -> PyTree:
    k_init = jax.random.split(key)[0]
    if config.weight_init == "glorot_uniform":
        return glorot_init(k_init, tuple(sizes))
    return networks.init_params(k_init, MLP(tuple(sizes), weight_init=config.weight_init))


@partial(jax.jit, static_argnums=(3, 4))
def batch_loss(params, x, y, module: MLP, alpha: float, weights=None):
    """sklearn's batch loss: mean log-loss + 0.5·alpha·Σ‖kernel‖² / (samples in the batch)."""
    w = jnp.ones(jnp.shape(y), jnp.float32) if weights is None else weights
    n = jnp.maximum(jnp.sum(w), 1.0)
    logits = networks.apply(module, params, x)
    if module.sizes[-1] == 1:
        z = logits[:, 0]
        yf = y.astype(z.dtype)
        per = -(yf * jax.nn.log_sigmoid(z) + (1.0 - yf) * jax.nn.log_sigmoid(-z))
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    l2 = sum(jnp.sum(jnp.square(p["kernel"])) for p in params.values())
    return jnp.sum(per * w) / n + 0.5 * alpha * l2 / n


def _predict(module: MLP, params, x):
    logits = networks.apply(module, params, x)
    if module.sizes[-1] == 1:
        return (logits[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1)


def accuracy(module: MLP, params, x, y) -> jax.Array:
    return jnp.mean((_predict(module, params, x) == y).astype(jnp.float32))


class SklearnSGDState(NamedTuple):
    velocity: PyTree


class SklearnAdamState(NamedTuple):
    count: jax.Array
    m: PyTree
    v: PyTree


def sklearn_sgd(momentum: float, nesterov: bool) -> optax.GradientTransformationExtraArgs:
    """sklearn's ``SGDOptimizer``: the lr enters the velocity (call ``update(..., learning_rate=lr)``)."""

    def init_fn(params):
        return SklearnSGDState(jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(grads, state, params=None, *, learning_rate, **extra):
        del params, extra
        vel = jax.tree_util.tree_map(lambda v, g: momentum * v - learning_rate * g, state.velocity, grads)
        if nesterov:
            updates = jax.tree_util.tree_map(lambda v, g: momentum * v - learning_rate * g, vel, grads)
        else:
            updates = vel
        return updates, SklearnSGDState(vel)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sklearn_adam(beta_1: float, beta_2: float, epsilon: float) -> optax.GradientTransformationExtraArgs:
    """sklearn's ``AdamOptimizer``: ``lr·sqrt(1−β₂ᵗ)/(1−β₁ᵗ) · m / (sqrt(v) + ε)``."""

    def init_fn(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return SklearnAdamState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update_fn(grads, state, params=None, *, learning_rate, **extra):
        del params, extra
        t = state.count + 1
        m = jax.tree_util.tree_map(lambda m, g: beta_1 * m + (1 - beta_1) * g, state.m, grads)
        v = jax.tree_util.tree_map(lambda v, g: beta_2 * v + (1 - beta_2) * g * g, state.v, grads)
        tf = t.astype(jnp.float32)
        lr_t = learning_rate * jnp.sqrt(1 - beta_2**tf) / (1 - beta_1**tf)
        updates = jax.tree_util.tree_map(lambda m, v: -lr_t * m / (jnp.sqrt(v) + epsilon), m, v)
        return updates, SklearnAdamState(t, m, v)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(config: BackpropConfig) -> optax.GradientTransformationExtraArgs:
    if config.solver == "sgd":
        return sklearn_sgd(float(config.momentum), bool(config.nesterov))
    return sklearn_adam(float(config.beta_1), float(config.beta_2), float(config.epsilon))


# ----------------------------------------------------------------------------------------------
# training


@struct.dataclass
class BackpropResult:
    """Outcome of one run (leaves gain a leading seed axis under ``train_seeds``)."""

    params: PyTree
    epochs: jax.Array  # epochs run (sklearn's n_iter_)
    final_loss: jax.Array  # loss of the last epoch (sklearn's loss_)
    best_loss: jax.Array
    loss_curve: jax.Array  # (max_epochs,), NaN after the last epoch
    train_accuracy: jax.Array
    final_lr: jax.Array
    converged: jax.Array  # stopped by the plateau rule before max_epochs
    diverged: jax.Array  # stopped on a non-finite loss
    module: MLP = struct.field(pytree_node=False)
    config: BackpropConfig = struct.field(pytree_node=False)


@struct.dataclass
class _LoopState:
    params: PyTree
    opt_state: Any
    lr: jax.Array
    epoch: jax.Array
    best: jax.Array
    no_improve: jax.Array
    stop: jax.Array
    converged: jax.Array
    diverged: jax.Array
    curve: jax.Array


def _train_core(key, x, y, init, module: MLP, config: BackpropConfig) -> BackpropResult:
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.int32)
    n = x.shape[0]
    bs = min(int(config.batch_size), n)
    steps = -(-n // bs)
    k_data = jax.random.split(key)[1]
    if init is None:
        init = init_params(key, module.sizes, config)
    tx = make_optimizer(config)
    grad_fn = jax.value_and_grad(batch_loss)
    alpha = float(config.alpha)

    def batch_step(carry, batch):
        params, opt_state, lr = carry
        idx, w = batch
        loss, g = grad_fn(params, x[idx], y[idx], module, alpha, w)
        updates, opt_state = tx.update(g, opt_state, params, learning_rate=lr)
        return (optax.apply_updates(params, updates), opt_state, lr), loss * jnp.sum(w)

    if config.shuffle:

        def batches(e):
            return epoch_batches(jax.random.fold_in(k_data, e), n, bs)
    else:
        pos = jnp.arange(steps * bs, dtype=jnp.int32)
        fixed = ((pos % n).reshape(steps, bs), (pos < n).astype(jnp.float32).reshape(steps, bs))

        def batches(e):
            return fixed

    def body(s: _LoopState) -> _LoopState:
        (params, opt_state, _), weighted = jax.lax.scan(
            batch_step, (s.params, s.opt_state, s.lr), batches(s.epoch)
        )
        loss = jnp.sum(weighted) / n
        no_improve = jnp.where(loss > s.best - config.tol, s.no_improve + 1, 0)
        best = jnp.minimum(s.best, loss)
        trigger = no_improve > config.n_iter_no_change
        if config.adaptive:
            reduce = trigger & (s.lr > MIN_ADAPTIVE_LR)
            lr = jnp.where(reduce, s.lr / 5.0, s.lr)
            no_improve = jnp.where(reduce, 0, no_improve)
            plateau = trigger & ~reduce
        else:
            lr, plateau = s.lr, trigger
        bad = ~jnp.isfinite(loss)
        return _LoopState(
            params=params,
            opt_state=opt_state,
            lr=lr,
            epoch=s.epoch + 1,
            best=best,
            no_improve=no_improve,
            stop=plateau | bad,
            converged=plateau & ~bad,
            diverged=bad,
            curve=s.curve.at[s.epoch].set(loss),
        )

    s0 = _LoopState(
        params=init,
        opt_state=tx.init(init),
        lr=jnp.float32(config.learning_rate),
        epoch=jnp.int32(0),
        best=jnp.float32(jnp.inf),
        no_improve=jnp.int32(0),
        stop=jnp.bool_(False),
        converged=jnp.bool_(False),
        diverged=jnp.bool_(False),
        curve=jnp.full((config.max_epochs,), jnp.nan, jnp.float32),
    )
    s = jax.lax.while_loop(lambda s: ~s.stop & (s.epoch < config.max_epochs), body, s0)
    return BackpropResult(
        params=s.params,
        epochs=s.epoch,
        final_loss=s.curve[jnp.maximum(s.epoch - 1, 0)],
        best_loss=s.best,
        loss_curve=s.curve,
        train_accuracy=accuracy(module, s.params, x, y),
        final_lr=s.lr,
        converged=s.converged,
        diverged=s.diverged,
        module=module,
        config=config,
    )


_train_jit = jax.jit(_train_core, static_argnums=(4, 5))


@partial(jax.jit, static_argnums=(4, 5))
def _train_seeds_jit(keys, x, y, init, module, config):
    return jax.vmap(lambda k: _train_core(k, x, y, init, module, config))(keys)


def _prepare(sizes, x, y, config, init):
    if not isinstance(config, BackpropConfig):
        raise TypeError(f"config must be a BackpropConfig, got {type(config).__name__}")
    module = make_module(sizes)
    _check_data(module, x, y)
    if init is not None:
        want = jax.eval_shape(lambda: glorot_init(jax.random.key(0), module.sizes))
        got = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.float32), init)
        if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(got) or any(
            a.shape != b.shape
            for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True)
        ):
            raise ValueError(f"init must be an MLP params tree for sizes {module.sizes}")
        init = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), init)
    return module, init


def train(
    key: jax.Array, sizes: Sequence[int], x, y, config: BackpropConfig | None = None, init=None
) -> BackpropResult:
    """Train an MLP like sklearn's ``MLPClassifier.fit`` (jitted; vmappable over ``key``).

    ``init``: optional starting params (``dense_i/{kernel,bias}``), e.g. sklearn's own init.
    """
    config = BackpropConfig() if config is None else config
    module, init = _prepare(sizes, x, y, config, init)
    return _train_jit(key, x, y, init, module, config)


def train_seeds(
    keys: jax.Array, sizes: Sequence[int], x, y, config: BackpropConfig | None = None, init=None
) -> BackpropResult:
    """``jax.vmap(train)`` over a batch of keys (one compiled program)."""
    config = BackpropConfig() if config is None else config
    module, init = _prepare(sizes, x, y, config, init)
    return _train_seeds_jit(keys, x, y, init, module, config)


@jax.jit
def _evaluate_jit(result: BackpropResult, x, y):
    def one(r):
        return accuracy(r.module, r.params, x, y)

    if result.epochs.ndim == 0:
        return one(result)
    return jax.vmap(one)(result)


def evaluate(result: BackpropResult, x, y) -> jax.Array:
    """Accuracy on (x, y): a scalar, or one per seed for ``train_seeds``."""
    _check_data(result.module, x, y)
    return _evaluate_jit(result, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32))
