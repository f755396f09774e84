"""Helpers for test_population: numpy-built params/masks, shared cases, and a 4-device script.

``python tests/_sharding_check.py`` must be started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` already in its environment (the flag is read when
jax initialises its backend, so it cannot be set from inside a process that has imported jax). It prints
one JSON object: the device count, and for every case and chunk size the ``shard=True`` and
``shard=False`` metrics (or the error raised). The parent test recomputes the same cases (deterministic
numpy seeds) with a plain per-member loop.

Params and masks are drawn with numpy (shapes from ``jax.eval_shape``) rather than ``init_params`` /
``random_mask``: the kernels are tested against any valid weights, and eager flax init costs seconds of
per-op compilation on a 2-core machine.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import networks as N
from es_lottery import population as pop

NPOP = 7  # does not divide the 4 devices: exercises the population padding
METRICS = ("accuracy", "cross_entropy", "mse")
CHUNKS = (None, 4)  # one chunk, and several chunks with a padded last one


def random_params(module, rng: np.random.Generator, scale: str = "uniform") -> dict:
    """A params tree for ``module`` (flax's structure) with numpy draws: U[-1, 1] or N(0, 1/fan_in)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *module.input_shape))))
    shapes = shapes["params"]

    def draw(s):
        shape = s.shape
        if scale == "uniform":
            return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 10
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map(draw, shapes)


def random_masks(params: dict, densities, rng: np.random.Generator) -> dict:
    """Stacked masks (P, …): kernels kept with probability ``densities[p]``, biases all kept."""

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        if "kernel" not in name:
            return np.ones((len(densities), *np.shape(x)), bool)
        return np.stack([rng.random(np.shape(x)) < d for d in densities])

    return jax.tree_util.tree_map_with_path(leaf, params)


def perturbed(params: dict, npop: int, rng: np.random.Generator, sigma: float = 0.2) -> dict:
    """ES members: ``params + sigma * noise`` with a leading population axis."""
    return jax.tree_util.tree_map(
        lambda p: (p[None] + sigma * rng.standard_normal((npop, *np.shape(p)))).astype(np.float32), params
    )


def cases() -> dict:
    """name → (module, mode, pop_tree, params_or_None, x, y); all deterministic."""
    out = {}
    rng = np.random.default_rng(1234)
    nets = {
        "mlp": (N.make_network("mlp", sizes=[3, 12, 9, 4]), rng.standard_normal((45, 3)), 4, "uniform"),
        "cnn": (N.make_network("paper_cnn"), rng.random((30, 28, 28, 1)), 10, "fan_in"),
    }
    for name, (module, x, n_cls, scale) in nets.items():
        x = x.astype(np.float32)
        y = rng.integers(0, n_cls, size=len(x)).astype(np.int32)
        params = random_params(module, rng, scale)
        masks = random_masks(params, np.linspace(0.2, 1.0, NPOP), rng)
        out[f"{name}_ga"] = (module, "ga", masks, params, x, y)
        out[f"{name}_es"] = (module, "es", perturbed(params, NPOP, rng), None, x, y)
    return out


def evaluate(case, shard: bool, chunk_size) -> dict:
    module, mode, tree, params, x, y = case
    try:
        if mode == "ga":
            res = pop.evaluate_masks(module, params, tree, x, y, METRICS, chunk_size=chunk_size, shard=shard)
        else:
            res = pop.evaluate_params(module, tree, x, y, METRICS, chunk_size=chunk_size, shard=shard)
    except Exception as e:  # reported to the parent test, which fails with the message
        return {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
    return {k: np.asarray(v).tolist() for k, v in res.items()}


def main() -> None:
    result = {"device_count": jax.device_count(), "cases": {}}
    for name, case in cases().items():
        for chunk in CHUNKS:
            result["cases"][f"{name}/chunk={chunk}"] = {
                "sharded": evaluate(case, shard=True, chunk_size=chunk),
                "unsharded": evaluate(case, shard=False, chunk_size=chunk),
            }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
