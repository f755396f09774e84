"""The paper's evosax 0.1.4 settings that evosax 0.3.2 dropped, re-expressed on 0.3.2's algorithms.

Lange & Sprekeler (2023) ran evosax 0.1.4; we run evosax 0.3.2, whose algorithms differ in constants and
lost a few options. This module gives back what the paper used, each as a small change to an evosax 0.3.2
algorithm (its ``ask``/``tell`` stay evosax's). :func:`es_lottery.search.es.make_algorithm` selects them
from :class:`~es_lottery.search.es.ESConfig` fields. ``sep_cma_rates`` defaults to the paper's 0.1.4 rates
(``"evosax_0.3"`` keeps 0.3.2's); every other field's default keeps evosax 0.3.2's behaviour.

Sep-CMA-ES learning rates (``ESConfig.sep_cma_rates="evosax_0.1.4"``, :class:`SepCMAES014`)
---------------------------------------------------------------------------------------------
evosax 0.3.2's ``Sep_CMA_ES`` inherits the FULL CMA-ES constants. With n = search dimension,
P = population size, μ = max(1, int(P · elite_ratio)) (elite_ratio 0.5 in both versions) and
n' = min(n, 40000) in 0.1.4 (min(n, 46340) in 0.3.2; the same below n = 40000):

===========  ==========================================  ===================================================
quantity     evosax 0.1.4 (``Sep_CMA_ES``)               evosax 0.3.2 (``CMA_ES._default_params``)
===========  ==========================================  ===================================================
weights      w'_i = ln(μ + 1) − ln i, i = 1..μ;          w'_i = ln((P + 1)/2) − ln i, i = 1..P;
             w = w'/Σw', 0 for ranks > μ                 w = max(w', 0)/Σ max(w', 0) (no negative weights)
μ_eff        1/Σ w_i²                                    (Σ_{i≤μ} w'_i)² / Σ_{i≤μ} w'_i²
c_1          2/((n' + 1.3)² + μ_eff)                     same
c_μ          (n + 2)/3 · [2/(μ_eff (n' + √2)²)           min(1 − c_1 − 1e-8,
             + (1 − 1/μ_eff) · min(1, (2μ_eff − 1)        2 (μ_eff + 1/μ_eff − 2)/((n' + 2)² + μ_eff))
             /((n' + 2)² + μ_eff))]
c_σ          (μ_eff + 2)/(n + μ_eff + 3)                 (μ_eff + 2)/(n + μ_eff + 5)
d_σ          1 + 2 max(0, √((μ_eff − 1)/(n + 1)) − 1)    same formula (with 0.3.2's c_σ)
             + c_σ
c_c          4/(n + 4)                                   (4 + μ_eff/n)/(n + 4 + 2 μ_eff/n)
χ_n          √n (1 − 1/(4n) + 1/(21 n'²))                same
h_σ          ‖p_σ‖/√(1 − (1 − c_σ)^(2g)) <               exponent 2(g + 1) (one generation later)
             (1.4 + 2/(n + 1)) χ_n, g = 1, 2, … the
             generation being told
===========  ==========================================  ===================================================

The separable scaling (n + 2)/3 of c_μ (Ros & Hansen 2008) is what matters: at the paper CNN's n = 11,274
and P = 128, c_μ is 1.95e-3 (0.1.4) vs 5.1e-7 (0.3.2), so with 0.3.2's rates the diagonal C hardly moves
in 4000 generations and SNR pruning ranks like magnitude pruning. :class:`SepCMAES014` computes the 0.1.4
column (all of it, including the h_σ exponent) and keeps 0.3.2's update equations, which are otherwise the
same as 0.1.4's. One guard is added: 0.1.4 does not cap c_μ, and for very small n (n ≤ 18 at P = 128,
n ≤ 40 at P = 256) c_1 + c_μ ≥ 1 makes the factor (1 − c_1 − c_μ) on C negative; we cap c_μ at
1 − c_1 − 1e-8 as 0.3.2 does, which changes nothing wherever 0.1.4's rates are usable.
Remaining differences, not reproduced (they do not involve the rates): 0.3.2 ranks ties by averaged ranks
truncated to integers (0.1.4: ``argsort`` order), 0.3.2 writes the clipped, diagonally loaded C
(+1e-8 per ``ask``) back into the state, and 0.3.2 clips the step size to [std_min, std_max].

Sep-CMA-ES elite ratio (``ESConfig.elite_ratio``)
------------------------------------------------
With the 0.1.4 rates the elite ratio sets μ above, hence the recombination weights and μ_eff (and through
μ_eff every rate). evosax 0.3.2 fixes the positive weights at the top half (its ``elite_ratio`` attribute
would change μ_eff but not the weights), so there only 0.5 is accepted.

SNES temperature (``ESConfig.temperature``)
-------------------------------------------
evosax 0.1.4's SNES with ``temperature`` T > 0 replaced its rank weights (the 0.3.2 ones:
max(0, ln(P/2 + 1) − ln i) normalised, minus 1/P) by ``softmax(−T · (r/(P − 1) − 0.5))`` for the ranks
r = 0 (best) … P − 1 — positive weights summing to 1. Its update (mean += σ Σ w z, σ ← σ exp(η_σ/2 ·
Σ w (z² − 1)), η_σ = (3 + ln n)/(5√n)) is 0.3.2's, so T is expressed entirely through ``params.weights``
(:func:`snes_temperature_weights`); 0.3.2's rank-weight shaping indexes them by rank, best first.

PGPE σ decay (``ESConfig.sigma_decay``, ``sigma_limit``, :class:`PGPEStdDecay`)
-----------------------------------------------------------------------------
evosax 0.1.4's PGPE ended every ``tell`` with ``σ ← max(σ · sigma_decay, sigma_limit)``, elementwise,
after the adaptive update (itself clipped to ±20 % of the old σ). The floor acts every generation, also with
decay 1 (0.1.4's PGPE defaults: decay 1.0, limit 0.01; the paper's MNIST-family PGPE: 0.999 and 0.01).
:class:`PGPEStdDecay` applies exactly that after evosax 0.3.2's PGPE update; decay 1 and limit 0 (our
defaults) leave σ untouched. Note, not reproduced: 0.1.4's σ gradient paired the elite-sorted fitness
pairs with the UNSORTED noise (``noise_1`` is not indexed by ``elite_idx``) and added ``+ lr · δ`` for a
minimised fitness, so its σ adaptation was effectively unsigned noise; 0.3.2's PGPE adapts σ correctly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from evosax.algorithms.distribution_based import PGPE, Sep_CMA_ES
from evosax.algorithms.distribution_based import pgpe as _pgpe
from evosax.algorithms.distribution_based import sep_cma_es as _sep_cma_es
from flax import struct

SEP_CMA_RATES = ("evosax_0.3", "evosax_0.1.4")
DEFAULT_ELITE_RATIO = 0.5  # Sep-CMA-ES in evosax 0.1.4 (default) and 0.3.2 (fixed)
MAX_DIMS_SQ_0_1_4 = 40000  # 0.1.4's guard against int32 overflow of n² (0.3.2: floor(sqrt(2³¹ − 1)))

__all__ = [
    "SEP_CMA_RATES",
    "PGPEStdDecay",
    "SepCMAES014",
    "num_elites",
    "sep_cma_rates_0_1_4",
    "snes_temperature_weights",
]


def num_elites(population_size: int, elite_ratio: float) -> int:
    """μ = max(1, int(P · elite_ratio)), as both evosax versions compute it."""
    return max(1, int(population_size * elite_ratio))


def sep_cma_rates_0_1_4(num_dims: int, population_size: int, elite_ratio: float = DEFAULT_ELITE_RATIO):
    """evosax 0.1.4's Sep-CMA-ES constants (float64, see the module table) as a dict: ``weights`` (P,)
    (zeros beyond the μ elites), ``mu_eff``, ``c_1``, ``c_mu`` (capped at 1 − c_1 − 1e-8), ``c_std``,
    ``d_std``, ``c_c``, ``chi_n``."""
    n, p = int(num_dims), int(population_size)
    mu = num_elites(p, elite_ratio)
    n_sq = min(n, MAX_DIMS_SQ_0_1_4)
    w_prime = math.log(mu + 1) - np.log(np.arange(1, mu + 1, dtype=np.float64))
    weights = np.zeros(p, np.float64)
    weights[:mu] = w_prime / w_prime.sum()
    mu_eff = 1.0 / float(np.sum(weights**2))
    c_1 = 2.0 / ((n_sq + 1.3) ** 2 + mu_eff)
    c_cov_full = 2.0 / mu_eff / (n_sq + math.sqrt(2.0)) ** 2 + (1.0 - 1.0 / mu_eff) * min(
        1.0, (2.0 * mu_eff - 1.0) / ((n_sq + 2.0) ** 2 + mu_eff)
    )
    c_mu = min((n + 2.0) / 3.0 * c_cov_full, 1.0 - c_1 - 1e-8)
    c_std = (mu_eff + 2.0) / (n + mu_eff + 3.0)
    d_std = 1.0 + 2.0 * max(0.0, math.sqrt((mu_eff - 1.0) / (n + 1.0)) - 1.0) + c_std
    c_c = 4.0 / (n + 4.0)
    chi_n = math.sqrt(n) * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n_sq**2))
    return {
        "weights": weights,
        "mu_eff": mu_eff,
        "c_1": c_1,
        "c_mu": c_mu,
        "c_std": c_std,
        "d_std": d_std,
        "c_c": c_c,
        "chi_n": chi_n,
    }


class SepCMAES014(Sep_CMA_ES):
    """evosax 0.3.2's ``Sep_CMA_ES`` with evosax 0.1.4's separable constants and elite ratio.

    Only the params (``_default_params``) and the h_σ stall test differ from the parent; sampling and the
    mean / path / step-size / diagonal-C updates are evosax 0.3.2's.
    """

    def __init__(self, population_size: int, solution, elite_ratio: float = DEFAULT_ELITE_RATIO, **kwargs):
        super().__init__(population_size, solution, **kwargs)
        self.elite_ratio = float(elite_ratio)  # → num_elites = max(1, int(P · elite_ratio))
        self.use_negative_weights = False

    @property
    def _default_params(self) -> _sep_cma_es.Params:
        r = sep_cma_rates_0_1_4(self.num_dims, self.population_size, self.elite_ratio)
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return _sep_cma_es.Params(
            std_init=f32(1.0),
            std_min=0.0,
            std_max=1e8,
            weights=f32(r["weights"]),
            mu_eff=f32(r["mu_eff"]),
            c_mean=1.0,
            c_std=f32(r["c_std"]),
            d_std=f32(r["d_std"]),
            c_c=f32(r["c_c"]),
            c_1=f32(r["c_1"]),
            c_mu=f32(r["c_mu"]),
            chi_n=f32(r["chi_n"]),
        )

    def h_std(self, norm_p_std: jax.Array, generation_counter, params) -> jax.Array:
        # evosax 0.3.2's tell passes the 1-based number g of the generation being told; 0.3.2 then uses the
        # exponent 2(g + 1), 0.1.4 used 2g (Hansen's tutorial: (1 − c_σ)^(2(g+1)) with g counted from 0).
        left = norm_p_std / jnp.sqrt(1 - (1 - params.c_std) ** (2 * generation_counter))
        return left < (1.4 + 2 / (self.num_dims + 1)) * params.chi_n


def snes_temperature_weights(population_size: int, temperature: float) -> np.ndarray:
    """evosax 0.1.4's SNES weights for ``temperature`` > 0: ``softmax(−T · (r/(P − 1) − 0.5))`` over the
    ranks r = 0 (best) … P − 1; float64, positive, summing to 1."""
    p = int(population_size)
    if p < 2:
        raise ValueError(f"population_size must be ≥ 2 for temperature weights, got {population_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for temperature weights, got {temperature!r}")
    centred = np.arange(p, dtype=np.float64) / (p - 1) - 0.5
    logits = -float(temperature) * centred
    e = np.exp(logits - logits.max())
    return e / e.sum()


@struct.dataclass
class PGPEStdDecayParams(_pgpe.Params):
    std_decay: float
    std_limit: float


class PGPEStdDecay(PGPE):
    """evosax 0.3.2's PGPE followed, in every ``tell``, by evosax 0.1.4's ``σ ← max(σ · decay, limit)``."""

    def __init__(self, population_size: int, solution, std_decay: float, std_limit: float, **kwargs):
        super().__init__(population_size, solution, **kwargs)
        self.std_decay = float(std_decay)
        self.std_limit = float(std_limit)

    @property
    def _default_params(self) -> PGPEStdDecayParams:
        base = super()._default_params
        return PGPEStdDecayParams(
            std_init=base.std_init,
            std_lr=base.std_lr,
            std_max_change=base.std_max_change,
            std_decay=self.std_decay,
            std_limit=self.std_limit,
        )

    def _tell(self, key, population, fitness, state, params):
        state = super()._tell(key, population, fitness, state, params)
        return state.replace(std=jnp.maximum(state.std * params.std_decay, params.std_limit))
