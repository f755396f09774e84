"""The task protocol: one fitness interface for every search (GA, ES, NeTS) and every problem.

A task is a STATIC object (a ``flax.struct`` dataclass: settings are static fields, arrays such as datasets
are pytree leaves, so a task passes through ``jax.jit`` as an argument and its data is never baked into the
compiled program) with an EXPLICIT state and pure functions, in the spirit of evosax's problems:

* ``init_state(key) -> state`` — what the task changes while a search runs (a control task's running
  observation statistics); ``None`` for stateless tasks (classification, most user fitness functions).
* ``fitness(state, key, members) -> (fitness (P,), state)`` — to MAXIMISE (accuracy, return, −loss).
  ``members`` is either a params pytree with a leading population axis on every leaf (ES, NeTS: one weight
  set per member) or a :class:`MaskedPopulation` (GA: per-member masks over shared weights; NeTS: per-member
  masks over per-member weights). ``key`` drives whatever is random in an evaluation (a training batch,
  rollout noise).
* ``fitness_metrics(state, key, members) -> (fitness, {name: (P,)}, state)`` — the same, plus per-member
  side metrics (the GA's accuracy bound reads ``"accuracy"``; NeTS logs validation accuracy). A task
  implements at least one of ``fitness`` and ``fitness_metrics``; :class:`TaskBase` derives the other.
* ``evaluate(state, params) -> {name: scalar}`` — the test metrics of ONE network (the ES mean);
  ``score_key`` names the entry that selects the best evaluation. ``evaluate_members(state, members)``
  does the same for a whole population (``{name: (P,)}``).
* ``init_params(key)`` — tasks that own a network draw its initial weights (θ₀, the GA's frozen weights).

Searches never look inside a task: classification (``tasks.classification.ClassificationTask``), control
(``tasks.control.ControlTask``) and a user's own function (:func:`from_function`) plug in the same way.

Devices. A task's fitness is where the population is split over devices: the tasks here carry a static
``sharding`` (:class:`es_lottery.distributed.PopulationSharding`, taken from
:func:`es_lottery.distributed.use_devices` when the task is built) and evaluate their population in
fixed-size member blocks over its mesh (:func:`es_lottery.distributed.map_blocks`); the searches are
unchanged and keep their state replicated. Tasks of your own can do the same with ``map_blocks``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from es_lottery import distributed

PyTree = Any
Metrics = dict[str, jax.Array]

__all__ = [
    "FunctionTask",
    "MaskedPopulation",
    "Task",
    "TaskBase",
    "check_task",
    "fitness_metrics",
    "from_function",
    "member_params",
    "members_size",
]


@struct.dataclass
class MaskedPopulation:
    """Members given as masks over weights.

    ``masks``: a mask tree congruent to the params with a leading population axis P on every leaf.
    ``params``: the weights — shared by every member (no population axis; ``shared=True``, the GA's frozen
    random weights) or one set per member (leading axis P; ``shared=False``, NeTS genomes).
    """

    params: PyTree
    masks: PyTree
    shared: bool = struct.field(pytree_node=False, default=True)

    @property
    def size(self) -> int:
        return int(jax.tree_util.tree_leaves(self.masks)[0].shape[0])


def members_size(members) -> int:
    """The population size P of ``members`` (a member-params tree or a :class:`MaskedPopulation`)."""
    if isinstance(members, MaskedPopulation):
        return members.size
    return int(jax.tree_util.tree_leaves(members)[0].shape[0])


def member_params(members) -> PyTree:
    """Per-member weights with a leading axis P: the masks applied (exact zeros at pruned entries)."""
    if not isinstance(members, MaskedPopulation):
        return members
    if members.shared:
        return jax.tree_util.tree_map(
            lambda w, m: jnp.where(m, w[None], jnp.zeros((), w.dtype)), members.params, members.masks
        )
    return jax.tree_util.tree_map(
        lambda w, m: jnp.where(m, w, jnp.zeros((), w.dtype)), members.params, members.masks
    )


@runtime_checkable
class Task(Protocol):
    """What a search needs of a problem (see the module doc)."""

    score_key: str

    def init_state(self, key: jax.Array) -> PyTree: ...

    def fitness(self, state: PyTree, key: jax.Array, members) -> tuple[jax.Array, PyTree]: ...

    def evaluate(self, state: PyTree, params: PyTree) -> Metrics: ...


class TaskBase:
    """Defaults for the protocol; subclasses override ``fitness`` or ``fitness_metrics`` (at least one).

    Subclasses are ``flax.struct`` dataclasses; this mixin holds no fields of its own.
    """

    score_key = "score"

    def init_state(self, key: jax.Array) -> PyTree:
        """No state (``None``): a stateless task."""
        del key
        return None

    def fitness(self, state, key, members):
        if type(self).fitness_metrics is TaskBase.fitness_metrics:
            raise NotImplementedError(f"{type(self).__name__} implements neither fitness nor fitness_metrics")
        fit, _, state = self.fitness_metrics(state, key, members)
        return fit, state

    def fitness_metrics(self, state, key, members):
        if type(self).fitness is TaskBase.fitness:
            raise NotImplementedError(f"{type(self).__name__} implements neither fitness nor fitness_metrics")
        fit, state = self.fitness(state, key, members)
        return fit, {}, state

    @property
    def has_eval(self) -> bool:
        """Whether ``evaluate`` returns metrics (a task without test metrics keeps the latest mean)."""
        return True

    def evaluate(self, state, params) -> Metrics:
        """Metrics of one network; the default has none."""
        del state, params
        return {}

    def evaluate_members(self, state, members) -> Metrics:
        """``evaluate`` of every member: ``{name: (P,)}`` (the default maps ``evaluate`` over members)."""
        return jax.lax.map(lambda p: self.evaluate(state, p), member_params(members))


def fitness_metrics(task, state, key: jax.Array, members):
    """``(fitness, {name: (P,)}, state)`` of any protocol task: its ``fitness_metrics`` when it has one,
    else its ``fitness`` with no side metrics."""
    if callable(getattr(task, "fitness_metrics", None)):
        return task.fitness_metrics(state, key, members)
    fit, state = task.fitness(state, key, members)
    return fit, {}, state


def check_task(task: Any, field: str = "task") -> None:
    """``TypeError`` naming what is missing unless ``task`` follows the protocol (checked on the host)."""
    missing = [name for name in ("init_state", "evaluate") if not callable(getattr(task, name, None))]
    if not (callable(getattr(task, "fitness", None)) or callable(getattr(task, "fitness_metrics", None))):
        missing.append("fitness")
    if not isinstance(getattr(task, "score_key", None), str):
        missing.append("score_key")
    if missing:
        raise TypeError(
            f"{field} must follow the task protocol (es_lottery.tasks.base.Task); "
            f"{type(task).__name__} lacks {', '.join(missing)}"
        )


# ----------------------------------------------------------------------------------------------
# a user's own fitness


@struct.dataclass
class FunctionTask(TaskBase):
    """A task from plain functions (see :func:`from_function`); ``data`` is passed to them as a traced
    argument, so large arrays are not compiled in as constants."""

    data: PyTree
    fn: Callable = struct.field(pytree_node=False)
    batched: bool = struct.field(pytree_node=False, default=False)
    eval_fn: Callable | None = struct.field(pytree_node=False, default=None)
    params_fn: Callable | None = struct.field(pytree_node=False, default=None)
    score_key: str = struct.field(pytree_node=False, default="score")
    sharding: distributed.PopulationSharding | None = struct.field(pytree_node=False, default=None)

    def _population_fitness(self, data, key, params):
        if self.batched:
            return jnp.asarray(self.fn(data, key, params), jnp.float32)
        return jnp.asarray(jax.vmap(lambda p: self.fn(data, p))(params), jnp.float32)

    def fitness(self, state, key, members):
        params = member_params(members)
        if self.sharding is None:
            return self._population_fitness(self.data, key, params), state

        def block(member_block, live, shared):
            return self._population_fitness(shared[0], shared[1], member_block), None

        fit, _ = distributed.map_blocks(block, params, (self.data, key), self.sharding)
        return fit, state

    @property
    def has_eval(self) -> bool:
        return self.eval_fn is not None

    def evaluate(self, state, params) -> Metrics:
        if self.eval_fn is None:
            return {}
        return dict(self.eval_fn(self.data, params))

    def init_params(self, key: jax.Array) -> PyTree:
        if self.params_fn is None:
            raise ValueError(
                "this task has no init_params: pass init_params=... to tasks.from_function (a function of a "
                "key returning the params tree), or give the search its params explicitly"
            )
        return self.params_fn(key)


@struct.dataclass
class _DataFree:
    """Adapts ``f(*args)`` to ``f(data, *args)`` (for functions that close over their arrays)."""

    f: Callable = struct.field(pytree_node=False)

    def __call__(self, data, *args):
        del data
        return self.f(*args)


def from_function(
    fitness: Callable,
    *,
    batched: bool = False,
    evaluate: Callable | None = None,
    init_params: Callable | None = None,
    score_key: str = "score",
    data: PyTree = None,
    sharding="context",
) -> FunctionTask:
    """A task from your own fitness function (to MAXIMISE).

    ``batched=False``: ``fitness(params) -> scalar`` for ONE network (vmapped over the population).
    ``batched=True``: ``fitness(key, member_params) -> (P,)`` for the whole population at once.
    ``evaluate(params) -> {name: scalar}`` (optional) gives test metrics; ``score_key`` names the one that
    picks the best ES mean. ``init_params(key) -> params`` (optional) lets searches draw weights (the GA's
    frozen weights, the ES's θ₀). With ``data`` given, every function takes it as its FIRST argument
    (``fitness(data, params)`` …) and it is passed as a traced argument instead of a compiled constant.
    Masked populations (GA) reach the function with the masks applied (pruned weights exactly 0).
    ``sharding`` (``"context"``: :func:`es_lottery.distributed.use_devices`'s setting): when set, the
    population is evaluated in member blocks over its devices — a batched function then sees one block of
    members at a time (with the same key), so it must score members independently of each other.
    """
    if not callable(fitness):
        raise TypeError(
            "fitness must be callable: fitness(params) -> scalar (batched: fitness(key, params) -> (P,))"
        )
    for name, f in (("evaluate", evaluate), ("init_params", init_params)):
        if f is not None and not callable(f):
            raise TypeError(f"{name} must be None or callable")
    if not isinstance(score_key, str):
        raise TypeError(f"score_key must be a string, got {score_key!r}")
    wrap = (lambda f: f) if data is not None else _DataFree
    return FunctionTask(
        data=data,
        fn=wrap(fitness),
        batched=bool(batched),
        eval_fn=None if evaluate is None else wrap(evaluate),
        params_fn=init_params,
        score_key=score_key,
        sharding=distributed.resolve_sharding(sharding),
    )
