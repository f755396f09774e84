"""es_lottery: JAX-accelerated evolutionary pruning — strong tickets by GA, ES lottery tickets, NeTS.

The public API, loaded lazily (importing ``es_lottery`` imports no JAX program, gymnax, Brax or
matplotlib; a name loads its module on first use)::

    import es_lottery as el

    el.masks, el.networks, el.population      masks, Flax networks and inits, the population kernels
    el.tasks                                  the fitness protocol: classification, control, your function
    el.ga, el.es, el.nets                     the searches: strong-ticket GA, the evosax adapter, NeTS
    el.pruning                                iterative pruning (el.pruning.run), criteria, baselines
    el.analysis                               connectivity, landscapes, statistics, transfer, run readers
    el.gradient                               edge-popup, backprop, PPO baselines
    el.keys                                   how every run derives its keys (seed_keys, split_run_key, …)
    el.experiments, el.plots                  configs, the run store, the slt/imp/nets drivers, plots

Every search has the same verbs: ``init(key, task, config) -> state``, ``step(key, state, task, config)
-> (state, metrics)`` and ``advance(...)`` to continue a state; the GA and NeTS run a whole search with
``run(key, task, config)``, the ES with ``train(key, θ₀, mask, task, config, …)`` (its ``run`` continues a
state). The ES alone has ``ask`` / ``tell``. ``docs/api.md`` has a runnable snippet for each.
"""

from es_lottery._lazy import attach

__version__ = "0.1.0"

_NAMES = {
    # layers
    "masks": "es_lottery.masks",
    "networks": "es_lottery.networks",
    "population": "es_lottery.population",
    "tasks": "es_lottery.tasks",
    "search": "es_lottery.search",
    "ga": "es_lottery.search.ga_slt",
    "es": "es_lottery.search.es",
    "nets": "es_lottery.search.nets",
    "gradient": "es_lottery.gradient",
    "pruning": "es_lottery.pruning",
    "analysis": "es_lottery.analysis",
    "experiments": "es_lottery.experiments",
    "plots": "es_lottery.plots",
    "keys": "es_lottery.keys",
    "treeio": "es_lottery.treeio",
    # the most used names, directly
    "make_network": "es_lottery.networks:make_network",
    "init_params": "es_lottery.networks:init_params",
    "evaluate_masks": "es_lottery.population:evaluate_masks",
    "evaluate_params": "es_lottery.population:evaluate_params",
    "load_dataset": "es_lottery.tasks.classification:load_dataset",
    "from_function": "es_lottery.tasks.base:from_function",
    "MaskedPopulation": "es_lottery.tasks.base:MaskedPopulation",
    "GAConfig": "es_lottery.search.ga_slt:GAConfig",
    "ESConfig": "es_lottery.search.es:ESConfig",
    "NeTSConfig": "es_lottery.search.nets:NeTSConfig",
    "IMPConfig": "es_lottery.pruning.loop:IMPConfig",
    "PruningSchedule": "es_lottery.pruning.schedule:PruningSchedule",
    "seed_keys": "es_lottery.keys:seed_keys",
    "split_run_key": "es_lottery.keys:split_run_key",
}

__getattr__, __dir__, __all__ = attach(__name__, _NAMES)
__all__ = ["__version__", *__all__]
