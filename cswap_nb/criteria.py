"""Rank-and-prune criteria: one importance score per unit, higher = more important.

Every criterion scores exactly the units C-SWAP tests (the :class:`~cswap_nb.core.units.UnitLayer`
groups) and returns ``{layer name: tensor of shape (layer.size,)}``. Activation-based
criteria read the unit's output where C-SWAP's mask acts (after BatchNorm); for a coupled
unit (a residual stream channel) the scores of all its mask points are summed.

| name | what it measures |
|---|---|
| ``l1`` / ``l2`` | norm of the unit's filters, summed over the group's producers |
| ``random`` | a seeded random score (the floor any criterion must beat) |
| ``bn-scale`` | ``|gamma|`` of the BatchNorm(s) after the unit (network slimming) |
| ``activation`` | mean ``|activation|`` over samples and positions |
| ``taylor`` | first-order Taylor: ``|sum over positions of activation x gradient|`` of the loss, mean over samples |
| ``gradxact`` | Captum ``LayerGradientXActivation`` on the true-class logit, ``|sum over positions|``, mean over samples |
| ``conductance`` | Captum ``LayerConductance`` (true-class logit, zero input baseline), same reduction |
| ``ig`` | Captum ``LayerIntegratedGradients`` (true-class logit, zero input baseline), same reduction |
| ``ablation`` | feature ablation (Captum's ``LayerFeatureAblation``, computed by C-SWAP's engine): drop of the true-class probability when the unit is zeroed, mean over samples, no statistical test |
| ``lrp`` | zennit LRP (EpsilonPlusFlat) relevance at the unit, with a ResNet canonizer |

LRP needs a canonizer for the residual additions (Captum's LRP is wrong on residual
networks): torchvision ResNets use zennit's ``ResNetCanonizer``; timm's BasicBlock /
Bottleneck use :class:`cswap_nb.models.families.resnet.TimmResNetCanonizer`. Other models raise a clear error.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import tensor_batches
from .core.causal import upsample_logits
from .data.labels import IGNORE_INDEX
from .models.families import family_of
from .engines.build import make_engine
from .core.layout import to_channels_last
from .core.units import (Masker, UnitLayer, channels_first, register_output_hook, register_site_hook,
                         unit_sums)

Scores = dict[str, Tensor]
class Criterion(Protocol):
    """What a criterion is (the extension point of rank-and-prune, registered with :func:`criterion`): it scores
    every unit once, one score per unit, higher = more important; ``cost`` counts its forward and backward
    passes."""

    def __call__(self, model: nn.Module, layers: list[UnitLayer], x: Tensor, y: Tensor, *, seed: int = 0,
                 cost: Cost | None = None) -> Scores: ...

CRITERIA: dict[str, Criterion] = {}
"""Every criterion by name, in the order registered (:func:`criterion`)."""


def criterion(name: str) -> Callable[[Criterion], Criterion]:
    """Decorator: register a scoring function under ``name`` in :data:`CRITERIA`, where ``cs.prune(model,
    data, name, ratio=...)``, the command line's ``--methods`` and the comparisons find it."""
    def register(fn: Criterion) -> Criterion:
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered (by {CRITERIA[name].__qualname__})")
        CRITERIA[name] = fn
        return fn
    return register


@dataclass
class Cost:
    """Work done by a criterion, in passes over the calibration set."""

    forward_passes: float = 0.0
    backward_passes: float = 0.0
    seconds: float = 0.0


@contextmanager
def count_passes(model: nn.Module, n_samples: int, cost: Cost):
    """Count samples through ``model``'s forward and backward, as passes over ``n_samples``."""
    def fwd(module, inputs, output):
        cost.forward_passes += inputs[0].shape[0] / n_samples
        if output.requires_grad:
            output.register_hook(lambda g: _add_backward(cost, g.shape[0] / n_samples))

    handle = model.register_forward_hook(fwd)
    try:
        yield cost
    finally:
        handle.remove()


def _add_backward(cost: Cost, passes: float) -> None:
    cost.backward_passes += passes


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _no_inplace(model: nn.Module) -> nn.Module:
    """A copy whose activations do not work in place (hooks and attributions need the outputs intact)."""
    model = to_channels_last(copy.deepcopy(model).eval())  # a copy: the faster layout is free (layout.py)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def _gather(layer: UnitLayer, per_point: dict[str, Tensor]) -> Tensor:
    """Sum per-channel scores of every mask point onto the layer's units."""
    out = torch.zeros(layer.size)
    for name, per_unit in layer.points.items():  # a grouped conv's slot: the sum of its channels
        out += unit_sums(per_point[name].detach().float().cpu(), per_unit, layer.slots is not None)
    return out


def _reduce(attr: Tensor) -> Tensor:
    """(N, C, *positions) attribution -> (C,): |sum over positions|, mean over samples."""
    if attr.ndim > 2:
        attr = attr.flatten(2).sum(2)
    return attr.abs().mean(0)


@criterion("l1")
def score_l1(model, layers, x=None, y=None, **_) -> Scores:
    return {layer.name: layer.magnitude.clone() for layer in layers}


@criterion("l2")
def score_l2(model, layers, x=None, y=None, **_) -> Scores:
    return {layer.name: layer.magnitude_l2.clone() for layer in layers}


@criterion("random")
def score_random(model, layers, x=None, y=None, seed: int = 0, **_) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return {layer.name: torch.rand(layer.size, generator=g) for layer in layers}


@criterion("bn-scale")
def score_bn_scale(model, layers, x=None, y=None, **_) -> Scores:
    modules = _modules(model)
    out = {}
    for layer in layers:
        bns = {n: modules[n].weight.detach().abs() for n in layer.points
               if isinstance(modules[n], nn.modules.batchnorm._NormBase) and modules[n].weight is not None}
        if not bns:
            raise ValueError(f"bn-scale: layer {layer.name} is not followed by an affine BatchNorm")
        out[layer.name] = _gather(dataclasses.replace(layer, points={n: layer.points[n] for n in bns}), bns)
    return out


def _activations(model: nn.Module, layers: list[UnitLayer], x: Tensor, y: Tensor, grad: bool, cost: Cost,
                 batch_size: int = 256) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-channel sums over the calibration set of |a| and |sum_pos a*dL/da| at every mask point."""
    model = _no_inplace(model)
    modules = _modules(model)
    names = sorted({n for layer in layers for n in layer.points})
    acts: dict[str, Tensor] = {}
    mean_abs = {n: 0.0 for n in names}
    taylor = {n: 0.0 for n in names}

    layer_of = {n: layer for layer in layers for n in layer.points}

    def hook(name):
        def fn(t):
            acts[name] = t
            if grad:
                t.retain_grad()
        return fn

    handles = [register_site_hook(modules[n], layer_of[n], hook(n)) for n in names]
    try:
        with count_passes(model, len(y), cost):
            for xb, yb in tensor_batches(batch_size, x, y):
                with torch.set_grad_enabled(grad):
                    logits = model(xb)
                    if grad:
                        model.zero_grad(set_to_none=True)
                        _loss(logits, yb).backward()
                for n in names:
                    a = channels_first(acts[n].detach(), modules[n], layer_of[n])
                    mean_abs[n] = mean_abs[n] + (a.flatten(2).abs().mean(2) if a.ndim > 2 else a.abs()).sum(0)
                    if grad:
                        ag = channels_first(acts[n].detach() * acts[n].grad, modules[n], layer_of[n])
                        taylor[n] = taylor[n] + (ag.flatten(2).sum(2) if ag.ndim > 2 else ag).abs().sum(0)
    finally:
        for h in handles:
            h.remove()
    return ({n: v / len(y) for n, v in mean_abs.items()}, {n: v / len(y) for n, v in taylor.items()})


def _loss(logits: Tensor, y: Tensor) -> Tensor:
    """Summed cross-entropy; for segmentation the per-image mean over labelled pixels, summed
    over images (logits upsampled bilinearly to the label size, label 255 ignored)."""
    if logits.ndim == 4 and y.ndim == 3:
        per_pixel = F.cross_entropy(upsample_logits(logits, y.shape[-2:]), y, ignore_index=IGNORE_INDEX,
                                    reduction="none")
        valid = (y != IGNORE_INDEX).flatten(1)
        return ((per_pixel.flatten(1) * valid).sum(1) / valid.sum(1).clamp(min=1)).sum()
    return F.cross_entropy(logits, y, reduction="sum")


@criterion("activation")
def score_activation(model, layers, x, y, cost: Cost | None = None, **_) -> Scores:
    acts, _ = _activations(model, layers, x, y, grad=False, cost=cost or Cost())
    return {layer.name: _gather(layer, acts) for layer in layers}


@criterion("taylor")
def score_taylor(model, layers, x, y, cost: Cost | None = None, **_) -> Scores:
    _, taylor = _activations(model, layers, x, y, grad=True, cost=cost or Cost())
    return {layer.name: _gather(layer, taylor) for layer in layers}


def _captum(kind: str, model, layers, x, y, cost: Cost | None = None, n_steps: int = 8, batch_size: int = 128,
            **_) -> Scores:
    """Captum layer attributions at every mask point, reduced to one score per channel.

    Gradient x activation and integrated gradients attribute to all points in one call
    (Captum accepts a list of layers); conductance too (:func:`_conductance`, Captum's
    ``LayerConductance`` computed for every point from one set of passes).
    """
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    if y.ndim > 1:
        raise ValueError(f"{kind}: the Captum criteria attribute one class logit per sample; segmentation masks "
                         "are not supported — use l1, l2, random, bn-scale, activation or taylor there")
    if _is_transformer(model) or any(layer.kind == "heads" for layer in layers):
        raise ValueError(f"{kind}: the Captum criteria score conv channels and MLP hidden units of (N, C, ...) "
                         "outputs; token-shaped outputs and attention heads (ViT) are not supported — use "
                         "l1, l2, random, activation or taylor there")
    cost = cost or Cost()
    model = _no_inplace(model)
    modules = _modules(model)
    names = sorted({n for layer in layers for n in layer.points})
    mods = [modules[n] for n in names]
    totals: dict[str, Tensor] = {n: torch.zeros(0) for n in names}

    def add(name: str, per_channel: Tensor) -> None:
        totals[name] = per_channel if totals[name].numel() == 0 else totals[name] + per_channel

    with count_passes(model, len(y), cost):
        for xb, yb in tensor_batches(batch_size, x, y):
            zero = torch.zeros_like(xb)
            if kind in ("gradxact", "ig"):
                if kind == "gradxact":
                    attrs = LayerGradientXActivation(model, mods).attribute(xb, target=yb)
                else:
                    attrs = LayerIntegratedGradients(model, mods).attribute(
                        xb, baselines=zero, target=yb, n_steps=n_steps, internal_batch_size=n_steps * len(yb))
                for n, a in zip(names, attrs):
                    add(n, _reduce(a.detach()) * len(yb))
                continue
            for n, a in zip(names, _conductance(model, mods, xb, yb, n_steps)):  # conductance
                add(n, _reduce(a) * len(yb))
    return {layer.name: _gather(layer, {n: v / len(y) for n, v in totals.items()}) for layer in layers}


def _conductance(model: nn.Module, mods: list[nn.Module], x: Tensor, y: Tensor, n_steps: int) -> list[Tensor]:
    """Captum's ``LayerConductance`` (zero baseline, Gauss-Legendre steps, true-class logit) at every module
    of ``mods`` from the same ``n_steps + 1`` interpolated passes.

    Captum takes one layer per call and so repeats every pass once per layer (20 times on a ResNet18);
    the quantity is the same: for each step i, the gradient of the target logit at the layer output
    times the change of that output to the next step, ``sum_i g_i * (h_{i+1} - h_i)``. Checked against
    Captum in tests/test_criteria.py.
    """
    # Gauss-Legendre nodes on [0, 1], as Captum's gauss_legendre_builders computes them
    alphas = (0.5 * (1 + np.polynomial.legendre.leggauss(n_steps + 1)[0])).tolist()
    scaled = torch.cat([a * x for a in alphas]).requires_grad_(True)  # baseline 0 + a * (x - 0)
    evals: list[Tensor] = [torch.empty(0)] * len(mods)

    def keep(i):
        def fn(output):
            output.retain_grad()
            evals[i] = output
        return fn

    handles = [register_output_hook(m, keep(i)) for i, m in enumerate(mods)]
    try:
        logits = model(scaled)
        logits.gather(1, y.repeat(len(alphas))[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    n = len(y)
    out = []
    for h in evals:
        g, v = h.grad.detach(), h.detach()
        steps = (g[:-n] * (v[n:] - v[:-n])).reshape(len(alphas) - 1, n, *v.shape[1:])
        out.append(steps.sum(0))
    model.zero_grad(set_to_none=True)
    return out


@criterion("gradxact")
def score_gradxact(model, layers, x, y, cost: Cost | None = None, **kwargs) -> Scores:
    return _captum("gradxact", model, layers, x, y, cost=cost, **kwargs)


@criterion("conductance")
def score_conductance(model, layers, x, y, cost: Cost | None = None, **kwargs) -> Scores:
    return _captum("conductance", model, layers, x, y, cost=cost, **kwargs)


@criterion("ig")
def score_ig(model, layers, x, y, cost: Cost | None = None, **kwargs) -> Scores:
    return _captum("ig", model, layers, x, y, cost=cost, **kwargs)


@criterion("ablation")
def score_ablation(model, layers, x, y, cost: Cost | None = None, **_) -> Scores:
    """Feature ablation: the drop of the true-class probability when the unit alone is zeroed (every mask
    point of the unit at once) in the dense network, mean over samples; no statistical test.

    The same quantity as Captum's ``LayerFeatureAblation`` with a zero baseline and one channel per
    feature (asserted in tests/test_criteria.py for units with one mask point; a grouped conv's slot is one
    feature of several channels), computed by C-SWAP's
    scoring engine (:func:`cswap_nb.engines.build.make_engine`): each ablation runs only the part of the network
    after the unit, from cached activations, where Captum reruns the whole network once per channel
    (79 s of a 90 s run on resnet18-fashion).
    """
    cost = cost or Cost()
    work = _no_inplace(model)
    with torch.no_grad():
        masker = Masker(work, layers)
        try:
            engine = make_engine("fast", work, masker, x[:1])
            if y.ndim > 1:  # segmentation: q is the mean true-class probability over an image's labelled pixels
                engine.segmentation(y, None)
            dense = engine.scores(x, y, "prob")
            out = {}
            for layer in layers:
                drops = torch.zeros(layer.size)
                for u in range(layer.size):
                    masker.set(layer.name, [u], True)
                    drops[u] = (dense - engine.scores(x, y, "prob", layer)).mean().float().cpu()
                    masker.set(layer.name, [u], False)
                out[layer.name] = drops
        finally:
            masker.remove()
    cost.forward_passes += engine.forward_equivalents
    return out


def _is_transformer(model: nn.Module) -> bool:
    """Token-shaped unit outputs (N, tokens, C), not channels-first (a timm ViT: its adapter says so)."""
    return family_of(model).token_outputs


def _lrp_canonizers(model: nn.Module) -> list:
    """The zennit canonizers of the model's family (ResNets only; raises for the others)."""
    return family_of(model).lrp_canonizers(model)


@criterion("lrp")
def score_lrp(model, layers, x, y, cost: Cost | None = None, batch_size: int = 128, **_) -> Scores:
    from zennit.composites import EpsilonPlusFlat

    cost = cost or Cost()
    model = _no_inplace(model)
    canonizers = _lrp_canonizers(model)
    modules = _modules(model)
    names = sorted({n for layer in layers for n in layer.points})
    acts: dict[str, Tensor] = {}
    totals = {n: 0.0 for n in names}

    def hook(name):
        def fn(module, inputs, output):
            output.retain_grad()
            acts[name] = output
        return fn

    composite = EpsilonPlusFlat(canonizers=canonizers)
    with composite.context(model) as modified, count_passes(model, len(y), cost):
        handles = [modules[n].register_forward_hook(hook(n)) for n in names]
        try:
            for xb, yb in tensor_batches(batch_size, x, y):
                xb = xb.clone().requires_grad_(True)
                out = modified(xb)
                seed = torch.zeros_like(out).scatter_(1, yb[:, None], 1.0) * out.detach()
                out.backward(seed)
                for n in names:
                    rel = (acts[n] * acts[n].grad).detach()  # relevance at the unit (gradient x input rule)
                    rel = rel.flatten(2).sum(2) if rel.ndim > 2 else rel
                    totals[n] = totals[n] + rel.abs().sum(0)
                model.zero_grad(set_to_none=True)
        finally:
            for h in handles:
                h.remove()
    return {layer.name: _gather(layer, {n: v / len(y) for n, v in totals.items()}) for layer in layers}


def score_units(criterion: str, model: nn.Module, layers: list[UnitLayer], x: Tensor, y: Tensor,
                seed: int = 0, cost: Cost | None = None) -> Scores:
    """Scores of every unit under ``criterion`` (see the table in the module docstring)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    cost = cost if cost is not None else Cost()
    t0 = time.perf_counter()
    scores = CRITERIA[criterion](model, layers, x, y, seed=seed, cost=cost)
    cost.seconds += time.perf_counter() - t0
    return scores
