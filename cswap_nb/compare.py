"""C-SWAP against rank-and-prune criteria at equal compression (the poster's central comparison)."""
from __future__ import annotations

from typing import Iterable

import numpy as np
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
    model_name: str | None = None,
    progress: bool = True,
    seed: int = 0,
    scope: str = "internal",
) -> list[dict]:
    """One record (the ``--json`` summary plus ``budget``) per (method, budget).

    C-SWAP runs first at ``alpha``; every other method is pruned to the parameter count
    C-SWAP reached (``budget="same-params"``, global ranking), and with ``per_layer`` also
    to C-SWAP's per-layer unit counts. ``ratios`` adds a curve per criterion (fraction of
    units removed); ``alphas`` adds C-SWAP points at other α. All on the same calibration
    set and unit ``scope``, evaluated on ``data.test``, no fine-tuning.
    """
    methods = [m for m in methods if m != "cswap"]
    common = dict(samples_per_class=samples_per_class, eval_data=data.test, model_name=model_name, seed=seed,
                  scope=scope)
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
    metric = "mIoU %" if rows and rows[0].get("metric_name") == "miou_pct" else "accuracy %"
    lines = [f"{'method':12s}{'params after':>14s}{'removed %':>11s}{'MACs removed %':>16s}{metric:>12s}"
             f"{'fwd':>7s}{'bwd':>7s}{'seconds':>9s}"]
    for r in rows:
        e = r.get("engine", {})
        fwd = e.get("forward_equivalents") if r["method"] == "cswap" else e.get("forward_passes")
        lines.append(f"{r['method']:12s}{r['params_after']:>14,d}{r['params_removed_pct']:>11.1f}"
                     f"{r['macs_removed_pct']:>16.1f}{r['metric_after']:>12.2f}{fwd or 0:>7.1f}"
                     f"{e.get('backward_passes', 0) or 0:>7.1f}{r['seconds']:>9.1f}")
    if rows:
        lines.append(f"dense model: {rows[0]['params_before']:,} parameters, {metric.split()[0]} "
                     f"{rows[0]['metric_before']:.2f}%")
    return "\n".join(lines)


def curves(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per method, the (fraction of parameters removed, metric retained) points of ``records``,
    starting at the dense model (0, 1) and sorted by compression. Per-layer-count records
    (which copy C-SWAP's allocation) are left out."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.get("budget") == SAME_COUNTS or r.get("metric_after") is None or not r.get("metric_before"):
            continue
        pts = out.setdefault(r["method"], [(0.0, 1.0)])
        pts.append((r["params_removed_pct"] / 100.0, r["metric_after"] / r["metric_before"]))
    return {m: sorted(set(p)) for m, p in out.items()}


def retention_auc(points: list[tuple[float, float]], upto: float) -> float:
    """Normalised area under a metric-retained vs fraction-of-parameters-removed curve.

    ``points``: (fraction removed in [0, 1], metric after / metric before), the dense model
    (0, 1) included; the curve is piecewise linear between them. The area from 0 to
    ``upto`` is divided by ``upto``: 1.0 means no loss up to that compression, 0.5 e.g. an
    average of half the metric kept. ``upto`` must not exceed the largest compression in
    ``points`` (no extrapolation). A larger score is a better trade-off.

    The poster summarises segmentation results with a trade-off score it calls "SAUCE".
    Its definition was not available to us, so this score could not be checked against
    it and may differ; it is named for what it computes.
    """
    pts = sorted(points)
    xs = np.array([p[0] for p in pts], dtype=float)
    ys = np.array([p[1] for p in pts], dtype=float)
    if not 0.0 < upto <= xs.max() + 1e-12:
        raise ValueError(f"upto={upto} must lie in (0, {xs.max():.4g}], the largest compression reached")
    grid = np.linspace(0.0, upto, 1001)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(trapezoid(np.interp(grid, xs, ys), grid) / upto)


def tradeoff_scores(records: list[dict], upto: float | None = None) -> dict[str, dict]:
    """:func:`retention_auc` per method over one common compression range.

    ``upto`` defaults to the largest fraction of parameters removed that *every* method
    reached in ``records`` (so no curve is extrapolated). Returns, per method, the score,
    the range used and the number of points on its curve.
    """
    cs = curves(records)
    if not cs:
        raise ValueError("no record with a metric before and after: evaluate with eval_data/test data first")
    reach = min(max(x for x, _ in pts) for pts in cs.values())
    upto = reach if upto is None else upto
    if upto <= 0:
        raise ValueError("some method removed no parameters at any of its points: no common compression range")
    return {m: {"retention_auc": retention_auc(pts, upto), "upto_removed_pct": 100.0 * upto, "points": len(pts) - 1}
            for m, pts in cs.items()}
