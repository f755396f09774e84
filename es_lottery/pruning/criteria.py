"""Pruning criteria: score pytrees over params pytrees (higher score = more worth keeping).

Every criterion has the same keyword signature

    ``fn(final_params, *, init_params=None, std_params=None, key=None) -> scores``

and returns a pytree congruent to the params. Scores are computed for every leaf, but only the prunable
leaves (kernels) matter: ``masks.prune_to`` ranks prunable entries only and keeps biases. Entries that the
current mask has already removed are excluded by ``prune_to`` (their score becomes −inf), so criteria do
not need the mask. A NaN score ranks last (``masks`` treats NaN as −inf).

=====================  ===========================  =====================================================
name                   score                        needs
=====================  ===========================  =====================================================
``magnitude``          ``|θ_f|``                    —
``snr``                ``|θ_f| / σ``                ``std_params`` (per-weight std of the ES distribution)
``snr_sep_cma_compat`` ``|θ_f| / σ²``               ``std_params`` — compatibility option, see below
``random``             ``U[0, 1)``                  ``key``
``movement``           ``|θ_f − θ₀|``               ``init_params``
``magnitude_increase`` ``|θ_f| − |θ₀|``             ``init_params``
``smallest_initial``   ``−|θ₀|``                    ``init_params`` (keeps the weights SMALLEST at init)
=====================  ===========================  =====================================================

θ_f is the trained mean (ES) or the trained weights (GD), θ₀ the rewound initialisation of the level
(Zhou et al. 2019's "final magnitude", "movement", "magnitude increase", "smallest initial";
Lange & Sprekeler 2023, appendix A.2).

SNR and σ. ``std_params`` is the per-weight standard deviation of the diagonal search distribution as the
trainer reports it: PGPE / SNES / DES ``state.std``; Sep-CMA-ES ``state.std * sqrt(state.C)``. ES with one
scalar std (ARS, OpenAI-ES) give a constant σ, for which SNR ranks exactly like magnitude. σ at pruned
entries may be anything (an ES over the active entries scatters zeros there): those entries are excluded by
``prune_to`` before ranking. Gradient
descent has no search distribution, so a GD trainer gives ``std_params=None`` and the SNR criteria are
invalid for it (a ``ValueError`` says so).

``snr_sep_cma_compat`` reproduces the original es-lottery code for Sep-CMA-ES, which divided ``|μ|`` by the
diagonal covariance ``C`` — a variance, not a standard deviation. With ``std_params = σ·sqrt(C)`` and one
scalar step size σ, ``|μ| / std² = |μ| / (σ² C)`` differs from ``|μ| / C`` by the positive constant σ² only,
so it ranks (and therefore prunes) exactly like the original. It is offered only for reproducing the
original numbers; ``snr`` (``|μ|/σ_i``) is the criterion of the paper's text and Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = [
    "CRITERIA",
    "Criterion",
    "check_trainer_compatible",
    "compute_scores",
    "get_criterion",
    "magnitude",
    "magnitude_increase",
    "movement",
    "random",
    "smallest_initial",
    "snr",
    "snr_sep_cma_compat",
]


def _abs(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x: jnp.abs(jnp.asarray(x, jnp.float32)), tree)


def magnitude(final_params: PyTree, **_: Any) -> PyTree:
    """``|θ_f|``: final magnitude (classic IMP)."""
    return _abs(final_params)


def snr(final_params: PyTree, *, std_params: PyTree = None, **_: Any) -> PyTree:
    """``|θ_f| / σ``: signal-to-noise ratio with the per-weight std of the search distribution."""
    _need(std_params, "std_params", "snr")
    return jax.tree_util.tree_map(
        lambda m, s: jnp.abs(jnp.asarray(m, jnp.float32)) / jnp.asarray(s, jnp.float32),
        final_params,
        std_params,
    )


def snr_sep_cma_compat(final_params: PyTree, *, std_params: PyTree = None, **_: Any) -> PyTree:
    """``|θ_f| / σ²``: the original code's ``|μ| / C`` for Sep-CMA-ES (compatibility option only).

    With ``std_params = σ·sqrt(C)`` (scalar σ) this ranks exactly like ``|μ| / C``; see the module doc.
    """
    _need(std_params, "std_params", "snr_sep_cma_compat")
    return jax.tree_util.tree_map(
        lambda m, s: jnp.abs(jnp.asarray(m, jnp.float32)) / jnp.square(jnp.asarray(s, jnp.float32)),
        final_params,
        std_params,
    )


def random(final_params: PyTree, *, key: jax.Array | None = None, **_: Any) -> PyTree:
    """``U[0, 1)`` scores: random pruning (each leaf gets its own sub-key)."""
    _need(key, "key", "random")
    leaves, treedef = jax.tree_util.tree_flatten(final_params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.uniform(k, np.shape(x)) for k, x in zip(keys, leaves, strict=True)]
    )


def movement(final_params: PyTree, *, init_params: PyTree = None, **_: Any) -> PyTree:
    """``|θ_f − θ₀|``: how far each weight moved during training."""
    _need(init_params, "init_params", "movement")
    return jax.tree_util.tree_map(
        lambda f, i: jnp.abs(jnp.asarray(f, jnp.float32) - jnp.asarray(i, jnp.float32)),
        final_params,
        init_params,
    )


def magnitude_increase(final_params: PyTree, *, init_params: PyTree = None, **_: Any) -> PyTree:
    """``|θ_f| − |θ₀|``: how much each weight's magnitude grew."""
    _need(init_params, "init_params", "magnitude_increase")
    return jax.tree_util.tree_map(
        lambda f, i: jnp.abs(jnp.asarray(f, jnp.float32)) - jnp.abs(jnp.asarray(i, jnp.float32)),
        final_params,
        init_params,
    )


def smallest_initial(final_params: PyTree, *, init_params: PyTree = None, **_: Any) -> PyTree:
    """``−|θ₀|``: keeps the weights that were SMALLEST at initialisation (Zhou et al.'s control)."""
    _need(init_params, "init_params", "smallest_initial")
    return jax.tree_util.tree_map(lambda i: -jnp.abs(jnp.asarray(i, jnp.float32)), init_params)


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its score function and the inputs it needs besides ``final_params``."""

    name: str
    fn: Callable[..., PyTree]
    needs_std: bool = False
    needs_init: bool = False
    needs_key: bool = False
    description: str = ""

    def __call__(self, final_params, *, init_params=None, std_params=None, key=None) -> PyTree:
        return self.fn(final_params, init_params=init_params, std_params=std_params, key=key)


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", magnitude, description="|θ_f|"),
        Criterion("snr", snr, needs_std=True, description="|θ_f| / σ"),
        Criterion(
            "snr_sep_cma_compat",
            snr_sep_cma_compat,
            needs_std=True,
            description="|θ_f| / σ² (original code's |μ|/C for Sep-CMA-ES; compatibility only)",
        ),
        Criterion("random", random, needs_key=True, description="U[0, 1)"),
        Criterion("movement", movement, needs_init=True, description="|θ_f − θ₀|"),
        Criterion("magnitude_increase", magnitude_increase, needs_init=True, description="|θ_f| − |θ₀|"),
        Criterion("smallest_initial", smallest_initial, needs_init=True, description="−|θ₀|"),
    )
}


def get_criterion(name: str) -> Criterion:
    """Look up a criterion by name; unknown names raise a ``ValueError`` naming the allowed ones."""
    if not isinstance(name, str) or name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; allowed: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def check_trainer_compatible(
    criterion: str, provides_std: bool | None, trainer_name: str = "trainer"
) -> None:
    """Raise before any training if ``criterion`` needs σ and the trainer declares it gives none."""
    c = get_criterion(criterion)
    if c.needs_std and provides_std is False:
        raise ValueError(_no_std_message(c.name, trainer_name))


def _no_std_message(name: str, trainer_name: str) -> str:
    ok = ", ".join(n for n, c in CRITERIA.items() if not c.needs_std)
    return (
        f"criterion {name!r} needs the per-weight std of an ES search distribution (TrainResult.std_params), "
        f"but {trainer_name} gives none (gradient descent has no search distribution, so 'snr' is invalid "
        f"for GD); criterion must be one of: {ok}"
    )


def compute_scores(
    criterion: str,
    final_params: PyTree,
    *,
    init_params: PyTree = None,
    std_params: PyTree = None,
    key: jax.Array | None = None,
    trainer_name: str = "the trainer",
) -> PyTree:
    """Scores of ``criterion`` with a clear error when an input it needs is missing."""
    c = get_criterion(criterion)
    if c.needs_std and std_params is None:
        raise ValueError(_no_std_message(c.name, trainer_name))
    return c(final_params, init_params=init_params, std_params=std_params, key=key)


def _need(value, field: str, name: str) -> None:
    if value is None:
        raise ValueError(f"criterion {name!r} needs {field}, got None")
