"""The generation loop shared by the GAs (strong-ticket GA, NeTS): chunks of a ``lax.while_loop``.

A run is ``state = init(...)`` and then ``advance`` until the algorithm's stop rule; generation ``g`` always
gets the key ``fold_in(k_run, g)``, so any chunking of ``advance`` calls reproduces one whole ``run``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from es_lottery.keys import generation_key


def history_buffers(template: dict, rows: int) -> dict:
    """One ``(rows,)`` buffer per metric of ``template`` (shape/dtype structs), padded with NaN / −1."""
    return {
        k: jnp.full((rows,), -1 if jnp.issubdtype(v.dtype, jnp.integer) else jnp.nan, v.dtype)
        for k, v in template.items()
    }


def advance_generations(step: Callable, stop: Callable, k_run: jax.Array, state, hist: dict, until):
    """Run ``state, metrics = step(generation_key(k_run, g), state)`` while ``not stop(state)`` and
    ``state.generation < until``, writing each generation's metrics into row ``g`` of ``hist``."""

    def cond(c):
        st, _ = c
        return ~stop(st) & (st.generation < until)

    def body(c):
        st, h = c
        g = st.generation
        st, metrics = step(generation_key(k_run, g), st)
        return st, {k: h[k].at[g].set(metrics[k]) for k in h}

    return jax.lax.while_loop(cond, body, (state, hist))


def advance_search(step: Callable, should_stop: Callable, k_run, state, hist: dict, task, config, until):
    """:func:`advance_generations` for a search whose generation is ``step(key, state, task, config)`` and
    whose stop rule is ``should_stop(state.generation, state.last_change, config)`` (the GA, NeTS)."""
    return advance_generations(
        lambda k, s: step(k, s, task, config),
        lambda s: should_stop(s.generation, s.last_change, config),
        k_run,
        state,
        hist,
        until,
    )
