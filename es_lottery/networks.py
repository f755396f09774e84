"""Flax network definitions and the papers' initialisers.

Networks
--------
* ``MLP(sizes=(in, h1, ..., out))`` — Dense layers ``dense_0 … dense_{L-1}``, hidden activation
  ``relu``/``tanh``, output activation ``none``/``tanh``. Inputs are batched; trailing dims are flattened
  (so LeNet-300-100 takes ``(B, 28, 28, 1)`` images as well as ``(B, 784)``).
* ``PaperCNN()`` — the ES-lottery vision CNN: Conv 8 5×5 SAME → ReLU → maxpool 2 → Conv 16 5×5 SAME →
  ReLU → maxpool 2 → Dense 10 on ``(B, 28, 28, 1)``: 11,274 params, 11,240 prunable.
* ``lenet_300_100()`` — ``MLP((784, 300, 100, 10))``.

Initialisers (``weight_init=``; the field is not called ``init`` because that is flax's method)
------------------------
* ``"uniform"`` — U[-1, 1] for weights AND biases (strong-ticket papers).
* ``"kaiming_normal"`` — N(0, 2/fan_in) weights, zero biases.
* ``"signed_kaiming_constant"`` — ±sqrt(2/fan_in) with a random sign, zero biases.
* ``"lecun_normal"`` — truncated normal with variance 1/fan_in (flax default), zero biases.
* ``"lecun_normal_hidden_bias"`` — the original es-lottery MNIST CNN (``src/tasks/mnist_policy.py``):
  LeCun-normal kernels, the biases of every hidden layer (the paper CNN's two convolutions) drawn from
  U[0, 0.05) (flax's ``uniform(0.05)``), the output layer's bias zero (flax's default).

``kept_fraction`` (in (0, 1]) scales the Kaiming inits to the expected number of active inputs: the
fan-in used is ``fan_in * kept_fraction`` (edge-popup's "scaled" variants). It does not affect the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import masks as masks_lib
from es_lottery._checks import check_choice

__all__ = [
    "HIDDEN_ACTIVATIONS",
    "INITS",
    "MLP",
    "NETWORKS",
    "OUTPUT_ACTIVATIONS",
    "PaperCNN",
    "apply",
    "check_input",
    "init_params",
    "initializers",
    "lenet_300_100",
    "make_network",
    "num_params",
    "num_prunable",
    "output_bias_init",
]

INITS = ("uniform", "kaiming_normal", "signed_kaiming_constant", "lecun_normal", "lecun_normal_hidden_bias")
# inits whose output-layer bias is zero while their hidden layers' biases are not
ZERO_OUTPUT_BIAS = ("lecun_normal_hidden_bias",)
HIDDEN_BIAS_SCALE = 0.05  # lecun_normal_hidden_bias: hidden biases ~ U[0, 0.05)
HIDDEN_ACTIVATIONS = ("relu", "tanh")
OUTPUT_ACTIVATIONS = ("none", "tanh")
NETWORKS = ("mlp", "paper_cnn", "lenet_300_100")

ACTIVATION_FNS: dict[str, Callable] = {"relu": jax.nn.relu, "tanh": jnp.tanh, "none": lambda x: x}


def _fan_in(shape: Sequence[int]) -> int:
    # dense kernel (in, out); conv kernel (kh, kw, in, out)
    return int(np.prod(shape[:-1]))


def initializers(init: str = "uniform", kept_fraction: float = 1.0) -> tuple[Callable, Callable]:
    """(kernel_init, bias_init) for one of ``INITS``; bias_init is the HIDDEN layers' (see
    :func:`output_bias_init` for the output layer's)."""
    check_choice(init, INITS, "weight_init")
    kf = masks_lib.check_density(kept_fraction, field="kept_fraction")

    def uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)

    def kaiming_std(shape):
        return np.sqrt(2.0 / (_fan_in(shape) * kf))

    def kaiming_normal(key, shape, dtype=jnp.float32):
        return kaiming_std(shape) * jax.random.normal(key, shape, dtype)

    def signed_constant(key, shape, dtype=jnp.float32):
        sign = jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)
        return kaiming_std(shape) * sign

    zeros = nn.initializers.zeros
    return {
        "uniform": (uniform, uniform),
        "kaiming_normal": (kaiming_normal, zeros),
        "signed_kaiming_constant": (signed_constant, zeros),
        "lecun_normal": (nn.initializers.lecun_normal(), zeros),
        "lecun_normal_hidden_bias": (
            nn.initializers.lecun_normal(),
            nn.initializers.uniform(HIDDEN_BIAS_SCALE),
        ),
    }[init]


def output_bias_init(init: str, hidden_bias_init: Callable) -> Callable:
    """The output layer's bias initialiser: zeros for ``ZERO_OUTPUT_BIAS`` inits, else the hidden one."""
    return nn.initializers.zeros if init in ZERO_OUTPUT_BIAS else hidden_bias_init


class MLP(nn.Module):
    """Fully connected network; ``sizes`` includes the input and output sizes."""

    sizes: Sequence[int]
    hidden_activation: str = "relu"
    output_activation: str = "none"
    weight_init: str = "uniform"
    kept_fraction: float = 1.0

    def validate(self) -> MLP:
        if len(self.sizes) < 2 or any((not isinstance(s, (int, np.integer))) or s < 1 for s in self.sizes):
            raise ValueError(f"sizes must be ≥ 2 positive ints (input, hidden…, output), got {self.sizes!r}")
        check_choice(self.hidden_activation, HIDDEN_ACTIVATIONS, "hidden_activation")
        check_choice(self.output_activation, OUTPUT_ACTIVATIONS, "output_activation")
        initializers(self.weight_init, self.kept_fraction)
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (int(self.sizes[0]),)

    @nn.compact
    def __call__(self, x):
        self.validate()
        x = check_input(x, self.input_shape, flatten=True)
        kinit, binit = initializers(self.weight_init, self.kept_fraction)
        n_layers = len(self.sizes) - 1
        for i, width in enumerate(self.sizes[1:]):
            last = i == n_layers - 1
            bias_init = output_bias_init(self.weight_init, binit) if last else binit
            x = nn.Dense(int(width), kernel_init=kinit, bias_init=bias_init, name=f"dense_{i}")(x)
            x = ACTIVATION_FNS[self.output_activation if last else self.hidden_activation](x)
        return x


class PaperCNN(nn.Module):
    """The ES-lottery vision CNN (Lange & Sprekeler 2023) for 28×28×1 images, 10 classes."""

    weight_init: str = "lecun_normal"
    kept_fraction: float = 1.0
    num_classes: int = 10

    def validate(self) -> PaperCNN:
        initializers(self.weight_init, self.kept_fraction)
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (28, 28, 1)

    @nn.compact
    def __call__(self, x):
        self.validate()
        x = check_input(x, self.input_shape)
        kinit, binit = initializers(self.weight_init, self.kept_fraction)
        x = nn.Conv(8, (5, 5), padding="SAME", kernel_init=kinit, bias_init=binit, name="conv_0")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.Conv(16, (5, 5), padding="SAME", kernel_init=kinit, bias_init=binit, name="conv_1")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        out_binit = output_bias_init(self.weight_init, binit)
        return nn.Dense(self.num_classes, kernel_init=kinit, bias_init=out_binit, name="dense_0")(x)


def lenet_300_100(weight_init: str = "lecun_normal", kept_fraction: float = 1.0) -> MLP:
    """LeNet-300-100: 784 → 300 → 100 → 10, ReLU."""
    return MLP((784, 300, 100, 10), weight_init=weight_init, kept_fraction=kept_fraction)


def check_input(x, input_shape: tuple[int, ...], flatten: bool = False):
    """Validate a batched input ``(B, *input_shape)``; with ``flatten`` trailing dims are flattened."""
    shape = tuple(np.shape(x))
    if flatten:
        if len(shape) < 2 or int(np.prod(shape[1:])) != int(np.prod(input_shape)):
            raise ValueError(
                f"input x must have shape (batch, {input_shape[0]}) (trailing dims flattened), got {shape}"
            )
        return jnp.reshape(x, (shape[0], -1))
    if shape[1:] != tuple(input_shape):
        raise ValueError(f"input x must have shape (batch, {', '.join(map(str, input_shape))}), got {shape}")
    return x


def make_network(name: str, **kwargs) -> nn.Module:
    """Build a network by name: ``mlp`` (needs ``sizes``), ``paper_cnn``, ``lenet_300_100``."""
    check_choice(name, NETWORKS, "network")
    if name == "mlp":
        if "sizes" not in kwargs:
            raise ValueError("network 'mlp' needs the field 'sizes', e.g. sizes=[2, 20, 2]")
        module = MLP(tuple(int(s) for s in kwargs.pop("sizes")), **kwargs)
    elif name == "paper_cnn":
        module = PaperCNN(**kwargs)
    else:
        module = lenet_300_100(**kwargs)
    return module.validate()


def init_params(key: jax.Array, module: nn.Module):
    """Initialise ``module`` and return its params tree (the inner ``'params'`` collection)."""
    module.validate()
    dummy = jnp.zeros((1, *module.input_shape), jnp.float32)
    return module.init(key, dummy)["params"]


def apply(module: nn.Module, params, x):
    """Forward pass of ONE network on a batch."""
    return module.apply({"params": params}, x)


def num_params(params) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def num_prunable(params, prunable=None) -> int:
    return masks_lib.count(masks_lib.ones(params), prunable)[1]
