"""What a pruning run returns: :class:`PruneResult`, its file format and :func:`load_pruned`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import models
from .causal import LABELS
from .units import Coverage

PRUNED_FORMAT = "cswap_nb.pruned/1"


def equivalence_tolerance(scale: float, absolute: float = 1e-3) -> float:
    """How far the masked and the physically pruned model's logits may differ by float32 rounding alone, for
    logits as large as ``scale``: ``absolute`` plus 1e-5 of the scale (float32 keeps about 7 digits; a long
    chain of layers loses one or two). A real mismatch (a BatchNorm shift left alive, a wrong index) moves
    the logits by a share of their own size."""
    return absolute + 1e-5 * float(scale)


@dataclass
class PruneResult:
    """What :func:`prune` (and :meth:`cswap_nb.pruning.session.PruneSession.finish`) returns.

    Attributes
    ----------
    model : nn.Module
        The physically smaller network (eval mode), independent of the caller's model.
    labels : pandas.DataFrame
        One row per step: ``layer``, ``unit`` (an index, or a list for a neuron group),
        ``label`` (critical/neutral/detrimental; None for rank-and-prune), ``pruned``,
        ``p_value``, ``p_lower``, ``p_raise``, ``effect``, ``worst_class``, ``magnitude``, ...
    config : dict
        The options used (:class:`~cswap_nb.core.config.CSwapConfig` fields; baselines: their target).
    params_before, params_after, macs_before, macs_after : int
        Sizes of the dense and the pruned model (MACs of one input sample).
    metric_name, metric_before, metric_after
        ``"top1_accuracy_pct"`` or ``"miou_pct"``, measured on ``eval_data`` (None without it).
    pruned_units : dict of str to list of int
        The removed units per unit layer.
    equivalence_max_abs_diff : float
        Largest |masked - physically pruned| logit on calibration samples (should be ~1e-6).
    equivalence_logit_scale : float
        Largest |logit| of the masked model on those samples: float32 rounding grows with it, so the check
        allows :func:`equivalence_tolerance` of it (a randomly initialised Inception V3 has logits of 3.2e6 on
        64x64 inputs, where removal and masking differ by 1.2 in rounding alone).
    seconds, analysis_seconds : float
        Wall time of the whole run and of the causal analysis (the loop).
    engine : dict
        Engine name, fallback reason, forward-pass equivalents, forward and backward passes.
    guard : dict or None
        With ``max_drop``: the guard's report (:class:`cswap_nb.pruning.descent.Guard`): the dense and
        last validation metric, the number of checks, whether it stopped the loop, in which
        layer, how many units it restored and how many it left unvisited (kept).
    coverage : Coverage or None
        Which share of the dense model's parameters the units cover and why the rest is not
        tested (:class:`cswap_nb.core.units.Coverage`); in the summary as ``units_param_share_pct``,
        ``units_removable_pct`` and ``units_excluded_pct`` (reason -> % of the parameters).

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
    coverage: Coverage | None = None
    equivalence_logit_scale: float = 0.0

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
            "equivalence_logit_scale": self.equivalence_logit_scale,
            "engine": self.engine,
            "guard": self.guard,
            **(self.coverage.as_dict() if self.coverage is not None else
               {"units_param_share_pct": None, "units_removable_pct": None, "units_excluded_pct": None}),
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


def unit_sizes(labels: pd.DataFrame) -> pd.Series:
    """How many units each label row tested: the length of a group (``unit`` is a list), else 1."""
    return labels.unit.map(lambda u: len(u) if isinstance(u, (list, tuple)) else 1)


def _unit_counts(labels: pd.DataFrame) -> dict[str, int]:
    """Units per label; a row testing a group of units (``unit`` is a list) counts each of them."""
    if "label" not in labels or labels.empty:
        return {}
    sizes = unit_sizes(labels)
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


def model_label(model: nn.Module) -> str:
    """A name for figures and summaries: a shipped checkpoint's zoo name, else the model's class name."""
    return getattr(model, "zoo_name", None) or type(model).__name__
