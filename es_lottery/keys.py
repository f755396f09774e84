"""How every search and experiment derives its random keys (one place, so they cannot drift apart).

* :func:`seed_keys` — seed ``s`` of an experiment with base seed ``b`` uses ``fold_in(key(b), s)``: a seed's
  numbers do not depend on how many seeds run with it (or in which chunk).
* :func:`split_run_key` — a run key → ``(init key, run key)``: the GA, NeTS and the ES draw their initial
  state from the first and their generations from the second; iterative pruning draws θ₀ from the first and
  its level keys from the second.
* :func:`generation_key` — generation ``g`` of a run gets ``fold_in(run key, g)``, so any chunking of a
  run into pieces (``advance`` calls, checkpoints, resumes) reproduces the whole run exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["generation_key", "seed_keys", "split_run_key"]


def seed_keys(base_seed: int, n: int) -> jax.Array:
    """The keys of seeds ``0 … n−1``: ``fold_in(key(base_seed), s)``, shape ``(n,)``."""
    base = jax.random.key(base_seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(n))


def split_run_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(init key, run key)`` of a run key, as every ``run`` uses them."""
    k_init, k_run = jax.random.split(key)
    return k_init, k_run


def generation_key(key: jax.Array, generation) -> jax.Array:
    """The key generation ``generation`` (0-based) of a run gets: ``fold_in(run key, generation)``."""
    return jax.random.fold_in(key, generation)
