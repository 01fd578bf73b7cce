"""Experiments built on pruning: methods compared over calibration draws (:mod:`.comparison`),
the engines' benchmark (:mod:`.bench`) and the effect of removing single units (:mod:`.effects`).

>>> from cswap_nb.experiments import compare_methods, verdicts
"""
from . import bench, comparison, effects
from .comparison import (SAME_COUNTS, SAME_PARAMS, VARIANTS, at_budget, calibration_draws, compare_methods,
                         compare_variants, curves, paired_sign, retention_auc, spread, spread_table, table,
                         tradeoff_scores, variant_rows, variant_summary, variant_table, verdict_lines, verdicts)

__all__ = ["bench", "comparison", "effects", "SAME_COUNTS", "SAME_PARAMS", "VARIANTS", "at_budget", "calibration_draws",
           "compare_methods", "compare_variants", "curves", "paired_sign", "retention_auc", "spread", "spread_table",
           "table", "tradeoff_scores", "variant_rows", "variant_summary", "variant_table", "verdict_lines", "verdicts"]
