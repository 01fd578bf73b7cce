"""Search strategies. Here: C-SWAP's progressive (ranked) descent, as a step generator.

Each unit is visited once, in a fixed order (layers from the output towards the input,
weakest L1 filter norm first inside a layer), and tested *on the current, already
pruned network*: Neutral/Detrimental units stay removed at once, Critical ones are
restored. The generator yields one record per tested unit so a notebook can plot live,
a widget can update and a test can inspect every decision.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .causal import CRITICAL, INFERENCES, SCORES, TESTS, test_unit
from .engine import FullEngine
from .units import Masker, UnitLayer

LAYER_ORDERS = ("output-to-input", "input-to-output")
UNIT_ORDERS = ("magnitude", "random")
REFERENCES = ("dense", "current")


@dataclass
class CSwapConfig:
    """The options of METHOD.md with their defaults."""

    alpha: float = 0.05
    test: str = "welch"
    inference: str = "per-class"
    score: str = "prob"
    reference: str = "dense"
    order: str = "magnitude"
    layer_order: str = "output-to-input"
    group_size: int = 1
    group_threshold: int = 0
    seed: int = 0

    def validate(self) -> None:
        if not isinstance(self.alpha, (int, float)) or not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"alpha must be a number strictly between 0 and 1, got {self.alpha!r}")
        for value, allowed, what in [
            (self.test, TESTS, "test"), (self.inference, INFERENCES, "inference"),
            (self.score, SCORES, "score"), (self.reference, REFERENCES, "reference"),
            (self.order, UNIT_ORDERS, "order"), (self.layer_order, LAYER_ORDERS, "layer_order"),
        ]:
            if value not in allowed:
                raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")
        if int(self.group_size) < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")


def visiting_plan(layers: list[UnitLayer], cfg: CSwapConfig) -> list[tuple[UnitLayer, list[int]]]:
    """The fixed order of the progressive loop: (layer, units tested together) pairs."""
    ordered = sorted(layers, key=lambda layer: layer.position, reverse=cfg.layer_order == "output-to-input")
    gen = torch.Generator().manual_seed(cfg.seed)
    plan = []
    for layer in ordered:
        if cfg.order == "magnitude":
            units = torch.argsort(layer.magnitude, stable=True).tolist()
        else:
            units = torch.randperm(layer.size, generator=gen).tolist()
        g = cfg.group_size if layer.size > cfg.group_threshold else 1
        plan.extend((layer, units[i : i + g]) for i in range(0, len(units), g))
    return plan


def progressive(
    engine: FullEngine,
    masker: Masker,
    layers: list[UnitLayer],
    x: Tensor,
    y: Tensor,
    cfg: CSwapConfig,
) -> Iterator[dict]:
    """Run C-SWAP's progressive descent; masks are left set on ``masker`` as it goes.

    ``engine`` computes the calibration scores of the current (masked) network.
    """
    q_ref = engine.scores(x, y, cfg.score)
    for step, (layer, units) in enumerate(visiting_plan(layers, cfg)):
        t0 = time.perf_counter()
        remaining = int((~masker.removed[layer.name]).sum())
        masker.set(layer.name, units, True)
        q_removed = engine.scores(x, y, cfg.score, layer)
        verdict = test_unit(q_removed, q_ref, y, cfg.alpha, cfg.test, cfg.inference, cfg.score)
        note = ""
        prune = verdict.label != CRITICAL
        if prune and remaining <= len(units):
            prune, note = False, "kept: the last unit of a layer is never removed"
        if not prune:
            masker.set(layer.name, units, False)
        elif cfg.reference == "current":
            q_ref = q_removed
        yield {
            "step": step,
            "layer": layer.name,
            "kind": layer.kind,
            "unit": units[0] if len(units) == 1 else list(units),
            "label": verdict.label,
            "pruned": prune,
            "p_value": verdict.p_value,
            "p_lower": verdict.p_lower,
            "p_raise": verdict.p_raise,
            "effect": verdict.effect,
            "worst_class": verdict.worst_class,
            "magnitude": float(layer.magnitude[units].sum()),
            "note": note,
            "seconds": time.perf_counter() - t0,
        }
