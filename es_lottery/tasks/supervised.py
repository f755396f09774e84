"""Supervised training and evaluation primitives shared by the classification task and the searches.

* ``TrainConfig`` / ``sgd_train`` / ``train_population``: masked SGD (pruned weights stay exactly 0: the
  gradient is masked and the mask re-applied after every update). ``train_population`` trains ALL members
  of a population as ONE program (``vmap`` over members of the epoch/batch scans), every member with the
  same batch order (common random numbers). NeTS uses it for its inner training and its final training.
* ``per_example_loss`` / ``predictions``: the log loss of a classifier — binary cross-entropy on the logit
  of a 1-output network (XOR 2-h-1), softmax cross-entropy otherwise — and its predicted classes.
* ``population_loss`` / ``evaluate_ticket``: mean log loss and accuracy of a population (shared input,
  ``population.make_forward``) or of one network, in data chunks with exact integer hit counts.
* ``epoch_batches``: one epoch of shuffled, zero-weight-padded batches (used by every gradient trainer).

The population kernels' ``cross_entropy`` metric (``population.evaluate_*``) is the softmax cross-entropy
of multi-output networks summed in a different order; ``ClassificationTask(objective="log_loss")`` uses
the functions here, ``objective="cross_entropy"`` the kernels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from es_lottery import masks as masks_lib
from es_lottery import networks, population
from es_lottery._checks import check_int, check_number, check_positive

PyTree = Any

__all__ = [
    "TrainConfig",
    "epoch_batches",
    "evaluate_ticket",
    "per_example_loss",
    "population_loss",
    "predictions",
    "sgd_train",
    "train_population",
    "train_ticket",
]


@dataclass(frozen=True)
class TrainConfig:
    """Masked SGD settings (hashable; a static argument). Used for the inner training of the fitness and
    for the final training of tickets. ``momentum`` 0 is plain SGD (the paper's)."""

    epochs: int = 50
    lr: float = 0.1
    batch_size: int = 64
    momentum: float = 0.0
    eval_chunk: int = 2048  # examples per forward pass when evaluating

    def __post_init__(self):
        check_int(self.epochs, "epochs", 1)
        check_positive(self.lr, "lr")
        check_int(self.batch_size, "batch_size", 1)
        m = check_number(self.momentum, "momentum")
        if not 0.0 <= m < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        check_int(self.eval_chunk, "eval_chunk", 1)

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """One epoch of shuffled batches: (indices (S, B) int32, weights (S, B) float32).

    S = ceil(n / B); the last batch holds n − (S−1)·B real samples, the rest is padding with weight 0.
    """
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    perm = jax.random.permutation(key, n).astype(jnp.int32)
    idx = jnp.concatenate([perm, jnp.zeros((pad,), jnp.int32)]).reshape(steps, batch_size)
    w = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    return idx, w.reshape(steps, batch_size)


def per_example_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Binary cross-entropy on the logit (1 output) or softmax cross-entropy (≥ 2 outputs)."""
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        return optax.sigmoid_binary_cross_entropy(z, y.astype(z.dtype))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def predictions(logits: jax.Array) -> jax.Array:
    """Predicted class: logit > 0 (1 output) or argmax (first index wins ties)."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _batch_loss(params, module, x, y, w):
    loss = per_example_loss(networks.apply(module, params, x), y)
    return jnp.sum(w * loss) / jnp.maximum(jnp.sum(w), 1.0)


def masked_train(
    key: jax.Array,
    params: PyTree,
    mask: PyTree,
    x: jax.Array,
    y: jax.Array,
    module: nn.Module,
    opt: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
) -> tuple[PyTree, jax.Array]:
    """Masked minibatch training with the optax optimizer ``opt`` (fresh state) from ``params ⊙ mask``:
    (trained params, per-epoch mean training loss).

    Gradients are masked and the mask is re-applied after every update, so pruned weights stay exactly 0.
    Epoch e shuffles with ``fold_in(key, e)``; every example counts once per epoch. Pure and vmap-safe.
    """
    n = x.shape[0]
    bs = min(int(batch_size), n)
    params = masks_lib.apply(params, mask)
    grad_fn = jax.value_and_grad(_batch_loss)

    def step(carry, batch):
        p, s = carry
        idx, w = batch
        loss, g = grad_fn(p, module, x[idx], y[idx], w)
        updates, s = opt.update(masks_lib.apply(g, mask), s, p)
        p = masks_lib.apply(optax.apply_updates(p, updates), mask)
        return (p, s), loss * jnp.sum(w)

    def epoch(carry, e):
        idx, w = epoch_batches(jax.random.fold_in(key, e), n, bs)
        carry, weighted = jax.lax.scan(step, carry, (idx, w))
        return carry, jnp.sum(weighted) / n

    (params, _), losses = jax.lax.scan(epoch, (params, opt.init(params)), jnp.arange(epochs))
    return params, losses


def sgd_train(
    key: jax.Array,
    params: PyTree,
    mask: PyTree,
    x: jax.Array,
    y: jax.Array,
    module: nn.Module,
    config: TrainConfig,
) -> tuple[PyTree, jax.Array]:
    """Masked SGD (``config``'s rate and momentum) from ``params ⊙ mask``: (trained params, per-epoch mean
    training loss) — :func:`masked_train` with ``optax.sgd``."""
    opt = optax.sgd(config.lr, momentum=config.momentum if config.momentum > 0 else None)
    return masked_train(key, params, mask, x, y, module, opt, config.epochs, config.batch_size)


def train_population(
    key: jax.Array,
    member_params: PyTree,
    member_masks: PyTree,
    x: jax.Array,
    y: jax.Array,
    module: nn.Module,
    config: TrainConfig,
) -> tuple[PyTree, jax.Array]:
    """``sgd_train`` of every member (leading axis P) with the same key (same batch order) — ONE program:
    ``vmap`` over members of the epoch/batch scans. Returns (trained params (P, …), losses (P, epochs))."""
    return jax.vmap(lambda p, m: sgd_train(key, p, m, x, y, module, config))(member_params, member_masks)


def _chunked(x, y, chunk: int):
    n = x.shape[0]
    c = min(int(chunk), n)
    steps = -(-n // c)
    pad = steps * c - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(steps, c, *x.shape[1:])
    yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(steps, c)
    vp = (jnp.arange(steps * c) < n).reshape(steps, c)
    return xp, yp, vp


def population_loss(
    module: nn.Module, member_params: PyTree, x: jax.Array, y: jax.Array, chunk: int = 2048
) -> tuple[jax.Array, jax.Array]:
    """(mean loss (P,), accuracy (P,)) of every member on ``(x, y)``, in chunks of ``chunk`` examples.

    Uses the population forward kernel (``population.make_forward``): the input is shared by all members.
    """
    n = x.shape[0]
    forward = population.make_forward(module, member_params)
    npop = population.population_size(member_params)

    def body(carry, batch):
        loss, hits = carry
        xb, yb, vb = batch
        out = forward(xb)  # (P, c, out)
        per = per_example_loss(out, jnp.broadcast_to(yb, out.shape[:2]))
        hit = (predictions(out) == yb[None]) & vb[None]
        return (
            loss + jnp.sum(jnp.where(vb[None], per, 0.0), axis=1),
            hits + jnp.sum(hit, 1, jnp.int32),
        ), None

    init = (jnp.zeros((npop,), jnp.float32), jnp.zeros((npop,), jnp.int32))
    (loss, hits), _ = jax.lax.scan(body, init, _chunked(x, y, chunk))
    return loss / n, hits / n


def evaluate_ticket(
    module: nn.Module, params: PyTree, x, y, chunk: int = 2048
) -> tuple[jax.Array, jax.Array]:
    """(accuracy, mean loss) of ONE network on ``(x, y)``, chunked, exact integer hit counts."""
    n = x.shape[0]

    def body(carry, batch):
        hits, loss = carry
        xb, yb, vb = batch
        out = networks.apply(module, params, xb)
        hit = (predictions(out) == yb) & vb
        return (
            hits + jnp.sum(hit, dtype=jnp.int32),
            loss + jnp.sum(jnp.where(vb, per_example_loss(out, yb), 0.0)),
        ), None

    (hits, loss), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)), _chunked(x, y, chunk)
    )
    return hits / n, loss / n


@partial(jax.jit, static_argnames=("module", "config"))
def train_ticket(
    key: jax.Array,
    params: PyTree,
    mask: PyTree,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: jax.Array,
    y_test: jax.Array,
    module: nn.Module,
    config: TrainConfig,
) -> tuple[PyTree, dict]:
    """Final training of a ticket: masked SGD from ``params ⊙ mask`` for ``config.epochs`` epochs, then the
    test metrics. Returns (trained params, {train_loss (epochs,), test_accuracy, test_loss})."""
    trained, losses = sgd_train(key, params, mask, x_train, y_train, module, config)
    acc, loss = evaluate_ticket(module, trained, x_test, y_test, config.eval_chunk)
    return trained, {"train_loss": losses, "test_accuracy": acc, "test_loss": loss}
