"""Which classes a candidate is likely to hurt: a first-order estimate that orders the classes an early
decision scores first (cswap_nb/METHOD.md §10, "The classes scored first").

It orders work and decides nothing: a unit decided early is critical whichever classes rejected it, so a
poor estimate costs passes, never a label.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn

from ..data import tensor_batches
from .causal import true_class_scores
from .units import UnitLayer, channels_first, register_site_hook, unit_sums


def predicted_harm(model: nn.Module, layers: list[UnitLayer], x: Tensor, y: Tensor, classes: list[int],
                   score: str = "prob", batch_size: int = 64) -> dict[str, np.ndarray] | None:
    """For each layer, a ``(units, classes)`` array: how much removing each unit is expected to lower each
    class's scores, in units of that class's spread of scores (a t-like figure; larger: more harm).

    One forward and one backward pass of ``model`` as it is (its masks included) over ``x``: removing unit
    ``u`` changes sample ``i``'s score ``q_i`` by about ``-sum a * dq_i/da`` over the unit's channels and
    positions (first order, as the Taylor criterion). Its mean over the samples of class ``c``, divided by the
    standard deviation of ``q`` over class ``c``, follows the class's test statistic (up to the test's
    square root of the class size and its pooled spread: it only orders). The estimate is additive over
    units, so a group's is the sum of its units' rows. ``classes`` gives the column order.

    None where the estimate fails (a network that cannot be differentiated from its input, memory; the reason
    is logged at INFO level, and the caller keeps its other order), and under ``torch.distributed`` with
    several processes: each would order on its own floating-point sums, and the processes must score the
    same classes.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1:
        return None
    modules = dict(model.named_modules())
    sites = [(n, layer) for layer in layers for n in layer.points]  # a module may be a point of several layers
    acts: dict[int, Tensor] = {}

    def keep(i: int):
        def fn(t: Tensor) -> None:
            acts[i] = t
        return fn

    position = {c: i for i, c in enumerate(classes)}
    sums = {layer.name: torch.zeros(layer.size, len(classes), dtype=torch.float64) for layer in layers}
    scores, labels, handles = [], [], []
    try:
        for i, (n, layer) in enumerate(sites):
            handles.append(register_site_hook(modules[n], layer, keep(i)))
        with torch.inference_mode(False), torch.enable_grad():
            for xb, yb in tensor_batches(batch_size, x, y):
                acts.clear()
                yb = yb.clone()
                q = true_class_scores(model(xb.detach().clone().requires_grad_(True)), yb, score)
                live = [i for i in range(len(sites)) if i in acts and acts[i].requires_grad]
                grads = torch.autograd.grad(q.sum(), [acts[i] for i in live], allow_unused=True)
                member = torch.zeros(len(yb), len(classes), dtype=torch.float64)
                member[torch.arange(len(yb)), torch.tensor([position[int(c)] for c in yb.tolist()])] = 1.0
                for i, g in zip(live, grads):
                    if g is not None:
                        n, layer = sites[i]
                        sums[layer.name] += _per_unit(acts[i].detach() * g, modules[n], layer, n).T @ member
                scores.append(q.detach().double().cpu())
                labels.append(yb.cpu())
    except Exception as error:  # noqa: BLE001 - an order is a guess: without it the last p-values order the classes
        logging.getLogger(__name__).info("no first-order estimate of the units' harm: %r", error)
        return None
    finally:
        for h in handles:
            h.remove()
    q, labels = torch.cat(scores), torch.cat(labels)
    count = torch.tensor([float((labels == c).sum()) for c in classes], dtype=torch.float64).clamp(min=1)
    spread = torch.tensor([float(q[labels == c].std()) if int((labels == c).sum()) > 1 else 1.0 for c in classes],
                          dtype=torch.float64)
    scale = count * (spread + 1e-6)
    return {name: (s / scale).numpy() for name, s in sums.items()}


def _per_unit(ag: Tensor, module: nn.Module, layer: UnitLayer, name: str) -> Tensor:
    """``a * dq/da`` at one mask point summed over positions, per sample and unit: ``(N, units)`` (float64)."""
    ag = channels_first(ag, module, layer).double()  # summed in float64: the same order on any machine
    ag = (ag.flatten(2).sum(2) if ag.ndim > 2 else ag).cpu()
    return unit_sums(ag, layer.points[name], layer.slots is not None)  # a slot's channels: their sum


__all__ = ["predicted_harm"]
