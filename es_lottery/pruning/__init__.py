"""Iterative pruning with rewinding (Lange & Sprekeler 2023): criteria, schedule, loop, baselines, trainers.

* ``criteria`` — score functions (magnitude, snr, snr_sep_cma_compat, random, movement,
  magnitude_increase, smallest_initial); ``get_criterion(name)``.
* ``schedule`` — ``PruningSchedule``: density (1 − p)^k at level k, exact counts over prunable weights.
* ``loop`` — the ``Trainer`` protocol, ``TrainResult``, ``IMPConfig`` and ``run`` (Algorithm 1).
* ``baselines`` — random / mask re-init and the permutation controls of Vischer et al.; ``run_baseline``,
  ``run_baseline_chain``.
* ``es_trainer`` — ``ESTrainer``: a fresh evolution strategy per level (``search.es``), checkpointed.
* ``gd`` — ``GDTrainer`` (masked Adam, the GD-IMP baseline) and ``SGDTrainer`` (masked SGD, NeTS's).

Names load lazily.
"""

from es_lottery._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "baselines": "es_lottery.pruning.baselines",
        "criteria": "es_lottery.pruning.criteria",
        "es_trainer": "es_lottery.pruning.es_trainer",
        "gd": "es_lottery.pruning.gd",
        "loop": "es_lottery.pruning.loop",
        "schedule": "es_lottery.pruning.schedule",
        "CRITERIA": "es_lottery.pruning.criteria:CRITERIA",
        "get_criterion": "es_lottery.pruning.criteria:get_criterion",
        "IMPConfig": "es_lottery.pruning.loop:IMPConfig",
        "IMPResult": "es_lottery.pruning.loop:IMPResult",
        "LevelRecord": "es_lottery.pruning.loop:LevelRecord",
        "Trainer": "es_lottery.pruning.loop:Trainer",
        "TrainResult": "es_lottery.pruning.loop:TrainResult",
        "run": "es_lottery.pruning.loop:run",
        "run_baseline": "es_lottery.pruning.baselines:run_baseline",
        "run_baseline_chain": "es_lottery.pruning.baselines:run_baseline_chain",
        "PruningSchedule": "es_lottery.pruning.schedule:PruningSchedule",
        "ESTrainer": "es_lottery.pruning.es_trainer:ESTrainer",
        "ESTrainerConfig": "es_lottery.pruning.es_trainer:ESTrainerConfig",
        "GDTrainer": "es_lottery.pruning.gd:GDTrainer",
        "GDConfig": "es_lottery.pruning.gd:GDConfig",
        "SGDTrainer": "es_lottery.pruning.gd:SGDTrainer",
    },
)
