"""The public entry points: :func:`prune` (the one-call form of :class:`cswap_nb.pruning.session.PruneSession`),
:class:`PruneResult`, :func:`load_pruned`, and the calibration-set selection (re-exported from
:mod:`cswap_nb.core.result` and :mod:`cswap_nb.core.calibration`)."""
from __future__ import annotations

import textwrap

from torch import Tensor, nn

from ..core.calibration import (MIN_CLASS_PIXELS, choose_calibration, choose_indices, correctly_classified,
                                select_calibration, select_segmentation_calibration, stream_calibration)
from ..core.config import CSwapConfig, options_in_brief
from ..core.result import PRUNED_FORMAT, PruneResult, load_pruned, model_label
from .session import PruneSession
from ..core.units import UnitLayer


def prune(model: nn.Module, calib, method: str = "cswap", *, config: CSwapConfig | None = None,
          ratio: float | None = None, params: int | None = None, counts: dict[str, int] | None = None,
          scores: dict[str, Tensor] | None = None, eval_data=None, guard_data=None,
          ignored_layers: list[nn.Module] | None = None, progress: bool = True, model_name: str | None = None,
          distributed=False, **options) -> PruneResult:
    """Prune a copy of ``model`` in one call (the caller's model is never modified).

    ``method="cswap"`` (default) runs C-SWAP's progressive causal descent (cswap_nb/METHOD.md
    §1-§3): the amount pruned is an outcome of ``alpha``, ``samples_per_class`` and ``test``.
    A criterion of :data:`cswap_nb.criteria.CRITERIA` (``"l1"``, ``"taylor"``, ...) ranks the
    same units once and prunes to a target; ``"greedy"`` re-tests every remaining unit before
    each removal (O(U²) passes, for small models). To watch or drive the loop step by step, use
    :class:`cswap_nb.pruning.session.PruneSession` (this function is ``PruneSession(...).finish()``).

    Parameters
    ----------
    model : nn.Module
        The trained model.
    calib
        Calibration data: an ``(x, y)`` tensor pair, a Dataset or a DataLoader (a Dataset with class labels,
        e.g. an ImageFolder, is read in batches: :func:`stream_calibration`). Its correctly
        classified samples, ``samples_per_class`` per class, form the calibration set. For
        segmentation ``y`` holds label masks (N, H, W) (255 ignored), the model returns
        (N, C, h, w) logits, images are chosen by :func:`select_segmentation_calibration` and
        the metric is mIoU.
    method : str
        ``"cswap"``, ``"greedy"`` or a criterion name.
    config : CSwapConfig, optional
        The options of the analysis (cswap_nb/METHOD.md §7); default
        :class:`~cswap_nb.core.config.CSwapConfig` ().
    ratio : float, optional
        Baselines: the fraction of all units removed (global ranking).
    params : int, optional
        Baselines: the parameter count to reach (the closest global cut).
    counts : dict of str to int, optional
        Rank-and-prune: units removed per layer (e.g. C-SWAP's allocation).
    scores : dict, optional
        A criterion's scores from an earlier result (``res.scores``), reused.
    eval_data : optional
        Held-out data; the summary then holds the metric before and after.
    guard_data : optional
        The validation split of the ``max_drop`` guard (cswap_nb/METHOD.md §3), e.g. the zoo's
        ``data.val``; needed when ``max_drop`` is set.
    ignored_layers : list of nn.Module, optional
        Modules of ``model`` whose output channels are never pruned.
    progress : bool
        Show a progress bar.
    model_name : str, optional
        The name in summaries and figures (default: a shipped checkpoint's name, else the class).
    distributed : bool or ProcessGroup
        Share the analysis among the ranks of an initialised ``torch.distributed`` process group (True: the
        default group); every rank calls ``prune`` alike and gets the same result (cswap_nb/METHOD.md §10).
    **options
        Any field of :class:`~cswap_nb.core.config.CSwapConfig` (its docstring says what each means), replacing
        those of ``config``; each with its default:
        {options}.

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
                        progress=progress, model_name=model_name, distributed=distributed, **options).finish()


prune.__doc__ = prune.__doc__.replace(  # the options' one list (cswap_nb/core/config.py), not a copy
    "{options}.", "\n        ".join(textwrap.wrap(options_in_brief() + ".", 96, break_on_hyphens=False)))


__all__ = ["prune", "PruneResult", "load_pruned", "select_calibration", "choose_calibration", "choose_indices",
           "correctly_classified", "stream_calibration",
           "select_segmentation_calibration", "MIN_CLASS_PIXELS", "PRUNED_FORMAT", "model_label", "CSwapConfig",
           "UnitLayer"]
