"""Iterative pruning with rewinding (Lange & Sprekeler 2023): criteria, schedule, loop, baselines, GD.

* ``criteria`` — score functions (magnitude, snr, snr_sep_cma_compat, random, movement,
  magnitude_increase, smallest_initial); ``get_criterion(name)``.
* ``schedule`` — ``PruningSchedule``: density (1 − p)^k at level k, exact counts over prunable weights.
* ``loop`` — the ``Trainer`` protocol, ``TrainResult``, ``IMPConfig`` and ``run`` (Algorithm 1).
* ``baselines`` — random / mask re-init and the permutation controls of Vischer et al.; ``run_baseline``.
* ``gd`` — ``GDTrainer``: masked Adam classification (the GD-IMP baseline).
"""

from es_lottery.pruning import baselines, criteria, gd, loop, schedule
from es_lottery.pruning.criteria import CRITERIA, get_criterion
from es_lottery.pruning.loop import IMPConfig, IMPResult, LevelRecord, Trainer, TrainResult, run
from es_lottery.pruning.schedule import PruningSchedule

__all__ = [
    "CRITERIA",
    "IMPConfig",
    "IMPResult",
    "LevelRecord",
    "PruningSchedule",
    "TrainResult",
    "Trainer",
    "baselines",
    "criteria",
    "gd",
    "get_criterion",
    "loop",
    "run",
    "schedule",
]
