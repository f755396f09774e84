"""Edge-popup (Ramanujan et al., 2020) for the MLPs of :class:`es_lottery.networks.MLP`.

The weights AND biases are drawn once by :func:`es_lottery.networks.init_params` with the config's
``weight_init`` and stay frozen (bitwise). Every prunable weight (kernel entry; biases are never masked)
gets a real-valued score, initialised like PyTorch's ``kaiming_uniform_(a=√5)``: U[-b, b] with
b = sqrt(6 / ((1 + 5) · fan_in)) = 1 / sqrt(fan_in).

Forward pass: each layer keeps exactly ``kept_count(k, n) = floor(k·n + 1/2)`` of its ``n`` weights, those
with the largest score (:func:`es_lottery.masks.topk` with ``scope="layerwise"``; ties go to the lower
index). Like the reference code (allenai/hidden-networks, ``GetSubnet(scores.abs(), k)``) the ranking uses
``|score|`` (``abs_scores=True``) and the mask is a straight-through estimator: forward ``W ⊙ mask``, backward
identity w.r.t. the ranked quantity, so

    dL/dscore = dL/d(W ⊙ mask) · W · sign(score)          (abs_scores=True, the reference code)
    dL/dscore = dL/d(W ⊙ mask) · W                        (abs_scores=False: rank by the raw score,
                                                           the paper's Algorithm 1)

The reference keeps ``n − int((1 − k)·n)`` weights per layer; this module uses the package's exact rule
``floor(k·n + 1/2)`` (identical for k = 0.5 and every layer of the paper's architectures).

Training (the reference's CIFAR recipe): softmax cross-entropy; optax ``add_decayed_weights(weight_decay)``
then ``sgd(lr · cosine, momentum)`` on the scores only — PyTorch's SGD order (decay added to the gradient
before the momentum buffer). The cosine schedule runs over ALL steps (epochs × steps per epoch; the
reference steps it once per epoch). Each epoch reshuffles the training set with its own key; the last
batch of an epoch is smaller (padded and weighted out: PyTorch's ``drop_last=False``). The batch size is
clipped to the number of samples. Default batch size 128.

The whole run is one jitted program: ``lax.scan`` over epochs around ``lax.scan`` over batches; ``train`` is
a pure function of its key, so ``jax.vmap`` over keys runs seeds in parallel (``train_seeds``).

Keys: ``k_params, k_scores, k_data = jax.random.split(key, 3)``; epoch ``e`` shuffles with
``jax.random.fold_in(k_data, e)``. ``init(key, module, config)`` returns the same params and scores that
``train`` starts from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from es_lottery import masks as masks_lib
from es_lottery import networks
from es_lottery._checks import check_bool, check_int, check_number, check_xy
from es_lottery.networks import MLP
from es_lottery.tasks.supervised import epoch_batches

PyTree = Any

__all__ = [
    "EdgePopupConfig",
    "EdgePopupResult",
    "accuracy",
    "batch_loss",
    "evaluate",
    "full_mask",
    "init",
    "init_scores",
    "make_module",
    "make_optimizer",
    "resolve_module",
    "subnet_mask",
    "train",
    "train_seeds",
]


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class EdgePopupConfig:
    """Static edge-popup settings (hashable; a static argument of the jitted run).

    ``kept_fraction`` k in (0, 1]: each layer keeps floor(k·n + 1/2) weights (sparsity ≈ 1 − k).
    ``weight_init``: one of ``networks.INITS`` ("uniform" = U[-1, 1] weights and biases, "kaiming_normal",
    "signed_kaiming_constant", "lecun_normal"). ``scale_init``: the "scaled" Kaiming variants — the init
    uses fan_in · k (``MLP.kept_fraction = k``). ``abs_scores``: rank by |score| (reference code) or by the
    raw score.
    """

    kept_fraction: float = 0.5
    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_init: str = "uniform"
    scale_init: bool = False
    abs_scores: bool = True

    def __post_init__(self):
        masks_lib.check_density(self.kept_fraction, field="kept_fraction")
        check_int(self.epochs, "epochs", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_number(self.learning_rate, "learning_rate", 0.0)
        check_number(self.momentum, "momentum", 0.0, 1.0, hi_open=True)
        check_number(self.weight_decay, "weight_decay", 0.0)
        if self.weight_init not in networks.INITS:
            raise ValueError(
                f"unknown weight_init {self.weight_init!r}; allowed: {', '.join(networks.INITS)}"
            )
        check_bool(self.scale_init, "scale_init")
        check_bool(self.abs_scores, "abs_scores")

    @property
    def init_kept_fraction(self) -> float:
        """The ``MLP.kept_fraction`` used for the init: k for the scaled variants, else 1."""
        return float(self.kept_fraction) if self.scale_init else 1.0

    def replace(self, **kw) -> EdgePopupConfig:
        return dataclasses.replace(self, **kw)


def make_module(sizes: Sequence[int], config: EdgePopupConfig) -> MLP:
    """The ReLU MLP (linear output) whose frozen weights edge-popup searches."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ValueError(f"sizes must be a sequence of ints (input, hidden…, output), got {sizes!r}")
    module = MLP(
        tuple(int(s) if isinstance(s, (int, np.integer)) else s for s in sizes),
        weight_init=config.weight_init,
        kept_fraction=config.init_kept_fraction,
    )
    return module.validate()


def resolve_module(arch: Sequence[int] | MLP, config: EdgePopupConfig) -> MLP:
    """``sizes`` → :func:`make_module`; an ``MLP`` is checked against the config's init settings."""
    if not isinstance(config, EdgePopupConfig):
        raise TypeError(f"config must be an EdgePopupConfig, got {type(config).__name__}")
    if isinstance(arch, MLP):
        arch.validate()
        if arch.weight_init != config.weight_init:
            raise ValueError(
                f"weight_init of the module ({arch.weight_init!r}) differs from the config's "
                f"({config.weight_init!r}); pass sizes or make them agree"
            )
        if float(arch.kept_fraction) != config.init_kept_fraction:
            raise ValueError(
                f"kept_fraction of the module ({arch.kept_fraction}) must be {config.init_kept_fraction} "
                f"(scale_init={config.scale_init}, kept_fraction={config.kept_fraction})"
            )
        if arch.output_activation != "none":
            raise ValueError("output_activation of the module must be 'none' (logits for cross-entropy)")
        return arch
    return make_module(arch, config)


def _check_data(module: MLP, x, y) -> None:
    check_xy(x, y, module.sizes[0], module.sizes[-1], flatten=True)


# ----------------------------------------------------------------------------------------------
# scores, masks, loss


def _kernels(params: PyTree) -> PyTree:
    """The kernel-only subtree ``{layer: {"kernel": W}}`` of MLP params."""
    return {layer: {"kernel": p["kernel"]} for layer, p in params.items()}


def init_scores(key: jax.Array, params: PyTree) -> PyTree:
    """One score per kernel entry, U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (Kaiming uniform, a=√5)."""
    kernels = _kernels(params)
    leaves, treedef = jax.tree_util.tree_flatten(kernels)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, w in zip(keys, leaves, strict=True):
        fan_in = int(np.prod(w.shape[:-1]))
        bound = math.sqrt(6.0 / ((1.0 + 5.0) * fan_in))
        out.append(jax.random.uniform(k, w.shape, jnp.float32, -bound, bound))
    return jax.tree_util.tree_unflatten(treedef, out)


@partial(jax.jit, static_argnums=(1, 2))
def init(key: jax.Array, module: MLP, config: EdgePopupConfig) -> tuple[PyTree, PyTree]:
    """(frozen params, initial scores) exactly as ``train`` draws them from ``key``."""
    k_params, k_scores, _ = jax.random.split(key, 3)
    params = networks.init_params(k_params, module)
    return params, init_scores(k_scores, params)


def _ranked(scores: PyTree, config: EdgePopupConfig) -> PyTree:
    return jax.tree_util.tree_map(jnp.abs, scores) if config.abs_scores else scores


@partial(jax.jit, static_argnums=(1,))
def subnet_mask(scores: PyTree, config: EdgePopupConfig) -> PyTree:
    """Kernel mask keeping the top floor(k·n + 1/2) of each layer by (|)score(|)."""
    return masks_lib.topk(
        jax.lax.stop_gradient(_ranked(scores, config)), config.kept_fraction, scope="layerwise"
    )


def full_mask(params: PyTree, kernel_mask: PyTree) -> PyTree:
    """A mask congruent to ``params``: the kernel mask, all ones for the biases."""
    return {
        layer: {
            name: (kernel_mask[layer]["kernel"] if name == "kernel" else jnp.ones(jnp.shape(v), bool))
            for name, v in p.items()
        }
        for layer, p in params.items()
    }


def _effective_params(params: PyTree, scores: PyTree, config: EdgePopupConfig) -> PyTree:
    """``W ⊙ mask`` in the forward pass; identity gradient from the mask to the ranked scores."""
    ranked = _ranked(scores, config)
    kmask = subnet_mask(scores, config)
    out = {}
    for layer, p in params.items():
        a = ranked[layer]["kernel"]
        # mask + (a − a): exactly the 0/1 mask forward, d(mask)/d(a) = 1 backward.
        m = kmask[layer]["kernel"].astype(a.dtype) + (a - jax.lax.stop_gradient(a))
        out[layer] = {name: (v * m if name == "kernel" else v) for name, v in p.items()}
    return out


def _cross_entropy(logits, y, weights):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@partial(jax.jit, static_argnums=(4, 5))
def batch_loss(scores, params, x, y, module: MLP, config: EdgePopupConfig, weights=None):
    """Mean softmax cross-entropy of the masked frozen network on a batch (``weights`` 0/1 per sample)."""
    w = jnp.ones(jnp.shape(y), jnp.float32) if weights is None else weights
    logits = networks.apply(module, _effective_params(params, scores, config), x)
    return _cross_entropy(logits, y, w)


def accuracy(module: MLP, params: PyTree, x, y) -> jax.Array:
    """Fraction of argmax(logits) == y."""
    logits = networks.apply(module, params, x)
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# batching and optimiser


def _steps_per_epoch(n: int, config: EdgePopupConfig) -> tuple[int, int]:
    bs = min(int(config.batch_size), n)
    return bs, -(-n // bs)


def make_optimizer(config: EdgePopupConfig, total_steps: int) -> optax.GradientTransformation:
    """PyTorch-style SGD on the scores: decay added to the gradient, momentum, cosine-decayed lr."""
    schedule = optax.cosine_decay_schedule(config.learning_rate, decay_steps=max(int(total_steps), 1))
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum if config.momentum > 0 else None),
    )


# ----------------------------------------------------------------------------------------------
# training


@struct.dataclass
class EdgePopupResult:
    """Outcome of one run (leaves gain a leading seed axis under ``train_seeds``).

    ``params`` are the frozen weights and biases (bitwise the init); ``mask`` is congruent to them (biases
    all ones); ``sparsity`` counts prunable weights (kernels) only.
    """

    params: PyTree
    scores: PyTree  # final scores, kernel-only tree {layer: {"kernel": s}}
    mask: PyTree
    train_accuracy: jax.Array
    loss_curve: jax.Array  # (epochs,) mean training loss of each epoch (over its batches)
    sparsity: jax.Array
    module: MLP = struct.field(pytree_node=False)
    config: EdgePopupConfig = struct.field(pytree_node=False)


def _train_core(key, x, y, module: MLP, config: EdgePopupConfig) -> EdgePopupResult:
    x = jnp.reshape(jnp.asarray(x, jnp.float32), (x.shape[0], -1))
    y = jnp.asarray(y, jnp.int32)
    n = x.shape[0]
    bs, steps = _steps_per_epoch(n, config)
    params, scores = init(key, module, config)
    k_data = jax.random.split(key, 3)[2]
    tx = make_optimizer(config, steps * config.epochs)
    grad_fn = jax.value_and_grad(batch_loss)

    def step(carry, batch):
        sc, opt_state = carry
        idx, w = batch
        loss, g = grad_fn(sc, params, x[idx], y[idx], module, config, w)
        updates, opt_state = tx.update(g, opt_state, sc)
        return (optax.apply_updates(sc, updates), opt_state), loss * jnp.sum(w)

    def epoch(carry, e):
        idx, w = epoch_batches(jax.random.fold_in(k_data, e), n, bs)
        carry, weighted = jax.lax.scan(step, carry, (idx, w))
        return carry, jnp.sum(weighted) / n

    (scores, _), curve = jax.lax.scan(epoch, (scores, tx.init(scores)), jnp.arange(config.epochs))
    mask = full_mask(params, subnet_mask(scores, config))
    acc = accuracy(module, masks_lib.apply(params, mask), x, y)
    return EdgePopupResult(
        params=params,
        scores=scores,
        mask=mask,
        train_accuracy=acc,
        loss_curve=curve,
        sparsity=masks_lib.sparsity(mask),
        module=module,
        config=config,
    )


_train_jit = jax.jit(_train_core, static_argnums=(3, 4))


@partial(jax.jit, static_argnums=(3, 4))
def _train_seeds_jit(keys, x, y, module, config):
    return jax.vmap(lambda k: _train_core(k, x, y, module, config))(keys)


def _prepare(arch, x, y, config: EdgePopupConfig | None) -> tuple[MLP, EdgePopupConfig]:
    config = EdgePopupConfig() if config is None else config
    module = resolve_module(arch, config)
    _check_data(module, x, y)
    return module, config


def train(
    key: jax.Array, arch: Sequence[int] | MLP, x_train, y_train, config: EdgePopupConfig | None = None
) -> EdgePopupResult:
    """Run edge-popup from ``key`` (jitted; vmappable over ``key``). ``arch``: sizes or an ``MLP``."""
    return _train_jit(key, x_train, y_train, *_prepare(arch, x_train, y_train, config))


def train_seeds(
    keys: jax.Array, arch: Sequence[int] | MLP, x_train, y_train, config: EdgePopupConfig | None = None
) -> EdgePopupResult:
    """``jax.vmap(train)`` over a batch of keys: one compiled program for all seeds."""
    return _train_seeds_jit(keys, x_train, y_train, *_prepare(arch, x_train, y_train, config))


@jax.jit
def _evaluate_jit(result: EdgePopupResult, x, y):
    def one(r):
        return accuracy(r.module, masks_lib.apply(r.params, r.mask), x, y)

    if result.train_accuracy.ndim == 0:
        return one(result)
    return jax.vmap(one)(result)


def evaluate(result: EdgePopupResult, x, y) -> jax.Array:
    """Accuracy of the final subnetwork(s) on (x, y): a scalar, or one per seed for ``train_seeds``."""
    _check_data(result.module, x, y)
    x = jnp.reshape(jnp.asarray(x, jnp.float32), (np.shape(x)[0], -1))
    return _evaluate_jit(result, x, jnp.asarray(y, jnp.int32))
