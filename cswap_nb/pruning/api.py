"""The public entry points: :func:`prune` (the one-call form of :class:`cswap_nb.pruning.session.PruneSession`),
:class:`PruneResult`, :func:`load_pruned`, and the calibration-set selection (re-exported from
:mod:`cswap_nb.core.result` and :mod:`cswap_nb.core.calibration`)."""
from __future__ import annotations

from torch import Tensor, nn

from ..core.calibration import (MIN_CLASS_PIXELS, choose_calibration, choose_indices, correctly_classified,
                                select_calibration, select_segmentation_calibration, stream_calibration)
from ..core.config import CSwapConfig
from ..core.result import PRUNED_FORMAT, PruneResult, load_pruned, model_label
from .session import PruneSession, with_parameters
from ..core.units import UnitLayer


def prune(model: nn.Module, calib, method: str = "cswap", *, config: CSwapConfig | None = None,
          ratio: float | None = None, params: int | None = None, counts: dict[str, int] | None = None,
          scores: dict[str, Tensor] | None = None, eval_data=None, guard_data=None,
          ignored_layers: list[nn.Module] | None = None, progress: bool = True, model_name: str | None = None,
          distributed=None, shard_by: str = "images", **options) -> PruneResult:
    """Prune a copy of ``model`` in one call (the caller's model is never modified).

    ``method="cswap"`` (default) runs C-SWAP's progressive causal descent (cswap_nb/METHOD.md
    §1-§3): the amount pruned is an outcome of ``alpha``, ``samples_per_class`` and ``test``.
    A criterion of :data:`cswap_nb.criteria.CRITERIA` (``"l1"``, ``"taylor"``, ...) ranks the
    same units once and prunes to a target; ``"greedy"`` re-tests every remaining unit before
    each removal (O(U²) passes, for small models). To watch or drive the loop step by step, use
    :class:`cswap_nb.pruning.session.PruneSession` (this function is ``PruneSession(...).finish()``).

    {parameters}

    Returns
    -------
    PruneResult
        The physically smaller model, one label row per test, sizes, metric and timings.

    Raises
    ------
    ValueError, TypeError
        For an unknown method or option, an option value out of range, a missing or extra
        target, too few calibration samples, or a model/data that do not fit each other.
    """
    return PruneSession(model, calib, method, config=config, ratio=ratio, params=params, counts=counts,
                        scores=scores, eval_data=eval_data, guard_data=guard_data, ignored_layers=ignored_layers,
                        progress=progress, model_name=model_name, distributed=distributed, shard_by=shard_by,
                        **options).finish()


prune.__doc__ = with_parameters(prune.__doc__)  # the same parameters as PruneSession's, written once


__all__ = ["prune", "PruneResult", "load_pruned", "select_calibration", "choose_calibration", "choose_indices",
           "correctly_classified", "stream_calibration",
           "select_segmentation_calibration", "MIN_CLASS_PIXELS", "PRUNED_FORMAT", "model_label", "CSwapConfig",
           "UnitLayer"]
