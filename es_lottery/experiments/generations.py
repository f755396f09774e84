"""The host side of a generation-based search (the strong-ticket GA, NeTS): one loop for both.

A search is advanced in chunks of ``every`` generations (``search.advance``, jitted, all seeds of a job in
one program); between chunks the host reports progress and, every ``checkpoint_seconds``, saves the seeds'
states and histories (``store.save_tree``). A job that finds its checkpoint continues from it; since a
chunked run reproduces one whole run exactly (generation g always gets ``generation_key(k_run, g)``), the
numbers are those of an uninterrupted run — only the wall-clock ``seconds`` include the time before the
interruption. :func:`history_rows` turns the history buffers into per-seed metrics rows.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from es_lottery.treeio import DamagedFile, load_tree, save_tree

__all__ = ["advance_until_stopped", "history_rows"]


def advance_until_stopped(
    advance: Callable,
    stopped: Callable[[Any], np.ndarray],
    k_run,
    state,
    hist: dict,
    *,
    every: int,
    on_chunk: Callable[[Any, int, np.ndarray, float], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_seconds: float = math.inf,
    meta: dict | None = None,
    on_resume: Callable[[int, Path], None] | None = None,
    started: float | None = None,
    on_damaged: Callable[[Path, str], None] | None = None,
) -> tuple[Any, dict, float]:
    """Run ``state, hist = advance(k_run, state, hist, until)`` for until = every, 2·every, … until every
    seed has ``stopped(state)``; returns ``(state, hist, seconds)``.

    ``on_chunk(state, until, stopped, seconds)`` after every chunk. ``checkpoint``: where the seeds' state
    and history are saved every ``checkpoint_seconds`` (with ``meta``, ``until`` and the seconds so far)
    and resumed from when the file exists; the caller removes it once the results are recorded.
    ``started``: the wall-clock time the job started (default: now), for ``seconds``.

    A checkpoint that does not read back (truncated, empty, overwritten, another layout) is deleted and
    ``on_damaged(path, message)`` told (default: a ``RuntimeWarning``); the job then runs from its start,
    to the same numbers. A ``KeyboardInterrupt`` saves the last finished chunk before it propagates."""
    t0 = time.time() if started is None else started
    until = 0
    if checkpoint is not None and checkpoint.exists():
        try:
            loaded, saved = load_tree(checkpoint, (state, hist))
            at, seconds = int(saved["until"]), float(saved["seconds"])
        except (ValueError, KeyError, TypeError) as err:  # DamagedFile, another layout, bad metadata
            detail = str(err) if isinstance(err, DamagedFile) else f"{checkpoint}: unusable ({err})"
            checkpoint.unlink(missing_ok=True)
            (on_damaged or _warn_damaged)(checkpoint, detail)
        else:
            (state, hist), until, t0 = loaded, at, time.time() - seconds
            if on_resume is not None:
                on_resume(until, checkpoint)

    def save(state, hist, until):
        save_tree(checkpoint, (state, hist), {**(meta or {}), "until": until, "seconds": time.time() - t0})

    saved_at, saved_until = time.time(), until
    try:
        while True:
            nxt = until + every
            new_state, new_hist = advance(k_run, state, hist, nxt)
            state, hist, until = new_state, new_hist, nxt
            done = np.asarray(stopped(state))
            if on_chunk is not None:
                on_chunk(state, until, done, time.time() - t0)
            if done.all():
                break
            if checkpoint is not None and time.time() - saved_at >= checkpoint_seconds:
                save(state, hist, until)
                saved_at, saved_until = time.time(), until
    except KeyboardInterrupt:
        # Ctrl-C: keep the last finished chunk (a chunk boundary, as every checkpoint), then stop
        if checkpoint is not None and until > saved_until:
            save(state, hist, until)
        raise
    return state, hist, time.time() - t0


def _warn_damaged(path: Path, detail: str) -> None:
    warnings.warn(f"{detail}; deleted it, the job restarts from its start", RuntimeWarning, stacklevel=3)


def history_rows(hist: dict, generations) -> list[list[dict]]:
    """Per seed, one row per generation it ran (``hist[k]`` is ``(seeds, cap)``; row g of seed i for
    g < ``generations[i]``), values as plain Python numbers."""
    hist = {k: np.asarray(v) for k, v in hist.items()}
    gens = np.asarray(generations)
    return [[{k: hist[k][i, g].item() for k in hist} for g in range(int(gens[i]))] for i in range(len(gens))]
