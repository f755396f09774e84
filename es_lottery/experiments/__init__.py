"""The top floor: typed configs, the run store, and the three experiment drivers behind the CLI.

* :mod:`.config` — the typed loader (nested frozen dataclasses from YAML; ``docs/configs.md``).
* :mod:`.store` — the run store: one directory per job, keyed by the fields that change its result.
* :mod:`.slt`, :mod:`.imp`, :mod:`.nets` — ``es-lottery slt|imp|nets``: a config → jobs in the store → the
  view ``<out>/<name>/`` (``load_config``, ``parse_config``, ``run_experiment``).
* :mod:`.legacy_runs` — run directories of the old layout (and committed archives) into the store.
* :mod:`.reports` — the committed results pages (``es-lottery report``).

Names load lazily: importing this package imports no experiment.
"""

from es_lottery._lazy import attach

_NAMES = {
    "common": "es_lottery.experiments.common",
    "config": "es_lottery.experiments.config",
    "generations": "es_lottery.experiments.generations",
    "imp": "es_lottery.experiments.imp",
    "legacy": "es_lottery.experiments.legacy",
    "legacy_runs": "es_lottery.experiments.legacy_runs",
    "nets": "es_lottery.experiments.nets",
    "reports": "es_lottery.experiments.reports",
    "slt": "es_lottery.experiments.slt",
    "store": "es_lottery.experiments.store",
    "ConfigError": "es_lottery.experiments.config:ConfigError",
    "NetworkConfig": "es_lottery.experiments.common:NetworkConfig",
    "SLTConfig": "es_lottery.experiments.slt:SLTConfig",
    "IMPExperiment": "es_lottery.experiments.imp:IMPExperiment",
    "NeTSExperiment": "es_lottery.experiments.nets:NeTSExperiment",
    "migrate": "es_lottery.experiments.legacy_runs:migrate",
}

__getattr__, __dir__, __all__ = attach(__name__, _NAMES)
