"""Ticket transfer (Lange & Sprekeler 2023, Sec. 4, Fig. 4–5): retrain a source run's tickets elsewhere.

A source run gives one ticket per level: its mask m_k and its level start θ₀ ⊙ m_k (baselines: their
control init). :func:`transfer_tickets` retrains EXACTLY those — the same mask and the same start values,
bit for bit — with a target trainer: any object of the ``Trainer`` protocol (``pruning.loop``:
``init_params(key)`` and ``train(key, theta0, mask) -> TrainResult``), e.g. another ES (SNES → PGPE), the
same ES on a related task (F-MNIST → MNIST) or gradient descent (ES → Adam). Nothing is pruned here: the
masks come from the source.

Keys: level k trains with ``loop.level_keys(key, k)[0]``, the key Algorithm 1 uses for level k of a run
with run key ``key``. So transferring a run's tickets to the SAME trainer with the source's run key repeats
the source's training exactly, and the result is directly comparable with the target's own IMP run.

The result (:class:`TransferResult`) holds one ``loop.LevelRecord`` per level (``theta_start`` = the start
used, ``next_mask`` = None), to plot against the target's own IMP ticket and random-reinit curves
(``plots.transfer_curves``). Tickets come from :func:`tickets_from_run` (a :class:`runs.RunData`) or from
any ``{level: (mask, theta0)}`` mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import masks as masks_lib
from es_lottery.pruning import loop

PyTree = Any

__all__ = ["Ticket", "TransferResult", "tickets_from_run", "transfer_tickets"]


class Ticket(NamedTuple):
    """A level's mask and its start values (already masked: zeros at pruned entries)."""

    mask: PyTree
    theta0: PyTree


@dataclass(frozen=True, eq=False)
class TransferResult:
    """Per-level results of retraining the source tickets with the target trainer."""

    records: tuple[loop.LevelRecord, ...]
    trainer: str

    @property
    def levels(self) -> list[int]:
        return [r.level for r in self.records]

    @property
    def densities(self) -> np.ndarray:
        return np.asarray([r.kept / r.total for r in self.records])

    @property
    def eval_scores(self) -> np.ndarray:
        return np.asarray([r.eval_score for r in self.records])


def tickets_from_run(
    run, seed: int, criterion: str, levels: Iterable[int] | None = None
) -> dict[int, Ticket]:
    """``{level: Ticket(mask, theta0)}`` of one seed and criterion of a :class:`runs.RunData`."""
    ids = run.level_ids if levels is None else list(levels)
    return {
        int(k): Ticket(run.level(seed, criterion, k).mask, run.level(seed, criterion, k).theta0) for k in ids
    }


def _check_ticket(level: int, ticket, like: PyTree, prunable) -> Ticket:
    if not (isinstance(ticket, tuple) and len(ticket) == 2):
        raise TypeError(f"ticket of level {level} must be a (mask, theta0) pair, got {type(ticket).__name__}")
    mask, theta0 = ticket
    where = f"level {level}"
    masks_lib.check_congruent(like, theta0, field=f"theta0 of {where} (vs the target trainer's params)")
    mask = jax.tree_util.tree_map(lambda m: jnp.asarray(m), mask)
    loop.check_mask(mask, like, prunable=prunable, field=f"mask of {where}")
    return Ticket(mask, jax.tree_util.tree_map(jnp.asarray, theta0))


def transfer_tickets(
    key: jax.Array,
    trainer: loop.Trainer,
    tickets: Mapping[int, Ticket | tuple],
    *,
    prunable=None,
    keep_params: bool = True,
    callback: Callable[[loop.LevelRecord], Any] | None = None,
) -> TransferResult:
    """Train every source ticket ``(mask, theta0)`` with ``trainer``: level k with ``level_keys(key, k)``.

    The trainer receives exactly the ticket's ``theta0`` and ``mask`` (no re-masking, no re-init). The
    tickets must fit the trainer's params (checked against ``trainer.init_params``'s shapes, which are
    traced, not drawn). ``callback(record)`` runs after each level.
    """
    loop.check_trainer(trainer, "magnitude")
    if not isinstance(tickets, Mapping) or not tickets:
        raise ValueError("tickets must be a non-empty mapping level → (mask, theta0)")
    try:
        like = jax.eval_shape(trainer.init_params, jax.random.key(0))
    except Exception:  # an init that cannot be traced (host code): draw it once instead
        like = trainer.init_params(jax.random.key(0))
    checked = {int(k): _check_ticket(int(k), t, like, prunable) for k, t in sorted(tickets.items())}
    name = loop.trainer_name(trainer)
    records = []
    for level, (mask, theta0) in checked.items():
        k_train, _ = loop.level_keys(key, level)
        record = loop.train_record(
            trainer, k_train, theta0, mask, level, name, keep_params=keep_params, prunable=prunable
        )
        records.append(record)
        if callback is not None:
            callback(record)
    return TransferResult(tuple(records), name)
