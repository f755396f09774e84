"""Analysis of pruned networks (Lange & Sprekeler 2023, Sec. 4–5 and appendix A): pure functions on any
params / masks, plus access to finished ES-IMP runs.

==========================  ===========================================================================
module                      what
==========================  ===========================================================================
``analysis.runs``           read a run directory per seed / criterion / level; compact exact archive
``analysis.evaluate``       evaluators: ``member_params -> {metric: (P,)}`` (population kernels, tasks)
``analysis.connectivity``   linear interpolation paths as ONE population; error barriers
``analysis.landscape``      1-D / 2-D loss projections (filter-normalised, masked), quadratic curvature
``analysis.stats``          layer-wise fractions, Spearman SNR–|θ|, mask overlap, ticket-effect parts
``analysis.transfer``       retrain a source run's (mask, θ₀) per level with any ``Trainer``
``analysis.plots``          PNG figures (Agg canvas per figure; pyplot's backend untouched)
==========================  ===========================================================================

Importing the package has no side effects (no backend switch, no compilation, no data loading).
"""

from __future__ import annotations

from es_lottery.analysis.connectivity import (
    ConnectivityResult,
    PairwiseBarriers,
    error_barrier,
    error_curve,
    interpolate,
    linear_mode_connectivity,
    pairwise_barriers,
)
from es_lottery.analysis.evaluate import (
    ClassificationEvaluator,
    affine_members,
    classification_evaluator,
    evaluate_affine,
    evaluate_generated,
    task_evaluator,
)
from es_lottery.analysis.landscape import (
    Landscape2D,
    Projection1D,
    QuadraticFit,
    filter_normalize,
    fit_quadratic,
    gaussian_direction,
    mask_direction,
    projection_1d,
    projection_2d,
    random_directions,
)
from es_lottery.analysis.runs import (
    LevelData,
    RunData,
    RunDirectoryError,
    load_archive,
    load_run,
    write_archive,
)
from es_lottery.analysis.stats import (
    layer_fractions,
    layer_fractions_by_level,
    layer_weight_stats,
    mask_overlap,
    rankdata,
    snr_magnitude_correlation,
    snr_magnitude_correlation_by_level,
    snr_magnitude_overlap,
    spearman,
    ticket_effects,
)
from es_lottery.analysis.transfer import Ticket, TransferResult, tickets_from_run, transfer_tickets

__all__ = [
    "ClassificationEvaluator",
    "ConnectivityResult",
    "Landscape2D",
    "LevelData",
    "PairwiseBarriers",
    "Projection1D",
    "QuadraticFit",
    "RunData",
    "RunDirectoryError",
    "Ticket",
    "TransferResult",
    "affine_members",
    "classification_evaluator",
    "error_barrier",
    "error_curve",
    "evaluate_affine",
    "evaluate_generated",
    "filter_normalize",
    "fit_quadratic",
    "gaussian_direction",
    "interpolate",
    "layer_fractions",
    "layer_fractions_by_level",
    "layer_weight_stats",
    "linear_mode_connectivity",
    "load_archive",
    "load_run",
    "mask_direction",
    "mask_overlap",
    "pairwise_barriers",
    "projection_1d",
    "projection_2d",
    "random_directions",
    "rankdata",
    "snr_magnitude_correlation",
    "snr_magnitude_correlation_by_level",
    "snr_magnitude_overlap",
    "spearman",
    "task_evaluator",
    "ticket_effects",
    "tickets_from_run",
    "transfer_tickets",
    "write_archive",
]
