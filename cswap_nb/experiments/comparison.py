"""C-SWAP against rank-and-prune criteria at equal compression (the poster's central comparison)."""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..pruning.api import PruneResult, choose_calibration, correctly_classified
from ..pruning.api import prune as _prune
from ..core.config import CSwapConfig, make_config
from ..data import as_tensors
from ..core.layout import channels_last_copy
from ..core.metrics import evaluate
from ..pruning.session import full_float32

SAME_PARAMS = "same-params"
SAME_COUNTS = "same-per-layer-counts"


def _record(res: PruneResult, budget: str, seed: int = 0) -> dict:
    return {**res.summary(), "budget": budget, "seed": seed}


def compare_methods(
    model: nn.Module,
    data,
    methods: Iterable[str],
    *,
    config: CSwapConfig | None = None,
    per_layer: bool = False,
    ratios: Iterable[float] | None = None,
    alphas: Iterable[float] | None = None,
    seeds: Iterable[int] | None = None,
    eval_data=None,
    model_name: str | None = None,
    progress: bool = True,
    cswap: PruneResult | None = None,
    **options,
) -> list[dict]:
    """C-SWAP against rank-and-prune criteria at equal size, over one or several calibration draws.

    Parameters
    ----------
    model : nn.Module
        The trained model (not modified).
    data
        An object with ``.calib`` (the calibration pool) and ``.test`` splits, e.g. a
        :class:`cswap_nb.data.Dataset`; with ``max_drop`` set, also ``.val`` (the guard's split).
    methods : iterable of str
        Criteria of :data:`cswap_nb.criteria.CRITERIA` (``"cswap"`` is always run first).
    config : CSwapConfig, optional
        The options of every run (C-SWAP's ``alpha``, the calibration ``samples_per_class`` and
        ``seed``, the unit ``scope``, ...); default :class:`~cswap_nb.core.config.CSwapConfig` ().
    per_layer : bool
        Also prune every criterion to C-SWAP's per-layer unit counts (``budget="same-per-layer-counts"``).
    ratios, alphas : iterable of float, optional
        Extra points: each criterion at these fractions of units removed, C-SWAP at these α.
    seeds : iterable of int, optional
        Repeat everything once per calibration draw (the config's ``seed`` replaced by each); each
        baseline is cut to *that draw's* C-SWAP parameter count. Summarise with :func:`spread` and
        :func:`verdicts`. Default: the config's seed alone.
    eval_data : optional
        Where the metric is measured (default ``data.test``), e.g. a smaller test set for a quick run.
    model_name : str, optional
        The name in the records (default: the checkpoint's zoo name or the class name).
    progress : bool
        Show progress bars.
    cswap : PruneResult, optional
        A C-SWAP result already computed with this very configuration on ``data.calib`` (e.g. the
        notebook's own ``cs.prune`` run): reused instead of analysing again for the draw of its own
        seed, which must be one of ``seeds`` (its model is not modified; its metric is measured again
        on ``eval_data``); the other draws are analysed.
    **options
        Fields of :class:`~cswap_nb.core.config.CSwapConfig` (``alpha=``, ``samples_per_class=``,
        ``scope=``, ``group_size=``, ...), replacing those of ``config``.

    Returns
    -------
    list of dict
        One record (the ``--json`` summary plus ``budget`` and ``seed``) per (seed, method, budget).
    """
    cfg = make_config(config, **options)
    seeds = list(seeds) if seeds is not None else [cfg.seed]
    if cswap is not None:
        _check_reusable(cswap, cfg, seeds)
    eval_data = data.test if eval_data is None else eval_data
    before = evaluate(model, eval_data)  # the dense model's metric, once for every run
    draw = calibration_draws(model, data.calib)
    records: list[dict] = []
    for s in seeds:
        cfg_s = dataclasses.replace(cfg, seed=s)
        records += _compare_one_seed(model, data, draw(cfg_s), methods, cfg_s, per_layer, ratios,
                                     alphas, model_name, progress, eval_data, before,
                                     cswap if cswap is not None and cswap.config.get("seed") == s else None)
    return records


def calibration_draws(model: nn.Module, pool):
    """``draw(cfg)``: the calibration samples every run of a comparison with ``cfg`` selects from ``pool``.

    The pool is predicted once for all runs and draws (on a laptop CPU that prediction cost as much as
    a baseline's whole run). Each run then selects again from exactly the chosen samples, which gives
    it the same calibration set as the whole pool would: all of them are correct and there are at
    most ``samples_per_class`` per class. Segmentation pools (masks, no prediction) are passed as they are.
    """
    x, y = as_tensors(pool)
    if y.ndim != 1 or y.dtype.is_floating_point or len(y) != len(x):
        return lambda cfg: pool  # masks; or labels each run refuses with its own message
    params = list(model.parameters())
    device = params[0].device if params else x.device
    fast = channels_last_copy(model)  # the caller's model keeps its layout (cswap_nb/core/layout.py)
    training = fast.training
    try:
        fast.eval()
        with full_float32():
            correct = correctly_classified(fast, x.to(device), y.to(device))
    finally:
        fast.train(training)
    return lambda cfg: choose_calibration(x, y.long(), correct, cfg.samples_per_class, cfg.seed, min_per_class=1)


def _check_reusable(result: PruneResult, cfg: CSwapConfig, seeds: list[int]) -> None:
    """Raise ``ValueError`` unless ``result`` is a C-SWAP run of ``cfg`` (the engine aside: every engine gives
    the same labels; the seed may be any of ``seeds``: it stands for that draw)."""
    if not isinstance(result, PruneResult) or result.method != "cswap":
        raise ValueError(f"cswap= must be the PruneResult of a C-SWAP run, got "
                         f"{getattr(result, 'method', type(result).__name__)!r}")
    seed = result.config.get("seed")
    if seed not in seeds:
        raise ValueError(f"cswap= is the calibration draw of seed {seed}, which is not among the seeds {seeds}")
    want = {k: v for k, v in cfg.as_dict().items() if k not in ("engine", "seed")}
    got = {k: v for k, v in result.config.items() if k not in ("engine", "seed")}
    differ = sorted(k for k in want if got.get(k) != want[k])
    if differ:
        raise ValueError("cswap= was run with other options than this comparison: "
                         + ", ".join(f"{k}={got.get(k)!r} (here {want[k]!r})" for k in differ))


def _compare_one_seed(model, data, calib, methods, cfg: CSwapConfig, per_layer, ratios, alphas, model_name, progress,
                      eval_data, before: float, reuse: PruneResult | None = None) -> list[dict]:
    methods = [m for m in methods if m != "cswap"]
    common = dict(config=cfg, model_name=model_name)
    guard = {"guard_data": getattr(data, "val", None)} if cfg.max_drop is not None else {}

    def prune(*args, **kwargs) -> PruneResult:
        res = _prune(*args, **kwargs)
        res.metric_before, res.metric_after = before, evaluate(res.model, eval_data)
        return res

    if reuse is not None:  # a copy: the caller's result keeps its own metric
        ref = dataclasses.replace(reuse, metric_before=before, metric_after=evaluate(reuse.model, eval_data))
    else:
        ref = prune(model, calib, "cswap", progress=progress, **guard, **common)
    records = [_record(ref, SAME_PARAMS, cfg.seed)]
    counts = {name: len(units) for name, units in ref.pruned_units.items()}
    jobs = [(m, SAME_PARAMS) for m in methods] + [(m, SAME_COUNTS) for m in methods if per_layer]
    jobs += [(m, f"ratio={r:g}") for r in (ratios or []) for m in methods]
    scores: dict[str, dict] = {}
    with tqdm(jobs, desc=f"baselines (seed {cfg.seed})", disable=not progress) as bar:  # closed on errors too
        for m, budget in bar:
            target = ({"params": ref.params_after} if budget == SAME_PARAMS else
                      {"counts": counts} if budget == SAME_COUNTS else {"ratio": float(budget.split("=")[1])})
            res = prune(model, calib, m, progress=False, scores=scores.get(m), **target, **common)
            scores[m] = res.scores
            records.append(_record(res, budget, cfg.seed))
    for a in alphas or []:
        if a != cfg.alpha:
            records.append(_record(prune(model, calib, "cswap", progress=progress,
                                         **{**common, **guard, "config": dataclasses.replace(cfg, alpha=a)}),
                                   f"alpha={a:g}", cfg.seed))
    return records


def at_budget(records: list[dict], budget: str, reference: str = "cswap") -> list[dict]:
    """The records of one budget; at C-SWAP's per-layer counts the C-SWAP runs themselves (recorded at
    ``same-params``) are included, since that budget copies their allocation."""
    own = SAME_PARAMS if budget == SAME_COUNTS else budget
    return [r for r in records if r["budget"] == budget or (r["method"] == reference and r["budget"] == own)]


def spread(records: list[dict]) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per (method, budget): the metric after pruning,
    % parameters and % MACs removed, and the number of draws ``n`` (sd is NaN for one draw)."""
    df = pd.DataFrame([{"method": r["method"], "budget": r["budget"], "seed": r.get("seed", 0),
                        "metric": r["metric_after"], "removed": r["params_removed_pct"],
                        "macs_removed": r["macs_removed_pct"]} for r in records])
    g = df.groupby(["method", "budget"], sort=False)
    out = g.agg(n=("seed", "nunique"), metric_mean=("metric", "mean"), metric_sd=("metric", "std"),
                removed_mean=("removed", "mean"), removed_sd=("removed", "std"),
                macs_removed_mean=("macs_removed", "mean"), macs_removed_sd=("macs_removed", "std"))
    return out.reset_index()


BEATS, LOSES, WITHIN = "beats", "loses to", "within the spread of"


def paired_sign(d: np.ndarray) -> int | None:
    """The paired rule of :func:`verdicts` on per-draw differences ``d``: +1 when ``d > 0`` on every
    draw and its mean exceeds twice its standard error, -1 in the mirror case, 0 otherwise, None for
    fewer than two draws."""
    n = len(d)
    if n < 2:
        return None
    se = d.std(ddof=1) / np.sqrt(n)
    if (d > 0).all() and d.mean() > 2 * se:
        return 1
    if (d < 0).all() and -d.mean() > 2 * se:
        return -1
    return 0


def verdicts(records: list[dict], budget: str = SAME_PARAMS, reference: str = "cswap") -> pd.DataFrame:
    """Does ``reference`` beat each other method at ``budget``? A paired comparison over seeds.

    For every seed both methods ran on the same calibration draw (and, at ``same-params``,
    the baseline was cut to that draw's C-SWAP size), so the per-seed differences
    ``d = metric(reference) - metric(method)`` pair out the luck of the draw. The verdict is
    **beats** when ``d > 0`` on every seed *and* the mean of ``d`` exceeds twice its standard
    error (``sd(d) / sqrt(n)``), **loses to** in the mirror case, and otherwise **within the
    spread of**. Fewer than two seeds give no verdict (``None``): one draw is an anecdote.
    """
    df = pd.DataFrame([{"method": r["method"], "seed": r.get("seed", 0), "metric": r["metric_after"]}
                       for r in at_budget(records, budget, reference)])
    if df.empty or reference not in set(df.method):
        raise ValueError(f"no {reference!r} records at budget {budget!r}")
    wide = df.pivot_table(index="seed", columns="method", values="metric")
    rows = []
    for m in [c for c in wide.columns if c != reference]:
        d = (wide[reference] - wide[m]).dropna().to_numpy(dtype=float)
        n = len(d)
        se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        mean = float(d.mean()) if n else float("nan")
        verdict = {1: BEATS, -1: LOSES, 0: WITHIN, None: None}[paired_sign(d)]
        rows.append({"method": m, "n": n, "mean_diff": mean, "se_diff": se, "min_diff": float(d.min()) if n else None,
                     "max_diff": float(d.max()) if n else None, "verdict": verdict,
                     "sentence": None if verdict is None else f"{reference} {verdict} {m} "
                                                              f"({mean:+.2f} ± {se:.2f} points over {n} draws)"})
    return pd.DataFrame(rows, columns=["method", "n", "mean_diff", "se_diff", "min_diff", "max_diff", "verdict",
                                       "sentence"])


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


def spread_table(records: list[dict], budget: str = SAME_PARAMS) -> str:
    """:func:`spread` at one budget as plain text, best mean metric first."""
    df = spread(at_budget(records, budget)).sort_values("metric_mean", ascending=False)
    metric = "mIoU %" if records and records[0].get("metric_name") == "miou_pct" else "accuracy %"
    lines = [f"{'method':12s}{'n':>3s}{metric:>18s}{'params removed %':>20s}{'MACs removed %':>18s}"]
    fmt = lambda m, s: f"{m:.2f} ± {s:.2f}" if s == s else f"{m:.2f}"  # noqa: E731 (NaN sd: one draw)
    for r in df.itertuples():
        lines.append(f"{r.method:12s}{r.n:>3d}{fmt(r.metric_mean, r.metric_sd):>18s}"
                     f"{fmt(r.removed_mean, r.removed_sd):>20s}{fmt(r.macs_removed_mean, r.macs_removed_sd):>18s}")
    return "\n".join(lines)


def verdict_lines(records: list[dict], budget: str = SAME_PARAMS) -> str:
    """One sentence per baseline from :func:`verdicts` (paired over seeds)."""
    v = verdicts(records, budget)
    if v.empty:
        return "(no other method at this budget: no verdict)"
    return "\n".join(s for s in v.sentence if s) or "(one calibration draw: no verdict)"


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


# ------------------------------------------------------------------ variants of the method

VARIANTS: dict[str, dict] = {
    "default": {},
    "k=10": {"samples_per_class": 10},
    "k=50": {"samples_per_class": 50},
    "score=logprob": {"score": "logprob"},
    "score=logit": {"score": "logit"},
    "test=ztest": {"test": "ztest"},
    "correction=holm": {"correction": "holm"},
    "correction=bh": {"correction": "bh"},
    "reference=current": {"reference": "current"},
    "order=random": {"order": "random"},
    "layer_order=input-to-output": {"layer_order": "input-to-output"},
    "scope=all": {"scope": "all"},
    "max_drop=1": {"max_drop": 1.0},
}
"""Named variants of C-SWAP's options (cswap_nb/METHOD.md §7), each a change from the config it is
applied to: the hypotheses of notebook 09 (test power, multiple testing, accumulated damage, unit
scope and visiting order)."""


def compare_variants(
    model: nn.Module,
    data,
    variants: dict[str, dict] | Iterable[str] | None = None,
    *,
    baseline: str = "l1",
    seeds: Iterable[int] = (0, 1, 2),
    config: CSwapConfig | None = None,
    eval_data=None,
    model_name: str | None = None,
    progress: bool = True,
    **options,
) -> pd.DataFrame:
    """C-SWAP under several option variants, each against ``baseline`` cut to that run's size.

    Settings are chosen on a validation split: the metric is measured on ``eval_data``, by default
    ``data.val`` (the zoo's split that is neither the calibration pool nor the test set).

    Parameters
    ----------
    variants : dict of name to options, or names of :data:`VARIANTS`
        Default: all of :data:`VARIANTS`.
    baseline : str
        The rank-and-prune criterion each C-SWAP run is compared with at the same parameter count.
    seeds : iterable of int
        Calibration draws; every variant runs on the same draws, so differences pair up.

    Returns
    -------
    pandas.DataFrame
        One row per (variant, seed): ``removed`` and ``macs_removed`` (% of the dense model), the
        dense ``metric_before``, C-SWAP's ``metric``, the baseline's ``baseline_metric`` at the same
        size, ``margin`` = metric - baseline_metric, ``drop`` = metric_before - metric, the share of
        tests that said critical, whether a guard stopped the loop, the analysis time and the options.
    """
    if variants is None:
        variants = VARIANTS
    elif not isinstance(variants, dict):
        names = list(variants)
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
        variants = {n: VARIANTS[n] for n in names}
    if eval_data is None:
        eval_data = getattr(data, "val", None)
        if eval_data is None:
            raise ValueError("compare_variants chooses settings on a validation split: pass eval_data= or data "
                             "with a .val split (not the test set)")
    base = make_config(config, **options)
    seeds = list(seeds)
    frames = []
    with tqdm(total=len(variants), desc="variants", disable=not progress) as bar:
        for name, change in variants.items():
            records = compare_methods(model, data, [baseline], config=make_config(base, **change), seeds=seeds,
                                      eval_data=eval_data, model_name=model_name, progress=False)
            frames.append(variant_rows(records, name, baseline, change))
            bar.update(1)
    return pd.concat(frames, ignore_index=True)


def variant_rows(records: list[dict], name: str = "default", baseline: str = "l1",
                 options: dict | None = None) -> pd.DataFrame:
    """The rows of :func:`compare_variants` for one variant, from :func:`compare` records that hold
    C-SWAP and ``baseline`` at ``same-params`` (so an earlier comparison can serve as a variant)."""
    rows = []
    for ref in (r for r in records if r["method"] == "cswap" and r["budget"] == SAME_PARAMS):
        other = next((r for r in records if r["method"] == baseline and r["budget"] == SAME_PARAMS
                      and r.get("seed", 0) == ref.get("seed", 0)), None)
        if other is None:
            raise ValueError(f"no {baseline!r} record at {SAME_PARAMS!r} for seed {ref.get('seed', 0)}")
        tests = max(1, sum(ref["counts"].values()))
        rows.append({"variant": name, "seed": ref.get("seed", 0), "removed": ref["params_removed_pct"],
                     "macs_removed": ref["macs_removed_pct"], "metric_before": ref["metric_before"],
                     "metric": ref["metric_after"], "baseline_metric": other["metric_after"],
                     "baseline_removed": other["params_removed_pct"],
                     "margin": ref["metric_after"] - other["metric_after"],
                     "drop": ref["metric_before"] - ref["metric_after"],
                     "critical_share": ref["counts"]["critical"] / tests,
                     "guard_stopped": bool((ref.get("guard") or {}).get("stopped", False)),
                     "analysis_seconds": ref["analysis_seconds"], "options": dict(options or {})})
    return pd.DataFrame(rows)


def variant_summary(rows: pd.DataFrame, reference: str = "default") -> pd.DataFrame:
    """Mean ± sd over seeds per variant, and paired comparisons with the ``reference`` variant.

    ``margin_verdict``: does the variant beat its baseline at its own size (``margin`` > 0 on
    every seed and mean > 2 standard errors; mirror for "loses to")? ``vs_reference``: the same
    paired rule on the per-seed differences of ``margin`` and of ``removed`` against the
    reference variant, so that a variant is called better only beyond the spread of the draws.
    """
    def rule(d: np.ndarray) -> str | None:
        return {1: "higher", -1: "lower", 0: "within spread", None: None}[paired_sign(d)]

    ref = rows[rows.variant == reference].set_index("seed")
    out = []
    for name, g in rows.groupby("variant", sort=False):
        g = g.set_index("seed")
        m = g.margin.to_numpy(dtype=float)
        verdict = rule(m)
        row = {"variant": name, "n": len(g),
               "removed": g.removed.mean(), "removed_sd": g.removed.std(),
               "macs_removed": g.macs_removed.mean(),
               "metric": g.metric.mean(), "metric_sd": g.metric.std(),
               "baseline_metric": g.baseline_metric.mean(), "baseline_metric_sd": g.baseline_metric.std(),
               "margin": m.mean(), "margin_sd": m.std(ddof=1) if len(m) > 1 else float("nan"),
               "margin_verdict": {"higher": "beats", "lower": "loses to"}.get(verdict, verdict),
               "critical_share": g.critical_share.mean(),
               "guard_stopped": int(g.guard_stopped.sum()), "analysis_seconds": g.analysis_seconds.mean()}
        if name != reference and not ref.empty:
            common = g.index.intersection(ref.index)
            row["margin_vs_reference"] = rule((g.margin[common] - ref.margin[common]).to_numpy(dtype=float))
            row["removed_vs_reference"] = rule((g.removed[common] - ref.removed[common]).to_numpy(dtype=float))
            row["metric_vs_reference"] = rule((g.metric[common] - ref.metric[common]).to_numpy(dtype=float))
        out.append(row)
    return pd.DataFrame(out)


def variant_table(summary: pd.DataFrame, baseline: str = "l1") -> str:
    """:func:`variant_summary` as plain text."""
    lines = [f"{'variant':30s}{'removed %':>15s}{'C-SWAP %':>16s}{baseline + ' same size %':>18s}{'margin':>16s}"
             f"  verdict"]
    for r in summary.itertuples():
        lines.append(f"{r.variant:30s}{r.removed:>8.1f} ± {r.removed_sd:<4.1f}{r.metric:>9.2f} ± {r.metric_sd:<4.2f}"
                     f"{r.baseline_metric:>11.2f} ± {r.baseline_metric_sd:<4.2f}{r.margin:>+9.2f} ± {r.margin_sd:<4.2f}"
                     f"  {r.margin_verdict or ''}")
    return "\n".join(lines)
