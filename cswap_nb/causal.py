"""The causal test of one unit: scores under intervention, statistical tests, C/N/D labels.

For calibration samples ``x`` of class ``y``, ``q(x)`` is the model's score of the true
class (default: its softmax probability) and ``q^n(x)`` the same score with unit ``n``
removed. Per class ``c`` (or once over all samples with ``inference="general"``):

* one-sided test "removal lowers q" significant at level ``alpha`` for some class -> **critical**
* otherwise "removal raises q" significant for some class -> **detrimental**
* otherwise -> **neutral**

A larger ``alpha`` flags more units critical (less pruning, safer accuracy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from torch import Tensor

CRITICAL, NEUTRAL, DETRIMENTAL = "critical", "neutral", "detrimental"
LABELS = (CRITICAL, NEUTRAL, DETRIMENTAL)
TESTS = ("welch", "ztest", "wilcoxon", "paired-t")
SCORES = ("prob", "logit", "ratio")
INFERENCES = ("per-class", "general")


def true_class_scores(logits: Tensor, y: Tensor, score: str = "prob") -> Tensor:
    """``q(x)``: the score of each sample's own class, shape (N,).

    ``prob`` and ``ratio`` use the softmax probability (``ratio`` divides by the
    reference later); ``logit`` the raw logit. Segmentation logits (N, C, H, W) are
    scored as the mean over labelled pixels (label != 255) of the true-class probability.
    """
    if logits.ndim == 4:
        probs = logits.float().softmax(1) if score != "logit" else logits.float()
        valid = y != 255
        picked = probs.gather(1, y.clamp(0, probs.shape[1] - 1)[:, None]).squeeze(1)
        return (picked * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    if score == "logit":
        return logits.float().gather(1, y[:, None]).squeeze(1)
    return logits.float().log_softmax(1).gather(1, y[:, None]).squeeze(1).exp()


def min_samples(test: str, alpha: float) -> int:
    """Smallest number of samples per tested group for which ``test`` can reject at ``alpha``."""
    if test == "wilcoxon":
        # the exact signed-rank test's smallest one-sided p-value with n pairs is 2**-n
        return max(2, math.floor(math.log2(1.0 / alpha)) + 1)
    return 2


def one_sided_pvalues(q_removed: np.ndarray, q_ref: np.ndarray, test: str) -> tuple[float, float]:
    """p-values of (removal lowers q, removal raises q) for one group of samples."""
    a, b = np.asarray(q_removed, dtype=np.float64), np.asarray(q_ref, dtype=np.float64)
    diff = a - b
    if np.all(diff == 0):
        return 1.0, 1.0
    if test == "welch":
        if np.var(a) == 0 and np.var(b) == 0:
            lower = float(a.mean() < b.mean())
            return 1.0 - lower, lower
        lo = stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
        hi = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    elif test == "ztest":
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        if se == 0:
            lower = float(a.mean() < b.mean())
            return 1.0 - lower, lower
        z = (a.mean() - b.mean()) / se
        lo, hi = stats.norm.cdf(z), stats.norm.sf(z)
    elif test == "wilcoxon":
        lo = stats.wilcoxon(diff, alternative="less", zero_method="zsplit").pvalue
        hi = stats.wilcoxon(diff, alternative="greater", zero_method="zsplit").pvalue
    elif test == "paired-t":
        if np.var(diff) == 0:
            lower = float(diff.mean() < 0)
            return 1.0 - lower, lower
        lo = stats.ttest_rel(a, b, alternative="less").pvalue
        hi = stats.ttest_rel(a, b, alternative="greater").pvalue
    else:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    lo = 1.0 if not np.isfinite(lo) else float(lo)
    hi = 1.0 if not np.isfinite(hi) else float(hi)
    return lo, hi


@dataclass
class Verdict:
    """Outcome of one causal test: the label and the evidence behind it.

    ``p_lower``/``p_raise``: smallest per-class p-value of "removal lowers/raises q";
    ``p_value``: the one that decided the label (``p_lower`` unless detrimental);
    ``effect``: mean over samples of ``q^n - q`` (negative = removal hurts);
    ``worst_class``: the class with the smallest ``p_lower``.
    """

    label: str
    p_value: float
    p_lower: float
    p_raise: float
    effect: float
    worst_class: int


def test_unit(
    q_removed: Tensor,
    q_ref: Tensor,
    y: Tensor,
    alpha: float,
    test: str = "welch",
    inference: str = "per-class",
    score: str = "prob",
) -> Verdict:
    """Label one unit from the scores with (``q_ref``) and without it (``q_removed``)."""
    qn = q_removed.double().numpy()
    q = q_ref.double().numpy()
    if score == "ratio":
        # sigma^n(x) / sigma(x) against 1 (the paper's global causal effect, per sample)
        qn, q = qn / np.maximum(q, 1e-12), np.ones_like(q)
    yy = y.numpy()
    groups = [np.arange(len(yy))] if inference == "general" else [np.flatnonzero(yy == c) for c in np.unique(yy)]
    classes = [-1] if inference == "general" else [int(c) for c in np.unique(yy)]
    p_lower, p_raise, worst = 1.0, 1.0, classes[0]
    for c, idx in zip(classes, groups):
        lo, hi = one_sided_pvalues(qn[idx], q[idx], test)
        if lo < p_lower:
            p_lower, worst = lo, c
        p_raise = min(p_raise, hi)
    if p_lower < alpha:
        label, p = CRITICAL, p_lower
    elif p_raise < alpha:
        label, p = DETRIMENTAL, p_raise
    else:
        label, p = NEUTRAL, p_lower
    return Verdict(label, p, p_lower, p_raise, float((qn - q).mean()), worst)
