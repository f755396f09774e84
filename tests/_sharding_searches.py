"""Small GA, ES, NeTS and control-ES runs on 1 and 4 devices, for ``tests/test_sharding_searches.py``.

``python tests/_sharding_searches.py CASE…`` must start with ``XLA_FLAGS`` holding
``--xla_force_host_platform_device_count=4`` and ``distributed.REPRODUCIBLE_XLA_FLAGS`` (both are read when
JAX initialises; ``distributed.configure`` sets them in a process that has not started JAX). For every case
it runs the search sharded over 1 device and over 4 devices (and, where the module doc of
``es_lottery.distributed`` says the numbers equal the unsharded ones, also unsharded: tasks built outside
``distributed.use_devices``), and prints one JSON object: per case and setting a digest of every bit of the
result (final state and history), the fitness, and the seconds it took. Populations are chosen so that
neither they nor their block counts divide the 4 devices (padding).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import distributed, networks
from es_lottery import masks as masks_lib
from es_lottery.search import es, ga_slt, nets
from es_lottery.tasks import classification, control

SETTINGS = {"unsharded": None, "devices=1": 1, "devices=4": 4}


def digest(tree) -> str:
    """SHA-256 over the dtype, shape and bytes of every leaf (PRNG keys as their key data)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


def moons(n: int = 600):
    return classification.load_dataset("moons", n_train=n, n_test=200)


def case_ga(fitness: str):
    """Strong-ticket GA, 10 members (eval block 8 → 8 one-member blocks), a deep net on the table path."""
    data = moons()
    module = networks.make_network("mlp", sizes=[2, 6, 6, 2], weight_init="uniform")
    cfg = ga_slt.GAConfig(pop_size=10, min_generations=2, patience=1, max_generations=3, fitness=fitness)

    def run():
        task = ga_slt.make_task(module, data.x_train, data.y_train, data.x_test, data.y_test, config=cfg)
        state, hist = ga_slt.run(jax.random.key(0), task, cfg)
        final = ga_slt.evaluate_final(state, task, cfg)
        return (state, hist, final), state.fit

    return run


def case_es():
    """SNES on digits with an MLP, population 7 (blocks of 1 → 7 blocks, padded to 8 on 4 devices)."""
    data = classification.load_dataset("digits")
    module = networks.make_network("mlp", sizes=[64, 8, 10])
    theta0 = networks.init_params(jax.random.key(1), module)
    cfg = es.ESConfig(algorithm="SNES", population_size=7, sigma_init=0.1)

    def run():
        task = es.make_classification_task(
            module, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=128
        )
        state, hist = es.run(jax.random.key(2), theta0, masks_lib.ones(theta0), task, cfg, 4, 2)
        return (state, hist), hist["train"]["fitness_max"]

    return run


def case_nets():
    """NeTS on XOR with the paper's train-then-validate fitness, 6 genomes (5 children per generation)."""
    data = classification.load_dataset("xor", n=12)
    module = networks.make_network("mlp", sizes=[2, 4, 1], weight_init="lecun_normal")
    x_tr, y_tr, x_va, y_va = nets.split_validation(data.x_train, data.y_train, 0.25)
    cfg = nets.NeTSConfig(pop_size=6, generations=1, inner_batch_size=8)

    def run():
        task = nets.make_task(module, x_tr, y_tr, x_va, y_va)
        state, hist = nets.run(jax.random.key(3), task, cfg)
        return (state, hist), state.fitness

    return run


def case_control(common: bool):
    """SNES on CartPole-v1, population 10 × 2 rollouts of ≤ 40 steps (blocks of 8 members: 2 blocks)."""
    cfg = es.ESConfig(algorithm="SNES", population_size=10, sigma_init=0.1)

    def run():
        task = control.make_control_task(
            "CartPole-v1",
            hidden=[8],
            episode_length=40,
            train_rollouts=2,
            test_episodes=3,
            common_keys=common,
        )
        theta0 = task.init_params(jax.random.key(4))
        state, hist = es.run(jax.random.key(5), theta0, masks_lib.ones(theta0), task, cfg, 3, 3)
        return (state, hist), hist["train"]["fitness_max"]

    return run


# case → (builder, settings it runs)
SHARDED = ("devices=1", "devices=4")
CASES = {
    "ga_accuracy": (lambda: case_ga("accuracy"), ("unsharded", *SHARDED)),
    "ga_cross_entropy": (lambda: case_ga("cross_entropy"), SHARDED),
    "es": (case_es, SHARDED),
    "nets": (case_nets, ("unsharded", *SHARDED)),
    "control": (lambda: case_control(True), SHARDED),
    "control_own_keys": (lambda: case_control(False), SHARDED),
}


def main(names: list[str]) -> None:
    out = {
        "device_count": jax.device_count(),
        "reproducible": distributed.reproducible_compilation(),
        "cases": {},
    }
    for name in names:
        build, settings = CASES[name]
        run = build()
        rows = {}
        for label in settings:
            t0 = time.perf_counter()
            with distributed.use_devices(SETTINGS[label]):
                result, fitness = run()
            jax.block_until_ready(result)
            rows[label] = {
                "digest": digest(result),
                "fitness": np.asarray(fitness, np.float64).tolist(),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        out["cases"][name] = rows
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
