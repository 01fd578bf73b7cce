"""Looking inside the causal test: per-unit score samples, per-class p-values, labels vs α.

Unlike :func:`cswap_nb.prune`, which tests units progressively on an ever smaller
network, these functions remove each unit *alone from the dense network*: the right view
for teaching what one test sees, and cheap to re-label for any α afterwards.
:func:`false_critical_rate` measures how often the tests label a harmless unit critical (cswap_nb/METHOD.md §2,
"Many classes, measured").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..core.calibration import select_calibration
from ..core.causal import CRITICAL, LABELS, TESTS, group_pvalues, one_sided_pvalues, verdict_of
from ..data import as_tensors, check_xy
from ..models.families import family_of
from ..models.families.attention import attention_weights
from ..engines.build import make_engine
from ..core.units import Masker, find_unit_layers


@dataclass
class UnitEffects:
    """Scores of the calibration set with each unit of one layer removed alone.

    ``q_ref``: (N,) true-class scores of the dense model; ``q_removed``: (units, N);
    ``y``: (N,) labels; ``layer``: the layer's name; ``units``: the unit indices.
    """

    layer: str
    units: list[int]
    y: Tensor
    q_ref: Tensor
    q_removed: Tensor


def unit_effects(model: nn.Module, calib, layer: str | None = None, units: list[int] | None = None,
                 samples_per_class: int | None = 20, score: str = "prob", scope: str = "internal",
                 seed: int = 0) -> UnitEffects:
    """Remove each unit of ``layer`` (default: the last unit layer) alone and record the scores."""
    return layer_effects(model, calib, None if layer is None else [layer], units, samples_per_class, score, scope,
                         seed, default_last=True)[0]


def layer_effects(model: nn.Module, calib, layers: list[str] | None = None, units: list[int] | int | None = None,
                  samples_per_class: int | None = 20, score: str = "prob", scope: str = "internal",
                  seed: int = 0, default_last: bool = False) -> list[UnitEffects]:
    """:func:`unit_effects` for several layers (default: every unit layer, input to output) with one
    calibration draw and one engine. ``units``: the units of each layer (a list), the first ``units`` of
    each (an int), or all (None). Every score is a full evaluation of the calibration set (every class),
    so each per-class p-value exists (no early decisions, cswap_nb/METHOD.md §10)."""
    x, y = as_tensors(calib)
    check_xy(x, y)
    work = copy.deepcopy(model).eval()
    x, y = select_calibration(work, x, y.long(), samples_per_class, seed=seed)
    found = sorted(find_unit_layers(work, x[:1], scope=scope), key=lambda layer_: layer_.position)
    by_name = {layer_.name: layer_ for layer_ in found}
    if layers is None:
        layers = [found[-1].name] if default_last else list(by_name)
    unknown = [name for name in layers if name not in by_name]
    if unknown:
        raise ValueError(f"unknown unit layer(s) {unknown}; unit layers: {', '.join(by_name)}")
    masker = Masker(work, found)
    engine = make_engine("fast", work, masker, x[:1])
    out = []
    try:
        q_ref = engine.scores(x, y, score)
        for name in layers:
            target = by_name[name]
            if units is None:
                chosen = list(range(target.size))
            elif isinstance(units, int):
                chosen = list(range(min(units, target.size)))
            else:
                chosen = [int(u) for u in units]
            rows = []
            for u in chosen:
                masker.set(name, [u], True)
                rows.append(engine.scores(x, y, score, target))
                masker.set(name, [u], False)
            out.append(UnitEffects(name, chosen, y.cpu(), q_ref.cpu(), torch.stack(rows).cpu()))
    finally:
        masker.remove()
    return out


def pvalue_table(effects: UnitEffects, tests: tuple[str, ...] = TESTS, inference: str = "per-class") -> pd.DataFrame:
    """One row per (unit, test, class): mean scores with and without the unit and both p-values."""
    y = effects.y.numpy()
    classes = [-1] if inference == "general" else sorted(np.unique(y).tolist())
    q = effects.q_ref.double().numpy()
    rows = []
    for i, u in enumerate(effects.units):
        qn = effects.q_removed[i].double().numpy()
        for test in tests:
            for c in classes:
                idx = np.arange(len(y)) if c == -1 else np.flatnonzero(y == c)
                lo, hi = one_sided_pvalues(qn[idx], q[idx], test)
                rows.append({"unit": u, "test": test, "class": c, "mean_q": q[idx].mean(),
                             "mean_q_removed": qn[idx].mean(), "p_lower": float(lo[0]), "p_raise": float(hi[0])})
    return pd.DataFrame(rows)


def label_from_pvalues(table: pd.DataFrame, alpha: float, correction: str = "none") -> pd.DataFrame:
    """C/N/D label of every (unit, test) at level ``alpha`` from a :func:`pvalue_table`, by the rule of
    :func:`cswap_nb.core.causal.verdict_of` (``correction`` adjusts each unit's per-class p-values)."""
    rows = []
    for (unit, test), sub in table.groupby(["unit", "test"], sort=True):
        v = verdict_of(sub.p_lower.to_numpy(), sub.p_raise.to_numpy(), sub["class"].tolist(), alpha, correction, 0.0)
        rows.append({"unit": unit, "test": test, "p_lower": v.p_lower, "p_raise": v.p_raise, "label": v.label})
    return pd.DataFrame(rows, columns=["unit", "test", "p_lower", "p_raise", "label"])


def labels_vs_alpha(table: pd.DataFrame, alphas) -> pd.DataFrame:
    """Counts of each label per (test, α): how the level of the test sets what is kept."""
    rows = []
    for a in alphas:
        lab = label_from_pvalues(table, a)
        for test, sub in lab.groupby("test"):
            counts = sub.label.value_counts()
            rows.append({"alpha": a, "test": test, **{k: int(counts.get(k, 0)) for k in LABELS}})
    return pd.DataFrame(rows)


def label_flips(table: pd.DataFrame, alpha: float, reference_alpha: float, test: str = "welch",
                correction: str = "none") -> pd.DataFrame:
    """The units of a :func:`pvalue_table` whose label under ``test`` differs between ``reference_alpha`` and
    ``alpha``: one row per such unit with both labels and its smallest per-class ``p_lower`` (after the
    correction). Nothing is re-run: the same tests, judged at another level."""
    sub = of_test(table, test)
    return flips_between(label_from_pvalues(sub, reference_alpha, correction),
                         label_from_pvalues(sub, alpha, correction))


def of_test(table: pd.DataFrame, test: str) -> pd.DataFrame:
    """The rows of a :func:`pvalue_table` for one ``test`` (``ValueError`` when it has none)."""
    sub = table[table.test == test]
    if sub.empty:
        raise ValueError(f"no p-values of test {test!r} in the table; it has {sorted(set(table.test))}")
    return sub


def flips_between(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The units whose label differs between two :func:`label_from_pvalues` tables of one test."""
    before, after = before.set_index("unit"), after.set_index("unit")
    out = pd.DataFrame({"p_lower": after.p_lower, "label_before": before.label, "label_after": after.label})
    return out[out.label_before != out.label_after].reset_index().sort_values("p_lower", kind="stable")


def null_scores(pool: np.ndarray, n: int, noise_sd: float, rng: np.random.Generator,
                paired: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The scores ``(q, q_removed)`` of ``n`` calibration images for a harmless unit, built from real scores.

    ``q``: ``n`` reference scores drawn with replacement from ``pool``. ``paired=True``: the unit changes each
    image's score by zero-mean Gaussian noise of sd ``noise_sd``, ``q_removed = q + e`` (the same images before and
    after, as in C-SWAP's tests). ``paired=False``: ``q_removed`` is a fresh draw from ``pool`` plus that noise, so
    the two samples come from different images and only their distributions agree. A unit with exactly no effect
    (``q_removed == q``) cannot serve as a null: identical samples give p = 1 in both directions."""
    pool = np.asarray(pool, dtype=float)
    q = rng.choice(pool, size=n, replace=True)
    base = q if paired else rng.choice(pool, size=n, replace=True)
    return q, base + rng.normal(0.0, noise_sd, size=n)


def false_critical_rate(pool: np.ndarray, classes: int, noise_sd: float, test: str = "welch", k: int = 20,
                        trials: int = 400, alpha: float = 0.05, corrections: tuple[str, ...] = ("none",),
                        paired: bool = True, rng: np.random.Generator | int | None = 0) -> dict[str, float]:
    """The share of ``trials`` harmless units labelled critical: C = ``classes`` classes of ``k`` images each.

    Each trial builds one null unit with :func:`null_scores` (``classes * k`` images, class i being images
    ``i*k .. (i+1)*k - 1``), computes its per-class one-sided p-values with
    :func:`cswap_nb.core.causal.group_pvalues` and labels it with :func:`cswap_nb.core.causal.verdict_of` at
    ``alpha`` under each of ``corrections``. Returns ``{correction: rate}``. For C independent tests that are
    calibrated on the samples given, the rate is ``1 - (1 - alpha) ** classes``; the paired t-test on Gaussian
    noise is such a test, Welch's unpaired test on paired nulls is not (it divides by the spread between images,
    cswap_nb/METHOD.md §2). ``rng``: a seed or a ``numpy`` Generator, which is advanced (so one generator passed
    to several calls draws fresh nulls each time)."""
    rng = np.random.default_rng(rng)
    groups = [np.arange(i * k, (i + 1) * k) for i in range(classes)]
    names = list(range(classes))
    hits = dict.fromkeys(corrections, 0)
    for _ in range(trials):
        q, qn = null_scores(pool, classes * k, noise_sd, rng, paired)
        lows, highs = group_pvalues(qn, q, groups, test)
        for corr in corrections:
            verdict = verdict_of(lows, highs, names, alpha, corr, float((qn - q).mean()))
            hits[corr] += verdict.label == CRITICAL
    return {corr: hits[corr] / trials for corr in corrections}


def attention_maps(model: nn.Module, x: Tensor, block: int = -1) -> Tensor:
    """Attention of the class token to every patch, per head, in one block of a timm ViT.

    ``x``: a batch of images. Returns ``(N, heads, grid_h, grid_w)`` softmax weights,
    computed from the block's own ``qkv`` (so a head-pruned model shows its remaining
    heads). Without a class token, the mean attention over all query tokens is used.
    """
    if family_of(model).name != "timm.vit":
        raise ValueError(f"attention_maps needs a timm VisionTransformer, got {type(model).__name__}")
    attn = model.blocks[block].attn
    seen: dict[str, Tensor] = {}
    handle = attn.register_forward_pre_hook(lambda module, inputs: seen.setdefault("x", inputs[0]))
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        handle.remove()
    with torch.inference_mode():
        t = seen["x"]
        b = t.shape[0]
        weights = attention_weights(attn, t)  # (N, heads, tokens, tokens)
        query = weights[:, :, 0] if model.cls_token is not None else weights.mean(2)
        patches = query[:, :, model.num_prefix_tokens:]
        gh, gw = model.patch_embed.grid_size
        return patches.reshape(b, attn.num_heads, gh, gw).clone()
