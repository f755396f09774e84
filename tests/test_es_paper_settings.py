"""The paper's evosax 0.1.4 ES settings (es_lottery.search.paper_settings) against hand-written formulas.

Every expected value here is written out from the formulas of evosax 0.1.4 (quoted in the module doc of
``paper_settings``), never computed by calling evosax 0.1.4. The algorithms are driven directly through
``es.make_algorithm`` (evosax minimises), so these tests depend on the adapter's configuration layer only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.algorithms.distribution_based import PGPE, SNES, Sep_CMA_ES

from es_lottery import masks, networks
from es_lottery.experiments import imp
from es_lottery.pruning import criteria
from es_lottery.search import es, paper_settings


def _sep(rates="evosax_0.1.4", pop=128, **kw):
    return es.ESConfig("Sep_CMA_ES", pop, sigma_init=0.1, sep_cma_rates=rates, **kw)


def _f(x) -> float:
    return float(np.asarray(x))


# ----------------------------------------------------------------------------------------------
# Sep-CMA-ES: evosax 0.1.4's separable learning rates


def _rates_0_1_4(n: int, p: int, elite_ratio: float = 0.5) -> dict:
    """evosax 0.1.4 ``Sep_CMA_ES.params_strategy`` + ``get_cma_elite_weights``, written out in float64."""
    mu = max(1, int(p * elite_ratio))
    nsq = min(n, 40000)
    raw = [math.log(mu + 1) - math.log(i) for i in range(1, mu + 1)]
    w = [r / sum(raw) for r in raw] + [0.0] * (p - mu)
    mu_eff = 1.0 / sum(x * x for x in w)
    c_1 = 2.0 / ((nsq + 1.3) ** 2 + mu_eff)
    c_mu_full = 2.0 / mu_eff / (nsq + math.sqrt(2)) ** 2 + (1 - 1 / mu_eff) * min(
        1.0, (2 * mu_eff - 1) / ((nsq + 2) ** 2 + mu_eff)
    )
    c_mu = (n + 2) / 3 * c_mu_full
    c_std = (mu_eff + 2) / (n + mu_eff + 3)
    d_std = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_std
    c_c = 4 / (n + 4)
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * nsq**2))
    return dict(weights=w, mu_eff=mu_eff, c_1=c_1, c_mu=c_mu, c_std=c_std, d_std=d_std, c_c=c_c, chi_n=chi_n)


@pytest.mark.parametrize(
    ("n", "pop", "elite_ratio"),
    [
        (50, 16, None),
        (196, 128, None),  # the paper CNN's last level: 1.44 % of 11,240 kernels + 34 biases
        (1000, 64, None),
        (11274, 128, None),  # the dense paper CNN
        (11274, 256, 0.5),
        (50000, 128, None),  # above 0.1.4's n² overflow guard (n' = 40000)
        (3000, 100, 0.2),
        (3000, 64, 0.1),
    ],
)
def test_sep_cma_0_1_4_rates_are_the_0_1_4_formulas(n, pop, elite_ratio):
    algo, params = es.make_algorithm(_sep(pop=pop, elite_ratio=elite_ratio), n)
    want = _rates_0_1_4(n, pop, 0.5 if elite_ratio is None else elite_ratio)
    assert isinstance(algo, paper_settings.SepCMAES014)
    np.testing.assert_allclose(np.asarray(params.weights), want["weights"], rtol=2e-6, atol=1e-9)
    for name in ("mu_eff", "c_1", "c_mu", "c_std", "d_std", "c_c", "chi_n"):
        assert _f(getattr(params, name)) == pytest.approx(want[name], rel=2e-6), name
    assert _f(params.c_mean) == 1.0
    assert _f(params.std_init) == pytest.approx(0.1)
    assert _f(params.std_min) == es.CMA_STD_MIN  # the adapter's underflow floor still applies


def test_paper_cnn_c_mu_is_thousands_of_times_evosax_0_3s():
    n, pop = 11274, 128
    _, new = es.make_algorithm(_sep(pop=pop), n)
    _, old = es.make_algorithm(_sep("evosax_0.3", pop=pop), n)
    assert _f(new.c_mu) == pytest.approx(1.95e-3, rel=0.01)
    assert _f(old.c_mu) == pytest.approx(5.07e-7, rel=0.01)
    assert 3500 < _f(new.c_mu) / _f(old.c_mu) < 4000


def test_sep_cma_defaults_to_the_papers_rates_and_evosax_0_3_stays_an_option():
    """The default is the paper's (evosax 0.1.4) separable rates; ``sep_cma_rates="evosax_0.3"`` gives
    evosax 0.3.2's algorithm and constants unchanged."""
    assert es.ESConfig("Sep_CMA_ES", 64, sigma_init=0.1).sep_cma_rates == "evosax_0.1.4"
    assert type(es.make_algorithm(es.ESConfig("Sep_CMA_ES", 64, sigma_init=0.1), 300)[0]) is not Sep_CMA_ES
    config = es.ESConfig("Sep_CMA_ES", 64, sigma_init=0.1, sep_cma_rates="evosax_0.3")
    algo, params = es.make_algorithm(config, 300)
    assert type(algo) is Sep_CMA_ES
    ref = Sep_CMA_ES(64, jnp.zeros(300)).default_params
    for name in ("weights", "mu_eff", "c_1", "c_mu", "c_std", "d_std", "c_c", "chi_n"):
        np.testing.assert_array_equal(np.asarray(getattr(params, name)), np.asarray(getattr(ref, name)))
    # explicit elite_ratio 0.5 is evosax 0.3's own value: the same algorithm
    algo2, params2 = es.make_algorithm(config.replace(elite_ratio=0.5), 300)
    assert type(algo2) is Sep_CMA_ES
    np.testing.assert_array_equal(np.asarray(params2.weights), np.asarray(ref.weights))


def test_sep_cma_0_1_4_c_mu_is_capped_where_0_1_4_breaks():
    """0.1.4 does not cap c_μ: at n = 10, P = 128 it gives c_1 + c_μ ≈ 1.49 (a negative factor on C)."""
    want = _rates_0_1_4(10, 128)
    assert want["c_1"] + want["c_mu"] > 1.4
    _, params = es.make_algorithm(_sep(pop=128), 10)
    assert _f(params.c_mu) == pytest.approx(1 - want["c_1"] - 1e-8, rel=1e-6)
    assert _f(params.c_1) == pytest.approx(want["c_1"], rel=1e-6)


def test_sep_cma_0_1_4_h_sigma_uses_the_generation_number():
    """h_σ: ‖p_σ‖/√(1 − (1 − c_σ)^(2g)) < (1.4 + 2/(n + 1)) χ_n for the g-th generation (g from 1);
    evosax 0.3.2 uses the exponent 2(g + 1). A norm between the two thresholds tells them apart."""
    n = 40
    algo, params = es.make_algorithm(_sep(pop=16), n)
    ref = Sep_CMA_ES(16, jnp.zeros(n))
    c, chi = _f(params.c_std), _f(params.chi_n)
    right = (1.4 + 2 / (n + 1)) * chi
    for g in (1, 2, 5):
        lo, hi = math.sqrt(1 - (1 - c) ** (2 * g)), math.sqrt(1 - (1 - c) ** (2 * (g + 1)))
        norm = right * (lo + hi) / 2  # 0.1.4's left side is above the threshold, 0.3.2's below
        assert not bool(algo.h_std(jnp.float32(norm), g, params))
        assert bool(ref.h_std(jnp.float32(norm), g, params))
        assert bool(algo.h_std(jnp.float32(right * lo * 0.99), g, params))


def _quadratic_run(rates: str, n=200, pop=32, generations=300, seed=0):
    """Minimise Σ a_i (x_i − c_i)² with a_i log-spaced over [1, 100] (so the ideal C_i ∝ 1/a_i) from
    mean 0; returns (config, final state, a, c)."""
    config = es.ESConfig("Sep_CMA_ES", pop, sigma_init=0.1, sep_cma_rates=rates)
    algo, params = es.make_algorithm(config, n)
    a = jnp.asarray(np.logspace(0, 2, n), jnp.float32)
    c = jnp.asarray(np.random.default_rng(1).uniform(0.2, 1.0, n), jnp.float32)

    def gen(state, key):
        k_ask, k_tell = jax.random.split(key)
        x, state = algo.ask(k_ask, state, params)
        state, _ = algo.tell(k_tell, x, jnp.sum(a * (x - c) ** 2, axis=1), state, params)
        return state, None

    @jax.jit
    def go(key):
        k_init, k_run = jax.random.split(key)
        state = algo.init(k_init, jnp.zeros(n, jnp.float32), params)
        return jax.lax.scan(gen, state, jax.random.split(k_run, generations))[0]

    return config, go(jax.random.key(seed)), np.asarray(a), np.asarray(c)


@pytest.fixture(scope="module")
def quadratic_runs():
    return {rates: _quadratic_run(rates) for rates in paper_settings.SEP_CMA_RATES}


def test_sep_cma_0_1_4_adapts_the_diagonal_and_0_3_does_not(quadratic_runs):
    spread = {}
    for rates, (_, state, a, _) in quadratic_runs.items():
        C = np.asarray(state.C)
        assert np.all(np.isfinite(C)) and np.all(C > 0)
        spread[rates] = C.max() / C.min()
        if rates == "evosax_0.1.4":  # C follows the curvature: large where a is small
            assert np.corrcoef(np.log(C), -np.log(a))[0, 1] > 0.6
    assert spread["evosax_0.1.4"] > 1.3, spread
    assert spread["evosax_0.3"] < 1.1, spread


def test_snr_masks_differ_from_magnitude_masks_only_with_0_1_4_rates(quadratic_runs):
    differing = {}
    for rates, (config, state, _, _) in quadratic_runs.items():
        std = np.asarray(es.per_weight_std(config, state))
        assert std.max() / std.min() > (1.1 if rates == "evosax_0.1.4" else 0.0)
        final = {"layer": {"kernel": state.mean.reshape(20, 10)}}
        std_params = {"layer": {"kernel": jnp.asarray(std).reshape(20, 10)}}
        by_snr = masks.topk(criteria.compute_scores("snr", final, std_params=std_params), 0.5)
        by_mag = masks.topk(criteria.compute_scores("magnitude", final), 0.5)
        differing[rates] = int(np.sum(np.asarray(by_snr["layer"]["kernel"] != by_mag["layer"]["kernel"])))
    assert differing["evosax_0.1.4"] >= 20, differing  # ≥ 10 % of the 200 weights change sides
    assert differing["evosax_0.3"] <= 4, differing  # SNR ≈ magnitude pruning with evosax 0.3's rates


# ----------------------------------------------------------------------------------------------
# Sep-CMA-ES elite ratio


def test_sep_cma_elite_ratio_sets_the_weights_and_mu_eff():
    # P = 10, elite_ratio 0.3 → μ = 3 elites with weights ∝ ln 4 − ln i, i = 1, 2, 3
    _, params = es.make_algorithm(_sep(pop=10, elite_ratio=0.3), 20)
    raw = np.array([math.log(4), math.log(4) - math.log(2), math.log(4) - math.log(3)])  # 1.386, 0.693, 0.288
    w = raw / raw.sum()
    np.testing.assert_allclose(np.asarray(params.weights), [*w, 0, 0, 0, 0, 0, 0, 0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(w, [0.585645, 0.292823, 0.121532], rtol=1e-5)
    assert _f(params.mu_eff) == pytest.approx(1 / np.sum(w**2), rel=1e-6)
    assert _f(params.mu_eff) == pytest.approx(2.254815, rel=1e-5)
    # the paper's 0.5 equals the default (None)
    _, p_half = es.make_algorithm(_sep(pop=10, elite_ratio=0.5), 20)
    _, p_none = es.make_algorithm(_sep(pop=10), 20)
    np.testing.assert_array_equal(np.asarray(p_half.weights), np.asarray(p_none.weights))
    assert np.count_nonzero(np.asarray(p_half.weights)) == 5


def test_sep_cma_elite_weights_drive_the_mean_update():
    """One tell: mean' = mean + σ Σ_i w_i y_(i), y = (x − mean)/σ sorted best first (0.1.4's update)."""
    n, pop = 4, 10
    algo, params = es.make_algorithm(_sep(pop=pop, elite_ratio=0.3), n)
    state = algo.init(jax.random.key(0), jnp.zeros(n), params)
    x, state = algo.ask(jax.random.key(1), state, params)
    fitness = jnp.arange(pop, dtype=jnp.float32)[::-1]  # minimised: the LAST member is best
    new, _ = algo.tell(jax.random.key(2), x, fitness, state, params)
    y = np.asarray(x)[::-1][:3] / 0.1  # the three best, best first
    w = np.array([math.log(4), math.log(2), math.log(4 / 3)])
    w /= w.sum()
    np.testing.assert_allclose(np.asarray(new.mean), 0.1 * (w @ y), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# SNES temperature


def test_snes_temperature_weights_hand_computed():
    # P = 4, T = 12: centred ranks r/3 − 0.5 = −1/2, −1/6, 1/6, 1/2 → logits 6, 2, −2, −6
    e = np.exp([6.0, 2.0, -2.0, -6.0])
    want = e / e.sum()  # [0.981684, 0.017980, 0.000329, 0.0000060]
    np.testing.assert_allclose(want, [0.9816844, 0.0179802, 3.29318e-4, 6.0317e-6], rtol=1e-4)
    config = es.ESConfig("SNES", 4, sigma_init=0.1, temperature=12.0)
    algo, params = es.make_algorithm(config, 3)
    assert type(algo) is SNES
    np.testing.assert_allclose(np.asarray(params.weights), want, rtol=1e-6)
    np.testing.assert_allclose(paper_settings.snes_temperature_weights(4, 12.0), want, rtol=1e-12)
    # temperature 0 (default) keeps evosax's weights
    _, default = es.make_algorithm(config.replace(temperature=0.0), 3)
    evosax_weights = SNES(4, jnp.zeros(3)).default_params.weights
    np.testing.assert_array_equal(np.asarray(default.weights), np.asarray(evosax_weights))


def test_snes_temperature_update_hand_computed():
    """mean' = mean + σ Σ_r w_r z_(r); σ' = σ exp(η/2 Σ_r w_r (z_(r)² − 1)), η = (3 + ln n)/(5 √n)."""
    n, pop, temp = 3, 4, 12.0
    algo, params = es.make_algorithm(es.ESConfig("SNES", pop, sigma_init=0.1, temperature=temp), n)
    state = algo.init(jax.random.key(0), jnp.array([0.5, -0.2, 0.0]), params)
    x, state = algo.ask(jax.random.key(1), state, params)
    fitness = jnp.array([3.0, 1.0, 4.0, 2.0])  # minimised: order of merit 1, 3, 0, 2
    new, _ = algo.tell(jax.random.key(2), x, fitness, state, params)
    z = (np.asarray(x) - np.array([0.5, -0.2, 0.0])) / 0.1
    e = np.exp([6.0, 2.0, -2.0, -6.0])
    w = e / e.sum()
    zs = z[[1, 3, 0, 2]]
    eta = (3 + math.log(n)) / (5 * math.sqrt(n))
    np.testing.assert_allclose(np.asarray(new.mean), np.array([0.5, -0.2, 0.0]) + 0.1 * (w @ zs), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.std), 0.1 * np.exp(eta / 2 * (w @ (zs**2 - 1))), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# PGPE σ decay and floor


def _pgpe(**kw):
    return es.ESConfig("PGPE", 4, sigma_init=kw.pop("sigma_init", 0.05), optimizer="adam", lr=0.01, **kw)


def _pgpe_tell(config, fitness, n=3, seed=0):
    """One generation of ``config`` over ``n`` dims: (algorithm, state after ask, population, told state)."""
    algo, params = es.make_algorithm(config, n)
    state = algo.init(jax.random.key(seed), jnp.zeros(n), params)
    x, state = algo.ask(jax.random.key(seed + 1), state, params)
    new, _ = algo.tell(jax.random.key(seed + 2), x, jnp.asarray(fitness), state, params)
    return algo, state, x, new


def test_pgpe_sigma_decay_hand_computed():
    # equal fitness → centred ranks all equal → PGPE's own σ gradient is 0 → only the decay acts
    algo, _, _, new = _pgpe_tell(_pgpe(sigma_decay=0.999, sigma_limit=0.01), [1.0, 1.0, 1.0, 1.0])
    assert isinstance(algo, paper_settings.PGPEStdDecay)
    np.testing.assert_allclose(np.asarray(new.std), [0.04995] * 3, rtol=1e-6)
    # the floor: 0.0101 · 0.99 = 0.009999 → 0.01
    *_, new = _pgpe_tell(_pgpe(sigma_init=0.0101, sigma_decay=0.99, sigma_limit=0.01), [1.0] * 4)
    np.testing.assert_allclose(np.asarray(new.std), [0.01] * 3, rtol=1e-6)
    # 0.1.4's floor acts without decay too: σ_init 0.005 below the limit 0.01 → 0.01 after one tell
    *_, new = _pgpe_tell(_pgpe(sigma_init=0.005, sigma_limit=0.01), [1.0] * 4)
    np.testing.assert_allclose(np.asarray(new.std), [0.01] * 3, rtol=1e-6)


def test_pgpe_sigma_decay_follows_evosax_pgpe_update():
    """With informative fitness: σ' = max(σ'_evosax · decay, limit) elementwise, mean as evosax's PGPE."""
    fitness = [0.3, -1.2, 2.0, 0.7]
    config = _pgpe(sigma_decay=0.9, sigma_limit=0.0452)
    _, state, x, new = _pgpe_tell(config, fitness)
    plain_algo, plain_params = es.make_algorithm(_pgpe(), 3)
    assert type(plain_algo) is PGPE
    plain, _ = plain_algo.tell(jax.random.key(2), x, jnp.asarray(fitness), state, plain_params)
    assert not np.allclose(np.asarray(plain.std), 0.05)  # PGPE's own adaptation moved σ
    np.testing.assert_array_equal(np.asarray(new.mean), np.asarray(plain.mean))
    decayed = np.asarray(plain.std) * np.float32(0.9)  # [0.0450001, 0.0455990, 0.0450013]
    floored = decayed < np.float32(0.0452)
    assert floored.any() and not floored.all()  # both branches of the max are exercised
    np.testing.assert_allclose(np.asarray(new.std), np.maximum(decayed, np.float32(0.0452)), rtol=1e-6)


def test_pgpe_sigma_decay_over_many_generations():
    """σ_init 0.05, decay 0.999, floor 0.01, no adaptive signal: σ_t = max(0.05 · 0.999^t, 0.01)."""
    config = _pgpe(sigma_decay=0.999, sigma_limit=0.01)
    algo, params = es.make_algorithm(config, 2)

    def gen(state, key):
        x, state = algo.ask(key, state, params)
        state, _ = algo.tell(key, x, jnp.zeros(4), state, params)
        return state, state.std[0]

    state = algo.init(jax.random.key(0), jnp.zeros(2), params)
    _, stds = jax.jit(lambda s: jax.lax.scan(gen, s, jax.random.split(jax.random.key(1), 2000)))(state)
    t = np.arange(1, 2001)
    np.testing.assert_allclose(np.asarray(stds), np.maximum(0.05 * 0.999**t, 0.01), rtol=2e-4)
    assert np.asarray(stds)[-1] == np.float32(0.01)  # floored after ln(0.2)/ln(0.999) ≈ 1609 generations


# ----------------------------------------------------------------------------------------------
# configuration: validation and run-directory hashes


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(algorithm="Sep_CMA_ES", sep_cma_rates="evosax_0.2"), "unknown sep_cma_rates"),
        (dict(algorithm="SNES", sep_cma_rates="evosax_0.3"), "sep_cma_rates applies to Sep_CMA_ES only"),
        (
            dict(algorithm="Sep_CMA_ES", sep_cma_rates="evosax_0.3", elite_ratio=0.3),
            "elite_ratio=0.3 needs sep_cma_rates='evosax_0.1.4'",
        ),
        (dict(algorithm="Sep_CMA_ES", sep_cma_rates="evosax_0.1.4", elite_ratio=0.0), "elite_ratio must be"),
        (dict(algorithm="Sep_CMA_ES", sep_cma_rates="evosax_0.1.4", elite_ratio=1.5), "elite_ratio must be"),
        (dict(algorithm="SNES", elite_ratio=0.5), "elite_ratio applies to Sep_CMA_ES only"),
        (dict(algorithm="SNES", temperature=-1.0), "temperature must be"),
        (dict(algorithm="DES", temperature=12.0), "temperature applies to SNES only"),
        (dict(algorithm="PGPE", sigma_decay=0.0), "sigma_decay must be"),
        (dict(algorithm="PGPE", sigma_decay=1.01), "sigma_decay must be"),
        (dict(algorithm="PGPE", sigma_limit=-0.1), "sigma_limit must be"),
        (dict(algorithm="SNES", sigma_decay=0.999), "sigma_decay applies to PGPE only"),
        (dict(algorithm="ARS", sigma_limit=0.01), "sigma_limit applies to PGPE only"),
    ],
)
def test_invalid_paper_settings_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        es.ESConfig(population_size=8, **kw)


def _experiment(trainer: dict) -> imp.IMPExperiment:
    return imp.parse_config(
        {
            "name": "t",
            "dataset": "digits",
            "network": {"name": "mlp", "sizes": [64, 8, 10]},
            "trainer": {"type": "es", "population_size": 8, **trainer},
            "criteria": ["magnitude"],
        }
    )


def test_the_store_key_holds_only_fields_that_differ_from_their_defaults(tmp_path):
    """A trainer field at its default is no part of the run store's key (so a field added with a default
    renames no job); a changed one is, and YAML's 12 and 12.0 resolve to the same key."""
    base = imp.data_dir(_experiment({"algorithm": "SNES"}), tmp_path)
    assert imp.data_dir(_experiment({"algorithm": "SNES", "temperature": 0.0}), tmp_path) == base
    assert imp.data_dir(_experiment({"algorithm": "SNES", "sigma_init": 0.05}), tmp_path) == base
    a = imp.data_dir(_experiment({"algorithm": "SNES", "temperature": 12}), tmp_path)
    assert a != base and a == imp.data_dir(_experiment({"algorithm": "SNES", "temperature": 12.0}), tmp_path)
    fields = imp.trunk(_experiment({"algorithm": "Sep_CMA_ES", "elite_ratio": 0.5}), tmp_path).fields
    assert fields["trainer"] == {
        "type": "es",
        "algorithm": "Sep_CMA_ES",
        "population_size": 8,
        "elite_ratio": 0.5,
    }
    pgpe = imp.trunk(_experiment({"algorithm": "PGPE", "sigma_decay": 0.999, "sigma_limit": 0.01}), tmp_path)
    assert (pgpe.fields["trainer"]["sigma_decay"], pgpe.fields["trainer"]["sigma_limit"]) == (0.999, 0.01)


# ----------------------------------------------------------------------------------------------
# the original CNN's bias init


def test_paper_cnn_hidden_bias_init():
    module = networks.make_network("paper_cnn", weight_init="lecun_normal_hidden_bias")
    params = networks.init_params(jax.random.key(3), module)
    for name in ("conv_0", "conv_1"):
        b = np.asarray(params[name]["bias"])
        assert b.min() >= 0.0 and b.max() < 0.05, name
        assert b.max() > 0.03 and np.unique(b).size == b.size, name  # really drawn, not a constant
    np.testing.assert_array_equal(np.asarray(params["dense_0"]["bias"]), np.zeros(10, np.float32))
    # kernels are the lecun_normal ones (same key, same draw); the default init still has zero biases
    ref = networks.init_params(jax.random.key(3), networks.make_network("paper_cnn"))
    for name in ("conv_0", "conv_1", "dense_0"):
        np.testing.assert_array_equal(np.asarray(params[name]["kernel"]), np.asarray(ref[name]["kernel"]))
        np.testing.assert_array_equal(np.asarray(ref[name]["bias"]), 0.0)
    assert networks.num_params(params) == 11274


def test_mlp_hidden_bias_init_zeroes_only_the_output_bias():
    module = networks.make_network("mlp", sizes=[6, 40, 30, 3], weight_init="lecun_normal_hidden_bias")
    params = networks.init_params(jax.random.key(0), module)
    for name in ("dense_0", "dense_1"):
        b = np.asarray(params[name]["bias"])
        assert b.min() >= 0.0 and b.max() < 0.05 and b.max() > 0.03
    np.testing.assert_array_equal(np.asarray(params["dense_2"]["bias"]), 0.0)
