"""Gradient-descent trainers for classification: the GD-IMP baselines (Adam; masked SGD for NeTS).

``GDTrainer`` implements the ``Trainer`` protocol of ``es_lottery.pruning.loop``:

* ``init_params(key)`` — ``networks.init_params(key, module)`` (the module's ``weight_init``).
* ``train(key, theta0, mask)`` — a FRESH Adam state (optax, lr 3e-4 by default), minibatches of 128
  reshuffled every epoch (``k_epoch = fold_in(key, epoch)``; the last, smaller batch is padded with zero
  weights, so every sample counts once per epoch), softmax cross-entropy averaged over the batch's real
  samples. Masked training: the gradients are multiplied by the mask AND the mask is re-applied to the
  params after every update, so pruned weights stay exactly zero. All ``epochs × steps`` steps run as
  ``lax.scan`` (epochs) over ``lax.scan`` (batches) inside ONE jitted program; ``train_masked`` is that
  program as a pure function (``jax.vmap`` over keys, with ``module``/``config`` bound by
  ``functools.partial``, trains seeds).
* ``eval_score`` — test accuracy of the final params (chunked over the test set, exact integer counts).
* ``std_params`` — ``None``: gradient descent has no search distribution, so the SNR criteria are invalid
  for this trainer (``provides_std = False``; the loop rejects them before training).

``SGDTrainer`` is the same protocol over ``tasks.supervised.train_ticket`` (masked SGD): NeTS trains its
IMP levels with it, exactly like its tickets.

Paper settings (appendix C, Table 5): Adam, lr 3e-4, batch 128, 20 epochs, the vision CNN
(``networks.make_network("paper_cnn")``), CE objective, accuracy evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from es_lottery import masks as masks_lib
from es_lottery import networks, population
from es_lottery._checks import check_int
from es_lottery.pruning.loop import TrainResult
from es_lottery.tasks.supervised import TrainConfig, evaluate_ticket, masked_train, train_ticket

PyTree = Any

__all__ = ["GDConfig", "GDTrainer", "SGDTrainer", "accuracy_and_loss", "train_masked"]


@dataclass(frozen=True)
class GDConfig:
    """Static GD settings (hashable; a static argument of the jitted program). Defaults are the paper's.

    epochs: passes over the training set per level.
    learning_rate: Adam's step size.
    batch_size: training examples per step (the last batch of an epoch is padded with zero weights).
    eval_chunk: test examples per forward pass during evaluation.
    """

    epochs: int = 20
    learning_rate: float = 3e-4
    batch_size: int = 128
    eval_chunk: int = 1024  # test examples per forward pass during evaluation

    def __post_init__(self):
        check_int(self.epochs, "epochs", 1)
        ok = not isinstance(self.learning_rate, bool) and isinstance(
            self.learning_rate, (int, float, np.integer, np.floating)
        )
        if not ok or not math.isfinite(float(self.learning_rate)) or float(self.learning_rate) <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        check_int(self.batch_size, "batch_size", 1)
        check_int(self.eval_chunk, "eval_chunk", 1)

    def replace(self, **kw) -> GDConfig:
        return dataclasses.replace(self, **kw)


def accuracy_and_loss(
    module: nn.Module, params: PyTree, x, y, chunk: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """(accuracy, mean cross-entropy) of ``params`` on ``(x, y)``, in chunks of ``chunk`` examples with exact
    integer hit counts (``tasks.supervised.evaluate_ticket``: softmax cross-entropy for ≥ 2 outputs)."""
    return evaluate_ticket(module, params, x, y, chunk)


@partial(jax.jit, static_argnames=("module", "config"))
def train_masked(
    key: jax.Array,
    theta0: PyTree,
    mask: PyTree,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: jax.Array,
    y_test: jax.Array,
    module: nn.Module,
    config: GDConfig,
) -> tuple[PyTree, dict]:
    """One masked Adam run from ``theta0 ⊙ mask`` with a fresh optimizer state: (final params, metrics).

    metrics: ``train_loss`` (per epoch, mean over the epoch's samples of the pre-update batch losses),
    ``test_accuracy``, ``test_loss``.
    """
    opt = optax.adam(config.learning_rate)
    params, train_loss = masked_train(
        key, theta0, mask, x_train, y_train, module, opt, config.epochs, config.batch_size
    )
    acc, test_loss = accuracy_and_loss(module, params, x_test, y_test, config.eval_chunk)
    return params, {"train_loss": train_loss, "test_accuracy": acc, "test_loss": test_loss}


class GDTrainer:
    """Masked Adam classification trainer (``Trainer`` protocol): the GD-IMP baseline.

    Inputs may be given flattened (e.g. ``(n, 784)`` for the CNN): they are reshaped to
    ``(n, *module.input_shape)``. Labels are ints in ``0..outputs−1``.
    """

    name = "gd"
    provides_std = False

    def __init__(self, module: nn.Module, x_train, y_train, x_test, y_test, config: GDConfig = GDConfig()):
        if not isinstance(config, GDConfig):
            raise TypeError(f"config must be a GDConfig, got {type(config).__name__}")
        module.validate()
        self.module = module
        self.config = config
        in_shape = tuple(module.input_shape)
        out_dim = None
        for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            xs, ys = np.shape(x), np.shape(y)
            if len(xs) < 2 or int(np.prod(xs[1:])) != int(np.prod(in_shape)) or xs[0] < 1:
                raise ValueError(f"x_{name} must have shape (n, {', '.join(map(str, in_shape))}), got {xs}")
            if ys != (xs[0],):
                raise ValueError(f"y_{name} must have shape ({xs[0]},) (one label per input), got {ys}")
            if not np.issubdtype(np.asarray(y).dtype, np.integer) or np.min(y) < 0:
                raise ValueError(f"y_{name} must hold integer class labels ≥ 0")
            if out_dim is None:
                out_dim = population.num_outputs(module)
            if int(np.max(y)) >= out_dim:
                raise ValueError(f"y_{name} has label {int(np.max(y))} but the network has {out_dim} outputs")
        # inputs reshaped to the module's input shape (flattened images are accepted)
        self.x_train = jnp.asarray(x_train, jnp.float32).reshape(np.shape(x_train)[0], *in_shape)
        self.y_train = jnp.asarray(y_train, jnp.int32)
        self.x_test = jnp.asarray(x_test, jnp.float32).reshape(np.shape(x_test)[0], *in_shape)
        self.y_test = jnp.asarray(y_test, jnp.int32)

    @classmethod
    def from_dataset(cls, module: nn.Module, dataset, config: GDConfig = GDConfig()) -> GDTrainer:
        """From a ``tasks.classification.Dataset``."""
        return cls(module, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, config)

    def init_params(self, key: jax.Array) -> PyTree:
        return networks.init_params(key, self.module)

    def train(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> TrainResult:
        masks_lib.check_congruent(theta0, mask)
        params, metrics = train_masked(
            key,
            theta0,
            mask,
            self.x_train,
            self.y_train,
            self.x_test,
            self.y_test,
            self.module,
            self.config,
        )
        return TrainResult(
            final_params=params, std_params=None, metrics=metrics, eval_score=metrics["test_accuracy"]
        )


class SGDTrainer:
    """Masked SGD trainer (``Trainer`` protocol) with ``tasks.supervised.train_ticket``: the IMP baseline of
    NeTS, whose levels are trained exactly like the NeTS and random tickets (1-output networks use the binary
    logit loss). ``eval_score`` is the test accuracy; ``metrics`` hold ``train_loss`` per epoch,
    ``test_accuracy`` and ``test_loss``."""

    name = "sgd"
    provides_std = False

    def __init__(self, module: nn.Module, x_train, y_train, x_test, y_test, config: TrainConfig):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a tasks.supervised.TrainConfig, got {type(config).__name__}")
        module.validate()
        self.module, self.config = module, config
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test

    def init_params(self, key: jax.Array) -> PyTree:
        return networks.init_params(key, self.module)

    def train(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> TrainResult:
        params, metrics = train_ticket(
            key, theta0, mask, self.x_train, self.y_train, self.x_test, self.y_test, self.module, self.config
        )
        return TrainResult(final_params=params, metrics=metrics, eval_score=metrics["test_accuracy"])
