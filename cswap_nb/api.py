"""The public entry points: :func:`prune`, :class:`PruneResult`, :func:`load_pruned`."""
from __future__ import annotations

import copy
import functools
import numbers
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import models
from .causal import IGNORE_INDEX, LABELS, min_samples
from .data import as_tensors, check_xy
from .descent import CSwapConfig, progressive, visiting_plan
from .engine import make_engine
from .metrics import evaluate
from .surgery import count_macs, count_params, remove_units
from .units import Masker, UnitLayer, find_unit_layers

PRUNED_FORMAT = "cswap_nb.pruned/1"


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    ``model``: the physically smaller network; ``labels``: one row per tested unit;
    ``summary()``: the numbers of the ``--json`` contract.
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
    """
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    correct = pred.cpu() == y.cpu()
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
    keep = torch.cat(keep)
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


def _full_float32(fn: Callable) -> Callable:
    """Run ``fn`` with TF32 turned off for convolutions and matmuls (restored afterwards).

    PyTorch runs CUDA convolutions in TF32 by default (10-bit mantissa). The causal tests
    compare small score differences and the masked/pruned check expects float32 agreement;
    with TF32 on, an H200 run of ddrnet23slim-roads disagreed with the CPU on 242 of 1,920
    labels and masked vs pruned differed by 9e-3. No effect on CPUs.
    """
    @functools.wraps(fn)
    def run(*args, **kwargs):
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul

    return run


@_full_float32
def prune(
    model: nn.Module,
    calib,
    method: str = "cswap",
    *,
    alpha: float = 0.05,
    samples_per_class: int | None = 20,
    inference: str = "per-class",
    test: str = "welch",
    score: str = "prob",
    reference: str = "dense",
    order: str = "magnitude",
    layer_order: str = "output-to-input",
    scope: str = "internal",
    group_size: int | None = None,
    group_threshold: int = 0,
    seed: int = 0,
    engine: str = "fast",
    ratio: float | None = None,
    params: int | None = None,
    counts: dict[str, int] | None = None,
    scores: dict[str, Tensor] | None = None,
    eval_data=None,
    ignored_layers: list[nn.Module] | None = None,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    model_name: str | None = None,
    engine_hook: Callable | None = None,
    on_start: Callable[[int], None] | None = None,
) -> PruneResult:
    """Prune a copy of ``model``; the caller's model is never modified.

    ``method="cswap"`` (default) runs C-SWAP's progressive causal descent; the amount
    pruned is an outcome of ``alpha``, ``samples_per_class`` and ``test``.
    ``method=`` a criterion of :data:`cswap_nb.criteria.CRITERIA` (``"l1"``, ``"taylor"``, ...)
    ranks the same units once and prunes to a target: ``ratio=`` (fraction of units,
    global ranking), ``params=`` (parameter count to reach) or ``counts=`` (units per layer).
    ``method="greedy"`` re-tests every remaining unit before each removal (``ratio=`` or
    ``params=``; O(U^2) passes, for small models). ``scores=`` reuses a criterion's
    scores from an earlier result (``res.scores``) instead of computing them again.

    ``calib``: an ``(x, y)`` tensor pair, Dataset or DataLoader; its correctly classified
    samples, ``samples_per_class`` per class (all of them with ``None``), form the
    calibration set. Segmentation: ``y`` holds label masks (N, H, W) (255 ignored) and the
    model returns (N, C, h, w) logits; images are chosen by
    :func:`select_segmentation_calibration`, a class's per-class test uses the images where
    it appears, each scored on that class's pixels, and the metric is mIoU.
    ``eval_data``: optional held-out data; then the summary also holds the metric (top-1
    accuracy, or mIoU) before and after. ``callback(record)`` is called after every step.
    Options are those of cswap_nb/METHOD.md §7 (see :class:`cswap_nb.descent.CSwapConfig`).
    ``engine``: ``"fast"`` caches the network before the analysed layer where the model
    allows it (same decisions as ``"naive"``, one full forward per unit); see :mod:`cswap_nb.engine`.
    ``engine_hook(engine) -> engine`` may wrap the score engine (the α explorer's cache does);
    ``on_start(total)`` is told the number of steps before the first one.
    """
    from .criteria import CRITERIA, Cost, score_units
    from .descent import greedy, rank_and_prune

    t_start = time.perf_counter()
    methods = ("cswap", "greedy", *CRITERIA)
    if method not in methods:
        raise ValueError(f"method must be one of {list(methods)}, got {method!r}")
    cfg = CSwapConfig(alpha=alpha, test=test, inference=inference, score=score, reference=reference,
                      order=order, layer_order=layer_order, group_size=group_size,
                      group_threshold=group_threshold, seed=seed)
    cfg.validate()
    targets = {k: v for k, v in (("ratio", ratio), ("params", params), ("counts", counts)) if v is not None}
    if method == "cswap" and targets:
        raise ValueError(f"C-SWAP's compression is an outcome of alpha, not a target; drop {sorted(targets)}")
    if method != "cswap" and len(targets) != 1:
        raise ValueError(f"method {method!r} needs exactly one target: ratio=, params= or counts=; got {sorted(targets) or 'none'}")
    if method == "greedy" and counts is not None:
        raise ValueError("greedy takes ratio= or params=, not counts=")
    need = min_samples(test, alpha) if method == "cswap" else 1
    if isinstance(samples_per_class, numbers.Integral) and not isinstance(samples_per_class, bool):
        samples_per_class = int(samples_per_class)
    elif samples_per_class is not None:
        raise TypeError(f"samples_per_class must be an integer or None, got {samples_per_class!r}")
    if samples_per_class is not None and samples_per_class < need:
        raise ValueError(
            f"samples_per_class={samples_per_class!r} is too small for the {test!r} test at alpha={alpha}: "
            f"it needs at least {need} samples per class"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x, y = as_tensors(calib)
    check_xy(x, y)

    work = copy.deepcopy(model).eval()
    params_list = list(work.parameters())
    if not params_list:
        raise ValueError("the model has no parameters: nothing to prune")
    device = params_list[0].device
    x, y = x.to(device), y.to(device).long()
    try:
        with torch.inference_mode():
            probe = work(x[:2])
    except Exception as exc:
        raise ValueError(f"the model could not run on calibration inputs of shape {tuple(x.shape[1:])} "
                         f"(per sample): {type(exc).__name__}: {exc}") from exc
    segmentation = y.ndim == 3
    if segmentation:
        if not isinstance(probe, Tensor) or probe.ndim != 4:
            got = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
            raise ValueError(f"label masks (N, H, W) need a model returning (N, classes, h, w) logits, got {got}")
        valid = y[y != IGNORE_INDEX]
        if len(valid) and (int(valid.min()) < 0 or int(valid.max()) >= probe.shape[1]):
            raise ValueError(f"mask labels must lie in [0, {probe.shape[1] - 1}] or be 255 (ignored) for a model with "
                             f"{probe.shape[1]} outputs; got labels from {int(valid.min())} to {int(valid.max())}")
        x, y, pairs = select_segmentation_calibration(x, y, samples_per_class, probe.shape[1], seed=seed,
                                                      min_per_class=need)
        test_y = pairs[:, 1] if inference == "per-class" else torch.zeros(len(x), dtype=torch.long, device=device)
    else:
        if not isinstance(probe, Tensor) or probe.ndim != 2:
            got = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
            raise ValueError(f"expected (N, classes) logits from the model, got {got}; wrap the model so that its "
                             "forward returns one logits tensor")
        if int(y.min()) < 0 or int(y.max()) >= probe.shape[1]:
            raise ValueError(f"labels must lie in [0, {probe.shape[1] - 1}] for a model with {probe.shape[1]} "
                             f"outputs; got labels from {int(y.min())} to {int(y.max())}")
        x, y = select_calibration(work, x, y, samples_per_class, seed=seed, min_per_class=need)
        test_y = y

    example = x[:1]
    try:
        spec = models.describe(model)
    except ValueError:
        spec = None
    params_before, macs_before = count_params(work), count_macs(work, example)
    layers = find_unit_layers(work, example, scope=scope, ignored_layers=_same_modules(model, work, ignored_layers))
    if not layers:
        raise ValueError(f"the model has no prunable unit (scope={scope!r}): no conv/linear layer other than the "
                         "classifier whose output channels can be removed")
    template = copy.deepcopy(work)  # never masked: criteria score it, candidate cuts are counted on copies

    def params_after(cut: dict[str, list[int]]) -> int:
        return count_params(remove_units(copy.deepcopy(template), example, cut))

    masker = Masker(work, layers)
    scorer = make_engine(engine, work, masker, example)
    if segmentation:
        scorer.segmentation(y, pairs if inference == "per-class" else None)
    if engine_hook is not None:
        scorer = engine_hook(scorer)
    records: list[dict] = []
    cost = Cost()
    t_analysis = time.perf_counter()
    try:
        if method in ("cswap", "greedy"):
            if method == "cswap":
                total = len(visiting_plan(layers, cfg))
                steps = progressive(scorer, masker, layers, x, test_y, cfg)
            else:
                n_units = sum(layer.size for layer in layers)
                total = round(ratio * n_units) if ratio is not None else None
                steps = greedy(scorer, masker, layers, x, test_y, total if total is not None else n_units, score)
            if on_start is not None and total is not None:
                on_start(total)
            desc = f"C-SWAP α={alpha}" if method == "cswap" else "greedy descent"
            bar = tqdm(total=total, desc=desc, unit="unit", disable=not progress, leave=True, mininterval=0.5)
            try:  # an error or an interrupt leaves no dead bar behind
                for record in steps:
                    records.append(record)
                    bar.update(1)
                    bar.set_postfix(removed=sum(r["pruned"] for r in records), refresh=False)
                    if callback is not None:
                        callback(record)
                    if method == "greedy" and params is not None and params_after(masker.pruned()) <= params:
                        break
            finally:
                bar.close()
            cost.forward_passes = scorer.forward_equivalents
        else:
            if scores is None:
                scores = score_units(method, template, layers, x, y, seed=seed, cost=cost)
            cut = rank_and_prune(scores, layers, ratio=ratio, params=params, counts=counts, params_after=params_after)
            for layer in layers:
                chosen = set(cut.get(layer.name, []))
                if chosen:
                    masker.set(layer.name, sorted(chosen), True)
                for unit in range(layer.size):
                    records.append({"layer": layer.name, "kind": layer.kind, "unit": unit, "label": None,
                                    "score": float(scores[layer.name][unit]), "pruned": unit in chosen})
        analysis_seconds = time.perf_counter() - t_analysis
        check_x = x[: min(len(x), 64)]
        with torch.inference_mode():
            masked_logits = work(check_x)
    finally:
        masker.remove()
    pruned_units = masker.pruned()
    remove_units(work, example, pruned_units)
    with torch.inference_mode():
        diff = float((work(check_x) - masked_logits).abs().max())
    if diff > 1e-3:
        warnings.warn(f"the physically pruned model differs from the masked one by up to {diff:.3g}; "
                      "the intervention does not match removal for this architecture", stacklevel=2)

    config = {**asdict(cfg), "samples_per_class": samples_per_class, "scope": scope, "engine": engine}
    if method != "cswap":
        config = {"samples_per_class": samples_per_class, "scope": scope, "seed": seed, "ratio": ratio,
                  "params": params, "counts": counts}
    result = PruneResult(
        model=work,
        labels=pd.DataFrame(records),
        config=config,
        engine={"name": scorer.name, "fallback": scorer.fallback,
                "forward_equivalents": round(scorer.forward_equivalents, 3),
                "forward_passes": round(cost.forward_passes, 3), "backward_passes": round(cost.backward_passes, 3)},
        params_before=params_before,
        params_after=count_params(work),
        macs_before=macs_before,
        macs_after=count_macs(work, example),
        seconds=0.0,
        layers=[{"name": layer.name, "kind": layer.kind, "size": layer.size} for layer in layers],
        equivalence_max_abs_diff=diff,
        calib_samples=len(y),
        metric_name="miou_pct" if segmentation else "top1_accuracy_pct",
        model_name=model_name or model_label(model),
        method=method,
        spec=spec,
        analysis_seconds=analysis_seconds,
        pruned_units={k: v for k, v in pruned_units.items()},
        scores=scores if method not in ("cswap", "greedy") else None,
    )
    if eval_data is not None:
        result.metric_before = evaluate(model, eval_data)
        result.metric_after = evaluate(work, eval_data)
    result.seconds = time.perf_counter() - t_start
    return result


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


__all__ = ["prune", "PruneResult", "load_pruned", "select_calibration", "UnitLayer"]
