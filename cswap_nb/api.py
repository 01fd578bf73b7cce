"""The public entry points: :func:`prune` (the one-call form of :class:`cswap_nb.session.PruneSession`),
:class:`PruneResult`, :func:`load_pruned`, and the calibration-set selection."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from . import models
from .causal import IGNORE_INDEX, LABELS
from .config import CSwapConfig
from .units import UnitLayer

PRUNED_FORMAT = "cswap_nb.pruned/1"


@dataclass
class PruneResult:
    """What :func:`prune` (and :meth:`cswap_nb.session.PruneSession.finish`) returns.

    Attributes
    ----------
    model : nn.Module
        The physically smaller network (eval mode), independent of the caller's model.
    labels : pandas.DataFrame
        One row per step: ``layer``, ``unit`` (an index, or a list for a neuron group),
        ``label`` (critical/neutral/detrimental; None for rank-and-prune), ``pruned``,
        ``p_value``, ``p_lower``, ``p_raise``, ``effect``, ``worst_class``, ``magnitude``, ...
    config : dict
        The options used (:class:`~cswap_nb.config.CSwapConfig` fields; baselines: their target).
    params_before, params_after, macs_before, macs_after : int
        Sizes of the dense and the pruned model (MACs of one input sample).
    metric_name, metric_before, metric_after
        ``"top1_accuracy_pct"`` or ``"miou_pct"``, measured on ``eval_data`` (None without it).
    pruned_units : dict of str to list of int
        The removed units per unit layer.
    equivalence_max_abs_diff : float
        Largest |masked - physically pruned| logit on calibration samples (should be ~1e-6).
    seconds, analysis_seconds : float
        Wall time of the whole run and of the causal analysis (the loop).
    engine : dict
        Engine name, fallback reason, forward-pass equivalents, forward and backward passes.
    guard : dict or None
        With ``max_drop``: the guard's report (:class:`cswap_nb.descent.Guard`): the dense and
        last validation metric, the number of checks, whether it stopped the loop, in which
        layer, how many units it restored and how many it left unvisited (kept).

    ``summary()`` gives the numbers of the ``--json`` contract; ``per_layer`` the counts per
    layer; ``save(path)`` writes the pruned model.
    """

    model: nn.Module
    labels: pd.DataFrame
    config: dict
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: float
    layers: list[dict]
    equivalence_max_abs_diff: float
    calib_samples: int
    model_name: str = "custom"
    method: str = "cswap"
    metric_name: str = "top1_accuracy_pct"
    metric_before: float | None = None
    metric_after: float | None = None
    spec: dict | None = None
    analysis_seconds: float = 0.0
    engine: dict = field(default_factory=dict)
    scores: dict | None = None
    pruned_units: dict[str, list[int]] = field(default_factory=dict)
    guard: dict | None = None

    @property
    def per_layer(self) -> pd.DataFrame:
        """Units per layer: how many were critical/neutral/detrimental, removed and kept.

        Counts are in units; ``tests`` is the number of causal tests run in the layer,
        fewer than its units where units were tested in groups.
        """
        rows = []
        for layer in self.layers:
            sub = self.labels[self.labels.layer == layer["name"]]
            counts = _unit_counts(sub)
            removed = len(self.pruned_units.get(layer["name"], []))
            tests = int(sub.label.notna().sum()) if "label" in sub else 0
            rows.append({"layer": layer["name"], "kind": layer["kind"], "units": layer["size"], "tests": tests,
                         **{lab: int(counts.get(lab, 0)) for lab in LABELS},
                         "removed": removed, "kept": layer["size"] - removed})
        return pd.DataFrame(rows)

    @property
    def params_removed_pct(self) -> float:
        return 100.0 * (1 - self.params_after / self.params_before)

    def summary(self) -> dict[str, Any]:
        """The run as a JSON-able dict (the CLI's ``--json`` schema)."""
        counts = _unit_counts(self.labels)
        return {
            "model": self.model_name,
            "method": self.method,
            "alpha": self.config.get("alpha"),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_removed_pct": round(self.params_removed_pct, 3),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_removed_pct": round(100.0 * (1 - self.macs_after / self.macs_before), 3),
            "metric_name": self.metric_name,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "seconds": round(self.seconds, 3),
            "analysis_seconds": round(self.analysis_seconds, 3),
            "counts": {lab: int(counts.get(lab, 0)) for lab in LABELS},
            "per_layer": self.per_layer.to_dict(orient="records"),
            "config": self.config,
            "calib_samples": self.calib_samples,
            "equivalence_max_abs_diff": self.equivalence_max_abs_diff,
            "engine": self.engine,
            "guard": self.guard,
        }

    def save(self, path: str | Path) -> Path:
        """Save the pruned model: its state dict, every tensor's shape, and :meth:`summary`.

        No module is pickled; :func:`load_pruned` reads the file with
        ``torch.load(..., weights_only=True)``. Known families (timm/torchvision ResNets,
        MobileNetV2, timm ViT, DDRNet) also store a plain architecture spec and rebuild
        themselves; any other model is reloaded into a fresh instance of its own class,
        ``cs.load_pruned(path, model=MyNet())``.

        Parameters
        ----------
        path : str or Path
            The file to write (folders are created).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cls = type(self.model)
        torch.save({
            "format": PRUNED_FORMAT,
            "spec": self.spec,
            "architecture": f"{cls.__module__}.{cls.__qualname__}",
            "shapes": models.shapes_of(self.model),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "summary": _jsonable(self.summary()),
        }, path)
        return path


def _unit_counts(labels: pd.DataFrame) -> dict[str, int]:
    """Units per label; a row testing a group of units (``unit`` is a list) counts each of them."""
    if "label" not in labels or labels.empty:
        return {}
    sizes = labels.unit.map(lambda u: len(u) if isinstance(u, (list, tuple)) else 1)
    return {str(k): int(v) for k, v in sizes.groupby(labels.label).sum().items()}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def load_pruned(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :meth:`PruneResult.save` (no pickled modules are loaded).

    Parameters
    ----------
    path : str or Path
        A file written by :meth:`PruneResult.save`.
    model : nn.Module, optional
        A fresh, unpruned instance of the saved model's architecture (e.g. ``MyNet()``): its
        layers are resized to the saved shapes (:func:`cswap_nb.models.reshape_to`) and the
        weights loaded strictly. It is modified in place and returned. Needed for
        architectures outside the known families; for those, ``None`` rebuilds the model
        from the saved spec.

    Returns
    -------
    nn.Module
        The pruned model in eval mode, with the same outputs as the one that was saved.

    Raises
    ------
    ValueError
        For a file of another format, or a ``model`` whose modules do not match the saved
        ones (the message names the first offending module).
    """
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a readable cswap_nb pruned-model file (corrupt or wrong format): {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != PRUNED_FORMAT:
        raise ValueError(f"{path} is not a cswap_nb pruned-model file (expected format {PRUNED_FORMAT!r})")
    shapes = blob["shapes"]
    if model is None:
        if blob.get("spec") is None:
            raise ValueError(f"{path} holds a pruned {blob.get('architecture', 'custom model')}, an architecture "
                             "cswap_nb cannot rebuild by itself; pass a fresh instance of it: "
                             "cs.load_pruned(path, model=MyNet(...))")
        model = models.build(blob["spec"])
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fresh nn.Module instance of the saved architecture, got {type(model).__name__}")
    models.check_resizable(model, shapes, what=str(path))
    models.reshape_to(model, shapes)
    models.check_resizable(model, shapes, what=str(path), exact=True)
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not match the architecture: {exc}") from exc
    return model.eval()


def select_calibration(model: nn.Module, x: Tensor, y: Tensor, samples_per_class: int | None,
                       seed: int = 0, min_per_class: int = 2, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Keep correctly classified samples, ``samples_per_class`` per class (seeded choice).

    Every class present in ``y`` must keep at least ``min_per_class`` samples.
    (:func:`correctly_classified`, then :func:`choose_calibration`.)
    """
    correct = correctly_classified(model, x, y, batch_size)
    return choose_calibration(x, y, correct, samples_per_class, seed, min_per_class)


def correctly_classified(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> Tensor:
    """A bool tensor (on the CPU): is ``model``'s top-1 prediction of each sample its label?"""
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    return pred.cpu() == y.cpu()


def choose_calibration(x: Tensor, y: Tensor, correct: Tensor, samples_per_class: int | None, seed: int = 0,
                       min_per_class: int = 2) -> tuple[Tensor, Tensor]:
    """The seeded choice of :func:`select_calibration` among the samples flagged ``correct``.

    Per class (in label order) the correct samples are shuffled by a generator seeded with
    ``seed`` and the first ``samples_per_class`` kept, in their order in ``x``.
    """
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero((y.cpu() == c) & correct).flatten()
        if len(idx) == 0:
            raise ValueError(
                f"class {c} has no correctly classified calibration sample "
                f"({int((y == c).sum())} sample(s) of that class, all misclassified); "
                "give more data for it or check the model and labels"
            )
        idx = idx[torch.randperm(len(idx), generator=gen)]
        if samples_per_class is not None:
            if len(idx) < samples_per_class:
                warnings.warn(f"class {c}: only {len(idx)} correctly classified samples, "
                              f"fewer than samples_per_class={samples_per_class}", stacklevel=3)
            idx = idx[:samples_per_class]
        if len(idx) < min_per_class:
            raise ValueError(
                f"class {c} has only {len(idx)} correctly classified calibration sample(s); "
                f"the chosen test needs at least {min_per_class} per class"
            )
        keep.append(idx.sort().values)
    keep = torch.cat(keep).to(x.device)
    return x[keep], y[keep]


MIN_CLASS_PIXELS = 16  # a class takes part in an image's per-class test with at least this many pixels


def select_segmentation_calibration(x: Tensor, masks: Tensor, samples_per_class: int | None, num_classes: int,
                                    seed: int = 0, min_per_class: int = 2,
                                    min_pixels: int = MIN_CLASS_PIXELS) -> tuple[Tensor, Tensor, Tensor]:
    """Pick calibration images for a segmentation model; return (x, masks, pairs).

    A class *appears* in an image when it covers at least ``min_pixels`` labelled pixels.
    Images are visited in a seeded random order and kept while they show a class that
    still has fewer than ``samples_per_class`` images (all images with ``None``).
    ``pairs`` (P, 2) lists every (kept image, class appearing in it): the samples of the
    per-class tests. Classes appearing in fewer than ``min_per_class`` kept images
    cannot be tested; they are left out with a warning. (Dense predictions have no single
    "correct" outcome, so unlike :func:`select_calibration` images are not filtered on it.)
    """
    n = masks.shape[0]
    flat = torch.where(masks == IGNORE_INDEX, num_classes, masks).flatten(1).cpu()
    counts = torch.zeros(n, num_classes + 1, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))[:, :num_classes]
    present = counts >= min_pixels
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    if samples_per_class is None:
        keep = sorted(order)
    else:
        have = torch.zeros(num_classes, dtype=torch.long)
        keep = []
        for i in order:
            if bool((present[i] & (have < samples_per_class)).any()):
                keep.append(i)
                have += present[i].long()
            if bool(((have >= samples_per_class) | (present.sum(0) == have)).all()):
                break
        keep.sort()
    keep_t = torch.tensor(keep, dtype=torch.long)
    sub = present[keep_t]
    per_class = sub.sum(0)
    rare = [c for c in range(num_classes) if 0 < int(per_class[c]) < min_per_class]
    if rare:
        warnings.warn(f"class(es) {rare} appear (>= {min_pixels} pixels) in fewer than {min_per_class} calibration "
                      "image(s) and are not tested", stacklevel=3)
        sub[:, rare] = False
    pairs = sub.nonzero()  # (row in kept images, class), image-major
    if len(pairs) == 0:
        raise ValueError(f"no class covers {min_pixels} labelled pixels in {min_per_class} or more images: "
                         "nothing to test; give more (or larger) calibration images")
    device = x.device
    keep_d = keep_t.to(device)
    return x[keep_d], masks[keep_d], pairs.to(device)


def prune(model: nn.Module, calib, method: str = "cswap", *, config: CSwapConfig | None = None,
          ratio: float | None = None, params: int | None = None, counts: dict[str, int] | None = None,
          scores: dict[str, Tensor] | None = None, eval_data=None, guard_data=None,
          ignored_layers: list[nn.Module] | None = None, progress: bool = True, model_name: str | None = None,
          **options) -> PruneResult:
    """Prune a copy of ``model`` in one call (the caller's model is never modified).

    ``method="cswap"`` (default) runs C-SWAP's progressive causal descent (cswap_nb/METHOD.md
    §1-§3): the amount pruned is an outcome of ``alpha``, ``samples_per_class`` and ``test``.
    A criterion of :data:`cswap_nb.criteria.CRITERIA` (``"l1"``, ``"taylor"``, ...) ranks the
    same units once and prunes to a target; ``"greedy"`` re-tests every remaining unit before
    each removal (O(U²) passes, for small models). To watch or drive the loop step by step, use
    :class:`cswap_nb.session.PruneSession` (this function is ``PruneSession(...).finish()``).

    Parameters
    ----------
    model : nn.Module
        The trained model.
    calib
        Calibration data: an ``(x, y)`` tensor pair, a Dataset or a DataLoader. Its correctly
        classified samples, ``samples_per_class`` per class, form the calibration set. For
        segmentation ``y`` holds label masks (N, H, W) (255 ignored), the model returns
        (N, C, h, w) logits, images are chosen by :func:`select_segmentation_calibration` and
        the metric is mIoU.
    method : str
        ``"cswap"``, ``"greedy"`` or a criterion name.
    config : CSwapConfig, optional
        The options of the analysis (cswap_nb/METHOD.md §7); default
        :class:`~cswap_nb.config.CSwapConfig` ().
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
    **options
        Any field of :class:`~cswap_nb.config.CSwapConfig`: ``alpha`` (0.05), ``samples_per_class``
        (20), ``inference`` ("per-class"), ``test`` ("welch"), ``score`` ("prob"), ``reference``
        ("dense"), ``order`` ("magnitude"), ``layer_order`` ("output-to-input"), ``scope``
        ("internal"), ``group_size`` (None: auto), ``group_threshold`` (0), ``seed`` (0),
        ``engine`` ("fast"); they replace the fields of ``config``.

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
    from .session import PruneSession

    return PruneSession(model, calib, method, config=config, ratio=ratio, params=params, counts=counts,
                        scores=scores, eval_data=eval_data, guard_data=guard_data, ignored_layers=ignored_layers,
                        progress=progress,
                        model_name=model_name, **options).finish()


def model_label(model: nn.Module) -> str:
    """A name for figures and summaries: a shipped checkpoint's zoo name, else the model's class name."""
    return getattr(model, "zoo_name", None) or type(model).__name__


def _same_modules(original: nn.Module, copy_: nn.Module, modules: list[nn.Module] | None) -> list[nn.Module]:
    """Map modules of the caller's model onto the working copy (by qualified name)."""
    if not modules:
        return []
    names = {m: n for n, m in original.named_modules()}
    copied = dict(copy_.named_modules())
    missing = [m for m in modules if m not in names]
    if missing:
        raise ValueError(f"ignored_layers: {len(missing)} module(s) are not part of the model")
    return [copied[names[m]] for m in modules]


__all__ = ["prune", "PruneResult", "load_pruned", "select_calibration", "CSwapConfig", "UnitLayer"]
