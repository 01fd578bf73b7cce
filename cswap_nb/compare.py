"""C-SWAP against rank-and-prune criteria at equal compression (the poster's central comparison)."""
from __future__ import annotations

from typing import Iterable

from torch import nn
from tqdm.auto import tqdm

from .api import PruneResult, prune

SAME_PARAMS = "same-params"
SAME_COUNTS = "same-per-layer-counts"


def _record(res: PruneResult, budget: str) -> dict:
    return {**res.summary(), "budget": budget}


def compare(
    model: nn.Module,
    data,
    methods: Iterable[str],
    *,
    alpha: float = 0.05,
    samples_per_class: int = 20,
    per_layer: bool = False,
    ratios: Iterable[float] | None = None,
    alphas: Iterable[float] | None = None,
    model_name: str = "custom",
    progress: bool = True,
    seed: int = 0,
) -> list[dict]:
    """One record (the ``--json`` summary plus ``budget``) per (method, budget).

    C-SWAP runs first at ``alpha``; every other method is pruned to the parameter count
    C-SWAP reached (``budget="same-params"``, global ranking), and with ``per_layer`` also
    to C-SWAP's per-layer unit counts. ``ratios`` adds a curve per criterion (fraction of
    units removed); ``alphas`` adds C-SWAP points at other α. All on the same calibration
    set, evaluated on ``data.test``, no fine-tuning.
    """
    methods = [m for m in methods if m != "cswap"]
    common = dict(samples_per_class=samples_per_class, eval_data=data.test, model_name=model_name, seed=seed)
    ref = prune(model, data.calib, "cswap", alpha=alpha, progress=progress, **common)
    records = [_record(ref, SAME_PARAMS)]
    counts = {name: len(units) for name, units in ref.pruned_units.items()}
    jobs = [(m, SAME_PARAMS) for m in methods] + [(m, SAME_COUNTS) for m in methods if per_layer]
    jobs += [(m, f"ratio={r:g}") for r in (ratios or []) for m in methods]
    scores: dict[str, dict] = {}
    for m, budget in tqdm(jobs, desc="baselines", disable=not progress):
        target = ({"params": ref.params_after} if budget == SAME_PARAMS else
                  {"counts": counts} if budget == SAME_COUNTS else {"ratio": float(budget.split("=")[1])})
        res = prune(model, data.calib, m, progress=False, scores=scores.get(m), **target, **common)
        scores[m] = res.scores
        records.append(_record(res, budget))
    for a in alphas or []:
        if a != alpha:
            records.append(_record(prune(model, data.calib, "cswap", alpha=a, progress=progress, **common),
                                   f"alpha={a:g}"))
    return records


def table(records: list[dict], budget: str = SAME_PARAMS) -> str:
    """A plain-text table of the records at one budget, best accuracy first."""
    rows = sorted((r for r in records if r["budget"] == budget), key=lambda r: -(r["metric_after"] or 0))
    lines = [f"{'method':12s}{'params after':>14s}{'removed %':>11s}{'MACs removed %':>16s}{'accuracy %':>12s}"
             f"{'fwd':>7s}{'bwd':>7s}{'seconds':>9s}"]
    for r in rows:
        e = r.get("engine", {})
        fwd = e.get("forward_equivalents") if r["method"] == "cswap" else e.get("forward_passes")
        lines.append(f"{r['method']:12s}{r['params_after']:>14,d}{r['params_removed_pct']:>11.1f}"
                     f"{r['macs_removed_pct']:>16.1f}{r['metric_after']:>12.2f}{fwd or 0:>7.1f}"
                     f"{e.get('backward_passes', 0) or 0:>7.1f}{r['seconds']:>9.1f}")
    if rows:
        lines.append(f"dense model: {rows[0]['params_before']:,} parameters, accuracy {rows[0]['metric_before']:.2f}%")
    return "\n".join(lines)
