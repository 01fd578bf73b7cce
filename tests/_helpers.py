"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""
from __future__ import annotations

import torch
from torch import nn

from cswap_nb.core.surgery import remove_units
from cswap_nb.core.units import Masker, find_unit_layers


def mask_and_remove(model: nn.Module, x: torch.Tensor, scope: str = "internal", fraction: float = 0.4,
                     seed: int = 7):
    """Mask a seeded random ``fraction`` of every unit layer, then remove those units.

    Returns (unit layers, dense logits, masked logits, pruned logits, units removed).
    """
    model.eval()
    layers = find_unit_layers(model, x[:1], scope=scope)
    with torch.no_grad():
        dense = model(x)
    masker = Masker(model, layers)
    g = torch.Generator().manual_seed(seed)
    for layer in layers:
        k = min(layer.size - 1, max(1, round(fraction * layer.size)))
        masker.set(layer.name, torch.randperm(layer.size, generator=g)[:k].tolist(), True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    with torch.no_grad():
        assert torch.equal(model(x), dense), "Masker.remove() did not restore the model"
    removed = masker.pruned()
    remove_units(model, x[:1], removed)
    with torch.no_grad():
        pruned = model(x)
    return layers, dense, masked, pruned, removed


def assert_same_decisions(fast, naive, tol: float = 1e-4) -> None:
    """An engine's run (``fast``, early decisions on) against the naive one (every class evaluated):
    the same labels and removals; units evaluated on every class have the same p-values up to float
    reassociation; units decided early are critical, on fewer classes, with a p_lower below alpha that
    is the smallest over the classes evaluated (never below the full evaluation's minimum)."""
    cols = ["layer", "unit", "label", "pruned"]
    assert fast.labels[cols].equals(naive.labels[cols])
    n_classes = naive.labels.classes.map(len)
    assert n_classes.nunique() == 1  # the naive engine evaluates every class
    whole = fast.labels.classes.map(len) == n_classes
    early = ~whole
    alpha = fast.config["alpha"]
    if whole.any():
        assert (fast.labels.p_lower[whole] - naive.labels.p_lower[whole]).abs().max() < tol
    assert (fast.labels.label[early] == "critical").all() and (fast.labels.p_lower[early] < alpha).all()
    assert (fast.labels.p_lower[early] >= naive.labels.p_lower[early] - tol).all()
